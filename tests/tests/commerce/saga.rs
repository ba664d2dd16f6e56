//! The saga end to end: a product announced to order and inventory, confirmed, declined, short of stock, twenty identical posts, two hundred orders for a hundred units, a reservation timeout.

use super::*;

#[test]
fn happy_path_confirms_moves_stock_charges_once_and_updates_the_catalogue() {
    run(async {
        let world = World::new(stack().await);
        let product = world.product(1500, 10).await;
        let (_, alice) = world.customer("alice");
        let id = world.place(&alice, &[(product, 2)]).await;
        let order = world
            .client
            .wait_settled(&alice, &id, FINAL)
            .await
            .expect("final");
        assert_eq!(order["state"], "SHIPPED", "{order}");
        assert_eq!(order["total_cents"], 3000);
        let stock = world.stock(product).await;
        assert_eq!(
            (
                stock["total"].as_i64(),
                stock["reserved"].as_i64(),
                stock["available"].as_i64()
            ),
            (Some(8), Some(0), Some(8))
        );
        let (status, payment) = world.payment(&id).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            (payment["status"].as_str(), payment["amount_cents"].as_i64()),
            (Some("APPROVED"), Some(3000))
        );
        world.served_stock_converges(product, 8).await;
    });
}

#[test]
fn a_product_is_announced_to_order_and_inventory_and_a_price_change_prices_later_orders() {
    run(async {
        let stack = stack().await;
        let world = World::new(stack);
        let c = &world.client;
        // `product` returns once the order service can price it.
        let product = world.product(1200, 0).await;
        // Inventory set up its stock row from the same announcement, with no units.
        let deadline = tokio::time::Instant::now() + FINAL;
        let path = format!("/api/v1/stock/{product}");
        loop {
            let (status, stock) = c
                .send(c.request(Method::GET, "inventory", &path, Some(&world.admin)))
                .await
                .expect("stock");
            if status == StatusCode::OK {
                assert_eq!(
                    (stock["total"].as_i64(), stock["reserved"].as_i64()),
                    (Some(0), Some(0))
                );
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no stock row: {status} {stock}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        world
            .client
            .add_stock(&world.admin, product, 5)
            .await
            .expect("stock");
        let (_, alice) = world.customer("price-alice");
        let first = world.place(&alice, &[(product, 1)]).await;

        let (status, changed) = c
            .send(
                c.request(
                    Method::PUT,
                    "product",
                    &format!("/api/v1/products/{product}"),
                    Some(&world.admin),
                )
                .json(&json!({"price_cents": 1500})),
            )
            .await
            .expect("change the price");
        assert_eq!(status, StatusCode::OK, "{changed}");
        let internal = format!("/internal/v1/catalogue/{product}");
        loop {
            let (_, known) = c
                .send(
                    c.request(Method::GET, "order", &internal, None)
                        .header("x-api-key", &stack.config.api_key),
                )
                .await
                .expect("catalogue");
            if known["version"] == 2 {
                assert_eq!(known["price_cents"], 1500, "{known}");
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "price change not consumed: {known}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let second = world.place(&alice, &[(product, 1)]).await;
        for (id, total) in [(first, 1200), (second, 1500)] {
            let order = c.wait_settled(&alice, &id, FINAL).await.expect("final");
            assert_eq!(order["total_cents"], total, "{order}");
        }
    });
}

#[test]
fn declined_payment_cancels_the_order_and_releases_the_stock() {
    run(async {
        let world = World::new(stack().await);
        let product = world.product(700, 5).await;
        let (_, bob) = world.customer("decline-bob");
        let id = world.place(&bob, &[(product, 3)]).await;
        let order = world
            .client
            .wait_settled(&bob, &id, FINAL)
            .await
            .expect("final");
        assert_eq!(order["state"], "CANCELLED", "{order}");
        assert!(
            order["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("declined"),
            "{order}"
        );
        let deadline = tokio::time::Instant::now() + FINAL;
        while world.stock(product).await["reserved"] != 0 {
            assert!(tokio::time::Instant::now() < deadline, "stock not released");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(world.stock(product).await["total"], 5);
        assert_eq!(
            world.payment(&id).await.1["status"],
            "DECLINED",
            "no charge"
        );
        world.served_stock_converges(product, 5).await;
    });
}

#[test]
fn not_enough_stock_fails_the_order_with_a_reason_and_reserves_nothing() {
    run(async {
        let world = World::new(stack().await);
        let product = world.product(900, 2).await;
        let (_, carol) = world.customer("carol");
        let id = world.place(&carol, &[(product, 5)]).await;
        let order = world
            .client
            .wait_settled(&carol, &id, FINAL)
            .await
            .expect("final");
        assert_eq!(order["state"], "FAILED", "{order}");
        assert!(
            order["reason"]
                .as_str()
                .unwrap_or_default()
                .contains(&product.to_string()),
            "{order}"
        );
        let stock = world.stock(product).await;
        assert_eq!(
            (stock["total"].as_i64(), stock["reserved"].as_i64()),
            (Some(2), Some(0))
        );
        assert_eq!(
            world.payment(&id).await.0,
            StatusCode::NOT_FOUND,
            "never charged"
        );
    });
}

#[test]
fn the_same_post_twenty_times_at_once_makes_one_order_one_reservation_one_charge() {
    run(async {
        let stack = stack().await;
        let world = World::new(stack);
        let product = world.product(1000, 10).await;
        let (name, dan) = world.customer("dan");
        let key = Uuid::new_v4().to_string();
        let lines = [(product, 1)];
        let posts = (0..20).map(|_| world.client.place_order(&dan, &key, &lines));
        let replies = futures::future::join_all(posts).await;
        let mut ids = HashSet::new();
        for reply in replies {
            let (status, body) = reply.expect("reply");
            match status {
                StatusCode::CREATED => {
                    ids.insert(body["id"].as_str().expect("id").to_owned());
                }
                StatusCode::CONFLICT => assert_eq!(body["status"], 409, "problem+json"),
                other => panic!("unexpected {other}: {body}"),
            }
        }
        assert_eq!(ids.len(), 1, "one order");
        let id = ids.into_iter().next().expect("one");
        assert_eq!(
            world
                .client
                .wait_settled(&dan, &id, FINAL)
                .await
                .expect("final")["state"],
            "SHIPPED"
        );
        let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE customer_id = $1")
            .bind(&name)
            .fetch_one(&db(stack, "order").await)
            .await
            .expect("count");
        assert_eq!(orders, 1);
        let reservations: i64 =
            sqlx::query_scalar("SELECT count(*) FROM reservations WHERE order_id = $1::uuid")
                .bind(&id)
                .fetch_one(&db(stack, "inventory").await)
                .await
                .expect("count");
        assert_eq!(reservations, 1);
        let charges: i64 =
            sqlx::query_scalar("SELECT count(*) FROM payments WHERE order_id = $1::uuid")
                .bind(&id)
                .fetch_one(&db(stack, "payment").await)
                .await
                .expect("count");
        assert_eq!(charges, 1);
        assert_eq!(world.stock(product).await["total"], 9);
    });
}

#[test]
fn two_hundred_concurrent_orders_for_a_hundred_units_sell_exactly_a_hundred() {
    run(async {
        let world = World::new(stack().await);
        let product = world.product(500, 100).await;
        // Watch the stock while the orders run: available must never go below zero.
        let watcher = {
            let (client, admin) = (world.client.clone(), world.admin.clone());
            tokio::spawn(async move {
                let mut lowest = i64::MAX;
                for _ in 0..400 {
                    let path = format!("/api/v1/stock/{product}");
                    if let Ok((_, s)) = client
                        .send(client.request(Method::GET, "inventory", &path, Some(&admin)))
                        .await
                    {
                        lowest = lowest.min(s["available"].as_i64().unwrap_or(i64::MAX));
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                lowest
            })
        };
        let customers: Vec<(String, String)> = (0..200).map(|_| world.customer("crowd")).collect();
        let lines = [(product, 1)];
        let posts = customers
            .iter()
            .map(|(_, token)| world.place(token, &lines));
        let ids = futures::future::join_all(posts).await;
        let mut states: HashMap<String, usize> = HashMap::new();
        for ((_, token), id) in customers.iter().zip(&ids) {
            let order = world
                .client
                .wait_settled(token, id, FINAL)
                .await
                .expect("final");
            *states
                .entry(order["state"].as_str().unwrap_or("?").to_owned())
                .or_default() += 1;
        }
        assert_eq!(states.get("SHIPPED"), Some(&100), "{states:?}");
        assert_eq!(states.get("FAILED"), Some(&100), "{states:?}");
        let stock = world.stock(product).await;
        assert_eq!(
            (
                stock["total"].as_i64(),
                stock["reserved"].as_i64(),
                stock["available"].as_i64()
            ),
            (Some(0), Some(0), Some(0))
        );
        assert!(watcher.await.expect("watcher") >= 0, "stock went negative");
        world.served_stock_converges(product, 0).await;
    });
}

#[test]
fn a_reservation_not_paid_in_time_is_cancelled_and_released() {
    run(async {
        let world = World::new(stack().await);
        let product = world.product(1200, 4).await;
        let (_, slow) = world.customer("timeout-erin");
        let id = world.place(&slow, &[(product, 2)]).await;
        let order = world
            .client
            .wait_settled(&slow, &id, FINAL)
            .await
            .expect("final");
        assert_eq!(
            (order["state"].as_str(), order["reason"].as_str()),
            (Some("CANCELLED"), Some("payment timeout")),
            "{order}"
        );
        let deadline = tokio::time::Instant::now() + FINAL;
        while world.stock(product).await["reserved"] != 0 {
            assert!(tokio::time::Instant::now() < deadline, "stock not released");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(world.stock(product).await["total"], 4);
    });
}
