//! LL-HLS egress against the real binary: ffmpeg publishes over RTMP (and
//! Chromium over WHIP), the playlist, blocking reloads, init/segments/parts are
//! read over HTTP, ffprobe reads the stream, hls.js plays it in Chromium
//! (tests/browser/hls.mjs) across a publisher takeover and restart, while a
//! WHEP viewer keeps playing.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const HLS_TIMEOUT: Duration = Duration::from_secs(120);

fn playlist_path(stream: &str) -> String {
    format!("/hls/{stream}/index.m3u8")
}

/// Asserts a JSON error `{error, code}` with `status` and `code`.
fn assert_error_code(r: &HttpResponse, status: u16, code: &str) -> String {
    assert_eq!(r.status, status, "{}", r.text());
    assert!(r.content_type().starts_with("application/json"), "{r:?}");
    let v = r.json().expect("JSON error body");
    assert_eq!(v["code"], code, "{v}");
    let msg = v["error"].as_str().expect("error message").to_string();
    assert!(!msg.is_empty());
    msg
}

/// The tags of a media playlist that matter here.
#[derive(Debug, Default)]
struct Playlist {
    text: String,
    target_duration: f64,
    part_target: f64,
    part_hold_back: f64,
    media_sequence: u64,
    /// (msn, EXTINF duration, uri) of complete segments.
    segments: Vec<(u64, f64, String)>,
    /// (msn, index, duration, independent, uri).
    parts: Vec<(u64, usize, f64, bool, String)>,
    preload_hint: Option<String>,
    map: Option<String>,
    program_date_times: usize,
}

fn attr<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let i = line.find(&format!("{name}="))? + name.len() + 1;
    let rest = &line[i..];
    if let Some(r) = rest.strip_prefix('"') {
        r.split('"').next()
    } else {
        rest.split(',').next()
    }
}

fn parse_playlist(text: &str) -> Playlist {
    let mut p = Playlist {
        text: text.to_string(),
        ..Default::default()
    };
    assert!(text.starts_with("#EXTM3U\n"), "{text}");
    let mut msn = None;
    let mut part_index = 0;
    let mut pending_extinf = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("#EXT-X-TARGETDURATION:") {
            p.target_duration = v.parse().unwrap();
        } else if let Some(v) = line.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
            p.media_sequence = v.parse().unwrap();
            msn = Some(p.media_sequence);
        } else if line.starts_with("#EXT-X-SERVER-CONTROL:") {
            assert_eq!(attr(line, "CAN-BLOCK-RELOAD"), Some("YES"), "{line}");
            p.part_hold_back = attr(line, "PART-HOLD-BACK").unwrap().parse().unwrap();
        } else if line.starts_with("#EXT-X-PART-INF:") {
            p.part_target = attr(line, "PART-TARGET").unwrap().parse().unwrap();
        } else if line.starts_with("#EXT-X-MAP:") {
            p.map = attr(line, "URI").map(str::to_string);
        } else if line.starts_with("#EXT-X-PROGRAM-DATE-TIME:") {
            p.program_date_times += 1;
        } else if line.starts_with("#EXT-X-PART:") {
            let m = msn.expect("EXT-X-MEDIA-SEQUENCE before parts");
            p.parts.push((
                m,
                part_index,
                attr(line, "DURATION").unwrap().parse().unwrap(),
                attr(line, "INDEPENDENT") == Some("YES"),
                attr(line, "URI").unwrap().to_string(),
            ));
            part_index += 1;
        } else if let Some(v) = line.strip_prefix("#EXTINF:") {
            pending_extinf = Some(v.trim_end_matches(',').parse::<f64>().unwrap());
        } else if line.starts_with("#EXT-X-PRELOAD-HINT:") {
            assert_eq!(attr(line, "TYPE"), Some("PART"));
            p.preload_hint = attr(line, "URI").map(str::to_string);
        } else if !line.starts_with('#') && !line.is_empty() {
            let m = msn.expect("media sequence");
            p.segments
                .push((m, pending_extinf.take().expect("EXTINF"), line.to_string()));
            msn = Some(m + 1);
            part_index = 0;
        }
    }
    p
}

/// The msn and part index of a part URI `part-S-MSN-INDEX.m4s[?…]`.
fn part_position(uri: &str) -> (u64, usize) {
    let name = uri.split('?').next().unwrap().trim_end_matches(".m4s");
    let f: Vec<&str> = name.split('-').collect();
    assert_eq!(f.len(), 4, "{uri}");
    (f[2].parse().unwrap(), f[3].parse().unwrap())
}

