//! Transactional mode: how a request whose key is held by its own transaction finishes. The key
//! was taken in the transaction ([`TransactionalStore::take_in`](crate::TransactionalStore)), so
//! storing the response and committing the handler's rows is one commit, and rolling back frees
//! the key.

use axum::body::Body;
use http::Response;
use leases::Lease;

use super::config::{Shared, Transactions};
use super::outcome::{count, problem};
use super::service::Ending;
use super::tx::TxSlot;
use crate::Problem;

/// Commits or rolls back the request's transaction according to `ending`, storing the response
/// or releasing the key in it first.
pub(super) async fn settle<St, E>(
    shared: &Shared<St>,
    transactions: &Transactions<St>,
    slot: TxSlot,
    lease: &Lease<i64>,
    ending: Ending<E>,
) -> Result<Response<Body>, E> {
    let retry_after = shared.config.retry_after;
    let unavailable = || problem(Problem::store_unavailable(retry_after), "store_unavailable");
    let Some(mut tx) = slot.take().await else {
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
        Ending::CommitAndRelease(response) => (
            (transactions.release_in)(&shared.store, &mut tx, lease).await,
            "released",
            response,
        ),
        Ending::Store(stored, response) => (
            (transactions.complete_in)(&shared.store, &mut tx, lease, &stored).await,
            "executed",
            response,
        ),
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
            // Nobody else sees the key's row before the commit, so only a lease-mode request
            // taking over an expired lease of the same key can get here.
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
