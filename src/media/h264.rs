//! H.264 bitstream knowledge: NAL unit headers, SPS parsing (size, profile,
//! frame rate, reordering), slice types and Annex B splitting.

use bytes::Bytes;
use thiserror::Error;

/// Coded slice of a non-IDR picture.
pub const NAL_SLICE: u8 = 1;
/// Coded slice data partition A.
pub const NAL_SLICE_DPA: u8 = 2;
/// Coded slice of an IDR picture.
pub const NAL_IDR: u8 = 5;
/// Supplemental enhancement information.
pub const NAL_SEI: u8 = 6;
/// Sequence parameter set.
pub const NAL_SPS: u8 = 7;
/// Picture parameter set.
pub const NAL_PPS: u8 = 8;
/// Access unit delimiter.
pub const NAL_AUD: u8 = 9;
/// End of sequence.
pub const NAL_END_SEQUENCE: u8 = 10;
/// End of stream.
pub const NAL_END_STREAM: u8 = 11;
/// Filler data.
pub const NAL_FILLER: u8 = 12;
/// RTP aggregation packet STAP-A (RFC 6184), never in an elementary stream.
pub const NAL_STAP_A: u8 = 24;
/// RTP fragmentation unit FU-A (RFC 6184), never in an elementary stream.
pub const NAL_FU_A: u8 = 28;

/// Why an H.264 structure could not be parsed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum H264Error {
    /// The NAL unit is not of the expected type.
    #[error("expected NAL unit type {expected}, got {got}")]
    WrongNalType { expected: u8, got: u8 },
    /// The bitstream ended before the structure was complete.
    #[error("H.264 {0} is truncated")]
    Truncated(&'static str),
    /// A syntax element has a value the standard forbids.
    #[error("H.264 {what} has invalid value {value}")]
    Invalid { what: &'static str, value: u64 },
}

/// Type of a NAL unit (0 for an empty slice).
pub fn nal_type(nal: &[u8]) -> u8 {
    nal.first().map_or(0, |b| b & 0x1f)
}

/// nal_ref_idc of a NAL unit: 0 means no other picture references it.
pub fn nal_ref_idc(nal: &[u8]) -> u8 {
    nal.first().map_or(0, |b| (b >> 5) & 0x03)
}

/// Whether the NAL unit carries coded picture data (a VCL NAL unit).
pub fn is_vcl(nal: &[u8]) -> bool {
    (1..=5).contains(&nal_type(nal))
}

/// Whether an access unit contains an IDR slice (a point a decoder can start from).
pub fn is_idr_frame(nalus: &[Bytes]) -> bool {
    nalus.iter().any(|n| nal_type(n) == NAL_IDR)
}

/// Bit reader over an RBSP that skips emulation-prevention bytes on the fly,
/// so callers never need an unescaped copy.
pub(crate) struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
    bit: u8,
    zeros: u8,
    what: &'static str,
}

impl<'a> BitReader<'a> {
    /// Reader for `data`; `what` names the structure in error messages.
    pub(crate) fn new(data: &'a [u8], what: &'static str) -> Self {
        let mut r = BitReader {
            data,
            pos: 0,
            bit: 0,
            zeros: 0,
            what,
        };
        r.enter_byte();
        r
    }

    // Called whenever `pos` points at a fresh byte: drop 0x03 after two zero bytes.
    fn enter_byte(&mut self) {
        if self.zeros >= 2 && self.data.get(self.pos) == Some(&0x03) {
            self.pos += 1;
            self.zeros = 0;
        }
    }

    fn truncated(&self) -> H264Error {
        H264Error::Truncated(self.what)
    }

    pub(crate) fn read_bit(&mut self) -> Result<u32, H264Error> {
        let byte = *self.data.get(self.pos).ok_or_else(|| self.truncated())?;
        let v = (byte >> (7 - self.bit)) & 1;
        self.bit += 1;
        if self.bit == 8 {
            self.bit = 0;
            self.zeros = if byte == 0 {
                self.zeros.saturating_add(1)
            } else {
                0
            };
            self.pos += 1;
            self.enter_byte();
        }
        Ok(u32::from(v))
    }

