//! Cluster mode (`[cluster]`): several roomcast nodes share one PostgreSQL
//! database. Each node registers itself and heartbeats there; a node silent
//! for [`NODE_DEAD_AFTER`] is dead. The node a stream's publisher is
//! connected to records itself as the stream's origin for that publish
//! session; a viewer arriving at another node makes that node pull the
//! stream from the origin once over WHEP ([`relay`]) and fan it out locally.
//!
//! The decisions (who is alive, which node is a stream's origin, which pulls
//! to start or stop, whether a local publisher was taken over from another
//! node) are the pure [`plan`]; [`Cluster`] is the thin driver that reads the
//! database, applies the plan and writes back, once a second and at once on
//! a local control change.

pub mod auth;
pub mod bus;
pub mod bus_seal;
pub mod placement;
pub mod relay;
pub mod tree;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::config::ClusterConfig;
use crate::hub::{Hub, IngestProtocol, Stream};
use crate::log_every::LogEvery;
use crate::store::Store;
use crate::store::cluster::{NodeLoadRow, NodeRow, OriginRow};
use auth::NodeAuth;
use relay::{OriginTarget, Relays};

/// How often a node writes its heartbeat and re-reads the cluster.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// A node whose heartbeat is older than this is dead: its streams have no origin.
pub const NODE_DEAD_AFTER: Duration = Duration::from_secs(4);
/// A viewer's request re-reads the cluster if the view is older than this.
const FRESH_VIEW: Duration = Duration::from_millis(250);
/// A viewer waits this long for a pull to bring the stream's first keyframe.
const PULL_WAIT: Duration = Duration::from_secs(5);

static DB_FAILED_LOG: LogEvery = LogEvery::new(Duration::from_secs(10));
/// Redirects happen per WHEP request, before any rate limit: a line at most
/// every 10 s (the count is in `suppressed`).
static REDIRECT_LOG: LogEvery = LogEvery::new(Duration::from_secs(10));

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The cluster as last read from the database.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub nodes: Vec<NodeRow>,
    pub origins: Vec<OriginRow>,
    /// When it was read (ms since the epoch).
    pub read_ms: i64,
}

impl View {
    pub fn is_alive(&self, node: &NodeRow) -> bool {
        self.read_ms - node.heartbeat_ms <= NODE_DEAD_AFTER.as_millis() as i64
    }

    /// Where to pull `stream` from: its origin, if that node is alive and
    /// is not `me`.
    pub fn origin_of(&self, stream: &str, me: &str) -> Option<OriginTarget> {
        let o = self.origins.iter().find(|o| o.stream == stream)?;
        if o.node_id == me {
            return None;
        }
        let node = self
            .nodes
            .iter()
            .find(|n| n.node_id == o.node_id && self.is_alive(n))?;
        Some(OriginTarget {
            node_id: node.node_id.clone(),
            internal_url: node.internal_url.clone(),
            session: o.session.clone(),
        })
    }

    fn origin_session(&self, stream: &str) -> Option<&str> {
        self.origins
            .iter()
            .find(|o| o.stream == stream)
            .map(|o| o.session.as_str())
    }
}

/// One local stream as the plan needs it.
#[derive(Debug, Clone)]
pub struct LocalStream {
    pub name: String,
    /// The session of a publisher connected to this node (not a relay).
    pub own_session: Option<String>,
    pub viewers: usize,
    /// Where a running pull reads from (node and origin session).
    pub relay: Option<OriginTarget>,
}

/// What to do after a look at the cluster.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Record this node as origin: (stream, session).
    pub claim: Vec<(String, String)>,
    /// Our publish sessions that ended: (stream, session).
    pub release: Vec<(String, String)>,
    /// A publisher on another node took these streams over: end the local one.
    pub taken_over: Vec<String>,
    /// Start (or move) a pull: the stream has local viewers and lives elsewhere.
    pub pull: Vec<(String, OriginTarget)>,
    /// End these pulls (the origin is gone or moved, or we publish it now).
    pub unpull: Vec<String>,
}

