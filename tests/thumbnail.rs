//! Stream thumbnails (issue 15 item 5) against the real binary: an ffmpeg
//! RTMP publisher's keyframes become a small JPEG served by
//! `GET /api/v1/streams/{name}/thumbnail.jpg` (decoded here by ffmpeg: the
//! stream's picture, not a blank frame), renewed every interval; the watch
//! page's Open Graph tags point at it; the index page's cards show it in
//! Chromium; WHIP H.264 and VP8 streams get one too, a VP9 stream a clear
//! "no thumbnail" answer. Made on demand: a stream nobody asks about is not
//! decoded, and the first GET waits for its first picture.

mod common;

use std::time::Duration;

use common::images::decode_jpeg;
use common::publishers::{WhipOpts, aiortc_publisher, chromium_publisher};
use common::*;

const THUMBS: &str = "[thumbnails]\ninterval_secs = 1\n";

fn thumbnail(server: &Server, stream: &str) -> HttpResponse {
    server.get(&format!("/api/v1/streams/{stream}/thumbnail.jpg"))
}

fn small() -> FfmpegOpts {
    FfmpegOpts {
        width: 640,
        height: 360,
        fps: 15,
        gop: 15,
        ..FfmpegOpts::default()
    }
}

fn metric(server: &Server, name: &str) -> f64 {
    let text = server.get("/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

#[test]
fn an_h264_stream_gets_a_jpeg_thumbnail_and_a_link_preview() {
    let _serial = serial();
    let server = Server::start_with(ServerOpts {
        extra_toml: THUMBS.to_string(),
        ..ServerOpts::default()
    });
    let r = thumbnail(&server, STREAM);
    assert_eq!(r.status, 404, "offline: {}", r.text());
    assert!(r.text().contains("offline"), "{}", r.text());
    let page = server.get(&format!("/watch/{STREAM}")).text();
    assert!(
        !page.contains("og:image"),
        "an offline stream has no picture"
    );

    let _ffmpeg = Publisher::ffmpeg(&server.publish_url(STREAM), small());
    server.wait_live(STREAM, LIVE_TIMEOUT);
    let first = wait_until("the first thumbnail", Duration::from_secs(20), || {
        let r = thumbnail(&server, STREAM);
        (r.status == 200).then_some(r)
    });
    assert_eq!(first.header("content-type"), Some("image/jpeg"));
    let pic = decode_jpeg(&first.body);
    println!("thumbnail: {} bytes, {pic:?}", first.body.len());
    assert_eq!(
        (pic.width, pic.height),
        (320, 180),
        "scaled to thumbnails.width"
    );
    assert!(pic.luma_stddev > 10.0, "a blank picture: {pic:?}");
    assert!(first.body.len() < 64 * 1024);

    // Renewed from newer keyframes (one a second here), decoded once per
    // interval whoever asks: many requests do not make more decodes.
    let etag = first.header("etag").expect("etag").to_string();
    let made_before = metric(&server, "roomcast_thumbnails_made_total");
    for _ in 0..50 {
        assert_eq!(thumbnail(&server, STREAM).status, 200);
    }
    wait_until("a newer thumbnail", Duration::from_secs(20), || {
        let r = thumbnail(&server, STREAM);
        (r.header("etag") != Some(etag.as_str())).then_some(())
    });
    let made = metric(&server, "roomcast_thumbnails_made_total");
    assert!(made > made_before, "{made} thumbnails made");
    let api = server.api_stream(STREAM).expect("stream");
    assert_eq!(
        api["thumbnail"],
        format!("/api/v1/streams/{STREAM}/thumbnail.jpg")
    );
    let cpu = metric(&server, "roomcast_thumbnail_cpu_seconds_total");
    println!(
        "thumbnails made: {made}, CPU {:.1} ms each",
        cpu * 1000.0 / made
    );

    // Open Graph: a link pasted in a chat shows the title and the picture.
    let page = server.get(&format!("/watch/{STREAM}")).text();
    let image = format!(
        "{}/api/v1/streams/{STREAM}/thumbnail.jpg",
        "http://127.0.0.1:8080"
    );
    assert!(
        page.contains(&format!("<meta property=\"og:image\" content=\"{image}\">")),
        "{page}"
    );
    assert!(
        page.contains("<meta property=\"og:title\" content=\""),
        "{page}"
    );
    assert!(page.contains("og:description"), "{page}");
}

/// Thumbnails are made on demand: a live stream nobody asks about is never
/// decoded; the first GET waits for the first picture and answers it.
#[test]
fn a_stream_nobody_asks_about_is_not_decoded_until_the_first_get() {
    let _serial = serial();
    let server = Server::start_with(ServerOpts {
        extra_toml: THUMBS.to_string(),
        ..ServerOpts::default()
    });
    let _ffmpeg = Publisher::ffmpeg(&server.publish_url(STREAM), small());
    server.wait_live(STREAM, LIVE_TIMEOUT);
    // Live for several intervals (1 s here) with a keyframe every second:
    // before, each of those rounds decoded one.
    let live = std::time::Instant::now();
    let api = wait_until("4 s live with keyframes", Duration::from_secs(20), || {
        let v = server.api_stream(STREAM)?;
        (live.elapsed() >= Duration::from_secs(4)
            && v["video"]["keyframe_interval_ms"]
                .as_u64()
                .is_some_and(|ms| ms <= 1500))
        .then_some(v)
    });
    // The JSON names the path (a card asks for it), listing is no ask.
    assert_eq!(
        api["thumbnail"],
        format!("/api/v1/streams/{STREAM}/thumbnail.jpg")
    );
    assert_eq!(metric(&server, "roomcast_thumbnails_made_total"), 0.0);
    assert_eq!(metric(&server, "roomcast_thumbnail_cpu_seconds_total"), 0.0);
    assert_eq!(metric(&server, "roomcast_thumbnails_wanted"), 0.0);

    let asked = std::time::Instant::now();
    let r = thumbnail(&server, STREAM);
    let took = asked.elapsed();
    assert_eq!(r.status, 200, "the first GET: {}", r.text());
    assert_eq!(r.header("content-type"), Some("image/jpeg"));
    let pic = decode_jpeg(&r.body);
    assert_eq!((pic.width, pic.height), (320, 180));
    assert!(took < Duration::from_secs(3), "the first GET took {took:?}");
    println!("the first GET answered a thumbnail in {took:?}");
    assert_eq!(metric(&server, "roomcast_thumbnails_made_total"), 1.0);
    assert_eq!(metric(&server, "roomcast_thumbnails_wanted"), 1.0);
    assert_eq!(metric(&server, "roomcast_thumbnail_waits_total"), 1.0);
    assert_eq!(
        metric(&server, "roomcast_thumbnail_waits_unanswered_total"),
        0.0
    );
}

#[test]
fn the_index_cards_show_thumbnails_in_chromium() {
    let _serial = serial();
    let server = Server::start_with(ServerOpts {
        extra_toml: THUMBS.to_string(),
        ..ServerOpts::default()
    });
    let _a = Publisher::ffmpeg(&server.publish_url(STREAM), small());
    let _b = Publisher::ffmpeg(&server.publish_url(STREAM2), small());
    server.wait_live(STREAM, LIVE_TIMEOUT);
    server.wait_live(STREAM2, LIVE_TIMEOUT);
    // Nobody asked for these thumbnails yet: the cards' requests do (each
    // waits for its stream's first picture).
    for s in [STREAM, STREAM2] {
        wait_until("the thumbnail offered", Duration::from_secs(20), || {
            server.api_stream(s)?.get("thumbnail").map(|_| ())
        });
    }
    assert_eq!(metric(&server, "roomcast_thumbnails_made_total"), 0.0);
    let live = format!("{STREAM},{STREAM2}");
    let mut tool = pages_scenario(
        &server,
        "thumbnail",
        "index",
        &["--live", &live, "--thumbnails"],
    );
    let r = finish_scenario(&mut tool, "index cards", Duration::from_secs(120));
    let thumbs = r["thumbnails"].as_array().expect("thumbnails checked");
    assert_eq!(thumbs.len(), 2, "{r}");
    assert_eq!(metric(&server, "roomcast_thumbnails_wanted"), 2.0);
    for t in thumbs {
        assert_eq!(
            (t["width"].as_u64(), t["height"].as_u64()),
            (Some(320), Some(180)),
            "{t}"
        );
    }
}

#[test]
fn whip_h264_and_vp8_get_thumbnails_vp9_says_why_not() {
    let _serial = serial();
    let server = Server::start_with(ServerOpts {
        extra_toml: THUMBS.to_string(),
        ..ServerOpts::default()
    });
    // aiortc over WHIP: VP8 (image-webp's decoder) on t1, H.264 (OpenH264;
    // parameter sets in-band or put in front of each keyframe by ingest) on t2.
    let mut publishers = Vec::new();
    for (stream, codec) in [(STREAM, "VP8"), (STREAM2, "H264")] {
        publishers.push(aiortc_publisher(
            &server.whip_url(stream),
            WhipOpts {
                codec,
                key: Some(server.key(stream).to_string()),
                ..WhipOpts::default()
            },
        ));
        server.wait_live(stream, LIVE_TIMEOUT);
        let r = wait_until(
            &format!("the {codec} stream's thumbnail"),
            Duration::from_secs(30),
            || {
                let r = thumbnail(&server, stream);
                (r.status == 200).then_some(r)
            },
        );
        let pic = decode_jpeg(&r.body);
        println!(
            "{codec} over WHIP: thumbnail {} bytes, {pic:?}",
            r.body.len()
        );
        assert_eq!((pic.width, pic.height), (320, 180), "{codec}");
        assert!(pic.luma_stddev > 10.0, "{codec}: a blank picture: {pic:?}");
    }
    for mut p in publishers {
        p.stop(Duration::from_secs(10));
    }

    // VP9 (Chromium's fake camera over WHIP): no decoder here, and the API says so.
    wait_until("t1 offline", Duration::from_secs(20), || {
        (server.api_stream(STREAM)?["live"] == false).then_some(())
    });
    let base = server.base_url();
    let key = server.key(STREAM).to_string();
    let mut vp9 = chromium_publisher(&base, STREAM, Some(&key), Some("VP9"), None);
    wait_until("the VP9 stream", Duration::from_secs(60), || {
        let v = server.api_stream(STREAM)?;
        (v["live"] == true && v["video"]["codec"] == "VP9").then_some(())
    });
    let r = thumbnail(&server, STREAM);
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.text().contains("codec_unsupported"), "{}", r.text());
    assert!(r.text().contains("VP9"), "{}", r.text());
    vp9.stop(Duration::from_secs(10));
}
