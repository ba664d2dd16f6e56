//! The progress topic: a compacted topic with one partition per shard. Every transaction of a
//! shard writes, beside its events, a record of the outbox rows it covers to the shard's
//! partition; the shard's next owner reads the last committed one.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureRecord;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// What one committed transaction covered.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Progress {
    /// The shard lease's token of the owner that committed it.
    pub(super) token: i64,
    /// The outbox rows published in it.
    pub(super) seqs: Vec<i64>,
}

/// Where a shard's progress records go: its own partition (so no other shard's open transaction
/// holds back what its next owner can read) under a key naming the shard and the shard count.
#[derive(Debug, Clone)]
pub(super) struct Place {
    pub(super) topic: String,
    pub(super) partition: i32,
    pub(super) key: String,
}

impl Place {
    pub(super) fn new(topic: &str, shard: u32, shards: u32) -> Self {
        Self {
            topic: topic.to_owned(),
            partition: i32::try_from(shard).unwrap_or(i32::MAX),
            key: format!("{shard}/{shards}"),
        }
    }

    /// The record of `progress`, to send inside the transaction it describes.
    pub(super) fn record<'a>(&'a self, payload: &'a [u8]) -> FutureRecord<'a, str, [u8]> {
        FutureRecord::to(&self.topic)
            .partition(self.partition)
            .key(self.key.as_str())
            .payload(payload)
    }

    /// The last progress record committed to this place, read `read_committed` from the tail of
    /// the partition to its last stable offset. Call it after `init_transactions`
    /// of the shard's producer, which completes or aborts the previous owner's transaction.
    pub(super) async fn last_committed(
        &self,
        kafka: &ClientConfig,
        limit: Duration,
    ) -> Result<Progress> {
        let mut config = kafka.clone();
        config
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            .set("enable.auto.commit", "false")
            .set("group.id", format!("{}.recovery", self.topic));
        let place = self.clone();
        tokio::task::spawn_blocking(move || place.read_last(&config, limit))
            .await
            .map_err(|e| Error::InvalidConfig(format!("progress reader panicked: {e}")))?
    }

    /// Reads the tail of the partition, a window at a time: the last record is normally among
    /// the last few offsets (each transaction adds its record and a commit marker), so a
    /// takeover reads a handful of records however long the partition has grown. A window that
    /// holds no record of this place (only aborted transactions, say) doubles, back to the start.
    fn read_last(&self, config: &ClientConfig, limit: Duration) -> Result<Progress> {
        let consumer: BaseConsumer = config.create()?;
        let deadline = std::time::Instant::now() + limit;
        let (low, stable) = consumer.fetch_watermarks(&self.topic, self.partition, limit)?;
        let mut window = 64;
        loop {
            let from = stable.saturating_sub(window).max(low);
            if let Some(last) = self.read_from(&consumer, from, deadline)? {
                return Ok(last);
            }
            if from == low {
                return Ok(Progress::default());
            }
            window = window.saturating_mul(16);
        }
    }

    /// The last record of this place from offset `from` to the partition's end, if any.
    fn read_from(
        &self,
        consumer: &BaseConsumer,
        from: i64,
        deadline: std::time::Instant,
    ) -> Result<Option<Progress>> {
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(&self.topic, self.partition, Offset::Offset(from))?;
        consumer.assign(&assignment)?;
        let mut last = None;
        while std::time::Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(200)) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(_))) => return Ok(last),
                Some(Err(error)) => return Err(error.into()),
                Some(Ok(message)) if message.key() == Some(self.key.as_bytes()) => {
                    // A tombstone (no payload) clears the place.
                    last = Some(match message.payload() {
                        Some(payload) => serde_json::from_slice(payload)?,
                        None => Progress::default(),
                    });
                }
                Some(Ok(_)) => {}
            }
        }
        Err(Error::Kafka(KafkaError::MessageConsumption(
            RDKafkaErrorCode::OperationTimedOut,
        )))
    }
}

/// Creates the compacted progress topic with one partition per shard when it is missing, or
/// checks that the existing one has enough partitions.
pub(super) async fn ensure_topic(kafka: &ClientConfig, topic: &str, shards: u32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = kafka.create()?;
    let partitions = i32::try_from(shards)
        .map_err(|_| Error::InvalidConfig(format!("{shards} shards are too many")))?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1))
        .set("cleanup.policy", "compact");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics([&new], &options).await? {
        match result {
            Ok(_) => return Ok(()),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(Error::Kafka(KafkaError::AdminOp(code))),
        }
    }
    let topic = topic.to_owned();
    let found = tokio::task::spawn_blocking(move || {
        let metadata = admin
            .inner()
            .fetch_metadata(Some(&topic), Duration::from_secs(30))?;
        Ok::<_, KafkaError>(
            metadata
                .topics()
                .first()
                .map_or(0, |t| t.partitions().len()),
        )
    })
    .await
    .map_err(|e| Error::InvalidConfig(format!("metadata request panicked: {e}")))??;
    if found < shards as usize {
        return Err(Error::InvalidConfig(format!(
            "the progress topic has {found} partitions; {shards} shards need {shards}"
        )));
    }
    Ok(())
}
