//! The appservice on two roomcast processes sharing one PostgreSQL (issue 13,
//! item 5). Synapse's registration points at node A; every event it sends
//! is also pushed to node B with the hs_token, as a load balancer's retry to
//! another node would. Checked: a `!live new` raced to both nodes creates
//! one room and sends one key; a quick sequence of renames, each raced to
//! both, ends in the last name; the go-live notice and its "ended" edit go
//! out once with both nodes running the outbox, each delivered item by
//! exactly one node.

mod common;

use std::time::Duration;

use common::matrix::*;
use common::postgres::Postgres;
use common::*;
use serde_json::{Value, json};

const DB: &str = "roomcast";

/// A second roomcast on the same database and registration as `env`'s.
fn start_node_b(env: &MatrixEnv, url: &str) -> (TempDir, Server) {
    let state = TempDir::new("roomcast-mx-b");
    let server = Server::start_with(ServerOpts {
        streams: vec![],
        state_dir: Some(state.path().to_path_buf()),
        database_url: Some(url.to_string()),
        extra_toml: format!(
            "[matrix]\nhomeserver_url = \"{}\"\nserver_name = \"{}\"\nregistration = \"{}\"\n{}\n",
            env.synapse.base_url(),
            common::synapse::SERVER_NAME,
            env.registration.display(),
            env.matrix_extra
        ),
        ..ServerOpts::default()
    });
    server.wait_for_log("matrix: connected to the homeserver", MX_TIMEOUT);
    (state, server)
}

/// The event as the homeserver has it, in a transaction body of its own.
fn as_transaction(alice: &MxUser, room: &str, event_id: &str) -> Vec<u8> {
    let (status, mut ev) = alice.call(
        "GET",
        &format!(
            "/_matrix/client/v3/rooms/{}/event/{}",
            enc(room),
            enc(event_id)
        ),
        None,
    );
    assert_eq!(status, 200, "{ev}");
    ev["room_id"] = json!(room);
    json!({ "events": [ev] }).to_string().into_bytes()
}

/// PUTs a transaction to `node`, as a load balancer retrying there would.
fn push(node: &Server, txn_id: &str, hs_token: &str, body: &[u8]) {
    let r = http::request(
        "PUT",
        &node.url(&format!("/_matrix/app/v1/transactions/{}", enc(txn_id))),
        &[
            ("Authorization", &format!("Bearer {hs_token}")),
            ("Content-Type", "application/json"),
        ],
        Some(body),
    )
    .expect("PUT transaction");
    assert_eq!(
        r.status,
        200,
        "node B refused the transaction: {}",
        r.text()
    );
}

fn count(pg: &Postgres, sql: &str) -> usize {
    pg.psql(DB, sql).trim().parse().expect("a count")
}

fn wait_inbox_empty(pg: &Postgres) {
    wait_until("both nodes to process the inbox", MX_TIMEOUT, || {
        (count(pg, "SELECT count(*) FROM matrix_inbox") == 0).then_some(())
    });
}

fn bot_bodies_with(alice: &MxUser, room: &str, bot: &str, needle: &str) -> usize {
    alice
        .messages_from(room, bot)
        .iter()
        .filter(|e| {
            e["content"]["body"]
                .as_str()
                .is_some_and(|b| b.contains(needle))
        })
        .count()
}

fn golive_notices(alice: &MxUser, room: &str, bot: &str) -> Vec<Value> {
    alice
        .messages_from(room, bot)
        .into_iter()
        .filter(|e| e["content"]["io.roomcast.golive"].is_object())
        .collect()
}

fn ended_edits(alice: &MxUser, room: &str, bot: &str) -> Vec<Value> {
    alice
        .messages_from(room, bot)
        .into_iter()
        .filter(|e| {
            e["content"]["m.relates_to"]["rel_type"] == "m.replace"
                && e["content"]["m.new_content"]["body"]
                    .as_str()
                    .is_some_and(|b| b.contains("ended after"))
        })
        .collect()
}

/// Lines of a node's log containing `needle`.
fn log_count(node: &Server, needle: &str) -> usize {
    node.log_lines()
        .iter()
        .filter(|l| l.contains(needle))
        .count()
}

