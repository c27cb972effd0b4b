//! Recording: every publish session of a recorded stream kept as
//! fragmented MP4, indexed in the database, served as an HLS VOD playlist
//! and a progressive download (`http::recordings`).
//!
//! The recorder is a hub sink per recorded stream that only enqueues
//! (bounded in frames and in bytes, `hub::ByteBudget`: a full queue drops frames and
//! resumes at the next keyframe, with a discontinuity; viewers are never
//! slowed). One task per recording
//! feeds the LL-HLS segmenter (`egress::hls::segmenter`, the same fMP4 the
//! live HLS serves) with segments of `segment_secs`, and writes each
//! complete segment, fsynced, through `files` in a blocking thread. A
//! publisher that comes back (reconnect, takeover) within
//! `continue_within_ms` continues the same recording; the segmenter marks the
//! change with a discontinuity. Disk trouble (low space, a full disk, a
//! directory that is not writable, deleted files) pauses recording with a
//! log line and a status in the API and `/metrics`; the next segment is the
//! retry. At start-up, recordings a crash left open are cut to their last
//! whole segment and indexed as `interrupted`. A recording that reaches
//! `max_recording_hours` hands over to a new one at a keyframe (`rollover`).

pub mod config;
pub mod files;
pub mod index;
pub mod index_cache;
pub mod reads;
pub mod retention;
pub mod rollover;
#[cfg(test)]
mod rollover_e2e;
pub mod serve;
pub mod session;
pub mod sweep;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::egress::hls::playlist::Params;
use crate::egress::hls::segmenter::Segmenter;
use crate::hub::{ByteBudget, Frame, FrameSink, Hub, Kind, Stream};
use crate::media::rtp_video::VideoCodec;
use crate::store::Store;
use crate::store::recordings::RecordingRow;
use config::RecordingConfig;
use files::{RecordingFiles, SegmentData};
pub use files::{new_id, valid_id};

/// Frames queued between the publisher's task and the recorder.
const QUEUE: usize = 1024;
/// Bytes of frames one recording may have queued (a few seconds of any
/// sane bitrate; a frame over it is dropped and recording resumes at the
/// next keyframe).
const QUEUE_MAX_BYTES: usize = 64 << 20;
/// Sink ids of recordings start here, far from WebRTC's and HLS's.
const SINK_ID_BASE: u64 = 1 << 41;
/// Retention runs this often (and no more).
const RETENTION_INTERVAL: Duration = Duration::from_secs(60);
/// Bytes of media a segment in progress may hold (it is in memory until it
/// ends at a keyframe, at most 10 s): a publisher over it gets its segment
/// cut here, and the next one starts at a keyframe. Readers (`reads`) refuse
/// a segment much larger as damaged.
const MAX_SEGMENT_BYTES: usize = 64 << 20;
static SEGMENT_CUT_LOG: crate::log_every::LogEvery =
    crate::log_every::LogEvery::new(Duration::from_secs(10));
/// The index row of a growing recording is updated at most this often.
const ROW_UPDATE_INTERVAL: Duration = Duration::from_secs(5);

