//! Control events across cluster nodes (issue 13, items 4 and 7): three
//! real `roomcast` nodes on one real PostgreSQL, sharing state through the
//! LISTEN/NOTIFY bus (src/cluster/bus.rs).
//!
//! - Synapse's appservice `url` is Debian's nginx balancing round-robin
//!   over the three nodes: a stream made by `!live new` appears on all
//!   three, a rename reaches every node's SSE feed within 2 s, a chat
//!   message too, a publish on the node that did not make the stream works
//!   (the key travelled), and the go-live notice arrives exactly once.
//! - Viewers are summed over the cluster in every node's API and feeds
//!   while `/metrics` keep each node's own; a cluster-wide cap refuses the
//!   viewer over it on any node.
//! - `cluster.redirect_viewers`: a full node answers a WHEP POST with 307
//!   to a node with room, and the viewer plays there.

mod common;

use std::time::{Duration, Instant};

use common::cluster::*;
use common::matrix::*;
use common::nginx::Nginx;
use common::postgres::Postgres;
use common::rtc_client::{self, Outgoing};
use common::synapse::{SERVER_NAME, Synapse, free_port};
use common::*;
use serde_json::{Value, json};

const CLUSTER_TIMEOUT: Duration = Duration::from_secs(20);
/// The brief: a rename reaches every node's page within this.
const RENAME_BUDGET: Duration = Duration::from_secs(2);

/// A node of `spec` with extra lines in `[cluster]` and extra tables.
fn start_node(spec: &ClusterSpec, id: &str, cluster_extra: &str, extra_toml: &str) -> Server {
    let listen = format!("127.0.0.1:{}", free_port());
    Server::start_with(ServerOpts {
        http_listen: Some(listen.clone()),
        database_url: Some(spec.database_url.clone()),
        streams: spec.streams.clone(),
        extra_toml: format!(
            "[cluster]\nnode_id = \"{id}\"\ninternal_url = \"http://{listen}\"\nsecret = \"{}\"\n{cluster_extra}\n{extra_toml}\n",
            spec.secret
        ),
        ..ServerOpts::default()
    })
}

fn metric(node: &Server, line_prefix: &str) -> Option<f64> {
    node.get("/metrics")
        .text()
        .lines()
        .find_map(|l| l.strip_prefix(line_prefix)?.trim().parse().ok())
}

fn stream_viewers_metric(node: &Server, stream: &str) -> Option<f64> {
    metric(
        node,
        &format!("roomcast_stream_viewers{{stream=\"{stream}\"}}"),
    )
}

fn golive_notices(alice: &MxUser, room: &str, bot: &str) -> Vec<Value> {
    alice
        .messages_from(room, bot)
        .into_iter()
        .filter(|e| e["content"]["io.roomcast.golive"].is_object())
        .collect()
}

fn ended_edits(alice: &MxUser, room: &str, bot: &str) -> usize {
    alice
        .messages_from(room, bot)
        .into_iter()
        .filter(|e| {
            e["content"]["m.relates_to"]["rel_type"] == "m.replace"
                && e["content"]["m.new_content"]["body"]
                    .as_str()
                    .is_some_and(|b| b.contains("ended after"))
        })
        .count()
}

