//! Appservice transactions, applied exactly once (the HTTP endpoint that
//! receives them is `http::matrix::appservice`).

use std::sync::Arc;

use tracing::info;

use super::{Ev, Matrix, MatrixError};

impl Matrix {
    /// Applies a transaction exactly once: a processed id is a no-op; events of
    /// a transaction that failed half-way are skipped on its retry.
    pub async fn apply_transaction(
        self: &Arc<Self>,
        txn_id: &str,
        events: &[Ev],
    ) -> Result<(), MatrixError> {
        let _one_at_a_time = self.txn_lock.lock().await;
        if self.store.txn_done(txn_id).await? {
            info!(txn = %txn_id, "matrix: transaction replayed; already applied");
            return Ok(());
        }
        for ev in events {
            if let Some(id) = &ev.event_id
                && self.store.event_done(id).await?
            {
                continue;
            }
            self.handle_event(ev).await?;
            if let Some(id) = &ev.event_id {
                self.store.mark_event_done(id).await?;
            }
        }
        self.store.mark_txn_done(txn_id).await?;
        tracing::debug!(txn = %txn_id, events = events.len(), "matrix: transaction applied");
        Ok(())
    }
}
