//! The partition workers: one task per assigned partition applies its messages in order, a batch
//! per transaction, and stores the offset of what it applied; poison is isolated by applying the
//! batch again one message at a time.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use leases::task::CancellationToken;
use rdkafka::consumer::Consumer as _;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use super::handle::sleep_or_stop;
use super::{Handler, HandlerError, Message, Shared, trace};
use crate::table;

/// A topic and partition.
type Key = (String, i32);

/// The running partition workers: the poll loop hands each message to its partition's worker,
/// and a rebalance that revokes partitions stops theirs.
#[derive(Debug, Default)]
pub(super) struct Workers {
    running: Mutex<HashMap<Key, Running>>,
    /// One turn per partition: a worker holds its partition's turn for its whole life, so a
    /// partition revoked and assigned again is applied by one worker at a time, in order.
    turns: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
    pub(super) tracker: TaskTracker,
    /// Moves on at every revoke: a sender cached across one may be a stopping worker's.
    generation: AtomicU64,
}

#[derive(Debug)]
struct Running {
    sender: mpsc::Sender<Message>,
    stop: CancellationToken,
}

/// What became of a batch or a message.
pub(super) enum Processed {
    /// Applied, skipped as a duplicate, or dead-lettered: its offset may be stored.
    Done,
    /// The worker was stopped while it waited for a retry: it will be delivered again.
    Stopped,
}

/// Why a batch could not be applied in one transaction.
enum Failed {
    /// A message is poison (cannot be decoded, has no event id, or the handler refused the
    /// batch): apply the batch one message at a time to find it.
    Isolate,
    /// A retriable failure: roll back and apply the same batch again.
    Retry(HandlerError),
}

impl From<HandlerError> for Failed {
    fn from(error: HandlerError) -> Self {
        if error.is_retriable() {
            Self::Retry(error)
        } else {
            Self::Isolate
        }
    }
}

impl Workers {
    /// Stops the workers of `partitions` after the batch in hand (their offsets are stored only
    /// for what committed; the rest is delivered again to the partitions' next owner).
    pub(super) fn revoke(&self, partitions: impl Iterator<Item = Key>) {
        let mut running = lock(&self.running);
        self.generation.fetch_add(1, Ordering::SeqCst);
        for partition in partitions {
            if let Some(worker) = running.remove(&partition) {
                worker.stop.cancel();
            }
        }
    }

    /// The number of revokes so far.
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Stops every worker after the batch in hand and waits for them.
    pub(super) async fn stop(&self) {
        for (_, worker) in lock(&self.running).drain() {
            worker.stop.cancel();
        }
        self.tracker.close();
        self.tracker.wait().await;
    }
}

impl<H: Handler> Shared<H> {
    /// The sender to `message`'s partition worker, started when it is not running.
    pub(super) fn worker(self: &Arc<Self>, message: &Message) -> mpsc::Sender<Message> {
        let key = (message.topic().to_owned(), message.partition());
        let mut running = lock(&self.workers.running);
        if let Some(worker) = running.get(&key).filter(|w| !w.sender.is_closed()) {
            return worker.sender.clone();
        }
        let capacity = 2 * self.config.batch_size as usize;
        let (sender, messages) = mpsc::channel(capacity);
        let stop = self.stop.child_token();
        let turn = Arc::clone(lock(&self.workers.turns).entry(key.clone()).or_default());
        self.workers
            .tracker
            .spawn(Arc::clone(self).run_partition(messages, stop.clone(), turn));
        running.insert(
            key,
            Running {
                sender: sender.clone(),
                stop,
            },
        );
        sender
    }

    async fn run_partition(
        self: Arc<Self>,
        mut messages: mpsc::Receiver<Message>,
        stop: CancellationToken,
        turn: Arc<tokio::sync::Mutex<()>>,
    ) {
        let _turn = tokio::select! {
            turn = turn.lock_owned() => turn,
            () = stop.cancelled() => return,
        };
        while let Some(batch) = self.collect(&mut messages, &stop).await {
            let span = trace::batch_span(&self.config.name, &batch);
            match self.settle(&batch, &stop).instrument(span).await {
                Processed::Done => self.store(&batch[batch.len() - 1]),
                Processed::Stopped => return,
            }
        }
    }

