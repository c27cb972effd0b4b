//! OBS profile downloads (src/obs_profile): `GET
//! /api/v1/streams/{name}/obs-profile` with the stream key as Bearer token,
//! and the bot's one-time links `/obs/{secret}` (24 h, used up by the first
//! download, dead once the key is rotated). A `GET` on a link only shows a
//! page with a download button; the `POST` it sends is the download that
//! uses the link up. Homeservers fetch links posted in rooms for their URL
//! previews, and such a fetch must not spend the link.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Html;
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
        .route("/obs/{secret}", get(link_page).post(by_link))
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

fn gone() -> ApiError {
    ApiError::not_found("this profile link is unknown, used, expired or revoked")
}

/// The stream and key of a live link (unused, unexpired, its key still the
/// stream's), or 404.
async fn live_link(app: &App, secret: &str) -> Result<(String, String, String), ApiError> {
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
    // A key rotated since (or a link whose DM's commit has not landed yet):
    // refused, and left alone: a link is spent only by its download.
    if !matches || app.hub.get(&stream).is_none() {
        return Err(gone());
    }
    Ok((id, stream, key))
}

/// The link's page: what it is, and a button that downloads (POST).
async fn link_page(
    State(app): State<Arc<App>>,
    Path(secret): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let (_, stream, _) = live_link(&app, &secret).await?;
    let page = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>OBS profile for {s}</title></head><body>\
         <h1>OBS profile for {s}</h1>\
         <p>This link downloads once, then stops working.</p>\
         <form method=\"post\"><button type=\"submit\">Download the profile</button></form>\
         <p>Unzip it, then in OBS: Profile → Import, pick the <code>{f}</code> folder \
         (<code>{f}-whip</code> for WHIP, OBS 30+), and switch to that profile.</p>\
         </body></html>",
        s = stream,
        f = obs_profile::folder(&stream),
    );
    Ok((
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; form-action 'self'",
            ),
        ],
        Html(page),
    ))
}

/// The download: uses the link up (one caller wins a race).
async fn by_link(
    State(app): State<Arc<App>>,
    Path(secret): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let (id, stream, key) = live_link(&app, &secret).await?;
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
