//! The progress topic: a compacted topic with one partition per shard. Every transaction of a
//! shard writes, beside its events, a record of the outbox rows it covers to the shard's
//! partition; the shard's next owner reads the last committed one and settles it only when the
//! record provably describes its own outbox's events ([`Progress::verdict`]).

use std::time::Duration;

use super::client::Quiet;
use leases::NamedLease;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureRecord;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::publisher::Event;
use crate::{Error, Result};

/// What one committed transaction covered, and who committed it.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Progress {
    /// The identity of the outbox whose rows it covers (`outbox_identity`).
    pub(super) outbox: Uuid,
    /// The owner of the shard lease under which it was committed.
    pub(super) owner: String,
    /// That lease's token.
    pub(super) token: i64,
    /// The rows published in it, by `seq`...
    pub(super) seqs: Vec<i64>,
    /// ...and by event id: `ids[i]` is the id of row `seqs[i]`.
    pub(super) ids: Vec<Uuid>,
}

/// What a new owner does with the last progress record of its shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// There is none (a new shard, a deleted progress topic, or a record this version cannot
    /// read): nothing to settle.
    Empty,
    /// It describes this outbox's events, committed under an earlier lease (or an earlier
    /// episode of this very lease): mark the rows whose `seq` *and* id it lists.
    Settle,
    /// It came from another outbox (a recreated database, or two outboxes under one relay
    /// name): ignored.
    OtherOutbox,
    /// Its lease is not older than the current one, so it cannot be a previous holder's (a
    /// database restored to a point before that lease was taken): ignored.
    NotEarlier,
}

impl Progress {
    /// The record of a transaction that publishes `batch` under `lease` from outbox `outbox`.
    pub(super) fn of(outbox: Uuid, lease: &NamedLease, batch: &[Event]) -> Self {
        Self {
            outbox,
            owner: lease.owner.clone(),
            token: lease.token,
            seqs: batch.iter().map(|e| e.seq).collect(),
            ids: batch.iter().map(|e| e.id).collect(),
        }
    }

    /// Whether the holder of `lease` over outbox `outbox` may settle this record.
    pub(super) fn verdict(&self, outbox: Uuid, lease: &NamedLease) -> Verdict {
        if self.seqs.is_empty() {
            Verdict::Empty
        } else if self.outbox != outbox {
            Verdict::OtherOutbox
        } else if self.token < lease.token
            || (self.token == lease.token && self.owner == lease.owner)
        {
            Verdict::Settle
        } else {
            Verdict::NotEarlier
        }
    }

    /// Reports why the holder of `lease` over outbox `outbox` ignores this record (`verdict` is
    /// not [`Verdict::Settle`]).
    pub(super) fn report_ignored(
        &self,
        verdict: Verdict,
        outbox: Uuid,
        lease: &NamedLease,
        shard: u32,
    ) {
        match verdict {
            Verdict::Empty | Verdict::Settle => {}
            Verdict::OtherOutbox => tracing::warn!(
                shard,
                record_outbox = %self.outbox,
                %outbox,
                "outbox: ignored the shard's last progress record: it came from another outbox \
                 (a recreated database, or two outboxes under one relay name)"
            ),
            Verdict::NotEarlier => tracing::warn!(
                shard,
                previous_owner = %self.owner,
                previous_token = self.token,
                token = lease.token,
                "outbox: ignored the shard's last progress record: its lease is not older than \
                 this one (a database restored to an earlier point?); the events it lists may \
                 be published again"
            ),
        }
    }