/// Blocking reloads (`_HLS_msn`, one segment ahead each, as a player at the
/// live edge asks) until segment `msn` is complete; returns that playlist.
/// (Two ahead is allowed too, but a WebRTC publisher whose encoder answers
/// keyframe requests late makes segments longer than the target duration the
/// hold was computed from.)
fn block_for_segment(server: &Server, stream: &str, msn: u64) -> Playlist {
    loop {
        let r = server.get(&playlist_path(stream));
        assert_eq!(r.status, 200, "{}", r.text());
        let last = parse_playlist(&r.text())
            .segments
            .last()
            .map_or(0, |s| s.0 + 1);
        let ask = msn.min(last + 1);
        let r = http::request_timeout(
            "GET",
            &server.url(&format!("{}?_HLS_msn={ask}", playlist_path(stream))),
            &[],
            None,
            Duration::from_secs(20),
        )
        .unwrap();
        assert_eq!(r.status, 200, "_HLS_msn={ask}: {}", r.text());
        let p = parse_playlist(&r.text());
        assert!(p.segments.iter().any(|s| s.0 == ask), "{}", p.text);
        if ask == msn {
            return p;
        }
    }
}

fn hls_player(url: &str) -> JsonTool {
    let dir = node_dir();
    let mut cmd =
        Command::new(std::env::var_os("ROOMCAST_TEST_NODE").unwrap_or_else(|| "node".into()));
    cmd.current_dir(&dir)
        .arg(dir.join("hls.mjs"))
        .arg("--url")
        .arg(url)
        .arg("--hlsjs")
        .arg(manifest_dir().join("widget/node_modules/hls.js/dist/hls.min.js"))
        .args(["--timeout", "240", "--interval", "500", "--stdin-control"]);
    JsonTool::spawn("hls.js player", cmd)
}

fn ffmpeg_720p() -> FfmpegOpts {
    FfmpegOpts {
        bframes: 0,
        gop: 30,
        ..FfmpegOpts::default()
    }
}

