//! Matrix state that must survive (issue 12 item 3, and 8's `!live follow`),
//! against a real Synapse: a go-live session continues across a roomcast
//! restart; a flood of chat cannot make a page feed miss a title or a
//! go-live; a kicked bot shows the stream's room lost and tells its owner;
//! a room following a stream gets its notices, once, until it unfollows.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::matrix::*;
use common::*;
use serde_json::{Value, json};

fn publish(server: &Server, key: &str) -> Publisher {
    Publisher::ffmpeg(&server.rtmp_url(key), FfmpegOpts::small())
}

#[test]
fn restart_mid_stream_continues_the_go_live_session() {
    let _serial = serial();
    let mut env = MatrixEnv::start("golive_delay_ms = 1000");
    let bot = env.bot_id();
    let alice = env.user("alice");
    let (key, room) = env.new_stream_by_dm(&alice, "resume");
    let ffmpeg = publish(env.server(), &key);
    env.server().wait_live("resume", LIVE_TIMEOUT);
    alice.wait_message(&room, &bot, "is live");

    // Killed (SIGKILL) mid-stream, started again on the same database; the
    // publisher reconnects.
    env.stop_roomcast();
    drop(ffmpeg);
    env.start_roomcast();
    env.server().wait_for_log(
        "go-live sessions from before the restart continue",
        MX_TIMEOUT,
    );
    let mut ffmpeg = publish(env.server(), &key);
    env.server().wait_live("resume", LIVE_TIMEOUT);
    ffmpeg.stop(Duration::from_secs(10));

    // The outbox delivers in order: a second go-live notice would come
    // before the ended edit.
    let edit = wait_until("the ended edit", MX_TIMEOUT, || {
        alice.ended_edits(&room, &bot).into_iter().next()
    });
    let notices = alice.golive_notices(&room, &bot);
    assert_eq!(notices.len(), 1, "go-live notices: {notices:#?}");
    assert_eq!(
        edit["content"]["m.relates_to"]["event_id"], notices[0]["event_id"],
        "the ended edit lands on the first notice"
    );
    assert_eq!(alice.ended_edits(&room, &bot).len(), 1);
}

/// A page feed that does not read while the hub's event channel overflows.
struct StalledFeed(TcpStream);

impl StalledFeed {
    fn open(server: &Server, stream: &str) -> StalledFeed {
        let addr = server.base_url().trim_start_matches("http://").to_string();
        let mut s = TcpStream::connect(&addr).expect("connect");
        write!(
            s,
            "GET /api/v1/streams/{stream}/events HTTP/1.0\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
        )
        .unwrap();
        StalledFeed(s)
    }

    /// Reads until `done` holds for what was read.
    fn read_until(&mut self, what: &str, done: impl Fn(&str) -> bool) -> String {
        self.0
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        let start = Instant::now();
        loop {
            match self.0.read(&mut buf) {
                Ok(0) => panic!("the feed ended before {what}"),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("reading the feed: {e}"),
            }
            let text = String::from_utf8_lossy(&got);
            if done(&text) {
                return text.into_owned();
            }
            assert!(start.elapsed() < MX_TIMEOUT, "timed out waiting for {what}");
        }
    }
}

#[test]
fn a_chat_flood_cannot_drop_a_title_or_a_go_live_on_the_page_feed() {
    let _serial = serial();
    let env = MatrixEnv::start("");
    let alice = env.user("alice");
    let (key, room) = env.new_stream_by_dm(&alice, "busy");
    let mut feed = StalledFeed::open(env.server(), "busy");
    feed.read_until("the feed's first events", |t| t.contains("event: offline"));

    // Chat the way Synapse delivers it, faster and bigger than a page reads
    // (the feed is not read at all): far more than the 1024-slot channel and
    // the socket buffers hold. A rename and a go-live happen in the middle.
    let hs = env.hs_token();
    let body = "x".repeat(3900);
    let mut n = 0;
    // A feed that reads: each batch is relayed before the next is pushed,
    // so the room's inbox (2 000 pending events at most, chat dropped first
    // beyond) takes all of it and the hub gets every message.
    let reader = Sse::open(env.server(), "busy");
    let mut flood = |batches: usize, extra: Option<Value>| {
        for _ in 0..batches {
            let mut events: Vec<Value> = (0..200)
                .map(|_| {
                    n += 1;
                    json!({
                        "type": "m.room.message", "room_id": room, "sender": alice.user_id,
                        "event_id": format!("$flood-{n}"), "origin_server_ts": 1_700_000_000_000u64 + n,
                        "content": {"msgtype": "m.text", "body": format!("{n} {body}")},
                    })
                })
                .collect();
            if let Some(e) = &extra {
                events.insert(100, e.clone());
            }
            let r = env.put_transaction(
                &format!("flood-{n}"),
                &hs,
                json!({"events": events}).to_string().as_bytes(),
            );
            assert_eq!(r.status, 200, "{}", r.text());
            let last = format!("\"$flood-{n}\"");
            wait_until("the batch relayed", MX_TIMEOUT, || {
                reader.saw(&last).then_some(())
            });
        }
    };
    // 6 000 messages of 4 KB: the socket buffers (up to 4 MB sent, and the
    // window of a reader that reads nothing) fill first, then the channel.
    flood(15, None);
    let rename = json!({
        "type": "m.room.name", "room_id": room, "sender": alice.user_id, "state_key": "",
        "event_id": "$flood-rename", "origin_server_ts": 1_700_000_000_000u64,
        "content": {"name": "Renamed During Flood"},
    });
    flood(1, Some(rename));
    let _ffmpeg = publish(env.server(), &key);
    env.server().wait_live("busy", LIVE_TIMEOUT);
    flood(15, None);

    // The title event itself (the `live` snapshot carries the title too).
    let title_event = |t: &str| {
        t.split("\n\n")
            .any(|e| e.contains("event: title\n") && e.contains("Renamed During Flood"))
    };
    let text = feed.read_until("the title and the go-live", |t| {
        title_event(t) && t.contains("event: live\n")
    });
    env.server().wait_for_log(
        "page feed fell behind the chat and viewer events",
        MX_TIMEOUT,
    );
    let chats = text.matches("event: chat").count();
    println!("chat events the stalled feed got: {chats} of {n}");
    assert!(
        chats < n as usize,
        "the feed never fell behind: the test proves nothing"
    );
}

