//! The send side of the shared sockets (GSO batches over UDP, ICE-TCP
//! frames into their connection's outbox) and the UDP reader.

use std::mem::MaybeUninit;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::Instant;

use socket2::SockRef;
use str0m::net::{Protocol, Transmit};
use tracing::debug;

use super::tcp::{TcpConns, TcpSends};
use super::{Datagram, Demux, Inbound, PacketBuf};

/// Largest run to one destination (one GSO send: the kernel takes < 64 KiB).
const MAX_RUN_BYTES: usize = 60_000;
/// Largest batch: runs to this many destinations, this many bytes in all.
const MAX_RUNS: usize = 64;
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Sends str0m's output on the right socket. Shared by every shard.
///
/// A video frame becomes a run of equal-sized SRTP packets to one viewer; they
/// go out as one `sendmsg` with UDP segmentation offload (GSO) where the kernel
/// has it, which is most of the per-packet cost saved (the syscall, routing and
/// skb setup happen once per run). A shard writing a frame to many viewers
/// queues their runs in one batch and sends them with one `sendmmsg`: for
/// audio (one datagram per viewer per frame) that was one syscall each.
pub struct NetOut {
    udp: Arc<UdpSocket>,
    udp_state: quinn_udp::UdpSocketState,
    tcp: Arc<TcpConns>,
}

/// A shard's outgoing datagrams until its next flush: UDP runs in one
/// buffer, each run to one destination, and the ICE-TCP connections written
/// to (their packets are in their own outboxes already).
#[derive(Default)]
pub struct SendBatch {
    runs: Vec<Run>,
    buf: Vec<u8>,
    tcp: TcpSends,
}

/// Datagrams for one destination, all `segment` bytes but the last, at
/// `start..` of the batch's buffer up to the next run.
#[derive(Clone, Copy)]
struct Run {
    destination: SocketAddr,
    start: usize,
    segment: usize,
    count: usize,
    /// The last datagram was shorter than `segment`: nothing may follow it.
    closed: bool,
}

impl SendBatch {
    /// The bytes of run `i`.
    fn contents(&self, i: usize) -> &[u8] {
        let end = self.runs.get(i + 1).map_or(self.buf.len(), |r| r.start);
        &self.buf[self.runs[i].start..end]
    }
}

/// Takes the datagram at `start` back out of the batch when its `write`
/// panics (`usize::MAX` once written): the batch is shared by the shard's
/// sessions, and a partly written datagram would go out at the next flush.
struct Unwritten<'a> {
    batch: &'a mut SendBatch,
    start: usize,
}

impl Drop for Unwritten<'_> {
    fn drop(&mut self) {
        if self.start == usize::MAX {
            return;
        }
        let b = &mut *self.batch;
        b.buf.truncate(self.start);
        if let Some(run) = b.runs.last_mut() {
            run.count -= 1;
            // It could only join an open run, or began a new one.
            run.closed = false;
            if run.count == 0 {
                b.runs.pop();
            }
        }
    }
}

impl NetOut {
    pub fn new(udp: Arc<UdpSocket>, tcp: Arc<TcpConns>) -> std::io::Result<NetOut> {
        let udp_state = quinn_udp::UdpSocketState::new((&*udp).into())?;
        // quinn-udp makes the socket non-blocking; the receiver thread blocks on
        // it, and a full send buffer should make senders wait, not drop.
        udp.set_nonblocking(false)?;
        Ok(NetOut {
            udp,
            udp_state,
            tcp,
        })
    }

    /// Largest number of datagrams one send carries (1 without GSO).
    pub fn max_segments(&self) -> usize {
        self.udp_state.max_gso_segments()
    }

