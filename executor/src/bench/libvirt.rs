//! `heliotrope-executor bench libvirt`: a libvirt domain (the Linux test
//! guest, writing to its disk) migrated live between two libvirt daemons
//! (`scripts/libvirt-pair`: two hosts on one machine), the same migration
//! (`heliotrope_executor::libvirt::migrate_out`, as the running executors
//! call it) two ways: directly (libvirt's streams from QEMU to QEMU over
//! loopback TCP, its control connection straight to the other daemon) and
//! through the executors (every stream, control included, through a
//! source's forwarders and a destination endpoint's tunnels over loopback
//! TCP), under the same cap (a WAN-like 1 Gbit/s), then unshaped. The
//! domain goes back and forth; the ways alternate in ABBA order so that
//! each crosses in both directions. Medians are compared. The last line is
//! one JSON object.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use heliotrope_api_spec::CopyStorage;
use heliotrope_executor::destination::Destination;
use heliotrope_executor::libvirt::pair::{define_and_start, domain_dir, domain_xml, libvirt_spec, Host, Pair};
use heliotrope_executor::libvirt::{self, Outgoing};
use heliotrope_executor::qemu::guest::{built_linux_dir, linux_machine};
use heliotrope_executor::qemu::machine::create_disk;
use heliotrope_executor::qemu::migrate::MigrationOptions;
use heliotrope_executor::shaping::Shaper;
use heliotrope_executor::tunnel::{Carrying, Forwarder, Peer, LIBVIRT, MIGRATION, NBD};
use serde_json::json;
use tokio::net::TcpListener;

use super::median;

#[derive(clap::Args, Debug)]
pub struct LibvirtBenchArgs {
    /// Migrations per way (they alternate).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// How the disk moves: `all` (the whole disk, NON_SHARED_DISK) or `incremental` (its overlay only).
    #[arg(long, value_enum, default_value = "all")]
    pub copy_storage: CopyStorageArg,
    /// The WAN-like cap the shaped runs migrate under, Mbit/s (libvirt's bandwidth both ways; the tunnels' shaper too).
    #[arg(long, default_value_t = 1000.0)]
    pub cap_mbps: f64,
    /// The same cap in MiB/s (overrides --cap-mbps).
    #[arg(long)]
    pub cap_mib_s: Option<f64>,
    /// The guest's maximum downtime, ms.
    #[arg(long, default_value_t = 2000)]
    pub max_downtime_ms: u64,
    /// Where the two daemons keep their trees (replaced).
    #[arg(long, default_value = "/var/tmp/heliotrope-bench-libvirt")]
    pub dir: PathBuf,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq)]
pub enum CopyStorageArg {
    All,
    Incremental,
}

const DOMAIN: &str = "bench";

/// How a run reaches the destination.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Way {
    Direct,
    Relay,
}

/// One migration: its time, and what the tunnels carried (0 directly).
struct Run {
    seconds: f64,
    downtime_ms: u64,
    tunnel_bytes: u64,
}

