//! Relays over one outbox share its shards: a second relay takes half of them within a lease
//! period of starting, and the survivor takes them all back when it leaves.

use std::collections::HashMap;
use std::time::Duration;

use outbox::exactly_once::ExactlyOnceRelay;
use sqlx::PgPool;

use crate::common::{
    aggregates, assert_published_once, config, db, enqueue, relay_name, until_shards_held,
    wait_until_empty,
};

/// How many shards each owner holds now.
async fn holdings(pool: &PgPool, name: &str) -> HashMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>(
        "SELECT owner, count(*) FROM leases_named
         WHERE name LIKE 'outbox/' || $1 || '/%-of-%' AND owner IS NOT NULL
           AND expires_at > now()
         GROUP BY owner",
    )
    .bind(name)
    .fetch_all(pool)
    .await
    .expect("holdings")
    .into_iter()
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_hold_two_shards_each_and_one_takes_all_back_when_the_other_leaves() {
    let db = db().await;
    let name = relay_name();
    let kafka = testkit::kafka::producer_config().await;
    let ttl = Duration::from_secs(6);
    let start = |owner: &'static str| {
        let pool = db.pool.clone();
        let kafka = kafka.clone();
        let config = config(&name).owner(owner).lease_ttl(ttl);
        async move {
            ExactlyOnceRelay::new(pool, &kafka, config)
                .await
                .expect("relay")
                .spawn()
        }
    };
    let first = start("first").await;
    until_shards_held(&db.pool, &name, |owner, _| owner.starts_with("first#")).await;

    let second = start("second").await;
    let joined = tokio::time::Instant::now();
    loop {
        let held = holdings(&db.pool, &name).await;
        if held.len() == 2 && held.values().all(|&n| n == 2) {
            break;
        }
        assert!(
            joined.elapsed() < ttl,
            "not two shards each within a lease period of the second relay starting: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let topic = testkit::kafka::topic(4).await;
    enqueue(&db.pool, &topic, &aggregates(), 50).await;
    wait_until_empty(&db.pool).await;

    second.shutdown().await;
    let left = tokio::time::Instant::now();
    until_shards_held(&db.pool, &name, |owner, _| owner.starts_with("first#")).await;
    assert!(
        left.elapsed() < ttl,
        "the first relay took the shards back within a lease period"
    );
    first.shutdown().await;
    assert_published_once(&db.pool, &topic).await;
}
