//! The HTTP API the pages use for Matrix things (docs/api.md): guests and
//! their chat messages, viewer access by OpenID, the streams of a room.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::http::ApiError;
use crate::http::App;
use crate::http::error::read_json;
use crate::matrix::Matrix;
use crate::matrix::access::{ACCESS_TTL_SECS, OpenIdError};
use crate::matrix::chat::{GuestError, MAX_GUEST_CHARS};

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/api/v1/guests", post(create_guest))
        .route("/api/v1/streams/{name}/chat", post(post_chat))
        .route("/api/v1/streams/{name}/access", post(access))
        .route(
            "/api/v1/streams/{name}/media/{server}/{media_id}",
            get(super::media::chat_media),
        )
        .route("/api/v1/rooms/{room_id}/streams", get(room_streams))
}

/// The client's address (for per-address limits), through trusted proxies.
pub struct ClientIp(pub IpAddr);

impl FromRequestParts<Arc<App>> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<App>,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        Ok(ClientIp(crate::http::client_addr(
            peer,
            &parts.headers,
            &app.config.http.trusted_proxies,
        )))
    }
}

fn no_chat(name: Option<&str>) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_chat",
        match name {
            Some(n) => format!("stream '{n}' has no Matrix room chat"),
            None => "this server has no Matrix chat".to_string(),
        },
    )
}

fn matrix_of(app: &App) -> Result<&Arc<Matrix>, ApiError> {
    app.matrix.as_ref().ok_or_else(|| no_chat(None))
}

async fn json_body<T: for<'de> Deserialize<'de>>(app: &App, body: Body) -> Result<T, ApiError> {
    read_json(body, app.config.http.max_body_bytes).await
}

fn unavailable(detail: &str) -> ApiError {
    tracing::warn!("matrix: homeserver call for a page failed: {detail}");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "homeserver_unavailable",
        "the chat server is not reachable right now; try again shortly",
    )
}

fn guest_error(e: GuestError, stream: Option<&str>) -> Response {
    match e {
        GuestError::BadToken => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "guest_token_required",
            "this guest token is not valid; pick a name again",
        )
        .into_response(),
        GuestError::NoChat => no_chat(stream).into_response(),
        GuestError::Banned => ApiError::new(
            StatusCode::FORBIDDEN,
            "guest_banned",
            "you were removed from this chat by a moderator",
        )
        .into_response(),
        GuestError::MembersOnly => ApiError::new(
            StatusCode::FORBIDDEN,
            "members_only",
            "this chat is for members of the Matrix room; guests cannot post here",
        )
        .into_response(),
        GuestError::RateLimited(wait) => {
            let secs = wait.as_secs().max(1);
            (
                [(header::RETRY_AFTER, secs.to_string())],
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!("slow down: try again in {secs} s"),
                ),
            )
                .into_response()
        }
        GuestError::Unavailable(d) => unavailable(&d).into_response(),
    }
}

#[derive(Deserialize)]
struct NewGuest {
    name: String,
}

/// Guest names: 1–32 characters after trimming, no control characters.
pub fn validate_guest_name(name: &str) -> Result<&str, ApiError> {
    let n = name.trim();
    let count = n.chars().count();
    if count == 0 || count > 32 || n.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "bad_name",
            "a name has 1 to 32 characters and no control characters",
        ));
    }
    Ok(n)
}

async fn create_guest(State(app): State<Arc<App>>, ClientIp(ip): ClientIp, body: Body) -> Response {
    let m = match matrix_of(&app) {
        Ok(m) => m,
        Err(e) => return e.into_response(),
    };
    let req: NewGuest = match json_body(&app, body).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let name = match validate_guest_name(&req.name) {
        Ok(n) => n,
        Err(e) => return e.into_response(),
    };
    // Guests are limited per address, and an IPv6 client per /64 (it can
    // rotate through its whole prefix).
    match m
        .create_guest(name, crate::admission::rate::network_of(ip))
        .await
    {
        Ok((token, display)) => (
            StatusCode::CREATED,
            Json(json!({"guest_token": token, "display_name": display})),
        )
            .into_response(),
        Err(e) => guest_error(e, None),
    }
}

