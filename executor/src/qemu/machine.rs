//! A QEMU process an executor runs (or adopts) for a `qemu` VM: started
//! from the VM's spec, with its QMP and serial in the VM's directory.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use heliotrope_api_spec::QemuSpec;

use super::qmp::{Qmp, QmpError};

/// Refuses what would make a bad command line (the scheduler checked the
/// spec; an executor checks again what reaches its command line).
fn check(spec: &QemuSpec) -> Result<(), String> {
    let word = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !word(&spec.machine) || !["tcg", "kvm"].contains(&spec.accel.as_str()) {
        return Err(format!("machine '{}' with accel '{}'", spec.machine, spec.accel));
    }
    let kernel = spec.kernel.iter().flat_map(|k| std::iter::once(k.path.as_str()).chain(k.initrd.as_deref()));
    let paths = spec.disks.iter().map(|d| d.path.as_str()).chain(spec.boot_image.as_deref()).chain(kernel);
    if let Some(bad) = paths.into_iter().find(|p| p.contains(',')) {
        return Err(format!("path {bad} holds a comma"));
    }
    if let Some(disk) = spec.disks.iter().find(|d| !word(&d.node) || !["qcow2", "raw"].contains(&d.format.as_str())) {
        return Err(format!("disk node '{}' format '{}'", disk.node, disk.format));
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("the QEMU spec: {0}")]
    Spec(String),
    #[error("starting QEMU: {0}")]
    Start(std::io::Error),
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error("qemu-img: {0}")]
    Image(String),
}

/// A running QEMU and its QMP session; killed when dropped unless it quit.
pub struct Machine {
    child: Option<tokio::process::Child>,
    pub qmp: Qmp,
    pub dir: PathBuf,
}

/// The QEMU binary (`HELIOTROPE_QEMU` overrides).
fn qemu_binary() -> String {
    std::env::var("HELIOTROPE_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into())
}

impl Machine {
    /// Starts QEMU for `spec` with its sockets and serial log in `dir`;
    /// `incoming` starts it paused, waiting for a migration (`-incoming defer -S`).
    pub async fn start(spec: &QemuSpec, dir: &Path, incoming: bool) -> Result<Machine, MachineError> {
        let child = command(spec, dir, incoming)?.kill_on_drop(true).spawn().map_err(MachineError::Start)?;
        let qmp = Qmp::connect(&dir.join("qmp.sock"), Duration::from_secs(20)).await?;
        Ok(Machine { child: Some(child), qmp, dir: dir.to_owned() })
    }

    /// Takes over a QEMU already running with its QMP socket at `socket` (it is not killed when dropped).
    pub async fn adopt(socket: &Path, dir: &Path) -> Result<Machine, MachineError> {
        let qmp = Qmp::connect(socket, Duration::from_secs(5)).await?;
        Ok(Machine { child: None, qmp, dir: dir.to_owned() })
    }

    /// The guest's serial output so far.
    pub fn serial(&self) -> Vec<u8> {
        std::fs::read(self.dir.join("serial.log")).unwrap_or_default()
    }

    /// The process id, if this executor started it.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// Asks QEMU to quit and waits for it (killing it after 10 s).
    pub async fn quit(mut self) {
        let _ = self.qmp.execute("quit", serde_json::json!({})).await;
        if let Some(mut child) = self.child.take() {
            if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
        }
    }
}

/// The command that runs QEMU for `spec` with its QMP socket (`qmp.sock`),
/// serial log and QEMU's own log in `dir` (made if missing); `incoming`
/// waits paused for a migration (`-incoming defer -S`).
pub fn command(spec: &QemuSpec, dir: &Path, incoming: bool) -> Result<tokio::process::Command, MachineError> {
    check(spec).map_err(MachineError::Spec)?;
    std::fs::create_dir_all(dir).map_err(MachineError::Start)?;
    let qmp_socket = dir.join("qmp.sock");
    let _ = std::fs::remove_file(&qmp_socket);
    let mut command = tokio::process::Command::new(qemu_binary());
    command
        .arg("-machine")
        .arg(format!("{},accel={}", spec.machine, spec.accel))
        .args(["-m", &spec.memory_mib.to_string(), "-display", "none", "-nodefaults", "-serial"])
        .arg(format!("file:{}", dir.join("serial.log").display()))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp_socket.display()));
    if let Some(boot) = &spec.boot_image {
        command
            .arg("-drive")
            .arg(format!("file={boot},format=raw,if=none,id=boot,readonly=on"))
            .args(["-device", "virtio-blk-pci,drive=boot,bootindex=0"]);
    }
    if let Some(kernel) = &spec.kernel {
        command.arg("-kernel").arg(&kernel.path).arg("-append").arg(&kernel.append);
        if let Some(initrd) = &kernel.initrd {
            command.arg("-initrd").arg(initrd);
        }
    }
    for disk in &spec.disks {
        command
            .arg("-drive")
            .arg(format!(
                "file={},format={},if=none,id=drive-{node},node-name={node}",
                disk.path,
                disk.format,
                node = disk.node
            ))
            .arg("-device")
            .arg(format!("virtio-blk-pci,drive=drive-{}", disk.node));
    }
    if incoming {
        command.args(["-incoming", "defer", "-S"]);
    }
    let log = std::fs::File::create(dir.join("qemu.log")).map_err(MachineError::Start)?;
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::from(log));
    Ok(command)
}

