//! The LL-HLS media playlist of one stream: a sliding window of segments made
//! of partial segments (parts), the init segments they refer to, and the rules
//! for blocking playlist reloads (`_HLS_msn` / `_HLS_part`). No I/O: the
//! segmenter adds parts, the HTTP driver asks and renders.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write;
use std::time::SystemTime;

use bytes::Bytes;

/// Timing rules of the playlist.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// `PART-TARGET`, seconds.
    pub part_target: f64,
    /// Aim for segments this long (they end at the first keyframe after it), seconds.
    pub segment_target: f64,
    /// Complete segments kept (and listed) behind the one being made.
    pub window: usize,
}

impl Params {
    /// `PART-HOLD-BACK`: three part targets, as the spec recommends.
    pub fn part_hold_back(&self) -> f64 {
        3.0 * self.part_target
    }

    /// How far ahead of the newest part a blocking request may ask, in parts
    /// (the spec's Advance Part Limit).
    pub fn advance_part_limit(&self) -> u64 {
        if self.part_target < 1.0 {
            (3.0 / self.part_target).ceil() as u64
        } else {
            3
        }
    }
}

/// One partial segment: a `moof` + `mdat` fragment.
#[derive(Debug, Clone)]
pub struct Part {
    pub duration: f64,
    /// Starts with a keyframe (`INDEPENDENT=YES`).
    pub independent: bool,
    pub data: Bytes,
}

#[derive(Debug)]
pub struct Segment {
    pub msn: u64,
    pub parts: Vec<Part>,
    /// `EXT-X-PROGRAM-DATE-TIME` of its first sample.
    pub pdt: SystemTime,
    /// Preceded by `#EXT-X-DISCONTINUITY` (new publisher or new init).
    pub discontinuity: bool,
    pub init: u32,
    pub complete: bool,
}

impl Segment {
    pub fn duration(&self) -> f64 {
        self.parts.iter().map(|p| p.duration).sum()
    }

    /// Bytes of the whole segment: its parts back to back (shared, not copied).
    pub fn chunks(&self) -> Vec<Bytes> {
        self.parts.iter().map(|p| p.data.clone()).collect()
    }

    pub fn len_bytes(&self) -> usize {
        self.parts.iter().map(|p| p.data.len()).sum()
    }
}

/// What a blocking reload or a media request is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// It is there (or something later is).
    Ready,
    /// Not yet: hold the request.
    Pending,
    /// Further ahead than a client may ask (400).
    TooFar,
}

#[derive(Debug)]
pub struct Playlist {
    pub params: Params,
    segments: VecDeque<Segment>,
    inits: BTreeMap<u32, Bytes>,
    next_msn: u64,
    /// Discontinuities that left the window (`EXT-X-DISCONTINUITY-SEQUENCE`).
    discontinuity_sequence: u64,
    /// `EXT-X-TARGETDURATION`: never decreases, so it holds for every
    /// segment a client has seen.
    target_duration: u64,
    carry_discontinuity: bool,
}

impl Playlist {
    pub fn new(params: Params) -> Playlist {
        Playlist {
            params,
            segments: VecDeque::new(),
            inits: BTreeMap::new(),
            next_msn: 0,
            discontinuity_sequence: 0,
            target_duration: params.segment_target.ceil().max(1.0) as u64,
            carry_discontinuity: false,
        }
    }

    pub fn add_init(&mut self, id: u32, data: Bytes) {
        self.inits.insert(id, data);
    }

    pub fn init(&self, id: u32) -> Option<Bytes> {
        self.inits.get(&id).cloned()
    }

    /// Starts a new segment; the previous one must be complete.
    pub fn begin_segment(&mut self, pdt: SystemTime, discontinuity: bool, init: u32) {
        debug_assert!(self.segments.back().is_none_or(|s| s.complete));
        self.segments.push_back(Segment {
            msn: self.next_msn,
            parts: Vec::new(),
            pdt,
            discontinuity: discontinuity || std::mem::take(&mut self.carry_discontinuity),
            init,
            complete: false,
        });
        self.next_msn += 1;
    }

    /// Adds a part to the segment being made.
    pub fn push_part(&mut self, part: Part) {
        let seg = self
            .segments
            .back_mut()
            .filter(|s| !s.complete)
            .expect("push_part needs an open segment");
        seg.parts.push(part);
    }

    /// Completes the open segment (an empty one is dropped) and slides the window.
    pub fn end_segment(&mut self) {
        let Some(seg) = self.segments.back_mut().filter(|s| !s.complete) else {
            return;
        };
        if seg.parts.is_empty() {
            let seg = self.segments.pop_back().expect("just seen");
            self.next_msn -= 1;
            // A discontinuity it carried belongs to the next segment.
            self.carry_discontinuity |= seg.discontinuity;
            return;
        }
        seg.complete = true;
        let d = seg.duration().round() as u64;
        self.target_duration = self.target_duration.max(d);
        while self.segments.iter().filter(|s| s.complete).count() > self.params.window {
            let old = self.segments.pop_front().expect("counted");
            if old.discontinuity {
                self.discontinuity_sequence += 1;
            }
        }
        let first_init = self.segments.front().map_or(u32::MAX, |s| s.init);
        self.inits.retain(|&id, _| id >= first_init);
    }

    pub fn is_segment_open(&self) -> bool {
        self.segments.back().is_some_and(|s| !s.complete)
    }

    /// The msn of the newest segment (open or complete).
    pub fn last_segment(&self) -> Option<&Segment> {
        self.segments.back()
    }

