//! WHIP/WHEP attacks: a publisher whose frame never ends, offers with tens of
//! thousands of lines, DELETE/PATCH (trickle and ICE restart) on sessions
//! without their secret, malformed, oversized or stale ICE restarts, a
//! flood of unauthenticated datagrams at the shared UDP port, and ICE-TCP
//! viewers that stop reading.

use std::time::{Duration, Instant};

use crate::common::rtc_client::{self, Outgoing};
use crate::common::*;
use crate::fixture::*;

const TRICKLE: &str = "application/trickle-ice-sdpfrag";

/// PATCH with a harmless fragment: 204 while the session exists (with proof).
fn patch(url: &str, bearer: Option<&str>) -> HttpResponse {
    let auth = bearer.map(|k| format!("Bearer {k}"));
    let mut h = vec![("Content-Type", TRICKLE)];
    if let Some(a) = &auth {
        h.push(("Authorization", a.as_str()));
    }
    http::request("PATCH", url, &h, Some(b"a=end-of-candidates\r\n"))
        .unwrap_or_else(|e| panic!("PATCH {url}: {e}"))
}

/// An ICE restart's fragment (new credentials), as a WHEP client PATCHes it.
const RESTART: &[u8] = b"a=ice-ufrag:Xy12\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n";

/// What a bad PATCH is, its headers, its body and the status it gets.
type BadPatch<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [u8], u16);

fn patch_with(url: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
    http::request("PATCH", url, headers, Some(body)).unwrap_or_else(|e| panic!("PATCH {url}: {e}"))
}

fn delete(url: &str, bearer: Option<&str>) -> HttpResponse {
    let auth = bearer.map(|k| format!("Bearer {k}"));
    let mut h = vec![];
    if let Some(a) = &auth {
        h.push(("Authorization", a.as_str()));
    }
    http::request("DELETE", url, &h, None).unwrap_or_else(|e| panic!("DELETE {url}: {e}"))
}

/// A refusal: 4xx with a JSON `{error, code}`.
fn assert_refused(r: &HttpResponse, what: &str) {
    assert!(
        (400..500).contains(&r.status),
        "{what}: expected a 4xx refusal, got {} {:?}",
        r.status,
        truncate(&r.text(), 300)
    );
    assert_json_error(r, r.status, what);
}

/// A WHIP publisher (str0m) on t2 sends one H.264 IDR frame that never ends
/// (FU-A fragments, one timestamp, no marker) at 2 MB/s (faster loses
/// packets on loopback, and a loss ends the frame): the server drops it
/// (`limits.max_frame_bytes`) well before it sent 60 MB, and its memory
/// comes back.
#[test]
fn whip_frame_that_never_ends_is_dropped() {
    // A 2 MiB frame cap (default 8 MiB) drops the attacker within a second.
    let mut f = Fixture::start_with(ServerOpts {
        extra_toml: "[limits]\nmax_frame_bytes = 2097152\n".into(),
        ..ServerOpts::default()
    });
    let attack = "WHIP: one H.264 frame without a marker bit, forever";
    let m = f.mark(attack);
    let key = f.server.key(STREAM2).to_string();
    let max_bytes = 60_000_000;
    let mut s = rtc_client::start(
        &f.server.whip_url(STREAM2),
        Some(&key),
        true,
        Outgoing::EndlessFrame {
            packet: 1100,
            bytes_per_sec: 2_000_000,
            max_bytes,
        },
    )
    .unwrap_or_else(|r| panic!("[{attack}] WHIP POST answered {}: {}", r.status, r.text()));
    wait_until(
        &format!("[{attack}] the publisher to connect"),
        Duration::from_secs(20),
        || s.connected().then_some(()),
    );
    // Dropped: the session is gone (PATCH with the key says 404) or the
    // server stopped answering (str0m's ICE gives up).
    let t0 = Instant::now();
    let dropped = poll_until(Duration::from_secs(30), || {
        s.ended() || patch(&s.location, Some(&key)).status == 404
    });
    let sent = s.sent_bytes();
    println!(
        "[{attack}] {} MB written, {} MB on the wire; t2: {:?}",
        sent / 1_000_000,
        s.transmitted() / 1_000_000,
        f.server.api_stream(STREAM2)
    );
    let peak = m.rss.peak_kib();
    let why = s.stop();
    println!(
        "[{attack}] dropped={dropped} after {:.1?}, {} MB sent, client: {why}, peak RSS {peak} KiB (baseline {})",
        t0.elapsed(),
        sent / 1_000_000,
        f.baseline_kib
    );
    assert!(
        why != "panicked" && sent > 1_000_000,
        "[{attack}] the attacker did not run: {why}, {sent} bytes sent"
    );
    assert!(
        dropped && sent < max_bytes,
        "[{attack}] the server kept the publisher: {} MB sent, peak RSS {peak} KiB (baseline {} KiB)",
        sent / 1_000_000,
        f.baseline_kib
    );
    drop(s);
    f.after(m, 10);
}

