//! Restreaming run from a Matrix room, against a real Synapse: the owner
//! DMs `!live restream add` for two real RTMP servers on loopback (nginx's
//! RTMP module and ffmpeg in listen mode); ffmpeg publishes H.264 + AAC
//! 44.1 kHz; both destinations receive H.264 + AAC (ffprobe, duration); the
//! room's `io.roomcast.restream` state event follows the health, and when
//! nginx is stopped and started again the room hears of the outage once,
//! however many retries; `!live restream` answers with the health; the
//! destination keys appear in no log line, no API answer, no room message
//! (the command carrying one is redacted once stored) and not in the
//! database file. On PostgreSQL, a stored destination (key sealed, checked
//! with psql) survives a restart and is pushed to.

mod common;

use std::time::Duration;

use common::matrix::*;
use common::postgres;
use common::restream::*;
use common::*;
use serde_json::Value;

const NGINX_KEY: &str = "mx-nginx-key-71c3e0a9f5d2";
const LISTEN_KEY: &str = "mx-listen-key-4b8d2f6a1e9c";
const API_KEY: &str = "mx-api-key-0c5e7a9b3d1f";
const STATE_TYPE: &str = "io.roomcast.restream";

fn restream_state(user: &MxUser, room: &str) -> Option<Value> {
    user.state(room, STATE_TYPE, "show")
}

fn dest_state(v: &Value, label: &str) -> Option<String> {
    v["destinations"]
        .as_array()?
        .iter()
        .find(|d| d["label"] == label)
        .and_then(|d| d["state"].as_str().map(str::to_string))
}

/// The room's `io.roomcast.restream` events in order (its timeline).
fn restream_events(user: &MxUser, room: &str) -> Vec<Value> {
    user.messages(room, 200)
        .into_iter()
        .filter(|e| e["type"] == STATE_TYPE)
        .collect()
}

fn api_status(server: &Server) -> Value {
    let r = server.get("/api/v1/streams/show/restream");
    assert_eq!(r.status, 200, "{}", r.text());
    let t = r.text();
    assert!(
        !t.contains(NGINX_KEY) && !t.contains(LISTEN_KEY),
        "key in the API: {t}"
    );
    r.json().unwrap()
}

