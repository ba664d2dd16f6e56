//! Exactly once on the wire: a relay mode that publishes every batch in one Kafka transaction
//! together with a record of the outbox rows it covers.
//!
//! # Quick start
//!
//! ```no_run
//! use outbox::exactly_once::{ExactlyOnceConfig, ExactlyOnceRelay};
//!
//! # async fn run() -> outbox::Result<()> {
//! let pool = sqlx::PgPool::connect("postgres://localhost/app").await?;
//! // The outbox's tables and the shard leases' table.
//! outbox::MIGRATOR.run(&pool).await.map_err(sqlx::Error::from)?;
//! leases::MIGRATOR.run(&pool).await.map_err(sqlx::Error::from)?;
//!
//! let mut kafka = outbox::rdkafka::ClientConfig::new();
//! kafka.set("bootstrap.servers", "127.0.0.1:9092");
//! // One stable owner per instance (a pod or host name): a restart takes its shards back at once.
//! let config = ExactlyOnceConfig::new("orders").owner("orders-relay-0");
//! let relay = ExactlyOnceRelay::new(pool, &kafka, config).await?;
//! let handle = relay.spawn();
//! // ...
//! handle.shutdown().await; // commits and marks the batches in flight, then releases the shards
//! # Ok(()) }
//! ```
//!
//! # What "exactly once" means here
//!
//! A consumer that reads with `isolation.level=read_committed` (the `inbox` crate's runner
//! does by default) sees each outbox event — each event id — **once**, in per-aggregate order,
//! whatever relay crashes, pauses or broker restarts happen in between. Consumers reading
//! `read_uncommitted` may also see the records of aborted transactions. This is Kafka's own
//! transactional guarantee, extended to the outbox table by the progress records below; it
//! holds while the outbox database and the progress topic are the ones the relay wrote to (see
//! [what it does not cover](#what-it-does-not-cover)).
//!
//! # How
//!
//! - **Shards.** The outbox is split into [`shards`](ExactlyOnceConfig::shards) by a hash of the
//!   aggregate (type and id), so one aggregate always belongs to one shard. Each shard is owned
//!   through a named lease of [`leases`] (`outbox/<name>/<shard>-of-<shards>`) and has a stable
//!   `transactional.id` (`<name>-<shard>-of-<shards>`). Shards publish in parallel.
//! - **Shared between relays.** Every relay over the outbox holds a member lease
//!   (`outbox/<name>/members/<owner>`); the live members share the shards out by name (member
//!   `i` of `n` takes the shards `s` with `s % n == i`), so two relays hold two of four shards
//!   each and adding a relay adds throughput. When a relay joins or leaves, the others notice
//!   within a third of the lease ttl; a shard that changes hands is released after its
//!   transaction in flight committed and was marked. A relay that dies leaves its shards to the
//!   others once its leases expire.
//! - **One transaction per batch.** A shard's owner claims its oldest unpublished events in `seq`
//!   order and publishes them in one Kafka transaction together with a **progress record** on the
//!   shard's partition of the compacted progress topic. The record names the outbox (its
//!   identity, a random id made by the migration in `outbox_identity`), the shard lease's owner
//!   and token, and the batch's rows by `seq` *and* event id. Only after the Kafka commit does the
//!   owner mark the rows in PostgreSQL, in one statement fenced by the shard lease's token.
//! - **Taking over.** A new owner first calls `init_transactions` with the shard's
//!   `transactional.id`: the broker completes or aborts the previous owner's open transaction and
//!   fences that producer, so its late sends and commits are refused. The new owner then reads
//!   the shard's last committed progress record and marks the rows it lists (the previous owner
//!   may have died between its Kafka commit and its mark) before it publishes anything — but only
//!   when the record provably describes this outbox's events: it names this outbox's identity,
//!   its lease token is older than the new owner's (or it is the new owner's own, from an earlier
//!   episode of the same lease), and only rows whose `seq` and event id both match are marked. A
//!   record that fails a check is logged at `WARN` and ignored, never used to delete. The marks
//!   are fenced by the lease token, so a previous owner that wakes up changes nothing in
//!   PostgreSQL either.
//! - **Owners.** The shard leases carry [`owner`](ExactlyOnceConfig::owner) and an instance id
//!   new to each relay (`<owner>#<instance>`). A relay that starts releases the leases of every
//!   earlier instance of its owner, so a restart with a stable owner takes its shards back at
//!   once (under new tokens) instead of waiting for them to expire. Two live processes given one
//!   owner cannot both publish: the later one fences the earlier one (the tokens move on, and
//!   `init_transactions` fences its producers), which becomes a standby.
//! - **Poison events.** An event the broker or client refuses for good (too large, invalid topic)
//!   aborts the transaction; it is moved to `outbox_dead_letters` with its reason, and the rest of
//!   the batch is published again in the next transaction. An event whose transactions keep
//!   failing for a retriable reason of its own is dead-lettered after
//!   [`Backoff::max_attempts`] attempts. A transaction whose progress record was not delivered
//!   either failed as a whole (the broker away or restarting): its retriable failures count
//!   against no event, so an outage never dead-letters anything.
//!
//! # Failures covered
//!
//! A relay killed at any point (before, during or after the Kafka commit, before the mark); a
//! relay paused past its lease and resumed; a lost database connection; a broker restart or
//! pause in the middle of transactions (the aborted ones are invisible to `read_committed`
//! consumers, and their events go out again in a later transaction). A commit that times out
//! while the broker is away is resumed on the same producer for as long as the shard lease is
//! held, and nothing else is published before its outcome is known.
//!
//! That outcome is not taken from librdkafka's answer: across a broker restart, a resumed commit
//! has been reported a success for a transaction the broker had aborted, and marking its rows would
//! lose the batch (`tests/tests/exactly_once_resumed_commit.rs` gives that answer on purpose, from
//! a proxy in front of the broker). So after a commit that needed resuming the shard starts a new
//! episode: its new producer's `init_transactions` completes or aborts whatever is pending, then
//! the shard waits until its partition's last stable offset is past the transaction's own progress
//! record (the offset its delivery report gave) and reads that record `read_committed`. The rows
//! are marked only if it is there, and published again otherwise.
//!
//! # What it does not cover
//!
//! Each case below loses nothing; where it says "again", an event may reach `read_committed`
//! consumers twice (the consumer's inbox still applies it once).
//!
//! - **A database recreated** (a test database reset, an outbox moved to a new server) under the
//!   same relay name: it has a new identity, so the old database's records are ignored, and
//!   every event of the new one is published.
//! - **A database restored from a backup or to a point in time**: the identity is the same, but
//!   the events the last records list are matched by id, so new events that reuse their `seq`s
//!   are published; events published after the backup was taken go out again. A record whose
//!   token the restored lease table hands out again is ignored (its events go out again).
//! - **A relay renamed, the shard count changed, or the progress topic deleted**: the new
//!   configuration does not read the old records, so the last batch of a shard that crashed
//!   between commit and mark goes out again. Stop the relays of the old configuration cleanly
//!   first (a clean shutdown marks every committed batch) and nothing is repeated. Compaction of
//!   the progress topic keeps the last record of each shard, which is the one a takeover reads.
//! - **Two outboxes given one relay name** (and one Kafka cluster): their relays keep fencing
//!   each other's producers and log at `WARN` that they ignored another outbox's record. Nothing
//!   is lost, but they stall each other: give each outbox its own name.
//! - **A default [`Relay`](crate::Relay) beside this one** over the same outbox can publish an
//!   event again: run one mode at a time.
//! - **A hanging transaction on the broker**: Kafka can leave a transaction open on a partition
//!   while its coordinator no longer tracks it. Seen here on a one-node cluster (Apache Kafka
//!   4.4) restarted after a crash: its controller fences the old broker registration, every
//!   partition is leaderless for a moment, and the coordinator drops the markers it was sending
//!   to them as if the partitions had been deleted (it logs "likely deleted already"). The
//!   partition's last stable offset never moves again until an operator aborts the transaction
//!   (`kafka-transactions.sh find-hanging`, then `abort`). Every `read_committed` reader of that
//!   partition waits, this relay included: a shard whose resumed commit's record sits behind it
//!   logs it at `ERROR` and publishes nothing until it is aborted, then publishes the batch
//!   again. Abort every partition `find-hanging` lists: if the coordinator had decided to commit
//!   and some partitions got their markers, the batch reaches `read_committed` readers twice.
//! - **Effects in other systems** (a consumer's database, an email) still need the consumer's
//!   inbox: exactly once on the wire does not make a consumer's own processing exactly once.
//!
//! # Operations
//!
//! Metrics, labelled `relay` with the relay's name: `outbox_published_total`,
//! `outbox_dead_lettered_total`, `outbox_transactions_aborted_total`, the histogram
//! `outbox_batch_seconds`, and the outbox gauges of the default relay (`outbox_pending`,
//! `outbox_oldest_pending_age_seconds`, `outbox_dead_letters`). Shard ownership is visible in
//! `leases_named` (`outbox/<name>/…` rows: owner, token, expiry); a new owner that marks a
//! previous owner's committed batch logs it at `INFO`. [`ExactlyOnceRelay::monitor`] feeds a
//! readiness check, as [`Relay::monitor`](crate::Relay::monitor) does for the default relay.
//! librdkafka's own reports (a broker away, a producer fenced by a takeover) are logged at
//! `WARN` at most, with target `librdkafka`; `ERROR` is kept for dead-lettered events and a
//! hanging transaction, so an operator can alert on it.
//!
//! # Costs and limits
//!
//! - A commit per batch (a few broker round trips), and `read_committed` consumers see an event
//!   only once its transaction commits: see `docs/benchmarks.md` for the figures against the
//!   default relay.
//! - One transaction in flight per shard; parallelism comes from shards.
//! - The claim walks the outbox in `seq` order; with [`Retention::Keep`] it walks the kept,
//!   published rows too, so purge them regularly.
//! - `leases_named` keeps one member row per relay owner; with the default owner (new for every
//!   process) that is one row per process ever started, so prefer stable owners.

