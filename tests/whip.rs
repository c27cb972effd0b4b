//! WHIP ingest with real WebRTC stacks: aiortc publishes H.264+Opus and
//! VP8+Opus, headless Chromium publishes its fake camera; aiortc and Chromium
//! viewers decode each. Plus the protocol's edges: Location/ETag, host
//! candidates only, keys, codecs no viewer or server can use, DELETE ending the
//! publish, a viewer whose offer lacks the stream's codec.

mod common;

use std::time::Duration;

use common::publishers::*;
use common::*;
use serde_json::Value;

/// aiortc and Chromium watch `stream` at once and decode `codec` ("H264"/"VP8").
fn viewers_decode(server: &Server, stream: &str, codec: &str, sine: bool, what: &str) {
    let mut aio = aiortc_viewer(
        &server.whep_url(stream),
        ViewerOpts {
            frames: 90,
            audio_frames: 100,
            ..ViewerOpts::default()
        },
    );
    let mut chrome = chromium_player(
        server,
        BrowserOpts {
            stream: stream.to_string(),
            frames: Some(60),
            audio_packets: 50,
            ..BrowserOpts::default()
        },
    );
    let a = aio.result(MEDIA_TIMEOUT + Duration::from_secs(30));
    println!("{what}: aiortc viewer {a}");
    assert_eq!(a["ok"], true, "{what}: aiortc viewer: {}", a["error"]);
    assert_eq!(
        norm(a["video_codec"].as_str().unwrap_or("")),
        norm(codec),
        "{what}: {a}"
    );
    assert_eq!(a["audio_codec"], "opus", "{what}: {a}");
    assert_eq!(a["decode_errors"], 0, "{what}: {a}");
    assert_eq!(a["width"], 640, "{what}: {a}");
    assert_eq!(a["height"], 360, "{what}: {a}");
    if sine {
        let f = a["audio_freq_hz"].as_f64().unwrap_or(0.0);
        assert!(
            (f - 440.0).abs() < 25.0,
            "{what}: audio is not the 440 Hz sine: {f} Hz"
        );
    }
    let c = chrome.result(MEDIA_TIMEOUT + Duration::from_secs(30));
    let last = &c["last_sample"];
    println!(
        "{what}: chromium viewer first decoded {} ms, {}",
        c["first_decoded_ms"], last["video"]
    );
    assert_eq!(c["ok"], true, "{what}: Chromium viewer: {}", c["reason"]);
    assert_eq!(
        norm(last["video"]["codec"].as_str().unwrap_or("")),
        norm(&format!("video/{codec}")),
        "{what}: {last}"
    );
    assert_eq!(last["video"]["frameWidth"], 640, "{what}: {last}");
    let ttff = c["first_decoded_ms"].as_f64().unwrap_or(f64::MAX);
    assert!(ttff < 3000.0, "{what}: first frame decoded after {ttff} ms");
}

/// The `whip` line: 201, Location, ETag, direct UDP host candidates only.
fn check_whip_answer(whip: &Value, stream: &str, server: &Server, what: &str) {
    assert_eq!(whip["status"], 201, "{what}: {whip}");
    let loc = whip["location"].as_str().unwrap_or("");
    assert!(
        loc.starts_with(&format!("/whip/{stream}/")),
        "{what}: Location {loc:?}"
    );
    assert!(
        whip["etag"].as_str().is_some_and(|e| !e.is_empty()),
        "{what}: {whip}"
    );
    let cands = answer_candidates(whip);
    assert!(!cands.is_empty(), "{what}: no candidates in the answer");
    let udp = server.webrtc_udp.expect("webrtc-udp listening line");
    for c in &cands {
        assert!(c.contains(" typ host"), "{what}: not a host candidate: {c}");
        assert!(
            c.to_ascii_lowercase().contains(" udp "),
            "{what}: not UDP: {c}"
        );
        assert!(
            c.contains(&format!(" {} typ", udp.port())),
            "{what}: not the UDP port: {c}"
        );
    }
}

fn wait_video_codec(server: &Server, stream: &str, codec: &str) -> Value {
    wait_until(
        &format!("the API to report {codec} 640x360 over WHIP"),
        LIVE_TIMEOUT,
        || {
            let v = server.api_stream(stream)?;
            (v["live"] == true
                && v["video"]["codec"] == codec
                && v["video"]["width"] == 640
                && v["ingest"]["protocol"] == "whip")
                .then_some(v)
        },
    )
}

