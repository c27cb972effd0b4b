//! Replays on the watch page, in headless Chromium (tests/browser/replay.mjs)
//! against the real binary with `[recording]` on: an ffmpeg H.264 broadcast is
//! listed on the offline watch page, plays through hls.js from its VOD playlist
//! and seeks to the middle; a WHIP VP8 broadcast (Chromium's fake camera)
//! plays and seeks, its WebM parts continuous, and an aiortc VP8 broadcast
//! with a hole in its audio plays on past the hole; with Synapse, the replay opened from the bot's "ended" notice link
//! shows the session's chat (read by the server from the room's timeline) in
//! order and in time with the video, and nothing said before or after it. Screenshots go to
//! tests/artifacts/replay/.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::matrix::*;
use common::*;
use serde_json::{Value, json};

const PAGE_TIMEOUT: Duration = Duration::from_secs(150);
const RECORDING_TIMEOUT: Duration = Duration::from_secs(60);

/// `[recording]` into `dir`, with short segments so a short broadcast has several.
fn recording_toml(dir: &Path) -> String {
    format!(
        "\n[recording]\nenabled = true\ndir = {:?}\nmin_free_gb = 0\nsegment_secs = 2\n",
        dir.display().to_string()
    )
}

/// A server recording into a temporary directory (dropped after the server).
fn recording_server() -> (TempDir, Server) {
    let rec_dir = TempDir::new("roomcast-replay");
    let server = Server::start_with(ServerOpts {
        extra_toml: recording_toml(rec_dir.path()),
        ..ServerOpts::default()
    });
    (rec_dir, server)
}

/// One scenario of tests/browser/replay.mjs.
fn replay(server: &Server, scenario: &str, args: &[&str]) -> JsonTool {
    let dir = node_dir();
    let mut cmd =
        Command::new(std::env::var_os("ROOMCAST_TEST_NODE").unwrap_or_else(|| "node".into()));
    cmd.current_dir(&dir)
        .arg(dir.join("replay.mjs"))
        .arg(scenario)
        .arg("--base")
        .arg(server.base_url())
        .arg("--artifacts")
        .arg(manifest_dir().join("tests/artifacts/replay"))
        .args(args);
    JsonTool::spawn(&format!("replay.mjs {scenario}"), cmd)
}

