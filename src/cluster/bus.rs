//! The control-event bus between cluster nodes: PostgreSQL LISTEN/NOTIFY on
//! one channel. What travels:
//!
//! - `control`: a stream's title, description, access or room changed on
//!   the sending node. The database already has it (the Matrix bridge writes
//!   rows before it changes the hub), so receivers re-read the stream from
//!   the database rather than trust a copy: whatever order messages arrive
//!   in, every node ends where the database is. A hash of the sender's state
//!   lets a receiver that reaches the same state stay quiet (no echo).
//! - `key`: a stream's key changed (`!live key`); receivers re-read its row.
//! - `origins`: a publish started or ended here; receivers re-read the
//!   origins at once instead of at their next heartbeat (live/offline).
//! - `viewers`: the sender's viewers per stream and whether it pulls it;
//!   receivers sum the other nodes' figures into their pages and API.
//! - `chat` and `redaction`: the room's chat as the node that processed the
//!   room's events rendered it (only that node reads the transaction).
//! - `record_choice` and `delete_recording`: `!live record on|off` (every
//!   node re-reads the choices: the stream may be live on another) and a
//!   deletion asked on a node that does not hold the files (only the node
//!   that made the recording acts).
//! - `sync`: a node (re)started listening and asks for everyone's viewers.
//! - `resync`: a message of the sender's was lost (its queue was full, or a
//!   NOTIFY failed): every node re-reads what the bus would have told it
//!   (every stream row and key, the rooms and chat), as after its own
//!   LISTEN connection came back. A lost `key` message must not leave an
//!   old stream key valid on another node.
//! - `ping`: a node's own heartbeat through its LISTEN connection, which
//!   proves the connection alive (a dropped one is replaced, then resynced).
//!
//! NOTIFY takes at most 8000 bytes: a bigger message (a long chat message,
//! many streams' counts) is written to `cluster_bus_payloads` and the
//! notification carries its row id (`@123`); rows are pruned after a minute.
//!
//! Every message is sealed with a key derived from `cluster.secret`
//! (`bus_seal`): a database role without the secret can neither read the
//! chat and membership that travel here nor forge or replay a message.
//!
//! The encoding, the decoding and the viewer tally are pure; [`Bus`] is the
//! thin driver.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};
use tracing::{info, warn};

use super::bus_seal::{SealError, Sealer, Seen};
use crate::auth::keys::KeyRing;
use crate::hub::{ChatMessage, Hub, Stream};
use crate::log_every::LogEvery;
use crate::store::Store;

/// The one LISTEN/NOTIFY channel of a cluster's database.
pub const CHANNEL: &str = "roomcast_bus";
/// PostgreSQL refuses NOTIFY payloads of 8000 bytes or more; keep a margin.
pub const NOTIFY_MAX_BYTES: usize = 7900;
/// The largest message the bus carries at all (through the payload table).
pub const PAYLOAD_MAX_BYTES: usize = 256 * 1024;
/// The largest sealed payload (base64 of a sealed [`PAYLOAD_MAX_BYTES`]).
pub const SEALED_MAX_BYTES: usize = PAYLOAD_MAX_BYTES * 4 / 3 + 64;
/// How long a big payload's row is kept for the receivers to read.
const PAYLOAD_KEEP: Duration = Duration::from_secs(60);
/// The LISTEN connection pings itself this often…
const PING_EVERY: Duration = Duration::from_secs(2);
/// …and is replaced when its own ping has not come back within this.
const PING_DEAD_AFTER: Duration = Duration::from_secs(6);
/// A (re)connection of the LISTEN connection gives up after this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Viewer counts go out at most this often (changes coalesce)…
const VIEWERS_MIN_INTERVAL: Duration = Duration::from_millis(200);
/// …and at least this often, so a missed message heals.
const VIEWERS_REFRESH: Duration = Duration::from_secs(10);
/// A node sends `resync` at most this often: while its queue overflows,
/// every other message would otherwise make every node re-read everything.
const RESYNC_MIN_INTERVAL: Duration = Duration::from_secs(5);
/// Outgoing messages waiting for the database (each is small).
const OUT_QUEUE: usize = 1024;
/// Incoming messages waiting for the Matrix bridge.
const INBOX_QUEUE: usize = 512;
/// Streams in one node's viewer message that a receiver keeps.
const MAX_STREAMS_PER_NODE: usize = 4096;
/// A Matrix user ID's limit (the spec's 255 bytes).
const MAX_USER_ID_BYTES: usize = 255;
/// Nodes whose viewer counts a receiver keeps.
const MAX_NODES: usize = 256;

static SEND_FAILED_LOG: LogEvery = LogEvery::new(Duration::from_secs(10));
static BAD_MESSAGE_LOG: LogEvery = LogEvery::new(Duration::from_secs(10));
static LISTEN_LOG: LogEvery = LogEvery::new(Duration::from_secs(10));
static QUEUE_FULL_LOG: LogEvery = LogEvery::new(Duration::from_secs(10));

/// Called with (stream, user, joined).
pub type MembershipHook = Box<dyn Fn(&str, &str, bool) + Send + Sync>;