#[test]
fn a_rename_through_a_balanced_appservice_reaches_every_node_and_the_notice_goes_out_once() {
    let _serial = serial();
    let pg = Postgres::start();
    let db = "cluster_control";
    let spec = ClusterSpec::new(pg.create_database(db));
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    // nginx first: the registration names it, and Synapse retries a node
    // that is not up yet through it.
    let upstreams: String = ports
        .iter()
        .map(|p| format!("    server 127.0.0.1:{p} max_fails=0;\n"))
        .collect();
    let lb = Nginx::start(&format!(
        "upstream roomcast_nodes {{\n{upstreams}}}\n\
         server {{\n  listen {{listen}};\n  client_max_body_size 16m;\n\
           location / {{ proxy_pass http://roomcast_nodes; proxy_set_header Host $host; }}\n}}\n"
    ));
    let state = TempDir::new("roomcast-cc");
    let registration = state.path().join("registration.yaml");
    let out = std::process::Command::new(roomcast_bin())
        .args(["registration", "--url", &lb.url("")])
        .args(["--server-name", SERVER_NAME, "--output"])
        .arg(&registration)
        .output()
        .expect("run roomcast registration");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let synapse = Synapse::start(&registration);
    let matrix_toml = format!(
        "[matrix]\nhomeserver_url = \"{}\"\nserver_name = \"{SERVER_NAME}\"\nregistration = \"{}\"\ngolive_delay_ms = 1000\n",
        synapse.base_url(),
        registration.display()
    );
    let nodes: Vec<Server> = ["a", "b", "c"]
        .iter()
        .zip(&ports)
        .map(|(id, port)| {
            let listen = format!("127.0.0.1:{port}");
            Server::start_with(ServerOpts {
                http_listen: Some(listen.clone()),
                database_url: Some(spec.database_url.clone()),
                streams: vec![],
                extra_toml: format!(
                    "[cluster]\nnode_id = \"{id}\"\ninternal_url = \"http://{listen}\"\nsecret = \"{}\"\n{matrix_toml}",
                    spec.secret
                ),
                ..ServerOpts::default()
            })
        })
        .collect();
    for n in &nodes {
        n.wait_for_log("matrix: connected to the homeserver", MX_TIMEOUT);
        n.wait_for_log("cluster bus: listening", CLUSTER_TIMEOUT);
    }
    wait_alive_nodes(&nodes[0], &["a", "b", "c"], CLUSTER_TIMEOUT);
    // MatrixEnv's helpers (users, the bot's id) on this registration; its
    // roomcast is the three nodes above.
    let env = MatrixEnv {
        state,
        http_port: lb.port,
        registration,
        synapse,
        server: None,
        matrix_extra: String::new(),
        browsable: false,
        database_url: Some(spec.database_url.clone()),
        server_env: Vec::new(),
        extra_toml: String::new(),
    };
    let bot = env.bot_id();
    let alice = env.user("alice");
    let dm = alice.dm_bot(&bot);

    // --- `!live new` on whichever node nginx picks: the stream is on all three ----
    let key = key_from_settings(
        alice.live_new(&dm, &bot, "duo")["content"]["body"]
            .as_str()
            .unwrap(),
    );
    let room = wait_until("the room alias", MX_TIMEOUT, || {
        alice.resolve_alias("#live_duo:localhost")
    });
    alice.join(&room);
    for n in &nodes {
        wait_until("the new stream on every node", CLUSTER_TIMEOUT, || {
            n.api_stream("duo")
        });
    }
    let feeds: Vec<Sse> = nodes.iter().map(|n| Sse::open(n, "duo")).collect();
    for f in &feeds {
        f.wait("title", CLUSTER_TIMEOUT, |_| true);
    }

    // --- a rename in the room: on every node's feed within 2 s ---------------------
    let marks: Vec<usize> = nodes.iter().map(|n| n.log_lines().len()).collect();
    for (i, name) in ["Duo on the balancer", "Duo, renamed again"]
        .iter()
        .enumerate()
    {
        let t0 = Instant::now();
        let (status, r) = alice.call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(&room)),
            Some(&json!({ "name": name })),
        );
        assert_eq!(status, 200, "{r}");
        let mut took = Vec::new();
        for (n, f) in ["a", "b", "c"].iter().zip(&feeds) {
            f.wait("title", CLUSTER_TIMEOUT, |d| d["title"] == *name);
            took.push((n, t0.elapsed()));
        }
        println!("rename {i}: the title event on each node's feed after {took:?}");
        for (n, t) in &took {
            assert!(
                *t <= RENAME_BUDGET,
                "node {n}'s feed got the rename after {t:?} (over {RENAME_BUDGET:?})"
            );
        }
    }
    // A node logs a rename just after it changed the title the feeds
    // show: the last line may still be on its way.
    let applied_by: Vec<usize> = wait_until("both renames logged", CLUSTER_TIMEOUT, || {
        let by: Vec<usize> = nodes
            .iter()
            .zip(&marks)
            .map(|(n, mark)| {
                n.log_lines()[*mark..]
                    .iter()
                    .filter(|l| l.contains("matrix: room renamed"))
                    .count()
            })
            .collect();
        (by.iter().sum::<usize>() >= 2).then_some(by)
    });
    println!("renames applied by a/b/c (from Synapse through nginx): {applied_by:?}");
    assert_eq!(
        applied_by.iter().sum::<usize>(),
        2,
        "each rename applied once"
    );

    // --- C's LISTEN connection goes silent (its backend SIGSTOPped): a rename
    // meanwhile misses C; C replaces the connection and resyncs from the
    // database, and its feed gets the title all the same -----------------------------
    let pid = pg
        .psql(
            db,
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'roomcast-bus-c'",
        )
        .trim()
        .to_string();
    assert!(!pid.is_empty(), "C's LISTEN connection in pg_stat_activity");
    let signal_backend = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill");
        assert!(ok.success(), "kill {sig} {pid}");
    };
    let c_log_mark = nodes[2].log_lines().len();
    let renamed_by_c = || {
        nodes[2].log_lines()[c_log_mark..]
            .iter()
            .filter(|l| l.contains("matrix: room renamed"))
            .count()
    };
    signal_backend("-STOP");
    // Until a node other than C applies one (nginx may hand C the
    // transaction, and C then knows the name by itself).
    let mut silent = String::new();
    for i in 0..4 {
        silent = format!("Duo while C was not listening ({i})");
        let (status, r) = alice.call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(&room)),
            Some(&json!({ "name": silent })),
        );
        assert_eq!(status, 200, "{r}");
        feeds[0].wait("title", CLUSTER_TIMEOUT, |d| d["title"] == silent.as_str());
        feeds[1].wait("title", CLUSTER_TIMEOUT, |d| d["title"] == silent.as_str());
        if renamed_by_c() == i {
            break;
        }
    }
    assert!(
        !nodes[2].log_lines()[c_log_mark..]
            .iter()
            .any(|l| l.contains("listening again")),
        "C reconnected before the rename it missed"
    );
    let t0 = Instant::now();
    nodes[2].wait_for_log_from(c_log_mark, "listening again; resyncing", CLUSTER_TIMEOUT);
    feeds[2].wait("title", CLUSTER_TIMEOUT, |d| d["title"] == silent.as_str());
    println!(
        "C's LISTEN backend stopped: C resynced and its feed had the missed rename {:?} after A's and B's",
        t0.elapsed()
    );
    assert_eq!(
        metric(&nodes[2], "roomcast_cluster_bus_resyncs_total "),
        Some(1.0)
    );
    // The stopped backend's client is gone: it ends once it runs again.
    signal_backend("-CONT");

    // --- a chat message: on every node's feed ---------------------------------------
    let hello = alice.send_text(&room, "hello from the balanced room");
    for f in &feeds {
        f.wait("chat", MX_TIMEOUT, |d| {
            d["body"] == "hello from the balanced room"
        });
    }
    // Its redaction too (the node that processes it may be another).
    alice.redact(&room, &hello);
    for f in &feeds {
        f.wait("redaction", MX_TIMEOUT, |d| d["id"] == hello.as_str());
    }

    // A message too big for one NOTIFY (10 KB of JSON): through the
    // payload table, to every feed all the same.
    let long = "🎥".repeat(2500);
    alice.send_text(&room, &long);
    for f in &feeds {
        f.wait("chat", MX_TIMEOUT, |d| d["body"] == long.as_str());
    }
    let kept: u64 = pg
        .psql(db, "SELECT count(*) FROM cluster_bus_payloads")
        .trim()
        .parse()
        .expect("a count");
    assert!(
        kept >= 1,
        "the long message went through cluster_bus_payloads"
    );

    // --- go-live on node C (the key travelled on the bus): one notice ---------------
    let c = &nodes[2];
    let mut ffmpeg = Publisher::ffmpeg(&c.rtmp_url(&key), FfmpegOpts::small());
    c.wait_live("duo", LIVE_TIMEOUT);
    for f in &feeds {
        f.wait("live", CLUSTER_TIMEOUT, |d| d["name"] == "duo");
    }
    for n in &nodes {
        assert_eq!(n.api_stream("duo").expect("stream")["live"], true);
    }
    alice.wait_message(&room, &bot, "is live");
    ffmpeg.stop(Duration::from_secs(10));
    for f in &feeds {
        f.wait("offline", CLUSTER_TIMEOUT, |d| d["name"] == "duo");
    }
    wait_until("the ended edit", MX_TIMEOUT, || {
        (ended_edits(&alice, &room, &bot) > 0).then_some(())
    });
    wait_until("the outbox to drain", MX_TIMEOUT, || {
        (pg.psql(
            db,
            "SELECT count(*) FROM matrix_outbox WHERE done_at IS NULL",
        )
        .trim()
            == "0")
            .then_some(())
    });
    assert_eq!(
        golive_notices(&alice, &room, &bot).len(),
        1,
        "go-live notices"
    );
    assert_eq!(ended_edits(&alice, &room, &bot), 1, "ended edits");
    let spread: Vec<String> = lb
        .access_log()
        .iter()
        .filter(|l| l.contains("/_matrix/app/v1/transactions/"))
        .filter_map(|l| l.split(' ').next().map(str::to_string))
        .collect();
    let distinct: std::collections::BTreeSet<_> = spread.iter().collect();
    println!(
        "transactions through nginx: {} over {:?}",
        spread.len(),
        distinct
    );
    assert!(
        distinct.len() >= 2,
        "nginx spread the transactions over the nodes: {distinct:?}"
    );
}

