//! Federated OpenID: a widget on another homeserver hands us an OpenID token
//! and its `matrix_server_name`; we find that server's federation endpoint as
//! the server-server spec's "Resolving server names" says (IP literal or
//! explicit port → directly; `/.well-known/matrix/server`; SRV
//! `_matrix-fed._tcp` then `_matrix._tcp`; else port 8448) and ask it
//! `GET /_matrix/federation/v1/openid/userinfo`.
//!
//! The steps are sans-I/O functions (unit-tested below); [`Federation`] is the
//! thin driver. Every peer is "the network": timeouts on each call, a byte cap
//! on each answer, a bounded cache of resolutions, a back-off per failing
//! server, and private or loopback addresses refused unless
//! `matrix.federation_allow_private` (a token's server name is chosen by
//! whoever posts it, so without the refusal it would make roomcast call into
//! its own network).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tracing::warn;

use crate::log_every::LogEvery;

/// Federation's default port.
pub const DEFAULT_PORT: u16 = 8448;
/// Largest answer read from a peer (well-known or userinfo), in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Resolutions kept (each a few hundred bytes at most: names ≤ 255 bytes).
pub const CACHE_ENTRIES: usize = 1024;
/// Well-known answers without Cache-Control are kept this long (spec: 24 h).
const WELL_KNOWN_DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// The spec's upper bound for caching a well-known answer.
const WELL_KNOWN_MAX_TTL: Duration = Duration::from_secs(48 * 3600);
/// A failed or absent well-known is not asked again for this long (spec: 1 h).
const WELL_KNOWN_ERROR_TTL: Duration = Duration::from_secs(3600);
/// First pause after a server failed; doubles up to [`BACKOFF_MAX`].
const BACKOFF_START: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_secs(600);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const DNS_TIMEOUT: Duration = Duration::from_secs(3);
/// Federated checks running at once (each up to [`CHECK_TIMEOUT`]).
pub const MAX_IN_FLIGHT: usize = 32;
/// A whole check: resolution (well-known hops, SRV) and userinfo.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// The host part of a server name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    /// Lower-cased DNS name.
    Dns(String),
}

/// A parsed server name (`host[:port]`, IPv6 literals in brackets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerName {
    pub host: Host,
    pub port: Option<u16>,
}

impl ServerName {
    /// Parses a server name per the spec's grammar; `None` when it is not one.
    pub fn parse(s: &str) -> Option<ServerName> {
        if s.is_empty() || s.len() > 255 {
            return None;
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (v6, after) = rest.split_once(']')?;
            let ip: std::net::Ipv6Addr = v6.parse().ok()?;
            let port = match after {
                "" => None,
                p => Some(parse_port(p.strip_prefix(':')?)?),
            };
            (Host::Ip(IpAddr::V6(ip)), port)
        } else {
            let (h, port) = match s.split_once(':') {
                Some((h, p)) => (h, Some(parse_port(p)?)),
                None => (s, None),
            };
            if let Ok(ip) = h.parse::<std::net::Ipv4Addr>() {
                (Host::Ip(IpAddr::V4(ip)), port)
            } else {
                let ok = !h.is_empty()
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                    && !h.starts_with('.')
                    && !h.contains("..");
                if !ok {
                    return None;
                }
                (Host::Dns(h.to_ascii_lowercase()), port)
            }
        };
        Some(ServerName { host, port })
    }
}

fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse().ok().filter(|&n| n != 0)
}

/// Where federation requests for a server go, and how they are made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// What to connect to: an address, or a name to look up (A/AAAA).
    pub connect: Host,
    pub port: u16,
    /// The name the certificate must be valid for (and the URL's host).
    pub tls_name: String,
    /// The `Host` header.
    pub host_header: String,
}

fn host_text(h: &Host) -> String {
    match h {
        Host::Ip(IpAddr::V6(ip)) => format!("[{ip}]"),
        Host::Ip(ip) => ip.to_string(),
        Host::Dns(d) => d.clone(),
    }
}

