//! Stream thumbnails, made on demand: while somebody wants a live H.264 or
//! VP8 stream's thumbnail (asked within `wanted_for_secs`: the JPEG's GET,
//! the Matrix notice), its cached keyframe (the hub's GOP cache, so nothing
//! is added to the per-packet path) is decoded to a small JPEG every
//! `interval_secs` on `max_parallel` long-lived decoder threads: one decode
//! per stream per interval whatever the number of viewers, none for a
//! stream nobody looks at (`demand`). The first ask waits, bounded, for the
//! first picture (`want_within`), so a card or a link preview gets one at
//! once. The threads
//! live as long as the server, so the decoders' working memory stays in the
//! same allocator arenas instead of coming and going with tokio's blocking
//! threads (which made RSS step by ~8 MB whenever a fresh thread decoded). The latest JPEG of each live stream is kept (bounded bytes: one per
//! stream, each at most `max_bytes`) for the API, the pages' cards and
//! Open Graph tags, and the Matrix go-live notice.

pub mod demand;
pub mod picture;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use parking_lot::Mutex;
use serde::Deserialize;
use tokio::sync::{Notify, Semaphore};
use tracing::{debug, warn};

use self::demand::{Demand, Policy, Step};
use crate::hub::Hub;
use crate::log_every::LogEvery;

/// `[thumbnails]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThumbnailConfig {
    pub enabled: bool,
    /// A stream's thumbnail is renewed at most this often (from a newer keyframe).
    pub interval_secs: u64,
    /// Width of the JPEG in pixels (height follows the aspect ratio).
    pub width: u32,
    /// JPEG quality, 1–100.
    pub quality: u8,
    /// Largest JPEG kept; a bigger one is dropped (and logged).
    pub max_bytes: usize,
    /// Decodes running at once, server-wide (one decoder thread each).
    pub max_parallel: usize,
    /// Pictures with more pixels than this are not decoded.
    pub max_pixels: usize,
    /// A stream's thumbnail is renewed only while it was asked for within
    /// this many seconds; 0: every live stream's, always (the old way).
    pub wanted_for_secs: u64,
}

impl Default for ThumbnailConfig {
    fn default() -> Self {
        ThumbnailConfig {
            enabled: true,
            interval_secs: 10,
            width: 320,
            quality: 75,
            max_bytes: 128 * 1024,
            max_parallel: 1,
            max_pixels: 3840 * 2160,
            wanted_for_secs: 60,
        }
    }
}

impl ThumbnailConfig {
    /// `Err((key, reason))` for a value that cannot work.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.interval_secs == 0 {
            return Err(("interval_secs", "must be at least 1".into()));
        }
        if !(16..=1920).contains(&self.width) {
            return Err(("width", "must be 16 to 1920 pixels".into()));
        }
        if !(1..=100).contains(&self.quality) {
            return Err(("quality", "must be 1 to 100".into()));
        }
        if !(1024..=8 * 1024 * 1024).contains(&self.max_bytes) {
            return Err(("max_bytes", "must be 1024 to 8388608".into()));
        }
        if !(1..=64).contains(&self.max_parallel) {
            return Err(("max_parallel", "must be 1 to 64".into()));
        }
        if self.max_pixels < 16 * 16 {
            return Err(("max_pixels", "must be at least 256".into()));
        }
        if self.wanted_for_secs > 86_400 {
            return Err((
                "wanted_for_secs",
                "must be 0 (always renew) to 86400".into(),
            ));
        }
        Ok(())
    }

    fn policy(&self) -> Policy {
        Policy {
            interval: Duration::from_secs(self.interval_secs),
            wanted_for: (self.wanted_for_secs > 0)
                .then(|| Duration::from_secs(self.wanted_for_secs)),
        }
    }

    fn shape(&self) -> picture::Shape {
        picture::Shape {
            width: self.width,
            quality: self.quality,
            max_pixels: self.max_pixels,
            max_bytes: self.max_bytes,
        }
    }
}

/// The latest thumbnail of a stream.
#[derive(Debug)]
pub struct Thumbnail {
    pub jpeg: Bytes,
    pub width: u32,
    pub height: u32,
    pub taken: SystemTime,
    /// Grows with each new thumbnail of any stream: tells "changed" cheaply.
    pub seq: u64,
}

/// Why a stream has no thumbnail (for the API's error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    Disabled,
    Offline,
    /// The codec is not decoded here.
    Codec(&'static str),
    /// Live, but none made yet (no keyframe yet, or decoding failed).
    NotYet,
}

