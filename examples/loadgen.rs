//! Load generator: many WHEP viewers built on str0m, against roomcast on loopback.
//!
//! Every viewer has its own UDP socket (or, with `--tcp`, its own ICE-TCP
//! connection: `?transport=tcp`, RFC 4571 framing, as a browser behind a
//! firewall that blocks UDP), completes ICE and DTLS like a browser and
//! receives RTP. "Full" viewers hand every packet to str0m (SRTP decrypt,
//! NACKs, keyframe detection, PLI when no keyframe arrives); "light" viewers
//! count RTP from the clear-text header only, so one client core can watch as
//! many streams as the server can send (decrypting would cost the client as
//! much as encrypting costs the server). Both send RTCP and ICE consent checks.
//!
//! ```text
//! cargo run --release --example loadgen -- --whep http://127.0.0.1:8080/whep/demo \
//!     --steps 50,100,200,400 --step-secs 10 [--full 10] [--server-pid PID] [--metrics URL] \
//!     [--max-cores 1] [--max-loss 1] [--tcp [--stall]]
//! cargo run --release --example loadgen -- --call http://127.0.0.1:8080/whep/s1,...,s8 --step-secs 20
//! ```
//! Prints one JSON line per step: viewers, server CPU and RSS (from /proc when
//! --server-pid is given), µs of server CPU per delivered RTP packet, viewers per
//! core, loss, time to first video p50/p95, and the server's ingest→egress transit
//! p50/p99 and the share of writes above 10 ms (from the /metrics histogram
//! when --metrics is given).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use str0m::change::SdpAnswer;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind};
use str0m::net::{Protocol, Receive, TcpType};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Mutex;

#[derive(Default)]
struct Totals {
    rtp_packets: AtomicU64,
    rtp_bytes: AtomicU64,
    /// Packets the sequence numbers say were sent (growth of the highest
    /// sequence number per SSRC); minus `rtp_packets`, that is the loss before
    /// retransmission.
    expected: AtomicU64,
    retransmissions: AtomicU64,
    connected: AtomicU64,
    failed: AtomicU64,
    rejected: AtomicU64,
}

struct Args {
    whep: Vec<String>,
    steps: Vec<usize>,
    step_secs: u64,
    full: usize,
    server_pid: Option<u32>,
    metrics: Option<String>,
    call: bool,
    /// Cores the server may use (its workers); the ramp stops near this.
    max_cores: f64,
    /// Loss (percent) that ends the ramp; a soak sets it to 100 to keep going.
    max_loss: f64,
    /// Viewers connect over ICE-TCP instead of UDP.
    tcp: bool,
    /// ICE-TCP viewers stop reading once their first video packet arrives
    /// (with a 4 KiB receive buffer): slow or hostile peers (the attack suite).
    stall: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        whep: vec![],
        steps: vec![50],
        step_secs: 10,
        full: 0,
        server_pid: None,
        metrics: None,
        call: false,
        max_cores: 1.0,
        max_loss: 1.0,
        tcp: false,
        stall: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or(format!("{k} needs a value"));
        match k.as_str() {
            "--whep" => a.whep = vec![v()?],
            "--call" => {
                a.whep = v()?.split(',').map(str::to_string).collect();
                a.call = true;
            }
            "--steps" => {
                a.steps = v()?
                    .split(',')
                    .map(|s| s.parse().map_err(|e| format!("--steps: {e}")))
                    .collect::<Result<_, _>>()?
            }
            "--step-secs" => a.step_secs = v()?.parse().map_err(|e| format!("--step-secs: {e}"))?,
            "--full" => a.full = v()?.parse().map_err(|e| format!("--full: {e}"))?,
            "--server-pid" => {
                a.server_pid = Some(v()?.parse().map_err(|e| format!("--server-pid: {e}"))?)
            }
            "--metrics" => a.metrics = Some(v()?),
            "--max-cores" => a.max_cores = v()?.parse().map_err(|e| format!("--max-cores: {e}"))?,
            "--max-loss" => a.max_loss = v()?.parse().map_err(|e| format!("--max-loss: {e}"))?,
            "--tcp" => a.tcp = true,
            "--stall" => a.stall = true,
            "-h" | "--help" => {
                println!("see the comment at the top of examples/loadgen.rs");
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {k}")),
        }
    }
    if a.whep.is_empty() {
        return Err("--whep URL or --call URL1,URL2,… is required".into());
    }
    if a.stall && !a.tcp {
        return Err("--stall is for ICE-TCP viewers (--tcp)".into());
    }
    Ok(a)
}

