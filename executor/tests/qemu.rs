//! The qemu driver against real QEMU (TCG, no KVM): the test guest (a boot
//! sector that rewrites ~99 MiB of its memory all the time) migrated live
//! with a 256 MiB qcow2 disk, every byte of QEMU's traffic carried between
//! two executor endpoints over TCP by the tunnels; a cap too low to
//! converge; a destination QEMU killed mid-way. Needs qemu-system-x86_64,
//! qemu-img, qemu-io and binutils (`scripts/test` installs them).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use heliotrope_api_spec::{QemuDisk, QemuSpec};
use heliotrope_executor::destination::Destination;
use heliotrope_executor::qemu::guest::boot_image;
use heliotrope_executor::qemu::machine::{create_disk, Machine};
use heliotrope_executor::qemu::migrate::{
    incoming_done, migrate_out, mirror_disks, prepare_incoming, start, MigrateError, MigrationOptions, Steer,
};
use heliotrope_executor::shaping::Shaper;
use heliotrope_executor::tunnel::{Forwarder, Peer, TunnelCounters};
use serde_json::json;
use tokio::net::TcpListener;

fn run(program: &str, args: &[&str], dir: &Path) {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{program} is needed for the qemu tests (scripts/test installs it): {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

const DISK: u64 = 256 << 20;

/// A 256 MiB qcow2 disk holding some data (a pattern and a few random extents).
fn disk(dir: &Path) -> PathBuf {
    run("qemu-img", &["create", "-q", "-f", "qcow2", "disk.qcow2", "256M"], dir);
    let mut commands = vec!["write -P 0x5a 128M 4M".to_owned()];
    for (i, at) in [3u64, 40, 77, 190, 230].iter().enumerate() {
        commands.push(format!("write -P 0x{:x} {at}M 2M", 0x10 + i));
    }
    for c in &commands {
        run("qemu-io", &["-f", "qcow2", "-c", c, "disk.qcow2"], dir);
    }
    dir.join("disk.qcow2")
}

fn spec(boot: &Path, disk: &Path) -> QemuSpec {
    QemuSpec {
        machine: "q35".into(),
        accel: "tcg".into(),
        memory_mib: 128,
        disks: vec![QemuDisk {
            node: "disk0".into(),
            path: disk.display().to_string(),
            format: "qcow2".into(),
            size_bytes: DISK,
        }],
        boot_image: Some(boot.display().to_string()),
        qmp_socket: None,
    }
}

/// Two executors' worth of plumbing on localhost: the destination's transfer
/// endpoint over TCP with the job's tunnel ends, the source's forwarders.
struct Sites {
    _dir: tempfile::TempDir,
    root: PathBuf,
    source: Machine,
    destination: Machine,
    spec: QemuSpec,
    target: QemuSpec,
    up: Arc<TunnelCounters>,
    nbd: Forwarder,
    migration: Forwarder,
    shaper: Arc<Shaper>,
}

const JOB: u64 = 42;

/// No cap, no stop.
const FULL: Steer = Steer { cap_bytes_per_s: None, stop: false };

async fn sites(cap: Option<f64>) -> Sites {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let (boot, disk) = (boot_image(&root).unwrap(), disk(&root));
    let spec = spec(&boot, &disk);
    let source = Machine::start(&spec, &root.join("source"), false).await.unwrap();

    // The destination: an empty disk of the same size, QEMU waiting for the migration.
    std::fs::create_dir_all(root.join("destination")).unwrap();
    let target_disk = root.join("destination/disk.qcow2");
    create_disk(&target_disk, "qcow2", DISK).await.unwrap();
    let mut target = spec.clone();
    target.disks[0].path = target_disk.display().to_string();
    let destination = Machine::start(&target, &root.join("destination"), true).await.unwrap();
    let (dst_migration, dst_nbd) = (root.join("destination/migration.sock"), root.join("destination/nbd.sock"));
    prepare_incoming(&destination, &target.disks, 2, &dst_migration, &dst_nbd).await.unwrap();

    // The destination executor: takes the job's tunnels to those two sockets.
    let secret: Arc<[u8]> = Arc::from(&[9u8; 32][..]);
    let endpoint = Destination::open(&root.join("destination-executor"), 1 << 30).unwrap();
    endpoint.expect(JOB, secret.to_vec());
    endpoint.expect_tunnel(JOB, "migration", &dst_migration);
    endpoint.expect_tunnel(JOB, "nbd", &dst_nbd);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let endpoint = endpoint.clone();
            tokio::spawn(async move { endpoint.serve_tcp(tcp, None).await });
        }
    });

    // The source executor: forwards QEMU's connections there, shaped to the cap.
    let peer = Peer { address, tls: None, job: JOB, secret };
    let shaper = Arc::new(Shaper::new(cap));
    let nbd = Forwarder::listen(&root.join("source/nbd.sock"), peer.clone(), "nbd", shaper.clone()).unwrap();
    let migration = Forwarder::listen(&root.join("source/migration.sock"), peer, "migration", shaper.clone()).unwrap();
    let up = migration.counters.clone();
    Sites { _dir: dir, root, source, destination, spec, target, up, nbd, migration, shaper }
}

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
    let s = sites(None).await;
    runs_on(&s.source, 10).await;
    let nbd_socket = s.root.join("source/nbd.sock");
    write_disk(&s.source, 0x66, 20).await;
    mirror_disks(&s.source, &s.spec.disks, &nbd_socket, Duration::from_secs(120)).await.unwrap();
    // Written while the mirror is ready: write-blocking carries it across.
    write_disk(&s.source, 0x77, 10).await;
    let options = MigrationOptions {
        cap_bytes_per_s: None,
        max_downtime_ms: 2000,
        step: Duration::from_secs(15),
        multifd_channels: 2,
    };
    let migrated = migrate_out(&s.source, &s.spec.disks, options, &s.root.join("source/migration.sock"), |_| FULL)
        .await
        .expect("migrated");
    assert_eq!(s.source.qmp.status().await.unwrap(), "postmigrate", "the source is paused for good");
    incoming_done(&s.destination, &s.target.disks, Duration::from_secs(30)).await.unwrap();
    assert_eq!(s.destination.qmp.status().await.unwrap(), "paused", "not running before it is told");
    start(&s.destination).await.unwrap();
    runs_on(&s.destination, 10).await;
    let downtime = migrated.progress.downtime_ms.expect("a measured downtime");
    assert!(downtime <= 2000, "{migrated:?}");
    // Every byte went through the tunnels: at least the guest's memory and the disk's data.
    assert!(s.up.up() > 100 << 20, "memory through the tunnels: {}", s.up.up());
    assert!(s.nbd.counters.up() > 14 << 20, "disk through the tunnels: {}", s.nbd.counters.up());
    s.source.quit().await;
    let (a, b) = (s.spec.disks[0].path.clone(), s.target.disks[0].path.clone());
    s.destination.quit().await;
    let compared = Command::new("qemu-img").args(["compare", "-U"]).arg(&a).arg(&b).output().unwrap();
    assert!(compared.status.success(), "{}", String::from_utf8_lossy(&compared.stdout));
    drop((s.migration, s.shaper));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cap_too_low_to_converge_runs_the_policy_and_leaves_the_vm_at_the_source() {
    // 20 MiB/s against ~99 MiB rewritten every few ms: it cannot converge within 300 ms.
    let s = sites(Some(20.0 * 1048576.0)).await;
    runs_on(&s.source, 10).await;
    mirror_disks(&s.source, &s.spec.disks, &s.root.join("source/nbd.sock"), Duration::from_secs(120)).await.unwrap();
    let options = MigrationOptions {
        cap_bytes_per_s: Some(20.0 * 1048576.0),
        max_downtime_ms: 300,
        step: Duration::from_secs(3),
        multifd_channels: 0,
    };
    let mut polls = 0;
    let outcome = migrate_out(&s.source, &s.spec.disks, options, &s.root.join("source/migration.sock"), |_| {
        polls += 1;
        Steer { cap_bytes_per_s: Some(20.0 * 1048576.0), stop: false }
    })
    .await;
    match outcome {
        Err(MigrateError::NotConverged(why)) => assert!(why.contains("300 ms"), "{why}"),
        Ok(m) => assert!(m.progress.downtime_ms.is_some_and(|d| d <= 300), "{m:?}"),
        Err(e) => panic!("{e}"),
    }
    assert!(polls > 4, "progress was reported");
    assert_eq!(s.source.qmp.status().await.unwrap(), "running", "the VM runs on at the source");
    runs_on(&s.source, 10).await;
    let _ = s.nbd;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_qemu_killed_mid_migration_leaves_the_vm_running_at_the_source() {
    let s = sites(Some(30.0 * 1048576.0)).await;
    runs_on(&s.source, 10).await;
    mirror_disks(&s.source, &s.spec.disks, &s.root.join("source/nbd.sock"), Duration::from_secs(120)).await.unwrap();
    let options = MigrationOptions {
        cap_bytes_per_s: Some(30.0 * 1048576.0),
        max_downtime_ms: 300,
        step: Duration::from_secs(30),
        multifd_channels: 0,
    };
    let pid = s.destination.pid().unwrap();
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    });
    let outcome = migrate_out(&s.source, &s.spec.disks, options, &s.root.join("source/migration.sock"), |_| FULL).await;
    killer.await.unwrap();
    assert!(outcome.is_err(), "{outcome:?}");
    assert_eq!(s.source.qmp.status().await.unwrap(), "running", "the VM runs on at the source");
    runs_on(&s.source, 10).await;
}
