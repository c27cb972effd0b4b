//! A worker thread that runs the WebRTC sessions (str0m `Rtc`s) of its viewers.
//!
//! Each shard owns its peers outright (no locks around an `Rtc`): network input
//! and frames from the hub arrive on its queues (or, for an engine's only
//! shard, network input straight from the UDP socket it reads), and one
//! sleep (`doorbell`) waits for them and the next timer that cannot wait
//! for them (`due`: reports and feedback checks ride other wake-ups). A frame
//! reaches a shard once however many of its viewers watch the stream, and each
//! viewer writes the shared payloads with its own SSRC and sequence numbers; only
//! SRTP and the send are per viewer.
//!
//! The loop owns its sessions by value and drives each through `&mut`: a
//! [`Viewer`] (sans I/O, in `viewer.rs`) or a publisher ([`PubPeer`]). What
//! the shard adds is the plumbing: queues, routes, metrics, the GSO batch,
//! panic isolation and the timer pass.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use parking_lot::Mutex;
use str0m::net::{Protocol, Receive, Transmit};
use str0m::{Event, IceConnectionState, Input, Output, Rtc};
use tracing::{debug, error, info, warn};

use super::direct::Route;
use super::doorbell::Doorbell;
use super::due::Due;
use super::metrics::ShardMetrics;
use super::net::{Datagram, Demux, Inbound, NetOut, SendBatch, UdpReader};
use super::publish::{NewPublisher, PubPeer};
use super::viewer::{CONNECT_TIMEOUT, NewViewer, Outbox, ReplayPace, Viewer};
use crate::hub::{ByteBudget, Frame, FrameSink, Stream};
use crate::log_every::LogEvery;
/// Media and network input queued for one shard at most (~6 MB of datagrams).
/// When full the oldest is dropped: viewers resume at the next keyframe, lost
/// datagrams are what UDP does anyway. Nothing waits for room.
pub const DATA_QUEUE: usize = 4096;
/// And the bytes of the frames among them (each up to
/// `limits.max_frame_bytes`), dropped oldest first the same way.
pub const DATA_QUEUE_FRAME_BYTES: usize = 32 << 20;
/// Source addresses one session may use (ICE candidates it checks from,
/// and their changes over its life).
const MAX_ADDRS_PER_SESSION: usize = 32;
/// Panics in a shard's loop (outside any one session) tolerated per minute;
/// beyond that the shard is marked dead and gets no new sessions.
const MAX_RESTARTS_PER_MINUTE: usize = 5;
/// Session panics and queue overflows are logged at most this often.
static PANIC_LOG: LogEvery = LogEvery::new(Duration::from_secs(10));
static DROP_LOG: LogEvery = LogEvery::new(Duration::from_secs(10));
/// A publisher sends media all the time: this much silence means it is gone
/// (killed, network lost) and the stream goes offline.
const PUBLISHER_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Shortest time between two passes over every peer's timers.
const SCAN_INTERVAL: Duration = Duration::from_millis(2);
/// Datagrams a shard that reads the UDP socket takes per turn of its loop
/// before it looks at its queues and timers again (a video frame from a
/// publisher is a few dozen).
const UDP_READ_BUDGET: usize = 256;

/// What a shard is sent. `Add`/`Remove`/publisher messages are control
/// messages (their own queue, never dropped); `Net` and `Frame` are data.
pub enum ShardMsg {
    Add(Box<NewViewer>),
    Remove(u64),
    AddPublisher(Box<NewPublisher>),
    RemovePublisher(u64),
    /// A viewer of the publisher's stream asked for a keyframe.
    PublisherKeyframe(u64),
    /// A WHEP client restarted ICE (`ice_path::IceRestart`).
    IceRestart(Box<super::ice_path::IceRestart>),
    Net(Datagram),
    Frame {
        stream: usize,
        frame: Arc<Frame>,
    },
}

/// What feeding network input needs of a session, viewer or publisher.
trait NetSession {
    /// For fault injection in tests.
    #[cfg(test)]
    fn id(&self) -> u64;
    fn net_parts(&mut self) -> (&mut Rtc, &mut Vec<(Protocol, SocketAddr)>, &mut Instant);
}

/// Both session types keep these under the same field names.
macro_rules! impl_net_session {
    ($($t:ty),*) => {$(
        impl NetSession for $t {
            #[cfg(test)]
            fn id(&self) -> u64 {
                self.id
            }
            fn net_parts(&mut self) -> (&mut Rtc, &mut Vec<(Protocol, SocketAddr)>, &mut Instant) {
                (&mut self.rtc, &mut self.addrs, &mut self.last_input)
            }
        }
    )*};
}
impl_net_session!(Viewer, PubPeer);

/// Hands a datagram to the session, remembering a new source address
/// (for the demux to forget when the session ends).
fn feed(
    d: &Datagram,
    demux: &Demux,
    net: &NetOut,
    rtc: &mut Rtc,
    addrs: &mut Vec<(Protocol, SocketAddr)>,
    last_input: &mut Instant,
) {
    if d.new_addr {
        if addrs.len() >= MAX_ADDRS_PER_SESSION {
            // The peer knows its ICE password and could sign checks from
            // any number of addresses: routes per session are capped.
            let addr = [(d.proto, d.source)];
            demux.forget(&addr);
            net.close_tcp(&addr);
            return;
        }
        addrs.push((d.proto, d.source));
    }
    let Ok(recv) = Receive::new(d.proto, d.source, d.destination, &d.data) else {
        return;
    };
    *last_input = d.at;
    if let Err(e) = rtc.handle_input(Input::Receive(d.at, recv)) {
        debug!(error = %e, "rtc rejected input");
    }
}

