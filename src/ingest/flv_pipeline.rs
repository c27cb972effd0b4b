//! FLV media (as RTMP carries it) → hub frames, once per stream: H.264 access
//! units are packetized for RTP with SPS/PPS ahead of every IDR, B-frames are
//! dropped (WebRTC has no frame reordering), AAC is transcoded to Opus.
//!
//! A malformed tag is skipped with a log line; the publish goes on.

use std::sync::Arc;

use bytes::Bytes;
use tracing::{debug, info, warn};

use crate::hub::{AudioInfo, Publisher, PushError, VideoInfo};
use crate::media::flv::{self, AvcConfig, FlvAudio, FlvVideo, TimestampUnwrapper};
use crate::media::h264;
use crate::media::rtp_h264::{H264Packetizer, RTP_MTU_PAYLOAD};
use crate::media::transcode::{AacToOpus, OpusPacket};

/// Opus bitrate for transcoded AAC: 96 kbit/s stereo Opus is transparent for
/// music and speech, and cheaper to encode than matching OBS's 160 kbit/s AAC.
const OPUS_BITRATE: i32 = 96_000;
/// Above this keyframe interval viewers wait too long to start: warn the streamer.
const KEYFRAME_INTERVAL_WARN_MS: u64 = 2_000;

pub struct FlvPipeline {
    publisher: Publisher,
    clock: TimestampUnwrapper,
    avc: Option<AvcConfig>,
    sps: Vec<Bytes>,
    pps: Vec<Bytes>,
    packetizer: H264Packetizer,
    payloads: Vec<Bytes>,
    transcoder: Option<AacToOpus>,
    /// The AudioSpecificConfig, for the original-AAC side track (restreams).
    aac_config: Option<Bytes>,
    opus_out: Vec<OpusPacket>,
    bframes_seen: bool,
    keyint_warned: bool,
    /// Logged once per kind so a broken publisher cannot flood the log.
    bad_tag_logged: bool,
    unsupported_logged: bool,
}

impl FlvPipeline {
    pub fn new(publisher: Publisher) -> Self {
        FlvPipeline {
            publisher,
            clock: TimestampUnwrapper::new(),
            avc: None,
            sps: Vec::new(),
            pps: Vec::new(),
            packetizer: H264Packetizer::new(RTP_MTU_PAYLOAD),
            payloads: Vec::new(),
            transcoder: None,
            aac_config: None,
            opus_out: Vec::new(),
            bframes_seen: false,
            keyint_warned: false,
            bad_tag_logged: false,
            unsupported_logged: false,
        }
    }

    pub fn stream_name(&self) -> &str {
        &self.publisher.stream().name
    }

    fn bad_tag(&mut self, what: &str, err: &dyn std::fmt::Display) {
        if !self.bad_tag_logged {
            warn!(stream = %self.stream_name(), error = %err, "skipping malformed {what} tag (further ones logged at debug)");
            self.bad_tag_logged = true;
        } else {
            debug!(stream = %self.stream_name(), error = %err, "skipping malformed {what} tag");
        }
    }

    pub fn on_metadata(&mut self, m: &flv::Metadata) {
        info!(
            stream = %self.stream_name(),
            width = ?m.width,
            height = ?m.height,
            fps = ?m.framerate,
            video_kbps = ?m.videodatarate,
            audio_kbps = ?m.audiodatarate,
            encoder = ?m.encoder,
            "publisher metadata"
        );
    }

    pub fn on_video(&mut self, body: Bytes, timestamp: u32) -> Result<(), PushError> {
        let dts = self.clock.unwrap(timestamp);
        let nal_len = self.avc.as_ref().map_or(4, |c| c.nal_length_size);
        let parsed = match flv::parse_video(&body, nal_len) {
            Ok(v) => v,
            Err(e) => {
                self.bad_tag("video", &e);
                return Ok(());
            }
        };
        match parsed {
            FlvVideo::SequenceHeader(cfg) => {
                self.sps = cfg.sps.clone();
                self.pps = cfg.pps.clone();
                self.avc = Some(cfg);
                self.update_sps()?;
            }
            FlvVideo::Frame {
                keyframe,
                composition_time_ms,
                nalus,
            } => {
                if self.avc.is_none() {
                    // Without SPS/PPS nothing can decode it; wait for the header.
                    return Ok(());
                }
                self.on_access_unit(dts + i64::from(composition_time_ms), keyframe, nalus)?;
            }
            FlvVideo::EndOfSequence => {}
            FlvVideo::Unsupported { codec_id } => {
                if !self.unsupported_logged {
                    warn!(stream = %self.stream_name(), codec = flv::video_codec_name(codec_id), "video codec not supported over RTMP; send H.264");
                    self.unsupported_logged = true;
                }
            }
        }
        Ok(())
    }

