//! The two sockets every peer shares: one UDP socket and one ICE-TCP listener
//! (passive, RFC 4571: each packet is prefixed with its 16-bit length).
//!
//! Incoming packets are routed to the worker shard that owns the peer: by source
//! address once known, and for a new address by the ICE username in its STUN
//! binding request (`<our ufrag>:<their ufrag>`).

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::RwLock;
use str0m::net::{Protocol, Transmit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::{debug, info};

use super::shard::ShardMsg;
use crate::listener::{Conn, GuardedStream, Limits, Shutdown};

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
    by_ufrag: RwLock<HashMap<String, Route>>,
}

impl Demux {
    pub fn add_ufrag(&self, ufrag: &str, route: Route) {
        self.by_ufrag.write().insert(ufrag.to_string(), route);
    }

    /// Forgets a peer: its ufrag and every address it used.
    pub fn remove(&self, ufrag: &str, addrs: &[(Protocol, SocketAddr)]) {
        self.by_ufrag.write().remove(ufrag);
        let mut by_addr = self.by_addr.write();
        for a in addrs {
            by_addr.remove(a);
        }
    }

    /// Finds the peer a packet belongs to, learning new addresses from STUN.
    /// Returns whether the address was new, so the shard can remember it.
    pub fn route(&self, proto: Protocol, source: SocketAddr, data: &[u8]) -> Option<(Route, bool)> {
        if let Some(r) = self.by_addr.read().get(&(proto, source)) {
            return Some((*r, false));
        }
        let ufrag = stun_local_ufrag(data)?;
        let route = *self.by_ufrag.read().get(ufrag)?;
        self.by_addr.write().insert((proto, source), route);
        Some((route, true))
    }
}

/// The local part of the USERNAME attribute of a STUN binding request.
fn stun_local_ufrag(data: &[u8]) -> Option<&str> {
    // STUN: first two bits zero, magic cookie at 4..8 (RFC 5389 §6).
    if data.len() < 20 || data[0] & 0xc0 != 0 || data[4..8] != [0x21, 0x12, 0xa4, 0x42] {
        return None;
    }
    let len = u16::from_be_bytes([data[2], data[3]]) as usize;
    let body = data.get(20..20 + len)?;
    let mut i = 0;
    while i + 4 <= body.len() {
        let typ = u16::from_be_bytes([body[i], body[i + 1]]);
        let alen = u16::from_be_bytes([body[i + 2], body[i + 3]]) as usize;
        let value = body.get(i + 4..i + 4 + alen)?;
        if typ == 0x0006 {
            let username = std::str::from_utf8(value).ok()?;
            return username.split(':').next();
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
    shards: Vec<crossbeam_channel::Sender<ShardMsg>>,
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
        let _ = shards[route.shard].send(msg);
    }
}

/// Accepts ICE-TCP connections (through the shared listener core) and reads
/// RFC 4571 frames from each, until `shutdown`.
#[allow(clippy::too_many_arguments)]
pub async fn run_tcp_listener(
    listener: TcpListener,
    local: SocketAddr,
    demux: Arc<Demux>,
    conns: Arc<TcpConns>,
    shards: Vec<crossbeam_channel::Sender<ShardMsg>>,
    limits: Limits,
    shutdown: Shutdown,
) {
    crate::listener::serve(listener, "ice-tcp", limits, shutdown, move |c: Conn| {
        let demux = demux.clone();
        let conns = conns.clone();
        let shards = shards.clone();
        async move {
            let peer = c.peer;
            // Also when the listener drops this future (timeout, shutdown):
            // the writer task ends once its sender is gone from the map.
            let _forget = Forget(&conns, peer);
            // On shutdown the sessions are closed by the engine; the socket goes with them.
            tokio::select! {
                r = serve_tcp_peer(c.stream, peer, local, &demux, &conns, &shards) => {
                    if let Err(e) = r {
                        debug!(%peer, error = %e, "ice-tcp connection closed");
                    }
                }
                _ = c.shutdown.wait() => {}
            }
        }
    })
    .await
}

/// Removes a TCP peer's sender from the map when dropped.
struct Forget<'a>(&'a TcpConns, SocketAddr);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.conns.write().remove(&self.1);
    }
}

async fn serve_tcp_peer(
    stream: GuardedStream,
    peer: SocketAddr,
    local: SocketAddr,
    demux: &Demux,
    conns: &TcpConns,
    shards: &[crossbeam_channel::Sender<ShardMsg>],
) -> std::io::Result<()> {
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(TCP_QUEUE);
    conns.conns.write().insert(peer, tx);
    let writer = tokio::spawn(async move {
        let mut out = Vec::with_capacity(MAX_DATAGRAM + 2);
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
    });
    let mut len_buf = [0u8; 2];
    let mut first = true;
    let result = loop {
        if let Err(e) = rd.read_exact(&mut len_buf).await {
            break Err(e);
        }
        let len = u16::from_be_bytes(len_buf) as usize;
        let mut data = vec![0u8; len];
        if let Err(e) = rd.read_exact(&mut data).await {
            break Err(e);
        }
        let Some((route, new)) = demux.route(Protocol::Tcp, peer, &data) else {
            if first {
                // The first frame must be a STUN check for a peer we know.
                info!(%peer, "ice-tcp connection without a known ICE username, closing");
                break Ok(());
            }
            continue;
        };
        first = false;
        let msg = ShardMsg::Net {
            peer: route.peer,
            proto: Protocol::Tcp,
            source: peer,
            destination: local,
            data,
            at: Instant::now(),
            new_addr: new,
        };
        if shards[route.shard].send(msg).is_err() {
            break Ok(());
        }
    };
    writer.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding_request(username: &str) -> Vec<u8> {
        let mut attr = vec![0x00, 0x06];
        attr.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attr.extend_from_slice(username.as_bytes());
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(attr.len() as u16).to_be_bytes());
        m.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&attr);
        m
    }

    #[test]
    fn routes_by_ufrag_then_by_address() {
        let d = Demux::default();
        let r = Route { shard: 1, peer: 9 };
        d.add_ufrag("abcd", r);
        let a: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        assert_eq!(d.route(Protocol::Udp, a, b"\x80\x60rtp"), None);
        assert_eq!(
            d.route(Protocol::Udp, a, &binding_request("abcd:xyz")),
            Some((r, true))
        );
        assert_eq!(d.route(Protocol::Udp, a, b"\x80\x60rtp"), Some((r, false)));
        assert_eq!(
            d.route(Protocol::Udp, a, &binding_request("zzzz:xyz")),
            Some((r, false))
        );
        d.remove("abcd", &[(Protocol::Udp, a)]);
        assert_eq!(
            d.route(Protocol::Udp, a, &binding_request("abcd:xyz")),
            None
        );
    }

    #[test]
    fn stun_parser_survives_garbage() {
        assert_eq!(stun_local_ufrag(&[]), None);
        assert_eq!(stun_local_ufrag(&[0u8; 19]), None);
        let mut m = binding_request("u:v");
        m[3] = 200; // length past the end
        assert_eq!(stun_local_ufrag(&m), None);
        for n in 0..m.len() {
            let _ = stun_local_ufrag(&m[..n]);
        }
    }
}
