//! Appservice transactions, applied exactly once (the HTTP endpoint that
//! receives them is `http::matrix::appservice`).

use std::sync::Arc;

use tracing::info;

use super::{Ev, Matrix, MatrixError};

impl Matrix {
    /// Applies a transaction exactly once: a processed id is a no-op; events of
    /// a transaction that failed half-way are skipped on its retry. A known id
    /// that brings events never seen is applied (those events only): Synapse
    /// on SQLite numbers its transactions from 1 again after a restart (the
    /// next id is the highest one still pending), so an id alone would drop
    /// every message of the first transactions after the restart.
    pub async fn apply_transaction(
        self: &Arc<Self>,
        txn_id: &str,
        events: &[Ev],
    ) -> Result<(), MatrixError> {
        let _one_at_a_time = self.txn_lock.lock().await;
        if self.store.txn_done(txn_id).await? {
            let mut fresh = false;
            for ev in events {
                if let Some(id) = &ev.event_id
                    && !self.store.event_done(id).await?
                {
                    fresh = true;
                    break;
                }
            }
            if !fresh {
                info!(txn = %txn_id, "matrix: transaction replayed; already applied");
                return Ok(());
            }
            info!(
                txn = %txn_id,
                "matrix: transaction id seen before but with new events (the homeserver \
                 numbers its transactions anew after a restart); applying the new ones"
            );
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
