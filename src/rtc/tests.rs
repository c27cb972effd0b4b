//! The engine on loopback with real WebRTC peers (str0m clients): a panic in
//! one session's input ends that session only, a worker whose loop panics is
//! restarted, and new sessions are placed and served after both.

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use str0m::change::SdpAnswer;
use str0m::media::{Direction, MediaKind};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};

use super::engine::{NO_WORKER, shard_of};
use super::shard::fault;
use super::*;
use crate::config::WebrtcConfig;
use crate::hub::{Hub, IngestProtocol, Stream};

/// A receiving WebRTC client driven on its own thread.
struct Client {
    id: u64,
    packets: Arc<AtomicU64>,
    connected: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn client(engine: &Engine, stream: &Arc<Stream>) -> Client {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let local = sock.local_addr().unwrap();
    let mut rtc = Rtc::builder().set_rtp_mode(true).build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp").unwrap());
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    let (offer, pending) = api.apply().unwrap();
    let answer = engine.add_viewer(stream, &offer.to_sdp_string()).unwrap();
    rtc.sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(&answer.sdp).unwrap())
        .unwrap();
    let packets = Arc::new(AtomicU64::new(0));
    let connected = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let (p, c, s) = (packets.clone(), connected.clone(), stop.clone());
    let thread = std::thread::spawn(move || {
        let mut buf = vec![0u8; 2048];
        while !s.load(Ordering::Relaxed) && rtc.is_alive() {
            match rtc.poll_output().unwrap() {
                Output::Transmit(t) => {
                    let _ = sock.send_to(&t.contents, t.destination);
                }
                Output::Event(Event::Connected) => c.store(true, Ordering::Relaxed),
                Output::Event(Event::RtpPacket(_)) => {
                    p.fetch_add(1, Ordering::Relaxed);
                }
                Output::Event(Event::IceConnectionStateChange(
                    IceConnectionState::Disconnected,
                )) => {
                    break;
                }
                Output::Event(_) => {}
                Output::Timeout(t) => {
                    let Some(input) = udp_input(&sock, local, &mut buf, t, 50) else {
                        continue;
                    };
                    if rtc.handle_input(input).is_err() {
                        break;
                    }
                }
            }
        }
    });
    Client {
        id: answer.id,
        packets,
        connected,
        stop,
        thread: Some(thread),
    }
}

/// An engine with `workers` shards on loopback, and the runtime and sockets
/// it needs (keep them alive as long as the engine).
fn start_engine(workers: usize) -> (tokio::runtime::Runtime, Arc<Engine>, Bound) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let cfg = WebrtcConfig {
        udp: "127.0.0.1:0".parse().unwrap(),
        tcp: "127.0.0.1:0".parse().unwrap(),
        public_ips: Vec::new(),
        tcp_force: false,
        workers,
        strict_h264_profile: false,
        ..Default::default()
    };
    let (engine, bound) = rt
        .block_on(Engine::start(
            &cfg,
            crate::listener::Limits::from_config(&Default::default()),
            crate::listener::Shutdown::default(),
        ))
        .unwrap();
    (rt, engine, bound)
}

/// A viewer's offer from a client that never answers ICE checks.
fn unconnected_offer() -> String {
    let mut rtc = Rtc::builder().build(Instant::now());
    rtc.add_local_candidate(Candidate::host("127.0.0.1:9".parse().unwrap(), "udp").unwrap());
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    api.apply().unwrap().0.to_sdp_string()
}

