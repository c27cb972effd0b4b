//! One accept loop for every TCP listener (HTTP, HTTPS, RTMP, RTMPS, OME,
//! ICE-TCP), transport-neutral: it knows sockets, not protocols.
//!
//! - A cap on open connections per listener and per client address (an IPv6
//!   /64 counts as one address). A connection over a cap is closed at once.
//! - Back-off on accept errors: with no file descriptors left (EMFILE) the
//!   listening socket stays readable, so retrying at once would spin.
//! - Each connection's stream is a [`Guarded`]: nothing received within the
//!   first-bytes timeout, or no byte in either direction for the idle timeout,
//!   and it is closed. The watchdog runs beside the handler, so a stream handed
//!   on (a WebSocket upgrade) is still watched and still counted.
//! - Each connection runs on its own task; a panic in it is caught and logged.
//! - Shutdown: stop accepting, let handlers finish (they see [`Shutdown`]),
//!   close what is left after the grace.
//!
//! Refusals and accept errors are logged at most once per interval.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tracing::{debug, error, info, warn};

use crate::auth::Cidr;
use crate::config::ConnectionsConfig;
use crate::log_every::LogEvery;

/// Caps and timeouts of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub max_per_address: usize,
    pub first_bytes_timeout: Duration,
    pub idle_timeout: Duration,
    /// After shutdown, how long a handler may take before its stream is closed.
    pub grace: Duration,
    /// Addresses the per-address cap does not apply to (a reverse proxy
    /// carries many clients); the global cap still does.
    pub exempt: &'static [Cidr],
}

impl Limits {
    pub fn from_config(c: &ConnectionsConfig) -> Limits {
        Limits {
            max_connections: c.max_per_listener,
            max_per_address: c.max_per_address,
            first_bytes_timeout: Duration::from_secs(c.first_bytes_timeout_secs),
            idle_timeout: Duration::from_secs(c.idle_timeout_secs),
            grace: Duration::from_secs(c.shutdown_grace_secs),
            exempt: &[],
        }
    }

    pub fn with_exempt(self, exempt: &'static [Cidr]) -> Limits {
        Limits { exempt, ..self }
    }
}

/// Process-wide stop request: listeners stop accepting, handlers finish.
#[derive(Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            tx: Arc::new(watch::channel(false).0),
        }
    }
}

impl Shutdown {
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    pub fn is_triggered(&self) -> bool {
        *self.tx.borrow()
    }

    /// Resolves once [`Shutdown::trigger`] was called (at once if it was).
    pub async fn wait(&self) {
        let mut rx = self.tx.subscribe();
        // The sender lives in self, so this cannot fail.
        let _ = rx.wait_for(|stop| *stop).await;
    }

    /// [`Shutdown::wait`] as a `'static` future (to end a stream with).
    pub fn wait_owned(&self) -> impl Future<Output = ()> + Send + use<> {
        let me = self.clone();
        async move { me.wait().await }
    }
}

const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Counters of one listener, for logs and metrics.
#[derive(Debug, Default)]
pub struct ListenerStats {
    pub open: AtomicU64,
    pub accepted: AtomicU64,
    pub refused: AtomicU64,
    pub timed_out: AtomicU64,
    pub panicked: AtomicU64,
    pub accept_errors: AtomicU64,
    /// Most connections open at once since the last memory release.
    peak: AtomicU64,
}

