//! The web pages in headless Chromium (tests/browser/pages.mjs) against the real
//! binary and ffmpeg publishers: the watch page (offline → starts by itself →
//! plays video and audio → title, viewers, keyboard, fullscreen → publisher
//! restart), the chat panel against the contract (Matrix side mocked in the
//! browser), the embed as an OBS browser source and in an iframe, the four-slot
//! multi-view layout with four publishers, the Matrix widget inside a
//! matrix-widget-api client, the publish page with a fake camera, and the index;
//! the player's ICE restart after a network cut (through `common::impair`'s relay).
//! Screenshots of every page at 1280×800 and 390×844 go to tests/artifacts/pages/.

mod common;

use std::time::{Duration, Instant};

use common::impair::{self, ImpairedRelay, Impairment};
use common::*;
use serde_json::Value;

const PAGE_TIMEOUT: Duration = Duration::from_secs(240);

/// One scenario of tests/browser/pages.mjs, screenshots in tests/artifacts/pages.
fn pages(server: &Server, scenario: &str, args: &[&str]) -> JsonTool {
    pages_scenario(server, "pages", scenario, args)
}

fn finish(tool: &mut JsonTool, what: &str) -> Value {
    finish_scenario(tool, what, PAGE_TIMEOUT)
}

fn wait_step(tool: &JsonTool, step: &str) -> Value {
    tool.wait_for(step, PAGE_TIMEOUT, |v| v["type"] == step)
}

/// Small, cheap publishers for the pages that show several streams at once.
fn small() -> FfmpegOpts {
    FfmpegOpts {
        width: 640,
        height: 360,
        fps: 15,
        gop: 15,
        ..FfmpegOpts::default()
    }
}

/// t2 and t1 (in that order), t1 titled `title`: the harness appends `extra_toml`
/// right after the last `[[streams]]` table, so a bare `title = …` line lands in t1's.
fn with_title(title: &str) -> ServerOpts {
    ServerOpts {
        streams: vec![
            (STREAM2.to_string(), random_hex()),
            (STREAM.to_string(), random_hex()),
        ],
        extra_toml: format!("title = {title:?}\n"),
        ..ServerOpts::default()
    }
}

#[test]
fn watch_page_starts_by_itself_plays_and_recovers() {
    let _serial = serial();
    let server = Server::start_with(with_title("Test One"));
    let mut tool = pages(
        &server,
        "watch",
        &["--stream", STREAM, "--title", "Test One", "--width", "1280"],
    );
    // The page is open and offline before the stream goes live.
    wait_step(&tool, "offline_shown");
    let mut ffmpeg = Publisher::ffmpeg(&server.publish_url(STREAM), FfmpegOpts::default());
    let playing = wait_step(&tool, "playing");
    println!(
        "started by itself {} ms after the offline state",
        playing["after_ms"]
    );
    wait_step(&tool, "await_publisher_stop");
    ffmpeg.stop(Duration::from_secs(10));
    wait_step(&tool, "offline_again");
    let _ffmpeg2 = Publisher::ffmpeg(&server.publish_url(STREAM), FfmpegOpts::default());
    let resumed = wait_step(&tool, "resumed");
    println!("resumed: {resumed}");
    finish(&mut tool, "watch page");
}

#[test]
fn watch_page_chat_follows_the_contract() {
    let _serial = serial();
    let server = Server::start("");
    let mut tool = pages(&server, "chat", &["--stream", STREAM]);
    finish(&mut tool, "chat panel");
}

#[test]
fn embed_page_as_obs_browser_source_and_in_an_iframe() {
    let _serial = serial();
    let server = Server::start("");
    let _ffmpeg = Publisher::ffmpeg(&server.publish_url(STREAM), FfmpegOpts::default());
    server.wait_live(STREAM, LIVE_TIMEOUT);
    let mut tool = pages(&server, "embed", &["--stream", STREAM]);
    finish(&mut tool, "embed page");
}

