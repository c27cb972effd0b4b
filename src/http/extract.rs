//! Request extractors: the client's address (through trusted proxies), the
//! bearer and viewer tokens, the content type, TLS, and what the gate needs
//! to know about a request.
//!
//! The address of the person behind a request. Behind a reverse proxy (nginx,
//! Caddy) every connection comes from the proxy, so per-address limits would
//! lump all guests together; the proxy's `X-Forwarded-For` says who it is
//! forwarding for. That header is believed only from `http.trusted_proxies`:
//! anyone else could write any address into it and slip past the limits.

use std::net::{IpAddr, SocketAddr};

use axum::http::{HeaderMap, Uri, header};

use super::ApiError;
use crate::auth::Cidr;
use crate::auth::gate::{Attempt, Refusal};
use crate::auth::signed_policy;

/// The client's address: the connection's peer, or, when the peer is a
/// trusted proxy, the last address in `X-Forwarded-For` that is not itself a
/// trusted proxy (the first ones are whatever the client claimed), else
/// `X-Real-IP`.
pub fn client_addr(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    while let Some(hop) = hops.pop() {
        match hop.parse::<IpAddr>() {
            Ok(ip) if is_trusted(ip) => continue,
            Ok(ip) => return ip.to_canonical(),
            // Garbage from a hop we cannot trust: stop at the proxy.
            Err(_) => return peer,
        }
    }
    headers
        .get("x-real-ip")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
        .unwrap_or(peer)
}

/// Whether the request's Content-Type (parameters ignored) is `wanted`.
pub fn content_type_is(headers: &HeaderMap, wanted: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(wanted))
}

/// The viewer's token: `Authorization: Bearer …` or `?access=…`.
pub fn token_from(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        && let Some(t) = v.strip_prefix("Bearer ")
    {
        return Some(t.trim().to_string());
    }
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == "access").then(|| v.to_string())
    })
}

/// Whether the request came in over TLS (set per listener), for the URL
/// schemes a signed URL or the admission webhook sees.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tls(pub bool);

/// `Authorization: Bearer X` (the scheme's case does not matter).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

pub fn refusal_error(r: &Refusal) -> ApiError {
    ApiError::from(r)
}

/// What the gate needs to know about an HTTP request.
pub struct HttpRequest<'a> {
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    pub peer: SocketAddr,
    pub tls: bool,
    /// `http.trusted_proxies`: whose `X-Forwarded-For` is believed.
    pub trusted: &'a [Cidr],
}

impl<'a> HttpRequest<'a> {
    /// A request to `app`'s HTTP shell, from `peer`, `tls` if it came in over TLS.
    pub fn new(
        app: &'a super::App,
        uri: &'a Uri,
        headers: &'a HeaderMap,
        peer: SocketAddr,
        tls: bool,
    ) -> Self {
        HttpRequest {
            uri,
            headers,
            peer,
            tls,
            trusted: &app.config.http.trusted_proxies,
        }
    }

    /// The client's address, through `http.trusted_proxies`.
    pub fn client(&self) -> IpAddr {
        crate::http::client_addr(self.peer.ip(), self.headers, self.trusted)
    }

    /// The forwarded client address, when a trusted proxy forwarded one
    /// (SignedPolicy's and the webhook's `real_ip`); never a header from
    /// anyone else.
    pub fn real_ip(&self) -> Option<IpAddr> {
        let c = self.client();
        (c != self.peer.ip().to_canonical()).then_some(c)
    }

    pub fn host(&self) -> String {
        self.headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("localhost")
            .to_string()
    }

    /// An attempt for `stream` with this request's URL; `schemes` are the
    /// plain and TLS schemes (`http`/`https`, `ws`/`wss`).
    pub fn attempt(&self, stream: &str, keyed: bool, schemes: [&str; 2]) -> Attempt {
        let host = self.host();
        let path = self.uri.path();
        let query = self.uri.query().unwrap_or("").to_string();
        // A proxy may terminate TLS: a URL signed for either scheme is fine.
        let bases = signed_policy::bases_for(&schemes, &host, path);
        let scheme = if self.tls { schemes[1] } else { schemes[0] };
        let url = match self.uri.query() {
            Some(q) => format!("{scheme}://{host}{path}?{q}"),
            None => format!("{scheme}://{host}{path}"),
        };
        Attempt {
            stream: stream.to_string(),
            keyed,
            query,
            bases,
            protocol: "webrtc",
            url,
            client: self.peer,
            real_ip: self.real_ip(),
            user_agent: self
                .headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peers_are_taken_as_they_are() {
        let h = headers(&[("x-forwarded-for", "1.2.3.4"), ("x-real-ip", "5.6.7.8")]);
        assert_eq!(
            client_addr(ip("203.0.113.9"), &h, &nets(&["127.0.0.1"])),
            ip("203.0.113.9")
        );
        assert_eq!(client_addr(ip("127.0.0.1"), &h, &[]), ip("127.0.0.1"));
    }

    #[test]
    fn trusted_proxies_forward_the_client() {
        let t = nets(&["127.0.0.1", "10.0.0.0/8"]);
        // nginx: X-Forwarded-For = what the client sent, then the client.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7")]);
        assert_eq!(client_addr(ip("127.0.0.1"), &h, &t), ip("198.51.100.7"));
        // Two proxies (a load balancer at 10.1.1.1, then nginx), several headers.
        let h = headers(&[
            ("x-forwarded-for", "198.51.100.7"),
            ("x-forwarded-for", "10.1.1.1"),
        ]);
        assert_eq!(
            client_addr(ip("::ffff:127.0.0.1"), &h, &t),
            ip("198.51.100.7")
        );
        // Only X-Real-IP.
        let h = headers(&[("x-real-ip", "2001:db8::5")]);
        assert_eq!(client_addr(ip("127.0.0.1"), &h, &t), ip("2001:db8::5"));
        // No header: the proxy itself.
        assert_eq!(
            client_addr(ip("127.0.0.1"), &HeaderMap::new(), &t),
            ip("127.0.0.1")
        );
        // Garbage in the chain: the proxy, not a made-up address.
        let h = headers(&[("x-forwarded-for", "1.2.3.4, not-an-ip")]);
        assert_eq!(client_addr(ip("127.0.0.1"), &h, &t), ip("127.0.0.1"));
    }

    #[test]
    fn token_from_header_or_query() {
        let mut h = HeaderMap::new();
        assert_eq!(token_from(&h, Some("x=1&access=abc")), Some("abc".into()));
        h.insert(header::AUTHORIZATION, "Bearer t1".parse().unwrap());
        assert_eq!(token_from(&h, Some("access=abc")), Some("t1".into()));
        assert_eq!(token_from(&HeaderMap::new(), None), None);
    }

    #[test]
    fn bearer_tokens() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, "bearer  xyz ".parse().unwrap());
        assert_eq!(bearer(&h), Some("xyz"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
