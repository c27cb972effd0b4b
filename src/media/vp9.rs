//! VP9 key frames: what the `vp09` sample entry and its `vpcC` box need, read
//! from the uncompressed header (VP9 bitstream spec, 6.2), and the level a
//! picture size implies (VP9 levels, webmproject.org/vp9/levels).

use super::bits::BitReader;

/// `color_space` CS_RGB.
const CS_RGB: u32 = 7;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp9KeyFrame {
    pub profile: u8,
    /// 8, 10 or 12.
    pub bit_depth: u8,
    /// As `vpcC` codes it: 0 4:2:0 (vertical), 2 4:2:2, 3 4:4:4 (4:4:0 is
    /// given as 4:2:2, which no browser decodes either).
    pub chroma_subsampling: u8,
    pub full_range: bool,
    /// The header's `color_space` (0 unknown, 1 BT.601, 2 BT.709, … 7 RGB).
    pub color_space: u8,
    pub width: u32,
    pub height: u32,
}

/// The key frame header at the start of `frame` (a frame or a superframe, whose
/// first frame is read); `None` for anything else: an inter frame, a
/// shown-existing frame, or bytes that are not VP9.
pub fn parse_keyframe(frame: &[u8]) -> Option<Vp9KeyFrame> {
    let mut r = BitReader::new(frame);
    if r.bits(2)? != 2 {
        return None; // frame_marker
    }
    let low = r.bits(1)?;
    let high = r.bits(1)?;
    let profile = (high << 1 | low) as u8;
    if profile == 3 && r.flag()? {
        return None; // reserved_zero
    }
    if r.flag()? {
        return None; // show_existing_frame
    }
    if r.flag()? {
        return None; // frame_type: non-key
    }
    r.bits(2)?; // show_frame, error_resilient_mode
    if r.bits(24)? != 0x49_83_42 {
        return None; // frame_sync_code
    }
    let bit_depth = if profile >= 2 {
        if r.flag()? { 12 } else { 10 }
    } else {
        8
    };
    let color_space = r.bits(3)?;
    let (full_range, ss_x, ss_y) = if color_space != CS_RGB {
        let range = r.flag()?;
        if profile == 1 || profile == 3 {
            let (x, y) = (r.flag()?, r.flag()?);
            r.bits(1)?; // reserved_zero
            (range, x, y)
        } else {
            (range, true, true)
        }
    } else {
        if profile == 1 || profile == 3 {
            r.bits(1)?; // reserved_zero
        } else {
            return None; // RGB needs profile 1 or 3
        }
        (true, false, false)
    };
    let width = r.bits(16)? + 1;
    let height = r.bits(16)? + 1;
    let chroma_subsampling = match (ss_x, ss_y) {
        (true, true) => 0,
        (true, false) | (false, true) => 2,
        (false, false) => 3,
    };
    Some(Vp9KeyFrame {
        profile,
        bit_depth,
        chroma_subsampling,
        full_range,
        color_space: color_space as u8,
        width,
        height,
    })
}

/// (level × 10, max luma samples per second, max luma picture size, max
/// width or height).
const LEVELS: [(u8, u64, u64, u32); 14] = [
    (10, 829_440, 36_864, 512),
    (11, 2_764_800, 73_728, 768),
    (20, 4_608_000, 122_880, 960),
    (21, 9_216_000, 245_760, 1_344),
    (30, 20_736_000, 552_960, 2_048),
    (31, 36_864_000, 983_040, 2_752),
    (40, 83_558_400, 2_228_224, 4_160),
    (41, 160_432_128, 2_228_224, 4_160),
    (50, 311_951_360, 8_912_896, 8_384),
    (51, 588_251_136, 8_912_896, 8_384),
    (52, 1_176_502_272, 8_912_896, 8_384),
    (60, 1_176_502_272, 35_651_584, 16_832),
    (61, 2_353_004_544, 35_651_584, 16_832),
    (62, 4_706_009_088, 35_651_584, 16_832),
];

/// The lowest VP9 level (×10, as `vpcC` and codec strings write it) for a
/// picture size at `fps` frames per second; 62 beyond every limit.
pub fn level(width: u32, height: u32, fps: u32) -> u8 {
    let size = u64::from(width) * u64::from(height);
    let rate = size.saturating_mul(u64::from(fps));
    LEVELS
        .iter()
        .find(|&&(_, max_rate, max_size, max_dim)| {
            size <= max_size && rate <= max_rate && width.max(height) <= max_dim
        })
        .map_or(62, |l| l.0)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The frames of an IVF file (32-byte file header, then 12-byte frame
    /// headers: size, timestamp).
    pub(crate) fn ivf_frames(ivf: &[u8]) -> Vec<&[u8]> {
        assert_eq!(&ivf[..4], b"DKIF");
        let mut out = Vec::new();
        let mut i = 32;
        while i + 12 <= ivf.len() {
            let n = u32::from_le_bytes(ivf[i..i + 4].try_into().unwrap()) as usize;
            out.push(&ivf[i + 12..i + 12 + n]);
            i += 12 + n;
        }
        out
    }

    /// `len` pseudo-random bytes (xorshift32 from `seed`), for never-panics tests.
    pub(crate) fn noise(seed: &mut u32, len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 17;
                *seed ^= *seed << 5;
                *seed as u8
            })
            .collect()
    }

    pub(crate) const VP9_320X180: &[u8] = include_bytes!("testdata/vp9_320x180.ivf");
    const VP9_P2_160X90: &[u8] = include_bytes!("testdata/vp9_p2_10bit_160x90.ivf");

    #[test]
    fn libvpx_keyframes_profile_0_and_2() {
        // ffmpeg -f lavfi -i testsrc2=size=320x180:rate=30 -frames:v 2 -c:v libvpx-vp9 -f ivf
        let frames = ivf_frames(VP9_320X180);
        let k = parse_keyframe(frames[0]).expect("key frame");
        assert_eq!(
            k,
            Vp9KeyFrame {
                profile: 0,
                bit_depth: 8,
                chroma_subsampling: 0,
                full_range: false,
                color_space: k.color_space,
                width: 320,
                height: 180,
            }
        );
        assert_eq!(parse_keyframe(frames[1]), None, "inter frame");
        // ... -pix_fmt yuv420p10le -profile:v 2
        let k = parse_keyframe(ivf_frames(VP9_P2_160X90)[0]).expect("key frame");
        assert_eq!((k.profile, k.bit_depth, k.chroma_subsampling), (2, 10, 0));
        assert_eq!((k.width, k.height), (160, 90));
    }

    #[test]
    fn levels_by_size_and_rate() {
        assert_eq!(level(320, 180, 30), 11);
        assert_eq!(level(640, 360, 30), 21);
        assert_eq!(level(1280, 720, 30), 31);
        assert_eq!(level(1280, 720, 60), 40);
        assert_eq!(level(1920, 1080, 30), 40);
        assert_eq!(level(3840, 2160, 30), 50);
        assert_eq!(level(u32::MAX, u32::MAX, u32::MAX), 62);
    }

    #[test]
    fn never_panics_on_truncated_or_random_input() {
        let key = ivf_frames(VP9_320X180)[0];
        // The header of a 4:2:0 8-bit key frame ends in its 9th byte.
        for n in 0..9 {
            assert_eq!(parse_keyframe(&key[..n]), None, "{n} bytes");
        }
        assert!(parse_keyframe(&key[..9]).is_some());
        let mut x = 0x1234_5678u32;
        for len in 0..200 {
            let data = noise(&mut x, len);
            let _ = parse_keyframe(&data);
        }
    }
}
