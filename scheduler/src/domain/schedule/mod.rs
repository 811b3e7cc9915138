//! Migration scheduling: when each move of a plan starts and how much of
//! its path's bandwidth it may use, so that concurrent pre-copy migrations
//! do not starve each other.
//!
//! A migration's path is its WAN link plus, where the operator gave them,
//! the source site's uplink and the destination's downlink, which several
//! links share. Concurrent migrations share those; one whose share falls
//! below its dirty rate never converges. Heliotrope's pacing admits a
//! migration only with a bandwidth cap of at least its dirty rate x
//! [`SAFETY_MARGIN`], gives it all its path has left, and keeps the sum of
//! caps on every link and uplink within its usable bandwidth; what a
//! finished migration frees goes, in the pacing's order, to running
//! migrations whose path can use it and to the next that fit. [`resume`]
//! recomputes the rest of a schedule from what executors report. Migrations that cannot converge on their path even
//! alone are reported and never started.
//!
//! [`predict`] is a fluid model of concurrent pre-copy under shared
//! bandwidth (disk first, then memory rounds: each round resends what the
//! guest dirtied during the previous one, and the VM pauses for the last
//! round once it fits its downtime). It runs Heliotrope's pacing and the
//! baselines (all at once, one at a time, a fixed number per link, all
//! sharing fairly) on the same model, so their figures compare. Alone at a
//! constant rate it reproduces the closed form of [`cost::precopy`].
//! [`lower_bound`] is what no schedule can beat: a time-indexed LP over
//! the bytes each migration must at least send.
//!
//! Layout: the types and the path arithmetic both share are here; `fluid`
//! is the model ([`predict`], [`resume`], [`advance`]); `admit` is
//! Heliotrope's admission pass, which the model runs at every event and
//! the dispatcher at run time ([`dispatch`]); `bound` is [`lower_bound`].
//!
//! [`cost::precopy`]: crate::domain::cost::precopy

mod admit;
mod bound;
mod fluid;

pub use admit::{dispatch, Dispatch};
pub use bound::{lower_bound, LP_BOUND_MAX_CELLS};
pub use fluid::{advance, predict, resume, Progress};

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

/// How migrations are paced: who decides when each starts and what
/// bandwidth it gets (Heliotrope's admission and caps, or a baseline).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pacing {
    Heliotrope(Goal),
    /// Everything starts at once and shares fairly.
    AllAtOnce,
    /// One migration at a time in plan order, alone on its path.
    OneAtATime,
    /// At most this many per link at a time, in plan order, sharing fairly (Nova-like).
    PerLink(usize),
}

/// The baselines Heliotrope's pacing is compared with, by name.
pub const BASELINES: [(&str, Pacing); 3] =
    [("all_at_once", Pacing::AllAtOnce), ("one_at_a_time", Pacing::OneAtATime), ("two_per_link", Pacing::PerLink(2))];

/// What happened to one migration.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Outcome {
    /// `None`: never started (cannot converge on its path, or cannot make the deadline).
    pub start_s: Option<f64>,
    /// `None`: never finished (never started, or did not converge).
    pub finish_s: Option<f64>,
    /// The bandwidth cap it started with (Heliotrope's pacing; fair-share pacings have none).
    pub cap_bytes_per_s: Option<f64>,
    pub bytes: f64,
    pub downtime_s: f64,
    /// When it was given up: it ran out of rounds without its last round
    /// fitting the downtime, or its share fell to nothing.
    pub failed_s: Option<f64>,
}

/// How a set of migrations runs under a pacing, as the fluid model predicts it.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub outcomes: Vec<Outcome>,
    /// Last finish, seconds from the start.
    pub makespan_s: f64,
    /// Mean time to the end of each migration that was started and can
    /// converge alone: its finish, or when it was given up (which flatters
    /// pacings that start migrations blindly: a given-up one must still move).
    pub mean_completion_s: f64,
    /// Migrations that cannot converge on their path at any share: never started by Heliotrope.
    pub cannot_converge: Vec<usize>,
    /// Started and never converged (always 0 for Heliotrope's pacing).
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

/// The order in which a pacing considers migrations.
fn order(migrations: &[Migration], paths: &[f64], pacing: Pacing) -> Vec<usize> {
    let mut order: Vec<usize> = (0..migrations.len()).collect();
    let alone_s = |i: usize| alone(&migrations[i], paths[i]).map_or(f64::INFINITY, |(_, s)| s);
    match pacing {
        Pacing::Heliotrope(Goal::MeanCompletion) => order.sort_by(|&a, &b| alone_s(a).total_cmp(&alone_s(b))),
        Pacing::Heliotrope(Goal::Makespan) => order.sort_by(|&a, &b| alone_s(b).total_cmp(&alone_s(a))),
        Pacing::Heliotrope(Goal::Deadline { .. }) => order.sort_by(|&a, &b| {
            migrations[b].priority.cmp(&migrations[a].priority).then(alone_s(a).total_cmp(&alone_s(b)))
        }),
        Pacing::AllAtOnce | Pacing::OneAtATime | Pacing::PerLink(_) => {}
    }
    order
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

    pub(super) const GB: f64 = 1e9;

    pub(super) fn migration(name: &str, link: usize, memory_gb: f64, dirty_mb_s: f64) -> Migration {
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

    pub(super) fn one_link(bytes_per_s: f64) -> Network {
        Network {
            links: vec![Link { from: 0, to: 1, usable_bytes_per_s: bytes_per_s }],
            uplink_bytes_per_s: vec![None, None],
            downlink_bytes_per_s: vec![None, None],
        }
    }

    pub(super) fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-6 * b.abs().max(1.0)
    }
}
