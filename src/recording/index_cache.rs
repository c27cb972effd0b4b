//! Parsed recording indexes, kept for the HTTP paths: a player asks for a
//! recording's playlist and then for each segment (often several `Range`
//! requests each), and every one needs the index. Re-reading and re-parsing
//! `index.txt` (hundreds of kB for a long recording) per request let a few
//! clients keep a disk and a core busy. Bounded in bytes, least recently
//! used first out. A finished recording's index never changes; a growing
//! one's is re-read at most every [`GROWING_TTL`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::index::{Index, Segment};

/// How long a growing recording's index is served from memory (its
/// playlist is polled every few seconds by every player).
pub const GROWING_TTL: Duration = Duration::from_secs(1);
/// The cache's size (parsed indexes: ~40 bytes per segment, so about
/// 400 000 segments: a year of 4 s segments across all recordings).
pub const MAX_BYTES: usize = 16 << 20;

struct Entry {
    index: Arc<Index>,
    bytes: usize,
    finished: bool,
    read_at: Instant,
    tick: u64,
}

#[derive(Default)]
struct Inner {
    map: HashMap<String, Entry>,
    /// tick → id, oldest use first.
    lru: BTreeMap<u64, String>,
    bytes: usize,
    tick: u64,
}

pub struct IndexCache {
    inner: Mutex<Inner>,
    max_bytes: usize,
}

/// Memory an index takes (what the bound counts).
pub fn size_of(id: &str, index: &Index) -> usize {
    128 + id.len() + index.segments.len() * std::mem::size_of::<Segment>() + index.inits.len() * 32
}

impl IndexCache {
    pub fn new(max_bytes: usize) -> IndexCache {
        IndexCache {
            inner: Mutex::default(),
            max_bytes,
        }
    }

    /// The cached index of `id`, if it is still good at `now` (a growing
    /// recording's for [`GROWING_TTL`]; `finished`: the row says it ended,
    /// so an index cached while it grew is read again once).
    pub fn get(&self, id: &str, finished: bool, now: Instant) -> Option<Arc<Index>> {
        let mut g = self.inner.lock();
        let inner = &mut *g;
        let e = inner.map.get_mut(id)?;
        let fresh = if e.finished {
            true
        } else {
            !finished && now.saturating_duration_since(e.read_at) < GROWING_TTL
        };
        if !fresh {
            return None;
        }
        inner.tick += 1;
        inner.lru.remove(&e.tick);
        e.tick = inner.tick;
        inner.lru.insert(e.tick, id.to_string());
        Some(e.index.clone())
    }

    /// Keeps `index` of `id` (read at `now`); the least recently used go
    /// while over the bound. One bigger than the whole bound is not kept.
    pub fn put(&self, id: &str, index: Index, finished: bool, now: Instant) -> Arc<Index> {
        let index = Arc::new(index);
        let bytes = size_of(id, &index);
        let mut g = self.inner.lock();
        let inner = &mut *g;
        if let Some(old) = inner.map.remove(id) {
            inner.lru.remove(&old.tick);
            inner.bytes -= old.bytes;
        }
        if bytes > self.max_bytes {
            return index;
        }
        while inner.bytes + bytes > self.max_bytes {
            let Some((_, oldest)) = inner.lru.pop_first() else {
                break;
            };
            if let Some(e) = inner.map.remove(&oldest) {
                inner.bytes -= e.bytes;
            }
        }
        inner.tick += 1;
        let tick = inner.tick;
        inner.lru.insert(tick, id.to_string());
        inner.bytes += bytes;
        inner.map.insert(
            id.to_string(),
            Entry {
                index: index.clone(),
                bytes,
                finished,
                read_at: now,
                tick,
            },
        );
        index
    }

    /// A deleted recording's index goes.
    pub fn forget(&self, id: &str) {
        let mut g = self.inner.lock();
        let inner = &mut *g;
        if let Some(e) = inner.map.remove(id) {
            inner.lru.remove(&e.tick);
            inner.bytes -= e.bytes;
        }
    }

    pub fn bytes(&self) -> usize {
        self.inner.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(segments: usize) -> Index {
        let mut i = Index::default();
        i.inits.insert(0, 100);
        for n in 0..segments {
            i.segments.push(Segment {
                file: 0,
                offset: 100 + n as u64 * 10,
                len: 10,
                duration_us: 4_000_000,
                discontinuity: false,
                pdt_ms: 0,
            });
        }
        i
    }

    #[test]
    fn finished_indexes_stay_growing_ones_expire() {
        let c = IndexCache::new(MAX_BYTES);
        let t = Instant::now();
        c.put("done", index(3), true, t);
        c.put("growing", index(3), false, t);
        let later = t + Duration::from_secs(3600);
        assert_eq!(c.get("done", true, later).unwrap().segments.len(), 3);
        assert!(c.get("growing", false, t + GROWING_TTL / 2).is_some());
        assert!(c.get("growing", false, t + GROWING_TTL).is_none());
        // It ended: what was cached while it grew is read again.
        assert!(c.get("growing", true, t).is_none());
        assert!(c.get("nope", true, t).is_none());
        c.forget("done");
        assert!(c.get("done", true, t).is_none());
    }

    #[test]
    fn bounded_in_bytes_least_recently_used_out() {
        let one = size_of("a", &index(100));
        let c = IndexCache::new(one * 3);
        let t = Instant::now();
        for id in ["a", "b", "c"] {
            c.put(id, index(100), true, t);
        }
        assert_eq!(c.bytes(), one * 3);
        // "a" used: "b" is the oldest use when "d" comes.
        assert!(c.get("a", true, t).is_some());
        c.put("d", index(100), true, t);
        assert!(c.bytes() <= one * 3);
        assert!(c.get("b", true, t).is_none());
        for id in ["a", "c", "d"] {
            assert!(c.get(id, true, t).is_some(), "{id}");
        }
        // Too big for the whole cache: served, not kept.
        let huge = c.put("huge", index(10_000), true, t);
        assert_eq!(huge.segments.len(), 10_000);
        assert!(c.get("huge", true, t).is_none());
        assert!(c.bytes() <= one * 3);
        // Replacing an entry does not count it twice.
        c.put("a", index(100), true, t);
        assert!(c.bytes() <= one * 3);
    }
}
