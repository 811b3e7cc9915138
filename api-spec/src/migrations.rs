//! Migrations: the jobs an applied plan turns into, their states and the
//! log of every change of state.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Where a migration is. `pending` (recorded, not scheduled) -> `scheduled`
/// (claimable from its start time) -> `claimed` (an executor took it) ->
/// `transferring` -> `cutover` (the VM paused at the source) -> `done` (it
/// runs at the destination); or `failed`, `cancelled` (before cutover: it
/// runs on at the source), `rolled_back` (after an executor was lost: it
/// runs at the source); `recovering` while an executor lost mid-way is
/// asked where the VM runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MigrationState {
    Pending,
    Scheduled,
    Claimed,
    Transferring,
    Cutover,
    Done,
    Failed,
    Cancelled,
    RolledBack,
    Recovering,
    /// Never admitted before its bound (its plan's validity): its room is given back.
    Expired,
}

/// One migration of one VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Migration {
    pub id: i64,
    /// The plan whose move this is.
    pub plan_id: i64,
    pub vm: String,
    pub from: String,
    pub to: String,
    pub state: MigrationState,
    /// When the plan's schedule starts it; absent if it is not scheduled.
    pub start_at: Option<DateTime<Utc>>,
    /// Its bandwidth cap, megabits per second: the schedule's until the
    /// dispatcher admits it, then the dispatcher's (or an operator's `PATCH`).
    pub cap_mbps: Option<f64>,
    /// When the dispatcher let it start (it had room on its link and uplinks); absent while it waits.
    #[serde(default)]
    pub admitted_at: Option<DateTime<Utc>>,
    /// Not admitted by then, it ends `expired`; absent: it waits as long as it takes (an evacuation).
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    pub attempts: u32,
    pub predicted_bytes: f64,
    /// Why it failed, was cancelled or rolled back.
    pub failure: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The source's latest progress report (absent before the first).
    pub progress: Option<ProgressReport>,
}

/// A change of a migration's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MigrationEvent {
    pub at: DateTime<Utc>,
    /// Who made it: `scheduler`, `token:<id>` or `executor:<id>`.
    pub actor: String,
    /// Absent for its creation.
    pub from: Option<MigrationState>,
    pub to: MigrationState,
    pub detail: String,
    /// For a network step (the state stays what it was): what the executor reported.
    #[serde(default)]
    pub network: Option<NetworkReport>,
}

/// A step of the network's move after a cutover (see the executor's network drivers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NetworkStep {
    /// At the old site, at the cutover: what still arrives there goes on to the new site.
    ForwardAway,
    /// At the new site, before the VM starts: its addresses lead to it there.
    RouteHere,
    /// At the new site, once the VM runs: the network learns where it is
    /// (for `qemu`, its `announce-self`).
    Announce,
    /// At the old site, after a rollback: the addresses lead to the VM there again.
    TakeBack,
    /// At either site, after the hold time or an explicit call: what only
    /// bridged the move is removed.
    Release,
}

/// A network step as an executor reports it (`POST /v1/migrations/{id}/network`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkReport {
    pub step: NetworkStep,
    /// The executor's network driver.
    pub driver: NetworkDriver,
    /// How long the step took, milliseconds.
    #[schema(minimum = 0, maximum = 3600000)]
    pub duration_ms: f64,
    /// Whether it worked (a failed step leaves the VM where the migration
    /// put it; the detail says what is wrong).
    pub ok: bool,
    #[serde(default)]
    #[schema(max_length = 1000)]
    pub detail: String,
}

/// How an executor moves VMs' addresses (`heliotrope-executor run --network`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NetworkDriver {
    /// The operator moves the network by other means.
    None,
    /// VXLAN tunnels and routes through netlink.
    Linux,
    /// The operator's SDN controller is told the move.
    Webhook,
}

/// A migration with its log of events, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MigrationDetail {
    #[serde(flatten)]
    pub migration: Migration,
    pub events: Vec<MigrationEvent>,
}

/// Filters of `GET /v1/migrations`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MigrationFilter {
    pub plan: Option<i64>,
    pub state: Option<MigrationState>,
    /// Either end of the migration, by name.
    #[param(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    pub site: Option<String>,
    /// The VM, by name.
    #[param(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    pub vm: Option<String>,
}

/// A planner's change to a migration under way (`PATCH /v1/migrations/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrationChange {
    /// The bandwidth cap from now on, megabits per second (at least 0.1); `null` lifts
    /// it. The source executor picks it up with its next progress report.
    #[schema(minimum = 0.1, maximum = 1000000)]
    pub cap_mbps: Option<f64>,
}

/// Filters of `GET /v1/events`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NewsFilter {
    /// Only this migration's news.
    pub migration: Option<i64>,
}

