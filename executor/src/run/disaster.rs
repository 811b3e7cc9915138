//! Disaster recovery as the site worker does it.
//!
//! - Fencing: while its site is down, or once it has not reached the
//!   scheduler for `EXECUTOR_LEASE_S - EXECUTOR_FENCE_MARGIN_S` seconds,
//!   the executor holds paused every VM here that could be restarted
//!   elsewhere (its replica has completed a sync: the others have no other
//!   copy and run on), and starts none, so that the scheduler may restart
//!   them elsewhere once its lease has run out. It lets them run again
//!   only when the scheduler says its site is up, and never those
//!   restarted elsewhere meanwhile.
//! - Restarts: at a standby, a lost site's VM boots on its replica, as
//!   after a power cut: a `sim` VM's replica becomes its disk and its
//!   memory is that of a fresh boot; a `qemu` VM's disks are made from
//!   its replica and QEMU boots on them. Its addresses are taken over
//!   here, and the scheduler hears it runs.
//! - Quarantine: back at a site that was lost, the copies of VMs restarted
//!   elsewhere are stopped and set aside (`quarantine/<vm>-<recovery>`),
//!   never started, until an operator discards them.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use heliotrope_api_spec::{
    Driver, QemuSpec, Quarantine, QuarantineHolding, RecoveryState, Restart, RestartOutcome, EXECUTOR_FENCE_MARGIN_S,
    EXECUTOR_LEASE_S,
};
use heliotrope_executor::content::PAGE;
use heliotrope_executor::network::NetworkMove;
use heliotrope_executor::precopy::{DISK_IMAGE, MEMORY_IMAGE};
use heliotrope_executor::qemu::export::layout;
use heliotrope_executor::qemu::machine::{disk_from_replica, Machine};
use heliotrope_executor::qemu::migrate;
use heliotrope_executor::sim::{boot_memory, ContentMix};

use super::{lock, DriverArg, Worker};

/// How long after its last word reached the scheduler (counted from when
/// it was sent) an executor holds its VMs paused on its own.
const SELF_FENCE_AFTER: Duration = Duration::from_secs(EXECUTOR_LEASE_S - EXECUTOR_FENCE_MARGIN_S);

pub(super) struct Disaster {
    /// Why every VM here is held paused (none: they run).
    fenced: Mutex<Option<String>>,
    /// The VMs the fence paused (others were paused for their own reasons).
    paused: Mutex<HashSet<String>>,
    /// When the last request the scheduler answered was sent.
    last_heard: Mutex<Instant>,
    /// Restarts this executor made and the scheduler heard of.
    reported: Mutex<HashSet<i64>>,
    /// What it holds of the copies it was told to quarantine, for its next report.
    holdings: Mutex<Vec<QuarantineHolding>>,
}

impl Default for Disaster {
    fn default() -> Self {
        Disaster {
            fenced: Mutex::default(),
            paused: Mutex::default(),
            last_heard: Mutex::new(Instant::now()),
            reported: Mutex::default(),
            holdings: Mutex::default(),
        }
    }
}

impl Disaster {
    pub(super) fn is_fenced(&self) -> bool {
        lock(&self.fenced).is_some()
    }

    /// The scheduler answered a request sent at `sent`.
    pub(super) fn heard(&self, sent: Instant) {
        let mut last = lock(&self.last_heard);
        *last = (*last).max(sent);
    }

    /// Whether the fence paused VM `vm`.
    pub(super) fn paused(&self, vm: &str) -> bool {
        lock(&self.paused).contains(vm)
    }

    pub(super) fn holdings(&self) -> Vec<QuarantineHolding> {
        lock(&self.holdings).clone()
    }
}

