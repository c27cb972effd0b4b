//! Screen-share parties in the room widget (issue 16 item 2), with real
//! Synapse, real roomcast and real Chromium (tests/browser/party.mjs): in a
//! room with `!live party on` and `party_power_level = 10`, alice (creator)
//! and bob (given level 10) press Share screen in their widgets (matrix-widget-api
//! client hosts, OpenID tokens from Synapse, Chromium's fake screen capture);
//! every widget, carol's too, shows the others' tiles decoding and never its
//! own share played back; carol (level 0) gets no button and the API refuses
//! her; a forged WHIP publish is refused; alice's Stop removes her tile from
//! every widget within 2 s; bob losing his power level ends his share on the
//! server (his tile goes everywhere, his widget says so); and the room got
//! exactly one compact notice per share, edited when it ended.

mod common;

use std::process::Command;
use std::time::Duration;

use common::http;
use common::matrix::*;
use common::rtc_client::{self, Outgoing};
use common::*;
use serde_json::{Value, json};

const PARTY_TIMEOUT: Duration = Duration::from_secs(180);

fn live_new(env: &MatrixEnv, user: &MxUser, name: &str) -> String {
    let bot = env.bot_id();
    let dm = user.dm_bot(&bot);
    user.live_new(&dm, &bot, name);
    let room = wait_until("the stream room's alias", MX_TIMEOUT, || {
        user.resolve_alias(&format!("#live_{name}:localhost"))
    });
    user.join(&room);
    room
}

