//! Recording (issue 14, the server side), against the real binary: ffmpeg
//! publishes, ffprobe reads what roomcast wrote, the process is SIGKILLed
//! mid-recording, the recording directory fills up on a small tmpfs while
//! an aiortc viewer watches, retention deletes the oldest recording, and a
//! broadcast longer than `max_recording_hours` rolls over.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::faults::SmallFs;
use common::*;
use serde_json::Value;

const REC_TIMEOUT: Duration = Duration::from_secs(30);

fn recording_toml(dir: &Path, extra: &str) -> String {
    format!(
        "[recording]\nenabled = true\ndir = \"{}\"\nsegment_secs = 2\ncontinue_within_ms = 1500\nmin_free_gb = 0\n{extra}\n",
        dir.display()
    )
}

fn recordings(server: &Server, stream: &str) -> Vec<Value> {
    let r = server.get(&format!("/api/v1/streams/{stream}/recordings"));
    assert_eq!(r.status, 200, "recordings list: {}", r.text());
    r.json().expect("JSON")["recordings"]
        .as_array()
        .expect("recordings array")
        .clone()
}

/// Waits for the stream's newest recording to reach `state`.
fn wait_recording(server: &Server, stream: &str, state: &str, timeout: Duration) -> Value {
    wait_until(&format!("a recording of {stream} {state}"), timeout, || {
        recordings(server, stream)
            .into_iter()
            .next()
            .filter(|r| r["state"] == state)
    })
}

/// Polls the API every 50 ms until the stream's `live` is `live`; returns when.
fn wait_live_state(server: &Server, stream: &str, live: bool, timeout: Duration) -> Instant {
    wait_until(&format!("{stream} live={live}"), timeout, || {
        let v = server.api_stream(stream)?;
        (v["live"] == live).then(Instant::now)
    })
}

/// `ffprobe -show_format -show_streams` of a file or URL as JSON.
fn ffprobe(input: &str) -> Value {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-print_format",
            "json",
            "-show_format",
            "-show_streams",
        ])
        .arg(input)
        .output()
        .expect("run ffprobe");
    assert!(
        out.status.success(),
        "ffprobe {input}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ffprobe JSON")
}

fn duration_of(probe: &Value) -> f64 {
    probe["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("no duration in {probe}"))
}

fn stream_of<'a>(probe: &'a Value, kind: &str) -> &'a Value {
    probe["streams"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["codec_type"] == kind))
        .unwrap_or_else(|| panic!("no {kind} stream in {probe}"))
}

fn segment_lines(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("index.txt"))
        .map(|t| t.lines().filter(|l| l.starts_with("s ")).count())
        .unwrap_or(0)
}

