//! AAC-LC → Opus (48 kHz stereo, 20 ms frames) for WebRTC viewers: decode
//! with symphonia, resample with rubato, encode with libopus. Runs once per
//! stream; timing follows the publisher's timestamps so audio stays in sync
//! with video across gaps and restarts.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use rubato::{FftFixedIn, Resampler};
use symphonia::core::audio::{Audio, GenericAudioBufferRef};
use symphonia::core::codecs::audio::well_known::CODEC_ID_AAC;
use symphonia::core::codecs::audio::{AudioCodecParameters, AudioDecoder, AudioDecoderOptions};
use symphonia::core::packet::PacketRef;
use symphonia::core::units::{Duration, Timestamp};
use symphonia::default::codecs::AacDecoder;
use thiserror::Error;

use super::flv::AudioSpecificConfig;

/// Opus sample rate (RTP clock rate for Opus).
pub const OPUS_RATE: u32 = 48_000;
/// Samples per channel in one 20 ms Opus frame at 48 kHz.
pub const OPUS_FRAME_SAMPLES: usize = 960;
/// A publisher timestamp this far (ms) from the expected one re-anchors the timeline.
pub const RESYNC_THRESHOLD_MS: i64 = 200;

// 48 kHz samples per ms.
const PER_MS: i64 = 48;
// Opus complexity 0..10, chosen by `transcode_stage_cost` (src/media/
// transcode_cost.rs): at 96 kbit/s stereo, 0 costs 60 % of 3 and keeps the
// same round-trip SNR on tones and noise (27–28 dB, 15 dB); only 5 and up
// gain (32–42 dB) at 1.3–2.3x the cost of 3.
const COMPLEXITY: i32 = 0;
// `Audio` rather than `LowDelay` (CELT only): the same cost at complexity 0,
// 1.5 dB better on tones, for 4 ms more lookahead (dropped at the start, so
// timestamps stay exact). At 96 kbit/s stereo it stays in CELT mode.
const APPLICATION: opus::Application = opus::Application::Audio;
// Recommended maximum Opus packet size.
const MAX_PACKET: usize = 1500;
// AAC sample rates from the AudioSpecificConfig table.
const AAC_RATES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

/// Why audio could not be transcoded.
#[derive(Debug, Error)]
pub enum TranscodeError {
    /// The AAC configuration is one this transcoder cannot handle.
    #[error("unsupported AAC stream: {0}")]
    Unsupported(String),
    /// An AAC frame could not be decoded (it is replaced by silence).
    #[error("AAC frame could not be decoded: {0}")]
    Decode(String),
    /// libopus rejected a setting or a frame.
    #[error("Opus encoder error: {0}")]
    Encode(String),
    /// The resampler failed.
    #[error("resampler error: {0}")]
    Resample(String),
}

/// One encoded 20 ms Opus frame.
#[derive(Debug, Clone, PartialEq)]
pub struct OpusPacket {
    /// Opus packet (one frame, 48 kHz stereo), shared as the hub takes it.
    pub payload: Arc<[u8]>,
    /// Media time of the packet start in the stream's ms clock (`samples_48k / 48`).
    pub ms: i64,
    /// 48 kHz sample position of the packet start; advances by 960 per packet
    /// while input is continuous (use it for the RTP timestamp).
    pub samples_48k: u64,
}

/// AAC-LC (mono or stereo, 8–96 kHz) to Opus 48 kHz stereo transcoder.
pub struct AacToOpus {
    decoder: AacDecoder,
    in_rate: u32,
    in_channels: usize,
    resampler: Option<FftFixedIn<f32>>,
    // Planar decoded samples waiting for a full resampler chunk.
    fifo_in: Vec<Vec<f32>>,
    // Resampler output, reused.
    resampled: Vec<Vec<f32>>,
    // Interleaved 48 kHz stereo waiting to fill a 20 ms frame.
    pcm: Vec<f32>,
    // 48 kHz frames still to discard after (re)anchoring (resampler and encoder delay).
    skip: usize,
    start_skip: usize,
    encoder: opus::Encoder,
    enc_buf: Vec<u8>,
    timeline: Option<Timeline>,
}

