//! The shared sockets' input side (src/rtc/net.rs): RFC 4571 framing of an
//! ICE-TCP connection (`read_frame`) and the demux every UDP datagram and TCP
//! frame goes through (`Demux::route`: the STUN check's USERNAME and
//! MESSAGE-INTEGRITY for a new address, the address table after that).
//!
//! Input: an ICE-TCP byte stream. Each frame is routed as the TCP reader
//! does, and again as a UDP datagram from a source picked by its first byte.
//! The demux knows one session: ufrag `fuzzufrag`, password
//! `fuzzpasswordfuzzpassword` (the seeds' checks are signed with it).
#![no_main]

use std::net::SocketAddr;

use futures_util::FutureExt;
use libfuzzer_sys::fuzz_target;
use roomcast::rtc::net::{Demux, Route, read_frame};
use str0m::net::Protocol;

pub const UFRAG: &str = "fuzzufrag";
pub const PWD: &str = "fuzzpasswordfuzzpassword";

fuzz_target!(|data: &[u8]| {
    let demux = Demux::default();
    let route = Route { shard: 0, peer: 1 };
    demux.add_ufrag(UFRAG, PWD, route);
    let tcp_peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let mut rd = data;
    let mut len_buf = [0u8; 2];
    loop {
        // A slice never blocks: the frame is complete or the input ended.
        let frame = match read_frame(&mut rd, &mut len_buf).now_or_never() {
            Some(Ok(Some(f))) => f,
            Some(Ok(None)) => break, // longer than a datagram: the reader closes
            Some(Err(_)) | None => break,
        };
        if let Some((r, _new)) = demux.route(Protocol::Tcp, tcp_peer, &frame) {
            assert_eq!(r, route);
        }
        let port = 50000 + u16::from(frame.first().copied().unwrap_or(0) & 7);
        let udp_peer = SocketAddr::from(([127, 0, 0, 2], port));
        if let Some((r, _)) = demux.route(Protocol::Udp, udp_peer, &frame) {
            assert_eq!(r, route);
        }
    }
    demux.remove(UFRAG, &[(Protocol::Tcp, tcp_peer)]);
});
