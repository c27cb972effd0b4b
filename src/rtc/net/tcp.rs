//! ICE-TCP (RFC 4571, passive): one connection per peer address, its first
//! frame a signed STUN check for a live session.
//!
//! Sending: a shard frames each packet straight into its connection's
//! [`TcpOutbox`] and writes the outbox to the socket itself, without
//! waiting, at its flush (or as soon as a burst reaches `TCP_WRITE_AT_BYTES`),
//! so a frame's packets to a viewer leave in one `send` and no task is woken.
//! What the socket does not take stays in the outbox (bounded in bytes) for
//! the connection's writer task, which waits for the socket to drain; until
//! it has, shards only append. A shard finds a connection's outbox in the
//! shared map once, not per packet.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use str0m::net::Protocol;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tracing::{debug, info};

use super::{Datagram, Demux, Inbound, MAX_DATAGRAM, PacketBuf};
use crate::listener::{Conn, GuardedStream, GuardedWriteHalf, Limits, Shutdown};
use crate::log_every::LogEvery;

/// ICE-TCP connections refused (no valid first check) logged at most this often.
static TCP_REFUSED_LOG: LogEvery = LogEvery::new(Duration::from_secs(10));

/// An ICE-TCP connection must deliver its first complete frame (a signed STUN
/// check) within this time.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(5);

/// Framed bytes an outbox holds while its socket is full before the peer's
/// packets are refused (as a lossy UDP path would lose them; the viewer is
/// skipped ahead to a keyframe).
const TCP_QUEUE_BYTES: usize = 1024 * 1024;

/// A shard writes an outbox out once it holds this much, not only at its
/// flush: a keyframe written to many viewers then never sits whole in every
/// viewer's buffer at once. A 2.5 Mbit/s stream's delta frame (~10 KB)
/// still leaves in one write; what an outbox keeps resident is about this.
const TCP_WRITE_AT_BYTES: usize = 16 * 1024;

/// Capacity an outbox keeps once written out: one burst's worth.
const TCP_RETAIN_BYTES: usize = TCP_WRITE_AT_BYTES + 2 + MAX_DATAGRAM;

/// A shard keeps the outboxes it found without sweeping out closed ones
/// until it knows at least this many.
const KNOWN_SWEEP_MIN: usize = 64;

/// The connections by peer address: written when a connection is made or
/// ends, read by a shard when it first sends to a peer.
#[derive(Default)]
pub struct TcpConns {
    pub(super) conns: RwLock<HashMap<SocketAddr, Arc<TcpOutbox>>>,
}

impl TcpConns {
    /// Ends the connections among a finished session's addresses: each
    /// writer sends what is queued, then closes its connection.
    pub(super) fn close(&self, addrs: &[(Protocol, SocketAddr)]) {
        if !addrs.iter().any(|(p, _)| *p == Protocol::Tcp) {
            return;
        }
        let mut conns = self.conns.write();
        for (_, a) in addrs.iter().filter(|(p, _)| *p == Protocol::Tcp) {
            if let Some(o) = conns.remove(a) {
                o.close();
            }
        }
    }

    /// Frames a packet of `len` bytes, which `write` fills in place, into the
    /// outbox of `destination`'s connection, to be written at the shard's
    /// next [`TcpConns::flush`] (or now, once a burst is large). Without a
    /// connection the packet is dropped (true). False when the outbox is
    /// full: the peer cannot keep up.
    pub(super) fn queue(
        &self,
        shard: &mut TcpSends,
        destination: SocketAddr,
        len: usize,
        write: &mut dyn FnMut(&mut [u8]),
    ) -> bool {
        let Ok(frame_len) = u16::try_from(len) else {
            return true; // cannot be framed; str0m's MTU keeps packets far below
        };
        if shard.known.get(&destination).is_none_or(|o| o.is_closed()) {
            let Some(o) = self.conns.read().get(&destination).cloned() else {
                shard.known.remove(&destination);
                return true;
            };
            shard.remember(destination, o);
        }
        let outbox = &shard.known[&destination];
        let mut guard = outbox.queued.lock();
        let q = &mut *guard;
        if outbox.is_closed() {
            return true;
        }
        if q.bytes.len() + 2 + len > TCP_QUEUE_BYTES {
            return false;
        }
        let start = q.bytes.len();
        q.bytes.extend_from_slice(&frame_len.to_be_bytes());
        q.bytes.resize(start + 2 + len, 0);
        // A panic in `write` (a session's bug) takes the frame back out: a
        // partial one would go out with the next write.
        let mut frame = Unframed {
            bytes: &mut q.bytes,
            start,
        };
        write(&mut frame.bytes[start + 2..]);
        frame.start = usize::MAX;
        drop(frame);
        let backlog = q.bytes.len() >= TCP_WRITE_AT_BYTES && q.write_now();
        if !q.flush_queued {
            q.flush_queued = true;
            shard.to_flush.push(outbox.clone());
        }
        drop(guard);
        if backlog {
            outbox.backlog.notify_one();
        }
        true
    }

