//! The web pages (watch, embed, widget, multi-view, publish, index) and their
//! assets, built from `widget/` by `build.rs` and embedded in the binary, plus
//! the multi-view layouts: `config/layouts/*.json` shipped inside the binary,
//! and the same folder next to the config file read at run time so producers can
//! add their own (a file there overrides a shipped one of the same name).

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::ApiError;
use crate::http::App;

include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));

/// Layouts shipped with roomcast: (name, JSON).
const SHIPPED_LAYOUTS: &[(&str, &str)] = &[(
    "four-player",
    include_str!("../../config/layouts/four-player.json"),
)];

/// Most slots a layout may have (each is a WebRTC viewer in the producer's browser).
const MAX_SLOTS: usize = 16;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/", get(index))
        .route("/watch/{stream}", get(watch))
        .route("/embed/{stream}", get(embed))
        .route("/publish/{stream}", get(publish))
        .route("/widget", get(widget))
        .route("/party/{name}", get(party))
        .route("/multiview", get(multiview))
        .route("/assets/{file}", get(asset))
        .route("/api/v1/layouts", get(list_layouts))
        .route("/api/v1/layouts/{name}", get(get_layout))
}

fn asset_bytes(path: &str) -> Option<(&'static str, &'static [u8])> {
    ASSETS
        .iter()
        .find(|(p, _, _)| *p == path)
        .map(|(_, ct, b)| (*ct, *b))
}

/// Content-Security-Policy of every page: nothing from other origins, no inline
/// script. Inline styles are allowed: OBS injects a browser source's custom CSS
/// as a `<style>` element.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; \
                   media-src 'self' blob:; connect-src 'self'; worker-src 'self' blob:; object-src 'none'; \
                   base-uri 'none'; form-action 'self'";

/// Serves one of the built HTML pages. `framable`: may be shown in other sites'
/// iframes (the embed, widget and multi-view are made for that).
fn page(name: &str, status: StatusCode, framable: bool, replace: Option<(&str, &str)>) -> Response {
    page_connecting(name, status, framable, replace, &[])
}

/// A page that plays WebRTC: with `cluster.redirect_viewers`, its WHEP POST
/// may be redirected to another node, which `connect-src` must allow.
fn player_page(
    app: &App,
    name: &str,
    status: StatusCode,
    replace: Option<(&str, &str)>,
) -> Response {
    let nodes = app
        .cluster
        .as_ref()
        .map(|c| c.redirect_origins())
        .unwrap_or_default();
    page_connecting(name, status, true, replace, &nodes)
}

/// [`page`], whose scripts may also connect to `origins` (checked
/// `scheme://host:port` strings).
fn page_connecting(
    name: &str,
    status: StatusCode,
    framable: bool,
    replace: Option<(&str, &str)>,
    origins: &[String],
) -> Response {
    let Some((ct, bytes)) = asset_bytes(&format!("{name}.html")) else {
        return ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "page_missing",
            format!("the page '{name}' was not built into this binary"),
        )
        .into_response();
    };
    let body = match replace {
        Some((marker, with)) => String::from_utf8_lossy(bytes)
            .replacen(marker, with, 1)
            .into_bytes(),
        None => bytes.to_vec(),
    };
    let mut csp = CSP.to_string();
    if !origins.is_empty() {
        csp = csp.replace(
            "connect-src 'self'",
            &format!("connect-src 'self' {}", origins.join(" ")),
        );
    }
    if !framable {
        csp.push_str("; frame-ancestors 'self'");
    }
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    resp
}

/// 200 for a known stream, 404 (same page, which then says so) for an unknown one.
fn stream_status(app: &App, name: &str) -> StatusCode {
    if app.hub.get(name).is_some() {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    }
}

async fn index() -> Response {
    page("index", StatusCode::OK, false, None)
}

async fn watch(State(app): State<Arc<App>>, Path(stream): Path<String>) -> Response {
    let s = app.hub.get(&stream);
    let og = super::open_graph::watch_tags(
        &app.public_base,
        &stream,
        s.as_deref(),
        app.thumbnails.enabled(),
    );
    player_page(
        &app,
        "watch",
        stream_status(&app, &stream),
        Some(("<!--og-->", &og)),
    )
}

