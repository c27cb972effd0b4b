//! The Matrix endpoints: the pages' API (guests, chat, viewer access, a
//! room's streams) and the appservice API the homeserver calls.

pub mod api;
pub mod appservice;
pub mod media;
pub mod party;
