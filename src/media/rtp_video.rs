//! Video RTP payloads as WebRTC publishers send them (H.264 RFC 6184, VP8 RFC
//! 7741, VP9 RFC 9628, AV1 RTP spec), read without depacketizing: which packet
//! starts a frame, which frame is a keyframe, the picture size, and the H.264
//! parameter sets. [`FrameAssembler`] groups packets into whole frames by
//! sequence number, timestamp and marker bit, so the payloads can be forwarded
//! to every viewer exactly as they arrived.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{av1, bits, h264};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VideoCodec {
    H264,
    Vp8,
    Vp9,
    Av1,
}

impl VideoCodec {
    /// The name in SDP and in the API.
    pub fn name(self) -> &'static str {
        match self {
            VideoCodec::H264 => "H264",
            VideoCodec::Vp8 => "VP8",
            VideoCodec::Vp9 => "VP9",
            VideoCodec::Av1 => "AV1",
        }
    }

    /// From an `a=rtpmap` encoding name (any case).
    pub fn from_name(name: &str) -> Option<VideoCodec> {
        match name.to_ascii_uppercase().as_str() {
            "H264" => Some(VideoCodec::H264),
            "VP8" => Some(VideoCodec::Vp8),
            "VP9" => Some(VideoCodec::Vp9),
            "AV1" | "AV1X" => Some(VideoCodec::Av1),
            _ => None,
        }
    }
}

/// Whether this packet is the first of a frame (so a frame whose first packet
/// was lost is never taken for whole).
pub fn starts_frame(codec: VideoCodec, p: &[u8]) -> bool {
    match codec {
        VideoCodec::H264 => match p.first().map(|b| b & 0x1f) {
            None => false,
            // FU-A: only the fragment with the start bit.
            Some(h264::NAL_FU_A) => p.get(1).is_some_and(|b| b & 0x80 != 0),
            Some(_) => true,
        },
        // S bit and partition index 0.
        VideoCodec::Vp8 => p.first().is_some_and(|b| b & 0x10 != 0 && b & 0x07 == 0),
        // B bit (beginning of a frame).
        VideoCodec::Vp9 => p.first().is_some_and(|b| b & 0x08 != 0),
        // Z bit clear: the first OBU element does not continue an earlier packet.
        VideoCodec::Av1 => p.first().is_some_and(|b| b & 0x80 == 0),
    }
}

/// Whether this packet shows its frame is a keyframe. For VP8, VP9 and AV1 only
/// the first packet of a frame says so; for H.264 any packet carrying an IDR.
pub fn is_keyframe(codec: VideoCodec, p: &[u8]) -> bool {
    match codec {
        VideoCodec::H264 => h264_nal_types(p).any(|t| t == h264::NAL_IDR),
        VideoCodec::Vp8 => vp8_payload(p).is_some_and(|(start, payload)| {
            // P bit (bit 0 of the first payload byte) clear: a key frame.
            start && payload.first().is_some_and(|b| b & 0x01 == 0)
        }),
        VideoCodec::Vp9 => {
            let Some(&d) = p.first() else {
                return false;
            };
            let (b, pred, layer) = (d & 0x08 != 0, d & 0x40 != 0, d & 0x20 != 0);
            if !b || pred {
                return false;
            }
            // With layer indices, only spatial layer 0 starts a key picture.
            !layer || vp9_spatial_id(p).is_some_and(|sid| sid == 0)
        }
        // N bit: the first packet of a coded video sequence.
        VideoCodec::Av1 => p.first().is_some_and(|b| b & 0x08 != 0),
    }
}

/// NAL unit types in an H.264 payload: a single NAL, each NAL of a STAP-A, or
/// the type inside an FU-A.
pub fn h264_nal_types(p: &[u8]) -> impl Iterator<Item = u8> + '_ {
    let first = p.first().map(|b| b & 0x1f);
    let mut stap = match first {
        Some(h264::NAL_STAP_A) => Some(1usize),
        _ => None,
    };
    let mut single = match first {
        Some(h264::NAL_STAP_A) | None => None,
        Some(h264::NAL_FU_A) => p.get(1).map(|b| b & 0x1f),
        Some(t) => Some(t),
    };
    std::iter::from_fn(move || {
        if let Some(t) = single.take() {
            return Some(t);
        }
        let i = stap?;
        let len = u16::from_be_bytes([*p.get(i)?, *p.get(i + 1)?]) as usize;
        let nal = p.get(i + 2..i + 2 + len)?;
        stap = Some(i + 2 + len);
        nal.first().map(|b| b & 0x1f)
    })
}

/// SPS and PPS NAL units carried whole (single NAL or inside a STAP-A).
pub fn h264_parameter_sets(p: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    match p.first().map(|b| b & 0x1f) {
        Some(h264::NAL_SPS | h264::NAL_PPS) => out.push(p),
        Some(h264::NAL_STAP_A) => {
            let mut i = 1;
            while let (Some(&a), Some(&b)) = (p.get(i), p.get(i + 1)) {
                let len = u16::from_be_bytes([a, b]) as usize;
                let Some(nal) = p.get(i + 2..i + 2 + len) else {
                    break;
                };
                if matches!(
                    nal.first().map(|b| b & 0x1f),
                    Some(h264::NAL_SPS | h264::NAL_PPS)
                ) {
                    out.push(nal);
                }
                i += 2 + len;
            }
        }
        _ => {}
    }
    out
}

