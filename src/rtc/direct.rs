//! A connected viewer's media sent without str0m (`[webrtc] direct_send`):
//! RTP packets are written and SRTP-protected straight into the shard's
//! send batch, sender reports go out over our own SRTCP, and NACKs are
//! answered from the frames themselves. str0m keeps ICE, DTLS, the RTCP the
//! viewer sends (decrypted, then handed here as raw packets), keyframe
//! requests and session liveness.
//!
//! Why: str0m's per-packet path (`write_rtp` → its send queue and pacer →
//! `poll_output` → a fresh buffer per SRTP packet → a copy into the batch)
//! and its per-viewer RTX cache of encrypted packets were most of a viewer's
//! CPU and memory (README → Measurements → Fan-out).
//!
//! The retransmission history is the stream's frames (`Arc<Frame>`, shared
//! by every viewer, plaintext): per viewer there is only a small ring of
//! which sequence numbers carried which frame's packets.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use str0m::net::{Protocol, Transmit};
use str0m::rtp::rtcp::Rtcp;

use super::resend_budget::ResendBudget;
use super::srtp::{MasterKey, SrtpTx};
use crate::hub::Frame;

/// Sender reports per track this often (str0m's default for video; audio
/// gets the same so lip sync settles as fast).
const SR_INTERVAL: Duration = Duration::from_secs(1);
/// Our SRTCP indexes start here: str0m's context, with the same keys,
/// counts up from 0 with its (dropped) sender reports, about one a second:
/// decades away from ours.
const FIRST_SRTCP_INDEX: u32 = 1 << 30;
/// NACKable history per viewer, in packets of its video track: ~1 s of a
/// 10 Mbit/s stream, or a whole replayed GOP of a few seconds at 2.5.
const HISTORY_PACKETS: u64 = 1024;
/// Frames (or parts of frames) the history may index at most.
const HISTORY_ENTRIES: usize = 512;
/// While a replay runs the history holds twice its packets (its GOP and the
/// live frames of as long again), within these bounds. An entry is ~40 bytes
/// per viewer (the frames are the hub's, shared by every viewer): 4096 are
/// 160 KiB at most; 16384 packets are ~20 MB of frames pinned at most,
/// shared, for a GOP bigger than any the hub keeps by default.
const REPLAY_HISTORY_ENTRIES: usize = 4096;
const REPLAY_HISTORY_PACKETS: u64 = 16 * 1024;
/// Largest RTCP packet we build (SR + SDES with a 255-byte CNAME).
const MAX_RTCP: usize = 28 + 12 + 256 + 4;

/// Where the viewer's datagrams go: the pair str0m nominated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub proto: Protocol,
    pub source: SocketAddr,
    pub destination: SocketAddr,
}

/// A sink for the viewer's directly written datagrams.
pub trait DirectOut {
    /// Writes one datagram of `len` bytes with `write` (which fills all of
    /// it) for `route`; false when the path is full (an ICE-TCP queue).
    fn datagram(&mut self, route: &Route, len: usize, write: &mut dyn FnMut(&mut [u8])) -> bool;
}

/// One of the viewer's tracks as sent directly.
pub struct TrackTx {
    ssrc: u32,
    pt: u8,
    clock_rate: u32,
    /// The RTX SSRC and payload type, if negotiated (video).
    rtx: Option<(u32, u8)>,
    next_rtx_seq: u64,
    /// The receiver reported on this SSRC: it has bound it to its mid, so
    /// packets no longer carry the mid extension.
    acked: bool,
    /// The latest live packet's RTP time and its frame's wallclock.
    last: Option<(u32, Instant)>,
    packets: u32,
    octets: u32,
    next_sr: Option<Instant>,
}

impl TrackTx {
    pub fn new(ssrc: u32, pt: u8, clock_rate: u32, rtx: Option<(u32, u8)>) -> TrackTx {
        TrackTx {
            ssrc,
            pt,
            clock_rate,
            rtx,
            next_rtx_seq: u64::from(rand::random::<u16>() >> 1),
            acked: false,
            last: None,
            packets: 0,
            octets: 0,
            next_sr: None,
        }
    }
}

impl TrackTx {
    #[cfg(test)]
    pub fn start_rtx_seq_at(&mut self, seq: u64) {
        self.next_rtx_seq = seq;
    }
}