    pub(crate) fn read_bits(&mut self, n: u32) -> Result<u32, H264Error> {
        debug_assert!(n <= 32);
        let mut v: u32 = 0;
        for _ in 0..n {
            v = (v << 1) | self.read_bit()?;
        }
        Ok(v)
    }

    pub(crate) fn read_flag(&mut self) -> Result<bool, H264Error> {
        Ok(self.read_bit()? == 1)
    }

    /// Unsigned exp-Golomb ue(v).
    pub(crate) fn read_ue(&mut self) -> Result<u32, H264Error> {
        let mut leading = 0u32;
        while self.read_bit()? == 0 {
            leading += 1;
            // 32 leading zeros would overflow u32; the standard never needs them.
            if leading > 31 {
                return Err(H264Error::Invalid {
                    what: "exp-Golomb code",
                    value: u64::from(leading),
                });
            }
        }
        if leading == 0 {
            return Ok(0);
        }
        let rest = self.read_bits(leading)?;
        Ok(((1u64 << leading) - 1 + u64::from(rest)) as u32)
    }

    /// Signed exp-Golomb se(v).
    pub(crate) fn read_se(&mut self) -> Result<i32, H264Error> {
        let k = i64::from(self.read_ue()?);
        let v = if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) };
        Ok(v as i32)
    }

    /// ue(v) that must not exceed `max`.
    fn read_ue_max(&mut self, max: u32, what: &'static str) -> Result<u32, H264Error> {
        let v = self.read_ue()?;
        if v > max {
            return Err(H264Error::Invalid {
                what,
                value: u64::from(v),
            });
        }
        Ok(v)
    }
}

/// The parts of a sequence parameter set the server needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Sps {
    /// profile_idc (66 baseline, 77 main, 100 high, …).
    pub profile_idc: u8,
    /// constraint_set0..5 flags as the byte that follows profile_idc.
    pub constraint_flags: u8,
    /// level_idc (31 = level 3.1).
    pub level_idc: u8,
    /// Displayed width in pixels, after cropping.
    pub width: u32,
    /// Displayed height in pixels, after cropping.
    pub height: u32,
    /// Frame rate from the VUI timing info, if the encoder wrote it.
    pub fps: Option<f64>,
    /// VUI max_num_reorder_frames, if the encoder wrote bitstream restrictions.
    pub max_num_reorder_frames: Option<u32>,
    /// chroma_format_idc (1 = 4:2:0).
    pub chroma_format_idc: u8,
    /// Luma bit depth (8 for nearly every stream).
    pub bit_depth_luma: u8,
    /// Chroma bit depth.
    pub bit_depth_chroma: u8,
}

impl Sps {
    /// profile-level-id for SDP fmtp, as 0xPPCCLL.
    pub fn profile_level_id(&self) -> u32 {
        (u32::from(self.profile_idc) << 16)
            | (u32::from(self.constraint_flags) << 8)
            | u32::from(self.level_idc)
    }

    /// RFC 6381 codec string for HLS/MSE, e.g. `avc1.64001f`.
    pub fn codec_string(&self) -> String {
        format!("avc1.{:06x}", self.profile_level_id())
    }

    /// Whether the stream may contain B-frames (pictures decoded out of order).
    pub fn b_frames_possible(&self) -> bool {
        match self.max_num_reorder_frames {
            Some(n) => n > 0,
            // Baseline has no B slices; constraint_set3 on intra/CAVLC-444
            // profiles implies no reordering (H.264 E.2.1).
            None => {
                let constrained = self.constraint_flags & 0x10 != 0
                    && matches!(self.profile_idc, 44 | 86 | 100 | 110 | 122 | 244);
                !(self.profile_idc == 66 || constrained)
            }
        }
    }
}

// Profiles whose SPS carries chroma format, bit depth and scaling lists (7.3.2.1.1).
fn has_chroma_info(profile_idc: u8) -> bool {
    matches!(
        profile_idc,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    )
}