#[derive(Default)]
struct Entry {
    latest: Option<Arc<Thumbnail>>,
    /// Index of the last keyframe tried, so one keyframe is decoded once.
    tried_index: Option<u64>,
    demand: Demand,
    /// Woken when a decode of this stream ends (made or failed) or the
    /// stream goes away: what a first ask waits for.
    ended: Arc<Notify>,
}

/// Decode counters for `/metrics` (and the bench).
#[derive(Default)]
pub struct ThumbnailStats {
    pub made: AtomicU64,
    pub failed: AtomicU64,
    /// CPU time of the decodes and encodes, µs (thread CPU time).
    pub cpu_us: AtomicU64,
    /// Asks that waited for a stream's first thumbnail, and those of them
    /// that got none within the wait.
    pub waits: AtomicU64,
    pub waits_unanswered: AtomicU64,
}

/// What a decoder thread answers: the picture (or why not) and its CPU time.
type Made = (Result<picture::Jpeg, picture::PictureError>, Duration);

/// One keyframe for a decoder thread.
struct DecodeJob {
    codec: &'static str,
    keyframe: Arc<crate::hub::Frame>,
    shape: picture::Shape,
    reply: tokio::sync::oneshot::Sender<Result<Made, String>>,
}

pub struct Thumbnails {
    cfg: ThumbnailConfig,
    hub: Arc<Hub>,
    entries: Mutex<HashMap<String, Entry>>,
    /// A permit per decoder thread: a job is queued only with one, so the
    /// channel never holds more than `max_parallel` keyframes.
    pool: Arc<Semaphore>,
    decoders: std::sync::OnceLock<std::sync::mpsc::SyncSender<DecodeJob>>,
    seq: AtomicU64,
    /// Runs a round now (not at the next tick): a stream became wanted, or
    /// a decode ended while asks wait. One stored permit: kicks coalesce.
    kick: Notify,
    /// Asks waiting for a first thumbnail now (at most `MAX_WAITING`).
    waiting: AtomicUsize,
    pub stats: ThumbnailStats,
}

static DECODE_FAILED_LOG: LogEvery = LogEvery::new(Duration::from_secs(60));

/// How often the driver looks for due streams: a stream that just went live
/// gets its first thumbnail about this soon after its first keyframe.
const TICK: Duration = Duration::from_secs(1);

/// How long a first ask waits for a stream's first thumbnail: a decode
/// takes tens of ms, but the pool may be busy for a round or the stream
/// may still lack a keyframe.
pub const FIRST_WAIT: Duration = Duration::from_millis(2500);

/// Asks that may wait at once, server-wide; more answer at once.
const MAX_WAITING: usize = 256;

impl Thumbnails {
    pub fn new(cfg: ThumbnailConfig, hub: Arc<Hub>) -> Arc<Thumbnails> {
        let pool = Arc::new(Semaphore::new(cfg.max_parallel));
        Arc::new(Thumbnails {
            cfg,
            hub,
            entries: Mutex::new(HashMap::new()),
            pool,
            decoders: std::sync::OnceLock::new(),
            seq: AtomicU64::new(0),
            kick: Notify::new(),
            waiting: AtomicUsize::new(0),
            stats: ThumbnailStats::default(),
        })
    }

