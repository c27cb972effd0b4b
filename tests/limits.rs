//! Egress caps and `roomcast plan` (behaviour, not timing).

mod common;

use std::time::{Duration, Instant};

use common::{FfmpegOpts, Publisher, STREAM, Server, ServerOpts};
use serde_json::Value;
use str0m::Rtc;
use str0m::media::{Direction, MediaKind};

/// A real WebRTC offer (recvonly video + audio) from str0m, as a viewer sends it.
fn viewer_offer() -> String {
    let mut rtc = Rtc::builder().build(Instant::now());
    let addr = "127.0.0.1:9".parse().unwrap();
    rtc.add_local_candidate(str0m::Candidate::host(addr, "udp").unwrap());
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    let (offer, _pending) = api.apply().unwrap();
    offer.to_sdp_string()
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

#[test]
fn viewer_caps_answer_503_with_retry_after() {
    let _serial = common::serial();
    let server = Server::start_with(ServerOpts {
        extra_toml: "[limits]\nmax_viewers_per_stream = 2\nmax_viewers = 3\n".into(),
        ..ServerOpts::default()
    });
    let _p1 = Publisher::ffmpeg(&server.rtmp_url(server.key(STREAM)), FfmpegOpts::default());
    let _p2 = Publisher::ffmpeg(
        &server.rtmp_url(server.key(common::STREAM2)),
        FfmpegOpts::default(),
    );
    server.wait_live(STREAM, Duration::from_secs(30));
    server.wait_live(common::STREAM2, Duration::from_secs(30));

    let whep =
        |stream: &str| server.post_sdp(&format!("/whep/{stream}"), viewer_offer().as_bytes());
    let first = whep(STREAM);
    assert_eq!(first.status, 201);
    assert_eq!(whep(STREAM).status, 201);
    // The third viewer of one stream is over max_viewers_per_stream.
    let r = whep(STREAM);
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("retry-after"), Some("30"));
    let e = json(&r.body);
    assert_eq!(e["code"], "viewer_limit");
    assert!(
        e["error"].as_str().unwrap().contains("limit of 2 viewers"),
        "{e}"
    );
    // Another stream still has room under the per-stream cap, until the total cap.
    assert_eq!(whep(common::STREAM2).status, 201);
    let r = whep(common::STREAM2);
    assert_eq!(r.status, 503);
    assert!(
        json(&r.body)["error"]
            .as_str()
            .unwrap()
            .contains("limit of 3 viewers")
    );
    // Ending a session frees its place.
    let location = first.header("location").unwrap().to_string();
    let r = common::http::request("DELETE", &server.url(&location), &[], None).unwrap();
    assert_eq!(r.status, 200);
    common::wait_until("the freed place", Duration::from_secs(10), || {
        (whep(STREAM).status == 201).then_some(())
    });
}

