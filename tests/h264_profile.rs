//! The WHEP answer's H.264 `profile-level-id` is the stream's, from its SPS:
//! ffmpeg (libx264) publishes Baseline, Main and High in turn on one stream
//! (a publisher switch each time), and a Chromium-like offer listing every
//! profile is answered with the new SPS's profile, constraint flags and level.
//! An offer of Constrained Baseline only gets a High stream in its own entry,
//! or a 422 naming both profiles with `strict_h264_profile`.

mod common;

use std::time::Duration;

use common::*;

/// Chromium's H.264 entries with packetization-mode 1, payload types 102,
/// 108, 104, 106 (see `offer_sdp_h264`).
const CHROMIUM: [&str; 4] = ["42001f", "42e01f", "4d001f", "64001f"];

/// The 6 hex digits after `key=` in `s` (quoted or not).
fn hex_after(s: &str, key: &str) -> Option<String> {
    let at = s.find(key)? + key.len();
    let v: String = s[at..]
        .trim_start_matches(['"', '\\'])
        .chars()
        .take(6)
        .collect();
    (v.len() == 6 && v.chars().all(|c| c.is_ascii_hexdigit())).then_some(v)
}

/// The answer's H.264 payload type and fmtp.
fn answered_h264(answer: &str) -> (String, String) {
    let pt = answer
        .lines()
        .find_map(|l| {
            l.strip_prefix("a=rtpmap:")?
                .strip_suffix(" H264/90000")
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no H.264 in the answer:\n{answer}"));
    let fmtp = answer
        .lines()
        .find_map(|l| l.strip_prefix(&format!("a=fmtp:{pt} ")).map(str::to_string))
        .unwrap_or_else(|| panic!("no fmtp for H.264 payload type {pt}:\n{answer}"));
    (pt, fmtp)
}

fn whep(server: &Server, offer: &str) -> HttpResponse {
    server.post_sdp(&format!("/whep/{STREAM}"), offer.as_bytes())
}

/// Publishes `profile` and waits for its SPS; returns the SPS's profile-level-id.
fn publish(server: &Server, profile: &'static str) -> (Publisher, String) {
    let from = server.log_len();
    let ffmpeg = Publisher::ffmpeg(
        &server.publish_url(STREAM),
        FfmpegOpts {
            profile: Some(profile),
            audio: false,
            width: 640,
            height: 360,
            ..FfmpegOpts::default()
        },
    );
    let line = server.wait_for_log_from(from, "video: H.264", LIVE_TIMEOUT);
    let line = strip_ansi(&line);
    let sps = hex_after(&line, "profile_level_id=")
        .unwrap_or_else(|| panic!("no profile_level_id in {line:?}"));
    server.wait_live(STREAM, LIVE_TIMEOUT);
    (ffmpeg, sps)
}

#[test]
fn the_answer_states_the_profile_of_each_publisher_sps() {
    let _serial = serial();
    let server = Server::start("");
    let offer = offer_sdp_h264(&["H264"], &CHROMIUM);
    // x264's constraint flags: baseline sets constraint_set0+1 (Constrained
    // Baseline, 42c0), main constraint_set1 (4d40), high none (6400).
    for (profile, flags, pt) in [
        ("baseline", "42c0", "108"),
        ("main", "4d40", "104"),
        ("high", "6400", "106"),
    ] {
        let (mut ffmpeg, sps) = publish(&server, profile);
        assert!(
            sps.starts_with(flags),
            "ffmpeg -profile:v {profile} sent SPS profile-level-id {sps}, expected {flags}xx"
        );
        let r = whep(&server, &offer);
        let answer = String::from_utf8_lossy(&r.body).to_string();
        assert_eq!(
            r.status, 201,
            "{profile}: WHEP answered {}: {answer}",
            r.status
        );
        let (apt, fmtp) = answered_h264(&answer);
        assert_eq!(
            apt, pt,
            "{profile}: the entry of the stream's profile: {fmtp}"
        );
        assert_eq!(
            hex_after(&fmtp, "profile-level-id=").as_deref(),
            Some(sps.as_str()),
            "{profile}: the answer's fmtp {fmtp:?} is not the SPS's {sps}"
        );
        assert!(fmtp.contains("packetization-mode=1"), "{fmtp}");
        assert!(fmtp.contains("level-asymmetry-allowed=1"), "{fmtp}");
        ffmpeg.stop(Duration::from_secs(10));
    }
}

#[test]
fn a_constrained_baseline_offer_gets_a_high_stream_or_a_clear_refusal() {
    let _serial = serial();
    // aiortc's (and Firefox's) list: Baseline and Constrained Baseline.
    let aiortc = offer_sdp_h264(&["H264"], &["42001f", "42e01f"]);
    let strict = Server::start_with(ServerOpts {
        webrtc_extra: "strict_h264_profile = true".into(),
        ..ServerOpts::default()
    });
    let (mut ffmpeg, sps) = publish(&strict, "high");
    assert!(sps.starts_with("64"), "{sps}");
    let r = whep(&strict, &aiortc);
    let body = assert_json_error(&r, 422, "a Constrained Baseline offer for a High stream");
    assert_eq!(body["code"], "no_common_codec", "{body}");
    let msg = body["error"].as_str().unwrap_or_default();
    assert!(
        msg.contains("Constrained Baseline") && msg.contains("H.264 High"),
        "the refusal names both profiles: {msg}"
    );
    // A Chromium-like offer is still answered, in High.
    let r = whep(&strict, &offer_sdp_h264(&["H264"], &CHROMIUM));
    assert_eq!(r.status, 201);
    let (_, fmtp) = answered_h264(&String::from_utf8_lossy(&r.body));
    assert_eq!(
        hex_after(&fmtp, "profile-level-id=").as_deref(),
        Some(sps.as_str())
    );
    ffmpeg.stop(Duration::from_secs(10));
    drop(strict);

    // By default the offer gets the stream in its Constrained Baseline entry
    // (its decoder plays High), and the server says so in its log.
    let server = Server::start("");
    let (mut ffmpeg, _) = publish(&server, "high");
    let from = server.log_len();
    let r = whep(&server, &aiortc);
    let answer = String::from_utf8_lossy(&r.body).to_string();
    assert_eq!(r.status, 201, "{answer}");
    let (pt, fmtp) = answered_h264(&answer);
    assert_eq!(pt, "108", "{fmtp}");
    assert!(fmtp.contains("profile-level-id=42e01f"), "{fmtp}");
    server.wait_for_log_from(
        from,
        "sending it in the closest offered one",
        Duration::from_secs(5),
    );
    ffmpeg.stop(Duration::from_secs(10));
}
