//! The data directory's disk full (issue 11): roomcast's SQLite database on a
//! 3 MiB tmpfs, ffmpeg publishing and a str0m WHEP viewer watching. Filling
//! the filesystem brings one clear log line, `/healthz` says `storage:
//! failing` (still 200: the process serves), `/metrics` has
//! `roomcast_storage_ok 0`, and the viewer keeps receiving video. Freeing the
//! space brings "writes work again" and `storage: ok`. After the server is
//! killed, SQLite's `PRAGMA integrity_check` says ok.

mod common;

use std::time::Duration;

use common::faults::SmallFs;
use common::rtc_client::{self, Outgoing};
use common::*;
use serde_json::Value;

fn healthz(server: &Server) -> Value {
    let r = server.get("/healthz");
    assert_eq!(r.status, 200, "/healthz: {}", r.text());
    r.json().expect("/healthz JSON")
}

/// Video packets keep arriving at the viewer: `n` more within 10 s.
fn assert_video_flows(viewer: &rtc_client::RtcSession, n: u64, when: &str) {
    let from = viewer.video_packets();
    wait_until(
        &format!("{n} more video packets at the viewer {when}"),
        Duration::from_secs(10),
        || (viewer.video_packets() >= from + n).then_some(()),
    );
    assert!(!viewer.ended(), "the viewer's session ended {when}");
}

#[test]
fn disk_full_is_reported_and_streams_go_on() {
    let _g = serial();
    let fs = match SmallFs::mount(3 * 1024) {
        Ok(fs) => fs,
        Err(e) => panic!("this test mounts a tmpfs and needs root: {e}"),
    };
    let mut server = Server::start_with(ServerOpts {
        state_dir: Some(fs.dir.clone()),
        ..ServerOpts::default()
    });
    let _ffmpeg = Publisher::ffmpeg(&server.publish_url(STREAM), FfmpegOpts::small());
    server.wait_live(STREAM, LIVE_TIMEOUT);
    let viewer = rtc_client::start(&server.whep_url(STREAM), None, false, Outgoing::Nothing)
        .unwrap_or_else(|r| panic!("WHEP: {} {}", r.status, r.text()));
    assert_video_flows(&viewer, 100, "before the disk fills");
    assert_eq!(healthz(&server)["storage"], "ok");

    let from = server.log_len();
    let filler = fs.fill();
    let line = server.wait_for_log_from(
        from,
        "storage: the database cannot take writes",
        Duration::from_secs(15),
    );
    println!("log: {line}");
    let h = healthz(&server);
    println!("/healthz with the disk full: {h}");
    assert_eq!(h["storage"], "failing", "{h}");
    assert_eq!(h["status"], "degraded", "{h}");
    assert!(
        h["storage_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{h}"
    );
    let metrics = server.get("/metrics").text();
    assert!(
        metrics.lines().any(|l| l == "roomcast_storage_ok 0"),
        "no roomcast_storage_ok 0 in /metrics"
    );
    assert_video_flows(&viewer, 300, "with the disk full");
    assert_eq!(
        server.api_stream(STREAM).expect("stream API")["live"],
        true,
        "the stream went offline with the disk full"
    );
    // The state is logged when it changes, not on every probe.
    let probe_every = Duration::from_secs(5);
    let t = std::time::Instant::now();
    poll_until(probe_every * 2 + Duration::from_secs(1), || {
        t.elapsed() > probe_every * 2
    });
    let repeats = server.log_lines()[from..]
        .iter()
        .filter(|l| l.contains("storage: the database cannot take writes"))
        .count();
    assert!(repeats <= 2, "the full disk was logged {repeats} times");

    let from = server.log_len();
    std::fs::remove_file(&filler).unwrap();
    server.wait_for_log_from(from, "storage: writes work again", Duration::from_secs(15));
    assert_eq!(healthz(&server)["storage"], "ok");
    assert_video_flows(&viewer, 100, "after the space came back");
    server.assert_healthy("after the disk-full episode");

    // Fill it again and kill the server mid-flight: the database survives.
    fs.fill();
    server.wait_for_log_from(
        server.log_len().saturating_sub(1),
        "storage: the database cannot take writes",
        Duration::from_secs(15),
    );
    let db = fs.dir.join("roomcast.db");
    drop(viewer);
    drop(server);
    let out = std::process::Command::new(python())
        .arg("-c")
        .arg("import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('PRAGMA integrity_check').fetchone()[0])")
        .arg(&db)
        .output()
        .expect("python sqlite3");
    let verdict = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        verdict,
        "ok",
        "integrity_check of {}: {verdict} {}",
        db.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("integrity_check after the disk-full episode: {verdict}");
}
