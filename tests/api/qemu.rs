//! The qemu driver end to end: a scheduler, two `heliotrope-executor run
//! --driver qemu` processes and a real QEMU guest (the test guest, busy
//! rewriting its memory) with a 256 MiB qcow2 disk. Signals make the other
//! site cheaper; the plan's migration moves the VM live through the
//! executors; the scheduler records it `done` with its downtime, the guest
//! runs on at the destination, the source QEMU is gone and the disks are
//! identical. Needs QEMU and binutils (`scripts/test` installs them).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use heliotrope::config::PlannerConfig;
use heliotrope::db::MIGRATOR;
use heliotrope::startup::Services;
use heliotrope_api_spec::Role;
use heliotrope_executor::qemu::guest::{self, boot_image, disk_with_data};
use heliotrope_executor::qemu::machine::command;
use heliotrope_tests::{free_port, link, spawn_app, spawn_with, with, workspace_binary, KillUnder, Processes, TestApp};
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::plans::{flat_signals, site_at};

async fn executor(app: &TestApp, site: &str, data: &Path) -> std::process::Child {
    executor_with(app, site, data, &[]).await
}

/// A qemu executor for `site` with its data under `data`, run with `flags` besides.
pub(crate) async fn executor_with(app: &TestApp, site: &str, data: &Path, flags: &[&str]) -> std::process::Child {
    let command = Command::new(workspace_binary("heliotrope-executor"));
    executor_as(command, app, site, data, &[&["--driver", "qemu"], flags].concat()).await
}

/// `command` (`heliotrope-executor`, perhaps wrapped) run as an executor
/// for `site` with its data under `data`, with `flags` besides (logging
/// warnings, or `EXECUTOR_LOG`, unless the command sets `RUST_LOG`).
pub(crate) async fn executor_as(
    mut command: Command,
    app: &TestApp,
    site: &str,
    data: &Path,
    flags: &[&str],
) -> std::process::Child {
    let token = app.token(Role::Executor).await;
    if command.get_envs().all(|(name, _)| name != "RUST_LOG") {
        command.env("RUST_LOG", std::env::var("EXECUTOR_LOG").unwrap_or_else(|_| "warn".into()));
    }
    command
        .args(["run", "--site", site, "--listen", &format!("127.0.0.1:{}", free_port())])
        .args(flags)
        .arg("--data-dir")
        .arg(data.join(site))
        .env("HELIOTROPE_SCHEDULER", format!("http://{}", app.addr))
        .env("HELIOTROPE_TOKEN", token)
        .spawn()
        .unwrap()
}

/// The fleet of these tests: sites A (dear) and C (cheap) linked at
/// `link_mbps`, the VM `web` running at A as an operator runs it (QEMU with
/// the test guest and a disk holding data), and a qemu executor per site.
struct Fleet {
    app: TestApp,
    data: tempfile::TempDir,
    vm_dir: PathBuf,
    source: tokio::process::Child,
    _executors: Processes,
    /// Dropped after the executors: the guests they started.
    _guests: KillUnder,
}

async fn fleet(pool: PgPool, link_mbps: f64) -> Fleet {
    let fleet = fleet_at_rest(spawn_app(pool).await, link_mbps, &[]).await;
    let applied = fleet.app.post("/v1/plans", json!({"dry_run": false})).await;
    assert_eq!(applied.body["moves"].as_array().map(Vec::len), Some(1), "{}", applied.body);
    fleet
}