/// An H.264 offer with `pts` payload types on the video m-line, `maps` H.264
/// and as many RTX rtpmaps, `fmtps` fmtp lines that match none of them
/// (what made the old summary rtpmap × rtx × fmtp) and `filler` other lines.
fn monster_offer(pts: usize, maps: usize, fmtps: usize, filler: usize) -> String {
    let base = offer_sdp(&["H264"]);
    let mut extra = String::with_capacity(maps * 50 + fmtps * 16 + filler * 6);
    for _ in 0..maps {
        extra.push_str("a=rtpmap:100 H264/90000\r\n");
        extra.push_str("a=rtpmap:101 rtx/90000\r\n");
    }
    for _ in 0..fmtps {
        extra.push_str("a=fmtp:102 x=1\r\n");
    }
    for i in 0..filler {
        extra.push_str(&format!("a=x{}\r\n", i % 10));
    }
    let pts: Vec<String> = (0..pts).map(|i| (96 + i % 4).to_string()).collect();
    let mut out = String::new();
    for line in base.split_inclusive("\r\n") {
        if let Some(rest) = line.strip_prefix("m=video 9 UDP/TLS/RTP/SAVPF ") {
            out.push_str("m=video 9 UDP/TLS/RTP/SAVPF ");
            out.push_str(rest.trim_end());
            out.push(' ');
            out.push_str(&pts.join(" "));
            out.push_str("\r\n");
        } else if line.starts_with("a=mid:0") {
            out.push_str(line);
            out.push_str(&extra);
        } else {
            out.push_str(line);
        }
    }
    out
}

/// Two offers: ~45 000 lines and 5 000 payload types in ~430 KB (within
/// the test's 1 MiB body limit) must be refused; ~2 600 lines and 500
/// payload types in under 64 KiB (within the SDP byte and line-length caps)
/// may be refused or answered. Either way within 1 s and 0.5 s of server CPU, for WHEP and for
/// WHIP with the key.
#[test]
fn offers_with_tens_of_thousands_of_lines_are_answered_fast() {
    let mut f = Fixture::start_with(big_body_opts());
    let key = f.server.key(STREAM2).to_string();
    for (size, offer) in [
        ("big", monster_offer(5_000, 2_500, 5_000, 35_000)),
        ("compact", monster_offer(500, 700, 1_200, 0)),
    ] {
        let lines = offer.lines().count();
        for (attack, url, bearer) in [
            (
                format!(
                    "WHEP: a {size} offer of {lines} lines, {} bytes",
                    offer.len()
                ),
                f.server.whep_url(STREAM),
                None,
            ),
            (
                format!("WHIP: a {size} offer of {lines} lines with the key"),
                f.server.whip_url(STREAM2),
                Some(format!("Bearer {key}")),
            ),
        ] {
            let m = f.mark(&attack);
            let mut h = vec![("Content-Type", "application/sdp")];
            if let Some(b) = &bearer {
                h.push(("Authorization", b.as_str()));
            }
            let cpu0 = cpu_time(f.pid());
            let t0 = Instant::now();
            let r = http::request_timeout(
                "POST",
                &url,
                &h,
                Some(offer.as_bytes()),
                Duration::from_secs(10),
            )
            .unwrap_or_else(|e| panic!("[{attack}] no answer within 10 s: {e}"));
            let took = t0.elapsed();
            let cpu = cpu_time(f.pid()).saturating_sub(cpu0);
            println!("[{attack}] {} in {took:?}, {cpu:?} server CPU", r.status);
            if size == "big" || r.status != 201 {
                assert_refused(&r, &attack);
            }
            assert!(
                took < Duration::from_secs(1) && cpu < Duration::from_millis(500),
                "[{attack}] answered only after {took:?} and {cpu:?} of server CPU"
            );
            if let Some(loc) = r.header("location") {
                // An answered offer: end that session again.
                let _ = http::request("DELETE", &f.server.url(loc), &[], None);
            }
            f.after(m, 5);
        }
    }
}

