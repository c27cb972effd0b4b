//! Recording in Matrix rooms, with a real Synapse: a private room's stream
//! is recorded; the "ended" edit of its go-live notice carries a replay link
//! that works (with the link's token) while the recording refuses a viewer
//! without access; `!live recordings` lists it; `!live delete-recording` is
//! refused to someone else and done for the owner; `!live record off` stops
//! recording the stream's next broadcast; once the stream is detached from
//! its private room (and so public), its private recording and the room's
//! chat stay refused; the replay chat is rate-limited per address.

mod common;

use std::time::Duration;

use common::matrix::*;
use common::*;
use serde_json::Value;

fn query_value(url: &str, key: &str) -> Option<String> {
    let q = url.split_once('?')?.1;
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.to_string())
    })
}

#[test]
fn a_private_rooms_recording_is_linked_listed_guarded_and_deleted() {
    let _serial = serial();
    let env = MatrixEnv::start(
        "golive_delay_ms = 1000\n[recording]\nenabled = true\ndir = \"recordings\"\nsegment_secs = 2\nmin_free_gb = 0\n",
    );
    let server = env.server();
    let bot = env.bot_id();
    let alice = env.user("alice");
    let bob = env.user("bob");

    // A private (invite-only) room with a stream attached by its admin.
    let (room, key) = alice.attach_stream(&bot, "private_chat", "Members only", "secret");

    // A 6 s broadcast.
    let mut ffmpeg = Publisher::ffmpeg(
        &server.rtmp_url(&key),
        FfmpegOpts {
            duration_s: Some(6.0),
            ..FfmpegOpts::small()
        },
    );
    let notice = alice.wait_message(&room, &bot, "is live");
    // While it grows, a private recording's playlist stays out of shared
    // caches too (the go-live link's token admits).
    let live_token = notice["content"]["body"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .find_map(|w| query_value(w.trim_end_matches(['.', ')', ',']), "access"))
        .expect("the go-live link carries a token");
    let growing = wait_until("the growing recording's playlist", MX_TIMEOUT, || {
        let r = server.get(&format!(
            "/api/v1/streams/secret/recordings?access={live_token}"
        ));
        let v: Value = r.json().ok()?;
        let id = v["recordings"].get(0)?["id"].as_str()?.to_string();
        let p = server.get(&format!("/recordings/{id}/index.m3u8?access={live_token}"));
        (p.status == 200 && !p.text().contains("#EXT-X-ENDLIST")).then_some(p)
    });
    assert_eq!(
        growing.header("cache-control"),
        Some("private, no-store"),
        "a private stream's growing playlist"
    );
    assert!(ffmpeg.wait_exit(Duration::from_secs(30)).is_some());
    let edit = wait_until("the ended edit with a replay link", MX_TIMEOUT, || {
        alice.messages_from(&room, &bot).into_iter().find(|e| {
            e["content"]["m.relates_to"]["rel_type"] == "m.replace"
                && e["content"]["m.new_content"]["body"]
                    .as_str()
                    .is_some_and(|b| b.contains("ended after"))
        })
    });
    let body = edit["content"]["m.new_content"]["body"].as_str().unwrap();
    println!("ended edit: {body}");
    let link = body
        .split("replay: ")
        .nth(1)
        .unwrap_or_else(|| panic!("no replay link in {body:?}"))
        .split_whitespace()
        .next()
        .unwrap();
    assert!(
        edit["content"]["m.new_content"]["formatted_body"]
            .as_str()
            .unwrap()
            .contains(">replay</a>"),
        "{edit}"
    );
    assert!(link.contains("/watch/secret?recording="), "{link}");
    let id = query_value(link, "recording").expect("recording id");
    let token = query_value(link, "access").expect("a private room's link carries a token");

    // The link works: the watch page, and with its token the recording.
    let path = &link[link.find("/watch/").unwrap()..];
    assert_eq!(server.get(path).status, 200, "the replay link's page");
    let rec: Value = wait_until("the recording complete", MX_TIMEOUT, || {
        let r = server.get(&format!("/api/v1/recordings/{id}?access={token}"));
        let v: Value = r.json().ok()?;
        (r.status == 200 && v["state"] == "complete").then_some(v)
    });
    assert_eq!(rec["stream"], "secret");
    assert_eq!(rec["room_id"], room.as_str());
    assert!(
        (rec["duration_s"].as_f64().unwrap() - 6.0).abs() <= 1.0,
        "{rec}"
    );
    let playlist = server.get(&format!("/recordings/{id}/index.m3u8?access={token}"));
    assert_eq!(playlist.status, 200, "{}", playlist.text());
    let text = playlist.text();
    assert!(text.contains("#EXT-X-ENDLIST"), "{text}");
    assert!(text.contains(&format!("0.mp4?access={token}")), "{text}");
    let media = http::request(
        "GET",
        &server.url(&format!("/recordings/{id}/0.mp4")),
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("Range", "bytes=0-7"),
        ],
        None,
    )
    .unwrap();
    assert_eq!(media.status, 206);
    assert_eq!(&media.body[4..8], b"ftyp");
    assert_eq!(
        playlist.header("cache-control"),
        Some("private, no-store"),
        "a private stream's recording stays out of shared caches"
    );

    // Without access, every surface refuses.
    for path in [
        format!("/api/v1/recordings/{id}"),
        "/api/v1/streams/secret/recordings".to_string(),
        format!("/recordings/{id}/index.m3u8"),
        format!("/recordings/{id}/0.mp4"),
        format!("/recordings/{id}.mp4"),
        format!("/recordings/{id}.mp4?access=not-a-token"),
    ] {
        let r = server.get(&path);
        assert!(
            r.status == 401 || r.status == 403,
            "{path} without access: {} {}",
            r.status,
            r.text()
        );
    }

    // `!live recordings` lists it with its link.
    alice.send_text(&room, "!live recordings");
    let list = alice.wait_message(&room, &bot, "Recordings of 'secret'");
    let list = list["content"]["body"].as_str().unwrap();
    assert!(list.contains(&id) && list.contains("?recording="), "{list}");

    // Bob, who is not in the room, can neither list nor delete it.
    let bob_dm = bob.dm_bot(&bot);
    bob.send_text(&bob_dm, &format!("!live delete-recording {id}"));
    bob.wait_message(&bob_dm, &bot, &format!("There is no recording '{id}'"));
    assert_eq!(
        server
            .get(&format!("/api/v1/recordings/{id}?access={token}"))
            .status,
        200
    );

    // `!live record off`: the next broadcast is not recorded.
    alice.send_text(&room, "!live record off");
    alice.wait_message(&room, &bot, "'secret' will not be recorded");
    let from = server.log_len();
    let mut ffmpeg = Publisher::ffmpeg(
        &server.rtmp_url(&key),
        FfmpegOpts {
            duration_s: Some(2.0),
            ..FfmpegOpts::small()
        },
    );
    assert!(ffmpeg.wait_exit(Duration::from_secs(30)).is_some());
    server.wait_for_log_from(from, "rtmp publisher unpublished", MX_TIMEOUT);
    assert!(
        !server.log_lines()[from..]
            .iter()
            .any(|l| l.contains("recording: started")),
        "recorded after !live record off"
    );
    let list = server.get(&format!("/api/v1/streams/secret/recordings?access={token}"));
    assert_eq!(
        list.json().unwrap()["recordings"].as_array().unwrap().len(),
        1,
        "not recorded: {}",
        list.text()
    );

    // The owner deletes it.
    alice.send_text(&room, &format!("!live delete-recording {id}"));
    alice.wait_message(&room, &bot, &format!("Recording {id} is deleted"));
    assert_eq!(
        server
            .get(&format!("/api/v1/recordings/{id}?access={token}"))
            .status,
        404
    );
    assert!(!env.state.path().join("recordings").join(&id).exists());

    // Detaching makes the stream public; what it recorded while private
    // (and its old room's chat) must not become public with it.
    alice.send_text(&room, "!live record on");
    alice.wait_message(&room, &bot, "'secret' will be recorded");
    let mut ffmpeg = Publisher::ffmpeg(
        &server.rtmp_url(&key),
        FfmpegOpts {
            duration_s: Some(3.0),
            ..FfmpegOpts::small()
        },
    );
    assert!(ffmpeg.wait_exit(Duration::from_secs(30)).is_some());
    let id: String = wait_until("the second recording complete", MX_TIMEOUT, || {
        let r = server.get(&format!("/api/v1/streams/secret/recordings?access={token}"));
        let v: Value = r.json().ok()?;
        let first = v["recordings"].get(0)?;
        (first["state"] == "complete").then(|| first["id"].as_str().unwrap().to_string())
    });
    let chat = server.get(&format!("/api/v1/recordings/{id}/chat?access={token}"));
    assert_eq!(chat.status, 200, "the chat with access: {}", chat.text());
    alice.send_text(&room, "!live detach");
    alice.wait_message(&room, &bot, "Stream 'secret' is detached");
    wait_until("the stream public", MX_TIMEOUT, || {
        (server.get("/api/v1/streams/secret").status == 200).then_some(())
    });
    for path in [
        format!("/api/v1/recordings/{id}"),
        format!("/api/v1/recordings/{id}/chat"),
        format!("/api/v1/recordings/{id}/chat?access={token}"),
        format!("/recordings/{id}/index.m3u8"),
        format!("/recordings/{id}/0.mp4"),
        format!("/recordings/{id}.mp4"),
        format!("/recordings/{id}/replay.webm"),
    ] {
        let r = server.get(&path);
        assert!(
            matches!(r.status, 401 | 403 | 404),
            "{path} after the detach: {} {}",
            r.status,
            r.text()
        );
    }
    let list = server.get("/api/v1/streams/secret/recordings");
    assert!(
        !list.text().contains(&id),
        "the private recording listed after the detach: {}",
        list.text()
    );

    // The replay chat can cost homeserver reads: one address gets a burst,
    // then 429 with Retry-After (checked before anything else).
    let limited = (0..30).find_map(|_| {
        let r = server.get(&format!("/api/v1/recordings/{id}/chat"));
        (r.status == 429).then_some(r)
    });
    let limited = limited.expect("no 429 after 30 replay chat requests from one address");
    assert!(
        limited.header("retry-after").is_some(),
        "{}",
        limited.text()
    );
}