    /// Writes out the outboxes written to since the last flush.
    pub(super) fn flush(shard: &mut TcpSends) {
        for o in shard.to_flush.drain(..) {
            let backlog = {
                let mut q = o.queued.lock();
                q.flush_queued = false;
                q.write_now()
            };
            if backlog {
                o.backlog.notify_one();
            }
        }
    }
}

/// A shard's side of the ICE-TCP connections: the outboxes it has sent to
/// (looked up in the shared map once per connection, not per packet), and
/// those its next flush writes out.
#[derive(Default)]
pub struct TcpSends {
    known: HashMap<SocketAddr, Arc<TcpOutbox>>,
    /// How many `known` held after its last sweep of closed outboxes.
    swept: usize,
    to_flush: Vec<Arc<TcpOutbox>>,
}

impl TcpSends {
    fn remember(&mut self, destination: SocketAddr, outbox: Arc<TcpOutbox>) {
        // Closed outboxes (gone connections) are swept out once `known` has
        // doubled, so it stays within twice the live connections.
        if self.known.len() >= KNOWN_SWEEP_MIN.max(2 * self.swept) {
            self.known.retain(|_, o| !o.is_closed());
            self.swept = self.known.len();
        }
        self.known.insert(destination, outbox);
    }

    /// Whether a flush has outboxes to write out.
    pub(super) fn is_empty(&self) -> bool {
        self.to_flush.is_empty()
    }
}

impl Drop for TcpSends {
    /// A shard's loop that ends (or restarts after a panic) with outboxes
    /// still to flush writes them out: each stays marked as queued until
    /// then, and would otherwise never be flushed again.
    fn drop(&mut self) {
        TcpConns::flush(self);
    }
}

/// One connection's framed packets not yet written, and its socket.
pub(super) struct TcpOutbox {
    queued: Mutex<Queued>,
    /// Nothing more is taken: the writer sends what is queued and stops.
    /// Set under `queued`'s lock; shards also read it without the lock, to
    /// tell whether what they remember is still live.
    closed: AtomicBool,
    /// Wakes the writer: the socket did not take everything, or the outbox
    /// was closed.
    backlog: Notify,
}

struct Queued {
    /// RFC 4571 frames, in order.
    bytes: Vec<u8>,
    /// Taken out when the connection ends, so that a shard still remembering
    /// the outbox holds no socket open.
    socket: Option<Arc<GuardedWriteHalf>>,
    /// A shard's `to_flush` holds this outbox.
    flush_queued: bool,
    /// The writer sends `bytes` as the socket drains (or the outbox closed);
    /// shards only append.
    backlogged: bool,
}

impl Queued {
    /// Writes what the socket takes now, unless the writer has the bytes.
    /// True when the writer must take over the rest.
    fn write_now(&mut self) -> bool {
        if self.backlogged || self.bytes.is_empty() {
            return false;
        }
        let Some(socket) = &self.socket else {
            self.bytes.clear();
            return false;
        };
        match socket.try_write(&self.bytes) {
            Ok(n) if n == self.bytes.len() => {
                self.bytes.clear();
                false
            }
            Ok(n) => {
                self.bytes.drain(..n);
                self.backlogged = true;
                true
            }
            // Full (the writer waits for room), or failed (the writer sees it
            // too and ends the connection).
            Err(_) => {
                self.backlogged = true;
                true
            }
        }
    }
}

