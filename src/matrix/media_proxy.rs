//! The chat's images through roomcast: pictures, stickers, video thumbnails
//! and avatars fetched from the homeserver's authenticated media (Matrix 1.11
//! `GET /_matrix/client/v1/media/{download,thumbnail}/{server}/{id}`, with the
//! appservice token), so pages load them from their own origin (the CSP stays
//! same-origin) and the homeserver never sees viewers. Which media may be
//! fetched is the chat's business ([`super::Matrix::chat_media`]); this part
//! bounds what one fetch costs: a size cap, a timeout, a few fetches at a
//! time, a cache bounded in bytes, and only raster images recognised by their
//! first bytes (never SVG or HTML, whatever the homeserver says).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tracing::warn;

use crate::log_every::LogEvery;

/// Largest file fetched (thumbnails are far smaller).
pub const MAX_MEDIA_BYTES: usize = 4 * 1024 * 1024;
/// Bytes kept in the cache, all media together.
const CACHE_BYTES: usize = 48 * 1024 * 1024;
/// Fetches from the homeserver at once; more wait their turn.
const CONCURRENT_FETCHES: usize = 4;
/// One whole fetch, from connect to the last byte.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// A media the homeserver does not have, or that is no image the chat
/// shows, is not asked for again for this long (pages retry each load).
const REFUSAL_TTL: Duration = Duration::from_secs(60);
/// Refusals remembered at most.
const MAX_REFUSALS: usize = 1000;

/// Which rendition of a media the page asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Size {
    /// The file itself (stickers, video thumbnails).
    Full,
    /// A thumbnail that fits 800×600 (pictures).
    Thumb,
    /// A 96×96 crop (avatars, sharp on dense screens).
    Avatar,
}

impl Size {
    pub fn parse(s: Option<&str>) -> Option<Size> {
        match s {
            None | Some("full") => Some(Size::Full),
            Some("thumb") => Some(Size::Thumb),
            Some("avatar") => Some(Size::Avatar),
            _ => None,
        }
    }
}

/// A fetched image, ready to serve.
#[derive(Clone)]
pub struct Image {
    pub bytes: Bytes,
    /// From the allow-list, decided by the bytes themselves.
    pub content_type: &'static str,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum MediaError {
    #[error("the chat shows no such media")]
    NotReferenced,
    #[error("bad size (full, thumb or avatar)")]
    BadSize,
    #[error("the media is larger than {MAX_MEDIA_BYTES} bytes")]
    TooLarge,
    #[error("the media is not an image the chat shows (PNG, JPEG, GIF, WebP)")]
    NotAnImage,
    #[error("the homeserver has no such media")]
    NotFound,
    #[error("the homeserver did not deliver the media: {0}")]
    Upstream(String),
}

/// The byte-bounded cache: oldest entries leave first.
#[derive(Default)]
struct Cache {
    entries: HashMap<(String, Size), Image>,
    order: VecDeque<(String, Size)>,
    bytes: usize,
}

impl Cache {
    fn get(&self, key: &(String, Size)) -> Option<Image> {
        self.entries.get(key).cloned()
    }

    fn put(&mut self, key: (String, Size), img: Image) {
        if self.entries.contains_key(&key) {
            return;
        }
        self.bytes += img.bytes.len();
        self.entries.insert(key.clone(), img);
        self.order.push_back(key);
        while self.bytes > CACHE_BYTES {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(i) = self.entries.remove(&old) {
                self.bytes -= i.bytes.len();
            }
        }
    }
}

pub struct MediaProxy {
    http: reqwest::Client,
    base: String,
    token: String,
    cache: Mutex<Cache>,
    /// Answers that will not change soon (not found, too large, not an image).
    refused: Mutex<HashMap<(String, Size), (Instant, MediaError)>>,
    fetches: tokio::sync::Semaphore,
}

static UPSTREAM_ERRORS: LogEvery = LogEvery::new(Duration::from_secs(60));

