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
    pub async fn send<R>(
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
            return Err(api_error(status.as_u16(), &bytes));
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

fn api_error(status: u16, body: &[u8]) -> HsError {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    HsError::Api {
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
