//! OvenMediaEngine's WebRTC signalling over WebSocket, as OvenPlayer speaks it,
//! sans I/O:
//!
//! ```text
//! C→S {"command":"request_offer"}
//! S→C {"command":"offer","id":N,"peer_id":0,"code":200,"sdp":{"type":"offer","sdp":"…"},"candidates":[…]}
//! C→S {"command":"answer","id":N,"peer_id":0,"sdp":{"type":"answer","sdp":"…"}}
//! C→S {"command":"candidate","id":N,"candidates":[…]}     (ignored: the server is ICE-lite)
//! C→S {"command":"stop","id":N}  |  {"command":"ping"} → {"command":"pong"}
//! S→C {"code":<http status>,"error":"…"}                 (then the socket closes)
//! ```
//!
//! Every command but `request_offer` and `ping` must carry the session's `id`
//! (an int64), as OME checks.

use serde_json::{Value, json};

/// An error sent as `{"code", "error"}` before the socket closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    pub code: u16,
    pub message: String,
}

impl ProtocolError {
    pub fn new(code: u16, message: impl Into<String>) -> Self {
        ProtocolError {
            code,
            message: message.into(),
        }
    }

    pub fn to_json(&self) -> String {
        error_message(self.code, &self.message)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    RequestOffer,
    Answer { id: i64, sdp: String },
    Candidate { id: i64 },
    Stop { id: i64 },
    ChangeRendition { id: i64 },
    Ping,
    Pong,
}

fn id_of(v: &Value, command: &str) -> Result<i64, ProtocolError> {
    match v.get("id") {
        Some(id) => id.as_i64().ok_or_else(|| {
            ProtocolError::new(
                400,
                format!("\"{command}\": \"id\" must be an integer, got {id}"),
            )
        }),
        None => Err(ProtocolError::new(
            400,
            format!("\"{command}\" needs the \"id\" of the offer"),
        )),
    }
}

/// Reads one client message.
pub fn parse(text: &str) -> Result<Command, ProtocolError> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| ProtocolError::new(400, format!("the message is not JSON ({e})")))?;
    let Some(command) = v.get("command").and_then(Value::as_str) else {
        return Err(ProtocolError::new(
            400,
            "a message must be a JSON object with a \"command\" string",
        ));
    };
    Ok(match command {
        "request_offer" => Command::RequestOffer,
        "answer" => {
            let id = id_of(&v, command)?;
            let sdp = v.get("sdp");
            let (kind, text) = match sdp {
                Some(Value::Object(o)) => (
                    o.get("type").and_then(Value::as_str),
                    o.get("sdp").and_then(Value::as_str),
                ),
                _ => (None, None),
            };
            match (kind, text) {
                (Some("answer"), Some(s)) => Command::Answer {
                    id,
                    sdp: s.to_string(),
                },
                (Some(other), _) if other != "answer" => {
                    return Err(ProtocolError::new(
                        400,
                        format!("\"answer\": sdp.type must be \"answer\", got \"{other}\""),
                    ));
                }
                _ => {
                    return Err(ProtocolError::new(
                        400,
                        "\"answer\" needs \"sdp\": {\"type\": \"answer\", \"sdp\": \"v=0…\"}",
                    ));
                }
            }
        }
        "candidate" => Command::Candidate {
            id: id_of(&v, command)?,
        },
        "stop" => Command::Stop {
            id: id_of(&v, command)?,
        },
        "change_rendition" => Command::ChangeRendition {
            id: id_of(&v, command)?,
        },
        "ping" => Command::Ping,
        "pong" => Command::Pong,
        "request_offer_p2p" | "offer_p2p" | "answer_p2p" | "candidate_p2p" => {
            return Err(ProtocolError::new(
                400,
                format!("\"{command}\": P2P distribution is not supported"),
            ));
        }
        other => {
            return Err(ProtocolError::new(
                400,
                format!("unknown command \"{other}\""),
            ));
        }
    })
}

/// `{"code": code, "error": message}`.
pub fn error_message(code: u16, message: &str) -> String {
    json!({"code": code, "error": message}).to_string()
}

/// The offer, with the server's candidates listed as OME lists them.
pub fn offer_message(id: i64, sdp: &str, candidates: &[String], mid: &str) -> String {
    let candidates: Vec<Value> = candidates
        .iter()
        .map(|c| json!({"candidate": c, "sdpMLineIndex": 0, "sdpMid": mid}))
        .collect();
    json!({
        "command": "offer",
        "id": id,
        "peer_id": 0,
        "code": 200,
        "sdp": {"type": "offer", "sdp": sdp},
        "candidates": candidates,
    })
    .to_string()
}

/// What the driver does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Authorize, make an offer, then call [`Signalling::offered`].
    MakeOffer,
    /// Apply the answer to offer `id`, then call [`Signalling::playing`].
    ApplyAnswer {
        id: i64,
        sdp: String,
    },
    Send(String),
    /// The client ends the session.
    Stop,
    Ignore,
    Fail(ProtocolError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Offered(i64),
    Playing(i64),
}

/// One WebSocket's signalling state, with OME's id checks.
#[derive(Debug)]
pub struct Signalling {
    state: State,
    limit: usize,
}

impl Signalling {
    /// `limit`: the largest message accepted, in bytes.
    pub fn new(limit: usize) -> Self {
        Signalling {
            state: State::Idle,
            limit,
        }
    }

    /// The session's id once an offer was made.
    pub fn session(&self) -> Option<i64> {
        match self.state {
            State::Idle => None,
            State::Offered(id) | State::Playing(id) => Some(id),
        }
    }

