//! A connected viewer's feedback on the direct path (src/rtc/direct.rs):
//! the RTCP any viewer may send once its DTLS is up, as str0m hands it over
//! after SRTCP (`Rtcp`, from str0m's own parser), into `DirectTx::on_rtcp`
//! (NACKs mapped back to the shared frames, the resend budget, receiver
//! reports ending the mid extension), between live frames, replays and
//! sender reports, written through `DirectTx::flush`/`handle_timeout` as
//! the viewer writes them.
//!
//! Checked on the way: every datagram is as long as its packet (header,
//! mid extension, RTX's original sequence number, payload, SRTP tag); the
//! media's sequence numbers run on by one and the RTX stream's too, each
//! on its own SSRC; resends never exceed the budget (the media of the last
//! second again, plus 16 KiB a second); the history stays within its bounds.
//!
//! Input: operations, each an op byte and its arguments:
//! - `0 n s`: a live video frame of `n % 40 + 1` packets of `s * 4 + 1` bytes
//!   (one 4-byte step smaller for every other packet), queued and flushed;
//! - `1 s`: a live audio frame of one packet;
//! - `2 len bytes…`: an RTCP packet of `len` bytes (fewer at the end), parsed
//!   by str0m, then flushed (its resends go out);
//! - `3 t`: the clock moves `t * 4` ms, due sender reports go out;
//! - `4 p f`: a replay begins (`replay_history(p * 16, f)`);
//! - `5`: the next live keyframe went out (`live_history`).
#![no_main]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use libfuzzer_sys::fuzz_target;
use roomcast::hub::{Frame, Kind};
use roomcast::rtc::direct::{DirectOut, DirectTx, Names, Route, Span, TrackTx};
use roomcast::rtc::srtp::{MasterKey, Profile};
use str0m::net::Protocol;
use str0m::rtp::rtcp::Rtcp;

const VIDEO_SSRC: u32 = 0x1111;
const RTX_SSRC: u32 = 0x2222;
const AUDIO_SSRC: u32 = 0x3333;
const MID_EXT: u8 = 3;
/// The live bounds at most while a replay is not under way (`HISTORY_PACKETS`
/// plus the largest frame this target sends), and a replay's.
const MAX_HISTORY: usize = 16 * 1024 + 40;

/// What the viewer's path was given: each datagram's plaintext RTP header
/// fields and its length.
#[derive(Default)]
struct Wire {
    datagrams: Vec<Vec<u8>>,
}

impl DirectOut for Wire {
    fn datagram(&mut self, _: &Route, len: usize, write: &mut dyn FnMut(&mut [u8])) -> bool {
        let mut b = vec![0u8; len];
        write(&mut b);
        self.datagrams.push(b);
        true
    }
}

/// What the target has seen go out, to check each datagram against.
struct Seen {
    video_seq: Option<u16>,
    rtx_seq: Option<u16>,
    media_bytes: u64,
    rtx_bytes: u64,
}

const TAG: usize = 16;

