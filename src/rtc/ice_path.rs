//! Which address a viewer's media goes to, after its client moved: a NAT
//! rebinding (same ICE credentials, a new source address) or an ICE restart
//! (new credentials, often a new address too).
//!
//! str0m (ICE-lite, controlled) sends to the best *nominated* pair and keeps
//! it while it lives: in `is` 0.12 `IceAgent::evaluate_nomination`
//! (agent.rs, "if nominated == best_prio.prio() { return }") a pair from a
//! new address only wins if its priority is higher, and a peer-reflexive
//! pair made from a check's PRIORITY usually is not higher than the pair of
//! the candidate the client signalled. The old pair is pruned only 15 s
//! after its last binding request (`RECENT_BINDING_REQUEST` in pair.rs), and
//! until then every packet goes to an address nobody listens on. str0m has
//! no call to choose the send path, but `DirectApi::invalidate_candidate`
//! removes a remote candidate with its pairs, and the next timeout then
//! nominates the best pair left: the new one.
//!
//! When to do it is decided here, sans I/O, from what the session hears and
//! what str0m answers. A path is *nominated* when a binding request from it
//! carried USE-CANDIDATE and str0m answered it (str0m answers only checks
//! with the right credentials and integrity). The old path is dropped when:
//! - an ICE restart is pending and the new credentials are nominated from
//!   another address (the old ones are dead: str0m refuses their checks);
//! - or the current path has been silent for [`REBIND_SILENCE`] while
//!   another is nominated and alive (a NAT rebinding). The silence keeps a
//!   client that nominates two live paths at once (aggressive nomination)
//!   from being flipped between them.
//!
//! A dropped address stays refused by str0m for the session's life (it
//! ignores checks from a discarded candidate): a NAT that maps the client
//! back to an address it left needs an ICE restart.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::net::{Protocol, Transmit};
use str0m::{Candidate, CandidateKind, IceCreds, Rtc};

/// The current path is given up for a nominated new one after this much
/// silence. Clients send something at least every ~2.5 s on their path
/// (Chrome's pings on the selected pair every 2.5 s, RTCP receiver reports
/// every second for video; RFC 7675 consent checks every 4–6 s).
pub const REBIND_SILENCE: Duration = Duration::from_secs(3);
/// Addresses remembered per session (the least recently heard is forgotten;
/// the current path never is).
const PATHS: usize = 8;

#[derive(Debug, Clone, Copy)]
struct Path {
    proto: Protocol,
    addr: SocketAddr,
    heard: Instant,
    /// The last binding request from it carried USE-CANDIDATE.
    asks_use: bool,
    /// str0m answered a USE-CANDIDATE check from it.
    nominated: bool,
    /// Heard before the last ICE restart (its credentials are gone).
    old_creds: bool,
}

/// A session's view of its client's addresses. Fixed size, no allocation.
#[derive(Debug, Default)]
pub struct IcePath {
    paths: [Option<Path>; PATHS],
    /// Where str0m sends media (its last non-STUN datagram).
    sending_to: Option<(Protocol, SocketAddr)>,
    /// An ICE restart was applied and its new path is not nominated yet.
    restart_pending: bool,
}

/// Addresses to drop, from [`IcePath::sent`]: the remembered paths' slots
/// and the current path (which may have been forgotten).
pub type Stale = [Option<(Protocol, SocketAddr)>; PATHS + 1];

impl IcePath {
    /// A datagram arrived from `source`.
    pub fn heard(&mut self, now: Instant, proto: Protocol, source: SocketAddr, data: &[u8]) {
        // Binding requests only (STUN: first byte 0 or 1; type 0x0001).
        let asks_use = data.len() >= 20
            && data[0] == 0
            && data[1] == 1
            && str0m::ice::StunMessage::parse(data).is_ok_and(|m| m.use_candidate());
        let i = self
            .find(proto, source)
            .unwrap_or_else(|| self.slot_for_new());
        let p = self.paths[i].get_or_insert(Path {
            proto,
            addr: source,
            heard: now,
            asks_use: false,
            nominated: false,
            old_creds: false,
        });
        p.heard = now;
        if data.first().is_some_and(|b| *b < 2) {
            p.asks_use = asks_use;
        }
    }