mod bury;
mod client;
mod members;
mod progress;
mod settle;
mod shard;

use std::sync::Arc;
use std::time::Duration;

use leases::NamedLeases;
use leases::retry::Backoff;
use rdkafka::ClientConfig;
use sqlx::PgPool;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use crate::relay::{listen, notified};
use crate::{Background, Error, RelayMonitor, Result, Retention};
use leases::task::CancellationToken;

/// The largest [`ExactlyOnceConfig::batch_size`].
const MAX_BATCH: u32 = 10_000;

/// How an [`ExactlyOnceRelay`] works. Every setter documents its default.
#[derive(Debug, Clone)]
pub struct ExactlyOnceConfig {
    name: String,
    owner: String,
    shards: u32,
    progress_topic: String,
    batch_size: u32,
    lease_ttl: Duration,
    poll_interval: Duration,
    transaction_timeout: Duration,
    backoff: Backoff,
    retention: Retention,
}

impl ExactlyOnceConfig {
    /// A relay named `name`: the prefix of its shards' `transactional.id`s and lease names, its
    /// progress topic's default name, and its metrics label `relay`. Give every outbox on a
    /// Kafka cluster its own name: two outboxes with one name would fence each other's producers.
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        Self {
            owner: format!("relay-{}", uuid::Uuid::now_v7()),
            shards: 4,
            progress_topic: format!("{name}.outbox-progress"),
            name,
            batch_size: 500,
            lease_ttl: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            transaction_timeout: Duration::from_secs(30),
            backoff: Backoff::default(),
            retention: Retention::default(),
        }
    }

    /// Who this relay is: give each instance of a deployment a stable name of its own (a pod or
    /// host name), so that a restarted instance takes its shards back at once instead of waiting
    /// for their leases to expire. Default: `relay-<uuidv7>`, new for every relay.
    ///
    /// The shard leases carry the owner and an instance id new to each relay
    /// (`<owner>#<instance>`, visible in `leases_named`). When a relay starts, it releases the
    /// shard leases of every *earlier* instance of its owner, which bumps their fencing tokens:
    /// an earlier instance that is still alive (two live processes given one owner by mistake)
    /// is fenced, in PostgreSQL by the token and in Kafka by `init_transactions`, and becomes a
    /// standby. So a stable owner is safe, but gives every live instance its own.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = owner.into();
        self
    }

    /// How many shards the outbox is split into: at most this many transactions run at once.
    /// Every relay over one outbox must use the same count. Default: 4.
    pub fn shards(mut self, shards: u32) -> Self {
        self.shards = shards;
        self
    }

    /// The compacted topic the relay owns for its progress records; it is created (with one
    /// partition per shard) when missing. Default: `<name>.outbox-progress`.
    pub fn progress_topic(mut self, topic: impl Into<String>) -> Self {
        self.progress_topic = topic.into();
        self
    }

    /// Events per transaction, at most 10,000. Default: 500.
    pub fn batch_size(mut self, n: u32) -> Self {
        self.batch_size = n;
        self
    }

    /// How long a shard lease lasts without renewal (renewed every third of it): how long the
    /// shards of a relay that died wait before another relay takes them. Default: 30 s.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// How often a shard looks for events when no notification arrives. Default: 1 s.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// How long `init_transactions`, a commit or an abort may block before it counts as failed.
    /// Default: 30 s.
    pub fn transaction_timeout(mut self, timeout: Duration) -> Self {
        self.transaction_timeout = timeout;
        self
    }

    /// The delay between failed transactions of a shard, and how many times one event's
    /// transaction may fail before the event is dead-lettered. Default: [`Backoff::default`].
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// What to do with published rows. Default: [`Retention::Delete`].
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// The name of shard `shard`'s lease.
    fn shard_lease(&self, shard: u32) -> String {
        format!("outbox/{}/{shard}-of-{}", self.name, self.shards)
    }
}

