//! A viewer joining a stream with a big cached GOP gets it at a pace that a
//! default UDP receive buffer absorbs (issue 18: sent all at once, the GOP
//! overflowed it: 5–215 packets lost in half the joins).
//!
//! The viewer's socket is read as fast as possible with the kernel's receive
//! timestamps (`SIOCGSTAMPNS`), and those arrival times are replayed into a
//! model receiver: a socket buffer of the default size (how many datagrams it
//! holds is measured here, ~92) drained at `DRAIN_PER_MS`, like a browser's
//! network thread. Arrival times come from the kernel, so a busy test
//! machine delaying this reader does not change the verdict; sent at once,
//! the GOP overflows the model by hundreds of packets.

mod common;

use std::io::ErrorKind;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::rtmp::RtmpPublisher;
use common::*;
use str0m::media::{Direction, MediaKind};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

/// The kernel's default receive buffer (`net.core.rmem_default` on a stock host).
const DEFAULT_RCVBUF: libc::c_int = 212_992;
/// The model receiver takes this many datagrams per millisecond off its
/// socket (~50 Mbit/s of 1250-byte packets).
const DRAIN_PER_MS: f64 = 5.0;
/// The cached GOP when the viewer joins: a keyframe and P-frames.
const KEYFRAME_BYTES: usize = 120_000;
const PFRAME_BYTES: usize = 9_000;
const GOP_FRAMES_AT_JOIN: u32 = 45;
const FRAME_MS: u32 = 33;
/// TTFF bound of issue 5: WHEP POST → keyframe complete at the viewer.
const TTFF_BOUND: Duration = Duration::from_millis(300);
/// `SIOCGSTAMPNS` (linux/sockios.h): the receive time of the last datagram read.
const SIOCGSTAMPNS: libc::c_ulong = 0x8907;

fn set_rcvbuf(socket: &UdpSocket, bytes: libc::c_int, force: bool) -> libc::c_int {
    let fd = socket.as_raw_fd();
    let size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    let opt = if force {
        libc::SO_RCVBUFFORCE
    } else {
        libc::SO_RCVBUF
    };
    // The kernel doubles what it is asked for (bookkeeping overhead).
    let half = bytes / 2;
    let mut got: libc::c_int = 0;
    let mut len = size;
    // SAFETY: a valid socket and c_int option values of the stated size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&half as *const libc::c_int).cast(),
            size,
        );
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&mut got as *mut libc::c_int).cast(),
            &mut len,
        );
    }
    got
}

/// How many 1200-byte datagrams a socket with the default buffer holds
/// before the kernel drops (its accounting counts the buffers, ~2.3 KB
/// each, not the payload).
fn default_buffer_datagrams() -> usize {
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    assert_eq!(set_rcvbuf(&rx, DEFAULT_RCVBUF, false), DEFAULT_RCVBUF);
    rx.set_nonblocking(true).unwrap();
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..400 {
        tx.send_to(&[0u8; 1200], rx.local_addr().unwrap()).unwrap();
    }
    let mut buf = [0u8; 2000];
    let mut n = 0;
    while rx.recv(&mut buf).is_ok() {
        n += 1;
    }
    n
}

