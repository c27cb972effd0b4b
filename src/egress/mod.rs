//! Egress: hub frames out to viewers' protocols (the HTTP side is in `http`).

pub mod hls;
pub mod ome;
pub mod webm;
