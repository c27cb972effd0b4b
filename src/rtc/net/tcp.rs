//! ICE-TCP (RFC 4571, passive): one connection per peer address, its first
//! frame a signed STUN check for a live session.
//!
//! Sending: a shard frames each packet straight into its connection's
//! [`TcpOutbox`] (one buffer, bounded in bytes) and wakes the connection's
//! writer once per flush, which sends everything queued with one write. The
//! shard finds a connection's outbox in the shared map once, not per packet.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use str0m::net::Protocol;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tracing::{debug, info};

use super::{Datagram, Demux, Inbound, MAX_DATAGRAM, PacketBuf};
use crate::listener::{Conn, Limits, Shutdown};
use crate::log_every::LogEvery;

/// ICE-TCP connections refused (no valid first check) logged at most this often.
static TCP_REFUSED_LOG: LogEvery = LogEvery::new(Duration::from_secs(10));

/// An ICE-TCP connection must deliver its first complete frame (a signed STUN
/// check) within this time.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(5);

/// Framed bytes queued for one peer before its packets are refused (as a
/// lossy UDP path would lose them; the viewer is skipped ahead to a
/// keyframe). The writer may hold as much again, being sent.
const TCP_QUEUE_BYTES: usize = 1024 * 1024;

/// Capacity a connection's buffers keep between bursts: a delta frame's
/// packets fit; a keyframe grows them for the time it takes to send it.
const TCP_RETAIN_BYTES: usize = 32 * 1024;

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
    /// outbox of `destination`'s connection; its writer is woken at the
    /// shard's next [`TcpConns::wake`]. Without a connection the packet is
    /// dropped (true). False when the outbox is full: the peer cannot keep
    /// up.
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
        let mut q = outbox.queued.lock();
        if q.closed {
            return true;
        }
        if q.bytes.len() + 2 + len > TCP_QUEUE_BYTES {
            return false;
        }
        let q = &mut *q;
        let start = q.bytes.len();
        q.bytes.extend_from_slice(&frame_len.to_be_bytes());
        q.bytes.resize(start + 2 + len, 0);
        // A panic in `write` (a session's bug) takes the frame back out: a
        // partial one would go out at the next wake.
        let mut frame = Unframed {
            bytes: &mut q.bytes,
            start,
        };
        write(&mut frame.bytes[start + 2..]);
        frame.start = usize::MAX;
        drop(frame);
        if !q.wake_queued {
            q.wake_queued = true;
            shard.to_wake.push(outbox.clone());
        }
        true
    }

    /// Wakes the writers of the outboxes written to since the last wake.
    pub(super) fn wake(shard: &mut TcpSends) {
        for o in shard.to_wake.drain(..) {
            o.queued.lock().wake_queued = false;
            o.ready.notify_one();
        }
    }
}

/// A shard's side of the ICE-TCP connections: the outboxes it has sent to
/// (looked up in the shared map once per connection, not per packet), and
/// those whose writers its next flush wakes.
#[derive(Default)]
pub struct TcpSends {
    known: HashMap<SocketAddr, Arc<TcpOutbox>>,
    /// How many `known` held after its last sweep of closed outboxes.
    swept: usize,
    to_wake: Vec<Arc<TcpOutbox>>,
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

    /// Whether a flush has writers to wake.
    pub(super) fn is_empty(&self) -> bool {
        self.to_wake.is_empty()
    }
}

/// The framed packets waiting for one connection's writer.
pub(super) struct TcpOutbox {
    queued: Mutex<Queued>,
    /// Set with `Queued::closed`, read without the lock by shards checking
    /// whether what they remember is still live.
    closed: AtomicBool,
    ready: Notify,
}

#[derive(Default)]
struct Queued {
    /// RFC 4571 frames, in order.
    bytes: Vec<u8>,
    /// Nothing more is taken: the writer sends what is here and stops.
    closed: bool,
    /// A shard's `to_wake` holds this outbox.
    wake_queued: bool,
}

