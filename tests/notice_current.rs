//! A go-live notice that stays current (issue 15 item 4), against a real
//! Synapse: the notice carries the stream's thumbnail (uploaded to Synapse's
//! media repository; downloaded here and decoded by ffmpeg), is edited in
//! place (`m.replace`, no mentions) with the viewer count when aiortc viewers
//! join and leave (in the stream's room and a room following it), no more
//! often than `notice_update_secs`, and ends with the peak.

mod common;

use std::time::Duration;

use common::images::decode_jpeg;
use common::matrix::*;
use common::*;
use serde_json::Value;

/// Edits at most every 3 s here (60 s by default), thumbnails every second.
const EXTRA: &str = "golive_delay_ms = 1000\nnotice_update_secs = 3\nnotice_thumbnail_secs = 3\n\n[thumbnails]\ninterval_secs = 1\n";

/// The bot's `m.replace` edits of `notice` that are not the "ended" one.
fn live_edits(user: &MxUser, room: &str, bot: &str, notice: &str) -> Vec<Value> {
    user.messages_from(room, bot)
        .into_iter()
        .filter(|e| {
            e["content"]["m.relates_to"]["rel_type"] == "m.replace"
                && e["content"]["m.relates_to"]["event_id"] == notice
                && e["content"]["m.new_content"]["body"]
                    .as_str()
                    .is_some_and(|b| b.contains("is live"))
        })
        .collect()
}

/// The `mxc://` URI of the `<img>` in an HTML body.
fn img_mxc(html: &str) -> Option<String> {
    let at = html.find("<img src=\"mxc://")? + "<img src=\"".len();
    let end = html[at..].find('"')?;
    Some(html[at..at + end].to_string())
}

fn download(env: &MatrixEnv, user: &MxUser, mxc: &str) -> Vec<u8> {
    let (server, id) = mxc
        .trim_start_matches("mxc://")
        .split_once('/')
        .expect("server/id");
    let url = format!(
        "{}/_matrix/client/v1/media/download/{server}/{id}",
        env.synapse.base_url()
    );
    let auth = format!("Bearer {}", user.token);
    let r =
        http::request("GET", &url, &[("Authorization", auth.as_str())], None).expect("download");
    assert_eq!(r.status, 200, "download {mxc}: {}", r.text());
    assert_eq!(r.header("content-type"), Some("image/jpeg"));
    r.body
}

