//! Every `Store` query against both backends: SQLite (a file in a temp dir)
//! and a real PostgreSQL (Debian's package, a private cluster on loopback).
//! The same checks run on each, so a query that only one dialect accepts, or
//! that reads back differently (NULL ordering, integer widths, upserts that
//! keep known values), fails here rather than in production.

mod common;

use common::postgres::Postgres;
use common::{TempDir, manifest_dir};
use roomcast::store::matrix::{NewOutbox, RoomFlag, RoomText};
use roomcast::store::{Backend, Store};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Fills a fresh database through every write query and reads it all back.
async fn exercise(store: &Store) {
    // --- streams -------------------------------------------------------------------
    assert!(
        store
            .create_stream_if_absent("demo", "h1", "demo")
            .await
            .unwrap()
    );
    assert!(
        !store
            .create_stream_if_absent("demo", "h2", "demo")
            .await
            .unwrap()
    );
    store
        .upsert_stream("cfg", Some("Config title"), "h3", "config")
        .await
        .unwrap();
    store
        .upsert_stream("cfg", None, "h4", "config")
        .await
        .unwrap();
    assert!(store.set_key_hash("demo", "h5").await.unwrap());
    assert!(!store.set_key_hash("nope", "h6").await.unwrap());
    assert!(store.stream_exists("demo").await.unwrap());
    assert!(!store.stream_exists("nope").await.unwrap());
    store.set_stream_title("demo", "Demo title").await.unwrap();
    let rows = store.streams().await.unwrap();
    let names: Vec<_> = rows.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["cfg", "demo"]);
    assert_eq!(rows[0].title, None, "upsert replaces the title");
    assert_eq!(rows[0].key_hash, "h4");
    assert_eq!(rows[1].title.as_deref(), Some("Demo title"));
    assert_eq!(rows[1].key_hash, "h5");
    assert_eq!(rows[1].origin, "demo");
    // One row by name (the cluster bus's re-read).
    let demo = store.stream("demo").await.unwrap().unwrap();
    assert_eq!(demo.key_hash, "h5");
    assert_eq!(demo.title.as_deref(), Some("Demo title"));
    assert!(store.stream("nope").await.unwrap().is_none());
    // A key hash is unique: two streams cannot share a key.
    assert!(
        store
            .create_stream_if_absent("other", "h5", "matrix")
            .await
            .is_err()
    );

    // --- rooms ---------------------------------------------------------------------
    store
        .upsert_room("!a:hs", Some("#a:hs"), Some("Room A"))
        .await
        .unwrap();
    // Unknown values keep what is known.
    store.upsert_room("!a:hs", None, None).await.unwrap();
    store.upsert_room("!b:hs", None, None).await.unwrap();
    let a = store.room("!a:hs").await.unwrap().unwrap();
    assert_eq!(a.alias.as_deref(), Some("#a:hs"));
    assert_eq!(a.name.as_deref(), Some("Room A"));
    assert_eq!(a.join_rule, "public");
    assert!(!a.encrypted && !a.notify);
    assert!(store.room("!zz:hs").await.unwrap().is_none());
    assert_eq!(
        store.room_by_alias("#a:hs").await.unwrap().unwrap().room_id,
        "!a:hs"
    );
    store
        .set_room_text("!a:hs", RoomText::Topic, Some("About A"))
        .await
        .unwrap();
    store
        .set_room_text("!a:hs", RoomText::Name, Some("Room A2"))
        .await
        .unwrap();
    store
        .set_room_text("!b:hs", RoomText::JoinRule, Some("invite"))
        .await
        .unwrap();
    store
        .set_room_flag("!a:hs", RoomFlag::Notify, true)
        .await
        .unwrap();
    store
        .set_room_flag("!b:hs", RoomFlag::Encrypted, true)
        .await
        .unwrap();
    let rooms = store.rooms().await.unwrap();
    assert_eq!(rooms.len(), 2);
    assert_eq!(rooms[0].topic.as_deref(), Some("About A"));
    assert_eq!(rooms[0].name.as_deref(), Some("Room A2"));
    assert!(rooms[0].notify && !rooms[0].encrypted);
    assert_eq!(rooms[1].join_rule, "invite");
    assert!(rooms[1].encrypted);
    // A join rule that disappears means public again.
    store
        .set_room_text("!b:hs", RoomText::JoinRule, None)
        .await
        .unwrap();
    assert_eq!(
        store.room("!b:hs").await.unwrap().unwrap().join_rule,
        "public"
    );

    // --- room ↔ stream -------------------------------------------------------------
    store
        .create_stream_if_absent("cam2", "h7", "matrix")
        .await
        .unwrap();
    store
        .map_stream("cam2", "!a:hs", Some("cam2"), None)
        .await
        .unwrap();
    store
        .map_stream("demo", "!a:hs", None, Some("@alice:hs"))
        .await
        .unwrap();
    // A re-map without an owner keeps the owner.
    store.map_stream("demo", "!a:hs", None, None).await.unwrap();
    let maps = store.mappings().await.unwrap();
    let order: Vec<_> = maps.iter().map(|m| m.stream.as_str()).collect();
    assert_eq!(
        order,
        ["demo", "cam2"],
        "the room's main stream comes first"
    );
    let demo = store.mapping("demo").await.unwrap().unwrap();
    assert_eq!(demo.owner.as_deref(), Some("@alice:hs"));
    assert_eq!(demo.slot, None);
    assert_eq!(
        store
            .mapping("cam2")
            .await
            .unwrap()
            .unwrap()
            .slot
            .as_deref(),
        Some("cam2")
    );
    // Foreign keys hold on both backends.
    assert!(
        store
            .map_stream("ghost", "!a:hs", None, None)
            .await
            .is_err()
    );
    assert!(
        store
            .map_stream("cfg", "!nowhere:hs", None, None)
            .await
            .is_err()
    );
    assert!(store.unmap_stream("cam2").await.unwrap());
    assert!(!store.unmap_stream("cam2").await.unwrap());
    assert!(store.mapping("cam2").await.unwrap().is_none());

    // --- transactions and events -----------------------------------------------------
    assert!(!store.txn_done("t1").await.unwrap());
    store.mark_txn_done("t1").await.unwrap();
    store.mark_txn_done("t1").await.unwrap();
    assert!(store.txn_done("t1").await.unwrap());
    store.mark_event_done("$e1").await.unwrap();
    store.mark_event_done("$e1").await.unwrap();
    assert!(store.event_done("$e1").await.unwrap());
    assert!(!store.event_done("$e2").await.unwrap());
    // Pruning keeps what is recent.
    store.prune_processed(7).await.unwrap();
    assert!(store.txn_done("t1").await.unwrap());
    assert!(store.event_done("$e1").await.unwrap());
    // ...and forgets what is older than the cut-off.
    store.prune_processed(-1).await.unwrap();
    assert!(!store.txn_done("t1").await.unwrap());
    assert!(!store.event_done("$e1").await.unwrap());

    // --- direct messages ---------------------------------------------------------------
    assert_eq!(store.dm_room("@alice:hs").await.unwrap(), None);
    store.set_dm_room("@alice:hs", "!dm1:hs").await.unwrap();
    store.set_dm_room("@alice:hs", "!dm2:hs").await.unwrap();
    assert_eq!(
        store.dm_room("@alice:hs").await.unwrap().as_deref(),
        Some("!dm2:hs")
    );
    assert!(store.is_dm_room("!dm2:hs").await.unwrap());
    assert!(!store.is_dm_room("!dm1:hs").await.unwrap());

    // --- guests ------------------------------------------------------------------------
    store
        .create_guest("th1", "@guest_1:hs", "Ann")
        .await
        .unwrap();
    assert!(
        store
            .create_guest("th1", "@guest_2:hs", "Bob")
            .await
            .is_err(),
        "a token hash names one guest"
    );
    let g = store.guest_by_token_hash("th1").await.unwrap().unwrap();
    assert_eq!(
        (g.user_id.as_str(), g.name.as_str()),
        ("@guest_1:hs", "Ann")
    );
    assert!(store.guest_by_token_hash("th9").await.unwrap().is_none());
    assert_eq!(
        store
            .guest_room_state("@guest_1:hs", "!a:hs")
            .await
            .unwrap(),
        None
    );
    store
        .set_guest_room_state("@guest_1:hs", "!a:hs", false)
        .await
        .unwrap();
    assert_eq!(
        store
            .guest_room_state("@guest_1:hs", "!a:hs")
            .await
            .unwrap(),
        Some(false)
    );
    store
        .set_guest_room_state("@guest_1:hs", "!a:hs", true)
        .await
        .unwrap();
    assert_eq!(
        store
            .guest_room_state("@guest_1:hs", "!a:hs")
            .await
            .unwrap(),
        Some(true)
    );
    // Pruning forgets old guests that never joined a room, and only them.
    store
        .create_guest("th2", "@guest_2:hs", "Cy")
        .await
        .unwrap();
    assert_eq!(store.prune_idle_guests(7).await.unwrap(), 0);
    assert_eq!(store.prune_idle_guests(-1).await.unwrap(), 1);
    assert!(store.guest_by_token_hash("th2").await.unwrap().is_none());
    assert!(store.guest_by_token_hash("th1").await.unwrap().is_some());

    // --- outbox --------------------------------------------------------------------------
    let item = |kind, payload: &str, txn: &str| NewOutbox {
        kind,
        room_id: "!a:hs",
        stream: "demo",
        session: "s1",
        payload: payload.to_string(),
        txn_id: txn.to_string(),
    };
    let ids = store
        .enqueue_outbox(&[
            item("notice", "{\"a\":1}", "txn-1"),
            item("state", "{}", "txn-2"),
        ])
        .await
        .unwrap();
    let [n1, n2] = ids[..] else {
        panic!("two ids for two items: {ids:?}")
    };
    assert!(n2 > n1, "outbox ids increase: {n1} then {n2}");
    store.outbox_attempted(n1).await.unwrap();
    store.outbox_attempted(n1).await.unwrap();
    let pending = store.pending_outbox().await.unwrap();
    assert_eq!(pending.len(), 2);
    assert_eq!(pending[0].id, n1);
    assert_eq!(pending[0].attempts, 2);
    assert_eq!(pending[0].payload, "{\"a\":1}");
    assert_eq!(pending[1].txn_id, "txn-2");
    store.outbox_done(n1, Some("$notice")).await.unwrap();
    store.outbox_done(n2, None).await.unwrap();
    assert!(store.pending_outbox().await.unwrap().is_empty());
    assert_eq!(
        store
            .outbox_event("demo", "s1", "notice")
            .await
            .unwrap()
            .as_deref(),
        Some("$notice")
    );
    assert_eq!(
        store.outbox_event("demo", "s1", "state").await.unwrap(),
        None
    );
    assert_eq!(
        store.outbox_event("demo", "s2", "notice").await.unwrap(),
        None
    );

    // --- settings ------------------------------------------------------------------------
    assert_eq!(store.setting("secret").await.unwrap(), None);
    assert_eq!(
        store.setting_or_insert("secret", "one").await.unwrap(),
        "one"
    );
    assert_eq!(
        store.setting_or_insert("secret", "two").await.unwrap(),
        "one"
    );
    assert_eq!(
        store.setting("secret").await.unwrap().as_deref(),
        Some("one")
    );
    // --- recordings (migration 0008) ------------------------------------------------
    let mut rec = roomcast::store::recordings::RecordingRow {
        id: "0123456789abcdef0123456789abcdef".into(),
        stream: "demo".into(),
        session: "1800000000000".into(),
        node: String::new(),
        started_ms: 1_800_000_000_000,
        ended_ms: None,
        duration_ms: 0,
        bytes: 0,
        video_codec: None,
        audio_codec: None,
        peak_viewers: 0,
        title_start: "Demo title".into(),
        title_end: "Demo title".into(),
        room_id: None,
        state: "recording".into(),
        private: true,
    };
    store.insert_recording(&rec).await.unwrap();
    let mut older = rec.clone();
    older.id = "fedcba9876543210fedcba9876543210".into();
    older.started_ms -= 60_000;
    older.state = "complete".into();
    store.insert_recording(&older).await.unwrap();
    rec.ended_ms = Some(1_800_000_020_000);
    rec.duration_ms = 20_001;
    rec.bytes = 12_000_000_000; // over 2^32: BIGINT
    rec.video_codec = Some("avc1.64001f".into());
    rec.audio_codec = Some("opus".into());
    rec.peak_viewers = 7;
    rec.title_end = "Renamed".into();
    rec.room_id = Some("!a:hs".into());
    rec.state = "complete".into();
    store.update_recording(&rec).await.unwrap();
    assert_eq!(store.recording(&rec.id).await.unwrap().as_ref(), Some(&rec));
    assert_eq!(store.recording("nope").await.unwrap(), None);
    let listed = store.recordings_of("demo", 10).await.unwrap();
    assert_eq!(listed, vec![rec.clone(), older.clone()], "newest first");
    assert_eq!(store.recordings_of("demo", 1).await.unwrap().len(), 1);
    let all = store.all_recordings().await.unwrap();
    assert_eq!(all[0].id, older.id, "oldest first");
    assert!(store.delete_recording(&older.id).await.unwrap());
    assert!(!store.delete_recording(&older.id).await.unwrap());
    store
        .set_recording_choice("demo", false, "@alice:hs")
        .await
        .unwrap();
    store
        .set_recording_choice("cfg", true, "@bob:hs")
        .await
        .unwrap();
    store
        .set_recording_choice("demo", true, "@alice:hs")
        .await
        .unwrap();
    let mut choices = store.recording_choices().await.unwrap();
    choices.sort();
    assert_eq!(
        choices,
        vec![("cfg".to_string(), true), ("demo".to_string(), true)]
    );
}

