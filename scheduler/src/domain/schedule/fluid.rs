//! The fluid model of concurrent pre-copy under shared bandwidth: each
//! migration sends its disk, then memory rounds (each resending what the
//! guest dirtied during the previous one), then pauses for a last round
//! that fits its downtime; rates change only when a phase ends or a
//! migration starts. It predicts a plan's schedule under any pacing, and
//! recomputes the rest of one from where migrations stand.

use super::admit::{Admitted, Pass, Stand};
use super::{
    capacities, least_share, order, path_bytes_per_s, resources, Migration, Network, Outcome, Pacing, Schedule,
    MAX_ROUNDS,
};

/// Where a migration stands: as the model runs it, or as its executor
/// reports it when the rest of a schedule is recomputed ([`resume`]).
/// Bytes are as they travel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Progress {
    Waiting,
    Disk {
        left: f64,
    },
    /// A live round: bytes left in it, bytes dirtied since it began, rounds done.
    Round {
        left: f64,
        dirtied: f64,
        done: u32,
    },
    /// The paused last round.
    Final {
        left: f64,
    },
    Finished,
    Failed,
    Skipped,
}

/// Predicts how `migrations` run over `network` under `pacing` in the fluid model, from the start.
pub fn predict(network: &Network, migrations: &[Migration], pacing: Pacing) -> Schedule {
    resume(network, migrations, pacing, &vec![(Progress::Waiting, 0.0); migrations.len()])
}

/// Recomputes the rest of a schedule from where each migration stands now
/// (its progress and, if running, its current cap), times from now: a
/// migration slower than predicted holds its cap longer, so those after it
/// start later instead of overloading its link; one that ended early frees
/// its cap for the next, or for those running. Running migrations report
/// a start of 0 and finished ones a start and finish of 0.
pub fn resume(network: &Network, migrations: &[Migration], pacing: Pacing, now: &[(Progress, f64)]) -> Schedule {
    advance(network, migrations, pacing, now, f64::INFINITY).0
}