#[test]
fn the_go_live_notice_shows_the_viewer_count_and_a_thumbnail() {
    let _serial = serial();
    let env = MatrixEnv::start(EXTRA);
    let bot = env.bot_id();
    let alice = env.user("alice");
    let dm = alice.dm_bot(&bot);
    let settings = alice.live_new(&dm, &bot, "current");
    let key = key_from_settings(settings["content"]["body"].as_str().unwrap());
    let room = wait_until("the room alias", MX_TIMEOUT, || {
        alice.resolve_alias("#live_current:localhost")
    });
    alice.join(&room);
    // A room following the stream gets the same notice and edits.
    let fans = alice.create_room(serde_json::json!({"name": "Fans", "preset": "public_chat"}));
    alice.invite(&fans, &bot);
    alice.wait_joined(&fans, &bot);
    alice.send_text(&fans, "!live follow current");
    alice.wait_message(&fans, &bot, "now gets a notice when 'current' goes live");

    let mut ffmpeg = Publisher::ffmpeg(&env.server().rtmp_url(&key), FfmpegOpts::small());
    env.server().wait_live("current", LIVE_TIMEOUT);
    let notice = alice.wait_message(&room, &bot, "is live");
    let notice_id = notice["event_id"].as_str().unwrap().to_string();
    let fans_notice = alice.wait_message(&fans, &bot, "is live");
    let fans_notice_id = fans_notice["event_id"].as_str().unwrap().to_string();

    // The thumbnail: in the notice itself, or in an edit soon after.
    let html = wait_until("a thumbnail in the notice", MX_TIMEOUT, || {
        std::iter::once(notice["content"]["formatted_body"].clone())
            .chain(
                live_edits(&alice, &room, &bot, &notice_id)
                    .into_iter()
                    .map(|e| e["content"]["m.new_content"]["formatted_body"].clone()),
            )
            .filter_map(|h| h.as_str().map(str::to_string))
            .find(|h| img_mxc(h).is_some())
    });
    let mxc = img_mxc(&html).unwrap();
    let jpeg = download(&env, &alice, &mxc);
    let pic = decode_jpeg(&jpeg);
    println!("notice thumbnail {mxc}: {} bytes, {pic:?}", jpeg.len());
    assert_eq!((pic.width, pic.height), (320, 180));
    assert!(pic.luma_stddev > 10.0, "a blank picture: {pic:?}");

    // Two viewers join: an edit shows the count, without mentions.
    let viewers: Vec<JsonTool> = (0..2)
        .map(|_| {
            aiortc_viewer(
                &env.server().whep_url("current"),
                ViewerOpts {
                    duration_s: Some(60.0),
                    timeout_s: 90.0,
                    ..ViewerOpts::default()
                },
            )
        })
        .collect();
    let edit = wait_until("an edit showing 2 viewers", Duration::from_secs(70), || {
        live_edits(&alice, &room, &bot, &notice_id)
            .into_iter()
            .find(|e| e["content"]["m.new_content"]["io.roomcast.golive"]["viewers"] == 2)
    });
    let new = &edit["content"]["m.new_content"];
    assert!(
        new["body"].as_str().unwrap().contains("2 watching"),
        "{new}"
    );
    assert_eq!(edit["content"]["m.mentions"], serde_json::json!({}));
    assert_eq!(new["m.mentions"], serde_json::json!({}));
    assert!(!new["body"].as_str().unwrap().contains("@room"));
    assert!(
        img_mxc(new["formatted_body"].as_str().unwrap()).is_some(),
        "the edit keeps the thumbnail: {new}"
    );

    wait_until("the following room's edit", MX_TIMEOUT, || {
        live_edits(&alice, &fans, &bot, &fans_notice_id)
            .into_iter()
            .find(|e| e["content"]["m.new_content"]["io.roomcast.golive"]["viewers"] == 2)
    });

    // The viewers leave: the count follows.
    for mut v in viewers {
        v.stop(Duration::from_secs(10));
    }
    let zero = wait_until("an edit showing 0 viewers", Duration::from_secs(70), || {
        live_edits(&alice, &room, &bot, &notice_id)
            .into_iter()
            .find(|e| e["content"]["m.new_content"]["io.roomcast.golive"]["viewers"] == 0)
    });
    assert!(
        zero["content"]["m.new_content"]["body"]
            .as_str()
            .unwrap()
            .contains("0 watching")
    );

    // Never more often than notice_update_secs (server timestamps).
    let edits = live_edits(&alice, &room, &bot, &notice_id);
    let mut all: Vec<u64> = std::iter::once(notice["origin_server_ts"].as_u64().unwrap())
        .chain(
            edits
                .iter()
                .map(|e| e["origin_server_ts"].as_u64().unwrap()),
        )
        .collect();
    all.sort_unstable();
    println!("notice and live edits at (server ms): {all:?}");
    assert!(all.len() >= 3, "{all:?}");
    for w in all.windows(2) {
        assert!(
            w[1] - w[0] >= 2_900,
            "two notice updates {} ms apart: {all:?}",
            w[1] - w[0]
        );
    }

    ffmpeg.stop(Duration::from_secs(10));
    let ended = alice.wait_message(&room, &bot, "ended after");
    let body = ended["content"]["m.new_content"]["body"].as_str().unwrap();
    assert!(body.contains("peak 2 viewers"), "{body}");
    assert_eq!(
        ended["content"]["m.relates_to"]["event_id"],
        notice_id.as_str()
    );
    // The ended edit is the last word.
    let last = alice
        .messages_from(&room, &bot)
        .into_iter()
        .rfind(|e| e["content"]["m.relates_to"]["event_id"] == notice_id.as_str())
        .unwrap();
    assert_eq!(last["event_id"], ended["event_id"]);
}
