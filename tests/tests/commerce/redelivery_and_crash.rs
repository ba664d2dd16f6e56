//! Every event delivered twice, and a service killed mid-batch and restarted.

use super::*;

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
                    .wait_settled(token, id, FINAL)
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

        let mut keys: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        keys.push(product.to_string());
        redeliver(stack, &keys).await;
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
        let services = [
            Service::Product,
            Service::Inventory,
            Service::Payment,
            Service::Shipping,
            Service::Order,
        ];
        let mut stack = Stack::start_only(&small(config().await), &services)
            .await
            .expect("second stack");
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
                .wait_settled(token, id, Duration::from_secs(120))
                .await
                .expect("every order final");
            states.push(format!("{} {}", order["state"], order["reason"]));
        }
        let confirmed = states
            .iter()
            .filter(|s| s.starts_with("\"SHIPPED\""))
            .count();
        assert_eq!(confirmed, 20, "enough stock for all: {states:?}");
        let stock = world.stock(product).await;
        assert_eq!(
            (stock["total"].as_i64(), stock["reserved"].as_i64()),
            (Some(80), Some(0))
        );
        stack
            .discard()
            .await
            .expect("the stack's databases dropped");
    });
}
