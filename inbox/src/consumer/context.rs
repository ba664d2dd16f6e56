//! The runner's librdkafka context: offsets committed before a rebalance revokes partitions,
//! and the partitions held.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};

use super::handle::Counters;

/// Commits stored offsets before partitions are revoked, so the next owner starts after the
/// last message this instance finished, and counts the partitions held after each rebalance.
pub(super) struct RunnerContext {
    pub(super) name: String,
    pub(super) counters: Arc<Counters>,
    pub(super) positions: super::lag::Positions,
    pub(super) workers: std::sync::Arc<super::partition::Workers>,
}

impl ClientContext for RunnerContext {}

impl ConsumerContext for RunnerContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            tracing::info!(
                consumer = %self.name,
                revoked = partitions.count(),
                "consumer: partitions revoked; committing offsets"
            );
            self.workers.revoke(
                partitions
                    .elements()
                    .iter()
                    .map(|p| (p.topic().to_owned(), p.partition())),
            );
            commit(consumer, &self.name);
            self.positions.revoked(
                &self.name,
                partitions
                    .elements()
                    .iter()
                    .map(|p| (p.topic().to_owned(), p.partition())),
            );
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, _rebalance: &Rebalance<'_>) {
        let held = consumer
            .assignment()
            .map_or(0, |assignment| assignment.count() as u64);
        self.counters.partitions.store(held, Ordering::Relaxed);
        metrics::gauge!("inbox_consumer_partitions", "consumer" => self.name.clone())
            .set(held as f64);
        tracing::info!(consumer = %self.name, partitions = held, "consumer: partitions assigned");
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &rdkafka::TopicPartitionList) {
        if let Err(error) = result {
            if !is_no_offset(&error) {
                tracing::warn!(consumer = %self.name, %error, "consumer: offset commit failed");
            }
        }
    }
}

fn is_no_offset(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)
    )
}

pub(super) fn commit<C: rdkafka::consumer::Consumer<Cx>, Cx: ConsumerContext>(
    consumer: &C,
    name: &str,
) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => {}
        Err(error) if is_no_offset(&error) => {}
        Err(error) => tracing::warn!(consumer = %name, %error, "consumer: offset commit failed"),
    }
}
