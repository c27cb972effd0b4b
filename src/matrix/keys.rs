//! Stream keys by direct message. A new key is sent first and its hash
//! committed after, so the key that works is always one the user received;
//! the DM room is checked to still hold both the user and the bot, so a key
//! never lands in a room the user has left.

use ruma::api::client::membership::leave_room;
use ruma::api::client::room::create_room;
use serde_json::json;
use tracing::{info, warn};

use super::ids::{room_id, user_id};
use super::text::html_escape;
use super::{HsError, Matrix, MatrixError};
use crate::auth::keys::{generate_key, hash_key_hex};

impl Matrix {
    /// Sends `user` the settings of `stream` with a new key, then makes that
    /// key the valid one. Done once per (command event, `step`): a command
    /// processed again after a failure does not replace the key twice.
    pub(super) async fn deliver_key(
        &self,
        user: &str,
        stream: &str,
        event: Option<&str>,
        step: &str,
    ) -> Result<(), MatrixError> {
        if self.step_done(event, step).await?.is_some() {
            return Ok(());
        }
        let key = generate_key();
        let hash = hash_key_hex(&key);
        self.send_settings(user, stream, &key).await?;
        self.store
            .commit_key_step(stream, &hash, event, step)
            .await?;
        self.keys.set(stream, &hash);
        self.key_to_cluster(stream);
        Ok(())
    }

    /// The homeserver's default room version (known after connecting; asked
    /// for when a command runs before that, e.g. one left by a crash).
    pub(super) async fn default_room_version(&self) -> Result<String, MatrixError> {
        if let Some(v) = self.rooms.version() {
            return Ok(v);
        }
        Ok(self.refresh_room_version().await?)
    }

    /// Asks the homeserver for its default room version, and keeps it.
    pub(super) async fn refresh_room_version(&self) -> Result<String, HsError> {
        let caps = self
            .client
            .send(
                ruma::api::client::discovery::get_capabilities::v3::Request::new(),
                None,
            )
            .await?;
        let v = caps.capabilities.room_versions.default.to_string();
        self.rooms.set_version(v.clone());
        Ok(v)
    }

    /// The bot's direct chat with `user`: the known one while it still holds
    /// both, else a new one (the user is invited to it).
    pub(super) async fn dm_room(&self, user: &str) -> Result<String, MatrixError> {
        if let Some(r) = self.store.dm_room(user).await? {
            if self.dm_holds_both(&r, user).await? {
                return Ok(r);
            }
            info!(user = %user, room = %r, "matrix: the user left the direct chat; making a new one");
            self.store.forget_dm_room(user, &r).await?;
            let req = leave_room::v3::Request::new(room_id(&r)?);
            if let Err(e) = self.client.send(req, None).await {
                warn!(room = %r, "matrix: cannot leave the old direct chat: {e}");
            }
        }
        let mut req = create_room::v3::Request::new();
        req.preset = Some(create_room::v3::RoomPreset::TrustedPrivateChat);
        req.is_direct = true;
        req.invite = vec![user_id(user)?];
        let room = self.client.send(req, None).await?.room_id.to_string();
        self.store.set_dm_room(user, &room).await?;
        Ok(room)
    }

    /// The bot is joined and the user joined or invited.
    async fn dm_holds_both(&self, room: &str, user: &str) -> Result<bool, MatrixError> {
        let membership = |ev: Option<serde_json::Value>| {
            ev.and_then(|e| e["content"]["membership"].as_str().map(str::to_string))
                .unwrap_or_default()
        };
        // Not in the room any more (403): it does not hold both.
        let state = |r: Result<Option<serde_json::Value>, MatrixError>| match r {
            Ok(ev) => Ok(membership(ev)),
            Err(e) if e.is_transient() => Err(e),
            Err(_) => Ok(String::new()),
        };
        let bot = state(
            self.state_event(room, "m.room.member", self.bot.as_str())
                .await,
        )?;
        if bot != "join" {
            return Ok(false);
        }
        let theirs = state(self.state_event(room, "m.room.member", user).await)?;
        Ok(matches!(theirs.as_str(), "join" | "invite"))
    }

    /// DMs the publishing settings with the key. The key exists only in this message.
    pub(super) async fn send_settings(
        &self,
        user: &str,
        stream: &str,
        key: &str,
    ) -> Result<(), MatrixError> {
        let base = &self.urls.public_base;
        let rtmp = self
            .urls
            .rtmp
            .as_deref()
            .map(|u| format!("RTMP (OBS → Settings → Stream → Service: Custom…)\n  Server: {u}\n  Stream Key: {key}\n"))
            .unwrap_or_default();
        let text = format!(
            "Stream '{stream}' — publishing settings\n{rtmp}\
             WHIP (OBS → Service: WHIP)\n  Server: {base}/whip/{stream}\n  Bearer Token: {key}\n\
             OBS → Settings → Output (Advanced): Keyframe Interval 1 s, x264 options bframes=0, Rate Control CBR, Tune zerolatency.\n\
             Watch: {base}/watch/{stream}\n\
             roomcast keeps only a hash of the key: this message is its only copy. `!live rotate {stream}` replaces it."
        );
        let html = format!(
            "<p>Stream <b>{s}</b> — publishing settings</p>{rtmp_html}\
             <p>WHIP (OBS → Service: WHIP)<br>Server: <code>{b}/whip/{s}</code><br>Bearer Token: <code>{k}</code></p>\
             <p>OBS → Settings → Output (Advanced): Keyframe Interval <b>1 s</b>, x264 options <b>bframes=0</b>, Rate Control <b>CBR</b>, Tune <b>zerolatency</b>.</p>\
             <p>Watch: <a href=\"{b}/watch/{s}\">{b}/watch/{s}</a></p>\
             <p>roomcast keeps only a hash of the key: this message is its only copy. <code>!live rotate {s}</code> replaces it.</p>",
            s = html_escape(stream),
            b = html_escape(base),
            k = html_escape(key),
            rtmp_html = self
                .urls
                .rtmp
                .as_deref()
                .map(|u| format!(
                    "<p>RTMP (OBS → Settings → Stream → Service: Custom…)<br>Server: <code>{}</code><br>Stream Key: <code>{}</code></p>",
                    html_escape(u),
                    html_escape(key)
                ))
                .unwrap_or_default(),
        );
        let room = self.dm_room(user).await?;
        let content = json!({
            "msgtype": "m.notice",
            "body": text,
            "format": "org.matrix.custom.html",
            "formatted_body": html,
            "m.mentions": {},
        });
        self.notice_to(&room, &content).await?;
        Ok(())
    }
}