/// What the bus hands the recorder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordingEvent {
    /// A stream's recording choice changed on another node.
    Choice(String),
    /// Delete this recording if this node made it.
    Delete(String),
    /// The bus was away or lost a message: re-read every choice.
    Resync,
}
pub type RecordingHook = Box<dyn Fn(RecordingEvent) + Send + Sync>;

/// One message between nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum BusMessage {
    Control {
        stream: String,
        /// [`control_sig`] of the sender's state after the change.
        sig: u64,
    },
    Origins,
    /// A stream's key changed (`!live key`): receivers re-read its row.
    Key {
        stream: String,
    },
    Viewers {
        /// (stream, viewers on the sender, whether the sender pulls it).
        counts: Vec<(String, u32, bool)>,
    },
    Chat {
        room: String,
        message: Box<ChatMessage>,
    },
    Redaction {
        room: String,
        id: String,
    },
    /// A member joined or left a stream's room (processed by the sender):
    /// receivers end (or allow again) what the member's token admitted.
    Membership {
        stream: String,
        user: String,
        joined: bool,
    },
    /// `!live record on|off` for `stream` was stored by the sender.
    RecordChoice {
        stream: String,
    },
    /// Recording `id` is to be deleted by the node that made it.
    DeleteRecording {
        id: String,
    },
    Sync,
    /// The sender lost a message: everyone re-reads the shared state.
    Resync,
    Ping {
        nonce: u64,
    },
}

/// Aborts a task when its owner goes (the LISTEN reader with its connection).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A message with its sender.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The sending node's `node_id`.
    pub n: String,
    pub m: BusMessage,
}

