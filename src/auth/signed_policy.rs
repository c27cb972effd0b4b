//! OvenMediaEngine's SignedPolicy, sans I/O: a URL carries a Base64URL policy
//! (`url_expire`, `url_activate`, `stream_expire`, `allow_ip`, `real_ip`; epoch
//! milliseconds) and `signature = Base64URL(HMAC-SHA1(secret, URL without the
//! signature parameter))`, both without padding. URLs minted for OME verify here
//! unchanged, and `roomcast sign` mints URLs OME would accept.

use std::net::IpAddr;

use super::Cidr;

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::{Deserialize, Serialize};

/// Base64URL without padding, as OME writes it; decoding accepts padding too.
const B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Below this a "millisecond" time is really seconds (it would be before 1973).
const LOOKS_LIKE_SECONDS: u64 = 100_000_000_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("the URL has no `{0}` query parameter (a signed URL carries a policy and a signature)")]
    NoPolicy(String),
    #[error("the URL has no `{0}` query parameter (a signed URL carries a policy and a signature)")]
    NoSignature(String),
    #[error(
        "the signature does not match the URL (it was changed after signing, or signed for another host, port or path, or with another secret)"
    )]
    BadSignature,
    #[error("the policy is not valid: {0}")]
    BadPolicy(String),
    #[error("the signed URL expired {0} ago")]
    Expired(Ago),
    #[error("the signed URL is not active yet (it activates in {0})")]
    NotYetActive(Ago),
    #[error("the signed URL's stream_expire passed {0} ago")]
    StreamExpired(Ago),
    #[error("the signed URL does not allow address {ip} (allow_ip {allowed})")]
    IpNotAllowed { ip: IpAddr, allowed: String },
    #[error(
        "the signed URL's real_ip {allowed} needs the client's address from X-Real-IP or X-Forwarded-For, and {got}"
    )]
    RealIpNotAllowed { allowed: String, got: String },
}

/// A duration for messages: "3 s", "2 min", "5 h".
#[derive(Debug, PartialEq, Eq)]
pub struct Ago(pub u64);

impl std::fmt::Display for Ago {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.0 / 1000;
        match s {
            0 => write!(f, "{} ms", self.0),
            1..120 => write!(f, "{s} s"),
            120..7200 => write!(f, "{} min", s / 60),
            _ => write!(f, "{} h", s / 3600),
        }
    }
}

/// The policy JSON. Unknown fields are ignored, as OME does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub url_expire: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url_activate: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_expire: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub real_ip: Option<String>,
}

/// What a verified URL grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The session must end at this time (epoch ms).
    pub stream_expire_ms: Option<u64>,
}

/// The query parameter names (OME's `<PolicyQueryKeyName>`, `<SignatureQueryKeyName>`).
#[derive(Debug, Clone)]
pub struct QueryNames {
    pub policy: String,
    pub signature: String,
}

impl Default for QueryNames {
    fn default() -> Self {
        QueryNames {
            policy: "policy".into(),
            signature: "signature".into(),
        }
    }
}

/// The client as the policy checks it.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    /// The peer address of the connection.
    pub ip: IpAddr,
    /// X-Real-IP, else the first X-Forwarded-For, when the request has them.
    pub real_ip: Option<IpAddr>,
}

/// Whether `query` carries a policy parameter at all (then it must verify).
pub fn has_policy(query: &str, names: &QueryNames) -> bool {
    param(query, &names.policy).is_some()
}

fn param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

/// The URL string OME signs: `base` (scheme://host:port/path) and the query
/// without the signature parameter, in the order received.
fn signed_string(base: &str, query: &str, names: &QueryNames) -> String {
    let rest: Vec<&str> = query
        .split('&')
        .filter(|kv| !kv.is_empty() && kv.split('=').next() != Some(names.signature.as_str()))
        .collect();
    if rest.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", rest.join("&"))
    }
}

/// Base64URL(HMAC-SHA1(secret, url)), no padding.
pub fn signature(secret: &[u8], url: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    B64.encode(hmac::sign(&key, url.as_bytes()).as_ref())
}