fn direct(name: &ServerName, raw: &str) -> Endpoint {
    Endpoint {
        connect: name.host.clone(),
        port: name.port.unwrap_or(DEFAULT_PORT),
        tls_name: host_text(&name.host),
        host_header: raw.to_string(),
    }
}

/// The first step for a server name.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// Spec steps 1–2: an IP literal or an explicit port is used as is.
    Direct(Endpoint),
    /// Step 3: ask `https://<hostname>/.well-known/matrix/server`.
    WellKnown { hostname: String },
}

pub fn plan(name: &ServerName, raw: &str) -> Plan {
    match (&name.host, name.port) {
        (Host::Ip(_), _) | (_, Some(_)) => Plan::Direct(direct(name, raw)),
        (Host::Dns(h), None) => Plan::WellKnown {
            hostname: h.clone(),
        },
    }
}

/// After the well-known step: an endpoint, or SRV records to look up.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Direct(Endpoint),
    /// Steps 3.3/3.4 and 4/5: look up these SRV names in order; the `Host`
    /// header and certificate are for `hostname`. Without a record: 8448.
    Srv {
        hostname: String,
        names: [String; 2],
    },
}

fn srv(hostname: &str) -> Next {
    Next::Srv {
        hostname: hostname.to_string(),
        names: [
            format!("_matrix-fed._tcp.{hostname}"),
            format!("_matrix._tcp.{hostname}"),
        ],
    }
}

/// What the well-known answer (`delegated`: its parsed `m.server`, `None`
/// when absent or invalid) leads to for `hostname`.
pub fn after_well_known(hostname: &str, delegated: Option<(&ServerName, &str)>) -> Next {
    match delegated {
        None => srv(hostname),
        Some((d, raw)) => match (&d.host, d.port) {
            (Host::Ip(_), _) | (_, Some(_)) => Next::Direct(direct(d, raw)),
            (Host::Dns(h), None) => srv(h),
        },
    }
}

/// The endpoint once SRV answered (`target`, `port`) or not.
pub fn after_srv(hostname: &str, record: Option<(String, u16)>) -> Endpoint {
    let (connect, port) = match record {
        Some((target, port)) => {
            let t = target.trim_end_matches('.').to_ascii_lowercase();
            (Host::Dns(t), port)
        }
        None => (Host::Dns(hostname.to_string()), DEFAULT_PORT),
    };
    Endpoint {
        connect,
        port,
        tls_name: hostname.to_string(),
        host_header: hostname.to_string(),
    }
}

const WELL_KNOWN_PATH: &str = "/.well-known/matrix/server";
/// Redirects followed when fetching a well-known.
const MAX_REDIRECTS: usize = 3;

/// Where a redirect of a request to `e` for `path` leads: an https URL only
/// (absolute or relative to the current one), as an endpoint and a path.
pub fn redirect_target(e: &Endpoint, path: &str, location: &str) -> Option<(Endpoint, String)> {
    let current = reqwest::Url::parse(&format!("https://{}:{}{path}", e.tls_name, e.port)).ok()?;
    let next = current.join(location).ok()?;
    if next.scheme() != "https" || !next.username().is_empty() || next.password().is_some() {
        return None;
    }
    let host = ServerName::parse(next.host_str()?)?.host;
    let port = next.port().unwrap_or(443);
    let name = host_text(&host);
    let host_header = if port == 443 {
        name.clone()
    } else {
        format!("{name}:{port}")
    };
    let mut p = next.path().to_string();
    if let Some(q) = next.query() {
        p.push('?');
        p.push_str(q);
    }
    Some((
        Endpoint {
            connect: host,
            port,
            tls_name: name,
            host_header,
        },
        p,
    ))
}

/// What a GET brought back.
struct Answer {
    status: u16,
    body: Vec<u8>,
    cache_control: Option<String>,
    location: Option<String>,
}

/// `m.server` of a well-known answer, when it is a valid server name.
pub fn parse_well_known(body: &[u8]) -> Option<(ServerName, String)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let s = v.get("m.server")?.as_str()?;
    Some((ServerName::parse(s)?, s.to_string()))
}

