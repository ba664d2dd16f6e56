//! The books, read from each service's own database once the stack has settled: every order
//! final, one charge per paid order and none kept for an unpaid one, stock arithmetic exact in
//! inventory and in the product service's copies, one notification per event and per step, one
//! order per idempotency key, nothing dead-lettered.

use std::collections::{BTreeMap, HashMap, HashSet};

use commerce_launcher::Service;
use commerce_launcher::client::Client;
use uuid::Uuid;

use super::cluster::Cluster;
use super::load::{Catalogue, Ledger};
use super::settle::{FINAL, messages_on};

/// An order as the order service stored it.
struct Order {
    customer: String,
    state: String,
    reason: Option<String>,
    total_cents: i64,
    lines: Vec<(Uuid, i32)>,
}

impl Order {
    /// Whether its units are sold and its charge kept.
    fn sold(&self) -> bool {
        self.state == "SHIPPED" || self.state == "COMPLETED"
    }
}

/// Final states and how many orders ended in each.
pub(crate) type Outcomes = BTreeMap<String, usize>;

/// Everything wrong with the books, each as one line.
#[derive(Default)]
struct Findings(Vec<String>);

impl Findings {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }
}

async fn orders(cluster: &Cluster) -> HashMap<Uuid, Order> {
    let db = cluster.db(Service::Order);
    let rows: Vec<(Uuid, String, String, Option<String>, i64)> =
        sqlx::query_as("SELECT id, customer_id, state, reason, total_cents FROM orders_all")
            .fetch_all(db)
            .await
            .expect("orders");
    let mut orders: HashMap<Uuid, Order> = rows
        .into_iter()
        .map(|(id, customer, state, reason, total_cents)| {
            let order = Order {
                customer,
                state,
                reason,
                total_cents,
                lines: Vec::new(),
            };
            (id, order)
        })
        .collect();
    let lines: Vec<(Uuid, Uuid, i32)> =
        sqlx::query_as("SELECT order_id, product_id, quantity FROM order_lines_all")
            .fetch_all(db)
            .await
            .expect("order lines");
    for (order, product, quantity) in lines {
        if let Some(order) = orders.get_mut(&order) {
            order.lines.push((product, quantity));
        }
    }
    orders
}

/// Checks the books of a settled stack against what the clients did; panics listing every
/// finding. Returns how many orders ended in each state.
pub(crate) async fn check(cluster: &Cluster, catalogue: &Catalogue, ledger: &Ledger) -> Outcomes {
    let orders = orders(cluster).await;
    let mut findings = Findings::default();
    idempotency(cluster, &orders, ledger, &mut findings).await;
    payments(cluster, &orders, &mut findings).await;
    let handed = shipments(cluster, &orders, &mut findings).await;
    stock(cluster, &orders, catalogue, &mut findings).await;
    notifications(cluster, &orders, &handed, &mut findings).await;
    dead_letters(cluster, &mut findings).await;
    assert!(
        findings.0.is_empty(),
        "the books of {} are wrong ({} findings):\n{}",
        cluster.prefix,
        findings.0.len(),
        findings
            .0
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    let mut outcomes = Outcomes::new();
    for order in orders.values() {
        *outcomes.entry(order.state.clone()).or_default() += 1;
    }
    outcomes
}

/// One order per key: the orders stored are exactly those the clients were given, once each,
/// and every key's response is stored.
async fn idempotency(
    cluster: &Cluster,
    orders: &HashMap<Uuid, Order>,
    ledger: &Ledger,
    findings: &mut Findings,
) {
    let given: HashSet<Uuid> = ledger.orders.iter().map(|p| p.id).collect();
    findings.check(given.len() == ledger.orders.len(), || {
        format!(
            "{} keys were answered with only {} order ids",
            ledger.orders.len(),
            given.len()
        )
    });
    for id in orders.keys().filter(|id| !given.contains(id)) {
        findings.check(false, || format!("order {id} exists but no client key was answered with it: placed twice for one key?"));
    }
    for placed in &ledger.orders {
        let Some(order) = orders.get(&placed.id) else {
            findings.check(false, || {
                format!(
                    "key {} was answered with order {}, which does not exist",
                    placed.key, placed.id
                )
            });
            continue;
        };
        findings.check(order.customer == placed.customer, || {
            format!(
                "order {} belongs to {}, not {}",
                placed.id, order.customer, placed.customer
            )
        });
        findings.check(FINAL.contains(&order.state.as_str()), || {
            format!("order {} is {}, not final", placed.id, order.state)
        });
        if placed.cancelled == Some(true) {
            findings.check(
                order.state == "CANCELLED"
                    && order.reason.as_deref() == Some("cancelled by customer"),
                || {
                    format!(
                        "order {} was cancelled by its customer but is {} ({:?})",
                        placed.id, order.state, order.reason
                    )
                },
            );
        }
        if placed.customer.starts_with("decline") {
            findings.check(!order.sold(), || {
                format!("order {} of a declined card is {}", placed.id, order.state)
            });
        }
    }
    let (keys, stored): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE completed_at IS NOT NULL AND status = 201)
         FROM idempotency_keys",
    )
    .fetch_one(cluster.db(Service::Order))
    .await
    .expect("idempotency keys");
    findings.check(keys == ledger.orders.len() as i64 && stored == keys, || {
        format!(
            "{keys} idempotency keys ({stored} with a stored 201) for {} orders placed",
            ledger.orders.len()
        )
    });
}

