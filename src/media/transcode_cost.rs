//! Per-stage CPU cost of AAC→Opus (decode, resample, encode) and the libopus
//! settings sweep the transcoder's settings were chosen from. Benchmarks,
//! not tests: `cargo test --lib transcode_stage_cost -- --ignored --nocapture`
//! (libopus is the system's optimised C library even in a debug build; the
//! decoder and resampler are Rust, so their figures need `--release` or the
//! dev-profile opt-level in Cargo.toml).

use std::time::Instant;

use rubato::{FftFixedIn, Resampler};
use symphonia::core::audio::{Audio, GenericAudioBufferRef};
use symphonia::core::codecs::audio::well_known::CODEC_ID_AAC;
use symphonia::core::codecs::audio::{AudioCodecParameters, AudioDecoder, AudioDecoderOptions};
use symphonia::core::packet::PacketRef;
use symphonia::core::units::{Duration, Timestamp};
use symphonia::default::codecs::AacDecoder;

use super::flv::tests::aac_track;
use super::transcode::OPUS_FRAME_SAMPLES;

// CPU time this thread has used (Linux schedstat, ns).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| {
            // Wall time is an upper bound where schedstat is missing.
            static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
            START.get_or_init(Instant::now).elapsed().as_nanos() as u64
        })
}

/// `seconds` of stereo pink noise plus a 440 Hz tone, AAC-LC at `rate`, as
/// ffmpeg writes it to FLV (None without ffmpeg).
fn noise_flv(rate: u32, seconds: u32) -> Option<&'static [u8]> {
    ffmpeg_flv(
        rate,
        &format!("anoisesrc=color=pink:sample_rate={rate}:amplitude=0.2:duration={seconds}"),
        &format!("sine=frequency=440:sample_rate={rate}:duration={seconds}"),
    )
}

/// The bench's signal: 440 Hz left, 660 Hz right, AAC-LC at `rate`.
fn tones_flv(rate: u32, seconds: u32) -> Option<&'static [u8]> {
    ffmpeg_flv(
        rate,
        &format!("sine=frequency=440:sample_rate={rate}:duration={seconds}"),
        &format!("sine=frequency=660:sample_rate={rate}:duration={seconds}"),
    )
}

// Two lavfi sources merged into stereo, AAC-LC 160 kbit/s in FLV.
fn ffmpeg_flv(rate: u32, left: &str, right: &str) -> Option<&'static [u8]> {
    let path = std::env::temp_dir().join(format!(
        "roomcast-cost-{}-{rate}-{}.flv",
        std::process::id(),
        left.len() + right.len()
    ));
    let ok = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(left)
        .args(["-f", "lavfi", "-i"])
        .arg(right)
        .args(["-filter_complex", "amerge=inputs=2", "-ac", "2"])
        .args(["-c:a", "aac", "-b:a", "160k", "-f", "flv"])
        .arg(&path)
        .status()
        .is_ok_and(|s| s.success());
    let bytes = ok.then(|| std::fs::read(&path).ok()).flatten();
    let _ = std::fs::remove_file(&path);
    bytes.map(|v| &*Box::leak(v.into_boxed_slice()))
}

// Decode every frame to planar f32 (channel 0, channel 1).
fn decode_all(asc: &super::flv::AudioSpecificConfig, frames: &[bytes::Bytes]) -> [Vec<f32>; 2] {
    let mut params = AudioCodecParameters::new();
    params.codec = CODEC_ID_AAC;
    params
        .with_sample_rate(asc.sample_rate)
        .with_extra_data(asc.raw.to_vec().into_boxed_slice());
    let mut dec = AacDecoder::try_new(&params, &AudioDecoderOptions::default()).unwrap();
    let mut out = [Vec::new(), Vec::new()];
    for f in frames {
        let packet = PacketRef::new(0, Timestamp::new(0), Duration::new(1024), f);
        if let GenericAudioBufferRef::F32(b) = dec.decode_ref(&packet).unwrap() {
            for (ch, dst) in out.iter_mut().enumerate() {
                dst.extend_from_slice(b.plane(ch).or_else(|| b.plane(0)).unwrap());
            }
        }
    }
    out
}

fn interleave(planes: &[Vec<f32>; 2]) -> Vec<f32> {
    planes[0]
        .iter()
        .zip(&planes[1])
        .flat_map(|(l, r)| [*l, *r])
        .collect()
}

