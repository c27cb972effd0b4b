//! LL-HLS over HTTP: `/hls/{stream}/{file}` (the playlist, init segments,
//! segments and parts of `egress::hls`), with the viewer's admission, the
//! blocking-reload caps and the caching rules.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;

use super::extract::token_from;
use super::{ApiError, App, PeerAddr};
use crate::admission::{Purpose, ViewerFacts};
use crate::egress::hls::caching::{self, Answer, Timing};
use crate::egress::hls::playlist::{Playlist, Wait};
use crate::egress::hls::{self, MEDIA_TYPE, MIN_HOLD, PLAYLIST_TYPE};
use crate::hub::{Access, Stream};
use crate::media::rtp_video::VideoCodec;

pub fn routes() -> Router<Arc<App>> {
    Router::new().route("/hls/{stream}/{file}", get(serve))
}

/// `_HLS_msn`, `_HLS_part` and `access` of a request.
#[derive(Debug, Default, PartialEq)]
pub struct HlsQuery {
    pub msn: Option<u64>,
    pub part: Option<u64>,
    pub access: Option<String>,
}

pub fn parse_query(query: Option<&str>) -> Result<HlsQuery, ApiError> {
    let mut q = HlsQuery::default();
    let num = |k: &str, v: &str| {
        v.parse::<u64>().map_err(|_| {
            ApiError::bad_request(
                "bad_query",
                format!("{k} must be a whole number ≥ 0, not '{v}'"),
            )
        })
    };
    for kv in query.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "_HLS_msn" => q.msn = Some(num(k, v)?),
            "_HLS_part" => q.part = Some(num(k, v)?),
            "access" => q.access = Some(v.to_string()),
            _ => {}
        }
    }
    if q.part.is_some() && q.msn.is_none() {
        return Err(ApiError::bad_request(
            "bad_query",
            "_HLS_part needs _HLS_msn",
        ));
    }
    Ok(q)
}

/// A request for one of the files of a stream's HLS.
#[derive(Debug, PartialEq)]
pub enum File {
    Playlist,
    Init {
        session: u32,
        id: u32,
    },
    Segment {
        session: u32,
        msn: u64,
    },
    Part {
        session: u32,
        msn: u64,
        index: usize,
    },
}

pub fn parse_file(name: &str) -> Option<File> {
    if name == "index.m3u8" {
        return Some(File::Playlist);
    }
    let (stem, ext) = name.rsplit_once('.')?;
    let mut it = stem.split('-');
    let kind = it.next()?;
    let session = it.next()?.parse().ok()?;
    let a = it.next()?;
    let b = it.next();
    if it.next().is_some() {
        return None;
    }
    match (kind, ext, b) {
        ("init", "mp4", None) => Some(File::Init {
            session,
            id: a.parse().ok()?,
        }),
        ("seg", "m4s", None) => Some(File::Segment {
            session,
            msn: a.parse().ok()?,
        }),
        ("part", "m4s", Some(b)) => Some(File::Part {
            session,
            msn: a.parse().ok()?,
            index: b.parse().ok()?,
        }),
        _ => None,
    }
}

fn gone(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("{what} is not (or no longer) available; reload the playlist"),
    )
}

async fn serve(
    State(app): State<Arc<App>>,
    Path((name, file)): Path<(String, String)>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let hls = &app.hls;
    let client = crate::http::client_addr(peer.ip(), &headers, &app.config.http.trusted_proxies);
    let mut public = false;
    match serve_inner(&app, &name, &file, client, &uri, &headers, &mut public).await {
        Ok(r) => r,
        Err(e) => {
            hls.metrics.errors.fetch_add(1, Relaxed);
            // Errors say themselves whether a cache in front may keep them.
            let cc = caching::error_cache_control(e.status.as_u16(), e.code, public);
            let mut r = e.into_response();
            if let Ok(v) = HeaderValue::from_str(&cc) {
                r.headers_mut().insert(header::CACHE_CONTROL, v);
            }
            r
        }
    }
}