// Maps input samples to the 48 kHz stream clock since the last (re)anchor.
#[derive(Debug, Clone, Copy)]
struct Timeline {
    anchor_48k: i64,
    in_frames: u64,
    next_out_48k: i64,
}

impl Timeline {
    fn expected_48k(&self, in_rate: u32) -> i64 {
        let elapsed = self.in_frames as i128 * i128::from(OPUS_RATE) / i128::from(in_rate);
        self.anchor_48k.saturating_add(elapsed as i64)
    }
}

impl std::fmt::Debug for AacToOpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AacToOpus")
            .field("in_rate", &self.in_rate)
            .field("in_channels", &self.in_channels)
            .field("timeline", &self.timeline)
            .finish_non_exhaustive()
    }
}

fn unsupported(msg: impl Into<String>) -> TranscodeError {
    TranscodeError::Unsupported(msg.into())
}

impl AacToOpus {
    /// Transcoder for the stream described by `asc`, encoding at `bitrate_bps`
    /// (6000..=510000; 96000–128000 suits music in stereo).
    pub fn new(asc: &AudioSpecificConfig, bitrate_bps: i32) -> Result<Self, TranscodeError> {
        match asc.object_type {
            2 => {}
            5 | 29 => {
                return Err(unsupported(
                    "HE-AAC (SBR/PS) is not supported; set the encoder's audio to AAC-LC",
                ));
            }
            t => {
                return Err(unsupported(format!(
                    "AAC object type {t} is not supported; only AAC-LC (object type 2) is"
                )));
            }
        }
        if asc.sbr {
            return Err(unsupported(
                "HE-AAC (SBR signalled in the AAC-LC config) is not supported; set the encoder's audio to AAC-LC",
            ));
        }
        if asc.frame_length != 1024 {
            return Err(unsupported(format!(
                "AAC with {}-sample frames is not supported; only 1024",
                asc.frame_length
            )));
        }
        let Some(rate_index) = AAC_RATES.iter().position(|&r| r == asc.sample_rate) else {
            return Err(unsupported(format!(
                "AAC sample rate {} Hz is not supported; use 44100 or 48000",
                asc.sample_rate
            )));
        };
        if !(1..=2).contains(&asc.channels) {
            return Err(unsupported(format!(
                "{}-channel AAC is not supported; publish mono or stereo",
                asc.channels
            )));
        }
        if !(6000..=510_000).contains(&bitrate_bps) {
            return Err(unsupported(format!(
                "Opus bitrate {bitrate_bps} bit/s is outside 6000..=510000"
            )));
        }

        // A minimal LC config built from checked fields, so the decoder never
        // sees config extensions it would reject or misread.
        let asc_bytes: Box<[u8]> = Box::new([
            (2 << 3) | (rate_index as u8 >> 1),
            ((rate_index as u8 & 1) << 7) | (asc.channels << 3),
        ]);
        let mut params = AudioCodecParameters::new();
        params.codec = CODEC_ID_AAC;
        params
            .with_sample_rate(asc.sample_rate)
            .with_extra_data(asc_bytes);
        let decoder = AacDecoder::try_new(&params, &AudioDecoderOptions::default())
            .map_err(|e| unsupported(format!("AAC decoder: {e}")))?;

        let in_channels = usize::from(asc.channels);
        let resampler = if asc.sample_rate == OPUS_RATE {
            None
        } else {
            // Two FFT sub-chunks per AAC frame keep buffering near 10 ms.
            Some(
                FftFixedIn::<f32>::new(
                    asc.sample_rate as usize,
                    OPUS_RATE as usize,
                    1024,
                    2,
                    in_channels,
                )
                .map_err(|e| TranscodeError::Resample(e.to_string()))?,
            )
        };
        let resampled = resampler
            .as_ref()
            .map(|r| r.output_buffer_allocate(true))
            .unwrap_or_default();

        let enc_err = |e: opus::Error| TranscodeError::Encode(e.to_string());
        let mut encoder = opus_encoder(bitrate_bps)?;
        let lookahead = usize::try_from(encoder.get_lookahead().map_err(enc_err)?).unwrap_or(0);
        let resampler_delay = resampler.as_ref().map_or(0, |r| r.output_delay());

        Ok(AacToOpus {
            decoder,
            in_rate: asc.sample_rate,
            in_channels,
            resampler,
            fifo_in: vec![Vec::with_capacity(4096); in_channels],
            resampled,
            pcm: Vec::with_capacity(4 * OPUS_FRAME_SAMPLES),
            skip: 0,
            // Dropping these leading samples makes decoded Opus sample k line
            // up with input sample k, so `samples_48k` is the true media time.
            start_skip: resampler_delay + lookahead,
            encoder,
            enc_buf: vec![0; MAX_PACKET],
            timeline: None,
        })
    }

