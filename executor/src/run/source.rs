//! A migration's source side, for both drivers: the source holds the
//! migration's lease (a progress report every second, whose answer may
//! change the cap or cancel), migrates the VM live, reports its cutover,
//! then waits for the destination to confirm; if it never does, the source
//! rolls the migration back and the VM runs on here. A failure before the
//! cutover is reported as such. After a crash, the source's executor says
//! where a recovering migration's VM runs, by the cutover marker it left.
//!
//! A `sim` VM's memory and disk cross as two sessions of the transfer
//! stack (`heliotrope_executor::precopy`). A `qemu` VM's QEMU is adopted
//! (or the one started when the VM migrated in is used); its NBD and
//! memory connections are forwarded through tunnels to the destination
//! executor, and the migration is driven (`heliotrope_executor::qemu::migrate`)
//! under the job's cap, `query-migrate` reported as progress. A `libvirt`
//! domain is migrated by libvirt (`heliotrope_executor::libvirt`) with the
//! same tunnels, plus one for libvirt's control connection; libvirt's job
//! statistics are reported as progress.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use heliotrope_api_spec::{
    Assignment, Completion, Driver, MigrationState, ProgressAnswer, ProgressReport, QemuSpec, RecoveryReport, VmRunsAt,
};
use heliotrope_executor::client::ClientError;
use heliotrope_executor::libvirt::{self, DomainState, Outgoing};
use heliotrope_executor::network::NetworkMove;
use heliotrope_executor::precopy::{migrate_vm, PrecopyOptions, MEMORY_IMAGE};
use heliotrope_executor::qemu::export::layout;
use heliotrope_executor::qemu::migrate::{
    announce, migrate_out, mirror_disks, start, MigrateError, Migrated, MigrationOptions, QemuProgress, Steer,
};
use heliotrope_executor::ram_image::RamImage;
use heliotrope_executor::shaping::Shaper;
use heliotrope_executor::source::{open_tunnel, SendOptions, Session};
use heliotrope_executor::tls::{self, Connection};
use heliotrope_executor::transfer::{choose_level, Progress, TransferError};
use heliotrope_executor::tunnel::nbd::Held;
use heliotrope_executor::tunnel::{Carrying, Forwarder, Peer, TunnelCounters, LIBVIRT, MIGRATION, NBD, PROBE};

use super::libvirt::{spec_of as libvirt_spec_of, JobSockets};
use super::qemu::{spec_of, MULTIFD_CHANNELS};
use super::{decode_hex, lock, MemoryRelay, Worker};

/// How long a source waits after its cutover for the destination to
/// confirm the VM runs there, before it rolls back and resumes the VM.
const CONFIRM_WAIT: Duration = Duration::from_secs(120);

impl Worker {
    /// Reports migration `id`'s progress, which keeps its lease; the answer may change the cap or cancel.
    async fn report(&self, id: i64, report: &ProgressReport) -> anyhow::Result<ProgressAnswer> {
        Ok(self.scheduler.report_progress(id, self.executor, report).await?)
    }

