//! The publishing side of RTMP after the handshake, sans I/O: `connect`
//! (offering Enhanced RTMP's `fourCcList`), `createStream`, `publish`, then
//! audio and video messages.
//!
//! It replaced rml_rtmp's `ClientSession`, which can neither add
//! `fourCcList` to `connect` nor show the reply's properties, and whose
//! chunk and AMF0 readers are the ones the ingest dropped as unsafe. The
//! destination's bytes are read with the ingest's capped chunk reader and
//! AMF0 decoder: a destination is the network too.

use crate::ingest::rtmp::core::amf0::{self, Amf0Value};
use crate::ingest::rtmp::core::chunk::{self, ChunkReader, Limits, write_message};

use super::codecs::PushCodecs;

/// Our chunk size for what we send (announced after `connect` succeeds).
const OUT_CHUNK_SIZE: u32 = 4096;
/// Our acknowledgement window (a publisher receives almost nothing).
const OUR_WINDOW: u32 = 2_500_000;
/// Largest message of any type a destination may send us: only commands
/// and control come back, and a legitimate reply is a few hundred bytes.
const MAX_INBOUND_MESSAGE: u32 = 64 * 1024;
/// Unfinished messages held at once across the destination's chunk streams.
const MAX_INBOUND_BUFFERED: usize = 2 * MAX_INBOUND_MESSAGE as usize;
/// Distinct chunk streams a destination may use (servers use two or three).
const MAX_INBOUND_CHUNK_STREAMS: usize = 8;

const CSID_CONTROL: u8 = 2;
const CSID_COMMAND: u8 = 3;
const CSID_AUDIO: u8 = 4;
const CSID_VIDEO: u8 = 6;

const TX_CONNECT: f64 = 1.0;
const TX_CREATE_STREAM: f64 = 2.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    CreatingStream,
    Publishing,
    Live,
}

/// What the destination's replies mean for the push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// `connect` succeeded; what its reply advertises for Enhanced RTMP
    /// (`None`: nothing).
    Connected(Option<PushCodecs>),
    /// `publish` succeeded: media may flow.
    Publishing,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The destination said no (`_error`, an error `onStatus`, a bad key).
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Protocol(String),
}

pub struct PublishClient {
    reader: ChunkReader,
    state: State,
    stream_id: u32,
    /// The destination's acknowledgement window and the bytes received.
    window: u32,
    received: u32,
    acked: u32,
}

impl Default for PublishClient {
    fn default() -> Self {
        Self::new()
    }
}

impl PublishClient {
    pub fn new() -> Self {
        PublishClient {
            reader: ChunkReader::new(inbound_limits()),
            state: State::Connecting,
            stream_id: 0,
            window: 0,
            received: 0,
            acked: 0,
        }
    }

    /// The `connect` command for `app` (`tc_url` without the key), offering
    /// `fourccs` (none: a legacy connect).
    pub fn connect(&mut self, app: &str, tc_url: &str, fourccs: &[&str], out: &mut Vec<u8>) {
        let mut props: Vec<(String, Amf0Value)> = vec![
            ("app".into(), app.into()),
            ("type".into(), "nonprivate".into()),
            ("flashVer".into(), "FMLE/3.0 (compatible; roomcast)".into()),
            ("tcUrl".into(), tc_url.into()),
        ];
        if !fourccs.is_empty() {
            props.push((
                "fourCcList".into(),
                Amf0Value::StrictArray(fourccs.iter().map(|&f| f.into()).collect()),
            ));
        }
        self.command(
            0,
            &[
                "connect".into(),
                TX_CONNECT.into(),
                Amf0Value::Object(props),
            ],
            out,
        );
    }

    pub fn is_live(&self) -> bool {
        self.state == State::Live
    }