#[test]
fn viewers_are_summed_over_the_cluster_and_capped_there() {
    let _serial = serial();
    let mut pg = Postgres::start();
    let spec = ClusterSpec::new(pg.create_database("cluster_counts"));
    let caps = "max_viewers_per_stream = 3";
    let a = start_node(&spec, "a", caps, "");
    let b = start_node(&spec, "b", caps, "");
    let c = start_node(&spec, "c", caps, "");
    wait_alive_nodes(&a, &["a", "b", "c"], CLUSTER_TIMEOUT);
    let _ffmpeg = Publisher::ffmpeg(&a.publish_url(STREAM), FfmpegOpts::small());
    a.wait_live(STREAM, LIVE_TIMEOUT);
    // Live on every node's API and feed before any pull (the bus).
    let feed_c = Sse::open(&c, STREAM);
    feed_c.wait("live", CLUSTER_TIMEOUT, |_| true);
    assert!(c.api_stream(STREAM).unwrap()["ingest"].is_null());

    let watch = |node: &Server| {
        rtc_client::start(&node.whep_url(STREAM), None, false, Outgoing::Nothing)
            .unwrap_or_else(|r| panic!("viewer refused: {} {}", r.status, r.text()))
    };
    let mut on_b = vec![watch(&b), watch(&b)];
    let mut on_c = watch(&c);
    wait_until("three viewers receiving video", MEDIA_TIMEOUT, || {
        (on_b.iter().chain([&on_c]).all(|v| v.video_packets() > 0)).then_some(())
    });
    // Every node's API says three; the metrics say what each node serves.
    for n in [&a, &b, &c] {
        wait_until("the summed count on every node", CLUSTER_TIMEOUT, || {
            (viewers(n, STREAM) == 3).then_some(())
        });
    }
    feed_c.wait("viewers", CLUSTER_TIMEOUT, |d| d["viewers"] == 3);
    assert_eq!(
        stream_viewers_metric(&a, STREAM),
        Some(2.0),
        "A serves B's and C's pulls"
    );
    assert_eq!(stream_viewers_metric(&b, STREAM), Some(2.0));
    assert_eq!(stream_viewers_metric(&c, STREAM), Some(1.0));

    // The cluster's cap of three: a fourth viewer is refused on any node,
    // although no node is near a cap of its own.
    let r = common::http::request(
        "POST",
        &a.whep_url(STREAM),
        &[("Content-Type", "application/sdp")],
        Some(offer_sdp(&["H264"]).as_bytes()),
    )
    .unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.text().contains("the cluster's limit of 3"),
        "{}",
        r.text()
    );

    // One leaves B: every node says two, and a place is free again.
    let mut gone = on_b.pop().unwrap();
    gone.stop();
    let d = common::http::request("DELETE", &gone.location, &[], None).unwrap();
    assert!(d.status < 300, "DELETE: {}", d.status);
    for n in [&a, &b, &c] {
        wait_until(
            "the count going down on every node",
            CLUSTER_TIMEOUT,
            || (viewers(n, STREAM) == 2).then_some(()),
        );
    }
    let fourth = watch(&a);
    wait_until("a viewer in the freed place", MEDIA_TIMEOUT, || {
        (fourth.video_packets() > 0).then_some(())
    });
    for n in [&a, &b, &c] {
        wait_until("three again on every node", CLUSTER_TIMEOUT, || {
            (viewers(n, STREAM) == 3).then_some(())
        });
    }

    // PostgreSQL restarts while C's viewer leaves: every node's LISTEN
    // connection breaks and comes back (logged, resynced), and the sums
    // agree again at once (C's message waited for the database, or was lost
    // and the resync's figures replace it), not after the 10 s refresh.
    let marks: Vec<usize> = [&a, &b, &c].iter().map(|n| n.log_lines().len()).collect();
    pg.stop();
    on_c.stop();
    let d = common::http::request("DELETE", &on_c.location, &[], None).unwrap();
    assert!(
        d.status < 300,
        "DELETE on C while the database is away: {}",
        d.status
    );
    pg.start_again();
    for (n, mark) in [&a, &b, &c].iter().zip(&marks) {
        n.wait_for_log_from(*mark, "listening again; resyncing", CLUSTER_TIMEOUT);
    }
    let back = Instant::now();
    for n in [&a, &b, &c] {
        wait_until(
            "the sums to agree after the restart",
            CLUSTER_TIMEOUT,
            || (viewers(n, STREAM) == 2).then_some(()),
        );
    }
    let took = back.elapsed();
    println!(
        "PostgreSQL restarted: every node's sum right {took:?} after the last one listened again"
    );
    assert!(
        took < Duration::from_secs(5),
        "the sums came back with the bus, not with the 10 s refresh: {took:?}"
    );
}