    /// Keeps migration `id`'s lease with a report every 5 s until dropped,
    /// while the source prepares (it reports progress itself from then on).
    fn hold_lease(&self, id: i64) -> AbortOnDrop {
        let (scheduler, executor) = (self.scheduler.clone(), self.executor);
        AbortOnDrop(tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let report = sim_report(&Progress::default(), 1.0);
                if let Err(e) = scheduler.report_progress(id, executor, &report).await {
                    tracing::warn!(error = %format!("{e:#}"), "holding the lease failed");
                }
            }
        }))
    }

    /// After the cutover: reports until the destination has confirmed (the
    /// scheduler records `done`). If it never does within `CONFIRM_WAIT`,
    /// rolls the migration back where the source still holds the VM
    /// (`Holds::Paused`): the scheduler records it, after which it refuses
    /// the destination's confirmation, so only one copy ever runs. Where it
    /// does not (`Holds::Nothing`), it waits on for the destination.
    async fn await_confirmation(
        &self,
        id: i64,
        holds: Holds,
        progress: impl Fn() -> ProgressReport,
    ) -> anyhow::Result<Confirmed> {
        let confirm_by = tokio::time::Instant::now() + CONFIRM_WAIT;
        let mut warned = false;
        loop {
            let answer = self.report(id, &progress()).await?;
            match answer.state {
                MigrationState::Done => return Ok(Confirmed::Done),
                other if answer.cancelled => return Ok(Confirmed::Ended(other)),
                _ if tokio::time::Instant::now() >= confirm_by && holds == Holds::Nothing => {
                    if !warned {
                        tracing::warn!("the destination has not confirmed; the VM waits there, paused");
                        warned = true;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                _ if tokio::time::Instant::now() >= confirm_by => {
                    let back = Completion {
                        state: MigrationState::RolledBack,
                        detail: format!("the destination did not confirm within {} s", CONFIRM_WAIT.as_secs()),
                    };
                    // Refused if the confirmation came in meanwhile: the next report says done.
                    if self.scheduler.complete(id, self.executor, &back).await.is_ok() {
                        tracing::warn!("{}; the VM runs on here", back.detail);
                        return Ok(Confirmed::Ended(MigrationState::RolledBack));
                    }
                }
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    /// Reports that migration `a` failed here with `e` (before its
    /// cutover): the VM runs on here, and so do its addresses.
    pub(super) async fn report_failure(&self, a: &Assignment, e: &anyhow::Error) {
        let failed = Completion { state: MigrationState::Failed, detail: format!("{e:#}") };
        match self.scheduler.complete(a.migration.id, self.executor, &failed).await {
            Ok(_) => self.stay(&self.network_move(a).await).await,
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "reporting the failure failed"),
        }
    }

    /// The first MiB of a VM's memory here, to measure compression on.
    fn sample(&self, vm: &str) -> anyhow::Result<Vec<u8>> {
        use std::io::Read;
        let mut sample = Vec::with_capacity(1 << 20);
        std::fs::File::open(self.vm_dir(vm).join(MEMORY_IMAGE))?.take(1 << 20).read_to_end(&mut sample)?;
        Ok(sample)
    }

    /// Where the source remembers, across a crash, that it reported migration `id`'s cutover.
    fn cutover_marker(&self, id: i64) -> PathBuf {
        self.args.data_dir.join(format!("cutover-{id}"))
    }

    /// The source's side: migrate the VM live, reporting progress; let go of it once the destination confirms.
    pub(super) async fn send(self: &Arc<Self>, a: &Assignment) -> anyhow::Result<()> {
        let id = a.migration.id;
        // Making a sim VM's images may take a while on a busy machine: the lease must not run out meanwhile.
        let holding = self.hold_lease(id);
        let vm = self.vm(a)?;
        // Resolved now: the cutover is no time for a name lookup.
        let network_move = self.network_move(a).await;
        drop(holding);
        let cap = a.migration.cap_mbps.map(|mbps| mbps * 1e6 / 8.0);
        // Compression as strong as keeps ahead of the cap, measured on this VM's memory.
        let level = choose_level(&self.sample(&a.migration.vm)?, cap);
        let shaper = Arc::new(Shaper::new(cap));
        // Where this executor replicates to the same site, the migration takes its share of the link
        // and replication yields to it.
        let slot = self.replication.migration_slot(&a.migration.to, cap);
        let shapers = match &slot {
            Some(slot) => slot.shapers(),
            None => vec![shaper.clone()],
        };
        let set_cap = |cap: Option<f64>| match &slot {
            Some(slot) => slot.set_cap(cap.unwrap_or(f64::INFINITY)),
            None => shaper.set_rate(cap),
        };
        let (memory_progress, memory_watch) = tokio::sync::watch::channel(Progress::default());
        let (disk_progress, disk_watch) = tokio::sync::watch::channel(Progress::default());
        let scale = self.args.sim_mib_per_gib / 1024.0;
        let progress_now = || sim_report(&memory_watch.borrow().and(&disk_watch.borrow()), scale);
        let options = |progress| Arc::new(SendOptions { level, shapers: shapers.clone(), progress: Some(progress) });
        self.report(
            id,
            &ProgressReport { state: Some(MigrationState::Transferring), ..sim_report(&Progress::default(), scale) },
        )
        .await?;
        let mut memory = self.session(a, &options(memory_progress)).await?;
        let mut disk = self.session(a, &options(disk_progress)).await?;
        let precopy = PrecopyOptions { max_downtime_s: f64::from(a.vm.max_downtime_ms) / 1000.0, budget_s: 600.0 };
        let moved = {
            let migrating = migrate_vm(&mut memory, Some(&mut disk), &vm, &precopy);
            tokio::pin!(migrating);
            // Progress every second; an answer may change the cap or say stop.
            loop {
                tokio::select! {
                    moved = &mut migrating => break moved,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {
                        let answer = self.report(id, &progress_now()).await?;
                        if answer.cancelled {
                            vm.resume();
                            tracing::info!("cancelled: the VM runs on here");
                            return Ok(());
                        }
                        set_cap(answer.cap_mbps.map(|mbps| mbps * 1e6 / 8.0));
                    }
                }
            }
        };
        let report = moved?;
        tracing::info!(downtime_ms = report.downtime_s * 1000.0, rounds = report.rounds, "moved; cutover");
        // Remembered across a crash: from here on the destination holds the VM.
        let marker = self.cutover_marker(id);
        std::fs::write(&marker, b"")?;
        let at_cutover = ProgressReport {
            state: Some(MigrationState::Cutover),
            downtime_s: Some(report.downtime_s),
            ..progress_now()
        };
        self.report(id, &at_cutover).await?;
        self.leave(&network_move).await;
        if let Confirmed::Ended(state) = self.await_confirmation(id, Holds::Paused, progress_now).await? {
            self.stay(&network_move).await;
            vm.resume();
            std::fs::remove_file(&marker)?;
            if state == MigrationState::RolledBack {
                return Ok(());
            }
            anyhow::bail!("the migration ended as {state:?} after cutover");
        }
        drop(vm);
        let vm = lock(&self.running).remove(&a.migration.vm);
        if let Some(vm) = vm.and_then(Arc::into_inner) {
            vm.destroy()?;
        }
        std::fs::remove_file(&marker)?;
        Ok(())
    }

    /// A session of the transfer stack to migration `a`'s destination,
    /// once the destination expects the job.
    async fn session(
        &self,
        a: &Assignment,
        options: &Arc<SendOptions>,
    ) -> anyhow::Result<Session<Box<dyn Connection>>> {
        let peer = a.peer_address.as_deref().context("a source assignment names its peer")?;
        let secret = decode_hex(&a.secret)?;
        // The destination learns the job's secret when it claims its side: until then it refuses.
        let mut last = None;
        for _ in 0..60 {
            let mut streams = Vec::new();
            for _ in 0..self.args.streams {
                streams.push(
                    tls::connect(peer, self.tls.as_ref()).await.with_context(|| format!("connecting to {peer}"))?,
                );
            }
            match Session::open(streams, a.migration.id as u64, &secret, options.clone()).await {
                Ok(session) => return Ok(session),
                Err(TransferError::NotExpected) => {
                    last = Some(TransferError::NotExpected.to_string());
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        anyhow::bail!("the destination never took job {}: {}", a.migration.id, last.unwrap_or_default())
    }

    /// Where migration `a`'s tunnels go: the destination executor, with the job's secret.
    pub(super) fn peer(&self, a: &Assignment) -> anyhow::Result<Peer> {
        Ok(Peer {
            address: a.peer_address.clone().context("a source assignment names its peer")?,
            tls: self.tls.clone(),
            job: a.migration.id as u64,
            secret: decode_hex(&a.secret)?.into(),
        })
    }

    /// How a live migration of a real guest (`qemu` or `libvirt`) may go under cap `cap` (bytes/s).
    pub(super) fn migration_options(&self, a: &Assignment, cap: Option<f64>) -> MigrationOptions {
        MigrationOptions {
            cap_bytes_per_s: cap,
            max_downtime_ms: u64::from(a.vm.max_downtime_ms),
            step: Duration::from_secs_f64(self.args.qemu_policy_step_s),
            multifd_channels: MULTIFD_CHANNELS,
        }
    }

    /// After a real guest's migration `id` moved it: remembers the cutover
    /// across a crash (its marker, which the caller removes at the end),
    /// reports it with what the `disks` and `memory` tunnels carried, lets
    /// the VM's addresses go and waits for the destination's confirmation.
    async fn cut_over(
        self: &Arc<Self>,
        id: i64,
        migrated: &Migrated,
        (disks, memory): (&Forwarder, &Forwarder),
        network_move: &NetworkMove,
        holds: Holds,
    ) -> anyhow::Result<Confirmed> {
        std::fs::write(self.cutover_marker(id), b"")?;
        let downtime_s = migrated.progress.downtime_ms.map(|ms| ms as f64 / 1000.0);
        let progress_now = || qemu_report(&migrated.progress, &disks.counters, &memory.counters);
        let cutover = ProgressReport { state: Some(MigrationState::Cutover), downtime_s, ..progress_now() };
        // Once it moved, a report that does not cross must not end it as failed: asked again while
        // the lease lasts (after that, a recovery reads the marker).
        let mut tries = 0;
        while let Err(e) = self.report(id, &cutover).await {
            let unreached = matches!(e.downcast_ref::<ClientError>(), Some(ClientError::Transport { .. }));
            if !unreached || tries >= 30 {
                return Err(e);
            }
            tries += 1;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        self.leave(network_move).await;
        self.await_confirmation(id, holds, progress_now).await
    }

    /// Runs migration `id`'s `migrating` (a real guest's, steered by
    /// `steering`) while reporting its progress with what the tunnels
    /// carried; `None` if it was cancelled (the VM runs on here). Unless it
    /// moved, the memory `image` it carried is dropped.
    async fn steered<T>(
        &self,
        id: i64,
        steering: &Steering,
        (shaper, disks, memory): (&Shaper, &Forwarder, &Forwarder),
        image: Option<&RamImage>,
        migrating: impl std::future::Future<Output = Result<T, MigrateError>>,
    ) -> anyhow::Result<Option<T>> {
        let migrated = tokio::select! {
            migrated = migrating => migrated,
            () = steering.report(self, id, shaper, disks, memory) => unreachable!("reporting never ends"),
        };
        if migrated.is_err() {
            self.drop_ram_image(image);
        }
        match migrated {
            Ok(migrated) => Ok(Some(migrated)),
            Err(MigrateError::Cancelled) => {
                tracing::info!("cancelled: the VM runs on here");
                Ok(None)
            }
            Err(e) => Err(e.into()),
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
        let peer = self.peer(a)?;
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

        let steering = Steering::new(cap);
        let options = self.migration_options(a, cap);
        let migrating = migrate_out(&machine, &spec.disks, options, &migration_socket, |p| steering.steer(p));
        let tunnels = (&*shaper, &nbd, &memory);
        let Some(migrated) = self.steered(id, &steering, tunnels, image.as_deref(), migrating).await? else {
            return Ok(());
        };
        tracing::info!(downtime_ms = ?migrated.progress.downtime_ms, elapsed_s = migrated.elapsed.as_secs_f64(), "moved; cutover");
        match self.cut_over(id, &migrated, (&nbd, &memory), &network_move, Holds::Paused).await? {
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
        std::fs::remove_file(self.cutover_marker(id))?;
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    /// The source's side of a libvirt migration: libvirt migrates the
    /// domain (`virDomainMigrate3`), every stream through this job's
    /// tunnels; the domain waits paused at the destination for `done`.
    pub(super) async fn send_libvirt(self: &Arc<Self>, a: &Assignment) -> anyhow::Result<()> {
        let id = a.migration.id;
        let spec = libvirt_spec_of(a)?;
        let uri = &self.args.libvirt_uri;
        let holding = self.hold_lease(id);
        // Checked before anything moves: the domain runs here, and its disks are the spec's.
        match libvirt::state(uri, &spec.domain).await? {
            Some((DomainState::Running, _)) => {}
            Some((state, _)) => anyhow::bail!("domain '{}' is {state:?} here, not running", spec.domain),
            None => anyhow::bail!("no domain '{}' at this site's libvirt", spec.domain),
        }
        let targets: Vec<String> = spec.disks.iter().map(|d| d.target.clone()).collect();
        let sizes = libvirt::disk_sizes(uri, &spec.domain, targets.clone()).await?;
        for (disk, size) in spec.disks.iter().zip(sizes) {
            anyhow::ensure!(
                size == disk.size_bytes,
                "disk {} of '{}' is {size} bytes, its driver_spec says {}",
                disk.target,
                spec.domain,
                disk.size_bytes
            );
        }
        // Resolved now: the cutover is no time for a name lookup.
        let network_move = self.network_move(a).await;
        let cap = a.migration.cap_mbps.map(|mbps| mbps * 1e6 / 8.0);
        let shaper = Arc::new(Shaper::new(cap));
        let peer = self.peer(a)?;
        let transferring = qemu_report(&Default::default(), &Default::default(), &Default::default());
        self.report(id, &ProgressReport { state: Some(MigrationState::Transferring), ..transferring }).await?;
        self.destination_ready(&peer).await?;
        let sockets = self.libvirt_job(id)?;
        let nbd = Forwarder::listen(&sockets.disks, peer.clone(), NBD, shaper.clone(), Carrying::default())?;
        // What leaves is kept here: should the VM come back, most of its memory is here already.
        let image = self.ram_image(&a.migration.vm, id);
        let raw_memory = self.args.memory_relay == MemoryRelay::Raw;
        let carrying = Carrying { image: image.clone(), raw_memory, ..Carrying::default() };
        let memory = Forwarder::listen(&sockets.memory, peer.clone(), MIGRATION, shaper.clone(), carrying)?;
        // libvirt's own calls are not the guest's bytes: not shaped.
        let unshaped = Arc::new(Shaper::new(None));
        let control = Forwarder::listen(&sockets.control, peer, LIBVIRT, unshaped, Carrying::default())?;
        drop(holding);

        let out = Outgoing {
            source_uri: uri.clone(),
            destination_uri: libvirt::through(&sockets.control),
            domain: spec.domain.clone(),
            disks: targets,
            copy_storage: spec.copy_storage,
            memory_uri: JobSockets::uri(&sockets.memory),
            disks_uri: JobSockets::uri(&sockets.disks),
        };
        let steering = Steering::new(cap);
        let migrating = libvirt::migrate_out(&out, self.migration_options(a, cap), |p| steering.steer(p));
        let tunnels = (&*shaper, &nbd, &memory);
        let Some(moved) = self.steered(id, &steering, tunnels, image.as_deref(), migrating).await? else {
            return Ok(());
        };
        let migrated = &moved.migrated;
        // Every byte libvirt moved crossed the tunnels (as it is, or kept off the wire by them).
        tracing::info!(
            downtime_ms = ?migrated.progress.downtime_ms,
            elapsed_s = migrated.elapsed.as_secs_f64(),
            libvirt_memory_bytes = moved.memory_bytes,
            libvirt_disk_bytes = moved.disk_bytes,
            tunnel_memory_bytes = memory.counters.raw_equivalent(),
            tunnel_disk_bytes = nbd.counters.raw_equivalent(),
            tunnel_control_bytes = control.counters.up() + control.counters.down(),
            "moved; libvirt's switchover"
        );
        // libvirt ended the domain here at its switchover: there is nothing to roll back to.
        match self.cut_over(id, migrated, (&nbd, &memory), &network_move, Holds::Nothing).await? {
            Confirmed::Done => {
                drop(memory);
                self.keep_ram_image(image).await;
            }
            Confirmed::Ended(state) => {
                self.drop_ram_image(image.as_deref());
                tracing::error!(?state, domain = %spec.domain, "the migration ended after libvirt's switchover: the domain waits paused at the destination");
            }
        }
        std::fs::remove_file(self.cutover_marker(id))?;
        Ok(())
    }

    /// What VM `vm`'s replica at `site` holds of each of its disks (nothing
    /// where it has none, or none synced yet).
    fn held_at(&self, vm: &str, site: &str, spec: &QemuSpec) -> Held {
        let Some(hashes) = self.replication.held(vm, site) else { return Held::default() };
        let (first, _) = layout(&spec.disks);
        let exports = spec.disks.iter().zip(first).map(|(d, first)| (d.node.clone(), (first, hashes.clone())));
        Held { exports: exports.collect() }
    }

    /// After a crash here, say where a recovering migration's VM runs: at
    /// the destination if this executor had reported its cutover (it holds
    /// the sealed images and the VM paused here was let go), else here.
    pub(super) async fn recover(self: &Arc<Self>, a: &Assignment) -> anyhow::Result<()> {
        let id = a.migration.id;
        let marker = self.cutover_marker(id);
        // libvirt undefines the domain here at its switchover, perhaps before this executor wrote its marker.
        let left = match a.vm.driver {
            Driver::Libvirt => {
                matches!(libvirt::state(&self.args.libvirt_uri, &libvirt_spec_of(a)?.domain).await, Ok(None))
            }
            Driver::Sim | Driver::Qemu => false,
        };
        let runs_at = if marker.exists() || left { VmRunsAt::Destination } else { VmRunsAt::Source };
        let detail = self.scheduler.recover(id, self.executor, &RecoveryReport { runs_at }).await?;
        tracing::info!(?runs_at, state = ?detail.migration.state, "recovered");
        if runs_at == VmRunsAt::Source {
            self.stay(&self.network_move(a).await).await;
        }
        match (runs_at, a.vm.driver) {
            (VmRunsAt::Destination, Driver::Sim) => {
                let _ = std::fs::remove_dir_all(self.vm_dir(&a.migration.vm));
            }
            (VmRunsAt::Destination, Driver::Qemu) => self.let_go_qemu(a).await,
            // libvirt ended the domain here at its switchover.
            (VmRunsAt::Destination, Driver::Libvirt) => {}
            (VmRunsAt::Source, Driver::Sim) => {
                self.vm(a)?;
            }
            (VmRunsAt::Source, Driver::Qemu) => self.resume_qemu(a).await?,
            // libvirt aborts a migration whose client went away: the domain runs here, or waits paused.
            (VmRunsAt::Source, Driver::Libvirt) => {
                libvirt::resume(&self.args.libvirt_uri, &libvirt_spec_of(a)?.domain).await?
            }
        }
        if marker.exists() {
            std::fs::remove_file(&marker)?;
        }
        Ok(())
    }

    /// After a crash: the VM runs at the destination, so the paused QEMU here goes.
    async fn let_go_qemu(&self, a: &Assignment) {
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
    async fn resume_qemu(&self, a: &Assignment) -> anyhow::Result<()> {
        let machine = self.machine(&a.migration.vm, &spec_of(a)?).await?;
        start(&machine).await?;
        let _ = announce(&machine).await;
        Ok(())
    }
}

/// A sim migration's progress as the scheduler is told it. A sim guest is the inventory's VM
/// scaled down `scale` times (`--sim-mib-per-gib` / 1024), its dirty rate too:
/// the rate goes back to the inventory's scale, where the scheduler uses it.
fn sim_report(p: &Progress, scale: f64) -> ProgressReport {
    ProgressReport {
        state: None,
        raw_bytes: p.counters.raw_bytes,
        wire_bytes: p.counters.wire_bytes,
        round: p.round,
        dirty_bytes_per_s: p.dirty_bytes_per_s / scale,
        expected_downtime_s: p.expected_downtime_s,
        eta_s: p.eta_s,
        downtime_s: None,
        saved_bytes: Some(p.counters.savings()),
        disk_wire_bytes: None,
        relayed_raw: None,
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

/// A real guest's migration steered by the scheduler: the hypervisor is
/// polled every 250 ms ([`Steering::steer`]), the scheduler hears every
/// second ([`Steering::report`]), and its answers set the cap and say stop.
pub(super) struct Steering {
    progress: tokio::sync::watch::Sender<QemuProgress>,
    steer: Mutex<Steer>,
}

impl Steering {
    pub(super) fn new(cap: Option<f64>) -> Steering {
        Steering {
            progress: tokio::sync::watch::Sender::new(QemuProgress::default()),
            steer: Mutex::new(Steer { cap_bytes_per_s: cap, stop: false }),
        }
    }

    /// Takes a poll's progress; answers the cap and whether to stop.
    pub(super) fn steer(&self, progress: &QemuProgress) -> Steer {
        self.progress.send_replace(progress.clone());
        *lock(&self.steer)
    }

    /// Reports migration `id`'s progress every second, with what the
    /// `disks` and `memory` tunnels carried, and takes the answers (the
    /// cap goes to `shaper` too). Never ends.
    pub(super) async fn report(
        &self,
        worker: &Worker,
        id: i64,
        shaper: &Shaper,
        disks: &Forwarder,
        memory: &Forwarder,
    ) {
        let mut progress = self.progress.subscribe();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let report = qemu_report(&progress.borrow_and_update(), &disks.counters, &memory.counters);
            match worker.report(id, &report).await {
                Ok(answer) => {
                    let mut steer = lock(&self.steer);
                    steer.cap_bytes_per_s = answer.cap_mbps.map(|mbps| mbps * 1e6 / 8.0);
                    steer.stop = answer.cancelled;
                    shaper.set_rate(steer.cap_bytes_per_s);
                }
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "a progress report failed"),
            }
        }
    }
}

/// A task that stops when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a source holds of its VM after the cutover, until the destination confirms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holds {
    /// The VM, paused: it can run on here.
    Paused,
    /// Nothing: the hypervisor ended it here at its own switchover (libvirt).
    Nothing,
}

/// How a migration ended after its cutover, as the source hears it.
enum Confirmed {
    /// The destination confirmed: the VM runs there.
    Done,
    /// It ended otherwise (rolled back, ...): the VM must run on here.
    Ended(MigrationState),
}
