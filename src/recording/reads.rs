//! Reading a recording's media for clients, bounded: the download and the
//! HLS byte ranges stream in chunks from one open file (a recording can be
//! gigabytes: never in memory at once); the WebM replay reads whole
//! segments within the recorder's memory budget for reads. Blocking reads
//! run in blocking threads.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::OwnedSemaphorePermit;

use super::{MAX_SEGMENT_BYTES, Recorder};

/// Bytes read from disk per chunk of a streamed body.
const CHUNK: usize = 256 * 1024;
/// Segments read whole into memory at once, over all clients.
pub(super) const READ_BUDGET_KIB: usize = 128 << 10;
/// How long a request waits for that memory before it is refused.
const READ_BUDGET_WAIT: Duration = Duration::from_secs(10);
/// The longest segment read whole: what the recorder lets a segment's
/// media grow to, and its fragment headers (a sample's entry is at most 16
/// bytes; 1/16 more is far beyond them). More means a damaged index.
const MAX_SEGMENT_READ: u64 = MAX_SEGMENT_BYTES as u64 + (MAX_SEGMENT_BYTES as u64 / 16);

/// `len` bytes of `file` from `offset`.
fn read_at(file: &File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; usize::try_from(len).map_err(io::Error::other)?];
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

fn joined<T>(r: Result<io::Result<T>, tokio::task::JoinError>) -> io::Result<T> {
    r.unwrap_or_else(|e| Err(io::Error::other(e.to_string())))
}

/// `count` bytes of `path` from `start`, chunk by chunk from one open file.
/// A read that fails ends the stream with its error (the client sees a
/// truncated body).
pub fn chunks(path: PathBuf, start: u64, count: u64) -> impl Stream<Item = io::Result<Bytes>> {
    type Open = Option<Arc<File>>;
    let state: (Open, PathBuf, u64, u64) = (None, path, start, count);
    futures_util::stream::unfold(state, |(file, path, pos, left)| async move {
        if left == 0 {
            return None;
        }
        let want = left.min(CHUNK as u64);
        let p = path.clone();
        let read = joined(
            tokio::task::spawn_blocking(move || {
                let f = match file {
                    Some(f) => f,
                    None => Arc::new(File::open(&p)?),
                };
                let buf = read_at(&f, pos, want)?;
                Ok((Some(f), buf))
            })
            .await,
        );
        match read {
            Ok((file, buf)) => Some((Ok(Bytes::from(buf)), (file, path, pos + want, left - want))),
            Err(e) => Some((Err(e), (None, path, pos, 0))),
        }
    })
}

impl Recorder {
    /// Room to read `len` bytes into memory for a client (held until
    /// dropped); `None` when the server's budget stays taken.
    async fn read_permit(&self, len: u64) -> Option<OwnedSemaphorePermit> {
        let kib = u32::try_from(len.div_ceil(1024).clamp(1, READ_BUDGET_KIB as u64)).ok()?;
        tokio::time::timeout(
            READ_BUDGET_WAIT,
            self.read_budget.clone().acquire_many_owned(kib),
        )
        .await
        .ok()?
        .ok()
    }

    /// `len` bytes of `path` from `offset` (one segment: seconds of media),
    /// within the memory budget for reads, counted twice: the segment and
    /// what is made from it are in memory until sent. The permit goes with
    /// the bytes: hold it until they are turned into what is sent.
    /// `WouldBlock` when the budget stayed taken (many replays at once).
    pub async fn read_segment(
        &self,
        path: PathBuf,
        offset: u64,
        len: u64,
    ) -> io::Result<(Vec<u8>, OwnedSemaphorePermit)> {
        if len > MAX_SEGMENT_READ {
            return Err(io::Error::other(format!(
                "a segment of {len} bytes is larger than {MAX_SEGMENT_READ}"
            )));
        }
        let Some(permit) = self.read_permit(len.saturating_mul(2)).await else {
            return Err(io::Error::from(io::ErrorKind::WouldBlock));
        };
        let data = joined(
            tokio::task::spawn_blocking(move || read_at(&File::open(&path)?, offset, len)).await,
        )?;
        Ok((data, permit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn chunks_cover_the_range_and_a_missing_file_ends_with_its_error() {
        use futures_util::StreamExt;
        let dir = std::env::temp_dir().join(format!("roomcast-reads-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("0.mp4");
        let data: Vec<u8> = (0..CHUNK * 2 + 100).map(|i| i as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let got: Vec<Bytes> = chunks(path.clone(), 10, (CHUNK + 50) as u64)
            .map(|c| c.unwrap())
            .collect()
            .await;
        assert_eq!(got.len(), 2, "one chunk and the rest");
        assert_eq!(got.concat(), data[10..10 + CHUNK + 50]);
        assert_eq!(chunks(path.clone(), 0, 0).count().await, 0);
        let missing: Vec<_> = chunks(dir.join("9.mp4"), 0, 10).collect().await;
        assert_eq!(missing.len(), 1);
        assert!(missing[0].is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
