//! OvenMediaEngine drop-in: OvenPlayer (npm `ovenplayer`) in headless Chromium
//! plays from the OME-compatible listener over UDP and with `?transport=tcp`;
//! the guide's four-player page plays four streams; OBS-style WHIP to
//! `/{app}/{stream}?direction=whip`; and the signalling's bad input (malformed
//! JSON, wrong ids, oversized and binary messages, unknown or offline streams)
//! gets `{code, error}` and a closed socket while the server keeps serving.

mod common;

use std::time::Duration;

use common::publishers::*;
use common::*;
use serde_json::Value;

fn check_players(r: &Value, n: usize, protocol: Option<&str>, what: &str) {
    println!("{what}: {r}");
    assert_eq!(r["ok"], true, "{what}: {}", r["reason"]);
    let players = r["players"].as_array().expect("players");
    assert_eq!(players.len(), n, "{what}: {r}");
    for p in players {
        assert_eq!(p["state"], "playing", "{what}: {p}");
        assert!(
            p["width"].as_u64().unwrap_or(0) > 0,
            "{what}: no picture size: {p}"
        );
    }
    let pcs = r["pcs"].as_array().expect("pcs");
    assert_eq!(pcs.len(), n, "{what}: one PeerConnection per player: {r}");
    for pc in pcs {
        assert_eq!(pc["connectionState"], "connected", "{what}: {pc}");
        if let Some(proto) = protocol {
            assert_eq!(
                pc["protocol"], proto,
                "{what}: selected candidate pair: {pc}"
            );
        }
    }
    let errors = r["player_errors"].as_array().cloned().unwrap_or_default();
    assert!(errors.is_empty(), "{what}: player errors {errors:?}");
    let console = r["console_errors"].as_array().cloned().unwrap_or_default();
    assert!(console.is_empty(), "{what}: console errors {console:?}");
}

#[test]
fn ovenplayer_plays_over_udp_and_tcp() {
    let _serial = serial();
    let server = Server::start("");
    let ome = server.service("ome");
    // OBS's OME settings: WHIP to /{app}/{stream}?direction=whip, key as Bearer token.
    let mut publisher = aiortc_publisher(
        &format!("http://{ome}/app/{STREAM}?direction=whip"),
        WhipOpts {
            key: Some(server.key(STREAM).to_string()),
            ..WhipOpts::default()
        },
    );
    let whip = publisher.wait_for("the WHIP answer", MEDIA_TIMEOUT, |v| v["type"] == "whip");
    assert_eq!(whip["status"], 201, "{whip}");
    server.wait_live(STREAM, LIVE_TIMEOUT);

    let mut udp = ovenplayer(&[format!("ws://{ome}/app/{STREAM}")], 60, 60);
    let r = udp.result(MEDIA_TIMEOUT + Duration::from_secs(30));
    check_players(&r, 1, Some("udp"), "OvenPlayer over UDP");
    let port = r["pcs"][0]["port"].as_u64();
    assert_eq!(port, server.webrtc_udp.map(|a| u64::from(a.port())));

    let mut tcp = ovenplayer(&[format!("ws://{ome}/app/{STREAM}?transport=tcp")], 60, 60);
    let r = tcp.result(MEDIA_TIMEOUT + Duration::from_secs(30));
    check_players(&r, 1, Some("tcp"), "OvenPlayer with transport=tcp");
    let port = r["pcs"][0]["port"].as_u64();
    assert_eq!(port, server.webrtc_tcp.map(|a| u64::from(a.port())));

    let r = publisher.stop(Duration::from_secs(30));
    assert_eq!(r["ok"], true, "{r}");
}

#[test]
fn four_ovenplayers_play_four_streams() {
    let _serial = serial();
    let slots: Vec<(String, String)> = (1..=4)
        .map(|i| (format!("slot-{i}"), random_hex()))
        .collect();
    let server = Server::start_with(ServerOpts {
        streams: slots.clone(),
        ..ServerOpts::default()
    });
    // The guide's producer setup: four guests publish to the "show" application.
    let small = FfmpegOpts {
        width: 320,
        height: 180,
        fps: 15,
        gop: 15,
        sample_rate: 48000,
        ..FfmpegOpts::default()
    };
    let _publishers: Vec<Publisher> = slots
        .iter()
        .map(|(_, key)| {
            Publisher::ffmpeg(&format!("rtmp://{}/show/{key}", server.rtmp), small.clone())
        })
        .collect();
    for (name, _) in &slots {
        server.wait_live(name, LIVE_TIMEOUT);
    }
    let ome = server.service("ome");
    let urls: Vec<String> = slots
        .iter()
        .map(|(name, _)| format!("ws://{ome}/show/{name}"))
        .collect();
    let mut page = ovenplayer(&urls, 30, 90);
    let r = page.result(Duration::from_secs(150));
    check_players(&r, 4, None, "the four-player page");
    for p in r["players"].as_array().unwrap() {
        assert_eq!(p["width"], 320, "{p}");
    }
    // The page's result comes before its browser closes; the server hears
    // of the closed sessions (WebSocket and DTLS close) just after.
    let left = poll_until(Duration::from_secs(15), || {
        server.api_stream("slot-3").unwrap()["viewers"]
            .as_u64()
            .unwrap_or(0)
            == 0
    });
    assert!(
        left,
        "the page closed: its viewers left: {}",
        server.api_stream("slot-3").unwrap()
    );
}

