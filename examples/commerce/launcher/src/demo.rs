//! The scripted scenario `scripts/demo` runs: an admin creates products and stock, customers place
//! orders (one retried with the same key), one payment is declined, one order asks for more than
//! is in stock; then it prints every order's final state and the stock the product service serves.

use anyhow::Context;
use std::time::Duration;

use commerce_platform::Config;
use uuid::Uuid;

use crate::Stack;
use crate::client::Client;

/// Starts a stack, runs the scenario, prints the outcome, and stops the stack.
///
/// # Errors
///
/// When the stack does not start or a step fails.
pub async fn run(config: &Config) -> anyhow::Result<()> {
    let stack = Stack::start(config).await?;
    let outcome = scenario(&Client::new(&stack.config)).await;
    stack.shutdown().await;
    let (orders, stock) = outcome?;
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
    println!(
        "\nTo keep the stack running: `eval \"$(scripts/services up)\"; cargo run -p commerce-launcher --release -- all`\n\
         then, for example:\n  curl -s http://{}/api/v1/products | jq\n  curl -s http://{}/health\n\
         Tokens are HS256 JWTs signed with JWT_SECRET (claims: sub, roles, exp); see docs/commerce.md.",
        config.addrs.product, config.addrs.order
    );
    Ok(())
}

type Lines = Vec<(Uuid, i32)>;
type Outcome = (
    Vec<(String, serde_json::Value)>,
    Vec<(String, serde_json::Value)>,
);

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
    let plan: [(&str, Lines, &str); 4] = [
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
        orders.push((customer.to_owned(), token, id));
    }
    let mut finals = Vec::new();
    for (customer, token, id) in orders {
        finals.push((
            customer,
            client
                .wait_final(&token, &id, Duration::from_secs(30))
                .await?,
        ));
    }
    // The product service's figure follows inventory's events; wait until both agree.
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
    Ok((finals, stock))
}
