//! Debian's stock firefox-esr (no OpenH264: no H.264 over WebRTC), headless,
//! driven over Marionette by tests/py/firefox_page.py, against the real binary:
//! the watch page of an H.264 RTMP stream plays through LL-HLS within 5 s and says
//! why; a WHIP VP8 stream plays in the same Firefox over WebRTC; ICE that
//! cannot succeed on VP9 and AV1 WHIP streams falls back to LL-HLS (vp09/av01);
//! and on a VP8 stream (no LL-HLS: no browser's MSE takes VP8 in MP4) the page
//! says in plain words why there is no picture; a network cut under a VP8
//! WebRTC picture is noticed by the player and mended by an ICE restart.
//! Needs `firefox-esr` (scripts/test.sh installs it) and marionette-driver in the
//! test Python (tests/py/requirements.txt).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::impair::{self, Impairment};
use common::publishers::*;
use common::*;
use serde_json::{Value, json};

const FIREFOX_TIMEOUT: Duration = Duration::from_secs(180);

fn firefox(server: &Server, visits: &[Value]) -> JsonTool {
    let mut cmd = Command::new(python());
    cmd.arg(manifest_dir().join("tests/py/firefox_page.py"))
        .arg("--base")
        .arg(server.base_url())
        .env("PYTHONUNBUFFERED", "1");
    for v in visits {
        cmd.arg("--visit").arg(v.to_string());
    }
    JsonTool::spawn("firefox_page.py", cmd)
}

/// aiortc publishing VP8 (what stock Firefox decodes over WebRTC) to STREAM2
/// over WHIP, connected.
fn vp8_publisher(server: &Server) -> JsonTool {
    let whip = aiortc_publisher(
        &server.whip_url(STREAM2),
        WhipOpts {
            codec: "VP8",
            key: Some(server.key(STREAM2).to_string()),
            ..WhipOpts::default()
        },
    );
    whip.wait_for("the VP8 publisher connected", MEDIA_TIMEOUT, |v| {
        v["type"] == "event" && v["state"] == "connected"
    });
    whip
}

#[test]
fn stock_firefox_plays_h264_over_ll_hls_and_vp8_over_webrtc() {
    let _serial = serial();
    let server = Server::start("");
    let _rtmp = Publisher::ffmpeg(&server.publish_url(STREAM), FfmpegOpts::default());
    let _whip = vp8_publisher(&server);
    server.wait_live(STREAM, LIVE_TIMEOUT);
    server.wait_live(STREAM2, LIVE_TIMEOUT);
    let mut tool = firefox(
        &server,
        &[
            json!({
                "name": "H.264 over LL-HLS", "path": format!("/watch/{STREAM}"), "mode": "hls",
                "within_s": 5, "width": 1280, "height": 720,
                "label": "^LL-HLS: this browser can't play H\\.264 over WebRTC$",
            }),
            json!({
                "name": "VP8 over WebRTC", "path": format!("/watch/{STREAM2}"), "mode": "webrtc",
                "within_s": 5, "width": 640, "height": 360, "label": "^WebRTC$",
            }),
        ],
    );
    let r = finish_scenario(&mut tool, "stock Firefox", FIREFOX_TIMEOUT);
    for v in r["visits"].as_array().unwrap() {
        println!(
            "{}: playing after {} ms: {}",
            v["name"], v["after_ms"], v["stats"]
        );
    }
}

/// ICE that cannot succeed in Firefox: with `media.peerconnection.ice.loopback`
/// off, Firefox drops every candidate of the loopback server (UDP and TCP), so
/// ICE fails before the first frame (Firefox gives up after ~5 s, before the
/// page's connect timer). Stock Firefox decodes only VP8/VP9/AV1 over WebRTC;
/// VP9 and AV1 have LL-HLS (`firefox_ice_failure_falls_back_to_ll_hls_on_vp9_and_av1`),
/// VP8 has none (no browser's MSE takes VP8 in MP4), so here the page cannot
/// fall back: it must say the network seems to block live video, never
/// "Connection lost. Reconnecting…" (the old endless loop), and the viewer
/// count must not flap.
#[test]
fn firefox_ice_failure_is_counted_before_the_first_frame() {
    let _serial = serial();
    let server = Server::start("");
    let _whip = vp8_publisher(&server);
    server.wait_live(STREAM2, LIVE_TIMEOUT);
    let mut tool = firefox(
        &server,
        &[json!({
            "name": "VP8, ICE cannot succeed", "path": format!("/watch/{STREAM2}"),
            "prefs": {"media.peerconnection.ice.loopback": false},
            "status": "network seems to block live video", "within_s": 12, "hold_s": 20,
            "never_status": "Connection lost|Reconnecting",
        })],
    );
    let r = finish_scenario(&mut tool, "Firefox, ICE cannot succeed", FIREFOX_TIMEOUT);
    println!("{}", r["visits"]);
}