#[test]
fn signalling_bad_input_gets_code_and_error() {
    let _serial = serial();
    let mut server = Server::start("");
    let ome = server.service("ome");
    let ws = |path: &str| common::ws::connect(ome, path);
    let path = format!("/app/{STREAM}");

    // Not a WebSocket, not WHIP.
    let r = server_get(&format!("http://{ome}{path}"));
    assert_json_error(&r, 400, "a plain GET of the signalling URL");
    let r = common::http::request(
        "POST",
        &format!("http://{ome}{path}"),
        &[("Content-Type", "application/sdp")],
        Some(b"v=0"),
    )
    .unwrap();
    assert_json_error(&r, 400, "a POST without ?direction=whip");

    let mut s = ws(&path);
    s.send("{not json");
    s.expect_error(400, "not JSON", "malformed JSON");
    let mut s = ws(&path);
    s.send(r#"{"no":"command"}"#);
    s.expect_error(400, "command", "a message without a command");
    let mut s = ws(&path);
    s.send(r#"{"command":"request_offer"}"#);
    s.expect_error(404, "offline", "request_offer on an offline stream");
    let mut s = ws("/app/nosuchstream");
    s.send(r#"{"command":"request_offer"}"#);
    s.expect_error(404, "no stream", "an unknown stream");
    // `/{app}/{stream}/{file}` is the same stream's signalling.
    let mut s = ws(&format!("{path}/playlist"));
    s.send(r#"{"command":"request_offer"}"#);
    s.expect_error(404, "offline", "request_offer with a file segment");
    let mut s = ws(&path);
    s.send(r#"{"command":"answer","id":5,"peer_id":0,"sdp":{"type":"answer","sdp":"v=0"}}"#);
    s.expect_error(400, "request_offer first", "an answer before any offer");
    let mut s = ws(&path);
    s.send(&format!(
        r#"{{"command":"ping","pad":"{}"}}"#,
        "x".repeat(200_000)
    ));
    s.expect_error(413, "larger than the limit", "a 200 KB message");
    let mut s = ws(&path);
    s.send_binary(vec![1, 2, 3]);
    s.expect_error(400, "binary", "a binary message");
    let mut s = ws(&format!("{path}?direction=send"));
    s.send(r#"{"command":"request_offer"}"#);
    s.expect_error(400, "WHIP", "WebSocket publishing");
    // ping works before an offer.
    let mut s = ws(&path);
    s.send(r#"{"command":"ping"}"#);
    let pong = s.recv_json(Duration::from_secs(10)).expect("pong");
    assert_eq!(pong["command"], "pong");

    // With the stream live: an offer, then wrong ids.
    let _ffmpeg = Publisher::ffmpeg(
        &server.publish_url(STREAM),
        FfmpegOpts {
            width: 320,
            height: 180,
            ..FfmpegOpts::default()
        },
    );
    server.wait_live(STREAM, LIVE_TIMEOUT);
    wait_until("the stream's video codec", LIVE_TIMEOUT, || {
        server
            .api_stream(STREAM)
            .filter(|v| v["video"]["codec"] == "H264")
    });
    let offer = |s: &mut common::ws::Ws<std::net::TcpStream>| -> Value {
        s.send(r#"{"command":"request_offer"}"#);
        let o = s.recv_json(Duration::from_secs(30)).expect("an offer");
        assert_eq!(o["command"], "offer", "{o}");
        assert_eq!(o["code"], 200, "{o}");
        assert_eq!(o["peer_id"], 0, "{o}");
        assert!(o["id"].as_i64().is_some(), "{o}");
        assert_eq!(o["sdp"]["type"], "offer", "{o}");
        let sdp = o["sdp"]["sdp"].as_str().unwrap();
        assert!(
            sdp.contains("a=ice-lite") && sdp.contains("H264/90000"),
            "{sdp}"
        );
        assert!(!o["candidates"].as_array().unwrap().is_empty(), "{o}");
        o
    };
    let mut s = ws(&path);
    let o = offer(&mut s);
    let id = o["id"].as_i64().unwrap();
    s.send(&format!(
        r#"{{"command":"answer","id":{},"peer_id":0,"sdp":{{"type":"answer","sdp":"v=0"}}}}"#,
        id + 1
    ));
    s.expect_error(400, "does not match", "an answer with another session's id");

    let mut s = ws(&path);
    let o = offer(&mut s);
    let id = o["id"].as_i64().unwrap();
    s.send(&format!(
        r#"{{"command":"candidate","id":{id},"peer_id":0,"candidates":[]}}"#
    ));
    s.send(&format!(
        r#"{{"command":"answer","id":{id},"peer_id":0,"sdp":{{"type":"answer","sdp":"garbage"}}}}"#
    ));
    s.expect_error(400, "answer", "a malformed SDP answer");

    // transport=tcp offers TCP candidates only.
    let mut s = ws(&format!("{path}?transport=tcp"));
    let o = offer(&mut s);
    for c in o["candidates"].as_array().unwrap() {
        let c = c["candidate"].as_str().unwrap().to_ascii_lowercase();
        assert!(c.contains(" tcp ") && c.contains("tcptype passive"), "{c}");
    }
    s.send(&format!(r#"{{"command":"stop","id":{}}}"#, o["id"]));
    assert!(
        s.recv_json(Duration::from_secs(10)).is_none(),
        "stop closes the socket"
    );

    server.assert_healthy("after the bad signalling input");
    server.assert_no_key_logged();
}

fn server_get(url: &str) -> HttpResponse {
    common::http::request("GET", url, &[], None).unwrap()
}
