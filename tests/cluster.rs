//! Cluster mode: roomcast nodes (the real binary, distinct loopback ports)
//! sharing one real PostgreSQL. ffmpeg publishes to node A; viewers on node
//! B get the stream through B's WHEP relay pull from A, and ten of them cost
//! A one WHEP session; Chromium plays on an edge; an edge re-pulls when the
//! origin dies and the publisher moves.

mod common;

use std::time::Duration;

use common::cluster::*;
use common::postgres::Postgres;
use common::rtc_client::{self, Outgoing};
use common::*;

const CLUSTER_TIMEOUT: Duration = Duration::from_secs(20);
/// For a log line already written when its wait starts (it came before
/// what was awaited): the test's drain thread may still have to read it
/// from the pipe, which on a loaded machine is not always within 1 s.
const LOG_TIMEOUT: Duration = Duration::from_secs(10);

fn metric(node: &Server, line_prefix: &str) -> Option<f64> {
    node.get("/metrics")
        .text()
        .lines()
        .find_map(|l| l.strip_prefix(line_prefix)?.trim().parse().ok())
}

#[test]
fn an_edge_relays_a_stream_from_its_origin_once_for_many_viewers() {
    let _serial = serial();
    let pg = Postgres::start();
    let spec = ClusterSpec::new(pg.create_database("cluster"));
    let a = spec.start_node("a");
    let mut b = spec.start_node("b");
    wait_alive_nodes(&a, &["a", "b"], CLUSTER_TIMEOUT);
    let r = forged_pull(&a, &offer_sdp(&["H264"]));
    assert_json_error(&r, 401, "a forged node token");

    let _ffmpeg = Publisher::ffmpeg(&a.publish_url(STREAM), FfmpegOpts::default());
    a.wait_live(STREAM, LIVE_TIMEOUT);
    wait_origin(&b, STREAM, "a", CLUSTER_TIMEOUT);
    // B's view names the origin a moment before its hub says live.
    let api = wait_until("live on B (the bus)", CLUSTER_TIMEOUT, || {
        b.api_stream(STREAM).filter(|v| v["live"] == true)
    });
    assert!(
        api["ingest"].is_null(),
        "B has no publisher and no viewer: nothing is pulled yet: {api}"
    );

    // An independent WebRTC stack on B decodes video and audio from A.
    let mut viewer = aiortc_viewer(
        &b.whep_url(STREAM),
        ViewerOpts {
            // Watches until told to stop, while the other viewers join.
            duration_s: Some(90.0),
            ..ViewerOpts::default()
        },
    );
    viewer.wait_for("a decoded video frame on B", MEDIA_TIMEOUT, |v| {
        v["type"] == "progress" && v["video_frames"].as_u64().unwrap_or(0) > 0
    });
    let api = b.api_stream(STREAM).expect("stream JSON");
    assert_eq!(api["ingest"]["protocol"], "relay", "{api}");

    // Nine more viewers on B (str0m clients counting video packets).
    let mut others: Vec<_> = (0..9)
        .map(|i| {
            rtc_client::start(&b.whep_url(STREAM), None, false, Outgoing::Nothing)
                .unwrap_or_else(|r| panic!("viewer {i} on B refused: {} {}", r.status, r.text()))
        })
        .collect();
    wait_until("ten viewers on B receiving video", MEDIA_TIMEOUT, || {
        (others
            .iter()
            .all(|o| o.connected() && o.video_packets() > 0)
            && viewers(&b, STREAM) == 10)
            .then_some(())
    });
    // Ten viewers on B are one viewer on A: its metrics (per node) say so.
    // The API and pages count people over the cluster: ten on every node.
    wait_until("A's API to count B's ten viewers", CLUSTER_TIMEOUT, || {
        (viewers(&a, STREAM) == 10).then_some(())
    });
    assert_eq!(
        metric(
            &a,
            &format!("roomcast_stream_viewers{{stream=\"{STREAM}\"}}")
        ),
        Some(1.0)
    );
    assert_eq!(metric(&b, "roomcast_cluster_relays "), Some(1.0));
    let r = viewer.stop(MEDIA_TIMEOUT);
    println!("aiortc viewer on B: {r}");
    assert_eq!(r["ok"], true, "the viewer on B did not decode: {r}");
    assert!(
        r["video_frames"].as_u64().unwrap_or(0) >= 30
            && r["audio_frames"].as_u64().unwrap_or(0) >= 25,
        "the viewer on B decodes video and audio: {r}"
    );

    // The last local viewer leaves: B drops its pull, and A's session ends.
    for o in &mut others {
        o.stop();
        let r = common::http::request("DELETE", &o.location, &[], None).unwrap();
        assert!(r.status < 300, "DELETE {}: {}", o.location, r.status);
    }
    wait_until(
        "A's relay session to end after B's last viewer left",
        CLUSTER_TIMEOUT,
        || {
            (metric(
                &a,
                &format!("roomcast_stream_viewers{{stream=\"{STREAM}\"}}"),
            )? == 0.0
                && viewers(&a, STREAM) == 0
                && b.api_stream(STREAM)?["ingest"].is_null())
            .then_some(())
        },
    );
    b.wait_for_log("no local viewer left", LOG_TIMEOUT);

    // A clean leave: A sees B gone at once (not after the dead time).
    b.signal("TERM");
    assert!(b.wait_exit(Duration::from_secs(10)).is_some(), "B exits");
    wait_alive_nodes(&a, &["a"], Duration::from_secs(3));
    let view = cluster_view(&a);
    assert_eq!(
        view["nodes"].as_array().map(|n| n.len()),
        Some(1),
        "B's row is deleted on shutdown: {view}"
    );
}