    /// Reads a record's payload: a tombstone, or a record this version cannot read (written by
    /// an older version, or not by a relay), is reported and read as no record.
    fn parse(payload: Option<&[u8]>) -> Self {
        let Some(payload) = payload else {
            return Self::default();
        };
        match serde_json::from_slice::<Self>(payload) {
            Ok(progress) if progress.seqs.len() == progress.ids.len() => progress,
            Ok(_) | Err(_) => {
                tracing::warn!(
                    "outbox: ignored a progress record this version cannot read; the events of \
                     its transaction may be published again"
                );
                Self::default()
            }
        }
    }
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
    /// the partition to its last stable offset. Call it after `init_transactions` of the shard's
    /// producer, which completes or aborts the previous owner's transaction. `clients` are the
    /// relay's client settings ([`super::client::reader_config`]).
    pub(super) async fn last_committed(
        &self,
        clients: &ClientConfig,
        limit: Duration,
    ) -> Result<Progress> {
        let (config, place) = (self.reader(clients), self.clone());
        tokio::task::spawn_blocking(move || place.read_last(&config, limit))
            .await
            .map_err(|e| Error::InvalidConfig(format!("progress reader panicked: {e}")))?
    }

    /// Whether the record a transaction wrote to this place at `offset` was committed: waits
    /// until the partition's last stable offset is past it (the transaction ended, one way or
    /// the other), then reads it `read_committed`, which skips it if it was aborted. Call it
    /// after `init_transactions`, which ends a transaction still pending. A record compaction
    /// removed reads as not committed (its events are published again).
    pub(super) async fn committed_at(
        &self,
        clients: &ClientConfig,
        offset: i64,
        limit: Duration,
    ) -> Result<bool> {
        let (config, place) = (self.reader(clients), self.clone());
        tokio::task::spawn_blocking(move || place.read_at(&config, offset, limit))
            .await
            .map_err(|e| Error::InvalidConfig(format!("progress reader panicked: {e}")))?
    }

    /// The progress reader's settings: `clients` ([`super::client::reader_config`]) reading
    /// committed records to the end of the partition.
    fn reader(&self, clients: &ClientConfig) -> ClientConfig {
        let mut config = clients.clone();
        config
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            .set("enable.auto.commit", "false")
            .set("group.id", format!("{}.recovery", self.topic));
        config
    }

    fn read_at(&self, config: &ClientConfig, offset: i64, limit: Duration) -> Result<bool> {
        let consumer: BaseConsumer<Quiet> = config.create_with_context(Quiet)?;
        let deadline = std::time::Instant::now() + limit;
        let mut first = None;
        loop {
            let last_stable = consumer
                .fetch_watermarks(&self.topic, self.partition, limit)?
                .1;
            if last_stable > offset {
                break;
            }
            if std::time::Instant::now() >= deadline {
                // A broker still writing markers moves it; a hanging transaction does not.
                if first == Some(last_stable) {
                    self.report_hanging(offset, last_stable);
                }
                return Err(timed_out());
            }
            first.get_or_insert(last_stable);
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(&self.topic, self.partition, Offset::Offset(offset))?;
        consumer.assign(&assignment)?;
        while std::time::Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(200)) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(_))) => return Ok(false),
                Some(Err(error)) => return Err(error.into()),
                Some(Ok(message)) => {
                    return Ok(
                        message.offset() == offset && message.key() == Some(self.key.as_bytes())
                    );
                }
            }
        }
        Err(timed_out())
    }

    /// The partition's last stable offset stayed where it was, at or before `offset`, for a whole
    /// wait although the caller's `init_transactions` has ended its transaction: a transaction
    /// the broker's coordinator no longer tracks (a *hanging* transaction, which a broker can
    /// leave behind after a crash) holds the partition, and only an operator can end it. The
    /// shard publishes nothing until then (that loses nothing; guessing the outcome could publish
    /// a batch twice).
    fn report_hanging(&self, offset: i64, last_stable: i64) {
        tracing::error!(
            topic = %self.topic,
            partition = self.partition,
            offset,
            last_stable,
            "outbox: a transaction the broker no longer tracks holds the progress partition \
             (its last stable offset does not move past this shard's resumed transaction); \
             the shard waits until it is aborted: `kafka-transactions.sh find-hanging`, then \
             `kafka-transactions.sh abort`"
        );
    }

    /// Reads the tail of the partition, a window at a time: the last record is normally among
    /// the last few offsets (each transaction adds its record and a commit marker), so a
    /// takeover reads a handful of records however long the partition has grown. A window that
    /// holds no record of this place (only aborted transactions, say) grows, back to the start.
    fn read_last(&self, config: &ClientConfig, limit: Duration) -> Result<Progress> {
        let consumer: BaseConsumer<Quiet> = config.create_with_context(Quiet)?;
        let deadline = std::time::Instant::now() + limit;
        let (low, stable) = consumer.fetch_watermarks(&self.topic, self.partition, limit)?;
        let mut window = 64;
        loop {
            let from = stable.saturating_sub(window).max(low);
            if let Some(last) = self.read_from(&consumer, from, deadline)? {
                return Ok(Progress::parse(last.as_deref()));
            }
            if from == low {
                return Ok(Progress::default());
            }
            window = window.saturating_mul(16);
        }
    }

    /// The payload of the last record of this place (`Some(None)` for a tombstone) from offset
    /// `from` to the partition's end, if there is one.
    #[allow(clippy::option_option)]
    fn read_from(
        &self,
        consumer: &BaseConsumer<Quiet>,
        from: i64,
        deadline: std::time::Instant,
    ) -> Result<Option<Option<Vec<u8>>>> {
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
                    last = Some(message.payload().map(<[u8]>::to_vec));
                }
                Some(Ok(_)) => {}
            }
        }
        Err(timed_out())
    }
}

