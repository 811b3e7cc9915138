//! The run worker's `qemu` side: a source adopts the VM's QEMU (or uses
//! the one it started when the VM migrated in), forwards QEMU's NBD and
//! memory connections through tunnels to the destination executor, and
//! drives the migration (`heliotrope_executor::qemu::migrate`) under the
//! job's cap, reporting `query-migrate` as progress; a destination starts
//! QEMU paused for the incoming migration with empty disks in the VM's
//! directory, and runs it once the scheduler has recorded the cutover.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use heliotrope_api_spec::{Assignment, MigrationState, ProgressReport, QemuSpec};
use heliotrope_executor::qemu::export::layout;
use heliotrope_executor::qemu::machine::{create_disk, Machine};
use heliotrope_executor::qemu::migrate::{
    announce, incoming_done, migrate_out, mirror_disks, prepare_incoming, start, MigrateError, MigrationOptions,
    QemuProgress, Steer,
};
use heliotrope_executor::ram_image::RamImage;
use heliotrope_executor::shaping::Shaper;
use heliotrope_executor::source::open_tunnel;
use heliotrope_executor::tls;
use heliotrope_executor::tunnel::nbd::Held;
use heliotrope_executor::tunnel::{Carrying, Forwarder, Peer, TunnelCounters, MIGRATION, NBD, PROBE};

use super::{decode_hex, lock, Confirmed, MemoryRelay, Worker};

/// QEMU VMs an executor runs, by VM name.
pub(super) type Machines = Mutex<HashMap<String, Arc<Machine>>>;

/// Memory channels of every qemu migration (both ends must agree).
const MULTIFD_CHANNELS: u8 = 2;

fn spec_of(a: &Assignment) -> anyhow::Result<QemuSpec> {
    serde_json::from_value(a.vm.driver_spec.clone()).context("the VM's driver_spec is not a qemu spec")
}

