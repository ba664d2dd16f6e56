//! Security and bad input.

use super::*;

#[test]
fn security_rejects_bad_tokens_wrong_roles_bad_keys_and_other_peoples_orders() {
    run(async {
        let stack = stack().await;
        let world = World::new(stack);
        let c = &world.client;
        let product = world.product(100, 1).await;
        let (_, frank) = world.customer("frank");
        let id = world.place(&frank, &[(product, 1)]).await;
        let path = format!("/api/v1/orders/{id}");

        let expired = Config {
            jwt_secret: stack.config.jwt_secret.clone(),
            ..stack.config.clone()
        }
        .authenticator()
        .issue(&commerce_platform::Claims {
            sub: "frank".into(),
            roles: vec![],
            exp: 1_000,
        });
        let forged = Client::new(&Config {
            jwt_secret: "not-the-secret".into(),
            ..stack.config.clone()
        })
        .token("frank", &["admin"]);
        let payload = frank.split('.').nth(1).expect("payload");
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
        for (what, token) in [
            ("missing", None),
            ("expired", Some(expired.as_str())),
            ("wrong signature", Some(forged.as_str())),
            ("alg none", Some(none.as_str())),
        ] {
            let (status, body) = c
                .send(c.request(Method::GET, "order", &path, token))
                .await
                .expect("reply");
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
            assert_eq!(body["status"], 401);
            // RFC 9457's `instance`: which request this answers, and when.
            assert_eq!(body["instance"], path.as_str(), "{body}");
            assert!(body["timestamp"].is_string(), "{body}");
        }
        let body = json!({"sku": "X", "name": "x", "description": "x", "price_cents": 1});
        let (status, _) = c
            .send(
                c.request(Method::POST, "product", "/api/v1/products", Some(&frank))
                    .json(&body),
            )
            .await
            .expect("reply");
        assert_eq!(status, StatusCode::FORBIDDEN, "customer on an admin route");
        let internal = format!("/internal/v1/catalogue/{product}");
        let (status, _) = c
            .send(c.request(Method::GET, "order", &internal, None))
            .await
            .expect("reply");
        assert_eq!(status, StatusCode::UNAUTHORIZED, "missing api key");
        let (status, _) = c
            .send(
                c.request(Method::GET, "order", &internal, None)
                    .header("x-api-key", "wrong"),
            )
            .await
            .expect("reply");
        assert_eq!(status, StatusCode::UNAUTHORIZED, "wrong api key");
        let (status, _) = c
            .send(
                c.request(Method::GET, "order", &internal, None)
                    .header("x-api-key", &stack.config.api_key),
            )
            .await
            .expect("reply");
        assert_eq!(status, StatusCode::OK, "right api key");
        let (_, grace) = world.customer("grace");
        let (status, _) = c
            .send(c.request(Method::GET, "order", &path, Some(&grace)))
            .await
            .expect("reply");
        assert_eq!(status, StatusCode::NOT_FOUND, "another user's order");
    });
}

#[test]
fn bad_input_gets_problem_json_and_writes_nothing() {
    run(async {
        let world = World::new(stack().await);
        let c = &world.client;
        let product = world.product(100, 5).await;
        let (_, henry) = world.customer("henry");
        // `Connection: close`: a server that refuses a body without reading it all closes the
        // connection after its reply, and a pooled connection reused by the next request would
        // then fail on the client's side before reaching the server.
        let post = |body: String| {
            c.request(Method::POST, "order", "/api/v1/orders", Some(&henry))
                .header("Idempotency-Key", Uuid::new_v4().to_string())
                .header("content-type", "application/json")
                .header("connection", "close")
                .body(body)
        };
        let cases = [
            ("malformed json", "{\"lines\": [".to_owned()),
            (
                "unknown field",
                json!({"lines": [{"product_id": product, "quantity": 1}], "discount": 99})
                    .to_string(),
            ),
            (
                "zero quantity",
                json!({"lines": [{"product_id": product, "quantity": 0}]}).to_string(),
            ),
            (
                "negative quantity",
                json!({"lines": [{"product_id": product, "quantity": -1}]}).to_string(),
            ),
            (
                "unknown product",
                json!({"lines": [{"product_id": Uuid::new_v4(), "quantity": 1}]}).to_string(),
            ),
            // Over the order service's body limit, small enough to be sent whole before the reply.
            (
                "huge body",
                format!("{{\"lines\": [], \"pad\": \"{}\"}}", "x".repeat(128 * 1024)),
            ),
        ];
        for (what, body) in cases {
            let response = post(body).send().await.expect("reply");
            let status = response.status();
            let content_type = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            assert!(status.is_client_error(), "{what}: {status}");
            assert_eq!(content_type, "application/problem+json", "{what}");
        }
        let (status, orders) = c
            .send(c.request(Method::GET, "order", "/api/v1/orders", Some(&henry)))
            .await
            .expect("list");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            orders.as_array().map(Vec::len),
            Some(0),
            "nothing written: {orders}"
        );
        assert_eq!(world.stock(product).await["reserved"], 0);
    });
}

