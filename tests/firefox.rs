//! Debian's stock firefox-esr (no OpenH264: no H.264 over WebRTC), headless,
//! driven over Marionette by tests/py/firefox_page.py, against the real binary:
//! the watch page of an H.264 RTMP stream plays through LL-HLS within 5 s and says
//! why; a WHIP VP8 stream plays in the same Firefox over WebRTC; and an ICE
//! failure before the first frame is counted as such.
//! Needs `firefox-esr` (scripts/test.sh installs it) and marionette-driver in the
//! test Python (tests/py/requirements.txt).

mod common;

use std::process::Command;
use std::time::Duration;

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

#[test]
fn stock_firefox_plays_h264_over_ll_hls_and_vp8_over_webrtc() {
    let _serial = serial();
    let server = Server::start("");
    let _rtmp = Publisher::ffmpeg(&server.publish_url(STREAM), FfmpegOpts::default());
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
/// page's connect timer). Stock Firefox decodes only VP8/VP9/AV1 over WebRTC,
/// which roomcast's LL-HLS does not carry, so the page cannot fall back: it must
/// say the network seems to block live video, never "Connection lost.
/// Reconnecting…" (the old endless loop), and the viewer count must not flap.
#[test]
fn firefox_ice_failure_is_counted_before_the_first_frame() {
    let _serial = serial();
    let server = Server::start("");
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
