//! ICE-TCP (RFC 4571, passive): one connection per peer address, its first
//! frame a signed STUN check for a live session.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use str0m::net::Protocol;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::{debug, info};

use super::{Datagram, Demux, Inbound, MAX_DATAGRAM, PacketBuf};
use crate::listener::{Conn, Limits, Shutdown};
use crate::log_every::LogEvery;

/// ICE-TCP connections refused (no valid first check) logged at most this often.
static TCP_REFUSED_LOG: LogEvery = LogEvery::new(Duration::from_secs(10));

/// An ICE-TCP connection must deliver its first complete frame (a signed STUN
/// check) within this time.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(5);

/// Packets queued for one TCP peer before new ones are dropped (as UDP would).
const TCP_QUEUE: usize = 1024;

#[derive(Default)]
pub struct TcpConns {
    pub(super) conns: RwLock<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>,
}

impl TcpConns {
    pub(super) fn close(&self, addrs: &[(Protocol, SocketAddr)]) {
        if !addrs.iter().any(|(p, _)| *p == Protocol::Tcp) {
            return;
        }
        let mut conns = self.conns.write();
        for (_, a) in addrs.iter().filter(|(p, _)| *p == Protocol::Tcp) {
            conns.remove(a);
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

    /// Whether the connection is closed already (no waiting for data).
    async fn closed_now(c: &mut TcpStream) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_millis(200), c.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}
