//! The two sockets every peer shares: one UDP socket and one ICE-TCP listener
//! (passive, RFC 4571: each packet is prefixed with its 16-bit length).
//!
//! Incoming packets are routed to the worker shard that owns the peer: by source
//! address once known, and for a new address by the ICE username in its STUN
//! binding request (`<our ufrag>:<their ufrag>`).

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::hmac;
use parking_lot::RwLock;
use str0m::net::{Protocol, Transmit};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::{debug, info};

use super::shard::{ShardMsg, ShardTx};
use crate::listener::{Conn, Limits, Shutdown};
use crate::log_every::LogEvery;

/// ICE-TCP connections refused (no valid first check) logged at most this often.
static TCP_REFUSED_LOG: LogEvery = LogEvery::new(Duration::from_secs(10));

/// An ICE-TCP connection must deliver its first complete frame (a signed STUN
/// check) within this time.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(5);

/// Packets queued for one TCP peer before new ones are dropped (as UDP would).
const TCP_QUEUE: usize = 1024;
/// Largest datagram accepted; WebRTC packets stay under the path MTU.
const MAX_DATAGRAM: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub shard: usize,
    pub peer: u64,
}

/// Routing tables from the network to the shards.
#[derive(Default)]
pub struct Demux {
    by_addr: RwLock<HashMap<(Protocol, SocketAddr), Route>>,
    /// Our ICE ufrag → the session, and our ICE password (the STUN key).
    by_ufrag: RwLock<HashMap<String, (Route, String)>>,
}

impl Demux {
    /// Routes STUN checks for `ufrag` to `route`; `pwd` is the session's
    /// local ICE password, which signs the checks the peer sends.
    pub fn add_ufrag(&self, ufrag: &str, pwd: &str, route: Route) {
        self.by_ufrag
            .write()
            .insert(ufrag.to_string(), (route, pwd.to_string()));
    }

    /// Forgets a peer: its ufrag and every address it used.
    pub fn remove(&self, ufrag: &str, addrs: &[(Protocol, SocketAddr)]) {
        self.by_ufrag.write().remove(ufrag);
        self.forget(addrs);
    }

    /// Forgets addresses (a session's, or one over its cap).
    pub fn forget(&self, addrs: &[(Protocol, SocketAddr)]) {
        if addrs.is_empty() {
            return;
        }
        let mut by_addr = self.by_addr.write();
        for a in addrs {
            by_addr.remove(a);
        }
    }

    /// Finds the peer a packet belongs to. A new address is learned only
    /// from a STUN check that names a session's ufrag *and* carries a valid
    /// MESSAGE-INTEGRITY for its password: a forged check cannot steer a
    /// session's packets. Returns whether the address was new, so the
    /// shard can remember it.
    pub fn route(&self, proto: Protocol, source: SocketAddr, data: &[u8]) -> Option<(Route, bool)> {
        if let Some(r) = self.by_addr.read().get(&(proto, source)) {
            return Some((*r, false));
        }
        let check = stun_check(data)?;
        let route = {
            let by_ufrag = self.by_ufrag.read();
            let (route, pwd) = by_ufrag.get(check.ufrag)?;
            if !check.signed_by(data, pwd) {
                return None;
            }
            *route
        };
        self.by_addr.write().insert((proto, source), route);
        Some((route, true))
    }
}

/// A STUN message's local ufrag and where its MESSAGE-INTEGRITY is.
struct StunCheck<'a> {
    ufrag: &'a str,
    /// Offset of the MESSAGE-INTEGRITY attribute's header in the message.
    integrity_at: usize,
    integrity: &'a [u8],
}

impl StunCheck<'_> {
    /// RFC 5389 §15.4: HMAC-SHA1 keyed with the password over the message up
    /// to the attribute, the header's length covering the attribute.
    fn signed_by(&self, data: &[u8], pwd: &str) -> bool {
        let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, pwd.as_bytes());
        let mut ctx = hmac::Context::with_key(&key);
        let len = (self.integrity_at + 24 - 20) as u16;
        ctx.update(&data[..2]);
        ctx.update(&len.to_be_bytes());
        ctx.update(&data[4..self.integrity_at]);
        let tag = ctx.sign();
        bool::from(tag.as_ref().ct_eq(self.integrity))
    }
}