/// replay.mjs play of recording `id` of STREAM through `mode`, with `extra` options.
fn play_replay(server: &Server, id: &str, mode: &str, extra: &[&str]) -> JsonTool {
    let mut args = vec!["--stream", STREAM, "--id", id, "--expect-mode", mode];
    args.extend_from_slice(extra);
    replay(server, "play", &args)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The stream's newest recording once `done` says so.
fn wait_recording(server: &Server, stream: &str, done: impl Fn(&Value) -> bool) -> Value {
    wait_until(
        &format!("a recording of {stream}"),
        RECORDING_TIMEOUT,
        || {
            let r = server.get(&format!("/api/v1/streams/{stream}/recordings"));
            let v = r.json().ok()?;
            let newest = v["recordings"].get(0)?.clone();
            done(&newest).then_some(newest)
        },
    )
}

fn complete(r: &Value) -> bool {
    r["state"] == "complete"
}

/// Waits until the wall clock reaches `at_ms` (pacing a scenario in real time).
fn wait_clock(what: &str, at_ms: u64) {
    let wait = Duration::from_millis(at_ms.saturating_sub(now_ms()) + 5000);
    wait_until(what, wait, || (now_ms() >= at_ms).then_some(()));
}

#[test]
fn h264_replay_plays_and_seeks_on_the_watch_page() {
    let _serial = serial();
    let (_rec_dir, server) = recording_server();
    let mut ffmpeg = Publisher::ffmpeg(
        &server.publish_url(STREAM),
        FfmpegOpts {
            width: 640,
            height: 360,
            fps: 25,
            gop: 25,
            duration_s: Some(12.0),
            ..FfmpegOpts::default()
        },
    );
    server.wait_live(STREAM, LIVE_TIMEOUT);
    let rec = wait_recording(&server, STREAM, complete);
    ffmpeg.stop(Duration::from_secs(10));
    assert!(
        rec["video_codec"].as_str().unwrap().starts_with("avc1"),
        "{rec}"
    );
    let duration = rec["duration_s"].as_f64().unwrap();
    assert!(duration > 9.0, "{rec}");
    let id = rec["id"].as_str().unwrap();
    let duration_s = duration.to_string();
    let mut tool = play_replay(
        &server,
        id,
        "hls",
        &["--size", "640x360", "--duration", &duration_s],
    );
    let r = finish_scenario(&mut tool, "H.264 replay", PAGE_TIMEOUT);
    println!(
        "H.264 replay of {duration} s through {}: sought to {}",
        r["mode"], r["seek"]
    );
}

/// A WebM replay as Media Source Extensions get it (`?part=init`, then each
/// `?part=N`), joined as one file and read by ffprobe: the packet times of
/// its audio and of its video, in seconds. Asserts that each track's packets
/// come in time order, none stacked on the one before, across part boundaries
/// too (audio captured before a part's keyframe stays before the part;
/// stacked at its start, it left a gap in the audio at every boundary).
fn webm_part_times(server: &Server, id: &str, dir: &TempDir) -> [Vec<f64>; 2] {
    let path = format!("/recordings/{id}/replay.webm");
    let index: Value = serde_json::from_slice(&server.get(&format!("{path}?part=index")).body)
        .expect("the parts index is JSON");
    let parts = index["segments_ms"].as_array().expect("segments_ms").len();
    assert!(parts >= 2, "{index}");
    let mut webm = Vec::new();
    for part in std::iter::once("init".to_string()).chain((0..parts).map(|n| n.to_string())) {
        let r = server.get(&format!("{path}?part={part}"));
        assert_eq!(r.status, 200, "part {part}");
        webm.extend_from_slice(&r.body);
    }
    let file = dir.path().join("parts.webm");
    std::fs::write(&file, &webm).unwrap();
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "packet=codec_type,pts_time"])
        .args(["-of", "csv=p=0"])
        .arg(&file)
        .output()
        .expect("run ffprobe");
    assert!(
        out.status.success(),
        "ffprobe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    ["audio", "video"].map(|kind| {
        let times: Vec<f64> = text
            .lines()
            .filter_map(|l| l.trim().trim_end_matches(',').split_once(','))
            .filter(|(k, _)| *k == kind)
            .filter_map(|(_, t)| t.parse().ok())
            .collect();
        assert!(
            times.len() > 50,
            "{kind} packets in the parts: {}",
            times.len()
        );
        let stacked = times.windows(2).filter(|w| w[1] <= w[0]).count();
        println!(
            "WebM parts: {parts}, {} {kind} packets, largest step {:.0} ms",
            times.len(),
            largest_step(&times) * 1000.0
        );
        assert_eq!(
            stacked, 0,
            "{kind} packets at or before the one before them"
        );
        times
    })
}

/// The longest time between consecutive packets, in seconds.
fn largest_step(times: &[f64]) -> f64 {
    times.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max)
}

#[test]
fn whip_vp8_replay_plays_on_the_watch_page() {
    let _serial = serial();
    let (rec_dir, server) = recording_server();
    let key = server.key(STREAM).to_string();
    let mut publisher = common::publishers::chromium_publisher(
        &server.base_url(),
        STREAM,
        Some(&key),
        Some("VP8"),
        None,
    );
    let sample = publisher.wait_for("VP8 frames", MEDIA_TIMEOUT, |v| {
        v["type"] == "sample" && v["video"]["framesEncoded"].as_u64().unwrap_or(0) > 10
    });
    assert_eq!(sample["video"]["codec"], "video/VP8", "{sample}");
    server.wait_live(STREAM, LIVE_TIMEOUT);
    let started = wait_recording(&server, STREAM, |r| r["state"] == "recording");
    let t0 = started["started_ms"].as_u64().unwrap();
    wait_clock("10 s of VP8 recorded", t0 + 10_000);
    publisher.stop(MEDIA_TIMEOUT);
    let rec = wait_recording(&server, STREAM, complete);
    assert!(
        rec["video_codec"].as_str().unwrap().starts_with("vp08"),
        "{rec}"
    );
    let id = rec["id"].as_str().unwrap();
    webm_part_times(&server, id, &rec_dir);
    let mut tool = play_replay(&server, id, "webm", &[]);
    let r = finish_scenario(&mut tool, "VP8 replay", PAGE_TIMEOUT);
    println!("VP8 replay through {}: {r}", r["mode"]);
    // Through MSE, segment by segment (?part=N), not as one progressive file.
    assert!(r["mse_parts"].as_u64().unwrap_or(0) >= 2, "{r}");
}

