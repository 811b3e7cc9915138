//! Live migration of a QEMU VM, memory by pre-copy and disks by an NBD
//! mirror, each side driven over its own QMP. The sockets given here are
//! where the local executor's tunnels listen (or, for a direct baseline,
//! the other QEMU's): QEMU never needs to reach the other site itself.
//!
//! The destination starts paused for an incoming migration and exports its
//! (empty) disks over NBD; the source mirrors its disks into those exports
//! (`write-blocking`, so a busy disk converges), then migrates its memory
//! with `pause-before-switchover`: at the switchover the mirrors are
//! finished without a pivot while the guest is paused, and only then does
//! the memory stream end. The destination stays paused until told to start
//! (after the scheduler records the cutover); the source, paused after its
//! migration, resumes if the migration ends otherwise.
//!
//! Convergence policy, when a migration has not converged within its
//! budget: raise `downtime-limit` step by step up to the VM's maximum, then
//! migrate again with `auto-converge` (the mirrors stay ready, so only
//! memory is copied again), then cancel: the VM runs on at the source.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use heliotrope_api_spec::QemuDisk;

use super::machine::Machine;
use super::qmp::{Qmp, QmpError};

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error("QEMU's migration {0}")]
    Failed(String),
    /// The policy ran all its steps: the VM runs on at the source.
    #[error("did not converge: {0}")]
    NotConverged(String),
    #[error("cancelled")]
    Cancelled,
}

/// How one migration may go.
#[derive(Debug, Clone, Copy)]
pub struct MigrationOptions {
    /// The cap, bytes/s (`None`: as fast as the path allows).
    pub cap_bytes_per_s: Option<f64>,
    /// Longest pause the VM may take, milliseconds.
    pub max_downtime_ms: u64,
    /// How long each step of the policy gets to converge.
    pub step: Duration,
    /// Parallel memory channels (0 or 1: a single stream).
    pub multifd_channels: u8,
}

/// What `query-migrate` says, in the fields the executor reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QemuProgress {
    pub status: String,
    pub remaining: u64,
    pub dirty_bytes_per_s: f64,
    pub expected_downtime_ms: Option<u64>,
    pub dirty_syncs: u64,
    /// The memory stream's rate now, bytes/s.
    pub bytes_per_s: f64,
    /// Once completed: the pause the guest took, ms.
    pub downtime_ms: Option<u64>,
}

impl QemuProgress {
    fn from_query(q: &Value) -> QemuProgress {
        let ram = &q["ram"];
        let page = ram["page-size"].as_f64().unwrap_or(4096.0);
        QemuProgress {
            status: q["status"].as_str().unwrap_or("none").to_owned(),
            remaining: ram["remaining"].as_u64().unwrap_or(0),
            dirty_bytes_per_s: ram["dirty-pages-rate"].as_f64().unwrap_or(0.0) * page,
            expected_downtime_ms: q["expected-downtime"].as_u64(),
            dirty_syncs: ram["dirty-sync-count"].as_u64().unwrap_or(0),
            bytes_per_s: ram["mbps"].as_f64().unwrap_or(0.0) * 1e6 / 8.0,
            downtime_ms: q["downtime"].as_u64(),
        }
    }
}

/// What the executor says at each poll: the cap from now on, and whether
/// to stop (the migration was cancelled: the VM runs on at the source).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Steer {
    pub cap_bytes_per_s: Option<f64>,
    pub stop: bool,
}

/// How the migration ended at the source.
#[derive(Debug, Clone, PartialEq)]
pub struct Migrated {
    pub progress: QemuProgress,
    pub elapsed: Duration,
    /// The downtime limit it converged under, ms.
    pub downtime_limit_ms: u64,
    pub auto_converge: bool,
}

const POLL: Duration = Duration::from_millis(250);