    /// Change the Opus encoder complexity (0..=10; default 0). Each step up
    /// costs roughly 10–20% more CPU for slightly better quality.
    pub fn set_complexity(&mut self, complexity: i32) -> Result<(), TranscodeError> {
        self.encoder
            .set_complexity(complexity.clamp(0, 10))
            .map_err(|e| TranscodeError::Encode(e.to_string()))
    }

    /// Forget the timeline; the next frame re-anchors (use on publisher change).
    pub fn reset(&mut self) {
        self.timeline = None;
    }

    /// Decode one raw AAC frame with presentation time `pts_ms` and append the
    /// Opus packets it completes to `out`. On `Err` nothing is appended; an
    /// undecodable frame becomes silence so later frames stay on time.
    pub fn push(
        &mut self,
        aac_frame: &[u8],
        pts_ms: i64,
        out: &mut Vec<OpusPacket>,
    ) -> Result<(), TranscodeError> {
        let pts_48k = pts_ms.saturating_mul(PER_MS);
        let resync = match &self.timeline {
            None => true,
            Some(t) => {
                pts_48k.abs_diff(t.expected_48k(self.in_rate))
                    > (RESYNC_THRESHOLD_MS * PER_MS) as u64
            }
        };
        if resync {
            self.anchor(pts_48k);
        }

        let decoded = if aac_frame.is_empty() {
            Err(TranscodeError::Decode("empty AAC frame".into()))
        } else {
            self.decode(aac_frame)
        };
        let frames = match decoded {
            Ok(n) => n,
            Err(e) => {
                // One frame of silence keeps later frames on time; it is
                // encoded together with the next good frame.
                for ch in &mut self.fifo_in {
                    ch.resize(ch.len() + 1024, 0.0);
                }
                if let Some(t) = &mut self.timeline {
                    t.in_frames += 1024;
                }
                return Err(e);
            }
        };
        if let Some(t) = &mut self.timeline {
            t.in_frames += frames as u64;
        }
        let before = out.len();
        let result = self.resample().and_then(|()| self.encode(out));
        if result.is_err() {
            out.truncate(before);
        }
        result
    }

    // Start a new timeline at `pts_48k`, dropping audio buffered for the old one.
    fn anchor(&mut self, pts_48k: i64) {
        self.decoder.reset();
        if let Some(r) = &mut self.resampler {
            r.reset();
        }
        self.fifo_in.iter_mut().for_each(Vec::clear);
        self.pcm.clear();
        self.skip = self.start_skip;
        self.timeline = Some(Timeline {
            anchor_48k: pts_48k,
            in_frames: 0,
            next_out_48k: pts_48k,
        });
    }

