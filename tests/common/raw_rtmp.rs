//! A raw RTMP client that can send anything: the plain (version 3, no digest)
//! handshake, a chunk writer for any chunk stream id, header format and chunk
//! size, and an AMF0 encoder. rml_rtmp's client session only writes what a
//! well-behaved client would, so the attack suite uses this instead.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Handshake packet size (C1, S1, C2, S2).
const HS: usize = 1536;

/// A TCP connection to an RTMP port with a thread that drains everything the
/// server sends (so the server never blocks writing to us) and notes the close.
pub struct RawRtmp {
    stream: TcpStream,
    received: Arc<Mutex<Vec<u8>>>,
    closed: Arc<AtomicBool>,
    reader: Option<thread::JoinHandle<()>>,
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

impl RawRtmp {
    /// Connects; nothing sent yet, the reader not started.
    pub fn connect(addr: SocketAddr) -> io::Result<RawRtmp> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_write_timeout(Some(Duration::from_secs(20)))?;
        let _ = stream.set_nodelay(true);
        Ok(RawRtmp {
            stream,
            received: Arc::default(),
            closed: Arc::default(),
            reader: None,
        })
    }

    /// Connects and completes the plain handshake: C0+C1, reads S0+S1+S2,
    /// sends C2 (S1 echoed). Then starts the reader.
    pub fn handshaken(addr: SocketAddr) -> io::Result<RawRtmp> {
        let mut c = RawRtmp::connect(addr)?;
        let mut c0c1 = vec![3u8];
        c0c1.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        c0c1.extend_from_slice(&super::random_bytes(HS - 8));
        c.stream.write_all(&c0c1)?;
        let mut s = vec![0u8; 1 + 2 * HS];
        c.stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        c.stream.read_exact(&mut s)?;
        if s[0] != 3 {
            return Err(io::Error::other(format!("S0 is {}, not 3", s[0])));
        }
        c.stream.write_all(&s[1..1 + HS])?;
        c.start_reader();
        Ok(c)
    }