/// Makes disk `to` (of `format`) from the `size` bytes at `offset` in the
/// raw file `replica` (one disk of a replica that holds a VM's disks back
/// to back), written aside and renamed: a disk appears whole or not at all.
pub async fn disk_from_replica(
    replica: &Path,
    offset: u64,
    size: u64,
    format: &str,
    to: &Path,
) -> Result<(), MachineError> {
    let source = serde_json::json!({
        "driver": "raw", "offset": offset, "size": size,
        "file": {"driver": "file", "filename": replica.display().to_string()},
    });
    let part = to.with_extension("part");
    let output = tokio::process::Command::new("qemu-img")
        .args(["convert", "-q", "-O", format])
        .arg(format!("json:{source}"))
        .arg(&part)
        .output()
        .await
        .map_err(|e| MachineError::Image(e.to_string()))?;
    if !output.status.success() {
        return Err(MachineError::Image(String::from_utf8_lossy(&output.stderr).into_owned()));
    }
    std::fs::rename(&part, to).map_err(|e| MachineError::Image(e.to_string()))
}

/// The format `qemu-img info` finds an image in (a base image every site
/// holds, which no guest writes to).
async fn backing_format(path: &Path) -> Result<String, MachineError> {
    let output = tokio::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(path)
        .output()
        .await
        .map_err(|e| MachineError::Image(e.to_string()))?;
    if !output.status.success() {
        return Err(MachineError::Image(String::from_utf8_lossy(&output.stderr).into_owned()));
    }
    let info: serde_json::Value =
        serde_json::from_slice(&output.stdout).map_err(|e| MachineError::Image(e.to_string()))?;
    info["format"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| MachineError::Image(format!("{}: no format", path.display())))
}

/// Makes an empty disk of `size_bytes` at `path` (the destination's
/// target), over `backing` if given.
pub async fn create_disk(
    path: &Path,
    format: &str,
    size_bytes: u64,
    backing: Option<&Path>,
) -> Result<(), MachineError> {
    let mut command = tokio::process::Command::new("qemu-img");
    command.args(["create", "-q", "-f", format]);
    if let Some(backing) = backing {
        command.arg("-b").arg(backing).args(["-F", &backing_format(backing).await?]);
    }
    let output =
        command.arg(path).arg(size_bytes.to_string()).output().await.map_err(|e| MachineError::Image(e.to_string()))?;
    if !output.status.success() {
        return Err(MachineError::Image(String::from_utf8_lossy(&output.stderr).into_owned()));
    }
    Ok(())
}
