//! Cluster mode: roomcast nodes (the real binary, distinct loopback ports)
//! sharing one real PostgreSQL. ffmpeg publishes to node A; viewers on node
//! B get the stream through B's WHEP relay pull from A, and ten of them cost
//! A one WHEP session.

mod common;

use std::time::Duration;

use common::cluster::*;
use common::postgres::Postgres;
use common::rtc_client::{self, Outgoing};
use common::*;

const CLUSTER_TIMEOUT: Duration = Duration::from_secs(20);

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
    let api = b.api_stream(STREAM).expect("stream JSON");
    assert!(
        api["ingest"].is_null(),
        "B has no publisher and no viewer: nothing is pulled yet: {api}"
    );
    assert_eq!(api["live"], true, "live on the cluster (the bus): {api}");

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
    b.wait_for_log("no local viewer left", Duration::from_secs(1));

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

    a.signal("KILL");
    let killed = std::time::Instant::now();
    ffmpeg.kill();
    let before = viewer.last_of("progress").map_or(0, |v| frames(&v));
    let _ffmpeg_b = Publisher::ffmpeg(&b.publish_url(STREAM), FfmpegOpts::default());
    b.wait_live(STREAM, LIVE_TIMEOUT);
    wait_origin(&c, STREAM, "b", CLUSTER_TIMEOUT);
    let from = viewer.cursor();
    viewer.wait_for_from(from, "frames from B's publisher on C", MEDIA_TIMEOUT, |v| {
        v["type"] == "progress" && frames(v) >= before + 30
    });
    println!(
        "origin SIGKILLed → the new publisher's frames decoded on the edge after {:.1} s (ffmpeg restart included)",
        killed.elapsed().as_secs_f64()
    );
    let r = viewer.stop(MEDIA_TIMEOUT);
    println!("aiortc viewer on C: {r}");
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(
        r["connection_states"],
        serde_json::json!(["connecting", "connected", "closed"]),
        "the viewer's PeerConnection stayed connected until it left: {r}"
    );
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