#[test]
fn a_broadcast_with_a_takeover_is_one_recording_served_as_mp4_and_hls() {
    let _g = serial();
    let dir = TempDir::new("roomcast-rec");
    let server = Server::start(&recording_toml(dir.path(), ""));
    let url = server.publish_url(STREAM);
    let mut a = Publisher::ffmpeg(&url, FfmpegOpts::default());
    let live_at = wait_live_state(&server, STREAM, true, LIVE_TIMEOUT);
    let rec = wait_recording(&server, STREAM, "recording", REC_TIMEOUT);
    assert_eq!(rec["recording"]["status"], "ok", "{rec}");
    // Ten seconds in, a second publisher takes the stream over for ten more.
    poll_until(Duration::from_secs(10), || {
        live_at.elapsed() >= Duration::from_secs(10)
    });
    let mut b = Publisher::ffmpeg(
        &url,
        FfmpegOpts {
            duration_s: Some(10.0),
            ..FfmpegOpts::default()
        },
    );
    wait_until("A taken over", Duration::from_secs(15), || {
        server
            .log_lines()
            .iter()
            .any(|l| l.contains("took over") || l.contains("taken over"))
            .then_some(())
    });
    a.kill();
    assert!(b.wait_exit(Duration::from_secs(30)).is_some(), "B ends");
    let offline_at = wait_live_state(&server, STREAM, false, Duration::from_secs(15));
    let broadcast = offline_at.duration_since(live_at).as_secs_f64();
    let rec = wait_recording(&server, STREAM, "complete", REC_TIMEOUT);
    println!("broadcast {broadcast:.2} s; recording {rec}");
    assert_eq!(recordings(&server, STREAM).len(), 1, "one recording");

    // The index: the right duration, codecs, the contract's fields.
    let id = rec["id"].as_str().unwrap();
    assert!(
        id.len() >= 32 && id.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{id}"
    );
    let indexed = rec["duration_s"].as_f64().unwrap();
    assert!(
        (indexed - broadcast).abs() <= 1.0,
        "indexed {indexed} s for a {broadcast:.2} s broadcast"
    );
    assert!(
        rec["video_codec"].as_str().unwrap().starts_with("avc1"),
        "{rec}"
    );
    assert_eq!(rec["audio_codec"], "opus");
    assert_eq!(rec["stream"], STREAM);
    assert!(rec["ended_ms"].as_i64().unwrap() > rec["started_ms"].as_i64().unwrap());
    assert_eq!(rec["playlist"], format!("/recordings/{id}/index.m3u8"));
    assert_eq!(rec["download"], format!("/recordings/{id}.mp4"));
    assert_eq!(
        server
            .get(&format!("/api/v1/recordings/{id}"))
            .json()
            .unwrap()["id"],
        id
    );

    // The download: H.264 1280×720 and audio, the full duration.
    let download = server.get(&format!("/recordings/{id}.mp4"));
    assert_eq!(download.status, 200);
    let file = dir.path().join("download.mp4");
    std::fs::write(&file, &download.body).unwrap();
    let probe = ffprobe(file.to_str().unwrap());
    let v = stream_of(&probe, "video");
    assert_eq!(v["codec_name"], "h264");
    assert_eq!(
        (v["width"].as_u64(), v["height"].as_u64()),
        (Some(1280), Some(720))
    );
    stream_of(&probe, "audio");
    let d = duration_of(&probe);
    assert!(
        (d - indexed).abs() <= 0.5,
        "the .mp4 lasts {d} s, indexed {indexed} s"
    );
    // Both tracks start at 0 (the hub's stream clock does not).
    for kind in ["video", "audio"] {
        let start: f64 = stream_of(&probe, kind)["start_time"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap();
        assert!(start.abs() < 0.05, "{kind} starts at {start} s");
    }

    // The HLS VOD playlist: byte ranges, a discontinuity at the takeover,
    // and ffprobe reads the whole of it.
    let playlist = server.get(&format!("/recordings/{id}/index.m3u8")).text();
    assert!(playlist.contains("#EXT-X-PLAYLIST-TYPE:VOD"), "{playlist}");
    assert!(playlist.contains("#EXT-X-ENDLIST"), "{playlist}");
    assert!(playlist.contains("#EXT-X-BYTERANGE:"), "{playlist}");
    assert!(
        playlist.contains("#EXT-X-DISCONTINUITY"),
        "the takeover: {playlist}"
    );
    let probe = ffprobe(&server.url(&format!("/recordings/{id}/index.m3u8")));
    assert_eq!(stream_of(&probe, "video")["codec_name"], "h264");
    let d = duration_of(&probe);
    assert!(
        (d - indexed).abs() <= 1.0,
        "the playlist lasts {d} s, indexed {indexed} s"
    );

    // A Range request returns those bytes of the download.
    let r = http::request(
        "GET",
        &server.url(&format!("/recordings/{id}.mp4")),
        &[("Range", "bytes=1000-4999")],
        None,
    )
    .unwrap();
    assert_eq!(r.status, 206, "{:?}", r.headers);
    assert_eq!(r.body, download.body[1000..5000]);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 1000-4999/{}", download.body.len()).as_str())
    );
    let tail = http::request(
        "GET",
        &server.url(&format!("/recordings/{id}.mp4")),
        &[("Range", "bytes=-100")],
        None,
    )
    .unwrap();
    assert_eq!(tail.body, download.body[download.body.len() - 100..]);
    let past = http::request(
        "GET",
        &server.url(&format!("/recordings/{id}.mp4")),
        &[("Range", &format!("bytes={}-", download.body.len()))],
        None,
    )
    .unwrap();
    assert_eq!(past.status, 416);

    // Deleting needs recording.admin_token (none configured here).
    let del = http::request(
        "DELETE",
        &server.url(&format!("/api/v1/recordings/{id}")),
        &[],
        None,
    )
    .unwrap();
    assert_eq!(del.status, 403, "{}", del.text());
    let metrics = server.get("/metrics").text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("roomcast_recording_bytes_written_total ") && !l.ends_with(" 0")),
        "bytes written in /metrics"
    );
}