#[test]
fn cluster_mode_refuses_sqlite_and_forged_node_requests() {
    // [cluster] with SQLite: a clear refusal at start-up.
    let dir = TempDir::new("roomcast-cluster-sqlite");
    let config = dir.path().join("roomcast.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\ndatabase_url = \"sqlite://{}/x.db\"\n[cluster]\nnode_id = \"a\"\n\
             internal_url = \"http://127.0.0.1:1\"\nsecret = \"{}\"\n",
            dir.path().display(),
            random_hex()
        ),
    )
    .unwrap();
    let out = roomcast_cmd()
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .current_dir(dir.path())
        .output()
        .expect("run roomcast");
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("cluster mode needs PostgreSQL"), "{text}");

    // A node-to-node header on a node without [cluster], and a forged one on
    // a cluster node: 401, not a relay.
    let plain = Server::start("");
    let offer = offer_sdp(&["H264"]);
    let r = forged_pull(&plain, &offer);
    assert_json_error(&r, 401, "a cluster header on a node without [cluster]");
}

/// Someone who sees the traffic between two nodes (the tap) takes a real
/// relay pull's header: put on another SDP offer within the minute it is
/// fresh, or sent again whole, it is refused, so it cannot open a session
/// that skips the origin's admission.
#[test]
fn a_relay_pull_seen_on_the_wire_cannot_be_replayed() {
    let _serial = serial();
    let pg = Postgres::start();
    let spec = ClusterSpec::new(pg.create_database("cluster_replay"));
    let listen = format!("127.0.0.1:{}", common::synapse::free_port());
    let tap = common::tap::Tap::start(listen.parse().unwrap());
    let mut a = spec.start_node_at("a", &listen, &format!("http://{}", tap.addr), "");
    let b = spec.start_node("b");
    wait_alive_nodes(&b, &["a", "b"], CLUSTER_TIMEOUT);
    let _ffmpeg = Publisher::ffmpeg(&a.publish_url(STREAM), FfmpegOpts::default());
    a.wait_live(STREAM, LIVE_TIMEOUT);
    wait_origin(&b, STREAM, "a", CLUSTER_TIMEOUT);

    // A viewer on B: B pulls from A, through the tap.
    let mut viewer = rtc_client::start(&b.whep_url(STREAM), None, false, Outgoing::Nothing)
        .unwrap_or_else(|r| panic!("viewer on B refused: {} {}", r.status, r.text()));
    wait_until("video on B, pulled from A", MEDIA_TIMEOUT, || {
        (viewer.connected() && viewer.video_packets() > 0).then_some(())
    });
    let pull = tap.wait_request(&format!("POST /whep/{STREAM} "), LOG_TIMEOUT);
    let token = pull
        .header("x-roomcast-cluster")
        .expect("the pull carries the cluster token")
        .to_string();

    let replay = |body: &[u8]| {
        common::http::request(
            "POST",
            &a.whep_url(STREAM),
            &[
                ("Content-Type", "application/sdp"),
                ("X-Roomcast-Cluster", &token),
            ],
            Some(body),
        )
        .unwrap()
    };
    // The header on an offer of the eavesdropper's own.
    let r = replay(offer_sdp(&["H264"]).as_bytes());
    assert_json_error(&r, 401, "the captured token on another offer");
    assert!(r.text().contains("signature mismatch"), "{}", r.text());
    // The whole request again.
    let r = replay(&pull.body);
    assert_json_error(&r, 401, "the captured pull sent again");
    assert!(r.text().contains("already used"), "{}", r.text());
    // The real pull was not disturbed.
    let before = viewer.video_packets();
    wait_until("video on B goes on", MEDIA_TIMEOUT, || {
        (viewer.video_packets() > before + 30).then_some(())
    });
    viewer.stop();
    a.assert_healthy("after the replays");
}