/// A STAP-A payload carrying `nals` (SPS and PPS ahead of an IDR).
pub fn h264_stap_a(nals: &[&[u8]]) -> Vec<u8> {
    let nri = nals
        .iter()
        .filter_map(|n| n.first())
        .map(|b| b & 0x60)
        .max();
    let mut out = vec![nri.unwrap_or(0x60) | h264::NAL_STAP_A];
    for n in nals {
        out.extend_from_slice(&(n.len() as u16).to_be_bytes());
        out.extend_from_slice(n);
    }
    out
}

/// The VP8 payload after the payload descriptor, and whether this packet starts
/// partition 0 (where the payload header is).
fn vp8_payload(p: &[u8]) -> Option<(bool, &[u8])> {
    let d = *p.first()?;
    let start = d & 0x10 != 0 && d & 0x07 == 0;
    let mut i = 1;
    if d & 0x80 != 0 {
        let x = *p.get(1)?;
        i = 2;
        if x & 0x80 != 0 {
            // PictureID: 7 or 15 bits.
            i += if p.get(i)? & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            i += 1; // TID/Y/KEYIDX
        }
    }
    Some((start, p.get(i..)?))
}

fn vp9_spatial_id(p: &[u8]) -> Option<u8> {
    let d = *p.first()?;
    let mut i = 1;
    if d & 0x80 != 0 {
        i += if p.get(i)? & 0x80 != 0 { 2 } else { 1 };
    }
    Some((p.get(i)? >> 1) & 0x07)
}

/// The VP9 payload after the payload descriptor.
fn vp9_payload(p: &[u8]) -> Option<&[u8]> {
    let d = *p.first()?;
    let (i_bit, pred, layer, flex, ss) = (
        d & 0x80 != 0,
        d & 0x40 != 0,
        d & 0x20 != 0,
        d & 0x10 != 0,
        d & 0x02 != 0,
    );
    let mut i = 1;
    if i_bit {
        i += if p.get(i)? & 0x80 != 0 { 2 } else { 1 };
    }
    if layer {
        i += 1;
        if !flex {
            i += 1; // TL0PICIDX
        }
    }
    if flex && pred {
        // Up to three P_DIFF bytes, each with N (another follows) in bit 0.
        for _ in 0..3 {
            let b = *p.get(i)?;
            i += 1;
            if b & 0x01 == 0 {
                break;
            }
        }
    }
    if ss {
        let v = *p.get(i)?;
        i += 1;
        let spatial = usize::from((v >> 5) + 1);
        if v & 0x10 != 0 {
            i += 4 * spatial; // WIDTH, HEIGHT per layer
        }
        if v & 0x08 != 0 {
            let groups = usize::from(*p.get(i)?);
            i += 1;
            for _ in 0..groups {
                let g = *p.get(i)?;
                i += 1 + usize::from((g >> 2) & 0x03);
            }
        }
    }
    p.get(i..)
}

/// The picture size a keyframe's first packet states (VP8, VP9, and AV1's
/// sequence header). H.264 sizes come from the SPS ([`h264::parse_sps`]).
pub fn keyframe_dimensions(codec: VideoCodec, p: &[u8]) -> Option<(u32, u32)> {
    match codec {
        VideoCodec::Vp8 => {
            let (start, b) = vp8_payload(p)?;
            // 3-byte frame tag, start code 9d 01 2a, then 14-bit width and height.
            if !start || b.get(3..6)? != [0x9d, 0x01, 0x2a] {
                return None;
            }
            let w = u16::from_le_bytes([*b.get(6)?, *b.get(7)?]) & 0x3fff;
            let h = u16::from_le_bytes([*b.get(8)?, *b.get(9)?]) & 0x3fff;
            Some((u32::from(w), u32::from(h)))
        }
        VideoCodec::Vp9 => vp9_frame_size(vp9_payload(p)?),
        VideoCodec::Av1 => av1_frame_size(p),
        VideoCodec::H264 => None,
    }
}

/// The first OBU of an AV1 RTP payload, when it is a sequence header (a new
/// coded video sequence starts with one): its max_frame_width/height.
fn av1_frame_size(p: &[u8]) -> Option<(u32, u32)> {
    let agg = *p.first()?;
    if agg & 0x80 != 0 {
        return None; // continues an OBU from an earlier packet
    }
    let w = (agg >> 4) & 0x03;
    let mut i = 1;
    // With W = 1 the only element has no length field; otherwise LEB128.
    let len = if w == 1 {
        p.len() - 1
    } else {
        let mut v = 0usize;
        for k in 0..8 {
            let b = *p.get(i)?;
            i += 1;
            v |= usize::from(b & 0x7f) << (7 * k);
            if b & 0x80 == 0 {
                break;
            }
        }
        v
    };
    let obu = p.get(i..i + len.min(p.len().saturating_sub(i)))?;
    let header = *obu.first()?;
    if (header >> 3) & 0x0f != 1 {
        return None; // not OBU_SEQUENCE_HEADER
    }
    let ext = header & 0x04 != 0;
    let mut r = Bits {
        data: obu.get(if ext { 2 } else { 1 }..)?,
        pos: 0,
    };
    r.read(3)?; // seq_profile
    r.read(1)?; // still_picture
    if r.read(1)? == 1 {
        r.read(5)?; // reduced_still_picture_header: seq_level_idx
    } else {
        if r.read(1)? == 1 {
            // timing_info
            r.read(32)?;
            r.read(32)?;
            if r.read(1)? == 1 {
                // num_ticks_per_picture_minus_1, uvlc
                let mut zeros = 0;
                while r.read(1)? == 0 {
                    zeros += 1;
                    if zeros > 31 {
                        return None;
                    }
                }
                r.read(zeros)?;
            }
            if r.read(1)? == 1 {
                return None; // decoder model info: not needed by WebRTC senders
            }
        }
        let initial_display_delay = r.read(1)? == 1;
        let points = r.read(5)? + 1;
        for _ in 0..points {
            r.read(12)?; // operating_point_idc
            if r.read(5)? > 7 {
                r.read(1)?; // seq_tier
            }
            if initial_display_delay && r.read(1)? == 1 {
                r.read(4)?;
            }
        }
    }
    let wbits = r.read(4)? as usize + 1;
    let hbits = r.read(4)? as usize + 1;
    let width = r.read(wbits)? + 1;
    let height = r.read(hbits)? + 1;
    Some((width, height))
}

