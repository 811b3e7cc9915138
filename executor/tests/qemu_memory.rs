//! Memory by reference, against real QEMU (TCG) and the Linux test guest
//! (`scripts/linux-guest`): the destination executor holds a copy of the
//! paused guest's memory, so nearly every page of the multifd channels
//! crosses as a reference and is rebuilt there; the destination's memory,
//! dumped with `pmemsave`, is then byte for byte the source's.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use heliotrope_executor::index::Holding;
use heliotrope_executor::qemu::guest::{self, heartbeats};
use heliotrope_executor::qemu::machine::Machine;
use heliotrope_executor::qemu::migrate::{incoming_done, migrate_out, mirror_disks, MigrationOptions, Steer};
use heliotrope_executor::qemu::pair::{Pair, Route, CHANNELS};
use serde_json::json;

/// Guest-physical memory `0..bytes` of `machine`, dumped to `path`.
async fn pmemsave(machine: &Machine, bytes: u64, path: &Path) -> Vec<u8> {
    let arguments = json!({"val": 0, "size": bytes, "filename": path.display().to_string()});
    machine.qmp.execute_within("pmemsave", arguments, Duration::from_secs(60)).await.unwrap();
    std::fs::read(path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_linux_guest_is_rebuilt_from_references_byte_for_byte() {
    let Some(guest) = guest::linux_dir_for_test() else { return };
    let root = tempfile::tempdir().unwrap();
    let spec = guest::linux_spec(&guest, &root.path().join("disk0.qcow2")).unwrap();
    let p = Pair::start(root.path(), &spec, Route::Tunnelled { cap: None }).await.unwrap();
    let source_dir = root.path().join("source");
    for _ in 0..240 {
        if heartbeats(&source_dir).len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(heartbeats(&source_dir).len() >= 3, "the guest came up");
    p.source.qmp.execute("stop", json!({})).await.unwrap();
    let ram = spec.memory_mib << 20;
    let before = pmemsave(&p.source, ram, &root.path().join("before.mem")).await;

    // The destination holds that memory (as a site holds a VM's image when it comes back).
    let tunnels = p.tunnels.as_ref().unwrap();
    tunnels.endpoint.hold(&root.path().join("before.mem"), Holding::Image).unwrap();
    mirror_disks(&p.source, &spec.disks, &p.nbd_socket, None, Duration::from_secs(300)).await.unwrap();
    let options = MigrationOptions {
        cap_bytes_per_s: None,
        max_downtime_ms: 5000,
        step: Duration::from_secs(60),
        multifd_channels: CHANNELS,
    };
    let full = Steer { cap_bytes_per_s: None, stop: false };
    migrate_out(&p.source, &spec.disks, options, &p.migration_socket, |_| full).await.expect("migrated");
    incoming_done(&p.destination, &p.target.disks, Duration::from_secs(60)).await.unwrap();
    let after = pmemsave(&p.destination, ram, &root.path().join("after.mem")).await;
    assert_eq!(before.len(), after.len());
    let differing = before.chunks(4096).zip(after.chunks(4096)).filter(|(a, b)| a != b).count();
    assert_eq!(differing, 0, "pages of the destination's memory differ from the source's");

    // Nearly every page that was not zero came from the destination's copy.
    let memory = &tunnels.migration.counters;
    let saved = memory.saved();
    let nonzero = before.chunks(4096).filter(|page| page.iter().any(|&b| b != 0)).count() as u64 * 4096;
    assert!(saved.dedup * 10 >= nonzero * 9, "{saved:?} of {nonzero} bytes not zero");
    assert!(memory.up() * 10 < nonzero, "{} bytes crossed for {nonzero}", memory.up());
    assert_eq!(memory.raw(), None);
    let source = Arc::into_inner(p.source).expect("nothing else holds the source");
    source.quit().await;
    p.destination.quit().await;
}
