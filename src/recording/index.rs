//! The on-disk index of one recording (`index.txt` beside its media files),
//! and the HLS VOD playlist made from it. No I/O.
//!
//! A recording is one or more fragmented MP4 files, `0.mp4`, `1.mp4`…: each
//! starts with its init segment (`ftyp` + `moov`) followed by media segments
//! (`moof` + `mdat`), so each is also a progressive MP4 a player can read
//! from the start. A new file starts only when the init changes (another
//! codec or resolution after a takeover); a takeover with the same
//! parameters continues the file, with a discontinuity in the playlist.
//!
//! The index is appended one line per fact, after the bytes it describes
//! were written and fsynced, and fsynced itself:
//!
//! ```text
//! i FILE INIT_LEN
//! s FILE OFFSET LEN DURATION_US DISCONTINUITY PDT_MS
//! ```
//!
//! A crash can leave a torn last line (ignored) and bytes after the last
//! indexed segment (cut off at recovery); every indexed segment is whole.

use std::collections::BTreeMap;
use std::fmt::Write;

/// One media segment of a recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub file: u32,
    pub offset: u64,
    pub len: u64,
    pub duration_us: u64,
    /// After a takeover, a reconnect, a pause or lost frames.
    pub discontinuity: bool,
    /// Wall-clock time of its first sample, ms since the Unix epoch.
    pub pdt_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Index {
    /// Init segment length of each file (it starts the file).
    pub inits: BTreeMap<u32, u64>,
    pub segments: Vec<Segment>,
}

impl Index {
    /// Reads an index; lines that do not parse (a torn last line after a
    /// crash, or garbage) are skipped, as are segments of files without an
    /// init line or that do not follow the file's previous end.
    pub fn parse(text: &str) -> Index {
        let mut index = Index::default();
        for line in text.split_inclusive('\n') {
            let Some(line) = line.strip_suffix('\n') else {
                break; // torn: written but not completed
            };
            let f: Vec<&str> = line.split(' ').collect();
            match f.as_slice() {
                ["i", file, len] => {
                    if let (Ok(file), Ok(len)) = (file.parse(), len.parse()) {
                        index.inits.entry(file).or_insert(len);
                    }
                }
                ["s", file, offset, len, dur, disc, pdt] => {
                    let seg = (|| {
                        Some(Segment {
                            file: file.parse().ok()?,
                            offset: offset.parse().ok()?,
                            len: len.parse().ok()?,
                            duration_us: dur.parse().ok()?,
                            discontinuity: *disc == "1",
                            pdt_ms: pdt.parse().ok()?,
                        })
                    })();
                    if let Some(seg) = seg
                        && index.file_end(seg.file) == Some(seg.offset)
                        && seg.len > 0
                    {
                        index.segments.push(seg);
                    }
                }
                _ => {}
            }
        }
        index
    }

    pub fn init_line(file: u32, len: u64) -> String {
        format!("i {file} {len}\n")
    }

    pub fn segment_line(s: &Segment) -> String {
        format!(
            "s {} {} {} {} {} {}\n",
            s.file,
            s.offset,
            s.len,
            s.duration_us,
            u8::from(s.discontinuity),
            s.pdt_ms
        )
    }

    /// Where the next segment of `file` goes: after its last segment, or
    /// after its init. `None`: the file has no init.
    pub fn file_end(&self, file: u32) -> Option<u64> {
        let init = *self.inits.get(&file)?;
        Some(
            self.segments
                .iter()
                .rev()
                .find(|s| s.file == file)
                .map_or(init, |s| s.offset + s.len),
        )
    }

    pub fn duration_us(&self) -> u64 {
        self.segments.iter().map(|s| s.duration_us).sum()
    }

    /// Bytes of every file up to its last indexed segment.
    pub fn bytes(&self) -> u64 {
        self.inits
            .keys()
            .filter_map(|&f| self.file_end(f))
            .sum::<u64>()
    }

    /// The file a progressive download serves: the one with the most
    /// media (the only one unless the codec changed mid-recording).
    pub fn main_file(&self) -> Option<u32> {
        let mut per_file: BTreeMap<u32, u64> = BTreeMap::new();
        for s in &self.segments {
            *per_file.entry(s.file).or_default() += s.duration_us;
        }
        per_file
            .into_iter()
            .max_by_key(|&(f, d)| (d, std::cmp::Reverse(f)))
            .map(|(f, _)| f)
    }

