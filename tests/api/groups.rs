//! `/v1/groups`.

use heliotrope::db::MIGRATOR;
use heliotrope_tests::{site, spawn_app, vm};
use serde_json::json;
use sqlx::PgPool;

#[sqlx::test(migrator = "MIGRATOR")]
async fn crud_and_members(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.create("/v1/sites", site("A")).await;
    let spread = json!({"name": "db", "policy": {"kind": "spread", "min_sites": 3, "max_per_site": 1}});
    let created = app.create("/v1/groups", spread).await;
    assert_eq!(created["members"], 0);
    assert_eq!(created["policy"]["kind"], "spread");
    let path = format!("/v1/groups/{}", created["id"]);

    let mut member = vm("db-1", "A");
    member["group"] = json!("db");
    let member = app.create("/v1/vms", member).await;
    assert_eq!(app.get(&path).await.body["members"], 1);

    let colocate = json!({"name": "db", "policy": {"kind": "colocate", "max_rtt_ms": 25.5}});
    let replaced = app.put(&path, colocate).await;
    assert_eq!(replaced.status, 200, "{}", replaced.body);
    assert_eq!(replaced.body["policy"], json!({"kind": "colocate", "max_rtt_ms": 25.5}));

    assert_eq!(app.get("/v1/groups?policy=colocate").await.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(app.get("/v1/groups?policy=spread").await.body["items"].as_array().unwrap().len(), 0);

    app.delete(&path).await.assert_error(409, "member");
    assert_eq!(app.delete(&format!("/v1/vms/{}", member["id"])).await.status, 204);
    assert_eq!(app.delete(&path).await.status, 204);
    app.get(&path).await.assert_error(404, "group");
    app.delete(&path).await.assert_error(404, "group");
    app.put(&path, json!({"name": "x", "policy": {"kind": "colocate", "max_rtt_ms": 1}}))
        .await
        .assert_error(404, "group");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn rules(pool: PgPool) {
    let app = spawn_app(pool).await;
    let cases = [
        (json!({"name": "g", "policy": {"kind": "spread", "min_sites": 0, "max_per_site": 1}}), "policy.min_sites"),
        (json!({"name": "g", "policy": {"kind": "spread", "min_sites": 1, "max_per_site": 0}}), "policy.max_per_site"),
        (json!({"name": "g", "policy": {"kind": "colocate", "max_rtt_ms": -1}}), "policy.max_rtt_ms"),
        (json!({"name": "g", "policy": {"kind": "scatter"}}), "policy"),
        (json!({"name": "g", "policy": {"kind": "spread", "min_sites": 2}}), "max_per_site"),
        (json!({"name": "", "policy": {"kind": "colocate", "max_rtt_ms": 1}}), "name"),
        (json!({"name": "g"}), "policy"),
    ];
    for (body, field) in cases {
        app.post("/v1/groups", body).await.assert_error(422, field);
    }
    assert_eq!(app.count("vm_group").await, 0);
    let g = json!({"name": "g", "policy": {"kind": "colocate", "max_rtt_ms": 1}});
    app.create("/v1/groups", g.clone()).await;
    app.post("/v1/groups", g).await.assert_error(409, "'g'");
}