/// The pure decision of one cluster step. `claimed` is what this node wrote
/// as origin sessions (stream → session); `upstream` is `cluster.upstream`.
pub fn plan(
    me: &str,
    upstream: Option<&str>,
    view: &View,
    local: &[LocalStream],
    claimed: &HashMap<String, String>,
) -> Plan {
    let mut out = Plan::default();
    for s in local {
        match &s.own_session {
            Some(session) => {
                let ours_written = claimed.get(&s.name) == Some(session);
                match view.origin_session(&s.name) {
                    // Written and still ours: nothing to do.
                    Some(o) if o == session && ours_written => {}
                    // Another node's later session replaced ours.
                    Some(_) if ours_written => out.taken_over.push(s.name.clone()),
                    // Not written yet, or the row is gone (a node left and
                    // deleted it): (re)claim.
                    _ => out.claim.push((s.name.clone(), session.clone())),
                }
                if s.relay.is_some() {
                    out.unpull.push(s.name.clone());
                }
            }
            None => {
                let source = tree::source_of(view, &s.name, me, upstream);
                match (&s.relay, source) {
                    // A new publish session, or another node to pull from.
                    (Some(current), Some(o)) if *current != o => {
                        out.pull.push((s.name.clone(), o));
                    }
                    (Some(_), None) => out.unpull.push(s.name.clone()),
                    (None, Some(o)) if s.viewers > 0 => out.pull.push((s.name.clone(), o)),
                    _ => {}
                }
            }
        }
        if let Some(session) = claimed.get(&s.name)
            && s.own_session.as_ref() != Some(session)
        {
            out.release.push((s.name.clone(), session.clone()));
        }
    }
    out
}

/// This node's part in the cluster.
pub struct Cluster {
    pub node_id: String,
    internal_url: String,
    /// `cluster.upstream`: pull from this node instead of the origin.
    upstream: Option<String>,
    /// Where viewers reach this node (redirect targets).
    public_url: String,
    /// Answer WHEP POSTs with 307 to roomier nodes.
    redirect_viewers: bool,
    /// This node's `[limits] max_viewers` (0: none), for placement.
    node_max_viewers: i64,
    pub auth: Arc<NodeAuth>,
    store: Store,
    hub: Arc<Hub>,
    pub relays: Relays,
    started_ms: i64,
    view: Mutex<View>,
    claimed: Mutex<HashMap<String, String>>,
    wake: Arc<Notify>,
    /// Control events to and from the other nodes (LISTEN/NOTIFY).
    pub bus: Arc<bus::Bus>,
    /// Held by a step and by the leave, so no heartbeat follows the leave.
    stepping: tokio::sync::Mutex<bool>,
}

/// `GET /api/v1/cluster`.
#[derive(Debug, Serialize)]
pub struct ClusterSnapshot {
    pub node_id: String,
    pub nodes: Vec<NodeSnapshot>,
    pub streams: Vec<StreamPlacement>,
}

#[derive(Debug, Serialize)]
pub struct NodeSnapshot {
    pub node_id: String,
    pub internal_url: String,
    pub alive: bool,
    pub heartbeat_age_ms: i64,
    pub viewers: i64,
    pub relays: i64,
    /// Where viewers reach it (redirect target) and its own viewer cap.
    pub public_url: Option<String>,
    pub max_viewers: i64,
}

#[derive(Debug, Serialize)]
pub struct StreamPlacement {
    pub stream: String,
    pub origin: String,
    /// Nodes of this one's view pulling it (only this node's pulls are known here).
    pub relayed_here: bool,
}