/// The capabilities both sides set: events always; multifd if asked and
/// known; on the source, the pause before switchover and (when asked)
/// auto-converge. Probed, because QEMU versions differ.
async fn set_capabilities(qmp: &Qmp, multifd: bool, source: bool, auto_converge: bool) -> Result<bool, QmpError> {
    let known: HashSet<String> = qmp.migrate_capabilities().await?;
    let multifd = multifd && known.contains("multifd");
    let mut wanted = vec![("events", true), ("multifd", multifd)];
    if source {
        wanted.push(("pause-before-switchover", true));
        wanted.push(("auto-converge", auto_converge));
    }
    let list: Vec<Value> = wanted
        .into_iter()
        .filter(|(name, _)| known.contains(*name))
        .map(|(name, state)| json!({"capability": name, "state": state}))
        .collect();
    qmp.execute("migrate-set-capabilities", json!({ "capabilities": list })).await?;
    Ok(multifd)
}

fn unix_uri(path: &Path) -> String {
    format!("unix:{}", path.display())
}

/// Destination: exports `disks` (writable) at `nbd_socket` and listens for
/// the memory at `migration_socket`. The machine was started `incoming`.
pub async fn prepare_incoming(
    machine: &Machine,
    disks: &[QemuDisk],
    multifd_channels: u8,
    migration_socket: &Path,
    nbd_socket: &Path,
) -> Result<(), MigrateError> {
    let qmp = &machine.qmp;
    if !disks.is_empty() {
        let addr = json!({"type": "unix", "data": {"path": nbd_socket}});
        qmp.execute("nbd-server-start", json!({ "addr": addr })).await?;
        for disk in disks {
            let export = json!({"type": "nbd", "id": format!("export-{}", disk.node), "node-name": disk.node,
                "name": disk.node, "writable": true});
            qmp.execute("block-export-add", export).await?;
        }
    }
    if set_capabilities(qmp, multifd_channels > 1, false, false).await? {
        qmp.execute("migrate-set-parameters", json!({"multifd-channels": multifd_channels})).await?;
    }
    qmp.execute("migrate-incoming", json!({"uri": unix_uri(migration_socket)})).await?;
    Ok(())
}

/// Destination: waits until the memory has all arrived, then closes the
/// exports. The VM stays paused until [`start`].
pub async fn incoming_done(machine: &Machine, disks: &[QemuDisk], timeout: Duration) -> Result<(), MigrateError> {
    let qmp = &machine.qmp;
    let deadline = Instant::now() + timeout;
    loop {
        let q = qmp.execute("query-migrate", json!({})).await?;
        match q["status"].as_str().unwrap_or("none") {
            "completed" => break,
            "failed" | "cancelled" => return Err(MigrateError::Failed(format!("incoming: {q}"))),
            _ if Instant::now() >= deadline => return Err(MigrateError::Failed("incoming: never completed".into())),
            _ => tokio::time::sleep(POLL).await,
        }
    }
    for disk in disks {
        let id = format!("export-{}", disk.node);
        // Hard: the source's NBD client may still hold it; the data is all here.
        qmp.execute("block-export-del", json!({"id": id, "mode": "hard"})).await?;
        qmp.wait_event("BLOCK_EXPORT_DELETED", |d| d["id"] == id.as_str(), Duration::from_secs(10)).await?;
    }
    if !disks.is_empty() {
        qmp.execute("nbd-server-stop", json!({})).await?;
    }
    Ok(())
}

/// Runs a paused VM (the destination after the cutover is recorded, or
/// the source after a migration that did not end in one).
pub async fn start(machine: &Machine) -> Result<(), MigrateError> {
    let qmp = &machine.qmp;
    if qmp.status().await? != "running" {
        qmp.execute("cont", json!({})).await?;
    }
    Ok(())
}

/// Pauses a running VM (its site is fenced); whether it was running.
pub async fn pause(machine: &Machine) -> Result<bool, MigrateError> {
    let qmp = &machine.qmp;
    let running = qmp.status().await? == "running";
    if running {
        qmp.execute("stop", json!({})).await?;
    }
    Ok(running)
}

/// Has QEMU announce the guest's NICs (RARP from each MAC, 5 rounds over
/// about a second), so switches and overlays learn where it runs now.
pub async fn announce(machine: &Machine) -> Result<(), MigrateError> {
    machine.qmp.execute("announce-self", json!({"initial": 50, "max": 550, "rounds": 5, "step": 100})).await?;
    Ok(())
}

