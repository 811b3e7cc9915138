//! The plans service: reads the inventory and the signals for the horizon,
//! runs the planner off the async runtime, and stores the plan. One path
//! for the API and the `heliotrope plan` command.

use std::collections::HashMap;

use chrono::{DateTime, Duration, DurationRound, Utc};
use heliotrope_api_spec::{
    AppliedPlan, BaselineSchedule, Group, Link, PlanCosts, PlanInputs, PlanMode, PlanRequest, PlanSchedule,
    PlannedMove, ScheduleGoal, ScheduledMigration, Signal, SignalCoverage, Site, SolverReport, Vm, VmSpec,
};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::config::PlannerConfig;
use crate::db::plans::NewPlan;
use crate::db::{self, enum_to_text, StoreError};
use crate::domain::cost::{MigrationPrices, SlotSignal, Weights, MEMORY_KEPT_DAYS};
use crate::domain::planner::inputs::{hold_room, plan_input, slot_values, Coverage, Inventory, PERSISTENCE_DAYS};
use crate::domain::planner::{self, Breakdown, Move, PlanError, PlanInput, Settings};
use crate::domain::schedule::{self, lower_bound, predict, Goal, Pacing, BASELINES};
use crate::domain::standby;
use crate::domain::Valid;

#[derive(Debug, thiserror::Error)]
pub enum PlanningError {
    /// What the planner needs is missing or inconsistent (signals, currencies).
    #[error("{0}")]
    Inputs(String),
    #[error("{0}")]
    Infeasible(String),
    /// The solver gave up.
    #[error("{0}")]
    Unsolved(String),
    /// This server is busy with the same kind of work (a simulation).
    #[error("{0}")]
    Busy(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for PlanningError {
    fn from(e: sqlx::Error) -> Self {
        PlanningError::Store(e.into())
    }
}

/// Plans from the current inventory and signals and stores the plan as
/// proposed (superseding older waiting plans); unless `dry_run`, approves
/// and applies it at once.
pub async fn propose(
    pool: &PgPool,
    config: &PlannerConfig,
    request: &Valid<PlanRequest>,
    now: DateTime<Utc>,
) -> Result<AppliedPlan, PlanningError> {
    let goal = match request.schedule_goal {
        ScheduleGoal::MeanCompletion => Goal::MeanCompletion,
        ScheduleGoal::Makespan => Goal::Makespan,
    };
    let Made { applied, input, plan, ids, .. } = make(pool, config, request, now, goal, |_| {}).await?;
    choose_standbys(pool, config, input, plan, ids).await?;
    Ok(applied)
}

/// Puts in force the standbys this plan and the fleet's recent moves
/// favour (`domain::standby`): where each VM's disk should be kept warm.
/// The choice runs off the async runtime, as the planner does.
async fn choose_standbys(
    pool: &PgPool,
    config: &PlannerConfig,
    input: PlanInput,
    plan: planner::Plan,
    ids: Ids,
) -> Result<(), PlanningError> {
    let budgets = standby::Budgets {
        per_vm: config.standbys_per_vm,
        site_share: config.replica_budget_share,
        link_share: config.replication_share,
        full_sync_s: standby::FULL_SYNC_S,
    };
    let chosen = tokio::task::spawn_blocking(move || {
        let mut operator = vec![Vec::new(); input.vms.len()];
        for (vm, site) in ids.indices(&ids.named) {
            operator[vm].push(site);
        }
        // A returning VM goes back where it came from: its recent origins are favoured beside the plan's moves.
        let favoured: Vec<(usize, usize)> =
            plan.moves.iter().map(|m| (m.vm, m.to)).chain(ids.indices(&ids.origins)).collect();
        standby::choose(&input, &operator, &favoured, &ids.protected, budgets)
            .into_iter()
            .filter(|c| c.chosen == standby::Chosen::Plans)
            .map(|c| (ids.vms[c.vm], ids.sites[c.site]))
            .collect::<Vec<(i64, i64)>>()
    })
    .await
    .map_err(|e| PlanningError::Unsolved(format!("choosing standbys stopped: {e}")))?;
    db::standbys::choose(pool, &chosen).await?;
    Ok(())
}

/// The inventory in one consistent read, with (if asked, since when) each
/// VM's moves (by VM id) and the migrations under way.
pub(crate) struct Snapshot {
    pub sites: Vec<Site>,
    pub links: Vec<Link>,
    pub vms: Vec<Vm>,
    pub groups: Vec<Group>,
    pub recent: HashMap<i64, u32>,
    /// Standbys in force, with their replicas' freshness.
    pub standbys: Vec<db::standbys::InForce>,
    /// Operator-named standby sites (VM id, site id).
    pub named: Vec<(i64, i64)>,
    /// VMs leaving sites in the days a site may keep their memory (since
    /// [`MEMORY_KEPT_DAYS`] ago, whatever `since` is).
    pub departures: Vec<db::migration_jobs::Departure>,
    /// The migrations under way, which a new plan's moves share links with.
    pub under_way: Vec<db::migration_jobs::UnderWay>,
}

pub(crate) async fn snapshot(pool: &PgPool, since: Option<DateTime<Utc>>) -> Result<Snapshot, PlanningError> {
    let mut tx = db::begin_snapshot(pool).await?;
    let snapshot = Snapshot {
        sites: db::sites::all(&mut *tx).await?,
        links: db::links::all(&mut *tx).await?,
        vms: db::vms::all(&mut *tx).await?,
        groups: db::groups::all(&mut *tx).await?,
        recent: match since {
            Some(since) => db::migration_jobs::recent(&mut *tx, since).await?,
            None => HashMap::new(),
        },
        standbys: db::standbys::in_force(&mut *tx).await?,
        named: db::standbys::named(&mut *tx).await?,
        departures: match since {
            Some(since) => {
                let kept = Duration::seconds((MEMORY_KEPT_DAYS * 86_400.0) as i64);
                db::migration_jobs::departures(&mut *tx, since.min(Utc::now() - kept)).await?
            }
            None => Vec::new(),
        },
        under_way: db::migration_jobs::under_way(&mut *tx).await?,
    };
    tx.commit().await?;
    Ok(snapshot)
}

/// The planner's settings for `mode`: what the plans service, the
/// rebalancer and the simulator plan with.
pub fn settings(config: &PlannerConfig, mode: PlanMode, carbon_price_per_tonne: f64, currency: String) -> Settings {
    let weights = match mode {
        PlanMode::Cost => Weights { money: 1.0, carbon_price_per_tonne: 0.0 },
        PlanMode::Carbon => Weights { money: 0.0, carbon_price_per_tonne },
        PlanMode::Blend => Weights::blend(carbon_price_per_tonne),
    };
    Settings {
        slot_hours: 1.0,
        currency,
        weights,
        prices: MigrationPrices {
            network_kwh_per_gb: config.network_kwh_per_gb,
            egress_per_gb: 0.0,
            downtime_penalty_per_s: config.downtime_penalty_per_s,
        },
        min_net_saving: config.min_net_saving,
        max_moves_per_day: config.max_moves_per_day,
        wire_fraction: config.wire_fraction,
        time_limit_s: config.plan_time_limit_s,
        mip_gap: config.plan_mip_gap,
    }
}

/// A plan as stored, with what it was made from and its schedule's outcomes.
pub(crate) struct Made {
    pub(crate) applied: AppliedPlan,
    pub(crate) input: PlanInput,
    pub(crate) plan: planner::Plan,
    /// Per move, in order: what the schedule predicts.
    pub(crate) outcomes: Vec<schedule::Outcome>,
    pub(crate) cannot_converge: Vec<usize>,
    ids: Ids,
}

/// The database ids behind a plan's input, and what the standby choice reads.
struct Ids {
    /// By site index and VM index of the input.
    sites: Vec<i64>,
    vms: Vec<i64>,
    /// The input's index of each id.
    site_index: HashMap<i64, usize>,
    vm_index: HashMap<i64, usize>,
    /// Operator-named standbys and recent origins (VM id, site id).
    named: Vec<(i64, i64)>,
    origins: Vec<(i64, i64)>,
    /// Whether each VM of the input is protected (its standbys keep room for it).
    protected: Vec<bool>,
}

impl Ids {
    /// `input` was made from `sites` (in their order) and `vms` (matched by name).
    fn of(input: &PlanInput, sites: &[Site], vms: &[Vm], named: Vec<(i64, i64)>, origins: Vec<(i64, i64)>) -> Ids {
        let by_name: HashMap<&str, usize> = input.vms.iter().enumerate().map(|(i, v)| (v.name.as_str(), i)).collect();
        let vm_index: HashMap<i64, usize> =
            vms.iter().filter_map(|v| Some((v.id, *by_name.get(v.spec.name.as_str())?))).collect();
        let mut vm_ids = vec![0; input.vms.len()];
        for (&id, &i) in &vm_index {
            vm_ids[i] = id;
        }
        let mut protected = vec![false; input.vms.len()];
        for v in vms {
            if let Some(&i) = vm_index.get(&v.id) {
                protected[i] = v.spec.protected;
            }
        }
        Ids {
            sites: sites.iter().map(|s| s.id).collect(),
            vms: vm_ids,
            site_index: sites.iter().enumerate().map(|(i, s)| (s.id, i)).collect(),
            vm_index,
            named,
            origins,
            protected,
        }
    }

    /// A VM id and a site id as input indices, if the input knows both.
    fn index(&self, vm: i64, site: i64) -> Option<(usize, usize)> {
        Some((*self.vm_index.get(&vm)?, *self.site_index.get(&site)?))
    }

    /// (VM id, site id) pairs as input indices, those the input knows.
    fn indices<'a>(&'a self, pairs: &'a [(i64, i64)]) -> impl Iterator<Item = (usize, usize)> + 'a {
        pairs.iter().filter_map(|&(vm, site)| self.index(vm, site))
    }
}

/// Plans, schedules for `goal` and stores; `adjust` changes the input first (an evacuation's rules).
pub(crate) async fn make(
    pool: &PgPool,
    config: &PlannerConfig,
    request: &Valid<PlanRequest>,
    now: DateTime<Utc>,
    goal: Goal,
    adjust: impl FnOnce(&mut PlanInput) + Send + 'static,
) -> Result<Made, PlanningError> {
    // The slot under way is the first: it is what gets executed.
    let start = now.duration_trunc(Duration::hours(1)).unwrap_or(now);
    let day_ago = now - Duration::hours(24);
    let Snapshot { sites, links, vms, groups, recent, standbys, named, departures, under_way } =
        snapshot(pool, Some(day_ago)).await?;
    let origins = departures.iter().filter(|d| d.left_at >= day_ago).map(|d| (d.vm_id, d.site_id)).collect();

    let (signals, coverage, currency) = horizon_signals(pool, &sites, start, request.horizon_h).await?;
    let site_specs: Vec<_> = sites.iter().map(|s| s.spec.clone()).collect();
    let link_specs: Vec<_> = links.iter().map(|l| l.spec.clone()).collect();
    let vm_specs: Vec<_> = vms.iter().map(|v| (planned_spec(v), recent.get(&v.id).copied().unwrap_or(0))).collect();
    let group_specs: Vec<_> = groups.iter().map(|g| g.spec.clone()).collect();
    let inventory = Inventory { sites: &site_specs, links: &link_specs, vms: &vm_specs, groups: &group_specs };
    let settings = settings(config, request.mode, request.carbon_price_per_tonne, currency.clone());
    let inputs = PlanInputs {
        sites: site_specs.len() as u64,
        links: link_specs.len() as u64,
        vms: vm_specs.len() as u64,
        groups: group_specs.len() as u64,
        inventory_digest: digest(&inventory),
        min_net_saving: config.min_net_saving,
        max_moves_per_day: config.max_moves_per_day,
        wire_fraction: config.wire_fraction,
        network_kwh_per_gb: config.network_kwh_per_gb,
        downtime_penalty_per_s: config.downtime_penalty_per_s,
    };
    let mut input = plan_input(&inventory, signals, settings);
    let ids = Ids::of(&input, &sites, &vms, named, origins);
    // What standbys hold already: a move there sends only the rest of the disk.
    for b in &standbys {
        if let Some((vm, site)) = ids.index(b.vm_id, b.site_id) {
            let share = standby::cached_share(b.synced, b.synced_bytes.max(0) as u64, b.written_bytes.max(0) as u64);
            let bytes = share * input.vms[vm].disk_gib * planner::GIB;
            if bytes > 0.0 {
                input.vms[vm].cached.push((site, bytes));
            }
        }
    }
    // The room protected VMs' standbys keep for them is not the plans' to fill.
    let held: Vec<(usize, usize)> =
        standbys.iter().filter_map(|b| ids.index(b.vm_id, b.site_id)).filter(|&(vm, _)| ids.protected[vm]).collect();
    standby::hold_room(&mut input, &held);
    // What sites kept of the memory of the VMs that left them.
    let left = departures.iter().filter_map(|d| {
        let (vm, site) = ids.index(d.vm_id, d.site_id)?;
        Some((vm, site, (now - d.left_at).num_milliseconds() as f64 / 1000.0))
    });
    planner::inputs::departures(&mut input, left);
    // What the migrations under way still have to send, on their links (read
    // before their VMs are counted at their destinations).
    let earlier: Vec<Earlier> = under_way
        .iter()
        .filter_map(|u| {
            let (vm, to) = ids.index(u.vm_id, u.to_site_id)?;
            // Both as they travel.
            let left_bytes = (u.predicted_bytes - u.sent_bytes).max(0.0);
            let cap_bytes_per_s = u.cap_mbps.filter(|_| u.running).map(|mbps| mbps * 1e6 / 8.0);
            Some(Earlier { vm, from: input.vms[vm].site, to, left_bytes, cap_bytes_per_s })
        })
        .collect();
    for e in &earlier {
        hold_room(&mut input, e.vm, e.to);
    }
    let solved = tokio::task::spawn_blocking(move || {
        adjust(&mut input);
        planner::plan(&input).map(|plan| {
            let (schedule, run) = plan_schedule(&input, &plan.moves, &earlier, goal);
            (plan, input, schedule, run)
        })
    })
    .await
    .map_err(|e| PlanningError::Unsolved(format!("the planner stopped: {e}")))?;
    let (plan, input, schedule, run) = solved.map_err(|e| match e {
        PlanError::Infeasible(why) => PlanningError::Infeasible(why),
        PlanError::Solver(why) => PlanningError::Unsolved(format!("solver: {why}")),
    })?;
    let moves = plan
        .moves
        .iter()
        .map(|m| PlannedMove {
            vm: input.vms[m.vm].name.clone(),
            from: input.sites[m.from].name.clone(),
            to: input.sites[m.to].name.clone(),
            slot: 0,
            saving_cost: m.saving.energy_cost,
            saving_kg: m.saving.emissions_kg,
            migration_cost: m.migration_cost,
            predicted_bytes: m.estimate.wire_bytes,
            predicted_duration_s: m.estimate.duration_s,
            predicted_downtime_ms: m.estimate.downtime_s * 1000.0,
            reason: m.reason.clone(),
        })
        .collect();
    let stats = &plan.stats;
    let new = NewPlan {
        request: (**request).clone(),
        horizon_start: start,
        currency,
        inputs,
        objective: costs(&plan.totals),
        baseline: costs(&plan.baseline),
        moves,
        solver: SolverReport {
            status: match stats.gap {
                g if g <= 1e-6 => "optimal",
                g if g <= config.plan_mip_gap => "within_gap",
                _ => "feasible",
            }
            .to_owned(),
            variables: stats.variables as u64,
            rows: stats.rows as u64,
            classes: stats.classes as u64,
            fractional_classes: stats.fractional_classes as u64,
            solve_s: stats.solve_s,
            lp_bound: stats.lp_bound,
            bound: stats.bound,
            gap: stats.gap,
        },
        signals: site_specs
            .iter()
            .zip(coverage)
            .map(|(site, c)| SignalCoverage {
                site: site.name.clone(),
                actual_slots: c.actual,
                forecast_slots: c.forecast,
                persisted_slots: c.persistence,
                synthetic: c.synthetic,
            })
            .collect(),
        schedule,
    };
    let stored = db::plans::propose(pool, &new).await?;
    tracing::info!(plan = stored.id, moves = stored.moves.len(), gap = stats.gap, "plan proposed");
    let applied = if request.dry_run {
        AppliedPlan { plan: stored, jobs: 0 }
    } else {
        db::plans::approve(pool, stored.id).await?;
        let (plan, jobs) = apply(pool, config, stored.id).await?;
        AppliedPlan { plan, jobs }
    };
    Ok(Made { applied, input, plan, outcomes: run.outcomes, cannot_converge: run.cannot_converge, ids })
}

/// A VM's spec as the planner takes it: the dirty rate its executor
/// measured, once one did, in place of the declared one (convergence and
/// predicted durations then follow the guest as it is).
fn planned_spec(vm: &Vm) -> VmSpec {
    let mut spec = vm.spec.clone();
    spec.dirty_rate_mbps = vm.measured_dirty_rate_mbps.unwrap_or(spec.dirty_rate_mbps);
    spec
}

/// Applies approved plan `id` (see `db::plans::apply`) and dispatches at
/// once, so that its migrations whose links have room can be claimed now
/// rather than at the dispatcher's next turn.
pub async fn apply(
    pool: &PgPool,
    config: &PlannerConfig,
    id: i64,
) -> Result<(heliotrope_api_spec::Plan, u64), StoreError> {
    let applied = db::plans::apply(pool, id).await?;
    crate::dispatcher::dispatch_now(pool, config).await;
    Ok(applied)
}

/// The moves scheduled by Heliotrope's policy for `goal`, with the
/// baselines run on the same moves beside it; and Heliotrope's run itself.
fn plan_schedule(
    input: &PlanInput,
    moves: &[Move],
    earlier: &[Earlier],
    goal: Goal,
) -> (PlanSchedule, schedule::Schedule) {
    let (network, migrations) = schedule::for_moves(input, moves);
    let ours = with_earlier(&network, &migrations, input, earlier, goal);
    let lower_bound_s = lower_bound(&network, &migrations, 60, ours.makespan_s);
    let baselines = BASELINES
        .into_iter()
        .map(|(name, pacing)| {
            let run = predict(&network, &migrations, pacing);
            BaselineSchedule {
                policy: name.to_owned(),
                makespan_s: run.makespan_s,
                mean_completion_s: run.mean_completion_s,
                started_not_converging: run.started_not_converging as u64,
            }
        })
        .collect();
    let site = |i: usize| input.sites[i].name.clone();
    let served = PlanSchedule {
        makespan_s: ours.makespan_s,
        mean_completion_s: ours.mean_completion_s,
        lower_bound_s,
        migrations: migrations
            .iter()
            .zip(&ours.outcomes)
            .map(|(m, o)| {
                let link = network.links[m.link];
                ScheduledMigration {
                    vm: m.name.clone(),
                    from: site(link.from),
                    to: site(link.to),
                    start_s: o.start_s,
                    cap_mbps: o.cap_bytes_per_s.map(|b| b * 8.0 / 1e6),
                    predicted_duration_s: o.start_s.zip(o.finish_s).map(|(s, f)| f - s),
                    predicted_bytes: o.bytes,
                    predicted_downtime_ms: o.downtime_s * 1000.0,
                }
            })
            .collect(),
        cannot_converge: ours.cannot_converge.iter().map(|&i| migrations[i].name.clone()).collect(),
        baselines,
    };
    (served, ours)
}

/// A migration under way when a plan is made: its VM and destination (plan
/// input indices), what it has left to send (as it travels), and its cap
/// if it runs now (none: it waits).
struct Earlier {
    vm: usize,
    from: usize,
    to: usize,
    left_bytes: f64,
    cap_bytes_per_s: Option<f64>,
}

/// Heliotrope's schedule of `migrations` (a plan's moves) resumed beside the
/// migrations under way: those running hold their caps until what they
/// have left is sent, and those waiting come first in their turn, so the
/// new moves start when their links are free, not at once. The figures
/// are the new moves' alone.
fn with_earlier(
    network: &schedule::Network,
    migrations: &[schedule::Migration],
    input: &PlanInput,
    earlier: &[Earlier],
    goal: Goal,
) -> schedule::Schedule {
    let n = migrations.len();
    let mut all = migrations.to_vec();
    let mut now = vec![(schedule::Progress::Waiting, 0.0); n];
    for e in earlier {
        let Some(link) = network.links.iter().position(|l| (l.from, l.to) == (e.from, e.to)) else { continue };
        all.push(schedule::Migration {
            name: input.vms[e.vm].name.clone(),
            link,
            // What is left, as one stretch with nothing dirtied behind it.
            memory_bytes: 0.0,
            dirty_bytes_per_s: 0.0,
            disk_bytes: e.left_bytes,
            max_downtime_s: input.vms[e.vm].max_downtime_s,
            priority: input.vms[e.vm].priority,
        });
        now.push(match e.cap_bytes_per_s {
            Some(cap) => (schedule::Progress::Disk { left: e.left_bytes }, cap),
            None => (schedule::Progress::Waiting, 0.0),
        });
    }
    let mut ours = schedule::resume(network, &all, Pacing::Heliotrope(goal), &now);
    ours.outcomes.truncate(n);
    ours.cannot_converge.retain(|&i| i < n);
    ours.makespan_s = ours.outcomes.iter().filter_map(|o| o.finish_s).fold(0.0, f64::max);
    let ends: Vec<f64> = ours
        .outcomes
        .iter()
        .enumerate()
        .filter(|(i, o)| !ours.cannot_converge.contains(i) && o.start_s.is_some())
        .filter_map(|(_, o)| o.finish_s.or(o.failed_s))
        .collect();
    ours.mean_completion_s = if ends.is_empty() { 0.0 } else { ends.iter().sum::<f64>() / ends.len() as f64 };
    ours
}

fn costs(b: &Breakdown) -> PlanCosts {
    PlanCosts {
        energy_cost: b.energy.energy_cost,
        emissions_kg: b.energy.emissions_kg,
        migration_bytes: b.migration_bytes,
        migration_cost: b.migration_cost,
        churn_charge: b.churn_charge,
        evacuation_penalty: b.evacuation_penalty,
        objective: b.objective,
    }
}

/// SHA-256 of the inventory as canonical JSON (specs in id order).
fn digest(inventory: &Inventory) -> String {
    let json = serde_json::json!({
        "sites": inventory.sites,
        "links": inventory.links,
        "vms": inventory.vms,
        "groups": inventory.groups,
    });
    let hash = Sha256::digest(json.to_string().as_bytes());
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) type SiteSlots = (Vec<Vec<SlotSignal>>, Vec<Coverage>, String);

/// Per site, a carbon and price value for each slot, where they came from,
/// and the one currency of the prices.
pub(crate) async fn horizon_signals(
    pool: &PgPool,
    sites: &[heliotrope_api_spec::Site],
    start: DateTime<Utc>,
    slots: u32,
) -> Result<SiteSlots, PlanningError> {
    let (from, to) = (start - Duration::days(PERSISTENCE_DAYS), start + Duration::hours(i64::from(slots)));
    let mut per_site = Vec::with_capacity(sites.len());
    let mut coverage = Vec::with_capacity(sites.len());
    let mut currencies: HashMap<String, String> = HashMap::new();
    for site in sites {
        let series = |signal: Signal| async move {
            let points =
                db::signals::series(pool, site.id, signal, from, to, heliotrope_api_spec::Resolution::Hourly).await?;
            let values = slot_values(&points, start, slots).map_err(|hour| {
                PlanningError::Inputs(format!(
                    "signals: no {} for site {} at {hour}, nor at that hour in the {PERSISTENCE_DAYS} days before",
                    enum_to_text(&signal),
                    site.spec.name
                ))
            })?;
            Ok::<_, PlanningError>((points, values))
        };
        let (_, (carbon, carbon_coverage)) = series(Signal::Carbon).await?;
        let (price_points, (price, price_coverage)) = series(Signal::Price).await?;
        if let Some(unit) = price_points.last().map(|p| p.unit.clone()) {
            let currency = unit.trim_end_matches("/MWh").to_owned();
            currencies.insert(currency, site.spec.name.clone());
        }
        per_site.push(
            carbon
                .into_iter()
                .zip(price)
                .map(|(carbon_g_per_kwh, price_per_mwh)| SlotSignal { price_per_mwh, carbon_g_per_kwh })
                .collect(),
        );
        coverage.push(Coverage {
            actual: carbon_coverage.actual + price_coverage.actual,
            forecast: carbon_coverage.forecast + price_coverage.forecast,
            persistence: carbon_coverage.persistence + price_coverage.persistence,
            synthetic: carbon_coverage.synthetic || price_coverage.synthetic,
        });
    }
    if currencies.len() > 1 {
        let mut seen: Vec<String> = currencies.iter().map(|(c, site)| format!("{c} (at {site})")).collect();
        seen.sort();
        return Err(PlanningError::Inputs(format!(
            "signals: prices come in more than one currency ({}); the planner compares them directly, so give \
             every site prices in one currency",
            seen.join(", ")
        )));
    }
    let currency = currencies.into_keys().next().unwrap_or_else(|| "EUR".to_owned());
    Ok((per_site, coverage, currency))
}

/// A plan as the `heliotrope plan` command prints it: a summary, one row per move, and where signals were filled in.
pub fn table(made: &AppliedPlan) -> String {
    use std::fmt::Write;
    let plan = &made.plan;
    let (o, b) = (&plan.objective, &plan.baseline);
    let cur = &plan.currency;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "plan {} ({}), {} h from {}, mode {}, carbon {} {cur}/t",
        plan.id,
        enum_to_text(&plan.status),
        plan.request.horizon_h,
        plan.horizon_start.format("%Y-%m-%d %H:%M UTC"),
        enum_to_text(&plan.request.mode),
        plan.request.carbon_price_per_tonne
    );
    let _ = writeln!(
        out,
        "objective {:.2} vs {:.2} staying put: energy {:.2} vs {:.2} {cur}, {:.1} vs {:.1} kg CO2e; \
         {} moves, {:.1} GB, migration cost {:.2}",
        o.objective,
        b.objective,
        o.energy_cost,
        b.energy_cost,
        o.emissions_kg,
        b.emissions_kg,
        plan.moves.len(),
        o.migration_bytes / 1e9,
        o.migration_cost
    );
    let s = &plan.solver;
    let _ = writeln!(
        out,
        "solver {}: {} classes, {} variables, {} rows, {:.2} s, bound {:.2} (LP {:.2}), gap {:.3}%",
        s.status,
        s.classes,
        s.variables,
        s.rows,
        s.solve_s,
        s.bound,
        s.lp_bound,
        s.gap * 100.0
    );
    if made.jobs > 0 {
        let _ = writeln!(out, "recorded {} migration jobs", made.jobs);
    }
    if !plan.moves.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<20} {:<10} {:<10} {:>10} {:>10} {:>10} {:>8} {:>8} {:>9}  reason",
            "vm", "from", "to", "saving", "kg", "move", "GB", "time s", "down ms"
        );
        for m in &plan.moves {
            let _ = writeln!(
                out,
                "{:<20} {:<10} {:<10} {:>10.2} {:>10.1} {:>10.2} {:>8.2} {:>8.0} {:>9.0}  {}",
                m.vm,
                m.from,
                m.to,
                m.saving_cost,
                m.saving_kg,
                m.migration_cost,
                m.predicted_bytes / 1e9,
                m.predicted_duration_s,
                m.predicted_downtime_ms,
                m.reason
            );
        }
    }
    let synthetic = plan.signals.iter().filter(|c| c.synthetic).count();
    if synthetic > 0 {
        let _ = writeln!(
            out,
            "\nSYNTHETIC signals (demo data, not measurements) at {synthetic} of {} sites",
            plan.signals.len()
        );
    }
    let persisted: Vec<String> = plan
        .signals
        .iter()
        .filter(|c| c.persisted_slots > 0)
        .map(|c| format!("{} ({} slots)", c.site, c.persisted_slots))
        .collect();
    if !persisted.is_empty() {
        let _ = writeln!(out, "signals filled from the same hour on an earlier day: {}", persisted.join(", "));
    }
    out
}
