//! Disaster recovery's rules: where each VM of a lost site restarts (its
//! freshest replica at an open site with room, by priority), and when the
//! restarts may begin (once every executor of the lost site has stopped
//! its VMs, or must have: silent past its lease).
//!
//! A restart is crash-consistent, like a power cut: the VM boots on the
//! replica of its disk, which holds every write made before the replica's
//! last sync began (its recovery point); its memory is gone.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use heliotrope_api_spec::EXECUTOR_LEASE_S;

/// A VM of the lost site, with the replicas of its disk.
#[derive(Debug, Clone, PartialEq)]
pub struct Stranded {
    pub name: String,
    pub priority: u8,
    /// Its standbys keep room for it: it is placed before the VMs that are not.
    pub protected: bool,
    pub vcpus: f64,
    pub memory_gib: f64,
    pub disk_gib: f64,
    pub replicas: Vec<Replica>,
}

/// A replica of a VM's disk at a standby site, as its source last reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct Replica {
    pub site_id: i64,
    /// When its last completed sync began (none: never completed one).
    pub synced_at: Option<DateTime<Utc>>,
    /// Bytes written since then, as last reported.
    pub written_bytes: u64,
}

/// What a site has left for VMs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Room {
    pub vcpus: f64,
    pub memory_gib: f64,
    pub disk_gib: f64,
}

impl Room {
    fn fits(&self, vm: &Stranded) -> bool {
        self.vcpus >= vm.vcpus && self.memory_gib >= vm.memory_gib - 1e-9 && self.disk_gib >= vm.disk_gib - 1e-9
    }

    fn take(&mut self, vm: &Stranded) {
        self.vcpus -= vm.vcpus;
        self.memory_gib -= vm.memory_gib;
        self.disk_gib -= vm.disk_gib;
    }
}

/// Where one stranded VM goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Placement {
    Restart { site_id: i64, recovery_point: DateTime<Utc>, lost_bytes: u64 },
    Lost { why: String },
}

/// Places every stranded VM, protected ones first, then highest priority
/// first (then by name): at
/// the freshest of its replicas that sits at an open site (a key of
/// `room`) with room for it, which it then takes. One placement per VM,
/// in `stranded`'s order. `site_name` names sites in the reasons.
pub fn place(
    stranded: &[Stranded],
    room: &mut HashMap<i64, Room>,
    site_name: impl Fn(i64) -> String,
) -> Vec<Placement> {
    let mut order: Vec<usize> = (0..stranded.len()).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (&stranded[a], &stranded[b]);
        b.protected.cmp(&a.protected).then(b.priority.cmp(&a.priority)).then_with(|| a.name.cmp(&b.name))
    });
    let mut placed = vec![None; stranded.len()];
    for k in order {
        let vm = &stranded[k];
        let mut synced: Vec<(&Replica, DateTime<Utc>)> =
            vm.replicas.iter().filter_map(|r| r.synced_at.map(|at| (r, at))).collect();
        synced.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.site_id.cmp(&b.0.site_id)));
        let names = |replicas: &[(&Replica, DateTime<Utc>)]| {
            replicas.iter().map(|(r, _)| site_name(r.site_id)).collect::<Vec<_>>().join(", ")
        };
        let open: Vec<(&Replica, DateTime<Utc>)> =
            synced.iter().copied().filter(|(r, _)| room.contains_key(&r.site_id)).collect();
        let chosen = open.iter().find(|(r, _)| room.get(&r.site_id).is_some_and(|room| room.fits(vm)));
        placed[k] = Some(match chosen {
            Some(&(r, at)) => {
                if let Some(room) = room.get_mut(&r.site_id) {
                    room.take(vm);
                }
                Placement::Restart { site_id: r.site_id, recovery_point: at, lost_bytes: r.written_bytes }
            }
            None if synced.is_empty() => {
                Placement::Lost { why: "no replica: none of its standbys finished a sync of its disk".to_owned() }
            }
            None if open.is_empty() => {
                Placement::Lost { why: format!("its replicas are at sites that are not open ({})", names(&synced)) }
            }
            None => Placement::Lost { why: format!("no room at the sites holding its replicas ({})", names(&open)) },
        });
    }
    placed.into_iter().map(|p| p.unwrap_or(Placement::Lost { why: String::new() })).collect()
}

/// What the scheduler last heard of one executor of the lost site.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Heard {
    pub last: Option<DateTime<Utc>>,
    /// Since when it said it holds its VMs stopped.
    pub fenced_since: Option<DateTime<Utc>>,
}

/// When the restarts of a site that went down at `down_at` may begin:
/// once each of its executors either said, since then, that it holds its
/// VMs stopped, or has been silent past its lease (an executor stops its
/// VMs itself `EXECUTOR_FENCE_MARGIN_S` before its lease runs out). `None`:
/// at once.
pub fn fenced_by(down_at: DateTime<Utc>, executors: &[Heard]) -> Option<DateTime<Utc>> {
    let lease = Duration::seconds(EXECUTOR_LEASE_S as i64);
    executors
        .iter()
        .filter(|e| e.fenced_since.is_none_or(|since| since < down_at))
        .filter_map(|e| e.last.map(|last| last + lease))
        .max()
}

/// A VM of a site being evacuated that cannot leave live before the
/// deadline, with its freshest replica at an open site.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncCandidate {
    pub name: String,
    pub priority: u8,
    /// The standby site (final syncs to one site share its link).
    pub site_id: i64,
    /// What replication is sure of on that link beside the live moves, bytes/s.
    pub bytes_per_s: f64,
    /// Written since the replica's last sync: what a final sync sends.
    pub written_bytes: u64,
}