#[test]
fn ll_hls_playlist_blocking_reload_media_and_errors_while_whep_plays() {
    let _serial = serial();
    let server = Server::start("");

    // Offline and unknown streams, garbage queries: JSON errors.
    let r = server.get(&playlist_path(STREAM));
    let msg = assert_error_code(&r, 404, "stream_offline");
    assert!(msg.contains("offline"), "{msg}");
    assert_error_code(&server.get(&playlist_path("nope")), 404, "unknown_stream");
    let msg = assert_error_code(
        &server.get(&format!("{}?_HLS_msn=abc", playlist_path(STREAM))),
        400,
        "bad_query",
    );
    assert!(msg.contains("_HLS_msn") && msg.contains("abc"), "{msg}");
    assert_error_code(
        &server.get(&format!("{}?_HLS_part=1", playlist_path(STREAM))),
        400,
        "bad_query",
    );
    assert_error_code(&server.get("/hls/t1/../../etc/passwd"), 404, "not_found");
    assert_error_code(&server.get("/hls/t1/seg-1-x.m4s"), 404, "not_found");

    let _ffmpeg = Publisher::ffmpeg(&server.publish_url(STREAM), ffmpeg_720p());
    server.wait_live(STREAM, LIVE_TIMEOUT);
    let mut whep = chromium_player(
        &server,
        BrowserOpts {
            frames: None,
            duration_s: Some(90.0),
            timeout_s: 120.0,
            ..BrowserOpts::default()
        },
    );
    whep.wait_for("WHEP frames", MEDIA_TIMEOUT, |v| {
        v["type"] == "sample" && frames_decoded(v) >= 30
    });

    // The first request starts HLS for the stream and answers once a part exists.
    let r = server.get(&playlist_path(STREAM));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.content_type(), "application/vnd.apple.mpegurl");
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert!(r.header("cache-control").is_some());
    let first = parse_playlist(&r.text());
    // Blocking reloads: hold until segment 3 is complete (at 1 s GOPs, ~3 s),
    // two segments at a time (further ahead is refused).
    let t0 = Instant::now();
    let want = first.media_sequence + 3;
    let p = block_for_segment(&server, STREAM, want);
    println!(
        "blocking reloads for segment {want} took {:?}",
        t0.elapsed()
    );
    assert!(p.segments.iter().any(|s| s.0 == want), "{}", p.text);
    println!("playlist:\n{}", p.text);

    // The LL-HLS tags and the cutting rules.
    assert!(p.target_duration >= 1.0, "{}", p.text);
    assert!(p.part_target > 0.15 && p.part_target < 0.4, "{}", p.text);
    assert!(p.part_hold_back >= 2.0 * p.part_target, "{}", p.text);
    assert!(p.map.as_deref().unwrap_or("").starts_with("init-"));
    assert!(p.program_date_times >= p.segments.len());
    assert!(p.preload_hint.is_some());
    assert!(!p.parts.is_empty());
    for (msn, dur, _) in &p.segments {
        assert!(
            dur.round() <= p.target_duration,
            "segment {msn} of {dur} s exceeds the target duration"
        );
        // ffmpeg -g 30 at 30 fps: a keyframe every second.
        assert!((dur - 1.0).abs() < 0.1, "segment {msn}: {dur} s");
    }
    for (msn, idx, dur, independent, uri) in &p.parts {
        assert!(*dur <= p.part_target + 1e-3, "{uri}: {dur} > PART-TARGET");
        assert_eq!(
            *independent,
            *idx == 0,
            "{uri} INDEPENDENT (segments start with a keyframe)"
        );
        let pos = part_position(uri);
        assert_eq!(pos, (*msn, *idx), "{uri}");
    }
    // Complete segments' parts add up to their EXTINF.
    for (msn, dur, _) in &p.segments {
        let parts: f64 = p.parts.iter().filter(|x| x.0 == *msn).map(|x| x.2).sum();
        if parts > 0.0 {
            assert!(
                (parts - dur).abs() < 0.01,
                "segment {msn}: parts {parts} vs {dur}"
            );
        }
    }

    // Init, a segment and its parts: the segment is its parts back to back.
    let init = server.get(&format!("/hls/{STREAM}/{}", p.map.as_ref().unwrap()));
    assert_eq!(init.status, 200);
    assert_eq!(init.content_type(), "video/mp4");
    assert_eq!(&init.body[4..8], b"ftyp");
    assert!(init.header("cache-control").unwrap().contains("immutable"));
    let (seg_msn, _, seg_uri) = p
        .segments
        .iter()
        .rev()
        .find(|s| p.parts.iter().any(|x| x.0 == s.0))
        .expect("a complete segment with listed parts")
        .clone();
    let seg = server.get(&format!("/hls/{STREAM}/{seg_uri}"));
    assert_eq!(seg.status, 200);
    assert_eq!(seg.content_type(), "video/mp4");
    assert_eq!(&seg.body[4..8], b"moof");
    let mut joined = Vec::new();
    for (_, _, _, _, uri) in p.parts.iter().filter(|x| x.0 == seg_msn) {
        let part = server.get(&format!("/hls/{STREAM}/{uri}"));
        assert_eq!(part.status, 200, "{uri}");
        assert_eq!(&part.body[4..8], b"moof", "{uri}");
        joined.extend_from_slice(&part.body);
    }
    assert_eq!(joined, seg.body, "segment {seg_msn} = its parts");

    // Blocking reload one part ahead of the newest: answers as soon as it exists.
    let latest = p.parts.last().unwrap();
    let (msn, part) = (latest.0, latest.1 + 1);
    let t0 = Instant::now();
    let r = server.get(&format!(
        "{}?_HLS_msn={msn}&_HLS_part={part}",
        playlist_path(STREAM)
    ));
    let waited = t0.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    let q = parse_playlist(&r.text());
    // The part asked for, or (if the segment ended at a keyframe) part 0 of the next one.
    let has = q.parts.iter().any(|x| (x.0, x.1) == (msn, part))
        || q.parts.iter().any(|x| (x.0, x.1) == (msn + 1, 0));
    assert!(
        has,
        "blocking reload for {msn}.{part} lacks it:\n{}",
        q.text
    );
    println!("blocking reload one part ahead answered in {waited:?}");
    assert!(
        waited < Duration::from_secs(2),
        "a part takes ~{} s; the reload took {waited:?}",
        p.part_target
    );
    // The preload-hinted part is served as soon as it is complete.
    let hint = q.preload_hint.clone().unwrap();
    let r = server.get(&format!("/hls/{STREAM}/{hint}"));
    assert_eq!(r.status, 200, "{hint}: {}", r.text());
    assert_eq!(&r.body[4..8], b"moof");

    // Far-future requests are refused at once.
    let last = q.parts.last().unwrap().0;
    let t0 = Instant::now();
    let msg = assert_error_code(
        &server.get(&format!("{}?_HLS_msn={}", playlist_path(STREAM), last + 10)),
        400,
        "hls_request_too_far",
    );
    // At once, not after a hold (at least 3 s): 2 s leaves a loaded machine room.
    assert!(t0.elapsed() < Duration::from_secs(2), "{msg}");
    assert_error_code(
        &server.get(&format!(
            "{}?_HLS_msn={last}&_HLS_part=500",
            playlist_path(STREAM)
        )),
        400,
        "hls_request_too_far",
    );
    // Gone segments and another session's names are 404s.
    assert_error_code(
        &server.get(&format!("/hls/{STREAM}/seg-1-0.m4s")),
        404,
        "not_found",
    );

    // ffprobe reads H.264 and Opus at 1280x720 from the playlist URL.
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries"])
        .arg("stream=codec_name,codec_type,width,height,sample_rate,channels")
        .args(["-of", "json", "-rw_timeout", "20000000"])
        .arg(server.url(&playlist_path(STREAM)))
        .output()
        .expect("run ffprobe");
    assert!(
        out.status.success(),
        "ffprobe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let probe: Value = serde_json::from_slice(&out.stdout).unwrap();
    let streams = probe["streams"].as_array().unwrap();
    let video = streams.iter().find(|s| s["codec_type"] == "video").unwrap();
    let audio = streams.iter().find(|s| s["codec_type"] == "audio").unwrap();
    assert_eq!(video["codec_name"], "h264", "{probe}");
    assert_eq!(
        (video["width"].as_u64(), video["height"].as_u64()),
        (Some(1280), Some(720))
    );
    assert_eq!(audio["codec_name"], "opus", "{probe}");
    assert_eq!(audio["sample_rate"], "48000");

    // Counted in /metrics.
    let m = server.get("/metrics").text();
    let value = |needle: &str| -> u64 {
        m.lines()
            .find(|l| l.starts_with(needle))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {needle} in /metrics:\n{m}"))
    };
    assert!(value("roomcast_hls_requests_total{kind=\"blocking_playlist\"}") >= 2);
    assert!(value("roomcast_hls_requests_total{kind=\"part\"}") >= 2);
    assert!(value("roomcast_hls_bytes_sent_total") > 100_000);
    assert_eq!(value("roomcast_hls_streams"), 1);

    // The WHEP viewer played throughout.
    let before = whep
        .last_of("sample")
        .map(|v| frames_decoded(&v))
        .unwrap_or(0);
    let cursor = whep.cursor();
    whep.wait_for_from(cursor, "WHEP frames still rising", MEDIA_TIMEOUT, |v| {
        v["type"] == "sample" && frames_decoded(v) >= before + 30
    });
    whep.stop(MEDIA_TIMEOUT);
    let mut server = server;
    server.assert_healthy("after the HLS checks");
}