/// Publishes the outbox with Kafka transactions: see the [module documentation](self) for the
/// guarantee, how it is kept and what it costs.
///
/// ```no_run
/// use outbox::exactly_once::{ExactlyOnceConfig, ExactlyOnceRelay};
///
/// # async fn run(pool: sqlx::PgPool) -> outbox::Result<()> {
/// let mut kafka = rdkafka::ClientConfig::new();
/// kafka.set("bootstrap.servers", "127.0.0.1:9092");
/// let relay = ExactlyOnceRelay::new(pool, &kafka, ExactlyOnceConfig::new("orders")).await?;
/// let handle = relay.spawn();
/// // ...
/// handle.shutdown().await; // commits and marks the batches in flight, then releases the shards
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ExactlyOnceRelay {
    shared: Arc<shard::Shared>,
}

impl ExactlyOnceRelay {
    /// A relay over the outbox in `pool`'s database (run [`MIGRATOR`](crate::MIGRATOR) and
    /// [`leases::MIGRATOR`] first), producing with `kafka` (at least `bootstrap.servers`; the
    /// relay sets `transactional.id`, idempotence and `acks=all`). Creates the progress topic
    /// when it is missing.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for zero shards, batch size, lease ttl, poll interval or
    /// transaction timeout, a batch size over 10,000, or a progress topic with fewer partitions
    /// than shards; [`Error::Kafka`] for a client configuration librdkafka refuses, or when the
    /// progress topic cannot be created or described.
    pub async fn new(
        pool: PgPool,
        kafka: &ClientConfig,
        config: ExactlyOnceConfig,
    ) -> Result<Self> {
        if config.shards == 0
            || config.batch_size == 0
            || config.lease_ttl.is_zero()
            || config.poll_interval.is_zero()
            || config.transaction_timeout.is_zero()
        {
            return Err(Error::InvalidConfig(
                "shards, batch size, lease ttl, poll interval and transaction timeout must be \
                 greater than zero"
                    .into(),
            ));
        }
        if config.batch_size > MAX_BATCH {
            return Err(Error::InvalidConfig(format!(
                "a batch holds at most {MAX_BATCH} events (its progress record must stay small)"
            )));
        }
        let outbox = migrated(&pool).await?;
        let kafka = crate::publisher::kafka::producer_config(kafka);
        // Refuse a configuration librdkafka refuses for a transactional producer (a
        // `message.timeout.ms` above `transaction.timeout.ms`, say) now, not in every shard.
        let _: rdkafka::producer::FutureProducer<client::Quiet> = kafka
            .clone()
            .set("transactional.id", format!("{}-check", config.name))
            .create_with_context(client::Quiet)?;
        let clients = client::reader_config(&kafka);
        progress::ensure_topic(&clients, &config.progress_topic, config.shards).await?;
        let instance = uuid::Uuid::new_v4().simple().to_string();
        Ok(Self {
            shared: Arc::new(shard::Shared {
                pool,
                kafka,
                clients,
                outbox,
                lease_owner: format!("{}#{}", config.owner, &instance[..12]),
                // Its transactions fail after `transaction.timeout.ms`: no batch waits unbounded.
                monitor: RelayMonitor::new(config.name.clone(), Duration::MAX),
                config,
                named: NamedLeases::new(),
                wake: Notify::new(),
            }),
        })
    }