fn timing(p: &Playlist) -> Timing {
    Timing {
        target_duration: p.target_duration(),
        part_target: p.params.part_target,
    }
}

fn cache_header(answer: Answer, private: bool, t: Timing) -> HeaderValue {
    HeaderValue::from_str(&caching::cache_control(answer, private, t))
        .expect("Cache-Control values are ASCII")
}

async fn serve_inner(
    app: &App,
    name: &str,
    file: &str,
    client: std::net::IpAddr,
    uri: &Uri,
    headers: &HeaderMap,
    public: &mut bool,
) -> Result<Response, ApiError> {
    let hls = &app.hls;
    if !hls.enabled {
        return Err(ApiError::not_found(
            "HLS is turned off on this server (hls.enabled = false); watch over WebRTC",
        ));
    }
    let file = parse_file(file).ok_or_else(|| {
        ApiError::not_found(format!(
            "no such HLS file '{file}': the playlist is /hls/{name}/index.m3u8"
        ))
    })?;
    let query = parse_query(uri.query())?;
    // Segment URLs cannot carry a signed URL's signature: with signed or
    // webhook-admitted playback, HLS would bypass the check, so it is off.
    if app.config.playback_checked_per_request() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "hls_unavailable",
            "this server admits viewers by signed URL or webhook, which HLS cannot check per segment; watch over WebRTC",
        ));
    }
    // At a cluster node without the publisher: pull the stream first (the
    // pull stays while HLS is requested, see Cluster::set_demand).
    if let Some(cluster) = &app.cluster {
        // A player without access makes no pull.
        let token = token_from(headers, uri.query());
        app.admission.check_access(name, token.as_deref())?;
        cluster.prepare_viewer(name).await;
    }
    // Streams of private Matrix rooms need a viewer token, for every file.
    let facts = ViewerFacts {
        stream: name.to_string(),
        client,
        token: token_from(headers, uri.query()),
        attempt: None,
        relay: false,
    };
    let pass = app.admission.admit_viewer(facts, Purpose::Hls).await?;
    let stream = pass.stream;
    // Files of a private stream must not sit in shared caches.
    let private = stream.access() != Access::Public;
    *public = !private;
    let suffix = uri_suffix(&query);
    match file {
        File::Playlist => playlist(app, &stream, &query, &suffix, client, private).await,
        file => media(app, &stream, file, private).await,
    }
}

/// What the playlist appends to its URIs: the viewer token, passed on as it
/// came (still URL-encoded), and only when it cannot break out of a playlist
/// line or attribute.
pub fn uri_suffix(query: &HlsQuery) -> String {
    query
        .access
        .as_deref()
        .filter(|a| {
            a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._~%-+".contains(&b))
        })
        .map(|a| format!("?access={a}"))
        .unwrap_or_default()
}

fn codec_check(stream: &Stream) -> Result<(), ApiError> {
    if let Some(v) = stream.media_info().video
        && !VideoCodec::from_name(v.codec).is_some_and(hls::carries)
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "hls_unsupported_codec",
            format!(
                "stream '{}' sends {} video, which roomcast's HLS does not carry (H.264, VP9 and AV1 only: browsers cannot play {} from MP4); watch it over WebRTC",
                stream.name, v.codec, v.codec
            ),
        ));
    }
    Ok(())
}

