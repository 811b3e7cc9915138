//! A private, throwaway PostgreSQL cluster for `heliotrope demo` on a
//! machine with no database configured and none listening on
//! localhost:5432. It uses the system's PostgreSQL binaries (initdb,
//! pg_ctl), keeps its data in the demo's state directory, listens on a
//! unix socket only, and is stopped when the demo exits.
//!
//! PostgreSQL refuses to run as root; when the demo runs as root, the
//! cluster belongs to the `postgres` system user (as on any packaged
//! install) and lives under /var/tmp, since root's home is closed to it.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

/// A running private cluster, stopped when dropped (whatever ends the demo).
pub struct LocalPostgres {
    bin_dir: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    as_postgres_user: bool,
}

/// Whether a PostgreSQL server answers on localhost:5432.
pub fn localhost_answers() -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], 5432));
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

fn find_bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    // Debian keeps server binaries out of PATH, one directory per major version.
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    candidates.sort();
    candidates.pop().context(
        "no PostgreSQL server binaries found (initdb, pg_ctl); install PostgreSQL or set HELIOTROPE_DATABASE_URL",
    )
}

impl LocalPostgres {
    /// Initialises the cluster under `base` on first use, then starts it.
    pub fn start(base: &Path) -> anyhow::Result<LocalPostgres> {
        let bin_dir = find_bin_dir()?;
        let as_postgres_user = nix::unistd::Uid::effective().is_root();
        let pg = LocalPostgres {
            bin_dir,
            data_dir: base.join("postgres"),
            socket_dir: base.join("socket"),
            as_postgres_user,
        };
        std::fs::create_dir_all(base).with_context(|| format!("creating {}", base.display()))?;
        std::fs::create_dir_all(&pg.socket_dir)?;
        if as_postgres_user {
            // The cluster's directories only: the demo's executors' state beside them stays root's.
            for dir in [&pg.data_dir, &pg.socket_dir] {
                std::fs::create_dir_all(dir)?;
                pg.run("chown", &["-R", "postgres:postgres", &dir.to_string_lossy()], false)?;
            }
            pg.run("chown", &["postgres:postgres", &base.to_string_lossy()], false)?;
        }
        // A demo that died without stopping its cluster left it running: use it.
        let data = pg.data_dir.to_string_lossy().into_owned();
        if pg.data_dir.join("PG_VERSION").exists() && pg.pg("pg_ctl", &["-D", &data, "status"]).is_ok() {
            tracing::info!("reusing the private PostgreSQL cluster that is still running");
            return Ok(pg);
        }
        if !pg.data_dir.join("PG_VERSION").exists() {
            tracing::info!(data_dir = %pg.data_dir.display(), "initialising a private PostgreSQL cluster");
            let data = pg.data_dir.to_string_lossy().into_owned();
            pg.pg("initdb", &["-D", &data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-instructions"])?;
        }
        // Unix socket only, and only for its owner: trust auth must not mean trust everyone on the machine.
        let options = format!("-c listen_addresses='' -c unix_socket_permissions=0700 -k {}", pg.socket_dir.display());
        let log = base.join("postgres.log").to_string_lossy().into_owned();
        pg.pg("pg_ctl", &["-D", &data, "-o", &options, "-l", &log, "-w", "-t", "30", "start"])?;
        Ok(pg)
    }

    /// A connection URL for `database` over the cluster's socket.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@localhost/{database}?host={}", self.socket_dir.display())
    }

    /// Stops the cluster, waiting for it to finish.
    fn stop(&self) -> anyhow::Result<()> {
        let data = self.data_dir.to_string_lossy().into_owned();
        self.pg("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"])
    }

    fn pg(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let program = self.bin_dir.join(tool);
        self.run(&program.to_string_lossy(), args, self.as_postgres_user)
    }

    fn run(&self, program: &str, args: &[&str], as_postgres_user: bool) -> anyhow::Result<()> {
        let mut command = if as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", program]);
            c
        } else {
            Command::new(program)
        };
        // A working directory the postgres user may enter.
        let output =
            command.args(args).current_dir(Path::new("/")).output().with_context(|| format!("running {program}"))?;
        if !output.status.success() {
            bail!("{program} failed: {}", String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(())
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        match self.stop() {
            Ok(()) => tracing::info!("private PostgreSQL cluster stopped"),
            Err(error) => tracing::warn!(error = format!("{error:#}"), "cannot stop the private PostgreSQL cluster"),
        }
    }
}