/// Reads a STUN message's USERNAME (the local part: `<ours>:<theirs>`) and
/// MESSAGE-INTEGRITY; None if it is not STUN or lacks either.
fn stun_check(data: &[u8]) -> Option<StunCheck<'_>> {
    // STUN: first two bits zero, magic cookie at 4..8 (RFC 5389 §6).
    if data.len() < 20 || data[0] & 0xc0 != 0 || data[4..8] != [0x21, 0x12, 0xa4, 0x42] {
        return None;
    }
    let len = u16::from_be_bytes([data[2], data[3]]) as usize;
    let body = data.get(20..20 + len)?;
    let mut ufrag = None;
    let mut i = 0;
    while i + 4 <= body.len() {
        let typ = u16::from_be_bytes([body[i], body[i + 1]]);
        let alen = u16::from_be_bytes([body[i + 2], body[i + 3]]) as usize;
        let value = body.get(i + 4..i + 4 + alen)?;
        match typ {
            0x0006 => {
                let username = std::str::from_utf8(value).ok()?;
                ufrag = username.split(':').next();
            }
            0x0008 if alen == 20 => {
                return Some(StunCheck {
                    ufrag: ufrag?,
                    integrity_at: 20 + i,
                    integrity: value,
                });
            }
            _ => {}
        }
        i += 4 + alen.div_ceil(4) * 4;
    }
    None
}

/// Senders for every open ICE-TCP connection, by remote address.
#[derive(Default)]
pub struct TcpConns {
    conns: RwLock<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>,
}

impl TcpConns {
    fn close(&self, addrs: &[(Protocol, SocketAddr)]) {
        if !addrs.iter().any(|(p, _)| *p == Protocol::Tcp) {
            return;
        }
        let mut conns = self.conns.write();
        for (_, a) in addrs.iter().filter(|(p, _)| *p == Protocol::Tcp) {
            conns.remove(a);
        }
    }
}

/// GSO batches stay under the 64 KiB limit of one UDP send.
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
        let joins = batch.destination == Some(t.destination)
            && !batch.closed
            && len <= batch.segment
            && batch.count < self.max_segments()
            && batch.buf.len() + len <= MAX_BATCH_BYTES;
        if !joins {
            self.flush(batch);
            batch.destination = Some(t.destination);
            batch.segment = len;
        }
        batch.buf.extend_from_slice(&t.contents);
        batch.count += 1;
        batch.closed = len < batch.segment;
        true
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
    shards: Vec<ShardTx>,
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
        let msg = ShardMsg::Net {
            peer: route.peer,
            proto: Protocol::Udp,
            source,
            destination: local,
            data: data.to_vec(),
            at: Instant::now(),
            new_addr: new,
        };
        shards[route.shard].data(msg);
    }
}

/// Serves ICE-TCP connections (RFC 4571 framing), one call per connection.
/// The accept loop (with its caps and timeouts) is the caller's.
pub struct IceTcp {
    pub(super) local: SocketAddr,
    pub(super) demux: Arc<Demux>,
    pub(super) conns: Arc<TcpConns>,
    pub(super) shards: Vec<ShardTx>,
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
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(TCP_QUEUE);
        // Weak: closing the session (dropping the map's sender) must end the writer.
        let ours = tx.downgrade();
        self.conns.conns.write().insert(peer, tx);
        let _forget = Forget {
            conns: &self.conns,
            peer,
            ours,
        };
        let mut writer = tokio::spawn(async move {
            let mut out = Vec::with_capacity(MAX_DATAGRAM + 2);
            // Ends when the session ends (its sender is dropped) or on error.
            while let Some(pkt) = rx.recv().await {
                let Ok(len) = u16::try_from(pkt.len()) else {
                    continue;
                };
                out.clear();
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&pkt);
                if wr.write_all(&out).await.is_err() {
                    break;
                }
            }
            let _ = wr.shutdown().await;
        });
        let mut route = Some((route, new));
        let result = loop {
            if let (Some((r, new)), Some(d)) = (route, data.take()) {
                self.shards[r.shard].data(ShardMsg::Net {
                    peer: r.peer,
                    proto: Protocol::Tcp,
                    source: peer,
                    destination: self.local,
                    data: d,
                    at: Instant::now(),
                    new_addr: new,
                });
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

/// Forgets a connection's sender when its handler ends or is dropped (timeout,
/// shutdown), unless the address was reused by a newer connection meanwhile;
/// the writer task ends once its sender is gone.
struct Forget<'a> {
    conns: &'a TcpConns,
    peer: SocketAddr,
    ours: mpsc::WeakSender<Vec<u8>>,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        let mut conns = self.conns.conns.write();
        if conns
            .get(&self.peer)
            .is_some_and(|t| self.ours.upgrade().is_some_and(|o| o.same_channel(t)))
        {
            conns.remove(&self.peer);
        }
    }
}