impl TcpOutbox {
    fn new(socket: GuardedWriteHalf) -> TcpOutbox {
        TcpOutbox {
            queued: Mutex::new(Queued {
                bytes: Vec::with_capacity(TCP_RETAIN_BYTES),
                socket: Some(Arc::new(socket)),
                flush_queued: false,
                backlogged: false,
            }),
            closed: AtomicBool::new(false),
            backlog: Notify::new(),
        }
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Takes nothing more; the writer sends what is queued, then ends.
    fn close(&self) {
        {
            let mut q = self.queued.lock();
            q.backlogged = true;
            self.closed.store(true, Ordering::Release);
        }
        self.backlog.notify_one();
    }

    /// Sends what the socket did not take at a shard's write, as it drains,
    /// until the outbox is closed and empty or the connection fails.
    async fn run_writer(&self) {
        loop {
            let socket = {
                let mut q = self.queued.lock();
                if !q.backlogged {
                    None
                } else if q.bytes.is_empty() {
                    if self.is_closed() {
                        q.socket = None; // the write side shuts down
                        return;
                    }
                    q.backlogged = false;
                    q.bytes.shrink_to(TCP_RETAIN_BYTES);
                    None
                } else {
                    match &q.socket {
                        Some(s) => Some(s.clone()),
                        None => return,
                    }
                }
            };
            let Some(socket) = socket else {
                self.backlog.notified().await;
                continue;
            };
            if socket.writable().await.is_err() {
                return;
            }
            // Under the lock: shards may be appending meanwhile.
            let mut q = self.queued.lock();
            match socket.try_write(&q.bytes) {
                Ok(n) => {
                    q.bytes.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    }
}

/// Takes a frame back out of an outbox unless it was written (`start` set to
/// `usize::MAX`).
struct Unframed<'a> {
    bytes: &'a mut Vec<u8>,
    start: usize,
}

impl Drop for Unframed<'_> {
    fn drop(&mut self) {
        if self.start != usize::MAX {
            self.bytes.truncate(self.start);
        }
    }
}

/// Serves ICE-TCP connections (RFC 4571 framing), one call per connection.
/// The accept loop (with its caps and timeouts) is the caller's.
pub struct IceTcp {
    pub local: SocketAddr,
    pub demux: Arc<Demux>,
    pub conns: Arc<TcpConns>,
    pub inbound: Arc<dyn Inbound>,
}

impl IceTcp {
    /// Serves one accepted connection until it or its session ends. The
    /// first frame must be a STUN check signed for a live session, or the
    /// connection is closed before anything is allocated for it.
    pub async fn serve(&self, stream: GuardedStream, peer: SocketAddr) {
        if let Err(e) = self.serve_inner(stream, peer).await {
            debug!(%peer, error = %e, "ice-tcp connection closed");
        }
    }

    async fn serve_inner(&self, stream: GuardedStream, peer: SocketAddr) -> std::io::Result<()> {
        let (mut rd, wr) = stream.into_split();
        let mut len_buf = [0u8; 2];
        // A connection that starts a frame and stalls holds nothing for long.
        let mut data = tokio::time::timeout(FIRST_FRAME_TIMEOUT, read_frame(&mut rd, &mut len_buf))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "no complete first frame")
            })??;
        let Some((route, new)) = data
            .as_deref()
            .and_then(|d| self.demux.route(Protocol::Tcp, peer, d))
        else {
            if let Some(suppressed) = TCP_REFUSED_LOG.allow() {
                info!(%peer, suppressed, "ice-tcp connection without a valid STUN check for a known session, closing");
            }
            return Ok(());
        };
        let outbox = Arc::new(TcpOutbox::new(wr));
        if let Some(old) = self.conns.conns.write().insert(peer, outbox.clone()) {
            old.close();
        }
        let _forget = Forget {
            conns: &self.conns,
            peer,
            ours: outbox.clone(),
        };
        // Ends when the session ends (the outbox is closed) or on error.
        let mut writer = tokio::spawn(async move { outbox.run_writer().await });
        let mut route = Some((route, new));
        let result = loop {
            if let (Some((r, new)), Some(d)) = (route, data.take()) {
                self.inbound.deliver(
                    r.shard,
                    Datagram {
                        peer: r.peer,
                        proto: Protocol::Tcp,
                        source: peer,
                        destination: self.local,
                        data: d,
                        at: Instant::now(),
                        new_addr: new,
                    },
                );
            }
            let frame = tokio::select! {
                f = read_frame(&mut rd, &mut len_buf) => f,
                // The session ended: the connection goes with it.
                _ = &mut writer => break Ok(()),
            };
            data = match frame {
                Ok(d) => d,
                Err(e) => break Err(e),
            };
            let Some(d) = data.as_deref() else {
                break Ok(()); // not WebRTC
            };
            // Unroutable frames (the session is gone) are dropped.
            route = self.demux.route(Protocol::Tcp, peer, d);
        };
        writer.abort();
        result
    }
}