/// ICE that cannot succeed in Firefox (as above: loopback candidates dropped,
/// UDP and TCP) on the watch pages of VP9 and AV1 WHIP streams, which stock
/// Firefox would play over WebRTC: each page gives up on WebRTC before its
/// first frame and plays LL-HLS (vp09 / av01 in fMP4) within 12 s of opening,
/// at the publisher's 640x360, says why, keeps playing with a viewer count
/// that never changed (AV1: for 22 s, through a background WebRTC try that
/// fails unseen), and logs no console error. Then, for VP9, the network heals
/// (the pref back on): the player's background WebRTC try connects and the
/// page plays over WebRTC again.
///
/// The publishers are Chromium's own WHIP client with its fake camera
/// (`tests/browser/publish.mjs`, codec chosen by setCodecPreferences): a real
/// browser encoder and RTP packetizer (VP9 payload descriptors, AV1
/// aggregation headers and OBU fragments), which aiortc (VP8/H.264 only)
/// cannot provide.
#[test]
fn firefox_ice_failure_falls_back_to_ll_hls_on_vp9_and_av1() {
    let _serial = serial();
    let server = Server::start("");
    let base = server.base_url();
    let mut publishers = Vec::new();
    let mut visits = Vec::new();
    for (codec, stream) in [("VP9", STREAM), ("AV1", STREAM2)] {
        let key = server.key(stream).to_string();
        let p = chromium_publisher(&base, stream, Some(&key), Some(codec), None);
        let sample = p.wait_for(&format!("{codec} frames"), MEDIA_TIMEOUT, |v| {
            v["type"] == "sample" && v["video"]["framesEncoded"].as_u64().unwrap_or(0) > 10
        });
        assert_eq!(
            sample["video"]["codec"],
            format!("video/{codec}"),
            "{sample}"
        );
        server.wait_live(stream, LIVE_TIMEOUT);
        publishers.push(p);
        let mut visit = json!({
            "name": format!("{codec}, ICE cannot succeed"), "path": format!("/watch/{stream}"),
            "prefs": {"media.peerconnection.ice.loopback": false},
            "mode": "hls", "within_s": 12, "width": 640, "height": 360,
            "label": "^LL-HLS: WebRTC could not connect on this network$",
        });
        if codec == "VP9" {
            // The network heals: the player's background WebRTC try (15 s
            // after LL-HLS started) connects and WebRTC takes over.
            visit["hold_s"] = json!(8);
            visit["then"] = json!({
                "prefs": {"media.peerconnection.ice.loopback": true},
                "mode": "webrtc", "within_s": 40, "label": "^WebRTC$",
            });
        } else {
            // Long enough for a background WebRTC try to fail unseen.
            visit["hold_s"] = json!(22);
        }
        visits.push(visit);
    }
    let mut tool = firefox(&server, &visits);
    let r = finish_scenario(
        &mut tool,
        "Firefox, ICE cannot succeed, VP9/AV1",
        FIREFOX_TIMEOUT,
    );
    for v in r["visits"].as_array().unwrap() {
        println!(
            "{}: LL-HLS playing after {} ms, viewers shown {}: {}; switched back {}",
            v["name"], v["after_ms"], v["viewers"], v["stats"], v["switched"]
        );
    }
    // The AV1 page's WHEP offers: the first attempt and at least one
    // background try while it held LL-HLS (both failed, unseen).
    let offers = server
        .log_lines()
        .iter()
        .filter(|l| {
            l.contains("whep viewer negotiated") && l.contains(&format!("stream={STREAM2}"))
        })
        .count();
    assert!(offers >= 2, "AV1 page WHEP offers: {offers}");
    println!("AV1 page: {offers} WHEP offers (first attempt + background tries)");
    for mut p in publishers {
        p.stop(MEDIA_TIMEOUT);
    }
}

