//! Cluster nodes for tests: real `roomcast` processes on distinct loopback
//! ports sharing one real PostgreSQL ([`super::postgres::Postgres`]), each
//! with a `[cluster]` section naming its own internal URL.

use std::time::Duration;

use serde_json::Value;

use super::synapse::free_port;
use super::{Server, ServerOpts, random_hex, wait_until};

/// Every node of a test cluster shares this and the stream keys.
pub struct ClusterSpec {
    pub database_url: String,
    pub secret: String,
    pub streams: Vec<(String, String)>,
    /// More config for every node (e.g. `[limits]`).
    pub extra_toml: String,
}

impl ClusterSpec {
    pub fn new(database_url: String) -> ClusterSpec {
        ClusterSpec {
            database_url,
            secret: format!("{}{}", random_hex(), random_hex()),
            streams: ServerOpts::default().streams,
            extra_toml: String::new(),
        }
    }

    /// Starts node `id` on a free port (its internal URL must be known
    /// before it starts, so the port is picked here).
    pub fn start_node(&self, id: &str) -> Server {
        self.start_node_with(id, "")
    }

    /// Like [`ClusterSpec::start_node`], with more `[cluster]` lines.
    pub fn start_node_with(&self, id: &str, cluster_lines: &str) -> Server {
        let listen = format!("127.0.0.1:{}", free_port());
        self.start_node_at(id, &listen, &format!("http://{listen}"), cluster_lines)
    }

    /// Node `id` listening on `listen` (host:port), the other nodes reaching
    /// it at `internal_url` (e.g. through a [`super::tap::Tap`]).
    pub fn start_node_at(
        &self,
        id: &str,
        listen: &str,
        internal_url: &str,
        cluster_lines: &str,
    ) -> Server {
        Server::start_with(ServerOpts {
            http_listen: Some(listen.to_string()),
            database_url: Some(self.database_url.clone()),
            streams: self.streams.clone(),
            extra_toml: format!(
                "{}\n{}{cluster_lines}\n",
                self.extra_toml,
                self.section_at(id, internal_url)
            ),
            ..ServerOpts::default()
        })
    }

    /// The `[cluster]` section of node `id` listening on `listen` (host:port).
    pub fn section(&self, id: &str, listen: &str) -> String {
        self.section_at(id, &format!("http://{listen}"))
    }

    fn section_at(&self, id: &str, internal_url: &str) -> String {
        format!(
            "[cluster]\nnode_id = \"{id}\"\ninternal_url = \"{internal_url}\"\nsecret = \"{}\"\n",
            self.secret
        )
    }
}

/// `GET /api/v1/cluster` of `node`.
pub fn cluster_view(node: &Server) -> Value {
    let r = node.get("/api/v1/cluster");
    assert_eq!(r.status, 200, "GET /api/v1/cluster: {}", r.text());
    r.json().expect("cluster JSON")
}

