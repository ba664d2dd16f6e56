//! [`ConsumerHandle`]: a running consumer, its counters, and how it stops.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use leases::task::{Background, CancellationToken};

/// Counts of what a consumer did since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerStats {
    /// Fresh events applied and committed.
    pub processed: u64,
    /// Events skipped as already applied.
    pub duplicates: u64,
    /// Messages published to the dead-letter topic.
    pub dead_lettered: u64,
    /// Retriable failures (each followed by a retry of the same message).
    pub retries: u64,
    /// Batches applied, each in one transaction.
    pub batches: u64,
    /// Batches that failed for good and were applied again one message at a time, to isolate
    /// their poison.
    pub isolated: u64,
    /// Partitions assigned to this consumer right now: 0 before it joined its group, and while
    /// the group gives it nothing to read.
    pub partitions: u64,
    /// How long a batch (or message) in hand has been failing and retried: `None` while messages
    /// flow.
    /// A consumer stuck on one message (its partition waits) shows a growing duration.
    pub retrying_for: Option<Duration>,
}

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) processed: AtomicU64,
    pub(super) duplicates: AtomicU64,
    pub(super) dead_lettered: AtomicU64,
    pub(super) retries: AtomicU64,
    pub(super) batches: AtomicU64,
    pub(super) isolated: AtomicU64,
    pub(super) partitions: AtomicU64,
    /// Since when the message in hand is being retried.
    pub(super) retrying_since: Mutex<Option<Instant>>,
}

impl Counters {
    pub(super) fn snapshot(&self) -> ConsumerStats {
        ConsumerStats {
            processed: self.processed.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            isolated: self.isolated.load(Ordering::Relaxed),
            partitions: self.partitions.load(Ordering::Relaxed),
            retrying_for: self.retrying().map(|since| since.elapsed()),
        }
    }

    fn retrying(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.retrying_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The message in hand failed and will be retried.
    pub(super) fn retrying_again(&self) {
        self.retrying().get_or_insert_with(Instant::now);
    }

    /// The message in hand is settled (applied, skipped or dead-lettered), or left for redelivery.
    pub(super) fn settled(&self) {
        *self.retrying() = None;
    }
}

/// A running [`Consumer`](crate::Consumer): a [`Background`] task with its counters. Dropping it
/// shuts the consumer down without waiting.
#[derive(Debug)]
pub struct ConsumerHandle {
    pub(super) task: Background,
    pub(super) counters: Arc<Counters>,
}

impl ConsumerHandle {
    /// What the consumer did so far.
    pub fn stats(&self) -> ConsumerStats {
        self.counters.snapshot()
    }

    /// A view of the consumer's [`stats`](Self::stats) that outlives borrows of the handle, for
    /// readiness checks and dashboards.
    pub fn monitor(&self) -> ConsumerMonitor {
        ConsumerMonitor(Arc::clone(&self.counters))
    }

    /// Graceful shutdown: stops polling, finishes the batches in hand (a batch waiting for a
    /// retry is left for redelivery), commits the offsets, leaves the group, and returns.
    pub async fn shutdown(self) -> ConsumerStats {
        self.task.shutdown().await;
        self.counters.snapshot()
    }

    /// Stops the consumer at once, as a crash would: offsets not yet committed are not, and
    /// the messages after them are delivered again (to this group's next member).
    pub fn abort(self) {
        self.task.abort();
    }
}

/// Reads a running consumer's [`ConsumerStats`] (see [`ConsumerHandle::monitor`]).
#[derive(Debug, Clone)]
pub struct ConsumerMonitor(Arc<Counters>);

impl ConsumerMonitor {
    /// What the consumer did so far, and how many partitions it holds.
    pub fn stats(&self) -> ConsumerStats {
        self.0.snapshot()
    }
}

/// Sleeps for `delay`; returns `true` if shutdown was requested meanwhile.
pub(super) async fn sleep_or_stop(delay: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => false,
        () = stop.cancelled() => true,
    }
}

/// How long a stopping consumer waits for its clients to close (leave the group, flush).
pub(super) const CLOSE_LIMIT: Duration = Duration::from_secs(30);

/// Drops `clients` on a thread of their own and waits at most `limit` ([`CLOSE_LIMIT`]) for it.
///
/// rdkafka's consumer drop polls until librdkafka reports the consumer closed, with no bound:
/// after its broker went away and came back that can take forever (rust-rdkafka issue 509), and
/// on a runtime thread it would hang the runner's shutdown and starve other tasks. Past the limit
/// the close goes on in the background; the group rebalances after its session timeout anyway.
pub(super) async fn close(name: &str, clients: impl Send + 'static, limit: Duration) {
    let (closed, done) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("consumer-close".into())
        .spawn(move || {
            drop(clients);
            drop(closed);
        });
    if let Err(error) = spawned {
        tracing::warn!(consumer = %name, %error, "consumer: no thread to close on");
        return;
    }
    if tokio::time::timeout(limit, done).await.is_err() {
        tracing::warn!(
            consumer = %name,
            "consumer: closing took over {limit:?}; it goes on in the background"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::mpsc;

    /// Clients whose drop blocks until the test lets it go (5 s at most, so a close that waited
    /// for it fails the test instead of hanging it), then says it finished.
    struct Closing {
        gate: mpsc::Receiver<()>,
        closed: Arc<AtomicBool>,
    }

    impl Drop for Closing {
        fn drop(&mut self) {
            let _ = self.gate.recv_timeout(Duration::from_secs(5));
            self.closed.store(true, Ordering::SeqCst);
        }
    }

    fn closing() -> (Closing, mpsc::Sender<()>, Arc<AtomicBool>) {
        let (open, gate) = mpsc::channel();
        let closed = Arc::new(AtomicBool::new(false));
        let clients = Closing {
            gate,
            closed: Arc::clone(&closed),
        };
        (clients, open, closed)
    }

    #[tokio::test]
    async fn a_close_that_never_ends_is_left_behind_after_the_limit() {
        let (clients, open, closed) = closing();
        close("stuck", clients, Duration::from_millis(50)).await;
        assert!(!closed.load(Ordering::SeqCst), "close returned without it");
        drop(open); // the stuck drop ends now, on its own thread
    }

    #[tokio::test]
    async fn a_close_that_ends_is_waited_for() {
        let (clients, open, closed) = closing();
        open.send(()).expect("the gate is open");
        close("quick", clients, CLOSE_LIMIT).await;
        assert!(closed.load(Ordering::SeqCst));
    }
}