    // Decode into `fifo_in`; returns the number of frames added.
    fn decode(&mut self, frame: &[u8]) -> Result<usize, TranscodeError> {
        let channels = self.in_channels;
        let fifo = &mut self.fifo_in;
        let decoder = &mut self.decoder;
        // symphonia is safe Rust, but a malformed frame could still hit an
        // index panic deep in the decoder; one bad frame must not take the
        // server down.
        let result = catch_unwind(AssertUnwindSafe(|| {
            let packet = PacketRef::new(0, Timestamp::new(0), Duration::new(1024), frame);
            let buf = decoder.decode_ref(&packet).map_err(|e| e.to_string())?;
            let n = buf.frames();
            match buf {
                GenericAudioBufferRef::F32(b) => {
                    for (ch, dst) in fifo.iter_mut().enumerate().take(channels) {
                        // A mono frame in a stereo stream: reuse its one plane.
                        let plane = b.plane(ch).or_else(|| b.plane(0)).unwrap_or(&[]);
                        dst.extend_from_slice(plane);
                        dst.resize(dst.len() + n - plane.len().min(n), 0.0);
                    }
                }
                other => {
                    let mut planes: Vec<Vec<f32>> = Vec::new();
                    other.copy_to_vecs_planar(&mut planes);
                    for (ch, dst) in fifo.iter_mut().enumerate().take(channels) {
                        let plane = planes
                            .get(ch)
                            .or(planes.first())
                            .map_or(&[][..], |p| &p[..]);
                        dst.extend_from_slice(plane);
                        dst.resize(dst.len() + n - plane.len().min(n), 0.0);
                    }
                }
            }
            Ok::<usize, String>(n)
        }));
        match result {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(TranscodeError::Decode(e)),
            Err(_) => {
                self.decoder.reset();
                Err(TranscodeError::Decode(
                    "decoder failed on a malformed frame".into(),
                ))
            }
        }
    }

    // Move `fifo_in` through the resampler (if any) into interleaved stereo `pcm`.
    fn resample(&mut self) -> Result<(), TranscodeError> {
        match &mut self.resampler {
            None => {
                let n = self.fifo_in[0].len();
                push_stereo(&mut self.pcm, &mut self.skip, &self.fifo_in, 0..n);
                self.fifo_in.iter_mut().for_each(Vec::clear);
            }
            Some(r) => {
                let chunk = r.input_frames_next();
                let mut used = 0;
                let channels = self.fifo_in.len();
                while self.fifo_in[0].len() - used >= chunk {
                    // On the stack: no allocation per chunk.
                    let left = &self.fifo_in[0][used..used + chunk];
                    let right = self.fifo_in.get(1).map_or(left, |c| &c[used..used + chunk]);
                    let input = [left, right];
                    let (_, produced) = r
                        .process_into_buffer(&input[..channels], &mut self.resampled, None)
                        .map_err(|e| TranscodeError::Resample(e.to_string()))?;
                    push_stereo(&mut self.pcm, &mut self.skip, &self.resampled, 0..produced);
                    used += chunk;
                }
                self.fifo_in.iter_mut().for_each(|c| {
                    c.drain(..used);
                });
            }
        }
        Ok(())
    }

    // Encode every complete 20 ms frame in `pcm`.
    fn encode(&mut self, out: &mut Vec<OpusPacket>) -> Result<(), TranscodeError> {
        const FRAME: usize = OPUS_FRAME_SAMPLES * 2;
        let Some(t) = &mut self.timeline else {
            return Ok(());
        };
        let mut used = 0;
        let mut result = Ok(());
        while self.pcm.len() - used >= FRAME {
            let pcm = &self.pcm[used..used + FRAME];
            used += FRAME;
            let pos = t.next_out_48k;
            t.next_out_48k += OPUS_FRAME_SAMPLES as i64;
            match self.encoder.encode_float(pcm, &mut self.enc_buf) {
                Ok(n) => out.push(OpusPacket {
                    payload: Arc::from(&self.enc_buf[..n]),
                    ms: pos.div_euclid(PER_MS),
                    // Only a negative publisher timestamp could make this clamp.
                    samples_48k: pos.max(0) as u64,
                }),
                // Keep the timeline moving: the packet is lost, not shifted.
                Err(e) => result = Err(TranscodeError::Encode(e.to_string())),
            }
        }
        self.pcm.drain(..used);
        result
    }
}

// The 48 kHz stereo encoder with the settings chosen for CPU and quality.
fn opus_encoder(bitrate_bps: i32) -> Result<opus::Encoder, TranscodeError> {
    let enc_err = |e: opus::Error| TranscodeError::Encode(e.to_string());
    let mut encoder =
        opus::Encoder::new(OPUS_RATE, opus::Channels::Stereo, APPLICATION).map_err(enc_err)?;
    encoder
        .set_bitrate(opus::Bitrate::Bits(bitrate_bps))
        .map_err(enc_err)?;
    encoder.set_complexity(COMPLEXITY).map_err(enc_err)?;
    Ok(encoder)
}