    pub fn last_msn(&self) -> Option<u64> {
        self.segments.back().map(|s| s.msn)
    }

    pub fn has_parts(&self) -> bool {
        self.segments.iter().any(|s| !s.parts.is_empty())
    }

    fn segment(&self, msn: u64) -> Option<&Segment> {
        let first = self.segments.front()?.msn;
        self.segments
            .get(usize::try_from(msn.checked_sub(first)?).ok()?)
    }

    pub fn part(&self, msn: u64, index: usize) -> Option<&Part> {
        self.segment(msn)?.parts.get(index)
    }

    /// A complete segment.
    pub fn complete_segment(&self, msn: u64) -> Option<&Segment> {
        self.segment(msn).filter(|s| s.complete)
    }

    /// Whether media sequence `msn` is older than the window.
    pub fn is_gone(&self, msn: u64) -> bool {
        self.segments.front().is_some_and(|s| msn < s.msn)
    }

    /// Is the playlist a blocking reload asks for there yet: segment `msn`
    /// complete (no `part`), or part `part` of segment `msn` (or anything later)?
    pub fn wait_for(&self, msn: u64, part: Option<u64>) -> Wait {
        let Some(last) = self.segments.back() else {
            return if msn <= 2 && part.is_none_or(|p| p < self.params.advance_part_limit()) {
                Wait::Pending
            } else {
                Wait::TooFar
            };
        };
        if msn > last.msn + 2 {
            return Wait::TooFar;
        }
        if self.is_gone(msn) {
            return Wait::Ready;
        }
        let later_has_parts = self
            .segments
            .iter()
            .any(|s| s.msn > msn && !s.parts.is_empty());
        match part {
            None => {
                if self.segment(msn).is_some_and(|s| s.complete) || later_has_parts {
                    Wait::Ready
                } else {
                    Wait::Pending
                }
            }
            Some(p) => {
                let have = self.segment(msn).map_or(0, |s| s.parts.len() as u64);
                if p < have || later_has_parts {
                    return Wait::Ready;
                }
                let limit = self.params.advance_part_limit();
                // `p` comes from the query: u64::MAX must not overflow.
                let ahead = if msn == last.msn {
                    (p - have).saturating_add(1)
                } else {
                    p.saturating_add(1)
                };
                if ahead > limit {
                    Wait::TooFar
                } else {
                    Wait::Pending
                }
            }
        }
    }

    /// The URI of the part being made (for `#EXT-X-PRELOAD-HINT`).
    fn next_part(&self) -> Option<(u64, usize)> {
        let last = self.segments.back()?;
        Some(if last.complete {
            (last.msn + 1, 0)
        } else {
            (last.msn, last.parts.len())
        })
    }

    pub fn target_duration(&self) -> u64 {
        self.target_duration
    }

    /// The playlist text. URIs are `init-S-ID.mp4`, `seg-S-MSN.m4s` and
    /// `part-S-MSN-INDEX.m4s` with `session` as S; `query` (e.g.
    /// `?access=…`, or empty) is appended to every URI so a private stream's
    /// token reaches the media requests.
    pub fn render(&self, session: u32, query: &str) -> String {
        let p = &self.params;
        let mut out = String::with_capacity(256 + 120 * self.segments.len() * 5);
        let _ = write!(
            out,
            "#EXTM3U\n#EXT-X-VERSION:6\n#EXT-X-TARGETDURATION:{}\n\
             #EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={:.3}\n\
             #EXT-X-PART-INF:PART-TARGET={:.3}\n\
             #EXT-X-MEDIA-SEQUENCE:{}\n#EXT-X-DISCONTINUITY-SEQUENCE:{}\n",
            self.target_duration,
            p.part_hold_back(),
            p.part_target,
            self.segments.front().map_or(self.next_msn, |s| s.msn),
            self.discontinuity_sequence,
        );
        // Parts are listed for the newest segments only (about three target
        // durations), as the spec suggests; older ones by their segment.
        let last = self.segments.back().map_or(0, |s| s.msn);
        let mut map = None;
        for (i, s) in self.segments.iter().enumerate() {
            if s.discontinuity && i > 0 {
                out.push_str("#EXT-X-DISCONTINUITY\n");
            }
            if map != Some(s.init) {
                let _ = writeln!(
                    out,
                    "#EXT-X-MAP:URI=\"init-{session}-{}.mp4{query}\"",
                    s.init
                );
                map = Some(s.init);
            }
            let _ = writeln!(out, "#EXT-X-PROGRAM-DATE-TIME:{}", rfc3339_ms(s.pdt));
            if s.msn + 3 > last {
                for (j, part) in s.parts.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "#EXT-X-PART:DURATION={:.5},URI=\"part-{session}-{}-{j}.m4s{query}\"{}",
                        part.duration,
                        s.msn,
                        if part.independent {
                            ",INDEPENDENT=YES"
                        } else {
                            ""
                        }
                    );
                }
            }
            if s.complete {
                let _ = writeln!(
                    out,
                    "#EXTINF:{:.5},\nseg-{session}-{}.m4s{query}",
                    s.duration(),
                    s.msn
                );
            }
        }
        if let Some((msn, j)) = self.next_part() {
            let _ = writeln!(
                out,
                "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part-{session}-{msn}-{j}.m4s{query}\""
            );
        }
        out
    }
}

/// `2026-11-21T12:00:00.123Z`.
pub fn rfc3339_ms(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
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
