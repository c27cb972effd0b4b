//! The pages and the Matrix application service together: real Synapse, real
//! roomcast, real ffmpeg and real Chromium (tests/browser/pages.mjs `mx-watch`,
//! `mx-widget`). The watch page of a `!live new` room follows a rename within
//! 2 s, shows the room's messages as plain text, posts a guest's message into
//! the room through the puppet and drops redacted messages; the widget the bot
//! pinned in a private room trades a real OpenID token for a viewer token and
//! plays (a non-member is refused with a sentence); the widget URL of a public
//! room's state event, templated as Element does, plays. Screenshots at 1280×800
//! and 390×844 go to tests/artifacts/matrix-pages/. The widget granted the room's
//! events by its client (`mx-widget-chat`, the client backed by Synapse) shows the
//! history and new messages beside the player and sends a reaction that Synapse
//! stores; refused, it just plays.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::matrix::*;
use common::*;
use serde_json::{Value, json};

const PAGE_TIMEOUT: Duration = Duration::from_secs(120);
const RENAME_DEADLINE_MS: u64 = 2000;

/// One scenario of tests/browser/pages.mjs, screenshots in tests/artifacts/matrix-pages.
fn pages(server: &Server, scenario: &str, args: &[&str]) -> JsonTool {
    pages_scenario(server, "matrix-pages", scenario, args)
}

fn finish(tool: &mut JsonTool, what: &str) -> Value {
    finish_scenario(tool, what, PAGE_TIMEOUT)
}

