//! Fragmented MP4 (CMAF-style) for LL-HLS: the init segment (`ftyp` + `moov`
//! with `mvex`) and media fragments (`moof` + `mdat`), one fragment per
//! partial segment, audio and video muxed in one fragment (one `traf` each).
//! Boxes are encoded with mp4-atom; sample data is written once per stream.
//! Codec-neutral: video is H.264 (`avc1`), VP8 (`vp08`), VP9 (`vp09`) or AV1
//! (`av01`), described by a [`VideoTrack`] made from the stream's key frame;
//! samples are what each codec's MP4 binding wants (the caller's job).

use mp4_atom::{
    Audio, Av01, Av1c, Avc1, Avcc, AvccExt, Codec, Dinf, Dops, Dref, Encode, FourCC, Ftyp, Hdlr,
    Mdhd, Mdia, Mfhd, Minf, Moof, Moov, Mvex, Mvhd, Opus, Smhd, Stbl, Stco, Stsd, Tfdt, Tfhd, Tkhd,
    Traf, Trak, Trex, Trun, TrunEntry, Url, Visual, Vmhd, Vp08, Vp09, VpcC,
};

use crate::media::av1::SequenceHeader;
use crate::media::vp9::{self, Vp9KeyFrame};

pub const VIDEO_TRACK: u32 = 1;
pub const AUDIO_TRACK: u32 = 2;
/// Video samples keep the hub's 90 kHz RTP clock, audio its 48 kHz Opus clock.
pub const VIDEO_TIMESCALE: u32 = 90_000;
pub const AUDIO_TIMESCALE: u32 = 48_000;

/// `sample_depends_on = 2`: a sync sample (keyframe, or any audio packet).
pub const FLAGS_SYNC: u32 = 0x0200_0000;
/// `sample_depends_on = 1`, `sample_is_non_sync_sample = 1`.
pub const FLAGS_NON_SYNC: u32 = 0x0101_0000;

/// H.264 as the `avc1` sample entry describes it: one SPS and one PPS
/// (parameter sets are kept out of the samples, so a change means a new init).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct H264Track {
    pub sps: Vec<u8>,
    pub pps: Vec<u8>,
    pub width: u16,
    pub height: u16,
    /// From the SPS, for the `avcC` extension of high profiles:
    /// (chroma_format_idc, bit depth luma, bit depth chroma).
    pub chroma: Option<(u8, u8, u8)>,
}

impl H264Track {
    /// From raw SPS and PPS NAL units (with their header bytes).
    pub fn new(sps: &[u8], pps: &[u8]) -> Option<H264Track> {
        let parsed = crate::media::h264::parse_sps(sps).ok()?;
        if sps.len() < 4 || pps.is_empty() {
            return None;
        }
        let high = matches!(parsed.profile_idc, 100 | 110 | 122 | 144 | 244);
        Some(H264Track {
            sps: sps.to_vec(),
            pps: pps.to_vec(),
            width: u16::try_from(parsed.width).ok()?,
            height: u16::try_from(parsed.height).ok()?,
            chroma: high.then_some((
                parsed.chroma_format_idc,
                parsed.bit_depth_luma,
                parsed.bit_depth_chroma,
            )),
        })
    }

    /// RFC 6381 codec string, e.g. `avc1.64001f`.
    pub fn codec(&self) -> String {
        format!(
            "avc1.{:02x}{:02x}{:02x}",
            self.sps[1], self.sps[2], self.sps[3]
        )
    }
}

/// VP8 as the `vp08` sample entry describes it (its `vpcC` says 8-bit 4:2:0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vp8Track {
    pub width: u16,
    pub height: u16,
}

/// VP9 as the `vp09` sample entry and its `vpcC` describe it, from a key
/// frame's uncompressed header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vp9Track {
    pub key: Vp9KeyFrame,
    pub width: u16,
    pub height: u16,
    /// VP9 level × 10, from the picture size at 30 fps (the frame rate is not
    /// known at the first key frame; a fixed guess keeps the init stable).
    pub level: u8,
}

impl Vp9Track {
    pub fn new(key: Vp9KeyFrame) -> Option<Vp9Track> {
        Some(Vp9Track {
            width: u16::try_from(key.width).ok()?,
            height: u16::try_from(key.height).ok()?,
            level: vp9::level(key.width, key.height, 30),
            key,
        })
    }
}

