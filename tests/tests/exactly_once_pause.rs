//! An exactly-once relay process paused (SIGSTOP) past its shard lease, replaced by a new owner,
//! then resumed: the broker refuses its late transaction (its producer was fenced by the new
//! owner's `init_transactions`), PostgreSQL refuses its late mark (the lease token moved on), and
//! no event reaches a `read_committed` consumer twice. A relay paused past its lease with no
//! other relay to take over takes its shard back (under a new token) and finishes.

use std::time::Duration;

use sqlx::ConnectOptions as _;
use sqlx::PgPool;
use testkit::TestDb;
use workspace_tests::relay_process::{
    Mode, RelayProcess, RelaySpec, Wire, enqueue_numbered, open_transaction, remaining,
};

const BINARY: &str = env!("CARGO_BIN_EXE_relay-process");
const EVENTS: i64 = 20_000;

async fn scalar(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("query")
}

/// Polls `check` every 50 ms until it holds, failing the test after `limit`.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Setup {
    db: TestDb,
    topic: String,
    spec: RelaySpec,
}

/// 20,000 events of 20 aggregates, and relay `a` (one shard, 2 s lease) publishing them.
async fn started() -> (Setup, RelayProcess) {
    let db = testkit::database(&[&outbox::MIGRATOR, &leases::MIGRATOR]).await;
    let bootstrap = testkit::kafka::bootstrap_servers().await;
    let topic = testkit::kafka::topic(2).await;
    enqueue_numbered(&db.pool, &topic, 20, 1_000, 1_000).await;
    let spec = RelaySpec {
        mode: Mode::ExactlyOnce,
        database_url: db.options.to_url_lossy().to_string(),
        bootstrap_servers: bootstrap,
        name: format!("pause-{}", uuid::Uuid::new_v4().simple()),
        shards: 1,
        lease_ttl: Duration::from_secs(2),
    };
    let a = RelayProcess::start(BINARY, &spec, "a");
    let pool = db.pool.clone();
    eventually(Duration::from_secs(60), "a publishes", || {
        let pool = pool.clone();
        async move { remaining(&pool).await <= EVENTS - 2_000 }
    })
    .await;
    (Setup { db, topic, spec }, a)
}

/// The shard leases held by relay `b` (its lease owner is `b#<instance>`).
const SHARD_HELD_BY_B: &str =
    "SELECT count(*) FROM leases_named WHERE name LIKE '%-of-%' AND owner LIKE 'b#%'";

/// Waits until `b` holds the shard lease.
async fn taken_over_by_b(pool: &PgPool) {
    eventually(Duration::from_secs(30), "b takes the shard over", || {
        let pool = pool.clone();
        async move { scalar(&pool, SHARD_HELD_BY_B).await == 1 }
    })
    .await;
}

/// Waits until the outbox is empty.
async fn drained(pool: &PgPool) {
    eventually(Duration::from_secs(120), "the outbox drains", || {
        let pool = pool.clone();
        async move { remaining(&pool).await == 0 }
    })
    .await;
}

/// Waits until `a`'s log says it no longer holds the shard lease (its keeper found the lease
/// taken, or saw no renewal succeed for a ttl, or a fenced statement found it gone). (Once `a`
/// is back as a live member, the shard may move to it again: relays share the shards.)
async fn deposed(a: &RelayProcess) {
    eventually(
        Duration::from_secs(30),
        "a learns its lease is gone",
        || {
            let gone = ["lease was lost", "lost to another owner", "stepping down"]
                .iter()
                .any(|text| a.logged(text) > 0);
            async move { gone }
        },
    )
    .await;
}

