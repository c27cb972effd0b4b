//! Typed configuration: TOML file, then `ROOMCAST_<SECTION>__<KEY>` environment
//! overrides, then validation that names the bad key and says why.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::hub::DEFAULT_MAX_GOP_CACHE_BYTES;
use crate::media::DEFAULT_MAX_FRAME_BYTES;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config: {0}")]
    Parse(String),
    #[error("config key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

fn is_http_url(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

/// `key` must be an http(s) URL.
fn http_url(key: impl Into<String>, url: &str) -> Result<(), ConfigError> {
    if is_http_url(url) {
        Ok(())
    } else {
        Err(invalid(key, "must start with http:// or https://"))
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Base URL for links in notices, widgets and the OBS settings printed at
    /// start-up. Unset: `http://<http listen address>`.
    pub public_url: Option<String>,
    pub http: HttpConfig,
    pub rtmp: RtmpConfig,
    pub webrtc: WebrtcConfig,
    pub streams: Vec<StreamConfig>,
    pub storage: StorageConfig,
    pub limits: LimitsConfig,
    pub matrix: Option<MatrixConfig>,
    /// OvenMediaEngine compatibility: OvenPlayer signalling and WHIP on OME's URLs.
    pub ome: OmeConfig,
    /// Certificate and key for every `tls_listen` (HTTPS, WSS, RTMPS).
    pub tls: Option<TlsConfig>,
    pub signed_policy: Option<SignedPolicyConfig>,
    pub admission: Option<AdmissionConfig>,
    /// Outbound event webhooks (stream started/ended).
    pub webhooks: Vec<WebhookConfig>,
    /// LL-HLS egress (`/hls/{stream}/index.m3u8`).
    pub hls: HlsConfig,
    /// Caps and timeouts of every TCP listener (HTTP(S), RTMP(S), OME, ICE-TCP).
    pub connections: ConnectionsConfig,
    /// Cluster mode (PostgreSQL only): several nodes share one database and
    /// relay streams to each other over WHEP. Absent: one process, as before.
    pub cluster: Option<ClusterConfig>,
    /// Recording of broadcasts (`src/recording`).
    pub recording: crate::recording::config::RecordingConfig,
    /// Stream thumbnails: one keyframe decoded to a small JPEG per interval.
    pub thumbnails: crate::thumbnail::ThumbnailConfig,
    /// Restreaming to RTMP(S) destinations (`[[streams.restream]]`, `!live restream`).
    pub restream: RestreamConfig,
    /// The OBS profiles roomcast hands out (`!live obs`, `/obs-profile`).
    pub obs_profile: ObsProfileConfig,
    /// Standalone screen-share parties: `/party/{name}` with a party key.
    pub parties: Vec<PartyConfig>,
    /// The directory of the config file (`None` without one); the pages read
    /// producers' multi-view layouts from its `layouts/` folder.
    #[serde(skip)]
    pub dir: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// The same service over HTTPS (needs `[tls]`).
    pub tls_listen: Option<SocketAddr>,
    /// Largest request body accepted (SDP offers, JSON), in bytes.
    pub max_body_bytes: usize,
    /// Reverse proxies whose `X-Forwarded-For` / `X-Real-IP` name the client
    /// (for per-address limits). Default: this host only.
    pub trusted_proxies: Vec<crate::auth::Cidr>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "0.0.0.0:8080".parse().expect("valid literal"),
            tls_listen: None,
            max_body_bytes: 64 * 1024,
            trusted_proxies: ["127.0.0.1", "::1"]
                .iter()
                .map(|s| s.parse().expect("valid literal"))
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RtmpConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
    /// RTMPS (RTMP over TLS) on its own port (needs `[tls]`).
    pub tls_listen: Option<SocketAddr>,
    /// The RTMP application name in `rtmp://host/APP` printed for OBS; the
    /// stream key follows it. Any application name is accepted (OME URLs).
    pub app: String,
    /// The longest audio/video message a publisher may send (a keyframe);
    /// a longer declared length closes the connection before anything is
    /// buffered.
    pub max_message_bytes: u32,
}

impl Default for RtmpConfig {
    fn default() -> Self {
        RtmpConfig {
            enabled: true,
            listen: "0.0.0.0:1935".parse().expect("valid literal"),
            tls_listen: None,
            app: "live".into(),
            // A 1080p60 keyframe at 20 Mbit/s is well under 2 MiB.
            max_message_bytes: 8 << 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OmeConfig {
    pub enabled: bool,
    /// `ws://HOST:3333/{app}/{stream}` (OvenPlayer) and
    /// `http://HOST:3333/{app}/{stream}?direction=whip`.
    pub listen: SocketAddr,
    /// The same over TLS (`wss://`, `https://`; OME uses 3334). Needs `[tls]`.
    pub tls_listen: Option<SocketAddr>,
}

impl Default for OmeConfig {
    fn default() -> Self {
        OmeConfig {
            enabled: true,
            listen: "0.0.0.0:3333".parse().expect("valid literal"),
            tls_listen: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain (e.g. the one Caddy or certbot renews).
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// How often the files are checked for changes; new connections get a
    /// renewed certificate without a restart.
    #[serde(default = "default_reload_secs")]
    pub reload_interval_secs: u64,
}

fn default_reload_secs() -> u64 {
    10
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedPolicyConfig {
    /// OME's `<SecretKey>`: the HMAC-SHA1 key URLs are signed with.
    pub secret_key: String,
    #[serde(default = "default_policy_key")]
    pub policy_query_key: String,
    #[serde(default = "default_signature_key")]
    pub signature_query_key: String,
    /// A valid signed URL authorizes publishing (RTMP, WHIP) without a key.
    #[serde(default = "yes")]
    pub publish: bool,
    /// Every viewer (WHEP, OvenPlayer) needs a valid signed URL.
    #[serde(default)]
    pub playback: bool,
    /// Host names RTMP URLs may be signed for besides the address the
    /// publisher connected to and `public_url`'s host (RTMP has no Host header).
    #[serde(default)]
    pub hosts: Vec<String>,
}

fn default_policy_key() -> String {
    "policy".into()
}
fn default_signature_key() -> String {
    "signature".into()
}
fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmissionConfig {
    /// OME's `<ControlServerUrl>`: asked before each session opens, told when it closes.
    pub control_server_url: String,
    /// OME's `<SecretKey>`: signs each request (`X-OME-Signature`).
    #[serde(default)]
    pub secret_key: String,
    /// An answer slower than this refuses the session.
    #[serde(default = "default_admission_timeout")]
    pub timeout_ms: u64,
    /// Ask for publishers (OME's `<Providers>`).
    #[serde(default = "yes")]
    pub publish: bool,
    /// Ask for viewers (OME's `<Publishers>webrtc`).
    #[serde(default)]
    pub playback: bool,
}

fn default_admission_timeout() -> u64 {
    3000
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// `{"event": "stream.started", "stream", "title", "url", "time"}`
    #[default]
    Json,
    /// `{"content": "…"}` for a Discord channel webhook.
    Discord,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    #[serde(default)]
    pub format: WebhookFormat,
    /// "started", "ended".
    #[serde(default = "default_events")]
    pub events: Vec<String>,
    /// Deliveries are retried with backoff (1 s, 2 s, 4 s, …) up to this many attempts.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
}

fn default_events() -> Vec<String> {
    vec!["started".into(), "ended".into()]
}
fn default_attempts() -> u32 {
    5
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebrtcConfig {
    /// One UDP port for every peer.
    pub udp: SocketAddr,
    /// ICE-TCP (passive, RFC 4571 framing) for every peer.
    pub tcp: SocketAddr,
    /// Addresses to advertise as candidates (1:1 NAT). Empty: the listen address,
    /// or this host's outward-facing address when listening on 0.0.0.0.
    pub public_ips: Vec<IpAddr>,
    /// Advertise TCP candidates only.
    pub tcp_force: bool,
    /// Worker threads that run viewers' WebRTC sessions; 0 = one per core.
    /// A lone worker reads the UDP socket itself; several get a receiver
    /// thread that hands each datagram to its worker.
    pub workers: usize,
    /// Refuse (422) viewers whose offer lists no H.264 profile containing the
    /// stream's (e.g. only Constrained Baseline for a High stream). Off: they
    /// get it in the closest offered profile, which their decoders play.
    pub strict_h264_profile: bool,
    /// The cached GOP a viewer gets at join (and on PLI) is sent at most this
    /// fast, after a 32 KB start, so a default 208 KB receive buffer does not
    /// overflow; 0 = all at once.
    pub replay_pace_mbps: u64,
    /// Established viewers' media goes out through roomcast's own SRTP,
    /// written straight into the send batch (str0m keeps ICE, DTLS and the
    /// viewer's RTCP); false: through str0m, as before (to compare).
    pub direct_send: bool,
}

impl Default for WebrtcConfig {
    fn default() -> Self {
        WebrtcConfig {
            udp: "0.0.0.0:10000".parse().expect("valid literal"),
            tcp: "0.0.0.0:10000".parse().expect("valid literal"),
            public_ips: Vec::new(),
            tcp_force: false,
            workers: 0,
            strict_h264_profile: false,
            replay_pace_mbps: 32,
            direct_send: true,
        }
    }
}

/// LL-HLS: segment and part durations, the window, when an unwatched stream stops.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HlsConfig {
    pub enabled: bool,
    /// Partial segment duration (`PART-TARGET`); players stay about three
    /// parts behind the live edge.
    pub part_target_ms: u64,
    /// Segments end at the first keyframe at or after this.
    pub segment_target_ms: u64,
    /// Complete segments kept and listed (the sliding window).
    pub window_segments: usize,
    /// A stream nobody requested HLS of for this long stops being muxed.
    pub idle_timeout_secs: u64,
}

impl Default for HlsConfig {
    fn default() -> Self {
        HlsConfig {
            enabled: true,
            part_target_ms: 200,
            segment_target_ms: 1000,
            window_segments: 6,
            idle_timeout_secs: 30,
        }
    }
}

/// Caps and timeouts applied by every TCP listener, each on its own.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionsConfig {
    /// Open connections per listener; one more is closed at once.
    pub max_per_listener: usize,
    /// Open connections per client address (an IPv6 /64 counts as one), per listener.
    pub max_per_address: usize,
    /// A connection that sent nothing for this long after it was accepted is
    /// closed; on a TLS port, so is one whose TLS handshake is not done this
    /// long after its first byte.
    pub first_bytes_timeout_secs: u64,
    /// A connection with no byte in either direction for this long is closed.
    pub idle_timeout_secs: u64,
    /// HTTP: a request head not complete within this is answered with a closed connection.
    pub http_header_timeout_secs: u64,
    /// HTTP: a request body not complete this long after its head is answered 408.
    pub http_body_timeout_secs: u64,
    /// On SIGTERM/SIGINT, in-flight requests and sessions get this long to finish.
    pub shutdown_grace_secs: u64,
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        // Sized for a 1-vCPU, 1 GB VPS: 4096 idle sockets cost about 20 MB.
        ConnectionsConfig {
            max_per_listener: 4096,
            max_per_address: 64,
            first_bytes_timeout_secs: 10,
            idle_timeout_secs: 60,
            http_header_timeout_secs: 10,
            http_body_timeout_secs: 30,
            shutdown_grace_secs: 3,
        }
    }
}

/// The settings written into OBS profiles (src/obs_profile).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObsProfileConfig {
    /// x264 CBR video bitrate, kbit/s.
    pub video_kbps: u32,
    /// AAC (or Opus, for WHIP) audio bitrate, kbit/s.
    pub audio_kbps: u32,
    /// 720 (1280×720) or 1080 (1920×1080), at 30 fps.
    pub height: u32,
}

impl Default for ObsProfileConfig {
    fn default() -> Self {
        ObsProfileConfig {
            video_kbps: 2500,
            audio_kbps: 160,
            height: 720,
        }
    }
}

impl ObsProfileConfig {
    /// Width and height (`height` is 720 or 1080: checked at start-up).
    pub fn size(&self) -> (u32, u32) {
        if self.height == 1080 {
            (1920, 1080)
        } else {
            (1280, 720)
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    pub name: String,
    pub key: String,
    #[serde(default)]
    pub title: Option<String>,
    /// Record this stream (`[recording]`); absent: `recording.record_by_default`.
    #[serde(default)]
    pub record: Option<bool>,
    /// Where to push the stream while it is live (`[[streams.restream]]`).
    #[serde(default)]
    pub restream: Vec<RestreamDestinationConfig>,
}

/// One restream destination of a config stream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestreamDestinationConfig {
    pub label: String,
    /// `rtmp://` or `rtmps://` server URL with the application path.
    pub url: String,
    /// The destination's stream key (a secret: never logged or shown).
    pub key: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Video codecs the destination takes (`["h264", "av1"]`): AV1 goes
    /// over Enhanced RTMP. Unset: the service's defaults (YouTube takes
    /// AV1) plus what the destination's connect reply advertises.
    #[serde(default)]
    pub codecs: Option<Vec<String>>,
}

impl RestreamDestinationConfig {
    /// The destination this entry of a `[[streams]]` names.
    pub fn destination(&self) -> crate::restream::dest::Destination {
        crate::restream::dest::Destination {
            label: self.label.clone(),
            url: self.url.clone(),
            key: crate::restream::dest::SecretKey::new(self.key.clone()),
            enabled: self.enabled,
            // Validated with the config.
            codecs: self
                .codecs
                .as_deref()
                .and_then(|c| crate::restream::codecs::PushCodecs::parse_setting(c).ok()),
        }
    }
}

/// `[restream]`: how pushes behave.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestreamConfig {
    /// Bytes a push may fall behind before it skips to the next keyframe.
    pub queue_bytes: usize,
    /// The secret that seals destination keys in the database (64 hex
    /// characters, mode 0600; created on first use). Relative paths are
    /// from the config file's directory. Default: `restream.secret`.
    pub secret_file: Option<std::path::PathBuf>,
    /// The sealing secret itself (64 hex characters), instead of the file:
    /// for deployments that pass secrets in the environment
    /// (`ROOMCAST_RESTREAM__SECRET`). Never logged.
    pub secret: Option<String>,
    /// Extra trust roots (PEM) for RTMPS destinations with a private CA;
    /// the system's roots are always trusted.
    pub ca_file: Option<std::path::PathBuf>,
}

impl RestreamConfig {
    /// `secret` as bytes; `None` when absent (validation refused a bad one).
    pub fn secret_bytes(&self) -> Option<[u8; 32]> {
        hex::decode(self.secret.as_deref()?.trim())
            .ok()?
            .try_into()
            .ok()
    }
}

impl Default for RestreamConfig {
    fn default() -> Self {
        RestreamConfig {
            queue_bytes: crate::restream::DEFAULT_QUEUE_BYTES,
            secret_file: None,
            secret: None,
            ca_file: None,
        }
    }
}

/// Egress caps: a viewer over one gets 503 with Retry-After. 0 = no cap.
/// Rate limits: a client over one gets 429 with Retry-After. 0 = no limit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_viewers_per_stream: usize,
    pub max_viewers: usize,
    /// Total egress to viewers in Mbit/s, estimated from each stream's bitrate.
    pub max_egress_mbps: f64,
    /// WebRTC viewer offers (WHEP, OME) per client address (IPv6: per /64)
    /// and minute, and how many may come at once.
    pub offers_per_minute: u32,
    pub offers_burst: u32,
    /// `POST /api/v1/streams/{name}/access` per client address and minute.
    pub access_per_minute: u32,
    pub access_burst: u32,
    /// LL-HLS blocking playlist reloads waiting at once, in all and per
    /// client address (a reload over either gets 429).
    pub hls_max_blocking: usize,
    pub hls_max_blocking_per_address: usize,
    /// Largest video frame (bytes) any publisher may send; a publisher over it
    /// is dropped. Absent: [`DEFAULT_MAX_FRAME_BYTES`].
    pub max_frame_bytes: Option<usize>,
    /// Largest GOP (bytes) cached for joining viewers; a longer GOP is not
    /// cached (viewers then start at the next keyframe). Absent:
    /// [`DEFAULT_MAX_GOP_CACHE_BYTES`].
    pub max_gop_cache_bytes: Option<usize>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_viewers_per_stream: 0,
            max_viewers: 0,
            max_egress_mbps: 0.0,
            offers_per_minute: 60,
            offers_burst: 20,
            access_per_minute: 20,
            access_burst: 10,
            hls_max_blocking: 4096,
            hls_max_blocking_per_address: 64,
            max_frame_bytes: None,
            max_gop_cache_bytes: None,
        }
    }
}

impl From<&LimitsConfig> for crate::hub::HubLimits {
    fn from(l: &LimitsConfig) -> Self {
        crate::hub::HubLimits {
            max_frame_bytes: l.frame_bytes(),
            max_gop_cache_bytes: l.gop_cache_bytes(),
        }
    }
}

impl LimitsConfig {
    pub fn frame_bytes(&self) -> usize {
        self.max_frame_bytes.unwrap_or(DEFAULT_MAX_FRAME_BYTES)
    }

    pub fn gop_cache_bytes(&self) -> usize {
        self.max_gop_cache_bytes
            .unwrap_or(DEFAULT_MAX_GOP_CACHE_BYTES)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub database_url: String,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            database_url: "sqlite://roomcast.db".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatrixConfig {
    pub homeserver_url: String,
    pub server_name: String,
    #[serde(default = "default_registration")]
    pub registration: String,
    /// Rooms of streams get the alias `#<alias_prefix><stream>:<server_name>`;
    /// must match the registration's alias namespace.
    #[serde(default = "default_alias_prefix")]
    pub alias_prefix: String,
    /// The bot's display name.
    #[serde(default = "default_bot_name")]
    pub bot_display_name: String,
    /// How long a stream must stay live before the go-live notice (and stay
    /// offline before it counts as ended), so a flapping connection does not spam.
    #[serde(default = "default_golive_delay_ms")]
    pub golive_delay_ms: u64,
    /// Who may use the bot (`[matrix.permissions]`): `"*"`, a server name or a
    /// full user ID → `"none"`, `"user"` or `"admin"`; the most specific key
    /// wins. Absent: users of `server_name` are `user`, everyone else `none`.
    #[serde(default)]
    pub permissions: Option<std::collections::BTreeMap<String, String>>,
    /// Create a room and a stream when someone looks up an unknown alias
    /// `#<alias_prefix><name>:<server_name>` (rate-limited). Off by default:
    /// anyone on the federation could otherwise make rooms and streams.
    #[serde(default)]
    pub rooms_on_demand: bool,
    /// Streams a `user` may own (admins: no limit).
    #[serde(default = "default_max_streams_per_user")]
    pub max_streams_per_user: usize,
    /// Let OpenID checks of other homeservers connect to private, loopback
    /// and link-local addresses. Off: a token's server name is chosen by
    /// whoever posts it, so this would let anyone make roomcast call into its
    /// own network (SSRF). On only for tests or a closed federation.
    #[serde(default)]
    pub federation_allow_private: bool,
    /// An extra CA (PEM file) trusted for other homeservers' federation
    /// certificates, besides the system's (a test or private federation).
    #[serde(default)]
    pub federation_ca_file: Option<String>,
    /// The go-live notice is edited with the viewer count (and a fresh
    /// thumbnail) at most this often while the stream is live.
    #[serde(default = "default_notice_update_secs")]
    pub notice_update_secs: u64,
    /// A new thumbnail is uploaded to the homeserver at most this often.
    #[serde(default = "default_notice_thumbnail_secs")]
    pub notice_thumbnail_secs: u64,
    /// Screen-share parties (`!live party on`): the power level a member
    /// needs for the widget's Share screen button (0: any joined member).
    #[serde(default)]
    pub party_power_level: i64,
    /// The bitrate cap (kbit/s) the widget asks a sharer's browser to keep.
    #[serde(default = "default_party_max_kbps")]
    pub party_max_kbps: u32,
    /// Members sharing at once in one room's party (0: only `[limits]`
    /// bound it; each share is watched by every other: N² out).
    #[serde(default)]
    pub party_max_sharers: usize,
}

fn default_notice_update_secs() -> u64 {
    60
}

fn default_notice_thumbnail_secs() -> u64 {
    300
}

fn default_party_max_kbps() -> u32 {
    2500
}

/// `[[parties]]`: a screen-share party without Matrix (src/party).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartyConfig {
    /// The page is `/party/{name}`; shares are streams `<name>-<12 hex>`.
    pub name: String,
    /// What participants type to join (at least 16 characters).
    pub key: String,
    /// The bitrate cap (kbit/s) the page asks a sharer's browser to keep.
    #[serde(default = "default_party_max_kbps")]
    pub max_kbps: u32,
    /// Participants at once (each share is watched by every other: N² out).
    #[serde(default = "default_party_participants")]
    pub max_participants: usize,
    /// Participants sharing at once (0: only `max_participants` and
    /// `[limits]` bound it).
    #[serde(default)]
    pub max_sharers: usize,
}

fn default_party_participants() -> usize {
    16
}

fn default_max_streams_per_user() -> usize {
    3
}

impl MatrixConfig {
    /// The validated `[matrix.permissions]` table.
    pub fn permissions(&self) -> Result<crate::matrix::permissions::Permissions, ConfigError> {
        crate::matrix::permissions::Permissions::parse(self.permissions.as_ref(), &self.server_name)
            .map_err(|(key, reason)| invalid(format!("matrix.permissions.\"{key}\""), reason))
    }
}

fn default_registration() -> String {
    "registration.yaml".into()
}

fn default_alias_prefix() -> String {
    "live_".into()
}

fn default_bot_name() -> String {
    "roomcast".into()
}

fn default_golive_delay_ms() -> u64 {
    5000
}

/// Smallest stream key accepted from the config file: shorter keys can be guessed.
pub const MIN_KEY_LEN: usize = 16;

impl Config {
    /// Viewers are admitted by a signed URL or the admission webhook, which
    /// a player's per-file fetches (LL-HLS segments, recording files) cannot
    /// carry: those surfaces are off.
    pub fn playback_checked_per_request(&self) -> bool {
        self.signed_policy.as_ref().is_some_and(|p| p.playback)
            || self.admission.as_ref().is_some_and(|a| a.playback)
    }

    /// Loads the file (if any), applies `ROOMCAST_…` overrides from `env`, validates.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.display().to_string(),
                source,
            })?,
            None => String::new(),
        };
        Config::parse(&text, path, env)
    }

    /// [`Config::load`] on the file's text: `path` only names the config
    /// directory. No I/O (the fuzz target's entry too).
    pub fn parse(
        text: &str,
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        let from_env = apply_env(&mut table, env)?;
        // Round-trip through text so serde's errors point at the offending key.
        let merged = toml::to_string(&table).map_err(|e| ConfigError::Parse(e.to_string()))?;
        let mut config: Config = toml::from_str(&merged).map_err(|e| {
            // The merged text is not the file: say where else keys came from.
            let mut msg = e.to_string();
            if !from_env.is_empty() {
                msg.push_str(&format!(
                    "\n(with keys from the environment: {})",
                    from_env.join(", ")
                ));
            }
            ConfigError::Parse(msg)
        })?;
        config.dir = path.map(|p| match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        });
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.public_url
            && !is_http_url(url)
        {
            return Err(invalid(
                "public_url",
                format!("'{url}' must start with http:// or https://"),
            ));
        }
        for (i, p) in self.parties.iter().enumerate() {
            if p.name.len() > 40 {
                return Err(invalid(
                    format!("parties[{i}].name"),
                    "at most 40 characters",
                ));
            }
            validate_stream_name(&p.name).map_err(|e| invalid(format!("parties[{i}].name"), e))?;
            if p.key.chars().count() < MIN_KEY_LEN {
                return Err(invalid(
                    format!("parties[{i}].key"),
                    format!("at least {MIN_KEY_LEN} characters"),
                ));
            }
        }
        if self.http.max_body_bytes < 4096 {
            return Err(invalid(
                "http.max_body_bytes",
                "must be at least 4096: browsers' SDP offers are several KB",
            ));
        }
        let c = &self.connections;
        for (key, v) in [
            ("connections.max_per_listener", c.max_per_listener as u64),
            ("connections.max_per_address", c.max_per_address as u64),
            (
                "connections.first_bytes_timeout_secs",
                c.first_bytes_timeout_secs,
            ),
            ("connections.idle_timeout_secs", c.idle_timeout_secs),
            (
                "connections.http_header_timeout_secs",
                c.http_header_timeout_secs,
            ),
            (
                "connections.http_body_timeout_secs",
                c.http_body_timeout_secs,
            ),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if c.max_per_listener > 1_000_000 {
            return Err(invalid(
                "connections.max_per_listener",
                "must be at most 1000000",
            ));
        }
        // SSE keepalives (15 s) and OME WebSocket pings (20 s) must keep a quiet
        // but live connection open.
        if c.idle_timeout_secs < 30 {
            return Err(invalid(
                "connections.idle_timeout_secs",
                "must be at least 30: live connections send keepalives every 20 s",
            ));
        }
        let obs = &self.obs_profile;
        if !matches!(obs.height, 720 | 1080) {
            return Err(invalid("obs_profile.height", "must be 720 or 1080"));
        }
        if !(100..=100_000).contains(&obs.video_kbps) {
            return Err(invalid(
                "obs_profile.video_kbps",
                "must be between 100 and 100000",
            ));
        }
        if !(32..=512).contains(&obs.audio_kbps) {
            return Err(invalid(
                "obs_profile.audio_kbps",
                "must be between 32 and 512",
            ));
        }
        if c.shutdown_grace_secs > 4 {
            return Err(invalid(
                "connections.shutdown_grace_secs",
                "must be at most 4: a stop must finish within 5 s",
            ));
        }
        if self.rtmp.app.is_empty() || self.rtmp.app.contains('/') {
            return Err(invalid("rtmp.app", "must be a non-empty name without '/'"));
        }
        if !(64 * 1024..=0xFF_FFFF).contains(&self.rtmp.max_message_bytes) {
            return Err(invalid(
                "rtmp.max_message_bytes",
                "must be between 65536 and 16777215 (RTMP's 24-bit message length)",
            ));
        }
        if self.webrtc.workers > 256 {
            return Err(invalid(
                "webrtc.workers",
                "must be at most 256 (0 = one per core)",
            ));
        }
        for ip in &self.webrtc.public_ips {
            if ip.is_unspecified() {
                return Err(invalid(
                    "webrtc.public_ips",
                    format!("{ip} cannot be advertised to viewers; give the host's public address"),
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, s) in self.streams.iter().enumerate() {
            if let Err(reason) = validate_stream_name(&s.name) {
                return Err(invalid(format!("streams[{i}].name"), reason));
            }
            if !seen.insert(s.name.as_str()) {
                return Err(invalid(
                    format!("streams[{i}].name"),
                    format!("stream '{}' is declared twice", s.name),
                ));
            }
            if s.key.chars().count() < MIN_KEY_LEN {
                return Err(invalid(
                    format!("streams[{i}].key"),
                    format!(
                        "too short ({} characters); use at least {MIN_KEY_LEN} random characters",
                        s.key.chars().count()
                    ),
                ));
            }
            if s.key
                .chars()
                .any(|c| c.is_whitespace() || c == '/' || c == '?')
            {
                return Err(invalid(
                    format!("streams[{i}].key"),
                    "must not contain whitespace, '/' or '?' (it goes into RTMP URLs)",
                ));
            }
            let most = crate::restream::stored::MAX_DESTINATIONS;
            if s.restream.len() > most {
                return Err(invalid(
                    format!("streams[{i}].restream"),
                    format!(
                        "{} destinations; a stream has at most {most}",
                        s.restream.len()
                    ),
                ));
            }
            let mut labels = std::collections::HashSet::new();
            for (j, d) in s.restream.iter().enumerate() {
                let key = |k: &str| format!("streams[{i}].restream[{j}].{k}");
                if !crate::restream::dest::valid_label(&d.label) || !labels.insert(&d.label) {
                    return Err(invalid(
                        key("label"),
                        "must be unique per stream, 1-32 of a-z, A-Z, 0-9, '-', '_'",
                    ));
                }
                if let Err(e) = crate::restream::dest::Target::parse(&d.url) {
                    return Err(invalid(key("url"), e.to_string()));
                }
                if d.key.is_empty() {
                    return Err(invalid(key("key"), "must not be empty"));
                }
                if let Some(c) = &d.codecs
                    && let Err(e) = crate::restream::codecs::PushCodecs::parse_setting(c)
                {
                    return Err(invalid(key("codecs"), e));
                }
            }
        }
        if self.restream.secret.is_some() && self.restream.secret_bytes().is_none() {
            return Err(invalid(
                "restream.secret",
                "must be 64 hex characters (32 random bytes, e.g. `openssl rand -hex 32`)",
            ));
        }
        if self.restream.queue_bytes < 64 * 1024 {
            return Err(invalid(
                "restream.queue_bytes",
                "must be at least 65536 (a keyframe must fit)",
            ));
        }
        self.recording
            .check()
            .map_err(|(key, reason)| invalid(key, reason))?;
        self.thumbnails
            .validate()
            .map_err(|(key, reason)| invalid(format!("thumbnails.{key}"), reason))?;
        if let Some(m) = &self.matrix {
            http_url("matrix.homeserver_url", &m.homeserver_url)?;
            if m.server_name.is_empty() || m.server_name.contains(['/', ' ', '@', '#']) {
                return Err(invalid(
                    "matrix.server_name",
                    "must be the homeserver's server name, e.g. example.org",
                ));
            }
            if m.alias_prefix.is_empty()
                || !m
                    .alias_prefix
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
            {
                return Err(invalid(
                    "matrix.alias_prefix",
                    "must be non-empty: a-z, 0-9, '_' and '-'",
                ));
            }
            if m.golive_delay_ms > 600_000 {
                return Err(invalid(
                    "matrix.golive_delay_ms",
                    "must be at most 600000 (10 minutes)",
                ));
            }
            for (key, v) in [
                ("matrix.notice_update_secs", m.notice_update_secs),
                ("matrix.notice_thumbnail_secs", m.notice_thumbnail_secs),
            ] {
                if v == 0 {
                    return Err(invalid(key, "must be at least 1 second"));
                }
            }
            m.permissions()?;
            if m.max_streams_per_user > 10_000 {
                return Err(invalid(
                    "matrix.max_streams_per_user",
                    "must be at most 10000 (admins have no limit)",
                ));
            }
        }
        if !(self.limits.max_egress_mbps >= 0.0 && self.limits.max_egress_mbps.is_finite()) {
            return Err(invalid(
                "limits.max_egress_mbps",
                "must be a number of Mbit/s, 0 for no cap",
            ));
        }
        if self.limits.frame_bytes() < 64 << 10 {
            return Err(invalid(
                "limits.max_frame_bytes",
                "must be at least 65536 (64 KiB); keyframes are larger than that",
            ));
        }
        if self.limits.gop_cache_bytes() < self.limits.frame_bytes() {
            return Err(invalid(
                "limits.max_gop_cache_bytes",
                "must be at least limits.max_frame_bytes",
            ));
        }
        let h = &self.hls;
        if !(100..=2000).contains(&h.part_target_ms) {
            return Err(invalid(
                "hls.part_target_ms",
                "must be between 100 and 2000 (LL-HLS parts are 200-500 ms)",
            ));
        }
        if h.segment_target_ms < 2 * h.part_target_ms || h.segment_target_ms > 20_000 {
            return Err(invalid(
                "hls.segment_target_ms",
                "must be at least two parts (2 × hls.part_target_ms) and at most 20000",
            ));
        }
        if !(2..=60).contains(&h.window_segments) {
            return Err(invalid("hls.window_segments", "must be between 2 and 60"));
        }
        if h.idle_timeout_secs == 0 {
            return Err(invalid("hls.idle_timeout_secs", "must be at least 1"));
        }
        let tls_users = [
            ("http.tls_listen", self.http.tls_listen.is_some()),
            ("rtmp.tls_listen", self.rtmp.tls_listen.is_some()),
            ("ome.tls_listen", self.ome.tls_listen.is_some()),
        ];
        for (key, used) in tls_users {
            if used && self.tls.is_none() {
                return Err(invalid(
                    key,
                    "needs a [tls] section with cert and key (PEM files)",
                ));
            }
        }
        if let Some(t) = &self.tls
            && t.reload_interval_secs == 0
        {
            return Err(invalid("tls.reload_interval_secs", "must be at least 1"));
        }
        if let Some(p) = &self.signed_policy {
            if p.secret_key.is_empty() {
                return Err(invalid(
                    "signed_policy.secret_key",
                    "must not be empty (remove [signed_policy] to turn it off)",
                ));
            }
            if p.policy_query_key.is_empty() || p.signature_query_key.is_empty() {
                return Err(invalid(
                    "signed_policy.policy_query_key",
                    "query key names must not be empty",
                ));
            }
        }
        if let Some(a) = &self.admission {
            http_url("admission.control_server_url", &a.control_server_url)?;
            if a.timeout_ms == 0 || a.timeout_ms > 60_000 {
                return Err(invalid(
                    "admission.timeout_ms",
                    "must be between 1 and 60000 milliseconds",
                ));
            }
        }
        for (i, w) in self.webhooks.iter().enumerate() {
            http_url(format!("webhooks[{i}].url"), &w.url)?;
            if let Some(e) = w
                .events
                .iter()
                .find(|e| !matches!(e.as_str(), "started" | "ended"))
            {
                return Err(invalid(
                    format!("webhooks[{i}].events"),
                    format!("unknown event '{e}' (known: started, ended)"),
                ));
            }
            if w.max_attempts == 0 {
                return Err(invalid(
                    format!("webhooks[{i}].max_attempts"),
                    "must be at least 1",
                ));
            }
        }
        let db = &self.storage.database_url;
        if crate::store::Backend::of(db).is_none() {
            return Err(invalid(
                "storage.database_url",
                format!(
                    "'{}' is not supported; use sqlite://PATH or postgres://USER:PASSWORD@HOST/DB",
                    crate::store::redact_url(db)
                ),
            ));
        }
        if let Some(c) = &self.cluster {
            c.validate(db)?;
        }
        Ok(())
    }

    /// The base URL for links, without a trailing slash. `http_bound` is the
    /// address the HTTP listener got (its port matters when configured as 0).
    pub fn public_base(&self, http_bound: SocketAddr) -> String {
        match &self.public_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => {
                let host = if http_bound.ip().is_unspecified() {
                    "127.0.0.1".to_string()
                } else {
                    http_bound.ip().to_string()
                };
                format!("http://{host}:{}", http_bound.port())
            }
        }
    }
}

/// Stream names appear in URLs, room aliases and log lines.
pub fn validate_stream_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!("'{name}' must be 1 to 64 characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        return Err(format!("'{name}' may only contain a-z, 0-9, '-' and '_'"));
    }
    Ok(())
}

