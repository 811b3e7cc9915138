//! `heliotrope-executor run`: the executor as a site's worker. It
//! registers with the scheduler, heartbeats, takes transfers for the jobs
//! it is the destination of, and claims migrations by long poll: as the
//! source it migrates the VM live and reports progress under its lease; as
//! the destination it starts the VM once its images are sealed and
//! confirms the cutover. `sim` VMs (real bytes, simulated guests) are made
//! from the inventory's sizes, scaled (`--sim-mib-per-gib`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use heliotrope_api_spec::{
    AssignedVm, Assignment, Completion, Driver, Executor, ExecutorRegistration, Heartbeat, JobRole, MigrationDetail,
    MigrationState, ProgressAnswer, ProgressReport, RecoveryReport, VmRunsAt,
};
use heliotrope_executor::content::PAGE;
use heliotrope_executor::destination::{Allowed, Destination};
use heliotrope_executor::precopy::{migrate_vm, PrecopyOptions, DISK_IMAGE, MEMORY_IMAGE};
use heliotrope_executor::shaping::Shaper;
use heliotrope_executor::sim::{generate, ContentMix, SimImages, SimVm, Workload};
use heliotrope_executor::source::{SendOptions, Session};
use heliotrope_executor::tls::{self, Connection, Tls, TlsFiles};
use heliotrope_executor::transfer::{choose_level, Progress, TransferError};
use heliotrope_executor::wire::ImageKind;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::TcpListener;
use tracing::Instrument;

mod disaster;
mod listener;
mod network;
mod qemu;
mod replication;

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
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum MemoryRelay {
    Pages,
    Raw,
}

/// The scheduler, as this executor speaks to it.
#[derive(Clone)]
struct Scheduler {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Scheduler {
    fn new(base: &str, token: &str) -> anyhow::Result<Scheduler> {
        Ok(Scheduler {
            // Idle connections are let go before the scheduler closes them (at its header
            // timeout, 10 s by default), so that a request never races a closing connection.
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .pool_idle_timeout(Duration::from_secs(4))
                .build()?,
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        })
    }

    /// POSTs `body` to `path`; `None` for 204.
    async fn post<B: Serialize, R: DeserializeOwned>(&self, path: &str, body: Option<&B>) -> anyhow::Result<Option<R>> {
        let mut request = self.http.post(format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.with_context(|| format!("POST {path}"))?;
        let status = response.status();
        if status == reqwest::StatusCode::NO_CONTENT {
            return Ok(None);
        }
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            anyhow::bail!("POST {path}: {status}: {text}");
        }
        Ok(Some(response.json().await.with_context(|| format!("POST {path}: the answer"))?))
    }
}

/// How often an executor says it is alive (its lease is `EXECUTOR_LEASE_S`).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

/// How long a source waits after its cutover for the destination to
/// confirm the VM runs there, before it rolls back and resumes the VM.
const CONFIRM_WAIT: Duration = Duration::from_secs(120);

/// VMs running here, by name.
type Running = Arc<Mutex<HashMap<String, Arc<SimVm>>>>;

struct Worker {
    scheduler: Scheduler,
    executor: i64,
    destination: Arc<Destination>,
    tls: Option<Tls>,
    running: Running,
    booting: Mutex<()>,
    /// The transfer listener's health, told with each heartbeat.
    listener: Arc<listener::Health>,
    /// Replicas this executor keeps in sync at other sites, and the links they share with migrations.
    replication: replication::Replication,
    /// Migrations this executor receives now (a retry's claim of the same one is the same work).
    receiving: Mutex<std::collections::HashSet<i64>>,
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
    let tls = Tls::from_files(&args.tls)?;
    let network = args.network.open()?;
    let listener = TcpListener::bind(&args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let address = args.advertise.clone().unwrap_or_else(|| args.listen.clone());
    let scheduler = Scheduler::new(&args.scheduler, &args.token)?;
    let driver = match args.driver {
        DriverArg::Sim => Driver::Sim,
        DriverArg::Qemu => Driver::Qemu,
    };
    let registration = ExecutorRegistration {
        site: args.site.clone(),
        address,
        driver,
        capacity: args.capacity,
        tunnel_address: args.network.network_tunnel_local.map(|ip| ip.to_string()),
    };
    let me: Executor = scheduler
        .post("/v1/executors/register", Some(&registration))
        .await?
        .context("registration answered nothing")?;
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
    let claim_path = format!("/v1/executors/{}/claim?wait_s=10", me.id);
    loop {
        let claim = worker.scheduler.post::<(), Assignment>(&claim_path, None);
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
            let path = format!("/v1/executors/{}/heartbeat", self.executor);
            let heartbeat = Heartbeat { listener: Some(self.listener.report()) };
            let sent = std::time::Instant::now();
            match self.scheduler.post::<_, serde_json::Value>(&path, Some(&heartbeat)).await {
                Ok(_) => self.disaster.heard(sent),
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "heartbeat failed"),
            }
        }
    }