#[test]
fn multiview_four_slot_layout_with_four_publishers() {
    let _serial = serial();
    let slots: Vec<(String, String)> = (1..=4)
        .map(|i| (format!("slot-{i}"), random_hex()))
        .collect();
    let server = Server::start_with(ServerOpts {
        streams: slots.clone(),
        ..ServerOpts::default()
    });
    let mut tool = pages(&server, "multiview", &["--layout", "four-player"]);
    // Every slot waits for its stream: publish only once the page is up.
    wait_step(&tool, "slots_ready");
    let mut publishers: Vec<Publisher> = slots
        .iter()
        .map(|(name, _)| Publisher::ffmpeg(&server.publish_url(name), small()))
        .collect();
    let all = wait_step(&tool, "all_playing");
    println!("slot rectangles: {}", all["rects"]);
    // slot-2's publisher leaves and comes back; the slot recovers by itself.
    publishers[1].stop(Duration::from_secs(10));
    wait_step(&tool, "slot_offline");
    publishers[1] = Publisher::ffmpeg(&server.publish_url("slot-2"), small());
    wait_step(&tool, "slot_recovered");
    finish(&mut tool, "multiview");
}

#[test]
fn widget_handshake_theme_and_openid_for_private_streams() {
    let _serial = serial();
    let server = Server::start("");
    let _ffmpeg = Publisher::ffmpeg(&server.publish_url(STREAM), small());
    server.wait_live(STREAM, LIVE_TIMEOUT);
    let mut tool = pages(&server, "widget", &["--stream", STREAM]);
    let r = finish(&mut tool, "widget");
    for run in r["runs"].as_array().unwrap() {
        println!(
            "widget waitForIframeLoad={} access={}: openid asked {} time(s), WHEP Authorization {}",
            run["wait"], run["access"], run["openid_asked"], run["whep_auth"]
        );
    }
}

/// The page publishes the fake camera over WHIP (`POST /whip/{stream}`) and a
/// watch page plays it.
#[test]
fn publish_page_goes_live_over_whip_and_a_watch_page_plays_it() {
    let _serial = serial();
    let server = Server::start("");
    let key = server.key(STREAM).to_string();
    let mut tool = pages(
        &server,
        "publish",
        &["--stream", STREAM, "--key", &key, "--expect-whip"],
    );
    finish(&mut tool, "publish over WHIP");
}

#[test]
fn watch_page_falls_back_to_hls_without_webrtc() {
    let _serial = serial();
    // roomcast's own LL-HLS: the page without WebRTC plays /hls/t1/index.m3u8.
    let server = Server::start("");
    let _ffmpeg = Publisher::ffmpeg(&server.publish_url(STREAM), small());
    server.wait_live(STREAM, LIVE_TIMEOUT);
    let mut tool = pages(&server, "hls", &["--stream", STREAM]);
    let r = finish(&mut tool, "HLS fallback");
    println!(
        "HLS fallback latency: {}; without HLS the page says: {}",
        r["latency"], r["without_playlist"]
    );
}

#[test]
fn index_lists_live_public_streams() {
    let _serial = serial();
    let server = Server::start_with(with_title("Test One"));
    let _ffmpeg = Publisher::ffmpeg(&server.publish_url(STREAM), small());
    server.wait_live(STREAM, LIVE_TIMEOUT);
    let mut tool = pages(&server, "index", &["--live", STREAM, "--offline", STREAM2]);
    let r = finish(&mut tool, "index");
    assert_eq!(r["cards"][0]["title"], "Test One", "{r}");
}

/// ICE that cannot succeed: the server advertises only a TEST-NET address
/// (192.0.2.1, RFC 5737) for UDP and TCP, so no candidate pair ever works. The
/// watch page gives up on WebRTC before its first frame and plays LL-HLS within
/// 12 s of opening, says why, and the viewer count does not flap.
#[test]
fn watch_page_falls_back_to_hls_when_ice_cannot_succeed() {
    let _serial = serial();
    let server = Server::start_with(ServerOpts {
        webrtc_extra: "public_ips = [\"192.0.2.1\"]\n".to_string(),
        ..ServerOpts::default()
    });
    let _ffmpeg = Publisher::ffmpeg(&server.publish_url(STREAM), small());
    server.wait_live(STREAM, LIVE_TIMEOUT);
    let mut tool = pages(&server, "ice-fail", &["--stream", STREAM, "--within", "12"]);
    let r = finish(&mut tool, "ICE failure fallback");
    println!(
        "LL-HLS after {} ms, label {}, viewer counts shown {}",
        r["hls_after_ms"], r["label"], r["viewers"]
    );
}

