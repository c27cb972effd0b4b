//! What WHIP and WHEP share for their session resources (`/whip|whep/{stream}/{id}`):
//! content-type checks, id parsing, trickle `PATCH` and `DELETE`.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::ApiError;
use super::error::read_body;

/// Whether the request's Content-Type (parameters ignored) is `wanted`.
pub fn content_type_is(headers: &HeaderMap, wanted: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(wanted))
}

/// "WHIP" or "WHEP", for messages.
pub type Protocol = &'static str;

pub fn no_session(protocol: Protocol, stream: &str, id: &str) -> ApiError {
    ApiError::not_found(format!("no {protocol} session {id} on stream '{stream}'"))
}

pub fn parse_id(protocol: Protocol, stream: &str, id: &str) -> Result<u64, ApiError> {
    id.parse().map_err(|_| no_session(protocol, stream, id))
}

/// Trickle ICE. The server is ICE-lite: it answers checks from whatever
/// address they come, so the client's candidates need no action; the fragment
/// is still read, and bounded.
pub async fn trickle(
    protocol: Protocol,
    stream: &str,
    id: &str,
    exists: impl FnOnce(u64) -> bool,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Response, ApiError> {
    let n = parse_id(protocol, stream, id)?;
    if !exists(n) {
        return Err(no_session(protocol, stream, id));
    }
    if !content_type_is(headers, "application/trickle-ice-sdpfrag") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "PATCH takes Content-Type: application/trickle-ice-sdpfrag",
        ));
    }
    read_body(body, limit).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE` on a session: `end` ends it and says whether it existed.
pub fn delete(
    protocol: Protocol,
    stream: &str,
    id: &str,
    end: impl FnOnce(u64) -> bool,
) -> Result<Response, ApiError> {
    let n = parse_id(protocol, stream, id)?;
    if end(n) {
        tracing::info!(stream, session = n, "{protocol} session ended by DELETE");
        Ok(StatusCode::OK.into_response())
    } else {
        Err(no_session(protocol, stream, id))
    }
}
