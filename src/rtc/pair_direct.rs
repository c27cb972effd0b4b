//! The direct path (`direct`) through the in-memory `Pair`: a real str0m
//! client decrypts what the viewer writes with roomcast's own SRTP, accepts
//! its sender reports, and gets its NACKs answered from the shared frames.
//! (The `pair` tests run on both paths: `on_both_paths`.)

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use str0m::crypto::dtls::{KeyingMaterial, SrtpProfile};
use str0m::media::MediaKind;

use super::pair::{Pair, PairOpts};
use super::srtp::{MasterKey, Profile};
use crate::hub::Kind;

/// How many times the client got frame `n`'s first packet.
fn arrivals(p: &Pair, n: u16) -> usize {
    p.frames_got().iter().filter(|f| **f == n).count()
}

/// A video RTP datagram (SRTP: version 2, and large: our test video packets).
fn is_video(d: &[u8]) -> bool {
    d.len() > 500 && d[0] & 0xc0 == 0x80
}

#[test]
fn a_joining_viewer_gets_the_same_media_on_either_path() {
    let mut seen = Vec::new();
    for direct in [false, true] {
        let mut p = Pair::new(PairOpts {
            direct,
            ..Default::default()
        });
        let gop = p.push_gop(4);
        p.run_until(Duration::from_secs(5), |p| {
            p.frames_got().len() >= gop.len()
        });
        assert_eq!(p.viewer.is_direct(), direct);
        let live = p.push(false);
        assert_eq!(p.frames_got().last(), Some(&live));
        assert!(
            p.got.windows(2).all(|w| w[1].seq == w[0].seq + 1),
            "one sequence from the replay into the live frames"
        );
        assert!(p.audio_packets > 0);
        seen.push((p.frames_got(), p.got.len()));
    }
    assert_eq!(seen[0], seen[1]);
}

/// DTLS settles on AEAD_AES_256_GCM between two str0m peers; the others are
/// installed on both sides with str0m's test hook, then media, reports and
/// NACKs go both ways in that profile.
#[test]
fn the_client_decrypts_every_profile() {
    for (profile, dtls) in [
        (Profile::Aes128CmSha1_80, SrtpProfile::AES128_CM_SHA1_80),
        (Profile::AeadAes128Gcm, SrtpProfile::AEAD_AES_128_GCM),
        (Profile::AeadAes256Gcm, SrtpProfile::AEAD_AES_256_GCM),
    ] {
        let mut p = Pair::connected(PairOpts::default());
        p.push_gop(1);
        assert!(p.viewer.is_direct());
        let mat: Vec<u8> = (0..profile.keying_material_len())
            .map(|i| (i * 37 + 11) as u8)
            .collect();
        // The client is the DTLS client (active): the server sends with the
        // material's second key and salt.
        p.client
            ._set_srtp_keys(KeyingMaterial::new(&mat), dtls, true);
        p.viewer
            .rtc
            ._set_srtp_keys(KeyingMaterial::new(&mat), dtls, false);
        p.viewer
            .use_direct_key(MasterKey::from_keying_material(profile, &mat, false).unwrap());

        let (got, audio, reports) = (p.got.len(), p.audio_packets, p.sender_reports.len());
        let key = p.push(true);
        let delta = p.push(false);
        assert!(
            p.frames_got().ends_with(&[key, delta]),
            "{profile:?}: video decrypted"
        );
        assert_eq!(p.got.len(), got + 6);
        assert!(p.audio_packets >= audio + 2, "{profile:?}: audio decrypted");
        p.advance(Duration::from_millis(2100));
        assert!(
            p.sender_reports.len() > reports,
            "{profile:?}: SRTCP accepted"
        );

        let mut video = 0;
        p.lose = Box::new(move |d| {
            video += usize::from(is_video(d));
            is_video(d) && video == 2
        });
        let f = p.push(false);
        let has = |p: &Pair| p.got.iter().any(|g| g.frame == f && g.packet == 1);
        assert!(!has(&p));
        p.run_until(Duration::from_millis(500), has);
        assert_eq!(arrivals(&p, f), 1, "{profile:?}: repaired on NACK");
    }
}

