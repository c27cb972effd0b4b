//! The send side of the shared sockets (GSO batches over UDP, ICE-TCP
//! frames to their connection's writer) and the UDP receiver thread.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Instant;

use str0m::net::{Protocol, Transmit};
use tokio::sync::mpsc;
use tracing::debug;

use super::tcp::TcpConns;
use super::{Datagram, Demux, Inbound, MAX_DATAGRAM};

const MAX_BATCH_BYTES: usize = 60_000;

/// Sends str0m's output on the right socket. Shared by every shard.
///
/// A video frame becomes a run of equal-sized SRTP packets to one viewer; they
/// go out as one `sendmsg` with UDP segmentation offload (GSO) where the kernel
/// has it, which is most of the per-packet cost saved (the syscall, routing and
/// skb setup happen once per batch).
pub struct NetOut {
    udp: Arc<UdpSocket>,
    udp_state: quinn_udp::UdpSocketState,
    tcp: Arc<TcpConns>,
}

/// Datagrams queued for one destination, all `segment` bytes but the last.
#[derive(Default)]
pub struct SendBatch {
    destination: Option<SocketAddr>,
    segment: usize,
    count: usize,
    /// The last datagram was shorter than `segment`: nothing may follow it.
    closed: bool,
    buf: Vec<u8>,
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
        b.count -= 1;
        // It could only join an open batch, or began a new one.
        b.closed = false;
        if b.count == 0 {
            b.destination = None;
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
        if t.proto != Protocol::Udp {
            self.flush(batch);
            return self.send_tcp(t);
        }
        let len = t.contents.len();
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
        source: SocketAddr,
        destination: SocketAddr,
        len: usize,
        write: &mut dyn FnMut(&mut [u8]),
    ) -> bool {
        if proto != Protocol::Udp {
            // ICE-TCP frames go to their connection's writer as owned buffers.
            let mut contents = vec![0u8; len];
            write(&mut contents);
            return self.queue(
                batch,
                Transmit {
                    proto,
                    source,
                    destination,
                    contents: contents.into(),
                },
            );
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
    /// batch, sending the batch first when it cannot join it.
    fn reserve<'b>(
        &self,
        batch: &'b mut SendBatch,
        destination: SocketAddr,
        len: usize,
    ) -> &'b mut [u8] {
        let joins = batch.destination == Some(destination)
            && !batch.closed
            && len <= batch.segment
            && batch.count < self.max_segments()
            && batch.buf.len() + len <= MAX_BATCH_BYTES;
        if !joins {
            self.flush(batch);
            batch.destination = Some(destination);
            batch.segment = len;
        }
        let start = batch.buf.len();
        batch.buf.resize(start + len, 0);
        batch.count += 1;
        batch.closed = len < batch.segment;
        &mut batch.buf[start..]
    }

    /// Sends what is queued.
    pub fn flush(&self, batch: &mut SendBatch) {
        let Some(destination) = batch.destination.take() else {
            return;
        };
        let t = quinn_udp::Transmit {
            destination,
            ecn: None,
            contents: &batch.buf,
            segment_size: (batch.count > 1).then_some(batch.segment),
            src_ip: None,
        };
        if let Err(e) = self.udp_state.try_send((&*self.udp).into(), &t) {
            if batch.count > 1 {
                // quinn-udp turns GSO off when the kernel refuses it; send the
                // batch again one datagram at a time.
                for one in batch.buf.chunks(batch.segment) {
                    let t = quinn_udp::Transmit {
                        destination,
                        ecn: None,
                        contents: one,
                        segment_size: None,
                        src_ip: None,
                    };
                    if let Err(e) = self.udp_state.try_send((&*self.udp).into(), &t) {
                        debug!(error = %e, to = %destination, "udp send failed");
                    }
                }
            } else {
                debug!(error = %e, to = %destination, "udp send failed");
            }
        }
        batch.buf.clear();
        batch.count = 0;
        batch.closed = false;
    }

    /// Closes the ICE-TCP connections among a finished session's addresses:
    /// dropping the sender ends the writer, which ends the connection.
    pub fn close_tcp(&self, addrs: &[(Protocol, SocketAddr)]) {
        self.tcp.close(addrs);
    }

    fn send_tcp(&self, t: Transmit) -> bool {
        let conns = self.tcp.conns.read();
        match conns.get(&t.destination) {
            Some(tx) => !matches!(
                tx.try_send(t.contents.into()),
                Err(mpsc::error::TrySendError::Full(_))
            ),
            None => true,
        }
    }
}

/// Receives on the shared UDP socket forever, handing packets to their shard.
pub fn run_udp_receiver(
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    demux: Arc<Demux>,
    inbound: Arc<impl Inbound + ?Sized>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, source) = match socket.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e) => {
                // ICMP port-unreachable from a gone peer surfaces here on Linux.
                debug!(error = %e, "udp receive error");
                continue;
            }
        };
        let data = &buf[..n];
        let Some((route, new)) = demux.route(Protocol::Udp, source, data) else {
            continue;
        };
        let d = Datagram {
            peer: route.peer,
            proto: Protocol::Udp,
            source,
            destination: local,
            data: data.to_vec(),
            at: Instant::now(),
            new_addr: new,
        };
        inbound.deliver(route.shard, d);
    }
}

#[cfg(test)]
mod tests {
    use std::panic::{AssertUnwindSafe, catch_unwind};

    use super::*;

    /// A session's panic inside `write` leaves the shared batch as it was:
    /// the next flush sends only the whole datagrams.
    #[test]
    fn a_panic_while_writing_leaves_no_partial_datagram() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        let out = NetOut::new(tx.clone(), Arc::default()).unwrap();
        let (src, dst) = (tx.local_addr().unwrap(), rx.local_addr().unwrap());
        let mut batch = SendBatch::default();
        let queue = |batch: &mut SendBatch, fill: u8, panics: bool| {
            out.queue_with(batch, Protocol::Udp, src, dst, 100, &mut |b| {
                b[..50].fill(fill);
                assert!(!panics, "a session's bug");
                b[50..].fill(fill);
            })
        };
        assert!(queue(&mut batch, 1, false));
        let r = catch_unwind(AssertUnwindSafe(|| queue(&mut batch, 2, true)));
        assert!(r.is_err());
        assert_eq!((batch.buf.len(), batch.count), (100, 1));
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
        assert!(batch.buf.is_empty() && batch.count == 0 && batch.destination.is_none());
    }
}