/// Checks a request's URL. `bases` are the forms `scheme://host:port/path` the
/// client may have been given (a proxy may terminate TLS, a Host header may lack
/// the port); the signature must match one of them. `now_ms` is epoch ms.
pub fn verify(
    secret: &[u8],
    bases: &[String],
    query: &str,
    names: &QueryNames,
    client: Client,
    now_ms: u64,
) -> Result<Grant, PolicyError> {
    let policy_b64 =
        param(query, &names.policy).ok_or_else(|| PolicyError::NoPolicy(names.policy.clone()))?;
    let sig_b64 = param(query, &names.signature)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| PolicyError::NoSignature(names.signature.clone()))?;
    let sig = B64
        .decode(sig_b64.trim_end_matches("%3D").trim_end_matches("%3d"))
        .map_err(|_| PolicyError::BadSignature)?;
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    // hmac::verify compares in constant time.
    let matched = bases
        .iter()
        .any(|base| hmac::verify(&key, signed_string(base, query, names).as_bytes(), &sig).is_ok());
    if !matched {
        return Err(PolicyError::BadSignature);
    }
    let json = B64
        .decode(policy_b64.trim_end_matches("%3D").trim_end_matches("%3d"))
        .map_err(|_| PolicyError::BadPolicy("the policy is not Base64URL".into()))?;
    let policy: Policy = serde_json::from_slice(&json).map_err(|e| {
        PolicyError::BadPolicy(format!("the policy is not the expected JSON ({e})"))
    })?;
    check(&policy, client, now_ms)
}

fn check(policy: &Policy, client: Client, now_ms: u64) -> Result<Grant, PolicyError> {
    let Some(expire) = policy.url_expire else {
        return Err(PolicyError::BadPolicy(
            "url_expire (epoch milliseconds) is required".into(),
        ));
    };
    for (name, v) in [
        ("url_expire", Some(expire)),
        ("url_activate", policy.url_activate),
        ("stream_expire", policy.stream_expire),
    ] {
        if let Some(v) = v
            && v < LOOKS_LIKE_SECONDS
        {
            return Err(PolicyError::BadPolicy(format!(
                "{name} {v} looks like seconds; SignedPolicy times are epoch milliseconds"
            )));
        }
    }
    if expire < now_ms {
        return Err(PolicyError::Expired(Ago(now_ms - expire)));
    }
    if let Some(a) = policy.url_activate
        && a > now_ms
    {
        return Err(PolicyError::NotYetActive(Ago(a - now_ms)));
    }
    if let Some(s) = policy.stream_expire
        && s < now_ms
    {
        return Err(PolicyError::StreamExpired(Ago(now_ms - s)));
    }
    if let Some(allow) = &policy.allow_ip {
        let cidr = Cidr::parse(allow)
            .ok_or_else(|| PolicyError::BadPolicy(format!("allow_ip '{allow}' is not a CIDR")))?;
        if !cidr.contains(client.ip) {
            return Err(PolicyError::IpNotAllowed {
                ip: client.ip,
                allowed: allow.clone(),
            });
        }
    }
    if let Some(real) = &policy.real_ip {
        let cidr = Cidr::parse(real)
            .ok_or_else(|| PolicyError::BadPolicy(format!("real_ip '{real}' is not a CIDR")))?;
        match client.real_ip {
            Some(ip) if cidr.contains(ip) => {}
            Some(ip) => {
                return Err(PolicyError::RealIpNotAllowed {
                    allowed: real.clone(),
                    got: format!("it is {ip}"),
                });
            }
            None => {
                return Err(PolicyError::RealIpNotAllowed {
                    allowed: real.clone(),
                    got: "the request has neither".into(),
                });
            }
        }
    }
    Ok(Grant {
        stream_expire_ms: policy.stream_expire,
    })
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignError {
    #[error("'{0}' is not a URL like scheme://host[:port]/app/stream")]
    BadUrl(String),
    #[error("'{0}' has no default port; write the port explicitly")]
    NoPort(String),
}

/// Makes `url` a signed URL: adds the explicit port OME signs with, the
/// policy, and the signature.
pub fn sign_url(
    secret: &[u8],
    url: &str,
    policy: &Policy,
    names: &QueryNames,
) -> Result<String, SignError> {
    let base = explicit_port(url)?;
    let json = serde_json::to_string(policy).unwrap_or_default();
    let policy_param = format!("{}={}", names.policy, B64.encode(json));
    let unsigned = if base.contains('?') {
        format!("{base}&{policy_param}")
    } else {
        format!("{base}?{policy_param}")
    };
    let sig = signature(secret, &unsigned);
    Ok(format!("{unsigned}&{}={sig}", names.signature))
}

/// `ws://host/app/s` → `ws://host:80/app/s` (OME signs URLs with their port).
pub fn explicit_port(url: &str) -> Result<String, SignError> {
    let bad = || SignError::BadUrl(url.to_string());
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    if authority.is_empty() || scheme.is_empty() {
        return Err(bad());
    }
    let has_port = match authority.rfind(']') {
        Some(end) => authority[end..].contains(':'),
        None => authority.contains(':'),
    };
    if has_port {
        return Ok(url.to_string());
    }
    let port = default_port(scheme).ok_or_else(|| SignError::NoPort(url.to_string()))?;
    Ok(format!("{scheme}://{authority}:{port}{path}"))
}

pub fn default_port(scheme: &str) -> Option<u16> {
    match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        "rtmp" => Some(1935),
        "rtmps" => Some(443),
        "srt" => Some(9999),
        _ => None,
    }
}

