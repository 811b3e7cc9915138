//! The test guests. `guest.S`: a boot sector of our own that keeps
//! rewriting ~99 MiB of its memory and prints a marker per pass, so that a
//! migration converges only with bandwidth to spare and a migrated guest
//! visibly runs on; and disks holding data for it. The Linux test guest
//! (`scripts/linux-guest`) as a VM spec, and what its serial log says. Built with binutils and
//! qemu-utils where they are needed (tests, the benchmark); nothing in a
//! deployment uses them.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use heliotrope_api_spec::{QemuDisk, QemuKernel, QemuSpec};

const SOURCE: &str = include_str!("guest.S");

fn run(dir: &Path, program: &str, args: &[&str]) -> io::Result<()> {
    let out = Command::new(program).args(args).current_dir(dir).output().map_err(|e| {
        io::Error::new(e.kind(), format!("{program} (binutils) is needed to build the test guest: {e}"))
    })?;
    if !out.status.success() {
        return Err(io::Error::other(format!("{program}: {}", String::from_utf8_lossy(&out.stderr))));
    }
    Ok(())
}

/// Builds the guest in `dir` as a 1 MiB raw boot image (SeaBIOS will not
/// boot a 512-byte one) and returns its path.
pub fn boot_image(dir: &Path) -> io::Result<PathBuf> {
    std::fs::write(dir.join("guest.S"), SOURCE)?;
    run(dir, "as", &["--32", "guest.S", "-o", "guest.o"])?;
    run(dir, "ld", &["-m", "elf_i386", "-Ttext=0x7c00", "--oformat", "binary", "guest.o", "-o", "guest.img"])?;
    let image = dir.join("guest.img");
    std::fs::File::options().write(true).open(&image)?.set_len(1 << 20)?;
    Ok(image)
}

/// A qcow2 disk of `size_mib` at `path` holding some data (a pattern and a
/// few extents of others), written with `qemu-io`.
pub fn disk_with_data(path: &Path, size_mib: u64) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.display().to_string();
    run(dir, "qemu-img", &["create", "-q", "-f", "qcow2", &name, &format!("{size_mib}M")])?;
    let writes = (0..6u64).map(|i| format!("write -P 0x{:x} {}M 2M", 0x50 + i, i * size_mib / 6));
    for write in writes {
        run(dir, "qemu-io", &["-f", "qcow2", "-c", &write, &name])?;
    }
    Ok(())
}

/// The test guest as a `qemu` VM: 128 MiB under TCG, booting `boot` (from
/// [`boot_image`]) with `disk` (from [`disk_with_data`], 256 MiB) as `disk0`.
pub fn spec(boot: &Path, disk: &Path) -> QemuSpec {
    QemuSpec {
        machine: "q35".into(),
        accel: "tcg".into(),
        memory_mib: 128,
        disks: vec![QemuDisk {
            node: "disk0".into(),
            path: disk.display().to_string(),
            format: "qcow2".into(),
            size_bytes: 256 << 20,
        }],
        boot_image: Some(boot.display().to_string()),
        kernel: None,
        qmp_socket: None,
    }
}

/// Where `scripts/linux-guest` keeps the Linux test guest (`HELIOTROPE_GUEST_DIR`, else its default).
pub fn linux_dir() -> PathBuf {
    std::env::var_os("HELIOTROPE_GUEST_DIR").map_or_else(|| "/var/tmp/heliotrope-guest".into(), PathBuf::from)
}

/// Where `scripts/linux-guest` left the Linux test guest, for a test: `None`
/// (a skip, said why) where it is not built; under CI (`CI` set) a missing
/// guest fails the test instead.
pub fn linux_dir_for_test() -> Option<PathBuf> {
    match built_linux_dir() {
        Ok(dir) => Some(dir),
        Err(why) => {
            assert!(std::env::var_os("CI").is_none(), "{why}");
            eprintln!("skipped: {why}");
            None
        }
    }
}

/// [`linux_dir`] if `scripts/linux-guest` has built the guest there, else why not.
pub fn built_linux_dir() -> Result<PathBuf, String> {
    let dir = linux_dir();
    if dir.join("stamp").exists() {
        Ok(dir)
    } else {
        Err(format!("the Linux test guest is not built at {} (scripts/linux-guest builds it)", dir.display()))
    }
}

/// The Linux test guest (built in `guest` by `scripts/linux-guest`) as a
/// `qemu` VM: 384 MiB under TCG, its 2 GiB data disk a copy made at `disk`,
/// warming 10% of its files into the page cache and writing 256 KiB/s.
pub fn linux_spec(guest: &Path, disk: &Path) -> io::Result<QemuSpec> {
    if !guest.join("stamp").exists() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("the Linux test guest is not built at {} (scripts/linux-guest builds it)", guest.display()),
        ));
    }
    std::fs::copy(guest.join("data.qcow2"), disk)?;
    Ok(linux_machine(guest, disk))
}

/// The Linux test guest's machine with its data disk at `disk`, made by the
/// caller (a copy of `guest/data.qcow2`, or an overlay over it).
pub fn linux_machine(guest: &Path, disk: &Path) -> QemuSpec {
    QemuSpec {
        machine: "q35".into(),
        accel: "tcg".into(),
        memory_mib: 384,
        disks: vec![QemuDisk {
            node: "disk0".into(),
            path: disk.display().to_string(),
            format: "qcow2".into(),
            size_bytes: 2 << 30,
        }],
        boot_image: None,
        kernel: Some(QemuKernel {
            path: guest.join("vmlinuz").display().to_string(),
            initrd: Some(guest.join("initrd.gz").display().to_string()),
            append: "console=ttyS0 quiet panic=-1 heliotrope.cache_pct=10 heliotrope.write_kib_s=256".into(),
        }),
        qmp_socket: None,
    }
}

/// The heartbeats the Linux test guest printed to the serial log in `dir`: (n, checksum).
pub fn heartbeats(dir: &Path) -> Vec<(u64, String)> {
    let log = std::fs::read(dir.join("serial.log")).unwrap_or_default();
    String::from_utf8_lossy(&log)
        .lines()
        .filter_map(|line| {
            let mut words = line.trim().strip_prefix("heartbeat ")?.split_whitespace();
            Some((words.next()?.parse().ok()?, words.next()?.to_owned()))
        })
        .collect()
}

/// Bytes of data the disk at `path` holds, as `qemu-img map` sees it (readable while QEMU runs).
pub fn allocated_bytes(path: &Path) -> io::Result<u64> {
    let out = Command::new("qemu-img").args(["map", "-U", "--output=json"]).arg(path).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!("qemu-img map: {}", String::from_utf8_lossy(&out.stderr))));
    }
    let extents: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(io::Error::other)?;
    let extents = extents.as_array().map(Vec::as_slice).unwrap_or_default();
    Ok(extents.iter().filter(|e| e["data"] == true).filter_map(|e| e["length"].as_u64()).sum())
}
