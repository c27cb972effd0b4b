//! A lossy UDP relay for the network-impairment test: this sandbox's kernel has
//! no `sch_netem` (tc says "Specified qdisc kind is unknown"), so instead of
//! `tc netem` in a network namespace the viewer reaches the server through
//! this relay. The server advertises the relay's address (`webrtc.public_ips`
//! plus the relay bound on that IP and the server's port); each client address
//! gets its own upstream socket, like a NAT. Every datagram, both ways, is
//! dropped with probability `loss` or else delivered after `delay` plus a
//! uniformly random part of `jitter`, so packets overtake each other.
//! [`ImpairedRelay::black_hole`] drops everything, both ways, until switched
//! off again: a viewer's network gone for a while, its server session kept.
//! Clients [`ImpairedRelay::spare`]d keep their path through it (a publisher
//! that must reach the server through the same advertised address).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// What the server advertises as its address (`webrtc.public_ips`) when a
/// relay stands in front of it: [`ServerOpts`] that make it do so.
pub fn advertising_relay() -> super::ServerOpts {
    super::ServerOpts {
        webrtc_extra: "public_ips = [\"127.0.0.2\"]\n".into(),
        ..super::ServerOpts::default()
    }
}

/// A relay at the address [`advertising_relay`] makes `server` advertise, in
/// front of its WebRTC UDP port.
pub fn in_front_of(server: &super::Server, imp: Impairment) -> ImpairedRelay {
    let udp = server.webrtc_udp.expect("a WebRTC UDP listener");
    ImpairedRelay::start(
        format!("127.0.0.2:{}", udp.port()).parse().unwrap(),
        udp,
        imp,
    )
}

#[derive(Clone, Copy, Debug)]
pub struct Impairment {
    /// Probability (0..1) that a datagram is dropped.
    pub loss: f64,
    /// Fixed one-way delay…
    pub delay: Duration,
    /// …plus a uniformly random 0..jitter on top.
    pub jitter: Duration,
}

#[derive(Default, Debug)]
pub struct RelayStats {
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
    /// Datagrams that were sent before one that arrived earlier in the same
    /// direction (the reordering the relay caused).
    pub reordered: AtomicU64,
    /// RTP datagrams server → client per payload type, before loss (SRTP
    /// leaves the header clear): retransmissions show up under the RTX type.
    pub rtp_to_client: Mutex<HashMap<u8, u64>>,
}

struct Due {
    at: Instant,
    order: u64,
    socket: Arc<UdpSocket>,
    to: SocketAddr,
    data: Vec<u8>,
}

impl PartialEq for Due {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.order) == (o.at, o.order)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Due {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(o.at, o.order))
    }
}

/// Both directions' schedule and the random source (xorshift64*, seeded from the clock).
struct Scheduler {
    queue: Mutex<(BinaryHeap<Reverse<Due>>, u64, [Instant; 2])>,
    wake: Condvar,
    rng: Mutex<u64>,
    imp: Impairment,
    stats: Arc<RelayStats>,
    black_hole: AtomicBool,
    /// Client addresses the black hole lets through.
    spared: Mutex<Vec<SocketAddr>>,
    /// Client addresses in the order they were first seen.
    clients: Mutex<Vec<SocketAddr>>,
}

