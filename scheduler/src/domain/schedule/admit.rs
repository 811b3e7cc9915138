//! Heliotrope's admission pass: in its order, running migrations take
//! what their paths have free and waiting ones start if their path has
//! room for their least share (and, for a deadline, lets them finish in
//! time). The fluid model runs it at every event; the dispatcher runs it
//! at run time, with what is running now ([`dispatch`]).

use super::{alone, capacities, least_share, order, path_bytes_per_s, resources, Goal, Migration, Network, Pacing};

/// Where a migration stands in one admission pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Stand {
    Running,
    Waiting,
    Ended,
}

/// What an admission pass decided for a waiting migration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Admitted {
    /// It starts, at the rate the pass set.
    Start,
    /// It could not finish by the deadline: it is not started.
    TooLate,
}

/// What one admission pass of Heliotrope's pacing works on: each resource's
/// capacity, the resources each migration's path uses, each migration's
/// least share (`None`: it cannot converge) and the pacing's order.
pub(super) struct Pass<'a> {
    pub(super) capacity: &'a [f64],
    pub(super) uses: &'a [Vec<usize>],
    pub(super) least: &'a [Option<f64>],
    pub(super) order: &'a [usize],
    /// The most each migration may get (an operator's cap; infinite in the model).
    pub(super) ceiling: &'a [f64],
}

impl Pass<'_> {
    /// In order, each running migration takes what its path has free (on
    /// top of its `rate`) and each waiting one starts, at all its path has
    /// left, if that is at least its least share (and, for a deadline, lets
    /// it finish in time). The model runs it at every event; the dispatcher
    /// runs it at run time ([`dispatch`]).
    pub(super) fn admit(
        &self,
        migrations: &[Migration],
        goal: Goal,
        now_s: f64,
        stands: &[Stand],
        rate: &mut [f64],
    ) -> Vec<(usize, Admitted)> {
        let mut free = self.capacity.to_vec();
        for i in (0..stands.len()).filter(|&i| stands[i] == Stand::Running) {
            self.uses[i].iter().for_each(|&r| free[r] -= rate[i]);
        }
        let mut decided = Vec::new();
        for &i in self.order {
            let room = self.uses[i].iter().map(|&r| free[r]).fold(f64::INFINITY, f64::min).max(0.0);
            match stands[i] {
                Stand::Running => {
                    let more = room.min(self.ceiling[i] - rate[i]);
                    if more > 1e-9 && more.is_finite() {
                        rate[i] += more;
                        self.uses[i].iter().for_each(|&r| free[r] -= more);
                    }
                }
                Stand::Waiting => {
                    let Some(need) = self.least[i] else { continue };
                    let room = room.min(self.ceiling[i]);
                    if room + 1e-9 < need {
                        continue;
                    }
                    if let Goal::Deadline { deadline_s } = goal {
                        match alone(&migrations[i], room) {
                            Some((_, took)) if now_s + took <= deadline_s => {}
                            _ => {
                                decided.push((i, Admitted::TooLate));
                                continue;
                            }
                        }
                    }
                    rate[i] = room;
                    self.uses[i].iter().for_each(|&r| free[r] -= room);
                    decided.push((i, Admitted::Start));
                }
                Stand::Ended => {}
            }
        }
        decided
    }
}

/// What the dispatcher decides for each migration now ([`dispatch`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Dispatch {
    /// Run (go on running, or start) at this cap, bytes per second.
    Run { cap_bytes_per_s: f64 },
    /// Wait: its path has no room for its least share now.
    Wait,
    /// It cannot converge on its path even alone: never started.
    CannotConverge,
}