/// Reads frame_width/height from a VP9 key frame's uncompressed header.
fn vp9_frame_size(b: &[u8]) -> Option<(u32, u32)> {
    let mut r = Bits { data: b, pos: 0 };
    if r.read(2)? != 2 {
        return None; // frame_marker
    }
    let low = r.read(1)?;
    let high = r.read(1)?;
    let profile = (high << 1) | low;
    if profile == 3 {
        r.read(1)?;
    }
    if r.read(1)? == 1 {
        return None; // show_existing_frame
    }
    if r.read(1)? != 0 {
        return None; // not a key frame
    }
    r.read(2)?; // show_frame, error_resilient_mode
    if r.read(24)? != 0x49_83_42 {
        return None;
    }
    // color_config
    if profile >= 2 {
        r.read(1)?; // ten_or_twelve_bit
    }
    let color_space = r.read(3)?;
    if color_space != 7 {
        r.read(1)?; // color_range
        if profile == 1 || profile == 3 {
            r.read(3)?; // subsampling_x, subsampling_y, reserved
        }
    } else if profile == 1 || profile == 3 {
        r.read(1)?;
    }
    let w = r.read(16)? + 1;
    let h = r.read(16)? + 1;
    Some((w, h))
}

struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn read(&mut self, n: usize) -> Option<u32> {
        let mut v = 0u32;
        for _ in 0..n {
            let byte = *self.data.get(self.pos / 8)?;
            let bit = (byte >> (7 - self.pos % 8)) & 1;
            v = (v << 1) | u32::from(bit);
            self.pos += 1;
        }
        Some(v)
    }
}

/// A VP8, VP9 or AV1 frame's bitstream from its RTP payloads (a whole frame,
/// as [`FrameAssembler`] gives them), appended to `out`, as MP4 samples and
/// decoders take it: VP8 and VP9 with the payload descriptors removed (VP9:
/// spatial layer 0 only, a picture every decoder can use); AV1 as
/// low-overhead OBUs, each with `obu_has_size_field` set, OBUs split across
/// packets joined (in `scratch`), and temporal delimiters, tile lists,
/// padding and redundant frame headers left out (AV1 in MP4 omits them).
/// On an error `out` holds a part of the frame, to be thrown away.
pub fn depacketize<'a>(
    codec: VideoCodec,
    payloads: impl IntoIterator<Item = &'a [u8]>,
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> Result<(), &'static str> {
    match codec {
        VideoCodec::H264 => return Err("H.264 is depacketized by rtp_h264"),
        VideoCodec::Vp8 => {
            for p in payloads {
                let (_, data) = vp8_payload(p).ok_or("truncated VP8 payload descriptor")?;
                out.extend_from_slice(data);
            }
        }
        VideoCodec::Vp9 => {
            for p in payloads {
                let layered = p.first().is_some_and(|d| d & 0x20 != 0);
                if layered && vp9_spatial_id(p).ok_or("truncated VP9 layer indices")? > 0 {
                    continue;
                }
                out.extend_from_slice(vp9_payload(p).ok_or("truncated VP9 payload descriptor")?);
            }
        }
        VideoCodec::Av1 => {
            scratch.clear();
            let mut open = false; // scratch holds an OBU that continues
            for p in payloads {
                let (&agg, mut rest) = p.split_first().ok_or("empty AV1 payload")?;
                let (z, y, w) = (agg & 0x80 != 0, agg & 0x40 != 0, (agg >> 4) & 0x03);
                if z != open {
                    return Err(if z {
                        "AV1 packet continues an OBU that did not start"
                    } else {
                        "AV1 OBU cut short by the next packet"
                    });
                }
                let mut element = 0u8;
                while !rest.is_empty() {
                    // With W > 0 the W-th element has no length field.
                    let data;
                    if w != 0 && element + 1 == w {
                        (data, rest) = (rest, &[][..]);
                    } else {
                        let (len, n) = bits::leb128(rest).ok_or("bad AV1 OBU element length")?;
                        data = rest
                            .get(n..n.saturating_add(len))
                            .ok_or("AV1 OBU element runs past its packet")?;
                        rest = &rest[n + len..];
                    }
                    if !open {
                        scratch.clear();
                    }
                    scratch.extend_from_slice(data);
                    open = rest.is_empty() && y;
                    if !open {
                        write_obu(scratch, out)?;
                    }
                    element = element.saturating_add(1);
                }
            }
            if open {
                return Err("AV1 frame ends inside an OBU");
            }
        }
    }
    Ok(())
}

