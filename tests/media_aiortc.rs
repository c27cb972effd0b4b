//! RTMP in (ffmpeg) → WebRTC out (WHEP), watched by aiortc, an independent
//! WebRTC stack that decodes what it receives; and the stream API around it.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

fn as_u64(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

#[test]
fn aiortc_viewer_decodes_h264_video_and_opus_audio() {
    let _serial = serial();
    let mut server = Server::start("");
    let mut ffmpeg = Publisher::ffmpeg(&server.publish_url(STREAM), FfmpegOpts::default());
    server.wait_live(STREAM, LIVE_TIMEOUT);

    let mut viewer = aiortc_viewer(
        &server.whep_url(STREAM),
        ViewerOpts {
            frames: 150,
            audio_frames: 100,
            ..ViewerOpts::default()
        },
    );
    viewer.wait_for("a decoded video frame", MEDIA_TIMEOUT, |v| {
        v["type"] == "progress" && as_u64(&v["video_frames"]) > 0
    });
    let api = wait_until(
        "the API to count the viewer",
        Duration::from_secs(20),
        || {
            server
                .api_stream(STREAM)
                .filter(|v| as_u64(&v["viewers"]) >= 1)
        },
    );
    assert_eq!(api["viewers"], 1, "one viewer watches: {api}");

    // Someone else's DELETE and PATCH, on counter-like ids and on a random
    // one, end nothing: 404 whatever the id, and the viewer keeps decoding.
    let mut guesses: Vec<String> = (0..=5).map(|n| n.to_string()).collect();
    guesses.push(random_hex());
    for g in &guesses {
        let path = server.url(&format!("/whep/{STREAM}/{g}"));
        let r = common::http::request("DELETE", &path, &[], None).unwrap();
        assert_json_error(
            &r,
            404,
            &format!("DELETE /whep/{STREAM}/{g} without its secret"),
        );
        let r = common::http::request(
            "PATCH",
            &path,
            &[("Content-Type", "application/trickle-ice-sdpfrag")],
            Some(b"a=end-of-candidates"),
        )
        .unwrap();
        assert_json_error(
            &r,
            404,
            &format!("PATCH /whep/{STREAM}/{g} without its secret"),
        );
    }
    let api = server.api_stream(STREAM).expect("stream JSON");
    assert_eq!(
        api["viewers"], 1,
        "the guessed DELETEs ended nothing: {api}"
    );

    let r = viewer.result(MEDIA_TIMEOUT + Duration::from_secs(30));
    println!("aiortc viewer result: {r}");
    assert_eq!(
        r["ok"], true,
        "the aiortc viewer did not reach its goal: {r}"
    );

    // The WHEP answer, per the contract.
    assert_eq!(r["whep_status"], 201, "{r}");
    let location = r["location"].as_str().unwrap_or("");
    assert!(
        location.starts_with(&format!("/whep/{STREAM}/"))
            || location.contains(&format!("/whep/{STREAM}/")),
        "Location should name the session under /whep/{STREAM}/, got {location:?}"
    );
    let secret = location.rsplit('/').next().unwrap_or("");
    assert!(
        secret.len() >= 32 && secret.bytes().all(|b| b.is_ascii_hexdigit()),
        "the resource id should be 128 random bits, got {secret:?}"
    );
    assert!(
        r["etag"].as_str().is_some_and(|s| !s.is_empty()),
        "no ETag: {r}"
    );
    assert!(
        r["answer_content_type"]
            .as_str()
            .is_some_and(|s| s.starts_with("application/sdp")),
        "answer Content-Type: {r}"
    );
    assert_eq!(
        r["answer_ice_lite"], true,
        "the answer should be ICE-lite: {r}"
    );
    assert!(
        r["answer_candidates"]
            .as_array()
            .is_some_and(|c| !c.is_empty()),
        "the answer should carry its candidates (no trickle): {r}"
    );

    // Video: H.264 passthrough at the source's size, decoded.
    assert!(as_u64(&r["video_frames"]) >= 150, "{r}");
    assert_eq!(norm(r["video_codec"].as_str().unwrap_or("")), "h264", "{r}");
    assert_eq!(r["width"], 1280, "{r}");
    assert_eq!(r["height"], 720, "{r}");
    assert!(
        as_u64(&r["decode_errors"]) <= 2,
        "aiortc failed to decode {} frames: {}",
        r["decode_errors"],
        r["decode_error_samples"]
    );

    // Audio: AAC → Opus, decoded, and still the 440 Hz sine at the right
    // pitch (44.1 kHz played as 48 kHz would give 479 Hz).
    assert_eq!(norm(r["audio_codec"].as_str().unwrap_or("")), "opus", "{r}");
    assert!(as_u64(&r["audio_frames"]) >= 100, "{r}");
    let rms = r["audio_rms"].as_f64().unwrap_or(0.0);
    let freq = r["audio_freq_hz"].as_f64().unwrap_or(0.0);
    assert!(rms > 0.01, "decoded audio is silent (rms {rms}): {r}");
    assert!(
        (425.0..=455.0).contains(&freq),
        "decoded audio should be the 440 Hz sine, measured {freq} Hz: {r}"
    );

    // DELETE ended the session: the viewer count goes back to 0.
    assert!(
        matches!(as_u64(&r["delete_status"]), 200 | 204),
        "DELETE on the Location: {r}"
    );
    wait_until(
        "viewers back to 0 after DELETE",
        Duration::from_secs(20),
        || server.api_stream(STREAM).filter(|v| v["viewers"] == 0),
    );
    let again = common::http::request("DELETE", &server.url(location), &[], None).unwrap();
    assert_json_error(&again, 404, "a second DELETE on the Location");

    assert!(
        ffmpeg.try_status().is_none(),
        "ffmpeg stopped:\n{}",
        ffmpeg.log_tail(20)
    );
    server.assert_healthy("after the aiortc viewer");
    server.assert_no_key_logged();
}

#[test]
fn api_reports_stream_state_and_media_properties() {
    let _serial = serial();
    let mut server = Server::start("");

    // Configured but offline.
    let r = server.get(&format!("/api/v1/streams/{STREAM}"));
    assert_eq!(r.status, 200, "GET /api/v1/streams/{STREAM}: {}", r.text());
    let v = r.json().expect("stream JSON");
    assert_eq!(v["name"], STREAM, "{v}");
    assert_eq!(v["live"], false, "{v}");
    let whep = server.post_sdp(
        &format!("/whep/{STREAM}"),
        offer_sdp(&["VP8", "H264"]).as_bytes(),
    );
    assert_json_error(&whep, 404, "WHEP for an offline stream");
    let unknown = server.get("/api/v1/streams/no-such-stream");
    assert_eq!(
        unknown.status,
        404,
        "unknown stream in the API: {}",
        unknown.text()
    );

    let mut ffmpeg = Publisher::ffmpeg(&server.publish_url(STREAM), FfmpegOpts::default());
    server.wait_live(STREAM, LIVE_TIMEOUT);
    // fps, bitrate and keyframe interval are measured: wait for them.
    let v = wait_until(
        "measured video properties in the API",
        Duration::from_secs(30),
        || {
            server.api_stream(STREAM).filter(|v| {
                v["video"]["fps"].as_f64().unwrap_or(0.0) > 0.0
                    && v["video"]["keyframe_interval_ms"].as_f64().unwrap_or(0.0) > 0.0
                    && v["video"]["bitrate_kbps"].as_f64().unwrap_or(0.0) > 0.0
            })
        },
    );
    println!("API while live: {v}");
    assert_eq!(v["live"], true, "{v}");
    assert_eq!(v["name"], STREAM, "{v}");
    assert!(
        v["started_at"].is_string() || v["started_at"].is_number(),
        "started_at: {v}"
    );
    assert_eq!(
        norm(v["ingest"]["protocol"].as_str().unwrap_or("")),
        "rtmp",
        "{v}"
    );
    let video = &v["video"];
    assert_eq!(norm(video["codec"].as_str().unwrap_or("")), "h264", "{v}");
    assert_eq!(video["width"], 1280, "{v}");
    assert_eq!(video["height"], 720, "{v}");
    let fps = video["fps"].as_f64().unwrap();
    assert!((25.0..=35.0).contains(&fps), "fps {fps}: {v}");
    let kf = video["keyframe_interval_ms"].as_f64().unwrap();
    assert!(
        (800.0..=1300.0).contains(&kf),
        "keyframe interval (-g 30 at 30 fps) {kf} ms: {v}"
    );
    assert_eq!(video["bframes"], false, "{v}");
    // The contract leaves open whether `audio` describes the source (AAC 44.1 kHz
    // mono) or what viewers get (Opus 48 kHz); either way it was transcoded.
    let audio = &v["audio"];
    match norm(audio["codec"].as_str().unwrap_or("")).as_str() {
        "aac" => {
            assert_eq!(audio["sample_rate"], 44100, "{v}");
            assert_eq!(audio["channels"], 1, "lavfi sine is mono: {v}");
        }
        "opus" => assert_eq!(audio["sample_rate"], 48000, "{v}"),
        other => panic!("audio.codec should be AAC (source) or Opus (output), got {other:?}: {v}"),
    }
    assert_eq!(audio["transcoded"], true, "AAC is transcoded to Opus: {v}");

    let list = server.get("/api/v1/streams");
    assert_eq!(list.status, 200, "GET /api/v1/streams: {}", list.text());
    let text = list.text();
    assert!(
        text.contains(STREAM) && text.contains(STREAM2),
        "both streams listed: {text}"
    );

    // ffmpeg quits: the stream goes offline.
    assert!(ffmpeg.stop(Duration::from_secs(10)).is_some());
    wait_until(
        "the stream to go offline after ffmpeg quit",
        Duration::from_secs(30),
        || server.api_stream(STREAM).filter(|v| v["live"] == false),
    );
    server.assert_healthy("after unpublish");
    server.assert_no_key_logged();
}