#[test]
fn the_client_accepts_our_sender_reports_with_what_was_sent() {
    let mut p = Pair::connected(PairOpts::default());
    assert!(p.viewer.is_direct());
    for i in 0..30 {
        p.push(i == 0);
        p.advance(Duration::from_millis(33));
    }
    p.advance(Duration::from_millis(1100));
    // The latest report per track.
    let mut last = HashMap::new();
    let mut last_feedback = HashMap::new();
    for f in &p.sender_reports {
        last.insert(f.mid, f.sender_info);
        last_feedback.insert(f.mid, *f);
    }
    assert_eq!(last.len(), 2, "video and audio: {:?}", p.sender_reports);
    let counts: Vec<u32> = last.values().map(|i| i.sender_packet_count).collect();
    // Nothing was lost: each counts what the client got of its track
    // (the join's replay included).
    assert!(counts.contains(&(p.got.len() as u32)), "{counts:?}");
    assert!(counts.contains(&(p.audio_packets as u32)), "{counts:?}");
    // Each report's NTP time is the pair's wall clock when it was sent (no
    // delay in the pair), and its RTP time the last frame's advanced by the
    // time since that frame's wallclock, in its track's clock.
    let gop = p.stream.gop_snapshot();
    for f in last_feedback.values() {
        let kind = p.client.media(f.mid).expect("the report's media").kind();
        let (frame_kind, rate) = match kind {
            MediaKind::Video => (Kind::Video, 90_000),
            MediaKind::Audio => (Kind::Audio, 48_000),
        };
        let now = p.wall_at(f.received_at);
        let ntp = f.sender_info.ntp_time;
        let off = ntp
            .duration_since(now)
            .or_else(|e| Ok::<_, ()>(e.duration()))
            .unwrap();
        // Exact but for the NTP fraction's rounding: the viewer's clock
        // anchor is the pair's.
        assert!(off < Duration::from_millis(1), "{kind:?}: NTP {off:?} off");
        let frame = gop
            .iter()
            .rev()
            .find(|fr| fr.kind == frame_kind)
            .expect("a frame of the track");
        let elapsed = f.received_at.saturating_duration_since(frame.wallclock);
        let ticks = (elapsed.as_micros() * rate / 1_000_000) as u32;
        let expected = frame.rtp_time.wrapping_add(ticks);
        let got = f.sender_info.rtp_time.numer() as u32;
        let diff = got.wrapping_sub(expected) as i32;
        // A millisecond of rounding.
        assert!(
            diff.unsigned_abs() <= rate as u32 / 1000,
            "{kind:?}: RTP time {got}, expected {expected} ({elapsed:?} after the last frame)"
        );
    }
    // Reports keep coming, about one a second per track.
    let n = p.sender_reports.len();
    p.advance(Duration::from_secs(3));
    let more = p.sender_reports.len() - n;
    assert!((4..=8).contains(&more), "{more} reports in 3 s");
}

/// While media flows, a viewer's reports and stats never ask the shard for
/// a wake-up of their own: each waits for the next frame's (`rtc::due`).
/// With exact timers the same viewer would wake the shard between frames
/// about twice a second (fewer when timers fall together: the frames'
/// wall clock, which our sender reports follow, is the real one, not the
/// pair's). The reports still go out about once a second per track.
#[test]
fn a_live_viewers_reports_ride_the_frames_wake_ups() {
    const FRAME: Duration = Duration::from_millis(33);
    let mut p = Pair::connected(PairOpts::default());
    p.push(true);
    // Past the join's replay, which paces itself with exact timers.
    p.advance(Duration::from_millis(500));
    let reports = p.sender_reports.len();
    let (mut own_wakes, mut exact_wakes) = (0, 0);
    for _ in 0..180 {
        p.push(false);
        // A shard sleeps until the next frame or the viewer's `by`.
        let next_frame = p.now + FRAME;
        let due = p.viewer.timers();
        own_wakes += usize::from(due.by < next_frame);
        exact_wakes += usize::from(due.at < next_frame);
        p.advance(FRAME);
    }
    assert_eq!(own_wakes, 0, "wake-ups asked for between frames");
    assert!(
        exact_wakes >= 4,
        "{exact_wakes}: exact timers would wake the shard"
    );
    let more = p.sender_reports.len() - reports;
    assert!((9..=15).contains(&more), "{more} reports in 6 s");
}

