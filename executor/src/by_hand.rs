//! `heliotrope-executor receive` and `migrate`: one migration between two
//! executors by hand, without a scheduler. The job's secret comes from the
//! environment (`HELIOTROPE_JOB_SECRET`), never from a flag that `ps` shows.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use heliotrope_executor::content::{ImageFile, PageSource};
use heliotrope_executor::destination::Destination;
use heliotrope_executor::index::Holding;
use heliotrope_executor::precopy::{migrate_vm, PrecopyOptions};
use heliotrope_executor::shaping::Shaper;
use heliotrope_executor::sim::{SimImages, SimVm, Workload, DRIVER};
use heliotrope_executor::source::{send_resuming, SendOptions, Session};
use heliotrope_executor::tls::{self, Tls, TlsFiles};
use heliotrope_executor::transfer::{choose_level, Progress, TransferError};
use serde_json::json;
use tokio::net::TcpListener;

/// The environment variable holding the job's secret.
pub const SECRET_ENV: &str = "HELIOTROPE_JOB_SECRET";

#[derive(clap::Args, Debug)]
pub struct ReceiveArgs {
    /// Address to listen on (port 0 picks one; the address is printed first).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    /// Where the images land (`vm-<job>/`), replicas are cached (`replicas/`) and the chunk index lives (`index/`).
    #[arg(long)]
    pub data_dir: PathBuf,
    #[arg(long)]
    pub job: u64,
    /// Replicas this site already holds (a VM's disk cached ahead of time), indexed before the migration.
    #[arg(long)]
    pub cached: Vec<PathBuf>,
    /// Bound on what the chunk index holds, GiB.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    pub index_gib: u64,
    #[command(flatten)]
    pub tls: TlsFiles,
}

#[derive(clap::Args, Debug)]
pub struct MigrateArgs {
    /// The receiving executor's address (with TLS, its certificate must name the host).
    #[arg(long)]
    pub to: String,
    #[arg(long)]
    pub job: u64,
    /// An image at rest to send, as NAME=PATH (repeat for memory and disk).
    #[arg(long = "image", value_parser = parse_image, required_unless_present = "sim_vm")]
    pub images: Vec<(String, PathBuf)>,
    /// Boot the `sim` VM whose images (memory.img, disk.img) are in this
    /// directory and migrate it live; destroyed here once it moved.
    #[arg(long, conflicts_with = "images")]
    pub sim_vm: Option<PathBuf>,
    /// How fast the sim VM writes its memory, Mbit/s.
    #[arg(long, default_value_t = 100.0)]
    pub dirty_mbps: f64,
    /// How fast the sim VM writes its disk, Mbit/s.
    #[arg(long, default_value_t = 8.0)]
    pub disk_write_mbps: f64,
    /// The VM's maximum downtime, ms.
    #[arg(long, default_value_t = 300.0)]
    pub max_downtime_ms: f64,
    /// How long the live rounds may take before the migration is given up, s.
    #[arg(long, default_value_t = 600.0)]
    pub budget_s: f64,
    /// Cap on the bytes sent, Mbit/s (unshaped without it).
    #[arg(long)]
    pub cap_mbps: Option<f64>,
    /// Parallel streams per image.
    #[arg(long, default_value_t = 4)]
    pub streams: u16,
    /// Sessions to try: after a drop, the next sends only what did not arrive (images at rest).
    #[arg(long, default_value_t = 3)]
    pub attempts: u32,
    #[command(flatten)]
    pub tls: TlsFiles,
}

fn parse_image(text: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = text.split_once('=').ok_or_else(|| format!("'{text}' is not NAME=PATH"))?;
    Ok((name.to_owned(), PathBuf::from(path)))
}

fn secret() -> anyhow::Result<Vec<u8>> {
    let secret = std::env::var(SECRET_ENV).with_context(|| format!("set {SECRET_ENV} to the job's secret"))?;
    anyhow::ensure!(secret.len() >= 16, "{SECRET_ENV} must be at least 16 characters");
    Ok(secret.into_bytes())
}