/// Host, port and path of an http:// URL.
fn split_url(url: &str) -> Result<(String, String), String> {
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    Ok((host.to_string(), format!("/{path}")))
}

/// Minimal HTTP/1.1 request; returns status, Location and body.
async fn http(
    method: &str,
    url: &str,
    ctype: &str,
    body: &str,
) -> Result<(u16, Option<String>, String), String> {
    let (host, path) = split_url(url)?;
    let mut s = TcpStream::connect(&host)
        .await
        .map_err(|e| format!("connect {host}: {e}"))?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no HTTP status")?;
    let location = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("location: ")
                .or_else(|| l.strip_prefix("Location: "))
        })
        .map(str::to_string);
    Ok((status, location, body.to_string()))
}

/// Sequence bookkeeping for one SSRC: loss from gaps in the clear RTP header.
#[derive(Default)]
struct SeqTrack {
    started: bool,
    highest: u64,
}

impl SeqTrack {
    /// Returns how many packets this one makes expected (the growth of the
    /// highest extended sequence number; 0 for a late, reordered packet).
    fn push(&mut self, seq: u16) -> u64 {
        let ext = match self.started {
            false => {
                self.started = true;
                self.highest = u64::from(seq) + 65_536;
                return 1;
            }
            true => {
                // Extend relative to the highest seen, tolerating reordering.
                let base = self.highest & !0xffff;
                let mut ext = base | u64::from(seq);
                if ext + 32_768 < self.highest {
                    ext += 65_536;
                } else if ext > self.highest + 32_768 {
                    ext -= 65_536;
                }
                ext
            }
        };
        let grew = ext.saturating_sub(self.highest);
        self.highest = self.highest.max(ext);
        grew
    }
}

/// A viewer's transport to the server and what it has received.
enum Link {
    /// One UDP socket; the kernel hands over runs of same-sized datagrams in
    /// one buffer (GRO), as a receiving host with offloads would, so the
    /// client costs little.
    Udp {
        sock: UdpSocket,
        state: quinn_udp::UdpSocketState,
        buf: Vec<u8>,
    },
    /// One ICE-TCP connection: RFC 4571 frames, `buf[..filled]` read and not
    /// yet taken (a partial frame stays at its start).
    Tcp {
        stream: TcpStream,
        server: std::net::SocketAddr,
        buf: Vec<u8>,
        filled: usize,
        taken: usize,
    },
}

impl Link {
    /// Waits for what the server sends; returns where from, and the ranges
    /// of `self.received()` holding one datagram each.
    async fn recv(
        &mut self,
        ranges: &mut Vec<std::ops::Range<usize>>,
    ) -> std::io::Result<std::net::SocketAddr> {
        ranges.clear();
        match self {
            Link::Udp { sock, state, buf } => {
                let mut meta = [quinn_udp::RecvMeta::default()];
                loop {
                    sock.readable().await?;
                    let r = sock.try_io(tokio::io::Interest::READABLE, || {
                        let mut bufs = [std::io::IoSliceMut::new(buf)];
                        state.recv((&*sock).into(), &mut bufs, &mut meta)
                    });
                    match r {
                        Ok(_) => break,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Err(e),
                    }
                }
                let stride = meta[0].stride.max(1);
                let len = meta[0].len;
                ranges.extend((0..len).step_by(stride).map(|i| i..(i + stride).min(len)));
                Ok(meta[0].addr)
            }
            Link::Tcp {
                stream,
                server,
                buf,
                filled,
                taken,
            } => {
                // What the last call handed out is gone; keep a partial frame.
                buf.copy_within(*taken..*filled, 0);
                *filled -= *taken;
                *taken = 0;
                let n = stream.read(&mut buf[*filled..]).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                *filled += n;
                while *filled - *taken >= 2 {
                    let len = usize::from(u16::from_be_bytes([buf[*taken], buf[*taken + 1]]));
                    if *filled - *taken < 2 + len {
                        break;
                    }
                    ranges.push(*taken + 2..*taken + 2 + len);
                    *taken += 2 + len;
                }
                Ok(*server)
            }
        }
    }

