//! What the recordings' HTTP surfaces serve, decided from a recording's
//! index without I/O: which file a request names, which bytes a `Range`
//! asks for, the progressive download, the parts of the WebM replay and the
//! caching of each. `http::recordings` and `http::replay` read the files
//! and write the responses.

use serde::Serialize;

use super::index::{Index, Segment};
use crate::egress::webm;

/// A file of `/recordings/{id}/{file}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordingFile {
    /// `index.m3u8`
    Playlist,
    /// `N.mp4`, the media file N of the recording (a new one per codec change).
    Media(u32),
}

pub fn parse_file(name: &str) -> Option<RecordingFile> {
    if name == "index.m3u8" {
        return Some(RecordingFile::Playlist);
    }
    name.strip_suffix(".mp4")?
        .parse()
        .ok()
        .map(RecordingFile::Media)
}

/// The progressive download (`/recordings/{id}.mp4`): the main file, to
/// its last indexed segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Download {
    pub file: u32,
    pub len: u64,
    /// What the browser saves it as.
    pub name: String,
}

pub fn download(index: &Index, stream: &str, id: &str) -> Option<Download> {
    let file = index.main_file()?;
    Some(Download {
        file,
        len: index.file_end(file).unwrap_or(0),
        name: format!("{stream}-{id}.mp4"),
    })
}

/// A `Range` outside the file, or not a byte range (`416`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsatisfiable;

/// `Range: bytes=…` of a file of `len` bytes: `Ok(None)` for the whole
/// file (no header, or several ranges: answered whole, as RFC 9110
/// allows), `Ok(Some((first, last)))` inclusive.
pub fn parse_range(value: Option<&str>, len: u64) -> Result<Option<(u64, u64)>, Unsatisfiable> {
    let Some(v) = value else { return Ok(None) };
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(Unsatisfiable)?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| Unsatisfiable)?;
        if n == 0 {
            return Err(Unsatisfiable);
        }
        (len.saturating_sub(n), len.saturating_sub(1))
    } else {
        let start: u64 = a.parse().map_err(|_| Unsatisfiable)?;
        let end = if b.is_empty() {
            len.saturating_sub(1)
        } else {
            b.parse::<u64>()
                .map_err(|_| Unsatisfiable)?
                .min(len.saturating_sub(1))
        };
        (start, end)
    };
    if len == 0 || start >= len || end < start {
        return Err(Unsatisfiable);
    }
    Ok(Some((start, end)))
}

/// What a response carries, for its caching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// The HLS playlist: changes while the recording grows.
    Playlist,
    /// Media bytes named by the index: they never change once indexed.
    Media,
    /// The WebM replay or a part of it: made anew per request, and its
    /// index and length change while the recording grows.
    Webm,
}

/// `Cache-Control` of what is served. `shared_cache`: whether it may sit in
/// shared caches (`admission::recording::RecordingPass`): a private
/// stream's recordings, or one recorded while private, never do.
pub fn cache_control(served: Served, shared_cache: bool, finished: bool) -> &'static str {
    if !shared_cache {
        return "private, no-store";
    }
    match (served, finished) {
        (Served::Playlist | Served::Media, true) => "public, max-age=86400",
        (Served::Playlist, false) => "no-cache",
        (Served::Media, false) => "public, max-age=60",
        (Served::Webm, true) => "public, max-age=3600",
        (Served::Webm, false) => "no-cache",
    }
}

/// A part of `/recordings/{id}/replay.webm` (`?part=`), for Media Source
/// Extensions: a long recording seeks anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebmPart {
    /// JSON: the MIME type and the segments' durations.
    Index,
    /// The WebM header.
    Init,
    /// Segment N's Clusters.
    Segment(usize),
}

