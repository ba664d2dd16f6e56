//! [`Consumer`]: the Kafka consumer runner, with the inbox and dead letters.

mod config;
mod context;
mod handle;
mod handler;
mod isolate;
mod lag;
mod message;
mod partition;
mod trace;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::producer::FutureProducer;
use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc};

pub use config::ConsumerConfig;
use context::{RunnerContext, commit};
pub use handle::{ConsumerHandle, ConsumerMonitor, ConsumerStats};
use handle::{Counters, sleep_or_stop};
pub use handler::{DeadLetterReason, Handler, HandlerError};
use leases::task::{Background, CancellationToken};
pub use message::Message;
use partition::Workers;

use crate::{Error, Result};

/// A Kafka consumer that applies each event once through a [`Handler`], a batch of a partition
/// per transaction, the partitions in parallel.
///
/// Every service that consumes events needs the same loop, and each hand-written copy gets a
/// different detail wrong (committing the offset before the database, retrying out of order,
/// dropping a poison message). The runner polls the consumer and hands each message to its
/// partition's worker (one task per assigned partition, at most
/// [`concurrency`](ConsumerConfig::concurrency) of them in a transaction at once). A worker, in
/// partition order:
///
/// 1. **Takes a batch**: the messages waiting for it, up to
///    [`batch_size`](ConsumerConfig::batch_size), waiting at most
///    [`batch_max_wait`](ConsumerConfig::batch_max_wait) for more.
/// 2. **Decodes** every message with the [`Handler`] (an allowlist of event types: unknown
///    types are refused, never deserialized blindly) and reads its event id (the `event-id`
///    header that `outbox` sets).
/// 3. **One transaction**: the inbox records `(consumer, event id)` for the whole batch in one
///    statement; duplicates are skipped, and the fresh events go to
///    [`Handler::handle_batch`] in partition order on the same connection (`&mut PgConnection`:
///    their effects, and any new outbox events through `outbox::enqueue`); then one commit.
/// 4. **Then** stores the offset after the batch, committed to Kafka every second, when a
///    rebalance revokes the partition, and at shutdown. A crash before the offset commit
///    redelivers the batch; the inbox makes the redelivery a no-op.
///
/// Failures stay as precise as one message per transaction: a
/// [retriable](HandlerError::retriable) one (a transient database error, a dependency down)
/// rolls back and applies the same batch again after a backoff (a [`leases::retry::Backoff`]): the
/// partition waits, so order is kept. A permanent one (cannot decode, unknown event type, no
/// event id, the handler [refuses](HandlerError::permanent) an event) rolls the batch back, and
/// the worker applies it again one message at a time, each with its own transaction and
/// retries: the poison message alone is published unchanged to the dead-letter topic (headers
/// `dlq-reason`, `dlq-error`, `dlq-original-topic`, `dlq-original-partition`,
/// `dlq-original-offset` and `dlq-consumer`, after the broker's acknowledgement), every other
/// message is applied once, in order, and the partition keeps flowing. A retriable failure that
/// outlasts the [`backoff`](ConsumerConfig::backoff)'s attempts is isolated the same way and
/// dead-letters its message as `attempts-exhausted`.
///
/// A rebalance that revokes a partition stops its worker after the batch in hand; only offsets
/// of committed transactions are stored, so the partition's next owner starts after the last
/// batch that committed here and the inbox skips whatever it finds applied. Two runners in one
/// group never apply an event twice: the inbox row is the lock.
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
/// handle.shutdown().await; // finishes the batches in hand, commits offsets, leaves the group
/// # Ok(()) }
/// ```
///
/// Metrics (through the `metrics` facade), labelled `consumer`:
/// `inbox_consumer_messages_total{outcome=processed|duplicate|dead_lettered}`,
/// `inbox_consumer_retries_total`, the histograms `inbox_consumer_processing_seconds` (per
/// batch) and `inbox_consumer_batch_size`, `inbox_consumer_partitions`,
/// `inbox_consumer_lag{topic, partition}` (sampled every 10 s for the partitions it has handled
/// a message of), and the inbox's `inbox_duplicates_total`.
///
/// Tracing: each batch is applied in a `consume_batch` span, and each event in a `consume` span
/// whose parent is the trace context in the message's `traceparent` / `tracestate` headers
/// (which `outbox` captures when an event is enqueued), through OpenTelemetry's global
/// propagator; events the handler enqueues carry the same trace on. Install a
/// `tracing-opentelemetry` layer and
/// `opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new())` to use it.
pub struct Consumer<H> {
    shared: Arc<Shared<H>>,
}