/// VP9 and AV1 over LL-HLS in Chromium: Chromium's WHIP client publishes each
/// (fake camera, 640x360), and the watch page in a Chromium without WebRTC
/// plays the stream's LL-HLS (vp09 / av01 in fMP4, through hls.js and MSE)
/// at 640x360, with no console error. Where MSE refuses the codec (made so
/// in the page: isTypeSupported false, addSourceBuffer throwing), the page
/// says this browser cannot play the stream's video format and stays so.
#[test]
fn watch_page_plays_vp9_and_av1_over_hls() {
    let _serial = serial();
    let server = Server::start("");
    let base = server.base_url();
    for (codec, stream, fourcc) in [("VP9", STREAM, "vp09"), ("AV1", STREAM2, "av01")] {
        let key = server.key(stream).to_string();
        let mut publisher =
            common::publishers::chromium_publisher(&base, stream, Some(&key), Some(codec), None);
        let sample = publisher.wait_for(&format!("{codec} frames"), MEDIA_TIMEOUT, |v| {
            v["type"] == "sample" && v["video"]["framesEncoded"].as_u64().unwrap_or(0) > 10
        });
        assert_eq!(
            sample["video"]["codec"],
            format!("video/{codec}"),
            "{sample}"
        );
        server.wait_live(stream, LIVE_TIMEOUT);
        let mut tool = pages(
            &server,
            "hls",
            &["--stream", stream, "--size", "640x360", "--only-play"],
        );
        let r = finish(&mut tool, &format!("{codec} over LL-HLS"));
        println!("{codec} over LL-HLS: {} latency {}", r["hls"], r["latency"]);
        // A browser whose MSE lacks the codec gets the plain sentence, once.
        let mut tool = pages(
            &server,
            "hls-codec",
            &["--stream", stream, "--refuse", fourcc],
        );
        let r = finish(&mut tool, &format!("{codec} refused by MSE"));
        println!("{codec} refused by MSE: {}", r["status"]);
        publisher.stop(MEDIA_TIMEOUT);
    }
}

/// The server advertising only 127.0.0.2 for UDP, where the test's relay
/// (`common::impair`, no impairment) listens and forwards to it: the test
/// can cut the viewer's UDP path while its server session lives on. (The
/// TCP candidate names 127.0.0.2 too, where nothing listens.)
fn behind_relay() -> (Server, ImpairedRelay) {
    let server = Server::start_with(impair::advertising_relay());
    let relay = impair::in_front_of(&server, Impairment::CLEAR);
    (server, relay)
}

/// The watch page plays through the relay; the test black-holes its UDP path
/// until the player has seen the loss and sent its ICE restart PATCH, then
/// restores it. The player restarts ICE on the same PeerConnection (the
/// server logs the restart of the one session it negotiated; no second WHEP
/// POST) and frames keep being decoded.
#[test]
fn watch_page_restarts_ice_after_a_network_cut() {
    let _serial = serial();
    let started = Instant::now();
    let (server, relay) = behind_relay();
    let _ffmpeg = Publisher::ffmpeg(&server.publish_url(STREAM), small());
    server.wait_live(STREAM, LIVE_TIMEOUT);
    let mut tool = pages(&server, "ice-restart", &["--stream", STREAM]);
    wait_step(&tool, "playing");
    relay.black_hole(true);
    let cut = Instant::now();
    let restart = wait_step(&tool, "restart_started");
    relay.black_hole(false);
    println!(
        "PATCH sent {:.1?} after the cut (connection states {}); relay: {}",
        cut.elapsed(),
        restart["states"],
        relay.summary()
    );
    let r = finish(&mut tool, "ICE restart after a network cut");
    println!(
        "icerestart {}; a new frame {} ms after the PATCH was sent; 60 more frames {} ms after the cut",
        r["restart"], r["frame_after_patch_ms"], r["resumed_after_ms"]
    );
    server.wait_whep_restart_of_the_only_session();
    println!("run time {:.1?}", started.elapsed());
}

