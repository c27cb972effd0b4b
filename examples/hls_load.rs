//! LL-HLS load generator: N clients that follow a live stream the way hls.js
//! does in low-latency mode — a blocking playlist reload for the next part
//! (`_HLS_msn`/`_HLS_part` from the preload hint), then that part — each over
//! its own keep-alive HTTP/1.1 connection, against roomcast on loopback.
//!
//! ```text
//! cargo run --release --example hls_load -- --url http://127.0.0.1:8080/hls/demo/index.m3u8 \
//!     --clients 10,100,300 --step-secs 20 [--server-pid PID]
//! ```
//! Prints one JSON line per step: clients, requests per second (playlists and
//! parts), MB/s of parts, server CPU (from /proc with --server-pid) and µs of
//! server CPU per request above `--baseline-cores` (the server's CPU for the
//! stream without HLS clients), the blocking reload's wait p50/p99 (time from asking
//! for the next part to getting the playlist with it), and failures.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

#[derive(Default)]
struct Totals {
    playlists: AtomicU64,
    parts: AtomicU64,
    bytes: AtomicU64,
    failures: AtomicU64,
}

struct Conn {
    host: String,
    r: BufReader<TcpStream>,
}

impl Conn {
    async fn open(host: &str) -> std::io::Result<Conn> {
        let s = TcpStream::connect(host).await?;
        s.set_nodelay(true)?;
        Ok(Conn {
            host: host.to_string(),
            r: BufReader::new(s),
        })
    }

    /// GET `path` on the kept-alive connection: (status, body).
    async fn get(&mut self, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.host);
        self.r.get_mut().write_all(req.as_bytes()).await?;
        let mut line = String::new();
        self.r.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut len = 0usize;
        loop {
            line.clear();
            self.r.read_line(&mut line).await?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; len];
        self.r.read_exact(&mut body).await?;
        Ok((status, body))
    }
}

/// The (msn, part) of the preload hint.
fn hint(playlist: &str) -> Option<(u64, u64)> {
    let line = playlist
        .lines()
        .find(|l| l.starts_with("#EXT-X-PRELOAD-HINT:"))?;
    let uri = line.split("URI=\"").nth(1)?.split('"').next()?.to_string();
    let name = uri.split('?').next()?.trim_end_matches(".m4s");
    let f: Vec<&str> = name.split('-').collect();
    Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))
}

fn proc_cpu_s(pid: u32) -> f64 {
    let mut ns = 0u64;
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in dir.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                ns += s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    ns as f64 / 1e9
}

