//! Restreaming: while a stream is live on this node, push it to the
//! destinations its owner set (Twitch, YouTube, any RTMP(S) server).
//!
//! Data flows hub → [`queue::PushQueue`] (a bounded sink per destination) →
//! [`push::Push`] (the RTMP client task). The manager only starts and stops
//! pushes from the hub's lossless control path; it never touches media.

pub mod codecs;
pub mod dest;
pub mod flv_ex;
pub mod flv_mux;
pub mod health;
pub mod opus_aac;
pub mod push;
pub mod queue;
pub mod rtmp_client;
pub mod secret;
pub mod stored;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use serde::Serialize;
use tokio::task::JoinHandle;
use tracing::info;

use crate::hub::{FrameSink, Hub, SideSink, Stream};
use dest::{Destination, Target};
use health::{Health, PushState};
use queue::PushQueue;

/// Hub sink ids of pushes (apart from WebRTC shards and HLS muxers).
const SINK_ID_BASE: u64 = 1 << 41;
/// A push further behind than this skips to the next keyframe: about 8 s
/// of a 6 Mbit/s stream.
pub const DEFAULT_QUEUE_BYTES: usize = 6 * 1024 * 1024;

struct Running {
    task: JoinHandle<()>,
    queue: Arc<PushQueue>,
    sink_id: u64,
    stream: Arc<Stream>,
}

impl Running {
    fn stop(self) {
        self.task.abort();
        self.stream.detach_sink(self.sink_id);
        self.stream.detach_side_sink(self.sink_id);
    }
}

/// A stream's Opus→AAC task, its hub sink id and the stream.
type Transcoder = (JoinHandle<()>, u64, Arc<Stream>);

/// One destination as the API and `!live restream` show it: never the key.
#[derive(Debug, Clone, Serialize)]
pub struct DestinationStatus {
    pub label: String,
    pub url: String,
    /// The key masked (`••••••••ab`).
    pub key: String,
    pub enabled: bool,
    #[serde(flatten)]
    pub state: PushState,
    pub bitrate_kbps: u64,
    pub bytes_sent: u64,
    /// Frames skipped because the destination was too slow.
    pub frames_dropped: u64,
}

pub struct Restreamer {
    hub: Arc<Hub>,
    destinations: Mutex<HashMap<String, Vec<Destination>>>,
    running: Mutex<HashMap<(String, String), Running>>,
    health: Mutex<HashMap<(String, String), Arc<Health>>>,
    next_sink: AtomicU64,
    queue_bytes: usize,
    /// Opus→AAC per stream with pushes (used when its publisher is WHIP).
    transcoders: Mutex<HashMap<String, Transcoder>>,
    /// Streams of the config file: their destinations are the file's.
    config_streams: Mutex<std::collections::HashSet<String>>,
    persist: std::sync::OnceLock<stored::Persist>,
    tls: Arc<push::TlsRoots>,
}

impl Restreamer {
    /// `ca_file`: extra trust roots for RTMPS destinations (`restream.ca_file`).
    pub fn new(
        hub: Arc<Hub>,
        queue_bytes: usize,
        ca_file: Option<std::path::PathBuf>,
    ) -> Arc<Self> {
        Arc::new(Restreamer {
            hub,
            destinations: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            health: Mutex::new(HashMap::new()),
            next_sink: AtomicU64::new(SINK_ID_BASE),
            queue_bytes,
            transcoders: Mutex::new(HashMap::new()),
            config_streams: Mutex::new(Default::default()),
            persist: std::sync::OnceLock::new(),
            tls: Arc::new(push::TlsRoots::new(ca_file)),
        })
    }

    /// Replaces a stream's destinations (from the config or the database)
    /// and starts or stops pushes to match.
    pub fn set_destinations(&self, stream: &str, dests: Vec<Destination>) {
        self.destinations.lock().insert(stream.to_string(), dests);
        if let Some(s) = self.hub.get(stream) {
            self.reconcile(&s);
        }
    }

