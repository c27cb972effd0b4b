//! What several fuzz targets share: a WebRTC engine started once per process
//! (as the server starts one), on loopback with port 0.

use std::sync::{Arc, OnceLock};

use roomcast::config::WebrtcConfig;
use roomcast::hub::{AudioInfo, Hub, IngestProtocol, Publisher, Stream, VideoInfo};
use roomcast::rtc::Engine;

pub struct Shared {
    pub engine: Arc<Engine>,
    pub hub: Arc<Hub>,
    pub stream: Arc<Stream>,
    _publisher: Publisher,
    _rt: tokio::runtime::Runtime,
}

/// The engine with one worker, a hub and a live stream `fuzz` with the media
/// of the seeds' captures (H.264 High 1.3 from libx264, Opus).
pub fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let cfg = WebrtcConfig {
            udp: "127.0.0.1:0".parse().unwrap(),
            tcp: "127.0.0.1:0".parse().unwrap(),
            public_ips: Vec::new(),
            tcp_force: false,
            workers: 1,
            strict_h264_profile: false,
            ..WebrtcConfig::default()
        };
        let (engine, _bound) = rt
            .block_on(Engine::start(
                &cfg,
                roomcast::listener::Limits::from_config(&Default::default()),
                roomcast::listener::Shutdown::default(),
            ))
            .expect("engine start");
        let hub = Arc::new(Hub::new());
        let stream = hub.ensure_stream("fuzz", None);
        let publisher = hub.publish(&stream, IngestProtocol::Rtmp);
        publisher
            .set_media(|m| {
                m.video = Some(VideoInfo {
                    codec: "H264",
                    profile_level_id: Some(0x64000d),
                    fmtp: None,
                    width: Some(320),
                    height: Some(180),
                });
                m.audio = Some(AudioInfo {
                    codec: "opus",
                    sample_rate: 48_000,
                    channels: 2,
                    source_codec: Some("aac"),
                });
            })
            .expect("a new publisher");
        Shared {
            engine,
            hub,
            stream,
            _publisher: publisher,
            _rt: rt,
        }
    })
}

/// libfuzzer-sys aborts on every panic, even one the server catches (it
/// wraps str0m's negotiation in `catch_unwind`): restore a hook that only
/// prints, so a caught panic is not a crash while an uncaught one still
/// aborts the run (libfuzzer-sys aborts when the target itself panics).
pub fn panics_the_server_catches_are_not_crashes() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = std::panic::take_hook();
        std::panic::set_hook(Box::new(|info| {
            eprintln!("panic (caught by the server?): {info}")
        }));
    });
}
