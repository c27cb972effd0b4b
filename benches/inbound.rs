//! What handing one received datagram from the UDP receiver thread to a shard
//! costs, buffer included: a fresh `Vec` per datagram (allocated on the
//! receiver, freed on the shard) against a pooled `PacketBuf`, through the
//! same bounded crossbeam queue the shards use. Both threads run at once, as
//! the receiver and a shard do, each spinning when it has nothing to do (so
//! wake-ups are not measured, and CPU time would count the spinning): the
//! figure is wall time per packet, i.e. the handover's throughput, set by the
//! slower of the two threads.
//!
//! `cargo bench --bench inbound` prints one JSON line per size, 1200 bytes (a
//! video RTP packet from a publisher) and 100 bytes (RTCP), best of 5 runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use roomcast::rtc::net::PacketBuf;

const PACKETS: usize = 2_000_000;
const QUEUE: usize = 4096;

// Sends PACKETS buffers made by `make` to a consumer thread that reads one
// byte of each and drops it; returns wall ns per packet.
fn run<T: Send + std::ops::Deref<Target = [u8]> + 'static>(
    size: usize,
    make: impl Fn(&[u8]) -> T,
) -> f64 {
    let (tx, rx) = crossbeam_channel::bounded::<T>(QUEUE);
    let done = Arc::new(AtomicBool::new(false));
    let consumer = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut sum = 0u64;
            // Spins rather than blocks: wake-ups are not what is measured.
            loop {
                match rx.try_recv() {
                    Ok(p) => sum += u64::from(p[0]),
                    Err(_) if done.load(Ordering::Acquire) && rx.is_empty() => break,
                    Err(_) => std::hint::spin_loop(),
                }
            }
            std::hint::black_box(sum);
        })
    };
    let packet = vec![0x5au8; size];
    let start = Instant::now();
    for _ in 0..PACKETS {
        let mut p = make(&packet);
        loop {
            match tx.try_send(p) {
                Ok(()) => break,
                Err(e) => {
                    p = e.into_inner();
                    std::hint::spin_loop();
                }
            }
        }
    }
    done.store(true, Ordering::Release);
    consumer.join().unwrap();
    start.elapsed().as_nanos() as f64 / PACKETS as f64
}

fn main() {
    for size in [1200, 100] {
        // Alternating, so that drift on a shared machine hits both alike.
        let (mut vec_ns, mut pool_ns) = (f64::MAX, f64::MAX);
        for _ in 0..5 {
            vec_ns = vec_ns.min(run(size, <[u8]>::to_vec));
            pool_ns = pool_ns.min(run(size, PacketBuf::copy_of));
        }
        println!(
            "{{\"bench\":\"inbound_handover\",\"bytes\":{size},\"packets\":{PACKETS},\"vec_ns_per_packet\":{vec_ns:.1},\"pooled_ns_per_packet\":{pool_ns:.1}}}"
        );
    }
}
