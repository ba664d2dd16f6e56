//! [`LeaseMode`]: the key is held by a committed lease, renewed while the handler runs, and the
//! response is stored after it returns.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use futures::future::BoxFuture;
use http::Response;
use leases::Lease;
use tokio::time::Instant;

use super::{Ending, Held, Mode};
use crate::http::config::Config;
use crate::http::outcome::count;
use crate::http::store::{Acquire, ScopedKey, Store};
use crate::http::tx::TxSlot;
use crate::{Fingerprint, Result};

/// Lease mode, for handlers with effects outside the database.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeaseMode;

impl<St: Store> Mode<St> for LeaseMode {
    fn take<'a>(
        &'a self,
        store: &'a Arc<St>,
        config: &'a Config,
        key: &'a ScopedKey,
        fingerprint: &'a Fingerprint,
    ) -> BoxFuture<'a, Result<Acquire<Box<dyn Held>>>> {
        Box::pin(async move {
            let acquired = store
                .acquire(key, fingerprint, config.lease_ttl, config.retention)
                .await?;
            Ok(acquired.map(|lease| {
                Box::new(LeaseGuard {
                    store: Arc::clone(store),
                    lease,
                    ttl: config.lease_ttl,
                    release_on_cancel: config.release_on_cancel,
                    armed: true,
                }) as Box<dyn Held>
            }))
        })
    }

    fn unkeyed(&self, _store: &St) -> Option<TxSlot> {
        None
    }
}

/// The lease of a running request; dropped while armed (the request's future was dropped), it
/// releases the key in the background if configured to.
struct LeaseGuard<St: Store> {
    store: Arc<St>,
    lease: Lease<i64>,
    ttl: Duration,
    release_on_cancel: bool,
    armed: bool,
}

impl<St: Store> Held for LeaseGuard<St> {
    fn keep(&self) -> BoxFuture<'_, Infallible> {
        Box::pin(self.renew())
    }

    fn settle(self: Box<Self>, ending: Ending) -> BoxFuture<'static, Option<Response<Body>>> {
        Box::pin(async move {
            self.finish(ending).await;
            None
        })
    }
}

impl<St: Store> LeaseGuard<St> {
    /// Renews the lease every third of its ttl, until it is lost.
    async fn renew(&self) -> Infallible {
        let every = (self.ttl / 3).max(Duration::from_millis(10));
        let mut next = Instant::now() + every;
        loop {
            tokio::time::sleep_until(next).await;
            next += every;
            match self.store.renew(&self.lease, self.ttl).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(
                        "idempotency: lease lost while the handler runs; its response will not \
                         be stored"
                    );
                    return std::future::pending().await;
                }
                Err(error) => tracing::warn!(%error, "idempotency: lease renewal failed"),
            }
        }
    }

    /// The one place a request under a lease finishes: the key is stored or released, and the
    /// outcome is counted. The handler's effects already happened, so the client gets its
    /// response whatever the store says.
    async fn finish(mut self: Box<Self>, ending: Ending) {
        let stored = match ending {
            Ending::Release(outcome) => {
                self.release().await;
                count(outcome);
                return;
            }
            Ending::CommitAndRelease => {
                self.release().await;
                count("released");
                return;
            }
            Ending::Store(stored) => stored,
        };
        self.armed = false;
        match self.store.complete(&self.lease, &stored).await {
            Ok(true) => count("executed"),
            Ok(false) => {
                tracing::warn!(
                    "idempotency: the request lost its lease before completing; response not stored"
                );
                count("superseded");
            }
            Err(error) => {
                tracing::warn!(
                    %error,
                    "idempotency: storing the response failed; the key stays locked until its \
                     lease expires"
                );
                count("store_failed");
            }
        }
    }

    async fn release(&mut self) {
        self.armed = false;
        release(&*self.store, &self.lease).await;
    }
}

async fn release<St: Store>(store: &St, lease: &Lease<i64>) {
    match store.release(lease).await {
        Ok(true) => {}
        Ok(false) => tracing::debug!("idempotency: key already released or taken over"),
        Err(error) => {
            tracing::warn!(%error, "idempotency: releasing the key failed; it is free once its lease expires");
        }
    }
}

impl<St: Store> Drop for LeaseGuard<St> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        count("cancelled");
        if !self.release_on_cancel {
            tracing::info!(
                "idempotency: request cancelled; its key stays locked until its lease expires"
            );
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let store = Arc::clone(&self.store);
                let lease = self.lease.clone();
                runtime.spawn(async move { release(&*store, &lease).await });
            }
            Err(_) => tracing::warn!(
                "idempotency: request cancelled outside a runtime; its key is free once its lease expires"
            ),
        }
    }
}
