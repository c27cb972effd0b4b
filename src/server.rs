//! Start-up: config → store → hub → listeners, and the banner with what to paste
//! into OBS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tracing::info;

use crate::auth::admission::Admission;
use crate::auth::gate::Gate;
use crate::auth::keys::{KeyRing, generate_key, hash_key_hex};
use crate::config::Config;
use crate::hub::Hub;
use crate::ingest::rtmp::RtmpIngest;
use crate::rtc::Engine;
use crate::store::Store;
use crate::tls::{CertStore, TlsListener};

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
    let hub = Arc::new(Hub::new());
    let keys = Arc::new(KeyRing::default());
    for row in store.streams().await? {
        hub.ensure_stream(&row.name, row.title.as_deref());
        keys.set(&row.name, &row.key_hash);
    }

    let (engine, rtc_bound) = Engine::start(&config.webrtc).await?;
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

    let http = tokio::net::TcpListener::bind(config.http.listen)
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
    });
    let rtmp_addr = if config.rtmp.enabled {
        let listener = tokio::net::TcpListener::bind(config.rtmp.listen)
            .await
            .with_context(|| format!("binding rtmp.listen {}", config.rtmp.listen))?;
        let addr = listener.local_addr()?;
        log_listening("rtmp", addr);
        tokio::spawn(ingest.clone().serve(listener));
        Some(addr)
    } else {
        None
    };
    if let Some(listen) = config.rtmp.tls_listen {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding rtmp.tls_listen {listen}"))?;
        log_listening("rtmps", listener.local_addr()?);
        tokio::spawn(ingest.clone().serve_tls(listener, acceptor(&[])?));
    }
    let matrix = match &config.matrix {
        Some(mc) => {
            let urls = crate::matrix::IngestUrls {
                rtmp: rtmp_addr.map(|a| {
                    format!(
                        "rtmp://{}:{}/{}",
                        public_host(&public_base),
                        a.port(),
                        config.rtmp.app
                    )
                }),
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
            .context("matrix")?;
            Some(Arc::new(m))
        }
        None => None,
    };

    let hls = crate::egress::hls::Hls::new(&config.hls, hub.clone());
    hls.spawn();
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
    if let Some(m) = &matrix {
        // Leaving a stream's room ends what the member's token admitted.
        let a = Arc::downgrade(&admission);
        m.tokens
            .on_membership(Box::new(move |stream, user, joined| {
                if let Some(a) = a.upgrade() {
                    a.membership_changed(stream, user, joined);
                }
            }));
    }
    let app = Arc::new(App {
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
    });
    let cfg = &app.config;
    let http1: &[&[u8]] = &[b"http/1.1"];
    let mut ome_addr = None;
    if cfg.ome.enabled {
        let listener = tokio::net::TcpListener::bind(cfg.ome.listen)
            .await
            .with_context(|| format!("binding ome.listen {}", cfg.ome.listen))?;
        let addr = listener.local_addr()?;
        log_listening("ome", addr);
        ome_addr = Some(addr);
        let router = crate::http::ome::router(app.clone(), false);
        tokio::spawn(async move {
            let svc = router.into_make_service_with_connect_info::<crate::http::PeerAddr>();
            if let Err(e) = axum::serve(listener, svc).await {
                tracing::error!(error = %e, "ome listener failed");
            }
        });
        if let Some(listen) = cfg.ome.tls_listen {
            let tcp = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding ome.tls_listen {listen}"))?;
            log_listening("ome-tls", tcp.local_addr()?);
            let listener = TlsListener::new(tcp, acceptor(http1)?)?;
            let router = crate::http::ome::router(app.clone(), true);
            tokio::spawn(async move {
                let svc = router.into_make_service_with_connect_info::<crate::http::PeerAddr>();
                if let Err(e) = axum::serve(listener, svc).await {
                    tracing::error!(error = %e, "ome tls listener failed");
                }
            });
        }
    }
    if let Some(listen) = cfg.http.tls_listen {
        let tcp = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding http.tls_listen {listen}"))?;
        log_listening("https", tcp.local_addr()?);
        let listener = TlsListener::new(tcp, acceptor(http1)?)?;
        let router = crate::http::router(app.clone(), true);
        tokio::spawn(async move {
            let svc = router.into_make_service_with_connect_info::<crate::http::PeerAddr>();
            if let Err(e) = axum::serve(listener, svc).await {
                tracing::error!(error = %e, "https listener failed");
            }
        });
    }
    crate::webhooks::spawn(&app.hub, &app.config.webhooks, &app.public_base);

    print_banner(&app, rtmp_addr, ome_addr, new_demo_key.as_deref()).await?;
    let router = crate::http::router(app.clone(), false);
    if let Some(m) = &app.matrix {
        // Connects in the background: media is served even while the
        // homeserver is down.
        m.spawn();
    }
    info!("roomcast ready");
    axum::serve(
        http,
        router.into_make_service_with_connect_info::<crate::http::PeerAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await
    .context("http server")?;
    info!("roomcast stopped");
    Ok(())
}

fn log_listening(service: &'static str, addr: SocketAddr) {
    info!(service, %addr, "listening");
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
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
