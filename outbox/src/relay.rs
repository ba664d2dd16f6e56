//! The relay: claims due events with leases, publishes them, and marks, retries or dead-letters
//! each one, guarded by its lease.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::join_all;
use futures::stream::FuturesUnordered;
use leases::{Heartbeat, Lease, RowLeases};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::time::Instant;
use tracing::Instrument;

mod config;

pub use config::{RelayConfig, Retention};

use crate::health::RelayMonitor;
use crate::publisher::{Event, PublishError, Publisher};
use crate::table::{self, dead_letters::Burial};
use crate::{Error, Result};
use leases::task::{Background, CancellationToken};

/// What one batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Events claimed.
    pub claimed: usize,
    /// Events acknowledged by the broker and marked published.
    pub published: usize,
    /// Events scheduled for another attempt, among them the events of a run held back behind a
    /// failed one (left as they are: they go out after it, and their attempt does not count).
    pub retried: usize,
    /// Events moved to the dead-letter table.
    pub dead_lettered: usize,
    /// Events whose lease was lost before they could be marked (another relay will publish them
    /// again: a duplicate, never a loss).
    pub lost: usize,
}

/// What became of one event of a batch.
enum Delivery {
    Published,
    Failed(PublishError),
    /// Not sent: an earlier event of its run failed.
    HeldBack,
}

impl From<Result<(), PublishError>> for Delivery {
    fn from(result: Result<(), PublishError>) -> Self {
        match result {
            Ok(()) => Delivery::Published,
            Err(error) => Delivery::Failed(error),
        }
    }
}

/// Publishes the outbox through a [`Publisher`]. Several relays, in one process or many, can run
/// side by side: leases keep them off each other's events.
#[derive(Debug)]
pub struct Relay<P> {
    pool: PgPool,
    publisher: Arc<P>,
    config: RelayConfig,
    leases: RowLeases,
    monitor: RelayMonitor,
}

impl<P: Publisher> Relay<P> {
    /// A relay over the outbox in `pool`'s database (run [`MIGRATOR`](crate::MIGRATOR) first).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a zero batch size, lease ttl, poll interval or pipeline
    /// depth.
    pub fn new(pool: PgPool, publisher: P, config: RelayConfig) -> Result<Self> {
        if config.batch_size == 0
            || config.lease_ttl.is_zero()
            || config.poll_interval.is_zero()
            || config.pipeline_depth == 0
        {
            return Err(Error::InvalidConfig(
                "batch size, lease ttl, poll interval and pipeline depth must be greater than zero"
                    .into(),
            ));
        }
        let leases = table::relay::leases(&config)?;
        Ok(Self {
            pool,
            publisher: Arc::new(publisher),
            monitor: RelayMonitor::new(config.name.clone(), config.stalled_after),
            config,
            leases,
        })
    }

    /// Reads whether this relay is publishing, from another task (for a readiness check); take
    /// it before [`spawn`](Self::spawn).
    pub fn monitor(&self) -> RelayMonitor {
        self.monitor.clone()
    }

    /// Claims one batch, publishes it, and marks, retries or dead-letters every event in it.
    ///
    /// # Errors
    ///
    /// [`Error::Lease`] or [`Error::Database`] when the database fails; events already claimed
    /// are then republished after their lease expires.
    pub async fn run_once(&self) -> Result<BatchOutcome> {
        let batch = self
            .claim()
            .await
            .inspect_err(|e| self.monitor.database_failed(e.to_string()))?;
        self.settle(batch).await
    }

    /// Claims up to a batch of due events. An event claimed behind its run's head was not
    /// written by the claim: its attempt is the lease's.
    async fn claim(&self) -> Result<Vec<(Lease<i64>, Event)>> {
        let mut batch: Vec<(Lease<i64>, Event)> = self
            .leases
            .claim_rows(&self.pool, self.config.batch_size, self.config.lease_ttl)
            .await?;
        for (lease, event) in &mut batch {
            event.attempts = lease.attempts;
        }
        Ok(batch)
    }

