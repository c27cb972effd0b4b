//! Egress: hub frames out to viewers' protocols.

pub mod ome;
pub mod whep;
