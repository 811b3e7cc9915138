//! The whole loop on localhost: a scheduler, three `heliotrope-executor
//! run` processes (sim driver), a real database. Signals make one site far
//! cheaper; a plan is applied; every migration moves real bytes between
//! the executors over TCP and reaches `done`, and the inventory shows the
//! VMs at their new site.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use heliotrope::db::MIGRATOR;
use heliotrope_api_spec::Role;
use heliotrope_tests::{free_port, link, spawn_app, wait_until, with, workspace_binary, Processes, TestApp};
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::plans::{big_vm, flat_signals, site_at};

/// An executor process for `site`, as `heliotrope-executor run` starts (again, after a crash, with the same `how`).
pub(crate) struct How {
    site: &'static str,
    token: String,
    pub(crate) port: u16,
    mib_per_gib: &'static str,
    /// More flags for `heliotrope-executor run`.
    pub(crate) flags: Vec<String>,
    /// Where it reaches the scheduler, if not at the test's own address (a proxy).
    pub(crate) scheduler: Option<String>,
}

pub(crate) async fn executor(app: &TestApp, site: &'static str, mib_per_gib: &'static str) -> How {
    How {
        site,
        token: app.token(Role::Executor).await,
        port: free_port(),
        mib_per_gib,
        flags: Vec::new(),
        scheduler: None,
    }
}