impl Scheduler {
    fn random(&self) -> f64 {
        let mut s = self.rng.lock().unwrap();
        *s ^= *s >> 12;
        *s ^= *s << 25;
        *s ^= *s >> 27;
        (s.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Drops or schedules one datagram of `client`'s; `dir` 0 is
    /// client→server, 1 the reverse.
    fn push(
        &self,
        dir: usize,
        socket: &Arc<UdpSocket>,
        to: SocketAddr,
        client: SocketAddr,
        data: &[u8],
    ) {
        if dir == 1 && data.len() >= 12 && data[0] >> 6 == 2 && !(200..=207).contains(&data[1]) {
            *self
                .stats
                .rtp_to_client
                .lock()
                .unwrap()
                .entry(data[1] & 0x7f)
                .or_default() += 1;
        }
        let cut = self.black_hole.load(Ordering::Relaxed)
            && !self.spared.lock().unwrap().contains(&client);
        if cut || self.random() < self.imp.loss {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let at = Instant::now() + self.imp.delay + self.imp.jitter.mul_f64(self.random());
        let mut q = self.queue.lock().unwrap();
        if at < q.2[dir] {
            self.stats.reordered.fetch_add(1, Ordering::Relaxed);
        }
        q.2[dir] = q.2[dir].max(at);
        q.1 += 1;
        let order = q.1;
        q.0.push(Reverse(Due {
            at,
            order,
            socket: socket.clone(),
            to,
            data: data.to_vec(),
        }));
        self.wake.notify_one();
    }

    fn run(&self, stop: &AtomicBool) {
        let mut q = self.queue.lock().unwrap();
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            match q.0.peek() {
                Some(Reverse(d)) if d.at <= now => {
                    let Reverse(d) = q.0.pop().unwrap();
                    let _ = d.socket.send_to(&d.data, d.to);
                    self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
                }
                Some(Reverse(d)) => {
                    let wait = d.at - now;
                    q = self.wake.wait_timeout(q, wait).unwrap().0;
                }
                None => {
                    q = self
                        .wake
                        .wait_timeout(q, Duration::from_millis(50))
                        .unwrap()
                        .0;
                }
            }
        }
    }
}

pub struct ImpairedRelay {
    pub stats: Arc<RelayStats>,
    sched: Arc<Scheduler>,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Impairment {
    /// Nothing lost, delayed or reordered (a path to cut with the black hole).
    pub const CLEAR: Impairment = Impairment {
        loss: 0.0,
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
    };
}

impl ImpairedRelay {
    /// Relays datagrams arriving at `listen` to `server` (and the answers
    /// back) with `imp` applied both ways.
    pub fn start(listen: SocketAddr, server: SocketAddr, imp: Impairment) -> ImpairedRelay {
        let front = Arc::new(
            UdpSocket::bind(listen).unwrap_or_else(|e| panic!("bind relay at {listen}: {e}")),
        );
        front
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let stats = Arc::new(RelayStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let seed = Instant::now().elapsed().as_nanos() as u64
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64;
        let sched = Arc::new(Scheduler {
            queue: Mutex::new((BinaryHeap::new(), 0, [Instant::now(); 2])),
            wake: Condvar::new(),
            rng: Mutex::new(seed | 1),
            imp,
            stats: stats.clone(),
            black_hole: AtomicBool::new(false),
            spared: Mutex::new(Vec::new()),
            clients: Mutex::new(Vec::new()),
        });
        let mut threads = Vec::new();
        {
            let (sched, stop) = (sched.clone(), stop.clone());
            threads.push(thread::spawn(move || sched.run(&stop)));
        }
        let (sched2, stop2) = (sched.clone(), stop.clone());
        threads.push(thread::spawn(move || {
            let mut upstream: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
            let mut readers = Vec::new();
            let mut buf = vec![0u8; 65_536];
            while !stop2.load(Ordering::Relaxed) {
                let Ok((n, client)) = front.recv_from(&mut buf) else {
                    continue;
                };
                let up = upstream.entry(client).or_insert_with(|| {
                    sched2.clients.lock().unwrap().push(client);
                    let s = Arc::new(UdpSocket::bind("127.0.0.1:0").expect("bind upstream"));
                    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                    let (s2, front2, sched3, stop3) =
                        (s.clone(), front.clone(), sched2.clone(), stop2.clone());
                    readers.push(thread::spawn(move || {
                        let mut buf = vec![0u8; 65_536];
                        while !stop3.load(Ordering::Relaxed) {
                            if let Ok((n, _)) = s2.recv_from(&mut buf) {
                                sched3.push(1, &front2, client, client, &buf[..n]);
                            }
                        }
                    }));
                    s
                });
                sched2.push(0, up, server, client, &buf[..n]);
            }
            for r in readers {
                let _ = r.join();
            }
        }));
        ImpairedRelay {
            stats,
            sched,
            stop,
            threads,
        }
    }

    /// `true`: every datagram from now on is dropped, both ways (counted in
    /// `dropped`); `false`: delivered again.
    pub fn black_hole(&self, on: bool) {
        self.sched.black_hole.store(on, Ordering::Relaxed);
    }

    /// The client addresses seen so far, in the order they came.
    pub fn clients(&self) -> Vec<SocketAddr> {
        self.sched.clients.lock().unwrap().clone()
    }

    /// The black hole never drops `client`'s datagrams (loss still applies).
    pub fn spare(&self, client: SocketAddr) {
        self.sched.spared.lock().unwrap().push(client);
    }

    pub fn summary(&self) -> String {
        let mut pts: Vec<(u8, u64)> = self
            .stats
            .rtp_to_client
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect();
        pts.sort();
        format!(
            "forwarded {}, dropped {}, reordered {}; RTP to the client per payload type {pts:?}",
            self.stats.forwarded.load(Ordering::Relaxed),
            self.stats.dropped.load(Ordering::Relaxed),
            self.stats.reordered.load(Ordering::Relaxed)
        )
    }

    /// RTP datagrams server → client outside the two busiest payload types
    /// (video and audio): the retransmissions, on the RTX payload type.
    pub fn rtp_outside_main_types(&self) -> u64 {
        let mut counts: Vec<u64> = self
            .stats
            .rtp_to_client
            .lock()
            .unwrap()
            .values()
            .copied()
            .collect();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        counts.iter().skip(2).sum()
    }
}

impl Drop for ImpairedRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
