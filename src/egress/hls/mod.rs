//! LL-HLS egress: `/hls/{stream}/index.m3u8`, its init segments, segments and
//! parts, made once per stream from hub frames.
//!
//! The sans-I/O core is [`segmenter::Segmenter`] (frames → fMP4 parts and
//! segments, [`fmp4`]) and [`playlist::Playlist`] (window, rendering, blocking
//! reload rules). This file is the thin async driver: a [`FrameSink`] per
//! stream that only enqueues, one task per stream that feeds the segmenter,
//! and the HTTP handlers, which hold blocking requests on a `watch` channel.
//!
//! A stream's HLS starts on its first HLS request, seeded with the hub's GOP
//! cache so the first playlist has parts at once, and stops after
//! `hls.idle_timeout_secs` without requests: idle servers mux nothing.

pub mod fmp4;
pub mod playlist;
pub mod segmenter;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info};

use crate::admission::{Purpose, ViewerFacts};
use crate::config::HlsConfig;
use crate::hub::{Access, Frame, FrameSink, Hub, HubEvent, Kind, Stream};
use crate::matrix::access::token_from;
use crate::server::App;
use crate::web::{ApiError, PeerAddr};
use playlist::{Params, Wait};
use segmenter::Segmenter;

/// Frames queued between the publisher's task and the segmenter; a full queue
/// drops frames and resumes at the next keyframe (never slows the publisher).
const QUEUE: usize = 1024;
/// Sink ids of HLS streams start here, far from the WebRTC shards' ids.
const SINK_ID_BASE: u64 = 1 << 40;
/// A first playlist request waits this long at least for the first part.
const MIN_HOLD: Duration = Duration::from_secs(3);
/// `PART-TARGET` = `hls.part_target_ms` × this.
const PART_TARGET_SLACK: f64 = 1.05;

pub const PLAYLIST_TYPE: &str = "application/vnd.apple.mpegurl";
const MEDIA_TYPE: &str = "video/mp4";

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
}

impl FrameSink for Sink {
    fn deliver(&self, _stream: &Arc<Stream>, frame: &Arc<Frame>) {
        if self.tx.try_send(Msg::Frame(frame.clone())).is_err() {
            self.overflow.store(true, Relaxed);
        }
    }
}

/// The HLS state of one stream.
pub struct HlsStream {
    stream: Arc<Stream>,
    /// Names every URI, so names never repeat across HLS sessions of a stream
    /// (segments are cached as immutable).
    session: u32,
    seg: Mutex<Segmenter>,
    version: watch::Sender<u64>,
    tx: mpsc::Sender<Msg>,
    sink_id: u64,
    /// ms since [`Hls::epoch`] of the last request.
    last_request: AtomicU64,
    /// The playlist as rendered for requests without a token, per version.
    cached: Mutex<Option<(u64, Bytes)>>,
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
    fn get(&self, stream: &Arc<Stream>, start: bool) -> Option<Arc<HlsStream>> {
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
        let hs = Arc::new(HlsStream {
            stream: stream.clone(),
            session: rand::random::<u32>() & 0x7fff_ffff,
            seg: Mutex::new(Segmenter::new(self.params)),
            version: watch::channel(0).0,
            tx: tx.clone(),
            sink_id: self.next_sink.fetch_add(1, Relaxed),
            last_request: AtomicU64::new(self.now_ms()),
            cached: Mutex::new(None),
        });
        let sink: Arc<dyn FrameSink> = Arc::new(Sink {
            tx,
            overflow: overflow.clone(),
        });
        // Attach first, then snapshot: a frame in both is skipped by index.
        stream.attach_sink(hs.sink_id, &sink);
        let seed = stream.gop_snapshot();
        streams.insert(stream.name.clone(), hs.clone());
        drop(streams);
        info!(stream = %stream.name, seeded_frames = seed.len(), "hls: started");
        tokio::spawn(run(hs.clone(), rx, seed, overflow, self.clock));
        Some(hs)
    }
}