impl Cluster {
    pub fn new(
        cfg: &ClusterConfig,
        database_url: &str,
        store: Store,
        hub: Arc<Hub>,
        keys: Arc<crate::auth::keys::KeyRing>,
        node_max_viewers: usize,
    ) -> Arc<Cluster> {
        let auth = Arc::new(NodeAuth::new(&cfg.secret, &cfg.node_id));
        let wake = Arc::new(Notify::new());
        let bus = bus::Bus::new(
            &cfg.node_id,
            database_url,
            store.clone(),
            hub.clone(),
            keys,
            &cfg.secret,
            wake.clone(),
        );
        Arc::new(Cluster {
            node_id: cfg.node_id.clone(),
            internal_url: cfg.internal_url.trim_end_matches('/').to_string(),
            upstream: cfg.upstream.clone(),
            public_url: cfg
                .public_url
                .as_deref()
                .unwrap_or(&cfg.internal_url)
                .trim_end_matches('/')
                .to_string(),
            redirect_viewers: cfg.redirect_viewers,
            node_max_viewers: node_max_viewers as i64,
            relays: Relays::new(hub.clone(), auth.clone()),
            auth,
            store,
            hub,
            started_ms: now_ms(),
            view: Mutex::default(),
            claimed: Mutex::default(),
            wake,
            bus,
            stepping: tokio::sync::Mutex::new(false),
        })
    }

