//! The TLS listeners (HTTPS, RTMPS and the OME port's TLS listener) under
//! what the plain ones get in floods.rs: connections that never send a
//! ClientHello, send half of one, or complete TLS and then send nothing,
//! half an HTTP head or half an RTMP handshake are each closed within the
//! timeout that applies to them; the per-address and per-listener caps hold
//! on the TLS ports; a TLS client from elsewhere is served meanwhile.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

use crate::common::tls::make_cert;
use crate::common::*;
use crate::fixture::*;

/// `[connections]` caps in [`tls_opts`] (the timeouts are
/// [`hardened_opts`]'s).
const PER_ADDRESS: usize = 16;
const PER_LISTENER: usize = 256;
/// RTMP's own bound on a connection that has not published yet
/// (`SETUP_TIMEOUT` in src/ingest/rtmp): a half RTMP handshake ends there,
/// before the idle timeout.
const RTMP_SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Closing may take this much longer than its timeout (a few hundred
/// sockets and TLS handshakes on 2 cores).
const SLACK: Duration = Duration::from_secs(3);
/// A connection over a cap is closed at once: within this.
const AT_ONCE: Duration = Duration::from_secs(1);
/// Connections per listener and kind in the flood.
const EACH: usize = 48;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Http,
    Rtmp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// TCP only, nothing sent.
    Silent,
    /// The first half of a real ClientHello.
    HalfHello,
    /// TLS completed, then nothing.
    TlsSilent,
    /// TLS completed, then half an HTTP head or half an RTMP handshake.
    TlsHalf,
}

const KINDS: [Kind; 4] = [
    Kind::Silent,
    Kind::HalfHello,
    Kind::TlsSilent,
    Kind::TlsHalf,
];

impl Kind {
    fn label(self, proto: Proto) -> &'static str {
        match (self, proto) {
            (Kind::Silent, _) => "no ClientHello",
            (Kind::HalfHello, _) => "half a ClientHello",
            (Kind::TlsSilent, _) => "TLS, then nothing",
            (Kind::TlsHalf, Proto::Http) => "TLS, then half an HTTP head",
            (Kind::TlsHalf, Proto::Rtmp) => "TLS, then half an RTMP handshake",
        }
    }

    /// The timeout that must close it, and the slack.
    fn close_within(self, proto: Proto) -> Duration {
        SLACK
            + match (self, proto) {
                (Kind::Silent, _) => FIRST_BYTES_TIMEOUT,
                // The handshake has the first-bytes timeout from its first byte.
                (Kind::HalfHello, _) => FIRST_BYTES_TIMEOUT,
                (Kind::TlsSilent | Kind::TlsHalf, Proto::Http) => HEADER_TIMEOUT,
                // RTMP's first bytes inside TLS get the first-bytes timeout too.
                (Kind::TlsSilent, Proto::Rtmp) => FIRST_BYTES_TIMEOUT,
                (Kind::TlsHalf, Proto::Rtmp) => RTMP_SETUP_TIMEOUT,
            }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The server closed (EOF, reset or a TLS close) this long after the
    /// client's last write.
    Closed(Duration),
    /// Connect failed.
    NotAccepted,
    /// The TLS handshake failed.
    NoTls(&'static str),
    /// Still open at the deadline.
    Open,
}

/// The server with TLS on the HTTP, RTMP and OME ports, short connection
/// timeouts and small caps; the certificate lives in the returned directory.
fn tls_opts() -> (TempDir, ServerOpts) {
    let certs = TempDir::new("roomcast-attack-certs");
    make_cert(certs.path(), "server", "roomcast-attack");
    let hardened = hardened_opts();
    let opts = ServerOpts {
        http_extra: "tls_listen = \"127.0.0.1:0\"".into(),
        rtmp_extra: "tls_listen = \"127.0.0.1:0\"".into(),
        ome_extra: "tls_listen = \"127.0.0.1:0\"".into(),
        extra_toml: format!(
            "{}max_per_address = {PER_ADDRESS}\nmax_per_listener = {PER_LISTENER}\n\
             [tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            hardened.extra_toml,
            certs.path().join("server.crt").display(),
            certs.path().join("server.key").display()
        ),
        ..hardened
    };
    (certs, opts)
}

/// A client that trusts only the test certificate.
fn connector(ca: &Path) -> TlsConnector {
    TlsConnector::from(Arc::new(crate::common::tls::client_config(ca)))
}

fn server_name() -> ServerName<'static> {
    ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into())
}

