//! Many connections at once (tokio tasks in the test): thousands of idle and
//! half-header connections on every listener, and 1 000 blocking LL-HLS reloads.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use crate::common::*;
use crate::fixture::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The server closed (EOF or reset) after this long.
    Closed(Duration),
    /// Connect failed (refused, or not accepted in time).
    NotAccepted,
    /// Still open at the deadline.
    Open,
}

/// Connects from `src`, writes `prefix` (maybe nothing), then waits for the
/// server to close, reading and dropping whatever it says.
async fn hold(
    addr: SocketAddr,
    src: SocketAddr,
    prefix: &'static [u8],
    deadline: Instant,
) -> Outcome {
    let Ok(sock) = TcpSocket::new_v4() else {
        return Outcome::NotAccepted;
    };
    if sock.bind(src).is_err() {
        return Outcome::NotAccepted;
    }
    let mut s = match tokio::time::timeout(Duration::from_secs(3), sock.connect(addr)).await {
        Ok(Ok(s)) => s,
        _ => return Outcome::NotAccepted,
    };
    let t0 = Instant::now();
    if !prefix.is_empty() && s.write_all(prefix).await.is_err() {
        return Outcome::Closed(t0.elapsed());
    }
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return Outcome::Open,
            Ok(Ok(0)) | Ok(Err(_)) => return Outcome::Closed(t0.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// 4 500 connections: 1 125 per listener (HTTP, RTMP, ICE-TCP, OME
/// WebSocket), half silent and half stopping mid-header. All must be closed
/// by the server: silent ones within the first-bytes timeout, HTTP heads
/// within the header timeout, a half RTMP handshake or ICE-TCP frame within
/// the idle timeout at most (8 s of slack each, for 4 500 sockets on 2 cores).
#[test]
fn idle_and_half_header_connections_are_closed_on_every_listener() {
    let nofile = raise_nofile();
    assert!(
        nofile >= 5_000,
        "RLIMIT_NOFILE is {nofile}; the attack needs 5 000"
    );
    let mut f = Fixture::start_with(hardened_opts());
    let tcp = f
        .server
        .webrtc_tcp
        .expect("a webrtc-tcp listener (ICE-TCP)");
    let listeners: [(&str, SocketAddr, &'static [u8]); 4] = [
        (
            "http",
            f.server.http,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaa",
        ),
        ("rtmp", f.server.rtmp, &[3u8; 700]),
        // RFC 4571 framing: 1 000 bytes announced, 20 sent.
        (
            "ice-tcp",
            tcp,
            &[
                0x03, 0xe8, 0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,
            ],
        ),
        (
            "ome",
            f.server.service("ome"),
            b"GET /app/t1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgr",
        ),
    ];
    let attack = "listeners: 4 500 idle and half-header connections";
    let m = f.mark(attack);
    let rt = runtime();
    let slack = Duration::from_secs(8);
    let close_within = |name: &str, idle: bool| {
        slack
            + if idle {
                FIRST_BYTES_TIMEOUT
            } else if name == "http" || name == "ome" {
                HEADER_TIMEOUT
            } else {
                IDLE_TIMEOUT
            }
    };
    let deadline = Instant::now() + IDLE_TIMEOUT + slack + Duration::from_secs(5);
    let mut tasks = Vec::new();
    for i in 0..4_500usize {
        let (name, addr, half) = listeners[i % 4];
        let prefix: &'static [u8] = if (i / 4) % 2 == 0 { &[] } else { half };
        let src = source(i);
        tasks.push((
            name,
            prefix.is_empty(),
            rt.spawn(hold(addr, src, prefix, deadline)),
        ));
    }
    let results: Vec<(&str, bool, Outcome)> = rt.block_on(async {
        let mut out = Vec::new();
        for (name, idle, t) in tasks {
            out.push((name, idle, t.await.unwrap()));
        }
        out
    });
    drop(rt);
    let mut report = String::new();
    let mut failed = false;
    for (name, _, _) in listeners {
        for idle in [true, false] {
            let of: Vec<Outcome> = results
                .iter()
                .filter(|(n, i, _)| *n == name && *i == idle)
                .map(|r| r.2)
                .collect();
            let open = of.iter().filter(|o| **o == Outcome::Open).count();
            let late = of
                .iter()
                .filter(|o| matches!(o, Outcome::Closed(d) if *d > close_within(name, idle)))
                .count();
            let not_accepted = of.iter().filter(|o| **o == Outcome::NotAccepted).count();
            let slowest = of
                .iter()
                .filter_map(|o| match o {
                    Outcome::Closed(d) => Some(*d),
                    _ => None,
                })
                .max()
                .unwrap_or_default();
            report.push_str(&format!(
                "  {name} {}: {} connections, {open} still open, {late} closed after {:?}, \
                 {not_accepted} not accepted, slowest close {slowest:.1?}\n",
                if idle { "idle" } else { "half-header" },
                of.len(),
                close_within(name, idle)
            ));
            failed |= open > 0 || late > 0;
        }
    }
    println!("[{attack}]\n{report}");
    assert!(
        !failed,
        "[{attack}] connections outlived the server's timeouts:\n{report}"
    );
    // Every listener still serves.
    for (name, addr, _) in listeners {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("[{attack}] the {name} listener no longer accepts: {e}"));
    }
    assert_eq!(
        f.server.get("/healthz").status,
        200,
        "[{attack}] /healthz after the attack"
    );
    f.after(m, 40);
}

/// `(msn, part)` of the next part the playlist does not have yet.
fn next_part(playlist: &str) -> (u64, u64) {
    let mut msn = 0;
    let mut parts = 0;
    for line in playlist.lines() {
        if let Some(v) = line.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
            msn = v.trim().parse().unwrap();
        } else if line.starts_with("#EXT-X-PART:") {
            parts += 1;
        } else if !line.is_empty() && !line.starts_with('#') {
            msn += 1;
            parts = 0;
        }
    }
    (msn, parts)
}

/// See [`get`].
type Answer = Result<Option<(u16, bool)>, ()>;

/// One GET on its own connection: `Some((status, is_json))`, or `None` if the
/// server closed without an answer; `Err` if no answer within the deadline.
async fn get(addr: SocketAddr, src: SocketAddr, path: String, deadline: Instant) -> Answer {
    let fut = async {
        let sock = TcpSocket::new_v4().ok()?;
        sock.bind(src).ok()?;
        let mut s = sock.connect(addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw).await;
        let text = String::from_utf8_lossy(&raw);
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let head = text
            .split("\r\n\r\n")
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        Some((status, head.contains("content-type: application/json")))
    };
    tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), fut)
        .await
        .map_err(|_| ())
}

