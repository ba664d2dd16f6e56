//! One shard: held through a named lease, published through one transactional producer, one
//! transaction at a time.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::join_all;
use leases::task::CancellationToken;
use leases::{LeaseKeeper, NamedLease, NamedLeases};
use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer as _};
use sqlx::PgPool;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::Instrument;
use uuid::Uuid;

use super::ExactlyOnceConfig;
use super::client::{Quiet, TxProducer, blamed};
use super::members::Assignment;
use super::progress::{Place, Progress};
use crate::RelayMonitor;
use crate::publisher::kafka::record;
use crate::publisher::{Event, PublishError};
use crate::table::{self, shard::Shard};

/// What every shard of a relay shares.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) pool: PgPool,
    /// The transactional producers' settings.
    pub(super) kafka: ClientConfig,
    /// The progress reader's settings.
    pub(super) clients: ClientConfig,
    pub(super) config: ExactlyOnceConfig,
    /// The outbox's identity (`outbox_identity`), written into every progress record.
    pub(super) outbox: Uuid,
    /// The owner of this relay's shard leases: the configured owner and this relay's instance.
    pub(super) lease_owner: String,
    pub(super) named: NamedLeases,
    /// Woken on every `outbox_events` notification.
    pub(super) wake: Notify,
    /// Whether the relay publishes (any shard counts).
    pub(super) monitor: RelayMonitor,
}