/// Forgets a connection's outbox when its handler ends or is dropped
/// (timeout, shutdown), unless the address was reused by a newer connection
/// meanwhile, and closes it: shards that remember it drop it, and what it
/// held is freed.
struct Forget<'a> {
    conns: &'a TcpConns,
    peer: SocketAddr,
    ours: Arc<TcpOutbox>,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        {
            let mut conns = self.conns.conns.write();
            if conns
                .get(&self.peer)
                .is_some_and(|o| Arc::ptr_eq(o, &self.ours))
            {
                conns.remove(&self.peer);
            }
        }
        self.ours.close();
        let mut q = self.ours.queued.lock();
        q.bytes = Vec::new();
        q.socket = None;
    }
}

/// Reads one RFC 4571 frame; `Ok(None)` for one longer than a datagram.
#[doc(hidden)]
pub async fn read_frame<R: AsyncRead + Unpin>(
    rd: &mut R,
    len_buf: &mut [u8; 2],
) -> std::io::Result<Option<PacketBuf>> {
    rd.read_exact(len_buf).await?;
    let len = u16::from_be_bytes(*len_buf) as usize;
    if len > MAX_DATAGRAM {
        return Ok(None);
    }
    let mut data = PacketBuf::take();
    rd.read_exact(&mut data.space()[..len]).await?;
    data.filled(len);
    Ok(Some(data))
}

