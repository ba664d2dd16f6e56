//! [`Consumer`]: the reusable Kafka consumer runner, with the inbox and dead letters.

mod config;
mod context;
mod handle;
mod handler;
mod lag;
mod message;
mod trace;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use sqlx::PgPool;
use tokio::time::Instant;
use tracing::Instrument as _;

pub use config::ConsumerConfig;
use context::{RunnerContext, commit};
pub use handle::{ConsumerHandle, ConsumerMonitor, ConsumerStats};
use handle::{Counters, sleep_or_stop};
pub use handler::{DeadLetterReason, Handler, HandlerError};
use leases::{Background, CancellationToken};
pub use message::Message;

use crate::table::{self, Delivery};
use crate::{Error, Result};

/// A Kafka consumer that applies each event once through a [`Handler`].
///
/// Every service that consumes events needs the same loop, and each hand-written copy gets a
/// different detail wrong (committing the offset before the database, retrying out of order,
/// dropping a poison message). The runner does, per message, in partition order:
///
/// 1. **Decode** it with the [`Handler`] (an allowlist of event types: unknown types are refused,
///    never deserialized blindly) and read its event id (the `event-id` header that `outbox`
///    sets).
/// 2. **One transaction**: [`receive`](crate::receive) records `(consumer, event id)`; a duplicate
///    commits nothing else and is skipped; a fresh event runs the handler on the same
///    connection (`&mut PgConnection`: its effects, and any new outbox events through
///    `outbox::enqueue`), then commits.
/// 3. **Then** stores the message's offset, committed to Kafka every second, before a rebalance
///    revokes the partition, and at shutdown. A crash before the offset commit redelivers the
///    message; the inbox makes the redelivery a duplicate.
///
/// Failures: a [retriable](HandlerError::retriable) one (a transient database error, a
/// dependency down) rolls back and retries the same message with exponential backoff (a [`leases::Backoff`]): the
/// partition waits, so order is kept. A permanent one (cannot decode, unknown event type, no
/// event id, the handler [refuses](HandlerError::permanent) it, or retries exhausted when
/// the [`backoff`](ConsumerConfig::backoff) allows) rolls back, publishes the message
/// unchanged to the dead-letter topic with headers `dlq-reason`, `dlq-error`,
/// `dlq-original-topic`, `dlq-original-partition`, `dlq-original-offset` and `dlq-consumer`,
/// waits for the broker's acknowledgement, and moves on: the partition keeps flowing.
///
/// # Why the runner lives in this crate
///
/// Its guarantee, an effect applied once per event, is the inbox's, and the inbox is here. The
/// `outbox` crate is the producing side and stays free of consumer concerns; `inbox` does not
/// depend on `outbox` either: the handler gets the transaction's connection and calls
/// `outbox::enqueue` itself. So a service that consumes depends on `inbox` (and on `outbox`
/// only if it also publishes), and no service carries its own copy of the loop.
///
/// # Example
///
/// ```no_run
/// # use inbox::{Handler, HandlerError, Message};
/// # struct Inventory;
/// # impl Handler for Inventory {
/// #     type Event = ();
/// #     fn decode(&self, _: &Message) -> Result<(), HandlerError> { Ok(()) }
/// #     async fn handle(&self, _: &mut sqlx::PgConnection, _: (), _: &Message)
/// #         -> Result<(), HandlerError> { Ok(()) }
/// # }
/// use inbox::{Consumer, ConsumerConfig};
///
/// # async fn run(pool: sqlx::PgPool) -> inbox::Result<()> {
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
/// `inbox_consumer_messages_total{outcome=processed|duplicate|dead_lettered}`,
/// `inbox_consumer_retries_total`, `inbox_consumer_processing_seconds`,
/// `inbox_consumer_partitions`, `inbox_consumer_lag{topic, partition}` (sampled every
/// 10 s for the partitions it has handled a message of), and the inbox's `inbox_duplicates_total`.
///
/// Tracing: each message is handled in a `consume` span whose parent is the trace context in the
/// message's `traceparent` / `tracestate` headers (which `outbox` captures when an event is
/// enqueued), through OpenTelemetry's global propagator; events the handler enqueues carry the
/// same trace on. Install a `tracing-opentelemetry` layer and
/// `opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new())` to use it.
pub struct Consumer<H> {
    pool: PgPool,
    consumer: StreamConsumer<RunnerContext>,
    producer: FutureProducer,
    handler: H,
    config: ConsumerConfig,
    dead_letter_topic: String,
    counters: Arc<Counters>,
    positions: lag::Positions,
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
    /// [`Error::InvalidConfig`] without topics; [`Error::Kafka`] when a
    /// client cannot be created or the subscription fails.
    pub fn new(pool: PgPool, config: ConsumerConfig, handler: H) -> Result<Self> {
        if config.topics.is_empty() {
            return Err(Error::InvalidConfig("a consumer needs a topic".into()));
        }
        let mut client = config.kafka.clone();
        client
            .set("group.id", config.resolved_group_id())
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set(
                "isolation.level",
                if config.read_committed {
                    "read_committed"
                } else {
                    "read_uncommitted"
                },
            );
        for (key, default) in [
            ("auto.offset.reset", "earliest"),
            ("auto.commit.interval.ms", "1000"),
        ] {
            if client.get(key).is_none() {
                client.set(key, default);
            }
        }
        let counters = Arc::new(Counters::default());
        let positions = lag::Positions::default();
        let consumer: StreamConsumer<RunnerContext> =
            client.create_with_context(RunnerContext {
                name: config.name.clone(),
                counters: Arc::clone(&counters),
                positions: positions.clone(),
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
            counters,
            positions,
        })
    }

