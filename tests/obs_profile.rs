//! OBS profiles (issue 16 item 1) with the real OBS Studio 29 (Debian's
//! `obs-studio`, headless under Xvfb with software GL): the zip from
//! `GET /api/v1/streams/{name}/obs-profile` is unpacked with `unzip`, its
//! RTMP folder imported into a fresh OBS config dir (what Profile → Import
//! does: copy the folder under `basic/profiles/`), and OBS started with
//! `--startstreaming --profile …` publishes: the stream goes live at
//! 1280×720 without B-frames, a keyframe every second, AAC transcoded to
//! Opus, and an aiortc viewer decodes. The API's refusals (no key, wrong
//! key, unknown stream). With Synapse: `!live obs` by DM sends a one-time
//! link (a page whose button POSTs) whose profile's key publishes; the link
//! is used up by its first download, not by opening the page, and a
//! `!live rotate` makes a fresh link 404; `!live slots obs` in the room
//! sends one link per stream of the room.

mod common;

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::matrix::*;
use common::*;
use serde_json::json;

/// OBS and its X server, stopped on drop (OBS first: SIGTERM ends its stream).
struct Obs {
    obs: Child,
    xvfb: Child,
    log: std::path::PathBuf,
}

impl Obs {
    fn log_tail(&self) -> String {
        let s = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Obs {
    fn drop(&mut self) {
        // SAFETY: a signal to our own child process.
        unsafe {
            libc::kill(self.obs.id() as i32, libc::SIGTERM);
        }
        let obs = &mut self.obs;
        if !poll_until(Duration::from_secs(15), || {
            matches!(obs.try_wait(), Ok(Some(_)))
        }) {
            let _ = self.obs.kill();
            let _ = self.obs.wait();
        }
        let _ = self.xvfb.kill();
        let _ = self.xvfb.wait();
    }
}

/// A fresh OBS config dir (`HOME/.config/obs-studio`) with no first-run
/// wizard and one scene (a colour source), and `profile` (a folder from the
/// zip) imported under `basic/profiles/`.
fn obs_home(home: &Path, profile: &Path) -> String {
    let base = home.join(".config/obs-studio");
    let profiles = base.join("basic/profiles");
    fs::create_dir_all(&profiles).unwrap();
    fs::create_dir_all(base.join("basic/scenes")).unwrap();
    let name = profile.file_name().unwrap().to_str().unwrap().to_string();
    let dest = profiles.join(&name);
    fs::create_dir_all(&dest).unwrap();
    for f in fs::read_dir(profile).unwrap() {
        let f = f.unwrap();
        fs::copy(f.path(), dest.join(f.file_name())).unwrap();
    }
    fs::write(
        base.join("global.ini"),
        format!(
            "[General]\nFirstRun=true\nLastVersion=486539266\nEnableAutoUpdates=false\n\
             [Basic]\nProfile={name}\nProfileDir={name}\nSceneCollection=Test\n\
             SceneCollectionFile=Test\nConfigOnNewProfile=false\n"
        ),
    )
    .unwrap();
    let color = json!({"id": "color_source", "versioned_id": "color_source_v3", "name": "Color",
        "uuid": "6a1f6c2e-0000-4000-8000-000000000001",
        "settings": {"color": 4278255360u32, "width": 1280, "height": 720}});
    let scene = json!({"id": "scene", "versioned_id": "scene", "name": "Scene",
        "uuid": "6a1f6c2e-0000-4000-8000-000000000002",
        "settings": {"items": [{"name": "Color", "source_uuid": color["uuid"], "visible": true,
            "id": 1, "pos": {"x": 0, "y": 0}, "scale": {"x": 1, "y": 1}, "bounds": {"x": 0, "y": 0},
            "bounds_type": 0, "align": 5, "bounds_align": 0, "rot": 0.0}], "id_counter": 1}});
    fs::write(
        base.join("basic/scenes/Test.json"),
        json!({"name": "Test", "current_scene": "Scene", "current_program_scene": "Scene",
               "scene_order": [{"name": "Scene"}], "sources": [color, scene]})
        .to_string(),
    )
    .unwrap();
    name
}

/// Starts OBS streaming with `profile`, headless.
fn start_obs(home: &Path, profile: &str) -> Obs {
    // Xvfb tells its display number on its stdout (-displayfd 1).
    let (mut reader, writer) = std::io::pipe().unwrap();
    let xvfb = Command::new("Xvfb")
        .args(["-displayfd", "1", "-screen", "0", "1280x800x24"])
        .args(["-nolisten", "tcp"])
        .stdout(writer)
        .stderr(Stdio::null())
        .spawn()
        .expect("Xvfb (apt-get install xvfb)");
    let mut display = String::new();
    let mut buf = [0u8; 16];
    while !display.ends_with('\n') {
        let n = reader.read(&mut buf).unwrap();
        assert!(n > 0, "Xvfb exited without a display number");
        display.push_str(std::str::from_utf8(&buf[..n]).unwrap());
    }
    let log = home.join("obs.log");
    let obs = Command::new("obs")
        .args([
            "--startstreaming",
            "--minimize-to-tray",
            "--profile",
            profile,
        ])
        .args(["--collection", "Test", "--scene", "Scene"])
        .args(["--disable-shutdown-check", "--multi"])
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("LIBGL_ALWAYS_SOFTWARE", "1")
        .env("DISPLAY", format!(":{}", display.trim()))
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .expect("obs (apt-get install obs-studio)");
    Obs { obs, xvfb, log }
}

/// OBS's own log (`logs/*.txt` in its config dir).
fn obs_log(home: &Path) -> String {
    let mut out = String::new();
    if let Ok(dir) = fs::read_dir(home.join(".config/obs-studio/logs")) {
        for f in dir.flatten() {
            out.push_str(&fs::read_to_string(f.path()).unwrap_or_default());
        }
    }
    out
}

/// Unzips with Info-ZIP's `unzip` (an archiver that is not ours).
fn unzip(zip: &[u8], into: &Path) {
    let file = into.join("profile.zip");
    fs::write(&file, zip).unwrap();
    let out = Command::new("unzip")
        .arg("-q")
        .arg(&file)
        .arg("-d")
        .arg(into)
        .output()
        .expect("unzip (apt-get install unzip)");
    assert!(
        out.status.success(),
        "unzip: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn get_profile(server: &Server, stream: &str, key: Option<&str>) -> HttpResponse {
    let auth = key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    http::request(
        "GET",
        &server.url(&format!("/api/v1/streams/{stream}/obs-profile")),
        &headers,
        None,
    )
    .unwrap()
}

fn post(server: &Server, path: &str) -> HttpResponse {
    http::request("POST", &server.url(path), &[], None).unwrap()
}

#[test]
fn obs_29_publishes_with_the_api_profile() {
    let _serial = serial();
    let server = Server::start("");
    let key = server.key(STREAM).to_string();

    // Refusals first.
    assert_eq!(get_profile(&server, STREAM, None).status, 401);
    let wrong = get_profile(&server, STREAM, Some(server.key(STREAM2)));
    assert_eq!(wrong.status, 403, "{}", wrong.text());
    assert_eq!(get_profile(&server, "nosuch", Some(&key)).status, 404);

    let r = get_profile(&server, STREAM, Some(&key));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.content_type(), "application/zip");
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let dir = TempDir::new("roomcast-obs");
    unzip(&r.body, dir.path());
    let folder = dir.path().join(format!("roomcast-{STREAM}"));
    let service: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(folder.join("service.json")).unwrap()).unwrap();
    assert_eq!(service["settings"]["key"], key.as_str());
    assert_eq!(
        service["settings"]["server"],
        format!("rtmp://127.0.0.1:{}/live", server.rtmp.port())
    );
    let whip: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(
            dir.path()
                .join(format!("roomcast-{STREAM}-whip/service.json")),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(whip["settings"]["bearer_token"], key.as_str());

    let home = dir.path().join("home");
    let profile = obs_home(&home, &folder);
    let obs = start_obs(&home, &profile);
    let live = wait_until("OBS to go live", Duration::from_secs(120), || {
        let v = server.api_stream(STREAM)?;
        (v["live"] == true).then_some(v)
    });
    assert_eq!(live["ingest"]["protocol"], "rtmp", "{live}");
    let video = wait_until("OBS's video stats", Duration::from_secs(30), || {
        let v = server.api_stream(STREAM)?["video"].clone();
        v["keyframe_interval_ms"].as_u64().map(|_| v)
    });
    println!("OBS video: {video}");
    assert_eq!(video["codec"], "H264", "{video}");
    assert_eq!(video["width"], 1280, "{video}");
    assert_eq!(video["height"], 720, "{video}");
    assert_eq!(video["bframes"], false, "{video}");
    let gop = video["keyframe_interval_ms"].as_u64().unwrap();
    assert!((800..=1200).contains(&gop), "keyframe interval {gop} ms");
    let audio = wait_until("OBS's audio", Duration::from_secs(20), || {
        let a = server.api_stream(STREAM)?["audio"].clone();
        (a["transcoded"] == true).then_some(a)
    });
    assert_eq!(audio["codec"], "opus", "{audio}");

    let mut viewer = aiortc_viewer(
        &server.whep_url(STREAM),
        ViewerOpts {
            frames: 30,
            audio_frames: 10,
            timeout_s: 60.0,
            ..ViewerOpts::default()
        },
    );
    let result = viewer.result(Duration::from_secs(90));
    assert!(
        result["video_frames"].as_u64().unwrap_or(0) >= 30,
        "{result}; OBS log:\n{}",
        obs.log_tail()
    );
    // OBS applied every setting of the profile (its own log says so).
    let log = obs_log(&home);
    for needle in [
        "[x264 encoder: 'advanced_video_stream'] tune: zerolatency",
        "\trate_control: CBR",
        "\tbitrate:      2500",
        "\tkeyint:       30",
        "\twidth:        1280",
        "\tbframes = 0",
        "[FFmpeg aac encoder: 'adv_stream_aac'] bitrate: 160",
        "samples per sec: 48000",
        "fps:               30/1",
    ] {
        assert!(log.contains(needle), "OBS log lacks {needle:?}:\n{log}");
    }
    drop(obs);
    server.assert_no_key_logged();
}

#[test]
fn obs_links_by_dm_are_one_time_and_die_with_the_key() {
    let _serial = serial();
    let env = MatrixEnv::start("");
    let bot = env.bot_id();
    let alice = env.user("alice");
    let mallory = env.user("mallory");
    let dm = alice.dm_bot(&bot);
    alice.send_text(&dm, "!live new show");
    alice.wait_message(&dm, &bot, "Stream Key: ");
    let server = env.server();

    // A link path (`/obs/SECRET`) from the bot's DMs other than `old`.
    let link_path = |old: Option<&str>| -> String {
        wait_until("an OBS link by DM", MX_TIMEOUT, || {
            alice
                .messages_from(&dm, &bot)
                .into_iter()
                .filter_map(|e| e["content"]["body"].as_str().map(str::to_string))
                .filter(|b| b.contains("OBS profile for 'show'"))
                .filter_map(|b| {
                    let at = b.find("/obs/")?;
                    Some(b[at..].split_whitespace().next()?.to_string())
                })
                .find(|p| Some(p.as_str()) != old)
        })
    };

    // Someone who does not manage the stream gets nothing.
    let mdm = mallory.dm_bot(&bot);
    mallory.send_text(&mdm, "!live obs show");
    mallory.wait_message(&mdm, &bot, "Only room admins");

    alice.send_text(&dm, "!live obs show");
    let first = link_path(None);
    // The bot sends the DM first and commits the link's key just after
    // (src/matrix/obs.rs): until then the link answers 404. A person takes
    // longer than that to click; the test waits for it.
    wait_until("the link's key committed", MX_TIMEOUT, || {
        (server.get(&first).status == 200).then_some(())
    });
    // Opening the link (or a homeserver's URL preview) spends nothing.
    for _ in 0..2 {
        let page = server.get(&first);
        assert_eq!(page.status, 200, "{}", page.text());
        assert!(
            page.text().contains("<form method=\"post\">"),
            "{}",
            page.text()
        );
    }
    let r = post(server, &first);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.content_type(), "application/zip");
    let dir = TempDir::new("roomcast-obs-link");
    unzip(&r.body, dir.path());
    let service: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(dir.path().join("roomcast-show/service.json")).unwrap(),
    )
    .unwrap();
    let key = service["settings"]["key"].as_str().unwrap().to_string();
    // Used up.
    assert_eq!(post(server, &first).status, 404);
    assert_eq!(server.get(&first).status, 404);
    // The profile's key publishes.
    let mut ffmpeg = Publisher::ffmpeg(&server.rtmp_url(&key), FfmpegOpts::small());
    server.wait_live("show", LIVE_TIMEOUT);
    ffmpeg.stop(Duration::from_secs(10));

