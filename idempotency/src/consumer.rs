//! [`Consumer`]: the reusable Kafka consumer runner, with the inbox and dead letters.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::inbox::{self, Delivery};
use crate::{Error, Result};

/// A consumed message, as the runner hands it to a [`Handler`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    timestamp_millis: Option<i64>,
}

impl Message {
    /// A message built by hand (for testing a handler without a broker).
    pub fn new(
        topic: impl Into<String>,
        partition: i32,
        offset: i64,
        key: Option<Vec<u8>>,
        payload: Option<Vec<u8>>,
        headers: Vec<(String, Option<Vec<u8>>)>,
    ) -> Self {
        Self {
            topic: topic.into(),
            partition,
            offset,
            key,
            payload,
            headers,
            timestamp_millis: None,
        }
    }

    fn from_kafka(message: &BorrowedMessage<'_>) -> Self {
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers,
            timestamp_millis: message.timestamp().to_millis(),
        }
    }

    /// The topic it was read from.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Its partition.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// Its offset in the partition.
    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// Its key.
    pub fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }

    /// Its value.
    pub fn payload(&self) -> Option<&[u8]> {
        self.payload.as_deref()
    }

    /// The value of the first header named `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| value.as_deref())
    }

    /// [`header`](Self::header) as UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every header, in order.
    pub fn headers(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
        self.headers
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_deref()))
    }

    /// Its timestamp, in milliseconds since the Unix epoch, if it has one.
    pub fn timestamp_millis(&self) -> Option<i64> {
        self.timestamp_millis
    }
}

/// Why a message went to the dead-letter topic: the value of its `dlq-reason` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeadLetterReason {
    /// `decode-failed`: the payload is not a valid event.
    DecodeFailed,
    /// `unknown-event-type`: the event type is not one the handler accepts.
    UnknownEventType,
    /// `missing-event-id`: no event id header, so the inbox cannot deduplicate it.
    MissingEventId,
    /// `rejected`: the handler said the event can never be applied.
    Rejected,
    /// `attempts-exhausted`: retriable failures exceeded [`ConsumerConfig::max_attempts`].
    AttemptsExhausted,
}

impl DeadLetterReason {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DecodeFailed => "decode-failed",
            Self::UnknownEventType => "unknown-event-type",
            Self::MissingEventId => "missing-event-id",
            Self::Rejected => "rejected",
            Self::AttemptsExhausted => "attempts-exhausted",
        }
    }
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a [`Handler`] could not apply a message, and whether trying again may help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    /// `None`: retriable.
    dead_letter: Option<DeadLetterReason>,
    message: String,
}

impl HandlerError {
    /// A failure that may not happen again (a dependency down, a lock timeout): the runner
    /// rolls back and retries the same message after a backoff.
    pub fn retriable(error: impl fmt::Display) -> Self {
        Self {
            dead_letter: None,
            message: error.to_string(),
        }
    }

    /// A failure that will happen every time: the message is dead-lettered as `rejected`.
    pub fn permanent(error: impl fmt::Display) -> Self {
        Self::dead(DeadLetterReason::Rejected, error)
    }

    /// The payload is not a valid event: dead-lettered as `decode-failed`.
    pub fn decode(error: impl fmt::Display) -> Self {
        Self::dead(DeadLetterReason::DecodeFailed, error)
    }

    /// The event type is not accepted: dead-lettered as `unknown-event-type`.
    pub fn unknown_event_type(event_type: impl fmt::Display) -> Self {
        Self::dead(
            DeadLetterReason::UnknownEventType,
            format!("unknown event type {event_type}"),
        )
    }

    fn dead(reason: DeadLetterReason, error: impl fmt::Display) -> Self {
        Self {
            dead_letter: Some(reason),
            message: error.to_string(),
        }
    }

    /// Whether a retry may succeed.
    pub fn is_retriable(&self) -> bool {
        self.dead_letter.is_none()
    }

    /// Where a permanent failure goes: the `dlq-reason`. `None` for a retriable one.
    pub fn dead_letter_reason(&self) -> Option<DeadLetterReason> {
        self.dead_letter
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.dead_letter {
            Some(reason) => write!(f, "{reason}: {}", self.message),
            None => write!(f, "retriable: {}", self.message),
        }
    }
}