/// How a recording's writing goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "reason")]
pub enum WriteStatus {
    Ok,
    /// Below `min_free_gb`: segments are skipped until space returns.
    Paused(String),
    /// A write failed (disk full, not writable, files deleted); the next
    /// segment retries.
    Failing(String),
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct RecorderMetrics {
    pub bytes_written: AtomicU64,
    pub segments_written: AtomicU64,
    pub recordings_started: AtomicU64,
    pub pauses: AtomicU64,
    pub failures: AtomicU64,
    pub deleted: AtomicU64,
    pub frames_dropped: AtomicU64,
}

enum Msg {
    Frame(Arc<Frame>),
}

struct Sink {
    tx: mpsc::Sender<Msg>,
    overflow: Arc<AtomicBool>,
    /// Bytes queued (released by the recording as it takes each frame).
    queued: Arc<ByteBudget>,
}

impl FrameSink for Sink {
    fn deliver(&self, _stream: &Arc<Stream>, frame: &Arc<Frame>) {
        if !self
            .queued
            .try_send(&self.tx, Msg::Frame(frame.clone()), frame.bytes())
        {
            self.overflow.store(true, Relaxed);
        }
    }
}

/// A recording being written.
struct Active {
    id: String,
    /// Live and wanted: false starts the end of the recording.
    live: watch::Sender<bool>,
    /// Whether the stream is to be recorded (`!live record off` clears it),
    /// read per frame: a new publisher's frames can come before the control
    /// change that says it is live.
    wanted: AtomicBool,
    status: Mutex<WriteStatus>,
}

pub struct Recorder {
    pub cfg: RecordingConfig,
    dir: PathBuf,
    hub: Arc<Hub>,
    store: Store,
    node: String,
    continue_within: Duration,
    active: Mutex<HashMap<String, Arc<Active>>>,
    /// `[[streams]] record = …`
    config_choices: HashMap<String, bool>,
    /// `!live record on|off`, read at start and kept up to date.
    choices: RwLock<HashMap<String, bool>>,
    next_sink: AtomicU64,
    pub metrics: RecorderMetrics,
    clock: (Instant, SystemTime),
    /// Set at shutdown: recordings write their last segment and end.
    stopping: watch::Sender<bool>,
    /// Parsed indexes for the HTTP paths (bounded in bytes).
    indexes: index_cache::IndexCache,
    /// Memory for segments read whole for clients (WebM), in KiB (`reads`).
    read_budget: Arc<tokio::sync::Semaphore>,
    /// The cluster bus: choices and deletions reach the other nodes.
    bus: std::sync::OnceLock<Arc<crate::cluster::bus::Bus>>,
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Recorder {
    pub fn new(cfg: &crate::config::Config, hub: Arc<Hub>, store: Store) -> Arc<Recorder> {
        let rc = cfg.recording.clone();
        let continue_ms = rc
            .continue_within_ms
            .unwrap_or_else(|| cfg.matrix.as_ref().map_or(5000, |m| m.golive_delay_ms));
        Arc::new(Recorder {
            dir: PathBuf::from(&rc.dir),
            cfg: rc,
            hub,
            store,
            node: cfg
                .cluster
                .as_ref()
                .map(|c| c.node_id.clone())
                .unwrap_or_default(),
            continue_within: Duration::from_millis(continue_ms),
            active: Mutex::new(HashMap::new()),
            config_choices: cfg
                .streams
                .iter()
                .filter_map(|s| Some((s.name.clone(), s.record?)))
                .collect(),
            choices: RwLock::new(HashMap::new()),
            next_sink: AtomicU64::new(SINK_ID_BASE),
            metrics: RecorderMetrics::default(),
            clock: (Instant::now(), SystemTime::now()),
            stopping: watch::channel(false).0,
            indexes: index_cache::IndexCache::new(index_cache::MAX_BYTES),
            read_budget: Arc::new(tokio::sync::Semaphore::new(reads::READ_BUDGET_KIB)),
            bus: std::sync::OnceLock::new(),
        })
    }

    /// Cluster mode: `!live record` and deletions made on one node reach
    /// the others (a stream may be live, a recording stored, elsewhere).
    pub fn join_bus(self: &Arc<Self>, bus: &Arc<crate::cluster::bus::Bus>) {
        let _ = self.bus.set(bus.clone());
        let me = Arc::downgrade(self);
        bus.on_recording(Box::new(move |ev| {
            if let Some(me) = me.upgrade() {
                tokio::spawn(async move { me.from_cluster(ev).await });
            }
        }));
    }

    async fn from_cluster(self: Arc<Self>, ev: crate::cluster::bus::RecordingEvent) {
        use crate::cluster::bus::RecordingEvent;
        match ev {
            RecordingEvent::Choice(stream) => {
                self.reload_choices().await;
                if let Some(s) = self.hub.get(&stream) {
                    self.control_changed(&s);
                }
            }
            RecordingEvent::Resync => {
                self.reload_choices().await;
                for s in self.hub.streams() {
                    self.control_changed(&s);
                }
            }
            RecordingEvent::Delete(id) => match self.delete(&id).await {
                Ok(true) => info!(id = %id, "recording: deleted as another cluster node asked"),
                // Not ours, or gone already.
                Ok(false) | Err(DeleteError::OtherNode(_) | DeleteError::Forwarded(_)) => {}
                Err(e) => warn!(id = %id, "recording: cannot delete as another node asked: {e}"),
            },
        }
    }

    /// The choices as stored (another node changed one).
    async fn reload_choices(&self) {
        match self.store.recording_choices().await {
            Ok(c) => *self.choices.write() = c.into_iter().collect(),
            Err(e) => warn!("recording: cannot re-read the streams' recording choices: {e}"),
        }
    }

    /// Recording `id`'s index, parsed once (`finished`: its row says it
    /// ended; a growing one's is re-read at most once a second).
    pub async fn index_of(
        &self,
        id: &str,
        finished: bool,
    ) -> std::io::Result<Option<Arc<index::Index>>> {
        let now = Instant::now();
        if let Some(i) = self.indexes.get(id, finished, now) {
            return Ok(Some(i));
        }
        Ok(read_index(&self.dir_of(id))
            .await?
            .map(|i| self.indexes.put(id, i, finished, now)))
    }

    pub fn enabled(&self) -> bool {
        self.cfg.enabled
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// This node's id in cluster mode ('' standalone): the recordings whose
    /// files are here.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The directory of recording `id` (a valid id).
    pub fn dir_of(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Whether `stream` is to be recorded: its room's choice, else the
    /// config's, else `record_by_default`.
    pub fn wants(&self, stream: &str) -> bool {
        self.choices
            .read()
            .get(stream)
            .or(self.config_choices.get(stream))
            .copied()
            .unwrap_or(self.cfg.record_by_default)
    }

    /// `!live record on|off`: stored, and applied from the next publish on
    /// (`on` while live starts at once; `off` ends the recording).
    pub async fn set_choice(
        self: &Arc<Self>,
        stream: &str,
        record: bool,
        by: &str,
    ) -> Result<(), crate::store::StoreError> {
        self.store.set_recording_choice(stream, record, by).await?;
        self.choices.write().insert(stream.to_string(), record);
        if let Some(bus) = self.bus.get() {
            bus.send(crate::cluster::bus::BusMessage::RecordChoice {
                stream: stream.to_string(),
            });
        }
        if let Some(s) = self.hub.get(stream) {
            self.control_changed(&s);
        }
        Ok(())
    }

    /// The write status of a recording being made.
    pub fn status(&self, id: &str) -> Option<WriteStatus> {
        self.active
            .lock()
            .values()
            .find(|a| a.id == id)
            .map(|a| a.status.lock().clone())
    }

    pub fn is_active(&self, id: &str) -> bool {
        self.active.lock().values().any(|a| a.id == id)
    }

    /// At shutdown: every recording writes what it has and is indexed as
    /// complete, within `grace` (what is left is closed at the next start).
    pub async fn stop(&self, grace: Duration) {
        self.stopping.send_replace(true);
        let deadline = tokio::time::Instant::now() + grace;
        while !self.active.lock().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Closes what a crash left open, then follows the hub: records streams
    /// as they go live, and applies retention.
    pub fn spawn(self: &Arc<Self>) {
        if !self.cfg.enabled {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = std::fs::create_dir_all(&me.dir) {
                warn!(dir = %me.dir.display(), "recording: cannot create recording.dir: {e}; recordings will fail until it can be written");
            }
            me.load_choices().await;
            me.recover().await;
            let mut feed = me.hub.control_feed();
            for s in me.hub.streams() {
                me.control_changed(&s);
            }
            while let Some(streams) = feed.changed(&me.hub).await {
                for s in streams {
                    me.control_changed(&s);
                }
            }
        });
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                // Once a minute, never per segment: a pass reads every
                // recording's row (min_free_gb guards the disk meanwhile).
                let pass = tokio::time::Instant::now();
                me.apply_retention().await;
                tokio::time::sleep_until(pass + RETENTION_INTERVAL).await;
            }
        });
    }

