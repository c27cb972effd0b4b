//! The bounded hand-off between the hub (publisher's task) and one push.
//!
//! `deliver` only enqueues an `Arc`. When the push falls behind (a slow
//! destination) and the queue is over its byte cap, everything queued is
//! dropped and nothing is taken until the next video keyframe: the
//! destination sees a jump, viewers and other pushes see nothing.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::hub::{Frame, FrameSink, Kind, SideSink, SourceAac, Stream};

pub enum Item {
    Video(Arc<Frame>),
    Aac(Arc<SourceAac>),
}

impl Item {
    fn bytes(&self) -> usize {
        match self {
            Item::Video(f) => f.bytes(),
            Item::Aac(a) => a.payload.len(),
        }
    }
}

struct Inner {
    items: VecDeque<Item>,
    bytes: usize,
    /// Over the cap: dropping until a keyframe.
    skipping: bool,
    /// Set when the consumer must resync its muxer (frames were dropped).
    gap: bool,
}

pub struct PushQueue {
    inner: Mutex<Inner>,
    notify: Notify,
    max_bytes: usize,
    /// Frames dropped because the push was behind (for the health line).
    pub dropped: AtomicU64,
}

impl PushQueue {
    pub fn new(max_bytes: usize) -> Arc<Self> {
        Arc::new(PushQueue {
            inner: Mutex::new(Inner {
                items: VecDeque::with_capacity(256),
                bytes: 0,
                skipping: false,
                gap: false,
            }),
            notify: Notify::new(),
            max_bytes,
            dropped: AtomicU64::new(0),
        })
    }

    fn push(&self, item: Item, keyframe: bool) {
        let bytes = item.bytes();
        {
            let mut q = self.inner.lock();
            if q.skipping && !keyframe {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            q.skipping = false;
            if q.bytes + bytes > self.max_bytes {
                let n = q.items.len() as u64 + 1;
                q.items.clear();
                q.bytes = 0;
                q.gap = true;
                self.dropped.fetch_add(n, Ordering::Relaxed);
                // This very frame may be the keyframe that ends the skip.
                if !keyframe {
                    q.skipping = true;
                    return;
                }
            }
            q.bytes += bytes;
            q.items.push_back(item);
        }
        self.notify.notify_one();
    }

    /// Takes everything queued into `out`; returns whether frames were
    /// dropped since the last call (the muxer must wait for a keyframe).
    pub async fn take(&self, out: &mut Vec<Item>) -> bool {
        loop {
            {
                let mut q = self.inner.lock();
                if !q.items.is_empty() {
                    out.extend(q.items.drain(..));
                    q.bytes = 0;
                    return std::mem::take(&mut q.gap);
                }
            }
            self.notify.notified().await;
        }
    }

    /// Drops what is queued (before a reconnect: it is stale by then).
    pub fn clear(&self) {
        let mut q = self.inner.lock();
        q.items.clear();
        q.bytes = 0;
        q.gap = true;
    }
}

impl FrameSink for PushQueue {
    fn deliver(&self, _stream: &Arc<Stream>, frame: &Arc<Frame>) {
        // Opus for viewers is not what a destination gets: audio comes from
        // the side track (the publisher's AAC).
        if frame.kind == Kind::Video {
            self.push(Item::Video(frame.clone()), frame.keyframe);
        }
    }
}

impl SideSink for PushQueue {
    fn deliver_aac(&self, _stream: &Arc<Stream>, aac: &Arc<SourceAac>) {
        self.push(Item::Aac(aac.clone()), false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn video(keyframe: bool, n: usize) -> Arc<Frame> {
        Arc::new(Frame {
            kind: Kind::Video,
            index: 0,
            kind_index: 0,
            rtp_time: 0,
            wallclock: Instant::now(),
            received: Instant::now(),
            keyframe,
            publisher: 1,
            payloads: Box::new([Arc::from(vec![0u8; n])]),
        })
    }

    #[tokio::test]
    async fn a_full_queue_skips_to_the_next_keyframe() {
        let q = PushQueue::new(100);
        let hub = crate::hub::Hub::new();
        let s = hub.ensure_stream("a", None);
        q.deliver(&s, &video(true, 40));
        q.deliver(&s, &video(false, 40));
        q.deliver(&s, &video(false, 40)); // over 100: all dropped, skipping
        q.deliver(&s, &video(false, 10)); // still skipping
        assert_eq!(q.dropped.load(Ordering::Relaxed), 4);
        q.deliver(&s, &video(true, 30));
        q.deliver(&s, &video(false, 30));
        let mut out = Vec::new();
        assert!(q.take(&mut out).await, "the consumer is told about the gap");
        assert_eq!(out.len(), 2);
        assert!(matches!(&out[0], Item::Video(f) if f.keyframe));
        out.clear();
        q.deliver(&s, &video(false, 30));
        assert!(!q.take(&mut out).await);
    }
}
