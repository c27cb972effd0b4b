//! `!live restream …`: a stream's owner (or its room's admins) set where it
//! is pushed, and read how each push is doing. Adding a destination carries
//! its key, so it is taken by DM only; the key is never echoed (shown
//! masked) nor logged. The room hears of a destination's health through one
//! state event (`io.roomcast.restream`, state key = the stream), rewritten
//! when a destination changes state: not a message per retry.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ruma::api::client::state::send_state_event;
use ruma::events::StateEventType;
use serde_json::json;
use tracing::{info, warn};

use super::commands::Restream;
use super::ids::{raw, room_id};
use super::{Matrix, MatrixError};
use crate::restream::health::PushState;
use crate::restream::{DestinationStatus, Restreamer};

pub const RESTREAM_STATE_TYPE: &str = "io.roomcast.restream";
/// How often destinations' health is compared with what the room was told.
const HEALTH_POLL: Duration = Duration::from_secs(1);

type Outcome = Result<Result<(), String>, MatrixError>;

/// One destination in words: `nginx (rtmp://host/app, key ••••••••ab): live, 2400 kbit/s`.
pub fn describe(d: &DestinationStatus) -> String {
    let state = match &d.state {
        PushState::Idle => "waiting for the stream to go live".to_string(),
        PushState::Off => "switched off".to_string(),
        PushState::Connecting => "connecting".to_string(),
        PushState::Live => format!("live, {} kbit/s", d.bitrate_kbps),
        PushState::Reconnecting { attempt, error } => {
            format!("reconnecting (attempt {attempt}): {error}")
        }
        PushState::Failed { reason } => format!("failed: {reason}"),
    };
    format!("{} ({}, key {}): {state}", d.label, d.url, d.key)
}

impl Matrix {
    pub fn set_restreamer(&self, r: Arc<Restreamer>) {
        let _ = self.restream.set(r);
    }

    pub(super) async fn restream_command(
        self: &Arc<Self>,
        room: &str,
        sender: &str,
        in_dm: bool,
        action: Restream,
        name: Option<String>,
        event: Option<&str>,
    ) -> Outcome {
        let Some(restreamer) = self.restream.get().cloned() else {
            return Ok(Err("Restreaming is not available on this server.".into()));
        };
        if matches!(action, Restream::Add { .. }) && !in_dm {
            // The key is in the room now: take it out of sight if we may.
            if let Some(ev) = event {
                self.redact_quietly(room, ev).await;
            }
            return Ok(Err(
                "Send `!live restream add` in a direct chat with me: a stream key must not be posted in a room. If that key was real, get a new one from the platform."
                    .into(),
            ));
        }
        let m = match self.rooms.resolve(room, in_dm, name.as_deref()) {
            Ok(m) => m,
            Err(r) => return Ok(Err(r)),
        };
        if m.owner.as_deref() != Some(sender) && !self.is_admin(&m.room_id, sender).await? {
            return Ok(Err(
                "Only the stream's owner or its room's admins can do that.".into(),
            ));
        }
        let stream = m.stream.as_str();
        let done = match action {
            Restream::Show => {
                let list = restreamer.status(stream);
                let text = if list.is_empty() {
                    format!(
                        "Stream '{stream}' is not restreamed. DM me `!live restream add <label> <rtmp(s)://server/app> <key> {stream}`."
                    )
                } else {
                    let lines: Vec<String> =
                        list.iter().map(|d| format!("• {}", describe(d))).collect();
                    format!("Restreams of '{stream}':\n{}", lines.join("\n"))
                };
                self.reply(room, &text).await;
                return Ok(Ok(()));
            }
            Restream::Add { label, url, key } => {
                let Some(clear) = restreamer.open_in_transit(&label, key.expose()) else {
                    return Ok(Err(
                        "That key could not be read back; send the command again.".into(),
                    ));
                };
                let r = restreamer
                    .add(stream, &label, &url, &clear, Some(sender))
                    .await;
                // Stored sealed: the clear key need not stay in the chat's history.
                if r.is_ok()
                    && let Some(ev) = event
                {
                    self.redact_quietly(room, ev).await;
                }
                r.map(|_| format!(
                    "'{stream}' will be pushed to {label} ({url}, key {}) while it is live. `!live restream {stream}` shows how it goes.",
                    crate::restream::dest::SecretKey::new(clear).masked()
                ))
            }
            Restream::Remove { label } => restreamer
                .remove(stream, &label)
                .await
                .map(|_| format!("'{stream}' is no longer pushed to {label}.")),
            Restream::Enable { label, on } => {
                restreamer.set_enabled(stream, &label, on).await.map(|_| {
                    format!(
                        "Restream of '{stream}' to {label} is {}.",
                        if on { "on" } else { "off" }
                    )
                })
            }
        };
        match done {
            Ok(text) => {
                info!(stream = %stream, by = %sender, "matrix: restream destinations changed");
                self.reply(room, &text).await;
                Ok(Ok(()))
            }
            Err(refusal) => Ok(Err(refusal)),
        }
    }

