//! FLV tag bodies as RTMP delivers them (video, audio, script data) and RTMP
//! timestamp unwrapping. Legacy FLV and Enhanced RTMP (`avc1`/`mp4a` FourCC)
//! headers are understood; other codecs are reported, not parsed.

use bytes::Bytes;
use thiserror::Error;

use super::h264;

/// Legacy FLV video codec id of H.264/AVC.
pub const VIDEO_CODEC_AVC: u8 = 7;
/// Codec id reported for Enhanced RTMP `hvc1` (HEVC).
pub const VIDEO_CODEC_HEVC: u8 = 12;
/// Codec id reported for Enhanced RTMP `av01` (AV1).
pub const VIDEO_CODEC_AV1: u8 = 13;
/// Codec id reported for Enhanced RTMP `vp09` (VP9).
pub const VIDEO_CODEC_VP9: u8 = 14;
/// Codec id reported for any other Enhanced RTMP video FourCC.
pub const VIDEO_CODEC_OTHER_EX: u8 = 15;
/// FLV sound format of AAC.
pub const SOUND_FORMAT_AAC: u8 = 10;
/// FLV sound format that introduces an Enhanced RTMP audio header.
pub const SOUND_FORMAT_EX_HEADER: u8 = 9;

/// Why an FLV tag body could not be used.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FlvError {
    /// The body is shorter than its header says.
    #[error("FLV {0} is truncated")]
    Truncated(&'static str),
    /// The NAL length size is not 1, 2, 3 or 4 (no sequence header seen yet?).
    #[error("invalid NAL length size {0} (expected 1..=4; was the AVC sequence header received?)")]
    BadNalLengthSize(u8),
    /// A length-prefixed NAL unit runs past the end of the tag.
    #[error(
        "NAL unit length {len} at offset {offset} exceeds the {available} bytes left in the video tag"
    )]
    NalOverrun {
        len: usize,
        offset: usize,
        available: usize,
    },
    /// The tag is valid FLV but carries nothing this server can use.
    #[error("{0}")]
    Ignored(&'static str),
    /// The AVC or AAC configuration record is malformed.
    #[error("invalid {what}: {why}")]
    BadConfig { what: &'static str, why: String },
}

/// H.264 decoder configuration from an AVCDecoderConfigurationRecord.
#[derive(Debug, Clone, PartialEq)]
pub struct AvcConfig {
    /// Sequence parameter sets (NAL units without length prefix).
    pub sps: Vec<Bytes>,
    /// Picture parameter sets (NAL units without length prefix).
    pub pps: Vec<Bytes>,
    /// Bytes in each NAL unit's length prefix in coded frames (1, 2 or 4).
    pub nal_length_size: u8,
}

impl AvcConfig {
    /// Parse an AVCDecoderConfigurationRecord (the `avcC` box payload).
    pub fn parse(rec: &Bytes) -> Result<AvcConfig, FlvError> {
        const WHAT: &str = "AVC sequence header";
        let bad = |why: String| FlvError::BadConfig { what: WHAT, why };
        if rec.len() < 7 {
            return Err(bad(format!(
                "{} bytes is too short for a configuration record",
                rec.len()
            )));
        }
        if rec[0] != 1 {
            return Err(bad(format!("configurationVersion {} (expected 1)", rec[0])));
        }
        let nal_length_size = (rec[4] & 0x03) + 1;
        let mut pos = 6;
        let sps = read_param_sets(rec, usize::from(rec[5] & 0x1f), &mut pos)?;
        let num_pps = usize::from(*rec.get(pos).ok_or(FlvError::Truncated(WHAT))?);
        pos += 1;
        let pps = read_param_sets(rec, num_pps, &mut pos)?;
        if sps.is_empty() || pps.is_empty() {
            return Err(bad("no SPS or no PPS".into()));
        }
        if let Some(s) = sps.iter().find(|s| h264::nal_type(s) != h264::NAL_SPS) {
            return Err(bad(format!("SPS entry has NAL type {}", h264::nal_type(s))));
        }
        Ok(AvcConfig {
            sps,
            pps,
            nal_length_size,
        })
    }

    /// Serialize as an AVCDecoderConfigurationRecord (for an fMP4 `avcC` box).
    pub fn to_record(&self) -> Vec<u8> {
        let first = self.sps.first().map(|s| &s[..]).unwrap_or(&[]);
        let byte = |i: usize| first.get(i).copied().unwrap_or(0);
        let mut out = vec![1, byte(1), byte(2), byte(3)];
        out.push(0xfc | (self.nal_length_size.clamp(1, 4) - 1));
        // Counts are limited by the field widths; extra sets are dropped.
        let sps: Vec<_> = self
            .sps
            .iter()
            .filter(|s| s.len() <= 0xffff)
            .take(31)
            .collect();
        out.push(0xe0 | sps.len() as u8);
        for s in sps {
            out.extend_from_slice(&(s.len() as u16).to_be_bytes());
            out.extend_from_slice(s);
        }
        let pps: Vec<_> = self
            .pps
            .iter()
            .filter(|s| s.len() <= 0xffff)
            .take(255)
            .collect();
        out.push(pps.len() as u8);
        for p in pps {
            out.extend_from_slice(&(p.len() as u16).to_be_bytes());
            out.extend_from_slice(p);
        }
        // High profiles carry chroma format and bit depth after the sets (ISO 14496-15 5.3.3.1).
        if let Ok(info) = h264::parse_sps(first)
            && !matches!(info.profile_idc, 66 | 77 | 88)
        {
            out.push(0xfc | (info.chroma_format_idc & 3));
            out.push(0xf8 | (info.bit_depth_luma.saturating_sub(8) & 7));
            out.push(0xf8 | (info.bit_depth_chroma.saturating_sub(8) & 7));
            out.push(0);
        }
        out
    }
}

// `count` 16-bit-length-prefixed parameter sets starting at `pos`.
fn read_param_sets(rec: &Bytes, count: usize, pos: &mut usize) -> Result<Vec<Bytes>, FlvError> {
    const WHAT: &str = "AVC sequence header";
    let mut sets = Vec::with_capacity(count);
    for _ in 0..count {
        let len_bytes = rec.get(*pos..*pos + 2).ok_or(FlvError::Truncated(WHAT))?;
        let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
        *pos += 2;
        if *pos + len > rec.len() {
            return Err(FlvError::Truncated(WHAT));
        }
        if len > 0 {
            sets.push(rec.slice(*pos..*pos + len));
        }
        *pos += len;
    }
    Ok(sets)
}

/// A parsed FLV video tag body.
#[derive(Debug, Clone, PartialEq)]
pub enum FlvVideo {
    /// H.264 decoder configuration; later frames depend on it.
    SequenceHeader(AvcConfig),
    /// One H.264 access unit.
    Frame {
        /// The frame is a keyframe (FLV frame type 1) — a decoder can start here.
        keyframe: bool,
        /// PTS minus DTS in ms (positive with B-frames).
        composition_time_ms: i32,
        /// NAL units without length prefix, zero-copy slices of the body.
        nalus: Vec<Bytes>,
    },
    /// The publisher ended the H.264 sequence.
    EndOfSequence,
    /// A codec other than H.264 (see [`video_codec_name`]).
    Unsupported {
        /// Legacy FLV codec id, or a `VIDEO_CODEC_*` id for Enhanced RTMP FourCCs.
        codec_id: u8,
    },
}

/// Human-readable name of an FLV video codec id (for error messages).
pub fn video_codec_name(codec_id: u8) -> &'static str {
    match codec_id {
        2 => "Sorenson H.263",
        3 => "Screen Video",
        4 => "VP6",
        5 => "VP6 with alpha",
        6 => "Screen Video 2",
        VIDEO_CODEC_AVC => "H.264",
        VIDEO_CODEC_HEVC => "HEVC",
        VIDEO_CODEC_AV1 => "AV1",
        VIDEO_CODEC_VP9 => "VP9",
        _ => "unknown video codec",
    }
}