pub(crate) fn start(app: &TestApp, how: &How, data: &std::path::Path) -> Child {
    Command::new(workspace_binary("heliotrope-executor"))
        .args(["run", "--site", how.site, "--listen", &format!("127.0.0.1:{}", how.port)])
        .args(["--sim-mib-per-gib", how.mib_per_gib, "--streams", "2", "--data-dir"])
        .arg(data.join(how.site))
        .args(&how.flags)
        .env("HELIOTROPE_SCHEDULER", how.scheduler.clone().unwrap_or_else(|| format!("http://{}", app.addr)))
        .env("HELIOTROPE_TOKEN", &how.token)
        .env("RUST_LOG", std::env::var("EXECUTOR_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn three_executors_move_the_vms_to_the_cheap_site(pool: PgPool) {
    let app = spawn_app(pool).await;
    for (name, price, carbon) in [("A", 300.0, 400.0), ("B", 280.0, 380.0), ("C", 20.0, 50.0)] {
        let id = site_at(&app, name, "active").await;
        flat_signals(&app, id, price, carbon, "EUR").await;
    }
    for (from, to) in [("A", "B"), ("A", "C"), ("B", "C")] {
        app.create("/v1/links", with(link(from, to), "/symmetric", json!(true))).await;
    }
    app.create("/v1/vms", big_vm("web", "A")).await;
    app.create("/v1/vms", big_vm("db", "B")).await;

    let data = tempfile::tempdir().unwrap();
    let mut fleet = Processes::default();
    for site in ["A", "B", "C"] {
        fleet.0.push(start(&app, &executor(&app, site, "0.25").await, data.path()));
    }
    let online = |page: &Value| {
        page["items"].as_array().is_some_and(|e| e.len() == 3 && e.iter().all(|e| e["state"] == "online"))
    };
    app.wait_for("three executors online", online, "/v1/executors").await;

    let applied = app.post("/v1/plans", json!({"dry_run": false})).await;
    assert_eq!(applied.body["status"], "applied", "{}", applied.body);
    assert_eq!(applied.body["moves"].as_array().map(Vec::len), Some(2), "{}", applied.body);
    let ended = |page: &Value| {
        page["items"].as_array().is_some_and(|m| {
            m.len() == 2
                && m.iter().all(|m| {
                    !["pending", "scheduled", "claimed", "transferring", "cutover", "recovering"]
                        .contains(&m["state"].as_str().unwrap_or(""))
                })
        })
    };
    let migrations = app.wait_for("both migrations ended", ended, "/v1/migrations").await;
    for m in migrations["items"].as_array().unwrap() {
        assert_eq!(m["state"], "done", "{m}");
        let detail = app.get(&format!("/v1/migrations/{}", m["id"])).await.body;
        let states = heliotrope_tests::state_changes(&detail);
        assert_eq!(states, ["scheduled", "claimed", "transferring", "cutover", "done"], "{detail}");
    }
    let at_c = app.get("/v1/vms?site=C").await.body;
    assert_eq!(at_c["items"].as_array().map(Vec::len), Some(2), "{at_c}");
    // The bytes moved: the VMs' images are at C's executor (once it heard
    // its confirmation recorded), and gone from their sources (once each heard the same).
    for (vm, from) in [("web", "A"), ("db", "B")] {
        let (arrived, left) = (
            data.path().join(format!("C/vms/{vm}/memory.img")),
            data.path().join(format!("{from}/vms/{vm}/memory.img")),
        );
        let moved = async || arrived.exists() && !left.exists();
        let _ = wait_until(Duration::from_secs(10), Duration::from_millis(250), moved, |&moved| moved).await;
        assert!(arrived.exists(), "{vm} at C");
        assert!(!left.exists(), "{vm} gone from {from}");
    }
    drop(fleet);
}

/// An SDN controller as the `webhook` network driver meets it: it records
/// each move POSTed to the URL returned, answers the first one 503 (busy)
/// and acknowledges the rest.
async fn sdn_controller() -> (String, Arc<Mutex<Vec<Value>>>) {
    let moves: Arc<Mutex<Vec<Value>>> = Arc::default();
    let recorded = moves.clone();
    let router = axum::Router::new().route(
        "/moves",
        axum::routing::post(move |axum::Json(notice): axum::Json<Value>| async move {
            let mut moves = recorded.lock().unwrap();
            moves.push(notice);
            if moves.len() == 1 {
                axum::http::StatusCode::SERVICE_UNAVAILABLE
            } else {
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/moves", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, moves)
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_sdn_controller_hears_the_move_and_the_log_times_the_network_step(pool: PgPool) {
    let app = spawn_app(pool).await;
    for (name, price, carbon) in [("A", 300.0, 400.0), ("C", 20.0, 50.0)] {
        let id = site_at(&app, name, "active").await;
        flat_signals(&app, id, price, carbon, "EUR").await;
    }
    app.create("/v1/links", with(link("A", "C"), "/symmetric", json!(true))).await;
    app.create("/v1/vms", with(big_vm("web", "A"), "/addresses", json!(["10.200.0.10", "fd00::10"]))).await;
    let (url, moves) = sdn_controller().await;
    let data = tempfile::tempdir().unwrap();
    let mut fleet = Processes::default();
    for site in ["A", "C"] {
        let mut how = executor(&app, site, "0.25").await;
        how.flags = vec!["--network".into(), "webhook".into(), "--network-webhook".into(), url.clone()];
        fleet.0.push(start(&app, &how, data.path()));
    }
    app.wait_for("two executors online", two_online, "/v1/executors").await;
    app.post("/v1/plans", json!({"dry_run": false})).await;
    let done = |page: &Value| page["items"][0]["state"] == "done";
    let id = app.wait_for("the move done", done, "/v1/migrations").await["items"][0]["id"].as_i64().unwrap();

    // `done` is recorded first; then the new site tells the controller, starts the VM and logs the step.
    let logged = |detail: &Value| {
        detail["events"].as_array().is_some_and(|events| events.iter().any(|e| !e["network"].is_null()))
    };
    let detail = app.wait_for("the network step logged", logged, &format!("/v1/migrations/{id}")).await;
    let told = moves.lock().unwrap().clone();
    let expected =
        json!({"migration": id, "vm": "web", "addresses": ["10.200.0.10", "fd00::10"], "from": "A", "to": "C"});
    assert_eq!(told, [expected.clone(), expected], "told again after its 503, before the VM ran at C");
    let network: Vec<&Value> =
        detail["events"].as_array().unwrap().iter().filter(|e| !e["network"].is_null()).collect();
    assert_eq!(network.len(), 1, "only the step the webhook driver takes: {detail}");
    let step = &network[0]["network"];
    assert_eq!(
        (step["step"].as_str(), step["driver"].as_str(), step["ok"].as_bool()),
        (Some("route_here"), Some("webhook"), Some(true))
    );
    assert!(step["duration_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{step}");
    assert!(network[0]["detail"].as_str().unwrap().contains("acknowledged (204 No Content, try 2)"), "{}", network[0]);
    drop(fleet);
}

/// Sites A (dear) and C (cheap), `web` at A, an executor at each, and
/// `web`'s migration applied and caught transferring.
struct UnderWay {
    app: TestApp,
    data: tempfile::TempDir,
    a: How,
    c: How,
    fleet: Processes,
    id: i64,
}

fn two_online(page: &Value) -> bool {
    page["items"].as_array().is_some_and(|e| e.len() == 2 && e.iter().all(|e| e["state"] == "online"))
}

async fn under_way(pool: PgPool) -> UnderWay {
    let app = spawn_app(pool).await;
    for (name, price, carbon) in [("A", 300.0, 400.0), ("C", 20.0, 50.0)] {
        let id = site_at(&app, name, "active").await;
        flat_signals(&app, id, price, carbon, "EUR").await;
    }
    app.create("/v1/links", with(link("A", "C"), "/symmetric", json!(true))).await;
    app.create("/v1/vms", big_vm("web", "A")).await;
    let data = tempfile::tempdir().unwrap();
    // 1 MiB per GiB: 256 MiB of memory, long enough to be caught mid-transfer.
    let (a, c) = (executor(&app, "A", "1").await, executor(&app, "C", "1").await);
    let fleet = Processes(vec![start(&app, &a, data.path()), start(&app, &c, data.path())]);
    app.wait_for("two executors online", two_online, "/v1/executors").await;
    app.post("/v1/plans", json!({"dry_run": false})).await;
    let transferring = |page: &Value| page["items"][0]["state"] == "transferring";
    let migration = app.wait_for("the transfer under way", transferring, "/v1/migrations").await;
    let id = migration["items"][0]["id"].as_i64().unwrap();
    UnderWay { app, data, a, c, fleet, id }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_source_killed_mid_transfer_is_recovered_and_the_vm_runs_once(pool: PgPool) {
    let UnderWay { app, data, a, mut fleet, id, .. } = under_way(pool).await;

    // kill -9 the source; its lease runs out, and once back it says the VM is still there.
    fleet.0[0].kill().unwrap();
    fleet.0[0].wait().unwrap();
    app.wait_for("recovering", |m: &Value| m["state"] == "recovering", &format!("/v1/migrations/{id}")).await;
    fleet.0[0] = start(&app, &a, data.path());
    let ended = |m: &Value| ["done", "rolled_back", "failed"].contains(&m["state"].as_str().unwrap_or(""));
    let detail = app.wait_for("the migration ended", ended, &format!("/v1/migrations/{id}")).await;
    assert_eq!(detail["state"], "done", "{detail}");
    assert_eq!(detail["attempts"], 2, "retried once: {detail}");
    let states = heliotrope_tests::state_changes(&detail);
    assert!(
        states.starts_with(&["scheduled", "claimed", "transferring", "recovering", "scheduled"].map(String::from)),
        "{states:?}"
    );

    // Exactly once: at C in the inventory and on disk, gone from A.
    assert_eq!(app.get("/v1/vms?site=C").await.body["items"].as_array().map(Vec::len), Some(1));
    assert!(data.path().join("C/vms/web/memory.img").exists());
    let left = data.path().join("A/vms/web/memory.img");
    let _ =
        wait_until(Duration::from_secs(10), Duration::from_millis(250), async || !left.exists(), |&gone| gone).await;
    assert!(!left.exists(), "web gone from A");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_destination_killed_mid_transfer_leaves_the_vm_running_once_at_the_source(pool: PgPool) {
    let UnderWay { app, data, c, mut fleet, id, .. } = under_way(pool).await;

    // kill -9 the destination: the source's streams break, it gives up and the VM runs on at A.
    fleet.0[1].kill().unwrap();
    fleet.0[1].wait().unwrap();
    let ended = |m: &Value| ["done", "rolled_back", "failed"].contains(&m["state"].as_str().unwrap_or(""));
    let detail = app.wait_for("the migration ended", ended, &format!("/v1/migrations/{id}")).await;
    assert_eq!(detail["state"], "failed", "{detail}");
    fleet.0[1] = start(&app, &c, data.path());
    app.wait_for("C back", two_online, "/v1/executors").await;
    assert_eq!(app.get("/v1/vms?site=A").await.body["items"].as_array().map(Vec::len), Some(1));
    assert!(data.path().join("A/vms/web/memory.img").exists(), "web's images stay at A");
    assert!(!data.path().join("C/vms/web").exists(), "no second copy at C");
    // A later plan moves it after all, through the restarted destination.
    let again = app.post("/v1/plans", json!({"dry_run": false})).await;
    assert_eq!(again.body["status"], "applied", "{}", again.body);
    let done = |page: &Value| page["items"].as_array().is_some_and(|m| m.iter().any(|m| m["state"] == "done"));
    app.wait_for("moved at the second try", done, "/v1/migrations").await;
    assert_eq!(app.get("/v1/vms?site=C").await.body["items"].as_array().map(Vec::len), Some(1));
}