static REGISTRY: Mutex<Vec<(&'static str, Arc<ListenerStats>)>> = Mutex::new(Vec::new());

/// Every listener's counters, by name (for `/metrics`).
pub fn stats() -> Vec<(&'static str, Arc<ListenerStats>)> {
    REGISTRY.lock().clone()
}

/// Prometheus text for every listener's counters.
pub fn render_metrics(out: &mut String) {
    use std::fmt::Write;
    let all = stats();
    type Counter = fn(&ListenerStats) -> &AtomicU64;
    let metrics: [(&str, &str, &str, Counter); 6] = [
        ("open", "gauge", "Open connections.", |s| &s.open),
        ("accepted_total", "counter", "Connections accepted.", |s| {
            &s.accepted
        }),
        (
            "refused_total",
            "counter",
            "Connections closed at once: over a cap.",
            |s| &s.refused,
        ),
        (
            "timed_out_total",
            "counter",
            "Connections closed by the first-bytes or idle timeout.",
            |s| &s.timed_out,
        ),
        (
            "panics_total",
            "counter",
            "Connection handlers that panicked.",
            |s| &s.panicked,
        ),
        (
            "accept_errors_total",
            "counter",
            "Accept errors (EMFILE…), each followed by a back-off.",
            |s| &s.accept_errors,
        ),
    ];
    for (name, kind, help, get) in metrics {
        let _ = writeln!(
            out,
            "# HELP roomcast_listener_{name} {help}\n# TYPE roomcast_listener_{name} {kind}"
        );
        for (listener, s) in &all {
            let _ = writeln!(
                out,
                "roomcast_listener_{name}{{listener=\"{listener}\"}} {}",
                get(s).load(Ordering::Relaxed)
            );
        }
    }
}

/// What a handler gets for each accepted connection.
pub struct Conn {
    pub stream: Guarded<TcpStream>,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// Triggered when the process stops: finish up (the stream is closed
    /// anyway after the grace).
    pub shutdown: Shutdown,
}

impl Conn {
    /// An accepted socket holding its place (`slot`) under the caps, watched
    /// through the returned state; the `Notify` fires when the slot is given
    /// back.
    fn new(
        sock: TcpStream,
        slot: Slot,
        peer: SocketAddr,
        local: SocketAddr,
        shutdown: Shutdown,
    ) -> (Conn, Arc<ConnState>, Arc<Notify>) {
        let state = Arc::new(ConnState {
            epoch: Instant::now(),
            last_io_ms: AtomicU64::new(0),
            received: AtomicBool::new(false),
            killed: AtomicBool::new(false),
            read_waker: AtomicWaker::new(),
            write_waker: AtomicWaker::new(),
        });
        let gone = slot.gone.clone();
        let conn = Conn {
            stream: Guarded {
                io: sock,
                state: state.clone(),
                _slot: Arc::new(slot),
            },
            peer,
            local,
            shutdown,
        };
        (conn, state, gone)
    }
}

/// The address a per-address cap counts: IPv4 as is, IPv6 by its /64.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    }
}

#[derive(Default)]
struct AddressCounts {
    map: Mutex<HashMap<IpAddr, usize>>,
}

struct AddressSlot {
    counts: Arc<AddressCounts>,
    key: IpAddr,
}

impl AddressCounts {
    fn try_take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<AddressSlot> {
        let key = address_key(ip);
        let mut map = self.map.lock();
        let n = map.entry(key).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            counts: self.clone(),
            key,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut map = self.counts.map.lock();
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// Timing and the kill switch of one connection, shared by its stream (or
/// halves) and its watchdog.
struct ConnState {
    epoch: Instant,
    /// ms since `epoch` of the last byte moved, either direction.
    last_io_ms: AtomicU64,
    received: AtomicBool,
    killed: AtomicBool,
    read_waker: AtomicWaker,
    write_waker: AtomicWaker,
}

impl ConnState {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn touch(&self) {
        self.last_io_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        self.read_waker.wake();
        self.write_waker.wake();
    }

    fn killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }

    /// Resolves when a timeout ran out: which one.
    async fn expired(&self, limits: &Limits) -> &'static str {
        loop {
            let (deadline, what) = if self.received.load(Ordering::Relaxed) {
                (
                    self.last_io_ms.load(Ordering::Relaxed)
                        + limits.idle_timeout.as_millis() as u64,
                    "idle timeout",
                )
            } else {
                (
                    limits.first_bytes_timeout.as_millis() as u64,
                    "nothing received within the first-bytes timeout",
                )
            };
            let now = self.now_ms();
            if now >= deadline {
                return what;
            }
            // Never past the idle timeout: the first bytes may start the
            // idle clock, and it may be the shorter one.
            let nap = Duration::from_millis(deadline - now).min(limits.idle_timeout);
            tokio::time::sleep(nap).await;
        }
    }
}