/// What the poll loop and the partition workers share.
struct Shared<H> {
    pool: PgPool,
    consumer: StreamConsumer<RunnerContext>,
    producer: FutureProducer,
    handler: H,
    config: ConsumerConfig,
    dead_letter_topic: String,
    counters: Arc<Counters>,
    positions: lag::Positions,
    /// Transactions under way at once, across partitions.
    permits: Semaphore,
    workers: Arc<Workers>,
    /// Cancelled when the runner stops: every worker's token is a child of it.
    stop: CancellationToken,
}

impl<H> fmt::Debug for Consumer<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("config", &self.shared.config)
            .field("stats", &self.shared.counters.snapshot())
            .finish_non_exhaustive()
    }
}

impl<H: Handler> Consumer<H> {
    /// Creates the consumer (subscribed to the topics, joining the group on its first poll) and
    /// the dead-letter producer.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] without topics, or for a zero batch size or concurrency;
    /// [`Error::Kafka`] when a client cannot be created or the subscription fails.
    pub fn new(pool: PgPool, config: ConsumerConfig, handler: H) -> Result<Self> {
        if config.topics.is_empty() {
            return Err(Error::InvalidConfig("a consumer needs a topic".into()));
        }
        if config.batch_size == 0 || config.concurrency == 0 {
            return Err(Error::InvalidConfig(
                "batch size and concurrency must be greater than zero".into(),
            ));
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
        let workers = Arc::new(Workers::default());
        let consumer: StreamConsumer<RunnerContext> =
            client.create_with_context(RunnerContext {
                name: config.name.clone(),
                counters: Arc::clone(&counters),
                positions: positions.clone(),
                workers: Arc::clone(&workers),
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
            shared: Arc::new(Shared {
                pool,
                consumer,
                producer,
                handler,
                dead_letter_topic: config.resolved_dead_letter_topic(),
                permits: Semaphore::new(config.concurrency as usize),
                config,
                counters,
                positions,
                workers,
                stop: CancellationToken::new(),
            }),
        })
    }

    /// Runs the consumer in the background until [`ConsumerHandle::shutdown`].
    pub fn spawn(self) -> ConsumerHandle {
        let counters = Arc::clone(&self.shared.counters);
        ConsumerHandle {
            task: Background::spawn(|stop| self.shared.run(stop)),
            counters,
        }
    }
}

impl<H: Handler> Shared<H> {
    async fn run(self: Arc<Self>, stop: CancellationToken) {
        // An abort drops this future: the workers then stop after the batch in hand, and the
        // last of them drops the consumer, which leaves the group.
        let _workers_stop = self.stop.clone().drop_guard();
        let name = self.config.name.clone();
        tracing::info!(
            consumer = %name,
            group = %self.config.resolved_group_id(),
            topics = ?self.config.topics,
            batch_size = self.config.batch_size,
            concurrency = self.config.concurrency,
            "consumer: started"
        );
        // Stops when the runner does (dropping it cancels it).
        let _lag = lag::sample(name.clone(), &self.config.kafka, self.positions.clone());
        let mut last: Option<(String, i32, u64, mpsc::Sender<Message>)> = None;
        loop {
            let received = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                received = self.consumer.recv() => received,
            };
            let message = match received {
                Ok(borrowed) => Message::from_kafka(&borrowed, &name),
                Err(error) => {
                    tracing::warn!(consumer = %name, %error, "consumer: poll failed");
                    if sleep_or_stop(Duration::from_millis(100), &stop).await {
                        break;
                    }
                    continue;
                }
            };
            // A fetch brings a run of one partition's messages: the last worker is the likely
            // one, unless a rebalance came in between.
            let generation = self.workers.generation();
            let worker = match &last {
                Some((topic, partition, seen, worker))
                    if *partition == message.partition()
                        && topic == message.topic()
                        && *seen == generation
                        && !worker.is_closed() =>
                {
                    worker.clone()
                }
                _ => {
                    let worker = self.worker(&message);
                    last = Some((
                        message.topic().to_owned(),
                        message.partition(),
                        generation,
                        worker.clone(),
                    ));
                    worker
                }
            };
            // Waits while the partition's worker is a batch and more behind; a worker stopped
            // by a rebalance drops the message, which its partition's next owner reads again.
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                _ = worker.send(message) => {}
            }
        }
        self.stop.cancel();
        self.workers.stop().await;
        commit(&self.consumer, &name);
        match Arc::try_unwrap(self) {
            Ok(shared) => {
                handle::close(
                    &name,
                    (shared.consumer, shared.producer),
                    handle::CLOSE_LIMIT,
                )
                .await;
            }
            Err(_) => tracing::warn!(consumer = %name, "consumer: a worker outlived the runner"),
        }
        tracing::info!(consumer = %name, "consumer: stopped");
    }
}