/// How long to keep a well-known answer, from its Cache-Control.
pub fn well_known_ttl(cache_control: Option<&str>) -> Duration {
    let Some(cc) = cache_control else {
        return WELL_KNOWN_DEFAULT_TTL;
    };
    let cc = cc.to_ascii_lowercase();
    if cc.split(',').any(|d| d.trim() == "no-store") {
        return Duration::ZERO;
    }
    cc.split(',')
        .find_map(|d| d.trim().strip_prefix("max-age=")?.parse::<u64>().ok())
        .map(|s| Duration::from_secs(s).min(WELL_KNOWN_MAX_TTL))
        .unwrap_or(WELL_KNOWN_DEFAULT_TTL)
}

/// An address that is not loopback, private, link-local, shared (CGNAT),
/// multicast, documentation or otherwise not a public host.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8)
                || (s[0] == 0x64 && s[1] == 0xff9b))
        }
    }
}

/// The spec: the user id in `sub` must be of the server that was asked.
pub fn sub_is_of(sub: &str, server_name: &str) -> bool {
    sub.starts_with('@') && sub.split_once(':').map(|(_, s)| s) == Some(server_name)
}

/// Resolutions and failures, bounded in entries.
pub struct Cache {
    resolved: HashMap<String, (Endpoint, Instant)>,
    /// Server → (retry not before, the pause that got it there).
    failing: HashMap<String, (Instant, Duration)>,
    cap: usize,
}

impl Cache {
    pub fn new(cap: usize) -> Cache {
        Cache {
            resolved: HashMap::new(),
            failing: HashMap::new(),
            cap,
        }
    }

    pub fn get(&self, server: &str, now: Instant) -> Option<Endpoint> {
        self.resolved
            .get(server)
            .filter(|(_, until)| *until > now)
            .map(|(e, _)| e.clone())
    }

    pub fn put(&mut self, server: &str, e: Endpoint, ttl: Duration, now: Instant) {
        if ttl.is_zero() {
            return;
        }
        if self.resolved.len() >= self.cap && !self.resolved.contains_key(server) {
            self.resolved.retain(|_, (_, until)| *until > now);
            if self.resolved.len() >= self.cap {
                // The entry closest to expiry makes room.
                if let Some(k) = self
                    .resolved
                    .iter()
                    .min_by_key(|(_, (_, until))| *until)
                    .map(|(k, _)| k.clone())
                {
                    self.resolved.remove(&k);
                }
            }
        }
        self.resolved.insert(server.to_string(), (e, now + ttl));
    }

    /// When a server is in its back-off, the instant it ends.
    pub fn backing_off(&self, server: &str, now: Instant) -> Option<Instant> {
        self.failing
            .get(server)
            .map(|(until, _)| *until)
            .filter(|until| *until > now)
    }

    /// A call to `server` failed: it is not asked again for a while, longer
    /// each time; its resolution is forgotten (it may have moved).
    pub fn failed(&mut self, server: &str, now: Instant) {
        self.resolved.remove(server);
        let pause = self
            .failing
            .get(server)
            .map(|(_, p)| (*p * 2).min(BACKOFF_MAX))
            .unwrap_or(BACKOFF_START);
        if self.failing.len() >= self.cap && !self.failing.contains_key(server) {
            self.failing
                .retain(|_, (until, p)| *until + *p > now && *until > now);
            if self.failing.len() >= self.cap {
                return;
            }
        }
        self.failing
            .insert(server.to_string(), (now + pause, pause));
    }

    pub fn succeeded(&mut self, server: &str) {
        self.failing.remove(server);
    }
}

/// Why a federated OpenID check failed.
#[derive(Debug, thiserror::Error)]
pub enum FedError {
    /// The server answered that the token is not good (or named a user of
    /// another server).
    #[error("the server refused the token")]
    BadToken,
    /// The server name cannot be checked at all (malformed, no address, or
    /// only private addresses).
    #[error("{0}")]
    Unreachable(String),
    /// It could not be asked now (timeout, error answer, back-off): retry later.
    #[error("{0}")]
    Unavailable(String),
}

