//! Proactive disk caching as the site worker does it: every few seconds
//! the executor tells the scheduler how fresh the replicas it sends are,
//! and hears what to replicate and keep now. It keeps each of its VMs'
//! disks in sync at their standby sites (a full first sync, then the
//! blocks written since, through the link's replication budget, yielding
//! to migrations on the same link), takes the replication sessions of the
//! replicas its site keeps for others, and drops the replicas whose
//! standby was dropped.
//!
//! Only `sim` VMs are replicated so far: a `qemu` VM's disk is read only
//! through QEMU's own interfaces (dirty bitmaps, an NBD export), which
//! this loop does not drive yet; such a standby reports no sync, and the
//! scheduler credits it nothing.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use heliotrope_api_spec::{Driver, OutgoingReplica, ReplicaFreshness, ReplicationPlan, ReplicationReport};
use heliotrope_executor::content::PAGE;
use heliotrope_executor::destination::Allowed;
use heliotrope_executor::replica::{keep_synced, Replicating};
use heliotrope_executor::shaping::{Link, MigrationSlot};
use heliotrope_executor::source::{SendOptions, Session};
use heliotrope_executor::tls;
use heliotrope_executor::wire::ImageKind;

use super::{decode_hex, Worker};

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
    replicating: Replicating,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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

impl Worker {
    pub(super) async fn replicate(self: Arc<Self>) {
        let path = format!("/v1/executors/{}/replication", self.executor);
        loop {
            let report = ReplicationReport { replicas: self.replication.freshness() };
            match self.scheduler.post::<_, ReplicationPlan>(&path, Some(&report)).await {
                Ok(Some(plan)) => self.follow(plan),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "replication plan: asking failed"),
            }
            tokio::time::sleep(PLAN_EVERY).await;
        }
    }

    /// Makes what runs here match the plan.
    fn follow(self: &Arc<Self>, plan: ReplicationPlan) {
        let mut incoming = lock(&self.replication.incoming);
        let keep: HashSet<&str> = plan.incoming.iter().map(|r| r.replica.as_str()).collect();
        let listed: HashSet<u64> = plan.incoming.iter().map(|r| r.session).collect();
        for gone in incoming.difference(&listed) {
            self.destination.forget(*gone);
        }
        for r in &plan.incoming {
            match decode_hex(&r.secret) {
                Ok(secret) => {
                    let replica = Allowed {
                        name: r.replica.clone(),
                        kind: ImageKind::Replica,
                        max_pages: self.sim_bytes(r.disk_gib) / PAGE as u64,
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

        let interval = Duration::from_secs_f64(plan.interval_s.clamp(1.0, 86_400.0));
        let listed: HashMap<u64, &OutgoingReplica> = plan.outgoing.iter().map(|r| (r.session, r)).collect();
        let running: HashSet<String> = lock(&self.running).keys().cloned().collect();
        let mut outgoing = lock(&self.replication.outgoing);
        // A VM that left (or whose standby went) is no longer replicated from here.
        outgoing.retain(|session, out| listed.contains_key(session) && running.contains(&out.vm));
        for (session, r) in listed {
            if outgoing.contains_key(&session) || r.vm_spec.driver != Driver::Sim {
                continue;
            }
            let Some(peer) = r.peer_address.clone() else { continue };
            match self.start_replica(r, peer, interval) {
                Ok(replicating) => {
                    tracing::info!(vm = %r.vm, standby = %r.standby, "replicating its disk");
                    outgoing.insert(session, Outgoing { vm: r.vm.clone(), replicating });
                }
                Err(e) => tracing::warn!(vm = %r.vm, standby = %r.standby, error = %format!("{e:#}"), "replication"),
            }
        }
    }

    fn start_replica(
        self: &Arc<Self>,
        r: &OutgoingReplica,
        peer: String,
        interval: Duration,
    ) -> anyhow::Result<Replicating> {
        // A VM that has not run here yet (a fresh inventory) boots now: its disk is what is replicated.
        let vm = self.sim_vm(&r.vm, &r.vm_spec, r.session)?;
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
        Ok(keep_synced(&vm, &r.replica, open, interval)?)
    }
}
