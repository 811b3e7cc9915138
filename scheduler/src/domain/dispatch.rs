//! The executor protocol's rules: what a registration and a progress
//! report must hold, how long a claim lasts, and what a recovering
//! migration becomes once its executor says where the VM runs.

use chrono::{DateTime, Duration, Utc};
use heliotrope_api_spec::{
    Completion, ExecutorRegistration, Heartbeat, MigrationChange, MigrationState, NetworkReport, ProgressReport,
    RecoveryState, ReplicationReport, RestartOutcome, SiteFailure, VmRunsAt, REPLICATION_SESSION_BASE,
};

use super::inventory::check_name;
use super::{Valid, ValidationError};

/// How long a claim holds without a progress report.
pub fn lease() -> Duration {
    Duration::seconds(30)
}

/// Attempts a migration gets before a recovery rolls it back for good.
pub const MAX_ATTEMPTS: u32 = 3;

/// Longest a claim may wait for a migration to become claimable.
pub const MAX_CLAIM_WAIT_S: u32 = 30;

type Result<T> = std::result::Result<T, ValidationError>;

pub fn parse_registration(r: ExecutorRegistration) -> Result<Valid<ExecutorRegistration>> {
    check_name("site", &r.site)?;
    let port_ok = r
        .address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !port_ok || r.address.len() > 255 || r.address.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ValidationError::new("address", format!("{:?} is not host:port", r.address)));
    }
    if !(1..=64).contains(&r.capacity) {
        return Err(ValidationError::new("capacity", format!("must be between 1 and 64, got {}", r.capacity)));
    }
    let mut r = r;
    if let Some(text) = &r.tunnel_address {
        let ip = text.parse::<std::net::IpAddr>().ok().filter(|ip| !(ip.is_unspecified() || ip.is_multicast()));
        let Some(ip) = ip else {
            return Err(ValidationError::new("tunnel_address", format!("{text:?} is not a unicast IP address")));
        };
        r.tunnel_address = Some(ip.to_string());
    }
    Ok(Valid(r))
}

/// A cap must be a positive rate no WAN link exceeds (1 Tbit/s).
pub fn parse_change(change: MigrationChange) -> Result<Valid<MigrationChange>> {
    if change.cap_mbps.is_some_and(|cap| !(cap.is_finite() && (MIN_CAP_MBPS..=1_000_000.0).contains(&cap))) {
        let message = format!("must be {MIN_CAP_MBPS} to 1000000 Mbit/s, or null");
        return Err(ValidationError::new("cap_mbps", message));
    }
    Ok(Valid(change))
}

pub fn parse_progress(p: ProgressReport) -> Result<Valid<ProgressReport>> {
    if p.state.is_some_and(|s| !matches!(s, MigrationState::Transferring | MigrationState::Cutover)) {
        return Err(ValidationError::new(
            "state",
            "a progress report moves a migration only to transferring or cutover",
        ));
    }
    let fine = |v: f64| v.is_finite() && v >= 0.0;
    if !fine(p.dirty_bytes_per_s) {
        return Err(ValidationError::new("dirty_bytes_per_s", "must be a finite number, at least 0"));
    }
    for (field, value) in
        [("expected_downtime_s", p.expected_downtime_s), ("eta_s", p.eta_s), ("downtime_s", p.downtime_s)]
    {
        if value.is_some_and(|v| !fine(v)) {
            return Err(ValidationError::new(field, "must be a finite number, at least 0"));
        }
    }
    if p.wire_bytes > p.raw_bytes.saturating_mul(2).saturating_add(1 << 30) {
        return Err(ValidationError::new("wire_bytes", "far more than the raw bytes: not a transfer's counters"));
    }
    Ok(Valid(p))
}

pub fn parse_completion(c: Completion) -> Result<Valid<Completion>> {
    if !matches!(c.state, MigrationState::Done | MigrationState::Failed | MigrationState::RolledBack) {
        return Err(ValidationError::new("state", "a migration completes as done, failed or rolled_back"));
    }
    if c.detail.len() > 1000 || c.detail.contains('\0') {
        return Err(ValidationError::new("detail", "at most 1000 characters, no NUL"));
    }
    Ok(Valid(c))
}

pub fn parse_network_report(r: NetworkReport) -> Result<Valid<NetworkReport>> {
    if !(r.duration_ms.is_finite() && (0.0..=3_600_000.0).contains(&r.duration_ms)) {
        return Err(ValidationError::new("duration_ms", "0 to 3600000 milliseconds"));
    }
    if r.detail.len() > 1000 || r.detail.contains('\0') {
        return Err(ValidationError::new("detail", "at most 1000 characters, no NUL"));
    }
    Ok(Valid(r))
}

/// A heartbeat: the listener's last error is short text.
pub fn parse_heartbeat(h: Heartbeat) -> Result<Valid<Heartbeat>> {
    if let Some(error) = h.listener.as_ref().and_then(|l| l.last_error.as_ref()) {
        if error.chars().count() > 200 || error.contains('\0') {
            return Err(ValidationError::new("listener.last_error", "at most 200 characters, no NUL"));
        }
    }
    Ok(Valid(h))
}