/// Feeds one stream's frames to its segmenter.
async fn run(
    hs: Arc<HlsStream>,
    mut rx: mpsc::Receiver<Msg>,
    seed: Vec<Arc<Frame>>,
    overflow: Arc<AtomicBool>,
    clock: (Instant, SystemTime),
) {
    let date = |at: Instant| match at.checked_duration_since(clock.0) {
        Some(d) => clock.1 + d,
        None => clock.1 - clock.0.duration_since(at),
    };
    let mut expect = (true, true); // (video, audio) the publisher announced
    let mut h264 = true;
    let mut publisher = None;
    let mut process = |f: &Frame, seg: &mut Segmenter| -> bool {
        if publisher != Some(f.publisher) || f.keyframe {
            publisher = Some(f.publisher);
            let m = hs.stream.media_info();
            expect = (m.video.is_some(), m.audio.is_some());
            // Only H.264 goes into HLS (the playlist request says so otherwise).
            h264 = m.video.as_ref().is_none_or(|v| v.codec == "H264");
        }
        if f.kind == Kind::Video && !h264 {
            return false;
        }
        match f.kind {
            Kind::Video => {
                let changed = seg.push_video(
                    f.publisher,
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
            hs.version.send_modify(|v| *v += 1);
        }
    }
    while let Some(msg) = rx.recv().await {
        let changed = match msg {
            Msg::Frame(f) => {
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
            hs.version.send_modify(|v| *v += 1);
        }
    }
}

impl HlsStream {
    /// Waits (until `deadline`) for `f` to give a value; it is asked again
    /// each time the playlist changes.
    async fn wait<T>(
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
    fn render(&self, seg: &Segmenter, query: &str) -> Bytes {
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

pub fn routes() -> Router<Arc<App>> {
    Router::new().route("/hls/{stream}/{file}", get(serve))
}

/// `_HLS_msn`, `_HLS_part` and `access` of a request.
#[derive(Debug, Default, PartialEq)]
struct HlsQuery {
    msn: Option<u64>,
    part: Option<u64>,
    access: Option<String>,
}

fn parse_query(query: Option<&str>) -> Result<HlsQuery, ApiError> {
    let mut q = HlsQuery::default();
    let num = |k: &str, v: &str| {
        v.parse::<u64>().map_err(|_| {
            ApiError::bad_request(
                "bad_query",
                format!("{k} must be a whole number ≥ 0, not '{v}'"),
            )
        })
    };
    for kv in query.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "_HLS_msn" => q.msn = Some(num(k, v)?),
            "_HLS_part" => q.part = Some(num(k, v)?),
            "access" => q.access = Some(v.to_string()),
            _ => {}
        }
    }
    if q.part.is_some() && q.msn.is_none() {
        return Err(ApiError::bad_request(
            "bad_query",
            "_HLS_part needs _HLS_msn",
        ));
    }
    Ok(q)
}

/// A request for one of the files of a stream's HLS.
#[derive(Debug, PartialEq)]
enum File {
    Playlist,
    Init {
        session: u32,
        id: u32,
    },
    Segment {
        session: u32,
        msn: u64,
    },
    Part {
        session: u32,
        msn: u64,
        index: usize,
    },
}

fn parse_file(name: &str) -> Option<File> {
    if name == "index.m3u8" {
        return Some(File::Playlist);
    }
    let (stem, ext) = name.rsplit_once('.')?;
    let mut it = stem.split('-');
    let kind = it.next()?;
    let session = it.next()?.parse().ok()?;
    let a = it.next()?;
    let b = it.next();
    if it.next().is_some() {
        return None;
    }
    match (kind, ext, b) {
        ("init", "mp4", None) => Some(File::Init {
            session,
            id: a.parse().ok()?,
        }),
        ("seg", "m4s", None) => Some(File::Segment {
            session,
            msn: a.parse().ok()?,
        }),
        ("part", "m4s", Some(b)) => Some(File::Part {
            session,
            msn: a.parse().ok()?,
            index: b.parse().ok()?,
        }),
        _ => None,
    }
}

fn gone(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("{what} is not (or no longer) available; reload the playlist"),
    )
}

async fn serve(
    State(app): State<Arc<App>>,
    Path((name, file)): Path<(String, String)>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let hls = &app.hls;
    let client = crate::web::client_addr(peer.ip(), &headers, &app.config.http.trusted_proxies);
    let r = serve_inner(&app, &name, &file, client, &uri, &headers).await;
    if r.is_err() {
        hls.metrics.errors.fetch_add(1, Relaxed);
    }
    r
}

async fn serve_inner(
    app: &App,
    name: &str,
    file: &str,
    client: std::net::IpAddr,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let hls = &app.hls;
    if !hls.enabled {
        return Err(ApiError::not_found(
            "HLS is turned off on this server (hls.enabled = false); watch over WebRTC",
        ));
    }
    let file = parse_file(file).ok_or_else(|| {
        ApiError::not_found(format!(
            "no such HLS file '{file}': the playlist is /hls/{name}/index.m3u8"
        ))
    })?;
    let query = parse_query(uri.query())?;
    // Segment URLs cannot carry a signed URL's signature: with signed or
    // webhook-admitted playback, HLS would bypass the check, so it is off.
    let gated = app
        .config
        .signed_policy
        .as_ref()
        .is_some_and(|p| p.playback)
        || app.config.admission.as_ref().is_some_and(|a| a.playback);
    if gated {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "hls_unavailable",
            "this server admits viewers by signed URL or webhook, which HLS cannot check per segment; watch over WebRTC",
        ));
    }
    // Streams of private Matrix rooms need a viewer token, for every file.
    let facts = ViewerFacts {
        stream: name.to_string(),
        client,
        token: token_from(headers, uri.query()),
        attempt: None,
    };
    let pass = app.admission.admit_viewer(facts, Purpose::Hls).await?;
    let stream = pass.stream;
    // Files of a private stream must not sit in shared caches.
    let private = stream.access() != Access::Public;
    // Passed on as it came (still URL-encoded), and only when it cannot break
    // out of a playlist line or attribute.
    let suffix = query
        .access
        .as_deref()
        .filter(|a| {
            a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._~%-+".contains(&b))
        })
        .map(|a| format!("?access={a}"))
        .unwrap_or_default();
    match file {
        File::Playlist => playlist(app, &stream, &query, &suffix, client, private).await,
        file => media(app, &stream, file, private).await,
    }
}

fn codec_check(stream: &Stream) -> Result<(), ApiError> {
    if let Some(v) = stream.media_info().video
        && v.codec != "H264"
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "hls_unsupported_codec",
            format!(
                "stream '{}' sends {} video, which roomcast's HLS cannot carry (H.264 only); watch it over WebRTC",
                stream.name, v.codec
            ),
        ));
    }
    Ok(())
}

