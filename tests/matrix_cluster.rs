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
use serde_json::json;

const DB: &str = "roomcast";

/// PUTs a transaction to `node`, as a load balancer retrying there would.
fn push(node: &Server, txn_id: &str, hs_token: &str, body: &[u8]) {
    let r = put_transaction_to(node, txn_id, hs_token, body);
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
    let (_b_state, b) = env.start_other_node(None, "");
    let a = env.server();
    a.wait_for_log("matrix: sharing the database", MX_TIMEOUT);
    b.wait_for_log("matrix: sharing the database", MX_TIMEOUT);
    let hs = env.hs_token();
    let bot = env.bot_id();
    let alice = env.user("alice");
    let dm = alice.dm_bot(&bot);

    // --- `!live new`, sent to A by Synapse and at once to B: one room, one key ---------
    let new_ev = alice.send_text(&dm, "!live new duo");
    push(&b, "lb-new", &hs, &alice.event_as_transaction(&dm, &new_ev));
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
        alice.count_bodies_with(&dm, &bot, "Stream Key: "),
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
            &alice.event_as_transaction(&room, ev),
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
        (!alice.ended_edits(&room, &bot).is_empty()).then_some(())
    });
    wait_until("the outbox to drain", MX_TIMEOUT, || {
        (count(
            &pg,
            "SELECT count(*) FROM matrix_outbox WHERE done_at IS NULL",
        ) == 0)
            .then_some(())
    });
    assert_eq!(
        alice.golive_notices(&room, &bot).len(),
        1,
        "go-live notices"
    );
    assert_eq!(alice.ended_edits(&room, &bot).len(), 1, "ended edits");
    let sent = count(
        &pg,
        "SELECT count(*) FROM matrix_outbox WHERE event_id IS NOT NULL",
    );
    // A node logs a delivery after it marked the item done in the database,
    // so the last line may come just after the outbox looked drained.
    let (by_a, by_b) = wait_until("each delivery logged", Duration::from_secs(10), || {
        let n = (
            log_count(a, "matrix: notice delivered"),
            log_count(&b, "matrix: notice delivered"),
        );
        (n.0 + n.1 >= sent).then_some(n)
    });
    println!("outbox items delivered: {sent} (node A {by_a}, node B {by_b})");
    assert_eq!(by_a + by_b, sent, "an outbox item delivered by both nodes");
    assert_eq!(
        count(&pg, "SELECT count(*) FROM matrix_golive_sessions"),
        0,
        "the session ended"
    );
}