/// Without their secret, nobody ends or patches a session: counter-like ids
/// 1..=100 on WHEP and WHIP, near misses of the real ids and the real ids on
/// another stream or protocol. The watching viewer, a second WHEP viewer and
/// a WHIP publisher all carry on, and their owners can still end them.
#[test]
fn sessions_cannot_be_ended_or_patched_without_their_secret() {
    let mut f = Fixture::start();
    let key2 = f.server.key(STREAM2).to_string();
    let whep = rtc_client::start(&f.server.whep_url(STREAM), None, false, Outgoing::Nothing)
        .unwrap_or_else(|r| panic!("WHEP POST answered {}: {}", r.status, r.text()));
    let whip = rtc_client::start(
        &f.server.whip_url(STREAM2),
        Some(&key2),
        true,
        Outgoing::Nothing,
    )
    .unwrap_or_else(|r| panic!("WHIP POST answered {}: {}", r.status, r.text()));
    wait_until(
        "the str0m viewer and publisher to connect",
        Duration::from_secs(20),
        || (whep.connected() && whip.connected()).then_some(()),
    );
    println!(
        "WHEP session {}, WHIP session {}",
        whep.location, whip.location
    );

    let attack = "sessions: DELETE and PATCH on ids 1..=100 without a secret";
    let m = f.mark(attack);
    for n in 1..=100 {
        for (proto, stream) in [("whep", STREAM), ("whip", STREAM2), ("whip", STREAM)] {
            let url = f.server.url(&format!("/{proto}/{stream}/{n}"));
            assert_refused(&delete(&url, None), &format!("[{attack}] DELETE {url}"));
            assert_refused(&patch(&url, None), &format!("[{attack}] PATCH {url}"));
            let r = patch_with(
                &url,
                &[("Content-Type", TRICKLE), ("If-Match", "*")],
                RESTART,
            );
            assert_eq!(r.status, 404, "[{attack}] ICE restart on {url}");
            assert_refused(&r, &format!("[{attack}] ICE restart on {url}"));
        }
    }
    f.after(m, 10);

    let attack = "sessions: the real sessions without their proof";
    let m = f.mark(attack);
    // The proof may be the unguessable Location itself (or, for a publisher,
    // the key): near misses of both real ids, the ids on another stream or
    // protocol, and the neighbours of a numeric id are all refused.
    let mut guesses = Vec::new();
    for (proto, stream, location) in [
        ("whep", STREAM, &whep.location),
        ("whip", STREAM2, &whip.location),
    ] {
        let location = location
            .split_once('?')
            .map_or(location.as_str(), |(p, _)| p);
        let id = location.rsplit('/').next().unwrap().to_string();
        let mut near = id.clone();
        let last = near.pop().unwrap();
        near.push(if last == '0' { '1' } else { '0' });
        let other = if stream == STREAM { STREAM2 } else { STREAM };
        let other_proto = if proto == "whep" { "whip" } else { "whep" };
        guesses.push(f.server.url(&format!("/{proto}/{stream}/{near}")));
        guesses.push(
            f.server
                .url(&format!("/{proto}/{stream}/{}", &id[..id.len() - 1])),
        );
        guesses.push(f.server.url(&format!("/{proto}/{other}/{id}")));
        guesses.push(f.server.url(&format!("/{other_proto}/{stream}/{id}")));
        if let Ok(n) = id.parse::<u64>() {
            for k in n.saturating_sub(3)..n + 3 {
                if k != n {
                    guesses.push(f.server.url(&format!("/{proto}/{stream}/{k}")));
                }
            }
        }
    }
    for g in &guesses {
        assert_refused(&delete(g, None), &format!("[{attack}] DELETE {g}"));
        assert_refused(&patch(g, None), &format!("[{attack}] PATCH {g}"));
        let r = patch_with(g, &[("Content-Type", TRICKLE), ("If-Match", "*")], RESTART);
        assert_eq!(r.status, 404, "[{attack}] ICE restart on {g}");
        assert_refused(&r, &format!("[{attack}] ICE restart on {g}"));
    }
    f.after(m, 10);

    let attack = "sessions: bad ICE restart PATCHes on the real sessions";
    let m = f.mark(attack);
    let first_etag = whep.answer.header("etag").expect("a WHEP ETag").to_string();
    let oversized = [b'a'; 16 * 1024 + 1];
    let frag = [("Content-Type", TRICKLE)];
    let cases: [BadPatch; 8] = [
        ("no content type", &[], RESTART, 415),
        (
            "SDP, not a fragment",
            &[("Content-Type", "application/sdp")],
            RESTART,
            415,
        ),
        ("a body over 16 KiB", &frag, &oversized, 413),
        ("not text", &frag, b"\xff\xfe\x00", 400),
        ("not SDP", &frag, b"GET / HTTP/1.1\r\n", 400),
        ("a ufrag without a pwd", &frag, b"a=ice-ufrag:Xy12\r\n", 400),
        (
            "a ufrag of forbidden characters",
            &frag,
            b"a=ice-ufrag:a;b c\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n",
            400,
        ),
        (
            "a stale If-Match",
            &[("Content-Type", TRICKLE), ("If-Match", "\"0000\"")],
            RESTART,
            412,
        ),
    ];
    for (what, headers, body, status) in cases {
        let r = patch_with(&whep.location, headers, body);
        assert_eq!(r.status, status, "[{attack}] {what}: {}", r.text());
        assert_refused(&r, &format!("[{attack}] {what}"));
    }
    let r = patch_with(
        &whip.location,
        &[
            ("Content-Type", TRICKLE),
            ("Authorization", &format!("Bearer {key2}")),
        ],
        RESTART,
    );
    assert_eq!(r.status, 405, "[{attack}] a WHIP ICE restart: {}", r.text());
    assert_refused(&r, &format!("[{attack}] a WHIP ICE restart"));
    f.after(m, 10);
    assert!(
        !whep.ended() && !whip.ended(),
        "a session ended under {attack}"
    );

    // The owner restarts ICE from a new port: video goes on there, without
    // a new handshake, and the first ETag is stale from then on.
    let before = whep.video_packets();
    assert_eq!(whep.restart_ice(), 200, "the owner's ICE restart");
    wait_until(
        "video on the restarted path",
        Duration::from_secs(10),
        || (whep.video_packets() > before + 100).then_some(()),
    );
    assert!(!whep.ended());
    let r = patch_with(
        &whep.location,
        &[("Content-Type", TRICKLE), ("If-Match", &first_etag)],
        b"a=end-of-candidates\r\n",
    );
    assert_eq!(
        r.status,
        412,
        "the ETag from before the restart: {}",
        r.text()
    );

    // Both sessions are still there for their owners, who can end them.
    assert!(
        !whep.ended() && !whip.ended(),
        "a session ended under the attack"
    );
    assert_eq!(
        patch(&whip.location, Some(&key2)).status,
        204,
        "WHIP owner's PATCH"
    );
    assert_eq!(
        patch(&whep.location, None).status,
        204,
        "WHEP owner's PATCH"
    );
    assert_eq!(
        delete(&whip.location, Some(&key2)).status,
        200,
        "WHIP owner's DELETE"
    );
    assert_eq!(
        delete(&whep.location, None).status,
        200,
        "WHEP owner's DELETE"
    );
    // An ended session is not restarted.
    let r = patch_with(
        &whep.location,
        &[("Content-Type", TRICKLE), ("If-Match", "*")],
        RESTART,
    );
    assert_eq!(r.status, 404, "an ICE restart after DELETE: {}", r.text());
}

