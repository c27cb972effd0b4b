//! Per-address rate limits for requests that cost the server something
//! (WebRTC offers, access-token exchanges): a token bucket per address, IPv6
//! taken per /64 (one subscriber's whole prefix, which it can rotate through
//! freely). The map is bounded: when full, buckets that have refilled (they
//! carry no information) are dropped, and if none has, the new address
//! shares one overflow bucket instead of growing the map.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// At most this many addresses are tracked per limiter.
const MAX_TRACKED: usize = 65_536;

/// The key an address is limited under: IPv4 as is, IPv6 by its /64.
pub fn network_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

pub struct RateLimiter {
    /// Requests allowed in a burst.
    burst: f64,
    /// Tokens added per second.
    per_sec: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl RateLimiter {
    /// `per_minute` requests a minute, `burst` at once; 0 per minute: no limit.
    pub fn new(per_minute: u32, burst: u32) -> RateLimiter {
        RateLimiter {
            burst: f64::from(burst.max(1)),
            per_sec: f64::from(per_minute) / 60.0,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.per_sec > 0.0
    }

    /// Takes one request for `ip`; `Err(seconds)` when over the limit, with
    /// the seconds until the next one is allowed.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), u32> {
        if !self.enabled() {
            return Ok(());
        }
        let key = network_of(ip);
        let mut map = self.buckets.lock();
        if map.len() >= MAX_TRACKED && !map.contains_key(&key) {
            let full = self.burst;
            let per_sec = self.per_sec;
            map.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * per_sec < full);
        }
        let key = if map.len() >= MAX_TRACKED && !map.contains_key(&key) {
            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
        } else {
            key
        };
        let b = map.entry(key).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.per_sec).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let wait = Duration::from_secs_f64((1.0 - b.tokens) / self.per_sec);
            Err(wait.as_secs().max(1).min(u64::from(u32::MAX)) as u32)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refills() {
        let r = RateLimiter::new(60, 3);
        let t = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(r.check(a, t), Ok(()));
        }
        assert_eq!(r.check(a, t), Err(1));
        // Another address has its own bucket.
        assert_eq!(r.check("192.0.2.2".parse().unwrap(), t), Ok(()));
        assert_eq!(r.check(a, t + Duration::from_millis(1100)), Ok(()));
    }

    #[test]
    fn ipv6_is_limited_per_64() {
        let r = RateLimiter::new(60, 1);
        let t = Instant::now();
        assert_eq!(r.check("2001:db8:1:2::1".parse().unwrap(), t), Ok(()));
        assert!(r.check("2001:db8:1:2:ffff::9".parse().unwrap(), t).is_err());
        assert_eq!(r.check("2001:db8:1:3::1".parse().unwrap(), t), Ok(()));
    }

    #[test]
    fn zero_is_no_limit() {
        let r = RateLimiter::new(0, 0);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..1000 {
            assert_eq!(r.check(a, Instant::now()), Ok(()));
        }
    }
}

/// How many of something (blocking playlist reloads) may be waiting at once,
/// in all and per client address (IPv6: per /64).
pub struct Concurrency {
    max_total: usize,
    max_per_address: usize,
    inner: Arc<Mutex<(usize, HashMap<IpAddr, usize>)>>,
}

/// One place taken; given back when dropped.
pub struct Slot {
    inner: Arc<Mutex<(usize, HashMap<IpAddr, usize>)>>,
    key: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut g = self.inner.lock();
        g.0 -= 1;
        if let Some(n) = g.1.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                g.1.remove(&self.key);
            }
        }
    }
}

impl Concurrency {
    /// 0: no cap.
    pub fn new(max_total: usize, max_per_address: usize) -> Concurrency {
        Concurrency {
            max_total,
            max_per_address,
            inner: Arc::default(),
        }
    }

    /// A place for `ip`, or `None` when either cap is reached.
    pub fn enter(&self, ip: IpAddr) -> Option<Slot> {
        let key = network_of(ip);
        let mut g = self.inner.lock();
        if self.max_total > 0 && g.0 >= self.max_total {
            return None;
        }
        let n = g.1.get(&key).copied().unwrap_or(0);
        if self.max_per_address > 0 && n >= self.max_per_address {
            return None;
        }
        g.0 += 1;
        g.1.insert(key, n + 1);
        Some(Slot {
            inner: self.inner.clone(),
            key,
        })
    }
}

#[cfg(test)]
mod concurrency_tests {
    use super::*;

    #[test]
    fn caps_in_all_and_per_address() {
        let c = Concurrency::new(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let s1 = c.enter(a).unwrap();
        let _s2 = c.enter(a).unwrap();
        assert!(c.enter(a).is_none(), "per address");
        let _s3 = c.enter(b).unwrap();
        assert!(c.enter(b).is_none(), "in all");
        drop(s1);
        assert!(c.enter(a).is_some());
    }
}