    /// A config-file stream's destinations (only the file changes them).
    pub fn set_config_destinations(&self, stream: &str, dests: Vec<Destination>) {
        self.config_streams.lock().insert(stream.to_string());
        self.set_destinations(stream, dests);
    }

    pub fn is_config_stream(&self, stream: &str) -> bool {
        self.config_streams.lock().contains(stream)
    }

    pub fn destinations(&self, stream: &str) -> Vec<Destination> {
        self.destinations
            .lock()
            .get(stream)
            .cloned()
            .unwrap_or_default()
    }

    /// Follows the hub's control path: pushes start when a stream goes live
    /// and stop when it goes offline. A takeover is not a change here: the
    /// pushes continue with the new publisher's first keyframe.
    pub fn spawn(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        let mut feed = self.hub.control_feed();
        let hub = self.hub.clone();
        for s in hub.streams() {
            self.reconcile(&s);
        }
        tokio::spawn(async move {
            let mut sessions: HashMap<String, u64> = HashMap::new();
            while let Some(changed) = feed.changed(&hub).await {
                let Some(me) = me.upgrade() else { return };
                for s in changed {
                    me.reconcile(&s);
                    // Going live: re-read the stored destinations, which
                    // another cluster node may have changed meanwhile.
                    // Kept for live streams only: one made and removed
                    // again and again (a party share) leaves nothing here.
                    let n = s.control_state().live_sessions;
                    if !s.is_live() {
                        sessions.remove(&s.name);
                    } else if sessions.insert(s.name.clone(), n) != Some(n) {
                        let me = me.clone();
                        tokio::spawn(async move { me.refresh_stored(&s.name).await });
                    }
                }
            }
        });
    }

    fn reconcile(&self, stream: &Arc<Stream>) {
        // A relayed stream is pushed by the node its publisher is on.
        let live = stream.is_live() && !stream.is_relayed();
        let dests = self.destinations(&stream.name);
        let mut running = self.running.lock();
        let mut health = self.health.lock();
        let wanted: Vec<&Destination> = dests.iter().filter(|d| live && d.enabled).collect();
        let stale: Vec<_> = running
            .keys()
            .filter(|(s, l)| s == &stream.name && !wanted.iter().any(|d| &d.label == l))
            .cloned()
            .collect();
        for key in stale {
            if let Some(r) = running.remove(&key) {
                info!(stream = %key.0, destination = %key.1, "restream push stopped");
                r.stop();
            }
        }
        health.retain(|(s, l), _| s != &stream.name || dests.iter().any(|d| &d.label == l));
        for d in &dests {
            let h = health
                .entry((stream.name.clone(), d.label.clone()))
                .or_default()
                .clone();
            if !d.enabled {
                h.set(PushState::Off);
            } else if !live {
                h.set(PushState::Idle);
            }
        }
        {
            // One Opus→AAC per stream while it has pushes; it idles for RTMP
            // publishers, whose own AAC rides the side track.
            let mut t = self.transcoders.lock();
            if wanted.is_empty() {
                if let Some((task, sink_id, s)) = t.remove(&stream.name) {
                    task.abort();
                    s.detach_sink(sink_id);
                }
            } else if !t.contains_key(&stream.name) {
                let sink_id = self.next_sink.fetch_add(1, Ordering::Relaxed);
                let task = opus_aac::spawn(stream, sink_id);
                t.insert(stream.name.clone(), (task, sink_id, stream.clone()));
            }
        }
        for d in wanted {
            let key = (stream.name.clone(), d.label.clone());
            if running.contains_key(&key) {
                continue;
            }
            let h = health.get(&key).cloned().unwrap_or_default();
            let target = match Target::parse(&d.url) {
                Ok(t) => t,
                Err(e) => {
                    h.set(PushState::Failed {
                        reason: format!("bad URL: {e}"),
                    });
                    continue;
                }
            };
            let queue = PushQueue::new(self.queue_bytes);
            let sink_id = self.next_sink.fetch_add(1, Ordering::Relaxed);
            let frames: Arc<dyn FrameSink> = queue.clone();
            let side: Arc<dyn SideSink> = queue.clone();
            stream.attach_sink(sink_id, &frames);
            stream.attach_side_sink(sink_id, side);
            let push = push::Push {
                stream: stream.clone(),
                label: d.label.clone(),
                target,
                key: d.key.clone(),
                queue: queue.clone(),
                health: h,
                tls: self.tls.clone(),
                codecs: d.codecs,
            };
            info!(stream = %stream.name, destination = %d.label, url = %d.url, "restream push starting");
            running.insert(
                key,
                Running {
                    task: tokio::spawn(push.run()),
                    queue,
                    sink_id,
                    stream: stream.clone(),
                },
            );
        }
    }

