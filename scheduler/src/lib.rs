//! Heliotrope's scheduler: the inventory of sites, links and VMs, and (as
//! they arrive) signals, plans, migration schedules and dispatch, behind a
//! REST API.
//!
//! Layout, from the bottom of the module graph up (each module imports
//! only those above it in this list; `tests/api/tidy.rs` checks that the
//! graph has no cycle):
//! - [`domain`]: the rules, free of HTTP and SQL (validation, planner, schedule, cost model).
//! - [`synthetic`]: made-up regions, fleets and signals (demo, benchmarks, what-if default).
//! - [`config`]: the settings every subcommand shares.
//! - [`db`]: all SQL, one module per aggregate, and the embedded migrations.
//! - [`metrics`]: the Prometheus registry the server and the services count into.
//! - The services: [`dispatcher`] (which migrations start, at what cap),
//!   [`planning`] (a stored plan from inventory and signals),
//!   [`evacuation`] (a site's VMs out before a deadline), [`rebalancer`]
//!   (the hourly loop), [`overview`] (the fleet at a glance, savings to
//!   date), [`simulation`] (what-if replays), [`feeds`] (the providers' polling).
//! - [`http`]: axum routes, authentication, the error mapping, OpenAPI.
//! - [`startup`]: building and running the server; [`telemetry`]: logging.
//! - [`demo`]: the one-command demo; [`bench`]: benchmarks; [`cli`]: the command line.

pub mod bench;
pub mod cli;
pub mod config;
pub mod db;
pub mod demo;
pub mod dispatcher;
pub mod domain;
pub mod evacuation;
pub mod feeds;
pub mod http;
pub mod metrics;
pub mod overview;
pub mod planning;
pub mod rebalancer;
pub mod simulation;
pub mod startup;
pub mod synthetic;
pub mod telemetry;
