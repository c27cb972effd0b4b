//! Start-up: config → store → hub → listeners, and the banner with what to paste
//! into OBS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::auth::admission::Admission;
use crate::auth::gate::Gate;
use crate::auth::keys::{KeyRing, generate_key, hash_key_hex};
use crate::config::Config;
use crate::hub::Hub;
use crate::ingest::rtmp::RtmpIngest;
use crate::listener::{Limits, Shutdown};
use crate::rtc::Engine;
use crate::store::Store;
use crate::tls::CertStore;

pub use crate::http::App;

/// Estimated egress to viewers now: each stream's bitrate times its WebRTC
/// viewers, plus what LL-HLS sent over the last seconds.
fn egress_mbps(hub: &Hub, hls: &crate::egress::hls::Hls) -> f64 {
    let webrtc: f64 = hub
        .streams()
        .iter()
        .map(|s| s.bitrate_kbps() as f64 * s.viewers() as f64 / 1000.0)
        .sum();
    webrtc + hls.egress_mbps()
}

/// Name of the stream created when nothing else declares one.
const DEMO_STREAM: &str = "demo";

pub async fn serve(config: Config) -> anyhow::Result<()> {
    let shutdown = Shutdown::default();
    // From here on SIGTERM/SIGINT stop the server cleanly (a second one at once).
    watch_signals(shutdown.clone())?;
    let limits = Limits::from_config(&config.connections);
    let mut listeners: Vec<JoinHandle<()>> = Vec::new();
    let store = Store::open(&config.storage.database_url)
        .await
        .context("opening storage.database_url")?;

    // Streams from the config file are authoritative for their keys.
    for s in &config.streams {
        store
            .upsert_stream(&s.name, s.title.as_deref(), &hash_key_hex(&s.key), "config")
            .await?;
    }
    let mut new_demo_key = None;
    if config.streams.is_empty() && config.matrix.is_none() {
        let key = generate_key();
        if store
            .create_stream_if_absent(DEMO_STREAM, &hash_key_hex(&key), "demo")
            .await?
        {
            new_demo_key = Some(key);
        }
    }
    let hub = Arc::new(Hub::with_limits((&config.limits).into()));
    // Party shares' streams leave the registry once idle (hub/tenure.rs).
    hub.spawn_sweeper();
    let keys = Arc::new(KeyRing::default());
    for row in store.streams().await? {
        hub.ensure_stream(&row.name, row.title.as_deref());
        keys.set(&row.name, &row.key_hash);
    }

    let cluster = match &config.cluster {
        Some(c) => {
            let cluster = crate::cluster::Cluster::new(
                c,
                &config.storage.database_url,
                store.clone(),
                hub.clone(),
                keys.clone(),
                config.limits.max_viewers,
            );
            cluster.join().await.context("joining the cluster")?;
            Some(cluster)
        }
        None => None,
    };

    let (engine, rtc_bound) = Engine::start(&config.webrtc, limits, shutdown.clone()).await?;
    listeners.push(rtc_bound.tcp_task);
    log_listening("webrtc-udp", rtc_bound.udp);
    log_listening("webrtc-tcp", rtc_bound.tcp);

    let certs = match &config.tls {
        Some(t) => {
            let store = CertStore::open(t).context("loading [tls] cert and key")?;
            tokio::spawn(
                store
                    .clone()
                    .watch(Duration::from_secs(t.reload_interval_secs)),
            );
            Some(store)
        }
        None => None,
    };
    // Validation makes every tls_listen come with [tls].
    let acceptor = |alpn: &[&[u8]]| {
        certs
            .as_ref()
            .map(|c| c.acceptor(alpn))
            .context("a tls_listen needs [tls]")
    };

    let http = crate::listener::bind(config.http.listen)
        .await
        .with_context(|| format!("binding http.listen {}", config.http.listen))?;
    let http_addr = http.local_addr()?;
    log_listening("http", http_addr);
    let public_base = config.public_base(http_addr);

    let gate = Arc::new(Gate {
        keys: keys.clone(),
        policy: config.signed_policy.clone(),
        admission: config.admission.clone().map(Admission::new),
    });

    let mut sign_hosts = config
        .signed_policy
        .as_ref()
        .map(|p| p.hosts.clone())
        .unwrap_or_default();
    if let Some(host) = host_of(&public_base) {
        sign_hosts.push(host.to_string());
    }
    let ingest = Arc::new(RtmpIngest {
        hub: hub.clone(),
        keys: keys.clone(),
        gate: gate.clone(),
        sign_hosts,
        max_message_bytes: config.rtmp.max_message_bytes,
    });
    let rtmp_addr = if config.rtmp.enabled {
        let listener = crate::listener::bind(config.rtmp.listen)
            .await
            .with_context(|| format!("binding rtmp.listen {}", config.rtmp.listen))?;
        let addr = listener.local_addr()?;
        log_listening("rtmp", addr);
        listeners.push(tokio::spawn(ingest.clone().serve(
            listener,
            limits,
            shutdown.clone(),
        )));
        Some(addr)
    } else {
        None
    };
    if let Some(listen) = config.rtmp.tls_listen {
        let listener = crate::listener::bind(listen)
            .await
            .with_context(|| format!("binding rtmp.tls_listen {listen}"))?;
        log_listening("rtmps", listener.local_addr()?);
        listeners.push(tokio::spawn(ingest.clone().serve_tls(
            listener,
            acceptor(&[])?,
            limits,
            shutdown.clone(),
        )));
    }
    let rtmp_url = rtmp_addr.map(|a| {
        format!(
            "rtmp://{}:{}/{}",
            public_host(&public_base),
            a.port(),
            config.rtmp.app
        )
    });
    let matrix = match &config.matrix {
        Some(mc) => {
            let urls = crate::matrix::IngestUrls {
                rtmp: rtmp_url.clone(),
                public_base: public_base.clone(),
            };
            let m = crate::matrix::Matrix::new(
                mc,
                None,
                hub.clone(),
                keys.clone(),
                store.clone(),
                urls,
            )
            .await
            .context("matrix")?
            .with_node_name(
                config.cluster.as_ref().map(|c| c.node_id.as_str()),
                config.http.listen,
            );
            Some(Arc::new(m))
        }
        None => None,
    };

    {
        // A full disk or a database that is away is reported, not fatal.
        let store = store.clone();
        tokio::spawn(async move {
            loop {
                store.probe_health().await;
                tokio::time::sleep(crate::store::health::PROBE_INTERVAL).await;
            }
        });
    }
    let hls = crate::egress::hls::Hls::new(&config.hls, hub.clone());
    hls.spawn();
    let recorder = crate::recording::Recorder::new(&config, hub.clone(), store.clone());
    recorder.spawn();
    if let Some(m) = &matrix {
        m.set_recorder(recorder.clone());
    }
    if let Some(c) = &cluster {
        // LL-HLS requests keep an edge's pull as WebRTC viewers do.
        let hls = hls.clone();
        c.set_demand(Box::new(move |stream| hls.is_muxing(stream)));
    }
    if let (Some(c), Some(m)) = (&cluster, &matrix) {
        // Chat and room changes to and from the other nodes.
        m.join_bus(&c.bus);
    }
    if let Some(c) = &cluster {
        // Recording choices and deletions to and from the other nodes.
        recorder.join_bus(&c.bus);
    }
    let admission = {
        let (hub2, hls2) = (hub.clone(), hls.clone());
        let tokens = matrix
            .clone()
            .map(|m| m as Arc<dyn crate::admission::AccessTokens>);
        crate::admission::Admission::new(
            gate.clone(),
            hub.clone(),
            engine.clone(),
            tokens,
            config.limits.clone(),
            Box::new(move || egress_mbps(&hub2, &hls2)),
        )
    };
    admission.spawn_sweeper();
    if let (Some(c), Some(cc)) = (&cluster, &config.cluster) {
        let bus = c.bus.clone();
        admission.set_cluster_caps(crate::admission::cluster_caps::ClusterCaps {
            max_viewers: cc.max_viewers,
            max_viewers_per_stream: cc.max_viewers_per_stream,
            total: Arc::new(move || bus.cluster_total()),
        });
    }
    let bus = cluster.as_ref().map(|c| c.bus.clone());
    if let Some(m) = &matrix {
        // Leaving a stream's room ends what the member's token admitted, on
        // this node and (through the bus) on the others.
        let a = Arc::downgrade(&admission);
        let to_cluster = bus.clone();
        m.tokens
            .on_membership(Box::new(move |stream, user, joined| {
                if let Some(a) = a.upgrade() {
                    a.membership_changed(stream, user, joined);
                }
                if let Some(bus) = &to_cluster {
                    bus.send(crate::cluster::bus::BusMessage::Membership {
                        stream: stream.to_string(),
                        user: user.to_string(),
                        joined,
                    });
                }
            }));
    }
    if let Some(bus) = &bus {
        let a = Arc::downgrade(&admission);
        bus.on_membership(Box::new(move |stream, user, joined| {
            if let Some(a) = a.upgrade() {
                a.membership_changed(stream, user, joined);
            }
        }));
    }
    let thumbnails = crate::thumbnail::Thumbnails::new(config.thumbnails.clone(), hub.clone());
    thumbnails.spawn();
    if let Some(m) = &matrix {
        m.set_thumbnails(thumbnails.clone());
    }
    let restream = crate::restream::Restreamer::new(
        hub.clone(),
        config.restream.queue_bytes,
        config.restream.ca_file.clone(),
    );
    for s in &config.streams {
        restream.set_config_destinations(
            &s.name,
            s.restream.iter().map(|d| d.destination()).collect(),
        );
    }
    let secret = match config.restream.secret_bytes() {
        Some(bytes) => crate::restream::stored::SecretSource::Inline(bytes),
        None => {
            let f = (config.restream.secret_file.clone())
                .unwrap_or_else(|| std::path::PathBuf::from("restream.secret"));
            crate::restream::stored::SecretSource::File(match &config.dir {
                Some(d) if f.is_relative() => d.join(f),
                _ => f,
            })
        }
    };
    restream
        .load_stored(store.clone(), secret)
        .await
        .context("loading restream destinations")?;
    restream.spawn();
    if let Some(m) = &matrix {
        m.set_restreamer(restream.clone());
    }
    let parties = Arc::new(crate::party::Parties::new(&config.parties));
    admission.set_party_grants(parties.clone());
    let app = Arc::new(App {
        restream,
        parties,
        config,
        hub,
        engine: engine.clone(),
        keys,
        gate,
        store,
        public_base,
        admission,
        matrix,
        hls,
        resources: crate::http::webrtc::resources::Resources::new(engine.clone()),
        shutdown: shutdown.clone(),
        cluster,
        recorder,
        thumbnails,
        rtmp_url,
    });
    let cfg = &app.config;
    let http1: &[&[u8]] = &[b"http/1.1"];
    let http_timeouts = (
        Duration::from_secs(cfg.connections.http_header_timeout_secs),
        Duration::from_secs(cfg.connections.http_body_timeout_secs),
    );
    // A reverse proxy carries many clients on one address: only the global
    // cap applies to it. (Leaked once: the listeners live as long as the process.)
    let proxies: &'static [crate::auth::Cidr] =
        Box::leak(cfg.http.trusted_proxies.clone().into_boxed_slice());
    let http_limits = limits.with_exempt(proxies);
    let http_on = |listener, name, router, tls| {
        crate::http::serve::serve_http(
            listener,
            name,
            router,
            tls,
            http_limits,
            http_timeouts,
            shutdown.clone(),
        )
    };
    let mut ome_addr = None;
    if cfg.ome.enabled {
        let listener = bind(cfg.ome.listen, "ome.listen", "ome").await?;
        ome_addr = Some(listener.local_addr()?);
        let router = crate::http::ome::router(app.clone(), false);
        listeners.push(http_on(listener, "ome", router, None));
        if let Some(listen) = cfg.ome.tls_listen {
            let listener = bind(listen, "ome.tls_listen", "ome-tls").await?;
            let router = crate::http::ome::router(app.clone(), true);
            listeners.push(http_on(listener, "ome-tls", router, Some(acceptor(http1)?)));
        }
    }
    if let Some(listen) = cfg.http.tls_listen {
        let listener = bind(listen, "http.tls_listen", "https").await?;
        let router = crate::http::router(app.clone(), true);
        listeners.push(http_on(listener, "https", router, Some(acceptor(http1)?)));
    }
    crate::webhooks::spawn(&app.hub, &app.config.webhooks, &app.public_base);

    print_banner(&app, rtmp_addr, ome_addr, new_demo_key.as_deref()).await?;
    let router = crate::http::router(app.clone(), false);
    listeners.push(http_on(http, "http", router, None));
    if let Some(m) = &app.matrix {
        // Connects in the background: media is served even while the
        // homeserver is down.
        m.spawn();
    }
    info!("roomcast ready");
    shutdown.wait().await;
    let grace = Duration::from_secs(app.config.connections.shutdown_grace_secs);
    if tokio::time::timeout(STOP_BUDGET, stop(&app, listeners, grace))
        .await
        .is_err()
    {
        warn!("shutdown took too long; stopping anyway");
    }
    info!("roomcast stopped");
    Ok(())
}

