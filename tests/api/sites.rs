//! `/v1/sites`.

use heliotrope::db::MIGRATOR;
use heliotrope_tests::{link, site, spawn_app, vm, with, without};
use serde_json::json;
use sqlx::PgPool;

#[sqlx::test(migrator = "MIGRATOR")]
async fn create_read_replace_delete(pool: PgPool) {
    let app = spawn_app(pool).await;
    let created = app.create("/v1/sites", site("DE-LU")).await;
    let id = created["id"].as_i64().unwrap();
    assert_eq!(created["state"], "active", "state defaults to active");
    assert_eq!(created["capacity"]["vcpus"], 256);

    let got = app.get(&format!("/v1/sites/{id}")).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, created);

    let replaced = app.put(&format!("/v1/sites/{id}"), with(site("DE-LU"), "/pue", json!(1.35))).await;
    assert_eq!(replaced.status, 200, "{}", replaced.body);
    assert_eq!(replaced.body["pue"], 1.35);
    let draining = app.put(&format!("/v1/sites/{id}"), with(site("DE-LU"), "/timezone", json!("UTC"))).await;
    assert_eq!(draining.body["timezone"], "UTC");

    let deleted = app.delete(&format!("/v1/sites/{id}")).await;
    assert_eq!(deleted.status, 204);
    app.get(&format!("/v1/sites/{id}")).await.assert_error(404, "site");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn each_rule_names_its_field_and_stores_nothing(pool: PgPool) {
    let app = spawn_app(pool).await;
    let cases = [
        (with(site("A"), "/name", json!("")), "name"),
        (with(site("A"), "/name", json!("has space")), "name"),
        (with(site("A"), "/region", json!("x/y")), "region"),
        (with(site("A"), "/latitude", json!(91.0)), "latitude"),
        (with(site("A"), "/longitude", json!(-181.0)), "longitude"),
        (with(site("A"), "/timezone", json!("Mars/Olympus_Mons")), "timezone"),
        (with(site("A"), "/pue", json!(0.99)), "pue"),
        (with(site("A"), "/capacity/memory_gib", json!(-1.0)), "capacity.memory_gib"),
        (with(site("A"), "/capacity/vcpus", json!(-1)), "capacity.vcpus"),
        (with(site("A"), "/capacity/vcpus", json!("lots")), "capacity.vcpus"),
        (with(site("A"), "/power_model/watts_per_vcpu", json!(-3)), "power_model.watts_per_vcpu"),
        (with(site("A"), "/state", json!("exploded")), "state"),
        (without(site("A"), "timezone"), "timezone"),
        (with(site("A"), "/capacity", json!({"vcpus": 1, "memory_gib": 1, "disk_gib": 1, "gpus": 8})), "capacity.gpus"),
    ];
    for (body, field) in cases {
        app.post("/v1/sites", body.clone()).await.assert_error(422, field);
    }
    assert_eq!(app.count("site").await, 0);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn malformed_bodies(pool: PgPool) {
    let app = spawn_app(pool).await;
    let post = reqwest::Method::POST;
    app.send_raw(post.clone(), "/v1/sites", "application/json", b"{\"name\":".to_vec()).await.assert_error(400, "JSON");
    app.send_raw(post.clone(), "/v1/sites", "application/json", b"[1,2]".to_vec()).await.assert_error(422, "");
    app.send_raw(post.clone(), "/v1/sites", "text/plain", b"{}".to_vec()).await.assert_error(415, "JSON");
    let huge = vec![b' '; heliotrope::http::MAX_BODY_BYTES + 10];
    app.send_raw(post, "/v1/sites", "application/json", huge).await.assert_error(413, "large");
    assert_eq!(app.count("site").await, 0);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn names_are_unique(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.create("/v1/sites", site("GB")).await;
    let other = app.create("/v1/sites", site("FR")).await;
    app.post("/v1/sites", site("GB")).await.assert_error(409, "GB");
    app.put(&format!("/v1/sites/{}", other["id"]), site("GB")).await.assert_error(409, "GB");
    assert_eq!(app.get(&format!("/v1/sites/{}", other["id"])).await.body["name"], "FR");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn missing_sites_are_404(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.get("/v1/sites/4242").await.assert_error(404, "site 4242");
    app.put("/v1/sites/4242", site("X")).await.assert_error(404, "site 4242");
    app.delete("/v1/sites/4242").await.assert_error(404, "site 4242");
    app.get("/v1/sites/not-a-number").await.assert_error(400, "");
    assert_eq!(app.count("site").await, 0);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_site_in_use_cannot_be_deleted_and_links_go_with_it(pool: PgPool) {
    let app = spawn_app(pool).await;
    let a = app.create("/v1/sites", site("A")).await;
    let b = app.create("/v1/sites", site("B")).await;
    app.create("/v1/links", with(link("A", "B"), "/symmetric", json!(true))).await;
    let v = app.create("/v1/vms", vm("web-1", "A")).await;
    app.delete(&format!("/v1/sites/{}", a["id"])).await.assert_error(409, "hosts VMs");

    // Allowed elsewhere only: B is named in the VM's allowed_sites.
    let mut body = vm("web-1", "A");
    body["allowed_sites"] = json!(["A", "B"]);
    assert_eq!(app.put(&format!("/v1/vms/{}", v["id"]), body).await.status, 200);
    app.delete(&format!("/v1/sites/{}", b["id"])).await.assert_error(409, "allowed_sites");

    assert_eq!(app.delete(&format!("/v1/vms/{}", v["id"])).await.status, 204);
    assert_eq!(app.delete(&format!("/v1/sites/{}", b["id"])).await.status, 204);
    assert_eq!(app.count("link").await, 0, "links leave with their site");
    assert_eq!(app.count("site").await, 1);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn filters(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.create("/v1/sites", site("A")).await;
    app.create("/v1/sites", with(site("B"), "/state", json!("draining"))).await;
    app.create("/v1/sites", with(site("C"), "/region", json!("A"))).await;
    let names = |answer: heliotrope_tests::Answer| -> Vec<String> {
        answer.body["items"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(names(app.get("/v1/sites?region=A").await), ["A", "C"]);
    assert_eq!(names(app.get("/v1/sites?state=draining").await), ["B"]);
    assert_eq!(names(app.get("/v1/sites?state=down").await), Vec::<String>::new());
    app.get("/v1/sites?state=sideways").await.assert_error(400, "state");
}