fn post_json(server: &Server, path: &str, bearer: Option<&str>, body: &Value) -> (u16, Value) {
    let auth = bearer.map(|b| format!("Bearer {b}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    let r = http::request(
        "POST",
        &server.url(path),
        &headers,
        Some(body.to_string().as_bytes()),
    )
    .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    (r.status, r.json().unwrap_or(Value::Null))
}

fn forged_whip(server: &Server, stream: &str, bearer: &str) -> u16 {
    let auth = format!("Bearer {bearer}");
    http::request(
        "POST",
        &server.url(&format!("/whip/{stream}")),
        &[
            ("Content-Type", "application/sdp"),
            ("Authorization", auth.as_str()),
        ],
        Some(b"v=0\r\n"),
    )
    .expect("POST /whip")
    .status
}

/// The bot's party notices in `room`: (originals, edits).
fn party_notices(user: &MxUser, room: &str, bot: &str) -> (Vec<Value>, Vec<Value>) {
    let msgs = user.messages_from(room, bot);
    let originals = msgs
        .iter()
        .filter(|m| {
            m["content"]["body"]
                .as_str()
                .is_some_and(|b| b.starts_with("🔴") && b.contains("is sharing their screen"))
        })
        .cloned()
        .collect();
    let edits = msgs
        .iter()
        .filter(|m| m["content"]["m.relates_to"]["rel_type"] == "m.replace")
        .cloned()
        .collect();
    (originals, edits)
}

#[test]
fn members_share_screens_in_the_room_widget() {
    let _serial = serial();
    let env = MatrixEnv::start_browsable("golive_delay_ms = 1000\nparty_power_level = 10");
    let server = env.server();
    let bot = env.bot_id();
    let alice = env.user("alice");
    let bob = env.user("bob");
    let carol = env.user("carol");
    alice.set_display_name("Alice");
    bob.set_display_name("Bob");
    carol.set_display_name("Carol");
    // alice has an avatar (authenticated media: the page gets it through roomcast).
    alice.set_avatar(&alice.upload(&png(96, 96, "blue"), "image/png"));
    let room = live_new(&env, &alice, "hangout");
    for u in [&bob, &carol] {
        alice.invite(&room, &u.user_id);
        u.join(&room);
    }
    // bob may share (level 10), carol may not (0).
    let mut pl = alice
        .state(&room, "m.room.power_levels", "")
        .expect("power levels");
    pl["users"][bob.user_id.as_str()] = json!(10);
    alice.set_state(&room, "m.room.power_levels", "", pl);
    alice.send_text(&room, "!live party on");
    alice.wait_message(&room, &bot, "Screen-share party on");

    // carol's widget asks the API directly: she joins the party but may not share.
    let party = format!("/api/v1/rooms/{}/party", enc(&room));
    let (token, server_name) = carol.openid_token();
    let (status, welcome) = post_json(
        server,
        &format!("{party}/session"),
        None,
        &json!({"openid_token": token, "matrix_server_name": server_name}),
    );
    assert_eq!(status, 200, "carol's party session: {welcome}");
    assert_eq!(welcome["may_share"], false, "{welcome}");
    let carol_token = welcome["party_token"].as_str().unwrap().to_string();
    let (status, refused) = post_json(
        server,
        &format!("{party}/share"),
        Some(&carol_token),
        &json!({}),
    );
    assert_eq!(status, 403, "carol's share: {refused}");
    assert_eq!(refused["code"], "not_enough_power");

    let widget = alice
        .state(&room, "im.vector.modular.widgets", "roomcast_hangout")
        .expect("the widget state event");
    let users = json!([
        {"label": "alice", "user_id": alice.user_id, "access_token": alice.token, "display_name": "Alice", "share": true},
        {"label": "bob", "user_id": bob.user_id, "access_token": bob.token, "display_name": "Bob", "share": true, "ended_by_server": true},
        {"label": "carol", "user_id": carol.user_id, "access_token": carol.token, "display_name": "Carol", "share": false},
    ]);
    let dir = node_dir();
    let mut cmd =
        Command::new(std::env::var_os("ROOMCAST_TEST_NODE").unwrap_or_else(|| "node".into()));
    cmd.current_dir(&dir)
        .arg(dir.join("party.mjs"))
        .arg("--base")
        .arg(server.base_url())
        .arg("--artifacts")
        .arg(manifest_dir().join("tests/artifacts/party"))
        .args(["--hs", &env.synapse.base_url(), "--room", &room])
        .args([
            "--widget",
            &widget.to_string(),
            "--users",
            &users.to_string(),
        ]);
    let mut tool = JsonTool::spawn("party.mjs", cmd);
    let sharing = tool.wait_for("sharing", PARTY_TIMEOUT, |v| v["type"] == "sharing");
    // While alice shares: a forged publish to her stream is refused, with no
    // bearer, a made-up one, or carol's party token.
    let alice_stream = sharing["streams"]["carol"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["user"] == alice.user_id.as_str())
        .expect("alice's tile in carol's grid")["stream"]
        .as_str()
        .unwrap()
        .to_string();
    // Carol's grid shows alice's avatar decoded and bob's initial.
    let carol_tiles = sharing["streams"]["carol"].as_array().unwrap();
    let tile_of = |u: &MxUser| {
        carol_tiles
            .iter()
            .find(|t| t["user"] == u.user_id.as_str())
            .unwrap_or_else(|| panic!("{}'s tile in carol's grid", u.user_id))
    };
    let a = &tile_of(&alice)["avatar"];
    // (Synapse picks the thumbnail size; any decoded picture will do.)
    assert!(
        a["loaded"] == true && a["width"].as_u64() > Some(0),
        "alice's avatar: {a}"
    );
    assert_eq!(tile_of(&bob)["avatar"]["initial"], "B");
    for bearer in ["not-a-grant-0123456789", carol_token.as_str()] {
        assert_eq!(
            forged_whip(server, &alice_stream, bearer),
            401,
            "forged WHIP with {bearer}"
        );
    }
    // bob loses the power to share while sharing: the server ends his share.
    let mut pl = alice
        .state(&room, "m.room.power_levels", "")
        .expect("power levels");
    pl["users"][bob.user_id.as_str()] = json!(0);
    alice.set_state(&room, "m.room.power_levels", "", pl);
    server.wait_for_log("the member lost the power to share", MX_TIMEOUT);
    let r = tool.result(PARTY_TIMEOUT);
    println!("party: {r}");
    assert_eq!(r["ok"], true, "party.mjs failed: {}", r["reason"]);

    // One compact notice per share, each edited once its share ended.
    let (originals, edits) = wait_until("both share notices edited", MX_TIMEOUT, || {
        let (o, e) = party_notices(&alice, &room, &bot);
        (o.len() >= 2 && e.len() >= 2).then_some((o, e))
    });
    assert_eq!(originals.len(), 2, "share notices: {originals:?}");
    let bodies: Vec<&str> = originals
        .iter()
        .map(|m| m["content"]["body"].as_str().unwrap())
        .collect();
    assert!(
        bodies.contains(&"🔴 Alice is sharing their screen"),
        "{bodies:?}"
    );
    assert!(
        bodies.contains(&"🔴 Bob is sharing their screen"),
        "{bodies:?}"
    );
    assert_eq!(edits.len(), 2, "edits: {edits:?}");
    for o in &originals {
        let id = o["event_id"].as_str().unwrap();
        let edit = edits
            .iter()
            .find(|e| e["content"]["m.relates_to"]["event_id"] == id)
            .unwrap_or_else(|| panic!("no edit of {o}"));
        let text = edit["content"]["m.new_content"]["body"].as_str().unwrap();
        assert!(text.contains("shared their screen for"), "{text}");
        assert_eq!(
            o["content"]["m.mentions"],
            json!({}),
            "a share notice mentions nobody"
        );
    }
    // No go-live notice in the long form for a share.
    assert!(
        !alice
            .messages_from(&room, &bot)
            .iter()
            .any(|m| m["content"]["body"]
                .as_str()
                .is_some_and(|b| b.contains(" is live"))),
        "a share got the long go-live notice"
    );
}

#[test]
fn standalone_party_page_with_a_party_key() {
    let _serial = serial();
    let key = "friends-party-key-0123456789";
    // Two shares of 1500 + 64 kbit/s watched by each other are 6.3 Mbit/s out;
    // a third would be 14.1 (`plan --mode call`): over the 10 Mbit/s cap.
    // "solo" allows one sharer: a grant holds that slot before it is used.
    // Every participant joins from 127.0.0.1: lift the per-address limit on
    // key exchanges (the attack suite tests it).
    let server = Server::start(&format!(
        "[limits]\nmax_egress_mbps = 10\naccess_per_minute = 0\n\n[[parties]]\nname = \"friends\"\nkey = \"{key}\"\nmax_kbps = 1500\n\n\
         [[parties]]\nname = \"solo\"\nkey = \"{key}\"\nmax_sharers = 1\n"
    ));
    let solo_shares: Vec<(u16, Value)> = ["Ann", "Bo"]
        .iter()
        .map(|name| {
            let (status, j) = post_json(
                &server,
                "/api/v1/parties/solo/join",
                None,
                &json!({"key": key, "display_name": name}),
            );
            assert_eq!(status, 201, "{j}");
            let token = j["party_token"].as_str().unwrap();
            post_json(
                &server,
                "/api/v1/parties/solo/share",
                Some(token),
                &json!({}),
            )
        })
        .collect();
    assert_eq!(solo_shares[0].0, 201, "{}", solo_shares[0].1);
    assert_eq!(
        (solo_shares[1].0, solo_shares[1].1["code"].as_str()),
        (503, Some("party_over_capacity")),
        "a second share while the first grant is unused: {}",
        solo_shares[1].1
    );
    // The API refuses a wrong key, an unknown party and a missing token.
    let party = "/api/v1/parties/friends";
    let (status, r) = post_json(
        &server,
        &format!("{party}/join"),
        None,
        &json!({"key": "wrong-key-wrong-key-00", "display_name": "Eve"}),
    );
    assert_eq!(
        (status, r["code"].as_str()),
        (403, Some("party_key_rejected"))
    );
    let (status, _) = post_json(
        &server,
        "/api/v1/parties/nope/join",
        None,
        &json!({"key": key, "display_name": "Eve"}),
    );
    assert_eq!(status, 404);
    assert_eq!(server.get(party).status, 401);
    assert_eq!(server.get("/party/nope").status, 404);
    let (status, joined) = post_json(
        &server,
        &format!("{party}/join"),
        None,
        &json!({"key": key, "display_name": "Dan"}),
    );
    assert_eq!(status, 201, "{joined}");
    assert_eq!(joined["max_kbps"], 1500);
    // The grid's feed: refused without a token; with one as `?access=`
    // (EventSource cannot set headers) the view at once, then each change.
    assert_eq!(server.get(&format!("{party}/events")).status, 401);
    let dan_token = joined["party_token"].as_str().unwrap().to_string();
    let feed = Sse::open_path(&server, &format!("{party}/events?access={dan_token}"));
    let views = || -> Vec<Value> {
        feed.events()
            .into_iter()
            .filter(|(n, _)| n == "view")
            .map(|(_, v)| v)
            .collect()
    };
    let first = wait_until("the feed's first view", Duration::from_secs(10), || {
        views().into_iter().next()
    });
    assert_eq!(
        (first["enabled"].as_bool(), feed.status()),
        (Some(true), Some(200)),
        "{first}"
    );

    let users = json!([
        {"label": "ann", "display_name": "Ann", "share": true},
        {"label": "bo", "display_name": "Bo", "share": true, "close_tab": true},
        {"label": "cy", "display_name": "Cy", "share": false, "refused": true},
    ]);
    let dir = node_dir();
    let mut cmd =
        Command::new(std::env::var_os("ROOMCAST_TEST_NODE").unwrap_or_else(|| "node".into()));
    cmd.current_dir(&dir)
        .arg(dir.join("party.mjs"))
        .arg("--base")
        .arg(server.base_url())
        .arg("--artifacts")
        .arg(manifest_dir().join("tests/artifacts/party"))
        .args(["--standalone", "friends", "--key", key])
        .args(["--users", &users.to_string()]);
    let mut tool = JsonTool::spawn("party.mjs --standalone", cmd);
    let sharing = tool.wait_for("sharing", PARTY_TIMEOUT, |v| v["type"] == "sharing");
    // A forged publish to a sharer's stream: a made-up Bearer, or Dan's party token.
    let stream = sharing["streams"]["cy"][0]["stream"]
        .as_str()
        .unwrap()
        .to_string();
    for bearer in [
        "not-a-grant-0123456789",
        joined["party_token"].as_str().unwrap(),
    ] {
        assert_eq!(
            forged_whip(&server, &stream, bearer),
            401,
            "forged WHIP with {bearer}"
        );
    }
    // Cy saw the estimate of `roomcast plan --mode call` for three sharers,
    // the cap it passes, and her share was refused with it.
    let refused = &sharing["refused"]["cy"];
    // (No ROOMCAST_* of the test tools: the binary reads those as config.)
    let plan = Command::new(roomcast_bin())
        .env_clear()
        .args(["plan", "--mode", "call", "--viewers", "3"])
        .args(["--video-kbps", "1500", "--audio-kbps", "64"])
        .output()
        .expect("roomcast plan");
    let plan = String::from_utf8_lossy(&plan.stdout).to_string();
    let out = format!(
        "out: {:.2} Mbit/s",
        refused["estimate"]["mbps_out"].as_f64().unwrap()
    );
    assert!(plan.contains(&out), "widget {refused} vs plan {plan}");
    let text = refused["estimate"]["text"].as_str().unwrap();
    assert!(
        text.contains("3 members would share") && text.contains("3 in, 9 out"),
        "{text}"
    );
    assert!(text.contains("limits.max_egress_mbps = 10"), "{text}");
    let status = refused["status"].as_str().unwrap();
    assert!(status.contains("limits.max_egress_mbps = 10"), "{status}");
    let r = tool.result(PARTY_TIMEOUT);
    println!("standalone party: {r}");
    assert_eq!(r["ok"], true, "party.mjs failed: {}", r["reason"]);
    // Dan's feed (he only watched) saw each share go live and end, as the
    // changes came, and the open feed kept him in the party.
    let live_in = |v: &Value| {
        v["sharers"]
            .as_array()
            .map_or(0, |s| s.iter().filter(|s| s["live"] == true).count())
    };
    let seen = wait_until(
        "the feed's view of the ended shares",
        Duration::from_secs(10),
        || {
            let v = views();
            (v.last().is_some_and(|l| live_in(l) == 0) && v.iter().any(|v| live_in(v) == 2))
                .then_some(v)
        },
    );
    println!(
        "dan's feed: {} views, live sharers {:?}",
        seen.len(),
        seen.iter().map(live_in).collect::<Vec<_>>()
    );
    assert!(!feed.is_closed(), "the feed ended early");
    // The token in the feed's query is not logged.
    assert!(
        !server.log_lines().iter().any(|l| l.contains(&dan_token)),
        "the party token was logged"
    );
    // Bo closed his tab: his share ended on the server too (within the
    // 5 s party.mjs allowed for his tile to go from the others' grids).
    let bo = r["stopped"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["user"] == "bo")
        .expect("bo stopped");
    assert_eq!(bo["closed_tab"], true, "{bo}");
    let after = server.get(&format!(
        "/api/v1/streams/{}",
        bo["stream"].as_str().unwrap()
    ));
    let live = after.json().unwrap_or(Value::Null);
    assert!(
        after.status == 404 || live["live"] == false,
        "bo's share after his tab closed: {} {live}",
        after.status
    );
}

/// `!live party quiet`: a share posts no notice, only the stream's state
/// event (live, then ended). The share is the API's grant published by
/// aiortc, as the widget would.
#[test]
fn a_quiet_party_posts_only_the_state_event() {
    let _serial = serial();
    let env = MatrixEnv::start("golive_delay_ms = 500");
    let server = env.server();
    let bot = env.bot_id();
    let alice = env.user("alice");
    alice.set_display_name("Alice");
    let room = live_new(&env, &alice, "hush");
    alice.send_text(&room, "!live party quiet");
    alice.wait_message(&room, &bot, "Screen-share party on, quietly");
    let party = format!("/api/v1/rooms/{}/party", enc(&room));
    let (token, server_name) = alice.openid_token();
    let (status, welcome) = post_json(
        server,
        &format!("{party}/session"),
        None,
        &json!({"openid_token": token, "matrix_server_name": server_name}),
    );
    assert_eq!(status, 200, "{welcome}");
    let party_token = welcome["party_token"].as_str().unwrap();
    let (status, grant) = post_json(
        server,
        &format!("{party}/share"),
        Some(party_token),
        &json!({}),
    );
    assert_eq!(status, 201, "{grant}");
    let stream = grant["stream"].as_str().unwrap();
    let mut publisher = common::publishers::aiortc_publisher(
        &server.url(grant["whip_url"].as_str().unwrap()),
        common::publishers::WhipOpts {
            codec: "VP8",
            key: Some(grant["publish_token"].as_str().unwrap().to_string()),
            width: 320,
            height: 180,
            ..Default::default()
        },
    );
    server.wait_live(stream, MX_TIMEOUT);
    // The state event and a notice leave through the same outbox, together:
    // once the state says live, a notice would be in the room.
    wait_until("the share's state event to say live", MX_TIMEOUT, || {
        alice
            .state(&room, "io.roomcast.stream", stream)
            .filter(|s| s["state"] == "live")
    });
    let done = publisher.stop(MX_TIMEOUT);
    assert_eq!(done["ok"], true, "aiortc publisher: {done}");
    wait_until(
        "the share's state event to say it ended",
        MX_TIMEOUT,
        || {
            alice
                .state(&room, "io.roomcast.stream", stream)
                .filter(|s| s["state"] == "offline")
        },
    );
    let (originals, edits) = party_notices(&alice, &room, &bot);
    assert!(
        originals.is_empty() && edits.is_empty(),
        "a quiet party got notices: {originals:?} {edits:?}"
    );
    let any_live = alice.messages_from(&room, &bot).into_iter().find(|m| {
        m["content"]["body"]
            .as_str()
            .is_some_and(|b| b.contains("sharing") || b.contains(" is live"))
    });
    assert!(
        any_live.is_none(),
        "a quiet party got a notice: {any_live:?}"
    );
}

/// The names in `GET /api/v1/streams` starting with `prefix`.
fn streams_named(server: &Server, prefix: &str) -> Vec<String> {
    let r = server.get("/api/v1/streams");
    assert_eq!(r.status, 200, "{}", r.text());
    let list = r.json().expect("the stream list");
    list.as_array()
        .expect("an array")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// Publishes to a share's grant with the str0m client until the API shows
/// the stream live, then ends the publish (WHIP DELETE) and waits until the
/// stream is offline or gone.
fn share_once(server: &Server, grant: &Value) -> String {
    let stream = grant["stream"].as_str().expect("stream").to_string();
    let url = server.url(grant["whip_url"].as_str().expect("whip_url"));
    let mut session = rtc_client::start(
        &url,
        grant["publish_token"].as_str(),
        true,
        Outgoing::Nothing,
    )
    .unwrap_or_else(|r| panic!("WHIP to {stream}: {} {}", r.status, r.text()));
    server.wait_live(&stream, Duration::from_secs(20));
    let r = common::http::request("DELETE", &session.location, &[], None).unwrap();
    assert!(r.status < 300, "DELETE {}: {}", session.location, r.status);
    session.stop();
    wait_until(
        &format!("{stream} offline"),
        Duration::from_secs(20),
        || {
            server
                .api_stream(&stream)
                .is_none_or(|s| s["live"] == false)
                .then_some(())
        },
    );
    stream
}

/// Every join and share of a standalone party makes a stream `<party>-<id>`:
/// anyone with the key could grow the hub's registry without bound. A
/// share's stream leaves the registry once the share is over and nothing
/// holds it; a grant not used yet keeps its stream; a viewer of a removed
/// share gets the unknown-stream answer, and sharing again works.
#[test]
fn standalone_party_shares_leave_no_streams_behind() {
    let _serial = serial();
    const SHARES: usize = 8;
    let key = "churn-party-key-0123456789";
    let server = Server::start(&format!(
        "[limits]\naccess_per_minute = 0\n\n[[parties]]\nname = \"churn\"\nkey = \"{key}\"\n"
    ));
    let declared = server.get("/healthz").json().unwrap()["streams"]
        .as_u64()
        .expect("streams in /healthz");
    let join = |name: &str| -> String {
        let (status, j) = post_json(
            &server,
            "/api/v1/parties/churn/join",
            None,
            &json!({"key": key, "display_name": name}),
        );
        assert_eq!(status, 201, "join: {j}");
        j["party_token"].as_str().unwrap().to_string()
    };
    let share = |token: &str| -> Value {
        let (status, g) = post_json(
            &server,
            "/api/v1/parties/churn/share",
            Some(token),
            &json!({}),
        );
        assert_eq!(status, 201, "share: {g}");
        g
    };
    // The many-stream feed a multi-view page keeps open all along.
    let feed = Sse::open_path(&server, "/api/v1/events");
    // A member who asks for a grant and never publishes.
    let waiting = share(&join("Wes"))["stream"].as_str().unwrap().to_string();
    // Members join, share, stop; each share is a new stream.
    let mut shared = Vec::new();
    let mut last_token = String::new();
    for i in 0..SHARES {
        last_token = join(&format!("Member {i}"));
        shared.push(share_once(&server, &share(&last_token)));
    }
    // The registry comes back to what was declared and the grant not used
    // yet: on the API, in the per-stream metrics and in the gauges.
    let left = || streams_named(&server, "churn-");
    let bounded = poll_until(Duration::from_secs(30), || left() == [waiting.clone()]);
    assert!(
        bounded,
        "{SHARES} ended shares left streams in the registry: {:?} (the unused grant's is {waiting})",
        left()
    );
    let metrics = server.get("/metrics").text();
    let per_stream: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("roomcast_stream_live{stream=\"churn-"))
        .collect();
    assert_eq!(per_stream.len(), 1, "{per_stream:?}");
    assert_eq!(server.metric("roomcast_hub_streams"), declared + 1);
    assert_eq!(server.metric("roomcast_hub_streams_ephemeral"), 1);
    assert!(server.metric("roomcast_hub_streams_removed_total") >= SHARES as u64);
    // The feed showed each share and then told the page it is gone; the
    // grant not used yet is still there.
    for name in &shared {
        feed.wait("live", Duration::from_secs(5), |d| d["name"] == *name);
        feed.wait("removed", Duration::from_secs(5), |d| d["name"] == *name);
    }
    let removed: Vec<Value> = feed
        .events()
        .into_iter()
        .filter(|(n, _)| n == "removed")
        .map(|(_, d)| d["name"].clone())
        .collect();
    assert!(!removed.contains(&json!(waiting)), "{removed:?}");
    // A removed share is unknown to viewers, as any unknown stream.
    let gone = &shared[0];
    assert_eq!(server.api_stream(gone), None);
    let r = server.post_sdp(&format!("/whep/{gone}"), offer_sdp(&["H264"]).as_bytes());
    assert_json_error(&r, 404, "a viewer of a removed share");
    // Sharing again after the removal: a fresh stream of the same name,
    // titled with the member's name, that goes live and leaves again.
    let again = share(&last_token);
    let name = again["stream"].as_str().unwrap().to_string();
    assert_eq!(&name, shared.last().unwrap());
    let fresh = server.api_stream(&name).expect("the stream made again");
    assert_eq!(
        (fresh["title"].as_str(), fresh["live"].as_bool()),
        (Some(format!("Member {}", SHARES - 1).as_str()), Some(false)),
        "{fresh}"
    );
    share_once(&server, &again);
    let bounded = poll_until(Duration::from_secs(30), || left() == [waiting.clone()]);
    assert!(bounded, "the second share's stream stayed: {:?}", left());
}
