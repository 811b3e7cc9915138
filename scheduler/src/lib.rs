//! Heliotrope's scheduler: the inventory of sites, links and VMs, and (as
//! they arrive) signals, plans, migration schedules and dispatch, behind a
//! REST API.
//!
//! Layout:
//! - [`domain`]: the rules, free of HTTP and SQL (validation, pagination, tokens).
//! - [`db`]: all SQL, one module per aggregate, and the embedded migrations.
//! - [`http`]: axum routes, authentication, metrics, the error mapping, OpenAPI.
//! - [`fleet`]: the fleet at a glance for the dashboard (overview, savings to date).
//! - [`planning`]: the plans service (inventory and signals in, a stored plan out);
//!   [`evacuation`]: a site's VMs out live before a deadline, or their replicas synced a last time.
//! - [`rebalancer`]: the hourly loop one replica at a time runs (plan, maybe apply).
//! - [`dispatcher`]: which migrations start and at what cap, while they run.
//! - [`simulation`]: what-if replays of carbon and price traces through the policies, and their reports.
//! - [`feeds`]: polling the carbon and price providers.
//! - [`startup`]: building and running the server; [`config`] and [`telemetry`].
//! - [`demo`]: the one-command demo (fleet, private Postgres); [`bench`]: benchmarks.

pub mod bench;
pub mod config;
pub mod db;
pub mod demo;
pub mod dispatcher;
pub mod domain;
pub mod evacuation;
pub mod feeds;
pub mod fleet;
pub mod http;
pub mod planning;
pub mod rebalancer;
pub mod simulation;
pub mod startup;
pub mod telemetry;
