//! A TCP forwarder that keeps a copy of what clients send: the eavesdropper
//! on a network between two nodes, for tests of what a captured request is
//! good for.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use super::wait_until;

pub struct Tap {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Tap {
    /// Forwards every connection to `upstream`, both ways, until either end
    /// closes.
    pub fn start(upstream: SocketAddr) -> Tap {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the tap");
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let log = log.clone();
                thread::spawn(move || pipe(client, server, Some(log)));
                thread::spawn(move || pipe(s2, c2, None));
            }
        });
        Tap { addr, seen }
    }

    /// Waits until clients sent a whole request whose request line starts
    /// with `request_line`; returns the first such.
    pub fn wait_request(&self, request_line: &str, timeout: Duration) -> Captured {
        wait_until(&format!("a captured \"{request_line}\""), timeout, || {
            request_of(&self.seen.lock().unwrap(), request_line)
        })
    }
}

/// A request as the tap saw it.
#[derive(Debug, Clone)]
pub struct Captured {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Captured {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream, log: Option<Arc<Mutex<Vec<u8>>>>) {
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 {
            break;
        }
        if let Some(log) = &log {
            log.lock().unwrap().extend_from_slice(&buf[..n]);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// The first whole request in `seen` whose request line starts with
/// `request_line` (its body by Content-Length).
fn request_of(seen: &[u8], request_line: &str) -> Option<Captured> {
    let start = seen
        .windows(request_line.len())
        .position(|w| w == request_line.as_bytes())?;
    let rest = &seen[start..];
    let head_end = rest.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&rest[..head_end]);
    let headers: Vec<(String, String)> = head
        .lines()
        .skip(1)
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map_or(Some(0), |(_, v)| v.parse().ok())?;
    let body = rest.get(head_end + 4..head_end + 4 + len)?.to_vec();
    Some(Captured { headers, body })
}
