//! Routing from the network to the shards: by source address once known, and
//! for a new address by a signed STUN check naming a session's ufrag.

use std::collections::HashMap;
use std::net::SocketAddr;

use aws_lc_rs::hmac;
use parking_lot::RwLock;
use str0m::net::Protocol;
use subtle::ConstantTimeEq;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub shard: usize,
    pub peer: u64,
}

/// Routing tables from the network to the shards.
#[derive(Default)]
pub struct Demux {
    by_addr: RwLock<HashMap<(Protocol, SocketAddr), Route>>,
    /// Our ICE ufrag → the session, and our ICE password (the STUN key).
    by_ufrag: RwLock<HashMap<String, (Route, String)>>,
}

impl Demux {
    /// Routes STUN checks for `ufrag` to `route`; `pwd` is the session's
    /// local ICE password, which signs the checks the peer sends.
    pub fn add_ufrag(&self, ufrag: &str, pwd: &str, route: Route) {
        self.by_ufrag
            .write()
            .insert(ufrag.to_string(), (route, pwd.to_string()));
    }

    /// Forgets a peer: its ufrag and every address it used.
    pub fn remove(&self, ufrag: &str, addrs: &[(Protocol, SocketAddr)]) {
        self.by_ufrag.write().remove(ufrag);
        self.forget(addrs);
    }

    /// Forgets addresses (a session's, or one over its cap).
    pub fn forget(&self, addrs: &[(Protocol, SocketAddr)]) {
        if addrs.is_empty() {
            return;
        }
        let mut by_addr = self.by_addr.write();
        for a in addrs {
            by_addr.remove(a);
        }
    }

    /// Finds the peer a packet belongs to. A new address is learned only
    /// from a STUN check that names a session's ufrag *and* carries a valid
    /// MESSAGE-INTEGRITY for its password: a forged check cannot steer a
    /// session's packets. Returns whether the address was new, so the
    /// shard can remember it.
    pub fn route(&self, proto: Protocol, source: SocketAddr, data: &[u8]) -> Option<(Route, bool)> {
        if let Some(r) = self.by_addr.read().get(&(proto, source)) {
            return Some((*r, false));
        }
        let check = stun_check(data)?;
        let route = {
            let by_ufrag = self.by_ufrag.read();
            let (route, pwd) = by_ufrag.get(check.ufrag)?;
            if !check.signed_by(data, pwd) {
                return None;
            }
            *route
        };
        self.by_addr.write().insert((proto, source), route);
        Some((route, true))
    }
}

/// A STUN message's local ufrag and where its MESSAGE-INTEGRITY is.
struct StunCheck<'a> {
    ufrag: &'a str,
    /// Offset of the MESSAGE-INTEGRITY attribute's header in the message.
    integrity_at: usize,
    integrity: &'a [u8],
}

impl StunCheck<'_> {
    /// RFC 5389 §15.4: HMAC-SHA1 keyed with the password over the message up
    /// to the attribute, the header's length covering the attribute.
    fn signed_by(&self, data: &[u8], pwd: &str) -> bool {
        let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, pwd.as_bytes());
        let mut ctx = hmac::Context::with_key(&key);
        let len = (self.integrity_at + 24 - 20) as u16;
        ctx.update(&data[..2]);
        ctx.update(&len.to_be_bytes());
        ctx.update(&data[4..self.integrity_at]);
        let tag = ctx.sign();
        bool::from(tag.as_ref().ct_eq(self.integrity))
    }
}

/// Reads a STUN message's USERNAME (the local part: `<ours>:<theirs>`) and
/// MESSAGE-INTEGRITY; None if it is not STUN or lacks either.
fn stun_check(data: &[u8]) -> Option<StunCheck<'_>> {
    // STUN: first two bits zero, magic cookie at 4..8 (RFC 5389 §6).
    if data.len() < 20 || data[0] & 0xc0 != 0 || data[4..8] != [0x21, 0x12, 0xa4, 0x42] {
        return None;
    }
    let len = u16::from_be_bytes([data[2], data[3]]) as usize;
    let body = data.get(20..20 + len)?;
    let mut ufrag = None;
    let mut i = 0;
    while i + 4 <= body.len() {
        let typ = u16::from_be_bytes([body[i], body[i + 1]]);
        let alen = u16::from_be_bytes([body[i + 2], body[i + 3]]) as usize;
        let value = body.get(i + 4..i + 4 + alen)?;
        match typ {
            0x0006 => {
                let username = std::str::from_utf8(value).ok()?;
                ufrag = username.split(':').next();
            }
            0x0008 if alen == 20 => {
                return Some(StunCheck {
                    ufrag: ufrag?,
                    integrity_at: 20 + i,
                    integrity: value,
                });
            }
            _ => {}
        }
        i += 4 + alen.div_ceil(4) * 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::binding_request;
    use super::*;

    #[test]
    fn routes_by_signed_ufrag_then_by_address() {
        let d = Demux::default();
        let r = Route { shard: 1, peer: 9 };
        d.add_ufrag("abcd", "secretpassword", r);
        let a: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        assert_eq!(d.route(Protocol::Udp, a, b"\x80\x60rtp"), None);
        // A known ufrag with the wrong key, or without integrity: not learned.
        let forged = binding_request("abcd:xyz", "guessed");
        assert_eq!(d.route(Protocol::Udp, a, &forged), None);
        assert_eq!(d.route(Protocol::Udp, a, b"\x80\x60rtp"), None);
        let mut tampered = binding_request("abcd:xyz", "secretpassword");
        tampered[10] ^= 1; // the transaction id is covered
        assert_eq!(d.route(Protocol::Udp, a, &tampered), None);
        assert_eq!(
            d.route(
                Protocol::Udp,
                a,
                &binding_request("abcd:xyz", "secretpassword")
            ),
            Some((r, true))
        );
        assert_eq!(d.route(Protocol::Udp, a, b"\x80\x60rtp"), Some((r, false)));
        assert_eq!(
            d.route(Protocol::Udp, a, &binding_request("zzzz:xyz", "x")),
            Some((r, false))
        );
        // The same address over TCP is another route, learned on its own.
        assert_eq!(d.route(Protocol::Tcp, a, b"\x80\x60rtp"), None);
        d.remove("abcd", &[(Protocol::Udp, a)]);
        assert_eq!(
            d.route(
                Protocol::Udp,
                a,
                &binding_request("abcd:xyz", "secretpassword")
            ),
            None
        );
    }

    #[test]
    fn stun_parser_survives_garbage() {
        assert!(stun_check(&[]).is_none());
        assert!(stun_check(&[0u8; 19]).is_none());
        let good = binding_request("u:v", "p");
        assert!(stun_check(&good).is_some_and(|c| c.ufrag == "u" && c.signed_by(&good, "p")));
        let mut m = good.clone();
        m[3] = 200; // length past the end
        assert!(stun_check(&m).is_none());
        for n in 0..good.len() {
            if let Some(c) = stun_check(&good[..n]) {
                let _ = c.signed_by(&good[..n], "p");
            }
        }
    }
}
