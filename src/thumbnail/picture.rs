//! One keyframe, as the hub holds it (RTP payloads), to a small JPEG. No
//! I/O: the driver (`super`) picks the frame and runs this on a blocking
//! thread. H.264 is decoded by OpenH264 (built from source into the binary);
//! VP8 by image-webp's VP8 decoder (pure Rust: a WebP lossy image is one VP8
//! keyframe, so the keyframe is wrapped in a WebP header). VP9 and AV1 would
//! need libvpx or dav1d as system libraries: not decoded.

use std::sync::Arc;

use openh264::decoder::Decoder;
use openh264::formats::YUVSource;

use crate::media::rtp_video::{self, VideoCodec};
use crate::media::{h264, rtp_h264};

/// A thumbnail: a baseline JPEG and its size.
#[derive(Debug, Clone)]
pub struct Jpeg {
    pub bytes: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum PictureError {
    #[error("the keyframe's RTP payloads are malformed: {0}")]
    Depacketize(#[from] rtp_h264::DepacketizeError),
    #[error("the keyframe lacks its SPS/PPS or an IDR slice")]
    Incomplete,
    #[error("the decoder refused the keyframe: {0}")]
    Decode(String),
    #[error("the keyframe's RTP payloads are malformed: {0}")]
    Payload(&'static str),
    #[error("the decoder gave no picture for the keyframe")]
    NoPicture,
    #[error("the picture is {0}×{1}, over the {2} pixel limit")]
    TooLarge(usize, usize, usize),
    #[error("JPEG encoding failed: {0}")]
    Encode(String),
    #[error("the JPEG is {0} bytes, over thumbnails.max_bytes ({1})")]
    JpegTooLarge(usize, usize),
}

/// What a thumbnail is made to.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Width of the JPEG (never wider than the picture).
    pub width: u32,
    /// JPEG quality, 1–100.
    pub quality: u8,
    /// Pictures with more pixels are not decoded (a hostile SPS could ask
    /// the decoder for a huge frame buffer).
    pub max_pixels: usize,
    pub max_bytes: usize,
}

/// Decodes the H.264 keyframe in `payloads` (RFC 6184, with its parameter
/// sets, as ingest packetizes keyframes) and encodes it scaled to `shape`.
pub fn h264_thumbnail(payloads: &[Arc<[u8]>], shape: Shape) -> Result<Jpeg, PictureError> {
    let annexb = annexb_of(payloads)?;
    let mut decoder = Decoder::new().map_err(|e| PictureError::Decode(e.to_string()))?;
    let yuv = decoder
        .decode(&annexb)
        .map_err(|e| PictureError::Decode(e.to_string()))?
        .ok_or(PictureError::NoPicture)?;
    let (w, h) = yuv.dimensions();
    if w.saturating_mul(h) > shape.max_pixels || w < 2 || h < 2 {
        return Err(PictureError::TooLarge(w, h, shape.max_pixels));
    }
    let planes = Planes {
        y: yuv.y(),
        u: yuv.u(),
        v: yuv.v(),
        strides: yuv.strides(),
        width: w,
        height: h,
    };
    let (ycbcr, tw, th) = scale_to_ycbcr(&planes, shape.width as usize);
    finish(&ycbcr, jpeg_encoder::ColorType::Ycbcr, tw, th, shape)
}

/// Decodes the VP8 keyframe in `payloads` (RFC 7741) and encodes it scaled to `shape`.
pub fn vp8_thumbnail(payloads: &[Arc<[u8]>], shape: Shape) -> Result<Jpeg, PictureError> {
    let (mut frame, mut scratch) = (Vec::new(), Vec::new());
    rtp_video::depacketize(
        VideoCodec::Vp8,
        payloads.iter().map(|p| &p[..]),
        &mut frame,
        &mut scratch,
    )
    .map_err(PictureError::Payload)?;
    // A keyframe: frame tag bit 0 clear, then the start code and the size.
    if frame.len() < 10 || frame[0] & 1 != 0 || frame[3..6] != [0x9d, 0x01, 0x2a] {
        return Err(PictureError::Incomplete);
    }
    let w = usize::from(u16::from_le_bytes([frame[6], frame[7]]) & 0x3fff);
    let h = usize::from(u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff);
    if w.saturating_mul(h) > shape.max_pixels || w < 2 || h < 2 {
        return Err(PictureError::TooLarge(w, h, shape.max_pixels));
    }
    let webp = webp_of_vp8(&frame);
    let mut decoder = image_webp::WebPDecoder::new(std::io::Cursor::new(&webp[..]))
        .map_err(|e| PictureError::Decode(e.to_string()))?;
    let size = decoder
        .output_buffer_size()
        .ok_or(PictureError::NoPicture)?;
    if decoder.has_alpha() || size != w * h * 3 {
        return Err(PictureError::Decode("unexpected picture layout".into()));
    }
    let mut rgb = vec![0u8; size];
    decoder
        .read_image(&mut rgb)
        .map_err(|e| PictureError::Decode(e.to_string()))?;
    let (scaled, tw, th) = scale_rgb(&rgb, w, h, shape.width as usize);
    finish(&scaled, jpeg_encoder::ColorType::Rgb, tw, th, shape)
}

/// A VP8 keyframe as a WebP file (RIFF, `WEBP`, one `VP8 ` chunk).
fn webp_of_vp8(frame: &[u8]) -> Vec<u8> {
    let pad = frame.len() % 2;
    let riff_len = (4 + 8 + frame.len() + pad) as u32;
    let mut out = Vec::with_capacity(frame.len() + 21);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&riff_len.to_le_bytes());
    out.extend_from_slice(b"WEBPVP8 ");
    out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
    out.extend_from_slice(frame);
    out.resize(out.len() + pad, 0);
    out
}

/// Which keyframes can be made into thumbnails here.
pub fn decodable(codec: &str) -> bool {
    matches!(codec, "H264" | "VP8")
}

/// The thumbnail of `codec`'s keyframe.
pub fn thumbnail(codec: &str, payloads: &[Arc<[u8]>], shape: Shape) -> Result<Jpeg, PictureError> {
    match codec {
        "H264" => h264_thumbnail(payloads, shape),
        "VP8" => vp8_thumbnail(payloads, shape),
        other => Err(PictureError::Decode(format!("{other} is not decoded here"))),
    }
}

fn finish(
    pixels: &[u8],
    color: jpeg_encoder::ColorType,
    w: usize,
    h: usize,
    shape: Shape,
) -> Result<Jpeg, PictureError> {
    let bytes = encode_jpeg(pixels, color, w, h, shape.quality)?;
    if bytes.len() > shape.max_bytes {
        return Err(PictureError::JpegTooLarge(bytes.len(), shape.max_bytes));
    }
    Ok(Jpeg {
        bytes,
        width: w as u32,
        height: h as u32,
    })
}

/// The output size for `target_width` (never up; even; aspect kept).
fn target_size(w: usize, h: usize, target_width: usize) -> (usize, usize) {
    let tw = (target_width.min(w).max(2)) & !1;
    let th = ((h * tw / w).max(2)) & !1;
    (tw, th)
}

/// Scales interleaved RGB down to `target_width`, each output pixel the
/// average of its box.
pub fn scale_rgb(rgb: &[u8], w: usize, h: usize, target_width: usize) -> (Vec<u8>, usize, usize) {
    let (tw, th) = target_size(w, h, target_width);
    let mut out = Vec::with_capacity(tw * th * 3);
    for oy in 0..th {
        let y0 = oy * h / th;
        let y1 = ((oy + 1) * h / th).max(y0 + 1);
        for ox in 0..tw {
            let x0 = ox * w / tw;
            let x1 = ((ox + 1) * w / tw).max(x0 + 1);
            let mut sum = [0u32; 3];
            for row in y0..y1 {
                for px in rgb[(row * w + x0) * 3..(row * w + x1) * 3].chunks_exact(3) {
                    sum[0] += u32::from(px[0]);
                    sum[1] += u32::from(px[1]);
                    sum[2] += u32::from(px[2]);
                }
            }
            let n = ((y1 - y0) * (x1 - x0)) as u32;
            out.extend(sum.iter().map(|&c| (c / n) as u8));
        }
    }
    (out, tw, th)
}

/// The access unit as Annex B (start codes), AUD and filler left out.
fn annexb_of(payloads: &[Arc<[u8]>]) -> Result<Vec<u8>, PictureError> {
    let mut out = Vec::with_capacity(payloads.iter().map(|p| p.len() + 8).sum());
    let mut scratch = Vec::new();
    let (mut sps, mut pps, mut idr) = (false, false, false);
    rtp_h264::depacketize(payloads.iter().map(|p| &p[..]), &mut scratch, |nal| {
        match h264::nal_type(nal) {
            h264::NAL_AUD | h264::NAL_FILLER => return,
            h264::NAL_SPS => sps = true,
            h264::NAL_PPS => pps = true,
            h264::NAL_IDR => idr = true,
            _ => {}
        }
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(nal);
    })?;
    if !(sps && pps && idr) {
        return Err(PictureError::Incomplete);
    }
    Ok(out)
}

/// A decoded 4:2:0 picture, borrowed from the decoder.
pub struct Planes<'a> {
    pub y: &'a [u8],
    pub u: &'a [u8],
    pub v: &'a [u8],
    /// Row strides of Y, U, V.
    pub strides: (usize, usize, usize),
    pub width: usize,
    pub height: usize,
}