/// Where the engine finds a peer for `DELETE`.
pub type Registry = Arc<Mutex<HashMap<u64, (usize, String)>>>;

/// The way into a shard. Control messages have their own unbounded queue:
/// they are never lost, and their number is bounded by the sessions admitted
/// (and, for keyframe requests, by the hub's per-stream rate limit). Media
/// and network input share a queue bounded in entries and in frame bytes
/// that drops its oldest entries when full, so neither a publisher nor the
/// UDP receiver ever waits. Each
/// message rings the shard's doorbell, which costs a write only when the
/// shard sleeps.
#[derive(Clone)]
pub struct ShardTx {
    ctl: Sender<ShardMsg>,
    data: Sender<ShardMsg>,
    /// The data queue's receiving end, to drop its oldest entry.
    data_rx: Receiver<ShardMsg>,
    /// Bytes of the frames in the data queue (datagrams are bounded by
    /// their count: each is one pooled buffer).
    frame_bytes: Arc<ByteBudget>,
    doorbell: Arc<Doorbell>,
    /// False once the shard's thread is gone: it gets no new sessions.
    pub alive: Arc<AtomicBool>,
    metrics: Arc<ShardMetrics>,
}

/// The shard's ends of its queues.
pub struct ShardRx {
    ctl: Receiver<ShardMsg>,
    data: Receiver<ShardMsg>,
    frame_bytes: Arc<ByteBudget>,
    doorbell: Arc<Doorbell>,
}

impl ShardRx {
    fn has_work(&self) -> bool {
        !self.ctl.is_empty() || !self.data.is_empty()
    }

    /// The oldest data message, its bytes no longer counted as queued.
    fn take_data(&self) -> Result<ShardMsg, TryRecvError> {
        let msg = self.data.try_recv()?;
        release_frame_bytes(&self.frame_bytes, &msg);
        Ok(msg)
    }
}

fn frame_bytes(msg: &ShardMsg) -> usize {
    match msg {
        ShardMsg::Frame { frame, .. } => frame.bytes(),
        _ => 0,
    }
}

fn release_frame_bytes(budget: &ByteBudget, msg: &ShardMsg) {
    let n = frame_bytes(msg);
    if n > 0 {
        budget.release(n);
    }
}

/// A shard's queues: `capacity` data messages, of which frames of
/// `frame_bytes` in all.
pub fn shard_queues(
    metrics: Arc<ShardMetrics>,
    capacity: usize,
    frame_bytes: usize,
) -> std::io::Result<(ShardTx, ShardRx)> {
    let (ctl, ctl_rx) = crossbeam_channel::unbounded();
    let (data, data_rx) = crossbeam_channel::bounded(capacity);
    let frame_bytes = Arc::new(ByteBudget::new(frame_bytes));
    let doorbell = Arc::new(Doorbell::new()?);
    let tx = ShardTx {
        ctl,
        data,
        data_rx: data_rx.clone(),
        frame_bytes: frame_bytes.clone(),
        doorbell: doorbell.clone(),
        alive: Arc::new(AtomicBool::new(true)),
        metrics,
    };
    Ok((
        tx,
        ShardRx {
            ctl: ctl_rx,
            data: data_rx,
            frame_bytes,
            doorbell,
        },
    ))
}

impl ShardTx {
    pub fn is_alive(&self) -> bool {
        self.alive.load(Relaxed)
    }

    /// Queues a control message; false if the shard is dead (the caller
    /// must undo what it registered for the session).
    pub fn control(&self, msg: ShardMsg) -> bool {
        let sent = self.is_alive() && self.ctl.send(msg).is_ok();
        self.doorbell.ring();
        sent
    }

    /// Queues media or network input, dropping the oldest entries when the
    /// queue is full in entries or in frame bytes.
    pub fn data(&self, msg: ShardMsg) {
        let bytes = frame_bytes(&msg);
        if bytes > self.frame_bytes.max() {
            // Alone over the bound: this frame is what is dropped.
            self.metrics.queue_drops.fetch_add(1, Relaxed);
            return;
        }
        // A datagram (0 bytes) does not touch the shared count.
        while bytes > 0 && !self.frame_bytes.reserve(bytes) {
            if !self.drop_oldest() {
                // Empty, yet another producer's frame holds the bytes
                // between its reserve and its send: this one is dropped.
                self.metrics.queue_drops.fetch_add(1, Relaxed);
                return;
            }
        }
        match self.data.try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(msg)) => {
                self.drop_oldest();
                // Another producer may have taken the slot: then this one is dropped.
                if let Err(e) = self.data.try_send(msg) {
                    release_frame_bytes(&self.frame_bytes, &e.into_inner());
                }
            }
            Err(TrySendError::Disconnected(msg)) => {
                release_frame_bytes(&self.frame_bytes, &msg);
                return;
            }
        }
        self.doorbell.ring();
    }

    /// Drops the queue's oldest data message; false if it was empty.
    fn drop_oldest(&self) -> bool {
        let Ok(oldest) = self.data_rx.try_recv() else {
            return false;
        };
        release_frame_bytes(&self.frame_bytes, &oldest);
        self.metrics.queue_drops.fetch_add(1, Relaxed);
        if let Some(suppressed) = DROP_LOG.allow() {
            warn!(
                capacity = DATA_QUEUE,
                frame_bytes = DATA_QUEUE_FRAME_BYTES,
                suppressed,
                "webrtc worker queue full, dropping its oldest input (viewers resume at the next keyframe)"
            );
        }
        true
    }
}

