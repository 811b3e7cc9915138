//! `heliotrope-executor bench transfer`: a sim VM (1 GiB of memory, 4 GiB
//! of disk by default, as files) moved over loopback TCP between transfer
//! stacks in this process, each image over parallel streams: to a cold
//! destination, and to a warm one (its disk replicated there ahead of time
//! by proactive caching, 2% of its blocks written since), against a plain
//! copy of the same files over one connection; then a sample shaped to a
//! 200 Mbit/s cap; and the VM migrated live (pre-copy of memory and disk)
//! while its guest writes, with its downtime. The last line is one JSON
//! object.

mod libvirt;
mod qemu;

pub use libvirt::{libvirt, LibvirtBenchArgs};
pub use qemu::{qemu, QemuBenchArgs};

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use heliotrope_api_spec::SavedBytes;
use heliotrope_executor::content::{ImageFile, PageSource, PAGE};
use heliotrope_executor::destination::{Allowed, Destination};
use heliotrope_executor::precopy::{migrate_vm, PrecopyOptions, PrecopyReport};
use heliotrope_executor::replica::Replica;
use heliotrope_executor::shaping::Shaper;
use heliotrope_executor::sim::{generate, ContentMix, SimImages, SimVm, Workload, BLOCK_PAGES};
use heliotrope_executor::source::{SendOptions, Session};
use heliotrope_executor::tls::{self, Connection};
use heliotrope_executor::transfer::{choose_level, Counters};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(clap::Args, Debug)]
pub struct TransferBenchArgs {
    #[arg(long, default_value_t = 1024)]
    pub memory_mib: usize,
    #[arg(long, default_value_t = 4096)]
    pub disk_mib: usize,
    /// The cap of the shaped run, Mbit/s.
    #[arg(long, default_value_t = 200.0)]
    pub cap_mbps: f64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Parallel streams per image.
    #[arg(long, default_value_t = 4)]
    pub streams: u16,
    /// How fast the guest writes its memory during the live migration, Mbit/s.
    #[arg(long, default_value_t = 200.0)]
    pub dirty_mbps: f64,
    /// How fast the guest writes its disk during the live migration, Mbit/s.
    #[arg(long, default_value_t = 8.0)]
    pub disk_write_mbps: f64,
    /// The guest's maximum downtime, ms.
    #[arg(long, default_value_t = 300.0)]
    pub max_downtime_ms: f64,
}

const SECRET: &[u8] = b"bench-secret";

/// The median of runs' figures (the upper one of an even count).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// A destination executor in a directory of its own, serving every connection it is offered.
struct Site {
    _dir: tempfile::TempDir,
    destination: Arc<Destination>,
    addr: String,
    accepting: tokio::task::JoinHandle<()>,
    /// Each connection's outcome, and how many were opened.
    served: tokio::sync::mpsc::UnboundedReceiver<anyhow::Result<()>>,
    opened: usize,
}

impl Site {
    async fn start(parent: &Path) -> anyhow::Result<Site> {
        let dir = tempfile::tempdir_in(parent)?;
        let destination = Destination::open(dir.path(), 64 << 30)?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let serving = destination.clone();
        let (done, served) = tokio::sync::mpsc::unbounded_channel();
        let accepting = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (destination, done) = (serving.clone(), done.clone());
                tokio::spawn(async move {
                    let served = destination.serve_tcp(tcp, None).await.map(drop).map_err(anyhow::Error::from);
                    let _ = done.send(served);
                });
            }
        });
        Ok(Site { _dir: dir, destination, addr, accepting, served, opened: 0 })
    }

    /// Waits for every connection to end; the destination's own errors say more than a source's broken connection.
    async fn close(mut self) -> anyhow::Result<()> {
        for _ in 0..self.opened {
            match self.served.recv().await {
                Some(outcome) => outcome.context("the destination failed a connection")?,
                None => break,
            }
        }
        Ok(())
    }

    /// A session of a new job to this site.
    async fn session(
        &mut self,
        job: u64,
        streams: u16,
        options: &Arc<SendOptions>,
    ) -> anyhow::Result<Session<Box<dyn Connection>>> {
        self.destination.expect(job, SECRET.to_vec());
        let mut opened = Vec::new();
        for _ in 0..streams {
            opened.push(tls::connect(&self.addr, None).await?);
        }
        self.opened += opened.len();
        Ok(Session::open(opened, job, SECRET, options.clone()).await?)
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// The VM's images, disk first: once it is sealed, the memory's page-cache pages are found in it.
fn images(vm: &SimImages) -> anyhow::Result<Vec<(&'static str, Arc<dyn PageSource>)>> {
    let (disk, memory) = (ImageFile::open(&vm.disk)?, ImageFile::open(&vm.memory)?);
    Ok(vec![("disk.img", Arc::new(disk)), ("memory.img", Arc::new(memory))])
}

/// Moves the VM's images at rest to `site` as `job`; returns the counters and seconds.
async fn migrate(
    site: &mut Site,
    job: u64,
    vm: &SimImages,
    streams: u16,
    options: &Arc<SendOptions>,
) -> anyhow::Result<(Counters, f64)> {
    let started = Instant::now();
    let mut session = site.session(job, streams, options).await?;
    for (name, image) in images(vm)? {
        session.transfer(name, heliotrope_executor::wire::ImageKind::Migration, image).await?;
    }
    Ok((session.progress().counters, started.elapsed().as_secs_f64()))
}

/// The baseline: the same files copied plainly over one loopback TCP connection; returns seconds.
async fn plain_copy(vm: &SimImages) -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let total = std::fs::metadata(&vm.memory)?.len() + std::fs::metadata(&vm.disk)?.len();
    let sink = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await?;
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0;
        while got < total {
            let n = stream.read(&mut buf).await?;
            anyhow::ensure!(n > 0, "the copy ended early");
            got += n as u64;
        }
        Ok::<_, anyhow::Error>(())
    });
    let mut stream = TcpStream::connect(addr).await?;
    let started = Instant::now();
    let mut buf = vec![0u8; 1 << 20];
    for path in [&vm.disk, &vm.memory] {
        let mut file = tokio::fs::File::open(path).await?;
        loop {
            let n = file.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            stream.write_all(&buf[..n]).await?;
        }
    }
    sink.await??;
    Ok(started.elapsed().as_secs_f64())
}

