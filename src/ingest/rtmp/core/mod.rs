//! roomcast's own RTMP server core, sans I/O: handshake, chunk stream, AMF0
//! and the publishing session. It replaced rml_rtmp's server session, whose
//! AMF0 reader recursed without limit (one message overflowed a worker's
//! stack), which panicked on short commands, underflowed in its chunk
//! deserializer and grew without bound on `createStream`; here every length,
//! count and depth a client controls is capped and checked.

pub mod amf0;
pub mod chunk;
pub mod handshake;
pub mod session;

pub use session::{RtmpError, RtmpEvent, ServerCore};
