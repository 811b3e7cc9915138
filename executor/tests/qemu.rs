//! The qemu driver against real QEMU (TCG, no KVM): the test guest (a boot
//! sector that rewrites ~99 MiB of its memory all the time) migrated live
//! with a 256 MiB qcow2 disk, every byte of QEMU's traffic carried between
//! two executor endpoints over TCP by the tunnels; a cap too low to
//! converge; a destination QEMU killed mid-way; memory relayed raw. Needs qemu-system-x86_64,
//! qemu-img, qemu-io and binutils (`scripts/test` installs them).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use heliotrope_api_spec::QemuSpec;
use heliotrope_executor::destination::Destination;
use heliotrope_executor::qemu::guest::{self, boot_image, disk_with_data};
use heliotrope_executor::qemu::machine::Machine;
use heliotrope_executor::qemu::migrate::{
    incoming_done, migrate_out, mirror_disks, start, MigrateError, MigrationOptions, Steer,
};
use heliotrope_executor::qemu::pair::{MemoryWay, Pair, Route, CHANNELS};
use serde_json::json;

/// The guest with a 256 MiB disk holding data, its files in `root`.
fn spec(root: &Path) -> QemuSpec {
    let disk = root.join("disk0.qcow2");
    disk_with_data(&disk, 256).unwrap();
    guest::spec(&boot_image(root).unwrap(), &disk)
}

/// No cap, no stop.
const FULL: Steer = Steer { cap_bytes_per_s: None, stop: false };

const MIB: f64 = 1048576.0;