    /// The destination's bytes: replies become events and our answers go
    /// to `out`. `key` is only put in the `publish` command.
    pub fn receive(
        &mut self,
        mut data: &[u8],
        key: &str,
        out: &mut Vec<u8>,
        events: &mut Vec<ClientEvent>,
    ) -> Result<(), ClientError> {
        self.received = self.received.wrapping_add(data.len() as u32);
        if self.window > 0 && self.received.wrapping_sub(self.acked) >= self.window {
            self.acked = self.received;
            self.control(chunk::TYPE_ACK, &self.received.to_be_bytes(), out);
        }
        loop {
            let m = self
                .reader
                .next(&mut data)
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            let Some(m) = m else { return Ok(()) };
            let p = &m.payload[..];
            match m.type_id {
                chunk::TYPE_SET_CHUNK_SIZE if p.len() >= 4 => {
                    let size = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff;
                    self.reader
                        .set_chunk_size(size)
                        .map_err(|e| ClientError::Protocol(e.to_string()))?;
                }
                chunk::TYPE_ABORT if p.len() >= 4 => {
                    self.reader
                        .abort(u32::from_be_bytes([p[0], p[1], p[2], p[3]]));
                }
                chunk::TYPE_WINDOW_ACK_SIZE if p.len() >= 4 => {
                    self.window = u32::from_be_bytes([p[0], p[1], p[2], p[3]]);
                }
                // Ping request: answer with a ping response of the same time.
                chunk::TYPE_USER_CONTROL if p.len() >= 6 && p[..2] == [0, 6] => {
                    let mut r = [0u8; 6];
                    r[1] = 7;
                    r[2..].copy_from_slice(&p[2..6]);
                    self.control(chunk::TYPE_USER_CONTROL, &r, out);
                }
                chunk::TYPE_AMF0_COMMAND => {
                    let values = amf0::decode_all(p)
                        .map_err(|e| ClientError::Protocol(format!("reading a command: {e}")))?;
                    self.on_command(&values, key, out, events)?;
                }
                _ => {}
            }
        }
    }