/// The ClientHello this client sends (its first flight, as written to TCP).
fn client_hello(connector: &TlsConnector) -> Vec<u8> {
    let mut c = rustls::ClientConnection::new(connector.config().clone(), server_name()).unwrap();
    let mut hello = Vec::new();
    c.write_tls(&mut hello).unwrap();
    assert_eq!(hello[0], 22, "a handshake record");
    hello
}

/// Half of what a client sends after TLS: an HTTP head or an RTMP handshake.
fn half_message(proto: Proto) -> &'static [u8] {
    match proto {
        Proto::Http => b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaa",
        // C0 and 700 of C1's 1 536 bytes.
        Proto::Rtmp => &[3u8; 701],
    }
}

async fn connect_from(src: IpAddr, addr: SocketAddr) -> Option<TcpStream> {
    let sock = TcpSocket::new_v4().ok()?;
    sock.bind(SocketAddr::new(src, 0)).ok()?;
    match tokio::time::timeout(Duration::from_secs(3), sock.connect(addr)).await {
        Ok(Ok(s)) => Some(s),
        _ => None,
    }
}

/// Reads (and drops) until the server closes or `deadline`.
async fn closed<S: AsyncRead + Unpin>(mut s: S, since: Instant, deadline: Instant) -> Outcome {
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return Outcome::Open,
            Ok(Ok(0)) | Ok(Err(_)) => return Outcome::Closed(since.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

struct Attempt {
    proto: Proto,
    addr: SocketAddr,
    src: IpAddr,
    kind: Kind,
    connector: TlsConnector,
    half_hello: Arc<Vec<u8>>,
    deadline: Instant,
    /// Counts attempts that are in place (sent what they send, or failed).
    ready: Arc<AtomicUsize>,
}

async fn attempt(a: Attempt) -> Outcome {
    let in_place = || a.ready.fetch_add(1, Ordering::SeqCst);
    let Some(mut tcp) = connect_from(a.src, a.addr).await else {
        in_place();
        return Outcome::NotAccepted;
    };
    match a.kind {
        Kind::Silent | Kind::HalfHello => {
            if a.kind == Kind::HalfHello && tcp.write_all(&a.half_hello).await.is_err() {
                in_place();
                return Outcome::Closed(Duration::ZERO);
            }
            let since = Instant::now();
            in_place();
            closed(tcp, since, a.deadline).await
        }
        Kind::TlsSilent | Kind::TlsHalf => {
            let tls = tokio::time::timeout(
                Duration::from_secs(5),
                a.connector.connect(server_name(), tcp),
            )
            .await;
            let mut tls = match tls {
                Ok(Ok(s)) => s,
                Ok(Err(_)) => {
                    in_place();
                    return Outcome::NoTls("handshake failed");
                }
                Err(_) => {
                    in_place();
                    return Outcome::NoTls("handshake not done in 5 s");
                }
            };
            if a.kind == Kind::TlsHalf {
                let half = half_message(a.proto);
                if tls.write_all(half).await.is_err() || tls.flush().await.is_err() {
                    in_place();
                    return Outcome::Closed(Duration::ZERO);
                }
            }
            let since = Instant::now();
            in_place();
            closed(tls, since, a.deadline).await
        }
    }
}

/// A legitimate client's request over TLS, from 127.0.0.1: `/healthz` over
/// HTTPS (200), or an RTMP handshake answered (S0, S1, S2).
async fn served(proto: Proto, addr: SocketAddr, connector: &TlsConnector) -> Result<(), String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut tls = connector
        .connect(server_name(), tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    match proto {
        Proto::Http => {
            tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .map_err(|e| format!("write: {e}"))?;
            let mut out = Vec::new();
            let _ = tls.read_to_end(&mut out).await;
            let text = String::from_utf8_lossy(&out);
            if !text.starts_with("HTTP/1.1 200") {
                return Err(format!("answered {:?}", truncate(&text, 200)));
            }
        }
        Proto::Rtmp => {
            let mut c0c1 = vec![3u8];
            c0c1.extend_from_slice(&random_bytes(1536));
            tls.write_all(&c0c1)
                .await
                .map_err(|e| format!("write: {e}"))?;
            let mut s = vec![0u8; 1 + 2 * 1536];
            tls.read_exact(&mut s)
                .await
                .map_err(|e| format!("no S0 S1 S2: {e}"))?;
            if s[0] != 3 {
                return Err(format!("S0 is {}", s[0]));
            }
        }
    }
    Ok(())
}

fn ip(a: u8, b: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, a, b))
}

