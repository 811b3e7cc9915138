//! The whole loop on localhost: a scheduler, three `heliotrope-executor
//! run` processes (sim driver), a real database. Signals make one site far
//! cheaper; a plan is applied; every migration moves real bytes between
//! the executors over TCP and reaches `done`, and the inventory shows the
//! VMs at their new site.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use heliotrope::db::MIGRATOR;
use heliotrope_api_spec::Role;
use heliotrope_tests::{link, spawn_app, with, TestApp};
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::plans::{big_vm, flat_signals, site_at};

/// The executor binary beside this test's (workspace binaries sit one level above test binaries).
fn executor_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(|deps| deps.parent()).unwrap().join("heliotrope-executor");
    assert!(bin.exists(), "{} is not built: cargo build -p heliotrope-executor", bin.display());
    bin
}

/// Child processes killed when the test ends, however it ends.
struct Fleet(Vec<Child>);

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn start_executor(app: &TestApp, site: &str, data: &std::path::Path) -> Child {
    let token = app.token(Role::Executor).await;
    Command::new(executor_binary())
        .args(["run", "--site", site, "--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--sim-mib-per-gib", "0.25", "--streams", "2", "--data-dir"])
        .arg(data.join(site))
        .env("HELIOTROPE_SCHEDULER", format!("http://{}", app.addr))
        .env("HELIOTROPE_TOKEN", token)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

async fn wait_for(app: &TestApp, what: &str, mut done: impl FnMut(&Value) -> bool, path: &str) -> Value {
    for _ in 0..240 {
        let answer = app.get(path).await;
        if done(&answer.body) {
            return answer.body;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("{what}: never; last {}", app.get(path).await.body);
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
    let mut fleet = Fleet(Vec::new());
    for site in ["A", "B", "C"] {
        fleet.0.push(start_executor(&app, site, data.path()).await);
    }
    let online = |page: &Value| {
        page["items"].as_array().is_some_and(|e| e.len() == 3 && e.iter().all(|e| e["state"] == "online"))
    };
    wait_for(&app, "three executors online", online, "/v1/executors").await;

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
    let migrations = wait_for(&app, "both migrations ended", ended, "/v1/migrations").await;
    for m in migrations["items"].as_array().unwrap() {
        assert_eq!(m["state"], "done", "{m}");
        let detail = app.get(&format!("/v1/migrations/{}", m["id"])).await.body;
        let states: Vec<&str> =
            detail["events"].as_array().unwrap().iter().map(|e| e["to"].as_str().unwrap()).collect();
        assert_eq!(states, ["scheduled", "claimed", "transferring", "cutover", "done"], "{detail}");
    }
    let at_c = app.get("/v1/vms?site=C").await.body;
    assert_eq!(at_c["items"].as_array().map(Vec::len), Some(2), "{at_c}");
    // The bytes moved: the VMs' images are at C's executor, and (once each
    // source hears the migration is done) gone from their sources.
    for (vm, from) in [("web", "A"), ("db", "B")] {
        assert!(data.path().join(format!("C/vms/{vm}/memory.img")).exists(), "{vm} at C");
        let left = data.path().join(format!("{from}/vms/{vm}/memory.img"));
        for _ in 0..40 {
            if !left.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(!left.exists(), "{vm} gone from {from}");
    }
    drop(fleet);
}