/// Datagrams a receiver holding at most `capacity` and taking `per_ms` off
/// its socket would lose, given their arrival times.
fn model_drops(arrivals: &[Duration], capacity: usize, per_ms: f64) -> usize {
    let (mut level, mut last, mut dropped) = (0.0f64, None::<Duration>, 0);
    for &t in arrivals {
        if let Some(l) = last {
            level = (level - t.saturating_sub(l).as_secs_f64() * 1000.0 * per_ms).max(0.0);
        }
        last = Some(t);
        if level + 1.0 > capacity as f64 {
            dropped += 1;
        } else {
            level += 1.0;
        }
    }
    dropped
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

/// An FLV AVC NALU tag body holding one slice NAL of `size` bytes.
fn video_tag(keyframe: bool, size: usize) -> Vec<u8> {
    let mut b = vec![if keyframe { 0x17 } else { 0x27 }, 0x01, 0, 0, 0];
    b.extend_from_slice(&(size as u32).to_be_bytes());
    b.extend_from_slice(if keyframe {
        &[0x65, 0x88]
    } else {
        &[0x41, 0x9a]
    });
    b.extend((2..size).map(|i| (i as u8).wrapping_mul(37) | 1));
    b
}

/// Publishes a keyframe and `GOP_FRAMES_AT_JOIN - 1` P-frames at once (the
/// GOP a viewer joins into), then P-frames in real time until `stop`.
fn publish(server: &Server, stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
    let mut p = RtmpPublisher::connect(
        server.rtmp,
        "live",
        server.key(STREAM),
        Duration::from_secs(20),
    )
    .expect("RTMP publish");
    thread::spawn(move || {
        p.video(&avc_sequence_header(), 0).expect("sequence header");
        let start = Instant::now();
        for i in 0u32.. {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let ts = i * FRAME_MS;
            if i >= GOP_FRAMES_AT_JOIN {
                // The live part: one frame per frame interval (the publisher's clock).
                let due =
                    start + Duration::from_millis(u64::from(ts - GOP_FRAMES_AT_JOIN * FRAME_MS));
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    thread::sleep(wait);
                }
            }
            let body = video_tag(i == 0, if i == 0 { KEYFRAME_BYTES } else { PFRAME_BYTES });
            if p.video(&body, ts).is_err() {
                break;
            }
        }
        p.shutdown();
    })
}

/// One RTP packet as the viewer's socket received it (header only: SRTP
/// leaves it in the clear), with the kernel's receive time.
struct Got {
    at: Duration,
    ssrc: u32,
    seq: u16,
    ts: u32,
    marker: bool,
}

struct ViewerRun {
    /// The WHEP POST, on the kernel timestamps' clock (the epoch).
    posted: Duration,
    rcvbuf: libc::c_int,
    rtp: Vec<Got>,
}

fn since_epoch() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
}

/// The kernel's receive time of the datagram just read from `fd`.
fn receive_time(fd: libc::c_int) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: SIOCGSTAMPNS writes one timespec.
    let r = unsafe { libc::ioctl(fd, SIOCGSTAMPNS as _, &mut ts as *mut libc::timespec) };
    if r != 0 {
        return since_epoch();
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A WHEP viewer on str0m, its socket read as fast as it can with a large
/// buffer. str0m gets STUN, DTLS and RTCP; RTP is only recorded (no NACK,
/// no PLI: nothing is repaired or replayed again).
fn watch(url: &str, for_how_long: Duration) -> ViewerRun {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
    let mut rcvbuf = set_rcvbuf(&socket, 8 << 20, true);
    if rcvbuf < 8 << 20 {
        rcvbuf = set_rcvbuf(&socket, 8 << 20, false);
    }
    let fd = socket.as_raw_fd();
    // The first SIOCGSTAMPNS turns receive timestamps on for the socket.
    let _ = receive_time(fd);
    let local = socket.local_addr().unwrap();
    let mut rtc = Rtc::builder()
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_h264(true)
        .build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp").unwrap());
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    let (offer, pending) = api.apply().expect("an offer");
    let posted = since_epoch();
    let end = Instant::now() + for_how_long;
    let r = common::http::request(
        "POST",
        url,
        &[("Content-Type", "application/sdp")],
        Some(offer.to_sdp_string().as_bytes()),
    )
    .expect("WHEP POST");
    assert_eq!(r.status, 201, "WHEP POST: {}", r.text());
    let answer = str0m::change::SdpAnswer::from_sdp_string(&r.text()).expect("answer parses");
    rtc.sdp_api()
        .accept_answer(pending, answer)
        .expect("answer accepted");

    let mut rtp = Vec::new();
    let mut buf = vec![0u8; 2000];
    while Instant::now() < end {
        let timeout = loop {
            match rtc.poll_output().expect("str0m output") {
                Output::Timeout(t) => break t,
                Output::Transmit(t) => {
                    let _ = socket.send_to(&t.contents, t.destination);
                }
                Output::Event(Event::IceConnectionStateChange(
                    str0m::IceConnectionState::Disconnected,
                )) => panic!("the viewer's ICE disconnected"),
                Output::Event(_) => {}
            }
        };
        let wait = timeout
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_micros(100), Duration::from_millis(5));
        let _ = socket.set_read_timeout(Some(wait));
        let (n, source) = match socket.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                let _ = rtc.handle_input(Input::Timeout(Instant::now()));
                continue;
            }
            Err(e) => panic!("viewer socket: {e}"),
        };
        let d = &buf[..n];
        let is_rtp = n >= 12 && (128..192).contains(&d[0]) && !(192..224).contains(&d[1]);
        if is_rtp {
            rtp.push(Got {
                at: receive_time(fd),
                ssrc: u32::from_be_bytes([d[8], d[9], d[10], d[11]]),
                seq: u16::from_be_bytes([d[2], d[3]]),
                ts: u32::from_be_bytes([d[4], d[5], d[6], d[7]]),
                marker: d[1] & 0x80 != 0,
            });
            continue;
        }
        if let Ok(recv) = Receive::new(Protocol::Udp, source, local, d) {
            let _ = rtc.handle_input(Input::Receive(Instant::now(), recv));
        }
    }
    ViewerRun {
        posted,
        rcvbuf,
        rtp,
    }
}

