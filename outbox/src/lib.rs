//! A transactional outbox for PostgreSQL with a lease-based relay to Kafka.
//!
//! A service writes its business rows and the events that describe them in **one database
//! transaction** ([`enqueue`], [`enqueue_many`]). A [`Relay`] claims committed events in batches
//! with [`leases`] (owner, fencing token, expiry; `FOR UPDATE SKIP LOCKED`), publishes them
//! through a [`Publisher`] ([`KafkaPublisher`]: idempotent producer, `acks=all`, key = aggregate
//! id), and then marks each one published, schedules a retry with backoff, or moves it to the
//! dead-letter table, every statement guarded by the lease. A running relay claims the next batch
//! while the current one is in flight ([`RelayConfig::pipeline_depth`]), so the database, the
//! relay and the broker work at the same time.
//!
//! # Quick start
//!
//! ```no_run
//! use outbox::{KafkaPublisher, NewEvent, Relay, RelayConfig};
//!
//! # async fn run() -> outbox::Result<()> {
//! let pool = sqlx::PgPool::connect("postgres://localhost/app").await?;
//! outbox::MIGRATOR.run(&pool).await.map_err(sqlx::Error::from)?;
//!
//! // In the request handler: the event commits or rolls back with the business change.
//! let mut tx = pool.begin().await?;
//! // ... INSERT INTO orders ... on &mut *tx
//! let event = NewEvent::json("orders", "order", "42", "OrderPlaced", &serde_json::json!({"total": 990}))?;
//! outbox::enqueue(&mut tx, &event).await?;
//! tx.commit().await?;
//!
//! // Once per process: publish everything committed, until shutdown.
//! let relay = Relay::new(pool.clone(), KafkaPublisher::new("127.0.0.1:9092")?, RelayConfig::default())?;
//! let handle = relay.spawn();
//! // ...
//! handle.shutdown().await; // finishes the batches in flight and holds no lease afterwards
//! # Ok(()) }
//! ```
//!
//! # Guarantees
//!
//! - **No event lost.** An event is in the outbox if and only if its transaction committed. It
//!   leaves the outbox only after the broker acknowledged it (with `acks=all`), or into the
//!   dead-letter table. A relay that dies at any point holds its events only until their lease
//!   expires; another relay then publishes them.
//! - **At least once.** The broker may receive an event more than once: when a relay dies (or
//!   loses its lease) after the broker acknowledged a message but before the mark, or when a
//!   publish's outcome was unknown and is retried. Consumers deduplicate by the `event-id` header
//!   (the `inbox` crate does this).
//! - **Per-aggregate order** (on by default, [`RelayConfig::ordered`]). An event is not claimed
//!   while an older event of the same aggregate (same `aggregate_type` and `aggregate_id`) is
//!   unpublished — pending, leased by any relay, or waiting for a retry — so one aggregate's events
//!   first reach the broker in `seq` order, which is commit order when the aggregate's writers are
//!   serialized (as they are by a lock on the aggregate's row). All of them go to one partition
//!   (key = aggregate id). An aggregate's backlog is claimed in runs of consecutive events and
//!   each run is published in order without waiting for one acknowledgement per event; a run is
//!   gap-free ([`Publisher::publish_run`]): after a retriable failure nothing later of the run
//!   reaches the broker, so a later event never appears before an earlier one that failed. A
//!   failing event holds back its own aggregate only. A dead-lettered event no longer holds its
//!   aggregate back: later events flow, and a replay publishes it after them.
//! - **Poison isolation.** A permanent failure (too large, invalid) or an event out of attempts
//!   ([`Backoff`]) moves to `outbox_dead_letters` with its reason and last error; see
//!   [`dead_letters`] to list, replay or discard (or the `outboxctl` operator CLI, from a shell).
//! - **Fencing.** Marking, retrying and dead-lettering check the lease's owner and token, so a
//!   relay whose lease expired and was re-claimed cannot change the new owner's state. A run is
//!   leased through its first event (the claim writes that row only), and the events behind it are
//!   fenced through it.
//!
//! # Exactly once on the wire
//!
//! The default relay is at least once. [`exactly_once::ExactlyOnceRelay`] is the opt-in mode for
//! topics read by consumers that cannot deduplicate (analytics sinks, stream processors, other
//! teams' services): every batch is a Kafka transaction that also writes a progress record, and a
//! relay that takes over reads that record before it publishes, so a `read_committed` consumer
//! sees each event once, in per-aggregate order, whatever crashes or pauses happen between the
//! broker and the mark. Its module documentation states the guarantee, the cost and the limits.
//!
//! # Operations
//!
//! New events wake relays through `LISTEN outbox_events` (a statement trigger sends `NOTIFY`), so
//! an event is published milliseconds after its commit; the poll interval is only the fallback.
//! Metrics (through the `metrics` facade), each labelled `relay` with [`RelayConfig::name`] so
//! the relays of several services stay apart: counters `outbox_published_total`,
//! `outbox_retried_total`, `outbox_failed_total`, `outbox_dead_lettered_total`; histogram
//! `outbox_batch_seconds`; gauges (refreshed every 5 s by a running relay) `outbox_pending`,
//! `outbox_oldest_pending_age_seconds`, `outbox_leased` (events leased right now) and
//! `outbox_dead_letters` (dead-letter depth: alert when it is above zero). Each batch runs in an
//! `outbox.batch` tracing span. [`status`] reads the backlog, the leases and the dead letters in
//! one call (what `outboxctl status` prints); [`purge_published`] deletes kept events and
//! [`count_purgeable`] is its dry run.

#![forbid(unsafe_code)]

pub mod dead_letters;
mod error;
mod event;
pub mod exactly_once;
mod health;
mod publisher;
mod relay;
mod stats;
mod status;
mod table;
mod trace;

/// The Kafka client this crate is built on, re-exported so that the configuration a user hands
/// to [`KafkaPublisher`] and [`exactly_once::ExactlyOnceRelay`] comes from the same version.
pub use rdkafka;
/// The PostgreSQL driver this crate is built on, re-exported so that the pools and transactions a
/// user hands in come from the same version.
pub use sqlx;

pub use error::{Error, Result};
pub use event::{NewEvent, enqueue, enqueue_many};
pub use health::{RelayMonitor, Stalled};
pub use leases::retry::Backoff;
pub use leases::task::Background;
pub use publisher::kafka::KafkaPublisher;
pub use publisher::{Event, PublishError, Publisher};
pub use relay::{BatchOutcome, Relay, RelayConfig, Retention};
pub use stats::{count_purgeable, purge_published};
pub use status::{DeadLetterGroup, OutboxStatus, OwnerLeases, PendingEvent, status};

/// The outbox's migrations: `outbox_events`, `outbox_dead_letters` and the notify trigger.
///
/// Its history is kept in `_outbox_migrations` (set in the crate's `sqlx.toml`), not in
/// `_sqlx_migrations`: run it beside your own migrator (`outbox::MIGRATOR.run(&pool)`, then yours),
/// with no merging and no version to coordinate.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();