/// `ROOMCAST_` variables that are not config keys: the log filter, the
/// widget build's (`build.rs`) and the test and fuzz scripts'. A developer's
/// shell has them exported; `serve` must not read them as unknown keys.
fn is_tool_variable(rest: &str) -> bool {
    rest == "LOG" || rest == "WIDGET_DIST" || rest.starts_with("TEST_") || rest.starts_with("FUZZ_")
}

/// `ROOMCAST_HTTP__LISTEN=…` sets `http.listen`; `ROOMCAST_PUBLIC_URL` sets
/// `public_url`. Values are read as TOML (numbers, booleans, arrays) and fall back
/// to plain strings. Returns the variables applied, for error messages.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<String>, ConfigError> {
    let mut applied = Vec::new();
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix("ROOMCAST_") else {
            continue;
        };
        if is_tool_variable(rest) {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
        if path.iter().any(|p| p.is_empty()) || path.len() > 2 {
            return Err(invalid(
                name.clone(),
                "environment overrides look like ROOMCAST_<SECTION>__<KEY>",
            ));
        }
        let value = parse_env_value(&raw);
        let mut target = &mut *table;
        for section in &path[..path.len() - 1] {
            let entry = target
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            target = match entry {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(invalid(
                        name.clone(),
                        format!("`{section}` is not a section"),
                    ));
                }
            };
        }
        target.insert(path[path.len() - 1].clone(), value);
        applied.push(name);
    }
    Ok(applied)
}

