//! PostgreSQL restarted while a relay publishes, a consumer runner consumes and a named-lease keeper
//! holds its lease. The server is one this test owns (`testkit::OwnedPostgres`, its own port and
//! cluster), so tests running beside it are never hit.

use std::time::Duration;

use leases::{LeaseKeeper, NamedLeases};
use testkit::OwnedPostgres;
use workspace_tests::pipeline;

const BEFORE: usize = 3_000;
const AFTER: usize = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_consumer_and_lease_keeper_recover_from_database_restarts_on_their_own() {
    let server = OwnedPostgres::start();
    let url = server.url();
    let source = testkit::database_on(&url, &[&outbox::MIGRATOR]).await;
    let sink = testkit::database_on(&url, &[&inbox::MIGRATOR]).await;
    let leases_db = testkit::database_on(&url, &[&leases::MIGRATOR]).await;
    pipeline::create_effects(&sink.pool).await.expect("effects");
    let topic = testkit::kafka::topic(3).await;
    let dead_letters = testkit::kafka::topic(1).await;
    let mut written = pipeline::write(&source.pool, &topic, BEFORE, 50, Duration::ZERO)
        .await
        .expect("events written");

    let bootstrap = testkit::kafka::bootstrap_servers().await;
    let relay = pipeline::spawn_relay(&source.pool, &bootstrap, 100);
    let consumer = pipeline::spawn_consumer(&sink.pool, &bootstrap, &topic, &dead_letters);
    let mut keeper = LeaseKeeper::start(
        NamedLeases::new(),
        leases_db.pool.clone(),
        "archiver",
        "keeper-1",
        Duration::from_secs(3),
        Duration::from_millis(500),
    )
    .expect("keeper");
    tokio::time::timeout(Duration::from_secs(30), keeper.acquired())
        .await
        .expect("the keeper holds the lease");

    for applied in [300, 1_500] {
        let (_, distinct) =
            pipeline::wait_applied(&sink.pool, applied, Duration::from_secs(120)).await;
        assert!(distinct >= applied, "only {distinct} events applied");
        tokio::task::block_in_place(|| server.restart());
    }
    written.extend(
        pipeline::write(&source.pool, &topic, AFTER, 50, Duration::ZERO)
            .await
            .expect("events written after the restarts"),
    );

    let total = (BEFORE + AFTER) as i64;
    pipeline::assert_settled(&source.pool, &sink.pool, total, Duration::from_secs(180)).await;
    let lease = tokio::time::timeout(Duration::from_secs(30), keeper.acquired())
        .await
        .expect("the keeper holds the lease again after the restarts");
    let holder: Option<String> =
        sqlx::query_scalar("SELECT owner FROM leases_named WHERE name = 'archiver'")
            .fetch_one(&leases_db.pool)
            .await
            .expect("lease row");
    assert_eq!(holder.as_deref(), Some("keeper-1"));
    assert!(lease.token >= 1);
    assert_eq!(written.len(), BEFORE + AFTER);
    let stats = consumer.shutdown().await;
    assert_eq!(stats.dead_lettered, 0);
    relay.shutdown().await;
    keeper.shutdown().await;
}
