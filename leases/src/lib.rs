//! Lease claiming over PostgreSQL: the one mechanism behind a job queue's workers, an outbox
//! relay, an idempotency key's in-flight lock and a singleton job's leader election.
//!
//! - **Row leases** ([`RowLeases`]) over any table with the lease columns ([`TableSpec`]): claim a
//!   batch of due rows for an owner in one `FOR UPDATE SKIP LOCKED` statement; each claim carries
//!   a fencing token; renew, release (optionally with a delay, for backoff) and complete check
//!   owner and token in the same statement. Batch forms take arrays: one round trip per batch.
//! - **Fenced statements with the caller's columns** ([`RowLeases::release_query`],
//!   [`complete_query`](RowLeases::complete_query), [`move_query`](RowLeases::move_query),
//!   [`claim_key_query`](RowLeases::claim_key_query)): release with a reason, complete with a
//!   stored result, move a row to another table, or claim one row by key, each one statement with
//!   the same fencing, on the caller's executor. Callers never write the "still held" predicate,
//!   and number their own parameters from `$1` ([`Sql`], [`Binds`]): a fragment whose
//!   parameters do not match its values is refused when the statement is built.
//! - **Heartbeats** ([`Heartbeat`]) renew row leases while long work runs and report the ones lost.
//! - **Named leases** ([`NamedLeases`], [`LeaseKeeper`]): one row per name for singleton jobs and
//!   leader election, with the same fencing.
//!
//! Every crate of the toolkit depends on this one, so it also carries three small modules that
//! are not about leases: [`task`] ([`Background`](task::Background): how every long-running task
//! of the toolkit, relays, consumer runners, heartbeats, lease keepers, runs and stops),
//! [`retry`] ([`Backoff`](retry::Backoff) and [`is_retriable_db_error`](retry::is_retriable_db_error))
//! and [`pg`] ([`interval`](pg::interval), how a duration is bound).
//!
//! # Quick start
//!
//! ```no_run
//! use std::time::Duration;
//! use leases::{RowLeases, TableSpec};
//!
//! # async fn run() -> leases::Result<()> {
//! let pool = sqlx::PgPool::connect("postgres://localhost/app").await?;
//! leases::MIGRATOR.run(&pool).await.map_err(sqlx::Error::from)?; // named leases' table
//! sqlx::query(
//!     "CREATE TABLE IF NOT EXISTS jobs (
//!         id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
//!         payload text NOT NULL,
//!         lease_owner text, lease_token bigint NOT NULL DEFAULT 0, lease_expires_at timestamptz,
//!         attempts int NOT NULL DEFAULT 0, next_attempt_at timestamptz DEFAULT now())",
//! )
//! .execute(&pool)
//! .await?;
//!
//! let jobs = RowLeases::new(&TableSpec::builder("jobs").build()?, "worker-1");
//! let batch: Vec<(leases::Lease<i64>, (String,))> =
//!     jobs.claim_rows(&pool, 100, Duration::from_secs(30)).await?;
//! let mut done = Vec::new();
//! for (lease, (payload,)) in batch {
//!     println!("job {} (attempt {}): {payload}", lease.id, lease.attempts);
//!     done.push(lease);
//! }
//! // Only leases still held are completed; the rest were lost and are left alone.
//! let completed = jobs.complete_many(&pool, &done).await?;
//! # let _ = completed; Ok(()) }
//! ```
//!
//! # Semantics
//!
//! **Due.** A row is claimable when `next_attempt_at <= now` and its lease is free
//! (`lease_expires_at` is `NULL` or `<= now`). `next_attempt_at IS NULL` means never.
//!
//! **Claim.** One statement selects due rows in `(next_attempt_at, id)` order with
//! `FOR UPDATE SKIP LOCKED` and updates them: owner set, token and attempts incremented, expiry set
//! to `now + ttl` (in a table with group columns, only each run's head is updated). Concurrent
//! claimers skip each other's rows instead of waiting, and a row cannot be claimed twice while its
//! lease is valid.
//!
//! **Fencing.** The token of a row increases by one on every claim, so a later claim always has a
//! greater token; a lease is its holder row's (`Lease::holder`, the row itself unless the table has
//! group columns), and `(holder, token)` identifies one claim. `renew`, `release` and `complete`
//! match on id, owner and token and on the lease not being finished; a worker whose lease expired
//! *and was claimed again* gets "lost" (`false`, `None`, or the id missing from a batch result)
//! and changes nothing. A lease that expired but
//! was not claimed again is still the worker's: renewing or completing it succeeds. In a table
//! with [group columns](TableSpecBuilder::group_columns) a claim writes only each run's head, and
//! the run's other rows are fenced through the head's token ([`Lease::holder`]).
//!
//! **Time and clock skew.** Expiry is decided by the database clock:
//! every statement uses `coalesce($now, statement_timestamp())`, with `$now` `NULL` under the
//! default [`DatabaseClock`], so the workers' own clocks never matter for who may claim what. A
//! worker must still treat its lease as lost once a `ttl` has passed since it sent its last
//! successful renewal, which [`Heartbeat`] and [`LeaseKeeper`] do; this assumes only that the
//! worker's and the database's clocks run at the same *rate*. Tests inject a [`ManualClock`].
//!
//! **What a lease does not do.** It does not make the work exactly-once: a worker that stalls past
//! its expiry may still be running when another claims the row. The token is what lets the effects
//! be fenced (check it in the same transaction as the effect, or complete in that transaction).
//!
//! # Table design
//!
//! A claim walks the due rows in `(next_attempt_at, id)` order, so index them that way
//! (`CREATE INDEX ON jobs (next_attempt_at, id) WHERE next_attempt_at IS NOT NULL`). A claim sets
//! only the lease columns: keep them out of every index, and leave room on the table's pages
//! (`WITH (fillfactor = 50)` for a queue whose rows are claimed about once and then deleted), so
//! that PostgreSQL can write the claimed version beside the old one as a HOT update, with no new
//! index entries. The outbox's table does both; its claim of 1,000 rows went from 18 to 8 ms
//! (`docs/benchmarks.md`).
//!
//! A queue that can fall behind while a long transaction holds back vacuum should also turn on
//! [`RowLeases::claim_cursor`]: rows deleted after the oldest snapshot stay in the due index, and
//! a claim that walks it from the head steps over every one of them.
//!
//! # Errors
//!
//! One [`Error`] type; [`Error::is_retriable`] tells transient database failures (serialization
//! failure, deadlock, lost connection) from permanent ones.

#![forbid(unsafe_code)]

mod clock;
mod cursor;
mod error;
mod fenced;
mod heartbeat;
mod keeper;
mod named;
pub mod pg;
pub mod retry;
mod row;
mod sql;
mod statements;
mod table;
pub mod task;

pub use clock::{Clock, DatabaseClock, ManualClock};
pub use error::{Error, Result};
pub use fenced::FencedQuery;
pub use heartbeat::Heartbeat;
pub use keeper::LeaseKeeper;
pub use named::{NamedLease, NamedLeases};
pub use row::{Lease, LeaseId, RowLeases};
pub use sql::{Binds, Sql};
pub use statements::KeyClaim;
pub use table::{Completion, TableSpec, TableSpecBuilder};

/// The crate's migrations: the `leases_named` table for named leases. Row leases live in the
/// user's own tables (see [`TableSpec`]).
///
/// Its history is kept in `_leases_migrations` (set in the crate's `sqlx.toml`), not in
/// `_sqlx_migrations`: run it beside your own migrator (`leases::MIGRATOR.run(&pool)`, then yours),
/// with no merging and no version to coordinate.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();
