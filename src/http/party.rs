//! Standalone screen-share parties (src/party): `POST /api/v1/parties/{name}/join`
//! with the party key and a display name → a party token; with it as Bearer,
//! `GET /api/v1/parties/{name}` lists the sharers and `POST …/share` hands the
//! participant's stream and a publish grant for WHIP. The page is /party/{name}.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::http::error::read_body;
use crate::http::extract::bearer;
use crate::http::matrix::api::ClientIp;
use crate::http::{ApiError, App};
use crate::party::{PartyError, SHARE_STREAM_HOLD};

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/api/v1/parties/{name}", get(view))
        .route("/api/v1/parties/{name}/join", post(join))
        .route("/api/v1/parties/{name}/share", post(share))
        .route(
            "/api/v1/parties/{name}/events",
            get(crate::http::party_events::standalone),
        )
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Deserialize)]
struct JoinReq {
    key: String,
    display_name: String,
}

async fn join(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    ClientIp(ip): ClientIp,
    body: Body,
) -> Response {
    // Key guesses are limited per address, like OpenID exchanges.
    if let Err(r) = app.admission.check_access_rate(ip) {
        return ApiError::from(r).into_response();
    }
    let bytes = match read_body(body, app.config.http.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let req: JoinReq = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            return ApiError::bad_request(
                "bad_json",
                format!("expected {{key, display_name}}: {e}"),
            )
            .into_response();
        }
    };
    let live_of = |s: &str| app.hub.get(s).map(|s| s.is_live());
    match app
        .parties
        .join(&name, &req.key, &req.display_name, now(), live_of)
    {
        Ok(j) => {
            tracing::info!(party = %name, participant = %j.user_id, "party: participant joined");
            (StatusCode::CREATED, Json(j)).into_response()
        }
        Err(e) => {
            if e == PartyError::KeyRejected {
                tracing::info!(party = %name, client = %ip, "party: key rejected");
            }
            ApiError::from(e).into_response()
        }
    }
}

async fn view(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(token) = bearer(&headers) else {
        return ApiError::from(if app.parties.exists(&name) {
            PartyError::BadToken
        } else {
            PartyError::UnknownParty
        })
        .into_response();
    };
    let hub = app.hub.clone();
    let caps = |e: &mut _| app.admission.check_party_share(e);
    match app.parties.view(
        &name,
        token,
        now(),
        |s| hub.get(s).map(|s| s.is_live()),
        caps,
    ) {
        Ok(v) => Json(v).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn share(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(token) = bearer(&headers) else {
        return ApiError::from(PartyError::BadToken).into_response();
    };
    let hub = app.hub.clone();
    let caps = |e: &mut _| app.admission.check_party_share(e);
    let live_of = |s: &str| hub.get(s).map(|s| s.is_live());
    match app.parties.share(&name, token, now(), live_of, caps) {
        Ok(g) => {
            // The stream exists (titled with the name) before the WHIP POST,
            // and leaves the registry once the share is over (hub/tenure.rs).
            app.hub
                .ensure_ephemeral(&g.stream, Some(&g.display_name), SHARE_STREAM_HOLD);
            tracing::info!(party = %name, stream = %g.stream, "party: share granted");
            (StatusCode::CREATED, Json(g)).into_response()
        }
        Err(PartyError::OverCapacity(over)) => {
            tracing::info!(party = %name, "party: share refused: {}", over.join("; "));
            ApiError::over_capacity(&over).into_response()
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}
