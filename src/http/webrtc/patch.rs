//! `PATCH` on a WHIP or WHEP session (RFC 9725 §4.3, bodies per RFC 8840):
//! trickle ICE, which an ICE-lite server needs nothing from (204), and an
//! ICE restart of a WHEP viewer, answered 200 with the server's new
//! credentials. The secret in the URL proves ownership, as for `DELETE`;
//! the restart itself runs in the engine (`rtc::ice_path`).

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use str0m::IceCreds;

use super::resources::Kind;
use super::{no_session, protocol};
use crate::http::error::read_body;
use crate::http::extract::content_type_is;
use crate::http::{ApiError, App};
use crate::rtc::{IceRestartError, sdpfrag};

const SDPFRAG: &str = "application/trickle-ice-sdpfrag";
/// Largest fragment read: a restart with a few dozen candidates fits in a
/// few KB.
pub const MAX_SDPFRAG_BYTES: usize = 16 * 1024;

pub async fn handle(
    app: &App,
    kind: Kind,
    stream: &str,
    secret: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Some(session) = app.resources.session(kind, stream, secret) else {
        return Err(no_session(protocol(kind), stream));
    };
    if !content_type_is(headers, SDPFRAG) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("PATCH takes Content-Type: {SDPFRAG}"),
        ));
    }
    let body = read_body(body, MAX_SDPFRAG_BYTES.min(app.config.http.max_body_bytes)).await?;
    let frag = sdpfrag::parse(&body).map_err(|e| {
        ApiError::bad_request("bad_sdpfrag", format!("malformed SDP fragment: {e}"))
    })?;
    if !if_match(headers, &session.etag) {
        return Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "etag_mismatch",
            "If-Match does not name this session's current ICE state (an ICE restart changed its ETag); send If-Match: \"*\" to restart ICE",
        ));
    }
    let (Some(ufrag), Some(pwd)) = (frag.ufrag.as_deref(), frag.pwd.as_deref()) else {
        // Trickle ICE: the server is ICE-lite and answers checks from
        // whatever address they come, so candidates need no action.
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    if session.remote_ufrag.as_deref() == Some(ufrag) {
        // Candidates of the current ICE generation (RFC 8840 §4.4).
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    if kind == Kind::Publisher {
        // RFC 9725 §4.3.1: what is not supported gets 405.
        let mut r = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "ice_restart_unsupported",
            "WHIP sessions do not support ICE restarts; DELETE the session and publish again",
        )
        .into_response();
        r.headers_mut().insert(
            header::ALLOW,
            header::HeaderValue::from_static("OPTIONS, POST, PATCH, DELETE"),
        );
        return Ok(r);
    }
    let remote = IceCreds {
        ufrag: ufrag.to_string(),
        pass: pwd.to_string(),
    };
    let local = app
        .engine
        .restart_viewer_ice(stream, session.id, remote)
        .await
        .map_err(|e| match e {
            IceRestartError::NoSession => no_session(protocol(kind), stream),
            IceRestartError::Busy => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", e.to_string()).retry_after(1)
            }
        })?;
    let etag = app
        .resources
        .restarted(secret, ufrag)
        .ok_or_else(|| no_session(protocol(kind), stream))?;
    tracing::info!(stream, session = session.id, "WHEP viewer restarted ICE");
    let answer = sdpfrag::answer(
        &local.ufrag,
        &local.pass,
        frag.mid.as_deref(),
        &app.engine.viewer_candidates(),
    );
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, SDPFRAG.to_string()),
            (header::ETAG, format!("\"{etag}\"")),
        ],
        answer,
    )
        .into_response())
}

/// RFC 9110 §13.1.1: no `If-Match`, `*`, or a list naming `etag` (strong or
/// weak: a session's ETag is only compared for equality).
fn if_match(headers: &HeaderMap, etag: &str) -> bool {
    let mut values = headers.get_all(header::IF_MATCH).iter().peekable();
    if values.peek().is_none() {
        return true;
    }
    values
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim())
        .any(|t| t == "*" || t.trim_start_matches("W/").trim_matches('"') == etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_takes_star_the_current_tag_or_nothing() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::IF_MATCH, v.parse().unwrap());
            h
        };
        assert!(if_match(&HeaderMap::new(), "abc"));
        assert!(if_match(&with("*"), "abc"));
        assert!(if_match(&with("\"abc\""), "abc"));
        assert!(if_match(&with("\"x\", W/\"abc\""), "abc"));
        assert!(!if_match(&with("\"abd\""), "abc"));
        assert!(!if_match(&with(""), "abc"));
    }
}