/// [`resume`] for `for_s` seconds only: the schedule so far (bytes and
/// downtime of this stretch; those still running have no finish) and
/// where each migration stands at its end, with its rate: what the next
/// stretch resumes from. The what-if replay runs its hours this way.
pub fn advance(
    network: &Network,
    migrations: &[Migration],
    pacing: Pacing,
    now: &[(Progress, f64)],
    for_s: f64,
) -> (Schedule, Vec<(Progress, f64)>) {
    let n = migrations.len();
    let capacity = capacities(network);
    let uses: Vec<Vec<usize>> = migrations.iter().map(|m| resources(network, m)).collect();
    let paths: Vec<f64> = migrations.iter().map(|m| path_bytes_per_s(network, m)).collect();
    let least: Vec<Option<f64>> = migrations.iter().zip(&paths).map(|(m, &p)| least_share(m, p)).collect();
    let cannot_converge: Vec<usize> = (0..n).filter(|&i| least[i].is_none()).collect();
    let heliotrope = matches!(pacing, Pacing::Heliotrope(_));
    let order = order(migrations, &paths, pacing);

    let mut phase: Vec<Progress> = now.iter().map(|&(progress, _)| progress).collect();
    let mut outcomes = vec![Outcome::default(); n];
    let mut rate: Vec<f64> = now.iter().map(|&(_, cap)| cap).collect();
    for (i, o) in outcomes.iter_mut().enumerate() {
        match phase[i] {
            Progress::Waiting => rate[i] = 0.0,
            Progress::Finished => (o.start_s, o.finish_s) = (Some(0.0), Some(0.0)),
            _ => (o.start_s, o.cap_bytes_per_s) = (Some(0.0), Some(rate[i])),
        }
    }
    if heliotrope {
        for &i in &cannot_converge {
            if phase[i] == Progress::Waiting {
                phase[i] = Progress::Skipped;
            }
        }
    }
    let unlimited = vec![f64::INFINITY; n];
    let mut now = 0.0;
    let mut peak_use = vec![0.0; capacity.len()];
    let mut least_share_over_dirty = f64::INFINITY;
    loop {
        // Start what the pacing admits, and set every running migration's rate.
        let running = |phase: &[Progress], i: usize| {
            matches!(phase[i], Progress::Disk { .. } | Progress::Round { .. } | Progress::Final { .. })
        };
        match pacing {
            Pacing::Heliotrope(goal) => {
                let stands: Vec<Stand> = (0..n)
                    .map(|i| match phase[i] {
                        _ if running(&phase, i) => Stand::Running,
                        Progress::Waiting => Stand::Waiting,
                        _ => Stand::Ended,
                    })
                    .collect();
                let pass = Pass { capacity: &capacity, uses: &uses, least: &least, order: &order, ceiling: &unlimited };
                for (i, admitted) in pass.admit(migrations, goal, now, &stands, &mut rate) {
                    match admitted {
                        Admitted::Start => {
                            outcomes[i].start_s = Some(now);
                            outcomes[i].cap_bytes_per_s = Some(rate[i]);
                            phase[i] = begin(&migrations[i]);
                        }
                        Admitted::TooLate => phase[i] = Progress::Skipped,
                    }
                }
            }
            Pacing::AllAtOnce | Pacing::OneAtATime | Pacing::PerLink(_) => {
                let mut per_link = vec![0; network.links.len()];
                let mut active = 0;
                for i in (0..n).filter(|&i| running(&phase, i)) {
                    per_link[migrations[i].link] += 1;
                    active += 1;
                }
                for &i in &order {
                    if phase[i] != Progress::Waiting {
                        continue;
                    }
                    let admit = match pacing {
                        Pacing::AllAtOnce => true,
                        Pacing::OneAtATime => active == 0,
                        Pacing::PerLink(most) => per_link[migrations[i].link] < most,
                        Pacing::Heliotrope(_) => unreachable!("handled above"),
                    };
                    if admit {
                        per_link[migrations[i].link] += 1;
                        active += 1;
                        outcomes[i].start_s = Some(now);
                        phase[i] = begin(&migrations[i]);
                    }
                }
                let live: Vec<usize> = (0..n).filter(|&i| running(&phase, i)).collect();
                fair_shares(&capacity, &uses, &live, &mut rate);
            }
        }
        let live: Vec<usize> = (0..n).filter(|&i| running(&phase, i)).collect();
        if live.is_empty() {
            break;
        }
        let mut in_use = vec![0.0; capacity.len()];
        for &i in &live {
            uses[i].iter().for_each(|&r| in_use[r] += rate[i]);
            if migrations[i].dirty_bytes_per_s > 0.0 {
                least_share_over_dirty = least_share_over_dirty.min(rate[i] / migrations[i].dirty_bytes_per_s);
            }
        }
        for ((peak, used), cap) in peak_use.iter_mut().zip(in_use).zip(&capacity) {
            *peak = f64::max(*peak, used / cap);
        }
        // Advance to the next phase change.
        let step = live
            .iter()
            .map(|&i| match phase[i] {
                Progress::Disk { left } | Progress::Round { left, .. } | Progress::Final { left } if rate[i] > 0.0 => {
                    left / rate[i]
                }
                _ => f64::INFINITY,
            })
            .fold(f64::INFINITY, f64::min);
        if now >= for_s {
            break;
        }
        if !step.is_finite() {
            // Everything live is starved: those migrations cannot finish.
            for &i in &live {
                phase[i] = Progress::Failed;
                outcomes[i].failed_s = Some(now);
            }
            continue;
        }
        let step = step.min(for_s - now);
        now += step;
        for &i in &live {
            let m = &migrations[i];
            let sent = rate[i] * step;
            outcomes[i].bytes += sent;
            phase[i] = match phase[i] {
                Progress::Disk { left } if left - sent > 1e-6 * left.max(1.0) => Progress::Disk { left: left - sent },
                Progress::Disk { .. } => {
                    let next = first_round(m, rate[i]);
                    if let Progress::Final { left } = next {
                        outcomes[i].downtime_s = left / rate[i];
                    }
                    next
                }
                Progress::Round { left, dirtied, done } => {
                    let dirtied = (dirtied + m.dirty_bytes_per_s * step).min(m.memory_bytes);
                    if left - sent > 1e-6 * left.max(1.0) {
                        Progress::Round { left: left - sent, dirtied, done }
                    } else if dirtied / rate[i] <= m.max_downtime_s {
                        outcomes[i].downtime_s = dirtied / rate[i];
                        if dirtied > 0.0 {
                            Progress::Final { left: dirtied }
                        } else {
                            Progress::Finished
                        }
                    } else if done + 1 >= MAX_ROUNDS {
                        outcomes[i].failed_s = Some(now);
                        Progress::Failed
                    } else {
                        Progress::Round { left: dirtied, dirtied: 0.0, done: done + 1 }
                    }
                }
                Progress::Final { left } if left - sent > 1e-6 * left.max(1.0) => Progress::Final { left: left - sent },
                Progress::Final { .. } => Progress::Finished,
                other => other,
            };
            if phase[i] == Progress::Finished {
                outcomes[i].finish_s = Some(now);
            }
            if !running(&phase, i) {
                rate[i] = 0.0;
            }
        }
    }
    let ends: Vec<f64> = (0..n)
        .filter(|&i| least[i].is_some() && outcomes[i].start_s.is_some())
        .filter_map(|i| outcomes[i].finish_s.or(outcomes[i].failed_s))
        .collect();
    let state = phase.into_iter().zip(rate).collect();
    let schedule = Schedule {
        makespan_s: outcomes.iter().filter_map(|o| o.finish_s).fold(0.0, f64::max),
        mean_completion_s: if ends.is_empty() { 0.0 } else { ends.iter().sum::<f64>() / ends.len() as f64 },
        started_not_converging: outcomes.iter().filter(|o| o.failed_s.is_some()).count(),
        peak_use,
        least_share_over_dirty,
        cannot_converge,
        outcomes,
    };
    (schedule, state)
}

