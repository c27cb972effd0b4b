//! The appservice on several roomcast processes sharing one PostgreSQL
//! database (issue 13, item 5): the homeserver's `url` may point at a load
//! balancer over all of them, so any node may get any transaction, and a
//! retry may land on another node.
//!
//! - Exactly once: accepting an event inserts its id into
//!   `matrix_events_done` in the transaction that queues it, so a second
//!   node accepting the same event queues nothing (store/matrix.rs).
//! - Per-room order: one node at a time processes a room's inbox. It holds
//!   the lease row `room:<id>` (`matrix_leases`), claimed in one upsert and
//!   renewed by [`Matrix::keep_claims`] with all the node's leases. Why a
//!   lease row and not a PostgreSQL advisory lock: an advisory lock lives on
//!   one connection, which a worker would have to hold from the pool for the
//!   whole room (homeserver calls and retries included; 32 rooms at once
//!   against 8 connections), and a node that hangs without closing its TCP
//!   connection would keep the lock until the kernel gives up on it. A
//!   lease lapses after [`LEASE_TTL`] whatever the node does, and is a row
//!   anyone can read.
//! - The outbox: one node at a time delivers it (lease `outbox`), so each
//!   notice goes out once and a stream's "ended" edit follows its notice.
//!   Notices are a few per stream; one deliverer is plenty. A lease taken
//!   over from a node that stalled past its expiry may send an item again:
//!   it goes with the same transaction id, which the homeserver
//!   deduplicates.
//! - Go-live sessions: the node with the publisher owns its stream's
//!   session (`matrix_golive_sessions.node`); another node that sees the
//!   stream live (an edge relaying it) finds the session owned by a node
//!   alive (lease `node:<id>`) and neither announces nor ends it.
//!
//! On SQLite (one process) no lease is taken and nothing here queries.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::Matrix;
use crate::log_every::LogEvery;
use crate::store::matrix::GoliveRow;
use crate::store::matrix_leases::now_ms;
use crate::store::{Backend, StoreError};

/// A lease not renewed for this long is free: how long a room, the outbox
/// or a go-live session waits for a node that died.
pub const LEASE_TTL: Duration = Duration::from_secs(15);
/// How often a node renews its leases and looks for rooms nobody processes.
const RENEW_EVERY: Duration = Duration::from_secs(4);
/// How often a node that does not hold the outbox tries to take it.
pub const OUTBOX_POLL: Duration = Duration::from_secs(2);

/// Lapsed leases are forgotten after a day (each process has its own node id).
const PRUNE_AFTER_MS: i64 = 86_400_000;

fn ttl_ms() -> i64 {
    LEASE_TTL.as_millis() as i64
}

/// This process's identity and whether it shares its database.
pub struct Claims {
    node: String,
    shared: bool,
    outbox_warned: LogEvery,
}

impl Claims {
    pub fn new(backend: Backend) -> Claims {
        Claims {
            node: format!(
                "{}-{}",
                std::process::id(),
                hex::encode(rand::random::<[u8; 6]>())
            ),
            shared: backend == Backend::Postgres,
            outbox_warned: LogEvery::new(Duration::from_secs(60)),
        }
    }

    /// The node's name: its host and HTTP listen address when the port is
    /// fixed, so a process restarted after a crash is the same node and
    /// takes its own leases back at once instead of waiting for them to
    /// lapse (two processes cannot listen on one address of one host).
    /// With port 0 the random name stays.
    fn named_after(&mut self, listen: std::net::SocketAddr) {
        if listen.port() == 0 {
            return;
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        self.node = format!("{host}@{listen}");
    }

    /// Other processes may share the database: claim before acting.
    pub fn shared(&self) -> bool {
        self.shared
    }

    pub fn node(&self) -> &str {
        &self.node
    }
}

fn room_key(room: &str) -> String {
    format!("room:{room}")
}

impl Matrix {
    /// Names this node, before [`Matrix::spawn`]: its `[cluster]` node_id
    /// when there is one (unique by configuration), else its host and HTTP
    /// listen address (see [`Claims::named_after`]).
    pub fn with_node_name(
        mut self,
        cluster_node: Option<&str>,
        listen: std::net::SocketAddr,
    ) -> Self {
        match cluster_node {
            Some(id) => self.claims.node = format!("cluster:{id}"),
            None => self.claims.named_after(listen),
        }
        self
    }

    /// Takes (or keeps) the right to process `room`'s inbox. On SQLite always.
    pub(super) async fn claim_room(&self, room: &str) -> Result<bool, StoreError> {
        if !self.claims.shared() {
            return Ok(true);
        }
        self.store
            .claim_lease(&room_key(room), self.claims.node(), ttl_ms())
            .await
    }

    /// Gives `room` back (its inbox is empty). A failure only delays another
    /// node until the lease lapses.
    pub(super) async fn release_room(&self, room: &str) {
        if !self.claims.shared() {
            return;
        }
        if let Err(e) = self
            .store
            .release_lease(&room_key(room), self.claims.node())
            .await
        {
            warn!(room = %room, "matrix: releasing a room's lease failed (it lapses): {e}");
        }
    }

    /// Events arrived for `room` on another node while this one held it.
    pub(super) async fn room_has_events(&self, room: &str) -> bool {
        self.claims.shared() && self.store.inbox_has(room).await.unwrap_or(true)
    }