impl std::error::Error for HandlerError {}

/// Transient database errors (serialization failure, deadlock, lost connection) are retriable;
/// any other (a constraint violation, a missing table) is permanent.
impl From<sqlx::Error> for HandlerError {
    fn from(error: sqlx::Error) -> Self {
        if leases::is_retriable_db_error(&error) {
            Self::retriable(error)
        } else {
            Self::permanent(error)
        }
    }
}

/// Classified by [`Error::is_retriable`].
impl From<Error> for HandlerError {
    fn from(error: Error) -> Self {
        if error.is_retriable() {
            Self::retriable(error)
        } else {
            Self::permanent(error)
        }
    }
}

/// What a service does with its events: decode a message, then apply it inside the runner's
/// transaction.
///
/// ```
/// use idempotency::{Handler, HandlerError, Message};
/// use sqlx::PgConnection;
///
/// enum StockEvent {
///     Reserved { sku: String, quantity: i32 },
/// }
///
/// struct Inventory;
///
/// impl Handler for Inventory {
///     type Event = StockEvent;
///
///     fn decode(&self, message: &Message) -> Result<StockEvent, HandlerError> {
///         let payload = message.payload().unwrap_or_default();
///         match message.header_str("event-type") {
///             Some("StockReserved") => {
///                 #[derive(serde::Deserialize)]
///                 struct Reserved {
///                     sku: String,
///                     quantity: i32,
///                 }
///                 let Reserved { sku, quantity } =
///                     serde_json::from_slice(payload).map_err(HandlerError::decode)?;
///                 Ok(StockEvent::Reserved { sku, quantity })
///             }
///             other => Err(HandlerError::unknown_event_type(other.unwrap_or("(none)"))),
///         }
///     }
///
///     async fn handle(
///         &self,
///         conn: &mut PgConnection,
///         event: StockEvent,
///         _message: &Message,
///     ) -> Result<(), HandlerError> {
///         let StockEvent::Reserved { sku, quantity } = event;
///         sqlx::query("UPDATE stock SET reserved = reserved + $2 WHERE sku = $1")
///             .bind(sku)
///             .bind(quantity)
///             .execute(&mut *conn)
///             .await?; // transient errors retry, others dead-letter
///         Ok(())
///     }
/// }
/// ```
pub trait Handler: Send + Sync + 'static {
    /// The decoded event.
    type Event: Send;

    /// Decodes a message. Return [`HandlerError::decode`] or
    /// [`HandlerError::unknown_event_type`] for messages that are not valid events: they are
    /// dead-lettered. Called again on every retry.
    ///
    /// # Errors
    ///
    /// A [`HandlerError`] saying whether the message is poison or decoding may succeed later.
    fn decode(&self, message: &Message) -> Result<Self::Event, HandlerError>;

    /// Applies a fresh event on `conn`, inside the transaction that also records it in the
    /// inbox. Do not commit or roll back: the runner does.
    ///
    /// # Errors
    ///
    /// A [`HandlerError`]: retriable ones are retried, permanent ones dead-lettered.
    fn handle(
        &self,
        conn: &mut PgConnection,
        event: Self::Event,
        message: &Message,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// How a [`Consumer`] runs. Every setter documents its default.
#[derive(Clone)]
pub struct ConsumerConfig {
    name: String,
    group_id: Option<String>,
    topics: Vec<String>,
    dead_letter_topic: Option<String>,
    kafka: ClientConfig,
    dead_letter_producer: Option<ClientConfig>,
    event_id_header: String,
    initial_backoff: Duration,
    max_backoff: Duration,
    max_attempts: Option<u32>,
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
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

impl ConsumerConfig {
    /// A consumer named `name` (its inbox records are `(name, event id)`, and its default group
    /// id), connecting with `kafka` (at least `bootstrap.servers`; security settings too). The
    /// runner sets `group.id`, `enable.auto.commit=true`, `enable.auto.offset.store=false` and
    /// `enable.partition.eof=false` itself, and `auto.offset.reset=earliest` and
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
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            max_attempts: None,
        }
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

    /// The delay before the first retry of a message, doubled on every further retry up to
    /// `max`. Default: 100 ms, up to 30 s.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max;
        self
    }

    /// How many times a message may fail retriably before it is dead-lettered as
    /// `attempts-exhausted`; `None` retries until it succeeds (a database outage then holds
    /// the partition, which is what keeps its order). Default: `None`.
    pub fn max_attempts(mut self, attempts: Option<u32>) -> Self {
        self.max_attempts = attempts;
        self
    }

    fn resolved_group_id(&self) -> &str {
        self.group_id.as_deref().unwrap_or(&self.name)
    }

    fn resolved_dead_letter_topic(&self) -> String {
        self.dead_letter_topic
            .clone()
            .unwrap_or_else(|| format!("{}.dead-letters", self.name))
    }

    fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.initial_backoff
            .saturating_mul(1 << doublings)
            .min(self.max_backoff)
    }
}

