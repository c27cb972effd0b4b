//! The floor of WebRTC fan-out on this machine: what one delivered packet must
//! cost at least — one SRTP protect (AES-256-GCM, the cipher roomcast's peers
//! negotiate, through the same aws-lc provider str0m uses) plus one UDP send.
//! Measured as CPU time of the sending thread (user + kernel, which on loopback
//! includes the receiving side's kernel work), like the server figures.
//!
//! `cargo bench --bench floor` prints one JSON line per variant:
//! protect only; protect + one sendto per packet; protect + sendmsg with GSO in
//! batches of 10 (what roomcast does for a video frame's packets); and
//! roomcast's own protect (`rtc::srtp`, what the direct path runs) two ways:
//! the payload copied into the send buffer and sealed there, and sealed
//! straight from its source into the buffer (what it does).

use std::net::UdpSocket;
use std::time::{Duration, Instant};

const PACKETS: usize = 400_000;
/// The variants without a send run longer: the CPU clock ticks in 10 ms.
const CRYPTO_PACKETS: usize = 4_000_000;
const PAYLOAD: usize = 1200;
const HEADER: usize = 12;

/// This thread's CPU time (user + system) from /proc, in seconds.
fn thread_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("procfs");
    let after = stat.rsplit_once(')').expect("stat format").1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn main() {
    let provider = str0m::crypto::from_feature_flags();
    let mut cipher = provider
        .srtp_provider
        .aead_aes_256_gcm()
        .create_cipher([7u8; 32], true);
    let header = [0x80u8, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 42];
    let payload = vec![0x5au8; PAYLOAD];
    let mut out = vec![0u8; HEADER + PAYLOAD + 16];

    // A receiver that drains with GRO, as the load generator does.
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rx_addr = rx.local_addr().unwrap();
    let rx_state = quinn_udp::UdpSocketState::new((&rx).into()).unwrap();
    rx.set_nonblocking(false).unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        let mut meta = [quinn_udp::RecvMeta::default()];
        loop {
            let mut bufs = [std::io::IoSliceMut::new(&mut buf)];
            let _ = rx_state.recv((&rx).into(), &mut bufs, &mut meta);
        }
    });
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let tx_state = quinn_udp::UdpSocketState::new((&tx).into()).unwrap();
    tx.set_nonblocking(false).unwrap();

    let mut protect = |seq: usize, out: &mut [u8]| {
        let mut iv = [0u8; 12];
        iv[10..12].copy_from_slice(&(seq as u16).to_be_bytes());
        out[..HEADER].copy_from_slice(&header);
        cipher
            .encrypt(&iv, &header, &payload, &mut out[HEADER..])
            .expect("encrypt");
    };

    let report = |name: &str, packets: usize, cpu: f64, wall: Duration| {
        println!(
            "{}",
            serde_json::json!({
                "bench": "floor",
                "variant": name,
                "packets": packets,
                "us_cpu_per_packet": (cpu * 1e6 / packets as f64 * 100.0).round() / 100.0,
                "packets_per_core_second": (packets as f64 / cpu).round(),
                "wall_s": (wall.as_secs_f64() * 100.0).round() / 100.0,
            })
        );
    };

    // 1. SRTP protect only.
    let (c0, t0) = (thread_cpu(), Instant::now());
    for seq in 0..CRYPTO_PACKETS {
        protect(seq, &mut out);
    }
    report(
        "srtp_protect",
        CRYPTO_PACKETS,
        thread_cpu() - c0,
        t0.elapsed(),
    );

    // 1b. roomcast's protect, into a batch buffer as the direct path writes
    // a frame's packets: the payload copied in, then sealed in place; and
    // sealed from the payload's own buffer.
    use roomcast::rtc::srtp::{MasterKey, Profile, SrtpTx};
    let srtp = SrtpTx::new(
        &MasterKey::new(Profile::AeadAes256Gcm, &[7; 32], &[9; 12]),
        0,
    );
    let seg = out.len();
    let mut frame_batch = vec![0u8; seg * 10];
    for (variant, prefix_len) in [
        ("roomcast_copy_then_seal", PAYLOAD),
        ("roomcast_seal_from_source", 0),
    ] {
        let (c0, t0) = (thread_cpu(), Instant::now());
        for seq in 0..CRYPTO_PACKETS {
            let b = &mut frame_batch[(seq % 10) * seg..][..seg];
            b[..HEADER].copy_from_slice(&header);
            b[2..4].copy_from_slice(&(seq as u16).to_be_bytes());
            b[HEADER..HEADER + prefix_len].copy_from_slice(&payload[..prefix_len]);
            srtp.protect_rtp(b, HEADER, prefix_len, &payload[prefix_len..], 0);
        }
        report(variant, CRYPTO_PACKETS, thread_cpu() - c0, t0.elapsed());
    }

    // 2. Protect + one sendto per packet.
    let (c0, t0) = (thread_cpu(), Instant::now());
    for seq in 0..PACKETS {
        protect(seq, &mut out);
        tx.send_to(&out, rx_addr).unwrap();
    }
    report(
        "srtp_protect+sendto",
        PACKETS,
        thread_cpu() - c0,
        t0.elapsed(),
    );

    // 3. Protect + GSO sendmsg of 10 packets (one video frame's worth).
    let mut batch = Vec::with_capacity(seg * 10);
    let (c0, t0) = (thread_cpu(), Instant::now());
    for seq in 0..PACKETS {
        protect(seq, &mut out);
        batch.extend_from_slice(&out);
        if (seq + 1) % 10 == 0 {
            let t = quinn_udp::Transmit {
                destination: rx_addr,
                ecn: None,
                contents: &batch,
                segment_size: Some(seg),
                src_ip: None,
            };
            tx_state.try_send((&tx).into(), &t).unwrap();
            batch.clear();
        }
    }
    report(
        "srtp_protect+gso10",
        PACKETS,
        thread_cpu() - c0,
        t0.elapsed(),
    );
}