// Encode interleaved 48 kHz stereo in 20 ms frames; returns (CPU ns, packets).
fn encode_all(enc: &mut opus::Encoder, pcm: &[f32]) -> (u64, Vec<Vec<u8>>) {
    let mut buf = [0u8; 1500];
    let mut packets = Vec::new();
    let t0 = thread_cpu_ns();
    for frame in pcm.chunks_exact(OPUS_FRAME_SAMPLES * 2) {
        let n = enc.encode_float(frame, &mut buf).unwrap();
        packets.push(buf[..n].to_vec());
    }
    (thread_cpu_ns() - t0, packets)
}

// Signal-to-noise ratio (dB) of the Opus round trip, aligned by the
// encoder's lookahead: a coarse quality figure that ranks settings.
fn round_trip_snr_db(pcm: &[f32], packets: &[Vec<u8>], lookahead: usize) -> f64 {
    let mut dec = opus::Decoder::new(48_000, opus::Channels::Stereo).unwrap();
    let mut decoded = Vec::with_capacity(pcm.len());
    let mut buf = vec![0f32; 5760 * 2];
    for p in packets {
        let n = dec.decode_float(p, &mut buf, false).unwrap();
        decoded.extend_from_slice(&buf[..n * 2]);
    }
    let (mut signal, mut noise) = (0.0f64, 0.0f64);
    // Skip the first second: the encoder's start-up is not steady state.
    for (i, x) in pcm.iter().enumerate().skip(96_000) {
        let Some(y) = decoded.get(i + lookahead * 2) else {
            break;
        };
        signal += f64::from(*x).powi(2);
        noise += f64::from(x - y).powi(2);
    }
    10.0 * (signal / noise.max(1e-12)).log10()
}

#[test]
#[ignore = "benchmark; prints the cost of each stage and the libopus sweep"]
fn transcode_stage_cost() {
    const SECONDS: u32 = 20;
    for (signal, rate) in [("noise", 44_100u32), ("noise", 48_000), ("tones", 48_000)] {
        let file = if signal == "noise" {
            noise_flv(rate, SECONDS)
        } else {
            tones_flv(rate, SECONDS)
        };
        let Some(file) = file else {
            eprintln!("ffmpeg is needed for this benchmark");
            return;
        };
        let (asc, frames) = aac_track(file);
        let frames: Vec<_> = frames.into_iter().map(|(_, f)| f).collect();
        let audio_s = (frames.len() * 1024) as f64 / f64::from(rate);
        let per_cent = |ns: u64| ns as f64 / 1e9 / audio_s * 100.0;

        let t0 = thread_cpu_ns();
        let planes = decode_all(&asc, &frames);
        let decode_ns = thread_cpu_ns() - t0;
        println!(
            "{rate} Hz {signal}: AAC decode (symphonia) {:.3} % of one core",
            per_cent(decode_ns)
        );

        let pcm48 = if rate == 48_000 {
            interleave(&planes)
        } else {
            let mut r = FftFixedIn::<f32>::new(rate as usize, 48_000, 1024, 2, 2).unwrap();
            let mut out = r.output_buffer_allocate(true);
            let mut resampled = [Vec::new(), Vec::new()];
            let t0 = thread_cpu_ns();
            for i in (0..planes[0].len() - 1024).step_by(1024) {
                let input = [&planes[0][i..i + 1024], &planes[1][i..i + 1024]];
                let (_, n) = r.process_into_buffer(&input, &mut out, None).unwrap();
                for ch in 0..2 {
                    resampled[ch].extend_from_slice(&out[ch][..n]);
                }
            }
            let resample_ns = thread_cpu_ns() - t0;
            println!(
                "{rate} Hz {signal}: resample to 48 kHz (rubato FftFixedIn) {:.3} % of one core",
                per_cent(resample_ns)
            );
            interleave(&resampled)
        };

        for (name, app) in [
            ("restricted-lowdelay", opus::Application::LowDelay),
            ("audio", opus::Application::Audio),
        ] {
            for complexity in [0, 1, 2, 3, 5, 7, 10] {
                let mut enc = opus::Encoder::new(48_000, opus::Channels::Stereo, app).unwrap();
                enc.set_bitrate(opus::Bitrate::Bits(96_000)).unwrap();
                enc.set_complexity(complexity).unwrap();
                let lookahead = enc.get_lookahead().unwrap() as usize;
                let (ns, packets) = encode_all(&mut enc, &pcm48);
                println!(
                    "{rate} Hz {signal}: Opus encode 96 kbit/s {name:>19} complexity {complexity:>2}: \
                     {:.3} % of one core, round-trip SNR {:.1} dB",
                    per_cent(ns),
                    round_trip_snr_db(&pcm48, &packets, lookahead)
                );
            }
        }
    }
}