/// The driver: DNS, HTTPS with a byte cap, the cache.
pub struct Federation {
    /// For SRV records; `None` when the system has no DNS configuration
    /// (then only well-known delegation and port 8448 are tried).
    dns: Option<hickory_resolver::TokioResolver>,
    cache: Mutex<Cache>,
    allow_private: bool,
    extra_roots: Vec<reqwest::Certificate>,
    /// Checks in flight at once: a slow peer holds one for up to the timeouts.
    in_flight: tokio::sync::Semaphore,
}

static FED_WARN: LogEvery = LogEvery::new(Duration::from_secs(60));

impl Federation {
    /// `ca_file`: an extra PEM CA trusted for federation (tests on loopback).
    pub fn new(allow_private: bool, ca_file: Option<&str>) -> Result<Federation, String> {
        let dns = match hickory_resolver::TokioResolver::builder_tokio() {
            Ok(mut b) => {
                b.options_mut().timeout = DNS_TIMEOUT;
                b.options_mut().attempts = 1;
                b.options_mut().cache_size = 256;
                Some(b.build())
            }
            Err(e) => {
                warn!(
                    "matrix: no DNS configuration for SRV lookups ({e}); federation uses well-known and port 8448 only"
                );
                None
            }
        };
        let extra_roots = match ca_file {
            None => vec![],
            Some(p) => {
                let pem = std::fs::read(p).map_err(|e| format!("cannot read {p}: {e}"))?;
                reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| format!("{p} is not a PEM certificate: {e}"))?
            }
        };
        Ok(Federation {
            dns,
            cache: Mutex::new(Cache::new(CACHE_ENTRIES)),
            allow_private,
            extra_roots,
            in_flight: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
        })
    }

    /// Asks `server_name` who the OpenID token belongs to; the user id,
    /// checked to be of that server.
    pub async fn userinfo(&self, server_name: &str, token: &str) -> Result<String, FedError> {
        let name = ServerName::parse(server_name).ok_or_else(|| {
            FedError::Unreachable(format!("'{server_name}' is not a server name"))
        })?;
        let now = Instant::now();
        if let Some(until) = self.cache.lock().backing_off(server_name, now) {
            return Err(FedError::Unavailable(format!(
                "{server_name} failed recently; retrying in {} s",
                until.saturating_duration_since(now).as_secs() + 1
            )));
        }
        let Ok(_permit) = self.in_flight.try_acquire() else {
            return Err(FedError::Unavailable(
                "too many checks with other homeservers at once; try again".to_string(),
            ));
        };
        let result = match tokio::time::timeout(
            CHECK_TIMEOUT,
            self.userinfo_inner(&name, server_name, token),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(FedError::Unavailable(format!(
                "checking with {server_name} took more than {} s",
                CHECK_TIMEOUT.as_secs()
            ))),
        };
        let mut cache = self.cache.lock();
        match &result {
            Ok(_) | Err(FedError::BadToken) => cache.succeeded(server_name),
            // No address (or only private ones): refused again at once, with
            // the same answer, rather than "try later".
            Err(FedError::Unreachable(_)) => {}
            Err(e) => {
                cache.failed(server_name, Instant::now());
                if let Some(n) = FED_WARN.allow() {
                    warn!(server = %server_name, error = %e, suppressed = n,
                        "matrix: federated OpenID check failed");
                }
            }
        }
        result
    }

    async fn userinfo_inner(
        &self,
        name: &ServerName,
        raw: &str,
        token: &str,
    ) -> Result<String, FedError> {
        let endpoint = self.resolve(name, raw).await?;
        let (status, body) = self
            .get(
                &endpoint,
                "/_matrix/federation/v1/openid/userinfo",
                Some(("access_token", token)),
            )
            .await?;
        match status {
            200 => {}
            401 | 403 => return Err(FedError::BadToken),
            s => {
                return Err(FedError::Unavailable(format!(
                    "{raw} answered {s} to openid/userinfo"
                )));
            }
        }
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|_| FedError::Unavailable(format!("{raw}'s userinfo is not JSON")))?;
        let sub = v["sub"].as_str().ok_or(FedError::BadToken)?;
        if !sub_is_of(sub, raw) {
            return Err(FedError::BadToken);
        }
        Ok(sub.to_string())
    }

    /// The federation endpoint of a server (cached).
    async fn resolve(&self, name: &ServerName, raw: &str) -> Result<Endpoint, FedError> {
        if let Some(e) = self.cache.lock().get(raw, Instant::now()) {
            return Ok(e);
        }
        let hostname = match plan(name, raw) {
            Plan::Direct(e) => return Ok(e),
            Plan::WellKnown { hostname } => hostname,
        };
        let (delegated, ttl) = self.well_known(&hostname).await;
        let endpoint =
            match after_well_known(&hostname, delegated.as_ref().map(|(d, r)| (d, r.as_str()))) {
                Next::Direct(e) => e,
                Next::Srv { hostname, names } => {
                    let mut record = None;
                    for n in &names {
                        if let Some(r) = self.srv_lookup(n).await {
                            record = Some(r);
                            break;
                        }
                    }
                    after_srv(&hostname, record)
                }
            };
        self.cache
            .lock()
            .put(raw, endpoint.clone(), ttl, Instant::now());
        Ok(endpoint)
    }

    /// The well-known delegation of `hostname` and how long the outcome holds.
    async fn well_known(&self, hostname: &str) -> (Option<(ServerName, String)>, Duration) {
        let mut e = Endpoint {
            connect: Host::Dns(hostname.to_string()),
            port: 443,
            tls_name: hostname.to_string(),
            host_header: hostname.to_string(),
        };
        let mut path = WELL_KNOWN_PATH.to_string();
        // The spec: follow redirects, but not in loops (a few hops at most).
        for _ in 0..=MAX_REDIRECTS {
            let a = match self.get_with_headers(&e, &path, None).await {
                Ok(a) => a,
                Err(_) => break,
            };
            if (300..400).contains(&a.status) {
                match a
                    .location
                    .as_deref()
                    .and_then(|l| redirect_target(&e, &path, l))
                {
                    Some((next, p)) => {
                        (e, path) = (next, p);
                        continue;
                    }
                    None => break,
                }
            }
            if a.status == 200
                && let Some(d) = parse_well_known(&a.body)
            {
                return (Some(d), well_known_ttl(a.cache_control.as_deref()));
            }
            break;
        }
        (None, WELL_KNOWN_ERROR_TTL)
    }

    /// The best SRV record (lowest priority, then highest weight), if any.
    async fn srv_lookup(&self, name: &str) -> Option<(String, u16)> {
        let dns = self.dns.as_ref()?;
        let fqdn = format!("{name}.");
        let lookup = tokio::time::timeout(DNS_TIMEOUT * 2, dns.srv_lookup(fqdn))
            .await
            .ok()?
            .ok()?;
        lookup
            .iter()
            .filter(|r| r.target().to_utf8() != ".")
            .min_by_key(|r| (r.priority(), std::cmp::Reverse(r.weight())))
            .map(|r| (r.target().to_utf8(), r.port()))
    }

    /// The addresses to connect to, refusing non-public ones unless allowed.
    async fn addresses(&self, e: &Endpoint) -> Result<Vec<SocketAddr>, FedError> {
        let all: Vec<SocketAddr> = match &e.connect {
            Host::Ip(ip) => vec![SocketAddr::new(*ip, e.port)],
            Host::Dns(h) => {
                match tokio::time::timeout(
                    DNS_TIMEOUT * 2,
                    tokio::net::lookup_host((h.as_str(), e.port)),
                )
                .await
                {
                    Ok(Ok(a)) => a.collect(),
                    Ok(Err(err)) => {
                        return Err(FedError::Unreachable(format!("{h} has no address: {err}")));
                    }
                    Err(_) => {
                        return Err(FedError::Unavailable(format!("looking up {h} timed out")));
                    }
                }
            }
        };
        let usable: Vec<SocketAddr> = all
            .iter()
            .copied()
            .filter(|a| self.allow_private || is_public(a.ip()))
            .take(8)
            .collect();
        if usable.is_empty() {
            return Err(FedError::Unreachable(format!(
                "{} has no public address (private and loopback addresses are refused unless \
                 matrix.federation_allow_private)",
                host_text(&e.connect)
            )));
        }
        Ok(usable)
    }

    async fn get(
        &self,
        e: &Endpoint,
        path: &str,
        query: Option<(&str, &str)>,
    ) -> Result<(u16, Vec<u8>), FedError> {
        self.get_with_headers(e, path, query)
            .await
            .map(|a| (a.status, a.body))
    }

    /// A GET on a resolved endpoint: pinned to the checked addresses, no
    /// redirects (the caller follows them, checking each address), no proxy,
    /// at most [`MAX_BODY_BYTES`] read.
    async fn get_with_headers(
        &self,
        e: &Endpoint,
        path: &str,
        query: Option<(&str, &str)>,
    ) -> Result<Answer, FedError> {
        let addrs = self.addresses(e).await?;
        let mut b = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("roomcast/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .tls_certs_merge(self.extra_roots.iter().cloned());
        if let Host::Dns(_) = &e.connect {
            // Connect where we checked, with the certificate's name in the URL.
            b = b.resolve_to_addrs(&e.tls_name, &addrs);
        }
        let client = b
            .build()
            .map_err(|err| FedError::Unavailable(format!("HTTP client: {err}")))?;
        let url = format!("https://{}:{}{path}", e.tls_name, e.port);
        let mut req = client
            .get(&url)
            .header(reqwest::header::HOST, &e.host_header);
        if let Some(q) = query {
            req = req.query(&[q]);
        }
        let mut resp = req.send().await.map_err(|err| {
            FedError::Unavailable(format!(
                "cannot reach {}:{} ({}): {}",
                e.tls_name,
                e.port,
                e.host_header,
                error_chain(&err.without_url())
            ))
        })?;
        let status = resp.status().as_u16();
        let header = |name| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let cache_control = header(reqwest::header::CACHE_CONTROL);
        let location = header(reqwest::header::LOCATION);
        let mut body = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(c)) => {
                    if body.len() + c.len() > MAX_BODY_BYTES {
                        return Err(FedError::Unavailable(format!(
                            "{} sent more than {MAX_BODY_BYTES} bytes",
                            e.host_header
                        )));
                    }
                    body.extend_from_slice(&c);
                }
                Ok(None) => break,
                Err(err) => {
                    return Err(FedError::Unavailable(format!(
                        "reading from {}: {}",
                        e.host_header,
                        error_chain(&err.without_url())
                    )));
                }
            }
        }
        Ok(Answer {
            status,
            body,
            cache_control,
            location,
        })
    }
}