impl TcpOutbox {
    fn new() -> TcpOutbox {
        TcpOutbox {
            queued: Mutex::new(Queued {
                bytes: Vec::with_capacity(TCP_RETAIN_BYTES),
                ..Queued::default()
            }),
            closed: AtomicBool::new(false),
            ready: Notify::new(),
        }
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn close(&self) {
        self.queued.lock().closed = true;
        self.closed.store(true, Ordering::Release);
        self.ready.notify_one();
    }

    /// Sends what shards queue, one write per wake, until closed (what was
    /// queued before goes out first) or the connection fails.
    async fn run_writer<W: AsyncWrite + Unpin>(&self, wr: &mut W) {
        let mut sending = Vec::with_capacity(TCP_RETAIN_BYTES);
        loop {
            let closed = {
                let mut q = self.queued.lock();
                std::mem::swap(&mut q.bytes, &mut sending);
                q.closed
            };
            if !sending.is_empty() {
                if wr.write_all(&sending).await.is_err() {
                    return;
                }
                sending.clear();
                sending.shrink_to(TCP_RETAIN_BYTES);
            }
            if closed {
                return;
            }
            self.ready.notified().await;
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
    pub async fn serve<S>(&self, stream: S, peer: SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        if let Err(e) = self.serve_inner(stream, peer).await {
            debug!(%peer, error = %e, "ice-tcp connection closed");
        }
    }

    async fn serve_inner<S>(&self, stream: S, peer: SocketAddr) -> std::io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(stream);
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
        let outbox = Arc::new(TcpOutbox::new());
        if let Some(old) = self.conns.conns.write().insert(peer, outbox.clone()) {
            old.close();
        }
        let _forget = Forget {
            conns: &self.conns,
            peer,
            ours: outbox.clone(),
        };
        // Ends when the session ends (the outbox is closed) or on error.
        let mut writer = tokio::spawn(async move {
            outbox.run_writer(&mut wr).await;
            let _ = wr.shutdown().await;
        });
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
        self.ours.queued.lock().bytes = Vec::new();
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
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let demux = Arc::new(Demux::default());
        demux.add_ufrag("abcd", "secretpassword", Route { shard: 0, peer: 7 });
        let rx = Arc::new(Received::default());
        let ice = Arc::new(IceTcp {
            local: addr,
            demux: demux.clone(),
            conns: Arc::new(TcpConns::default()),
            inbound: rx.clone(),
        });
        tokio::spawn(run_tcp_listener(
            listener,
            ice.clone(),
            crate::listener::Limits::from_config(&Default::default()),
            crate::listener::Shutdown::default(),
        ));
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
        let mut c = TcpStream::connect(addr).await.unwrap();
        let me = c.local_addr().unwrap();
        c.write_all(&framed(&binding_request("abcd:x", "secretpassword")))
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while conns() == 0 {
            assert!(Instant::now() < deadline, "no connection entry");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
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
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let demux = Arc::new(Demux::default());
        demux.add_ufrag("abcd", "secretpassword", Route { shard: 0, peer: 7 });
        let ice = Arc::new(IceTcp {
            local: addr,
            demux,
            conns: Arc::new(TcpConns::default()),
            inbound: Arc::new(Received::default()),
        });
        tokio::spawn(run_tcp_listener(
            listener,
            ice.clone(),
            crate::listener::Limits::from_config(&Default::default()),
            crate::listener::Shutdown::default(),
        ));
        let mut c = TcpStream::connect(addr).await.unwrap();
        let me = c.local_addr().unwrap();
        c.write_all(&framed(&binding_request("abcd:x", "secretpassword")))
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ice.conns.conns.read().contains_key(&me) {
            assert!(Instant::now() < deadline, "no connection entry");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (ice, c, me)
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

    fn net_out(ice: &IceTcp) -> super::super::NetOut {
        let udp = Arc::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
        super::super::NetOut::new(udp, ice.conns.clone()).unwrap()
    }

    /// A shard's packets reach the peer framed, whole and in order, once it
    /// flushes (not before); a panic while one is written leaves no partial
    /// frame; packets to an address without a connection are dropped.
    #[tokio::test]
    async fn a_shards_packets_reach_an_ice_tcp_peer_framed_and_in_order_at_its_flush() {
        let (ice, mut c, me) = connected().await;
        let net = net_out(&ice);
        let mut batch = super::super::SendBatch::default();
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
        // Again: the writer was woken once more.
        assert!(net.queue_with(&mut batch, Protocol::Tcp, me, 40, &mut |b| b.fill(8)));
        net.flush(&mut batch);
        assert_eq!(frames(&mut c, 1).await, vec![vec![8u8; 40]]);
    }

    /// A peer that reads nothing fills its outbox: packets are refused once
    /// its bytes are at the bound (the shard then skips the viewer ahead),
    /// and what was queued is not lost.
    #[tokio::test]
    async fn an_ice_tcp_peer_that_does_not_read_is_refused_at_the_byte_bound() {
        let (ice, mut c, me) = connected().await;
        let net = net_out(&ice);
        let mut batch = super::super::SendBatch::default();
        // Never flushed: nothing leaves the outbox.
        let mut queued = 0;
        while net.queue_with(&mut batch, Protocol::Tcp, me, 1200, &mut |b| b.fill(1)) {
            queued += 1;
            assert!(queued <= TCP_QUEUE_BYTES / 1202, "no bound");
        }
        assert_eq!(queued, TCP_QUEUE_BYTES / 1202);
        net.flush(&mut batch);
        let got = frames(&mut c, queued).await;
        assert!(got.iter().all(|f| f == &vec![1u8; 1200]));
        // Drained, it takes packets again.
        assert!(net.queue_with(&mut batch, Protocol::Tcp, me, 10, &mut |b| b.fill(2)));
    }

    /// Ending the session sends what was queued, then closes the connection;
    /// a shard that remembers the connection drops later packets to it, and
    /// a new connection from the same address gets them.
    #[tokio::test]
    async fn a_closed_ice_tcp_connection_sends_what_was_queued_then_closes() {
        let (ice, mut c, me) = connected().await;
        let net = net_out(&ice);
        let mut batch = super::super::SendBatch::default();
        assert!(net.queue_with(&mut batch, Protocol::Tcp, me, 100, &mut |b| b.fill(3)));
        ice.conns.close(&[(Protocol::Tcp, me)]);
        net.flush(&mut batch);
        assert_eq!(frames(&mut c, 1).await, vec![vec![3u8; 100]]);
        assert!(closed(&mut c).await, "closed with its session");
        assert!(net.queue_with(&mut batch, Protocol::Tcp, me, 100, &mut |b| b.fill(4)));
        // A newer connection from the address (made here without a socket).
        let newer = Arc::new(TcpOutbox::new());
        ice.conns.conns.write().insert(me, newer.clone());
        assert!(net.queue_with(&mut batch, Protocol::Tcp, me, 5, &mut |b| b.fill(5)));
        assert_eq!(newer.queued.lock().bytes, [0, 5, 5, 5, 5, 5, 5]);
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
