//! Hub frames → LL-HLS parts and segments, once per stream, without I/O.
//!
//! Video arrives as RTP payloads: H.264 (RFC 6184, from RTMP and WHIP
//! publishers alike) is reassembled into AVCC samples, VP8 and VP9 lose their
//! payload descriptors, AV1 becomes low-overhead OBUs with size fields
//! ([`rtp_video::depacketize`]); the track description comes from the key
//! frame (SPS/PPS, VP9 uncompressed header, AV1 sequence header). Audio
//! arrives as Opus packets and is used as it is. Times are the hub's RTP
//! times on the stream's continuous timeline (90 kHz video, 48 kHz audio),
//! unwrapped to 64 bits.
//!
//! Cutting rules:
//! * a segment starts at a keyframe and ends at the first keyframe at or after
//!   `segment_target` (audio-only streams: at the first packet after it);
//! * a part ends before the frame that would take it past `part_target`, and
//!   at every segment boundary, so parts that begin a segment are independent;
//! * a new publisher (takeover, restart) or a change of the init (SPS/PPS,
//!   audio appearing) ends the segment and marks the next one with
//!   `#EXT-X-DISCONTINUITY`; until the new publisher's first keyframe nothing
//!   is added.

use std::time::SystemTime;

use bytes::Bytes;
use tracing::{debug, warn};

use super::fmp4::{
    self, AUDIO_TRACK, Av1Track, H264Track, Run, Sample, Tracks, VIDEO_TRACK, VideoTrack, Vp8Track,
    Vp9Track,
};
use super::playlist::{Params, Part, Playlist};
use crate::media::rtp_video::{self, VideoCodec};
use crate::media::{av1, h264, opus, rtp_h264, vp8, vp9};

/// Video frame interval assumed until two frames were seen (30 fps).
const DEFAULT_FRAME_TICKS: u64 = 3000;
/// A segment without a keyframe for this long is cut anyway (bounded memory
/// for publishers with very long keyframe intervals), in 90 kHz ticks.
const MAX_SEGMENT_TICKS: u64 = 10 * 90_000;
/// Audio kept in one part while video stalls, before audio is dropped.
const MAX_AUDIO_PER_PART: usize = 256;

/// 32-bit RTP time → 64-bit, following wrap-arounds.
#[derive(Debug, Default)]
struct Unwrap {
    last: Option<u64>,
}

impl Unwrap {
    /// `near`: where this clock should be (the other track's time in this
    /// timescale), so both tracks pick the same number of wraps at the start.
    fn unwrap(&mut self, ts: u32, near: Option<u64>) -> u64 {
        let v = match self.last {
            Some(l) => {
                let d = i64::from(ts.wrapping_sub(l as u32) as i32);
                (l as i64 + d).max(0) as u64
            }
            None => {
                let base = u64::from(ts);
                match near {
                    Some(n) => {
                        let wraps = n.saturating_sub(base).saturating_add(1 << 31) >> 32;
                        base + (wraps << 32)
                    }
                    None => base,
                }
            }
        };
        self.last = Some(v);
        v
    }
}

#[derive(Debug, Default)]
struct PartBuilder {
    /// Start of the part on the 90 kHz clock.
    start: u64,
    independent: bool,
    video: Vec<Sample>,
    video_data: Vec<u8>,
    video_base: u64,
    audio: Vec<Sample>,
    audio_data: Vec<u8>,
    audio_base: u64,
    audio_last: u64,
}

impl PartBuilder {
    fn is_empty(&self) -> bool {
        self.video.is_empty() && self.audio.is_empty()
    }
}

/// What the segmenter was given, for counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct SegmenterStats {
    pub frames_dropped: u64,
    pub parts: u64,
    pub segments: u64,
}

pub struct Segmenter {
    pub playlist: Playlist,
    part_target: u64,
    segment_target: u64,
    publisher: Option<u64>,
    waiting_keyframe: bool,
    discontinuity: bool,
    vclock: Unwrap,
    aclock: Unwrap,
    sps: Option<Vec<u8>>,
    pps: Option<Vec<u8>>,
    audio_seen: bool,
    tracks: Option<Tracks>,
    init_id: u32,
    sequence: u32,
    /// Start of the open segment (90 kHz), None between segments.
    segment_start: Option<u64>,
    part: PartBuilder,
    last_vdts: Option<u64>,
    frame_ticks: u64,
    scratch: Vec<u8>,
    frame: Vec<u8>,
    pub stats: SegmenterStats,
}

fn ticks(seconds: f64) -> u64 {
    (seconds * 90_000.0).round() as u64
}