    /// Publishes a claimed batch and marks, retries or dead-letters every event in it.
    async fn settle(&self, batch: Vec<(Lease<i64>, Event)>) -> Result<BatchOutcome> {
        if batch.is_empty() {
            self.monitor.idle();
            return Ok(BatchOutcome::default());
        }
        let started = Instant::now();
        let span =
            tracing::info_span!("outbox.batch", owner = %self.config.owner, claimed = batch.len());
        let outcome = async {
            let claimed = batch.len();
            let (leases, mut events): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            // A delivery may take as long as the broker needs: keep the leases meanwhile.
            let ttl = self.config.lease_ttl;
            let heartbeat =
                Heartbeat::start(&self.leases, self.pool.clone(), leases, ttl, ttl / 3)?;
            let waiting = self.monitor.waiting();
            let results = self.publish(&mut events).await;
            drop(waiting);
            let mut held: HashMap<i64, Lease<i64>> = heartbeat
                .shutdown()
                .await
                .into_iter()
                .map(|lease| (lease.id, lease))
                .collect();
            let mut outcome = BatchOutcome {
                claimed,
                ..BatchOutcome::default()
            };
            let mut published = Vec::with_capacity(claimed);
            // A run's events are held through its head: a failed head is settled last.
            let mut failed = Vec::new();
            let mut heads_failed = Vec::new();
            for (event, result) in events.iter().zip(results) {
                let Some(lease) = held.remove(&event.seq) else {
                    outcome.lost += 1;
                    continue;
                };
                match result {
                    Delivery::Published => published.push(lease),
                    Delivery::Failed(error) if lease.id == lease.holder => {
                        heads_failed.push((lease, event, error));
                    }
                    Delivery::Failed(error) => failed.push((lease, event, error)),
                    // Never written by the claim (its head's lease is its lease): it waits
                    // behind the failed event.
                    Delivery::HeldBack => outcome.retried += 1,
                }
            }
            let mut last_error = None;
            for (lease, event, error) in &failed {
                self.fail(lease, event, error, &mut outcome).await?;
                last_error = Some(error.to_string());
            }
            let marked = self.leases.complete_many(&self.pool, &published).await?;
            outcome.published = marked.len();
            outcome.lost += published.len() - marked.len();
            for (lease, event, error) in &heads_failed {
                self.fail(lease, event, error, &mut outcome).await?;
                last_error = Some(error.to_string());
            }
            match last_error {
                Some(error) if outcome.published == 0 && outcome.retried > 0 => {
                    self.monitor.publish_failed(error);
                }
                _ => self.monitor.progressed(),
            }
            Ok::<_, Error>(outcome)
        }
        .instrument(span)
        .await
        .inspect_err(|e| self.monitor.database_failed(e.to_string()))?;
        let relay = self.config.name.clone();
        metrics::counter!("outbox_published_total", "relay" => relay.clone())
            .increment(outcome.published as u64);
        metrics::counter!("outbox_retried_total", "relay" => relay.clone())
            .increment(outcome.retried as u64);
        metrics::counter!("outbox_dead_lettered_total", "relay" => relay.clone())
            .increment(outcome.dead_lettered as u64);
        metrics::histogram!("outbox_batch_seconds", "relay" => relay)
            .record(started.elapsed().as_secs_f64());
        if outcome.lost > 0 {
            tracing::warn!(
                lost = outcome.lost,
                "outbox: leases lost before marking; those events will be published again"
            );
        }
        Ok(outcome)
    }

