//! Consumer lag per partition: the messages between this consumer's next offset and the
//! partition's high watermark, sampled every [`EVERY`].
//!
//! rdkafka 0.39 drops librdkafka's statistics events on a consumer's poll, so the lag is measured
//! here: the runner notes the next offset of each partition it handles, and a sampler asks the
//! broker for the high watermarks with a client of its own (no group), off the runner's loop,
//! so the lag keeps growing on the gauge while a handler is stuck.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use leases::task::{Background, CancellationToken};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};

use super::handle::sleep_or_stop;

/// How often the lag is sampled.
const EVERY: Duration = Duration::from_secs(10);

/// The next offset to handle, per partition this consumer has handled a message of.
#[derive(Debug, Clone, Default)]
pub(super) struct Positions(Arc<Mutex<HashMap<(String, i32), i64>>>);

impl Positions {
    /// The message at `offset` of `topic`/`partition` was handled.
    pub(super) fn handled(&self, topic: &str, partition: i32, offset: i64) {
        self.lock()
            .insert((topic.to_owned(), partition), offset + 1);
    }

    /// The partitions were revoked: another member reports their lag now.
    pub(super) fn revoked(&self, consumer: &str, partitions: impl Iterator<Item = (String, i32)>) {
        let mut positions = self.lock();
        for (topic, partition) in partitions {
            if positions.remove(&(topic.clone(), partition)).is_some() {
                gauge(consumer, topic, partition, 0);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<(String, i32), i64>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn gauge(consumer: &str, topic: String, partition: i32, lag: i64) {
    metrics::gauge!(
        "inbox_consumer_lag",
        "consumer" => consumer.to_owned(),
        "topic" => topic,
        "partition" => partition.to_string()
    )
    .set(lag.max(0) as f64);
}

/// Samples the gauge `inbox_consumer_lag{consumer, topic, partition}` every [`EVERY`] until
/// stopped, with a client made from `kafka` (the runner's settings without its group).
pub(super) fn sample(consumer: String, kafka: &ClientConfig, positions: Positions) -> Background {
    let mut kafka = kafka.clone();
    kafka.remove("group.id");
    kafka.remove("group.instance.id");
    Background::spawn(move |stop: CancellationToken| async move {
        let client: Arc<BaseConsumer> = match kafka.create() {
            Ok(client) => Arc::new(client),
            Err(error) => {
                tracing::warn!(%consumer, %error, "consumer: no lag client; lag not reported");
                return;
            }
        };
        while !sleep_or_stop(EVERY, &stop).await {
            let next: Vec<_> = positions.lock().clone().into_iter().collect();
            let client = Arc::clone(&client);
            let consumer = consumer.clone();
            let sampled = tokio::task::spawn_blocking(move || {
                for ((topic, partition), next) in next {
                    if let Ok((_, high)) =
                        client.fetch_watermarks(&topic, partition, Duration::from_secs(2))
                    {
                        gauge(&consumer, topic, partition, high - next);
                    }
                }
            });
            let _ = sampled.await;
        }
    })
}
