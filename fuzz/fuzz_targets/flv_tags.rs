//! FLV tag bodies (AVC sequence headers and NAL units, AAC AudioSpecificConfig
//! and raw frames, enhanced-RTMP headers) through `FlvPipeline`, the code every
//! RTMP video/audio message reaches: SPS parsing, B-frame detection, RTP
//! packetizing into the hub, AAC decoding and the Opus transcode.
//!
//! Input: FLV tags as in an FLV file (an optional 9-byte `FLV` header and
//! previous-tag-size fields are skipped): type (8 audio, 9 video), 24-bit
//! size, 24-bit timestamp + extension byte, 24-bit stream id, body. Real
//! `.flv` captures are valid seeds as they are.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use roomcast::hub::{Hub, IngestProtocol};
use roomcast::ingest::flv_pipeline::FlvPipeline;

fuzz_target!(|data: &[u8]| {
    let hub = Hub::new();
    let stream = hub.ensure_stream("fuzz", None);
    let mut pipeline = FlvPipeline::new(hub.publish(&stream, IngestProtocol::Rtmp));
    let mut rest = data;
    if rest.starts_with(b"FLV") && rest.len() >= 13 {
        rest = &rest[13..]; // header + PreviousTagSize0
    }
    while rest.len() >= 11 {
        let kind = rest[0] & 0x1f;
        let size = u32::from_be_bytes([0, rest[1], rest[2], rest[3]]) as usize;
        let ts = u32::from_be_bytes([rest[7], rest[4], rest[5], rest[6]]);
        let body_end = (11 + size).min(rest.len());
        let body = Bytes::copy_from_slice(&rest[11..body_end]);
        rest = &rest[body_end..];
        // PreviousTagSize, when the input has it.
        rest = rest.get(4..).unwrap_or(&[]);
        let r = match kind {
            8 => pipeline.on_audio(body, ts),
            9 => pipeline.on_video(body, ts),
            _ => Ok(()),
        };
        if r.is_err() {
            return;
        }
    }
});