async fn playlist(
    app: &App,
    stream: &Arc<Stream>,
    q: &HlsQuery,
    suffix: &str,
    client: std::net::IpAddr,
    private: bool,
) -> Result<Response, ApiError> {
    let hls = &app.hls;
    let live = stream.is_live();
    if live {
        codec_check(stream)?;
    }
    let blocking = q.msn.is_some();
    if blocking {
        hls.metrics.blocking_playlists.fetch_add(1, Relaxed);
    } else {
        hls.metrics.playlists.fetch_add(1, Relaxed);
        // A player's first request (it reloads with _HLS_msn from then on):
        // where a new HLS viewer is admitted or not, as WHEP does per session.
        if live {
            app.admission.check_egress(stream)?;
        }
    }
    // Offline: 404, except that a blocking reload of a running HLS waits for
    // the publisher to come back (a restart keeps players going).
    let hs = match hls.get(stream, live) {
        Some(hs) if live || blocking => hs,
        _ => return Err(ApiError::offline(&stream.name)),
    };
    let hold = {
        let seg = hs.seg.lock();
        let target = seg.playlist.target_duration() as f64;
        Duration::from_secs_f64(3.0 * target).max(MIN_HOLD)
    };
    let deadline = Instant::now() + hold;
    // Waiting reloads are capped, in all and per address.
    let _slot = match q.msn {
        Some(_) => Some(app.admission.hls_blocking_slot(client)?),
        None => None,
    };
    let ready = match q.msn {
        Some(msn) => {
            let w = hs.seg.lock().playlist.wait_for(msn, q.part);
            if w == Wait::TooFar {
                return Err(ApiError::bad_request(
                    "hls_request_too_far",
                    format!(
                        "_HLS_msn={msn}{} is too far ahead of the playlist",
                        q.part
                            .map(|p| format!(", _HLS_part={p}"))
                            .unwrap_or_default()
                    ),
                ));
            }
            hs.wait(deadline, |s| {
                (s.playlist.wait_for(msn, q.part) == Wait::Ready).then_some(())
            })
            .await
        }
        None => {
            hs.wait(deadline, |s| s.playlist.has_parts().then_some(()))
                .await
        }
    };
    if ready.is_none() {
        if !stream.is_live() {
            return Err(ApiError::offline(&stream.name));
        }
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "hls_not_ready",
            format!(
                "stream '{}' has no HLS part for this request yet; waiting for a keyframe",
                stream.name
            ),
        )
        .retry_after(1));
    }
    let body = {
        let seg = hs.seg.lock();
        hs.render(&seg, suffix)
    };
    hls.metrics.bytes.fetch_add(body.len() as u64, Relaxed);
    Ok((
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(PLAYLIST_TYPE),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static(match (private, blocking) {
                    (false, true) => "max-age=6",
                    (false, false) => "no-cache",
                    (true, true) => "private, max-age=6",
                    (true, false) => "private, no-cache",
                }),
            ),
        ],
        body,
    )
        .into_response())
}

