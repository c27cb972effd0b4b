//! The wall clock stepped under a running server (issue 11): one hour
//! forward, then two hours back, while ffmpeg publishes and a str0m WHEP
//! viewer watches. The real clock cannot be stepped on this shared machine
//! (see `common::clock`): the server runs with an LD_PRELOAD library that
//! offsets CLOCK_REALTIME for it alone; its log timestamps prove the step.
//! After each step the viewer's video goes on, a new viewer joins, the
//! stream stays live with its measured frame rate, LL-HLS keeps publishing
//! segments and answers a blocking reload, and nothing panicked: every
//! timeout and rate runs on the monotonic clock (`Instant`); `SystemTime` is
//! only for dates shown to people (API `started_at`, notices, HLS
//! PROGRAM-DATE-TIME, anchored once at start) and for expiry times that are
//! wall-clock by contract (SignedPolicy, viewer tokens).

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::clock::SteppedClock;
use common::rtc_client::{self, Outgoing, RtcSession};
use common::*;

/// Seconds since the epoch of a log line's RFC 3339 timestamp (`2026-11-30T02:04:39.750563Z …`).
fn log_time(line: &str) -> Option<i64> {
    let ts = line.split_whitespace().next()?;
    let (date, time) = ts.trim_end_matches('Z').split_once('T')?;
    let d: Vec<i64> = date
        .split('-')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let t: Vec<f64> = time
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m, day) = (d[0] - i64::from(d[1] <= 2), d[1], d[2]);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + (t[0] * 3600.0 + t[1] * 60.0 + t[2]) as i64)
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The newest media sequence number of the stream's LL-HLS playlist.
fn hls_msn(server: &Server) -> u64 {
    let r = server.get(&format!("/hls/{STREAM}/index.m3u8"));
    assert_eq!(r.status, 200, "playlist: {}", r.text());
    let text = r.text();
    let first: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("EXT-X-MEDIA-SEQUENCE");
    let segments = text.lines().filter(|l| l.starts_with("#EXTINF")).count() as u64;
    first + segments
}

/// Everything a viewer and an operator see still works, and the server's
/// wall clock is `offset` seconds from ours.
fn check_after_step(server: &mut Server, viewer: &RtcSession, offset: i64, what: &str) {
    let from = viewer.video_packets();
    wait_until(
        &format!("video at the viewer {what}"),
        Duration::from_secs(15),
        || (viewer.video_packets() >= from + 300).then_some(()),
    );
    assert!(!viewer.ended(), "the viewer's session ended {what}");
    // A new viewer joins (and logs a line, whose timestamp shows the step).
    let log_from = server.log_len();
    let newcomer = rtc_client::start(&server.whep_url(STREAM), None, false, Outgoing::Nothing)
        .unwrap_or_else(|r| panic!("WHEP {what}: {} {}", r.status, r.text()));
    wait_until(
        &format!("video at a new viewer {what}"),
        Duration::from_secs(15),
        || (newcomer.video_packets() > 100).then_some(()),
    );
    let line = server.wait_for_log_from(log_from, "viewer connected", Duration::from_secs(10));
    let skew = log_time(&line).expect("a log timestamp") - now_unix();
    println!(
        "{what}: server clock {skew:+} s from ours; log: {}",
        truncate(&line, 120)
    );
    assert!(
        (skew - offset).abs() <= 5,
        "the server's clock is {skew:+} s from ours, not {offset:+} s: the step did not take"
    );
    let s = server.api_stream(STREAM).expect("stream API");
    assert_eq!(s["live"], true, "the stream is offline {what}: {s}");
    let fps = s["video"]["fps"].as_f64().unwrap_or(0.0);
    assert!(
        (25.0..=35.0).contains(&fps),
        "measured fps {fps} {what}: {s}"
    );
    // LL-HLS: new segments, and a blocking reload for the next one answers.
    let msn = hls_msn(server);
    let r = server.get(&format!("/hls/{STREAM}/index.m3u8?_HLS_msn={}", msn + 1));
    assert_eq!(r.status, 200, "blocking reload {what}: {}", r.text());
    assert!(
        hls_msn(server) > msn,
        "LL-HLS stopped publishing segments {what}"
    );
    server.assert_healthy(what);
    drop(newcomer);
}

#[test]
fn wall_clock_steps_change_nothing_that_runs() {
    let _g = serial();
    let clock = SteppedClock::new();
    let mut server = Server::start_with(ServerOpts {
        env: clock.env(),
        ..ServerOpts::default()
    });
    let _ffmpeg = Publisher::ffmpeg(&server.publish_url(STREAM), FfmpegOpts::small());
    server.wait_live(STREAM, LIVE_TIMEOUT);
    let viewer = rtc_client::start(&server.whep_url(STREAM), None, false, Outgoing::Nothing)
        .unwrap_or_else(|r| panic!("WHEP: {} {}", r.status, r.text()));
    check_after_step(&mut server, &viewer, 0, "before any step");

    clock.set_offset_secs(3600);
    check_after_step(&mut server, &viewer, 3600, "after a step 1 h forward");
    clock.set_offset_secs(-3600);
    check_after_step(&mut server, &viewer, -3600, "after a step 2 h back");

    let panics: Vec<String> = server
        .log_lines()
        .into_iter()
        .filter(|l| l.contains("panicked"))
        .collect();
    assert!(panics.is_empty(), "panics: {panics:?}");
}