/// Commits stored offsets before partitions are revoked, so the next owner starts after the
/// last message this instance finished.
struct RunnerContext {
    name: String,
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
            commit(consumer, &self.name);
        }
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

fn commit<C: rdkafka::consumer::Consumer<Cx>, Cx: ConsumerContext>(consumer: &C, name: &str) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => {}
        Err(error) if is_no_offset(&error) => {}
        Err(error) => tracing::warn!(consumer = %name, %error, "consumer: offset commit failed"),
    }
}

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
}

#[derive(Debug, Default)]
struct Counters {
    processed: AtomicU64,
    duplicates: AtomicU64,
    dead_lettered: AtomicU64,
    retries: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> ConsumerStats {
        ConsumerStats {
            processed: self.processed.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
        }
    }
}

/// A Kafka consumer that applies each event once through a [`Handler`].
///
/// Every service that consumes events needs the same loop, and each hand-written copy gets a
/// different detail wrong (committing the offset before the database, retrying out of order,
/// dropping a poison message). The runner does, per message, in partition order:
///
/// 1. **Decode** it with the [`Handler`] (an allowlist of event types: unknown types are refused,
///    never deserialized blindly) and read its event id (the `event-id` header that `outbox`
///    sets).
/// 2. **One transaction**: [`inbox::receive`] records `(consumer, event id)`; a duplicate
///    commits nothing else and is skipped; a fresh event runs the handler on the same
///    connection (`&mut PgConnection`: its effects, and any new outbox events through
///    `outbox::enqueue`), then commits.
/// 3. **Then** stores the message's offset, committed to Kafka every second, before a rebalance
///    revokes the partition, and at shutdown. A crash before the offset commit redelivers the
///    message; the inbox makes the redelivery a duplicate.
///
/// Failures: a [retriable](HandlerError::retriable) one (a transient database error, a
/// dependency down) rolls back and retries the same message with exponential backoff: the
/// partition waits, so order is kept. A permanent one (cannot decode, unknown event type, no
/// event id, the handler [refuses](HandlerError::permanent) it, or retries exhausted when
/// [`max_attempts`](ConsumerConfig::max_attempts) is set) rolls back, publishes the message
/// unchanged to the dead-letter topic with headers `dlq-reason`, `dlq-error`,
/// `dlq-original-topic`, `dlq-original-partition`, `dlq-original-offset` and `dlq-consumer`,
/// waits for the broker's acknowledgement, and moves on: the partition keeps flowing.
///
/// # Why the runner lives in this crate
///
/// Its guarantee, an effect applied once per event, is the inbox's, and the inbox is here. The
/// `outbox` crate is the producing side and stays free of consumer concerns; `idempotency`
/// does not depend on `outbox` either: the handler gets the transaction's connection and calls
/// `outbox::enqueue` itself. So a service that consumes depends on `idempotency` (and on
/// `outbox` only if it also publishes), and no service carries its own copy of the loop.
///
/// # Example
///
/// ```no_run
/// # use idempotency::{Handler, HandlerError, Message};
/// # struct Inventory;
/// # impl Handler for Inventory {
/// #     type Event = ();
/// #     fn decode(&self, _: &Message) -> Result<(), HandlerError> { Ok(()) }
/// #     async fn handle(&self, _: &mut sqlx::PgConnection, _: (), _: &Message)
/// #         -> Result<(), HandlerError> { Ok(()) }
/// # }
/// use idempotency::{Consumer, ConsumerConfig};
///
/// # async fn run(pool: sqlx::PgPool) -> idempotency::Result<()> {
/// let mut kafka = rdkafka::ClientConfig::new();
/// kafka.set("bootstrap.servers", "127.0.0.1:9092");
/// let config = ConsumerConfig::new("inventory", kafka)
///     .topic("orders")
///     .dead_letter_topic("inventory.dead-letters");
/// let handle = Consumer::new(pool, config, Inventory)?.spawn();
/// // ... until shutdown:
/// handle.shutdown().await; // finishes the message in hand, commits offsets, leaves the group
/// # Ok(()) }
/// ```
///
/// Metrics (through the `metrics` facade), labelled `consumer`:
/// `idempotency_consumer_messages_total{outcome=processed|duplicate|dead_lettered}`,
/// `idempotency_consumer_retries_total`, `idempotency_consumer_processing_seconds`, and the
/// inbox's `idempotency_inbox_duplicates_total`.
pub struct Consumer<H> {
    pool: PgPool,
    consumer: StreamConsumer<RunnerContext>,
    producer: FutureProducer,
    handler: H,
    config: ConsumerConfig,
    dead_letter_topic: String,
    counters: Arc<Counters>,
}

