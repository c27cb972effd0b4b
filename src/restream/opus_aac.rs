//! Opus → AAC for restreams of WebRTC (WHIP) publishers, once per stream
//! however many destinations: RTMP platforms take AAC, WebRTC brings Opus.
//!
//! The encoder is the `syom` crate (pure Rust AAC-LC, MIT licence, which
//! AGPL-3.0 code may use; no C library, so neither FDK's licence, which is
//! not GPL-compatible, nor a libavcodec build is involved). The sans-I/O
//! [`OpusToAac`] turns one Opus packet into zero or more AAC access units
//! on the stream's 90 kHz clock; [`spawn`] runs it off the publisher's task
//! behind a bounded queue and hands the units to the stream's side track,
//! where every push of the stream picks them up as it does an RTMP
//! publisher's own AAC.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::warn;

use crate::hub::{Frame, FrameSink, Kind, SourceAac, Stream};

const SAMPLE_RATE: u32 = 48_000;
/// Largest Opus frame: 120 ms at 48 kHz, per channel.
const MAX_OPUS_SAMPLES: usize = 5760;
const AAC_BITRATE: u32 = 128_000;
/// AAC-LC frames are 1024 samples; the encoder delays its output by one.
const AAC_FRAME: u32 = 1024;
/// A jump in the Opus clock larger than this (a takeover, lost audio)
/// restarts the encoder on the new time instead of stretching it.
const MAX_GAP_SAMPLES: u32 = SAMPLE_RATE / 5;
/// Opus packets waiting for the transcoder (2 s at 20 ms). The hub's audio
/// frames are single RTP payloads (a WebRTC publisher's, or the AAC→Opus
/// transcoder's), so this count bounds the bytes too: under 7 MB even of
/// 64 KiB datagrams.
const QUEUE: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    #[error("Opus decoder: {0}")]
    Opus(#[from] opus::Error),
    #[error("AAC encoder: {0}")]
    Aac(String),
}

pub struct OpusToAac {
    decoder: opus::Decoder,
    encoder: syom::Encoder,
    config: Bytes,
    pcm: Vec<f32>,
    left: Vec<f32>,
    right: Vec<f32>,
    /// 48 kHz stream time of the first sample fed since the last restart,
    /// and the AAC frames out since then.
    base: Option<u32>,
    next_expected: u32,
    frames_out: u32,
}

impl OpusToAac {
    pub fn new() -> Result<Self, TranscodeError> {
        let mut opts = syom::EncodeOptions::raw();
        opts.bitrate_bps = AAC_BITRATE;
        let encoder = syom::Encoder::new(SAMPLE_RATE, 2, &opts)
            .map_err(|e| TranscodeError::Aac(e.to_string()))?;
        Ok(OpusToAac {
            decoder: opus::Decoder::new(SAMPLE_RATE, opus::Channels::Stereo)?,
            config: Bytes::copy_from_slice(encoder.asc()),
            encoder,
            pcm: vec![0.0; MAX_OPUS_SAMPLES * 2],
            left: Vec::with_capacity(MAX_OPUS_SAMPLES),
            right: Vec::with_capacity(MAX_OPUS_SAMPLES),
            base: None,
            next_expected: 0,
            frames_out: 0,
        })
    }

    /// The AudioSpecificConfig of what [`OpusToAac::push`] emits.
    pub fn config(&self) -> &Bytes {
        &self.config
    }

    /// One Opus packet at `rtp_48k` (the hub's audio clock); `out` gets each
    /// AAC access unit with its time on the 90 kHz video clock.
    pub fn push(
        &mut self,
        rtp_48k: u32,
        packet: &[u8],
        mut out: impl FnMut(Bytes, u32),
    ) -> Result<(), TranscodeError> {
        if self.base.is_some() && rtp_48k.wrapping_sub(self.next_expected) > MAX_GAP_SAMPLES {
            // wrapping_sub: a step back is a huge number too.
            self.encoder
                .reset()
                .map_err(|e| TranscodeError::Aac(e.to_string()))?;
            self.base = None;
        }
        let base = *self.base.get_or_insert_with(|| {
            self.frames_out = 0;
            rtp_48k
        });
        let n = self.decoder.decode_float(packet, &mut self.pcm, false)?;
        self.next_expected = rtp_48k.wrapping_add(n as u32);
        self.left.clear();
        self.right.clear();
        for s in self.pcm[..n * 2].chunks_exact(2) {
            // The encoder refuses samples outside [-1, 1]; Opus may overshoot.
            self.left.push(s[0].clamp(-1.0, 1.0));
            self.right.push(s[1].clamp(-1.0, 1.0));
        }
        let frames_out = &mut self.frames_out;
        self.encoder
            .feed(&[&self.left, &self.right], |f| {
                // The first unit is the encoder's priming: it sits one
                // frame before the first sample.
                let t48 = base
                    .wrapping_add(*frames_out * AAC_FRAME)
                    .wrapping_sub(AAC_FRAME);
                *frames_out += 1;
                out(Bytes::copy_from_slice(f.payload), to_90k(t48));
                Ok(())
            })
            .map_err(|e| TranscodeError::Aac(e.to_string()))?;
        Ok(())
    }
}