    fn received(&self) -> &[u8] {
        match self {
            Link::Udp { buf, .. } | Link::Tcp { buf, .. } => buf,
        }
    }

    async fn send(&mut self, t: &str0m::net::Transmit) {
        match self {
            Link::Udp { sock, .. } => {
                let _ = sock.send_to(&t.contents, t.destination).await;
            }
            Link::Tcp { stream, .. } => {
                let mut framed = (t.contents.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&t.contents);
                let _ = stream.write_all(&framed).await;
            }
        }
    }

    fn protocol(&self) -> Protocol {
        match self {
            Link::Udp { .. } => Protocol::Udp,
            Link::Tcp { .. } => Protocol::Tcp,
        }
    }
}

/// The address of the server's passive ICE-TCP candidate in an SDP answer.
fn tcp_candidate(answer: &str) -> Option<std::net::SocketAddr> {
    answer.lines().find_map(|l| {
        let c = l.strip_prefix("a=candidate:")?;
        let f: Vec<&str> = c.split_whitespace().collect();
        (f.get(2)?.eq_ignore_ascii_case("tcp") && c.contains("tcptype passive"))
            .then(|| format!("{}:{}", f.get(4)?, f.get(5)?).parse().ok())?
    })
}

async fn viewer(
    url: String,
    full: bool,
    tcp: bool,
    stall: bool,
    totals: Arc<Totals>,
    stop: Arc<AtomicBool>,
    ttffs: Arc<Mutex<Vec<Duration>>>,
) -> Result<(), String> {
    let mut rtc = Rtc::builder().set_rtp_mode(true).build(Instant::now());
    // UDP: the socket is the local candidate. TCP: the connection is made
    // once the answer names the server's port, and is the candidate then.
    let udp = if tcp {
        None
    } else {
        let sock = UdpSocket::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let local = sock.local_addr().map_err(|e| e.to_string())?;
        rtc.add_local_candidate(Candidate::host(local, "udp").map_err(|e| e.to_string())?);
        Some(sock)
    };
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    let (offer, pending) = api.apply().ok_or("no offer")?;
    let t0 = Instant::now();
    let post_url = if tcp {
        format!("{url}?transport=tcp")
    } else {
        url.clone()
    };
    let (status, location, body) =
        http("POST", &post_url, "application/sdp", &offer.to_sdp_string()).await?;
    if status == 503 {
        totals.rejected.fetch_add(1, Relaxed);
        return Err("rejected (503)".into());
    }
    if status != 201 {
        return Err(format!("WHEP answered {status}: {}", body.trim()));
    }
    let answer = SdpAnswer::from_sdp_string(&body).map_err(|e| e.to_string())?;
    rtc.sdp_api()
        .accept_answer(pending, answer)
        .map_err(|e| e.to_string())?;
    // Payload types from the answer: the first video PT is the media, apt= lines are RTX.
    let video_pt = body
        .lines()
        .find_map(|l| l.strip_prefix("m=video "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|p| p.parse::<u8>().ok());
    let rtx_pts: Vec<u8> = body
        .lines()
        .filter(|l| l.contains(" apt="))
        .filter_map(|l| {
            l.strip_prefix("a=fmtp:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();

    let mut link = match udp {
        Some(sock) => Link::Udp {
            state: quinn_udp::UdpSocketState::new((&sock).into()).map_err(|e| e.to_string())?,
            sock,
            buf: vec![0u8; 65_536],
        },
        None => {
            let server = tcp_candidate(&body).ok_or("the answer has no passive TCP candidate")?;
            let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
            if stall {
                // A small window: the server's side fills at once.
                socket
                    .set_recv_buffer_size(4096)
                    .map_err(|e| e.to_string())?;
            }
            let stream = socket
                .connect(server)
                .await
                .map_err(|e| format!("ICE-TCP connect to {server}: {e}"))?;
            let _ = stream.set_nodelay(true);
            let local = stream.local_addr().map_err(|e| e.to_string())?;
            rtc.add_local_candidate(
                Candidate::builder()
                    .tcp()
                    .host(local)
                    .tcptype(TcpType::Active)
                    .build()
                    .map_err(|e| e.to_string())?,
            );
            Link::Tcp {
                stream,
                server,
                buf: vec![0u8; 65_536],
                filled: 0,
                taken: 0,
            }
        }
    };
    let local = match &link {
        Link::Udp { sock, .. } => sock.local_addr(),
        Link::Tcp { stream, .. } => stream.local_addr(),
    }
    .map_err(|e| e.to_string())?;
    let mut ranges = Vec::new();
    let mut seqs: HashMap<u32, SeqTrack> = HashMap::new();
    let mut first_video = false;
    let mut connected = false;
    let mut keyframe_seen = false;
    let mut last_pli = Instant::now();
    let mut next_timeout;
    loop {
        // Drain str0m's output.
        loop {
            match rtc.poll_output().map_err(|e| e.to_string())? {
                Output::Timeout(t) => {
                    next_timeout = t;
                    break;
                }
                Output::Transmit(t) => link.send(&t).await,
                Output::Event(Event::Connected) => {
                    connected = true;
                    totals.connected.fetch_add(1, Relaxed);
                }
                Output::Event(Event::RtpPacket(p)) => {
                    if !keyframe_seen && is_h264_keyframe(&p.payload) {
                        keyframe_seen = true;
                    }
                }
                Output::Event(_) => {}
            }
        }
        if stop.load(Relaxed) {
            break;
        }
        if stall && first_video {
            // Connected and sent media: from now on nothing is read.
            while !stop.load(Relaxed) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            break;
        }
        // A browser asks for a keyframe when none came.
        if full && connected && !keyframe_seen && last_pli.elapsed() > Duration::from_millis(1500) {
            last_pli = Instant::now();
            let mut api = rtc.direct_api();
            let ssrcs: Vec<_> = seqs.keys().copied().collect();
            for ssrc in ssrcs {
                if let Some(rx) = api.stream_rx(&ssrc.into()) {
                    rx.request_keyframe(KeyframeRequestKind::Pli);
                }
            }
        }
        let wait = next_timeout
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(200));
        let from = match tokio::time::timeout(wait, link.recv(&mut ranges)).await {
            Err(_) => {
                rtc.handle_input(Input::Timeout(Instant::now()))
                    .map_err(|e| e.to_string())?;
                continue;
            }
            Ok(Err(e)) => return Err(e.to_string()),
            Ok(Ok(from)) => from,
        };
        let proto = link.protocol();
        for range in ranges.iter().cloned() {
            let data = &link.received()[range];
            let n = data.len();
            let is_rtp = n >= 12 && data[0] >> 6 == 2 && !(200..=207).contains(&data[1]);
            if is_rtp {
                let pt = data[1] & 0x7f;
                let seq = u16::from_be_bytes([data[2], data[3]]);
                let ssrc = u32::from_be_bytes([data[8], data[9], data[10], data[11]]);
                if rtx_pts.contains(&pt) {
                    totals.retransmissions.fetch_add(1, Relaxed);
                } else {
                    let grew = seqs.entry(ssrc).or_default().push(seq);
                    totals.expected.fetch_add(grew, Relaxed);
                    totals.rtp_packets.fetch_add(1, Relaxed);
                    totals.rtp_bytes.fetch_add(n as u64, Relaxed);
                    if !first_video && Some(pt) == video_pt {
                        first_video = true;
                        ttffs.lock().await.push(t0.elapsed());
                    }
                }
                if !full {
                    continue;
                }
            }
            if let Ok(r) = Receive::new(proto, from, local, data) {
                let _ = rtc.handle_input(Input::Receive(Instant::now(), r));
            }
        }
    }
    if let Some(loc) = location {
        let base = url.split("/whep/").next().unwrap_or("");
        let _ = http("DELETE", &format!("{base}{loc}"), "text/plain", "").await;
    }
    Ok(())
}

/// Whether an H.264 RTP payload starts or contains an IDR slice.
fn is_h264_keyframe(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else { return false };
    match b0 & 0x1f {
        5 => true,
        24 => {
            let mut i = 1;
            while i + 2 < p.len() {
                let len = u16::from_be_bytes([p[i], p[i + 1]]) as usize;
                if p.get(i + 2).is_some_and(|h| h & 0x1f == 5) {
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

/// utime+stime of a process in seconds, and its RSS in KiB.
fn proc_usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    let hz = 100.0; // CLK_TCK on Linux
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((ticks / hz, rss))
}

/// The server's transit histogram: (upper bound in s, cumulative count).
async fn transit_histogram(url: &str) -> Vec<(f64, u64)> {
    let Ok((200, _, body)) = http("GET", url, "text/plain", "").await else {
        return vec![];
    };
    body.lines()
        .filter_map(|l| l.strip_prefix("roomcast_transit_seconds_bucket{le=\""))
        .filter_map(|l| {
            let (le, v) = l.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, v.trim().parse().ok()?))
        })
        .collect()
}

/// The window's histogram: `after` less `before`, still cumulative.
fn histogram_delta(before: &[(f64, u64)], after: &[(f64, u64)]) -> Vec<(f64, u64)> {
    after
        .iter()
        .map(|(le, v)| {
            (
                *le,
                v - before.iter().find(|(l, _)| l == le).map_or(0, |x| x.1),
            )
        })
        .collect()
}

/// The upper bound of the bucket that holds quantile `q`.
fn histogram_quantile(before: &[(f64, u64)], after: &[(f64, u64)], q: f64) -> Option<f64> {
    let delta = histogram_delta(before, after);
    let total = delta.last()?.1;
    if total == 0 {
        return None;
    }
    let target = (q * total as f64).ceil() as u64;
    delta.iter().find(|(_, v)| *v >= target).map(|(le, _)| *le)
}

/// The percentage of the window's observations above `bound` (a bucket
/// bound): finer than a quantile's bucket, e.g. whether p99 ≤ 10 ms holds
/// with room or barely.
fn histogram_percent_above(before: &[(f64, u64)], after: &[(f64, u64)], bound: f64) -> Option<f64> {
    let delta = histogram_delta(before, after);
    let total = delta.last()?.1;
    let within = delta.iter().find(|(le, _)| *le >= bound)?.1;
    (total > 0).then(|| ((total - within) as f64 * 100.0 / total as f64 * 100.0).round() / 100.0)
}

fn percentile(sorted: &[Duration], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[i].as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(2);
        }
    };
    str0m::crypto::from_feature_flags().install_process_default();
    let totals = Arc::new(Totals::default());
    let stop = Arc::new(AtomicBool::new(false));
    let ttffs: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let mut tasks = Vec::new();
    let mut running = 0usize;
    // Call mode: each URL is watched by every other participant once per step unit.
    let steps = if args.call {
        vec![args.whep.len()]
    } else {
        args.steps.clone()
    };
    for (step_no, &target) in steps.iter().enumerate() {
        let step_ttff_from = ttffs.lock().await.len();
        let urls: Vec<String> = if args.call {
            // M publishers, each watched by the other M-1 participants.
            let m = args.whep.len();
            (0..m)
                .flat_map(|i| (0..m).filter(move |j| *j != i).map(move |_| i))
                .map(|i| args.whep[i].clone())
                .collect()
        } else {
            std::iter::repeat_n(args.whep[0].clone(), target.saturating_sub(running)).collect()
        };
        for url in urls {
            let full = running < args.full;
            running += 1;
            let (totals, stop, ttffs) = (totals.clone(), stop.clone(), ttffs.clone());
            let (tcp, stall) = (args.tcp, args.stall);
            tasks.push(tokio::spawn(async move {
                match viewer(url, full, tcp, stall, totals.clone(), stop, ttffs).await {
                    Ok(()) => {}
                    Err(e) => {
                        totals.failed.fetch_add(1, Relaxed);
                        eprintln!("viewer failed: {e}");
                    }
                }
            }));
            // Spread joins a little so the step measures steady state, not a thundering herd.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Let the joins settle, then measure over a window.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let cpu0 = args.server_pid.and_then(proc_usage);
        let hist0 = match &args.metrics {
            Some(u) => transit_histogram(u).await,
            None => vec![],
        };
        let (p0, e0) = (
            totals.rtp_packets.load(Relaxed),
            totals.expected.load(Relaxed),
        );
        let w0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(args.step_secs)).await;
        let wall = w0.elapsed().as_secs_f64();
        let packets = totals.rtp_packets.load(Relaxed) - p0;
        let expected = totals.expected.load(Relaxed) - e0;
        let loss = if expected > 0 {
            expected.saturating_sub(packets) as f64 * 100.0 / expected as f64
        } else {
            0.0
        };
        let cpu1 = args.server_pid.and_then(proc_usage);
        let hist1 = match &args.metrics {
            Some(u) => transit_histogram(u).await,
            None => vec![],
        };
        let mut step_ttffs: Vec<Duration> = ttffs.lock().await[step_ttff_from..].to_vec();
        step_ttffs.sort();
        let (cpu_s, rss_kb) = match (cpu0, cpu1) {
            (Some((c0, _)), Some((c1, rss))) => (Some(c1 - c0), Some(rss)),
            _ => (None, None),
        };
        let cores = cpu_s.map(|c| c / wall);
        let line = serde_json::json!({
            "step": step_no,
            "viewers": running,
            "connected": totals.connected.load(Relaxed),
            "failed": totals.failed.load(Relaxed),
            "rejected": totals.rejected.load(Relaxed),
            "window_s": (wall * 10.0).round() / 10.0,
            "rtp_packets_per_s": (packets as f64 / wall).round(),
            "loss_percent": (loss * 100.0).round() / 100.0,
            "server_cpu_cores": cores.map(|c| (c * 1000.0).round() / 1000.0),
            "server_rss_mb": rss_kb.map(|r| r / 1024),
            "server_rss_kb_per_viewer": rss_kb.map(|r| r / running.max(1) as u64),
            "us_cpu_per_packet": cpu_s.map(|c| if packets > 0 { (c * 1e6 / packets as f64 * 100.0).round() / 100.0 } else { 0.0 }),
            "viewers_per_core": cores.map(|c| if c > 0.0 { (running as f64 / c).round() } else { 0.0 }),
            "ttff_ms_p50": percentile(&step_ttffs, 0.5),
            "ttff_ms_p95": percentile(&step_ttffs, 0.95),
            "transit_ms_p50": histogram_quantile(&hist0, &hist1, 0.5).map(|s| s * 1000.0),
            "transit_ms_p99": histogram_quantile(&hist0, &hist1, 0.99).map(|s| s * 1000.0),
            "transit_over_10ms_percent": histogram_percent_above(&hist0, &hist1, 0.010),
        });
        println!("{line}");
        // The ramp ends when viewers lose packets or the server runs out of CPU.
        let saturated = cores.is_some_and(|c| c >= args.max_cores * 0.95);
        if loss > args.max_loss || saturated {
            break;
        }
    }
    stop.store(true, Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let expected = totals.expected.load(Relaxed);
    let lost = expected.saturating_sub(totals.rtp_packets.load(Relaxed));
    println!(
        "{}",
        serde_json::json!({
            "summary": "loadgen",
            "viewers": running,
            "rtp_packets": totals.rtp_packets.load(Relaxed),
            "loss_percent": if expected > 0 { (lost as f64 * 10000.0 / expected as f64).round() / 100.0 } else { 0.0 },
            "retransmissions": totals.retransmissions.load(Relaxed),
            "failed": totals.failed.load(Relaxed),
        })
    );
}