    /// Queues a datagram, sending the batch first when this one cannot join it.
    /// Returns false when the peer is an ICE-TCP peer whose queue is full: it
    /// cannot keep up, and the caller should skip it ahead to a keyframe.
    pub fn queue(&self, batch: &mut SendBatch, t: Transmit) -> bool {
        let len = t.contents.len();
        if t.proto != Protocol::Udp {
            return self
                .tcp
                .queue(&mut batch.tcp, t.destination, len, &mut |b| {
                    b.copy_from_slice(&t.contents)
                });
        }
        self.reserve(batch, t.destination, len)
            .copy_from_slice(&t.contents);
        true
    }

    /// Queues a datagram of `len` bytes that `write` fills in place, in the
    /// batch's buffer (UDP: no buffer of its own, no copy); as `queue`
    /// otherwise.
    pub fn queue_with(
        &self,
        batch: &mut SendBatch,
        proto: Protocol,
        destination: SocketAddr,
        len: usize,
        write: &mut dyn FnMut(&mut [u8]),
    ) -> bool {
        if proto != Protocol::Udp {
            return self.tcp.queue(&mut batch.tcp, destination, len, write);
        }
        self.reserve(batch, destination, len);
        let mut guard = Unwritten {
            start: batch.buf.len() - len,
            batch,
        };
        let start = guard.start;
        write(&mut guard.batch.buf[start..]);
        guard.start = usize::MAX;
        true
    }

    /// Room for a datagram of `len` bytes to `destination` at the end of the
    /// batch: in the last run if it can join it, else in a new run (the
    /// batch sent first when full).
    fn reserve<'b>(
        &self,
        batch: &'b mut SendBatch,
        destination: SocketAddr,
        len: usize,
    ) -> &'b mut [u8] {
        let end = batch.buf.len();
        let joins = batch.runs.last().is_some_and(|r| {
            r.destination == destination
                && !r.closed
                && len <= r.segment
                && r.count < self.max_segments()
                && end - r.start + len <= MAX_RUN_BYTES
        });
        if !joins {
            if batch.runs.len() == MAX_RUNS || end + len > MAX_BATCH_BYTES {
                self.flush(batch);
            }
            batch.runs.push(Run {
                destination,
                start: batch.buf.len(),
                segment: len,
                count: 0,
                closed: false,
            });
        }
        let start = batch.buf.len();
        batch.buf.resize(start + len, 0);
        let run = batch.runs.last_mut().expect("a run was just ensured");
        run.count += 1;
        run.closed = len < run.segment;
        &mut batch.buf[start..]
    }

    /// Sends what is queued: one run with `sendmsg`, several with one
    /// `sendmmsg`; writes out the ICE-TCP connections written to.
    pub fn flush(&self, batch: &mut SendBatch) {
        if !batch.tcp.is_empty() {
            TcpConns::flush(&mut batch.tcp);
        }
        match batch.runs.len() {
            0 => return,
            1 => self.send_run(batch, 0),
            _ => self.send_runs(batch),
        }
        batch.runs.clear();
        batch.buf.clear();
    }

    /// Sends run `i` alone (with GSO when it has several datagrams, one at
    /// a time if the kernel refuses GSO).
    fn send_run(&self, batch: &SendBatch, i: usize) {
        let run = batch.runs[i];
        let contents = batch.contents(i);
        let t = quinn_udp::Transmit {
            destination: run.destination,
            ecn: None,
            contents,
            segment_size: (run.count > 1).then_some(run.segment),
            src_ip: None,
        };
        if let Err(e) = self.udp_state.try_send((&*self.udp).into(), &t) {
            if run.count > 1 {
                // quinn-udp turns GSO off when the kernel refuses it; send the
                // run again one datagram at a time.
                for one in contents.chunks(run.segment) {
                    let t = quinn_udp::Transmit {
                        destination: run.destination,
                        ecn: None,
                        contents: one,
                        segment_size: None,
                        src_ip: None,
                    };
                    if let Err(e) = self.udp_state.try_send((&*self.udp).into(), &t) {
                        debug!(error = %e, to = %run.destination, "udp send failed");
                    }
                }
            } else {
                debug!(error = %e, to = %run.destination, "udp send failed");
            }
        }
    }

    /// Sends every run with `sendmmsg`; a run the kernel refuses is sent
    /// alone (`send_run`, which falls back from GSO), and the rest go on.
    #[cfg(target_os = "linux")]
    fn send_runs(&self, batch: &SendBatch) {
        use std::os::fd::AsRawFd;
        let n = batch.runs.len();
        let mut names = mmsg::Names::default();
        let mut iovs = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; MAX_RUNS];
        let mut controls = [mmsg::Control::default(); MAX_RUNS];
        // SAFETY: mmsghdr is plain data; all-zero is an empty message.
        let mut msgs: [libc::mmsghdr; MAX_RUNS] = unsafe { std::mem::zeroed() };
        for (i, run) in batch.runs.iter().enumerate() {
            let contents = batch.contents(i);
            iovs[i] = libc::iovec {
                iov_base: contents.as_ptr() as *mut libc::c_void,
                iov_len: contents.len(),
            };
            let (name, name_len) = names.set(i, run.destination);
            let hdr = &mut msgs[i].msg_hdr;
            hdr.msg_name = name;
            hdr.msg_namelen = name_len;
            hdr.msg_iov = &mut iovs[i];
            hdr.msg_iovlen = 1;
            if run.count > 1 {
                let segment = u16::try_from(run.segment).unwrap_or(u16::MAX);
                controls[i].set_segment(hdr, segment);
            }
        }
        let fd = self.udp.as_raw_fd();
        let mut sent = 0;
        while sent < n {
            // SAFETY: msgs[sent..n] point into names, iovs, controls and the
            // batch's buffer, all alive and unmoved until this call returns.
            let r = unsafe { libc::sendmmsg(fd, msgs[sent..].as_mut_ptr(), (n - sent) as u32, 0) };
            if r > 0 {
                sent += r as usize;
                continue;
            }
            if r < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            // The kernel refused the run at `sent` (or sent nothing).
            self.send_run(batch, sent);
            sent += 1;
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn send_runs(&self, batch: &SendBatch) {
        for i in 0..batch.runs.len() {
            self.send_run(batch, i);
        }
    }

    /// Closes the ICE-TCP connections among a finished session's addresses:
    /// each sends what its outbox holds, then ends.
    pub fn close_tcp(&self, addrs: &[(Protocol, SocketAddr)]) {
        self.tcp.close(addrs);
    }
}

