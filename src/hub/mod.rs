//! The hub is the only meeting point between ingest and egress.
//!
//! Ingest opens a [`Publisher`] on a [`Stream`] and pushes media that is already
//! packetized for RTP (done once per stream). Egress registers a [`FrameSink`] per
//! stream and receives every frame as an `Arc<Frame>`: the payload bytes are shared
//! by all viewers, nothing is copied per viewer. Ingest never knows who watches and
//! egress never knows the source protocol.

mod budget;
pub mod chat;
mod control;
mod shared;
mod side;
mod stats;
mod tenure;
mod timeline;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use tokio::sync::broadcast;

use crate::log_every::LogEvery;
pub use budget::ByteBudget;
pub use chat::ChatMessage;
use control::ControlClock;
pub use control::{ControlFeed, ControlState, RoomLost};
pub use side::{SideSink, SourceAac};
pub use stats::StreamStats;
pub use tenure::SWEEP_INTERVAL;
use tenure::Tenure;
use timeline::Timeline;
use tracing::warn;

/// Largest number of video frames kept for a joining viewer. A publisher with a very
/// long keyframe interval must not make the cache grow without bound.
const GOP_CACHE_MAX_FRAMES: usize = 600;

/// Byte caps on what one publisher can make the server hold (`[limits]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubLimits {
    /// A frame larger than this is refused ([`PushError::FrameTooLarge`]).
    pub max_frame_bytes: usize,
    /// A GOP larger than this is not cached (joining viewers wait for the
    /// next keyframe instead of getting a replay).
    pub max_gop_cache_bytes: usize,
}

/// 32 MiB: a 4 s GOP at 60 Mbit/s (`limits.max_gop_cache_bytes`).
pub const DEFAULT_MAX_GOP_CACHE_BYTES: usize = 32 << 20;

impl Default for HubLimits {
    fn default() -> Self {
        HubLimits {
            max_frame_bytes: crate::media::DEFAULT_MAX_FRAME_BYTES,
            max_gop_cache_bytes: DEFAULT_MAX_GOP_CACHE_BYTES,
        }
    }
}

/// Over-limit publishers are logged at most this often (they reconnect).
const LIMIT_LOG_INTERVAL: Duration = Duration::from_secs(10);
static FRAME_TOO_LARGE_LOG: LogEvery = LogEvery::new(LIMIT_LOG_INTERVAL);
static GOP_TOO_LARGE_LOG: LogEvery = LogEvery::new(LIMIT_LOG_INTERVAL);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Video,
    Audio,
}

/// One video frame or one audio packet, packetized once for every viewer.
#[derive(Debug)]
pub struct Frame {
    pub kind: Kind,
    /// Position in the stream, strictly increasing across both kinds. Lets a sink
    /// skip frames it already got from a GOP snapshot.
    pub index: u64,
    /// Position among the stream's frames of the same kind, consecutive: a
    /// sink tells lost video (what follows waits for a keyframe) from lost
    /// audio (nothing waits) with it.
    pub kind_index: u64,
    /// RTP time in the track's clock (90 kHz video, 48 kHz audio) on the stream's
    /// continuous timeline: it does not jump when a publisher takes over.
    pub rtp_time: u32,
    /// The wall-clock instant of `rtp_time` on one clock shared by audio and video,
    /// so RTCP sender reports keep lip sync.
    pub wallclock: Instant,
    /// When the frame arrived at the server, for the transit-latency histogram.
    pub received: Instant,
    pub keyframe: bool,
    /// The publisher session that produced it: a change tells a viewer to wait
    /// for the new publisher's first keyframe.
    pub publisher: u64,
    /// RTP payloads in order; for video the last one carries the marker bit.
    pub payloads: Box<[Arc<[u8]>]>,
}

impl Frame {
    pub fn bytes(&self) -> usize {
        self.payloads.iter().map(|p| p.len()).sum()
    }
}