/// (closed within [`AT_ONCE`], closed within `within` after that, other
/// outcomes) of silent connections over a cap.
fn cap_counts(outcomes: &[Outcome], within: Duration) -> (usize, usize, Vec<Outcome>) {
    let mut at_once = 0;
    let mut held = 0;
    let mut other = Vec::new();
    for o in outcomes {
        match o {
            Outcome::Closed(d) if *d < AT_ONCE => at_once += 1,
            Outcome::Closed(d) if *d <= within => held += 1,
            o => other.push(*o),
        }
    }
    (at_once, held, other)
}

#[test]
fn tls_listeners_close_idle_and_half_handshakes_and_keep_their_caps() {
    raise_nofile();
    let (certs, opts) = tls_opts();
    let mut f = Fixture::start_with(opts);
    let connector = connector(&certs.path().join("server.crt"));
    let half_hello = {
        let hello = client_hello(&connector);
        Arc::new(hello[..hello.len() / 2].to_vec())
    };
    let listeners = [
        ("https", f.server.service("https"), Proto::Http),
        ("rtmps", f.server.service("rtmps"), Proto::Rtmp),
        ("ome-tls", f.server.service("ome-tls"), Proto::Http),
    ];
    let refused_before: Vec<u64> = listeners
        .iter()
        .map(|(name, _, _)| {
            f.server.metric(&format!(
                "roomcast_listener_refused_total{{listener=\"{name}\"}}"
            ))
        })
        .collect();
    let rt = runtime();

    // 1. The flood: per listener, EACH of every kind from 100 addresses,
    //    and PER_ADDRESS + 4 silent ones from one more address; a client
    //    from 127.0.0.1 is served while they are all in place.
    let attack = "TLS listeners: idle, half-ClientHello and half-header connections";
    let m = f.mark(attack);
    let started = Instant::now();
    let deadline = started + RTMP_SETUP_TIMEOUT + SLACK + Duration::from_secs(5);
    let ready = Arc::new(AtomicUsize::new(0));
    let mut flood = Vec::new();
    let mut per_address = Vec::new();
    for (l, &(name, addr, proto)) in listeners.iter().enumerate() {
        for (k, kind) in KINDS.into_iter().enumerate() {
            for i in 0..EACH {
                let a = Attempt {
                    proto,
                    addr,
                    src: ip(0, 2 + ((i + k * EACH) % 100) as u8),
                    kind,
                    connector: connector.clone(),
                    half_hello: half_hello.clone(),
                    deadline,
                    ready: ready.clone(),
                };
                flood.push((name, proto, kind, rt.spawn(attempt(a))));
            }
        }
        for _ in 0..PER_ADDRESS + 4 {
            let a = Attempt {
                proto,
                addr,
                src: ip(1, 2 + l as u8),
                kind: Kind::Silent,
                connector: connector.clone(),
                half_hello: half_hello.clone(),
                deadline,
                ready: ready.clone(),
            };
            per_address.push((name, rt.spawn(attempt(a))));
        }
    }
    let total = flood.len() + per_address.len();
    assert!(
        poll_until(Duration::from_secs(20), || ready.load(Ordering::SeqCst)
            == total),
        "[{attack}] only {} of {total} connections in place after 20 s",
        ready.load(Ordering::SeqCst)
    );
    let in_place = started.elapsed();
    let mut legit = Vec::new();
    for (name, addr, proto) in listeners {
        let t = Instant::now();
        let r = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), served(proto, addr, &connector)).await
        });
        match r {
            Ok(Ok(())) => legit.push(format!("{name} in {:.2?}", t.elapsed())),
            Ok(Err(e)) => panic!("[{attack}] a legitimate {name} client was not served: {e}"),
            Err(_) => panic!("[{attack}] a legitimate {name} client was not served within 5 s"),
        }
    }
    let flood: Vec<(&str, Proto, Kind, Outcome)> = rt.block_on(async {
        let mut out = Vec::new();
        for (name, proto, kind, t) in flood {
            out.push((name, proto, kind, t.await.unwrap()));
        }
        out
    });
    let per_address: Vec<(&str, Outcome)> = rt.block_on(async {
        let mut out = Vec::new();
        for (name, t) in per_address {
            out.push((name, t.await.unwrap()));
        }
        out
    });
    let mut report = format!(
        "  {total} connections in place after {in_place:.1?}; served meanwhile: {}\n",
        legit.join(", ")
    );
    let mut failed = false;
    for (name, _, proto) in listeners {
        for kind in KINDS {
            let of: Vec<Outcome> = flood
                .iter()
                .filter(|(n, _, k, _)| *n == name && *k == kind)
                .map(|r| r.3)
                .collect();
            let within = kind.close_within(proto);
            let in_time = of
                .iter()
                .filter(|o| matches!(o, Outcome::Closed(d) if *d <= within))
                .count();
            let slowest = of
                .iter()
                .filter_map(|o| match o {
                    Outcome::Closed(d) => Some(*d),
                    _ => None,
                })
                .max()
                .unwrap_or_default();
            let others: Vec<&Outcome> = of
                .iter()
                .filter(|o| !matches!(o, Outcome::Closed(d) if *d <= within))
                .collect();
            report.push_str(&format!(
                "  {name}, {}: {in_time} of {} closed within {within:?} (slowest {slowest:.1?}){}\n",
                kind.label(proto),
                of.len(),
                if others.is_empty() {
                    String::new()
                } else {
                    format!("; not: {:?}", &others[..others.len().min(3)])
                }
            ));
            failed |= in_time != of.len();
        }
        let of: Vec<Outcome> = per_address
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|r| r.1)
            .collect();
        let (at_once, held, other) = cap_counts(&of, FIRST_BYTES_TIMEOUT + SLACK);
        report.push_str(&format!(
            "  {name}, {} silent from one address (cap {PER_ADDRESS}): {at_once} closed at once, \
             {held} held to the first-bytes timeout{}\n",
            of.len(),
            if other.is_empty() {
                String::new()
            } else {
                format!(", others: {:?}", &other[..other.len().min(3)])
            }
        ));
        failed |= at_once != 4 || held != PER_ADDRESS;
    }
    println!("[{attack}]\n{report}");
    assert!(
        !failed,
        "[{attack}] a TLS listener kept a connection past its timeout or broke its per-address cap:\n{report}"
    );

    // 2. The listener cap: PER_LISTENER + 32 silent connections on each TLS
    //    port at once, from 20 addresses (under the per-address cap).
    let burst = Instant::now();
    let deadline = burst + FIRST_BYTES_TIMEOUT + SLACK + Duration::from_secs(3);
    let ready = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (name, addr, proto) in listeners {
        for i in 0..PER_LISTENER + 32 {
            let a = Attempt {
                proto,
                addr,
                src: ip(2, 2 + (i % 20) as u8),
                kind: Kind::Silent,
                connector: connector.clone(),
                half_hello: half_hello.clone(),
                deadline,
                ready: ready.clone(),
            };
            tasks.push((name, rt.spawn(attempt(a))));
        }
    }
    let results: Vec<(&str, Outcome)> = rt.block_on(async {
        let mut out = Vec::new();
        for (name, t) in tasks {
            out.push((name, t.await.unwrap()));
        }
        out
    });
    drop(rt);
    let mut report = String::new();
    let mut failed = false;
    for (i, (name, _, _)) in listeners.iter().enumerate() {
        let of: Vec<Outcome> = results
            .iter()
            .filter(|(n, _)| n == name)
            .map(|r| r.1)
            .collect();
        let (at_once, held, other) = cap_counts(&of, FIRST_BYTES_TIMEOUT + SLACK);
        let refused = f.server.metric(&format!(
            "roomcast_listener_refused_total{{listener=\"{name}\"}}"
        )) - refused_before[i];
        report.push_str(&format!(
            "  {name}: {} silent connections (cap {PER_LISTENER}): {at_once} closed at once, \
             {held} held to the first-bytes timeout{}; {refused} refused in all (metrics)\n",
            of.len(),
            if other.is_empty() {
                String::new()
            } else {
                format!(", others: {:?}", &other[..other.len().min(3)])
            }
        ));
        failed |= at_once != 32 || held != PER_LISTENER || refused != 4 + 32;
    }
    println!(
        "[{attack}] listener cap, a burst of {} connections:\n{report}",
        results.len()
    );
    assert!(
        !failed,
        "[{attack}] a TLS listener broke its connection cap:\n{report}"
    );
    f.server.assert_healthy("after the TLS floods");
    f.after(m, 40);
}