/// Disk first (none to send is a disk phase that ends at once).
fn begin(m: &Migration) -> Progress {
    Progress::Disk { left: m.disk_bytes.max(0.0) }
}

/// The first memory round, or straight to the pause when memory fits the downtime.
fn first_round(m: &Migration, rate: f64) -> Progress {
    if m.memory_bytes / rate <= m.max_downtime_s {
        Progress::Final { left: m.memory_bytes }
    } else {
        Progress::Round { left: m.memory_bytes, dirtied: 0.0, done: 0 }
    }
}

/// Max-min fair rates for the `live` migrations over shared capacities.
fn fair_shares(capacity: &[f64], uses: &[Vec<usize>], live: &[usize], rate: &mut [f64]) {
    let mut left = capacity.to_vec();
    let mut frozen = vec![false; rate.len()];
    live.iter().for_each(|&i| rate[i] = 0.0);
    loop {
        let unfrozen: Vec<usize> = live.iter().copied().filter(|&i| !frozen[i]).collect();
        if unfrozen.is_empty() {
            return;
        }
        let mut count = vec![0usize; capacity.len()];
        unfrozen.iter().for_each(|&i| uses[i].iter().for_each(|&r| count[r] += 1));
        let Some(increment) =
            (0..capacity.len()).filter(|&r| count[r] > 0).map(|r| left[r] / count[r] as f64).min_by(f64::total_cmp)
        else {
            return;
        };
        for &i in &unfrozen {
            rate[i] += increment;
            uses[i].iter().for_each(|&r| left[r] -= increment);
        }
        for &i in &unfrozen {
            if uses[i].iter().any(|&r| left[r] <= 1e-9 * capacity[r].max(1.0)) {
                frozen[i] = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::cost::{precopy, PreCopyInput};
    use crate::domain::schedule::tests::{close, migration, one_link, GB};
    use crate::domain::schedule::{alone, lower_bound, Goal, Link, SAFETY_MARGIN};

    #[test]
    fn one_migration_alone_follows_the_closed_form() {
        // 8 GB at 100 MB/s dirtied at 20 MB/s: rounds of 8, 1.6, 0.32, 0.064, 0.0128 GB;
        // the last fits 0.3 s (12.8 MB / 100 MB/s = 0.128 s).
        let m = migration("m", 0, 8.0, 20.0);
        let net = one_link(100e6);
        let closed = precopy(&PreCopyInput {
            memory_bytes: 8.0 * GB,
            dirty_bytes_per_s: 20e6,
            bandwidth_bytes_per_s: 100e6,
            max_downtime_s: 0.3,
            max_rounds: MAX_ROUNDS,
        })
        .unwrap();
        for pacing in [Pacing::Heliotrope(Goal::MeanCompletion), Pacing::AllAtOnce, Pacing::OneAtATime] {
            let s = predict(&net, std::slice::from_ref(&m), pacing);
            let o = s.outcomes[0];
            assert!(close(o.bytes, closed.bytes), "{pacing:?}: {} vs {}", o.bytes, closed.bytes);
            assert!(close(o.finish_s.unwrap(), closed.duration_s));
            assert!(close(o.downtime_s, closed.downtime_s));
            assert_eq!(closed.live_rounds, 4);
        }
        // With 10 GB of disk first: 100 s more, 10 GB more.
        let with_disk = Migration { disk_bytes: 10.0 * GB, ..m };
        let s = predict(&net, &[with_disk], Pacing::AllAtOnce);
        assert!(close(s.outcomes[0].finish_s.unwrap(), closed.duration_s + 100.0));
    }

    #[test]
    fn two_identical_migrations_sharing_a_link_take_longer_together() {
        // Each alone at 100 MB/s; sharing, each gets 50 MB/s: r = 0.4 instead of 0.2.
        let net = one_link(100e6);
        let pair = [migration("a", 0, 8.0, 20.0), migration("b", 0, 8.0, 20.0)];
        let shared = predict(&net, &pair, Pacing::AllAtOnce);
        let at_half = precopy(&PreCopyInput {
            memory_bytes: 8.0 * GB,
            dirty_bytes_per_s: 20e6,
            bandwidth_bytes_per_s: 50e6,
            max_downtime_s: 0.3,
            max_rounds: MAX_ROUNDS,
        })
        .unwrap();
        for o in &shared.outcomes {
            assert!(close(o.finish_s.unwrap(), at_half.duration_s), "{o:?} vs {at_half:?}");
            assert!(close(o.bytes, at_half.bytes));
        }
        // One after the other: the first done at the closed form alone, the second twice that.
        let (bytes, alone_s) = alone(&pair[0], 100e6).unwrap();
        let ordered = predict(&net, &pair, Pacing::Heliotrope(Goal::MeanCompletion));
        let mut finishes: Vec<f64> = ordered.outcomes.iter().map(|o| o.finish_s.unwrap()).collect();
        finishes.sort_by(f64::total_cmp);
        assert!(close(finishes[0], alone_s) && close(finishes[1], 2.0 * alone_s), "{finishes:?}");
        assert!(ordered.mean_completion_s < shared.mean_completion_s);
        assert!(close(ordered.outcomes[0].bytes, bytes));
        // The lower bound is the link's bytes at full rate.
        let lb = lower_bound(&net, &pair, 50, ordered.makespan_s);
        assert!(close(lb, 2.0 * alone_s) || (lb <= ordered.makespan_s && lb >= 0.98 * 2.0 * alone_s), "{lb}");
    }

    #[test]
    fn starved_migrations_never_converge_and_heliotrope_does_not_start_them() {
        // 8 migrations dirtying 20 MB/s on a 100 MB/s link: all at once, each gets 12.5 MB/s.
        let net = one_link(100e6);
        let many: Vec<Migration> = (0..8).map(|i| migration(&format!("m{i}"), 0, 2.0, 20.0)).collect();
        let crowd = predict(&net, &many, Pacing::AllAtOnce);
        assert_eq!(crowd.started_not_converging, 8);
        let ours = predict(&net, &many, Pacing::Heliotrope(Goal::MeanCompletion));
        assert_eq!(ours.started_not_converging, 0);
        assert!(ours.outcomes.iter().all(|o| o.finish_s.is_some()));
        // One that dirties faster than the link can carry is reported, never started.
        let hopeless = [migration("fast", 0, 2.0, 150.0), migration("ok", 0, 2.0, 10.0)];
        let s = predict(&net, &hopeless, Pacing::Heliotrope(Goal::MeanCompletion));
        assert_eq!(s.cannot_converge, [0]);
        assert_eq!(s.outcomes[0].start_s, None);
        assert!(s.outcomes[1].finish_s.is_some());
    }

    #[test]
    fn shared_uplinks_bound_the_caps() {
        // Two links out of site 0, 100 MB/s each, but the site's uplink carries 120 MB/s in all.
        let net = Network {
            links: vec![
                Link { from: 0, to: 1, usable_bytes_per_s: 100e6 },
                Link { from: 0, to: 2, usable_bytes_per_s: 100e6 },
            ],
            uplink_bytes_per_s: vec![Some(120e6), None, None],
            downlink_bytes_per_s: vec![None; 3],
        };
        let ms = [migration("a", 0, 4.0, 5.0), migration("b", 1, 4.0, 5.0)];
        let s = predict(&net, &ms, Pacing::Heliotrope(Goal::MeanCompletion));
        let caps: f64 = s.outcomes.iter().filter_map(|o| o.cap_bytes_per_s).sum();
        assert!(caps <= 120e6 + 1.0, "{s:?}");
        assert!(s.outcomes.iter().all(|o| o.finish_s.is_some()));
        let lb = lower_bound(&net, &ms, 60, s.makespan_s);
        assert!(lb <= s.makespan_s + 1e-6 && lb > 0.0);
    }

    #[test]
    fn deadlines_favour_priority_and_skip_what_cannot_make_it() {
        let net = one_link(100e6);
        // Each takes about 20 s alone; 50 s fits two. The high-priority ones go first.
        let ms: Vec<Migration> = (0..4)
            .map(|i| Migration { priority: if i >= 2 { 90 } else { 10 }, ..migration(&format!("m{i}"), 0, 2.0, 1.0) })
            .collect();
        let s = predict(&net, &ms, Pacing::Heliotrope(Goal::Deadline { deadline_s: 50.0 }));
        let done: Vec<bool> = s.outcomes.iter().map(|o| o.finish_s.is_some_and(|f| f <= 50.0)).collect();
        assert_eq!(done, [false, false, true, true]);
        assert!(s.outcomes[..2].iter().all(|o| o.start_s.is_none()), "started only what can finish in time");
    }

    /// A random network (3-5 sites, some with shared uplinks and downlinks)
    /// and 1-40 migrations on it.
    fn random_case(seed: u64) -> (Network, Vec<Migration>) {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let sites = rng.random_range(3..=5);
        let mut links = Vec::new();
        for from in 0..sites {
            for to in 0..sites {
                if from != to && rng.random_bool(0.5) {
                    links.push(Link { from, to, usable_bytes_per_s: rng.random_range(20e6..500e6) });
                }
            }
        }
        if links.is_empty() {
            links.push(Link { from: 0, to: 1, usable_bytes_per_s: 100e6 });
        }
        let shared = |rng: &mut rand::rngs::StdRng| {
            (0..sites).map(|_| rng.random_bool(0.4).then(|| rng.random_range(30e6..600e6))).collect()
        };
        let network = Network { links, uplink_bytes_per_s: shared(&mut rng), downlink_bytes_per_s: shared(&mut rng) };
        let migrations = (0..rng.random_range(1..=40))
            .map(|i| Migration {
                name: format!("m{i}"),
                link: rng.random_range(0..network.links.len()),
                memory_bytes: rng.random_range(0.5e9..16e9),
                dirty_bytes_per_s: rng.random_range(0.0..80e6),
                disk_bytes: rng.random_range(0.0..20e9),
                max_downtime_s: rng.random_range(0.05..1.0),
                priority: rng.random_range(0..=100),
            })
            .collect();
        (network, migrations)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

        /// Heliotrope's schedules never over-subscribe a link or shared
        /// uplink, keep every running share above dirty rate x margin,
        /// start nothing that cannot converge, and finish everything else
        /// no sooner than the lower bound allows.
        #[test]
        fn schedules_respect_capacity_and_convergence(seed in proptest::prelude::any::<u64>(), goal in 0..3u8) {
            let (network, migrations) = random_case(seed);
            let goal = match goal {
                0 => Goal::MeanCompletion,
                1 => Goal::Makespan,
                _ => Goal::Deadline { deadline_s: 600.0 },
            };
            let s = predict(&network, &migrations, Pacing::Heliotrope(goal));
            proptest::prop_assert!(s.peak_use.iter().all(|&u| u <= 1.0 + 1e-9), "{:?}", s.peak_use);
            proptest::prop_assert!(s.least_share_over_dirty >= SAFETY_MARGIN - 1e-9, "{}", s.least_share_over_dirty);
            proptest::prop_assert_eq!(s.started_not_converging, 0);
            for (i, o) in s.outcomes.iter().enumerate() {
                if s.cannot_converge.contains(&i) {
                    proptest::prop_assert!(o.start_s.is_none(), "{i} cannot converge, yet started");
                }
                if !matches!(goal, Goal::Deadline { .. }) && !s.cannot_converge.contains(&i) {
                    proptest::prop_assert!(o.finish_s.is_some(), "{i} never finished: {o:?}");
                }
            }
            if !matches!(goal, Goal::Deadline { .. }) {
                let lb = lower_bound(&network, &migrations, 40, s.makespan_s);
                proptest::prop_assert!(lb <= s.makespan_s * (1.0 + 1e-6), "bound {lb} above the makespan {}", s.makespan_s);
            }
        }
    }

    #[test]
    fn a_schedule_run_in_stretches_is_the_schedule_run_at_once() {
        // Three migrations sharing a link for about a minute, advanced 7 s at a time.
        let net = one_link(100e6);
        let three = [migration("a", 0, 2.0, 10.0), migration("b", 0, 1.0, 5.0), migration("c", 0, 3.0, 20.0)];
        let pacing = Pacing::Heliotrope(Goal::MeanCompletion);
        let whole = predict(&net, &three, pacing);
        let mut state = vec![(Progress::Waiting, 0.0); 3];
        let (mut bytes, mut finish, mut downtime) = ([0.0; 3], [None; 3], [0.0; 3]);
        for stretch in 0..100 {
            let (ran, next) = advance(&net, &three, pacing, &state, 7.0);
            for (i, o) in ran.outcomes.iter().enumerate() {
                bytes[i] += o.bytes;
                downtime[i] += o.downtime_s;
                if state[i].0 != Progress::Finished && next[i].0 == Progress::Finished {
                    finish[i] = o.finish_s.map(|f| f + 7.0 * f64::from(stretch));
                }
            }
            state = next;
        }
        for (i, o) in whole.outcomes.iter().enumerate() {
            assert!(close(bytes[i], o.bytes), "{i}: {} vs {}", bytes[i], o.bytes);
            assert!(close(finish[i].unwrap(), o.finish_s.unwrap()), "{i}: {finish:?} vs {o:?}");
            assert!(close(downtime[i], o.downtime_s));
        }
    }

    #[test]
    fn recomputed_schedules_follow_what_executors_report() {
        // Two 2 GB migrations on a 100 MB/s link, one after the other: about 20 s each.
        let net = one_link(100e6);
        let pair = [migration("a", 0, 2.0, 1.0), migration("b", 0, 2.0, 1.0)];
        let pacing = Pacing::Heliotrope(Goal::MeanCompletion);
        let planned = predict(&net, &pair, pacing);
        let b_start = planned.outcomes[1].start_s.unwrap();
        assert!(b_start > 19.0, "{planned:?}");
        // Ten seconds in, `a` reports more left than predicted (1.5 GB): `b` waits for it.
        let slow = [(Progress::Round { left: 1.5e9, dirtied: 0.0, done: 0 }, 100e6), (Progress::Waiting, 0.0)];
        let later = resume(&net, &pair, pacing, &slow);
        assert!(later.outcomes[1].start_s.unwrap() >= 15.0, "{later:?}");
        assert!(later.peak_use.iter().all(|&u| u <= 1.0 + 1e-9));
        // `a` already finished: `b` starts now, with the whole link.
        let early = [(Progress::Finished, 0.0), (Progress::Waiting, 0.0)];
        let sooner = resume(&net, &pair, pacing, &early);
        assert_eq!(sooner.outcomes[1].start_s, Some(0.0));
        assert_eq!(sooner.outcomes[1].cap_bytes_per_s, Some(100e6));
        // `a` runs at half the link (another job held the rest, now gone): its cap is raised to all of it.
        let half = [(Progress::Round { left: 1e9, dirtied: 0.0, done: 0 }, 50e6), (Progress::Waiting, 0.0)];
        let raised = resume(&net, &pair, Pacing::Heliotrope(Goal::MeanCompletion), &half);
        assert!(raised.outcomes[0].finish_s.unwrap() < 1e9 / 50e6, "{raised:?}");
    }
}