    /// Runs the consumer in the background until [`ConsumerHandle::shutdown`].
    pub fn spawn(self) -> ConsumerHandle {
        let counters = Arc::clone(&self.counters);
        ConsumerHandle {
            task: Background::spawn(|stop| self.run(stop)),
            counters,
        }
    }

    async fn run(self, stop: CancellationToken) {
        let name = self.config.name.as_str();
        tracing::info!(
            consumer = %name,
            group = %self.config.resolved_group_id(),
            topics = ?self.config.topics,
            "consumer: started"
        );
        // Stops when the runner does (dropping it cancels it).
        let _lag = lag::sample(name.to_owned(), &self.config.kafka, self.positions.clone());
        loop {
            let received = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                received = self.consumer.recv() => received,
            };
            let borrowed = match received {
                Ok(message) => message,
                Err(error) => {
                    tracing::warn!(consumer = %name, %error, "consumer: poll failed");
                    if sleep_or_stop(Duration::from_millis(100), &stop).await {
                        break;
                    }
                    continue;
                }
            };
            let message = Message::from_kafka(&borrowed);
            let span = trace::span(name, &message);
            let processed = self.process(&message, &stop).instrument(span).await;
            self.counters.settled();
            match processed {
                Processed::Done => {
                    self.positions
                        .handled(message.topic(), message.partition(), message.offset());
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
        let name = name.to_owned();
        handle::close(&name, (self.consumer, self.producer), handle::CLOSE_LIMIT).await;
        tracing::info!(consumer = %name, "consumer: stopped");
    }

    async fn process(&self, message: &Message, stop: &CancellationToken) -> Processed {
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
                        "inbox_consumer_messages_total",
                        "consumer" => name.to_owned(),
                        "outcome" => outcome
                    )
                    .increment(1);
                    metrics::histogram!(
                        "inbox_consumer_processing_seconds",
                        "consumer" => name.to_owned()
                    )
                    .record(started.elapsed().as_secs_f64());
                    return Processed::Done;
                }
                Err(failure) => failure,
            };
            match failure.dead_letter {
                Some(reason) => break (reason, failure.message),
                None if attempt >= self.config.backoff.max_attempts() => {
                    break (DeadLetterReason::AttemptsExhausted, failure.message);
                }
                None => {
                    let delay = self.config.backoff.delay(attempt);
                    self.counters.retries.fetch_add(1, Ordering::Relaxed);
                    self.counters.retrying_again();
                    metrics::counter!(
                        "inbox_consumer_retries_total",
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
                        "inbox_consumer_messages_total",
                        "consumer" => name.to_owned(),
                        "outcome" => "dead_lettered"
                    )
                    .increment(1);
                    return Processed::Done;
                }
                Err(publish_error) => {
                    let delay = self.config.backoff.delay(attempt);
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
        if table::receive(&mut tx, &self.config.name, event_id).await? == Delivery::Duplicate {
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
        let mut headers = OwnedHeaders::new_with_capacity(message.headers().count() + 6);
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
