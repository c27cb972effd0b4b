//! Who may use the bot, against a real Synapse: `[matrix.permissions]`
//! (Synapse has one server name, so "another server" is a local user the
//! table gives `none`, next to `"*"` and server keys), the stream quota, rooms
//! made on alias lookups (off by default; on, with the admins' power), and
//! redactions applied to the pages only for their sender or a moderator.
//! Also: the registration file's mode and the placeholder-token refusal.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::matrix::*;
use common::synapse::SERVER_NAME;
use common::*;
use serde_json::{Value, json};

/// The bot's answers in `room` containing `needle`.
fn answers(user: &MxUser, room: &str, bot: &str, needle: &str) -> usize {
    user.messages_from(room, bot)
        .iter()
        .filter(|e| {
            e["content"]["body"]
                .as_str()
                .is_some_and(|b| b.contains(needle))
        })
        .count()
}

/// `!live new <name>` in a DM; returns the new room once its alias resolves.
fn live_new(user: &MxUser, dm: &str, bot: &str, name: &str) -> String {
    user.live_new(dm, bot, name);
    wait_until("the new room's alias", MX_TIMEOUT, || {
        user.resolve_alias(&format!("#live_{name}:{SERVER_NAME}"))
    })
}

fn join_status(user: &MxUser, alias: &str) -> (u16, Value) {
    user.call(
        "POST",
        &format!("/_matrix/client/v3/join/{}", enc(alias)),
        Some(&json!({})),
    )
}

fn redaction_event(room: &str, sender: &str, target: &str, id: &str) -> Value {
    json!({"events": [{
        "type": "m.room.redaction", "redacts": target, "content": {"redacts": target},
        "room_id": room, "sender": sender, "event_id": id,
        "origin_server_ts": 1_700_000_000_000u64,
    }]})
}

