//! A restream destination: where to push (an `rtmp://` or `rtmps://` URL of
//! the platform's ingest, e.g. `rtmps://live.twitch.tv/app`) and the key.
//!
//! The key is a secret: it is shown masked, never logged, and only the push
//! client sees it in clear.

use std::fmt;

/// A stream key, printed masked (`Debug` and `Display` alike) so that no log
/// line or error message can carry it by mistake.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(String);

impl SecretKey {
    pub fn new(key: impl Into<String>) -> Self {
        SecretKey(key.into())
    }

    /// The key in clear: for the RTMP `publish` command and the encrypted store only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// What users see: the length and the last two characters at most
    /// (`••••••••ab`), nothing for short keys.
    pub fn masked(&self) -> String {
        let n = self.0.chars().count();
        if n < 12 {
            return "••••".to_string();
        }
        let tail: String = self.0.chars().skip(n - 2).collect();
        format!("••••••••{tail}")
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl fmt::Display for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// Where a push connects, parsed from the destination URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// The RTMP application (the URL path, e.g. `app` or `live2/x`).
    pub app: String,
    /// The URL as sent in `connect` (`tcUrl`): without the key.
    pub tc_url: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("the URL must start with rtmp:// or rtmps://")]
    Scheme,
    #[error("the URL has no host")]
    NoHost,
    #[error("the port is not a number from 1 to 65535")]
    BadPort,
    #[error("the URL has no application path (rtmp://server/app)")]
    NoApp,
    #[error("the URL must not carry credentials or a query")]
    Extra,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, TargetError> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("rtmps://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("rtmp://") {
            (false, r)
        } else {
            return Err(TargetError::Scheme);
        };
        if rest.contains(['@', '?', '#']) || rest.chars().any(char::is_whitespace) {
            return Err(TargetError::Extra);
        }
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let app = path.trim_end_matches('/');
        if app.is_empty() {
            return Err(TargetError::NoApp);
        }
        let default_port = if tls { 443 } else { 1935 };
        let (host, port) = match authority.rsplit_once(':') {
            // An IPv6 literal without a port: [::1]
            Some((h, p)) if !p.ends_with(']') => {
                (h, p.parse::<u16>().map_err(|_| TargetError::BadPort)?)
            }
            _ => (authority, default_port),
        };
        if port == 0 {
            return Err(TargetError::BadPort);
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(TargetError::NoHost);
        }
        Ok(Target {
            tls,
            host: host.to_string(),
            port,
            app: app.to_string(),
            tc_url: format!(
                "{}://{}/{}",
                if tls { "rtmps" } else { "rtmp" },
                authority,
                app
            ),
        })
    }
}

/// One destination of one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// Short name the owner chose (`twitch`, `youtube`): unique per stream.
    pub label: String,
    pub url: String,
    pub key: SecretKey,
    pub enabled: bool,
    /// The `codecs` setting of a config-file destination; `None`: the
    /// service's defaults plus what its connect reply advertises.
    pub codecs: Option<super::codecs::PushCodecs>,
}

/// Labels are short words so commands and metrics stay readable.
pub fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 32
        && label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rtmp_and_rtmps_urls() {
        let t = Target::parse("rtmp://127.0.0.1:19350/live").unwrap();
        assert_eq!(
            (t.tls, t.host.as_str(), t.port, t.app.as_str()),
            (false, "127.0.0.1", 19350, "live")
        );
        assert_eq!(t.tc_url, "rtmp://127.0.0.1:19350/live");
        let t = Target::parse("rtmps://live.twitch.tv/app/").unwrap();
        assert_eq!((t.tls, t.port, t.app.as_str()), (true, 443, "app"));
        let t = Target::parse("rtmp://[::1]/a/b").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.app.as_str()),
            ("::1", 1935, "a/b")
        );
        let t = Target::parse("rtmp://[::1]:99/a").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 99));
        assert_eq!(Target::parse("http://x/a"), Err(TargetError::Scheme));
        assert_eq!(Target::parse("rtmp://x"), Err(TargetError::NoApp));
        assert_eq!(Target::parse("rtmp://x:0/a"), Err(TargetError::BadPort));
        assert_eq!(Target::parse("rtmp://u:p@x/a"), Err(TargetError::Extra));
        assert_eq!(Target::parse("rtmp:///a"), Err(TargetError::NoHost));
    }

    #[test]
    fn keys_never_print_in_clear() {
        let k = SecretKey::new("live_123456789_abcdefXY");
        assert_eq!(k.masked(), "••••••••XY");
        assert!(!format!("{k:?} {k}").contains("abcdef"));
        assert_eq!(SecretKey::new("short").masked(), "••••");
        assert!(valid_label("twitch-2") && !valid_label("a b") && !valid_label(""));
    }
}
