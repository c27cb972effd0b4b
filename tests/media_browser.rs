//! RTMP in (ffmpeg) → WebRTC out (WHEP), played by headless Chromium
//! (tests/browser/play.mjs): over UDP, over ICE-TCP only, with B-frames at the
//! source, and across a publisher restart.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Transport ("udp"/"tcp") of an `a=candidate:` value.
fn candidate_transport(c: &str) -> String {
    c.split_whitespace()
        .nth(2)
        .unwrap_or("")
        .to_ascii_lowercase()
}

fn candidate_port(c: &str) -> Option<u16> {
    c.split_whitespace().nth(5)?.parse().ok()
}

/// Samples of a finished player run.
fn samples(player: &JsonTool) -> Vec<Value> {
    player.events_of("sample")
}

/// framesDecoded never goes down and rose in at least `min_rises` samples.
fn assert_frames_rising(samples: &[Value], min_rises: usize, what: &str) {
    let frames: Vec<u64> = samples.iter().map(frames_decoded).collect();
    let mut rises = 0;
    for w in frames.windows(2) {
        assert!(w[1] >= w[0], "{what}: framesDecoded went down: {frames:?}");
        if w[1] > w[0] {
            rises += 1;
        }
    }
    assert!(
        rises >= min_rises,
        "{what}: framesDecoded rose in {rises} samples only (want {min_rises}): {frames:?}"
    );
}

/// Plays the live stream until 90 frames are decoded and checks what every
/// playback must show. Returns the player's result and whep lines.
fn play_and_check(server: &Server, what: &str) -> (Value, Value, Vec<Value>) {
    let mut player = chromium_player(server, BrowserOpts::default());
    let whep = player.wait_for("the WHEP answer", MEDIA_TIMEOUT, |v| v["type"] == "whep");
    let r = player.result(MEDIA_TIMEOUT + Duration::from_secs(30));
    println!("{what}: whep {whep}");
    println!(
        "{what}: first frame {} ms (rVFC), first decoded {} ms; result {}",
        r["first_frame_ms"], r["first_decoded_ms"], r
    );
    assert_eq!(
        r["ok"], true,
        "{what}: Chromium did not decode 90 frames: {}",
        r["reason"]
    );
    assert_eq!(whep["status"], 201, "{what}: {whep}");
    assert_eq!(
        whep["ice_lite"], true,
        "{what}: the answer should be ICE-lite: {whep}"
    );
    let samples = samples(&player);
    assert_frames_rising(&samples, 3, what);
    let last = &r["last_sample"];
    assert!(frames_decoded(last) >= 90, "{what}: {last}");
    assert!(
        audio_packets(last) >= 50,
        "{what}: audio packetsReceived {} (want >= 50): {last}",
        audio_packets(last)
    );
    assert_eq!(
        norm(last["video"]["codec"].as_str().unwrap_or("")),
        "videoh264",
        "{what}: {last}"
    );
    assert_eq!(
        norm(last["audio"]["codec"].as_str().unwrap_or("")),
        "audioopus",
        "{what}: {last}"
    );
    assert_eq!(last["video"]["frameWidth"], 1280, "{what}: {last}");
    assert_eq!(last["video"]["frameHeight"], 720, "{what}: {last}");
    assert_eq!(last["connectionState"], "connected", "{what}: {last}");
    let console_errors = r["console_errors"].as_array().cloned().unwrap_or_default();
    assert!(
        console_errors.is_empty(),
        "{what}: console errors {console_errors:?}"
    );
    let ttff = r["first_decoded_ms"].as_f64().unwrap_or(f64::MAX);
    assert!(
        ttff < 3000.0,
        "{what}: first frame decoded {ttff} ms after the WHEP POST (a joining viewer should get the cached keyframe at once)"
    );
    (r, whep, samples)
}

