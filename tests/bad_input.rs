//! Bad input while a viewer watches a live stream: each gets a clear error (or
//! a closed connection), the server stays healthy and the viewer keeps decoding.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::rtmp::{RtmpPublisher, wait_closed};
use common::*;
use rml_rtmp::sessions::StreamMetadata;
use serde_json::Value;

fn video_frames(v: &Value) -> u64 {
    v["video_frames"].as_u64().unwrap_or(0)
}

/// The watching viewer decodes at least 15 more frames, and /healthz is 200.
fn assert_viewer_keeps_decoding(server: &mut Server, viewer: &JsonTool, after: &str) {
    let before = viewer
        .last_of("progress")
        .map(|v| video_frames(&v))
        .unwrap_or(0);
    let cursor = viewer.cursor();
    viewer.wait_for_from(
        cursor,
        &format!("the viewer to keep decoding after {after} (had {before} frames)"),
        Duration::from_secs(30),
        |v| v["type"] == "progress" && video_frames(v) >= before + 15,
    );
    server.assert_healthy(&format!("after {after}"));
}

/// An AVC sequence header (AVCDecoderConfigurationRecord) for 1280x720 High.
fn avc_sequence_header() -> Vec<u8> {
    let sps: &[u8] = &[
        0x67, 0x64, 0x00, 0x1f, 0xac, 0xd9, 0x40, 0x50, 0x05, 0xbb, 0x01, 0x10, 0x00, 0x00, 0x03,
        0x00, 0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x83, 0x19, 0x60,
    ];
    let pps: &[u8] = &[0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0];
    let mut b = vec![
        0x17, 0x00, 0x00, 0x00, 0x00, 0x01, 0x64, 0x00, 0x1f, 0xff, 0xe1,
    ];
    b.extend_from_slice(&(sps.len() as u16).to_be_bytes());
    b.extend_from_slice(sps);
    b.push(0x01);
    b.extend_from_slice(&(pps.len() as u16).to_be_bytes());
    b.extend_from_slice(pps);
    b
}

/// Publishes truncated and garbage FLV tag bodies to `stream` with its right
/// key, then cuts a chunk in half. Write errors are fine (the server may close).
fn send_bad_flv(server: &Server, stream: &str) {
    let mut p = RtmpPublisher::connect(
        server.rtmp,
        "live",
        server.key(stream),
        Duration::from_secs(20),
    )
    .unwrap_or_else(|e| panic!("RTMP publish to {stream} with the right key: {e}"));
    let mut md = StreamMetadata::new();
    md.video_width = Some(0);
    md.video_height = Some(u32::MAX);
    md.video_frame_rate = Some(-1.0);
    md.audio_sample_rate = Some(0);
    let _ = p.metadata(&md);

    let seq = avc_sequence_header();
    let garbage = random_bytes(3000);
    let video_bodies: Vec<Vec<u8>> = vec![
        vec![],            // empty tag
        vec![0x17],        // header only
        vec![0x17, 0x00],  // no composition time
        seq[..9].to_vec(), // truncated sequence header
        {
            let mut b = seq.clone(); // SPS length pointing past the end
            b[11] = 0xff;
            b[12] = 0xff;
            b
        },
        seq.clone(),                        // a valid one, then bad NALUs
        vec![0x17, 0x01, 0x00, 0x00, 0x00], // NALU packet, no NALU
        vec![
            0x17, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x65, 0x88,
        ], // length past the end
        vec![0x17, 0x01, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff], // 4 GB NALU
        vec![0x27, 0x01, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x02, 0x41], // negative CTS, truncated
        vec![0x17, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00], // zero-length NALU
        vec![0x1c, 0x00, 0x00],             // unknown codec id 12 (HEVC?)
        vec![0x9f, 0x00],                   // ex-header bit, truncated
        vec![0x17, 0x02],                   // end of sequence, truncated
        [vec![0x17, 0x01, 0x00, 0x00, 0x00], garbage.clone()].concat(), // garbage NALUs
        garbage.clone(),                    // garbage tag
    ];
    let audio_bodies: Vec<Vec<u8>> = vec![
        vec![],                                               // empty tag
        vec![0xaf],                                           // AAC, no packet type
        vec![0xaf, 0x00],                                     // empty AudioSpecificConfig
        vec![0xaf, 0x00, 0xff, 0xff],                         // invalid AudioSpecificConfig
        vec![0xaf, 0x00, 0x12],                               // truncated AudioSpecificConfig
        vec![0xaf, 0x01, 0x21, 0x00],                         // raw AAC before a valid config
        vec![0xaf, 0x00, 0x12, 0x10],                         // valid: AAC-LC 44.1 kHz stereo
        [vec![0xaf, 0x01], garbage[..700].to_vec()].concat(), // garbage AAC frames
        vec![0xaf, 0x01],                                     // empty AAC frame
        vec![0x2f, 0xff, 0xfb],                               // MP3 header, truncated
        vec![0x7f, 0x00],                                     // G.711, unsupported
        garbage[..1500].to_vec(),                             // garbage tag
    ];
    let mut ts = 0u32;
    for i in 0..video_bodies.len().max(audio_bodies.len()) {
        ts += 33;
        if let Some(b) = video_bodies.get(i)
            && p.video(b, ts).is_err()
        {
            break;
        }
        if let Some(b) = audio_bodies.get(i)
            && p.audio(b, ts).is_err()
        {
            break;
        }
    }
    // Timestamps going backwards and jumping far.
    let _ = p.video(&seq, 5);
    let _ = p.video(
        &[
            0x17, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x65, 0x88,
        ],
        u32::MAX - 10,
    );
    // Half an RTMP message, then the connection ends.
    if let Ok(packet) = p.video_packet(
        &[&[0x17u8, 0x01, 0, 0, 0][..], &garbage[..2000]].concat(),
        ts + 33,
    ) {
        let _ = p.raw(&packet[..packet.len() / 2]);
    }
    p.shutdown();
}