/// A WHEP POST posing as another node's relay pull with a made-up token.
fn forged_pull(server: &Server, offer: &str) -> HttpResponse {
    common::http::request(
        "POST",
        &server.whep_url(STREAM),
        &[
            ("Content-Type", "application/sdp"),
            ("X-Roomcast-Cluster", "v1.b.1.00"),
        ],
        Some(offer.as_bytes()),
    )
    .unwrap()
}

/// Failover: the origin is SIGKILLed, the publisher comes back on another
/// node, and the edge's viewer keeps its PeerConnection and decodes the new
/// publisher's frames (the edge re-pulls from the new origin).
#[test]
fn an_edge_re_pulls_when_the_origin_dies_and_the_publisher_moves() {
    let _serial = serial();
    let pg = Postgres::start();
    let spec = ClusterSpec::new(pg.create_database("cluster_failover"));
    let a = spec.start_node("a");
    let b = spec.start_node("b");
    let c = spec.start_node("c");
    wait_alive_nodes(&c, &["a", "b", "c"], CLUSTER_TIMEOUT);
    let mut ffmpeg = Publisher::ffmpeg(&a.publish_url(STREAM), FfmpegOpts::default());
    a.wait_live(STREAM, LIVE_TIMEOUT);
    wait_origin(&c, STREAM, "a", CLUSTER_TIMEOUT);
    let mut viewer = aiortc_viewer(
        &c.whep_url(STREAM),
        ViewerOpts {
            duration_s: Some(120.0),
            ..ViewerOpts::default()
        },
    );
    let frames = |v: &serde_json::Value| v["video_frames"].as_u64().unwrap_or(0);
    viewer.wait_for("frames from A on C", MEDIA_TIMEOUT, |v| {
        v["type"] == "progress" && frames(v) >= 30
    });
    // A browser on the edge plays too (the same pull: A still serves one).
    let mut chromium = chromium_player(&c, BrowserOpts::default());
    let whep = chromium.wait_for("the WHEP answer on C", MEDIA_TIMEOUT, |v| {
        v["type"] == "whep"
    });
    assert_eq!(whep["status"], 201, "{whep}");
    // Sessions each node serves (the API's `viewers` is the cluster's sum,
    // 2 on every node once the bus has told them).
    wait_until(
        "two sessions on C, one (C's pull) on A",
        MEDIA_TIMEOUT,
        || (sessions(&c, STREAM) == 2 && sessions(&a, STREAM) == 1).then_some(()),
    );
    let r = chromium.result(MEDIA_TIMEOUT + Duration::from_secs(30));
    println!("Chromium on C: {r}");
    assert_eq!(r["ok"], true, "Chromium on C did not play: {}", r["reason"]);
    let last = &r["last_sample"];
    assert!(
        frames_decoded(last) >= 90 && audio_packets(last) >= 50,
        "Chromium on C decodes video and gets audio: {last}"
    );
    assert_eq!(
        norm(last["video"]["codec"].as_str().unwrap_or("")),
        "videoh264"
    );

    // A str0m viewer on C times the gap to the packet (the aiortc viewer
    // reports once a second).
    let mut probe = rtc_client::start(&c.whep_url(STREAM), None, false, Outgoing::Nothing)
        .unwrap_or_else(|r| panic!("probe on C refused: {} {}", r.status, r.text()));
    wait_until("the probe receiving video on C", MEDIA_TIMEOUT, || {
        (probe.video_packets() > 0).then_some(())
    });

    a.signal("KILL");
    let killed = std::time::Instant::now();
    ffmpeg.kill();
    let mut a = a;
    assert!(a.wait_exit(Duration::from_secs(5)).is_some(), "A died");
    let before = viewer.last_of("progress").map_or(0, |v| frames(&v));
    let _ffmpeg_b = Publisher::ffmpeg(&b.publish_url(STREAM), FfmpegOpts::default());
    // Nothing comes from A any more (it has exited), but the probe may still
    // be counting what A sent: the baseline is its count once it has stood
    // still for 80 ms. C cannot get B's frames sooner: ffmpeg's restart
    // alone takes longer (and the bus tells C the new origin at once, so
    // the gap can be under 300 ms).
    let mut last = (probe.video_packets(), std::time::Instant::now());
    let packets_at_death = wait_until("the probe to go quiet", MEDIA_TIMEOUT, || {
        let n = probe.video_packets();
        if n != last.0 {
            last = (n, std::time::Instant::now());
            None
        } else {
            (last.1.elapsed() >= Duration::from_millis(80)).then_some(n)
        }
    });
    let quiet = killed.elapsed();
    let mut b_live = None;
    let flowing = wait_until(
        "video packets from B's publisher on C",
        MEDIA_TIMEOUT,
        || {
            if b_live.is_none() && b.api_stream(STREAM).is_some_and(|s| s["live"] == true) {
                b_live = Some(killed.elapsed());
            }
            (probe.video_packets() > packets_at_death).then(|| killed.elapsed())
        },
    );
    let b_live = b_live.unwrap_or(flowing);
    assert!(
        flowing > quiet,
        "packets flowed again before the probe went quiet"
    );
    wait_origin(&c, STREAM, "b", CLUSTER_TIMEOUT);
    let from = viewer.cursor();
    viewer.wait_for_from(from, "frames from B's publisher on C", MEDIA_TIMEOUT, |v| {
        v["type"] == "progress" && frames(v) >= before + 30
    });
    println!(
        "origin SIGKILLed → video packets flowing again on the edge after {:.2} s (B live, with ffmpeg's restart, after {:.2} s; {:.2} s from B live to packets on C); 30 more frames decoded by aiortc after {:.1} s",
        flowing.as_secs_f64(),
        b_live.as_secs_f64(),
        (flowing - b_live).as_secs_f64(),
        killed.elapsed().as_secs_f64()
    );
    probe.stop();
    let r = viewer.stop(MEDIA_TIMEOUT);
    println!("aiortc viewer on C: {r}");
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(
        r["connection_states"],
        serde_json::json!(["connecting", "connected", "closed"]),
        "the viewer's PeerConnection stayed connected until it left: {r}"
    );
}

