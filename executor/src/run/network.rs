//! The run worker's network steps at a cutover: it calls the site's
//! network driver (`heliotrope_executor::network`) and logs each step with
//! its duration in the migration's events. What only bridges a move (the
//! linux driver's tunnels) is held for `--network-hold-s`, remembered in
//! the data directory so a restarted executor still releases it, or
//! released at once by `heliotrope-executor network release`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use heliotrope_api_spec::{Assignment, JobRole, NetworkReport, NetworkStep};
use heliotrope_executor::network::linux::{Linux, LinuxOptions};
use heliotrope_executor::network::webhook::{Webhook, WebhookOptions};
use heliotrope_executor::network::{Network, NetworkMove, Timed};
use serde::{Deserialize, Serialize};

use super::Worker;

/// How this executor moves a VM's network.
#[derive(clap::Args, Debug, Clone)]
pub struct NetworkArgs {
    /// How a moved VM's addresses follow it: `none`, `linux` (a VXLAN
    /// tunnel from the old site and routes, through netlink) or `webhook`
    /// (the SDN controller is told the move and acknowledges it).
    #[arg(long = "network", value_enum, default_value = "none")]
    pub network_driver: NetworkDriver,
    /// `linux`: where a VM's NIC attaches at this site (`{vm}` stands for the VM's name).
    #[arg(long, default_value = "br-vms")]
    pub network_vm_link: String,
    /// `linux`: this site's tunnel endpoint (else the kernel picks one by its routes).
    #[arg(long)]
    pub network_tunnel_local: Option<IpAddr>,
    /// `linux`: VXLAN's UDP port.
    #[arg(long, default_value_t = 4789)]
    pub network_vxlan_port: u16,
    /// `webhook`: the SDN controller's URL, POSTed each move.
    #[arg(long)]
    pub network_webhook: Option<String>,
    /// `webhook`: a bearer token for the controller (from the environment).
    #[arg(long, env = "HELIOTROPE_NETWORK_WEBHOOK_TOKEN", hide_env_values = true)]
    pub network_webhook_token: Option<String>,
    /// `webhook`: how long the controller gets to acknowledge a move, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub network_webhook_timeout_s: f64,
    /// How long a move's forwarding stays once the VM runs at the new site,
    /// seconds: time for the operator's routing to converge.
    #[arg(long, default_value_t = 300.0)]
    pub network_hold_s: f64,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum NetworkDriver {
    None,
    Linux,
    Webhook,
}

impl NetworkArgs {
    /// The driver these flags describe (inside a tokio runtime: the linux one's netlink socket runs on it).
    pub fn open(&self) -> anyhow::Result<Network> {
        anyhow::ensure!(
            self.network_hold_s.is_finite() && self.network_hold_s >= 0.0,
            "--network-hold-s must be 0 or more"
        );
        Ok(match self.network_driver {
            NetworkDriver::None => Network::None,
            NetworkDriver::Linux => {
                anyhow::ensure!(
                    !self.network_vm_link.is_empty() && self.network_vm_link.replace("{vm}", "").len() <= 15,
                    "--network-vm-link names an interface (at most 15 characters beside {{vm}})"
                );
                Network::Linux(Linux::connect(LinuxOptions {
                    vm_link: self.network_vm_link.clone(),
                    local: self.network_tunnel_local,
                    vxlan_port: self.network_vxlan_port,
                })?)
            }
            NetworkDriver::Webhook => {
                let url = self.network_webhook.clone().context("--network webhook needs --network-webhook URL")?;
                let parsed = reqwest::Url::parse(&url).with_context(|| format!("--network-webhook {url}"))?;
                anyhow::ensure!(matches!(parsed.scheme(), "http" | "https"), "--network-webhook is an http(s) URL");
                anyhow::ensure!(
                    self.network_webhook_timeout_s.is_finite() && self.network_webhook_timeout_s > 0.0,
                    "--network-webhook-timeout-s must be more than 0"
                );
                Network::Webhook(Webhook::new(WebhookOptions {
                    url,
                    token: self.network_webhook_token.clone(),
                    timeout: Duration::from_secs_f64(self.network_webhook_timeout_s),
                }))
            }
        })
    }
}

/// A move's forwarding held at this site until `release_at` (seconds since the epoch).
#[derive(Debug, Serialize, Deserialize)]
struct Hold {
    network_move: NetworkMove,
    release_at: u64,
}

fn holds_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("network")
}

fn hold_path(data_dir: &Path, migration: i64) -> PathBuf {
    holds_dir(data_dir).join(format!("{migration}.json"))
}

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The holds kept in `data_dir`; a record that cannot be read is skipped, with a warning.
fn holds(data_dir: &Path) -> Vec<Hold> {
    let Ok(entries) = std::fs::read_dir(holds_dir(data_dir)) else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| {
            let read = std::fs::read(entry.path()).map_err(anyhow::Error::from);
            match read.and_then(|bytes| Ok(serde_json::from_slice::<Hold>(&bytes)?)) {
                Ok(hold) => Some(hold),
                Err(e) => {
                    tracing::warn!(path = %entry.path().display(), error = %e, "an unreadable network hold");
                    None
                }
            }
        })
        .collect()
}