    /// Reads whether this relay is publishing, from another task (for a readiness check); take
    /// it before [`spawn`](Self::spawn). Stalled from a transaction that was aborted without
    /// dead-lettering anything, an ownership episode that ended on a Kafka or database error, or
    /// a failed claim, until a shard commits again or takes its shard over successfully (any
    /// shard counts).
    pub fn monitor(&self) -> RelayMonitor {
        self.shared.monitor.clone()
    }

    /// Runs the relay in the background: one task per shard, each taking its shard's lease when
    /// it is free. [`Background::shutdown`] lets every shard commit and mark its transaction in
    /// flight, then releases the shard leases; [`Background::abort`] stops it at once, in the
    /// middle of a transaction if one is open (the next owner's `init_transactions` aborts it),
    /// and the shard leases are released as their keepers stop.
    pub fn spawn(self) -> Background {
        Background::spawn(|stop| self.run(stop))
    }

    async fn run(self, stop: CancellationToken) {
        self.take_back().await;
        let (assignment, assigned) = watch::channel(members::Assignment::default());
        let mut shards = JoinSet::new();
        for shard in 0..self.shared.config.shards {
            shards.spawn(shard::run(
                self.shared.clone(),
                shard,
                assigned.clone(),
                stop.clone(),
            ));
        }
        shards.spawn(members::run(self.shared.clone(), assignment, stop.clone()));
        let mut listener = match listen(&self.shared.pool).await {
            Ok(listener) => Some(listener),
            Err(error) => {
                tracing::warn!(%error, "outbox: LISTEN failed; polling only");
                None
            }
        };
        let gauges = crate::stats::spawn(self.shared.pool.clone(), self.shared.config.name.clone());
        while !stop.is_cancelled() {
            tokio::select! {
                () = stop.cancelled() => {}
                () = notified(&mut listener) => self.shared.wake.notify_waiters(),
            }
        }
        gauges.shutdown().await;
        while shards.join_next().await.is_some() {}
        tracing::info!(owner = %self.shared.lease_owner, "outbox: exactly-once relay stopped");
    }

