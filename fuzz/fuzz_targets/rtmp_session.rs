//! The RTMP server core from the first handshake byte on (chunk stream, AMF0
//! commands, the publishing session) and the FLV pipeline behind it, driven
//! as `ingest::rtmp`'s connection loop drives them: every connect and publish
//! accepted (or, for some inputs, the publish refused), media events into
//! the pipeline, an error or an unsupported request ends the connection.
//! The same bytes also go, as a restream destination's replies after the
//! handshake, to the push's `PublishClient` (reads of 1 + 16 × seed bytes).
//!
//! Input: one byte that picks the socket read sizes, then the client's bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast::hub::{Hub, IngestProtocol};
use roomcast::ingest::flv_pipeline::FlvPipeline;
use roomcast::ingest::rtmp::{RtmpEvent, ServerCore};
use roomcast::restream::rtmp_client::PublishClient;

/// `rtmp.max_message_bytes`' default.
const MAX_MESSAGE_BYTES: u32 = 8 << 20;

fuzz_target!(|data: &[u8]| {
    let Some((&seed, wire)) = data.split_first() else {
        return;
    };
    let refuse_publish = seed % 8 == 7;
    // The restream push's client reads a destination's bytes with the same
    // chunk and AMF0 readers, and parses the connect reply's fourCcList: the
    // same input, as a destination's bytes after the handshake.
    let mut client = PublishClient::new();
    let (mut client_out, mut client_events) = (Vec::new(), Vec::new());
    for part in wire.chunks(1 + usize::from(seed) * 16) {
        if client
            .receive(part, "fuzz-key", &mut client_out, &mut client_events)
            .is_err()
        {
            break;
        }
        client_out.clear();
    }
    let hub = Hub::new();
    let mut core = ServerCore::new(MAX_MESSAGE_BYTES);
    let mut pipeline: Option<FlvPipeline> = None;
    let mut events = Vec::new();
    let mut rest = wire;
    let mut read = 0usize;
    while !rest.is_empty() {
        // Reads of 1..=4096 bytes; seed 0 reads 4096 (the driver's buffer before a publish).
        read += 1;
        let n = match seed {
            0 => 4096,
            s => 1 + (usize::from(s) * 131 + read * 977) % 4096,
        }
        .min(rest.len());
        if core.receive(&rest[..n], &mut events).is_err() {
            return;
        }
        rest = &rest[n..];
        let mut i = 0;
        while i < events.len() {
            let ev = std::mem::replace(&mut events[i], RtmpEvent::Unsupported(""));
            i += 1;
            let mut more = Vec::new();
            match ev {
                RtmpEvent::Send(_) => {}
                RtmpEvent::Connect { request_id, .. } => {
                    if core.accept(request_id, &mut more).is_err() {
                        return;
                    }
                }
                RtmpEvent::Publish { request_id, .. } => {
                    if refuse_publish {
                        let _ = core.reject(request_id, "stream key rejected", &mut more);
                        return;
                    }
                    let stream = hub.ensure_stream("fuzz", None);
                    pipeline = Some(FlvPipeline::new(hub.publish(&stream, IngestProtocol::Rtmp)));
                    if core.accept(request_id, &mut more).is_err() {
                        return;
                    }
                }
                RtmpEvent::Unpublish => pipeline = None,
                RtmpEvent::Metadata(m) => {
                    if let Some(p) = pipeline.as_mut() {
                        p.on_metadata(&m);
                    }
                }
                RtmpEvent::Video { data, timestamp } => {
                    if let Some(p) = pipeline.as_mut()
                        && p.on_video(data, timestamp).is_err()
                    {
                        return;
                    }
                }
                RtmpEvent::Audio { data, timestamp } => {
                    if let Some(p) = pipeline.as_mut()
                        && p.on_audio(data, timestamp).is_err()
                    {
                        return;
                    }
                }
                RtmpEvent::Unsupported(what) => {
                    if !what.is_empty() {
                        return;
                    }
                }
            }
            events.extend(more);
        }
        events.clear();
    }
});
