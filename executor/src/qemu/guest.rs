//! The test guest (`guest.S`): a boot sector of our own that keeps
//! rewriting ~99 MiB of its memory and prints a marker per pass, so that a
//! migration converges only with bandwidth to spare and a migrated guest
//! visibly runs on; and disks holding data for it. Built with binutils and
//! qemu-utils where they are needed (tests, the benchmark); nothing in a
//! deployment uses them.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use heliotrope_api_spec::{QemuDisk, QemuSpec};

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