impl Segmenter {
    pub fn new(params: Params) -> Segmenter {
        Segmenter {
            playlist: Playlist::new(params),
            part_target: ticks(params.part_target),
            segment_target: ticks(params.segment_target),
            publisher: None,
            waiting_keyframe: true,
            discontinuity: false,
            vclock: Unwrap::default(),
            aclock: Unwrap::default(),
            sps: None,
            pps: None,
            audio_seen: false,
            tracks: None,
            init_id: 0,
            sequence: 0,
            segment_start: None,
            part: PartBuilder::default(),
            last_vdts: None,
            frame_ticks: DEFAULT_FRAME_TICKS,
            scratch: Vec::new(),
            frame: Vec::new(),
            stats: SegmenterStats::default(),
        }
    }

    /// Whether a keyframe is due: nothing can be added before one, or the
    /// segment reached its target. WebRTC publishers send keyframes when
    /// asked (the driver asks the hub); RTMP ones on their own interval.
    pub fn wants_keyframe(&self) -> bool {
        let video = self.tracks.as_ref().is_none_or(|t| t.video.is_some());
        video
            && (self.waiting_keyframe
                || self
                    .segment_start
                    .zip(self.last_vdts)
                    .is_some_and(|(s, t)| {
                        t.saturating_sub(s) + self.frame_ticks >= self.segment_target
                    }))
    }

    /// The codec of the current init, e.g. `avc1.64001f,opus`.
    pub fn codecs(&self) -> Option<String> {
        self.tracks.as_ref().map(Tracks::codecs)
    }

    /// A frame from another publisher than the last one: close what was made.
    /// Returns whether the playlist changed.
    fn check_publisher(&mut self, publisher: u64) -> bool {
        if self.publisher == Some(publisher) {
            return false;
        }
        let changed = self.flush();
        if self.publisher.is_some() {
            self.discontinuity = true;
        }
        self.publisher = Some(publisher);
        self.waiting_keyframe = true;
        self.audio_seen = false;
        self.sps = None;
        self.pps = None;
        self.last_vdts = None;
        changed
    }

    /// The stream went offline, or frames were lost: end the segment; the
    /// next one waits for a keyframe. Returns whether the playlist changed.
    pub fn flush(&mut self) -> bool {
        let changed = self.close_segment();
        self.waiting_keyframe = true;
        self.last_vdts = None;
        changed
    }

    /// Frames were dropped before reaching the segmenter: resume at a keyframe
    /// in a new segment (with a discontinuity, as timestamps jump).
    pub fn resync(&mut self) -> bool {
        let changed = self.flush();
        self.discontinuity = true;
        changed
    }

