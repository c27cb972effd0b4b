//! Ingest: publishers' protocols in, hub media out (WHIP's HTTP side is `http::webrtc`).

pub mod flv_pipeline;
pub mod rtmp;