impl<H> fmt::Debug for Consumer<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("config", &self.config)
            .field("stats", &self.counters.snapshot())
            .finish_non_exhaustive()
    }
}

/// What became of one message.
enum Processed {
    /// Applied, skipped as a duplicate, or dead-lettered: its offset may be committed.
    Done,
    /// Shutdown came while it was waiting for a retry: it will be delivered again.
    Stopped,
}

impl<H: Handler> Consumer<H> {
    /// Creates the consumer (subscribed to the topics, joining the group on its first poll) and
    /// the dead-letter producer.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] without topics or with a zero backoff; [`Error::Kafka`] when a
    /// client cannot be created or the subscription fails.
    pub fn new(pool: PgPool, config: ConsumerConfig, handler: H) -> Result<Self> {
        if config.topics.is_empty() {
            return Err(Error::InvalidConfig("a consumer needs a topic".into()));
        }
        if config.initial_backoff.is_zero() || config.max_backoff < config.initial_backoff {
            return Err(Error::InvalidConfig(
                "the backoff must be greater than zero, and its maximum at least its start".into(),
            ));
        }
        let mut client = config.kafka.clone();
        client
            .set("group.id", config.resolved_group_id())
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false");
        for (key, default) in [
            ("auto.offset.reset", "earliest"),
            ("auto.commit.interval.ms", "1000"),
        ] {
            if client.get(key).is_none() {
                client.set(key, default);
            }
        }
        let consumer: StreamConsumer<RunnerContext> =
            client.create_with_context(RunnerContext {
                name: config.name.clone(),
            })?;
        let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        let mut dead_letters = config
            .dead_letter_producer
            .as_ref()
            .unwrap_or(&config.kafka)
            .clone();
        if dead_letters.get("partitioner").is_none() {
            dead_letters.set("partitioner", "murmur2_random");
        }
        let producer: FutureProducer = dead_letters.set("enable.idempotence", "true").create()?;
        Ok(Self {
            pool,
            consumer,
            producer,
            handler,
            dead_letter_topic: config.resolved_dead_letter_topic(),
            config,
            counters: Arc::new(Counters::default()),
        })
    }

    /// Runs the consumer in the background until [`ConsumerHandle::shutdown`].
    pub fn spawn(self) -> ConsumerHandle {
        let (stop, stop_rx) = watch::channel(false);
        let counters = Arc::clone(&self.counters);
        let task = tokio::spawn(self.run(stop_rx));
        ConsumerHandle {
            stop,
            task,
            counters,
        }
    }

