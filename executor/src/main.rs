//! `heliotrope-executor`: the worker that runs migrations at a site.
//!
//! It holds no database credentials: it talks to the scheduler over HTTP
//! with an executor token, using the wire types in `heliotrope-api-spec`.
//! The transfer stack is the library beside this file; the binary works as
//! a site's executor (`run`: registers, claims migrations, moves VMs), runs
//! one migration by hand (`receive` at the destination, `migrate` at the
//! source), releases a site's network forwarding by hand (`network
//! release`), and the benchmark.

mod bench;
mod by_hand;
mod run;

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
    /// Work as a site's executor: register with the scheduler, claim migrations, move VMs.
    Run(Box<run::RunArgs>),
    /// Receive one migration (the job's secret from HELIOTROPE_JOB_SECRET); prints its address first.
    Receive(by_hand::ReceiveArgs),
    /// Send images to a receiving executor (the job's secret from HELIOTROPE_JOB_SECRET).
    Migrate(by_hand::MigrateArgs),
    /// Measure the transfer stack; the last line of output is one JSON object.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// The network this site holds for moved VMs.
    #[command(subcommand)]
    Network(NetworkCommand),
}

#[derive(Subcommand)]
enum NetworkCommand {
    /// Release now what bridges moves at this site (the operator's routing
    /// has converged), instead of after the hold time.
    Release(run::ReleaseArgs),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// A sim VM moved to a cold and a warm destination over loopback TCP, against a plain copy.
    Transfer(bench::TransferBenchArgs),
    /// A busy QEMU guest and its disk migrated live QEMU to QEMU and through the executors, same cap.
    Qemu(bench::QemuBenchArgs),
    /// A libvirt domain migrated live libvirt to libvirt directly and through the executors, same cap.
    Libvirt(bench::LibvirtBenchArgs),
}

/// How long work still running (a blocking write, say) may hold up the exit once the command is done.
const EXIT_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        // Colours on a terminal only: a log file or journal gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let command = Cli::parse().command;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let done = runtime.block_on(async {
        match command {
            Command::Run(args) => run::run(*args).await,
            Command::Receive(args) => by_hand::receive_one(&args).await,
            Command::Migrate(args) => by_hand::migrate(&args).await,
            Command::Bench(BenchCommand::Transfer(args)) => bench::transfer(&args).await,
            Command::Bench(BenchCommand::Qemu(args)) => bench::qemu(&args).await,
            Command::Bench(BenchCommand::Libvirt(args)) => bench::libvirt(&args).await,
            Command::Network(NetworkCommand::Release(args)) => run::release_now(&args).await,
        }
    });
    // A stopped executor exits promptly: it does not wait out its blocking work (a supervisor's grace is short).
    runtime.shutdown_timeout(EXIT_GRACE);
    done
}