    // A fresh link, then a rotation: the link is dead before its first use.
    alice.send_text(&dm, "!live obs show");
    let second = link_path(Some(&first));
    alice.send_text(&dm, "!live rotate show");
    wait_until("the rotated key", MX_TIMEOUT, || {
        (alice
            .messages_from(&dm, &bot)
            .iter()
            .filter(|e| {
                e["content"]["body"]
                    .as_str()
                    .is_some_and(|b| b.contains("Stream Key: "))
            })
            .count()
            >= 2)
            .then_some(())
    });
    // The rotation, like the link, sends its DM first and commits its key
    // just after: the link dies at that commit.
    wait_until("the rotation committed", MX_TIMEOUT, || {
        (server.get(&second).status == 404).then_some(())
    });
    assert_eq!(post(server, &second).status, 404);
    // Malformed and unknown links are 404 too.
    assert_eq!(post(server, "/obs/nope").status, 404);
    assert_eq!(
        post(server, &format!("/obs/{}", "A".repeat(43))).status,
        404
    );

    // `!live slots obs` in the room: one link per stream of the room.
    let room = wait_until("the room alias", MX_TIMEOUT, || {
        alice.resolve_alias("#live_show:localhost")
    });
    alice.join(&room);
    alice.send_text(&room, "!live slots add cam2");
    alice.wait_message(&room, &bot, "Stream 'cam2' is attached");
    alice.send_text(&room, "!live slots obs");
    alice.wait_message(&room, &bot, "OBS profile links for show, cam2");
    let cam2 = wait_until("cam2's OBS link", MX_TIMEOUT, || {
        alice
            .messages_from(&dm, &bot)
            .into_iter()
            .filter_map(|e| e["content"]["body"].as_str().map(str::to_string))
            .find(|b| b.contains("OBS profile for 'cam2'"))
    });
    let at = cam2.find("/obs/").unwrap();
    let r = post(server, cam2[at..].split_whitespace().next().unwrap());
    assert_eq!(r.status, 200, "{}", r.text());
    let dir = TempDir::new("roomcast-obs-slot");
    unzip(&r.body, dir.path());
    assert!(dir.path().join("roomcast-cam2/service.json").is_file());

    server.assert_no_key_logged();
    assert!(
        !server.log_lines().iter().any(|l| l.contains(&first[5..])),
        "a link secret was logged"
    );
}