    /// Joins the cluster (first heartbeat) and starts the heartbeat loop.
    pub async fn join(self: &Arc<Self>) -> Result<(), crate::store::StoreError> {
        self.heartbeat().await?;
        let live: Vec<_> = self
            .view
            .lock()
            .nodes
            .iter()
            .map(|n| n.node_id.clone())
            .collect();
        info!(node = %self.node_id, internal_url = %self.internal_url, nodes = %live.join(","), "cluster: joined");
        self.bus.start();
        let me = self.clone();
        tokio::spawn(async move {
            let mut feed = me.hub.control_feed();
            let hub = me.hub.clone();
            let waker = me.clone();
            tokio::spawn(async move {
                // A local go-live or offline is written at once.
                while feed.changed(&hub).await.is_some() {
                    waker.wake.notify_one();
                }
            });
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(HEARTBEAT_INTERVAL) => {}
                    _ = me.wake.notified() => {}
                }
                if let Err(e) = me.step().await
                    && let Some(suppressed) = DB_FAILED_LOG.allow()
                {
                    warn!(error = %e, suppressed, "cluster: heartbeat failed; retrying");
                }
            }
        });
        Ok(())
    }

    /// Local demand besides WebRTC viewers (LL-HLS) that keeps a pull (once).
    pub fn set_demand(&self, demand: relay::Demand) {
        let _ = self.relays.demand.set(demand);
    }

    /// Leaves cleanly (shutdown): pulls end, and the node and its origins
    /// disappear from the database at once instead of after the dead time.
    pub async fn leave(&self) {
        let mut left = self.stepping.lock().await;
        *left = true;
        self.bus.stop();
        self.relays.stop_all();
        match self.store.cluster_leave(&self.node_id).await {
            Ok(()) => info!(node = %self.node_id, "cluster: left"),
            Err(e) => {
                warn!(error = %e, "cluster: leaving failed; the others see this node dead in a few seconds")
            }
        }
    }

    async fn heartbeat(&self) -> Result<(), crate::store::StoreError> {
        let viewers: usize = self.hub.streams().iter().map(|s| s.viewers()).sum();
        self.store
            .cluster_heartbeat(
                &self.node_id,
                &self.internal_url,
                self.started_ms,
                now_ms(),
                NodeLoadRow {
                    viewers: viewers as i64,
                    relays: self.relays.len() as i64,
                    public_url: &self.public_url,
                    max_viewers: self.node_max_viewers,
                },
            )
            .await?;
        self.refresh().await
    }

    async fn refresh(&self) -> Result<(), crate::store::StoreError> {
        let nodes = self.store.cluster_nodes().await?;
        let origins = self.store.cluster_origins().await?;
        *self.view.lock() = View {
            nodes,
            origins,
            read_ms: now_ms(),
        };
        Ok(())
    }

    fn local_streams(&self) -> Vec<LocalStream> {
        self.hub
            .streams()
            .into_iter()
            .map(|s| LocalStream {
                own_session: own_session(&self.node_id, &s),
                viewers: s.viewers() + usize::from(relay::wanted(&s, &self.relays.demand)),
                relay: self.relays.origin_of(&s.name),
                name: s.name.clone(),
            })
            .collect()
    }

    /// One look at the cluster: heartbeat, read, act.
    async fn step(&self) -> Result<(), crate::store::StoreError> {
        let left = self.stepping.lock().await;
        if *left {
            return Ok(());
        }
        self.heartbeat().await?;
        let local = self.local_streams();
        let p = {
            let view = self.view.lock();
            let claimed = self.claimed.lock();
            plan(
                &self.node_id,
                self.upstream.as_deref(),
                &view,
                &local,
                &claimed,
            )
        };
        for (stream, session) in &p.release {
            self.store.cluster_release_origin(stream, session).await?;
            let mut claimed = self.claimed.lock();
            if claimed.get(stream) == Some(session) {
                claimed.remove(stream);
            }
        }
        for (stream, session) in &p.claim {
            self.store
                .cluster_claim_origin(stream, &self.node_id, session, now_ms())
                .await?;
            info!(%stream, node = %self.node_id, "cluster: this node is the stream's origin");
            self.claimed.lock().insert(stream.clone(), session.clone());
        }
        for stream in &p.taken_over {
            if let Some(s) = self.hub.get(stream) {
                info!(%stream, "cluster: a publisher on another node took the stream over; ending the local one");
                s.end_publisher();
            }
            self.claimed.lock().remove(stream);
        }
        for stream in &p.unpull {
            self.relays.stop(stream);
        }
        for (stream, origin) in &p.pull {
            if let Some(s) = self.hub.get(stream) {
                self.relays.ensure(&s, origin);
            }
        }
        if !(p.claim.is_empty() && p.release.is_empty()) {
            self.refresh().await?;
            // The others re-read the origins now (live/offline on their pages).
            self.bus.send(bus::BusMessage::Origins);
        }
        self.share_view();
        Ok(())
    }

    /// Puts what the view says about other nodes into the hub: which
    /// streams are live elsewhere, and that dead nodes have no viewers.
    fn share_view(&self) {
        let view = self.view.lock().clone();
        for s in self.hub.streams() {
            let elsewhere = view.origin_of(&s.name, &self.node_id).map(|o| o.session);
            s.set_live_elsewhere(elsewhere.as_deref());
        }
        let alive: Vec<String> = view
            .nodes
            .iter()
            .filter(|n| view.is_alive(n))
            .map(|n| n.node_id.clone())
            .collect();
        self.bus.forget_dead(&alive);
    }

    /// `cluster.redirect_viewers`: where a WHEP POST for `stream` (at
    /// `path` with `query`) should go instead of this node, if anywhere.
    /// Public streams only: a browser drops `Authorization` when it follows
    /// a redirect to another origin.
    pub fn redirect_for(&self, stream: &Stream, path: &str, query: Option<&str>) -> Option<String> {
        if !self.redirect_viewers
            || placement::was_redirected(query)
            || stream.access() != crate::hub::Access::Public
            || !stream.control_state().shown_live()
        {
            return None;
        }
        let me = placement::NodeLoad {
            node_id: self.node_id.clone(),
            public_url: Some(self.public_url.clone()),
            viewers: self.hub.streams().iter().map(|s| s.viewers() as i64).sum(),
            max_viewers: self.node_max_viewers,
        };
        let others: Vec<placement::NodeLoad> = {
            let view = self.view.lock();
            view.nodes
                .iter()
                .filter(|n| n.node_id != self.node_id && view.is_alive(n))
                .map(|n| placement::NodeLoad {
                    node_id: n.node_id.clone(),
                    public_url: n.public_url.clone(),
                    viewers: n.viewers,
                    max_viewers: n.max_viewers,
                })
                .collect()
        };
        let target = placement::redirect_target(&me, &others)?;
        if let Some(suppressed) = REDIRECT_LOG.allow() {
            info!(stream = %stream.name, to = %target.node_id, suppressed, "cluster: viewer redirected to a node with more room");
        }
        Some(placement::redirect_location(
            target.public_url.as_deref()?,
            path,
            query,
        ))
    }

    /// The public URL of live node `node_id` (a recording's files are
    /// served by the node that made it); only a plain http(s) URL (it
    /// comes from that node's row and goes into a `Location`).
    pub fn public_url_of(&self, node_id: &str) -> Option<String> {
        let view = self.view.lock();
        view.nodes
            .iter()
            .find(|n| n.node_id == node_id && view.is_alive(n))
            .and_then(|n| n.public_url.clone())
            .filter(|u| placement::origin_of_url(u).is_some())
            .map(|u| u.trim_end_matches('/').to_string())
    }

    /// With `redirect_viewers`: the origins of the other nodes viewers may
    /// be sent to, for the pages' `connect-src`.
    pub fn redirect_origins(&self) -> Vec<String> {
        if !self.redirect_viewers {
            return Vec::new();
        }
        let view = self.view.lock();
        let mut v: Vec<String> = view
            .nodes
            .iter()
            .filter(|n| n.node_id != self.node_id)
            .filter_map(|n| placement::origin_of_url(n.public_url.as_deref()?))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Before a viewer of `name` is admitted: if the stream is not live here
    /// but published on another node, pull it and wait (bounded) for its
    /// first keyframe. Returns at once otherwise.
    pub async fn prepare_viewer(&self, name: &str) {
        let Some(stream) = self.hub.get(name) else {
            return;
        };
        if stream.is_live() {
            return;
        }
        let upstream = self.upstream.as_deref();
        let (mut origin, read_ms) = {
            let view = self.view.lock();
            (
                tree::source_of(&view, name, &self.node_id, upstream),
                view.read_ms,
            )
        };
        // The publisher may have started since the last heartbeat: read
        // again, but not for every request (offline streams are asked for
        // by anyone).
        if origin.is_none() && now_ms() - read_ms > FRESH_VIEW.as_millis() as i64 {
            if self.refresh().await.is_err() {
                return;
            }
            origin = tree::source_of(&self.view.lock(), name, &self.node_id, upstream);
        }
        let Some(origin) = origin else { return };
        self.relays.ensure(&stream, &origin);
        let deadline = tokio::time::Instant::now() + PULL_WAIT;
        let mut feed = self.hub.control_feed();
        while !(stream.is_live() && stream.has_cached_keyframe()) {
            if stream.is_live() {
                // Live, waiting for the keyframe the pull asked for.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    _ = tokio::time::sleep_until(deadline) => return,
                }
            } else {
                // Woken by the stream going live, or to see whether the
                // pull failed (refused, unreachable): no point waiting on.
                tokio::select! {
                    _ = feed.stream_changed(&stream) => {}
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = tokio::time::sleep_until(deadline) => return,
                }
            }
            if tokio::time::Instant::now() >= deadline || self.relays.origin_of(name).is_none() {
                return;
            }
        }
    }

    /// Whether this node answers another node's pull of `name` (see
    /// [`tree`]: a node with an upstream serves only what it publishes).
    pub fn serves_relays_of(&self, name: &str) -> bool {
        let publishes_it = self
            .hub
            .get(name)
            .is_some_and(|s| own_session(&self.node_id, &s).is_some());
        tree::serves_relays(self.upstream.as_deref(), publishes_it)
    }

    /// Prometheus lines: the pulls running here and the nodes seen alive.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let alive = {
            let view = self.view.lock();
            view.nodes.iter().filter(|n| view.is_alive(n)).count()
        };
        out.push_str("# HELP roomcast_cluster_relays Streams this node pulls from their origin node.\n# TYPE roomcast_cluster_relays gauge\n");
        let _ = writeln!(out, "roomcast_cluster_relays {}", self.relays.len());
        out.push_str("# HELP roomcast_cluster_nodes_alive Cluster nodes with a recent heartbeat, this one included.\n# TYPE roomcast_cluster_nodes_alive gauge\n");
        let _ = writeln!(out, "roomcast_cluster_nodes_alive {alive}");
        self.bus.render_metrics(out);
    }

    pub fn snapshot(&self) -> ClusterSnapshot {
        let view = self.view.lock();
        let relayed: Vec<String> = self.relays.list().into_iter().map(|(s, _)| s).collect();
        ClusterSnapshot {
            node_id: self.node_id.clone(),
            nodes: view
                .nodes
                .iter()
                .map(|n| NodeSnapshot {
                    node_id: n.node_id.clone(),
                    internal_url: n.internal_url.clone(),
                    alive: view.is_alive(n),
                    heartbeat_age_ms: (view.read_ms - n.heartbeat_ms).max(0),
                    viewers: n.viewers,
                    relays: n.relays,
                    public_url: n.public_url.clone(),
                    max_viewers: n.max_viewers,
                })
                .collect(),
            streams: view
                .origins
                .iter()
                .map(|o| StreamPlacement {
                    stream: o.stream.clone(),
                    origin: o.node_id.clone(),
                    relayed_here: relayed.contains(&o.stream),
                })
                .collect(),
        }
    }
}