#[test]
fn a_stock_add_sent_ten_times_at_once_with_one_key_adds_once() {
    run(async {
        let stack = stack().await;
        let world = World::new(stack);
        let product = world.product(100, 0).await;
        let c = &world.client;
        let path = format!("/api/v1/stock/{product}/add");
        let add = |quantity: i32| {
            c.request(Method::POST, "inventory", &path, Some(&world.admin))
                .header("Idempotency-Key", "restock-2026-12-03")
                .json(&json!({ "quantity": quantity }))
        };
        let replies = futures::future::join_all(
            (0..10).map(|_| async { c.send(add(7)).await.expect("add") }),
        )
        .await;
        let ok: Vec<&Value> = replies
            .iter()
            .filter(|(status, _)| *status == StatusCode::OK)
            .map(|(_, body)| body)
            .collect();
        assert!(!ok.is_empty(), "{replies:?}");
        for (status, body) in &replies {
            // A duplicate that arrives while the first is in flight is told to retry (409).
            assert!(
                *status == StatusCode::OK || *status == StatusCode::CONFLICT,
                "{status}: {body}"
            );
        }
        assert!(ok.iter().all(|body| body["total"] == 7), "{ok:?}");
        // A retry after the fact replays the answer; the stock was added once.
        let (status, body) = c.send(add(7)).await.expect("retry");
        assert_eq!((status, &body["total"]), (StatusCode::OK, &json!(7)));
        assert_eq!(world.stock(product).await["total"], 7);
        // The same key for another request is refused.
        let (status, problem) = c.send(add(8)).await.expect("other body");
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
        assert_eq!(world.stock(product).await["total"], 7);
        world.served_stock_converges(product, 7).await;
    });
}

#[test]
fn over_a_rate_limit_the_answer_is_429_with_retry_after() {
    run(async {
        let mut config = small(config().await);
        config.rate_limits = RateLimits {
            per_address: Some(Rate {
                per_second: 1,
                burst: 8,
            }),
            per_user: Some(Rate {
                per_second: 1,
                burst: 2,
            }),
        };
        let stack = Stack::start_only(&config, &[Service::Order])
            .await
            .expect("the order service starts");
        let c = Client::new(&stack.config);
        let (alice, bob) = (c.token("alice", &[]), c.token("bob", &[]));
        let post = |token: &str| {
            c.request(Method::POST, "order", "/api/v1/orders", Some(token))
                .header("Idempotency-Key", Uuid::new_v4().to_string())
                .json(&json!({"lines": []}))
        };
        // Per user, on writes: two at once, then one a second.
        let mut answers = Vec::new();
        for _ in 0..6 {
            let reply = post(&alice).send().await.expect("reply");
            let retry_after = reply.headers().get("retry-after").cloned();
            let status = reply.status();
            let body: Value = reply.json().await.expect("problem+json");
            answers.push((status, retry_after, body));
        }
        assert!(
            answers[..2]
                .iter()
                .all(|(status, ..)| *status == StatusCode::BAD_REQUEST),
            "{answers:?}"
        );
        let (_, retry_after, problem) = answers
            .iter()
            .find(|(status, ..)| *status == StatusCode::TOO_MANY_REQUESTS)
            .expect("alice's writes are limited");
        assert_eq!(problem["code"], "too-many-requests", "{problem}");
        assert_eq!(problem["instance"], "/api/v1/orders", "{problem}");
        let retry_after: u64 = retry_after
            .as_ref()
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse().ok())
            .expect("Retry-After in seconds");
        assert!(retry_after >= 1);
        // Another user's writes have a bucket of their own.
        let (status, _) = c.send(post(&bob)).await.expect("reply");
        assert_eq!(status, StatusCode::BAD_REQUEST);

        // Per address, on every request: reads too, whoever sends them.
        let mut refused = false;
        for _ in 0..20 {
            let (status, _) = c
                .send(c.request(Method::GET, "order", "/api/v1/orders", Some(&bob)))
                .await
                .expect("reply");
            refused |= status == StatusCode::TOO_MANY_REQUESTS;
        }
        assert!(refused, "the address's requests are limited");
        // The operations routes are not.
        let (status, _) = c
            .send(c.request(Method::GET, "order", "/health", None))
            .await
            .expect("reply");
        assert_eq!(status, StatusCode::OK);
        stack.discard().await.expect("databases dropped");
    });
}
