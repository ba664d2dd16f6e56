//! The fixtures themselves, against the real services.

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use redis::AsyncCommands;

#[tokio::test]
async fn read_all_returns_exactly_the_messages_produced() {
    let topic = testkit::kafka::topic(3).await;
    let producer: FutureProducer = testkit::kafka::producer_config()
        .await
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    let sends = (0..300).map(|i| {
        let (producer, topic) = (producer.clone(), topic.clone());
        async move {
            let key = format!("k{}", i % 7);
            let payload = format!("m{i}");
            let record = FutureRecord::to(&topic).key(&key).payload(&payload);
            producer
                .send(record, Duration::from_secs(5))
                .await
                .expect("delivered");
        }
    });
    futures::future::join_all(sends).await;
    let mut payloads: Vec<String> = testkit::kafka::read_all(&topic)
        .await
        .iter()
        .map(|m| {
            String::from_utf8_lossy(rdkafka::Message::payload(m).expect("payload")).into_owned()
        })
        .collect();
    payloads.sort();
    let mut expected: Vec<String> = (0..300).map(|i| format!("m{i}")).collect();
    expected.sort();
    assert_eq!(payloads, expected);
}

#[tokio::test]
async fn each_test_database_is_fresh_and_migrated() {
    let a = testkit::database(&[&leases::MIGRATOR]).await;
    let b = testkit::database(&[&leases::MIGRATOR]).await;
    sqlx::query("INSERT INTO leases_named (name) VALUES ('only-in-a')")
        .execute(&a.pool)
        .await
        .expect("insert");
    let in_b: i64 = sqlx::query_scalar("SELECT count(*) FROM leases_named")
        .fetch_one(&b.pool)
        .await
        .expect("count");
    assert_eq!(in_b, 0);
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&a.pool)
        .await
        .expect("name");
    drop(a);
    let admin = testkit::postgres::database_url().await;
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
        .await
        .expect("connect");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_one(&mut conn)
        .await
        .expect("count");
    assert_eq!(left, 0, "dropping the fixture drops its database");
}

#[tokio::test]
async fn redis_connection_works() {
    let mut redis = testkit::redis::connection().await;
    let key = format!("testkit-{}", uuid::Uuid::new_v4());
    let _: () = redis.set_ex(&key, "v", 60).await.expect("set");
    let value: String = redis.get(&key).await.expect("get");
    assert_eq!(value, "v");
}