/// Egress side of the hub: something that forwards frames of one stream to viewers.
/// `deliver` runs on the publisher's task, so it must only enqueue.
pub trait FrameSink: Send + Sync {
    fn deliver(&self, stream: &Arc<Stream>, frame: &Arc<Frame>);
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct VideoInfo {
    /// "H264", "VP8", "VP9" or "AV1" (the SDP encoding name).
    pub codec: &'static str,
    /// `profile-level-id` for SDP, from the SPS.
    #[serde(skip)]
    pub profile_level_id: Option<u32>,
    /// The publisher's SDP format parameters (`a=fmtp`), e.g. `profile-id=0`
    /// for VP9: viewers must accept the same.
    #[serde(skip)]
    pub fmtp: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct AudioInfo {
    /// What viewers get.
    pub codec: &'static str,
    pub sample_rate: u32,
    pub channels: u8,
    /// The publisher's codec, when audio is transcoded.
    pub source_codec: Option<&'static str>,
}

/// What the current publisher sends, as egress needs it for negotiation.
#[derive(Debug, Clone, Default)]
pub struct MediaInfo {
    pub video: Option<VideoInfo>,
    pub audio: Option<AudioInfo>,
}

/// Events for the control plane (web SSE, Matrix notices). Live, offline
/// and title are sent here too (webhooks, HLS), but this channel is bounded
/// and a slow listener may miss events: whoever must not miss a control
/// change reads it from [`Hub::control_feed`] instead.
#[derive(Debug, Clone)]
pub enum HubEvent {
    Live {
        stream: String,
    },
    Offline {
        stream: String,
    },
    Viewers {
        stream: String,
        count: usize,
    },
    Title {
        stream: String,
        title: String,
    },
    /// The stream's room topic changed.
    Description {
        stream: String,
        description: String,
    },
    /// A chat message in the stream's Matrix room.
    Chat {
        stream: String,
        message: Arc<ChatMessage>,
    },
    /// A chat message was redacted.
    Redaction {
        stream: String,
        id: String,
    },
}

/// Who may watch: anyone, or viewers with a token (Matrix room not public).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    #[default]
    Public,
    Private,
}

/// The Matrix room a stream belongs to.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RoomInfo {
    pub room_id: String,
    pub alias: Option<String>,
    /// Whether roomcast can relay the room's chat (false in encrypted rooms).
    pub chat: bool,
}

