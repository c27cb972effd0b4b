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
use std::time::Duration;

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

/// A GET with a viewer token; the JSON answer (200 required).
fn api_with(server: &Server, path: &str, token: &str) -> Value {
    let r = http::request(
        "GET",
        &server.url(path),
        &[("Authorization", &format!("Bearer {token}"))],
        None,
    )
    .unwrap();
    assert_eq!(r.status, 200, "GET {path} with a token: {}", r.text());
    r.json().unwrap()
}

/// Waits until `/metrics` counts `n` live private streams (their state is
/// not in the API without a token).
fn wait_private_live(server: &Server, n: usize) {
    let want = format!("roomcast_private_streams_live {n}\n");
    wait_until("a private stream to be live", LIVE_TIMEOUT, || {
        server.get("/metrics").text().contains(&want).then_some(())
    });
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
    let (dm, key) = alice.key_from_bot_dm(&bot);
    assert!(
        alice
            .messages_from(&room, &bot)
            .iter()
            .all(|e| !e.to_string().contains(&key)),
        "the key is never posted in the shared room"
    );
    // Without access, the stream is not in the API: only its name, in the
    // room's listing (so the widget knows to ask for access).
    let r = server.get("/api/v1/streams/members");
    assert_eq!(
        assert_json_error(&r, 401, "a private stream's state without a token")["code"],
        "access_required"
    );
    let listed = server.get(&format!("/api/v1/rooms/{}/streams", enc(&room)));
    assert_eq!(
        listed.json().unwrap(),
        json!([{"name": "members", "access": "private"}]),
        "the room's listing without access"
    );
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
    wait_private_live(server, 1);

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
    let snap = api_with(server, "/api/v1/streams/members", &token);
    assert_eq!(snap["access"], "private", "{snap}");
    assert_eq!(snap["title"], "Members only");
    assert_eq!(snap["live"], true);
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
    let link = alice.wait_message(&room, &bot, "Viewer link for ");
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

    // The private room's feed (state and chat) is refused without a token;
    // with one, a message sent after subscribing arrives.
    let without = Sse::open(server, "members");
    let with = Sse::open_query(server, "members", &format!("access={token}"));
    with.wait("live", MX_TIMEOUT, |_| true);
    let hello = alice.send_text(&room, "members-only chat");
    with.wait("chat", MX_TIMEOUT, |d| d["id"] == hello.as_str());
    wait_until("the feed without a token to be refused", MX_TIMEOUT, || {
        without.is_closed().then_some(())
    });
    assert_eq!(without.status(), Some(401), "{:?}", without.events());
    assert!(without.events().is_empty(), "private feed leaked");

    // POST …/access is rate-limited per client address.
    let mut limited = None;
    for _ in 0..30 {
        let r = post(
            server,
            "/api/v1/streams/members/access",
            &[
                ("Content-Type", "application/json"),
                ("X-Forwarded-For", "198.51.100.77"),
            ],
            b"{not json",
        );
        if r.status == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status, 400, "{}", r.text());
    }
    let r = limited.expect("30 access requests from one address were all served");
    assert_eq!(
        assert_json_error(&r, 429, "access flood")["code"],
        "rate_limited"
    );
    assert!(r.header("retry-after").is_some(), "429 without Retry-After");

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
    let (openid, hs_name) = alice.openid_token();
    let r = post_json(
        server,
        "/api/v1/streams/crypt/access",
        None,
        &json!({"openid_token": openid, "matrix_server_name": hs_name}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let crypt_token = r.json().unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let snap = api_with(server, "/api/v1/streams/crypt", &crypt_token);
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
    // An IPv6 client is one client for its whole /64.
    for i in 1..=10 {
        let r = new_guest(&format!("2001:db8:5:5::{i:x}"));
        assert_eq!(r.status, 201, "guest {i} of one /64: {}", r.text());
    }
    let r = new_guest("2001:db8:5:5:ffff::1");
    assert_eq!(
        assert_json_error(&r, 429, "an 11th guest from one IPv6 /64")["code"],
        "rate_limited"
    );

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

/// The expiry (Unix seconds) inside a viewer token `v1.<exp>.<sig>`.
fn token_expiry(token: &str) -> u64 {
    token
        .split('.')
        .nth(1)
        .and_then(|e| e.parse().ok())
        .expect("v1.<exp>.<sig>")
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn openid_access(server: &Server, user: &MxUser, stream: &str) -> String {
    let (openid, hs_name) = user.openid_token();
    let r = post_json(
        server,
        &format!("/api/v1/streams/{stream}/access"),
        None,
        &json!({"openid_token": openid, "matrix_server_name": hs_name}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json().unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string()
}

fn decoding(viewer: &mut JsonTool, what: &str) {
    viewer.wait_for(what, MEDIA_TIMEOUT, |v| {
        v["type"] == "progress" && v["video_frames"].as_u64().unwrap_or(0) > 0
    });
}

/// Access is checked for the whole session, not only at its start, and a
/// private stream shows nothing to requests without access: API, feeds,
/// metrics, event webhooks, HLS caching.
#[test]
fn access_ends_with_its_grant_and_private_stays_private() {
    let _serial = serial();
    let hook = common::control::ControlServer::start(|_| (200, "{}".to_string()));
    let env = MatrixEnv::start(&format!(
        "golive_delay_ms = 1000\n[[webhooks]]\nurl = \"{}\"\nformat = \"json\"\n",
        hook.url("/hook")
    ));
    let server = env.server();
    let bot = env.bot_id();
    let alice = env.user("alice");
    let bob = env.user("bob");
    let small = || FfmpegOpts {
        width: 640,
        height: 360,
        ..FfmpegOpts::default()
    };

    // A private room's stream and a public room's stream, both live.
    let (room, key) = alice.attach_stream(&bot, "private_chat", "Secret show", "secret");
    let _p1 = Publisher::ffmpeg(&server.rtmp_url(&key), small());
    wait_private_live(server, 1);
    let (open, bkey) = bob.attach_stream(&bot, "public_chat", "Open house", "openhouse");
    let _p2 = Publisher::ffmpeg(&server.rtmp_url(&bkey), small());
    server.wait_live("openhouse", LIVE_TIMEOUT);

    // --- without access, the private stream is nowhere ----------------------------------
    let leaks = |text: &str| text.contains("secret") || text.contains("Secret show");
    let list = server.get("/api/v1/streams").text();
    assert!(list.contains("openhouse") && !leaks(&list), "{list}");
    let metrics = server.get("/metrics").text();
    assert!(metrics.contains("stream=\"openhouse\""), "{metrics}");
    assert!(!leaks(&metrics), "{metrics}");
    let all = Sse::open_path(server, "/api/v1/events");
    let some = Sse::open_path(server, "/api/v1/events?streams=secret,openhouse");
    for feed in [&all, &some] {
        feed.wait("live", MX_TIMEOUT, |d| d["name"] == "openhouse");
        let seen = format!("{:?}", feed.events());
        assert!(!leaks(&seen), "{seen}");
    }
    let started = hook.wait_for("openhouse's started webhook", MX_TIMEOUT, |r| {
        r.body.contains("openhouse")
    });
    println!("webhook: {}", started.body);
    for r in hook.requests() {
        assert!(!leaks(&r.body), "a private stream in a webhook: {}", r.body);
    }
    // With access: the API and the feed show it; HLS is for private caches only.
    let token = openid_access(server, &alice, "secret");
    let snap = api_with(server, "/api/v1/streams/secret", &token);
    assert_eq!(snap["title"], "Secret show", "{snap}");
    let list = http::request(
        "GET",
        &server.url(&format!("/api/v1/streams?access={token}")),
        &[],
        None,
    )
    .unwrap()
    .text();
    assert!(list.contains("secret"), "{list}");
    let r = server.get(&format!("/hls/secret/index.m3u8?access={token}"));
    assert_eq!(r.status, 200, "{}", r.text());
    let cc = r.header("cache-control").unwrap_or("").to_string();
    assert!(cc.contains("private"), "playlist Cache-Control: {cc}");
    let playlist = r.text();
    let init = playlist
        .lines()
        .find_map(|l| l.split("URI=\"").nth(1).and_then(|u| u.split('"').next()))
        .expect("EXT-X-MAP")
        .to_string();
    let r = server.get(&format!("/hls/secret/{init}"));
    assert_eq!(r.status, 200, "{}", r.text());
    let cc = r.header("cache-control").unwrap_or("").to_string();
    assert!(
        cc.contains("private") && !cc.contains("immutable"),
        "private init Cache-Control: {cc}"
    );
    let r = server.get("/hls/openhouse/index.m3u8");
    assert_eq!(r.status, 200, "{}", r.text());
    let init = r
        .text()
        .lines()
        .find_map(|l| l.split("URI=\"").nth(1).and_then(|u| u.split('"').next()))
        .expect("EXT-X-MAP")
        .to_string();
    let r = server.get(&format!("/hls/openhouse/{init}"));
    let cc = r.header("cache-control").unwrap_or("").to_string();
    assert!(
        !cc.contains("private") && cc.contains("immutable"),
        "public init Cache-Control: {cc}"
    );

    // --- an expiring viewer link ends its WebRTC session and its feed -------------------------
    alice.send_text(&room, "!live link 20s");
    let link = alice.wait_message(&room, &bot, "Viewer link for ");
    let short = link["content"]["body"]
        .as_str()
        .unwrap()
        .split("?access=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let expiry = token_expiry(&short);
    let long = Sse::open_query(server, "secret", &format!("access={token}"));
    let brief = Sse::open_query(server, "secret", &format!("access={short}"));
    brief.wait("live", MX_TIMEOUT, |_| true);
    let from = server.log_len();
    let mut viewer = aiortc_viewer(
        &format!("{}?access={short}", server.whep_url("secret")),
        ViewerOpts {
            duration_s: Some(90.0),
            timeout_s: 120.0,
            ..ViewerOpts::default()
        },
    );
    decoding(&mut viewer, "the link's viewer decoding");
    assert!(unix_now() < expiry, "the viewer took longer than the link");
    server.wait_for_log_from(from, "viewer session expired", Duration::from_secs(40));
    let late = unix_now().saturating_sub(expiry);
    println!("the expired link's session ended {late} s after its expiry");
    assert!(late <= 3, "ended {late} s after the link expired");
    wait_until(
        "the expired link's feed to end",
        Duration::from_secs(10),
        || brief.is_closed().then_some(()),
    );
    let after = alice.send_text(&room, "said after the link expired");
    long.wait("chat", MX_TIMEOUT, |d| d["id"] == after.as_str());
    assert!(
        brief
            .events()
            .iter()
            .all(|(_, d)| d["id"] != after.as_str()),
        "chat reached an expired link's feed"
    );
    viewer.kill();

    // --- a member who leaves the room loses what their token admitted -----------------------
    let carol = env.user("carol");
    alice.invite(&room, &carol.user_id);
    carol.join(&room);
    let ctoken = openid_access(server, &carol, "secret");
    let cfeed = Sse::open_query(server, "secret", &format!("access={ctoken}"));
    cfeed.wait("live", MX_TIMEOUT, |_| true);
    let mut cview = aiortc_viewer(
        &format!("{}?access={ctoken}", server.whep_url("secret")),
        ViewerOpts {
            duration_s: Some(90.0),
            timeout_s: 120.0,
            ..ViewerOpts::default()
        },
    );
    decoding(&mut cview, "the member's viewer decoding");
    let from = server.log_len();
    let (s, _) = carol.call(
        "POST",
        &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
        Some(&json!({})),
    );
    assert_eq!(s, 200, "carol leaves");
    server.wait_for_log_from(
        from,
        "their membership of the room ended",
        Duration::from_secs(30),
    );
    wait_until("the member's feed to end", Duration::from_secs(10), || {
        cfeed.is_closed().then_some(())
    });
    let r = http::request(
        "GET",
        &server.url("/api/v1/streams/secret"),
        &[("Authorization", &format!("Bearer {ctoken}"))],
        None,
    )
    .unwrap();
    assert_json_error(&r, 403, "the token of a member who left");
    cview.kill();

    // --- a public room turned private ends its anonymous viewers and feeds ---------------------
    let mut anon = aiortc_viewer(
        &server.whep_url("openhouse"),
        ViewerOpts {
            duration_s: Some(90.0),
            timeout_s: 120.0,
            ..ViewerOpts::default()
        },
    );
    decoding(&mut anon, "the anonymous viewer decoding");
    let feed = Sse::open(server, "openhouse");
    feed.wait("live", MX_TIMEOUT, |_| true);
    let from = server.log_len();
    all.wait("viewers", MX_TIMEOUT, |d| {
        d["name"] == "openhouse" && d["viewers"] == 1
    });
    let seen_before = all.events().len();
    bob.set_state(
        &open,
        "m.room.join_rules",
        "",
        json!({"join_rule": "invite"}),
    );
    server.wait_for_log_from(from, "no longer public", Duration::from_secs(30));
    wait_until("the anonymous feed to end", Duration::from_secs(10), || {
        feed.is_closed().then_some(())
    });
    let r = server.get("/api/v1/streams/openhouse");
    assert_json_error(&r, 401, "openhouse, now private, without a token");
    let btoken = openid_access(server, &bob, "openhouse");
    let member = Sse::open_query(server, "openhouse", &format!("access={btoken}"));
    member.wait("live", MX_TIMEOUT, |_| true);
    let after = bob.send_text(&open, "said after the room went private");
    member.wait("chat", MX_TIMEOUT, |d| d["id"] == after.as_str());
    assert!(
        feed.events().iter().all(|(_, d)| d["id"] != after.as_str()),
        "chat reached an anonymous feed of a now private room"
    );
    // The anonymous all-streams feed is told the stream left it, and nothing
    // else: the anonymous viewer's end (viewers 0) is news of a private
    // stream now.
    all.wait("removed", MX_TIMEOUT, |d| d["name"] == "openhouse");
    for (name, d) in all.events().into_iter().skip(seen_before) {
        assert!(
            d["name"] != "openhouse" || name == "removed",
            "the all-streams feed reported a now private stream: {name} {d}"
        );
    }
    let metrics = server.get("/metrics").text();
    assert!(!metrics.contains("openhouse"), "{metrics}");
    anon.kill();
    let mut env = env;
    env.server_mut().assert_healthy("after the access changes");
}

/// The chat's media proxy keeps a private room's images private: no token,
/// 401; a member's viewer token, the image; media no message uses, 404.
#[test]
fn private_chat_media_needs_access() {
    let _serial = serial();
    let env = MatrixEnv::start("");
    let server = env.server();
    let alice = env.user("alice");
    let (room, _key) = alice.attach_stream(&env.bot_id(), "private_chat", "Secret", "secret");
    let mxc = alice.upload(&png(64, 64, "red"), "image/png");
    alice.send_event(
        &room,
        "m.room.message",
        json!({"msgtype": "m.image", "body": "red.png", "url": mxc}),
    );
    let path = format!(
        "/api/v1/streams/secret/media/{}?size=full",
        mxc.strip_prefix("mxc://").unwrap()
    );
    let get = |p: &str| http::request("GET", &server.url(p), &[], None).unwrap();
    let r = get(&path);
    assert_eq!(r.status, 401, "{}", r.text());
    let token = openid_access(server, &alice, "secret");
    let with = format!("{path}&access={token}");
    let r = wait_until("the image through the proxy", MX_TIMEOUT, || {
        Some(get(&with)).filter(|r| r.status == 200)
    });
    assert_eq!(r.content_type(), "image/png");
    assert!(r.body.starts_with(b"\x89PNG"));
    let other = alice.upload(&png(8, 8, "blue"), "image/png");
    let r = get(&format!(
        "/api/v1/streams/secret/media/{}?access={token}",
        other.strip_prefix("mxc://").unwrap()
    ));
    assert_eq!(r.status, 404, "{}", r.text());
}