/// One charge per sold order, of its total; none kept for an order that is not sold.
async fn payments(cluster: &Cluster, orders: &HashMap<Uuid, Order>, findings: &mut Findings) {
    let rows: Vec<(Uuid, String, i64)> =
        sqlx::query_as("SELECT order_id, status, amount_cents FROM payments")
            .fetch_all(cluster.db(Service::Payment))
            .await
            .expect("payments");
    let payments: HashMap<Uuid, (String, i64)> = rows
        .into_iter()
        .map(|(id, status, amount)| (id, (status, amount)))
        .collect();
    for id in payments.keys().filter(|id| !orders.contains_key(id)) {
        findings.check(false, || {
            format!("payment for order {id}, which does not exist")
        });
    }
    for (id, order) in orders {
        let payment = payments
            .get(id)
            .map(|(status, amount)| (status.as_str(), *amount));
        let ok = match (order.state.as_str(), payment) {
            (_, Some(("APPROVED", amount))) => order.sold() && amount == order.total_cents,
            (_, _) if order.sold() => false,
            ("CANCELLED", None | Some(("DECLINED", _))) => true,
            ("CANCELLED", Some(("REFUNDED", amount))) => amount == order.total_cents,
            ("FAILED", None) => true,
            _ => false,
        };
        findings.check(ok, || {
            format!(
                "order {id} is {} with payment {payment:?} (total {})",
                order.state, order.total_cents
            )
        });
    }
}

/// One shipment per sold order; none handed over for another. Returns the orders whose parcel
/// was handed to the carrier (a shipment with a tracking number, possibly cancelled later).
async fn shipments(
    cluster: &Cluster,
    orders: &HashMap<Uuid, Order>,
    findings: &mut Findings,
) -> HashSet<Uuid> {
    let rows: Vec<(Uuid, String, bool)> =
        sqlx::query_as("SELECT order_id, state, tracking_number IS NOT NULL FROM shipments")
            .fetch_all(cluster.db(Service::Shipping))
            .await
            .expect("shipments");
    let mut handed = HashSet::new();
    let shipments: HashMap<Uuid, String> = rows
        .into_iter()
        .map(|(id, state, tracked)| {
            if tracked {
                handed.insert(id);
            }
            (id, state)
        })
        .collect();
    for (id, order) in orders {
        let shipment = shipments.get(id).map(String::as_str);
        let ok = match shipment {
            Some("CREATED") => order.state == "SHIPPED",
            Some("DELIVERED") => order.state == "COMPLETED",
            Some("CANCELLED") | None => {
                order.state == "CANCELLED" || (order.state == "FAILED" && shipment.is_none())
            }
            Some(_) => false,
        };
        findings.check(ok, || {
            format!("order {id} is {} with shipment {shipment:?}", order.state)
        });
    }
    for id in shipments.keys().filter(|id| !orders.contains_key(id)) {
        findings.check(false, || {
            format!("shipment for order {id}, which does not exist")
        });
    }
    handed
}