/// Accepts ICE-TCP connections through the shared listener core (caps,
/// timeouts) and serves each with [`IceTcp::serve`], until `shutdown`.
pub async fn run_tcp_listener(
    listener: TcpListener,
    ice: Arc<IceTcp>,
    limits: Limits,
    shutdown: Shutdown,
) {
    crate::listener::serve(listener, "ice-tcp", limits, shutdown, move |c: Conn| {
        let ice = ice.clone();
        async move {
            let _ = c.stream.get_ref().set_nodelay(true);
            // On shutdown the sessions are closed by the engine; the socket goes with them.
            tokio::select! {
                () = ice.serve(c.stream, c.peer) => {}
                _ = c.shutdown.wait() => {}
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::super::{Route, binding_request};
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    /// What the listener delivered, by shard and peer.
    #[derive(Default)]
    struct Received(parking_lot::Mutex<Vec<(usize, u64)>>);

    impl Inbound for Received {
        fn deliver(&self, shard: usize, d: Datagram) {
            self.0.lock().push((shard, d.peer));
        }
    }

    /// Frames a packet as RFC 4571 does.
    fn framed(data: &[u8]) -> Vec<u8> {
        let mut v = (data.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(data);
        v
    }

    /// Whether the server closed the connection (EOF or reset) within 5 s.
    async fn closed(c: &mut TcpStream) -> bool {
        let mut buf = [0u8; 64];
        loop {
            match tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    #[tokio::test]
    async fn ice_tcp_allocates_nothing_before_a_signed_check_and_closes_with_its_session() {
        let rx = Arc::new(Received::default());
        let ice = serving(rx.clone()).await;
        let addr = ice.local;
        let conns = || ice.conns.conns.read().len();

        // Not STUN, a forged check, a frame longer than a datagram: closed,
        // with no sender or writer made and nothing queued to the shard.
        for first in [
            framed(b"GET / HTTP/1.1"),
            framed(&binding_request("abcd:x", "guessed")),
            (4000u16.to_be_bytes()).to_vec(),
        ] {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(&first).await.unwrap();
            assert!(closed(&mut c).await);
            assert_eq!(conns(), 0);
        }
        assert!(rx.0.lock().is_empty());

        // A signed check: the connection is the session's, until it ends.
        let (mut c, me) = connect(&ice).await;
        assert!(!rx.0.lock().is_empty());
        assert!(!closed_now(&mut c).await, "open while the session runs");
        ice.conns.close(&[(Protocol::Tcp, me)]);
        assert!(closed(&mut c).await, "closed with its session");
        let deadline = Instant::now() + Duration::from_secs(5);
        while conns() != 0 {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// An ICE-TCP listener with one session's connection made: the
    /// server's side, the peer's stream and its address.
    async fn connected() -> (Arc<IceTcp>, TcpStream, SocketAddr) {
        let ice = serving(Arc::new(Received::default())).await;
        let (c, me) = connect(&ice).await;
        (ice, c, me)
    }

    /// An ICE-TCP listener for one session (ufrag `abcd`), delivering to `rx`.
    async fn serving(rx: Arc<Received>) -> Arc<IceTcp> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let demux = Arc::new(Demux::default());
        demux.add_ufrag("abcd", "secretpassword", Route { shard: 0, peer: 7 });
        let ice = Arc::new(IceTcp {
            local: listener.local_addr().unwrap(),
            demux,
            conns: Arc::new(TcpConns::default()),
            inbound: rx,
        });
        tokio::spawn(run_tcp_listener(
            listener,
            ice.clone(),
            crate::listener::Limits::from_config(&Default::default()),
            crate::listener::Shutdown::default(),
        ));
        ice
    }

    /// Another connection for the session: the peer's stream and address.
    async fn connect(ice: &IceTcp) -> (TcpStream, SocketAddr) {
        let mut c = TcpStream::connect(ice.local).await.unwrap();
        let me = c.local_addr().unwrap();
        c.write_all(&framed(&binding_request("abcd:x", "secretpassword")))
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ice.conns.conns.read().contains_key(&me) {
            assert!(Instant::now() < deadline, "no connection entry");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (c, me)
    }

    /// The next `n` RFC 4571 frames from the server (5 s at most).
    async fn frames(c: &mut TcpStream, n: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut len_buf = [0u8; 2];
        for _ in 0..n {
            let f = tokio::time::timeout(Duration::from_secs(5), read_frame(c, &mut len_buf))
                .await
                .expect("a frame within 5 s")
                .unwrap()
                .unwrap();
            out.push(f.to_vec());
        }
        out
    }

    /// A connected session (as `connected`) and a shard's sending side.
    async fn sending() -> (
        Arc<IceTcp>,
        TcpStream,
        SocketAddr,
        super::super::NetOut,
        super::super::SendBatch,
    ) {
        let (ice, c, me) = connected().await;
        let udp = Arc::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
        let net = super::super::NetOut::new(udp, ice.conns.clone()).unwrap();
        (ice, c, me, net, super::super::SendBatch::default())
    }

    /// A shard's packets reach the peer framed, whole and in order, once it
    /// flushes (not before); a panic while one is written leaves no partial
    /// frame; packets to an address without a connection are dropped; a
    /// batch dropped unflushed still writes its packets out.
    #[tokio::test]
    async fn a_shards_packets_reach_an_ice_tcp_peer_framed_and_in_order_at_its_flush() {
        let (_ice, mut c, me, net, mut batch) = sending().await;
        let mut want = Vec::new();
        for (i, len) in [1200usize, 1200, 1, 500, 1200].into_iter().enumerate() {
            let fill = i as u8 + 1;
            assert!(net.queue_with(&mut batch, Protocol::Tcp, me, len, &mut |b| b.fill(fill)));
            want.push(vec![fill; len]);
        }
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            net.queue_with(&mut batch, Protocol::Tcp, me, 300, &mut |b| {
                b[..100].fill(9);
                panic!("a session's bug");
            })
        }));
        assert!(r.is_err());
        let nobody: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert!(net.queue_with(&mut batch, Protocol::Tcp, nobody, 100, &mut |b| b.fill(7)));
        let mut one = [0u8; 1];
        assert!(
            tokio::time::timeout(Duration::from_millis(200), c.peek(&mut one))
                .await
                .is_err(),
            "nothing is sent before the flush"
        );
        net.flush(&mut batch);
        assert_eq!(frames(&mut c, want.len()).await, want);
        // Again, at the next flush.
        assert!(net.queue_with(&mut batch, Protocol::Tcp, me, 40, &mut |b| b.fill(8)));
        net.flush(&mut batch);
        assert_eq!(frames(&mut c, 1).await, vec![vec![8u8; 40]]);
        // A batch dropped unflushed (a shard's loop restarting) writes out
        // what it holds, and the next batch flushes that outbox as usual.
        let mut dropped = super::super::SendBatch::default();
        assert!(net.queue_with(&mut dropped, Protocol::Tcp, me, 30, &mut |b| b.fill(6)));
        drop(dropped);
        assert_eq!(frames(&mut c, 1).await, vec![vec![6u8; 30]]);
        assert!(net.queue_with(&mut batch, Protocol::Tcp, me, 31, &mut |b| b.fill(5)));
        net.flush(&mut batch);
        assert_eq!(frames(&mut c, 1).await, vec![vec![5u8; 31]]);
    }

    /// A peer that reads nothing fills the socket's buffers, then its
    /// outbox: packets are refused once the outbox is at its bound (the
    /// shard then skips the viewer ahead); what was taken is not lost, and
    /// the writer sends it as the peer reads.
    #[tokio::test]
    async fn an_ice_tcp_peer_that_does_not_read_is_refused_at_the_byte_bound() {
        let (ice, mut c, me, net, mut batch) = sending().await;
        let mut queued = 0usize;
        loop {
            let fill = (queued % 251) as u8;
            if !net.queue_with(&mut batch, Protocol::Tcp, me, 1200, &mut |b| b.fill(fill)) {
                break;
            }
            queued += 1;
            if queued.is_multiple_of(64) {
                net.flush(&mut batch);
            }
            assert!(queued < (64 << 20) / 1202, "no bound within 64 MB");
        }
        let held = ice.conns.conns.read()[&me].queued.lock().bytes.len();
        assert!(
            held <= TCP_QUEUE_BYTES && held + 1202 > TCP_QUEUE_BYTES,
            "{held}"
        );
        net.flush(&mut batch);
        let got = frames(&mut c, queued).await;
        for (i, f) in got.iter().enumerate() {
            assert_eq!(f, &vec![(i % 251) as u8; 1200], "frame {i}");
        }
        // Drained, it takes packets again, written at the flush.
        assert!(net.queue_with(&mut batch, Protocol::Tcp, me, 10, &mut |b| b.fill(2)));
        net.flush(&mut batch);
        assert_eq!(frames(&mut c, 1).await, vec![vec![2u8; 10]]);
    }

    /// Ending the session sends what was queued, then closes the connection;
    /// a shard that remembers the connection drops later packets to it, and
    /// a newer connection at the same address gets them.
    #[tokio::test]
    async fn a_closed_ice_tcp_connection_sends_what_was_queued_then_closes() {
        let (ice, mut c, me, net, mut batch) = sending().await;
        assert!(net.queue_with(&mut batch, Protocol::Tcp, me, 100, &mut |b| b.fill(3)));
        ice.conns.close(&[(Protocol::Tcp, me)]);
        net.flush(&mut batch);
        assert_eq!(frames(&mut c, 1).await, vec![vec![3u8; 100]]);
        assert!(closed(&mut c).await, "closed with its session");
        assert!(net.queue_with(&mut batch, Protocol::Tcp, me, 100, &mut |b| b.fill(4)));
        // A newer connection at the address: here another peer's outbox,
        // mapped under it.
        let (mut c2, me2) = connect(&ice).await;
        let newer = ice.conns.conns.read()[&me2].clone();
        ice.conns.conns.write().insert(me, newer);
        assert!(net.queue_with(&mut batch, Protocol::Tcp, me, 5, &mut |b| b.fill(5)));
        net.flush(&mut batch);
        assert_eq!(frames(&mut c2, 1).await, vec![vec![5u8; 5]]);
    }

    /// Whether the connection is closed already (no waiting for data).
    async fn closed_now(c: &mut TcpStream) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_millis(200), c.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}
