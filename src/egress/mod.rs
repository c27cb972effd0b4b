//! Egress: hub frames out to viewers' protocols.

pub mod whep;