/// The network's view of the shards: their data queues, by index.
impl Inbound for Vec<ShardTx> {
    fn deliver(&self, shard: usize, d: Datagram) {
        if let Some(tx) = self.get(shard) {
            tx.data(ShardMsg::Net(d));
        }
    }
}

/// The hub's view of a shard: a queue.
pub struct ShardSink {
    pub tx: ShardTx,
}

impl FrameSink for ShardSink {
    fn deliver(&self, stream: &Arc<Stream>, frame: &Arc<Frame>) {
        self.tx.data(ShardMsg::Frame {
            stream: stream_key(stream),
            frame: frame.clone(),
        });
    }
}

fn stream_key(s: &Arc<Stream>) -> usize {
    Arc::as_ptr(s) as usize
}

/// numbers instead of hashing an id per viewer.
#[derive(Default)]
struct Viewers {
    slots: Vec<Option<Viewer>>,
    free: Vec<usize>,
    by_id: HashMap<u64, usize>,
    /// Stream (by address) → slots of its viewers.
    by_stream: HashMap<usize, Vec<usize>>,
}

impl Viewers {
    fn insert(&mut self, id: u64, peer: Viewer) {
        let key = stream_key(&peer.stream);
        let slot = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(peer);
                i
            }
            None => {
                self.slots.push(Some(peer));
                self.slots.len() - 1
            }
        };
        self.by_id.insert(id, slot);
        self.by_stream.entry(key).or_default().push(slot);
    }

    fn get_mut(&mut self, id: u64) -> Option<&mut Viewer> {
        let slot = *self.by_id.get(&id)?;
        self.slots[slot].as_mut()
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut Viewer> {
        self.slots.iter_mut().flatten()
    }

    fn remove_dead(&mut self) -> Vec<Viewer> {
        let dead: Vec<u64> = self
            .by_id
            .iter()
            .filter(|(_, slot)| self.slots[**slot].as_ref().is_some_and(Viewer::is_finished))
            .map(|(id, _)| *id)
            .collect();
        let mut out = Vec::with_capacity(dead.len());
        for id in dead {
            let Some(slot) = self.by_id.remove(&id) else {
                continue;
            };
            let Some(p) = self.slots[slot].take() else {
                continue;
            };
            self.free.push(slot);
            let key = stream_key(&p.stream);
            if let Some(v) = self.by_stream.get_mut(&key) {
                v.retain(|s| *s != slot);
                if v.is_empty() {
                    self.by_stream.remove(&key);
                }
            }
            out.push(p);
        }
        out
    }
}

pub struct Shard {
    pub index: usize,
    pub rx: ShardRx,
    /// This shard's own queues, for publishers' keyframe requesters.
    pub tx: ShardTx,
    /// Where the engine finds a publisher for `DELETE`.
    pub publishers: Registry,
    pub sink: Arc<dyn FrameSink>,
    pub net: Arc<NetOut>,
    pub demux: Arc<Demux>,
    pub registry: Registry,
    pub metrics: Arc<ShardMetrics>,
    pub replay_pace: ReplayPace,
    /// The UDP socket (and its local address), when this shard reads it
    /// itself: the engine's only shard does (`net::UdpReader`).
    pub udp: Option<(Arc<std::net::UdpSocket>, SocketAddr)>,
}

/// What driving a session needs besides the session: the shard, the batch
/// its datagrams gather in, and when the sessions need their timers run (or
/// a dead one reaped).
struct Driver<'a> {
    shard: &'a Shard,
    /// Datagrams of the session being driven, sent together at the end
    /// (or, while `gathering`, of every session driven until then).
    batch: SendBatch,
    /// Set while a frame is written to every viewer, or a timer pass runs:
    /// their datagrams go out in few `sendmmsg`s, not one send per viewer.
    gathering: bool,
    /// A timer pass runs on the first wake-up from `timers.at`; the worker
    /// sleeps no later than `timers.by`.
    timers: Due,
}

/// A viewer's datagrams into the shard's GSO batch, counted.
struct ShardOut<'a> {
    net: &'a NetOut,
    batch: &'a mut SendBatch,
    metrics: &'a ShardMetrics,
}

impl Outbox for ShardOut<'_> {
    fn transmit(&mut self, t: Transmit) -> bool {
        self.metrics.datagrams.fetch_add(1, Relaxed);
        self.net.queue(self.batch, t)
    }

    fn laggard_skipped(&mut self) {
        self.metrics.laggard_skips.fetch_add(1, Relaxed);
    }

    fn datagram(&mut self, route: &Route, len: usize, write: &mut dyn FnMut(&mut [u8])) -> bool {
        self.metrics.datagrams.fetch_add(1, Relaxed);
        self.net
            .queue_with(self.batch, route.proto, route.destination, len, write)
    }
}

