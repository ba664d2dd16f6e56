//! Whether a relay is publishing: what a readiness check asks.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Reads whether a relay is publishing, from another task (a readiness check); cheap to clone.
/// From [`Relay::monitor`](crate::Relay::monitor).
///
/// A relay is *stalled* from the first batch that published nothing because the broker refused
/// or timed out every event in it (or a claim or mark failed in the database), until a batch
/// publishes again; and while a batch has waited more than
/// [`RelayConfig::stalled_after`](crate::RelayConfig::stalled_after) for the broker to acknowledge
/// it (the publisher sets no delivery timeout, so a broker that is away shows as a
/// wait, not as a failure). A relay with nothing to publish is not stalled; a batch whose events
/// are dead-lettered made progress. The gauge `outbox_relay_publishing{relay}` is 1 while the
/// relay publishes and 0 after a failed batch, until one publishes.
#[derive(Debug, Clone)]
pub struct RelayMonitor {
    name: String,
    failing: Arc<Mutex<Option<Failing>>>,
    /// When each batch now waiting for the broker began to wait, by batch number.
    waiting: Arc<Mutex<(u64, BTreeMap<u64, Instant>)>>,
    /// How long a batch may wait before the relay counts as stalled.
    stalled_after: Duration,
}

/// A batch waiting for the broker, from [`RelayMonitor::waiting`] until dropped.
pub(crate) struct Waiting {
    monitor: RelayMonitor,
    batch: u64,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        lock(&self.monitor.waiting).1.remove(&self.batch);
    }
}

#[derive(Debug)]
struct Failing {
    since: Instant,
    error: String,
    /// Whether the broker failed (only a publish clears it), or the database (a claim does).
    broker: bool,
}

/// Why a relay is not publishing: for how long, and the last error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stalled {
    /// Since the first failed batch.
    pub since: Duration,
    /// The last error.
    pub error: String,
}

impl RelayMonitor {
    /// A monitor for relay `name`, stalled once a batch has waited `stalled_after`.
    pub(crate) fn new(name: String, stalled_after: Duration) -> Self {
        Self {
            name,
            failing: Arc::default(),
            waiting: Arc::default(),
            stalled_after,
        }
    }

    /// `Some` while the relay is stalled (see the type's documentation), `None` otherwise.
    pub fn stalled(&self) -> Option<Stalled> {
        if let Some(failing) = self.state().as_ref() {
            return Some(Stalled {
                since: failing.since.elapsed(),
                error: failing.error.clone(),
            });
        }
        let oldest = lock(&self.waiting).1.values().min().copied()?;
        let since = oldest.elapsed();
        (since > self.stalled_after).then(|| Stalled {
            since,
            error: format!(
                "a batch has waited {} s for the broker's acknowledgement",
                since.as_secs()
            ),
        })
    }

    /// Marks a batch as waiting for the broker until the returned guard is dropped.
    pub(crate) fn waiting(&self) -> Waiting {
        let mut waiting = lock(&self.waiting);
        waiting.0 += 1;
        let batch = waiting.0;
        waiting.1.insert(batch, Instant::now());
        Waiting {
            monitor: self.clone(),
            batch,
        }
    }

    /// A batch published (or had nothing to publish, or dead-lettered what it could not).
    pub(crate) fn progressed(&self) {
        if self.state().take().is_some() {
            tracing::info!(relay = %self.name, "outbox: relay publishing again");
        }
        self.gauge(1.0);
    }

    /// A claim found nothing due: the database answers again, but a broker that failed has
    /// not been tried since (its events wait for their retry).
    pub(crate) fn idle(&self) {
        let broker_failed = self.state().as_ref().is_some_and(|failing| failing.broker);
        if !broker_failed {
            self.progressed();
        }
    }

    /// A batch published nothing: the broker refused or timed out every event in it.
    pub(crate) fn publish_failed(&self, error: String) {
        self.failed(error, true);
    }

    /// A claim or mark failed in the database.
    pub(crate) fn database_failed(&self, error: String) {
        self.failed(error, false);
    }

    fn failed(&self, error: String, broker: bool) {
        let mut state = self.state();
        let since = state
            .as_ref()
            .map_or_else(Instant::now, |failing| failing.since);
        *state = Some(Failing {
            since,
            error,
            broker,
        });
        drop(state);
        self.gauge(0.0);
    }

    fn gauge(&self, value: f64) {
        metrics::gauge!("outbox_relay_publishing", "relay" => self.name.clone()).set(value);
    }

    fn state(&self) -> MutexGuard<'_, Option<Failing>> {
        lock(&self.failing)
    }
}

/// A panic while holding one of the monitor's locks leaves a valid state: recover it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
