//! `/v1/executors` (read-only until dispatch adds registration).

use heliotrope::db::MIGRATOR;
use heliotrope_tests::{site, spawn_app};
use reqwest::Method;
use serde_json::json;
use sqlx::PgPool;

#[sqlx::test(migrator = "MIGRATOR")]
async fn list_get_and_filter(pool: PgPool) {
    let app = spawn_app(pool).await;
    let a = app.create("/v1/sites", site("A")).await;
    let b = app.create("/v1/sites", site("B")).await;
    for (site_id, address, state) in [(&a, "10.0.0.1:7000", "online"), (&b, "10.0.1.1:7000", "offline")] {
        sqlx::query("insert into executor (site_id, address, state, last_heartbeat) values ($1, $2, $3, now())")
            .bind(site_id["id"].as_i64())
            .bind(address)
            .bind(state)
            .execute(&app.pool)
            .await
            .unwrap();
    }
    let all = app.get("/v1/executors").await;
    assert_eq!(all.status, 200);
    assert_eq!(all.body["items"].as_array().unwrap().len(), 2);
    let first = &all.body["items"][0];
    assert_eq!((first["site"].clone(), first["state"].clone()), (json!("A"), json!("online")));
    assert!(first["last_heartbeat"].is_string());
    assert_eq!(app.get(&format!("/v1/executors/{}", first["id"])).await.body, *first);
    assert_eq!(app.get("/v1/executors?site=B").await.body["items"][0]["address"], "10.0.1.1:7000");
    assert_eq!(app.get("/v1/executors?state=online").await.body["items"].as_array().unwrap().len(), 1);
    app.get("/v1/executors/999").await.assert_error(404, "executor");

    // Read-only, and a site an executor serves cannot be deleted.
    app.send(Method::POST, "/v1/executors", Some(heliotrope_tests::ADMIN), Some(&json!({})))
        .await
        .assert_error(405, "");
    app.delete(&format!("/v1/sites/{}", a["id"])).await.assert_error(409, "executors");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_executor_token_serves_one_site_and_never_takes_over_another_executor(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.create("/v1/sites", site("A")).await;
    app.create("/v1/sites", site("C")).await;
    // An executor token names its site; no other token does.
    let token = |body: serde_json::Value| {
        let app = &app;
        async move { app.post("/v1/tokens", body).await }
    };
    token(json!({"name": "x", "role": "executor"})).await.assert_error(422, "site");
    token(json!({"name": "x", "role": "viewer", "site": "A"})).await.assert_error(422, "site");
    token(json!({"name": "x", "role": "executor", "site": "MARS"})).await.assert_error(422, "MARS");
    let secret = |site: &str| {
        let app = &app;
        let site = site.to_owned();
        async move {
            let made =
                app.post("/v1/tokens", json!({"name": format!("exec-{site}"), "role": "executor", "site": site})).await;
            assert_eq!(made.status, 201, "{}", made.body);
            assert_eq!(made.body["token"]["site"], site.as_str());
            made.body["secret"].as_str().unwrap().to_owned()
        }
    };
    let (rightful, rogue, second) = (secret("A").await, secret("C").await, secret("A").await);
    let register = |token: String, site: &'static str, address: &'static str| {
        let app = &app;
        let body = json!({"site": site, "address": address, "driver": "sim", "capacity": 1});
        async move { app.send(Method::POST, "/v1/executors/register", Some(&token), Some(&body)).await }
    };
    let first = register(rightful.clone(), "A", "a:1").await;
    assert_eq!(first.status, 200, "{}", first.body);
    let id = first.body["id"].as_i64().unwrap();

    // Another site's token cannot register at A, at A's address or any other.
    register(rogue.clone(), "A", "a:1").await.assert_error(403, "another site");
    register(rogue.clone(), "A", "x:9").await.assert_error(403, "another site");
    // Another token of A cannot take A's executor over: its address is taken.
    register(second.clone(), "A", "a:1").await.assert_error(409, "another executor's address");
    let heartbeat = format!("/v1/executors/{id}/heartbeat");
    assert_eq!(app.send(Method::POST, &heartbeat, Some(&rightful), None).await.status, 204);
    // The rightful token moves its own executor (one identity per token).
    let moved = register(rightful.clone(), "A", "a:2").await;
    assert_eq!((moved.status.as_u16(), moved.body["id"].as_i64()), (200, Some(id)), "{}", moved.body);
    assert_eq!(app.get("/v1/executors?site=A").await.body["items"].as_array().map(Vec::len), Some(1));
    // Once its token is revoked, an executor's address may be taken by a new one.
    let rightful_id: i64 = sqlx::query_scalar("select token_id from executor where executor_id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let revoked = app.delete(&format!("/v1/tokens/{rightful_id}")).await;
    assert_eq!(revoked.status, 204, "{}", revoked.body);
    let taken = register(second, "A", "a:2").await;
    assert_eq!((taken.status.as_u16(), taken.body["id"].as_i64()), (200, Some(id)), "{}", taken.body);
}