#[test]
fn a_recording_cut_by_sigkill_is_indexed_and_plays_after_a_restart() {
    let _g = serial();
    let state = TempDir::new("roomcast-rec-kill");
    let rec_dir = state.path().join("rec");
    let opts = || ServerOpts {
        state_dir: Some(state.path().to_path_buf()),
        streams: vec![(STREAM.to_string(), "k-0123456789abcdef".to_string())],
        extra_toml: recording_toml(&rec_dir, ""),
        ..ServerOpts::default()
    };
    let server = Server::start_with(opts());
    let _ffmpeg = Publisher::ffmpeg(&server.publish_url(STREAM), FfmpegOpts::small());
    let live_at = wait_live_state(&server, STREAM, true, LIVE_TIMEOUT);
    let rec = wait_recording(&server, STREAM, "recording", REC_TIMEOUT);
    let id = rec["id"].as_str().unwrap().to_string();
    let dir = rec_dir.join(&id);
    wait_until("three segments on disk", REC_TIMEOUT, || {
        (segment_lines(&dir) >= 3).then_some(())
    });
    // SIGKILL in the middle of the next segment.
    poll_until(Duration::from_secs(2), || {
        live_at.elapsed().as_secs_f64() % 2.0 > 1.0
    });
    unsafe { libc::kill(server.pid() as i32, libc::SIGKILL) };
    let killed_at = live_at.elapsed().as_secs_f64();
    drop(server);

    let server = Server::start_with(opts());
    let rec = wait_until("the recording indexed as interrupted", REC_TIMEOUT, || {
        let r = server.get(&format!("/api/v1/recordings/{id}"));
        let v: Value = r.json().ok()?;
        (v["state"] == "interrupted").then_some(v)
    });
    println!("killed {killed_at:.2} s in; after the restart: {rec}");
    server.wait_for_log(
        "closed a recording interrupted by a crash",
        Duration::from_secs(5),
    );
    let indexed = rec["duration_s"].as_f64().unwrap();
    // At most the segment in progress (2 s) is lost, plus the start-up.
    assert!(
        indexed <= killed_at + 0.5 && indexed >= killed_at - 2.0 - 1.0,
        "{indexed} s indexed, killed {killed_at:.2} s in"
    );
    let download = server.get(&format!("/recordings/{id}.mp4"));
    assert_eq!(download.status, 200);
    let file = state.path().join("download.mp4");
    std::fs::write(&file, &download.body).unwrap();
    let probe = ffprobe(file.to_str().unwrap());
    assert_eq!(stream_of(&probe, "video")["codec_name"], "h264");
    let d = duration_of(&probe);
    assert!(
        (d - indexed).abs() <= 0.5,
        "the .mp4 lasts {d} s, indexed {indexed} s"
    );
    // Decodes to the end without an error.
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-xerror", "-i"])
        .arg(&file)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "ffmpeg decode: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // SIGTERM instead: the recording writes what it has and is complete.
    drop(_ffmpeg);
    let mut server = server;
    let _ffmpeg = Publisher::ffmpeg(&server.publish_url(STREAM), FfmpegOpts::small());
    let rec = wait_until("a second recording", REC_TIMEOUT, || {
        recordings(&server, STREAM)
            .into_iter()
            .next()
            .filter(|r| r["id"] != id.as_str() && r["state"] == "recording")
    });
    let second = rec["id"].as_str().unwrap().to_string();
    wait_until("a segment of it on disk", REC_TIMEOUT, || {
        (segment_lines(&rec_dir.join(&second)) >= 1).then_some(())
    });
    server.signal("TERM");
    assert!(server.wait_exit(Duration::from_secs(10)).is_some());
    drop(server);
    let server = Server::start_with(opts());
    let rec: Value = server
        .get(&format!("/api/v1/recordings/{second}"))
        .json()
        .unwrap();
    assert_eq!(rec["state"], "complete", "ended at SIGTERM: {rec}");
    assert!(rec["duration_s"].as_f64().unwrap() >= 2.0, "{rec}");
}