    async fn run(self, mut stop: watch::Receiver<bool>) {
        let name = self.config.name.as_str();
        tracing::info!(
            consumer = %name,
            group = %self.config.resolved_group_id(),
            topics = ?self.config.topics,
            "consumer: started"
        );
        loop {
            let received = tokio::select! {
                biased;
                () = stopped(&mut stop) => break,
                received = self.consumer.recv() => received,
            };
            let borrowed = match received {
                Ok(message) => message,
                Err(error) => {
                    tracing::warn!(consumer = %name, %error, "consumer: poll failed");
                    if sleep_or_stop(Duration::from_millis(100), &mut stop).await {
                        break;
                    }
                    continue;
                }
            };
            let message = Message::from_kafka(&borrowed);
            match self.process(&message, &mut stop).await {
                Processed::Done => {
                    if let Err(error) = self.consumer.store_offset_from_message(&borrowed) {
                        tracing::warn!(
                            consumer = %name,
                            %error,
                            "consumer: storing the offset failed (partition revoked?); \
                             the message will be delivered again"
                        );
                    }
                }
                Processed::Stopped => break,
            }
        }
        commit(&self.consumer, name);
        tracing::info!(consumer = %name, "consumer: stopped");
    }

    async fn process(&self, message: &Message, stop: &mut watch::Receiver<bool>) -> Processed {
        let name = self.config.name.as_str();
        let started = Instant::now();
        let mut attempt = 0_u32;
        let (reason, error) = loop {
            attempt = attempt.saturating_add(1);
            let failure = match self.attempt(message).await {
                Ok(delivery) => {
                    let (counter, outcome) = match delivery {
                        Delivery::Fresh => (&self.counters.processed, "processed"),
                        Delivery::Duplicate => (&self.counters.duplicates, "duplicate"),
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(
                        "idempotency_consumer_messages_total",
                        "consumer" => name.to_owned(),
                        "outcome" => outcome
                    )
                    .increment(1);
                    metrics::histogram!(
                        "idempotency_consumer_processing_seconds",
                        "consumer" => name.to_owned()
                    )
                    .record(started.elapsed().as_secs_f64());
                    return Processed::Done;
                }
                Err(failure) => failure,
            };
            match failure.dead_letter {
                Some(reason) => break (reason, failure.message),
                None if self.config.max_attempts.is_some_and(|max| attempt >= max) => {
                    break (DeadLetterReason::AttemptsExhausted, failure.message);
                }
                None => {
                    let delay = self.config.delay(attempt);
                    self.counters.retries.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(
                        "idempotency_consumer_retries_total",
                        "consumer" => name.to_owned()
                    )
                    .increment(1);
                    tracing::warn!(
                        consumer = %name,
                        topic = message.topic(),
                        partition = message.partition(),
                        offset = message.offset(),
                        attempt,
                        ?delay,
                        error = %failure.message,
                        "consumer: retriable failure; retrying the message"
                    );
                    if sleep_or_stop(delay, stop).await {
                        return Processed::Stopped;
                    }
                }
            }
        };
        tracing::error!(
            consumer = %name,
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            %reason,
            %error,
            "consumer: dead-lettering the message"
        );
        let mut attempt = 0_u32;
        loop {
            attempt = attempt.saturating_add(1);
            match self.dead_letter(message, reason, &error).await {
                Ok(()) => {
                    self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(
                        "idempotency_consumer_messages_total",
                        "consumer" => name.to_owned(),
                        "outcome" => "dead_lettered"
                    )
                    .increment(1);
                    return Processed::Done;
                }
                Err(publish_error) => {
                    let delay = self.config.delay(attempt);
                    tracing::warn!(
                        consumer = %name,
                        error = %publish_error,
                        ?delay,
                        "consumer: publishing the dead letter failed; retrying"
                    );
                    if sleep_or_stop(delay, stop).await {
                        return Processed::Stopped;
                    }
                }
            }
        }
    }

    /// Decodes, records in the inbox and applies one message in one transaction.
    async fn attempt(&self, message: &Message) -> Result<Delivery, HandlerError> {
        let event = self.handler.decode(message)?;
        let event_id = message
            .header_str(&self.config.event_id_header)
            .ok_or_else(|| {
                HandlerError::dead(
                    DeadLetterReason::MissingEventId,
                    format!("no {} header", self.config.event_id_header),
                )
            })?;
        let mut tx = self.pool.begin().await?;
        if inbox::receive(&mut tx, &self.config.name, event_id).await? == Delivery::Duplicate {
            tx.commit().await?;
            return Ok(Delivery::Duplicate);
        }
        self.handler.handle(&mut tx, event, message).await?;
        // A commit whose outcome is unknown is retried: the inbox then reports a duplicate.
        tx.commit().await?;
        Ok(Delivery::Fresh)
    }

    async fn dead_letter(
        &self,
        message: &Message,
        reason: DeadLetterReason,
        error: &str,
    ) -> std::result::Result<(), KafkaError> {
        let partition = message.partition().to_string();
        let offset = message.offset().to_string();
        let error: String = error.chars().take(1000).collect();
        let mut headers = OwnedHeaders::new_with_capacity(message.headers.len() + 6);
        for (key, value) in message.headers() {
            headers = headers.insert(Header { key, value });
        }
        for (key, value) in [
            ("dlq-reason", reason.as_str()),
            ("dlq-error", &error),
            ("dlq-original-topic", message.topic()),
            ("dlq-original-partition", &partition),
            ("dlq-original-offset", &offset),
            ("dlq-consumer", &self.config.name),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.dead_letter_topic).headers(headers);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(payload) = message.payload() {
            record = record.payload(payload);
        }
        self.producer
            .send(record, Timeout::After(Duration::from_secs(30)))
            .await
            .map(|_| ())
            .map_err(|(error, _)| error)
    }
}

/// Resolves once shutdown was requested; never if the handle was dropped without it.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Sleeps for `delay`; returns `true` if shutdown was requested meanwhile.
async fn sleep_or_stop(delay: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => false,
        () = stopped(stop) => true,
    }
}