/// The signed-string bases a request may have been signed with: each scheme,
/// the Host header's host and port (or each scheme's default port).
pub fn bases_for(schemes: &[&str], host_header: &str, path: &str) -> Vec<String> {
    let has_port = match host_header.rfind(']') {
        Some(end) => host_header[end..].contains(':'),
        None => host_header.contains(':'),
    };
    schemes
        .iter()
        .filter_map(|scheme| {
            if has_port {
                Some(format!("{scheme}://{host_header}{path}"))
            } else {
                default_port(scheme).map(|p| format!("{scheme}://{host_header}:{p}{path}"))
            }
        })
        .collect()
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"1kU^b6";
    const NOW: u64 = 1_700_000_000_000;

    fn client(ip: &str) -> Client {
        Client {
            ip: ip.parse().unwrap(),
            real_ip: None,
        }
    }

    /// The vector from OME's documentation.
    #[test]
    fn ome_test_vector() {
        let url = "ws://192.168.0.100:3333/app/stream?policy=eyJ1cmxfZXhwaXJlIjoxMzk5NzIxNTgxfQ";
        assert_eq!(signature(KEY, url), "dvVdBpoxAeCPl94Kt5RoiqLI0YE");
        // The policy decodes to {"url_expire":1399721581}: seconds, as in OME's
        // documentation, which OME (comparing with milliseconds) finds expired.
        let query =
            "policy=eyJ1cmxfZXhwaXJlIjoxMzk5NzIxNTgxfQ&signature=dvVdBpoxAeCPl94Kt5RoiqLI0YE";
        let bases = vec!["ws://192.168.0.100:3333/app/stream".to_string()];
        let names = QueryNames::default();
        let e = verify(KEY, &bases, query, &names, client("10.0.0.1"), NOW).unwrap_err();
        assert!(e.to_string().contains("looks like seconds"), "{e}");
        // A tampered signature fails before the policy is read.
        let q2 = query.replace("dvVd", "dvVe");
        assert_eq!(
            verify(KEY, &bases, &q2, &names, client("10.0.0.1"), NOW).unwrap_err(),
            PolicyError::BadSignature
        );
    }

    fn minted(policy: &Policy) -> (Vec<String>, String) {
        let url = sign_url(
            KEY,
            "ws://live.example.org/app/stream",
            policy,
            &QueryNames::default(),
        )
        .unwrap();
        let (base, query) = url.split_once('?').unwrap();
        assert_eq!(base, "ws://live.example.org:80/app/stream");
        (vec![base.to_string()], query.to_string())
    }

    #[test]
    fn valid_expired_not_active_wrong_ip_tampered() {
        let names = QueryNames::default();
        let ok = Policy {
            url_expire: Some(NOW + 60_000),
            url_activate: Some(NOW - 1_000),
            stream_expire: Some(NOW + 3_600_000),
            allow_ip: Some("192.168.0.0/24".into()),
            real_ip: None,
        };
        let (bases, q) = minted(&ok);
        let g = verify(KEY, &bases, &q, &names, client("192.168.0.7"), NOW).unwrap();
        assert_eq!(g.stream_expire_ms, Some(NOW + 3_600_000));
        // IPv4-mapped IPv6 peers count as IPv4.
        verify(KEY, &bases, &q, &names, client("::ffff:192.168.0.7"), NOW).unwrap();

        let e = verify(KEY, &bases, &q, &names, client("10.1.1.1"), NOW).unwrap_err();
        assert!(matches!(e, PolicyError::IpNotAllowed { .. }), "{e}");
        assert!(e.to_string().contains("10.1.1.1"), "{e}");

        let e = verify(KEY, &bases, &q, &names, client("192.168.0.7"), NOW + 61_000).unwrap_err();
        assert_eq!(e, PolicyError::Expired(Ago(1_000)));
        assert_eq!(e.to_string(), "the signed URL expired 1 s ago");

        let e = verify(KEY, &bases, &q, &names, client("192.168.0.7"), NOW - 5_000).unwrap_err();
        assert_eq!(e, PolicyError::NotYetActive(Ago(4_000)));

        // Another stream, another host, another key, an edited policy: all refused.
        let other = vec!["ws://live.example.org:80/app/other".to_string()];
        assert_eq!(
            verify(KEY, &other, &q, &names, client("192.168.0.7"), NOW).unwrap_err(),
            PolicyError::BadSignature
        );
        assert_eq!(
            verify(b"other", &bases, &q, &names, client("192.168.0.7"), NOW).unwrap_err(),
            PolicyError::BadSignature
        );
        let wider = Policy {
            allow_ip: Some("0.0.0.0/0".into()),
            ..ok.clone()
        };
        let (_, q_wider) = minted(&wider);
        let forged = format!(
            "{}&signature={}",
            q_wider.split("&signature=").next().unwrap(),
            q.split("&signature=").nth(1).unwrap()
        );
        assert_eq!(
            verify(KEY, &bases, &forged, &names, client("10.1.1.1"), NOW).unwrap_err(),
            PolicyError::BadSignature
        );
    }

    #[test]
    fn stream_expire_and_missing_parts() {
        let names = QueryNames::default();
        let p = Policy {
            url_expire: Some(NOW + 60_000),
            stream_expire: Some(NOW - 1),
            ..Policy::default()
        };
        let (bases, q) = minted(&p);
        assert!(matches!(
            verify(KEY, &bases, &q, &names, client("1.2.3.4"), NOW),
            Err(PolicyError::StreamExpired(_))
        ));
        assert_eq!(
            verify(KEY, &bases, "a=b", &names, client("1.2.3.4"), NOW).unwrap_err(),
            PolicyError::NoPolicy("policy".into())
        );
        assert_eq!(
            verify(KEY, &bases, "policy=e30", &names, client("1.2.3.4"), NOW).unwrap_err(),
            PolicyError::NoSignature("signature".into())
        );
        // Signed but without url_expire.
        let (bases, q) = minted(&Policy::default());
        assert!(matches!(
            verify(KEY, &bases, &q, &names, client("1.2.3.4"), NOW),
            Err(PolicyError::BadPolicy(_))
        ));
    }

    #[test]
    fn other_query_parameters_stay_signed() {
        let names = QueryNames::default();
        let p = Policy {
            url_expire: Some(NOW + 1),
            ..Policy::default()
        };
        let url = sign_url(KEY, "http://h:3333/app/s?direction=whip", &p, &names).unwrap();
        let (base, q) = url.split_once('?').unwrap();
        assert!(q.starts_with("direction=whip&policy="), "{q}");
        verify(KEY, &[base.into()], q, &names, client("1.1.1.1"), NOW).unwrap();
        let changed = q.replace("direction=whip", "direction=send");
        assert!(
            verify(
                KEY,
                &[base.into()],
                &changed,
                &names,
                client("1.1.1.1"),
                NOW
            )
            .is_err()
        );
    }

    #[test]
    fn cidr_and_ports() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.255.1.2".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(
            Cidr::parse("1.2.3.4")
                .unwrap()
                .contains("1.2.3.4".parse().unwrap())
        );
        assert!(Cidr::parse("1.2.3.4/33").is_none());
        assert!(
            Cidr::parse("2001:db8::/32")
                .unwrap()
                .contains("2001:db8::1".parse().unwrap())
        );
        assert!(Cidr::parse("nonsense").is_none());
        assert_eq!(
            explicit_port("rtmp://h/app/s").unwrap(),
            "rtmp://h:1935/app/s"
        );
        assert_eq!(
            explicit_port("wss://h:3334/a/b").unwrap(),
            "wss://h:3334/a/b"
        );
        assert_eq!(
            explicit_port("ws://[::1]/a/b").unwrap(),
            "ws://[::1]:80/a/b"
        );
        assert!(explicit_port("nourl").is_err());
        assert_eq!(
            bases_for(&["ws", "wss"], "h", "/a/b"),
            vec!["ws://h:80/a/b", "wss://h:443/a/b"]
        );
        assert_eq!(
            bases_for(&["ws"], "h:3333", "/a/b"),
            vec!["ws://h:3333/a/b"]
        );
    }
}
