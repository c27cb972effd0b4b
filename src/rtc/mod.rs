//! WebRTC engine on str0m: ICE-lite, one UDP socket and one ICE-TCP listener for
//! every peer, viewers sharded over worker threads.
//!
//! - `engine`: sockets, threads, placement of sessions on shards;
//! - `negotiate` (on `sdp`): offers and answers, pure;
//! - `viewer`: one viewer's session, sans I/O (frames in; RTP, RTCP and
//!   timers out); `publish`: a WHIP publisher's;
//! - `direct` (on `srtp`): an established viewer's media sent with our own
//!   SRTP straight into the send batch, str0m keeping ICE, DTLS and RTCP;
//! - `shard`: a worker thread's loop, owning its sessions; `doorbell`:
//!   how it sleeps (its queues, its timers and, alone, the UDP socket);
//!   `due`: which timers may wait for the next wake-up;
//! - `net`: the shared sockets (demux, UDP, ICE-TCP), which hand packets
//!   to the shards through `net::Inbound` and import nothing of them;
//! - `ice_path`: follows a viewer's client to a new address (NAT rebinding,
//!   ICE restart); `sdpfrag`: the ICE restart's `PATCH` bodies;
//! - `pair` (tests): a str0m client and a `Viewer` in memory on a manual clock.

// Public for the fuzz targets (fuzz/): a viewer's feedback on the direct path.
#[doc(hidden)]
pub mod direct;
mod doorbell;
// Public for the fuzz targets (fuzz/): the DTLS instance that holds a
// flight's early datagrams, and its walk over record headers.
#[doc(hidden)]
pub mod dtls;
mod due;
mod engine;
mod ice_path;
pub mod metrics;
pub mod negotiate;
// Public for the fuzz targets (fuzz/): the ICE-TCP framing, the demux and
// the WHIP frame path.
#[doc(hidden)]
pub mod net;
#[cfg(test)]
mod pair;
#[cfg(test)]
mod pair_direct;
#[doc(hidden)]
pub mod publish;
mod replay_policy;
mod resend_budget;
pub mod sdp;
pub mod sdpfrag;
mod shard;
/// Public for `benches/floor.rs`, which measures its protect.
pub mod srtp;
#[cfg(test)]
mod tests;
pub mod viewer;

use std::time::Instant;

pub use engine::{Bound, Engine, IceRestartError};
pub use net::IceTcp;
pub use publish::NewPublisher;

#[derive(Debug, thiserror::Error)]
pub enum ViewerError {
    #[error("malformed SDP offer: {0}")]
    BadOffer(String),
    #[error(
        "offer has no {wanted} codec the stream can use (offered: {offered}); stream '{stream}' sends {sends}"
    )]
    NoCodec {
        stream: String,
        wanted: String,
        offered: String,
        sends: String,
    },
    #[error(
        "offer asks to receive nothing this server sends (it needs a recvonly or sendrecv video or audio section)"
    )]
    NothingToReceive,
    #[error(
        "this browser offers only H.264 {offered}; stream '{stream}' is H.264 {profile}, which it may not play"
    )]
    H264Profile {
        stream: String,
        offered: String,
        profile: String,
    },
    #[error("WebRTC negotiation failed: {0}")]
    Negotiation(String),
    #[error("malformed SDP answer: {0}")]
    BadAnswer(String),
    #[error("no pending offer {0} (it was answered already, or timed out)")]
    NoPendingOffer(u64),
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("malformed SDP offer: {0}")]
    BadOffer(String),
    #[error(
        "offer has no codec roomcast can forward (offered: {offered}); send H.264 (packetization-mode=1), VP8, VP9 or AV1 video and/or Opus audio"
    )]
    NoCodec { offered: String },
    #[error(
        "offer sends nothing (a WHIP offer needs a sendonly or sendrecv audio or video section)"
    )]
    NothingToSend,
    #[error("WebRTC negotiation failed: {0}")]
    Negotiation(String),
}

impl From<sdp::OfferError> for ViewerError {
    fn from(e: sdp::OfferError) -> Self {
        ViewerError::BadOffer(e.to_string())
    }
}

impl From<sdp::OfferError> for PublishError {
    fn from(e: sdp::OfferError) -> Self {
        PublishError::BadOffer(e.to_string())
    }
}

pub struct Answer {
    pub id: u64,
    pub sdp: String,
}

/// Which of the server's candidates a session is offered (OME's `?transport=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// Every candidate (UDP and ICE-TCP, or TCP only with `tcp_force`).
    #[default]
    All,
    Udp,
    Tcp,
}

/// Per-session settings from authorization (SignedPolicy, admission webhook).
#[derive(Default)]
pub struct SessionOpts {
    pub transport: Transport,
    /// The session ends at this time.
    pub expires_at: Option<Instant>,
    /// Dropped when the session ends.
    pub guard: Option<Box<dyn Send>>,
}

/// A server-made offer waiting for the viewer's answer (OME signalling).
pub struct ViewerOffer {
    pub id: u64,
    pub sdp: String,
    /// `a=candidate` values (without `a=`), with the mid of the first section.
    pub candidates: Vec<String>,
    pub mid: String,
}
