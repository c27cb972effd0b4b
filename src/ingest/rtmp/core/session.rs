//! The server side of an RTMP publishing connection, sans I/O: bytes from the
//! socket in, [`RtmpEvent`]s (bytes to send, connect/publish requests, media)
//! out. It answers what ffmpeg, OBS (librtmp) and GStreamer's rtmp2sink send
//! (connect, releaseStream, FCPublish, createStream, publish, FCUnpublish,
//! deleteStream, @setDataFrame) and refuses anything malformed with an
//! [`RtmpError`] — the driver then closes the connection. No input panics.

use bytes::Bytes;

use super::amf0::{self, Amf0Value};
use super::chunk::{self, ChunkError, ChunkReader, Limits, Message};
use super::handshake::{Handshake, HandshakeError};
use crate::media::flv::Metadata;

/// Message streams (`createStream`) one connection may hold at once; a
/// publisher needs one.
pub const MAX_MESSAGE_STREAMS: u32 = 8;
/// Our outgoing chunk size: every reply fits in one chunk.
const OUT_CHUNK_SIZE: u32 = 4096;
/// Window Acknowledgement Size and peer bandwidth we announce.
const WINDOW: u32 = 2_500_000;
/// Chunk streams of our replies: protocol control, then commands.
const CSID_CONTROL: u8 = 2;
const CSID_COMMAND: u8 = 3;
const CSID_STREAM: u8 = 5;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RtmpError {
    #[error("RTMP handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("RTMP chunk stream: {0}")]
    Chunk(#[from] ChunkError),
    #[error("bad AMF0 in a {what}: {err}")]
    Amf0 {
        what: &'static str,
        err: amf0::Amf0Error,
    },
    /// Well-formed bytes that break the protocol's rules.
    #[error("RTMP protocol violation: {0}")]
    Protocol(&'static str),
    #[error("no such request {0}")]
    NoRequest(u32),
}

impl RtmpError {
    /// A short fixed name of the kind of error, for rate-limited logging.
    pub fn kind(&self) -> &'static str {
        match self {
            RtmpError::Handshake(_) => "handshake",
            RtmpError::Chunk(e) => e.kind(),
            RtmpError::Amf0 { .. } => "bad AMF0",
            RtmpError::Protocol(what) => what,
            RtmpError::NoRequest(_) => "no such request",
        }
    }
}

/// What the driver acts on.
#[derive(Debug)]
pub enum RtmpEvent {
    /// Bytes to write to the socket, in order.
    Send(Vec<u8>),
    /// `connect` to an application (`rtmp://host/APP`); answer with
    /// [`ServerCore::accept`].
    Connect {
        request_id: u32,
        app: String,
    },
    /// `publish` with a stream key; answer with accept or reject.
    Publish {
        request_id: u32,
        app: String,
        key: String,
    },
    /// The publisher stopped (FCUnpublish, deleteStream or closeStream).
    Unpublish,
    Metadata(Metadata),
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

#[derive(Debug, Clone, PartialEq)]
enum Request {
    Connect { txid: f64 },
    Publish { stream_id: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No `connect` yet.
    New,
    /// `connect` asked, waiting for the driver.
    Connecting,
    Connected,
}

pub struct ServerCore {
    handshake: Handshake,
    chunks: ChunkReader,
    phase: Phase,
    app: String,
    /// Ids of the message streams created (1..=MAX_MESSAGE_STREAMS).
    streams: Vec<u32>,
    /// Requests the driver has yet to answer: a connect and a publish at
    /// most, as each may be asked once. The driver answers events in order,
    /// so a client that sends its publish before our connect reply works.
    pending: Vec<(u32, Request)>,
    next_request: u32,
    /// The stream a publish was asked for. Media on it is passed on at once:
    /// the driver sees it after the Publish event, and a refusal closes the
    /// connection before any of it is used.
    publishing: Option<u32>,
    /// A publish was asked on this connection (one per connection).
    publish_asked: bool,
    /// Acknowledgements: bytes received, the peer's window, bytes at the last ack.
    received: u64,
    ack_window: Option<u32>,
    acked: u64,
    /// Replies not yet handed out as a `Send` event.
    out: Vec<u8>,
    /// The metadata last passed on: GStreamer's flvmux repeats it about
    /// twice a second, and only a change is news.
    metadata: Option<Metadata>,
}

impl ServerCore {
    /// `max_message_bytes`: the longest audio/video message a client may declare.
    pub fn new(max_message_bytes: u32) -> Self {
        ServerCore {
            handshake: Handshake::default(),
            chunks: ChunkReader::new(Limits::new(max_message_bytes)),
            phase: Phase::New,
            app: String::new(),
            streams: Vec::new(),
            pending: Vec::new(),
            next_request: 1,
            publishing: None,
            publish_asked: false,
            received: 0,
            ack_window: None,
            acked: 0,
            out: Vec::new(),
            metadata: None,
        }
    }

    /// Feeds bytes read from the socket; events are appended to `events`.
    pub fn receive(&mut self, data: &[u8], events: &mut Vec<RtmpEvent>) -> Result<(), RtmpError> {
        let r = self.receive_inner(data, events);
        self.flush(events);
        r
    }

    fn receive_inner(
        &mut self,
        mut data: &[u8],
        events: &mut Vec<RtmpEvent>,
    ) -> Result<(), RtmpError> {
        self.received = self.received.saturating_add(data.len() as u64);
        if !self.handshake.is_done() {
            let used = self.handshake.receive(data, &mut self.out)?;
            data = &data[used..];
        }
        while let Some(m) = self.chunks.next(&mut data)? {
            self.on_message(m, events)?;
        }
        if let Some(window) = self.ack_window
            && self.received - self.acked >= u64::from(window.max(1))
        {
            self.acked = self.received;
            // The sequence number is the byte count modulo 2^32.
            let seq = self.received as u32;
            self.control(chunk::TYPE_ACK, &seq.to_be_bytes());
        }
        Ok(())
    }

    /// Bytes of unfinished messages held.
    #[cfg(test)]
    fn chunks_buffered(&self) -> usize {
        self.chunks.buffered()
    }

    /// Accepts the pending connect or publish request.
    pub fn accept(
        &mut self,
        request_id: u32,
        events: &mut Vec<RtmpEvent>,
    ) -> Result<(), RtmpError> {
        let request = self.take_request(request_id)?;
        match request {
            Request::Connect { txid } => {
                self.phase = Phase::Connected;
                self.control(chunk::TYPE_WINDOW_ACK_SIZE, &WINDOW.to_be_bytes());
                let mut bw = WINDOW.to_be_bytes().to_vec();
                bw.push(2); // dynamic
                self.control(chunk::TYPE_SET_PEER_BANDWIDTH, &bw);
                self.control(chunk::TYPE_SET_CHUNK_SIZE, &OUT_CHUNK_SIZE.to_be_bytes());
                self.stream_begin(0);
                let props = Amf0Value::Object(vec![
                    ("fmsVer".into(), "FMS/3,5,7,7009".into()),
                    ("capabilities".into(), 31.0.into()),
                ]);
                let info = Amf0Value::Object(vec![
                    ("level".into(), "status".into()),
                    ("code".into(), "NetConnection.Connect.Success".into()),
                    ("description".into(), "Connection succeeded.".into()),
                    ("objectEncoding".into(), 0.0.into()),
                ]);
                self.command(0, &["_result".into(), txid.into(), props, info]);
            }
            Request::Publish { stream_id } => {
                self.stream_begin(stream_id);
                self.on_status(
                    stream_id,
                    "status",
                    "NetStream.Publish.Start",
                    "Publishing.",
                );
            }
        }
        self.flush(events);
        Ok(())
    }

    /// Refuses the pending request with `reason` (sent to the client as is).
    pub fn reject(
        &mut self,
        request_id: u32,
        reason: &str,
        events: &mut Vec<RtmpEvent>,
    ) -> Result<(), RtmpError> {
        match self.take_request(request_id)? {
            Request::Connect { txid } => {
                let info = Amf0Value::Object(vec![
                    ("level".into(), "error".into()),
                    ("code".into(), "NetConnection.Connect.Rejected".into()),
                    ("description".into(), reason.into()),
                ]);
                self.command(0, &["_error".into(), txid.into(), Amf0Value::Null, info]);
            }
            Request::Publish { stream_id } => {
                self.on_status(stream_id, "error", "NetStream.Publish.BadName", reason);
            }
        }
        self.flush(events);
        Ok(())
    }

    fn take_request(&mut self, request_id: u32) -> Result<Request, RtmpError> {
        match self.pending.iter().position(|(id, _)| *id == request_id) {
            Some(i) => Ok(self.pending.remove(i).1),
            None => Err(RtmpError::NoRequest(request_id)),
        }
    }

    fn flush(&mut self, events: &mut Vec<RtmpEvent>) {
        if !self.out.is_empty() {
            events.push(RtmpEvent::Send(std::mem::take(&mut self.out)));
        }
    }

    fn control(&mut self, type_id: u8, payload: &[u8]) {
        chunk::write_message(
            &mut self.out,
            CSID_CONTROL,
            type_id,
            0,
            0,
            payload,
            OUT_CHUNK_SIZE,
        );
    }

    fn stream_begin(&mut self, stream_id: u32) {
        let mut p = vec![0, 0];
        p.extend_from_slice(&stream_id.to_be_bytes());
        self.control(chunk::TYPE_USER_CONTROL, &p);
    }

    fn command(&mut self, stream_id: u32, values: &[Amf0Value]) {
        let mut payload = Vec::new();
        for v in values {
            amf0::encode(v, &mut payload);
        }
        let csid = if stream_id == 0 {
            CSID_COMMAND
        } else {
            CSID_STREAM
        };
        chunk::write_message(
            &mut self.out,
            csid,
            chunk::TYPE_AMF0_COMMAND,
            stream_id,
            0,
            &payload,
            OUT_CHUNK_SIZE,
        );
    }

    fn on_status(&mut self, stream_id: u32, level: &str, code: &str, description: &str) {
        let info = Amf0Value::Object(vec![
            ("level".into(), level.into()),
            ("code".into(), code.into()),
            ("description".into(), description.into()),
        ]);
        self.command(
            stream_id,
            &["onStatus".into(), 0.0.into(), Amf0Value::Null, info],
        );
    }

    fn on_message(&mut self, m: Message, events: &mut Vec<RtmpEvent>) -> Result<(), RtmpError> {
        let p = &m.payload;
        let be32 = |p: &[u8]| -> Result<u32, RtmpError> {
            match p {
                [a, b, c, d, ..] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
                _ => Err(RtmpError::Protocol("control message shorter than 4 bytes")),
            }
        };
        match m.type_id {
            chunk::TYPE_SET_CHUNK_SIZE => {
                // The top bit must be zero; it fails the range check if not.
                self.chunks.set_chunk_size(be32(p)?)?;
            }
            chunk::TYPE_ABORT => self.chunks.abort(be32(p)?),
            chunk::TYPE_WINDOW_ACK_SIZE => self.ack_window = Some(be32(p)?),
            chunk::TYPE_ACK | chunk::TYPE_USER_CONTROL | chunk::TYPE_SET_PEER_BANDWIDTH => {}
            // Media counts only on the stream being published.
            chunk::TYPE_AUDIO if self.publishing == Some(m.stream_id) => {
                events.push(RtmpEvent::Audio {
                    data: m.payload,
                    timestamp: m.timestamp,
                });
            }
            chunk::TYPE_VIDEO if self.publishing == Some(m.stream_id) => {
                events.push(RtmpEvent::Video {
                    data: m.payload,
                    timestamp: m.timestamp,
                });
            }
            chunk::TYPE_AMF0_DATA | chunk::TYPE_AMF3_DATA => {
                let body = if m.type_id == chunk::TYPE_AMF3_DATA {
                    p.get(1..).unwrap_or_default()
                } else {
                    p
                };
                let values = amf0::decode_all(body).map_err(|err| RtmpError::Amf0 {
                    what: "data message",
                    err,
                })?;
                if self.publishing.is_some()
                    && let Some(meta) = metadata(&values)
                    && self.metadata.as_ref() != Some(&meta)
                {
                    self.metadata = Some(meta.clone());
                    events.push(RtmpEvent::Metadata(meta));
                }
            }
            chunk::TYPE_AMF0_COMMAND | chunk::TYPE_AMF3_COMMAND => {
                // AMF3 commands start with a format byte, then AMF0 values.
                let body = if m.type_id == chunk::TYPE_AMF3_COMMAND {
                    p.get(1..).unwrap_or_default()
                } else {
                    p
                };
                let values = amf0::decode_all(body).map_err(|err| RtmpError::Amf0 {
                    what: "command",
                    err,
                })?;
                self.on_command(m.stream_id, values, events)?;
            }
            // Shared objects, aggregates and unknown types: not used by publishers.
            _ => {}
        }
        Ok(())
    }

    fn on_command(
        &mut self,
        stream_id: u32,
        values: Vec<Amf0Value>,
        events: &mut Vec<RtmpEvent>,
    ) -> Result<(), RtmpError> {
        let mut values = values.into_iter();
        let Some(Amf0Value::String(name)) = values.next() else {
            return Err(RtmpError::Protocol("command without a name"));
        };
        let txid = values.next().and_then(|v| v.as_number()).unwrap_or(0.0);
        let command_object = values.next().unwrap_or(Amf0Value::Null);
        let arg = values.next();
        if self.phase == Phase::New && name != "connect" {
            return Err(RtmpError::Protocol("command before connect"));
        }
        match name.as_str() {
            "connect" => {
                if self.phase != Phase::New {
                    return Err(RtmpError::Protocol("second connect"));
                }
                self.phase = Phase::Connecting;
                self.app = command_object
                    .get("app")
                    .and_then(|a| a.as_str())
                    .unwrap_or_default()
                    .to_string();
                let request_id = self.request(Request::Connect { txid })?;
                // Replies so far go out before whatever the driver answers.
                self.flush(events);
                events.push(RtmpEvent::Connect {
                    request_id,
                    app: self.app.clone(),
                });
            }
            "createStream" => {
                let Some(id) = (1..=MAX_MESSAGE_STREAMS).find(|id| !self.streams.contains(id))
                else {
                    return Err(RtmpError::Protocol("too many createStream"));
                };
                self.streams.push(id);
                self.command(
                    0,
                    &[
                        "_result".into(),
                        txid.into(),
                        Amf0Value::Null,
                        f64::from(id).into(),
                    ],
                );
            }
            "publish" => {
                if self.publish_asked {
                    return Err(RtmpError::Protocol("second publish on one connection"));
                }
                if !self.streams.contains(&stream_id) {
                    return Err(RtmpError::Protocol("publish on a stream never created"));
                }
                let Some(Amf0Value::String(key)) = arg else {
                    return Err(RtmpError::Protocol("publish without a stream key"));
                };
                self.publish_asked = true;
                self.publishing = Some(stream_id);
                let request_id = self.request(Request::Publish { stream_id })?;
                self.flush(events);
                events.push(RtmpEvent::Publish {
                    request_id,
                    app: self.app.clone(),
                    key,
                });
            }
            "FCUnpublish" => self.unpublish(None, events),
            "closeStream" => self.unpublish(Some(stream_id), events),
            "deleteStream" => {
                let id = arg.and_then(|a| a.as_number()).unwrap_or(-1.0);
                if let Some(pos) = self.streams.iter().position(|&s| f64::from(s) == id) {
                    let s = self.streams.swap_remove(pos);
                    self.unpublish(Some(s), events);
                }
            }
            "play" | "play2" => events.push(RtmpEvent::Unsupported("RTMP playback")),
            // releaseStream, FCPublish, getStreamLength, _checkbw …: nothing to
            // do, and the publishers we serve do not wait for an answer.
            _ => {}
        }
        Ok(())
    }

    fn request(&mut self, r: Request) -> Result<u32, RtmpError> {
        // Connect and publish are each asked once, so this stays short.
        let id = self.next_request;
        self.next_request = self.next_request.wrapping_add(1);
        self.pending.push((id, r));
        Ok(id)
    }

    /// Ends the publish if `stream_id` (or any stream, for None) is the one
    /// published to.
    fn unpublish(&mut self, stream_id: Option<u32>, events: &mut Vec<RtmpEvent>) {
        if let Some(s) = self.publishing
            && stream_id.is_none_or(|id| id == s)
        {
            self.publishing = None;
            events.push(RtmpEvent::Unpublish);
        }
    }
}

fn number(v: &Amf0Value) -> Option<f64> {
    match v {
        Amf0Value::Number(n) if n.is_finite() => Some(*n),
        // Some encoders write numbers as strings.
        Amf0Value::String(s) => s.trim().parse::<f64>().ok().filter(|n| n.is_finite()),
        _ => None,
    }
}

/// Stream properties from `["@setDataFrame", "onMetaData", {…}]` or
/// `["onMetaData", {…}]`; None for other data messages.
fn metadata(values: &[Amf0Value]) -> Option<Metadata> {
    let rest = match values {
        [Amf0Value::String(a), Amf0Value::String(b), rest @ ..]
            if a == "@setDataFrame" && b == "onMetaData" =>
        {
            rest
        }
        [Amf0Value::String(a), rest @ ..] if a == "onMetaData" => rest,
        _ => return None,
    };
    let mut meta = Metadata::default();
    for v in rest {
        let Amf0Value::Object(props) = v else {
            continue;
        };
        for (key, value) in props {
            match key.as_str() {
                "width" => meta.width = number(value).or(meta.width),
                "height" => meta.height = number(value).or(meta.height),
                "framerate" | "fps" => meta.framerate = number(value).or(meta.framerate),
                "videodatarate" => meta.videodatarate = number(value).or(meta.videodatarate),
                "audiodatarate" => meta.audiodatarate = number(value).or(meta.audiodatarate),
                "encoder" => {
                    if let Some(s) = value.as_str() {
                        // Shown in logs: keep it short.
                        meta.encoder = Some(s.chars().take(128).collect());
                    }
                }
                _ => {}
            }
        }
    }
    Some(meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::rtmp::core::chunk::write_message;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use rml_rtmp::handshake::{Handshake as ClientHandshake, HandshakeProcessResult, PeerType};
    use rml_rtmp::sessions::{
        ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult,
        PublishRequestType, StreamMetadata,
    };
    use rml_rtmp::time::RtmpTimestamp;

    const MAX: u32 = 8 << 20;

    /// Feeds `data` and answers every request; returns (bytes to send, other events).
    fn feed(core: &mut ServerCore, data: &[u8]) -> Result<(Vec<u8>, Vec<RtmpEvent>), RtmpError> {
        let mut events = Vec::new();
        core.receive(data, &mut events)?;
        let mut sent = Vec::new();
        let mut others = Vec::new();
        let mut i = 0;
        while i < events.len() {
            let ev = std::mem::replace(&mut events[i], RtmpEvent::Unsupported(""));
            i += 1;
            let mut more = Vec::new();
            match ev {
                RtmpEvent::Send(b) => sent.extend(b),
                RtmpEvent::Connect { request_id, .. } | RtmpEvent::Publish { request_id, .. } => {
                    core.accept(request_id, &mut more)?;
                    others.push(ev);
                }
                other => others.push(other),
            }
            events.extend(more);
        }
        Ok((sent, others))
    }

    /// A real publish by rml_rtmp's client against our core.
    struct Session {
        core: ServerCore,
        client: ClientSession,
        /// Every byte the client sent.
        wire: Vec<u8>,
        events: Vec<RtmpEvent>,
        client_events: Vec<String>,
    }

    impl Session {
        fn start() -> Session {
            let mut core = ServerCore::new(MAX);
            let mut hs = ClientHandshake::new(PeerType::Client);
            let c0c1 = hs.generate_outbound_p0_and_p1().unwrap();
            let (s0s1s2, _) = feed(&mut core, &c0c1).unwrap();
            let c2 = match hs.process_bytes(&s0s1s2).unwrap() {
                HandshakeProcessResult::Completed { response_bytes, .. } => response_bytes,
                HandshakeProcessResult::InProgress { .. } => panic!("handshake not complete"),
            };
            let mut wire = c0c1;
            wire.extend_from_slice(&c2);
            let (client, initial) = ClientSession::new(ClientSessionConfig::new()).unwrap();
            let mut s = Session {
                core,
                client,
                wire: Vec::new(),
                events: Vec::new(),
                client_events: Vec::new(),
            };
            s.deliver(&c2);
            s.wire = wire;
            s.send(initial);
            let r = s.client.request_connection("live".into()).unwrap();
            s.send(vec![r]);
            let r = s
                .client
                .request_publishing("the-key".into(), PublishRequestType::Live)
                .unwrap();
            s.send(vec![r]);
            s
        }

        fn deliver(&mut self, bytes: &[u8]) {
            self.wire.extend_from_slice(bytes);
            let (reply, events) = feed(&mut self.core, bytes).unwrap();
            self.events.extend(events);
            if !reply.is_empty() {
                let results = self.client.handle_input(&reply).unwrap();
                self.send(results);
            }
        }

        fn send(&mut self, results: Vec<ClientSessionResult>) {
            for r in results {
                match r {
                    ClientSessionResult::OutboundResponse(p) => self.deliver(&p.bytes),
                    ClientSessionResult::RaisedEvent(e) => {
                        self.client_events.push(format!("{e:?}"));
                        if matches!(e, ClientSessionEvent::PublishRequestAccepted) {
                            self.client_events.push("publishing".into());
                        }
                    }
                    ClientSessionResult::UnhandleableMessageReceived(_) => {}
                }
            }
        }

        fn media(&mut self) {
            let mut md = StreamMetadata::new();
            md.video_width = Some(1280);
            md.video_height = Some(720);
            md.encoder = Some("test encoder".into());
            // Repeated metadata is passed on once.
            for _ in 0..3 {
                let r = self.client.publish_metadata(&md).unwrap();
                self.send(vec![r]);
            }
            for i in 0..5u32 {
                let body = vec![0x17u8; 300 + i as usize];
                let r = self
                    .client
                    .publish_video_data(body.into(), RtmpTimestamp::new(i * 40), false)
                    .unwrap();
                self.send(vec![r]);
                let r = self
                    .client
                    .publish_audio_data(vec![0xaf, 1, 2].into(), RtmpTimestamp::new(i * 40), false)
                    .unwrap();
                self.send(vec![r]);
            }
        }
    }

    #[test]
    fn a_publisher_connects_publishes_and_sends_media() {
        let mut s = Session::start();
        assert!(
            s.client_events.iter().any(|e| e == "publishing"),
            "{:?}",
            s.client_events
        );
        s.media();
        let mut connect = None;
        let mut publish = None;
        let (mut video, mut audio, mut meta) = (0, 0, Vec::new());
        for e in &s.events {
            match e {
                RtmpEvent::Connect { app, .. } => connect = Some(app.clone()),
                RtmpEvent::Publish { key, app, .. } => publish = Some((app.clone(), key.clone())),
                RtmpEvent::Video { data, timestamp } => {
                    assert_eq!(data.len(), 300 + video);
                    assert_eq!(*timestamp, 40 * video as u32);
                    video += 1;
                }
                RtmpEvent::Audio { .. } => audio += 1,
                RtmpEvent::Metadata(m) => meta.push(m.clone()),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(connect.as_deref(), Some("live"));
        assert_eq!(publish, Some(("live".into(), "the-key".into())));
        assert_eq!((video, audio), (5, 5));
        assert_eq!(meta.len(), 1, "{meta:?}");
        let meta = &meta[0];
        assert_eq!((meta.width, meta.height), (Some(1280.0), Some(720.0)));
        assert_eq!(meta.encoder.as_deref(), Some("test encoder"));
    }

    /// A core past the handshake, connected, with the bytes of `values` as a
    /// command on stream 0.
    fn connected() -> ServerCore {
        let mut core = ServerCore::new(MAX);
        let mut c = vec![3u8];
        c.extend_from_slice(&[0; 2 * 1536]);
        feed(&mut core, &c).unwrap();
        feed(&mut core, &command(0, &["connect".into(), 1.0.into()])).unwrap();
        core
    }

    fn command(stream_id: u32, values: &[Amf0Value]) -> Vec<u8> {
        let mut payload = Vec::new();
        for v in values {
            amf0::encode(v, &mut payload);
        }
        let mut wire = Vec::new();
        write_message(&mut wire, 3, 20, stream_id, 0, &payload, 128);
        wire
    }

    #[test]
    fn deep_amf0_nesting_is_a_clean_error() {
        let mut core = connected();
        // The attack: ~1 MB of nested strict arrays in one command,
        // sent with a big chunk size so the message cap is what stops it...
        let mut payload = Vec::new();
        for _ in 0..200_000 {
            payload.extend_from_slice(&[0x0a, 0, 0, 0, 1]);
        }
        let mut wire = Vec::new();
        write_message(
            &mut wire,
            2,
            chunk::TYPE_SET_CHUNK_SIZE,
            0,
            0,
            &(1u32 << 20).to_be_bytes(),
            128,
        );
        write_message(&mut wire, 3, 20, 0, 0, &payload, 1 << 20);
        assert!(matches!(
            feed(&mut core, &wire),
            Err(RtmpError::Chunk(ChunkError::MessageTooLarge { .. }))
        ));
        // ...and within the size cap, the depth limit.
        let mut core = connected();
        let payload = &payload[..200 * 1024];
        let mut wire = Vec::new();
        write_message(&mut wire, 3, 20, 0, 0, payload, 128);
        let err = feed(&mut core, &wire).unwrap_err();
        assert_eq!(
            err,
            RtmpError::Amf0 {
                what: "command",
                err: amf0::Amf0Error::TooDeep
            }
        );
        assert_eq!(err.kind(), "bad AMF0");
    }

    #[test]
    fn short_commands_do_not_panic() {
        let mut core = connected();
        // Empty command message, a name only, a name and id only.
        assert!(matches!(
            feed(&mut core, &command(0, &[])),
            Err(RtmpError::Protocol("command without a name"))
        ));
        let mut core = connected();
        for name in [
            "createStream",
            "deleteStream",
            "releaseStream",
            "FCPublish",
            "FCUnpublish",
            "closeStream",
        ] {
            feed(&mut core, &command(0, &[name.into()])).unwrap();
            feed(&mut core, &command(0, &[name.into(), 2.0.into()])).unwrap();
        }
        assert!(matches!(
            feed(&mut core, &command(1, &["publish".into(), 5.0.into()])),
            Err(RtmpError::Protocol("publish without a stream key"))
        ));
        let mut core = connected();
        assert!(matches!(
            feed(&mut core, &command(0, &["publish".into()])),
            Err(RtmpError::Protocol("publish on a stream never created"))
        ));
        // A connect with nothing but its name still asks the driver.
        let mut core = ServerCore::new(MAX);
        let mut c = vec![3u8];
        c.extend_from_slice(&[0; 2 * 1536]);
        feed(&mut core, &c).unwrap();
        let (_, ev) = feed(&mut core, &command(0, &["connect".into()])).unwrap();
        assert!(matches!(&ev[..], [RtmpEvent::Connect { app, .. }] if app.is_empty()));
        // Commands before connect are refused.
        let mut core = ServerCore::new(MAX);
        feed(&mut core, &c).unwrap();
        assert!(feed(&mut core, &command(0, &["createStream".into(), 2.0.into()])).is_err());
    }

    #[test]
    fn thousands_of_create_stream_are_refused_after_the_cap() {
        let mut core = connected();
        let mut wire = Vec::new();
        for i in 0..5000 {
            wire.extend(command(0, &["createStream".into(), f64::from(i).into()]));
        }
        assert_eq!(
            feed(&mut core, &wire).unwrap_err(),
            RtmpError::Protocol("too many createStream")
        );
        assert_eq!(core.streams.len(), MAX_MESSAGE_STREAMS as usize);
        // Deleting frees ids, so create/delete cycles stay within the cap.
        let mut core = connected();
        for i in 0..2000 {
            feed(&mut core, &command(0, &["createStream".into(), 2.0.into()])).unwrap();
            let del = command(
                0,
                &[
                    "deleteStream".into(),
                    3.0.into(),
                    Amf0Value::Null,
                    1.0.into(),
                ],
            );
            feed(&mut core, &del).unwrap_or_else(|e| panic!("{i}: {e}"));
        }
        assert!(core.streams.is_empty());
    }

    #[test]
    fn chunk_size_extremes() {
        let mut core = connected();
        let mut wire = Vec::new();
        write_message(&mut wire, 2, 1, 0, 0, &0u32.to_be_bytes(), 128);
        assert!(matches!(
            feed(&mut core, &wire),
            Err(RtmpError::Chunk(ChunkError::BadChunkSize(0)))
        ));
        let mut core = connected();
        let mut wire = Vec::new();
        write_message(&mut wire, 2, 1, 0, 0, &0xffff_ffffu32.to_be_bytes(), 128);
        assert!(feed(&mut core, &wire).is_err());
        let mut core = connected();
        let mut wire = Vec::new();
        write_message(&mut wire, 2, 1, 0, 0, &[0, 1], 128);
        assert!(matches!(
            feed(&mut core, &wire),
            Err(RtmpError::Protocol("control message shorter than 4 bytes"))
        ));
    }

    #[test]
    fn acknowledgements_follow_the_peers_window() {
        let mut core = connected();
        let mut wire = Vec::new();
        write_message(&mut wire, 2, 5, 0, 0, &10_000u32.to_be_bytes(), 128);
        let (sent, _) = feed(&mut core, &wire).unwrap();
        assert!(sent.is_empty());
        let mut junk = Vec::new();
        write_message(&mut junk, 4, 8, 7, 0, &[0u8; 12_000], 128);
        let (sent, _) = feed(&mut core, &junk).unwrap();
        // One Acknowledgement: csid 2, type 3, 4-byte sequence number.
        assert_eq!(sent.len(), 12 + 4);
        assert_eq!(sent[7], chunk::TYPE_ACK);
        let seq = u32::from_be_bytes([sent[12], sent[13], sent[14], sent[15]]);
        assert_eq!(u64::from(seq), core.received);
    }

    /// What ffmpeg 5.1 sent publishing 1 s of 64x36 H.264 at 10 fps + AAC
    /// (`-f flv rtmp://…/live/gstreamer-test-key-0123456789`), handshake
    /// included, recorded by a TCP proxy in front of roomcast.
    const FFMPEG_PUBLISH: &[u8] = include_bytes!("testdata/ffmpeg_publish.bin");

    /// Feeds `wire` in reads of random sizes, answering every request.
    fn replay(wire: &[u8], rng: &mut StdRng) -> Result<Vec<RtmpEvent>, RtmpError> {
        let mut core = ServerCore::new(MAX);
        let mut events = Vec::new();
        let mut rest = wire;
        while !rest.is_empty() {
            let n = rng.random_range(1..=rest.len().min(5000));
            let r = feed(&mut core, &rest[..n]);
            assert!(core.chunks_buffered() <= (MAX as usize) + (1 << 20));
            events.extend(r?.1);
            rest = &rest[n..];
        }
        Ok(events)
    }

    #[test]
    fn a_recorded_ffmpeg_session_replays() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..20 {
            let events = replay(FFMPEG_PUBLISH, &mut rng).unwrap();
            let mut kinds = Vec::new();
            let mut last_video_ts = 0;
            for e in &events {
                let kind = match e {
                    RtmpEvent::Connect { app, .. } => {
                        assert_eq!(app, "live");
                        "connect"
                    }
                    RtmpEvent::Publish { key, .. } => {
                        assert_eq!(key, "gstreamer-test-key-0123456789");
                        "publish"
                    }
                    RtmpEvent::Metadata(m) => {
                        assert_eq!((m.width, m.height), (Some(64.0), Some(36.0)));
                        "metadata"
                    }
                    RtmpEvent::Video { timestamp, .. } => {
                        assert!(*timestamp >= last_video_ts);
                        last_video_ts = *timestamp;
                        "video"
                    }
                    RtmpEvent::Audio { .. } => "audio",
                    RtmpEvent::Unpublish => "unpublish",
                    other => panic!("unexpected {other:?}"),
                };
                if kinds.last() != Some(&kind) {
                    kinds.push(kind);
                }
            }
            assert_eq!(&kinds[..3], ["connect", "publish", "metadata"]);
            assert_eq!(kinds.last(), Some(&"unpublish"));
            let count = |video: bool| {
                events
                    .iter()
                    .filter(|e| match e {
                        RtmpEvent::Video { .. } => video,
                        RtmpEvent::Audio { .. } => !video,
                        _ => false,
                    })
                    .count()
            };
            // 1 s at 10 fps (+ the sequence header); AAC frames of 1024
            // samples at 44.1 kHz (+ the sequence header).
            assert!((10..=12).contains(&count(true)), "{} video", count(true));
            assert!((40..=46).contains(&count(false)), "{} audio", count(false));
            assert!(last_video_ts >= 800, "{last_video_ts}");
        }
    }

    #[test]
    fn mutated_sessions_never_panic() {
        let mut s = Session::start();
        s.media();
        let rml_wire = s.wire.clone();
        let mut rng = StdRng::seed_from_u64(0x5eed);
        for (name, wire) in [("rml_rtmp", &rml_wire[..]), ("ffmpeg", FFMPEG_PUBLISH)] {
            mutate_and_replay(name, wire, &mut rng);
        }
        // Pure noise after a valid handshake.
        for _ in 0..200 {
            let mut core = connected();
            let n = rng.random_range(1..20_000);
            let noise: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            let _ = feed(&mut core, &noise);
        }
    }

    fn mutate_and_replay(name: &str, wire: &[u8], rng: &mut StdRng) {
        // Unmutated replay works (our handshake does not check C2).
        let events = replay(wire, rng).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(events.iter().any(|e| matches!(e, RtmpEvent::Video { .. })));
        let start = 1 + 2 * 1536;
        for round in 0..2000 {
            let mut w = wire.to_vec();
            match round % 4 {
                0 => {
                    for _ in 0..rng.random_range(1..8) {
                        let i = rng.random_range(start..w.len());
                        w[i] = rng.random();
                    }
                }
                1 => {
                    let i = rng.random_range(start..w.len());
                    w.truncate(i);
                    let n = rng.random_range(0..4096);
                    w.extend((0..n).map(|_| rng.random::<u8>()));
                }
                2 => {
                    let i = rng.random_range(start..w.len());
                    let j = rng.random_range(i..w.len());
                    w.drain(i..j);
                }
                _ => {
                    let i = rng.random_range(start..w.len());
                    let n = rng.random_range(1..64);
                    let b: u8 = rng.random();
                    w.splice(i..i, std::iter::repeat_n(b, n));
                }
            }
            // Errors are fine; panics and unbounded buffering are not.
            let _ = replay(&w, rng);
        }
    }
}
