//! Latency from commit to broker acknowledgement while writers commit at a steady rate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outbox::{Event, KafkaPublisher, NewEvent, PublishError, Publisher, Relay, RelayConfig};

use crate::Scale;
use crate::outbox_events::any_pending;

/// Records when each event was acknowledged.
struct Timed {
    inner: KafkaPublisher,
    acked: Arc<Mutex<HashMap<uuid::Uuid, Instant>>>,
}

impl Publisher for Timed {
    async fn publish(&self, event: &Event) -> Result<(), PublishError> {
        self.inner.publish(event).await?;
        self.acked
            .lock()
            .expect("acked")
            .insert(event.id, Instant::now());
        Ok(())
    }

    async fn publish_run(&self, run: &[Event]) -> Vec<Result<(), PublishError>> {
        let results = self.inner.publish_run(run).await;
        let at = Instant::now();
        let mut acked = self.acked.lock().expect("acked");
        for (event, result) in run.iter().zip(&results) {
            if result.is_ok() {
                acked.insert(event.id, at);
            }
        }
        results
    }
}

/// Writers committing `per_tx` events per transaction each, paced together at the latency run's
/// rate.
pub(crate) const WRITERS: u32 = 16;

/// p50 and p99 of commit-to-acknowledgement with [`WRITERS`] writers committing `per_tx` events
/// per transaction at `rate` events/s in all, with the producer's `linger.ms` (`None`: the
/// publisher's default), and the rate they reached.
pub(crate) async fn latency(
    scale: &Scale,
    rate: u32,
    per_tx: u32,
    linger_ms: Option<u32>,
) -> (Duration, Duration, f64) {
    let db = testkit::database(&[&outbox::MIGRATOR]).await;
    let topic = testkit::kafka::topic(4).await;
    let acked = Arc::new(Mutex::new(HashMap::new()));
    let mut config = testkit::kafka::producer_config().await;
    if let Some(linger_ms) = linger_ms {
        config.set("linger.ms", linger_ms.to_string());
    }
    let relay = Relay::new(
        db.pool.clone(),
        Timed {
            inner: KafkaPublisher::from_config(&config).expect("publisher"),
            acked: Arc::clone(&acked),
        },
        RelayConfig::default(),
    )
    .expect("relay")
    .spawn();
    let started = Instant::now();
    let stop = started + Duration::from_secs(scale.latency_secs);
    let writers = (0..WRITERS).map(|writer| {
        let (pool, topic) = (db.pool.clone(), topic.clone());
        tokio::spawn(async move {
            let mut committed = HashMap::new();
            let mut tick = tokio::time::interval(Duration::from_secs(1) * WRITERS * per_tx / rate);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut n = 0;
            while Instant::now() < stop {
                tick.tick().await;
                let events: Vec<NewEvent> = (0..per_tx)
                    .map(|_| {
                        n += 1;
                        let key = format!("o-{writer}-{}", n % 100);
                        NewEvent::bytes(&topic, "order", key, "OrderPlaced", vec![7; 100])
                    })
                    .collect();
                let mut tx = pool.begin().await.expect("begin");
                outbox::enqueue_many(&mut tx, &events)
                    .await
                    .expect("enqueue");
                tx.commit().await.expect("commit");
                let at = Instant::now();
                committed.extend(events.iter().map(|event| (event.id, at)));
            }
            committed
        })
    });
    let mut committed = HashMap::new();
    for writer in futures::future::join_all(writers).await {
        committed.extend(writer.expect("writer"));
    }
    let reached = committed.len() as f64 / started.elapsed().as_secs_f64();
    while any_pending(&db.pool).await {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    relay.shutdown().await;
    let acked = acked.lock().expect("acked");
    let mut latencies: Vec<Duration> = committed
        .iter()
        .filter_map(|(id, at)| acked.get(id).map(|ack| ack.saturating_duration_since(*at)))
        .collect();
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    (pick(0.50), pick(0.99), reached)
}
