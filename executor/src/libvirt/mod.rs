//! The `libvirt` driver: domains that libvirt runs, migrated live through
//! libvirt's own API (client-managed `virDomainMigrate3`), with every
//! stream of the migration given to the local executor's tunnels.
//!
//! libvirt owns the domain's QMP monitor, so nothing here speaks QMP. The
//! migration is told unix sockets for memory (`migrate_uri`) and disks
//! (`disks_uri`): the source's QEMU connects to the path on its host, where
//! the source executor listens; the destination's QEMU listens at the same
//! path on its host, which the destination executor connects to. libvirt's
//! control connection to the destination's daemon is a unix socket too,
//! carried the same way. No QEMU and no libvirtd ever reaches the other
//! site itself.
//!
//! The destination domain is left paused (`VIR_MIGRATE_PAUSED`) and runs
//! only once the scheduler records the migration done. libvirt's own
//! handshake (perform, finish, confirm) decides the switchover: once
//! `migrate3` returns, the source's QEMU has ended and the domain is
//! defined at the destination only. Until then any failure, an abort
//! included, leaves the domain running at the source.
//!
//! Convergence policy, as the `qemu` driver's: the downtime limit in steps
//! up to the VM's maximum ([`crate::qemu::migrate::downtime_steps`]), then
//! a second migration with auto-converge, then abort. No post-copy: it would
//! run the guest at the destination before the scheduler records `done`.

pub mod pair;

use std::sync::Arc;
use std::time::{Duration, Instant};

use heliotrope_api_spec::CopyStorage;
use virt::connect::Connect;
use virt::domain::{Domain, JobStats, MigrateParameters};
use virt::sys;

use crate::qemu::migrate::{downtime_steps, MigrateError, Migrated, MigrationOptions, QemuProgress, Steer};

#[derive(Debug, thiserror::Error)]
pub enum LibvirtError {
    #[error("libvirt: {0}")]
    Libvirt(String),
    #[error("libvirt's call did not finish: {0}")]
    Call(String),
}

impl From<virt::error::Error> for LibvirtError {
    fn from(e: virt::error::Error) -> Self {
        LibvirtError::Libvirt(e.message().to_owned())
    }
}

impl From<LibvirtError> for MigrateError {
    fn from(e: LibvirtError) -> Self {
        MigrateError::Failed(e.to_string())
    }
}

/// Runs a libvirt call (they block) off the async runtime.
async fn call<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, virt::error::Error> + Send + 'static,
) -> Result<T, LibvirtError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => Ok(result?),
        Err(e) => Err(LibvirtError::Call(e.to_string())),
    }
}

/// A connection to libvirt at `uri`. libvirt's errors are the caller's to
/// tell: its default handler, which prints each one, is turned off first.
pub fn connect(uri: &str) -> Result<Connect, virt::error::Error> {
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(virt::error::clear_error_callback);
    Connect::open(Some(uri))
}

/// A connection to libvirt at `uri`, and `domain` there (none if it has no such domain).
async fn open(uri: &str, domain: &str) -> Result<(Arc<Connect>, Option<Domain>), LibvirtError> {
    let (uri, domain) = (uri.to_owned(), domain.to_owned());
    call(move || {
        let conn = connect(&uri)?;
        let found = Domain::lookup_by_name(&conn, &domain).ok();
        Ok((Arc::new(conn), found))
    })
    .await
}

/// The local libvirt's version (`major.minor.micro`), to check it answers.
pub async fn version(uri: &str) -> Result<String, LibvirtError> {
    let uri = uri.to_owned();
    call(move || {
        let conn = connect(&uri)?;
        let v = conn.get_lib_version()?;
        Ok(format!("{}.{}.{}", v / 1_000_000, v / 1000 % 1000, v % 1000))
    })
    .await
}

/// Where a domain stands at a libvirt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainState {
    Running,
    Paused,
    /// Defined, not running.
    Off,
    Other,
}

/// `domain`'s state at the libvirt at `uri`, and whether it is persistent; none if it has no such domain.
pub async fn state(uri: &str, domain: &str) -> Result<Option<(DomainState, bool)>, LibvirtError> {
    let (_conn, found) = open(uri, domain).await?;
    let Some(dom) = found else { return Ok(None) };
    call(move || {
        let (state, _reason) = dom.get_state()?;
        let state = match state {
            sys::VIR_DOMAIN_RUNNING => DomainState::Running,
            sys::VIR_DOMAIN_PAUSED => DomainState::Paused,
            sys::VIR_DOMAIN_SHUTOFF => DomainState::Off,
            _ => DomainState::Other,
        };
        Ok(Some((state, dom.is_persistent()?)))
    })
    .await
}