/// Human-readable name of an FLV sound format (for error messages).
pub fn audio_codec_name(sound_format: u8) -> &'static str {
    match sound_format {
        0 | 3 => "PCM",
        1 => "ADPCM",
        2 | 14 => "MP3",
        4..=6 => "Nellymoser",
        7 => "G.711 A-law",
        8 => "G.711 mu-law",
        SOUND_FORMAT_EX_HEADER => "Enhanced RTMP audio (non-AAC)",
        SOUND_FORMAT_AAC => "AAC",
        11 => "Speex",
        _ => "unknown audio codec",
    }
}

fn si24(b: &[u8]) -> i32 {
    // Sign-extend by placing the 24 bits at the top of an i32 and shifting back.
    (i32::from_be_bytes([b[0], b[1], b[2], 0])) >> 8
}

/// Split length-prefixed (AVCC) NAL units into zero-copy slices; empty NAL
/// units are skipped.
pub fn split_avcc(data: &Bytes, nal_length_size: u8) -> Result<Vec<Bytes>, FlvError> {
    if !(1..=4).contains(&nal_length_size) {
        return Err(FlvError::BadNalLengthSize(nal_length_size));
    }
    let n = usize::from(nal_length_size);
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let prefix = data
            .get(pos..pos + n)
            .ok_or(FlvError::Truncated("NAL length prefix"))?;
        let len = prefix
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        pos += n;
        let available = data.len() - pos;
        if len > available {
            return Err(FlvError::NalOverrun {
                len,
                offset: pos - n,
                available,
            });
        }
        if len > 0 {
            out.push(data.slice(pos..pos + len));
        }
        pos += len;
    }
    Ok(out)
}

