//! What an operator reads: each service's relay and API in its own metric series, and a dead
//! letter raising the depth gauge.

use super::*;

/// The `/metrics` text of one service.
async fn metrics_of(world: &World, service: &str) -> String {
    let url = format!("{}/metrics", world.client.base(service));
    reqwest::get(url)
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

/// The value of the first sample of `series` (name and labels, as rendered) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

#[test]
fn services_in_one_process_keep_their_own_series_and_a_dead_letter_raises_the_gauge() {
    run(async {
        let stack = stack().await;
        let world = World::new(stack);
        // Something through the order API, so its latency histogram has a sample.
        let (_, dora) = world.customer("dora");
        world
            .client
            .send(
                world
                    .client
                    .request(Method::GET, "order", "/api/v1/orders", Some(&dora)),
            )
            .await
            .expect("orders");
        // An order through the saga, so every service's consumer handles messages and reports
        // its lag.
        let product = world.product(1000, 1).await;
        let id = world.place(&dora, &[(product, 1)]).await;
        world
            .client
            .wait_settled(&dora, &id, FINAL)
            .await
            .expect("settled");
        // Each relay refreshes its gauges every 5 s, each consumer its lag every 10 s; all six
        // services' series show up in one process's metrics, each under its own label.
        let services = [
            "order",
            "inventory",
            "payment",
            "product",
            "shipping",
            "notification",
        ];
        let deadline = tokio::time::Instant::now() + FINAL;
        let text = loop {
            let text = metrics_of(&world, "order").await;
            let missing: Vec<&str> = services
                .iter()
                .copied()
                .filter(|s| {
                    sample(&text, &format!("outbox_pending{{relay=\"{s}\"}}")).is_none()
                        || sample(&text, &format!("outbox_relay_publishing{{relay=\"{s}\"}}"))
                            != Some(1.0)
                        || !text
                            .lines()
                            .any(|l| l.starts_with(&format!("inbox_consumer_lag{{consumer=\"{s}.")))
                })
                .collect();
            if missing.is_empty() {
                break text;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no pending, publishing or lag series of {missing:?}:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        assert!(
            text.lines()
                .any(|l| l.starts_with("http_request_duration_seconds")
                    && l.contains("service=\"order\"")
                    && l.contains("route=\"/api/v1/orders\"")
                    && l.contains("status=\"200\"")),
            "no latency series of the order API:\n{text}"
        );

        // An event too large for the broker is dead-lettered by the payment service's relay.
        let series = "outbox_dead_letters{relay=\"payment\"}";
        let before = sample(&metrics_of(&world, "payment").await, series).unwrap_or(0.0);
        let pool = db(stack, "payment").await;
        let mut tx = pool.begin().await.expect("begin");
        let huge = outbox::NewEvent::bytes(
            &stack.config.topics.payments,
            "order",
            Uuid::now_v7().to_string(),
            "Oversized",
            vec![b'x'; 2 * 1024 * 1024],
        );
        outbox::enqueue(&mut tx, &huge).await.expect("enqueue");
        tx.commit().await.expect("commit");
        let deadline = tokio::time::Instant::now() + FINAL;
        loop {
            let depth = sample(&metrics_of(&world, "payment").await, series).unwrap_or(0.0);
            if depth >= before + 1.0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "dead-letter depth stuck at {depth}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let reason: String =
            sqlx::query_scalar("SELECT reason FROM outbox_dead_letters WHERE id = $1")
                .bind(huge.id)
                .fetch_one(&pool)
                .await
                .expect("dead letter");
        assert_eq!(reason, "permanent publish failure");
    });
}

/// `(status, body)` of a service's `/ready`.
async fn ready(base: &str) -> (StatusCode, String) {
    let response = reqwest::Client::new()
        .get(format!("{base}/ready"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("ready");
    let status = response.status();
    (status, response.text().await.expect("text"))
}

#[test]
fn a_service_is_ready_only_while_its_consumers_hold_partitions() {
    run(async {
        let stack = stack().await;
        let world = World::new(stack);
        for service in [
            "order",
            "inventory",
            "payment",
            "product",
            "shipping",
            "notification",
        ] {
            ready_until(&world.client.base(service), |status, _| {
                status == StatusCode::OK
            })
            .await;
        }

        // A shipping service whose topics do not exist: its consumer joins no partition, and it
        // says so instead of answering ready while nothing moves.
        let config = small(config().await);
        let lonely = Service::Shipping.start(&config).await.expect("starts");
        let base = format!("http://{}", lonely.addr);
        // Long enough for a consumer with partitions to have joined its group.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (status, body) = ready(&base).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(
            body.contains("consumer shipping.saga: no partition assigned"),
            "{body}"
        );
        lonely.shutdown().await;
        commerce_platform::setup::drop_databases(&config)
            .await
            .expect("the service's database dropped");
    });
}

/// Polls `base`'s `/ready` until `done(status, body)`; returns the last answer.
async fn ready_until(base: &str, done: impl Fn(StatusCode, &str) -> bool) -> (StatusCode, String) {
    let deadline = tokio::time::Instant::now() + FINAL;
    loop {
        let (status, body) = ready(base).await;
        if done(status, &body) {
            return (status, body);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/ready: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn a_service_whose_relay_cannot_publish_is_not_ready_until_it_publishes_again() {
    run(async {
        // The broker is this test's own: it stops it.
        let mut broker = testkit::OwnedBroker::start().await;
        let mut config = small(config().await);
        config.kafka = broker.bootstrap_servers();
        commerce_launcher::create_topics(&config)
            .await
            .expect("topics");
        let inventory = Service::Inventory.start(&config).await.expect("starts");
        let base = format!("http://{}", inventory.addr);
        ready_until(&base, |status, _| status == StatusCode::OK).await;

        broker.stop();
        // A stock add commits an event the relay cannot hand to any broker.
        config.addrs.inventory = inventory.addr;
        let client = Client::new(&config);
        let admin = client.token("admin", &["admin"]);
        client
            .add_stock(&admin, Uuid::new_v4(), 5)
            .await
            .expect("the database still takes the stock add");
        // The broker check fails at once; the relay is stalled once a batch has waited for the
        // broker for `RelayConfig::stalled_after` (10 s by default).
        let (status, body) = ready_until(&base, |_, body| body.contains("relay:")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("relay: not publishing"), "{body}");

        broker.restart().await;
        ready_until(&base, |status, _| status == StatusCode::OK).await;
        inventory.shutdown().await;
        commerce_platform::setup::drop_databases(&config)
            .await
            .expect("the service's database dropped");
    });
}