#[test]
fn a_full_node_redirects_a_whep_viewer_to_a_node_with_room() {
    let _serial = serial();
    let pg = Postgres::start();
    let spec = ClusterSpec::new(pg.create_database("cluster_redirect"));
    // A takes one viewer; B has no cap.
    let a = start_node(
        &spec,
        "a",
        "redirect_viewers = true",
        "[limits]\nmax_viewers = 1\n",
    );
    let b = start_node(&spec, "b", "redirect_viewers = true", "");
    wait_alive_nodes(&a, &["a", "b"], CLUSTER_TIMEOUT);
    let _ffmpeg = Publisher::ffmpeg(&a.publish_url(STREAM), FfmpegOpts::small());
    a.wait_live(STREAM, LIVE_TIMEOUT);
    let first = rtc_client::start(&a.whep_url(STREAM), None, false, Outgoing::Nothing)
        .unwrap_or_else(|r| panic!("first viewer on A: {} {}", r.status, r.text()));
    wait_until("A full (its heartbeat says so)", CLUSTER_TIMEOUT, || {
        cluster_view(&b)["nodes"]
            .as_array()?
            .iter()
            .any(|n| n["node_id"] == "a" && n["viewers"] == 1)
            .then_some(())
    });

    // The second viewer: 307 to B (RFC 9725), the query kept and marked.
    let r = common::http::request(
        "POST",
        &format!("{}?access=x", a.whep_url(STREAM)),
        &[("Content-Type", "application/sdp")],
        Some(offer_sdp(&["H264"]).as_bytes()),
    )
    .unwrap();
    assert_eq!(r.status, 307, "{}", r.text());
    let to = r.header("location").expect("Location").to_string();
    println!("WHEP POST to the full node A → 307 {to}");
    assert_eq!(
        to,
        format!("{}?access=x&rc_redirected=1", b.whep_url(STREAM)),
        "to B, same path and query, marked"
    );
    a.wait_for_log(
        "viewer redirected to a node with more room",
        // Logged around the 307; the drain thread may read it later.
        Duration::from_secs(10),
    );
    // The client POSTs the same offer there and plays (B pulls from A).
    let second = rtc_client::start(&to, None, false, Outgoing::Nothing)
        .unwrap_or_else(|r| panic!("the redirected viewer on B: {} {}", r.status, r.text()));
    wait_until("both viewers receiving video", MEDIA_TIMEOUT, || {
        (first.video_packets() > 0 && second.video_packets() > 0).then_some(())
    });
    assert_eq!(metric(&b, "roomcast_cluster_relays "), Some(1.0));
    // The watch page on A: the player's fetch follows the 307 (the same
    // offer, CORS on B, B's origin in the page's connect-src), plays from B,
    // and its session's resource (PATCH/DELETE) is B's.
    let b_mark = b.log_len();
    let mut page = pages_scenario(
        &a,
        "cluster",
        "watch-redirect",
        &["--stream", STREAM, "--expect-resource", &b.url("/whep/")],
    );
    let playing = page.wait_for("the watch page playing", MEDIA_TIMEOUT, |v| {
        v["type"] == "playing"
    });
    println!("watch page on A, redirected: {playing}");
    // B serves the page: its session was negotiated there (read from B's
    // log: the scenario may close the page, and end its session, right
    // after it reports playing, so a viewer count read now races that).
    b.wait_for_log_from(b_mark, "whep viewer negotiated", CLUSTER_TIMEOUT);
    let result = page.result(MEDIA_TIMEOUT);
    assert_eq!(result["ok"], true, "{result}");
    wait_until(
        "the page's session on B to end with the page",
        CLUSTER_TIMEOUT,
        || (stream_viewers_metric(&b, STREAM)? == 1.0).then_some(()),
    );
    assert_eq!(
        stream_viewers_metric(&a, STREAM),
        Some(2.0),
        "A: its one viewer and B's pull, not the page"
    );
    // A redirected request is never redirected again: B (uncapped, one
    // viewer more than A would be) answers it itself.
    let again = common::http::request(
        "POST",
        &format!("{}?rc_redirected=1", a.whep_url(STREAM)),
        &[("Content-Type", "application/sdp")],
        Some(offer_sdp(&["H264"]).as_bytes()),
    )
    .unwrap();
    assert_eq!(
        again.status,
        503,
        "A is full and may not redirect twice: {}",
        again.text()
    );
}