/// Runs `domain` if it is paused (the destination once `done` is recorded,
/// or the source after a crash mid-migration).
pub async fn resume(uri: &str, domain: &str) -> Result<(), LibvirtError> {
    let (_conn, found) = open(uri, domain).await?;
    let dom = found.ok_or_else(|| LibvirtError::Libvirt(format!("no domain '{domain}' here")))?;
    call(move || {
        if dom.get_state()?.0 == sys::VIR_DOMAIN_PAUSED {
            dom.resume()?;
        }
        Ok(())
    })
    .await
}

/// The virtual size of each of `domain`'s disks `targets`, as libvirt sees them.
pub async fn disk_sizes(uri: &str, domain: &str, targets: Vec<String>) -> Result<Vec<u64>, LibvirtError> {
    let (_conn, found) = open(uri, domain).await?;
    let dom = found.ok_or_else(|| LibvirtError::Libvirt(format!("no domain '{domain}' here")))?;
    call(move || targets.iter().map(|t| Ok(dom.get_block_info(t, 0)?.capacity)).collect()).await
}

/// One outgoing migration: the domain, its disks, and where its streams go.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The local libvirt.
    pub source_uri: String,
    /// The destination's libvirt, as reached through the tunnels.
    pub destination_uri: String,
    pub domain: String,
    /// The disks copied, by target.
    pub disks: Vec<String>,
    pub copy_storage: CopyStorage,
    /// QEMU's memory streams (`unix:///...`).
    pub memory_uri: String,
    /// The disks' NBD connections (`unix:///...`).
    pub disks_uri: String,
}

/// How an outgoing migration ended: as the `qemu` driver's, with the
/// bytes libvirt says it moved (the disks' as of the last poll).
#[derive(Debug, Clone)]
pub struct Moved {
    pub migrated: Migrated,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
}

/// The bytes a finished migration moved: memory as the destination's
/// statistics count it, the disks as the source's last poll did.
struct Completed {
    memory_bytes: u64,
    disk_bytes: u64,
}

const POLL: Duration = Duration::from_millis(250);

/// How long the disks' copy may take before memory moves (as the qemu driver's mirrors).
const DISKS_WITHIN: Duration = Duration::from_secs(3600);

/// Migrates `out` live under `options` and the policy; `steer` sees every
/// poll's progress and answers the cap and whether to stop. On success the
/// domain is defined and paused at the destination only; on any failure it
/// runs on at the source.
pub async fn migrate_out(
    out: &Outgoing,
    options: MigrationOptions,
    mut steer: impl FnMut(&QemuProgress) -> Steer,
) -> Result<Moved, MigrateError> {
    let started = Instant::now();
    let mut auto_converge = false;
    loop {
        match attempt(out, options, auto_converge, &mut steer).await {
            Err(MigrateError::NotConverged(why)) if !auto_converge => {
                tracing::info!(%why, "migrating again with auto-converge");
                auto_converge = true;
            }
            Ok((progress, downtime_limit_ms, completed)) => {
                let migrated = Migrated { progress, elapsed: started.elapsed(), downtime_limit_ms, auto_converge };
                return Ok(Moved { migrated, memory_bytes: completed.memory_bytes, disk_bytes: completed.disk_bytes });
            }
            Err(e) => return Err(e),
        }
    }
}

/// libvirt's bandwidth unit: MiB/s, at least 1.
fn mib_per_s(bytes_per_s: f64) -> u64 {
    (bytes_per_s / f64::from(1 << 20)).ceil().max(1.0) as u64
}

fn flags(out: &Outgoing, options: MigrationOptions, auto_converge: bool) -> u32 {
    let mut flags = sys::VIR_MIGRATE_LIVE
        | sys::VIR_MIGRATE_PERSIST_DEST
        | sys::VIR_MIGRATE_UNDEFINE_SOURCE
        | sys::VIR_MIGRATE_PAUSED;
    if !out.disks.is_empty() {
        flags |= match out.copy_storage {
            CopyStorage::All => sys::VIR_MIGRATE_NON_SHARED_DISK,
            CopyStorage::Incremental => sys::VIR_MIGRATE_NON_SHARED_INC,
        };
    }
    if options.multifd_channels > 1 {
        flags |= sys::VIR_MIGRATE_PARALLEL;
    }
    if auto_converge {
        flags |= sys::VIR_MIGRATE_AUTO_CONVERGE;
    }
    flags
}

