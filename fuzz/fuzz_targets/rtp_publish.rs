//! A WHIP publisher's RTP, after SRTP: `PubPeer` (src/rtc/publish.rs) for
//! each codec WHIP accepts (H.264, VP8, VP9, AV1) with Opus: the frame
//! assembler (reordering, loss, gap timeouts, the frame cap), keyframe and
//! frame-start detection, H.264 parameter sets and SPS parsing, VP8/VP9/AV1
//! keyframe dimensions, and the push into the hub.
//!
//! Input: one byte (codec in bits 0..2, an audio track with bit 7), then
//! packets: flags (bit 0 marker, bit 1 audio, bit 2 advance the clock past
//! the assembler's gap wait first), sequence number step (i8) and RTP time step
//! (u16 BE) on the packet's track, payload length (u16 BE), payload.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use roomcast::hub::{Hub, IngestProtocol};
use roomcast::media::rtp_video::{GAP_WAIT, VideoCodec};
use roomcast::rtc::publish::{NewPublisher, PubPeer, VideoTrack};
use str0m::Rtc;
use str0m::config::DtlsCert;
use str0m::media::{Mid, Pt};

const VIDEO_PT: u8 = 96;
const AUDIO_PT: u8 = 111;

fn cert() -> DtlsCert {
    static CERT: OnceLock<DtlsCert> = OnceLock::new();
    CERT.get_or_init(|| {
        str0m::crypto::from_feature_flags().install_process_default();
        str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate()
            .expect("a DTLS certificate")
    })
    .clone()
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, mut rest)) = data.split_first() else {
        return;
    };
    let codec = [
        VideoCodec::H264,
        VideoCodec::Vp8,
        VideoCodec::Vp9,
        VideoCodec::Av1,
    ][usize::from(first & 3)];
    let start = Instant::now();
    let rtc = Rtc::builder().set_dtls_cert(cert()).build(start);
    let hub = Arc::new(Hub::new());
    let stream = hub.ensure_stream("fuzz", None);
    let mut peer = PubPeer::new(
        NewPublisher {
            id: 1,
            rtc,
            hub: hub.clone(),
            stream,
            protocol: IngestProtocol::Whip,
            ufrag: "fuzz".into(),
            video: Some(VideoTrack {
                mid: Mid::from("0"),
                pt: Pt::from(VIDEO_PT),
                codec,
                fmtp: String::new(),
            }),
            audio: (first & 0x80 != 0).then(|| (Mid::from("1"), Pt::from(AUDIO_PT))),
            expires_at: None,
            guard: None,
        },
        start,
    );
    peer.on_connected(Arc::new(|| {}));
    // Video and audio each have their own sequence numbers and clock.
    let mut seq: [u64; 2] = [1 << 16; 2];
    let mut time: [u64; 2] = [1 << 32; 2];
    let mut arrival = start;
    while rest.len() >= 6 && !peer.dead {
        let flags = rest[0];
        let seq_step = rest[1] as i8;
        let time_step = u16::from_be_bytes([rest[2], rest[3]]);
        let len = usize::from(u16::from_be_bytes([rest[4], rest[5]]));
        let end = (6 + len).min(rest.len());
        let payload: Arc<[u8]> = Arc::from(&rest[6..end]);
        rest = &rest[end..];
        if flags & 4 != 0 {
            arrival += GAP_WAIT + Duration::from_millis(1);
            peer.poll_assembler(arrival);
        }
        arrival += Duration::from_millis(1);
        let track = usize::from(flags & 2 != 0);
        seq[track] = seq[track].saturating_add_signed(i64::from(seq_step));
        time[track] = time[track].wrapping_add(u64::from(time_step));
        let pt = Pt::from([VIDEO_PT, AUDIO_PT][track]);
        peer.on_rtp_parts(
            pt,
            seq[track],
            time[track],
            flags & 1 != 0,
            arrival,
            payload,
        );
    }
});
