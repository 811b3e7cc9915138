//! The executor's transfer stack, independent of any hypervisor: moving VM
//! images between sites' executors with far fewer bytes than a plain copy.
//!
//! Layout: [`content`] (pages, hashes, where pages are read from),
//! [`index`] (what a site holds, by hash), [`sim`] (the `sim` driver: VMs
//! whose bytes are real and whose guest is simulated), [`wire`] (the
//! framed, versioned, authenticated protocol), [`tls`] (mutual TLS when
//! certificates are configured), [`transfer`] (what both sides share:
//! counters, progress, errors), [`source`] and [`destination`] (the two
//! ends of a job's session over parallel streams), [`shaping`] (token
//! buckets to the schedule's caps; replication yielding to migrations),
//! [`precopy`] (live migration of a running VM in rounds, with
//! auto-converge and measured downtime), [`replica`] (proactive disk
//! caching at standby sites), [`network`] (the VM's addresses follow it
//! to the new site: network continuity after the cutover), [`qemu`] (the
//! `qemu` driver, with [`tunnel`] carrying its streams and [`ram_image`]
//! the memory a site keeps of the VMs that left or arrived), [`libvirt`]
//! (the `libvirt` driver: libvirt's domains, their streams through the
//! same tunnels), and [`client`] (the scheduler's dispatch API, typed, as executors speak to it).

pub mod client;
pub mod content;
pub mod destination;
pub mod index;
pub mod libvirt;
pub mod nbd;
pub mod network;
pub mod precopy;
pub mod qemu;
pub mod ram_image;
pub mod replica;
pub mod shaping;
pub mod sim;
pub mod source;
pub mod tls;
pub mod transfer;
pub mod tunnel;
pub mod wire;

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// A mutex's guard, whether or not a panicking holder poisoned it (the
/// data stays usable): the one way the executor takes its locks.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `work`, which may block (a disk read, a QEMU's NBD export that
/// answers slowly or not until its timeout), without stalling the async
/// runtime: on a multi-thread runtime (the executor's) its worker hands its
/// other tasks on first. Elsewhere (a single-thread test) it simply runs.
pub fn blocking<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|runtime| runtime.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

/// A read lock's guard, poisoned or not (as [`lock`]).
pub fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

/// A write lock's guard, poisoned or not (as [`lock`]).
pub fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}