#[test]
fn restream_set_from_a_dm_pushes_to_both_destinations_and_the_room_sees_health_changes_once() {
    let _serial = serial();
    let mut nginx = NginxRtmp::start();
    let mut listen = FfmpegListen::start(LISTEN_KEY);
    let env = MatrixEnv::start("golive_delay_ms = 1000");
    let bot = env.bot_id();
    let alice = env.user("alice");
    let dm = alice.dm_bot(&bot);
    let settings = alice.live_new(&dm, &bot, "show");
    let key = key_from_settings(settings["content"]["body"].as_str().unwrap());
    let room = wait_until("the room alias", MX_TIMEOUT, || {
        alice.resolve_alias("#live_show:localhost")
    });
    alice.join(&room);

    // Said in the room, a key is refused (and the message taken down).
    let leaked = alice.send_text(
        &room,
        "!live restream add oops rtmp://127.0.0.1:9/live not-a-real-key-123",
    );
    alice.wait_message(&room, &bot, "direct chat");
    wait_until("the message with a key redacted", MX_TIMEOUT, || {
        alice
            .messages(&room, 100)
            .into_iter()
            .find(|e| e["event_id"] == leaked.as_str() && e["content"]["body"].is_null())
    });

    // By DM: added, the reply shows the key masked, the command is redacted.
    let add_nginx = alice.send_text(
        &dm,
        &format!("!live restream add nginx {} {NGINX_KEY} show", nginx.url()),
    );
    let reply = alice.wait_message(&dm, &bot, "pushed to nginx");
    let body = reply["content"]["body"].as_str().unwrap();
    assert!(body.contains("••••••••d2"), "{body}");
    alice.send_text(
        &dm,
        &format!(
            "!live restream add listen {} {LISTEN_KEY} show",
            listen.url()
        ),
    );
    alice.wait_message(&dm, &bot, "pushed to listen");
    wait_until("the add command redacted", MX_TIMEOUT, || {
        alice
            .messages(&dm, 100)
            .into_iter()
            .find(|e| e["event_id"] == add_nginx.as_str() && e["content"]["body"].is_null())
    });

    let server = env.server();
    let mut publisher = Publisher::ffmpeg(
        &server.rtmp_url(&key),
        FfmpegOpts {
            sample_rate: 44_100,
            ..FfmpegOpts::small()
        },
    );
    server.wait_live("show", Duration::from_secs(30));
    wait_until("both destinations live in the room", MX_TIMEOUT, || {
        let s = restream_state(&alice, &room)?;
        (dest_state(&s, "nginx").as_deref() == Some("live")
            && dest_state(&s, "listen").as_deref() == Some("live"))
        .then_some(())
    });

    // nginx goes away for several retries, then comes back.
    wait_until("nginx recording 2 s", Duration::from_secs(30), || {
        let r = nginx.recordings();
        (r.len() == 1 && probe(&r[0]).1 >= 3.0).then_some(())
    });
    nginx.stop();
    wait_until("3 retries", Duration::from_secs(30), || {
        let s = api_status(server);
        let d = s["destinations"]
            .as_array()?
            .iter()
            .find(|d| d["label"] == "nginx")?
            .clone();
        (d["attempt"].as_u64()? >= 3).then_some(())
    });
    // The room hears of it through the health watcher (a poll a second,
    // then a PUT to Synapse): awaited, not read once (nginx stays down
    // meanwhile).
    wait_until("nginx reconnecting in the room", MX_TIMEOUT, || {
        let s = restream_state(&alice, &room)?;
        (dest_state(&s, "nginx").as_deref() == Some("reconnecting")).then_some(())
    });
    nginx.run();
    wait_until("nginx live again in the room", MX_TIMEOUT, || {
        let s = restream_state(&alice, &room)?;
        (dest_state(&s, "nginx").as_deref() == Some("live")).then_some(())
    });
    let events = restream_events(&alice, &room);
    let outages = events
        .iter()
        .filter(|e| dest_state(&e["content"], "nginx").as_deref() == Some("reconnecting"))
        .count();
    assert_eq!(outages, 1, "the outage told once: {events:#?}");

    // `!live restream` answers with the health.
    alice.send_text(&room, "!live restream");
    let health = alice.wait_message(&room, &bot, "Restreams of 'show'");
    let body = health["content"]["body"].as_str().unwrap();
    assert!(
        body.contains("nginx (") && body.contains("listen ("),
        "{body}"
    );
    assert!(body.contains("live,"), "{body}");

    wait_until(
        "nginx's second recording 2 s",
        Duration::from_secs(30),
        || {
            let r = nginx.recordings();
            (r.len() == 2 && probe(&r[1]).1 >= 3.0).then_some(())
        },
    );
    publisher.stop(Duration::from_secs(10));
    listen.wait_finished(Duration::from_secs(20));
    nginx.stop();
    for file in nginx.recordings().iter().chain([&listen.out]) {
        assert_h264_aac(file, 2.0);
    }

    // The API: the stream key manages destinations, a wrong one is refused.
    let put = |bearer: &str| {
        http::request(
            "PUT",
            &server.url("/api/v1/streams/show/restream/api-dest"),
            &[
                ("Content-Type", "application/json"),
                ("Authorization", format!("Bearer {bearer}").as_str()),
            ],
            Some(
                format!(r#"{{"url":"rtmp://127.0.0.1:9/live","key":"{API_KEY}","enabled":false}}"#)
                    .as_bytes(),
            ),
        )
        .unwrap()
    };
    assert_eq!(put("not-the-stream-key-000000").status, 401);
    let r = put(&key);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!r.text().contains(API_KEY), "{}", r.text());
    let s = api_status(server);
    let d = s["destinations"].as_array().unwrap();
    assert_eq!(d.len(), 3, "{s}");
    assert!(
        d.iter()
            .any(|d| d["label"] == "api-dest" && d["state"] == "off"),
        "{s}"
    );
    let del = |bearer: &str| {
        http::request(
            "DELETE",
            &server.url("/api/v1/streams/show/restream/api-dest"),
            &[("Authorization", format!("Bearer {bearer}").as_str())],
            None,
        )
        .unwrap()
        .status
    };
    assert_eq!(del("not-the-stream-key-000000"), 401);
    assert_eq!(del(&key), 204);
    assert_eq!(
        api_status(server)["destinations"].as_array().unwrap().len(),
        2
    );

    // The keys: in no log line, no bot message, not in the database file.
    for line in server.log_lines() {
        assert!(
            !line.contains(NGINX_KEY) && !line.contains(LISTEN_KEY) && !line.contains(API_KEY),
            "key logged: {line}"
        );
    }
    for r in [&dm, &room] {
        for e in alice.messages(r, 200) {
            let t = e.to_string();
            assert!(
                !t.contains(NGINX_KEY) && !t.contains(LISTEN_KEY),
                "key in a room message: {t}"
            );
        }
    }
    for f in ["roomcast.db", "roomcast.db-wal"] {
        let bytes = std::fs::read(env.state.path().join(f)).unwrap_or_default();
        let hay = String::from_utf8_lossy(&bytes);
        assert!(
            !hay.contains(NGINX_KEY) && !hay.contains(LISTEN_KEY) && !hay.contains(API_KEY),
            "a key in clear in {f}"
        );
    }
    server.assert_no_key_logged();
}