    fn on_command(
        &mut self,
        values: &[Amf0Value],
        key: &str,
        out: &mut Vec<u8>,
        events: &mut Vec<ClientEvent>,
    ) -> Result<(), ClientError> {
        let name = values.first().and_then(Amf0Value::as_str).unwrap_or("");
        let tx = values.get(1).and_then(Amf0Value::as_number);
        let info = values.get(3);
        let field = |k: &str| info.and_then(|i| i.get(k)).and_then(Amf0Value::as_str);
        match (name, self.state) {
            ("_result", State::Connecting) if tx == Some(TX_CONNECT) => {
                events.push(ClientEvent::Connected(PushCodecs::from_connect_reply(
                    values,
                )));
                self.control(chunk::TYPE_WINDOW_ACK_SIZE, &OUR_WINDOW.to_be_bytes(), out);
                self.control(
                    chunk::TYPE_SET_CHUNK_SIZE,
                    &OUT_CHUNK_SIZE.to_be_bytes(),
                    out,
                );
                self.command(
                    0,
                    &[
                        "createStream".into(),
                        TX_CREATE_STREAM.into(),
                        Amf0Value::Null,
                    ],
                    out,
                );
                self.state = State::CreatingStream;
            }
            ("_result", State::CreatingStream) if tx == Some(TX_CREATE_STREAM) => {
                let id = info
                    .and_then(Amf0Value::as_number)
                    .filter(|n| (1.0..=f64::from(u16::MAX)).contains(n))
                    .ok_or_else(|| {
                        ClientError::Protocol("createStream answered without a stream id".into())
                    })?;
                self.stream_id = id as u32;
                let publish = [
                    "publish".into(),
                    0.0.into(),
                    Amf0Value::Null,
                    key.into(),
                    "live".into(),
                ];
                self.command(self.stream_id, &publish, out);
                self.state = State::Publishing;
            }
            ("_error", _) => {
                let why = field("description")
                    .filter(|d| !d.is_empty())
                    .or(field("code"))
                    .unwrap_or("an error without a description");
                return Err(ClientError::Refused(clean(why, key)));
            }
            ("onStatus", _) => {
                let code = field("code").unwrap_or("");
                let level = field("level").unwrap_or("");
                if code == "NetStream.Publish.Start" && self.state == State::Publishing {
                    self.state = State::Live;
                    events.push(ClientEvent::Publishing);
                } else if level == "error"
                    || ["Error", "Failed", "BadName", "Rejected"]
                        .iter()
                        .any(|w| code.contains(w))
                {
                    return Err(ClientError::Refused(clean(code, key)));
                }
            }
            ("close", _) => {
                return Err(ClientError::Refused(
                    "the destination closed the connection".into(),
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// One FLV video tag body as an RTMP video message.
    pub fn video(&self, ts_ms: u32, body: &[u8], out: &mut Vec<u8>) {
        write_message(
            out,
            CSID_VIDEO,
            chunk::TYPE_VIDEO,
            self.stream_id,
            ts_ms,
            body,
            OUT_CHUNK_SIZE,
        );
    }

    /// One FLV audio tag body as an RTMP audio message.
    pub fn audio(&self, ts_ms: u32, body: &[u8], out: &mut Vec<u8>) {
        write_message(
            out,
            CSID_AUDIO,
            chunk::TYPE_AUDIO,
            self.stream_id,
            ts_ms,
            body,
            OUT_CHUNK_SIZE,
        );
    }

    fn control(&self, type_id: u8, payload: &[u8], out: &mut Vec<u8>) {
        // Before Set Chunk Size went out the peer reads 128-byte chunks;
        // control messages are shorter than that anyway.
        write_message(
            out,
            CSID_CONTROL,
            type_id,
            0,
            0,
            payload,
            chunk::DEFAULT_CHUNK_SIZE,
        );
    }

    fn command(&self, stream_id: u32, values: &[Amf0Value], out: &mut Vec<u8>) {
        let mut payload = Vec::with_capacity(256);
        for v in values {
            amf0::encode(v, &mut payload);
        }
        // `connect` goes before our Set Chunk Size: the default size then.
        let size = if self.state == State::Connecting {
            chunk::DEFAULT_CHUNK_SIZE
        } else {
            OUT_CHUNK_SIZE
        };
        write_message(
            out,
            CSID_COMMAND,
            chunk::TYPE_AMF0_COMMAND,
            stream_id,
            0,
            &payload,
            size,
        );
    }
}

/// The reader's bounds, spelled out: `Limits::new` is the ingest's (large
/// audio/video, 256 KiB commands, 1 MiB+ buffered), too loose for a peer
/// that only answers commands.
fn inbound_limits() -> Limits {
    Limits {
        max_message_bytes: MAX_INBOUND_MESSAGE,
        max_other_bytes: MAX_INBOUND_MESSAGE,
        max_chunk_streams: MAX_INBOUND_CHUNK_STREAMS,
        max_buffered_bytes: MAX_INBOUND_BUFFERED,
    }
}

/// A destination's text for health and logs: printable, short, and without
/// the stream key. The text reaches `warn!` and the public restream health
/// (`GET /api/v1/streams/{name}`), and a server may quote the stream path it
/// refused: the key, verbatim or URL-encoded, becomes `…`.
fn clean(s: &str, key: &str) -> String {
    let mut text: String = s.chars().filter(|c| !c.is_control()).collect();
    if !key.is_empty() {
        let upper = percent_encode(key, true);
        let lower = percent_encode(key, false);
        for form in [key, &upper, &lower] {
            if text.contains(form) {
                text = text.replace(form, "…");
            }
        }
    }
    text.chars().take(200).collect()
}

/// `key` with every byte but RFC 3986's unreserved ones as `%XX`.
fn percent_encode(key: &str, upper: bool) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(key.len() * 3);
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else if upper {
            let _ = write!(out, "%{b:02X}");
        } else {
            let _ = write!(out, "%{b:02x}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::rtmp::core::{RtmpEvent, ServerCore};
    use crate::restream::codecs::OFFERED_FOURCCS;

    /// Our client against roomcast's own RTMP server core, in memory: the
    /// connect offers `fourCcList`, publish is accepted, and media arrives.
    #[test]
    fn publishes_to_roomcasts_own_server_core_with_a_fourcc_list() {
        let mut server = ServerCore::new(8 << 20);
        let mut client = PublishClient::new();
        let mut server_events = Vec::new();
        // The handshake: C0+C1, then C2 (S1 echoed) once S0+S1+S2 arrived.
        let mut c01 = vec![3u8];
        c01.extend(std::iter::repeat_n(7u8, 1536));
        server.receive(&c01, &mut server_events).unwrap();
        let Some(RtmpEvent::Send(s012)) = server_events.pop() else {
            panic!("no S0+S1+S2")
        };
        assert_eq!(s012.len(), 3073);
        let mut wire = s012[1..1537].to_vec();
        client.connect("live", "rtmp://127.0.0.1/live", OFFERED_FOURCCS, &mut wire);
        let key = "the-stream-key";
        let mut events = Vec::new();
        let mut published_key = None;
        for _ in 0..10 {
            server.receive(&wire, &mut server_events).unwrap();
            wire.clear();
            let mut back = Vec::new();
            while !server_events.is_empty() {
                for e in std::mem::take(&mut server_events) {
                    match e {
                        RtmpEvent::Send(b) => back.extend(b),
                        RtmpEvent::Connect { request_id, app } => {
                            assert_eq!(app, "live");
                            server.accept(request_id, &mut server_events).unwrap();
                        }
                        RtmpEvent::Publish {
                            request_id, key, ..
                        } => {
                            published_key = Some(key);
                            server.accept(request_id, &mut server_events).unwrap();
                        }
                        other => panic!("{other:?}"),
                    }
                }
            }
            if back.is_empty() {
                break;
            }
            client.receive(&back, key, &mut wire, &mut events).unwrap();
        }
        assert!(client.is_live(), "{events:?}");
        assert_eq!(published_key.as_deref(), Some(key));
        // roomcast's server says nothing about Enhanced RTMP in its reply.
        assert_eq!(
            events,
            vec![ClientEvent::Connected(None), ClientEvent::Publishing]
        );
        // A video tag bigger than a chunk arrives whole.
        let body: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        client.video(40, &body, &mut wire);
        server.receive(&wire, &mut server_events).unwrap();
        assert!(
            server_events.iter().any(
                |e| matches!(e, RtmpEvent::Video { timestamp: 40, data } if data[..] == body[..])
            ),
            "{server_events:?}"
        );
    }

    #[test]
    fn a_refusal_quoting_the_stream_key_does_not_repeat_it() {
        let key = "live_123/sk+x y";
        let quote = |text: &str| {
            let mut p = Vec::new();
            for v in [
                "_error".into(),
                2.0.into(),
                Amf0Value::Null,
                Amf0Value::Object(vec![("description".into(), text.into())]),
            ] {
                amf0::encode(&v, &mut p);
            }
            let mut w = Vec::new();
            write_message(&mut w, 3, chunk::TYPE_AMF0_COMMAND, 0, 0, &p, 128);
            let mut c = PublishClient::new();
            match c.receive(&w, key, &mut Vec::new(), &mut Vec::new()) {
                Err(ClientError::Refused(why)) => why,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            quote("publish live/live_123/sk+x y refused: live_123/sk+x y is taken"),
            "publish live/… refused: … is taken"
        );
        assert_eq!(
            quote("no stream rtmp://h/live/live_123%2Fsk%2Bx%20y"),
            "no stream rtmp://h/live/…"
        );
        assert_eq!(quote("bad path live_123%2fsk%2bx%20y"), "bad path …");
        // A key split by a control character is still found.
        assert_eq!(
            quote("stream live_123/sk+\nx y rejected"),
            "stream … rejected"
        );
        // Other text is kept.
        assert_eq!(
            quote("Connection failed: bad app"),
            "Connection failed: bad app"
        );
    }

    #[test]
    fn refusals_and_hostile_replies_are_errors_not_panics() {
        let mut c = PublishClient::new();
        let mut out = Vec::new();
        let mut ev = Vec::new();
        let msg = |values: &[Amf0Value]| {
            let mut p = Vec::new();
            for v in values {
                amf0::encode(v, &mut p);
            }
            let mut w = Vec::new();
            write_message(&mut w, 3, chunk::TYPE_AMF0_COMMAND, 0, 0, &p, 128);
            w
        };
        let err = msg(&[
            "_error".into(),
            1.0.into(),
            Amf0Value::Null,
            Amf0Value::Object(vec![(
                "description".into(),
                "Connection failed: bad app\n".into(),
            )]),
        ]);
        assert_eq!(
            c.receive(&err, "k", &mut out, &mut ev),
            Err(ClientError::Refused("Connection failed: bad app".into()))
        );
        let mut c = PublishClient::new();
        let bad = msg(&[
            "onStatus".into(),
            0.0.into(),
            Amf0Value::Null,
            Amf0Value::Object(vec![
                ("level".into(), "error".into()),
                ("code".into(), "NetStream.Publish.BadName".into()),
            ]),
        ]);
        assert!(matches!(
            c.receive(&bad, "k", &mut out, &mut ev),
            Err(ClientError::Refused(code)) if code == "NetStream.Publish.BadName"
        ));
        // A command over the bound is refused from its header, before
        // anything is buffered (the ingest's reader would take 256 KiB).
        let mut c = PublishClient::new();
        let big = [
            3,
            0,
            0,
            0,
            0x01,
            0x00,
            0x01,
            chunk::TYPE_AMF0_COMMAND,
            0,
            0,
            0,
            0,
        ];
        assert!(matches!(
            c.receive(&big, "k", &mut out, &mut ev),
            Err(ClientError::Protocol(e)) if e.contains("over the limit of 65536")
        ));
        assert_eq!(c.reader.buffered(), 0);
        // One just under the bound, sent whole, is read (and ignored).
        let mut c = PublishClient::new();
        let mut wire = Vec::new();
        let filler = vec![5u8; MAX_INBOUND_MESSAGE as usize];
        write_message(&mut wire, 3, chunk::TYPE_AMF0_DATA, 0, 0, &filler, 128);
        assert_eq!(c.receive(&wire, "k", &mut out, &mut ev), Ok(()));
        // Unfinished messages interleaved on five chunk streams, each under
        // the bound: the total held stays bounded and ends in an error.
        let mut c = PublishClient::new();
        let mut wire = Vec::new();
        let declared: u32 = 60_000;
        for csid in 3..8u8 {
            let l = declared.to_be_bytes();
            wire.extend_from_slice(&[
                csid,
                0,
                0,
                0,
                l[1],
                l[2],
                l[3],
                chunk::TYPE_AMF0_COMMAND,
                0,
                0,
                0,
                0,
            ]);
            wire.extend_from_slice(&[0u8; 128]);
        }
        for _ in 1..(declared / 128) {
            for csid in 3..8u8 {
                wire.push(0xc0 | csid);
                wire.extend_from_slice(&[0u8; 128]);
            }
        }
        let r = c.receive(&wire, "k", &mut out, &mut ev);
        assert!(
            matches!(&r, Err(ClientError::Protocol(e)) if e.contains("unfinished messages")),
            "{r:?}"
        );
        assert!(c.reader.buffered() <= MAX_INBOUND_BUFFERED + 128);
        // Random bytes: an error or nothing, never a panic.
        let mut x = 0x1234_5678u32;
        for len in 0..400 {
            let mut c = PublishClient::new();
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = c.receive(&data, "k", &mut out, &mut ev);
        }
    }
}
