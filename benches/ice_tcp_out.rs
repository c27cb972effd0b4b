//! What sending to ICE-TCP viewers costs the server: a shard thread writes a
//! 30 fps, 2.5 Mbit/s video stream (9 packets of 1 200 bytes per frame) to
//! each of 50 viewers connected over real loopback ICE-TCP connections, with
//! the shard's calls (`NetOut::queue_with`, then `flush` once per frame);
//! the connections' writer tasks send what a socket does not take at once.
//! The figure is the CPU time of the shard thread and of the server
//! runtime's threads (writers, listener) per packet delivered (the viewers
//! reading run on threads of their own, not counted), and every viewer must
//! have received every byte.
//!
//! `cargo bench --bench ice_tcp_out` prints one JSON line per run (3 runs).

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use roomcast::listener::{Limits, Shutdown};
use roomcast::rtc::net::{
    Datagram, Demux, IceTcp, Inbound, NetOut, Route, SendBatch, TcpConns, binding_request,
    run_tcp_listener,
};
use str0m::net::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const VIEWERS: usize = 50;
const PACKETS_PER_FRAME: usize = 9;
const PACKET: usize = 1200;
const FPS: u32 = 30;
const SECONDS: u32 = 10;

/// Routed packets from the viewers (their checks): dropped.
struct Nowhere;
impl Inbound for Nowhere {
    fn deliver(&self, _: usize, _: Datagram) {}
}

/// CPU ns of this process's threads whose name starts with `prefix`.
fn cpu_ns(prefix: &str) -> u64 {
    let mut sum = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.starts_with(prefix) {
            sum += schedstat_ns(&task.path().join("schedstat"));
        }
    }
    sum
}

/// The CPU ns a `schedstat` file reports (its first field).
fn schedstat_ns(path: &std::path::Path) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// CPU ns of the calling thread.
fn thread_cpu_ns() -> u64 {
    schedstat_ns(std::path::Path::new("/proc/thread-self/schedstat"))
}

fn frame(data: &[u8]) -> Vec<u8> {
    let mut v = (data.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(data);
    v
}

/// CPU ns per packet of the shard and of the writers, and the packets sent.
fn run() -> (f64, f64, u64) {
    // The server side: ICE-TCP listener and writers on their own runtime.
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("srv-rt")
        .enable_all()
        .build()
        .unwrap();
    let viewers_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("viewer")
        .enable_all()
        .build()
        .unwrap();
    let udp = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
    let conns = Arc::new(TcpConns::default());
    let net = NetOut::new(udp.clone(), conns.clone()).unwrap();
    let demux = Arc::new(Demux::default());
    let listener = server
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let local = listener.local_addr().unwrap();
    let ice = Arc::new(IceTcp {
        local,
        demux: demux.clone(),
        conns: conns.clone(),
        inbound: Arc::new(Nowhere),
    });
    let _guard = server.enter();
    server.spawn(run_tcp_listener(
        listener,
        ice,
        Limits::from_config(&Default::default()),
        Shutdown::default(),
    ));

    // Each viewer: connect, send a signed check, then count what arrives.
    let received = Arc::new(AtomicU64::new(0));
    let mut peers: Vec<SocketAddr> = Vec::new();
    for i in 0..VIEWERS {
        let ufrag = format!("u{i}");
        demux.add_ufrag(
            &ufrag,
            "secretpassword",
            Route {
                shard: 0,
                peer: i as u64,
            },
        );
        let received = received.clone();
        let check = frame(&binding_request(&format!("{ufrag}:x"), "secretpassword"));
        let peer = viewers_rt.block_on(async move {
            let mut c = tokio::net::TcpStream::connect(local).await.unwrap();
            let me = c.local_addr().unwrap();
            c.write_all(&check).await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                while let Ok(n) = c.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    received.fetch_add(n as u64, Ordering::Relaxed);
                }
            });
            me
        });
        peers.push(peer);
    }
    // Every viewer's connection is the server's before the clock starts: a
    // probe packet to each must arrive.
    let deadline = Instant::now() + Duration::from_secs(10);
    let probe = (2 + PACKET) as u64 * VIEWERS as u64;
    let mut batch = SendBatch::default();
    while received.load(Ordering::Relaxed) < probe {
        assert!(Instant::now() < deadline, "viewers never connected");
        received.store(0, Ordering::Relaxed);
        for &p in &peers {
            net.queue_with(&mut batch, Protocol::Tcp, p, PACKET, &mut |b| b.fill(1));
        }
        net.flush(&mut batch);
        std::thread::sleep(Duration::from_millis(200));
    }
    received.store(0, Ordering::Relaxed);

    let frames = FPS * SECONDS;
    let shard = std::thread::Builder::new()
        .name("shard".into())
        .spawn(move || {
            let cpu0 = thread_cpu_ns();
            let period = Duration::from_secs(1) / FPS;
            let start = Instant::now();
            let mut refused = 0u64;
            for f in 0..frames {
                for &p in &peers {
                    for k in 0..PACKETS_PER_FRAME {
                        let fill = (f as usize + k) as u8;
                        refused += u64::from(!net.queue_with(
                            &mut batch,
                            Protocol::Tcp,
                            p,
                            PACKET,
                            &mut |b| b.fill(fill),
                        ));
                    }
                }
                net.flush(&mut batch);
                if let Some(wait) =
                    (start + period * (f + 1)).checked_duration_since(Instant::now())
                {
                    std::thread::sleep(wait);
                }
            }
            (net, refused, thread_cpu_ns() - cpu0)
        })
        .unwrap();
    let writers0 = cpu_ns("srv-rt");
    let (net, refused, shard_ns) = shard.join().unwrap();
    let want = u64::from(frames) * (VIEWERS * PACKETS_PER_FRAME * (2 + PACKET)) as u64;
    let deadline = Instant::now() + Duration::from_secs(20);
    while received.load(Ordering::Relaxed) < want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let writers_ns = cpu_ns("srv-rt") - writers0;
    let got = received.load(Ordering::Relaxed);
    assert_eq!(refused, 0, "the writers fell behind");
    assert_eq!(got, want, "every viewer gets every byte");
    drop(net);
    let packets = u64::from(frames) * (VIEWERS * PACKETS_PER_FRAME) as u64;
    (
        shard_ns as f64 / packets as f64,
        writers_ns as f64 / packets as f64,
        packets,
    )
}

fn main() {
    for _ in 0..3 {
        let (shard, writers, packets) = run();
        println!(
            "{{\"bench\":\"ice_tcp_out\",\"viewers\":{VIEWERS},\"packets\":{packets},\"shard_ns_per_packet\":{shard:.0},\"writers_ns_per_packet\":{writers:.0},\"server_ns_per_packet\":{:.0}}}",
            shard + writers
        );
    }
}