    /// The session's credentials changed (an ICE restart): every path known
    /// so far is dropped once the new credentials are nominated elsewhere.
    pub fn restarted(&mut self) {
        self.restart_pending = true;
        for p in self.paths.iter_mut().flatten() {
            p.old_creds = true;
            p.nominated = false;
        }
    }

    /// str0m sends `t`; returns the addresses whose candidates should be
    /// dropped now (see the module's comment).
    pub fn sent(&mut self, now: Instant, t: &Transmit) -> Option<Stale> {
        let c = &t.contents;
        let stun = c.len() >= 20 && c[0] < 2;
        if !stun {
            self.sending_to = Some((t.proto, t.destination));
            return None;
        }
        // A binding success response: str0m accepted a check from there.
        if c[0] != 0x01 || c[1] != 0x01 {
            return None;
        }
        let i = self.find(t.proto, t.destination)?;
        let to = self.paths[i].as_mut()?;
        if !to.asks_use {
            return None;
        }
        to.nominated = true;
        to.old_creds = false;
        let new = (to.proto, to.addr);
        let (cur_proto, cur_addr) = self.sending_to?;
        if (cur_proto, cur_addr) == new {
            self.restart_pending = false;
            return None;
        }
        let mut stale: Stale = [None; PATHS + 1];
        if self.restart_pending {
            self.restart_pending = false;
            for (s, p) in stale.iter_mut().zip(self.paths.iter_mut()) {
                if p.is_some_and(|p| p.old_creds) {
                    *s = p.take().map(|p| (p.proto, p.addr));
                }
            }
            if !stale.contains(&Some((cur_proto, cur_addr))) {
                stale[PATHS] = Some((cur_proto, cur_addr));
            }
        } else {
            let cur = self.find(cur_proto, cur_addr);
            let silent = cur
                .and_then(|i| self.paths[i])
                .is_none_or(|p| now.saturating_duration_since(p.heard) >= REBIND_SILENCE);
            if !silent {
                return None;
            }
            if let Some(i) = cur {
                self.paths[i] = None;
            }
            stale[0] = Some((cur_proto, cur_addr));
        }
        // The new path is where media goes from now on.
        self.sending_to = Some(new);
        Some(stale)
    }

    fn find(&self, proto: Protocol, addr: SocketAddr) -> Option<usize> {
        self.paths
            .iter()
            .position(|p| p.is_some_and(|p| p.proto == proto && p.addr == addr))
    }

    /// A free slot, or the least recently heard one that is not the
    /// current path.
    fn slot_for_new(&mut self) -> usize {
        if let Some(i) = self.paths.iter().position(Option::is_none) {
            return i;
        }
        let current = self.sending_to;
        let i = (0..PATHS)
            .filter(|&i| self.paths[i].is_some_and(|p| Some((p.proto, p.addr)) != current))
            .min_by_key(|&i| self.paths[i].map(|p| p.heard))
            .unwrap_or(0);
        self.paths[i] = None;
        i
    }
}

/// Drops the remote candidates at `stale` addresses from `rtc` (with their
/// pairs), and lets str0m nominate what is left. The remote candidate at an
/// address is the client's signalled host candidate, or a peer-reflexive one
/// str0m made from a check (`invalidate_candidate` matches the kind, the
/// address, the base and the related address, so each form is tried).
/// Returns how many were dropped.
pub fn drop_stale(rtc: &mut Rtc, now: Instant, stale: &Stale) -> usize {
    let mut dropped = 0;
    for &(proto, addr) in stale.iter().flatten() {
        let unspecified = SocketAddr::new(
            match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
            },
            0,
        );
        let forms = [
            (CandidateKind::Host, None),
            (CandidateKind::PeerReflexive, None),
            // Browsers hide a server-reflexive candidate's base this way.
            (CandidateKind::ServerReflexive, Some(unspecified)),
        ];
        for (kind, raddr) in forms {
            let c =
                Candidate::from_parts(String::new(), 1, proto, 0, addr, kind, raddr, None, None);
            if rtc.direct_api().invalidate_candidate(&c) {
                dropped += 1;
            }
        }
    }
    if dropped > 0 {
        // The agent re-nominates on its timeout.
        let _ = rtc.handle_input(str0m::Input::Timeout(now));
    }
    dropped
}