fn skip_scaling_list(r: &mut BitReader<'_>, size: usize) -> Result<(), H264Error> {
    let mut last: i32 = 8;
    let mut next: i32 = 8;
    for _ in 0..size {
        if next != 0 {
            let delta = r.read_se()?;
            if !(-128..=127).contains(&delta) {
                return Err(H264Error::Invalid {
                    what: "scaling list delta",
                    value: delta.unsigned_abs().into(),
                });
            }
            next = (last + delta + 256).rem_euclid(256);
        }
        if next != 0 {
            last = next;
        }
    }
    Ok(())
}

/// Parse a sequence parameter set NAL unit (with its one-byte header).
pub fn parse_sps(nal: &[u8]) -> Result<Sps, H264Error> {
    let t = nal_type(nal);
    if t != NAL_SPS {
        return Err(H264Error::WrongNalType {
            expected: NAL_SPS,
            got: t,
        });
    }
    let mut r = BitReader::new(&nal[1..], "SPS");
    let profile_idc = r.read_bits(8)? as u8;
    let constraint_flags = r.read_bits(8)? as u8;
    let level_idc = r.read_bits(8)? as u8;
    r.read_ue_max(31, "seq_parameter_set_id")?;

    let mut chroma_format_idc = 1u32;
    let mut separate_colour_plane = false;
    let mut bit_depth_luma = 8u32;
    let mut bit_depth_chroma = 8u32;
    if has_chroma_info(profile_idc) {
        chroma_format_idc = r.read_ue_max(3, "chroma_format_idc")?;
        if chroma_format_idc == 3 {
            separate_colour_plane = r.read_flag()?;
        }
        bit_depth_luma = r.read_ue_max(6, "bit_depth_luma_minus8")? + 8;
        bit_depth_chroma = r.read_ue_max(6, "bit_depth_chroma_minus8")? + 8;
        r.read_flag()?; // qpprime_y_zero_transform_bypass_flag
        if r.read_flag()? {
            let lists = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.read_flag()? {
                    skip_scaling_list(&mut r, if i < 6 { 16 } else { 64 })?;
                }
            }
        }
    }

    r.read_ue_max(12, "log2_max_frame_num_minus4")?;
    match r.read_ue_max(2, "pic_order_cnt_type")? {
        0 => {
            r.read_ue_max(12, "log2_max_pic_order_cnt_lsb_minus4")?;
        }
        1 => {
            r.read_flag()?; // delta_pic_order_always_zero_flag
            r.read_se()?; // offset_for_non_ref_pic
            r.read_se()?; // offset_for_top_to_bottom_field
            let cycle = r.read_ue_max(255, "num_ref_frames_in_pic_order_cnt_cycle")?;
            for _ in 0..cycle {
                r.read_se()?;
            }
        }
        _ => {}
    }
    r.read_ue()?; // max_num_ref_frames
    r.read_flag()?; // gaps_in_frame_num_value_allowed_flag
    let width_mbs = u64::from(r.read_ue()?) + 1;
    let height_map_units = u64::from(r.read_ue()?) + 1;
    let frame_mbs_only = r.read_flag()?;
    if !frame_mbs_only {
        r.read_flag()?; // mb_adaptive_frame_field_flag
    }
    r.read_flag()?; // direct_8x8_inference_flag
    let (mut crop_l, mut crop_r, mut crop_t, mut crop_b) = (0u64, 0u64, 0u64, 0u64);
    if r.read_flag()? {
        crop_l = r.read_ue()?.into();
        crop_r = r.read_ue()?.into();
        crop_t = r.read_ue()?.into();
        crop_b = r.read_ue()?.into();
    }

    // Crop units depend on chroma subsampling and field coding (7.4.2.1.1).
    let field_factor: u64 = if frame_mbs_only { 1 } else { 2 };
    let chroma_array_type = if separate_colour_plane {
        0
    } else {
        chroma_format_idc
    };
    let (crop_unit_x, crop_unit_y) = match chroma_array_type {
        0 => (1, field_factor),
        1 => (2, 2 * field_factor),
        2 => (2, field_factor),
        _ => (1, field_factor),
    };
    let coded_w = width_mbs * 16;
    let coded_h = height_map_units * 16 * field_factor;
    let crop_w = (crop_l + crop_r) * crop_unit_x;
    let crop_h = (crop_t + crop_b) * crop_unit_y;
    // 16384 is beyond any level's limit; larger means a corrupt SPS.
    if coded_w > 16384 || coded_h > 16384 {
        return Err(H264Error::Invalid {
            what: "picture size",
            value: coded_w.max(coded_h),
        });
    }
    if crop_w >= coded_w || crop_h >= coded_h {
        return Err(H264Error::Invalid {
            what: "frame cropping",
            value: crop_w.max(crop_h),
        });
    }

    let mut sps = Sps {
        profile_idc,
        constraint_flags,
        level_idc,
        width: (coded_w - crop_w) as u32,
        height: (coded_h - crop_h) as u32,
        fps: None,
        max_num_reorder_frames: None,
        chroma_format_idc: chroma_format_idc as u8,
        bit_depth_luma: bit_depth_luma as u8,
        bit_depth_chroma: bit_depth_chroma as u8,
    };
    if r.read_flag()? {
        // Some encoders write truncated or odd VUI; what was read before the
        // problem is still right, and size/profile matter more than VUI.
        let _ = parse_vui(&mut r, &mut sps);
    }
    Ok(sps)
}

