//! Synapse is down while a stream goes live and comes back 30 s later: the
//! go-live notice (and the stream state event) arrive exactly once, and roomcast
//! keeps serving media and its API throughout.

mod common;

use std::time::{Duration, Instant};

use common::matrix::*;
use common::*;

/// The outage the issue specifies.
const OUTAGE: Duration = Duration::from_secs(30);

#[test]
fn golive_notice_survives_a_homeserver_outage() {
    let _serial = serial();
    let mut env = MatrixEnv::start("golive_delay_ms = 1500");
    let bot = env.bot_id();
    let alice = env.user("alice");
    let dm = alice.dm_bot(&bot);
    let key = key_from_settings(
        alice.live_new(&dm, &bot, "outage")["content"]["body"]
            .as_str()
            .unwrap(),
    );
    let room = wait_until("the room alias", MX_TIMEOUT, || {
        alice.resolve_alias("#live_outage:localhost")
    });
    alice.join(&room);

    // Homeserver down; the stream goes live.
    env.synapse.stop();
    let down_at = Instant::now();
    let from = env.server().log_len();
    let _ffmpeg = Publisher::ffmpeg(
        &env.server().rtmp_url(&key),
        FfmpegOpts {
            width: 640,
            height: 360,
            ..FfmpegOpts::default()
        },
    );
    env.server().wait_live("outage", LIVE_TIMEOUT);
    env.server()
        .wait_for_log_from(from, "go-live notice queued", MX_TIMEOUT);
    env.server()
        .wait_for_log_from(from, "notice not delivered yet", MX_TIMEOUT);
    // The outage lasts 30 s; roomcast keeps serving meanwhile.
    wait_until(
        "the 30 s outage to pass",
        OUTAGE + Duration::from_secs(30),
        || {
            env.server_mut()
                .assert_healthy("while the homeserver is down");
            assert_eq!(env.server().api_stream("outage").unwrap()["live"], true);
            (down_at.elapsed() >= OUTAGE).then_some(())
        },
    );

    env.synapse.start_again();
    // roomcast noticed the outage and re-reads its rooms' state after it.
    env.server()
        .wait_for_log_from(from, "room state re-read from the homeserver", MX_TIMEOUT);
    let notice = alice.wait_message(&room, &bot, "is live");
    assert!(notice["content"]["io.roomcast.golive"].is_object());
    wait_until("the stream state event", MX_TIMEOUT, || {
        alice
            .state(&room, "io.roomcast.stream", "outage")
            .filter(|s| s["state"] == "live")
    });
    // Both outbox items are delivered; nothing is pending or sent twice.
    env.server()
        .wait_for_log_from(from, "kind=state stream=outage", MX_TIMEOUT);
    let notices: Vec<_> = alice
        .messages_from(&room, &bot)
        .into_iter()
        .filter(|e| e["content"]["io.roomcast.golive"].is_object())
        .collect();
    assert_eq!(notices.len(), 1, "exactly one go-live notice: {notices:?}");
    let delivered = env
        .server()
        .log_lines()
        .iter()
        .filter(|l| {
            l.contains("notice delivered")
                && l.contains("kind=notice")
                && l.contains("stream=outage")
        })
        .count();
    assert_eq!(delivered, 1);
    eprintln!(
        "notice delivered {:?} after the homeserver went down",
        down_at.elapsed()
    );
}