impl Seen {
    /// Checks a datagram: an RTP packet of ours (media or RTX), or an
    /// SRTCP sender report.
    fn check(&mut self, d: &[u8], sizes: &[usize]) {
        assert!(
            d.len() >= 12 + TAG,
            "a datagram shorter than a header: {}",
            d.len()
        );
        if d[1] == 200 {
            return; // a sender report (SRTCP)
        }
        assert_eq!(d[0] >> 6, 2, "RTP version");
        let seq = u16::from_be_bytes([d[2], d[3]]);
        let ssrc = u32::from_be_bytes([d[8], d[9], d[10], d[11]]);
        let ext = if d[0] & 0x10 != 0 {
            assert_eq!(&d[12..14], &[0xbe, 0xde], "one-byte extensions");
            let words = usize::from(u16::from_be_bytes([d[14], d[15]]));
            assert_eq!(d[16] >> 4, MID_EXT, "the mid extension's id");
            4 + words * 4
        } else {
            0
        };
        let payload = d.len() - 12 - ext - TAG;
        match ssrc {
            VIDEO_SSRC => {
                if let Some(prev) = self.video_seq {
                    assert_eq!(seq, prev.wrapping_add(1), "video sequence numbers run on");
                }
                self.video_seq = Some(seq);
                assert!(
                    sizes.contains(&payload),
                    "a video payload of {payload} bytes"
                );
                self.media_bytes += payload as u64;
            }
            RTX_SSRC => {
                if let Some(prev) = self.rtx_seq {
                    assert_eq!(seq, prev.wrapping_add(1), "RTX sequence numbers run on");
                }
                self.rtx_seq = Some(seq);
                assert_eq!(d[1] & 0x7f, 97, "RTX payload type");
                // The original sequence number (encrypted) comes first.
                assert!(
                    sizes.contains(&(payload - 2)),
                    "a resend of {payload} bytes"
                );
                self.rtx_bytes += payload as u64 - 2;
            }
            AUDIO_SSRC => {}
            other => panic!("a datagram on SSRC {other:#x}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let profile = Profile::AeadAes128Gcm;
    let material = vec![7u8; profile.keying_material_len()];
    let key = MasterKey::from_keying_material(profile, &material, false).expect("a key");
    let start = Instant::now();
    let names = Names {
        mid_ext: Some(MID_EXT),
        video_mid: "0",
        audio_mid: "1",
        cname: "fuzz",
    };
    let mut tx = DirectTx::new(&key, names, (start, SystemTime::now()));
    tx.video = Some(TrackTx::new(VIDEO_SSRC, 96, 90_000, Some((RTX_SSRC, 97))));
    tx.audio = Some(TrackTx::new(AUDIO_SSRC, 111, 48_000, None));
    let addr = |s: &str| s.parse::<SocketAddr>().expect("an address");
    tx.route = Some(Route {
        proto: Protocol::Udp,
        source: addr("127.0.0.1:40000"),
        destination: addr("127.0.0.1:50000"),
    });

    let mut now = start;
    let mut next_seq = 1000u64;
    let mut rtp_time = 0u32;
    let mut index = 0u64;
    let mut sizes: Vec<usize> = Vec::new();
    let mut wire = Wire::default();
    let mut seen = Seen {
        video_seq: None,
        rtx_seq: None,
        media_bytes: 0,
        rtx_bytes: 0,
    };
    let mut ops = data;
    let take = |ops: &mut &[u8]| -> u8 {
        let (b, rest) = ops.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        *ops = rest;
        b
    };
    while !ops.is_empty() {
        match take(&mut ops) % 6 {
            0 => {
                let n = usize::from(take(&mut ops) % 40) + 1;
                let size = usize::from(take(&mut ops)) * 4 + 5;
                let payloads: Box<[Arc<[u8]>]> = (0..n)
                    .map(|i| Arc::from(vec![i as u8; size - (i % 2) * 4]))
                    .collect();
                for p in payloads.iter() {
                    if !sizes.contains(&p.len()) {
                        sizes.push(p.len());
                    }
                }
                index += 1;
                rtp_time = rtp_time.wrapping_add(3000);
                let frame = Arc::new(Frame {
                    kind: Kind::Video,
                    index,
                    kind_index: index,
                    rtp_time,
                    wallclock: now,
                    received: now,
                    keyframe: n > 20,
                    publisher: 1,
                    payloads,
                });
                let span = Span {
                    first: 0,
                    count: n,
                    first_seq: next_seq,
                    rtp_time,
                    live: true,
                };
                next_seq += n as u64;
                tx.queue(true, &frame, span);
                tx.flush(now, &mut wire);
            }
            1 => {
                let size = usize::from(take(&mut ops)) + 1;
                index += 1;
                let frame = Arc::new(Frame {
                    kind: Kind::Audio,
                    index,
                    kind_index: index,
                    rtp_time,
                    wallclock: now,
                    received: now,
                    keyframe: false,
                    publisher: 1,
                    payloads: Box::new([Arc::from(vec![0u8; size])]),
                });
                let span = Span {
                    first: 0,
                    count: 1,
                    first_seq: u64::from(index),
                    rtp_time,
                    live: true,
                };
                tx.queue(false, &frame, span);
                tx.flush(now, &mut wire);
            }
            2 => {
                let len = usize::from(take(&mut ops)).min(ops.len());
                let (packet, rest) = ops.split_at(len);
                ops = rest;
                if let Ok(rtcp) = Rtcp::try_from(packet) {
                    tx.on_rtcp(&rtcp, now);
                    tx.flush(now, &mut wire);
                }
            }
            3 => {
                now += Duration::from_millis(u64::from(take(&mut ops)) * 4);
                tx.handle_timeout(now, &mut wire);
            }
            4 => {
                let packets = usize::from(take(&mut ops)) * 16;
                let frames = usize::from(take(&mut ops));
                tx.replay_history(packets, frames);
            }
            _ => tx.live_history(),
        }
        for d in wire.datagrams.drain(..) {
            seen.check(&d, &sizes);
        }
        assert!(
            tx.history_packets() <= MAX_HISTORY,
            "history {}",
            tx.history_packets()
        );
    }
    // The budget: each second's resends are at most that second's or the
    // last one's media, plus 16 KiB.
    let seconds = now.duration_since(start).as_secs() + 1;
    assert!(
        seen.rtx_bytes <= 2 * seen.media_bytes + 16 * 1024 * seconds,
        "resent {} bytes for {} of media over {seconds} s",
        seen.rtx_bytes,
        seen.media_bytes
    );
});