/// Everything after the signal must fit in this (systemd and Docker kill at 10 s;
/// we promise 5).
const STOP_BUDGET: Duration = Duration::from_millis(4500);

/// After the signal: every listener has stopped accepting (they watch the
/// same [`Shutdown`]). End the sessions, let in-flight requests and the
/// Matrix outbox finish within the grace, then close the database.
async fn stop(app: &App, listeners: Vec<JoinHandle<()>>, grace: Duration) {
    app.restream.stop_all();
    // WebRTC sessions are disconnected by their shards (DTLS close_notify).
    let sessions = app.engine.close_all();
    info!(sessions, "shutting down: listeners closed, sessions ending");
    let drain_listeners = async {
        for l in listeners {
            let _ = l.await;
        }
    };
    // Notices already queued (stream ended…) get the grace to reach the homeserver;
    // what is left stays in the outbox for the next start.
    let drain_outbox = async {
        if app.matrix.is_none() {
            return;
        }
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline {
            match app.store.pending_outbox().await {
                Ok(p) if p.is_empty() => return,
                Err(_) => return,
                Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        warn!("matrix: notices still queued at shutdown; sent after the next start");
    };
    let sessions_gone = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while app.engine.session_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let leave_cluster = async {
        if let Some(c) = &app.cluster {
            c.leave().await;
        }
    };
    let end_recordings = app.recorder.stop(grace);
    tokio::join!(
        drain_listeners,
        drain_outbox,
        sessions_gone,
        leave_cluster,
        end_recordings
    );
    if let Some(m) = &app.matrix {
        m.release_claims().await;
    }
    app.store.close().await;
}

async fn bind(
    addr: SocketAddr,
    key: &'static str,
    service: &'static str,
) -> anyhow::Result<tokio::net::TcpListener> {
    let listener = crate::listener::bind(addr)
        .await
        .with_context(|| format!("binding {key} {addr}"))?;
    log_listening(service, listener.local_addr()?);
    Ok(listener)
}

/// SIGTERM or SIGINT: stop cleanly; a second one: exit at once.
fn watch_signals(shutdown: Shutdown) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            if first {
                info!(
                    signal = name,
                    "shutting down (a second signal stops at once)"
                );
                shutdown.trigger();
                first = false;
            } else {
                warn!(signal = name, "second signal: exiting now");
                std::process::exit(130);
            }
        }
    });
    Ok(())
}

