//! The order service's copy of the catalogue: what `ProductChanged` announcements leave in it,
//! and the internal route that answers it, against real PostgreSQL.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::Harness;
use serde_json::json;
use uuid::Uuid;

#[tokio::test]
async fn the_catalogue_keeps_the_newest_announcement_of_each_product() {
    let h = Harness::new().await;
    let product = h.products.add(100, true).await;
    // A newer version replaces the copy; an older or a repeated one does not.
    h.products.announce(product, 250, true, 3).await;
    h.products.announce(product, 999, true, 2).await;
    h.products.announce(product, 999, false, 3).await;
    let reply = h
        .place(
            "alice",
            "k1",
            &json!({"lines": [{"product_id": product, "quantity": 2}]}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    assert_eq!(reply.body["total_cents"], 500);
    // Withdrawn at version 4: no longer for sale.
    h.products.announce(product, 250, false, 4).await;
    let reply = h
        .place(
            "alice",
            "k2",
            &json!({"lines": [{"product_id": product, "quantity": 1}]}),
        )
        .await;
    reply.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn the_internal_catalogue_route_needs_the_service_key() {
    let h = Harness::new().await;
    let product = h.products.add(4200, true).await;
    let uri = format!("/internal/v1/catalogue/{product}");
    let internal = |key: Option<&str>| {
        let mut builder = Request::get(&uri);
        if let Some(key) = key {
            builder = builder.header("x-api-key", key);
        }
        builder.body(Body::empty()).expect("request")
    };
    for key in [None, Some("wrong"), Some("")] {
        h.send(internal(key))
            .await
            .assert_problem(StatusCode::UNAUTHORIZED);
    }
    let found = h.send(internal(Some(&h.config.api_key))).await;
    assert_eq!(found.status, StatusCode::OK);
    assert_eq!(
        found.body,
        json!({"product_id": product, "price_cents": 4200, "active": true, "version": 1})
    );
    let missing = format!("/internal/v1/catalogue/{}", Uuid::now_v7());
    let reply = h
        .send(
            Request::get(&missing)
                .header("x-api-key", &h.config.api_key)
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    reply.assert_problem(StatusCode::NOT_FOUND);
}
