//! Two libvirt daemons on one machine standing in for two hosts
//! (`scripts/libvirt-pair`: each in its own mount namespace, so that one
//! path is a different file on each side, as on two hosts), and the test
//! guests as libvirt domains: for the `libvirt` driver's tests and its
//! benchmark. Nothing in a deployment uses it.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use heliotrope_api_spec::{LibvirtDisk, LibvirtSpec, QemuSpec};
use virt::domain::Domain;

use super::LibvirtError;

/// The script that runs the pair.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/libvirt-pair")
}

/// One of the pair: a libvirt daemon in its own mount namespace.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    /// Its URI, from the root namespace.
    pub uri: String,
    /// Its tree: `root/lib` is what it sees as /var/lib/libvirt.
    pub root: PathBuf,
    dir: PathBuf,
}

impl Host {
    /// `program` run in this host's mount namespace (seeing files as its libvirt and QEMUs do).
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new(script());
        command.arg("exec").arg(&self.dir).arg(&self.name).arg("--").arg(program);
        command
    }

    /// Where `inside` (a path under /var/lib/libvirt, as this host sees it) is from the root namespace.
    pub fn outside(&self, inside: &Path) -> PathBuf {
        match inside.strip_prefix("/var/lib/libvirt") {
            Ok(rest) => self.root.join("lib").join(rest),
            Err(_) => inside.to_owned(),
        }
    }
}

/// The two daemons, stopped (with every domain they run) when dropped.
pub struct Pair {
    dir: PathBuf,
    pub a: Host,
    pub b: Host,
}

impl Pair {
    /// Starts a pair with its trees under `dir` (anything there is replaced).
    pub fn start(dir: &Path) -> io::Result<Pair> {
        let output = Command::new(script()).arg("start").arg(dir).output()?;
        if !output.status.success() {
            return Err(io::Error::other(format!(
                "scripts/libvirt-pair start: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        let said = String::from_utf8_lossy(&output.stdout).into_owned();
        let value = |key: &str| {
            said.lines()
                .find_map(|line| line.strip_prefix(&format!("{key}=")))
                .map(str::to_owned)
                .ok_or_else(|| io::Error::other(format!("scripts/libvirt-pair start said no {key}: {said}")))
        };
        let host = |name: &str| -> io::Result<Host> {
            Ok(Host {
                name: name.to_owned(),
                uri: value(&format!("{name}_uri"))?,
                root: value(&format!("{name}_root"))?.into(),
                dir: dir.to_owned(),
            })
        };
        Ok(Pair { dir: dir.to_owned(), a: host("a")?, b: host("b")? })
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("stop").arg(&self.dir).output();
    }
}

/// Where a domain of the pair keeps its files, as its host sees them.
pub fn domain_dir(name: &str) -> PathBuf {
    Path::new("/var/lib/libvirt/images").join(name)
}

/// A test guest (a `qemu` spec from [`crate::qemu::guest`]) as a libvirt
/// domain `name`: the same machine, memory, kernel or boot image and
/// disks (each a virtio disk, `vda` on), its serial log in its
/// [`domain_dir`] as `serial.log`.
pub fn domain_xml(name: &str, spec: &QemuSpec) -> String {
    let mut os = String::new();
    let mut disks = String::new();
    if let Some(kernel) = &spec.kernel {
        os += &format!("<kernel>{}</kernel>", kernel.path);
        if let Some(initrd) = &kernel.initrd {
            os += &format!("<initrd>{initrd}</initrd>");
        }
        os += &format!("<cmdline>{}</cmdline>", kernel.append);
    }
    if let Some(boot) = &spec.boot_image {
        disks += &format!(
            "<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{boot}'/>\
             <target dev='sda' bus='sata'/><readonly/><boot order='1'/></disk>"
        );
    }
    for (disk, target) in spec.disks.iter().zip(targets()) {
        disks += &format!(
            "<disk type='file' device='disk'><driver name='qemu' type='{}' cache='none'/><source file='{}'/>\
             <target dev='{target}' bus='virtio'/></disk>",
            disk.format, disk.path
        );
    }
    let serial = domain_dir(name).join("serial.log");
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>{memory}</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='{machine}'>hvm</type>{os}</os><features><acpi/><apic/></features>\
         <cpu mode='custom' match='exact'><model fallback='forbid'>qemu64</model></cpu>\
         <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>\
         <devices><emulator>/usr/bin/qemu-system-x86_64</emulator>{disks}\
         <controller type='usb' model='none'/><serial type='file'><source path='{serial}'/></serial>\
         <memballoon model='none'/></devices></domain>",
        memory = spec.memory_mib,
        machine = spec.machine,
        serial = serial.display(),
    )
}

/// The virtio targets disks get, in order.
fn targets() -> impl Iterator<Item = String> {
    (b'a'..=b'z').map(|c| format!("vd{}", c as char))
}

/// The `libvirt` spec of a domain [`domain_xml`] made from `spec`.
pub fn libvirt_spec(name: &str, spec: &QemuSpec, copy_storage: heliotrope_api_spec::CopyStorage) -> LibvirtSpec {
    let disks = spec.disks.iter().zip(targets()).map(|(disk, target)| LibvirtDisk {
        target,
        path: disk.path.clone(),
        format: disk.format.clone(),
        size_bytes: disk.size_bytes,
        backing: None,
    });
    LibvirtSpec { domain: name.to_owned(), copy_storage, disks: disks.collect() }
}

/// Defines domain `xml` at the libvirt at `uri` (persistent) and starts it.
pub fn define_and_start(uri: &str, xml: &str) -> Result<(), LibvirtError> {
    let conn = super::connect(uri)?;
    let dom = Domain::define_xml(&conn, xml)?;
    dom.create()?;
    Ok(())
}