#[test]
fn hls_js_plays_in_chromium_across_takeover_and_restart() {
    let _serial = serial();
    let server = Server::start("");
    let small = FfmpegOpts {
        width: 640,
        height: 360,
        ..ffmpeg_720p()
    };
    let mut a = Publisher::ffmpeg(&server.publish_url(STREAM), small.clone());
    server.wait_live(STREAM, LIVE_TIMEOUT);
    let mut player = hls_player(&server.url(&playlist_path(STREAM)));
    let s = player.wait_for("hls.js playing", HLS_TIMEOUT, |v| {
        v["type"] == "sample"
            && v["frames"].as_u64().unwrap_or(0) >= 150
            && v["currentTime"].as_f64().unwrap_or(0.0) > 4.0
    });
    assert_eq!(
        (s["width"].as_u64(), s["height"].as_u64()),
        (Some(640), Some(360)),
        "{s}"
    );
    println!(
        "hls.js playing: latency to the live edge {} s, wall clock - PROGRAM-DATE-TIME {} s",
        s["latency"], s["pdt_latency"]
    );

    // A second publisher takes the stream over: the player goes on.
    let frames = |v: &Value| v["frames"].as_u64().unwrap_or(0);
    let at = frames(&s);
    let log_at = server.log_len();
    let b = Publisher::ffmpeg(&server.publish_url(STREAM), small.clone());
    server.wait_for_log_from(log_at, "takes the stream over", LIVE_TIMEOUT);
    let cursor = player.cursor();
    let s = player.wait_for_from(cursor, "frames after the takeover", HLS_TIMEOUT, |v| {
        v["type"] == "sample" && frames(v) >= at + 150
    });
    println!("after the takeover: {s}");
    a.kill();
    drop(b);

    // The publisher restarts (offline while ffmpeg starts again): the player goes on.
    let at = frames(&s);
    wait_until("the stream offline", LIVE_TIMEOUT, || {
        server
            .api_stream(STREAM)
            .filter(|v| v["live"] == false)
            .map(|_| ())
    });
    let _c = Publisher::ffmpeg(&server.publish_url(STREAM), small);
    server.wait_live(STREAM, LIVE_TIMEOUT);
    let cursor = player.cursor();
    let s = player.wait_for_from(cursor, "frames after the restart", HLS_TIMEOUT, |v| {
        v["type"] == "sample" && frames(v) >= at + 150
    });
    println!("after the restart: {s}");
    let r = player.stop(HLS_TIMEOUT);
    println!("hls.js result: {r}");
    println!(
        "LL-HLS latency in Chromium (hls.js {}): live edge - playback p50 {} s; wall clock - PROGRAM-DATE-TIME p50 {} s (max {} s)",
        player
            .last_of("start")
            .map(|v| v["hlsjs_version"].to_string())
            .unwrap_or_default(),
        r["latency_p50"],
        r["pdt_latency_p50"],
        r["pdt_latency_max"]
    );
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["fatal_errors"], 0, "{r}");
    let lat = r["pdt_latency_p50"].as_f64().expect("PDT latency");
    assert!(lat > 0.0 && lat < 5.0, "latency {lat} s");
}

