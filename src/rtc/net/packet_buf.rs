//! Receive buffers recycled between the network threads and the shards.
//!
//! A datagram used to be copied into a fresh `Vec` on the receiving thread and
//! freed on a shard's thread: an allocation per packet, and a free that lands
//! in another thread's malloc arena, under that arena's lock, once the shard's
//! thread cache is full. A [`PacketBuf`] is received into directly and, when
//! the shard drops it, goes back to a bounded pool for the next datagram.

use std::ops::Deref;
use std::sync::LazyLock;

use crossbeam_channel::{Receiver, Sender, bounded};

use super::MAX_DATAGRAM;

/// Idle buffers kept for reuse, `MAX_DATAGRAM` bytes each (2 MiB in all).
/// Beyond that a returned buffer is freed; when none is idle, one is
/// allocated. The shards' queues bound how many are in flight.
const POOL_BUFFERS: usize = 1024;

// One pool for the process: every engine's buffers are the same size, and a
// buffer carrying a pointer back to its pool would add a shared reference
// count bumped by two threads per packet. Both ends are lock-free.
static POOL: LazyLock<Pool> = LazyLock::new(|| {
    let (give, take) = bounded(POOL_BUFFERS);
    Pool { give, take }
});

struct Pool {
    give: Sender<Box<[u8]>>,
    take: Receiver<Box<[u8]>>,
}

/// One received packet: `MAX_DATAGRAM` bytes of storage, of which the first
/// `len()` hold the packet. Reads as the packet's bytes.
pub struct PacketBuf {
    storage: Box<[u8]>,
    len: usize,
}

impl PacketBuf {
    /// An empty buffer: an idle one from the pool when there is one.
    pub fn take() -> PacketBuf {
        let storage = POOL
            .take
            .try_recv()
            .unwrap_or_else(|_| vec![0; MAX_DATAGRAM].into_boxed_slice());
        PacketBuf { storage, len: 0 }
    }

    /// A buffer holding a copy of `data`, cut at `MAX_DATAGRAM` bytes.
    pub fn copy_of(data: &[u8]) -> PacketBuf {
        let mut b = PacketBuf::take();
        let n = data.len().min(MAX_DATAGRAM);
        b.storage[..n].copy_from_slice(&data[..n]);
        b.len = n;
        b
    }

    /// All the storage, to receive into; then [`PacketBuf::filled`] says how
    /// much arrived. Bytes past the packet are stale, never zeroed.
    pub fn space(&mut self) -> &mut [u8] {
        &mut self.storage
    }

    /// The first `n` bytes of the storage are the packet (`n` is clamped to
    /// the storage).
    pub fn filled(&mut self, n: usize) {
        self.len = n.min(self.storage.len());
    }
}

impl Deref for PacketBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.storage[..self.len]
    }
}

impl Drop for PacketBuf {
    fn drop(&mut self) {
        // A full pool frees the buffer here instead.
        let _ = POOL.give.try_send(std::mem::take(&mut self.storage));
    }
}

impl std::fmt::Debug for PacketBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketBuf").field("len", &self.len).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_reads_as_what_was_put_in_it() {
        let mut b = PacketBuf::take();
        assert!(b.is_empty());
        assert_eq!(b.space().len(), MAX_DATAGRAM);
        b.space()[..3].copy_from_slice(b"abc");
        b.filled(3);
        assert_eq!(&*b, b"abc");
        b.filled(MAX_DATAGRAM + 10);
        assert_eq!(b.len(), MAX_DATAGRAM);

        assert_eq!(&*PacketBuf::copy_of(b"hello"), b"hello");
        let long = vec![7u8; MAX_DATAGRAM + 1];
        assert_eq!(PacketBuf::copy_of(&long).len(), MAX_DATAGRAM);
    }

    #[test]
    fn a_dropped_buffer_is_taken_again() {
        // More than the pool keeps, so that afterwards it is full of these,
        // each marked: a new buffer is zeroed, a reused one keeps the mark.
        let mut held: Vec<PacketBuf> = (0..POOL_BUFFERS + 8).map(|_| PacketBuf::take()).collect();
        for b in &mut held {
            b.space().fill(0xa5);
        }
        drop(held);
        // Tests running alongside share the pool, so look at several.
        let mut again: Vec<PacketBuf> = (0..8).map(|_| PacketBuf::take()).collect();
        assert!(
            again
                .iter_mut()
                .any(|b| b.space().iter().all(|&x| x == 0xa5))
        );
        assert!(again.iter_mut().all(|b| b.space().len() == MAX_DATAGRAM));
    }
}
