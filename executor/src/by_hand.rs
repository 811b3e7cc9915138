//! `heliotrope-executor receive` and `migrate`: one migration between two
//! executors by hand, without a scheduler. The job's secret comes from the
//! environment (`HELIOTROPE_JOB_SECRET`), never from a flag that `ps` shows.

use std::path::PathBuf;

use anyhow::Context;
use heliotrope_executor::index::ChunkIndex;
use heliotrope_executor::shaping::Shaper;
use heliotrope_executor::transfer::{choose_level, receive, send_resuming, SendOptions, TransferError};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

/// The environment variable holding the job's secret.
pub const SECRET_ENV: &str = "HELIOTROPE_JOB_SECRET";

#[derive(clap::Args, Debug)]
pub struct ReceiveArgs {
    /// Address to listen on (port 0 picks one; the address is printed first).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    /// Where the images land (`vm-<job>/`) and the chunk index lives (`index/`).
    #[arg(long)]
    pub data_dir: PathBuf,
    #[arg(long)]
    pub job: u64,
    /// Files this site already holds (e.g. a cached disk replica), indexed before the migration.
    #[arg(long)]
    pub cached: Vec<PathBuf>,
    /// Bound on what the chunk index holds, GiB.
    #[arg(long, default_value_t = 64)]
    pub index_gib: u64,
}

#[derive(clap::Args, Debug)]
pub struct MigrateArgs {
    /// The receiving executor's address.
    #[arg(long)]
    pub to: String,
    #[arg(long)]
    pub job: u64,
    /// An image to send, as NAME=PATH (repeat for memory and disk).
    #[arg(long = "image", value_parser = parse_image, required = true)]
    pub images: Vec<(String, PathBuf)>,
    /// Cap on the bytes sent, Mbit/s (unshaped without it).
    #[arg(long)]
    pub cap_mbps: Option<f64>,
    /// Connections to try: after a drop, the next sends only what did not arrive.
    #[arg(long, default_value_t = 3)]
    pub attempts: u32,
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

/// Receives one migration and prints what was kept as JSON.
pub async fn receive_one(args: &ReceiveArgs) -> anyhow::Result<()> {
    let secret = secret()?;
    let out = args.data_dir.join(format!("vm-{}", args.job));
    std::fs::create_dir_all(&out)?;
    let mut index = ChunkIndex::open(&args.data_dir.join("index"), args.index_gib << 30)?;
    for cached in &args.cached {
        index.register_file(cached).with_context(|| format!("indexing {}", cached.display()))?;
    }
    let listener = TcpListener::bind(&args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    println!("listening on {}", listener.local_addr()?);
    let job = args.job;
    // A dropped connection leaves what arrived indexed; the source's next session sends the rest.
    let (received, peer) = loop {
        let (mut stream, peer) = listener.accept().await?;
        stream.set_nodelay(true)?;
        match receive(&mut stream, |j| (j == job).then(|| secret.clone()), &mut index, &out).await {
            Ok(received) => break (received, peer),
            Err(TransferError::Wire(e)) => {
                eprintln!("the connection from {peer} dropped ({e}); waiting for the source again")
            }
            Err(e) => return Err(e.into()),
        }
    };
    let images: Vec<String> = received.images.iter().map(|p| p.display().to_string()).collect();
    println!("{}", json!({"job": received.job, "from": peer.to_string(), "images": images}));
    Ok(())
}

/// Sends images to a receiving executor and prints the counters as JSON.
pub async fn migrate(args: &MigrateArgs) -> anyhow::Result<()> {
    let secret = secret()?;
    let mut images = Vec::with_capacity(args.images.len());
    for (name, path) in &args.images {
        images.push((name.clone(), std::fs::read(path).with_context(|| format!("reading {}", path.display()))?));
    }
    let cap = args.cap_mbps.map(|mbps| mbps * 1e6 / 8.0);
    let shaper = Shaper::new(cap);
    let level = choose_level(images.first().map_or(&[][..], |(_, data)| data), cap);
    let options = SendOptions { level, shapers: vec![&shaper] };
    let named: Vec<(&str, &[u8])> = images.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
    let connect = || async {
        let stream = TcpStream::connect(&args.to).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    };
    let (c, attempts) = send_resuming(connect, args.job, &secret, &named, &options, args.attempts)
        .await
        .with_context(|| format!("migrating to {}", args.to))?;
    println!(
        "{}",
        json!({
            "raw_bytes": c.raw_bytes, "wire_bytes": c.wire_bytes, "zero_pages": c.zero_pages,
            "held_pages": c.held_pages, "sent_pages": c.sent_pages, "compressed_bytes": c.compressed_bytes,
            "attempts": attempts,
        })
    );
    Ok(())
}
