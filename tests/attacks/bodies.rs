//! Request bodies trickled a byte at a time: each byte resets the idle
//! timeout, so only the whole-body deadline (`http_body_timeout_secs`)
//! ends them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use crate::common::*;
use crate::fixture::*;

const BODY_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECTIONS: usize = 200;

#[derive(Debug)]
enum Outcome {
    /// What the server answered (its status line, or "" for a bare close)
    /// and when, from the end of the request head.
    Answered(String, Duration),
    NotAccepted,
    /// The body was still being taken at the deadline.
    Open,
}

/// POSTs a 4 000-byte offer to WHEP from `src`, one byte every 250 ms,
/// until the server answers or closes.
async fn trickle(addr: SocketAddr, src: SocketAddr, deadline: Instant) -> Outcome {
    let Ok(sock) = TcpSocket::new_v4() else {
        return Outcome::NotAccepted;
    };
    if sock.bind(src).is_err() {
        return Outcome::NotAccepted;
    }
    let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_secs(3), sock.connect(addr)).await
    else {
        return Outcome::NotAccepted;
    };
    let head = format!(
        "POST /whep/{STREAM} HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n\
         Content-Length: 4000\r\n\r\n"
    );
    if s.write_all(head.as_bytes()).await.is_err() {
        return Outcome::NotAccepted;
    }
    let t0 = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if Instant::now() > deadline {
                    return Outcome::Open;
                }
                // A write that fails means the server closed: read what it said.
                let _ = s.write_all(b"v").await;
            }
            r = s.read(&mut buf) => match r {
                Ok(n) if n > 0 => answer.extend_from_slice(&buf[..n]),
                _ => {
                    let text = String::from_utf8_lossy(&answer);
                    let status = text.lines().next().unwrap_or_default().to_string();
                    return Outcome::Answered(status, t0.elapsed());
                }
            },
        }
    }
}

/// 200 WHEP offers trickled from 100 addresses (no per-address cap ends
/// them; each byte arrives well within the idle timeout): every one is
/// answered `408` within the body deadline, and the server serves on.
#[test]
fn trickled_request_bodies_are_cut_at_the_body_deadline() {
    let mut f = Fixture::start_with(ServerOpts {
        extra_toml: format!(
            "[connections]\nhttp_body_timeout_secs = {}\n",
            BODY_TIMEOUT.as_secs()
        ),
        ..ServerOpts::default()
    });
    let attack = "http: 200 request bodies trickled a byte every 250 ms";
    let m = f.mark(attack);
    let rt = runtime();
    let slack = Duration::from_secs(5);
    let deadline = Instant::now() + BODY_TIMEOUT + slack + Duration::from_secs(5);
    let addr = f.server.http;
    let results: Vec<Outcome> = rt.block_on(async {
        let tasks: Vec<_> = (0..CONNECTIONS)
            .map(|i| tokio::spawn(trickle(addr, source(i), deadline)))
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    drop(rt);
    let cut = results
        .iter()
        .filter(|o| {
            matches!(o, Outcome::Answered(status, d)
                if status.contains(" 408") && *d <= BODY_TIMEOUT + slack)
        })
        .count();
    let mut others: Vec<String> = results
        .iter()
        .filter(|o| !matches!(o, Outcome::Answered(status, _) if status.contains(" 408")))
        .map(|o| format!("{o:?}"))
        .collect();
    others.sort();
    others.dedup();
    println!(
        "[{attack}] {cut}/{CONNECTIONS} answered 408 within {:?}",
        BODY_TIMEOUT + slack
    );
    assert_eq!(
        cut, CONNECTIONS,
        "[{attack}] trickled bodies not cut at the deadline; other outcomes: {others:?}"
    );
    assert_eq!(f.server.get("/healthz").status, 200, "[{attack}] /healthz");
    f.after(m, 20);
}