/// Inventory's figures agree with its movements, its reservations and the orders sold; the
/// product service's stored and cached figures equal inventory's.
async fn stock(
    cluster: &Cluster,
    orders: &HashMap<Uuid, Order>,
    catalogue: &Catalogue,
    findings: &mut Findings,
) {
    let db = cluster.db(Service::Inventory);
    let reservations: Vec<(Uuid, Uuid, i32, String)> =
        sqlx::query_as("SELECT order_id, product_id, quantity, state FROM reservations")
            .fetch_all(db)
            .await
            .expect("reservations");
    let mut held: HashMap<Uuid, Vec<(Uuid, i32, String)>> = HashMap::new();
    for (order, product, quantity, state) in reservations {
        held.entry(order)
            .or_default()
            .push((product, quantity, state));
    }
    let movements: Vec<(Uuid, Option<Uuid>, String, i64, i64)> = sqlx::query_as(
        "SELECT product_id, order_id, kind, sum(delta_total), sum(delta_reserved)
         FROM movements GROUP BY product_id, order_id, kind",
    )
    .fetch_all(db)
    .await
    .expect("movements");
    // Net movement per (order, product), per product, and added per product.
    let mut net: HashMap<(Option<Uuid>, Uuid), (i64, i64)> = HashMap::new();
    let mut per_product: HashMap<Uuid, (i64, i64)> = HashMap::new();
    let mut added: HashMap<Uuid, i64> = HashMap::new();
    for (product, order, kind, total, reserved) in movements {
        for entry in [
            net.entry((order, product)).or_default(),
            per_product.entry(product).or_default(),
        ] {
            entry.0 += total;
            entry.1 += reserved;
        }
        if kind == "add" {
            *added.entry(product).or_default() += total;
        }
    }
    for (id, order) in orders {
        let mut rows = held.remove(id).unwrap_or_default();
        rows.sort();
        let mut lines = order.lines.clone();
        lines.sort();
        let states: HashSet<&str> = rows.iter().map(|(_, _, s)| s.as_str()).collect();
        let same_lines = rows
            .iter()
            .map(|(p, q, _)| (*p, *q))
            .eq(lines.iter().copied());
        let ok = match order.state.as_str() {
            _ if order.sold() => same_lines && states == HashSet::from(["CONFIRMED"]),
            "CANCELLED" => {
                rows.is_empty()
                    || (same_lines && states.iter().all(|s| ["RELEASED", "RESTOCKED"].contains(s)))
            }
            _ => rows.is_empty(),
        };
        findings.check(ok, || {
            format!("order {id} is {} with reservations {rows:?}", order.state)
        });
        for &(product, quantity) in &order.lines {
            let moved = net.remove(&(Some(*id), product)).unwrap_or_default();
            let expected = (
                if order.sold() {
                    -i64::from(quantity)
                } else {
                    0
                },
                0,
            );
            findings.check(moved == expected, || {
                format!(
                    "order {id} ({}) moved {moved:?} of {product}, not {expected:?}",
                    order.state
                )
            });
        }
    }
    for (order, rows) in held {
        findings.check(false, || {
            format!("reservations {rows:?} of order {order}, which does not exist")
        });
    }
    let client = Client::new(&cluster.config);
    let product_db = cluster.db(Service::Product);
    for (product, seeded) in catalogue.products() {
        let sold: i64 = orders
            .values()
            .filter(|o| o.sold())
            .flat_map(|o| o.lines.iter())
            .filter(|(p, _)| *p == product)
            .map(|(_, q)| i64::from(*q))
            .sum();
        let (total, reserved, version): (i32, i32, i64) =
            sqlx::query_as("SELECT total, reserved, version FROM stock WHERE product_id = $1")
                .bind(product)
                .fetch_one(db)
                .await
                .expect("a stock row");
        let figures = (i64::from(total), i64::from(reserved));
        findings.check(figures == (i64::from(seeded) - sold, 0), || {
            format!("{product}: total {total}, reserved {reserved}; seeded {seeded}, sold {sold}")
        });
        let moved = per_product.get(&product).copied().unwrap_or_default();
        findings.check(moved == figures, || {
            format!("{product}: movements add up to {moved:?}, stock is {figures:?}")
        });
        findings.check(added.get(&product) == Some(&i64::from(seeded)), || {
            format!(
                "{product}: added {:?}, seeded {seeded}",
                added.get(&product)
            )
        });
        let stored: Option<(i32, i32, i32, i64)> = sqlx::query_as(
            "SELECT total, reserved, available, version FROM stock_levels WHERE product_id = $1",
        )
        .bind(product)
        .fetch_optional(product_db)
        .await
        .expect("stock levels");
        let truth = (total, reserved, total - reserved, version);
        findings.check(stored == Some(truth), || {
            format!("{product}: product service stores {stored:?}, inventory has {truth:?}")
        });
        let (_, served) = client.product(product).await.expect("the product API");
        findings.check(served["available"] == i64::from(total - reserved), || {
            format!(
                "{product}: the product API serves {} available, inventory has {}",
                served["available"],
                total - reserved
            )
        });
    }
}