/// A running [`Consumer`].
#[derive(Debug)]
pub struct ConsumerHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    counters: Arc<Counters>,
}

impl ConsumerHandle {
    /// What the consumer did so far.
    pub fn stats(&self) -> ConsumerStats {
        self.counters.snapshot()
    }

    /// Graceful shutdown: stops polling, finishes the message in hand (a message waiting for a
    /// retry is left for redelivery), commits the offsets, leaves the group, and returns.
    pub async fn shutdown(self) -> ConsumerStats {
        self.stop.send_replace(true);
        if let Err(error) = self.task.await {
            tracing::error!(%error, "consumer: task failed");
        }
        self.counters.snapshot()
    }

    /// Stops the consumer at once, as a crash would: offsets not yet committed are not, and
    /// the messages after them are delivered again (to this group's next member).
    pub fn abort(self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let config = ConsumerConfig::new("c", ClientConfig::new())
            .backoff(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<_> = (1..=6).map(|a| config.delay(a).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(config.delay(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn classifies_handler_errors() {
        assert!(HandlerError::retriable("x").is_retriable());
        assert_eq!(
            HandlerError::decode("x").dead_letter_reason(),
            Some(DeadLetterReason::DecodeFailed)
        );
        assert_eq!(
            HandlerError::unknown_event_type("Foo").to_string(),
            "unknown-event-type: unknown event type Foo"
        );
        assert!(HandlerError::from(sqlx::Error::PoolTimedOut).is_retriable());
        assert_eq!(
            HandlerError::from(sqlx::Error::RowNotFound).dead_letter_reason(),
            Some(DeadLetterReason::Rejected)
        );
    }

    #[test]
    fn reads_headers() {
        let message = Message::new(
            "t",
            0,
            7,
            None,
            Some(b"{}".to_vec()),
            vec![
                ("event-id".into(), Some(b"e1".to_vec())),
                ("empty".into(), None),
            ],
        );
        assert_eq!(message.header_str("event-id"), Some("e1"));
        assert_eq!(message.header("empty"), None);
        assert_eq!(message.headers().count(), 2);
    }
}
