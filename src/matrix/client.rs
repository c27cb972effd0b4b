//! The homeserver client: ruma's request types sent with reqwest, as the bot or
//! as a puppet (identity assertion, `?user_id=`), authenticated with the
//! as_token. No sync loop: everything inbound arrives in transactions.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

use ruma::UserId;
use ruma::api::auth_scheme::{AuthScheme, SendAccessToken};
use ruma::api::path_builder::{PathBuilder, SinglePath, VersionHistory};
use ruma::api::{
    AppserviceUserIdentity, IncomingResponse, OutgoingRequest, OutgoingRequestAppserviceExt,
    SupportedVersions,
};

/// A failed call to the homeserver.
#[derive(Debug, thiserror::Error)]
pub enum HsError {
    /// Could not talk to it at all (down, refused, timed out): worth retrying.
    #[error("homeserver unreachable: {0}")]
    Unreachable(String),
    /// It answered with a Matrix error.
    #[error("homeserver answered {status} {errcode}: {message}")]
    Api {
        status: u16,
        errcode: String,
        message: String,
        /// `retry_after_ms` of a 429 (`M_LIMIT_EXCEEDED`), or the `Retry-After` header.
        retry_after_ms: Option<u64>,
    },
    /// The request could not be built or the answer not understood.
    #[error("homeserver exchange failed: {0}")]
    Protocol(String),
}

impl HsError {
    /// Worth retrying later (as opposed to a refusal that will not change).
    pub fn is_transient(&self) -> bool {
        match self {
            HsError::Unreachable(_) => true,
            HsError::Api { status, .. } => *status >= 500 || *status == 429,
            HsError::Protocol(_) => false,
        }
    }

    /// How long to wait before trying again, when the homeserver said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            HsError::Api {
                retry_after_ms: Some(ms),
                ..
            } => Some(Duration::from_millis(*ms)),
            _ => None,
        }
    }

    pub fn errcode(&self) -> Option<&str> {
        match self {
            HsError::Api { errcode, .. } => Some(errcode),
            _ => None,
        }
    }
}

/// Supplies the path-builder input ruma needs for each kind of endpoint.
pub trait PathInput: PathBuilder {
    fn input(v: &SupportedVersions) -> Self::Input<'_>;
}

impl PathInput for VersionHistory {
    fn input(v: &SupportedVersions) -> Cow<'_, SupportedVersions> {
        Cow::Borrowed(v)
    }
}

impl PathInput for SinglePath {
    fn input(_: &SupportedVersions) {}
}

#[derive(Clone)]
pub struct HsClient {
    http: reqwest::Client,
    base: String,
    as_token: String,
    versions: SupportedVersions,
}