/// Source: mirrors `disks` into the destination's exports at `nbd_socket`
/// (each at most `speed_bytes_per_s`, if given) and waits until every
/// mirror is ready (in step with the guest's writes).
pub async fn mirror_disks(
    machine: &Machine,
    disks: &[QemuDisk],
    nbd_socket: &Path,
    speed_bytes_per_s: Option<f64>,
    timeout: Duration,
) -> Result<(), MigrateError> {
    let qmp = &machine.qmp;
    for disk in disks {
        let target = format!("target-{}", disk.node);
        let server = json!({"type": "unix", "path": nbd_socket});
        qmp.execute(
            "blockdev-add",
            json!({"driver": "nbd", "node-name": target, "export": disk.node, "server": server}),
        )
        .await?;
        let mut mirror = json!({"job-id": format!("mirror-{}", disk.node), "device": disk.node, "target": target,
               "sync": "full", "copy-mode": "write-blocking"});
        if let Some(speed) = speed_bytes_per_s {
            mirror["speed"] = json!(speed as u64);
        }
        qmp.execute("blockdev-mirror", mirror).await?;
    }
    for disk in disks {
        let job = format!("mirror-{}", disk.node);
        qmp.wait_event("BLOCK_JOB_READY", |d| d["device"] == job.as_str(), timeout).await?;
    }
    Ok(())
}

/// Source: ends the mirrors (finished without a pivot when ready, dropped
/// otherwise) and detaches the NBD targets.
async fn end_mirrors(qmp: &Qmp, disks: &[QemuDisk], force: bool) -> Result<(), MigrateError> {
    for disk in disks {
        let job = format!("mirror-{}", disk.node);
        if qmp.execute("block-job-cancel", json!({"device": job, "force": force})).await.is_ok() {
            let ended = |name: &'static str| {
                let job = job.clone();
                async move { qmp.wait_event(name, move |d| d["device"] == job.as_str(), Duration::from_secs(30)).await }
            };
            // A ready mirror cancelled completes; one forced or not ready is cancelled.
            tokio::select! {
                done = ended("BLOCK_JOB_COMPLETED") => { done?; }
                cancelled = ended("BLOCK_JOB_CANCELLED") => { cancelled?; }
            }
        }
        let _ = qmp.execute("blockdev-del", json!({"node-name": format!("target-{}", disk.node)})).await;
    }
    Ok(())
}

/// Source: migrates the memory to `migration_socket` under `options` and
/// the policy, finishing the mirrors of `disks` at the switchover. On
/// success the source VM is paused (`postmigrate`); on any failure the
/// migration is cancelled, the mirrors dropped and the VM runs on.
/// `steer` sees every poll's progress and answers the cap and whether to stop.
pub async fn migrate_out(
    machine: &Machine,
    disks: &[QemuDisk],
    options: MigrationOptions,
    migration_socket: &Path,
    mut steer: impl FnMut(&QemuProgress) -> Steer,
) -> Result<Migrated, MigrateError> {
    let qmp = &machine.qmp;
    let started = Instant::now();
    let outcome = async {
        let mut auto_converge = false;
        loop {
            match attempt(qmp, disks, options, migration_socket, auto_converge, &mut steer).await {
                Err(MigrateError::NotConverged(why)) if !auto_converge => {
                    tracing::info!(%why, "migrating again with auto-converge");
                    auto_converge = true;
                }
                Ok((progress, downtime_limit_ms)) => {
                    return Ok(Migrated { progress, elapsed: started.elapsed(), downtime_limit_ms, auto_converge });
                }
                Err(e) => return Err(e),
            }
        }
    }
    .await;
    if outcome.is_err() {
        // Whatever failed, the VM must run on here.
        let _ = qmp.execute("migrate_cancel", json!({})).await;
        wait_until_not_active(qmp).await;
        let _ = end_mirrors(qmp, disks, true).await;
        let _ = start(machine).await;
    }
    outcome
}

