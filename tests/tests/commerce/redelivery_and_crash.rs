//! Every event delivered twice, and a service killed mid-batch and restarted.

use super::*;

/// Offsets committed by `group` on `topic` reach the end of every partition.
async fn caught_up(bootstrap: &str, group: &str, topic: &str) -> bool {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let timeout = Duration::from_secs(5);
    let Ok(metadata) = consumer.fetch_metadata(Some(topic), timeout) else {
        return false;
    };
    let mut list = TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        list.add_partition(topic, p.id());
    }
    let Ok(committed) = consumer.committed_offsets(list, timeout) else {
        return false;
    };
    committed.elements().iter().all(|e| {
        let (_, high) = consumer
            .fetch_watermarks(topic, e.partition(), timeout)
            .unwrap_or((0, i64::MAX));
        match e.offset() {
            Offset::Offset(o) => o >= high,
            _ => high == 0,
        }
    })
}

#[test]
fn every_event_delivered_twice_has_its_effect_once() {
    run(async {
        let stack = stack().await;
        let world = World::new(stack);
        let product = world.product(2500, 6).await;
        let mut orders = Vec::new();
        for prefix in ["ivy", "decline-jack", "kim"] {
            let (_, token) = world.customer(prefix);
            let id = world.place(&token, &[(product, 1)]).await;
            orders.push((token, id));
        }
        let mut before = Vec::new();
        for (token, id) in &orders {
            before.push(
                world
                    .client
                    .wait_final(token, id, FINAL)
                    .await
                    .expect("final")["state"]
                    .clone(),
            );
        }
        world.served_stock_converges(product, 4).await;
        let ids: Vec<Uuid> = orders
            .iter()
            .map(|(_, id)| id.parse().expect("uuid"))
            .collect();
        let snapshot = |stack: &'static Stack, ids: Vec<Uuid>| async move {
            let payments: i64 =
                sqlx::query_scalar("SELECT count(*) FROM payments WHERE order_id = ANY($1)")
                    .bind(&ids)
                    .fetch_one(&db(stack, "payment").await)
                    .await
                    .expect("count");
            let movements: i64 =
                sqlx::query_scalar("SELECT count(*) FROM movements WHERE product_id = $1")
                    .bind(product)
                    .fetch_one(&db(stack, "inventory").await)
                    .await
                    .expect("count");
            (payments, movements)
        };
        let counts = snapshot(stack, ids.clone()).await;

        // Deliver every event of the three topics a second time: same key, payload and headers.
        let producer: rdkafka::producer::FutureProducer = testkit::kafka::producer_config()
            .await
            .create()
            .expect("producer");
        let topics = &stack.config.topics;
        for topic in [&topics.orders, &topics.inventory, &topics.payments] {
            for message in testkit::kafka::read_all(topic).await {
                use rdkafka::Message;
                let mut record = rdkafka::producer::FutureRecord::<[u8], [u8]>::to(topic);
                if let Some(key) = message.key() {
                    record = record.key(key);
                }
                if let Some(payload) = message.payload() {
                    record = record.payload(payload);
                }
                if let Some(headers) = message.headers() {
                    record = record.headers(headers.clone());
                }
                producer
                    .send(record, Duration::from_secs(10))
                    .await
                    .expect("redeliver");
            }
        }
        // Wait until every consumer group has processed the copies.
        let groups = [
            ("order.saga", vec![&topics.inventory, &topics.payments]),
            ("inventory.saga", vec![&topics.orders, &topics.payments]),
            ("payment.saga", vec![&topics.orders, &topics.inventory]),
            ("product.stock", vec![&topics.inventory]),
        ];
        let deadline = tokio::time::Instant::now() + FINAL;
        for (name, group_topics) in groups {
            let group = format!("{}.{name}", topics.prefix);
            for topic in group_topics {
                while !caught_up(&stack.config.kafka, &group, topic).await {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "{group} did not catch up on {topic}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        assert_eq!(
            snapshot(stack, ids).await,
            counts,
            "no second charge or stock movement"
        );
        for ((token, id), state) in orders.iter().zip(before) {
            assert_eq!(
                world.client.order(token, id).await.expect("order").1["state"],
                state
            );
        }
        let stock = world.stock(product).await;
        assert_eq!(
            (stock["total"].as_i64(), stock["reserved"].as_i64()),
            (Some(4), Some(0))
        );
        world.served_stock_converges(product, 4).await;
    });
}

#[test]
fn a_service_killed_mid_batch_and_restarted_leaves_every_order_final() {
    run(async {
        let mut stack = Stack::start(&config().await).await.expect("second stack");
        let world = World::new(&stack);
        let product = world.product(300, 100).await;
        let customers: Vec<(String, String)> = (0..20).map(|_| world.customer("batch")).collect();
        let lines = [(product, 1)];
        let posts = customers
            .iter()
            .map(|(_, token)| world.place(token, &lines));
        let ids = futures::future::join_all(posts).await;
        // Kill inventory and payment while the saga is in flight, then bring them back.
        stack
            .crash_and_restart(Service::Inventory)
            .await
            .expect("inventory restarts");
        stack
            .crash_and_restart(Service::Payment)
            .await
            .expect("payment restarts");
        let world = World::new(&stack);
        let mut states = Vec::new();
        for ((_, token), id) in customers.iter().zip(&ids) {
            let order = world
                .client
                .wait_final(token, id, Duration::from_secs(120))
                .await
                .expect("every order final");
            states.push(format!("{} {}", order["state"], order["reason"]));
        }
        let confirmed = states
            .iter()
            .filter(|s| s.starts_with("\"CONFIRMED\""))
            .count();
        assert_eq!(confirmed, 20, "enough stock for all: {states:?}");
        let stock = world.stock(product).await;
        assert_eq!(
            (stock["total"].as_i64(), stock["reserved"].as_i64()),
            (Some(80), Some(0))
        );
        stack.shutdown().await;
    });
}
