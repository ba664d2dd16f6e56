//! [`KafkaPublisher`]: rdkafka's idempotent producer with `acks=all`.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use tokio::time::Instant;

use super::{Event, PublishError, Publisher, in_turn, until_retriable};
use crate::Result;

/// Publishes to Kafka: key = aggregate id (so one aggregate's events share a partition and keep
/// their order), value = payload, headers `event-id`, `event-type`, `aggregate-type`,
/// `aggregate-id` and the event's own headers (among them the trace context captured when it was
/// enqueued: W3C `traceparent` and `tracestate`).
///
/// The producer is idempotent (`enable.idempotence=true`, which implies `acks=all` and ordered
/// retries), so librdkafka's internal retries never duplicate or reorder within a partition. Many
/// messages are in flight at once, batched by librdkafka (`linger.ms`, `batch.size`); each publish
/// resolves on its delivery report.
///
/// **Runs and the delivery timeout.** By default a message never times out
/// (`message.timeout.ms=0`): librdkafka retries it until the broker acknowledges it or refuses it
/// for good. That is what makes a run ([`Publisher::publish_run`]) safe to pipeline: the idempotent
/// producer keeps a partition's messages in order across its retries, but a message that times
/// out in librdkafka's queue leaves a gap that the messages behind it fill (librdkafka's
/// documentation: of messages 1 to 5, 2 and 3 time out and the partition holds 1, 4, 5). With no
/// timeout there is no such gap: a run's messages are all queued at once, in order, and a
/// retriable failure can only come from the queue (full for 5 s), in which case the rest of the
/// run is not queued. The relay keeps its leases alive while a batch waits for the broker (a
/// heartbeat), so an unbounded delivery does not let another relay take the events over. A
/// configuration that sets a finite `message.timeout.ms` gets runs published one event at a time
/// instead (gap-free too, at one round trip per event).
///
/// Keys are partitioned with `partitioner=murmur2_random` (unless the configuration names
/// another partitioner): the Java client's murmur2 hash, so an aggregate's events land on the
/// partition that a JVM producer (Kafka Streams, Debezium, Spring) picks for the same key.
#[derive(Clone)]
pub struct KafkaPublisher {
    producer: FutureProducer,
    /// Whether messages never time out, so a run can be pipelined.
    unbounded: bool,
}

/// How long a publish may wait for room in librdkafka's queue before it fails.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);
/// `message.timeout.ms` when the configuration sets none: never time out (librdkafka's own
/// default is 300 s).
const MESSAGE_TIMEOUT_MS: &str = "0";

impl std::fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPublisher").finish_non_exhaustive()
    }
}

impl KafkaPublisher {
    /// A publisher for `bootstrap_servers` with the defaults above: no delivery timeout
    /// (`message.timeout.ms=0`) and a 1 ms linger.
    ///
    /// # Errors
    ///
    /// [`Error::Kafka`](crate::Error::Kafka) when the client cannot be created.
    pub fn new(bootstrap_servers: &str) -> Result<Self> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", bootstrap_servers);
        Self::from_config(&config)
    }

    /// A publisher from a full client configuration; idempotence and `acks=all` are always set,
    /// `partitioner=murmur2_random` when the configuration sets no partitioner, `linger.ms=1` when
    /// it sets no linger, and `message.timeout.ms=0` (no delivery timeout, so runs are pipelined)
    /// when it sets none.
    ///
    /// # Errors
    ///
    /// [`Error::Kafka`](crate::Error::Kafka) when the client cannot be created;
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for a `message.timeout.ms` that is
    /// not a number of milliseconds.
    pub fn from_config(config: &ClientConfig) -> Result<Self> {
        let mut config = producer_config(config);
        let message_timeout = config
            .get("message.timeout.ms")
            .unwrap_or(MESSAGE_TIMEOUT_MS)
            .parse::<u64>()
            .map_err(|e| crate::Error::InvalidConfig(format!("message.timeout.ms: {e}")))?;
        let producer = config
            .set("message.timeout.ms", message_timeout.to_string())
            .create()?;
        Ok(Self {
            producer,
            unbounded: message_timeout == 0,
        })
    }
}

impl Publisher for KafkaPublisher {
    async fn publish(&self, event: &Event) -> Result<(), PublishError> {
        match self
            .producer
            .send(record(event), Timeout::After(QUEUE_TIMEOUT))
            .await
        {
            Ok(_) => Ok(()),
            Err((error, _message)) => Err(classify(&error)),
        }
    }