/// What keeps a connection counted: released when the stream (both halves) is dropped.
struct Slot {
    _permit: OwnedSemaphorePermit,
    _address: AddressSlot,
    stats: Arc<ListenerStats>,
    gone: Arc<Notify>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let open = self
            .stats
            .open
            .fetch_sub(1, Ordering::Relaxed)
            .saturating_sub(1);
        let peak = self.stats.peak.load(Ordering::Relaxed);
        // A burst (a flood of connections) has drained: its buffers are free.
        if peak >= RELEASE_AFTER_PEAK
            && open <= peak / 8
            && self
                .stats
                .peak
                .compare_exchange(peak, open, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            release_free_memory();
        }
        self.gone.notify_one();
    }
}

/// Bursts of at least this many connections give their memory back after.
const RELEASE_AFTER_PEAK: u64 = 128;

/// Hands freed heap back to the OS: glibc keeps what thousands of
/// connections freed in its per-thread arenas, so RSS would stay at the
/// flood's peak. Runs on a blocking thread (it walks the heap).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn_blocking(|| {
            // SAFETY: malloc_trim only returns free pages; no pointer is touched.
            unsafe { libc::malloc_trim(0) };
        });
    }
}

fn killed_error() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connection closed by the listener")
}

/// A stream under the listener's timeouts; see the module docs.
pub struct Guarded<S> {
    io: S,
    state: Arc<ConnState>,
    _slot: Arc<Slot>,
}

/// An accepted TCP connection under the listener's timeouts.
pub type GuardedStream = Guarded<TcpStream>;
/// The read half of a [`Guarded`] TCP stream.
pub type GuardedReadHalf = Guarded<tokio::net::tcp::OwnedReadHalf>;
/// The write half of a [`Guarded`] TCP stream.
pub type GuardedWriteHalf = Guarded<tokio::net::tcp::OwnedWriteHalf>;

impl<S> Guarded<S> {
    pub fn get_ref(&self) -> &S {
        &self.io
    }
}

impl Guarded<TcpStream> {
    /// Read and write halves for two tasks, still watched and counted as one.
    pub fn into_split(self) -> (GuardedReadHalf, GuardedWriteHalf) {
        let (r, w) = self.io.into_split();
        (
            Guarded {
                io: r,
                state: self.state.clone(),
                _slot: self._slot.clone(),
            },
            Guarded {
                io: w,
                state: self.state,
                _slot: self._slot,
            },
        )
    }
}