/// What is to be written at the next flush (the viewer queues during
/// `on_frame` and its replay, the shard drives it right after).
enum Job {
    Media {
        video: bool,
        frame: Arc<Frame>,
        first: usize,
        count: usize,
        first_seq: u64,
        rtp_time: u32,
        /// A live frame (its RTP time and wallclock anchor the reports).
        live: bool,
    },
    Resend {
        frame: Arc<Frame>,
        packet: usize,
        seq: u64,
        rtp_time: u32,
    },
}

/// Packets of a frame to send: `first..first + count`, numbered from
/// `first_seq`, with `rtp_time`; `live`: not a replayed GOP frame (its time
/// and wallclock anchor the sender reports).
pub struct Span {
    pub first: usize,
    pub count: usize,
    pub first_seq: u64,
    pub rtp_time: u32,
    pub live: bool,
}

/// Which sequence numbers carried which packets of which frame.
struct Sent {
    first_seq: u64,
    frame: Arc<Frame>,
    first: usize,
    count: usize,
    rtp_time: u32,
}

/// A viewer's direct sender.
pub struct DirectTx {
    srtp: SrtpTx,
    pub route: Option<Route>,
    pub video: Option<TrackTx>,
    pub audio: Option<TrackTx>,
    /// The mid header extension's id and each track's mid.
    mid_ext: Option<u8>,
    video_mid: Box<[u8]>,
    audio_mid: Box<[u8]>,
    cname: Box<[u8]>,
    jobs: VecDeque<Job>,
    history: VecDeque<Sent>,
    /// The history's bounds now: the live ones, or a replay's.
    max_history_packets: u64,
    max_history_entries: usize,
    /// The next video sequence number (the viewer's, mirrored on write).
    video_next_seq: u64,
    /// What NACKs may have resent: a share of the media sent.
    resend_budget: ResendBudget,
    /// Packets the viewer asked for (NACKed), answered or not.
    pub nacked: u64,
    /// Maps `Instant`s to wall-clock time for the reports' NTP field: an
    /// instant and its wall-clock time, read by the driver.
    clock: (Instant, SystemTime),
}

/// Tracks' mids, the mid extension and CNAME of a session.
pub struct Names<'a> {
    pub mid_ext: Option<u8>,
    pub video_mid: &'a str,
    pub audio_mid: &'a str,
    pub cname: &'a str,
}

impl DirectTx {
    /// `clock`: an instant and its wall-clock time (the reports' NTP
    /// times are reckoned from it).
    pub fn new(key: &MasterKey, names: Names, clock: (Instant, SystemTime)) -> DirectTx {
        let bytes = |s: &str| Box::<[u8]>::from(&s.as_bytes()[..s.len().min(16)]);
        DirectTx {
            srtp: SrtpTx::new(key, FIRST_SRTCP_INDEX),
            route: None,
            video: None,
            audio: None,
            mid_ext: names
                .mid_ext
                .filter(|id| (1..=14).contains(id))
                .filter(|_| !names.video_mid.is_empty() || !names.audio_mid.is_empty()),
            video_mid: bytes(names.video_mid),
            audio_mid: bytes(names.audio_mid),
            cname: Box::from(&names.cname.as_bytes()[..names.cname.len().min(255)]),
            jobs: VecDeque::new(),
            history: VecDeque::new(),
            max_history_packets: HISTORY_PACKETS,
            max_history_entries: HISTORY_ENTRIES,
            video_next_seq: 0,
            resend_budget: ResendBudget::default(),
            nacked: 0,
            clock,
        }
    }

    /// Queues packets `first..first + count` of `frame`, the first with
    /// sequence number `first_seq`.
    pub fn queue(&mut self, video: bool, frame: &Arc<Frame>, span: Span) {
        let Span {
            first,
            count,
            first_seq,
            rtp_time,
            live,
        } = span;
        if count == 0 {
            return;
        }
        if video {
            self.video_next_seq = first_seq + count as u64;
            match self.history.back_mut() {
                // The next packets of the same frame (a paced replay sends a
                // frame in parts): one entry.
                Some(s)
                    if Arc::ptr_eq(&s.frame, frame)
                        && s.first + s.count == first
                        && s.first_seq + s.count as u64 == first_seq
                        && s.rtp_time == rtp_time =>
                {
                    s.count += count;
                }
                _ => self.history.push_back(Sent {
                    first_seq,
                    frame: frame.clone(),
                    first,
                    count,
                    rtp_time,
                }),
            }
            self.trim_history();
        }
        self.jobs.push_back(Job::Media {
            video,
            frame: frame.clone(),
            first,
            count,
            first_seq,
            rtp_time,
            live,
        });
    }

