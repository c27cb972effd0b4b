//! Malformed RTMP from a raw client (`common::raw_rtmp`), each after a real
//! handshake unless said otherwise, while ffmpeg publishes and aiortc watches.

use std::time::Duration;

use crate::common::raw_rtmp::{self, RawRtmp, amf0, command, message, set_chunk_size};
use crate::common::*;
use crate::fixture::*;

/// How long a refused connection may take to be closed (or answered `_error`).
const REFUSE: Duration = Duration::from_secs(15);
/// A cap must act before the server's own "no publish within 10 s" close.
const REFUSE_FAST: Duration = Duration::from_secs(5);

fn handshaken(f: &Fixture, attack: &str) -> RawRtmp {
    RawRtmp::handshaken(f.server.rtmp)
        .unwrap_or_else(|e| panic!("[{attack}] the RTMP handshake failed: {e}"))
}

/// The server closed the connection or answered `_error` within `within`.
fn refused(c: &mut RawRtmp, within: Duration) -> bool {
    poll_until(within, || {
        c.is_closed() || c.received_contains(&amf0::string("_error"))
    })
}

#[test]
fn rtmp_deeply_nested_amf0_is_refused() {
    let mut f = Fixture::start();
    for depth in [20_000usize, 200_000] {
        let attack = format!("RTMP: a command nesting strict arrays {depth} deep");
        let m = f.mark(&attack);
        let mut c = handshaken(&f, &attack);
        let body = [
            amf0::string("connect"),
            amf0::number(1.0),
            amf0::nested_strict_arrays(depth),
        ]
        .concat();
        let _ = c.send(&command(&body));
        assert!(
            c.wait_closed(REFUSE),
            "[{attack}] the server kept the connection open"
        );
        drop(c);
        f.after(m, 10);
    }
}

#[test]
fn rtmp_commands_with_fewer_than_three_values_are_refused() {
    let mut f = Fixture::start();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("no value", vec![]),
        ("one value", amf0::string("connect")),
        (
            "two values",
            [amf0::string("connect"), amf0::number(1.0)].concat(),
        ),
        ("createStream with one value", amf0::string("createStream")),
        ("a lone number", amf0::number(7.0)),
    ];
    let m = f.mark("RTMP: commands with fewer than 3 values");
    for (what, body) in &cases {
        let mut c = handshaken(&f, what);
        let _ = c.send(&command(body));
        // The same as an AMF0 data message (type 18) and an AMF3 command (17).
        let _ = c.send(&message(3, 0, 18, 0, body, 128));
        let _ = c.send(&message(3, 0, 17, 0, &[&[0u8][..], body].concat(), 128));
        assert!(
            refused(&mut c, REFUSE),
            "[RTMP: a command with {what}] neither closed nor answered _error"
        );
        println!(
            "[RTMP: a command with {what}] refused; RSS {} KiB",
            rss_kib(f.pid())
        );
    }
    f.after(m, 10);
}

#[test]
fn rtmp_zero_and_huge_chunk_sizes_are_survived() {
    let mut f = Fixture::start();
    let attack = "RTMP: Set Chunk Size 0";
    let m = f.mark(attack);
    let mut c = handshaken(&f, attack);
    let _ = c.send(&set_chunk_size(0));
    let _ = c.send(&command(
        &[amf0::string("connect"), amf0::number(1.0)].concat(),
    ));
    let _ = c.send(&random_bytes(4096));
    assert!(
        c.wait_closed(REFUSE),
        "[{attack}] the server kept the connection open"
    );
    drop(c);
    f.after(m, 10);

    // The largest chunk size the spec allows, then a normal connect: either
    // refused, or the session goes on (without allocating for the size).
    let attack = "RTMP: Set Chunk Size 0x7fffffff";
    let m = f.mark(attack);
    for size in [0x7fff_ffffu32, 0xffff_ffff] {
        let mut c = handshaken(&f, attack);
        let _ = c.send(&set_chunk_size(size));
        match c.connect_app("live", REFUSE) {
            Ok(()) => println!("[{attack}] chunk size {size:#x} accepted, connect answered"),
            Err(e) => assert!(
                c.wait_closed(REFUSE),
                "[{attack}] chunk size {size:#x}: connect not answered ({e}) and the connection still open"
            ),
        }
    }
    f.after(m, 10);
}