/// Why a shard's ownership episode ended.
#[derive(Debug, thiserror::Error)]
pub(super) enum Ended {
    /// The shard lease was taken over: another relay owns the shard now.
    #[error("the shard lease was lost")]
    LeaseLost,
    /// The broker fenced this producer, or a transactional call failed for good.
    #[error("transactional producer failed: {0}")]
    Kafka(#[from] KafkaError),
    /// The database or the progress topic failed.
    #[error(transparent)]
    Outbox(#[from] crate::Error),
    /// A commit succeeded only after it was resumed: its outcome is read back from the progress
    /// topic by the next episode, not taken from librdkafka's answer.
    #[error("a resumed commit reported success; its outcome is read back from the progress topic")]
    Resumed(Pending),
}

/// A transaction whose commit was resumed, kept until an episode has checked it (an episode that
/// fails first leaves it to the next).
#[derive(Debug)]
pub(super) struct Pending {
    /// What it covered.
    pub(super) progress: Progress,
    /// Where its progress record went, in the shard's partition.
    pub(super) offset: i64,
}

impl From<sqlx::Error> for Ended {
    fn from(error: sqlx::Error) -> Self {
        Self::Outbox(error.into())
    }
}

/// How one transaction ended.
enum Transaction {
    Committed,
    /// Aborted: the failed events (by index in the batch), or none when the transaction as a
    /// whole failed.
    Aborted(Vec<(usize, PublishError)>),
}

/// Takes shard `shard` whenever it is assigned to this relay and its lease is free, and gives it
/// up (after its transaction in flight) when it is assigned to another relay, until `stop`.
pub(super) async fn run(
    shared: Arc<Shared>,
    shard: u32,
    mut assigned: watch::Receiver<Assignment>,
    stop: CancellationToken,
) {
    loop {
        let ours = tokio::select! {
            () = stop.cancelled() => return,
            ours = assigned.wait_for(|a| a.contains(shard)) => ours.map(|_| ()),
        };
        if ours.is_err() {
            return;
        }
        let give_up = stop.child_token();
        let mut watching = assigned.clone();
        let unassigned = async {
            if watching.wait_for(|a| !a.contains(shard)).await.is_ok() {
                give_up.cancel();
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            () = hold(&shared, shard, &give_up) => {}
            () = unassigned => {}
        }
    }
}

/// Owns shard `shard` whenever its lease is free, until `stop`; then releases it.
async fn hold(shared: &Arc<Shared>, shard: u32, stop: &CancellationToken) {
    let config = &shared.config;
    let mut keeper = match LeaseKeeper::start(
        shared.named.clone(),
        shared.pool.clone(),
        config.shard_lease(shard),
        shared.lease_owner.clone(),
        config.lease_ttl,
        config.lease_ttl / 3,
    ) {
        Ok(keeper) => keeper,
        Err(error) => {
            tracing::error!(%error, shard, "outbox: cannot keep the shard lease");
            return;
        }
    };
    let mut pending = None;
    loop {
        let lease = tokio::select! {
            () = stop.cancelled() => break,
            lease = keeper.acquired() => lease,
        };
        let span = tracing::info_span!("outbox.shard", shard, token = lease.token);
        let mut held = keeper.subscribe();
        let ended = shared
            .own(shard, &lease, stop, &mut held, &mut pending)
            .instrument(span)
            .await;
        let error = match ended {
            Ok(()) => break,
            Err(error) => error,
        };
        tracing::warn!(%error, shard, "outbox: shard stopped publishing");
        let message = error.to_string();
        let wait = async {
            match error {
                Ended::LeaseLost => replaced(&mut held, &lease).await,
                Ended::Kafka(_) | Ended::Resumed(_) => {
                    if let Ended::Resumed(resumed) = error {
                        pending = Some(resumed);
                    }
                    shared.monitor.publish_failed(message);
                    tokio::time::sleep(config.poll_interval).await;
                }
                Ended::Outbox(error) => {
                    shared.monitor.database_failed(error.to_string());
                    tokio::time::sleep(config.poll_interval).await;
                }
            }
        };
        tokio::select! {
            () = stop.cancelled() => break,
            () = wait => {}
        }
    }
    keeper.shutdown().await;
}

impl Shared {
    /// One ownership episode: fences the previous owner, settles its last transaction, then
    /// publishes batch after batch until `stop` (returning after the batch in flight is marked)
    /// or until the keeper no longer holds `lease` (checked between transactions: a transaction
    /// under way runs to its end, where the broker refuses its commit and the lease token its
    /// mark if another owner took over meanwhile).
    async fn own(
        &self,
        shard: u32,
        lease: &NamedLease,
        stop: &CancellationToken,
        held: &mut watch::Receiver<Option<NamedLease>>,
        pending: &mut Option<Pending>,
    ) -> Result<(), Ended> {
        let config = &self.config;
        let place = Place::new(&config.progress_topic, shard, config.shards);
        let producer: FutureProducer<Quiet> = self
            .kafka
            .clone()
            .set(
                "transactional.id",
                format!("{}-{shard}-of-{}", config.name, config.shards),
            )
            .create_with_context(Quiet)?;
        let producer = TxProducer::new(producer);
        // Make sure the lease is still ours before fencing whoever holds the transactional id.
        self.mark(lease, &[], &[]).await?;
        let timeout = config.transaction_timeout;
        producer
            .blocking(move |p| p.init_transactions(timeout))
            .await?;
        if let Some(resumed) = pending.as_ref() {
            self.settle_resumed(shard, lease, &place, resumed).await?;
            *pending = None;
        }
        let previous = place.last_committed(&self.clients, timeout).await?;
        self.settle(shard, lease, &previous).await?;
        // The broker and the database answered: the shard is ready to publish.
        self.monitor.progressed();
        // Consecutive aborted transactions (the backoff), and failed transactions per event.
        let mut failures = 0u32;
        let mut attempts = HashMap::new();
        let rows = Shard {
            index: shard,
            of: config.shards,
        };
        while !stop.is_cancelled() {
            if !holds(&held.borrow(), lease) {
                return Err(Ended::LeaseLost);
            }
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let batch = table::shard::claim(&self.pool, rows, config.batch_size).await?;
            if batch.is_empty() {
                self.monitor.idle();
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = woken => {}
                    () = replaced(held, lease) => {}
                    () = tokio::time::sleep(config.poll_interval) => {}
                }
                continue;
            }
            let started = Instant::now();
            let progress = Progress::of(self.outbox, lease, &batch);
            match self
                .transact(&producer, &place, lease, &batch, &progress)
                .await?
            {
                Transaction::Committed => {
                    self.monitor.progressed();
                    failures = 0;
                    attempts.clear();
                    self.mark(lease, &progress.seqs, &progress.ids).await?;
                    self.count("outbox_published_total", batch.len());
                    metrics::histogram!("outbox_batch_seconds", "relay" => config.name.clone())
                        .record(started.elapsed().as_secs_f64());
                }
                Transaction::Aborted(failed) => {
                    self.count("outbox_transactions_aborted_total", 1);
                    if self
                        .bury_failed(lease, &batch, &failed, &mut attempts)
                        .await?
                        > 0
                    {
                        self.monitor.progressed();
                        failures = 0;
                        continue;
                    }
                    let error = failed.first().map_or_else(
                        || "the transaction was aborted".to_owned(),
                        |(_, e)| e.to_string(),
                    );
                    self.monitor.publish_failed(error);
                    failures += 1;
                    let delay = config.backoff.delay(failures);
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = replaced(held, lease) => {}
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        Ok(())
    }

    /// Publishes `batch` and its progress record in one transaction.
    async fn transact(
        &self,
        producer: &TxProducer,
        place: &Place,
        lease: &NamedLease,
        batch: &[Event],
        progress: &Progress,
    ) -> Result<Transaction, Ended> {
        let timeout = self.config.transaction_timeout;
        producer.get().begin_transaction()?;
        let mut deliveries = Vec::with_capacity(batch.len() + 1);
        let mut failed = Vec::new();
        for (index, event) in batch.iter().enumerate() {
            match producer.get().send_result(record(event)) {
                Ok(delivery) => deliveries.push(delivery),
                Err((error, _)) => {
                    failed.extend(blamed(&error).map(|e| (index, e)));
                    break;
                }
            }
        }
        if failed.is_empty() {
            let progress = serde_json::to_vec(progress).map_err(crate::Error::from)?;
            match producer.get().send_result(place.record(&progress)) {
                Ok(delivery) => deliveries.push(delivery),
                Err((error, _)) => {
                    tracing::warn!(%error, "outbox: the progress record was refused")
                }
            }
        }
        let started = Instant::now();
        let delivered = join_all(deliveries).await;
        let delivered_after = started.elapsed();
        // Every event and the progress record acknowledged (none refused, none purged).
        let deliveries_ok =
            delivered.len() == batch.len() + 1 && delivered.iter().all(|d| matches!(d, Ok(Ok(_))));
        // The progress record goes last, to a partition of the relay's own: when it was not
        // acknowledged either, the broker failed the transaction as a whole (an outage, a
        // restart), and a retriable failure is not an event's own.
        let outage = !matches!(delivered.get(batch.len()), Some(Ok(Ok(_))));
        let progress_offset = match delivered.get(batch.len()) {
            Some(Ok(Ok(delivery))) => delivery.offset,
            _ => -1,
        };
        for (index, delivered) in delivered.into_iter().enumerate() {
            let error = match delivered {
                Ok(Ok(_)) => continue,
                Ok(Err((error, _))) => match blamed(&error) {
                    Some(error) => error,
                    None => continue,
                },
                Err(_) => continue,
            };
            if index == batch.len() {
                tracing::warn!(%error, "outbox: the progress record was not written");
            } else if !(outage && error.is_retriable()) {
                failed.push((index, error));
            }
        }
        if deliveries_ok {
            match self.commit(producer, lease).await {
                Ok(true) => {
                    return Err(Ended::Resumed(Pending {
                        progress: progress.clone(),
                        offset: progress_offset,
                    }));
                }
                Ok(false) => {
                    tracing::debug!(
                        events = batch.len(),
                        delivered_ms = delivered_after.as_secs_f64() * 1e3,
                        committed_ms = started.elapsed().as_secs_f64() * 1e3,
                        "outbox: transaction committed"
                    );
                    return Ok(Transaction::Committed);
                }
                // Aborting is safe; whether the commit happened is learnt by initializing a new
                // producer, which completes it, and reading the progress record it wrote.
                Err(KafkaError::Transaction(error)) if error.txn_requires_abort() => {
                    tracing::warn!(%error, "outbox: commit failed; aborting the transaction");
                }
                Err(error) => return Err(error.into()),
            }
        }
        producer
            .blocking(move |p| p.abort_transaction(timeout))
            .await?;
        Ok(Transaction::Aborted(failed))
    }

    /// Commits the open transaction; `Ok(true)` when it succeeded only after being resumed. A
    /// commit that times out (the broker away) is called again on the same producer, which
    /// resumes it, for as long as the shard lease is ours. Such a success is not proof: the
    /// broker may have aborted the transaction on its own (`transaction.timeout.ms`) while it
    /// was away, and librdkafka has reported the resumed commit a success even so. The caller
    /// ends the episode instead; the next one fences the producer and reads the shard's last
    /// committed progress record, which names these events only if the commit happened.
    async fn commit(&self, producer: &TxProducer, lease: &NamedLease) -> Result<bool, KafkaError> {
        let timeout = self.config.transaction_timeout;
        let mut resumed = false;
        loop {
            let committed = producer
                .blocking(move |p| p.commit_transaction(timeout))
                .await;
            match &committed {
                Err(KafkaError::Transaction(error)) if error.is_retriable() => {
                    tracing::warn!(%error, "outbox: commit not finished; resuming it");
                    self.monitor.publish_failed(error.to_string());
                    if self.mark(lease, &[], &[]).await.is_err() {
                        return committed.map(|()| true);
                    }
                    resumed = true;
                }
                _ => return committed.map(|()| resumed),
            }
        }
    }

    /// Marks the rows `seqs` (with the event ids `ids`, pairwise) published while `lease` is
    /// held, returning how many rows it marked (rows already marked, and pairs that name no row,
    /// are skipped); [`Ended::LeaseLost`] when the lease is not held.
    pub(super) async fn mark(
        &self,
        lease: &NamedLease,
        seqs: &[i64],
        ids: &[Uuid],
    ) -> Result<i64, Ended> {
        let retention = self.config.retention;
        table::shard::mark(&self.pool, &self.named, lease, retention, seqs, ids)
            .await?
            .ok_or(Ended::LeaseLost)
    }

    pub(super) fn count(&self, counter: &'static str, n: usize) {
        metrics::counter!(counter, "relay" => self.config.name.clone()).increment(n as u64);
    }
}

/// Whether `current` (the keeper's state) is `lease`.
fn holds(current: &Option<NamedLease>, lease: &NamedLease) -> bool {
    current.as_ref().is_some_and(|l| l.token == lease.token)
}

/// Resolves once the keeper no longer holds `lease` (it stepped down, or holds the shard again
/// under a newer token); never if the keeper is gone.
async fn replaced(held: &mut watch::Receiver<Option<NamedLease>>, lease: &NamedLease) {
    if held
        .wait_for(|current| !holds(current, lease))
        .await
        .is_err()
    {
        std::future::pending::<()>().await;
    }
}