/// AV1 as the `av01` sample entry and its `av1C` describe it: the sequence
/// header OBU (with its size field), which `av1C` carries as its config OBU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Av1Track {
    pub seq: SequenceHeader,
    pub sequence_header_obu: Vec<u8>,
    pub width: u16,
    pub height: u16,
}

impl Av1Track {
    pub fn new(sequence_header_obu: &[u8], seq: SequenceHeader) -> Option<Av1Track> {
        Some(Av1Track {
            width: u16::try_from(seq.max_width).ok()?,
            height: u16::try_from(seq.max_height).ok()?,
            seq,
            sequence_header_obu: sequence_header_obu.to_vec(),
        })
    }
}

/// The video track of an init segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VideoTrack {
    H264(H264Track),
    Vp8(Vp8Track),
    Vp9(Vp9Track),
    Av1(Av1Track),
}

impl VideoTrack {
    pub fn size(&self) -> (u16, u16) {
        match self {
            VideoTrack::H264(t) => (t.width, t.height),
            VideoTrack::Vp8(t) => (t.width, t.height),
            VideoTrack::Vp9(t) => (t.width, t.height),
            VideoTrack::Av1(t) => (t.width, t.height),
        }
    }

    /// RFC 6381 codec string, as MSE and hls.js take it: `avc1.64001f`,
    /// `vp08.00.21.08`, `vp09.00.31.08`, `av01.0.08M.08`.
    pub fn codec(&self) -> String {
        match self {
            VideoTrack::H264(t) => t.codec(),
            VideoTrack::Vp8(t) => format!(
                "vp08.00.{:02}.08",
                vp9::level(t.width.into(), t.height.into(), 30)
            ),
            VideoTrack::Vp9(t) => format!(
                "vp09.{:02}.{:02}.{:02}",
                t.key.profile, t.level, t.key.bit_depth
            ),
            VideoTrack::Av1(t) => format!(
                "av01.{}.{:02}{}.{:02}",
                t.seq.seq_profile,
                t.seq.seq_level_idx_0,
                if t.seq.seq_tier_0 { 'H' } else { 'M' },
                t.seq.bit_depth()
            ),
        }
    }

    /// The `stsd` sample entry.
    fn sample_entry(&self) -> Codec {
        let (width, height) = self.size();
        let visual = Visual {
            data_reference_index: 1,
            width,
            height,
            horizresolution: 72.into(),
            vertresolution: 72.into(),
            frame_count: 1,
            compressor: "".into(),
            depth: 24,
        };
        match self {
            VideoTrack::H264(v) => Avc1 {
                visual,
                avcc: Avcc {
                    configuration_version: 1,
                    avc_profile_indication: v.sps[1],
                    profile_compatibility: v.sps[2],
                    avc_level_indication: v.sps[3],
                    length_size: 4,
                    sequence_parameter_sets: vec![v.sps.clone()],
                    picture_parameter_sets: vec![v.pps.clone()],
                    ext: v.chroma.map(|(c, l, ch)| AvccExt {
                        chroma_format: c,
                        bit_depth_luma: l,
                        bit_depth_chroma: ch,
                        sequence_parameter_sets_ext: vec![],
                    }),
                },
                btrt: None,
                colr: None,
                pasp: None,
                taic: None,
                fiel: None,
                spatial: None,
            }
            .into(),
            VideoTrack::Vp8(t) => Vp08 {
                visual,
                vpcc: VpcC {
                    level: vp9::level(t.width.into(), t.height.into(), 30),
                    ..vpcc_unspecified(false)
                },
                btrt: None,
                colr: None,
                pasp: None,
                spatial: None,
            }
            .into(),
            VideoTrack::Vp9(t) => {
                // VP9's color_space → ISO/IEC 23091-2 matrix coefficients.
                let matrix = match t.key.color_space {
                    1 | 3 => 6, // BT.601, SMPTE 170
                    2 => 1,     // BT.709
                    4 => 7,     // SMPTE 240
                    5 => 9,     // BT.2020 (non-constant luminance)
                    7 => 0,     // sRGB (identity)
                    _ => 2,     // unknown, reserved: unspecified
                };
                Vp09 {
                    visual,
                    vpcc: VpcC {
                        profile: t.key.profile,
                        level: t.level,
                        bit_depth: t.key.bit_depth,
                        chroma_subsampling: t.key.chroma_subsampling,
                        matrix_coefficients: matrix,
                        ..vpcc_unspecified(t.key.full_range)
                    },
                    btrt: None,
                    colr: None,
                    pasp: None,
                    spatial: None,
                }
                .into()
            }
            VideoTrack::Av1(t) => {
                let s = &t.seq;
                Av01 {
                    visual,
                    av1c: Av1c {
                        seq_profile: s.seq_profile,
                        seq_level_idx_0: s.seq_level_idx_0,
                        seq_tier_0: s.seq_tier_0,
                        high_bitdepth: s.high_bitdepth,
                        twelve_bit: s.twelve_bit,
                        monochrome: s.monochrome,
                        chroma_subsampling_x: s.chroma_subsampling_x,
                        chroma_subsampling_y: s.chroma_subsampling_y,
                        chroma_sample_position: s.chroma_sample_position,
                        initial_presentation_delay: None,
                        config_obus: t.sequence_header_obu.clone(),
                    },
                    btrt: None,
                    ccst: None,
                    colr: None,
                    pasp: None,
                    taic: None,
                    spatial: None,
                }
                .into()
            }
        }
    }
}

