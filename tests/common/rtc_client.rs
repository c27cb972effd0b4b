//! A small WHIP/WHEP client on str0m (RTP mode) for the attack suite: it can
//! publish RTP that no encoder would send, e.g. one H.264 frame that never
//! ends (FU-A fragments with one timestamp and no marker bit, forever).

use std::io::ErrorKind;
use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpWrite, SeqNo};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};

use super::http::{self, HttpResponse};

/// What the publisher sends once ICE and DTLS are up.
#[derive(Clone, Copy, Debug)]
pub enum Outgoing {
    Nothing,
    /// One H.264 IDR frame that never ends: FU-A fragments of `packet` bytes,
    /// one RTP timestamp, no marker bit, at `bytes_per_sec`, until `max_bytes`.
    EndlessFrame {
        packet: usize,
        bytes_per_sec: u64,
        max_bytes: u64,
    },
}

#[derive(Default)]
pub struct Progress {
    pub connected: AtomicBool,
    /// The session ended: ICE disconnected or str0m refused the peer's input.
    pub ended: AtomicBool,
    pub sent_bytes: AtomicU64,
    /// Bytes str0m handed to the socket (all packets, encrypted).
    pub transmitted: AtomicU64,
    /// Video RTP packets received (a WHEP viewer), and how many of them start
    /// an H.264 IDR frame.
    pub video_packets: AtomicU64,
    pub keyframes: AtomicU64,
    pub stop: AtomicBool,
    /// Asks the loop for an ICE restart from a new socket (WHEP PATCH).
    pub restart: AtomicBool,
    /// The restart's PATCH status (0 until it was sent).
    pub restart_status: AtomicU64,
}

pub struct RtcSession {
    /// The `Location` as an absolute URL.
    pub location: String,
    pub answer: HttpResponse,
    pub progress: Arc<Progress>,
    thread: Option<thread::JoinHandle<String>>,
}