async fn playlist(
    app: &App,
    stream: &Arc<Stream>,
    q: &HlsQuery,
    suffix: &str,
    client: std::net::IpAddr,
    private: bool,
) -> Result<Response, ApiError> {
    let hls = &app.hls;
    let live = stream.is_live();
    if live {
        codec_check(stream)?;
    }
    let blocking = q.msn.is_some();
    if blocking {
        hls.metrics.blocking_playlists.fetch_add(1, Relaxed);
    } else {
        hls.metrics.playlists.fetch_add(1, Relaxed);
        // A player's first request (it reloads with _HLS_msn from then on):
        // where a new HLS viewer is admitted or not, as WHEP does per session.
        if live {
            app.admission.check_egress(stream)?;
        }
    }
    // Offline: 404, except that a blocking reload of a running HLS waits for
    // the publisher to come back (a restart keeps players going).
    let hs = match hls.get(stream, live) {
        Some(hs) if live || blocking => hs,
        _ => return Err(ApiError::offline(&stream.name)),
    };
    let hold = {
        let seg = hs.seg.lock();
        let target = seg.playlist.target_duration() as f64;
        Duration::from_secs_f64(3.0 * target).max(MIN_HOLD)
    };
    let deadline = Instant::now() + hold;
    // Waiting reloads are capped, in all and per address.
    let _slot = match q.msn {
        Some(_) => Some(app.admission.hls_blocking_slot(client)?),
        None => None,
    };
    let ready = match q.msn {
        Some(msn) => {
            let w = hs.seg.lock().playlist.wait_for(msn, q.part);
            if w == Wait::TooFar {
                return Err(ApiError::bad_request(
                    "hls_request_too_far",
                    format!(
                        "_HLS_msn={msn}{} is too far ahead of the playlist",
                        q.part
                            .map(|p| format!(", _HLS_part={p}"))
                            .unwrap_or_default()
                    ),
                ));
            }
            let target = match q.part {
                Some(p) => (msn, p.saturating_add(1)),
                None => (msn.saturating_add(1), 0),
            };
            hs.wait_at(deadline, target, |s| {
                (s.playlist.wait_for(msn, q.part) == Wait::Ready).then_some(())
            })
            .await
        }
        None => {
            hs.wait(deadline, |s| s.playlist.has_parts().then_some(()))
                .await
        }
    };
    if ready.is_none() {
        if !stream.is_live() {
            return Err(ApiError::offline(&stream.name));
        }
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "hls_not_ready",
            format!(
                "stream '{}' has no HLS part for this request yet; waiting for a keyframe",
                stream.name
            ),
        )
        .retry_after(1));
    }
    let (body, timing) = {
        let seg = hs.seg.lock();
        (hs.render(&seg, suffix), timing(&seg.playlist))
    };
    let answer = if blocking {
        Answer::BlockingPlaylist
    } else {
        Answer::Playlist
    };
    hls.metrics.bytes.fetch_add(body.len() as u64, Relaxed);
    Ok((
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(PLAYLIST_TYPE),
            ),
            (header::CACHE_CONTROL, cache_header(answer, private, timing)),
        ],
        body,
    )
        .into_response())
}

