//! Screen-share parties' API for the room widget (matrix/party.rs):
//! `POST /api/v1/rooms/{room}/party/session` trades the widget's OpenID token
//! for a party token; with it (`Authorization: Bearer`), `GET …/party` lists
//! the sharers and `POST …/party/share` hands the member's stream and a
//! publish grant for WHIP.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::api::ClientIp;
use crate::http::error::read_body;
use crate::http::{ApiError, App};
use crate::matrix::party::PartyError;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/api/v1/rooms/{room_id}/party", get(view))
        .route("/api/v1/rooms/{room_id}/party/session", post(session))
        .route("/api/v1/rooms/{room_id}/party/share", post(share))
        .route(
            "/api/v1/rooms/{room_id}/party/events",
            get(crate::http::party_events::room),
        )
}

#[derive(Deserialize)]
struct SessionReq {
    openid_token: String,
    matrix_server_name: String,
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    crate::http::extract::bearer(headers)
}

async fn session(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    ClientIp(ip): ClientIp,
    body: Body,
) -> Response {
    if let Err(r) = app.admission.check_access_rate(ip) {
        return ApiError::from(r).into_response();
    }
    let Some(m) = app.matrix.as_ref() else {
        return ApiError::from(PartyError::NoRoom).into_response();
    };
    let bytes = match read_body(body, app.config.http.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let req: SessionReq = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            return ApiError::bad_request(
                "bad_json",
                format!("expected {{openid_token, matrix_server_name}}: {e}"),
            )
            .into_response();
        }
    };
    match m
        .party_welcome(&room, &req.openid_token, &req.matrix_server_name)
        .await
    {
        Ok(w) => Json(w).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn view(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Response {
    // No party (no Matrix, an unknown room) is an answer, not an error: the
    // widget asks in every room.
    let Some(m) = app.matrix.as_ref() else {
        return Json(serde_json::json!({"enabled": false, "sharers": []})).into_response();
    };
    let caps = |e: &mut _| app.admission.check_party_share(e);
    match m.party_view(&room, bearer(&headers), caps).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn share(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
) -> Response {
    // Asks the homeserver for membership and power: per address.
    if let Err(r) = app.admission.check_access_rate(ip) {
        return ApiError::from(r).into_response();
    }
    let Some(m) = app.matrix.as_ref() else {
        return ApiError::from(PartyError::NoRoom).into_response();
    };
    let Some(token) = bearer(&headers) else {
        return ApiError::party_token_required().into_response();
    };
    let caps = |e: &mut _| app.admission.check_party_share(e);
    match m.party_share(&room, token, caps).await {
        Ok(g) => (StatusCode::CREATED, Json(g)).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}
