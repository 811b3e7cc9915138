//! `heliotrope-executor`: the worker that runs migrations at a site.
//!
//! It holds no database credentials: it talks to the scheduler over HTTP
//! with an executor token, using the wire types in `heliotrope-api-spec`.
//! The transfer stack is the library beside this file (content-addressed,
//! authenticated, integrity-checked image transfer); the binary does not
//! run it yet: its commands, registration and job claims arrive with the
//! transfer-stack and dispatch issues, and until then it refuses to
//! pretend otherwise.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "heliotrope-executor",
    version,
    about = "Heliotrope executor: moves VM memory, disk and network state between sites",
    long_about = "Heliotrope executor: moves VM memory, disk and network state between sites.\n\n\
        Not yet able to run: registration with the scheduler, job claims and the transfer stack \
        are still to be built."
)]
struct Cli {}

fn main() {
    Cli::parse();
    eprintln!("heliotrope-executor {}: nothing to run yet (see --help)", env!("CARGO_PKG_VERSION"));
    std::process::exit(2);
}