/// A key changed while a node could not hear it (its `key` message lost:
/// a full queue or a failed NOTIFY, here no message at all) must not stay
/// valid there: the node re-reads every stream's key when its LISTEN
/// connection comes back.
#[test]
fn a_key_changed_while_a_node_was_not_listening_stops_working_there() {
    let _serial = serial();
    let pg = Postgres::start();
    let db = "cluster_keys";
    let spec = ClusterSpec::new(pg.create_database(db));
    let a = start_node(&spec, "a", "", "");
    let b = start_node(&spec, "b", "", "");
    wait_alive_nodes(&a, &["a", "b"], CLUSTER_TIMEOUT);
    let old_key = a.key(STREAM).to_string();
    // Whether `key` passes B's key check (an empty offer then fails as an
    // offer, not as a key).
    let key_accepted = |key: &str| {
        let r = http::request(
            "POST",
            &b.whip_url(STREAM),
            &[
                ("Authorization", &format!("Bearer {key}")),
                ("Content-Type", "application/sdp"),
            ],
            Some(b"v=0\r\n"),
        )
        .unwrap();
        !(r.status == 401 || r.status == 403)
    };
    assert!(key_accepted(&old_key), "the configured key on B");
    let new_key = format!("{}{}", random_hex(), random_hex());
    assert!(!key_accepted(&new_key));

    // The key is changed in the database and nobody tells B.
    let hash = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(new_key.as_bytes()))
    };
    pg.psql(
        db,
        &format!("UPDATE streams SET key_hash = '{hash}' WHERE name = '{STREAM}'"),
    );
    assert!(key_accepted(&old_key), "B cannot know yet");

    // B's LISTEN connection drops; B reconnects and re-reads the keys.
    let from = b.log_lines().len();
    let pid = pg
        .psql(
            db,
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'roomcast-bus-b'",
        )
        .trim()
        .to_string();
    assert!(!pid.is_empty(), "B's LISTEN connection in pg_stat_activity");
    pg.psql(db, &format!("SELECT pg_terminate_backend({pid})"));
    b.wait_for_log_from(from, "listening again; resyncing", CLUSTER_TIMEOUT);
    wait_until("B refusing the old key", CLUSTER_TIMEOUT, || {
        (!key_accepted(&old_key)).then_some(())
    });
    assert!(key_accepted(&new_key), "the new key on B");
}

