//! LL-HLS egress: `/hls/{stream}/index.m3u8`, its init segments, segments and
//! parts, made once per stream from hub frames.
//!
//! The sans-I/O core is [`segmenter::Segmenter`] (frames → fMP4 parts and
//! segments, [`fmp4`]) and [`playlist::Playlist`] (window, rendering, blocking
//! reload rules). This file is the thin async driver: a [`FrameSink`] per
//! stream that only enqueues, one task per stream that feeds the segmenter,
//! and what the HTTP handlers (`http::hls`) wait on: a `watch` channel per stream.
//!
//! A stream's HLS starts on its first HLS request, seeded with the hub's GOP
//! cache so the first playlist has parts at once, and stops after
//! `hls.idle_timeout_secs` without requests: idle servers mux nothing.

pub mod caching;
pub mod fmp4;
pub mod playlist;
pub mod segmenter;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc, watch};
use tracing::{debug, info};

use crate::config::HlsConfig;
use crate::hub::{ByteBudget, Frame, FrameSink, Hub, HubEvent, Kind, Stream};
use crate::media::rtp_video::VideoCodec;
use playlist::Params;
use segmenter::Segmenter;

/// Frames queued between the publisher's task and the segmenter; a full queue
/// drops frames and resumes at the next keyframe (never slows the publisher).
const QUEUE: usize = 1024;
/// And their bytes: the segmenter keeps up with any real stream, so this
/// only bounds what a stalled one holds (frames are up to
/// `limits.max_frame_bytes` each).
const QUEUE_MAX_BYTES: usize = 32 << 20;
/// Sink ids of HLS streams start here, far from the WebRTC shards' ids.
const SINK_ID_BASE: u64 = 1 << 40;
/// A first playlist request waits this long at least for the first part.
pub(crate) const MIN_HOLD: Duration = Duration::from_secs(3);
/// `PART-TARGET` = `hls.part_target_ms` × this.
const PART_TARGET_SLACK: f64 = 1.05;

/// Whether LL-HLS carries `codec`: H.264, VP9 and AV1 in fMP4. VP8 in MP4 is
/// refused by the MSE of Chromium 156 and Firefox 153 alike
/// (`MediaSource.isTypeSupported('video/mp4; codecs="vp08.00.10.08"')` is
/// false in both), so no HLS player could play it; every WebRTC browser
/// decodes VP8, so it keeps WebRTC only.
pub fn carries(codec: VideoCodec) -> bool {
    codec != VideoCodec::Vp8
}

pub const PLAYLIST_TYPE: &str = "application/vnd.apple.mpegurl";
pub const MEDIA_TYPE: &str = "video/mp4";

/// Request and byte counters for `/metrics`.
#[derive(Default)]
pub struct HlsMetrics {
    pub playlists: AtomicU64,
    pub blocking_playlists: AtomicU64,
    pub inits: AtomicU64,
    pub segments: AtomicU64,
    pub parts: AtomicU64,
    pub bytes: AtomicU64,
    pub errors: AtomicU64,
    /// Recent egress in bits per second (an f64's bits), from `bytes`, so
    /// `[limits] max_egress_mbps` counts HLS beside WebRTC.
    bits_per_sec: AtomicU64,
}

enum Msg {
    Frame(Arc<Frame>),
    Offline,
    Stop,
}

struct Sink {
    tx: mpsc::Sender<Msg>,
    overflow: Arc<AtomicBool>,
    /// Bytes of frames queued, released by `run` as it takes each.
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

/// The HLS state of one stream.
pub struct HlsStream {
    stream: Arc<Stream>,
    /// Names every URI, so names never repeat across HLS sessions of a stream
    /// (segments are cached as immutable).
    pub(crate) session: u32,
    pub(crate) seg: Mutex<Segmenter>,
    version: watch::Sender<u64>,
    tx: mpsc::Sender<Msg>,
    sink_id: u64,
    /// ms since [`Hls::epoch`] of the last request.
    last_request: AtomicU64,
    /// The playlist as rendered for requests without a token, per version.
    cached: Mutex<Option<(u64, Bytes)>>,
    /// Blocking requests by the position they wait for (see [`position`]):
    /// a new part wakes only those it satisfies, not every waiter.
    targets: Mutex<BTreeMap<(u64, u64), Arc<Notify>>>,
    /// The last position woken up to.
    reached: Mutex<(u64, u64)>,
}

/// How far the playlist is: `(msn, parts)` of its last segment, or
/// `(msn + 1, 0)` once that segment is complete. A request for part `p` of
/// segment `msn` waits for `(msn, p + 1)`; one for the whole segment `msn`,
/// for `(msn + 1, 0)`.
pub(crate) fn position(p: &playlist::Playlist) -> (u64, u64) {
    match p.last_segment() {
        Some(s) if s.complete => (s.msn.saturating_add(1), 0),
        Some(s) => (s.msn, s.parts.len() as u64),
        None => (0, 0),
    }
}

pub struct Hls {
    pub enabled: bool,
    params: Params,
    idle: Duration,
    hub: Arc<Hub>,
    streams: Mutex<HashMap<String, Arc<HlsStream>>>,
    next_sink: AtomicU64,
    epoch: Instant,
    /// `(Instant, SystemTime)` of the same moment, to date frames.
    clock: (Instant, SystemTime),
    pub metrics: HlsMetrics,
}

impl Hls {
    pub fn new(cfg: &HlsConfig, hub: Arc<Hub>) -> Arc<Hls> {
        Arc::new(Hls {
            enabled: cfg.enabled,
            params: Params {
                // Advertised 5 % above the configured duration, so parts of
                // whole frames at 24-60 fps (and millisecond-rounded RTMP
                // times) fit under PART-TARGET and above 85 % of it.
                part_target: cfg.part_target_ms as f64 * PART_TARGET_SLACK / 1000.0,
                segment_target: cfg.segment_target_ms as f64 / 1000.0,
                window: cfg.window_segments,
            },
            idle: Duration::from_secs(cfg.idle_timeout_secs),
            hub,
            streams: Mutex::new(HashMap::new()),
            next_sink: AtomicU64::new(SINK_ID_BASE),
            epoch: Instant::now(),
            clock: (Instant::now(), SystemTime::now()),
            metrics: HlsMetrics::default(),
        })
    }

