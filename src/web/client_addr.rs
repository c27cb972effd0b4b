//! The address of the person behind a request. Behind a reverse proxy (nginx,
//! Caddy) every connection comes from the proxy, so per-address limits would
//! lump all guests together; the proxy's `X-Forwarded-For` says who it is
//! forwarding for. That header is believed only from `http.trusted_proxies`:
//! anyone else could write any address into it and slip past the limits.

use std::net::IpAddr;
use std::str::FromStr;

use axum::http::HeaderMap;
use serde::Deserialize;

/// An address range: `10.0.0.0/8`, `fd00::/8`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<IpNet, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("'{s}' is not an IP address or range like 10.0.0.0/8"))?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("'{s}': the prefix length must be 0 to {max}")),
            },
        };
        Ok(IpNet { addr, prefix })
    }
}

impl TryFrom<String> for IpNet {
    type Error = String;

    fn try_from(s: String) -> Result<IpNet, String> {
        s.parse()
    }
}

/// The client's address: the connection's peer, or, when the peer is a
/// trusted proxy, the last address in `X-Forwarded-For` that is not itself a
/// trusted proxy (the first ones are whatever the client claimed), else
/// `X-Real-IP`.
pub fn client_addr(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
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

    fn nets(list: &[&str]) -> Vec<IpNet> {
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
    fn ranges() {
        let n: IpNet = "10.0.0.0/8".parse().unwrap();
        assert!(n.contains(ip("10.200.3.4")));
        assert!(!n.contains(ip("11.0.0.1")));
        assert!(!n.contains(ip("fd00::1")));
        let one: IpNet = "127.0.0.1".parse().unwrap();
        assert!(one.contains(ip("127.0.0.1")));
        assert!(
            one.contains(ip("::ffff:127.0.0.1")),
            "IPv4-mapped peers on [::] listeners"
        );
        assert!(!one.contains(ip("127.0.0.2")));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")));
        let v6: IpNet = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")));
        assert!(!v6.contains(ip("fe80::1")));
        for bad in [
            "10.0.0.0/33",
            "fd00::/129",
            "nonsense",
            "10.0.0/8",
            "1.2.3.4/x",
            "",
        ] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
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
