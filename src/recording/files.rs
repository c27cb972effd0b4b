//! The files of one recording (blocking I/O: called from `spawn_blocking`).
//! Media bytes are written and fsynced before the index line naming them,
//! which is fsynced too: a crash or power loss leaves every indexed segment
//! whole, and [`recover`] cuts whatever came after.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::index::{Index, Segment};

/// 128 random bits, hex: unguessable and URL-safe.
pub fn new_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Whether `id` can be a recording id (before it goes near a path).
pub fn valid_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

pub const INDEX: &str = "index.txt";

pub fn media_path(dir: &Path, file: u32) -> PathBuf {
    dir.join(format!("{file}.mp4"))
}

/// A segment ready to be written.
pub struct SegmentData {
    /// The init segment of the segment's codec parameters, and its number
    /// (a new number starts a new file).
    pub init_id: u32,
    pub init: Bytes,
    pub chunks: Vec<Bytes>,
    pub duration_us: u64,
    pub discontinuity: bool,
    pub pdt_ms: u64,
}

/// What a recording wrote so far, and its open files.
pub struct RecordingFiles {
    pub dir: PathBuf,
    pub index: Index,
    /// The init id of the file being written, and the file.
    current: Option<(u32, u32, File)>,
    index_file: Option<File>,
}

impl RecordingFiles {
    /// A new recording's directory.
    pub fn create(dir: PathBuf) -> io::Result<RecordingFiles> {
        fs::create_dir_all(&dir)?;
        Ok(RecordingFiles {
            dir,
            index: Index::default(),
            current: None,
            index_file: None,
        })
    }

    /// Appends one segment (and, first, a new file with its init when the
    /// init changed). On error the files are as before the call, as far as
    /// the index says; the caller retries with the next segment.
    pub fn write(&mut self, seg: &SegmentData) -> io::Result<u64> {
        self.check_present()?;
        let mut written = 0;
        let file_no = match &self.current {
            Some((init_id, no, _)) if *init_id == seg.init_id => *no,
            _ => {
                let no = self.index.inits.keys().next_back().map_or(0, |n| n + 1);
                let path = media_path(&self.dir, no);
                let mut f = OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .write(true)
                    .open(&path)?;
                let res = f.write_all(&seg.init).and_then(|_| f.sync_all());
                if let Err(e) = res {
                    let _ = fs::remove_file(&path);
                    return Err(e);
                }
                // The directory entry of the new file must survive a crash too.
                sync_dir(&self.dir);
                self.append_index(&Index::init_line(no, seg.init.len() as u64))?;
                self.index.inits.insert(no, seg.init.len() as u64);
                written += seg.init.len() as u64;
                self.current = Some((seg.init_id, no, f));
                no
            }
        };
        let offset = self.index.file_end(file_no).expect("file has an init");
        let len: u64 = seg.chunks.iter().map(|c| c.len() as u64).sum();
        let (_, _, f) = self.current.as_mut().expect("opened above");
        let res = (|| {
            for c in &seg.chunks {
                f.write_all(c)?;
            }
            f.sync_data()
        })();
        if let Err(e) = res {
            // Cut the partial segment so the next one lands at the indexed end.
            let _ = f.set_len(offset);
            let _ = io::Seek::seek(f, io::SeekFrom::Start(offset));
            return Err(e);
        }
        let s = Segment {
            file: file_no,
            offset,
            len,
            duration_us: seg.duration_us,
            discontinuity: seg.discontinuity,
            pdt_ms: seg.pdt_ms,
        };
        if let Err(e) = self.append_index(&Index::segment_line(&s)) {
            let (_, _, f) = self.current.as_mut().expect("opened above");
            let _ = f.set_len(offset);
            let _ = io::Seek::seek(f, io::SeekFrom::Start(offset));
            return Err(e);
        }
        self.index.segments.push(s);
        Ok(written + len)
    }

    /// Someone deleted the directory or a file under us: writing on into an
    /// unlinked file would lose everything silently. The error says so; the
    /// next write starts over in a fresh file (the deleted part is gone).
    fn check_present(&mut self) -> io::Result<()> {
        let index_gone = self.index_file.is_some() && !self.dir.join(INDEX).exists();
        let media_gone = self
            .current
            .as_ref()
            .is_some_and(|(_, no, _)| !media_path(&self.dir, *no).exists());
        if !index_gone && !media_gone {
            if !self.dir.exists() {
                fs::create_dir_all(&self.dir)?;
            }
            return Ok(());
        }
        self.current = None;
        self.index_file = None;
        let _ = fs::remove_file(self.dir.join(INDEX));
        self.index = Index::default();
        fs::create_dir_all(&self.dir)?;
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            "the recording's files were deleted while it was written; it starts over in new files",
        ))
    }

    fn append_index(&mut self, line: &str) -> io::Result<()> {
        if self.index_file.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(INDEX))?;
            self.index_file = Some(f);
            sync_dir(&self.dir);
        }
        let f = self.index_file.as_mut().expect("opened above");
        let res = f.write_all(line.as_bytes()).and_then(|_| f.sync_data());
        if res.is_err() {
            // A torn line would hide every later one: rewrite it whole next time.
            self.index_file = None;
            let _ = rewrite_index(&self.dir, &self.index);
        }
        res
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

