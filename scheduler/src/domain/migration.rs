//! The migration state machine: which changes of state a migration may
//! make. Every change goes through [`can_move`], so that a migration
//! happens once, ends in one place, and is cancelled only while the VM
//! still runs at the source.

use heliotrope_api_spec::MigrationState::{self, *};

/// Not yet ended: a VM has at most one such migration.
pub fn is_active(state: MigrationState) -> bool {
    !matches!(state, Done | Failed | Cancelled | RolledBack | Expired)
}

/// Whether a migration in `from` may go to `to`.
pub fn can_move(from: MigrationState, to: MigrationState) -> bool {
    matches!(
        (from, to),
        (Pending, Scheduled)
            | (Scheduled, Claimed)
            | (Claimed, Transferring)
            | (Transferring, Cutover)
            | (Cutover, Done)
            // Before cutover the VM still runs at the source: it can stop there.
            | (Pending | Scheduled | Claimed | Transferring, Cancelled)
            // Never admitted before its bound: its room goes back.
            | (Pending | Scheduled, Expired)
            | (Claimed | Transferring, Failed)
            // The destination never confirmed: the source resumes the VM (the
            // destination starts it only once `done` is recorded, which this excludes).
            | (Cutover, RolledBack)
            // An executor lost mid-way: where the VM runs is asked, then the
            // job retries, rolls back, or completes.
            | (Claimed | Transferring | Cutover, Recovering)
            | (Recovering, Scheduled | RolledBack | Done)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [MigrationState; 11] =
        [Pending, Scheduled, Claimed, Transferring, Cutover, Done, Failed, Cancelled, RolledBack, Recovering, Expired];

    #[test]
    fn ended_migrations_stay_ended_and_cutover_cannot_be_cancelled() {
        for from in ALL.into_iter().filter(|&s| !is_active(s)) {
            assert!(ALL.iter().all(|&to| !can_move(from, to)), "{from:?} moved on");
        }
        assert!(!can_move(Cutover, Cancelled));
        assert!(!can_move(Cutover, Failed), "after cutover only recovery decides");
    }

    #[test]
    fn every_active_state_can_reach_an_end() {
        for start in ALL.into_iter().filter(|&s| is_active(s)) {
            let mut seen = vec![start];
            let mut frontier = vec![start];
            while let Some(s) = frontier.pop() {
                for to in ALL {
                    if can_move(s, to) && !seen.contains(&to) {
                        seen.push(to);
                        frontier.push(to);
                    }
                }
            }
            assert!(seen.contains(&Done) || seen.contains(&RolledBack), "{start:?} cannot end");
            assert!(seen.iter().any(|&s| !is_active(s)), "{start:?}");
        }
    }
}
