//! The attack suite (issue 10): with a live public stream (ffmpeg over RTMP)
//! and an aiortc viewer decoding it, an outsider tries what would take the
//! server down or over. After each attack: the process is alive, `/healthz`
//! answers in under 1 s, the viewer kept decoding, RSS is back within 20 %
//! of the baseline, the attacker got a clear refusal or a closed connection,
//! and the refusals were logged at most once per interval.
//!
//! `cargo test --test attacks` (the media tests take `common::serial()`).

mod common;

#[path = "attacks/bodies.rs"]
mod bodies;
#[path = "attacks/fixture.rs"]
mod fixture;
#[path = "attacks/floods.rs"]
mod floods;
#[path = "attacks/rtmp.rs"]
mod rtmp;
#[path = "attacks/surfaces.rs"]
mod surfaces;
#[path = "attacks/tls.rs"]
mod tls_listeners;
#[path = "attacks/webrtc.rs"]
mod webrtc;
