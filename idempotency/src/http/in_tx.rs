//! Transactional mode: how a request whose key is held by its own transaction finishes. The key
//! was taken in the transaction ([`TransactionalStore::take_in`](crate::TransactionalStore)), so
//! storing the response and committing the handler's rows is one commit, and rolling back frees
//! the key.

use axum::body::Body;
use http::Response;

use super::checks::InTx;
use super::config::Shared;
use super::outcome::{count, problem};
use super::service::Ending;
use crate::Problem;

/// Counts a request dropped before it settled (its client went away) as `cancelled`, as lease
/// mode does; its transaction rolls back when its connection goes back to the pool.
pub(super) struct CountCancelled(bool);

impl CountCancelled {
    pub(super) fn armed() -> Self {
        Self(true)
    }

    pub(super) fn disarm(mut self) {
        self.0 = false;
    }
}

impl Drop for CountCancelled {
    fn drop(&mut self) {
        if self.0 {
            count("cancelled");
        }
    }
}

/// Commits or rolls back the request's transaction according to `ending`, storing the response
/// (or releasing a lease taken over) in it first.
pub(super) async fn settle<St, E>(
    shared: &Shared<St>,
    held: InTx<St>,
    ending: Ending<E>,
) -> Result<Response<Body>, E> {
    let retry_after = shared.config.retry_after;
    let unavailable = || problem(Problem::store_unavailable(retry_after), "store_unavailable");
    let transactions = &held.transactions;
    let Some(mut tx) = held.slot.take().await else {
        // The slot held the transaction when the handler was called and nothing takes it out.
        tracing::error!("idempotency: the request's transaction is gone; nothing was committed");
        return Ok(unavailable());
    };
    let (written, outcome, response) = match ending {
        Ending::Release(answer, outcome) => {
            if let Err(error) = tx.rollback().await {
                tracing::debug!(%error, "idempotency: rollback failed (the connection is discarded)");
            }
            count(outcome);
            return answer;
        }
        Ending::CommitAndRelease(response) => {
            let released = match &held.lease {
                Some(lease) => (transactions.release_in)(&shared.store, &mut tx, lease).await,
                None => Ok(true), // nothing of the key was written
            };
            (released, "released", response)
        }
        Ending::Store(stored, response) => {
            let taken = (&held.key, &held.fingerprint, held.lease.as_ref());
            let retention = shared.config.retention;
            let written =
                (transactions.store_in)(&shared.store, &mut tx, taken, &stored, retention).await;
            (written, "executed", response)
        }
    };
    match written {
        Ok(true) => match tx.commit().await {
            Ok(()) => {
                count(outcome);
                Ok(response)
            }
            Err(error) => {
                // Rolled back, or committed with the acknowledgement lost: a retry gets the
                // replay or runs anew.
                tracing::warn!(%error, "idempotency: commit failed");
                Ok(unavailable())
            }
        },
        Ok(false) => {
            // Only a lease-mode request on the same key can have taken it meanwhile.
            let _ = tx.rollback().await;
            tracing::warn!("idempotency: the key was taken over; the transaction was rolled back");
            Ok(problem(Problem::superseded(retry_after), "superseded"))
        }
        Err(error) => {
            tracing::warn!(%error, "idempotency: storing the response failed; rolled back");
            let _ = tx.rollback().await;
            Ok(unavailable())
        }
    }
}