impl HubEvent {
    pub fn stream(&self) -> &str {
        match self {
            HubEvent::Live { stream }
            | HubEvent::Offline { stream }
            | HubEvent::Viewers { stream, .. }
            | HubEvent::Title { stream, .. }
            | HubEvent::Description { stream, .. }
            | HubEvent::Chat { stream, .. }
            | HubEvent::Redaction { stream, .. } => stream,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IngestProtocol {
    Rtmp,
    Rtmps,
    Whip,
    /// Pulled from the stream's origin on another cluster node (src/cluster).
    Relay,
}

struct PublisherState {
    id: u64,
    protocol: IngestProtocol,
    started_at: SystemTime,
}

/// Asks the current publisher for a keyframe (WebRTC publishers only).
pub type KeyframeRequester = Arc<dyn Fn() + Send + Sync>;

/// At most one keyframe request per stream in this period, however many viewers ask.
const KEYFRAME_REQUEST_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

struct StreamState {
    title: String,
    description: Option<String>,
    access: Access,
    room: Option<RoomInfo>,
    publisher: Option<PublisherState>,
    media: MediaInfo,
    stats: StreamStats,
    timeline: Timeline,
    keyframe_requester: Option<KeyframeRequester>,
    last_keyframe_request: Option<Instant>,
    /// Times the stream went live (see [`ControlState::live_sessions`]).
    live_sessions: u64,
    room_lost: Option<RoomLost>,
    /// The protocol of the current or, while offline, the last publisher.
    last_protocol: Option<IngestProtocol>,
    /// Cluster mode: the publish session of the stream's origin when that
    /// is another node (see `hub/shared.rs`).
    elsewhere: Option<String>,
    /// Whether the registry keeps the stream for good (see `hub/tenure.rs`).
    tenure: Tenure,
}

#[derive(Clone)]
struct SinkEntry {
    id: u64,
    sink: Arc<dyn FrameSink>,
    refs: usize,
}

struct Fanout {
    next_index: u64,
    /// The next `kind_index` of video and of audio.
    next_kind_index: [u64; 2],
    /// Video frames since the last keyframe (starting with it) and the audio between
    /// them, so a joining viewer starts at once instead of waiting for a keyframe.
    gop: Vec<Arc<Frame>>,
    /// Bytes of the payloads in `gop`.
    gop_bytes: usize,
    /// Copied on write: a fan-out clones the `Arc` under the lock and delivers
    /// after releasing it.
    sinks: Arc<Vec<SinkEntry>>,
}

impl Fanout {
    fn clear_gop(&mut self) {
        self.gop.clear();
        self.gop_bytes = 0;
    }
}

pub struct Stream {
    pub name: String,
    state: Mutex<StreamState>,
    fanout: Mutex<Fanout>,
    viewers: AtomicUsize,
    /// Cluster mode: the other nodes' viewers of this stream, their relay
    /// pulls taken off (see `hub/shared.rs`).
    viewers_elsewhere: AtomicI64,
    hub_events: broadcast::Sender<HubEvent>,
    control: Arc<ControlClock>,
    /// The control generation of this stream's last control change.
    control_stamp: AtomicU64,
    limits: HubLimits,
    /// The publisher's original media for restreams (see `side`).
    side: side::SideTracks,
}

/// The registry of streams.
pub struct Hub {
    streams: RwLock<HashMap<String, Arc<Stream>>>,
    events: broadcast::Sender<HubEvent>,
    control: Arc<ControlClock>,
    next_publisher_id: AtomicU64,
    limits: HubLimits,
    /// Ephemeral streams removed from the registry so far (`hub/tenure.rs`).
    removed: AtomicU64,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    pub fn new() -> Self {
        Self::with_limits(HubLimits::default())
    }

    /// A hub whose streams enforce `limits` (from `[limits]`).
    pub fn with_limits(limits: HubLimits) -> Self {
        let (events, _) = broadcast::channel(1024);
        Hub {
            streams: RwLock::new(HashMap::new()),
            events,
            control: ControlClock::new(),
            next_publisher_id: AtomicU64::new(1),
            limits,
            removed: AtomicU64::new(0),
        }
    }

    pub fn limits(&self) -> HubLimits {
        self.limits
    }

    /// Declares a stream (idempotent); its title defaults to its name. A
    /// declared stream stays in the registry for good (config, database,
    /// Matrix rooms, a publisher's key); an ephemeral one of that name
    /// becomes declared (see `hub/tenure.rs`).
    pub fn ensure_stream(&self, name: &str, title: Option<&str>) -> Arc<Stream> {
        let stream = self.get_or_create(name, title, Tenure::Declared);
        stream.state.lock().tenure = Tenure::Declared;
        stream
    }

    /// The stream `name`, created with `title` and `tenure` if absent.
    fn get_or_create(&self, name: &str, title: Option<&str>, tenure: Tenure) -> Arc<Stream> {
        if let Some(s) = self.streams.read().get(name) {
            return s.clone();
        }
        let mut streams = self.streams.write();
        streams
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(Stream {
                    name: name.to_string(),
                    state: Mutex::new(StreamState {
                        title: title.unwrap_or(name).to_string(),
                        description: None,
                        access: Access::Public,
                        room: None,
                        publisher: None,
                        media: MediaInfo::default(),
                        stats: StreamStats::default(),
                        timeline: Timeline::default(),
                        keyframe_requester: None,
                        last_keyframe_request: None,
                        live_sessions: 0,
                        room_lost: None,
                        last_protocol: None,
                        elsewhere: None,
                        tenure,
                    }),
                    fanout: Mutex::new(Fanout {
                        next_index: 0,
                        next_kind_index: [0; 2],
                        gop: Vec::new(),
                        gop_bytes: 0,
                        sinks: Arc::new(Vec::new()),
                    }),
                    viewers: AtomicUsize::new(0),
                    viewers_elsewhere: AtomicI64::new(0),
                    hub_events: self.events.clone(),
                    control: self.control.clone(),
                    control_stamp: AtomicU64::new(0),
                    limits: self.limits,
                    side: side::SideTracks::default(),
                })
            })
            .clone()
    }

    pub fn get(&self, name: &str) -> Option<Arc<Stream>> {
        self.streams.read().get(name).cloned()
    }

    pub fn streams(&self) -> Vec<Arc<Stream>> {
        let mut v: Vec<_> = self.streams.read().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub fn subscribe_events(&self) -> broadcast::Receiver<HubEvent> {
        self.events.subscribe()
    }

    /// Sends a control-plane event (chat relay) to every listener.
    pub fn send_event(&self, event: HubEvent) {
        let _ = self.events.send(event);
    }

    /// Makes `protocol` the stream's publisher. A previous publisher is taken over:
    /// its [`Publisher`] handle stops accepting media, and viewers stay connected and
    /// continue from the new publisher's first keyframe.
    pub fn publish(&self, stream: &Arc<Stream>, protocol: IngestProtocol) -> Publisher {
        let id = self.next_publisher_id.fetch_add(1, Ordering::Relaxed);
        let took_over = {
            let mut st = stream.state.lock();
            let took_over = st.publisher.is_some();
            st.publisher = Some(PublisherState {
                id,
                protocol,
                started_at: SystemTime::now(),
            });
            st.media = MediaInfo::default();
            st.stats = StreamStats::default();
            st.timeline.new_publisher();
            st.keyframe_requester = None;
            st.last_protocol = Some(protocol);
            // An ephemeral stream's wait for its first publisher is over.
            st.tenure.published();
            if !took_over {
                st.live_sessions += 1;
            }
            took_over
        };
        // Viewers must not get the old publisher's GOP after the switch: the next
        // keyframe starts a fresh cache.
        stream.fanout.lock().clear_gop();
        if !took_over {
            stream.control_changed();
            let _ = self.events.send(HubEvent::Live {
                stream: stream.name.clone(),
            });
        }
        Publisher {
            stream: stream.clone(),
            id,
        }
    }
}

/// A snapshot of a stream for the API.
#[derive(Debug, Clone, Serialize)]
pub struct StreamSnapshot {
    pub name: String,
    pub title: String,
    pub description: Option<String>,
    pub access: Access,
    pub room: Option<RoomInfo>,
    /// Set when the bot lost the stream's room (kicked, banned, room gone).
    pub room_lost: Option<RoomLost>,
    pub live: bool,
    pub started_at: Option<String>,
    pub viewers: usize,
    pub ingest: Option<IngestSnapshot>,
    pub video: Option<VideoSnapshot>,
    pub audio: Option<AudioSnapshot>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IngestSnapshot {
    pub protocol: IngestProtocol,
}

#[derive(Debug, Clone, Serialize)]
pub struct VideoSnapshot {
    pub codec: &'static str,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub fps: Option<f64>,
    pub bitrate_kbps: Option<u64>,
    pub keyframe_interval_ms: Option<u64>,
    pub bframes: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct AudioSnapshot {
    pub codec: &'static str,
    pub sample_rate: u32,
    pub channels: u8,
    pub transcoded: bool,
    pub bitrate_kbps: Option<u64>,
}

impl Stream {
    pub fn is_live(&self) -> bool {
        self.state.lock().publisher.is_some()
    }

    pub fn media_info(&self) -> MediaInfo {
        self.state.lock().media.clone()
    }

    pub fn title(&self) -> String {
        self.state.lock().title.clone()
    }

    /// Changes the title (e.g. the Matrix room was renamed) and tells listeners.
    pub fn set_title(&self, title: &str) {
        {
            let mut st = self.state.lock();
            if st.title == title {
                return;
            }
            st.title = title.to_string();
        }
        self.control_changed();
        let _ = self.hub_events.send(HubEvent::Title {
            stream: self.name.clone(),
            title: title.to_string(),
        });
    }

    /// Measured audio + video bitrate, 0 while unknown or offline.
    pub fn bitrate_kbps(&self) -> u64 {
        let st = self.state.lock();
        if st.publisher.is_none() {
            return 0;
        }
        let now = Instant::now();
        st.stats.video_kbps(now).unwrap_or(0) + st.stats.audio_kbps(now).unwrap_or(0)
    }

    /// Changes the description (the Matrix room topic) and tells listeners.
    pub fn set_description(&self, description: Option<&str>) {
        {
            let mut st = self.state.lock();
            if st.description.as_deref() == description {
                return;
            }
            st.description = description.map(str::to_string);
        }
        self.control_changed();
        let _ = self.hub_events.send(HubEvent::Description {
            stream: self.name.clone(),
            description: description.unwrap_or_default().to_string(),
        });
    }

    pub fn description(&self) -> Option<String> {
        self.state.lock().description.clone()
    }

    pub fn access(&self) -> Access {
        self.state.lock().access
    }

    pub fn set_access(&self, access: Access) {
        {
            let mut st = self.state.lock();
            if st.access == access {
                return;
            }
            st.access = access;
        }
        self.control_changed();
    }

    /// Marks the stream's Matrix room lost (the bot was kicked or banned,
    /// or the room is gone), or found again (`None`).
    pub fn set_room_lost(&self, lost: Option<RoomLost>) {
        {
            let mut st = self.state.lock();
            if st.room_lost == lost {
                return;
            }
            st.room_lost = lost;
        }
        self.control_changed();
    }

    pub fn room_lost(&self) -> Option<RoomLost> {
        self.state.lock().room_lost.clone()
    }

    /// What the control path carries, as it is now.
    pub fn control_state(&self) -> ControlState {
        let st = self.state.lock();
        ControlState {
            live: st.publisher.is_some(),
            live_sessions: st.live_sessions,
            title: st.title.clone(),
            description: st.description.clone(),
            access: st.access,
            room_lost: st.room_lost.clone(),
            elsewhere: st.elsewhere.clone(),
        }
    }

    /// Tells control listeners; call after the change is in the state.
    fn control_changed(&self) {
        self.control.bump(&self.control_stamp);
    }

    pub fn room(&self) -> Option<RoomInfo> {
        self.state.lock().room.clone()
    }

    pub fn set_room(&self, room: Option<RoomInfo>) {
        {
            let mut st = self.state.lock();
            if st.room == room {
                return;
            }
            st.room = room;
        }
        self.control_changed();
    }

    /// When the current publisher started (None while offline): identifies a
    /// live session.
    pub fn started_at(&self) -> Option<SystemTime> {
        self.state.lock().publisher.as_ref().map(|p| p.started_at)
    }

    pub fn viewers(&self) -> usize {
        self.viewers.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> StreamSnapshot {
        let st = self.state.lock();
        let now = Instant::now();
        let live = st.publisher.is_some();
        let live_in_cluster = live || st.elsewhere.is_some();
        let video = st.media.video.as_ref().map(|v| VideoSnapshot {
            codec: v.codec,
            width: v.width,
            height: v.height,
            fps: st.stats.video_fps(now),
            bitrate_kbps: st.stats.video_kbps(now),
            keyframe_interval_ms: st.stats.keyframe_interval_ms(),
            bframes: st.stats.bframes,
        });
        let audio = st.media.audio.as_ref().map(|a| AudioSnapshot {
            codec: a.codec,
            sample_rate: a.sample_rate,
            channels: a.channels,
            transcoded: a.source_codec.is_some(),
            bitrate_kbps: st.stats.audio_kbps(now),
        });
        StreamSnapshot {
            name: self.name.clone(),
            title: st.title.clone(),
            description: st.description.clone(),
            access: st.access,
            room: st.room.clone(),
            room_lost: st.room_lost.clone(),
            // Cluster mode: live on any node, viewers summed over the nodes
            // (per-node figures are in /metrics and GET /api/v1/cluster).
            live: live_in_cluster,
            started_at: st.publisher.as_ref().map(|p| rfc3339(p.started_at)),
            viewers: self.cluster_viewers_locked(&st),
            ingest: st.publisher.as_ref().map(|p| IngestSnapshot {
                protocol: p.protocol,
            }),
            video: if live { video } else { None },
            audio: if live { audio } else { None },
        }
    }

    /// Registers a sink for this stream's frames, reference-counted per sink id so
    /// a worker with many viewers of one stream gets each frame once.
    pub fn attach_sink(&self, id: u64, sink: &Arc<dyn FrameSink>) {
        let mut f = self.fanout.lock();
        let sinks = Arc::make_mut(&mut f.sinks);
        if let Some(e) = sinks.iter_mut().find(|e| e.id == id) {
            e.refs += 1;
        } else {
            sinks.push(SinkEntry {
                id,
                sink: sink.clone(),
                refs: 1,
            });
        }
    }

    pub fn detach_sink(&self, id: u64) {
        let mut f = self.fanout.lock();
        let sinks = Arc::make_mut(&mut f.sinks);
        if let Some(pos) = sinks.iter().position(|e| e.id == id) {
            sinks[pos].refs -= 1;
            if sinks[pos].refs == 0 {
                sinks.swap_remove(pos);
            }
        }
    }

    /// Asks the publisher for a keyframe (a viewer sent a PLI or FIR, or joined
    /// with nothing cached). Rate-limited per stream; a no-op for publishers that
    /// cannot be asked (RTMP: viewers get the cached GOP instead). Returns
    /// whether a request went out.
    pub fn request_keyframe(&self) -> bool {
        let requester = {
            let mut st = self.state.lock();
            let Some(r) = st.keyframe_requester.clone() else {
                return false;
            };
            let now = Instant::now();
            if st
                .last_keyframe_request
                .is_some_and(|t| now.duration_since(t) < KEYFRAME_REQUEST_INTERVAL)
            {
                return false;
            }
            st.last_keyframe_request = Some(now);
            r
        };
        requester();
        true
    }

    /// Whether the current (or, offline, the last) publisher is a cluster
    /// relay pull: the stream is published on another node, which announces
    /// it (webhooks, notices); this node only serves its viewers.
    pub fn is_relayed(&self) -> bool {
        self.state.lock().last_protocol == Some(IngestProtocol::Relay)
    }

    /// Ends the current publisher, as a takeover does (a publisher on another
    /// cluster node took the stream): its handle is refused from now on and
    /// the stream goes offline. Returns whether there was one.
    pub fn end_publisher(&self) -> bool {
        let mut st = self.state.lock();
        if st.publisher.take().is_none() {
            return false;
        }
        st.keyframe_requester = None;
        drop(st);
        self.fanout.lock().clear_gop();
        self.control_changed();
        let _ = self.hub_events.send(HubEvent::Offline {
            stream: self.name.clone(),
        });
        true
    }

    /// Whether the GOP cache holds a keyframe a joining viewer can start from.
    pub fn has_cached_keyframe(&self) -> bool {
        !self.fanout.lock().gop.is_empty()
    }

    /// The frames from the last keyframe on. Cheap: clones `Arc`s only.
    pub fn gop_snapshot(&self) -> Vec<Arc<Frame>> {
        self.fanout.lock().gop.clone()
    }

    pub fn viewer_joined(&self) {
        let n = self.viewers.fetch_add(1, Ordering::Relaxed) + 1;
        self.notify_viewers(n);
    }

    pub fn viewer_left(&self) {
        let n = self
            .viewers
            .fetch_sub(1, Ordering::Relaxed)
            .saturating_sub(1);
        self.notify_viewers(n);
    }

    fn notify_viewers(&self, _local: usize) {
        let _ = self.hub_events.send(HubEvent::Viewers {
            stream: self.name.clone(),
            count: self.cluster_viewers(),
        });
    }

    fn fan_out(self: &Arc<Self>, mut frame: Frame) {
        let mut f = self.fanout.lock();
        frame.index = f.next_index;
        f.next_index += 1;
        let by_kind = &mut f.next_kind_index[frame.kind as usize];
        frame.kind_index = *by_kind;
        *by_kind += 1;
        let frame = Arc::new(frame);
        if frame.kind == Kind::Video && frame.keyframe {
            f.clear_gop();
        }
        if !f.gop.is_empty() || (frame.kind == Kind::Video && frame.keyframe) {
            let bytes = frame.bytes();
            if f.gop.len() >= GOP_CACHE_MAX_FRAMES
                || f.gop_bytes + bytes > self.limits.max_gop_cache_bytes
            {
                // A partial GOP would replay frames that reference ones
                // missing from it: nothing is cached until the next keyframe,
                // and joining viewers wait for that keyframe instead. The
                // publisher is not dropped: a long GOP is legitimate.
                let cached = f.gop_bytes;
                f.clear_gop();
                if let Some(suppressed) = GOP_TOO_LARGE_LOG.allow() {
                    warn!(
                        stream = %self.name,
                        cached_bytes = cached + bytes,
                        max_gop_cache_bytes = self.limits.max_gop_cache_bytes,
                        max_frames = GOP_CACHE_MAX_FRAMES,
                        suppressed,
                        "GOP too long to cache (keyframe interval too long for limits.max_gop_cache_bytes); joining viewers wait for the next keyframe"
                    );
                }
            } else {
                f.gop_bytes += bytes;
                f.gop.push(frame.clone());
            }
        }
        let sinks = f.sinks.clone();
        drop(f);
        // A shard that attaches meanwhile misses this frame only if its viewers
        // are not yet connected; it starts them from the GOP, which has it.
        for e in sinks.iter() {
            e.sink.deliver(self, &frame);
        }
    }
}

/// Error returned to an ingest session whose stream was taken over.
#[derive(Debug, thiserror::Error)]
#[error("another publisher took over stream '{0}'")]
pub struct TakenOver(pub String);

/// Why the hub refused a frame; either way the ingest session should end.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(transparent)]
    TakenOver(#[from] TakenOver),
    /// The frame is over `limits.max_frame_bytes`: the publisher is broken or
    /// hostile, and is dropped.
    #[error(
        "a {bytes}-byte frame on stream '{stream}' is over limits.max_frame_bytes ({max} bytes); the publisher is dropped"
    )]
    FrameTooLarge {
        stream: String,
        bytes: usize,
        max: usize,
    },
}

/// An ingest session's handle on its stream. Dropping it ends the session (the
/// stream goes offline unless another publisher took over).
pub struct Publisher {
    stream: Arc<Stream>,
    id: u64,
}

impl Publisher {
    pub fn stream(&self) -> &Arc<Stream> {
        &self.stream
    }

    pub fn set_media(&self, f: impl FnOnce(&mut MediaInfo)) -> Result<(), TakenOver> {
        let mut st = self.current()?;
        f(&mut st.media);
        Ok(())
    }

    /// Lets viewers' keyframe requests reach this publisher.
    pub fn set_keyframe_requester(&self, r: KeyframeRequester) -> Result<(), TakenOver> {
        self.current()?.keyframe_requester = Some(r);
        Ok(())
    }

    pub fn note_bframes(&self) -> Result<(), TakenOver> {
        self.current()?.stats.bframes = true;
        Ok(())
    }

    fn current(&self) -> Result<parking_lot::MutexGuard<'_, StreamState>, TakenOver> {
        let st = self.stream.state.lock();
        match &st.publisher {
            Some(p) if p.id == self.id => Ok(st),
            _ => Err(TakenOver(self.stream.name.clone())),
        }
    }

    /// Pushes one video frame (an access unit) at presentation time `pts_ms` of the
    /// publisher's clock. Returns the keyframe interval when this frame is a keyframe.
    pub fn push_video(
        &self,
        pts_ms: i64,
        keyframe: bool,
        payloads: Box<[Arc<[u8]>]>,
    ) -> Result<Option<u64>, PushError> {
        self.push_video_90k(pts_ms * 90, keyframe, payloads)
    }

    /// Refuses a frame over `limits.max_frame_bytes` (every ingest passes here).
    fn check_size(&self, bytes: usize) -> Result<(), PushError> {
        let max = self.stream.limits.max_frame_bytes;
        if bytes <= max {
            return Ok(());
        }
        if let Some(suppressed) = FRAME_TOO_LARGE_LOG.allow() {
            warn!(stream = %self.stream.name, bytes, max_frame_bytes = max, suppressed, "frame over limits.max_frame_bytes refused; dropping the publisher");
        }
        Err(PushError::FrameTooLarge {
            stream: self.stream.name.clone(),
            bytes,
            max,
        })
    }

    /// Like [`Publisher::push_video`] with the time in the publisher's 90 kHz
    /// RTP clock, so a WebRTC publisher's timestamps pass without rounding.
    pub fn push_video_90k(
        &self,
        ticks_90k: i64,
        keyframe: bool,
        payloads: Box<[Arc<[u8]>]>,
    ) -> Result<Option<u64>, PushError> {
        let received = Instant::now();
        let bytes = payloads.iter().map(|p| p.len()).sum();
        self.check_size(bytes)?;
        let (rtp_time, wallclock, interval) = {
            let mut st = self.current()?;
            let pub_ms = ticks_90k.div_euclid(90);
            let (stream_ms, wallclock) = st.timeline.map(pub_ms, received);
            let interval = st.stats.on_video(received, stream_ms, bytes, keyframe);
            let stream_ticks = ticks_90k + (stream_ms - pub_ms) * 90;
            (stream_ticks as u32, wallclock, interval)
        };
        self.stream.fan_out(Frame {
            kind: Kind::Video,
            index: 0,
            kind_index: 0,
            rtp_time,
            wallclock,
            received,
            keyframe,
            publisher: self.id,
            payloads,
        });
        Ok(interval)
    }

    /// Pushes one audio packet. `samples_48k` is its position in the publisher's
    /// 48 kHz sample clock (its ms value is `samples_48k / 48`).
    pub fn push_audio(&self, samples_48k: i64, payload: Arc<[u8]>) -> Result<(), PushError> {
        let received = Instant::now();
        self.check_size(payload.len())?;
        let (rtp_time, wallclock) = {
            let mut st = self.current()?;
            let pub_ms = samples_48k.div_euclid(48);
            let (stream_ms, wallclock) = st.timeline.map(pub_ms, received);
            st.stats.on_audio(received, stream_ms, payload.len());
            let stream_samples = samples_48k + (stream_ms - pub_ms) * 48;
            (stream_samples as u32, wallclock)
        };
        self.stream.fan_out(Frame {
            kind: Kind::Audio,
            index: 0,
            kind_index: 0,
            rtp_time,
            wallclock,
            received,
            keyframe: false,
            publisher: self.id,
            payloads: Box::new([payload]),
        });
        Ok(())
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let mut st = self.stream.state.lock();
        if st.publisher.as_ref().map(|p| p.id) == Some(self.id) {
            st.publisher = None;
            st.keyframe_requester = None;
            drop(st);
            self.stream.fanout.lock().clear_gop();
            self.stream.control_changed();
            let _ = self.stream.hub_events.send(HubEvent::Offline {
                stream: self.stream.name.clone(),
            });
        }
    }
}

fn rfc3339(t: SystemTime) -> String {
    let t: time::OffsetDateTime = t.into();
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Collect(Mutex<Vec<Arc<Frame>>>);
    impl FrameSink for Collect {
        fn deliver(&self, _s: &Arc<Stream>, f: &Arc<Frame>) {
            self.0.lock().push(f.clone());
        }
    }

    fn payload(n: u8) -> Box<[Arc<[u8]>]> {
        Box::new([Arc::from(vec![n; 10])])
    }

    #[test]
    fn gop_cache_starts_at_keyframe_and_takeover_keeps_timeline() {
        let hub = Hub::new();
        let s = hub.ensure_stream("a", None);
        let sink: Arc<dyn FrameSink> = Arc::new(Collect(Mutex::new(vec![])));
        s.attach_sink(1, &sink);
        let p1 = hub.publish(&s, IngestProtocol::Rtmp);
        p1.push_video(0, false, payload(0)).unwrap(); // before any keyframe: not cached
        p1.push_video(33, true, payload(1)).unwrap();
        p1.push_video(66, false, payload(2)).unwrap();
        assert_eq!(s.gop_snapshot().len(), 2);
        assert!(s.gop_snapshot()[0].keyframe);

        // A second publisher takes over: the old handle is refused, the cache resets,
        // and the new timeline continues after the old one instead of jumping back.
        let p2 = hub.publish(&s, IngestProtocol::Rtmp);
        assert!(p1.push_video(99, false, payload(3)).is_err());
        assert!(s.gop_snapshot().is_empty());
        p2.push_video(5, true, payload(4)).unwrap();
        let frames = s.gop_snapshot();
        let last_old = 66 * 90;
        assert!(
            frames[0].rtp_time > last_old,
            "{} > {}",
            frames[0].rtp_time,
            last_old
        );
        drop(p1); // dropping the taken-over handle must not end the stream
        assert!(s.is_live());
        drop(p2);
        assert!(!s.is_live());
    }

    #[test]
    fn rtp_clock_times_pass_unrounded_and_keyframe_requests_are_rate_limited() {
        let hub = Hub::new();
        let s = hub.ensure_stream("a", None);
        let p = hub.publish(&s, IngestProtocol::Whip);
        // 29.97 fps: 3003 ticks apart, not a whole number of milliseconds.
        p.push_video_90k(1_000_000, true, payload(1)).unwrap();
        p.push_video_90k(1_003_003, false, payload(2)).unwrap();
        let f = s.gop_snapshot();
        assert_eq!(f[1].rtp_time.wrapping_sub(f[0].rtp_time), 3003);

        // RTMP-like publishers cannot be asked.
        assert!(!s.request_keyframe());
        let asked = Arc::new(AtomicUsize::new(0));
        let a = asked.clone();
        p.set_keyframe_requester(Arc::new(move || {
            a.fetch_add(1, Ordering::Relaxed);
        }))
        .unwrap();
        assert!(s.request_keyframe());
        assert!(
            !s.request_keyframe(),
            "a second request within 500 ms is dropped"
        );
        assert_eq!(asked.load(Ordering::Relaxed), 1);
        // A new publisher does not inherit the old one's requester.
        let _p2 = hub.publish(&s, IngestProtocol::Rtmp);
        assert!(!s.request_keyframe());
    }

    #[test]
    fn frames_over_the_byte_cap_are_refused_with_a_typed_error() {
        let hub = Hub::with_limits(HubLimits {
            max_frame_bytes: 100,
            max_gop_cache_bytes: 1000,
        });
        let s = hub.ensure_stream("a", None);
        let p = hub.publish(&s, IngestProtocol::Whip);
        p.push_video(0, true, Box::new([Arc::from(vec![0u8; 100])]))
            .unwrap();
        let two: Box<[Arc<[u8]>]> = Box::new([Arc::from(vec![0u8; 60]), Arc::from(vec![0u8; 41])]);
        match p.push_video(33, false, two) {
            Err(PushError::FrameTooLarge { bytes, max, .. }) => {
                assert_eq!((bytes, max), (101, 100))
            }
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
        assert!(matches!(
            p.push_audio(0, Arc::from(vec![0u8; 101])),
            Err(PushError::FrameTooLarge { .. })
        ));
        // The refused frame reached nobody: the cache holds the keyframe only.
        assert_eq!(s.gop_snapshot().len(), 1);
    }

    #[test]
    fn a_gop_over_the_byte_cap_is_not_cached_until_the_next_keyframe() {
        let hub = Hub::with_limits(HubLimits {
            max_frame_bytes: 1000,
            max_gop_cache_bytes: 35,
        });
        let s = hub.ensure_stream("a", None);
        let sink = Arc::new(Collect(Mutex::new(vec![])));
        let dyn_sink: Arc<dyn FrameSink> = sink.clone();
        s.attach_sink(1, &dyn_sink);
        let p = hub.publish(&s, IngestProtocol::Rtmp);
        p.push_video(0, true, payload(1)).unwrap(); // 10 bytes each
        p.push_video(33, false, payload(2)).unwrap();
        p.push_audio(0, Arc::from(vec![0u8; 10])).unwrap();
        assert_eq!(s.fanout.lock().gop_bytes, 30);
        assert!(s.has_cached_keyframe());
        // 40 > 35: the cache empties (a partial GOP would not decode) and
        // stays empty until the next keyframe, but live viewers get everything.
        p.push_video(66, false, payload(3)).unwrap();
        assert!(!s.has_cached_keyframe());
        p.push_video(99, false, payload(4)).unwrap();
        assert!(s.gop_snapshot().is_empty());
        assert_eq!(s.fanout.lock().gop_bytes, 0);
        p.push_video(133, true, payload(5)).unwrap();
        assert_eq!(s.gop_snapshot().len(), 1);
        assert_eq!(s.fanout.lock().gop_bytes, 10);
        assert_eq!(sink.0.lock().len(), 6);
        assert!(s.is_live(), "a long GOP does not drop the publisher");
    }
}