#[test]
fn whip_h264_plays_over_hls_and_vp8_is_refused_with_its_codec() {
    let _serial = serial();
    let server = Server::start("");
    let key = server.key(STREAM).to_string();
    let base = server.base_url();
    let mut vp8 =
        common::publishers::chromium_publisher(&base, STREAM, Some(&key), Some("VP8"), None);
    vp8.wait_for("VP8 frames", MEDIA_TIMEOUT, |v| {
        v["type"] == "sample" && v["video"]["framesEncoded"].as_u64().unwrap_or(0) > 10
    });
    server.wait_live(STREAM, LIVE_TIMEOUT);
    let msg = assert_error_code(
        &server.get(&playlist_path(STREAM)),
        422,
        "hls_unsupported_codec",
    );
    assert!(msg.contains("VP8"), "{msg}");
    vp8.stop(MEDIA_TIMEOUT);

    // A WHIP publisher sending H.264 is muxed like an RTMP one.
    let key2 = server.key(STREAM2).to_string();
    let mut h264 =
        common::publishers::chromium_publisher(&base, STREAM2, Some(&key2), Some("H264"), None);
    h264.wait_for("H.264 frames", MEDIA_TIMEOUT, |v| {
        v["type"] == "sample" && v["video"]["framesEncoded"].as_u64().unwrap_or(0) > 10
    });
    server.wait_live(STREAM2, LIVE_TIMEOUT);
    let r = server.get(&playlist_path(STREAM2));
    assert_eq!(r.status, 200, "{}", r.text());
    let p = parse_playlist(&r.text());
    // Two complete segments prove keyframes arrive and parts are cut.
    let p = block_for_segment(&server, STREAM2, p.media_sequence + 2);
    let init = server.get(&format!("/hls/{STREAM2}/{}", p.map.as_ref().unwrap()));
    assert_eq!(init.status, 200);
    // avc1 + Opus sample entries in the init segment.
    let has = |needle: &[u8]| init.body.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"avc1") && has(b"avcC") && has(b"Opus") && has(b"dOps"));
    h264.stop(MEDIA_TIMEOUT);
}

