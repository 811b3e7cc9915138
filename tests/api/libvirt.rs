//! The libvirt driver end to end: a scheduler, two `heliotrope-executor
//! run --driver libvirt` processes, each beside its own libvirt daemon
//! (`scripts/libvirt-pair`: two daemons in mount namespaces standing in
//! for two hosts; each executor runs in its daemon's namespace, as it
//! would on its host), and the Linux test guest as a libvirt domain,
//! writing to its disk (an overlay over the base image every site holds).
//! A plan moves it live; libvirt migrates it with every stream through the
//! executors. A migration that cannot converge ends by the policy with the
//! domain running at the source. Needs root, libvirt and the Linux test
//! guest (`scripts/test` installs and builds them).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use heliotrope::db::MIGRATOR;
use heliotrope_api_spec::CopyStorage;
use heliotrope_executor::libvirt::pair::{define_and_start, domain_dir, domain_xml, libvirt_spec, Host, Pair};
use heliotrope_executor::libvirt::{self, DomainState};
use heliotrope_executor::qemu::guest::{heartbeats, linux_machine};
use heliotrope_tests::{link, prerequisite, spawn_app, wait_until, with, workspace_binary, Processes, TestApp};
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::plans::{flat_signals, site_at};
use crate::qemu::{ended, executor_as};
use crate::qemu_linux::{comparing_controller, heartbeats_after, linux_guest};

/// The domain's name, and where its disk is at either host.
const DOMAIN: &str = "linux";

/// Sites A (dear) and C (cheap), linked at `link_mbps`; the Linux guest
/// running at A's libvirt as an operator runs it; a libvirt executor per
/// site, run with `flags` besides, each logging to `data/<site>.log` and
/// telling an SDN controller of the VM's moves, which compares the disks
/// at both sites when it is told (at a cutover, the domain is paused at
/// the new site until then).
///
/// Dropped in this order (bindings of it in the reverse: locals drop last
/// first): the executors, then the daemons and their domains, then the
/// directory their trees are in (the pair is found by its pid files there).
struct Fleet {
    _executors: Processes,
    pair: Pair,
    app: TestApp,
    /// A's and C's view of the domain's directory, from here.
    source_dir: PathBuf,
    destination_dir: PathBuf,
    compared: Arc<Mutex<Vec<Result<(), String>>>>,
    data: tempfile::TempDir,
}

async fn fleet(pool: PgPool, link_mbps: f64, max_downtime_ms: u32, flags: &[&str]) -> Option<Fleet> {
    let guest = linux_guest()?;
    let data = tempfile::tempdir().unwrap();
    let pair = prerequisite("two libvirt daemons (scripts/libvirt-pair)", Pair::start(&data.path().join("pair")))?;
    let app = spawn_app(pool).await;
    for (name, price, carbon) in [("A", 300.0, 400.0), ("C", 20.0, 50.0)] {
        let id = site_at(&app, name, "active").await;
        flat_signals(&app, id, price, carbon, "EUR").await;
    }
    let link = with(link("A", "C"), "/bandwidth_mbps", json!(link_mbps));
    app.create("/v1/links", with(link, "/symmetric", json!(true))).await;

    // The guest at A: its disk an overlay over the base image every site holds.
    let inside = domain_dir(DOMAIN);
    let disk = inside.join("disk0.qcow2");
    let (source_dir, destination_dir) = (pair.a.outside(&inside), pair.b.outside(&inside));
    std::fs::create_dir_all(&source_dir).unwrap();
    let base = guest.join("data.qcow2");
    let made = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&base)
        .arg(source_dir.join("disk0.qcow2"))
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let machine = linux_machine(&guest, &disk);
    define_and_start(&pair.a.uri, &domain_xml(DOMAIN, &machine)).unwrap();
    assert!(heartbeats_after(&source_dir, 0, 3, 180).await.len() >= 3, "the guest came up and writes");

    let mut spec = libvirt_spec(DOMAIN, &machine, CopyStorage::Incremental);
    spec.disks[0].backing = Some(base.display().to_string());
    // 64 vCPUs in the inventory (what it would cost to run: worth a move), 384 MiB as libvirt runs it.
    let vm = json!({"name": DOMAIN, "site": "A", "vcpus": 64, "memory_gib": 0.375, "disk_gib": 2.0,
        "dirty_rate_mbps": 2.0, "max_downtime_ms": max_downtime_ms, "driver": "libvirt", "driver_spec": spec,
        "addresses": ["10.200.0.40"]});
    app.create("/v1/vms", vm).await;
    let (url, compared) = comparing_controller(source_dir.clone(), destination_dir.clone()).await;
    let flags =
        [&["--network", "webhook", "--network-webhook", &url, "--network-webhook-timeout-s", "120"], flags].concat();
    let flags = flags.as_slice();
    let executors = Processes(vec![
        executor(&app, &pair.a, "A", data.path(), flags).await,
        executor(&app, &pair.b, "C", data.path(), flags).await,
    ]);
    let online = |page: &Value| {
        page["items"].as_array().is_some_and(|e| e.len() == 2 && e.iter().all(|e| e["driver"] == "libvirt"))
    };
    app.wait_for("two libvirt executors", online, "/v1/executors").await;
    Some(Fleet { app, data, source_dir, destination_dir, compared, _executors: executors, pair })
}