impl Worker {
    /// Holds every VM here paused once the scheduler has been out of reach for too long.
    pub(super) async fn watch_scheduler(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let silent = lock(&self.disaster.last_heard).elapsed();
            if silent > SELF_FENCE_AFTER {
                self.fence(&format!("no answer from the scheduler for {} s", silent.as_secs())).await;
            }
        }
    }

    /// Pauses every VM here that runs and could be restarted elsewhere, and
    /// starts none until [`Worker::unfence`].
    async fn fence(&self, why: &str) {
        let recoverable = self.replication.recoverable();
        let newly = {
            let mut fenced = lock(&self.disaster.fenced);
            let newly = fenced.is_none();
            if newly {
                *fenced = Some(why.to_owned());
            }
            newly
        };
        for (name, vm) in lock(&self.running).iter().filter(|(name, _)| recoverable.contains(*name)) {
            if !vm.is_paused() {
                vm.pause();
                lock(&self.disaster.paused).insert(name.clone());
            }
        }
        let machines: Vec<_> = lock(&self.machines)
            .iter()
            .filter(|(name, _)| recoverable.contains(*name))
            .map(|(n, m)| (n.clone(), m.clone()))
            .collect();
        for (name, machine) in machines {
            match migrate::pause(&machine).await {
                Ok(true) => {
                    lock(&self.disaster.paused).insert(name);
                }
                Ok(false) => {}
                Err(e) => tracing::error!(vm = %name, error = %e, "fencing: pausing a qemu VM failed"),
            }
        }
        if newly {
            tracing::warn!(why, "fenced: the VMs here that could restart elsewhere stay paused");
        }
    }

    /// Lets the VMs the fence paused run again (the scheduler says the site is up).
    async fn unfence(&self) {
        let Some(why) = lock(&self.disaster.fenced).take() else { return };
        let paused: Vec<String> = lock(&self.disaster.paused).drain().collect();
        for name in paused {
            if let Some(vm) = lock(&self.running).get(&name) {
                vm.resume();
            }
            let machine = lock(&self.machines).get(&name).cloned();
            if let Some(machine) = machine {
                if let Err(e) = migrate::start(&machine).await {
                    tracing::error!(vm = %name, error = %e, "resuming a qemu VM after the fence failed");
                }
            }
        }
        tracing::info!(was = %why, "the fence is lifted: the VMs here run again");
    }

    /// Follows what the scheduler says of lost sites: the copies here to
    /// quarantine first, then the fence, then the restarts to make here.
    pub(super) async fn follow_disaster(
        self: &Arc<Self>,
        fence: bool,
        quarantine: &[Quarantine],
        restarts: &[Restart],
    ) {
        let holdings = self.quarantine(quarantine).await;
        *lock(&self.disaster.holdings) = holdings;
        if fence {
            self.fence("the scheduler says this site is down").await;
        } else {
            self.unfence().await;
        }
        for r in restarts {
            if lock(&self.disaster.reported).contains(&r.recovery) {
                continue;
            }
            let span = tracing::info_span!("restart", recovery = r.recovery, vm = %r.vm, from = %r.from);
            let _entered = span.enter();
            let outcome = match self.restart(r).await {
                Ok(detail) => RestartOutcome { state: RecoveryState::Running, detail },
                Err(e) => RestartOutcome { state: RecoveryState::Failed, detail: format!("{e:#}") },
            };
            match self.scheduler.restart_outcome(r.recovery, self.executor, &outcome).await {
                Ok(_) => {
                    tracing::info!(state = ?outcome.state, detail = %outcome.detail, "restart of a lost site's VM");
                    lock(&self.disaster.reported).insert(r.recovery);
                }
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "reporting a restart failed; it is told again"),
            }
        }
    }

    /// Restarts a lost site's VM here from its replica; what it did.
    async fn restart(self: &Arc<Self>, r: &Restart) -> anyhow::Result<String> {
        let addresses = r.vm_spec.addresses.iter().filter_map(|a| a.parse().ok()).collect();
        let taken = NetworkMove {
            migration: 0,
            recovery: Some(r.recovery),
            vm: r.vm.clone(),
            addresses,
            from_site: r.from.clone(),
            to_site: self.args.site.clone(),
            peer: None,
            tunnel_key: 0,
        };
        let booted = match r.vm_spec.driver {
            Driver::Sim => self.restart_sim(r).await?,
            Driver::Qemu => self.restart_qemu(r).await?,
            // Without replicas (the scheduler keeps none), nothing to restart from.
            Driver::Libvirt => anyhow::bail!("libvirt VMs have no replicas to restart from"),
        };
        let network = match self.network.take_over(&taken).await {
            Ok(Some(did)) => format!("network ({:?}): {did}", self.network.driver()),
            Ok(None) => format!("network ({:?}): nothing to do", self.network.driver()),
            Err(e) => format!("network ({:?}) failed: {e}", self.network.driver()),
        };
        let point = r.recovery_point.map_or_else(|| "unknown".to_owned(), |at| at.to_rfc3339());
        Ok(format!("restarted from its replica (recovery point {point}): {booted}; {network}"))
    }

    /// A sim VM boots on its replica, with the memory of a fresh boot.
    async fn restart_sim(self: &Arc<Self>, r: &Restart) -> anyhow::Result<String> {
        let dir = self.vm_dir(&r.vm);
        let disk = dir.join(DISK_IMAGE);
        // After a crash mid-way the replica may be the VM's disk already.
        if !disk.exists() && !self.destination.take_replica(&r.replica, &disk)? {
            anyhow::bail!("this site holds no replica {} of it", r.replica);
        }
        let seed = r.recovery as u64;
        if !dir.join(MEMORY_IMAGE).exists() {
            let bytes = self.sim_bytes(r.vm_spec.memory_gib) as usize;
            heliotrope_executor::blocking(|| boot_memory(&dir, bytes, &ContentMix::default(), 1, seed))
                .context("booting its memory")?;
        }
        self.sim_vm(&r.vm, &r.vm_spec, seed)?;
        Ok("a sim guest booted on it".to_owned())
    }

    /// A qemu VM's disks are made from its replica (which holds them back
    /// to back, as the guest saw them), and QEMU boots on them.
    async fn restart_qemu(self: &Arc<Self>, r: &Restart) -> anyhow::Result<String> {
        anyhow::ensure!(self.args.driver == DriverArg::Qemu, "this executor runs sim VMs only (--driver sim)");
        if lock(&self.machines).contains_key(&r.vm) {
            return Ok("QEMU runs it already".to_owned());
        }
        let mut spec: QemuSpec = serde_json::from_value(r.vm_spec.driver_spec.clone()).context("its driver_spec")?;
        let dir = self.vm_dir(&r.vm);
        let replica = dir.join("replica.raw");
        let disks: Vec<PathBuf> = spec.disks.iter().map(|d| dir.join(format!("{}.{}", d.node, d.format))).collect();
        let made = disks.iter().all(|d| d.exists());
        if !made && !replica.exists() && !self.destination.take_replica(&r.replica, &replica)? {
            anyhow::bail!("this site holds no replica {} of it", r.replica);
        }
        let (first, _) = layout(&spec.disks);
        for ((disk, path), first) in spec.disks.iter_mut().zip(&disks).zip(first) {
            if !path.exists() {
                disk_from_replica(&replica, first * PAGE as u64, disk.size_bytes, &disk.format, path).await?;
            }
            disk.path = path.display().to_string();
        }
        let _ = std::fs::remove_file(&replica);
        spec.qmp_socket = None;
        let machine = Machine::start(&spec, &dir, false).await?;
        lock(&self.machines).insert(r.vm.clone(), Arc::new(machine));
        Ok(format!("QEMU booted on its {} disk(s) made from it", spec.disks.len()))
    }

    fn quarantine_dir(&self, q: &Quarantine) -> PathBuf {
        self.args.data_dir.join("quarantine").join(format!("{}-{}", q.vm, q.recovery))
    }

    /// Stops and sets aside the copies of VMs restarted elsewhere (deletes
    /// those an operator discarded); what each leaves here.
    async fn quarantine(&self, orders: &[Quarantine]) -> Vec<QuarantineHolding> {
        let mut holdings = Vec::with_capacity(orders.len());
        for q in orders {
            let aside = self.quarantine_dir(q);
            if let Err(e) = self.set_aside(q, &aside).await {
                tracing::error!(vm = %q.vm, error = %format!("{e:#}"), "quarantining a stale copy failed");
            }
            if q.discard && aside.exists() {
                match std::fs::remove_dir_all(&aside) {
                    Ok(()) => tracing::info!(vm = %q.vm, recovery = q.recovery, "stale copy discarded"),
                    Err(e) => tracing::error!(vm = %q.vm, error = %e, "discarding a stale copy failed"),
                }
            }
            holdings.push(QuarantineHolding { recovery: q.recovery, held: aside.exists() });
        }
        holdings
    }

    async fn set_aside(&self, q: &Quarantine, aside: &std::path::Path) -> anyhow::Result<()> {
        lock(&self.disaster.paused).remove(&q.vm);
        self.replication.stop(&q.vm).await;
        // Dropped, a sim guest stops writing; its files stay.
        drop(lock(&self.running).remove(&q.vm));
        let machine = lock(&self.machines).remove(&q.vm);
        if let Some(machine) = machine.and_then(Arc::into_inner) {
            machine.quit().await;
        }
        let dir = self.vm_dir(&q.vm);
        if dir.exists() {
            std::fs::create_dir_all(aside.parent().context("a quarantine directory")?)?;
            std::fs::rename(&dir, aside).with_context(|| format!("moving {} aside", dir.display()))?;
            tracing::warn!(vm = %q.vm, to = %aside.display(), "restarted elsewhere while this site was lost: its copy here is quarantined");
        }
        Ok(())
    }
}