#[test]
fn bad_input_gets_clear_errors_while_a_viewer_keeps_decoding() {
    let _serial = serial();
    let mut server = Server::start("");
    let _ffmpeg = Publisher::ffmpeg(&server.publish_url(STREAM), FfmpegOpts::default());
    server.wait_live(STREAM, LIVE_TIMEOUT);
    let mut viewer = aiortc_viewer(
        &server.whep_url(STREAM),
        ViewerOpts {
            duration_s: Some(400.0),
            timeout_s: 400.0,
            ..ViewerOpts::default()
        },
    );
    viewer.wait_for("the viewer to decode 30 frames", MEDIA_TIMEOUT, |v| {
        v["type"] == "progress" && video_frames(v) >= 30
    });

    // 1. A wrong stream key: refused, logged without the key.
    let wrong_key = format!("wrong-{}", random_hex());
    let mark = server.log_len();
    let mut intruder = Publisher::ffmpeg(
        &server.rtmp_url(&wrong_key),
        FfmpegOpts {
            duration_s: Some(10.0),
            ..FfmpegOpts::default()
        },
    );
    let status = intruder
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| {
            panic!(
                "ffmpeg with a wrong key still runs after 30 s:\n{}",
                intruder.log_tail(20)
            )
        });
    assert!(
        !status.success(),
        "ffmpeg with a wrong key exited successfully: the publish was accepted:\n{}",
        intruder.log_tail(20)
    );
    let line = server.wait_for_log_from(mark, "stream key rejected", Duration::from_secs(10));
    println!("wrong key: {line}");
    for l in server.log_lines() {
        assert!(!l.contains(&wrong_key), "the wrong key was logged: {l}");
    }
    server.assert_no_key_logged();
    let api = server.api_stream(STREAM).expect("stream API");
    assert_eq!(api["live"], true, "the real publisher stays live: {api}");
    assert_viewer_keeps_decoding(&mut server, &viewer, "a wrong stream key");

    // 2. Random bytes on the RTMP port: the connection is closed.
    let mark = server.log_len();
    let mut s = TcpStream::connect(server.rtmp).expect("connect to the RTMP port");
    let mut junk = random_bytes(4096);
    junk[0] = 0x2a; // not RTMP version 3
    let _ = s.write_all(&junk);
    assert!(
        wait_closed(&mut s, Duration::from_secs(15)),
        "the server kept a connection open after 4 KiB of random bytes"
    );
    drop(s);
    // A right version byte, then garbage through the handshake and after it.
    let mut s = TcpStream::connect(server.rtmp).expect("connect to the RTMP port");
    let mut junk = random_bytes(1 + 1536 + 1536 + 16384);
    junk[0] = 0x03;
    let _ = s.write_all(&junk);
    let _ = wait_closed(&mut s, Duration::from_secs(2));
    drop(s);
    let logged = server.log_len() - mark;
    assert!(
        logged <= 20,
        "random bytes flooded the log with {logged} lines"
    );
    assert_viewer_keeps_decoding(&mut server, &viewer, "random bytes on the RTMP port");

    // 3. Truncated and garbage FLV tags, published with the right key to the
    //    other stream (publishing to the watched one would take it over).
    send_bad_flv(&server, STREAM2);
    assert_viewer_keeps_decoding(&mut server, &viewer, "truncated FLV tags");
    wait_until(
        &format!("stream {STREAM2} to be offline after its bad publisher left"),
        Duration::from_secs(30),
        || server.api_stream(STREAM2).filter(|v| v["live"] == false),
    );
    // The stream still works afterwards.
    let mut good = Publisher::ffmpeg(&server.publish_url(STREAM2), FfmpegOpts::default());
    server.wait_live(STREAM2, LIVE_TIMEOUT);
    let v = wait_until(
        "t2's video properties after the garbage",
        Duration::from_secs(30),
        || {
            server
                .api_stream(STREAM2)
                .filter(|v| v["video"]["width"] == 1280)
        },
    );
    assert_eq!(v["video"]["height"], 720, "{v}");
    assert!(good.stop(Duration::from_secs(10)).is_some());
    assert_viewer_keeps_decoding(&mut server, &viewer, "a good publisher after the garbage");

    // 4. Malformed SDP: 400 with a JSON error.
    let whep = format!("/whep/{STREAM}");
    for (what, body) in [
        ("plain text", "this is not an SDP offer".to_string()),
        ("an empty body", String::new()),
        (
            "a session without media",
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n".to_string(),
        ),
        ("an offer cut in half", {
            let o = offer_sdp(&["H264"]);
            o[..o.len() / 2].to_string()
        }),
        (
            "binary garbage",
            String::from_utf8_lossy(&random_bytes(2000)).into_owned(),
        ),
    ] {
        let r = server.post_sdp(&whep, body.as_bytes());
        let v = assert_json_error(&r, 400, &format!("WHEP offer with {what}"));
        println!("malformed SDP ({what}): {v}");
    }
    assert_viewer_keeps_decoding(&mut server, &viewer, "malformed SDP");

    // 5. An SDP body over 1 MiB: 413 with a JSON error.
    let mut big = offer_sdp(&["H264"]);
    while big.len() <= 1024 * 1024 {
        big.push_str(
            "a=x-padding:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\n",
        );
    }
    let r = server.post_sdp(&whep, big.as_bytes());
    let v = assert_json_error(&r, 413, "a 1 MiB WHEP offer");
    println!("1 MiB SDP: {v}");
    assert_viewer_keeps_decoding(&mut server, &viewer, "a 1 MiB SDP body");

    // 6. An unknown stream and an offline one: 404 with a JSON error.
    let offer = offer_sdp(&["VP8", "H264"]);
    let r = server.post_sdp("/whep/no-such-stream", offer.as_bytes());
    let v = assert_json_error(&r, 404, "WHEP for an unknown stream");
    println!("unknown stream: {v}");
    wait_until(
        &format!("{STREAM2} offline"),
        Duration::from_secs(30),
        || server.api_stream(STREAM2).filter(|v| v["live"] == false),
    );
    let r = server.post_sdp(&format!("/whep/{STREAM2}"), offer.as_bytes());
    let v = assert_json_error(&r, 404, "WHEP for an offline stream");
    println!("offline stream: {v}");

    // 7. An offer without a codec the stream can send: 4xx naming H.264.
    let r = server.post_sdp(&whep, offer_sdp(&["VP9", "AV1"]).as_bytes());
    assert!(
        (400..500).contains(&r.status),
        "an offer without H.264 for an H.264 stream: expected 4xx, got {} {}",
        r.status,
        r.text()
    );
    assert!(
        r.text().contains("264"),
        "the error should name the stream's codec (H.264): {}",
        r.text()
    );
    println!("offer without H.264: {} {}", r.status, r.text());
    assert_viewer_keeps_decoding(&mut server, &viewer, "WHEP errors");

    // The viewer decoded throughout: no long hole in its per-second counts.
    let r = viewer.stop(Duration::from_secs(30));
    println!("viewer during bad input: {r}");
    assert_eq!(r["ok"], true, "{r}");
    let buckets: Vec<u64> = r["video_buckets"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(0)).collect())
        .unwrap_or_default();
    let start = buckets.iter().position(|&n| n > 0).unwrap_or(0);
    let end = buckets.len().saturating_sub(1); // the last second is partial
    let mut hole = 0;
    let mut longest = 0;
    for &n in &buckets[start..end.max(start)] {
        hole = if n == 0 { hole + 1 } else { 0 };
        longest = longest.max(hole);
    }
    assert!(
        longest <= 5,
        "the viewer decoded nothing for {longest} s in a row: {buckets:?}"
    );
    server.assert_healthy("at the end");
    server.assert_no_key_logged();
}