    /// Starts draining the server's bytes (done by [`RawRtmp::handshaken`]).
    pub fn start_reader(&mut self) {
        if self.reader.is_some() {
            return;
        }
        let mut r = self.stream.try_clone().expect("clone TCP stream");
        let _ = r.set_read_timeout(None);
        let received = self.received.clone();
        let closed = self.closed.clone();
        self.reader = Some(thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let mut g = received.lock().unwrap();
                        // Keep the tail only: a flood of answers must not grow the test.
                        if g.len() > 4 << 20 {
                            let cut = g.len() - (1 << 20);
                            g.drain(..cut);
                        }
                        g.extend_from_slice(&buf[..n]);
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            closed.store(true, Ordering::SeqCst);
        }));
    }

    /// Writes bytes; an error means the server closed (or reset) the connection.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let r = self.stream.write_all(bytes);
        if r.is_err() {
            self.closed.store(true, Ordering::SeqCst);
        }
        r
    }

    /// Whether the server closed the connection (seen by the reader or a write).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Waits until the server closes the connection; false at the deadline.
    /// Without a reader, reads (and discards) until EOF itself.
    pub fn wait_closed(&mut self, timeout: Duration) -> bool {
        if self.reader.is_none() {
            return super::rtmp::wait_closed(&mut self.stream, timeout);
        }
        super::poll_until(timeout, || self.is_closed())
    }

    /// Whether `pattern` appears in what the server sent so far.
    pub fn received_contains(&self, pattern: &[u8]) -> bool {
        let g = self.received.lock().unwrap();
        g.windows(pattern.len()).any(|w| w == pattern)
    }

    /// Waits for `pattern` in the server's bytes (false at the deadline or on close).
    pub fn wait_received(&self, pattern: &[u8], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.received_contains(pattern) {
                return true;
            }
            if self.is_closed() || Instant::now() >= deadline {
                return self.received_contains(pattern);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn received_len(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// Sends `connect` to `app` and waits for its `_result`.
    pub fn connect_app(&mut self, app: &str, timeout: Duration) -> Result<(), String> {
        let tc_url = format!("rtmp://{}/{app}", self.stream.peer_addr().unwrap());
        let body = [
            amf0::string("connect"),
            amf0::number(1.0),
            amf0::object(&[
                ("app", amf0::string(app)),
                ("type", amf0::string("nonprivate")),
                ("flashVer", amf0::string("FMLE/3.0 (compatible; attacks)")),
                ("tcUrl", amf0::string(&tc_url)),
            ]),
        ]
        .concat();
        self.send(&command(&body))
            .map_err(|e| format!("write connect: {e}"))?;
        if self.wait_received(&amf0::string("_result"), timeout) {
            Ok(())
        } else {
            Err(format!(
                "no _result for connect within {timeout:?} (closed: {}, {} bytes received)",
                self.is_closed(),
                self.received_len()
            ))
        }
    }

    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

impl Drop for RawRtmp {
    fn drop(&mut self) {
        self.shutdown();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// A chunk's basic header: format `fmt` (0..=3) and any chunk stream id 2..=65599.
pub fn basic_header(fmt: u8, csid: u32) -> Vec<u8> {
    assert!((2..=65599).contains(&csid), "csid {csid}");
    let f = fmt << 6;
    match csid {
        2..=63 => vec![f | csid as u8],
        64..=319 => vec![f, (csid - 64) as u8],
        _ => {
            let v = csid - 64;
            vec![f | 1, (v & 0xff) as u8, (v >> 8) as u8]
        }
    }
}

/// A type-0 chunk header announcing a message of `len` bytes (len < 2^24).
pub fn type0_header(csid: u32, ts: u32, len: u32, type_id: u8, stream_id: u32) -> Vec<u8> {
    let mut h = basic_header(0, csid);
    h.extend_from_slice(&ts.min(0xff_ffff).to_be_bytes()[1..]);
    h.extend_from_slice(&len.to_be_bytes()[1..]);
    h.push(type_id);
    h.extend_from_slice(&stream_id.to_le_bytes());
    h
}

/// One whole message split into chunks of `chunk_size` (type 0, then type 3).
pub fn message(
    csid: u32,
    ts: u32,
    type_id: u8,
    stream_id: u32,
    payload: &[u8],
    chunk_size: usize,
) -> Vec<u8> {
    let mut out = type0_header(csid, ts, payload.len() as u32, type_id, stream_id);
    let mut first = true;
    for part in payload.chunks(chunk_size.max(1)) {
        if !first {
            out.extend_from_slice(&basic_header(3, csid));
        }
        first = false;
        out.extend_from_slice(part);
    }
    out
}

/// Set Chunk Size (protocol control message 1) on chunk stream 2.
pub fn set_chunk_size(n: u32) -> Vec<u8> {
    message(2, 0, 1, 0, &n.to_be_bytes(), 128)
}

/// An AMF0 command message (type 20) on chunk stream 3, stream 0, 128-byte chunks.
pub fn command(body: &[u8]) -> Vec<u8> {
    message(3, 0, 20, 0, body, 128)
}

/// An AMF0 encoder: each function returns one encoded value.
pub mod amf0 {
    pub fn number(v: f64) -> Vec<u8> {
        let mut b = vec![0x00];
        b.extend_from_slice(&v.to_be_bytes());
        b
    }
    pub fn string(s: &str) -> Vec<u8> {
        let mut b = vec![0x02];
        b.extend_from_slice(&(s.len() as u16).to_be_bytes());
        b.extend_from_slice(s.as_bytes());
        b
    }
    pub fn null() -> Vec<u8> {
        vec![0x05]
    }
    pub fn object(props: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut b = vec![0x03];
        for (k, v) in props {
            b.extend_from_slice(&(k.len() as u16).to_be_bytes());
            b.extend_from_slice(k.as_bytes());
            b.extend_from_slice(v);
        }
        b.extend_from_slice(&[0, 0, 0x09]);
        b
    }
    /// `depth` strict arrays, each holding the next one, the innermost
    /// holding a null: what a recursive reader overflows its stack on.
    pub fn nested_strict_arrays(depth: usize) -> Vec<u8> {
        let mut b = Vec::with_capacity(depth * 5 + 1);
        for _ in 0..depth {
            b.extend_from_slice(&[0x0a, 0, 0, 0, 1]);
        }
        b.push(0x05);
        b
    }
}