fn frame_nalus(data: &Bytes, nal_length_size: u8) -> Result<Vec<Bytes>, FlvError> {
    match split_avcc(data, nal_length_size) {
        Ok(n) => Ok(n),
        // Some hardware encoders put Annex B start codes in FLV; accept them.
        Err(e) if data.starts_with(&[0, 0, 0, 1]) || data.starts_with(&[0, 0, 1]) => {
            let n = h264::split_annexb(data);
            if n.is_empty() { Err(e) } else { Ok(n) }
        }
        Err(e) => Err(e),
    }
}

/// Parse an FLV video tag body. `nal_length_size` comes from the last
/// sequence header (4 for every common encoder).
pub fn parse_video(body: &Bytes, nal_length_size: u8) -> Result<FlvVideo, FlvError> {
    let first = *body.first().ok_or(FlvError::Truncated("video tag"))?;
    if first & 0x80 != 0 {
        return parse_video_ex(body, nal_length_size);
    }
    let frame_type = first >> 4;
    let codec_id = first & 0x0f;
    if frame_type == 5 {
        return Err(FlvError::Ignored(
            "video info/command frame carries no picture",
        ));
    }
    if codec_id != VIDEO_CODEC_AVC {
        return Ok(FlvVideo::Unsupported { codec_id });
    }
    if body.len() < 5 {
        return Err(FlvError::Truncated("AVC video tag header"));
    }
    let keyframe = frame_type == 1 || frame_type == 4;
    let payload = body.slice(5..);
    match body[1] {
        0 => Ok(FlvVideo::SequenceHeader(AvcConfig::parse(&payload)?)),
        1 => Ok(FlvVideo::Frame {
            keyframe,
            composition_time_ms: si24(&body[2..5]),
            nalus: frame_nalus(&payload, nal_length_size)?,
        }),
        2 => Ok(FlvVideo::EndOfSequence),
        _ => Err(FlvError::Ignored("unknown AVC packet type")),
    }
}

// Enhanced RTMP (veovera enhanced-rtmp v1/v2) video header: IsExHeader bit,
// 3-bit frame type, 4-bit packet type, FourCC.
fn parse_video_ex(body: &Bytes, nal_length_size: u8) -> Result<FlvVideo, FlvError> {
    let first = body[0];
    let frame_type = (first >> 4) & 0x07;
    let packet_type = first & 0x0f;
    if packet_type == 6 || packet_type == 7 {
        return Err(FlvError::Ignored(
            "Enhanced RTMP multitrack/ModEx video is not supported",
        ));
    }
    let fourcc = body
        .get(1..5)
        .ok_or(FlvError::Truncated("Enhanced RTMP video header"))?;
    let codec_id = match fourcc {
        b"avc1" => VIDEO_CODEC_AVC,
        b"hvc1" => VIDEO_CODEC_HEVC,
        b"av01" => VIDEO_CODEC_AV1,
        b"vp09" => VIDEO_CODEC_VP9,
        _ => VIDEO_CODEC_OTHER_EX,
    };
    if codec_id != VIDEO_CODEC_AVC {
        return Ok(FlvVideo::Unsupported { codec_id });
    }
    if frame_type == 5 {
        return Err(FlvError::Ignored(
            "video info/command frame carries no picture",
        ));
    }
    let keyframe = frame_type == 1 || frame_type == 4;
    match packet_type {
        0 => Ok(FlvVideo::SequenceHeader(AvcConfig::parse(
            &body.slice(5..),
        )?)),
        1 => {
            let cts = body
                .get(5..8)
                .ok_or(FlvError::Truncated("Enhanced RTMP video header"))?;
            Ok(FlvVideo::Frame {
                keyframe,
                composition_time_ms: si24(cts),
                nalus: frame_nalus(&body.slice(8..), nal_length_size)?,
            })
        }
        // CodedFramesX: composition time is implicitly zero.
        3 => Ok(FlvVideo::Frame {
            keyframe,
            composition_time_ms: 0,
            nalus: frame_nalus(&body.slice(5..), nal_length_size)?,
        }),
        2 => Ok(FlvVideo::EndOfSequence),
        _ => Err(FlvError::Ignored(
            "Enhanced RTMP video metadata packet ignored",
        )),
    }
}

