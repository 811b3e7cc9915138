//! A migration's destination side, for both drivers: the destination
//! expects the job, then confirms the migration `done` once the source has
//! reported its cutover, and only then starts the VM here (its addresses
//! routed here first: `network`). A migration that ends otherwise leaves
//! the VM at the source, and what arrived here is dropped. A retry's claim
//! of a migration this executor receives already is the same work.
//!
//! A `sim` VM's images arrive through the transfer listener and are
//! sealed; a `qemu` VM's QEMU starts paused for the incoming migration
//! with empty disks in the VM's directory, exported to the source's
//! mirrors through the job's tunnels, and runs once `done` is recorded. A
//! `libvirt` domain's disks are made empty at their paths, libvirt brings
//! the domain paused through the same tunnels, and it runs once `done` is
//! recorded.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use heliotrope_api_spec::{Assignment, Completion, ErrorCode, MigrationState};
use heliotrope_executor::client::ClientError;
use heliotrope_executor::content::PAGE;
use heliotrope_executor::destination::Allowed;
use heliotrope_executor::libvirt::{self, DomainState};
use heliotrope_executor::precopy::{DISK_IMAGE, MEMORY_IMAGE};
use heliotrope_executor::qemu::machine::{create_disk, Machine};
use heliotrope_executor::qemu::migrate::{announce, incoming_done, prepare_incoming, start};
use heliotrope_executor::tunnel::{LIBVIRT, NBD};
use heliotrope_executor::wire::ImageKind;

use super::libvirt::spec_of as libvirt_spec_of;
use super::qemu::{spec_of, MULTIFD_CHANNELS};
use super::{decode_hex, lock, Worker};

impl Worker {
    /// The destination's side: expect the job; once both images are sealed
    /// and the scheduler records the migration done (after the source's
    /// cutover), start the VM here. Never before: a migration that ends
    /// otherwise leaves the VM at the source, and the images are dropped.
    pub(super) async fn receive(self: &Arc<Self>, a: &Assignment) -> anyhow::Result<()> {
        let id = a.migration.id;
        // The images of the VM the scheduler assigned, no larger.
        let image = |name: &str, gib: f64| Allowed {
            name: name.to_owned(),
            kind: ImageKind::Migration,
            max_pages: self.sim_bytes(gib) / PAGE as u64,
        };
        let images = vec![image(MEMORY_IMAGE, a.vm.memory_gib), image(DISK_IMAGE, a.vm.disk_gib)];
        self.destination.expect_images(id as u64, decode_hex(&a.secret)?, images);
        let Some(_receiving) = self.start_receiving(id) else { return Ok(()) };
        self.confirm_and_start(a).await
    }

    async fn confirm_and_start(self: &Arc<Self>, a: &Assignment) -> anyhow::Result<()> {
        let id = a.migration.id;
        let (memory, disk) =
            (self.destination.image_path(id as u64, MEMORY_IMAGE), self.destination.image_path(id as u64, DISK_IMAGE));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
        while !(memory.exists() && disk.exists()) {
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "the images never arrived");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if let Err(e) = self.confirm_done(id).await {
            let _ = std::fs::remove_file(&memory);
            let _ = std::fs::remove_file(&disk);
            return Err(e);
        }
        let dir = self.vm_dir(&a.migration.vm);
        std::fs::create_dir_all(&dir)?;
        std::fs::rename(&memory, dir.join(MEMORY_IMAGE))?;
        std::fs::rename(&disk, dir.join(DISK_IMAGE))?;
        // A sim guest has no NIC of its own to announce.
        self.arrive(&self.network_move(a).await, async { self.vm(a).map(drop) }, async { Ok(None) }).await?;
        tracing::info!("the VM runs here now");
        Ok(())
    }

    /// The destination's side: QEMU paused for the incoming migration, its
    /// disks exported to the source's mirrors; run once `done` is recorded.
    pub(super) async fn receive_qemu(self: &Arc<Self>, a: &Assignment) -> anyhow::Result<()> {
        self.through_tunnels(a.migration.id, self.receive_qemu_once(a)).await
    }

