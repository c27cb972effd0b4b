//! LL-HLS requests (src/http/hls.rs, src/egress/hls/playlist.rs): file names
//! and query strings (`_HLS_msn`, `_HLS_part`, `access`) parsed as the HTTP
//! handler parses them, against a playlist in any state the segmenter can
//! leave it in: the blocking-reload decision (`wait_for`: ready, hold or
//! too far), the media requests' checks, and the playlist text with the
//! token suffix.
//!
//! Input: a line of playlist operations (one byte each: begin a segment,
//! add a part, end the segment, add an init segment), then requests, one per
//! line: `FILE?QUERY` (the query may be absent).
#![no_main]

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use roomcast::egress::hls::playlist::{Params, Part, Playlist, Wait};
use roomcast::http::hls::{File, parse_file, parse_query, uri_suffix};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let ops = lines.next().unwrap_or("");
    // `[hls]` defaults: 0.2 s parts, 1 s segments, a window of 6.
    let mut p = Playlist::new(Params {
        part_target: 0.2,
        segment_target: 1.0,
        window: 6,
    });
    let mut init = 0u32;
    for b in ops.bytes() {
        match b % 4 {
            0 => {
                p.end_segment();
                let pdt = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
                p.begin_segment(pdt, b & 0x10 != 0, init);
            }
            1 => {
                if p.is_segment_open() {
                    p.push_part(Part {
                        duration: f64::from(b >> 2) * 0.01,
                        independent: b & 0x80 != 0,
                        data: Bytes::from_static(b"moof"),
                    });
                }
            }
            2 => p.end_segment(),
            _ => {
                init += 1;
                p.add_init(init, Bytes::from_static(b"ftyp"));
            }
        }
    }
    for req in lines {
        let (name, query) = match req.split_once('?') {
            Some((n, q)) => (n, Some(q)),
            None => (req, None),
        };
        let Ok(q) = parse_query(query) else { continue };
        let suffix = uri_suffix(&q);
        assert!(
            !suffix.contains(['\n', '\r', '"', ',', ' ', '#']),
            "{suffix:?}"
        );
        match parse_file(name) {
            Some(File::Playlist) | None => {
                if let Some(msn) = q.msn {
                    let w = p.wait_for(msn, q.part);
                    if w == Wait::Ready {
                        // Ready: what was asked for is there, or something later.
                        let last = p.last_msn().expect("ready needs a segment");
                        assert!(msn <= last, "msn {msn} ready with last {last}");
                    }
                }
                let text = p.render(1, &suffix);
                assert!(text.starts_with("#EXTM3U"));
            }
            Some(File::Init { id, .. }) => {
                let _ = p.init(id);
            }
            Some(File::Segment { msn, .. }) => {
                if !(p.is_gone(msn) || p.last_msn().is_none_or(|l| msn > l + 2)) {
                    let _ = p.complete_segment(msn).map(|s| s.chunks());
                }
            }
            Some(File::Part { msn, index, .. }) => {
                if !(p.is_gone(msn) || p.wait_for(msn, Some(index as u64)) == Wait::TooFar) {
                    let _ = p.part(msn, index);
                    let _ = p.complete_segment(msn);
                }
            }
        }
    }
});