/// The pacing at run time: which of `migrations` run now and at what cap,
/// given which are running (`running[i]`). Running migrations keep their
/// least share; in the deadline goal's order (priority first, so
/// evacuations, then shortest first; no deadline: a late evacuee still
/// moves) the rest of each path goes to running migrations and to waiting
/// ones that fit, by the same pass the model runs. So a cap goes up when
/// bandwidth frees and down when a migration earlier in the order needs
/// it, and the caps on every link and uplink never sum above its usable
/// bandwidth: were running migrations' least shares to (their dirty rates
/// having grown since they started), they are scaled down to fit. No
/// migration gets more than its `ceiling` (an operator's cap).
pub fn dispatch(network: &Network, migrations: &[Migration], running: &[bool], ceiling: &[f64]) -> Vec<Dispatch> {
    let goal = Goal::Deadline { deadline_s: f64::INFINITY };
    let capacity = capacities(network);
    let uses: Vec<Vec<usize>> = migrations.iter().map(|m| resources(network, m)).collect();
    let paths: Vec<f64> = migrations.iter().map(|m| path_bytes_per_s(network, m)).collect();
    let least: Vec<Option<f64>> = migrations.iter().zip(&paths).map(|(m, &p)| least_share(m, p)).collect();
    let order = order(migrations, &paths, Pacing::Heliotrope(goal));
    let stands: Vec<Stand> = running.iter().map(|&r| if r { Stand::Running } else { Stand::Waiting }).collect();
    // A running migration that could no longer converge alone keeps a share of its path.
    let mut rate: Vec<f64> = (0..migrations.len())
        .map(|i| if running[i] { least[i].unwrap_or(paths[i] / 64.0).min(paths[i]).min(ceiling[i]) } else { 0.0 })
        .collect();
    let mut floors = vec![0.0; capacity.len()];
    for i in (0..migrations.len()).filter(|&i| running[i]) {
        uses[i].iter().for_each(|&r| floors[r] += rate[i]);
    }
    for i in (0..migrations.len()).filter(|&i| running[i]) {
        let fits = uses[i].iter().map(|&r| (capacity[r] / floors[r]).min(1.0)).fold(1.0, f64::min);
        rate[i] *= fits;
    }
    let pass = Pass { capacity: &capacity, uses: &uses, least: &least, order: &order, ceiling };
    let started: Vec<usize> = pass
        .admit(migrations, goal, 0.0, &stands, &mut rate)
        .into_iter()
        .filter(|&(_, admitted)| admitted == Admitted::Start)
        .map(|(i, _)| i)
        .collect();
    (0..migrations.len())
        .map(|i| match () {
            _ if running[i] || started.contains(&i) => Dispatch::Run { cap_bytes_per_s: rate[i] },
            _ if least[i].is_none() => Dispatch::CannotConverge,
            _ => Dispatch::Wait,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::schedule::tests::{close, migration, one_link};

    #[test]
    fn the_dispatcher_keeps_every_link_within_its_bandwidth_and_puts_evacuations_first() {
        // 100 MB/s; three migrations needing at least 30 MB/s (20 MB/s dirty x 1.5).
        let net = one_link(100e6);
        let mut ms = vec![migration("a", 0, 8.0, 20.0), migration("b", 0, 8.0, 20.0), migration("c", 0, 4.0, 20.0)];
        let cap = |d: &Dispatch| match d {
            Dispatch::Run { cap_bytes_per_s } => *cap_bytes_per_s,
            _ => 0.0,
        };
        // Nothing runs: the shortest starts with the whole link; the others wait.
        let first = dispatch(&net, &ms, &[false, false, false], &[f64::INFINITY; 3]);
        assert_eq!(first.iter().map(cap).collect::<Vec<_>>(), [0.0, 0.0, 100e6], "{first:?}");
        // c runs: it keeps the link; nobody else fits beside it.
        let second = dispatch(&net, &ms, &[false, false, true], &[f64::INFINITY; 3]);
        assert_eq!((second[0], second[1]), (Dispatch::Wait, Dispatch::Wait));
        // An evacuation (higher priority) arrives: c falls to its least share, the evacuee takes the rest.
        ms[0].priority = 200;
        let evacuating = dispatch(&net, &ms, &[false, false, true], &[f64::INFINITY; 3]);
        let caps: Vec<f64> = evacuating.iter().map(cap).collect();
        assert!(caps[0] > 0.0 && caps[1] == 0.0, "{evacuating:?}");
        assert!(close(caps.iter().sum::<f64>(), 100e6), "the link is used whole, never more: {caps:?}");
        assert!(close(caps[2], least_share(&ms[2], 100e6).unwrap()));
        // One that cannot converge even alone never starts.
        let hot = migration("hot", 0, 8.0, 90.0);
        assert_eq!(dispatch(&net, &[hot], &[false], &[f64::INFINITY]), [Dispatch::CannotConverge]);
    }

    #[test]
    fn running_least_shares_above_the_link_are_scaled_to_fit() {
        // Two running at 20 MB/s dirty on a link that shrank to 50 MB/s: 30 + 30 > 50.
        let net = one_link(50e6);
        let ms = [migration("a", 0, 8.0, 20.0), migration("b", 0, 8.0, 20.0)];
        let caps: Vec<f64> = dispatch(&net, &ms, &[true, true], &[f64::INFINITY; 2])
            .iter()
            .map(|d| match d {
                Dispatch::Run { cap_bytes_per_s } => *cap_bytes_per_s,
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(caps.iter().sum::<f64>() <= 50e6 * (1.0 + 1e-9), "{caps:?}");
    }
}
