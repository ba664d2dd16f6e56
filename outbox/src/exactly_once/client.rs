//! The relay's Kafka clients: which settings each gets, where librdkafka's own reports go, the
//! transactional producer, and which of its failures an event is to blame for.

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;

use crate::publisher::PublishError;
use crate::publisher::kafka::classify;

/// librdkafka's producer-only properties (its `CONFIGURATION.md`, column `C/P` = `P`): the
/// progress reader and the admin client get the user's settings without them, so librdkafka
/// has nothing to warn about.
const PRODUCER_ONLY: &[&str] = &[
    "transactional.id",
    "transaction.timeout.ms",
    "enable.idempotence",
    "enable.gapless.guarantee",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "queue.buffering.max.ms",
    "linger.ms",
    "message.send.max.retries",
    "retries",
    "queue.buffering.backpressure.threshold",
    "compression.codec",
    "compression.type",
    "compression.level",
    "batch.num.messages",
    "batch.size",
    "delivery.report.only.error",
    "sticky.partitioning.linger.ms",
    "request.required.acks",
    "acks",
    "request.timeout.ms",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "queuing.strategy",
    "produce.offset.report",
    "partitioner",
];

/// The settings of the relay's non-producing clients (the progress reader, the admin client):
/// `producer` without its producer-only properties.
pub(super) fn reader_config(producer: &ClientConfig) -> ClientConfig {
    let mut config = producer.clone();
    for key in PRODUCER_ONLY {
        config.remove(key);
    }
    config
}

/// The context of the relay's Kafka clients. librdkafka reports every failure it meets (a
/// broker away, a producer fenced by the shard's next owner) through its log and error
/// callbacks; the relay handles each of them and reports what an operator must act on itself
/// (its monitor, `WARN` when a shard stops publishing, `ERROR` for a dead-lettered event). So
/// librdkafka's reports are logged at `WARN` at most, target `librdkafka`, and `ERROR` stays
/// for real faults.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Quiet;

impl ClientContext for Quiet {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", "{facility} {message}");
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", "{facility} {message}");
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", "{facility} {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // The progress reader reads to the end of a partition: its end is no news.
        if matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF)
        {
            tracing::debug!(target: "librdkafka", %error, "{reason}");
        } else {
            tracing::warn!(target: "librdkafka", %error, "{reason}");
        }
    }
}

impl ConsumerContext for Quiet {}

/// A transactional producer whose blocking calls run off the runtime, and which is dropped off
/// the runtime too (a drop purges and flushes for up to 500 ms).
pub(super) struct TxProducer(Option<FutureProducer<Quiet>>);

impl TxProducer {
    pub(super) fn new(producer: FutureProducer<Quiet>) -> Self {
        Self(Some(producer))
    }

    pub(super) fn get(&self) -> &FutureProducer<Quiet> {
        self.0
            .as_ref()
            .unwrap_or_else(|| unreachable!("taken only on drop"))
    }

    pub(super) async fn blocking<F>(&self, call: F) -> Result<(), KafkaError>
    where
        F: FnOnce(&FutureProducer<Quiet>) -> Result<(), KafkaError> + Send + 'static,
    {
        let producer = self.get().clone();
        tokio::task::spawn_blocking(move || call(&producer))
            .await
            .unwrap_or(Err(KafkaError::Canceled))
    }
}

impl Drop for TxProducer {
    fn drop(&mut self) {
        if let (Some(producer), Ok(runtime)) =
            (self.0.take(), tokio::runtime::Handle::try_current())
        {
            runtime.spawn_blocking(move || drop(producer));
        }
    }
}

/// The publish error a failed message is to blame for, or `None` when its failure is a
/// consequence of another's (purged when the transaction became abortable, refused in that
/// state, or a fatal producer error).
pub(super) fn blamed(error: &KafkaError) -> Option<PublishError> {
    match error.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::PurgeQueue
            | RDKafkaErrorCode::PurgeInflight
            | RDKafkaErrorCode::State
            | RDKafkaErrorCode::Fatal,
        ) => None,
        _ => Some(classify(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reader_gets_no_producer_property_and_keeps_the_rest() {
        let mut producer = ClientConfig::new();
        producer
            .set("bootstrap.servers", "127.0.0.1:9092")
            .set("security.protocol", "plaintext")
            .set("transaction.timeout.ms", "3000")
            .set("linger.ms", "5")
            .set("acks", "all");
        let reader = reader_config(&producer);
        assert_eq!(reader.get("bootstrap.servers"), Some("127.0.0.1:9092"));
        assert_eq!(reader.get("security.protocol"), Some("plaintext"));
        for key in ["transaction.timeout.ms", "linger.ms", "acks"] {
            assert_eq!(reader.get(key), None, "{key}");
        }
    }
}
