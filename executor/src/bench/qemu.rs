//! `heliotrope-executor bench qemu`: a QEMU guest migrated live, QEMU to
//! QEMU directly and through the executors' tunnels over loopback TCP,
//! under the same cap (a WAN-like 1 Gbit/s, then unshaped); cold (no
//! replica at the destination) and warm (the disk replicated there first
//! through QEMU's dirty bitmap and NBD export, as the running executors
//! do, then written on by the guest); and, under the cap, a return: the
//! guest goes to the other site, runs there for `--return-after-s`, and
//! comes back to the site that kept the memory that left it. Runs
//! alternate; medians are compared. The last line is one JSON object.
//!
//! `--guest boot`: the boot-sector test guest (128 MiB, rewriting ~99 MiB
//! all the time) with a 256 MiB disk holding 12 MiB. `--guest linux`: the
//! Linux test guest (`scripts/linux-guest`: 384 MiB, a 2 GiB ext4 disk
//! with 1 GiB of files, writing 256 KiB/s).

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use heliotrope_api_spec::{QemuSpec, SavedBytes};
use heliotrope_executor::destination::{Allowed, Destination};
use heliotrope_executor::qemu::export::{self, layout, Recorded};
use heliotrope_executor::qemu::guest::{self, boot_image, disk_with_data};
use heliotrope_executor::qemu::machine::Machine;
use heliotrope_executor::qemu::migrate::{incoming_done, migrate_out, mirror_disks, start, MigrationOptions, Steer};
use heliotrope_executor::qemu::pair::{MemoryWay, Pair, Route, CHANNELS};
use heliotrope_executor::replica::Replicating;
use heliotrope_executor::source::{SendOptions, Session};
use heliotrope_executor::tunnel::nbd::Held;
use heliotrope_executor::tunnel::{Carrying, Forwarder, NBD};
use heliotrope_executor::wire::ImageKind;
use serde_json::json;

use super::median;

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq)]
pub enum Guest {
    /// The boot-sector guest (fast; no Linux needed).
    Boot,
    /// The Linux test guest built by `scripts/linux-guest`.
    Linux,
}

#[derive(clap::Args, Debug)]
pub struct QemuBenchArgs {
    #[arg(long, value_enum, default_value = "boot")]
    pub guest: Guest,
    /// The WAN-like cap the shaped runs migrate under, Mbit/s (QEMU's max-bandwidth; the tunnels' shaper too).
    #[arg(long, default_value_t = 1000.0)]
    pub cap_mbps: f64,
    /// The same cap in MiB/s (overrides --cap-mbps).
    #[arg(long)]
    pub cap_mib_s: Option<f64>,
    /// Migrations per route and cap (alternating).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// The guest's maximum downtime, ms.
    #[arg(long, default_value_t = 2000)]
    pub max_downtime_ms: u64,
    /// How long the guest runs at the other site before it comes back, seconds.
    #[arg(long, default_value_t = 600)]
    pub return_after_s: u64,
    /// Returns to measure (under the cap only: each waits --return-after-s).
    #[arg(long, default_value_t = 1)]
    pub return_runs: usize,
}

/// How a run reaches the destination.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Way {
    Direct,
    Cold,
    Warm,
}

#[derive(Default)]
struct Run {
    seconds: f64,
    downtime_ms: u64,
    /// Every tunnel byte, both ways (0 directly).
    wire_bytes: u64,
    /// The disks' tunnel bytes, both ways.
    disk_wire_bytes: u64,
    /// The memory streams' tunnel bytes, both ways.
    memory_wire_bytes: u64,
    /// What a plain copy would have sent: the memory stream and the disks' raw bytes.
    raw_bytes: u64,
    saved: SavedBytes,
    /// What the memory tunnels kept off the wire, alone.
    memory_saved: SavedBytes,
}

/// The guest's spec, its disk made in `dir`; and when it is up, by its serial log.
fn guest_in(dir: &Path, guest: Guest) -> anyhow::Result<QemuSpec> {
    std::fs::create_dir_all(dir)?;
    let disk = dir.join("disk0.qcow2");
    match guest {
        Guest::Boot => {
            disk_with_data(&disk, 256).context("making the disk")?;
            Ok(guest::spec(&boot_image(dir).context("building the test guest")?, &disk))
        }
        Guest::Linux => Ok(guest::linux_spec(&guest::linux_dir(), &disk)?),
    }
}

