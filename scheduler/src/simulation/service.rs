//! Simulations through the API: the server's inventory (as it stands) and
//! its stored signals for a past window, replayed in the background by the
//! replica that accepted the request, one simulation at a time per
//! replica. What can be checked before it runs (the request, the
//! inventory, the signals covering the window) is answered at once; the
//! run itself writes its progress, then its report or why it failed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use chrono::{Duration, Utc};
use heliotrope_api_spec::Simulation;
use sqlx::PgPool;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{policies_with_references, replay, report, Setting};
use crate::config::PlannerConfig;
use crate::db;
use crate::domain::planner::inputs::{plan_input, Inventory};
use crate::domain::simulation::{Asked, Forecast, Scenario, PERSISTENCE_HISTORY_H};
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
pub async fn start(runner: &Runner, asked: Asked) -> Result<Simulation, PlanningError> {
    let request = &*asked.request;
    let history = if asked.forecast == Forecast::Persistence { PERSISTENCE_HISTORY_H } else { 0 };
    let hours = (request.to - request.from).num_hours() as usize;
    let inventory = snapshot(&runner.pool, Utc::now()).await?;
    if inventory.vms.is_empty() {
        return Err(PlanningError::Inputs("the inventory has no VMs to simulate".into()));
    }
    let first = request.from - Duration::hours(history as i64);
    let (actuals, coverage, currency) =
        horizon_signals(&runner.pool, &inventory.sites, first, (history + hours) as u32).await?;
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
        forecast: asked.forecast,
        seed: request.seed,
    };
    scenario.check().map_err(|e| PlanningError::Inputs(e.to_string()))?;
    let setting = Setting {
        from: request.from,
        to: request.to,
        sites: sites.iter().map(|s| s.name.clone()).collect(),
        forecast: asked.forecast.to_string(),
        horizon_h: request.horizon_h,
        mode: request.mode,
        carbon_price_per_tonne: request.carbon_price_per_tonne,
        currency,
        filled_values: coverage.iter().map(|c| u64::from(c.persistence)).sum(),
        synthetic: coverage.iter().any(|c| c.synthetic),
    };
    let simulation = db::simulations::insert(&runner.pool, request).await?;
    let policies = policies_with_references(&asked.policies);
    tokio::spawn(run(runner.clone(), simulation.id, scenario, setting, policies));
    Ok(simulation)
}

/// Runs a recorded simulation to its end and stores how it ended.
#[tracing::instrument(name = "simulation", skip(runner, scenario, setting, policies))]
async fn run(
    runner: Runner,
    id: i64,
    scenario: Scenario,
    setting: Setting,
    policies: Vec<crate::domain::simulation::Policy>,
) {
    let hours = Arc::new(AtomicU64::new(0));
    let outcome = async {
        let _slot = runner.slots.acquire().await.map_err(|_| "the server is shutting down".to_owned())?;
        let started = Instant::now();
        let (done, stopping) = (hours.clone(), runner.stopping.clone());
        let mut running = tokio::task::spawn_blocking(move || {
            let runs = replay(&scenario, &policies, &|| {
                done.fetch_add(1, Ordering::Relaxed);
                !stopping.is_cancelled()
            });
            runs.map(|runs| report(setting, &scenario, &runs, started))
        });
        loop {
            tokio::select! {
                finished = &mut running => {
                    return finished.map_err(|e| format!("the run stopped: {e}"))?.map_err(|e| e.to_string());
                }
                () = tokio::time::sleep(PROGRESS_EVERY) => {
                    if let Err(e) = db::simulations::progress(&runner.pool, id, hours.load(Ordering::Relaxed)).await {
                        tracing::warn!(error = %e, "could not record the simulation's progress");
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
