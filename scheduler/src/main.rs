//! `heliotrope`: the scheduler binary. Reads the command line, sets up
//! logging and hands each subcommand to the library.

use clap::Parser;
use heliotrope::cli::{self, BenchCommand, Cli, Command, SignalsCommand};
use heliotrope::{bench, demo, http, startup, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cli { config, command } = Cli::parse();
    telemetry::init(config.log_format);
    startup::raise_descriptor_limit();
    match command {
        Command::Serve => startup::serve(&config).await,
        Command::Migrate => cli::migrate(&config).await,
        Command::Demo(args) => demo::run(&config, &args).await,
        Command::Openapi => {
            print!("{}", http::openapi::document());
            Ok(())
        }
        Command::Plan(args) => cli::plan(&config, &args).await,
        Command::Simulate(args) => cli::simulate(&config, &args).await,
        Command::Signals(SignalsCommand::Backfill(args)) => cli::backfill(&config, &args).await,
        Command::Signals(SignalsCommand::Export(args)) => cli::export(&config, &args).await,
        Command::Bench(BenchCommand::Api(args)) => bench::api(&config, &args).await,
        Command::Bench(BenchCommand::Ingest(args)) => bench::ingest(&config, &args).await,
        Command::Bench(BenchCommand::Planner(args)) => bench::planner(&args),
        Command::Bench(BenchCommand::Schedule(args)) => bench::schedule(&args),
        Command::Bench(BenchCommand::Claims(args)) => bench::claims(&config, &args).await,
        Command::Bench(BenchCommand::Dispatch(args)) => bench::dispatch(&config, &args).await,
        Command::Bench(BenchCommand::Recovery(args)) => bench::recovery(&config, &args).await,
    }
}