    /// Where this executor speaks of migration `id` (`what`: progress, complete, recover).
    fn migration_path(&self, id: i64, what: &str) -> String {
        format!("/v1/migrations/{id}/{what}?executor={}", self.executor)
    }

    fn vm_dir(&self, vm: &str) -> PathBuf {
        self.args.data_dir.join("vms").join(vm)
    }

    async fn handle(self: Arc<Self>, a: Assignment) {
        let span = tracing::info_span!("migration", id = a.migration.id, vm = %a.migration.vm, role = ?a.role);
        self.handle_in_span(a).instrument(span).await
    }

    async fn handle_in_span(self: &Arc<Self>, a: Assignment) {
        let (id, role) = (a.migration.id, a.role);
        let outcome = match (role, a.vm.driver) {
            (_, Driver::Qemu) if self.args.driver != DriverArg::Qemu => {
                Err(anyhow::anyhow!("this executor runs sim VMs only (--driver sim), and this VM is a qemu one"))
            }
            (JobRole::Source, Driver::Sim) => self.send(&a).await,
            (JobRole::Destination, Driver::Sim) => self.receive(&a).await,
            (JobRole::Source, Driver::Qemu) => self.send_qemu(&a).await,
            (JobRole::Destination, Driver::Qemu) => self.receive_qemu(&a).await,
            (JobRole::Recover, _) => self.recover(&a).await,
        };
        if let Err(e) = outcome {
            tracing::warn!(error = %format!("{e:#}"), "the migration failed here");
            if role == JobRole::Source {
                let failed = Completion { state: MigrationState::Failed, detail: format!("{e:#}") };
                let path = self.migration_path(id, "complete");
                match self.scheduler.post::<_, serde_json::Value>(&path, Some(&failed)).await {
                    // Failed: the VM runs on here, so do its addresses.
                    Ok(_) => self.stay(&self.network_move(&a).await).await,
                    Err(e) => tracing::warn!(error = %format!("{e:#}"), "reporting the failure failed"),
                }
            }
        }
    }

    /// The running VM a migration moves, booted from its images here (made from the inventory's sizes if it has none).
    fn vm(&self, a: &Assignment) -> anyhow::Result<Arc<SimVm>> {
        self.sim_vm(&a.migration.vm, &a.vm, a.migration.id as u64)
    }

    /// The bytes of a sim VM's image of `gib` GiB in the inventory: whole MiB, scaled.
    fn sim_bytes(&self, gib: f64) -> u64 {
        ((gib * self.args.sim_mib_per_gib).ceil().max(1.0) as u64) << 20
    }

    /// The running sim VM `name`, booted from its images here, or made
    /// from `spec`'s sizes (content and guest seeded by `seed`) if it has none.
    fn sim_vm(&self, name: &str, spec: &AssignedVm, seed: u64) -> anyhow::Result<Arc<SimVm>> {
        // Off the runtime's workers, waiting included: were every worker to wait here for another
        // boot, nothing would drive the runtime's timers, sockets and signals (SIGTERM) meanwhile.
        tokio::task::block_in_place(|| self.boot_sim_vm(name, spec, seed))
    }

