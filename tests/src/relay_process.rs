//! The `relay-process` child (one outbox relay in a process of its own, to SIGKILL and SIGSTOP),
//! and numbered events whose arrival on the wire a test can check: how many, how many twice, and
//! in which order per aggregate.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write as _};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox::NewEvent;
use rdkafka::Message;
use rdkafka::message::{Headers, OwnedMessage};
use sqlx::PgPool;

/// The `application_name` of a relay process's database sessions.
pub const APPLICATION_NAME: &str = "relay-process";

/// Which relay the process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// [`outbox::exactly_once::ExactlyOnceRelay`].
    ExactlyOnce,
    /// The default [`outbox::Relay`] with [`outbox::KafkaPublisher`].
    AtLeastOnce,
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "exactly-once" => Ok(Self::ExactlyOnce),
            "at-least-once" => Ok(Self::AtLeastOnce),
            other => Err(format!("unknown relay mode {other}")),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::ExactlyOnce => "exactly-once",
            Self::AtLeastOnce => "at-least-once",
        })
    }
}

/// What a relay process is started with.
#[derive(Debug, Clone)]
pub struct RelaySpec {
    /// Which relay.
    pub mode: Mode,
    /// Its database (with the outbox and leases migrations).
    pub database_url: String,
    /// Its brokers.
    pub bootstrap_servers: String,
    /// The exactly-once relay's name (its transactional ids and shard leases).
    pub name: String,
    /// The exactly-once relay's shard count.
    pub shards: u32,
    /// Its lease ttl (shard leases, or the default relay's row leases).
    pub lease_ttl: Duration,
}

/// A running `relay-process`; its standard error (the relay's log) is collected as it comes.
#[derive(Debug)]
pub struct RelayProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    log: Arc<Mutex<Vec<String>>>,
}

impl RelayProcess {
    /// Starts the process as `owner` and waits until it says `ready`.
    ///
    /// # Panics
    ///
    /// When the process cannot start or exits before it is ready.
    pub fn start(binary: &str, spec: &RelaySpec, owner: &str) -> Self {
        let mut child = Command::new(binary)
            .env("DATABASE_URL", &spec.database_url)
            .env("KAFKA_BOOTSTRAP_SERVERS", &spec.bootstrap_servers)
            .env("RELAY_MODE", spec.mode.to_string())
            .env("RELAY_NAME", &spec.name)
            .env("RELAY_OWNER", owner)
            .env("RELAY_SHARDS", spec.shards.to_string())
            .env("RELAY_LEASE_TTL_MS", spec.lease_ttl.as_millis().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start relay-process");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                sink.lock().expect("log").push(line);
            }
        });
        let mut process = Self {
            child,
            stdin,
            stdout,
            log,
        };
        assert_eq!(process.line(), "ready", "log: {:?}", process.log());
        process
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read a line");
        line.trim().to_owned()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The relay's log lines so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().expect("log").clone()
    }

    /// How many log lines contain `text`.
    pub fn logged(&self, text: &str) -> usize {
        self.log().iter().filter(|l| l.contains(text)).count()
    }

    /// SIGKILLs the process and waits until it is gone.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL the relay");
        self.child.wait().expect("wait for the relay");
    }

    /// Closes standard input (the relay shuts down gracefully) and waits for the process.
    ///
    /// # Panics
    ///
    /// When the relay does not report `stopped`.
    pub fn shutdown(mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.flush();
        }
        assert_eq!(self.line(), "stopped", "log: {:?}", self.log());
        self.child.wait().expect("wait for the relay");
    }
}

/// Enqueues `per_aggregate` numbered events for each of `aggregates` aggregates, interleaved,
/// `per_transaction` to a transaction: payload `<aggregate>:<n>`, n counting from 0 per aggregate.
///
/// # Panics
///
/// When the database refuses them.
pub async fn enqueue_numbered(
    pool: &PgPool,
    topic: &str,
    aggregates: usize,
    per_aggregate: usize,
    per_transaction: usize,
) {
    enqueue_numbers(pool, topic, aggregates, 0..per_aggregate, per_transaction).await;
}

/// [`enqueue_numbered`] for the events numbered `numbers` of each aggregate (to enqueue more of
/// them later).
///
/// # Panics
///
/// When the database refuses.
pub async fn enqueue_numbers(
    pool: &PgPool,
    topic: &str,
    aggregates: usize,
    numbers: std::ops::Range<usize>,
    per_transaction: usize,
) {
    let events: Vec<NewEvent> = numbers
        .flat_map(|n| (0..aggregates).map(move |a| (a, n)))
        .map(|(a, n)| {
            let payload = format!("agg-{a}:{n}").into_bytes();
            NewEvent::bytes(topic, "order", format!("agg-{a}"), "Numbered", payload)
        })
        .collect();
    for chunk in events.chunks(per_transaction) {
        let mut tx = pool.begin().await.expect("begin");
        outbox::enqueue_many(&mut tx, chunk).await.expect("enqueue");
        tx.commit().await.expect("commit");
    }
}

