//! Publisher flap (issue 11): a publisher disconnects and reconnects again and
//! again, RTMP (ffmpeg) and WHIP (aiortc) alternating, while str0m WHEP viewers
//! watch. No viewer's PeerConnection may end, every viewer gets each new
//! publisher's keyframe and video, and the server's RSS and open fds come back
//! to where they were (±10 %). Each cycle also waits for the stream's
//! thumbnail, so the server-lifetime decoder threads have decoded both
//! ingest paths' keyframes before the baseline is taken (their first decode
//! grows RSS once, by design). The short version runs 10 cycles with 5 viewers;
//! `bench/soak/flap.sh` runs 100 cycles with 50 (SOAK_FLAP_CYCLES,
//! SOAK_FLAP_VIEWERS).

mod common;

use std::time::{Duration, Instant};

use common::faults::{env_count, fd_count, rss_kib, settled_usage};
use common::publishers::{WhipOpts, aiortc_publisher};
use common::rtc_client::{self, Outgoing, RtcSession};
use common::*;

/// How long a new publisher may take until every viewer has its video.
const CYCLE_TIMEOUT: Duration = Duration::from_secs(30);

enum Pub {
    Rtmp(Publisher),
    Whip(JsonTool),
}

fn start_publisher(server: &Server, cycle: usize) -> Pub {
    if cycle.is_multiple_of(2) {
        Pub::Rtmp(Publisher::ffmpeg(
            &server.rtmp_url(server.key(STREAM)),
            FfmpegOpts::small(),
        ))
    } else {
        Pub::Whip(aiortc_publisher(
            &server.whip_url(STREAM),
            WhipOpts {
                key: Some(server.key(STREAM).to_string()),
                ..WhipOpts::default()
            },
        ))
    }
}

/// Ends the publisher: ffmpeg quits cleanly or (every other RTMP cycle) is
/// killed like a lost connection; aiortc DELETEs its session.
fn stop_publisher(p: Pub, cycle: usize) {
    match p {
        Pub::Rtmp(mut f) if cycle % 4 == 2 => {
            f.kill();
        }
        Pub::Rtmp(mut f) => {
            f.stop(Duration::from_secs(5));
        }
        Pub::Whip(mut w) => {
            let r = w.stop(Duration::from_secs(20));
            assert_eq!(r["ok"], true, "WHIP publisher of cycle {cycle}: {r}");
        }
    }
}

fn wait_offline(server: &Server, cycle: usize) {
    wait_until(
        &format!("stream offline after cycle {cycle}"),
        LIVE_TIMEOUT,
        || (server.api_stream(STREAM)?["live"] == false).then_some(()),
    );
}

/// `roomcast_thumbnails_made_total` from /metrics.
fn thumbnails_made(server: &Server) -> u64 {
    server
        .get("/metrics")
        .text()
        .lines()
        .find_map(|l| {
            l.strip_prefix("roomcast_thumbnails_made_total ")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn assert_viewers_alive(viewers: &[RtcSession], when: &str) {
    for (i, v) in viewers.iter().enumerate() {
        assert!(
            v.connected() && !v.ended(),
            "viewer {i} lost its PeerConnection {when} (connected {}, ended {})",
            v.connected(),
            v.ended()
        );
    }
}

#[test]
fn publisher_flap_keeps_viewers_and_resources() {
    let _g = serial();
    let cycles = env_count("SOAK_FLAP_CYCLES", 10).max(4);
    let viewer_count = env_count("SOAK_FLAP_VIEWERS", 5);
    let t0 = Instant::now();
    // Every viewer comes from 127.0.0.1: lift the per-address offer limit.
    let mut server = Server::start("[limits]\noffers_per_minute = 0\n");
    let pid = server.pid();

    // The first publisher brings the stream up; the viewers join it.
    let mut publisher = Some(start_publisher(&server, 0));
    server.wait_live(STREAM, LIVE_TIMEOUT);
    let viewers: Vec<RtcSession> = (0..viewer_count)
        .map(|i| {
            rtc_client::start(&server.whep_url(STREAM), None, false, Outgoing::Nothing)
                .unwrap_or_else(|r| panic!("WHEP viewer {i}: {} {}", r.status, r.text()))
        })
        .collect();

    let mut baseline = None;
    for cycle in 0..cycles {
        // Thumbnails made before this publisher: a 200 alone says nothing,
        // it may still be the last publisher's until the thumbnailer's next
        // round (every second) notices the stream went offline.
        let made_before = thumbnails_made(&server);
        if publisher.is_none() {
            publisher = Some(start_publisher(&server, cycle));
        }
        // Every viewer gets this publisher's keyframe and video.
        let before: Vec<(u64, u64)> = viewers
            .iter()
            .map(|v| (v.keyframes(), v.video_packets()))
            .collect();
        let started = Instant::now();
        wait_until(
            &format!("cycle {cycle}: every viewer gets a keyframe and video"),
            CYCLE_TIMEOUT,
            || {
                viewers
                    .iter()
                    .zip(&before)
                    .all(|(v, (k, n))| v.keyframes() > *k && v.video_packets() >= n + 100)
                    .then_some(())
            },
        );
        let to_video = started.elapsed();
        // This publisher's keyframe is decoded to a thumbnail too, when
        // asked for (thumbnails are made on demand): the GET asks.
        wait_until(
            &format!("cycle {cycle}: a thumbnail of this publisher"),
            CYCLE_TIMEOUT,
            || {
                let r = server.get(&format!("/api/v1/streams/{STREAM}/thumbnail.jpg"));
                (r.status == 200 && thumbnails_made(&server) > made_before).then_some(())
            },
        );
        assert_viewers_alive(&viewers, &format!("in cycle {cycle}"));
        stop_publisher(publisher.take().unwrap(), cycle);
        wait_offline(&server, cycle);
        server.assert_healthy(&format!("after cycle {cycle}"));
        println!(
            "cycle {cycle} ({}): all {viewer_count} viewers had video after {to_video:.1?}, rss {} KiB, fds {}",
            if cycle.is_multiple_of(2) {
                "RTMP"
            } else {
                "WHIP"
            },
            rss_kib(pid),
            fd_count(pid)
        );
        // Baseline once both ingest paths ran (allocator pools and caches warm).
        if cycle == 1 {
            baseline = Some(settled_usage(pid));
        }
    }
    assert_viewers_alive(&viewers, "after the last cycle");
    let (rss0, fds0) = baseline.unwrap();
    let (rss1, fds1) = settled_usage(pid);
    println!(
        "flap x{cycles} with {viewer_count} viewers in {:.0?}: rss {rss0} -> {rss1} KiB ({:+.1} %), fds {fds0} -> {fds1}",
        t0.elapsed(),
        (rss1 as f64 / rss0 as f64 - 1.0) * 100.0
    );
    assert!(
        rss1 as f64 <= rss0 as f64 * 1.10,
        "RSS grew over the flaps: {rss0} -> {rss1} KiB"
    );
    assert!(
        fds1 as f64 <= fds0 as f64 * 1.10,
        "open fds grew over the flaps: {fds0} -> {fds1}"
    );
    // The viewers are still counted as watching.
    let v = server.api_stream(STREAM).expect("stream API");
    println!("stream after the flaps: {v}");
}