/// One notification per event, and per (order, kind); each step of each order told once.
async fn notifications(
    cluster: &Cluster,
    orders: &HashMap<Uuid, Order>,
    handed: &HashSet<Uuid>,
    findings: &mut Findings,
) {
    let rows: Vec<(Uuid, String, Uuid, String)> =
        sqlx::query_as("SELECT event_id, customer_id, order_id, kind FROM notifications")
            .fetch_all(cluster.db(Service::Notification))
            .await
            .expect("notifications");
    let events: HashSet<Uuid> = rows.iter().map(|(event, ..)| *event).collect();
    findings.check(events.len() == rows.len(), || {
        format!("{} notifications from {} events", rows.len(), events.len())
    });
    let refunded: HashSet<Uuid> =
        sqlx::query_scalar("SELECT order_id FROM payments WHERE status = 'REFUNDED'")
            .fetch_all(cluster.db(Service::Payment))
            .await
            .expect("refunds")
            .into_iter()
            .collect();
    let mut told: HashMap<Uuid, Vec<String>> = HashMap::new();
    for (_, customer, order, kind) in rows {
        let owner = orders.get(&order).map(|o| o.customer.as_str());
        findings.check(owner == Some(customer.as_str()), || {
            format!("{kind} of order {order} told {customer}, the order's customer is {owner:?}")
        });
        told.entry(order).or_default().push(kind);
    }
    for (id, order) in orders {
        let mut kinds = told.remove(id).unwrap_or_default();
        kinds.sort();
        let mut expected = vec!["order_placed"];
        match order.state.as_str() {
            "SHIPPED" | "COMPLETED" => expected.extend(["order_confirmed", "order_shipped"]),
            "CANCELLED" => {
                expected.push("order_cancelled");
                if kinds.iter().any(|k| k == "order_confirmed") {
                    expected.push("order_confirmed");
                }
                if handed.contains(id) {
                    expected.push("order_shipped");
                }
                if refunded.contains(id) {
                    expected.push("payment_refunded");
                }
            }
            _ => {}
        }
        if order.state == "COMPLETED" {
            expected.push("order_delivered");
        }
        expected.sort_unstable();
        findings.check(kinds == expected, || {
            format!(
                "order {id} ({}) told {kinds:?}, expected {expected:?}",
                order.state
            )
        });
    }
}

/// Nothing dead-lettered: no relay buried an event, no consumer gave up on a message.
async fn dead_letters(cluster: &Cluster, findings: &mut Findings) {
    for service in Service::ALL {
        let buried: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_dead_letters")
            .fetch_one(cluster.db(service))
            .await
            .expect("dead letters");
        findings.check(buried == 0, || {
            format!(
                "{}: {buried} events dead-lettered by its relay",
                service.name()
            )
        });
    }
    let topic = cluster.config.topics.dead_letters.clone();
    let config = cluster.config.clone();
    let dead = tokio::task::spawn_blocking(move || messages_on(&config, &topic))
        .await
        .expect("watermarks");
    findings.check(dead == 0, || {
        format!("{dead} messages dead-lettered by consumers")
    });
}