    async fn load_choices(&self) {
        let mut delay = Duration::from_secs(1);
        loop {
            match self.store.recording_choices().await {
                Ok(c) => {
                    *self.choices.write() = c.into_iter().collect();
                    return;
                }
                Err(e) => {
                    warn!(
                        retry_in_s = delay.as_secs(),
                        "recording: cannot read the streams' recording choices yet: {e}"
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Recordings of this node left `recording` by a crash: cut to their
    /// last whole segment and indexed as `interrupted`.
    async fn recover(&self) {
        let rows = match self.store.all_recordings().await {
            Ok(r) => r,
            Err(e) => {
                warn!("recording: cannot read the recordings index for crash recovery: {e}");
                return;
            }
        };
        self.sweep_orphans(&rows).await;
        for mut row in rows
            .into_iter()
            .filter(|r| r.state == "recording" && r.node == self.node)
        {
            let dir = self.dir_of(&row.id);
            let index = tokio::task::spawn_blocking(move || files::recover(&dir))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
            match index {
                Ok(index) => {
                    row.duration_ms = (index.duration_us() / 1000) as i64;
                    row.bytes = index.bytes() as i64;
                }
                Err(e) => {
                    warn!(id = %row.id, "recording: the files of an interrupted recording cannot be read: {e}")
                }
            }
            row.ended_ms = Some(row.started_ms + row.duration_ms);
            row.state = "interrupted".into();
            match self.store.update_recording(&row).await {
                Ok(()) => {
                    info!(id = %row.id, stream = %row.stream, duration_ms = row.duration_ms, bytes = row.bytes, "recording: closed a recording interrupted by a crash")
                }
                Err(e) => {
                    warn!(id = %row.id, "recording: cannot index an interrupted recording: {e}")
                }
            }
        }
    }

    /// Removes recording directories the index does not know
    /// (`sweep::orphans`), once at start-up.
    async fn sweep_orphans(&self, rows: &[RecordingRow]) {
        let dir = self.dir.clone();
        let entries = tokio::task::spawn_blocking(move || -> Vec<(String, Duration)> {
            let Ok(read) = std::fs::read_dir(&dir) else {
                return Vec::new();
            };
            read.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| {
                    let age = e.metadata().ok()?.modified().ok()?.elapsed().ok()?;
                    Some((e.file_name().into_string().ok()?, age))
                })
                .collect()
        })
        .await
        .unwrap_or_default();
        let known: std::collections::HashSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        for name in sweep::orphans(&entries, &known) {
            let path = self.dir_of(name);
            let removed = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&path))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
            match removed {
                Ok(()) => info!(id = %name, "recording: removed files that no index row names"),
                Err(e) => {
                    warn!(id = %name, "recording: cannot remove files no index row names: {e}")
                }
            }
        }
    }

    /// A stream's live state or choice changed: start, continue or let end.
    fn control_changed(self: &Arc<Self>, stream: &Arc<Stream>) {
        let live = stream.is_live();
        // Looked up and (for a new recording) claimed under one lock: two
        // callers at once (the control feed, a recording's end) must not
        // both start one.
        let mut map = self.active.lock();
        match map.get(&stream.name).cloned() {
            Some(a) => {
                drop(map);
                let wanted = self.wants(&stream.name);
                a.wanted.store(wanted, Relaxed);
                let keep = live && wanted;
                a.live
                    .send_if_modified(|l| std::mem::replace(l, keep) != keep);
            }
            None if live
                && self.wants(&stream.name)
                && !stream.is_relayed()
                && !*self.stopping.borrow() =>
            {
                let (live, live_rx) = watch::channel(true);
                let active = Arc::new(Active {
                    id: new_id(),
                    live,
                    wanted: AtomicBool::new(true),
                    status: Mutex::new(WriteStatus::Ok),
                });
                map.insert(stream.name.clone(), active.clone());
                drop(map);
                self.start(stream, active, live_rx);
            }
            None => {}
        }
    }

    /// Runs the recording `active` (already in `self.active`) from a new
    /// hub sink, seeded with the hub's cached GOP.
    fn start(
        self: &Arc<Self>,
        stream: &Arc<Stream>,
        active: Arc<Active>,
        live_rx: watch::Receiver<bool>,
    ) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let overflow = Arc::new(AtomicBool::new(false));
        let queued = Arc::new(ByteBudget::new(QUEUE_MAX_BYTES));
        let sink: Arc<dyn FrameSink> = Arc::new(Sink {
            tx,
            overflow: overflow.clone(),
            queued: queued.clone(),
        });
        let sink_id = self.next_sink.fetch_add(1, Relaxed);
        // Attach first, then snapshot: a frame in both is skipped by index.
        stream.attach_sink(sink_id, &sink);
        let seed = stream.gop_snapshot();
        let feed = Feed {
            sink_id,
            rx,
            overflow,
            queued,
            seed,
        };
        self.run_recording(stream, active, live_rx, feed);
    }

    /// Runs the recording `active` (already in `self.active`) from `feed`,
    /// and detaches its sink when it ends, unless a successor took it.
    fn run_recording(
        self: &Arc<Self>,
        stream: &Arc<Stream>,
        active: Arc<Active>,
        live_rx: watch::Receiver<bool>,
        feed: Feed,
    ) {
        self.metrics.recordings_started.fetch_add(1, Relaxed);
        let me = self.clone();
        let stream = stream.clone();
        let sink_id = feed.sink_id;
        tokio::spawn(async move {
            let task = Recording::new(me.clone(), stream.clone(), active.clone());
            let handed_over = tokio::spawn(task.run(feed, live_rx)).await.unwrap_or(false);
            if !handed_over {
                stream.detach_sink(sink_id);
            }
            let mut map = me.active.lock();
            if map
                .get(&stream.name)
                .is_some_and(|a| Arc::ptr_eq(a, &active))
            {
                map.remove(&stream.name);
            }
            drop(map);
            // Live again meanwhile (or the task failed): look again.
            me.control_changed(&stream);
        });
    }

    /// `active` reached its age limit: it leaves `active`, and a new
    /// recording of `stream` goes on from `feed` (the same hub sink, from
    /// the frame the old one ended before), while the old one writes its
    /// last segment and ends. The same queue, not a new sink and a GOP
    /// snapshot: what was queued behind that frame, and a stream without
    /// video (of which the hub caches nothing), would be lost. Even if the
    /// stream went offline meanwhile, what it queued is recorded. Whether
    /// the successor took the feed (else the stream is no longer wanted,
    /// or the server stops: the old recording's sink is detached).
    fn hand_over(self: &Arc<Self>, stream: &Arc<Stream>, active: &Arc<Active>, feed: Feed) -> bool {
        let mut map = self.active.lock();
        if !map
            .get(&stream.name)
            .is_some_and(|a| Arc::ptr_eq(a, active))
        {
            return false;
        }
        map.remove(&stream.name);
        if !self.wants(&stream.name) || *self.stopping.borrow() {
            return false;
        }
        let (live, live_rx) = watch::channel(stream.is_live());
        let next = Arc::new(Active {
            id: new_id(),
            live,
            wanted: AtomicBool::new(true),
            status: Mutex::new(WriteStatus::Ok),
        });
        map.insert(stream.name.clone(), next.clone());
        drop(map);
        self.run_recording(stream, next, live_rx, feed);
        true
    }

    /// Deletes a recording's files and row. A recording being made cannot
    /// be deleted (stop it with `!live record off` first).
    pub async fn delete(&self, id: &str) -> Result<bool, DeleteError> {
        if !valid_id(id) {
            return Ok(false);
        }
        if self.is_active(id) {
            return Err(DeleteError::Active);
        }
        // The files are on the node that recorded (cluster mode): only it
        // deletes, or they would stay there unindexed.
        match self.store.recording(id).await {
            Ok(Some(r)) if r.node != self.node => {
                // Its node deletes it (files and row) when it hears this.
                if let Some(bus) = self.bus.get() {
                    bus.send(crate::cluster::bus::BusMessage::DeleteRecording {
                        id: id.to_string(),
                    });
                    return Err(DeleteError::Forwarded(r.node));
                }
                return Err(DeleteError::OtherNode(r.node));
            }
            Ok(_) => {}
            Err(e) => return Err(DeleteError::Io(e.to_string())),
        }
        self.indexes.forget(id);
        let dir = self.dir_of(id);
        let removed = tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        })
        .await
        .map_err(|e| DeleteError::Io(e.to_string()))?;
        removed.map_err(|e| DeleteError::Io(e.to_string()))?;
        let gone = self
            .store
            .delete_recording(id)
            .await
            .map_err(|e| DeleteError::Io(e.to_string()))?;
        if gone {
            self.metrics.deleted.fetch_add(1, Relaxed);
        }
        Ok(gone)
    }

