//! AV1 in the low-overhead bitstream format (OBUs with `obu_has_size_field`,
//! as MP4 samples carry them): walking a temporal unit's OBUs, and what the
//! `av01` sample entry and its `av1C` box need from the sequence header OBU
//! (AV1 spec 5.5).

use super::bits::{BitReader, leb128};

pub const OBU_SEQUENCE_HEADER: u8 = 1;
pub const OBU_TEMPORAL_DELIMITER: u8 = 2;
pub const OBU_REDUNDANT_FRAME_HEADER: u8 = 7;
pub const OBU_TILE_LIST: u8 = 8;
pub const OBU_PADDING: u8 = 15;

/// One OBU of a low-overhead stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Obu<'a> {
    pub obu_type: u8,
    /// The whole OBU: header, size field, payload.
    pub bytes: &'a [u8],
    pub payload: &'a [u8],
}

/// The OBUs of `data`, each with `obu_has_size_field` set (except possibly the
/// last, which then runs to the end). Stops at the first malformed one: an
/// `Err` item, then nothing.
pub fn obus(data: &[u8]) -> impl Iterator<Item = Result<Obu<'_>, &'static str>> {
    let mut rest = data;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let r = split_obu(rest);
        rest = match r {
            Ok((_, tail)) => tail,
            Err(_) => &[],
        };
        Some(r.map(|(o, _)| o))
    })
}

