//! OvenMediaEngine's WebSocket signalling, without I/O: messages in, actions
//! out. The WebSocket and its handlers are `http::ome`.

pub mod protocol;