/// AAC decoder configuration from an AudioSpecificConfig (ISO 14496-3 1.6.2.1).
#[derive(Debug, Clone, PartialEq)]
pub struct AudioSpecificConfig {
    /// Audio object type as signalled: 2 = AAC-LC, 5 = HE-AAC (SBR), 29 = HE-AACv2 (PS).
    pub object_type: u8,
    /// Output sample rate in Hz (the SBR rate for HE-AAC).
    pub sample_rate: u32,
    /// Channel count; 0 when the layout is in a program config element.
    pub channels: u8,
    /// The AudioSpecificConfig bytes as received.
    pub raw: Bytes,
    /// SBR or PS is present (explicitly or by backward-compatible signalling).
    pub sbr: bool,
    /// Samples per frame: 1024, or 960 when frameLengthFlag is set.
    pub frame_length: u16,
}

impl AudioSpecificConfig {
    /// Parse an AudioSpecificConfig.
    pub fn parse(raw: &Bytes) -> Result<AudioSpecificConfig, FlvError> {
        let mut r = Bits { data: raw, pos: 0 };
        let bad = |why: String| FlvError::BadConfig {
            what: "AAC AudioSpecificConfig",
            why,
        };
        let truncated = |_| FlvError::Truncated("AAC AudioSpecificConfig");
        let object_type = r.object_type().map_err(truncated)?;
        let mut sample_rate = r.sample_rate().map_err(truncated)?.map_err(bad)?;
        let channel_config = r.read(4).map_err(truncated)? as u8;
        let mut sbr = false;
        let mut core_type = object_type;
        if object_type == 5 || object_type == 29 {
            sbr = true;
            sample_rate = r.sample_rate().map_err(truncated)?.map_err(bad)?;
            core_type = r.object_type().map_err(truncated)?;
            if core_type == 22 {
                r.read(4).map_err(truncated)?;
            }
        }
        let mut frame_length = 1024;
        // GASpecificConfig: only the AAC family (1..4, 6, 7, 17, 19..23) has one.
        if matches!(core_type, 1..=4 | 6 | 7 | 17 | 19..=23) {
            if r.read(1).map_err(truncated)? == 1 {
                frame_length = 960;
            }
            // Truncation here is normal: the SBR extension is optional.
            if !sbr && let Ok((found, rate)) = implicit_sbr(&mut r, core_type, channel_config) {
                sbr = found;
                sample_rate = rate.unwrap_or(sample_rate);
            }
        }
        let channels = match channel_config {
            0 => 0,
            1..=6 => channel_config,
            7 | 12 | 14 => 8,
            11 => 7,
            13 => 24,
            other => return Err(bad(format!("reserved channel configuration {other}"))),
        };
        Ok(AudioSpecificConfig {
            object_type,
            sample_rate,
            channels,
            raw: raw.clone(),
            sbr,
            frame_length,
        })
    }

    /// RFC 6381 codec string, e.g. `mp4a.40.2`.
    pub fn codec_string(&self) -> String {
        format!("mp4a.40.{}", self.object_type)
    }
}

// Rest of GASpecificConfig, then backward-compatible SBR signalling (sync
// extension 0x2b7 at the end of the config). Returns whether SBR is present
// and its output rate.
fn implicit_sbr(
    r: &mut Bits<'_>,
    core_type: u8,
    channel_config: u8,
) -> Result<(bool, Option<u32>), ()> {
    if r.read(1)? == 1 {
        r.read(14)?; // coreCoderDelay
    }
    let ext = r.read(1)?;
    if channel_config == 0 {
        return Err(()); // a program config element follows; not parsed
    }
    if matches!(core_type, 6 | 20) {
        r.read(3)?; // layerNr
    }
    if ext == 1 {
        if core_type == 22 {
            r.read(16)?;
        }
        if matches!(core_type, 17 | 19 | 20 | 23) {
            r.read(3)?;
        }
        r.read(1)?; // extensionFlag3
    }
    if r.left() >= 16 && r.read(11)? == 0x2b7 && r.object_type()? == 5 && r.read(1)? == 1 {
        return Ok((true, r.sample_rate()?.ok()));
    }
    Ok((false, None))
}

