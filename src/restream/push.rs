//! One push: a destination's RTMP(S) connection, fed from its [`PushQueue`].
//!
//! The handshake is rml_rtmp's; connect, createStream and publish are
//! [`PublishClient`]'s (sans I/O); the socket, TLS (rustls with the
//! platform's roots), timeouts and reconnects are here. Which codecs may go
//! is [`PushCodecs`]': H.264 always, AV1 over Enhanced RTMP only where the
//! destination's setting, its service or its connect reply says so.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tracing::{info, warn};

use super::codecs::{OFFERED_FOURCCS, PushCodecs, Verdict, negotiable, refusal, verdict};
use super::dest::{SecretKey, Target};
use super::flv_mux::{FlvMux, Tag};
use super::health::{Health, PushState};
use super::queue::{Item, PushQueue};
use super::rtmp_client::{ClientError, ClientEvent, PublishClient};
use crate::hub::Stream;
use crate::media::rtp_video::VideoCodec;

/// Connecting, the handshake and `publish` must finish within this.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// A write that does not finish in this means the destination is stuck.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a push waiting for a keyframe asks the publisher again (the
/// hub rate-limits requests per stream too).
const KEYFRAME_ASK_INTERVAL: Duration = Duration::from_millis(500);
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub struct Push {
    pub stream: Arc<Stream>,
    pub label: String,
    pub target: Target,
    pub key: SecretKey,
    pub queue: Arc<PushQueue>,
    pub health: Arc<Health>,
    /// Where RTMPS pushes find their trust roots.
    pub tls: Arc<TlsRoots>,
    /// The destination's `codecs` setting (`None`: its service's defaults
    /// plus what its connect reply advertises).
    pub codecs: Option<PushCodecs>,
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
enum PushError {
    #[error("{0}")]
    Io(String),
    #[error("the destination refused: {0}")]
    Refused(String),
    #[error("timed out {0}")]
    Timeout(&'static str),
    #[error("RTMP: {0}")]
    Protocol(String),
    /// Not retried: the stream's codec cannot go over RTMP.
    #[error("{0}")]
    Codec(String),
    /// Retried at once with `fourCcList`: a takeover brought a codec the
    /// destination may take over Enhanced RTMP, and this connection did
    /// not ask.
    #[error("the stream is now {0}: reconnecting with Enhanced RTMP")]
    NeedsEnhanced(&'static str),
}

impl Push {
    /// Runs until the task is aborted (the stream went offline or the
    /// destination was removed or switched off).
    pub async fn run(self) {
        let mut mux = FlvMux::new();
        let mut attempt: u32 = 0;
        let mut backoff = BACKOFF_FIRST;
        // Set by a takeover to a codec the legacy connection did not ask
        // about; the next connection offers `fourCcList` whatever the
        // stream's codec reads by then.
        let mut offer_enhanced = false;
        self.health.set(PushState::Connecting);
        loop {
            if let Err(reason) = self.wait_for_pushable_codec().await {
                self.health.set(PushState::Failed { reason });
                // Another publisher (a takeover) may send H.264: keep watching.
                self.wait_for_new_publisher().await;
                continue;
            }
            let started = Instant::now();
            match self
                .session(&mut mux, std::mem::take(&mut offer_enhanced))
                .await
            {
                Err(PushError::NeedsEnhanced(codec)) => {
                    info!(stream = %self.stream.name, destination = %self.label, codec, "restream push: a takeover changed the codec; reconnecting with Enhanced RTMP");
                    offer_enhanced = true;
                    self.health.set(PushState::Connecting);
                    continue;
                }
                Err(PushError::Codec(reason)) => {
                    self.health.set(PushState::Failed { reason });
                    self.wait_for_new_publisher().await;
                    continue;
                }
                Err(e) => {
                    // A connection that lasted resets the backoff.
                    if started.elapsed() > BACKOFF_MAX {
                        attempt = 0;
                        backoff = BACKOFF_FIRST;
                    }
                    attempt += 1;
                    // The error text never holds the key: ours never quote
                    // the publish command, and a destination's refusal text
                    // has it replaced (`rtmp_client::clean`).
                    warn!(stream = %self.stream.name, destination = %self.label, attempt, error = %e, "restream push failed; retrying");
                    self.health.set(PushState::Reconnecting {
                        attempt,
                        error: e.to_string(),
                    });
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                Ok(()) => return,
            }
        }
    }

    /// What this destination takes without asking it: its setting, or its
    /// service's defaults.
    fn known_codecs(&self) -> PushCodecs {
        self.codecs
            .unwrap_or_else(|| PushCodecs::known_service(&self.target.host))
    }

    /// Whether a codec may go once connected: known to be accepted, or AV1
    /// to a destination without a setting, whose connect reply decides.
    fn may_accept(&self, codec: &str) -> bool {
        self.known_codecs().accepts(codec) || (negotiable(codec) && self.codecs.is_none())
    }

    /// Waits for the current publisher's video codec to be known; refuses
    /// one this destination cannot take.
    async fn wait_for_pushable_codec(&self) -> Result<(), String> {
        loop {
            if let Some(v) = self.stream.media_info().video {
                if self.may_accept(v.codec) {
                    return Ok(());
                }
                return Err(refusal(&self.label, self.known_codecs(), v.codec, false));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// After a refusal: returns when another publisher sends a keyframe of
    /// a codec this destination may take (a takeover), or the stream
    /// restarts. Frames of the refused publisher never end the wait, so a
    /// destination that refused AV1 in its connect reply is not asked again
    /// for the same publisher.
    async fn wait_for_new_publisher(&self) {
        let first = self.stream.started_at();
        let mut refused: Option<u64> = None;
        let mut items = Vec::new();
        loop {
            items.clear();
            self.queue.take(&mut items).await;
            let mut changed = false;
            for i in &items {
                if let Item::Video(f) = i {
                    let refused = *refused.get_or_insert(f.publisher);
                    changed |= f.keyframe && f.publisher != refused;
                }
            }
            let changed = changed
                && self
                    .stream
                    .media_info()
                    .video
                    .is_some_and(|v| self.may_accept(v.codec));
            if changed || self.stream.started_at() != first {
                return;
            }
        }
    }

    async fn connect(&self) -> Result<Box<dyn Io>, PushError> {
        let addr = (self.target.host.as_str(), self.target.port);
        let tcp = TcpStream::connect(addr).await.map_err(|e| {
            PushError::Io(format!(
                "connecting to {}:{}: {e}",
                self.target.host, self.target.port
            ))
        })?;
        let _ = tcp.set_nodelay(true);
        if !self.target.tls {
            return Ok(Box::new(tcp));
        }
        let config = self
            .tls
            .client_config()
            .map_err(|e| PushError::Io(format!("TLS setup: {e}")))?;
        let name = rustls::pki_types::ServerName::try_from(self.target.host.clone())
            .map_err(|e| PushError::Io(format!("TLS server name: {e}")))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| PushError::Io(format!("TLS: {e}")))?;
        Ok(Box::new(tls))
    }

    /// One connection: set up, then send until it fails.
    async fn session(&self, mux: &mut FlvMux, offer_enhanced: bool) -> Result<(), PushError> {
        // Enhanced RTMP is offered only when the stream needs it: an H.264
        // push connects exactly as a legacy client does.
        let enhanced = offer_enhanced
            || self
                .stream
                .media_info()
                .video
                .is_some_and(|v| v.codec != "H264");
        let (mut io, mut client, mut buf, advertised) =
            timeout(SETUP_TIMEOUT, self.setup(enhanced))
                .await
                .map_err(|_| PushError::Timeout("setting up the RTMP publish"))??;
        let accepted = match self.codecs {
            Some(c) => c,
            None => self.known_codecs().union(advertised.unwrap_or_default()),
        };
        info!(stream = %self.stream.name, destination = %self.label, url = %self.target.tc_url, codecs = %accepted.describe(), "restream push live");
        self.health.set(PushState::Live);
        mux.reconnected();
        self.queue.clear();
        let key = self.key.expose();
        let mut items = Vec::new();
        let mut tags = Vec::new();
        let mut events = Vec::new();
        let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
        // A WHIP publisher (Chromium) sends keyframes only when asked: the
        // push asks, as a joining viewer does, while it waits for one.
        let mut asked_keyframe: Option<Instant> = None;
        loop {
            if mux.waiting_for_keyframe()
                && asked_keyframe.is_none_or(|t| t.elapsed() >= KEYFRAME_ASK_INTERVAL)
            {
                asked_keyframe = Some(Instant::now());
                self.stream.request_keyframe();
            }
            items.clear();
            tokio::select! {
                gap = self.queue.take(&mut items) => {
                    if gap {
                        mux.resync();
                    }
                }
                n = io.read(&mut buf) => {
                    let n = n.map_err(|e| PushError::Io(format!("reading: {e}")))?;
                    if n == 0 {
                        return Err(PushError::Io("the destination closed the connection".into()));
                    }
                    out.clear();
                    client.receive(&buf[..n], key, &mut out, &mut events).map_err(client_error)?;
                    events.clear();
                    write(&mut io, &out).await?;
                    continue;
                }
            }
            let mut codec = VideoCodec::H264;
            if let Some(Item::Video(f)) = items.iter().find(|i| matches!(i, Item::Video(_)))
                && let Some(v) = self.stream.media_info().video
            {
                if f.publisher != 0 {
                    match verdict(&self.label, self.codecs, accepted, v.codec, enhanced) {
                        Verdict::Send => {}
                        Verdict::ReconnectEnhanced => {
                            return Err(PushError::NeedsEnhanced(v.codec));
                        }
                        Verdict::Refuse(reason) => return Err(PushError::Codec(reason)),
                    }
                }
                codec = VideoCodec::from_name(v.codec).unwrap_or(VideoCodec::H264);
            }
            tags.clear();
            for item in &items {
                match item {
                    Item::Video(f) => {
                        if let Err(e) = mux.video(f, codec, &mut tags) {
                            tracing::debug!(stream = %self.stream.name, error = %e, "restream: undecodable frame skipped");
                        }
                    }
                    Item::Aac(a) => mux.audio(a, &mut tags),
                }
            }
            out.clear();
            for tag in tags.drain(..) {
                match tag {
                    Tag::Video { ts_ms, body } => client.video(ts_ms, &body, &mut out),
                    Tag::Audio { ts_ms, body } => client.audio(ts_ms, &body, &mut out),
                }
            }
            if !out.is_empty() {
                write(&mut io, &out).await?;
                self.health
                    .bytes_sent
                    .fetch_add(out.len() as u64, Ordering::Relaxed);
            }
        }
    }

    /// Handshake, connect (with `fourCcList` when `enhanced`), createStream
    /// and publish; returns what the connect reply advertised.
    async fn setup(
        &self,
        enhanced: bool,
    ) -> Result<(Box<dyn Io>, PublishClient, Vec<u8>, Option<PushCodecs>), PushError> {
        let mut io = self.connect().await?;
        let mut hs = Handshake::new(PeerType::Client);
        let p0p1 = hs
            .generate_outbound_p0_and_p1()
            .map_err(|e| PushError::Protocol(format!("handshake: {e:?}")))?;
        write(&mut io, &p0p1).await?;
        let mut buf = vec![0u8; 64 * 1024];
        let remaining = loop {
            let n = read(&mut io, &mut buf).await?;
            match hs
                .process_bytes(&buf[..n])
                .map_err(|e| PushError::Protocol(format!("handshake: {e:?}")))?
            {
                HandshakeProcessResult::InProgress { response_bytes } => {
                    write(&mut io, &response_bytes).await?;
                }
                HandshakeProcessResult::Completed {
                    response_bytes,
                    remaining_bytes,
                } => {
                    write(&mut io, &response_bytes).await?;
                    break remaining_bytes;
                }
            }
        };
        let mut client = PublishClient::new();
        let mut out = Vec::new();
        let offer: &[&str] = if enhanced { OFFERED_FOURCCS } else { &[] };
        client.connect(&self.target.app, &self.target.tc_url, offer, &mut out);
        let key = self.key.expose();
        let mut events = Vec::new();
        let mut advertised = None;
        client
            .receive(&remaining, key, &mut out, &mut events)
            .map_err(client_error)?;
        loop {
            write(&mut io, &out).await?;
            out.clear();
            for ev in events.drain(..) {
                match ev {
                    ClientEvent::Connected(a) => advertised = a,
                    ClientEvent::Publishing => return Ok((io, client, buf, advertised)),
                }
            }
            let n = read(&mut io, &mut buf).await?;
            client
                .receive(&buf[..n], key, &mut out, &mut events)
                .map_err(client_error)?;
        }
    }
}

/// The destination's refusal (a bad key, a wrong app) or broken RTMP.
fn client_error(e: ClientError) -> PushError {
    match e {
        ClientError::Refused(why) => PushError::Refused(why),
        ClientError::Protocol(why) => PushError::Protocol(why),
    }
}

async fn write(io: &mut Box<dyn Io>, bytes: &[u8]) -> Result<(), PushError> {
    if bytes.is_empty() {
        return Ok(());
    }
    match timeout(WRITE_TIMEOUT, io.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(PushError::Io(format!("writing: {e}"))),
        Err(_) => Err(PushError::Timeout("writing to the destination")),
    }
}

async fn read(io: &mut Box<dyn Io>, buf: &mut [u8]) -> Result<usize, PushError> {
    match io.read(buf).await {
        Ok(0) => Err(PushError::Io(
            "the destination closed the connection".into(),
        )),
        Ok(n) => Ok(n),
        Err(e) => Err(PushError::Io(format!("reading: {e}"))),
    }
}

/// The TLS client configuration of every RTMPS push, made on first use:
/// the system's roots (platforms' ingest servers have public certificates)
/// plus `restream.ca_file`'s, for a destination with a private CA.
pub struct TlsRoots {
    ca_file: Option<std::path::PathBuf>,
    config: std::sync::OnceLock<Result<Arc<rustls::ClientConfig>, String>>,
}

impl TlsRoots {
    pub fn new(ca_file: Option<std::path::PathBuf>) -> Self {
        TlsRoots {
            ca_file,
            config: std::sync::OnceLock::new(),
        }
    }

    fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        self.config.get_or_init(|| self.build()).clone()
    }

    fn build(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let extra: Vec<CertificateDer<'static>> = match &self.ca_file {
            None => Vec::new(),
            Some(f) => CertificateDer::pem_file_iter(f)
                .and_then(|i| i.collect::<Result<_, _>>())
                .map_err(|e| format!("restream.ca_file {}: {e}", f.display()))?,
        };
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier =
            rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())
                .map_err(|e| e.to_string())?;
        let c = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(Arc::new(c))
    }
}
