//! `heliotrope-executor bench transfer`: a sim VM (1 GiB of memory, 4 GiB
//! of disk by default) moved over loopback TCP between two transfer stacks
//! in this process, to a cold destination and to a warm one (a replica of
//! the disk cached there, 2% of its blocks written since), against a plain
//! copy of the same bytes over the same kind of connection; then a sample
//! shaped to a 200 Mbit/s cap; and the memory moved live (pre-copy) while
//! the guest writes it, with its downtime. The last line is one JSON object.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use heliotrope_executor::content::PAGE;
use heliotrope_executor::index::ChunkIndex;
use heliotrope_executor::precopy::{migrate_guest, PrecopyOptions, PrecopyReport};
use heliotrope_executor::shaping::Shaper;
use heliotrope_executor::sim::{generate, ContentMix, SimGuest};
use heliotrope_executor::transfer::{choose_level, receive, send, Counters, Received, SendOptions};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

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
    /// How fast the guest writes its memory during the live migration, Mbit/s.
    #[arg(long, default_value_t = 200.0)]
    pub dirty_mbps: f64,
    /// The guest's maximum downtime, ms.
    #[arg(long, default_value_t = 300.0)]
    pub max_downtime_ms: f64,
}

const SECRET: &[u8] = b"bench-secret";

/// A destination in `dir` (holding `cached` files) taking one session, and
/// a source's connection to it.
async fn session(
    dir: &Path,
    cached: &[(&str, &[u8])],
) -> anyhow::Result<(TcpStream, JoinHandle<anyhow::Result<Received>>)> {
    let out = dir.join("vm");
    std::fs::create_dir_all(&out)?;
    let mut index = ChunkIndex::open(&dir.join("index"), 16 << 30)?;
    for (name, data) in cached {
        let path = dir.join(name);
        std::fs::write(&path, data)?;
        index.register_file(&path)?;
    }
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let destination = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        receive(&mut stream, |_| Some(SECRET.to_vec()), &mut index, &out).await.map_err(anyhow::Error::from)
    });
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok((stream, destination))
}

/// What the source's side of a session gave, once the destination is done;
/// the destination's own error says more than the source's broken connection.
async fn concluded<T, E: Into<anyhow::Error>>(
    sent: Result<T, E>,
    destination: JoinHandle<anyhow::Result<Received>>,
) -> anyhow::Result<T> {
    match (sent, destination.await.context("the destination task")?) {
        (Ok(value), Ok(_)) => Ok(value),
        (_, Err(e)) => Err(e.context("the destination failed")),
        (Err(e), Ok(_)) => Err(e.into()),
    }
}

/// Moves `images` to a fresh destination (holding `cached` files, if any); returns the counters and seconds.
async fn migrate(
    images: &[(&str, &[u8])],
    cached: &[(&str, &[u8])],
    options: &SendOptions<'_>,
) -> anyhow::Result<(Counters, f64)> {
    let dir = tempfile::tempdir()?;
    let (mut stream, destination) = session(dir.path(), cached).await?;
    let started = Instant::now();
    let sent = send(&mut stream, 1, SECRET, images, options).await;
    drop(stream);
    let counters = concluded(sent, destination).await?;
    Ok((counters, started.elapsed().as_secs_f64()))
}

/// Migrates `guest`'s memory live to a fresh destination.
async fn live_migration(
    guest: &SimGuest,
    options: &SendOptions<'_>,
    precopy: &PrecopyOptions,
) -> anyhow::Result<PrecopyReport> {
    // Guest memory lives in RAM at the destination too: on a disk, writeback of the image
    // just written stalls the last round's writes for hundreds of milliseconds.
    let dir = tempfile::Builder::new().tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir())?;
    let (mut stream, destination) = session(dir.path(), &[]).await?;
    let report = migrate_guest(&mut stream, 2, SECRET, guest, "memory.img", options, precopy).await;
    drop(stream);
    concluded(report, destination).await
}

/// The baseline: the same bytes copied plainly over loopback TCP; returns seconds.
async fn plain_copy(images: &[(&str, &[u8])]) -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let total: usize = images.iter().map(|(_, d)| d.len()).sum();
    let sink = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await?;
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0;
        while got < total {
            let n = stream.read(&mut buf).await?;
            anyhow::ensure!(n > 0, "the copy ended early");
            got += n;
        }
        Ok::<_, anyhow::Error>(())
    });
    let mut stream = TcpStream::connect(addr).await?;
    let started = Instant::now();
    for (_, data) in images {
        stream.write_all(data).await?;
    }
    sink.await??;
    Ok(started.elapsed().as_secs_f64())
}

