//! Migration scheduling: when each move of a plan starts and how much of
//! its path's bandwidth it may use, so that concurrent pre-copy migrations
//! do not starve each other.
//!
//! A migration's path is its WAN link plus, where the operator gave them,
//! the source site's uplink and the destination's downlink, which several
//! links share. Concurrent migrations share those; one whose share falls
//! below its dirty rate never converges. Heliotrope's policy admits a
//! migration only with a bandwidth cap of at least its dirty rate x
//! [`SAFETY_MARGIN`], gives it all its path has left, and keeps the sum of
//! caps on every link and uplink within its usable bandwidth; what a
//! finished migration frees goes, in the policy's order, to running
//! migrations whose path can use it and to the next that fit. [`resume`]
//! recomputes the rest of a schedule from what executors report. Migrations that cannot converge on their path even
//! alone are reported and never started.
//!
//! [`simulate`] is a fluid model of concurrent pre-copy under shared
//! bandwidth (disk first, then memory rounds: each round resends what the
//! guest dirtied during the previous one, and the VM pauses for the last
//! round once it fits its downtime). It runs Heliotrope's policy and the
//! baselines (all at once, one at a time, a fixed number per link, all
//! sharing fairly) on the same model, so their figures compare. Alone at a
//! constant rate it reproduces the closed form of [`cost::precopy`].
//! [`lower_bound`] is what no schedule can beat: a time-indexed LP over
//! the bytes each migration must at least send.

use good_lp::solvers::{SolutionStatus, WithTimeLimit};
use good_lp::{variable, Expression, ProblemVariables, Solution, SolverModel, Variable};

use super::cost::{precopy, PreCopyInput};
use super::planner::{Move, PlanInput, GIB};

/// A running migration's share must stay at least this many times its dirty rate.
pub const SAFETY_MARGIN: f64 = 1.5;

/// Most live memory rounds before a migration is declared not converging.
pub const MAX_ROUNDS: u32 = 30;

/// A migration to schedule. Bytes are as they travel (after the transfer
/// stack's dedup and compression), and so is the dirty rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Migration {
    pub name: String,
    /// Index into [`Network::links`].
    pub link: usize,
    pub memory_bytes: f64,
    pub dirty_bytes_per_s: f64,
    /// Disk bytes the destination still lacks.
    pub disk_bytes: f64,
    pub max_downtime_s: f64,
    /// Higher goes first in an evacuation.
    pub priority: u8,
}

/// A directed link between site indices.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Link {
    pub from: usize,
    pub to: usize,
    pub usable_bytes_per_s: f64,
}

/// The links, and the sites' shared uplinks and downlinks where known.
#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    pub links: Vec<Link>,
    /// Per site, what all its outgoing links together can send; `None` for no shared limit.
    pub uplink_bytes_per_s: Vec<Option<f64>>,
    pub downlink_bytes_per_s: Vec<Option<f64>>,
}

/// What Heliotrope's order favours.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Goal {
    /// Shortest first: least mean completion time.
    MeanCompletion,
    /// Longest first: packs for the least makespan.
    Makespan,
    /// Most priority-weighted migrations done by `deadline_s`: by priority,
    /// shortest first within one, and none started that cannot finish in time.
    Deadline { deadline_s: f64 },
}

/// Who decides when migrations start and what bandwidth they get.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Policy {
    Heliotrope(Goal),
    /// Everything starts at once and shares fairly.
    AllAtOnce,
    /// One migration at a time in plan order, alone on its path.
    OneAtATime,
    /// At most this many per link at a time, in plan order, sharing fairly (Nova-like).
    PerLink(usize),
}

/// The baselines Heliotrope's policy is compared with, by name.
pub const BASELINES: [(&str, Policy); 3] =
    [("all_at_once", Policy::AllAtOnce), ("one_at_a_time", Policy::OneAtATime), ("two_per_link", Policy::PerLink(2))];