/// A message ready for NOTIFY.
#[derive(Debug, PartialEq)]
pub enum Encoded {
    /// Fits a notification.
    Inline(String),
    /// Goes to the payload table; the notification names its row.
    Table(String),
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum BusError {
    #[error("message of {0} bytes is over the bus's {PAYLOAD_MAX_BYTES}")]
    TooBig(usize),
    #[error("not a bus message: {0}")]
    Bad(String),
    #[error("{0}")]
    Seal(#[from] SealError),
}

/// `env` sealed at `now_ms`, inline or for the payload table.
pub fn encode(env: &Envelope, sealer: &Sealer, now_ms: u64) -> Result<Encoded, BusError> {
    let json = serde_json::to_string(env).map_err(|e| BusError::Bad(e.to_string()))?;
    if json.len() > PAYLOAD_MAX_BYTES {
        return Err(BusError::TooBig(json.len()));
    }
    // A sealed payload never starts with '@': the two forms cannot be confused.
    let sealed = sealer.seal(json.as_bytes(), now_ms);
    Ok(if sealed.len() <= NOTIFY_MAX_BYTES {
        Encoded::Inline(sealed)
    } else {
        Encoded::Table(sealed)
    })
}

/// A notification as received.
#[derive(Debug, PartialEq)]
pub enum Received {
    Message(Envelope),
    /// Read row `id` of the payload table, then [`decode_body`] it.
    Table(i64),
}

/// A notification: a table row's id, or a message that must open with
/// `sealer` (fresh at `now_ms`, not in `seen`).
pub fn decode(
    payload: &str,
    sealer: &Sealer,
    now_ms: u64,
    seen: &mut Seen,
) -> Result<Received, BusError> {
    if let Some(id) = payload.strip_prefix('@') {
        // Only a pointer: the row's body is sealed and checked in turn.
        return id
            .parse()
            .map(Received::Table)
            .map_err(|_| BusError::Bad(format!("bad payload reference '{id}'")));
    }
    decode_body(payload, sealer, now_ms, seen).map(Received::Message)
}

pub fn decode_body(
    body: &str,
    sealer: &Sealer,
    now_ms: u64,
    seen: &mut Seen,
) -> Result<Envelope, BusError> {
    if body.len() > SEALED_MAX_BYTES {
        return Err(BusError::TooBig(body.len()));
    }
    let plain = sealer.open(body, now_ms, seen)?;
    serde_json::from_slice(&plain).map_err(|e| BusError::Bad(e.to_string()))
}

/// The wall clock in ms (a sealed message's time).
fn now_unix_ms() -> u64 {
    crate::cluster::now_ms().max(0) as u64
}

/// The LISTEN connection's URL: named `roomcast-bus-<node>` in
/// `pg_stat_activity`, so an operator (or a test) can find it.
pub fn listener_url(database_url: &str, node: &str) -> String {
    if database_url.contains("application_name=") {
        return database_url.to_string();
    }
    let sep = if database_url.contains('?') { '&' } else { '?' };
    format!("{database_url}{sep}application_name=roomcast-bus-{node}")
}

/// A hash of what `control` messages carry about a stream (title,
/// description, access, room): equal on two nodes means they agree.
pub fn control_sig(s: &Stream) -> u64 {
    let snap = s.snapshot();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    snap.title.hash(&mut h);
    snap.description.hash(&mut h);
    (snap.access == crate::hub::Access::Public).hash(&mut h);
    snap.room
        .as_ref()
        .map(|r| (&r.room_id, &r.alias, r.chat))
        .hash(&mut h);
    snap.room_lost
        .as_ref()
        .map(|l| (&l.reason, &l.by, l.at))
        .hash(&mut h);
    h.finish()
}

/// The other nodes' viewer figures (bounded: [`MAX_NODES`] ×
/// [`MAX_STREAMS_PER_NODE`]).
#[derive(Debug, Default)]
pub struct Tally {
    by_node: HashMap<String, HashMap<String, (u32, bool)>>,
}

impl Tally {
    /// Node `node`'s full figures replace what it said before. False when
    /// refused (too many nodes).
    pub fn apply(&mut self, node: &str, counts: &[(String, u32, bool)]) -> bool {
        if !self.by_node.contains_key(node) && self.by_node.len() >= MAX_NODES {
            return false;
        }
        let map = counts
            .iter()
            .take(MAX_STREAMS_PER_NODE)
            .map(|(s, v, p)| (s.clone(), (*v, *p)))
            .collect();
        self.by_node.insert(node.to_string(), map);
        true
    }

    /// Keeps only the nodes `alive` says are (a dead node's viewers are
    /// gone); returns the nodes dropped.
    pub fn retain(&mut self, alive: impl Fn(&str) -> bool) -> Vec<String> {
        let gone: Vec<String> = self.by_node.keys().filter(|n| !alive(n)).cloned().collect();
        for n in &gone {
            self.by_node.remove(n);
        }
        gone
    }

    /// The other nodes' viewers of `stream`, their pulls taken off (each is
    /// one viewer on the origin, not a person).
    pub fn elsewhere(&self, stream: &str) -> i64 {
        self.by_node
            .values()
            .filter_map(|m| m.get(stream))
            .map(|(v, pull)| i64::from(*v) - i64::from(*pull))
            .sum()
    }

    /// Every stream some node reported.
    pub fn streams(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .by_node
            .values()
            .flat_map(|m| m.keys().cloned())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Viewers on all the other nodes (their pulls taken off).
    pub fn total(&self) -> i64 {
        self.by_node
            .values()
            .flat_map(|m| m.values())
            .map(|(v, pull)| i64::from(*v) - i64::from(*pull))
            .sum()
    }
}

/// What the bus hands the Matrix bridge (it owns the rooms and the chat).
#[derive(Debug)]
pub enum Inbound {
    /// Re-read this stream's room from the database.
    Reload(String),
    Chat {
        room: String,
        message: Arc<ChatMessage>,
    },
    Redaction {
        room: String,
        id: String,
    },
    /// The bus was away (or a message was dropped): re-read every room and
    /// the chat histories.
    Resync,
}

/// This node's end of the bus.
pub struct Bus {
    node: String,
    database_url: String,
    store: Store,
    hub: Arc<Hub>,
    keys: Arc<KeyRing>,
    sealer: Sealer,
    /// Nonces of the messages opened lately (replays are dropped).
    seen: Mutex<Seen>,
    out: mpsc::Sender<BusMessage>,
    out_rx: Mutex<Option<mpsc::Receiver<BusMessage>>>,
    tally: Mutex<Tally>,
    /// Nodes whose figures were dropped when they looked dead: when one
    /// looks alive again (e.g. every heartbeat was late while PostgreSQL
    /// restarted), everyone is asked for their figures again.
    forgotten: Mutex<std::collections::HashSet<String>>,
    /// The control state the cluster last agreed on, per stream.
    known: Mutex<HashMap<String, u64>>,
    inbox: OnceLock<mpsc::Sender<Inbound>>,
    /// Admission's end of a membership change on another node.
    on_membership: OnceLock<MembershipHook>,
    /// The recorder's end of recording choices and deletions.
    on_recording: OnceLock<RecordingHook>,
    /// The inbox was full: a resync is owed to the Matrix bridge.
    inbox_overflowed: AtomicBool,
    /// A message of ours was lost: the next NOTIFY that works is a
    /// `resync` first.
    owe_resync: AtomicBool,
    /// Wakes the cluster step (origins changed, or a resync).
    cluster_wake: Arc<Notify>,
    /// Wakes the viewer sender (a `sync` asked for everyone's figures).
    resend_viewers: Notify,
    /// The last ping sent and the last of ours that came back.
    ping_sent: AtomicU64,
    ping_seen: AtomicU64,
    /// The LISTEN connection is up (for /metrics).
    listening: AtomicBool,
    /// The node left the cluster: nothing more is sent.
    stopped: AtomicBool,
    /// Counters for /metrics.
    sent: AtomicU64,
    received: AtomicU64,
    resyncs: AtomicU64,
}

impl Bus {
    pub fn new(
        node: &str,
        database_url: &str,
        store: Store,
        hub: Arc<Hub>,
        keys: Arc<KeyRing>,
        secret: &str,
        cluster_wake: Arc<Notify>,
    ) -> Arc<Bus> {
        let (out, out_rx) = mpsc::channel(OUT_QUEUE);
        Arc::new(Bus {
            node: node.to_string(),
            database_url: database_url.to_string(),
            store,
            hub,
            keys,
            sealer: Sealer::new(secret),
            seen: Mutex::default(),
            out,
            out_rx: Mutex::new(Some(out_rx)),
            tally: Mutex::default(),
            known: Mutex::default(),
            forgotten: Mutex::default(),
            inbox: OnceLock::new(),
            on_membership: OnceLock::new(),
            on_recording: OnceLock::new(),
            inbox_overflowed: AtomicBool::new(false),
            owe_resync: AtomicBool::new(false),
            cluster_wake,
            resend_viewers: Notify::new(),
            ping_sent: AtomicU64::new(0),
            ping_seen: AtomicU64::new(0),
            listening: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
        })
    }

    /// The Matrix bridge's inbox (call once, before [`Bus::start`]).
    pub fn inbox(&self) -> Option<mpsc::Receiver<Inbound>> {
        let (tx, rx) = mpsc::channel(INBOX_QUEUE);
        self.inbox.set(tx).ok()?;
        Some(rx)
    }

    /// Queues a message for the other nodes (never waits; a full queue
    /// drops it, logged, and the receivers heal at their next resync).
    /// Where a membership change made on another node goes (admission).
    pub fn on_membership(&self, hook: MembershipHook) {
        let _ = self.on_membership.set(hook);
    }

    /// Where recording choices and deletions from other nodes go.
    pub fn on_recording(&self, hook: RecordingHook) {
        let _ = self.on_recording.set(hook);
    }

    fn to_recorder(&self, ev: RecordingEvent) {
        if let Some(hook) = self.on_recording.get() {
            hook(ev);
        }
    }

    pub fn send(&self, m: BusMessage) {
        if self.stopped.load(Ordering::Relaxed) {
            return;
        }
        if self.out.try_send(m).is_err() {
            self.owe_resync.store(true, Ordering::Relaxed);
            if let Some(suppressed) = QUEUE_FULL_LOG.allow() {
                warn!(
                    suppressed,
                    "cluster bus: the outgoing queue is full (database slow?); a message was dropped, the others resync"
                );
            }
        }
    }

    /// At a clean leave: nothing more goes out (the others drop this node's
    /// viewers when its row is gone).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    /// Starts the sender, the listener and the watchers of local changes.
    pub fn start(self: &Arc<Self>) {
        let Some(rx) = self.out_rx.lock().take() else {
            return;
        };
        let me = self.clone();
        tokio::spawn(async move { me.sender(rx).await });
        let me = self.clone();
        tokio::spawn(async move { me.listener().await });
        let me = self.clone();
        tokio::spawn(async move { me.watch_control().await });
        let me = self.clone();
        tokio::spawn(async move { me.watch_viewers().await });
    }

    // --- out -----------------------------------------------------------------------

    async fn sender(self: Arc<Self>, mut rx: mpsc::Receiver<BusMessage>) {
        let mut last_prune = Instant::now();
        let mut last_resync: Option<Instant> = None;
        while let Some(m) = rx.recv().await {
            // Something was lost since the last NOTIFY that worked: the
            // others re-read everything before this message (viewer counts
            // go out at least every 10 s, so the debt is paid soon), at
            // most every RESYNC_MIN_INTERVAL (the debt waits meanwhile).
            let may = last_resync.is_none_or(|t| t.elapsed() >= RESYNC_MIN_INTERVAL);
            if may && self.owe_resync.swap(false, Ordering::Relaxed) {
                let resync = Envelope {
                    n: self.node.clone(),
                    m: BusMessage::Resync,
                };
                if self.notify(&resync).await.is_ok() {
                    last_resync = Some(Instant::now());
                } else {
                    self.owe_resync.store(true, Ordering::Relaxed);
                }
            }
            let env = Envelope {
                n: self.node.clone(),
                m,
            };
            if let Err(e) = self.notify(&env).await {
                self.owe_resync.store(true, Ordering::Relaxed);
                if let Some(suppressed) = SEND_FAILED_LOG.allow() {
                    warn!(error = %e, suppressed, "cluster bus: a NOTIFY failed; the others resync once one works again");
                }
            }
            if last_prune.elapsed() > PAYLOAD_KEEP / 2 {
                last_prune = Instant::now();
                let before = crate::cluster::now_ms() - PAYLOAD_KEEP.as_millis() as i64;
                let _ = self.store.bus_prune_payloads(before).await;
            }
        }
    }

    async fn notify(&self, env: &Envelope) -> Result<(), anyhow::Error> {
        let payload = match encode(env, &self.sealer, now_unix_ms())? {
            Encoded::Inline(p) => p,
            Encoded::Table(body) => {
                let id = self
                    .store
                    .bus_put_payload(&body, crate::cluster::now_ms())
                    .await?;
                format!("@{id}")
            }
        };
        self.store.bus_notify(CHANNEL, &payload).await?;
        self.sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Local control changes go out; those that match what the cluster
    /// already agreed on (a reload after another node's message) do not.
    async fn watch_control(self: Arc<Self>) {
        let mut feed = self.hub.control_feed();
        for s in self.hub.streams() {
            self.known.lock().insert(s.name.clone(), control_sig(&s));
        }
        while let Some(changed) = feed.changed(&self.hub).await {
            for s in changed {
                let sig = control_sig(&s);
                let new = self.known.lock().insert(s.name.clone(), sig) != Some(sig);
                if new {
                    self.send(BusMessage::Control {
                        stream: s.name.clone(),
                        sig,
                    });
                }
            }
            // Streams that left the registry (idle party shares) leave
            // the map: it stays bounded by the streams this node has.
            if feed.take_removed() {
                self.known
                    .lock()
                    .retain(|name, _| self.hub.get(name).is_some());
            }
        }
    }

    /// This node's viewer figures, on change (coalesced), on a `sync`, and
    /// every [`VIEWERS_REFRESH`].
    async fn watch_viewers(self: Arc<Self>) {
        let mut events = self.hub.subscribe_events();
        let mut last: Option<Vec<(String, u32, bool)>> = None;
        let mut last_at = Instant::now();
        // An interval, not a sleep in the select: other hub events (chat)
        // must not keep putting the refresh off.
        let mut refresh = tokio::time::interval(VIEWERS_REFRESH);
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(crate::hub::HubEvent::Viewers { .. }) => {}
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                _ = self.resend_viewers.notified() => last = None,
                _ = refresh.tick() => last = None,
            }
            tokio::time::sleep(VIEWERS_MIN_INTERVAL).await;
            let counts = self.local_counts();
            if last.as_ref() != Some(&counts) || last_at.elapsed() > VIEWERS_REFRESH {
                self.send(BusMessage::Viewers {
                    counts: counts.clone(),
                });
                last = Some(counts);
                last_at = Instant::now();
            }
        }
    }

    fn local_counts(&self) -> Vec<(String, u32, bool)> {
        self.hub
            .streams()
            .iter()
            .filter_map(|s| {
                let (viewers, pull) = s.local_load();
                (viewers > 0 || pull).then(|| (s.name.clone(), viewers as u32, pull))
            })
            .collect()
    }

    // --- in ------------------------------------------------------------------------

    async fn listener(self: Arc<Self>) {
        let mut first = true;
        loop {
            match self.listen_once(first).await {
                Ok(()) => {}
                Err(e) => {
                    if let Some(suppressed) = LISTEN_LOG.allow() {
                        warn!(error = %e, suppressed, "cluster bus: the LISTEN connection is down; reconnecting, then resyncing");
                    }
                }
            }
            first = false;
            self.listening.store(false, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// One LISTEN connection's life: returns when it is lost or silent.
    async fn listen_once(&self, first: bool) -> Result<(), anyhow::Error> {
        let mut listener = tokio::time::timeout(
            CONNECT_TIMEOUT,
            sqlx::postgres::PgListener::connect(&listener_url(&self.database_url, &self.node)),
        )
        .await
        .map_err(|_| anyhow::anyhow!("connecting timed out"))??;
        tokio::time::timeout(CONNECT_TIMEOUT, listener.listen(CHANNEL))
            .await
            .map_err(|_| anyhow::anyhow!("LISTEN timed out"))??;
        self.listening.store(true, Ordering::Relaxed);
        // What happened while nobody listened is read again (at start-up
        // the state was just read; the viewers are still asked for).
        if first {
            info!(node = %self.node, "cluster bus: listening");
        } else {
            info!(node = %self.node, "cluster bus: listening again; resyncing");
        }
        self.resync(!first);
        if !first {
            // A key changed meanwhile must not stay valid here.
            self.reload_all_rows().await;
        }
        // The connection is read by a task of its own: `try_recv` is not
        // cancel-safe, and a cancelled call that saw the connection close
        // makes the next one reconnect silently (no resync). The channel is
        // bounded; a reader blocked on it holds the socket, so NOTIFYs wait
        // in PostgreSQL's queue, not here.
        let (tx, mut notifications) = mpsc::channel::<Result<String, String>>(INBOX_QUEUE);
        let reader = tokio::spawn(async move {
            loop {
                let item = match listener.try_recv().await {
                    Ok(Some(n)) => Ok(n.payload().to_string()),
                    Ok(None) => Err("the connection was closed".to_string()),
                    Err(e) => Err(e.to_string()),
                };
                let end = item.is_err();
                if tx.send(item).await.is_err() || end {
                    return;
                }
            }
        });
        let _reader = AbortOnDrop(reader);
        let mut ping = tokio::time::interval(PING_EVERY);
        let mut nonce = self.ping_sent.load(Ordering::Relaxed);
        let mut pinged_at: Option<Instant> = None;
        loop {
            tokio::select! {
                n = notifications.recv() => {
                    let payload = match n {
                        Some(Ok(payload)) => payload,
                        Some(Err(e)) => anyhow::bail!("{e}"),
                        None => anyhow::bail!("the connection was closed"),
                    };
                    self.received.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = self.on_payload(&payload).await
                        && let Some(suppressed) = BAD_MESSAGE_LOG.allow()
                    {
                        warn!(error = %e, suppressed, "cluster bus: a message was refused");
                    }
                }
                _ = ping.tick() => {
                    if let Some(at) = pinged_at
                        && self.ping_seen.load(Ordering::Relaxed) < nonce
                        && at.elapsed() > PING_DEAD_AFTER
                    {
                        anyhow::bail!("its own ping did not come back in {PING_DEAD_AFTER:?}");
                    }
                    if self.ping_seen.load(Ordering::Relaxed) >= nonce || pinged_at.is_none() {
                        nonce = self.ping_sent.fetch_add(1, Ordering::Relaxed) + 1;
                        pinged_at = Some(Instant::now());
                        // Not through the outgoing queue: a full queue
                        // would lose the ping, and the connection would be
                        // replaced and everything resynced for nothing. A
                        // ping that fails here (database away) is what
                        // should replace it.
                        let ping = Envelope {
                            n: self.node.clone(),
                            m: BusMessage::Ping { nonce },
                        };
                        if !self.stopped.load(Ordering::Relaxed) {
                            let _ = tokio::time::timeout(PING_EVERY, self.notify(&ping)).await;
                        }
                    }
                }
            }
        }
    }

    /// After (re)connecting: ask for everyone's viewers, re-read the
    /// origins, and (`full`) let the Matrix bridge re-read rooms and chat.
    fn resync(&self, full: bool) {
        // The other nodes' figures are replaced as their answers come (a
        // dead node's are dropped by the cluster step).
        self.send(BusMessage::Sync);
        self.resend_viewers.notify_one();
        self.cluster_wake.notify_one();
        if full {
            self.resyncs.fetch_add(1, Ordering::Relaxed);
            self.to_inbox(Inbound::Resync);
            self.to_recorder(RecordingEvent::Resync);
        }
    }

    fn to_inbox(&self, m: Inbound) {
        let Some(tx) = self.inbox.get() else {
            return;
        };
        if self.inbox_overflowed.load(Ordering::Relaxed) && tx.try_send(Inbound::Resync).is_ok() {
            self.inbox_overflowed.store(false, Ordering::Relaxed);
        }
        if tx.try_send(m).is_err() {
            self.inbox_overflowed.store(true, Ordering::Relaxed);
            if let Some(suppressed) = QUEUE_FULL_LOG.allow() {
                warn!(
                    suppressed,
                    "cluster bus: the Matrix bridge is behind; it resyncs"
                );
            }
        }
    }

    async fn on_payload(&self, payload: &str) -> Result<(), anyhow::Error> {
        let decoded = decode(payload, &self.sealer, now_unix_ms(), &mut self.seen.lock())?;
        let env = match decoded {
            Received::Message(env) => env,
            Received::Table(id) => {
                let Some(body) = self.store.bus_payload(id, SEALED_MAX_BYTES as i64).await? else {
                    anyhow::bail!("payload {id} is gone (pruned, or over the size)");
                };
                decode_body(&body, &self.sealer, now_unix_ms(), &mut self.seen.lock())?
            }
        };
        if env.n == self.node {
            if let BusMessage::Ping { nonce } = env.m {
                self.ping_seen.fetch_max(nonce, Ordering::Relaxed);
            }
            return Ok(());
        }
        self.apply(&env.n, env.m).await;
        Ok(())
    }

    async fn apply(&self, from: &str, m: BusMessage) {
        match m {
            BusMessage::Control { stream, sig } => {
                if crate::config::validate_stream_name(&stream).is_err() {
                    return;
                }
                // A stream made on another node: its key and row first.
                if self.hub.get(&stream).is_none() || sig != self.sig_of(&stream) {
                    self.reload_stream_row(&stream).await;
                }
                // Only streams this node has (the map stays bounded).
                if self.hub.get(&stream).is_some() {
                    self.known.lock().insert(stream.clone(), sig);
                }
                self.to_inbox(Inbound::Reload(stream));
            }
            BusMessage::Origins => self.cluster_wake.notify_one(),
            BusMessage::Key { stream } => {
                if crate::config::validate_stream_name(&stream).is_ok() {
                    self.reload_stream_row(&stream).await;
                }
            }
            BusMessage::Viewers { counts } => {
                let before = self.tally.lock().streams();
                if !self.tally.lock().apply(from, &counts) {
                    return;
                }
                let mut names = self.tally.lock().streams();
                names.extend(before);
                self.apply_tally(&names);
            }
            BusMessage::Chat { room, message } => self.to_inbox(Inbound::Chat {
                room,
                message: Arc::from(message),
            }),
            BusMessage::Redaction { room, id } => self.to_inbox(Inbound::Redaction { room, id }),
            BusMessage::Membership {
                stream,
                user,
                joined,
            } => {
                if crate::config::validate_stream_name(&stream).is_ok()
                    && user.len() <= MAX_USER_ID_BYTES
                    && let Some(hook) = self.on_membership.get()
                {
                    hook(&stream, &user, joined);
                }
            }
            BusMessage::RecordChoice { stream } => {
                if crate::config::validate_stream_name(&stream).is_ok() {
                    self.to_recorder(RecordingEvent::Choice(stream));
                }
            }
            BusMessage::DeleteRecording { id } => {
                if crate::recording::files::valid_id(&id) {
                    self.to_recorder(RecordingEvent::Delete(id));
                }
            }
            BusMessage::Sync => self.resend_viewers.notify_one(),
            BusMessage::Resync => {
                info!(from = %from, "cluster bus: a node lost a message; resyncing");
                self.reload_all_rows().await;
                self.resync(true);
            }
            BusMessage::Ping { .. } => {}
        }
    }

    fn sig_of(&self, stream: &str) -> u64 {
        self.hub.get(stream).map_or(0, |s| control_sig(&s))
    }

    /// The stream's row (its key: a stream made by `!live new` on another
    /// node can be published here too).
    async fn reload_stream_row(&self, stream: &str) {
        match self.store.stream(stream).await {
            Ok(Some(row)) => {
                self.hub.ensure_stream(&row.name, row.title.as_deref());
                self.keys.set(&row.name, &row.key_hash);
            }
            Ok(None) => {}
            Err(e) => {
                if let Some(suppressed) = SEND_FAILED_LOG.allow() {
                    warn!(error = %e, suppressed, "cluster bus: reading a stream row failed");
                }
            }
        }
    }

    /// Every stream row and its key, as at start-up (after the bus was away
    /// or a message was lost).
    async fn reload_all_rows(&self) {
        match self.store.streams().await {
            Ok(rows) => {
                for row in rows {
                    self.hub.ensure_stream(&row.name, row.title.as_deref());
                    self.keys.set(&row.name, &row.key_hash);
                }
            }
            Err(e) => {
                if let Some(suppressed) = SEND_FAILED_LOG.allow() {
                    warn!(error = %e, suppressed, "cluster bus: re-reading the stream rows failed (the keys are re-read at the next resync)");
                }
            }
        }
    }

    /// Puts the other nodes' viewers of `names` into the hub.
    fn apply_tally(&self, names: &[String]) {
        let tally = self.tally.lock();
        for name in names {
            if let Some(s) = self.hub.get(name) {
                s.set_viewers_elsewhere(tally.elsewhere(name));
            }
        }
    }

    /// From the cluster step (`alive`: the nodes alive now): nodes no
    /// longer alive lose their viewers; one seen alive again is asked for
    /// its figures (a `sync`).
    pub fn forget_dead(&self, alive: &[String]) {
        let is_alive = |n: &str| alive.iter().any(|a| a == n);
        let names = self.tally.lock().streams();
        let gone = self.tally.lock().retain(is_alive);
        if !gone.is_empty() {
            self.apply_tally(&names);
        }
        let back = {
            let mut forgotten = self.forgotten.lock();
            forgotten.extend(gone);
            let before = forgotten.len();
            forgotten.retain(|n| !is_alive(n));
            if forgotten.len() > MAX_NODES {
                forgotten.clear();
            }
            before != forgotten.len()
        };
        if back {
            self.send(BusMessage::Sync);
        }
    }

    /// Viewers on the whole cluster: the other nodes' plus this one's.
    pub fn cluster_total(&self) -> i64 {
        let here: i64 = self
            .hub
            .streams()
            .iter()
            .map(|s| {
                let (v, pull) = s.local_load();
                v as i64 - i64::from(pull)
            })
            .sum();
        (self.tally.lock().total() + here).max(0)
    }

    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        out.push_str("# HELP roomcast_cluster_bus_listening Whether this node's LISTEN connection to the cluster bus is up.\n# TYPE roomcast_cluster_bus_listening gauge\n");
        let _ = writeln!(
            out,
            "roomcast_cluster_bus_listening {}",
            u8::from(self.listening.load(Ordering::Relaxed))
        );
        out.push_str("# HELP roomcast_cluster_bus_messages_total Messages this node sent to and received from the cluster bus.\n# TYPE roomcast_cluster_bus_messages_total counter\n");
        let _ = writeln!(
            out,
            "roomcast_cluster_bus_messages_total{{direction=\"sent\"}} {}",
            self.sent.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "roomcast_cluster_bus_messages_total{{direction=\"received\"}} {}",
            self.received.load(Ordering::Relaxed)
        );
        out.push_str("# HELP roomcast_cluster_bus_resyncs_total Times the LISTEN connection came back and this node re-read the cluster's state.\n# TYPE roomcast_cluster_bus_resyncs_total counter\n");
        let _ = writeln!(
            out,
            "roomcast_cluster_bus_resyncs_total {}",
            self.resyncs.load(Ordering::Relaxed)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> ChatMessage {
        ChatMessage {
            id: "$e".into(),
            sender: "Alice".into(),
            sender_id: "@alice:hs".into(),
            body: body.into(),
            ts: 1,
            guest: false,
            rich: Default::default(),
        }
    }

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn small_messages_go_inline_big_ones_through_the_table() {
        let sealer = Sealer::new("a cluster secret of enough length");
        let seen = &mut Seen::default();
        let env = Envelope {
            n: "a".into(),
            m: BusMessage::Chat {
                room: "!r:hs".into(),
                message: Box::new(chat("hi")),
            },
        };
        let Encoded::Inline(p) = encode(&env, &sealer, NOW).unwrap() else {
            panic!("inline")
        };
        assert_eq!(
            decode(&p, &sealer, NOW, seen).unwrap(),
            Received::Message(env)
        );
        let big = Envelope {
            n: "a".into(),
            m: BusMessage::Chat {
                room: "!r:hs".into(),
                message: Box::new(chat(&"é".repeat(20_000))),
            },
        };
        let Encoded::Table(body) = encode(&big, &sealer, NOW).unwrap() else {
            panic!("table")
        };
        assert!(body.len() > 8000);
        assert_eq!(decode_body(&body, &sealer, NOW, seen).unwrap(), big);
        assert_eq!(
            decode("@42", &sealer, NOW, seen).unwrap(),
            Received::Table(42)
        );
        let huge = Envelope {
            n: "a".into(),
            m: BusMessage::Chat {
                room: "!r:hs".into(),
                message: Box::new(chat(&"x".repeat(PAYLOAD_MAX_BYTES))),
            },
        };
        assert!(matches!(
            encode(&huge, &sealer, NOW),
            Err(BusError::TooBig(_))
        ));
        assert!(decode("@x", &sealer, NOW, seen).is_err());
        assert!(decode("{\"n\":1}", &sealer, NOW, seen).is_err());
        assert!(decode("not json", &sealer, NOW, seen).is_err());
    }

    #[test]
    fn forged_or_unsigned_messages_are_dropped() {
        let sealer = Sealer::new("a cluster secret of enough length");
        let seen = &mut Seen::default();
        // What a database role without the secret could NOTIFY: a node's
        // viewers that would make every cap refuse, a member let back in.
        for m in [
            BusMessage::Viewers {
                counts: vec![("s".into(), u32::MAX, false)],
            },
            BusMessage::Membership {
                stream: "s".into(),
                user: "@eve:hs".into(),
                joined: true,
            },
        ] {
            let env = Envelope { n: "b".into(), m };
            let plain = serde_json::to_string(&env).unwrap();
            assert!(
                matches!(
                    decode(&plain, &sealer, NOW, seen),
                    Err(BusError::Seal(SealError::Unsealed))
                ),
                "{plain}"
            );
            let forged = Sealer::new("not the cluster's secret, guessed");
            let Encoded::Inline(p) = encode(&env, &forged, NOW).unwrap() else {
                panic!("inline")
            };
            assert!(decode(&p, &sealer, NOW, seen).is_err(), "another key");
            // A table row written by hand is checked the same way.
            assert!(decode_body(&plain, &sealer, NOW, seen).is_err());
            // A genuine message, replayed, is dropped the second time.
            let Encoded::Inline(p) = encode(&env, &sealer, NOW).unwrap() else {
                panic!("inline")
            };
            assert!(decode(&p, &sealer, NOW, seen).is_ok());
            assert!(matches!(
                decode(&p, &sealer, NOW + 1, seen),
                Err(BusError::Seal(SealError::Replayed))
            ));
        }
    }

    #[test]
    fn the_listener_names_itself() {
        assert_eq!(
            listener_url("postgres://u:p@h/db", "c"),
            "postgres://u:p@h/db?application_name=roomcast-bus-c"
        );
        assert_eq!(
            listener_url("postgres://h/db?sslmode=disable", "c"),
            "postgres://h/db?sslmode=disable&application_name=roomcast-bus-c"
        );
    }

    #[test]
    fn the_tally_sums_other_nodes_and_takes_their_pulls_off() {
        let mut t = Tally::default();
        // B pulls s from A and has 10 viewers; C pulls it and has 3.
        t.apply("b", &[("s".into(), 10, true)]);
        t.apply("c", &[("s".into(), 3, true), ("t".into(), 2, false)]);
        assert_eq!(t.elsewhere("s"), 9 + 2);
        assert_eq!(t.elsewhere("t"), 2);
        assert_eq!(t.total(), 13);
        // A node's message replaces its figures.
        t.apply("c", &[]);
        assert_eq!(t.elsewhere("t"), 0);
        assert_eq!(t.elsewhere("s"), 9);
        // A dead node's viewers are gone.
        assert_eq!(t.retain(|n| n != "b"), ["b"]);
        assert_eq!(t.elsewhere("s"), 0);
        // Bounded.
        for i in 0..(MAX_NODES + 5) {
            t.apply(&format!("n{i}"), &[]);
        }
        assert_eq!(t.by_node.len(), MAX_NODES);
    }

    #[test]
    fn equal_states_have_equal_signatures() {
        let hub = Hub::new();
        let a = hub.ensure_stream("a", None);
        let other = Hub::new();
        let b = other.ensure_stream("a", None);
        assert_eq!(control_sig(&a), control_sig(&b));
        b.set_title("Renamed");
        assert_ne!(control_sig(&a), control_sig(&b));
        // Viewers and live are not part of it.
        a.set_title("Renamed");
        a.viewer_joined();
        assert_eq!(control_sig(&a), control_sig(&b));
    }
}