/// One OBU as RTP carries it (usually without a size field) → `out` with one.
fn write_obu(obu: &[u8], out: &mut Vec<u8>) -> Result<(), &'static str> {
    if obu.is_empty() {
        return Ok(()); // an empty element: nothing to write
    }
    let (o, _) = av1::split_obu(obu)?;
    if matches!(
        o.obu_type,
        av1::OBU_TEMPORAL_DELIMITER
            | av1::OBU_TILE_LIST
            | av1::OBU_PADDING
            | av1::OBU_REDUNDANT_FRAME_HEADER
    ) {
        return Ok(());
    }
    let header_len = if obu[0] & 0x04 != 0 { 2 } else { 1 };
    out.push(obu[0] | 0x02);
    out.extend_from_slice(&obu[1..header_len]);
    bits::write_leb128(out, o.payload.len());
    out.extend_from_slice(o.payload);
    Ok(())
}

/// One whole video frame, its payloads in sequence order (the last carried the
/// marker bit).
#[derive(Debug)]
pub struct AssembledFrame {
    /// Extended RTP time (90 kHz).
    pub rtp_time: u64,
    pub keyframe: bool,
    pub payloads: Vec<Arc<[u8]>>,
}

#[derive(Debug)]
pub enum Assembled {
    Frame(AssembledFrame),
    /// Packets were lost for good: frames are dropped until the next keyframe,
    /// which the publisher should be asked for.
    NeedKeyframe,
    /// The frame being assembled grew past the byte cap (a publisher that
    /// never sets the marker bit, or a hostile one): it was dropped, and the
    /// publisher should be too.
    TooLarge {
        bytes: usize,
        max: usize,
    },
}

/// How long a missing packet is waited for (a NACK and its retransmission)
/// before the frame is given up.
pub const GAP_WAIT: Duration = Duration::from_millis(250);
/// Packets held behind a gap at most.
const MAX_PENDING: usize = 1024;

struct Pkt {
    time: u64,
    marker: bool,
    payload: Arc<[u8]>,
}

struct Building {
    time: u64,
    clean_start: bool,
    keyframe: bool,
    bytes: usize,
    payloads: Vec<Arc<[u8]>>,
}

/// Groups a publisher's video packets into frames. Packets are taken in
/// sequence order; a frame is forwarded only when whole (its first packet
/// starts a frame, no packet is missing, it ends at the marker bit). After a
/// loss nothing is forwarded until a keyframe, so viewers never decode garbage.
pub struct FrameAssembler {
    codec: VideoCodec,
    pending: BTreeMap<u64, Pkt>,
    next_seq: Option<u64>,
    current: Option<Building>,
    waiting_keyframe: bool,
    gap_since: Option<Instant>,
    /// A frame may not grow past this many payload bytes.
    max_frame_bytes: usize,
}

impl FrameAssembler {
    /// An assembler with the default frame cap (`limits.max_frame_bytes`).
    pub fn new(codec: VideoCodec) -> Self {
        Self::with_max_frame_bytes(codec, super::DEFAULT_MAX_FRAME_BYTES)
    }

    /// An assembler that gives up on a frame larger than `max_frame_bytes`
    /// ([`Assembled::TooLarge`]).
    pub fn with_max_frame_bytes(codec: VideoCodec, max_frame_bytes: usize) -> Self {
        FrameAssembler {
            max_frame_bytes,
            codec,
            pending: BTreeMap::new(),
            next_seq: None,
            current: None,
            // Start at a keyframe: the first packets may be mid-frame.
            waiting_keyframe: true,
            gap_since: None,
        }
    }

    pub fn codec(&self) -> VideoCodec {
        self.codec
    }

    /// Feeds one packet (extended sequence number and RTP time).
    pub fn push(
        &mut self,
        seq: u64,
        time: u64,
        marker: bool,
        payload: Arc<[u8]>,
        now: Instant,
        out: &mut Vec<Assembled>,
    ) {
        let next = *self.next_seq.get_or_insert(seq);
        if seq < next {
            return; // a late duplicate, or given up on
        }
        self.pending.insert(
            seq,
            Pkt {
                time,
                marker,
                payload,
            },
        );
        self.drain(out);
        if self.pending.is_empty() {
            self.gap_since = None;
        } else {
            self.gap_since.get_or_insert(now);
            if self.pending.len() > MAX_PENDING {
                self.skip_gap(now, out);
            }
        }
    }

    /// Gives up on a missing packet after [`GAP_WAIT`].
    pub fn poll(&mut self, now: Instant, out: &mut Vec<Assembled>) {
        if self
            .gap_since
            .is_some_and(|t| now.duration_since(t) >= GAP_WAIT)
        {
            self.skip_gap(now, out);
        }
    }

    /// When [`FrameAssembler::poll`] wants to run next.
    pub fn deadline(&self) -> Option<Instant> {
        self.gap_since.map(|t| t + GAP_WAIT)
    }

    fn skip_gap(&mut self, now: Instant, out: &mut Vec<Assembled>) {
        let Some((&first, _)) = self.pending.iter().next() else {
            self.gap_since = None;
            return;
        };
        // The frame being built lost a packet.
        self.current = None;
        self.waiting_keyframe = true;
        out.push(Assembled::NeedKeyframe);
        self.next_seq = Some(first);
        self.gap_since = None;
        self.drain(out);
        if !self.pending.is_empty() {
            self.gap_since = Some(now);
        }
    }

