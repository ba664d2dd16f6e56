//! Compensation end to end: a cancelled order returns every unit and every charge, in whatever
//! order its events meet. These run on stacks without the shipping service, so a paid order
//! stays `CONFIRMED` (and cancellable) for as long as a test needs.

use super::*;

use commerce_platform::Config;

/// Every service but shipping.
const UNSHIPPED: [Service; 5] = [
    Service::Product,
    Service::Inventory,
    Service::Payment,
    Service::Notification,
    Service::Order,
];

static STACK_UNSHIPPED: OnceCell<Stack> = OnceCell::const_new();
static STACK_QUICK_EXPIRY: OnceCell<Stack> = OnceCell::const_new();

/// A stack without shipping (default test timeouts).
async fn unshipped() -> &'static Stack {
    STACK_UNSHIPPED
        .get_or_init(|| async { shared(&small(config().await), &UNSHIPPED).await })
        .await
}

/// A stack without shipping whose reservations expire after one second: as long as a `slow`
/// customer's payment takes.
async fn quick_expiry() -> &'static Stack {
    STACK_QUICK_EXPIRY
        .get_or_init(|| async {
            let config = Config {
                reservation_timeout: Duration::from_secs(1),
                ..small(config().await)
            };
            let services = [
                Service::Product,
                Service::Inventory,
                Service::Payment,
                Service::Order,
            ];
            shared(&config, &services).await
        })
        .await
}

