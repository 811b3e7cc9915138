//! Proactive caching with a real Linux guest (`scripts/linux-guest`): a
//! kernel, an ext4 data disk with 1 GiB of files, a warm page cache and a
//! steady stream of writes with a heartbeat. The running executors keep its
//! disk replicated at its standby (no test code touches the replica); a
//! plan then moves it there while it writes on. The disks are compared at
//! the cutover (when the new site asks the SDN controller to route the
//! VM's address to it, before the VM runs there: afterwards the guest
//! writes on and the disks part), the heartbeat goes on at the
//! destination, and the disk's bytes on the wire are at most a tenth of
//! what it holds. When the prices turn it comes back, and the memory A
//! kept when it left spares most of its RAM the wire.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use heliotrope::config::PlannerConfig;
use heliotrope::db::MIGRATOR;
use heliotrope::startup::Services;
use heliotrope_api_spec::QemuSpec;
use heliotrope_executor::qemu::guest::{self, heartbeats};
use heliotrope_executor::qemu::machine::command;
use heliotrope_tests::{link, prerequisite, spawn_with, wait_until, with, KillUnder, Processes};
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::plans::{flat_signals, site_at};
use crate::qemu::{compare_disks, ended, executor_with};

/// An SDN controller that, told of a move, compares the VM's disks at
/// both sites before it acknowledges (the VM is paused at the new site
/// until then); each comparison's outcome is recorded.
pub(crate) async fn comparing_controller(
    source: PathBuf,
    destination: PathBuf,
) -> (String, Arc<Mutex<Vec<Result<(), String>>>>) {
    let compared: Arc<Mutex<Vec<Result<(), String>>>> = Arc::default();
    let record = compared.clone();
    let router = axum::Router::new().route(
        "/moves",
        axum::routing::post(move |_: axum::Json<Value>| async move {
            let (source, destination) = (source.clone(), destination.clone());
            let outcome = tokio::task::spawn_blocking(move || compare_disks(&source, &destination)).await.unwrap();
            record.lock().unwrap().push(outcome);
            axum::http::StatusCode::NO_CONTENT
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/moves", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, compared)
}

/// Where `scripts/linux-guest` left the Linux test guest, or `None` (a
/// skip, said why; under CI a failure) where it is not built.
pub(crate) fn linux_guest() -> Option<PathBuf> {
    prerequisite("the Linux test guest", guest::built_linux_dir())
}

/// The guest's heartbeats in `dir` numbered above `after`, once there are
/// `n` of them, or what there is after `seconds`.
pub(crate) async fn heartbeats_after(dir: &Path, after: u64, n: usize, seconds: u32) -> Vec<(u64, String)> {
    let above = async || heartbeats(dir).into_iter().filter(|(k, _)| *k > after).collect::<Vec<_>>();
    let within = Duration::from_secs(seconds.into());
    let (Ok(seen) | Err(seen)) = wait_until(within, Duration::from_millis(500), above, |seen| seen.len() >= n).await;
    seen
}

/// The Linux guest run in `dir` as an operator runs it (its data disk a
/// copy there), once it writes: its spec and its QEMU.
async fn start_guest(guest: &Path, dir: &Path) -> (QemuSpec, tokio::process::Child) {
    std::fs::create_dir_all(dir).unwrap();
    let spec = guest::linux_spec(guest, &dir.join("disk0.qcow2")).unwrap();
    let qemu = command(&spec, dir, false).unwrap().kill_on_drop(true).spawn().unwrap();
    assert!(heartbeats_after(dir, 0, 3, 120).await.len() >= 3, "the guest came up and writes");
    (spec, qemu)
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_writing_linux_guest_moves_warm_to_its_standby_and_back_sending_little(pool: PgPool) {
    let Some(guest) = linux_guest() else { return };
    let planner = PlannerConfig { replication_interval_s: 5.0, ..PlannerConfig::default() };
    let app = spawn_with(pool, Services { planner, ..Services::driven() }).await;
    let mut sites = Vec::new();
    for (name, price, carbon) in [("A", 300.0, 400.0), ("C", 20.0, 50.0)] {
        let id = site_at(&app, name, "active").await;
        flat_signals(&app, id, price, carbon, "EUR").await;
        sites.push(id);
    }
    // A WAN-like link: 1 Gbit/s.
    let link = with(link("A", "C"), "/bandwidth_mbps", json!(1000.0));
    app.create("/v1/links", with(link, "/symmetric", json!(true))).await;

    let data = tempfile::tempdir().unwrap();
    let (source_dir, destination_dir) = (data.path().join("A/vms/linux"), data.path().join("C/vms/linux"));
    let _guests = KillUnder(data.path().to_owned());
    let (spec, _source) = start_guest(&guest, &source_dir).await;
    let allocated = guest::allocated_bytes(&source_dir.join("disk0.qcow2")).unwrap();

    // 64 vCPUs in the inventory (what it would cost to run: worth a move), 384 MiB as QEMU runs it.
    let vm = json!({"name": "linux", "site": "A", "vcpus": 64, "memory_gib": 0.375, "disk_gib": 2.0,
        "dirty_rate_mbps": 2.0, "max_downtime_ms": 5000, "driver": "qemu", "driver_spec": spec,
        "standby_sites": ["C"], "addresses": ["10.200.0.20"]});
    let id = app.create("/v1/vms", vm).await["id"].as_i64().unwrap();
    let (url, compared) = comparing_controller(source_dir.clone(), destination_dir.clone()).await;
    let flags = ["--network", "webhook", "--network-webhook", &url, "--network-webhook-timeout-s", "120"];
    let _executors = Processes(vec![
        executor_with(&app, "A", data.path(), &flags).await,
        executor_with(&app, "C", data.path(), &flags).await,
    ]);

    // The first sync (full) and a later one (what the guest wrote since).
    let path = format!("/v1/vms/{id}");
    let synced = |vm: &Value| vm["standbys"][0]["synced_at"].as_str().map(str::to_owned);
    let first = synced(&app.wait_for("the first sync", |vm| synced(vm).is_some(), &path).await);
    let later = |vm: &Value| synced(vm).is_some_and(|at| Some(at) != first);
    let vm = app.wait_for("a later sync", later, &path).await;
    assert_eq!(vm["standbys"][0]["synced_bytes"], 2u64 << 30, "{vm}");

    let applied = app.post("/v1/plans", json!({"dry_run": false})).await;
    assert_eq!(applied.body["moves"][0]["to"], "C", "{}", applied.body);
    let before = heartbeats(&source_dir).last().map_or(0, |(n, _)| *n);
    let migrations = app.wait_for("the migration ended", ended, "/v1/migrations").await;
    let migration = &migrations["items"][0];
    assert_eq!(migration["state"], "done", "{migration}");

    // Identical at the cutover (the new site routes the VM's address before it runs the VM, which
    // is after the scheduler records it done); running on at C.
    let done = async || !compared.lock().unwrap().is_empty();
    let _ = wait_until(Duration::from_secs(120), Duration::from_millis(500), done, |&done| done).await;
    assert_eq!(compared.lock().unwrap().as_slice(), &[Ok(())], "the disks at the cutover");
    // It runs on at C: its heartbeats (one a second) go on there.
    let at_destination = heartbeats_after(&destination_dir, 0, 2, 60).await;
    assert!(at_destination.len() >= 2, "the guest runs on at C: {at_destination:?}");
    let at_source = heartbeats(&source_dir);
    let last = at_source.last().map_or(0, |(n, _)| *n);
    assert!(last > before, "the guest wrote on while it moved: heartbeats {before} to {last}");
    let next = at_destination.first().map(|(n, _)| *n);
    assert!(next.is_some_and(|n| n > last && n <= last + 3), "heartbeats at C go on from {last}: {next:?}");
    let serial = std::fs::read_to_string(destination_dir.join("serial.log")).unwrap_or_default();
    assert!(!serial.contains("FAILED"), "{serial}");

    // The disk crossed mostly as references to the replica.
    let progress = &migration["progress"];
    let disk_wire = progress["disk_wire_bytes"].as_u64().unwrap();
    assert!(disk_wire * 10 <= allocated, "disk on the wire {disk_wire} of {allocated} allocated: {migration}");
    assert!(progress["saved_bytes"]["disk_cache"].as_u64().unwrap() > allocated / 2, "{migration}");
    assert!(progress["relayed_raw"].is_null(), "{migration}");

    // A kept the memory that left; the guest runs at C a while, then the prices turn and it
    // comes back: most of its memory is at A already.
    let kept = data.path().join("A/index/files.txt");
    let held = || std::fs::read_to_string(&kept).unwrap_or_default().contains("/memory/linux/");
    let _ = wait_until(Duration::from_secs(60), Duration::from_millis(500), async || held(), |&held| held).await;
    assert!(held(), "A keeps the memory that left it");
    tokio::time::sleep(Duration::from_secs(10)).await;
    flat_signals(&app, sites[0], 20.0, 50.0, "EUR").await;
    flat_signals(&app, sites[1], 300.0, 400.0, "EUR").await;
    let applied = app.post("/v1/plans", json!({"dry_run": false})).await;
    assert_eq!(applied.body["moves"][0]["to"], "A", "{}", applied.body);
    let path = format!("/v1/migrations?plan={}", applied.body["id"]);
    let migrations = app.wait_for("the return ended", ended, &path).await;
    let migration = &migrations["items"][0];
    assert_eq!(migration["state"], "done", "{migration}");
    // The guest wrote on at C while it moved, up to the cutover.
    let last_at_c = heartbeats(&destination_dir).last().map_or(0, |(n, _)| *n);
    let progress = &migration["progress"];
    let ram = 384u64 << 20;
    let memory_wire = progress["wire_bytes"].as_u64().unwrap() - progress["disk_wire_bytes"].as_u64().unwrap();
    assert!(memory_wire * 10 <= ram * 3, "memory on the wire {memory_wire} of {ram}: {migration}");
    let returning = progress["saved_bytes"]["returning"].as_u64().unwrap();
    assert!(returning * 2 >= ram, "memory that came back from A's image {returning} of {ram}: {migration}");
    let at_a = heartbeats_after(&source_dir, last_at_c, 1, 60).await;
    assert!(at_a.first().is_some_and(|(n, _)| *n <= last_at_c + 3), "heartbeats at A go on from {last_at_c}: {at_a:?}");
}

/// A site lost with the writing Linux guest on it: the running executors
/// kept its disk replicated at its standby; its executor and its QEMU die
/// at once and the site is failed. QEMU boots at the standby on a disk
/// made from the replica, crash-consistent: the guest mounts its ext4
/// filesystem (replaying its journal, as after a power cut) and writes on.
#[sqlx::test(migrator = "MIGRATOR")]
async fn a_lost_sites_linux_guest_boots_at_its_standby_from_its_replica(pool: PgPool) {
    let Some(guest) = linux_guest() else { return };
    let planner = PlannerConfig { replication_interval_s: 5.0, ..PlannerConfig::default() };
    let app = spawn_with(pool, Services { planner, ..Services::driven() }).await;
    let a = site_at(&app, "A", "active").await;
    site_at(&app, "B", "active").await;
    let link = with(link("A", "B"), "/bandwidth_mbps", json!(1000.0));
    app.create("/v1/links", with(link, "/symmetric", json!(true))).await;

    let data = tempfile::tempdir().unwrap();
    let (source_dir, restarted_dir) = (data.path().join("A/vms/linux"), data.path().join("B/vms/linux"));
    let _guests = KillUnder(data.path().to_owned());
    let (spec, mut source) = start_guest(&guest, &source_dir).await;
    let vm = json!({"name": "linux", "site": "A", "vcpus": 2, "memory_gib": 0.375, "disk_gib": 2.0,
        "dirty_rate_mbps": 2.0, "max_downtime_ms": 5000, "driver": "qemu", "driver_spec": spec,
        "standby_sites": ["B"], "addresses": ["10.200.0.30"]});
    let id = app.create("/v1/vms", vm).await["id"].as_i64().unwrap();
    let mut executors = Processes(vec![
        executor_with(&app, "A", data.path(), &[]).await,
        executor_with(&app, "B", data.path(), &[]).await,
    ]);
    let path = format!("/v1/vms/{id}");
    let synced = |vm: &Value| vm["standbys"][0]["synced_at"].as_str().map(str::to_owned);
    let first = synced(&app.wait_for("the first sync", |vm| synced(vm).is_some(), &path).await);
    let later = |vm: &Value| synced(vm).is_some_and(|at| Some(at) != first);
    app.wait_for("a later sync", later, &path).await;

    // The site is lost: its executor and the guest's QEMU die at once, mid-write.
    executors.0[0].kill().unwrap();
    executors.0[0].wait().unwrap();
    source.kill().await.unwrap();
    let failed = app.post(&format!("/v1/sites/{a}/fail"), json!({"reason": "power cut"})).await;
    assert_eq!(failed.status, 200, "{}", failed.body);
    assert_eq!(failed.body["vms"][0]["to"], "B", "{}", failed.body);
    let running = |r: &Value| r["vms"][0]["state"] == "running";
    let recovered = app.wait_for("it runs at B", running, &format!("/v1/sites/{a}/recovery")).await;
    assert!(recovered["vms"][0]["detail"].as_str().unwrap().contains("QEMU booted"), "{recovered}");
    assert_eq!(app.get(&path).await.body["site"], "B");

    // The guest boots on the replica's disk: it mounts its filesystem and writes on.
    let at_b = heartbeats_after(&restarted_dir, 0, 3, 180).await;
    let serial = std::fs::read_to_string(restarted_dir.join("serial.log")).unwrap_or_default();
    assert!(at_b.len() >= 3, "the guest runs at B: {serial}");
    assert!(serial.contains("ready") && !serial.contains("FAILED"), "{serial}");
    let runs = |page: &Value| page["items"][0]["running"] == json!(["linux"]);
    app.wait_for("B's executor says it runs it", runs, "/v1/executors?site=B").await;
}