    fn drain(&mut self, out: &mut Vec<Assembled>) {
        while let Some(next) = self.next_seq {
            let Some(p) = self.pending.remove(&next) else {
                break;
            };
            self.next_seq = Some(next + 1);
            self.process(p, out);
        }
    }

    fn process(&mut self, p: Pkt, out: &mut Vec<Assembled>) {
        if let Some(cur) = &self.current
            && cur.time != p.time
        {
            // A new timestamp without a marker on the last packet: the previous
            // frame ended there (some senders omit the marker).
            let done = self.current.take();
            self.finish(done, out);
        }
        let codec = self.codec;
        let cur = self.current.get_or_insert_with(|| Building {
            time: p.time,
            clean_start: starts_frame(codec, &p.payload),
            keyframe: false,
            bytes: 0,
            payloads: Vec::new(),
        });
        if !cur.keyframe && is_keyframe(codec, &p.payload) {
            cur.keyframe = true;
        }
        cur.bytes += p.payload.len();
        if cur.bytes > self.max_frame_bytes {
            let bytes = cur.bytes;
            self.current = None;
            self.waiting_keyframe = true;
            out.push(Assembled::TooLarge {
                bytes,
                max: self.max_frame_bytes,
            });
            return;
        }
        cur.payloads.push(p.payload);
        if p.marker {
            let done = self.current.take();
            self.finish(done, out);
        }
    }

    fn finish(&mut self, frame: Option<Building>, out: &mut Vec<Assembled>) {
        let Some(f) = frame else { return };
        if !f.clean_start {
            if !self.waiting_keyframe {
                self.waiting_keyframe = true;
                out.push(Assembled::NeedKeyframe);
            }
            return;
        }
        if self.waiting_keyframe {
            if !f.keyframe {
                return;
            }
            self.waiting_keyframe = false;
        }
        out.push(Assembled::Frame(AssembledFrame {
            rtp_time: f.time,
            keyframe: f.keyframe,
            payloads: f.payloads,
        }));
    }

