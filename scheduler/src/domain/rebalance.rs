//! What the hourly rebalancer does with a plan it made. The loop itself (leader election, timing, storage) lives in
//! `crate::rebalancer`; the rules are here so that they are unit-tested.

use heliotrope_api_spec::{Plan, RebalanceOutcome};

/// A plan's net saving: what the placement now would cost over the
/// horizon minus what the plan costs, migrations and churn charge included.
pub fn net_saving(plan: &Plan) -> f64 {
    plan.baseline.objective - plan.objective.objective
}

/// What to do with a fresh plan: apply it only when auto-apply is on and
/// it saves more than `min_saving`; else leave it for a planner. Returns
/// the outcome and a sentence for the operator.
pub fn decide(plan: &Plan, auto_apply: bool, min_saving: f64) -> (RebalanceOutcome, String) {
    let saving = net_saving(plan);
    let moves = plan.moves.len();
    if moves == 0 {
        return (RebalanceOutcome::NoMoves, "every VM is best where it is".into());
    }
    let what = format!("{moves} moves, net saving {saving:.2} {}", plan.currency);
    if !auto_apply {
        (RebalanceOutcome::Proposed, format!("{what}; auto-apply is off: waiting for a planner"))
    } else if saving <= min_saving {
        (
            RebalanceOutcome::Proposed,
            format!("{what}, not above the auto-apply minimum of {min_saving:.2}: waiting for a planner"),
        )
    } else {
        (RebalanceOutcome::Applied, what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use heliotrope_api_spec::{PlanCosts, PlannedMove};

    fn costs(objective: f64) -> PlanCosts {
        PlanCosts {
            energy_cost: objective,
            emissions_kg: 0.0,
            migration_bytes: 0.0,
            migration_cost: 0.0,
            churn_charge: 0.0,
            evacuation_penalty: 0.0,
            objective,
        }
    }

    fn plan(baseline: f64, objective: f64, moves: usize) -> Plan {
        let json = serde_json::json!({
            "id": 1, "created_at": "2026-12-01T00:00:00Z", "status": "proposed",
            "status_changed_at": "2026-12-01T00:00:00Z", "request": {}, "horizon_start": "2026-12-01T00:00:00Z",
            "currency": "EUR",
            "inputs": {"sites": 2, "links": 2, "vms": 1, "groups": 0, "inventory_digest": "x", "min_net_saving": 0.5,
                "max_moves_per_day": 2, "wire_fraction": 1.0, "network_kwh_per_gb": 0.01, "downtime_penalty_per_s": 0.1},
            "objective": costs(objective), "baseline": costs(baseline), "moves": [],
            "solver": {"status": "optimal", "variables": 1, "rows": 1, "classes": 1, "fractional_classes": 0,
                "solve_s": 0.0, "lp_bound": 0.0, "bound": 0.0, "gap": 0.0},
            "signals": []
        });
        let mut plan: Plan = serde_json::from_value(json).unwrap();
        let one = PlannedMove {
            vm: "web-1".into(),
            from: "a".into(),
            to: "b".into(),
            slot: 0,
            saving_cost: 1.0,
            saving_kg: 1.0,
            migration_cost: 0.1,
            predicted_bytes: 1e9,
            predicted_duration_s: 10.0,
            predicted_downtime_ms: 100.0,
            reason: "cheaper".into(),
        };
        plan.moves = vec![one; moves];
        plan
    }

    #[test]
    fn applies_only_what_saves_more_than_the_minimum_with_auto_apply_on() {
        assert_eq!(decide(&plan(100.0, 80.0, 3), true, 10.0).0, RebalanceOutcome::Applied);
        assert_eq!(decide(&plan(100.0, 95.0, 3), true, 10.0).0, RebalanceOutcome::Proposed);
        assert_eq!(decide(&plan(100.0, 90.0, 3), true, 10.0).0, RebalanceOutcome::Proposed, "at the minimum");
        assert_eq!(decide(&plan(100.0, 20.0, 3), false, 10.0).0, RebalanceOutcome::Proposed);
        assert_eq!(decide(&plan(100.0, 100.0, 0), true, -1.0).0, RebalanceOutcome::NoMoves);
        assert!(decide(&plan(100.0, 80.0, 3), true, 10.0).1.contains("3 moves, net saving 20.00 EUR"));
    }
}
