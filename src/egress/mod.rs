//! Egress: hub frames out to viewers' protocols.

pub mod hls;
pub mod ome;
pub mod whep;