/// Scales `p` down to `target_width` (never up; even sizes, aspect kept) as
/// interleaved Y, Cb, Cr bytes: luma is averaged over each output pixel's
/// box (no aliasing stripes from a 1080p frame), chroma sampled at its centre.
pub fn scale_to_ycbcr(p: &Planes, target_width: usize) -> (Vec<u8>, usize, usize) {
    let (tw, th) = target_size(p.width, p.height, target_width);
    let mut out = Vec::with_capacity(tw * th * 3);
    let (ys, us, vs) = p.strides;
    let (cw, ch) = (p.width.div_ceil(2), p.height.div_ceil(2));
    for oy in 0..th {
        let y0 = oy * p.height / th;
        let y1 = ((oy + 1) * p.height / th).max(y0 + 1);
        for ox in 0..tw {
            let x0 = ox * p.width / tw;
            let x1 = ((ox + 1) * p.width / tw).max(x0 + 1);
            let mut sum = 0u32;
            for row in y0..y1 {
                let line = &p.y[row * ys..];
                sum += line[x0..x1].iter().map(|&b| u32::from(b)).sum::<u32>();
            }
            let n = ((y1 - y0) * (x1 - x0)) as u32;
            let (cx, cy) = (((x0 + x1) / 4).min(cw - 1), ((y0 + y1) / 4).min(ch - 1));
            out.push((sum / n) as u8);
            out.push(p.u[cy * us + cx]);
            out.push(p.v[cy * vs + cx]);
        }
    }
    (out, tw, th)
}