    /// Adds one video frame of `codec`. `audio_expected`: the publisher
    /// announced audio (so the init made at a keyframe has an audio track
    /// before the first audio packet). Returns whether the playlist changed.
    #[allow(clippy::too_many_arguments)]
    pub fn push_video<'a>(
        &mut self,
        publisher: u64,
        codec: VideoCodec,
        rtp_time: u32,
        mut keyframe: bool,
        payloads: impl IntoIterator<Item = &'a [u8]>,
        wallclock: SystemTime,
        audio_expected: bool,
    ) -> bool {
        let mut changed = self.check_publisher(publisher);
        let near = self.aclock.last.map(|a| a * 15 / 8);
        let mut t = self.vclock.unwrap(rtp_time, near);
        if self.waiting_keyframe && !keyframe {
            self.stats.frames_dropped += 1;
            return changed;
        }
        self.frame.clear();
        let res = if codec == VideoCodec::H264 {
            self.depacketize_h264(payloads).map_err(|e| e.to_string())
        } else {
            rtp_video::depacketize(codec, payloads, &mut self.frame, &mut self.scratch)
                .map_err(str::to_string)
        };
        if let Err(e) = res {
            debug!(error = %e, codec = codec.name(), "hls: undecodable video frame, waiting for a keyframe");
            self.stats.frames_dropped += 1;
            return changed | self.resync();
        }
        if self.frame.is_empty() {
            return changed;
        }
        if keyframe {
            match self.video_track(codec) {
                Some(video) => {
                    let tracks = Tracks {
                        video: Some(video),
                        audio_channels: (audio_expected || self.audio_seen).then_some(2),
                    };
                    changed |= self.use_tracks(tracks);
                    self.waiting_keyframe = false;
                }
                // Flagged as a keyframe by its RTP payload, but its header says
                // otherwise (e.g. a VP9 intra-only frame): an ordinary frame.
                None if !self.waiting_keyframe => keyframe = false,
                None => {
                    // Nothing can decode it without parameter sets.
                    self.stats.frames_dropped += 1;
                    return changed;
                }
            }
        }
        if self.waiting_keyframe || self.tracks.as_ref().is_none_or(|t| t.video.is_none()) {
            self.stats.frames_dropped += 1;
            return changed;
        }
        if let Some(last) = self.last_vdts {
            if t <= last {
                t = last + 1;
            }
            if let Some(s) = self.part.video.last_mut() {
                let d = t - last;
                s.duration = d.min(u64::from(u32::MAX)) as u32;
                if d < 90_000 {
                    self.frame_ticks = d;
                }
            }
        }
        match self.segment_start {
            None => {
                changed |= self.open_segment(t, wallclock);
            }
            Some(start) => {
                let elapsed = t.saturating_sub(start);
                if (keyframe && elapsed >= self.segment_target) || elapsed >= MAX_SEGMENT_TICKS {
                    changed |= self.close_segment();
                    changed |= self.open_segment(t, wallclock);
                } else if !self.part.is_empty()
                    && t.saturating_sub(self.part.start) + self.frame_ticks > self.part_target
                {
                    changed |= self.close_part();
                }
            }
        }
        if self.part.is_empty() {
            self.part.start = t;
            self.part.independent = keyframe;
        }
        if self.part.video.is_empty() {
            self.part.video_base = t;
        }
        self.part.video.push(Sample {
            duration: 0,
            size: self.frame.len() as u32,
            sync: keyframe,
        });
        self.part.video_data.extend_from_slice(&self.frame);
        self.last_vdts = Some(t);
        changed
    }

    /// Reassembles an H.264 access unit as AVCC into `self.frame`, parameter
    /// sets kept aside (in `self.sps`, `self.pps`).
    fn depacketize_h264<'a>(
        &mut self,
        payloads: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<(), rtp_h264::DepacketizeError> {
        let (mut sps, mut pps) = (None, None);
        let frame = &mut self.frame;
        rtp_h264::depacketize(payloads, &mut self.scratch, |nal| {
            match h264::nal_type(nal) {
                h264::NAL_SPS => sps = Some(nal.to_vec()),
                h264::NAL_PPS => pps = Some(nal.to_vec()),
                h264::NAL_AUD | h264::NAL_FILLER => {}
                _ => {
                    frame.extend_from_slice(&(nal.len() as u32).to_be_bytes());
                    frame.extend_from_slice(nal);
                }
            }
        })?;
        if sps.is_some() {
            self.sps = sps;
        }
        if pps.is_some() {
            self.pps = pps;
        }
        Ok(())
    }

    /// The video track a keyframe (in `self.frame`) describes, if it does.
    fn video_track(&self, codec: VideoCodec) -> Option<VideoTrack> {
        match codec {
            VideoCodec::H264 => {
                H264Track::new(self.sps.as_deref()?, self.pps.as_deref()?).map(VideoTrack::H264)
            }
            VideoCodec::Vp8 => {
                let k = vp8::parse_keyframe(&self.frame)?;
                Some(VideoTrack::Vp8(Vp8Track {
                    width: u16::try_from(k.width).ok()?,
                    height: u16::try_from(k.height).ok()?,
                }))
            }
            VideoCodec::Vp9 => {
                Vp9Track::new(vp9::parse_keyframe(&self.frame)?).map(VideoTrack::Vp9)
            }
            VideoCodec::Av1 => {
                let (obu, seq) = av1::find_sequence_header(&self.frame)?;
                Av1Track::new(obu, seq).map(VideoTrack::Av1)
            }
        }
    }

    /// Adds one Opus packet. `video_expected`: the publisher announced video
    /// (otherwise the stream is audio-only and audio cuts the parts).
    pub fn push_audio(
        &mut self,
        publisher: u64,
        rtp_time: u32,
        packet: &[u8],
        wallclock: SystemTime,
        video_expected: bool,
    ) -> bool {
        let mut changed = self.check_publisher(publisher);
        let near = self.vclock.last.map(|v| v * 8 / 15);
        let t48 = self.aclock.unwrap(rtp_time, near);
        self.audio_seen = true;
        let Some(samples) = opus::packet_samples_48k(packet) else {
            self.stats.frames_dropped += 1;
            return changed;
        };
        let audio_only = !video_expected
            && self.last_vdts.is_none()
            && self.tracks.as_ref().is_none_or(|t| t.video.is_none());
        let t = t48 * 15 / 8;
        if audio_only {
            changed |= self.use_tracks(Tracks {
                video: None,
                audio_channels: Some(2),
            });
            self.waiting_keyframe = false;
            match self.segment_start {
                None => changed |= self.open_segment(t, wallclock),
                Some(start) if t.saturating_sub(start) >= self.segment_target => {
                    changed |= self.close_segment();
                    changed |= self.open_segment(t, wallclock);
                }
                Some(_) => {
                    if !self.part.is_empty()
                        && t.saturating_sub(self.part.start) + u64::from(samples) * 15 / 8
                            > self.part_target
                    {
                        changed |= self.close_part();
                    }
                }
            }
            if self.part.is_empty() {
                self.part.start = t;
                self.part.independent = true;
            }
        } else if self.waiting_keyframe
            || self.segment_start.is_none()
            || self
                .tracks
                .as_ref()
                .is_none_or(|t| t.audio_channels.is_none())
            || self.part.audio.len() >= MAX_AUDIO_PER_PART
        {
            // Before the first keyframe, or audio the init has no track for
            // yet (the next keyframe adds one).
            self.stats.frames_dropped += 1;
            return changed;
        }
        let part = &mut self.part;
        if let Some(prev) = part.audio.last_mut() {
            // Packet spacing wins over the TOC when it is plausible, so a gap
            // (lost packets, DTX) stays on the timeline.
            let d = t48.saturating_sub(part.audio_last);
            if d > 0 && d <= 4 * u64::from(prev.duration) {
                prev.duration = d as u32;
            }
        } else {
            part.audio_base = t48;
        }
        part.audio.push(Sample {
            duration: samples,
            size: packet.len() as u32,
            sync: true,
        });
        part.audio_data.extend_from_slice(packet);
        part.audio_last = t48;
        changed
    }

    /// Makes `tracks` the current init; a change ends the segment and adds a
    /// discontinuity. Returns whether the playlist changed.
    fn use_tracks(&mut self, tracks: Tracks) -> bool {
        if self.tracks.as_ref() == Some(&tracks) {
            return false;
        }
        let changed = self.close_segment();
        match fmp4::init_segment(&tracks) {
            Ok(init) => {
                if self.tracks.is_some() {
                    self.discontinuity = true;
                    self.init_id += 1;
                }
                self.playlist.add_init(self.init_id, Bytes::from(init));
                debug!(codecs = %tracks.codecs(), init = self.init_id, "hls: new init segment");
                self.tracks = Some(tracks);
            }
            Err(e) => warn!(error = %e, "hls: cannot write the init segment"),
        }
        changed
    }

    fn open_segment(&mut self, _t: u64, wallclock: SystemTime) -> bool {
        self.segment_start = Some(_t);
        self.playlist.begin_segment(
            wallclock,
            std::mem::take(&mut self.discontinuity),
            self.init_id,
        );
        self.stats.segments += 1;
        true
    }

    fn close_segment(&mut self) -> bool {
        if self.segment_start.is_none() {
            return false;
        }
        self.close_part();
        self.playlist.end_segment();
        self.segment_start = None;
        true
    }

    /// Writes the part being built as a fragment into the open segment.
    fn close_part(&mut self) -> bool {
        let mut part = std::mem::take(&mut self.part);
        if part.is_empty() {
            self.part = part;
            return false;
        }
        // The last frame's duration is known only from the next one: at a
        // flush, assume the frame interval.
        if let Some(s) = part.video.last_mut().filter(|s| s.duration == 0) {
            s.duration = self.frame_ticks as u32;
        }
        let mut runs = Vec::with_capacity(2);
        if !part.video.is_empty() {
            runs.push(Run {
                track_id: VIDEO_TRACK,
                base_time: part.video_base,
                samples: &part.video,
                data: &part.video_data,
            });
        }
        if !part.audio.is_empty() {
            runs.push(Run {
                track_id: AUDIO_TRACK,
                base_time: part.audio_base,
                samples: &part.audio,
                data: &part.audio_data,
            });
        }
        let duration = if part.video.is_empty() {
            part.audio
                .iter()
                .map(|s| u64::from(s.duration))
                .sum::<u64>() as f64
                / 48_000.0
        } else {
            part.video
                .iter()
                .map(|s| u64::from(s.duration))
                .sum::<u64>() as f64
                / 90_000.0
        };
        self.sequence = self.sequence.wrapping_add(1);
        let data = match fmp4::fragment(self.sequence, &runs) {
            Ok(d) => d,
            Err(e) => {
                warn!(error = %e, "hls: cannot write a fragment");
                return false;
            }
        };
        self.playlist.push_part(Part {
            duration,
            independent: part.independent,
            data: Bytes::from(data),
        });
        self.stats.parts += 1;
        // Reuse the buffers' capacity for the next part.
        part.video.clear();
        part.video_data.clear();
        part.audio.clear();
        part.audio_data.clear();
        self.part = part;
        self.part.independent = false;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::hls::fmp4::tests::sps_pps;
    use crate::egress::hls::playlist::Wait;
    use crate::media::rtp_h264::H264Packetizer;
    use mp4_atom::{Any, Decode, Moof};
    use std::time::Duration;

    fn params() -> Params {
        Params {
            part_target: 0.2,
            segment_target: 1.0,
            window: 3,
        }
    }

    /// A 30 fps publisher with a keyframe every `gop` frames and 20 ms Opus.
    struct Source {
        packetizer: H264Packetizer,
        sps: Bytes,
        pps: Bytes,
        frame: u64,
        gop: u64,
        /// RTP time offset (the hub's timeline continues across publishers).
        base: u64,
        audio: u64,
        t0: SystemTime,
    }

    impl Source {
        fn new(gop: u64, base: u64) -> Source {
            let (sps, pps) = sps_pps();
            Source {
                packetizer: H264Packetizer::new(1200),
                sps: Bytes::from(sps),
                pps: Bytes::from(pps),
                frame: 0,
                gop,
                base,
                audio: 0,
                t0: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            }
        }

        /// Pushes one video frame and the audio up to its time.
        fn step(&mut self, s: &mut Segmenter, publisher: u64) -> bool {
            let key = self.frame.is_multiple_of(self.gop);
            let t = self.base + self.frame * 3000;
            let nal = if key {
                Bytes::from([&[0x65u8][..], &vec![0xaa; 3000][..]].concat())
            } else {
                Bytes::from([&[0x41u8][..], &vec![0xbb; 700][..]].concat())
            };
            let mut out = Vec::new();
            let (sps, pps) = ([self.sps.clone()], [self.pps.clone()]);
            self.packetizer
                .packetize(&[nal], key.then_some((&sps[..], &pps[..])), &mut out);
            let wall = self.t0 + Duration::from_micros(t * 100 / 9);
            let mut changed = s.push_video(
                publisher,
                VideoCodec::H264,
                t as u32,
                key,
                out.iter().map(|b| &b[..]),
                wall,
                true,
            );
            // Audio on the same timeline: 48 kHz = 90 kHz × 8/15.
            while self.base * 8 / 15 + self.audio * 960 <= t * 8 / 15 {
                let at = self.base * 8 / 15 + self.audio * 960;
                changed |= s.push_audio(publisher, at as u32, &[0xfc, 1, 2, 3], wall, true);
                self.audio += 1;
            }
            self.frame += 1;
            changed
        }
    }

    fn moof(part: &Bytes) -> Moof {
        match Any::decode(&mut std::io::Cursor::new(&part[..])).unwrap() {
            Any::Moof(m) => m,
            other => panic!("{other:?}"),
        }
    }

    /// 2 s of a 30 fps `codec` stream made of real encoder frames (`key`
    /// every 30 frames, `inter` between), packetized as a WebRTC sender does,
    /// with 20 ms Opus; returns the segmenter.
    fn feed_webrtc(codec: VideoCodec, key: &[u8], inter: &[u8]) -> Segmenter {
        use crate::media::rtp_video::tests::{av1_packets, vp9_packets};
        let mut s = Segmenter::new(params());
        let t0 = SystemTime::UNIX_EPOCH;
        let mut audio = 0u64;
        for i in 0..61u64 {
            let is_key = i % 30 == 0;
            let frame = if is_key { key } else { inter };
            let packets = match codec {
                VideoCodec::Vp9 => vp9_packets(frame, 0, 1000),
                _ => av1_packets(frame, 1000),
            };
            let t = i * 3000;
            s.push_video(
                1,
                codec,
                t as u32,
                is_key,
                packets.iter().map(|p| &p[..]),
                t0,
                true,
            );
            while audio * 960 <= t * 8 / 15 {
                s.push_audio(1, (audio * 960) as u32, &[0xfc, 1, 2, 3], t0, true);
                audio += 1;
            }
        }
        assert_eq!(s.stats.frames_dropped, 0);
        s
    }

    /// The init segment's video sample entry, and the video samples of the
    /// first part of segment 1 (which starts at a key frame).
    fn init_and_first_samples(s: &Segmenter) -> (mp4_atom::Codec, Vec<Vec<u8>>) {
        let init = s.playlist.init(0).expect("init");
        let buf = &mut std::io::Cursor::new(&init[..]);
        mp4_atom::Ftyp::decode(buf).unwrap();
        let moov = mp4_atom::Moov::decode(buf).unwrap();
        let entry = moov.trak[0].mdia.minf.stbl.stsd.codecs[0].clone();
        assert_eq!(
            moov.trak[1].mdia.hdlr.handler,
            mp4_atom::FourCC::new(b"soun")
        );
        let part = &s.playlist.complete_segment(1).unwrap().parts[0].data;
        let m = moof(part);
        let run = &m.traf[0].trun[0];
        let mut at = run.data_offset.unwrap() as usize;
        let mut samples = Vec::new();
        for e in run.samples.iter() {
            let n = e.size.unwrap() as usize;
            samples.push(part[at..at + n].to_vec());
            at += n;
        }
        assert_eq!(
            run.samples.iter().next().unwrap().flags,
            Some(fmp4::FLAGS_SYNC)
        );
        (entry, samples)
    }

    #[test]
    fn vp9_from_webrtc_makes_a_vp09_init_and_descriptor_free_samples() {
        let frames = crate::media::vp9::tests::ivf_frames(crate::media::vp9::tests::VP9_320X180);
        let s = feed_webrtc(VideoCodec::Vp9, frames[0], frames[1]);
        assert_eq!(s.codecs().as_deref(), Some("vp09.00.11.08,opus"));
        let (entry, samples) = init_and_first_samples(&s);
        match entry {
            mp4_atom::Codec::Vp09(v) => {
                assert_eq!((v.visual.width, v.visual.height), (320, 180));
                assert_eq!((v.vpcc.profile, v.vpcc.level, v.vpcc.bit_depth), (0, 11, 8));
                assert_eq!(v.vpcc.chroma_subsampling, 0);
            }
            other => panic!("video sample entry {other:?}"),
        }
        assert_eq!(samples[0], frames[0], "the key frame as libvpx wrote it");
        assert_eq!(samples[1], frames[1]);
    }

    #[test]
    fn av1_from_webrtc_makes_an_av01_init_and_low_overhead_samples() {
        let frames = crate::media::vp9::tests::ivf_frames(crate::media::av1::tests::AV1_320X180);
        let s = feed_webrtc(VideoCodec::Av1, frames[0], frames[1]);
        let (seq_obu, seq) = crate::media::av1::find_sequence_header(frames[0]).unwrap();
        assert_eq!(
            s.codecs().unwrap(),
            format!("av01.0.{:02}M.08,opus", seq.seq_level_idx_0)
        );
        let (entry, samples) = init_and_first_samples(&s);
        match entry {
            mp4_atom::Codec::Av01(v) => {
                assert_eq!((v.visual.width, v.visual.height), (320, 180));
                assert_eq!(v.av1c.seq_profile, 0);
                assert_eq!(v.av1c.seq_level_idx_0, seq.seq_level_idx_0);
                assert!(!v.av1c.high_bitdepth);
                assert!(v.av1c.chroma_subsampling_x && v.av1c.chroma_subsampling_y);
                // configOBUs: the sequence header OBU, with its size field.
                let (o, rest) = crate::media::av1::split_obu(&v.av1c.config_obus).unwrap();
                assert!(rest.is_empty() && o.bytes[0] & 0x02 != 0);
                assert_eq!(
                    o.payload,
                    crate::media::av1::split_obu(seq_obu).unwrap().0.payload
                );
            }
            other => panic!("video sample entry {other:?}"),
        }
        // Samples: the temporal unit without its temporal delimiter, every OBU
        // with a size field; the key frame's starts with the sequence header.
        for (sample, tu) in samples.iter().zip([frames[0], frames[1]]) {
            let types = |d: &[u8]| -> Vec<(u8, Vec<u8>)> {
                crate::media::av1::obus(d)
                    .map(Result::unwrap)
                    .filter(|o| o.obu_type != crate::media::av1::OBU_TEMPORAL_DELIMITER)
                    .map(|o| (o.obu_type, o.payload.to_vec()))
                    .collect()
            };
            assert!(crate::media::av1::obus(sample).all(|o| o.unwrap().bytes[0] & 0x02 != 0));
            assert_eq!(types(sample), types(tu));
        }
        assert_eq!(
            samples[0][0] >> 3 & 0x0f,
            crate::media::av1::OBU_SEQUENCE_HEADER
        );
    }

    #[test]
    fn a_keyframe_flag_on_a_frame_that_is_not_one_waits_or_counts_as_inter() {
        let frames = crate::media::vp9::tests::ivf_frames(crate::media::vp9::tests::VP9_320X180);
        let packets = crate::media::rtp_video::tests::vp9_packets(frames[1], 0, 1000);
        let mut s = Segmenter::new(params());
        let t0 = SystemTime::UNIX_EPOCH;
        // Flagged as a keyframe (e.g. intra-only), but no key frame header:
        // nothing to describe the track with yet.
        assert!(!s.push_video(
            1,
            VideoCodec::Vp9,
            0,
            true,
            packets.iter().map(|p| &p[..]),
            t0,
            false
        ));
        assert_eq!(s.stats.frames_dropped, 1);
        assert!(s.codecs().is_none());
    }

    #[test]
    fn segments_at_keyframes_parts_within_target_times_continuous() {
        let mut s = Segmenter::new(params());
        let mut src = Source::new(30, 900_000);
        for _ in 0..(30 * 6 + 1) {
            src.step(&mut s, 1);
        }
        let p = &s.playlist;
        // 6 s of 1 s GOPs: segments 0..=5 complete, 6 open; window keeps 3.
        assert_eq!(p.last_msn(), Some(6));
        assert!(p.is_gone(2) && !p.is_gone(3));
        let mut next_vtime = None;
        let mut next_atime = None;
        for msn in 3..=5 {
            let seg = p.complete_segment(msn).expect("complete");
            assert!((seg.duration() - 1.0).abs() < 1e-9, "{}", seg.duration());
            // 1 s of 30 fps in 200 ms parts of 6 frames.
            assert_eq!(
                seg.parts.len(),
                5,
                "{:?}",
                seg.parts.iter().map(|p| p.duration).collect::<Vec<_>>()
            );
            for (i, part) in seg.parts.iter().enumerate() {
                assert!(
                    part.duration <= 0.2 + 1e-9 && part.duration >= 0.85 * 0.2 - 1e-9,
                    "{}",
                    part.duration
                );
                assert_eq!(part.independent, i == 0);
                let m = moof(&part.data);
                let v = &m.traf[0];
                assert_eq!(v.tfhd.track_id, VIDEO_TRACK);
                let vt = v.tfdt.as_ref().unwrap().base_media_decode_time;
                if let Some(n) = next_vtime {
                    assert_eq!(vt, n, "video tfdt continues the previous part");
                }
                let entries: Vec<_> = v.trun[0].samples.iter().collect();
                assert!(entries.iter().all(|e| e.duration == Some(3000)));
                assert_eq!(entries[0].flags == Some(fmp4::FLAGS_SYNC), i == 0);
                let dur: u64 = entries.iter().map(|e| u64::from(e.duration.unwrap())).sum();
                assert!((dur as f64 / 90_000.0 - part.duration).abs() < 1e-9);
                next_vtime = Some(vt + dur);
                let a = &m.traf[1];
                assert_eq!(a.tfhd.track_id, AUDIO_TRACK);
                let at = a.tfdt.as_ref().unwrap().base_media_decode_time;
                if let Some(n) = next_atime {
                    assert_eq!(at, n, "audio tfdt continues the previous part");
                }
                let adur: u64 = a.trun[0]
                    .samples
                    .iter()
                    .map(|e| u64::from(e.duration.unwrap()))
                    .sum();
                next_atime = Some(at + adur);
                // Audio and video start together (same timeline, 1 s = 90000 = 48000).
                assert!((at as f64 / 48_000.0 - vt as f64 / 90_000.0).abs() < 0.021);
            }
        }
        assert_eq!(s.stats.frames_dropped, 0);
    }

    #[test]
    fn long_gop_makes_longer_segments_and_target_duration_grows() {
        let mut s = Segmenter::new(params());
        let mut src = Source::new(60, 0);
        for _ in 0..(60 * 3 + 1) {
            src.step(&mut s, 1);
        }
        let seg = s.playlist.complete_segment(1).unwrap();
        assert!((seg.duration() - 2.0).abs() < 1e-9);
        assert_eq!(s.playlist.target_duration(), 2);
        let text = s.playlist.render(5, "");
        assert!(text.contains("#EXT-X-TARGETDURATION:2\n"), "{text}");
    }

    #[test]
    fn takeover_waits_for_keyframe_and_marks_a_discontinuity() {
        let mut s = Segmenter::new(params());
        let mut a = Source::new(30, 0);
        for _ in 0..45 {
            a.step(&mut s, 1);
        }
        assert_eq!(s.playlist.last_msn(), Some(1));
        // A second publisher starts mid-GOP: its frames wait for its keyframe.
        let mut b = Source::new(30, 45 * 3000 + 90_000);
        b.frame = 20;
        for _ in 0..10 {
            b.step(&mut s, 2);
        }
        assert!(!s.playlist.is_segment_open(), "nothing before B's keyframe");
        assert!(s.stats.frames_dropped >= 10);
        for _ in 0..40 {
            b.step(&mut s, 2);
        }
        let text = s.playlist.render(5, "?access=tok");
        let disc = text.find("#EXT-X-DISCONTINUITY\n").expect(&text);
        // Same codec parameters: same init, no second EXT-X-MAP.
        assert_eq!(text.matches("#EXT-X-MAP").count(), 1, "{text}");
        assert!(text[disc..].contains("INDEPENDENT=YES"));
        assert!(text.contains("URI=\"init-5-0.mp4?access=tok\""));
        assert!(text.contains("seg-5-0.m4s?access=tok\n"));
    }

    #[test]
    fn new_parameter_sets_make_a_new_init() {
        let mut s = Segmenter::new(params());
        let mut a = Source::new(30, 0);
        for _ in 0..31 {
            a.step(&mut s, 1);
        }
        // The same publisher switches resolution: another SPS at a keyframe.
        let mut sps = a.sps.to_vec();
        let last = sps.len() - 2;
        sps[last] ^= 0x10;
        if crate::media::h264::parse_sps(&sps).is_err() {
            // Tweak the level instead (byte 3) if that broke the SPS.
            sps = a.sps.to_vec();
            sps[3] = 0x20;
        }
        a.sps = Bytes::from(sps);
        for _ in 0..31 {
            a.step(&mut s, 1);
        }
        let text = s.playlist.render(1, "");
        assert!(text.contains("#EXT-X-MAP:URI=\"init-1-1.mp4\""), "{text}");
        assert!(text.contains("#EXT-X-DISCONTINUITY\n"), "{text}");
        assert!(s.playlist.init(0).is_some() && s.playlist.init(1).is_some());
    }

    #[test]
    fn blocking_reload_rules_and_rendered_tags() {
        let mut s = Segmenter::new(params());
        assert_eq!(s.playlist.wait_for(0, Some(0)), Wait::Pending);
        assert_eq!(s.playlist.wait_for(9, None), Wait::TooFar);
        let mut src = Source::new(30, 0);
        for _ in 0..40 {
            src.step(&mut s, 1);
        }
        // Segment 0 complete (5 parts), segment 1 open with one part (frames 30..35).
        let p = &s.playlist;
        assert_eq!(p.last_msn(), Some(1));
        assert_eq!(p.wait_for(0, None), Wait::Ready);
        assert_eq!(p.wait_for(1, None), Wait::Pending);
        assert_eq!(p.wait_for(1, Some(0)), Wait::Ready);
        assert_eq!(p.wait_for(1, Some(1)), Wait::Pending);
        assert_eq!(
            p.wait_for(0, Some(7)),
            Wait::Ready,
            "segment 0 ended: 1.0 is later"
        );
        assert_eq!(p.wait_for(3, Some(0)), Wait::Pending);
        assert_eq!(
            p.wait_for(4, None),
            Wait::TooFar,
            "more than two segments ahead"
        );
        assert_eq!(
            p.wait_for(1, Some(40)),
            Wait::TooFar,
            "beyond the advance part limit"
        );
        // Query values are u64: the largest must not overflow.
        assert_eq!(p.wait_for(1, Some(u64::MAX)), Wait::TooFar);
        assert_eq!(p.wait_for(2, Some(u64::MAX)), Wait::TooFar);
        assert_eq!(p.wait_for(u64::MAX, Some(u64::MAX)), Wait::TooFar);
        let text = p.render(9, "");
        for tag in [
            "#EXTM3U\n",
            "#EXT-X-TARGETDURATION:1\n",
            "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=0.600\n",
            "#EXT-X-PART-INF:PART-TARGET=0.200\n",
            "#EXT-X-MEDIA-SEQUENCE:0\n",
            "#EXT-X-MAP:URI=\"init-9-0.mp4\"\n",
            "#EXT-X-PROGRAM-DATE-TIME:2027-01-15T08:00:00.000Z\n",
            "#EXT-X-PART:DURATION=0.20000,URI=\"part-9-0-0.m4s\",INDEPENDENT=YES\n",
            "#EXTINF:1.00000,\nseg-9-0.m4s\n",
            "#EXT-X-PART:DURATION=0.20000,URI=\"part-9-1-0.m4s\",INDEPENDENT=YES\n",
            "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part-9-1-1.m4s\"\n",
        ] {
            assert!(text.contains(tag), "missing {tag:?} in\n{text}");
        }
        // Feeding on makes the hinted part appear: the pending request is ready.
        for _ in 0..8 {
            src.step(&mut s, 1);
        }
        assert_eq!(s.playlist.wait_for(1, Some(1)), Wait::Ready);
        assert!(s.playlist.part(1, 1).is_some());
    }

    #[test]
    fn offline_flush_closes_the_segment_and_audio_only_streams_work() {
        let mut s = Segmenter::new(params());
        let mut src = Source::new(30, 0);
        for _ in 0..20 {
            src.step(&mut s, 1);
        }
        assert!(s.playlist.is_segment_open());
        assert!(s.flush());
        assert!(!s.playlist.is_segment_open());
        let seg = s.playlist.complete_segment(0).unwrap();
        assert!(
            (seg.duration() - 20.0 / 30.0).abs() < 1e-9,
            "{}",
            seg.duration()
        );

        let mut a = Segmenter::new(params());
        let t0 = SystemTime::UNIX_EPOCH;
        for i in 0..150u32 {
            a.push_audio(7, i * 960, &[0xfc, 0], t0, false);
        }
        // 3 s of audio: 1 s segments of 20 ms packets, 200 ms parts.
        let seg = a.playlist.complete_segment(1).unwrap();
        assert!((seg.duration() - 1.0).abs() < 0.021, "{}", seg.duration());
        assert!(
            seg.parts
                .iter()
                .all(|p| p.duration <= 0.2 + 1e-9 && p.independent)
        );
        assert_eq!(a.codecs().as_deref(), Some("opus"));
    }

    #[test]
    fn rtp_times_unwrap_across_the_32_bit_wrap_on_one_timeline() {
        let mut u = Unwrap::default();
        assert_eq!(u.unwrap(u32::MAX - 10, None), u64::from(u32::MAX) - 10);
        assert_eq!(u.unwrap(5, None), (1 << 32) + 5);
        assert_eq!(u.unwrap(u32::MAX - 1, None), u64::from(u32::MAX) - 1);
        // A track starting after the other wrapped picks the same wrap count.
        let mut v = Unwrap::default();
        assert_eq!(v.unwrap(100, Some((1 << 32) + 50)), (1 << 32) + 100);
        let mut w = Unwrap::default();
        assert_eq!(
            w.unwrap(u32::MAX - 5, Some((1 << 32) + 50)),
            u64::from(u32::MAX) - 5
        );
    }
}
