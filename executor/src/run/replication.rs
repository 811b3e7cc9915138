//! Proactive disk caching as the site worker does it: every few seconds
//! the executor tells the scheduler how fresh the replicas it sends are,
//! and hears what to replicate and keep now. It keeps each of its VMs'
//! disks in sync at their standby sites (a full first sync, then the
//! blocks written since, through the link's replication budget, yielding
//! to migrations on the same link), takes the replication sessions of the
//! replicas its site keeps for others, and drops the replicas whose
//! standby was dropped.
//!
//! A `sim` VM's disk is read from its image with its write log; a `qemu`
//! VM's disks only through QEMU's own interfaces (dirty bitmaps frozen at
//! each sync, a read-only NBD export: `heliotrope_executor::qemu::export`),
//! replicated as one image.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use heliotrope_api_spec::{Driver, OutgoingReplica, QemuSpec, ReplicaFreshness, ReplicationPlan, ReplicationReport};
use heliotrope_executor::content::{Hash, PAGE};
use heliotrope_executor::destination::Allowed;
use heliotrope_executor::qemu::export::{self, Recorded};
use heliotrope_executor::replica::{keep_synced, Replicating};
use heliotrope_executor::shaping::{Link, MigrationSlot};
use heliotrope_executor::source::{SendOptions, Session};
use heliotrope_executor::tls;
use heliotrope_executor::wire::ImageKind;

use super::{decode_hex, lock, Worker};

/// How often the executor reports and hears its replication plan.
const PLAN_EVERY: Duration = Duration::from_secs(5);

/// zstd level for replication: background work, cheap on the CPU.
const LEVEL: i32 = 1;

#[derive(Default)]
pub(super) struct Replication {
    /// Replicas sent from here, by session.
    outgoing: Mutex<HashMap<u64, Outgoing>>,
    /// Sessions this site takes, for the replicas it keeps.
    incoming: Mutex<HashSet<u64>>,
    /// Links to other sites, by site name: replication takes what migrations leave.
    links: Mutex<HashMap<String, Arc<Link>>>,
}

struct Outgoing {
    vm: String,
    standby: String,
    replicating: Replicating,
    /// The last final sync asked of it (an evacuation's order time).
    final_sync: Option<chrono::DateTime<chrono::Utc>>,
    /// A `qemu` VM's recorded writes, and their bytes as last counted.
    recorded: Option<(Arc<tokio::sync::Mutex<Recorded>>, Arc<AtomicU64>)>,
}

impl Replication {
    /// What a migration to `site` takes from the link it shares with
    /// replication (its cap, or the whole link uncapped): none where no
    /// replica is sent there.
    pub(super) fn migration_slot(&self, site: &str, cap: Option<f64>) -> Option<MigrationSlot> {
        let link = lock(&self.links).get(site).cloned()?;
        let usable = link.usable();
        Some(link.start_migration(cap.unwrap_or(usable).min(usable)))
    }

    /// The VMs replicated from here whose replica has completed a sync:
    /// those the scheduler may restart elsewhere if this site is lost.
    pub(super) fn recoverable(&self) -> HashSet<String> {
        lock(&self.outgoing)
            .values()
            .filter(|o| o.replicating.freshness().synced.at.is_some())
            .map(|o| o.vm.clone())
            .collect()
    }

    /// The page hashes VM `vm`'s replica at `site` holds, as of its last sync.
    pub(super) fn held(&self, vm: &str, site: &str) -> Option<Arc<Vec<Hash>>> {
        lock(&self.outgoing).values().find(|o| o.vm == vm && o.standby == site).and_then(|o| o.replicating.held())
    }

    /// Stops replicating VM `vm` (it left this site), once the syncs under way are gone.
    pub(super) async fn stop(&self, vm: &str) {
        let stopping: Vec<Outgoing> = {
            let mut outgoing = lock(&self.outgoing);
            let sessions: Vec<u64> = outgoing.iter().filter(|(_, o)| o.vm == vm).map(|(&s, _)| s).collect();
            sessions.iter().filter_map(|s| outgoing.remove(s)).collect()
        };
        for out in stopping {
            out.replicating.stop().await;
        }
    }

