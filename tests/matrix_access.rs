//! Private and encrypted rooms, power levels and bad input against a real
//! Synapse: a private room's stream refuses viewers without a token or link
//! and admits a joined user's OpenID token or the bot's signed link; commands
//! from users without power and unknown commands get short answers; an
//! encrypted room is attached from a DM and the bot says plainly that its chat
//! can't be read; guests' bad input gets clear 4xx errors.

mod common;

use common::matrix::*;
use common::*;
use serde_json::{Value, json};

fn post(server: &Server, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
    http::request("POST", &server.url(path), headers, Some(body))
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

fn post_json(server: &Server, path: &str, token: Option<&str>, body: &Value) -> HttpResponse {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    post(server, path, &headers, body.to_string().as_bytes())
}

fn whep(server: &Server, path: &str, token: Option<&str>) -> HttpResponse {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/sdp")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    post(server, path, &headers, offer_sdp(&["H264"]).as_bytes())
}

#[test]
fn private_and_encrypted_rooms_power_and_bad_input() {
    let _serial = serial();
    // Rooms on alias lookups are off by default; this test joins one.
    let env = MatrixEnv::start("golive_delay_ms = 1000\nrooms_on_demand = true");
    let server = env.server();
    let bot = env.bot_id();
    let alice = env.user("alice");
    let mallory = env.user("mallory");
    let eve = env.user("eve");

    // A private (invite-only) room with the bot and a member without power.
    let room = alice.create_room(
        json!({"preset": "private_chat", "name": "Members only", "invite": [bot, mallory.user_id]}),
    );
    alice.wait_joined(&room, &bot);
    mallory.join(&room);

    // --- commands: no power, unknown ------------------------------------------------------
    mallory.send_text(&room, "!live attach sneaky");
    alice.wait_message(&room, &bot, "Only room admins");
    mallory.send_text(&room, "!live notify on");
    wait_until("a second refusal", MX_TIMEOUT, || {
        let n = alice
            .messages_from(&room, &bot)
            .iter()
            .filter(|e| {
                e["content"]["body"]
                    .as_str()
                    .is_some_and(|b| b.contains("Only room admins"))
            })
            .count();
        (n >= 2).then_some(())
    });
    alice.send_text(&room, "!live frobnicate now");
    alice.wait_message(&room, &bot, "unknown command 'frobnicate'");
    alice.send_text(&room, "!live new");
    alice.wait_message(&room, &bot, "usage: !live new <name>");
    assert_eq!(
        server.get("/api/v1/streams/sneaky").status,
        404,
        "nothing was created"
    );

    // --- attach by the admin: the bot asks for power first; key by DM, stream private ----------
    alice.send_text(&room, "!live attach members");
    alice.wait_message(&room, &bot, "I need power level 50");
    let mut pl = alice.state(&room, "m.room.power_levels", "").unwrap();
    pl["users"][&bot] = json!(50);
    alice.set_state(&room, "m.room.power_levels", "", pl);
    alice.send_text(&room, "!live attach members");
    alice.wait_message(&room, &bot, "Stream 'members' is attached");
    let dm = wait_until("the bot's DM invite", MX_TIMEOUT, || {
        alice.invites().into_iter().next()
    });
    alice.join(&dm);
    let key = key_from_settings(
        alice.wait_message(&dm, &bot, "Stream Key: ")["content"]["body"]
            .as_str()
            .unwrap(),
    );
    assert!(
        alice
            .messages_from(&room, &bot)
            .iter()
            .all(|e| !e.to_string().contains(&key)),
        "the key is never posted in the shared room"
    );
    let snap = server.api_stream("members").unwrap();
    assert_eq!(snap["access"], "private", "{snap}");
    assert_eq!(snap["title"], "Members only");
    // mallory may not get a key either.
    mallory.send_text(&room, "!live key");
    wait_until("a third refusal", MX_TIMEOUT, || {
        let n = alice
            .messages_from(&room, &bot)
            .iter()
            .filter(|e| {
                e["content"]["body"]
                    .as_str()
                    .is_some_and(|b| b.contains("Only room admins"))
            })
            .count();
        (n >= 3).then_some(())
    });

    let _ffmpeg = Publisher::ffmpeg(
        &server.rtmp_url(&key),
        FfmpegOpts {
            width: 640,
            height: 360,
            ..FfmpegOpts::default()
        },
    );
    server.wait_live("members", LIVE_TIMEOUT);

    // --- without a token or link: refused ------------------------------------------------------
    let r = whep(server, "/whep/members", None);
    assert_eq!(
        assert_json_error(&r, 401, "WHEP without a token")["code"],
        "access_required"
    );
    let r = whep(server, "/whep/members", Some("v1.99999999999.00"));
    assert_eq!(
        assert_json_error(&r, 403, "WHEP with a forged token")["code"],
        "access_denied"
    );
    let r = whep(server, "/whep/members?access=garbage", None);
    assert_eq!(
        assert_json_error(&r, 403, "WHEP with a garbage link")["code"],
        "access_denied"
    );
    // LL-HLS asks the same question for every request.
    let r = server.get("/hls/members/index.m3u8");
    assert_eq!(
        assert_json_error(&r, 401, "HLS without a token")["code"],
        "access_required"
    );
    let r = server.get("/hls/members/index.m3u8?access=garbage");
    assert_eq!(
        assert_json_error(&r, 403, "HLS with a garbage link")["code"],
        "access_denied"
    );

    // --- OpenID token of a joined user: admitted --------------------------------------------------
    let (openid, hs_name) = alice.openid_token();
    let r = post_json(
        server,
        "/api/v1/streams/members/access",
        None,
        &json!({"openid_token": openid, "matrix_server_name": hs_name}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json().unwrap();
    assert_eq!(v["expires_in"], 3600);
    let token = v["access_token"].as_str().unwrap().to_string();
    let r = whep(server, "/whep/members", Some(&token));
    assert_eq!(
        r.status,
        201,
        "WHEP with an OpenID-derived token: {}",
        r.text()
    );
    let r = whep(server, &format!("/whep/members?access={token}"), None);
    assert_eq!(r.status, 201, "WHEP with ?access=: {}", r.text());
    // The HLS playlist passes the token on to every URI it lists.
    let r = server.get(&format!("/hls/members/index.m3u8?access={token}"));
    assert_eq!(r.status, 200, "HLS with ?access=: {}", r.text());
    let playlist = r.text();
    let uris: Vec<&str> = playlist
        .lines()
        .filter_map(|l| l.split("URI=\"").nth(1).and_then(|u| u.split('"').next()))
        .collect();
    assert!(!uris.is_empty(), "{playlist}");
    let suffix = format!("?access={token}");
    assert!(uris.iter().all(|u| u.ends_with(&suffix)), "{playlist}");
    let init = uris
        .iter()
        .find(|u| u.starts_with("init-"))
        .expect("EXT-X-MAP");
    let r = server.get(&format!("/hls/members/{init}"));
    assert_eq!(r.status, 200, "init with the token: {}", r.text());
    let bare = init.split('?').next().unwrap();
    let r = server.get(&format!("/hls/members/{bare}"));
    assert_eq!(
        assert_json_error(&r, 401, "HLS init without a token")["code"],
        "access_required"
    );
    // The token is for this stream only.
    let r = whep(server, "/whep/nope", Some(&token));
    assert_eq!(r.status, 404);

    // Not a member, a foreign server, a bad token: refused.
    let (eve_openid, _) = eve.openid_token();
    let r = post_json(
        server,
        "/api/v1/streams/members/access",
        None,
        &json!({"openid_token": eve_openid, "matrix_server_name": "localhost"}),
    );
    assert_eq!(
        assert_json_error(&r, 403, "non-member OpenID")["code"],
        "not_a_member"
    );
    let r = post_json(
        server,
        "/api/v1/streams/members/access",
        None,
        &json!({"openid_token": openid, "matrix_server_name": "evil.example"}),
    );
    assert_eq!(
        assert_json_error(&r, 403, "foreign server")["code"],
        "access_denied"
    );
    let r = post_json(
        server,
        "/api/v1/streams/members/access",
        None,
        &json!({"openid_token": "bogus", "matrix_server_name": "localhost"}),
    );
    assert_eq!(
        assert_json_error(&r, 403, "bogus OpenID token")["code"],
        "access_denied"
    );
    let r = post(
        server,
        "/api/v1/streams/members/access",
        &[("Content-Type", "application/json")],
        b"{not json",
    );
    assert_json_error(&r, 400, "malformed access request");

    // --- a signed link from the bot: admitted ------------------------------------------------------
    alice.send_text(&room, "!live link 1h");
    let link = alice.wait_message(&room, &bot, "?access=");
    let body = link["content"]["body"].as_str().unwrap();
    let access = body
        .split("?access=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let r = whep(server, &format!("/whep/members?access={access}"), None);
    assert_eq!(r.status, 201, "WHEP with the bot's link: {}", r.text());
    mallory.send_text(&room, "!live link 24h");
    wait_until("a refusal of mallory's link", MX_TIMEOUT, || {
        let n = alice
            .messages_from(&room, &bot)
            .iter()
            .filter(|e| {
                e["content"]["body"]
                    .as_str()
                    .is_some_and(|b| b.contains("Only room admins"))
            })
            .count();
        (n >= 4).then_some(())
    });

    // The private room's chat is not on the public SSE feed, but is with a token.
    let hello = alice.send_text(&room, "members-only chat");
    let with = Sse::open_query(server, "members", &format!("access={token}"));
    with.wait("chat", MX_TIMEOUT, |d| d["id"] == hello.as_str());
    let without = Sse::open(server, "members");
    without.wait("live", MX_TIMEOUT, |_| true);
    assert!(
        without.events().iter().all(|(n, _)| n != "chat"),
        "private chat leaked"
    );

    // --- guests' bad input ------------------------------------------------------------------------
    let r = post_json(server, "/api/v1/guests", None, &json!({"name": "   "}));
    assert_eq!(
        assert_json_error(&r, 400, "blank guest name")["code"],
        "bad_name"
    );
    let r = post_json(
        server,
        "/api/v1/guests",
        None,
        &json!({"name": "x".repeat(33)}),
    );
    assert_eq!(
        assert_json_error(&r, 400, "long guest name")["code"],
        "bad_name"
    );
    let r = post_json(server, "/api/v1/guests", None, &json!({"name": "a\u{7}b"}));
    assert_eq!(
        assert_json_error(&r, 400, "control character")["code"],
        "bad_name"
    );
    let r = post_json(server, "/api/v1/guests", None, &json!({"name": "Carol"}));
    assert_eq!(r.status, 201, "{}", r.text());
    let gtoken = r.json().unwrap()["guest_token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = post_json(
        server,
        "/api/v1/streams/members/chat",
        None,
        &json!({"body": "hi"}),
    );
    assert_eq!(
        assert_json_error(&r, 401, "no guest token")["code"],
        "guest_token_required"
    );
    let r = post_json(
        server,
        "/api/v1/streams/members/chat",
        Some("g_wrong"),
        &json!({"body": "hi"}),
    );
    assert_eq!(
        assert_json_error(&r, 401, "wrong guest token")["code"],
        "guest_token_required"
    );
    let r = post_json(
        server,
        "/api/v1/streams/members/chat",
        Some(&gtoken),
        &json!({"body": "  "}),
    );
    assert_eq!(
        assert_json_error(&r, 400, "empty message")["code"],
        "empty_message"
    );
    let r = post_json(
        server,
        "/api/v1/streams/members/chat",
        Some(&gtoken),
        &json!({"body": "x".repeat(1001)}),
    );
    assert_eq!(
        assert_json_error(&r, 413, "1001 characters")["code"],
        "message_too_long"
    );
    let big = json!({"body": "x".repeat(100 * 1024)}).to_string();
    let r = post(
        server,
        "/api/v1/streams/members/chat",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &format!("Bearer {gtoken}")),
        ],
        big.as_bytes(),
    );
    assert_json_error(&r, 413, "a 100 KB chat message");
    let r = post_json(
        server,
        "/api/v1/streams/nope/chat",
        Some(&gtoken),
        &json!({"body": "hi"}),
    );
    assert_json_error(&r, 404, "chat to an unknown stream");
    // An invite-only room does not let a guest in: a clear refusal, not a 500.
    let r = post_json(
        server,
        "/api/v1/streams/members/chat",
        Some(&gtoken),
        &json!({"body": "let me in"}),
    );
    assert_eq!(
        assert_json_error(&r, 403, "guest in an invite-only room")["code"],
        "members_only"
    );

    // --- an encrypted room: attached from a DM, the bot says chat can't be read ------------------------
    let secret = alice.create_room(json!({
        "preset": "private_chat",
        "name": "Encrypted",
        "invite": [bot],
        "initial_state": [{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}],
    }));
    alice.wait_joined(&secret, &bot);
    let mut pl = alice.state(&secret, "m.room.power_levels", "").unwrap();
    pl["users"][&bot] = json!(50);
    alice.set_state(&secret, "m.room.power_levels", "", pl);
    // What a client sends in an encrypted room: the bot can't read it and says so.
    let path = format!(
        "/_matrix/client/v3/rooms/{}/send/m.room.encrypted/{}",
        enc(&secret),
        random_hex()
    );
    let (s, _) = alice.call("PUT", &path, Some(&json!({"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AwgA", "sender_key": "x", "session_id": "y", "device_id": "D"})));
    assert_eq!(s, 200);
    alice.wait_message(&secret, &bot, "This room is encrypted");
    alice.send_text(&dm, &format!("!live attach crypt {secret}"));
    let said = alice.wait_message(&secret, &bot, "Stream 'crypt' is attached");
    let said = said["content"]["body"].as_str().unwrap();
    assert!(
        said.contains("encrypted") && said.contains("cannot read"),
        "{said}"
    );
    alice.wait_message(&dm, &bot, "Stream 'crypt' is attached to");
    let snap = server.api_stream("crypt").unwrap();
    assert_eq!(snap["room"]["chat"], false, "{snap}");

    // --- joining an unknown alias in the namespace creates the room on demand ----------------------
    let od = eve.join("#live_ondemand:localhost");
    let snap = server
        .api_stream("ondemand")
        .expect("a stream for the on-demand room");
    assert_eq!(snap["room"]["room_id"], od.as_str(), "{snap}");
    assert!(
        eve.state(&od, "im.vector.modular.widgets", "roomcast_ondemand")
            .is_some()
    );
    let (s, _) = eve.call(
        "POST",
        &format!(
            "/_matrix/client/v3/join/{}",
            enc("#live_Bad Name:localhost")
        ),
        Some(&json!({})),
    );
    assert_eq!(
        s, 404,
        "an invalid stream name in the namespace is not created"
    );

    // --- per-address guest limits behind a reverse proxy -------------------------------------------
    // 127.0.0.1 is a trusted proxy by default, so the client is the last
    // X-Forwarded-For hop (the first ones are whatever the client claimed):
    // distinct clients get their own allowance (10 new guests at once), and
    // one client does not get more than its own.
    let server = env.server();
    let new_guest = |forwarded_for: &str| {
        post(
            server,
            "/api/v1/guests",
            &[
                ("Content-Type", "application/json"),
                ("X-Forwarded-For", forwarded_for),
            ],
            br#"{"name": "Dee"}"#,
        )
    };
    for i in 0..12 {
        let r = new_guest(&format!("6.6.6.6, 198.51.100.{i}"));
        assert_eq!(r.status, 201, "forwarded client {i}: {}", r.text());
    }
    for i in 0..10 {
        let r = new_guest("203.0.113.5");
        assert_eq!(r.status, 201, "guest {i} of one client: {}", r.text());
    }
    let r = new_guest("1.1.1.1, 203.0.113.5");
    assert_eq!(
        assert_json_error(&r, 429, "an 11th guest from one address")["code"],
        "rate_limited"
    );
    assert!(r.header("retry-after").is_some(), "429 without Retry-After");

    let mut s = env.server;
    s.as_mut()
        .unwrap()
        .assert_healthy("after all the bad input");
    s.as_ref().unwrap().assert_no_key_logged();
    assert!(
        s.as_ref()
            .unwrap()
            .log_lines()
            .iter()
            .all(|l| !l.contains(&key) && !l.contains(&token) && !l.contains(&gtoken))
    );
}
