//! Proactive disk caching in operation: the running executors keep a VM's
//! disk replicated at its standby site (no test code touches the replica),
//! the planner counts what the standby holds, and a migration there sends
//! only what was written since the last sync, and what the replica holds
//! wrongly (a torn block); without a replica the whole disk crosses.

use std::time::Duration;

use heliotrope::config::PlannerConfig;
use heliotrope::db::MIGRATOR;
use heliotrope::startup::Services;
use heliotrope_tests::{link, spawn_with, wait_until, with, Processes, TestApp};
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::plans::{big_vm, flat_signals, site_at};
use crate::whole_loop::{executor, start};

/// A scheduler whose executors sync replicas every second.
async fn app(pool: PgPool) -> TestApp {
    let planner = PlannerConfig { replication_interval_s: 1.0, ..PlannerConfig::default() };
    spawn_with(pool, Services { planner, ..Services::driven() }).await
}

/// DEAR and CHEAP linked both ways, with a big VM at DEAR whose disk
/// stands by at `standby` (400 GiB, 100 MiB as a sim VM; 40 GiB without a
/// standby, which is as much as the planner finds worth moving whole).
async fn fleet(app: &TestApp, standby: Option<&str>) -> i64 {
    for (name, price, carbon) in [("DEAR", 300.0, 400.0), ("CHEAP", 20.0, 50.0)] {
        let id = site_at(app, name, "active").await;
        flat_signals(app, id, price, carbon, "EUR").await;
    }
    app.create("/v1/links", with(link("DEAR", "CHEAP"), "/symmetric", json!(true))).await;
    let vm = with(big_vm("web", "DEAR"), "/disk_gib", json!(if standby.is_some() { 400.0 } else { 40.0 }));
    let vm = with(vm, "/standby_sites", json!(standby.into_iter().collect::<Vec<_>>()));
    app.create("/v1/vms", vm).await["id"].as_i64().unwrap()
}

/// Applies a plan that moves the one VM, and waits for its migration to end; returns it.
async fn move_it(app: &TestApp) -> (Value, Value) {
    let applied = app.post("/v1/plans", json!({"dry_run": false})).await;
    assert_eq!(applied.body["status"], "applied", "{}", applied.body);
    let planned = applied.body["moves"][0].clone();
    assert_eq!(planned["to"], "CHEAP", "{}", applied.body);
    let ended = |page: &Value| {
        page["items"].as_array().is_some_and(|m| {
            m.len() == 1 && ["done", "failed", "rolled_back"].contains(&m[0]["state"].as_str().unwrap_or(""))
        })
    };
    let migration = app.wait_for("the migration ended", ended, "/v1/migrations").await["items"][0].clone();
    assert_eq!(migration["state"], "done", "{migration}");
    (planned, migration)
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_running_vm_is_replicated_to_its_standby_and_moves_there_sending_little_of_its_disk(pool: PgPool) {
    let app = app(pool).await;
    let vm = fleet(&app, Some("CHEAP")).await;
    let data = tempfile::tempdir().unwrap();
    let mut executors = Processes::default();
    for site in ["DEAR", "CHEAP"] {
        executors.0.push(start(&app, &executor(&app, site, "0.25").await, data.path()));
    }
    // The executors replicate by themselves: the standby's freshness shows a completed sync.
    let synced = |vm: &Value| {
        vm["standbys"][0]["synced_at"].is_string() && vm["standbys"][0]["synced_bytes"].as_u64() == Some(100 << 20)
    };
    let shown = app.wait_for("the replica synced", synced, &format!("/v1/vms/{vm}")).await;
    assert_eq!(shown["standbys"][0]["site"], "CHEAP", "{shown}");
    assert_eq!(shown["standbys"][0]["chosen_by"], "operator", "{shown}");
    let replica = data.path().join(format!("CHEAP/replicas/vm-{vm}-disk.img"));
    assert!(replica.exists());
    // A torn block in the replica (64 KiB at 1 MiB): it must cost bytes, never correctness.
    let garbage = vec![0xee_u8; 64 << 10];
    std::os::unix::fs::FileExt::write_all_at(
        &std::fs::OpenOptions::new().write(true).open(&replica).unwrap(),
        &garbage,
        1 << 20,
    )
    .unwrap();

    let (planned, migration) = move_it(&app).await;
    // The planner counted the replica: less than the disk is predicted on the wire.
    let raw = (256.0 + 400.0) * (1u64 << 30) as f64;
    assert!(planned["predicted_bytes"].as_f64().unwrap() < raw * 0.5, "{planned}");
    // The migration took the disk's pages from the replica at the standby.
    let progress = &migration["progress"];
    let saved = &progress["saved_bytes"];
    let disk = 100u64 << 20;
    assert!(saved["disk_cache"].as_u64().unwrap() > disk / 2, "{progress}");
    let wire = progress["wire_bytes"].as_u64().unwrap();
    let raw_sim = progress["raw_bytes"].as_u64().unwrap();
    assert!(wire * 2 < raw_sim, "{progress}");

    // Its disk arrived whole and checked (the image's digest equals the source's): the torn
    // block was sent again rather than taken from the replica.
    let at = data.path().join("CHEAP/vms/web/disk.img");
    // The destination moves the sealed image in place once it hears `done` (reading it fails if never).
    let every = Duration::from_millis(100);
    let _ = wait_until(Duration::from_secs(10), every, async || at.exists(), |&moved| moved).await;
    let arrived = std::fs::read(&at).unwrap();
    assert_eq!(arrived.len(), 100 << 20);
    assert_ne!(&arrived[1 << 20..(1 << 20) + garbage.len()], &garbage[..], "the torn block came from the replica");

    // At CHEAP now, the VM needs no standby there: it is dropped and its replica freed.
    let gone = |vm: &Value| vm["site"] == "CHEAP" && vm["standbys"].as_array().is_some_and(Vec::is_empty);
    app.wait_for("no standby at its own site", gone, &format!("/v1/vms/{vm}")).await;
    drop(executors);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn without_a_replica_the_disk_crosses_whole_and_nothing_is_credited(pool: PgPool) {
    // No standbys from the plans, none named: nothing is replicated.
    let planner = PlannerConfig { standbys_per_vm: 0, ..PlannerConfig::default() };
    let app = spawn_with(pool, Services { planner, ..Services::driven() }).await;
    let vm = fleet(&app, None).await;
    let data = tempfile::tempdir().unwrap();
    let mut executors = Processes::default();
    for site in ["DEAR", "CHEAP"] {
        executors.0.push(start(&app, &executor(&app, site, "0.25").await, data.path()));
    }
    let (planned, migration) = move_it(&app).await;
    let raw = (256.0 + 40.0) * (1u64 << 30) as f64;
    assert!(planned["predicted_bytes"].as_f64().unwrap() >= raw, "{planned}");
    assert_eq!(migration["progress"]["saved_bytes"]["disk_cache"], 0, "{migration}");
    let shown = app.get(&format!("/v1/vms/{vm}")).await.body;
    assert_eq!(shown["standbys"], json!([]), "{shown}");
    drop(executors);
}
