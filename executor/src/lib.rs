//! The executor's transfer stack, independent of any hypervisor: moving VM
//! images between sites' executors with far fewer bytes than a plain copy.
//!
//! Layout: [`content`] (pages and hashes), [`index`] (what a site holds,
//! by hash), [`sim`] (the `sim` driver's realistic VM content), [`wire`]
//! (the framed, versioned, authenticated protocol), [`transfer`]
//! (content-addressed image transfer with integrity checks), [`shaping`]
//! (token buckets to the schedule's caps), [`precopy`] (live migration of
//! a running guest's memory in rounds, with auto-converge and measured
//! downtime).
//!
//! Still to come (the transfer-stack issue): parallel streams, TLS, proactive disk caching, and progress reports.

pub mod content;
pub mod index;
pub mod precopy;
pub mod shaping;
pub mod sim;
pub mod transfer;
pub mod wire;
