//! `heliotrope demo` as a newcomer runs it: seeded sites, three executors
//! as child processes, the rebalancer on an accelerated clock applying
//! plans, VMs that really move and savings that show; SIGTERM stops all of
//! it promptly, and a restart resumes it.

use std::process::{Command, Stdio};
use std::time::Duration;

use heliotrope::db::MIGRATOR;
use heliotrope_tests::{free_port, wait_until, workspace_binary, Processes, TestApp, ADMIN};
use serde_json::Value;
use sqlx::PgPool;

use crate::crashes::ready_at;

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_demo_moves_vms_by_itself_and_its_savings_show_on_its_clock(pool: PgPool) {
    let (mut demo, app) = start_demo(&pool, &["--vms", "30", "--hours-per-minute", "30"]).await;
    let started = clock_reads(&app).await;

    let moved = app
        .wait_for(
            "a VM moved",
            |page: &Value| page["items"].as_array().is_some_and(|m| !m.is_empty()),
            "/v1/migrations?state=done",
        )
        .await;
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

    // Savings accrue on the demo's clock: 30 of its hours on, moving has saved against staying put,
    // on what the rebalancer minimises (blend: cost plus emissions at 100 USD a tonne) and in money.
    // (It takes a minute at 1,800 times; the bound is where nextest would end the test anyway.)
    // On a loaded machine the first moves' cost may still outweigh 30 hours' saving in money by a
    // cent: the savings are read until both are positive, for up to 60 s more (30 of its hours).
    let on = started + chrono::Duration::hours(30);
    let reads = async || clock_reads(&app).await;
    let reached = wait_until(Duration::from_secs(240), Duration::from_millis(500), reads, |&at| at >= on).await;
    assert!(reached.is_ok(), "the demo's clock never read {on}: {reached:?}");
    let savings = async || app.get("/v1/savings").await.body;
    let saved = |savings: &Value| {
        let (cost, kg) =
            (savings["total_cost_saved"].as_f64().unwrap_or(0.0), savings["total_kg_saved"].as_f64().unwrap_or(0.0));
        cost > 0.0 && cost + kg * 0.1 > 0.0
    };
    let (Ok(savings) | Err(savings)) =
        wait_until(Duration::from_secs(60), Duration::from_millis(500), savings, saved).await;
    assert_eq!(savings["synthetic"], true, "{savings}");
    assert!(saved(&savings), "{savings}");

    stop_demo(&mut demo);
}

/// A demo stopped (SIGTERM) or killed (SIGKILL) mid-migration leaves no
/// executor running, and once started again every migration it left under
/// way ends `done` or `rolled_back`: its database and its executors' data
/// live and resume together. Asked for other sites, it refuses, naming `--reset`.
#[sqlx::test(migrator = "MIGRATOR")]
async fn a_stopped_demo_leaves_no_executor_and_resumes_its_migrations(pool: PgPool) {
    let args = ["--vms", "30", "--hours-per-minute", "30"];
    let (mut demo, app) = start_demo(&pool, &args).await;
    let active = |m: &&Value| ["claimed", "transferring", "cutover"].contains(&m["state"].as_str().unwrap_or(""));
    let under_way = app
        .wait_for(
            "a migration under way",
            |page: &Value| page["items"].as_array().unwrap().iter().any(|m| active(&m)),
            "/v1/migrations?limit=1000",
        )
        .await;
    let left: Vec<i64> =
        under_way["items"].as_array().unwrap().iter().filter(active).map(|m| m["id"].as_i64().unwrap()).collect();

    let asked = std::time::Instant::now();
    stop_demo(&mut demo);
    assert!(asked.elapsed() < Duration::from_secs(5), "stopped in {:?}", asked.elapsed());
    assert_eq!(executors_of(&demo), 0, "no executor outlives the demo");

    let app = demo.restart(&pool, &args).await;
    for id in &left {
        let ended = |m: &Value| {
            ["done", "failed", "cancelled", "rolled_back", "expired"].contains(&m["state"].as_str().unwrap_or(""))
        };
        let detail = app.wait_for("the migration left under way ended", ended, &format!("/v1/migrations/{id}")).await;
        assert!(["done", "rolled_back"].contains(&detail["state"].as_str().unwrap()), "{detail}");
    }
    let failed = app.get("/v1/migrations?state=failed").await.body;
    assert_eq!(failed["items"], serde_json::json!([]), "{failed}");

    // Killed outright, the demo's executors go with it.
    demo.process.0[0].kill().unwrap();
    demo.process.0[0].wait().unwrap();
    let left = async || executors_of(&demo);
    let (Ok(left_running) | Err(left_running)) =
        wait_until(Duration::from_secs(5), Duration::from_millis(100), left, |&n| n == 0).await;
    assert_eq!(left_running, 0, "no executor outlives a killed demo by 5 s");

    // Other sites than the demo holds: refused, saying how to start afresh.
    let refused = demo.command(&pool, free_port(), &["--sites", "all"]).stderr(Stdio::piped()).output().unwrap();
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("--reset") && said.contains("3 sites"), "{said}");
}