/// Waits until `check` holds (it reads eventually consistent state), failing with its last
/// answer after [`FINAL`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = tokio::time::Instant::now() + FINAL;
    loop {
        match check().await {
            Ok(()) => return,
            Err(last) if tokio::time::Instant::now() >= deadline => {
                panic!("{what}: still {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

impl World {
    /// `(total, reserved)` of a product in inventory.
    async fn level(&self, product: Uuid) -> (i64, i64) {
        let stock = self.stock(product).await;
        (
            stock["total"].as_i64().unwrap_or(-1),
            stock["reserved"].as_i64().unwrap_or(-1),
        )
    }

    /// The payment status of an order, `None` without a payment.
    async fn payment_status(&self, order: &str) -> Option<String> {
        let (status, payment) = self.payment(order).await;
        (status == StatusCode::OK).then(|| payment["status"].as_str().unwrap_or("?").to_owned())
    }

    /// Waits until the order's payment status is one of `accepted` (`none`: no payment).
    async fn payment_settles(&self, order: &str, accepted: &[&str]) {
        eventually("the payment settles", || async {
            let status = self.payment_status(order).await;
            let name = status.as_deref().unwrap_or("none");
            accepted
                .contains(&name)
                .then_some(())
                .ok_or(name.to_owned())
        })
        .await;
    }

    /// Waits until every unit is back (`total` owned, nothing reserved) in inventory and in the
    /// product service's cache.
    async fn stock_restored(&self, product: Uuid, total: i64) {
        eventually("stock back in inventory", || async {
            let level = self.level(product).await;
            (level == (total, 0))
                .then_some(())
                .ok_or(format!("{level:?}"))
        })
        .await;
        self.served_stock_converges(product, total).await;
    }
}

/// Waits until the payment service has no charge of the order to make or in flight (the
/// charger has settled it, or it was never asked for).
async fn charges_done(stack: &Stack, order: &str) {
    let pool = db(stack, "payment").await;
    let order: Uuid = order.parse().expect("an order id");
    eventually("the order's charge is settled", || async {
        let pending: Option<bool> = sqlx::query_scalar(
            "SELECT next_attempt_at IS NOT NULL FROM payments WHERE order_id = $1",
        )
        .bind(order)
        .fetch_optional(&pool)
        .await
        .expect("payments");
        (pending != Some(true))
            .then_some(())
            .ok_or("a charge is due or in flight".to_owned())
    })
    .await;
}

/// How many `PaymentRefunded` events (distinct event ids: a redelivered copy is the same
/// event) the payments topic carries for `order`.
async fn refunds_published(stack: &Stack, order: &str) -> usize {
    testkit::kafka::read_all(&stack.config.topics.payments)
        .await
        .iter()
        .filter_map(|m| {
            use rdkafka::Message;
            commerce_events::decode(m.payload()?).ok()
        })
        .filter(|e| {
            e.aggregate_id == order
                && matches!(e.event, commerce_events::Event::PaymentRefunded { .. })
        })
        .map(|e| e.event_id)
        .collect::<HashSet<_>>()
        .len()
}

#[test]
fn cancelling_a_paid_order_refunds_once_and_puts_the_sold_units_back() {
    run(async {
        let stack = unshipped().await;
        let world = World::new(stack);
        let product = world.product(1200, 10).await;
        let (_, mia) = world.customer("mia");
        let id = world.place(&mia, &[(product, 3)]).await;
        world
            .client
            .wait_state(&mia, &id, &["CONFIRMED"], FINAL)
            .await
            .expect("paid and confirmed");
        assert_eq!(world.level(product).await, (7, 0), "the units are sold");
        assert_eq!(world.payment_status(&id).await.as_deref(), Some("APPROVED"));

        let (status, order) = world.client.cancel_order(&mia, &id).await.expect("cancel");
        assert_eq!(status, StatusCode::OK, "{order}");
        assert_eq!(order["state"], "CANCELLED");

        world.stock_restored(product, 10).await;
        world.payment_settles(&id, &["REFUNDED"]).await;
        // Every movement recorded: reserved, sold, restocked.
        let path = format!("/api/v1/stock/{product}/movements");
        let (_, movements) = world
            .client
            .send(
                world
                    .client
                    .request(Method::GET, "inventory", &path, Some(&world.admin)),
            )
            .await
            .expect("movements");
        let kinds: Vec<&str> = movements["movements"]
            .as_array()
            .expect("movements")
            .iter()
            .rev()
            .filter_map(|m| m["kind"].as_str())
            .collect();
        assert_eq!(kinds, ["add", "reserve", "confirm", "restock"]);
        // A second cancel is refused and changes nothing; the refund was published once.
        let (status, _) = world.client.cancel_order(&mia, &id).await.expect("cancel");
        assert_eq!(status, StatusCode::CONFLICT);
        wait_caught_up(stack).await;
        assert_eq!(refunds_published(stack, &id).await, 1);
        assert_eq!(world.level(product).await, (10, 0));
    });
}

#[test]
fn cancels_racing_the_approval_never_keep_a_charge_or_a_unit() {
    run(async {
        let stack = unshipped().await;
        let world = World::new(stack);
        let product = world.product(500, 10).await;
        // Ten orders, each cancelled a little later than the one before: some before the
        // reservation, some while the payment is being made, some after the sale.
        let mut orders = Vec::new();
        for delay_ms in (0..10).map(|i| i * 15) {
            let (_, token) = world.customer("nia");
            let id = world.place(&token, &[(product, 1)]).await;
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            let (status, order) = world
                .client
                .cancel_order(&token, &id)
                .await
                .expect("cancel");
            assert_eq!(status, StatusCode::OK, "{order}");
            orders.push(id);
        }
        world.stock_restored(product, 10).await;
        let mut outcomes = HashMap::new();
        for id in &orders {
            world
                .payment_settles(id, &["none", "DECLINED", "REFUNDED"])
                .await;
            *outcomes.entry(world.payment_status(id).await).or_insert(0) += 1;
            assert!(
                refunds_published(stack, id).await <= 1,
                "one refund at most"
            );
        }
        // (Which outcomes occur depends on timing; every one of them is consistent.)
        eprintln!("payments of cancelled orders: {outcomes:?}");
    });
}

#[test]
fn reservations_expiring_before_a_slow_approval_are_refunded_and_restocked() {
    run(async {
        let stack = quick_expiry().await;
        let world = World::new(stack);
        let product = world.product(700, 6).await;
        // A slow provider answers after the one-second reservation timeout: the expiry job
        // cancels each order while its charge is being made.
        let mut orders = Vec::new();
        for _ in 0..3 {
            let (_, token) = world.customer("slow-olga");
            let id = world.place(&token, &[(product, 2)]).await;
            orders.push((token, id));
        }
        // The approval comes two seconds after the expiry could cancel; on a machine so loaded
        // that the order service learns of the reservation late, it may come first. And the
        // payment service may learn of the cancellation before the reservation (they travel
        // on two topics): then it never charges. Either way the end is consistent: a cancelled
        // order keeps no money (refunded, or never charged) and gets every unit back, a
        // confirmed one keeps its charge and its units are sold.
        let mut confirmed = 0;
        for (token, id) in &orders {
            let order = world
                .client
                .wait_state(token, id, &["CANCELLED", "CONFIRMED"], FINAL)
                .await
                .expect("settled");
            if order["state"] == "CANCELLED" {
                assert_eq!(order["reason"], "payment timeout", "{order}");
            } else {
                confirmed += 1;
                world.payment_settles(id, &["APPROVED"]).await;
            }
        }
        eprintln!("expired before the slow approval: {} of 3", 3 - confirmed);
        world.stock_restored(product, 6 - 2 * confirmed).await;
        // Every consumer has applied everything, and the charger has settled every charge: the
        // payments are final.
        wait_caught_up(stack).await;
        for (token, id) in &orders {
            charges_done(stack, id).await;
            let cancelled =
                world.client.order(token, id).await.expect("order").1["state"] == "CANCELLED";
            let status = world.payment_status(id).await;
            let refunded = match (cancelled, status.as_deref()) {
                (true, Some("REFUNDED")) => true,
                // Abandoned before the charger asked the provider: never charged.
                (true, None | Some("DECLINED")) | (false, Some("APPROVED")) => false,
                other => panic!("{id}: order and payment disagree: {other:?}"),
            };
            assert_eq!(
                refunds_published(stack, id).await,
                usize::from(refunded),
                "{id}"
            );
        }
    });
}

#[test]
fn duplicated_events_of_a_cancelled_paid_order_change_nothing() {
    run(async {
        let stack = unshipped().await;
        let world = World::new(stack);
        let product = world.product(900, 5).await;
        let (_, pia) = world.customer("pia");
        let id = world.place(&pia, &[(product, 2)]).await;
        world
            .client
            .wait_state(&pia, &id, &["CONFIRMED"], FINAL)
            .await
            .expect("confirmed");
        world.client.cancel_order(&pia, &id).await.expect("cancel");
        world.stock_restored(product, 5).await;
        world.payment_settles(&id, &["REFUNDED"]).await;

        // Every event of the order and of the product once more, in the order first published.
        redeliver(stack, &[id.clone(), product.to_string()]).await;
        assert_eq!(world.level(product).await, (5, 0));
        world.served_stock_converges(product, 5).await;
        assert_eq!(world.payment_status(&id).await.as_deref(), Some("REFUNDED"));
        assert_eq!(
            world.client.order(&pia, &id).await.expect("order").1["state"],
            "CANCELLED"
        );
        assert_eq!(refunds_published(stack, &id).await, 1);
    });
}

#[test]
fn a_cancelled_paid_order_tells_its_customer_each_step_once() {
    run(async {
        let stack = unshipped().await;
        let world = World::new(stack);
        let product = world.product(450, 3).await;
        let (_, uma) = world.customer("uma");
        let id = world.place(&uma, &[(product, 1)]).await;
        world
            .client
            .wait_state(&uma, &id, &["CONFIRMED"], FINAL)
            .await
            .expect("confirmed");
        world.client.cancel_order(&uma, &id).await.expect("cancel");
        let steps = [
            "order_placed",
            "order_confirmed",
            "order_cancelled",
            "payment_refunded",
        ];
        world.notified_exactly(&uma, &id, &steps).await;
    });
}