    /// The next batch: the first message to arrive, then whatever follows within
    /// [`batch_max_wait`](super::ConsumerConfig::batch_max_wait), up to the batch size. `None`
    /// once the worker is stopped.
    async fn collect(
        &self,
        messages: &mut mpsc::Receiver<Message>,
        stop: &CancellationToken,
    ) -> Option<Vec<Message>> {
        let first = tokio::select! {
            biased;
            () = stop.cancelled() => return None,
            first = messages.recv() => first?,
        };
        let limit = self.config.batch_size as usize;
        let mut batch = Vec::with_capacity(limit.min(64));
        batch.push(first);
        let deadline = Instant::now() + self.config.batch_max_wait;
        while batch.len() < limit {
            match messages.try_recv() {
                Ok(message) => batch.push(message),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    let more = tokio::select! {
                        more = messages.recv() => more,
                        () = tokio::time::sleep_until(deadline) => None,
                    };
                    match more {
                        Some(message) => batch.push(message),
                        None => break,
                    }
                }
            }
        }
        Some(batch)
    }

    /// Applies `batch` in one transaction, retrying it after retriable failures; when a message
    /// of it is poison (or the retries are used up), applies it one message at a time instead.
    async fn settle(&self, batch: &[Message], stop: &CancellationToken) -> Processed {
        let name = &self.config.name;
        let started = Instant::now();
        let mut attempt = 0_u32;
        loop {
            attempt = attempt.saturating_add(1);
            let error = match self.apply(batch).await {
                Ok((fresh, duplicates)) => {
                    self.counters.settled();
                    self.counters.batches.fetch_add(1, Ordering::Relaxed);
                    self.count(fresh, duplicates);
                    metrics::histogram!("inbox_consumer_batch_size", "consumer" => name.clone())
                        .record(batch.len() as f64);
                    metrics::histogram!(
                        "inbox_consumer_processing_seconds",
                        "consumer" => name.clone()
                    )
                    .record(started.elapsed().as_secs_f64());
                    return Processed::Done;
                }
                Err(Failed::Isolate) => break,
                Err(Failed::Retry(error)) => error,
            };
            if attempt >= self.config.backoff.max_attempts() {
                break;
            }
            let delay = self.config.backoff.delay(attempt);
            self.retrying(batch.len(), attempt, &error);
            if sleep_or_stop(delay, stop).await {
                return Processed::Stopped;
            }
        }
        self.counters.isolated.fetch_add(1, Ordering::Relaxed);
        if batch.len() > 1 {
            tracing::warn!(
                consumer = %name,
                messages = batch.len(),
                "consumer: a batch failed; applying it one message at a time"
            );
        }
        for message in batch {
            let span = trace::span(name, message);
            match self.process(message, stop).instrument(span).await {
                Processed::Done => self.store(message),
                Processed::Stopped => return Processed::Stopped,
            }
        }
        Processed::Done
    }

    /// Decodes every message of `batch`, then in one transaction records their event ids in
    /// the inbox (one statement) and applies the fresh ones in order. Returns how many were
    /// fresh and how many duplicates.
    async fn apply(&self, batch: &[Message]) -> Result<(u64, u64), Failed> {
        let mut decoded = Vec::with_capacity(batch.len());
        for message in batch {
            let (Ok(event), Some(id)) = (
                self.handler.decode(message),
                message.header_str(&self.config.event_id_header),
            ) else {
                return Err(Failed::Isolate);
            };
            decoded.push((event, id, message));
        }
        let ids: Vec<&str> = decoded.iter().map(|(_, id, _)| *id).collect();
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(HandlerError::retriable)?;
        let mut tx = self.pool.begin().await.map_err(HandlerError::from)?;
        let mut fresh: HashSet<String> = table::receive_batch(&mut tx, &self.config.name, &ids)
            .await
            .map_err(HandlerError::from)?;
        let duplicates = (ids.len() - fresh.len()) as u64;
        // An event twice in one batch is applied at its first place only.
        let events: Vec<_> = decoded
            .into_iter()
            .filter(|(_, id, _)| fresh.remove(*id))
            .map(|(event, _, message)| (event, message))
            .collect();
        let applied = events.len() as u64;
        self.handler.lock_batch(&mut tx, &events).await?;
        self.handler.handle_batch(&mut tx, events).await?;
        // A commit whose outcome is unknown is retried: the inbox then reports duplicates.
        tx.commit().await.map_err(HandlerError::from)?;
        Ok((applied, duplicates))
    }

    /// Stores the offset after `message`, to be committed with the next commit.
    fn store(&self, message: &Message) {
        self.positions
            .handled(message.topic(), message.partition(), message.offset());
        if let Err(error) =
            self.consumer
                .store_offset(message.topic(), message.partition(), message.offset())
        {
            tracing::warn!(
                consumer = %self.config.name,
                %error,
                "consumer: storing the offset failed (partition revoked?); the messages after \
                 the last committed offset will be delivered again"
            );
        }
    }

    pub(super) fn count(&self, fresh: u64, duplicates: u64) {
        let name = &self.config.name;
        for (counter, outcome, n) in [
            (&self.counters.processed, "processed", fresh),
            (&self.counters.duplicates, "duplicate", duplicates),
        ] {
            counter.fetch_add(n, Ordering::Relaxed);
            metrics::counter!(
                "inbox_consumer_messages_total",
                "consumer" => name.clone(),
                "outcome" => outcome
            )
            .increment(n);
        }
    }

    pub(super) fn retrying(&self, messages: usize, attempt: u32, error: &HandlerError) {
        self.counters.retries.fetch_add(1, Ordering::Relaxed);
        self.counters.retrying_again();
        metrics::counter!("inbox_consumer_retries_total", "consumer" => self.config.name.clone())
            .increment(1);
        tracing::warn!(
            consumer = %self.config.name,
            messages,
            attempt,
            %error,
            "consumer: retriable failure; applying the batch again"
        );
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
