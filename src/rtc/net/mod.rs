//! The two sockets every peer shares: one UDP socket and one ICE-TCP listener
//! (passive, RFC 4571: each packet is prefixed with its 16-bit length).
//!
//! Incoming packets are routed to the worker shard that owns the peer: by source
//! address once known, and for a new address by the ICE username in its STUN
//! binding request (`<our ufrag>:<their ufrag>`). What is routed leaves
//! through [`Inbound`], so this module knows nothing of the shards (the
//! shard imports it, not the other way round).

mod demux;
mod packet_buf;
mod tcp;
mod udp;

use std::net::SocketAddr;
use std::time::Instant;

use str0m::net::Protocol;

pub use demux::{Demux, Route};
pub use packet_buf::PacketBuf;
pub use tcp::{IceTcp, TcpConns, read_frame, run_tcp_listener};
pub use udp::{NetOut, SendBatch, UDP_RECEIVE_BUFFER, UdpReader, grow_receive_buffer};

/// Largest datagram accepted; WebRTC packets stay under the path MTU.
const MAX_DATAGRAM: usize = 2048;

/// A packet from the network, routed to one session.
pub struct Datagram {
    pub peer: u64,
    pub proto: Protocol,
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub data: PacketBuf,
    pub at: Instant,
    /// The demux learned `source` with this packet: the session remembers
    /// it, to have it forgotten when the session ends.
    pub new_addr: bool,
}

/// Where routed packets go: the worker shards, by index. Never blocks.
pub trait Inbound: Send + Sync + 'static {
    fn deliver(&self, shard: usize, d: Datagram);
}

/// A binding request as an ICE agent sends it, signed with `pwd`
/// (USERNAME, MESSAGE-INTEGRITY, FINGERPRINT-like trailer). For tests and
/// benchmarks that connect as a peer.
#[doc(hidden)]
pub fn binding_request(username: &str, pwd: &str) -> Vec<u8> {
    use aws_lc_rs::hmac;
    let mut attrs = vec![0x00, 0x06];
    attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
    attrs.extend_from_slice(username.as_bytes());
    while attrs.len() % 4 != 0 {
        attrs.push(0);
    }
    let mut m = vec![0x00, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42];
    m.extend_from_slice(&[7; 12]);
    m.extend_from_slice(&attrs);
    // Length up to the end of MESSAGE-INTEGRITY, then sign.
    let len = (m.len() - 20 + 24) as u16;
    m[2..4].copy_from_slice(&len.to_be_bytes());
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, pwd.as_bytes());
    let tag = hmac::sign(&key, &m);
    m.extend_from_slice(&[0x00, 0x08, 0x00, 20]);
    m.extend_from_slice(tag.as_ref());
    // FINGERPRINT follows and is not covered.
    m.extend_from_slice(&[0x80, 0x28, 0x00, 0x04, 1, 2, 3, 4]);
    let len = (m.len() - 20) as u16;
    m[2..4].copy_from_slice(&len.to_be_bytes());
    m
}
