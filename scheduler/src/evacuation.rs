//! Site evacuation: the VMs of a site in trouble, out before a deadline.
//! Those that can finish a live migration in time go live, by priority
//! (the plans service's path with the evacuation's rules and a deadline
//! goal); those that cannot, but have a replica at a standby, get a final
//! sync of it instead, sharing the link with the live moves, so that if
//! the site is then lost they restart from a recovery point as fresh as
//! the link allows (`db::recoveries`); the rest stay, with why.

use chrono::{DateTime, Utc};
use heliotrope_api_spec::{EvacuationReport, EvacuationRequest, Evacuee, PlanRequest};
use sqlx::PgPool;

use crate::config::PlannerConfig;
use crate::db;
use crate::domain::planner::inputs::evacuation;
use crate::domain::recovery::final_syncs;
use crate::domain::schedule::Goal;
use crate::domain::Valid;
use crate::planning::{make, Made, PlanningError};

/// How long an executor may take to hear of a final sync (it asks for its
/// replication plan every 5 s): when the sync is predicted to begin.
const FINAL_SYNC_HEARD_S: f64 = 5.0;

/// Evacuates site `site_id`: marks it draining, plans destinations for its
/// VMs (the rest of the fleet stays put), schedules the moves for the most
/// priority-weighted VMs out before the deadline, stores and applies the
/// plan, and says which VMs make it, which are late and which stay, and why.
/// A dry run only predicts: the site stays open and the plan is proposed.
pub async fn evacuate(
    pool: &PgPool,
    config: &PlannerConfig,
    site_id: i64,
    request: &Valid<EvacuationRequest>,
    now: DateTime<Utc>,
) -> Result<EvacuationReport, PlanningError> {
    let site = db::sites::get(pool, site_id).await?;
    let all_sites = db::sites::all(pool).await?;
    let index = |name: &str| all_sites.iter().position(|s| s.spec.name == name);
    let targets = match &request.target_sites {
        None => None,
        Some(names) => Some(
            names
                .iter()
                .enumerate()
                .map(|(i, name)| match index(name) {
                    Some(t) if name != &site.spec.name => Ok(t),
                    Some(_) => Err(PlanningError::Inputs(format!("target_sites[{i}]: the site being evacuated"))),
                    None => Err(PlanningError::Inputs(format!("target_sites[{i}]: no site named '{name}'"))),
                })
                .collect::<Result<Vec<usize>, _>>()?,
        ),
    };
    // A preview leaves the site open; the plan it stores is only proposed.
    if !request.dry_run {
        db::sites::drain(pool, site_id).await?;
    }
    let deadline_s = request.deadline_s;
    let plan_request =
        crate::domain::planner::inputs::parse_request(PlanRequest { dry_run: request.dry_run, ..Default::default() })
            .map_err(|e| PlanningError::Inputs(e.to_string()))?;
    let name = site.spec.name.clone();
    let made = make(pool, config, &plan_request, now, Goal::Deadline { deadline_s }, move |input| {
        // Sites are read in id order both times; the name finds it even if one was added since.
        if let Some(at) = input.sites.iter().position(|s| s.name == name) {
            let targets: Option<Vec<usize>> = targets.map(|t| {
                t.iter().filter_map(|&i| input.sites.iter().position(|s| s.name == all_sites[i].spec.name)).collect()
            });
            evacuation(input, at, targets.as_deref());
        }
    })
    .await?;
    let Made { applied, input, plan, outcomes, cannot_converge, .. } = made;
    let at = input.sites.iter().position(|s| s.name == site.spec.name);
    let mut report = EvacuationReport {
        site: site.spec.name.clone(),
        deadline_s,
        plan_id: applied.plan.id,
        out_in_time: Vec::new(),
        late: Vec::new(),
        staying: Vec::new(),
        synced: Vec::new(),
    };
    for (k, (m, o)) in plan.moves.iter().zip(&outcomes).enumerate() {
        let evacuee = |why: Option<String>| Evacuee {
            vm: input.vms[m.vm].name.clone(),
            to: Some(input.sites[m.to].name.clone()),
            predicted_finish_s: o.finish_s,
            why,
            recovery_point: None,
        };
        match o.finish_s {
            Some(finish) if finish <= deadline_s => report.out_in_time.push(evacuee(None)),
            _ if cannot_converge.contains(&k) => report.late.push(evacuee(Some(
                "cannot converge on its link: its dirty rate needs more than the link can give".into(),
            ))),
            _ => report.late.push(evacuee(Some(
                "the deadline is too short: the links are busy with higher-priority VMs until then".into(),
            ))),
        }
    }
    report
        .out_in_time
        .sort_by(|a, b| a.predicted_finish_s.unwrap_or(0.0).total_cmp(&b.predicted_finish_s.unwrap_or(0.0)));
    for (v, vm) in input.vms.iter().enumerate() {
        if Some(vm.site) != at || plan.placement[v] != vm.site {
            continue;
        }
        let why = if vm.pinned {
            "pinned (or a migration of it is under way)".to_owned()
        } else {
            "no room: no open site it may go to has the capacity or link bytes left, or its migration cannot converge there"
                .to_owned()
        };
        report.staying.push(Evacuee {
            vm: vm.name.clone(),
            to: None,
            predicted_finish_s: None,
            why: Some(why),
            recovery_point: None,
        });
    }
    with_final_syncs(pool, config, site_id, &mut report, request.dry_run, now).await?;
    tracing::info!(
        site = %report.site,
        out = report.out_in_time.len(),
        late = report.late.len(),
        synced = report.synced.len(),
        staying = report.staying.len(),
        "evacuation planned"
    );
    Ok(report)
}

