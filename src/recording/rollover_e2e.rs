//! The recorder across a rollover (`recording.max_recording_hours`), driven
//! through a real hub and a real SQLite index: every frame the hub fans out
//! is in exactly one recording.

use super::*;
use crate::hub::{AudioInfo, IngestProtocol};

async fn wait_for<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An audio-only burst of 6 s of publisher time, pushed faster than the
/// recorder writes it: the rollover (at 2 s) comes while frames queue
/// behind the one it happens at. The hub caches no GOP without video, so
/// nothing can be recovered from a snapshot: the successor must get them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollover_loses_no_frame_and_doubles_none() {
    let root = std::env::temp_dir().join(format!(
        "roomcast-rollover-{}",
        hex::encode(rand::random::<[u8; 8]>())
    ));
    std::fs::create_dir_all(&root).unwrap();
    let store = Store::open(&format!("sqlite://{}", root.join("index.db").display()))
        .await
        .expect("open");
    let cfg = crate::config::Config {
        recording: RecordingConfig {
            enabled: true,
            dir: root.join("rec").display().to_string(),
            min_free_gb: 0.0,
            segment_secs: 1.0,
            continue_within_ms: Some(500),
            max_recording_hours: 2.0 / 3600.0,
            ..RecordingConfig::default()
        },
        ..Default::default()
    };
    let hub = Arc::new(Hub::new());
    let recorder = Recorder::new(&cfg, hub.clone(), store.clone());
    recorder.spawn();
    let stream = hub.ensure_stream("roll", None);
    let publisher = hub.publish(&stream, IngestProtocol::Whip);
    publisher
        .set_media(|m| {
            m.audio = Some(AudioInfo {
                codec: "opus",
                sample_rate: 48_000,
                channels: 2,
                source_codec: None,
            })
        })
        .unwrap();
    wait_for("the recording starts", async || {
        recorder.active.lock().contains_key("roll").then_some(())
    })
    .await;

    const FRAMES: i64 = 300; // 20 ms each
    for i in 0..FRAMES {
        // A 20 ms CELT frame's TOC byte, then a payload.
        let payload: Arc<[u8]> = Arc::from(&[0xfc, (i % 251) as u8, 0x55, 0xaa][..]);
        publisher.push_audio(i * 960, payload).unwrap();
    }
    drop(publisher);

    let rows = wait_for("every recording complete", async || {
        let rows = store.recordings_of("roll", 10).await.ok()?;
        let ended = recorder.active.lock().is_empty();
        (ended && rows.iter().all(|r| r.state == "complete")).then_some(rows)
    })
    .await;
    let mut rows = rows;
    rows.sort_by_key(|r| r.started_ms);
    let mut total_us = 0;
    let mut spans = Vec::new();
    for r in &rows {
        let index = read_index(&recorder.dir_of(&r.id))
            .await
            .unwrap()
            .expect("an index");
        let first = index.segments.first().expect("a segment");
        let us: u64 = index.segments.iter().map(|s| s.duration_us).sum();
        total_us += us;
        spans.push((first.pdt_ms, first.pdt_ms + us / 1000));
    }
    println!("recordings (first pdt, end pdt): {spans:?}");
    assert_eq!(rows.len(), 3, "6 s cut every 2 s");
    // Each begins where the one before ended.
    for w in spans.windows(2) {
        assert!(
            w[1].0.abs_diff(w[0].1) <= 1,
            "{} ms between recordings",
            w[1].0 as i64 - w[0].1 as i64
        );
    }
    // Together they hold every frame once.
    let pushed_us = FRAMES as u64 * 20_000;
    assert_eq!(total_us, pushed_us, "recorded µs of the pushed");
    recorder.stop(Duration::from_secs(5)).await;
    let _ = std::fs::remove_dir_all(&root);
}