async fn wait_until_not_active(qmp: &Qmp) {
    for _ in 0..120 {
        match qmp.execute("query-migrate", json!({})).await {
            Ok(q)
                if !matches!(
                    q["status"].as_str(),
                    Some("active" | "setup" | "device" | "pre-switchover" | "cancelling")
                ) =>
            {
                return
            }
            Err(_) => return,
            _ => tokio::time::sleep(POLL).await,
        }
    }
}

/// The policy's steps of the downtime limit, ms: 300 (or the maximum, if
/// lower), doubling up to the maximum. Each step gets the policy's step
/// time to converge.
pub fn downtime_steps(max_downtime_ms: u64) -> Vec<u64> {
    let mut limits = vec![max_downtime_ms.clamp(1, 300)];
    while let Some(&last) = limits.last().filter(|&&last| last < max_downtime_ms) {
        limits.push((last * 2).min(max_downtime_ms));
    }
    limits
}

/// One migration of the memory; `NotConverged` once the downtime steps ran out.
async fn attempt(
    qmp: &Qmp,
    disks: &[QemuDisk],
    options: MigrationOptions,
    migration_socket: &Path,
    auto_converge: bool,
    steer: &mut impl FnMut(&QemuProgress) -> Steer,
) -> Result<(QemuProgress, u64), MigrateError> {
    let multifd = set_capabilities(qmp, options.multifd_channels > 1, true, auto_converge).await?;
    let limits = downtime_steps(options.max_downtime_ms);
    let mut step = 0;
    let bandwidth = |cap: Option<f64>| cap.map_or(u64::from(u32::MAX), |c| c.max(1.0) as u64);
    let mut cap = options.cap_bytes_per_s;
    let mut parameters = json!({"max-bandwidth": bandwidth(cap), "downtime-limit": limits[0]});
    if multifd {
        parameters["multifd-channels"] = json!(options.multifd_channels);
    }
    qmp.execute("migrate-set-parameters", parameters).await?;
    qmp.execute("migrate", json!({"uri": unix_uri(migration_socket)})).await?;
    let mut step_started = Instant::now();
    loop {
        tokio::time::sleep(POLL).await;
        let q = qmp.execute("query-migrate", json!({})).await?;
        let progress = QemuProgress::from_query(&q);
        let wanted = steer(&progress);
        if wanted.stop {
            return Err(MigrateError::Cancelled);
        }
        if wanted.cap_bytes_per_s != cap && progress.status == "active" {
            cap = wanted.cap_bytes_per_s;
            qmp.execute("migrate-set-parameters", json!({"max-bandwidth": bandwidth(cap)})).await?;
        }
        match progress.status.as_str() {
            "completed" => return Ok((progress, limits[step])),
            "pre-switchover" => {
                // The guest is paused: the disks are in step; finish the mirrors, then let the memory end.
                end_mirrors(qmp, disks, false).await?;
                qmp.execute("migrate-continue", json!({"state": "pre-switchover"})).await?;
            }
            "failed" => return Err(MigrateError::Failed(q["error-desc"].as_str().unwrap_or("failed").to_owned())),
            "cancelled" => return Err(MigrateError::Cancelled),
            _ if step_started.elapsed() >= options.step => {
                if step + 1 < limits.len() {
                    step += 1;
                    tracing::info!(downtime_limit_ms = limits[step], "not converging: a longer downtime allowed");
                    qmp.execute("migrate-set-parameters", json!({"downtime-limit": limits[step]})).await?;
                    step_started = Instant::now();
                } else {
                    qmp.execute("migrate_cancel", json!({})).await?;
                    wait_until_not_active(qmp).await;
                    return Err(MigrateError::NotConverged(format!(
                        "{} dirty syncs, expected downtime {:?} ms over the {} ms allowed",
                        progress.dirty_syncs, progress.expected_downtime_ms, options.max_downtime_ms
                    )));
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::downtime_steps;

    #[test]
    fn the_downtime_limit_doubles_from_300_ms_up_to_the_maximum() {
        assert_eq!(downtime_steps(2000), [300, 600, 1200, 2000]);
        assert_eq!(downtime_steps(300), [300]);
        assert_eq!(downtime_steps(100), [100]);
    }
}