async fn embed(State(app): State<Arc<App>>, Path(stream): Path<String>) -> Response {
    player_page(&app, "embed", stream_status(&app, &stream), None)
}

async fn publish(State(app): State<Arc<App>>, Path(stream): Path<String>) -> Response {
    // Not framable: it takes the stream key.
    page("publish", stream_status(&app, &stream), false, None)
}

async fn party(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    // Not framable: it takes the party key.
    let status = if app.parties.exists(&name) {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    };
    page("party", status, false, None)
}

async fn widget(State(app): State<Arc<App>>) -> Response {
    player_page(&app, "widget", StatusCode::OK, None)
}

#[derive(Deserialize)]
struct MultiviewQuery {
    layout: Option<String>,
}

/// `/multiview`; with `?layout=NAME` the layout is checked here (unknown → 404
/// JSON) and handed to the page inside it.
async fn multiview(State(app): State<Arc<App>>, Query(q): Query<MultiviewQuery>) -> Response {
    let Some(name) = q.layout.filter(|n| !n.is_empty()) else {
        return player_page(&app, "multiview", StatusCode::OK, None);
    };
    let layout = match load_layout(&app, &name) {
        Ok(l) => l,
        Err(e) => return e.into_response(),
    };
    // JSON inside <script>: escape '<' so no "</script>" can end it early.
    let json = serde_json::to_string(&layout)
        .unwrap_or_else(|_| "null".into())
        .replace('<', "\\u003c");
    let tag = format!("<script type=\"application/json\" id=\"layout\">{json}</script>");
    player_page(
        &app,
        "multiview",
        StatusCode::OK,
        Some(("<!--layout-->", &tag)),
    )
}

async fn asset(Path(file): Path<String>) -> Response {
    match asset_bytes(&format!("assets/{file}")) {
        Some((ct, bytes)) => (
            [
                (header::CONTENT_TYPE, ct),
                // Names carry a content hash.
                (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            bytes,
        )
            .into_response(),
        None => ApiError::not_found(format!("no asset '{file}'")).into_response(),
    }
}

// --- layouts -------------------------------------------------------------------

/// A multi-view layout: slots at pixel rectangles of a `width`×`height` page.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub width: u32,
    pub height: u32,
    pub slots: Vec<Slot>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Slot {
    pub id: String,
    /// The stream shown there unless `?streams=` says otherwise.
    pub stream: String,
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl Layout {
    /// Parses and checks a layout file; the error says what to fix.
    pub fn parse(text: &str) -> Result<Layout, String> {
        let l: Layout = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if l.width == 0 || l.height == 0 || l.width > 7680 || l.height > 4320 {
            return Err(format!(
                "width and height must be 1 to 7680×4320 pixels (got {}×{})",
                l.width, l.height
            ));
        }
        if l.slots.is_empty() || l.slots.len() > MAX_SLOTS {
            return Err(format!(
                "a layout has 1 to {MAX_SLOTS} slots (got {})",
                l.slots.len()
            ));
        }
        let mut ids = std::collections::HashSet::new();
        for (i, s) in l.slots.iter().enumerate() {
            if s.id.is_empty() || !ids.insert(s.id.as_str()) {
                return Err(format!("slots[{i}].id must be non-empty and unique"));
            }
            crate::config::validate_stream_name(&s.stream)
                .map_err(|e| format!("slots[{i}].stream: {e}"))?;
            if s.width == 0 || s.height == 0 {
                return Err(format!("slots[{i}] ({}) has no area", s.id));
            }
            if u64::from(s.x) + u64::from(s.width) > u64::from(l.width)
                || u64::from(s.y) + u64::from(s.height) > u64::from(l.height)
            {
                return Err(format!(
                    "slots[{i}] ({}) at {},{} size {}×{} does not fit the {}×{} page",
                    s.id, s.x, s.y, s.width, s.height, l.width, l.height
                ));
            }
        }
        Ok(l)
    }
}

/// `<config dir>/layouts`, or `config/layouts` in the working directory without a config file.
fn layouts_dir(app: &App) -> PathBuf {
    app.config
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("config"))
        .join("layouts")
}

fn valid_layout_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

fn load_layout(app: &App, name: &str) -> Result<Layout, ApiError> {
    let dir = layouts_dir(app);
    let unknown = || {
        let mut names = layout_names(app);
        names.sort();
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_layout",
            format!(
                "there is no layout '{name}': put {name}.json in {} or use one of: {}",
                dir.display(),
                names.join(", ")
            ),
        )
    };
    if !valid_layout_name(name) {
        return Err(unknown());
    }
    let path = dir.join(format!("{name}.json"));
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => Some((t, path.display().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "invalid_layout",
                format!("cannot read layout file {}: {e}", path.display()),
            ));
        }
    };
    let (text, origin) = match text {
        Some(t) => t,
        None => match SHIPPED_LAYOUTS.iter().find(|(n, _)| *n == name) {
            Some((_, t)) => ((*t).to_string(), format!("the shipped layout '{name}'")),
            None => return Err(unknown()),
        },
    };
    Layout::parse(&text).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "invalid_layout",
            format!("layout {origin} is not valid: {e}"),
        )
    })
}

