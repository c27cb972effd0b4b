//! LL-HLS behind a CDN: Debian's nginx runs the documented
//! `deploy/nginx/roomcast-llhls.conf` (as this test's own child, on free
//! ports, in a temp prefix) in front of roomcast; 50 LL-HLS clients at the
//! live edge (blocking reload for the next part, then the part, like hls.js)
//! cost the origin about one request per part and playlist version, counted
//! from roomcast's `/metrics`; hls.js in Chromium plays through nginx.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const CLIENTS: usize = 50;
const WINDOW: Duration = Duration::from_secs(10);

/// nginx with the deploy config, as a child process; stopped on drop.
struct Nginx {
    child: Child,
    dir: TempDir,
    port: u16,
}

impl Nginx {
    fn start(origin: &str) -> Nginx {
        let dir = TempDir::new("nginx");
        let p = dir.path();
        let port = synapse::free_port();
        // The documented file, with this test's ports and paths (each must be
        // there exactly once, so the test follows the file's shape).
        let mut conf =
            std::fs::read_to_string(manifest_dir().join("deploy/nginx/roomcast-llhls.conf"))
                .expect("deploy/nginx/roomcast-llhls.conf");
        for (from, to) in [
            ("server 127.0.0.1:8080;", format!("server {origin};")),
            ("listen 8081;", format!("listen 127.0.0.1:{port};")),
            (
                "/var/cache/nginx/roomcast-hls",
                p.join("cache").display().to_string(),
            ),
        ] {
            assert_eq!(
                conf.matches(from).count(),
                1,
                "'{from}' in the nginx config"
            );
            conf = conf.replace(from, &to);
        }
        std::fs::write(p.join("roomcast-llhls.conf"), conf).unwrap();
        let d = p.display();
        std::fs::write(
            p.join("nginx.conf"),
            format!(
                "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
                 events {{ worker_connections 1024; }}\n\
                 http {{\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
                   fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
                   log_format cache '$upstream_cache_status $status $request_uri';\n\
                   access_log {d}/access.log cache;\n  include {d}/roomcast-llhls.conf;\n}}\n"
            ),
        )
        .unwrap();
        let child = common::nginx::spawn(p, "run nginx (apt-get install -y nginx)");
        let mut n = Nginx { child, dir, port };
        wait_until("nginx listening", Duration::from_secs(20), || {
            if let Ok(Some(s)) = n.child.try_wait() {
                panic!("nginx exited ({s}): {}", n.error_log());
            }
            std::net::TcpStream::connect(("127.0.0.1", n.port))
                .ok()
                .map(|_| ())
        });
        n
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// `$upstream_cache_status` counts of the access log.
    fn cache_statuses(&self) -> Vec<(String, usize)> {
        let log = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        let mut counts: Vec<(String, usize)> = Vec::new();
        for status in log.lines().filter_map(|l| l.split(' ').next()) {
            match counts.iter_mut().find(|(s, _)| s == status) {
                Some((_, n)) => *n += 1,
                None => counts.push((status.to_string(), 1)),
            }
        }
        counts
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers (SIGKILL would orphan them).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        if !poll_until(Duration::from_secs(10), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        }) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `(msn, index)` of a part.
type Position = (u64, u64);

/// The parts a playlist lists, its preload hint and the session in its names.
struct Listing {
    parts: Vec<Position>,
    hint: Option<Position>,
    session: Option<String>,
}

fn parts_and_hint(text: &str) -> Listing {
    let pos = |line: &str| -> Option<(u64, u64)> {
        let uri = line.split("URI=\"").nth(1)?.split('"').next()?;
        let stem = uri.split('?').next()?.strip_suffix(".m4s")?;
        let f: Vec<&str> = stem.split('-').collect();
        if f.len() != 4 || f[0] != "part" {
            return None;
        }
        Some((f[2].parse().ok()?, f[3].parse().ok()?))
    };
    let mut parts = Vec::new();
    let mut hint = None;
    let mut session = None;
    for line in text.lines() {
        if line.starts_with("#EXT-X-PART:") {
            parts.extend(pos(line));
        } else if line.starts_with("#EXT-X-PRELOAD-HINT:") {
            hint = pos(line);
            session = line
                .split("part-")
                .nth(1)
                .and_then(|r| r.split('-').next())
                .map(str::to_string);
        }
    }
    Listing {
        parts,
        hint,
        session,
    }
}

/// What the clients did while the window was open.
#[derive(Default)]
struct Tally {
    part_urls: HashSet<String>,
    playlist_urls: HashSet<String>,
    requests: u64,
}

/// An LL-HLS client at the live edge, as hls.js in low-latency mode: the
/// preload-hinted part, then the blocking reload for the part after it; a
/// part listed but not fetched yet is fetched first.
fn edge_client(
    base: String,
    window: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    failures: Arc<AtomicU64>,
) {
    let get = |path: &str| {
        http::request_timeout(
            "GET",
            &format!("{base}{path}"),
            &[],
            None,
            Duration::from_secs(20),
        )
    };
    let note = |path: &str, part: bool| {
        if window.load(Relaxed) {
            let mut t = tally.lock().unwrap();
            t.requests += 1;
            if part {
                t.part_urls.insert(path.to_string());
            } else {
                t.playlist_urls.insert(path.to_string());
            }
        }
    };
    let r = get("/index.m3u8").expect("first playlist");
    assert_eq!(r.status, 200, "{}", r.text());
    let first = parts_and_hint(&r.text());
    let (mut hint, session) = (first.hint, first.session);
    let session = session.expect("a preload hint");
    let mut last: Option<(u64, u64)> = None;
    while !stop.load(Relaxed) {
        let Some((msn, idx)) = hint else {
            failures.fetch_add(1, Relaxed);
            return;
        };
        let path = format!("/part-{session}-{msn}-{idx}.m4s");
        note(&path, true);
        match get(&path) {
            Ok(r) if r.status == 200 => last = Some((msn, idx)),
            // The hinted part of a segment that ended early never comes.
            Ok(r) if r.status == 404 => {}
            _ => {
                failures.fetch_add(1, Relaxed);
            }
        }
        let path = format!("/index.m3u8?_HLS_msn={msn}&_HLS_part={idx}");
        note(&path, false);
        let r = match get(&path) {
            Ok(r) if r.status == 200 => r,
            _ => {
                failures.fetch_add(1, Relaxed);
                continue;
            }
        };
        let Listing {
            parts, hint: next, ..
        } = parts_and_hint(&r.text());
        hint = next;
        // Parts listed after the last one fetched (a new segment's first).
        let newer: Vec<(u64, u64)> = parts
            .into_iter()
            .filter(|p| last.is_some_and(|l| *p > l))
            .collect();
        for p in newer {
            if stop.load(Relaxed) {
                break;
            }
            let path = format!("/part-{session}-{}-{}.m4s", p.0, p.1);
            note(&path, true);
            match get(&path) {
                Ok(r) if r.status == 200 => last = Some(p),
                _ => {
                    failures.fetch_add(1, Relaxed);
                }
            }
        }
    }
}

fn metric(server: &Server, kind: &str) -> u64 {
    let m = server.get("/metrics").text();
    let needle = format!("roomcast_hls_requests_total{{kind=\"{kind}\"}} ");
    m.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {needle} in /metrics"))
}

fn hls_player(url: &str) -> JsonTool {
    let dir = node_dir();
    let mut cmd =
        Command::new(std::env::var_os("ROOMCAST_TEST_NODE").unwrap_or_else(|| "node".into()));
    cmd.current_dir(&dir)
        .arg(dir.join("hls.mjs"))
        .arg("--url")
        .arg(url)
        .arg("--hlsjs")
        .arg(manifest_dir().join("widget/node_modules/hls.js/dist/hls.min.js"))
        .args(["--timeout", "60", "--interval", "500", "--stdin-control"]);
    JsonTool::spawn("hls.js player", cmd)
}

fn cache_control(r: &HttpResponse) -> &str {
    r.header("cache-control").unwrap_or("")
}

#[test]
fn fifty_ll_hls_clients_through_nginx_cost_the_origin_one_request_per_part() {
    let _serial = serial();
    assert!(
        Path::new(&common::nginx::nginx_bin()).exists(),
        "{} not found: apt-get install -y nginx (or set ROOMCAST_TEST_NGINX)",
        common::nginx::nginx_bin().display()
    );
    let server = Server::start("");
    let _publisher = Publisher::ffmpeg(&server.publish_url(STREAM), FfmpegOpts::small());
    server.wait_live(STREAM, LIVE_TIMEOUT);
    let origin = server.base_url();
    let nginx = Nginx::start(origin.trim_start_matches("http://"));

    // The origin's answers say what a cache may do with them.
    let r = server.get(&format!("/hls/{STREAM}/index.m3u8"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(cache_control(&r), "public, max-age=0, s-maxage=1");
    assert_eq!(r.header("vary"), None, "a Vary splits a CDN's cache");
    let hint = parts_and_hint(&r.text()).hint;
    let (msn, idx) = hint.expect("preload hint");
    let r = server.get(&format!(
        "/hls/{STREAM}/index.m3u8?_HLS_msn={msn}&_HLS_part={idx}"
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(cache_control(&r), "public, max-age=3");
    let r = server.get(&format!("/hls/{STREAM}/index.m3u8?_HLS_msn={}", msn + 50));
    assert_eq!(
        (r.status, cache_control(&r)),
        (400, "no-store"),
        "{}",
        r.text()
    );
    let r = server.get(&format!("/hls/{}/index.m3u8", STREAM2));
    assert_eq!(
        (r.status, cache_control(&r)),
        (404, "public, max-age=1"),
        "offline: {}",
        r.text()
    );
    let r = server.get("/hls/nope/index.m3u8");
    assert_eq!(
        (r.status, cache_control(&r)),
        (404, "no-store"),
        "unknown: {}",
        r.text()
    );

    // 50 clients at the live edge through nginx.
    let base = nginx.url(&format!("/hls/{STREAM}"));
    let window = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let failures = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (b, w, s, t, f) = (
                base.clone(),
                window.clone(),
                stop.clone(),
                tally.clone(),
                failures.clone(),
            );
            std::thread::spawn(move || edge_client(b, w, s, t, f))
        })
        .collect();
    // A few parts for everyone to reach the edge, then count.
    let warm = metric(&server, "part");
    wait_until(
        "the clients at the live edge",
        Duration::from_secs(20),
        || (metric(&server, "part") >= warm + 10).then_some(()),
    );
    let (parts0, playlists0) = (
        metric(&server, "part"),
        metric(&server, "blocking_playlist"),
    );
    window.store(true, Relaxed);
    let started = Instant::now();
    std::thread::sleep(WINDOW); // the measurement window itself, not a synchronisation
    window.store(false, Relaxed);
    let (parts1, playlists1) = (
        metric(&server, "part"),
        metric(&server, "blocking_playlist"),
    );
    let elapsed = started.elapsed();
    stop.store(true, Relaxed);
    for c in clients {
        c.join().expect("client thread");
    }
    let t = tally.lock().unwrap();
    let (origin_parts, origin_playlists) = (parts1 - parts0, playlists1 - playlists0);
    let (distinct_parts, distinct_playlists) =
        (t.part_urls.len() as u64, t.playlist_urls.len() as u64);
    println!(
        "{CLIENTS} clients through nginx for {elapsed:.1?}: {} requests to nginx; origin answered {origin_parts} part requests \
         for {distinct_parts} distinct parts and {origin_playlists} blocking playlist requests for {distinct_playlists} \
         playlist versions; failures {}; nginx cache statuses (whole run) {:?}",
        t.requests,
        failures.load(Relaxed),
        nginx.cache_statuses()
    );
    assert_eq!(
        failures.load(Relaxed),
        0,
        "client failures; nginx: {}",
        nginx.error_log()
    );
    assert!(
        distinct_parts >= 20,
        "the live edge moved {distinct_parts} parts in {WINDOW:?}"
    );
    assert!(
        t.requests >= CLIENTS as u64 * distinct_parts,
        "the clients made {} requests for {distinct_parts} parts",
        t.requests
    );
    // About one origin request per part and per playlist version (the
    // window's edges may add a few).
    assert!(
        origin_parts <= distinct_parts + distinct_parts / 5 + 5,
        "{origin_parts} origin part requests for {distinct_parts} parts"
    );
    assert!(
        origin_playlists <= distinct_playlists + distinct_playlists / 5 + 5,
        "{origin_playlists} origin blocking playlist requests for {distinct_playlists} versions"
    );

    // hls.js in Chromium plays through nginx.
    let mut player = hls_player(&format!("{base}/index.m3u8"));
    let s = player.wait_for(
        "hls.js playing through nginx",
        Duration::from_secs(60),
        |v| {
            v["type"] == "sample"
                && v["frames"].as_u64().unwrap_or(0) >= 90
                && v["currentTime"].as_f64().unwrap_or(0.0) > 3.0
        },
    );
    println!(
        "hls.js through nginx: latency to the live edge {} s, wall clock - PROGRAM-DATE-TIME {} s",
        s["latency"], s["pdt_latency"]
    );
    let r = player.stop(Duration::from_secs(30));
    println!("hls.js result: {r}");
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["fatal_errors"], 0, "{r}");
    let mut server = server;
    server.assert_healthy("after the CDN run");
}
