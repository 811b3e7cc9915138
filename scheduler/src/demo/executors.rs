//! The demo's executors: one `heliotrope-executor run` child process per
//! site (sim driver), so that applied plans really move VMs: real bytes
//! over TCP on this machine, scaled down from the inventory's sizes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context;

/// Running executor processes, stopped when dropped (with SIGTERM first).
pub struct Executors {
    children: Vec<(String, Child)>,
    /// Their VMs, images and indexes; removed when dropped.
    _data: tempfile::TempDir,
}

/// The executor binary: `explicit`, else the one beside this binary.
pub fn binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let bin = match explicit {
        Some(path) => path.to_owned(),
        None => std::env::current_exe()?.with_file_name("heliotrope-executor"),
    };
    anyhow::ensure!(
        bin.exists(),
        "{} is not built: cargo build --release -p heliotrope-executor (scripts/demo does), or pass --executor-bin",
        bin.display()
    );
    Ok(bin)
}

impl Executors {
    /// Starts one executor for each of `sites` (a site and its executor
    /// token), speaking to the scheduler at `scheduler`; sim VMs get
    /// `mib_per_gib` MiB per GiB.
    pub fn start(bin: &Path, scheduler: &str, sites: &[(String, String)], mib_per_gib: f64) -> anyhow::Result<Self> {
        let data = tempfile::Builder::new().prefix("heliotrope-demo-executors-").tempdir()?;
        let mut children = Vec::with_capacity(sites.len());
        for (site, token) in sites {
            // Each listens where the OS finds room; a port taken in between fails that executor loudly.
            let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let child = Command::new(bin)
                .args(["run", "--site", site, "--listen", &format!("127.0.0.1:{port}"), "--driver", "sim"])
                .args(["--sim-mib-per-gib", &mib_per_gib.to_string(), "--data-dir"])
                .arg(data.path().join(site))
                .env("HELIOTROPE_SCHEDULER", scheduler)
                .env("HELIOTROPE_TOKEN", token)
                .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
                .stdin(Stdio::null())
                .spawn()
                .with_context(|| format!("starting the executor for {site}"))?;
            children.push((site.clone(), child));
        }
        Ok(Executors { children, _data: data })
    }

    pub fn len(&self) -> usize {
        self.children.len()
    }

    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }
}

impl Drop for Executors {
    fn drop(&mut self) {
        for (site, child) in &mut self.children {
            // SIGTERM lets an executor stop its work cleanly; it is killed if it has not within 5 s.
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
            }
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            if matches!(child.try_wait(), Ok(None)) {
                tracing::warn!(site, "the executor did not stop on SIGTERM; killing it");
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