/// An error with its causes (reqwest hides the TLS reason in its sources).
/// Callers strip reqwest's URL first: it holds the OpenID token.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sn(s: &str) -> ServerName {
        ServerName::parse(s).unwrap_or_else(|| panic!("{s} should parse"))
    }

    #[test]
    fn server_names() {
        assert_eq!(
            sn("Matrix.Example.org"),
            ServerName {
                host: Host::Dns("matrix.example.org".into()),
                port: None
            }
        );
        assert_eq!(sn("1.2.3.4:8008").port, Some(8008));
        assert_eq!(sn("[::1]:443").host, Host::Ip("::1".parse().unwrap()));
        assert_eq!(sn("[2001:db8::1]").port, None);
        for bad in [
            "", ":80", "a:", "a:0", "a:99999", "a b", "a/b", "[::1", "[x]", "a..b", ".a", "a:1:2",
            "[::1]80", "@u:hs",
        ] {
            assert_eq!(ServerName::parse(bad), None, "{bad:?}");
        }
        assert_eq!(ServerName::parse(&"a".repeat(256)), None);
    }

    #[test]
    fn ip_literals_and_explicit_ports_are_direct() {
        let e = |s: &str| match plan(&sn(s), s) {
            Plan::Direct(e) => e,
            other => panic!("{s}: {other:?}"),
        };
        let ip = e("127.0.0.1:8449");
        assert_eq!(ip.connect, Host::Ip("127.0.0.1".parse().unwrap()));
        assert_eq!((ip.port, ip.tls_name.as_str()), (8449, "127.0.0.1"));
        assert_eq!(ip.host_header, "127.0.0.1:8449");
        let v6 = e("[::1]");
        assert_eq!((v6.port, v6.tls_name.as_str()), (8448, "[::1]"));
        let named = e("hs.example.org:1234");
        assert_eq!(named.connect, Host::Dns("hs.example.org".into()));
        assert_eq!(named.tls_name, "hs.example.org");
        assert_eq!(named.host_header, "hs.example.org:1234");
        assert_eq!(
            plan(&sn("example.org"), "example.org"),
            Plan::WellKnown {
                hostname: "example.org".into()
            }
        );
    }

    #[test]
    fn well_known_delegation() {
        // Delegated with a port: directly there, Host and certificate of the delegate.
        let (d, raw) = parse_well_known(br#"{"m.server": "fed.example.net:443"}"#).unwrap();
        match after_well_known("example.org", Some((&d, &raw))) {
            Next::Direct(e) => {
                assert_eq!(e.connect, Host::Dns("fed.example.net".into()));
                assert_eq!((e.port, e.tls_name.as_str()), (443, "fed.example.net"));
                assert_eq!(e.host_header, "fed.example.net:443");
            }
            other => panic!("{other:?}"),
        }
        // Delegated without a port: SRV of the delegate, then its 8448.
        let (d, raw) = parse_well_known(br#"{"m.server": "fed.example.net"}"#).unwrap();
        let Next::Srv { hostname, names } = after_well_known("example.org", Some((&d, &raw)))
        else {
            panic!()
        };
        assert_eq!(hostname, "fed.example.net");
        assert_eq!(
            names,
            [
                "_matrix-fed._tcp.fed.example.net".to_string(),
                "_matrix._tcp.fed.example.net".to_string()
            ]
        );
        // No (or a bad) well-known: SRV of the server name itself.
        for body in [
            &b"not json"[..],
            br#"{"m.server": 5}"#,
            br#"{"m.server": "bad name!"}"#,
            br#"{}"#,
        ] {
            assert!(parse_well_known(body).is_none());
        }
        assert!(matches!(
            after_well_known("example.org", None),
            Next::Srv { hostname, .. } if hostname == "example.org"
        ));
    }

    #[test]
    fn srv_and_fallback() {
        let e = after_srv("example.org", Some(("Matrix.Example.org.".into(), 8443)));
        assert_eq!(e.connect, Host::Dns("matrix.example.org".into()));
        assert_eq!(e.port, 8443);
        // The certificate and Host are the server's, not the SRV target's.
        assert_eq!(
            (e.tls_name.as_str(), e.host_header.as_str()),
            ("example.org", "example.org")
        );
        let e = after_srv("example.org", None);
        assert_eq!(e.connect, Host::Dns("example.org".into()));
        assert_eq!(e.port, 8448);
    }

    #[test]
    fn well_known_redirects() {
        let start = Endpoint {
            connect: Host::Dns("example.org".into()),
            port: 443,
            tls_name: "example.org".into(),
            host_header: "example.org".into(),
        };
        let (e, p) = redirect_target(
            &start,
            WELL_KNOWN_PATH,
            "https://www.example.org/.well-known/matrix/server",
        )
        .unwrap();
        assert_eq!(e.connect, Host::Dns("www.example.org".into()));
        assert_eq!((e.port, e.host_header.as_str()), (443, "www.example.org"));
        assert_eq!(p, WELL_KNOWN_PATH);
        let (e, p) = redirect_target(&start, WELL_KNOWN_PATH, "/other?x=1").unwrap();
        assert_eq!(
            (e.tls_name.as_str(), p.as_str()),
            ("example.org", "/other?x=1")
        );
        let (e, _) = redirect_target(&start, WELL_KNOWN_PATH, "https://10.0.0.1:8443/wk").unwrap();
        assert_eq!(e.connect, Host::Ip("10.0.0.1".parse().unwrap()));
        assert_eq!(e.host_header, "10.0.0.1:8443");
        // Never to plain HTTP or with credentials.
        for bad in [
            "http://example.org/x",
            "https://u:p@example.org/x",
            "ftp://x/y",
        ] {
            assert!(
                redirect_target(&start, WELL_KNOWN_PATH, bad).is_none(),
                "{bad}"
            );
        }
    }

    #[test]
    fn well_known_cache_lifetimes() {
        assert_eq!(well_known_ttl(None), WELL_KNOWN_DEFAULT_TTL);
        assert_eq!(
            well_known_ttl(Some("public, max-age=600")),
            Duration::from_secs(600)
        );
        assert_eq!(well_known_ttl(Some("max-age=9999999")), WELL_KNOWN_MAX_TTL);
        assert_eq!(well_known_ttl(Some("no-store")), Duration::ZERO);
        assert_eq!(well_known_ttl(Some("max-age=x")), WELL_KNOWN_DEFAULT_TTL);
    }

    #[test]
    fn private_addresses() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_public(a.parse().unwrap()), "{a}");
        }
        for a in [
            "1.1.1.1",
            "93.184.216.34",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(a.parse().unwrap()), "{a}");
        }
    }

    #[test]
    fn sub_must_be_of_the_server_asked() {
        assert!(sub_is_of("@u:example.org", "example.org"));
        assert!(sub_is_of("@u:127.0.0.1:8448", "127.0.0.1:8448"));
        assert!(!sub_is_of("@u:evil.example", "example.org"));
        assert!(!sub_is_of("@u:example.org.evil", "example.org"));
        assert!(!sub_is_of("u:example.org", "example.org"));
        assert!(!sub_is_of("@u", "example.org"));
    }

    #[test]
    fn cache_is_bounded_and_failures_back_off() {
        let t0 = Instant::now();
        let mut c = Cache::new(2);
        let e = after_srv("a", None);
        c.put("a", e.clone(), Duration::from_secs(10), t0);
        c.put("b", e.clone(), Duration::from_secs(20), t0);
        c.put("c", e.clone(), Duration::from_secs(30), t0);
        assert_eq!(c.resolved.len(), 2);
        assert!(c.get("a", t0).is_none(), "the soonest to expire made room");
        assert!(c.get("c", t0).is_some());
        assert!(c.get("c", t0 + Duration::from_secs(31)).is_none());
        c.put("z", e.clone(), Duration::ZERO, t0);
        assert!(c.get("z", t0).is_none());

        assert!(c.backing_off("s", t0).is_none());
        c.put("s", e.clone(), Duration::from_secs(100), t0);
        c.failed("s", t0);
        assert!(c.get("s", t0).is_none(), "a failure forgets the resolution");
        assert_eq!(c.backing_off("s", t0), Some(t0 + BACKOFF_START));
        let t1 = t0 + BACKOFF_START;
        assert!(c.backing_off("s", t1).is_none());
        c.failed("s", t1);
        assert_eq!(c.backing_off("s", t1), Some(t1 + BACKOFF_START * 2));
        for _ in 0..20 {
            c.failed("s", t1);
        }
        assert_eq!(c.backing_off("s", t1), Some(t1 + BACKOFF_MAX));
        c.succeeded("s");
        assert!(c.backing_off("s", t1).is_none());
        // Failures are bounded too.
        c.failed("x", t1);
        c.failed("y", t1);
        assert!(c.failing.len() <= 2);
    }
}
