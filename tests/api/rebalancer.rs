//! The hourly rebalancer: it plans on its own and applies what saves
//! enough (or leaves it proposed), and among several scheduler replicas
//! exactly one runs it; when that one is killed, another takes over and
//! keeps its timetable.

use std::collections::HashSet;
use std::time::Duration;

use heliotrope::db::MIGRATOR;
use heliotrope::startup::Services;
use heliotrope_tests::{free_port, spawn_with, wait_until, Processes, TestApp};
use serde_json::Value;
use sqlx::PgPool;

use crate::crashes::{ready_at, serve};
use crate::plans::two_sites;

fn rebalancing(auto_apply: bool, min_saving: f64) -> Services {
    let mut services = Services::driven();
    services.rebalancer.enabled = true;
    services.rebalancer.auto_apply = auto_apply;
    services.rebalancer.auto_apply_min_saving = min_saving;
    services.rebalancer.leader_check = Duration::from_millis(100);
    services.rebalancer.replica = Some("only".into());
    services
}

async fn after_first_run(app: &TestApp) -> Value {
    app.wait_for("the rebalancer ran", |status| !status["last_run_at"].is_null(), "/v1/rebalancer").await
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_plan_that_saves_enough_is_applied_by_itself(pool: PgPool) {
    // Seeded before the replica starts, so that its first run sees it all.
    let seeding = heliotrope_tests::spawn_app(pool.clone()).await;
    two_sites(&seeding).await;
    let app = spawn_with(pool, rebalancing(true, 0.0)).await;
    let status = after_first_run(&app).await;
    assert_eq!((status["leader"].as_str(), status["leader_alive"].as_bool()), (Some("only"), Some(true)), "{status}");
    assert_eq!(status["last_outcome"], "applied", "{status}");
    assert_eq!((status["interval_s"].as_f64(), status["clock_speed"].as_f64()), (Some(3600.0), Some(1.0)));
    let plan = app.get(&format!("/v1/plans/{}", status["last_plan"])).await.body;
    assert_eq!(plan["status"], "applied", "{plan}");
    let migrations = app.get("/v1/migrations").await.body;
    assert_eq!(migrations["items"].as_array().map(Vec::len), Some(1), "{migrations}");
    assert_eq!(migrations["items"][0]["vm"], "big");
    // The next run is an interval after this one.
    let (last, next) = (status["last_run_at"].as_str().unwrap(), status["next_run_at"].as_str().unwrap());
    let gap = chrono::DateTime::parse_from_rfc3339(next).unwrap() - chrono::DateTime::parse_from_rfc3339(last).unwrap();
    assert!((gap.num_seconds() - 3600).abs() <= 2, "{status}");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_plan_below_the_minimum_saving_waits_for_a_planner(pool: PgPool) {
    let seeding = heliotrope_tests::spawn_app(pool.clone()).await;
    two_sites(&seeding).await;
    // Moving `big` saves a few EUR a day: not above 1000.
    let app = spawn_with(pool, rebalancing(true, 1000.0)).await;
    let status = after_first_run(&app).await;
    assert_eq!(status["last_outcome"], "proposed", "{status}");
    assert!(status["last_detail"].as_str().unwrap().contains("not above the auto-apply minimum"), "{status}");
    let plan = app.get(&format!("/v1/plans/{}", status["last_plan"])).await.body;
    assert_eq!(plan["status"], "proposed");
    assert_eq!(app.count("migration_job").await, 0);
}

/// Sessions holding the rebalancer's advisory lock (key "helioreb": its two
/// 32-bit halves as `classid` and `objid`), not the dispatcher's short ones.
async fn leader_locks(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "select count(*) from pg_locks where locktype = 'advisory' and granted \
         and classid = x'68656c69'::int::oid and objid = x'6f726562'::int::oid and objsubid = 1 \
         and database = (select oid from pg_database where datname = current_database())",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn two_replicas_run_one_rebalancer_and_the_survivor_takes_over(pool: PgPool) {
    let seeding = heliotrope_tests::spawn_app(pool.clone()).await;
    two_sites(&seeding).await;
    let ports = [free_port(), free_port()];
    let mut replicas = Processes(vec![serve(&seeding, "r0", ports[0], true), serve(&seeding, "r1", ports[1], true)]);
    let apps = [ready_at(ports[0], &pool).await, ready_at(ports[1], &pool).await];
    let first = after_first_run(&apps[0]).await;
    let leader = first["leader"].as_str().unwrap().to_owned();
    let survivor = if leader == "r0" { 1 } else { 0 };
    // Both answer the same, and over ten more of the leader's checks (at each, a second run would
    // have begun were one due; the other replica tries for the lock as often) only one holds the
    // lock and one plan was made. Each check shows as a new `leader_seen_at`.
    let mut checks = HashSet::from([first["leader_seen_at"].to_string()]);
    let ten_more = |status: &Value| {
        checks.insert(status["leader_seen_at"].to_string());
        checks.len() > 10
    };
    let seen = apps[survivor].wait_for("ten more checks by the leader", ten_more, "/v1/rebalancer").await;
    assert_eq!(seen["leader"], leader.as_str(), "{seen}");
    assert_eq!(seen["replica"], format!("r{survivor}"));
    assert_eq!(seen["last_run_at"], first["last_run_at"], "ran once: {seen}");
    assert_eq!(leader_locks(&pool).await, 1);
    assert_eq!(apps[0].count("plan").await, 1);

    // kill -9 the leader: its connection ends, the lock goes, the other replica takes it.
    let index = 1 - survivor;
    replicas.0[index].kill().unwrap();
    replicas.0[index].wait().unwrap();
    let status = async || apps[survivor].get("/v1/rebalancer").await.body;
    let led = |taken: &Value| taken["leader"] == format!("r{survivor}");
    let (Ok(taken) | Err(taken)) = wait_until(Duration::from_secs(10), Duration::from_millis(100), status, led).await;
    assert_eq!(taken["leader"], format!("r{survivor}"), "{taken}");
    assert_eq!(taken["leader_alive"], true);
    // It keeps the timetable: no second run until an interval after the first.
    assert_eq!(taken["last_run_at"], first["last_run_at"], "{taken}");
    assert_eq!(apps[survivor].count("plan").await, 1);
    assert_eq!(leader_locks(&pool).await, 1);
}
