//! Hub frames → FLV tag bodies for an RTMP push (sans-I/O).
//!
//! H.264 passes through: the RTP payloads the hub carries are reassembled
//! into the access unit's NAL units (no re-encode), written AVCC with 4-byte
//! lengths; SPS/PPS go out as the AVC sequence header before the first
//! keyframe and again whenever they change (a takeover by another encoder).
//! The hub drops B-frames, so composition time is always 0.
//! AV1 goes as Enhanced RTMP (`av01`, see [`super::flv_ex`]): the RTP
//! payloads become low-overhead OBUs as MP4 samples carry them, and the
//! sequence header OBU goes out as the `av1C` SequenceStart before the first
//! keyframe and whenever it changes. Only destinations that accept AV1 get
//! here (the push checks).
//! Audio is the RTMP publisher's original AAC from the hub's side track.

use bytes::{BufMut, Bytes, BytesMut};

use crate::hub::{Frame, Kind, SourceAac};
use crate::media::av1;
use crate::media::flv::AvcConfig;
use crate::media::h264;
use crate::media::rtp_h264::{DepacketizeError, depacketize};
use crate::media::rtp_video::{self, VideoCodec};

use super::flv_ex;

/// A hub frame the mux could not read (it waits for the next keyframe).
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    #[error("H.264: {0}")]
    H264(#[from] DepacketizeError),
    #[error("AV1: {0}")]
    Av1(&'static str),
    #[error("{0} cannot go over RTMP")]
    Codec(&'static str),
}

/// One FLV tag: its RTMP message kind, timestamp (ms from the push's first
/// keyframe) and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tag {
    Video { ts_ms: u32, body: Bytes },
    Audio { ts_ms: u32, body: Bytes },
}

/// FLV audio header byte for AAC: format 10, "44 kHz", 16-bit, stereo (fixed
/// for AAC; the real layout is in the AudioSpecificConfig).
const AAC_HEADER: u8 = 0xaf;
const AVC_KEYFRAME: u8 = 0x17;
const AVC_INTER: u8 = 0x27;

#[derive(Default)]
pub struct FlvMux {
    /// The 90 kHz stream time of the first keyframe sent: FLV time 0.
    base: Option<u32>,
    publisher: Option<u64>,
    waiting_keyframe: bool,
    sps: Option<Vec<u8>>,
    pps: Option<Vec<u8>>,
    sent_params: Option<(Vec<u8>, Vec<u8>)>,
    sent_aac_config: Option<Bytes>,
    /// The AV1 sequence header OBU last sent as SequenceStart.
    sent_av1_config: Option<Vec<u8>>,
    /// The codec of the last frame: a change needs new sequence headers.
    codec: Option<VideoCodec>,
    fu_scratch: Vec<u8>,
    /// A frame's OBUs (AV1), reused.
    obus: Vec<u8>,
    body: BytesMut,
}

impl FlvMux {
    pub fn new() -> Self {
        FlvMux {
            waiting_keyframe: true,
            ..Default::default()
        }
    }

    /// After frames were skipped (a full queue): nothing is sent until the
    /// next keyframe, which references nothing before it.
    pub fn resync(&mut self) {
        self.waiting_keyframe = true;
    }

    /// Nothing goes out until a keyframe: the push asks the publisher.
    pub fn waiting_for_keyframe(&self) -> bool {
        self.waiting_keyframe
    }

    fn ts(&self, rtp_90k: u32) -> Option<u32> {
        let d = rtp_90k.wrapping_sub(self.base?) as i32;
        (d >= 0).then_some(d as u32 / 90)
    }

    /// A video hub frame of `codec`; pushes 0, 1 or 2 tags (sequence
    /// header + frame).
    pub fn video(
        &mut self,
        frame: &Frame,
        codec: VideoCodec,
        out: &mut Vec<Tag>,
    ) -> Result<(), MuxError> {
        debug_assert_eq!(frame.kind, Kind::Video);
        if self.publisher != Some(frame.publisher) || self.codec != Some(codec) {
            self.publisher = Some(frame.publisher);
            self.codec = Some(codec);
            self.waiting_keyframe = true;
        }
        if self.waiting_keyframe && !frame.keyframe {
            return Ok(());
        }
        match codec {
            VideoCodec::H264 => Ok(self.video_h264(frame, out)?),
            VideoCodec::Av1 => self.video_av1(frame, out).map_err(MuxError::Av1),
            VideoCodec::Vp8 | VideoCodec::Vp9 => Err(MuxError::Codec(codec.name())),
        }
    }

    fn video_h264(&mut self, frame: &Frame, out: &mut Vec<Tag>) -> Result<(), DepacketizeError> {
        let header = if frame.keyframe {
            AVC_KEYFRAME
        } else {
            AVC_INTER
        };
        let mut body = std::mem::take(&mut self.body);
        body.clear();
        body.put_slice(&[header, 1, 0, 0, 0]);
        let (mut sps, mut pps) = (None, None);
        let res = depacketize(
            frame.payloads.iter().map(|p| &p[..]),
            &mut self.fu_scratch,
            |nal| match h264::nal_type(nal) {
                h264::NAL_SPS => sps = Some(nal.to_vec()),
                h264::NAL_PPS => pps = Some(nal.to_vec()),
                // Access unit delimiters are optional and FLV muxers drop them.
                9 => {}
                _ => {
                    body.put_u32(nal.len() as u32);
                    body.put_slice(nal);
                }
            },
        );
        if let Err(e) = res {
            self.body = body;
            self.waiting_keyframe = true;
            return Err(e);
        }
        if sps.is_some() {
            self.sps = sps;
        }
        if pps.is_some() {
            self.pps = pps;
        }
        if frame.keyframe {
            let (Some(sps), Some(pps)) = (&self.sps, &self.pps) else {
                // Nothing can decode it without parameter sets: wait.
                self.body = body;
                return Ok(());
            };
            self.base.get_or_insert(frame.rtp_time);
            if self.sent_params.as_ref() != Some(&(sps.clone(), pps.clone())) {
                let rec = AvcConfig {
                    sps: vec![Bytes::copy_from_slice(sps)],
                    pps: vec![Bytes::copy_from_slice(pps)],
                    nal_length_size: 4,
                }
                .to_record();
                let mut h = BytesMut::with_capacity(5 + rec.len());
                h.put_slice(&[AVC_KEYFRAME, 0, 0, 0, 0]);
                h.put_slice(&rec);
                out.push(Tag::Video {
                    ts_ms: self.ts(frame.rtp_time).unwrap_or(0),
                    body: h.freeze(),
                });
                self.sent_params = Some((sps.clone(), pps.clone()));
            }
            self.waiting_keyframe = false;
        }
        let Some(ts_ms) = self.ts(frame.rtp_time) else {
            self.body = body;
            return Ok(());
        };
        if body.len() > 5 {
            // The tag owns its body until the push has chunked it; split
            // keeps the spare capacity, reclaimed once the tag is dropped.
            out.push(Tag::Video {
                ts_ms,
                body: body.split().freeze(),
            });
        }
        self.body = body;
        Ok(())
    }

    /// AV1 as Enhanced RTMP: a CodedFrames tag of the frame's OBUs (no
    /// composition time for AV1), after the `av1C` SequenceStart at a
    /// keyframe whose sequence header is new.
    fn video_av1(&mut self, frame: &Frame, out: &mut Vec<Tag>) -> Result<(), &'static str> {
        self.obus.clear();
        if let Err(e) = rtp_video::depacketize(
            VideoCodec::Av1,
            frame.payloads.iter().map(|p| &p[..]),
            &mut self.obus,
            &mut self.fu_scratch,
        ) {
            self.waiting_keyframe = true;
            return Err(e);
        }
        if frame.keyframe {
            // Nothing can decode a keyframe without its sequence header.
            let Some((obu, sh)) = av1::find_sequence_header(&self.obus) else {
                return Ok(());
            };
            self.base.get_or_insert(frame.rtp_time);
            if self.sent_av1_config.as_deref() != Some(obu) {
                let mut h = BytesMut::with_capacity(9 + obu.len());
                flv_ex::ex_header(
                    true,
                    flv_ex::PACKET_SEQUENCE_START,
                    flv_ex::FOURCC_AV1,
                    &mut h,
                );
                flv_ex::av1_config_record(&sh, obu, &mut h);
                out.push(Tag::Video {
                    ts_ms: self.ts(frame.rtp_time).unwrap_or(0),
                    body: h.freeze(),
                });
                self.sent_av1_config = Some(obu.to_vec());
            }
            self.waiting_keyframe = false;
        }
        let Some(ts_ms) = self.ts(frame.rtp_time) else {
            return Ok(());
        };
        if self.obus.is_empty() {
            return Ok(());
        }
        let mut body = std::mem::take(&mut self.body);
        body.clear();
        flv_ex::ex_header(
            frame.keyframe,
            flv_ex::PACKET_CODED_FRAMES,
            flv_ex::FOURCC_AV1,
            &mut body,
        );
        body.put_slice(&self.obus);
        out.push(Tag::Video {
            ts_ms,
            body: body.split().freeze(),
        });
        self.body = body;
        Ok(())
    }

    /// The publisher's AAC; dropped until the first keyframe went out, so
    /// the destination's timeline starts with a picture.
    pub fn audio(&mut self, aac: &SourceAac, out: &mut Vec<Tag>) {
        if self.waiting_keyframe {
            return;
        }
        let Some(ts_ms) = self.ts(aac.rtp_time_90k) else {
            return;
        };
        if self.sent_aac_config.as_ref() != Some(&aac.config) {
            let mut h = BytesMut::with_capacity(2 + aac.config.len());
            h.put_slice(&[AAC_HEADER, 0]);
            h.put_slice(&aac.config);
            out.push(Tag::Audio {
                ts_ms,
                body: h.freeze(),
            });
            self.sent_aac_config = Some(aac.config.clone());
        }
        let mut b = BytesMut::with_capacity(2 + aac.payload.len());
        b.put_slice(&[AAC_HEADER, 1]);
        b.put_slice(&aac.payload);
        out.push(Tag::Audio {
            ts_ms,
            body: b.freeze(),
        });
    }

    /// A new connection: the destination must get the sequence headers
    /// again, and the stream restarts at a keyframe.
    pub fn reconnected(&mut self) {
        self.sent_params = None;
        self.sent_aac_config = None;
        self.sent_av1_config = None;
        self.waiting_keyframe = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::rtp_h264::H264Packetizer;
    use crate::media::rtp_video::VideoCodec::H264;
    use std::sync::Arc;
    use std::time::Instant;

    const SPS: &[u8] = &[0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01, 0x40, 0x16, 0xe8];
    const PPS: &[u8] = &[0x68, 0xce, 0x3c, 0x80];

    fn frame(rtp: u32, keyframe: bool, publisher: u64, nals: &[Bytes]) -> Frame {
        let mut p = H264Packetizer::new(100);
        let mut out = Vec::new();
        let params =
            keyframe.then(|| (vec![Bytes::from_static(SPS)], vec![Bytes::from_static(PPS)]));
        p.packetize(
            nals,
            params.as_ref().map(|(s, q)| (s.as_slice(), q.as_slice())),
            &mut out,
        );
        Frame {
            kind: Kind::Video,
            index: 0,
            kind_index: 0,
            rtp_time: rtp,
            wallclock: Instant::now(),
            received: Instant::now(),
            keyframe,
            publisher,
            payloads: out.iter().map(|b| Arc::from(&b[..])).collect(),
        }
    }

    fn idr() -> Bytes {
        let mut v = vec![0x65];
        v.extend(std::iter::repeat_n(0xab, 300)); // FU-A at 100 bytes
        Bytes::from(v)
    }

    #[test]
    fn sequence_header_then_avcc_frames_with_times_from_the_first_keyframe() {
        let mut m = FlvMux::new();
        let mut out = Vec::new();
        let aac = |t| SourceAac {
            config: Bytes::from_static(&[0x12, 0x10]),
            payload: Bytes::from_static(&[1, 2, 3]),
            rtp_time_90k: t,
            publisher: 1,
        };
        m.audio(&aac(900_000), &mut out);
        m.video(
            &frame(900_000, false, 1, &[Bytes::from_static(&[0x41, 9])]),
            H264,
            &mut out,
        )
        .unwrap();
        assert!(out.is_empty(), "nothing before the first keyframe");
        m.video(&frame(903_000, true, 1, &[idr()]), H264, &mut out)
            .unwrap();
        let Tag::Video { ts_ms: 0, body } = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(&body[..5], &[0x17, 0, 0, 0, 0]);
        let cfg = AvcConfig::parse(&body.slice(5..)).unwrap();
        assert_eq!((&cfg.sps[0][..], &cfg.pps[0][..]), (SPS, PPS));
        let Tag::Video { ts_ms: 0, body } = &out[1] else {
            panic!()
        };
        assert_eq!(&body[..5], &[0x17, 1, 0, 0, 0]);
        assert_eq!(u32::from_be_bytes(body[5..9].try_into().unwrap()), 301);
        assert_eq!(body[9..], idr()[..], "the NAL unit passes untouched");
        out.clear();
        m.audio(&aac(903_000 + 90 * 20), &mut out);
        m.audio(&aac(903_000 + 90 * 43), &mut out);
        assert_eq!(
            out,
            vec![
                Tag::Audio {
                    ts_ms: 20,
                    body: Bytes::from_static(&[0xaf, 0, 0x12, 0x10])
                },
                Tag::Audio {
                    ts_ms: 20,
                    body: Bytes::from_static(&[0xaf, 1, 1, 2, 3])
                },
                Tag::Audio {
                    ts_ms: 43,
                    body: Bytes::from_static(&[0xaf, 1, 1, 2, 3])
                },
            ]
        );
        out.clear();
        m.video(
            &frame(903_000 + 3000, false, 1, &[Bytes::from_static(&[0x41, 7])]),
            H264,
            &mut out,
        )
        .unwrap();
        assert_eq!(
            out,
            vec![Tag::Video {
                ts_ms: 33,
                body: Bytes::from_static(&[0x27, 1, 0, 0, 0, 0, 0, 0, 2, 0x41, 7])
            }]
        );
        // A takeover: the new publisher's inter frames wait for its keyframe,
        // which comes without a new sequence header (same SPS/PPS).
        out.clear();
        m.video(
            &frame(903_000 + 9000, false, 2, &[Bytes::from_static(&[0x41, 7])]),
            H264,
            &mut out,
        )
        .unwrap();
        assert!(out.is_empty());
        m.video(&frame(903_000 + 12000, true, 2, &[idr()]), H264, &mut out)
            .unwrap();
        assert_eq!(out.len(), 1);
        // A reconnect sends the headers again.
        m.reconnected();
        out.clear();
        m.video(&frame(903_000 + 15000, true, 2, &[idr()]), H264, &mut out)
            .unwrap();
        assert_eq!(out.len(), 2);
    }
}
