//! Identifiers and event contents from strings we hold, as ruma's types:
//! one that does not parse is a protocol error (the homeserver or the
//! database gave it to us).

use ruma::serde::Raw;
use ruma::{OwnedRoomId, OwnedUserId};
use serde_json::Value;

use super::{HsError, MatrixError};

pub(super) fn room_id(s: &str) -> Result<OwnedRoomId, MatrixError> {
    OwnedRoomId::try_from(s).map_err(|e| HsError::Protocol(format!("bad room id {s}: {e}")).into())
}

pub(super) fn user_id(s: &str) -> Result<OwnedUserId, MatrixError> {
    OwnedUserId::try_from(s).map_err(|e| HsError::Protocol(format!("bad user id {s}: {e}")).into())
}

/// A transaction id for a `PUT …/send/…`: random, so a retry after a restart
/// is never taken for a repeat of another message.
pub(super) fn new_txn_id() -> String {
    format!("rc{}", hex::encode(rand::random::<[u8; 12]>()))
}

pub(super) fn raw<T>(v: &Value) -> Result<Raw<T>, MatrixError> {
    let r = serde_json::value::to_raw_value(v).map_err(|e| HsError::Protocol(e.to_string()))?;
    Ok(Raw::from_json(r))
}
