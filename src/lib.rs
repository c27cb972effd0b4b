//! roomcast: sub-second live streaming for Matrix communities in one binary.
//!
//! Data flows one way: ingest → hub → egress. See README.md, "Architecture".

pub mod admission;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod egress;
pub mod http;
pub mod hub;
pub mod ingest;
pub mod listener;
pub mod log_every;
pub mod matrix;
pub mod media;
pub mod obs_profile;
pub mod party;
pub mod plan;
pub mod recording;
pub mod restream;
pub mod rtc;
pub mod server;
pub mod store;
pub mod thumbnail;
pub mod tls;
pub mod webhooks;