    /// Releases the shard leases held by earlier instances of this relay's owner, so that this
    /// instance (or, if an earlier one is still alive, whichever of them acquires first) takes
    /// them under new tokens at once. Best effort: a lease it cannot release expires.
    async fn take_back(&self) {
        let shared = &self.shared;
        let earlier = format!("{}#", shared.config.owner);
        let member = format!("{}{}", members::prefix(shared), shared.config.owner);
        let shards = (0..shared.config.shards).map(|shard| shared.config.shard_lease(shard));
        for name in shards.chain([member]) {
            let released = match shared.named.holder(&shared.pool, &name).await {
                Ok(Some(lease))
                    if lease.owner.starts_with(&earlier) && lease.owner != shared.lease_owner =>
                {
                    shared
                        .named
                        .release(&shared.pool, &lease)
                        .await
                        .map(|released| released.then_some(lease))
                }
                Ok(_) => Ok(None),
                Err(error) => Err(error),
            };
            match released {
                Ok(Some(lease)) => tracing::info!(
                    lease = %name,
                    previous = %lease.owner,
                    "outbox: took the lease back from an earlier instance of this owner"
                ),
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%error, lease = %name, "outbox: could not take the lease back");
                }
            }
        }
    }
}

/// Checks that the tables the relay needs exist, and returns the outbox's identity.
async fn migrated(pool: &PgPool) -> Result<uuid::Uuid> {
    let (events, identity, named): (bool, bool, bool) = sqlx::query_as(
        "SELECT to_regclass('outbox_events') IS NOT NULL,
                to_regclass('outbox_identity') IS NOT NULL,
                to_regclass('leases_named') IS NOT NULL",
    )
    .fetch_one(pool)
    .await?;
    let missing = if !events || !identity {
        Some(("outbox_events and outbox_identity", "outbox::MIGRATOR"))
    } else if !named {
        Some(("leases_named", "leases::MIGRATOR"))
    } else {
        None
    };
    if let Some((tables, migrator)) = missing {
        return Err(Error::NotMigrated { tables, migrator });
    }
    Ok(sqlx::query_scalar("SELECT id FROM outbox_identity")
        .fetch_one(pool)
        .await?)
}