async fn media(
    app: &App,
    stream: &Arc<Stream>,
    file: File,
    private: bool,
) -> Result<Response, ApiError> {
    let hls = &app.hls;
    let session = match file {
        File::Init { session, .. } | File::Segment { session, .. } | File::Part { session, .. } => {
            session
        }
        File::Playlist => unreachable!("playlists are served by playlist()"),
    };
    let hs = hls
        .get(stream, false)
        .filter(|hs| hs.session == session)
        .ok_or_else(|| gone("this HLS session"))?;
    let hold = Duration::from_secs_f64(3.0 * hs.seg.lock().playlist.target_duration() as f64)
        .max(MIN_HOLD);
    let deadline = Instant::now() + hold;
    let chunks: Vec<Bytes> = match file {
        File::Init { id, .. } => {
            hls.metrics.inits.fetch_add(1, Relaxed);
            vec![
                hs.seg
                    .lock()
                    .playlist
                    .init(id)
                    .ok_or_else(|| gone("this init segment"))?,
            ]
        }
        File::Segment { msn, .. } => {
            hls.metrics.segments.fetch_add(1, Relaxed);
            // The segment being made (or the next two) are waited for.
            {
                let seg = hs.seg.lock();
                let p = &seg.playlist;
                if p.is_gone(msn) || p.last_msn().is_none_or(|l| msn > l + 2) {
                    return Err(gone(&format!("segment {msn}")));
                }
            }
            hs.wait(deadline, |s| {
                s.playlist.complete_segment(msn).map(|seg| seg.chunks())
            })
            .await
            .ok_or_else(|| gone(&format!("segment {msn}")))?
        }
        File::Part { msn, index, .. } => {
            hls.metrics.parts.fetch_add(1, Relaxed);
            {
                let seg = hs.seg.lock();
                let p = &seg.playlist;
                if p.is_gone(msn) || p.wait_for(msn, Some(index as u64)) == Wait::TooFar {
                    return Err(gone(&format!("part {msn}.{index}")));
                }
            }
            // A preload-hinted part is answered as soon as it is complete.
            let part = hs
                .wait(deadline, |s| {
                    if let Some(p) = s.playlist.part(msn, index) {
                        return Some(Some(p.data.clone()));
                    }
                    // The segment ended with fewer parts: it never comes.
                    s.playlist
                        .complete_segment(msn)
                        .map(|_| None)
                        .or_else(|| s.playlist.is_gone(msn).then_some(None))
                })
                .await
                .flatten()
                .ok_or_else(|| gone(&format!("part {msn}.{index}")))?;
            vec![part]
        }
        File::Playlist => unreachable!(),
    };
    let len: usize = chunks.iter().map(Bytes::len).sum();
    hls.metrics.bytes.fetch_add(len as u64, Relaxed);
    // The parts' bytes are shared with every other viewer: no copy here.
    let body = if chunks.len() == 1 {
        Body::from(chunks.into_iter().next().expect("one"))
    } else {
        Body::from_stream(futures_util::stream::iter(
            chunks.into_iter().map(Ok::<_, Infallible>),
        ))
    };
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(MEDIA_TYPE));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    // Names are never reused (the session is in them); a private stream's
    // files are for the viewer's own cache only.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if private {
            "private, max-age=86400"
        } else {
            "max-age=86400, immutable"
        }),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_file_names() {
        assert_eq!(parse_query(None).unwrap(), HlsQuery::default());
        let q = parse_query(Some("_HLS_msn=12&_HLS_part=3&access=v1.9.ab&x=1")).unwrap();
        assert_eq!(q.msn, Some(12));
        assert_eq!(q.part, Some(3));
        assert_eq!(q.access.as_deref(), Some("v1.9.ab"));
        let e = parse_query(Some("_HLS_msn=abc")).unwrap_err();
        assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "bad_query"));
        assert!(e.message.contains("abc"), "{}", e.message);
        assert!(parse_query(Some("_HLS_msn=-1")).is_err());
        assert!(parse_query(Some("_HLS_part=1")).is_err());

        assert_eq!(parse_file("index.m3u8"), Some(File::Playlist));
        assert_eq!(
            parse_file("init-7-0.mp4"),
            Some(File::Init { session: 7, id: 0 })
        );
        assert_eq!(
            parse_file("seg-7-12.m4s"),
            Some(File::Segment {
                session: 7,
                msn: 12
            })
        );
        assert_eq!(
            parse_file("part-7-12.3.m4s"),
            None,
            "parts are part-S-MSN-INDEX"
        );
        assert_eq!(
            parse_file("part-7-12-3.m4s"),
            Some(File::Part {
                session: 7,
                msn: 12,
                index: 3
            })
        );
        for bad in [
            "seg-7-x.m4s",
            "seg-7-1.mp4",
            "part-7-1.m4s",
            "x",
            "../etc",
            "seg-7-1-2-3.m4s",
        ] {
            assert_eq!(parse_file(bad), None, "{bad}");
        }
    }
}