/// A recording's files are on the node that made it: another node (the
/// index is shared) answers their URLs with a 307 there, and a DELETE it
/// cannot do is done by that node (the bus).
#[test]
fn another_nodes_recording_files_are_a_redirect_to_it() {
    let _serial = serial();
    let pg = Postgres::start();
    let spec = ClusterSpec::new(pg.create_database("cluster_recordings"));
    let rec = "[recording]\nenabled = true\ndir = \"recordings\"\nsegment_secs = 2\nmin_free_gb = 0\nadmin_token = \"delete-token-0123456789\"\n";
    let a = start_node(&spec, "a", "", rec);
    let b = start_node(&spec, "b", "", rec);
    wait_alive_nodes(&a, &["a", "b"], CLUSTER_TIMEOUT);
    let mut ffmpeg = Publisher::ffmpeg(
        &a.publish_url(STREAM),
        FfmpegOpts {
            duration_s: Some(3.0),
            ..FfmpegOpts::small()
        },
    );
    a.wait_live(STREAM, LIVE_TIMEOUT);
    assert!(ffmpeg.wait_exit(Duration::from_secs(30)).is_some());
    let id: String = wait_until(
        "A's recording complete, listed by B",
        CLUSTER_TIMEOUT,
        || {
            let v: Value = b
                .get(&format!("/api/v1/streams/{STREAM}/recordings"))
                .json()
                .ok()?;
            let r = v["recordings"].get(0)?;
            (r["state"] == "complete").then(|| r["id"].as_str().unwrap().to_string())
        },
    );
    for path in [
        format!("/recordings/{id}/index.m3u8"),
        format!("/recordings/{id}/0.mp4"),
        format!("/recordings/{id}.mp4"),
    ] {
        let r = b.get(&path);
        assert_eq!(r.status, 307, "{path} on B: {}", r.text());
        let to = a.url(&path);
        assert_eq!(r.header("location"), Some(to.as_str()), "{path}");
        assert_eq!(a.get(&path).status, 200, "{path} on A");
    }

    // Deleted through B: B cannot (the files are on A), so A does it when
    // the bus tells it.
    let r = common::http::request(
        "DELETE",
        &b.url(&format!("/api/v1/recordings/{id}")),
        &[("Authorization", "Bearer delete-token-0123456789")],
        None,
    )
    .unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    a.wait_for_log("deleted as another cluster node asked", CLUSTER_TIMEOUT);
    assert_eq!(a.get(&format!("/api/v1/recordings/{id}")).status, 404);
    assert_eq!(b.get(&format!("/recordings/{id}.mp4")).status, 404);
}
