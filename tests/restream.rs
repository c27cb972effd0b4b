//! Restreaming to two real RTMP servers on loopback standing in for the
//! platforms: Debian's nginx with its RTMP module (recording what it gets)
//! and ffmpeg in listen mode (writing what it gets to an FLV file).
//! ffmpeg publishes H.264 + AAC 44.1 kHz over RTMP; both destinations get
//! H.264 + AAC (ffprobe on their recordings, with the duration); nginx is
//! stopped and started again and the push reconnects and resumes; a
//! publisher takeover continues the pushes on their connections; a WHIP
//! VP8 publisher is refused per destination with the reason; a WHIP
//! H.264 and Opus publisher is restreamed with AAC audio (Opus→AAC); a
//! config stream's destinations cannot be changed through the API; the
//! destination keys appear in no log line and no API answer.

mod common;

use std::time::Duration;

use common::publishers::{WhipOpts, aiortc_publisher};
use common::restream::*;
use common::*;
use serde_json::Value;

const NGINX_KEY: &str = "nginx-dest-key-5f1c9a7e3b";
const LISTEN_KEY: &str = "listen-dest-key-9d2e4b6a8c";

fn status(server: &Server) -> Value {
    let r = server.get(&format!("/api/v1/streams/{STREAM}/restream"));
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    for key in [NGINX_KEY, LISTEN_KEY] {
        assert!(!text.contains(key), "a destination key in the API: {text}");
    }
    r.json().unwrap()
}

fn dest<'a>(status: &'a Value, label: &str) -> &'a Value {
    status["destinations"]
        .as_array()
        .and_then(|a| a.iter().find(|d| d["label"] == label))
        .unwrap_or_else(|| panic!("no destination {label} in {status}"))
}

fn wait_state(server: &Server, label: &str, state: &str, timeout: Duration) -> Value {
    wait_until(&format!("{label} {state}"), timeout, || {
        let s = status(server);
        (dest(&s, label)["state"] == state).then(|| dest(&s, label).clone())
    })
}

fn server_with_destinations(nginx: &str, listen: &str) -> Server {
    Server::start_with(ServerOpts {
        streams: vec![(STREAM.to_string(), random_hex())],
        extra_toml: format!(
            "[[streams.restream]]\nlabel = \"nginx\"\nurl = \"{nginx}\"\nkey = \"{NGINX_KEY}\"\n\
             [[streams.restream]]\nlabel = \"listen\"\nurl = \"{listen}\"\nkey = \"{LISTEN_KEY}\"\n"
        ),
        ..ServerOpts::default()
    })
}

fn assert_no_destination_key_logged(server: &Server) {
    for line in server.log_lines() {
        for key in [NGINX_KEY, LISTEN_KEY] {
            assert!(!line.contains(key), "a destination key in the log: {line}");
        }
    }
}