/// `?part=…` of a query: `None` without one (the whole WebM), `Err` for
/// one that is none of the parts.
pub fn webm_part(query: Option<&str>) -> Option<Result<WebmPart, ()>> {
    let part = query?.split('&').find_map(|kv| kv.strip_prefix("part="))?;
    Some(match part {
        "index" => Ok(WebmPart::Index),
        "init" => Ok(WebmPart::Init),
        n => n.parse().map(WebmPart::Segment).map_err(|_| ()),
    })
}

/// The WebM replay of a recording: the main file's segments (the one the
/// download serves; other files hold another codec), each with the time
/// its Clusters start at.
#[derive(Debug, Clone, PartialEq)]
pub struct WebmReplay {
    pub file: u32,
    /// Bytes of the file's init segment (at offset 0).
    pub init_len: u64,
    segments: Vec<(Segment, u64)>,
    duration_us: u64,
}

/// `?part=index`
#[derive(Debug, Serialize, PartialEq)]
pub struct PartsIndex {
    pub mime: String,
    pub segments_ms: Vec<f64>,
}

impl WebmReplay {
    pub fn of(index: &Index) -> Option<WebmReplay> {
        let file = index.main_file()?;
        let mut start_us = 0;
        let mut segments = Vec::new();
        for s in index.segments.iter().filter(|s| s.file == file) {
            segments.push((*s, start_us / 1000));
            start_us += s.duration_us;
        }
        Some(WebmReplay {
            file,
            init_len: index.inits.get(&file).copied().unwrap_or(0),
            segments,
            duration_us: start_us,
        })
    }

    pub fn duration_ms(&self) -> f64 {
        self.duration_us as f64 / 1000.0
    }

    pub fn len(&self) -> usize {
        self.segments.len()
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Segment `n` and the millisecond its Clusters start at.
    pub fn segment(&self, n: usize) -> Option<(Segment, u64)> {
        self.segments.get(n).copied()
    }

    pub fn parts_index<'a>(&self, kinds: impl IntoIterator<Item = &'a webm::Kind>) -> PartsIndex {
        PartsIndex {
            mime: mime(kinds),
            segments_ms: self
                .segments
                .iter()
                .map(|(s, _)| s.duration_us as f64 / 1000.0)
                .collect(),
        }
    }
}

