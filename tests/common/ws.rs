//! A synchronous WebSocket client (tungstenite) for OME signalling tests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;
use tungstenite::protocol::WebSocket;
use tungstenite::{Message, client};

pub struct Ws<S: Read + Write> {
    pub socket: WebSocket<S>,
}

/// Opens `ws://addr/path` (plain TCP) with read timeouts.
pub fn connect(addr: std::net::SocketAddr, path: &str) -> Ws<TcpStream> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("tcp connect");
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let url = format!("ws://{addr}{path}");
    let (socket, _) = client(url.as_str(), tcp).unwrap_or_else(|e| panic!("websocket {url}: {e}"));
    Ws { socket }
}

/// A WebSocket over any stream (a TLS one, for WSS).
pub fn over<S: Read + Write>(stream: S, url: &str) -> Ws<S> {
    let (socket, _) = client(url, stream).unwrap_or_else(|e| panic!("websocket {url}: {e}"));
    Ws { socket }
}

impl<S: Read + Write> Ws<S> {
    pub fn send(&mut self, text: &str) {
        self.socket
            .send(Message::Text(text.into()))
            .expect("websocket send");
    }

    pub fn send_binary(&mut self, data: Vec<u8>) {
        self.socket
            .send(Message::Binary(data.into()))
            .expect("websocket send");
    }

    /// The next JSON text message; None when the socket closed.
    pub fn recv_json(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            assert!(
                Instant::now() < deadline,
                "no websocket message within {timeout:?}"
            );
            match self.socket.read() {
                Ok(Message::Text(t)) => {
                    return Some(
                        serde_json::from_str(t.as_str())
                            .unwrap_or_else(|e| panic!("server sent non-JSON {t:?}: {e}")),
                    );
                }
                Ok(Message::Close(_)) => return None,
                Ok(_) => continue,
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return None;
                }
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
                    ) =>
                {
                    return None;
                }
                Err(e) => panic!("websocket read: {e}"),
            }
        }
    }

    /// Expects `{"code": code, "error": "...needle..."}` and then the close.
    pub fn expect_error(&mut self, code: u64, needle: &str, what: &str) -> Value {
        let v = self
            .recv_json(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("{what}: the socket closed without an error message"));
        assert_eq!(v["code"], code, "{what}: {v}");
        let msg = v["error"].as_str().unwrap_or("");
        assert!(
            msg.contains(needle),
            "{what}: error {msg:?} should mention {needle:?}"
        );
        assert!(
            self.recv_json(Duration::from_secs(30)).is_none(),
            "{what}: the socket should close after the error"
        );
        v
    }
}
