//! The appservice under trouble (issue 12, item 1 and 4): transactions are
//! acknowledged at once and processed per room, so a stalled room holds up
//! nobody else; a command processed again (after a crash, or delivered
//! twice) duplicates nothing; a key goes to a direct chat the user is in.
//! Test hooks (env, read by roomcast at start): `RCTEST_MATRIX_STALL_ROOM` /
//! `RCTEST_MATRIX_STALL_MS` delay every event of one room, and
//! `RCTEST_MATRIX_CRASH_AFTER` aborts roomcast right after a command step.

mod common;

use std::time::{Duration, Instant};

use common::matrix::*;
use common::*;
use serde_json::{Value, json};

fn title(server: &Server, stream: &str) -> String {
    server
        .api_stream(stream)
        .and_then(|s| s["title"].as_str().map(str::to_string))
        .unwrap_or_default()
}

#[test]
fn a_stalled_room_does_not_hold_up_another_and_state_is_reread_at_start() {
    let _serial = serial();
    let mut env = MatrixEnv::start("");
    let bot = env.bot_id();
    let alice = env.user("alice");
    let dm = alice.dm_bot(&bot);
    let slow = new_stream(&alice, &dm, &bot, "slowroom").1;
    let fast = new_stream(&alice, &dm, &bot, "fastroom").1;

    // Every event of `slow` now waits 8 s before it is processed. A rename
    // made while roomcast is down is on the API within 5 s of its start
    // (the room state is re-read; Synapse's own retry may come much later).
    env.stop_roomcast();
    alice.set_state(
        &fast,
        "m.room.name",
        "",
        json!({"name": "Renamed while down"}),
    );
    env.server_env = vec![
        ("RCTEST_MATRIX_STALL_ROOM".into(), slow.clone()),
        ("RCTEST_MATRIX_STALL_MS".into(), "8000".into()),
    ];
    let t = Instant::now();
    env.start_roomcast();
    wait_until(
        "the rename made while roomcast was down",
        Duration::from_secs(5),
        || (title(env.server(), "fastroom") == "Renamed while down").then_some(()),
    );
    println!(
        "rename made while down on the API {:?} after start",
        t.elapsed()
    );
    // Synapse backs off from an appservice it could not reach (roomcast was
    // restarting): wait until it delivers again before timing anything.
    alice.set_state(&fast, "m.room.name", "", json!({"name": "Fast warm"}));
    wait_until("delivery to resume", MX_TIMEOUT, || {
        (title(env.server(), "fastroom") == "Fast warm").then_some(())
    });

    // Acknowledged at once: written down, processed afterwards.
    let hs = env.hs_token();
    let mut acks = Vec::new();
    for i in 0..5 {
        let body = json!({"events": [{
            "type": "m.room.message", "content": {"msgtype": "m.text", "body": format!("ack {i}")},
            "room_id": "!robust-acks:localhost", "sender": alice.user_id,
            "event_id": format!("$robust-ack-{i}"),
            "origin_server_ts": 1_700_000_000_000u64,
        }]})
        .to_string();
        let t = Instant::now();
        let r = env.put_transaction(&format!("robust-ack-{i}"), &hs, body.as_bytes());
        acks.push(t.elapsed());
        assert_eq!(r.status, 200, "{}", r.text());
    }
    acks.sort();
    println!("transaction acknowledgements: {acks:?}");
    assert!(
        acks[acks.len() / 2] < Duration::from_millis(100),
        "median acknowledgement {:?} (all: {acks:?})",
        acks[acks.len() / 2]
    );

    // The stalled room is renamed first; the other room's rename still
    // reaches the API within 2 s, while the stalled one has not.
    alice.set_state(&slow, "m.room.name", "", json!({"name": "Slow renamed"}));
    let t = Instant::now();
    alice.set_state(&fast, "m.room.name", "", json!({"name": "Fast renamed"}));
    let server = env.server();
    wait_until("the other room's rename", Duration::from_secs(2), || {
        (title(server, "fastroom") == "Fast renamed").then_some(())
    });
    println!("rename of the free room on the API after {:?}", t.elapsed());
    assert_eq!(
        title(server, "slowroom"),
        "slowroom",
        "the stalled room's rename overtook its queue"
    );
    // ... and the stalled room's events are applied, in order, afterwards.
    wait_until("the stalled room's rename", MX_TIMEOUT, || {
        (title(server, "slowroom") == "Slow renamed").then_some(())
    });
}