/// `video/webm; codecs="vp9, opus"` of the tracks.
pub fn mime<'a>(kinds: impl IntoIterator<Item = &'a webm::Kind>) -> String {
    let mut video = None;
    let mut audio = false;
    for k in kinds {
        match k {
            webm::Kind::Video { codec_id, .. } => {
                video = video.or(Some(if *codec_id == "V_VP9" { "vp9" } else { "vp8" }));
            }
            webm::Kind::Opus { .. } => audio = true,
        }
    }
    let codecs: Vec<&str> = video.into_iter().chain(audio.then_some("opus")).collect();
    format!("video/webm; codecs=\"{}\"", codecs.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(file: u32, offset: u64, len: u64, duration_us: u64) -> Segment {
        Segment {
            file,
            offset,
            len,
            duration_us,
            discontinuity: false,
            pdt_ms: 1_800_000_000_000,
        }
    }

    /// File 0: two segments (1.5 s, 2.0005 s); file 1 (another codec): one.
    fn index() -> Index {
        let mut i = Index::default();
        i.inits.insert(0, 700);
        i.inits.insert(1, 650);
        i.segments = vec![
            seg(0, 700, 1000, 1_500_000),
            seg(1, 650, 300, 1_000_000),
            seg(0, 1700, 500, 2_000_500),
        ];
        i
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 100), Ok(None));
        assert_eq!(parse_range(Some("bytes=0-9"), 100), Ok(Some((0, 9))));
        assert_eq!(parse_range(Some("bytes=90-"), 100), Ok(Some((90, 99))));
        assert_eq!(parse_range(Some("bytes=-10"), 100), Ok(Some((90, 99))));
        assert_eq!(parse_range(Some("bytes=50-500"), 100), Ok(Some((50, 99))));
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100), Ok(None));
        assert_eq!(parse_range(Some("bytes=100-"), 100), Err(Unsatisfiable));
        assert_eq!(parse_range(Some("bytes=9-3"), 100), Err(Unsatisfiable));
        assert_eq!(parse_range(Some("bytes=x-3"), 100), Err(Unsatisfiable));
        assert_eq!(parse_range(Some("bytes=-0"), 100), Err(Unsatisfiable));
        assert_eq!(parse_range(Some("bytes=0-"), 0), Err(Unsatisfiable));
    }

    #[test]
    fn file_names() {
        assert_eq!(parse_file("index.m3u8"), Some(RecordingFile::Playlist));
        assert_eq!(parse_file("0.mp4"), Some(RecordingFile::Media(0)));
        assert_eq!(parse_file("12.mp4"), Some(RecordingFile::Media(12)));
        for bad in ["x.mp4", ".mp4", "-1.mp4", "1.m4s", "../0.mp4", "1"] {
            assert_eq!(parse_file(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_download_is_the_main_file_to_its_last_segment() {
        let d = download(&index(), "cam", "ab").unwrap();
        assert_eq!(
            d,
            Download {
                file: 0,
                len: 2200,
                name: "cam-ab.mp4".into()
            }
        );
        assert_eq!(download(&Index::default(), "cam", "ab"), None);
    }

    #[test]
    fn caching() {
        use Served::*;
        for s in [Playlist, Media, Webm] {
            for finished in [false, true] {
                assert_eq!(cache_control(s, false, finished), "private, no-store");
            }
        }
        assert_eq!(cache_control(Media, true, true), "public, max-age=86400");
        assert_eq!(cache_control(Media, true, false), "public, max-age=60");
        assert_eq!(cache_control(Playlist, true, true), "public, max-age=86400");
        assert_eq!(cache_control(Playlist, true, false), "no-cache");
        assert_eq!(cache_control(Webm, true, true), "public, max-age=3600");
        assert_eq!(cache_control(Webm, true, false), "no-cache");
    }

    #[test]
    fn webm_parts() {
        assert_eq!(webm_part(None), None);
        assert_eq!(webm_part(Some("access=t")), None);
        assert_eq!(webm_part(Some("part=index")), Some(Ok(WebmPart::Index)));
        assert_eq!(
            webm_part(Some("access=t&part=init")),
            Some(Ok(WebmPart::Init))
        );
        assert_eq!(webm_part(Some("part=3")), Some(Ok(WebmPart::Segment(3))));
        assert_eq!(webm_part(Some("part=-1")), Some(Err(())));
        assert_eq!(webm_part(Some("part=")), Some(Err(())));
    }

    #[test]
    fn the_webm_replay_is_the_main_files_segments_on_one_timeline() {
        let w = WebmReplay::of(&index()).unwrap();
        assert_eq!((w.file, w.init_len, w.len()), (0, 700, 2));
        assert_eq!(w.duration_ms(), 3500.5);
        assert_eq!(w.segment(0), Some((seg(0, 700, 1000, 1_500_000), 0)));
        assert_eq!(w.segment(1), Some((seg(0, 1700, 500, 2_000_500), 1500)));
        assert_eq!(w.segment(2), None);
        let vp9 = webm::Kind::Video {
            codec_id: "V_VP9",
            width: 640,
            height: 360,
        };
        let opus = webm::Kind::Opus {
            channels: 2,
            pre_skip: 312,
        };
        assert_eq!(
            w.parts_index([&vp9, &opus]),
            PartsIndex {
                mime: "video/webm; codecs=\"vp9, opus\"".into(),
                segments_ms: vec![1500.0, 2000.5],
            }
        );
        let vp8 = webm::Kind::Video {
            codec_id: "V_VP8",
            width: 640,
            height: 360,
        };
        assert_eq!(mime([&vp8]), "video/webm; codecs=\"vp8\"");
        assert!(WebmReplay::of(&Index::default()).is_none());
    }
}