/// What the shared UDP socket asks the kernel to hold for it, in datagram
/// bytes: bursts that arrive while its reader is busy (a lone worker reads
/// it between writing frames) wait here. Linux caps it at
/// `net.core.rmem_max` (208 KiB on a stock host: about 90 datagrams).
pub const UDP_RECEIVE_BUFFER: usize = 4 << 20;

/// Asks for `bytes` of receive buffer on `socket`; returns what the kernel
/// granted, in the same unit (Linux reports double what it accounts
/// datagrams against), or None if it could not be read.
pub fn grow_receive_buffer(socket: &UdpSocket, bytes: usize) -> Option<usize> {
    let sock = SockRef::from(socket);
    if let Err(e) = sock.set_recv_buffer_size(bytes) {
        debug!(error = %e, "could not set the UDP receive buffer");
    }
    let granted = sock.recv_buffer_size().ok()?;
    // Linux doubles the request (half of it for its bookkeeping).
    Some(if cfg!(target_os = "linux") {
        granted / 2
    } else {
        granted
    })
}

/// Reads the shared UDP socket and routes each datagram to its session
/// ([`Demux`]). With one worker shard, the shard reads it itself between its
/// other work ([`UdpReader::read_waiting`]); with several, a thread of its
/// own does ([`UdpReader::run`]), so that no shard's work delays another's
/// packets.
pub struct UdpReader {
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    demux: Arc<Demux>,
    /// Received into directly and handed over whole; an unroutable
    /// datagram's buffer takes the next one.
    buf: PacketBuf,
}