async fn client(
    host: String,
    dir: String,
    playlist: String,
    totals: Arc<Totals>,
    waits: Arc<Mutex<Vec<f64>>>,
    stop: Arc<AtomicBool>,
) {
    let mut conn = None;
    let mut next: Option<(u64, u64)> = None;
    while !stop.load(Relaxed) {
        let c = match &mut conn {
            Some(c) => c,
            None => match Conn::open(&host).await {
                Ok(c) => conn.insert(c),
                Err(_) => {
                    totals.failures.fetch_add(1, Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        let path = match next {
            Some((m, p)) => format!("{playlist}?_HLS_msn={m}&_HLS_part={p}"),
            None => playlist.clone(),
        };
        let t0 = Instant::now();
        let text = match c.get(&path).await {
            Ok((200, b)) => String::from_utf8_lossy(&b).into_owned(),
            _ => {
                totals.failures.fetch_add(1, Relaxed);
                conn = None;
                next = None;
                continue;
            }
        };
        if next.is_some() {
            waits.lock().await.push(t0.elapsed().as_secs_f64());
        }
        totals.playlists.fetch_add(1, Relaxed);
        // The part asked for is now in the playlist: fetch the newest part
        // (what a player at the live edge loads), then block for the next.
        let Some((msn, part)) = hint(&text) else {
            totals.failures.fetch_add(1, Relaxed);
            next = None;
            continue;
        };
        let newest = text
            .lines()
            .rfind(|l| l.starts_with("#EXT-X-PART:"))
            .and_then(|l| {
                l.split("URI=\"")
                    .nth(1)?
                    .split('"')
                    .next()
                    .map(str::to_string)
            });
        if let Some(u) = newest {
            match c.get(&format!("{dir}{u}")).await {
                Ok((200, b)) => {
                    totals.parts.fetch_add(1, Relaxed);
                    totals.bytes.fetch_add(b.len() as u64, Relaxed);
                }
                _ => {
                    totals.failures.fetch_add(1, Relaxed);
                    conn = None;
                }
            }
        }
        next = Some((msn, part));
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let url = arg("--url").expect("--url http://HOST:PORT/hls/STREAM/index.m3u8");
    let steps: Vec<usize> = arg("--clients")
        .unwrap_or_else(|| "10".into())
        .split(',')
        .map(|s| s.parse().expect("--clients N,M,…"))
        .collect();
    let step_secs: u64 = arg("--step-secs").map_or(20, |s| s.parse().unwrap());
    let pid: Option<u32> = arg("--server-pid").map(|s| s.parse().unwrap());
    // Server cores in use without HLS clients (publish, transcode), subtracted
    // from the per-request figure.
    let baseline: f64 = arg("--baseline-cores").map_or(0.0, |s| s.parse().unwrap());
    let rest = url.strip_prefix("http://").expect("http:// URL");
    let (host, path) = rest.split_at(rest.find('/').expect("a path"));
    let dir = path[..path.rfind('/').unwrap() + 1].to_string();

    for n in steps {
        let totals = Arc::new(Totals::default());
        let waits = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for _ in 0..n {
            tasks.push(tokio::spawn(client(
                host.to_string(),
                dir.clone(),
                path.to_string(),
                totals.clone(),
                waits.clone(),
                stop.clone(),
            )));
        }
        // Let every client reach the live edge before measuring.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (p0, q0, b0) = (
            totals.playlists.load(Relaxed),
            totals.parts.load(Relaxed),
            totals.bytes.load(Relaxed),
        );
        waits.lock().await.clear();
        let c0 = pid.map(proc_cpu_s);
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(step_secs)).await;
        let wall = t0.elapsed().as_secs_f64();
        let c1 = pid.map(proc_cpu_s);
        let playlists = totals.playlists.load(Relaxed) - p0;
        let parts = totals.parts.load(Relaxed) - q0;
        let bytes = totals.bytes.load(Relaxed) - b0;
        stop.store(true, Relaxed);
        let mut w = std::mem::take(&mut *waits.lock().await);
        w.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let pct = |q: f64| {
            w.get(((w.len() as f64 * q) as usize).min(w.len().saturating_sub(1)))
                .map_or(0.0, |v| v * 1000.0)
        };
        let reqs = playlists + parts;
        let cpu = c0.zip(c1).map(|(a, b)| b - a);
        let above = cpu.map(|c| (c - baseline * wall).max(0.0));
        println!(
            "{{\"clients\":{n},\"window_s\":{wall:.1},\"playlists_per_s\":{:.0},\"parts_per_s\":{:.0},\"part_mbytes_per_s\":{:.2},\"server_cpu_cores\":{},\"server_cpu_us_per_request\":{},\"reload_wait_ms_p50\":{:.0},\"reload_wait_ms_p99\":{:.0},\"failures\":{}}}",
            playlists as f64 / wall,
            parts as f64 / wall,
            bytes as f64 / wall / 1e6,
            cpu.map_or("null".into(), |c| format!("{:.3}", c / wall)),
            above.map_or("null".into(), |c| format!(
                "{:.1}",
                c * 1e6 / reqs.max(1) as f64
            )),
            pct(0.5),
            pct(0.99),
            totals.failures.load(Relaxed),
        );
        for t in tasks {
            t.abort();
        }
    }
}
