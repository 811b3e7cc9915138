//! The demo's one lifetime. Its database and what lives outside it (the
//! executors' VMs, images and indexes, and the tokens the executors and
//! the admin sign in with) are kept together: the database is marked with
//! an instance (`db::demo`) that names the directory holding the rest.
//! A restarted demo resumes both; `--reset` empties both; a database and
//! a directory that do not belong together are refused, not half-used.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use heliotrope_api_spec::Role;
use sqlx::PgPool;

use crate::db;
use crate::domain::token::{generate_secret, secret_digest};
use crate::synthetic::regions::Region;

/// Where the demo keeps what it keeps: `explicit`, else the user's data
/// directory (`$XDG_DATA_HOME/heliotrope`); as root, /var/tmp/heliotrope-demo
/// (the private PostgreSQL cluster's user must reach it, and root's home is closed).
pub fn base_dir(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = explicit {
        return Ok(dir.to_owned());
    }
    if nix::unistd::Uid::effective().is_root() {
        return Ok(PathBuf::from("/var/tmp/heliotrope-demo"));
    }
    let data_home = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .context("neither XDG_DATA_HOME nor HOME is set: pass --state-dir")?;
    Ok(data_home.join("heliotrope"))
}

/// What the demo was asked to start with.
pub struct Wanted<'a> {
    /// The regions named with `--sites` (None: not named, the defaults or whatever the database holds).
    pub regions: Option<&'a [Region]>,
    /// Start afresh (`--reset`).
    pub reset: bool,
    /// The database is the demo's own (`heliotrope_demo`), not one configured for it.
    pub own_database: bool,
}

/// A demo instance's directory.
pub struct DemoState {
    dir: PathBuf,
}

/// How a started demo found its state.
pub enum Found {
    /// An empty database: seed it.
    Empty,
    /// A demo that ran before, with its executors' state: resume it.
    Resumed,
}

/// Matches the database with its directory under `base` (resetting both
/// first when asked), and says whether there is a fleet to resume.
pub async fn open(pool: &PgPool, base: &Path, wanted: &Wanted<'_>) -> anyhow::Result<(DemoState, Found)> {
    let instance = db::demo::instance(pool).await?;
    let empty = super::is_empty(pool).await?;
    if wanted.reset {
        if instance.is_none() && !empty && !wanted.own_database {
            bail!(
                "--reset empties only a database the demo made, and this one holds an inventory the demo did not make"
            );
        }
        if let Some(instance) = &instance {
            let dir = instance_dir(base, instance);
            if dir.exists() {
                std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
            }
        }
        db::empty_every_table(pool).await.context("emptying the demo database")?;
        tracing::info!("--reset: the demo's database and executors start afresh");
        return Ok((fresh(pool, base).await?, Found::Empty));
    }
    match instance {
        None if empty => Ok((fresh(pool, base).await?, Found::Empty)),
        None => bail!(
            "this database holds an inventory that no demo made (or one from before demos kept their executors' \
             state); run `heliotrope demo --reset` to empty it and start afresh"
        ),
        Some(instance) => {
            let dir = instance_dir(base, &instance);
            if !dir.exists() {
                bail!(
                    "the demo database belongs to demo {instance}, whose executors' state is not at {}; \
                     run `heliotrope demo --reset` to start afresh (or pass the --state-dir it ran with)",
                    dir.display()
                );
            }
            if empty {
                return Ok((DemoState { dir }, Found::Empty));
            }
            if let Some(regions) = wanted.regions {
                check_sites(pool, regions).await?;
            }
            Ok((DemoState { dir }, Found::Resumed))
        }
    }
}

/// A new instance: its directory, and the database marked with it.
async fn fresh(pool: &PgPool, base: &Path) -> anyhow::Result<DemoState> {
    let instance = format!("{:016x}", rand::random::<u64>());
    let dir = instance_dir(base, &instance);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    db::demo::mark(pool, &instance).await?;
    Ok(DemoState { dir })
}

fn instance_dir(base: &Path, instance: &str) -> PathBuf {
    base.join(format!("demo-{instance}"))
}

/// Refuses a `--sites` that names other sites than the demo database holds.
async fn check_sites(pool: &PgPool, regions: &[Region]) -> anyhow::Result<()> {
    let mut held = super::site_names(pool).await?;
    let mut asked: Vec<String> = regions.iter().map(|r| r.zone.to_string()).collect();
    held.sort();
    asked.sort();
    if held != asked {
        bail!(
            "the demo database already holds {} sites ({}), not the {} asked for with --sites; \
             run with --reset to start afresh with them, or leave out --sites to resume",
            held.len(),
            held.join(", "),
            asked.len()
        );
    }
    Ok(())
}

impl DemoState {
    /// Where the executors keep their VMs, images and indexes (a folder per site).
    pub fn executors_dir(&self) -> PathBuf {
        self.dir.join("executors")
    }

    /// The secret of the demo's token `name` (role `role`, serving
    /// `site`): the one kept here while the database still knows it, else
    /// a new token, kept here (readable by this user alone).
    pub async fn token(&self, pool: &PgPool, name: &str, role: Role, site: Option<&str>) -> anyhow::Result<String> {
        let path = self.dir.join(format!("{name}.token"));
        if let Ok(kept) = std::fs::read_to_string(&path) {
            let kept = kept.trim().to_owned();
            if db::tokens::authenticate(pool, &secret_digest(&kept)).await?.is_some_and(|(_, r)| r == role) {
                return Ok(kept);
            }
        }
        let secret = generate_secret();
        db::tokens::insert(pool, &format!("demo-{name}"), role, site, &secret_digest(&secret)).await?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("keeping a token in {}", path.display()))?;
        file.write_all(secret.as_bytes())?;
        Ok(secret)
    }
}
