//! H.264 in an Annex B byte stream: NAL splitting, SPS parsing (with VUI,
//! scaling lists, HRD), slice headers (slice type for B-frame detection),
//! and RTP packetizing as the FLV pipeline does, checked against the
//! depacketizer the HLS segmenter uses: every NAL unit of types 1..=23
//! comes back unchanged and in order.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use roomcast::media::h264;
use roomcast::media::rtp_h264::{self, H264Packetizer, RTP_MTU_PAYLOAD};

fuzz_target!(|data: &[u8]| {
    let nalus = h264::split_annexb(&Bytes::copy_from_slice(data));
    for nal in &nalus {
        match h264::nal_type(nal) {
            h264::NAL_SPS => {
                if let Ok(sps) = h264::parse_sps(nal) {
                    let _ = sps.codec_string();
                    let _ = sps.b_frames_possible();
                    let _ = sps.profile_level_id();
                }
            }
            _ => {
                let _ = h264::slice_type(nal);
            }
        }
    }
    let _ = h264::frame_has_b_slice(&nalus);
    let _ = h264::is_idr_frame(&nalus);

    // Packetize as one access unit (no parameter sets added) and read it back.
    let mut packetizer = H264Packetizer::new(RTP_MTU_PAYLOAD);
    let mut payloads = Vec::new();
    packetizer.packetize(&nalus, None, &mut payloads);
    for p in &payloads {
        assert!(p.len() <= RTP_MTU_PAYLOAD, "payload of {} bytes", p.len());
    }
    // Types 24..=31 and 0 sent as single NAL units read as aggregation or
    // fragmentation headers: the round trip holds for the rest.
    let plain = |n: &Bytes| matches!(h264::nal_type(n), 1..=23);
    if nalus.iter().all(plain) {
        let want: Vec<&[u8]> = nalus
            .iter()
            .filter(|n| !matches!(h264::nal_type(n), h264::NAL_AUD | h264::NAL_FILLER))
            .map(|n| &n[..])
            .collect();
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut scratch = Vec::new();
        rtp_h264::depacketize(payloads.iter().map(|p| &p[..]), &mut scratch, |n| {
            got.push(n.to_vec())
        })
        .expect("our own packets depacketize");
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(&g[..], *w);
        }
    } else {
        let mut scratch = Vec::new();
        let _ = rtp_h264::depacketize(payloads.iter().map(|p| &p[..]), &mut scratch, |_| {});
    }
});