#[test]
fn a_full_recording_disk_pauses_recording_and_the_live_stream_goes_on() {
    let _g = serial();
    let fs = match SmallFs::mount(12 * 1024) {
        Ok(fs) => fs,
        Err(e) => panic!("this test mounts a tmpfs and needs root: {e}"),
    };
    let rec_dir: PathBuf = fs.dir.join("rec");
    // Pause below 2 MB free.
    let server = Server::start(
        &recording_toml(&rec_dir, "").replace("min_free_gb = 0", "min_free_gb = 0.002"),
    );
    let _ffmpeg = Publisher::ffmpeg(&server.publish_url(STREAM), FfmpegOpts::small());
    server.wait_live(STREAM, LIVE_TIMEOUT);
    let mut viewer = aiortc_viewer(
        &server.whep_url(STREAM),
        ViewerOpts {
            duration_s: Some(60.0),
            ..ViewerOpts::default()
        },
    );
    let frames = |v: &Value| v["video_frames"].as_u64().unwrap_or(0);
    let decoded = |viewer: &JsonTool| viewer.last_of("progress").map_or(0, |v| frames(&v));
    viewer.wait_for("a decoded frame", MEDIA_TIMEOUT, |v| {
        v["type"] == "progress" && frames(v) > 0
    });
    let rec = wait_recording(&server, STREAM, "recording", REC_TIMEOUT);
    let id = rec["id"].as_str().unwrap().to_string();
    wait_until("a segment on disk", REC_TIMEOUT, || {
        (segment_lines(&rec_dir.join(&id)) >= 1).then_some(())
    });

    let from = server.log_len();
    let filler = fs.fill();
    let line = server.wait_for_log_from(from, "recording: paused", REC_TIMEOUT);
    println!("log: {line}");
    let rec = wait_recording(&server, STREAM, "recording", REC_TIMEOUT);
    assert_eq!(rec["recording"]["status"], "paused", "{rec}");
    assert!(
        rec["recording"]["reason"]
            .as_str()
            .unwrap()
            .contains("min_free_gb"),
        "{rec}"
    );
    let metrics = server.get("/metrics").text();
    assert!(
        metrics.contains("roomcast_recordings_active{status=\"paused\"} 1"),
        "{metrics}"
    );
    // The viewer keeps decoding while recording is paused.
    let before = decoded(&viewer);
    viewer.wait_for("60 more decoded frames while paused", MEDIA_TIMEOUT, |v| {
        v["type"] == "progress" && frames(v) >= before + 60
    });
    let segments_paused = segment_lines(&rec_dir.join(&id));

    std::fs::remove_file(&filler).unwrap();
    server.wait_for_log_from(from, "recording: writing again", REC_TIMEOUT);
    wait_until("segments written again", REC_TIMEOUT, || {
        (segment_lines(&rec_dir.join(&id)) > segments_paused).then_some(())
    });
    let rec = wait_recording(&server, STREAM, "recording", REC_TIMEOUT);
    assert_eq!(rec["recording"]["status"], "ok", "{rec}");
    // After the gap, the playlist marks a discontinuity.
    let playlist = server.get(&format!("/recordings/{id}/index.m3u8")).text();
    assert!(playlist.contains("#EXT-X-DISCONTINUITY"), "{playlist}");
    let before = decoded(&viewer);
    viewer.wait_for("more decoded frames after", MEDIA_TIMEOUT, |v| {
        v["type"] == "progress" && frames(v) >= before + 30
    });
    viewer.kill();
}

