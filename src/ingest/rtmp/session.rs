//! The RTMP protocol core behind a small trait, so the driver does not depend on
//! one library. Today it is rml_rtmp (sans-I/O handshake and chunk/session
//! handling); scuffle-rtmp is the upgrade path for Enhanced RTMP (HEVC, AV1).

use bytes::Bytes;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult, StreamMetadata,
};

#[derive(Debug, thiserror::Error)]
pub enum RtmpError {
    #[error("RTMP handshake failed: {0}")]
    Handshake(String),
    #[error("RTMP protocol error: {0}")]
    Session(String),
}

/// What the driver acts on.
#[derive(Debug)]
pub enum RtmpEvent {
    /// Bytes to write to the socket, in order.
    Send(Vec<u8>),
    /// `connect` to an application (`rtmp://host/APP`).
    Connect {
        request_id: u32,
        app: String,
    },
    /// `publish` with a stream key.
    Publish {
        request_id: u32,
        app: String,
        key: String,
    },
    Unpublish,
    Metadata(StreamMetadata),
    /// An FLV video tag body.
    Video {
        data: Bytes,
        timestamp: u32,
    },
    /// An FLV audio tag body.
    Audio {
        data: Bytes,
        timestamp: u32,
    },
    /// Anything this server does not serve (play requests and the like).
    Unsupported(&'static str),
}

/// A server-side RTMP connection, sans I/O.
pub trait RtmpConnection: Send {
    /// Feeds bytes read from the socket; events are appended to `out`.
    fn receive(&mut self, data: &[u8], out: &mut Vec<RtmpEvent>) -> Result<(), RtmpError>;
    fn accept(&mut self, request_id: u32, out: &mut Vec<RtmpEvent>) -> Result<(), RtmpError>;
    fn reject(
        &mut self,
        request_id: u32,
        reason: &str,
        out: &mut Vec<RtmpEvent>,
    ) -> Result<(), RtmpError>;
}

enum State {
    Handshaking(Box<Handshake>),
    Session(Box<ServerSession>),
}

pub struct RmlConnection {
    state: State,
}

impl Default for RmlConnection {
    fn default() -> Self {
        RmlConnection {
            state: State::Handshaking(Box::new(Handshake::new(PeerType::Server))),
        }
    }
}

fn session_err(e: impl std::fmt::Display) -> RtmpError {
    RtmpError::Session(e.to_string())
}

fn push_results(results: Vec<ServerSessionResult>, out: &mut Vec<RtmpEvent>) {
    for r in results {
        match r {
            ServerSessionResult::OutboundResponse(p) => out.push(RtmpEvent::Send(p.bytes)),
            ServerSessionResult::RaisedEvent(ev) => out.push(match ev {
                ServerSessionEvent::ConnectionRequested {
                    request_id,
                    app_name,
                } => RtmpEvent::Connect {
                    request_id,
                    app: app_name,
                },
                ServerSessionEvent::PublishStreamRequested {
                    request_id,
                    app_name,
                    stream_key,
                    ..
                } => RtmpEvent::Publish {
                    request_id,
                    app: app_name,
                    key: stream_key,
                },
                ServerSessionEvent::PublishStreamFinished { .. } => RtmpEvent::Unpublish,
                ServerSessionEvent::StreamMetadataChanged { metadata, .. } => {
                    RtmpEvent::Metadata(metadata)
                }
                ServerSessionEvent::VideoDataReceived {
                    data, timestamp, ..
                } => RtmpEvent::Video {
                    data,
                    timestamp: timestamp.value,
                },
                ServerSessionEvent::AudioDataReceived {
                    data, timestamp, ..
                } => RtmpEvent::Audio {
                    data,
                    timestamp: timestamp.value,
                },
                ServerSessionEvent::PlayStreamRequested { .. } => {
                    RtmpEvent::Unsupported("RTMP playback")
                }
                _ => continue,
            }),
            ServerSessionResult::UnhandleableMessageReceived(_) => {}
        }
    }
}

impl RtmpConnection for RmlConnection {
    fn receive(&mut self, data: &[u8], out: &mut Vec<RtmpEvent>) -> Result<(), RtmpError> {
        match &mut self.state {
            State::Handshaking(h) => {
                match h
                    .process_bytes(data)
                    .map_err(|e| RtmpError::Handshake(format!("{e:?}")))?
                {
                    HandshakeProcessResult::InProgress { response_bytes } => {
                        if !response_bytes.is_empty() {
                            out.push(RtmpEvent::Send(response_bytes));
                        }
                        Ok(())
                    }
                    HandshakeProcessResult::Completed {
                        response_bytes,
                        remaining_bytes,
                    } => {
                        if !response_bytes.is_empty() {
                            out.push(RtmpEvent::Send(response_bytes));
                        }
                        let (session, results) =
                            ServerSession::new(ServerSessionConfig::new()).map_err(session_err)?;
                        push_results(results, out);
                        self.state = State::Session(Box::new(session));
                        if remaining_bytes.is_empty() {
                            Ok(())
                        } else {
                            self.receive(&remaining_bytes, out)
                        }
                    }
                }
            }
            State::Session(s) => {
                let results = s.handle_input(data).map_err(session_err)?;
                push_results(results, out);
                Ok(())
            }
        }
    }

    fn accept(&mut self, request_id: u32, out: &mut Vec<RtmpEvent>) -> Result<(), RtmpError> {
        let State::Session(s) = &mut self.state else {
            return Err(RtmpError::Session("request before handshake".into()));
        };
        push_results(s.accept_request(request_id).map_err(session_err)?, out);
        Ok(())
    }

    fn reject(
        &mut self,
        request_id: u32,
        reason: &str,
        out: &mut Vec<RtmpEvent>,
    ) -> Result<(), RtmpError> {
        let State::Session(s) = &mut self.state else {
            return Err(RtmpError::Session("request before handshake".into()));
        };
        let results = s
            .reject_request(request_id, "NetStream.Publish.BadName", reason)
            .map_err(session_err)?;
        push_results(results, out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_fails_the_handshake_cleanly() {
        let mut c = RmlConnection::default();
        let mut out = Vec::new();
        // Version byte must be 3; anything else is refused, not panicked on.
        let garbage = vec![0x47u8; 4000];
        assert!(c.receive(&garbage, &mut out).is_err());
    }

    #[test]
    fn requests_before_handshake_are_errors() {
        let mut c = RmlConnection::default();
        let mut out = Vec::new();
        assert!(c.accept(1, &mut out).is_err());
        assert!(c.reject(1, "x", &mut out).is_err());
    }
}