#[test]
fn a_joining_viewer_with_a_default_receive_buffer_loses_none_of_the_gop() {
    let _serial = serial();
    let capacity = default_buffer_datagrams();
    let server = Server::start("");
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = publish(&server, stop.clone());
    server.wait_live(STREAM, LIVE_TIMEOUT);
    let run = watch(&server.whep_url(STREAM), Duration::from_millis(1500));
    stop.store(true, Ordering::SeqCst);
    publisher.join().unwrap();

    let Some(first) = run.rtp.first() else {
        panic!(
            "no RTP within 1.5 s of the WHEP POST:\n{}",
            server.log_tail(30)
        );
    };
    let window: Vec<&Got> = run
        .rtp
        .iter()
        .filter(|g| g.ssrc == first.ssrc && g.at.saturating_sub(first.at) < Duration::from_secs(1))
        .collect();
    let (lo, hi) = (window[0].seq, window[window.len() - 1].seq);
    let expected = usize::from(hi.wrapping_sub(lo)) + 1;
    let lost_here = expected.saturating_sub(window.len());
    let arrivals: Vec<Duration> = window.iter().map(|g| g.at).collect();
    let model_lost = model_drops(&arrivals, capacity, DRAIN_PER_MS);
    // The replay's frames are one RTP tick apart; live frames a frame interval.
    let gop_packets = window
        .windows(2)
        .position(|w| w[1].ts.wrapping_sub(w[0].ts) > 100)
        .map_or(window.len(), |i| i + 1);
    let keyframe_done = window
        .iter()
        .find(|g| g.marker)
        .map(|g| g.at.saturating_sub(run.posted));
    println!(
        "first second: {} video packets (seq {lo}..={hi}), the GOP {gop_packets} of them, \
         arriving over {:?}; WHEP POST → first RTP {:?}, keyframe complete {keyframe_done:?}; \
         lost: {lost_here} here ({} B buffer), {model_lost} by a default buffer \
         ({capacity} datagrams) drained at {DRAIN_PER_MS}/ms",
        window.len(),
        window[gop_packets - 1].at.saturating_sub(first.at),
        first.at.saturating_sub(run.posted),
        run.rcvbuf,
    );
    assert!(
        (60..=120).contains(&capacity),
        "a {DEFAULT_RCVBUF} B receive buffer held {capacity} datagrams of 1200 B (expected ~92)"
    );
    assert!(
        gop_packets >= 300,
        "the viewer should have joined a GOP of ~450 packets, got {gop_packets}"
    );
    assert_eq!(
        model_lost, 0,
        "{model_lost} of the first second's {expected} video packets would be lost by a receiver \
         with a default buffer ({capacity} datagrams) taking {DRAIN_PER_MS} per ms off it"
    );
    // In order: live frames never overtake the replay, nothing is reordered.
    for w in window.windows(2) {
        assert_eq!(
            w[1].seq,
            w[0].seq.wrapping_add(1),
            "sequence numbers out of order or missing here ({} B buffer)",
            run.rcvbuf
        );
        assert!(
            w[1].ts.wrapping_sub(w[0].ts) < 0x8000_0000,
            "RTP time went backwards ({} after {}): a live frame overtook the replay",
            w[1].ts,
            w[0].ts
        );
    }
    let keyframe_done = keyframe_done.expect("the keyframe's last packet (marker)");
    assert!(
        keyframe_done <= TTFF_BOUND,
        "keyframe complete {keyframe_done:?} after the WHEP POST (bound {TTFF_BOUND:?})"
    );
}
