//! Who may publish and watch: stream keys (and later SignedPolicy, admission
//! webhooks, viewer access).

pub mod keys;
