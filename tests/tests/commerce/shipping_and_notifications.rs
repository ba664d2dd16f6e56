//! Past the payment: a paid order ships once and completes on delivery, and every
//! customer-visible step makes one notification for its customer, however often it is
//! delivered.

use super::*;

impl World {
    /// The kinds of the caller's notifications about `order`, oldest first.
    pub(crate) async fn notified(&self, token: &str, order: &str) -> Vec<String> {
        let (status, body) = self
            .client
            .notifications(token)
            .await
            .expect("notifications");
        assert_eq!(status, StatusCode::OK, "{body}");
        body["notifications"]
            .as_array()
            .expect("list")
            .iter()
            .filter(|n| n["order_id"] == order)
            .filter_map(|n| n["kind"].as_str().map(str::to_owned))
            .collect()
    }

    /// Waits until the caller's notifications about `order` are `kinds`.
    pub(crate) async fn notified_exactly(&self, token: &str, order: &str, kinds: &[&str]) {
        let deadline = tokio::time::Instant::now() + FINAL;
        loop {
            let seen = self.notified(token, order).await;
            if seen == kinds {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "notifications of {order}: {seen:?}, expected {kinds:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[test]
fn a_paid_order_ships_once_completes_on_delivery_and_can_no_longer_be_cancelled() {
    run(async {
        let stack = stack().await;
        let world = World::new(stack);
        let product = world.product(2000, 4).await;
        let (_, quinn) = world.customer("quinn");
        let id = world.place(&quinn, &[(product, 1)]).await;
        let order = world
            .client
            .wait_settled(&quinn, &id, FINAL)
            .await
            .expect("settled");
        assert_eq!(order["state"], "SHIPPED", "{order}");

        let (status, shipment) = world.client.shipment(&quinn, &id).await.expect("shipment");
        assert_eq!(status, StatusCode::OK, "{shipment}");
        assert_eq!(shipment["state"], "CREATED");
        assert_eq!(shipment["carrier"], "Acme Parcel");
        assert!(
            shipment["tracking_number"]
                .as_str()
                .is_some_and(|t| t.starts_with("AP")),
            "{shipment}"
        );
        let shipments: i64 =
            sqlx::query_scalar("SELECT count(*) FROM shipments WHERE order_id = $1")
                .bind(id.parse::<Uuid>().expect("uuid"))
                .fetch_one(&db(stack, "shipping").await)
                .await
                .expect("count");
        assert_eq!(shipments, 1);
        // Another customer cannot see it.
        let (_, other) = world.customer("rhea");
        assert_eq!(
            world
                .client
                .shipment(&other, &id)
                .await
                .expect("shipment")
                .0,
            StatusCode::NOT_FOUND
        );

        // Shipped: the cancel is refused as problem+json, and nothing is given back.
        let (status, problem) = world
            .client
            .cancel_order(&quinn, &id)
            .await
            .expect("cancel");
        assert_eq!(status, StatusCode::CONFLICT, "{problem}");
        assert_eq!(problem["status"], 409, "{problem}");
        assert!(problem["code"].is_string(), "{problem}");

        // A customer cannot deliver; an admin can, once.
        assert_eq!(
            world.client.deliver(&quinn, &id).await.expect("deliver").0,
            StatusCode::FORBIDDEN
        );
        let (status, delivered) = world
            .client
            .deliver(&world.admin, &id)
            .await
            .expect("deliver");
        assert_eq!(status, StatusCode::OK, "{delivered}");
        assert_eq!(delivered["state"], "DELIVERED");
        let order = world
            .client
            .wait_state(&quinn, &id, &["COMPLETED"], FINAL)
            .await
            .expect("completed");
        assert_eq!(order["state"], "COMPLETED");
        let (status, again) = world
            .client
            .deliver(&world.admin, &id)
            .await
            .expect("deliver");
        assert_eq!(
            (status, &again["state"]),
            (StatusCode::OK, &delivered["state"])
        );
        assert_eq!(
            world
                .client
                .cancel_order(&quinn, &id)
                .await
                .expect("cancel")
                .0,
            StatusCode::CONFLICT
        );
        let stock = world.stock(product).await;
        assert_eq!(
            (stock["total"].as_i64(), stock["reserved"].as_i64()),
            (Some(3), Some(0))
        );
    });
}

#[test]
fn every_step_notifies_its_customer_once_in_order_even_when_delivered_twice() {
    run(async {
        let stack = stack().await;
        let world = World::new(stack);
        let product = world.product(350, 5).await;
        let (_, sam) = world.customer("sam");
        let happy = world.place(&sam, &[(product, 2)]).await;
        world
            .client
            .wait_settled(&sam, &happy, FINAL)
            .await
            .expect("shipped");
        world
            .client
            .deliver(&world.admin, &happy)
            .await
            .expect("deliver");
        let happy_steps = [
            "order_placed",
            "order_confirmed",
            "order_shipped",
            "order_delivered",
        ];
        world.notified_exactly(&sam, &happy, &happy_steps).await;

        let (_, declined_sam) = world.customer("decline-sam");
        let declined = world.place(&declined_sam, &[(product, 1)]).await;
        let cancelled_steps = ["order_placed", "order_cancelled"];
        world
            .notified_exactly(&declined_sam, &declined, &cancelled_steps)
            .await;
        let (_, body) = world
            .client
            .notifications(&declined_sam)
            .await
            .expect("list");
        let reason = body["notifications"]
            .as_array()
            .expect("list")
            .iter()
            .find(|n| n["kind"] == "order_cancelled")
            .and_then(|n| n["message"].as_str())
            .unwrap_or_default()
            .to_owned();
        assert!(reason.contains("payment declined"), "{reason}");

        // Every event of both orders once more: still one notification per step.
        redeliver(stack, &[happy.clone(), declined.clone()]).await;
        assert_eq!(world.notified(&sam, &happy).await, happy_steps);
        assert_eq!(
            world.notified(&declined_sam, &declined).await,
            cancelled_steps
        );
        // Nobody else sees them.
        let (_, stranger) = world.customer("tess");
        let (_, body) = world.client.notifications(&stranger).await.expect("list");
        assert_eq!(body["notifications"], json!([]));
        assert!(world.notified(&sam, &declined).await.is_empty());
    });
}