/// Reads one RFC 4571 frame; `Ok(None)` for one longer than a datagram.
#[doc(hidden)]
pub async fn read_frame<R: AsyncRead + Unpin>(
    rd: &mut R,
    len_buf: &mut [u8; 2],
) -> std::io::Result<Option<Vec<u8>>> {
    rd.read_exact(len_buf).await?;
    let len = u16::from_be_bytes(*len_buf) as usize;
    if len > MAX_DATAGRAM {
        return Ok(None);
    }
    let mut data = vec![0u8; len];
    rd.read_exact(&mut data).await?;
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
    use super::*;
    use tokio::net::TcpStream;

    /// A binding request as an ICE agent sends it, signed with `pwd`
    /// (USERNAME, MESSAGE-INTEGRITY, FINGERPRINT-like trailer).
    fn binding_request(username: &str, pwd: &str) -> Vec<u8> {
        let mut attrs = vec![0x00, 0x06];
        attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attrs.extend_from_slice(username.as_bytes());
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        let mut m = vec![0x00, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42];
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&attrs);
        // Length up to the end of MESSAGE-INTEGRITY, then sign.
        let len = (m.len() - 20 + 24) as u16;
        m[2..4].copy_from_slice(&len.to_be_bytes());
        let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, pwd.as_bytes());
        let tag = hmac::sign(&key, &m);
        m.extend_from_slice(&[0x00, 0x08, 0x00, 20]);
        m.extend_from_slice(tag.as_ref());
        // FINGERPRINT follows and is not covered.
        m.extend_from_slice(&[0x80, 0x28, 0x00, 0x04, 1, 2, 3, 4]);
        let len = (m.len() - 20) as u16;
        m[2..4].copy_from_slice(&len.to_be_bytes());
        m
    }

    #[test]
    fn routes_by_signed_ufrag_then_by_address() {
        let d = Demux::default();
        let r = Route { shard: 1, peer: 9 };
        d.add_ufrag("abcd", "secretpassword", r);
        let a: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        assert_eq!(d.route(Protocol::Udp, a, b"\x80\x60rtp"), None);
        // A known ufrag with the wrong key, or without integrity: not learned.
        let forged = binding_request("abcd:xyz", "guessed");
        assert_eq!(d.route(Protocol::Udp, a, &forged), None);
        assert_eq!(d.route(Protocol::Udp, a, b"\x80\x60rtp"), None);
        let mut tampered = binding_request("abcd:xyz", "secretpassword");
        tampered[10] ^= 1; // the transaction id is covered
        assert_eq!(d.route(Protocol::Udp, a, &tampered), None);
        assert_eq!(
            d.route(
                Protocol::Udp,
                a,
                &binding_request("abcd:xyz", "secretpassword")
            ),
            Some((r, true))
        );
        assert_eq!(d.route(Protocol::Udp, a, b"\x80\x60rtp"), Some((r, false)));
        assert_eq!(
            d.route(Protocol::Udp, a, &binding_request("zzzz:xyz", "x")),
            Some((r, false))
        );
        // The same address over TCP is another route, learned on its own.
        assert_eq!(d.route(Protocol::Tcp, a, b"\x80\x60rtp"), None);
        d.remove("abcd", &[(Protocol::Udp, a)]);
        assert_eq!(
            d.route(
                Protocol::Udp,
                a,
                &binding_request("abcd:xyz", "secretpassword")
            ),
            None
        );
    }

    #[test]
    fn stun_parser_survives_garbage() {
        assert!(stun_check(&[]).is_none());
        assert!(stun_check(&[0u8; 19]).is_none());
        let good = binding_request("u:v", "p");
        assert!(stun_check(&good).is_some_and(|c| c.ufrag == "u" && c.signed_by(&good, "p")));
        let mut m = good.clone();
        m[3] = 200; // length past the end
        assert!(stun_check(&m).is_none());
        for n in 0..good.len() {
            if let Some(c) = stun_check(&good[..n]) {
                let _ = c.signed_by(&good[..n], "p");
            }
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
        let metrics = Arc::new(super::super::metrics::ShardMetrics::default());
        let (tx, rx) = super::super::shard::shard_queues(metrics, 16);
        let ice = Arc::new(IceTcp {
            local: addr,
            demux: demux.clone(),
            conns: Arc::new(TcpConns::default()),
            shards: vec![tx],
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
        assert!(rx.data_is_empty());

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
        assert!(!rx.data_is_empty());
        assert!(!closed_now(&mut c).await, "open while the session runs");
        ice.conns.close(&[(Protocol::Tcp, me)]);
        assert!(closed(&mut c).await, "closed with its session");
        let deadline = Instant::now() + Duration::from_secs(5);
        while conns() != 0 {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
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