#[test]
fn a_kicked_bot_shows_the_room_lost_and_tells_the_owner() {
    let _serial = serial();
    let env = MatrixEnv::start("");
    let bot = env.bot_id();
    let alice = env.user("alice");
    // A room of alice's (the bot has less power than her), attached.
    let dm = alice.dm_bot(&bot);
    let room = alice.create_room(json!({
        "preset": "public_chat",
        "power_level_content_override": {"users": {bot.as_str(): 50}},
    }));
    alice.invite(&room, &bot);
    alice.wait_joined(&room, &bot);
    alice.send_text(&room, "!live attach kicked");
    alice.wait_message(&room, &bot, "Stream 'kicked' is attached");
    let hello = alice.send_text(&room, "hello before the kick");
    Sse::open(env.server(), "kicked").wait("chat", MX_TIMEOUT, |d| d["id"] == hello.as_str());

    let path = format!("/_matrix/client/v3/rooms/{}/kick", enc(&room));
    let (status, body) = alice.call(
        "POST",
        &path,
        Some(&json!({"user_id": bot, "reason": "test"})),
    );
    assert_eq!(status, 200, "{body}");

    let lost = wait_until("the API to show the room lost", MX_TIMEOUT, || {
        env.server()
            .api_stream("kicked")
            .map(|s| s["room_lost"].clone())
            .filter(|l| l.is_object())
    });
    assert_eq!(lost["reason"], "kicked");
    assert_eq!(lost["by"], alice.user_id.as_str());
    let dm_text = alice.wait_message(&dm, &bot, "lost its Matrix room");
    let dm_text = dm_text["content"]["body"].as_str().unwrap();
    assert!(
        dm_text.contains("invite") && dm_text.contains(&bot),
        "{dm_text}"
    );
    // A new page gets the room lost, and no chat history.
    let sse = Sse::open(env.server(), "kicked");
    sse.wait("room", MX_TIMEOUT, |d| d["room_lost"]["reason"] == "kicked");
    assert!(
        !sse.events().iter().any(|(name, _)| name == "chat"),
        "the chat history was not cleared"
    );

    // Invited back: the room is the stream's again.
    alice.invite(&room, &bot);
    alice.wait_joined(&room, &bot);
    sse.wait("room", MX_TIMEOUT, |d| d["room_lost"].is_null());
    assert!(env.server().api_stream("kicked").unwrap()["room_lost"].is_null());
}

#[test]
fn a_following_room_gets_each_go_live_once_until_it_unfollows() {
    let _serial = serial();
    let env = MatrixEnv::start("golive_delay_ms = 1000");
    let bot = env.bot_id();
    let alice = env.user("alice");
    let (key, room) = env.new_stream_by_dm(&alice, "followed");
    let fans = alice.create_room(json!({"name": "Fans", "preset": "public_chat"}));
    alice.invite(&fans, &bot);
    alice.wait_joined(&fans, &bot);
    alice.send_text(&fans, "!live follow followed");
    alice.wait_message(&fans, &bot, "now gets a notice when 'followed' goes live");

    let mut ffmpeg = publish(env.server(), &key);
    env.server().wait_live("followed", LIVE_TIMEOUT);
    let notice = alice.wait_message(&fans, &bot, "is live");
    ffmpeg.stop(Duration::from_secs(10));
    let edit = wait_until("the ended edit in the following room", MX_TIMEOUT, || {
        alice.ended_edits(&fans, &bot).into_iter().next()
    });
    assert_eq!(
        edit["content"]["m.relates_to"]["event_id"],
        notice["event_id"]
    );
    assert_eq!(alice.golive_notices(&fans, &bot).len(), 1);

    alice.send_text(&fans, "!live unfollow");
    alice.wait_message(&fans, &bot, "no longer follows 'followed'");
    let mut ffmpeg = publish(env.server(), &key);
    wait_until(
        "the second go-live notice in the stream's room",
        MX_TIMEOUT,
        || (alice.golive_notices(&room, &bot).len() == 2).then_some(()),
    );
    ffmpeg.stop(Duration::from_secs(10));
    // The stream's own room gets its second session's end; a notice to the
    // following room would have been queued before it.
    wait_until(
        "the second ended edit in the stream's room",
        MX_TIMEOUT,
        || (alice.ended_edits(&room, &bot).len() == 2).then_some(()),
    );
    assert_eq!(alice.golive_notices(&room, &bot).len(), 2);
    assert_eq!(
        alice.golive_notices(&fans, &bot).len(),
        1,
        "a notice after unfollow"
    );
}