#[test]
fn retention_deletes_the_oldest_recording_over_max_total_gb() {
    let _g = serial();
    let state = TempDir::new("roomcast-rec-retention");
    let rec_dir = state.path().join("rec");
    let opts = |extra: &str| ServerOpts {
        state_dir: Some(state.path().to_path_buf()),
        streams: vec![(STREAM.to_string(), "k-0123456789abcdef".to_string())],
        extra_toml: recording_toml(&rec_dir, extra),
        ..ServerOpts::default()
    };
    let server = Server::start_with(opts(""));
    let mut ids = Vec::new();
    let mut sizes = Vec::new();
    for _ in 0..2 {
        let mut p = Publisher::ffmpeg(
            &server.publish_url(STREAM),
            FfmpegOpts {
                duration_s: Some(3.0),
                ..FfmpegOpts::small()
            },
        );
        server.wait_live(STREAM, LIVE_TIMEOUT);
        p.wait_exit(Duration::from_secs(20));
        let rec = wait_recording(&server, STREAM, "complete", REC_TIMEOUT);
        assert!(!ids.contains(&rec["id"]), "a new recording");
        ids.push(rec["id"].clone());
        sizes.push(rec["bytes"].as_u64().unwrap());
    }
    drop(server);
    // Room for the newest, not for both: the oldest goes.
    let cap_gb = (sizes[1] + sizes[0] / 2) as f64 / 1e9;
    let server = Server::start_with(opts(&format!("max_total_gb = {cap_gb}")));
    let line = server.wait_for_log("deleted by retention", REC_TIMEOUT);
    println!("sizes {sizes:?}, cap {cap_gb} GB: {line}");
    assert!(line.contains(ids[0].as_str().unwrap()), "{line}");
    let left: Vec<Value> = recordings(&server, STREAM)
        .iter()
        .map(|r| r["id"].clone())
        .collect();
    assert_eq!(left, vec![ids[1].clone()]);
    assert!(!rec_dir.join(ids[0].as_str().unwrap()).exists());
    assert!(rec_dir.join(ids[1].as_str().unwrap()).exists());
    assert_eq!(
        server
            .get(&format!("/api/v1/recordings/{}", ids[0].as_str().unwrap()))
            .status,
        404
    );
}

#[test]
fn a_publisher_back_within_the_debounce_continues_the_same_recording() {
    let _g = serial();
    let dir = TempDir::new("roomcast-rec-reconnect");
    let server = Server::start(
        &recording_toml(dir.path(), "")
            .replace("continue_within_ms = 1500", "continue_within_ms = 6000"),
    );
    let short = || FfmpegOpts {
        duration_s: Some(3.0),
        ..FfmpegOpts::small()
    };
    let mut first = Publisher::ffmpeg(&server.publish_url(STREAM), short());
    let rec = wait_recording(&server, STREAM, "recording", REC_TIMEOUT);
    assert!(first.wait_exit(Duration::from_secs(20)).is_some());
    wait_live_state(&server, STREAM, false, Duration::from_secs(10));
    // The publisher reconnects (OBS after a network blip).
    let mut second = Publisher::ffmpeg(&server.publish_url(STREAM), short());
    wait_live_state(&server, STREAM, true, LIVE_TIMEOUT);
    assert!(second.wait_exit(Duration::from_secs(20)).is_some());
    let done = wait_recording(&server, STREAM, "complete", REC_TIMEOUT);
    assert_eq!(done["id"], rec["id"], "one recording for both");
    assert_eq!(recordings(&server, STREAM).len(), 1);
    let d = done["duration_s"].as_f64().unwrap();
    assert!((d - 6.0).abs() <= 1.0, "both publishes recorded: {done}");
    let playlist = server
        .get(&format!(
            "/recordings/{}/index.m3u8",
            done["id"].as_str().unwrap()
        ))
        .text();
    assert!(playlist.contains("#EXT-X-DISCONTINUITY"), "{playlist}");
}

