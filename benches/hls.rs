//! CPU cost of making LL-HLS for one stream: the segmenter alone (RTP payloads
//! → AVCC samples, Opus packets, fMP4 parts, playlist), fed the frames the hub
//! carries for a 2.5 Mbit/s 720p30 H.264 stream with 96 kbit/s Opus, as fast as
//! it goes. Prints one JSON line: µs of CPU per second of media and the share
//! of one core one live stream costs, plus the playlist render cost.
//!
//! `cargo bench --bench hls`

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use roomcast::egress::hls::playlist::Params;
use roomcast::egress::hls::segmenter::Segmenter;
use roomcast::media::h264;
use roomcast::media::rtp_h264::H264Packetizer;

const SECONDS: u64 = 600;
const FPS: u64 = 30;
const VIDEO_BPS: u64 = 2_500_000;

/// This thread's CPU time in seconds (schedstat: nanoseconds on CPU).
fn thread_cpu() -> f64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").expect("procfs");
    s.split_whitespace().next().unwrap().parse::<f64>().unwrap() / 1e9
}

fn main() {
    // SPS/PPS of a real x264 stream; frame payloads of a realistic size:
    // keyframes 8× a P-frame, 2.5 Mbit/s on average.
    let data = Bytes::from_static(include_bytes!(
        "../src/media/testdata/x264_bf0_1280x720.h264"
    ));
    let nals = h264::split_annexb(&data);
    let find = |t| {
        nals.iter()
            .find(|n| h264::nal_type(n) == t)
            .unwrap()
            .clone()
    };
    let (sps, pps) = ([find(h264::NAL_SPS)], [find(h264::NAL_PPS)]);
    let per_gop = VIDEO_BPS / 8; // bytes per 1 s GOP
    let p_size = (per_gop / (FPS - 1 + 8)) as usize;
    let key = Bytes::from([&[0x65u8][..], &vec![0x5a; 8 * p_size][..]].concat());
    let p = Bytes::from([&[0x41u8][..], &vec![0x5a; p_size][..]].concat());
    let mut packetizer = H264Packetizer::default();
    let mut packetize = |nal: &Bytes, keyframe: bool| -> Box<[Arc<[u8]>]> {
        let mut out = Vec::new();
        packetizer.packetize(
            std::slice::from_ref(nal),
            keyframe.then_some((&sps[..], &pps[..])),
            &mut out,
        );
        out.iter().map(|b| Arc::from(&b[..])).collect()
    };
    let key_payloads = packetize(&key, true);
    let p_payloads = packetize(&p, false);
    let opus = vec![0xfcu8; 240]; // 20 ms at 96 kbit/s

    let mut seg = Segmenter::new(Params {
        part_target: 0.21,
        segment_target: 1.0,
        window: 6,
    });
    let t0 = SystemTime::now();
    let frames = SECONDS * FPS;
    let mut audio = 0u64;
    let mut renders = 0u64;
    let mut render_cpu = 0.0;
    let cpu0 = thread_cpu();
    let wall0 = Instant::now();
    for i in 0..frames {
        let keyframe = i.is_multiple_of(FPS);
        let t = i * 3000;
        let payloads = if keyframe { &key_payloads } else { &p_payloads };
        let wall = t0 + Duration::from_micros(t * 100 / 9);
        let changed = seg.push_video(
            1,
            roomcast::media::rtp_video::VideoCodec::H264,
            t as u32,
            keyframe,
            payloads.iter().map(|p| &p[..]),
            wall,
            true,
        );
        while audio * 960 <= t * 8 / 15 {
            seg.push_audio(1, (audio * 960) as u32, &opus, wall, true);
            audio += 1;
        }
        if changed && i.is_multiple_of(60) {
            let c = thread_cpu();
            for _ in 0..100 {
                std::hint::black_box(seg.playlist.render(1, ""));
            }
            render_cpu += thread_cpu() - c;
            renders += 100;
        }
    }
    let cpu = thread_cpu() - cpu0 - render_cpu;
    let wall = wall0.elapsed().as_secs_f64();
    let stats = seg.stats;
    println!(
        "{{\"bench\":\"hls_segmenter\",\"media_s\":{SECONDS},\"video_kbps\":{},\"audio_kbps\":96,\"cpu_s\":{cpu:.3},\"wall_s\":{wall:.3},\"cpu_us_per_media_s\":{:.0},\"percent_of_one_core_per_stream\":{:.3},\"parts\":{},\"segments\":{},\"render_us\":{:.1}}}",
        VIDEO_BPS / 1000,
        cpu * 1e6 / SECONDS as f64,
        100.0 * cpu / SECONDS as f64,
        stats.parts,
        stats.segments,
        render_cpu * 1e6 / renders.max(1) as f64,
    );
}