    fn boot_sim_vm(&self, name: &str, spec: &AssignedVm, seed: u64) -> anyhow::Result<Arc<SimVm>> {
        // One boot at a time: a migration's claim and the replication loop may both ask for the same VM.
        let _booting = self.booting.lock().unwrap_or_else(|e| e.into_inner());
        anyhow::ensure!(!self.disaster.is_fenced(), "this site is fenced: no VM starts or resumes here");
        if let Some(vm) = self.running.lock().unwrap_or_else(|e| e.into_inner()).get(name) {
            return Ok(vm.clone());
        }
        let dir = self.vm_dir(name);
        let scale = self.args.sim_mib_per_gib;
        let images = if dir.join(MEMORY_IMAGE).exists() {
            SimImages { memory: dir.join(MEMORY_IMAGE), disk: dir.join(DISK_IMAGE) }
        } else {
            let (memory, disk) = (self.sim_bytes(spec.memory_gib), self.sim_bytes(spec.disk_gib));
            generate(&dir, memory as usize, disk as usize, &ContentMix::default(), 1, seed)?
        };
        let dirty = spec.dirty_rate_mbps * 1e6 / 8.0 * scale / 1024.0;
        let workload = Workload { memory_bytes_per_s: dirty, disk_bytes_per_s: dirty / 20.0, seed };
        let vm = Arc::new(SimVm::start(images, workload)?);
        self.running.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_owned(), vm.clone());
        Ok(vm)
    }

    async fn session(
        &self,
        a: &Assignment,
        options: &Arc<SendOptions>,
    ) -> anyhow::Result<Session<Box<dyn Connection>>> {
        let peer = a.peer_address.as_deref().context("a source assignment names its peer")?;
        let secret = decode_hex(&a.secret)?;
        // The destination learns the job's secret when it claims its side: until then it refuses.
        let mut last = None;
        for _ in 0..60 {
            let mut streams = Vec::new();
            for _ in 0..self.args.streams {
                streams.push(
                    tls::connect(peer, self.tls.as_ref()).await.with_context(|| format!("connecting to {peer}"))?,
                );
            }
            match Session::open(streams, a.migration.id as u64, &secret, options.clone()).await {
                Ok(session) => return Ok(session),
                Err(TransferError::NotExpected) => {
                    last = Some(TransferError::NotExpected.to_string());
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        anyhow::bail!("the destination never took job {}: {}", a.migration.id, last.unwrap_or_default())
    }

    async fn report(&self, id: i64, report: &ProgressReport) -> anyhow::Result<ProgressAnswer> {
        let path = self.migration_path(id, "progress");
        self.scheduler.post(&path, Some(report)).await?.context("a progress report answered nothing")
    }

    /// Keeps migration `id`'s lease with a report every 5 s until dropped,
    /// while the source prepares (it reports progress itself from then on).
    fn hold_lease(&self, id: i64) -> AbortOnDrop {
        let (scheduler, path) = (self.scheduler.clone(), self.migration_path(id, "progress"));
        AbortOnDrop(tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let report = sim_report(&Progress::default(), 1.0);
                if let Err(e) = scheduler.post::<_, ProgressAnswer>(&path, Some(&report)).await {
                    tracing::warn!(error = %format!("{e:#}"), "holding the lease failed");
                }
            }
        }))
    }

    /// After the cutover: reports until the destination has confirmed (the
    /// scheduler records `done`). If it never does within `CONFIRM_WAIT`,
    /// rolls the migration back: the scheduler records it, after which it
    /// refuses the destination's confirmation, so only one copy ever runs.
    async fn await_confirmation(&self, id: i64, progress: impl Fn() -> ProgressReport) -> anyhow::Result<Confirmed> {
        let confirm_by = tokio::time::Instant::now() + CONFIRM_WAIT;
        loop {
            let answer = self.report(id, &progress()).await?;
            match answer.state {
                MigrationState::Done => return Ok(Confirmed::Done),
                other if answer.cancelled => return Ok(Confirmed::Ended(other)),
                _ if tokio::time::Instant::now() >= confirm_by => {
                    let back = Completion {
                        state: MigrationState::RolledBack,
                        detail: format!("the destination did not confirm within {} s", CONFIRM_WAIT.as_secs()),
                    };
                    // Refused if the confirmation came in meanwhile: the next report says done.
                    let path = self.migration_path(id, "complete");
                    if self.scheduler.post::<_, serde_json::Value>(&path, Some(&back)).await.is_ok() {
                        tracing::warn!("{}; the VM runs on here", back.detail);
                        return Ok(Confirmed::Ended(MigrationState::RolledBack));
                    }
                }
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    /// The destination's confirmation that the VM is here (once the source
    /// reported its cutover): `Ok` once the scheduler recorded `done`.
    async fn confirm_done(&self, id: i64) -> anyhow::Result<()> {
        let done = Completion { state: MigrationState::Done, detail: format!("runs at executor {}", self.executor) };
        let path = self.migration_path(id, "complete");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
        loop {
            match self.scheduler.post::<_, serde_json::Value>(&path, Some(&done)).await {
                Ok(_) => return Ok(()),
                // The source has not reported its cutover yet (or is being recovered, or retries).
                Err(e) if format!("{e:#}").contains("only after cutover") && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e.context("the VM stays at the source")),
            }
        }
    }

    /// The source's side: migrate the VM live, reporting progress; let go of it once the destination confirms.
    async fn send(self: &Arc<Self>, a: &Assignment) -> anyhow::Result<()> {
        let id = a.migration.id;
        // Making a sim VM's images may take a while on a busy machine: the lease must not run out meanwhile.
        let holding = self.hold_lease(id);
        let vm = self.vm(a)?;
        // Resolved now: the cutover is no time for a name lookup.
        let network_move = self.network_move(a).await;
        drop(holding);
        let cap = a.migration.cap_mbps.map(|mbps| mbps * 1e6 / 8.0);
        // Compression as strong as keeps ahead of the cap, measured on this VM's memory.
        let level = choose_level(&self.sample(&a.migration.vm)?, cap);
        let shaper = Arc::new(Shaper::new(cap));
        // Where this executor replicates to the same site, the migration takes its share of the link
        // and replication yields to it.
        let slot = self.replication.migration_slot(&a.migration.to, cap);
        let shapers = match &slot {
            Some(slot) => slot.shapers(),
            None => vec![shaper.clone()],
        };
        let set_cap = |cap: Option<f64>| match &slot {
            Some(slot) => slot.set_cap(cap.unwrap_or(f64::INFINITY)),
            None => shaper.set_rate(cap),
        };
        let (memory_progress, memory_watch) = tokio::sync::watch::channel(Progress::default());
        let (disk_progress, disk_watch) = tokio::sync::watch::channel(Progress::default());
        let scale = self.args.sim_mib_per_gib / 1024.0;
        let progress_now = || sim_report(&memory_watch.borrow().and(&disk_watch.borrow()), scale);
        let options = |progress| Arc::new(SendOptions { level, shapers: shapers.clone(), progress: Some(progress) });
        self.report(
            id,
            &ProgressReport { state: Some(MigrationState::Transferring), ..sim_report(&Progress::default(), scale) },
        )
        .await?;
        let mut memory = self.session(a, &options(memory_progress)).await?;
        let mut disk = self.session(a, &options(disk_progress)).await?;
        let precopy = PrecopyOptions { max_downtime_s: f64::from(a.vm.max_downtime_ms) / 1000.0, budget_s: 600.0 };
        let moved = {
            let migrating = migrate_vm(&mut memory, Some(&mut disk), &vm, &precopy);
            tokio::pin!(migrating);
            // Progress every second; an answer may change the cap or say stop.
            loop {
                tokio::select! {
                    moved = &mut migrating => break moved,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {
                        let answer = self.report(id, &progress_now()).await?;
                        if answer.cancelled {
                            vm.resume();
                            tracing::info!("cancelled: the VM runs on here");
                            return Ok(());
                        }
                        set_cap(answer.cap_mbps.map(|mbps| mbps * 1e6 / 8.0));
                    }
                }
            }
        };
        let report = moved?;
        tracing::info!(downtime_ms = report.downtime_s * 1000.0, rounds = report.rounds, "moved; cutover");
        // Remembered across a crash: from here on the destination holds the VM.
        let marker = self.cutover_marker(id);
        std::fs::write(&marker, b"")?;
        let at_cutover = ProgressReport {
            state: Some(MigrationState::Cutover),
            downtime_s: Some(report.downtime_s),
            ..progress_now()
        };
        self.report(id, &at_cutover).await?;
        self.leave(&network_move).await;
        if let Confirmed::Ended(state) = self.await_confirmation(id, progress_now).await? {
            self.stay(&network_move).await;
            vm.resume();
            std::fs::remove_file(&marker)?;
            if state == MigrationState::RolledBack {
                return Ok(());
            }
            anyhow::bail!("the migration ended as {state:?} after cutover");
        }
        drop(vm);
        let vm = self.running.lock().unwrap_or_else(|e| e.into_inner()).remove(&a.migration.vm);
        if let Some(vm) = vm.and_then(Arc::into_inner) {
            vm.destroy()?;
        }
        std::fs::remove_file(&marker)?;
        Ok(())
    }

    /// The first MiB of a VM's memory here, to measure compression on.
    fn sample(&self, vm: &str) -> anyhow::Result<Vec<u8>> {
        use std::io::Read;
        let mut sample = Vec::with_capacity(1 << 20);
        std::fs::File::open(self.vm_dir(vm).join(MEMORY_IMAGE))?.take(1 << 20).read_to_end(&mut sample)?;
        Ok(sample)
    }

    fn cutover_marker(&self, id: i64) -> PathBuf {
        self.args.data_dir.join(format!("cutover-{id}"))
    }

    /// After a crash here, say where a recovering migration's VM runs: at
    /// the destination if this executor had reported its cutover (it holds
    /// the sealed images and the VM paused here was let go), else here.
    async fn recover(self: &Arc<Self>, a: &Assignment) -> anyhow::Result<()> {
        let id = a.migration.id;
        let marker = self.cutover_marker(id);
        let runs_at = if marker.exists() { VmRunsAt::Destination } else { VmRunsAt::Source };
        let path = self.migration_path(id, "recover");
        let detail: MigrationDetail = self
            .scheduler
            .post(&path, Some(&RecoveryReport { runs_at }))
            .await?
            .context("recovery answered nothing")?;
        tracing::info!(?runs_at, state = ?detail.migration.state, "recovered");
        if runs_at == VmRunsAt::Source {
            self.stay(&self.network_move(a).await).await;
        }
        match (runs_at, a.vm.driver) {
            (VmRunsAt::Destination, Driver::Sim) => {
                let _ = std::fs::remove_dir_all(self.vm_dir(&a.migration.vm));
            }
            (VmRunsAt::Destination, Driver::Qemu) => self.let_go_qemu(a).await,
            (VmRunsAt::Source, Driver::Sim) => {
                self.vm(a)?;
            }
            (VmRunsAt::Source, Driver::Qemu) => self.resume_qemu(a).await?,
        }
        if marker.exists() {
            std::fs::remove_file(&marker)?;
        }
        Ok(())
    }

    /// The destination's side: expect the job; once both images are sealed
    /// and the scheduler records the migration done (after the source's
    /// cutover), start the VM here. Never before: a migration that ends
    /// otherwise leaves the VM at the source, and the images are dropped.
    async fn receive(self: &Arc<Self>, a: &Assignment) -> anyhow::Result<()> {
        let id = a.migration.id;
        // The images of the VM the scheduler assigned, no larger.
        let image = |name: &str, gib: f64| Allowed {
            name: name.to_owned(),
            kind: ImageKind::Migration,
            max_pages: self.sim_bytes(gib) / PAGE as u64,
        };
        let images = vec![image(MEMORY_IMAGE, a.vm.memory_gib), image(DISK_IMAGE, a.vm.disk_gib)];
        self.destination.expect_images(id as u64, decode_hex(&a.secret)?, images);
        if !self.receiving.lock().unwrap_or_else(|e| e.into_inner()).insert(id) {
            return Ok(());
        }
        let outcome = self.confirm_and_start(a).await;
        self.receiving.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        outcome
    }

    async fn confirm_and_start(self: &Arc<Self>, a: &Assignment) -> anyhow::Result<()> {
        let id = a.migration.id;
        let (memory, disk) =
            (self.destination.image_path(id as u64, MEMORY_IMAGE), self.destination.image_path(id as u64, DISK_IMAGE));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
        while !(memory.exists() && disk.exists()) {
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "the images never arrived");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if let Err(e) = self.confirm_done(id).await {
            let _ = std::fs::remove_file(&memory);
            let _ = std::fs::remove_file(&disk);
            return Err(e);
        }
        let dir = self.vm_dir(&a.migration.vm);
        std::fs::create_dir_all(&dir)?;
        std::fs::rename(&memory, dir.join(MEMORY_IMAGE))?;
        std::fs::rename(&disk, dir.join(DISK_IMAGE))?;
        // A sim guest has no NIC of its own to announce.
        self.arrive(&self.network_move(a).await, async { self.vm(a).map(drop) }, async { Ok(None) }).await?;
        tracing::info!("the VM runs here now");
        Ok(())
    }
}

fn decode_hex(text: &str) -> anyhow::Result<Vec<u8>> {
    anyhow::ensure!(text.len() == 64 && text.is_ascii(), "a job secret is 64 hex digits");
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).context("a job secret is hex")).collect()
}

/// A sim migration's progress as the scheduler is told it.
/// A sim migration's progress as reported. A sim guest is the inventory's VM
/// scaled down `scale` times (`--sim-mib-per-gib` / 1024), its dirty rate too:
/// the rate goes back to the inventory's scale, where the scheduler uses it.
fn sim_report(p: &Progress, scale: f64) -> ProgressReport {
    ProgressReport {
        state: None,
        raw_bytes: p.counters.raw_bytes,
        wire_bytes: p.counters.wire_bytes,
        round: p.round,
        dirty_bytes_per_s: p.dirty_bytes_per_s / scale,
        expected_downtime_s: p.expected_downtime_s,
        eta_s: p.eta_s,
        downtime_s: None,
        saved_bytes: Some(p.counters.savings()),
        disk_wire_bytes: None,
        relayed_raw: None,
    }
}

/// A mutex's guard, whether or not a panicking holder poisoned it (the data stays usable).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A task that stops when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How a migration ended after its cutover, as the source hears it.
enum Confirmed {
    /// The destination confirmed: the VM runs there.
    Done,
    /// It ended otherwise (rolled back, ...): the VM must run on here.
    Ended(MigrationState),
}