/// The fleet before any plan: `web` stands by at `standbys`.
async fn fleet_at_rest(app: TestApp, link_mbps: f64, standbys: &[&str]) -> Fleet {
    for (name, price, carbon) in [("A", 300.0, 400.0), ("C", 20.0, 50.0)] {
        let id = site_at(&app, name, "active").await;
        flat_signals(&app, id, price, carbon, "EUR").await;
    }
    let link = with(link("A", "C"), "/bandwidth_mbps", json!(link_mbps));
    app.create("/v1/links", with(link, "/symmetric", json!(true))).await;

    let data = tempfile::tempdir().unwrap();
    let vm_dir = data.path().join("A/vms/web");
    std::fs::create_dir_all(&vm_dir).unwrap();
    let boot = boot_image(data.path()).unwrap();
    disk_with_data(&vm_dir.join("disk0.qcow2"), 256).unwrap();
    let spec = guest::spec(&boot, &vm_dir.join("disk0.qcow2"));
    let source = command(&spec, &vm_dir, false).unwrap().kill_on_drop(true).spawn().unwrap();
    // 64 vCPUs in the inventory (what it would cost to run), 128 MiB as QEMU runs it.
    let vm = json!({"name": "web", "site": "A", "vcpus": 64, "memory_gib": 0.125, "disk_gib": 0.25,
        "dirty_rate_mbps": 100.0, "max_downtime_ms": 2000, "driver": "qemu", "driver_spec": spec,
        "standby_sites": standbys});
    app.create("/v1/vms", vm).await;

    let executors = Processes(vec![executor(&app, "A", data.path()).await, executor(&app, "C", data.path()).await]);
    let online = |page: &Value| {
        page["items"].as_array().is_some_and(|e| e.len() == 2 && e.iter().all(|e| e["driver"] == "qemu"))
    };
    app.wait_for("two qemu executors", online, "/v1/executors").await;
    let guests = KillUnder(data.path().to_owned());
    Fleet { app, data, vm_dir, source, _executors: executors, _guests: guests }
}

/// Whether the guest's serial output at `dir` grows.
async fn runs_on(dir: &Path) -> bool {
    let serial = dir.join("serial.log");
    let before = std::fs::metadata(&serial).map_or(0, |m| m.len());
    tokio::time::sleep(Duration::from_millis(500)).await;
    std::fs::metadata(&serial).map_or(0, |m| m.len()) > before
}

/// Whether the VM's disk at `source` and at `destination` (VM directories)
/// reads the same (`qemu-img compare`); else what it found.
pub(crate) fn compare_disks(source: &Path, destination: &Path) -> Result<(), String> {
    let compared = Command::new("qemu-img")
        .args(["compare", "-U"])
        .arg(source.join("disk0.qcow2"))
        .arg(destination.join("disk0.qcow2"))
        .output()
        .map_err(|e| e.to_string())?;
    let said = String::from_utf8_lossy(&compared.stdout).into_owned() + &String::from_utf8_lossy(&compared.stderr);
    if compared.status.success() {
        Ok(())
    } else {
        Err(said)
    }
}

fn assert_same_disks(source: &Path, destination: &Path) {
    compare_disks(source, destination).unwrap();
}