    pub fn offered(&mut self, id: i64) {
        self.state = State::Offered(id);
    }

    pub fn playing(&mut self) {
        if let State::Offered(id) = self.state {
            self.state = State::Playing(id);
        }
    }

    /// The session was dropped (a new request_offer replaces it).
    pub fn reset(&mut self) {
        self.state = State::Idle;
    }

    pub fn on_text(&mut self, text: &str) -> Action {
        if text.len() > self.limit {
            return Action::Fail(ProtocolError::new(
                413,
                format!(
                    "message of {} bytes is larger than the limit of {} bytes",
                    text.len(),
                    self.limit
                ),
            ));
        }
        let cmd = match parse(text) {
            Ok(c) => c,
            Err(e) => return Action::Fail(e),
        };
        let check = |id: i64, state: State| -> Result<(), ProtocolError> {
            match state {
                State::Offered(s) | State::Playing(s) if s == id => Ok(()),
                State::Idle => Err(ProtocolError::new(
                    400,
                    format!("no session {id} on this connection (send request_offer first)"),
                )),
                State::Offered(s) | State::Playing(s) => Err(ProtocolError::new(
                    400,
                    format!("id {id} does not match this connection's session {s}"),
                )),
            }
        };
        match cmd {
            Command::RequestOffer => Action::MakeOffer,
            Command::Ping => Action::Send(json!({"command": "pong"}).to_string()),
            Command::Pong => Action::Ignore,
            Command::Answer { id, sdp } => {
                if let Err(e) = check(id, self.state) {
                    return Action::Fail(e);
                }
                match self.state {
                    State::Offered(_) => Action::ApplyAnswer { id, sdp },
                    _ => Action::Fail(ProtocolError::new(
                        400,
                        format!("session {id} was answered already"),
                    )),
                }
            }
            Command::Candidate { id } | Command::ChangeRendition { id } => {
                match check(id, self.state) {
                    Ok(()) => Action::Ignore,
                    Err(e) => Action::Fail(e),
                }
            }
            Command::Stop { id } => match check(id, self.state) {
                Ok(()) => Action::Stop,
                Err(e) => Action::Fail(e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(id: i64) -> String {
        json!({"command": "answer", "id": id, "peer_id": 0, "sdp": {"type": "answer", "sdp": "v=0\r\n"}})
            .to_string()
    }

    #[test]
    fn the_ovenplayer_exchange() {
        let mut s = Signalling::new(65536);
        assert_eq!(
            s.on_text(r#"{"command":"request_offer"}"#),
            Action::MakeOffer
        );
        s.offered(7);
        let offer: Value = serde_json::from_str(&offer_message(
            7,
            "v=0",
            &["candidate:1 1 UDP 1 1.2.3.4 5 typ host".into()],
            "0",
        ))
        .unwrap();
        assert_eq!(offer["command"], "offer");
        assert_eq!(offer["id"], 7);
        assert_eq!(offer["peer_id"], 0);
        assert_eq!(offer["sdp"]["type"], "offer");
        assert_eq!(offer["candidates"][0]["sdpMid"], "0");
        // Candidates before the answer are fine.
        assert_eq!(
            s.on_text(r#"{"command":"candidate","id":7,"peer_id":0,"candidates":[]}"#),
            Action::Ignore
        );
        assert_eq!(
            s.on_text(&answer(7)),
            Action::ApplyAnswer {
                id: 7,
                sdp: "v=0\r\n".into()
            }
        );
        s.playing();
        assert!(
            matches!(s.on_text(r#"{"command":"ping"}"#), Action::Send(p) if p.contains("pong"))
        );
        assert!(
            matches!(s.on_text(&answer(7)), Action::Fail(e) if e.message.contains("answered already"))
        );
        assert_eq!(s.on_text(r#"{"command":"stop","id":7}"#), Action::Stop);
    }

    #[test]
    fn bad_messages_are_errors() {
        let mut s = Signalling::new(100);
        let fail = |a: Action| match a {
            Action::Fail(e) => e,
            other => panic!("expected a failure, got {other:?}"),
        };
        let e = fail(s.on_text("{not json"));
        assert_eq!(e.code, 400);
        assert!(e.message.contains("not JSON"));
        assert!(fail(s.on_text("[1,2]")).message.contains("command"));
        assert!(
            fail(s.on_text(r#"{"command":"dance"}"#))
                .message
                .contains("unknown command")
        );
        // Commands need a session and its id.
        assert!(
            fail(s.on_text(&answer(1)))
                .message
                .contains("request_offer first")
        );
        s.offered(5);
        assert!(
            fail(s.on_text(&answer(6)))
                .message
                .contains("does not match")
        );
        assert!(
            fail(s.on_text(r#"{"command":"stop","id":"5"}"#))
                .message
                .contains("integer")
        );
        assert!(
            fail(s.on_text(r#"{"command":"stop"}"#))
                .message
                .contains("needs the \"id\"")
        );
        let wrong_type =
            json!({"command":"answer","id":5,"sdp":{"type":"offer","sdp":"v=0"}}).to_string();
        assert!(
            fail(s.on_text(&wrong_type))
                .message
                .contains("must be \"answer\"")
        );
        let big = format!(r#"{{"command":"ping","pad":"{}"}}"#, "x".repeat(200));
        let e = fail(s.on_text(&big));
        assert_eq!(e.code, 413);
        let e: Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(e["code"], 413);
        assert!(e["error"].as_str().unwrap().contains("limit"));
    }
}
