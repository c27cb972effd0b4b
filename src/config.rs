//! Typed configuration: TOML file, then `ROOMCAST_<SECTION>__<KEY>` environment
//! overrides, then validation that names the bad key and says why.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use serde::Deserialize;

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
    /// The directory of the config file (`None` without one); the pages read
    /// producers' multi-view layouts from its `layouts/` folder.
    #[serde(skip)]
    pub dir: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Largest request body accepted (SDP offers, JSON), in bytes.
    pub max_body_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "0.0.0.0:8080".parse().expect("valid literal"),
            max_body_bytes: 64 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RtmpConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
    /// The RTMP application name in `rtmp://host/APP`; the stream key follows it.
    pub app: String,
}

impl Default for RtmpConfig {
    fn default() -> Self {
        RtmpConfig {
            enabled: true,
            listen: "0.0.0.0:1935".parse().expect("valid literal"),
            app: "live".into(),
        }
    }
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
    pub workers: usize,
}

impl Default for WebrtcConfig {
    fn default() -> Self {
        WebrtcConfig {
            udp: "0.0.0.0:10000".parse().expect("valid literal"),
            tcp: "0.0.0.0:10000".parse().expect("valid literal"),
            public_ips: Vec::new(),
            tcp_force: false,
            workers: 0,
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
}

/// Egress caps: a viewer over one gets 503 with Retry-After. 0 = no cap.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_viewers_per_stream: usize,
    pub max_viewers: usize,
    /// Total egress to viewers in Mbit/s, estimated from each stream's bitrate.
    pub max_egress_mbps: f64,
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
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        apply_env(&mut table, env)?;
        // Round-trip through text so serde's errors point at the offending key.
        let merged = toml::to_string(&table).map_err(|e| ConfigError::Parse(e.to_string()))?;
        let mut config: Config =
            toml::from_str(&merged).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.dir = path.map(|p| match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        });
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(invalid(
                "public_url",
                format!("'{url}' must start with http:// or https://"),
            ));
        }
        if self.http.max_body_bytes < 4096 {
            return Err(invalid(
                "http.max_body_bytes",
                "must be at least 4096: browsers' SDP offers are several KB",
            ));
        }
        if self.rtmp.app.is_empty() || self.rtmp.app.contains('/') {
            return Err(invalid("rtmp.app", "must be a non-empty name without '/'"));
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
        }
        if let Some(m) = &self.matrix {
            if !(m.homeserver_url.starts_with("http://")
                || m.homeserver_url.starts_with("https://"))
            {
                return Err(invalid(
                    "matrix.homeserver_url",
                    "must start with http:// or https://",
                ));
            }
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
        }
        if !(self.limits.max_egress_mbps >= 0.0 && self.limits.max_egress_mbps.is_finite()) {
            return Err(invalid(
                "limits.max_egress_mbps",
                "must be a number of Mbit/s, 0 for no cap",
            ));
        }
        let db = &self.storage.database_url;
        if !db.starts_with("sqlite:") {
            return Err(invalid(
                "storage.database_url",
                format!("'{db}' is not supported; use sqlite://PATH"),
            ));
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

/// `ROOMCAST_HTTP__LISTEN=…` sets `http.listen`; `ROOMCAST_PUBLIC_URL` sets
/// `public_url`. Values are read as TOML (numbers, booleans, arrays) and fall back
/// to plain strings.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix("ROOMCAST_") else {
            continue;
        };
        // ROOMCAST_LOG is the log filter, not a config key.
        if rest == "LOG" {
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
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!("roomcast-cfg-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.toml");
        std::fs::write(&p, text).unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let r = Config::load(Some(&p), env);
        std::fs::remove_dir_all(&dir).ok();
        r
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
    }
}
