//! The product API through `app(state).oneshot(..)`, against a real database and Redis.

mod common;

use axum::http::StatusCode;
use commerce_events::Event;
use commerce_product::publish_snapshot;
use common::{assert_problem, fixture, get, level, post, put, token};
use serde_json::json;
use uuid::Uuid;

#[tokio::test]
async fn admins_create_change_and_list_products() {
    let f = fixture().await;
    let admin = token("admin");

    let created = f
        .send(post(
            "/api/v1/products",
            Some(&admin),
            &json!({ "sku": "MUG-1", "name": " Mug ", "description": "A mug.", "price_cents": 1200 })
                .to_string(),
        ))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.json);
    let mug: Uuid = created.json["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .expect("an id");
    assert_eq!(
        created.location.as_deref(),
        Some(format!("/api/v1/products/{mug}").as_str())
    );
    assert_eq!(created.json["sku"], "MUG-1");
    assert_eq!(created.json["name"], "Mug", "trimmed");
    assert_eq!(created.json["price_cents"], 1200);
    assert_eq!(created.json["active"], true);
    assert_eq!(created.json["available"], serde_json::Value::Null);

    // Anyone reads it at its Location.
    let read = f.send(get(&format!("/api/v1/products/{mug}"), None)).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(
        read.json,
        json!({
            "id": mug.to_string(), "sku": "MUG-1", "name": "Mug", "description": "A mug.",
            "price_cents": 1200, "available": null
        })
    );

    let changed = f
        .send(put(
            &format!("/api/v1/products/{mug}"),
            Some(&admin),
            &json!({ "name": "Big mug", "price_cents": 1500 }).to_string(),
        ))
        .await;
    assert_eq!(changed.status, StatusCode::OK, "{:?}", changed.json);
    assert_eq!(changed.json["name"], "Big mug");
    assert_eq!(changed.json["price_cents"], 1500);
    assert_eq!(changed.json["description"], "A mug.", "untouched");

    // A withdrawn product disappears from the public catalogue, not from the admin's.
    let tea = f.create("TEA-1", 300).await;
    let withdrawn = f
        .send(put(
            &format!("/api/v1/products/{tea}"),
            Some(&admin),
            r#"{"active": false}"#,
        ))
        .await;
    assert_eq!(withdrawn.json["active"], false);
    let public = f.send(get("/api/v1/products", None)).await;
    assert_eq!(public.status, StatusCode::OK);
    let skus = |json: &serde_json::Value| -> Vec<String> {
        json.as_array()
            .expect("an array")
            .iter()
            .map(|p| p["sku"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(skus(&public.json), ["MUG-1"]);
    assert_problem(
        &f.send(get(&format!("/api/v1/products/{tea}"), None)).await,
        StatusCode::NOT_FOUND,
        "not-found",
    );
    let all = f.send(get("/api/v1/admin/products", Some(&admin))).await;
    assert_eq!(all.status, StatusCode::OK);
    assert_eq!(skus(&all.json), ["MUG-1", "TEA-1"]);
    let paged = f
        .send(get("/api/v1/admin/products?limit=1&offset=1", Some(&admin)))
        .await;
    assert_eq!(skus(&paged.json), ["TEA-1"]);

    assert_problem(
        &f.send(put(
            &format!("/api/v1/products/{}", Uuid::now_v7()),
            Some(&admin),
            r#"{"active": true}"#,
        ))
        .await,
        StatusCode::NOT_FOUND,
        "not-found",
    );
    f.cleanup().await;
}

#[tokio::test]
async fn bad_input_is_refused_and_writes_nothing() {
    let f = fixture().await;
    let admin = token("admin");
    for body in [
        json!({ "sku": "A", "name": "A", "price_cents": 100, "admin": true }).to_string(),
        json!({ "sku": "A", "name": "A", "price_cents": -100 }).to_string(),
        json!({ "sku": "A", "name": "A", "price_cents": 0 }).to_string(),
        json!({ "sku": "A", "name": "A", "price_cents": 10_000_000_000_i64 }).to_string(),
        json!({ "sku": "A", "name": "A", "price_cents": 9.99 }).to_string(),
        json!({ "sku": "A", "name": "A", "price_cents": "100" }).to_string(),
        json!({ "sku": "A", "price_cents": 100 }).to_string(),
        json!({ "sku": "A", "name": "   ", "price_cents": 100 }).to_string(),
        json!({ "sku": "", "name": "A", "price_cents": 100 }).to_string(),
        json!({ "sku": "a b", "name": "A", "price_cents": 100 }).to_string(),
        "not json".to_owned(),
    ] {
        let response = f.send(post("/api/v1/products", Some(&admin), &body)).await;
        assert_problem(&response, StatusCode::BAD_REQUEST, "bad-request");
        assert!(
            response.json["detail"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{body}: {:?}",
            response.json
        );
    }
    assert_eq!(f.products().await, 0);

    let id = f.create("KEEP-1", 500).await;
    let uri = format!("/api/v1/products/{id}");
    for body in [
        "{}",
        r#"{"price_cents": -1}"#,
        r#"{"sku": "OTHER"}"#,
        r#"{"name": ""}"#,
        r#"{"active": "no"}"#,
    ] {
        assert_problem(
            &f.send(put(&uri, Some(&admin), body)).await,
            StatusCode::BAD_REQUEST,
            "bad-request",
        );
    }
    let after = f.send(get(&uri, None)).await;
    assert_eq!(after.json["sku"], "KEEP-1");
    assert_eq!(after.json["price_cents"], 500);

    for uri in [
        "/api/v1/products/not-a-uuid",
        "/api/v1/products?limit=0",
        "/api/v1/products?limit=501",
        "/api/v1/products?offset=-1",
        "/api/v1/products?colour=red",
    ] {
        assert_problem(
            &f.send(get(uri, None)).await,
            StatusCode::BAD_REQUEST,
            "bad-request",
        );
    }
    f.cleanup().await;
}

#[tokio::test]
async fn a_duplicate_sku_is_a_conflict() {
    let f = fixture().await;
    let first = f.create("DUP-1", 100).await;
    let again = f
        .send(post(
            "/api/v1/products",
            Some(&token("admin")),
            &json!({ "sku": "DUP-1", "name": "Other", "price_cents": 999 }).to_string(),
        ))
        .await;
    assert_problem(&again, StatusCode::CONFLICT, "conflict");
    assert_eq!(again.location, None);
    assert_eq!(f.products().await, 1);
    let kept = f
        .send(get(&format!("/api/v1/products/{first}"), None))
        .await;
    assert_eq!(kept.json["price_cents"], 100);
    f.cleanup().await;
}

#[tokio::test]
async fn admin_routes_need_an_admin_token() {
    let f = fixture().await;
    let id = f.create("AUTH-1", 100).await;
    let body = json!({ "sku": "AUTH-2", "name": "x", "price_cents": 1 }).to_string();
    let expired = common::auth().issue(&commerce_platform::Claims {
        sub: "admin-1".into(),
        roles: vec!["admin".into()],
        exp: chrono::Utc::now().timestamp() - 60,
    });
    let product = format!("/api/v1/products/{id}");
    for (token, status, code) in [
        (None, StatusCode::UNAUTHORIZED, "unauthorized"),
        (Some(expired), StatusCode::UNAUTHORIZED, "unauthorized"),
        (
            Some("garbage".to_owned()),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (Some(token("customer")), StatusCode::FORBIDDEN, "forbidden"),
    ] {
        let token = token.as_deref();
        assert_problem(
            &f.send(post("/api/v1/products", token, &body)).await,
            status,
            code,
        );
        assert_problem(
            &f.send(put(&product, token, r#"{"price_cents": 1}"#)).await,
            status,
            code,
        );
        assert_problem(
            &f.send(get("/api/v1/admin/products", token)).await,
            status,
            code,
        );
    }
    assert_eq!(f.products().await, 1);
    let unchanged = f.send(get(&product, None)).await;
    assert_eq!(unchanged.json["price_cents"], 100);
    f.cleanup().await;
}

#[tokio::test]
async fn creating_and_changing_a_product_announce_it_in_the_same_transaction() {
    let f = fixture().await;
    let admin = token("admin");
    let id = f.create("ANN-1", 4200).await;
    let changed = f
        .send(put(
            &format!("/api/v1/products/{id}"),
            Some(&admin),
            r#"{"price_cents": 4500, "active": false}"#,
        ))
        .await;
    assert_eq!(changed.status, StatusCode::OK, "{:?}", changed.json);
    // A refused change writes nothing, so it announces nothing.
    let refused = f
        .send(put(
            &format!("/api/v1/products/{id}"),
            Some(&admin),
            r#"{"price_cents": -1}"#,
        ))
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);

    let announced = f.announced(id).await;
    let expected = |price_cents, active, version| Event::ProductChanged {
        product_id: id,
        sku: "ANN-1".into(),
        name: "ANN-1 name".into(),
        price_cents,
        active,
        version,
    };
    assert_eq!(
        announced,
        [expected(4200, true, 1), expected(4500, false, 2)]
    );

    // The start-up snapshot announces every product at its current version.
    publish_snapshot(&f.db.pool, &f.state.topics)
        .await
        .expect("snapshot");
    assert_eq!(
        f.announced(id).await.last(),
        Some(&expected(4500, false, 2))
    );
    f.cleanup().await;
}

#[tokio::test]
async fn the_public_catalogue_shows_the_cached_stock() {
    let f = fixture().await;
    let stocked = f.create("STOCK-1", 100).await;
    let unknown = f.create("STOCK-2", 100).await;
    f.apply(&level(stocked, 7, 1)).await;

    let list = f.send(get("/api/v1/products", None)).await;
    assert_eq!(list.json[0]["id"], stocked.to_string());
    assert_eq!(list.json[0]["available"], 7);
    assert_eq!(list.json[1]["id"], unknown.to_string());
    assert_eq!(list.json[1]["available"], serde_json::Value::Null);

    // The figure is read from Redis: change it there only, and the API shows it.
    assert!(f.state.stock.apply(stocked, 3, 2).await.expect("redis"));
    let one = f
        .send(get(&format!("/api/v1/products/{stocked}"), None))
        .await;
    assert_eq!(one.json["available"], 3);
    let admin = f
        .send(get("/api/v1/admin/products", Some(&token("admin"))))
        .await;
    assert_eq!(admin.json[0]["available"], 3);
    f.cleanup().await;
}

#[tokio::test]
async fn serves_its_openapi_document() {
    let f = fixture().await;
    let doc = f.send(get("/openapi.json", None)).await;
    assert_eq!(doc.status, StatusCode::OK);
    assert_eq!(doc.json["openapi"], "3.1.0");
    for path in [
        "/api/v1/products",
        "/api/v1/products/{id}",
        "/api/v1/admin/products",
    ] {
        assert!(doc.json["paths"][path].is_object(), "{path}");
    }
    let paths = &doc.json["paths"];
    assert!(paths["/api/v1/products"]["post"]["responses"]["409"].is_object());
    assert_eq!(
        paths["/api/v1/products"]["post"]["responses"]["409"]["content"]["application/problem+json"]
            ["schema"]["$ref"],
        "#/components/schemas/Problem"
    );
    let bearer = serde_json::json!([{ "bearer": [] }]);
    assert_eq!(paths["/api/v1/products"]["post"]["security"], bearer);
    assert_eq!(paths["/api/v1/products/{id}"]["put"]["security"], bearer);
    assert_eq!(paths["/api/v1/admin/products"]["get"]["security"], bearer);
    assert!(paths["/api/v1/products"]["get"]["security"].is_null());
    let schemes = &doc.json["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["apiKey"]["name"], "x-api-key");
    let schemas = &doc.json["components"]["schemas"];
    for schema in [
        "CreateProduct",
        "UpdateProduct",
        "AdminProduct",
        "PublicProduct",
        "Problem",
    ] {
        assert!(schemas[schema].is_object(), "{schema}");
    }
    assert_eq!(
        schemas["CreateProduct"]["properties"]["price_cents"]["maximum"],
        commerce_product::domain::MAX_PRICE_CENTS
    );
    assert_eq!(schemas["UpdateProduct"]["minProperties"], 1);
    assert!(schemas["UpdateProduct"]["maxProperties"].is_null());
    let limit = &paths["/api/v1/products"]["get"]["parameters"][0];
    assert_eq!(limit["name"], "limit");
    assert_eq!(limit["schema"]["maximum"], 500);
}