/// Which candidates get a final sync, and when each is predicted to end
/// (seconds from now): on each link, highest priority first, one after
/// another from `start_s` (when the executors hear of it) at the link's
/// sure rate, as long as it ends by `deadline_s`; one that would not is
/// left out and the next tried. Whatever order the syncs then run in,
/// sharing the link, the last of them ends by the same time.
pub fn final_syncs(candidates: &[SyncCandidate], deadline_s: f64, start_s: f64) -> Vec<Option<f64>> {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (&candidates[a], &candidates[b]);
        b.priority.cmp(&a.priority).then_with(|| a.name.cmp(&b.name))
    });
    let mut busy_until: HashMap<i64, f64> = HashMap::new();
    let mut ends = vec![None; candidates.len()];
    for k in order {
        let c = &candidates[k];
        let from = *busy_until.get(&c.site_id).unwrap_or(&start_s);
        let end = from + c.written_bytes as f64 / c.bytes_per_s.max(1.0);
        if end <= deadline_s {
            busy_until.insert(c.site_id, end);
            ends[k] = Some(end);
        }
    }
    ends
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn vm(name: &str, priority: u8, replicas: Vec<Replica>) -> Stranded {
        Stranded {
            name: name.into(),
            priority,
            protected: false,
            vcpus: 2.0,
            memory_gib: 4.0,
            disk_gib: 10.0,
            replicas,
        }
    }

    fn replica(site_id: i64, synced: Option<i64>) -> Replica {
        Replica { site_id, synced_at: synced.map(at), written_bytes: 7 }
    }

    const ROOM_FOR_ONE: Room = Room { vcpus: 2.0, memory_gib: 4.0, disk_gib: 10.0 };

    #[test]
    fn the_freshest_open_replica_with_room_wins_and_priority_comes_first() {
        let stranded = vec![
            vm("low", 10, vec![replica(2, Some(50)), replica(3, Some(40))]),
            vm("high", 90, vec![replica(2, Some(30)), replica(3, Some(20)), replica(4, Some(60))]),
            vm("none", 50, vec![replica(2, None)]),
        ];
        // Site 4 is not open; 2 and 3 have room for one VM each.
        let mut room = HashMap::from([(2, ROOM_FOR_ONE), (3, ROOM_FOR_ONE)]);
        let placed = place(&stranded, &mut room, |id| format!("s{id}"));
        assert_eq!(placed[1], Placement::Restart { site_id: 2, recovery_point: at(30), lost_bytes: 7 });
        assert_eq!(placed[0], Placement::Restart { site_id: 3, recovery_point: at(40), lost_bytes: 7 });
        assert!(matches!(&placed[2], Placement::Lost { why } if why.starts_with("no replica")));
        assert!(room.values().all(|r| r.vcpus == 0.0));
    }

    #[test]
    fn a_vm_without_room_or_an_open_replica_is_lost_with_its_reason() {
        let stranded = vec![vm("a", 50, vec![replica(2, Some(1))]), vm("b", 40, vec![replica(2, Some(1))])];
        let mut room = HashMap::from([(2, ROOM_FOR_ONE)]);
        let placed = place(&stranded, &mut room, |id| format!("s{id}"));
        assert!(matches!(placed[0], Placement::Restart { site_id: 2, .. }));
        assert_eq!(placed[1], Placement::Lost { why: "no room at the sites holding its replicas (s2)".into() });
        // A protected VM goes before a higher priority that is not.
        let protected = vec![stranded[0].clone(), Stranded { protected: true, ..stranded[1].clone() }];
        let placed = place(&protected, &mut HashMap::from([(2, ROOM_FOR_ONE)]), |id| format!("s{id}"));
        assert!(matches!(placed[0], Placement::Lost { .. }) && matches!(placed[1], Placement::Restart { .. }));
        let placed = place(&stranded[..1], &mut HashMap::new(), |id| format!("s{id}"));
        assert_eq!(placed[0], Placement::Lost { why: "its replicas are at sites that are not open (s2)".into() });
    }

    #[test]
    fn final_syncs_go_by_priority_on_each_link_within_the_deadline() {
        let sync = |name: &str, priority, site_id, mb: u64| SyncCandidate {
            name: name.into(),
            priority,
            site_id,
            bytes_per_s: 1e6,
            written_bytes: mb * 1_000_000,
        };
        let candidates = [sync("low", 1, 2, 4), sync("high", 9, 2, 4), sync("big", 5, 2, 100), sync("other", 1, 3, 8)];
        let ends = final_syncs(&candidates, 10.0, 1.0);
        assert_eq!(ends, vec![Some(9.0), Some(5.0), None, Some(9.0)]);
    }

    #[test]
    fn restarts_wait_for_every_unfenced_executors_lease() {
        let down = at(100);
        let silent = Heard { last: Some(at(90)), fenced_since: None };
        let fenced_before = Heard { last: Some(at(99)), fenced_since: Some(at(50)) };
        let fenced_since_down = Heard { last: Some(at(105)), fenced_since: Some(at(101)) };
        assert_eq!(fenced_by(down, &[silent]), Some(at(90 + EXECUTOR_LEASE_S as i64)));
        // A fence from before the failure (a partition that healed) says nothing of now.
        assert_eq!(fenced_by(down, &[silent, fenced_before]), Some(at(99 + EXECUTOR_LEASE_S as i64)));
        assert_eq!(fenced_by(down, &[fenced_since_down]), None);
        assert_eq!(fenced_by(down, &[]), None);
    }
}