impl UdpReader {
    pub fn new(socket: Arc<UdpSocket>, local: SocketAddr, demux: Arc<Demux>) -> UdpReader {
        UdpReader {
            socket,
            local,
            demux,
            buf: PacketBuf::take(),
        }
    }

    /// The socket, to wait for it to be readable.
    pub fn socket(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    /// Takes up to `max` datagrams that are already waiting, without ever
    /// blocking, and hands each one routed to a session to `deliver` with
    /// its shard. Returns true if it stopped at `max` (more may be waiting).
    pub fn read_waiting(&mut self, max: usize, mut deliver: impl FnMut(usize, Datagram)) -> bool {
        let UdpReader {
            socket,
            local,
            demux,
            buf,
        } = self;
        let sock = SockRef::from(&**socket);
        for _ in 0..max {
            // SAFETY: u8 and MaybeUninit<u8> have the same layout, and the
            // kernel only writes initialised bytes into the buffer.
            let space = unsafe { &mut *(buf.space() as *mut [u8] as *mut [MaybeUninit<u8>]) };
            match sock.recv_from_with_flags(space, libc::MSG_DONTWAIT) {
                Ok((n, source)) => {
                    if let Some(source) = source.as_socket()
                        && let Some((shard, d)) = route(demux, *local, buf, n, source)
                    {
                        deliver(shard, d);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                // ICMP port-unreachable from a gone peer surfaces here on Linux.
                Err(e) => debug!(error = %e, "udp receive error"),
            }
        }
        true
    }

    /// Receives forever, waiting for each datagram, and hands each one to
    /// its shard's queue: the receiver thread of an engine with several
    /// shards.
    pub fn run(mut self, inbound: Arc<impl Inbound + ?Sized>) {
        loop {
            let (n, source) = match self.socket.recv_from(self.buf.space()) {
                Ok(r) => r,
                Err(e) => {
                    debug!(error = %e, "udp receive error");
                    continue;
                }
            };
            if let Some((shard, d)) = route(&self.demux, self.local, &mut self.buf, n, source) {
                inbound.deliver(shard, d);
            }
        }
    }
}

/// The datagram of `n` bytes just received into `buf`, with its shard, if it
/// belongs to a session (`buf` then takes a fresh buffer).
fn route(
    demux: &Demux,
    local: SocketAddr,
    buf: &mut PacketBuf,
    n: usize,
    source: SocketAddr,
) -> Option<(usize, Datagram)> {
    buf.filled(n);
    let (route, new) = demux.route(Protocol::Udp, source, buf)?;
    let d = Datagram {
        peer: route.peer,
        proto: Protocol::Udp,
        source,
        destination: local,
        data: std::mem::replace(buf, PacketBuf::take()),
        at: Instant::now(),
        new_addr: new,
    };
    Some((route.shard, d))
}

/// The addresses and control messages of a `sendmmsg`, laid out as the
/// kernel reads them.
#[cfg(target_os = "linux")]
mod mmsg {
    use std::net::SocketAddr;

    use super::MAX_RUNS;

    pub struct Names([libc::sockaddr_storage; MAX_RUNS]);

    impl Default for Names {
        fn default() -> Self {
            // SAFETY: sockaddr_storage is plain data; zero is a valid value.
            Names(unsafe { std::mem::zeroed() })
        }
    }

    impl Names {
        /// Writes `addr` as entry `i`: its pointer and length for msg_name.
        pub fn set(&mut self, i: usize, addr: SocketAddr) -> (*mut libc::c_void, libc::socklen_t) {
            let slot = &mut self.0[i] as *mut libc::sockaddr_storage;
            match addr {
                SocketAddr::V4(a) => {
                    let sin = libc::sockaddr_in {
                        sin_family: libc::AF_INET as libc::sa_family_t,
                        sin_port: a.port().to_be(),
                        sin_addr: libc::in_addr {
                            s_addr: u32::from_ne_bytes(a.ip().octets()),
                        },
                        sin_zero: [0; 8],
                    };
                    // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
                    unsafe { slot.cast::<libc::sockaddr_in>().write(sin) };
                    (
                        slot.cast(),
                        size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    )
                }
                SocketAddr::V6(a) => {
                    let sin6 = libc::sockaddr_in6 {
                        sin6_family: libc::AF_INET6 as libc::sa_family_t,
                        sin6_port: a.port().to_be(),
                        sin6_flowinfo: a.flowinfo(),
                        sin6_addr: libc::in6_addr {
                            s6_addr: a.ip().octets(),
                        },
                        sin6_scope_id: a.scope_id(),
                    };
                    // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
                    unsafe { slot.cast::<libc::sockaddr_in6>().write(sin6) };
                    (
                        slot.cast(),
                        size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                    )
                }
            }
        }
    }

    /// Room for one `UDP_SEGMENT` control message (cmsghdr-aligned).
    #[derive(Clone, Copy, Default)]
    pub struct Control([u64; 4]);

    impl Control {
        /// Attaches a `UDP_SEGMENT` of `segment` bytes to `hdr` (GSO).
        pub fn set_segment(&mut self, hdr: &mut libc::msghdr, segment: u16) {
            // SAFETY: CMSG_SPACE of a u16 is 24 bytes on Linux, within the
            // 32 this holds; the header and data are written inside it.
            unsafe {
                let space = libc::CMSG_SPACE(size_of::<u16>() as u32) as usize;
                debug_assert!(space <= size_of::<Self>());
                hdr.msg_control = self.0.as_mut_ptr().cast();
                hdr.msg_controllen = space as _;
                let cmsg = libc::CMSG_FIRSTHDR(hdr);
                (*cmsg).cmsg_level = libc::SOL_UDP;
                (*cmsg).cmsg_type = libc::UDP_SEGMENT;
                (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
                libc::CMSG_DATA(cmsg).cast::<u16>().write_unaligned(segment);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::panic::{AssertUnwindSafe, catch_unwind};

    use super::*;
    use crate::rtc::net::{Route, binding_request};

    /// The socket gets the receive buffer asked for, up to the kernel's cap.
    #[test]
    fn the_receive_buffer_grows_up_to_the_kernels_cap() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let granted = grow_receive_buffer(&socket, UDP_RECEIVE_BUFFER).unwrap();
        let cap: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(granted, UDP_RECEIVE_BUFFER.min(cap));
    }

    /// What a shard reading the socket itself gets: every datagram already
    /// waiting (a session's signed check, then anything from the address it
    /// taught), up to the budget, never one from an unknown address, and
    /// an immediate return when nothing waits.
    #[test]
    fn a_reader_takes_what_waits_routed_and_never_blocks() {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        let local = socket.local_addr().unwrap();
        let demux = Arc::new(Demux::default());
        demux.add_ufrag("ours", "secret-password", Route { shard: 0, peer: 7 });
        let mut reader = UdpReader::new(socket.clone(), local, demux);
        let mut got = Vec::new();
        let mut take = |max| {
            let more = reader.read_waiting(max, |shard, d: Datagram| {
                got.push((shard, d.peer, d.new_addr, d.data.to_vec()));
            });
            (more, std::mem::take(&mut got))
        };
        // Nothing waits: back at once, with nothing.
        let t = Instant::now();
        assert_eq!(take(8), (false, vec![]));
        assert!(t.elapsed() < std::time::Duration::from_secs(1));

        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
        let check = binding_request("ours:theirs", "secret-password");
        stranger.send_to(b"not routed", local).unwrap();
        peer.send_to(&check, local).unwrap();
        for i in 0..3u8 {
            peer.send_to(&[i; 100], local).unwrap();
        }
        // Loopback delivers within `send_to`: all five wait now.
        let (more, first) = take(3);
        assert!(more, "stopped at the budget with more waiting");
        assert_eq!(first[0], (0, 7, true, check.clone()));
        assert_eq!(first[1], (0, 7, false, vec![0; 100]));
        assert_eq!(first.len(), 2, "the stranger's datagram is not handed over");
        let (more, rest) = take(8);
        assert!(!more);
        assert_eq!(
            rest,
            vec![(0, 7, false, vec![1; 100]), (0, 7, false, vec![2; 100])]
        );
    }

    /// A session's panic inside `write` leaves the shared batch as it was:
    /// the next flush sends only the whole datagrams.
    #[test]
    fn a_panic_while_writing_leaves_no_partial_datagram() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        let out = NetOut::new(tx.clone(), Arc::default()).unwrap();
        let dst = rx.local_addr().unwrap();
        let mut batch = SendBatch::default();
        let queue = |batch: &mut SendBatch, fill: u8, panics: bool| {
            out.queue_with(batch, Protocol::Udp, dst, 100, &mut |b| {
                b[..50].fill(fill);
                assert!(!panics, "a session's bug");
                b[50..].fill(fill);
            })
        };
        assert!(queue(&mut batch, 1, false));
        let r = catch_unwind(AssertUnwindSafe(|| queue(&mut batch, 2, true)));
        assert!(r.is_err());
        assert_eq!(
            (batch.buf.len(), batch.runs.len(), batch.runs[0].count),
            (100, 1, 1)
        );
        assert!(queue(&mut batch, 3, false));
        out.flush(&mut batch);
        let mut buf = [0u8; 2048];
        for fill in [1, 3] {
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], &[fill; 100][..]);
        }
        // A panic in a batch's first datagram leaves it empty.
        let r = catch_unwind(AssertUnwindSafe(|| queue(&mut batch, 4, true)));
        assert!(r.is_err());
        assert!(batch.buf.is_empty() && batch.runs.is_empty());
    }

    /// Runs to several destinations go out in one `sendmmsg`: each receiver
    /// gets its own datagrams, whole and in order, GSO runs split by the
    /// kernel; more runs than one batch holds are sent as the batch fills.
    #[test]
    fn a_batch_carries_runs_to_many_destinations() {
        let tx = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        let out = NetOut::new(tx.clone(), Arc::default()).unwrap();
        let rx: Vec<UdpSocket> = (0..3)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        for r in &rx {
            r.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
        }
        let dst: Vec<SocketAddr> = rx.iter().map(|r| r.local_addr().unwrap()).collect();
        let mut batch = SendBatch::default();
        let mut want: Vec<Vec<Vec<u8>>> = vec![Vec::new(); 3];
        let mut tag = 0u8;
        let mut queue = |batch: &mut SendBatch, to: usize, len: usize| {
            tag = tag.wrapping_add(1);
            let t = tag;
            assert!(out.queue_with(batch, Protocol::Udp, dst[to], len, &mut |b| b.fill(t)));
            want[to].push(vec![t; len]);
        };
        // A GSO run to 0, one datagram to 1, a run with a short tail to 2,
        // then 0 again: a new run after the others.
        for _ in 0..3 {
            queue(&mut batch, 0, 100);
        }
        queue(&mut batch, 1, 50);
        queue(&mut batch, 2, 80);
        queue(&mut batch, 2, 80);
        queue(&mut batch, 2, 30);
        queue(&mut batch, 0, 100);
        assert_eq!(batch.runs.len(), 4);
        // Alternating destinations: every datagram a run of its own, past
        // MAX_RUNS, so the batch is sent once full and goes on.
        for i in 0..(MAX_RUNS + 10) {
            queue(&mut batch, 1 + i % 2, 20);
        }
        out.flush(&mut batch);
        assert!(batch.runs.is_empty() && batch.buf.is_empty());
        let mut buf = [0u8; 2048];
        for (r, want) in rx.iter().zip(&want) {
            for w in want {
                let n = r.recv(&mut buf).unwrap();
                assert_eq!(&buf[..n], &w[..]);
            }
        }
    }
}