#[test]
fn a_command_processed_again_duplicates_nothing() {
    let _serial = serial();
    let mut env = MatrixEnv::start("");
    let bot = env.bot_id();
    let alice = env.user("alice");
    let dm = alice.dm_bot(&bot);

    // --- `!live new`, roomcast killed right after it created the room -------------------
    env.stop_roomcast();
    env.server_env = vec![("RCTEST_MATRIX_CRASH_AFTER".into(), "0:create_room".into())];
    env.start_roomcast();
    let new_ev = alice.send_text(&dm, "!live new retried");
    let room = wait_until("the room alias", MX_TIMEOUT, || {
        alice.resolve_alias("#live_retried:localhost")
    });
    wait_until("roomcast to abort", MX_TIMEOUT, || {
        (!env.server_mut().is_running()).then_some(())
    });
    env.stop_roomcast();
    env.server_env.clear();
    // At start-up the command is processed again and finishes that room.
    env.start_roomcast();
    alice.wait_message(&dm, &bot, "/whip/retried");
    alice.join(&room);
    assert!(
        alice
            .state(&room, "im.vector.modular.widgets", "roomcast_retried")
            .is_some_and(|w| w["type"] == "m.custom"),
        "the finished room has the widget"
    );

    // The same event delivered again (a new transaction id): nothing happens.
    let hs = env.hs_token();
    let r = env.put_transaction(
        "robust-new-again",
        &hs,
        &alice.event_as_transaction(&dm, &new_ev),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // A later command in the same room is answered after it (rooms are in order).
    alice.send_text(&dm, "!live status retried");
    alice.wait_message(&dm, &bot, "'retried' —");
    assert_eq!(
        alice.count_bodies_with(&dm, &bot, "/whip/retried"),
        1,
        "settings DMs"
    );
    assert_eq!(
        alice.count_bodies_with(&dm, &bot, "Created #live_retried"),
        1,
        "replies"
    );
    assert_eq!(
        alice.count_bodies_with(&dm, &bot, "is taken"),
        0,
        "a 'taken' reply"
    );

    // --- `!live key` delivered twice: one new key ------------------------------------
    let key_ev = alice.send_text(&room, "!live key");
    alice.wait_message(&room, &bot, "a new key for 'retried'");
    let r = env.put_transaction(
        "robust-key-again",
        &hs,
        &alice.event_as_transaction(&room, &key_ev),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    alice.send_text(&room, "!live status");
    alice.wait_message(&room, &bot, "'retried' —");
    assert_eq!(
        alice.count_bodies_with(&dm, &bot, "/whip/retried"),
        2,
        "settings DMs"
    );
    assert_eq!(
        alice.count_bodies_with(&room, &bot, "a new key for 'retried'"),
        1,
        "key replies"
    );
    // The key that works is the last one sent.
    let last: Vec<Value> = alice
        .messages_from(&dm, &bot)
        .into_iter()
        .filter(|e| {
            e["content"]["body"]
                .as_str()
                .is_some_and(|b| b.contains("/whip/retried"))
        })
        .collect();
    let key = key_from_settings(last.last().unwrap()["content"]["body"].as_str().unwrap());
    let _publisher = Publisher::ffmpeg(&env.server().rtmp_url(&key), FfmpegOpts::small());
    env.server().wait_live("retried", LIVE_TIMEOUT);
}

#[test]
fn a_key_goes_to_a_new_direct_chat_when_the_user_left() {
    let _serial = serial();
    let env = MatrixEnv::start("");
    let bot = env.bot_id();
    let alice = env.user("alice");
    let dm = alice.dm_bot(&bot);
    let room = new_stream(&alice, &dm, &bot, "leaver").1;
    let (status, v) = alice.call(
        "POST",
        &format!("/_matrix/client/v3/rooms/{}/leave", enc(&dm)),
        Some(&json!({})),
    );
    assert_eq!(status, 200, "{v}");

    let from = env.server().log_len();
    alice.send_text(&room, "!live key");
    alice.wait_message(&room, &bot, "a new key for 'leaver'");
    env.server()
        .wait_for_log_from(from, "the user left the direct chat", MX_TIMEOUT);
    let new_dm = wait_until("an invite to a new direct chat", MX_TIMEOUT, || {
        alice.invites().into_iter().find(|r| *r != dm && *r != room)
    });
    alice.join(&new_dm);
    let settings = alice.wait_message(&new_dm, &bot, "/whip/leaver");
    let key = key_from_settings(settings["content"]["body"].as_str().unwrap());
    let _publisher = Publisher::ffmpeg(&env.server().rtmp_url(&key), FfmpegOpts::small());
    env.server().wait_live("leaver", LIVE_TIMEOUT);
}

#[test]
fn an_upgraded_room_keeps_its_stream() {
    let _serial = serial();
    let env = MatrixEnv::start("golive_delay_ms = 500");
    let bot = env.bot_id();
    let alice = env.user("alice");
    let dm = alice.dm_bot(&bot);
    // A community's own room (alice created it: only creators may upgrade a
    // version 12 room), the bot invited with the power for widgets.
    let old = alice.create_room(json!({
        "preset": "public_chat", "name": "Community", "invite": [bot],
        "power_level_content_override": {"users": {bot.as_str(): 50}},
    }));
    alice.wait_joined(&old, &bot);
    alice.send_text(&old, "!live attach upgraded");
    alice.wait_message(&old, &bot, "is attached to this room");
    let settings = alice.wait_message(&dm, &bot, "/whip/upgraded");
    let key = key_from_settings(settings["content"]["body"].as_str().unwrap());

    let (status, v) = alice.call(
        "POST",
        &format!("/_matrix/client/v3/rooms/{}/upgrade", enc(&old)),
        Some(&json!({"new_version": "12"})),
    );
    assert_eq!(status, 200, "{v}");
    let new = v["replacement_room"].as_str().unwrap().to_string();
    let server = env.server();
    wait_until("the stream in the new room", MX_TIMEOUT, || {
        server
            .api_stream("upgraded")
            .filter(|s| s["room"]["room_id"] == new.as_str())
    });
    wait_until("the widget in the new room", MX_TIMEOUT, || {
        alice
            .state(&new, "im.vector.modular.widgets", "roomcast_upgraded")
            .filter(|w| w["type"] == "m.custom")
    });
    wait_until("the stream state in the new room", MX_TIMEOUT, || {
        alice.state(&new, "io.roomcast.stream", "upgraded")
    });
    assert!(
        alice.state(&new, "io.element.widgets.layout", "").is_some(),
        "the layout in the new room"
    );

    // Titles follow the new room's name.
    alice.set_state(
        &new,
        "m.room.name",
        "",
        json!({"name": "After the upgrade"}),
    );
    wait_until("the new room's rename", Duration::from_secs(5), || {
        (title(server, "upgraded") == "After the upgrade").then_some(())
    });

    // The next go-live notice goes to the new room.
    let _publisher = Publisher::ffmpeg(&server.rtmp_url(&key), FfmpegOpts::small());
    server.wait_live("upgraded", LIVE_TIMEOUT);
    alice.wait_message(&new, &bot, "is live");
}
