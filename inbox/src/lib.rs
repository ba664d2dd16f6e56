//! The consuming side: apply each event once.
//!
//! Brokers deliver at least once: a consumer that crashes before committing its offset, a
//! rebalance, or a relay that published twice all hand the same event over again. This crate makes
//! the *effect* happen once:
//!
//! - **Inbox**: [`receive`] (one event) and [`receive_batch`] (many, in one statement) record
//!   `(consumer, event id)` in the `inbox` table, inside the handler's own transaction, and say
//!   which events are fresh and which are duplicates. The record commits if and only if the
//!   effects do, so a redelivered event finds its id and is skipped. [`purge`] forgets old
//!   records ([`count_purgeable`] is its dry run); [`status`] says how many there are.
//! - **Consumer runner**: [`Consumer`] runs the whole consume loop over Kafka, one task per
//!   assigned partition, the partitions in parallel: a batch of a partition's messages is
//!   decoded (a [`Handler`] is an allowlist of event types) and applied in one transaction with
//!   its inbox rows ([`Handler::handle_batch`]: per event by default, set-based if you override
//!   it), then the offset is stored; retries in partition order; a poison message is isolated
//!   (its batch applied again one message at a time) and published alone to a dead-letter topic
//!   with its [reason](DeadLetterReason) and origin.
//!
//! The producing side is the `outbox` crate (events written in the business transaction, relayed
//! to Kafka with an `event-id` header, which the runner reads). The HTTP `Idempotency-Key` layer
//! is the `idempotency` crate.
//!
//! # Quick start
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use inbox::{Consumer, ConsumerConfig, Handler, HandlerError, Message};
//! use sqlx::PgConnection;
//!
//! struct Inventory;
//!
//! impl Handler for Inventory {
//!     type Event = String; // the reserved sku
//!
//!     fn decode(&self, message: &Message) -> Result<String, HandlerError> {
//!         match message.header_str("event-type") {
//!             Some("StockReserved") => String::from_utf8(message.payload().unwrap_or_default().to_vec())
//!                 .map_err(HandlerError::decode),
//!             other => Err(HandlerError::unknown_event_type(other.unwrap_or("(none)"))),
//!         }
//!     }
//!
//!     async fn handle(
//!         &self,
//!         conn: &mut PgConnection,
//!         sku: String,
//!         _message: &Message,
//!     ) -> Result<(), HandlerError> {
//!         // In the runner's transaction, with the inbox record: both commit, or neither.
//!         sqlx::query("UPDATE stock SET reserved = reserved + 1 WHERE sku = $1")
//!             .bind(sku)
//!             .execute(&mut *conn)
//!             .await?; // transient errors retry, others dead-letter
//!         Ok(())
//!     }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::PgPool::connect("postgres://localhost/app").await?;
//! inbox::MIGRATOR.run(&pool).await?;
//!
//! let mut kafka = rdkafka::ClientConfig::new();
//! kafka.set("bootstrap.servers", "127.0.0.1:9092");
//! let config = ConsumerConfig::new("inventory", kafka)
//!     .topic("orders")
//!     .dead_letter_topic("inventory.dead-letters");
//! let handle = Consumer::new(pool.clone(), config, Inventory)?.spawn();
//!
//! // Once an hour or so, forget records older than the broker may redeliver:
//! inbox::purge(&pool, Duration::from_secs(14 * 24 * 3600), 1000).await?;
//!
//! // ... until shutdown:
//! handle.shutdown().await; // finishes the batches in hand, commits offsets, leaves the group
//! # Ok(()) }
//! ```
//!
//! # Guarantees
//!
//! - **Exactly-once effect** per (consumer, event id), over an at-least-once broker, as long as
//!   every effect is written in the transaction that records the event (the [`Handler`]'s
//!   connection, or the caller's transaction given to [`receive`]) and the inbox record is kept
//!   longer than the broker may redeliver the event ([`purge`]'s `older_than`). An effect outside
//!   that transaction (a call to another service, a message sent) is at least once.
//! - **At most one applies.** Two instances handling the same event at the same time serialize
//!   on its inbox row: the second waits for the first's transaction, then sees a duplicate (or,
//!   if the first rolled back, applies the event itself).
//! - **No event skipped.** The runner stores a batch's offset only after its transaction
//!   committed (and a dead-lettered message's only after the broker acknowledged its dead
//!   letter): a crash at any point redelivers the batch, and the inbox makes the redelivery a
//!   no-op. A rebalance stores offsets of committed batches only.
//! - **Partition order.** A partition's messages are applied by one task at a time, in order. A
//!   retriable failure applies the same batch again after a backoff while its partition waits;
//!   only a permanent failure (or retries exhausted) moves past a message, to the dead-letter
//!   topic, and only that message: the rest of its batch is applied, in order.
//! - **Partitions at once.** Batches of different partitions run in separate transactions at
//!   the same time. If their events lock the same rows, take those locks at the start of the
//!   batch in one order ([`Handler::lock_batch`]), or two batches can deadlock (PostgreSQL then
//!   fails one after `deadlock_timeout`, and it is retried).
//!
//! # Errors
//!
//! One [`Error`] type for the inbox and the runner, with [`Error::is_retriable`]; a message that
//! cannot be applied is a [`HandlerError`], which says whether to retry or to dead-letter.

#![forbid(unsafe_code)]

mod consumer;
mod error;
mod table;

/// The Kafka client this crate is built on, re-exported so that the configuration a user hands
/// to [`ConsumerConfig`] comes from the same version.
pub use rdkafka;
/// The PostgreSQL driver this crate is built on, re-exported so that the pools and connections a
/// user hands in come from the same version.
pub use sqlx;

pub use consumer::{
    Consumer, ConsumerConfig, ConsumerHandle, ConsumerMonitor, ConsumerStats, DeadLetterReason,
    Handler, HandlerError, Message,
};
pub use error::{Error, Result};
pub use table::{Delivery, InboxStatus, count_purgeable, purge, receive, receive_batch, status};

/// The crate's migrations: the `inbox` table (one row per consumer and event applied).
///
/// Its history is kept in `_inbox_migrations` (set in the crate's `sqlx.toml`), not in
/// `_sqlx_migrations`: run it beside your own migrator (`inbox::MIGRATOR.run(&pool)`, then yours),
/// with no merging and no version to coordinate. A database whose inbox was created by an earlier
/// release of the `idempotency` crate (`idempotency_inbox`) is adopted: its records move to
/// `inbox`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();