/// An ICE restart on its way to the viewer's shard. The engine has routed
/// the `local` ufrag to the shard already (the client's first check may
/// follow the answer at once); the shard applies it, forgets the old ufrag,
/// and says whether the session was there.
pub struct IceRestart {
    pub id: u64,
    pub local: IceCreds,
    pub remote: IceCreds,
    pub done: tokio::sync::oneshot::Sender<bool>,
}

#[cfg(test)]
mod tests {
    use str0m::ice::{StunMessage, TransId};
    use str0m::net::DatagramSend;

    use super::*;

    const SERVER: &str = "10.0.0.1:40000";
    const A: &str = "10.0.0.2:50000";
    const B: &str = "10.0.0.3:50001";

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A binding request, with USE-CANDIDATE or not (integrity with a dummy
    /// key: `IcePath` leaves checking it to str0m, which answers only good ones).
    fn check(use_candidate: bool) -> Vec<u8> {
        let m = StunMessage::binding_request("s:c", TransId::new(), true, 1, 100, use_candidate);
        let mut buf = vec![0u8; 200];
        let n = m.to_bytes(Some(b"pwd"), &mut buf, |_, _| [0; 20]).unwrap();
        buf.truncate(n);
        buf
    }

    fn transmit(to: &str, contents: &[u8]) -> Transmit {
        Transmit {
            proto: Protocol::Udp,
            source: addr(SERVER),
            destination: addr(to),
            contents: DatagramSend::from(contents.to_vec()),
        }
    }

    /// str0m's answer to a check (a binding success response).
    fn answer(to: &str) -> Transmit {
        let mut r = vec![0u8; 20];
        r[..2].copy_from_slice(&[0x01, 0x01]);
        transmit(to, &r)
    }

    fn media(to: &str) -> Transmit {
        transmit(to, &[0x80; 100])
    }

    /// A path on A with media going there; returns the clock.
    fn on_a() -> (IcePath, Instant) {
        let mut p = IcePath::default();
        let t = Instant::now();
        p.heard(t, Protocol::Udp, addr(A), &check(true));
        assert!(p.sent(t, &answer(A)).is_none());
        assert!(p.sent(t, &media(A)).is_none());
        (p, t)
    }

    fn dropped(s: Option<Stale>) -> Vec<SocketAddr> {
        s.map(|s| s.iter().flatten().map(|(_, a)| *a).collect())
            .unwrap_or_default()
    }

    #[test]
    fn two_live_nominated_paths_are_not_flipped() {
        let (mut p, mut t) = on_a();
        for _ in 0..20 {
            t += Duration::from_millis(500);
            p.heard(t, Protocol::Udp, addr(A), &[0x80; 50]);
            p.heard(t, Protocol::Udp, addr(B), &check(true));
            assert!(p.sent(t, &answer(B)).is_none(), "A is alive");
        }
    }

    #[test]
    fn a_silent_path_is_dropped_for_a_nominated_one_only() {
        let (mut p, t) = on_a();
        let later = t + REBIND_SILENCE;
        // Checks without USE-CANDIDATE do not move media.
        p.heard(later, Protocol::Udp, addr(B), &check(false));
        assert!(p.sent(later, &answer(B)).is_none());
        p.heard(later, Protocol::Udp, addr(B), &check(true));
        assert_eq!(dropped(p.sent(later, &answer(B))), [addr(A)]);
        // B is the path now: its own checks change nothing.
        assert!(p.sent(later, &answer(B)).is_none());
    }

    #[test]
    fn after_a_restart_the_old_paths_go_at_the_first_new_nomination() {
        let (mut p, t) = on_a();
        p.heard(t, Protocol::Udp, addr(B), &[0x80; 50]);
        p.restarted();
        let soon = t + Duration::from_millis(100);
        p.heard(soon, Protocol::Udp, addr(A), &[0x80; 50]);
        p.heard(soon, Protocol::Udp, addr(B), &check(true));
        // B was heard before the restart but nominated with the new credentials.
        assert_eq!(dropped(p.sent(soon, &answer(B))), [addr(A)]);
    }
}