#[derive(Deserialize)]
struct ChatPost {
    body: String,
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

async fn post_chat(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(token) = bearer(&headers).map(str::to_string) else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "guest_token_required",
            "pick a name first (POST /api/v1/guests) and send its guest_token as Authorization: Bearer",
        )
        .into_response();
    };
    if app.hub.get(&name).is_none() {
        return ApiError::unknown_stream(&name).into_response();
    }
    let m = match app.matrix.as_ref() {
        Some(m) => m,
        None => return no_chat(Some(&name)).into_response(),
    };
    let req: ChatPost = match json_body(&app, body).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let text = req.body.trim();
    if text.is_empty() {
        return ApiError::bad_request("empty_message", "the message is empty").into_response();
    }
    if text.chars().count() > MAX_GUEST_CHARS {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "message_too_long",
            format!("a message has at most {MAX_GUEST_CHARS} characters"),
        )
        .into_response();
    }
    match m.post_guest_message(&name, &token, text, ip).await {
        Ok(id) => (StatusCode::CREATED, Json(json!({"id": id}))).into_response(),
        Err(e) => guest_error(e, Some(&name)),
    }
}

#[derive(Deserialize)]
struct AccessReq {
    openid_token: String,
    matrix_server_name: String,
}

async fn access(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    ClientIp(ip): ClientIp,
    body: Body,
) -> Response {
    // Each exchange costs a homeserver round trip or two.
    if let Err(r) = app.admission.check_access_rate(ip) {
        return ApiError::from(r).into_response();
    }
    if app.hub.get(&name).is_none() {
        return ApiError::unknown_stream(&name).into_response();
    }
    let m = match app.matrix.as_ref() {
        Some(m) => m,
        None => return no_chat(Some(&name)).into_response(),
    };
    let req: AccessReq = match json_body(&app, body).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    match m
        .exchange_openid(&name, &req.openid_token, &req.matrix_server_name)
        .await
    {
        Ok(token) => {
            Json(json!({"access_token": token, "expires_in": ACCESS_TTL_SECS})).into_response()
        }
        Err(OpenIdError::NoRoom) => no_chat(Some(&name)).into_response(),
        Err(OpenIdError::ForeignServer(why)) => ApiError::new(
            StatusCode::FORBIDDEN,
            "access_denied",
            format!("the OpenID token's homeserver cannot be asked: {why}"),
        )
        .into_response(),
        Err(OpenIdError::BadToken) => ApiError::new(
            StatusCode::FORBIDDEN,
            "access_denied",
            "the homeserver did not accept this OpenID token",
        )
        .into_response(),
        Err(OpenIdError::NotAMember) => ApiError::new(
            StatusCode::FORBIDDEN,
            "not_a_member",
            "join the room to watch this stream",
        )
        .into_response(),
        Err(OpenIdError::Unavailable(d)) => unavailable(&d).into_response(),
    }
}

/// A private stream without access is listed by name only, so the room's
/// widget knows to ask for access (OpenID) before it shows anything else.
async fn room_streams(
    State(app): State<Arc<App>>,
    Path(room_id): Path<String>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let token = crate::http::extract::token_from(&headers, uri.query());
    let streams: Vec<_> = app
        .hub
        .streams()
        .iter()
        .filter(|s| s.room().is_some_and(|r| r.room_id == room_id))
        .map(|s| {
            let mut v = if app.admission.may_see(s, token.as_deref()) {
                serde_json::to_value(s.snapshot()).unwrap_or_default()
            } else {
                json!({"name": s.name, "access": "private"})
            };
            // A member's screen share: the widget shows it in the party grid.
            if app
                .matrix
                .as_ref()
                .is_some_and(|m| m.is_party_stream(&s.name))
            {
                v["party"] = json!(true);
            }
            v
        })
        .collect();
    Json(streams).into_response()
}
