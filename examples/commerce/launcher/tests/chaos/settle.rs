//! Quiescence: every order final, every outbox empty and every consumer group caught up on the
//! topics it reads, read from the databases and the broker (not from the services' APIs).

use std::time::{Duration, Instant};

use commerce_launcher::Service;
use commerce_platform::Config;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{Offset, TopicPartitionList};

use super::cluster::Cluster;

/// The order states nothing moves any more without an admin (no one delivers parcels here):
/// `SHIPPED` is as far as a paid order goes, `COMPLETED` would need a delivery.
pub(crate) const FINAL: [&str; 4] = ["SHIPPED", "COMPLETED", "CANCELLED", "FAILED"];

const BROKER_TIMEOUT: Duration = Duration::from_secs(5);

/// Every consumer group of a stack and the topics it reads (`<prefix>.<consumer name>`).
fn groups(config: &Config) -> Vec<(String, Vec<String>)> {
    let t = &config.topics;
    commerce_launcher::consumers(t)
        .into_iter()
        .map(|(name, topics)| {
            (
                format!("{}.{name}", t.prefix),
                topics.into_iter().map(str::to_owned).collect(),
            )
        })
        .collect()
}

/// A client that only reads a group's committed offsets (it never joins the group).
fn reader(config: &Config, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", &config.kafka)
        .set("group.id", group)
        .create()
        .expect("an offsets reader")
}

/// Messages on `topic` past what `consumer`'s group committed (every message, when it has
/// committed nothing).
fn lag(consumer: &BaseConsumer, topic: &str) -> Result<i64, String> {
    let metadata = consumer
        .fetch_metadata(Some(topic), BROKER_TIMEOUT)
        .map_err(|e| e.to_string())?;
    let mut partitions = TopicPartitionList::new();
    for partition in metadata.topics()[0].partitions() {
        partitions.add_partition(topic, partition.id());
    }
    let committed = consumer
        .committed_offsets(partitions, BROKER_TIMEOUT)
        .map_err(|e| e.to_string())?;
    let mut lag = 0;
    for element in committed.elements() {
        let (low, high) = consumer
            .fetch_watermarks(topic, element.partition(), BROKER_TIMEOUT)
            .map_err(|e| e.to_string())?;
        let at = match element.offset() {
            Offset::Offset(offset) => offset,
            _ => low,
        };
        lag += (high - at).max(0);
    }
    Ok(lag)
}

/// Messages on `topic`, over its partitions.
pub(crate) fn messages_on(config: &Config, topic: &str) -> i64 {
    let consumer = reader(config, "chaos-watermarks");
    lag(&consumer, topic).unwrap_or_else(|e| panic!("{topic}: {e}"))
}

/// Orders not in a final state, in the order database `db`.
pub(crate) async fn open_orders(db: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM orders WHERE state <> ALL($1)")
        .bind(FINAL)
        .fetch_one(db)
        .await
        .expect("open orders")
}

/// What is still moving, as one line (`None` when nothing is).
async fn moving(
    cluster: &Cluster,
    readers: &[(String, Vec<String>, BaseConsumer)],
) -> Option<String> {
    let open = open_orders(cluster.db(Service::Order)).await;
    let mut unpublished = Vec::new();
    for service in Service::ALL {
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_events")
            .fetch_one(cluster.db(service))
            .await
            .expect("outbox rows");
        if rows > 0 {
            unpublished.push(format!("{} {rows}", service.name()));
        }
    }
    let mut behind = Vec::new();
    for (group, topics, consumer) in readers {
        for topic in topics {
            match lag(consumer, topic) {
                Ok(0) => {}
                Ok(n) => behind.push(format!("{group} {n} behind on {topic}")),
                Err(e) => behind.push(format!("{group} on {topic}: {e}")),
            }
        }
    }
    (open > 0 || !unpublished.is_empty() || !behind.is_empty()).then(|| {
        format!("{open} orders not final; unpublished events: {unpublished:?}; groups: {behind:?}")
    })
}

/// Waits until nothing moves (on two reads a second apart), for at most `limit`; returns how
/// long that took.
pub(crate) async fn settle(cluster: &Cluster, limit: Duration) -> Duration {
    let started = Instant::now();
    let readers: Vec<(String, Vec<String>, BaseConsumer)> = groups(&cluster.config)
        .into_iter()
        .map(|(group, topics)| {
            let consumer = reader(&cluster.config, &group);
            (group, topics, consumer)
        })
        .collect();
    let mut quiet_since = None;
    loop {
        // The broker calls block; the readers are few and the calls short.
        let still = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(moving(cluster, &readers))
        });
        match (still, quiet_since) {
            (None, Some(since)) => return since,
            (None, None) => quiet_since = Some(started.elapsed()),
            (Some(what), _) => {
                quiet_since = None;
                assert!(
                    started.elapsed() < limit,
                    "the stack {} did not settle within {limit:?}: {what}",
                    cluster.prefix
                );
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Deletes the stack's topics (after a run that passed).
pub(crate) async fn delete_topics(config: &Config) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka)
        .create()
        .expect("an admin client");
    let topics = config.topics.all();
    let _ = admin.delete_topics(&topics, &AdminOptions::new()).await;
}