/// A network cut under Firefox's WebRTC picture: the watch page of a WHIP VP8
/// stream plays through the test's relay (`common::impair`; the publisher's
/// own path through it is spared), and the test black-holes the page's path
/// until the player has started its ICE restart. The player must notice the
/// silence from its own counters (`trigger` `quiet`: Firefox's getStats
/// names the selected pair differently from Chromium's, `lib/pathwatch.js`),
/// restart ICE on the same PeerConnection (one WHEP POST, one PATCH, the
/// server's "WHEP viewer restarted ICE" for that session) and decode 60
/// more frames.
#[test]
fn firefox_restarts_ice_after_a_network_cut() {
    let _serial = serial();
    let server = Server::start_with(impair::advertising_relay());
    let relay = impair::in_front_of(&server, Impairment::CLEAR);
    let _whip = vp8_publisher(&server);
    server.wait_live(STREAM2, LIVE_TIMEOUT);
    // The publisher reached the server through the relay too: its path stays.
    let publisher = relay.clients();
    for client in &publisher {
        relay.spare(*client);
    }
    let mut tool = firefox(
        &server,
        &[json!({
            "name": "VP8, network cut", "path": format!("/watch/{STREAM2}"), "mode": "webrtc",
            "within_s": 5, "label": "^WebRTC$",
            "ice_restart": {"within_s": 15, "trigger": "quiet"},
        })],
    );
    tool.wait_for("the page playing", FIREFOX_TIMEOUT, |v| {
        v["type"] == "playing"
    });
    relay.black_hole(true);
    let cut = Instant::now();
    let started = tool.wait_for("the restart", Duration::from_secs(30), |v| {
        v["type"] == "restart_started"
    });
    relay.black_hole(false);
    println!(
        "restart started {:.1?} after the cut ({started}); publisher paths spared {publisher:?}; relay: {}",
        cut.elapsed(),
        relay.summary()
    );
    let r = finish_scenario(&mut tool, "Firefox, network cut", FIREFOX_TIMEOUT);
    println!("{}", r["visits"][0]["restart"]);
    server.wait_whep_restart_of_the_only_session();
}

/// A publisher that stalls with its session open (aiortc's media paused, ICE
/// and RTCP going on), under Firefox's WebRTC picture: the player notices the
/// silence and restarts ICE once; the path is clear, so the restart must be
/// done without media, the page saying it waits for the stream, and when the
/// publisher goes on, after longer than the player's 10 s frame-stall check,
/// the same PeerConnection plays (one WHEP POST, one PATCH): a stall must
/// not cost Firefox viewers a new session, nor send them to LL-HLS.
#[test]
fn firefox_keeps_its_session_while_the_publisher_stalls() {
    let _serial = serial();
    let server = Server::start("");
    let mut whip = vp8_publisher(&server);
    server.wait_live(STREAM2, LIVE_TIMEOUT);
    let mut tool = firefox(
        &server,
        &[json!({
            "name": "VP8, publisher stalls", "path": format!("/watch/{STREAM2}"), "mode": "webrtc",
            "within_s": 5, "label": "^WebRTC$",
            "ice_restart": {"within_s": 15, "trigger": "quiet", "stall": true},
        })],
    );
    tool.wait_for("the page playing", FIREFOX_TIMEOUT, |v| {
        v["type"] == "playing"
    });
    whip.send_line("pause");
    let paused = Instant::now();
    let done = tool.wait_for("the restart done", Duration::from_secs(30), |v| {
        v["type"] == "restart_done"
    });
    println!(
        "the restart was done {:.1?} after the publisher paused: {}; on the way (ms, state, path, restart): {}",
        paused.elapsed(),
        done["stats"]["counts"],
        done["stats"]["samples"]
    );
    // The stall goes on past the player's 10 s frame-stall check (a fault's
    // length, not a wait for a condition).
    std::thread::sleep(Duration::from_secs(11));
    whip.send_line("resume");
    let r = finish_scenario(&mut tool, "Firefox, publisher stalls", FIREFOX_TIMEOUT);
    println!("{}", r["visits"][0]["restart"]);
    let offers = server.whep_negotiated();
    assert_eq!(offers.len(), 1, "WHEP sessions negotiated: {offers:?}");
}
