//! Why each move is made (money and carbon, an evacuation, a group's
//! policy, or room for what cannot go elsewhere), with its saving and
//! predicted migration; and what a placement costs over the horizon.

use super::classes::{horizon_cost, staying_penalty, Migration};
use super::{Admission, Breakdown, GroupRule, Move, PlanInput, PlanSite};
use crate::domain::cost::SlotSignal;

/// A move with its saving, predicted migration and reason.
pub(super) fn explain(input: &PlanInput, vm: usize, to: usize, migration: &Migration) -> Move {
    let v = &input.vms[vm];
    let (from_site, to_site) = (&input.sites[v.site], &input.sites[to]);
    let saving =
        horizon_cost(from_site, v, input.settings.slot_hours) - horizon_cost(to_site, v, input.settings.slot_hours);
    let net = saving.weighted(input.settings.weights) - migration.weighted;
    let mean = |site: &PlanSite, of: fn(&SlotSignal) -> f64| {
        site.signals.iter().map(of).sum::<f64>() / site.signals.len().max(1) as f64
    };
    let reason = if from_site.admission.evacuating() {
        format!(
            "evacuation: {} is {}",
            from_site.name,
            if from_site.admission == Admission::Down { "down" } else { "being evacuated" }
        )
    } else if net + 1e-9 >= input.settings.min_net_saving {
        let (cur, kg) = (&input.settings.currency, saving.emissions_kg);
        let money = if saving.energy_cost >= 0.0 {
            format!("saves {:.2} {cur}", saving.energy_cost)
        } else {
            format!("costs {:.2} {cur} more", -saving.energy_cost)
        };
        let carbon =
            if kg >= 0.0 { format!("saves {kg:.1} kg CO2e") } else { format!("emits {:.1} kg CO2e more", -kg) };
        format!(
            "cheaper at {to}: {money} and {carbon} over {hours} h (average {p_to:.0} vs \
             {p_from:.0} {cur}/MWh, {c_to:.0} vs {c_from:.0} g/kWh at {from}), net of a migration costing {m:.2}",
            to = to_site.name,
            from = from_site.name,
            hours = from_site.signals.len() as f64 * input.settings.slot_hours,
            p_to = mean(to_site, |s| s.price_per_mwh),
            p_from = mean(from_site, |s| s.price_per_mwh),
            c_to = mean(to_site, |s| s.carbon_g_per_kwh),
            c_from = mean(from_site, |s| s.carbon_g_per_kwh),
            m = migration.weighted,
        )
    } else if let Some(group) = v.group {
        format!(
            "group {}: its {} policy needs this member at {} (net {net:.2} on its own)",
            input.groups[group].name,
            match input.groups[group].rule {
                GroupRule::Spread { .. } => "spread",
                GroupRule::Colocate { .. } => "colocate",
            },
            to_site.name
        )
    } else {
        format!("capacity: frees room at {} for what cannot go elsewhere (net {net:.2} on its own)", from_site.name)
    };
    Move {
        vm,
        from: v.site,
        to,
        saving,
        migration: migration.cost,
        migration_cost: migration.weighted,
        estimate: migration.estimate,
        reason,
    }
}

/// What leaving every VM where it is, but for `moves`, costs.
pub(super) fn breakdown(input: &PlanInput, moves: &[Move]) -> Breakdown {
    let mut totals = Breakdown::default();
    for vm in &input.vms {
        let running = horizon_cost(&input.sites[vm.site], vm, input.settings.slot_hours);
        totals.energy = totals.energy + running;
        totals.objective += running.weighted(input.settings.weights);
        totals.evacuation_penalty += staying_penalty(input, vm);
    }
    for m in moves {
        totals.evacuation_penalty -= staying_penalty(input, &input.vms[m.vm]);
        totals.energy = totals.energy - m.saving + m.migration.energy;
        totals.migration_bytes += m.estimate.wire_bytes;
        totals.migration_cost += m.migration_cost;
        totals.churn_charge += input.settings.min_net_saving.max(0.0);
        totals.objective +=
            m.migration_cost + input.settings.min_net_saving.max(0.0) - m.saving.weighted(input.settings.weights);
    }
    totals.objective += totals.evacuation_penalty;
    totals
}

#[cfg(test)]
mod tests {
    use crate::domain::planner::plan;
    use crate::domain::planner::tests::{input, link, site, vm};

    #[test]
    fn churn_hurdle_and_forced_moves() {
        // Saving 3.6 a day beats a hurdle of 3 but not of 4.
        let mut i = input(
            vec![site("A", 200.0, 0.0, 1000.0), site("B", 50.0, 0.0, 1000.0)],
            vec![vm("v", 0)],
            vec![link(0, 1)],
        );
        i.settings.min_net_saving = 3.0;
        assert_eq!(plan(&i).unwrap().placement, [1]);
        i.settings.min_net_saving = 4.0;
        assert_eq!(plan(&i).unwrap().placement, [0]);
        // A full site still sheds what it cannot hold, hurdle or not.
        i.sites[0].capacity.vcpus = 100.0;
        i.vms.push(vm("w", 0));
        let p = plan(&i).unwrap();
        assert_eq!(p.moves.len(), 1);
        let m = &p.moves[0];
        assert!(m.reason.starts_with("capacity: frees room at A"), "{}", m.reason);
        assert_eq!(p.totals.churn_charge, 4.0);
        assert!(
            (p.totals.objective - (p.baseline.objective - m.saving.energy_cost + m.migration_cost + 4.0)).abs() < 1e-9
        );
    }
}
