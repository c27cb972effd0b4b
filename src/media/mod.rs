//! Codec knowledge with no I/O: FLV tag bodies, H.264 (AVCC, SPS, NAL and slice
//! types, B-frames), RTP packetization (RFC 6184), WebRTC publishers' video
//! payloads (keyframes, frame boundaries, depacketizing VP8/VP9/AV1), the
//! headers of VP8, VP9 and AV1 key frames, and AAC→Opus transcoding.
//! Everything here takes bytes in and gives values out, and is unit-tested.

/// 8 MiB: the largest frame taken from a publisher by default
/// (`limits.max_frame_bytes`), several times a 4K keyframe at a high bitrate.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 8 << 20;

pub mod av1;
pub(crate) mod bits;
pub mod flv;
pub mod h264;
pub mod opus;
pub mod rtp_h264;
pub mod rtp_video;
pub mod transcode;
#[cfg(test)]
mod transcode_cost;
pub mod vp8;
pub mod vp9;
