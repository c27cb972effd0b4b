//! OvenMediaEngine admission webhooks against a control server written here: it
//! checks X-OME-Signature independently (openssl) and allows, denies, answers
//! slowly (past the timeout) or redirects by stream name; a second server
//! points at a control server that is down. A slow answer for one stream
//! does not delay another stream's publish. Outbound event webhooks (Discord's
//! JSON and roomcast's) fire after admission and are retried.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::Duration;

use common::control::{ControlServer, Req, hmac_sha1_b64url};
use common::publishers::*;
use common::*;
use serde_json::{Value, json};

const SECRET: &str = "control-secret";

/// Released by the test to let a "slow" answer go.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    changed: Condvar,
}

impl Gate {
    fn wait(&self) {
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.changed.wait(open).unwrap();
        }
    }
    fn release(&self) {
        *self.open.lock().unwrap() = true;
        self.changed.notify_all();
    }
}

fn admission_reply(req: &Req, gate: &Gate) -> (u16, String) {
    let body = req.json();
    if body["request"]["status"] == "closing" {
        return (200, "{}".into());
    }
    let url = body["request"]["url"].as_str().unwrap_or("");
    let verdict = if url.contains("/deny-") {
        json!({"allowed": false, "reason": "banned by the test"})
    } else if url.contains("/slow-") {
        gate.wait();
        json!({"allowed": true})
    } else if url.contains("/redirect-") {
        json!({"allowed": true, "new_url": "http://h:3333/app/redirected-1"})
    } else if url.contains("/life-") {
        json!({"allowed": true, "lifetime": 3000})
    } else {
        json!({"allowed": true})
    };
    (200, verdict.to_string())
}

fn signature_ok(r: &Req) -> bool {
    r.header("X-OME-Signature") == Some(hmac_sha1_b64url(SECRET, &r.body).as_str())
}

fn opening_for(r: &Req, stream: &str) -> bool {
    let b = r.json();
    r.path == "/admission"
        && b["request"]["status"] == "opening"
        && b["request"]["url"]
            .as_str()
            .is_some_and(|u| u.contains(stream))
}

fn whip_post(server: &Server, stream: &str) -> HttpResponse {
    let offer = whip_offer(&["96 VP8/90000"], &["111 opus/48000/2"]);
    common::http::request_timeout(
        "POST",
        &server.whip_url(stream),
        &[("Content-Type", "application/sdp")],
        Some(offer.as_bytes()),
        Duration::from_secs(60),
    )
    .unwrap()
}

