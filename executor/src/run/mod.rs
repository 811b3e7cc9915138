//! `heliotrope-executor run`: the executor as a site's worker. It
//! registers with the scheduler, heartbeats, takes transfers for the jobs
//! it is the destination of, and claims migrations by long poll: as the
//! source it migrates the VM live and reports progress under its lease; as
//! the destination it starts the VM once its images are sealed and
//! confirms the cutover. `sim` VMs (real bytes, simulated guests) are made
//! from the inventory's sizes, scaled (`--sim-mib-per-gib`).
//!
//! This file holds the worker and its life (registration, heartbeats,
//! claims, each claim handed to its role); each concern of the work has a
//! file of its own: [`source`] (a migration's source side, and a source's
//! recovery after a crash), [`receive`] (its destination side), [`sim`],
//! [`qemu`] and [`libvirt`] (what each driver's two ends share), [`network`] (the
//! VM's addresses at a cutover), [`replication`] (standby replicas),
//! [`disaster`] (fencing, restarts of a lost site's VMs, quarantine) and
//! [`listener`] (the transfer listener).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use heliotrope_api_spec::{Assignment, Driver, ExecutorRegistration, Heartbeat, JobRole};
use heliotrope_executor::client::Scheduler;
use heliotrope_executor::destination::Destination;
use heliotrope_executor::lock;
use heliotrope_executor::tls::{Tls, TlsFiles};
use tokio::net::TcpListener;
use tracing::Instrument;

mod disaster;
mod libvirt;
mod listener;
mod network;
mod qemu;
mod receive;
mod replication;
mod sim;
mod source;