    async fn publish_run(&self, run: &[Event]) -> Vec<Result<(), PublishError>> {
        if !self.unbounded {
            return in_turn(self, run).await;
        }
        // Queue the whole run in order, stopping at the first retriable refusal; then collect the
        // delivery reports.
        let queued = until_retriable(run, |event| self.enqueue(event)).await;
        let mut results = Vec::with_capacity(run.len());
        for queue in queued {
            results.push(match queue {
                Ok(delivery) => match delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((error, _message))) => Err(classify(&error)),
                    Err(_canceled) => Err(PublishError::retriable("the producer was dropped")),
                },
                Err(error) => Err(error),
            });
        }
        results
    }
}

impl KafkaPublisher {
    /// Puts `event` on librdkafka's queue, waiting up to [`QUEUE_TIMEOUT`] for room.
    async fn enqueue(&self, event: &Event) -> Result<DeliveryFuture, PublishError> {
        let started = Instant::now();
        loop {
            match self.producer.send_result(record(event)) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                    if started.elapsed() < QUEUE_TIMEOUT =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err((error, _record)) => return Err(classify(&error)),
            }
        }
    }
}

/// `config` with what every outbox producer sets: idempotence, `acks=all`, and, unless it sets
/// them, the Java client's partitioner and a 1 ms linger.
///
/// The linger is short because a relay hands the producer whole batches at once: a claimed batch
/// is queued in one go and batched by partition whatever the linger, so waiting longer for more
/// messages only delays the batch's tail (measured in `docs/benchmarks.md`: at 5,000 events/s a
/// 5 ms linger, librdkafka's default, was half of the median latency from commit to
/// acknowledgement).
pub(crate) fn producer_config(config: &ClientConfig) -> ClientConfig {
    let mut config = config.clone();
    if config.get("partitioner").is_none() {
        config.set("partitioner", "murmur2_random");
    }
    // `queue.buffering.max.ms` is librdkafka's other name for the linger.
    if config
        .get("linger.ms")
        .or(config.get("queue.buffering.max.ms"))
        .is_none()
    {
        config.set("linger.ms", "1");
    }
    config.set("enable.idempotence", "true").set("acks", "all");
    config
}

/// The Kafka record of an event: key = aggregate id, value = payload, the event's identity as
/// headers, then its own headers.
pub(crate) fn record(event: &Event) -> FutureRecord<'_, str, [u8]> {
    let event_id = event.id.to_string();
    let mut headers = OwnedHeaders::new_with_capacity(4 + event.headers.len())
        .insert(header("event-id", &event_id))
        .insert(header("event-type", &event.event_type))
        .insert(header("aggregate-type", &event.aggregate_type))
        .insert(header("aggregate-id", &event.aggregate_id));
    for (name, value) in event.headers.iter() {
        headers = headers.insert(header(name, value));
    }
    FutureRecord::to(&event.topic)
        .key(event.aggregate_id.as_str())
        .payload(event.payload.as_slice())
        .headers(headers)
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}

/// Permanent: the broker or client will refuse this message every time. Everything else
/// (timeouts, unavailable brokers, unknown outcomes) is worth retrying.
pub(crate) fn classify(error: &KafkaError) -> PublishError {
    let permanent = matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidTopic
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::BadMessage
        )
    );
    if permanent {
        PublishError::permanent(error.to_string())
    } else {
        PublishError::retriable(error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_linger_is_one_millisecond_unless_the_configuration_sets_one() {
        let defaults = producer_config(&ClientConfig::new());
        assert_eq!(defaults.get("linger.ms"), Some("1"));
        assert_eq!(defaults.get("partitioner"), Some("murmur2_random"));
        assert_eq!(defaults.get("acks"), Some("all"));

        let set = producer_config(ClientConfig::new().set("linger.ms", "20"));
        assert_eq!(set.get("linger.ms"), Some("20"));
        let alias = producer_config(ClientConfig::new().set("queue.buffering.max.ms", "20"));
        assert_eq!(
            alias.get("linger.ms"),
            None,
            "the other name is kept, not overridden"
        );
        assert_eq!(alias.get("queue.buffering.max.ms"), Some("20"));
    }
}