/// One migration; `NotConverged` once the downtime steps ran out.
async fn attempt(
    out: &Outgoing,
    options: MigrationOptions,
    auto_converge: bool,
    steer: &mut impl FnMut(&QemuProgress) -> Steer,
) -> Result<(QemuProgress, u64, Completed), MigrateError> {
    let (_conn, found) = open(&out.source_uri, &out.domain).await?;
    let dom = found.ok_or_else(|| MigrateError::Failed(format!("no domain '{}' at the source", out.domain)))?;
    let limits = downtime_steps(options.max_downtime_ms);
    let mut cap = options.cap_bytes_per_s;
    let first = limits[0];
    let setting = dom.clone();
    call(move || setting.migrate_set_max_downtime(first, 0)).await?;
    let parameters = MigrateParameters {
        uri: Some(out.memory_uri.clone()),
        disks_uri: (!out.disks.is_empty()).then(|| out.disks_uri.clone()),
        migrate_disks: out.disks.clone(),
        parallel_connections: (options.multifd_channels > 1).then_some(i32::from(options.multifd_channels)),
        bandwidth: cap.map(mib_per_s),
        ..MigrateParameters::default()
    };
    let flags = flags(out, options, auto_converge);
    let (migrating_dom, destination) = (dom.clone(), out.destination_uri.clone());
    let migrating = tokio::task::spawn_blocking(move || {
        let dconn = connect(&destination)?;
        let moved = migrating_dom.migrate3(&dconn, parameters, flags)?;
        // It moved: statistics the destination cannot give change nothing about that.
        Ok::<_, virt::error::Error>(job_stats(&moved, sys::VIR_DOMAIN_JOB_STATS_COMPLETED).ok())
    });
    tokio::pin!(migrating);
    let mut step = 0;
    let started = Instant::now();
    let mut step_started = started;
    let mut last = QemuProgress::default();
    // What the disks' copy has processed (the destination's statistics count memory only).
    let mut disk_bytes = 0;
    let stopped = loop {
        tokio::select! {
            ended = &mut migrating => {
                let completed = ended.map_err(|e| MigrateError::Failed(e.to_string()))?
                    .map_err(|e| MigrateError::Failed(e.message().to_owned()))?;
                return Ok(finished(last, limits[step], completed.as_ref(), disk_bytes));
            }
            () = tokio::time::sleep(POLL) => {}
        }
        let polled = dom.clone();
        // The job may not have started yet, or have just ended: a failed poll is not the migration's failure.
        let Ok(stats) = call(move || job_stats(&polled, 0)).await else { continue };
        last = progress(&stats);
        disk_bytes = disk_bytes.max(stats.disk_processed.unwrap_or(0));
        // libvirt copies the disks before it sends memory: the policy's steps count from the memory's start.
        if stats.mem_processed.unwrap_or(0) == 0 {
            if started.elapsed() >= DISKS_WITHIN {
                break MigrateError::Failed(format!("the disks did not catch up within {} s", DISKS_WITHIN.as_secs()));
            }
            step_started = Instant::now();
        }
        let wanted = steer(&last);
        if wanted.stop {
            break MigrateError::Cancelled;
        }
        if wanted.cap_bytes_per_s != cap {
            cap = wanted.cap_bytes_per_s;
            let (setting, speed) = (dom.clone(), cap.map_or(0, mib_per_s));
            // 0: libvirt's "as fast as it can".
            let _ = call(move || setting.migrate_set_max_speed(speed, 0)).await;
        }
        if step_started.elapsed() >= options.step {
            if step + 1 < limits.len() {
                step += 1;
                tracing::info!(downtime_limit_ms = limits[step], "not converging: a longer downtime allowed");
                let (setting, limit) = (dom.clone(), limits[step]);
                if let Err(e) = call(move || setting.migrate_set_max_downtime(limit, 0)).await {
                    break MigrateError::Failed(format!("raising the downtime limit: {e}"));
                }
                step_started = Instant::now();
            } else {
                break MigrateError::NotConverged(format!(
                    "{} memory iterations, dirtying {:.0} MB/s, over the {} ms downtime allowed",
                    last.dirty_syncs,
                    last.dirty_bytes_per_s / 1e6,
                    options.max_downtime_ms
                ));
            }
        }
    };
    // Abort: libvirt ends the job at both ends and the domain runs on at the source. Whatever
    // the abort says (it finds no job once the migration has ended), how `migrate3` ended decides.
    let aborting = dom.clone();
    if let Err(e) = call(move || abort_job(&aborting)).await {
        tracing::warn!(error = %e, "aborting the migration");
    }
    match migrating.await {
        // It finished before the abort took: the domain is at the destination.
        Ok(Ok(completed)) => Ok(finished(last, limits[step], completed.as_ref(), disk_bytes)),
        _ => Err(stopped),
    }
}

