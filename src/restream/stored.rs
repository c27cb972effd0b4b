//! Destinations kept in the database (set by `!live restream` or the API),
//! their keys sealed; those of config-file streams come from the file and
//! cannot be changed from outside it.

use std::path::PathBuf;
use std::sync::OnceLock;

use tracing::{info, warn};

use super::Restreamer;
use super::dest::{Destination, SecretKey, Target, valid_label};
use super::secret::Sealer;
use crate::store::Store;
use crate::store::restream::DestinationRow;

/// Most destinations a stream may have (each is a connection and a queue).
pub const MAX_DESTINATIONS: usize = 8;

/// Where the sealing secret comes from: `restream.secret` (64 hex
/// characters, e.g. from the environment) or else `restream.secret_file`.
pub enum SecretSource {
    Inline([u8; 32]),
    File(PathBuf),
}

pub(super) struct Persist {
    pub store: Store,
    pub secret: SecretSource,
    pub sealer: OnceLock<Sealer>,
}

impl Persist {
    fn sealer(&self) -> Result<&Sealer, String> {
        if let Some(s) = self.sealer.get() {
            return Ok(s);
        }
        let s = match &self.secret {
            SecretSource::Inline(bytes) => Sealer::from_bytes(bytes),
            SecretSource::File(path) => Sealer::from_file(path).map_err(|e| {
                warn!("restream: {e}");
                "The restream secret file cannot be used (the server log says why).".to_string()
            })?,
        };
        Ok(self.sealer.get_or_init(|| s))
    }
}

/// Why a change was refused, in words for the user.
pub type Refusal = String;

impl Restreamer {
    /// Loads the stored destinations (config-file streams keep the file's).
    pub async fn load_stored(&self, store: Store, secret: SecretSource) -> anyhow::Result<()> {
        let rows = store.restream_destinations().await?;
        let persist = Persist {
            store,
            secret,
            sealer: OnceLock::new(),
        };
        let mut by_stream: std::collections::HashMap<String, Vec<Destination>> = Default::default();
        for r in rows {
            if self.config_streams.lock().contains(&r.stream) {
                continue;
            }
            // Logged by sealer(); the streams go on without these pushes.
            let Ok(sealer) = persist.sealer() else { break };
            match sealer.open(&r.stream, &r.label, &r.key_sealed) {
                Ok(key) => by_stream
                    .entry(r.stream.clone())
                    .or_default()
                    .push(Destination {
                        label: r.label,
                        url: r.url,
                        key: SecretKey::new(key),
                        enabled: r.enabled,
                        codecs: None,
                    }),
                Err(e) => {
                    warn!(stream = %r.stream, destination = %r.label, "restream: {e}; destination skipped")
                }
            }
        }
        let _ = self.persist.set(persist);
        for (stream, dests) in by_stream {
            info!(stream = %stream, destinations = dests.len(), "restream: destinations loaded");
            self.set_destinations(&stream, dests);
        }
        Ok(())
    }

    /// Re-reads one stream's stored destinations and applies them if they
    /// changed (set on another cluster node). A database error keeps what
    /// is known.
    pub(super) async fn refresh_stored(&self, stream: &str) {
        let Some(p) = self.persist.get() else { return };
        if self.config_streams.lock().contains(stream) {
            return;
        }
        let rows = match p.store.restream_destinations().await {
            Ok(r) => r,
            Err(e) => {
                warn!(stream, "restream: re-reading destinations failed: {e}");
                return;
            }
        };
        let Ok(sealer) = p.sealer() else { return };
        let mut fresh: Vec<Destination> = rows
            .into_iter()
            .filter(|r| r.stream == stream)
            .filter_map(|r| {
                let key = sealer.open(&r.stream, &r.label, &r.key_sealed).ok()?;
                Some(Destination {
                    label: r.label,
                    url: r.url,
                    key: SecretKey::new(key),
                    enabled: r.enabled,
                    codecs: None,
                })
            })
            .collect();
        fresh.sort_by(|a, b| a.label.cmp(&b.label));
        let mut known = self.destinations(stream);
        known.sort_by(|a, b| a.label.cmp(&b.label));
        if fresh != known {
            info!(
                stream,
                destinations = fresh.len(),
                "restream: destinations changed elsewhere; applied"
            );
            self.set_destinations(stream, fresh);
        }
    }

    fn persist(&self, stream: &str) -> Result<&Persist, Refusal> {
        if self.config_streams.lock().contains(stream) {
            return Err(format!(
                "Stream '{stream}' is declared in the config file: its destinations are set there ([[streams.restream]])."
            ));
        }
        self.persist
            .get()
            .ok_or_else(|| "Restream destinations cannot be stored here.".to_string())
    }