#[test]
fn two_nodes_apply_each_transaction_once_in_order_and_notify_once() {
    let _serial = serial();
    let pg = Postgres::start();
    let url = pg.create_database(DB);
    let env = MatrixEnv::start_with_database("golive_delay_ms = 1000", Some(url.clone()));
    let (_b_state, b) = start_node_b(&env, &url);
    let a = env.server();
    a.wait_for_log("matrix: sharing the database", MX_TIMEOUT);
    b.wait_for_log("matrix: sharing the database", MX_TIMEOUT);
    let hs = env.hs_token();
    let bot = env.bot_id();
    let alice = env.user("alice");
    let dm = alice.dm_bot(&bot);

    // --- `!live new`, sent to A by Synapse and at once to B: one room, one key ---------
    let new_ev = alice.send_text(&dm, "!live new duo");
    push(&b, "lb-new", &hs, &as_transaction(&alice, &dm, &new_ev));
    let key = key_from_settings(
        alice.wait_message(&dm, &bot, "Stream Key: ")["content"]["body"]
            .as_str()
            .unwrap(),
    );
    let room = wait_until("the room alias", MX_TIMEOUT, || {
        alice.resolve_alias("#live_duo:localhost")
    });
    alice.join(&room);
    wait_inbox_empty(&pg);
    // The key is the command's last step: one reply means one run.
    assert_eq!(
        bot_bodies_with(&alice, &dm, &bot, "Stream Key: "),
        1,
        "keys sent"
    );
    assert_eq!(
        count(
            &pg,
            "SELECT count(*) FROM matrix_rooms WHERE alias LIKE '#live_duo%'"
        ),
        1,
        "rooms created"
    );
    assert_eq!(
        count(
            &pg,
            "SELECT count(*) FROM matrix_streams WHERE stream = 'duo'"
        ),
        1
    );
    let commands = [a, &b].map(|n| log_count(n, "matrix: command room="));
    let keys = [a, &b].map(|n| log_count(n, "matrix: stream key sent"));
    println!("`!live new` run by A/B: {commands:?}, its key sent by A/B: {keys:?}");
    assert_eq!(
        commands.iter().sum::<usize>(),
        1,
        "the command processed once over both nodes"
    );
    assert_eq!(keys.iter().sum::<usize>(), 1, "one key over both nodes");
    // Keys are in memory per node (cross-node keys are the cluster part's):
    // publish to the node that ran the command.
    let origin = if keys[0] == 1 { a } else { &b };

    // --- renames in quick succession, each raced to both nodes: the last one wins -------
    let names: Vec<String> = (1..=6).map(|i| format!("Duo take {i}")).collect();
    for (i, name) in names.iter().enumerate() {
        let (status, r) = alice.call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(&room)),
            Some(&json!({ "name": name })),
        );
        assert_eq!(status, 200, "{r}");
        let ev = r["event_id"].as_str().expect("event id");
        push(
            &b,
            &format!("lb-rename-{i}"),
            &hs,
            &as_transaction(&alice, &room, ev),
        );
    }
    let last = names.last().unwrap();
    wait_until("the last name in the database", MX_TIMEOUT, || {
        (pg.psql(
            DB,
            "SELECT name FROM matrix_rooms WHERE alias LIKE '#live_duo%'",
        ) == *last)
            .then_some(())
    });
    wait_inbox_empty(&pg);
    assert_eq!(
        pg.psql(
            DB,
            "SELECT name FROM matrix_rooms WHERE alias LIKE '#live_duo%'"
        ),
        *last,
        "a rename applied after the last one"
    );
    wait_until(
        "room leases given back, the inbox empty",
        MX_TIMEOUT,
        || {
            (count(
                &pg,
                "SELECT count(*) FROM matrix_leases WHERE key LIKE 'room:%'",
            ) == 0)
                .then_some(())
        },
    );
    let titles = [a, &b].map(|n| n.api_stream("duo").map(|s| s["title"].clone()));
    println!("titles on A and B: {titles:?}");
    assert!(
        titles.iter().any(|t| t.as_ref() == Some(&json!(last))),
        "no node serves the last title: {titles:?}"
    );

    // --- go-live with both nodes running the outbox: one notice, one "ended" edit -------
    let mut ffmpeg = Publisher::ffmpeg(&origin.rtmp_url(&key), FfmpegOpts::small());
    origin.wait_live("duo", LIVE_TIMEOUT);
    alice.wait_message(&room, &bot, "is live");
    ffmpeg.stop(Duration::from_secs(10));
    wait_until("the ended edit", MX_TIMEOUT, || {
        (!ended_edits(&alice, &room, &bot).is_empty()).then_some(())
    });
    wait_until("the outbox to drain", MX_TIMEOUT, || {
        (count(
            &pg,
            "SELECT count(*) FROM matrix_outbox WHERE done_at IS NULL",
        ) == 0)
            .then_some(())
    });
    assert_eq!(
        golive_notices(&alice, &room, &bot).len(),
        1,
        "go-live notices"
    );
    assert_eq!(ended_edits(&alice, &room, &bot).len(), 1, "ended edits");
    let sent = count(
        &pg,
        "SELECT count(*) FROM matrix_outbox WHERE event_id IS NOT NULL",
    );
    let (by_a, by_b) = (
        log_count(a, "matrix: notice delivered"),
        log_count(&b, "matrix: notice delivered"),
    );
    println!("outbox items delivered: {sent} (node A {by_a}, node B {by_b})");
    assert_eq!(by_a + by_b, sent, "an outbox item delivered by both nodes");
    assert_eq!(
        count(&pg, "SELECT count(*) FROM matrix_golive_sessions"),
        0,
        "the session ended"
    );
}
