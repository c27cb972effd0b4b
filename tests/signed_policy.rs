//! OvenMediaEngine SignedPolicy end to end: URLs minted by `roomcast sign`
//! (and by the library, for the policies the CLI does not make) publish over
//! WHIP and RTMP without a stream key; expired, not yet active, wrong-IP and
//! tampered URLs are refused with clear errors; `stream_expire` ends a running
//! publish; with `playback = true` viewers (WHEP, OvenPlayer signalling) need
//! a signed URL too. The signature is checked against `openssl` as well.

mod common;

use std::time::Duration;

use common::control::hmac_sha1_b64url;
use common::publishers::*;
use common::*;
use roomcast::auth::signed_policy::{Policy, QueryNames, now_ms, sign_url};

const SECRET: &str = "1kU^b6";

/// `roomcast sign … --url URL` and its first output line.
fn cli_sign(url: &str, extra: &[&str]) -> String {
    let out = roomcast_cmd()
        .args(["sign", "--secret", SECRET, "--url", url])
        .args(extra)
        .output()
        .expect("roomcast sign");
    assert!(
        out.status.success(),
        "roomcast sign failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap()
        .to_string()
}

fn lib_sign(url: &str, policy: &Policy) -> String {
    sign_url(SECRET.as_bytes(), url, policy, &QueryNames::default()).unwrap()
}

fn expiring_in(ms: u64) -> Policy {
    Policy {
        url_expire: Some(now_ms() + ms),
        ..Policy::default()
    }
}

/// POST a sendonly offer without a key to a (signed) WHIP URL.
fn whip_post(url: &str) -> HttpResponse {
    let offer = whip_offer(&["96 VP8/90000"], &["111 opus/48000/2"]);
    common::http::request(
        "POST",
        url,
        &[("Content-Type", "application/sdp")],
        Some(offer.as_bytes()),
    )
    .unwrap()
}

/// [`whip_post`] with extra request headers.
fn whip_post_with(url: &str, extra: &[(&str, &str)]) -> HttpResponse {
    let offer = whip_offer(&["96 VP8/90000"], &["111 opus/48000/2"]);
    let mut headers = vec![("Content-Type", "application/sdp")];
    headers.extend_from_slice(extra);
    common::http::request("POST", url, &headers, Some(offer.as_bytes())).unwrap()
}

fn refused(r: &HttpResponse, needle: &str, what: &str) {
    let e = assert_json_error(r, 403, what);
    assert_eq!(e["code"], "signed_url_refused", "{what}: {e}");
    let msg = e["error"].as_str().unwrap();
    assert!(
        msg.contains(needle),
        "{what}: {msg:?} should say {needle:?}"
    );
}

#[test]
fn the_cli_signs_like_ome() {
    let url = cli_sign("ws://192.168.0.100/app/stream", &["--expires-in", "10m"]);
    let (unsigned, sig) = url.rsplit_once("&signature=").unwrap();
    assert!(
        unsigned.starts_with("ws://192.168.0.100:80/app/stream?policy="),
        "{url}"
    );
    assert_eq!(
        sig,
        hmac_sha1_b64url(SECRET, unsigned),
        "independent HMAC-SHA1"
    );
    // OME's documented vector, computed by openssl.
    assert_eq!(
        hmac_sha1_b64url(
            SECRET,
            "ws://192.168.0.100:3333/app/stream?policy=eyJ1cmxfZXhwaXJlIjoxMzk5NzIxNTgxfQ"
        ),
        "dvVdBpoxAeCPl94Kt5RoiqLI0YE"
    );
    let rtmp = roomcast_cmd()
        .args(["sign", "--secret", SECRET, "--url", "rtmp://h/live/s1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&rtmp.stdout);
    assert!(text.contains("Server:     rtmp://h:1935/live"), "{text}");
    assert!(text.contains("Stream Key: s1?policy="), "{text}");
}

#[test]
fn signed_urls_publish_and_bad_ones_are_refused() {
    let _serial = serial();
    let mut server = Server::start(&format!(
        "[signed_policy]\nsecret_key = \"{SECRET}\"\nplayback = true\n"
    ));
    let base = server.base_url();

    // Refusals, each with its reason.
    let url = lib_sign(
        &format!("{base}/whip/signed-1"),
        &Policy {
            url_expire: Some(now_ms() - 60_000),
            ..Policy::default()
        },
    );
    refused(&whip_post(&url), "expired", "an expired URL");
    let url = lib_sign(
        &format!("{base}/whip/signed-1"),
        &Policy {
            url_activate: Some(now_ms() + 3_600_000),
            ..expiring_in(7_200_000)
        },
    );
    refused(&whip_post(&url), "not active yet", "a URL not yet active");
    let url = lib_sign(
        &format!("{base}/whip/signed-1"),
        &Policy {
            allow_ip: Some("10.0.0.0/8".into()),
            ..expiring_in(600_000)
        },
    );
    refused(
        &whip_post(&url),
        "does not allow address 127.0.0.1",
        "a URL for other addresses",
    );
    let good = lib_sign(&format!("{base}/whip/signed-1"), &expiring_in(600_000));
    refused(
        &whip_post(&good.replace("/whip/signed-1", "/whip/signed-2")),
        "signature does not match",
        "a URL with another stream put in",
    );
    let wider = lib_sign(&format!("{base}/whip/signed-1"), &expiring_in(86_400_000));
    let forged = format!(
        "{}&signature={}",
        wider.split("&signature=").next().unwrap(),
        good.split("&signature=").nth(1).unwrap()
    );
    refused(
        &whip_post(&forged),
        "signature does not match",
        "a URL with another policy put in",
    );
    let r = whip_post(&format!("{base}/whip/signed-1"));
    let e = assert_json_error(&r, 401, "no key and no signed URL");
    assert_eq!(e["code"], "stream_key_required");

    // A URL signed by the CLI publishes over WHIP, no key needed; the stream
    // is made on demand. stream_expire ends it while it runs.
    let url = cli_sign(
        &format!("{base}/whip/signed-1"),
        &[
            "--expires-in",
            "10m",
            "--stream-expires-in",
            "20s",
            "--allow-ip",
            "127.0.0.0/8",
        ],
    );
    let mut publisher = aiortc_publisher(&url, WhipOpts::default());
    let whip = publisher.wait_for("the WHIP answer", MEDIA_TIMEOUT, |v| v["type"] == "whip");
    assert_eq!(whip["status"], 201, "{whip}");
    server.wait_live("signed-1", LIVE_TIMEOUT);

    // Playback needs a signed URL too (playback = true).
    let r = server.post_sdp("/whep/signed-1", offer_sdp(&["H264"]).as_bytes());
    refused(&r, "no `policy`", "a WHEP viewer without a signed URL");
    let whep = lib_sign(&format!("{base}/whep/signed-1"), &expiring_in(600_000));
    let path = whep.strip_prefix(&base).unwrap();
    let r = server.post_sdp(path, offer_sdp(&["H264"]).as_bytes());
    assert_eq!(r.status, 201, "a signed WHEP URL: {}", r.text());
    let ome = server.service("ome");
    let mut ws = common::ws::connect(ome, "/app/signed-1");
    ws.send(r#"{"command":"request_offer"}"#);
    ws.expect_error(403, "policy", "OvenPlayer without a signed URL");
    let signed_ws = lib_sign(&format!("ws://{ome}/app/signed-1"), &expiring_in(600_000));
    let mut ws = common::ws::connect(ome, signed_ws.strip_prefix(&format!("ws://{ome}")).unwrap());
    ws.send(r#"{"command":"request_offer"}"#);
    let offer = ws.recv_json(Duration::from_secs(30)).expect("an offer");
    assert_eq!(offer["command"], "offer", "{offer}");

    // RTMP: OBS's Stream Key "STREAM?policy=…&signature=…", any application.
    let rtmp = server.rtmp;
    let url = cli_sign(
        &format!("rtmp://{rtmp}/app/rtmp-signed"),
        &["--expires-in", "10m"],
    );
    let _ffmpeg = Publisher::ffmpeg(
        &url,
        FfmpegOpts {
            width: 320,
            height: 180,
            ..FfmpegOpts::default()
        },
    );
    server.wait_live("rtmp-signed", LIVE_TIMEOUT);
    let expired = lib_sign(
        &format!("rtmp://{rtmp}/app/rtmp-late"),
        &Policy {
            url_expire: Some(now_ms() - 1_000),
            ..Policy::default()
        },
    );
    let mut late = Publisher::ffmpeg(&expired, FfmpegOpts::default());
    assert!(
        late.wait_exit(Duration::from_secs(30)).is_some(),
        "ffmpeg kept publishing with an expired URL"
    );
    server.wait_for_log("rtmp publish refused", Duration::from_secs(10));
    assert!(
        server
            .log_lines()
            .iter()
            .any(|l| l.contains("rtmp publish refused") && l.contains("expired")),
        "the refusal should say the URL expired"
    );
    assert!(
        server
            .api_stream("rtmp-late")
            .is_none_or(|v| v["live"] == false)
    );

    // stream_expire (20 s after signing) ends the WHIP publish.
    wait_until(
        "stream_expire to end the publish",
        Duration::from_secs(60),
        || server.api_stream("signed-1").filter(|v| v["live"] == false),
    );
    server.wait_for_log("session expired", Duration::from_secs(10));
    server.assert_healthy("after the signed URLs");
    // Signatures and policies are not secrets, but keys are.
    server.assert_no_key_logged();
    let _ = publisher.stop(Duration::from_secs(20));
}

/// A policy's `real_ip` is checked against the address a trusted proxy
/// forwarded, never against a header from anyone else.
#[test]
fn real_ip_is_believed_only_from_trusted_proxies() {
    let _serial = serial();
    let policy = Policy {
        real_ip: Some("10.0.0.0/8".into()),
        ..expiring_in(600_000)
    };
    // Loopback is a trusted proxy by default: its X-Forwarded-For is the client.
    let server = Server::start(&format!("[signed_policy]\nsecret_key = \"{SECRET}\"\n"));
    let url = lib_sign(&format!("{}/whip/real-1", server.base_url()), &policy);
    let r = whip_post_with(&url, &[("X-Forwarded-For", "10.1.2.3")]);
    assert_eq!(
        r.status,
        201,
        "a forwarded client inside real_ip: {}",
        r.text()
    );
    let r = whip_post_with(&url, &[("X-Forwarded-For", "192.0.2.7")]);
    refused(&r, "it is 192.0.2.7", "a forwarded client outside real_ip");
    drop(server);

    // The same header from a peer that is not a trusted proxy is ignored.
    let server = Server::start_with(ServerOpts {
        http_extra: "trusted_proxies = []".into(),
        extra_toml: format!("[signed_policy]\nsecret_key = \"{SECRET}\"\n"),
        ..ServerOpts::default()
    });
    let url = lib_sign(&format!("{}/whip/real-1", server.base_url()), &policy);
    let r = whip_post_with(
        &url,
        &[("X-Forwarded-For", "10.1.2.3"), ("X-Real-IP", "10.1.2.3")],
    );
    refused(
        &r,
        "the request has neither",
        "X-Forwarded-For from a peer that is not a trusted proxy",
    );
}