/// What an executor says of itself when it registers (`POST /v1/executors/register`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecutorRegistration {
    /// The site it serves, by name.
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    pub site: String,
    /// `host:port` its peers reach it at for transfers.
    #[schema(min_length = 3, max_length = 255)]
    pub address: String,
    pub driver: crate::Driver,
    /// Migrations it runs at once.
    #[schema(minimum = 1, maximum = 64)]
    pub capacity: u32,
    /// The IP address its network driver's tunnels end at (the VXLAN
    /// endpoint), if it moves VMs' networks; the old site of a move tunnels
    /// to it (else to the host of `address`).
    #[serde(default)]
    #[schema(min_length = 2, max_length = 45)]
    pub tunnel_address: Option<String>,
}

/// Which end of a migration an executor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobRole {
    /// Sends the VM, reports progress, and holds the lease.
    Source,
    /// Receives it; confirms the cutover.
    Destination,
    /// At the source site, after its executor was lost: say where the VM
    /// runs (`POST /v1/migrations/{id}/recover`).
    Recover,
}

/// The VM a claimed migration moves, as its driver needs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AssignedVm {
    pub memory_gib: f64,
    pub disk_gib: f64,
    pub dirty_rate_mbps: f64,
    pub max_downtime_ms: u32,
    /// The addresses it answers on (they follow it: the executors' network drivers).
    #[serde(default)]
    pub addresses: Vec<String>,
    pub driver: crate::Driver,
    /// The VM's `driver_spec` (for `qemu`, a [`crate::QemuSpec`]; for `libvirt`, a [`crate::LibvirtSpec`]).
    pub driver_spec: serde_json::Value,
}

/// A migration handed to an executor by a claim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Assignment {
    pub migration: Migration,
    pub vm: AssignedVm,
    pub role: JobRole,
    /// The other end's executor: for the source, where the destination listens; for the
    /// destination, the source's address (its network tunnel takes packets from there only).
    pub peer_address: Option<String>,
    /// Where the other end's network tunnels end, if it said.
    #[serde(default)]
    pub peer_tunnel_address: Option<String>,
    /// The job's secret, hex: both ends prove it to each other; it never travels between them.
    pub secret: String,
    /// The source's claim holds until then; each progress report extends it.
    pub lease_expires: Option<DateTime<Utc>>,
}

/// What a source executor reports as a migration goes (`POST /v1/migrations/{id}/progress`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProgressReport {
    /// `transferring` or `cutover`, when it moves on; absent when it only reports.
    #[serde(default)]
    pub state: Option<MigrationState>,
    #[schema(minimum = 0)]
    pub raw_bytes: u64,
    #[schema(minimum = 0)]
    pub wire_bytes: u64,
    /// Pre-copy round (0: the first pass).
    #[serde(default)]
    pub round: u32,
    #[serde(default)]
    #[schema(minimum = 0)]
    pub dirty_bytes_per_s: f64,
    #[serde(default)]
    #[schema(minimum = 0)]
    pub expected_downtime_s: Option<f64>,
    #[serde(default)]
    #[schema(minimum = 0)]
    pub eta_s: Option<f64>,
    /// The pause the VM took at the cutover, measured (with the cutover report).
    #[serde(default)]
    #[schema(minimum = 0)]
    pub downtime_s: Option<f64>,
    /// Bytes kept off the wire so far, by mechanism (executors whose transfer stack counts them).
    #[serde(default)]
    pub saved_bytes: Option<SavedBytes>,
    /// Of `wire_bytes`, what the VM's disks took (`qemu`: the mirrors' NBD tunnels, both ways).
    #[serde(default)]
    #[schema(minimum = 0)]
    pub disk_wire_bytes: Option<u64>,
    /// Why a tunnel relayed a stream whole, without taking it apart (a
    /// protocol or version it does not understand); absent when none did.
    #[serde(default)]
    #[schema(max_length = 200)]
    pub relayed_raw: Option<String>,
}

/// Bytes a transfer kept off the wire, by mechanism.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SavedBytes {
    /// Pages that were all zero: never sent.
    pub zero: u64,
    /// Repeats within the image and pages of the destination's chunk index.
    pub dedup: u64,
    /// Pages of the disk replica cached at the destination.
    pub disk_cache: u64,
    /// Pages an earlier connection brought, or that the replica holds unchanged.
    pub in_place: u64,
    /// What compressing the pages that were sent saved.
    pub compression: u64,
    /// Memory pages the destination kept when this VM last left it (a VM
    /// that follows the sun comes back to the same few sites).
    #[serde(default)]
    pub returning: u64,
}

impl SavedBytes {
    /// Every mechanism's bytes together.
    pub fn total(&self) -> u64 {
        self.zero + self.dedup + self.disk_cache + self.in_place + self.compression + self.returning
    }
}

impl std::ops::Add for SavedBytes {
    type Output = SavedBytes;

    fn add(self, other: SavedBytes) -> SavedBytes {
        SavedBytes {
            zero: self.zero + other.zero,
            dedup: self.dedup + other.dedup,
            disk_cache: self.disk_cache + other.disk_cache,
            in_place: self.in_place + other.in_place,
            compression: self.compression + other.compression,
            returning: self.returning + other.returning,
        }
    }
}

/// The scheduler's answer to a progress report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProgressAnswer {
    pub state: MigrationState,
    /// The cap to send at now, megabits per second (the schedule may change it).
    pub cap_mbps: Option<f64>,
    /// Stop: the migration ended without the VM moving (cancelled, failed,
    /// rolled back); it keeps running at the source.
    pub cancelled: bool,
    pub lease_expires: Option<DateTime<Utc>>,
}