    /// A `!live restream add` event with its key sealed (and no HTML body,
    /// which would repeat it), so neither the inbox nor the pages' chat
    /// store the key in clear. Other events are returned as they are.
    pub(super) fn seal_command_key(&self, ev: &super::Ev) -> Option<super::Ev> {
        let body = ev.content["body"].as_str()?;
        let super::commands::Parsed::Command(super::commands::Command::Restream {
            action: Restream::Add { label, key, .. },
            ..
        }) = super::commands::parse(body)
        else {
            return None;
        };
        let replacement = self
            .restream
            .get()
            .and_then(|r| r.seal_in_transit(&label, key.expose()))
            .unwrap_or_else(|| "(key withheld)".to_string());
        let words: Vec<&str> = body.split_whitespace().collect();
        let sealed_body: Vec<&str> = words
            .iter()
            .map(|w| {
                if *w == key.expose() {
                    replacement.as_str()
                } else {
                    w
                }
            })
            .collect();
        let mut ev = ev.clone();
        ev.content["body"] = serde_json::Value::String(sealed_body.join(" "));
        if let Some(o) = ev.content.as_object_mut() {
            o.remove("formatted_body");
            o.remove("format");
        }
        Some(ev)
    }

    async fn redact_quietly(&self, room: &str, event: &str) {
        use ruma::api::client::redact::redact_event;
        let (Ok(room_id), Ok(event_id)) = (room_id(room), ruma::OwnedEventId::try_from(event))
        else {
            return;
        };
        let mut req = redact_event::v3::Request::new(
            room_id,
            event_id,
            super::ids::new_txn_id().as_str().into(),
        );
        req.reason = Some("a stream key posted in a room".into());
        if let Err(e) = self.client.send(req, None).await {
            info!(room = %room, "matrix: could not redact a message with a restream key: {e}");
        }
    }

    /// Keeps each stream room's `io.roomcast.restream` state event in step
    /// with its destinations' health, once per change of state.
    pub(super) async fn watch_restream(self: Arc<Self>) {
        let Some(restreamer) = self.restream.get().cloned() else {
            return;
        };
        let mut told: HashMap<String, u64> = HashMap::new();
        // Only the first pass (after a start) takes what it finds as already
        // told; a stream that gains destinations later is news even when its
        // pushes went live between two polls.
        let mut first_pass = true;
        loop {
            tokio::time::sleep(HEALTH_POLL).await;
            if !self.is_connected() {
                continue;
            }
            let starting = std::mem::take(&mut first_pass);
            for s in self.hub.streams() {
                let dests = restreamer.status(&s.name);
                if dests.is_empty() {
                    continue;
                }
                let generation = restreamer.news_generation(&s.name);
                let last = told.get(&s.name).copied();
                if last.is_none() && starting {
                    // The room already shows what it was told before a restart.
                    told.insert(s.name.clone(), generation);
                    continue;
                }
                if last == Some(generation) {
                    continue;
                }
                let Some((m, _)) = self.rooms.of_stream(&s.name) else {
                    told.insert(s.name.clone(), generation);
                    continue;
                };
                let content = json!({
                    "stream": s.name,
                    "destinations": dests.iter().map(|d| {
                        let mut v = json!({"label": d.label, "state": d.state.word()});
                        match &d.state {
                            PushState::Failed { reason } => v["reason"] = json!(reason),
                            PushState::Reconnecting { error, .. } => v["error"] = json!(error),
                            _ => {}
                        }
                        v
                    }).collect::<Vec<_>>(),
                });
                let sent = async {
                    let req = send_state_event::v3::Request::new_raw(
                        room_id(&m.room_id)?,
                        StateEventType::from(RESTREAM_STATE_TYPE),
                        s.name.clone(),
                        raw(&content)?,
                    );
                    self.client.send(req, None).await?;
                    Ok::<_, MatrixError>(())
                };
                match sent.await {
                    Ok(()) => {
                        told.insert(s.name.clone(), generation);
                    }
                    // Tried again on the next poll.
                    Err(e) => {
                        warn!(stream = %s.name, "matrix: restream health state not sent: {e}")
                    }
                }
            }
        }
    }
}
