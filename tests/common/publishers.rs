//! WebRTC publishers and OvenPlayer for the WHIP/OME tests: the aiortc WHIP
//! publisher (`tests/py/whip_publisher.py`), headless Chromium publishing its
//! fake camera over WHIP (`tests/browser/publish.mjs`) and OvenPlayer pages
//! (`tests/browser/ovenplayer.mjs`), all JSON-line tools.

use std::process::Command;

use serde_json::Value;

use super::{JsonTool, manifest_dir, node_dir, python};

#[derive(Clone, Debug)]
pub struct WhipOpts {
    /// "H264" or "VP8".
    pub codec: &'static str,
    /// Sent as `Authorization: Bearer`.
    pub key: Option<String>,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Publish this long, then DELETE; None: until [`JsonTool::stop`].
    pub duration_s: Option<f64>,
    /// (start, length) in seconds: no audio then, its timestamps jump over it.
    pub audio_hole_s: Option<(f64, f64)>,
}

impl Default for WhipOpts {
    fn default() -> Self {
        WhipOpts {
            codec: "H264",
            key: None,
            width: 640,
            height: 360,
            fps: 30,
            duration_s: None,
            audio_hole_s: None,
        }
    }
}

/// aiortc publishing a synthetic picture and a 440 Hz sine to `url` over WHIP.
pub fn aiortc_publisher(url: &str, o: WhipOpts) -> JsonTool {
    let mut cmd = Command::new(python());
    cmd.arg(manifest_dir().join("tests/py/whip_publisher.py"))
        .arg(url)
        .arg("--video-codec")
        .arg(o.codec)
        .arg("--width")
        .arg(o.width.to_string())
        .arg("--height")
        .arg(o.height.to_string())
        .arg("--fps")
        .arg(o.fps.to_string())
        .arg("--stdin-control")
        .env("PYTHONUNBUFFERED", "1");
    if let Some(k) = &o.key {
        cmd.arg("--key").arg(k);
    }
    if let Some(d) = o.duration_s {
        cmd.arg("--duration").arg(d.to_string());
    }
    if let Some((start, len)) = o.audio_hole_s {
        cmd.arg("--audio-hole").arg(format!("{start}:{len}"));
    }
    JsonTool::spawn("aiortc WHIP publisher", cmd)
}

/// Headless Chromium publishing its fake camera and microphone over WHIP to
/// `base` + `path` (default `/whip/{stream}`).
pub fn chromium_publisher(
    base: &str,
    stream: &str,
    key: Option<&str>,
    codec: Option<&str>,
    path: Option<&str>,
) -> JsonTool {
    let dir = node_dir();
    let mut cmd =
        Command::new(std::env::var_os("ROOMCAST_TEST_NODE").unwrap_or_else(|| "node".into()));
    cmd.current_dir(&dir)
        .arg(dir.join("publish.mjs"))
        .arg("--base")
        .arg(base)
        .arg("--stream")
        .arg(stream)
        .arg("--stdin-control");
    if let Some(k) = key {
        cmd.arg("--key").arg(k);
    }
    if let Some(c) = codec {
        cmd.arg("--codec").arg(c);
    }
    if let Some(p) = path {
        cmd.arg("--path").arg(p);
    }
    JsonTool::spawn("chromium WHIP publisher", cmd)
}

/// OvenPlayer in headless Chromium, one player per URL
/// (`ws://HOST:PORT/{app}/{stream}`), until each decoded `frames` frames.
pub fn ovenplayer(urls: &[String], frames: u64, timeout_s: u64) -> JsonTool {
    let dir = node_dir();
    assert!(
        dir.join("node_modules/ovenplayer/dist/ovenplayer.js")
            .exists(),
        "{}/node_modules/ovenplayer not found: run ./scripts/test.sh (npm ci in tests/browser)",
        dir.display()
    );
    let mut cmd =
        Command::new(std::env::var_os("ROOMCAST_TEST_NODE").unwrap_or_else(|| "node".into()));
    cmd.current_dir(&dir)
        .arg(dir.join("ovenplayer.mjs"))
        .arg("--frames")
        .arg(frames.to_string())
        .arg("--timeout")
        .arg(timeout_s.to_string())
        .arg("--stdin-control");
    for u in urls {
        cmd.arg("--url").arg(u);
    }
    JsonTool::spawn("OvenPlayer", cmd)
}

/// The `a=candidate` values of a `whip` line.
pub fn answer_candidates(whip: &Value) -> Vec<String> {
    whip["answer_candidates"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A sendonly offer with the given rtpmap lines in its video and audio sections.
pub fn whip_offer(video: &[&str], audio: &[&str]) -> String {
    let ice = "a=ice-ufrag:Rc8x\r\na=ice-pwd:9Ja0mXb1vYbC2m5q0J6UoZ8d\r\n\
               a=fingerprint:sha-256 D6:68:1A:13:E8:DA:23:56:A6:B7:9D:E4:09:AB:31:E3:3C:63:96:D3:ED:95:40:DE:3B:56:06:7C:B1:23:B1:50\r\n\
               a=setup:actpass\r\n";
    let section = |kind: &str, mid: u32, maps: &[&str]| {
        let pts: Vec<&str> = maps.iter().map(|m| m.split(' ').next().unwrap()).collect();
        let mut s = format!(
            "m={kind} 9 UDP/TLS/RTP/SAVPF {}\r\nc=IN IP4 0.0.0.0\r\n{ice}a=mid:{mid}\r\na=sendonly\r\na=rtcp-mux\r\n",
            pts.join(" ")
        );
        for m in maps {
            s.push_str(&format!("a=rtpmap:{m}\r\n"));
        }
        s
    };
    format!(
        "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n{}{}",
        section("video", 0, video),
        section("audio", 1, audio)
    )
}