fn skip_hrd(r: &mut BitReader<'_>) -> Result<(), H264Error> {
    let cpb_cnt = r.read_ue_max(31, "cpb_cnt_minus1")? + 1;
    r.read_bits(8)?; // bit_rate_scale, cpb_size_scale
    for _ in 0..cpb_cnt {
        r.read_ue()?; // bit_rate_value_minus1
        r.read_ue()?; // cpb_size_value_minus1
        r.read_flag()?; // cbr_flag
    }
    r.read_bits(20)?; // four 5-bit delay/length fields
    Ok(())
}

fn parse_vui(r: &mut BitReader<'_>, sps: &mut Sps) -> Result<(), H264Error> {
    if r.read_flag()? {
        // aspect_ratio_idc 255 = Extended_SAR with explicit width/height.
        if r.read_bits(8)? == 255 {
            r.read_bits(32)?;
        }
    }
    if r.read_flag()? {
        r.read_flag()?; // overscan_appropriate_flag
    }
    if r.read_flag()? {
        r.read_bits(4)?; // video_format, video_full_range_flag
        if r.read_flag()? {
            r.read_bits(24)?; // colour primaries, transfer, matrix
        }
    }
    if r.read_flag()? {
        r.read_ue()?; // chroma_sample_loc_type_top_field
        r.read_ue()?; // chroma_sample_loc_type_bottom_field
    }
    if r.read_flag()? {
        let num_units_in_tick = r.read_bits(32)?;
        let time_scale = r.read_bits(32)?;
        r.read_flag()?; // fixed_frame_rate_flag
        if num_units_in_tick > 0 && time_scale > 0 {
            // One frame is two ticks (field-based clock, E.2.1).
            sps.fps = Some(f64::from(time_scale) / (2.0 * f64::from(num_units_in_tick)));
        }
    }
    let nal_hrd = r.read_flag()?;
    if nal_hrd {
        skip_hrd(r)?;
    }
    let vcl_hrd = r.read_flag()?;
    if vcl_hrd {
        skip_hrd(r)?;
    }
    if nal_hrd || vcl_hrd {
        r.read_flag()?; // low_delay_hrd_flag
    }
    r.read_flag()?; // pic_struct_present_flag
    if r.read_flag()? {
        r.read_flag()?; // motion_vectors_over_pic_boundaries_flag
        r.read_ue()?; // max_bytes_per_pic_denom
        r.read_ue()?; // max_bits_per_mb_denom
        r.read_ue()?; // log2_max_mv_length_horizontal
        r.read_ue()?; // log2_max_mv_length_vertical
        sps.max_num_reorder_frames = Some(r.read_ue()?);
        r.read_ue()?; // max_dec_frame_buffering
    }
    Ok(())
}

/// Slice type from a slice header (values 5..9 fold onto 0..4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SliceType {
    /// Predicted from earlier pictures.
    P,
    /// Bi-predicted, may reference later pictures (needs reordering).
    B,
    /// Intra only.
    I,
    /// Switching P.
    Sp,
    /// Switching I.
    Si,
}

