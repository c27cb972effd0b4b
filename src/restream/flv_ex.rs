//! Enhanced RTMP video tag bodies (Veovera E-RTMP v1/v2), sans I/O: the
//! ExHeader (IsExHeader bit, frame type, packet type, FourCC) and AV1's
//! SequenceStart payload, the `AV1CodecConfigurationRecord` (`av1C`).

use bytes::BufMut;

use crate::media::av1::SequenceHeader;

/// ExHeader packet types used here.
pub const PACKET_SEQUENCE_START: u8 = 0;
pub const PACKET_CODED_FRAMES: u8 = 1;
pub const PACKET_SEQUENCE_END: u8 = 2;

pub const FOURCC_AV1: &[u8; 4] = b"av01";

/// The 5-byte ExHeader: IsExHeader, frame type (1 key, 2 inter), packet
/// type, FourCC.
pub fn ex_header(keyframe: bool, packet_type: u8, fourcc: &[u8; 4], out: &mut impl BufMut) {
    let frame_type: u8 = if keyframe { 1 } else { 2 };
    out.put_u8(0x80 | frame_type << 4 | (packet_type & 0x0f));
    out.put_slice(fourcc);
}

/// `AV1CodecConfigurationRecord` (AV1 in ISOBMFF, 2.3.3): version 1, the
/// sequence header's profile, level, tier and colour layout, no initial
/// presentation delay, then the sequence header OBU as the config OBU.
pub fn av1_config_record(sh: &SequenceHeader, sequence_header_obu: &[u8], out: &mut impl BufMut) {
    let bit = |b: bool, shift: u8| u8::from(b) << shift;
    out.put_u8(0x81); // marker 1, version 1
    out.put_u8((sh.seq_profile & 0x07) << 5 | (sh.seq_level_idx_0 & 0x1f));
    out.put_u8(
        bit(sh.seq_tier_0, 7)
            | bit(sh.high_bitdepth, 6)
            | bit(sh.twelve_bit, 5)
            | bit(sh.monochrome, 4)
            | bit(sh.chroma_subsampling_x, 3)
            | bit(sh.chroma_subsampling_y, 2)
            | (sh.chroma_sample_position & 0x03),
    );
    out.put_u8(0);
    out.put_slice(sequence_header_obu);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::av1::{find_sequence_header, tests::AV1_320X180};
    use crate::media::flv::{FlvVideo, VIDEO_CODEC_AV1, parse_video};

    #[test]
    fn av1c_matches_the_sequence_header_and_the_ingest_reads_the_ex_header() {
        let key = crate::media::vp9::tests::ivf_frames(AV1_320X180)[0];
        let (obu, sh) = find_sequence_header(key).unwrap();
        let mut body = Vec::new();
        ex_header(true, PACKET_SEQUENCE_START, FOURCC_AV1, &mut body);
        av1_config_record(&sh, obu, &mut body);
        assert_eq!(&body[..5], b"\x90av01");
        // libaom 8-bit 4:2:0: profile 0, subsampling x and y, no delay.
        assert_eq!(body[5], 0x81);
        assert_eq!(body[6], sh.seq_level_idx_0);
        assert_eq!(body[7] & 0b0000_1100, 0b0000_1100);
        assert_eq!(body[8], 0);
        assert_eq!(&body[9..], obu);
        // roomcast's own FLV reader names it AV1 (and does not take it).
        let parsed = parse_video(&bytes::Bytes::from(body), 4).unwrap();
        assert_eq!(
            parsed,
            FlvVideo::Unsupported {
                codec_id: VIDEO_CODEC_AV1
            }
        );
        let mut inter = Vec::new();
        ex_header(false, PACKET_CODED_FRAMES, FOURCC_AV1, &mut inter);
        assert_eq!(&inter[..], b"\xa1av01");
    }
}