/// What happened to one migration.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Outcome {
    /// `None`: never started (cannot converge on its path, or cannot make the deadline).
    pub start_s: Option<f64>,
    /// `None`: never finished (never started, or did not converge).
    pub finish_s: Option<f64>,
    /// The bandwidth cap it started with (Heliotrope's policy; fair-share policies have none).
    pub cap_bytes_per_s: Option<f64>,
    pub bytes: f64,
    pub downtime_s: f64,
    /// When it was given up: it ran out of rounds without its last round
    /// fitting the downtime, or its share fell to nothing.
    pub failed_s: Option<f64>,
}

/// A policy's run of a set of migrations.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub outcomes: Vec<Outcome>,
    /// Last finish, seconds from the start.
    pub makespan_s: f64,
    /// Mean time to the end of each migration that was started and can
    /// converge alone: its finish, or when it was given up (which flatters
    /// policies that start migrations blindly: a given-up one must still move).
    pub mean_completion_s: f64,
    /// Migrations that cannot converge on their path at any share: never started by Heliotrope.
    pub cannot_converge: Vec<usize>,
    /// Started and never converged (always 0 for Heliotrope's policy).
    pub started_not_converging: usize,
    /// Per link, then uplink, then downlink: the most of its capacity in use at any time.
    pub peak_use: Vec<f64>,
    /// The least rate / dirty rate of any running migration at any time (infinite if none dirties).
    pub least_share_over_dirty: f64,
}

/// Rate a migration gets alone on its path.
fn path_bytes_per_s(network: &Network, m: &Migration) -> f64 {
    let link = network.links[m.link];
    [Some(link.usable_bytes_per_s), network.uplink_bytes_per_s[link.from], network.downlink_bytes_per_s[link.to]]
        .into_iter()
        .flatten()
        .fold(f64::INFINITY, f64::min)
}

/// Bytes and duration of `m` alone at `rate`, disk included; `None` if it cannot converge.
pub fn alone(m: &Migration, rate: f64) -> Option<(f64, f64)> {
    let memory = precopy(&PreCopyInput {
        memory_bytes: m.memory_bytes,
        dirty_bytes_per_s: m.dirty_bytes_per_s,
        bandwidth_bytes_per_s: rate,
        max_downtime_s: m.max_downtime_s,
        max_rounds: MAX_ROUNDS,
    })?;
    Some((m.disk_bytes + memory.bytes, m.disk_bytes / rate + memory.duration_s))
}

/// The least share Heliotrope admits `m` with: its dirty rate x margin,
/// raised until pre-copy converges within the rounds and downtime allowed;
/// `None` when its path cannot give that.
fn least_share(m: &Migration, path: f64) -> Option<f64> {
    if m.dirty_bytes_per_s * SAFETY_MARGIN > path {
        return None;
    }
    let mut share = (m.dirty_bytes_per_s * SAFETY_MARGIN).max(path / 64.0);
    loop {
        if alone(m, share).is_some() {
            return Some(share);
        }
        if share >= path {
            return None;
        }
        share = (share * 1.25).min(path);
    }
}

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

/// The resources a path uses, as indices into one capacity vector:
/// links first, then uplinks, then downlinks.
fn resources(network: &Network, m: &Migration) -> Vec<usize> {
    let link = network.links[m.link];
    let (n_links, n_sites) = (network.links.len(), network.uplink_bytes_per_s.len());
    let mut used = vec![m.link];
    if network.uplink_bytes_per_s[link.from].is_some() {
        used.push(n_links + link.from);
    }
    if network.downlink_bytes_per_s[link.to].is_some() {
        used.push(n_links + n_sites + link.to);
    }
    used
}

/// Capacities of links, then uplinks, then downlinks (unshared: infinite).
fn capacities(network: &Network) -> Vec<f64> {
    network
        .links
        .iter()
        .map(|l| l.usable_bytes_per_s)
        .chain(network.uplink_bytes_per_s.iter().map(|u| u.unwrap_or(f64::INFINITY)))
        .chain(network.downlink_bytes_per_s.iter().map(|d| d.unwrap_or(f64::INFINITY)))
        .collect()
}