impl HsClient {
    pub fn new(base: &str, as_token: &str) -> Result<HsClient, HsError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| HsError::Protocol(format!("building the HTTP client: {e}")))?;
        // Stable v3 paths; every homeserver of the last years serves them.
        let versions = SupportedVersions::from_parts(&["v1.11".to_string()], &BTreeMap::new());
        Ok(HsClient {
            http,
            base: base.trim_end_matches('/').to_string(),
            as_token: as_token.to_string(),
            versions,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Sends `req` as the bot (`as_user` None) or as a user of the namespace.
    /// A 429 is tried again after the `retry_after_ms` it names, and a
    /// transient failure (unreachable, 5xx) after a short backoff, up to
    /// `TRIES` in all; what still fails is the caller's to handle (the
    /// inbox retries the event later, the outbox its notice).
    pub async fn send<R>(
        &self,
        req: R,
        as_user: Option<&UserId>,
    ) -> Result<R::IncomingResponse, HsError>
    where
        R: OutgoingRequest + Clone,
        R::PathBuilder: PathInput,
        for<'a> R::Authentication: AuthScheme<Input<'a> = SendAccessToken<'a>>,
    {
        let mut attempt = 1;
        loop {
            match self.send_once(req.clone(), as_user).await {
                Err(e) if attempt < TRIES && e.is_transient() => {
                    let wait = retry_wait(&e, attempt);
                    tracing::debug!(
                        attempt,
                        wait_ms = wait.as_millis() as u64,
                        "matrix: homeserver call retried: {e}"
                    );
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn send_once<R>(
        &self,
        req: R,
        as_user: Option<&UserId>,
    ) -> Result<R::IncomingResponse, HsError>
    where
        R: OutgoingRequest,
        R::PathBuilder: PathInput,
        for<'a> R::Authentication: AuthScheme<Input<'a> = SendAccessToken<'a>>,
    {
        let identity = match as_user {
            Some(u) => AppserviceUserIdentity::new(u),
            None => AppserviceUserIdentity::default(),
        };
        let http_req = req
            .try_into_http_request_with_identity::<Vec<u8>>(
                &self.base,
                SendAccessToken::Appservice(&self.as_token),
                identity,
                R::PathBuilder::input(&self.versions),
            )
            .map_err(|e| HsError::Protocol(format!("building request: {e}")))?;
        let (parts, body) = http_req.into_parts();
        let url = parts.uri.to_string();
        let has_auth = parts.headers.contains_key(http::header::AUTHORIZATION);
        let mut rb = self
            .http
            .request(parts.method, &url)
            .headers(parts.headers)
            .body(body);
        // ruma adds the token where the endpoint asks for one; appservices
        // authenticate every call (identity assertion needs it).
        if !has_auth {
            rb = rb.bearer_auth(&self.as_token);
        }
        let resp = rb
            .send()
            .await
            .map_err(|e| HsError::Unreachable(describe_reqwest(&e)))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| HsError::Unreachable(describe_reqwest(&e)))?;
        if status.as_u16() >= 400 {
            let mut e = api_error(status.as_u16(), &bytes);
            // Retry-After (seconds), when the body did not say.
            if let HsError::Api { retry_after_ms, .. } = &mut e
                && retry_after_ms.is_none()
            {
                *retry_after_ms = headers
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(|s| s.saturating_mul(1000));
            }
            return Err(e);
        }
        let mut builder = http::Response::builder().status(status);
        for (k, v) in headers.iter() {
            builder = builder.header(k, v);
        }
        let http_resp = builder
            .body(bytes.as_ref())
            .map_err(|e| HsError::Protocol(e.to_string()))?;
        R::IncomingResponse::try_from_http_response_inner(http_resp)
            .map_err(|e| HsError::Protocol(format!("reading the answer: {e}")))
    }

    /// A plain JSON GET (endpoints without a ruma type at hand, e.g. the
    /// federation OpenID userinfo).
    pub async fn get_json(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<serde_json::Value, HsError> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .query(query)
            .send()
            .await
            .map_err(|e| HsError::Unreachable(describe_reqwest(&e)))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| HsError::Unreachable(describe_reqwest(&e)))?;
        if status >= 400 {
            return Err(api_error(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| HsError::Protocol(format!("bad JSON: {e}")))
    }
}

/// Tries of one homeserver call (the first included).
const TRIES: u32 = 3;
/// Longest wait a 429 may ask for inside one call; a longer one is waited
/// out by the caller's own retry (the inbox or the outbox).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

/// How long to wait before try `attempt + 1`: what a 429 asks for (bounded),
/// else 250 ms, 1 s.
fn retry_wait(e: &HsError, attempt: u32) -> Duration {
    match e.retry_after() {
        Some(d) => d.min(MAX_RETRY_AFTER),
        None => Duration::from_millis(250) * 4u32.pow(attempt - 1),
    }
}

fn api_error(status: u16, body: &[u8]) -> HsError {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    HsError::Api {
        retry_after_ms: v["retry_after_ms"].as_u64(),
        status,
        errcode: v["errcode"].as_str().unwrap_or("M_UNKNOWN").to_string(),
        message: v["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()),
    }
}

/// reqwest's errors without the URL (it may carry `?user_id=`, never a token,
/// but keep log lines short).
fn describe_reqwest(e: &reqwest::Error) -> String {
    let kind = if e.is_connect() {
        "connection failed"
    } else if e.is_timeout() {
        "timed out"
    } else if e.is_body() || e.is_decode() {
        "bad response body"
    } else {
        "request failed"
    };
    let mut src = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = src {
        detail = s.to_string();
        src = s.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {detail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_waits_as_told() {
        let e = api_error(
            429,
            br#"{"errcode":"M_LIMIT_EXCEEDED","error":"slow down","retry_after_ms":1200}"#,
        );
        assert!(e.is_transient());
        assert_eq!(retry_wait(&e, 1), Duration::from_millis(1200));
        let long = api_error(
            429,
            br#"{"errcode":"M_LIMIT_EXCEEDED","retry_after_ms":600000}"#,
        );
        assert_eq!(retry_wait(&long, 1), MAX_RETRY_AFTER);
    }

    #[test]
    fn transient_errors_back_off() {
        let e = HsError::Unreachable("refused".into());
        assert_eq!(retry_wait(&e, 1), Duration::from_millis(250));
        assert_eq!(retry_wait(&e, 2), Duration::from_secs(1));
        let refused = api_error(403, br#"{"errcode":"M_FORBIDDEN"}"#);
        assert!(!refused.is_transient());
    }
}