/// A publisher whose audio stopped for a second (its timestamps jump over the
/// hole) leaves a hole in the replay's audio; through Media Source Extensions
/// the browser would wait at it for ever. The player jumps over it and plays on.
#[test]
fn a_replay_plays_on_past_a_hole_in_the_audio() {
    let _serial = serial();
    let (rec_dir, server) = recording_server();
    let mut publisher = common::publishers::aiortc_publisher(
        &server.whip_url(STREAM),
        common::publishers::WhipOpts {
            codec: "VP8",
            key: Some(server.key(STREAM).to_string()),
            audio_hole_s: Some((3.0, 1.0)),
            ..Default::default()
        },
    );
    server.wait_live(STREAM, LIVE_TIMEOUT);
    let started = wait_recording(&server, STREAM, |r| r["state"] == "recording");
    let t0 = started["started_ms"].as_u64().unwrap();
    publisher.wait_for("the hole in the audio", MEDIA_TIMEOUT, |v| {
        v["type"] == "audio_hole"
    });
    wait_clock("8 s recorded", t0 + 8_000);
    publisher.stop(MEDIA_TIMEOUT);
    let rec = wait_recording(&server, STREAM, complete);
    let id = rec["id"].as_str().unwrap();
    let [audio, _] = webm_part_times(&server, id, &rec_dir);
    let hole = largest_step(&audio);
    assert!(
        hole >= 0.5,
        "the replay's audio has no hole: largest step {hole} s"
    );
    let end = audio.last().copied().unwrap_or(0.0);
    let past = format!("{:.1}", end - 1.0);
    let mut tool = play_replay(&server, id, "webm", &["--no-seek", "--play-past", &past]);
    let r = finish_scenario(&mut tool, "replay past a hole", PAGE_TIMEOUT);
    println!(
        "played past a hole of {:.0} ms in the audio: {r}",
        hole * 1000.0
    );
}

