//! Malformed RTMP against the real binary, from the first byte after the
//! handshake: deeply nested AMF0 (the message that used to overflow a worker's
//! stack), short commands, zero and huge chunk sizes, over-long declared
//! messages, too many chunk streams, thousands of createStream. Each closes
//! its connection, is logged at most once per kind, and the server keeps
//! answering /healthz within 1 s and accepting a real publisher.
//! (tests/attacks.rs runs the same kinds of attack with a viewer watching.)

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::rtmp::wait_closed;
use common::*;

/// One message as a type-0 chunk then type-3 continuations.
fn message(csid: u8, type_id: u8, stream_id: u32, payload: &[u8], chunk_size: usize) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![csid, 0, 0, 0];
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(type_id);
    out.extend_from_slice(&stream_id.to_le_bytes());
    for (i, c) in payload.chunks(chunk_size.max(1)).enumerate() {
        if i > 0 {
            out.push(0xc0 | csid);
        }
        out.extend_from_slice(c);
    }
    out
}

fn amf_string(s: &str) -> Vec<u8> {
    let mut v = vec![2];
    v.extend_from_slice(&(s.len() as u16).to_be_bytes());
    v.extend_from_slice(s.as_bytes());
    v
}

fn amf_number(n: f64) -> Vec<u8> {
    let mut v = vec![0];
    v.extend_from_slice(&n.to_be_bytes());
    v
}

fn command(parts: &[Vec<u8>]) -> Vec<u8> {
    message(3, 20, 0, &parts.concat(), 128)
}

fn set_chunk_size(n: u32) -> Vec<u8> {
    message(2, 1, 0, &n.to_be_bytes(), 128)
}

/// Handshake (plain C1) and `connect`; returns the connected socket.
fn connected(server: &Server) -> TcpStream {
    let mut s = TcpStream::connect(server.rtmp).expect("connect to the RTMP port");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut c0c1 = vec![3u8];
    c0c1.extend_from_slice(&[0; 1536]);
    s.write_all(&c0c1).unwrap();
    let mut s0s1s2 = vec![0u8; 1 + 2 * 1536];
    s.read_exact(&mut s0s1s2).expect("S0 S1 S2");
    assert_eq!(s0s1s2[0], 3);
    s.write_all(&[0; 1536]).unwrap();
    let mut app = vec![3, 0, 3];
    app.extend_from_slice(b"app");
    app.extend(amf_string("live"));
    app.extend_from_slice(&[0, 0, 9]);
    s.write_all(&command(&[amf_string("connect"), amf_number(1.0), app]))
        .unwrap();
    s
}

/// Sends `attack` after connect; the server must close the connection.
fn assert_closed(server: &mut Server, what: &str, attack: &[u8]) {
    let mut s = connected(server);
    // The server may close before everything is written.
    let _ = s.write_all(attack);
    assert!(
        wait_closed(&mut s, Duration::from_secs(15)),
        "{what}: the connection stayed open"
    );
    let t = Instant::now();
    server.assert_healthy(&format!("after {what}"));
    // Not wedged: a stuck server would not answer at all; 5 s leaves a
    // loaded debug build room (the client itself gives up later).
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "{what}: /healthz took {:?}",
        t.elapsed()
    );
}

fn nested_arrays(levels: usize) -> Vec<u8> {
    let mut v = amf_string("x");
    for _ in 0..levels {
        v.extend_from_slice(&[0x0a, 0, 0, 0, 1]);
    }
    v
}

#[test]
fn malformed_rtmp_closes_the_connection_and_nothing_else() {
    let mut server = Server::start("");
    let mark = server.log_len();

    // The message: ~1 MB of nested strict arrays in a command, with a
    // chunk size that lets it arrive in one chunk. Repeated: logged once.
    let mut deep = set_chunk_size(1 << 20);
    deep.extend(message(3, 20, 0, &nested_arrays(200_000), 1 << 20));
    for _ in 0..5 {
        assert_closed(&mut server, "1 MB of nested AMF0 arrays", &deep);
    }
    // Under the command size cap the depth limit refuses it.
    let mut deep = set_chunk_size(1 << 20);
    deep.extend(message(3, 20, 0, &nested_arrays(40_000), 1 << 20));
    for _ in 0..5 {
        assert_closed(&mut server, "200 KB of nested AMF0 arrays", &deep);
    }
    assert_closed(&mut server, "an empty command", &command(&[]));
    let mut short = command(&[amf_string("createStream")]);
    short.extend(message(3, 20, 1, &amf_string("publish"), 128));
    assert_closed(&mut server, "short commands", &short);
    assert_closed(&mut server, "chunk size 0", &set_chunk_size(0));
    assert_closed(
        &mut server,
        "chunk size 2^31-1",
        &set_chunk_size(0x7fff_ffff),
    );
    // 16 MiB - 1 declared on a video message, then data that never ends.
    let mut huge = vec![6, 0, 0, 0, 0xff, 0xff, 0xff, 9, 1, 0, 0, 0];
    huge.extend_from_slice(&[0; 65536]);
    assert_closed(&mut server, "a 16 MiB video message", &huge);
    let mut streams = Vec::new();
    for i in 0..200u8 {
        streams.extend_from_slice(&[0, i, 0, 0, 0, 0, 0, 0, 8, 1, 0, 0, 0]);
    }
    assert_closed(&mut server, "200 chunk streams", &streams);
    let mut many = Vec::new();
    for i in 0..5000 {
        many.extend(command(&[
            amf_string("createStream"),
            amf_number(f64::from(i)),
        ]));
    }
    assert_closed(&mut server, "5000 createStream", &many);
    // Interleaved chunk streams that break off mid-message, then garbage.
    let mut interleaved = Vec::new();
    for csid in 4..40u8 {
        interleaved.extend_from_slice(&[csid, 0, 0, 0, 0, 0x10, 0, 9, 1, 0, 0, 0]);
        interleaved.extend_from_slice(&[0x17; 128]);
    }
    interleaved.extend(random_bytes(20_000));
    assert_closed(
        &mut server,
        "interleaved chunk streams and garbage",
        &interleaved,
    );

    let lines: Vec<String> = server.log_lines()[mark..].to_vec();
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("overflow") || l.contains("panicked")),
        "{lines:#?}"
    );
    // Each kind at most once per interval (the test runs well within 10 s
    // of its first attack of each kind).
    for pattern in ["nested deeper", "over the limit", "too many createStream"] {
        let n = lines.iter().filter(|l| l.contains(pattern)).count();
        assert!(n <= 1, "'{pattern}' logged {n} times:\n{lines:#?}");
    }
    assert!(
        lines.iter().any(|l| l.contains("nested deeper")),
        "the AMF0 depth refusal is not logged:\n{lines:#?}"
    );

    // A real publisher still gets in.
    let _ffmpeg = Publisher::ffmpeg(
        &server.publish_url(STREAM),
        FfmpegOpts {
            width: 320,
            height: 180,
            ..FfmpegOpts::default()
        },
    );
    server.wait_live(STREAM, LIVE_TIMEOUT);
    server.assert_healthy("at the end");
    server.assert_no_key_logged();
}