/// What must survive closing and reopening the database.
async fn still_there(store: &Store) {
    let names: Vec<_> = store
        .streams()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["cam2", "cfg", "demo"]);
    assert_eq!(
        store
            .mapping("demo")
            .await
            .unwrap()
            .unwrap()
            .owner
            .as_deref(),
        Some("@alice:hs")
    );
    assert_eq!(
        store.setting("secret").await.unwrap().as_deref(),
        Some("one")
    );
    assert!(store.room("!a:hs").await.unwrap().unwrap().notify);
}

#[test]
fn sqlite_store_round_trip() {
    let dir = TempDir::new("roomcast-store");
    let url = format!("sqlite://{}/roomcast.db", dir.path().display());
    runtime().block_on(async {
        let store = Store::open(&url).await.expect("open a new SQLite file");
        assert_eq!(store.backend(), Backend::Sqlite);
        exercise(&store).await;
        drop(store);
        let again = Store::open(&url).await.expect("reopen");
        still_there(&again).await;
    });
}

#[test]
fn postgres_store_round_trip() {
    let pg = Postgres::start();
    let url = pg.create_database("store_rt");
    runtime().block_on(async {
        let store = Store::open(&url).await.expect("open PostgreSQL");
        assert_eq!(store.backend(), Backend::Postgres);
        exercise(&store).await;
        drop(store);
        // Migrations already applied are recognised, not re-run.
        let again = Store::open(&url).await.expect("reopen");
        still_there(&again).await;
    });
    assert_eq!(
        pg.psql("store_rt", "SELECT count(*) FROM _sqlx_migrations"),
        // Every migration of the tree, each applied once.
        std::fs::read_dir(manifest_dir().join("migrations/postgres"))
            .unwrap()
            .count()
            .to_string()
    );
}