impl MediaProxy {
    pub fn new(homeserver: &str, as_token: &str) -> MediaProxy {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(FETCH_TIMEOUT)
            // Authenticated media answers directly; a redirect would carry
            // the token elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        MediaProxy {
            http,
            base: homeserver.trim_end_matches('/').to_string(),
            token: as_token.to_string(),
            cache: Mutex::new(Cache::default()),
            refused: Mutex::new(HashMap::new()),
            fetches: tokio::sync::Semaphore::new(CONCURRENT_FETCHES),
        }
    }

    /// The image for `path` (`server/media_id`, already validated and
    /// allowed), from the cache or the homeserver.
    pub async fn get(&self, path: &str, size: Size) -> Result<Image, MediaError> {
        let key = (path.to_string(), size);
        if let Some(img) = self.cache.lock().get(&key) {
            return Ok(img);
        }
        if let Some((at, e)) = self.refused.lock().get(&key)
            && at.elapsed() < REFUSAL_TTL
        {
            return Err(e.clone());
        }
        // A viewer waits for a turn no longer than a fetch may take.
        let _turn = tokio::time::timeout(FETCH_TIMEOUT, self.fetches.acquire())
            .await
            .map_err(|_| MediaError::Upstream("too many fetches at once".into()))?
            .map_err(|_| MediaError::Upstream("shutting down".into()))?;
        // Another request may have fetched it while this one waited.
        if let Some(img) = self.cache.lock().get(&key) {
            return Ok(img);
        }
        let img = match self.fetch(path, size).await {
            Ok(img) => img,
            Err(e) => {
                if matches!(e, MediaError::Upstream(_)) {
                    if let Some(n) = UPSTREAM_ERRORS.allow() {
                        warn!(media = %path, suppressed = n, "matrix: media proxy: {e}");
                    }
                } else {
                    let mut refused = self.refused.lock();
                    if refused.len() >= MAX_REFUSALS {
                        refused.retain(|_, (at, _)| at.elapsed() < REFUSAL_TTL);
                        if refused.len() >= MAX_REFUSALS {
                            refused.clear();
                        }
                    }
                    refused.insert(key, (Instant::now(), e.clone()));
                }
                return Err(e);
            }
        };
        self.cache.lock().put(key, img.clone());
        Ok(img)
    }

    async fn fetch(&self, path: &str, size: Size) -> Result<Image, MediaError> {
        let url = match size {
            Size::Full => format!("{}/_matrix/client/v1/media/download/{path}", self.base),
            Size::Thumb => format!(
                "{}/_matrix/client/v1/media/thumbnail/{path}?width=800&height=600&method=scale",
                self.base
            ),
            Size::Avatar => format!(
                "{}/_matrix/client/v1/media/thumbnail/{path}?width=96&height=96&method=crop",
                self.base
            ),
        };
        let mut resp = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| MediaError::Upstream(e.to_string()))?;
        match resp.status().as_u16() {
            200 => {}
            404 => return Err(MediaError::NotFound),
            s => return Err(MediaError::Upstream(format!("status {s}"))),
        }
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_MEDIA_BYTES as u64)
        {
            return Err(MediaError::TooLarge);
        }
        let mut buf = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| MediaError::Upstream(e.to_string()))?
        {
            if buf.len() + chunk.len() > MAX_MEDIA_BYTES {
                return Err(MediaError::TooLarge);
            }
            buf.extend_from_slice(&chunk);
        }
        let content_type = image_type(&buf).ok_or(MediaError::NotAnImage)?;
        Ok(Image {
            bytes: Bytes::from(buf),
            content_type,
        })
    }
}

/// The content type of a raster image the chat shows, from its magic bytes;
/// None for anything else (SVG, HTML, video, ...).
pub fn image_type(b: &[u8]) -> Option<&'static str> {
    if b.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if b.starts_with(&[0xff, 0xd8, 0xff]) {
        Some("image/jpeg")
    } else if b.starts_with(b"GIF87a") || b.starts_with(b"GIF89a") {
        Some("image/gif")
    } else if b.len() >= 12 && &b[..4] == b"RIFF" && &b[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_raster_images_by_their_bytes() {
        assert_eq!(image_type(b"\x89PNG\r\n\x1a\n...."), Some("image/png"));
        assert_eq!(image_type(&[0xff, 0xd8, 0xff, 0xe0]), Some("image/jpeg"));
        assert_eq!(image_type(b"GIF89a.."), Some("image/gif"));
        assert_eq!(image_type(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(
            image_type(b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>"),
            None
        );
        assert_eq!(image_type(b"<html><script>x</script>"), None);
        assert_eq!(image_type(b""), None);
    }

    #[test]
    fn cache_is_bounded_in_bytes() {
        let mut c = Cache::default();
        let img = |n: usize| Image {
            bytes: Bytes::from(vec![0u8; n]),
            content_type: "image/png",
        };
        let chunk = CACHE_BYTES / 3;
        for i in 0..5 {
            c.put((format!("hs/{i}"), Size::Full), img(chunk));
            assert!(c.bytes <= CACHE_BYTES);
        }
        assert!(c.get(&("hs/0".into(), Size::Full)).is_none(), "oldest left");
        assert!(c.get(&("hs/4".into(), Size::Full)).is_some());
        assert_eq!(c.entries.len(), c.order.len());
    }

    #[test]
    fn sizes() {
        assert_eq!(Size::parse(None), Some(Size::Full));
        assert_eq!(Size::parse(Some("avatar")), Some(Size::Avatar));
        assert_eq!(Size::parse(Some("huge")), None);
    }
}
