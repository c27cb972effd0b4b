//! fMP4 → WebM, without re-encoding, sans-I/O: for recordings whose codec a
//! browser plays in WebM but not in MP4 (Chromium plays VP8 only in WebM:
//! `video/mp4; codecs="vp8"` is unsupported both by MSE and by `<video src>`).
//!
//! The input is what `egress::hls::fmp4` writes: an init segment (`ftyp` +
//! `moov`) and fragments (`moof` + `mdat`, `default-base-is-moof`). The output
//! is a live-style WebM: the EBML header, a Segment of unknown size with Info
//! (its duration) and Tracks, then one Cluster per recording segment, each a
//! run of SimpleBlocks. Times are milliseconds (the default TimestampScale).

use std::io::Cursor;

use mp4_atom::{Codec, Decode, Ftyp, Moof, Moov};

/// A Cluster longer than this is cut at the next keyframe (blocks' times
/// are 16-bit signed milliseconds from their Cluster's).
const MAX_CLUSTER_MS: u64 = 30_000;

#[derive(Debug, thiserror::Error)]
pub enum WebmError {
    #[error("the recording's fMP4 cannot be read: {0}")]
    Mp4(String),
    #[error("WebM has no place for {0}; this recording plays from its MP4 or HLS")]
    Codec(String),
}

fn mp4(e: impl std::fmt::Display) -> WebmError {
    WebmError::Mp4(e.to_string())
}

/// A track as WebM describes it, and the fMP4 track it comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct Track {
    /// The fMP4 `track_id`.
    pub mp4_id: u32,
    pub timescale: u32,
    pub kind: Kind,
    /// Default sample flags (`trex`).
    default_flags: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Video {
        codec_id: &'static str,
        width: u16,
        height: u16,
    },
    Opus {
        channels: u8,
        pre_skip: u16,
    },
}

/// The tracks of an init segment. Video must be VP8 or VP9, audio Opus;
/// a track of another codec is an error (it would play without it).
pub fn tracks_of_init(init: &[u8]) -> Result<Vec<Track>, WebmError> {
    let buf = &mut Cursor::new(init);
    Ftyp::decode(buf).map_err(mp4)?;
    let moov = Moov::decode(buf).map_err(mp4)?;
    let trex = moov
        .mvex
        .as_ref()
        .map(|m| m.trex.clone())
        .unwrap_or_default();
    let mut tracks = Vec::new();
    for trak in &moov.trak {
        let id = trak.tkhd.track_id;
        let Some(entry) = trak.mdia.minf.stbl.stsd.codecs.first() else {
            continue;
        };
        let kind = match entry {
            Codec::Vp08(v) => Kind::Video {
                codec_id: "V_VP8",
                width: v.visual.width,
                height: v.visual.height,
            },
            Codec::Vp09(v) => Kind::Video {
                codec_id: "V_VP9",
                width: v.visual.width,
                height: v.visual.height,
            },
            Codec::Opus(o) => Kind::Opus {
                channels: o.dops.output_channel_count,
                pre_skip: o.dops.pre_skip,
            },
            other => {
                let name = format!("{other:?}");
                let name = name.split('(').next().unwrap_or("this codec");
                return Err(WebmError::Codec(name.to_lowercase()));
            }
        };
        tracks.push(Track {
            mp4_id: id,
            timescale: trak.mdia.mdhd.timescale.max(1),
            kind,
            default_flags: trex
                .iter()
                .find(|t| t.track_id == id)
                .map_or(0, |t| t.default_sample_flags),
        });
    }
    if tracks.is_empty() {
        return Err(WebmError::Mp4("the init segment has no track".into()));
    }
    Ok(tracks)
}

/// One sample of a fragment: its track (index into the tracks), its decode
/// time in ms from the fragment's first video sample (or first sample), and
/// where its bytes are in the fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmentSample {
    pub track: usize,
    pub time_ms: i64,
    pub keyframe: bool,
    pub offset: usize,
    pub len: usize,
}

