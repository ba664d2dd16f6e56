//! A process running one consumer runner per topic, for the fault test that SIGKILLs it
//! (`tests/tests/consumer_process_kill.rs`).
//!
//! Environment: `DATABASE_URL` (a database with the inbox migrations and `effects`),
//! `KAFKA_BOOTSTRAP_SERVERS`, `CONSUMER_TOPICS` (comma-separated), `CONSUMER_DEAD_LETTERS` (a
//! topic), `CONSUMER_INSTANCE` (the static member id suffix). Each runner is `effects-<topic>` in
//! the group `<topic>.effects`, a static member (`group.instance.id = <group>.<instance>`). Prints
//! `ready` once the runners are started; when standard input closes it shuts them down and prints
//! one line per runner: `<topic> processed=<n> duplicates=<n> dead_lettered=<n>`.

use std::io::BufRead;
use std::time::Duration;

use inbox::{Consumer, ConsumerConfig};
use rdkafka::ClientConfig;
use workspace_tests::pipeline::{self, Effects};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // Named, so a test can end this process's sessions after it killed the process.
    let options = env("DATABASE_URL")
        .parse::<sqlx::postgres::PgConnectOptions>()
        .expect("DATABASE_URL")
        .application_name(pipeline::CONSUMER_APPLICATION_NAME);
    let pool = sqlx::PgPool::connect_with(options)
        .await
        .expect("connect to PostgreSQL");
    let instance = env("CONSUMER_INSTANCE");
    let dead_letters = env("CONSUMER_DEAD_LETTERS");
    let mut runners = Vec::new();
    for topic in env("CONSUMER_TOPICS").split(',') {
        let group = format!("{topic}.effects");
        let mut kafka = ClientConfig::new();
        kafka
            .set("bootstrap.servers", env("KAFKA_BOOTSTRAP_SERVERS"))
            .set("group.instance.id", format!("{group}.{instance}"))
            .set("session.timeout.ms", "45000");
        let config = ConsumerConfig::new(format!("effects-{topic}"), kafka)
            .group_id(group)
            .topic(topic)
            .dead_letter_topic(&dead_letters)
            .backoff(
                outbox::Backoff::new(
                    Duration::from_millis(10),
                    Duration::from_millis(200),
                    u32::MAX,
                )
                .expect("backoff"),
            );
        let runner = Consumer::new(pool.clone(), config, Effects)
            .expect("consumer runner")
            .spawn();
        runners.push((topic.to_owned(), runner));
    }
    println!("ready");
    // Block a thread, not the runtime, until standard input closes.
    tokio::task::spawn_blocking(|| for _ in std::io::stdin().lock().lines() {})
        .await
        .expect("stdin");
    for (topic, runner) in runners {
        let stats = runner.shutdown().await;
        println!(
            "{topic} processed={} duplicates={} dead_lettered={}",
            stats.processed, stats.duplicates, stats.dead_lettered
        );
    }
}
