//! `Cache-Control` of LL-HLS responses, chosen so an HTTP cache in front of
//! roomcast (a CDN, nginx's `proxy_cache`) can collapse the requests of many
//! players into one per part and playlist version, and so nothing of a
//! private stream ever lands in a shared cache. No I/O: `http::hls` asks.
//!
//! - A blocking reload (`_HLS_msn`/`_HLS_part`) is answered once what it asks
//!   for is there, and any later answer to the same URL is as good (it lists
//!   at least that part), so it may be cached for a few target durations: a
//!   cache turns every player's request for the next part into one origin
//!   request.
//! - The plain playlist changes with every part: a shared cache may keep it
//!   about one part (`s-maxage`, whole seconds), a browser not at all
//!   (`max-age=0`); players only read it to start, then block.
//! - Init segments, parts and segments are immutable: their names carry the
//!   HLS session and never repeat.
//! - Errors are `no-store`, except the two 404s a crowd of players asks at
//!   once and whose answer does not depend on who asks: a public stream's
//!   offline playlist (every player retries when a stream ends) and a public
//!   media file that never comes (the preload-hinted part when a segment
//!   ends early). Those get a short negative TTL ([`NEGATIVE_TTL_SECS`]).
//!   The rest depends on the asker (403 on the token, 429 on the address), on
//!   the moment (400 "too far ahead" is valid a part later, 503 says
//!   Retry-After) or is rare enough not to matter.
//!
//! No validators (ETag, Last-Modified): media never changes, so is never
//! revalidated, and a playlist's freshness is shorter than a revalidation
//! round trip is worth (a few KB; Last-Modified has a one-second grain while
//! the playlist changes five times a second). No `Vary`: nothing here
//! depends on a request header (the CORS answer is `*` for every origin);
//! the viewer token of a private stream makes its answer `private` instead.
//! No `Age` either: the origin answers fresh; a cache adds it (hls.js reads
//! it on its first playlist to pick its first blocking request).

/// Seconds a shared cache may keep a 404 that a crowd asks for at once:
/// enough to collapse the crowd into one origin request a second, short
/// enough that a stream coming back is seen within a second.
pub const NEGATIVE_TTL_SECS: u64 = 1;

/// Media files (init, parts, segments): a day is far longer than they are
/// listed; immutable, so browsers never revalidate them either.
const MEDIA_MAX_AGE_SECS: u64 = 86_400;

/// What a response is, for its `Cache-Control`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A playlist without delivery directives.
    Playlist,
    /// A blocking reload (`_HLS_msn`, maybe `_HLS_part`).
    BlockingPlaylist,
    /// An init segment, a part or a segment.
    Media,
}

/// The playlist's timing, as advertised in it.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// `EXT-X-TARGETDURATION`, seconds.
    pub target_duration: u64,
    /// `PART-TARGET`, seconds.
    pub part_target: f64,
}

impl Timing {
    /// A blocking reload's answer may be kept this long: three target
    /// durations, as long as the origin holds such a request at most.
    pub fn blocking_max_age(&self) -> u64 {
        3 * self.target_duration.max(1)
    }

    /// The plain playlist: about one part, in the whole seconds HTTP caches count.
    pub fn playlist_s_maxage(&self) -> u64 {
        (self.part_target.ceil() as u64).max(1)
    }
}

/// `Cache-Control` of a successful answer; `private`: the stream needs a
/// viewer token (a shared cache must never keep or serve it).
pub fn cache_control(answer: Answer, private: bool, t: Timing) -> String {
    match (answer, private) {
        (Answer::BlockingPlaylist, false) => format!("public, max-age={}", t.blocking_max_age()),
        (Answer::BlockingPlaylist, true) => format!("private, max-age={}", t.blocking_max_age()),
        (Answer::Playlist, false) => {
            format!("public, max-age=0, s-maxage={}", t.playlist_s_maxage())
        }
        (Answer::Playlist, true) => "private, no-cache".to_string(),
        (Answer::Media, false) => format!("public, max-age={MEDIA_MAX_AGE_SECS}, immutable"),
        (Answer::Media, true) => format!("private, max-age={MEDIA_MAX_AGE_SECS}"),
    }
}

/// `Cache-Control` of an error answer. `public_stream`: the request named a
/// public stream and was admitted (only then can the answer be shared).
pub fn error_cache_control(status: u16, code: &str, public_stream: bool) -> String {
    let crowd_404 = status == 404 && matches!(code, "stream_offline" | "not_found");
    if crowd_404 && public_stream {
        format!("public, max-age={NEGATIVE_TTL_SECS}")
    } else {
        "no-store".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing {
        target_duration: 1,
        part_target: 0.21,
    };

    #[test]
    fn public_answers_are_shareable_for_their_lifetime() {
        assert_eq!(
            cache_control(Answer::BlockingPlaylist, false, T),
            "public, max-age=3"
        );
        let long = Timing {
            target_duration: 2,
            part_target: 1.05,
        };
        assert_eq!(
            cache_control(Answer::BlockingPlaylist, false, long),
            "public, max-age=6"
        );
        // Browsers never reuse a plain playlist; caches keep it about a part.
        assert_eq!(
            cache_control(Answer::Playlist, false, T),
            "public, max-age=0, s-maxage=1"
        );
        assert_eq!(
            cache_control(Answer::Playlist, false, long),
            "public, max-age=0, s-maxage=2"
        );
        assert_eq!(
            cache_control(Answer::Media, false, T),
            "public, max-age=86400, immutable"
        );
    }

    #[test]
    fn private_answers_never_go_to_shared_caches() {
        for a in [Answer::Playlist, Answer::BlockingPlaylist, Answer::Media] {
            let cc = cache_control(a, true, T);
            assert!(cc.starts_with("private"), "{a:?}: {cc}");
            assert!(!cc.contains("public") && !cc.contains("s-maxage"), "{cc}");
        }
        assert_eq!(
            cache_control(Answer::Playlist, true, T),
            "private, no-cache"
        );
        // Private media is not immutable for the browser either: access can end.
        assert!(!cache_control(Answer::Media, true, T).contains("immutable"));
    }

    #[test]
    fn errors_are_not_stored_except_a_crowds_public_404() {
        assert_eq!(
            error_cache_control(404, "stream_offline", true),
            "public, max-age=1"
        );
        assert_eq!(
            error_cache_control(404, "not_found", true),
            "public, max-age=1"
        );
        // Not admitted as public (private, unknown, refused): never shared.
        assert_eq!(
            error_cache_control(404, "stream_offline", false),
            "no-store"
        );
        for (status, code) in [
            (400, "hls_request_too_far"),
            (400, "bad_query"),
            (403, "forbidden"),
            (429, "rate_limited"),
            (503, "hls_not_ready"),
            (503, "viewer_limit"),
            (422, "hls_unsupported_codec"),
        ] {
            assert_eq!(
                error_cache_control(status, code, true),
                "no-store",
                "{code}"
            );
        }
    }
}