/// Each mechanism's share of the bytes saved.
fn shares(s: &SavedBytes) -> serde_json::Value {
    let total = (s.zero + s.dedup + s.disk_cache + s.in_place + s.compression).max(1) as f64;
    json!({
        "zero": s.zero as f64 / total,
        "dedup": s.dedup as f64 / total,
        "disk_cache": s.disk_cache as f64 / total,
        "compression": s.compression as f64 / total,
    })
}

/// CPU seconds this process has used.
fn cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// The most this process held in memory, MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<f64>().ok()? / 1024.0)
}

pub async fn transfer(args: &TransferBenchArgs) -> anyhow::Result<()> {
    let work = tempfile::Builder::new().prefix("heliotrope-bench-").tempdir_in(std::env::temp_dir())?;
    let started = Instant::now();
    let vm = generate(
        &work.path().join("source"),
        args.memory_mib << 20,
        args.disk_mib << 20,
        &ContentMix::default(),
        args.seed,
        args.seed + 1,
    )?;
    eprintln!(
        "generated a sim VM ({} MiB memory, {} MiB disk) in {:.1} s",
        args.memory_mib,
        args.disk_mib,
        started.elapsed().as_secs_f64()
    );
    let raw = (std::fs::metadata(&vm.memory)?.len() + std::fs::metadata(&vm.disk)?.len()) as f64;
    let plain_s = plain_copy(&vm).await?;
    let unshaped = Arc::new(SendOptions { level: choose_level(&[], None), ..SendOptions::default() });

    let mut cold_site = Site::start(work.path()).await?;
    let cpu = cpu_s();
    let (cold, cold_s) = migrate(&mut cold_site, 1, &vm, args.streams, &unshaped).await?;
    let cold_cores = (cpu_s() - cpu) / cold_s;
    cold_site.close().await?;

    // The warm site: the disk replicated there ahead of time, then 2% of its blocks written.
    let mut warm_site = Site::start(work.path()).await?;
    let disk: Arc<dyn PageSource> = Arc::new(ImageFile::open(&vm.disk)?);
    let synced = Instant::now();
    let mut replica = Replica::new("vm-42-disk.img");
    let allowed = Allowed {
        name: "vm-42-disk.img".into(),
        kind: heliotrope_executor::wire::ImageKind::Replica,
        max_pages: disk.page_count(),
    };
    warm_site.destination.expect_images(2, SECRET.to_vec(), vec![allowed]);
    replica.sync(&mut warm_site.session(2, args.streams, &unshaped).await?, disk.clone(), &[]).await?;
    let replica_s = synced.elapsed().as_secs_f64();
    let file = std::fs::OpenOptions::new().write(true).open(&vm.disk)?;
    let block = BLOCK_PAGES as usize * PAGE;
    let mut written = vec![0u8; block];
    for (i, at) in (0..disk.page_count() / BLOCK_PAGES).step_by(50).enumerate() {
        written.fill(i as u8 ^ 0x5a);
        written[..8].copy_from_slice(&at.to_le_bytes());
        file.write_all_at(&written, at * block as u64)?;
    }
    let (warm, warm_s) = migrate(&mut warm_site, 3, &vm, args.streams, &unshaped).await?;
    warm_site.close().await?;

    // Shaped: unique pages (nothing held, nothing compressible), 256 MiB at most.
    let cap = args.cap_mbps * 1e6 / 8.0;
    let sample = generate(
        &work.path().join("sample"),
        (256 << 20).min(args.memory_mib << 20),
        0,
        &ContentMix::UNIQUE,
        args.seed + 7,
        args.seed + 8,
    )?;
    let first = std::fs::read(&sample.memory)?;
    let shaped_options = Arc::new(SendOptions {
        level: choose_level(&first[..first.len().min(1 << 20)], Some(cap)),
        shapers: vec![Arc::new(Shaper::new(Some(cap)))],
        progress: None,
    });
    drop(first);
    let mut shaped_site = Site::start(work.path()).await?;
    let shaped_started = Instant::now();
    let mut session = shaped_site.session(4, args.streams, &shaped_options).await?;
    session
        .transfer(
            "sample.img",
            heliotrope_executor::wire::ImageKind::Migration,
            Arc::new(ImageFile::open(&sample.memory)?),
        )
        .await?;
    let shaped = session.progress().counters;
    let throughput_vs_cap = shaped.wire_bytes as f64 / shaped_started.elapsed().as_secs_f64() / cap;
    drop(session);
    shaped_site.close().await?;

    // Live: the VM runs, writing memory and disk, and pauses for the last round. Its destination
    // keeps its images in RAM: on a disk, writeback of what was just written stalls the last round.
    let mut live_site = match Site::start(Path::new("/dev/shm")).await {
        Ok(site) => site,
        Err(_) => Site::start(work.path()).await?,
    };
    let vm = Arc::new(SimVm::start(
        vm,
        Workload {
            memory_bytes_per_s: args.dirty_mbps * 1e6 / 8.0,
            disk_bytes_per_s: args.disk_write_mbps * 1e6 / 8.0,
            seed: args.seed + 9,
        },
    )?);
    let precopy = PrecopyOptions { max_downtime_s: args.max_downtime_ms / 1000.0, budget_s: 300.0 };
    let mut memory = live_site.session(5, args.streams, &unshaped).await?;
    let mut disk = live_site.session(6, args.streams, &unshaped).await?;
    let live: PrecopyReport =
        migrate_vm(&mut memory, Some(&mut disk), &vm, &precopy).await.context("the live migration")?;
    drop((memory, disk));
    live_site.close().await?;

    let gb = |bytes: f64, s: f64| bytes / s / 1e9;
    eprintln!("plain copy (baseline): {:.2} GB/s over one loopback connection", gb(raw, plain_s));
    eprintln!(
        "cold destination: {:.1}% of the raw bytes on the wire, {:.2} GB/s of image moved ({:.2} x the plain copy's rate); saved {}",
        100.0 * cold.wire_bytes as f64 / raw, gb(raw, cold_s), plain_s / cold_s, shares(&cold.savings())
    );
    eprintln!("replica synced to the warm site in {replica_s:.1} s");
    eprintln!(
        "warm destination: {:.1}% on the wire, {:.2} GB/s; saved {}",
        100.0 * warm.wire_bytes as f64 / raw,
        gb(raw, warm_s),
        shares(&warm.savings())
    );
    eprintln!(
        "shaped to {} Mbit/s: {:.1}% of the cap (level {})",
        args.cap_mbps,
        100.0 * throughput_vs_cap,
        shaped_options.level
    );
    eprintln!(
        "live migration, guest writing {} Mbit/s of memory and {} Mbit/s of disk: {} rounds after the first, downtime {:.0} ms (limit {} ms), throttle {:.2}",
        args.dirty_mbps, args.disk_write_mbps, live.rounds, live.downtime_s * 1000.0, args.max_downtime_ms, live.throttle
    );
    println!(
        "{}",
        json!({
            "bench": "transfer",
            "memory_mib": args.memory_mib,
            "disk_mib": args.disk_mib,
            "streams": args.streams,
            "wire_ratio_cold": cold.wire_bytes as f64 / raw,
            "wire_ratio_warm": warm.wire_bytes as f64 / raw,
            "savings_cold": shares(&cold.savings()),
            "savings_warm": shares(&warm.savings()),
            "throughput_vs_cap": throughput_vs_cap,
            "unshaped_gbytes_per_s": gb(raw, cold_s),
            "unshaped_cores_busy": cold_cores,
            "warm_gbytes_per_s": gb(raw, warm_s),
            "baseline_plain_copy_gbytes_per_s": gb(raw, plain_s),
            "replica_sync_s": replica_s,
            "downtime_ms": live.downtime_s * 1000.0,
            "live_rounds": live.rounds,
            "peak_rss_mib": peak_rss_mib(),
        })
    );
    Ok(())
}