/// `vpcC` of 8-bit 4:2:0 with unspecified colour (2: the stream does not say).
fn vpcc_unspecified(full_range: bool) -> VpcC {
    VpcC {
        profile: 0,
        level: 10,
        bit_depth: 8,
        chroma_subsampling: 0,
        video_full_range_flag: full_range,
        color_primaries: 2,
        transfer_characteristics: 2,
        matrix_coefficients: 2,
        codec_initialization_data: vec![],
    }
}

/// The tracks of one init segment. A change of any of it starts a new init
/// (and an `#EXT-X-DISCONTINUITY`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tracks {
    pub video: Option<VideoTrack>,
    /// Opus, 48 kHz; the channel count the decoder outputs.
    pub audio_channels: Option<u8>,
}

impl Tracks {
    /// RFC 6381 codecs, e.g. `avc1.64001f,opus` or `vp09.00.31.08,opus`.
    pub fn codecs(&self) -> String {
        let mut c: Vec<String> = Vec::new();
        if let Some(v) = &self.video {
            c.push(v.codec());
        }
        if self.audio_channels.is_some() {
            c.push("opus".into());
        }
        c.join(",")
    }
}

#[derive(Debug, thiserror::Error)]
#[error("fMP4 encoding: {0}")]
pub struct Mp4Error(#[from] mp4_atom::Error);

fn trak(track_id: u32, timescale: u32, handler: &[u8; 4], minf: Minf, tkhd: Tkhd) -> Trak {
    Trak {
        tkhd: Tkhd {
            track_id,
            enabled: true,
            in_movie: true,
            ..tkhd
        },
        mdia: Mdia {
            mdhd: Mdhd {
                timescale,
                language: "und".into(),
                ..Default::default()
            },
            hdlr: Hdlr {
                handler: FourCC::new(handler),
                name: "roomcast".into(),
            },
            minf,
        },
        ..Default::default()
    }
}

fn dinf() -> Dinf {
    Dinf {
        dref: Dref {
            entries: vec![Url::default().into()],
        },
    }
}

/// `ftyp` + `moov` for `tracks`.
pub fn init_segment(tracks: &Tracks) -> Result<Vec<u8>, Mp4Error> {
    let mut traks = Vec::new();
    let mut trex = Vec::new();
    if let Some(v) = &tracks.video {
        let minf = Minf {
            vmhd: Some(Vmhd::default()),
            dinf: dinf(),
            stbl: Stbl {
                stsd: Stsd {
                    codecs: vec![v.sample_entry()],
                },
                stco: Some(Stco::default()),
                ..Default::default()
            },
            ..Default::default()
        };
        let (width, height) = v.size();
        let tkhd = Tkhd {
            width: width.into(),
            height: height.into(),
            ..Default::default()
        };
        traks.push(trak(VIDEO_TRACK, VIDEO_TIMESCALE, b"vide", minf, tkhd));
        trex.push(VIDEO_TRACK);
    }
    if let Some(channels) = tracks.audio_channels {
        let opus = Opus {
            audio: Audio {
                data_reference_index: 1,
                channel_count: channels.into(),
                sample_size: 16,
                sample_rate: 48000.into(),
            },
            dops: Dops {
                output_channel_count: channels,
                // Unknown for packets taken from RTP; a live stream joined
                // mid-way has nothing to skip.
                pre_skip: 0,
                input_sample_rate: 48_000,
                output_gain: 0,
                channel_mapping: None,
            },
            btrt: None,
        };
        let minf = Minf {
            smhd: Some(Smhd::default()),
            dinf: dinf(),
            stbl: Stbl {
                stsd: Stsd {
                    codecs: vec![opus.into()],
                },
                stco: Some(Stco::default()),
                ..Default::default()
            },
            ..Default::default()
        };
        let tkhd = Tkhd {
            volume: 1.into(),
            alternate_group: 1,
            ..Default::default()
        };
        traks.push(trak(AUDIO_TRACK, AUDIO_TIMESCALE, b"soun", minf, tkhd));
        trex.push(AUDIO_TRACK);
    }
    let moov = Moov {
        mvhd: Mvhd {
            timescale: 1000,
            rate: 1.into(),
            volume: 1.into(),
            next_track_id: AUDIO_TRACK + 1,
            ..Default::default()
        },
        mvex: Some(Mvex {
            mehd: None,
            trex: trex
                .into_iter()
                .map(|track_id| Trex {
                    track_id,
                    default_sample_description_index: 1,
                    ..Default::default()
                })
                .collect(),
        }),
        trak: traks,
        ..Default::default()
    };
    let ftyp = Ftyp {
        major_brand: FourCC::new(b"iso6"),
        minor_version: 0,
        compatible_brands: vec![
            FourCC::new(b"iso6"),
            FourCC::new(b"cmfc"),
            FourCC::new(b"mp41"),
        ],
    };
    let mut out = Vec::with_capacity(1024);
    ftyp.encode(&mut out)?;
    moov.encode(&mut out)?;
    Ok(out)
}

/// One sample of a run: duration in the track's timescale, size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub duration: u32,
    pub size: u32,
    pub sync: bool,
}