/// One run of a shard's loop: its sessions, owned. Dropped when the loop
/// ends, normally or by a panic: whatever is left is unregistered (routes,
/// DELETE registry, stream sinks, viewer counts) so nothing points at
/// sessions that no longer run.
struct Worker<'a> {
    driver: Driver<'a>,
    viewers: Viewers,
    pubs: HashMap<u64, PubPeer>,
}

impl Drop for Worker<'_> {
    fn drop(&mut self) {
        for p in self.viewers.slots.iter_mut().flatten() {
            p.dead = true;
            p.poisoned = true;
        }
        for p in self.pubs.values_mut() {
            p.dead = true;
            p.poisoned = true;
        }
        self.driver.reap(&mut self.viewers);
        self.driver.reap_publishers(&mut self.pubs);
    }
}

/// Applies an ICE restart to `viewer` (the session `r.id` names, if this
/// shard has it); a missing or ended one is reported to the engine.
pub(super) fn apply_ice_restart(
    r: super::ice_path::IceRestart,
    viewer: Option<&mut Viewer>,
    demux: &Demux,
) {
    match viewer.filter(|v| !v.is_finished()) {
        // Not applied if the engine stopped waiting (the client got an
        // error and keeps its old credentials).
        Some(v) if !r.done.is_closed() => {
            let old = v.restart_ice(r.local, r.remote);
            demux.remove(&old, &[]);
            let _ = r.done.send(true);
        }
        _ => {
            let _ = r.done.send(false);
        }
    }
}

/// Test-only fault injection: makes chosen sessions' input, or a shard's
/// loop, panic. Keyed by the shard (its metrics) so engines of tests
/// running in parallel do not take each other's faults. Not compiled into
/// non-test builds.
#[cfg(test)]
pub mod fault {
    use parking_lot::Mutex;
    use std::sync::Arc;

    use super::ShardMetrics;

    static PANIC_ON_INPUT: Mutex<Vec<(usize, u64)>> = Mutex::new(Vec::new());
    static PANIC_LOOP_ONCE: Mutex<Vec<usize>> = Mutex::new(Vec::new());

    fn key(shard: &Arc<ShardMetrics>) -> usize {
        Arc::as_ptr(shard) as usize
    }

    /// The next network input of session `id` on `shard` panics.
    pub fn panic_on_input(shard: &Arc<ShardMetrics>, id: u64) {
        PANIC_ON_INPUT.lock().push((key(shard), id));
    }

    /// The next pass of `shard`'s loop panics (outside any session).
    pub fn panic_loop_once(shard: &Arc<ShardMetrics>) {
        PANIC_LOOP_ONCE.lock().push(key(shard));
    }

    fn take<T: PartialEq>(v: &Mutex<Vec<T>>, x: T) -> bool {
        let mut v = v.lock();
        let hit = v.contains(&x);
        v.retain(|y| *y != x);
        hit
    }

    pub(super) fn check_input(shard: &Arc<ShardMetrics>, id: u64) {
        if take(&PANIC_ON_INPUT, (key(shard), id)) {
            panic!("injected fault in session {id}");
        }
    }

    pub(super) fn check_loop(shard: &Arc<ShardMetrics>) {
        if take(&PANIC_LOOP_ONCE, key(shard)) {
            panic!("injected fault in a shard loop");
        }
    }
}

/// The default panic hook prints every panic to stderr: for a panic that
/// network input can cause in a worker (caught per session), that would be
/// an unthrottled log. Worker threads' panics print at most once per
/// interval (the shard's own error line says which session it ended).
pub fn throttle_worker_panic_output() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    static HOOK_LOG: LogEvery = LogEvery::new(Duration::from_secs(10));
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let worker = std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("rtc-"));
            if !worker || HOOK_LOG.allow().is_some() {
                previous(info);
            }
        }));
    });
}

/// Runs `f`, turning a panic into `Err` with its message.
fn isolate(f: impl FnOnce()) -> Result<(), String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|e| {
        e.downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| e.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into())
    })
}

impl Shard {
    /// Runs the loop; a panic outside any one session (those are caught
    /// per session) restarts it with the shard's queues, its sessions lost
    /// and unregistered. A shard panicking over and over is marked dead.
    pub fn run(self) {
        let alive = self.tx.alive.clone();
        // Marks the shard dead however the thread ends.
        struct Dead(Arc<AtomicBool>);
        impl Drop for Dead {
            fn drop(&mut self) {
                self.0.store(false, Relaxed);
            }
        }
        let _dead = Dead(alive);
        let mut restarts: Vec<Instant> = Vec::new();
        loop {
            // A fresh worker (and batch) per run: a panic may leave a
            // half-built batch behind.
            let mut worker = Worker {
                driver: Driver {
                    shard: &self,
                    batch: SendBatch::default(),
                    gathering: false,
                    timers: Due::exact(Instant::now()),
                },
                viewers: Viewers::default(),
                pubs: HashMap::new(),
            };
            match isolate(|| worker.run()) {
                Ok(()) => return,
                Err(msg) => {
                    drop(worker);
                    self.metrics.restarts.fetch_add(1, Relaxed);
                    let now = Instant::now();
                    restarts.retain(|t| now.duration_since(*t) < Duration::from_secs(60));
                    restarts.push(now);
                    if restarts.len() > MAX_RESTARTS_PER_MINUTE {
                        error!(shard = self.index, panic = %msg, "webrtc worker keeps panicking; it gets no new sessions");
                        return;
                    }
                    error!(shard = self.index, panic = %msg, "webrtc worker panicked; its sessions ended, restarting it");
                }
            }
        }
    }
}

