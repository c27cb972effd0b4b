//! The Matrix application service against a real Synapse, end to end:
//! `!live new` by DM → settings → ffmpeg publishes with them → one go-live
//! notice, widget, layout and stream state events; rename → title in the API
//! and on SSE within 2 s; chat both ways, redaction, banned guest; replayed and
//! malformed transactions, wrong hs_token; stream end; roomcast restart.
//! The whole flow runs twice: on SQLite (the default) and on a real PostgreSQL,
//! which also loses its connection for a while and comes back.

mod common;

use std::time::{Duration, Instant};

use common::matrix::*;
use common::*;
use serde_json::{Value, json};

const RENAME_DEADLINE: Duration = Duration::from_secs(2);

fn api(server: &Server, path: &str) -> Value {
    let r = server.get(path);
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    r.json().unwrap()
}

fn post_json(server: &Server, path: &str, token: Option<&str>, body: &Value) -> HttpResponse {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    http::request(
        "POST",
        &server.url(path),
        &headers,
        Some(body.to_string().as_bytes()),
    )
    .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

/// Go-live notices of the room (not their edits).
/// ffmpeg publishing 640×360 to the stream of `key` over RTMP.
fn publish(server: &Server, key: &str) -> Publisher {
    Publisher::ffmpeg(
        &server.rtmp_url(key),
        FfmpegOpts {
            width: 640,
            height: 360,
            ..FfmpegOpts::default()
        },
    )
}

fn golive_notices(user: &MxUser, room: &str, bot: &str) -> Vec<Value> {
    user.messages_from(room, bot)
        .into_iter()
        .filter(|e| {
            e["content"]["io.roomcast.golive"].is_object() && e["content"]["m.relates_to"].is_null()
        })
        .collect()
}

fn name_event(room: &str, event_id: &str, name: &str, sender: &str) -> Value {
    json!({"events": [{
        "type": "m.room.name", "state_key": "", "content": {"name": name},
        "room_id": room, "sender": sender, "event_id": event_id,
        "origin_server_ts": 1_700_000_000_000u64,
    }]})
}

#[test]
fn stream_room_lifecycle() {
    let _serial = serial();
    let env = MatrixEnv::start("golive_delay_ms = 1500");
    let end = lifecycle(env);
    end.env.server().assert_no_key_logged();
}

/// What [`lifecycle`] leaves behind for backend-specific checks.
struct Lifecycle {
    env: MatrixEnv,
    /// The room's creator (an admin of the room).
    alice: MxUser,
    room: String,
    key: String,
    _ffmpeg: Publisher,
}

fn lifecycle(mut env: MatrixEnv) -> Lifecycle {
    let bot = env.bot_id();
    let alice = env.user("alice");

    // --- !live new by DM: settings come back by DM --------------------------------
    let dm = alice.dm_bot(&bot);
    let settings = alice.live_new(&dm, &bot, "show");
    let body = settings["content"]["body"].as_str().unwrap().to_string();
    let key = key_from_settings(&body);
    assert!(
        body.contains("rtmp://") && body.contains("/whip/show"),
        "{body}"
    );
    assert!(
        body.contains("bframes=0")
            && body.contains("Keyframe Interval 1 s")
            && body.contains("CBR")
    );
    let room = wait_until("the room alias", MX_TIMEOUT, || {
        alice.resolve_alias("#live_show:localhost")
    });
    assert!(
        alice.invites().contains(&room),
        "alice is invited to the new room"
    );
    alice.join(&room);

    // The key is not in roomcast's log, nor in the shared room.
    let server = env.server();
    assert!(
        server.log_lines().iter().all(|l| !l.contains(&key)),
        "the key was logged"
    );

    // Widget and layout state events.
    let widget = alice
        .state(&room, "im.vector.modular.widgets", "roomcast_show")
        .expect("widget state event");
    assert_eq!(widget["type"], "m.custom");
    assert_eq!(widget["id"], "roomcast_show");
    let url = widget["url"].as_str().unwrap();
    assert!(url.starts_with("http://127.0.0.1:8080/widget?"), "{url}");
    for var in [
        "$matrix_room_id",
        "$matrix_widget_id",
        "$org.matrix.msc2873.client_theme",
    ] {
        assert!(url.contains(var), "{var} missing in {url}");
    }
    let layout = alice
        .state(&room, "io.element.widgets.layout", "")
        .expect("layout");
    assert_eq!(
        layout["widgets"]["roomcast_show"]["container"], "top",
        "{layout}"
    );

    // The API knows the room.
    let snap = api(server, "/api/v1/streams/show");
    assert_eq!(snap["room"]["room_id"], room.as_str(), "{snap}");
    assert_eq!(snap["access"], "public");
    assert_eq!(snap["room"]["chat"], true);
    let listed = api(server, &format!("/api/v1/rooms/{}/streams", enc(&room)));
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(
        api(server, "/api/v1/rooms/!nope:localhost/streams"),
        json!([])
    );

    // --- publish with the DM'd key: exactly one notice + state event ---------------
    let mut ffmpeg = publish(server, &key);
    server.wait_live("show", LIVE_TIMEOUT);
    let notice = alice.wait_message(&room, &bot, "is live");
    assert_eq!(notice["content"]["msgtype"], "m.notice");
    assert!(
        notice["content"]["formatted_body"]
            .as_str()
            .unwrap()
            .contains("/watch/show")
    );
    let state = wait_until("the stream state event to say live", MX_TIMEOUT, || {
        alice
            .state(&room, "io.roomcast.stream", "show")
            .filter(|s| s["state"] == "live")
    });
    assert!(
        state["whep_url"].as_str().unwrap().ends_with("/whep/show"),
        "{state}"
    );
    assert!(state["hls_url"].as_str().is_some() && state["watch_url"].as_str().is_some());
    assert_eq!(
        golive_notices(&alice, &room, &bot).len(),
        1,
        "exactly one go-live notice"
    );

    // --- rename → title in the API and on SSE within 2 s -------------------------------
    let sse = Sse::open(server, "show");
    sse.wait("live", MX_TIMEOUT, |_| true);
    let t0 = Instant::now();
    alice.set_state(&room, "m.room.name", "", json!({"name": "Friday Show"}));
    wait_until("the API title", RENAME_DEADLINE, || {
        (api(server, "/api/v1/streams/show")["title"] == "Friday Show").then_some(())
    });
    sse.wait(
        "title",
        RENAME_DEADLINE
            .saturating_sub(t0.elapsed())
            .max(Duration::from_millis(100)),
        |d| d["title"] == "Friday Show",
    );
    eprintln!("rename reached API and SSE in {:?}", t0.elapsed());
    assert!(t0.elapsed() <= RENAME_DEADLINE + Duration::from_millis(500));
    alice.set_state(&room, "m.room.topic", "", json!({"topic": "Live coding"}));
    sse.wait("description", MX_TIMEOUT, |d| {
        d["description"] == "Live coding"
    });

    // --- chat: Matrix → SSE ------------------------------------------------------------
    let hello = alice.send_text(&room, "hello from matrix");
    let chat = sse.wait("chat", MX_TIMEOUT, |d| d["id"] == hello.as_str());
    assert_eq!(chat["body"], "hello from matrix");
    assert_eq!(chat["sender_id"], alice.user_id.as_str());
    assert_eq!(chat["guest"], false);
    assert!(chat["ts"].as_u64().unwrap() > 1_600_000_000_000);
    // An edit in Matrix replaces the message's text under its id.
    alice.edit_text(&room, &hello, "hello from matrix, edited");
    let edited = sse.wait("chat", MX_TIMEOUT, |d| {
        d["id"] == hello.as_str() && d["body"] == "hello from matrix, edited"
    });
    assert_eq!(
        edited["ts"], chat["ts"],
        "an edit keeps the message's place"
    );

    // --- guest → room through a puppet ---------------------------------------------------
    let r = post_json(server, "/api/v1/guests", None, &json!({"name": "  Bob  "}));
    assert_eq!(r.status, 201, "{}", r.text());
    let g = r.json().unwrap();
    assert_eq!(g["display_name"], "Bob (guest)");
    let gtoken = g["guest_token"].as_str().unwrap().to_string();
    let r = post_json(
        server,
        "/api/v1/streams/show/chat",
        Some(&gtoken),
        &json!({"body": "hi from the page"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let gid = r.json().unwrap()["id"].as_str().unwrap().to_string();
    let in_room = wait_until("the guest's message in the room", MX_TIMEOUT, || {
        alice
            .messages(&room, 50)
            .into_iter()
            .find(|e| e["event_id"] == gid.as_str())
    });
    let puppet = in_room["sender"].as_str().unwrap().to_string();
    assert!(puppet.starts_with("@_roomcast_"), "{puppet}");
    assert_eq!(in_room["content"]["body"], "hi from the page");
    let member = alice.state(&room, "m.room.member", &puppet).unwrap();
    assert_eq!(member["displayname"], "Bob (guest)");
    let gchat = sse.wait("chat", MX_TIMEOUT, |d| d["id"] == gid.as_str());
    assert_eq!(gchat["guest"], true);
    assert_eq!(gchat["sender"], "Bob (guest)");

    // --- redaction removes it from the feed and the history ------------------------------
    alice.redact(&room, &gid);
    sse.wait("redaction", MX_TIMEOUT, |d| d["id"] == gid.as_str());
    let fresh = Sse::open(server, "show");
    fresh.wait("chat", MX_TIMEOUT, |d| d["id"] == hello.as_str());
    assert!(
        fresh
            .events()
            .iter()
            .all(|(n, d)| !(n == "chat" && d["id"] == gid.as_str())),
        "a redacted message is not in the history"
    );

    // --- a banned puppet is refused with a clear error ------------------------------------
    alice.ban(&room, &puppet);
    let r = post_json(
        server,
        "/api/v1/streams/show/chat",
        Some(&gtoken),
        &json!({"body": "still here?"}),
    );
    let v = assert_json_error(&r, 403, "banned guest posts");
    assert_eq!(v["code"], "guest_banned");
    assert!(v["error"].as_str().unwrap().contains("removed"), "{v}");

    // --- transactions: replay, malformed, wrong token ----------------------------------------
    let hs = env.hs_token();
    let r = env.put_transaction(
        "test-replay-1",
        &hs,
        name_event(&room, "$test-replay-a", "Replayed A", &alice.user_id)
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // 200 means written down; it is applied just after.
    wait_until("the pushed rename", MX_TIMEOUT, || {
        (api(server, "/api/v1/streams/show")["title"] == "Replayed A").then_some(())
    });
    let from = server.log_len();
    // The homeserver's retry carries the same events (a reused id with new
    // events is a new transaction: faults_matrix.rs).
    let r = env.put_transaction(
        "test-replay-1",
        &hs,
        name_event(&room, "$test-replay-a", "Replayed B", &alice.user_id)
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 200, "a replay is answered 200: {}", r.text());
    // Nothing was queued (logged before the answer), so nothing changes later.
    server.wait_for_log_from(from, "transaction replayed; already applied", MX_TIMEOUT);
    assert_eq!(
        api(server, "/api/v1/streams/show")["title"],
        "Replayed A",
        "a replayed txn id changes nothing"
    );

    for bad in [
        &b"{\"events\": ["[..],
        b"{\"events\": \"nope\"}",
        b"\xff\xfe",
        b"",
    ] {
        let r = env.put_transaction("test-bad-1", &hs, bad);
        let v: Value = r.json().unwrap_or(Value::Null);
        assert_eq!(
            r.status,
            400,
            "malformed transaction {:?}: {}",
            String::from_utf8_lossy(bad),
            r.text()
        );
        assert!(v["errcode"].is_string(), "{v}");
    }
    assert_eq!(
        api(server, "/api/v1/streams/show")["title"],
        "Replayed A",
        "nothing applied"
    );
    // The id of a refused transaction was not recorded: it applies when valid.
    let r = env.put_transaction(
        "test-bad-1",
        &hs,
        name_event(&room, "$test-bad-ok", "After bad", &alice.user_id)
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 200);
    wait_until("the rename after the refused ones", MX_TIMEOUT, || {
        (api(server, "/api/v1/streams/show")["title"] == "After bad").then_some(())
    });

    let r = env.put_transaction(
        "test-forbidden",
        "wrong-token",
        name_event(&room, "$x", "Hacked", "@x:localhost")
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json().unwrap()["errcode"], "M_FORBIDDEN");
    let r = http::request(
        "PUT",
        &server.url("/_matrix/app/v1/transactions/t-noauth"),
        &[],
        Some(b"{\"events\":[]}"),
    )
    .unwrap();
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(api(server, "/api/v1/streams/show")["title"], "After bad");
    for path in [
        "/_matrix/app/v1/users/@nobody:localhost",
        "/_matrix/app/v1/rooms/%23live_x:localhost",
    ] {
        let r = http::request(
            "GET",
            &server.url(path),
            &[("Authorization", "Bearer nope")],
            None,
        )
        .unwrap();
        assert_eq!(r.status, 403, "{path}: {}", r.text());
    }
    // (Synapse still has "Friday Show": the fake events above never reached it.)
    alice.set_state(
        &room,
        "m.room.name",
        "",
        json!({"name": "Friday Night Show"}),
    );
    wait_until("the title from Synapse again", MX_TIMEOUT, || {
        (api(server, "/api/v1/streams/show")["title"] == "Friday Night Show").then_some(())
    });

    // --- the stream ends: the notice is edited with duration and peak viewers -----------------
    ffmpeg.stop(Duration::from_secs(10));
    let edit = wait_until("the ended edit", MX_TIMEOUT, || {
        alice.messages_from(&room, &bot).into_iter().find(|e| {
            e["content"]["m.relates_to"]["rel_type"] == "m.replace"
                && e["content"]["m.new_content"]["body"]
                    .as_str()
                    .is_some_and(|b| b.contains("ended after"))
        })
    });
    assert_eq!(
        edit["content"]["m.relates_to"]["event_id"],
        notice["event_id"]
    );
    let ended = edit["content"]["m.new_content"]["body"].as_str().unwrap();
    assert!(
        ended.contains("Friday Night Show") && ended.contains("peak 0 viewers"),
        "{ended}"
    );
    wait_until("the stream state event to say offline", MX_TIMEOUT, || {
        alice
            .state(&room, "io.roomcast.stream", "show")
            .filter(|s| s["state"] == "offline")
    });
    assert_eq!(golive_notices(&alice, &room, &bot).len(), 1);

    // --- restart: rooms, keys and mappings survive; publishing works -----------------------------
    env.stop_roomcast();
    env.start_roomcast();
    let server = env.server();
    let snap = api(server, "/api/v1/streams/show");
    assert_eq!(snap["room"]["room_id"], room.as_str());
    assert_eq!(snap["title"], "Friday Night Show");
    assert_eq!(snap["description"], "Live coding");
    let history = Sse::open(server, "show");
    history.wait("chat", MX_TIMEOUT, |d| d["id"] == hello.as_str());
    let ffmpeg2 = publish(server, &key);
    server.wait_live("show", LIVE_TIMEOUT);
    wait_until(
        "a second go-live notice after the restart",
        MX_TIMEOUT,
        || (golive_notices(&alice, &room, &bot).len() == 2).then_some(()),
    );
    server.assert_no_key_logged();
    assert!(
        server
            .log_lines()
            .iter()
            .all(|l| !l.contains(&key) && !l.contains(&hs)),
        "a secret was logged"
    );
    Lifecycle {
        env,
        alice,
        room,
        key,
        _ffmpeg: ffmpeg2,
    }
}

/// The same flow with `database_url = "postgres://…"` against a real
/// PostgreSQL; then the database goes away for a while: roomcast keeps serving,
/// the homeserver's transactions are refused (so it retries) and applied once
/// the database is back, and a stream that went live meanwhile gets exactly one
/// go-live notice.
#[test]
fn stream_room_lifecycle_on_postgres() {
    let _serial = serial();
    let mut pg = postgres::Postgres::start();
    let url = pg.create_database("roomcast");
    let env = MatrixEnv::start_with_database("golive_delay_ms = 1500", Some(url));
    let Lifecycle {
        env,
        alice,
        room,
        key,
        _ffmpeg: ffmpeg,
    } = lifecycle(env);
    let server = env.server();
    let bot = env.bot_id();

    // It really was PostgreSQL: the rows are there, SQLite was never touched.
    assert!(
        !env.state.path().join("roomcast.db").exists(),
        "an SQLite file was created although database_url names PostgreSQL"
    );
    let key_hash = pg.psql(
        "roomcast",
        "SELECT key_hash FROM streams WHERE name = 'show'",
    );
    assert_eq!(key_hash.len(), 64, "{key_hash}");
    assert!(!key_hash.contains(&key), "the key itself was stored");
    assert_eq!(
        pg.psql(
            "roomcast",
            &format!("SELECT stream FROM matrix_streams WHERE room_id = '{room}'")
        ),
        "show"
    );
    assert_eq!(
        pg.psql(
            "roomcast",
            "SELECT count(*) FROM _sqlx_migrations WHERE success"
        ),
        std::fs::read_dir(manifest_dir().join("migrations/postgres"))
            .unwrap()
            .count()
            .to_string(),
        "every migration applied"
    );
    // Nothing left undelivered. The go-live notice seen above is not the
    // last item: the stream's state event is sent after it, and each is
    // marked done after its send.
    wait_until("the outbox to drain", MX_TIMEOUT, || {
        (pg.psql(
            "roomcast",
            "SELECT count(*) FROM matrix_outbox WHERE done_at IS NULL",
        ) == "0")
            .then_some(())
    });
    server.wait_for_log("storage: database ready backend=postgres", MX_TIMEOUT);
    assert!(
        server
            .log_lines()
            .iter()
            .all(|l| !l.contains(pg.password())),
        "the database password was logged"
    );

    // The stream ends while the database is still there.
    drop(ffmpeg);
    wait_until("the stream state event to say offline", MX_TIMEOUT, || {
        alice
            .state(&room, "io.roomcast.stream", "show")
            .filter(|s| s["state"] == "offline")
    });
    assert_eq!(golive_notices(&alice, &room, &bot).len(), 2);

    // --- the database goes away ----------------------------------------------------------------
    pg.stop();
    let from = server.log_lines().len();
    alice.set_state(
        &room,
        "m.room.name",
        "",
        json!({"name": "Back On Postgres"}),
    );
    server.wait_for_log_from(
        from,
        "matrix: transaction not applied, the homeserver will retry",
        MX_TIMEOUT,
    );
    // Everyone else is still served: the page API, health, the live stream.
    assert_eq!(server.get("/healthz").status, 200);
    assert_eq!(
        api(server, "/api/v1/streams/show")["title"],
        "Friday Night Show"
    );
    // Publishing does not need the database; the go-live notice waits for it.
    let _ffmpeg3 = publish(server, &key);
    server.wait_live("show", LIVE_TIMEOUT);
    server.wait_for_log_from(from, "cannot queue the go-live notice yet", MX_TIMEOUT);

    // --- and comes back: the homeserver's retry is applied, once --------------------------------
    let titles = Sse::open(server, "show");
    pg.start_again();
    wait_until(
        "the rename after the database came back",
        MX_TIMEOUT,
        || (api(server, "/api/v1/streams/show")["title"] == "Back On Postgres").then_some(()),
    );
    titles.wait("title", MX_TIMEOUT, |d| d["title"] == "Back On Postgres");
    assert_eq!(
        pg.psql("roomcast", "SELECT title FROM streams WHERE name = 'show'"),
        "Back On Postgres"
    );
    server.wait_for_log_from(
        from,
        "go-live notice queued after the database came back",
        MX_TIMEOUT,
    );
    wait_until("the outbox to drain", MX_TIMEOUT, || {
        (pg.psql(
            "roomcast",
            "SELECT count(*) FROM matrix_outbox WHERE done_at IS NULL",
        ) == "0")
            .then_some(())
    });
    assert_eq!(
        golive_notices(&alice, &room, &bot).len(),
        3,
        "exactly one go-live notice for the stream that started during the outage"
    );
    server.assert_no_key_logged();
}
