//! The run worker's network steps at a cutover: it calls the site's
//! network driver (`heliotrope_executor::network`) and logs each step with
//! its duration in the migration's events. What only bridges a move (the
//! linux driver's tunnels) is held for `--network-hold-s`, remembered in
//! the data directory so a restarted executor still releases it, or
//! released at once by `heliotrope-executor network release`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use heliotrope_api_spec::{Assignment, NetworkDriver, NetworkReport, NetworkStep};
use heliotrope_executor::client::Scheduler;
use heliotrope_executor::network::linux::{Linux, LinuxOptions};
use heliotrope_executor::network::webhook::{Webhook, WebhookOptions};
use heliotrope_executor::network::{timed, tunnel_key, Network, NetworkMove, Timed};
use serde::{Deserialize, Serialize};

use super::Worker;

/// How this executor moves a VM's network.
#[derive(clap::Args, Debug, Clone)]
pub struct NetworkArgs {
    /// How a moved VM's addresses follow it: `none`, `linux` (a VXLAN
    /// tunnel from the old site and routes, through netlink) or `webhook`
    /// (the SDN controller is told the move and acknowledges it).
    #[arg(long = "network", value_enum, default_value = "none")]
    pub network_driver: NetworkArg,
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
pub enum NetworkArg {
    None,
    Linux,
    Webhook,
}

impl NetworkArgs {
    /// The driver these flags describe (inside a tokio runtime: the linux one's netlink socket runs on it).
    pub fn open(&self) -> anyhow::Result<Network> {
        anyhow::ensure!(
            self.network_hold_s.is_finite() && (0.0..=604_800.0).contains(&self.network_hold_s),
            "--network-hold-s is 0 to 604800 (a week)"
        );
        Ok(match self.network_driver {
            NetworkArg::None => Network::None,
            NetworkArg::Linux => {
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
            NetworkArg::Webhook => {
                let url = self.network_webhook.clone().context("--network webhook needs --network-webhook URL")?;
                let parsed = reqwest::Url::parse(&url).with_context(|| format!("--network-webhook {url}"))?;
                anyhow::ensure!(matches!(parsed.scheme(), "http" | "https"), "--network-webhook is an http(s) URL");
                anyhow::ensure!(
                    self.network_webhook_timeout_s.is_finite()
                        && self.network_webhook_timeout_s > 0.0
                        && self.network_webhook_timeout_s <= 600.0,
                    "--network-webhook-timeout-s is more than 0 and at most 600"
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

/// A move's forwarding held at this site until `release_at` (seconds since
/// the epoch), by `executor` (who logs its release).
#[derive(Debug, Serialize, Deserialize)]
struct Hold {
    network_move: NetworkMove,
    release_at: u64,
    executor: i64,
}

/// `heliotrope-executor network release`.
#[derive(clap::Args, Debug)]
pub struct ReleaseArgs {
    /// The site executor's data directory.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Only this migration's move (else every move held here).
    #[arg(long)]
    pub migration: Option<i64>,
    /// The scheduler, to log the release in the migration's events (with
    /// the executor's token, `HELIOTROPE_TOKEN`); without it nothing is logged.
    #[arg(long, env = "HELIOTROPE_SCHEDULER")]
    pub scheduler: Option<String>,
    #[arg(long, env = "HELIOTROPE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(flatten)]
    pub network: NetworkArgs,
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
/// holds for `--migration` (or every move), as the hold time would.
pub async fn release_now(args: &ReleaseArgs) -> anyhow::Result<()> {
    let network = args.network.open()?;
    anyhow::ensure!(network.holds(), "only --network linux holds forwarding to release");
    let scheduler = match (&args.scheduler, &args.token) {
        (Some(base), Some(token)) => Some(Scheduler::new(base, token)?),
        _ => None,
    };
    let mut released = 0;
    for hold in holds(&args.data_dir) {
        let id = hold.network_move.migration;
        if args.migration.is_some_and(|wanted| wanted != id) {
            continue;
        }
        let timed = timed(network.release(&hold.network_move)).await;
        let done = match &timed.outcome {
            Ok(done) => done.clone().unwrap_or_default(),
            Err(e) => anyhow::bail!("migration {id}: {e}"),
        };
        std::fs::remove_file(hold_path(&args.data_dir, id))?;
        println!("migration {id}: {done}");
        if let Some(scheduler) = &scheduler {
            log_step(scheduler, hold.executor, network.driver(), id, NetworkStep::Release, timed).await;
        }
        released += 1;
    }
    if released == 0 {
        let which = args.migration.map(|id| format!(" for migration {id}")).unwrap_or_default();
        anyhow::bail!("nothing is held here{which}");
    }
    Ok(())
}

/// `text` cut to at most `bytes` bytes, at a character's boundary.
fn truncate(mut text: String, bytes: usize) -> String {
    if text.len() > bytes {
        let cut = (0..=bytes).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        text.truncate(cut);
    }
    text
}

/// Logs a network step in migration `id`'s events as `executor` (a failed
/// one also here); one the driver had nothing to do in is not logged.
async fn log_step(
    scheduler: &Scheduler,
    executor: i64,
    driver: NetworkDriver,
    id: i64,
    step: NetworkStep,
    timed: Timed,
) {
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
        driver,
        duration_ms: timed.duration.as_secs_f64() * 1000.0,
        ok,
        detail: truncate(detail, 1000),
    };
    if let Err(e) = scheduler.log_network(id, executor, &report).await {
        tracing::warn!(error = %format!("{e:#}"), "logging a network step failed");
    }
}

impl Worker {
    /// The move migration `a` makes, as this end's network driver needs it:
    /// each end's tunnel ends where the other end's executor said its
    /// tunnels end, else at its address (resolved, of this end's tunnel
    /// family if it has one); the tunnel's key comes from the job's secret.
    pub(super) async fn network_move(&self, a: &Assignment) -> NetworkMove {
        let said = a.peer_tunnel_address.as_deref().and_then(|text| text.parse::<IpAddr>().ok());
        let peer = match (said, a.peer_address.as_deref()) {
            (Some(ip), _) => Some(ip),
            (None, Some(address)) => match tokio::net::lookup_host(address).await {
                Ok(found) => {
                    let mut found = found.map(|s| s.ip());
                    match self.args.network.network_tunnel_local {
                        Some(local) => found.find(|ip| ip.is_ipv4() == local.is_ipv4()),
                        None => found.next(),
                    }
                }
                Err(e) => {
                    tracing::warn!(%address, error = %e, "the other end's address does not resolve");
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
            recovery: None,
            vm: a.migration.vm.clone(),
            addresses,
            from_site: a.migration.from.clone(),
            to_site: a.migration.to.clone(),
            peer,
            tunnel_key: tunnel_key(&a.secret),
        }
    }

    /// Logs a network step in the migration's events.
    async fn log_network(&self, id: i64, step: NetworkStep, timed: Timed) {
        log_step(&self.scheduler, self.executor, self.network.driver(), id, step, timed).await;
    }

    /// At the old site, once the cutover is reported: what still arrives
    /// here for the VM goes on to the new site, held for the hold time.
    pub(super) async fn leave(self: &Arc<Self>, m: &NetworkMove) {
        let forwarded = timed(self.network.forward_away(m)).await;
        self.log_network(m.migration, NetworkStep::ForwardAway, forwarded).await;
        self.hold(m);
    }

    /// At the old site, when the VM stays after all (a rollback, a failure
    /// or a recovery that finds it here): if its addresses were forwarded,
    /// they lead to it here again.
    pub(super) async fn stay(&self, m: &NetworkMove) {
        let path = hold_path(&self.args.data_dir, m.migration);
        if !path.exists() {
            return;
        }
        let taken = timed(self.network.take_back(m)).await;
        let ok = taken.outcome.is_ok();
        self.log_network(m.migration, NetworkStep::TakeBack, taken).await;
        if ok {
            let _ = std::fs::remove_file(&path);
        }
    }

    /// At the new site: the VM's addresses routed here, `start`ed, then
    /// announced (by the hypervisor's `announce`, which says what it did,
    /// and the network driver). If it does not start, what was set up for
    /// it here goes.
    pub(super) async fn arrive(
        self: &Arc<Self>,
        m: &NetworkMove,
        start: impl std::future::Future<Output = anyhow::Result<()>>,
        announce: impl std::future::Future<Output = anyhow::Result<Option<String>>>,
    ) -> anyhow::Result<()> {
        let routed = timed(self.network.route_here(m)).await;
        self.hold(m);
        if let Err(e) = start.await {
            self.log_network(m.migration, NetworkStep::RouteHere, routed).await;
            self.release(m).await;
            return Err(e);
        }
        let announced = timed(async {
            let hypervisor = match announce.await {
                Ok(said) => said,
                Err(e) => Some(format!("the hypervisor's announcement failed: {e:#}")),
            };
            let network = self.network.announce(m).await?;
            let said: Vec<String> = hypervisor.into_iter().chain(network).collect();
            Ok((!said.is_empty()).then(|| said.join("; ")))
        })
        .await;
        self.log_network(m.migration, NetworkStep::RouteHere, routed).await;
        self.log_network(m.migration, NetworkStep::Announce, announced).await;
        Ok(())
    }

    /// Remembers what bridges `m` here and releases it after the hold time
    /// (a failure to remember is logged: the move itself stands).
    fn hold(self: &Arc<Self>, m: &NetworkMove) {
        if !self.network.holds() {
            return;
        }
        let hold_s = self.args.network.network_hold_s;
        let hold =
            Hold { network_move: m.clone(), release_at: now_s() + hold_s.ceil() as u64, executor: self.executor };
        let path = hold_path(&self.args.data_dir, m.migration);
        let kept = std::fs::create_dir_all(holds_dir(&self.args.data_dir))
            .map_err(anyhow::Error::from)
            .and_then(|()| Ok(std::fs::write(&path, serde_json::to_vec(&hold)?)?));
        if let Err(e) = kept {
            tracing::warn!(path = %path.display(), error = %e, "the network hold is not remembered: a restart will not release it");
        }
        self.release_later(hold);
    }

    /// After a restart: the holds this site kept go on to their release
    /// (with a driver that holds nothing they are left for one that does).
    pub(super) fn resume_holds(self: &Arc<Self>) {
        let holds = holds(&self.args.data_dir);
        if !self.network.holds() {
            if !holds.is_empty() {
                tracing::warn!(
                    count = holds.len(),
                    driver = ?self.network.driver(),
                    "network holds are kept here, but this network driver releases nothing"
                );
            }
            return;
        }
        for hold in holds {
            self.release_later(hold);
        }
    }

    /// Releases `hold` when its time comes, trying again every minute
    /// while the release fails, unless it was released meanwhile.
    fn release_later(self: &Arc<Self>, hold: Hold) {
        let worker = self.clone();
        tokio::spawn(async move {
            let wait = hold.release_at.saturating_sub(now_s());
            tokio::time::sleep(Duration::from_secs(wait)).await;
            let path = hold_path(&worker.args.data_dir, hold.network_move.migration);
            while path.exists() && !worker.release(&hold.network_move).await {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        });
    }

    /// Releases what bridges `m` here now, logged; whether it worked (its hold is then forgotten).
    async fn release(&self, m: &NetworkMove) -> bool {
        let released = timed(self.network.release(m)).await;
        let ok = released.outcome.is_ok();
        self.log_network(m.migration, NetworkStep::Release, released).await;
        if ok {
            let _ = std::fs::remove_file(hold_path(&self.args.data_dir, m.migration));
        }
        ok
    }
}
