//! The rules of Heliotrope's world, free of HTTP and SQL so that they can be
//! unit-tested on their own.
//!
//! Requests arrive as wire types (`heliotrope_api_spec`); the functions here
//! turn them into [`Valid`] values, which is the only form the persistence
//! layer accepts. A value that is not `Valid` has not been checked.

pub mod clock;
pub mod cost;
pub mod dispatch;
pub mod feeds;
pub mod inventory;
pub mod migration;
pub mod page;
pub mod planner;
pub mod rebalance;
pub mod recovery;
pub mod savings;
pub mod schedule;
pub mod signals;
pub mod simulation;
pub mod standby;
pub mod token;

use std::ops::Deref;

/// A wire value that has passed its domain checks. Only this module's
/// parse functions can make one.
#[derive(Debug, Clone, PartialEq)]
pub struct Valid<T>(T);

impl<T> Deref for Valid<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// A field that breaks a domain rule. `field` is the JSON path of the
/// offending value (e.g. `capacity.vcpus`), so the client can find it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationError { field: field.into(), message: message.into() }
    }
}