/// What an outsider can aim at the one UDP port every viewer shares without
/// knowing any session's ICE password: datagram `i` of the flood, from a
/// small deterministic generator. Random bytes of every length (some over
/// the 2 048-byte datagram cap), STUN binding requests for made-up users
/// with a forged MESSAGE-INTEGRITY, and RTP, RTCP and DTLS look-alikes.
fn flood_datagram(i: u64, buf: &mut Vec<u8>) {
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    buf.clear();
    let len = match i % 16 {
        0 => 2049 + (next() % 7000) as usize,
        _ => 1 + (next() % 1400) as usize,
    };
    match i % 5 {
        // STUN binding request, USERNAME "<ufrag>:<ufrag>", forged integrity.
        0 => {
            let user = format!("{:08x}:{:08x}", next() as u32, next() as u32);
            buf.extend_from_slice(&[0x00, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42]);
            buf.extend_from_slice(&next().to_be_bytes()[..8]);
            buf.extend_from_slice(&next().to_be_bytes()[..4]);
            buf.extend_from_slice(&[0x00, 0x06, 0x00, user.len() as u8]);
            buf.extend_from_slice(user.as_bytes());
            buf.extend_from_slice(&[0x00, 0x08, 0x00, 20]);
            buf.extend((0..20).map(|_| next() as u8));
            let body = (buf.len() - 20) as u16;
            buf[2..4].copy_from_slice(&body.to_be_bytes());
            return;
        }
        1 => buf.extend_from_slice(&[0x80, 0x60]), // RTP
        2 => buf.extend_from_slice(&[0x80, 0xc8]), // RTCP sender report
        3 => buf.extend_from_slice(&[0x16, 0xfe, 0xfd]), // DTLS handshake
        _ => {}
    }
    while buf.len() < len {
        buf.extend_from_slice(&next().to_le_bytes());
    }
    buf.truncate(len);
}

