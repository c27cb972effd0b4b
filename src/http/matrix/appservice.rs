//! The endpoints the homeserver calls (`/_matrix/app/v1/…`): transactions,
//! user and alias queries, ping. Every request must carry the hs_token
//! (`Authorization: Bearer`, compared in constant time; 403 `M_FORBIDDEN`).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use ruma::api::IncomingRequestExt;
use ruma::api::appservice::event::push_events;
use serde_json::json;
use subtle::ConstantTimeEq;
use tracing::warn;

use crate::http::App;
use crate::log_every::LogEvery;
use crate::matrix::{Ev, Matrix};

/// Largest transaction body: 100 events of at most 64 KiB each, and then some.
const MAX_TXN_BYTES: usize = 16 * 1024 * 1024;
static WRONG_TOKEN_LOG: LogEvery = LogEvery::new(std::time::Duration::from_secs(10));

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/_matrix/app/v1/transactions/{txn_id}", put(transaction))
        .route("/_matrix/app/v1/users/{user_id}", get(query_user))
        .route("/_matrix/app/v1/rooms/{alias}", get(query_alias))
        .route("/_matrix/app/v1/ping", post(ping))
        .route(
            "/_matrix/app/{*rest}",
            get(unrecognized).put(unrecognized).post(unrecognized),
        )
}

/// A Matrix error answer: `{"errcode", "error"}`.
fn mx_error(status: StatusCode, errcode: &str, error: &str) -> Response {
    (
        status,
        axum::Json(json!({"errcode": errcode, "error": error})),
    )
        .into_response()
}

fn ok_empty() -> Response {
    (StatusCode::OK, axum::Json(json!({}))).into_response()
}

async fn unrecognized() -> Response {
    mx_error(
        StatusCode::NOT_FOUND,
        "M_UNRECOGNIZED",
        "unrecognized request",
    )
}

/// Checks the hs_token; `Err` is the answer to send.
#[allow(clippy::result_large_err)] // an axum Response, returned at once
fn authorize(
    matrix: Option<&Arc<Matrix>>,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Arc<Matrix>, Response> {
    let Some(m) = matrix else {
        return Err(unrecognized_now());
    };
    let header_token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    // Legacy `?access_token=` is accepted too (homeservers before spec v1.4).
    let query_token =
        query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("access_token=")));
    let Some(token) = header_token.or(query_token) else {
        return Err(mx_error(
            StatusCode::UNAUTHORIZED,
            "M_UNAUTHORIZED",
            "missing the homeserver's token (Authorization: Bearer <hs_token>)",
        ));
    };
    if bool::from(token.as_bytes().ct_eq(m.hs_token().as_bytes())) {
        Ok(m.clone())
    } else {
        // Anyone can reach this route: logged at most once per interval.
        if let Some(suppressed) = WRONG_TOKEN_LOG.allow() {
            warn!(
                suppressed,
                "matrix: appservice request with a wrong hs_token refused"
            );
        }
        Err(mx_error(
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
            "wrong hs_token",
        ))
    }
}

fn unrecognized_now() -> Response {
    mx_error(
        StatusCode::NOT_FOUND,
        "M_UNRECOGNIZED",
        "the Matrix appservice is not configured",
    )
}

async fn transaction(
    State(app): State<Arc<App>>,
    Path(txn_id): Path<String>,
    req: Request<Body>,
) -> Response {
    let (parts, body) = req.into_parts();
    let m = match authorize(app.matrix.as_ref(), &parts.headers, parts.uri.query()) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let bytes = match axum::body::to_bytes(body, MAX_TXN_BYTES).await {
        Ok(bytes) => bytes,
        Err(e) if crate::http::body_deadline::timed_out(&e) => {
            // The homeserver retries the transaction.
            return mx_error(StatusCode::REQUEST_TIMEOUT, "M_UNKNOWN", &e.to_string());
        }
        Err(_) => {
            return mx_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "M_TOO_LARGE",
                "transaction too large",
            );
        }
    };
    let http_req = Request::from_parts(parts, bytes.as_ref());
    // Parse the whole transaction before applying anything.
    let events = match parse_transaction(http_req, &txn_id) {
        Ok(events) => events,
        Err(e) => {
            warn!(txn = %txn_id, "matrix: malformed transaction refused: {e}");
            return mx_error(
                StatusCode::BAD_REQUEST,
                "M_NOT_JSON",
                &format!("malformed transaction: {e}"),
            );
        }
    };
    // Written to the inbox, then answered: processing happens per room,
    // after the answer, so a slow room never holds up the homeserver.
    match m.accept_transaction(&txn_id, &events).await {
        Ok(()) => ok_empty(),
        Err(e) => {
            warn!(txn = %txn_id, "matrix: transaction not applied, the homeserver will retry: {e}");
            mx_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "M_UNKNOWN",
                "cannot apply the transaction now; retry",
            )
        }
    }
}

/// A transaction request's events as roomcast reads them (events of another
/// shape are skipped); an error for a malformed request. No I/O (the fuzz
/// target's entry too).
pub fn parse_transaction(
    req: Request<&[u8]>,
    txn_id: &str,
) -> Result<Vec<Ev>, ruma::api::error::FromHttpRequestError> {
    let parsed = push_events::v1::Request::try_from_http_request(req, &[txn_id])?;
    Ok(parsed
        .events
        .iter()
        .filter_map(|raw| raw.deserialize_as_unchecked::<Ev>().ok())
        .collect())
}

async fn query_user(
    State(app): State<Arc<App>>,
    Path(user_id): Path<String>,
    req: Request<Body>,
) -> Response {
    let m = match authorize(app.matrix.as_ref(), req.headers(), req.uri().query()) {
        Ok(m) => m,
        Err(r) => return r,
    };
    // Puppets are registered when they are created; only the bot may be
    // asked for before it registered itself.
    if user_id == m.bot().as_str() {
        ok_empty()
    } else {
        mx_error(StatusCode::NOT_FOUND, "M_NOT_FOUND", "no such user")
    }
}

async fn query_alias(
    State(app): State<Arc<App>>,
    Path(alias): Path<String>,
    req: Request<Body>,
) -> Response {
    let m = match authorize(app.matrix.as_ref(), req.headers(), req.uri().query()) {
        Ok(m) => m,
        Err(r) => return r,
    };
    match m.query_alias(&alias).await {
        Ok(true) => ok_empty(),
        Ok(false) => mx_error(StatusCode::NOT_FOUND, "M_NOT_FOUND", "no such room"),
        Err(e) => {
            warn!(alias = %alias, "matrix: creating a room on demand failed: {e}");
            mx_error(
                StatusCode::NOT_FOUND,
                "M_NOT_FOUND",
                "cannot create the room now",
            )
        }
    }
}

async fn ping(State(app): State<Arc<App>>, req: Request<Body>) -> Response {
    match authorize(app.matrix.as_ref(), req.headers(), req.uri().query()) {
        Ok(_) => ok_empty(),
        Err(r) => r,
    }
}