fn log_listening(service: &'static str, addr: SocketAddr) {
    info!(service, %addr, "listening");
}

/// The host of a base URL (`https://live.example.org:8443` → `live.example.org`).
fn host_of(base: &str) -> Option<&str> {
    base.split("://")
        .nth(1)
        .and_then(|h| h.split(['/', ':']).next())
        .filter(|h| !h.is_empty())
}

/// The host part of the public base URL (for the RTMP URL).
fn public_host(base: &str) -> &str {
    host_of(base).unwrap_or("127.0.0.1")
}

/// Prints, for each stream, exactly what goes into OBS and where to watch.
async fn print_banner(
    app: &App,
    rtmp: Option<SocketAddr>,
    ome: Option<SocketAddr>,
    new_demo_key: Option<&str>,
) -> anyhow::Result<()> {
    let base = &app.public_base;
    let host = public_host(base);
    let mut out = String::from("\n");
    for row in app.store.streams().await? {
        out.push_str(&format!("stream '{}'\n", row.name));
        if let Some(addr) = rtmp {
            out.push_str(&format!(
                "  OBS → Settings → Stream → Service: Custom…\n    Server:     rtmp://{host}:{}/{}\n",
                addr.port(),
                app.config.rtmp.app
            ));
        }
        let key_line = if row.origin == "config" {
            "(the key set for it in the config file)".to_string()
        } else if row.name == DEMO_STREAM
            && let Some(k) = new_demo_key
        {
            format!("{k}   ← shown once; only its hash is stored")
        } else {
            "(shown when it was created; only its hash is stored)".to_string()
        };
        out.push_str(&format!("    Stream Key: {key_line}\n"));
        out.push_str(
            "    Output: keyframe interval 1 s, x264 option bframes=0, CBR, tune zerolatency\n",
        );
        out.push_str(&format!(
            "  OBS → Service: WHIP: Server {base}/whip/{}, Bearer Token = the stream key\n",
            row.name
        ));
        out.push_str(&format!("  WHEP:  {base}/whep/{}\n", row.name));
        if app.config.hls.enabled {
            out.push_str(&format!("  LL-HLS: {base}/hls/{}/index.m3u8\n", row.name));
        }
        if let Some(addr) = ome {
            out.push_str(&format!(
                "  OvenPlayer: ws://{host}:{}/{}/{}\n",
                addr.port(),
                app.config.rtmp.app,
                row.name
            ));
        }
        out.push_str(&format!("  Watch: {base}/watch/{}\n", row.name));
    }
    println!("{out}");
    Ok(())
}