/// 1 000 concurrent blocking playlist reloads (the next part, a segment
/// ahead, far ahead, and u64::MAX) from 100 addresses: each is answered
/// (200), refused (4xx/5xx JSON) or closed, within 15 s; far-future ones
/// are refused.
#[test]
fn thousand_blocking_ll_hls_reloads_are_served_or_refused() {
    raise_nofile();
    let mut f = Fixture::start();
    let playlist = format!("/hls/{STREAM}/index.m3u8");
    let text = wait_until("the LL-HLS playlist", Duration::from_secs(30), || {
        let r = f.server.get(&playlist);
        (r.status == 200).then(|| r.text())
    });
    let (msn, part) = next_part(&text);
    let attack = format!("LL-HLS: 1 000 blocking reloads around {msn}.{part}");
    let m = f.mark(&attack);
    let kinds = [
        format!("{playlist}?_HLS_msn={msn}&_HLS_part={part}"),
        format!("{playlist}?_HLS_msn={}", msn + 1),
        format!("{playlist}?_HLS_msn={}&_HLS_part=0", msn + 1),
        format!("{playlist}?_HLS_msn={}", msn + 1_000_000),
        format!("{playlist}?_HLS_msn={}&_HLS_part={}", u64::MAX, u64::MAX),
        format!("{playlist}?_HLS_msn={msn}&_HLS_part={}", u64::MAX),
    ];
    let rt = runtime();
    let deadline = Instant::now() + Duration::from_secs(15);
    let addr = f.server.http;
    let tasks: Vec<_> = (0..1_000usize)
        .map(|i| {
            let k = i % kinds.len();
            (
                k,
                rt.spawn(get(addr, source(i), kinds[k].clone(), deadline)),
            )
        })
        .collect();
    let results: Vec<(usize, Answer)> = rt.block_on(async {
        let mut out = Vec::new();
        for (k, t) in tasks {
            out.push((k, t.await.unwrap()));
        }
        out
    });
    drop(rt);
    let mut report = String::new();
    let mut bad = Vec::new();
    for (k, kind) in kinds.iter().enumerate() {
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        for (_, r) in results.iter().filter(|(kk, _)| *kk == k) {
            let label = match r {
                Err(()) => "no answer in 15 s".to_string(),
                Ok(None) => "closed".to_string(),
                Ok(Some((s, json))) => format!("{s}{}", if *json { " json" } else { "" }),
            };
            let ok = match r {
                Err(()) => false,
                Ok(None) => true,
                // A part of a segment that completed meanwhile is there: 200.
                Ok(Some((200, _))) => k != 3 && k != 4,
                Ok(Some((s, json))) => *s >= 400 && *json,
            };
            if !ok {
                bad.push(format!("{kind}: {label}"));
            }
            *counts.entry(label).or_default() += 1;
        }
        report.push_str(&format!("  {kind}: {counts:?}\n"));
    }
    println!("[{attack}]\n{report}");
    assert!(
        bad.is_empty(),
        "[{attack}] {} answers neither served nor a clear refusal (first: {:?}):\n{report}",
        bad.len(),
        bad.first()
    );
    f.after(m, 20);
}