/// 100 000 unauthenticated datagrams in about 5 s from 64 source ports at
/// the shared UDP port, while the fixture's viewer plays: none is answered
/// (the port reflects nothing to a forged source), none routes anywhere, the
/// viewer keeps decoding and the server's memory comes back. Twice: read by
/// the receiver thread of a server with a worker per core, and by the lone
/// worker of a one-worker server itself, between writing the viewer's
/// frames.
#[test]
fn a_flood_of_unauthenticated_datagrams_is_dropped_unanswered() {
    for (workers, reader) in [
        ("", "the receiver thread"),
        ("workers = 1", "the lone worker"),
    ] {
        let f = Fixture::start_with(ServerOpts {
            webrtc_extra: workers.into(),
            ..ServerOpts::default()
        });
        flood_udp(
            f,
            &format!(
                "UDP read by {reader}: 100 000 forged STUN, RTP, RTCP, DTLS and random datagrams"
            ),
        );
    }
}

fn flood_udp(mut f: Fixture, attack: &str) {
    let target = f.server.webrtc_udp.expect("a webrtc-udp port");
    let m = f.mark(attack);
    let sockets: Vec<std::net::UdpSocket> = (0..64)
        .map(|_| {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
            s.set_nonblocking(true).expect("nonblocking");
            s
        })
        .collect();
    let total: u64 = 100_000;
    let per_tick = 200;
    let tick = Duration::from_millis(10);
    let start = Instant::now();
    let (mut sent, mut answers) = (0u64, 0u64);
    let mut buf = Vec::with_capacity(9000);
    let mut reply = [0u8; 2048];
    // Counts whatever the server sent back to any of the flood's sockets.
    let mut collect_answers = |answers: &mut u64| {
        for s in &sockets {
            while s.recv_from(&mut reply).is_ok() {
                *answers += 1;
            }
        }
    };
    let mut i = 0;
    while i < total {
        for _ in 0..per_tick {
            flood_datagram(i, &mut buf);
            // A full socket buffer (EAGAIN) just loses that one: count what left.
            if sockets[(i % 64) as usize].send_to(&buf, target).is_ok() {
                sent += 1;
            }
            i += 1;
        }
        collect_answers(&mut answers);
        // Paced by the clock: tick k of the flood starts k ticks after its start.
        let due = start + tick * (i / per_tick) as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    // Anything the server would send back arrives within a moment: look for
    // it for one more second, every 20 ms.
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        collect_answers(&mut answers);
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "[{attack}] {sent} datagrams sent in {:.1?}, {answers} answered",
        start.elapsed()
    );
    assert!(
        sent > total * 9 / 10,
        "[{attack}] the flood did not run: {sent} of {total} sent"
    );
    assert_eq!(
        answers, 0,
        "[{attack}] the server answered unauthenticated datagrams"
    );
    f.after(m, 10);
}

