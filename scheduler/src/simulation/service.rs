//! Simulations through the API: the server's inventory (as it stands) and
//! its stored signals for a past window, replayed in the background by the
//! replica that accepted the request, one simulation at a time per
//! replica (another is refused while one runs: a replay holds its whole
//! scenario in memory, and a queue would hold many). What can be checked before it runs (the request, the
//! inventory, the signals covering the window) is answered at once; the
//! run itself writes its progress, then its report or why it failed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use chrono::{Duration, DurationRound, Utc};
use heliotrope_api_spec::{Simulation, SimulationRequest};
use sqlx::PgPool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{policies_with_references, replay_side_by_side, report, Provenance};
use crate::config::PlannerConfig;
use crate::db;
use crate::domain::planner::inputs::{plan_input, Inventory};
use crate::domain::simulation::{Scenario, ORACLE_HORIZON_H};
use crate::domain::Valid;
use crate::planning::{horizon_signals, settings, snapshot, PlanningError};

/// How often a running simulation writes its progress.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// What a simulation needs beside its request.
#[derive(Clone)]
pub struct Runner {
    pub pool: PgPool,
    pub planner: PlannerConfig,
    /// One simulation at a time per replica.
    pub slots: Arc<Semaphore>,
    /// Stops running simulations at shutdown (they fail, saying so).
    pub stopping: CancellationToken,
}

/// Checks that the inventory and stored signals cover the request,
/// records the simulation and starts it in the background.
pub async fn start(runner: &Runner, asked: Valid<SimulationRequest>) -> Result<Simulation, PlanningError> {
    // Taken now and held to the end, so that a refused request leaves nothing behind.
    let slot = runner.slots.clone().try_acquire_owned().map_err(|_| {
        PlanningError::Busy("a simulation is running on this server; start another when it has finished".into())
    })?;
    let request = &*asked;
    let forecast = asked.forecast();
    let history = forecast.history_h();
    let hours = (request.to - request.from).num_hours() as usize;
    let inventory = snapshot(&runner.pool, None).await?;
    if inventory.vms.is_empty() {
        return Err(PlanningError::Inputs("the inventory has no VMs to simulate".into()));
    }
    // Signals after the window, where there are some, are the horizon of its last hours.
    let this_hour = Utc::now().duration_trunc(Duration::hours(1)).unwrap_or(request.to);
    let ahead = ((this_hour - request.to).num_hours().max(0) as usize)
        .min(request.horizon_h.max(ORACLE_HORIZON_H as u32) as usize);
    let first = request.from - Duration::hours(history as i64);
    let (actuals, coverage, currency) =
        horizon_signals(&runner.pool, &inventory.sites, first, (history + hours + ahead) as u32).await?;
    let sites: Vec<_> = inventory.sites.iter().map(|s| s.spec.clone()).collect();
    let links: Vec<_> = inventory.links.iter().map(|l| l.spec.clone()).collect();
    let vms: Vec<_> = inventory.vms.iter().map(|v| (v.spec.clone(), 0)).collect();
    let groups: Vec<_> = inventory.groups.iter().map(|g| g.spec.clone()).collect();
    let fleet = plan_input(
        &Inventory { sites: &sites, links: &links, vms: &vms, groups: &groups },
        vec![Vec::new(); sites.len()],
        settings(&runner.planner, request.mode, request.carbon_price_per_tonne, currency.clone()),
    );
    let scenario = Scenario {
        fleet,
        actuals,
        from: history,
        to: history + hours,
        horizon_h: request.horizon_h as usize,
        forecast,
        seed: request.seed,
    };
    scenario.check().map_err(|e| PlanningError::Inputs(e.to_string()))?;
    let setting = Provenance {
        from: request.from,
        to: request.to,
        sites: sites.iter().map(|s| s.name.clone()).collect(),
        forecast: forecast.to_string(),
        horizon_h: request.horizon_h,
        mode: request.mode,
        carbon_price_per_tonne: request.carbon_price_per_tonne,
        currency,
        filled_values: coverage.iter().map(|c| u64::from(c.persistence)).sum(),
        synthetic: coverage.iter().any(|c| c.synthetic),
    };
    let simulation = db::simulations::insert(&runner.pool, &asked).await?;
    let policies = policies_with_references(&asked.policies());
    tokio::spawn(run(runner.clone(), slot, simulation.id, scenario, setting, policies));
    Ok(simulation)
}

/// Runs a recorded simulation to its end and stores how it ended.
#[tracing::instrument(name = "simulation", skip(runner, _slot, scenario, setting, policies))]
async fn run(
    runner: Runner,
    _slot: OwnedSemaphorePermit,
    id: i64,
    scenario: Scenario,
    setting: Provenance,
    policies: Vec<crate::domain::simulation::Policy>,
) {
    let hours = Arc::new(AtomicU64::new(0));
    let outcome = async {
        let started = Instant::now();
        let (done, stopping) = (hours.clone(), runner.stopping.clone());
        let mut running = tokio::task::spawn_blocking(move || {
            let runs = replay_side_by_side(&scenario, &policies, &|| {
                done.fetch_add(1, Ordering::Relaxed);
                !stopping.is_cancelled()
            });
            runs.map(|runs| report(setting, &scenario, &runs, started))
        });
        // Progress is written as hours pass: a run that stops advancing
        // falls silent, and reads as failed once silent for long.
        let mut written = 0;
        loop {
            tokio::select! {
                finished = &mut running => {
                    return finished.map_err(|e| format!("the run stopped: {e}"))?.map_err(|e| e.to_string());
                }
                () = tokio::time::sleep(PROGRESS_EVERY) => {
                    let done = hours.load(Ordering::Relaxed);
                    if done > written {
                        written = done;
                        if let Err(e) = db::simulations::progress(&runner.pool, id, done).await {
                            tracing::warn!(error = %e, "could not record the simulation's progress");
                        }
                    }
                }
            }
        }
    }
    .await;
    let _ = db::simulations::progress(&runner.pool, id, hours.load(Ordering::Relaxed)).await;
    let stored = match &outcome {
        Ok(report) => {
            tracing::info!(hours = report.hours, runtime_s = report.runtime_s, "simulation done");
            db::simulations::finish(&runner.pool, id, Ok(report)).await
        }
        Err(why) => {
            tracing::warn!(why, "simulation failed");
            db::simulations::finish(&runner.pool, id, Err(why)).await
        }
    };
    if let Err(e) = stored {
        tracing::warn!(error = %e, "could not store how the simulation ended");
    }
}