/// A two-level tree: node C has `cluster.upstream = "b"`, so its viewers'
/// stream comes origin A → B → C, and A serves one pull (B's) whatever
/// number of such edges; when B dies, C pulls from A itself and its viewer
/// keeps its PeerConnection.
#[test]
fn an_edge_pulls_through_its_upstream_and_from_the_origin_when_it_dies() {
    let _serial = serial();
    let pg = Postgres::start();
    let spec = ClusterSpec::new(pg.create_database("cluster_tree"));
    let a = spec.start_node("a");
    let mut b = spec.start_node("b");
    let c = spec.start_node_with("c", "upstream = \"b\"\n");
    wait_alive_nodes(&c, &["a", "b", "c"], CLUSTER_TIMEOUT);
    let _ffmpeg = Publisher::ffmpeg(&a.publish_url(STREAM), FfmpegOpts::small());
    a.wait_live(STREAM, LIVE_TIMEOUT);
    wait_origin(&c, STREAM, "a", CLUSTER_TIMEOUT);

    let mut viewer = rtc_client::start(&c.whep_url(STREAM), None, false, Outgoing::Nothing)
        .unwrap_or_else(|r| panic!("viewer on C refused: {} {}", r.status, r.text()));
    wait_until("video on C through B", MEDIA_TIMEOUT, || {
        (viewer.video_packets() > 0).then_some(())
    });
    c.wait_for_log("cluster relay connected stream=t1 origin=b", LOG_TIMEOUT);
    // A serves B's pull only; B serves C's.
    assert_eq!(sessions(&a, STREAM), 1, "A's sessions: B's pull");
    assert_eq!(sessions(&b, STREAM), 1, "B's sessions: C's pull");
    // Every node's API counts the cluster's one viewer (pulls taken off).
    wait_until("the cluster's sum on A", CLUSTER_TIMEOUT, || {
        (viewers(&a, STREAM) == 1).then_some(())
    });
    assert_eq!(metric(&b, "roomcast_cluster_relays "), Some(1.0));
    assert_eq!(metric(&c, "roomcast_cluster_relays "), Some(1.0));
    assert_eq!(
        b.api_stream(STREAM).expect("stream JSON")["ingest"]["protocol"],
        "relay"
    );
    // A node naming C (which has an upstream) as its own: C refuses its
    // pull (no third level, no loop), and D's viewer is refused.
    let d = spec.start_node_with("d", "upstream = \"c\"\n");
    wait_alive_nodes(&d, &["a", "b", "c", "d"], CLUSTER_TIMEOUT);
    let asked = std::time::Instant::now();
    let r = d.post_sdp(&format!("/whep/{STREAM}"), offer_sdp(&["H264"]).as_bytes());
    assert!(r.status >= 400, "a viewer on D: {} {}", r.status, r.text());
    println!(
        "a viewer on D refused after {:?} (C refused D's pull): {} {}",
        asked.elapsed(),
        r.status,
        r.text()
    );
    c.wait_for_log("another node's pull refused", LOG_TIMEOUT);
    assert_eq!(sessions(&c, STREAM), 1, "C serves its own viewer only");
    drop(d);

    // B dies: C pulls from A, and its viewer carries on.
    b.signal("KILL");
    assert!(b.wait_exit(Duration::from_secs(5)).is_some(), "B died");
    let killed = std::time::Instant::now();
    let at_death = viewer.video_packets();
    wait_until("video on C from A after B's death", CLUSTER_TIMEOUT, || {
        (viewer.video_packets() > at_death + 50).then_some(())
    });
    println!(
        "upstream SIGKILLed → video flowing again on the leaf after {:.1} s",
        killed.elapsed().as_secs_f64()
    );
    c.wait_for_log("cluster relay connected stream=t1 origin=a", LOG_TIMEOUT);
    assert!(
        viewer.connected() && !viewer.ended(),
        "C's viewer kept its session"
    );
    wait_until("A serving C's pull", CLUSTER_TIMEOUT, || {
        (sessions(&a, STREAM) == 1 && metric(&c, "roomcast_cluster_relays ") == Some(1.0))
            .then_some(())
    });
    viewer.stop();
}

