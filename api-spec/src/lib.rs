//! Wire types of the Heliotrope REST API, shared by the scheduler (which
//! serves them) and the executors (which call it).
//!
//! This crate is the only place that decides what the JSON looks like. It
//! holds no logic: validation of what a client sends lives in the
//! scheduler's `domain` module, persistence in its `db` module. Every type
//! derives `utoipa::ToSchema`, and the OpenAPI document generated from them
//! (plus the scheduler's routes) is committed beside this file as
//! `openapi.json`; a test fails when that file is stale.
//!
//! Layout: [`inventory`] (sites, links, VMs, groups, executors),
//! [`auth`] (roles and tokens), [`overview`] (the dashboard's overview and savings), [`error`] (the one error shape), and
//! [`page`] (cursor pagination), [`signals`] (carbon and price series),
//! [`plans`] (placement plans and their moves), [`migrations`] (the
//! jobs applied plans turn into), [`replication`] (keeping VMs' disks
//! warm at their standby sites), [`recovery`] (restarting a lost site's
//! VMs at their standbys), [`simulations`] (what-if replays of
//! past signals).

pub mod auth;
pub mod error;
pub mod inventory;
pub mod migrations;
pub mod overview;
pub mod page;
pub mod plans;
pub mod recovery;
pub mod replication;
pub mod signals;
pub mod simulations;

pub use auth::*;
pub use error::*;
pub use inventory::*;
pub use migrations::*;
pub use overview::*;
pub use page::*;
pub use plans::*;
pub use recovery::*;
pub use replication::*;
pub use signals::*;
pub use simulations::*;