    /// Deletes finished recordings older than `retention_days`, then the
    /// oldest while all take more than `max_total_gb`.
    async fn apply_retention(&self) {
        let days = self.cfg.retention_days;
        let cap = self.cfg.max_total_bytes();
        if days == 0 && cap.is_none() {
            return;
        }
        let rows = match self.store.all_recordings().await {
            Ok(r) => r,
            Err(e) => {
                warn!("recording: retention cannot read the index: {e}");
                return;
            }
        };
        let now = ms(SystemTime::now()) as i64;
        for (r, why) in retention::to_delete(&rows, &self.node, now, days, cap) {
            match self.delete(&r.id).await {
                Ok(_) => {
                    info!(id = %r.id, stream = %r.stream, bytes = r.bytes, reason = why.as_str(), "recording: deleted by retention");
                }
                Err(e) => warn!(id = %r.id, "recording: retention cannot delete: {e}"),
            }
        }
    }

    /// Appends the Prometheus text.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let m = &self.metrics;
        for (name, help, v) in [
            (
                "roomcast_recording_bytes_written_total",
                "Bytes of recordings written (fsynced).",
                &m.bytes_written,
            ),
            (
                "roomcast_recording_segments_written_total",
                "Recording segments written.",
                &m.segments_written,
            ),
            (
                "roomcast_recordings_started_total",
                "Recordings started.",
                &m.recordings_started,
            ),
            (
                "roomcast_recording_pauses_total",
                "Times a recording paused for lack of free space (recording.min_free_gb).",
                &m.pauses,
            ),
            (
                "roomcast_recording_failures_total",
                "Recording segment writes that failed (disk full, not writable, files deleted).",
                &m.failures,
            ),
            (
                "roomcast_recordings_deleted_total",
                "Recordings deleted (API, bot, retention).",
                &m.deleted,
            ),
            (
                "roomcast_recording_frames_dropped_total",
                "Frames the recorder's queue dropped (it resumes at the next keyframe).",
                &m.frames_dropped,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        }
        let (mut ok, mut paused, mut failing) = (0, 0, 0);
        for a in self.active.lock().values() {
            match *a.status.lock() {
                WriteStatus::Ok => ok += 1,
                WriteStatus::Paused(_) => paused += 1,
                WriteStatus::Failing(_) => failing += 1,
            }
        }
        let name = "roomcast_recordings_active";
        let _ = writeln!(
            out,
            "# HELP {name} Recordings being made, by write status.\n# TYPE {name} gauge"
        );
        for (status, n) in [("ok", ok), ("paused", paused), ("failing", failing)] {
            let _ = writeln!(out, "{name}{{status=\"{status}\"}} {n}");
        }
    }

