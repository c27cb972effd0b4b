//! A private stream of a real Synapse room, relayed between cluster nodes
//! (issue 13): ffmpeg publishes to node A (the appservice's node), viewers
//! come to node B. B admits a room member by their OpenID token and pulls
//! the stream from A once; a non-member is refused on B and makes B pull
//! nothing; A only ever sees B's cluster-authenticated pull.

mod common;

use std::time::Duration;

use common::cluster::*;
use common::matrix::*;
use common::postgres::Postgres;
use common::rtc_client::{self, Outgoing};
use common::synapse::free_port;
use common::*;
use serde_json::{Value, json};

const CLUSTER_TIMEOUT: Duration = Duration::from_secs(20);
const NAME: &str = "members";

fn post_json(node: &Server, path: &str, body: &Value) -> HttpResponse {
    http::request(
        "POST",
        &node.url(path),
        &[("Content-Type", "application/json")],
        Some(body.to_string().as_bytes()),
    )
    .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

fn whep(node: &Server, token: Option<&str>) -> HttpResponse {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/sdp")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    http::request(
        "POST",
        &node.whep_url(NAME),
        &headers,
        Some(offer_sdp(&["H264"]).as_bytes()),
    )
    .unwrap()
}

/// The answer of `POST /api/v1/streams/{NAME}/access` on `node` for `user`'s
/// OpenID token.
fn openid_access(node: &Server, user: &MxUser) -> HttpResponse {
    let (openid, hs_name) = user.openid_token();
    post_json(
        node,
        &format!("/api/v1/streams/{NAME}/access"),
        &json!({"openid_token": openid, "matrix_server_name": hs_name}),
    )
}

/// The private stream's state on `node`, seen with a viewer token.
fn stream_with(node: &Server, token: &str) -> Value {
    let r = http::request(
        "GET",
        &node.url(&format!("/api/v1/streams/{NAME}")),
        &[("Authorization", &format!("Bearer {token}"))],
        None,
    )
    .unwrap();
    assert_eq!(r.status, 200, "the stream with a token: {}", r.text());
    r.json().unwrap()
}

/// Whether `node`'s `GET /api/v1/cluster` (with `token`) lists the stream on A.
fn origin_seen(node: &Server, token: Option<&str>) -> bool {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let r = http::request("GET", &node.url("/api/v1/cluster"), &headers, None).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r.json().unwrap()["streams"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|s| s["stream"] == NAME && s["origin"] == "a")
}

fn relays(node: &Server) -> Option<f64> {
    node.get("/metrics").text().lines().find_map(|l| {
        l.strip_prefix("roomcast_cluster_relays ")?
            .trim()
            .parse()
            .ok()
    })
}

/// The WebRTC sessions `node` itself serves of its private streams (their
/// names stay out of `/metrics`): other nodes' pulls included.
fn private_sessions(node: &Server) -> Option<f64> {
    node.get("/metrics").text().lines().find_map(|l| {
        l.strip_prefix("roomcast_private_streams_viewers ")?
            .trim()
            .parse()
            .ok()
    })
}

/// `node`'s "whep viewer negotiated" lines for the stream.
fn negotiated(node: &Server) -> Vec<String> {
    let stream = format!("stream={NAME}");
    node.whep_negotiated()
        .into_iter()
        .filter(|l| l.contains(&stream))
        .collect()
}