fn wait_offline(server: &Server, stream: &str, what: &str) {
    wait_until(what, LIVE_TIMEOUT, || {
        server
            .api_stream(stream)
            .filter(|v| v["live"] == false)
            .map(|_| ())
    });
}

#[test]
fn aiortc_publishes_h264_and_vp8_over_whip() {
    let _serial = serial();
    // One WebRTC worker, which then reads the UDP socket itself (a 1-vCPU
    // server's default); the other tests run one per core, with a receiver
    // thread handing datagrams over.
    let server = Server::start_with(ServerOpts {
        webrtc_extra: "workers = 1".into(),
        ..ServerOpts::default()
    });
    // A thread names itself once it runs: wait for the worker's name.
    let threads: Vec<String> = wait_until("the WebRTC worker thread", LIVE_TIMEOUT, || {
        let names: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", server.pid()))
            .ok()?
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|n| n.trim().to_string())
            .collect();
        names.iter().any(|n| n == "rtc-0").then_some(names)
    });
    assert!(
        threads.iter().any(|n| n == "rtc-0") && !threads.iter().any(|n| n == "rtc-udp-rx"),
        "one worker and no UDP receiver thread: {threads:?}"
    );
    for codec in ["H264", "VP8"] {
        let what = format!("aiortc {codec}");
        let mut publisher = aiortc_publisher(
            &server.whip_url(STREAM),
            WhipOpts {
                codec,
                key: Some(server.key(STREAM).to_string()),
                ..WhipOpts::default()
            },
        );
        let whip = publisher.wait_for("the WHIP answer", MEDIA_TIMEOUT, |v| v["type"] == "whip");
        check_whip_answer(&whip, STREAM, &server, &what);
        publisher.wait_for("connected", MEDIA_TIMEOUT, |v| {
            v["type"] == "event" && v["state"] == "connected"
        });
        let api = wait_video_codec(&server, STREAM, codec);
        assert_eq!(api["audio"]["codec"], "opus", "{what}: {api}");
        assert_eq!(api["audio"]["transcoded"], false, "{what}: {api}");
        viewers_decode(&server, STREAM, codec, true, &what);
        // The server asked the publisher for a keyframe (RTCP PLI) as it started.
        publisher.wait_for("a keyframe request at the publisher", MEDIA_TIMEOUT, |v| {
            v["type"] == "progress" && v["pli_received"].as_u64().unwrap_or(0) >= 1
        });
        if codec == "VP8" {
            // A viewer that cannot decode VP8 is told so.
            let r = server.post_sdp(&format!("/whep/{STREAM}"), offer_sdp(&["H264"]).as_bytes());
            let e = assert_json_error(&r, 422, "an H.264-only viewer of a VP8 stream");
            let msg = e["error"].as_str().unwrap();
            assert!(
                msg.contains("VP8"),
                "the error should name the stream's codec: {msg}"
            );
        }
        if codec == "H264" {
            // DELETE and PATCH without the secret Location, even with the
            // stream key, end nothing.
            let loc = whip["location"].as_str().unwrap_or("").to_string();
            let mut forged = loc.clone();
            let last = forged.pop().unwrap_or('0');
            forged.push(if last == '0' { '1' } else { '0' });
            let key = format!("Bearer {}", server.key(STREAM));
            let mut paths: Vec<String> = (0..=4).map(|n| format!("/whip/{STREAM}/{n}")).collect();
            paths.push(forged);
            for p in &paths {
                for auth in [None, Some(key.as_str())] {
                    let mut h = vec![("Content-Type", "application/trickle-ice-sdpfrag")];
                    if let Some(a) = auth {
                        h.push(("Authorization", a));
                    }
                    let r = common::http::request("DELETE", &server.url(p), &h, None).unwrap();
                    assert_json_error(&r, 404, &format!("{what}: DELETE {p} without the secret"));
                    let r = common::http::request(
                        "PATCH",
                        &server.url(p),
                        &h,
                        Some(b"a=end-of-candidates"),
                    )
                    .unwrap();
                    assert_json_error(&r, 404, &format!("{what}: PATCH {p} without the secret"));
                }
            }
            let api = server.api_stream(STREAM).expect("stream JSON");
            assert_eq!(
                api["live"], true,
                "{what}: guessed DELETEs ended the publish: {api}"
            );
            let r = publisher.stop(Duration::from_secs(30));
            assert_eq!(r["ok"], true, "{what}: {r}");
            assert_eq!(
                r["delete_status"], 200,
                "{what}: DELETE on the Location: {r}"
            );
            wait_offline(
                &server,
                STREAM,
                &format!("{what}: DELETE to end the publish"),
            );
            server.wait_for_log("whip publish ended", MEDIA_TIMEOUT);
        } else {
            // A publisher that vanishes (no DELETE, no DTLS close) ends too.
            let from = server.log_len();
            publisher.kill();
            wait_offline(
                &server,
                STREAM,
                &format!("{what}: a killed publisher to end the publish"),
            );
            // Whichever notices first ends it: the 10 s media silence, or
            // str0m's ICE consent (no checks answered); both are ~10 s.
            let line = server.wait_for_log_from(from, "whip publish ended", MEDIA_TIMEOUT);
            assert!(
                line.contains("went silent") || line.contains("ICE disconnected"),
                "{what}: a killed publisher ends by silence or ICE: {line}"
            );
        }
    }
    server.assert_no_key_logged();
}