    /// Drops what is beyond the history's bounds, oldest first.
    fn trim_history(&mut self) {
        while self.history.len() > self.max_history_entries
            || self.history.front().is_some_and(|s| {
                self.video_next_seq - (s.first_seq + s.count as u64) > self.max_history_packets
            })
        {
            self.history.pop_front();
        }
    }

    /// A replay of `packets` video packets in `frames` frames begins: they
    /// and as many live ones stay NACKable (bounded) until [`Self::live_history`].
    pub fn replay_history(&mut self, packets: usize, frames: usize) {
        self.max_history_packets = (2 * packets as u64)
            .clamp(HISTORY_PACKETS, REPLAY_HISTORY_PACKETS)
            .max(self.max_history_packets);
        self.max_history_entries = (2 * frames)
            .clamp(HISTORY_ENTRIES, REPLAY_HISTORY_ENTRIES)
            .max(self.max_history_entries);
    }

    /// A live keyframe went out: what came before needs no repair, the
    /// history goes back to its live bounds.
    pub fn live_history(&mut self) {
        self.max_history_packets = HISTORY_PACKETS;
        self.max_history_entries = HISTORY_ENTRIES;
        self.trim_history();
    }

    /// How many video packets back (from the next) a NACK can be answered:
    /// what the history holds now.
    pub fn history_packets(&self) -> usize {
        self.history
            .front()
            .map_or(0, |s| (self.video_next_seq - s.first_seq) as usize)
    }