    fn date(&self, at: Instant) -> SystemTime {
        match at.checked_duration_since(self.clock.0) {
            Some(d) => self.clock.1 + d,
            None => self.clock.1 - self.clock.0.duration_since(at),
        }
    }

    /// The recording of the go-live session of `stream` that started at
    /// `started_ms` (the replay link of its "ended" notice): the newest one
    /// that began with it (both start at the same hub change, a few ms
    /// apart) or was going on when it began.
    pub async fn recording_of_session(
        &self,
        stream: &str,
        started_ms: u64,
    ) -> Option<RecordingRow> {
        let s = started_ms as i64;
        let rows = self.store.recordings_of(stream, 5).await.ok()?;
        rows.into_iter()
            .find(|r| session::belongs(r.started_ms, r.ended_ms, s))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    #[error("the recording is being made; stop it first (`!live record off`)")]
    Active,
    #[error("the recording is stored on cluster node '{0}'; delete it there")]
    OtherNode(String),
    /// Asked of the node that holds it, over the cluster bus.
    #[error("the recording is stored on cluster node '{0}', which deletes it now")]
    Forwarded(String),
    #[error("cannot delete the recording: {0}")]
    Io(String),
}

/// What a recording records from: its hub sink's queue (`sink_id`), and
/// the frames to begin with (the hub's cached GOP for a new sink; the frame
/// the predecessor ended before, after a rollover).
struct Feed {
    sink_id: u64,
    rx: mpsc::Receiver<Msg>,
    overflow: Arc<AtomicBool>,
    queued: Arc<ByteBudget>,
    seed: Vec<Arc<Frame>>,
}

/// One recording's task state.
struct Recording {
    rec: Arc<Recorder>,
    stream: Arc<Stream>,
    active: Arc<Active>,
    seg: Segmenter,
    /// The msn of the next complete segment to write.
    next_msn: u64,
    files: Option<RecordingFiles>,
    row: RecordingRow,
    row_written: bool,
    row_updated: Instant,
    /// A segment was skipped: the next one written follows a gap.
    gap: bool,
    codec: Option<VideoCodec>,
    expect: (bool, bool),
    publisher: Option<u64>,
    /// The recording's time zero (its first frame), and what each track's
    /// RTP time was then: a recording starts at 0 (the hub's stream clock
    /// does not, and continues across sessions), audio and video aligned.
    zero: Option<Instant>,
    video_base: Option<u32>,
    audio_base: Option<u32>,
    /// Media bytes given to the segmenter since the last segment was written.
    pending_bytes: usize,
    /// When it hands over to the next: at an age (from `zero`, in media
    /// time, so a backlog counts as what it is).
    rollover: rollover::Rollover,
}

impl Recording {
    fn new(rec: Arc<Recorder>, stream: Arc<Stream>, active: Arc<Active>) -> Recording {
        let segment = rec.cfg.segment_secs;
        let params = Params {
            // One fragment per segment: parts are for live latency only.
            part_target: 60.0,
            segment_target: segment,
            // Each complete segment is written before the next completes
            // (`write_complete` after every frame): keeping more would only
            // hold up to 64 MiB each in memory.
            window: 1,
        };
        let rollover = rollover::Rollover::new(rec.cfg.max_recording_hours);
        let now = ms(SystemTime::now()) as i64;
        let row = RecordingRow {
            id: active.id.clone(),
            stream: stream.name.clone(),
            session: now.to_string(),
            node: rec.node.clone(),
            started_ms: now,
            ended_ms: None,
            duration_ms: 0,
            bytes: 0,
            video_codec: None,
            audio_codec: None,
            peak_viewers: stream.viewers() as i64,
            title_start: stream.title(),
            title_end: stream.title(),
            room_id: stream.room().map(|r| r.room_id),
            state: "recording".into(),
            private: stream.access() == crate::hub::Access::Private,
        };
        Recording {
            rec,
            stream,
            active,
            seg: Segmenter::new(params),
            next_msn: 0,
            files: None,
            row,
            row_written: false,
            row_updated: Instant::now(),
            gap: false,
            codec: None,
            expect: (true, true),
            publisher: None,
            zero: None,
            video_base: None,
            audio_base: None,
            pending_bytes: 0,
            rollover,
        }
    }