    /// Takes (or keeps) the outbox. On SQLite always.
    pub(super) async fn claim_outbox(&self) -> bool {
        if !self.claims.shared() {
            return true;
        }
        match self
            .store
            .claim_lease("outbox", self.claims.node(), ttl_ms())
            .await
        {
            Ok(held) => held,
            Err(e) => {
                if let Some(suppressed) = self.claims.outbox_warned.allow() {
                    warn!(
                        suppressed,
                        "matrix: claiming the outbox failed (logged once a minute): {e}"
                    );
                }
                false
            }
        }
    }

    /// A room just claimed: what another node may have changed (its name,
    /// its streams) is read again, so this node acts on the room as stored.
    pub(super) async fn reload_room(&self, room: &str) -> Result<(), StoreError> {
        if !self.claims.shared() {
            return Ok(());
        }
        let Some(row) = self.store.room(room).await? else {
            return Ok(());
        };
        let maps = self.store.mappings_of_room(room).await?;
        for gone in self.streams_of_room(room) {
            if !maps.iter().any(|m| m.stream == gone.stream) {
                self.rooms.remove_stream(&gone.stream);
            }
        }
        for (row, m) in self.rooms.load(vec![row], maps) {
            if m.room_id == room {
                self.apply_room_to_stream(&row, &m);
            }
        }
        Ok(())
    }

    /// A stream unknown here went live (mapped on another node since this
    /// one started): its room is read from the database.
    pub(super) async fn reload_stream(&self, stream: &str) -> bool {
        if !self.claims.shared() {
            return false;
        }
        match self.store.mapping(stream).await {
            Ok(Some(m)) => self.reload_room(&m.room_id).await.is_ok(),
            _ => false,
        }
    }

    /// At a clean stop: the rooms, the outbox and this node's go-live
    /// sessions go to the other nodes now rather than when the leases lapse.
    pub async fn release_claims(&self) {
        if !self.claims.shared() {
            return;
        }
        if let Err(e) = self.store.release_leases(self.claims.node()).await {
            warn!("matrix: releasing the leases at shutdown failed (they lapse): {e}");
        }
    }

    /// Go-live sessions of nodes that stopped, now claimed by this one: a
    /// stream live here at once (its publisher came back to this node), any
    /// other once its node has been gone for two lease times (so the node
    /// the publisher came back to gets it first).
    pub(super) async fn orphan_sessions(&self) -> Result<Vec<GoliveRow>, StoreError> {
        let long_ago = now_ms() - 2 * ttl_ms();
        let mut mine = Vec::new();
        self.orphans_into(&mut mine, long_ago).await?;
        Ok(mine)
    }

    /// At start-up: this node's own sessions (it was restarted under the
    /// same name) and those of nodes that stopped.
    pub(super) async fn sessions_at_start(&self) -> Result<Vec<GoliveRow>, StoreError> {
        let mut mine = self.store.node_golive_sessions(self.claims.node()).await?;
        self.orphans_into(&mut mine, now_ms() - 2 * ttl_ms())
            .await?;
        Ok(mine)
    }

    async fn orphans_into(
        &self,
        mine: &mut Vec<GoliveRow>,
        long_ago: i64,
    ) -> Result<(), StoreError> {
        for (row, owner_lapsed) in self
            .store
            .orphan_golive_sessions(self.claims.node())
            .await?
        {
            let long_gone = owner_lapsed.is_none_or(|t| t < long_ago);
            if (long_gone || self.live_here(&row.stream))
                && self
                    .store
                    .claim_golive_session(&row, self.claims.node())
                    .await?
            {
                mine.push(row);
            }
        }
        Ok(())
    }

    /// Continues the sessions of nodes that stopped (see [`Self::orphan_sessions`]).
    async fn adopt_sessions(self: &Arc<Self>) -> Result<(), StoreError> {
        let rows = self.orphan_sessions().await?;
        if rows.is_empty() {
            return Ok(());
        }
        info!(
            sessions = rows.len(),
            "matrix: taking over go-live sessions of a node that stopped"
        );
        let streams: Vec<String> = rows.iter().map(|r| r.stream.clone()).collect();
        self.continue_sessions(rows);
        for stream in streams {
            if self.live_here(&stream) {
                self.on_live(&stream);
            }
        }
        Ok(())
    }

    /// The node's heartbeat: renews its leases (`node:<id>` too), and starts
    /// a worker for every room with waiting events, so a room whose node
    /// died is taken over once its lease lapses. Only on PostgreSQL.
    pub(super) async fn keep_claims(self: Arc<Self>) {
        if !self.claims.shared() {
            return;
        }
        info!(node = %self.claims.node(), "matrix: sharing the database with other roomcast processes: rooms, the outbox and go-live sessions are claimed");
        let node_key = format!("node:{}", self.claims.node());
        let mut failing = false;
        loop {
            let r = async {
                self.store
                    .claim_lease(&node_key, self.claims.node(), ttl_ms())
                    .await?;
                self.store
                    .renew_leases(self.claims.node(), ttl_ms())
                    .await?;
                self.store.prune_leases(PRUNE_AFTER_MS).await?;
                self.adopt_sessions().await?;
                self.store.inbox_rooms().await
            }
            .await;
            match r {
                Ok(rooms) => {
                    if failing {
                        info!("matrix: leases renewed again");
                    }
                    failing = false;
                    for room in rooms {
                        self.start_worker(room);
                    }
                }
                Err(e) => {
                    if !failing {
                        warn!(
                            "matrix: renewing the leases failed (another node may take over): {e}"
                        );
                    }
                    failing = true;
                }
            }
            tokio::time::sleep(RENEW_EVERY).await;
        }
    }
}