pub async fn libvirt(args: &LibvirtBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.runs > 0, "--runs must be at least 1");
    let guest = built_linux_dir().map_err(anyhow::Error::msg)?;
    let pair = Pair::start(&args.dir).context("starting two libvirt daemons")?;
    let version = libvirt::version(&pair.a.uri).await?;
    let copy_storage = match args.copy_storage {
        CopyStorageArg::All => CopyStorage::All,
        CopyStorageArg::Incremental => CopyStorage::Incremental,
    };

    // The guest at a: its disk an overlay over the base image both hosts hold.
    let base = guest.join("data.qcow2");
    let disk = domain_dir(DOMAIN).join("disk0.qcow2");
    let machine = linux_machine(&guest, &disk);
    let mut spec = libvirt_spec(DOMAIN, &machine, copy_storage);
    spec.disks[0].backing = Some(base.display().to_string());
    let size = spec.disks[0].size_bytes;
    make_disk(&pair.a, &disk, &base, size).await?;
    define_and_start(&pair.a.uri, &domain_xml(DOMAIN, &machine))?;
    let serial = pair.a.outside(&domain_dir(DOMAIN)).join("serial.log");
    wait_for_heartbeats(&serial).await?;

    let cap = args.cap_mib_s.map_or(args.cap_mbps * 1e6 / 8.0, |mib| mib * f64::from(1 << 20));
    let options = |cap| MigrationOptions {
        cap_bytes_per_s: cap,
        max_downtime_ms: args.max_downtime_ms,
        step: std::time::Duration::from_secs(30),
        multifd_channels: 2,
    };
    let mut hosts = (&pair.a, &pair.b);
    let mut job = 0;
    let mut by_cap = Vec::new();
    for (label, cap) in [("capped", Some(cap)), ("unshaped", None)] {
        let mut runs: Vec<(Way, Run)> = Vec::new();
        // ABBA: direct, relay, relay, direct, ...
        let ways = (0..args.runs * 2).map(|i| if matches!(i % 4, 0 | 3) { Way::Direct } else { Way::Relay });
        for way in ways {
            job += 1;
            let (here, there) = hosts;
            make_disk(there, &disk, &base, size).await?;
            let run = migrate(here, there, &spec, options(cap), way, job).await?;
            eprintln!(
                "{label} {way:?} {} -> {}: {:.2} s, downtime {} ms, {} MiB through the tunnels",
                here.name,
                there.name,
                run.seconds,
                run.downtime_ms,
                run.tunnel_bytes >> 20
            );
            libvirt::resume(&there.uri, DOMAIN).await?;
            runs.push((way, run));
            hosts = (there, here);
        }
        by_cap.push(medians(&runs));
    }
    let mut line = by_cap.remove(0);
    line["bench"] = json!("libvirt");
    line["libvirt_version"] = json!(version);
    line["guest"] = json!("linux");
    line["memory_mib"] = json!(machine.memory_mib);
    line["disk_bytes"] = json!(size);
    line["copy_storage"] = json!(format!("{copy_storage:?}").to_lowercase());
    line["cap_mbps"] = json!(cap * 8.0 / 1e6);
    line["runs"] = json!(args.runs);
    line["unshaped"] = by_cap.remove(0);
    println!("{line}");
    Ok(())
}

/// The medians of one cap's runs, by way, as JSON.
fn medians(runs: &[(Way, Run)]) -> serde_json::Value {
    let of = |way: Way| runs.iter().filter(move |(w, _)| *w == way).map(|(_, r)| r);
    let direct_s = median(of(Way::Direct).map(|r| r.seconds));
    let relay_s = median(of(Way::Relay).map(|r| r.seconds));
    json!({
        "direct_s": direct_s,
        "relay_s": relay_s,
        "relay_over_direct": relay_s / direct_s,
        "direct_downtime_ms": median(of(Way::Direct).map(|r| r.downtime_ms as f64)),
        "relay_downtime_ms": median(of(Way::Relay).map(|r| r.downtime_ms as f64)),
        "relay_tunnel_bytes": median(of(Way::Relay).map(|r| r.tunnel_bytes as f64)),
    })
}

/// The domain's disk made empty at `host` (an overlay over `base`), as the destination executor makes it.
async fn make_disk(host: &Host, disk: &Path, base: &Path, size: u64) -> anyhow::Result<()> {
    let outside = host.outside(disk);
    if let Some(dir) = outside.parent() {
        std::fs::create_dir_all(dir)?;
    }
    Ok(create_disk(&outside, "qcow2", size, Some(base)).await?)
}

