//! Federated viewers against two real Synapses federating on loopback
//! (`common::federation`): a member of a private room who lives on the second
//! homeserver joins over federation and watches with their OpenID token; a
//! non-member of the second server is refused. The second server is
//! `localhost`, delegated by `https://localhost/.well-known/matrix/server`
//! (a stub on 127.0.0.1:443: needs root) to `127.0.0.1:<port>`, so roomcast
//! and the first Synapse both find it by the spec's resolution; roomcast then
//! asks its `openid/userinfo` over verified TLS. Also: `roomcast registration --config` takes its URL from
//! `http.listen`, the bot's `m.bridge` state is in the room, and a private
//! room's go-live notice carries a link that admits.

mod common;

use common::federation::{FedSynapse, TestCa, WellKnown};
use common::matrix::*;
use common::*;
use serde_json::{Value, json};

fn post_json(server: &Server, path: &str, body: &Value) -> HttpResponse {
    http::request(
        "POST",
        &server.url(path),
        &[("Content-Type", "application/json")],
        Some(body.to_string().as_bytes()),
    )
    .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

fn whep(server: &Server, stream: &str, token: &str) -> HttpResponse {
    http::request(
        "POST",
        &server.whep_url(stream),
        &[
            ("Content-Type", "application/sdp"),
            ("Authorization", &format!("Bearer {token}")),
        ],
        Some(offer_sdp(&["H264"]).as_bytes()),
    )
    .expect("WHEP")
}

fn access(server: &Server, stream: &str, openid: &str, server_name: &str) -> HttpResponse {
    post_json(
        server,
        &format!("/api/v1/streams/{stream}/access"),
        &json!({"openid_token": openid, "matrix_server_name": server_name}),
    )
}

#[test]
fn federated_member_watches_a_private_room() {
    let _serial = serial();
    let ca = TestCa::new();
    let state = TempDir::new("roomcast-fed");
    let regdir = TempDir::new("roomcast-fed-reg");
    // All from `free_port` (below the ephemeral range), which never hands a
    // port out twice and which the server's port-0 listeners cannot draw.
    let http_port = common::synapse::free_port();
    let fed1_port = common::synapse::free_port();
    let hs1_name = format!("127.0.0.1:{fed1_port}");

    // --- `roomcast registration --config`: the URL comes from http.listen ------------------
    let registration = regdir.path().join("registration.yaml");
    let reg_config = regdir.path().join("roomcast.toml");
    std::fs::write(
        &reg_config,
        format!(
            "[http]\nlisten = \"127.0.0.1:{http_port}\"\n[matrix]\n\
             homeserver_url = \"http://127.0.0.1:1\"\nserver_name = \"{hs1_name}\"\n\
             registration = \"{}\"\n",
            registration.display()
        ),
    )
    .unwrap();
    let out = roomcast_cmd()
        .args(["registration", "--config"])
        .arg(&reg_config)
        .output()
        .expect("run roomcast registration");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "roomcast registration: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want_url = format!("http://127.0.0.1:{http_port}");
    assert!(
        stdout.contains(&format!("url {want_url} from http.listen")),
        "says which URL it used: {stdout}"
    );
    let reg_text = std::fs::read_to_string(&registration).unwrap();
    assert!(
        reg_text.contains(&format!("url: \"{want_url}\"")),
        "{reg_text}"
    );

    let hs1 = FedSynapse::start_on(&ca, Some(&registration), fed1_port);
    // The second server, `localhost`, delegated to its federation port.
    let fed2_port = common::synapse::free_port();
    let well_known = WellKnown::start(&ca, &format!("127.0.0.1:{fed2_port}"));
    let hs2 = FedSynapse::start_named(&ca, None, fed2_port, "localhost");
    let mut server = Server::start_with(ServerOpts {
        streams: vec![],
        http_listen: Some(format!("127.0.0.1:{http_port}")),
        state_dir: Some(state.path().to_path_buf()),
        extra_toml: format!(
            "[matrix]\nhomeserver_url = \"{}\"\nserver_name = \"{hs1_name}\"\n\
             registration = \"{}\"\ngolive_delay_ms = 500\n\
             federation_allow_private = true\nfederation_ca_file = \"{}\"\n",
            hs1.synapse.base_url(),
            registration.display(),
            ca.ca_pem().display(),
        ),
        ..ServerOpts::default()
    });
    server.wait_for_log("matrix: connected to the homeserver", MX_TIMEOUT);
    let bot = format!("@roomcast:{hs1_name}");
    let suffix = &random_hex()[..6];
    let alice = MxUser::register(&hs1.synapse.base_url(), &format!("alice{suffix}"));
    let bob = MxUser::register(&hs2.synapse.base_url(), &format!("bob{suffix}"));
    let carol = MxUser::register(&hs2.synapse.base_url(), &format!("carol{suffix}"));
    assert!(bob.user_id.ends_with(&hs2.server_name), "{}", bob.user_id);

    // --- a private room on the first server with a stream; bob of the second joins ---------
    let room = alice.create_room(json!({
        "preset": "private_chat", "name": "Across servers", "invite": [bot],
        "power_level_content_override": {"users": {&bot: 50}},
    }));
    alice.wait_joined(&room, &bot);
    alice.send_text(&room, "!live attach fedshow");
    alice.wait_message(&room, &bot, "Stream 'fedshow' is attached");
    alice.invite(&room, &bob.user_id);
    wait_until("bob's invite over federation", MX_TIMEOUT, || {
        bob.invites().into_iter().find(|r| *r == room)
    });
    bob.join(&room);
    alice.wait_joined(&room, &bob.user_id);

    // The bridge info is in the room, under both names.
    for kind in ["m.bridge", "uk.half-shot.bridge"] {
        let info = alice
            .state(&room, kind, "io.roomcast://roomcast/fedshow")
            .unwrap_or_else(|| panic!("no {kind} state in the room"));
        assert_eq!(info["bridgebot"], bot.as_str(), "{info}");
        assert_eq!(info["channel"]["id"], "fedshow", "{info}");
        assert_eq!(info["channel"]["displayname"], "Across servers", "{info}");
        assert!(
            info["channel"]["external_url"]
                .as_str()
                .is_some_and(|u| u.ends_with("/watch/fedshow")),
            "{info}"
        );
    }

    let (_, key) = alice.key_from_bot_dm(&bot);
    let _ffmpeg = Publisher::ffmpeg(&server.rtmp_url(&key), FfmpegOpts::small());
    let want = "roomcast_private_streams_live 1\n";
    wait_until("the private stream to be live", LIVE_TIMEOUT, || {
        server.get("/metrics").text().contains(want).then_some(())
    });

    // --- bob watches with his own server's OpenID token ------------------------------------
    let (openid, bob_server) = bob.openid_token();
    assert_eq!(bob_server, "localhost");
    let r = access(&server, "fedshow", &openid, &bob_server);
    assert_eq!(r.status, 200, "bob's federated OpenID: {}", r.text());
    let token = r.json().unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = whep(&server, "fedshow", &token);
    assert_eq!(r.status, 201, "WHEP with bob's token: {}", r.text());

    // carol of the same server is not a member; a bogus token is refused by
    // her server; bob's token claimed for the first server is not its.
    let (carol_openid, _) = carol.openid_token();
    let r = access(&server, "fedshow", &carol_openid, &hs2.server_name);
    assert_eq!(
        assert_json_error(&r, 403, "non-member of the second server")["code"],
        "not_a_member"
    );
    let r = access(&server, "fedshow", "bogus", &hs2.server_name);
    assert_eq!(
        assert_json_error(&r, 403, "a bogus token on the second server")["code"],
        "access_denied"
    );
    let r = access(&server, "fedshow", &openid, &hs1_name);
    assert_eq!(
        assert_json_error(&r, 403, "bob's token claimed for the first server")["code"],
        "access_denied"
    );
    println!("well-known requests: {:?}", well_known.requests());
    // roomcast asked the well-known once (its answer is cached) with its
    // own User-Agent; the first Synapse asked it too.
    let asked: Vec<String> = well_known
        .requests()
        .into_iter()
        .filter(|l| l.contains("roomcast/"))
        .collect();
    assert_eq!(
        asked,
        [format!(
            "GET /.well-known/matrix/server roomcast/{}",
            env!("CARGO_PKG_VERSION")
        )],
        "all: {:?}",
        well_known.requests()
    );

    // --- the go-live notice of the private room carries a link that admits ----------------
    let notice = alice.wait_message(&room, &bot, "is live");
    let body = notice["content"]["body"].as_str().unwrap();
    let link = body
        .split_whitespace()
        .find(|w| w.contains("/watch/fedshow?access="))
        .unwrap_or_else(|| panic!("no signed link in the notice: {body}"));
    let link_token = link.split("?access=").nth(1).unwrap();
    let r = whep(&server, "fedshow", link_token);
    assert_eq!(r.status, 201, "WHEP with the notice's link: {}", r.text());

    server.assert_healthy("after the federated checks");
    assert!(
        server
            .log_lines()
            .iter()
            .all(|l| !l.contains(&openid) && !l.contains(&token)),
        "tokens stay out of the log"
    );
}