/// A libvirt executor for `site` beside `host`'s daemon, in its mount namespace.
async fn executor(app: &TestApp, host: &Host, site: &str, data: &Path, flags: &[&str]) -> std::process::Child {
    let mut command = host.command(&workspace_binary("heliotrope-executor").display().to_string());
    let log = std::fs::File::create(data.join(format!("{site}.log"))).unwrap();
    command.stderr(log).env("RUST_LOG", "warn,heliotrope_executor=info");
    let driver = ["--driver", "libvirt", "--libvirt-uri", &host.uri];
    executor_as(command, app, site, data, &[&driver[..], flags].concat()).await
}

/// What the executors logged, for a failure's message.
fn logs(data: &Path) -> String {
    let log = |site: &str| std::fs::read_to_string(data.join(format!("{site}.log"))).unwrap_or_default();
    format!("--- A's executor\n{}--- C's executor\n{}", log("A"), log("C"))
}

/// A field `name=N` of the executor's log line that says `said`.
fn logged(log: &str, said: &str, name: &str) -> u64 {
    let line = log.lines().find(|line| line.contains(said)).unwrap_or_else(|| panic!("no '{said}' in {log}"));
    let at = line.find(&format!("{name}=")).unwrap_or_else(|| panic!("no {name} in {line}")) + name.len() + 1;
    line[at..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_libvirt_domain_moves_live_with_every_byte_through_the_executors(pool: PgPool) {
    // 1 Gbit/s, 5 s of downtime allowed: the writing guest converges.
    let Some(Fleet { data, compared, destination_dir, source_dir, app, pair, _executors }) =
        fleet(pool, 1000.0, 5000, &[]).await
    else {
        return;
    };
    let applied = app.post("/v1/plans", json!({"dry_run": false})).await;
    assert_eq!(applied.body["moves"][0]["to"], "C", "{}", applied.body);
    let before = heartbeats(&source_dir).last().map_or(0, |(n, _)| *n);
    let migrations = app.wait_for("the migration ended", ended, "/v1/migrations").await;
    let migration = &migrations["items"][0];
    assert_eq!(migration["state"], "done", "{migration}\n{}", logs(data.path()));
    let downtime = migration["progress"]["downtime_s"].as_f64().expect("the measured downtime");
    assert!(downtime > 0.0 && downtime < 5.0, "{migration}");

    // Identical while the domain waited paused at C for `done`; then it runs on at C.
    let done = async || !compared.lock().unwrap().is_empty();
    let _ = wait_until(Duration::from_secs(120), Duration::from_millis(500), done, |&done| done).await;
    assert_eq!(compared.lock().unwrap().as_slice(), &[Ok(())], "the disks at the cutover");
    let at_destination = heartbeats_after(&destination_dir, 0, 2, 60).await;
    assert!(at_destination.len() >= 2, "the guest runs on at C: {at_destination:?}");
    let last = heartbeats(&source_dir).last().map_or(0, |(n, _)| *n);
    assert!(last > before, "the guest wrote on while it moved: heartbeats {before} to {last}");
    let next = at_destination.first().map(|(n, _)| *n);
    assert!(next.is_some_and(|n| n > last && n <= last + 3), "heartbeats at C go on from {last}: {next:?}");

    // Persistent and running at C's libvirt, undefined at A's.
    assert_eq!(libvirt::state(&pair.b.uri, DOMAIN).await.unwrap(), Some((DomainState::Running, true)));
    assert_eq!(libvirt::state(&pair.a.uri, DOMAIN).await.unwrap(), None);

    // Every byte libvirt moved went through the executors' tunnels.
    let log = std::fs::read_to_string(data.path().join("A.log")).unwrap();
    let said = "moved; libvirt's switchover";
    let (memory, disk) = (logged(&log, said, "libvirt_memory_bytes"), logged(&log, said, "libvirt_disk_bytes"));
    let (tunnel_memory, tunnel_disk) =
        (logged(&log, said, "tunnel_memory_bytes"), logged(&log, said, "tunnel_disk_bytes"));
    assert!(memory > 0 && tunnel_memory >= memory, "memory: libvirt {memory}, tunnels {tunnel_memory}");
    assert!(disk > 0 && tunnel_disk >= disk, "disk: libvirt {disk}, tunnels {tunnel_disk}");
    assert!(logged(&log, said, "tunnel_control_bytes") > 0, "libvirt's control connection went through a tunnel");
    let progress = &migration["progress"];
    assert!(progress["wire_bytes"].as_u64().unwrap() > 0 && progress["relayed_raw"].is_null(), "{migration}");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_libvirt_migration_that_cannot_converge_ends_by_the_policy_with_the_domain_at_the_source(pool: PgPool) {
    // 100 Mbit/s: the 384 MiB of memory take 30 s a pass, and the policy gives each of its steps
    // (300 ms of downtime allowed: one) 2 s: it cannot converge.
    let Some(Fleet { data, destination_dir, source_dir, app, pair, _executors, .. }) =
        fleet(pool, 100.0, 300, &["--qemu-policy-step-s", "2"]).await
    else {
        return;
    };
    let applied = app.post("/v1/plans", json!({"dry_run": false})).await;
    assert_eq!(applied.body["moves"][0]["to"], "C", "{}", applied.body);
    let migrations = app.wait_for("the migration ended", ended, "/v1/migrations").await;
    let migration = &migrations["items"][0];
    assert_eq!(migration["state"], "failed", "{migration}\n{}", logs(data.path()));
    let detail = app.get(&format!("/v1/migrations/{}", migration["id"])).await.body;
    let failed = detail["events"].as_array().and_then(|events| events.iter().find(|e| e["to"] == "failed"));
    let why = failed.and_then(|e| e["detail"].as_str()).unwrap_or_default();
    assert!(why.contains("did not converge"), "{detail}");

    // It runs on at A, still defined there; C has no such domain, nor the disk made for it.
    assert_eq!(libvirt::state(&pair.a.uri, DOMAIN).await.unwrap(), Some((DomainState::Running, true)));
    assert_eq!(libvirt::state(&pair.b.uri, DOMAIN).await.unwrap(), None);
    let last = heartbeats(&source_dir).last().map_or(0, |(n, _)| *n);
    assert!(heartbeats_after(&source_dir, last, 2, 30).await.len() >= 2, "the guest runs on at A");
    let gone = async || !destination_dir.join("disk0.qcow2").exists();
    let (Ok(gone) | Err(gone)) = wait_until(Duration::from_secs(30), Duration::from_millis(500), gone, |&g| g).await;
    assert!(gone, "C dropped the disk it made for the domain");
}