/// The ids of the nodes `node` sees alive.
pub fn alive_nodes(view: &Value) -> Vec<String> {
    let mut v: Vec<String> = view["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["alive"] == true)
        .filter_map(|n| n["node_id"].as_str().map(str::to_string))
        .collect();
    v.sort();
    v
}

/// Waits until `node` sees exactly `ids` alive.
pub fn wait_alive_nodes(node: &Server, ids: &[&str], timeout: Duration) -> Value {
    wait_until(&format!("nodes {ids:?} alive"), timeout, || {
        let view = cluster_view(node);
        (alive_nodes(&view) == ids).then_some(view)
    })
}

/// Waits until `node` sees `stream`'s origin on node `origin`.
pub fn wait_origin(node: &Server, stream: &str, origin: &str, timeout: Duration) -> Value {
    wait_until(&format!("{stream}'s origin on {origin}"), timeout, || {
        let view = cluster_view(node);
        view["streams"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["stream"] == stream && s["origin"] == origin)
            .then_some(view)
    })
}

/// The stream's viewer count in `node`'s API.
pub fn viewers(node: &Server, stream: &str) -> u64 {
    node.api_stream(stream)
        .and_then(|v| v["viewers"].as_u64())
        .unwrap_or(0)
}

/// The WebRTC sessions `node` itself serves for `stream`, other nodes'
/// pulls included (`roomcast_stream_viewers`); the API's `viewers` is the
/// cluster's sum.
pub fn sessions(node: &Server, stream: &str) -> u64 {
    let line = format!("roomcast_stream_viewers{{stream=\"{stream}\"}} ");
    node.get("/metrics")
        .text()
        .lines()
        .find_map(|l| l.strip_prefix(&line)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Watches `whep_url` with a str0m viewer for `watch` and returns when each
/// video RTP payload arrived, keyed by a hash of its bytes: the same payload
/// seen through two nodes gives the relay hop's delay (one process, one clock).
pub fn video_arrivals(
    whep_url: &str,
    watch: Duration,
) -> std::collections::HashMap<u64, std::time::Instant> {
    use std::collections::HashMap;
    use std::hash::{Hash, Hasher};
    use std::io::ErrorKind;
    use std::net::UdpSocket;
    use std::time::Instant;
    use str0m::media::{Direction, MediaKind};
    use str0m::net::{Protocol, Receive};
    use str0m::{Candidate, Event, Input, Output, Rtc};

    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
    let local = socket.local_addr().unwrap();
    let mut rtc = Rtc::builder()
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_h264(true)
        .enable_opus(true, false)
        .build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp").unwrap());
    let mut api = rtc.sdp_api();
    let video = api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    let (offer, pending) = api.apply().expect("an offer");
    let r = super::http::request(
        "POST",
        whep_url,
        &[("Content-Type", "application/sdp")],
        Some(offer.to_sdp_string().as_bytes()),
    )
    .unwrap_or_else(|e| panic!("POST {whep_url}: {e}"));
    assert_eq!(r.status, 201, "WHEP {whep_url}: {}", r.text());
    let answer = str0m::change::SdpAnswer::from_sdp_string(&r.text()).expect("answer parses");
    rtc.sdp_api()
        .accept_answer(pending, answer)
        .expect("str0m takes the answer");
    let mut seen = HashMap::new();
    let end = Instant::now() + watch;
    let mut buf = vec![0u8; 2000];
    while Instant::now() < end {
        let timeout = match rtc.poll_output() {
            Ok(Output::Timeout(t)) => t,
            Ok(Output::Transmit(t)) => {
                let _ = socket.send_to(&t.contents, t.destination);
                continue;
            }
            Ok(Output::Event(Event::RtpPacket(pkt))) => {
                let is_video = rtc
                    .media(video)
                    .is_some_and(|m| m.remote_pts().contains(&pkt.header.payload_type));
                if is_video {
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    pkt.payload.hash(&mut h);
                    seen.entry(h.finish()).or_insert(pkt.timestamp);
                }
                continue;
            }
            Ok(Output::Event(_)) => continue,
            Err(e) => panic!("str0m: {e}"),
        };
        let wait = timeout
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let _ = socket.set_read_timeout(Some(wait));
        let input = match socket.recv_from(&mut buf) {
            Ok((n, source)) => match Receive::new(Protocol::Udp, source, local, &buf[..n]) {
                Ok(r) => Input::Receive(Instant::now(), r),
                Err(_) => continue,
            },
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Input::Timeout(Instant::now())
            }
            Err(e) => panic!("socket: {e}"),
        };
        if rtc.handle_input(input).is_err() {
            break;
        }
    }
    let _ = super::http::request(
        "DELETE",
        &format!(
            "{}{}",
            whep_url.split("/whep/").next().unwrap_or_default(),
            r.header("location").unwrap_or_default()
        ),
        &[],
        None,
    );
    seen
}