/// Ten connections each announce a command of 16 MiB - 1 bytes, send 2 MiB
/// of it in one chunk and stop: each is closed (a message cap, the RTMP
/// session's own timer, or the listener's idle timeout), and the buffers are
/// given back.
#[test]
fn rtmp_messages_near_16_mib_never_completed_are_closed() {
    let mut f = Fixture::start();
    let attack = "RTMP: 10 messages of 16 MiB - 1 announced, 2 MiB sent, never completed";
    let m = f.mark(attack);
    let mut conns = Vec::new();
    for i in 0..10 {
        let mut c = handshaken(&f, attack);
        let _ = c.send(&set_chunk_size(0x00ff_ffff));
        let mut head = raw_rtmp::type0_header(3, 0, 0x00ff_ffff, 20, 0);
        head.extend_from_slice(&amf0::string("connect"));
        let _ = c.send(&head);
        let junk = random_bytes(64 * 1024);
        for _ in 0..32 {
            if c.send(&junk).is_err() {
                break;
            }
        }
        println!("[{attack}] connection {i} sent its 2 MiB");
        conns.push(c);
    }
    let close_within = IDLE_TIMEOUT + Duration::from_secs(10);
    for (i, c) in conns.iter_mut().enumerate() {
        assert!(
            c.wait_closed(close_within),
            "[{attack}] connection {i} still open after {close_within:?}"
        );
    }
    drop(conns);
    f.after(m, 5);
}

/// One connection starts a 64 KiB command on 2 000 chunk streams (one-,
/// two- and three-byte basic headers) and completes none.
#[test]
fn rtmp_thousands_of_interleaved_chunk_streams_are_refused() {
    let mut f = Fixture::start();
    let attack = "RTMP: 2 000 interleaved chunk streams, each with a message begun";
    let m = f.mark(attack);
    let mut c = handshaken(&f, attack);
    let mut batch = Vec::new();
    // Valid AMF0 however it is cut: "connect", then nulls.
    let first_chunk = [amf0::string("connect"), vec![0x05; 118]].concat();
    for csid in (3u32..).step_by(31).take(2_000) {
        batch.extend_from_slice(&raw_rtmp::type0_header(csid, 0, 65_536, 20, 0));
        batch.extend_from_slice(&first_chunk);
        if batch.len() > 32 * 1024 {
            if c.send(&batch).is_err() {
                break;
            }
            batch.clear();
        }
    }
    let _ = c.send(&batch);
    assert!(
        refused(&mut c, REFUSE_FAST),
        "[{attack}] the connection still open after {REFUSE_FAST:?}: chunk streams are not capped"
    );
    drop(c);
    f.after(m, 10);
}

#[test]
fn rtmp_thousands_of_create_stream_are_capped() {
    let mut f = Fixture::start();
    let attack = "RTMP: 5 000 createStream on one connection";
    let m = f.mark(attack);
    let mut c = handshaken(&f, attack);
    c.connect_app("live", REFUSE)
        .unwrap_or_else(|e| panic!("[{attack}] connect: {e}"));
    let mut batch = Vec::new();
    for txn in 0..5_000u32 {
        let body = [
            amf0::string("createStream"),
            amf0::number(f64::from(txn + 2)),
            amf0::null(),
        ]
        .concat();
        batch.extend_from_slice(&command(&body));
        if batch.len() > 32 * 1024 {
            if c.send(&batch).is_err() {
                break;
            }
            batch.clear();
        }
    }
    let _ = c.send(&batch);
    assert!(
        refused(&mut c, REFUSE_FAST),
        "[{attack}] no _error and the connection still open after {REFUSE_FAST:?}: createStream is not capped"
    );
    let peak = m.rss.peak_kib();
    drop(c);
    println!("[{attack}] peak RSS {peak} KiB");
    f.after(m, 10);
}

#[test]
fn rtmp_random_bytes_before_the_handshake_are_closed() {
    let mut f = Fixture::start();
    let attack = "RTMP: 50 connections sending random bytes instead of C0/C1";
    let m = f.mark(attack);
    let mut conns = Vec::new();
    for i in 0..50 {
        let mut c = RawRtmp::connect(f.server.rtmp)
            .unwrap_or_else(|e| panic!("[{attack}] connect {i}: {e}"));
        let mut junk = random_bytes(4096);
        junk[0] = 0x2a + (i % 3) as u8; // never version 3
        let _ = c.send(&junk);
        c.start_reader();
        conns.push(c);
    }
    for (i, c) in conns.iter_mut().enumerate() {
        assert!(
            c.wait_closed(REFUSE),
            "[{attack}] connection {i} still open"
        );
    }
    drop(conns);
    f.after(m, 10);
}