/// The publish session of a publisher connected to this node (relays are not
/// publishers of the cluster): node and start time.
fn own_session(node: &str, s: &Stream) -> Option<String> {
    let snap = s.snapshot();
    if snap.ingest.as_ref()?.protocol == IngestProtocol::Relay {
        return None;
    }
    let started = s.started_at()?.duration_since(UNIX_EPOCH).ok()?;
    Some(format!("{node}:{}", started.as_micros()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, hb: i64) -> NodeRow {
        NodeRow::for_test(id, hb)
    }

    fn origin(stream: &str, node: &str, session: &str) -> OriginRow {
        OriginRow {
            stream: stream.into(),
            node_id: node.into(),
            session: session.into(),
            since_ms: 0,
        }
    }

    /// `relay`: the origin session pulled (`node:time`), from that node.
    fn local(name: &str, own: Option<&str>, viewers: usize, relay: Option<&str>) -> LocalStream {
        LocalStream {
            name: name.into(),
            own_session: own.map(Into::into),
            viewers,
            relay: relay.map(|session| {
                let node = session.split(':').next().unwrap_or_default();
                OriginTarget {
                    node_id: node.into(),
                    internal_url: format!("http://{node}"),
                    session: session.into(),
                }
            }),
        }
    }

    #[test]
    fn a_publisher_claims_its_stream_and_releases_it_when_it_ends() {
        let view = View {
            nodes: vec![node("a", 10_000)],
            origins: vec![],
            read_ms: 10_000,
        };
        let mut claimed = HashMap::new();
        let p = plan(
            "a",
            None,
            &view,
            &[local("t1", Some("a:1"), 0, None)],
            &claimed,
        );
        assert_eq!(p.claim, vec![("t1".into(), "a:1".into())]);
        claimed.insert("t1".to_string(), "a:1".to_string());
        let view = View {
            origins: vec![origin("t1", "a", "a:1")],
            ..view
        };
        assert_eq!(
            plan(
                "a",
                None,
                &view,
                &[local("t1", Some("a:1"), 0, None)],
                &claimed
            ),
            Plan::default()
        );
        let p = plan("a", None, &view, &[local("t1", None, 0, None)], &claimed);
        assert_eq!(p.release, vec![("t1".into(), "a:1".into())]);
    }

    #[test]
    fn viewers_on_an_edge_pull_from_a_live_origin_only() {
        let mut view = View {
            nodes: vec![node("a", 10_000), node("b", 10_000)],
            origins: vec![origin("t1", "a", "a:1")],
            read_ms: 10_500,
        };
        let none = HashMap::new();
        // No viewer: no pull.
        assert_eq!(
            plan("b", None, &view, &[local("t1", None, 0, None)], &none),
            Plan::default()
        );
        let p = plan("b", None, &view, &[local("t1", None, 3, None)], &none);
        assert_eq!(p.pull.len(), 1);
        assert_eq!(p.pull[0].1.internal_url, "http://a");
        // A running pull of the same session stays; a new session moves it.
        assert_eq!(
            plan(
                "b",
                None,
                &view,
                &[local("t1", None, 3, Some("a:1"))],
                &none
            ),
            Plan::default()
        );
        view.origins = vec![origin("t1", "c", "c:9")];
        view.nodes.push(node("c", 10_400));
        let p = plan(
            "b",
            None,
            &view,
            &[local("t1", None, 3, Some("a:1"))],
            &none,
        );
        assert_eq!(p.pull[0].1.session, "c:9");
        // The origin's node is dead (silent > 4 s): the pull ends.
        view.read_ms = 20_000;
        let p = plan(
            "b",
            None,
            &view,
            &[local("t1", None, 3, Some("c:9"))],
            &none,
        );
        assert_eq!(p.unpull, vec!["t1".to_string()]);
        // A stream's origin on this very node is never pulled.
        view.nodes = vec![node("b", 20_000)];
        view.origins = vec![origin("t1", "b", "b:1")];
        assert!(
            plan("b", None, &view, &[local("t1", None, 3, None)], &none)
                .pull
                .is_empty()
        );
    }

    #[test]
    fn an_edge_with_an_upstream_pulls_through_it_and_falls_back_to_the_origin() {
        let mut view = View {
            nodes: vec![node("a", 10_000), node("b", 10_000), node("c", 10_000)],
            origins: vec![origin("t1", "a", "a:1")],
            read_ms: 10_500,
        };
        let none = HashMap::new();
        let p = plan("c", Some("b"), &view, &[local("t1", None, 2, None)], &none);
        let via_b = p.pull[0].1.clone();
        assert_eq!(
            (via_b.node_id.as_str(), via_b.session.as_str()),
            ("b", "a:1")
        );
        let mut pulling = local("t1", None, 2, None);
        pulling.relay = Some(via_b);
        assert_eq!(
            plan("c", Some("b"), &view, &[pulling.clone()], &none),
            Plan::default()
        );
        // The upstream dies: the pull moves to the origin.
        view.nodes[1].heartbeat_ms = 1_000;
        let p = plan("c", Some("b"), &view, &[pulling], &none);
        assert_eq!(p.pull[0].1.node_id, "a");
        assert_eq!(p.pull[0].1.session, "a:1");
    }

    #[test]
    fn a_later_publisher_on_another_node_takes_the_stream_over() {
        let view = View {
            nodes: vec![node("a", 10_000), node("b", 10_000)],
            origins: vec![origin("t1", "b", "b:2")],
            read_ms: 10_000,
        };
        let mut claimed = HashMap::new();
        claimed.insert("t1".to_string(), "a:1".to_string());
        let p = plan(
            "a",
            None,
            &view,
            &[local("t1", Some("a:1"), 5, None)],
            &claimed,
        );
        assert_eq!(p.taken_over, vec!["t1".to_string()]);
        assert!(p.claim.is_empty());
        // Not yet written by us: we claim (the later write wins).
        let p = plan(
            "a",
            None,
            &view,
            &[local("t1", Some("a:1"), 5, None)],
            &HashMap::new(),
        );
        assert_eq!(p.claim.len(), 1);
    }
}