/// Gives the VMs that will not be out live in time a final sync of their
/// freshest replica where one ends before the deadline (by priority,
/// `domain::recovery::final_syncs`), in place of their live move; says
/// the recovery point of each, and of those that stay with a replica.
async fn with_final_syncs(
    pool: &PgPool,
    config: &PlannerConfig,
    site_id: i64,
    report: &mut EvacuationReport,
    dry_run: bool,
    now: DateTime<Utc>,
) -> Result<(), PlanningError> {
    let behind: Vec<String> = report.late.iter().chain(&report.staying).map(|e| e.vm.clone()).collect();
    let candidates = db::recoveries::final_sync_candidates(pool, site_id, &behind, config.replication_share).await?;
    let wanted: Vec<_> = candidates.iter().map(|c| c.candidate.clone()).collect();
    let ends = final_syncs(&wanted, report.deadline_s, FINAL_SYNC_HEARD_S);
    let begins = now + chrono::Duration::milliseconds((FINAL_SYNC_HEARD_S * 1000.0) as i64);
    let mut ordered = Vec::new();
    for (c, end) in candidates.iter().zip(&ends) {
        let name = &c.candidate.name;
        let Some(end) = *end else {
            // Stays (or moves late) with its last sync as its recovery point.
            for e in report.late.iter_mut().chain(report.staying.iter_mut()).filter(|e| &e.vm == name) {
                e.recovery_point = Some(c.synced_at);
                let why = e.why.take().unwrap_or_default();
                e.why = Some(format!("{why}; a final sync of its replica at {} would not end in time", c.standby));
            }
            continue;
        };
        let taken = |list: &mut Vec<Evacuee>| list.iter().position(|e| &e.vm == name).map(|k| list.remove(k));
        let was = taken(&mut report.late).or_else(|| taken(&mut report.staying));
        let why = was.and_then(|e| e.why).unwrap_or_default();
        report.synced.push(Evacuee {
            vm: name.clone(),
            to: Some(c.standby.clone()),
            predicted_finish_s: Some(end),
            why: Some(format!("not out live in time ({why}): its replica at {} gets a final sync instead", c.standby)),
            recovery_point: Some(begins),
        });
        ordered.push(c);
    }
    report.synced.sort_by(|a, b| a.predicted_finish_s.unwrap_or(0.0).total_cmp(&b.predicted_finish_s.unwrap_or(0.0)));
    if !dry_run && !ordered.is_empty() {
        db::recoveries::order_final_syncs(pool, report.plan_id, &ordered, now, "scheduler").await?;
    }
    Ok(())
}
