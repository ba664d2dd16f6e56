//! [`ConsumerConfig`]: how a [`Consumer`](crate::Consumer) runs.

use std::fmt;
use std::time::Duration;

use leases::retry::Backoff;
use rdkafka::ClientConfig;

/// How a [`Consumer`](crate::Consumer) runs. Every setter documents its default.
#[derive(Clone)]
pub struct ConsumerConfig {
    pub(super) name: String,
    pub(super) group_id: Option<String>,
    pub(super) topics: Vec<String>,
    pub(super) dead_letter_topic: Option<String>,
    pub(super) kafka: ClientConfig,
    pub(super) dead_letter_producer: Option<ClientConfig>,
    pub(super) event_id_header: String,
    pub(super) backoff: Backoff,
    pub(super) read_committed: bool,
    pub(super) batch_size: u32,
    pub(super) batch_max_wait: Duration,
    pub(super) concurrency: u32,
}

impl fmt::Debug for ConsumerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The client configs may hold credentials: not printed.
        f.debug_struct("ConsumerConfig")
            .field("name", &self.name)
            .field("group_id", &self.resolved_group_id())
            .field("topics", &self.topics)
            .field("dead_letter_topic", &self.resolved_dead_letter_topic())
            .field("event_id_header", &self.event_id_header)
            .field("backoff", &self.backoff)
            .field("read_committed", &self.read_committed)
            .field("batch_size", &self.batch_size)
            .field("batch_max_wait", &self.batch_max_wait)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

impl ConsumerConfig {
    /// A consumer named `name` (its inbox records are `(name, event id)`, and its default group
    /// id), connecting with `kafka` (at least `bootstrap.servers`; security settings too). The
    /// runner sets `group.id`, `enable.auto.commit=true`, `enable.auto.offset.store=false` and
    /// `enable.partition.eof=false` and `isolation.level` ([`read_committed`](Self::read_committed)) itself, and `auto.offset.reset=earliest` and
    /// `auto.commit.interval.ms=1000` unless `kafka` sets them.
    pub fn new(name: impl Into<String>, kafka: ClientConfig) -> Self {
        Self {
            name: name.into(),
            group_id: None,
            topics: Vec::new(),
            dead_letter_topic: None,
            kafka,
            dead_letter_producer: None,
            event_id_header: "event-id".into(),
            backoff: Backoff::new(
                Duration::from_millis(100),
                Duration::from_secs(30),
                u32::MAX,
            )
            .expect("100 ms to 30 s with u32::MAX attempts is a valid backoff"),
            read_committed: true,
            batch_size: 500,
            batch_max_wait: Duration::from_millis(5),
            concurrency: 4,
        }
    }

    /// The most messages of one partition applied in one transaction. Larger batches cost
    /// fewer commits; a permanent failure makes the runner apply its batch again one message at
    /// a time. Default: 500.
    pub fn batch_size(mut self, messages: u32) -> Self {
        self.batch_size = messages;
        self
    }

    /// How long a partition's worker waits for more messages before it applies a batch that is
    /// not full (it never waits while messages are queued for it). Default: 5 ms.
    pub fn batch_max_wait(mut self, wait: Duration) -> Self {
        self.batch_max_wait = wait;
        self
    }

    /// How many partitions apply a batch at once, each on a connection of the pool: keep it
    /// within the pool's size. A partition's batches are always applied one after the other.
    /// Default: 4.
    pub fn concurrency(mut self, partitions: u32) -> Self {
        self.concurrency = partitions;
        self
    }

    /// Adds a topic to consume. At least one is required. Default: none.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topics.push(topic.into());
        self
    }

    /// The consumer group. Instances of one service share it (Kafka splits the partitions
    /// between them); different services need different groups. Default: the name.
    pub fn group_id(mut self, group_id: impl Into<String>) -> Self {
        self.group_id = Some(group_id.into());
        self
    }

    /// Where permanent failures go. The topic must exist. Default: `<name>.dead-letters`.
    pub fn dead_letter_topic(mut self, topic: impl Into<String>) -> Self {
        self.dead_letter_topic = Some(topic.into());
        self
    }

    /// The client configuration of the dead-letter producer (the runner sets
    /// `enable.idempotence=true` on it, and `partitioner=murmur2_random` unless it names one). Default: the `kafka` configuration given to
    /// [`new`](Self::new).
    pub fn dead_letter_producer(mut self, config: ClientConfig) -> Self {
        self.dead_letter_producer = Some(config);
        self
    }

    /// The header holding the event id. Default: `event-id` (what `outbox` publishes).
    pub fn event_id_header(mut self, name: impl Into<String>) -> Self {
        self.event_id_header = name.into();
        self
    }

    /// How a message that failed retriably is retried: the delay before each retry (full
    /// jitter, doubling up to the cap) and how many attempts it gets before it is dead-lettered
    /// as `attempts-exhausted`. The partition waits meanwhile, which is what keeps its order.
    /// Default: 100 ms doubling up to 30 s, `u32::MAX` attempts (in effect, until it succeeds:
    /// a database outage holds the partition rather than dead-lettering everything in it).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Whether to read only committed messages (`isolation.level=read_committed`): the records
    /// of aborted Kafka transactions are skipped, and a transaction's records are delivered once
    /// it commits. Keep it on for topics written by the exactly-once relay
    /// (`outbox::exactly_once`), to which it is what makes each event arrive once; for topics
    /// written without transactions it changes nothing. Default: `true`.
    pub fn read_committed(mut self, read_committed: bool) -> Self {
        self.read_committed = read_committed;
        self
    }

    pub(super) fn resolved_group_id(&self) -> &str {
        self.group_id.as_deref().unwrap_or(&self.name)
    }

    pub(super) fn resolved_dead_letter_topic(&self) -> String {
        self.dead_letter_topic
            .clone()
            .unwrap_or_else(|| format!("{}.dead-letters", self.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_backoff_doubles_to_30_s_and_retries_until_it_succeeds() {
        let config = ConsumerConfig::new("c", ClientConfig::new());
        let ceilings: Vec<_> = [1, 2, 3, 10, u32::MAX]
            .map(|a| config.backoff.ceiling(a).as_millis())
            .to_vec();
        assert_eq!(ceilings, [100, 200, 400, 30_000, 30_000]);
        assert_eq!(config.backoff.max_attempts(), u32::MAX);
    }
}
