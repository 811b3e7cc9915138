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