/// VP9 and AV1 from Chromium's WHIP publisher (its fake camera at 640x360,
/// the codec chosen with setCodecPreferences) are muxed as `vp09` + `vpcC`
/// and `av01` + `av1C`: the init segment parses back with mp4-atom, and
/// ffprobe reads an init segment + part concatenation as the right codec and
/// size (what a player's demuxer sees first).
#[test]
fn whip_vp9_and_av1_are_muxed_as_vp09_and_av01_and_ffprobe_reads_them() {
    use mp4_atom::{Codec, Decode, Ftyp, Moov};
    let _serial = serial();
    let server = Server::start("");
    let base = server.base_url();
    for (codec, stream, probe_name) in [("VP9", STREAM, "vp9"), ("AV1", STREAM2, "av1")] {
        let key = server.key(stream).to_string();
        let mut publisher =
            common::publishers::chromium_publisher(&base, stream, Some(&key), Some(codec), None);
        let sample = publisher.wait_for(&format!("{codec} frames"), MEDIA_TIMEOUT, |v| {
            v["type"] == "sample" && v["video"]["framesEncoded"].as_u64().unwrap_or(0) > 10
        });
        let sent = sample["video"]["codec"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            sent.to_uppercase().contains(codec),
            "sent {sent}, wanted {codec}"
        );
        server.wait_live(stream, LIVE_TIMEOUT);
        let r = server.get(&playlist_path(stream));
        assert_eq!(r.status, 200, "{codec}: {}", r.text());
        let first = parse_playlist(&r.text());
        let p = block_for_segment(&server, stream, first.media_sequence + 1);
        let init = server.get(&format!("/hls/{stream}/{}", p.map.as_ref().unwrap()));
        assert_eq!(init.status, 200);
        assert_eq!(init.content_type(), "video/mp4");
        let buf = &mut std::io::Cursor::new(&init.body[..]);
        Ftyp::decode(buf).unwrap();
        let moov = Moov::decode(buf).unwrap();
        let video = moov
            .trak
            .iter()
            .find(|t| t.mdia.hdlr.handler == mp4_atom::FourCC::new(b"vide"))
            .expect("a video track");
        match (&video.mdia.minf.stbl.stsd.codecs[0], codec) {
            (Codec::Vp09(v), "VP9") => {
                assert_eq!((v.visual.width, v.visual.height), (640, 360));
                assert_eq!((v.vpcc.profile, v.vpcc.bit_depth), (0, 8), "{v:?}");
                assert_eq!(v.vpcc.level, 21, "640x360 at 30 fps");
            }
            (Codec::Av01(v), "AV1") => {
                assert_eq!((v.visual.width, v.visual.height), (640, 360));
                assert_eq!(v.av1c.seq_profile, 0, "{v:?}");
                assert!(!v.av1c.config_obus.is_empty(), "the sequence header OBU");
            }
            (other, _) => panic!("{codec}: video sample entry {other:?}"),
        }
        // The first part of the complete segment starts at a key frame.
        let msn = p.segments.last().unwrap().0;
        let (_, _, _, independent, uri) = p
            .parts
            .iter()
            .find(|x| x.0 == msn && x.1 == 0)
            .expect("parts of the last complete segment")
            .clone();
        assert!(independent);
        let part = server.get(&format!("/hls/{stream}/{uri}"));
        assert_eq!(part.status, 200);
        let file = std::env::temp_dir().join(format!(
            "roomcast-hls-{}-{probe_name}-init-part.mp4",
            std::process::id()
        ));
        std::fs::write(&file, [&init.body[..], &part.body[..]].concat()).unwrap();
        let out = Command::new("ffprobe")
            .args(["-v", "error", "-count_frames", "-show_entries"])
            .arg("stream=codec_name,codec_type,width,height,nb_read_frames")
            .args(["-of", "json"])
            .arg(&file)
            .output()
            .expect("run ffprobe");
        let _ = std::fs::remove_file(&file);
        assert!(
            out.status.success(),
            "ffprobe: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let probe: Value = serde_json::from_slice(&out.stdout).unwrap();
        let streams = probe["streams"].as_array().unwrap();
        let v = streams.iter().find(|s| s["codec_type"] == "video").unwrap();
        // Decoded without a complaint (-v error prints any decoding error).
        assert!(
            out.stderr.is_empty(),
            "ffprobe: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let decoded: u64 = v["nb_read_frames"].as_str().unwrap_or("0").parse().unwrap();
        assert!(decoded >= 2, "{probe}");
        assert_eq!(v["codec_name"], probe_name, "{probe}");
        assert_eq!(
            (v["width"].as_u64(), v["height"].as_u64()),
            (Some(640), Some(360)),
            "{probe}"
        );
        assert!(streams.iter().any(|s| s["codec_name"] == "opus"), "{probe}");
        println!("{codec}: {} via {sent}; ffprobe {probe}", p.map.unwrap());
        publisher.stop(MEDIA_TIMEOUT);
    }
}