#[test]
fn chromium_publishes_vp9_and_av1_over_whip() {
    let _serial = serial();
    let server = Server::start("");
    for codec in ["VP9", "AV1"] {
        let mut publisher = chromium_publisher(
            &server.base_url(),
            STREAM,
            Some(server.key(STREAM)),
            Some(codec),
            None,
        );
        let whip = publisher.wait_for("the WHIP answer", MEDIA_TIMEOUT, |v| v["type"] == "whip");
        assert_eq!(whip["status"], 201, "{codec}: {whip}");
        wait_until(
            &format!("the API to report {codec} 640 wide"),
            LIVE_TIMEOUT,
            || {
                server.api_stream(STREAM).filter(|v| {
                    v["live"] == true && v["video"]["codec"] == codec && v["video"]["width"] == 640
                })
            },
        );
        let mut viewer = chromium_player(
            &server,
            BrowserOpts {
                frames: Some(60),
                audio_packets: 20,
                ..BrowserOpts::default()
            },
        );
        let r = viewer.result(MEDIA_TIMEOUT + Duration::from_secs(30));
        let last = &r["last_sample"];
        println!(
            "Chromium {codec}: first decoded {} ms, {}",
            r["first_decoded_ms"], last["video"]
        );
        assert_eq!(r["ok"], true, "{codec}: {}", r["reason"]);
        assert_eq!(
            norm(last["video"]["codec"].as_str().unwrap_or("")),
            norm(&format!("video/{codec}")),
            "{last}"
        );
        assert_eq!(last["video"]["frameWidth"], 640, "{last}");
        let r = publisher.stop(Duration::from_secs(30));
        assert_eq!(r["delete_status"], 200, "{codec}: {r}");
        wait_offline(
            &server,
            STREAM,
            &format!("{codec}: DELETE to end the publish"),
        );
    }
}

#[test]
fn chromium_publishes_its_camera_over_whip() {
    let _serial = serial();
    let server = Server::start("");
    let mut publisher = chromium_publisher(
        &server.base_url(),
        STREAM,
        Some(server.key(STREAM)),
        None,
        None,
    );
    let whip = publisher.wait_for("the WHIP answer", MEDIA_TIMEOUT, |v| v["type"] == "whip");
    check_whip_answer(&whip, STREAM, &server, "Chromium");
    let sample = publisher.wait_for("frames encoded and sent", MEDIA_TIMEOUT, |v| {
        v["type"] == "sample" && v["video"]["framesEncoded"].as_u64().unwrap_or(0) > 30
    });
    let codec = sample["video"]["codec"]
        .as_str()
        .and_then(|c| c.strip_prefix("video/"))
        .unwrap_or("")
        .to_ascii_uppercase();
    println!("Chromium publishes {codec}: {sample}");
    wait_video_codec(&server, STREAM, &codec);
    // Chromium's fake microphone beeps: no 440 Hz check.
    viewers_decode(&server, STREAM, &codec, false, "Chromium publisher");
    let r = publisher.stop(Duration::from_secs(30));
    assert_eq!(r["ok"], true, "Chromium publisher: {r}");
    assert_eq!(r["delete_status"], 200, "{r}");
    wait_offline(
        &server,
        STREAM,
        "the Chromium publisher's DELETE to end the publish",
    );
}