#[test]
fn unreachable_or_wrong_databases_say_why() {
    let pg = Postgres::start();
    let good = pg.create_database("creds");
    runtime().block_on(async {
        // Wrong password: refused, and the message names the server but not the password.
        let bad = good.replace(pg.password(), "wrong-password");
        let e = Store::open(&bad)
            .await
            .err()
            .expect("a wrong password is refused")
            .to_string();
        assert!(e.contains("cannot open the database"), "{e}");
        assert!(e.contains(":***@127.0.0.1"), "{e}");
        assert!(
            !e.contains("wrong-password") && !e.contains(pg.password()),
            "{e}"
        );
        // Nothing listening: the real cause, not a pool timeout.
        let port = common::synapse::free_port();
        let e = Store::open(&format!("postgres://roomcast:pw@127.0.0.1:{port}/x"))
            .await
            .err()
            .expect("no server")
            .to_string();
        assert!(e.contains("cannot open the database"), "{e}");
        assert!(e.to_lowercase().contains("refused"), "{e}");
        // A database that does not exist.
        let e = Store::open(&pg.url("missing"))
            .await
            .err()
            .expect("no such database")
            .to_string();
        assert!(e.contains("missing"), "{e}");
        // An SQLite path in a directory that does not exist.
        let e = Store::open("sqlite:///nonexistent-dir-roomcast/x.db")
            .await
            .err()
            .expect("no such directory")
            .to_string();
        assert!(e.contains("cannot open the database"), "{e}");
    });
}