    fn update_sps(&mut self) -> Result<(), PushError> {
        let Some(sps_nal) = self.sps.first() else {
            return Ok(());
        };
        match h264::parse_sps(sps_nal) {
            Ok(sps) => {
                info!(
                    stream = %self.stream_name(),
                    width = sps.width,
                    height = sps.height,
                    profile_level_id = format!("{:06x}", sps.profile_level_id()),
                    "video: H.264"
                );
                self.publisher.set_media(|m| {
                    m.video = Some(VideoInfo {
                        codec: "H264",
                        profile_level_id: Some(sps.profile_level_id()),
                        fmtp: None,
                        width: Some(sps.width),
                        height: Some(sps.height),
                    });
                })?;
                Ok(())
            }
            Err(e) => {
                self.bad_tag("SPS", &e);
                Ok(())
            }
        }
    }

    fn on_access_unit(
        &mut self,
        pts_ms: i64,
        keyframe: bool,
        nalus: Vec<Bytes>,
    ) -> Result<(), PushError> {
        // In-band parameter sets replace the sequence header's.
        let mut new_sps = false;
        for n in &nalus {
            match h264::nal_type(n) {
                h264::NAL_SPS if self.sps.first() != Some(n) => {
                    self.sps = vec![n.clone()];
                    new_sps = true;
                }
                h264::NAL_PPS if self.pps.first() != Some(n) => {
                    self.pps = vec![n.clone()];
                }
                _ => {}
            }
        }
        if new_sps {
            self.update_sps()?;
        }
        if h264::frame_has_b_slice(&nalus) {
            if !self.bframes_seen {
                self.bframes_seen = true;
                self.publisher.note_bframes()?;
                warn!(
                    stream = %self.stream_name(),
                    "publisher sends B-frames, which WebRTC cannot reorder: they are dropped for viewers (lower frame rate). Fix: set bframes=0 in the encoder (OBS x264 options: bframes=0; ffmpeg: -bf 0)"
                );
            }
            return Ok(());
        }
        let keyframe = keyframe || h264::is_idr_frame(&nalus);
        self.payloads.clear();
        let params = (keyframe && !self.sps.is_empty() && !self.pps.is_empty())
            .then_some((self.sps.as_slice(), self.pps.as_slice()));
        self.packetizer
            .packetize(&nalus, params, &mut self.payloads);
        if self.payloads.is_empty() {
            return Ok(());
        }
        let payloads: Box<[Arc<[u8]>]> = self.payloads.iter().map(|p| Arc::from(&p[..])).collect();
        if let Some(interval) = self.publisher.push_video(pts_ms, keyframe, payloads)?
            && interval > KEYFRAME_INTERVAL_WARN_MS
            && !self.keyint_warned
        {
            self.keyint_warned = true;
            warn!(
                stream = %self.stream_name(),
                keyframe_interval_ms = interval,
                "keyframe interval above 2 s: viewers wait that long to start. Fix: keyframe interval 1 s (OBS: Keyframe Interval 1; ffmpeg: -g <fps>)"
            );
        }
        Ok(())
    }

    pub fn on_audio(&mut self, body: Bytes, timestamp: u32) -> Result<(), PushError> {
        let ms = self.clock.unwrap(timestamp);
        let parsed = match flv::parse_audio(&body) {
            Ok(a) => a,
            Err(e) => {
                self.bad_tag("audio", &e);
                return Ok(());
            }
        };
        match parsed {
            FlvAudio::AacSequenceHeader(asc) => {
                self.aac_config = Some(asc.raw.clone());
                self.on_aac_config(&asc)?;
            }
            FlvAudio::AacRaw(frame) => {
                if let Some(config) = &self.aac_config {
                    self.publisher.push_source_aac(ms, config, &frame)?;
                }
                let Some(t) = self.transcoder.as_mut() else {
                    return Ok(());
                };
                self.opus_out.clear();
                if let Err(e) = t.push(&frame, ms, &mut self.opus_out) {
                    self.bad_tag("AAC", &e);
                    return Ok(());
                }
                for p in self.opus_out.drain(..) {
                    self.publisher.push_audio(p.samples_48k as i64, p.payload)?;
                }
            }
            FlvAudio::Unsupported { sound_format } => {
                if !self.unsupported_logged {
                    warn!(stream = %self.stream_name(), codec = flv::audio_codec_name(sound_format), "audio codec not supported; send AAC");
                    self.unsupported_logged = true;
                }
            }
        }
        Ok(())
    }

    fn on_aac_config(&mut self, asc: &flv::AudioSpecificConfig) -> Result<(), PushError> {
        match AacToOpus::new(asc, OPUS_BITRATE) {
            Ok(t) => {
                info!(stream = %self.stream_name(), sample_rate = asc.sample_rate, channels = asc.channels, "audio: AAC, transcoded to Opus 48 kHz stereo");
                self.transcoder = Some(t);
                self.publisher.set_media(|m| {
                    m.audio = Some(AudioInfo {
                        codec: "opus",
                        sample_rate: 48_000,
                        channels: 2,
                        source_codec: Some("aac"),
                    });
                })?;
            }
            Err(e) => {
                warn!(stream = %self.stream_name(), error = %e, "audio cannot be transcoded; viewers get video only. Fix: AAC-LC at 44.1 or 48 kHz");
                self.transcoder = None;
            }
        }
        Ok(())
    }
}