/// A finished migration's last progress and what it moved, from the
/// destination's statistics of it (`completed`, if it gave them).
fn finished(
    mut last: QemuProgress,
    limit: u64,
    completed: Option<&JobStats>,
    disk_bytes: u64,
) -> (QemuProgress, u64, Completed) {
    last.status = "completed".into();
    last.remaining = 0;
    last.downtime_ms = completed.and_then(|c| c.downtime);
    let memory_bytes = completed.and_then(|c| c.mem_processed).unwrap_or(0);
    (last, limit, Completed { memory_bytes, disk_bytes })
}

/// Aborts `dom`'s job (`virDomainAbortJob`, which the `virt` bindings do not wrap).
#[allow(unsafe_code)]
fn abort_job(dom: &Domain) -> Result<(), virt::error::Error> {
    // SAFETY: `dom` holds a reference on the domain for the whole call;
    // virDomainAbortJob takes nothing else and keeps no pointer.
    let aborted = unsafe { sys::virDomainAbortJob(dom.as_ptr()) };
    if aborted < 0 {
        return Err(virt::error::Error::last_error());
    }
    Ok(())
}

/// `dom`'s job statistics (`virDomainGetJobStats`). The bindings' own
/// `get_job_stats` builds a `Vec` from the null pointer libvirt returns
/// when it has no statistics (no job, or one just ended): undefined
/// behaviour, an abort in a debug build.
#[allow(unsafe_code)]
fn job_stats(dom: &Domain, flags: u32) -> Result<JobStats, virt::error::Error> {
    let (mut kind, mut params, mut count): (libc::c_int, sys::virTypedParameterPtr, libc::c_int) =
        (0, std::ptr::null_mut(), 0);
    // SAFETY: `dom` holds a reference on the domain for the call; the out
    // pointers are to live locals, which libvirt fills.
    let got = unsafe { sys::virDomainGetJobStats(dom.as_ptr(), &mut kind, &mut params, &mut count, flags) };
    if got < 0 {
        return Err(virt::error::Error::last_error());
    }
    let Ok(len) = usize::try_from(count) else { return Ok(JobStats::from((kind, Vec::new()))) };
    if params.is_null() || len == 0 {
        return Ok(JobStats::from((kind, Vec::new())));
    }
    // SAFETY: libvirt returned `len` initialised parameters at `params`;
    // they are copied (strings too, by the conversion) before libvirt frees them.
    let stats = JobStats::from((kind, unsafe { std::slice::from_raw_parts(params, len) }.to_vec()));
    // SAFETY: `params` and `count` are what libvirt returned, freed once.
    unsafe { sys::virTypedParamsFree(params, count) };
    Ok(stats)
}

/// libvirt's job statistics in the fields the executor reports.
fn progress(stats: &JobStats) -> QemuProgress {
    let page = stats.mem_page_size.unwrap_or(4096) as f64;
    QemuProgress {
        status: "active".into(),
        remaining: stats.data_remaining.unwrap_or(0),
        dirty_bytes_per_s: stats.mem_dirty_rate.unwrap_or(0) as f64 * page,
        expected_downtime_ms: None,
        dirty_syncs: stats.mem_iteration.unwrap_or(0),
        bytes_per_s: stats.mem_bps.unwrap_or(0) as f64,
        downtime_ms: None,
    }
}

/// The unix socket a libvirt URI names (`?socket=`), else the system daemon's.
pub fn daemon_socket(uri: &str) -> Result<std::path::PathBuf, LibvirtError> {
    let local = ["qemu:///system", "qemu+unix:///system"];
    let (base, query) = uri.split_once('?').unwrap_or((uri, ""));
    if !local.contains(&base) {
        return Err(LibvirtError::Libvirt(format!(
            "'{uri}' is not this host's system libvirt (qemu:///system, optionally ?socket=PATH)"
        )));
    }
    let socket = query.split('&').find_map(|pair| pair.strip_prefix("socket="));
    Ok(socket.unwrap_or("/run/libvirt/libvirt-sock").into())
}

/// The libvirt URI of the daemon reached through `socket` (a tunnel's local end).
pub fn through(socket: &std::path::Path) -> String {
    format!("qemu+unix:///system?socket={}", socket.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_libvirt_uri_names_its_daemons_socket() {
        assert_eq!(daemon_socket("qemu:///system").unwrap(), std::path::Path::new("/run/libvirt/libvirt-sock"));
        assert_eq!(daemon_socket("qemu:///system?socket=/x/sock").unwrap(), std::path::Path::new("/x/sock"));
        assert!(daemon_socket("qemu+ssh://elsewhere/system").is_err());
        assert!(daemon_socket("qemu:///session").is_err());
    }

    #[test]
    fn bandwidth_goes_to_libvirt_in_whole_mib_per_second() {
        assert_eq!(mib_per_s(1.0), 1);
        assert_eq!(mib_per_s(125e6), 120);
    }
}
