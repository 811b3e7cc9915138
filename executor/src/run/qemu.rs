//! The QEMU VMs this site runs: the machines this executor started (a VM
//! that migrated in, or restarted here) or adopted by their QMP sockets,
//! and what the two ends of a qemu migration share: the VM's spec, the
//! job's socket directory, the memory channels, and the memory image a
//! migration carries through this site (kept in its chunk index, so that
//! a VM that comes back finds most of its memory here already).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use heliotrope_api_spec::{Assignment, QemuSpec};
use heliotrope_executor::qemu::machine::Machine;
use heliotrope_executor::ram_image::RamImage;

use super::{lock, Worker};

/// QEMU VMs an executor runs, by VM name.
pub(super) type Machines = Mutex<HashMap<String, Arc<Machine>>>;

/// Memory channels of every qemu migration (both ends must agree).
pub(super) const MULTIFD_CHANNELS: u8 = 2;

/// The qemu spec of the VM migration `a` moves.
pub(super) fn spec_of(a: &Assignment) -> anyhow::Result<QemuSpec> {
    serde_json::from_value(a.vm.driver_spec.clone()).context("the VM's driver_spec is not a qemu spec")
}

impl Worker {
    /// Where a job's sockets live.
    pub(super) fn job_dir(&self, id: i64) -> anyhow::Result<PathBuf> {
        let dir = self.args.data_dir.join("jobs").join(id.to_string());
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// VM `name`'s QEMU: the one this executor runs, else adopted by its QMP socket.
    pub(super) async fn machine(&self, name: &str, spec: &QemuSpec) -> anyhow::Result<Arc<Machine>> {
        if let Some(machine) = lock(&self.machines).get(name).filter(|m| !m.qmp.is_closed()) {
            return Ok(machine.clone());
        }
        let dir = self.vm_dir(name);
        let socket = spec.qmp_socket.as_ref().map_or_else(|| dir.join("qmp.sock"), PathBuf::from);
        let machine = Arc::new(Machine::adopt(&socket, &dir).await.with_context(|| format!("adopting {name}"))?);
        lock(&self.machines).insert(name.to_owned(), machine.clone());
        Ok(machine)
    }

    /// A fresh memory image for migration `id` of `vm`; none (the memory is
    /// not kept, the migration goes on) if it cannot be made.
    pub(super) fn ram_image(&self, vm: &str, id: i64) -> Option<Arc<RamImage>> {
        match self.destination.new_ram_image(vm, id as u64) {
            Ok(image) => Some(image),
            Err(e) => {
                tracing::warn!(error = %e, "the migration's memory will not be kept");
                None
            }
        }
    }

    /// Drops the memory a migration carried (it did not move the VM).
    pub(super) fn drop_ram_image(&self, image: Option<&RamImage>) {
        if let Some(image) = image {
            self.destination.drop_ram_image(image);
        }
    }

    /// Keeps the memory a migration carried in this site's chunk index, off
    /// the async runtime (every page is hashed); failing that, drops it.
    pub(super) async fn keep_ram_image(&self, image: Option<Arc<RamImage>>) {
        let Some(image) = image else { return };
        let destination = self.destination.clone();
        let kept = tokio::task::spawn_blocking(move || {
            let kept = destination.keep_ram_image(&image);
            if kept.is_err() {
                destination.drop_ram_image(&image);
            }
            kept
        })
        .await;
        match kept {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the migration's memory is not kept"),
            Err(e) => tracing::warn!(error = %e, "keeping the migration's memory stopped"),
        }
    }
}