#[test]
fn admission_webhook_allows_denies_times_out_and_never_blocks_others() {
    let _serial = serial();
    let gate = Arc::new(Gate::default());
    let hook_attempts = Arc::new(AtomicUsize::new(0));
    let (g, attempts) = (gate.clone(), hook_attempts.clone());
    let control = ControlServer::start(move |req| match req.path.as_str() {
        "/admission" => admission_reply(req, &g),
        // The Discord-style webhook fails its first delivery: roomcast retries.
        "/discord" if attempts.fetch_add(1, Ordering::SeqCst) == 0 => (500, "{}".into()),
        _ => (204, String::new()),
    });
    let mut server = Server::start(&format!(
        "[admission]\ncontrol_server_url = \"{}\"\nsecret_key = \"{SECRET}\"\ntimeout_ms = 1500\n\
         [[webhooks]]\nurl = \"{}\"\nformat = \"discord\"\n\
         [[webhooks]]\nurl = \"{}\"\nformat = \"json\"\nevents = [\"started\"]\n",
        control.url("/admission"),
        control.url("/discord"),
        control.url("/events"),
    ));

    // Denied, with the control server's reason.
    let r = whip_post(&server, "deny-1");
    let e = assert_json_error(&r, 403, "a denied publish");
    assert_eq!(e["code"], "admission_denied");
    assert!(
        e["error"].as_str().unwrap().contains("banned by the test"),
        "{e}"
    );

    // A slow answer for slow-1 holds only slow-1: allow-2 is admitted meanwhile.
    let (tx, rx) = mpsc::channel();
    let s = server.base_url();
    let slow = std::thread::spawn(move || {
        let offer = whip_offer(&["96 VP8/90000"], &["111 opus/48000/2"]);
        let r = common::http::request_timeout(
            "POST",
            &format!("{s}/whip/slow-1"),
            &[("Content-Type", "application/sdp")],
            Some(offer.as_bytes()),
            Duration::from_secs(60),
        );
        let _ = tx.send(());
        r.unwrap()
    });
    control.wait_for("slow-1's opening request", Duration::from_secs(30), |r| {
        opening_for(r, "/slow-1")
    });
    let r = whip_post(&server, "allow-2");
    assert_eq!(r.status, 201, "allow-2 while slow-1 waits: {}", r.text());
    assert!(
        rx.try_recv().is_err(),
        "slow-1 was answered before allow-2: the publishes were serialized"
    );
    let r = slow.join().unwrap();
    let e = assert_json_error(&r, 503, "a control server slower than timeout_ms");
    assert_eq!(e["code"], "admission_unavailable");
    assert!(e["error"].as_str().unwrap().contains("in time"), "{e}");
    gate.release();

    // new_url sends the session to another stream.
    let r = whip_post(&server, "redirect-1");
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(
        r.header("location")
            .unwrap()
            .starts_with("/whip/redirected-1/"),
        "{:?}",
        r.header("location")
    );

    // Allowed without a key: aiortc publishes, then DELETEs: opening, started
    // events (Discord retried), closing.
    let mut publisher = aiortc_publisher(&server.whip_url("allow-1"), WhipOpts::default());
    let whip = publisher.wait_for("the WHIP answer", MEDIA_TIMEOUT, |v| v["type"] == "whip");
    assert_eq!(whip["status"], 201, "{whip}");
    server.wait_live("allow-1", LIVE_TIMEOUT);
    let opening = control.wait_for("allow-1's opening", Duration::from_secs(10), |r| {
        opening_for(r, "/whip/allow-1")
    });
    assert!(
        signature_ok(&opening),
        "X-OME-Signature does not verify: {:?}",
        opening.header("X-OME-Signature")
    );
    let b = opening.json();
    assert_eq!(b["request"]["direction"], "incoming", "{b}");
    assert_eq!(b["request"]["protocol"], "webrtc", "{b}");
    assert_eq!(b["client"]["address"], "127.0.0.1", "{b}");
    assert!(b["client"]["port"].as_u64().is_some(), "{b}");
    assert!(
        b["request"]["time"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{b}"
    );
    // The first delivery got a 500: the same message comes again.
    let started = |r: &Req| {
        r.path == "/discord"
            && r.json()["content"]
                .as_str()
                .is_some_and(|c| c.contains("allow-1") && c.contains("/watch/allow-1"))
    };
    let discord = control.wait_for(
        "the Discord 'started' message",
        Duration::from_secs(30),
        started,
    );
    control.wait_for(
        "the Discord message again (retried after a 500)",
        Duration::from_secs(30),
        |r| started(r) && r.at > discord.at,
    );
    assert!(discord.json()["content"].as_str().unwrap().contains("live"));
    control.wait_for("the JSON 'started' event", Duration::from_secs(30), |r| {
        r.path == "/events"
            && r.json()["event"] == "stream.started"
            && r.json()["stream"] == "allow-1"
    });
    let r = publisher.stop(Duration::from_secs(30));
    assert_eq!(r["delete_status"], 200, "{r}");
    let closing = control.wait_for("allow-1's closing", Duration::from_secs(30), |r| {
        let b = r.json();
        b["request"]["status"] == "closing"
            && b["request"]["url"]
                .as_str()
                .is_some_and(|u| u.contains("/whip/allow-1"))
    });
    assert!(signature_ok(&closing));
    control.wait_for(
        "the Discord 'ended' message",
        Duration::from_secs(30),
        |r| {
            r.path == "/discord"
                && r.json()["content"]
                    .as_str()
                    .is_some_and(|c| c.contains("allow-1") && c.contains("ended"))
        },
    );

    // lifetime ends an allowed session (however far it got in 3 s).
    let from = server.log_len();
    let mut short = aiortc_publisher(&server.whip_url("life-1"), WhipOpts::default());
    let line = server.wait_for_log_from(from, "session expired", Duration::from_secs(60));
    assert!(line.contains("life-1"), "{line}");
    wait_until("life-1 to be offline", Duration::from_secs(30), || {
        server.api_stream("life-1").filter(|v| v["live"] == false)
    });
    let _ = short.stop(Duration::from_secs(20));

    // RTMP with the stream key: the webhook is asked too, and never sees the key.
    let _ffmpeg = Publisher::ffmpeg(
        &server.publish_url(STREAM),
        FfmpegOpts {
            width: 320,
            height: 180,
            ..FfmpegOpts::default()
        },
    );
    server.wait_live(STREAM, LIVE_TIMEOUT);
    let rtmp = control.wait_for("the RTMP publish's opening", Duration::from_secs(10), |r| {
        opening_for(r, &format!("/{STREAM}"))
    });
    assert_eq!(rtmp.json()["request"]["protocol"], "rtmp");
    let key = server.key(STREAM);
    for r in control.requests() {
        assert!(
            !r.body.contains(key),
            "a stream key reached the control server: {}",
            r.body
        );
    }

    // RTMP without a key, as the OME guide does it: the Stream Key field is a
    // new stream's name with a password for the control server, which decides;
    // the stream is made on demand.
    let _guest = Publisher::ffmpeg(
        &server.rtmp_url("rtmp-guest-1?password=letmein"),
        FfmpegOpts {
            width: 320,
            height: 180,
            ..FfmpegOpts::default()
        },
    );
    server.wait_live("rtmp-guest-1", LIVE_TIMEOUT);
    let guest = control.wait_for(
        "the keyless RTMP publish's opening",
        Duration::from_secs(10),
        |r| opening_for(r, "/rtmp-guest-1"),
    );
    assert!(
        guest.json()["request"]["url"]
            .as_str()
            .is_some_and(|u| u.contains("password=letmein")),
        "the control server sees the password: {}",
        guest.body
    );
    server.assert_healthy("after the admission webhooks");
    server.assert_no_key_logged();
}

#[test]
fn a_control_server_that_is_down_refuses_sessions() {
    // Nothing listens on port 1.
    let server = Server::start(
        "[admission]\ncontrol_server_url = \"http://127.0.0.1:1/admission\"\ntimeout_ms = 2000\n",
    );
    let r = whip_post(&server, "any-1");
    let e = assert_json_error(&r, 503, "a control server that is down");
    assert_eq!(e["code"], "admission_unavailable");
    assert!(e["error"].as_str().unwrap().contains("cannot reach"), "{e}");
    // Even with the right key: the webhook has the last word, as in OME.
    let offer = whip_offer(&["96 VP8/90000"], &["111 opus/48000/2"]);
    let bearer = format!("Bearer {}", server.key(STREAM));
    let r = common::http::request(
        "POST",
        &server.whip_url(STREAM),
        &[
            ("Content-Type", "application/sdp"),
            ("Authorization", &bearer),
        ],
        Some(offer.as_bytes()),
    )
    .unwrap();
    assert_json_error(&r, 503, "a keyed publish with the control server down");
    let v: Value = server.api_stream(STREAM).unwrap();
    assert_eq!(v["live"], false);
}
