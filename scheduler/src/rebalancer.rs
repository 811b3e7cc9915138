//! The hourly rebalancer: a background loop in every `heliotrope serve`
//! replica, of which exactly one leads at a time (`db::leader`); when the
//! leader's process dies, the next replica to try takes over, carrying on the timetable from the shared
//! row (`db::rebalancer`). Each run makes a plan through the same path as
//! `POST /v1/plans` and applies it if `domain::rebalance::decide` says so.

use std::time::Duration;

use chrono::{DateTime, Utc};
use heliotrope_api_spec::{PlanRequest, RebalanceOutcome};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::{PlannerConfig, RebalancerConfig};
use crate::db;
use crate::db::leader::{self, Duty, Lead};
use crate::db::rebalancer::{Rebalanced, RebalancerSettings};
use crate::domain::clock::Clock;
use crate::domain::planner::inputs::parse_request;
use crate::domain::rebalance::decide;

/// A leader that has not confirmed its lead for this long is shown as not alive.
pub const LEADER_STALE: Duration = Duration::from_secs(60);

pub struct Rebalancer {
    pub pool: PgPool,
    pub planner: PlannerConfig,
    pub config: RebalancerConfig,
    pub clock: Clock,
    /// This replica's name.
    pub replica: String,
}

impl Rebalancer {
    /// Tries to lead every `leader_check`, and leads while it can, until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        loop {
            match leader::take(&self.pool, Duty::Rebalancing).await {
                Ok(Some(lead)) => {
                    let span = tracing::info_span!("rebalancer", replica = %self.replica);
                    self.lead_while_held(lead, &stop).instrument(span).await;
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "cannot try for the rebalancer's lead"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.config.leader_check) => {}
            }
        }
    }

    fn settings(&self) -> RebalancerSettings {
        RebalancerSettings {
            interval_s: self.config.rebalance_interval.as_secs_f64(),
            auto_apply: self.config.auto_apply,
            auto_apply_min_saving: self.config.auto_apply_min_saving,
            clock_speed: self.clock.speed(),
        }
    }

    /// The real time between runs.
    fn period(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.clock.real(self.config.rebalance_interval))
            .unwrap_or(chrono::Duration::hours(1))
    }

    /// Runs the loop while `lead` holds; returns when it does not or on `stop`.
    async fn lead_while_held(&self, mut lead: Lead, stop: &CancellationToken) {
        let last = match db::rebalancer::record_leader(&self.pool, &self.replica, self.settings()).await {
            Ok(last) => last,
            Err(error) => {
                tracing::warn!(%error, "cannot record the lead; letting it go");
                return;
            }
        };
        tracing::info!("leading the rebalancer");
        // A new leader keeps the old one's timetable: the next run is an interval after the last.
        let mut next = last.map_or_else(Utc::now, |at| at + self.period());
        loop {
            if !lead.still_held().await {
                tracing::warn!("lost the rebalancer's lock");
                return;
            }
            match db::rebalancer::seen(&self.pool, &self.replica, next).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!("another replica is recorded as leader; letting the lead go");
                    return;
                }
                Err(error) => tracing::warn!(%error, "cannot confirm the lead"),
            }
            let now = Utc::now();
            if now >= next {
                let run = tokio::select! {
                    _ = stop.cancelled() => break,
                    run = self.rebalance_once() => run,
                };
                next = Utc::now() + self.period();
                if let Err(error) = db::rebalancer::ran(&self.pool, &self.replica, &run, next).await {
                    tracing::warn!(%error, "cannot record a rebalancing run");
                }
                continue;
            }
            let wait = (next - now).to_std().unwrap_or_default().min(self.config.leader_check);
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        if let Err(error) = lead.release().await {
            tracing::warn!(%error, "cannot release the rebalancer's lock; it goes with the connection");
        }
    }

    /// Plans from now (on the rebalancer's clock) and applies the plan if it saves enough.
    async fn rebalance_once(&self) -> Rebalanced {
        let clock = self.clock.now();
        let (plan, outcome, detail) = self.plan_and_decide(clock).await;
        match outcome {
            RebalanceOutcome::Failed => tracing::warn!(plan, %detail, "rebalancing failed"),
            _ => tracing::info!(plan, outcome = ?outcome, %detail, "rebalanced"),
        }
        Rebalanced { clock, plan, outcome, detail }
    }

    async fn plan_and_decide(&self, clock: DateTime<Utc>) -> (Option<i64>, RebalanceOutcome, String) {
        let request = PlanRequest {
            horizon_h: self.config.rebalance_horizon_h,
            mode: self.config.rebalance_mode,
            carbon_price_per_tonne: self.config.rebalance_carbon_price,
            dry_run: true,
            ..PlanRequest::default()
        };
        let request = match parse_request(request) {
            Ok(request) => request,
            Err(error) => return (None, RebalanceOutcome::Failed, error.to_string()),
        };
        let made = match crate::planning::propose(&self.pool, &self.planner, &request, clock).await {
            Ok(made) => made,
            Err(error) => return (None, RebalanceOutcome::Failed, format!("planning: {error}")),
        };
        let id = made.plan.id;
        let (outcome, detail) = decide(&made.plan, self.config.auto_apply, self.config.auto_apply_min_saving);
        if outcome != RebalanceOutcome::Applied {
            return (Some(id), outcome, detail);
        }
        let applied = async {
            db::plans::approve(&self.pool, id).await?;
            crate::planning::apply(&self.pool, &self.planner, id).await
        };
        match applied.await {
            Ok((_, jobs)) => (Some(id), outcome, format!("{detail}; applied: {jobs} migrations recorded")),
            Err(error) => (Some(id), RebalanceOutcome::Failed, format!("applying plan {id}: {error}")),
        }
    }
}

/// This replica's default name: host, process and listen address.
pub fn replica_name(listen: std::net::SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{}:{listen}", std::process::id())
}