    pub fn enabled(&self) -> bool {
        self.cfg.enabled
    }

    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.cfg.interval_secs)
    }

    /// Why a stream has no thumbnail to offer (`Missing::NotYet` when it may
    /// get one), or the live stream.
    fn check(&self, stream: &str) -> Result<Arc<crate::hub::Stream>, Missing> {
        if !self.cfg.enabled {
            return Err(Missing::Disabled);
        }
        let s = self.hub.get(stream).filter(|s| s.is_live());
        let Some(s) = s else {
            return Err(Missing::Offline);
        };
        match s.media_info().video.map(|v| v.codec) {
            Some(c) if !picture::decodable(c) => Err(Missing::Codec(c)),
            Some(_) => Ok(s),
            None => Err(Missing::NotYet),
        }
    }

    /// Whether the stream's API snapshot names the JPEG's path: a live H.264
    /// or VP8 stream that has a thumbnail, or a keyframe to make one from
    /// when asked. Before its first keyframe the path is left out, so an
    /// index card shows its placeholder instead of asking for a picture that
    /// cannot be made yet (a 404 every browser logs as an error). Not an ask.
    pub fn offered(&self, stream: &str) -> bool {
        let Ok(s) = self.check(stream) else {
            return false;
        };
        let made = self
            .entries
            .lock()
            .get(stream)
            .is_some_and(|e| e.latest.is_some());
        made || s.has_cached_keyframe()
    }

    /// The latest thumbnail of a live stream, without asking for one (its
    /// renewal is not extended).
    pub fn peek(&self, stream: &str) -> Result<Arc<Thumbnail>, Missing> {
        self.check(stream)?;
        self.entries
            .lock()
            .get(stream)
            .and_then(|e| e.latest.clone())
            .ok_or(Missing::NotYet)
    }

    /// Asks for the stream's thumbnail: it is renewed for `wanted_for_secs`
    /// from now. Answers the latest (none yet: `NotYet`, and a round starts
    /// at once if the stream was not wanted).
    pub fn want(&self, stream: &str) -> Result<Arc<Thumbnail>, Missing> {
        self.check(stream)?;
        let now = Instant::now();
        let policy = self.cfg.policy();
        let mut entries = self.entries.lock();
        let e = entries.entry(stream.to_string()).or_default();
        if !policy.wanted(&e.demand, now) || e.demand.wanted_at.is_none() {
            self.kick.notify_one();
        }
        e.demand.wanted_at = Some(now);
        e.latest.clone().ok_or(Missing::NotYet)
    }

    /// [`want`](Self::want), and when the stream has no thumbnail yet, waits
    /// up to `within` for the decode that is running or starts now to end
    /// (made or failed). A wait holds no thread; at most `MAX_WAITING` asks
    /// wait at once (more get `NotYet` at once).
    pub async fn want_within(
        &self,
        stream: &str,
        within: Duration,
    ) -> Result<Arc<Thumbnail>, Missing> {
        match self.want(stream) {
            Err(Missing::NotYet) => {}
            r => return r,
        }
        let Some(_slot) = WaitSlot::take(&self.waiting) else {
            return Err(Missing::NotYet);
        };
        self.stats.waits.fetch_add(1, Ordering::Relaxed);
        let Some(ended) = self.entries.lock().get(stream).map(|e| e.ended.clone()) else {
            return self.peek(stream);
        };
        let ended = ended.notified();
        tokio::pin!(ended);
        // Registered before looking again, so a decode that ends in between
        // is not missed.
        ended.as_mut().enable();
        let r = match self.peek(stream) {
            Err(Missing::NotYet) => match tokio::time::timeout(within, ended).await {
                Ok(()) => self.peek(stream),
                Err(_) => Err(Missing::NotYet),
            },
            r => r,
        };
        if r.is_err() {
            self.stats.waits_unanswered.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    pub fn spawn(self: &Arc<Self>) {
        if !self.cfg.enabled {
            return;
        }
        if let Err(e) = self.start_decoders() {
            warn!("thumbnails off: cannot start a decoder thread: {e}");
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = me.kick.notified() => {}
                }
                me.round(Instant::now());
            }
        });
    }

    /// `max_parallel` decoder threads sharing one job queue.
    fn start_decoders(&self) -> std::io::Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<DecodeJob>(self.cfg.max_parallel);
        let rx = Arc::new(std::sync::Mutex::new(rx));
        for i in 0..self.cfg.max_parallel {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("thumbnail-{i}"))
                .spawn(move || decoder_thread(&rx))?;
        }
        let _ = self.decoders.set(tx);
        Ok(())
    }

    /// Starts the decodes that are due (`demand::Policy::step`), drops
    /// pictures nobody wants, forgets streams that are not live.
    fn round(self: &Arc<Self>, now: Instant) {
        let live: Vec<_> = self
            .hub
            .streams()
            .into_iter()
            .filter(|s| s.is_live())
            .collect();
        let policy = self.cfg.policy();
        let mut due = Vec::new();
        {
            let mut entries = self.entries.lock();
            entries.retain(|name, e| {
                let keep = live.iter().any(|s| &s.name == name);
                if !keep {
                    e.ended.notify_waiters();
                }
                keep
            });
            for s in &live {
                let e = entries.entry(s.name.clone()).or_default();
                match policy.step(&e.demand, now) {
                    Step::Wait => continue,
                    Step::Forget => {
                        // The next ask decodes the current keyframe again.
                        e.latest = None;
                        e.tried_index = None;
                        e.demand.tried_at = None;
                        continue;
                    }
                    Step::Renew => {}
                }
                // The SPS's size is checked before the decoder sees the frame
                // (and again after: in-band parameter sets may differ).
                let fits = |v: &crate::hub::VideoInfo| {
                    let px = u64::from(v.width.unwrap_or(0)) * u64::from(v.height.unwrap_or(0));
                    px <= self.cfg.max_pixels as u64
                };
                let Some(video) = s.media_info().video else {
                    continue;
                };
                if !picture::decodable(video.codec) || !fits(&video) {
                    continue;
                }
                let Some(key) = s.gop_snapshot().into_iter().next().filter(|f| f.keyframe) else {
                    continue;
                };
                if e.tried_index == Some(key.index) {
                    continue;
                }
                due.push((s.name.clone(), video.codec, key));
            }
        }
        for (name, codec, key) in due {
            // A full pool: this stream waits for a later round.
            let Ok(permit) = self.pool.clone().try_acquire_owned() else {
                break;
            };
            if let Some(e) = self.entries.lock().get_mut(&name) {
                e.demand.busy = true;
                e.tried_index = Some(key.index);
                e.demand.tried_at = Some(now);
            }
            let (reply, made) = tokio::sync::oneshot::channel();
            let job = DecodeJob {
                codec,
                keyframe: key,
                shape: self.cfg.shape(),
                reply,
            };
            // The permit guarantees room in the queue; a closed queue (no
            // decoder thread left) fails this decode like a decoder error.
            let queued = self
                .decoders
                .get()
                .ok_or_else(|| "no decoder thread".to_string())
                .and_then(|q| q.try_send(job).map_err(|e| e.to_string()));
            let me = self.clone();
            tokio::spawn(async move {
                let made = match queued {
                    Ok(()) => made
                        .await
                        .unwrap_or_else(|_| Err("the decoder thread is gone".into())),
                    Err(e) => Err(format!("the decode was not queued: {e}")),
                };
                drop(permit);
                me.finish(&name, made);
                // A freed decoder may serve a stream an ask waits for.
                if me.waiting.load(Ordering::Relaxed) > 0 {
                    me.kick.notify_one();
                }
            });
        }
    }

    fn finish(&self, name: &str, made: Result<Made, String>) {
        let result = match made {
            Ok((r, cpu)) => {
                self.stats
                    .cpu_us
                    .fetch_add(cpu.as_micros() as u64, Ordering::Relaxed);
                r.map_err(|e| e.to_string())
            }
            Err(e) => Err(e),
        };
        let mut entries = self.entries.lock();
        let Some(e) = entries.get_mut(name) else {
            return;
        };
        e.demand.busy = false;
        // Wakes after `latest` is set below (the waiters take the lock to read it).
        let ended = e.ended.clone();
        match result {
            Ok(jpeg) => {
                self.stats.made.fetch_add(1, Ordering::Relaxed);
                debug!(stream = %name, bytes = jpeg.bytes.len(), "thumbnail made");
                e.latest = Some(Arc::new(Thumbnail {
                    jpeg: Bytes::from(jpeg.bytes),
                    width: jpeg.width,
                    height: jpeg.height,
                    taken: SystemTime::now(),
                    seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
                }));
            }
            Err(reason) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = DECODE_FAILED_LOG.allow() {
                    warn!(stream = %name, suppressed, "thumbnail: {reason}");
                }
            }
        }
        drop(entries);
        ended.notify_waiters();
    }

    /// Lines for `/metrics`.
    pub fn metrics(&self) -> String {
        let policy = self.cfg.policy();
        // `wanted_for_secs = 0`: every live stream is.
        let all_live = (policy.wanted_for.is_none() && self.cfg.enabled)
            .then(|| self.hub.streams().iter().filter(|s| s.is_live()).count());
        let (live, wanted) = {
            let now = Instant::now();
            let entries = self.entries.lock();
            let live = entries.values().filter(|e| e.latest.is_some()).count();
            let wanted = all_live.unwrap_or_else(|| {
                entries
                    .values()
                    .filter(|e| policy.wanted(&e.demand, now))
                    .count()
            });
            (live, wanted)
        };
        format!(
            "# HELP roomcast_thumbnails_made_total Thumbnails decoded and encoded.\n\
             # TYPE roomcast_thumbnails_made_total counter\n\
             roomcast_thumbnails_made_total {}\n\
             # HELP roomcast_thumbnails_failed_total Keyframes that gave no thumbnail.\n\
             # TYPE roomcast_thumbnails_failed_total counter\n\
             roomcast_thumbnails_failed_total {}\n\
             # HELP roomcast_thumbnail_cpu_seconds_total CPU time spent making thumbnails.\n\
             # TYPE roomcast_thumbnail_cpu_seconds_total counter\n\
             roomcast_thumbnail_cpu_seconds_total {:.6}\n\
             # HELP roomcast_thumbnails_current Live streams with a thumbnail.\n\
             # TYPE roomcast_thumbnails_current gauge\n\
             roomcast_thumbnails_current {live}\n\
             # HELP roomcast_thumbnails_wanted Live streams whose thumbnail is renewed (asked for within wanted_for_secs).\n\
             # TYPE roomcast_thumbnails_wanted gauge\n\
             roomcast_thumbnails_wanted {wanted}\n\
             # HELP roomcast_thumbnail_waits_total Asks that waited for a stream's first thumbnail.\n\
             # TYPE roomcast_thumbnail_waits_total counter\n\
             roomcast_thumbnail_waits_total {}\n\
             # HELP roomcast_thumbnail_waits_unanswered_total Waiting asks that got no thumbnail (no keyframe, a failed decode, or none within the wait).\n\
             # TYPE roomcast_thumbnail_waits_unanswered_total counter\n\
             roomcast_thumbnail_waits_unanswered_total {}\n",
            self.stats.made.load(Ordering::Relaxed),
            self.stats.failed.load(Ordering::Relaxed),
            self.stats.cpu_us.load(Ordering::Relaxed) as f64 / 1e6,
            self.stats.waits.load(Ordering::Relaxed),
            self.stats.waits_unanswered.load(Ordering::Relaxed),
        )
    }
}

