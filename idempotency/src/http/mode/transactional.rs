//! [`TransactionalMode`]: the key is taken inside the request's transaction, which the handler
//! also writes in through [`Tx`](crate::Tx); storing the response and the handler's rows commit
//! together, and rolling back frees the key.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use futures::future::BoxFuture;
use http::{Request, Response};
use leases::Lease;
use sqlx::{PgConnection, Postgres, Transaction};

use super::{Ending, Held, Mode};
use crate::http::config::Config;
use crate::http::outcome::{count, problem};
use crate::http::store::{Acquire, ScopedKey, StoredResponse, TransactionalStore};
use crate::http::tx::TxSlot;
use crate::{Fingerprint, Problem, Result};

/// Transactional mode, for handlers whose effects are all in the store's database.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TransactionalMode;

impl<St: TransactionalStore> Mode<St> for TransactionalMode {
    /// Begins the request's transaction and takes the key in it. A key that is not free rolls
    /// the transaction back before the answer, so its lock is gone by then.
    fn take<'a>(
        &'a self,
        store: &'a Arc<St>,
        config: &'a Config,
        key: &'a ScopedKey,
        fingerprint: &'a Fingerprint,
    ) -> BoxFuture<'a, Result<Acquire<Box<dyn Held>>>> {
        Box::pin(async move {
            let mut tx = store.pool().begin().await?;
            let (lease_ttl, retention) = (config.lease_ttl, config.retention);
            let taken = store
                .take_in(&mut tx, key, fingerprint, lease_ttl, retention)
                .await?;
            match taken.held() {
                Ok(lease) => Ok(Acquire::Acquired(Box::new(InTx {
                    store: Arc::clone(store),
                    slot: TxSlot::begun(store.pool(), tx),
                    key: key.clone(),
                    fingerprint: *fingerprint,
                    lease,
                    retention,
                    retry_after: config.retry_after,
                    settled: false,
                }) as Box<dyn Held>)),
                Err(answer) => {
                    tx.rollback().await?;
                    Ok(answer)
                }
            }
        })
    }

    fn unkeyed(&self, store: &St) -> Option<TxSlot> {
        Some(TxSlot::new(store.pool()))
    }
}

/// A key held by the request's transaction, and what storing it needs. Dropped before it
/// settled (its client went away), it counts the request as `cancelled`, as lease mode does; the
/// transaction rolls back when its connection goes back to the pool.
struct InTx<St> {
    store: Arc<St>,
    slot: TxSlot,
    key: ScopedKey,
    fingerprint: Fingerprint,
    /// A lease of the lease mode, taken over in the transaction (rare; see
    /// [`TakenIn`](crate::TakenIn)).
    lease: Option<Lease<i64>>,
    retention: Duration,
    retry_after: Duration,
    settled: bool,
}

impl<St: TransactionalStore> Held for InTx<St> {
    fn enter(&self, request: &mut Request<Body>) {
        request.extensions_mut().insert(self.slot.clone());
    }

    fn settle(mut self: Box<Self>, ending: Ending) -> BoxFuture<'static, Option<Response<Body>>> {
        Box::pin(async move {
            let answer = self.finish(ending).await;
            self.settled = true;
            answer
        })
    }
}

impl<St: TransactionalStore> InTx<St> {
    /// Commits or rolls back the request's transaction according to `ending`, storing the
    /// response (or releasing a lease taken over) in it first.
    async fn finish(&self, ending: Ending) -> Option<Response<Body>> {
        let Some(mut tx) = self.slot.take().await else {
            // The slot held the transaction when the handler was called and nothing takes it out.
            tracing::error!(
                "idempotency: the request's transaction is gone; nothing was committed"
            );
            return Some(self.unavailable());
        };
        let (written, outcome) = match ending {
            Ending::Release(outcome) => {
                if let Err(error) = tx.rollback().await {
                    tracing::debug!(%error, "idempotency: rollback failed (the connection is discarded)");
                }
                count(outcome);
                return None;
            }
            Ending::CommitAndRelease => (self.release_in(&mut tx).await, "released"),
            Ending::Store(stored) => (self.store_in(&mut tx, &stored).await, "executed"),
        };
        match written {
            Ok(true) => self.commit(tx, outcome).await,
            Ok(false) => {
                // Only a lease-mode request on the same key can have taken it meanwhile.
                let _ = tx.rollback().await;
                tracing::warn!(
                    "idempotency: the key was taken over; the transaction was rolled back"
                );
                Some(problem(Problem::superseded(self.retry_after), "superseded"))
            }
            Err(error) => {
                tracing::warn!(%error, "idempotency: storing the response failed; rolled back");
                let _ = tx.rollback().await;
                Some(self.unavailable())
            }
        }
    }

    async fn release_in(&self, conn: &mut PgConnection) -> Result<bool> {
        match &self.lease {
            Some(lease) => self.store.release_in(conn, lease).await,
            None => Ok(true), // nothing of the key was written
        }
    }

    async fn store_in(&self, conn: &mut PgConnection, stored: &StoredResponse) -> Result<bool> {
        let taken = (&self.key, &self.fingerprint, self.lease.as_ref());
        self.store
            .store_in(conn, taken, stored, self.retention)
            .await
    }

    async fn commit(
        &self,
        tx: Transaction<'static, Postgres>,
        outcome: &'static str,
    ) -> Option<Response<Body>> {
        match tx.commit().await {
            Ok(()) => {
                count(outcome);
                None
            }
            Err(error) => {
                // Rolled back, or committed with the acknowledgement lost: a retry gets the
                // replay or runs anew.
                tracing::warn!(%error, "idempotency: commit failed");
                Some(self.unavailable())
            }
        }
    }

    fn unavailable(&self) -> Response<Body> {
        problem(
            Problem::store_unavailable(self.retry_after),
            "store_unavailable",
        )
    }
}

impl<St> Drop for InTx<St> {
    fn drop(&mut self) {
        if !self.settled {
            count("cancelled");
        }
    }
}
