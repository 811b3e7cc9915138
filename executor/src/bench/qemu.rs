//! `heliotrope-executor bench qemu`: the test guest (128 MiB, rewriting
//! ~99 MiB all the time) and a 256 MiB qcow2 disk migrated live, QEMU to
//! QEMU directly and through the executors' tunnels over loopback TCP,
//! under the same cap; runs alternate, and the medians are compared. The
//! last line is one JSON object.

use std::time::{Duration, Instant};

use anyhow::Context;
use heliotrope_api_spec::QemuSpec;
use heliotrope_executor::qemu::guest::{self, boot_image, disk_with_data};
use heliotrope_executor::qemu::migrate::{incoming_done, migrate_out, mirror_disks, MigrationOptions, Steer};
use heliotrope_executor::qemu::pair::{Pair, Route, CHANNELS};
use serde_json::json;

#[derive(clap::Args, Debug)]
pub struct QemuBenchArgs {
    /// The cap both routes migrate under, MiB/s (QEMU's max-bandwidth; the tunnels' shaper too).
    #[arg(long, default_value_t = 1024.0)]
    pub cap_mib_s: f64,
    /// Migrations per route (alternating).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// The guest's maximum downtime, ms.
    #[arg(long, default_value_t = 2000)]
    pub max_downtime_ms: u64,
}

struct Run {
    seconds: f64,
    downtime_ms: u64,
    wire_bytes: u64,
}

/// One migration: mirror, then memory, until the destination holds it all.
async fn migrate(spec: &QemuSpec, route: Route, args: &QemuBenchArgs) -> anyhow::Result<Run> {
    let root = tempfile::tempdir()?;
    let pair = Pair::start(root.path(), spec, route).await?;
    // Let the guest get going.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cap = args.cap_mib_s * 1048576.0;
    let options = MigrationOptions {
        cap_bytes_per_s: Some(cap),
        max_downtime_ms: args.max_downtime_ms,
        step: Duration::from_secs(30),
        multifd_channels: CHANNELS,
    };
    let started = Instant::now();
    mirror_disks(&pair.source, &spec.disks, &pair.nbd_socket, Duration::from_secs(600)).await?;
    let steer = |_: &_| Steer { cap_bytes_per_s: Some(cap), stop: false };
    let migrated = migrate_out(&pair.source, &spec.disks, options, &pair.migration_socket, steer).await?;
    incoming_done(&pair.destination, &pair.target.disks, Duration::from_secs(60)).await?;
    let seconds = started.elapsed().as_secs_f64();
    let wire_bytes = pair.tunnels.as_ref().map_or(0, |t| t.wire_bytes());
    pair.source.quit().await;
    pair.destination.quit().await;
    Ok(Run { seconds, downtime_ms: migrated.progress.downtime_ms.unwrap_or(0), wire_bytes })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

pub async fn qemu(args: &QemuBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.runs >= 1, "--runs must be at least 1");
    anyhow::ensure!(args.cap_mib_s > 0.0, "--cap-mib-s must be above 0");
    let files = tempfile::tempdir()?;
    let disk = files.path().join("disk0.qcow2");
    disk_with_data(&disk, 256).context("making the disk")?;
    let spec = guest::spec(&boot_image(files.path()).context("building the test guest")?, &disk);
    let (mut direct, mut relay) = (Vec::new(), Vec::new());
    for run in 0..args.runs {
        let d = migrate(&spec, Route::Direct, args).await.context("the direct migration")?;
        let cap = Some(args.cap_mib_s * 1048576.0);
        let r = migrate(&spec, Route::Tunnelled { cap }, args).await.context("the tunnelled migration")?;
        eprintln!(
            "run {run}: direct {:.2} s (downtime {} ms), through the executors {:.2} s (downtime {} ms, {} MiB on the wire)",
            d.seconds,
            d.downtime_ms,
            r.seconds,
            r.downtime_ms,
            r.wire_bytes >> 20
        );
        direct.push(d);
        relay.push(r);
    }
    let direct_s = median(direct.iter().map(|r| r.seconds).collect());
    let relay_s = median(relay.iter().map(|r| r.seconds).collect());
    let wire_bytes = median(relay.iter().map(|r| r.wire_bytes as f64).collect()) as u64;
    println!(
        "{}",
        json!({
            "memory_mib": spec.memory_mib,
            "disk_mib": 256,
            "cap_mib_s": args.cap_mib_s,
            "runs": args.runs,
            "direct_s": direct_s,
            "relay_s": relay_s,
            "relay_over_direct": relay_s / direct_s,
            "wire_bytes": wire_bytes,
            "downtime_direct_ms": median(direct.iter().map(|r| r.downtime_ms as f64).collect()),
            "downtime_relay_ms": median(relay.iter().map(|r| r.downtime_ms as f64).collect()),
        })
    );
    Ok(())
}
