//! VP8 key frames (RFC 6386, 9.1): the picture size the `vp08` sample entry needs.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp8KeyFrame {
    pub width: u32,
    pub height: u32,
}

/// The key frame header at the start of `frame`: a 3-byte frame tag (bit 0
/// clear for a key frame), the start code `9d 01 2a`, then 14-bit width and
/// height (the top 2 bits are the scaling mode). `None` for an inter frame or
/// bytes that are not VP8.
pub fn parse_keyframe(frame: &[u8]) -> Option<Vp8KeyFrame> {
    let b = frame.get(..10)?;
    if b[0] & 0x01 != 0 || b[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let width = u32::from(u16::from_le_bytes([b[6], b[7]]) & 0x3fff);
    let height = u32::from(u16::from_le_bytes([b[8], b[9]]) & 0x3fff);
    (width > 0 && height > 0).then_some(Vp8KeyFrame { width, height })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::vp9::tests::ivf_frames;

    #[test]
    fn libvpx_keyframe_size_and_truncation() {
        // ffmpeg -f lavfi -i testsrc2=size=320x180:rate=30 -frames:v 1 -c:v libvpx -f ivf
        let key = ivf_frames(include_bytes!("testdata/vp8_320x180.ivf"))[0];
        assert_eq!(
            parse_keyframe(key),
            Some(Vp8KeyFrame {
                width: 320,
                height: 180
            })
        );
        for n in 0..10 {
            assert_eq!(parse_keyframe(&key[..n]), None);
        }
        let mut inter = key.to_vec();
        inter[0] |= 1;
        assert_eq!(parse_keyframe(&inter), None);
    }
}