/// Not a test: the latency a relay hop adds (bench/cluster_relay.sh runs
/// it). One process watches the stream on A (the origin) and on B (through
/// B's pull) at once and matches video RTP payloads by their bytes.
#[test]
#[ignore]
fn bench_relay_hop_latency() {
    let _serial = serial();
    let pg = Postgres::start();
    let spec = ClusterSpec::new(pg.create_database("cluster_bench"));
    let a = spec.start_node("a");
    let b = spec.start_node("b");
    wait_alive_nodes(&a, &["a", "b"], CLUSTER_TIMEOUT);
    let _ffmpeg = Publisher::ffmpeg(&a.publish_url(STREAM), FfmpegOpts::default());
    a.wait_live(STREAM, LIVE_TIMEOUT);
    wait_origin(&b, STREAM, "a", CLUSTER_TIMEOUT);
    let secs: u64 = std::env::var("RELAY_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let watch = Duration::from_secs(secs);
    let (url_a, url_b) = (a.whep_url(STREAM), b.whep_url(STREAM));
    let t0 = std::time::Instant::now();
    let on_b = std::thread::spawn(move || video_arrivals(&url_b, watch));
    let on_a = video_arrivals(&url_a, watch);
    let on_b = on_b.join().expect("B watcher");
    // The first 3 s hold both joins' GOP replays: not live latency.
    let settle = t0 + Duration::from_secs(3);
    let mut deltas: Vec<f64> = on_a
        .iter()
        .filter(|(_, at)| **at > settle)
        .filter_map(|(h, at)| {
            let bt = on_b.get(h)?;
            Some(
                bt.duration_since(*at).as_secs_f64() * 1000.0
                    - at.duration_since(*bt).as_secs_f64() * 1000.0,
            )
        })
        .collect();
    assert!(deltas.len() > 100, "matched only {} packets", deltas.len());
    deltas.sort_by(|x, y| x.total_cmp(y));
    let q = |p: f64| deltas[((deltas.len() - 1) as f64 * p) as usize];
    println!(
        "relay hop (B's arrival − A's arrival of the same video packet, loopback): packets={} p50={:.2} ms p95={:.2} ms p99={:.2} ms max={:.2} ms",
        deltas.len(),
        q(0.5),
        q(0.95),
        q(0.99),
        q(1.0)
    );
}

/// User + system CPU seconds of process `pid` so far (/proc/PID/stat).
fn cpu_seconds(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces).
    let rest = &s[s.rfind(')').map_or(0, |i| i + 2)..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) as f64 / hz
}

