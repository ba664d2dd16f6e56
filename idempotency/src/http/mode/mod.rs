//! The layer's two modes, one type each behind [`Mode`]: how a request takes its key, what it
//! holds while its handler runs ([`Held`]), and how it settles.
//!
//! - [`LeaseMode`] ([`IdempotencyLayer::new`](crate::IdempotencyLayer::new)): a committed
//!   lease, renewed while the handler runs; the response is stored after it.
//! - [`TransactionalMode`]
//!   ([`IdempotencyLayer::transactional`](crate::IdempotencyLayer::transactional)): a lock in
//!   the request's transaction, which the handler writes in through [`Tx`](crate::Tx); the
//!   response is stored in it, and one commit makes both durable.
//!
//! A layer picks its mode when it is built, where it knows what its store can do; requests reach
//! it through an `Arc<dyn Mode<St>>`, so the layers of both modes over one store are one type.

mod lease;
mod transactional;

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;

use axum::body::Body;
use futures::future::BoxFuture;
use http::{Request, Response};

use super::config::Config;
use super::store::{Acquire, ScopedKey, StoredResponse};
use super::tx::TxSlot;
use crate::{Fingerprint, Result};

pub(crate) use lease::LeaseMode;
pub(crate) use transactional::TransactionalMode;

/// How a request holds its key: one implementation per mode.
pub(crate) trait Mode<St>: fmt::Debug + Send + Sync {
    /// Takes the key of a checked request, or says why not (a key not taken holds nothing).
    fn take<'a>(
        &'a self,
        store: &'a Arc<St>,
        config: &'a Config,
        key: &'a ScopedKey,
        fingerprint: &'a Fingerprint,
    ) -> BoxFuture<'a, Result<Acquire<Box<dyn Held>>>>;

    /// The transaction slot a request without a key gets (transactional mode: a handler's
    /// [`Tx`](crate::Tx) begins at its first use).
    fn unkeyed(&self, store: &St) -> Option<TxSlot>;
}

/// A key held by a running request, from [`Mode::take`] to [`settle`](Held::settle). Dropped
/// before it settled (the request's future was dropped), it counts the request as `cancelled`
/// and lets the key go as its mode does.
pub(crate) trait Held: Send + Sync {
    /// Readies the request before its handler is called.
    fn enter(&self, _request: &mut Request<Body>) {}

    /// Runs beside the handler, for as long as it runs (lease mode renews its lease).
    fn keep(&self) -> BoxFuture<'_, Infallible> {
        Box::pin(std::future::pending())
    }

    /// Stores or releases the key as `ending` says, and counts the outcome. Returns the answer
    /// that replaces the handler's when the key could not be settled as asked.
    fn settle(self: Box<Self>, ending: Ending) -> BoxFuture<'static, Option<Response<Body>>>;
}

/// How a request that held its key ends.
pub(crate) enum Ending {
    /// A response to store: stored with the key (in the handler's transaction if it took one).
    Store(StoredResponse),
    /// Not stored, but the handler's transaction commits: a response too large to keep.
    CommitAndRelease,
    /// Rolled back and the key released; counted as the given outcome.
    Release(&'static str),
}