/// The events still in the outbox of `pool`'s database.
///
/// # Panics
///
/// When the database refuses.
pub async fn remaining(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox_events")
        .fetch_one(pool)
        .await
        .expect("count the outbox")
}

/// Waits until at most `at_most` events are left in the outbox.
///
/// # Panics
///
/// When that takes longer than `limit`.
pub async fn wait_for_remaining(pool: &PgPool, at_most: i64, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while remaining(pool).await > at_most {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the outbox did not get down to {at_most} events within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a consumer saw of numbered events.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Wire {
    /// Messages read.
    pub messages: usize,
    /// Distinct event ids among them.
    pub distinct: usize,
    /// Messages whose event id came earlier.
    pub duplicates: usize,
    /// Whether every aggregate's events first appeared in order (`n` one more than the greatest
    /// seen before), with repeats only of events already seen.
    pub in_order: bool,
    /// Whether every aggregate's events appeared exactly as 0, 1, 2, ... with no repeat at all.
    pub consecutive: bool,
}

impl Wire {
    /// Reads `messages` (in partition order, as a consumer gets them).
    pub fn of(messages: &[OwnedMessage]) -> Self {
        let mut seen = std::collections::HashSet::new();
        let mut greatest: HashMap<String, i64> = HashMap::new();
        let mut wire = Self {
            messages: messages.len(),
            in_order: true,
            consecutive: true,
            ..Self::default()
        };
        for message in messages {
            let id = message
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == "event-id").and_then(|h| h.value))
                .map(<[u8]>::to_vec)
                .expect("event-id header");
            let first = seen.insert(id);
            wire.duplicates += usize::from(!first);
            let payload = String::from_utf8_lossy(message.payload().expect("payload")).into_owned();
            let (aggregate, n) = payload.split_once(':').expect("<aggregate>:<n>");
            let n: i64 = n.parse().expect("n");
            let top = greatest.entry(aggregate.to_owned()).or_insert(-1);
            wire.consecutive &= first && n == *top + 1;
            if first {
                wire.in_order &= n == *top + 1;
                *top = n;
            } else {
                wire.in_order &= n <= *top;
            }
        }
        wire.distinct = seen.len();
        wire
    }
}

/// Whether a transaction with records in `topic` is open right now: some partition's last stable
/// offset (what a `read_committed` client is told is the end) is behind its high watermark.
///
/// # Panics
///
/// When the broker cannot be reached.
pub fn open_transaction(bootstrap_servers: &str, topic: &str) -> bool {
    ends(bootstrap_servers, topic)
        .iter()
        .any(|(stable, high)| stable < high)
}

/// Each partition's last stable offset and high watermark, by partition id.
///
/// # Panics
///
/// When the broker cannot be reached.
pub fn ends(bootstrap_servers: &str, topic: &str) -> Vec<(i64, i64)> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};

    let end = |isolation: &str| -> Vec<i64> {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", bootstrap_servers)
            .set("isolation.level", isolation)
            .create()
            .expect("a Kafka client");
        let timeout = Duration::from_secs(10);
        let metadata = consumer
            .fetch_metadata(Some(topic), timeout)
            .expect("metadata");
        let mut partitions: Vec<i32> = metadata.topics()[0]
            .partitions()
            .iter()
            .map(rdkafka::metadata::MetadataPartition::id)
            .collect();
        partitions.sort_unstable();
        partitions
            .into_iter()
            .map(|p| {
                consumer
                    .fetch_watermarks(topic, p, timeout)
                    .expect("watermarks")
                    .1
            })
            .collect()
    };
    end("read_committed")
        .into_iter()
        .zip(end("read_uncommitted"))
        .collect()
}

/// The event ids of `messages`, with the partition and offset of each one's first copy.
pub fn event_ids(messages: &[OwnedMessage]) -> HashMap<Vec<u8>, (i32, i64)> {
    let mut ids = HashMap::new();
    for message in messages {
        let id = message
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "event-id").and_then(|h| h.value))
            .map(<[u8]>::to_vec)
            .expect("event-id header");
        ids.entry(id)
            .or_insert((message.partition(), message.offset()));
    }
    ids
}

/// Sends the relay's own account (`outbox` at INFO; `RUST_LOG` overrides) to the test's captured
/// output, shown when the test fails. Installs the subscriber once per test binary.
pub fn log_to_test_output() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("outbox=info,warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
