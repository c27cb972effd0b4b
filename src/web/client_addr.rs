//! The address of the person behind a request. Behind a reverse proxy (nginx,
//! Caddy) every connection comes from the proxy, so per-address limits would
//! lump all guests together; the proxy's `X-Forwarded-For` says who it is
//! forwarding for. That header is believed only from `http.trusted_proxies`:
//! anyone else could write any address into it and slip past the limits.

use std::net::IpAddr;

use axum::http::HeaderMap;

use crate::auth::Cidr;

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
}
