//! The scheduler killed with SIGKILL in the middle of applying a plan:
//! the transaction dies with it, and after a restart the plan applies
//! once, with no migration lost or doubled.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use heliotrope::db::MIGRATOR;
use heliotrope_tests::{free_port, link, spawn_app, wait_until, with, workspace_binary, Processes, TestApp, ADMIN};
use serde_json::json;
use sqlx::PgPool;

use crate::plans::{big_vm, flat_signals, site_at};

/// `heliotrope serve` as a process of its own on the test's database (no rebalancing: the test applies).
pub(crate) fn serve(app: &TestApp, replica: &str, port: u16, rebalance: bool) -> Child {
    serving(&mut Command::new(workspace_binary("heliotrope")), app, replica, port, rebalance).spawn().unwrap()
}

/// `command`, which runs the scheduler binary, made to `serve` the test's database on `port`.
pub(crate) fn serving<'c>(
    command: &'c mut Command,
    app: &TestApp,
    replica: &str,
    port: u16,
    rebalance: bool,
) -> &'c mut Command {
    command
        .arg("serve")
        .env("HELIOTROPE_DATABASE_URL", app.database_url())
        .env("HELIOTROPE_ADMIN_TOKEN", ADMIN)
        .env("HELIOTROPE_LISTEN", format!("127.0.0.1:{port}"))
        .env("HELIOTROPE_POLL_FEEDS", "false")
        .env("HELIOTROPE_REBALANCE", rebalance.to_string())
        .env("HELIOTROPE_LEADER_CHECK", "200ms")
        .env("HELIOTROPE_REPLICA", replica)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
}

/// A scheduler process's API, once it answers.
pub(crate) async fn ready_at(port: u16, pool: &PgPool) -> TestApp {
    let app = TestApp::at(([127, 0, 0, 1], port).into(), pool.clone());
    let ready =
        wait_until(Duration::from_secs(20), Duration::from_millis(100), async || app.ready().await, |&r| r).await;
    assert!(ready.is_ok(), "the scheduler on port {port} never became ready");
    app
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_scheduler_killed_mid_apply_loses_and_doubles_nothing(pool: PgPool) {
    let seeding = spawn_app(pool.clone()).await;
    for (name, price) in [("DEAR", 300.0), ("CHEAP", 20.0)] {
        let id = site_at(&seeding, name, "active").await;
        flat_signals(&seeding, id, price, 100.0, "EUR").await;
    }
    seeding.create("/v1/links", with(link("DEAR", "CHEAP"), "/symmetric", json!(true))).await;
    for i in 0..3 {
        seeding.create("/v1/vms", big_vm(&format!("big-{i}"), "DEAR")).await;
    }
    let plan = seeding.post("/v1/plans", json!({})).await.body;
    assert!(plan["id"].is_i64(), "{plan}");
    let (id, moves) = (plan["id"].as_i64().expect("a plan"), plan["moves"].as_array().map_or(0, Vec::len));
    assert!(moves >= 1, "{plan}");
    assert_eq!(seeding.post(&format!("/v1/plans/{id}/approve"), json!({})).await.status, 200);

    let port = free_port();
    let mut scheduler = Processes(vec![serve(&seeding, "s", port, false)]);
    let app = ready_at(port, &pool).await;
    // Hold the migrations table so that the apply stops inside its
    // transaction (the plan row locked, nothing recorded yet) ...
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("lock table migration_job in exclusive mode").execute(&mut *blocker).await.unwrap();
    let applying = tokio::spawn({
        let app = app.clone();
        async move { app.send(reqwest::Method::POST, &format!("/v1/plans/{id}/apply"), Some(ADMIN), None).await }
    });
    let waiting = async || {
        let waits = "select exists (select 1 from pg_locks where not granted and relation = 'migration_job'::regclass)";
        sqlx::query_scalar::<_, bool>(waits).fetch_one(&pool).await.unwrap()
    };
    let waited = wait_until(Duration::from_secs(5), Duration::from_millis(25), waiting, |&w| w).await;
    assert!(waited.is_ok(), "the apply reached the migrations table");
    // ... and kill -9 the scheduler there.
    scheduler.0[0].kill().unwrap();
    scheduler.0[0].wait().unwrap();
    // The caller saw the connection drop (its request panicked), never a success.
    if let Ok(answer) = applying.await {
        assert_ne!(answer.status, 200, "{}", answer.body);
    }
    blocker.commit().await.unwrap();

    // Postgres rolled the dead transaction back: approved, nothing recorded.
    let restarted_port = free_port();
    scheduler.0.push(serve(&seeding, "s2", restarted_port, false));
    let app = ready_at(restarted_port, &pool).await;
    let after = app.get(&format!("/v1/plans/{id}")).await.body;
    assert_eq!(after["status"], "approved", "{after}");
    assert_eq!(app.count("migration_job").await, 0);

    // Applied after the restart: one migration per move. Again: nothing more.
    let applied = app.post(&format!("/v1/plans/{id}/apply"), json!({})).await;
    assert_eq!(applied.status, 200, "{}", applied.body);
    let again = app.post(&format!("/v1/plans/{id}/apply"), json!({})).await;
    assert_eq!(again.status, 409, "{}", again.body);
    let (jobs, vms, recorded): (i64, i64, i64) = sqlx::query_as(
        "select count(*), count(distinct vm_id), \
         (select count(*) from migration_event where from_state is null) from migration_job",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((jobs, vms, recorded), (moves as i64, moves as i64, moves as i64));
}