#[test]
fn replay_shows_the_sessions_chat_in_order() {
    let _serial = serial();
    let rec_dir = TempDir::new("roomcast-replay");
    let mut env = MatrixEnv::start_browsable(&format!(
        "golive_delay_ms = 1000\n{}",
        recording_toml(rec_dir.path())
    ));
    let server = env.server();
    let alice = env.user("alice");
    alice.set_display_name("Alice");
    let bob = env.user("bob");
    bob.set_display_name("Bob");
    let bot = env.bot_id();
    let dm = alice.dm_bot(&bot);
    let settings = alice.live_new(&dm, &bot, "show");
    let key = key_from_settings(settings["content"]["body"].as_str().unwrap());
    let room = wait_until("the stream room's alias", MX_TIMEOUT, || {
        alice.resolve_alias("#live_show:localhost")
    });
    alice.join(&room);
    bob.join(&room);

    // Said before the session: not part of its chat.
    alice.send_text(&room, "before the show");
    wait_clock("the earlier message to be well before", now_ms() + 3000);
    let mut ffmpeg = Publisher::ffmpeg(
        &server.rtmp_url(&key),
        FfmpegOpts {
            width: 640,
            height: 360,
            fps: 25,
            gop: 25,
            ..FfmpegOpts::default()
        },
    );
    server.wait_live("show", LIVE_TIMEOUT);
    let started = wait_recording(server, "show", |r| r["state"] == "recording");
    assert_eq!(started["room_id"], room.as_str(), "{started}");
    let t0 = started["started_ms"].as_u64().unwrap();
    // Three seconds apart, from two people, one a reply and one with HTML.
    wait_clock("3 s into the session", t0 + 3000);
    let first = alice.send_text(&room, "Welcome, everyone");
    wait_clock("6 s into the session", t0 + 6000);
    bob.send_event(
        &room,
        "m.room.message",
        json!({
            "msgtype": "m.text", "body": "> <@alice:localhost> Welcome, everyone\n\nGlad to be here",
            "m.relates_to": {"m.in_reply_to": {"event_id": first}},
        }),
    );
    wait_clock("9 s into the session", t0 + 9000);
    alice.send_event(
        &room,
        "m.room.message",
        json!({
            "msgtype": "m.text", "body": "Last song!", "format": "org.matrix.custom.html",
            "formatted_body": "<b>Last</b> song!<script>window.__xss=1</script>",
        }),
    );
    wait_clock("12 s into the session", t0 + 12_000);
    ffmpeg.stop(Duration::from_secs(10));
    let rec = wait_recording(server, "show", complete);
    let ended = rec["ended_ms"].as_u64().unwrap();
    // Said after the session: not part of its chat either.
    wait_clock("well after the end", ended + 3000);
    alice.send_text(&room, "after the show");

    let id = rec["id"].as_str().unwrap().to_string();
    // The endpoint itself: messages in order, the HTML sanitised, the reply quoted.
    let r = server.get(&format!("/api/v1/recordings/{id}/chat"));
    assert_eq!(r.status, 200, "{}", r.text());
    let chat = r.json().unwrap();
    let msgs = chat["messages"].as_array().unwrap();
    let bodies: Vec<&str> = msgs.iter().map(|m| m["body"].as_str().unwrap()).collect();
    assert_eq!(
        bodies,
        ["Welcome, everyone", "Glad to be here", "Last song!"],
        "{chat}"
    );
    assert_eq!(chat["complete"], true, "{chat}");
    assert_eq!(msgs[0]["sender"], "Alice", "{chat}");
    assert_eq!(msgs[1]["reply_to"]["id"], first.as_str(), "{chat}");
    assert_eq!(msgs[1]["reply_to"]["body"], "Welcome, everyone", "{chat}");
    let html = msgs[2]["html"].as_str().unwrap();
    assert!(
        html.contains("<b>Last</b>") && !html.contains("script"),
        "{html}"
    );
    let unknown = server.get("/api/v1/recordings/AAAAAAAAAAAAAAAAAAAAAA/chat");
    assert_eq!(unknown.status, 404, "{}", unknown.text());

    // The page opens from the replay link of the bot's "ended" notice.
    let edit = wait_until("the ended edit with a replay link", MX_TIMEOUT, || {
        alice.messages_from(&room, &bot).into_iter().find(|e| {
            e["content"]["m.new_content"]["body"]
                .as_str()
                .is_some_and(|b| b.contains("replay: "))
        })
    });
    let body = edit["content"]["m.new_content"]["body"].as_str().unwrap();
    let link = body
        .split("replay: ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    assert!(
        link.contains(&format!("/watch/show?recording={id}")),
        "{link}"
    );
    let path = &link[link.find("/watch/").unwrap()..];

    let mut tool = replay(
        server,
        "chat",
        &[
            "--stream",
            "show",
            "--path",
            path,
            "--id",
            &id,
            "--bodies",
            &serde_json::to_string(&bodies).unwrap(),
        ],
    );
    let r = finish_scenario(&mut tool, "replay chat", PAGE_TIMEOUT);
    println!("replay chat: {}", r["shown"]);

    // The homeserver goes away: a replay opened meanwhile still gets the
    // chat read a moment ago (cached), without waiting on Synapse.
    env.synapse.stop();
    let t = std::time::Instant::now();
    let r = env.server().get(&format!("/api/v1/recordings/{id}/chat"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json().unwrap()["messages"], chat["messages"]);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}