/// Slice type of a coded slice NAL unit (types 1 and 5); `None` for other
/// NAL types or an unreadable header.
pub fn slice_type(nal: &[u8]) -> Option<SliceType> {
    let t = nal_type(nal);
    if t != NAL_SLICE && t != NAL_IDR {
        return None;
    }
    let mut r = BitReader::new(&nal[1..], "slice header");
    r.read_ue().ok()?; // first_mb_in_slice
    let st = r.read_ue().ok()?;
    if st > 9 {
        return None;
    }
    match st % 5 {
        0 => Some(SliceType::P),
        1 => Some(SliceType::B),
        2 => Some(SliceType::I),
        3 => Some(SliceType::Sp),
        _ => Some(SliceType::Si),
    }
}

/// Whether any slice of the access unit is a B slice.
pub fn frame_has_b_slice(nalus: &[Bytes]) -> bool {
    nalus.iter().any(|n| slice_type(n) == Some(SliceType::B))
}

/// Split an Annex B byte stream (start-code delimited) into NAL units,
/// zero-copy. Trailing zero bytes before a start code are dropped.
pub fn split_annexb(data: &Bytes) -> Vec<Bytes> {
    let mut out = Vec::new();
    let d = &data[..];
    let mut start: Option<usize> = None;
    let mut i = 0;
    while i + 2 < d.len() {
        if d[i] == 0 && d[i + 1] == 0 && d[i + 2] == 1 {
            if let Some(s) = start {
                push_trimmed(&mut out, data, s, i);
            }
            i += 3;
            start = Some(i);
        } else {
            i += 1;
        }
    }
    if let Some(s) = start {
        push_trimmed(&mut out, data, s, d.len());
    }
    out
}