    /// Adds or replaces a destination. The key is sealed before it is stored.
    pub async fn add(
        &self,
        stream: &str,
        label: &str,
        url: &str,
        key: &str,
        by: Option<&str>,
    ) -> Result<(), Refusal> {
        let p = self.persist(stream)?;
        if !valid_label(label) {
            return Err("The label is 1–32 letters, digits, '-' or '_'.".into());
        }
        Target::parse(url).map_err(|e| format!("That URL won't do: {e}."))?;
        if key.is_empty() || key.len() > 512 || key.chars().any(char::is_whitespace) {
            return Err("The key is missing or not a single word.".into());
        }
        let mut dests = self.destinations(stream);
        if !dests.iter().any(|d| d.label == label) && dests.len() >= MAX_DESTINATIONS {
            return Err(format!(
                "A stream has at most {MAX_DESTINATIONS} destinations; remove one first."
            ));
        }
        let sealed = p.sealer()?.seal(stream, label, key);
        p.store
            .upsert_restream_destination(
                &DestinationRow {
                    stream: stream.to_string(),
                    label: label.to_string(),
                    url: url.to_string(),
                    key_sealed: sealed,
                    enabled: true,
                },
                by,
            )
            .await
            .map_err(|e| {
                warn!(
                    stream,
                    destination = label,
                    "restream: storing a destination failed: {e}"
                );
                "The destination could not be stored; try again.".to_string()
            })?;
        dests.retain(|d| d.label != label);
        dests.push(Destination {
            label: label.to_string(),
            url: url.to_string(),
            key: SecretKey::new(key),
            enabled: true,
            codecs: None,
        });
        dests.sort_by(|a, b| a.label.cmp(&b.label));
        info!(
            stream,
            destination = label,
            url,
            "restream: destination set"
        );
        self.set_destinations(stream, dests);
        Ok(())
    }

    pub async fn remove(&self, stream: &str, label: &str) -> Result<(), Refusal> {
        let p = self.persist(stream)?;
        let found = p
            .store
            .remove_restream_destination(stream, label)
            .await
            .map_err(|e| {
                warn!(
                    stream,
                    destination = label,
                    "restream: removing a destination failed: {e}"
                );
                "The destination could not be removed; try again.".to_string()
            })?;
        if !found {
            return Err(format!("Stream '{stream}' has no destination '{label}'."));
        }
        let mut dests = self.destinations(stream);
        dests.retain(|d| d.label != label);
        info!(stream, destination = label, "restream: destination removed");
        self.set_destinations(stream, dests);
        Ok(())
    }

    pub async fn set_enabled(&self, stream: &str, label: &str, on: bool) -> Result<(), Refusal> {
        let p = self.persist(stream)?;
        let found = p
            .store
            .set_restream_enabled(stream, label, on)
            .await
            .map_err(|e| {
                warn!(
                    stream,
                    destination = label,
                    "restream: updating a destination failed: {e}"
                );
                "The destination could not be changed; try again.".to_string()
            })?;
        if !found {
            return Err(format!("Stream '{stream}' has no destination '{label}'."));
        }
        let mut dests = self.destinations(stream);
        for d in dests.iter_mut().filter(|d| d.label == label) {
            d.enabled = on;
        }
        self.set_destinations(stream, dests);
        Ok(())
    }
}

/// What stands for a key sealed in transit (see [`Restreamer::seal_in_transit`]).
pub const SEALED_PREFIX: &str = "sealed:";
/// The row a key sealed in transit is bound to: no real stream has this name.
const IN_TRANSIT: &str = "\0in-transit";

impl Restreamer {
    /// Seals a key that arrived in a command, before the command is stored
    /// (the appservice's inbox keeps events until they are processed), so
    /// the database never holds it in clear. `None`: no usable secret.
    pub fn seal_in_transit(&self, label: &str, key: &str) -> Option<String> {
        let p = self.persist.get()?;
        let sealed = p.sealer().ok()?.seal(IN_TRANSIT, label, key);
        Some(format!("{SEALED_PREFIX}{sealed}"))
    }

    /// The key of a command whose key was sealed in transit; a key that was
    /// not sealed passes as it is.
    pub fn open_in_transit(&self, label: &str, key: &str) -> Option<String> {
        let Some(sealed) = key.strip_prefix(SEALED_PREFIX) else {
            return Some(key.to_string());
        };
        let p = self.persist.get()?;
        p.sealer().ok()?.open(IN_TRANSIT, label, sealed).ok()
    }
}
