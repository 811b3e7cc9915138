//! `/v1/links`.

use heliotrope::db::MIGRATOR;
use heliotrope_tests::{link, site, spawn_app, with};
use serde_json::json;
use sqlx::PgPool;

async fn two_sites(app: &heliotrope_tests::TestApp) {
    app.create("/v1/sites", site("A")).await;
    app.create("/v1/sites", site("B")).await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn symmetric_creates_both_directions(pool: PgPool) {
    let app = spawn_app(pool).await;
    two_sites(&app).await;
    let created = app.create("/v1/links", with(link("A", "B"), "/symmetric", json!(true))).await;
    let links = created["links"].as_array().unwrap();
    assert_eq!(links.len(), 2);
    assert_eq!((&links[0]["from_site"], &links[0]["to_site"]), (&json!("A"), &json!("B")));
    assert_eq!((&links[1]["from_site"], &links[1]["to_site"]), (&json!("B"), &json!("A")));
    assert!(links[0].get("symmetric").is_none());
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn crud(pool: PgPool) {
    let app = spawn_app(pool).await;
    two_sites(&app).await;
    let created = app.create("/v1/links", link("A", "B")).await;
    let l = &created["links"][0];
    let path = format!("/v1/links/{}", l["id"]);
    assert_eq!(app.get(&path).await.body, *l);
    let replaced = app.put(&path, with(link("A", "B"), "/bandwidth_mbps", json!(2500.0))).await;
    assert_eq!(replaced.body["bandwidth_mbps"], 2500.0);
    let reversed = app.put(&path, link("B", "A")).await;
    assert_eq!(reversed.body["from_site"], "B");
    assert_eq!(app.delete(&path).await.status, 204);
    app.get(&path).await.assert_error(404, "link");
    app.put(&path, link("A", "B")).await.assert_error(404, "link");
    app.delete(&path).await.assert_error(404, "link");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn rules(pool: PgPool) {
    let app = spawn_app(pool).await;
    two_sites(&app).await;
    app.post("/v1/links", link("A", "A")).await.assert_error(422, "to_site");
    app.post("/v1/links", link("A", "Nowhere")).await.assert_error(422, "to_site: no site named 'Nowhere'");
    app.post("/v1/links", link("Nowhere", "A")).await.assert_error(422, "from_site");
    app.post("/v1/links", with(link("A", "B"), "/bandwidth_mbps", json!(0))).await.assert_error(422, "bandwidth_mbps");
    app.post("/v1/links", with(link("A", "B"), "/rtt_ms", json!(-1))).await.assert_error(422, "rtt_ms");
    app.post("/v1/links", with(link("A", "B"), "/background_reserve_pct", json!(99)))
        .await
        .assert_error(422, "background_reserve_pct");
    assert_eq!(app.count("link").await, 0);

    let l = app.create("/v1/links", link("A", "B")).await;
    app.post("/v1/links", link("A", "B")).await.assert_error(409, "already exists");
    // The symmetric pair fails whole when one direction exists: nothing half-made.
    app.post("/v1/links", with(link("B", "A"), "/symmetric", json!(true))).await.assert_error(409, "already exists");
    assert_eq!(app.count("link").await, 1);
    let path = format!("/v1/links/{}", l["links"][0]["id"]);
    app.put(&path, with(link("A", "B"), "/symmetric", json!(true))).await.assert_error(422, "symmetric");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn filters(pool: PgPool) {
    let app = spawn_app(pool).await;
    two_sites(&app).await;
    app.create("/v1/sites", site("C")).await;
    app.create("/v1/links", with(link("A", "B"), "/symmetric", json!(true))).await;
    app.create("/v1/links", link("A", "C")).await;
    assert_eq!(app.get("/v1/links?from_site=A").await.body["items"].as_array().unwrap().len(), 2);
    assert_eq!(app.get("/v1/links?to_site=A").await.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(app.get("/v1/links?from_site=A&to_site=C").await.body["items"][0]["to_site"], "C");
}
