//! Proactive disk caching between executors: what a site's executor is
//! told to replicate (its VMs' disks to their standby sites) and to keep
//! (replicas of other sites' VMs), and what it reports of each replica's
//! freshness (`POST /v1/executors/{id}/replication`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{AssignedVm, Driver};

/// Replication sessions share the transfer protocol's job numbers with
/// migrations: a standby's session is this plus the standby's id, so the
/// two never collide at a destination.
pub const REPLICATION_SESSION_BASE: u64 = 1 << 62;

/// What an executor says of the replicas it keeps up to date.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplicationReport {
    /// One entry per replica this executor sends (unknown or dropped standbys are ignored).
    #[serde(default)]
    #[schema(max_items = 10000)]
    pub replicas: Vec<ReplicaFreshness>,
    /// The VMs this executor runs now (not paused): where each VM really
    /// runs, as the executors see it (absent: not said).
    #[serde(default)]
    #[schema(max_items = 10000)]
    pub running: Option<Vec<String>>,
    /// Whether it holds every VM here stopped because its site is down
    /// (or it could not reach the scheduler).
    #[serde(default)]
    pub fenced: bool,
    /// What it holds of the VMs it was told to quarantine.
    #[serde(default)]
    #[schema(max_items = 10000)]
    pub quarantine: Vec<crate::QuarantineHolding>,
}

/// How fresh one replica is, as its source executor knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplicaFreshness {
    /// The standby's session (from [`OutgoingReplica::session`]).
    #[schema(minimum = 0)]
    pub session: u64,
    /// When the last completed sync began: the replica holds every write before it.
    #[serde(default)]
    pub synced_at: Option<DateTime<Utc>>,
    /// The disk's size as that sync left it at the standby.
    #[schema(minimum = 0)]
    pub synced_bytes: u64,
    /// Bytes written since `synced_at`.
    #[schema(minimum = 0)]
    pub written_bytes: u64,
}

/// What an executor should replicate and keep now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReplicationPlan {
    /// Disks of VMs at this executor's site to keep in sync at their standbys.
    pub outgoing: Vec<OutgoingReplica>,
    /// Replicas this site keeps for VMs elsewhere; any other replica here may go.
    pub incoming: Vec<IncomingReplica>,
    /// How often a replica is synced, seconds.
    pub interval_s: f64,
    /// The site is down: every VM here stays stopped (its VMs may be
    /// restarting elsewhere).
    #[serde(default)]
    pub fence: bool,
    /// VMs of a lost site to restart here, each from its replica.
    #[serde(default)]
    pub restarts: Vec<crate::Restart>,
    /// VMs of this site restarted elsewhere while it was lost: any copy
    /// here is set aside and never started.
    #[serde(default)]
    pub quarantine: Vec<crate::Quarantine>,
}

/// One VM's disk to replicate to one standby.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OutgoingReplica {
    /// The session's number on the wire ([`REPLICATION_SESSION_BASE`] + the standby's id).
    pub session: u64,
    pub vm: String,
    pub vm_spec: AssignedVm,
    /// The standby site, by name.
    pub standby: String,
    /// Where the standby's executor listens (absent while none is online there).
    pub peer_address: Option<String>,
    /// The replica's file name at the standby.
    pub replica: String,
    /// The session's secret, hex (both ends prove it; it never travels between them).
    pub secret: String,
    /// What the link to the standby carries for migrations, megabits per second.
    pub link_usable_mbps: f64,
    /// What replication may use of it when migrations leave it, megabits per second.
    pub replication_mbps: f64,
    /// An evacuation ordered a final sync at this time: if the last sync
    /// began before it, sync at once, with at least `replication_mbps` of
    /// the link even while migrations take the rest.
    #[serde(default)]
    pub final_sync_after: Option<DateTime<Utc>>,
}

/// A replica this site keeps, and the session that may write it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct IncomingReplica {
    pub session: u64,
    pub vm: String,
    /// The VM's disk as the inventory sizes it: the replica is no larger
    /// (a `sim` VM's, scaled as the executor scales its images).
    pub disk_gib: f64,
    /// How the VM runs: a `qemu` VM's replica holds its disks back to back.
    pub driver: Driver,
    pub replica: String,
    pub secret: String,
}