impl RtcSession {
    pub fn connected(&self) -> bool {
        self.progress.connected.load(Ordering::SeqCst)
    }
    pub fn ended(&self) -> bool {
        self.progress.ended.load(Ordering::SeqCst)
    }
    pub fn sent_bytes(&self) -> u64 {
        self.progress.sent_bytes.load(Ordering::SeqCst)
    }
    pub fn transmitted(&self) -> u64 {
        self.progress.transmitted.load(Ordering::SeqCst)
    }
    pub fn video_packets(&self) -> u64 {
        self.progress.video_packets.load(Ordering::SeqCst)
    }
    pub fn keyframes(&self) -> u64 {
        self.progress.keyframes.load(Ordering::SeqCst)
    }
    /// Restarts ICE from a new UDP socket the way a WHEP client does (RFC
    /// 9725 §4.3.2: its new credentials PATCHed with `If-Match: *`, the
    /// server's applied to the answer); the PATCH's status.
    pub fn restart_ice(&self) -> u16 {
        self.progress.restart_status.store(0, Ordering::SeqCst);
        self.progress.restart.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.progress.restart_status.load(Ordering::SeqCst);
            if s != 0 {
                return s as u16;
            }
            assert!(Instant::now() < deadline, "the ICE restart never ran");
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the loop; returns why it ended.
    pub fn stop(&mut self) -> String {
        self.progress.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .map(|t| t.join().unwrap_or_else(|_| "panicked".into()))
            .unwrap_or_default()
    }
}

impl Drop for RtcSession {
    fn drop(&mut self) {
        self.stop();
    }
}

/// POSTs a str0m offer (sendonly H.264 video + Opus audio for WHIP, recvonly
/// for WHEP) to `url` and runs the session on a thread. `Err` carries a
/// non-201 answer.
pub fn start(
    url: &str,
    bearer: Option<&str>,
    publish: bool,
    send: Outgoing,
) -> Result<RtcSession, HttpResponse> {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
    let local = socket.local_addr().unwrap();
    // H.264 and Opus only: a server that prefers VP8 must take H.264.
    let mut rtc = Rtc::builder()
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_h264(true)
        .enable_opus(true, false)
        .build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp").unwrap());
    let dir = if publish {
        Direction::SendOnly
    } else {
        Direction::RecvOnly
    };
    let mut api = rtc.sdp_api();
    let video = api.add_media(MediaKind::Video, dir, None, None, None);
    api.add_media(MediaKind::Audio, dir, None, None, None);
    let (offer, pending) = api.apply().expect("an offer");
    let auth = bearer.map(|k| format!("Bearer {k}"));
    let mut headers = vec![("Content-Type", "application/sdp")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    let r = http::request(
        "POST",
        url,
        &headers,
        Some(offer.to_sdp_string().as_bytes()),
    )
    .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    if r.status != 201 {
        return Err(r);
    }
    let answer = str0m::change::SdpAnswer::from_sdp_string(&r.text())
        .unwrap_or_else(|e| panic!("answer from {url} does not parse ({e}): {}", r.text()));
    rtc.sdp_api()
        .accept_answer(pending, answer)
        .unwrap_or_else(|e| panic!("str0m refused the answer from {url}: {e}"));
    let location = r
        .header("location")
        .unwrap_or_else(|| panic!("201 from {url} without Location"))
        .to_string();
    let (authority, _) = http::split_url(url).unwrap();
    let location = if location.starts_with("http") {
        location
    } else {
        format!("http://{authority}{location}")
    };
    let progress = Arc::new(Progress::default());
    let p = progress.clone();
    let (patch_url, answer_sdp) = (location.clone(), r.text());
    let thread = thread::spawn(move || run(rtc, socket, video, send, &p, &patch_url, answer_sdp));
    Ok(RtcSession {
        location,
        answer: r,
        progress,
        thread: Some(thread),
    })
}

fn run(
    mut rtc: Rtc,
    mut socket: UdpSocket,
    video: Mid,
    send: Outgoing,
    p: &Progress,
    location: &str,
    mut answer: String,
) -> String {
    let mut local = socket.local_addr().unwrap();
    let mut buf = vec![0u8; 2000];
    let mut pt = None;
    let mut seq: u64 = 1000;
    let mut started: Option<Instant> = None;
    let why = loop {
        if p.stop.load(Ordering::SeqCst) {
            break "stopped".to_string();
        }
        if p.restart.swap(false, Ordering::SeqCst) {
            let status = restart_ice(&mut rtc, location, &mut answer, &mut socket);
            local = socket.local_addr().unwrap();
            p.restart_status.store(status.into(), Ordering::SeqCst);
        }
        // Write what is due before polling, so str0m sends it.
        if let (
            Outgoing::EndlessFrame {
                packet,
                bytes_per_sec,
                max_bytes,
            },
            true,
        ) = (send, p.connected.load(Ordering::SeqCst))
        {
            let pt = *pt.get_or_insert_with(|| {
                let remote = rtc.media(video).map(|m| m.remote_pts().to_vec());
                rtc.codec_config()
                    .find(|c| {
                        c.spec().codec == Codec::H264
                            && remote.as_ref().is_none_or(|r| r.contains(&c.pt()))
                    })
                    .map(|c| c.pt())
                    .unwrap_or_else(|| {
                        panic!(
                            "no H.264 payload type among the remote ones {remote:?}: {:?}",
                            rtc.codec_config().params()
                        )
                    })
            });
            let t0 = *started.get_or_insert_with(Instant::now);
            let due = (t0.elapsed().as_secs_f64() * bytes_per_sec as f64) as u64;
            let mut sent = p.sent_bytes.load(Ordering::SeqCst);
            let mut burst = 0;
            while sent < due.min(max_bytes) && burst < 64 {
                // FU-A of an IDR slice: start bit on the very first fragment only.
                let mut payload = vec![0u8; packet];
                payload[0] = 0x7c;
                payload[1] = if seq == 1000 { 0x85 } else { 0x05 };
                for (i, b) in payload[2..].iter_mut().enumerate() {
                    *b = (i as u8).wrapping_mul(31) | 1;
                }
                let mut api = rtc.direct_api();
                let Some(tx) = api.stream_tx_by_mid(video, None) else {
                    break;
                };
                tx.write_rtp(
                    RtpWrite::new(pt, SeqNo::from(seq), 90_000, Instant::now(), payload)
                        .marker(false),
                );
                seq += 1;
                sent += packet as u64;
                burst += 1;
            }
            p.sent_bytes.store(sent, Ordering::SeqCst);
        }
        let timeout = match rtc.poll_output() {
            Ok(Output::Timeout(t)) => t,
            Ok(Output::Transmit(t)) => {
                p.transmitted
                    .fetch_add(t.contents.len() as u64, Ordering::SeqCst);
                let _ = socket.send_to(&t.contents, t.destination);
                continue;
            }
            Ok(Output::Event(e)) => {
                match e {
                    Event::Connected => p.connected.store(true, Ordering::SeqCst),
                    Event::RtpPacket(pkt) => {
                        let is_video = rtc
                            .media(video)
                            .is_some_and(|m| m.remote_pts().contains(&pkt.header.payload_type));
                        if is_video {
                            p.video_packets.fetch_add(1, Ordering::SeqCst);
                            if starts_idr(&pkt.payload) {
                                p.keyframes.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    }
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        break "ICE disconnected".to_string();
                    }
                    _ => {}
                }
                continue;
            }
            Err(e) => break format!("str0m: {e}"),
        };
        let mut wait = timeout.saturating_duration_since(Instant::now());
        if matches!(send, Outgoing::EndlessFrame { .. }) && p.connected.load(Ordering::SeqCst) {
            wait = wait.min(Duration::from_millis(2));
        }
        if wait.is_zero() {
            if let Err(e) = rtc.handle_input(Input::Timeout(Instant::now())) {
                break format!("str0m: {e}");
            }
            continue;
        }
        let _ = socket.set_read_timeout(Some(wait));
        let input = match socket.recv_from(&mut buf) {
            Ok((n, source)) => match Receive::new(Protocol::Udp, source, local, &buf[..n]) {
                Ok(r) => Input::Receive(Instant::now(), r),
                Err(_) => continue,
            },
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Input::Timeout(Instant::now())
            }
            Err(e) => break format!("socket: {e}"),
        };
        if let Err(e) = rtc.handle_input(input) {
            break format!("str0m: {e}");
        }
    };
    p.ended.store(true, Ordering::SeqCst);
    why
}

/// An ICE restart from a new socket: PATCHes the new credentials, applies
/// the server's to the answer it has; the PATCH's status.
fn restart_ice(rtc: &mut Rtc, location: &str, answer: &mut String, socket: &mut UdpSocket) -> u16 {
    let mut api = rtc.sdp_api();
    let creds = api.ice_restart(false);
    let Some((_, pending)) = api.apply() else {
        return 599;
    };
    let frag = format!(
        "a=ice-ufrag:{}\r\na=ice-pwd:{}\r\n",
        creds.ufrag, creds.pass
    );
    let r = http::request(
        "PATCH",
        location,
        &[
            ("Content-Type", "application/trickle-ice-sdpfrag"),
            ("If-Match", "*"),
        ],
        Some(frag.as_bytes()),
    )
    .unwrap_or_else(|e| panic!("PATCH {location}: {e}"));
    if r.status != 200 {
        return r.status;
    }
    let reply = r.text();
    let attr = |sdp: &str, name: &str| {
        sdp.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {name} in {sdp}"))
    };
    // The candidates name the ufrag too.
    *answer = answer
        .replace(&attr(answer, "a=ice-ufrag:"), &attr(&reply, "a=ice-ufrag:"))
        .replace(&attr(answer, "a=ice-pwd:"), &attr(&reply, "a=ice-pwd:"));
    let sdp = str0m::change::SdpAnswer::from_sdp_string(answer).expect("the patched answer");
    rtc.sdp_api()
        .accept_answer(pending, sdp)
        .expect("str0m takes the restart's answer");
    *socket = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
    rtc.add_local_candidate(Candidate::host(socket.local_addr().unwrap(), "udp").unwrap());
    r.status
}

/// Whether an H.264 RTP payload starts an IDR frame: a single IDR NAL unit, a
/// STAP-A holding one, or the first FU-A fragment of one.
fn starts_idr(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else { return false };
    match b0 & 0x1f {
        5 => true,
        24 => {
            let mut i = 1;
            while i + 2 < p.len() {
                let len = u16::from_be_bytes([p[i], p[i + 1]]) as usize;
                if p[i + 2] & 0x1f == 5 {
                    return true;
                }
                i += 2 + len;
            }
            false
        }
        28 => p.get(1).is_some_and(|h| h & 0x80 != 0 && h & 0x1f == 5),
        _ => false,
    }
}