#[test]
fn a_whip_vp8_publish_is_recorded_as_received() {
    let _g = serial();
    let dir = TempDir::new("roomcast-rec-vp8");
    let server = Server::start(&recording_toml(dir.path(), ""));
    let mut publisher = common::publishers::aiortc_publisher(
        &server.whip_url(STREAM),
        common::publishers::WhipOpts {
            codec: "VP8",
            key: Some(server.key(STREAM).to_string()),
            duration_s: Some(6.0),
            ..Default::default()
        },
    );
    let rec = wait_recording(&server, STREAM, "recording", LIVE_TIMEOUT);
    assert!(publisher.exit_status(Duration::from_secs(30)).is_some());
    let done = wait_recording(&server, STREAM, "complete", REC_TIMEOUT);
    assert_eq!(done["id"], rec["id"]);
    println!("{done}");
    assert!(
        done["video_codec"].as_str().unwrap().starts_with("vp08"),
        "{done}"
    );
    let d = done["duration_s"].as_f64().unwrap();
    assert!(d >= 3.0, "{done}");
    let download = server.get(&format!("/recordings/{}.mp4", rec["id"].as_str().unwrap()));
    let file = dir.path().join("vp8.mp4");
    std::fs::write(&file, &download.body).unwrap();
    let probe = ffprobe(file.to_str().unwrap());
    assert_eq!(stream_of(&probe, "video")["codec_name"], "vp8", "{probe}");
    assert_eq!(stream_of(&probe, "audio")["codec_name"], "opus", "{probe}");
    assert!((duration_of(&probe) - d).abs() <= 0.5, "{probe}");
}

#[test]
fn a_broadcast_longer_than_max_recording_hours_rolls_over_without_a_gap() {
    let _g = serial();
    let dir = TempDir::new("roomcast-rec-rollover");
    // 0.0025 h = 9 s, with 2 s segments and a keyframe a second.
    let server = Server::start(&recording_toml(dir.path(), "max_recording_hours = 0.0025"));
    let mut p = Publisher::ffmpeg(
        &server.publish_url(STREAM),
        FfmpegOpts {
            duration_s: Some(22.0),
            ..FfmpegOpts::small()
        },
    );
    let live_at = wait_live_state(&server, STREAM, true, LIVE_TIMEOUT);
    assert!(
        p.wait_exit(Duration::from_secs(40)).is_some(),
        "ffmpeg ends"
    );
    let offline_at = wait_live_state(&server, STREAM, false, Duration::from_secs(15));
    let broadcast = offline_at.duration_since(live_at).as_secs_f64();
    let mut recs = wait_until("every recording complete", REC_TIMEOUT, || {
        let list = recordings(&server, STREAM);
        (list.len() >= 2 && list.iter().all(|r| r["state"] == "complete")).then_some(list)
    });
    recs.reverse();
    let durations: Vec<f64> = recs
        .iter()
        .map(|r| r["duration_s"].as_f64().unwrap())
        .collect();
    println!("broadcast {broadcast:.2} s; recordings {durations:?}");
    assert!(
        server
            .log_lines()
            .iter()
            .any(|l| l.contains("reached recording.max_recording_hours")),
        "the rollover is logged"
    );
    // 22 s cut at 9 s (at the next keyframe): three recordings.
    assert_eq!(recs.len(), 3, "{recs:?}");
    for d in &durations[..2] {
        assert!((8.0..=11.0).contains(d), "a full recording lasts {d} s");
    }
    // Nothing lost between them, nothing in both.
    let total: f64 = durations.iter().sum();
    assert!(
        (total - broadcast).abs() <= 1.5,
        "{total} s recorded of a {broadcast:.2} s broadcast"
    );
    for w in recs.windows(2) {
        let gap = w[1]["started_ms"].as_i64().unwrap() - w[0]["ended_ms"].as_i64().unwrap();
        assert!(gap.abs() <= 1500, "{gap} ms between {} and {}", w[0], w[1]);
    }
    // Each plays on its own, from 0.
    for (r, d) in recs.iter().zip(&durations) {
        let id = r["id"].as_str().unwrap();
        let probe = ffprobe(&server.url(&format!("/recordings/{id}/index.m3u8")));
        assert_eq!(stream_of(&probe, "video")["codec_name"], "h264");
        let played = duration_of(&probe);
        assert!(
            (played - d).abs() <= 1.0,
            "{id} plays {played} s, indexed {d} s"
        );
    }
}