/// CPU (cores) of each node over the same `window`.
fn cores_over(nodes: &[&Server], window: Duration) -> Vec<f64> {
    let t0 = std::time::Instant::now();
    let c0: Vec<f64> = nodes.iter().map(|n| cpu_seconds(n.pid())).collect();
    std::thread::sleep(window); // a measurement window, not a synchronisation
    let wall = t0.elapsed().as_secs_f64();
    nodes
        .iter()
        .zip(c0)
        .map(|(n, c)| (cpu_seconds(n.pid()) - c) / wall)
        .collect()
}

/// `examples/loadgen` (built by bench/cluster_cpu.sh) watching `whep_url`
/// with `viewers` light str0m viewers for one step of `secs`.
fn loadgen(whep_url: &str, viewers: usize, secs: u64) -> std::process::Child {
    let bin = std::env::var_os("CLUSTER_CPU_LOADGEN")
        .map_or_else(|| example_bin("loadgen"), std::path::PathBuf::from);
    std::process::Command::new(&bin)
        .args(["--whep", whep_url, "--full", "0", "--max-loss", "100"])
        .args([
            "--steps",
            &viewers.to_string(),
            "--step-secs",
            &secs.to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (cargo build --example loadgen)", bin.display()))
}

fn loadgen_line(child: std::process::Child) -> String {
    let out = child.wait_with_output().expect("loadgen output");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.contains("\"step\""))
        .unwrap_or_default()
        .to_string()
}

/// Not a test: the origin's CPU with N viewers on two edges (N/2 each)
/// against N viewers on the origin itself (bench/cluster_cpu.sh runs it).
/// Three nodes, ffmpeg publishing 640×360 to A; the viewers are loadgen's
/// light str0m viewers (ICE, DTLS, RTCP; RTP counted, not decrypted).
#[test]
#[ignore]
fn bench_origin_cpu() {
    let _serial = serial();
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let n = env("CLUSTER_CPU_VIEWERS", 100) as usize;
    let secs = env("CLUSTER_CPU_SECS", 20);
    let pg = Postgres::start();
    let mut spec = ClusterSpec::new(pg.create_database("cluster_cpu"));
    // Every simulated viewer comes from 127.0.0.1.
    spec.extra_toml = "[limits]\noffers_per_minute = 0\n".into();
    let a = spec.start_node("a");
    let b = spec.start_node("b");
    let c = spec.start_node("c");
    wait_alive_nodes(&a, &["a", "b", "c"], CLUSTER_TIMEOUT);
    let _ffmpeg = Publisher::ffmpeg(&a.publish_url(STREAM), FfmpegOpts::small());
    a.wait_live(STREAM, LIVE_TIMEOUT);
    wait_origin(&b, STREAM, "a", CLUSTER_TIMEOUT);
    wait_origin(&c, STREAM, "a", CLUSTER_TIMEOUT);
    let nodes = [&a, &b, &c];
    let idle = cores_over(&nodes, Duration::from_secs(secs.min(10)));
    // The loadgen step outlasts the window (joins, then 2 s of settling).
    let step = secs + 10;

    // N viewers on the origin.
    let lg = loadgen(&a.whep_url(STREAM), n, step);
    wait_until("N viewers on A", CLUSTER_TIMEOUT, || {
        (viewers(&a, STREAM) == n as u64).then_some(())
    });
    let one_node = cores_over(&nodes, Duration::from_secs(secs));
    let one_node_lg = loadgen_line(lg);
    wait_until("A's viewers gone", CLUSTER_TIMEOUT, || {
        (viewers(&a, STREAM) == 0).then_some(())
    });

    // N/2 on each edge: A serves the two pulls.
    let (lg_b, lg_c) = (
        loadgen(&b.whep_url(STREAM), n / 2, step),
        loadgen(&c.whep_url(STREAM), n - n / 2, step),
    );
    wait_until(
        "N/2 sessions on B and on C, two (the pulls) on A",
        CLUSTER_TIMEOUT,
        || {
            (sessions(&b, STREAM) == (n / 2) as u64
                && sessions(&c, STREAM) == (n - n / 2) as u64
                && sessions(&a, STREAM) == 2)
                .then_some(())
        },
    );
    let edges = cores_over(&nodes, Duration::from_secs(secs));
    let (edge_b_lg, edge_c_lg) = (loadgen_line(lg_b), loadgen_line(lg_c));

    let fmt = |v: &[f64]| format!("A {:.3}, B {:.3}, C {:.3}", v[0], v[1], v[2]);
    println!(
        "cluster CPU (cores over {secs} s, debug build; publisher only: {})",
        fmt(&idle)
    );
    println!("  {n} viewers on A: {}", fmt(&one_node));
    println!("    loadgen: {one_node_lg}");
    println!("  {} on B + {} on C: {}", n / 2, n - n / 2, fmt(&edges));
    println!("    loadgen B: {edge_b_lg}\n    loadgen C: {edge_c_lg}");
    println!(
        "origin CPU: {:.3} cores with {n} viewers on it, {:.3} with them on two edges ({:.1} % of it; {:.3} with no viewer)",
        one_node[0],
        edges[0],
        edges[0] * 100.0 / one_node[0].max(1e-9),
        idle[0]
    );
}