#[test]
fn rtmp_publish_is_pushed_to_nginx_and_ffmpeg_with_aac_and_survives_a_destination_restart() {
    let _g = serial();
    let mut nginx = NginxRtmp::start();
    let mut listen = FfmpegListen::start(LISTEN_KEY);
    let server = server_with_destinations(&nginx.url(), &listen.url());
    let s = status(&server);
    assert_eq!(dest(&s, "nginx")["state"], "idle", "{s}");
    assert_eq!(dest(&s, "nginx")["key"], "••••••••3b", "{s}");

    let mut publisher = Publisher::ffmpeg(
        &server.publish_url(STREAM),
        FfmpegOpts {
            sample_rate: 44_100,
            ..FfmpegOpts::small()
        },
    );
    server.wait_live(STREAM, Duration::from_secs(20));
    wait_state(&server, "nginx", "live", Duration::from_secs(20));
    wait_state(&server, "listen", "live", Duration::from_secs(20));

    // nginx stops and comes back: the push reconnects and resumes (a second
    // recording), and reports the outage in between.
    wait_until("nginx recording 3 s", Duration::from_secs(30), || {
        let r = nginx.recordings();
        (r.len() == 1 && probe(&r[0]).1 >= 4.0).then_some(())
    });
    nginx.stop();
    let d = wait_state(&server, "nginx", "reconnecting", Duration::from_secs(15));
    assert!(d["attempt"].as_u64().unwrap() >= 1, "{d}");
    assert!(d["error"].as_str().is_some(), "{d}");
    assert_eq!(
        dest(&status(&server), "listen")["state"],
        "live",
        "one destination's outage leaves the other alone"
    );
    nginx.run();
    wait_state(&server, "nginx", "live", Duration::from_secs(30));
    wait_until(
        "nginx's second recording 3 s",
        Duration::from_secs(30),
        || {
            let r = nginx.recordings();
            (r.len() == 2 && probe(&r[1]).1 >= 4.0).then_some(())
        },
    );
    // A config-file stream's destinations are the file's: the API refuses.
    let r = http::request(
        "DELETE",
        &server.url(&format!("/api/v1/streams/{STREAM}/restream/nginx")),
        &[(
            "Authorization",
            format!("Bearer {}", server.key(STREAM)).as_str(),
        )],
        None,
    )
    .unwrap();
    assert_eq!(r.status, 409, "{}", r.text());
    let metrics = server.get("/metrics").text();
    assert!(
        metrics.contains(&format!(
            "roomcast_restream_up{{stream=\"{STREAM}\",destination=\"nginx\",state=\"live\"}} 1"
        )),
        "{metrics}"
    );
    let s = status(&server);
    assert!(
        dest(&s, "listen")["bitrate_kbps"].as_u64().unwrap() > 50,
        "{s}"
    );

    // A second publisher takes the stream over: the pushes go on over the
    // same connections (no new push started), and bytes keep flowing.
    let starts = |server: &Server| {
        server
            .log_lines()
            .iter()
            .filter(|l| l.contains("restream push starting"))
            .count()
    };
    let starts_before = starts(&server);
    let sent = |server: &Server| {
        dest(&status(server), "listen")["bytes_sent"]
            .as_u64()
            .unwrap()
    };
    let sent_before = sent(&server);
    let mut takeover = Publisher::ffmpeg(
        &server.publish_url(STREAM),
        FfmpegOpts {
            sample_rate: 44_100,
            ..FfmpegOpts::small()
        },
    );
    server.wait_for_log(
        "new publisher takes the stream over",
        Duration::from_secs(20),
    );
    wait_until("bytes after the takeover", Duration::from_secs(20), || {
        (sent(&server) > sent_before + 200_000).then_some(())
    });
    assert_eq!(dest(&status(&server), "listen")["state"], "live");
    assert_eq!(starts(&server), starts_before, "the pushes continued");
    publisher.stop(Duration::from_secs(10));
    takeover.stop(Duration::from_secs(10));
    wait_state(&server, "nginx", "idle", Duration::from_secs(15));
    // The push ended: ffmpeg's input closed and it finishes its file.
    listen.wait_finished(Duration::from_secs(15));
    nginx.stop();

    for file in nginx.recordings().iter().chain([&listen.out]) {
        let v = assert_h264_aac(file, 3.0);
        let aac = v["streams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["codec_name"] == "aac")
            .unwrap();
        assert_eq!(aac["sample_rate"], "44100", "the publisher's own AAC: {v}");
    }
    let (_, listen_duration, _) = probe(&listen.out);
    assert!(
        listen_duration >= 8.0,
        "ffmpeg listen got {listen_duration} s"
    );
    assert_no_destination_key_logged(&server);
    server.assert_no_key_logged();
}

#[test]
fn whip_vp8_is_refused_per_destination_and_whip_h264_is_pushed() {
    let _g = serial();
    let nginx = NginxRtmp::start();
    let server = server_with_destinations(&nginx.url(), "rtmp://127.0.0.1:9/unused");

    let mut vp8 = aiortc_publisher(
        &server.whip_url(STREAM),
        WhipOpts {
            codec: "VP8",
            key: Some(server.key(STREAM).to_string()),
            ..WhipOpts::default()
        },
    );
    server.wait_live(STREAM, Duration::from_secs(30));
    let d = wait_state(&server, "nginx", "failed", Duration::from_secs(20));
    let reason = d["reason"].as_str().unwrap();
    assert!(
        reason.contains("nginx needs H.264") && reason.contains("VP8"),
        "{reason}"
    );
    let d = wait_state(&server, "listen", "failed", Duration::from_secs(20));
    assert!(
        d["reason"].as_str().unwrap().contains("listen needs H.264"),
        "{d}"
    );
    assert!(nginx.recordings().is_empty(), "nothing was sent to nginx");
    vp8.stop(Duration::from_secs(10));
    wait_state(&server, "nginx", "idle", Duration::from_secs(15));

    let mut h264 = aiortc_publisher(
        &server.whip_url(STREAM),
        WhipOpts {
            codec: "H264",
            key: Some(server.key(STREAM).to_string()),
            ..WhipOpts::default()
        },
    );
    wait_state(&server, "nginx", "live", Duration::from_secs(30));
    wait_until(
        "nginx recording 3 s of WHIP",
        Duration::from_secs(30),
        || {
            let r = nginx.recordings();
            (r.len() == 1 && probe(&r[0]).1 >= 4.0).then_some(())
        },
    );
    h264.stop(Duration::from_secs(10));
    wait_state(&server, "nginx", "idle", Duration::from_secs(15));
    // H.264 passed through and the Opus transcoded to AAC.
    assert_h264_aac(&nginx.recordings()[0], 3.0);
    let errors = audio_decode_errors(&nginx.recordings()[0]);
    assert!(
        errors.trim().is_empty(),
        "the AAC made from Opus decodes: {errors}"
    );
    assert_no_destination_key_logged(&server);
}

/// RTMPS through rustls: roomcast A pushes to roomcast B's RTMPS listener,
/// whose self-signed certificate A trusts through `restream.ca_file`; B's
/// stream goes live with A's H.264 and AAC (B transcodes it for its viewers).
/// Without the CA the push fails on the certificate and says so.
#[test]
fn rtmps_push_to_another_roomcast_verifies_its_certificate() {
    let _g = serial();
    let certs = TempDir::new("restream-certs");
    make_cert(certs.path(), "b");
    let crt = certs.path().join("b.crt");
    let b = Server::start_with(ServerOpts {
        rtmp_extra: "tls_listen = \"127.0.0.1:0\"".into(),
        extra_toml: format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            crt.display(),
            certs.path().join("b.key").display()
        ),
        ..ServerOpts::default()
    });
    let url = format!("rtmps://{}/live", b.service("rtmps"));
    let dest = |label: &str| {
        format!(
            "[[streams.restream]]\nlabel = \"{label}\"\nurl = \"{url}\"\nkey = \"{}\"\n",
            b.key(STREAM)
        )
    };
    let a = Server::start_with(ServerOpts {
        streams: vec![(STREAM.to_string(), random_hex())],
        extra_toml: format!("{}[restream]\nca_file = \"{}\"\n", dest("b"), crt.display()),
        ..ServerOpts::default()
    });
    let untrusting = Server::start_with(ServerOpts {
        streams: vec![(STREAM.to_string(), random_hex())],
        extra_toml: dest("b"),
        ..ServerOpts::default()
    });
    let mut publisher = Publisher::ffmpeg(&a.publish_url(STREAM), FfmpegOpts::small());
    let mut other = Publisher::ffmpeg(&untrusting.publish_url(STREAM), FfmpegOpts::small());
    let live = b.wait_live(STREAM, Duration::from_secs(30));
    wait_until(
        "B's stream with A's H.264 and AAC",
        Duration::from_secs(20),
        || {
            let s = b.api_stream(STREAM)?;
            (s["video"]["codec"] == "H264" && s["audio"]["transcoded"] == true).then_some(())
        },
    );
    assert_eq!(live["ingest"]["protocol"], "rtmps", "{live}");
    let d = wait_state(&untrusting, "b", "reconnecting", Duration::from_secs(20));
    let err = d["error"].as_str().unwrap();
    assert!(err.contains("TLS") && err.contains("certificate"), "{err}");
    publisher.stop(Duration::from_secs(10));
    other.stop(Duration::from_secs(10));
    for s in [&a, &untrusting] {
        for line in s.log_lines() {
            assert!(!line.contains(b.key(STREAM)), "B's key in a log: {line}");
        }
    }
}