/// The hub's 48 kHz audio clock on its 90 kHz video clock (both count from
/// the same stream time; exact for the first 24 h of a stream's clock).
fn to_90k(t48: u32) -> u32 {
    (u64::from(t48) * 15 / 8) as u32
}

/// Feeds the transcoder task without blocking the publisher: a full queue
/// drops the packet (the destination hears a gap, viewers nothing).
struct OpusSink {
    tx: mpsc::Sender<Arc<Frame>>,
}

impl FrameSink for OpusSink {
    fn deliver(&self, _stream: &Arc<Stream>, frame: &Arc<Frame>) {
        if frame.kind == Kind::Audio {
            let _ = self.tx.try_send(frame.clone());
        }
    }
}

/// Whether the stream's current publisher sends Opus of its own (WebRTC),
/// rather than Opus transcoded from an RTMP publisher's AAC (whose AAC the
/// side track already carries).
fn publisher_sends_opus(stream: &Stream) -> bool {
    stream
        .media_info()
        .audio
        .is_some_and(|a| a.codec == "opus" && a.source_codec.is_none())
}

/// Starts the stream's transcoder, attached to its frames under `sink_id`;
/// it ends when the returned handle is aborted (detach the sink too).
pub fn spawn(stream: &Arc<Stream>, sink_id: u64) -> tokio::task::JoinHandle<()> {
    let (tx, mut rx) = mpsc::channel::<Arc<Frame>>(QUEUE);
    let sink: Arc<dyn FrameSink> = Arc::new(OpusSink { tx });
    stream.attach_sink(sink_id, &sink);
    let stream = stream.clone();
    tokio::spawn(async move {
        let mut t = match OpusToAac::new() {
            Ok(t) => t,
            Err(e) => {
                warn!(stream = %stream.name, "restream: no Opus→AAC transcoder: {e}");
                return;
            }
        };
        let mut publisher = None;
        let mut transcode = false;
        let mut logged = false;
        while let Some(frame) = rx.recv().await {
            if publisher != Some(frame.publisher) {
                publisher = Some(frame.publisher);
                transcode = publisher_sends_opus(&stream);
            }
            if !transcode {
                continue;
            }
            let config = t.config().clone();
            let res = t.push(
                frame.rtp_time,
                &frame.payloads[0],
                |payload, rtp_time_90k| {
                    stream.deliver_side_aac(&Arc::new(SourceAac {
                        config: config.clone(),
                        payload,
                        rtp_time_90k,
                        publisher: frame.publisher,
                    }));
                },
            );
            if let Err(e) = res
                && !logged
            {
                logged = true;
                warn!(stream = %stream.name, "restream: Opus→AAC: {e} (further errors not logged)");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opus_becomes_aac_on_the_video_clock_and_decodes() {
        let mut enc =
            opus::Encoder::new(48_000, opus::Channels::Stereo, opus::Application::Audio).unwrap();
        let mut t = OpusToAac::new().unwrap();
        let mut out = Vec::new();
        let start = 480_000u32; // 10 s
        for i in 0..100u32 {
            let pcm: Vec<f32> = (0..960 * 2)
                .map(|k| {
                    ((i * 960 + k as u32 / 2) as f32 * 440.0 * std::f32::consts::TAU / 48_000.0)
                        .sin()
                        * 0.5
                })
                .collect();
            let pkt = enc.encode_vec_float(&pcm, 4000).unwrap();
            t.push(start + i * 960, &pkt, |p, ts| out.push((p, ts)))
                .unwrap();
        }
        // 2 s of audio: about 93 frames of 1024, the first one frame early.
        assert!((90..=95).contains(&out.len()), "{}", out.len());
        assert_eq!(out[0].1, to_90k(start - 1024));
        assert_eq!(
            out[1].1 - out[0].1,
            1920,
            "1024 samples at 48 kHz on a 90 kHz clock"
        );
        let mut adts = Vec::new();
        for (p, _) in &out {
            adts.extend_from_slice(&syom::wrap_adts_au(p, 48_000, 2).unwrap());
        }
        let dec = syom::decode_with(&adts, &syom::DecodeOptions::unbounded()).unwrap();
        assert_eq!(dec.channels.len(), 2);
        let energy: f32 = dec.channels[0][20_000..30_000].iter().map(|s| s * s).sum();
        assert!(energy > 100.0, "the sine survives: {energy}");
        // A jump (a new publisher's clock) restarts on the new time.
        out.clear();
        let later = start + 48_000 * 60;
        for i in 0..10u32 {
            let pkt = enc.encode_vec_float(&[0.0; 1920], 4000).unwrap();
            t.push(later + i * 960, &pkt, |p, ts| out.push((p, ts)))
                .unwrap();
        }
        assert_eq!(out[0].1, to_90k(later - 1024));
    }
}