/// On PostgreSQL: a destination set by DM is stored with its key sealed
/// (checked with psql), survives a restart of roomcast (opened again with
/// the same secret file) and is pushed to when the stream goes live.
#[test]
fn destinations_survive_a_restart_on_postgres_with_keys_sealed() {
    let _serial = serial();
    let pg = postgres::Postgres::start();
    let url = pg.create_database("roomcast");
    let nginx = NginxRtmp::start();
    let mut env = MatrixEnv::start_with_database("golive_delay_ms = 1000", Some(url));
    let bot = env.bot_id();
    let alice = env.user("alice");
    let dm = alice.dm_bot(&bot);
    let settings = alice.live_new(&dm, &bot, "show");
    let key = key_from_settings(settings["content"]["body"].as_str().unwrap());
    alice.send_text(
        &dm,
        &format!("!live restream add nginx {} {NGINX_KEY} show", nginx.url()),
    );
    alice.wait_message(&dm, &bot, "pushed to nginx");
    let rows = pg.psql(
        "roomcast",
        "SELECT label, url, key_sealed, enabled FROM restream_destinations",
    );
    assert!(
        rows.contains("nginx") && rows.contains(&nginx.url()),
        "{rows}"
    );
    assert!(
        !rows.contains(NGINX_KEY),
        "the key in clear in the database: {rows}"
    );
    let secret = env.state.path().join("restream.secret");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777,
        0o600
    );

    env.stop_roomcast();
    env.start_roomcast();
    let server = env.server();
    let s = api_status(server);
    assert_eq!(s["destinations"][0]["label"], "nginx", "{s}");
    assert_eq!(s["destinations"][0]["key"], "••••••••d2", "{s}");
    let mut publisher = Publisher::ffmpeg(&server.rtmp_url(&key), FfmpegOpts::small());
    wait_until(
        "the stored destination pushed to",
        Duration::from_secs(30),
        || {
            let s = api_status(server);
            (s["destinations"][0]["state"] == "live").then_some(())
        },
    );
    wait_until("nginx recording", Duration::from_secs(30), || {
        let r = nginx.recordings();
        (r.len() == 1 && probe(&r[0]).1 >= 1.0).then_some(())
    });
    publisher.stop(Duration::from_secs(10));
    for line in server.log_lines() {
        assert!(!line.contains(NGINX_KEY), "key logged: {line}");
    }
}
