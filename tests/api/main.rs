//! End-to-end tests of the REST API: a real server over real HTTP, a fresh
//! Postgres database per test. `DATABASE_URL` names the server on which
//! `#[sqlx::test]` makes those databases.

mod auth;
mod backfill;
mod crashes;
mod dashboard;
mod demo;
mod dispatch;
mod executors;
mod feeds;
mod groups;
mod hostile;
mod libvirt;
mod links;
mod migrations;
mod network;
mod ops;
mod pagination;
mod plans;
mod qemu;
mod qemu_linux;
mod read_cache;
mod rebalancer;
mod recovery;
mod session;
mod signals;
mod simulations;
mod sites;
mod standbys;
mod tidy;
mod tokens;
mod vms;
mod wan;
mod whole_loop;