// MSB-first bit reader for AudioSpecificConfig (no emulation prevention).
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn left(&self) -> usize {
        (self.data.len() * 8).saturating_sub(self.pos)
    }

    fn read(&mut self, n: usize) -> Result<u32, ()> {
        if n > self.left() {
            return Err(());
        }
        let mut v = 0u32;
        for _ in 0..n {
            let bit = (self.data[self.pos / 8] >> (7 - self.pos % 8)) & 1;
            v = (v << 1) | u32::from(bit);
            self.pos += 1;
        }
        Ok(v)
    }

    fn object_type(&mut self) -> Result<u8, ()> {
        let t = self.read(5)?;
        Ok(if t == 31 { 32 + self.read(6)? } else { t } as u8)
    }

    // Outer error: truncated; inner error: reserved index.
    fn sample_rate(&mut self) -> Result<Result<u32, String>, ()> {
        const RATES: [u32; 13] = [
            96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
        ];
        let idx = self.read(4)?;
        if idx == 15 {
            let rate = self.read(24)?;
            return Ok(if rate == 0 {
                Err("explicit sample rate 0".into())
            } else {
                Ok(rate)
            });
        }
        Ok(RATES
            .get(idx as usize)
            .copied()
            .ok_or_else(|| format!("reserved sampling frequency index {idx}")))
    }
}

/// A parsed FLV audio tag body.
#[derive(Debug, Clone, PartialEq)]
pub enum FlvAudio {
    /// AAC decoder configuration; later frames depend on it.
    AacSequenceHeader(AudioSpecificConfig),
    /// One raw AAC frame (no ADTS header), zero-copy slice of the body.
    AacRaw(Bytes),
    /// A sound format other than AAC (see [`audio_codec_name`]).
    Unsupported {
        /// FLV sound format (9 = Enhanced RTMP with a non-AAC FourCC).
        sound_format: u8,
    },
}

/// Parse an FLV audio tag body.
pub fn parse_audio(body: &Bytes) -> Result<FlvAudio, FlvError> {
    let first = *body.first().ok_or(FlvError::Truncated("audio tag"))?;
    let sound_format = first >> 4;
    if sound_format == SOUND_FORMAT_EX_HEADER {
        // Enhanced RTMP v2: packet type in the low nibble, then a FourCC.
        let packet_type = first & 0x0f;
        let fourcc = body
            .get(1..5)
            .ok_or(FlvError::Truncated("Enhanced RTMP audio header"))?;
        if fourcc != b"mp4a" {
            return Ok(FlvAudio::Unsupported { sound_format });
        }
        return match packet_type {
            0 => Ok(FlvAudio::AacSequenceHeader(AudioSpecificConfig::parse(
                &body.slice(5..),
            )?)),
            1 => Ok(FlvAudio::AacRaw(body.slice(5..))),
            _ => Err(FlvError::Ignored(
                "Enhanced RTMP audio packet type not supported",
            )),
        };
    }
    if sound_format != SOUND_FORMAT_AAC {
        return Ok(FlvAudio::Unsupported { sound_format });
    }
    match body.get(1) {
        None => Err(FlvError::Truncated("AAC audio tag header")),
        Some(0) => Ok(FlvAudio::AacSequenceHeader(AudioSpecificConfig::parse(
            &body.slice(2..),
        )?)),
        Some(1) => Ok(FlvAudio::AacRaw(body.slice(2..))),
        Some(_) => Err(FlvError::Ignored("unknown AAC packet type")),
    }
}

/// Stream properties from `onMetaData` / `@setDataFrame` (read by the RTMP core).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    /// Video width in pixels.
    pub width: Option<f64>,
    /// Video height in pixels.
    pub height: Option<f64>,
    /// Frames per second.
    pub framerate: Option<f64>,
    /// Video bitrate in kbit/s.
    pub videodatarate: Option<f64>,
    /// Audio bitrate in kbit/s.
    pub audiodatarate: Option<f64>,
    /// Encoder name, e.g. "obs-output module (libobs version 30.0.0)".
    pub encoder: Option<String>,
}

/// Extends 32-bit RTMP millisecond timestamps (which wrap after ~49.7 days)
/// to i64. Each value is placed at the signed 32-bit distance from the
/// previous one, so wrap-around continues forward and small backward steps
/// (audio/video interleaving jitter) stay small instead of looking like a wrap.
#[derive(Debug, Clone, Default)]
pub struct TimestampUnwrapper {
    last: Option<(u32, i64)>,
}

impl TimestampUnwrapper {
    /// A fresh unwrapper; the first timestamp is taken as-is.
    pub fn new() -> Self {
        Self::default()
    }