/// How a migration ended, as its executors say (`POST /v1/migrations/{id}/complete`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Completion {
    /// `done` (only the destination says so, once the VM runs there),
    /// `failed` (the source, before cutover: the VM runs on there) or
    /// `rolled_back` (the source, in cutover, when the destination never
    /// confirmed: it resumes the VM, and the destination's `done` is refused).
    pub state: MigrationState,
    #[serde(default)]
    #[schema(max_length = 1000)]
    pub detail: String,
}

/// Where an executor back from a crash finds a migration's VM (`POST /v1/migrations/{id}/recover`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VmRunsAt {
    Source,
    Destination,
}

/// What a recovering migration's executor reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecoveryReport {
    pub runs_at: VmRunsAt,
}

/// Query of `POST /v1/executors/{id}/claim`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ClaimParams {
    /// Seconds to wait for work before answering 204 (long poll), 0 to 30; default 0.
    #[param(minimum = 0, maximum = 30)]
    pub wait_s: Option<u32>,
}

/// Which registered executor (of the caller's token) is speaking.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExecutorParam {
    pub executor: i64,
}

/// What `GET /v1/events` streams (server-sent events; the SSE `event`
/// field is `kind`): a migration's change of state, its source's latest
/// progress report, or a lost site's VM recovered at a standby.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MigrationNews {
    State(StateChange),
    Progress(ProgressNews),
    Recovered(RecoveredNews),
}

impl MigrationNews {
    /// The migration it is about (none for a recovery).
    pub fn migration(&self) -> Option<i64> {
        match self {
            MigrationNews::State(change) => Some(change.migration),
            MigrationNews::Progress(news) => Some(news.migration),
            MigrationNews::Recovered(_) => None,
        }
    }

    /// Its `kind`, which is also the SSE event name.
    pub fn kind(&self) -> &'static str {
        match self {
            MigrationNews::State(_) => "state",
            MigrationNews::Progress(_) => "progress",
            MigrationNews::Recovered(_) => "recovered",
        }
    }
}

/// A lost site's VM handed to its standby's executor (`starting`: its
/// record is at the standby now), then running there or failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RecoveredNews {
    pub recovery: i64,
    pub vm: String,
    pub from: String,
    pub to: Option<String>,
    pub state: crate::RecoveryState,
    pub at: DateTime<Utc>,
    /// The replica's last sync: it holds every write made before.
    pub recovery_point: Option<DateTime<Utc>>,
    /// Bytes written since, as last reported.
    pub lost_bytes: Option<u64>,
    pub detail: String,
}

/// A migration moved from one state to another, or logged something while
/// it stayed (`from` = `to`: a cap change, a network step): one entry of
/// its log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StateChange {
    pub migration: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    /// Absent when the migration was recorded.
    pub from: Option<MigrationState>,
    pub to: MigrationState,
    pub detail: String,
    /// For a network step: what the executor reported (as in the log's `network`).
    #[serde(default)]
    pub network: Option<NetworkReport>,
}

/// A source executor's progress report, as the scheduler received it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProgressNews {
    pub migration: i64,
    pub at: DateTime<Utc>,
    pub state: MigrationState,
    pub report: ProgressReport,
}

/// What the last rebalancing run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RebalanceOutcome {
    /// The plan saved more than `auto_apply_min_saving` and auto-apply is on: applied.
    Applied,
    /// Left proposed for a planner to approve.
    Proposed,
    /// The best placement is where the VMs already are.
    NoMoves,
    /// Planning or applying failed (see `last_detail`).
    Failed,
}

/// `GET /v1/rebalancer`: the background loop that plans every
/// `interval_s`, and which scheduler replica runs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RebalancerStatus {
    /// The replica that answered this request.
    pub replica: String,
    /// Whether that replica takes part in the election (`--rebalance`).
    pub replica_rebalances: bool,
    /// The replica running the loop (absent: none has yet).
    pub leader: Option<String>,
    pub leader_since: Option<DateTime<Utc>>,
    /// When the leader last confirmed it still holds the lead.
    pub leader_seen_at: Option<DateTime<Utc>>,
    /// Whether the leader confirmed it recently (a dead leader's lead passes to another replica).
    pub leader_alive: bool,
    /// The leader's settings.
    pub interval_s: Option<f64>,
    pub auto_apply: Option<bool>,
    pub auto_apply_min_saving: Option<f64>,
    /// Simulated seconds per real second: 1, except an accelerated demo clock (then times are simulated too).
    pub clock_speed: Option<f64>,
    pub last_run_at: Option<DateTime<Utc>>,
    /// The (possibly simulated) time the last run planned from.
    pub last_run_clock: Option<DateTime<Utc>>,
    pub next_run_at: Option<DateTime<Utc>>,
    pub last_plan: Option<i64>,
    pub last_outcome: Option<RebalanceOutcome>,
    pub last_detail: Option<String>,
}