/// A progress read that did not finish within its limit.
fn timed_out() -> Error {
    Error::Kafka(KafkaError::MessageConsumption(
        RDKafkaErrorCode::OperationTimedOut,
    ))
}

/// Creates the compacted progress topic with one partition per shard when it is missing, or
/// checks that the existing one has enough partitions. `clients` are the relay's client settings.
pub(super) async fn ensure_topic(clients: &ClientConfig, topic: &str, shards: u32) -> Result<()> {
    let admin: AdminClient<Quiet> = clients.create_with_context(Quiet)?;
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

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;

    fn lease(owner: &str, token: i64) -> NamedLease {
        NamedLease {
            name: "outbox/orders/0-of-4".into(),
            owner: owner.into(),
            token,
            expires_at: Utc::now(),
            acquired_at: Utc::now(),
        }
    }

    fn record(outbox: Uuid, owner: &str, token: i64) -> Progress {
        Progress {
            outbox,
            owner: owner.into(),
            token,
            seqs: vec![1, 2],
            ids: vec![Uuid::now_v7(), Uuid::now_v7()],
        }
    }

    #[test]
    fn a_record_is_settled_only_from_this_outbox_and_an_earlier_lease() {
        let outbox = Uuid::new_v4();
        let current = lease("b#2", 5);
        assert_eq!(
            record(outbox, "a#1", 4).verdict(outbox, &current),
            Verdict::Settle
        );
        // An earlier episode of this very lease (the keeper held it throughout).
        assert_eq!(
            record(outbox, "b#2", 5).verdict(outbox, &current),
            Verdict::Settle
        );
        assert_eq!(
            record(Uuid::new_v4(), "a#1", 4).verdict(outbox, &current),
            Verdict::OtherOutbox
        );
        // Same token, another holder: a restored database handed the token out again.
        assert_eq!(
            record(outbox, "a#1", 5).verdict(outbox, &current),
            Verdict::NotEarlier
        );
        assert_eq!(
            record(outbox, "a#1", 6).verdict(outbox, &current),
            Verdict::NotEarlier
        );
        assert_eq!(
            Progress::default().verdict(outbox, &current),
            Verdict::Empty
        );
    }

    #[test]
    fn a_record_this_version_cannot_read_is_no_record() {
        assert_eq!(Progress::parse(None), Progress::default());
        // What the previous version wrote: no outbox, no ids.
        let older = br#"{"token":1,"seqs":[1,2,3]}"#;
        assert_eq!(Progress::parse(Some(older)), Progress::default());
        let uneven = serde_json::to_vec(&Progress {
            ids: vec![],
            ..record(Uuid::new_v4(), "a#1", 1)
        })
        .expect("json");
        assert_eq!(Progress::parse(Some(&uneven)), Progress::default());
        let good = record(Uuid::new_v4(), "a#1", 1);
        let bytes = serde_json::to_vec(&good).expect("json");
        assert_eq!(Progress::parse(Some(&bytes)), good);
    }
}