    /// The HLS playlist: byte ranges of the files, an `EXT-X-MAP` per file,
    /// a discontinuity where one happened, `EXT-X-PROGRAM-DATE-TIME` on
    /// each segment (so a page can put the room's chat beside the video),
    /// and `EXT-X-ENDLIST` once the recording is finished (`VOD`; `EVENT`
    /// while it grows). `suffix` goes after each URI (`?access=…`).
    pub fn render_playlist(&self, finished: bool, suffix: &str) -> String {
        let target = self
            .segments
            .iter()
            .map(|s| s.duration_us.div_ceil(1_000_000))
            .max()
            .unwrap_or(1)
            .max(1);
        let mut out = String::with_capacity(128 + self.segments.len() * 120);
        out.push_str("#EXTM3U\n#EXT-X-VERSION:7\n");
        let _ = writeln!(out, "#EXT-X-TARGETDURATION:{target}");
        let _ = writeln!(
            out,
            "#EXT-X-PLAYLIST-TYPE:{}",
            if finished { "VOD" } else { "EVENT" }
        );
        out.push_str("#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-INDEPENDENT-SEGMENTS\n");
        let mut file = None;
        for (i, s) in self.segments.iter().enumerate() {
            if i > 0 && (s.discontinuity || file != Some(s.file)) {
                out.push_str("#EXT-X-DISCONTINUITY\n");
            }
            if file != Some(s.file) {
                let init = self.inits.get(&s.file).copied().unwrap_or(0);
                let _ = writeln!(
                    out,
                    "#EXT-X-MAP:URI=\"{}.mp4{suffix}\",BYTERANGE=\"{init}@0\"",
                    s.file
                );
                file = Some(s.file);
            }
            let _ = writeln!(out, "#EXT-X-PROGRAM-DATE-TIME:{}", rfc3339_ms(s.pdt_ms));
            let _ = writeln!(
                out,
                "#EXTINF:{}.{:06},\n#EXT-X-BYTERANGE:{}@{}\n{}.mp4{suffix}",
                s.duration_us / 1_000_000,
                s.duration_us % 1_000_000,
                s.len,
                s.offset,
                s.file
            );
        }
        if finished {
            out.push_str("#EXT-X-ENDLIST\n");
        }
        out
    }
}

/// `2026-11-30T08:00:00.000Z`
fn rfc3339_ms(ms: u64) -> String {
    let t = time::OffsetDateTime::UNIX_EPOCH + time::Duration::milliseconds(ms as i64);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(file: u32, offset: u64, len: u64, disc: bool) -> Segment {
        Segment {
            file,
            offset,
            len,
            duration_us: 4_000_000,
            discontinuity: disc,
            pdt_ms: 1_800_000_000_000,
        }
    }

    #[test]
    fn lines_round_trip_and_a_torn_or_misplaced_line_is_skipped() {
        let mut text = Index::init_line(0, 700);
        text += &Index::segment_line(&seg(0, 700, 1000, false));
        text += &Index::segment_line(&seg(0, 1700, 500, true));
        // Not where file 0 ends: skipped.
        text += &Index::segment_line(&seg(0, 9999, 5, false));
        text += &Index::init_line(1, 650);
        text += &Index::segment_line(&seg(1, 650, 300, false));
        text += "s 1 950 12 40"; // torn
        let i = Index::parse(&text);
        assert_eq!(i.segments.len(), 3);
        assert_eq!(i.file_end(0), Some(2200));
        assert_eq!(i.file_end(1), Some(950));
        assert_eq!(i.bytes(), 2200 + 950);
        assert_eq!(i.duration_us(), 12_000_000);
        assert_eq!(i.main_file(), Some(0));
    }

    #[test]
    fn the_playlist_has_byte_ranges_maps_and_discontinuities() {
        let mut i = Index::default();
        i.inits.insert(0, 700);
        i.inits.insert(1, 650);
        i.segments = vec![
            seg(0, 700, 1000, false),
            seg(0, 1700, 500, true),
            seg(1, 650, 300, false),
        ];
        let p = i.render_playlist(true, "?access=t");
        assert!(p.starts_with("#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:4\n"));
        assert!(p.contains("#EXT-X-PLAYLIST-TYPE:VOD\n"));
        assert!(p.contains("#EXT-X-MAP:URI=\"0.mp4?access=t\",BYTERANGE=\"700@0\"\n"));
        assert!(p.contains("#EXTINF:4.000000,\n#EXT-X-BYTERANGE:1000@700\n0.mp4?access=t\n"));
        assert!(p.contains("#EXT-X-PROGRAM-DATE-TIME:2027-01-15T08:00:00.000Z\n"));
        assert_eq!(p.matches("#EXT-X-DISCONTINUITY\n").count(), 2);
        assert_eq!(p.matches("#EXT-X-MAP").count(), 2);
        assert!(p.ends_with("#EXT-X-ENDLIST\n"));
        let growing = i.render_playlist(false, "");
        assert!(growing.contains("#EXT-X-PLAYLIST-TYPE:EVENT\n"));
        assert!(!growing.contains("ENDLIST"));
    }
}