    /// Extended ms value for the RTMP timestamp `ts`.
    pub fn unwrap(&mut self, ts: u32) -> i64 {
        let ext = match self.last {
            None => i64::from(ts),
            Some((raw, ext)) => ext + i64::from(ts.wrapping_sub(raw) as i32),
        };
        self.last = Some((ts, ext));
        ext
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::media::h264::{self, tests::escape};

    /// ffmpeg: testsrc2 320x180 x264 `-bf 2 -g 30` + 44.1 kHz stereo AAC-LC, 1 s.
    pub(crate) const AV_FLV: &[u8] = include_bytes!("testdata/av_bf2_aac44k.flv");
    /// ffmpeg: 44.1 kHz stereo AAC-LC, silence then L 440 Hz / R 1000 Hz from 0.5 s.
    pub(crate) const AAC44_FLV: &[u8] = include_bytes!("testdata/aac44k_stereo_onset500.flv");
    /// ffmpeg: 48 kHz mono AAC-LC, silence then 440 Hz from 0.5 s.
    pub(crate) const AAC48_MONO_FLV: &[u8] = include_bytes!("testdata/aac48k_mono_onset500.flv");

    /// One tag of an FLV file: (tag type, timestamp ms, body).
    pub(crate) type Tag = (u8, u32, Bytes);

    /// Minimal FLV file reader for tests: yields tag bodies as RTMP would.
    pub(crate) fn flv_tags(file: &'static [u8]) -> Vec<Tag> {
        let data = Bytes::from_static(file);
        assert_eq!(&data[..3], b"FLV");
        let mut pos = u32::from_be_bytes([data[5], data[6], data[7], data[8]]) as usize + 4;
        let mut tags = Vec::new();
        while pos + 11 <= data.len() {
            let t = data[pos] & 0x1f;
            let size =
                u32::from_be_bytes([0, data[pos + 1], data[pos + 2], data[pos + 3]]) as usize;
            let ts =
                u32::from_be_bytes([data[pos + 7], data[pos + 4], data[pos + 5], data[pos + 6]]);
            tags.push((t, ts, data.slice(pos + 11..pos + 11 + size)));
            pos += 11 + size + 4;
        }
        tags
    }

    /// The AAC config and (pts ms, raw frame) list of an FLV fixture.
    pub(crate) fn aac_track(file: &'static [u8]) -> (AudioSpecificConfig, Vec<(i64, Bytes)>) {
        let mut asc = None;
        let mut frames = Vec::new();
        for (t, ts, body) in flv_tags(file) {
            if t != 8 {
                continue;
            }
            match parse_audio(&body).unwrap() {
                FlvAudio::AacSequenceHeader(a) => asc = Some(a),
                FlvAudio::AacRaw(f) => frames.push((i64::from(ts), f)),
                FlvAudio::Unsupported { .. } => panic!("fixture is AAC"),
            }
        }
        (asc.expect("fixture has an AAC sequence header"), frames)
    }

    #[test]
    fn ffmpeg_flv_video_track() {
        let mut cfg = None;
        let mut frames = 0;
        let mut keyframes = 0;
        let mut b_frames = 0;
        let mut negative_or_positive_cts = false;
        for (t, _, body) in flv_tags(AV_FLV) {
            if t != 9 {
                continue;
            }
            let n = cfg.as_ref().map_or(4, |c: &AvcConfig| c.nal_length_size);
            match parse_video(&body, n).unwrap() {
                FlvVideo::SequenceHeader(c) => {
                    assert_eq!(c.nal_length_size, 4);
                    assert_eq!(c.sps.len(), 1);
                    assert_eq!(c.pps.len(), 1);
                    let sps = h264::parse_sps(&c.sps[0]).unwrap();
                    assert_eq!((sps.width, sps.height), (320, 180));
                    assert_eq!(h264::nal_type(&c.pps[0]), h264::NAL_PPS);
                    // The record we write back must parse to the same sets.
                    let back = AvcConfig::parse(&Bytes::from(c.to_record())).unwrap();
                    assert_eq!(back, c);
                    assert_eq!(&c.to_record()[..], &body[5..], "byte-exact avcC");
                    cfg = Some(c);
                }
                FlvVideo::Frame {
                    keyframe,
                    composition_time_ms,
                    nalus,
                } => {
                    frames += 1;
                    assert!(!nalus.is_empty());
                    // Zero-copy: every NAL points into the tag body.
                    for nal in &nalus {
                        let off = nal.as_ptr() as usize - body.as_ptr() as usize;
                        assert!(off < body.len());
                    }
                    if keyframe {
                        keyframes += 1;
                        assert!(h264::is_idr_frame(&nalus));
                    }
                    if h264::frame_has_b_slice(&nalus) {
                        b_frames += 1;
                    }
                    negative_or_positive_cts |= composition_time_ms != 0;
                }
                FlvVideo::EndOfSequence => {}
                FlvVideo::Unsupported { codec_id } => panic!("codec {codec_id}"),
            }
        }
        assert_eq!(frames, 30);
        assert_eq!(keyframes, 1);
        assert!(b_frames > 5, "x264 -bf 2 makes B-frames, saw {b_frames}");
        assert!(negative_or_positive_cts);
    }

    #[test]
    fn ffmpeg_flv_audio_track() {
        let (asc, frames) = aac_track(AV_FLV);
        assert_eq!(asc.object_type, 2);
        assert_eq!(asc.sample_rate, 44100);
        assert_eq!(asc.channels, 2);
        assert_eq!(asc.frame_length, 1024);
        assert!(!asc.sbr);
        assert_eq!(asc.codec_string(), "mp4a.40.2");
        assert!(frames.len() >= 43);
        assert!(frames.iter().all(|(_, f)| !f.is_empty()));
    }

    #[test]
    fn composition_time_is_signed_24_bit() {
        let body = Bytes::from_static(&[0x27, 1, 0xff, 0xff, 0xfe, 0, 0, 0, 2, 0x41, 0x9a]);
        match parse_video(&body, 4).unwrap() {
            FlvVideo::Frame {
                keyframe,
                composition_time_ms,
                nalus,
            } => {
                assert!(!keyframe);
                assert_eq!(composition_time_ms, -2);
                assert_eq!(&nalus[0][..], &[0x41, 0x9a]);
            }
            other => panic!("{other:?}"),
        }
        let body = Bytes::from_static(&[0x17, 1, 0x00, 0x00, 0x42, 0, 2, 0x65, 0x88]);
        match parse_video(&body, 2).unwrap() {
            FlvVideo::Frame {
                keyframe,
                composition_time_ms,
                nalus,
            } => {
                assert!(keyframe);
                assert_eq!(composition_time_ms, 66);
                assert_eq!(nalus.len(), 1);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn other_codecs_and_packet_kinds() {
        let vp6 = Bytes::from_static(&[0x14, 0, 0]);
        assert_eq!(
            parse_video(&vp6, 4).unwrap(),
            FlvVideo::Unsupported { codec_id: 4 }
        );
        let eos = Bytes::from_static(&[0x17, 2, 0, 0, 0]);
        assert_eq!(parse_video(&eos, 4).unwrap(), FlvVideo::EndOfSequence);
        // Enhanced RTMP HEVC sequence start.
        let hevc = Bytes::from_static(&[0x90, b'h', b'v', b'c', b'1', 1, 2, 3]);
        assert_eq!(
            parse_video(&hevc, 4).unwrap(),
            FlvVideo::Unsupported {
                codec_id: VIDEO_CODEC_HEVC
            }
        );
        assert_eq!(video_codec_name(VIDEO_CODEC_HEVC), "HEVC");
        // Enhanced RTMP avc1 CodedFramesX (no composition time).
        let ex = Bytes::from_static(&[0x93, b'a', b'v', b'c', b'1', 0, 0, 0, 1, 0x65]);
        assert_eq!(
            parse_video(&ex, 4).unwrap(),
            FlvVideo::Frame {
                keyframe: true,
                composition_time_ms: 0,
                nalus: vec![Bytes::from_static(&[0x65])]
            }
        );
        let mp3 = Bytes::from_static(&[0x2f, 0xff]);
        assert_eq!(
            parse_audio(&mp3).unwrap(),
            FlvAudio::Unsupported { sound_format: 2 }
        );
        assert_eq!(audio_codec_name(2), "MP3");
        let ex_aac = Bytes::from_static(&[0x91, b'm', b'p', b'4', b'a', 0x21, 0x10]);
        assert_eq!(
            parse_audio(&ex_aac).unwrap(),
            FlvAudio::AacRaw(Bytes::from_static(&[0x21, 0x10]))
        );
        let ex_opus = Bytes::from_static(&[0x90, b'O', b'p', b'u', b's', 1]);
        assert_eq!(
            parse_audio(&ex_opus).unwrap(),
            FlvAudio::Unsupported { sound_format: 9 }
        );
        let info = Bytes::from_static(&[0x57, 0]);
        assert!(matches!(parse_video(&info, 4), Err(FlvError::Ignored(_))));
    }

    #[test]
    fn annexb_inside_flv_is_accepted() {
        let body = Bytes::from_static(&[
            0x17, 1, 0, 0, 0, 0, 0, 0, 1, 0x67, 0x42, 0, 0, 0, 1, 0x65, 0x88, 0x84,
        ]);
        // AVCC parse fails (length 1 then 0x67420000 overruns), Annex B works.
        match parse_video(&body, 4).unwrap() {
            FlvVideo::Frame { nalus, .. } => {
                assert_eq!(nalus.len(), 2);
                assert_eq!(h264::nal_type(&nalus[1]), h264::NAL_IDR);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn audio_specific_configs() {
        let asc = |b: &'static [u8]| AudioSpecificConfig::parse(&Bytes::from_static(b));
        // AAC-LC 48 kHz mono.
        let a = asc(&[0x11, 0x88]).unwrap();
        assert_eq!(
            (a.object_type, a.sample_rate, a.channels, a.sbr),
            (2, 48000, 1, false)
        );
        // Explicit HE-AAC: AOT 5, core 22.05 kHz stereo, SBR 44.1 kHz, core AOT 2.
        let a = asc(&[0x2b, 0x92, 0x08, 0x00]).unwrap();
        assert_eq!(
            (a.object_type, a.sample_rate, a.channels, a.sbr),
            (5, 44100, 2, true)
        );
        // Backward-compatible HE-AAC: LC 22.05 kHz stereo + sync extension 0x2b7, SBR 44.1 kHz.
        let a = asc(&[0x13, 0x90, 0x56, 0xe5, 0xa0]).unwrap();
        assert_eq!(
            (a.object_type, a.sample_rate, a.channels, a.sbr),
            (2, 44100, 2, true)
        );
        // 960-sample frames.
        let a = asc(&[0x11, 0x8c]).unwrap();
        assert_eq!(a.frame_length, 960);
        // Reserved rate index 13, truncated, reserved channel config.
        assert!(asc(&[0x16, 0x88]).is_err());
        assert!(asc(&[0x11]).is_err());
        assert!(asc(&[0x11, 0xf8]).is_err());
    }

    #[test]
    fn avc_config_errors_are_clear() {
        let e = AvcConfig::parse(&Bytes::from_static(&[
            1, 0x64, 0, 0x1f, 0xff, 0xe1, 0, 30, 0x67,
        ]))
        .unwrap_err();
        assert_eq!(e.to_string(), "FLV AVC sequence header is truncated");
        let e = parse_video(&Bytes::from_static(&[0x17, 0]), 4).unwrap_err();
        assert_eq!(e.to_string(), "FLV AVC video tag header is truncated");
        let e = parse_video(
            &Bytes::from_static(&[0x27, 1, 0, 0, 0, 0, 0, 2, 0, 0x41]),
            4,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "NAL unit length 512 at offset 0 exceeds the 1 bytes left in the video tag"
        );
        let e = parse_video(&Bytes::from_static(&[0x27, 1, 0, 0, 0, 1]), 0).unwrap_err();
        assert_eq!(e, FlvError::BadNalLengthSize(0));
        // A real SPS with escape bytes survives the round trip through the record.
        let sps = Bytes::from(escape(&[0x67, 0x42, 0xc0, 0x1e, 0, 0, 1, 0x80]));
        let cfg = AvcConfig {
            sps: vec![sps],
            pps: vec![Bytes::from_static(&[0x68, 0xce])],
            nal_length_size: 4,
        };
        assert_eq!(
            AvcConfig::parse(&Bytes::from(cfg.to_record())).unwrap(),
            cfg
        );
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 99u32;
        let tags = flv_tags(AV_FLV);
        for (_, _, body) in tags.iter().take(12) {
            for len in 0..body.len().min(64) {
                let b = body.slice(..len);
                let _ = parse_video(&b, 4);
                let _ = parse_audio(&b);
            }
            for _ in 0..300 {
                let mut v = body.to_vec();
                for _ in 0..4 {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    let i = (seed as usize >> 4) % v.len().min(40);
                    v[i] = (seed >> 16) as u8;
                }
                let b = Bytes::from(v);
                for n in 0..6 {
                    let _ = parse_video(&b, n);
                }
                let _ = parse_audio(&b);
                if b.len() > 2 {
                    let _ = AudioSpecificConfig::parse(&b.slice(2..));
                    let _ = AvcConfig::parse(&b.slice(2..));
                }
            }
        }
    }

    #[test]
    fn timestamp_unwrapping() {
        let mut u = TimestampUnwrapper::new();
        assert_eq!(u.unwrap(1000), 1000);
        assert_eq!(u.unwrap(1033), 1033);
        // Audio/video interleaving may step back a little: no wrap.
        assert_eq!(u.unwrap(1020), 1020);
        assert_eq!(u.unwrap(1066), 1066);
        let mut u = TimestampUnwrapper::new();
        assert_eq!(u.unwrap(u32::MAX - 10), i64::from(u32::MAX) - 10);
        assert_eq!(u.unwrap(5), i64::from(u32::MAX) + 6);
        assert_eq!(u.unwrap(u32::MAX - 1), i64::from(u32::MAX) - 1);
        assert_eq!(u.unwrap(40), i64::from(u32::MAX) + 41);
        // Ten wraps in 1-day steps stay monotonic.
        let mut u = TimestampUnwrapper::new();
        let mut raw = 0u32;
        let mut last = -1;
        for _ in 0..500 {
            raw = raw.wrapping_add(86_400_000);
            let v = u.unwrap(raw);
            assert!(v > last);
            last = v;
        }
        assert_eq!(last, 500 * 86_400_000);
    }
}