    /// Does `receiving` (the destination's side of migration `id`, whose
    /// bytes all come through its tunnels) unless this executor receives
    /// it already; its tunnels are let through no more once it ends.
    async fn through_tunnels(
        &self,
        id: i64,
        receiving: impl std::future::Future<Output = anyhow::Result<()>>,
    ) -> anyhow::Result<()> {
        let Some(mark) = self.start_receiving(id) else { return Ok(()) };
        let outcome = receiving.await;
        drop(mark);
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
            create_disk(&path, &disk.format, disk.size_bytes, None).await?;
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

    /// The destination's side of a libvirt migration: the domain's disks
    /// made empty at their paths, the job's tunnels let through to the
    /// sockets libvirt's QEMU will listen at and to this site's libvirt
    /// daemon; the domain arrives paused and runs once `done` is recorded.
    pub(super) async fn receive_libvirt(self: &Arc<Self>, a: &Assignment) -> anyhow::Result<()> {
        self.through_tunnels(a.migration.id, self.receive_libvirt_once(a)).await
    }

    async fn receive_libvirt_once(self: &Arc<Self>, a: &Assignment) -> anyhow::Result<()> {
        let id = a.migration.id;
        let spec = libvirt_spec_of(a)?;
        let uri = &self.args.libvirt_uri;
        let mut made = Vec::new();
        let mut image = None;
        let sockets = match libvirt::state(uri, &spec.domain).await? {
            // It arrived before this executor restarted: it waits for `done`.
            Some((DomainState::Paused, true)) => None,
            Some((state, _)) => anyhow::bail!("domain '{}' is defined here already ({state:?})", spec.domain),
            None => {
                for disk in &spec.disks {
                    let path = std::path::Path::new(&disk.path);
                    if let Some(parent) = path.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    // Made anew: a copy left from an earlier stay here would show through the copy.
                    let backing = disk.backing.as_deref().map(std::path::Path::new);
                    if let Err(e) = create_disk(path, &disk.format, disk.size_bytes, backing).await {
                        made.iter().for_each(|p| drop(std::fs::remove_file(p)));
                        return Err(e.into());
                    }
                    made.push(path.to_owned());
                }
                let sockets = self.libvirt_job(id)?;
                // Every byte goes through the tunnels: no image is taken.
                self.destination.expect_images(id as u64, decode_hex(&a.secret)?, Vec::new());
                self.destination.expect_tunnel(id as u64, NBD, &sockets.disks);
                self.destination.expect_tunnel(id as u64, LIBVIRT, &libvirt::daemon_socket(uri)?);
                // What arrives is kept here too: the VMs that run here share pages.
                image = self.ram_image(&a.migration.vm, id);
                self.destination.expect_memory(id as u64, &sockets.memory, image.clone());
                Some(sockets)
            }
        };
        if let Err(e) = self.confirm_done(id).await {
            // Not to run here. libvirt ended the incoming domain at the source's failure, and what was
            // made for it goes; but a domain that arrived all the same is never dropped with its disks.
            if let Ok(Some(_)) = libvirt::state(uri, &spec.domain).await {
                tracing::error!(domain = %spec.domain, "the migration ended otherwise, yet the domain is here, paused: it is kept for an operator");
                return Err(e);
            }
            for path in &made {
                let _ = std::fs::remove_file(path);
            }
            self.drop_ram_image(image.as_deref());
            return Err(e);
        }
        let starting = async { Ok(libvirt::resume(uri, &spec.domain).await?) };
        self.arrive(&self.network_move(a).await, starting, async { Ok(None) }).await?;
        tracing::info!(domain = %spec.domain, "the domain runs here now");
        self.keep_ram_image(image).await;
        drop(sockets);
        Ok(())
    }

    /// The destination's confirmation that the VM is here (once the source
    /// reported its cutover): `Ok` once the scheduler recorded `done`.
    async fn confirm_done(&self, id: i64) -> anyhow::Result<()> {
        let done = Completion { state: MigrationState::Done, detail: format!("runs at executor {}", self.executor) };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
        loop {
            let again = match self.scheduler.complete(id, self.executor, &done).await {
                Ok(_) => return Ok(()),
                // The source has not reported its cutover yet (or is being recovered, or retries).
                Err(ClientError::Refused { code: Some(ErrorCode::NotInCutover), .. }) => Duration::from_millis(250),
                // The scheduler out of reach, or failing: its answer is still to come.
                Err(ClientError::Transport { .. }) => Duration::from_secs(1),
                Err(ClientError::Refused { status, .. }) if status.is_server_error() => Duration::from_secs(1),
                Err(e) => return Err(anyhow::Error::from(e).context("the VM stays at the source")),
            };
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "the scheduler never recorded the migration done");
            tokio::time::sleep(again).await;
        }
    }

    /// Marks migration `id` as received here until the mark is dropped;
    /// none if it is already (a retry's claim of it is the same work).
    fn start_receiving(&self, id: i64) -> Option<Receiving<'_>> {
        if !lock(&self.receiving).insert(id) {
            return None;
        }
        Some(Receiving { receiving: &self.receiving, id })
    }
}

/// A migration this executor receives, marked as such until dropped.
struct Receiving<'a> {
    receiving: &'a Mutex<HashSet<i64>>,
    id: i64,
}

impl Drop for Receiving<'_> {
    fn drop(&mut self) {
        lock(self.receiving).remove(&self.id);
    }
}