/// WebRTC offers and blocking LL-HLS reloads are limited per client
/// address: 429 with Retry-After, while another address is still served.
#[test]
fn offers_and_blocking_reloads_are_rate_limited_per_address() {
    let _serial = common::serial();
    let mut server = Server::start_with(ServerOpts {
        extra_toml:
            "[limits]\noffers_per_minute = 6\noffers_burst = 3\nhls_max_blocking_per_address = 2\n"
                .into(),
        ..ServerOpts::default()
    });
    let _p = Publisher::ffmpeg(&server.rtmp_url(server.key(STREAM)), FfmpegOpts::default());
    server.wait_live(STREAM, Duration::from_secs(30));
    // 127.0.0.1 is a trusted proxy by default: X-Forwarded-For names the client.
    let offer = |client: &str| {
        common::http::request(
            "POST",
            &server.url(&format!("/whep/{STREAM}")),
            &[
                ("Content-Type", "application/sdp"),
                ("X-Forwarded-For", client),
            ],
            Some(viewer_offer().as_bytes()),
        )
        .unwrap()
    };
    for i in 0..3 {
        let r = offer("198.51.100.1");
        assert_eq!(
            r.status,
            201,
            "offer {i}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    let r = offer("198.51.100.1");
    assert_eq!(r.status, 429, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(json(&r.body)["code"], "rate_limited");
    assert!(r.header("retry-after").is_some(), "429 without Retry-After");
    // An IPv6 client is limited per /64: another address of it is no new client.
    for i in 0..3 {
        let r = offer(&format!("2001:db8:7:7::{i}"));
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(offer("2001:db8:7:7::99").status, 429);
    assert_eq!(offer("198.51.100.2").status, 201, "another client");

    // Blocking reloads of the next segment wait; of three at once from one
    // client, one is over its cap of two.
    let playlist = || {
        common::wait_until("an HLS playlist", Duration::from_secs(60), || {
            let r = server.get(&format!("/hls/{STREAM}/index.m3u8"));
            (r.status == 200).then(|| String::from_utf8_lossy(&r.body).to_string())
        })
    };
    let next_msn = |text: &str| {
        let first: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("EXT-X-MEDIA-SEQUENCE");
        first + text.lines().filter(|l| l.starts_with("#EXTINF")).count() as u64 + 1
    };
    let (statuses, refused) = common::wait_until(
        "a blocking reload over the per-address cap to be refused",
        Duration::from_secs(60),
        || {
            let url = server.url(&format!(
                "/hls/{STREAM}/index.m3u8?_HLS_msn={}",
                next_msn(&playlist())
            ));
            let threads: Vec<_> = (0..3)
                .map(|_| {
                    let url = url.clone();
                    std::thread::spawn(move || {
                        common::http::request(
                            "GET",
                            &url,
                            &[("X-Forwarded-For", "198.51.100.9")],
                            None,
                        )
                        .unwrap()
                    })
                })
                .collect();
            let rs: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            let statuses: Vec<u16> = rs.iter().map(|r| r.status).collect();
            let refused = rs.into_iter().find(|r| r.status == 429)?;
            Some((statuses, refused))
        },
    );
    println!("three blocking reloads at once: {statuses:?}");
    assert_eq!(json(&refused.body)["code"], "rate_limited");
    assert!(statuses.contains(&200), "{statuses:?}");
    let msn = next_msn(&playlist()) - 1;
    // The largest _HLS_part is a clear refusal, not an overflow.
    let r = server.get(&format!(
        "/hls/{STREAM}/index.m3u8?_HLS_msn={msn}&_HLS_part=18446744073709551615"
    ));
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    server.assert_healthy("after the rate limits");
}

#[test]
fn egress_cap_counts_the_streams_bitrate() {
    let _serial = common::serial();
    let server = Server::start_with(ServerOpts {
        // Far below one 720p stream's bitrate: not even the first viewer fits.
        extra_toml: "[limits]\nmax_egress_mbps = 0.5\n".into(),
        ..ServerOpts::default()
    });
    let _p = Publisher::ffmpeg(&server.rtmp_url(server.key(STREAM)), FfmpegOpts::default());
    server.wait_live(STREAM, Duration::from_secs(30));
    common::wait_until("a measured bitrate", Duration::from_secs(20), || {
        server.api_stream(STREAM)?["video"]["bitrate_kbps"]
            .as_u64()
            .filter(|k| *k > 500)
    });
    let r = server.post_sdp(&format!("/whep/{STREAM}"), viewer_offer().as_bytes());
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    let e = json(&r.body);
    assert!(
        e["error"].as_str().unwrap().contains("cap of 0.5 Mbit/s"),
        "{e}"
    );
    // A new LL-HLS player is refused the same way (its first playlist request).
    let r = server.get(&format!("/hls/{STREAM}/index.m3u8"));
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("retry-after"), Some("30"));
    let e = json(&r.body);
    assert_eq!(e["code"], "viewer_limit", "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("cap of 0.5 Mbit/s"),
        "{e}"
    );
}

/// What LL-HLS sends counts toward `max_egress_mbps`: once HLS clients pull
/// more than the cap leaves for one more viewer, a WebRTC viewer is refused
/// although there are no WebRTC viewers at all.
#[test]
fn egress_cap_counts_hls() {
    let _serial = common::serial();
    let server = Server::start_with(ServerOpts {
        // Offers are polled below: no offer rate limit here.
        extra_toml: "[limits]\nmax_egress_mbps = 40\noffers_per_minute = 0\n".into(),
        ..ServerOpts::default()
    });
    let _p = Publisher::ffmpeg(&server.rtmp_url(server.key(STREAM)), FfmpegOpts::default());
    server.wait_live(STREAM, Duration::from_secs(30));
    let playlist = common::wait_until("an HLS segment", Duration::from_secs(60), || {
        let r = server.get(&format!("/hls/{STREAM}/index.m3u8"));
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let text = String::from_utf8_lossy(&r.body).to_string();
        text.lines()
            .any(|l| !l.is_empty() && !l.starts_with('#'))
            .then_some(text)
    });
    let segments: Vec<String> = playlist
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| format!("/hls/{STREAM}/{}", l.split('?').next().unwrap()))
        .collect();
    let whep = || server.post_sdp(&format!("/whep/{STREAM}"), viewer_offer().as_bytes());
    let r = whep();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let location = r.header("location").unwrap().to_string();
    let r = common::http::request("DELETE", &server.url(&location), &[], None).unwrap();
    assert_eq!(r.status, 200);
    // Many HLS players at once: the same segments over and over, as fast as loopback goes.
    let refused = common::wait_until(
        "HLS egress to fill the cap",
        Duration::from_secs(60),
        || {
            for _ in 0..10 {
                for seg in &segments {
                    assert_eq!(server.get(seg).status, 200, "{seg}");
                }
            }
            let r = whep();
            if r.status == 201 {
                let location = r.header("location").unwrap().to_string();
                common::http::request("DELETE", &server.url(&location), &[], None).unwrap();
                return None;
            }
            Some(r)
        },
    );
    assert_eq!(
        refused.status,
        503,
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    let e = json(&refused.body);
    assert_eq!(e["code"], "viewer_limit", "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("cap of 40 Mbit/s"),
        "{e}"
    );
}

#[test]
fn plan_prints_the_guides_example_and_checks_caps() {
    let out = common::roomcast_cmd()
        .args([
            "plan",
            "--video-kbps",
            "2000",
            "--audio-kbps",
            "256",
            "--mode",
            "solo",
            "--viewers",
            "5",
            "--hours-per-day",
            "4",
            "--days-per-month",
            "20",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("out: 11.28 Mbit/s"), "{text}");
    assert!(text.contains("406 GB out"), "{text}");

    // An 8-person call against a 100 Mbit/s cap does not fit: exit status 3.
    let dir = common::TempDir::new("plan");
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[limits]\nmax_egress_mbps = 100\n").unwrap();
    let out = common::roomcast_cmd()
        .args([
            "plan",
            "--mode",
            "call",
            "--users",
            "8",
            "--video-kbps",
            "2000",
            "--audio-kbps",
            "256",
            "--config",
        ])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(text.contains("8 stream(s) in, 64 out"), "{text}");
    assert!(
        text.contains("does not fit: 144.38 Mbit/s out is over limits.max_egress_mbps = 100"),
        "{text}"
    );
}

#[test]
fn plan_sizes_a_cluster_from_nic_cores_and_per_node_caps() {
    let plan = |extra: &[&str], config: Option<&std::path::Path>| {
        let mut cmd = common::roomcast_cmd();
        cmd.args([
            "plan",
            "--video-kbps",
            "2000",
            "--audio-kbps",
            "256",
            "--viewers",
            "1000",
        ])
        .args(extra);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    // 1 Gbit/s, 2 cores: the NIC binds at 354 viewers; three nodes, two relays.
    let (code, text) = plan(&["--nic-mbps", "1000", "--cores", "2"], None);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("cluster of nodes with 1000 Mbit/s, 2 core(s): 3 node(s)"),
        "{text}"
    );
    assert!(
        text.contains("354 viewer session(s), bound by the NIC"),
        "{text}"
    );
    assert!(text.contains("2 session(s) in all"), "{text}");
    // 10 Gbit/s: the CPU binds.
    let (_, text) = plan(&["--nic-mbps", "10000", "--cores", "2"], None);
    assert!(text.contains("bound by the CPU"), "{text}");
    // Caps are per node: max_viewers = 200 makes it six.
    let dir = common::TempDir::new("plan-cluster");
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[limits]\nmax_viewers = 200\n").unwrap();
    let (code, text) = plan(&["--nic-mbps", "1000"], Some(&cfg));
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains(": 6 node(s)"), "{text}");
    assert!(text.contains("bound by [limits]"), "{text}");
    // Nonsense sizes are refused.
    let (code, _) = plan(&["--cores", "0"], None);
    assert_eq!(code, Some(2));
}