async fn media(
    app: &App,
    stream: &Arc<Stream>,
    file: File,
    private: bool,
) -> Result<Response, ApiError> {
    let hls = &app.hls;
    let session = match file {
        File::Init { session, .. } | File::Segment { session, .. } | File::Part { session, .. } => {
            session
        }
        File::Playlist => unreachable!("playlists are served by playlist()"),
    };
    let hs = hls
        .get(stream, false)
        .filter(|hs| hs.session == session)
        .ok_or_else(|| gone("this HLS session"))?;
    let timing = timing(&hs.seg.lock().playlist);
    let hold = Duration::from_secs_f64(3.0 * timing.target_duration as f64).max(MIN_HOLD);
    let deadline = Instant::now() + hold;
    let chunks: Vec<Bytes> = match file {
        File::Init { id, .. } => {
            hls.metrics.inits.fetch_add(1, Relaxed);
            vec![
                hs.seg
                    .lock()
                    .playlist
                    .init(id)
                    .ok_or_else(|| gone("this init segment"))?,
            ]
        }
        File::Segment { msn, .. } => {
            hls.metrics.segments.fetch_add(1, Relaxed);
            // The segment being made (or the next two) are waited for.
            {
                let seg = hs.seg.lock();
                let p = &seg.playlist;
                if p.is_gone(msn) || p.last_msn().is_none_or(|l| msn > l + 2) {
                    return Err(gone(&format!("segment {msn}")));
                }
            }
            hs.wait_at(deadline, (msn.saturating_add(1), 0), |s| {
                s.playlist.complete_segment(msn).map(|seg| seg.chunks())
            })
            .await
            .ok_or_else(|| gone(&format!("segment {msn}")))?
        }
        File::Part { msn, index, .. } => {
            hls.metrics.parts.fetch_add(1, Relaxed);
            {
                let seg = hs.seg.lock();
                let p = &seg.playlist;
                if p.is_gone(msn) || p.wait_for(msn, Some(index as u64)) == Wait::TooFar {
                    return Err(gone(&format!("part {msn}.{index}")));
                }
            }
            // A preload-hinted part is answered as soon as it is complete.
            let part = hs
                .wait_at(deadline, (msn, index as u64 + 1), |s| {
                    if let Some(p) = s.playlist.part(msn, index) {
                        return Some(Some(p.data.clone()));
                    }
                    // The segment ended with fewer parts: it never comes.
                    s.playlist
                        .complete_segment(msn)
                        .map(|_| None)
                        .or_else(|| s.playlist.is_gone(msn).then_some(None))
                })
                .await
                .flatten()
                .ok_or_else(|| gone(&format!("part {msn}.{index}")))?;
            vec![part]
        }
        File::Playlist => unreachable!(),
    };
    let len: usize = chunks.iter().map(Bytes::len).sum();
    hls.metrics.bytes.fetch_add(len as u64, Relaxed);
    // The parts' bytes are shared with every other viewer: no copy here.
    let body = if chunks.len() == 1 {
        Body::from(chunks.into_iter().next().expect("one"))
    } else {
        Body::from_stream(futures_util::stream::iter(
            chunks.into_iter().map(Ok::<_, Infallible>),
        ))
    };
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(MEDIA_TYPE));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    // Names are never reused (the session is in them); a private stream's
    // files are for the viewer's own cache only.
    h.insert(
        header::CACHE_CONTROL,
        cache_header(Answer::Media, private, timing),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_file_names() {
        assert_eq!(parse_query(None).unwrap(), HlsQuery::default());
        let q = parse_query(Some("_HLS_msn=12&_HLS_part=3&access=v1.9.ab&x=1")).unwrap();
        assert_eq!(q.msn, Some(12));
        assert_eq!(q.part, Some(3));
        assert_eq!(q.access.as_deref(), Some("v1.9.ab"));
        let e = parse_query(Some("_HLS_msn=abc")).unwrap_err();
        assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "bad_query"));
        assert!(e.message.contains("abc"), "{}", e.message);
        assert!(parse_query(Some("_HLS_msn=-1")).is_err());
        assert!(parse_query(Some("_HLS_part=1")).is_err());

        assert_eq!(parse_file("index.m3u8"), Some(File::Playlist));
        assert_eq!(
            parse_file("init-7-0.mp4"),
            Some(File::Init { session: 7, id: 0 })
        );
        assert_eq!(
            parse_file("seg-7-12.m4s"),
            Some(File::Segment {
                session: 7,
                msn: 12
            })
        );
        assert_eq!(
            parse_file("part-7-12.3.m4s"),
            None,
            "parts are part-S-MSN-INDEX"
        );
        assert_eq!(
            parse_file("part-7-12-3.m4s"),
            Some(File::Part {
                session: 7,
                msn: 12,
                index: 3
            })
        );
        for bad in [
            "seg-7-x.m4s",
            "seg-7-1.mp4",
            "part-7-1.m4s",
            "x",
            "../etc",
            "seg-7-1-2-3.m4s",
        ] {
            assert_eq!(parse_file(bad), None, "{bad}");
        }
    }
}
