//! The scripted scenario `scripts/demo` runs: an admin creates products and stock, customers place
//! orders (one retried with the same key), one payment is declined, one order asks for more than
//! is in stock, one customer cancels; paid orders ship, one is delivered, and a shipped order
//! refuses its cancellation. Then it prints every order's state, the stock the product service
//! serves and each customer's notifications.

use anyhow::Context;
use std::time::Duration;

use commerce_platform::Config;
use serde_json::Value;
use uuid::Uuid;

use crate::Stack;
use crate::client::Client;

const WAIT: Duration = Duration::from_secs(30);

/// Starts a stack, runs the scenario, prints the outcome, and stops the stack.
///
/// # Errors
///
/// When the stack does not start or a step fails.
pub async fn run(config: &Config) -> anyhow::Result<()> {
    if config.dev_mode {
        println!(
            "development mode is on: the services run with public development secrets where none are set"
        );
    }
    let stack = Stack::start(config).await?;
    let outcome = scenario(&Client::new(&stack.config)).await;
    stack.shutdown().await;
    let Outcome {
        orders,
        stock,
        notifications,
    } = outcome?;
    println!(
        "\n{:<38} {:<16} {:<10} reason",
        "order", "customer", "state"
    );
    for (customer, order) in &orders {
        println!(
            "{:<38} {:<16} {:<10} {}",
            order["id"].as_str().unwrap_or("?"),
            customer,
            order["state"].as_str().unwrap_or("?"),
            order["reason"].as_str().unwrap_or("")
        );
    }
    println!("\n{:<20} {:>12}", "product", "available");
    for (name, available) in &stock {
        println!("{name:<20} {available:>12}");
    }
    println!("\nnotifications");
    for (customer, list) in &notifications {
        for notification in list {
            println!(
                "  {customer:<16} {:<18} {}",
                notification["kind"].as_str().unwrap_or("?"),
                notification["message"].as_str().unwrap_or("")
            );
        }
    }
    println!(
        "\nTo keep the stack running: `eval \"$(scripts/services up)\"; cargo run -p commerce-launcher --release -- all`\n\
         then, for example:\n  curl -s http://{product}/api/v1/products | jq\n  curl -s http://{order}/health\n\
         Admin routes need a token: in the same shell,\n  \
         TOKEN=$(cargo run -q -p commerce-launcher --release -- token admin --role admin)\n  \
         curl -s -H \"Authorization: Bearer $TOKEN\" http://{product}/api/v1/admin/products | jq\n\
         Tokens are HS256 JWTs signed with JWT_SECRET (claims: sub, roles, exp); see docs/commerce.md.",
        product = config.addrs.product,
        order = config.addrs.order
    );
    Ok(())
}

type Lines = Vec<(Uuid, i32)>;
/// What the demo prints.
struct Outcome {
    orders: Vec<(String, Value)>,
    stock: Vec<(String, Value)>,
    notifications: Vec<(String, Vec<Value>)>,
}

async fn scenario(client: &Client) -> anyhow::Result<Outcome> {
    let admin = client.token("admin", &["admin"]);
    let run = Uuid::now_v7().simple().to_string();
    let beans = client
        .create_product(&admin, &format!("BEANS-{run}"), "Espresso beans", 1290)
        .await?;
    let grinder = client
        .create_product(&admin, &format!("GRINDER-{run}"), "Burr grinder", 8900)
        .await?;
    client.add_stock(&admin, beans, 50).await?;
    client.add_stock(&admin, grinder, 2).await?;
    println!("admin created 2 products: 50 bags of espresso beans, 2 grinders");

    let mut orders = Vec::new();
    let plan: [(&str, Lines, &str); 5] = [
        (
            "alice",
            vec![(beans, 2), (grinder, 1)],
            "alice places an order (and retries it with the same key)",
        ),
        (
            "decline-bob",
            vec![(beans, 1)],
            "bob's card will be declined",
        ),
        (
            "carol",
            vec![(grinder, 5)],
            "carol asks for 5 grinders; there are 2",
        ),
        ("dave", vec![(beans, 3)], "dave places an order"),
        (
            "erin",
            vec![(beans, 4)],
            "erin places an order and cancels it at once",
        ),
    ];
    for (customer, lines, what) in plan {
        let token = client.token(customer, &["customer"]);
        let key = format!("demo-{run}-{customer}");
        let (status, order) = client.place_order(&token, &key, &lines).await?;
        if customer == "alice" {
            let (again, replay) = client.place_order(&token, &key, &lines).await?;
            println!(
                "{what}: {status} then {again}, same order: {}",
                replay["id"] == order["id"]
            );
        } else {
            println!("{what}: {status}");
        }
        let id = order["id"]
            .as_str()
            .with_context(|| format!("no order id in {order}"))?
            .to_owned();
        if customer == "erin" {
            let (status, cancelled) = client.cancel_order(&token, &id).await?;
            println!(
                "  erin cancels: {status}, {} (every unit goes back; a charge is refunded)",
                cancelled["state"].as_str().unwrap_or("?")
            );
        }
        orders.push((customer.to_owned(), token, id));
    }
    let mut finals = Vec::new();
    for (customer, token, id) in &orders {
        let order = client.wait_settled(token, id, WAIT).await?;
        finals.push((customer.clone(), token.clone(), order));
    }
    for (customer, token, order) in &mut finals {
        let id = order["id"].as_str().unwrap_or_default().to_owned();
        match customer.as_str() {
            "alice" => {
                let (status, _) = client.deliver(&admin, &id).await?;
                *order = client.wait_state(token, &id, &["COMPLETED"], WAIT).await?;
                println!("admin marks alice's shipment delivered: {status}, order COMPLETED");
            }
            "dave" => {
                let (status, problem) = client.cancel_order(token, &id).await?;
                println!(
                    "dave tries to cancel his shipped order: {status} ({})",
                    problem["detail"].as_str().unwrap_or("")
                );
            }
            _ => {}
        }
    }
    // The product service's figure follows inventory's events; wait until both agree (erin's
    // four bags are back).
    let expected = [(beans, 50 - 2 - 3), (grinder, 2 - 1)];
    let mut stock = Vec::new();
    for (product, want) in expected {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (_, body) = client.product(product).await?;
            if body["available"] == want || tokio::time::Instant::now() >= deadline {
                stock.push((
                    body["name"].as_str().unwrap_or("?").to_owned(),
                    body["available"].clone(),
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Notifications arrive through their own consumer: wait for alice's delivery notice. (A
    // customer of an earlier run of the demo has older ones too: show this run's.)
    let mut notifications = Vec::new();
    for (customer, token, order) in &finals {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let list = loop {
            let (_, body) = client.notifications(token).await?;
            let list: Vec<Value> = body["notifications"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|n| n["order_id"] == order["id"])
                .cloned()
                .collect();
            let settled =
                customer != "alice" || list.iter().any(|n| n["kind"] == "order_delivered");
            if settled || tokio::time::Instant::now() >= deadline {
                break list;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        notifications.push((customer.clone(), list));
    }
    Ok(Outcome {
        orders: finals
            .into_iter()
            .map(|(customer, _, order)| (customer, order))
            .collect(),
        stock,
        notifications,
    })
}