impl GuardedWriteHalf {
    /// Writes what the socket takes now, without waiting, from any thread (a
    /// WebRTC shard writing its ICE-TCP viewers' packets): refused once the
    /// listener has killed the connection, and counted as activity.
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        if self.state.killed() {
            return Err(killed_error());
        }
        let n = self.io.try_write(buf)?;
        if n > 0 {
            self.state.touch();
        }
        Ok(n)
    }

    /// Resolves once the socket may take more, or with an error once the
    /// listener kills the connection.
    pub async fn writable(&self) -> io::Result<()> {
        let ready = self.io.writable();
        tokio::pin!(ready);
        std::future::poll_fn(|cx| {
            if self.state.killed() {
                return Poll::Ready(Err(killed_error()));
            }
            if let Poll::Ready(r) = ready.as_mut().poll(cx) {
                return Poll::Ready(r);
            }
            // Registered before the check: a kill after it wakes us.
            self.state.write_waker.register(cx.waker());
            if self.state.killed() {
                return Poll::Ready(Err(killed_error()));
            }
            Poll::Pending
        })
        .await
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.state.killed() {
            return Poll::Ready(Err(killed_error()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.state.touch();
                    if !this.state.received.load(Ordering::Relaxed) {
                        this.state.received.store(true, Ordering::Relaxed);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                // Registered before the check: a kill after it wakes us.
                this.state.read_waker.register(cx.waker());
                if this.state.killed() {
                    return Poll::Ready(Err(killed_error()));
                }
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> Guarded<S> {
    fn after_write(
        &self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.state.touch();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending => {
                self.state.write_waker.register(cx.waker());
                if self.state.killed() {
                    return Poll::Ready(Err(killed_error()));
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.state.killed() {
            return Poll::Ready(Err(killed_error()));
        }
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.after_write(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.state.killed() {
            return Poll::Ready(Err(killed_error()));
        }
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.after_write(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.state.killed() {
            return Poll::Ready(Err(killed_error()));
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Where connections come from: a [`TcpListener`], or a fake in tests.
pub trait Accept: Send + 'static {
    fn accept(&mut self) -> impl Future<Output = io::Result<(TcpStream, SocketAddr)>> + Send;
}

impl Accept for TcpListener {
    async fn accept(&mut self) -> io::Result<(TcpStream, SocketAddr)> {
        TcpListener::accept(self).await
    }
}

/// Errors about one connection (it was reset before we took it): go on at once.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Serves `listener` until `shutdown`, then waits (at most `limits.grace`
/// plus a little) for its connections to end. `name` names it in logs.
pub async fn serve<A, H, F>(
    mut listener: A,
    name: &'static str,
    limits: Limits,
    shutdown: Shutdown,
    handler: H,
) where
    A: Accept,
    H: Fn(Conn) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let stats = Arc::new(ListenerStats::default());
    REGISTRY.lock().push((name, stats.clone()));
    let handler = Arc::new(handler);
    let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let permits = Arc::new(Semaphore::new(max));
    let addresses = Arc::new(AddressCounts::default());
    let refused_log = LogEvery::new(LOG_INTERVAL);
    let error_log = LogEvery::new(LOG_INTERVAL);
    let logs = Arc::new(ConnLogs::new());
    let mut backoff = BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.wait() => break,
            r = listener.accept() => r,
        };
        let (sock, peer) = match accepted {
            Ok(a) => {
                backoff = BACKOFF_MIN;
                a
            }
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS…: the socket stays readable, so wait.
                stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                if let Some(skipped) = error_log.allow() {
                    warn!(listener = name, error = %e, retry_in_ms = backoff.as_millis() as u64, skipped, "accept failed; backing off");
                }
                tokio::select! {
                    _ = shutdown.wait() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refuse(
                name,
                &stats,
                &refused_log,
                peer,
                "connection cap reached",
                max,
            );
            continue;
        };
        let ip = peer.ip().to_canonical();
        let per_address = if limits.exempt.iter().any(|c| c.contains(ip)) {
            usize::MAX
        } else {
            limits.max_per_address
        };
        let Some(address) = addresses.try_take(ip, per_address) else {
            refuse(
                name,
                &stats,
                &refused_log,
                peer,
                "per-address connection cap reached",
                limits.max_per_address,
            );
            continue;
        };
        let _ = sock.set_nodelay(true);
        let local = sock
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let open = stats.open.fetch_add(1, Ordering::Relaxed) + 1;
        stats.peak.fetch_max(open, Ordering::Relaxed);
        let slot = Slot {
            _permit: permit,
            _address: address,
            stats: stats.clone(),
            gone: Arc::new(Notify::new()),
        };
        let (conn, state, gone) = Conn::new(sock, slot, peer, local, shutdown.clone());
        tokio::spawn(run_connection(
            conn,
            handler.clone(),
            state,
            gone,
            limits,
            shutdown.clone(),
            stats.clone(),
            logs.clone(),
            name,
            peer,
        ));
    }
    // Stop accepting: new connections are refused by the kernel from here on.
    drop(listener);
    info!(
        listener = name,
        open = stats.open.load(Ordering::Relaxed),
        "listener stopped accepting"
    );
    // Every connection holds a permit until its stream is gone; the
    // connections close themselves by the grace.
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    let wait = limits.grace + Duration::from_millis(200);
    if tokio::time::timeout(wait, permits.acquire_many(all))
        .await
        .is_err()
    {
        warn!(
            listener = name,
            open = stats.open.load(Ordering::Relaxed),
            "connections still open after the shutdown grace"
        );
    }
}

struct ConnLogs {
    panic: LogEvery,
    timeout: LogEvery,
}

impl ConnLogs {
    fn new() -> ConnLogs {
        ConnLogs {
            panic: LogEvery::new(LOG_INTERVAL),
            timeout: LogEvery::new(LOG_INTERVAL),
        }
    }

    fn timed_out(&self, stats: &ListenerStats, name: &'static str, peer: SocketAddr, what: &str) {
        stats.timed_out.fetch_add(1, Ordering::Relaxed);
        match self.timeout.allow() {
            Some(skipped) => info!(listener = name, %peer, skipped, "{what}; connection closed"),
            None => debug!(listener = name, %peer, "{what}; connection closed"),
        }
    }
}

fn refuse(
    name: &'static str,
    stats: &ListenerStats,
    log: &LogEvery,
    peer: SocketAddr,
    why: &'static str,
    cap: usize,
) {
    stats.refused.fetch_add(1, Ordering::Relaxed);
    if let Some(skipped) = log.allow() {
        warn!(listener = name, %peer, cap, skipped, "{why}; connection closed");
    }
    // Dropping the socket closes it.
}

fn log_panic(
    stats: &ListenerStats,
    logs: &ConnLogs,
    name: &'static str,
    peer: SocketAddr,
    panic: Box<dyn std::any::Any + Send>,
) {
    stats.panicked.fetch_add(1, Ordering::Relaxed);
    if let Some(skipped) = logs.panic.allow() {
        let msg = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        error!(listener = name, %peer, panic = %msg, skipped, "connection handler panicked; connection closed");
    }
}

/// Binds a listening socket with a backlog for bursts of connects (the
/// kernel caps it at net.core.somaxconn).
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Runs one connection's handler beside its watchdog until both the handler
/// and the stream are done, a timeout runs out, or shutdown's grace ends.
#[allow(clippy::too_many_arguments)]
async fn run_connection<H, F>(
    conn: Conn,
    handler: Arc<H>,
    state: Arc<ConnState>,
    gone: Arc<Notify>,
    limits: Limits,
    shutdown: Shutdown,
    stats: Arc<ListenerStats>,
    logs: Arc<ConnLogs>,
    name: &'static str,
    peer: SocketAddr,
) where
    H: Fn(Conn) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    // The handler starts on the first bytes: until then an idle connection
    // costs this small task and its socket, not the protocol's buffers.
    // (A peek, not `readable()`: a fresh socket reports itself readable.)
    let mut probe = [0u8; 1];
    tokio::select! {
        r = conn.stream.io.peek(&mut probe) => {
            if !matches!(r, Ok(1..)) {
                // Closed by the client before a byte, or an error.
                return;
            }
        }
        what = state.expired(&limits) => {
            logs.timed_out(&stats, name, peer, what);
            return;
        }
        _ = shutdown.wait() => return,
    }
    // In a block: nothing of the unboxed future stays in this task's state.
    let mut fut = {
        let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(conn)));
        drop(handler);
        match started {
            Ok(f) => Box::pin(std::panic::AssertUnwindSafe(f).catch_unwind()),
            Err(panic) => {
                log_panic(&stats, &logs, name, peer, panic);
                return;
            }
        }
    };
    let mut handler_done = false;
    let mut stream_gone = false;
    let mut stop_at: Option<tokio::time::Instant> = None;
    loop {
        if handler_done && stream_gone {
            return;
        }
        tokio::select! {
            r = &mut fut, if !handler_done => {
                handler_done = true;
                if let Err(panic) = r {
                    log_panic(&stats, &logs, name, peer, panic);
                    state.kill();
                }
            }
            _ = gone.notified(), if !stream_gone => stream_gone = true,
            what = state.expired(&limits) => {
                logs.timed_out(&stats, name, peer, what);
                break;
            }
            _ = shutdown.wait(), if stop_at.is_none() => {
                if handler_done {
                    // A stream handed on (WebSocket) has no graceful path of its own.
                    break;
                }
                stop_at = Some(tokio::time::Instant::now() + limits.grace);
            }
            _ = tokio::time::sleep_until(stop_at.unwrap_or_else(tokio::time::Instant::now)), if stop_at.is_some() => {
                debug!(listener = name, %peer, "shutdown grace over; connection closed");
                break;
            }
        }
    }
    // Closing: the stream errors wherever it is, and the handler (with the
    // stream, if it still has it) is dropped.
    state.kill();
}

#[cfg(test)]
mod tests;