pub use network::{release_now, NetworkArgs, ReleaseArgs};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The scheduler's base URL.
    #[arg(long, env = "HELIOTROPE_SCHEDULER")]
    pub scheduler: String,
    /// An executor token (from the environment: never a flag `ps` shows).
    #[arg(long, env = "HELIOTROPE_TOKEN", hide_env_values = true)]
    pub token: String,
    /// The site this executor serves, by name.
    #[arg(long)]
    pub site: String,
    /// Where VMs, received images, replicas and the chunk index live.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Exit at once (the kernel kills it) when process PID (this one's parent: a supervisor
    /// such as `heliotrope demo`) ends, however it ends; its work is crash-safe, and a
    /// supervisor that stops normally sends SIGTERM first.
    #[arg(long, value_name = "PID")]
    pub exit_with_parent: Option<i32>,
    /// Bound on what the chunk index holds (replicas, images, the memory
    /// kept of VMs that left or arrived), GiB; the oldest files go first.
    #[arg(long, env = "HELIOTROPE_INDEX_GIB", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    pub index_gib: u64,
    #[arg(long, value_enum, default_value = "sim")]
    pub driver: DriverArg,
    /// This host's libvirt (`--driver libvirt`): its system daemon, at another socket with `?socket=PATH`.
    #[arg(long, env = "HELIOTROPE_LIBVIRT_URI", default_value = "qemu:///system")]
    pub libvirt_uri: String,
    /// Where libvirt migrations' sockets live (`--driver libvirt`): the same path at every
    /// site, where libvirt's QEMU may make sockets (the source's QEMU dials the path the
    /// destination's QEMU listens at, each on its own host).
    #[arg(long, env = "HELIOTROPE_LIBVIRT_SOCKET_DIR", default_value = "/var/lib/libvirt/heliotrope")]
    pub libvirt_socket_dir: PathBuf,
    /// How a qemu VM's memory crosses: `pages` (each page by reference
    /// where the destination holds it, else compressed) or `raw` (QEMU's
    /// streams as they are: for a QEMU whose stream the executor misreads).
    #[arg(long, value_enum, default_value = "pages")]
    pub memory_relay: MemoryRelay,
    /// Address to listen on for transfers (`host:port`; it is what peers are told unless `--advertise`).
    #[arg(long)]
    pub listen: String,
    /// Address peers reach this executor at, if not `--listen`.
    #[arg(long)]
    pub advertise: Option<String>,
    /// Migrations it sends at once.
    #[arg(long, default_value_t = 2)]
    pub capacity: u32,
    /// Parallel streams per image.
    #[arg(long, default_value_t = 4)]
    pub streams: u16,
    /// How long each step of a qemu migration's convergence policy gets, seconds.
    #[arg(long, default_value_t = 30.0)]
    pub qemu_policy_step_s: f64,
    /// Sim VMs get this many MiB of memory and disk per GiB the inventory says (their dirty rate scales alike).
    #[arg(long, default_value_t = 1.0)]
    pub sim_mib_per_gib: f64,
    #[command(flatten)]
    pub tls: TlsFiles,
    #[command(flatten)]
    pub network: NetworkArgs,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum DriverArg {
    Sim,
    Qemu,
    Libvirt,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum MemoryRelay {
    Pages,
    Raw,
}

/// How often an executor says it is alive (its lease is `EXECUTOR_LEASE_S`).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

/// How long a claim waits for work at the scheduler, seconds.
const CLAIM_WAIT_S: u32 = 10;

struct Worker {
    scheduler: Scheduler,
    executor: i64,
    destination: Arc<Destination>,
    tls: Option<Tls>,
    running: sim::Running,
    booting: Mutex<()>,
    /// The transfer listener's health, told with each heartbeat.
    listener: Arc<listener::Health>,
    /// Replicas this executor keeps in sync at other sites, and the links they share with migrations.
    replication: replication::Replication,
    /// Migrations this executor receives now (a retry's claim of the same one is the same work).
    receiving: Mutex<HashSet<i64>>,
    /// QEMU VMs this executor runs or adopted, by name.
    machines: qemu::Machines,
    /// How moved VMs' addresses follow them.
    network: heliotrope_executor::network::Network,
    /// Fencing, restarts of a lost site's VMs, quarantined copies.
    disaster: disaster::Disaster,
    args: Arc<RunArgs>,
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    if let Some(parent) = args.exit_with_parent {
        exit_with_parent(parent)?;
    }
    anyhow::ensure!(
        args.qemu_policy_step_s.is_finite() && args.qemu_policy_step_s >= 1.0,
        "--qemu-policy-step-s must be at least 1"
    );
    if args.driver == DriverArg::Libvirt {
        heliotrope_executor::libvirt::daemon_socket(&args.libvirt_uri)?;
        let version = heliotrope_executor::libvirt::version(&args.libvirt_uri)
            .await
            .with_context(|| format!("reaching libvirt at {}", args.libvirt_uri))?;
        tracing::info!(uri = %args.libvirt_uri, version, "libvirt answers");
    }
    let tls = Tls::from_files(&args.tls)?;
    let network = args.network.open()?;
    let listener = TcpListener::bind(&args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let address = args.advertise.clone().unwrap_or_else(|| args.listen.clone());
    let scheduler = Scheduler::new(&args.scheduler, &args.token)?;
    let driver = match args.driver {
        DriverArg::Sim => Driver::Sim,
        DriverArg::Qemu => Driver::Qemu,
        DriverArg::Libvirt => Driver::Libvirt,
    };
    let registration = ExecutorRegistration {
        site: args.site.clone(),
        address,
        driver,
        capacity: args.capacity,
        tunnel_address: args.network.network_tunnel_local.map(|ip| ip.to_string()),
    };
    let me = scheduler.register(&registration).await?;
    tracing::info!(executor = me.id, site = %me.site, address = %me.address, "registered");
    let destination = Destination::open(&args.data_dir, args.index_gib << 30)?;
    let worker = Arc::new(Worker {
        scheduler,
        executor: me.id,
        destination,
        tls,
        running: Arc::default(),
        booting: Mutex::default(),
        listener: Arc::default(),
        replication: replication::Replication::default(),
        receiving: Mutex::default(),
        machines: Mutex::default(),
        network,
        disaster: disaster::Disaster::default(),
        args: Arc::new(args),
    });
    worker.resume_holds();
    tokio::spawn(worker.clone().heartbeat());
    tokio::spawn(worker.clone().watch_scheduler());
    tokio::spawn(worker.clone().replicate());
    tokio::spawn(worker.clone().accept(listener));
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let claim = worker.scheduler.claim(me.id, CLAIM_WAIT_S);
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            claimed = claim => match claimed {
                Ok(Some(assignment)) => {
                    tokio::spawn(worker.clone().handle(assignment));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "claiming failed; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
        }
    }
}

/// Asks the kernel to kill this process when the parent ends (it ended already if
/// this process's parent is no longer `parent`: then stop at once).
fn exit_with_parent(parent: i32) -> anyhow::Result<()> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).context("asking for a parent-death signal")?;
    anyhow::ensure!(
        nix::unistd::getppid().as_raw() == parent,
        "the parent process {parent} has already ended (--exit-with-parent)"
    );
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

impl Worker {
    async fn heartbeat(self: Arc<Self>) {
        loop {
            tokio::time::sleep(HEARTBEAT_EVERY).await;
            let heartbeat = Heartbeat { listener: Some(self.listener.report()) };
            let sent = std::time::Instant::now();
            match self.scheduler.heartbeat(self.executor, &heartbeat).await {
                Ok(_) => self.disaster.heard(sent),
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "heartbeat failed"),
            }
        }
    }

    async fn handle(self: Arc<Self>, a: Assignment) {
        let span = tracing::info_span!("migration", id = a.migration.id, vm = %a.migration.vm, role = ?a.role);
        self.handle_in_span(a).instrument(span).await
    }

    async fn handle_in_span(self: &Arc<Self>, a: Assignment) {
        let role = a.role;
        let runs_here = match a.vm.driver {
            Driver::Sim => true,
            Driver::Qemu => self.args.driver == DriverArg::Qemu,
            Driver::Libvirt => self.args.driver == DriverArg::Libvirt,
        };
        let outcome = match (role, a.vm.driver) {
            (_, driver) if !runs_here => Err(anyhow::anyhow!(
                "this executor runs {:?} VMs and sim ones (--driver), and this VM is a {driver:?} one",
                self.args.driver
            )),
            (JobRole::Source, Driver::Sim) => self.send(&a).await,
            (JobRole::Destination, Driver::Sim) => self.receive(&a).await,
            (JobRole::Source, Driver::Qemu) => self.send_qemu(&a).await,
            (JobRole::Destination, Driver::Qemu) => self.receive_qemu(&a).await,
            (JobRole::Source, Driver::Libvirt) => self.send_libvirt(&a).await,
            (JobRole::Destination, Driver::Libvirt) => self.receive_libvirt(&a).await,
            (JobRole::Recover, _) => self.recover(&a).await,
        };
        if let Err(e) = outcome {
            tracing::warn!(error = %format!("{e:#}"), "the migration failed here");
            if role == JobRole::Source {
                self.report_failure(&a, &e).await;
            }
        }
    }

    /// Where VM `vm`'s files live here.
    fn vm_dir(&self, vm: &str) -> PathBuf {
        self.args.data_dir.join("vms").join(vm)
    }
}

fn decode_hex(text: &str) -> anyhow::Result<Vec<u8>> {
    anyhow::ensure!(text.len() == 64 && text.is_ascii(), "a job secret is 64 hex digits");
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).context("a job secret is hex")).collect()
}
