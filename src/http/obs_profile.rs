//! OBS profile downloads (src/obs_profile): `GET
//! /api/v1/streams/{name}/obs-profile` with the stream key as Bearer token,
//! and the bot's one-time links `GET /obs/{secret}` (24 h, used up by the
//! first download, dead once the key is rotated).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use subtle::ConstantTimeEq;
use tracing::{info, warn};

use super::ApiError;
use crate::http::App;
use crate::log_every::LogEvery;
use crate::obs_profile::{self, Profile, link};

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/api/v1/streams/{name}/obs-profile", get(by_key))
        .route("/obs/{secret}", get(by_link))
}

static STORE_FAILED: LogEvery = LogEvery::new(std::time::Duration::from_secs(60));

fn storage(e: crate::store::StoreError) -> ApiError {
    if STORE_FAILED.allow().is_some() {
        warn!("obs profile: the database failed: {e}");
    }
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "storage",
        "the database is not answering; try again",
    )
    .retry_after(5)
}

/// The stream key as Bearer token: the profile carries that key.
async fn by_key(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    if app.hub.get(&name).is_none() {
        return Err(ApiError::unknown_stream(&name));
    }
    let Some(key) = super::extract::bearer(&headers) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "key_required",
            "send the stream key as `Authorization: Bearer KEY`",
        ));
    };
    if !app.keys.verify(&name, key) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "bad_key",
            "that is not this stream's key",
        ));
    }
    Ok(zip_response(&app, &name, key))
}

/// A one-time link: 404 for anything but an unused, unexpired link whose
/// key is still the stream's.
async fn by_link(
    State(app): State<Arc<App>>,
    Path(secret): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let gone = || ApiError::not_found("this profile link is unknown, used, expired or revoked");
    let secret = secret.strip_suffix(".zip").unwrap_or(&secret);
    if !link::well_formed(secret) {
        return Err(gone());
    }
    let id = link::id_of(secret);
    let Some(stream) = app.store.obs_link_stream(&id).await.map_err(storage)? else {
        return Err(gone());
    };
    let key = link::key_of(secret);
    let current = app.store.key_hash_of(&stream).await.map_err(storage)?;
    let matches = current.is_some_and(|h| {
        bool::from(
            h.as_bytes()
                .ct_eq(crate::auth::keys::hash_key_hex(&key).as_bytes()),
        )
    });
    if !matches || app.hub.get(&stream).is_none() {
        // Rotated since: the link can never work again.
        let _ = app.store.consume_obs_link(&id).await;
        return Err(gone());
    }
    if !app.store.consume_obs_link(&id).await.map_err(storage)? {
        return Err(gone());
    }
    info!(stream = %stream, "obs profile: a one-time link was downloaded");
    Ok(zip_response(&app, &stream, &key))
}

fn zip_response(app: &App, stream: &str, key: &str) -> impl IntoResponse + use<> {
    let cfg = &app.config.obs_profile;
    let (width, height) = cfg.size();
    let profile = Profile {
        stream: stream.to_string(),
        key: key.to_string(),
        rtmp_server: app.rtmp_url.clone(),
        whip_url: format!("{}/whip/{stream}", app.public_base),
        video_kbps: cfg.video_kbps,
        audio_kbps: cfg.audio_kbps,
        width,
        height,
    };
    let body = obs_profile::build_zip(&profile);
    let disposition = format!(
        "attachment; filename=\"{}-obs-profile.zip\"",
        obs_profile::folder(stream)
    );
    (
        [
            (header::CONTENT_TYPE, "application/zip".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
        body,
    )
}