/// Runs `policy` on `migrations` over `network` in the fluid model, from the start.
pub fn simulate(network: &Network, migrations: &[Migration], policy: Policy) -> Schedule {
    resume(network, migrations, policy, &vec![(Progress::Waiting, 0.0); migrations.len()])
}

/// Recomputes the rest of a schedule from where each migration stands now
/// (its progress and, if running, its current cap), times from now: a
/// migration slower than predicted holds its cap longer, so those after it
/// start later instead of overloading its link; one that ended early frees
/// its cap for the next, or for those running. Running migrations report
/// a start of 0 and finished ones a start and finish of 0.
pub fn resume(network: &Network, migrations: &[Migration], policy: Policy, now: &[(Progress, f64)]) -> Schedule {
    advance(network, migrations, policy, now, f64::INFINITY).0
}

/// [`resume`] for `for_s` seconds only: the schedule so far (bytes and
/// downtime of this stretch; those still running have no finish) and
/// where each migration stands at its end, with its rate: what the next
/// stretch resumes from. The simulator runs its hours this way.
pub fn advance(
    network: &Network,
    migrations: &[Migration],
    policy: Policy,
    now: &[(Progress, f64)],
    for_s: f64,
) -> (Schedule, Vec<(Progress, f64)>) {
    let n = migrations.len();
    let capacity = capacities(network);
    let uses: Vec<Vec<usize>> = migrations.iter().map(|m| resources(network, m)).collect();
    let paths: Vec<f64> = migrations.iter().map(|m| path_bytes_per_s(network, m)).collect();
    let least: Vec<Option<f64>> = migrations.iter().zip(&paths).map(|(m, &p)| least_share(m, p)).collect();
    let cannot_converge: Vec<usize> = (0..n).filter(|&i| least[i].is_none()).collect();
    let heliotrope = matches!(policy, Policy::Heliotrope(_));
    let order = order(migrations, &paths, policy);

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
        // Start what the policy admits, and set every running migration's rate.
        let running = |phase: &[Progress], i: usize| {
            matches!(phase[i], Progress::Disk { .. } | Progress::Round { .. } | Progress::Final { .. })
        };
        match policy {
            Policy::Heliotrope(goal) => {
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
            Policy::AllAtOnce | Policy::OneAtATime | Policy::PerLink(_) => {
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
                    let admit = match policy {
                        Policy::AllAtOnce => true,
                        Policy::OneAtATime => active == 0,
                        Policy::PerLink(most) => per_link[migrations[i].link] < most,
                        Policy::Heliotrope(_) => unreachable!("handled above"),
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

/// Where a migration stands in one admission pass.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stand {
    Running,
    Waiting,
    Ended,
}

/// What an admission pass decided for a waiting migration.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Admitted {
    /// It starts, at the rate the pass set.
    Start,
    /// It could not finish by the deadline: it is not started.
    TooLate,
}

/// What one admission pass of Heliotrope's policy works on: each resource's
/// capacity, the resources each migration's path uses, each migration's
/// least share (`None`: it cannot converge) and the policy's order.
struct Pass<'a> {
    capacity: &'a [f64],
    uses: &'a [Vec<usize>],
    least: &'a [Option<f64>],
    order: &'a [usize],
    /// The most each migration may get (an operator's cap; infinite in the model).
    ceiling: &'a [f64],
}

impl Pass<'_> {
    /// In order, each running migration takes what its path has free (on
    /// top of its `rate`) and each waiting one starts, at all its path has
    /// left, if that is at least its least share (and, for a deadline, lets
    /// it finish in time). The model runs it at every event; the dispatcher
    /// runs it at run time ([`dispatch`]).
    fn admit(
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

/// The policy at run time: which of `migrations` run now and at what cap,
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
    let order = order(migrations, &paths, Policy::Heliotrope(goal));
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

/// The order in which a policy considers migrations.
fn order(migrations: &[Migration], paths: &[f64], policy: Policy) -> Vec<usize> {
    let mut order: Vec<usize> = (0..migrations.len()).collect();
    let alone_s = |i: usize| alone(&migrations[i], paths[i]).map_or(f64::INFINITY, |(_, s)| s);
    match policy {
        Policy::Heliotrope(Goal::MeanCompletion) => order.sort_by(|&a, &b| alone_s(a).total_cmp(&alone_s(b))),
        Policy::Heliotrope(Goal::Makespan) => order.sort_by(|&a, &b| alone_s(b).total_cmp(&alone_s(a))),
        Policy::Heliotrope(Goal::Deadline { .. }) => order.sort_by(|&a, &b| {
            migrations[b].priority.cmp(&migrations[a].priority).then(alone_s(a).total_cmp(&alone_s(b)))
        }),
        Policy::AllAtOnce | Policy::OneAtATime | Policy::PerLink(_) => {}
    }
    order
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

/// Beyond this many migration x step cells the LP bound is skipped for the simple one.
pub const LP_BOUND_MAX_CELLS: usize = 60_000;

/// What no schedule can beat, seconds: the makespan of a time-indexed LP
/// in which each migration sends at least what it would alone at its
/// path's full rate (the fewest bytes it can send), no faster than that
/// rate, and every link and shared uplink carries at most its capacity in
/// each step; steps may be used fractionally, in order. Migrations that
/// cannot converge on their path with the safety margin are left out, as
/// Heliotrope leaves them. Never below the simple bounds (the
/// busiest link or uplink, the longest migration alone), which is all it
/// gives beyond [`LP_BOUND_MAX_CELLS`].
pub fn lower_bound(network: &Network, migrations: &[Migration], steps: usize, horizon_s: f64) -> f64 {
    let capacity = capacities(network);
    // (resources, fewest bytes, path rate, seconds alone) per migration that can converge.
    let jobs: Vec<(Vec<usize>, f64, f64, f64)> = migrations
        .iter()
        .filter_map(|m| {
            let path = path_bytes_per_s(network, m);
            least_share(m, path)?;
            let (bytes, seconds) = alone(m, path)?;
            Some((resources(network, m), bytes, path, seconds))
        })
        .collect();
    if jobs.is_empty() {
        return 0.0;
    }
    let simple_only = jobs.len() * steps > LP_BOUND_MAX_CELLS;
    let mut load = vec![0.0; capacity.len()];
    jobs.iter().for_each(|(uses, bytes, ..)| uses.iter().for_each(|&r| load[r] += bytes));
    let simple = load.iter().zip(&capacity).map(|(l, c)| l / c).chain(jobs.iter().map(|j| j.3)).fold(0.0, f64::max);
    if simple_only {
        return simple;
    }
    let dt = horizon_s.max(simple) / steps as f64;
    let mut vars = ProblemVariables::new();
    // used[t]: how much of step t is used; steps are used in order.
    let used: Vec<Variable> = (0..steps).map(|_| vars.add(variable().min(0).max(1))).collect();
    let sent: Vec<Vec<Variable>> =
        jobs.iter().map(|_| (0..steps).map(|_| vars.add(variable().min(0))).collect()).collect();
    let mut makespan = Expression::with_capacity(steps);
    used.iter().for_each(|&u| makespan.add_mul(dt, u));
    let mut model = vars.minimise(makespan).using(good_lp::coin_cbc);
    model.set_parameter("log", "0");
    for t in 1..steps {
        model.add_constraint((Expression::from(used[t]) - used[t - 1]).leq(0.0));
    }
    let mut per_step: Vec<Vec<Expression>> = vec![vec![Expression::default(); steps]; capacity.len()];
    for ((uses, bytes, path, _), cols) in jobs.iter().zip(&sent) {
        let mut total = Expression::with_capacity(steps);
        for (t, &col) in cols.iter().enumerate() {
            total.add_mul(1.0, col);
            // No faster than its path, and only in used steps.
            model.add_constraint((Expression::from(col) - path * dt * used[t]).leq(0.0));
            uses.iter().for_each(|&r| per_step[r][t].add_mul(1.0, col));
        }
        model.add_constraint(total.geq(*bytes));
    }
    for (r, rows) in per_step.into_iter().enumerate() {
        if capacity[r].is_finite() && load[r] > 0.0 {
            for (t, row) in rows.into_iter().enumerate() {
                model.add_constraint((row - capacity[r] * dt * used[t]).leq(0.0));
            }
        }
    }
    match model.with_time_limit(30.0).solve() {
        Ok(solution) if matches!(solution.status(), SolutionStatus::Optimal) => {
            let lp: f64 = used.iter().map(|&u| solution.value(u) * dt).sum();
            lp.max(simple)
        }
        // Past the time limit (or a step grid too coarse to hold the bytes) the simple bound stands.
        _ => simple,
    }
}

/// The scheduling input for a plan's moves: its links and the sites'
/// shared uplinks, and one migration per move with the bytes and dirty
/// rate the transfer stack is expected to put on the wire.
pub fn for_moves(input: &PlanInput, moves: &[Move]) -> (Network, Vec<Migration>) {
    let network = Network {
        links: input
            .links
            .iter()
            .map(|l| Link { from: l.from, to: l.to, usable_bytes_per_s: l.usable_bytes_per_s })
            .collect(),
        uplink_bytes_per_s: input.sites.iter().map(|s| s.uplink_bytes_per_s).collect(),
        downlink_bytes_per_s: input.sites.iter().map(|s| s.downlink_bytes_per_s).collect(),
    };
    let wire = input.settings.wire_fraction;
    let migrations = moves
        .iter()
        .filter_map(|m| {
            let vm = &input.vms[m.vm];
            Some(Migration {
                name: vm.name.clone(),
                link: input.links.iter().position(|l| (l.from, l.to) == (m.from, m.to))?,
                memory_bytes: vm.memory_to_send(m.to) * wire,
                dirty_bytes_per_s: vm.dirty_bytes_per_s * wire,
                disk_bytes: (vm.disk_gib * GIB - vm.cached_at(m.to)).max(0.0) * wire,
                max_downtime_s: vm.max_downtime_s,
                priority: vm.priority,
            })
        })
        .collect();
    (network, migrations)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GB: f64 = 1e9;

    fn migration(name: &str, link: usize, memory_gb: f64, dirty_mb_s: f64) -> Migration {
        Migration {
            name: name.into(),
            link,
            memory_bytes: memory_gb * GB,
            dirty_bytes_per_s: dirty_mb_s * 1e6,
            disk_bytes: 0.0,
            max_downtime_s: 0.3,
            priority: 50,
        }
    }

    fn one_link(bytes_per_s: f64) -> Network {
        Network {
            links: vec![Link { from: 0, to: 1, usable_bytes_per_s: bytes_per_s }],
            uplink_bytes_per_s: vec![None, None],
            downlink_bytes_per_s: vec![None, None],
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-6 * b.abs().max(1.0)
    }

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
        for policy in [Policy::Heliotrope(Goal::MeanCompletion), Policy::AllAtOnce, Policy::OneAtATime] {
            let s = simulate(&net, std::slice::from_ref(&m), policy);
            let o = s.outcomes[0];
            assert!(close(o.bytes, closed.bytes), "{policy:?}: {} vs {}", o.bytes, closed.bytes);
            assert!(close(o.finish_s.unwrap(), closed.duration_s));
            assert!(close(o.downtime_s, closed.downtime_s));
            assert_eq!(closed.live_rounds, 4);
        }
        // With 10 GB of disk first: 100 s more, 10 GB more.
        let with_disk = Migration { disk_bytes: 10.0 * GB, ..m };
        let s = simulate(&net, &[with_disk], Policy::AllAtOnce);
        assert!(close(s.outcomes[0].finish_s.unwrap(), closed.duration_s + 100.0));
    }

    #[test]
    fn two_identical_migrations_sharing_a_link_take_longer_together() {
        // Each alone at 100 MB/s; sharing, each gets 50 MB/s: r = 0.4 instead of 0.2.
        let net = one_link(100e6);
        let pair = [migration("a", 0, 8.0, 20.0), migration("b", 0, 8.0, 20.0)];
        let shared = simulate(&net, &pair, Policy::AllAtOnce);
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
        let ordered = simulate(&net, &pair, Policy::Heliotrope(Goal::MeanCompletion));
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
        let crowd = simulate(&net, &many, Policy::AllAtOnce);
        assert_eq!(crowd.started_not_converging, 8);
        let ours = simulate(&net, &many, Policy::Heliotrope(Goal::MeanCompletion));
        assert_eq!(ours.started_not_converging, 0);
        assert!(ours.outcomes.iter().all(|o| o.finish_s.is_some()));
        // One that dirties faster than the link can carry is reported, never started.
        let hopeless = [migration("fast", 0, 2.0, 150.0), migration("ok", 0, 2.0, 10.0)];
        let s = simulate(&net, &hopeless, Policy::Heliotrope(Goal::MeanCompletion));
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
        let s = simulate(&net, &ms, Policy::Heliotrope(Goal::MeanCompletion));
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
        let s = simulate(&net, &ms, Policy::Heliotrope(Goal::Deadline { deadline_s: 50.0 }));
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
            let s = simulate(&network, &migrations, Policy::Heliotrope(goal));
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
        let policy = Policy::Heliotrope(Goal::MeanCompletion);
        let whole = simulate(&net, &three, policy);
        let mut state = vec![(Progress::Waiting, 0.0); 3];
        let (mut bytes, mut finish, mut downtime) = ([0.0; 3], [None; 3], [0.0; 3]);
        for stretch in 0..100 {
            let (ran, next) = advance(&net, &three, policy, &state, 7.0);
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
        let policy = Policy::Heliotrope(Goal::MeanCompletion);
        let planned = simulate(&net, &pair, policy);
        let b_start = planned.outcomes[1].start_s.unwrap();
        assert!(b_start > 19.0, "{planned:?}");
        // Ten seconds in, `a` reports more left than predicted (1.5 GB): `b` waits for it.
        let slow = [(Progress::Round { left: 1.5e9, dirtied: 0.0, done: 0 }, 100e6), (Progress::Waiting, 0.0)];
        let later = resume(&net, &pair, policy, &slow);
        assert!(later.outcomes[1].start_s.unwrap() >= 15.0, "{later:?}");
        assert!(later.peak_use.iter().all(|&u| u <= 1.0 + 1e-9));
        // `a` already finished: `b` starts now, with the whole link.
        let early = [(Progress::Finished, 0.0), (Progress::Waiting, 0.0)];
        let sooner = resume(&net, &pair, policy, &early);
        assert_eq!(sooner.outcomes[1].start_s, Some(0.0));
        assert_eq!(sooner.outcomes[1].cap_bytes_per_s, Some(100e6));
        // `a` runs at half the link (another job held the rest, now gone): its cap is raised to all of it.
        let half = [(Progress::Round { left: 1e9, dirtied: 0.0, done: 0 }, 50e6), (Progress::Waiting, 0.0)];
        let raised = resume(&net, &pair, Policy::Heliotrope(Goal::MeanCompletion), &half);
        assert!(raised.outcomes[0].finish_s.unwrap() < 1e9 / 50e6, "{raised:?}");
    }

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