/// The samples of `data` (one or more `moof` + `mdat`), in time order.
pub fn samples_of(data: &[u8], tracks: &[Track]) -> Result<Vec<FragmentSample>, WebmError> {
    // (track index, time in the track's timescale, keyframe, offset, len)
    let mut raw: Vec<(usize, u64, bool, usize, usize)> = Vec::new();
    let mut pos = 0usize;
    while pos + 8 <= data.len() {
        let size = u32::from_be_bytes(data[pos..pos + 4].try_into().unwrap_or_default()) as usize;
        let kind = &data[pos + 4..pos + 8];
        if size < 8 || pos + size > data.len() {
            return Err(WebmError::Mp4(format!("a box at {pos} runs past the end")));
        }
        if kind == b"moof" {
            let moof = Moof::decode(&mut Cursor::new(&data[pos..pos + size])).map_err(mp4)?;
            for traf in &moof.traf {
                let Some(t) = tracks.iter().position(|t| t.mp4_id == traf.tfhd.track_id) else {
                    continue;
                };
                let mut time = traf.tfdt.as_ref().map_or(0, |d| d.base_media_decode_time);
                let default_flags = traf
                    .tfhd
                    .default_sample_flags
                    .unwrap_or(tracks[t].default_flags);
                let default_duration = traf.tfhd.default_sample_duration.unwrap_or(0);
                let default_size = traf.tfhd.default_sample_size.unwrap_or(0);
                for trun in &traf.trun {
                    let mut at = pos as i64 + i64::from(trun.data_offset.unwrap_or(0));
                    for (i, s) in trun.samples.iter().enumerate() {
                        let flags = match (i, s.flags) {
                            (_, Some(f)) => f,
                            _ => default_flags,
                        };
                        let len = s.size.unwrap_or(default_size) as usize;
                        let start = usize::try_from(at)
                            .ok()
                            .filter(|a| a + len <= data.len())
                            .ok_or_else(|| {
                                WebmError::Mp4("a sample lies outside the fragment".into())
                            })?;
                        let keyframe =
                            matches!(tracks[t].kind, Kind::Opus { .. }) || flags & 0x0001_0000 == 0;
                        raw.push((t, time, keyframe, start, len));
                        at += len as i64;
                        time += u64::from(s.duration.unwrap_or(default_duration));
                    }
                }
            }
        }
        pos += size;
    }
    let ms = |t: usize, time: u64| (time as u128 * 1000 / tracks[t].timescale as u128) as i64;
    let base = raw
        .iter()
        .filter(|r| matches!(tracks[r.0].kind, Kind::Video { .. }))
        .chain(raw.iter())
        .map(|r| ms(r.0, r.1))
        .next()
        .unwrap_or(0);
    let mut out: Vec<FragmentSample> = raw
        .iter()
        .map(|&(track, time, keyframe, offset, len)| FragmentSample {
            track,
            time_ms: ms(track, time) - base,
            keyframe,
            offset,
            len,
        })
        .collect();
    out.sort_by_key(|s| s.time_ms);
    Ok(out)
}

// --- EBML ------------------------------------------------------------------------

fn id(out: &mut Vec<u8>, id: u32) {
    let b = id.to_be_bytes();
    let skip = b.iter().take_while(|&&x| x == 0).count();
    out.extend_from_slice(&b[skip..]);
}

/// An EBML size (8 bytes at most; Clusters here are far smaller).
fn size(out: &mut Vec<u8>, n: u64) {
    let mut len = 1;
    while len < 8 && n >= (1u64 << (7 * len)) - 1 {
        len += 1;
    }
    let marked = n | (1u64 << (7 * len));
    out.extend_from_slice(&marked.to_be_bytes()[8 - len..]);
}

fn element(out: &mut Vec<u8>, el: u32, body: &[u8]) {
    id(out, el);
    size(out, body.len() as u64);
    out.extend_from_slice(body);
}

fn uint(out: &mut Vec<u8>, el: u32, v: u64) {
    let b = v.to_be_bytes();
    let skip = b.iter().take_while(|&&x| x == 0).count().min(7);
    element(out, el, &b[skip..]);
}

fn float(out: &mut Vec<u8>, el: u32, v: f64) {
    element(out, el, &v.to_be_bytes());
}

fn master(out: &mut Vec<u8>, el: u32, fill: impl FnOnce(&mut Vec<u8>)) {
    let mut body = Vec::new();
    fill(&mut body);
    element(out, el, &body);
}

