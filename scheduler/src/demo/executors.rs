//! The demo's executors: one `heliotrope-executor run` child process per
//! site (sim driver), so that applied plans really move VMs: real bytes
//! over TCP on this machine, scaled down from the inventory's sizes.
//!
//! Their data lives in the demo's state (`demo::state`), so that a
//! restarted demo finds its VMs and recovers the migrations it left under
//! way. They die with the demo, however it ends: stopped by it (SIGTERM),
//! or killed by the kernel when it dies (`--exit-with-parent`, a
//! parent-death signal).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long the executors have to stop on SIGTERM before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Running executor processes, stopped when dropped (SIGTERM to all, then a kill).
pub struct Executors {
    children: Vec<(String, Child)>,
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
    /// token), speaking to the scheduler at `scheduler`, each keeping its
    /// data in a folder of `data` named after its site; sim VMs get
    /// `mib_per_gib` MiB per GiB.
    ///
    /// Call it from the thread that lives as long as the demo (the main
    /// one): the kernel signals the children when the thread that started
    /// them ends.
    pub fn start(
        bin: &Path,
        scheduler: &str,
        sites: &[(String, String)],
        mib_per_gib: f64,
        data: &Path,
    ) -> anyhow::Result<Self> {
        let mut executors = Executors { children: Vec::with_capacity(sites.len()) };
        let parent = std::process::id();
        for (site, token) in sites {
            // Each listens where the OS finds room; a port taken in between fails that executor loudly.
            let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let mut command = Command::new(bin);
            command
                .args(["run", "--site", site, "--listen", &format!("127.0.0.1:{port}"), "--driver", "sim"])
                .args(["--sim-mib-per-gib", &mib_per_gib.to_string(), "--exit-with-parent", &parent.to_string()])
                .arg("--data-dir")
                .arg(data.join(site))
                .env("HELIOTROPE_SCHEDULER", scheduler)
                .env("HELIOTROPE_TOKEN", token)
                .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
                .stdin(Stdio::null());
            let child = command.spawn().with_context(|| format!("starting the executor for {site}"))?;
            executors.children.push((site.clone(), child));
        }
        Ok(executors)
    }

    /// Kills them all at once, as a lost site loses them (SIGKILL: nothing is tidied).
    pub fn kill(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
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
        // All at once: SIGTERM lets each stop its work cleanly; any still running after the grace is killed.
        for (_, child) in &self.children {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline && self.children.iter_mut().any(|(_, c)| matches!(c.try_wait(), Ok(None))) {
            std::thread::sleep(Duration::from_millis(20));
        }
        for (site, child) in &mut self.children {
            if matches!(child.try_wait(), Ok(None)) {
                tracing::warn!(site, "the executor did not stop on SIGTERM; killing it");
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