/// A str0m client's next input: what arrives on `sock` before its timeout
/// `t` (waiting 1 to `max_wait_ms` ms), else the timeout; `None` for a
/// datagram str0m cannot take.
fn udp_input<'a>(
    sock: &UdpSocket,
    local: std::net::SocketAddr,
    buf: &'a mut [u8],
    t: Instant,
    max_wait_ms: u64,
) -> Option<Input<'a>> {
    let wait = t
        .saturating_duration_since(Instant::now())
        .clamp(Duration::from_millis(1), Duration::from_millis(max_wait_ms));
    sock.set_read_timeout(Some(wait)).unwrap();
    match sock.recv_from(buf) {
        Ok((n, source)) => Receive::new(Protocol::Udp, source, local, &buf[..n])
            .ok()
            .map(|r| Input::Receive(Instant::now(), r)),
        Err(_) => Some(Input::Timeout(Instant::now())),
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the client has received `n` more packets.
fn receives(c: &Client, what: &str) {
    let before = c.packets.load(Ordering::Relaxed);
    wait_until(what, || c.packets.load(Ordering::Relaxed) >= before + 20);
}

#[test]
fn a_panicking_session_ends_alone_and_a_panicking_worker_restarts() {
    // One worker: every session shares the shard that panics.
    let (_rt, engine, _bound) = start_engine(1);
    let hub = Arc::new(Hub::new());
    let stream = hub.ensure_stream("s", None);

    // A publisher: 50 fps of small "video" frames (a keyframe every 10) and audio.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (hub, stream, stop) = (hub.clone(), stream.clone(), stop.clone());
        std::thread::spawn(move || {
            let p = super::pair::publish_media(&hub, &stream, "H264", Some(0x42e01f));
            let mut i: i64 = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = i % 10 == 0;
                let nal: Arc<[u8]> = Arc::from(vec![if key { 0x65 } else { 0x41 }; 300]);
                p.push_video(i * 20, key, Box::new([nal.clone(), nal]))
                    .unwrap();
                p.push_audio(i * 960, Arc::from(vec![0xfcu8; 60])).unwrap();
                i += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    let a = client(&engine, &stream);
    let b = client(&engine, &stream);
    for c in [&a, &b] {
        wait_until("clients connect", || c.connected.load(Ordering::Relaxed));
        receives(c, "clients receive media");
    }
    wait_until("two viewers counted", || stream.viewers() == 2);

    // A's next network input panics inside the shard.
    let shard = &engine.metrics.shards[0];
    fault::panic_on_input(shard, a.id);
    wait_until("the panicking session is removed", || {
        !engine.has_viewer("s", a.id)
    });
    wait_until("its viewer count is taken back", || stream.viewers() == 1);
    assert!(engine.has_viewer("s", b.id));
    receives(&b, "the other session keeps receiving");
    assert_eq!(shard.session_panics.load(Ordering::Relaxed), 1);
    let c = client(&engine, &stream);
    wait_until("a new session connects", || {
        c.connected.load(Ordering::Relaxed)
    });
    receives(&c, "a new session receives");
    assert_eq!(engine.viewer_counts("s"), (2, 2));

    // Now the worker's loop itself panics: its sessions are lost (and
    // unregistered), the worker restarts, and takes new sessions.
    fault::panic_loop_once(shard);
    wait_until("the worker's sessions are unregistered", || {
        !engine.has_viewer("s", b.id) && !engine.has_viewer("s", c.id)
    });
    wait_until("no viewer is counted", || stream.viewers() == 0);
    assert_eq!(shard.restarts.load(Ordering::Relaxed), 1);
    assert_eq!(engine.live_workers(), 1);
    let d = client(&engine, &stream);
    wait_until("a session after the restart connects", || {
        d.connected.load(Ordering::Relaxed)
    });
    receives(&d, "a session after the restart receives");
    assert_eq!(engine.viewer_counts("s"), (1, 1));

    stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();
}

#[test]
fn unconnected_offers_are_not_counted_as_viewers() {
    let (_rt, engine, _bound) = start_engine(1);
    let hub = Arc::new(Hub::new());
    let stream = hub.ensure_stream("s", None);
    let answer = engine.add_viewer(&stream, &unconnected_offer()).unwrap();
    // Admission still counts the session (so offers cannot bypass caps)...
    assert_eq!(engine.viewer_counts("s"), (1, 1));
    assert!(engine.has_viewer("s", answer.id));
    // ...but it is no viewer of the stream, and goes away unconnected.
    assert_eq!(stream.viewers(), 0);
    let deadline = Instant::now() + viewer::CONNECT_TIMEOUT + Duration::from_secs(5);
    while engine.has_viewer("s", answer.id) {
        assert!(
            Instant::now() < deadline,
            "an unconnected session outlived the connect timeout"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(stream.viewers(), 0);
}

/// A WHIP publisher that never ends a frame (no marker bit, one timestamp)
/// is dropped at `limits.max_frame_bytes`, and the stream goes offline.
#[test]
fn a_whip_frame_that_never_ends_drops_the_publisher() {
    let (_rt, engine, _bound) = start_engine(1);
    let hub = Arc::new(Hub::with_limits(crate::hub::HubLimits {
        max_frame_bytes: 64 * 1024,
        max_gop_cache_bytes: 1 << 20,
    }));
    let stream = hub.ensure_stream("s", None);

    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let local = sock.local_addr().unwrap();
    let mut rtc = Rtc::builder().set_rtp_mode(true).build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp").unwrap());
    let mut api = rtc.sdp_api();
    let mid = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let (offer, pending) = api.apply().unwrap();
    let answer = engine
        .add_publisher(
            &hub,
            &stream,
            IngestProtocol::Whip,
            &offer.to_sdp_string(),
            SessionOpts::default(),
        )
        .unwrap();
    rtc.sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(&answer.sdp).unwrap())
        .unwrap();
    let pt = rtc.media(mid).unwrap().remote_pts()[0];

    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut connected, mut was_live, mut sent) = (false, false, 0u64);
    // When the frame went over the cap (66 packets of 1000 bytes).
    let mut over_cap_at = None;
    let mut buf = vec![0u8; 2048];
    // Drives the client until the server ends the publish.
    while engine.has_publisher("s", answer.id) {
        assert!(
            Instant::now() < deadline,
            "the publisher was not dropped (sent {sent} packets)"
        );
        was_live |= stream.is_live();
        if connected && was_live && sent < 1000 {
            let mut api = rtc.direct_api();
            let tx = api.stream_tx_by_mid(mid, None).unwrap();
            let mut payload = vec![0u8; 1000];
            payload[0] = 0x10;
            tx.write_rtp(
                str0m::rtp::RtpWrite::new(pt, (sent + 1).into(), 9000, Instant::now(), payload)
                    .marker(false),
            );
            sent += 1;
            if sent == 66 {
                over_cap_at = Some(Instant::now());
            }
        }
        match rtc.poll_output().unwrap() {
            Output::Transmit(t) => {
                let _ = sock.send_to(&t.contents, t.destination);
            }
            Output::Event(Event::Connected) => connected = true,
            Output::Event(_) => {}
            Output::Timeout(t) => {
                if let Some(input) = udp_input(&sock, local, &mut buf, t, 5) {
                    let _ = rtc.handle_input(input);
                }
            }
        }
    }
    assert!(was_live, "the publish started");
    // Dropped for the frame, not by a timeout (those take 10 s).
    let over_cap_at = over_cap_at.expect("the frame went over the cap");
    assert!(over_cap_at.elapsed() < Duration::from_secs(5));
    // The shard unregisters the session just before it drops the hub's
    // publisher handle, so the stream goes offline a moment later.
    wait_until("the stream goes offline with its publisher", || {
        !stream.is_live()
    });
}

/// Placement skips dead workers, and with none alive an offer is refused
/// (not handed to a queue nobody reads).
#[test]
fn dead_workers_get_no_sessions() {
    let (_rt, engine, _bound) = start_engine(2);
    let hub = Arc::new(Hub::new());
    let stream = hub.ensure_stream("s", None);
    engine.shards[0].alive.store(false, Ordering::Relaxed);
    assert_eq!(engine.live_workers(), 1);
    for _ in 0..3 {
        let id = engine.add_viewer(&stream, &unconnected_offer()).unwrap().id;
        assert_eq!(shard_of(&engine.registry, "s", id), Some(1));
    }
    engine.shards[1].alive.store(false, Ordering::Relaxed);
    match engine.add_viewer(&stream, &unconnected_offer()) {
        Err(ViewerError::Negotiation(m)) => assert_eq!(m, NO_WORKER),
        other => panic!("expected a refusal, got {:?}", other.map(|a| a.id)),
    }
    assert_eq!(
        engine.viewer_counts("s"),
        (3, 3),
        "the refused offer left nothing behind"
    );
}

/// An ICE restart reaches only a live session of its stream: an unknown id,
/// another stream's, or an ended session's gets `NoSession`, and a live one
/// gets new credentials.
#[test]
fn ice_restarts_reach_only_live_sessions_of_their_stream() {
    let (rt, engine, _bound) = start_engine(1);
    let hub = Arc::new(Hub::new());
    let stream = hub.ensure_stream("s", None);
    let answer = engine.add_viewer(&stream, &unconnected_offer()).unwrap();
    let restart = |stream: &str, id: u64| {
        let remote = str0m::IceCreds::new();
        rt.block_on(engine.restart_viewer_ice(stream, id, remote))
    };
    assert_eq!(
        restart("s", answer.id + 1000),
        Err(IceRestartError::NoSession)
    );
    assert_eq!(restart("other", answer.id), Err(IceRestartError::NoSession));
    let creds = restart("s", answer.id).expect("a live session restarts");
    assert!(!answer.sdp.contains(&creds.ufrag), "new credentials");
    assert!(engine.remove_viewer("s", answer.id));
    let deadline = Instant::now() + Duration::from_secs(5);
    while engine.has_viewer("s", answer.id) {
        assert!(Instant::now() < deadline, "the session was not removed");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(restart("s", answer.id), Err(IceRestartError::NoSession));
}
