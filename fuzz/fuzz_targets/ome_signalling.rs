//! OvenPlayer's WebSocket signalling (src/egress/ome/protocol.rs): message
//! parsing and the per-socket state machine, driven as `http::ome` drives it,
//! with the engine behind it: `request_offer` makes a real offer, `answer`
//! goes through `Engine::answer_viewer` (caps, summary, str0m), `stop` and a
//! protocol error end the socket.
//!
//! Input: the client's text messages, one per line. The n-th offer of an
//! input has the wire id n (the server picks a random one).
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast::egress::ome::protocol::{Action, Signalling};
use roomcast::rtc::SessionOpts;
use roomcast_fuzz::{panics_the_server_catches_are_not_crashes, shared};

/// `http.max_body_bytes`' default, the signalling's message limit.
const LIMIT: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    panics_the_server_catches_are_not_crashes();
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let s = shared();
    let mut sig = Signalling::new(LIMIT);
    // (engine id, answered)
    let mut session: Option<(u64, bool)> = None;
    let mut offers = 0;
    let end = |session: Option<(u64, bool)>| match session {
        Some((id, true)) => {
            s.engine.remove_viewer(&s.stream.name, id);
        }
        Some((id, false)) => s.engine.cancel_offer(id),
        None => {}
    };
    for line in text.split('\n') {
        match sig.on_text(line) {
            Action::MakeOffer => {
                if let Some(old) = session.take() {
                    end(Some(old));
                    sig.reset();
                }
                match s.engine.offer_viewer(&s.stream, SessionOpts::default()) {
                    Ok(offer) => {
                        offers += 1;
                        sig.offered(offers);
                        session = Some((offer.id, false));
                    }
                    Err(_) => break,
                }
            }
            Action::ApplyAnswer { sdp, .. } => {
                let Some((id, _)) = session else { continue };
                match s.engine.answer_viewer(id, &sdp) {
                    Ok(()) => {
                        sig.playing();
                        session = Some((id, true));
                    }
                    Err(_) => {
                        session = None;
                        break;
                    }
                }
            }
            Action::Send(_) | Action::Ignore => {}
            Action::Stop | Action::Fail(_) => break,
        }
    }
    end(session);
});