/// Waits until the source guest runs (the Linux guest: ready and writing).
async fn up(source_dir: &Path, guest: Guest) -> anyhow::Result<()> {
    match guest {
        Guest::Boot => tokio::time::sleep(Duration::from_millis(500)).await,
        Guest::Linux => {
            for _ in 0..600 {
                if guest::heartbeats(source_dir).len() >= 3 {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            anyhow::bail!("the Linux guest did not come up in {}", source_dir.display());
        }
    }
    Ok(())
}

/// Replicates the source's disks to the pair's destination endpoint once,
/// as the running executors do, and lets the guest write on for a while;
/// returns what the destination holds.
async fn replicate(pair: &Pair, spec: &QemuSpec, root: &Path) -> anyhow::Result<(Held, Replicating)> {
    let tunnels = pair.tunnels.as_ref().context("a warm run goes through the executors")?;
    const SESSION: u64 = 2;
    let secret = vec![9u8; 32];
    let (first, pages) = layout(&spec.disks);
    let replica = Allowed { name: "vm-disk.img".into(), kind: ImageKind::Replica, max_pages: pages };
    tunnels.endpoint.expect_images(SESSION, secret.clone(), vec![replica]);
    let recorded = Recorded::start(pair.source.clone(), spec.disks.clone(), &root.join("replica.sock")).await?;
    let address = tunnels.peer.address.clone();
    let open = move || {
        let (address, secret) = (address.clone(), secret.clone());
        async move {
            let mut streams = Vec::new();
            for _ in 0..2 {
                streams.push(tokio::net::TcpStream::connect(&address).await?);
            }
            let options = Arc::new(SendOptions { level: 1, shapers: Vec::new(), progress: None });
            Session::open(streams, SESSION, &secret, options).await
        }
    };
    let recorded = Arc::new(tokio::sync::Mutex::new(recorded));
    let written = Arc::new(AtomicU64::new(0));
    let replicating = export::keep_synced(recorded, "vm-disk.img", open, Duration::from_secs(3600), written);
    let mut synced = replicating.synced.clone();
    tokio::time::timeout(Duration::from_secs(600), synced.wait_for(|s| s.count >= 1))
        .await
        .context("the replica never synced")??;
    let hashes = replicating.held().context("a synced replica's hashes")?;
    // The guest writes on between the last sync and the migration, as it would in operation.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let exports = spec.disks.iter().zip(first).map(|(d, first)| (d.node.clone(), (first, hashes.clone())));
    Ok((Held { exports: exports.collect() }, replicating))
}

/// One migration: mirror, then memory, until the destination holds it all.
async fn migrate(guest: Guest, way: Way, cap: Option<f64>, args: &QemuBenchArgs) -> anyhow::Result<Run> {
    let root = tempfile::tempdir()?;
    let spec = guest_in(&root.path().join("guest"), guest)?;
    let route = if way == Way::Direct { Route::Direct } else { Route::Tunnelled { cap } };
    let pair = Pair::start(root.path(), &spec, route).await?;
    up(&root.path().join("source"), guest).await?;
    let mut warm = None;
    if way == Way::Warm {
        let (held, replicating) = replicate(&pair, &spec, root.path()).await?;
        // Replication stops before the migration (the scheduler's budget would make it yield).
        replicating.stop().await;
        let tunnels = pair.tunnels.as_ref().context("tunnels")?;
        let nbd_socket = pair.nbd_socket.with_file_name("nbd-warm.sock");
        let peer = tunnels.peer.clone();
        let carrying = Carrying { held: Arc::new(held), ..Carrying::default() };
        warm = Some(Forwarder::listen(&nbd_socket, peer, NBD, tunnels.shaper.clone(), carrying)?);
    }
    let run = measure(&pair, &spec.disks, warm.as_ref(), cap, args).await?;
    drop(warm);
    let Pair { source, destination, .. } = pair;
    if let Some(source) = Arc::into_inner(source) {
        source.quit().await;
    }
    destination.quit().await;
    Ok(run)
}

/// Migrates `pair` (its disks through `warm`'s tunnel when given) and
/// measures it: time from the mirror's start until the destination holds
/// it all, downtime, and what the tunnels carried.
async fn measure(
    pair: &Pair,
    disks: &[heliotrope_api_spec::QemuDisk],
    warm: Option<&Forwarder>,
    cap: Option<f64>,
    args: &QemuBenchArgs,
) -> anyhow::Result<Run> {
    let options = MigrationOptions {
        cap_bytes_per_s: cap,
        max_downtime_ms: args.max_downtime_ms,
        step: Duration::from_secs(30),
        multifd_channels: CHANNELS,
    };
    let nbd_socket = warm.map_or(pair.nbd_socket.clone(), |_| pair.nbd_socket.with_file_name("nbd-warm.sock"));
    let started = Instant::now();
    // Directly, QEMU's own limits hold both streams to the cap; through the executors their
    // shaper does (a mirror limit there would count the pages that travel as references).
    let mirror_speed = if pair.tunnels.is_none() { cap } else { None };
    mirror_disks(&pair.source, disks, &nbd_socket, mirror_speed, Duration::from_secs(1200)).await?;
    let steer = |_: &_| Steer { cap_bytes_per_s: cap, stop: false };
    let migrated = migrate_out(&pair.source, disks, options, &pair.migration_socket, steer).await?;
    incoming_done(&pair.destination, &pair.target.disks, Duration::from_secs(60)).await?;
    let seconds = started.elapsed().as_secs_f64();
    let mut run = Run { seconds, downtime_ms: migrated.progress.downtime_ms.unwrap_or(0), ..Run::default() };
    if let Some(tunnels) = &pair.tunnels {
        let disks = warm.map_or(&tunnels.nbd.counters, |f| &f.counters);
        let memory = &tunnels.migration.counters;
        run.memory_saved = memory.saved();
        run.saved = disks.saved() + run.memory_saved;
        run.disk_wire_bytes = disks.up() + disks.down();
        run.memory_wire_bytes = memory.up() + memory.down();
        run.wire_bytes = run.disk_wire_bytes + run.memory_wire_bytes;
        run.raw_bytes = disks.raw_equivalent() + disks.down() + memory.raw_equivalent() + memory.down();
    }
    Ok(run)
}

/// A guest that went to the other site through the executors, ran there
/// for `--return-after-s`, and comes back: the site it left kept the
/// memory that left (as the running executors do), the disk crosses whole.
async fn come_back(guest: Guest, cap: Option<f64>, args: &QemuBenchArgs) -> anyhow::Result<Run> {
    let root = tempfile::tempdir()?;
    let spec = guest_in(&root.path().join("guest"), guest)?;
    let home = Destination::open(&root.path().join("home-executor"), 4 << 30)?;
    let away = Destination::open(&root.path().join("away-executor"), 4 << 30)?;
    let leaving = home.new_ram_image("guest", 1)?;
    let source = Arc::new(Machine::start(&spec, &root.path().join("source"), false).await?);
    up(&root.path().join("source"), guest).await?;
    let route = Route::Tunnelled { cap };
    let kept = MemoryWay { leaving: Some(leaving.clone()), ..MemoryWay::default() };
    let out = Pair::to(source, &spec, root.path(), "away", route, away, kept).await?;
    measure(&out, &spec.disks, None, cap, args).await.context("the way out")?;
    start(&out.destination).await?;
    home.keep_ram_image(&leaving)?;
    let Pair { source, destination, target, .. } = out;
    if let Some(source) = Arc::into_inner(source) {
        source.quit().await;
    }
    tokio::time::sleep(Duration::from_secs(args.return_after_s)).await;
    let kept = MemoryWay { arriving: Some(home.new_ram_image("guest", 2)?), ..MemoryWay::default() };
    let back = Pair::to(Arc::new(destination), &target, root.path(), "back", route, home, kept).await?;
    let run = measure(&back, &target.disks, None, cap, args).await.context("the way back")?;
    let Pair { source, destination, .. } = back;
    if let Some(source) = Arc::into_inner(source) {
        source.quit().await;
    }
    destination.quit().await;
    Ok(run)
}

/// The medians of one cap's runs, by way.
struct Medians {
    direct: Vec<Run>,
    cold: Vec<Run>,
    warm: Vec<Run>,
    /// Under the cap only.
    returned: Vec<Run>,
}

impl Medians {
    fn of(runs: &[Run], f: impl Fn(&Run) -> f64) -> f64 {
        median(runs.iter().map(f))
    }

    fn json(&self, allocated: u64, ram: u64) -> serde_json::Value {
        let seconds = |runs: &[Run]| Medians::of(runs, |r| r.seconds);
        let raw = Medians::of(&self.cold, |r| r.raw_bytes as f64);
        let warm_disk = Medians::of(&self.warm, |r| r.disk_wire_bytes as f64);
        let by_mechanism = |runs: &[Run], of: fn(&Run) -> SavedBytes| {
            json!({
                "zero": Medians::of(runs, |r| of(r).zero as f64),
                "disk_cache": Medians::of(runs, |r| of(r).disk_cache as f64),
                "returning": Medians::of(runs, |r| of(r).returning as f64),
                "dedup": Medians::of(runs, |r| of(r).dedup as f64),
                "compression": Medians::of(runs, |r| of(r).compression as f64),
            })
        };
        let saved = |runs: &[Run]| by_mechanism(runs, |r| r.saved);
        let memory_saved = |runs: &[Run]| by_mechanism(runs, |r| r.memory_saved);
        let memory_ratio = |runs: &[Run]| Medians::of(runs, |r| r.memory_wire_bytes as f64) / ram as f64;
        let mut line = json!({
            "direct_s": seconds(&self.direct),
            "relay_s": seconds(&self.cold),
            "warm_s": seconds(&self.warm),
            "relay_over_direct": seconds(&self.cold) / seconds(&self.direct),
            "warm_over_direct": seconds(&self.warm) / seconds(&self.direct),
            "wire_bytes_raw": raw,
            "wire_bytes_cold": Medians::of(&self.cold, |r| r.wire_bytes as f64),
            "wire_bytes_warm": Medians::of(&self.warm, |r| r.wire_bytes as f64),
            "wire_ratio_cold": Medians::of(&self.cold, |r| r.wire_bytes as f64) / raw,
            "wire_ratio_warm": Medians::of(&self.warm, |r| r.wire_bytes as f64) / raw,
            "memory_wire_ratio_cold": memory_ratio(&self.cold),
            "memory_wire_ratio_warm": memory_ratio(&self.warm),
            "disk_wire_bytes_warm": warm_disk,
            "disk_wire_ratio_warm": warm_disk / allocated as f64,
            "savings_cold": saved(&self.cold),
            "savings_warm": saved(&self.warm),
            "memory_savings_cold": memory_saved(&self.cold),
            "memory_savings_warm": memory_saved(&self.warm),
            "downtime_direct_ms": Medians::of(&self.direct, |r| r.downtime_ms as f64),
            "downtime_relay_ms": Medians::of(&self.cold, |r| r.downtime_ms as f64),
            "downtime_warm_ms": Medians::of(&self.warm, |r| r.downtime_ms as f64),
        });
        if !self.returned.is_empty() {
            line["memory_wire_ratio_return"] = json!(memory_ratio(&self.returned));
            line["return_s"] = json!(seconds(&self.returned));
            line["savings_return"] = saved(&self.returned);
            line["memory_savings_return"] = memory_saved(&self.returned);
        }
        line
    }
}

pub async fn qemu(args: &QemuBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.runs >= 1, "--runs must be at least 1");
    let cap = args.cap_mib_s.map_or(args.cap_mbps * 1e6 / 8.0, |mib| mib * 1048576.0);
    anyhow::ensure!(cap > 0.0 && cap.is_finite(), "the cap must be above 0");
    let probe = tempfile::tempdir()?;
    let spec = guest_in(probe.path(), args.guest)?;
    let allocated = guest::allocated_bytes(Path::new(&spec.disks[0].path))?;
    drop(probe);
    let mut by_cap = Vec::new();
    for (label, cap) in [("capped", Some(cap)), ("unshaped", None)] {
        let mut m = Medians { direct: Vec::new(), cold: Vec::new(), warm: Vec::new(), returned: Vec::new() };
        for run in 0..args.runs {
            let d = migrate(args.guest, Way::Direct, cap, args).await.context("the direct migration")?;
            let c = migrate(args.guest, Way::Cold, cap, args).await.context("the cold migration")?;
            let w = migrate(args.guest, Way::Warm, cap, args).await.context("the warm migration")?;
            eprintln!(
                "{label} run {run}: direct {:.2} s, through the executors {:.2} s ({} MiB on the wire, memory {} MiB), \
                 warm {:.2} s ({} MiB, disk {} MiB, memory {} MiB)",
                d.seconds,
                c.seconds,
                c.wire_bytes >> 20,
                c.memory_wire_bytes >> 20,
                w.seconds,
                w.wire_bytes >> 20,
                w.disk_wire_bytes >> 20,
                w.memory_wire_bytes >> 20
            );
            m.direct.push(d);
            m.cold.push(c);
            m.warm.push(w);
        }
        if label == "capped" {
            for run in 0..args.return_runs {
                let r = come_back(args.guest, cap, args).await.context("the return")?;
                eprintln!(
                    "return {run} after {} s: {:.2} s, memory {} MiB on the wire, {} MiB from what the site kept",
                    args.return_after_s,
                    r.seconds,
                    r.memory_wire_bytes >> 20,
                    r.saved.returning >> 20
                );
                m.returned.push(r);
            }
        }
        by_cap.push((label, m));
    }
    let ram = spec.memory_mib << 20;
    let (_, capped) = &by_cap[0];
    let (_, unshaped) = &by_cap[1];
    let mut line = capped.json(allocated, ram);
    line["guest"] = json!(format!("{:?}", args.guest).to_lowercase());
    line["memory_mib"] = json!(spec.memory_mib);
    line["disk_bytes"] = json!(spec.disks[0].size_bytes);
    line["disk_allocated_bytes"] = json!(allocated);
    line["cap_mbps"] = json!(cap * 8.0 / 1e6);
    line["runs"] = json!(args.runs);
    line["return_after_s"] = json!(args.return_after_s);
    line["wire_bytes"] = line["wire_bytes_cold"].clone();
    line["unshaped"] = unshaped.json(allocated, ram);
    println!("{line}");
    Ok(())
}