fn render(index: &Index) -> String {
    let mut text = String::new();
    for (&file, &len) in &index.inits {
        text += &Index::init_line(file, len);
        for s in index.segments.iter().filter(|s| s.file == file) {
            text += &Index::segment_line(s);
        }
    }
    text
}

fn rewrite_index(dir: &Path, index: &Index) -> io::Result<()> {
    let tmp = dir.join("index.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(render(index).as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join(INDEX))?;
    sync_dir(dir);
    Ok(())
}

/// Reads a recording's index (`None`: no index, nothing was written).
pub fn read_index(dir: &Path) -> io::Result<Option<Index>> {
    match fs::read_to_string(dir.join(INDEX)) {
        Ok(text) => Ok(Some(Index::parse(&text))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// After a crash: keeps what the index names (segments whose bytes are all
/// there), cuts the bytes after it, and rewrites the index without a torn
/// line. Returns the index.
pub fn recover(dir: &Path) -> io::Result<Index> {
    let mut index = read_index(dir)?.unwrap_or_default();
    // A file shorter than the index says (a lost write) ends the index there.
    let mut keep = Vec::with_capacity(index.segments.len());
    let mut cut_files = std::collections::BTreeSet::new();
    for s in &index.segments {
        let len = fs::metadata(media_path(dir, s.file)).map_or(0, |m| m.len());
        if cut_files.contains(&s.file) || len < s.offset + s.len {
            cut_files.insert(s.file);
            continue;
        }
        keep.push(*s);
    }
    index.segments = keep;
    let inits: Vec<(u32, u64)> = index.inits.iter().map(|(&f, &l)| (f, l)).collect();
    for (file, init_len) in inits {
        let path = media_path(dir, file);
        let len = fs::metadata(&path).map_or(0, |m| m.len());
        if len < init_len {
            index.inits.remove(&file);
            index.segments.retain(|s| s.file != file);
            continue;
        }
        let end = index.file_end(file).unwrap_or(init_len);
        if len > end {
            OpenOptions::new().write(true).open(&path)?.set_len(end)?;
        }
    }
    rewrite_index(dir, &index)?;
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(init_id: u32, init: &[u8], body: &[u8]) -> SegmentData {
        SegmentData {
            init_id,
            init: Bytes::copy_from_slice(init),
            chunks: vec![Bytes::copy_from_slice(body)],
            duration_us: 2_000_000,
            discontinuity: false,
            pdt_ms: 5,
        }
    }

    #[test]
    fn segments_append_a_new_init_starts_a_file_and_recovery_cuts_the_tail() {
        let dir = std::env::temp_dir().join(format!("rc-rec-{}", rand::random::<u64>()));
        let mut files = RecordingFiles::create(dir.clone()).unwrap();
        assert_eq!(files.write(&seg(0, b"INIT", b"aaaa")).unwrap(), 8);
        assert_eq!(files.write(&seg(0, b"INIT", b"bb")).unwrap(), 2);
        assert_eq!(files.write(&seg(3, b"NEWINIT", b"cc")).unwrap(), 9);
        assert_eq!(fs::read(media_path(&dir, 0)).unwrap(), b"INITaaaabb");
        assert_eq!(fs::read(media_path(&dir, 1)).unwrap(), b"NEWINITcc");
        // A crash mid-segment: bytes after the last indexed one, a torn line.
        OpenOptions::new()
            .append(true)
            .open(media_path(&dir, 1))
            .unwrap()
            .write_all(b"partial")
            .unwrap();
        OpenOptions::new()
            .append(true)
            .open(dir.join(INDEX))
            .unwrap()
            .write_all(b"s 1 9 7 20")
            .unwrap();
        drop(files);
        let index = recover(&dir).unwrap();
        assert_eq!(index.segments.len(), 3);
        assert_eq!(index.bytes(), 10 + 9);
        assert_eq!(fs::read(media_path(&dir, 1)).unwrap(), b"NEWINITcc");
        assert_eq!(read_index(&dir).unwrap().unwrap(), index);

        // Deleted under a running recording: an error, then a fresh start.
        let mut files = RecordingFiles::create(dir.clone()).unwrap();
        files.write(&seg(0, b"INIT", b"x")).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert!(files.write(&seg(0, b"INIT", b"y")).is_err());
        files.write(&seg(0, b"INIT", b"z")).unwrap();
        assert_eq!(fs::read(media_path(&dir, 0)).unwrap(), b"INITz");
        fs::remove_dir_all(&dir).unwrap();
    }
}