/// What the demo read on its clock (the overview's "now").
async fn clock_reads(app: &TestApp) -> chrono::DateTime<chrono::Utc> {
    app.get("/v1/overview").await.body["at"].as_str().unwrap().parse().unwrap()
}

/// Executor processes keeping their data in the demo's state directory.
fn executors_of(demo: &Demo) -> usize {
    let needle = demo.state.path().to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .map(|cmdline| String::from_utf8_lossy(&cmdline).into_owned())
        .filter(|cmdline| cmdline.contains("heliotrope-executor") && cmdline.contains(&needle))
        .count()
}

/// A running `heliotrope demo` and the state directory it keeps its executors' data in.
pub(crate) struct Demo {
    pub process: Processes,
    pub state: tempfile::TempDir,
}

impl Demo {
    /// `heliotrope demo ARGS` on `port` over `pool`'s database (admin token `ADMIN`, feeds not polled).
    fn command(&self, pool: &PgPool, port: u16, args: &[&str]) -> Command {
        let url = TestApp::at(([127, 0, 0, 1], port).into(), pool.clone()).database_url();
        let mut command = Command::new(workspace_binary("heliotrope"));
        command
            .arg("demo")
            .args(args)
            .env("HELIOTROPE_DATABASE_URL", url)
            .env("HELIOTROPE_DEMO_STATE_DIR", self.state.path())
            .env("HELIOTROPE_ADMIN_TOKEN", ADMIN)
            .env("HELIOTROPE_LISTEN", format!("127.0.0.1:{port}"))
            .env("HELIOTROPE_POLL_FEEDS", "false")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null());
        command
    }

    /// Starts the demo again (it stopped) with `args`, once it answers.
    async fn restart(&mut self, pool: &PgPool, args: &[&str]) -> TestApp {
        let port = free_port();
        self.process = Processes(vec![self.command(pool, port, args).spawn().unwrap()]);
        ready_at(port, pool).await
    }
}

/// `heliotrope demo ARGS` over `pool`'s database, with a state directory of its own, once it answers.
pub(crate) async fn start_demo(pool: &PgPool, args: &[&str]) -> (Demo, TestApp) {
    let mut demo = Demo { process: Processes(Vec::new()), state: tempfile::tempdir().unwrap() };
    let app = demo.restart(pool, args).await;
    (demo, app)
}

/// SIGTERM stops the demo with its executors (a kill would leave them running), cleanly.
pub(crate) fn stop_demo(demo: &mut Demo) {
    let pid = nix::unistd::Pid::from_raw(demo.process.0[0].id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = demo.process.0[0].wait().unwrap();
    assert!(status.success(), "the demo stops cleanly on SIGTERM: {status}");
}
