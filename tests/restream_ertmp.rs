//! Enhanced RTMP restreaming: Chromium publishes AV1 (and Opus) over WHIP.
//! ffmpeg 9 in listen mode (imageio-ffmpeg's static build), set with
//! `codecs = ["h264", "av1"]`, gets AV1 as Enhanced RTMP (`av01`) and AAC:
//! ffmpeg 9 decodes AV1 frames from what it recorded. Debian's ffmpeg 5.1 in
//! listen mode, with no `codecs` setting, is asked in `connect` with
//! `fourCcList`; its reply lists nothing, so it gets the per-destination
//! refusal in the API instead of a stream it cannot read.

mod common;

use std::time::Duration;

use common::publishers::chromium_publisher;
use common::restream::*;
use common::*;
use serde_json::Value;

const ERTMP_KEY: &str = "ertmp-dest-key-3a9c5e7b1d";
const LEGACY_KEY: &str = "legacy-dest-key-8b2d4f6a0c";

fn dest(server: &Server, label: &str) -> Value {
    let r = server.get(&format!("/api/v1/streams/{STREAM}/restream"));
    assert_eq!(r.status, 200, "{}", r.text());
    let v: Value = r.json().unwrap();
    v["destinations"]
        .as_array()
        .and_then(|a| a.iter().find(|d| d["label"] == label))
        .cloned()
        .unwrap_or_else(|| panic!("no destination {label} in {v}"))
}

fn wait_state(server: &Server, label: &str, state: &str, timeout: Duration) -> Value {
    wait_until(&format!("{label} {state}"), timeout, || {
        let d = dest(server, label);
        (d["state"] == state).then_some(d)
    })
}

#[test]
fn whip_av1_goes_over_enhanced_rtmp_where_accepted_and_is_refused_elsewhere() {
    let _g = serial();
    let ffmpeg9 = ffmpeg9();
    let mut ertmp = FfmpegListen::start_with(&ffmpeg9, ERTMP_KEY);
    let legacy = FfmpegListen::start(LEGACY_KEY);
    let server = Server::start_with(ServerOpts {
        streams: vec![(STREAM.to_string(), random_hex())],
        extra_toml: format!(
            "[[streams.restream]]\nlabel = \"ertmp\"\nurl = \"{}\"\nkey = \"{ERTMP_KEY}\"\ncodecs = [\"h264\", \"av1\"]\n\
             [[streams.restream]]\nlabel = \"legacy\"\nurl = \"{}\"\nkey = \"{LEGACY_KEY}\"\n",
            ertmp.url(),
            legacy.url()
        ),
        ..ServerOpts::default()
    });
    let mut publisher = chromium_publisher(
        &server.base_url(),
        STREAM,
        Some(server.key(STREAM)),
        Some("AV1"),
        None,
    );
    server.wait_live(STREAM, Duration::from_secs(60));

    let d = wait_state(&server, "legacy", "failed", Duration::from_secs(30));
    let reason = d["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("legacy needs H.264 and this stream is AV1")
            && reason.contains("lists no av01"),
        "{d}"
    );
    wait_state(&server, "ertmp", "live", Duration::from_secs(30));
    // ffmpeg writes as it receives: wait until what it has decodes to
    // 2 s of AV1 pictures (at Chromium's 30 fps).
    let decoded = poll_until(Duration::from_secs(60), || {
        decode_video(&ffmpeg9, &ertmp.out).is_ok_and(|(_, frames)| frames >= 60)
    });
    assert!(
        decoded,
        "ffmpeg 9 did not get 60 AV1 frames: {}\n{}",
        dest(&server, "ertmp"),
        ertmp.log.tail(30)
    );
    // Refused for this publisher: not asked again, not retried.
    let d = dest(&server, "legacy");
    assert_eq!(d["state"], "failed", "{d}");
    publisher.stop(Duration::from_secs(10));
    wait_state(&server, "ertmp", "idle", Duration::from_secs(15));
    ertmp.wait_finished(Duration::from_secs(15));
    let (codec, frames) = decode_video(&ffmpeg9, &ertmp.out).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(codec, "av1", "{}", ertmp.log.tail(20));
    assert!(frames >= 60, "{frames} frames decoded");
    let log = ertmp.log.tail(40);
    assert!(
        log.contains("Audio: aac"),
        "the Opus went as AAC beside the AV1: {log}"
    );
    for line in server.log_lines() {
        for key in [ERTMP_KEY, LEGACY_KEY] {
            assert!(!line.contains(key), "a destination key in the log: {line}");
        }
    }
    drop(legacy);
}
