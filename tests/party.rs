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
use common::*;
use serde_json::{Value, json};

const PARTY_TIMEOUT: Duration = Duration::from_secs(180);

fn live_new(env: &MatrixEnv, user: &MxUser, name: &str) -> String {
    let bot = env.bot_id();
    let dm = user.dm_bot(&bot);
    user.send_text(&dm, &format!("!live new {name}"));
    user.wait_message(&dm, &bot, "Stream Key: ");
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
    let server = Server::start(&format!(
        "[[parties]]\nname = \"friends\"\nkey = \"{key}\"\nmax_kbps = 1500\n"
    ));
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

    let users = json!([
        {"label": "ann", "display_name": "Ann", "share": true},
        {"label": "bo", "display_name": "Bo", "share": true},
        {"label": "cy", "display_name": "Cy", "share": false},
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
    let r = tool.result(PARTY_TIMEOUT);
    println!("standalone party: {r}");
    assert_eq!(r["ok"], true, "party.mjs failed: {}", r["reason"]);
}