/// Shuts `b` down; asserts every event reached `read_committed` consumers once, in order, and
/// returns that view and the `read_uncommitted` one.
async fn on_the_wire(setup: &Setup, b: RelayProcess) -> (Wire, Wire) {
    b.shutdown();
    let bootstrap = &setup.spec.bootstrap_servers;
    let committed =
        Wire::of(&testkit::kafka::read_to_end(bootstrap, &setup.topic, "read_committed").await);
    let uncommitted =
        Wire::of(&testkit::kafka::read_to_end(bootstrap, &setup.topic, "read_uncommitted").await);
    assert_eq!(committed.distinct, EVENTS as usize, "every event arrived");
    assert!(committed.consecutive, "once each, in per-aggregate order");
    (committed, uncommitted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_paused_in_the_middle_of_a_transaction_is_fenced_by_the_broker() {
    let (setup, a) = started().await;
    let bootstrap = setup.spec.bootstrap_servers.clone();
    // Pause `a` at a moment when its transaction has records on the broker.
    let mut paused = false;
    for _ in 0..500 {
        testkit::signal(a.pid(), "STOP");
        if open_transaction(&bootstrap, &setup.topic) {
            paused = true;
            break;
        }
        testkit::signal(a.pid(), "CONT");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(paused, "caught a in the middle of a transaction");

    let b = RelayProcess::start(BINARY, &setup.spec, "b");
    taken_over_by_b(&setup.db.pool).await;
    drained(&setup.db.pool).await;

    testkit::signal(a.pid(), "CONT");
    eventually(
        Duration::from_secs(30),
        "a is refused by the broker",
        || {
            let refused = a.log().iter().any(|line| {
                line.contains("shard stopped publishing") && line.to_lowercase().contains("fenced")
            });
            async move { refused }
        },
    )
    .await;
    deposed(&a).await;
    a.kill();

    let (committed, uncommitted) = on_the_wire(&setup, b).await;
    assert!(
        uncommitted.messages > committed.messages,
        "a's open transaction was aborted: read_uncommitted consumers see its records \
         ({} against {})",
        uncommitted.messages,
        committed.messages
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_paused_after_its_commit_has_its_late_mark_refused_by_the_lease_token() {
    let (setup, a) = started().await;
    let pool = setup.db.pool.clone();
    // Hold `a` after its Kafka commit: its mark waits for the table lock.
    let mut lock = pool.begin().await.expect("begin");
    sqlx::query("LOCK TABLE outbox_events IN SHARE MODE")
        .execute(&mut *lock)
        .await
        .expect("lock");
    tokio::time::sleep(Duration::from_millis(500)).await;
    testkit::signal(a.pid(), "STOP");

    let b = RelayProcess::start(BINARY, &setup.spec, "b");
    taken_over_by_b(&pool).await;
    // b's first mark (the previous owner's last transaction) queues behind a's.
    eventually(
        Duration::from_secs(30),
        "both marks wait on the lock",
        || {
            let pool = pool.clone();
            async move {
                scalar(
                    &pool,
                    "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                )
                .await
                    >= 2
            }
        },
    )
    .await;
    lock.rollback().await.expect("unlock");

    // a's mark ran first and changed nothing (its token is old): b found the events of a's last
    // transaction unmarked, and marked them.
    eventually(
        Duration::from_secs(30),
        "b marks a's last transaction",
        || {
            let marked = b.logged("previous owner's last transaction") > 0;
            async move { marked }
        },
    )
    .await;
    drained(&pool).await;

    testkit::signal(a.pid(), "CONT");
    deposed(&a).await;
    // That a's mark changed nothing is shown above: b, whose mark queued behind it, still found
    // the events unmarked. On waking, a learns it was deposed either from its mark (refused by
    // the token) or from its lease keeper (no renewal within the ttl), whichever it reads first.
    assert!(
        a.logged("error=the shard lease was lost") > 0
            || a.logged("no renewal within the ttl; stepping down") > 0,
        "a knows it lost the shard: {:?}",
        a.log()
    );
    a.kill();
    on_the_wire(&setup, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_relay_paused_past_its_lease_takes_its_shard_back_and_finishes() {
    let (setup, a) = started().await;
    testkit::signal(a.pid(), "STOP");
    tokio::time::sleep(setup.spec.lease_ttl * 2).await;
    testkit::signal(a.pid(), "CONT");
    // Its keeper steps down and takes the shard again under a new token; the shard follows.
    drained(&setup.db.pool).await;
    assert_eq!(
        scalar(
            &setup.db.pool,
            "SELECT count(*) FROM leases_named
             WHERE name LIKE '%-of-%' AND owner LIKE 'a#%' AND token > 1"
        )
        .await,
        1,
        "a holds the shard under a newer token"
    );
    a.shutdown();
    let bootstrap = &setup.spec.bootstrap_servers;
    let committed =
        Wire::of(&testkit::kafka::read_to_end(bootstrap, &setup.topic, "read_committed").await);
    assert_eq!(committed.distinct, EVENTS as usize, "every event arrived");
    assert!(committed.consecutive, "once each, in per-aggregate order");
}