#[test]
fn a_private_rooms_stream_is_relayed_to_members_only() {
    let _serial = serial();
    let pg = Postgres::start();
    let spec = ClusterSpec::new(pg.create_database("cluster_matrix"));
    let env = MatrixEnv::start_clustered("golive_delay_ms = 1000", &spec, "a");
    let a = env.server();
    let bot = env.bot_id();
    let alice = env.user("alice");
    let bob = env.user("bob");
    let eve = env.user("eve");
    let (key, room) = env.new_stream_by_dm(&alice, NAME);
    alice.invite(&room, &bob.user_id);
    bob.join(&room);
    // The room turns invite-only: its stream is private.
    alice.set_state(
        &room,
        "m.room.join_rules",
        "",
        json!({"join_rule": "invite"}),
    );
    wait_until("the stream to be private on A", MX_TIMEOUT, || {
        (a.get(&format!("/api/v1/streams/{NAME}")).status == 401).then_some(())
    });

    // Node B: the same registration and database, its own [cluster].
    let listen = format!("127.0.0.1:{}", free_port());
    let (_b_state, b) = env.start_other_node(Some(listen.clone()), &spec.section("b", &listen));
    wait_alive_nodes(a, &["a", "b"], CLUSTER_TIMEOUT);
    let _ffmpeg = Publisher::ffmpeg(&a.rtmp_url(&key), FfmpegOpts::small());
    wait_until("the private stream live on A", LIVE_TIMEOUT, || {
        a.get("/metrics")
            .text()
            .contains("roomcast_private_streams_live 1\n")
            .then_some(())
    });
    alice.wait_message(&room, &bot, "is live");

    // A member's OpenID token, checked by B with the homeserver.
    let r = openid_access(&b, &eve);
    assert_json_error(&r, 403, "a non-member's OpenID token on B");
    let r = openid_access(&b, &alice);
    assert_eq!(r.status, 200, "alice's OpenID token on B: {}", r.text());
    let alice_token = r.json().unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    // B knows where the stream lives (shown only with access).
    wait_until("B to see the stream's origin on A", CLUSTER_TIMEOUT, || {
        origin_seen(&b, Some(&alice_token)).then_some(())
    });
    assert!(
        !origin_seen(&b, None),
        "a private stream listed without access"
    );

    // --- refused on B, and B pulls nothing for them ---------------------------------------
    let r = whep(&b, None);
    assert_eq!(
        assert_json_error(&r, 401, "WHEP on B without a token")["code"],
        "access_required"
    );
    let r = whep(&b, Some("v1.99999999999.00"));
    assert_eq!(
        assert_json_error(&r, 403, "WHEP on B with a forged token")["code"],
        "access_denied"
    );
    let r = b.get(&format!("/hls/{NAME}/index.m3u8"));
    assert_json_error(&r, 401, "LL-HLS on B without a token");
    assert_eq!(
        relays(&b),
        Some(0.0),
        "a viewer without access made B pull the stream"
    );
    assert!(negotiated(a).is_empty(), "{:?}", negotiated(a));

    // --- members admitted on B by their OpenID tokens: one pull from A --------------------
    let mut alice_viewer = aiortc_viewer(
        &format!("{}?access={alice_token}", b.whep_url(NAME)),
        ViewerOpts {
            duration_s: Some(60.0),
            ..ViewerOpts::default()
        },
    );
    alice_viewer.wait_for("alice decoding on B", MEDIA_TIMEOUT, |v| {
        v["type"] == "progress" && v["video_frames"].as_u64().unwrap_or(0) > 0
    });
    let r = openid_access(&b, &bob);
    assert_eq!(r.status, 200, "bob's OpenID token on B: {}", r.text());
    let bob_token = r.json().unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let mut bob_viewer = rtc_client::start(
        &b.whep_url(NAME),
        Some(&bob_token),
        false,
        Outgoing::Nothing,
    )
    .unwrap_or_else(|r| panic!("bob refused on B: {} {}", r.status, r.text()));
    wait_until("bob receiving video on B", MEDIA_TIMEOUT, || {
        (bob_viewer.connected() && bob_viewer.video_packets() > 0).then_some(())
    });
    // The token is valid on every node (one secret in the database): A's
    // API, read with it, counts the cluster's two viewers (the bus's sum,
    // B's pull taken off), while A itself serves one session: B's pull.
    // Both wait for the bus: each node counts the other's figures once
    // they arrive.
    wait_until(
        "B's and A's APIs to count the cluster's two viewers",
        CLUSTER_TIMEOUT,
        || {
            (stream_with(&b, &alice_token)["viewers"] == 2
                && stream_with(a, &bob_token)["viewers"] == 2)
                .then_some(())
        },
    );
    assert_eq!(stream_with(&b, &alice_token)["ingest"]["protocol"], "relay");
    assert_eq!(private_sessions(a), Some(1.0), "A serves B's pull only");
    assert_eq!(relays(&b), Some(1.0));
    let on_a = negotiated(a);
    let on_b = negotiated(&b);
    println!("A: {on_a:#?}\nB: {on_b:#?}");
    assert!(
        on_a.len() == 1 && on_a[0].contains("grounds=Cluster"),
        "A saw something else than B's one cluster pull: {on_a:#?}"
    );
    assert!(
        on_b.len() == 2 && on_b.iter().all(|l| l.contains("grounds=Token")),
        "B admits its viewers by their tokens: {on_b:#?}"
    );
    // LL-HLS on B with a member's token: served, and never to shared caches.
    let r = wait_until("B's LL-HLS playlist", MEDIA_TIMEOUT, || {
        let r = b.get(&format!("/hls/{NAME}/index.m3u8?access={alice_token}"));
        (r.status == 200).then_some(r)
    });
    let cache = r.header("cache-control").unwrap_or_default().to_string();
    assert!(cache.starts_with("private"), "Cache-Control {cache:?}");
    assert!(
        r.text().contains(&format!("?access={alice_token}")),
        "{}",
        r.text()
    );
    assert_eq!(private_sessions(a), Some(1.0), "still one pull");

    let r = alice_viewer.stop(MEDIA_TIMEOUT);
    println!("alice's aiortc viewer on B: {r}");
    assert_eq!(r["ok"], true, "{r}");
    assert!(
        r["video_frames"].as_u64().unwrap_or(0) >= 30
            && r["audio_frames"].as_u64().unwrap_or(0) >= 25,
        "alice decodes video and audio on B: {r}"
    );

    // --- a member who leaves is ended on B too (the membership travels on the bus) --------
    let from = b.log_len();
    let (s, _) = bob.call(
        "POST",
        &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
        Some(&json!({})),
    );
    assert_eq!(s, 200, "bob leaves");
    // Logged only when B ended a session of his.
    b.wait_for_log_from(
        from,
        "their membership of the room ended",
        Duration::from_secs(30),
    );
    let r = whep(&b, Some(&bob_token));
    assert_json_error(&r, 403, "WHEP on B with the token of a member who left");
    bob_viewer.stop();
}