    /// Syncs at once each replica an evacuation ordered a final sync of,
    /// once per order, unless its last sync began after the order; while
    /// any is pending on a link, replication there keeps its budget.
    fn final_syncs(&self, listed: &HashMap<u64, OutgoingReplica>) {
        let mut pending: HashSet<String> = HashSet::new();
        for (session, out) in lock(&self.outgoing).iter_mut() {
            let Some(after) = listed.get(session).and_then(|r| r.final_sync_after) else { continue };
            let began = out.replicating.freshness().synced.at.map(chrono::DateTime::<chrono::Utc>::from);
            if began.is_some_and(|began| began >= after) {
                continue;
            }
            pending.insert(out.standby.clone());
            if out.final_sync != Some(after) {
                tracing::info!(vm = %out.vm, standby = %out.standby, "final sync ordered: syncing now");
                out.replicating.sync_now();
                out.final_sync = Some(after);
            }
        }
        for (site, link) in lock(&self.links).iter() {
            link.set_final_sync(pending.contains(site));
        }
    }

    /// Counts what the `qemu` VMs replicated from here wrote since their last
    /// sync (a VM whose sync is under way keeps its last count).
    async fn count_written(&self) {
        let recorded: Vec<_> = lock(&self.outgoing).values().filter_map(|o| o.recorded.clone()).collect();
        for (recorded, written) in recorded {
            let Ok(recorded) = recorded.try_lock() else { continue };
            match recorded.written_bytes().await {
                Ok(bytes) => written.store(bytes, Ordering::Relaxed),
                Err(e) => tracing::warn!(error = %e, "counting a VM's writes since its last sync"),
            }
        }
    }

    fn freshness(&self) -> Vec<ReplicaFreshness> {
        lock(&self.outgoing)
            .iter()
            .map(|(&session, out)| {
                let fresh = out.replicating.freshness();
                ReplicaFreshness {
                    session,
                    synced_at: fresh.synced.at.map(chrono::DateTime::<chrono::Utc>::from),
                    synced_bytes: fresh.synced.bytes,
                    written_bytes: fresh.written_bytes,
                }
            })
            .collect()
    }
}

fn interval_of(seconds: f64) -> Duration {
    Duration::from_secs_f64(seconds.clamp(1.0, 86_400.0))
}