impl Worker {
    /// Where a job's sockets live.
    fn job_dir(&self, id: i64) -> anyhow::Result<PathBuf> {
        let dir = self.args.data_dir.join("jobs").join(id.to_string());
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// VM `name`'s QEMU: the one this executor runs, else adopted by its QMP socket.
    pub(super) async fn machine(&self, name: &str, spec: &QemuSpec) -> anyhow::Result<Arc<Machine>> {
        if let Some(machine) = lock(&self.machines).get(name).filter(|m| !m.qmp.is_closed()) {
            return Ok(machine.clone());
        }
        let dir = self.vm_dir(name);
        let socket = spec.qmp_socket.as_ref().map_or_else(|| dir.join("qmp.sock"), PathBuf::from);
        let machine = Arc::new(Machine::adopt(&socket, &dir).await.with_context(|| format!("adopting {name}"))?);
        lock(&self.machines).insert(name.to_owned(), machine.clone());
        Ok(machine)
    }

    /// What VM `vm`'s replica at `site` holds of each of its disks (nothing
    /// where it has none, or none synced yet).
    fn held_at(&self, vm: &str, site: &str, spec: &QemuSpec) -> Held {
        let Some(hashes) = self.replication.held(vm, site) else { return Held::default() };
        let (first, _) = layout(&spec.disks);
        let exports = spec.disks.iter().zip(first).map(|(d, first)| (d.node.clone(), (first, hashes.clone())));
        Held { exports: exports.collect() }
    }

    /// A fresh memory image for migration `id` of `vm`; none (the memory is
    /// not kept, the migration goes on) if it cannot be made.
    fn ram_image(&self, vm: &str, id: i64) -> Option<Arc<RamImage>> {
        match self.destination.new_ram_image(vm, id as u64) {
            Ok(image) => Some(image),
            Err(e) => {
                tracing::warn!(error = %e, "the migration's memory will not be kept");
                None
            }
        }
    }

    fn drop_ram_image(&self, image: Option<&RamImage>) {
        if let Some(image) = image {
            self.destination.drop_ram_image(image);
        }
    }

    /// Keeps the memory a migration carried in this site's chunk index, off
    /// the async runtime (every page is hashed); failing that, drops it.
    async fn keep_ram_image(&self, image: Option<Arc<RamImage>>) {
        let Some(image) = image else { return };
        let destination = self.destination.clone();
        let kept = tokio::task::spawn_blocking(move || {
            let kept = destination.keep_ram_image(&image);
            if kept.is_err() {
                destination.drop_ram_image(&image);
            }
            kept
        })
        .await;
        match kept {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the migration's memory is not kept"),
            Err(e) => tracing::warn!(error = %e, "keeping the migration's memory stopped"),
        }
    }

    /// Waits until the destination executor lets this job's tunnels through.
    async fn destination_ready(&self, peer: &Peer) -> anyhow::Result<()> {
        let mut last = String::new();
        for _ in 0..120 {
            let mut probe = tls::connect(&peer.address, peer.tls.as_ref()).await?;
            match open_tunnel(&mut probe, peer.job, &peer.secret, PROBE).await {
                Ok(()) => return Ok(()),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        anyhow::bail!("the destination never readied job {}: {last}", peer.job)
    }

    /// The source's side of a qemu migration.
    pub(super) async fn send_qemu(self: &Arc<Self>, a: &Assignment) -> anyhow::Result<()> {
        let id = a.migration.id;
        let spec = spec_of(a)?;
        let holding = self.hold_lease(id);
        let machine = self.machine(&a.migration.vm, &spec).await?;
        // Resolved now: the cutover is no time for a name lookup.
        let network_move = self.network_move(a).await;
        let cap = a.migration.cap_mbps.map(|mbps| mbps * 1e6 / 8.0);
        let shaper = Arc::new(Shaper::new(cap));
        let peer = Peer {
            address: a.peer_address.clone().context("a source assignment names its peer")?,
            tls: self.tls.clone(),
            job: id as u64,
            secret: decode_hex(&a.secret)?.into(),
        };
        self.report(
            id,
            &ProgressReport {
                state: Some(MigrationState::Transferring),
                ..qemu_report(&Default::default(), &Default::default(), &Default::default())
            },
        )
        .await?;
        self.destination_ready(&peer).await?;
        let dir = self.job_dir(id)?;
        let (nbd_socket, migration_socket) = (dir.join("nbd.sock"), dir.join("migration.sock"));
        let held = Arc::new(self.held_at(&a.migration.vm, &a.migration.to, &spec));
        let nbd = Forwarder::listen(
            &nbd_socket,
            peer.clone(),
            NBD,
            shaper.clone(),
            Carrying { held, ..Carrying::default() },
        )?;
        // What leaves is kept here: should the VM come back, most of its memory is here already.
        let image = self.ram_image(&a.migration.vm, id);
        let raw_memory = self.args.memory_relay == MemoryRelay::Raw;
        let carrying = Carrying { image: image.clone(), raw_memory, ..Carrying::default() };
        let memory = Forwarder::listen(&migration_socket, peer, MIGRATION, shaper.clone(), carrying)?;
        mirror_disks(&machine, &spec.disks, &nbd_socket, None, Duration::from_secs(3600)).await?;
        drop(holding);

        // QEMU is polled every 250 ms; the scheduler hears every second, in a task of its own.
        let (progress_tx, progress_rx) = tokio::sync::watch::channel(QemuProgress::default());
        let steer = Arc::new(Mutex::new(Steer { cap_bytes_per_s: cap, stop: false }));
        let reporting = {
            let steer = steer.clone();
            let (mut progress_rx, tunnels) = (progress_rx.clone(), (nbd.counters.clone(), memory.counters.clone()));
            async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let report = qemu_report(&progress_rx.borrow_and_update(), &tunnels.0, &tunnels.1);
                    match self.report(id, &report).await {
                        Ok(answer) => {
                            let mut steer = steer.lock().unwrap_or_else(|e| e.into_inner());
                            steer.cap_bytes_per_s = answer.cap_mbps.map(|mbps| mbps * 1e6 / 8.0);
                            steer.stop = answer.cancelled;
                            shaper.set_rate(steer.cap_bytes_per_s);
                        }
                        Err(e) => tracing::warn!(error = %format!("{e:#}"), "a progress report failed"),
                    }
                }
            }
        };
        let options = MigrationOptions {
            cap_bytes_per_s: cap,
            max_downtime_ms: u64::from(a.vm.max_downtime_ms),
            step: Duration::from_secs_f64(self.args.qemu_policy_step_s),
            multifd_channels: MULTIFD_CHANNELS,
        };
        let migrating = migrate_out(&machine, &spec.disks, options, &migration_socket, |p| {
            progress_tx.send_replace(p.clone());
            *steer.lock().unwrap_or_else(|e| e.into_inner())
        });
        let migrated = tokio::select! {
            migrated = migrating => migrated,
            () = reporting => unreachable!("reporting never ends"),
        };
        let migrated = match migrated {
            Err(MigrateError::Cancelled) => {
                tracing::info!("cancelled: the VM runs on here");
                self.drop_ram_image(image.as_deref());
                return Ok(());
            }
            Err(e) => {
                self.drop_ram_image(image.as_deref());
                return Err(e.into());
            }
            Ok(migrated) => migrated,
        };
        let downtime_s = migrated.progress.downtime_ms.map(|ms| ms as f64 / 1000.0);
        tracing::info!(?downtime_s, elapsed_s = migrated.elapsed.as_secs_f64(), "moved; cutover");
        let marker = self.cutover_marker(id);
        std::fs::write(&marker, b"")?;
        let final_progress = migrated.progress.clone();
        let progress_now = || qemu_report(&final_progress, &nbd.counters, &memory.counters);
        self.report(id, &ProgressReport { state: Some(MigrationState::Cutover), downtime_s, ..progress_now() }).await?;
        self.leave(&network_move).await;
        match self.await_confirmation(id, progress_now).await? {
            Confirmed::Done => {
                // Its replication holds the machine: it stops first, so that QEMU can be told to quit.
                self.replication.stop(&a.migration.vm).await;
                lock(&self.machines).remove(&a.migration.vm);
                if let Some(machine) = Arc::into_inner(machine) {
                    machine.quit().await;
                }
                drop(memory);
                self.keep_ram_image(image).await;
            }
            Confirmed::Ended(state) => {
                self.drop_ram_image(image.as_deref());
                self.stay(&network_move).await;
                start(&machine).await?;
                let _ = announce(&machine).await;
                tracing::info!(?state, "the migration did not end in a cutover: the VM runs on here");
            }
        }
        std::fs::remove_file(&marker)?;
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    /// The destination's side: QEMU paused for the incoming migration, its
    /// disks exported to the source's mirrors; run once `done` is recorded.
    pub(super) async fn receive_qemu(self: &Arc<Self>, a: &Assignment) -> anyhow::Result<()> {
        let id = a.migration.id;
        if !self.receiving.lock().unwrap_or_else(|e| e.into_inner()).insert(id) {
            return Ok(());
        }
        let outcome = self.receive_qemu_once(a).await;
        self.receiving.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        self.destination.forget_tunnels(id as u64);
        outcome
    }

    async fn receive_qemu_once(self: &Arc<Self>, a: &Assignment) -> anyhow::Result<()> {
        let id = a.migration.id;
        let mut spec = spec_of(a)?;
        let dir = self.vm_dir(&a.migration.vm);
        std::fs::create_dir_all(&dir)?;
        for disk in &mut spec.disks {
            let path = dir.join(format!("{}.{}", disk.node, disk.format));
            create_disk(&path, &disk.format, disk.size_bytes).await?;
            disk.path = path.display().to_string();
        }
        spec.qmp_socket = None;
        let machine = Machine::start(&spec, &dir, true).await?;
        let job = self.job_dir(id)?;
        let (nbd_socket, migration_socket) = (job.join("nbd.sock"), job.join("migration.sock"));
        prepare_incoming(&machine, &spec.disks, MULTIFD_CHANNELS, &migration_socket, &nbd_socket).await?;
        let secret = decode_hex(&a.secret)?;
        // Every byte of a qemu migration goes through the tunnels: no image is taken.
        self.destination.expect_images(id as u64, secret, Vec::new());
        self.destination.expect_tunnel(id as u64, NBD, &nbd_socket);
        // What arrives is kept here too: the VMs that run here share pages.
        let image = self.ram_image(&a.migration.vm, id);
        self.destination.expect_memory(id as u64, &migration_socket, image.clone());
        let received = async {
            incoming_done(&machine, &spec.disks, Duration::from_secs(3600)).await?;
            self.confirm_done(id).await
        };
        if let Err(e) = received.await {
            // Never started: the VM runs on at the source; what arrived is dropped.
            machine.quit().await;
            let _ = std::fs::remove_dir_all(&dir);
            self.drop_ram_image(image.as_deref());
            return Err(e);
        }
        let announce = async {
            announce(&machine).await?;
            Ok(Some("QEMU announce-self (5 rounds, 50 to 550 ms apart)".to_owned()))
        };
        let starting = async { Ok(start(&machine).await?) };
        self.arrive(&self.network_move(a).await, starting, announce).await?;
        tracing::info!("the VM runs here now");
        lock(&self.machines).insert(a.migration.vm.clone(), Arc::new(machine));
        self.keep_ram_image(image).await;
        let _ = std::fs::remove_dir_all(&job);
        Ok(())
    }

    /// After a crash: the VM runs at the destination, so the paused QEMU here goes.
    pub(super) async fn let_go_qemu(&self, a: &Assignment) {
        if let Ok(spec) = spec_of(a) {
            if let Ok(machine) = self.machine(&a.migration.vm, &spec).await {
                lock(&self.machines).remove(&a.migration.vm);
                if let Some(machine) = Arc::into_inner(machine) {
                    machine.quit().await;
                }
            }
        }
    }

    /// After a crash: the VM runs here; it resumes if the migration left it paused.
    pub(super) async fn resume_qemu(&self, a: &Assignment) -> anyhow::Result<()> {
        let machine = self.machine(&a.migration.vm, &spec_of(a)?).await?;
        start(&machine).await?;
        let _ = announce(&machine).await;
        Ok(())
    }
}

/// `query-migrate` as the scheduler is told it, with what the tunnels
/// carried: `disks` the mirrors' NBD connections, `memory` the migration
/// stream's. Raw bytes are what crossed plus what was kept off the wire.
fn qemu_report(p: &QemuProgress, disks: &TunnelCounters, memory: &TunnelCounters) -> ProgressReport {
    let eta_s = (p.bytes_per_s > 0.0).then(|| p.remaining as f64 / p.bytes_per_s);
    let disk_wire = disks.up() + disks.down();
    ProgressReport {
        state: None,
        raw_bytes: disks.raw_equivalent() + memory.raw_equivalent(),
        wire_bytes: disk_wire + memory.up() + memory.down(),
        round: u32::try_from(p.dirty_syncs).unwrap_or(u32::MAX),
        dirty_bytes_per_s: p.dirty_bytes_per_s,
        expected_downtime_s: p.expected_downtime_ms.map(|ms| ms as f64 / 1000.0),
        eta_s,
        downtime_s: p.downtime_ms.map(|ms| ms as f64 / 1000.0),
        saved_bytes: Some(disks.saved() + memory.saved()),
        disk_wire_bytes: Some(disk_wire),
        relayed_raw: disks.raw().or_else(|| memory.raw()),
    }
}