    /// Records from `feed` until the broadcast ends; whether it handed the
    /// feed to a successor (`recording.max_recording_hours`).
    async fn run(mut self, feed: Feed, mut live: watch::Receiver<bool>) -> bool {
        let Feed {
            sink_id,
            mut rx,
            overflow,
            queued,
            seed,
        } = feed;
        info!(stream = %self.stream.name, id = %self.row.id, "recording: started");
        if let Err(e) = self.rec.store.insert_recording(&self.row).await {
            warn!(id = %self.row.id, "recording: cannot index the recording yet (retried): {e}");
        } else {
            self.row_written = true;
        }
        let mut last_seeded = None;
        for f in &seed {
            self.process(f);
            last_seeded = Some(f.index);
        }
        if seed.is_empty() {
            self.stream.request_keyframe();
        }
        self.write_complete().await;
        // A successor of a stream that went offline while frames queued.
        let mut offline_since = (!*live.borrow_and_update()).then(tokio::time::Instant::now);
        let mut stopping = self.rec.stopping.subscribe();
        let mut rolled_over = None;
        loop {
            if *stopping.borrow_and_update() {
                break;
            }
            let end_at = offline_since.map(|t| t + self.rec.continue_within);
            tokio::select! {
                // Queued frames first: those of a broadcast that ended (or
                // of a predecessor's queue) are recorded before the end.
                biased;
                msg = rx.recv() => match msg {
                    Some(Msg::Frame(f)) => {
                        queued.release(f.bytes());
                        // Not to be recorded now (`!live record off` while
                        // live), or already in the seed.
                        if !self.active.wanted.load(Relaxed)
                            || last_seeded.is_some_and(|i| f.index <= i)
                        {
                            continue;
                        }
                        let can_begin = match f.kind {
                            Kind::Video => f.keyframe,
                            Kind::Audio => !self.expect.0,
                        };
                        if self
                            .zero
                            .is_some_and(|zero| self.rollover.due(zero, f.wallclock, can_begin))
                        {
                            // The next recording begins with this frame.
                            rolled_over = Some(f);
                            break;
                        }
                        if overflow.swap(false, Relaxed) {
                            self.rec.metrics.frames_dropped.fetch_add(1, Relaxed);
                            self.seg.resync();
                        }
                        self.process(&f);
                        self.write_complete().await;
                    }
                    None => break,
                },
                changed = live.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let is_live = *live.borrow_and_update();
                    if is_live {
                        if offline_since.take().is_some() {
                            // Back after a gap: the next segment says so.
                            self.gap = true;
                        }
                    } else if offline_since.is_none() {
                        // The last segment is whole now: write it.
                        self.seg.flush();
                        self.write_complete().await;
                        offline_since = Some(tokio::time::Instant::now());
                    }
                }
                _ = tokio::time::sleep_until(end_at.unwrap_or_else(tokio::time::Instant::now)), if end_at.is_some() => break,
                _ = stopping.changed() => break,
            }
        }
        let mut handed_over = false;
        if let Some(first) = rolled_over {
            info!(stream = %self.stream.name, id = %self.row.id, max_hours = self.rec.cfg.max_recording_hours, "recording: reached recording.max_recording_hours; the next recording begins");
            // The next recording goes on from this queue, with this frame.
            let feed = Feed {
                sink_id,
                rx,
                overflow,
                queued,
                seed: vec![first],
            };
            handed_over = self.rec.hand_over(&self.stream, &self.active, feed);
        }
        self.seg.flush();
        self.write_complete().await;
        self.finish().await;
        handed_over
    }

