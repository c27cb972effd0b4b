//! A hand-driven RTMP publisher on rml_rtmp's client session, to send what
//! ffmpeg never would: truncated and garbage FLV tag bodies, cut-off chunks.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult,
    PublishRequestType, StreamMetadata,
};
use rml_rtmp::time::RtmpTimestamp;

pub struct RtmpPublisher {
    stream: TcpStream,
    session: ClientSession,
    /// Events the server caused, for error messages.
    pub events: Vec<String>,
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

impl RtmpPublisher {
    /// Handshake, `connect` to `app`, `publish` `key`; Ok once the server
    /// accepted the publish request.
    pub fn connect(
        addr: SocketAddr,
        app: &str,
        key: &str,
        timeout: Duration,
    ) -> Result<RtmpPublisher, String> {
        let deadline = Instant::now() + timeout;
        let mut stream = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(|e| e.to_string())?;
        stream
            .set_write_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);

        let mut hs = Handshake::new(PeerType::Client);
        let c0c1 = hs
            .generate_outbound_p0_and_p1()
            .map_err(|e| format!("handshake: {e:?}"))?;
        stream
            .write_all(&c0c1)
            .map_err(|e| format!("write C0C1: {e}"))?;
        let mut buf = vec![0u8; 8192];
        let leftover = loop {
            if Instant::now() >= deadline {
                return Err("handshake timed out".into());
            }
            let n = match stream.read(&mut buf) {
                Ok(0) => return Err("server closed the connection during the handshake".into()),
                Ok(n) => n,
                Err(e) if is_timeout(&e) => continue,
                Err(e) => return Err(format!("read during handshake: {e}")),
            };
            match hs
                .process_bytes(&buf[..n])
                .map_err(|e| format!("handshake: {e:?}"))?
            {
                HandshakeProcessResult::InProgress { response_bytes } => {
                    stream
                        .write_all(&response_bytes)
                        .map_err(|e| e.to_string())?;
                }
                HandshakeProcessResult::Completed {
                    response_bytes,
                    remaining_bytes,
                } => {
                    stream
                        .write_all(&response_bytes)
                        .map_err(|e| e.to_string())?;
                    break remaining_bytes;
                }
            }
        };

        let mut config = ClientSessionConfig::new();
        config.tc_url = Some(format!("rtmp://{addr}/{app}"));
        let (session, initial) =
            ClientSession::new(config).map_err(|e| format!("session: {e:?}"))?;
        let mut p = RtmpPublisher {
            stream,
            session,
            events: Vec::new(),
        };
        p.send_results(initial)?;
        let r = p
            .session
            .request_connection(app.to_string())
            .map_err(|e| format!("connect request: {e:?}"))?;
        p.send_results(vec![r])?;
        if !leftover.is_empty() {
            let results = p
                .session
                .handle_input(&leftover)
                .map_err(|e| format!("session input: {e:?}"))?;
            p.send_results(results)?;
        }
        p.pump_until(deadline, |e| {
            matches!(e, ClientSessionEvent::ConnectionRequestAccepted)
        })?;
        let r = p
            .session
            .request_publishing(key.to_string(), PublishRequestType::Live)
            .map_err(|e| format!("publish request: {e:?}"))?;
        p.send_results(vec![r])?;
        p.pump_until(deadline, |e| {
            matches!(e, ClientSessionEvent::PublishRequestAccepted)
        })?;
        Ok(p)
    }

    fn send_results(
        &mut self,
        results: Vec<ClientSessionResult>,
    ) -> Result<Vec<ClientSessionEvent>, String> {
        let mut events = Vec::new();
        for r in results {
            match r {
                ClientSessionResult::OutboundResponse(packet) => {
                    self.stream
                        .write_all(&packet.bytes)
                        .map_err(|e| format!("write: {e}"))?;
                }
                ClientSessionResult::RaisedEvent(e) => {
                    self.events.push(format!("{e:?}"));
                    events.push(e);
                }
                ClientSessionResult::UnhandleableMessageReceived(_) => {}
            }
        }
        Ok(events)
    }

    fn pump_until(
        &mut self,
        deadline: Instant,
        mut pred: impl FnMut(&ClientSessionEvent) -> bool,
    ) -> Result<(), String> {
        let mut buf = vec![0u8; 8192];
        loop {
            if Instant::now() >= deadline {
                return Err(format!(
                    "timed out; server events so far: {:?}",
                    self.events
                ));
            }
            let n = match self.stream.read(&mut buf) {
                Ok(0) => {
                    return Err(format!(
                        "server closed the connection; events so far: {:?}",
                        self.events
                    ));
                }
                Ok(n) => n,
                Err(e) if is_timeout(&e) => continue,
                Err(e) => return Err(format!("read: {e}; events so far: {:?}", self.events)),
            };
            let results = self
                .session
                .handle_input(&buf[..n])
                .map_err(|e| format!("session input: {e:?}"))?;
            for e in self.send_results(results)? {
                if pred(&e) {
                    return Ok(());
                }
            }
        }
    }

    /// Sends one RTMP video message with `body` as the FLV VIDEODATA tag body.
    pub fn video(&mut self, body: &[u8], ts: u32) -> io::Result<()> {
        let bytes = self.video_packet(body, ts)?;
        self.stream.write_all(&bytes)
    }

    /// Sends one RTMP audio message with `body` as the FLV AUDIODATA tag body.
    pub fn audio(&mut self, body: &[u8], ts: u32) -> io::Result<()> {
        let r = self
            .session
            .publish_audio_data(Bytes::copy_from_slice(body), RtmpTimestamp::new(ts), false)
            .map_err(|e| io::Error::other(format!("{e:?}")))?;
        self.write_result(r)
    }

    pub fn metadata(&mut self, md: &StreamMetadata) -> io::Result<()> {
        let r = self
            .session
            .publish_metadata(md)
            .map_err(|e| io::Error::other(format!("{e:?}")))?;
        self.write_result(r)
    }

    /// The serialized chunk(s) of a video message, not sent (to send a part).
    pub fn video_packet(&mut self, body: &[u8], ts: u32) -> io::Result<Vec<u8>> {
        match self
            .session
            .publish_video_data(Bytes::copy_from_slice(body), RtmpTimestamp::new(ts), false)
            .map_err(|e| io::Error::other(format!("{e:?}")))?
        {
            ClientSessionResult::OutboundResponse(p) => Ok(p.bytes),
            other => Err(io::Error::other(format!("unexpected {other:?}"))),
        }
    }

    /// Writes raw bytes on the connection, bypassing the session.
    pub fn raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    fn write_result(&mut self, r: ClientSessionResult) -> io::Result<()> {
        if let ClientSessionResult::OutboundResponse(p) = r {
            self.stream.write_all(&p.bytes)?;
        }
        Ok(())
    }

    /// True if the server closes the connection within `timeout` (reads and
    /// discards whatever it sends meanwhile).
    pub fn wait_closed(&mut self, timeout: Duration) -> bool {
        wait_closed(&mut self.stream, timeout)
    }

    pub fn shutdown(self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// True if the peer closes (EOF or reset) within `timeout`.
pub fn wait_closed(stream: &mut TcpStream, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
    false
}
