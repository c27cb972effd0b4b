//! TLS: ffmpeg publishes over RTMPS; HTTPS and WSS (the OME port's TLS
//! listener) serve the same certificate; replacing the certificate files on
//! disk (as Caddy's renewals do) is picked up for new connections without a
//! restart, checked with `openssl s_client` and a client that trusts only the
//! new certificate.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::tls::make_cert;
use common::*;
use rustls::pki_types::ServerName;

/// The subject of the certificate a TLS port serves, read by `openssl s_client`.
fn served_subject(addr: SocketAddr) -> String {
    let mut s_client = Command::new("openssl")
        .args(["s_client", "-connect"])
        .arg(addr.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_client");
    let mut pem = String::new();
    s_client
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut pem)
        .unwrap();
    let _ = s_client.wait();
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-subject"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    x509.stdin
        .take()
        .unwrap()
        .write_all(pem.as_bytes())
        .unwrap();
    String::from_utf8_lossy(&x509.wait_with_output().unwrap().stdout).into_owned()
}

/// A rustls client stream to `addr` that trusts only `ca` (PEM file).
fn tls_client(
    addr: SocketAddr,
    ca: &Path,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>, String> {
    let config = common::tls::client_config(ca);
    let conn =
        rustls::ClientConnection::new(Arc::new(config), ServerName::IpAddress(addr.ip().into()))
            .map_err(|e| e.to_string())?;
    let tcp =
        TcpStream::connect_timeout(&addr, Duration::from_secs(10)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    // Complete the handshake now, so a certificate the client does not trust fails here.
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).map_err(|e| e.to_string())?;
    }
    Ok(s)
}

/// `GET path` over HTTPS, trusting only `ca`; the response text.
fn https_get(addr: SocketAddr, ca: &Path, path: &str) -> Result<String, String> {
    let mut s = tls_client(addr, ca)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Copies `from.*` over `to.*` the way a renewal does: write aside, rename in place.
fn replace_cert(dir: &Path, from: &str, to: &str) {
    for ext in ["key", "crt"] {
        let tmp = dir.join(format!("{to}.{ext}.new"));
        std::fs::copy(dir.join(format!("{from}.{ext}")), &tmp).unwrap();
        std::fs::rename(&tmp, dir.join(format!("{to}.{ext}"))).unwrap();
    }
}

#[test]
fn rtmps_https_wss_and_certificate_reload() {
    let _serial = serial();
    let certs = TempDir::new("roomcast-certs");
    let dir = certs.path();
    make_cert(dir, "a", "roomcast-test-a");
    make_cert(dir, "b", "roomcast-test-b");
    // The server reads live.crt/live.key; they start as certificate A.
    replace_cert(dir, "a", "live");
    let mut server = Server::start_with(ServerOpts {
        http_extra: "tls_listen = \"127.0.0.1:0\"".into(),
        rtmp_extra: "tls_listen = \"127.0.0.1:0\"".into(),
        ome_extra: "tls_listen = \"127.0.0.1:0\"".into(),
        extra_toml: format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\nreload_interval_secs = 1\n",
            dir.join("live.crt").display(),
            dir.join("live.key").display()
        ),
        ..ServerOpts::default()
    });
    let (rtmps, https, wss) = (
        server.service("rtmps"),
        server.service("https"),
        server.service("ome-tls"),
    );
    for addr in [rtmps, https, wss] {
        let subject = served_subject(addr);
        assert!(
            subject.contains("roomcast-test-a"),
            "{addr} serves {subject:?}"
        );
    }

    // ffmpeg over RTMPS.
    let url = format!("rtmps://{rtmps}/live/{}", server.key(STREAM));
    let _ffmpeg = Publisher::ffmpeg(
        &url,
        FfmpegOpts {
            width: 320,
            height: 180,
            ..FfmpegOpts::default()
        },
    );
    let live = server.wait_live(STREAM, LIVE_TIMEOUT);
    assert_eq!(live["ingest"]["protocol"], "rtmps", "{live}");
    server.wait_for_log("rtmp publish started", LIVE_TIMEOUT);

    // HTTPS with a client that trusts certificate A only.
    let a = dir.join("a.crt");
    let b = dir.join("b.crt");
    let resp = https_get(https, &a, &format!("/api/v1/streams/{STREAM}")).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("\"live\":true"), "{resp}");

    // WSS on the OME port's TLS listener: OvenPlayer's signalling.
    let stream = tls_client(wss, &a).unwrap();
    let mut ws = common::ws::over(stream, &format!("wss://{wss}/app/{STREAM}"));
    wait_until("the stream's video codec", LIVE_TIMEOUT, || {
        server
            .api_stream(STREAM)
            .filter(|v| v["video"]["codec"] == "H264")
    });
    ws.send(r#"{"command":"request_offer"}"#);
    let offer = ws
        .recv_json(Duration::from_secs(30))
        .expect("an offer over WSS");
    assert_eq!(offer["command"], "offer", "{offer}");

    // Renewal: certificate B replaces A on disk; new connections get B.
    replace_cert(dir, "b", "live");
    for addr in [rtmps, https, wss] {
        wait_until(
            &format!("{addr} to serve the renewed certificate"),
            Duration::from_secs(30),
            || {
                served_subject(addr)
                    .contains("roomcast-test-b")
                    .then_some(())
            },
        );
    }
    server.wait_for_log("tls certificate reloaded", Duration::from_secs(10));
    assert!(server.is_running(), "the server restarted");
    let resp = https_get(https, &b, "/healthz").unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        https_get(https, &a, "/healthz").is_err(),
        "certificate A is still served"
    );
    // The RTMPS publisher connected before the renewal keeps publishing.
    let before = server.api_stream(STREAM).unwrap();
    assert_eq!(before["live"], true, "{before}");

    // A broken certificate file keeps the good one in service.
    std::fs::write(dir.join("live.crt.new"), "not a certificate").unwrap();
    std::fs::rename(dir.join("live.crt.new"), dir.join("live.crt")).unwrap();
    server.wait_for_log(
        "cannot be loaded; still serving the previous one",
        Duration::from_secs(30),
    );
    assert!(served_subject(https).contains("roomcast-test-b"));
    server.assert_healthy("after a broken certificate file");
    server.assert_no_key_logged();
}