/// Encodes interleaved pixels (Y, Cb, Cr or R, G, B) as a 4:2:0 baseline JPEG.
pub fn encode_jpeg(
    pixels: &[u8],
    color: jpeg_encoder::ColorType,
    w: usize,
    h: usize,
    quality: u8,
) -> Result<Vec<u8>, PictureError> {
    let mut bytes = Vec::new();
    let mut enc = jpeg_encoder::Encoder::new(&mut bytes, quality.clamp(1, 100));
    enc.set_sampling_factor(jpeg_encoder::SamplingFactor::F_2_2);
    let (w16, h16) = (
        u16::try_from(w).map_err(|_| PictureError::Encode("too wide".into()))?,
        u16::try_from(h).map_err(|_| PictureError::Encode("too tall".into()))?,
    );
    enc.encode(pixels, w16, h16, color)
        .map_err(|e| PictureError::Encode(e.to_string()))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    const SHAPE: Shape = Shape {
        width: 320,
        quality: 75,
        max_pixels: 1920 * 1080,
        max_bytes: 128 * 1024,
    };

    /// The first keyframe of the 1280×720 x264 fixture, packetized as ingest does.
    fn keyframe_payloads() -> Vec<Arc<[u8]>> {
        let data = Bytes::from_static(include_bytes!("../media/testdata/x264_bf0_1280x720.h264"));
        let nals = h264::split_annexb(&data);
        let end = nals
            .iter()
            .position(|n| h264::nal_type(n) == h264::NAL_IDR)
            .expect("an IDR slice");
        let mut out = Vec::new();
        rtp_h264::H264Packetizer::new(1200).packetize(&nals[..=end], None, &mut out);
        out.iter().map(|p| Arc::from(&p[..])).collect()
    }

    #[test]
    fn an_h264_keyframe_becomes_a_small_jpeg() {
        let payloads = keyframe_payloads();
        assert!(payloads.len() > 1, "FU-A fragments are reassembled");
        let jpeg = h264_thumbnail(&payloads, SHAPE).expect("thumbnail");
        assert_eq!((jpeg.width, jpeg.height), (320, 180));
        assert_eq!(&jpeg.bytes[..2], &[0xff, 0xd8], "SOI");
        assert_eq!(&jpeg.bytes[jpeg.bytes.len() - 2..], &[0xff, 0xd9], "EOI");
        assert!(jpeg.bytes.len() < 64 * 1024, "{} bytes", jpeg.bytes.len());
    }

    #[test]
    fn limits_and_bad_input_are_refused() {
        let payloads = keyframe_payloads();
        let small = Shape {
            max_pixels: 640 * 360,
            ..SHAPE
        };
        assert!(matches!(
            h264_thumbnail(&payloads, small),
            Err(PictureError::TooLarge(1280, 720, _))
        ));
        let tiny = Shape {
            max_bytes: 100,
            ..SHAPE
        };
        assert!(matches!(
            h264_thumbnail(&payloads, tiny),
            Err(PictureError::JpegTooLarge(_, 100))
        ));
        // Without its parameter sets the keyframe cannot be decoded alone.
        let idr_only: Vec<Arc<[u8]>> = payloads
            .iter()
            .filter(|p| !matches!(p[0] & 0x1f, 7 | 8 | 24))
            .cloned()
            .collect();
        assert!(h264_thumbnail(&idr_only, SHAPE).is_err());
        let garbage: Vec<Arc<[u8]>> = vec![Arc::from(&[0x7cu8, 0x85, 1, 2, 3][..])];
        assert!(h264_thumbnail(&garbage, SHAPE).is_err());
    }

    /// The first (key)frame of the VP8 fixture as one RTP payload.
    fn vp8_keyframe_payloads() -> Vec<Arc<[u8]>> {
        let ivf: &[u8] = include_bytes!("../media/testdata/vp8_320x180.ivf");
        let header = usize::from(u16::from_le_bytes([ivf[6], ivf[7]]));
        let len = u32::from_le_bytes(ivf[header..header + 4].try_into().unwrap()) as usize;
        let frame = &ivf[header + 12..header + 12 + len];
        let mut p = vec![0x10u8]; // payload descriptor: start of partition 0
        p.extend_from_slice(frame);
        vec![Arc::from(&p[..])]
    }

    #[test]
    fn a_vp8_keyframe_becomes_a_small_jpeg() {
        let payloads = vp8_keyframe_payloads();
        let shape = Shape {
            width: 160,
            ..SHAPE
        };
        let jpeg = thumbnail("VP8", &payloads, shape).expect("thumbnail");
        assert_eq!((jpeg.width, jpeg.height), (160, 90));
        assert_eq!(&jpeg.bytes[..2], &[0xff, 0xd8], "SOI");
        let small = Shape {
            max_pixels: 100 * 100,
            ..SHAPE
        };
        assert!(matches!(
            vp8_thumbnail(&payloads, small),
            Err(PictureError::TooLarge(320, 180, _))
        ));
        // Truncated: an error, never a panic.
        let cut: Vec<Arc<[u8]>> = vec![Arc::from(&payloads[0][..payloads[0].len() / 3])];
        assert!(vp8_thumbnail(&cut, SHAPE).is_err());
        assert!(thumbnail("VP9", &payloads, SHAPE).is_err());
        assert!(decodable("VP8") && decodable("H264") && !decodable("AV1"));
    }

    #[test]
    fn rgb_scaling_averages_each_channel() {
        let (w, h) = (8, 4);
        let rgb: Vec<u8> = (0..w * h)
            .flat_map(|i| {
                if i % 2 == 0 {
                    [0, 100, 200]
                } else {
                    [200, 100, 0]
                }
            })
            .collect();
        let (out, tw, th) = scale_rgb(&rgb, w, h, 4);
        assert_eq!((tw, th), (4, 2));
        assert!(out.chunks(3).all(|px| px == [100, 100, 100]), "{out:?}");
    }

    #[test]
    fn scaling_keeps_the_aspect_and_averages_luma() {
        let (w, h) = (64, 36);
        let y: Vec<u8> = (0..w * h)
            .map(|i| if (i % w) % 2 == 0 { 0 } else { 200 })
            .collect();
        let c = vec![128u8; (w / 2) * (h / 2)];
        let p = Planes {
            y: &y,
            u: &c,
            v: &c,
            strides: (w, w / 2, w / 2),
            width: w,
            height: h,
        };
        let (out, tw, th) = scale_to_ycbcr(&p, 16);
        assert_eq!((tw, th), (16, 8));
        assert_eq!(out.len(), 16 * 8 * 3);
        // Alternating 0/200 columns average to 100, not to one of them.
        assert!(
            out.chunks(3).all(|px| px[0] == 100 && px[1] == 128),
            "{out:?}"
        );
        let (_, tw, th) = scale_to_ycbcr(&p, 1000);
        assert_eq!((tw, th), (64, 36), "never scaled up");
    }
}