async fn wait_for_heartbeats(serial: &Path) -> anyhow::Result<()> {
    for _ in 0..360 {
        if std::fs::read_to_string(serial).unwrap_or_default().contains("heartbeat 3 ") {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    anyhow::bail!("the guest never wrote its third heartbeat to {}", serial.display())
}

/// Migrates the domain from `here` to `there` by `way`, as job `job`.
async fn migrate(
    here: &Host,
    there: &Host,
    spec: &heliotrope_api_spec::LibvirtSpec,
    options: MigrationOptions,
    way: Way,
    job: u64,
) -> anyhow::Result<Run> {
    let disks = spec.disks.iter().map(|d| d.target.clone()).collect();
    let port = |listener: std::net::TcpListener| listener.local_addr().map(|a| a.port());
    let (out, tunnels) = match way {
        Way::Direct => {
            // Ports free now; QEMU binds them at the destination.
            let (memory, disks_port) = (
                port(std::net::TcpListener::bind("127.0.0.1:0")?)?,
                port(std::net::TcpListener::bind("127.0.0.1:0")?)?,
            );
            let out = Outgoing {
                source_uri: here.uri.clone(),
                destination_uri: there.uri.clone(),
                domain: spec.domain.clone(),
                disks,
                copy_storage: spec.copy_storage,
                memory_uri: format!("tcp://127.0.0.1:{memory}"),
                disks_uri: format!("tcp://127.0.0.1:{disks_port}"),
            };
            (out, None)
        }
        Way::Relay => {
            let tunnels = Tunnels::open(here, there, job, options.cap_bytes_per_s).await?;
            let out = Outgoing {
                source_uri: here.uri.clone(),
                destination_uri: libvirt::through(&tunnels.control_socket),
                domain: spec.domain.clone(),
                disks,
                copy_storage: spec.copy_storage,
                memory_uri: format!("unix://{}", tunnels.inside.join("memory.sock").display()),
                disks_uri: format!("unix://{}", tunnels.inside.join("nbd.sock").display()),
            };
            (out, Some(tunnels))
        }
    };
    let cap = options.cap_bytes_per_s;
    let started = Instant::now();
    let steer = |_: &_| heliotrope_executor::qemu::migrate::Steer { cap_bytes_per_s: cap, stop: false };
    let moved = libvirt::migrate_out(&out, options, steer).await?;
    let seconds = started.elapsed().as_secs_f64();
    let tunnel_bytes = tunnels.as_ref().map_or(0, Tunnels::bytes);
    Ok(Run { seconds, downtime_ms: moved.migrated.progress.downtime_ms.unwrap_or(0), tunnel_bytes })
}

/// One relay run's executors: a destination endpoint beside `there`'s
/// daemon and a source's forwarders beside `here`'s, as the running
/// executors set them up for a job.
struct Tunnels {
    memory: Forwarder,
    nbd: Forwarder,
    control: Forwarder,
    /// The job's socket directory as both hosts' QEMUs see it.
    inside: PathBuf,
    control_socket: PathBuf,
    accepting: tokio::task::JoinHandle<()>,
    _endpoint_dir: tempfile::TempDir,
}

impl Drop for Tunnels {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl Tunnels {
    async fn open(here: &Host, there: &Host, job: u64, cap: Option<f64>) -> anyhow::Result<Tunnels> {
        let inside = Path::new("/var/lib/libvirt/heliotrope").join(format!("job-{job}"));
        let (source_dir, destination_dir) = (here.outside(&inside), there.outside(&inside));
        for dir in [&source_dir, &destination_dir] {
            let _ = std::fs::remove_dir_all(dir);
            std::fs::create_dir_all(dir)?;
        }
        let endpoint_dir = tempfile::tempdir()?;
        let endpoint = Destination::open(endpoint_dir.path(), 4 << 30)?;
        let secret: Arc<[u8]> = Arc::from(&[7u8; 32][..]);
        endpoint.expect(job, secret.to_vec());
        endpoint.expect_tunnel(job, NBD, &destination_dir.join("nbd.sock"));
        endpoint.expect_tunnel(job, LIBVIRT, &libvirt::daemon_socket(&there.uri)?);
        endpoint.expect_memory(job, &destination_dir.join("memory.sock"), None);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let peer = Peer { address: listener.local_addr()?.to_string(), tls: None, job, secret };
        let accepting = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let endpoint = endpoint.clone();
                tokio::spawn(async move { endpoint.serve_tcp(tcp, None).await });
            }
        });
        let shaper = Arc::new(Shaper::new(cap));
        let forward = |socket: &Path, end: &str, shaper: Arc<Shaper>| {
            Forwarder::listen(socket, peer.clone(), end, shaper, Carrying::default())
        };
        let control_socket = endpoint_dir.path().join("libvirt.sock");
        Ok(Tunnels {
            memory: forward(&source_dir.join("memory.sock"), MIGRATION, shaper.clone())?,
            nbd: forward(&source_dir.join("nbd.sock"), NBD, shaper)?,
            control: forward(&control_socket, LIBVIRT, Arc::new(Shaper::new(None)))?,
            inside,
            control_socket,
            accepting,
            _endpoint_dir: endpoint_dir,
        })
    }

    /// Every byte the tunnels carried, both ways.
    fn bytes(&self) -> u64 {
        [&self.memory, &self.nbd, &self.control].iter().map(|f| f.counters.up() + f.counters.down()).sum()
    }
}
