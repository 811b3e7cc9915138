//! The `sim` VMs this site runs (real bytes, simulated guests): each
//! booted from its images here, or made from the inventory's sizes scaled
//! by `--sim-mib-per-gib` if it has none. A migration's two sides, the
//! replication loop and a restart of a lost site's VM all ask for them
//! here, so that one VM boots once, one boot at a time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use heliotrope_api_spec::{AssignedVm, Assignment};
use heliotrope_executor::precopy::{DISK_IMAGE, MEMORY_IMAGE};
use heliotrope_executor::sim::{generate, ContentMix, SimImages, SimVm, Workload};

use super::{lock, Worker};

/// Sim VMs running here, by name.
pub(super) type Running = Arc<Mutex<HashMap<String, Arc<SimVm>>>>;

impl Worker {
    /// The running VM a migration moves, booted from its images here (made from the inventory's sizes if it has none).
    pub(super) fn vm(&self, a: &Assignment) -> anyhow::Result<Arc<SimVm>> {
        self.sim_vm(&a.migration.vm, &a.vm, a.migration.id as u64)
    }

    /// The bytes of a sim VM's image of `gib` GiB in the inventory: whole MiB, scaled.
    pub(super) fn sim_bytes(&self, gib: f64) -> u64 {
        ((gib * self.args.sim_mib_per_gib).ceil().max(1.0) as u64) << 20
    }

    /// The running sim VM `name`, booted from its images here, or made
    /// from `spec`'s sizes (content and guest seeded by `seed`) if it has none.
    pub(super) fn sim_vm(&self, name: &str, spec: &AssignedVm, seed: u64) -> anyhow::Result<Arc<SimVm>> {
        // Off the runtime's workers, waiting included: were every worker to wait here for another
        // boot, nothing would drive the runtime's timers, sockets and signals (SIGTERM) meanwhile.
        heliotrope_executor::blocking(|| self.boot_sim_vm(name, spec, seed))
    }

    fn boot_sim_vm(&self, name: &str, spec: &AssignedVm, seed: u64) -> anyhow::Result<Arc<SimVm>> {
        // One boot at a time: a migration's claim and the replication loop may both ask for the same VM.
        let _booting = lock(&self.booting);
        anyhow::ensure!(!self.disaster.is_fenced(), "this site is fenced: no VM starts or resumes here");
        if let Some(vm) = lock(&self.running).get(name) {
            return Ok(vm.clone());
        }
        let dir = self.vm_dir(name);
        let scale = self.args.sim_mib_per_gib;
        let images = if dir.join(MEMORY_IMAGE).exists() {
            SimImages { memory: dir.join(MEMORY_IMAGE), disk: dir.join(DISK_IMAGE) }
        } else {
            let (memory, disk) = (self.sim_bytes(spec.memory_gib), self.sim_bytes(spec.disk_gib));
            generate(&dir, memory as usize, disk as usize, &ContentMix::default(), 1, seed)?
        };
        let dirty = spec.dirty_rate_mbps * 1e6 / 8.0 * scale / 1024.0;
        let workload = Workload { memory_bytes_per_s: dirty, disk_bytes_per_s: dirty / 20.0, seed };
        let vm = Arc::new(SimVm::start(images, workload)?);
        lock(&self.running).insert(name.to_owned(), vm.clone());
        Ok(vm)
    }
}
