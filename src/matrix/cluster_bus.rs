//! The Matrix bridge on the cluster bus (src/cluster/bus.rs). Only the node
//! that processes a room's transaction sees its chat: it sends what it
//! rendered to the other nodes, whose pages show it too. A room change
//! (name, topic, join rule, a stream mapped by `!live new`) is in the
//! database already; the others re-read the room from there.

use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::Matrix;

/// Fewest seconds between two resyncs after the bus was away.
const RESYNC_EVERY: std::time::Duration = std::time::Duration::from_secs(30);
use super::chat::HISTORY;
use crate::cluster::bus::{Bus, BusMessage, Inbound};
use crate::hub::ChatMessage;

impl Matrix {
    /// Cluster mode: joins the bus (its inbox, once).
    pub fn join_bus(self: &Arc<Self>, bus: &Arc<Bus>) {
        if self.bus.set(bus.clone()).is_err() {
            return;
        }
        let Some(rx) = bus.inbox() else {
            return;
        };
        let me = self.clone();
        tokio::spawn(async move { me.follow_bus(rx).await });
    }

    async fn follow_bus(self: Arc<Self>, mut rx: mpsc::Receiver<Inbound>) {
        // A resync reads every room and asks the homeserver for each room's
        // chat: at most one per RESYNC_EVERY, however often the bus asks
        // (the one asked meanwhile runs when the time is up).
        let mut last_resync: Option<tokio::time::Instant> = None;
        let mut owed: Option<tokio::time::Instant> = None;
        loop {
            let m = tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => m,
                    None => return,
                },
                _ = async { tokio::time::sleep_until(owed.unwrap_or_else(tokio::time::Instant::now)).await }, if owed.is_some() => {
                    owed = None;
                    Inbound::Resync
                }
            };
            if let Inbound::Resync = m {
                let now = tokio::time::Instant::now();
                if let Some(at) = last_resync
                    && now < at + RESYNC_EVERY
                {
                    owed = Some(at + RESYNC_EVERY);
                    continue;
                }
                last_resync = Some(now);
            }
            match m {
                Inbound::Reload(stream) => {
                    self.reload_stream(&stream).await;
                }
                Inbound::Chat { room, message } => self.chat_from_cluster(&room, message),
                Inbound::Redaction { room, id } => {
                    if let Some(q) = self.chat.history.lock().get_mut(&room) {
                        q.retain(|m| m.id != id);
                    }
                    self.redaction_here(&room, &id);
                }
                Inbound::Resync => self.resync_from_cluster().await,
            }
        }
    }

    /// A message another node rendered: into this node's history (an edit
    /// or a reaction replaces the message of the same id) and pages.
    fn chat_from_cluster(&self, room: &str, msg: Arc<ChatMessage>) {
        if self.room_row(room).is_none() {
            return;
        }
        {
            let mut chat = self.chat.history.lock();
            let q = chat.entry(room.to_string()).or_default();
            match q.iter_mut().find(|m| m.id == msg.id) {
                Some(m) => *m = msg.clone(),
                None => q.push_back(msg.clone()),
            }
            while q.len() > HISTORY {
                q.pop_front();
            }
        }
        self.publish_here(room, &msg);
    }

    /// After the bus was away: every room as stored, and each room's chat
    /// from the homeserver (what was said meanwhile).
    async fn resync_from_cluster(&self) {
        if let Err(e) = self.load_mapping().await {
            warn!("matrix: re-reading the rooms after the cluster bus came back failed: {e}");
            return;
        }
        for room in self.rooms.room_ids() {
            if let Err(e) = self.backfill(&room).await {
                warn!(room = %room, "matrix: chat backfill after the cluster bus came back failed: {e}");
            }
        }
        info!("matrix: rooms and chat re-read after the cluster bus came back");
    }

    pub(super) fn chat_to_cluster(&self, room: &str, msg: &Arc<ChatMessage>) {
        if let Some(bus) = self.bus.get() {
            bus.send(BusMessage::Chat {
                room: room.to_string(),
                message: Box::new((**msg).clone()),
            });
        }
    }

    /// The other nodes re-read the stream's key from the database.
    pub(super) fn key_to_cluster(&self, stream: &str) {
        if let Some(bus) = self.bus.get() {
            bus.send(BusMessage::Key {
                stream: stream.to_string(),
            });
        }
    }

    pub(super) fn redaction_to_cluster(&self, room: &str, id: &str) {
        if let Some(bus) = self.bus.get() {
            bus.send(BusMessage::Redaction {
                room: room.to_string(),
                id: id.to_string(),
            });
        }
    }
}