// Append frames `range` of planar `src` (1 or 2 channels) to interleaved
// stereo `dst`, first dropping `skip` frames.
fn push_stereo(
    dst: &mut Vec<f32>,
    skip: &mut usize,
    src: &[Vec<f32>],
    range: std::ops::Range<usize>,
) {
    let drop = (*skip).min(range.len());
    *skip -= drop;
    let range = range.start + drop..range.end;
    let left = &src[0][range.clone()];
    let right = src.get(1).map_or(left, |r| &r[range]);
    dst.reserve(left.len() * 2);
    for (l, r) in left.iter().zip(right) {
        dst.push(*l);
        dst.push(*r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::flv::tests::{AAC44_FLV, AAC48_MONO_FLV, AV_FLV, aac_track};
    use bytes::Bytes;

    // Decode Opus packets to interleaved 48 kHz stereo.
    fn decode_opus(packets: &[OpusPacket]) -> Vec<f32> {
        let mut dec = opus::Decoder::new(48000, opus::Channels::Stereo).unwrap();
        let mut pcm = Vec::new();
        let mut buf = vec![0f32; 5760 * 2];
        for p in packets {
            let n = dec.decode_float(&p.payload, &mut buf, false).unwrap();
            assert_eq!(n, OPUS_FRAME_SAMPLES);
            pcm.extend_from_slice(&buf[..n * 2]);
        }
        pcm
    }

    // Power of frequency `f` in one channel of interleaved stereo (Goertzel).
    fn tone_power(pcm: &[f32], ch: usize, f: f64) -> f64 {
        let w = 2.0 * std::f64::consts::PI * f / 48000.0;
        let (mut s1, mut s2) = (0.0, 0.0);
        let samples: Vec<f64> = pcm
            .iter()
            .skip(ch)
            .step_by(2)
            .map(|&x| f64::from(x))
            .collect();
        for &x in &samples {
            let s = x + 2.0 * w.cos() * s1 - s2;
            s2 = s1;
            s1 = s;
        }
        let p = s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2;
        p / (samples.len() as f64).powi(2)
    }

    // Media time (ms) where the tone starts, from packet timestamps. Expect
    // ~21 ms late: ffmpeg's AAC encoder primes with 1024 samples that FLV
    // timestamps do not account for (every FLV player shows the same offset).
    fn onset_ms(packets: &[OpusPacket], pcm: &[f32]) -> f64 {
        let first = pcm
            .chunks(2)
            .position(|s| s[0].abs() > 0.05)
            .expect("tone present");
        packets[0].samples_48k as f64 / 48.0 + first as f64 / 48.0
    }

    fn run(file: &'static [u8], offset_ms: i64) -> Vec<OpusPacket> {
        let (asc, frames) = aac_track(file);
        let mut t = AacToOpus::new(&asc, 96_000).unwrap();
        let mut out = Vec::new();
        for (pts, f) in &frames {
            t.push(f, pts + offset_ms, &mut out).unwrap();
        }
        out
    }

    fn assert_continuous(packets: &[OpusPacket]) {
        for w in packets.windows(2) {
            assert_eq!(w[1].samples_48k, w[0].samples_48k + 960);
        }
        for p in packets {
            assert_eq!(p.ms, p.samples_48k as i64 / 48);
        }
    }

    #[test]
    fn stereo_44k_keeps_channels_and_timing() {
        let out = run(AAC44_FLV, 10_000);
        assert_continuous(&out);
        // Anchored at the first frame's pts.
        assert_eq!(out[0].samples_48k, 10_000 * 48);
        // All input but what is still buffered (< one 20 ms frame, one FFT
        // chunk, and the dropped resampler + encoder delay).
        let input_ms = aac_track(AAC44_FLV).1.len() as f64 * 1024.0 / 44.1;
        let missing_ms = input_ms - out.len() as f64 * 20.0;
        assert!(
            (0.0..60.0).contains(&missing_ms),
            "{} packets for {input_ms} ms",
            out.len()
        );
        let pcm = decode_opus(&out);
        let onset = onset_ms(&out, &pcm) - 10_000.0;
        println!("44.1 kHz stereo: tone onset at {onset:.1} ms (source: 500 ms)");
        assert!((517.0..526.0).contains(&onset), "onset {onset}");
        let tail = &pcm[pcm.len() - 9600..];
        assert!(tone_power(tail, 0, 440.0) > 100.0 * tone_power(tail, 0, 1000.0));
        assert!(tone_power(tail, 1, 1000.0) > 100.0 * tone_power(tail, 1, 440.0));
    }

    #[test]
    fn mono_48k_is_upmixed_without_resampling() {
        let out = run(AAC48_MONO_FLV, 0);
        assert_continuous(&out);
        assert_eq!(out[0].samples_48k, 0);
        let pcm = decode_opus(&out);
        let onset = onset_ms(&out, &pcm);
        println!("48 kHz mono: tone onset at {onset:.1} ms (source: 500 ms)");
        assert!((517.0..526.0).contains(&onset), "onset {onset}");
        let tail = &pcm[pcm.len() - 9600..];
        for ch in 0..2 {
            assert!(
                tone_power(tail, ch, 440.0) > 1e-3,
                "channel {ch} has the tone"
            );
        }
    }

    // The encoder settings (complexity, application) were chosen for CPU:
    // 2 s of 440 Hz left and 660 Hz right (the bench's signal) must still
    // come through clean. Measured 28–29 dB (transcode_stage_cost); 5 and up
    // reach 32–42 dB, a bitrate or mode slip would fall well below 25.
    #[test]
    fn encoder_settings_keep_tones_clean() {
        let mut enc = opus_encoder(96_000).unwrap();
        let lookahead = enc.get_lookahead().unwrap() as usize;
        let tone = |f: f64, i: usize| {
            (0.25 * (2.0 * std::f64::consts::PI * f * i as f64 / 48_000.0).sin()) as f32
        };
        let pcm: Vec<f32> = (0..96_000)
            .flat_map(|i| [tone(440.0, i), tone(660.0, i)])
            .collect();
        let mut dec = opus::Decoder::new(48_000, opus::Channels::Stereo).unwrap();
        let (mut buf, mut frame) = (vec![0u8; MAX_PACKET], vec![0f32; 2 * OPUS_FRAME_SAMPLES]);
        let mut decoded = Vec::new();
        for chunk in pcm.chunks_exact(2 * OPUS_FRAME_SAMPLES) {
            let n = enc.encode_float(chunk, &mut buf).unwrap();
            let m = dec.decode_float(&buf[..n], &mut frame, false).unwrap();
            decoded.extend_from_slice(&frame[..2 * m]);
        }
        // After the first 0.5 s, input sample i is output sample i + lookahead.
        for ch in 0..2 {
            let (mut signal, mut noise) = (0.0f64, 0.0f64);
            for i in (48_000..pcm.len() / 2 - lookahead).map(|i| 2 * i + ch) {
                let (x, y) = (f64::from(pcm[i]), f64::from(decoded[i + 2 * lookahead]));
                signal += x * x;
                noise += (x - y).powi(2);
            }
            let snr = 10.0 * (signal / noise).log10();
            println!("Opus round trip, channel {ch}: SNR {snr:.1} dB");
            assert!(snr > 25.0, "channel {ch}: SNR {snr:.1} dB");
        }
    }

    #[test]
    fn gap_in_timestamps_reanchors() {
        let (asc, frames) = aac_track(AV_FLV);
        let mut t = AacToOpus::new(&asc, 64_000).unwrap();
        let mut out = Vec::new();
        let half = frames.len() / 2;
        for (pts, f) in &frames[..half] {
            t.push(f, *pts, &mut out).unwrap();
        }
        let before = out.len();
        let last_before = out[before - 1].samples_48k;
        // Publisher restarts 5 s later (small jitter below the threshold is absorbed).
        for (i, (pts, f)) in frames[half..].iter().enumerate() {
            let jitter = if i % 2 == 0 { 1 } else { -1 };
            t.push(f, pts + 5_000 + jitter, &mut out).unwrap();
        }
        assert_continuous(&out[..before]);
        assert_continuous(&out[before..]);
        let first_after = out[before].samples_48k;
        assert!(first_after > last_before + 4_000 * 48);
        assert_eq!(first_after, (frames[half].0 as u64 + 5_001) * 48);
    }

    #[test]
    fn timestamp_going_back_reanchors_too() {
        let (asc, frames) = aac_track(AAC44_FLV);
        let mut t = AacToOpus::new(&asc, 64_000).unwrap();
        let mut out = Vec::new();
        for (pts, f) in &frames {
            t.push(f, pts + 60_000, &mut out).unwrap();
        }
        let n = out.len();
        for (pts, f) in &frames {
            t.push(f, *pts, &mut out).unwrap();
        }
        assert_eq!(out[n].samples_48k, 0);
        assert_continuous(&out[n..]);
    }

    #[test]
    fn unsupported_configs_have_clear_errors() {
        let asc = |b: &'static [u8]| AudioSpecificConfig::parse(&Bytes::from_static(b)).unwrap();
        let err = |b: &'static [u8]| AacToOpus::new(&asc(b), 64_000).unwrap_err().to_string();
        assert_eq!(
            err(&[0x2b, 0x92, 0x08, 0x00]),
            "unsupported AAC stream: HE-AAC (SBR/PS) is not supported; set the encoder's audio to AAC-LC"
        );
        assert!(err(&[0x13, 0x90, 0x56, 0xe5, 0xa0]).contains("HE-AAC"));
        // AAC Main (object type 1).
        assert!(err(&[0x0a, 0x10]).contains("object type 1"));
        // 5.1 (channel config 6).
        assert!(err(&[0x11, 0xb0]).contains("6-channel"));
        // 960-sample frames.
        assert!(err(&[0x11, 0x8c]).contains("960"));
        let ok = asc(&[0x11, 0x90]);
        assert!(
            AacToOpus::new(&ok, 1000)
                .unwrap_err()
                .to_string()
                .contains("bitrate")
        );
        // Explicit (non-table) sample rate: escape index 15 with 50 kHz.
        let odd = AudioSpecificConfig {
            sample_rate: 50_000,
            ..ok.clone()
        };
        assert!(
            AacToOpus::new(&odd, 64_000)
                .unwrap_err()
                .to_string()
                .contains("50000 Hz")
        );
        // 32 kHz and 22.05 kHz mono are resampled too.
        for cfg in [&[0x12, 0x88][..], &[0x13, 0x88]] {
            let a = AudioSpecificConfig::parse(&Bytes::copy_from_slice(cfg)).unwrap();
            assert!(AacToOpus::new(&a, 64_000).is_ok());
        }
    }

    #[test]
    fn garbage_frames_are_errors_not_panics() {
        let (asc, frames) = aac_track(AAC44_FLV);
        let mut t = AacToOpus::new(&asc, 64_000).unwrap();
        let mut out = Vec::new();
        assert!(t.push(&[], 0, &mut out).is_err());
        let mut seed = 7u32;
        let mut errors = 0;
        for (i, (_, f)) in frames.iter().cycle().take(400).enumerate() {
            let mut v = f.to_vec();
            if i % 2 == 0 {
                for _ in 0..3 {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    let j = (seed as usize >> 8) % v.len();
                    v[j] ^= (seed >> 3) as u8;
                }
            } else if i % 7 == 0 {
                v = (0..((seed % 600) as usize))
                    .map(|k| (k as u32).wrapping_mul(seed) as u8)
                    .collect();
                v.push(0xff);
            }
            let pts = (i as i64 + 1) * 1024 * 1000 / 44100;
            let before = out.len();
            if t.push(&v, pts, &mut out).is_err() {
                errors += 1;
                assert_eq!(out.len(), before, "nothing appended on Err");
            }
        }
        assert!(errors > 0);
        // Bad frames became silence: the timeline never broke.
        assert_continuous(&out);
        assert!(out.len() > 400 * 1024 * 50 / 44100 - 5);
    }

    // CPU time this thread has used, in ns.
    fn thread_cpu_clock_ns() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }

    /// Release-mode cost figures for the README:
    /// `cargo test --release --lib transcode_cpu_cost -- --ignored --nocapture`
    /// Uses 10 s of pink noise (harder than the fixture's tones) when ffmpeg
    /// is installed, else loops the fixture. Three cadences: a burst (warm
    /// caches), and one frame per 23.2 ms like a live publisher, with the
    /// thread asleep between frames (an idle machine) or spinning (a busy
    /// one). Each cadence gets a fresh transcoder.
    #[test]
    #[ignore = "benchmark; run in release mode"]
    fn transcode_cpu_cost() {
        let path = std::env::temp_dir().join(format!("roomcast-bench-{}.flv", std::process::id()));
        let generated = std::process::Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
            .arg("anoisesrc=color=pink:sample_rate=44100:amplitude=0.3:duration=10,aformat=channel_layouts=stereo")
            .args(["-c:a", "aac", "-b:a", "160k", "-f", "flv"])
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        let file: &'static [u8] = match generated.then(|| std::fs::read(&path).ok()).flatten() {
            Some(v) => Box::leak(v.into_boxed_slice()),
            None => AAC44_FLV,
        };
        let _ = std::fs::remove_file(&path);
        let (asc, frames) = aac_track(file);
        let frame_time = std::time::Duration::from_nanos(1024 * 1_000_000_000 / 44100);
        #[derive(Clone, Copy)]
        enum Cadence {
            Burst,
            Asleep,
            Spinning,
        }
        for (cadence, label, seconds) in [
            (Cadence::Burst, "burst", 60),
            (Cadence::Asleep, "paced, asleep between frames", 10),
            (Cadence::Spinning, "paced, spinning between frames", 10),
        ] {
            let mut t = AacToOpus::new(&asc, 96_000).unwrap();
            let mut out = Vec::new();
            let total_frames = seconds * 44100 / 1024;
            // CPU ns in decode, resample and encode, timed stage by stage.
            let mut stage_ns = [0u64; 3];
            t.anchor(0);
            let start = std::time::Instant::now();
            for k in 0..total_frames {
                let f = &frames[k % frames.len()].1;
                let c0 = thread_cpu_clock_ns();
                let n = t.decode(f).unwrap();
                t.timeline.as_mut().unwrap().in_frames += n as u64;
                let c1 = thread_cpu_clock_ns();
                t.resample().unwrap();
                let c2 = thread_cpu_clock_ns();
                t.encode(&mut out).unwrap();
                let c3 = thread_cpu_clock_ns();
                stage_ns[0] += c1 - c0;
                stage_ns[1] += c2 - c1;
                stage_ns[2] += c3 - c2;
                let due = start + frame_time * (k as u32 + 1);
                match cadence {
                    Cadence::Burst => {}
                    Cadence::Asleep => {
                        std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()))
                    }
                    Cadence::Spinning => {
                        while std::time::Instant::now() < due {
                            std::hint::spin_loop();
                        }
                    }
                }
            }
            let audio_s = (total_frames * 1024) as f64 / 44100.0;
            let per_frame = |ns: u64| ns as f64 / total_frames as f64 / 1000.0;
            let busy_ns: u64 = stage_ns.iter().sum();
            println!(
                "AAC-LC 44.1 kHz stereo ({}) -> Opus 48 kHz stereo 96 kbit/s, {label}: \
                 {:.1} us per AAC frame (decode {:.1}, resample {:.1}, encode {:.1}), \
                 {:.3} % of one core ({audio_s:.0} s of audio, {} packets)",
                if generated {
                    "pink noise"
                } else {
                    "fixture tones"
                },
                per_frame(busy_ns),
                per_frame(stage_ns[0]),
                per_frame(stage_ns[1]),
                per_frame(stage_ns[2]),
                busy_ns as f64 / audio_s / 1e7,
                out.len()
            );
        }
    }
}