    fn process(&mut self, f: &Frame) {
        self.pending_bytes += f.bytes();
        if self.pending_bytes > MAX_SEGMENT_BYTES {
            if let Some(suppressed) = SEGMENT_CUT_LOG.allow() {
                warn!(stream = %self.stream.name, max_bytes = MAX_SEGMENT_BYTES, suppressed, "recording: a segment grew past its byte cap (keyframes too rare for the bitrate); cut, the next one starts at a keyframe");
            }
            self.seg.resync();
            self.pending_bytes = f.bytes();
        }
        if self.publisher != Some(f.publisher) || f.keyframe {
            self.publisher = Some(f.publisher);
            let m = self.stream.media_info();
            self.expect = (m.video.is_some(), m.audio.is_some());
            self.codec = m.video.and_then(|v| VideoCodec::from_name(v.codec));
        }
        // Time zero is the first keyframe (or audio packet, without video):
        // the segmenter drops whatever comes before it anyway.
        let starts = match f.kind {
            Kind::Video => f.keyframe,
            Kind::Audio => !self.expect.0,
        };
        if self.zero.is_none() && !starts {
            return;
        }
        let wall = self.rec.date(f.wallclock);
        let zero = *self.zero.get_or_insert(f.wallclock);
        let since_zero = f.wallclock.saturating_duration_since(zero).as_micros() as u64;
        let (base, rate) = match f.kind {
            Kind::Video => (&mut self.video_base, 90_000),
            Kind::Audio => (&mut self.audio_base, 48_000),
        };
        let base = *base.get_or_insert_with(|| {
            f.rtp_time
                .wrapping_sub((since_zero * rate / 1_000_000) as u32)
        });
        let rtp_time = f.rtp_time.wrapping_sub(base);
        match f.kind {
            Kind::Video => {
                let Some(codec) = self.codec else { return };
                self.seg.push_video(
                    f.publisher,
                    codec,
                    rtp_time,
                    f.keyframe,
                    f.payloads.iter().map(|p| &p[..]),
                    wall,
                    self.expect.1,
                );
                if self.seg.wants_keyframe() {
                    self.stream.request_keyframe();
                }
            }
            Kind::Audio => {
                self.seg
                    .push_audio(f.publisher, rtp_time, &f.payloads[0], wall, self.expect.0);
            }
        }
    }

    /// Writes the segments the segmenter completed since the last call.
    async fn write_complete(&mut self) {
        loop {
            let Some(seg) = self.seg.playlist.complete_segment(self.next_msn) else {
                // Skipped past (window) or not there yet.
                match self.seg.playlist.last_segment() {
                    Some(s) if s.complete && s.msn >= self.next_msn => {
                        self.next_msn = s.msn;
                        continue;
                    }
                    _ => return,
                }
            };
            self.next_msn = seg.msn + 1;
            self.pending_bytes = 0;
            let Some(init) = self.seg.playlist.init(seg.init) else {
                continue;
            };
            let data = SegmentData {
                init_id: seg.init,
                init,
                chunks: seg.chunks(),
                duration_us: (seg.duration() * 1e6).round() as u64,
                discontinuity: seg.discontinuity,
                pdt_ms: ms(seg.pdt),
            };
            if self.row.video_codec.is_none() && self.row.audio_codec.is_none() {
                self.note_codecs();
            }
            self.write(data).await;
        }
    }

