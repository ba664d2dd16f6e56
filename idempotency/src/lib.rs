//! Every retried request has its effect once: the HTTP `Idempotency-Key` layer (tower, made for
//! axum). For events, the consuming side (an inbox and a Kafka consumer runner) is the `inbox`
//! crate.
//!
//! [`IdempotencyLayer`] follows the IETF draft "The Idempotency-Key HTTP Header Field" and
//! Stripe's behaviour. A request with a key runs once; a retry gets the stored response replayed
//! (`Idempotent-Replayed: true`), a concurrent duplicate 409, a reuse of the key for a different
//! request 422. Keys live in PostgreSQL ([`PostgresStore`]) or in memory ([`MemoryStore`]). Every
//! error is [problem+json](problem). Two modes:
//!
//! - **transactional** ([`IdempotencyLayer::transactional`]), for handlers whose effects are
//!   all in the database: the key is taken inside the request's own transaction ([`Tx`]), the
//!   response is stored in it, and one commit makes the handler's writes and the key's
//!   response durable together. A concurrent duplicate gets 409 at once (no waiting on a lock).
//!   The connection is held for the whole handler.
//! - **lease** ([`IdempotencyLayer::new`]), for handlers with effects outside the database
//!   (calls to other services, messages sent): the in-flight lock is a committed lease of the
//!   [`leases`] crate, renewed while the handler runs and separate from the key's retention;
//!   the response is stored after the handler returns. It costs a commit of its own per
//!   request, and works with any [`Store`].
//!
//! # Quick start
//!
//! ```no_run
//! use axum::{Json, Router, http::StatusCode, response::IntoResponse, routing::post};
//! use idempotency::{IdempotencyLayer, KeyPolicy, PostgresStore, Tx};
//!
//! #[derive(Clone)]
//! struct User(String); // inserted by your authentication layer
//!
//! async fn create_order(mut tx: Tx, Json(order): Json<serde_json::Value>) -> impl IntoResponse {
//!     let conn = match tx.conn().await {
//!         Ok(conn) => conn,
//!         Err(problem) => return problem.into_response(), // 503: the database is down
//!     };
//!     let inserted: Result<i64, _> =
//!         sqlx::query_scalar("INSERT INTO orders (body) VALUES ($1) RETURNING id")
//!             .bind(&order)
//!             .fetch_one(conn)
//!             .await;
//!     match inserted {
//!         // Stored, and committed together with the order row.
//!         Ok(id) => {
//!             (StatusCode::CREATED, [("location", format!("/orders/{id}"))]).into_response()
//!         }
//!         // Not stored: the transaction rolls back and the key is released for a retry.
//!         Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
//!     }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::PgPool::connect("postgres://localhost/app").await?;
//! idempotency::MIGRATOR.run(&pool).await?;
//!
//! let store = PostgresStore::new(pool.clone());
//! let layer = IdempotencyLayer::transactional(store.clone())
//!     .key_policy(KeyPolicy::Required)
//!     .scope(|parts| parts.extensions.get::<User>().map(|user| user.0.clone()));
//! let app: Router = Router::new()
//!     .route("/orders", post(create_order))
//!     .route_layer(layer); // after routing: the route is part of the key's scope
//!
//! // Once an hour or so, forget keys past their retention:
//! store.purge_expired(1000).await?;
//! # let _ = app; Ok(()) }
//! ```
//!
//! # Guarantees
//!
//! For requests with a key, on a method that is not safe, per (scope, route, key):
//!
//! - **At most one running.** While a request holds the key, another request with the key gets
//!   409 and does not run. In transactional mode the request's transaction holds it (a
//!   transaction-level lock taken without waiting; the completed key is written just before the
//!   commit): however the request ends, the rollback or the commit frees it at once, and no
//!   second holder can exist. (A key still under a lease of the lease mode, after a route
//!   changed modes, is busy until the lease expires and is then taken over through it.) In lease mode the lease is renewed while the handler runs; if its
//!   process dies (or stalls without renewing), the key is free again after the lease ttl (30 s
//!   by default), not after the retention. (With [`PostgresStore`] in lease mode, a crash of
//!   PostgreSQL itself can lose a lock taken a fraction of a second before it, unless
//!   [`synchronous_locks`](PostgresStore::synchronous_locks) is on.)
//! - **Fencing (lease mode).** Storing the response checks the lease's owner and token in the
//!   same statement, so a request that lost its lease (it stalled past the ttl and a retry took
//!   the key) cannot overwrite the retry's outcome.
//! - **Exactly-once effect, in transactional mode.** The handler's writes (through [`Tx`]) and
//!   the stored response commit in one transaction: either both are there or neither. A client
//!   retrying the same request until it gets a response other than 409 or 503 sees the effect
//!   happen once and always the same response, for as long as the key is retained (24 h by
//!   default). A response that is not stored (5xx, a refusal, a panic, a cancellation) rolls the
//!   writes back and leaves the key free.
//! - **At-least-once-but-not-concurrently, in lease mode.** Effects outside the transaction
//!   (calls to other services, writes on other connections) happen before the response is
//!   stored: if the process dies in between, or the store fails then, a retry after the lease
//!   expires runs the handler again. The 5xx, cancellation and panic outcomes release the key
//!   by default, which also lets a retry run again: configure
//!   [`release_on_cancel`](IdempotencyLayer::release_on_cancel) and
//!   [`store_if`](IdempotencyLayer::store_if) when that is wrong for you.
//! - **Same request.** A key replays only for a request with the same [`Fingerprint`] (method,
//!   path, canonical query, content type and body); any other gets 422.
//! - **Fail closed.** When the store cannot be reached, requests with a key get 503 and do not
//!   run (unless [`fail_open`](IdempotencyLayer::fail_open)).
//!
//! # Features
//!
//! - `http` (default): the HTTP layer ([`IdempotencyLayer`], its stores, [`Tx`], [`Problem`]);
//!   brings in axum, tower and http. [`MIGRATOR`] and [`Error`] are always there.
//!
//! # Errors
//!
//! One [`Error`] type for the stores, with [`Error::is_retriable`]; client mistakes are
//! [`Problem`] responses, never errors.

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;
#[cfg(feature = "http")]
mod http;

#[cfg(feature = "http")]
pub use self::http::{
    Acquire, Fingerprint, FingerprintOptions, IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED, Idempotency,
    IdempotencyKey, IdempotencyLayer, KeyError, KeyPolicy, KeysStatus, MAX_KEY_LEN, MemoryStore,
    PostgresStore, Problem, Record, RecordState, ResponseFuture, ScopedKey, Store, StoredResponse,
    TakenIn, TransactionalStore, Tx, problem, stores_by_default, stores_server_errors_too,
};
pub use error::{Error, Result};

/// The crate's migrations: `idempotency_keys` (keys, their leases and stored responses).
///
/// The consumer inbox that earlier releases created here (`idempotency_inbox`) moved to the
/// `inbox` crate: a database that has one with records gets it renamed to `inbox` (or, when
/// `inbox::MIGRATOR` ran first, its records copied there), and an empty one is dropped.
///
/// Its history is kept in `_idempotency_migrations` (set in the crate's `sqlx.toml`), not in
/// `_sqlx_migrations`: run it beside your own migrator (`idempotency::MIGRATOR.run(&pool)`, then yours),
/// with no merging and no version to coordinate.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();
