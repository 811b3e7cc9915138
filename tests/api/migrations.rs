//! Migrations: what applying a plan records (scheduled from the plan's
//! schedule, each with its log), the filters, and cancelling before
//! cutover, by whom, and only once.

use heliotrope::db::MIGRATOR;
use heliotrope_api_spec::Role;
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::plans::two_sites;
use heliotrope_tests::{spawn_app, TestApp};

/// Proposes and applies a plan at once; returns its id.
async fn apply_a_plan(app: &TestApp) -> i64 {
    let applied = app.post("/v1/plans", json!({"dry_run": false})).await;
    assert_eq!(applied.status, 201, "{}", applied.body);
    assert_eq!(applied.body["status"], "applied", "{}", applied.body);
    applied.body["id"].as_i64().unwrap()
}

fn items(page: &Value) -> &Vec<Value> {
    page["items"].as_array().unwrap()
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_applied_plan_turns_into_scheduled_migrations_with_their_logs(pool: PgPool) {
    let app = spawn_app(pool).await;
    two_sites(&app).await;
    let plan = apply_a_plan(&app).await;
    let viewer = app.token(Role::Viewer).await;
    let listed = app.send(Method::GET, "/v1/migrations", Some(&viewer), None).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let migrations = items(&listed.body);
    assert_eq!(migrations.len(), 1, "{}", listed.body);
    let m = &migrations[0];
    assert_eq!((m["vm"].as_str(), m["from"].as_str(), m["to"].as_str()), (Some("big"), Some("DEAR"), Some("CHEAP")));
    assert_eq!(
        (m["state"].as_str(), m["plan_id"].as_i64(), m["attempts"].as_u64()),
        (Some("scheduled"), Some(plan), Some(0))
    );
    assert!(m["start_at"].is_string() && m["cap_mbps"].as_f64().unwrap() > 0.0, "the schedule's start and cap: {m}");
    assert!(m.get("events").is_none(), "lists leave the logs out");

    let id = m["id"].as_i64().unwrap();
    let detail = app.get(&format!("/v1/migrations/{id}")).await;
    assert_eq!(detail.status, 200, "{}", detail.body);
    let events = detail.body["events"].as_array().unwrap();
    assert_eq!(events[0]["from"], Value::Null);
    assert_eq!((events[0]["to"].as_str(), events[0]["actor"].as_str()), (Some("scheduled"), Some("scheduler")));
    assert_eq!(events[0]["detail"], format!("plan {plan} applied"));
    // Its link had room: the dispatcher admitted it at once, and said so.
    assert_eq!((events[1]["to"].as_str(), events[1]["actor"].as_str()), (Some("scheduled"), Some("dispatcher")));
    assert!(detail.body["admitted_at"].is_string(), "{}", detail.body);

    for (query, expected) in [
        (format!("plan={plan}"), 1),
        (format!("plan={}", plan + 1), 0),
        ("state=scheduled".to_owned(), 1),
        ("state=done".to_owned(), 0),
        ("site=CHEAP".to_owned(), 1),
        ("site=DEAR".to_owned(), 1),
        ("site=ELSEWHERE".to_owned(), 0),
        ("vm=big".to_owned(), 1),
        ("vm=fixed".to_owned(), 0),
    ] {
        let filtered = app.get(&format!("/v1/migrations?{query}")).await;
        assert_eq!(filtered.status, 200, "{query}: {}", filtered.body);
        assert_eq!(items(&filtered.body).len(), expected, "{query}");
    }
    app.get("/v1/migrations?state=lost").await.assert_error(400, "state");
    app.get("/v1/migrations?vm=%C3%97").await.assert_error(422, "vm");
    app.get("/v1/migrations/999999").await.assert_error(404, "migration 999999");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_migration_is_cancelled_before_cutover_once_and_the_vm_planned_again(pool: PgPool) {
    let app = spawn_app(pool).await;
    two_sites(&app).await;
    apply_a_plan(&app).await;
    // While its migration is under way, the VM is not planned again.
    let meanwhile = app.post("/v1/plans", json!({})).await;
    assert_eq!(meanwhile.body["moves"], json!([]), "{}", meanwhile.body);
    let id = items(&app.get("/v1/migrations").await.body)[0]["id"].as_i64().unwrap();

    let viewer = app.token(Role::Viewer).await;
    let cancel = format!("/v1/migrations/{id}/cancel");
    app.send(Method::POST, &cancel, Some(&viewer), None).await.assert_error(403, "planner");
    let planner = app.token(Role::Planner).await;
    let cancelled = app.send(Method::POST, &cancel, Some(&planner), None).await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    assert_eq!(cancelled.body["state"], "cancelled");
    let events = cancelled.body["events"].as_array().unwrap();
    let last = events.last().unwrap();
    assert_eq!((last["from"].as_str(), last["to"].as_str()), (Some("scheduled"), Some("cancelled")));
    let actor = last["actor"].as_str().unwrap();
    assert!(actor.starts_with("token:"), "{last}");
    assert_eq!(cancelled.body["failure"], format!("cancelled by {actor}"));
    app.send(Method::POST, &cancel, Some(&planner), None)
        .await
        .assert_error(409, "is cancelled: it cannot become cancelled");
    app.send(Method::POST, "/v1/migrations/999999/cancel", Some(&planner), None).await.assert_error(404, "migration");

    // Ended, it no longer holds the VM: the next plan moves it again.
    let again = app.post("/v1/plans", json!({})).await;
    assert_eq!(again.body["moves"].as_array().map(Vec::len), Some(1), "{}", again.body);
}