fn push_trimmed(out: &mut Vec<Bytes>, data: &Bytes, start: usize, mut end: usize) {
    // A NAL unit never ends in a zero byte (rbsp_trailing_bits), so zeros
    // belong to the next start code (the 4-byte form) or are padding.
    while end > start && data[end - 1] == 0 {
        end -= 1;
    }
    if end > start {
        out.push(data.slice(start..end));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Real x264 stream (`testsrc2` 320x180, 1 s, `-bf 2 -g 30 -crf 40`) in Annex B.
    pub(crate) const X264_BFRAMES: &[u8] = include_bytes!("testdata/x264_bf2_320x180.h264");
    /// Real x264 stream (1280x720 high profile, `-bf 0 -crf 45`), three frames.
    pub(crate) const X264_720P: &[u8] = include_bytes!("testdata/x264_bf0_1280x720.h264");

    pub(crate) fn nals(stream: &'static [u8]) -> Vec<Bytes> {
        split_annexb(&Bytes::from_static(stream))
    }

    pub(crate) fn first_of(stream: &'static [u8], t: u8) -> Bytes {
        nals(stream)
            .into_iter()
            .find(|n| nal_type(n) == t)
            .expect("fixture has the NAL type")
    }

    #[test]
    fn x264_720p_sps() {
        let sps = parse_sps(&first_of(X264_720P, NAL_SPS)).unwrap();
        assert_eq!((sps.width, sps.height), (1280, 720));
        assert_eq!(sps.profile_idc, 100);
        assert_eq!(sps.level_idc, 31);
        assert_eq!(sps.fps, Some(30.0));
        assert_eq!(sps.max_num_reorder_frames, Some(0));
        assert!(!sps.b_frames_possible());
        assert_eq!(sps.profile_level_id(), 0x64001f);
        assert_eq!(sps.codec_string(), "avc1.64001f");
        assert_eq!(sps.chroma_format_idc, 1);
    }

    #[test]
    fn x264_cropped_sps_with_bframes() {
        // 180 lines = 11.25 MB rows: x264 codes 192 and crops 12.
        let sps = parse_sps(&first_of(X264_BFRAMES, NAL_SPS)).unwrap();
        assert_eq!((sps.width, sps.height), (320, 180));
        assert_eq!(sps.fps, Some(30.0));
        assert_eq!(sps.max_num_reorder_frames, Some(2));
        assert!(sps.b_frames_possible());
    }

    #[test]
    fn sps_1080p_cropping() {
        // Baseline 1920x1080: 68 MB rows (1088) cropped by 4 units of 2 lines.
        // Built by hand: profile 66, level 40.
        let mut w = BitWriter::default();
        w.bits(66, 8);
        w.bits(0xc0, 8);
        w.bits(40, 8);
        w.ue(0); // sps id
        w.ue(0); // log2_max_frame_num_minus4
        w.ue(2); // poc type
        w.ue(1); // max_num_ref_frames
        w.bits(0, 1);
        w.ue(119); // width_mbs - 1
        w.ue(67); // height - 1
        w.bits(1, 1); // frame_mbs_only
        w.bits(1, 1); // direct_8x8
        w.bits(1, 1); // cropping
        w.ue(0);
        w.ue(0);
        w.ue(0);
        w.ue(4);
        w.bits(0, 1); // no VUI
        w.bits(1, 1); // stop bit
        let nal = escape(&[&[0x67][..], &w.finish()].concat());
        let sps = parse_sps(&nal).unwrap();
        assert_eq!((sps.width, sps.height), (1920, 1080));
        assert!(!sps.b_frames_possible());
        assert_eq!(sps.fps, None);
    }

    #[test]
    fn x264_interlaced_444_with_scaling_lists() {
        // x264 `-pix_fmt yuv444p -x264-params cqm=jvt -flags +ilme+ildct`, 1080i:
        // scaling-list syntax, field coding, 4:4:4 crop units and two
        // emulation-prevention bytes in 27 bytes.
        const SPS: &[u8] = &[
            0x67, 0xf4, 0x00, 0x28, 0x91, 0x9b, 0x28, 0x0f, 0x00, 0x89, 0xf9, 0x70, 0x11, 0x00,
            0x00, 0x03, 0x00, 0x01, 0x00, 0x00, 0x03, 0x00, 0x32, 0x1f, 0x16, 0x2d, 0x96,
        ];
        let sps = parse_sps(SPS).unwrap();
        assert_eq!((sps.width, sps.height), (1920, 1080));
        assert_eq!(sps.profile_idc, 244);
        assert_eq!(sps.chroma_format_idc, 3);
        assert_eq!(sps.fps, Some(25.0));
    }

    #[test]
    fn emulation_prevention_is_skipped() {
        // Payload bytes 00 00 03 01 must read as 00 00 01.
        let mut r = BitReader::new(&[0, 0, 3, 1, 0xff], "test");
        assert_eq!(r.read_bits(24).unwrap(), 1);
        assert_eq!(r.read_bits(8).unwrap(), 0xff);
        assert!(r.read_bit().is_err());
    }

    #[test]
    fn high_profile_with_scaling_lists() {
        // High 4:4:4 with explicit scaling lists and interlaced coding.
        let mut w = BitWriter::default();
        w.bits(244, 8);
        w.bits(0, 8);
        w.bits(40, 8);
        w.ue(0);
        w.ue(3); // chroma 4:4:4
        w.bits(0, 1); // separate_colour_plane
        w.ue(2); // bit depth 10
        w.ue(2);
        w.bits(0, 1);
        w.bits(1, 1); // seq_scaling_matrix_present
        for i in 0..12 {
            if i == 0 || i == 7 {
                w.bits(1, 1);
                let n = if i < 6 { 16 } else { 64 };
                for j in 0..n {
                    w.se(if j == 3 { -8 } else { 1 });
                }
            } else {
                w.bits(0, 1);
            }
        }
        w.ue(0);
        w.ue(0); // poc type 0
        w.ue(2);
        w.ue(4);
        w.bits(0, 1);
        w.ue(79); // 1280
        w.ue(22); // 23 map units * 2 fields * 16 = 736
        w.bits(0, 1); // frame_mbs_only = 0
        w.bits(0, 1); // mbaff
        w.bits(1, 1);
        w.bits(1, 1); // cropping
        w.ue(0);
        w.ue(0);
        w.ue(0);
        w.ue(8); // 8 * (1 * 2) = 16 lines
        w.bits(0, 1);
        w.bits(1, 1);
        let nal = escape(&[&[0x67][..], &w.finish()].concat());
        let sps = parse_sps(&nal).unwrap();
        assert_eq!((sps.width, sps.height), (1280, 720));
        assert_eq!(sps.chroma_format_idc, 3);
        assert_eq!(sps.bit_depth_luma, 10);
    }

    #[test]
    fn slice_types_in_x264_stream() {
        let all = nals(X264_BFRAMES);
        let types: Vec<_> = all.iter().filter_map(|n| slice_type(n)).collect();
        assert_eq!(types[0], SliceType::I);
        assert!(types.contains(&SliceType::B));
        assert!(types.contains(&SliceType::P));
        assert_eq!(nal_type(&all[0]), NAL_SPS);
        let idr = first_of(X264_BFRAMES, NAL_IDR);
        assert_eq!(nal_ref_idc(&idr), 3);
        assert!(frame_has_b_slice(&all));
        assert!(!frame_has_b_slice(&nals(X264_720P)));
        assert!(is_idr_frame(&all));
    }

    #[test]
    fn garbage_never_panics() {
        assert!(matches!(
            parse_sps(&[]),
            Err(H264Error::WrongNalType { .. })
        ));
        assert!(parse_sps(&[0x67]).is_err());
        assert!(parse_sps(&[0x67, 0x64, 0, 0x1f, 0, 0, 0, 0, 0, 0]).is_err());
        assert_eq!(slice_type(&[0x65]), None);
        assert_eq!(slice_type(&[]), None);
        assert_eq!(nal_type(&[]), 0);
        // Every truncation and every single-bit flip of a real SPS.
        let sps = first_of(X264_720P, NAL_SPS);
        for len in 0..sps.len() {
            let _ = parse_sps(&sps[..len]);
        }
        let mut seed = 0x1234_5678u32;
        for _ in 0..20_000 {
            let mut v = sps.to_vec();
            for _ in 0..3 {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let i = 1 + (seed as usize >> 8) % (v.len() - 1);
                v[i] ^= 1 << (seed % 8);
            }
            let _ = parse_sps(&v);
            v[0] = 0x65;
            let _ = slice_type(&v);
        }
    }

    #[test]
    fn annexb_split_handles_3_and_4_byte_start_codes() {
        let data = Bytes::from_static(&[
            0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 9,
        ]);
        let n = split_annexb(&data);
        assert_eq!(n.len(), 3);
        assert_eq!(&n[0][..], &[0x67, 1, 2]);
        assert_eq!(&n[1][..], &[0x68, 3]);
        assert_eq!(&n[2][..], &[0x65, 9]);
        assert!(split_annexb(&Bytes::from_static(&[1, 2, 3])).is_empty());
    }

    #[derive(Default)]
    pub(crate) struct BitWriter {
        out: Vec<u8>,
        cur: u8,
        n: u8,
    }

    impl BitWriter {
        pub(crate) fn bits(&mut self, v: u32, n: u32) {
            for i in (0..n).rev() {
                self.cur = (self.cur << 1) | ((v >> i) & 1) as u8;
                self.n += 1;
                if self.n == 8 {
                    self.out.push(self.cur);
                    self.cur = 0;
                    self.n = 0;
                }
            }
        }
        pub(crate) fn ue(&mut self, v: u32) {
            let x = u64::from(v) + 1;
            let len = 64 - x.leading_zeros();
            self.bits(0, len - 1);
            self.bits(x as u32, len);
        }
        pub(crate) fn se(&mut self, v: i32) {
            self.ue(if v > 0 {
                2 * v as u32 - 1
            } else {
                (-2 * v) as u32
            });
        }
        pub(crate) fn finish(mut self) -> Vec<u8> {
            while self.n != 0 {
                self.bits(0, 1);
            }
            self.out
        }
    }

    /// Insert emulation-prevention bytes (the inverse of what the reader skips).
    pub(crate) fn escape(rbsp: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut zeros = 0;
        for &b in rbsp {
            if zeros >= 2 && b <= 3 {
                out.push(3);
                zeros = 0;
            }
            out.push(b);
            zeros = if b == 0 { zeros + 1 } else { 0 };
        }
        out
    }
}