/// One track's samples in a fragment; `data` is their bytes back to back.
pub struct Run<'a> {
    pub track_id: u32,
    /// Decode time of the first sample (`tfdt`), in the track's timescale.
    pub base_time: u64,
    pub samples: &'a [Sample],
    pub data: &'a [u8],
}

/// `moof` + `mdat` for `runs` (each non-empty), with `sequence` in `mfhd`.
/// Sample data is laid out in `mdat` in the order of `runs`; each `trun`'s
/// data offset counts from the start of the `moof` (`default-base-is-moof`).
pub fn fragment(sequence: u32, runs: &[Run<'_>]) -> Result<Vec<u8>, Mp4Error> {
    let traf = |r: &Run<'_>, data_offset: i32| Traf {
        tfhd: Tfhd {
            track_id: r.track_id,
            default_base_is_moof: true,
            ..Default::default()
        },
        tfdt: Some(Tfdt {
            base_media_decode_time: r.base_time,
        }),
        trun: vec![Trun {
            data_offset: Some(data_offset),
            samples: r
                .samples
                .iter()
                .map(|s| TrunEntry {
                    duration: Some(s.duration),
                    size: Some(s.size),
                    flags: Some(if s.sync { FLAGS_SYNC } else { FLAGS_NON_SYNC }),
                    cts: None,
                })
                .collect::<Vec<_>>()
                .into(),
        }],
        ..Default::default()
    };
    let mut moof = Moof {
        mfhd: Mfhd {
            sequence_number: sequence,
        },
        traf: runs.iter().map(|r| traf(r, 0)).collect(),
    };
    // The offsets do not change the moof's size: measure it, then fill them in.
    let mut probe =
        Vec::with_capacity(256 + 16 * runs.iter().map(|r| r.samples.len()).sum::<usize>());
    moof.encode(&mut probe)?;
    let moof_len = probe.len();
    let data_len: usize = runs.iter().map(|r| r.data.len()).sum();
    let mut offset = moof_len + 8;
    for (t, r) in moof.traf.iter_mut().zip(runs) {
        t.trun[0].data_offset = Some(offset as i32);
        offset += r.data.len();
    }
    let mut out = Vec::with_capacity(moof_len + 8 + data_len);
    moof.encode(&mut out)?;
    debug_assert_eq!(out.len(), moof_len);
    out.extend_from_slice(&((8 + data_len) as u32).to_be_bytes());
    out.extend_from_slice(b"mdat");
    for r in runs {
        out.extend_from_slice(r.data);
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use mp4_atom::{Any, Codec, Decode};

    // x264's 1280x720 High-profile SPS and PPS (from media/testdata).
    pub(crate) fn sps_pps() -> (Vec<u8>, Vec<u8>) {
        let data = bytes::Bytes::from_static(include_bytes!(
            "../../media/testdata/x264_bf0_1280x720.h264"
        ));
        let nals = crate::media::h264::split_annexb(&data);
        let find = |t| {
            nals.iter()
                .find(|n| crate::media::h264::nal_type(n) == t)
                .unwrap()
                .to_vec()
        };
        (find(7), find(8))
    }

    #[test]
    fn init_segment_parses_back_with_avc1_and_opus() {
        let (sps, pps) = sps_pps();
        let v = H264Track::new(&sps, &pps).unwrap();
        assert_eq!((v.width, v.height), (1280, 720));
        assert!(v.codec().starts_with("avc1.64"), "{}", v.codec());
        let tracks = Tracks {
            video: Some(VideoTrack::H264(v)),
            audio_channels: Some(2),
        };
        assert!(tracks.codecs().ends_with(",opus"));
        let bytes = init_segment(&tracks).unwrap();
        let buf = &mut std::io::Cursor::new(&bytes);
        let ftyp = Ftyp::decode(buf).unwrap();
        assert_eq!(ftyp.major_brand, FourCC::new(b"iso6"));
        let moov = Moov::decode(buf).unwrap();
        assert_eq!(buf.position() as usize, bytes.len(), "nothing after moov");
        assert_eq!(moov.trak.len(), 2);
        let video = &moov.trak[0];
        assert_eq!(video.tkhd.track_id, VIDEO_TRACK);
        assert_eq!(video.mdia.mdhd.timescale, 90_000);
        assert_eq!(video.mdia.hdlr.handler, FourCC::new(b"vide"));
        match &video.mdia.minf.stbl.stsd.codecs[0] {
            Codec::Avc1(a) => {
                assert_eq!(a.avcc.sequence_parameter_sets, vec![sps.clone()]);
                assert_eq!(a.avcc.picture_parameter_sets, vec![pps.clone()]);
                assert_eq!(a.avcc.length_size, 4);
                assert_eq!((a.visual.width, a.visual.height), (1280, 720));
            }
            other => panic!("video sample entry {other:?}"),
        }
        let audio = &moov.trak[1];
        assert_eq!(audio.tkhd.track_id, AUDIO_TRACK);
        assert_eq!(audio.mdia.mdhd.timescale, 48_000);
        match &audio.mdia.minf.stbl.stsd.codecs[0] {
            Codec::Opus(o) => {
                assert_eq!(o.dops.output_channel_count, 2);
                assert_eq!(o.dops.input_sample_rate, 48_000);
            }
            other => panic!("audio sample entry {other:?}"),
        }
        let trex = &moov.mvex.as_ref().unwrap().trex;
        assert_eq!(trex.iter().map(|t| t.track_id).collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn ten_bit_vp9_and_av1_tracks_encode_and_name_their_codec() {
        use crate::media::{av1, vp9};
        let frames = |ivf| crate::media::vp9::tests::ivf_frames(ivf);
        // libvpx-vp9 -profile:v 2 -pix_fmt yuv420p10le, 160x90.
        let key = vp9::parse_keyframe(
            frames(include_bytes!(
                "../../media/testdata/vp9_p2_10bit_160x90.ivf"
            ))[0],
        )
        .unwrap();
        let v = VideoTrack::Vp9(Vp9Track::new(key).unwrap());
        assert_eq!(v.codec(), "vp09.02.10.10");
        // libaom-av1 -pix_fmt yuv420p10le, 160x90: Main profile, 10 bits.
        let tu = frames(include_bytes!("../../media/testdata/av1_10bit_160x90.ivf"))[0];
        let (obu, seq) = av1::find_sequence_header(tu).unwrap();
        let a = VideoTrack::Av1(Av1Track::new(obu, seq).unwrap());
        assert_eq!(a.codec(), format!("av01.0.{:02}M.10", seq.seq_level_idx_0));
        for video in [v, a] {
            let bytes = init_segment(&Tracks {
                video: Some(video.clone()),
                audio_channels: None,
            })
            .unwrap();
            let buf = &mut std::io::Cursor::new(&bytes);
            Ftyp::decode(buf).unwrap();
            let moov = Moov::decode(buf).unwrap();
            match (&moov.trak[0].mdia.minf.stbl.stsd.codecs[0], &video) {
                (Codec::Vp09(e), VideoTrack::Vp9(t)) => {
                    assert_eq!((e.vpcc.profile, e.vpcc.bit_depth), (2, 10));
                    assert_eq!(e.vpcc.level, t.level);
                    assert_eq!((e.visual.width, e.visual.height), (160, 90));
                }
                (Codec::Av01(e), VideoTrack::Av1(_)) => {
                    assert!(e.av1c.high_bitdepth && !e.av1c.twelve_bit);
                    assert_eq!(e.av1c.config_obus, obu);
                    assert_eq!((e.visual.width, e.visual.height), (160, 90));
                }
                (other, _) => panic!("{other:?}"),
            }
        }
        // VP8 (not served over HLS, but muxable): vp08 + vpcC.
        let vp8 = VideoTrack::Vp8(Vp8Track {
            width: 640,
            height: 360,
        });
        assert_eq!(vp8.codec(), "vp08.00.21.08");
        let bytes = init_segment(&Tracks {
            video: Some(vp8),
            audio_channels: Some(2),
        })
        .unwrap();
        let buf = &mut std::io::Cursor::new(&bytes);
        Ftyp::decode(buf).unwrap();
        assert!(matches!(
            Moov::decode(buf).unwrap().trak[0]
                .mdia
                .minf
                .stbl
                .stsd
                .codecs[0],
            Codec::Vp08(_)
        ));
    }

    #[test]
    fn fragment_offsets_sizes_and_times() {
        let video = [
            Sample {
                duration: 3000,
                size: 5,
                sync: true,
            },
            Sample {
                duration: 3003,
                size: 3,
                sync: false,
            },
        ];
        let audio = [Sample {
            duration: 960,
            size: 4,
            sync: true,
        }];
        let vdata = b"VVVVVvvv";
        let adata = b"AAAA";
        let bytes = fragment(
            7,
            &[
                Run {
                    track_id: VIDEO_TRACK,
                    base_time: 1 << 33,
                    samples: &video,
                    data: vdata,
                },
                Run {
                    track_id: AUDIO_TRACK,
                    base_time: 480_000,
                    samples: &audio,
                    data: adata,
                },
            ],
        )
        .unwrap();
        let buf = &mut std::io::Cursor::new(&bytes);
        let moof = match Any::decode(buf).unwrap() {
            Any::Moof(m) => m,
            other => panic!("{other:?}"),
        };
        let moof_len = buf.position() as usize;
        assert_eq!(moof.mfhd.sequence_number, 7);
        let mdat = &bytes[moof_len..];
        assert_eq!(&mdat[4..8], b"mdat");
        assert_eq!(
            u32::from_be_bytes(mdat[..4].try_into().unwrap()) as usize,
            mdat.len()
        );
        let t0 = &moof.traf[0];
        assert!(t0.tfhd.default_base_is_moof);
        assert_eq!(t0.tfdt.as_ref().unwrap().base_media_decode_time, 1 << 33);
        let run = &t0.trun[0];
        let off = run.data_offset.unwrap() as usize;
        assert_eq!(off, moof_len + 8);
        assert_eq!(&bytes[off..off + 8], vdata);
        let e: Vec<TrunEntry> = run.samples.iter().collect();
        assert_eq!(e[0].duration, Some(3000));
        assert_eq!(e[1].duration, Some(3003));
        assert_eq!(e[0].size, Some(5));
        assert_eq!(e[0].flags, Some(FLAGS_SYNC));
        assert_eq!(e[1].flags, Some(FLAGS_NON_SYNC));
        assert!(e.iter().all(|e| e.cts.unwrap_or(0) == 0));
        let t1 = &moof.traf[1];
        assert_eq!(t1.tfhd.track_id, AUDIO_TRACK);
        assert_eq!(t1.tfdt.as_ref().unwrap().base_media_decode_time, 480_000);
        let aoff = t1.trun[0].data_offset.unwrap() as usize;
        assert_eq!(&bytes[aoff..aoff + 4], adata);
        assert_eq!(aoff + 4, bytes.len());
    }
}
