//! The read cache never serves what has changed: not after a write through
//! the same replica, another replica, or plain SQL; and never past the role check.

use std::time::Duration;

use heliotrope::db::MIGRATOR;
use heliotrope_tests::{site, spawn_replica, vm, wait_until, Answer, TestApp};
use reqwest::Method;
use serde_json::json;
use sqlx::PgPool;

/// Asks `path` until `done` holds, for at most 10 s (notifications are
/// asynchronous; this bounds how late one may be); the last answer either way.
async fn eventually(app: &TestApp, path: &str, done: impl Fn(&Answer) -> bool) -> Answer {
    let (Ok(answer) | Err(answer)) =
        wait_until(Duration::from_secs(10), Duration::from_millis(20), async || app.get(path).await, done).await;
    answer
}

fn names(answer: &Answer) -> Vec<&str> {
    answer.body["items"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect()
}

/// Waits until `app` answers from its cache (its change listener is up).
async fn until_cached(app: &TestApp, path: &str) {
    let hit = async || {
        app.get(path).await;
        let metrics = reqwest::get(app.url("/metrics")).await.unwrap().text().await.unwrap();
        metrics.contains(r#"heliotrope_read_cache_lookups_total{result="hit"}"#)
    };
    let waited = wait_until(Duration::from_secs(10), Duration::from_millis(20), hit, |&hit| hit).await;
    assert!(waited.is_ok(), "{path} was never answered from the cache");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn own_writes_are_read_at_once(pool: PgPool) {
    let a = spawn_replica(pool, true).await;
    a.create("/v1/sites", site("A")).await;
    until_cached(&a, "/v1/sites").await;
    let created = a.create("/v1/sites", site("B")).await;
    assert_eq!(names(&a.get("/v1/sites").await), ["A", "B"], "no waiting for the notification");
    a.put(&format!("/v1/sites/{}", created["id"]), site("C")).await;
    assert_eq!(names(&a.get("/v1/sites").await), ["A", "C"]);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn other_replicas_and_plain_sql_invalidate(pool: PgPool) {
    let (a, b) = (spawn_replica(pool.clone(), true).await, spawn_replica(pool, true).await);
    a.create("/v1/sites", site("A")).await;
    a.create("/v1/vms", vm("v1", "A")).await;
    until_cached(&b, "/v1/vms").await;

    a.create("/v1/vms", vm("v2", "A")).await;
    let seen = eventually(&b, "/v1/vms", |r| names(r).len() == 2).await;
    assert_eq!(names(&seen), ["v1", "v2"], "a write on replica A reaches B's cache");

    sqlx::query("update vm set name = 'renamed' where name = 'v1'").execute(&b.pool).await.unwrap();
    let seen = eventually(&b, "/v1/vms", |r| names(r).contains(&"renamed")).await;
    assert_eq!(names(&seen), ["renamed", "v2"], "a change made with psql invalidates too");

    sqlx::query("update site set name = 'A2' where name = 'A'").execute(&b.pool).await.unwrap();
    let seen = eventually(&b, "/v1/vms", |r| r.body["items"][0]["site"] == "A2").await;
    assert_eq!(seen.body["items"][0]["site"], json!("A2"), "joined names follow their site");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn cached_answers_still_need_a_role(pool: PgPool) {
    let a = spawn_replica(pool, true).await;
    a.create("/v1/sites", site("A")).await;
    until_cached(&a, "/v1/sites").await;
    a.send(Method::GET, "/v1/sites", None, None).await.assert_error(401, "token");
    a.send(Method::GET, "/v1/sites", Some("htp_wrong"), None).await.assert_error(401, "token");
    let executor = a.token(heliotrope_api_spec::Role::Executor).await;
    a.send(Method::GET, "/v1/sites", Some(&executor), None).await.assert_error(403, "executor");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn without_the_cache_every_read_is_fresh(pool: PgPool) {
    let a = spawn_replica(pool, false).await;
    a.create("/v1/sites", site("A")).await;
    a.get("/v1/sites").await;
    sqlx::query("update site set name = 'B'").execute(&a.pool).await.unwrap();
    assert_eq!(names(&a.get("/v1/sites").await), ["B"]);
    let metrics = reqwest::get(a.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(!metrics.contains(r#"result="hit""#), "{metrics}");
}
