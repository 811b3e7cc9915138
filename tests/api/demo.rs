//! `heliotrope demo` as a newcomer runs it: seeded sites, three executors
//! as child processes, the rebalancer on an accelerated clock applying
//! plans, and VMs that really move; SIGTERM stops all of it.

use std::process::{Command, Stdio};
use std::time::Duration;

use heliotrope::db::MIGRATOR;
use heliotrope_tests::{free_port, workspace_binary, Processes, TestApp, ADMIN};
use serde_json::Value;
use sqlx::PgPool;

use crate::crashes::ready_at;

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_demo_moves_vms_by_itself_and_stops_on_sigterm(pool: PgPool) {
    let (mut demo, app) = start_demo(&pool, &["--vms", "30", "--hours-per-minute", "30"]).await;

    let mut moved = Value::Null;
    for _ in 0..480 {
        moved = app.get("/v1/migrations?state=done").await.body;
        if moved["items"].as_array().is_some_and(|m| !m.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(moved["items"].as_array().is_some_and(|m| !m.is_empty()), "no VM moved: {moved}");
    let executors = app.get("/v1/executors").await.body;
    let online: Vec<&Value> =
        executors["items"].as_array().unwrap().iter().filter(|e| e["state"] == "online").collect();
    assert_eq!(online.len(), 3, "{executors}");
    assert!(online.iter().all(|e| e["driver"] == "sim"));
    let rebalancer = app.get("/v1/rebalancer").await.body;
    assert_eq!(rebalancer["clock_speed"], 1800.0, "the clock says it is accelerated: {rebalancer}");
    assert_eq!(rebalancer["auto_apply"], true);
    let (vm, to) = (&moved["items"][0]["vm"], moved["items"][0]["to"].as_str().unwrap());
    let there = app.get(&format!("/v1/vms?site={to}&limit=100")).await.body;
    assert!(there["items"].as_array().unwrap().iter().any(|v| &v["name"] == vm), "{vm} at {to}: {there}");

    stop_demo(&mut demo);
}

/// `heliotrope demo ARGS` on a free port over `pool`'s database (admin token
/// `ADMIN`, feeds not polled), once it answers.
pub(crate) async fn start_demo(pool: &PgPool, args: &[&str]) -> (Processes, TestApp) {
    let port = free_port();
    let url = TestApp::at(([127, 0, 0, 1], port).into(), pool.clone()).database_url();
    let demo = Command::new(workspace_binary("heliotrope"))
        .arg("demo")
        .args(args)
        .env("HELIOTROPE_DATABASE_URL", url)
        .env("HELIOTROPE_ADMIN_TOKEN", ADMIN)
        .env("HELIOTROPE_LISTEN", format!("127.0.0.1:{port}"))
        .env("HELIOTROPE_POLL_FEEDS", "false")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let demo = Processes(vec![demo]);
    (demo, ready_at(port, pool).await)
}

/// SIGTERM stops the demo with its executors (a kill would leave them running), cleanly.
pub(crate) fn stop_demo(demo: &mut Processes) {
    let pid = nix::unistd::Pid::from_raw(demo.0[0].id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = demo.0[0].wait().unwrap();
    assert!(status.success(), "the demo stops cleanly on SIGTERM: {status}");
}
