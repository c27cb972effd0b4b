//! Who may publish and watch: stream keys, OvenMediaEngine's SignedPolicy and
//! admission webhooks (and later viewer access).

pub mod admission;
mod cidr;
pub mod gate;
pub mod keys;
pub mod signed_policy;

pub use cidr::Cidr;