#[test]
fn permissions_quota_aliases_and_redactions() {
    let _serial = serial();
    // --- the default: users of the server may use the bot; no rooms on demand ---------------
    let mut env = MatrixEnv::start("golive_delay_ms = 1000");
    let bot = env.bot_id();
    let base = env.synapse.base_url();
    let mallory = MxUser::register(&base, "mallory");
    let boss = MxUser::register(&base, "boss");
    let bob = env.user("bob");
    let carol = env.user("carol");
    let dave = env.user("dave");

    // By default mallory (a local user) is a `user`: the bot joins her DM.
    let mallory_dm = mallory.dm_bot(&bot);
    // Synapse sends one transaction at a time: an answer to a later message
    // means the invite's transaction was applied before roomcast stops.
    mallory.send_text(&mallory_dm, "!live help");
    mallory.wait_message(&mallory_dm, &bot, "roomcast commands");
    // An alias lookup creates nothing.
    let (s, v) = join_status(&bob, "#live_probe:localhost");
    assert_eq!(s, 404, "alias lookup without rooms_on_demand: {v}");
    assert!(env.server().api_stream("probe").is_none());

    // --- a table: mallory is `none`, boss `admin`, the server `user`, "*" none ----------------
    env.stop_roomcast();
    env.matrix_extra = format!(
        "golive_delay_ms = 1000\nrooms_on_demand = true\nmax_streams_per_user = 1\n\
         [matrix.permissions]\n\"*\" = \"none\"\n\"{SERVER_NAME}\" = \"user\"\n\
         \"{}\" = \"none\"\n\"{}\" = \"admin\"\n\
         [[streams]]\nname = \"cfgstream\"\nkey = \"{}\"\n",
        mallory.user_id,
        boss.user_id,
        random_hex()
    );
    env.start_roomcast();
    let server = env.server();

    // A user without permission who DMs `!live new` gets one polite line and no stream.
    mallory.send_text(&mallory_dm, "!live new sneaky");
    mallory.wait_message(
        &mallory_dm,
        &bot,
        "Sorry, you can't create streams on this server.",
    );
    mallory.send_text(&mallory_dm, "!live key sneaky");
    mallory.wait_message(&mallory_dm, &bot, "Sorry, you can't use this bot");
    assert!(server.api_stream("sneaky").is_none(), "no stream was made");
    let listed = server.get("/api/v1/streams").json().unwrap();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["name"] != "sneaky"),
        "{listed}"
    );
    // (Its alias is not looked up: with rooms_on_demand that would make it.)

    // Her invite is declined: the bot leaves the invited room.
    let invited = mallory.create_room(json!({
        "is_direct": true, "invite": [bot], "preset": "trusted_private_chat",
    }));
    wait_until("the bot to decline the invite", MX_TIMEOUT, || {
        mallory
            .state(&invited, "m.room.member", &bot)
            .filter(|m| m["membership"] == "leave")
    });
    assert_eq!(
        answers(&mallory, &invited, &bot, ""),
        0,
        "the bot said nothing there"
    );
    server.wait_for_log(
        "declined the invite of a user without permission",
        MX_TIMEOUT,
    );

    // --- the quota: one stream for a user, none for an admin --------------------------------------
    let bob_dm = bob.dm_bot(&bot);
    let room = live_new(&bob, &bob_dm, &bot, "bobshow");
    bob.send_text(&bob_dm, "!live new bobshow2");
    bob.wait_message(&bob_dm, &bot, "the limit is 1 stream(s) per user");
    assert!(server.api_stream("bobshow2").is_none());
    let boss_dm = boss.dm_bot(&bot);
    live_new(&boss, &boss_dm, &bot, "boss1");
    live_new(&boss, &boss_dm, &bot, "boss2");

    // --- rooms on demand: made, with the admin's power -------------------------------------------
    let od = bob.join("#live_ondemand:localhost");
    let snap = server
        .api_stream("ondemand")
        .expect("a stream for the on-demand room");
    assert_eq!(snap["room"]["room_id"], od.as_str(), "{snap}");
    let pl = bob.state(&od, "m.room.power_levels", "").unwrap();
    assert_eq!(pl["users"][&boss.user_id], 100, "{pl}");
    // A stream of the config file is never attached to a room this way
    // (its viewers would follow a public room nobody chose).
    let (s, v) = join_status(&bob, "#live_cfgstream:localhost");
    assert_eq!(s, 404, "alias lookup of a config stream: {v}");
    let snap = server.api_stream("cfgstream").expect("the config stream");
    assert!(snap["room"].is_null(), "{snap}");

    // --- redactions: only the sender's own or a moderator's reach the pages ---------------------
    bob.join(&room);
    for u in [&carol, &dave, &mallory, &boss] {
        u.join(&room);
    }
    // Room commands: a member without power is refused; the bot's admin may
    // run them in any room, without power there.
    carol.send_text(&room, "!live notify on");
    carol.wait_message(&room, &bot, "Only room admins");
    boss.send_text(&room, "!live notify on");
    boss.wait_message(&room, &bot, "Go-live notices will mention @room");
    let mut pl = bob.state(&room, "m.room.power_levels", "").unwrap();
    pl["users"][&dave.user_id] = json!(50);
    bob.set_state(&room, "m.room.power_levels", "", pl);
    let sse = Sse::open(server, "bobshow");
    let c1 = carol.send_text(&room, "first from carol");
    let c2 = carol.send_text(&room, "second from carol");
    sse.wait("chat", MX_TIMEOUT, |d| d["id"] == c1.as_str());
    sse.wait("chat", MX_TIMEOUT, |d| d["id"] == c2.as_str());

    // Synapse refuses a local user's redaction of someone else's message, but
    // a remote server's arrives: as the homeserver would push it.
    let hs = env.hs_token();
    for (i, sender) in [mallory.user_id.as_str(), "@evil:elsewhere.example"]
        .into_iter()
        .enumerate()
    {
        let body = redaction_event(&room, sender, &c1, &format!("$fake-redaction-{i}"));
        let r = env.put_transaction(
            &format!("fake-redaction-{i}"),
            &hs,
            body.to_string().as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let after = carol.send_text(&room, "after the fake redactions");
    sse.wait("chat", MX_TIMEOUT, |d| d["id"] == after.as_str());
    assert!(
        sse.events()
            .iter()
            .all(|(n, d)| !(n == "redaction" && d["id"] == c1.as_str())),
        "a redaction without power reached the feed"
    );
    let fresh = Sse::open(server, "bobshow");
    fresh.wait("chat", MX_TIMEOUT, |d| d["id"] == after.as_str());
    assert!(
        fresh
            .events()
            .iter()
            .any(|(n, d)| n == "chat" && d["id"] == c1.as_str()),
        "the history lost a message to a redaction without power"
    );

    // The sender's own redaction applies, and a moderator's.
    carol.redact(&room, &c1);
    sse.wait("redaction", MX_TIMEOUT, |d| d["id"] == c1.as_str());
    dave.redact(&room, &c2);
    sse.wait("redaction", MX_TIMEOUT, |d| d["id"] == c2.as_str());
    let fresh = Sse::open(server, "bobshow");
    fresh.wait("chat", MX_TIMEOUT, |d| d["id"] == after.as_str());
    assert!(
        fresh
            .events()
            .iter()
            .all(|(n, d)| !(n == "chat" && (d["id"] == c1.as_str() || d["id"] == c2.as_str()))),
        "redacted messages are still in the history"
    );

    let mut s = env.server;
    s.as_mut()
        .unwrap()
        .assert_healthy("after the permission checks");
    s.as_ref().unwrap().assert_no_key_logged();
}

/// A config in a temp dir for a roomcast that should refuse to start.
fn refused_start(dir: &TempDir, matrix: &str) -> (Option<i32>, String) {
    let d = dir.path().display();
    let config = format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n[rtmp]\nlisten = \"127.0.0.1:0\"\n\
         [ome]\nlisten = \"127.0.0.1:0\"\n\
         [webrtc]\nudp = \"127.0.0.1:0\"\ntcp = \"127.0.0.1:0\"\npublic_ips = []\n\
         [storage]\ndatabase_url = \"sqlite://{d}/roomcast.db\"\n\
         [matrix]\nhomeserver_url = \"http://127.0.0.1:9\"\nserver_name = \"localhost\"\n{matrix}\n"
    );
    let path = dir.path().join("roomcast.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = roomcast_cmd()
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("NO_COLOR", "1")
        .spawn()
        .expect("spawn roomcast");
    let log = std::sync::Arc::new(Lines::default());
    drain(child.stderr.take().unwrap(), log.clone());
    drain(child.stdout.take().unwrap(), log.clone());
    let started = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if started.elapsed() > START_TIMEOUT {
            let _ = child.kill();
            panic!("roomcast did not refuse to start; log:\n{}", log.tail(40));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // The pipes close with the process; wait for the last lines.
    wait_until("the log to end", Duration::from_secs(10), || {
        log.is_closed().then_some(())
    });
    (status.code(), log.snapshot().join("\n"))
}

#[test]
fn registration_file_and_bad_settings_refused() {
    let _serial = serial();
    let dir = TempDir::new("roomcast-reg");
    // `roomcast registration` writes a file only its owner can read.
    let reg = dir.path().join("registration.yaml");
    let out = roomcast_cmd()
        .args(["registration", "--url", "http://127.0.0.1:8080"])
        .args(["--server-name", "localhost", "--output"])
        .arg(&reg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&reg).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "registration.yaml mode {mode:o}");
    }

    // From a config without --url: a wildcard http.listen becomes the
    // loopback (and says so); public_url wins when set.
    for (top, want, why) in [
        (
            "",
            "http://127.0.0.1:18089",
            "from http.listen 0.0.0.0:18089: 0.0.0.0 listens on every address",
        ),
        (
            "public_url = \"https://live.example.org/\"\n",
            "https://live.example.org",
            "from public_url",
        ),
    ] {
        let config = dir.path().join("from-config.toml");
        let out_reg = dir.path().join("from-config.yaml");
        std::fs::write(
            &config,
            format!(
                "{top}[http]\nlisten = \"0.0.0.0:18089\"\n[matrix]\n\
                 homeserver_url = \"http://127.0.0.1:1\"\nserver_name = \"example.org\"\n\
                 registration = \"{}\"\n",
                out_reg.display()
            ),
        )
        .unwrap();
        let out = roomcast_cmd()
            .args(["registration", "--force", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(&format!("url {want} {why}")),
            "says which URL: {stdout}"
        );
        let text = std::fs::read_to_string(&out_reg).unwrap();
        assert!(text.contains(&format!("url: \"{want}\"")), "{text}");
    }

    // The example registration's placeholder tokens stop start-up with the way out.
    let example = manifest_dir().join("registration.yaml");
    let (code, log) = refused_start(&dir, &format!("registration = \"{}\"", example.display()));
    assert_ne!(code, Some(0), "{log}");
    assert!(
        log.contains("as_token is a placeholder") && log.contains("roomcast registration"),
        "{log}"
    );
    assert!(!log.contains("roomcast ready"), "{log}");

    // A bad permission value and a malformed key are named.
    let ok_reg = format!("registration = \"{}\"\n", reg.display());
    let (code, log) = refused_start(
        &dir,
        &format!("{ok_reg}[matrix.permissions]\n\"localhost\" = \"owner\"\n"),
    );
    assert_ne!(code, Some(0), "{log}");
    assert!(
        log.contains("matrix.permissions.\"localhost\"")
            && log.contains("'owner' is not a permission"),
        "{log}"
    );
    let (code, log) = refused_start(
        &dir,
        &format!("{ok_reg}[matrix.permissions]\n\"@bob\" = \"user\"\n"),
    );
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains("\"@bob\"") && log.contains("user ID"), "{log}");
}