/// The EBML header, the Segment's start (unknown size: Clusters follow
/// until the end of the file), Info with `duration_ms`, and Tracks.
pub fn header(tracks: &[Track], duration_ms: f64) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    master(&mut out, 0x1A45_DFA3, |h| {
        uint(h, 0x4286, 1); // EBMLVersion
        uint(h, 0x42F7, 1); // EBMLReadVersion
        uint(h, 0x42F2, 4); // EBMLMaxIDLength
        uint(h, 0x42F3, 8); // EBMLMaxSizeLength
        element(h, 0x4282, b"webm"); // DocType
        uint(h, 0x4287, 4); // DocTypeVersion
        uint(h, 0x4285, 2); // DocTypeReadVersion
    });
    id(&mut out, 0x1853_8067); // Segment
    out.extend_from_slice(&[0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]); // unknown size
    master(&mut out, 0x1549_A966, |i| {
        uint(i, 0x2A_D7B1, 1_000_000); // TimestampScale: ms
        element(i, 0x4D80, b"roomcast"); // MuxingApp
        element(i, 0x5741, b"roomcast"); // WritingApp
        float(i, 0x4489, duration_ms.max(0.0)); // Duration
    });
    master(&mut out, 0x1654_AE6B, |ts| {
        for (n, t) in tracks.iter().enumerate() {
            master(ts, 0xAE, |e| {
                uint(e, 0xD7, n as u64 + 1); // TrackNumber
                uint(e, 0x73C5, n as u64 + 1); // TrackUID
                uint(e, 0x9C, 0); // FlagLacing
                match &t.kind {
                    Kind::Video {
                        codec_id,
                        width,
                        height,
                    } => {
                        uint(e, 0x83, 1); // TrackType: video
                        element(e, 0x86, codec_id.as_bytes());
                        master(e, 0xE0, |v| {
                            uint(v, 0xB0, u64::from(*width));
                            uint(v, 0xBA, u64::from(*height));
                        });
                    }
                    Kind::Opus { channels, pre_skip } => {
                        uint(e, 0x83, 2); // TrackType: audio
                        element(e, 0x86, b"A_OPUS");
                        // RFC 7845 identification header, channel mapping family 0.
                        let mut head = b"OpusHead".to_vec();
                        head.push(1);
                        head.push(*channels);
                        head.extend_from_slice(&pre_skip.to_le_bytes());
                        head.extend_from_slice(&48_000u32.to_le_bytes());
                        head.extend_from_slice(&0i16.to_le_bytes());
                        head.push(0);
                        element(e, 0x63A2, &head); // CodecPrivate
                        uint(e, 0x56AA, u64::from(*pre_skip) * 1_000_000_000 / 48_000); // CodecDelay, ns
                        uint(e, 0x56BB, 80_000_000); // SeekPreRoll: 80 ms, as RFC 7845 advises
                        master(e, 0xE1, |a| {
                            float(a, 0xB5, 48_000.0);
                            uint(a, 0x9F, u64::from(*channels));
                        });
                    }
                }
            });
        }
    });
    out
}

