//! `heliotrope-executor`: the worker that runs migrations at a site.
//!
//! It holds no database credentials: it talks to the scheduler over HTTP
//! with an executor token, using the wire types in `heliotrope-api-spec`.
//! The transfer stack is the library beside this file; so far the binary
//! runs its benchmark. Registration, job claims and migrations by hand
//! arrive with the transfer-stack and dispatch issues.

mod bench;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "heliotrope-executor",
    version,
    about = "Heliotrope executor: moves VM memory, disk and network state between sites"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure the transfer stack; the last line of output is one JSON object.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// A sim VM moved to a cold and a warm destination over loopback TCP, against a plain copy.
    Transfer(bench::TransferBenchArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Bench(BenchCommand::Transfer(args)) => bench::transfer(&args).await,
    }
}