    /// Publishes a batch, each aggregate's events as one run in order when the relay keeps
    /// per-aggregate order (sorting `events` into runs); one outcome per event of `events`.
    async fn publish(&self, events: &mut [Event]) -> Vec<Delivery> {
        if !self.config.ordered {
            return join_all(events.iter().map(|event| self.publisher.publish(event)))
                .await
                .into_iter()
                .map(Delivery::from)
                .collect();
        }
        events.sort_unstable_by(|a, b| {
            (&a.aggregate_type, &a.aggregate_id, a.seq).cmp(&(
                &b.aggregate_type,
                &b.aggregate_id,
                b.seq,
            ))
        });
        let runs = events.chunk_by(|a, b| {
            a.aggregate_type == b.aggregate_type && a.aggregate_id == b.aggregate_id
        });
        let mut deliveries = Vec::with_capacity(events.len());
        for results in join_all(runs.map(|run| self.publisher.publish_run(run))).await {
            // The events after a run's first retriable failure never reached the broker.
            let mut held_back = false;
            for result in results {
                deliveries.push(if held_back {
                    Delivery::HeldBack
                } else {
                    held_back = result.as_ref().is_err_and(PublishError::is_retriable);
                    Delivery::from(result)
                });
            }
        }
        deliveries
    }

    /// Schedules a retry, or dead-letters a permanent failure or an event out of attempts.
    async fn fail(
        &self,
        lease: &Lease<i64>,
        event: &Event,
        error: &PublishError,
        outcome: &mut BatchOutcome,
    ) -> Result<()> {
        metrics::counter!("outbox_failed_total", "relay" => self.config.name.clone()).increment(1);
        let attempts = u32::try_from(lease.attempts).unwrap_or(u32::MAX);
        let reason = if !error.is_retriable() {
            Some("permanent publish failure".to_owned())
        } else if attempts >= self.config.backoff.max_attempts() {
            Some(format!("attempts exhausted ({attempts})"))
        } else {
            None
        };
        let error = error.to_string();
        let held = match reason {
            Some(reason) => {
                tracing::error!(event_id = %event.id, %reason, %error, "outbox: dead-lettering event");
                let burial = Burial {
                    attempts: lease.attempts,
                    reason: &reason,
                    last_error: &error,
                };
                let moved =
                    table::dead_letters::bury(&self.pool, &self.leases, lease, burial).await?;
                outcome.dead_lettered += usize::from(moved);
                moved
            }
            None => {
                let delay = self.config.backoff.delay(attempts);
                tracing::warn!(event_id = %event.id, attempts, ?delay, %error, "outbox: publish failed; retrying");
                let released =
                    table::relay::retry(&self.pool, &self.leases, lease, delay, error).await?;
                outcome.retried += usize::from(released);
                released
            }
        };
        outcome.lost += usize::from(!held);
        Ok(())
    }

    /// After a batch is `settled`: how long to wait before looking again when the relay runs dry
    /// (sooner when an event was scheduled for a retry), and whether to claim again at once
    /// because the batch took events off their aggregates' heads (published or dead-lettered),
    /// so the events behind them are claimable now.
    fn after_batch(&self, settled: Result<BatchOutcome>) -> (Duration, bool) {
        match settled {
            Ok(outcome) => {
                let wait = if outcome.retried > 0 {
                    self.config
                        .backoff
                        .ceiling(1)
                        .min(self.config.poll_interval)
                } else {
                    self.config.poll_interval
                };
                (wait, outcome.published + outcome.dead_lettered > 0)
            }
            Err(error) => {
                tracing::warn!(%error, "outbox: batch failed");
                (self.config.poll_interval, false)
            }
        }
    }

    /// Runs the relay in the background. [`Background::shutdown`] stops claiming, lets the batches
    /// in flight finish (publish, then mark, retry or dead-letter each event) and returns once the
    /// relay holds no lease; [`Background::abort`] stops it as a crash would (its leases stay
    /// until they expire).
    ///
    /// The relay claims batch after batch while there is work, keeping up to
    /// [`pipeline_depth`](RelayConfig::pipeline_depth) batches in flight, then waits for a
    /// notification of a new event, the poll interval, or the earliest scheduled retry. Database errors are logged
    /// and retried after the poll interval; they never stop the relay.
    pub fn spawn(self) -> Background {
        Background::spawn(|stop| self.run(stop))
    }