fn layout_names(app: &App) -> Vec<String> {
    let mut names: Vec<String> = SHIPPED_LAYOUTS.iter().map(|(n, _)| n.to_string()).collect();
    if let Ok(rd) = std::fs::read_dir(layouts_dir(app)) {
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json")
                && let Some(stem) = p.file_stem().and_then(|s| s.to_str())
                && valid_layout_name(stem)
                && !names.iter().any(|n| n == stem)
            {
                names.push(stem.to_string());
            }
        }
    }
    names
}

async fn list_layouts(State(app): State<Arc<App>>) -> impl IntoResponse {
    let mut names = layout_names(&app);
    names.sort();
    Json(names)
}

async fn get_layout(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Json<Layout>, ApiError> {
    load_layout(&app, &name).map(Json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_is_built() {
        for p in [
            "index",
            "watch",
            "embed",
            "widget",
            "multiview",
            "publish",
            "party",
        ] {
            let (ct, html) = asset_bytes(&format!("{p}.html")).expect(p);
            assert!(ct.starts_with("text/html"));
            let html = String::from_utf8_lossy(html);
            assert!(
                html.contains("<script type=\"module\" src=\"/assets/"),
                "{p}: {html}"
            );
            assert!(
                !html.contains("http://") || html.contains("www.w3.org"),
                "{p} links elsewhere"
            );
        }
        assert!(
            asset_bytes("multiview.html")
                .is_some_and(|(_, b)| { String::from_utf8_lossy(b).contains("<!--layout-->") })
        );
    }

    #[test]
    fn shipped_layouts_are_valid() {
        for (name, text) in SHIPPED_LAYOUTS {
            let l = Layout::parse(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!((l.width, l.height), (1920, 1080), "{name}");
        }
        let l = Layout::parse(SHIPPED_LAYOUTS[0].1).unwrap();
        assert_eq!(l.slots.len(), 4);
    }

    #[test]
    fn bad_layouts_say_why() {
        let e = Layout::parse(r#"{"width":100,"height":100,"slots":[]}"#).unwrap_err();
        assert!(e.contains("1 to 16 slots"), "{e}");
        let e = Layout::parse(
            r#"{"width":100,"height":100,"slots":[{"id":"a","stream":"a","x":50,"y":0,"width":60,"height":10}]}"#,
        )
        .unwrap_err();
        assert!(e.contains("does not fit"), "{e}");
        let e = Layout::parse(
            r#"{"width":100,"height":100,"slots":[{"id":"a","stream":"A B","x":0,"y":0,"width":10,"height":10}]}"#,
        )
        .unwrap_err();
        assert!(e.contains("slots[0].stream"), "{e}");
        let e = Layout::parse(r#"{"width":100,"height":100,"slotz":[]}"#).unwrap_err();
        assert!(e.contains("slotz"), "{e}");
        assert!(!valid_layout_name("../etc/passwd"));
        assert!(valid_layout_name("four-player"));
    }
}
