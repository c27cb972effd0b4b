//! Synapse killed and restarted mid-stream, then PostgreSQL restarted while
//! the stream ends (issue 11), with a WHEP viewer watching throughout. The
//! stream and the viewer carry on through both outages; after each returns,
//! nothing is lost or doubled: one go-live notice, one "ended" edit (queued
//! while the database was away), and every chat message on the SSE feed once.
//! `matrix_outage.rs` covers Synapse down as a stream goes live and
//! `matrix_flow.rs` a rename and a go-live during a PostgreSQL outage; this
//! adds a kill while live, the stream's end and chat during the database
//! outage, and the viewer.

mod common;

use std::time::{Duration, Instant};

use common::matrix::*;
use common::postgres::Postgres;
use common::rtc_client::{self, Outgoing, RtcSession};
use common::*;

const OUTAGE: Duration = Duration::from_secs(10);

/// For `OUTAGE`: the viewer keeps getting video, the stream stays live, `/healthz` answers.
fn ride_out(env: &mut MatrixEnv, viewer: &RtcSession, what: &str) {
    let t = Instant::now();
    let from = viewer.video_packets();
    wait_until(what, OUTAGE + Duration::from_secs(30), || {
        env.server_mut().assert_healthy(what);
        assert_eq!(
            env.server().api_stream("faults").expect("stream API")["live"],
            true,
            "the stream went offline {what}"
        );
        assert!(!viewer.ended(), "the viewer's session ended {what}");
        (t.elapsed() >= OUTAGE).then_some(())
    });
    let got = viewer.video_packets() - from;
    println!("{what}: the viewer got {got} video packets in {OUTAGE:?}");
    assert!(
        got > 300,
        "only {got} video packets reached the viewer {what}"
    );
}

fn chat_count(sse: &Sse, id: &str) -> usize {
    sse.events()
        .iter()
        .filter(|(n, d)| n == "chat" && d["id"] == id)
        .count()
}

#[test]
fn synapse_killed_and_postgres_restarted_mid_stream() {
    let _serial = serial();
    let mut pg = Postgres::start();
    let url = pg.create_database("roomcast");
    let mut env = MatrixEnv::start_with_database("golive_delay_ms = 1500", Some(url));
    let bot = env.bot_id();
    let alice = env.user("alice");
    let dm = alice.dm_bot(&bot);
    let key = key_from_settings(
        alice.live_new(&dm, &bot, "faults")["content"]["body"]
            .as_str()
            .unwrap(),
    );
    let room = wait_until("the room alias", MX_TIMEOUT, || {
        alice.resolve_alias("#live_faults:localhost")
    });
    alice.join(&room);
    let sse = Sse::open(env.server(), "faults");

    let mut ffmpeg = Publisher::ffmpeg(
        &env.server().rtmp_url(&key),
        FfmpegOpts {
            width: 640,
            height: 360,
            ..FfmpegOpts::default()
        },
    );
    env.server().wait_live("faults", LIVE_TIMEOUT);
    alice.wait_message(&room, &bot, "is live");
    let viewer = rtc_client::start(
        &env.server().whep_url("faults"),
        None,
        false,
        Outgoing::Nothing,
    )
    .unwrap_or_else(|r| panic!("WHEP: {} {}", r.status, r.text()));
    wait_until("video at the viewer", MEDIA_TIMEOUT, || {
        (viewer.video_packets() > 100).then_some(())
    });

    // --- Synapse killed (SIGKILL) while live, started again after 10 s ---------------------
    env.synapse.stop();
    ride_out(&mut env, &viewer, "with Synapse killed");
    let log_from = env.server().log_len();
    env.synapse.start_again();
    let after_synapse = alice.send_text(&room, "hello after synapse came back");
    sse.wait("chat", MX_TIMEOUT, |d| d["id"] == after_synapse.as_str());
    let reused = env.server().log_lines()[log_from..]
        .iter()
        .filter(|l| l.contains("transaction id seen before but with new events"))
        .count();
    println!("transactions whose id Synapse reused after its restart: {reused}");

    // What Synapse on SQLite does after a restart, made deterministic: a
    // transaction id used before, now with a new event, is applied; the same
    // events again are not.
    let hs = env.hs_token();
    let message = |event_id: &str, body: &str| {
        serde_json::json!({"events": [{
            "type": "m.room.message", "content": {"msgtype": "m.text", "body": body},
            "room_id": room, "sender": alice.user_id, "event_id": event_id,
            "origin_server_ts": 1_700_000_000_000u64,
        }]})
        .to_string()
    };
    for (event_id, body) in [
        ("$soak-reused-a", "first under this id"),
        ("$soak-reused-b", "second under the same id"),
        ("$soak-reused-b", "second under the same id"),
    ] {
        let r = env.put_transaction("soak-reused-1", &hs, message(event_id, body).as_bytes());
        assert_eq!(r.status, 200, "{}", r.text());
    }
    sse.wait("chat", MX_TIMEOUT, |d| d["id"] == "$soak-reused-b");
    assert_eq!(chat_count(&sse, "$soak-reused-a"), 1);
    assert_eq!(chat_count(&sse, "$soak-reused-b"), 1);

    // --- PostgreSQL stopped; chat and the stream's end happen while it is away ------------
    pg.stop();
    let from = env.server().log_len();
    ride_out(&mut env, &viewer, "with PostgreSQL stopped");
    let during_pg = alice.send_text(&room, "hello while postgres is down");
    env.server().wait_for_log_from(
        from,
        "matrix: transaction not applied, the homeserver will retry",
        MX_TIMEOUT,
    );
    ffmpeg.stop(Duration::from_secs(10));
    env.server()
        .wait_for_log_from(from, "cannot queue the stream-ended notice yet", MX_TIMEOUT);
    pg.start_again();

    // --- after both: everything arrives, once ----------------------------------------------
    sse.wait("chat", MX_TIMEOUT, |d| d["id"] == during_pg.as_str());
    wait_until("the ended edit", MX_TIMEOUT, || {
        (!alice.ended_edits(&room, &bot).is_empty()).then_some(())
    });
    wait_until("the outbox to drain", MX_TIMEOUT, || {
        (pg.psql(
            "roomcast",
            "SELECT count(*) FROM matrix_outbox WHERE done_at IS NULL",
        ) == "0")
            .then_some(())
    });
    // A last message proves the homeserver has nothing older left to retry.
    let last = alice.send_text(&room, "last");
    sse.wait("chat", MX_TIMEOUT, |d| d["id"] == last.as_str());
    assert_eq!(
        alice.golive_notices(&room, &bot).len(),
        1,
        "go-live notices"
    );
    assert_eq!(alice.ended_edits(&room, &bot).len(), 1, "ended edits");
    for id in [&after_synapse, &during_pg, &last] {
        assert_eq!(chat_count(&sse, id), 1, "chat {id} on the SSE feed");
    }
    let history = Sse::open(env.server(), "faults");
    history.wait("chat", MX_TIMEOUT, |d| d["id"] == last.as_str());
    for id in [&after_synapse, &during_pg, &last] {
        assert_eq!(
            chat_count(&history, id),
            1,
            "chat {id} in the feed's history"
        );
    }
    assert!(!viewer.ended(), "the viewer's session ended");
    env.server_mut().assert_healthy("after both outages");
    env.server().assert_no_key_logged();
}