    async fn run(self, stop: CancellationToken) {
        let mut listener = match listen(&self.pool).await {
            Ok(listener) => Some(listener),
            Err(error) => {
                tracing::warn!(%error, "outbox: LISTEN failed; polling only");
                None
            }
        };
        let gauges = crate::stats::spawn(self.pool.clone(), self.config.name.clone());
        let depth = self.config.pipeline_depth as usize;
        let mut in_flight = FuturesUnordered::new();
        // Whether to claim: the last claim was full (more is waiting), a batch unblocked the
        // events behind it, or the relay was woken.
        let mut claim_more = true;
        let mut wait = self.config.poll_interval;
        while !stop.is_cancelled() {
            if claim_more && in_flight.len() < depth {
                // Claim the next batch while the batches in flight are published and settled.
                let claim = self.claim();
                tokio::pin!(claim);
                let mut unblocked = false;
                let claimed = loop {
                    tokio::select! {
                        claimed = &mut claim => break claimed,
                        Some(settled) = in_flight.next(), if !in_flight.is_empty() => {
                            let again;
                            (wait, again) = self.after_batch(settled);
                            unblocked |= again;
                        }
                    }
                };
                match claimed {
                    Ok(batch) => {
                        claim_more = unblocked
                            || (batch.len() == self.config.batch_size as usize
                                && !(self.config.ordered && one_aggregate(&batch)));
                        if batch.is_empty() {
                            self.monitor.idle();
                        } else {
                            in_flight.push(self.settle(batch));
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "outbox: claim failed");
                        self.monitor.database_failed(error.to_string());
                        claim_more = false;
                        wait = self.config.poll_interval;
                    }
                }
                continue;
            }
            if !in_flight.is_empty() {
                // Wait for a batch to settle; with room for another batch, a new event is claimed
                // at once instead of after the batches in flight.
                tokio::select! {
                    Some(settled) = in_flight.next() => {
                        let again;
                        (wait, again) = self.after_batch(settled);
                        claim_more |= again;
                    }
                    () = notified(&mut listener), if in_flight.len() < depth => claim_more = true,
                }
                continue;
            }
            // Nothing in flight and nothing more to claim: wait for a new event (notifications
            // that arrived meanwhile are queued), a retry falling due, or the poll interval.
            tokio::select! {
                () = stop.cancelled() => {}
                () = notified(&mut listener) => {}
                () = tokio::time::sleep(wait) => {}
            }
            claim_more = true;
            wait = self.config.poll_interval;
        }
        // Stopped: finish what is in flight, so no lease is left behind.
        while let Some(settled) = in_flight.next().await {
            self.after_batch(settled);
        }
        gauges.shutdown().await;
        tracing::info!(owner = %self.config.owner, "outbox: relay stopped");
    }
}

/// Whether a batch is one aggregate's run: then nothing more of that aggregate is claimable until
/// it settles, and claiming ahead would only step over the rest of its backlog.
fn one_aggregate(batch: &[(Lease<i64>, Event)]) -> bool {
    batch.split_first().is_some_and(|((_, first), rest)| {
        rest.iter().all(|(_, e)| {
            e.aggregate_id == first.aggregate_id && e.aggregate_type == first.aggregate_type
        })
    })
}

pub(crate) async fn listen(pool: &PgPool) -> Result<PgListener> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen("outbox_events").await?;
    Ok(listener)
}

/// Resolves on the next notification; never without a listener. A broken listener reconnects on
/// the next call.
pub(crate) async fn notified(listener: &mut Option<PgListener>) {
    match listener {
        Some(l) => {
            if let Err(error) = l.recv().await {
                tracing::warn!(%error, "outbox: LISTEN connection failed; reconnecting");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        None => std::future::pending().await,
    }
}
