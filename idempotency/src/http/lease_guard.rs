//! [`LeaseGuard`]: the lease of a running request, released if the request is dropped.

use std::sync::Arc;

use leases::Lease;

use super::config::Shared;
use super::outcome::count;
use super::store::Store;

/// Holds the lease of a running request; dropped before it is released or disarmed (the
/// request's future was dropped), it releases the key in the background if configured to.
pub(super) struct LeaseGuard<St: Store> {
    pub(super) shared: Arc<Shared<St>>,
    pub(super) lease: Option<Lease<i64>>,
}

impl<St: Store> LeaseGuard<St> {
    pub(super) async fn release(mut self) {
        if let Some(lease) = self.lease.take() {
            release(&self.shared.store, &lease).await;
        }
    }

    pub(super) fn disarm(mut self) {
        self.lease = None;
    }
}

pub(super) async fn release<St: Store>(store: &St, lease: &Lease<i64>) {
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
        let Some(lease) = self.lease.take() else {
            return;
        };
        count("cancelled");
        if !self.shared.config.release_on_cancel {
            tracing::info!(
                "idempotency: request cancelled; its key stays locked until its lease expires"
            );
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let shared = Arc::clone(&self.shared);
                runtime.spawn(async move { release(&shared.store, &lease).await });
            }
            Err(_) => tracing::warn!(
                "idempotency: request cancelled outside a runtime; its key is free once its lease expires"
            ),
        }
    }
}
