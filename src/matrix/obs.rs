//! `!live obs`: a one-time link to an OBS profile (src/obs_profile), by DM.
//! As with `!live key`, the link is sent first and the key it derives is
//! committed after, so the key that works is always one the user can get;
//! a link sent by a run that failed before its commit derives a key that is
//! never valid, and answers 404.

use serde_json::json;

use super::text::html_escape;
use super::{Matrix, MatrixError};
use crate::auth::keys::hash_key_hex;
use crate::obs_profile::link;

impl Matrix {
    /// Done once per (command event, `step`), like `deliver_key`.
    pub(super) async fn deliver_obs_link(
        &self,
        user: &str,
        stream: &str,
        event: Option<&str>,
        step: &str,
    ) -> Result<(), MatrixError> {
        if self.step_done(event, step).await?.is_some() {
            return Ok(());
        }
        let secret = link::new_secret();
        let hash = hash_key_hex(&link::key_of(&secret));
        self.store
            .insert_obs_link(&link::id_of(&secret), stream, link::DEFAULT_TTL_SECS)
            .await?;
        let url = format!("{}/obs/{secret}", self.urls.public_base);
        let text = format!(
            "OBS profile for '{stream}' (one download, valid 24 h): {url}\n\
             Open it and press Download. Unzip the file, then OBS → Profile → Import and pick the roomcast-{stream} folder \
             (roomcast-{stream}-whip for WHIP, OBS 30+). It carries a new stream key: the old one \
             no longer works, and `!live rotate {stream}` makes this link stop working."
        );
        let html = format!(
            "<p>OBS profile for <b>{s}</b> (one download, valid 24 h): <a href=\"{u}\">{u}</a></p>\
             <p>Open it and press Download. Unzip the file, then OBS → Profile → Import and pick the <code>roomcast-{s}</code> folder \
             (<code>roomcast-{s}-whip</code> for WHIP, OBS 30+). It carries a new stream key: the old one \
             no longer works, and <code>!live rotate {s}</code> makes this link stop working.</p>",
            s = html_escape(stream),
            u = html_escape(&url),
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
        self.store
            .commit_key_step(stream, &hash, event, step)
            .await?;
        self.keys.set(stream, &hash);
        Ok(())
    }
}
