//! [`Tx`]: the request's transaction, committed by the layer together with the stored response.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use http::request::Parts;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::Problem;

type Slot = Option<Transaction<'static, Postgres>>;

/// Where the layer keeps a request's transaction: put in the request's extensions, begun the
/// first time the handler takes it, then taken back by the layer.
#[derive(Clone)]
pub(crate) struct TxSlot {
    pool: PgPool,
    tx: Arc<Mutex<Slot>>,
}

impl TxSlot {
    pub(crate) fn new(pool: &PgPool) -> Self {
        Self {
            pool: pool.clone(),
            tx: Arc::new(Mutex::new(None)),
        }
    }

    /// A slot holding a transaction the layer began (transactional mode, where it holds the key).
    pub(crate) fn begun(pool: &PgPool, tx: Transaction<'static, Postgres>) -> Self {
        Self {
            pool: pool.clone(),
            tx: Arc::new(Mutex::new(Some(tx))),
        }
    }

    /// The transaction, if the handler began one. Waits until the handler let go of its [`Tx`].
    pub(crate) async fn take(&self) -> Slot {
        self.tx.lock().await.take()
    }
}

/// The request's database transaction (same-transaction mode), as an axum extractor.
///
/// Behind an [`IdempotencyLayer::transactional`](crate::IdempotencyLayer::transactional) layer, a
/// handler that takes a `Tx` writes its business rows (and outbox events) in the transaction
/// that holds the request's key: the layer writes the stored response in it and commits, so the
/// rows and the key's response commit together. If the response is not one to store (a 5xx or a
/// refusal, see [`IdempotencyLayer::store_if`](crate::IdempotencyLayer::store_if)), the handler
/// panics, or the request is cancelled, it rolls back: nothing the handler wrote remains, and
/// the key is free.
///
/// For a keyed request the transaction began before the handler was called (it took the key).
/// Requests without a key get a `Tx` too, begun at the first [`conn`](Self::conn) and committed
/// under the same rule. The layer takes the transaction back when the handler returns; a `Tx`
/// cannot outlive the request.
///
/// ```
/// use axum::response::{IntoResponse, Response};
/// use axum::{Json, Router, http::StatusCode, routing::post};
/// use idempotency::{IdempotencyLayer, KeyPolicy, PostgresStore, Tx};
///
/// async fn create_order(mut tx: Tx, Json(order): Json<serde_json::Value>) -> Result<StatusCode, Response> {
///     let conn = tx.conn().await.map_err(IntoResponse::into_response)?;
///     sqlx::query("INSERT INTO orders (body) VALUES ($1)")
///         .bind(&order)
///         .execute(conn)
///         .await
///         .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())?; // 5xx: rolled back, key released
///     Ok(StatusCode::CREATED) // stored and committed with the row
/// }
///
/// fn app(pool: sqlx::PgPool) -> Router {
///     Router::new()
///         .route("/orders", post(create_order))
///         .route_layer(IdempotencyLayer::transactional(PostgresStore::new(pool)).key_policy(KeyPolicy::Required))
/// }
/// ```
///
/// # Rejections
///
/// [`Problem`] 500 `transaction-unavailable` when the route is not behind a transactional layer,
/// or a handler takes a second `Tx` while holding the first.
pub struct Tx {
    pool: PgPool,
    guard: OwnedMutexGuard<Slot>,
}

impl fmt::Debug for Tx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tx")
            .field("begun", &self.guard.is_some())
            .finish_non_exhaustive()
    }
}

impl Tx {
    /// The transaction's connection, for any sqlx executor argument (or `outbox::enqueue`). The
    /// first call begins the transaction.
    ///
    /// # Errors
    ///
    /// [`Problem`] 503 `store-unavailable` when the transaction cannot begin.
    pub async fn conn(&mut self) -> Result<&mut PgConnection, Problem> {
        let tx = match self.guard.take() {
            Some(tx) => tx,
            None => self.pool.begin().await.map_err(|error| {
                tracing::warn!(%error, "idempotency: cannot begin the request's transaction");
                Problem::store_unavailable(Duration::from_secs(1))
            })?,
        };
        Ok(&mut **self.guard.insert(tx))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Tx {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Problem> {
        let slot = parts.extensions.get::<TxSlot>().cloned().ok_or_else(|| {
            Problem::transaction_unavailable(
                "This route is not behind a transactional idempotency layer.",
            )
        })?;
        let guard = Arc::clone(&slot.tx).try_lock_owned().map_err(|_| {
            Problem::transaction_unavailable("The handler took the transaction twice.")
        })?;
        Ok(Tx {
            pool: slot.pool,
            guard,
        })
    }
}

/// Commits the handler's transaction, if it took one.
pub(super) async fn commit(slot: Option<TxSlot>) -> Result<(), sqlx::Error> {
    match slot {
        Some(slot) => match slot.take().await {
            Some(tx) => tx.commit().await,
            None => Ok(()),
        },
        None => Ok(()),
    }
}

/// Rolls the handler's transaction back, if it took one.
pub(super) async fn rollback(slot: Option<TxSlot>) {
    if let Some(slot) = slot {
        if let Some(tx) = slot.take().await {
            if let Err(error) = tx.rollback().await {
                tracing::debug!(
                    %error,
                    "idempotency: rollback failed (the connection is discarded)"
                );
            }
        }
    }
}