    /// Whether frames are being dropped until a keyframe.
    pub fn waiting_for_keyframe(&self) -> bool {
        self.waiting_keyframe
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn a(v: &[u8]) -> Arc<[u8]> {
        Arc::from(v)
    }

    /// VP9 payloads of `frame`: non-flexible mode with layer indices (spatial
    /// layer `sid`), 15-bit picture ids, `mtu` bytes of data each.
    pub(crate) fn vp9_packets(frame: &[u8], sid: u8, mtu: usize) -> Vec<Vec<u8>> {
        let chunks: Vec<&[u8]> = frame.chunks(mtu).collect();
        let n = chunks.len();
        chunks
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let b = if i == 0 { 0x08 } else { 0 };
                let e = if i + 1 == n { 0x04 } else { 0 };
                let mut p = vec![0x80 | 0x20 | b | e, 0x81, 0x23, sid << 1, 7];
                p.extend_from_slice(c);
                p
            })
            .collect()
    }

    /// AV1 payloads of a temporal unit (low-overhead OBUs, as libaom writes
    /// it): temporal delimiters left out and size fields removed, as WebRTC
    /// senders do; every element with a length (W = 0), split at `mtu`.
    pub(crate) fn av1_packets(tu: &[u8], mtu: usize) -> Vec<Vec<u8>> {
        let mut packets = Vec::new();
        let mut cur = vec![0u8];
        for o in av1::obus(tu).map(Result::unwrap) {
            if o.obu_type == av1::OBU_TEMPORAL_DELIMITER {
                continue;
            }
            let hl = if o.bytes[0] & 0x04 != 0 { 2 } else { 1 };
            let mut e = vec![o.bytes[0] & !0x02];
            e.extend_from_slice(&o.bytes[1..hl]);
            e.extend_from_slice(o.payload);
            let mut rest = &e[..];
            loop {
                let take = rest.len().min(mtu.saturating_sub(cur.len() + 2).max(1));
                bits::write_leb128(&mut cur, take);
                cur.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if rest.is_empty() {
                    break;
                }
                cur[0] |= 0x40; // Y: continues in the next packet
                packets.push(std::mem::replace(&mut cur, vec![0x80])); // Z
            }
            if cur.len() + 16 > mtu {
                packets.push(std::mem::replace(&mut cur, vec![0]));
            }
        }
        if cur.len() > 1 {
            packets.push(cur);
        }
        packets
    }

    #[test]
    fn vp9_frames_depacketize_to_the_encoded_frame_base_layer_only() {
        let frames = crate::media::vp9::tests::ivf_frames(crate::media::vp9::tests::VP9_320X180);
        let key = frames[0];
        let mut packets = vp9_packets(key, 0, 500);
        assert!(packets.len() > 2);
        // A spatial layer 1 packet of the same picture is left out.
        packets.extend(vp9_packets(frames[1], 1, 500));
        let (mut out, mut scratch) = (Vec::new(), Vec::new());
        depacketize(
            VideoCodec::Vp9,
            packets.iter().map(|p| &p[..]),
            &mut out,
            &mut scratch,
        )
        .unwrap();
        assert_eq!(out, key);
        let k = crate::media::vp9::parse_keyframe(&out).unwrap();
        assert_eq!((k.width, k.height), (320, 180));
        assert_eq!(
            keyframe_dimensions(VideoCodec::Vp9, &packets[0]),
            Some((320, 180))
        );
    }

    #[test]
    fn av1_frames_depacketize_to_low_overhead_obus_with_sizes() {
        let frames = crate::media::vp9::tests::ivf_frames(crate::media::av1::tests::AV1_320X180);
        for (tu, mtu) in [(frames[0], 300), (frames[1], 64), (frames[0], 5000)] {
            let packets = av1_packets(tu, mtu);
            let (mut out, mut scratch) = (Vec::new(), Vec::new());
            depacketize(
                VideoCodec::Av1,
                packets.iter().map(|p| &p[..]),
                &mut out,
                &mut scratch,
            )
            .unwrap();
            // The same OBUs, each with a size field, without the temporal delimiter.
            let want: Vec<(u8, &[u8])> = av1::obus(tu)
                .map(Result::unwrap)
                .filter(|o| o.obu_type != av1::OBU_TEMPORAL_DELIMITER)
                .map(|o| (o.bytes[0] | 0x02, o.payload))
                .collect();
            let got: Vec<(u8, &[u8])> = av1::obus(&out)
                .map(Result::unwrap)
                .map(|o| (o.bytes[0], o.payload))
                .collect();
            assert_eq!(got, want, "mtu {mtu}");
        }
        let (_, sh) = av1::find_sequence_header(&{
            let mut out = Vec::new();
            let p = av1_packets(frames[0], 1200);
            depacketize(
                VideoCodec::Av1,
                p.iter().map(|p| &p[..]),
                &mut out,
                &mut Vec::new(),
            )
            .unwrap();
            out
        })
        .unwrap();
        assert_eq!((sh.max_width, sh.max_height), (320, 180));

        // W = 2: the second element runs to the end without a length.
        let sh_obu = [0x08u8, 0x00, 0x00];
        let frame_obu = [0x30u8, 0xaa, 0xbb, 0xcc];
        let mut p = vec![0x20, 3];
        p.extend_from_slice(&sh_obu);
        p.extend_from_slice(&frame_obu);
        let mut out = Vec::new();
        depacketize(VideoCodec::Av1, [&p[..]], &mut out, &mut Vec::new()).unwrap();
        assert_eq!(out, [0x0a, 2, 0, 0, 0x32, 3, 0xaa, 0xbb, 0xcc]);

        // A packet continuing an OBU that did not start, or a frame ending
        // inside one, is an error (a lost packet in between is the assembler's
        // to see, by sequence number: OBUs in RTP carry no size).
        let packets = av1_packets(frames[0], 300);
        let mut lost = packets.clone();
        lost.remove(0);
        let r = depacketize(
            VideoCodec::Av1,
            lost.iter().map(|p| &p[..]),
            &mut Vec::new(),
            &mut Vec::new(),
        );
        assert!(r.is_err(), "{r:?}");
        let r = depacketize(
            VideoCodec::Av1,
            packets[..1].iter().map(|p| &p[..]),
            &mut Vec::new(),
            &mut Vec::new(),
        );
        assert!(r.is_err(), "ends inside an OBU: {r:?}");
    }

    #[test]
    fn depacketize_never_panics_on_random_payloads() {
        let mut x = 0x2545_f491u32;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        let (mut out, mut scratch) = (Vec::new(), Vec::new());
        for _ in 0..3000 {
            let packets: Vec<Vec<u8>> = (0..rnd() % 4)
                .map(|_| (0..rnd() % 40).map(|_| rnd() as u8).collect())
                .collect();
            for codec in [
                VideoCodec::Vp8,
                VideoCodec::Vp9,
                VideoCodec::Av1,
                VideoCodec::H264,
            ] {
                out.clear();
                let _ = depacketize(
                    codec,
                    packets.iter().map(|p| &p[..]),
                    &mut out,
                    &mut scratch,
                );
            }
        }
    }

    #[test]
    fn h264_keyframes_in_single_stap_a_and_fu_a() {
        let idr = [0x65, 0x88, 0x80];
        let p_slice = [0x41, 0x9a];
        let sps = [0x67, 0x42, 0xc0, 0x1f];
        let pps = [0x68, 0xce, 0x3c, 0x80];
        assert!(is_keyframe(VideoCodec::H264, &idr));
        assert!(!is_keyframe(VideoCodec::H264, &p_slice));
        let stap = h264_stap_a(&[&sps, &pps, &idr]);
        assert_eq!(stap[0], 0x78);
        assert!(is_keyframe(VideoCodec::H264, &stap));
        assert_eq!(h264_parameter_sets(&stap), vec![&sps[..], &pps[..]]);
        let stap_no_idr = h264_stap_a(&[&sps, &pps]);
        assert!(!is_keyframe(VideoCodec::H264, &stap_no_idr));
        // FU-A of an IDR: start, middle, end fragments.
        let fu_start = [0x7c, 0x85, 1, 2];
        let fu_mid = [0x7c, 0x05, 3];
        let fu_p = [0x5c, 0x81, 3];
        assert!(is_keyframe(VideoCodec::H264, &fu_start));
        assert!(starts_frame(VideoCodec::H264, &fu_start));
        assert!(!starts_frame(VideoCodec::H264, &fu_mid));
        assert!(!is_keyframe(VideoCodec::H264, &fu_p));
        // Truncated STAP-A: no panic, no keyframe beyond the data.
        assert!(!is_keyframe(VideoCodec::H264, &[0x78, 0x00, 0x09, 0x65]));
        assert!(!is_keyframe(VideoCodec::H264, &[]));
    }

    #[test]
    fn vp8_keyframe_and_size() {
        // Descriptor: X=1 S=1 PID=0; I=1 with a 15-bit picture id.
        let mut key = vec![0x90, 0x80, 0x81, 0x23];
        // Payload header: P=0 (key frame), then start code and 640x360.
        key.extend_from_slice(&[0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01]);
        assert!(is_keyframe(VideoCodec::Vp8, &key));
        assert!(starts_frame(VideoCodec::Vp8, &key));
        assert_eq!(keyframe_dimensions(VideoCodec::Vp8, &key), Some((640, 360)));
        let mut inter = vec![0x90, 0x80, 0x01];
        inter.extend_from_slice(&[0x31, 0x00, 0x00]);
        assert!(!is_keyframe(VideoCodec::Vp8, &inter));
        // A continuation packet (S=0) never says key frame.
        assert!(!is_keyframe(VideoCodec::Vp8, &[0x00, 0x00]));
        assert!(!starts_frame(VideoCodec::Vp8, &[0x00, 0x00]));
        for n in 0..key.len() {
            let _ = is_keyframe(VideoCodec::Vp8, &key[..n]);
            let _ = keyframe_dimensions(VideoCodec::Vp8, &key[..n]);
        }
    }

    #[test]
    fn vp9_keyframe_and_size() {
        // I=1 (7-bit picture id), P=0, B=1, E=1 ; then an uncompressed header:
        // marker 2, profile 0, show_existing 0, key frame, show 1, er 0,
        // sync code, color space 1 (BT.601), range 0, 1280x720.
        let mut bits = Vec::new();
        let mut push = |v: u32, n: usize| {
            for i in (0..n).rev() {
                bits.push(((v >> i) & 1) as u8);
            }
        };
        push(2, 2);
        push(0, 2);
        push(0, 1);
        push(0, 1);
        push(1, 1);
        push(0, 1);
        push(0x49_83_42, 24);
        push(1, 3);
        push(0, 1);
        push(1279, 16);
        push(719, 16);
        while !bits.len().is_multiple_of(8) {
            bits.push(0);
        }
        let header: Vec<u8> = bits
            .chunks(8)
            .map(|c| c.iter().fold(0u8, |acc, b| (acc << 1) | b))
            .collect();
        let mut key = vec![0x8c, 0x12];
        key.extend_from_slice(&header);
        assert!(is_keyframe(VideoCodec::Vp9, &key));
        assert!(starts_frame(VideoCodec::Vp9, &key));
        assert_eq!(
            keyframe_dimensions(VideoCodec::Vp9, &key),
            Some((1280, 720))
        );
        // P=1: inter frame.
        assert!(!is_keyframe(VideoCodec::Vp9, &[0xcc, 0x13, 0x00]));
        // Not the beginning of a frame.
        assert!(!is_keyframe(VideoCodec::Vp9, &[0x84, 0x13, 0x00]));
        for n in 0..key.len() {
            let _ = keyframe_dimensions(VideoCodec::Vp9, &key[..n]);
        }
    }

    #[test]
    fn av1_aggregation_header() {
        assert!(is_keyframe(VideoCodec::Av1, &[0x18, 0x0a]));
        assert!(!is_keyframe(VideoCodec::Av1, &[0x10, 0x32]));
        assert!(starts_frame(VideoCodec::Av1, &[0x10]));
        assert!(!starts_frame(VideoCodec::Av1, &[0x90]));
    }

    #[test]
    fn av1_sequence_header_size() {
        // A sequence header as libaom writes it for 640x360: profile 0, one
        // operating point at level 4.0 (seq_level_idx 8, so a tier bit), 10-bit
        // width and 9-bit height fields.
        let mut bits: Vec<u8> = Vec::new();
        let mut push = |v: u32, n: usize| {
            for i in (0..n).rev() {
                bits.push(((v >> i) & 1) as u8);
            }
        };
        push(0, 3); // seq_profile
        push(0, 1); // still_picture
        push(0, 1); // reduced_still_picture_header
        push(0, 1); // timing_info_present_flag
        push(0, 1); // initial_display_delay_present_flag
        push(0, 5); // operating_points_cnt_minus_1
        push(0, 12); // operating_point_idc
        push(8, 5); // seq_level_idx
        push(0, 1); // seq_tier
        push(9, 4); // frame_width_bits_minus_1
        push(8, 4); // frame_height_bits_minus_1
        push(639, 10);
        push(359, 9);
        while !bits.len().is_multiple_of(8) {
            bits.push(0);
        }
        let body: Vec<u8> = bits
            .chunks(8)
            .map(|c| c.iter().fold(0u8, |acc, b| (acc << 1) | b))
            .collect();
        // Aggregation header: N=1, W=2 (two OBUs, the first with a length).
        let mut p = vec![0x28, (body.len() + 1) as u8, 0x08];
        p.extend_from_slice(&body);
        p.extend_from_slice(&[0x30, 0x00]); // the frame OBU that follows
        assert!(is_keyframe(VideoCodec::Av1, &p));
        assert_eq!(keyframe_dimensions(VideoCodec::Av1, &p), Some((640, 360)));
        for n in 0..p.len() {
            let _ = keyframe_dimensions(VideoCodec::Av1, &p[..n]);
        }
    }

    fn frames(out: &[Assembled]) -> Vec<(u64, bool, usize)> {
        out.iter()
            .filter_map(|o| match o {
                Assembled::Frame(f) => Some((f.rtp_time, f.keyframe, f.payloads.len())),
                Assembled::NeedKeyframe | Assembled::TooLarge { .. } => None,
            })
            .collect()
    }

    #[test]
    fn assembles_reordered_frames_and_starts_at_a_keyframe() {
        let t0 = Instant::now();
        let mut fa = FrameAssembler::new(VideoCodec::H264);
        let mut out = Vec::new();
        // A P-frame first: dropped (no keyframe yet).
        fa.push(10, 0, true, a(&[0x41, 1]), t0, &mut out);
        // Keyframe of 3 packets, arriving out of order.
        fa.push(11, 3000, false, a(&[0x78, 0, 2, 0x67, 0x42]), t0, &mut out);
        fa.push(13, 3000, true, a(&[0x7c, 0x45, 9]), t0, &mut out);
        fa.push(12, 3000, false, a(&[0x7c, 0x85, 9]), t0, &mut out);
        fa.push(14, 6000, true, a(&[0x41, 2]), t0, &mut out);
        assert_eq!(frames(&out), vec![(3000, true, 3), (6000, false, 1)]);
        // Duplicates are ignored.
        out.clear();
        fa.push(13, 3000, true, a(&[0x7c, 0x45, 9]), t0, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn garbage_never_panics() {
        let t0 = Instant::now();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for codec in [
            VideoCodec::H264,
            VideoCodec::Vp8,
            VideoCodec::Vp9,
            VideoCodec::Av1,
        ] {
            let mut fa = FrameAssembler::new(codec);
            let mut out = Vec::new();
            for i in 0..5000u64 {
                let len = (next() % 40) as usize;
                let payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                let _ = is_keyframe(codec, &payload);
                let _ = keyframe_dimensions(codec, &payload);
                let _ = h264_parameter_sets(&payload);
                let seq = i + next() % 8;
                fa.push(seq, next() % 5, next() % 3 == 0, a(&payload), t0, &mut out);
                if i % 100 == 0 {
                    fa.poll(t0 + GAP_WAIT * (i as u32 / 100 + 1), &mut out);
                }
            }
        }
    }

    #[test]
    fn a_lost_packet_drops_frames_until_the_next_keyframe() {
        let t0 = Instant::now();
        let mut fa = FrameAssembler::new(VideoCodec::Vp8);
        let mut out = Vec::new();
        let key = a(&[0x10, 0x00]);
        let inter_start = a(&[0x10, 0x01]);
        let cont = a(&[0x00, 0xff]);
        fa.push(1, 0, true, key.clone(), t0, &mut out);
        fa.push(2, 10, false, inter_start.clone(), t0, &mut out);
        // seq 3 is lost; 4 ends that frame, 5 is the next frame.
        fa.push(4, 10, true, cont.clone(), t0, &mut out);
        fa.push(5, 20, true, inter_start.clone(), t0, &mut out);
        assert_eq!(frames(&out), vec![(0, true, 1)]);
        assert_eq!(fa.deadline(), Some(t0 + GAP_WAIT));
        out.clear();
        fa.poll(t0 + GAP_WAIT, &mut out);
        assert!(matches!(out[0], Assembled::NeedKeyframe));
        assert!(
            frames(&out).is_empty(),
            "inter frames after a loss are dropped"
        );
        assert!(fa.waiting_for_keyframe());
        out.clear();
        fa.push(6, 30, true, key.clone(), t0, &mut out);
        fa.push(7, 40, true, inter_start, t0, &mut out);
        assert_eq!(frames(&out), vec![(30, true, 1), (40, false, 1)]);
        // A late retransmission of 3 is ignored.
        out.clear();
        fa.push(3, 10, false, cont, t0, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn a_frame_that_never_ends_is_capped() {
        // A publisher that never sets the marker bit nor changes the timestamp.
        let mut fa = FrameAssembler::with_max_frame_bytes(VideoCodec::Vp8, 10_000);
        let now = Instant::now();
        let mut out = Vec::new();
        let key = a(&[0x10, 0x00, 0, 0, 0x9d, 0x01, 0x2a, 0, 0, 0, 0]);
        fa.push(1, 0, false, key, now, &mut out);
        let chunk = a(&[0u8; 1000]);
        let mut seq = 2;
        while out.is_empty() {
            fa.push(seq, 0, false, chunk.clone(), now, &mut out);
            seq += 1;
            assert!(seq < 20, "the cap must trip after ~10 packets");
        }
        assert!(matches!(
            out[..],
            [Assembled::TooLarge {
                bytes: 10_011,
                max: 10_000
            }]
        ));
        // Nothing is held any more, and what follows waits for a keyframe.
        assert!(fa.current.is_none());
        assert!(fa.waiting_for_keyframe());
        out.clear();
        fa.push(seq, 0, true, chunk.clone(), now, &mut out);
        assert!(out.is_empty());
        // A frame under the cap still passes.
        let key = a(&[0x10, 0x00, 0, 0, 0x9d, 0x01, 0x2a, 0, 0, 0, 0]);
        fa.push(seq + 1, 9000, false, key, now, &mut out);
        fa.push(seq + 2, 9000, true, chunk, now, &mut out);
        assert!(
            matches!(out[..], [Assembled::Frame(ref f)] if f.keyframe && f.payloads.len() == 2)
        );
    }
}
