//! Disaster recovery: a site marked down (`POST /v1/sites/{id}/fail`, or
//! its state set to `down`) has its VMs restarted at their standby sites
//! from their replicas, once, and what could not be restarted listed as
//! lost. The standby's executor hears the restarts it must make, and the
//! returning site's executor the stale copies it must keep stopped, in
//! its replication plan (`POST /v1/executors/{id}/replication`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AssignedVm;

/// How long an executor's last word (a heartbeat or a replication
/// report) holds its site's VMs for it, seconds. An executor that has not
/// been heard for this long has stopped its VMs itself (it does so
/// `EXECUTOR_FENCE_MARGIN_S` before); only then are they restarted
/// elsewhere, unless it said they are stopped.
pub const EXECUTOR_LEASE_S: u64 = 20;

/// How much sooner than [`EXECUTOR_LEASE_S`] an executor that cannot reach
/// the scheduler stops its VMs.
pub const EXECUTOR_FENCE_MARGIN_S: u64 = 5;

/// `POST /v1/sites/{id}/fail`: the operator says the site is lost.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SiteFailure {
    /// Only say what would happen: nothing is marked or restarted.
    #[serde(default)]
    pub dry_run: bool,
    /// Why, for the record.
    #[serde(default)]
    #[schema(max_length = 1000)]
    pub reason: String,
}

/// Where a VM of a lost site stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryState {
    /// To be restarted at its standby, once the lost site's executors are
    /// fenced (silent past their lease, or stopped their VMs themselves).
    Waiting,
    /// Handed to the standby's executor: the VM's record is at the standby now.
    Starting,
    /// Runs at the standby, restarted from its replica.
    Running,
    /// The restart failed at the standby (the detail says why).
    Failed,
    /// Not restarted: no replica, or no room at any site holding one.
    Lost,
}

/// What becomes of the stale copy a lost site still holds of a VM
/// restarted elsewhere, once the site's executor is back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum QuarantineState {
    /// The site's executor has not said yet (it has not come back).
    Pending,
    /// Kept stopped, set aside, until an operator discards it.
    Held,
    /// The site's executor held no copy.
    None,
    /// An operator discarded it: the executor deletes it.
    Discarding,
    /// Deleted.
    Discarded,
}

/// One VM of a lost site: restarted where, from how fresh a replica, or lost and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VmRecovery {
    pub id: i64,
    pub vm: String,
    pub from: String,
    /// The standby site it restarts at (absent when lost).
    pub to: Option<String>,
    pub state: RecoveryState,
    /// The VM's priority (higher restarts first, and gets room first).
    pub priority: u8,
    /// When the replica it restarts from was last synced: it holds every write made before.
    pub recovery_point: Option<DateTime<Utc>>,
    /// Seconds from the recovery point to the site's failure.
    pub rpo_s: Option<f64>,
    /// Bytes written since the recovery point as last reported (what is known to be lost).
    pub lost_bytes: Option<u64>,
    /// Why it is lost or failed, or what the restart did (its network steps).
    pub detail: String,
    /// The executor restarting it.
    pub executor: Option<i64>,
    pub failed_at: DateTime<Utc>,
    /// When the standby's executor was handed it.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ran at the standby.
    pub running_at: Option<DateTime<Utc>>,
    pub quarantine: QuarantineState,
}

/// A lost site's recovery: every VM that ran there when it failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SiteRecovery {
    pub site: String,
    /// When it was last marked down (absent: it never failed). A site that
    /// is back still shows its last failure: its stale copies wait for an
    /// operator's word.
    pub failed_at: Option<DateTime<Utc>>,
    pub reason: String,
    pub dry_run: bool,
    /// When the restarts may begin: the last of the site's executors'
    /// leases (absent once they have all passed or said they are fenced).
    pub fenced_by: Option<DateTime<Utc>>,
    /// Highest priority first.
    pub vms: Vec<VmRecovery>,
}

/// Told to a standby's executor: restart a lost site's VM here from its replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Restart {
    /// The recovery (`POST /v1/recoveries/{id}/outcome` says how it went).
    pub recovery: i64,
    pub vm: String,
    pub vm_spec: AssignedVm,
    /// The lost site, by name.
    pub from: String,
    /// The replica's file name here.
    pub replica: String,
    pub recovery_point: Option<DateTime<Utc>>,
}

/// Told to a returning site's executor: VM `vm` was restarted elsewhere; any copy here must never run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Quarantine {
    pub recovery: i64,
    pub vm: String,
    /// An operator discarded the copy: delete it.
    pub discard: bool,
}

/// What an executor holds of a VM it was told to quarantine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuarantineHolding {
    #[schema(minimum = 1)]
    pub recovery: i64,
    /// Whether it keeps a stale copy (set aside, stopped).
    pub held: bool,
}

/// How a restart went (`POST /v1/recoveries/{id}/outcome`, by the standby's executor).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestartOutcome {
    /// `running` or `failed`.
    pub state: RecoveryState,
    #[serde(default)]
    #[schema(max_length = 4000)]
    pub detail: String,
}
