//! Taking a shard over: a progress record settles only the events it provably describes (this
//! outbox, an earlier lease, these event ids), a relay refuses to start on a database without
//! the tables it needs, and a restarted instance with a stable owner takes its shards back at
//! once.

use std::time::Duration;

use outbox::exactly_once::ExactlyOnceRelay;

use crate::common::{
    aggregates, assert_published_once, config, db, enqueue, relay, relay_name, until_shards_held,
    wait_until_empty,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_database_under_the_same_relay_name_publishes_its_whole_backlog() {
    let name = relay_name();
    let first = db().await;
    let first_topic = testkit::kafka::topic(4).await;
    enqueue(&first.pool, &first_topic, &aggregates(), 50).await;
    let relay_first = relay(&first.pool, &name).await;
    wait_until_empty(&first.pool).await;
    relay_first.shutdown().await;

    // A new database (recreated, reset, moved) under the same relay name, with a backlog: its
    // leases start again at token 1 and its rows at seq 1, like the last progress records'.
    let fresh = db().await;
    let topic = testkit::kafka::topic(4).await;
    enqueue(&fresh.pool, &topic, &aggregates(), 50).await;
    let relay_fresh = relay(&fresh.pool, &name).await;
    wait_until_empty(&fresh.pool).await;
    relay_fresh.shutdown().await;

    assert_published_once(&fresh.pool, &topic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restored_to_an_earlier_point_loses_none_of_its_new_events() {
    let name = relay_name();
    let live = db().await;
    let restored = db().await;
    let relay_live = relay(&live.pool, &name).await;
    until_shards_held(&live.pool, &name, |_, token| token == 1).await;

    // The backup: the outbox's identity and its shard leases (held, token 1), no events yet.
    let identity: uuid::Uuid = sqlx::query_scalar("SELECT id FROM outbox_identity")
        .fetch_one(&live.pool)
        .await
        .expect("identity");
    sqlx::query("UPDATE outbox_identity SET id = $1")
        .bind(identity)
        .execute(&restored.pool)
        .await
        .expect("restore the identity");
    let leases: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT name, owner, token FROM leases_named")
            .fetch_all(&live.pool)
            .await
            .expect("leases");
    for (lease, owner, token) in leases {
        sqlx::query(
            "INSERT INTO leases_named (name, owner, token, expires_at, acquired_at)
             VALUES ($1, $2, $3, now() + interval '1 second', now())",
        )
        .bind(lease)
        .bind(owner)
        .bind(token)
        .execute(&restored.pool)
        .await
        .expect("restore a lease");
    }

    // After the backup, the live outbox publishes 1,000 events (seq 1 to 1,000) under token 1.
    let live_topic = testkit::kafka::topic(4).await;
    enqueue(&live.pool, &live_topic, &aggregates(), 50).await;
    wait_until_empty(&live.pool).await;
    relay_live.shutdown().await;

    // The restored database's sequence starts again: its new events take the same seqs.
    let topic = testkit::kafka::topic(4).await;
    enqueue(&restored.pool, &topic, &aggregates(), 50).await;
    let relay_restored = relay(&restored.pool, &name).await;
    wait_until_empty(&restored.pool).await;
    relay_restored.shutdown().await;

    assert_published_once(&restored.pool, &topic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_refuses_a_database_without_the_tables_it_needs() {
    let kafka = testkit::kafka::producer_config().await;
    for (migrators, missing) in [
        (vec![&outbox::MIGRATOR], "leases::MIGRATOR"),
        (vec![&leases::MIGRATOR], "outbox::MIGRATOR"),
    ] {
        let db = testkit::database(&migrators).await;
        let refused = ExactlyOnceRelay::new(db.pool.clone(), &kafka, config(&relay_name())).await;
        match refused {
            Err(outbox::Error::NotMigrated { migrator, .. }) => assert_eq!(migrator, missing),
            other => panic!("expected NotMigrated naming {missing}, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_instance_with_a_stable_owner_takes_its_shards_back_at_once() {
    let db = db().await;
    let name = relay_name();
    let kafka = testkit::kafka::producer_config().await;
    // Leases of a minute: waiting for them to expire would fail the test.
    let stable = || {
        config(&name)
            .owner("pod-1")
            .lease_ttl(Duration::from_secs(60))
    };
    let crashed = ExactlyOnceRelay::new(db.pool.clone(), &kafka, stable())
        .await
        .expect("relay")
        .spawn();
    until_shards_held(&db.pool, &name, |owner, token| {
        owner.starts_with("pod-1#") && token == 1
    })
    .await;
    let first: String = sqlx::query_scalar("SELECT owner FROM leases_named LIMIT 1")
        .fetch_one(&db.pool)
        .await
        .expect("owner");
    crashed.abort();

    let restarted = ExactlyOnceRelay::new(db.pool.clone(), &kafka, stable())
        .await
        .expect("relay")
        .spawn();
    until_shards_held(&db.pool, &name, |owner, token| {
        owner.starts_with("pod-1#") && owner != first && token == 2
    })
    .await;
    let topic = testkit::kafka::topic(4).await;
    enqueue(&db.pool, &topic, &aggregates(), 50).await;
    wait_until_empty(&db.pool).await;
    restarted.shutdown().await;
    assert_published_once(&db.pool, &topic).await;
}