pub(crate) fn ended(page: &Value) -> bool {
    page["items"][0]["state"].as_str().is_some_and(|s| ["done", "failed", "rolled_back", "cancelled"].contains(&s))
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_qemu_vm_moves_live_through_the_executors_to_the_cheap_site(pool: PgPool) {
    // 10 Gbit/s: a cap the busy guest converges under within 300 ms (at 1 Gbit/s the policy has to step in).
    let Fleet { app, data, vm_dir, mut source, _executors, _guests } = fleet(pool, 10_000.0).await;
    let migrations = app.wait_for("the migration ended", ended, "/v1/migrations").await;
    let migration = &migrations["items"][0];
    assert_eq!(migration["state"], "done", "{migration}");
    let downtime = migration["progress"]["downtime_s"].as_f64().expect("the measured downtime");
    assert!(downtime > 0.0 && downtime <= 2.0, "{migration}");
    // The guest rewrites ~99 MiB of its memory: it crossed (again only where dirty pages are sent
    // again, which a fast convergence may not need), its patterns compressed by the multifd
    // tunnels as the disk's 12 MiB are by the NBD tunnel.
    let progress = &migration["progress"];
    let (raw, wire) = (progress["raw_bytes"].as_u64().unwrap(), progress["wire_bytes"].as_u64().unwrap());
    assert!(raw > 90 << 20, "{migration}");
    assert!(wire < raw / 4, "{migration}");
    assert!(progress["saved_bytes"]["compression"].as_u64().unwrap() > raw / 2, "{migration}");
    assert_eq!(app.get("/v1/vms?site=C").await.body["items"][0]["name"], "web");
    // No standby, no replica: nothing came from one.
    assert_eq!(migration["progress"]["saved_bytes"]["disk_cache"], 0, "{migration}");

    // The source QEMU quit; the guest runs on at C; the disks are the same.
    let exited = tokio::time::timeout(Duration::from_secs(20), source.wait()).await;
    assert!(exited.is_ok(), "the source QEMU is gone");
    assert!(runs_on(&data.path().join("C/vms/web")).await, "the guest runs on at C");
    // QEMU announced the guest at C, and the migration's log says so.
    let announced = |detail: &Value| {
        detail["events"].as_array().is_some_and(|events| {
            events.iter().any(|e| {
                e["network"]["step"] == "announce"
                    && e["network"]["ok"] == true
                    && e["detail"].as_str().is_some_and(|d| d.contains("announce-self"))
            })
        })
    };
    app.wait_for("the announcement logged", announced, &format!("/v1/migrations/{}", migration["id"])).await;
    assert_same_disks(&vm_dir, &data.path().join("C/vms/web"));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_destination_qemu_killed_mid_migration_fails_the_job_and_the_vm_runs_on_at_the_source(pool: PgPool) {
    // 1 Gbit/s: the busy guest does not converge at first, so the migration is caught under way.
    let Fleet { app, data, vm_dir, mut source, _executors, _guests } = fleet(pool, 1_000.0).await;
    let transferring = |page: &Value| {
        page["items"][0]["state"] == "transferring"
            && page["items"][0]["progress"]["raw_bytes"].as_u64() > Some(64 << 20)
    };
    app.wait_for("the memory on its way", transferring, "/v1/migrations").await;
    let destination_qmp = data.path().join("C/vms/web/qmp.sock").display().to_string();
    let killed = Command::new("pkill").args(["-9", "-f", &destination_qmp]).status().unwrap();
    assert!(killed.success(), "the destination QEMU was running");

    let migrations = app.wait_for("the migration ended", ended, "/v1/migrations").await;
    let migration = &migrations["items"][0];
    assert_eq!(migration["state"], "failed", "{migration}");
    assert_eq!(app.get("/v1/vms?site=A").await.body["items"][0]["name"], "web");
    assert!(source.try_wait().unwrap().is_none(), "the source QEMU still runs");
    assert!(runs_on(&vm_dir).await, "the guest runs on at A");
}

/// Proactive caching for a qemu VM, by the running executors alone: the
/// source reads the disk through QEMU's dirty bitmap and read-only NBD
/// export and keeps it replicated at the standby; the mirror's writes then
/// cross as references to that replica, what it holds wrongly is sent
/// again, and the disks end identical.
#[sqlx::test(migrator = "MIGRATOR")]
async fn a_qemu_vm_replicated_at_its_standby_moves_there_with_its_disk_from_the_torn_replica(pool: PgPool) {
    let planner = PlannerConfig { replication_interval_s: 1.0, ..PlannerConfig::default() };
    let app = spawn_with(pool, Services { planner, ..Services::driven() }).await;
    let Fleet { app, data, vm_dir, source: _source, _executors, _guests } = fleet_at_rest(app, 10_000.0, &["C"]).await;
    let synced = |vm: &Value| {
        vm["standbys"][0]["site"] == "C"
            && vm["standbys"][0]["synced_at"].is_string()
            && vm["standbys"][0]["synced_bytes"].as_u64() == Some(256 << 20)
    };
    let vm = app.wait_for("the replica synced", synced, "/v1/vms/1").await;
    assert_eq!(vm["standbys"][0]["chosen_by"], "operator", "{vm}");
    // The replica tears where the disk's first 2 MiB of data lie (one pattern, so one hash): it
    // must cost those bytes, never correctness.
    let replica = data.path().join("C/replicas/vm-1-disk.img");
    let garbage = vec![0xee_u8; 2 << 20];
    let file = std::fs::OpenOptions::new().write(true).open(&replica).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &garbage, 0).unwrap();

    let applied = app.post("/v1/plans", json!({"dry_run": false})).await;
    assert_eq!(applied.body["moves"][0]["to"], "C", "{}", applied.body);
    let migrations = app.wait_for("the migration ended", ended, "/v1/migrations").await;
    let migration = &migrations["items"][0];
    assert_eq!(migration["state"], "done", "{migration}");
    let progress = &migration["progress"];
    // 10 MiB of the disk's 12 MiB of data came from the replica; the torn 2 MiB were asked for
    // again. The disk's wire bytes are those, the NBD handshake, headers, hashes and replies.
    let saved = &progress["saved_bytes"];
    assert_eq!(saved["disk_cache"].as_u64(), Some(10 << 20), "{migration}");
    assert!(progress["disk_wire_bytes"].as_u64().unwrap() < 2 << 20, "{migration}");
    assert!(progress["relayed_raw"].is_null(), "{migration}");

    assert_same_disks(&vm_dir, &data.path().join("C/vms/web"));
    assert!(runs_on(&data.path().join("C/vms/web")).await, "the guest runs on at C");
}