/// The first OBU of `data` and what follows it.
pub fn split_obu(data: &[u8]) -> Result<(Obu<'_>, &[u8]), &'static str> {
    let header = *data.first().ok_or("empty OBU")?;
    if header & 0x80 != 0 {
        return Err("OBU forbidden bit set");
    }
    let header_len = if header & 0x04 != 0 { 2 } else { 1 };
    if data.len() < header_len {
        return Err("OBU header truncated");
    }
    let (start, end) = if header & 0x02 != 0 {
        let (size, n) = leb128(&data[header_len..]).ok_or("bad OBU size field")?;
        let start = header_len + n;
        (start, start.checked_add(size).ok_or("OBU size overflows")?)
    } else {
        (header_len, data.len())
    };
    if end > data.len() {
        return Err("OBU runs past its data");
    }
    Ok((
        Obu {
            obu_type: (header >> 3) & 0x0f,
            bytes: &data[..end],
            payload: &data[start..end],
        },
        &data[end..],
    ))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequenceHeader {
    pub seq_profile: u8,
    /// `seq_level_idx[0]`: 8 is level 4.0 (`(idx >> 2) + 2` `.` `idx & 3`).
    pub seq_level_idx_0: u8,
    pub seq_tier_0: bool,
    pub high_bitdepth: bool,
    pub twelve_bit: bool,
    pub monochrome: bool,
    pub chroma_subsampling_x: bool,
    pub chroma_subsampling_y: bool,
    pub chroma_sample_position: u8,
    /// (color_primaries, transfer_characteristics, matrix_coefficients) when
    /// the header states them.
    pub color: Option<(u8, u8, u8)>,
    pub full_range: bool,
    pub max_width: u32,
    pub max_height: u32,
}

impl SequenceHeader {
    pub fn bit_depth(&self) -> u8 {
        match (self.high_bitdepth, self.twelve_bit) {
            (false, _) => 8,
            (true, false) => 10,
            (true, true) => 12,
        }
    }
}

/// Parses a sequence header OBU's payload (after the OBU header and size).
pub fn parse_sequence_header(payload: &[u8]) -> Option<SequenceHeader> {
    let mut r = BitReader::new(payload);
    let seq_profile = r.bits(3)? as u8;
    if seq_profile > 2 {
        return None;
    }
    r.bits(1)?; // still_picture
    let reduced = r.flag()?;
    let (seq_level_idx_0, seq_tier_0);
    if reduced {
        seq_level_idx_0 = r.bits(5)? as u8;
        seq_tier_0 = false;
    } else {
        let mut decoder_model = false;
        let mut buffer_delay_len = 0;
        if r.flag()? {
            // timing_info
            r.bits(32)?; // num_units_in_display_tick
            r.bits(32)?; // time_scale
            if r.flag()? {
                r.uvlc()?; // num_ticks_per_picture_minus_1
            }
            decoder_model = r.flag()?;
            if decoder_model {
                buffer_delay_len = r.bits(5)? + 1;
                r.bits(32)?; // num_units_in_decoding_tick
                r.bits(5)?; // buffer_removal_time_length_minus_1
                r.bits(5)?; // frame_presentation_time_length_minus_1
            }
        }
        let initial_display_delay = r.flag()?;
        let points = r.bits(5)? + 1;
        let mut first = None;
        for _ in 0..points {
            r.bits(12)?; // operating_point_idc
            let level = r.bits(5)? as u8;
            let tier = level > 7 && r.flag()?;
            if decoder_model && r.flag()? {
                r.bits(buffer_delay_len)?; // decoder_buffer_delay
                r.bits(buffer_delay_len)?; // encoder_buffer_delay
                r.bits(1)?; // low_delay_mode_flag
            }
            if initial_display_delay && r.flag()? {
                r.bits(4)?;
            }
            first.get_or_insert((level, tier));
        }
        (seq_level_idx_0, seq_tier_0) = first?;
    }
    let wbits = r.bits(4)? + 1;
    let hbits = r.bits(4)? + 1;
    let max_width = r.bits(wbits)?.checked_add(1)?;
    let max_height = r.bits(hbits)?.checked_add(1)?;
    if !reduced && r.flag()? {
        // frame_id_numbers_present_flag
        r.bits(4)?; // delta_frame_id_length_minus_2
        r.bits(3)?; // additional_frame_id_length_minus_1
    }
    r.bits(3)?; // use_128x128_superblock, enable_filter_intra, enable_intra_edge_filter
    if !reduced {
        r.bits(4)?; // interintra, masked compound, warped motion, dual filter
        let order_hint = r.flag()?;
        if order_hint {
            r.bits(2)?; // enable_jnt_comp, enable_ref_frame_mvs
        }
        let force_screen_content = if r.flag()? { 2 } else { r.bits(1)? };
        if force_screen_content > 0 && !r.flag()? {
            r.bits(1)?; // seq_force_integer_mv
        }
        if order_hint {
            r.bits(3)?; // order_hint_bits_minus_1
        }
    }
    r.bits(3)?; // enable_superres, enable_cdef, enable_restoration
    // color_config
    let high_bitdepth = r.flag()?;
    let twelve_bit = seq_profile == 2 && high_bitdepth && r.flag()?;
    let monochrome = seq_profile != 1 && r.flag()?;
    let color = if r.flag()? {
        Some((r.bits(8)? as u8, r.bits(8)? as u8, r.bits(8)? as u8))
    } else {
        None
    };
    let (full_range, ss_x, ss_y, position);
    if monochrome {
        full_range = r.flag()?;
        (ss_x, ss_y, position) = (true, true, 0);
    } else if color == Some((1, 13, 0)) {
        // sRGB: 4:4:4, full range
        (full_range, ss_x, ss_y, position) = (true, false, false, 0);
    } else {
        full_range = r.flag()?;
        (ss_x, ss_y) = match seq_profile {
            0 => (true, true),
            1 => (false, false),
            _ if twelve_bit => {
                let x = r.flag()?;
                (x, x && r.flag()?)
            }
            _ => (true, false),
        };
        position = if ss_x && ss_y { r.bits(2)? as u8 } else { 0 };
    }
    Some(SequenceHeader {
        seq_profile,
        seq_level_idx_0,
        seq_tier_0,
        high_bitdepth,
        twelve_bit,
        monochrome,
        chroma_subsampling_x: ss_x,
        chroma_subsampling_y: ss_y,
        chroma_sample_position: position,
        color,
        full_range,
        max_width,
        max_height,
    })
}

/// The sequence header OBU of a temporal unit (low-overhead format), whole,
/// and what it says.
pub fn find_sequence_header(tu: &[u8]) -> Option<(&[u8], SequenceHeader)> {
    obus(tu)
        .map_while(Result::ok)
        .find(|o| o.obu_type == OBU_SEQUENCE_HEADER)
        .and_then(|o| Some((o.bytes, parse_sequence_header(o.payload)?)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::media::vp9::tests::ivf_frames;

    pub(crate) const AV1_320X180: &[u8] = include_bytes!("testdata/av1_320x180.ivf");
    const AV1_10BIT_160X90: &[u8] = include_bytes!("testdata/av1_10bit_160x90.ivf");

    #[test]
    fn libaom_temporal_units_and_sequence_headers() {
        // ffmpeg -f lavfi -i testsrc2=size=320x180:rate=30 -frames:v 2 -c:v libaom-av1 -f ivf
        let frames = ivf_frames(AV1_320X180);
        let types: Vec<u8> = obus(frames[0]).map(|o| o.unwrap().obu_type).collect();
        assert_eq!(
            types[..2],
            [OBU_TEMPORAL_DELIMITER, OBU_SEQUENCE_HEADER],
            "{types:?}"
        );
        let (obu, sh) = find_sequence_header(frames[0]).expect("sequence header");
        assert_eq!(obu[0] >> 3 & 0x0f, OBU_SEQUENCE_HEADER);
        assert_eq!((sh.max_width, sh.max_height), (320, 180));
        assert_eq!(
            (sh.seq_profile, sh.bit_depth(), sh.monochrome),
            (0, 8, false)
        );
        assert!(sh.chroma_subsampling_x && sh.chroma_subsampling_y);
        assert!(!sh.seq_tier_0);
        assert!(sh.seq_level_idx_0 <= 8, "{}", sh.seq_level_idx_0);
        assert!(
            find_sequence_header(frames[1]).is_none(),
            "only at the key frame"
        );
        // ... -pix_fmt yuv420p10le: main profile, 10 bits
        let (_, sh) = find_sequence_header(ivf_frames(AV1_10BIT_160X90)[0]).unwrap();
        assert_eq!((sh.seq_profile, sh.bit_depth()), (0, 10));
        assert_eq!((sh.max_width, sh.max_height), (160, 90));
    }

    #[test]
    fn never_panics_on_truncated_or_random_input() {
        let key = ivf_frames(AV1_320X180)[0];
        let (obu, _) = find_sequence_header(key).unwrap();
        let payload_start = obu.len() - split_obu(obu).unwrap().0.payload.len();
        for n in 0..obu.len() {
            let _ = find_sequence_header(&obu[..n]);
            if n >= payload_start {
                let _ = parse_sequence_header(&obu[payload_start..n]);
            }
        }
        let mut x = 0x9e37_79b9u32;
        for len in 0..300 {
            let data = crate::media::vp9::tests::noise(&mut x, len);
            let _ = parse_sequence_header(&data);
            let _ = obus(&data).count();
            let _ = find_sequence_header(&data);
        }
    }
}