#[test]
fn chromium_plays_over_udp() {
    let _serial = serial();
    let mut server = Server::start("");
    let _ffmpeg = Publisher::ffmpeg(&server.publish_url(STREAM), FfmpegOpts::default());
    server.wait_live(STREAM, LIVE_TIMEOUT);

    let (r, whep, _) = play_and_check(&server, "UDP");
    let pair = &r["last_sample"]["pair"];
    assert_eq!(pair["local"]["protocol"], "udp", "selected pair: {pair}");
    assert_eq!(pair["remote"]["protocol"], "udp", "selected pair: {pair}");
    // One UDP port for every peer: the one the server logged.
    let udp = server
        .webrtc_udp
        .expect("a 'listening service=webrtc-udp' log line");
    assert_eq!(pair["remote"]["port"], udp.port(), "selected pair: {pair}");
    let cands: Vec<String> = whep["answer_candidates"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        cands
            .iter()
            .any(|c| candidate_transport(c) == "udp" && candidate_port(c) == Some(udp.port())),
        "the answer should offer the UDP port {}: {cands:?}",
        udp.port()
    );
    server.assert_healthy("after Chromium played over UDP");
}

#[test]
fn chromium_plays_over_ice_tcp_when_tcp_forced() {
    let _serial = serial();
    let mut server = Server::start_with(ServerOpts {
        tcp_force: true,
        ..ServerOpts::default()
    });
    let _ffmpeg = Publisher::ffmpeg(&server.publish_url(STREAM), FfmpegOpts::default());
    server.wait_live(STREAM, LIVE_TIMEOUT);

    let (r, whep, _) = play_and_check(&server, "ICE-TCP");
    let cands: Vec<String> = whep["answer_candidates"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    assert!(!cands.is_empty(), "no candidates in the answer: {whep}");
    assert!(
        cands.iter().all(|c| candidate_transport(c) == "tcp"),
        "tcp_force: the answer should offer TCP candidates only: {cands:?}"
    );
    let pair = &r["last_sample"]["pair"];
    assert_eq!(pair["local"]["protocol"], "tcp", "selected pair: {pair}");
    assert_eq!(pair["remote"]["protocol"], "tcp", "selected pair: {pair}");
    let tcp = server
        .webrtc_tcp
        .expect("a 'listening service=webrtc-tcp' log line");
    assert_eq!(pair["remote"]["port"], tcp.port(), "selected pair: {pair}");
    server.assert_healthy("after Chromium played over ICE-TCP");
}

#[test]
fn bframes_are_reported_and_chromium_still_decodes() {
    let _serial = serial();
    let mut server = Server::start("");
    let _ffmpeg = Publisher::ffmpeg(
        &server.publish_url(STREAM),
        FfmpegOpts {
            bframes: 2,
            ..FfmpegOpts::default()
        },
    );
    server.wait_live(STREAM, LIVE_TIMEOUT);
    let v = wait_until(
        "the API to report video.bframes = true",
        Duration::from_secs(30),
        || {
            server
                .api_stream(STREAM)
                .filter(|v| v["video"]["bframes"] == true)
        },
    );
    println!("API with a B-frame source: {v}");
    // The log names the problem and the fix.
    let line = server.wait_for_log("bframes=0", Duration::from_secs(10));
    println!("B-frame log line: {line}");

    let mut player = chromium_player(
        &server,
        BrowserOpts {
            frames: Some(60),
            ..BrowserOpts::default()
        },
    );
    let r = player.result(MEDIA_TIMEOUT + Duration::from_secs(30));
    println!("B-frames: result {r}");
    assert_eq!(
        r["ok"], true,
        "Chromium did not decode 60 frames from a B-frame source: {}",
        r["reason"]
    );
    let samples = samples(&player);
    assert_frames_rising(&samples, 3, "B-frames");
    let last = &r["last_sample"];
    // Chromium asks for a keyframe (PLI) when it cannot decode a frame: a broken
    // picture shows as PLIs. Allow one at start-up.
    let pli = last["video"]["pliCount"].as_u64().unwrap_or(0);
    assert!(
        pli <= 2,
        "pliCount {pli}: Chromium hit decoder errors: {last}"
    );
    let console_errors = r["console_errors"].as_array().cloned().unwrap_or_default();
    assert!(
        console_errors.is_empty(),
        "console errors {console_errors:?}"
    );
    assert!(
        last["video"]["keyFramesDecoded"].as_u64().unwrap_or(0) >= 1,
        "no keyframe decoded: {last}"
    );
    server.assert_healthy("after the B-frame stream");
}

#[test]
fn republish_within_3s_keeps_the_viewer_connected() {
    let _serial = serial();
    let mut server = Server::start("");
    let mut first = Publisher::ffmpeg(&server.publish_url(STREAM), FfmpegOpts::default());
    server.wait_live(STREAM, LIVE_TIMEOUT);

    let mut player = chromium_player(
        &server,
        BrowserOpts {
            frames: None,
            duration_s: Some(180.0),
            timeout_s: 180.0,
            ..BrowserOpts::default()
        },
    );
    player.wait_for("60 frames from the first publisher", MEDIA_TIMEOUT, |v| {
        v["type"] == "sample" && v["connectionState"] == "connected" && frames_decoded(v) >= 60
    });

    // ffmpeg quits; a new one publishes right away (as a streamer restarting OBS).
    let stopped = first.stop(Duration::from_secs(10));
    let stopped_at = Instant::now();
    assert!(stopped.is_some(), "the first ffmpeg did not exit");
    let cursor = player.cursor();
    let at_switch = player
        .last_of("sample")
        .map(|s| frames_decoded(&s))
        .unwrap_or(0);
    let mut second = Publisher::ffmpeg(&server.publish_url(STREAM), FfmpegOpts::default());
    let gap = stopped_at.elapsed();
    assert!(
        gap < Duration::from_secs(3),
        "republished {gap:?} after the stop"
    );

    let after = player.wait_for_from(
        cursor,
        "frames from the second publisher",
        MEDIA_TIMEOUT,
        |v| v["type"] == "sample" && frames_decoded(v) >= at_switch + 60,
    );
    println!(
        "republish: {at_switch} frames before the switch, {} after; sample {after}",
        frames_decoded(&after)
    );
    // Still one viewer, on the same PeerConnection.
    let api = server.api_stream(STREAM).expect("stream API");
    assert_eq!(api["live"], true, "{api}");
    assert_eq!(api["viewers"], 1, "{api}");

    // Again, abruptly: ffmpeg killed (no unpublish; the TCP connection just
    // drops, as when OBS crashes), and a third publisher right away.
    let cursor = player.cursor();
    let at_kill = player
        .last_of("sample")
        .map(|s| frames_decoded(&s))
        .unwrap_or(0);
    second.kill();
    let _third = Publisher::ffmpeg(&server.publish_url(STREAM), FfmpegOpts::default());
    player.wait_for_from(
        cursor,
        "frames from the third publisher",
        MEDIA_TIMEOUT,
        |v| v["type"] == "sample" && frames_decoded(v) >= at_kill + 60,
    );

    assert_connected_throughout(&mut player, "republish");
    server.assert_healthy("after the republish");
}

/// Stops the player and asserts its PeerConnection went connecting →
/// connected and never left "connected", with frames rising.
fn assert_connected_throughout(player: &mut JsonTool, what: &str) {
    let r = player.stop(Duration::from_secs(30));
    let states: Vec<String> = player
        .events()
        .iter()
        .filter(|v| v["type"] == "event" && v["name"] == "connectionstatechange")
        .filter_map(|v| v["state"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        states,
        ["connecting", "connected"],
        "{what}: the PeerConnection should stay connected"
    );
    let samples = samples(player);
    let first_connected = samples
        .iter()
        .position(|s| s["connectionState"] == "connected")
        .expect("a connected sample");
    for s in &samples[first_connected..] {
        assert_eq!(
            s["connectionState"], "connected",
            "{what}: left 'connected': {s}"
        );
    }
    assert_frames_rising(&samples, 6, what);
    assert_eq!(r["ok"], true, "{what}: {r}");
}

#[test]
fn second_publisher_takes_over_and_the_viewer_continues() {
    let _serial = serial();
    let mut server = Server::start("");
    let mut first = Publisher::ffmpeg(&server.publish_url(STREAM), FfmpegOpts::default());
    server.wait_live(STREAM, LIVE_TIMEOUT);
    let mut player = chromium_player(
        &server,
        BrowserOpts {
            frames: None,
            duration_s: Some(180.0),
            timeout_s: 180.0,
            ..BrowserOpts::default()
        },
    );
    player.wait_for("60 frames from the first publisher", MEDIA_TIMEOUT, |v| {
        v["type"] == "sample" && v["connectionState"] == "connected" && frames_decoded(v) >= 60
    });

    // A second authenticated publisher while the first still sends. The
    // frames are counted from its takeover: counted from its launch, the
    // first publisher's alone could make them while ffmpeg starts.
    let log_from = server.log_len();
    let _second = Publisher::ffmpeg(&server.publish_url(STREAM), FfmpegOpts::default());
    server.wait_for_log_from(
        log_from,
        "new publisher takes the stream over",
        MEDIA_TIMEOUT,
    );
    let cursor = player.cursor();
    let at_takeover = player
        .last_of("sample")
        .map(|s| frames_decoded(&s))
        .unwrap_or(0);
    player.wait_for_from(cursor, "frames after the takeover", MEDIA_TIMEOUT, |v| {
        v["type"] == "sample" && frames_decoded(v) >= at_takeover + 60
    });
    // The first publisher goes away (if the server did not already drop it):
    // that must not end the stream the second one now feeds.
    println!(
        "takeover: the first ffmpeg had {}",
        match first.try_status() {
            Some(st) => format!("exited ({st}) on its own"),
            None => "not been disconnected; killing it".to_string(),
        }
    );
    first.kill();
    let cursor = player.cursor();
    let at_kill = player
        .last_of("sample")
        .map(|s| frames_decoded(&s))
        .unwrap_or(0);
    player.wait_for_from(
        cursor,
        "frames from the second publisher alone",
        MEDIA_TIMEOUT,
        |v| v["type"] == "sample" && frames_decoded(v) >= at_kill + 60,
    );
    let api = server.api_stream(STREAM).expect("stream API");
    assert_eq!(api["live"], true, "{api}");
    assert_eq!(api["viewers"], 1, "{api}");

    assert_connected_throughout(&mut player, "takeover");
    server.assert_healthy("after the takeover");
}

/// Chromium restarts ICE the way a WHEP player does (`pc.restartIce()`, its
/// new credentials PATCHed with `If-Match: *`, the server's new ones put in
/// its remote description): video goes on, over a pair of the new
/// credentials, on the same PeerConnection and DTLS session.
#[test]
fn chromium_restarts_ice_and_keeps_playing() {
    let _serial = serial();
    let mut server = Server::start("");
    let _publisher = Publisher::ffmpeg(&server.publish_url(STREAM), FfmpegOpts::default());
    server.wait_live(STREAM, LIVE_TIMEOUT);
    let mut player = chromium_player(
        &server,
        BrowserOpts {
            frames: None,
            duration_s: Some(60.0),
            timeout_s: 60.0,
            ..BrowserOpts::default()
        },
    );
    player.wait_for("30 frames", MEDIA_TIMEOUT, |v| {
        v["type"] == "sample" && v["connectionState"] == "connected" && frames_decoded(v) >= 30
    });
    let cursor = player.cursor();
    let before = player
        .last_of("sample")
        .map(|s| frames_decoded(&s))
        .unwrap_or(0);
    player.send_line("restart-ice");
    let r = player.wait_for_from(cursor, "the ICE restart", Duration::from_secs(15), |v| {
        v["type"] == "ice_restart"
    });
    println!("ICE restart: {r}");
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["content_type"], "application/trickle-ice-sdpfrag", "{r}");
    let ufrag = r["server_ufrag"]
        .as_str()
        .expect("the server's new ufrag")
        .to_string();
    let after = player.wait_for_from(
        cursor,
        "60 more frames over the new credentials",
        MEDIA_TIMEOUT,
        |v| {
            v["type"] == "sample"
                && v["pair"]["remote"]["usernameFragment"] == ufrag.as_str()
                && frames_decoded(v) >= before + 60
        },
    );
    println!("after the restart: {after}");
    server.wait_for_log("WHEP viewer restarted ICE", Duration::from_secs(5));
    assert_connected_throughout(&mut player, "ICE restart");
    server.assert_healthy("after an ICE restart");
}
