//! Publisher-controlled video frames into LL-HLS (src/egress/hls/segmenter.rs),
//! as the HLS driver feeds the hub's frames: the key frame headers that make
//! the track (`media::vp8`, `vp9`, `av1` and the H.264 SPS), the RTP
//! depacketizers that make MP4 samples (`media::rtp_video::depacketize`,
//! `rtp_h264`), the fMP4 init segments and parts, and the playlist text.
//!
//! Input: one byte choosing the codec (H.264, VP8, VP9, AV1 by its value
//! modulo 4), then frames: a flags byte (bit 0: key frame, bit 1: an Opus
//! packet follows the frame, bits 2-4: one to eight RTP payloads), then each
//! payload as a 16-bit big-endian length and its bytes.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use roomcast::egress::hls::playlist::Params;
use roomcast::egress::hls::segmenter::Segmenter;
use roomcast::media::rtp_video::VideoCodec;
use roomcast::media::{av1, vp8, vp9};

const CODECS: [VideoCodec; 4] = [
    VideoCodec::H264,
    VideoCodec::Vp8,
    VideoCodec::Vp9,
    VideoCodec::Av1,
];

fuzz_target!(|data: &[u8]| {
    let Some((&which, mut rest)) = data.split_first() else {
        return;
    };
    let codec = CODECS[usize::from(which % 4)];
    // `[hls]` defaults: 0.2 s parts, 1 s segments, a window of 6.
    let mut seg = Segmenter::new(Params {
        part_target: 0.2,
        segment_target: 1.0,
        window: 6,
    });
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let opus = [0xfcu8; 40];
    let mut frame = 0u32;
    let mut payloads: Vec<&[u8]> = Vec::with_capacity(8);
    while let Some((&flags, r)) = rest.split_first() {
        rest = r;
        payloads.clear();
        for _ in 0..=((flags >> 2) & 7) {
            if rest.len() < 2 {
                break;
            }
            let len = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
            payloads.push(&rest[2..2 + len]);
            rest = &rest[2 + len..];
        }
        // The header parsers on their own, as the track is made from them.
        for p in &payloads {
            let _ = vp8::parse_keyframe(p);
            let _ = vp9::parse_keyframe(p);
            let _ = av1::find_sequence_header(p);
        }
        // Ten frames a second: segments and parts complete every few frames.
        let rtp_time = frame.wrapping_mul(9000);
        let wall = t0 + Duration::from_millis(u64::from(frame) * 100);
        seg.push_video(
            1,
            codec,
            rtp_time,
            flags & 1 == 1,
            payloads.iter().copied(),
            wall,
            true,
        );
        if flags & 2 == 2 {
            seg.push_audio(1, frame.wrapping_mul(4800), &opus, wall, true);
        }
        frame += 1;
    }
    let _ = seg.codecs();
    let _ = seg.flush();
    let _ = seg.playlist.render(1, "");
});