#[test]
fn whip_refusals_are_clear_json_errors() {
    let mut server = Server::start("");
    let key = server.key(STREAM).to_string();
    let post = |path: &str, auth: Option<&str>, ctype: &str, body: &[u8]| {
        let bearer = auth.map(|k| format!("Bearer {k}"));
        let mut headers = vec![("Content-Type", ctype)];
        if let Some(b) = &bearer {
            headers.push(("Authorization", b.as_str()));
        }
        common::http::request("POST", &server.url(path), &headers, Some(body)).unwrap()
    };
    let good = whip_offer(&["96 VP8/90000"], &["111 opus/48000/2"]);
    let path = format!("/whip/{STREAM}");

    let wrong = "not-the-key-0123456789";
    let r = post(&path, Some(wrong), "application/sdp", good.as_bytes());
    let e = assert_json_error(&r, 401, "a wrong key");
    assert_eq!(e["code"], "stream_key_rejected");
    server.wait_for_log("whip: stream key rejected", Duration::from_secs(10));
    for line in server.log_lines() {
        assert!(!line.contains(wrong), "the wrong key was logged: {line}");
    }
    // The right key for another stream is wrong here.
    let r = post(
        &path,
        Some(server.key(STREAM2)),
        "application/sdp",
        good.as_bytes(),
    );
    assert_json_error(&r, 401, "another stream's key");
    let r = post(&path, None, "application/sdp", good.as_bytes());
    let e = assert_json_error(&r, 401, "no key");
    assert_eq!(e["code"], "stream_key_required");

    let r = post(&path, Some(&key), "text/plain", good.as_bytes());
    assert_json_error(&r, 415, "a text/plain body");
    let r = post(&path, Some(&key), "application/sdp", b"hello");
    assert_json_error(&r, 400, "a body that is not SDP");
    let big = vec![b'v'; 1 << 20];
    let r = post(&path, Some(&key), "application/sdp", &big);
    assert_json_error(&r, 413, "a 1 MiB offer");

    // Offers with nothing roomcast can forward name what they offered.
    let hevc = whip_offer(&["49 H265/90000"], &["0 PCMU/8000"]);
    let r = post(&path, Some(&key), "application/sdp", hevc.as_bytes());
    let e = assert_json_error(&r, 422, "an H.265 + PCMU offer");
    let msg = e["error"].as_str().unwrap();
    assert!(msg.contains("H265") && msg.contains("PCMU"), "{msg}");
    assert!(
        msg.contains("VP8") && msg.contains("Opus"),
        "it should say what works: {msg}"
    );
    let mode0 = whip_offer(&["97 H264/90000"], &["111 opus/48000/2"]);
    let r = post(&path, Some(&key), "application/sdp", mode0.as_bytes());
    assert_json_error(&r, 422, "H.264 without packetization-mode=1");

    // The resource URL of a session that does not exist.
    let r =
        common::http::request("DELETE", &server.url(&format!("{path}/999999")), &[], None).unwrap();
    assert_json_error(&r, 404, "DELETE of an unknown session");
    let r = common::http::request(
        "PATCH",
        &server.url(&format!("{path}/999999")),
        &[("Content-Type", "application/trickle-ice-sdpfrag")],
        Some(b"a=candidate:1 1 udp 1 127.0.0.1 9 typ host"),
    )
    .unwrap();
    assert_json_error(&r, 404, "PATCH of an unknown session");

    // A good offer is accepted (the session then times out unconnected), and
    // trickle ICE on its Location answers 204.
    let r = post(&path, Some(&key), "application/sdp", good.as_bytes());
    assert_eq!(r.status, 201, "{}", r.text());
    let loc = r.header("location").expect("Location").to_string();
    assert!(r.header("etag").is_some());
    let r = common::http::request(
        "PATCH",
        &server.url(&loc),
        &[("Content-Type", "application/trickle-ice-sdpfrag")],
        Some(b"a=candidate:1 1 udp 1 127.0.0.1 9 typ host"),
    )
    .unwrap();
    assert_eq!(r.status, 204, "PATCH: {}", r.text());
    let r = common::http::request("DELETE", &server.url(&loc), &[], None).unwrap();
    assert_eq!(r.status, 200, "DELETE: {}", r.text());
    server.assert_healthy("after the bad WHIP requests");
    server.assert_no_key_logged();
}