fn savings(c: &Counters) -> serde_json::Value {
    let page = PAGE as f64;
    let saved_zero = c.zero_pages as f64 * page;
    let saved_held = c.held_pages as f64 * page;
    let saved_compression = (c.sent_pages as f64 * page - c.compressed_bytes as f64).max(0.0);
    let total = (saved_zero + saved_held + saved_compression).max(1.0);
    json!({"zero": saved_zero / total, "index_and_cache": saved_held / total, "compression": saved_compression / total})
}

pub async fn transfer(args: &TransferBenchArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let vm = generate(args.memory_mib << 20, args.disk_mib << 20, &ContentMix::default(), args.seed, args.seed + 1);
    eprintln!(
        "generated a sim VM ({} MiB memory, {} MiB disk) in {:.1} s",
        args.memory_mib,
        args.disk_mib,
        started.elapsed().as_secs_f64()
    );
    let images = [("memory.img", vm.memory.as_slice()), ("disk.img", vm.disk.as_slice())];
    let raw = (vm.memory.len() + vm.disk.len()) as f64;

    let plain_s = plain_copy(&images).await?;
    let unshaped = SendOptions { level: choose_level(&vm.memory, None), shapers: Vec::new() };
    let (cold, cold_s) = migrate(&images, &[], &unshaped).await?;
    // The replica cached at the warm site, 2% of its blocks written since it was synced.
    let mut replica = vm.disk.clone();
    for block in replica.chunks_exact_mut(64 * 1024).step_by(50) {
        block[0] ^= 0xff;
    }
    let (warm, warm_s) = migrate(&images, &[("replica-disk.img", &replica)], &unshaped).await?;

    // Shaped: unique pages (nothing held, nothing compressible), 256 MiB at most.
    let cap = args.cap_mbps * 1e6 / 8.0;
    let sample = generate(
        (256 << 20).min(args.memory_mib << 20),
        0,
        &ContentMix { zero: 0.0, duplicate: 0.0, shared: 0.0, page_cache: 0.0, base_share: 0.0 },
        args.seed + 7,
        args.seed + 8,
    );
    let job = Shaper::new(Some(cap));
    let shaped_options = SendOptions { level: choose_level(&sample.memory, Some(cap)), shapers: vec![&job] };
    let (shaped, shaped_s) = migrate(&[("sample.img", &sample.memory)], &[], &shaped_options).await?;
    let throughput_vs_cap = shaped.wire_bytes as f64 / shaped_s / cap;

    // Pre-copy of the memory while the guest runs, writing `dirty_mbps`; it pauses for the last round.
    let guest = SimGuest::start(vm.memory.clone(), args.dirty_mbps * 1e6 / 8.0, args.seed + 9);
    let precopy = PrecopyOptions { max_downtime_s: args.max_downtime_ms / 1000.0, budget_s: 300.0 };
    let live = live_migration(&guest, &unshaped, &precopy).await?;

    let gb = |bytes: f64, s: f64| bytes / s / 1e9;
    eprintln!("plain copy (baseline): {:.2} GB/s over loopback", gb(raw, plain_s));
    eprintln!(
        "cold destination: {:.1}% of the raw bytes on the wire, {:.2} GB/s of image moved ({:.2} x the plain copy's rate); savings {}",
        100.0 * cold.wire_bytes as f64 / raw, gb(raw, cold_s), plain_s / cold_s, savings(&cold)
    );
    eprintln!(
        "warm destination: {:.1}% on the wire, {:.2} GB/s; savings {}",
        100.0 * warm.wire_bytes as f64 / raw,
        gb(raw, warm_s),
        savings(&warm)
    );
    eprintln!(
        "shaped to {} Mbit/s: {:.1}% of the cap (level {})",
        args.cap_mbps,
        100.0 * throughput_vs_cap,
        shaped_options.level
    );
    eprintln!(
        "live memory migration, guest writing {} Mbit/s: {} rounds after the first, downtime {:.0} ms (limit {} ms), throttle {:.2}",
        args.dirty_mbps, live.rounds, live.downtime_s * 1000.0, args.max_downtime_ms, live.throttle
    );
    println!(
        "{}",
        json!({
            "bench": "transfer",
            "memory_mib": args.memory_mib,
            "disk_mib": args.disk_mib,
            "wire_ratio_cold": cold.wire_bytes as f64 / raw,
            "wire_ratio_warm": warm.wire_bytes as f64 / raw,
            "savings_cold": savings(&cold),
            "savings_warm": savings(&warm),
            "throughput_vs_cap": throughput_vs_cap,
            "unshaped_gbytes_per_s": gb(raw, cold_s),
            "warm_gbytes_per_s": gb(raw, warm_s),
            "baseline_plain_copy_gbytes_per_s": gb(raw, plain_s),
            "downtime_ms": live.downtime_s * 1000.0,
            "live_rounds": live.rounds,
        })
    );
    Ok(())
}
