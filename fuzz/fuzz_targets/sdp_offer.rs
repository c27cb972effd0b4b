//! WHEP and WHIP offers through the functions the HTTP handlers call
//! (`Engine::add_viewer_with`, `Engine::add_publisher`): the caps and the
//! one-pass summary (src/rtc/sdp.rs), codec and profile choice, str0m's SDP
//! parser and negotiation, and the answer. A negotiated session is removed
//! again so the engine stays small.
//!
//! Input: the offer's bytes (the handlers take UTF-8 text only).
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast::hub::IngestProtocol;
use roomcast::rtc::SessionOpts;
use roomcast_fuzz::{panics_the_server_catches_are_not_crashes, shared};

fuzz_target!(|data: &[u8]| {
    panics_the_server_catches_are_not_crashes();
    let Ok(offer) = std::str::from_utf8(data) else {
        return;
    };
    let s = shared();
    if let Ok(answer) = s
        .engine
        .add_viewer_with(&s.stream, offer, SessionOpts::default())
    {
        // The answer is valid SDP for our own summarizer (as a WHEP client reads it).
        roomcast::rtc::sdp::summarize_offer(&answer.sdp).expect("our answer summarizes");
        s.engine.remove_viewer(&s.stream.name, answer.id);
    }
    if let Ok(answer) = s.engine.add_publisher(
        &s.hub,
        &s.stream,
        IngestProtocol::Whip,
        offer,
        SessionOpts::default(),
    ) {
        s.engine.remove_publisher(&s.stream.name, answer.id);
    }
});
