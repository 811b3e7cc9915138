//! What the two ends of a `libvirt` migration share: the VM's spec and
//! the job's socket directory, at the same path at both sites (the
//! source's QEMU dials the path its destination's QEMU listens at; each
//! executor carries the connection across).

use std::path::PathBuf;

use anyhow::Context;
use heliotrope_api_spec::{Assignment, LibvirtSpec};

use super::Worker;

/// The libvirt spec of the VM migration `a` moves.
pub(super) fn spec_of(a: &Assignment) -> anyhow::Result<LibvirtSpec> {
    serde_json::from_value(a.vm.driver_spec.clone()).context("the VM's driver_spec is not a libvirt spec")
}

/// The sockets of a libvirt migration, in its job's directory (removed
/// with it when this is dropped).
pub(super) struct JobSockets {
    pub dir: PathBuf,
    /// QEMU's memory streams (the destination's QEMU listens here).
    pub memory: PathBuf,
    /// The disks' NBD connections (the destination's QEMU serves here).
    pub disks: PathBuf,
    /// The source's way to the destination's libvirt daemon.
    pub control: PathBuf,
}

impl Drop for JobSockets {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl JobSockets {
    pub fn uri(path: &std::path::Path) -> String {
        format!("unix://{}", path.display())
    }
}

impl Worker {
    /// Job `id`'s socket directory, made empty (the destination's QEMU
    /// refuses to listen where a socket is left over).
    pub(super) fn libvirt_job(&self, id: i64) -> anyhow::Result<JobSockets> {
        let dir = self.args.libvirt_socket_dir.join(format!("job-{id}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("making {}", dir.display()))?;
        Ok(JobSockets {
            memory: dir.join("memory.sock"),
            disks: dir.join("nbd.sock"),
            control: dir.join("libvirt.sock"),
            dir,
        })
    }
}