/// Receives one migration (every stream of it) and prints what was kept as JSON.
pub async fn receive_one(args: &ReceiveArgs) -> anyhow::Result<()> {
    let secret = secret()?;
    let tls = Tls::from_files(&args.tls)?;
    let destination = Destination::open(&args.data_dir, args.index_gib << 30)?;
    for cached in &args.cached {
        destination.hold(cached, Holding::Replica).with_context(|| format!("indexing {}", cached.display()))?;
    }
    destination.expect(args.job, secret);
    let listener = TcpListener::bind(&args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    println!("listening on {}", listener.local_addr()?);
    let (done, mut served) = tokio::sync::mpsc::unbounded_channel();
    // Connections accepted and not yet ended.
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counting = open.clone();
    let accepting = tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    eprintln!("accepting a connection: {e}");
                    continue;
                }
            };
            counting.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let (destination, tls, done) = (destination.clone(), tls.clone(), done.clone());
            tokio::spawn(async move {
                let outcome = destination.serve_tcp(tcp, tls.as_ref()).await.map_err(anyhow::Error::from);
                let _ = done.send((peer, outcome));
            });
        }
    });
    // The migration is over once a session's first stream (it carries the
    // seals) ended cleanly and no connection is left open.
    let (mut sealed, mut finished, mut source) = (Vec::new(), false, None);
    let result = loop {
        let Some((peer, outcome)) = served.recv().await else { anyhow::bail!("stopped accepting") };
        let open = open.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) - 1;
        match outcome {
            Ok(s) => {
                finished |= s.stream == 0;
                sealed.extend(s.sealed.iter().map(|p| p.display().to_string()));
                source = Some(peer);
            }
            // A dropped connection leaves what arrived in place; the source's next session sends the rest.
            Err(e) if e.downcast_ref::<TransferError>().is_some_and(TransferError::is_dropped_connection) => {
                eprintln!("a connection from {peer} dropped ({e:#}); waiting for the source again")
            }
            Err(e) => break Err(e.context(format!("the connection from {peer}"))),
        }
        if finished && open == 0 {
            let from = source.map(|p| p.to_string());
            break Ok(json!({"job": args.job, "from": from, "images": sealed}));
        }
    };
    accepting.abort();
    println!("{}", result?);
    Ok(())
}

/// Reports progress on standard error, a JSON line a second.
fn report_progress() -> (tokio::sync::watch::Sender<Progress>, tokio::task::JoinHandle<()>) {
    let (sender, mut watch) = tokio::sync::watch::channel(Progress::default());
    let task = tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            match watch.has_changed() {
                Ok(true) => eprintln!("{}", json!({"progress": *watch.borrow_and_update()})),
                Ok(false) => {}
                Err(_) => return,
            }
        }
    });
    (sender, task)
}

/// Sends images to a receiving executor (or migrates a sim VM live) and prints the counters as JSON.
pub async fn migrate(args: &MigrateArgs) -> anyhow::Result<()> {
    let secret = secret()?;
    let tls = Tls::from_files(&args.tls)?;
    let cap = args.cap_mbps.map(|mbps| mbps * 1e6 / 8.0);
    let (progress, reporter) = report_progress();
    let images: Vec<(String, Arc<dyn PageSource>)> = match &args.sim_vm {
        Some(dir) => vec![
            ("memory.img".to_owned(), Arc::new(ImageFile::open(&dir.join("memory.img"))?)),
            ("disk.img".to_owned(), Arc::new(ImageFile::open(&dir.join("disk.img"))?)),
        ],
        None => {
            let mut images: Vec<(String, Arc<dyn PageSource>)> = Vec::new();
            for (name, path) in &args.images {
                let image = ImageFile::open(path).with_context(|| format!("opening {}", path.display()))?;
                images.push((name.clone(), Arc::new(image)));
            }
            images
        }
    };
    let mut sample = vec![0u8; images.first().map_or(0, |(_, i)| i.page_count().min(256) as usize * 4096)];
    if let Some((_, image)) = images.first() {
        image.read_pages(0, &mut sample)?;
    }
    let options = Arc::new(SendOptions {
        level: choose_level(&sample, cap),
        shapers: vec![Arc::new(Shaper::new(cap))],
        progress: Some(progress),
    });
    let connect = || tls::connect(&args.to, tls.as_ref());
    let report = match &args.sim_vm {
        None => {
            let (c, attempts) =
                send_resuming(connect, args.streams, args.job, &secret, &images, options, args.attempts)
                    .await
                    .with_context(|| format!("migrating to {}", args.to))?;
            json!({"counters": c, "saved": c.savings(), "attempts": attempts})
        }
        Some(dir) => {
            let vm = Arc::new(SimVm::start(
                SimImages { memory: dir.join("memory.img"), disk: dir.join("disk.img") },
                Workload {
                    memory_bytes_per_s: args.dirty_mbps * 1e6 / 8.0,
                    disk_bytes_per_s: args.disk_write_mbps * 1e6 / 8.0,
                    seed: args.job,
                },
            )?);
            let mut sessions = Vec::new();
            for _ in 0..2 {
                let mut streams = Vec::new();
                for _ in 0..args.streams {
                    streams.push(connect().await.with_context(|| format!("connecting to {}", args.to))?);
                }
                sessions.push(Session::open(streams, args.job, &secret, options.clone()).await?);
            }
            let (memory, disk) = sessions.split_at_mut(1);
            let precopy = PrecopyOptions { max_downtime_s: args.max_downtime_ms / 1000.0, budget_s: args.budget_s };
            let r = migrate_vm(&mut memory[0], Some(&mut disk[0]), &vm, &precopy).await?;
            // Moved: the guest runs at the destination now.
            Arc::into_inner(vm).context("the VM is still in use")?.destroy()?;
            json!({
                "driver": DRIVER, "rounds": r.rounds, "downtime_ms": r.downtime_s * 1000.0, "throttle": r.throttle,
                "memory": r.memory, "disk": r.disk,
            })
        }
    };
    reporter.abort();
    println!("{report}");
    Ok(())
}