impl Worker {
    pub(super) async fn replicate(self: Arc<Self>) {
        loop {
            self.replication.count_written().await;
            let report = ReplicationReport {
                replicas: self.replication.freshness(),
                running: Some(self.running_now()),
                fenced: self.disaster.is_fenced(),
                quarantine: self.disaster.holdings(),
            };
            let sent = std::time::Instant::now();
            match self.scheduler.replication(self.executor, &report).await {
                Ok(plan) => {
                    self.disaster.heard(sent);
                    self.follow(plan).await
                }
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "replication plan: asking failed"),
            }
            tokio::time::sleep(PLAN_EVERY).await;
        }
    }

    /// The VMs that run here now (not paused).
    fn running_now(&self) -> Vec<String> {
        let sim =
            lock(&self.running).iter().filter(|(_, vm)| !vm.is_paused()).map(|(n, _)| n.clone()).collect::<Vec<_>>();
        let qemu = lock(&self.machines).keys().filter(|n| !self.disaster.paused(n)).cloned().collect::<Vec<_>>();
        sim.into_iter().chain(qemu).collect()
    }

    /// Makes what runs here match the plan: lost sites' VMs first (the
    /// restarts take their replicas before the replicas are tidied).
    async fn follow(self: &Arc<Self>, plan: ReplicationPlan) {
        self.follow_disaster(plan.fence, &plan.quarantine, &plan.restarts).await;
        self.keep_replicas(&plan);
        let interval = interval_of(plan.interval_s);
        if !plan.fence {
            self.replicate_disks(plan.outgoing, interval).await;
        }
    }

    /// Takes the sessions of the replicas kept here, and frees the others.
    fn keep_replicas(&self, plan: &ReplicationPlan) {
        let mut incoming = lock(&self.replication.incoming);
        let keep: HashSet<&str> = plan.incoming.iter().map(|r| r.replica.as_str()).collect();
        let listed: HashSet<u64> = plan.incoming.iter().map(|r| r.session).collect();
        for gone in incoming.difference(&listed) {
            self.destination.forget(*gone);
        }
        for r in &plan.incoming {
            match decode_hex(&r.secret) {
                Ok(secret) => {
                    let bytes = match r.driver {
                        Driver::Sim => self.sim_bytes(r.disk_gib),
                        Driver::Qemu | Driver::Libvirt => (r.disk_gib * (1u64 << 30) as f64).ceil() as u64,
                    };
                    let replica = Allowed {
                        name: r.replica.clone(),
                        kind: ImageKind::Replica,
                        max_pages: bytes.div_ceil(PAGE as u64),
                    };
                    self.destination.expect_images(r.session, secret, vec![replica]);
                }
                Err(e) => tracing::warn!(session = r.session, error = %e, "a replica's secret"),
            }
        }
        *incoming = listed;
        drop(incoming);
        match self.destination.replicas() {
            Ok(held) => {
                for name in held.iter().filter(|n| !keep.contains(n.as_str())) {
                    match self.destination.drop_replica(name) {
                        Ok(()) => tracing::info!(replica = %name, "its standby was dropped: replica freed"),
                        Err(e) => tracing::warn!(replica = %name, error = %e, "freeing a replica failed"),
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "listing the replicas here failed"),
        }
    }

    /// Replicates the disks of the VMs here as listed, and only those.
    async fn replicate_disks(self: &Arc<Self>, outgoing: Vec<OutgoingReplica>, interval: Duration) {
        let listed: HashMap<u64, OutgoingReplica> = outgoing.into_iter().map(|r| (r.session, r)).collect();
        let running: HashSet<String> = lock(&self.running).keys().chain(lock(&self.machines).keys()).cloned().collect();
        let starting: Vec<OutgoingReplica> = {
            let mut outgoing = lock(&self.replication.outgoing);
            // A VM that left (or whose standby went) is no longer replicated from here.
            outgoing.retain(|session, out| listed.contains_key(session) && running.contains(&out.vm));
            listed
                .values()
                .filter(|r| !outgoing.contains_key(&r.session) && r.peer_address.is_some())
                .cloned()
                .collect()
        };
        for r in starting {
            match self.start_replica(&r, interval).await {
                Ok(out) => {
                    tracing::info!(vm = %r.vm, standby = %r.standby, "replicating its disk");
                    lock(&self.replication.outgoing).insert(r.session, out);
                }
                Err(e) => tracing::warn!(vm = %r.vm, standby = %r.standby, error = %format!("{e:#}"), "replication"),
            }
        }
        self.replication.final_syncs(&listed);
    }

    async fn start_replica(self: &Arc<Self>, r: &OutgoingReplica, interval: Duration) -> anyhow::Result<Outgoing> {
        let peer = r.peer_address.clone().context("no executor at the standby")?;
        let link = lock(&self.replication.links)
            .entry(r.standby.clone())
            .or_insert_with(|| Link::new(r.link_usable_mbps * 1e6 / 8.0, r.replication_mbps * 1e6 / 8.0))
            .clone();
        let (secret, session, streams, tls) = (decode_hex(&r.secret)?, r.session, self.args.streams, self.tls.clone());
        let shapers = link.replication_shapers();
        let open = move || {
            let (peer, secret, shapers, tls) = (peer.clone(), secret.clone(), shapers.clone(), tls.clone());
            async move {
                let mut connections = Vec::new();
                for _ in 0..streams {
                    connections.push(tls::connect(&peer, tls.as_ref()).await?);
                }
                let options = Arc::new(SendOptions { level: LEVEL, shapers, progress: None });
                Session::open(connections, session, &secret, options).await
            }
        };
        let (replicating, recorded) = match r.vm_spec.driver {
            Driver::Sim => {
                // A VM that has not run here yet (a fresh inventory) boots now: its disk is what is replicated.
                let vm = self.sim_vm(&r.vm, &r.vm_spec, r.session)?;
                (keep_synced(&vm, &r.replica, open, interval)?, None)
            }
            Driver::Qemu => {
                let spec: QemuSpec =
                    serde_json::from_value(r.vm_spec.driver_spec.clone()).context("the VM's driver_spec")?;
                let machine = self.machine(&r.vm, &spec).await?;
                let socket = self.vm_dir(&r.vm).join(format!("replica-{}.sock", r.session));
                let recorded = Arc::new(tokio::sync::Mutex::new(Recorded::start(machine, spec.disks, &socket).await?));
                let written = Arc::new(AtomicU64::new(0));
                let replicating = export::keep_synced(recorded.clone(), &r.replica, open, interval, written.clone());
                (replicating, Some((recorded, written)))
            }
            // The scheduler names no keeper for them (their QMP is libvirt's).
            Driver::Libvirt => anyhow::bail!("libvirt VMs are not replicated"),
        };
        Ok(Outgoing { vm: r.vm.clone(), standby: r.standby.clone(), replicating, final_sync: None, recorded })
    }
}
