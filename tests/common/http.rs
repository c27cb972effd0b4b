//! A tiny HTTP/1.1 client over `std::net::TcpStream`, enough for the tests:
//! one request per connection (`Connection: close`), Content-Length or chunked
//! responses. It keeps reading the response after the server stopped reading
//! the request body (a 413 before the body is consumed is the point of one test).

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The request body could not be written whole (the server closed early).
    pub body_write_error: Option<String>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
    pub fn content_type(&self) -> String {
        self.header("content-type")
            .unwrap_or("")
            .to_ascii_lowercase()
    }
}

/// Splits `http://host:port/path?q` into (host:port, /path?q).
pub fn split_url(url: &str) -> io::Result<(String, String)> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        io::Error::new(
            ErrorKind::InvalidInput,
            format!("not an http:// URL: {url}"),
        )
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    Ok((authority.to_string(), path.to_string()))
}

pub fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> io::Result<HttpResponse> {
    request_timeout(method, url, headers, body, TIMEOUT)
}

pub fn request_timeout(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> io::Result<HttpResponse> {
    let (authority, path) = split_url(url)?;
    let addr: SocketAddr = authority
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(ErrorKind::InvalidInput, "no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let _ = stream.set_nodelay(true);

    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!("Content-Length: {}\r\n", b.len()));
    } else if matches!(method, "POST" | "PUT" | "PATCH") {
        head.push_str("Content-Length: 0\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    let mut body_write_error = None;
    if let Some(b) = body {
        // The server may answer (413) and close before reading it all.
        if let Err(e) = stream.write_all(b) {
            body_write_error = Some(e.to_string());
        }
    }
    let _ = stream.flush();

    let raw = read_response(&mut stream, timeout).map_err(|e| {
        if let Some(w) = &body_write_error {
            io::Error::new(
                e.kind(),
                format!("{e} (after the request body write failed: {w})"),
            )
        } else {
            e
        }
    })?;
    let mut resp = parse_response(&raw)?;
    resp.body_write_error = body_write_error;
    Ok(resp)
}

/// Reads until the response is complete (by Content-Length/chunked) or EOF.
fn read_response(stream: &mut TcpStream, timeout: Duration) -> io::Result<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if complete(&raw) {
            return Ok(raw);
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(ErrorKind::TimedOut, "response timed out"));
        }
        match stream.read(&mut buf) {
            Ok(0) => return Ok(raw),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // A reset after a complete head+body is still an answer.
            Err(_) if complete_or_eof_ok(&raw) => return Ok(raw),
            Err(e) => return Err(e),
        }
    }
}

fn find_head_end(raw: &[u8]) -> Option<usize> {
    raw.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn head_lines(raw: &[u8], end: usize) -> Vec<String> {
    String::from_utf8_lossy(&raw[..end])
        .split("\r\n")
        .map(str::to_string)
        .collect()
}

fn content_length(lines: &[String]) -> Option<usize> {
    lines.iter().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        if k.trim().eq_ignore_ascii_case("content-length") {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

fn is_chunked(lines: &[String]) -> bool {
    lines.iter().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.to_ascii_lowercase().contains("chunked")
        })
    })
}

fn complete(raw: &[u8]) -> bool {
    let Some(end) = find_head_end(raw) else {
        return false;
    };
    let lines = head_lines(raw, end);
    if is_chunked(&lines) {
        return dechunk(&raw[end..]).is_some();
    }
    match content_length(&lines) {
        Some(n) => raw.len() >= end + n,
        None => false, // read to EOF
    }
}

fn complete_or_eof_ok(raw: &[u8]) -> bool {
    let Some(end) = find_head_end(raw) else {
        return false;
    };
    let lines = head_lines(raw, end);
    (!is_chunked(&lines) && content_length(&lines).is_none()) || complete(raw)
}

/// Decodes a complete chunked body; `None` while incomplete.
fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_str = String::from_utf8_lossy(&data[..line_end]);
        let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        if data.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

fn parse_response(raw: &[u8]) -> io::Result<HttpResponse> {
    let end = find_head_end(raw).ok_or_else(|| {
        io::Error::new(
            ErrorKind::UnexpectedEof,
            format!(
                "connection closed before a complete response head ({} bytes: {:?})",
                raw.len(),
                String::from_utf8_lossy(&raw[..raw.len().min(200)])
            ),
        )
    })?;
    let lines = head_lines(raw, end);
    let status_line = &lines[0];
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                ErrorKind::InvalidData,
                format!("bad status line {status_line:?}"),
            )
        })?;
    let headers: Vec<(String, String)> = lines[1..]
        .iter()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let rest = &raw[end..];
    let body = if is_chunked(&lines) {
        dechunk(rest)
            .ok_or_else(|| io::Error::new(ErrorKind::UnexpectedEof, "truncated chunked body"))?
    } else if let Some(n) = content_length(&lines) {
        if rest.len() < n {
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                format!("body truncated: {} of {n} bytes", rest.len()),
            ));
        }
        rest[..n].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
        body_write_error: None,
    })
}