/// A replayed GOP's packets are old frames: their retransmission comes from
/// the same shared frames as live ones, with the replay's RTP times.
#[test]
fn a_packet_lost_from_a_replay_is_repaired_from_the_shared_frames() {
    let mut p = Pair::new(PairOpts::default());
    let gop = p.push_gop(4);
    p.run_until(Duration::from_secs(5), |p| {
        p.frames_got().len() >= gop.len()
    });
    assert!(p.viewer.is_direct());
    let key = gop[0];
    let before = p.got.len();
    // The keyframe's second packet in the replay a PLI gets.
    let mut video = 0;
    p.lose = Box::new(move |d| {
        video += usize::from(is_video(d));
        is_video(d) && video == 2
    });
    p.request_keyframe();
    let again = |p: &Pair| {
        p.got[before..]
            .iter()
            .any(|g| g.frame == key && g.packet == 1)
    };
    p.run_until(Duration::from_millis(500), again);
    p.advance(Duration::from_millis(300));
    assert_eq!(arrivals(&p, key), 2, "a repair, not another replay");
    let replayed = &p.got[before..];
    assert_eq!(replayed.len(), gop.len() * 3, "the whole GOP");
}

/// Without an RTX payload type a resend could only reuse the packet's own
/// (SSRC, index) with another header: an AES-GCM nonce twice. A NACK then
/// gets nothing, as from str0m, and no index goes out twice.
#[test]
fn without_rtx_a_nack_gets_no_resend_and_no_index_is_sent_twice() {
    let mut p = Pair::connected(PairOpts {
        rtx: false,
        ..Default::default()
    });
    p.push_gop(1);
    assert!(p.viewer.is_direct());
    // str0m would not NACK without an RTX SSRC; this client does.
    let ssrc = p.video_ssrc.expect("video received");
    p.client
        .direct_api()
        .stream_rx(&ssrc)
        .expect("the client's video stream")
        .suppress_nack(false);
    let sent = Rc::new(RefCell::new(HashMap::<(u32, u16), usize>::new()));
    let seen = sent.clone();
    let mut video = 0;
    p.lose = Box::new(move |d| {
        // RTP, not RTCP (RFC 5761: packet types 192..=223 are RTCP).
        if d.len() >= 12 && d[0] & 0xc0 == 0x80 && !(192..=223).contains(&d[1]) {
            let ssrc = u32::from_be_bytes([d[8], d[9], d[10], d[11]]);
            let seq = u16::from_be_bytes([d[2], d[3]]);
            *seen.borrow_mut().entry((ssrc, seq)).or_default() += 1;
        }
        video += usize::from(is_video(d));
        is_video(d) && video == 2
    });
    let f = p.push(false);
    p.push(false);
    p.advance(Duration::from_millis(500));
    assert!(p.viewer.direct_nacked() > 0, "the client NACKed");
    assert!(
        !p.got.iter().any(|g| g.frame == f && g.packet == 1),
        "no resend"
    );
    let sent = sent.borrow();
    assert!(sent.len() > 6, "{sent:?}");
    assert!(sent.values().all(|n| *n == 1), "an index twice: {sent:?}");
}

/// The SRTP index's rollover: video, audio and RTX numbered from 0xfff0
/// cross 65535 and the client still decrypts them all (its rollover
/// counter follows ours), lost packets repaired over RTX included.
#[test]
fn the_client_decrypts_across_the_sequence_number_rollover() {
    let mut p = Pair::connected(PairOpts::default());
    assert!(p.viewer.is_direct());
    p.viewer.start_seq_at(0xfff0);
    let (got, audio) = (p.got.len(), p.audio_packets);
    // The second packet of every frame is lost once: 20 resends.
    let mut video = 0;
    p.lose = Box::new(move |d| {
        video += usize::from(is_video(d));
        is_video(d) && video % 3 == 2 && video <= 60
    });
    let frames: Vec<u16> = (0..20).map(|i| p.push(i == 0)).collect();
    p.run_until(Duration::from_secs(1), |p| p.got.len() >= got + 60);
    let mut seqs: Vec<u64> = p.got[got..].iter().map(|g| g.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0xfff0..0xfff0 + 60).collect::<Vec<u64>>());
    for f in frames {
        assert_eq!(arrivals(&p, f), 1);
    }
    assert_eq!(p.audio_packets, audio + 20, "audio across 65535 too");
}
