//! Ingest: publishers' protocols in, hub media out.

pub mod flv_pipeline;
pub mod rtmp;
pub mod whip;