    fn note_codecs(&mut self) {
        if let Some(codecs) = self.seg.codecs() {
            for c in codecs.split(',') {
                if c == "opus" {
                    self.row.audio_codec = Some("opus".into());
                } else {
                    self.row.video_codec = Some(c.to_string());
                }
            }
        }
    }

    fn set_status(&self, status: WriteStatus) {
        let mut s = self.active.status.lock();
        if *s == status {
            return;
        }
        match &status {
            WriteStatus::Ok => {
                info!(stream = %self.stream.name, id = %self.row.id, "recording: writing again")
            }
            WriteStatus::Paused(why) => {
                self.rec.metrics.pauses.fetch_add(1, Relaxed);
                warn!(stream = %self.stream.name, id = %self.row.id, "recording: paused: {why}; the live stream is not affected");
            }
            WriteStatus::Failing(why) => {
                warn!(stream = %self.stream.name, id = %self.row.id, "recording: cannot write: {why}; retrying with the next segment; the live stream is not affected")
            }
        }
        *s = status;
    }

    async fn write(&mut self, mut data: SegmentData) {
        let dir = self.rec.dir_of(&self.row.id);
        let min_free = self.rec.cfg.min_free_bytes();
        let probe = self.rec.dir.join("probe");
        let needed =
            data.chunks.iter().map(|c| c.len() as u64).sum::<u64>() + data.init.len() as u64;
        if min_free > 0 {
            let free = crate::store::health::free_bytes(&probe);
            if let Some(free) = free.filter(|&f| f < min_free + needed) {
                self.gap = true;
                self.set_status(WriteStatus::Paused(format!(
                    "{free} bytes free in {}, under recording.min_free_gb ({})",
                    self.rec.dir.display(),
                    self.rec.cfg.min_free_gb
                )));
                return;
            }
        }
        data.discontinuity |= std::mem::take(&mut self.gap);
        let files = self.files.take();
        let result = tokio::task::spawn_blocking(move || {
            let mut files = match files {
                Some(f) => f,
                None => match RecordingFiles::create(dir) {
                    Ok(f) => f,
                    Err(e) => return (None, Err(e)),
                },
            };
            let r = files.write(&data);
            (Some(files), r)
        })
        .await;
        let (files, r) = match result {
            Ok(v) => v,
            Err(e) => (None, Err(std::io::Error::other(e.to_string()))),
        };
        self.files = files;
        match r {
            Ok(n) => {
                self.set_status(WriteStatus::Ok);
                self.rec.metrics.bytes_written.fetch_add(n, Relaxed);
                self.rec.metrics.segments_written.fetch_add(1, Relaxed);
                if self.row_updated.elapsed() >= ROW_UPDATE_INTERVAL || !self.row_written {
                    self.save_row().await;
                }
            }
            Err(e) => {
                self.gap = true;
                self.rec.metrics.failures.fetch_add(1, Relaxed);
                let dir = self.rec.dir_of(&self.row.id);
                self.set_status(WriteStatus::Failing(format!("{}: {e}", dir.display())));
            }
        }
    }

    fn refresh_row(&mut self) {
        if let Some(f) = &self.files {
            self.row.duration_ms = (f.index.duration_us() / 1000) as i64;
            self.row.bytes = f.index.bytes() as i64;
        }
        self.row.peak_viewers = self.row.peak_viewers.max(self.stream.viewers() as i64);
        self.row.title_end = self.stream.title();
        if self.row.room_id.is_none() {
            self.row.room_id = self.stream.room().map(|r| r.room_id);
        }
        // Private once, private for good (`admission::recording::servable`).
        self.row.private |= self.stream.access() == crate::hub::Access::Private;
    }

    async fn save_row(&mut self) {
        self.refresh_row();
        self.row_updated = Instant::now();
        let r = if self.row_written {
            self.rec.store.update_recording(&self.row).await
        } else {
            self.rec.store.insert_recording(&self.row).await
        };
        match r {
            Ok(()) => self.row_written = true,
            Err(e) => {
                warn!(id = %self.row.id, "recording: cannot update the index yet (retried): {e}")
            }
        }
    }

    async fn finish(mut self) {
        self.row.ended_ms = Some(ms(SystemTime::now()) as i64);
        self.row.state = "complete".into();
        let mut delay = Duration::from_millis(500);
        for _ in 0..6 {
            self.save_row().await;
            if self.row_written {
                break;
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
        info!(stream = %self.stream.name, id = %self.row.id, duration_ms = self.row.duration_ms, bytes = self.row.bytes, "recording: complete");
    }
}

/// Reads a recording's index from disk (for the HTTP files).
pub async fn read_index(dir: &Path) -> std::io::Result<Option<index::Index>> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || files::read_index(&dir))
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?
}
