//! The surfaces added with recording, thumbnails, restreaming, OBS profiles
//! and parties (session 6), and the party view's feed: hostile ids, ranges,
//! bearers and bodies get a 4xx and cost the live stream nothing; WHIP key
//! guesses are logged at most once per interval.

use std::time::{Duration, Instant};

use crate::common::*;
use crate::fixture::*;

fn refused(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&[u8]>, what: &str) {
    let r = http::request(method, url, headers, body)
        .unwrap_or_else(|e| panic!("{what}: {method} {url}: {e}"));
    assert!(
        (400..500).contains(&r.status),
        "{what}: {method} {url}: expected a 4xx refusal, got {} {:?}",
        r.status,
        truncate(&r.text(), 300)
    );
}

#[test]
fn new_surfaces_refuse_hostile_requests() {
    // Two parties: a token of one must not open the other's feed.
    let mut f = Fixture::start_with(ServerOpts {
        extra_toml: format!(
            "[[parties]]\nname = \"ours\"\nkey = \"{PARTY_KEY}\"\n\n[[parties]]\nname = \"theirs\"\nkey = \"{PARTY_KEY}-b\"\n"
        ),
        ..ServerOpts::default()
    });
    let theirs = party_token(&f, "theirs", &format!("{PARTY_KEY}-b"));
    let attack = "recordings, thumbnails, restream, OBS profiles, parties: hostile requests";
    let m = f.mark(attack);
    let unknown = "0123456789abcdef0123456789abcdef";
    let long = "a".repeat(5000);
    let url = |p: &str| f.server.url(p);
    for _ in 0..20 {
        // Recordings: traversal, unknown and oversized ids, broken ranges.
        for path in [
            "/recordings/..%2F..%2Fetc%2Fpasswd/index.m3u8".to_string(),
            "/recordings/..%2F..%2Fetc%2Fpasswd.mp4".to_string(),
            format!("/recordings/{unknown}.mp4"),
            format!("/recordings/{unknown}/index.m3u8"),
            format!("/recordings/{unknown}/0.mp4"),
            format!("/recordings/{unknown}/replay.webm?part=999999999999"),
            format!("/recordings/{long}/index.m3u8"),
            format!("/api/v1/recordings/{unknown}"),
            format!("/api/v1/recordings/{unknown}/chat"),
            format!("/api/v1/streams/{long}/recordings"),
        ] {
            refused("GET", &url(&path), &[], None, attack);
        }
        for range in [
            "bytes=99999999999999999999-",
            "bytes=-0",
            "bytes=5-1",
            "bytes=a-b",
        ] {
            refused(
                "GET",
                &url(&format!("/recordings/{unknown}.mp4")),
                &[("Range", range)],
                None,
                attack,
            );
        }
        refused(
            "DELETE",
            &url(&format!("/api/v1/recordings/{unknown}")),
            &[],
            None,
            attack,
        );
        refused(
            "DELETE",
            &url(&format!("/api/v1/recordings/{unknown}")),
            &[("Authorization", "Bearer not-the-admin-token")],
            None,
            attack,
        );
        // Thumbnails of streams that are not there.
        refused(
            "GET",
            &url("/api/v1/streams/nosuch/thumbnail.jpg"),
            &[],
            None,
            attack,
        );
        refused(
            "GET",
            &url(&format!("/api/v1/streams/{long}/thumbnail.jpg")),
            &[],
            None,
            attack,
        );
        // OBS profiles: no key, a wrong key, made-up one-time links.
        let obs = format!("/api/v1/streams/{STREAM}/obs-profile");
        refused("GET", &url(&obs), &[], None, attack);
        refused(
            "GET",
            &url(&obs),
            &[("Authorization", "Bearer wrong")],
            None,
            attack,
        );
        refused("POST", &url(&format!("/obs/{unknown}")), &[], None, attack);
        refused("POST", &url(&format!("/obs/{long}")), &[], None, attack);
        // Restream destinations: no key, a wrong key, a body of 1 MiB.
        let dest = format!("/api/v1/streams/{STREAM}/restream/twitch");
        let body = format!(
            r#"{{"url":"rtmp://127.0.0.1:1/app","key":"{}"}}"#,
            "k".repeat(1 << 20)
        );
        refused(
            "PUT",
            &url(&dest),
            &[("Content-Type", "application/json")],
            Some(b"{}"),
            attack,
        );
        refused(
            "PUT",
            &url(&dest),
            &[
                ("Authorization", "Bearer wrong"),
                ("Content-Type", "application/json"),
            ],
            Some(body.as_bytes()),
            attack,
        );
        refused("DELETE", &url(&dest), &[], None, attack);
        // WHIP publishes with wrong keys: refused, and logged at most once
        // per interval (40 guesses here, 20 log lines allowed for the attack).
        for _ in 0..2 {
            refused(
                "POST",
                &url(&format!("/whip/{STREAM}")),
                &[
                    ("Authorization", "Bearer wrong-key-wrong-key"),
                    ("Content-Type", "application/sdp"),
                ],
                Some(b"v=0\r\n"),
                attack,
            );
        }
        // Parties that do not exist, with a made-up key.
        refused(
            "POST",
            &url("/api/v1/parties/nosuch/join"),
            &[("Content-Type", "application/json")],
            Some(br#"{"key":"guess","name":"x"}"#),
            attack,
        );
        // The party view's feed: no token, a made-up one, another party's
        // (as `?access=` and as a Bearer), for a standalone and a room party.
        let forged = "s1.9999999999.6576652d.00";
        for path in [
            "/api/v1/parties/ours/events".to_string(),
            format!("/api/v1/parties/ours/events?access={forged}"),
            format!("/api/v1/parties/ours/events?access={theirs}"),
            format!("/api/v1/parties/ours/events?access={long}"),
            format!("/api/v1/parties/nosuch/events?access={theirs}"),
            "/api/v1/rooms/!room:hs/party/events".to_string(),
            format!("/api/v1/rooms/!room:hs/party/events?access={theirs}"),
        ] {
            refused("GET", &url(&path), &[], None, attack);
        }
        let bearer = format!("Bearer {theirs}");
        refused(
            "GET",
            &url("/api/v1/parties/ours/events"),
            &[("Authorization", &bearer)],
            None,
            attack,
        );
    }
    // Tokens in a feed's query are not logged.
    assert!(
        !f.server.log_lines().iter().any(|l| l.contains(&theirs)),
        "a party token was logged"
    );
    f.after(m, 20);
}

/// Thumbnails are made on demand, and a first ask waits (bounded) for the
/// first picture: a crowd of anonymous asks at once must cost one decode,
/// each ask an answer within the wait, and the live stream nothing.
#[test]
fn a_crowd_asking_for_a_thumbnail_costs_one_decode() {
    let mut f = Fixture::start();
    let attack = "thumbnails: 300 concurrent first asks";
    let m = f.mark(attack);
    let made = |f: &Fixture| f.server.metric("roomcast_thumbnails_made_total");
    let before = made(&f);
    let url = f
        .server
        .url(&format!("/api/v1/streams/{STREAM}/thumbnail.jpg"));
    let answers: Vec<(u16, Duration)> = std::thread::scope(|s| {
        let asks: Vec<_> = (0..300)
            .map(|_| {
                s.spawn(|| {
                    let t = Instant::now();
                    let r = http::request_timeout("GET", &url, &[], None, Duration::from_secs(10))
                        .unwrap_or_else(|e| panic!("{attack}: no answer: {e}"));
                    (r.status, t.elapsed())
                })
            })
            .collect();
        asks.into_iter().map(|a| a.join().unwrap()).collect()
    });
    let mut by_status = std::collections::BTreeMap::new();
    for (status, _) in &answers {
        *by_status.entry(*status).or_insert(0) += 1;
    }
    println!("{attack}: answers by status {by_status:?}");
    // 200 with the picture, or a refusal (not yet, or the per-address
    // limits): never a hang or a server error.
    for (status, took) in &answers {
        assert!(
            matches!(status, 200 | 404 | 429 | 503),
            "{attack}: answered {status}"
        );
        assert!(
            *took < Duration::from_secs(6),
            "{attack}: an ask took {took:?}"
        );
    }
    assert!(
        answers.iter().any(|(s, _)| *s == 200),
        "{attack}: nobody got the picture: {answers:?}"
    );
    let decodes = made(&f) - before;
    assert!(decodes <= 1, "{attack}: {decodes} decodes for one crowd");
    f.after(m, 20);
}

const PARTY_KEY: &str = "a-long-party-key-for-attacks";

/// A participant's party token of `party`.
fn party_token(f: &Fixture, party: &str, key: &str) -> String {
    let body = serde_json::json!({"key": key, "display_name": "Mallory"}).to_string();
    let r = http::request(
        "POST",
        &f.server.url(&format!("/api/v1/parties/{party}/join")),
        &[("Content-Type", "application/json")],
        Some(body.as_bytes()),
    )
    .expect("join");
    assert_eq!(r.status, 201, "join {party}: {}", r.text());
    r.json().unwrap()["party_token"]
        .as_str()
        .unwrap()
        .to_string()
}