/// Clusters for one fragment's samples, each at `start_ms` of the recording
/// plus its time from the fragment's first video frame; `data` is the fragment
/// the samples point into. A new Cluster starts every [`MAX_CLUSTER_MS`] and at
/// video keyframes past it.
///
/// Audio that arrived after the keyframe but was captured before it (negative
/// time) stays before `start_ms`, where the previous fragment's audio ends:
/// clamped to `start_ms` instead, every fragment boundary would leave a gap in
/// the audio as long as that lead, which splits a Media Source buffer's range
/// and stalls playback there. Only what would fall before the recording's
/// start is dropped.
pub fn clusters(start_ms: u64, samples: &[FragmentSample], data: &[u8]) -> Vec<u8> {
    let start = i64::try_from(start_ms).unwrap_or(i64::MAX);
    let at = |s: &FragmentSample| start.saturating_add(s.time_ms);
    // Samples are in time order: those before the recording's start lead.
    let samples = &samples[samples.partition_point(|s| at(s) < 0)..];
    let mut out = Vec::with_capacity(samples.iter().map(|s| s.len + 8).sum::<usize>() + 64);
    let mut i = 0;
    while i < samples.len() {
        let base = at(&samples[i]);
        let mut body = Vec::new();
        uint(&mut body, 0xE7, base as u64); // Timestamp (≥ 0, see above)
        while i < samples.len() {
            let s = samples[i];
            let rel = (at(&s) - base) as u64; // ≥ 0: in time order
            if rel > MAX_CLUSTER_MS && (s.keyframe || rel > i16::MAX as u64) {
                break;
            }
            let rel = rel.min(i16::MAX as u64) as i16;
            id(&mut body, 0xA3); // SimpleBlock
            size(&mut body, 4 + s.len as u64);
            body.push(0x80 | (s.track as u8 + 1)); // track number as a 1-byte vint
            body.extend_from_slice(&rel.to_be_bytes());
            body.push(if s.keyframe { 0x80 } else { 0 });
            body.extend_from_slice(&data[s.offset..s.offset + s.len]);
            i += 1;
        }
        element(&mut out, 0x1F43_B675, &body); // Cluster
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::hls::fmp4::{self, Run, Sample, Tracks, VideoTrack, Vp8Track};

    fn vp8_recording() -> (Vec<u8>, Vec<u8>) {
        let init = fmp4::init_segment(&Tracks {
            video: Some(VideoTrack::Vp8(Vp8Track {
                width: 640,
                height: 360,
            })),
            audio_channels: Some(2),
        })
        .unwrap();
        // 3 video frames at 30 fps (3000 ticks of 90 kHz), the first a keyframe,
        // and 2 Opus packets of 20 ms.
        let video: Vec<Sample> = [(3000, 5, true), (3000, 3, false), (3000, 4, false)]
            .iter()
            .map(|&(duration, size, sync)| Sample {
                duration,
                size,
                sync,
            })
            .collect();
        let audio = vec![
            Sample {
                duration: 960,
                size: 2,
                sync: true,
            };
            2
        ];
        let frag = fmp4::fragment(
            7,
            &[
                Run {
                    track_id: fmp4::VIDEO_TRACK,
                    base_time: 90_000 * 10,
                    samples: &video,
                    data: b"KKKKKbbbccCC",
                },
                Run {
                    track_id: fmp4::AUDIO_TRACK,
                    base_time: 48_000 * 10,
                    samples: &audio,
                    data: b"o1o2",
                },
            ],
        )
        .unwrap();
        (init, frag)
    }

    #[test]
    fn vp8_fmp4_becomes_webm_blocks() {
        let (init, frag) = vp8_recording();
        let tracks = tracks_of_init(&init).unwrap();
        assert_eq!(tracks.len(), 2);
        assert_eq!(
            tracks[0].kind,
            Kind::Video {
                codec_id: "V_VP8",
                width: 640,
                height: 360
            }
        );
        assert!(matches!(tracks[1].kind, Kind::Opus { channels: 2, .. }));
        let samples = samples_of(&frag, &tracks).unwrap();
        let got: Vec<(usize, i64, bool, &[u8])> = samples
            .iter()
            .map(|s| {
                (
                    s.track,
                    s.time_ms,
                    s.keyframe,
                    &frag[s.offset..s.offset + s.len],
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (0, 0, true, &b"KKKKK"[..]),
                (1, 0, true, &b"o1"[..]),
                (1, 20, true, &b"o2"[..]),
                (0, 33, false, &b"bbb"[..]),
                (0, 66, false, &b"ccCC"[..]),
            ]
        );
        let c = clusters(4000, &samples, &frag);
        // Cluster, then Timestamp 4000 (0xE7, size 0x82, 0x0F 0xA0).
        assert_eq!(&c[..4], &[0x1F, 0x43, 0xB6, 0x75]);
        assert!(c.windows(4).any(|w| w == [0xE7, 0x82, 0x0F, 0xA0]));
        // The first block: track 1, +0 ms, keyframe, the keyframe's bytes.
        let first = [0xA3, 0x89, 0x81, 0, 0, 0x80, b'K', b'K', b'K', b'K', b'K'];
        assert!(c.windows(first.len()).any(|w| w == first));
        // The third frame: track 1, +66 ms, not a keyframe.
        let third = [0xA3, 0x88, 0x81, 0, 66, 0, b'c', b'c', b'C', b'C'];
        assert!(c.windows(third.len()).any(|w| w == third));
        let h = header(&tracks, 12_345.0);
        assert!(h.starts_with(&[0x1A, 0x45, 0xDF, 0xA3]));
        assert!(h.windows(5).any(|w| w == b"V_VP8"));
        assert!(h.windows(8).any(|w| w == b"OpusHead"));
    }

    /// A fragment of a continuous VP8 + Opus recording: 3 video frames of
    /// 33⅓ ms from `video_ms` and 5 Opus packets of 20 ms from `audio_ms`.
    fn fragment_at(video_ms: u64, audio_ms: u64) -> Vec<u8> {
        let video = [true, false, false].map(|sync| Sample {
            duration: 3000,
            size: 1,
            sync,
        });
        let audio = [Sample {
            duration: 960,
            size: 1,
            sync: true,
        }; 5];
        fmp4::fragment(
            1,
            &[
                Run {
                    track_id: fmp4::VIDEO_TRACK,
                    base_time: 90 * video_ms,
                    samples: &video,
                    data: b"Kbb",
                },
                Run {
                    track_id: fmp4::AUDIO_TRACK,
                    base_time: 48 * audio_ms,
                    samples: &audio,
                    data: b"aaaaa",
                },
            ],
        )
        .unwrap()
    }

    /// (track, ms) of every SimpleBlock in `clusters`' output.
    fn block_times(mut c: &[u8]) -> Vec<(u8, u64)> {
        fn vint(b: &[u8], keep_marker: bool) -> (u64, usize) {
            let len = b[0].leading_zeros() as usize + 1;
            let mut v = u64::from(if keep_marker {
                b[0]
            } else {
                b[0] & (0xFF >> len)
            });
            for x in &b[1..len] {
                v = v << 8 | u64::from(*x);
            }
            (v, len)
        }
        let mut out = Vec::new();
        while !c.is_empty() {
            let (_, idl) = vint(c, true);
            let (len, sl) = vint(&c[idl..], false);
            let mut body = &c[idl + sl..idl + sl + len as usize];
            c = &c[idl + sl + len as usize..];
            let mut cluster_ms = 0;
            while !body.is_empty() {
                let (el, idl) = vint(body, true);
                let (len, sl) = vint(&body[idl..], false);
                let data = &body[idl + sl..idl + sl + len as usize];
                match el {
                    0xE7 => cluster_ms = data.iter().fold(0, |v, x| v << 8 | u64::from(*x)),
                    0xA3 => {
                        let rel = i16::from_be_bytes([data[1], data[2]]);
                        out.push((data[0] & 0x7F, cluster_ms.strict_add_signed(rel.into())));
                    }
                    _ => {}
                }
                body = &body[idl + sl + len as usize..];
            }
        }
        out
    }

    #[test]
    fn audio_ahead_of_the_keyframe_stays_before_the_fragment_so_boundaries_have_no_gap() {
        let (init, _) = vp8_recording();
        let tracks = tracks_of_init(&init).unwrap();
        // Audio leads video by 60 ms in every fragment (it arrived after the keyframe).
        let a = fragment_at(10_000, 9_940);
        let b = fragment_at(10_100, 10_040); // the next 100 ms
        let mut blocks = block_times(&clusters(4_000, &samples_of(&a, &tracks).unwrap(), &a));
        blocks.extend(block_times(&clusters(
            4_100,
            &samples_of(&b, &tracks).unwrap(),
            &b,
        )));
        let audio: Vec<u64> = blocks.iter().filter(|b| b.0 == 2).map(|b| b.1).collect();
        let video: Vec<u64> = blocks.iter().filter(|b| b.0 == 1).map(|b| b.1).collect();
        // One audio packet every 20 ms across the boundary, none stacked or missing.
        assert_eq!(audio, (0..10).map(|k| 3_940 + 20 * k).collect::<Vec<_>>());
        assert_eq!(video, [4_000, 4_033, 4_066, 4_100, 4_133, 4_166]);
        // At the recording's start, what would lie before 0 is dropped, not stacked at 0.
        let first = block_times(&clusters(0, &samples_of(&a, &tracks).unwrap(), &a));
        let audio: Vec<u64> = first.iter().filter(|b| b.0 == 2).map(|b| b.1).collect();
        assert_eq!(audio, [0, 20]);
    }

    #[test]
    fn ebml_sizes_and_ids() {
        let mut v = Vec::new();
        size(&mut v, 0);
        size(&mut v, 126);
        size(&mut v, 127);
        size(&mut v, 20_000);
        assert_eq!(v, [0x80, 0xFE, 0x40, 0x7F, 0x20, 0x4E, 0x20]);
        let mut v = Vec::new();
        uint(&mut v, 0xD7, 0);
        uint(&mut v, 0x2A_D7B1, 1_000_000);
        assert_eq!(v, [0xD7, 0x81, 0, 0x2A, 0xD7, 0xB1, 0x83, 0x0F, 0x42, 0x40]);
    }

    #[test]
    fn h264_is_refused_and_garbage_is_an_error() {
        let sps = [0x67, 0x42, 0xC0, 0x1E, 0xD9, 0x00, 0xA0, 0x47, 0xFE, 0xC8];
        if let Some(t) = fmp4::H264Track::new(&sps, &[0x68, 0xCE, 0x38, 0x80]) {
            let init = fmp4::init_segment(&Tracks {
                video: Some(VideoTrack::H264(t)),
                audio_channels: None,
            })
            .unwrap();
            assert!(matches!(tracks_of_init(&init), Err(WebmError::Codec(_))));
        }
        assert!(tracks_of_init(b"nonsense").is_err());
        let (init, frag) = vp8_recording();
        let tracks = tracks_of_init(&init).unwrap();
        assert!(samples_of(&frag[..frag.len() - 3], &tracks).is_err());
    }
}