/// Waits until the guest has written `passes` more markers to its serial port.
async fn runs_on(machine: &Machine, passes: usize) {
    let before = machine.serial().len();
    for _ in 0..200 {
        if machine.serial().len() >= before + passes {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the guest in {} stopped: {} markers", machine.dir.display(), machine.serial().len());
}

/// A write to the source disk while the guest runs, as the guest would make it.
async fn write_disk(machine: &Machine, pattern: u8, at_mib: u64) {
    let command = format!("qemu-io drive-disk0 \"write -P 0x{pattern:x} {at_mib}M 1M\"");
    machine.qmp.execute("human-monitor-command", json!({"command-line": command})).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_guest_and_its_disk_migrate_live_through_the_executors() {
    let root = tempfile::tempdir().unwrap();
    let spec = spec(root.path());
    let p = Pair::start(root.path(), &spec, Route::Tunnelled { cap: None }).await.unwrap();
    runs_on(&p.source, 10).await;
    write_disk(&p.source, 0x66, 20).await;
    mirror_disks(&p.source, &spec.disks, &p.nbd_socket, None, Duration::from_secs(120)).await.unwrap();
    // Written while the mirror is ready: write-blocking carries it across.
    write_disk(&p.source, 0x77, 10).await;
    let options = MigrationOptions {
        cap_bytes_per_s: None,
        max_downtime_ms: 2000,
        step: Duration::from_secs(15),
        multifd_channels: CHANNELS,
    };
    let migrated = migrate_out(&p.source, &spec.disks, options, &p.migration_socket, |_| FULL).await.expect("migrated");
    assert_eq!(p.source.qmp.status().await.unwrap(), "postmigrate", "the source is paused for good");
    incoming_done(&p.destination, &p.target.disks, Duration::from_secs(30)).await.unwrap();
    assert_eq!(p.destination.qmp.status().await.unwrap(), "paused", "not running before it is told");
    start(&p.destination).await.unwrap();
    runs_on(&p.destination, 10).await;
    assert!(migrated.progress.downtime_ms.is_some_and(|d| d <= 2000), "{migrated:?}");
    // Every byte went through the tunnels: at least the guest's memory and the disk's data (their
    // patterns compressed on the way).
    let tunnels = p.tunnels.as_ref().unwrap();
    let memory = &tunnels.migration.counters;
    assert!(memory.raw_equivalent() > 100 << 20, "memory: {} {:?}", memory.up(), memory.saved());
    assert!(memory.saved().compression > memory.up(), "memory: {} {:?}", memory.up(), memory.saved());
    let (disk, saved) = (&tunnels.nbd.counters, tunnels.nbd.counters.saved());
    assert!(disk.up() + saved.zero + saved.compression > 12 << 20, "disk: {} {saved:?}", disk.up());
    assert!(saved.compression > 8 << 20, "disk: {saved:?}");
    let (a, b) = (spec.disks[0].path.clone(), p.target.disks[0].path.clone());
    Arc::into_inner(p.source).expect("nothing else holds the source").quit().await;
    p.destination.quit().await;
    let compared = Command::new("qemu-img").args(["compare", "-U", &a, &b]).output().unwrap();
    assert!(compared.status.success(), "{}", String::from_utf8_lossy(&compared.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cap_too_low_to_converge_runs_the_policy_and_leaves_the_vm_at_the_source() {
    // 20 MiB/s against ~99 MiB rewritten every few ms: it cannot converge within 300 ms.
    let root = tempfile::tempdir().unwrap();
    let spec = spec(root.path());
    let p = Pair::start(root.path(), &spec, Route::Tunnelled { cap: Some(20.0 * MIB) }).await.unwrap();
    runs_on(&p.source, 10).await;
    mirror_disks(&p.source, &spec.disks, &p.nbd_socket, None, Duration::from_secs(120)).await.unwrap();
    let options = MigrationOptions {
        cap_bytes_per_s: Some(20.0 * MIB),
        max_downtime_ms: 300,
        step: Duration::from_secs(3),
        multifd_channels: 0,
    };
    let mut polls = 0;
    let outcome = migrate_out(&p.source, &spec.disks, options, &p.migration_socket, |_| {
        polls += 1;
        Steer { cap_bytes_per_s: Some(20.0 * MIB), stop: false }
    })
    .await;
    match outcome {
        Err(MigrateError::NotConverged(why)) => assert!(why.contains("300 ms"), "{why}"),
        Ok(m) => assert!(m.progress.downtime_ms.is_some_and(|d| d <= 300), "{m:?}"),
        Err(e) => panic!("{e}"),
    }
    assert!(polls > 4, "progress was reported");
    assert_eq!(p.source.qmp.status().await.unwrap(), "running", "the VM runs on at the source");
    runs_on(&p.source, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_qemu_killed_mid_migration_leaves_the_vm_running_at_the_source() {
    let root = tempfile::tempdir().unwrap();
    let spec = spec(root.path());
    let p = Pair::start(root.path(), &spec, Route::Tunnelled { cap: Some(30.0 * MIB) }).await.unwrap();
    runs_on(&p.source, 10).await;
    mirror_disks(&p.source, &spec.disks, &p.nbd_socket, None, Duration::from_secs(120)).await.unwrap();
    let options = MigrationOptions {
        cap_bytes_per_s: Some(30.0 * MIB),
        max_downtime_ms: 300,
        step: Duration::from_secs(30),
        multifd_channels: 0,
    };
    let pid = p.destination.pid().unwrap();
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    });
    let outcome = migrate_out(&p.source, &spec.disks, options, &p.migration_socket, |_| FULL).await;
    killer.await.unwrap();
    assert!(outcome.is_err(), "{outcome:?}");
    assert_eq!(p.source.qmp.status().await.unwrap(), "running", "the VM runs on at the source");
    runs_on(&p.source, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_relayed_raw_when_forced_still_moves_the_guest() {
    // As with `--memory-relay raw` (or a stream the executor does not understand): the multifd
    // channels cross as they are, and the progress says so.
    let root = tempfile::tempdir().unwrap();
    let spec = spec(root.path());
    let source = Arc::new(Machine::start(&spec, &root.path().join("source"), false).await.unwrap());
    let endpoint = Destination::open(&root.path().join("destination-executor"), 1 << 30).unwrap();
    let raw = MemoryWay { raw: true, ..MemoryWay::default() };
    let route = Route::Tunnelled { cap: None };
    let p = Pair::to(source, &spec, root.path(), "destination", route, endpoint, raw).await.unwrap();
    runs_on(&p.source, 10).await;
    mirror_disks(&p.source, &spec.disks, &p.nbd_socket, None, Duration::from_secs(120)).await.unwrap();
    let options = MigrationOptions {
        cap_bytes_per_s: None,
        max_downtime_ms: 2000,
        step: Duration::from_secs(15),
        multifd_channels: CHANNELS,
    };
    migrate_out(&p.source, &spec.disks, options, &p.migration_socket, |_| FULL).await.expect("migrated");
    incoming_done(&p.destination, &p.target.disks, Duration::from_secs(30)).await.unwrap();
    start(&p.destination).await.unwrap();
    runs_on(&p.destination, 10).await;
    let memory = &p.tunnels.as_ref().unwrap().migration.counters;
    assert!(memory.raw().is_some_and(|why| why.contains("--memory-relay raw")), "{:?}", memory.raw());
    assert_eq!(memory.saved().total(), 0, "nothing referenced, nothing compressed");
    assert!(memory.up() > 100 << 20, "the guest's memory crossed whole: {}", memory.up());
}
