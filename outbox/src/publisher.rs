//! Where the relay sends events: a [`Publisher`] per broker.

pub(crate) mod kafka;

use std::future::Future;

/// An event as the relay hands it to a publisher.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Event {
    /// Position in the outbox; increases in insert order.
    pub seq: i64,
    /// The event's id.
    pub id: uuid::Uuid,
    /// The destination topic.
    pub topic: String,
    /// The kind of aggregate.
    pub aggregate_type: String,
    /// The aggregate's id (the message key).
    pub aggregate_id: String,
    /// The event's type.
    pub event_type: String,
    /// The message value.
    pub payload: Vec<u8>,
    /// Extra headers, as a JSON object of strings.
    pub headers: sqlx::types::Json<std::collections::BTreeMap<String, String>>,
    /// When the event was enqueued.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// How many times the event has been claimed, this attempt included.
    pub attempts: i32,
}

/// Sends events to a broker and resolves when the broker has acknowledged them.
///
/// Implementations classify failures: [`PublishError::retriable`] for outcomes that may succeed
/// later (broker unavailable, timeout, unknown outcome), [`PublishError::permanent`] for ones that
/// never will (too large, rejected by the broker as invalid).
pub trait Publisher: Send + Sync + 'static {
    /// Publishes `event`; `Ok` only once the broker acknowledged it.
    fn publish(&self, event: &Event) -> impl Future<Output = Result<(), PublishError>> + Send;

    /// Publishes a run of consecutive events of one aggregate, in order, and resolves to one result
    /// per event. The relay hands an aggregate's backlog over as runs, so a hot aggregate is not
    /// published one event per round trip.
    ///
    /// An implementation must keep the run **gap-free**: when an event fails with a retriable
    /// error, no later event of the run may reach the broker (the relay publishes them again
    /// after the failed one). After a permanent failure the later events may go on: the failed
    /// event is dead-lettered, never published. The default publishes one event at a time and
    /// stops at the first retriable failure, which is gap-free for any publisher, at one round
    /// trip per event; [`KafkaPublisher`](crate::KafkaPublisher) pipelines the run.
    fn publish_run(
        &self,
        run: &[Event],
    ) -> impl Future<Output = Vec<Result<(), PublishError>>> + Send {
        in_turn(self, run)
    }
}

/// Publishes `run` one event at a time, stopping at the first retriable failure: the events after
/// it fail as not sent.
pub(crate) async fn in_turn<P: Publisher + ?Sized>(
    publisher: &P,
    run: &[Event],
) -> Vec<Result<(), PublishError>> {
    until_retriable(run, |event| publisher.publish(event)).await
}

/// Runs `step` over the run's events in order until one fails with a retriable error; the events
/// after it are not stepped and fail as not sent.
pub(crate) async fn until_retriable<'e, T, F, Fut>(
    run: &'e [Event],
    mut step: F,
) -> Vec<Result<T, PublishError>>
where
    F: FnMut(&'e Event) -> Fut,
    Fut: Future<Output = Result<T, PublishError>>,
{
    let mut results = Vec::with_capacity(run.len());
    let mut stopped = None::<PublishError>;
    for event in run {
        let result = match &stopped {
            Some(failure) => Err(not_sent(failure)),
            None => step(event).await,
        };
        if let Err(error) = &result {
            if error.is_retriable() && stopped.is_none() {
                stopped = Some(error.clone());
            }
        }
        results.push(result);
    }
    results
}

/// The failure of an event held back because an earlier event of its run failed.
fn not_sent(earlier: &PublishError) -> PublishError {
    PublishError::retriable(format!(
        "not sent: an earlier event of its aggregate failed ({earlier})"
    ))
}

/// Why a publish failed, and whether trying again may help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PublishError {
    retriable: bool,
    message: String,
}

impl PublishError {
    /// A failure that may not happen again: the relay retries with backoff.
    pub fn retriable(message: impl Into<String>) -> Self {
        Self {
            retriable: true,
            message: message.into(),
        }
    }

    /// A failure that will happen every time: the relay dead-letters the event at once.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            retriable: false,
            message: message.into(),
        }
    }

    /// Whether a retry may succeed.
    pub fn is_retriable(&self) -> bool {
        self.retriable
    }
}