fn parse_env_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

/// Loads `text` as a config file, with `env` as the environment.
#[cfg(test)]
fn load_for_test(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let dir = std::env::temp_dir().join(format!("roomcast-cfg-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("c.toml");
    std::fs::write(&p, text).unwrap();
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    let r = Config::load(Some(&p), env);
    std::fs::remove_dir_all(&dir).ok();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        load_for_test(text, env)
    }

    #[test]
    fn connections_defaults_and_bad_values() {
        let c = load("", &[]).unwrap().connections;
        assert_eq!((c.max_per_listener, c.max_per_address), (4096, 64));
        assert_eq!((c.first_bytes_timeout_secs, c.idle_timeout_secs), (10, 60));
        assert_eq!((c.http_header_timeout_secs, c.shutdown_grace_secs), (10, 3));
        let c = load("", &[("ROOMCAST_CONNECTIONS__MAX_PER_ADDRESS", "8")]).unwrap();
        assert_eq!(c.connections.max_per_address, 8);
        for (toml, key) in [
            (
                "[connections]\nmax_per_address = 0",
                "connections.max_per_address",
            ),
            (
                "[connections]\nidle_timeout_secs = 20",
                "connections.idle_timeout_secs",
            ),
            (
                "[connections]\nshutdown_grace_secs = 10",
                "connections.shutdown_grace_secs",
            ),
            (
                "[connections]\nfirst_bytes_timeout_secs = 0",
                "connections.first_bytes_timeout_secs",
            ),
        ] {
            let e = load(toml, &[]).unwrap_err().to_string();
            assert!(e.contains(key), "{toml}: {e}");
        }
    }

    #[test]
    fn defaults_without_file() {
        let c = Config::load(None, Vec::new()).unwrap();
        assert_eq!(c.http.listen.port(), 8080);
        assert_eq!(c.rtmp.listen.port(), 1935);
        assert!(c.matrix.is_none());
    }

    #[test]
    fn env_overrides_file() {
        let c = load(
            "[http]\nlisten = \"127.0.0.1:1\"\n",
            &[
                ("ROOMCAST_HTTP__LISTEN", "127.0.0.1:9000"),
                ("ROOMCAST_WEBRTC__TCP_FORCE", "true"),
                ("ROOMCAST_PUBLIC_URL", "https://live.example.org"),
                ("UNRELATED", "x"),
                ("ROOMCAST_LOG", "debug"),
            ],
        )
        .unwrap();
        assert_eq!(c.http.listen.port(), 9000);
        assert!(c.webrtc.tcp_force);
        assert_eq!(c.public_url.as_deref(), Some("https://live.example.org"));
    }

    /// The build's and the test scripts' variables are not keys; a variable
    /// that names no key is named in the error.
    #[test]
    fn tool_variables_are_not_keys_and_a_stray_variable_is_named() {
        let c = load(
            "",
            &[
                ("ROOMCAST_WIDGET_DIST", "/tmp/widget"),
                ("ROOMCAST_TEST_LANES", "2"),
                ("ROOMCAST_FUZZ_JOBS", "2"),
            ],
        );
        assert!(c.is_ok(), "{:?}", c.err());
        // An array section is replaced whole (README → Configuration).
        let c = load(
            "",
            &[(
                "ROOMCAST_STREAMS",
                "[{name = \"a\", key = \"0123456789abcdef\"}]",
            )],
        )
        .unwrap();
        assert_eq!(c.streams.len(), 1);
        let e = load("", &[("ROOMCAST_HTTP__LISEN", "127.0.0.1:1")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("lisen") && e.contains("ROOMCAST_HTTP__LISEN"),
            "{e}"
        );
    }

    /// Config-file streams get the same cap on restream destinations as the
    /// bot's and the API's.
    #[test]
    fn a_stream_has_at_most_eight_restream_destinations() {
        let stream = |n: usize| {
            let mut t = String::from("[[streams]]\nname = \"a\"\nkey = \"0123456789abcdef\"\n");
            for i in 0..n {
                t.push_str(&format!(
                    "[[streams.restream]]\nlabel = \"d{i}\"\nurl = \"rtmp://example.org/app\"\nkey = \"k\"\n"
                ));
            }
            t
        };
        assert!(load(&stream(8), &[]).is_ok());
        let e = load(&stream(9), &[]).unwrap_err().to_string();
        assert!(
            e.contains("streams[0].restream") && e.contains("at most 8"),
            "{e}"
        );
    }

    /// A party key is counted in characters, as a stream key is.
    #[test]
    fn a_party_key_is_counted_in_characters() {
        let party = |key: &str| format!("[[parties]]\nname = \"p\"\nkey = \"{key}\"\n");
        // 8 characters, 16 bytes.
        let e = load(&party("éééééééé"), &[]).unwrap_err().to_string();
        assert!(e.contains("parties[0].key"), "{e}");
        assert!(load(&party("0123456789abcdef"), &[]).is_ok());
    }

    #[test]
    fn errors_name_the_key() {
        let e = load("[http]\nlisten = \"nope\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen"), "{e}");
        let e = load("[http]\nlisen = \"127.0.0.1:1\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("lisen"), "{e}");
        let e = load("[[streams]]\nname = \"a\"\nkey = \"short\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("streams[0].key") && e.contains("too short"),
            "{e}"
        );
        let e = load(
            "[[streams]]\nname = \"A b\"\nkey = \"0123456789abcdef\"\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("streams[0].name"), "{e}");
        let e = load("", &[("ROOMCAST_WEBRTC__WORKERS", "1000")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("webrtc.workers"), "{e}");
        let e = load("[http]\ntrusted_proxies = [\"10.0.0.0/40\"]\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("trusted_proxies") && e.contains("prefix length"),
            "{e}"
        );
        let e = load("[storage]\ndatabase_url = \"mysql://u:pw@h/db\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("storage.database_url") && e.contains("u:***@h") && !e.contains("pw"),
            "{e}"
        );
    }

    #[test]
    fn trusted_proxies_from_the_environment() {
        let c = load(
            "",
            &[(
                "ROOMCAST_HTTP__TRUSTED_PROXIES",
                "[\"10.0.0.0/8\", \"fd00::/8\"]",
            )],
        )
        .unwrap();
        assert_eq!(c.http.trusted_proxies.len(), 2);
        assert!(c.http.trusted_proxies[0].contains("10.9.8.7".parse().unwrap()));
        let d = Config::load(None, Vec::new()).unwrap();
        assert!(d.http.trusted_proxies[0].contains("127.0.0.1".parse().unwrap()));
    }
}

#[cfg(test)]
mod issue6_tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        load_for_test(text, &[])
    }

    #[test]
    fn tls_ome_policy_admission_webhooks() {
        let c = load(
            "[http]\ntls_listen = \"0.0.0.0:8443\"\n[rtmp]\ntls_listen = \"0.0.0.0:1936\"\n\
             [ome]\nlisten = \"0.0.0.0:3333\"\ntls_listen = \"0.0.0.0:3334\"\n\
             [tls]\ncert = \"/c.crt\"\nkey = \"/c.key\"\n\
             [signed_policy]\nsecret_key = \"s\"\nplayback = true\n\
             [admission]\ncontrol_server_url = \"http://127.0.0.1:9000/a\"\n\
             [[webhooks]]\nurl = \"https://discord.example/x\"\nformat = \"discord\"\n",
        )
        .unwrap();
        assert_eq!(c.tls.as_ref().unwrap().reload_interval_secs, 10);
        assert!(c.ome.enabled);
        let p = c.signed_policy.unwrap();
        assert!(p.publish && p.playback);
        assert_eq!(p.policy_query_key, "policy");
        let a = c.admission.unwrap();
        assert!(a.publish && !a.playback);
        assert_eq!(a.timeout_ms, 3000);
        assert_eq!(c.webhooks[0].format, WebhookFormat::Discord);
        assert_eq!(c.webhooks[0].events, vec!["started", "ended"]);

        let e = load("[rtmp]\ntls_listen = \"0.0.0.0:1936\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("rtmp.tls_listen") && e.contains("[tls]"), "{e}");
        let e = load("[signed_policy]\nsecret_key = \"\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("signed_policy.secret_key"), "{e}");
        let e = load("[admission]\ncontrol_server_url = \"ftp://x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("admission.control_server_url"), "{e}");
        let e = load("[[webhooks]]\nurl = \"http://x\"\nevents = [\"paused\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("webhooks[0].events") && e.contains("paused"),
            "{e}"
        );
        let e = load("[[webhooks]]\nurl = \"http://x\"\nformat = \"slack\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("slack"), "{e}");
    }
}

#[cfg(test)]
mod example_tests {
    /// The documented example must load as it is, with its defaults.
    #[test]
    fn example_config_loads() {
        let p =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/roomcast.example.toml");
        let c = super::Config::load(Some(&p), Vec::new()).unwrap();
        let d = super::Config::default();
        assert_eq!(c.http.listen, d.http.listen);
        assert_eq!(c.webrtc.udp, d.webrtc.udp);
        assert_eq!(c.rtmp.app, d.rtmp.app);
        assert_eq!(c.hls.part_target_ms, d.hls.part_target_ms);
        assert_eq!(c.hls.segment_target_ms, d.hls.segment_target_ms);
        assert_eq!(c.hls.window_segments, d.hls.window_segments);
        assert_eq!(c.hls.idle_timeout_secs, d.hls.idle_timeout_secs);
    }

    #[test]
    fn hls_section_and_env() {
        let c = super::Config::load(
            None,
            vec![(
                "ROOMCAST_HLS__PART_TARGET_MS".to_string(),
                "200".to_string(),
            )],
        )
        .unwrap();
        assert_eq!(c.hls.part_target_ms, 200);
        assert!(c.hls.enabled);
        let e = super::Config::load(
            None,
            vec![(
                "ROOMCAST_HLS__SEGMENT_TARGET_MS".to_string(),
                "300".to_string(),
            )],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("hls.segment_target_ms"), "{e}");
    }
}

#[cfg(test)]
mod matrix_tests {
    use super::*;

    fn load_text(text: &str) -> Result<Config, ConfigError> {
        load_for_test(text, &[])
    }

    #[test]
    fn matrix_permissions_and_limits() {
        use crate::matrix::permissions::Level;
        let base =
            "[matrix]\nhomeserver_url = \"http://127.0.0.1:8008\"\nserver_name = \"example.org\"\n";
        let load = |extra: &str| load_text(&format!("{base}{extra}"));
        // Defaults: own server's users may create streams, 3 each, no rooms on demand.
        let m = load("").unwrap().matrix.unwrap();
        assert_eq!(m.max_streams_per_user, 3);
        assert!(!m.rooms_on_demand);
        let p = m.permissions().unwrap();
        assert_eq!(p.level_of("@a:example.org"), Level::User);
        assert_eq!(p.level_of("@a:elsewhere.net"), Level::None);

        let m = load(
            "rooms_on_demand = true\nmax_streams_per_user = 1\n\
             [matrix.permissions]\n\"*\" = \"user\"\n\"evil.example\" = \"none\"\n\"@boss:example.org\" = \"admin\"\n",
        )
        .unwrap()
        .matrix
        .unwrap();
        assert!(m.rooms_on_demand);
        assert_eq!(m.max_streams_per_user, 1);
        let p = m.permissions().unwrap();
        assert_eq!(p.level_of("@boss:example.org"), Level::Admin);
        assert_eq!(p.level_of("@x:evil.example"), Level::None);
        assert_eq!(p.level_of("@x:elsewhere.net"), Level::User);

        let e = load("[matrix.permissions]\n\"example.org\" = \"superuser\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("matrix.permissions.\"example.org\"")
                && e.contains("'superuser' is not a permission")
                && e.contains("\"none\", \"user\" or \"admin\""),
            "{e}"
        );
        let e = load("[matrix.permissions]\n\"@alice\" = \"user\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"@alice\"") && e.contains("@alice:example.org"),
            "{e}"
        );
        let e = load("[matrix.permissions]\n\"#room:example.org\" = \"user\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("server name"), "{e}");
        let e = load("[matrix.permissions]\n\"*\" = 3\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"*\" = 3") && e.contains("expected a string"),
            "{e}"
        );
        let e = load("max_streams_per_user = 100000\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("matrix.max_streams_per_user"), "{e}");
    }
}

/// Shortest `cluster.secret` accepted: it signs node-to-node requests.
pub const MIN_CLUSTER_SECRET_LEN: usize = 32;

/// `[cluster]`: this node's place in a cluster of roomcast nodes sharing one
/// PostgreSQL database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's name, unique in the cluster (a-z, 0-9, '-', '_').
    pub node_id: String,
    /// Where the other nodes reach this node's HTTP listener
    /// (e.g. `http://10.0.0.5:8080`): edges pull streams from it over WHEP.
    pub internal_url: String,
    /// Shared by every node: signs node-to-node requests (HMAC-SHA256).
    pub secret: String,
    /// Pull streams from this node (its `node_id`) instead of their origin:
    /// a two-level tree (see `cluster::tree`). The origin while it is dead.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Where viewers reach this node directly (a WHEP redirect's target);
    /// absent: `internal_url`.
    #[serde(default)]
    pub public_url: Option<String>,
    /// A WHEP POST answers 307 to a node with more headroom (RFC 9725).
    #[serde(default)]
    pub redirect_viewers: bool,
    /// WebRTC viewers over the whole cluster (0: no cap; per node:
    /// `[limits]`).
    #[serde(default)]
    pub max_viewers: usize,
    /// WebRTC viewers of one stream over the whole cluster (0: no cap).
    #[serde(default)]
    pub max_viewers_per_stream: usize,
}

impl ClusterConfig {
    fn validate(&self, database_url: &str) -> Result<(), ConfigError> {
        if crate::store::Backend::of(database_url) != Some(crate::store::Backend::Postgres) {
            return Err(invalid(
                "cluster",
                format!(
                    "cluster mode needs PostgreSQL, and storage.database_url is '{}': every node must use the same postgres://USER:PASSWORD@HOST/DB (SQLite is one process only)",
                    crate::store::redact_url(database_url)
                ),
            ));
        }
        if let Err(reason) = validate_stream_name(&self.node_id) {
            return Err(invalid("cluster.node_id", reason));
        }
        http_url("cluster.internal_url", &self.internal_url)?;
        if let Some(up) = &self.upstream {
            if let Err(reason) = validate_stream_name(up) {
                return Err(invalid("cluster.upstream", reason));
            }
            if *up == self.node_id {
                return Err(invalid(
                    "cluster.upstream",
                    "names this node itself; name another node, or leave it out",
                ));
            }
        }
        if let Some(u) = &self.public_url {
            http_url("cluster.public_url", u)?;
        }
        if self.secret.chars().count() < MIN_CLUSTER_SECRET_LEN {
            return Err(invalid(
                "cluster.secret",
                format!(
                    "too short; use at least {MIN_CLUSTER_SECRET_LEN} random characters, the same on every node"
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod restream_tests {
    use super::*;

    const STREAM: &str = "[[streams]]\nname = \"a\"\nkey = \"0123456789abcdef0123\"\n";

    fn parse(extra: &str) -> Result<Config, String> {
        Config::parse(&format!("{STREAM}{extra}"), None, Vec::new()).map_err(|e| e.to_string())
    }

    fn destinations(c: &Config) -> Vec<crate::restream::dest::Destination> {
        c.streams[0]
            .restream
            .iter()
            .map(RestreamDestinationConfig::destination)
            .collect()
    }

    #[test]
    fn config_destinations_are_validated_without_echoing_keys() {
        let c = parse(
            "[[streams.restream]]\nlabel = \"tw\"\nurl = \"rtmps://live.twitch.tv/app\"\nkey = \"live_secret_1\"\n",
        )
        .unwrap();
        let d = destinations(&c);
        assert_eq!((d[0].label.as_str(), d[0].enabled), ("tw", true));
        for (extra, key) in [
            (
                "label = \"a b\"\nurl = \"rtmp://x/app\"\nkey = \"k\"",
                "label",
            ),
            ("label = \"x\"\nurl = \"http://x/app\"\nkey = \"k\"", "url"),
            ("label = \"x\"\nurl = \"rtmp://x/app\"\nkey = \"\"", "key"),
        ] {
            let e = parse(&format!("[[streams.restream]]\n{extra}\n")).unwrap_err();
            assert!(e.contains(&format!("streams[0].restream[0].{key}")), "{e}");
        }
        let dup =
            "[[streams.restream]]\nlabel = \"x\"\nurl = \"rtmp://x/app\"\nkey = \"secret-one\"\n";
        let e = parse(&format!("{dup}{dup}")).unwrap_err();
        assert!(
            e.contains("restream[1].label") && !e.contains("secret-one"),
            "{e}"
        );
        let c = parse(
            "[[streams.restream]]\nlabel = \"yt\"\nurl = \"rtmp://x/app\"\nkey = \"k\"\ncodecs = [\"h264\", \"av1\"]\n",
        )
        .unwrap();
        let d = destinations(&c);
        assert!(d[0].codecs.as_ref().unwrap().accepts("AV1"));
        let e = parse(
            "[[streams.restream]]\nlabel = \"yt\"\nurl = \"rtmp://x/app\"\nkey = \"k\"\ncodecs = [\"hevc\"]\n",
        )
        .unwrap_err();
        assert!(
            e.contains("restream[0].codecs") && e.contains("HEVC never reaches"),
            "{e}"
        );
        let e = parse("[restream]\nqueue_bytes = 10\n").unwrap_err();
        assert!(e.contains("restream.queue_bytes"), "{e}");
        let e = parse("[restream]\nsecret = \"not-hex-secret\"\n").unwrap_err();
        assert!(
            e.contains("restream.secret") && !e.contains("not-hex-secret"),
            "{e}"
        );
        let c = parse(&format!("[restream]\nsecret = \"{}\"\n", "ab".repeat(32))).unwrap();
        assert_eq!(c.restream.secret_bytes(), Some([0xab; 32]));
    }
}

#[cfg(test)]
mod thumbnail_tests {
    use super::*;

    #[test]
    fn the_thumbnails_config_is_checked_and_names_the_key() {
        let c = Config::load(None, Vec::new()).unwrap();
        assert!(c.thumbnails.enabled);
        assert_eq!(c.thumbnails.interval_secs, 10);
        let env = |k: &str, v: &str| vec![(format!("ROOMCAST_THUMBNAILS__{k}"), v.to_string())];
        let e = Config::load(None, env("WIDTH", "8"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("thumbnails.width"), "{e}");
        let e = Config::load(None, env("INTERVAL_SECS", "0"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("thumbnails.interval_secs"), "{e}");
        assert_eq!(c.thumbnails.wanted_for_secs, 60);
        let e = Config::load(None, env("WANTED_FOR_SECS", "100000"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("thumbnails.wanted_for_secs"), "{e}");
        let c = Config::load(None, env("WANTED_FOR_SECS", "0")).unwrap();
        assert_eq!(
            c.thumbnails.wanted_for_secs, 0,
            "0 is allowed: always renewed"
        );
        let c = Config::load(None, env("ENABLED", "false")).unwrap();
        assert!(!c.thumbnails.enabled);
    }
}