/// A publisher that stalls with its connection open (ffmpeg stopped for
/// 13 s or so) also leaves the path quiet: the player restarts ICE once, the
/// restart is done on the server's STUN answers alone (no media yet), the
/// page says it waits for the stream, and the same PeerConnection decodes on.
/// A quiet stream costs one PATCH, never a new session. Chromium asks for a
/// keyframe every few seconds meanwhile; the server must not answer with the
/// cached GOP (the viewer would see the last second loop, and each loop would
/// look like media to the path watch and cost another PATCH).
#[test]
fn watch_page_restarts_ice_once_while_the_publisher_stalls() {
    let _serial = serial();
    // The relay stays clear: only the publisher stops.
    let (server, _relay) = behind_relay();
    let ffmpeg = Publisher::ffmpeg(&server.publish_url(STREAM), small());
    server.wait_live(STREAM, LIVE_TIMEOUT);
    let mut tool = pages(&server, "ice-restart", &["--stream", STREAM, "--stall"]);
    wait_step(&tool, "playing");
    ffmpeg.pause(true);
    let paused = Instant::now();
    let done = wait_step(&tool, "restart_done");
    println!(
        "the restart was done {:.1?} after ffmpeg stopped, without media: {}",
        paused.elapsed(),
        done["restart"]
    );
    // The stall goes on past the player's 10 s frame-stall check (a
    // fault's length, not a wait for a condition): a new session would
    // bring nothing the publisher does not send.
    std::thread::sleep(Duration::from_secs(11));
    ffmpeg.pause(false);
    let r = finish(&mut tool, "ICE restart while the publisher stalls");
    println!("counts {}; states {}", r["counts"], r["states"]);
    assert_eq!(
        server.whep_negotiated().len(),
        1,
        "WHEP sessions negotiated"
    );
}

/// As above, but the test also ends the session on the server (DELETE on its
/// Location) while the path is cut: the player's restart PATCH gets 404 and
/// it falls back at once to a new WHEP session, which plays.
#[test]
fn watch_page_posts_again_when_its_session_is_gone() {
    let _serial = serial();
    let started = Instant::now();
    let (server, relay) = behind_relay();
    let _ffmpeg = Publisher::ffmpeg(&server.publish_url(STREAM), small());
    server.wait_live(STREAM, LIVE_TIMEOUT);
    let mut tool = pages(&server, "ice-restart", &["--stream", STREAM, "--gone"]);
    let playing = wait_step(&tool, "playing");
    relay.black_hole(true);
    let resource = playing["resource"]
        .as_str()
        .expect("the session's Location");
    let deleted = common::http::request("DELETE", resource, &[], None).expect("DELETE");
    assert_eq!(deleted.status, 200, "DELETE {resource}");
    let restart = wait_step(&tool, "restart_started");
    relay.black_hole(false);
    println!(
        "PATCH sent after {} ms (connection states {})",
        restart["after_ms"], restart["states"]
    );
    let r = finish(&mut tool, "a new session after the old one was deleted");
    println!(
        "icerestart {}; the new session's 30th frame {} ms after the cut",
        r["restart"], r["resumed_after_ms"]
    );
    let posts = server.whep_negotiated();
    assert_eq!(posts.len(), 2, "WHEP sessions negotiated: {posts:?}");
    assert!(
        !server
            .log_lines()
            .iter()
            .any(|l| l.contains("WHEP viewer restarted ICE")),
        "a deleted session restarted ICE"
    );
    println!("run time {:.1?}", started.elapsed());
}