    /// Background work: ends segments when streams go offline, stops idle streams.
    pub fn spawn(self: &Arc<Self>) {
        if !self.enabled {
            return;
        }
        let me = self.clone();
        let mut events = self.hub.subscribe_events();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(HubEvent::Offline { stream }) => {
                        let hs = me.streams.lock().get(&stream).cloned();
                        if let Some(hs) = hs {
                            let _ = hs.tx.send(Msg::Offline).await;
                        }
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return,
                }
            }
        });
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5).min(me.idle));
            loop {
                tick.tick().await;
                me.stop_idle();
            }
        });
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let (mut last_at, mut last_bytes) = (Instant::now(), 0u64);
            loop {
                tick.tick().await;
                let (now, bytes) = (Instant::now(), me.metrics.bytes.load(Relaxed));
                let secs = now.duration_since(last_at).as_secs_f64().max(1e-3);
                let rate = bytes.saturating_sub(last_bytes) as f64 * 8.0 / secs;
                // Smoothed over a few seconds: parts come in bursts.
                let prev = f64::from_bits(me.metrics.bits_per_sec.load(Relaxed));
                let smoothed = prev + (rate - prev) * 0.5;
                me.metrics.bits_per_sec.store(smoothed.to_bits(), Relaxed);
                (last_at, last_bytes) = (now, bytes);
            }
        });
    }

    /// HLS egress now, in Mbit/s (measured, smoothed over a few seconds).
    pub fn egress_mbps(&self) -> f64 {
        f64::from_bits(self.metrics.bits_per_sec.load(Relaxed)) / 1e6
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn stop_idle(&self) {
        let now = self.now_ms();
        let idle = self.idle.as_millis() as u64;
        let stopped: Vec<Arc<HlsStream>> = {
            let mut streams = self.streams.lock();
            let names: Vec<String> = streams
                .iter()
                .filter(|(_, s)| now.saturating_sub(s.last_request.load(Relaxed)) > idle)
                .map(|(n, _)| n.clone())
                .collect();
            names.iter().filter_map(|n| streams.remove(n)).collect()
        };
        for hs in stopped {
            hs.stream.detach_sink(hs.sink_id);
            let _ = hs.tx.try_send(Msg::Stop);
            info!(stream = %hs.stream.name, "hls: stopped (no requests)");
        }
    }

    /// Whether `stream` is muxed now (requested within `idle_timeout_secs`).
    pub fn is_muxing(&self, stream: &str) -> bool {
        self.streams.lock().contains_key(stream)
    }

    /// Number of streams muxed now.
    pub fn active(&self) -> usize {
        self.streams.lock().len()
    }

    /// Appends the Prometheus text for HLS.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let m = &self.metrics;
        let name = "roomcast_hls_requests_total";
        let _ = writeln!(
            out,
            "# HELP {name} LL-HLS requests answered, by file kind.\n# TYPE {name} counter"
        );
        for (kind, c) in [
            ("playlist", &m.playlists),
            ("blocking_playlist", &m.blocking_playlists),
            ("init", &m.inits),
            ("segment", &m.segments),
            ("part", &m.parts),
        ] {
            let _ = writeln!(out, "{name}{{kind=\"{kind}\"}} {}", c.load(Relaxed));
        }
        let counters = [
            (
                "roomcast_hls_bytes_sent_total",
                "LL-HLS playlist and media bytes sent.",
                m.bytes.load(Relaxed),
            ),
            (
                "roomcast_hls_errors_total",
                "LL-HLS requests answered with an error.",
                m.errors.load(Relaxed),
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        let name = "roomcast_hls_streams";
        let _ = writeln!(
            out,
            "# HELP {name} Streams being muxed for LL-HLS.\n# TYPE {name} gauge\n{name} {}",
            self.active()
        );
    }

    /// The stream's HLS state, started if needed (`start`).
    pub(crate) fn get(&self, stream: &Arc<Stream>, start: bool) -> Option<Arc<HlsStream>> {
        let mut streams = self.streams.lock();
        if let Some(hs) = streams.get(&stream.name) {
            hs.last_request.store(self.now_ms(), Relaxed);
            return Some(hs.clone());
        }
        if !start {
            return None;
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let overflow = Arc::new(AtomicBool::new(false));
        let queued = Arc::new(ByteBudget::new(QUEUE_MAX_BYTES));
        let hs = Arc::new(HlsStream {
            stream: stream.clone(),
            session: rand::random::<u32>() & 0x7fff_ffff,
            seg: Mutex::new(Segmenter::new(self.params)),
            version: watch::channel(0).0,
            tx: tx.clone(),
            sink_id: self.next_sink.fetch_add(1, Relaxed),
            last_request: AtomicU64::new(self.now_ms()),
            cached: Mutex::new(None),
            targets: Mutex::new(BTreeMap::new()),
            reached: Mutex::new((0, 0)),
        });
        let sink: Arc<dyn FrameSink> = Arc::new(Sink {
            tx,
            overflow: overflow.clone(),
            queued: queued.clone(),
        });
        // Attach first, then snapshot: a frame in both is skipped by index.
        stream.attach_sink(hs.sink_id, &sink);
        let seed = stream.gop_snapshot();
        streams.insert(stream.name.clone(), hs.clone());
        drop(streams);
        info!(stream = %stream.name, seeded_frames = seed.len(), "hls: started");
        tokio::spawn(run(hs.clone(), rx, seed, (overflow, queued), self.clock));
        Some(hs)
    }
}

/// Feeds one stream's frames to its segmenter.
async fn run(
    hs: Arc<HlsStream>,
    mut rx: mpsc::Receiver<Msg>,
    seed: Vec<Arc<Frame>>,
    (overflow, queued): (Arc<AtomicBool>, Arc<ByteBudget>),
    clock: (Instant, SystemTime),
) {
    let date = |at: Instant| match at.checked_duration_since(clock.0) {
        Some(d) => clock.1 + d,
        None => clock.1 - clock.0.duration_since(at),
    };
    let mut expect = (true, true); // (video, audio) the publisher announced
    let mut codec = Some(VideoCodec::H264);
    let mut publisher = None;
    let mut process = |f: &Frame, seg: &mut Segmenter| -> bool {
        if publisher != Some(f.publisher) || f.keyframe {
            publisher = Some(f.publisher);
            let m = hs.stream.media_info();
            expect = (m.video.is_some(), m.audio.is_some());
            // Video HLS cannot carry is left out (the playlist request says so).
            codec = m
                .video
                .and_then(|v| VideoCodec::from_name(v.codec))
                .filter(|&c| carries(c));
        }
        match f.kind {
            Kind::Video => {
                let Some(codec) = codec else {
                    return false;
                };
                let changed = seg.push_video(
                    f.publisher,
                    codec,
                    f.rtp_time,
                    f.keyframe,
                    f.payloads.iter().map(|p| &p[..]),
                    date(f.wallclock),
                    expect.1,
                );
                // WebRTC publishers send keyframes when asked (rate-limited by
                // the hub); segments end at the first one after the target.
                if seg.wants_keyframe() {
                    hs.stream.request_keyframe();
                }
                changed
            }
            Kind::Audio => seg.push_audio(
                f.publisher,
                f.rtp_time,
                &f.payloads[0],
                date(f.wallclock),
                expect.0,
            ),
        }
    };
    let mut last_seeded = None;
    {
        let mut seg = hs.seg.lock();
        let mut changed = false;
        for f in &seed {
            changed |= process(f, &mut seg);
            last_seeded = Some(f.index);
        }
        if seed.is_empty() {
            // Nothing cached to start from: ask a WebRTC publisher for a keyframe.
            hs.stream.request_keyframe();
        }
        drop(seg);
        if changed {
            hs.changed();
        }
    }
    while let Some(msg) = rx.recv().await {
        let changed = match msg {
            Msg::Frame(f) => {
                queued.release(f.bytes());
                if last_seeded.is_some_and(|i| f.index <= i) {
                    continue;
                }
                let mut seg = hs.seg.lock();
                let mut changed = false;
                if overflow.swap(false, Relaxed) {
                    debug!(stream = %hs.stream.name, "hls: queue overflowed, resuming at a keyframe");
                    changed |= seg.resync();
                }
                changed | process(&f, &mut seg)
            }
            Msg::Offline => hs.seg.lock().flush(),
            Msg::Stop => break,
        };
        if changed {
            hs.changed();
        }
    }
    // Nothing more comes: every waiter looks again (and gives up).
    hs.wake_all();
}

impl HlsStream {
    /// After the segmenter changed: bump the version, and wake the blocking
    /// requests whose position was reached (all of them if the playlist went
    /// back, as after a restart).
    fn changed(&self) {
        self.version.send_modify(|v| *v += 1);
        let pos = position(&self.seg.lock().playlist);
        let mut reached = self.reached.lock();
        let back = pos < *reached;
        *reached = pos;
        drop(reached);
        if back {
            self.wake_all();
        } else {
            self.wake_to(pos);
        }
    }

    fn wake_to(&self, pos: (u64, u64)) {
        let ready = {
            let mut t = self.targets.lock();
            let later = t.split_off(&(pos.0, pos.1.saturating_add(1)));
            std::mem::replace(&mut *t, later)
        };
        for n in ready.values() {
            n.notify_waiters();
        }
    }

    fn wake_all(&self) {
        let all = std::mem::take(&mut *self.targets.lock());
        for n in all.values() {
            n.notify_waiters();
        }
    }

    /// Like [`HlsStream::wait`] for a request that can only be answered once
    /// the playlist reaches `target` ([`position`]); `f` is asked when it
    /// does (or the playlist goes back or ends), not at every change.
    pub(crate) async fn wait_at<T>(
        &self,
        deadline: Instant,
        target: (u64, u64),
        mut f: impl FnMut(&Segmenter) -> Option<T>,
    ) -> Option<T> {
        loop {
            let n = self
                .targets
                .lock()
                .entry(target)
                .or_insert_with(|| Arc::new(Notify::new()))
                .clone();
            let notified = n.notified();
            tokio::pin!(notified);
            // Registered before looking, so a wake-up in between is not lost.
            notified.as_mut().enable();
            if let Some(v) = f(&self.seg.lock()) {
                return Some(v);
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline.into()) => return f(&self.seg.lock()),
            }
        }
    }

    /// Waits (until `deadline`) for `f` to give a value; it is asked again
    /// each time the playlist changes.
    pub(crate) async fn wait<T>(
        &self,
        deadline: Instant,
        mut f: impl FnMut(&Segmenter) -> Option<T>,
    ) -> Option<T> {
        let mut rx = self.version.subscribe();
        loop {
            if let Some(v) = f(&self.seg.lock()) {
                return Some(v);
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return None },
                _ = tokio::time::sleep_until(deadline.into()) => return f(&self.seg.lock()),
            }
        }
    }

    /// The playlist text for `query` (`""` or `?access=…`); shared between
    /// requests without a token.
    pub(crate) fn render(&self, seg: &Segmenter, query: &str) -> Bytes {
        if !query.is_empty() {
            return Bytes::from(seg.playlist.render(self.session, query));
        }
        let version = *self.version.borrow();
        let mut cached = self.cached.lock();
        if let Some((v, b)) = &*cached
            && *v == version
        {
            return b.clone();
        }
        let b = Bytes::from(seg.playlist.render(self.session, ""));
        *cached = Some((version, b.clone()));
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sink_queues_frames_up_to_its_bytes_then_flags_the_overflow() {
        let hub = Hub::new();
        let stream = hub.ensure_stream("s", None);
        let (tx, mut rx) = mpsc::channel(QUEUE);
        let sink = Sink {
            tx,
            overflow: Arc::new(AtomicBool::new(false)),
            queued: Arc::new(ByteBudget::new(8)),
        };
        let frame = |index| {
            let now = Instant::now();
            Arc::new(Frame {
                kind: Kind::Video,
                index,
                kind_index: index,
                rtp_time: 0,
                wallclock: now,
                received: now,
                keyframe: true,
                publisher: 1,
                payloads: Box::new([Arc::from(vec![0u8; 4])]),
            })
        };
        sink.deliver(&stream, &frame(0));
        sink.deliver(&stream, &frame(1));
        assert!(!sink.overflow.load(Relaxed));
        sink.deliver(&stream, &frame(2));
        assert!(
            sink.overflow.load(Relaxed),
            "a third 4-byte frame is over 8 bytes"
        );
        assert_eq!(sink.queued.used(), 8);
        assert!(matches!(rx.try_recv(), Ok(Msg::Frame(f)) if f.index == 0));
        assert!(matches!(rx.try_recv(), Ok(Msg::Frame(f)) if f.index == 1));
        assert!(rx.try_recv().is_err(), "the third was not queued");
    }
}
