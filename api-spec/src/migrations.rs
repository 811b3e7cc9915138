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
    /// Its bandwidth cap when it starts, megabits per second.
    pub cap_mbps: Option<f64>,
    pub attempts: u32,
    pub predicted_bytes: f64,
    /// Why it failed, was cancelled or rolled back.
    pub failure: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
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