impl Worker<'_> {
    /// Handles every queued control message; false when the engine is gone.
    fn drain_control(&mut self) -> bool {
        loop {
            match self.driver.shard.rx.ctl.try_recv() {
                Ok(msg) => self.handle(msg),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn run(&mut self) {
        let shard = self.driver.shard;
        let mut reader = shard
            .udp
            .as_ref()
            .map(|(socket, local)| UdpReader::new(socket.clone(), *local, shard.demux.clone()));
        // Whether the socket may hold datagrams: it may, until a sleep
        // shows it does not.
        let mut may_read = reader.is_some();
        let mut last_scan = Instant::now();
        self.driver.timers = Due::exact(last_scan);
        loop {
            // Timers run at most every SCAN_INTERVAL: str0m's timers tolerate
            // that, and a busy shard does not rescan every peer per packet.
            // Lax ones (reports, stats, feedback checks) wait for a wake-up
            // that comes anyway, up to their slack.
            let deadline = self.driver.timers.by.max(last_scan + SCAN_INTERVAL);
            if !may_read && deadline > Instant::now() {
                let socket = reader.as_ref().map(UdpReader::socket);
                may_read = shard
                    .rx
                    .doorbell
                    .sleep(deadline, socket, || shard.rx.has_work());
            }
            // Control first: a session is added before its first packet.
            if !self.drain_control() {
                return;
            }
            if let Some(r) = reader.as_mut().filter(|_| may_read) {
                let mut engine_gone = false;
                may_read = r.read_waiting(UDP_READ_BUDGET, |to, d| {
                    // With one shard every route is this one.
                    if to == shard.index && !engine_gone {
                        engine_gone = !self.handle_in_order(ShardMsg::Net(d));
                    }
                });
                if engine_gone {
                    return;
                }
            }
            for _ in 0..1024 {
                match shard.rx.take_data() {
                    Ok(msg) => {
                        if !self.handle_in_order(msg) {
                            return;
                        }
                    }
                    Err(_) => break,
                }
            }
            #[cfg(test)]
            fault::check_loop(&shard.metrics);
            let now = Instant::now();
            if now < self.driver.timers.at.max(last_scan + SCAN_INTERVAL) {
                continue;
            }
            last_scan = now;
            self.timer_pass(now);
        }
    }

    /// Handles a data message; false when the engine is gone.
    fn handle_in_order(&mut self, msg: ShardMsg) -> bool {
        // A packet from a new address is a new session's first STUN check,
        // sent as soon as its answer was. Its Add may have come in since the
        // control queue was drained: take it first, or the check is dropped
        // and the client retries only 250 ms later (that was every join's
        // TTFF under load).
        if matches!(&msg, ShardMsg::Net(d) if d.new_addr) && !self.drain_control() {
            return false;
        }
        self.handle(msg);
        true
    }

    /// Runs every session's due timers and reaps the ended ones.
    fn timer_pass(&mut self, now: Instant) {
        let Worker {
            driver,
            viewers,
            pubs,
        } = self;
        let mut timers = Due::exact(now + Duration::from_secs(1));
        let mut any_dead = false;
        driver.gathering = true;
        for p in viewers.iter_mut() {
            if !p.dead
                && let Err(msg) = isolate(|| driver.viewer_timers(p, now))
            {
                driver.session_panicked(&p.stream.name, p.id, "timers", &msg);
                p.dead = true;
                p.poisoned = true;
            }
            timers = timers.min(p.timers());
            any_dead |= p.is_finished();
        }
        driver.gathering = false;
        driver.shard.net.flush(&mut driver.batch);
        for p in pubs.values_mut() {
            if !p.dead
                && let Err(msg) = isolate(|| driver.publisher_timers(p, now))
            {
                driver.session_panicked(&p.stream.name, p.id, "timers", &msg);
                p.dead = true;
                p.poisoned = true;
            }
            timers = timers.min(p.timers());
            any_dead |= p.dead || p.poisoned || !p.rtc.is_alive();
        }
        if any_dead {
            driver.reap(viewers);
            driver.reap_publishers(pubs);
        }
        driver.timers = timers;
    }

    fn handle(&mut self, msg: ShardMsg) {
        let Worker {
            driver,
            viewers,
            pubs,
        } = self;
        let shard = driver.shard;
        match msg {
            ShardMsg::AddPublisher(np) => {
                let (id, ufrag, stream) = (np.id, np.ufrag.clone(), np.stream.name.clone());
                let mut made = None;
                let r = isolate(|| {
                    let mut p = PubPeer::new(*np, Instant::now());
                    driver.drive_pub(&mut p);
                    made = Some(p);
                });
                match (r, made) {
                    (Ok(()), Some(p)) => {
                        pubs.insert(p.id, p);
                    }
                    (r, _) => {
                        let msg = r.err().unwrap_or_default();
                        driver.session_panicked(&stream, id, "setup", &msg);
                        shard.demux.remove(&ufrag, &[]);
                        shard.publishers.lock().remove(&id);
                    }
                }
            }
            ShardMsg::RemovePublisher(id) => {
                if let Some(p) = pubs.get_mut(&id) {
                    if !p.poisoned
                        && let Err(msg) = isolate(|| {
                            p.rtc.disconnect();
                            driver.drive_pub(p);
                        })
                    {
                        driver.session_panicked(&p.stream.name, id, "DELETE", &msg);
                        p.poisoned = true;
                    }
                    p.end("ended by DELETE");
                    driver.timers = Due::exact(Instant::now());
                }
            }
            ShardMsg::PublisherKeyframe(id) => {
                if let Some(p) = pubs.get_mut(&id).filter(|p| !p.dead)
                    && let Err(msg) = isolate(|| {
                        p.request_keyframe(Instant::now());
                        driver.drive_pub(p);
                    })
                {
                    driver.session_panicked(&p.stream.name, id, "keyframe request", &msg);
                    p.poisoned = true;
                    p.end("internal error");
                }
            }
            ShardMsg::Add(nv) => {
                let (id, ufrag, stream) = (nv.id, nv.ufrag.clone(), nv.stream.clone());
                let mut made = None;
                let r = isolate(|| {
                    let mut viewer =
                        Viewer::new(*nv, Instant::now(), SystemTime::now(), shard.replay_pace);
                    driver.drive(&mut viewer);
                    made = Some(viewer);
                });
                match (r, made) {
                    (Ok(()), Some(viewer)) => {
                        // Counted in the stream's viewers once connected.
                        stream.attach_sink(shard.index as u64, &shard.sink);
                        viewers.insert(id, viewer);
                    }
                    (r, _) => {
                        let msg = r.err().unwrap_or_default();
                        driver.session_panicked(&stream.name, id, "setup", &msg);
                        shard.demux.remove(&ufrag, &[]);
                        shard.registry.lock().remove(&id);
                    }
                }
            }
            ShardMsg::Remove(id) => {
                if let Some(p) = viewers.get_mut(id) {
                    if !p.poisoned
                        && !p.dead
                        && let Err(msg) = isolate(|| driver.close(p))
                    {
                        driver.session_panicked(&p.stream.name, id, "DELETE", &msg);
                        p.poisoned = true;
                    }
                    p.dead = true;
                    driver.timers = Due::exact(Instant::now());
                }
            }
            ShardMsg::IceRestart(r) => {
                let id = r.id;
                apply_ice_restart(*r, viewers.get_mut(id), &shard.demux);
            }
            ShardMsg::Net(d) => {
                if let Some(p) = viewers.get_mut(d.peer) {
                    if p.dead {
                        return;
                    }
                    // Noted before str0m's answer to it leaves (in `drive`).
                    let heard = |driver: &mut Driver, p: &mut Viewer| {
                        p.heard(d.at, d.proto, d.source, &d.data);
                        driver.drive(p);
                    };
                    if let Err(msg) = driver.feed_isolated(p, &d, heard) {
                        driver.session_panicked(&p.stream.name, p.id, "network input", &msg);
                        p.dead = true;
                        p.poisoned = true;
                    }
                } else if let Some(p) = pubs.get_mut(&d.peer) {
                    if p.dead {
                        return;
                    }
                    if let Err(msg) = driver.feed_isolated(p, &d, Driver::drive_pub) {
                        driver.session_panicked(&p.stream.name, p.id, "network input", &msg);
                        p.poisoned = true;
                        p.end("internal error");
                    }
                }
            }
            ShardMsg::Frame { stream, frame } => {
                let Viewers {
                    slots, by_stream, ..
                } = viewers;
                let Some(watching) = by_stream.get(&stream) else {
                    return;
                };
                driver.gathering = true;
                let arrived = Instant::now();
                for &slot in watching {
                    let Some(p) = slots[slot].as_mut() else {
                        continue;
                    };
                    if p.dead {
                        continue;
                    }
                    let mut sent = 0;
                    if let Err(msg) = isolate(|| {
                        sent = p.on_frame(&frame, arrived);
                        driver.drive_after_frame(p);
                    }) {
                        driver.session_panicked(&p.stream.name, p.id, "media write", &msg);
                        p.dead = true;
                        p.poisoned = true;
                        continue;
                    }
                    if sent > 0 {
                        shard.metrics.rtp_packets.fetch_add(sent as u64, Relaxed);
                        shard
                            .metrics
                            .rtp_bytes
                            .fetch_add(frame.bytes() as u64, Relaxed);
                        shard.metrics.observe_transit(frame.received.elapsed());
                    }
                }
                driver.gathering = false;
                shard.net.flush(&mut driver.batch);
            }
        }
    }
}

impl Driver<'_> {
    fn viewer_timers(&mut self, p: &mut Viewer, now: Instant) {
        self.run_viewer(p, now, |p, now, out| p.handle_timeout(now, out));
    }

    fn publisher_timers(&mut self, p: &mut PubPeer, now: Instant) {
        if p.next_timeout.is_due(now) {
            if let Err(e) = p.rtc.handle_input(Input::Timeout(now)) {
                debug!(error = %e, "rtc timeout input failed");
                p.end("webrtc failure");
            }
            self.drive_pub(p);
        }
        if p.deadline().is_some_and(|t| t <= now) {
            p.poll_assembler(now);
            self.drive_pub(p);
        }
        if !p.connected && now.duration_since(p.created) > CONNECT_TIMEOUT {
            p.end("no ICE/DTLS connection within 10 s");
        } else if p.connected && now.duration_since(p.last_input) > PUBLISHER_IDLE_TIMEOUT {
            p.end("the publisher went silent for 10 s");
        } else if p.expires_at.is_some_and(|t| t <= now) {
            p.rtc.disconnect();
            self.drive_pub(p);
            p.end("session expired (signed URL stream_expire or admission lifetime)");
        }
    }

    /// Feeds `input` to session `p` and drives it, a panic in either caught
    /// (`Err` carries its message).
    fn feed_isolated<P: NetSession>(
        &mut self,
        p: &mut P,
        input: &Datagram,
        drive: impl FnOnce(&mut Self, &mut P),
    ) -> Result<(), String> {
        isolate(|| {
            #[cfg(test)]
            fault::check_input(&self.shard.metrics, p.id());
            let (rtc, addrs, last_input) = p.net_parts();
            feed(
                input,
                &self.shard.demux,
                &self.shard.net,
                rtc,
                addrs,
                last_input,
            );
            drive(self, p);
        })
    }

    /// A session's input panicked: it ends (the caller marks it), the others
    /// go on. Logged at most once per interval.
    fn session_panicked(&mut self, stream: &str, id: u64, during: &str, msg: &str) {
        self.shard.metrics.session_panics.fetch_add(1, Relaxed);
        // The batch holds whole datagrams only (a write that panics takes
        // its datagram back out: `Unwritten`), so what the other sessions
        // queued in it still goes out.
        self.timers = Due::exact(Instant::now());
        if let Some(suppressed) = PANIC_LOG.allow() {
            error!(%stream, session = id, during, panic = %msg, suppressed, "webrtc session panicked; ending that session only");
        }
    }

    /// Runs the viewer's state machine until it waits for time or input.
    fn drive(&mut self, p: &mut Viewer) {
        if p.dead {
            return;
        }
        self.run_viewer(p, Instant::now(), |p, now, out| p.drive(now, out));
    }

    fn drive_after_frame(&mut self, p: &mut Viewer) {
        if p.dead {
            return;
        }
        self.run_viewer(p, Instant::now(), |p, now, out| {
            p.drive_after_frame(now, out)
        });
    }

    /// Ends a viewer's session.
    fn close(&mut self, p: &mut Viewer) {
        self.run_viewer(p, Instant::now(), |p, now, out| p.close(now, out));
    }

    /// Runs `f` on the viewer with the shard's batch as its outbox, then
    /// sends what it wrote and notes when it needs the loop again.
    fn run_viewer(
        &mut self,
        p: &mut Viewer,
        now: Instant,
        f: impl FnOnce(&mut Viewer, Instant, &mut ShardOut),
    ) {
        let shard = self.shard;
        f(
            p,
            now,
            &mut ShardOut {
                net: &shard.net,
                batch: &mut self.batch,
                metrics: &shard.metrics,
            },
        );
        if !self.gathering {
            shard.net.flush(&mut self.batch);
        }
        let due = if p.dead { Due::exact(now) } else { p.timers() };
        self.timers = self.timers.min(due);
    }

    /// Runs a publisher's state machine until it waits for time or input.
    fn drive_pub(&mut self, p: &mut PubPeer) {
        if p.dead {
            return;
        }
        let net = &self.shard.net;
        let mut idle_feeds = 0;
        loop {
            match p.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    let now = Instant::now();
                    if t <= now && idle_feeds < 2 {
                        idle_feeds += 1;
                        if let Err(e) = p.rtc.handle_input(Input::Timeout(now)) {
                            debug!(error = %e, "rtc timeout input failed");
                            p.end("webrtc failure");
                            break;
                        }
                        continue;
                    }
                    p.next_timeout = Due::of_str0m(t, p.rtc.last_timeout_reason());
                    break;
                }
                Ok(Output::Transmit(t)) => {
                    idle_feeds = 0;
                    net.queue(&mut self.batch, t);
                }
                Ok(Output::Event(e)) => match e {
                    Event::Connected => {
                        let tx = self.shard.tx.clone();
                        let id = p.id;
                        p.on_connected(Arc::new(move || {
                            tx.control(ShardMsg::PublisherKeyframe(id));
                        }));
                    }
                    Event::RtpPacket(pkt) => p.on_rtp(pkt),
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        p.end("ICE disconnected");
                    }
                    Event::Closed => p.end("DTLS closed"),
                    _ => {}
                },
                Err(e) => {
                    warn!(stream = %p.stream.name, error = %e, "whip session failed");
                    p.end("webrtc failure");
                    break;
                }
            }
            if !p.rtc.is_alive() {
                p.end("the publisher closed the session");
                break;
            }
        }
        net.flush(&mut self.batch);
        let due = if p.dead {
            Due::exact(Instant::now())
        } else {
            p.timers()
        };
        self.timers = self.timers.min(due);
    }

    fn reap_publishers(&mut self, pubs: &mut HashMap<u64, PubPeer>) {
        let shard = self.shard;
        let dead: Vec<u64> = pubs
            .values()
            .filter(|p| p.dead || p.poisoned || !p.rtc.is_alive())
            .map(|p| p.id)
            .collect();
        for id in dead {
            if let Some(mut p) = pubs.remove(&id) {
                p.end("session closed");
                // Tell the publisher (DTLS close alert) rather than go silent;
                // not a session that panicked (its state is suspect).
                if !p.poisoned
                    && let Err(msg) = isolate(|| {
                        p.rtc.disconnect();
                        while let Ok(Output::Transmit(t)) = p.rtc.poll_output() {
                            shard.net.queue(&mut self.batch, t);
                        }
                        shard.net.flush(&mut self.batch);
                    })
                {
                    self.session_panicked(&p.stream.name, id, "close", &msg);
                }
                shard.demux.remove(&p.ufrag, &p.addrs);
                shard.net.close_tcp(&p.addrs);
                shard.publishers.lock().remove(&p.id);
                debug!(stream = %p.stream.name, "whip publisher removed");
                // Dropping it ends the publish (the hub's Publisher handle).
            }
        }
    }

    fn reap(&mut self, viewers: &mut Viewers) {
        let shard = self.shard;
        for p in viewers.remove_dead() {
            shard.demux.remove(&p.ufrag, &p.addrs);
            shard.net.close_tcp(&p.addrs);
            shard.registry.lock().remove(&p.id);
            p.stream.detach_sink(shard.index as u64);
            if p.counted {
                p.stream.viewer_left();
                info!(stream = %p.stream.name, "viewer left");
            } else {
                debug!(stream = %p.stream.name, "unconnected viewer session removed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::viewer::FrameGate;
    use super::super::viewer::tests::frame;
    use super::*;
    use crate::hub::Kind;

    #[test]
    fn a_full_queue_drops_the_oldest_and_viewers_resume_at_a_keyframe() {
        let metrics = Arc::new(ShardMetrics::default());
        let (tx, rx) = shard_queues(metrics.clone(), 8, DATA_QUEUE_FRAME_BYTES).unwrap();
        let send = |f: Arc<Frame>| {
            tx.data(ShardMsg::Frame {
                stream: 1,
                frame: f,
            })
        };
        let mut gate = FrameGate::default();
        let mut sent = Vec::new();
        let drain = |gate: &mut FrameGate, sent: &mut Vec<u64>| {
            while let Ok(ShardMsg::Frame { frame, .. }) = rx.take_data() {
                if gate.admit(&frame).send && frame.kind == Kind::Video {
                    sent.push(frame.index);
                }
            }
        };
        send(frame(0, Kind::Video, true));
        send(frame(1, Kind::Video, false));
        drain(&mut gate, &mut sent);
        // A shard that stalls while 18 frames arrive: the producer never
        // blocks, the queue holds the newest 8, and the rest are counted.
        for i in 2..20 {
            send(frame(i, Kind::Video, i == 15));
        }
        assert_eq!(rx.data.len(), 8);
        assert_eq!(metrics.queue_drops.load(Relaxed), 10);
        // Control messages have their own queue: none is lost.
        for id in 0..100 {
            assert!(tx.control(ShardMsg::Remove(id)));
        }
        assert_eq!(rx.ctl.len(), 100);
        drain(&mut gate, &mut sent);
        // 12, 13, 14 follow a gap and would not decode: skipped until 15.
        assert_eq!(sent, vec![0, 1, 15, 16, 17, 18, 19]);
        // A dead shard refuses new sessions.
        tx.alive.store(false, Relaxed);
        assert!(!tx.control(ShardMsg::Remove(1)));
    }
    #[test]
    fn the_queue_is_bounded_in_frame_bytes_too() {
        let metrics = Arc::new(ShardMetrics::default());
        // Room for 64 entries but only three 4-byte frames.
        let (tx, rx) = shard_queues(metrics.clone(), 64, 12).unwrap();
        let send = |f: Arc<Frame>| {
            tx.data(ShardMsg::Frame {
                stream: 1,
                frame: f,
            })
        };
        for i in 0..10 {
            send(frame(i, Kind::Video, i == 0));
        }
        assert_eq!(rx.data.len(), 3, "the newest frames that fit in 12 bytes");
        assert_eq!(tx.frame_bytes.used(), 12);
        assert_eq!(metrics.queue_drops.load(Relaxed), 7);
        // A frame larger than the whole bound is dropped alone: it does
        // not empty the queue on its way out.
        let big = Arc::new(Frame {
            payloads: Box::new([Arc::from(vec![0u8; 13])]),
            ..clone_frame(&frame(10, Kind::Video, true))
        });
        send(big);
        assert_eq!(rx.data.len(), 3);
        assert_eq!(metrics.queue_drops.load(Relaxed), 8);
        let mut taken = Vec::new();
        while let Ok(ShardMsg::Frame { frame, .. }) = rx.take_data() {
            taken.push(frame.index);
        }
        assert_eq!(taken, vec![7, 8, 9]);
        assert_eq!(
            tx.frame_bytes.used(),
            0,
            "taking a frame releases its bytes"
        );
        send(frame(11, Kind::Video, true));
        assert_eq!(tx.frame_bytes.used(), 4);
    }

    fn clone_frame(f: &Frame) -> Frame {
        Frame {
            kind: f.kind,
            index: f.index,
            kind_index: f.kind_index,
            rtp_time: f.rtp_time,
            wallclock: f.wallclock,
            received: f.received,
            keyframe: f.keyframe,
            publisher: f.publisher,
            payloads: f.payloads.clone(),
        }
    }
}