fn step(tool: &JsonTool, name: &str) -> Value {
    tool.wait_for(name, PAGE_TIMEOUT, |v| v["type"] == name)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn small() -> FfmpegOpts {
    FfmpegOpts {
        width: 640,
        height: 360,
        fps: 25,
        gop: 25,
        ..FfmpegOpts::default()
    }
}

/// `!live new <name>` by DM: the key from the settings DM, and the new room, joined.
fn live_new(env: &MatrixEnv, user: &MxUser, name: &str) -> (String, String) {
    let bot = env.bot_id();
    let dm = user.dm_bot(&bot);
    let (key, room) = new_stream(user, &dm, &bot, name);
    (room, key)
}

/// The widget state event the bot wrote for `stream` and the room's layout event.
fn widget_events(user: &MxUser, room: &str, stream: &str, server: &Server) -> (Value, Value) {
    let widget = user
        .state(
            room,
            "im.vector.modular.widgets",
            &format!("roomcast_{stream}"),
        )
        .expect("the widget state event");
    let url = widget["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("{}/widget?", server.base_url())),
        "the widget URL is roomcast's public_url: {url}"
    );
    let layout = user
        .state(room, "io.element.widgets.layout", "")
        .expect("the layout state event");
    (widget, layout)
}

#[test]
fn watch_page_follows_the_matrix_room() {
    let _serial = serial();
    let env = MatrixEnv::start_browsable("golive_delay_ms = 1000");
    let server = env.server();
    let alice = env.user("alice");
    alice.set_display_name("Alice");
    let (room, key) = live_new(&env, &alice, "show");
    // Said before the page opens: the page gets it with the feed's history.
    let earlier = "Doors open in five minutes";
    let earlier_id = alice.send_text(&room, earlier);
    let _ffmpeg = Publisher::ffmpeg(&server.rtmp_url(&key), small());
    server.wait_live("show", LIVE_TIMEOUT);

    let renamed = "Friday <i>Night</i> Show";
    let html = "<b>html</b> & friends";
    let guest_body = "Hi from the page <i>not italic</i>";
    let mut tool = pages(
        server,
        "mx-watch",
        &[
            "--stream",
            "show",
            "--title",
            "show",
            "--renamed",
            renamed,
            "--html-body",
            html,
            "--sender",
            "Alice",
            "--guest-name",
            "Carol",
            "--guest-body",
            guest_body,
            "--history-body",
            earlier,
        ],
    );
    step(&tool, "ready");

    // Rename as the user who created the stream (power 100 in the room).
    let t0 = now_ms();
    alice.set_state(&room, "m.room.name", "", json!({ "name": renamed }));
    let seen = step(&tool, "renamed")["seen_at"].as_u64().unwrap();
    let took = seen.saturating_sub(t0);
    println!("rename → page title in {took} ms");
    assert!(
        took <= RENAME_DEADLINE_MS,
        "the page showed the new title {took} ms after the rename (deadline {RENAME_DEADLINE_MS} ms)"
    );

    let html_id = alice.send_text(&room, html);
    let shown = step(&tool, "matrix_message_shown");
    assert_eq!(shown["message"]["id"], html_id.as_str(), "{shown}");

    let posted = step(&tool, "guest_posted");
    let gid = posted["message"]["id"].as_str().unwrap().to_string();
    let ev = wait_until(
        "the guest's message in the Synapse room",
        MX_TIMEOUT,
        || {
            alice
                .messages(&room, 50)
                .into_iter()
                .find(|e| e["event_id"] == gid.as_str())
        },
    );
    let puppet = ev["sender"].as_str().unwrap();
    assert!(puppet.starts_with("@_roomcast_"), "sent by {puppet}");
    assert_eq!(ev["content"]["body"], guest_body, "{ev}");
    assert!(
        ev["content"]["format"].is_null() && ev["content"]["formatted_body"].is_null(),
        "a guest's message is plain text in Matrix: {ev}"
    );
    let member = alice.state(&room, "m.room.member", puppet).unwrap();
    assert_eq!(member["displayname"], "Carol (guest)");

    step(&tool, "await_redactions");
    alice.redact(&room, &html_id);
    alice.redact(&room, &gid);
    let left = step(&tool, "redacted")["left"].clone();
    assert_eq!(
        left.as_array()
            .map(|l| l.iter().map(|m| m["id"].clone()).collect::<Vec<_>>()),
        Some(vec![json!(earlier_id)]),
        "only the earlier message is left: {left}"
    );
    finish(&mut tool, "watch page with a Matrix room");
}

#[test]
fn widget_trades_a_real_openid_token_for_a_private_stream() {
    let _serial = serial();
    let env = MatrixEnv::start_browsable("golive_delay_ms = 1000");
    let server = env.server();
    let bot = env.bot_id();
    let alice = env.user("alice");
    alice.set_display_name("Alice");
    let eve = env.user("eve");

    // An invite-only room; alice makes the bot a moderator and attaches a stream.
    let (room, key) = alice.attach_stream(&bot, "private_chat", "Members only", "members");
    // A private stream's state is for viewers with access: the room's listing
    // names it, and /metrics counts it, unnamed.
    let listed = server.get(&format!("/api/v1/rooms/{}/streams", enc(&room)));
    assert_eq!(
        listed.json().unwrap(),
        json!([{"name": "members", "access": "private"}])
    );
    let _ffmpeg = Publisher::ffmpeg(&server.rtmp_url(&key), small());
    wait_until("the private stream to be live", LIVE_TIMEOUT, || {
        server
            .get("/metrics")
            .text()
            .contains("roomcast_private_streams_live 1\n")
            .then_some(())
    });
    let (widget, layout) = widget_events(&alice, &room, "members", server);

    // alice confirms in the client's dialog; eve's client answers at once (remembered)
    // with a real token of a user who is not in the room; alice declines the dialog,
    // then tries again and confirms.
    let runs = json!([
        {"label": "member", "user_id": alice.user_id, "access_token": alice.token, "display_name": "Alice",
         "theme": "dark", "consent": "allow", "openid": true, "expect": "play"},
        {"label": "non-member", "user_id": eve.user_id, "access_token": eve.token, "display_name": "eve",
         "theme": "light", "consent": false, "openid": true, "expect": "refused", "says": "Only members of this room"},
        {"label": "declined", "user_id": alice.user_id, "access_token": alice.token, "display_name": "Alice",
         "theme": "light", "consent": "deny", "openid": true, "expect": "refused", "says": "verify your Matrix identity",
         "retry_allow": true},
    ]);
    let mut tool = pages(
        server,
        "mx-widget",
        &[
            "--name",
            "mx-widget-private",
            "--widget",
            &widget.to_string(),
            "--layout",
            &layout.to_string(),
            "--room",
            &room,
            "--room-name",
            "Members only",
            "--hs",
            &env.synapse.base_url(),
            "--runs",
            &runs.to_string(),
        ],
    );
    let r = finish(&mut tool, "private widget");
    let refused = &r["runs"][1]["ui"]["status"];
    println!("the non-member's widget says: {refused}");
    assert!(
        server.log_lines().iter().any(|l| {
            l.contains("matrix: viewer admitted by OpenID") && l.contains(&alice.user_id)
        }),
        "roomcast admitted alice by her OpenID token"
    );
    assert!(
        !server
            .log_lines()
            .iter()
            .any(|l| l.contains("viewer admitted") && l.contains(&eve.user_id)),
        "eve was admitted"
    );
}

#[test]
fn widget_url_from_the_state_event_plays_in_the_client() {
    let _serial = serial();
    let env = MatrixEnv::start_browsable("golive_delay_ms = 1000");
    let server = env.server();
    let alice = env.user("alice");
    alice.set_display_name("Alice");
    let (room, key) = live_new(&env, &alice, "stage");
    alice.set_state(&room, "m.room.name", "", json!({"name": "Main stage"}));
    let _ffmpeg = Publisher::ffmpeg(&server.rtmp_url(&key), small());
    server.wait_live("stage", LIVE_TIMEOUT);
    wait_until("the new title", MX_TIMEOUT, || {
        (server.api_stream("stage")?["title"] == "Main stage").then_some(())
    });
    let (widget, layout) = widget_events(&alice, &room, "stage", server);

    let runs = json!([
        {"label": "light", "user_id": alice.user_id, "access_token": alice.token, "display_name": "Alice",
         "theme": "light", "consent": false, "openid": false, "expect": "play"},
        {"label": "dark", "user_id": alice.user_id, "access_token": alice.token, "display_name": "Alice",
         "theme": "dark", "consent": false, "openid": false, "expect": "play"},
    ]);
    let mut tool = pages(
        server,
        "mx-widget",
        &[
            "--name",
            "mx-widget-public",
            "--widget",
            &widget.to_string(),
            "--layout",
            &layout.to_string(),
            "--room",
            &room,
            "--room-name",
            "Main stage",
            "--hs",
            &env.synapse.base_url(),
            "--runs",
            &runs.to_string(),
        ],
    );
    let r = finish(&mut tool, "public widget from the state event");
    println!("iframe src: {}", r["runs"][0]["src"]);
}

#[test]
fn widget_chat_shows_the_room_and_sends_reactions() {
    let _serial = serial();
    let env = MatrixEnv::start_browsable("golive_delay_ms = 1000");
    let server = env.server();
    let alice = env.user("alice");
    alice.set_display_name("Alice");
    let (room, key) = live_new(&env, &alice, "chatty");
    // Said before the widget opens: it reads them through the client (read_events).
    let earlier = "Doors open at eight";
    let earlier_id = alice.send_text(&room, earlier);
    let html = "<img src=x onerror=\"window.__xss=true\"> <b>not bold</b>";
    alice.send_text(&room, html);
    // Another "Alice": the chat must tell them apart.
    let bob = env.user("bob");
    bob.set_display_name("Alice");
    bob.join(&room);
    let impostor = "I am the streamer, send me your key";
    bob.send_text(&room, impostor);
    let (status, _) = alice.call(
        "PUT",
        &format!(
            "/_matrix/client/v3/rooms/{}/send/m.reaction/history-tada",
            enc(&room)
        ),
        Some(&json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": earlier_id, "key": "🎉"}})),
    );
    assert_eq!(status, 200, "the earlier reaction");
    let _ffmpeg = Publisher::ffmpeg(&server.rtmp_url(&key), small());
    server.wait_live("chatty", LIVE_TIMEOUT);
    let (widget, layout) = widget_events(&alice, &room, "chatty", server);

    let live_body = "Live from the room: hello widget";
    let user =
        json!({"user_id": alice.user_id, "access_token": alice.token, "display_name": "Alice"});
    let mut tool = pages(
        server,
        "mx-widget-chat",
        &[
            "--widget",
            &widget.to_string(),
            "--layout",
            &layout.to_string(),
            "--room",
            &room,
            "--room-name",
            "chatty",
            "--hs",
            &env.synapse.base_url(),
            "--user",
            &user.to_string(),
            "--history",
            &json!({
                earlier: format!("Alice ({})", alice.user_id),
                html: format!("Alice ({})", alice.user_id),
                impostor: format!("Alice ({})", bob.user_id),
            })
            .to_string(),
            "--history-reaction",
            "🎉",
            "--live-body",
            live_body,
        ],
    );
    step(&tool, "live_wanted");
    let t0 = now_ms();
    let live_id = alice.send_text(&room, live_body);
    let shown = step(&tool, "live_shown");
    assert_eq!(shown["message"]["id"], live_id.as_str(), "{shown}");
    println!(
        "message sent → shown in the widget in {} ms",
        shown["seen_at"].as_u64().unwrap().saturating_sub(t0)
    );

    // The widget's 👍, read back from Synapse.
    let reacted = step(&tool, "reacted");
    let reaction_id = reacted["event_id"].as_str().unwrap().to_string();
    let ev = wait_until("the widget's reaction in Synapse", MX_TIMEOUT, || {
        alice
            .messages(&room, 50)
            .into_iter()
            .find(|e| e["event_id"] == reaction_id.as_str())
    });
    assert_eq!(ev["type"], "m.reaction", "{ev}");
    assert_eq!(ev["sender"], alice.user_id.as_str(), "{ev}");
    assert_eq!(
        ev["content"]["m.relates_to"],
        json!({"rel_type": "m.annotation", "event_id": live_id, "key": "👍"}),
        "{ev}"
    );
    let r = finish(&mut tool, "widget chat");
    assert!(
        r["refused"]["stats"]["framesDecoded"].as_u64().unwrap_or(0) >= 30,
        "the widget without capabilities plays: {}",
        r["refused"]
    );
}

/// GET of the chat's media proxy: (status, content type, nosniff).
fn proxy_get(server: &Server, stream: &str, mxc: &str, size: &str) -> (u16, String, bool) {
    let path = mxc.strip_prefix("mxc://").unwrap();
    let r = http::request(
        "GET",
        &format!(
            "{}/api/v1/streams/{stream}/media/{path}?size={size}",
            server.base_url()
        ),
        &[],
        None,
    )
    .unwrap();
    let nosniff = r.header("x-content-type-options") == Some("nosniff");
    (r.status, r.content_type(), nosniff)
}

/// The chat panel shows what Element shows: everything is said before
/// roomcast restarts, so the page gets it from the backfill (edits and
/// reactions applied there too), then a reaction arrives live.
#[test]
fn watch_page_shows_a_faithful_chat() {
    let _serial = serial();
    let mut env = MatrixEnv::start_browsable("");
    let alice = env.user("alice");
    alice.set_display_name("Alice");
    let (room, _key) = live_new(&env, &alice, "rich");
    // Bob takes Alice's display name: the chat must tell them apart.
    let bob = env.user("bob");
    bob.set_display_name("Alice");
    bob.join(&room);
    let picture = png(320, 240, "red");
    alice.set_avatar(&alice.upload(&png(96, 96, "blue"), "image/png"));

    let html = json!({
        "msgtype": "m.text",
        "body": "**bold** and a link",
        "format": "org.matrix.custom.html",
        "formatted_body": "<b>bold</b> and <a href=\"https://example.org/x\">a link</a>\
            <img src=x onerror=\"window.__xss=1\"><script>window.__xss=2</script>\
            <a href=\"javascript:window.__xss=3\">js</a>",
    });
    let html_id = alice.send_event(&room, "m.room.message", html);
    let reply_id = bob.send_event(
        &room,
        "m.room.message",
        json!({
            "msgtype": "m.text",
            "body": "> <@alice:localhost> **bold** and a link\n\nnice one",
            "format": "org.matrix.custom.html",
            "formatted_body": "<mx-reply><blockquote>fallback</blockquote></mx-reply>nice one",
            "m.relates_to": {"m.in_reply_to": {"event_id": html_id}},
        }),
    );
    bob.send_event(
        &room,
        "m.room.message",
        json!({"msgtype": "m.text", "body": "in a thread",
               "m.relates_to": {"rel_type": "m.thread", "event_id": html_id}}),
    );
    let typo_id = alice.send_text(&room, "teh show starts at nine");
    alice.edit_text(&room, &typo_id, "the show starts at nine");
    let emote_id = alice.send_event(
        &room,
        "m.room.message",
        json!({"msgtype": "m.emote", "body": "waves"}),
    );
    let pic_mxc = alice.upload(&picture, "image/png");
    let image_id = alice.send_event(
        &room,
        "m.room.message",
        json!({"msgtype": "m.image", "body": "red.png", "url": pic_mxc,
               "info": {"w": 320, "h": 240, "mimetype": "image/png"}}),
    );
    let sticker_mxc = bob.upload(&png(64, 64, "green"), "image/png");
    let sticker_id = bob.send_event(
        &room,
        "m.sticker",
        json!({"body": "a green sticker", "url": sticker_mxc,
               "info": {"w": 64, "h": 64, "mimetype": "image/png"}}),
    );
    bob.send_event(
        &room,
        "m.reaction",
        json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": html_id, "key": "👍"}}),
    );
    // Never sent in a message: the proxy must not serve it.
    let unrelated = alice.upload(&picture, "image/png");

    env.stop_roomcast();
    env.start_roomcast();
    let server = env.server();
    server.wait_for_log("matrix: chat history loaded", MX_TIMEOUT);
    assert_eq!(proxy_get(server, "rich", &unrelated, "full").0, 404);
    let (status, ctype, nosniff) = proxy_get(server, "rich", &pic_mxc, "thumb");
    assert_eq!((status, nosniff), (200, true), "{ctype}");
    assert!(ctype == "image/png" || ctype == "image/jpeg", "{ctype}");

    let mut tool = pages(
        server,
        "mx-chat",
        &[
            "--stream",
            "rich",
            "--messages",
            "6",
            "--react-to",
            &html_id,
        ],
    );
    let ui = step(&tool, "shown")["ui"].clone();
    let msgs = ui["messages"].as_array().unwrap();
    let by_id = |id: &str| {
        msgs.iter()
            .find(|m| m["id"] == id)
            .unwrap_or_else(|| panic!("{id} not in the chat: {ui}"))
    };
    assert_eq!(ui["xss"], Value::Null, "a payload ran: {ui}");
    assert_eq!(ui["scripts_in_chat"], 0, "{ui}");
    assert!(
        !msgs.iter().any(|m| m["body"] == "in a thread"),
        "thread replies stay out of the main chat: {ui}"
    );
    let h = by_id(&html_id);
    assert_eq!(h["body"], "bold and a linkjs", "{h}");
    assert_eq!(h["tags"], json!(["b", "a", "a"]), "{h}");
    assert_eq!(
        h["links"][0],
        json!({"href": "https://example.org/x", "rel": "noopener noreferrer", "target": "_blank"})
    );
    assert_eq!(h["links"][1]["href"], Value::Null, "{h}");
    assert_eq!(h["reactions"], json!([{"key": "👍", "count": 1}]), "{h}");
    // Alice and Bob are both "Alice": each shows with its user id.
    assert_eq!(h["sender"], format!("Alice ({})", alice.user_id));
    assert_eq!(h["avatar"]["loaded"], true, "{h}");
    let r = by_id(&reply_id);
    assert_eq!(r["sender"], format!("Alice ({})", bob.user_id));
    assert_eq!(r["body"], "nice one", "the fallback is stripped: {r}");
    assert_eq!(
        r["reply"],
        json!({"sender": format!("Alice ({})", alice.user_id), "body": "**bold** and a link"})
    );
    let e = by_id(&typo_id);
    assert_eq!(
        (&e["body"], &e["edited"]),
        (&json!("the show starts at nine"), &json!(true))
    );
    assert!(
        by_id(&emote_id)["classes"]
            .as_str()
            .unwrap()
            .contains("is-emote")
    );
    for id in [&image_id, &sticker_id] {
        let m = by_id(id);
        assert_eq!(m["media"]["loaded"], true, "{m}");
    }

    // Bob has reacted 👍 already (Synapse refuses a second one): Alice does.
    let live = alice.send_event(
        &room,
        "m.reaction",
        json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": html_id, "key": "👍"}}),
    );
    step(&tool, "reaction_counted");
    alice.redact(&room, &live);
    step(&tool, "reaction_uncounted");
    finish(&mut tool, "the faithful chat");
}
