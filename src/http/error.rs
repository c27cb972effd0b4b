//! Errors as JSON `{"error": "...", "code": "..."}` with a fitting status.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header (503, 429).
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unknown_stream(name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "unknown_stream",
            format!("there is no stream '{name}'"),
        )
    }

    pub fn offline(name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "stream_offline",
            format!("stream '{name}' is offline"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            Json(json!({"error": self.message, "code": self.code})),
        )
            .into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, s.into());
        }
        r
    }
}

/// Reads a request body up to `limit` bytes; larger bodies get a JSON 413,
/// one not sent within its deadline (`body_deadline`) a 408.
pub async fn read_body(body: axum::body::Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        if crate::http::body_deadline::timed_out(&e) {
            return ApiError::new(StatusCode::REQUEST_TIMEOUT, "body_timeout", e.to_string());
        }
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body is larger than {limit} bytes"),
        )
    })
}

/// Reads a JSON request body up to `limit` bytes (413 over it) and parses
/// it (400 `bad_json` with serde's reason).
pub async fn read_json<T: serde::de::DeserializeOwned>(
    body: axum::body::Body,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = read_body(body, limit).await?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(
            "bad_json",
            format!("the request body is not the expected JSON: {e}"),
        )
    })
}

impl From<&crate::auth::gate::Refusal> for ApiError {
    fn from(r: &crate::auth::gate::Refusal) -> Self {
        let (status, code) = r.status_code();
        ApiError::new(
            StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN),
            code,
            r.to_string(),
        )
    }
}

impl From<crate::admission::Refusal> for ApiError {
    fn from(r: crate::admission::Refusal) -> Self {
        use crate::admission::Refusal as R;
        let message = r.to_string();
        match r {
            R::Gate(g) => ApiError::from(&g),
            R::UnknownStream(name) => ApiError::unknown_stream(&name),
            R::Offline(name) => ApiError::offline(&name),
            R::AccessRequired(_) => {
                ApiError::new(StatusCode::UNAUTHORIZED, "access_required", message)
            }
            R::AccessExpired(_) | R::AccessDenied(_) => {
                ApiError::new(StatusCode::FORBIDDEN, "access_denied", message)
            }
            R::Busy(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "viewer_limit", message)
                .retry_after(30),
            R::RateLimited(secs) => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
                    .retry_after(secs)
            }
            R::UnknownRecording(_) => ApiError::not_found(message),
            R::RecordingsUnavailable => {
                ApiError::new(StatusCode::FORBIDDEN, "recordings_unavailable", message)
            }
        }
    }
}

impl ApiError {
    /// A party share over a cap (the widget's too): 503 with every cap it
    /// would pass.
    pub fn over_capacity(over: &[String]) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "party_over_capacity",
            format!(
                "sharing now would go over a limit: {}; try again when someone stops sharing",
                over.join("; ")
            ),
        )
    }

    /// A room party's request without its party token.
    pub fn party_token_required() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "party_token_required",
            "send the party token (POST …/party/session) as Authorization: Bearer",
        )
    }
}

/// A standalone party's refusals (`src/http/party.rs`).
impl From<crate::party::PartyError> for ApiError {
    fn from(e: crate::party::PartyError) -> Self {
        use crate::party::PartyError as E;
        let (status, code, msg) = match e {
            E::UnknownParty => (
                StatusCode::NOT_FOUND,
                "unknown_party",
                "there is no such party on this server",
            ),
            E::KeyRejected => (
                StatusCode::FORBIDDEN,
                "party_key_rejected",
                "the party key was rejected",
            ),
            E::BadName => (
                StatusCode::BAD_REQUEST,
                "bad_name",
                "a name has 1 to 32 characters and no control characters",
            ),
            E::Full => (
                StatusCode::SERVICE_UNAVAILABLE,
                "party_full",
                "this party is full; try again later",
            ),
            E::BadToken => (
                StatusCode::UNAUTHORIZED,
                "party_token_required",
                "join the party first (POST …/join) and send its party_token as Authorization: Bearer",
            ),
            E::OverCapacity(over) => return ApiError::over_capacity(&over),
        };
        ApiError::new(status, code, msg)
    }
}

/// A room party's refusals (`src/http/matrix/party.rs`).
impl From<crate::matrix::party::PartyError> for ApiError {
    fn from(e: crate::matrix::party::PartyError) -> Self {
        use crate::matrix::access::OpenIdError;
        use crate::matrix::party::PartyError as E;
        let (status, code, msg) = match e {
            E::Off => (
                StatusCode::NOT_FOUND,
                "party_off",
                "screen sharing is off in this room (a room admin says `!live party on`)"
                    .to_string(),
            ),
            E::NoRoom => (
                StatusCode::NOT_FOUND,
                "unknown_room",
                "this room has no roomcast stream".to_string(),
            ),
            E::OpenId(OpenIdError::Unavailable(d)) | E::Unavailable(d) => {
                tracing::warn!("party: homeserver call failed: {d}");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "homeserver_unavailable",
                    "the chat server is not reachable right now; try again shortly".to_string(),
                )
            }
            E::OpenId(_) | E::BadToken => (
                StatusCode::FORBIDDEN,
                "access_denied",
                "your Matrix identity could not be verified; reopen the widget".to_string(),
            ),
            E::NotAMember => (
                StatusCode::FORBIDDEN,
                "not_a_member",
                "join the room to take part".to_string(),
            ),
            E::NoPower { needed } => (
                StatusCode::FORBIDDEN,
                "not_enough_power",
                format!("sharing your screen here needs power level {needed} in the room"),
            ),
            E::OverCapacity(over) => return ApiError::over_capacity(&over),
        };
        ApiError::new(status, code, msg)
    }
}