    /// Health of every destination of `stream`, keys masked.
    pub fn status(&self, stream: &str) -> Vec<DestinationStatus> {
        let dests = self.destinations(stream);
        let health = self.health.lock();
        let running = self.running.lock();
        dests
            .iter()
            .map(|d| {
                let key = (stream.to_string(), d.label.clone());
                let h = health.get(&key);
                DestinationStatus {
                    label: d.label.clone(),
                    url: d.url.clone(),
                    key: d.key.masked(),
                    enabled: d.enabled,
                    state: h.map(|h| h.state()).unwrap_or(PushState::Idle),
                    bitrate_kbps: h.map(|h| h.bitrate_kbps()).unwrap_or(0),
                    bytes_sent: h.map(|h| h.bytes_sent.load(Ordering::Relaxed)).unwrap_or(0),
                    frames_dropped: running
                        .get(&key)
                        .map(|r| r.queue.dropped.load(Ordering::Relaxed))
                        .unwrap_or(0),
                }
            })
            .collect()
    }

    /// A number that changes whenever some destination of `stream` changes
    /// state in a way the room should hear about (not on every retry).
    pub fn news_generation(&self, stream: &str) -> u64 {
        self.health
            .lock()
            .iter()
            .filter(|((s, _), _)| s == stream)
            .map(|(_, h)| h.generation.load(Ordering::Relaxed))
            .sum()
    }

    /// `/metrics` lines. Private streams are left out (their names are private).
    pub fn render_metrics(&self, out: &mut String) {
        out.push_str("# HELP roomcast_restream_up Whether the push to a restream destination is live (1) or not (0).\n# TYPE roomcast_restream_up gauge\n");
        let mut rows = Vec::new();
        for s in self.hub.streams() {
            if s.access() != crate::hub::Access::Public {
                continue;
            }
            for d in self.status(&s.name) {
                rows.push((s.name.clone(), d));
            }
        }
        for (s, d) in &rows {
            let _ = writeln!(
                out,
                "roomcast_restream_up{{stream=\"{s}\",destination=\"{}\",state=\"{}\"}} {}",
                d.label,
                d.state.word(),
                u8::from(d.state == PushState::Live)
            );
        }
        out.push_str("# HELP roomcast_restream_sent_bytes_total Bytes sent to a restream destination.\n# TYPE roomcast_restream_sent_bytes_total counter\n");
        for (s, d) in &rows {
            let _ = writeln!(
                out,
                "roomcast_restream_sent_bytes_total{{stream=\"{s}\",destination=\"{}\"}} {}",
                d.label, d.bytes_sent
            );
        }
        out.push_str("# HELP roomcast_restream_dropped_frames_total Frames a slow restream destination skipped.\n# TYPE roomcast_restream_dropped_frames_total counter\n");
        for (s, d) in &rows {
            let _ = writeln!(
                out,
                "roomcast_restream_dropped_frames_total{{stream=\"{s}\",destination=\"{}\"}} {}",
                d.label, d.frames_dropped
            );
        }
    }

    /// Ends every push (shutdown).
    pub fn stop_all(&self) {
        for (_, r) in self.running.lock().drain() {
            r.stop();
        }
        for (_, (task, sink_id, s)) in self.transcoders.lock().drain() {
            task.abort();
            s.detach_sink(sink_id);
        }
    }
}