/// One of the `MAX_WAITING` places for a waiting ask, given back on drop.
struct WaitSlot<'a>(&'a AtomicUsize);

impl<'a> WaitSlot<'a> {
    fn take(waiting: &'a AtomicUsize) -> Option<WaitSlot<'a>> {
        waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_WAITING).then_some(n + 1)
            })
            .ok()
            .map(|_| WaitSlot(waiting))
    }
}

impl Drop for WaitSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A decoder thread: takes jobs until the queue closes. A panic in a decode
/// ends that decode only; the thread goes on with the next.
fn decoder_thread(jobs: &std::sync::Mutex<std::sync::mpsc::Receiver<DecodeJob>>) {
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(poisoned) => poisoned.into_inner().recv(),
        };
        let Ok(job) = job else {
            return;
        };
        let cpu = thread_cpu();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            picture::thumbnail(job.codec, &job.keyframe.payloads, job.shape)
        }));
        let made = r
            .map(|r| (r, thread_cpu().saturating_sub(cpu)))
            .map_err(|_| "the decoder panicked".to_string());
        let _ = job.reply.send(made);
        release_freed_memory();
    }
}

/// A decode allocates a few MB (the decoder's reference pictures, the scaled
/// image) and frees them; glibc keeps such freed memory in the thread's arena
/// where fragmentation can pin it, so RSS stepped up by ~6 MB at some go-live
/// and stayed. One trim per decode (at most one per stream per interval)
/// hands it back.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// CPU time of the calling thread (what one decode costs, whatever else runs).
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{ThumbnailConfig, Thumbnails};
    use crate::hub::{Hub, IngestProtocol, VideoInfo};

    /// The stream's JSON names the thumbnail only once a keyframe can make
    /// one: before that, an index card asking would get a 404.
    #[test]
    fn a_live_stream_offers_its_thumbnail_from_its_first_keyframe() {
        let hub = Arc::new(Hub::default());
        let thumbs = Thumbnails::new(ThumbnailConfig::default(), hub.clone());
        let s = hub.ensure_stream("a", None);
        assert!(!thumbs.offered("a"), "offline");
        let p = hub.publish(&s, IngestProtocol::Rtmp);
        p.set_media(|m| {
            m.video = Some(VideoInfo {
                codec: "H264",
                ..VideoInfo::default()
            })
        })
        .unwrap();
        let frame = |n: u8| -> Box<[Arc<[u8]>]> { Box::new([Arc::from(vec![n; 10])]) };
        p.push_video(0, false, frame(1)).unwrap();
        assert!(!thumbs.offered("a"), "live, H.264, no keyframe yet");
        p.push_video(33, true, frame(2)).unwrap();
        assert!(thumbs.offered("a"), "a keyframe to decode");
        p.set_media(|m| m.video.as_mut().unwrap().codec = "VP9")
            .unwrap();
        assert!(!thumbs.offered("a"), "no VP9 decoder");
    }

    #[test]
    fn wanted_for_zero_renews_every_live_stream() {
        let c = ThumbnailConfig {
            wanted_for_secs: 0,
            ..ThumbnailConfig::default()
        };
        assert_eq!(c.policy().wanted_for, None);
    }
}
