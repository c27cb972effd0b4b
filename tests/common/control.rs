//! A test control server: a small HTTP/1.1 server on loopback, one thread per
//! connection, that records every request and answers with what the test's
//! handler returns (the handler may block, to play a slow control server).
//! Also: HMAC-SHA1 signatures computed independently of roomcast (openssl).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub at: Instant,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

type Handler = dyn Fn(&Req) -> (u16, String) + Send + Sync;

#[derive(Default)]
struct Log {
    reqs: Mutex<Vec<Req>>,
    changed: Condvar,
}

pub struct ControlServer {
    pub addr: SocketAddr,
    log: Arc<Log>,
}

impl ControlServer {
    pub fn start(handler: impl Fn(&Req) -> (u16, String) + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind control server");
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Log::default());
        let handler: Arc<Handler> = Arc::new(handler);
        let l = log.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let (log, handler) = (l.clone(), handler.clone());
                thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
                    let Some(req) = read_request(&mut conn) else {
                        return;
                    };
                    log.reqs.lock().unwrap().push(req.clone());
                    log.changed.notify_all();
                    let (status, body) = handler(&req);
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(resp.as_bytes());
                });
            }
        });
        ControlServer { addr, log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn requests(&self) -> Vec<Req> {
        self.log.reqs.lock().unwrap().clone()
    }

    /// Waits for a request satisfying `pred`; panics naming `what`.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Req) -> bool,
    ) -> Req {
        let deadline = Instant::now() + timeout;
        let mut g = self.log.reqs.lock().unwrap();
        loop {
            if let Some(r) = g.iter().find(|r| pred(r)) {
                return r.clone();
            }
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "control server: no request for '{what}' within {timeout:?}; got:\n{:#?}",
                    g.iter().map(|r| (&r.path, &r.body)).collect::<Vec<_>>()
                );
            }
            g = self.log.changed.wait_timeout(g, deadline - now).unwrap().0;
        }
    }
}

fn read_request(conn: &mut std::net::TcpStream) -> Option<Req> {
    let mut r = BufReader::new(conn.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = Vec::new();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    Some(Req {
        method,
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        at: Instant::now(),
    })
}

/// Base64URL(HMAC-SHA1(key, data)) without padding, computed by `openssl`.
pub fn hmac_sha1_b64url(key: &str, data: &str) -> String {
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha1", "-binary", "-hmac", key])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn openssl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(data.as_bytes())
        .unwrap();
    let out = child.wait_with_output().expect("openssl dgst");
    b64url(&out.stdout)
}

pub fn b64url(data: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}