/// ICE-TCP viewers that complete ICE and DTLS, take their first video, then
/// never read again (a 4 KiB receive window): each may hold at most its
/// outbox's 1 MiB in the server beyond the kernel's socket buffers, is
/// skipped ahead to a keyframe at that bound, and slows no one (the
/// fixture's viewer keeps decoding). Unbounded, 16 of them would hold the
/// whole stream since they stalled, several MB each.
#[test]
fn ice_tcp_viewers_that_stop_reading_hold_a_bounded_amount() {
    let mut f = Fixture::start();
    let attack = "ICE-TCP: 16 viewers that stop reading";
    let skips = |f: &Fixture| f.server.metric("roomcast_webrtc_laggard_skips_total");
    let skipped_before = skips(&f);
    let m = f.mark(attack);
    let out = std::process::Command::new(example_bin("loadgen"))
        .args(["--whep", &f.server.whep_url(STREAM), "--tcp", "--stall"])
        .args(["--full", "0", "--max-loss", "100", "--steps", "16"])
        .args(["--step-secs", "8"])
        .output()
        .expect("run loadgen");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let step: serde_json::Value = stdout
        .lines()
        .find(|l| l.contains("\"step\""))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "[{attack}] no step from loadgen: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    println!("[{attack}] loadgen: {step}");
    assert_eq!(
        (step["connected"].as_u64(), step["failed"].as_u64()),
        (Some(16), Some(0)),
        "[{attack}] every stalling viewer connects over ICE-TCP first: {step}"
    );
    let skipped = skips(&f) - skipped_before;
    let peak = m.rss.peak_kib();
    println!(
        "[{attack}] {skipped} laggard skips; RSS peak {peak} KiB against a baseline of {} KiB",
        f.baseline_kib
    );
    assert!(
        skipped >= 16,
        "[{attack}] the stalled viewers were never skipped ahead ({skipped} skips)"
    );
    // 1 MiB of outbox each, and as much again for the rest of a session.
    assert!(
        peak <= f.baseline_kib + 16 * 2048,
        "[{attack}] RSS peaked at {peak} KiB, over 2 MiB per stalled viewer above {} KiB",
        f.baseline_kib
    );
    // Each of the 16 sessions logs its negotiation, connection and end (at
    // most 5 lines); a skip ahead is counted, never logged.
    f.after(m, 16 * 5 + 10);
}
