//! The pages over plain HTTP: every page is served with its embedded assets and
//! headers, unknown streams get 404, and multi-view layouts come from the
//! binary or the config directory, with JSON errors for bad ones; the
//! all-streams event feed the multi-view uses.

mod common;

use std::time::Duration;

use common::matrix::Sse;
use common::*;
use serde_json::Value;

fn get(server: &Server, path: &str) -> HttpResponse {
    server.get(path)
}

fn csp(server: &Server, path: &str) -> String {
    get(server, path)
        .header("content-security-policy")
        .unwrap_or_default()
        .to_string()
}

#[test]
fn pages_and_assets_are_served_from_the_binary() {
    let server = Server::start("");
    for path in [
        "/",
        "/watch/t1",
        "/embed/t1",
        "/widget",
        "/multiview",
        "/publish/t1",
    ] {
        let r = get(&server, path);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert!(
            r.content_type().starts_with("text/html"),
            "{path}: {:?}",
            r.header("content-type")
        );
        let csp = r.header("content-security-policy").unwrap_or_default();
        assert!(csp.contains("script-src 'self'"), "{path}: CSP {csp:?}");
        let html = r.text();
        assert!(
            !html.contains("cdn") && !html.contains("https://"),
            "{path} loads something from elsewhere"
        );
        // Every script and stylesheet it names is served, immutable, with its type.
        for (attr, ct) in [("src=\"/assets/", "javascript"), ("href=\"/assets/", "css")] {
            for part in html.split(attr).skip(1) {
                let name = part.split('"').next().unwrap();
                let a = get(&server, &format!("/assets/{name}"));
                assert_eq!(a.status, 200, "{path}: /assets/{name}");
                assert!(
                    a.content_type().contains(ct),
                    "/assets/{name}: {:?}",
                    a.header("content-type")
                );
                assert!(
                    a.header("cache-control")
                        .unwrap_or_default()
                        .contains("immutable")
                );
            }
        }
    }
    // The publish page takes a key: no framing by other sites.
    let publish = csp(&server, "/publish/t1");
    assert!(publish.contains("frame-ancestors 'self'"), "{publish}");
    // The embed, widget and multi-view are made for iframes and OBS.
    let embed = csp(&server, "/embed/t1");
    assert!(!embed.contains("frame-ancestors"), "{embed}");
    let r = get(&server, "/watch/nope");
    assert_eq!(r.status, 404, "unknown stream");
    assert!(r.content_type().starts_with("text/html"));
    assert_json_error(&get(&server, "/assets/nope.js"), 404, "unknown asset");
}

#[test]
fn layouts_come_from_the_binary_and_the_config_dir() {
    let server = Server::start("");
    let shipped: Value = get(&server, "/api/v1/layouts/four-player").json().unwrap();
    assert_eq!(shipped["width"], 1920);
    assert_eq!(shipped["slots"].as_array().unwrap().len(), 4);
    assert_eq!(shipped["slots"][1]["x"], 1000);

    // The page carries the layout; a bad name is a 404 JSON error naming what exists.
    let page = get(&server, "/multiview?layout=four-player").text();
    assert!(
        page.contains("<script type=\"application/json\" id=\"layout\">{"),
        "layout not in the page"
    );
    for bad in ["nope", "..%2Froomcast", "Four-Player"] {
        let v = assert_json_error(&get(&server, &format!("/multiview?layout={bad}")), 404, bad);
        assert_eq!(v["code"], "unknown_layout");
        assert!(v["error"].as_str().unwrap().contains("four-player"), "{v}");
        assert_json_error(&get(&server, &format!("/api/v1/layouts/{bad}")), 404, bad);
    }

    // A producer's own layout next to the config file, and a broken one.
    let dir = server.config_path.parent().unwrap().join("layouts");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("duo.json"),
        r#"{"width":1280,"height":720,"slots":[
            {"id":"left","stream":"t1","x":0,"y":0,"width":640,"height":360},
            {"id":"right","stream":"t2","x":640,"y":0,"width":640,"height":360}]}"#,
    )
    .unwrap();
    std::fs::write(dir.join("broken.json"), r#"{"width":100,"height":100,"slots":[{"id":"a","stream":"t1","x":90,"y":0,"width":20,"height":20}]}"#).unwrap();
    let names: Value = get(&server, "/api/v1/layouts").json().unwrap();
    assert_eq!(names, serde_json::json!(["broken", "duo", "four-player"]));
    let duo: Value = get(&server, "/api/v1/layouts/duo").json().unwrap();
    assert_eq!(duo["slots"][1]["id"], "right");
    assert_eq!(get(&server, "/multiview?layout=duo").status, 200);
    let v = assert_json_error(
        &get(&server, "/multiview?layout=broken"),
        500,
        "broken layout",
    );
    assert_eq!(v["code"], "invalid_layout");
    assert!(v["error"].as_str().unwrap().contains("does not fit"), "{v}");
}

/// `GET /api/v1/events?streams=…`: the state of the named streams on one
/// connection, each event naming its stream; streams not asked for stay out.
#[test]
fn all_streams_feed() {
    let _serial = serial();
    let server = Server::start("");
    let feed = Sse::open_path(&server, &format!("/api/v1/events?streams={STREAM},later"));
    let everything = Sse::open_path(&server, "/api/v1/events");
    feed.wait("title", Duration::from_secs(10), |d| d["name"] == STREAM);
    feed.wait("offline", Duration::from_secs(10), |d| d["name"] == STREAM);
    everything.wait("offline", Duration::from_secs(10), |d| d["name"] == STREAM2);

    let mut p1 = Publisher::ffmpeg(&server.rtmp_url(server.key(STREAM)), FfmpegOpts::default());
    let _p2 = Publisher::ffmpeg(&server.rtmp_url(server.key(STREAM2)), FfmpegOpts::default());
    let live = feed.wait("live", LIVE_TIMEOUT, |d| d["name"] == STREAM);
    assert_eq!(live["live"], true, "{live}");
    assert_eq!(live["ingest"]["protocol"], "rtmp", "{live}");
    everything.wait("live", LIVE_TIMEOUT, |d| d["name"] == STREAM2);
    p1.kill();
    feed.wait("offline", LIVE_TIMEOUT, |d| d["name"] == STREAM);
    // The second stream went live too, but this feed did not ask for it.
    assert!(
        feed.events().iter().all(|(_, d)| d["name"] == STREAM),
        "{:?}",
        feed.events()
    );

    // Bad input: clear 400s, and the server goes on.
    let r = get(&server, "/api/v1/events?streams=ok,Not%20A%20Name");
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json().unwrap()["code"], "bad_stream_name");
    let many: Vec<String> = (0..300).map(|i| format!("s{i}")).collect();
    let r = get(
        &server,
        &format!("/api/v1/events?streams={}", many.join(",")),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json().unwrap()["code"], "too_many_streams");
    assert_eq!(get(&server, "/healthz").status, 200);
}