/// `heliotrope-executor network release`: releases now what this site
/// holds for `migration` (or every move), as the hold time would.
pub async fn release_now(data_dir: &Path, network: &NetworkArgs, migration: Option<i64>) -> anyhow::Result<()> {
    let network = network.open()?;
    anyhow::ensure!(network.holds(), "only --network linux holds forwarding to release");
    let mut released = 0;
    for hold in holds(data_dir) {
        if migration.is_some_and(|id| id != hold.network_move.migration) {
            continue;
        }
        let done = network.release(&hold.network_move).await?.unwrap_or_default();
        std::fs::remove_file(hold_path(data_dir, hold.network_move.migration))?;
        println!("migration {}: {done}", hold.network_move.migration);
        released += 1;
    }
    if released == 0 {
        anyhow::bail!("nothing is held here{}", migration.map(|id| format!(" for migration {id}")).unwrap_or_default());
    }
    Ok(())
}

impl Worker {
    /// The move migration `a` makes, as this end's network driver needs it:
    /// the source resolves the destination executor's address as the tunnel's far end.
    pub(super) async fn network_move(&self, a: &Assignment) -> NetworkMove {
        let peer = match (a.role, a.peer_address.as_deref()) {
            (JobRole::Source, Some(address)) => match tokio::net::lookup_host(address).await {
                Ok(mut found) => found.next().map(|s| s.ip()),
                Err(e) => {
                    tracing::warn!(%address, error = %e, "the destination's address does not resolve");
                    None
                }
            },
            _ => None,
        };
        let addresses =
            a.vm.addresses
                .iter()
                .filter_map(|text| text.parse().inspect_err(|_| tracing::warn!(%text, "not an address")).ok())
                .collect();
        NetworkMove {
            migration: a.migration.id,
            vm: a.migration.vm.clone(),
            addresses,
            from_site: a.migration.from.clone(),
            to_site: a.migration.to.clone(),
            peer,
        }
    }

    /// Logs a network step in the migration's events (a failed one also
    /// here); one the driver had nothing to do in is not logged.
    pub(super) async fn log_network(&self, id: i64, step: NetworkStep, timed: Timed) {
        let (ok, detail) = match timed.outcome {
            Ok(None) => return,
            Ok(Some(done)) => (true, done),
            Err(e) => {
                tracing::warn!(?step, error = %e, "a network step failed");
                (false, e.to_string())
            }
        };
        let report = NetworkReport {
            step,
            driver: self.network.name().to_owned(),
            duration_ms: timed.duration.as_secs_f64() * 1000.0,
            ok,
            detail: detail.chars().take(1000).collect(),
        };
        let path = self.migration_path(id, "network");
        if let Err(e) = self.scheduler.post::<_, serde_json::Value>(&path, Some(&report)).await {
            tracing::warn!(error = %format!("{e:#}"), "logging a network step failed");
        }
    }

    /// Holds what bridged `m` here for the hold time, then releases it.
    pub(super) fn hold(self: &std::sync::Arc<Self>, m: NetworkMove) -> anyhow::Result<()> {
        if !self.network.holds() {
            return Ok(());
        }
        let hold_s = self.args.network.network_hold_s;
        let hold = Hold { network_move: m, release_at: now_s() + hold_s.ceil() as u64 };
        let path = hold_path(&self.args.data_dir, hold.network_move.migration);
        std::fs::create_dir_all(holds_dir(&self.args.data_dir))?;
        std::fs::write(&path, serde_json::to_vec(&hold)?)?;
        self.release_later(hold);
        Ok(())
    }

    /// After a restart: the holds this site kept go on to their release.
    pub(super) fn resume_holds(self: &std::sync::Arc<Self>) {
        for hold in holds(&self.args.data_dir) {
            self.release_later(hold);
        }
    }

    fn release_later(self: &std::sync::Arc<Self>, hold: Hold) {
        let worker = self.clone();
        tokio::spawn(async move {
            let wait = hold.release_at.saturating_sub(now_s());
            tokio::time::sleep(Duration::from_secs(wait)).await;
            let path = hold_path(&worker.args.data_dir, hold.network_move.migration);
            // Released by hand meanwhile: nothing left to do.
            if !path.exists() {
                return;
            }
            let m = &hold.network_move;
            let released = heliotrope_executor::network::timed(worker.network.release(m)).await;
            let ok = released.outcome.is_ok();
            worker.log_network(m.migration, NetworkStep::Release, released).await;
            if ok {
                let _ = std::fs::remove_file(&path);
            }
        });
    }
}