/// The least running cap a planner may set: below it no migration converges,
/// and a sender's waits would overflow.
pub const MIN_CAP_MBPS: f64 = 0.1;

/// The most replicas one report may speak of.
pub const MAX_REPLICA_REPORTS: usize = 10_000;

/// A replica freshness report: sessions of standbys (each once), byte
/// counts a database can hold, no sync time in the future.
pub fn parse_replication_report(r: ReplicationReport, now: DateTime<Utc>) -> Result<Valid<ReplicationReport>> {
    if r.replicas.len() > MAX_REPLICA_REPORTS {
        return Err(ValidationError::new("replicas", format!("at most {MAX_REPLICA_REPORTS} entries")));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, replica) in r.replicas.iter().enumerate() {
        let field = |name: &str| format!("replicas[{i}].{name}");
        let id = replica.session.checked_sub(REPLICATION_SESSION_BASE).filter(|&id| id > 0 && id <= i64::MAX as u64);
        if id.is_none() {
            return Err(ValidationError::new(field("session"), "not a replication session"));
        }
        if !seen.insert(replica.session) {
            return Err(ValidationError::new(field("session"), "reported twice"));
        }
        for (name, bytes) in [("synced_bytes", replica.synced_bytes), ("written_bytes", replica.written_bytes)] {
            if bytes > i64::MAX as u64 {
                return Err(ValidationError::new(field(name), "too large"));
            }
        }
        if replica.synced_at.is_some_and(|at| at > now + Duration::minutes(5)) {
            return Err(ValidationError::new(field("synced_at"), "is in the future"));
        }
    }
    let running = r.running.as_deref().unwrap_or_default();
    if running.len() > MAX_REPLICA_REPORTS {
        return Err(ValidationError::new("running", format!("at most {MAX_REPLICA_REPORTS} entries")));
    }
    if let Some(i) = running.iter().position(|name| name.is_empty() || name.len() > 200 || name.contains('\0')) {
        return Err(ValidationError::new(format!("running[{i}]"), "a VM name: 1 to 200 bytes, no NUL"));
    }
    if r.quarantine.len() > MAX_REPLICA_REPORTS {
        return Err(ValidationError::new("quarantine", format!("at most {MAX_REPLICA_REPORTS} entries")));
    }
    if let Some(i) = r.quarantine.iter().position(|h| h.recovery < 1) {
        return Err(ValidationError::new(format!("quarantine[{i}].recovery"), "a recovery's id"));
    }
    Ok(Valid(r))
}

/// A restart's outcome: it runs, or failed; the detail is short text.
pub fn parse_restart_outcome(o: RestartOutcome) -> Result<Valid<RestartOutcome>> {
    if !matches!(o.state, RecoveryState::Running | RecoveryState::Failed) {
        return Err(ValidationError::new("state", "a restart ends running or failed"));
    }
    if o.detail.len() > 4000 || o.detail.contains('\0') {
        return Err(ValidationError::new("detail", "at most 4000 bytes, no NUL"));
    }
    Ok(Valid(o))
}

/// An operator's word that a site is lost: its reason is short text.
pub fn parse_site_failure(f: SiteFailure) -> Result<Valid<SiteFailure>> {
    if f.reason.len() > 1000 || f.reason.contains('\0') {
        return Err(ValidationError::new("reason", "at most 1000 bytes, no NUL"));
    }
    Ok(Valid(f))
}

/// What a recovering migration becomes: done if the VM runs at the
/// destination; if it runs at the source, scheduled again while attempts
/// remain, else rolled back.
pub fn after_recovery(runs_at: VmRunsAt, attempts: u32) -> MigrationState {
    match runs_at {
        VmRunsAt::Destination => MigrationState::Done,
        VmRunsAt::Source if attempts < MAX_ATTEMPTS => MigrationState::Scheduled,
        VmRunsAt::Source => MigrationState::RolledBack,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use heliotrope_api_spec::Driver;

    fn registration(address: &str, capacity: u32) -> ExecutorRegistration {
        ExecutorRegistration {
            site: "DE".into(),
            address: address.into(),
            driver: Driver::Sim,
            capacity,
            tunnel_address: None,
        }
    }

    #[test]
    fn registrations_need_a_reachable_address_and_a_sane_capacity() {
        assert!(parse_registration(registration("10.0.0.1:7070", 2)).is_ok());
        assert!(parse_registration(registration("[::1]:7070", 2)).is_ok());
        for bad in ["10.0.0.1", ":7070", "h:0", "h:99999", "a b:1"] {
            assert_eq!(parse_registration(registration(bad, 2)).unwrap_err().field, "address", "{bad}");
        }
        assert_eq!(parse_registration(registration("h:1", 0)).unwrap_err().field, "capacity");
    }

    #[test]
    fn recovery_retries_then_rolls_back_and_never_loses_a_cutover() {
        assert_eq!(after_recovery(VmRunsAt::Source, 1), MigrationState::Scheduled);
        assert_eq!(after_recovery(VmRunsAt::Source, MAX_ATTEMPTS), MigrationState::RolledBack);
        assert_eq!(after_recovery(VmRunsAt::Destination, MAX_ATTEMPTS), MigrationState::Done);
    }
}