    /// Feedback from the viewer (decrypted by str0m): NACKs are answered,
    /// receiver reports end the mid extension for their SSRC.
    pub fn on_rtcp(&mut self, rtcp: &Rtcp, now: Instant) {
        match rtcp {
            Rtcp::Nack(n) => {
                let Some(v) = &self.video else {
                    return;
                };
                if *n.ssrc != v.ssrc {
                    return;
                }
                for e in &n.reports {
                    for bit in 0..17u16 {
                        if bit > 0 && e.blp & (1 << (bit - 1)) == 0 {
                            continue;
                        }
                        let seq16 = e.pid.wrapping_add(bit);
                        self.nacked += 1;
                        self.resend(seq16, now);
                    }
                }
            }
            Rtcp::ReceiverReport(rr) => {
                for r in &rr.reports {
                    for t in [self.video.as_mut(), self.audio.as_mut()]
                        .into_iter()
                        .flatten()
                    {
                        if *r.ssrc == t.ssrc {
                            t.acked = true;
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// Queues the retransmission of the video packet whose sequence number
    /// ends in `seq16`, if the history has it.
    fn resend(&mut self, seq16: u16, now: Instant) {
        // Without an RTX stream a resend would go out under the packet's own
        // (SSRC, index) with another header (the mid extension is dropped once
        // the viewer reports): two plaintexts under one SRTP nonce, which with
        // AES-GCM gives away the authentication key. str0m does the same: no
        // RTX payload type, nothing nackable.
        if self.video.as_ref().is_none_or(|v| v.rtx.is_none()) {
            return;
        }
        // The newest sequence number at or below the next with these low bits.
        let next = self.video_next_seq;
        let back = (next as u16).wrapping_sub(seq16).wrapping_sub(1);
        let Some(seq) = next.checked_sub(u64::from(back) + 1) else {
            return;
        };
        let i = self.history.partition_point(|s| s.first_seq <= seq);
        let Some(s) = i.checked_sub(1).and_then(|i| self.history.get(i)) else {
            return;
        };
        if seq >= s.first_seq + s.count as u64 {
            return;
        }
        let packet = s.first + (seq - s.first_seq) as usize;
        let bytes = s.frame.payloads.get(packet).map_or(0, |p| p.len());
        if !self.resend_budget.take(now, bytes) {
            return;
        }
        self.jobs.push_back(Job::Resend {
            frame: s.frame.clone(),
            packet,
            seq,
            rtp_time: s.rtp_time,
        });
    }

    /// When the next sender report is due.
    pub fn next_timeout(&self) -> Option<Instant> {
        [&self.video, &self.audio]
            .into_iter()
            .flatten()
            .filter_map(|t| t.next_sr)
            .min()
    }

    /// Writes what is queued; false if the path refused a datagram (the
    /// rest of that frame is dropped: the viewer is a laggard).
    pub fn flush(&mut self, now: Instant, out: &mut impl DirectOut) -> bool {
        let Some(route) = self.route else {
            // Not yet known (str0m has not sent since connecting): nothing
            // can be sent, as str0m would hold it too.
            self.jobs.clear();
            return true;
        };
        let mut ok = true;
        while let Some(job) = self.jobs.pop_front() {
            ok &= self.write_job(job, now, &route, out);
        }
        ok
    }

    fn write_job(
        &mut self,
        job: Job,
        now: Instant,
        route: &Route,
        out: &mut impl DirectOut,
    ) -> bool {
        match job {
            Job::Media {
                video,
                frame,
                first,
                count,
                first_seq,
                rtp_time,
                live,
            } => {
                let Some(track) = (if video {
                    self.video.as_mut()
                } else {
                    self.audio.as_mut()
                }) else {
                    return true;
                };
                let mid: &[u8] = if video {
                    &self.video_mid
                } else {
                    &self.audio_mid
                };
                let mid_ext = self.mid_ext.filter(|_| !track.acked && !mid.is_empty());
                let last = frame.payloads.len() - 1;
                for (k, payload) in frame.payloads[first..first + count].iter().enumerate() {
                    let i = first + k;
                    let p = Packet {
                        pt: track.pt,
                        ssrc: track.ssrc,
                        seq: first_seq + k as u64,
                        rtp_time,
                        marker: video && i == last,
                        mid: mid_ext.map(|id| (id, mid)),
                        osn: None,
                        payload,
                    };
                    if !write_packet(&self.srtp, &p, route, out) {
                        return false;
                    }
                    track.packets = track.packets.wrapping_add(1);
                    track.octets = track.octets.wrapping_add(payload.len() as u32);
                    if video {
                        self.resend_budget.sent(now, payload.len());
                    }
                }
                if live {
                    track.last = Some((rtp_time, frame.wallclock));
                    if track.next_sr.is_none() {
                        track.next_sr = Some(frame.wallclock.max(self.clock.0));
                    }
                }
                true
            }
            Job::Resend {
                frame,
                packet,
                seq,
                rtp_time,
            } => {
                let Some(track) = self.video.as_mut() else {
                    return true;
                };
                let Some(payload) = frame.payloads.get(packet) else {
                    return true;
                };
                let marker = packet + 1 == frame.payloads.len();
                // RFC 4588: the RTX stream, the original sequence number
                // first; each resend has an index of its own (never the
                // original's: see `resend`).
                let Some((ssrc, pt)) = track.rtx else {
                    return true;
                };
                let rtx_seq = track.next_rtx_seq;
                track.next_rtx_seq += 1;
                let p = Packet {
                    pt,
                    ssrc,
                    seq: rtx_seq,
                    rtp_time,
                    marker,
                    mid: self
                        .mid_ext
                        .filter(|_| !self.video_mid.is_empty())
                        .map(|id| (id, &self.video_mid[..])),
                    osn: Some(seq as u16),
                    payload,
                };
                write_packet(&self.srtp, &p, route, out)
            }
        }
    }

    /// Sends the sender reports that are due (with the CNAME, as str0m's).
    pub fn handle_timeout(&mut self, now: Instant, out: &mut impl DirectOut) {
        let Some(route) = self.route else {
            return;
        };
        for video in [true, false] {
            let track = if video {
                &mut self.video
            } else {
                &mut self.audio
            };
            let Some(t) = track.as_mut() else {
                continue;
            };
            if t.next_sr.is_none_or(|at| at > now) {
                continue;
            }
            t.next_sr = Some(now + SR_INTERVAL);
            let Some((rtp, wallclock)) = t.last else {
                continue;
            };
            // The RTP time now, from the latest live frame's.
            let since = now.saturating_duration_since(wallclock);
            let ticks = since.as_micros() as u64 * u64::from(t.clock_rate) / 1_000_000;
            let rtp_now = rtp.wrapping_add(ticks as u32);
            let wall = self.clock.1 + now.saturating_duration_since(self.clock.0);
            let ntp = ntp_time(wall);
            let mut buf = [0u8; MAX_RTCP];
            let len = sender_report(&mut buf, t, ntp, rtp_now, &self.cname);
            let total = len + self.srtp.profile().rtcp_overhead();
            let srtp = &mut self.srtp;
            out.datagram(&route, total, &mut |b| {
                b[..len].copy_from_slice(&buf[..len]);
                srtp.protect_rtcp(b);
            });
        }
    }
}

/// NTP time (RFC 3550 §4): seconds since 1900 and the fraction.
fn ntp_time(t: SystemTime) -> u64 {
    const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() + NTP_UNIX_OFFSET;
    let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// An SR (RFC 3550 §6.4.1, no report blocks) and an SDES with the CNAME
/// (§6.5), compound, into `buf`; returns its length.
fn sender_report(buf: &mut [u8], t: &TrackTx, ntp: u64, rtp: u32, cname: &[u8]) -> usize {
    buf[0] = 0x80;
    buf[1] = 200;
    buf[2..4].copy_from_slice(&6u16.to_be_bytes());
    buf[4..8].copy_from_slice(&t.ssrc.to_be_bytes());
    buf[8..16].copy_from_slice(&ntp.to_be_bytes());
    buf[16..20].copy_from_slice(&rtp.to_be_bytes());
    buf[20..24].copy_from_slice(&t.packets.to_be_bytes());
    buf[24..28].copy_from_slice(&t.octets.to_be_bytes());
    // SDES: one chunk, CNAME item, then at least one zero byte to a word.
    let s = 28;
    buf[s] = 0x81;
    buf[s + 1] = 202;
    buf[s + 4..s + 8].copy_from_slice(&t.ssrc.to_be_bytes());
    buf[s + 8] = 1;
    buf[s + 9] = cname.len() as u8;
    buf[s + 10..s + 10 + cname.len()].copy_from_slice(cname);
    let items = 2 + cname.len();
    let chunk = 4 + (items + 4) / 4 * 4;
    buf[s + 10 + cname.len()..s + 4 + chunk].fill(0);
    let words = (4 + chunk) / 4 - 1;
    buf[s + 2..s + 4].copy_from_slice(&(words as u16).to_be_bytes());
    s + 4 + chunk
}

/// An RTP packet to write.
struct Packet<'a> {
    pt: u8,
    ssrc: u32,
    /// Extended: the low 16 bits go on the wire, the rest is the ROC.
    seq: u64,
    rtp_time: u32,
    marker: bool,
    /// The mid extension (id, value), one-byte form (RFC 8285).
    mid: Option<(u8, &'a [u8])>,
    /// RTX: the original sequence number, before the payload.
    osn: Option<u16>,
    payload: &'a [u8],
}

fn write_packet(srtp: &SrtpTx, p: &Packet, route: &Route, out: &mut impl DirectOut) -> bool {
    let ext_len = p.mid.map_or(0, |(_, m)| 4 + (1 + m.len()).div_ceil(4) * 4);
    let header_len = 12 + ext_len;
    let osn_len = if p.osn.is_some() { 2 } else { 0 };
    let rtp_len = header_len + osn_len + p.payload.len();
    let len = rtp_len + srtp.profile().rtp_overhead();
    out.datagram(route, len, &mut |b| {
        b[0] = 0x80 | if ext_len > 0 { 0x10 } else { 0 };
        b[1] = p.pt | if p.marker { 0x80 } else { 0 };
        b[2..4].copy_from_slice(&(p.seq as u16).to_be_bytes());
        b[4..8].copy_from_slice(&p.rtp_time.to_be_bytes());
        b[8..12].copy_from_slice(&p.ssrc.to_be_bytes());
        if let Some((id, m)) = p.mid {
            b[12..14].copy_from_slice(&[0xbe, 0xde]);
            b[14..16].copy_from_slice(&(((ext_len - 4) / 4) as u16).to_be_bytes());
            b[16] = (id << 4) | (m.len() as u8 - 1);
            b[17..17 + m.len()].copy_from_slice(m);
            b[17 + m.len()..header_len].fill(0);
        }
        if let Some(osn) = p.osn {
            b[header_len..header_len + 2].copy_from_slice(&osn.to_be_bytes());
        }
        // The payload is encrypted from the shared frame into the batch.
        srtp.protect_rtp(b, header_len, osn_len, p.payload, (p.seq >> 16) as u32);
    })
}

/// A `Transmit` for outboxes that take str0m's datagrams (ICE-TCP, tests).
pub fn transmit(route: &Route, len: usize, write: &mut dyn FnMut(&mut [u8])) -> Transmit {
    let mut v = vec![0u8; len];
    write(&mut v);
    Transmit {
        proto: route.proto,
        source: route.source,
        destination: route.destination,
        contents: v.into(),
    }
}

/// str0m's settings for a viewer that may go direct: the viewer's RTCP is
/// handed over as raw packets (NACKs and receiver reports; str0m has no
/// events for them). str0m cannot turn raw packets on later, so a keyed
/// session that stays on str0m's path (rare: a profile we do not send) also
/// gets a copy of each RTP packet it sends as an event (`Viewer::not_direct`
/// logs it). str0m's sender reports keep their default interval: on its own
/// path they give lip sync; on the direct path they are dropped
/// (`is_str0m_sender_report`) but tell where the nominated pair points now,
/// every second with video. Its stats are a backstop (an audio-only session
/// reports every 5 s).
pub fn configure(config: str0m::RtcConfig) -> str0m::RtcConfig {
    config
        .enable_raw_packets(true)
        .set_stats_interval(Some(ROUTE_CHECK))
}

/// How often str0m's stats tell us the nominated pair (ICE restarts and
/// NAT rebinding move it).
const ROUTE_CHECK: Duration = Duration::from_secs(2);

/// An SRTCP packet that begins with a sender report: str0m's, which knows
/// nothing of the media we sent.
pub fn is_str0m_sender_report(datagram: &[u8]) -> bool {
    datagram.len() > 8 && (128..192).contains(&datagram[0]) && datagram[1] == 200
}

/// str0m's datagrams after ICE (DTLS, SRTCP; not STUN, RFC 7983) go to the
/// nominated pair.
pub fn follows_nominated_pair(datagram: &[u8]) -> bool {
    datagram.first().is_some_and(|b| *b >= 20)
}

#[cfg(test)]
mod tests {
    use super::super::srtp::Profile;
    use super::*;
    use crate::hub::Kind;

    fn tx() -> DirectTx {
        let profile = Profile::AeadAes128Gcm;
        let mat = vec![7u8; profile.keying_material_len()];
        let key = MasterKey::from_keying_material(profile, &mat, false).unwrap();
        let names = Names {
            mid_ext: None,
            video_mid: "0",
            audio_mid: "1",
            cname: "c",
        };
        let mut d = DirectTx::new(&key, names, (Instant::now(), SystemTime::now()));
        d.video = Some(TrackTx::new(1, 96, 90_000, Some((2, 97))));
        d
    }

    fn frame(packets: usize) -> Arc<Frame> {
        let now = Instant::now();
        Arc::new(Frame {
            kind: Kind::Video,
            index: 0,
            kind_index: 0,
            rtp_time: 0,
            wallclock: now,
            received: now,
            keyframe: false,
            publisher: 1,
            payloads: (0..packets).map(|_| Arc::from(vec![0u8; 100])).collect(),
        })
    }

    fn span(first: usize, count: usize, first_seq: u64) -> Span {
        Span {
            first,
            count,
            first_seq,
            rtp_time: 0,
            live: false,
        }
    }

    fn resends(d: &DirectTx) -> usize {
        d.jobs
            .iter()
            .filter(|j| matches!(j, Job::Resend { .. }))
            .count()
    }

    /// A GOP of 1500 packets sent unpaced: its keyframe is still NACKable
    /// once the rest went out, and no longer after the next live keyframe.
    #[test]
    fn a_replay_bigger_than_the_live_history_stays_nackable() {
        for replay in [false, true] {
            let mut d = tx();
            if replay {
                d.replay_history(1500, 5);
            }
            for i in 0..5 {
                d.queue(true, &frame(300), span(0, 300, 100 + i * 300));
            }
            d.resend(101, Instant::now());
            assert_eq!(resends(&d), usize::from(replay), "replay bounds: {replay}");
            assert_eq!(d.history_packets(), if replay { 1500 } else { 1200 });
        }
        let mut d = tx();
        d.replay_history(1500, 5);
        for i in 0..5 {
            d.queue(true, &frame(300), span(0, 300, 100 + i * 300));
        }
        d.live_history();
        assert!(d.history_packets() <= 1024 + 300);
        d.resend(101, Instant::now());
        assert_eq!(resends(&d), 0);
    }

    /// The history says what it holds: 512 one-packet frames, not the
    /// 1024 packets it could hold of bigger ones.
    #[test]
    fn the_history_reports_what_it_holds() {
        let mut d = tx();
        assert_eq!(d.history_packets(), 0);
        for i in 0..600 {
            d.queue(true, &frame(1), span(0, 1, i));
        }
        assert_eq!(d.history_packets(), 512);
        // A frame sent in parts (a paced replay) is one entry.
        let f = frame(30);
        for part in 0..3 {
            d.queue(true, &f, span(part * 10, 10, 600 + part as u64 * 10));
        }
        assert_eq!(d.history.back().map(|s| s.count), Some(30));
        assert_eq!(d.history_packets(), 511 + 30);
    }
}
