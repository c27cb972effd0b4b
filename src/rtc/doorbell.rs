//! How a shard sleeps: one wait that ends when a producer rings (something
//! was queued for the shard), when a socket the shard reads itself becomes
//! readable, or at the shard's next timer.
//!
//! A channel's own blocking receive cannot also wait for a socket, and the
//! socket is why this exists: a shard that reads the UDP socket itself wakes
//! once per burst of datagrams, where a receiver thread handing them over
//! woke twice (itself, then the shard).
//!
//! Producers pay for a ring only while the shard sleeps: the shard announces
//! its sleep (`asleep`), then looks at its queues once more; a producer
//! queues, then looks at `asleep`. With a full fence on both sides, at least
//! one of them sees the other, so a queued message never waits for the next
//! timer. Only the producer that ends the sleep writes to the socket pair.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, fence};
use std::time::Instant;

pub struct Doorbell {
    asleep: AtomicBool,
    /// Written (one byte) to end a sleep; `ear` is what the sleep polls.
    bell: UnixStream,
    ear: UnixStream,
}

impl Doorbell {
    pub fn new() -> io::Result<Doorbell> {
        let (bell, ear) = UnixStream::pair()?;
        bell.set_nonblocking(true)?;
        ear.set_nonblocking(true)?;
        Ok(Doorbell {
            asleep: AtomicBool::new(false),
            bell,
            ear,
        })
    }

    /// Call after queuing something for the shard: wakes it if it sleeps
    /// (or is about to). Never blocks.
    pub fn ring(&self) {
        fence(SeqCst);
        if self.asleep.load(SeqCst) && self.asleep.swap(false, SeqCst) {
            // A full pair means a byte is already waiting to wake it.
            let _ = (&self.bell).write(&[1]);
        }
    }

    /// Sleeps until rung, until `socket` is readable, or until `deadline`;
    /// not at all if `has_work()` (asked after the sleep is announced, so a
    /// ring in between is not lost). Returns whether `socket` may hold
    /// something to read: false only when it was polled and was not
    /// readable (and always false without a socket).
    pub fn sleep(
        &self,
        deadline: Instant,
        socket: Option<BorrowedFd<'_>>,
        has_work: impl FnOnce() -> bool,
    ) -> bool {
        self.asleep.store(true, SeqCst);
        fence(SeqCst);
        if has_work() {
            self.asleep.store(false, SeqCst);
            return socket.is_some();
        }
        let mut fds = [
            libc::pollfd {
                fd: self.ear.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: socket.map_or(-1, |s| s.as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let n = if socket.is_some() { 2 } else { 1 };
        poll_until(&mut fds[..n], deadline);
        self.asleep.store(false, SeqCst);
        if fds[0].revents != 0 {
            // Drain every ring: stale ones (rung while awake) included.
            let mut sink = [0u8; 64];
            while matches!((&self.ear).read(&mut sink), Ok(k) if k > 0) {}
        }
        // Error and hang-up conditions are readable too: the read reports them.
        n == 2 && fds[1].revents != 0
    }
}

/// `poll` until `deadline` at the latest; an interrupted or failed poll
/// returns early, and the caller's loop simply looks again.
fn poll_until(fds: &mut [libc::pollfd], deadline: Instant) {
    let left = deadline.saturating_duration_since(Instant::now());
    #[cfg(target_os = "linux")]
    {
        let ts = libc::timespec {
            tv_sec: left.as_secs().min(i64::MAX as u64) as libc::time_t,
            tv_nsec: left.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `fds` is a valid slice of pollfd for its length; `ts` lives
        // across the call; a null signal mask leaves the mask unchanged.
        unsafe {
            libc::ppoll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                &ts,
                std::ptr::null(),
            )
        };
    }
    #[cfg(not(target_os = "linux"))]
    {
        // Rounded up to whole milliseconds: never before the deadline.
        let ms = left.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as libc::c_int;
        // SAFETY: `fds` is a valid slice of pollfd for its length.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    #[test]
    fn a_sleep_ends_at_its_deadline_without_a_ring() {
        let bell = Doorbell::new().unwrap();
        let t = Instant::now();
        let socket_readable = bell.sleep(t + Duration::from_millis(30), None, || false);
        assert!(!socket_readable);
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(30), "woke early: {took:?}");
    }

    #[test]
    fn work_found_after_announcing_the_sleep_skips_it() {
        let bell = Doorbell::new().unwrap();
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let t = Instant::now();
        // The socket was not polled: it may hold datagrams.
        assert!(bell.sleep(t + Duration::from_secs(10), Some(socket.as_fd()), || true));
        assert!(!bell.sleep(t + Duration::from_secs(10), None, || true));
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_readable_socket_ends_the_sleep_and_is_reported() {
        let bell = Doorbell::new().unwrap();
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        assert!(!bell.sleep(
            Instant::now() + Duration::from_millis(5),
            Some(rx.as_fd()),
            || false
        ));
        tx.send_to(b"x", rx.local_addr().unwrap()).unwrap();
        assert!(bell.sleep(deadline, Some(rx.as_fd()), || false));
        assert!(Instant::now() < deadline);
    }

    /// Hand-offs one at a time: the producer queues the next item the
    /// moment the consumer has taken the last, i.e. just as the consumer
    /// goes to sleep, over and over. Each item is seen long before a sleep's
    /// deadline: no ring is lost between queuing and sleeping.
    #[test]
    fn no_ring_is_lost_between_queuing_and_sleeping() {
        const ITEMS: usize = 2_000;
        let bell = Arc::new(Doorbell::new().unwrap());
        let queued = Arc::new(AtomicUsize::new(0));
        let taken = Arc::new(AtomicUsize::new(0));
        let producer = {
            let (bell, queued, taken) = (bell.clone(), queued.clone(), taken.clone());
            std::thread::spawn(move || {
                for i in 1..=ITEMS {
                    while taken.load(SeqCst) < i - 1 {
                        std::hint::spin_loop();
                    }
                    queued.store(i, SeqCst);
                    bell.ring();
                }
            })
        };
        let mut seen = 0;
        while seen < ITEMS {
            // The producer never pauses for long: a sleep that runs to its
            // deadline slept through a ring.
            let t = Instant::now();
            bell.sleep(t + Duration::from_secs(5), None, || {
                queued.load(SeqCst) > seen
            });
            assert!(
                t.elapsed() < Duration::from_secs(4),
                "slept through a ring with {seen} of {ITEMS} seen"
            );
            seen = queued.load(SeqCst);
            taken.store(seen, SeqCst);
        }
        producer.join().unwrap();
    }
}
