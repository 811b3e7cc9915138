//! Network continuity: after its cutover a VM keeps answering on its
//! addresses at the new site, with nothing installed in the guest (the
//! idea of Kagemusha's host-side forwarding, with today's tools).
//!
//! The executors call a [`Network`] driver at the cutover. The old site
//! [forwards away](Network::forward_away) what still arrives there for
//! the VM's addresses; the new site [routes them here](Network::route_here)
//! to the VM's local link before the VM starts, and
//! [announces](Network::announce) it once it runs. After a hold time (or
//! an explicit call) both [release](Network::release) what only bridged
//! the time until the operator's routing converged. A migration rolled
//! back after its cutover [takes the VM's addresses back](Network::take_back).
//!
//! Drivers: `linux` (VXLAN tunnels and routes through netlink, [`linux`]),
//! `webhook` (the operator's SDN controller is told the move and
//! acknowledges it, [`webhook`]) and `none`.

use heliotrope_api_spec::NetworkDriver;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub mod linux;
pub mod webhook;

/// One VM's move, as the network sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkMove {
    /// The migration (0 for a restart after a site was lost: see `recovery`).
    pub migration: i64,
    /// The recovery that restarts the VM here after its site was lost.
    #[serde(default)]
    pub recovery: Option<i64>,
    pub vm: String,
    pub addresses: Vec<IpAddr>,
    pub from_site: String,
    pub to_site: String,
    /// The other end's tunnel endpoint: the new site's, for the old site's
    /// forwarding; the old site's, for the new site's end.
    pub peer: Option<IpAddr>,
    /// Both ends' shared key, from the job's secret: the tunnel's VXLAN id
    /// and MACs come from it, so that no one without the secret can predict
    /// them. Never stored or sent on (a held move needs only its migration).
    #[serde(default, skip_serializing)]
    pub tunnel_key: u64,
}

/// The tunnel key of the job whose secret (hex) is `secret`.
pub fn tunnel_key(secret: &str) -> u64 {
    let hash = blake3::derive_key("heliotrope 2026-12 vxlan tunnel key", secret.as_bytes());
    u64::from_le_bytes(hash[..8].try_into().unwrap_or_default())
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("netlink, {what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("opening a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("there is no interface {0} here")]
    NoInterface(String),
    #[error("the tunnel needs the other site's tunnel endpoint, and none is known")]
    NoPeer,
    #[error("this site's tunnel endpoint {local} and the other site's {peer} are not of one IP family")]
    Family { local: IpAddr, peer: IpAddr },
    #[error("the SDN controller at {url}: {why}")]
    Controller { url: String, why: String },
}

/// What a step did, said for the migration's log; `None` when the driver has nothing to do in it.
pub type Done = Option<String>;

/// The network driver an executor runs with.
pub enum Network {
    /// The operator moves the VM's network by other means.
    None,
    Linux(linux::Linux),
    Webhook(webhook::Webhook),
}

impl Network {
    pub fn driver(&self) -> NetworkDriver {
        match self {
            Network::None => NetworkDriver::None,
            Network::Linux(_) => NetworkDriver::Linux,
            Network::Webhook(_) => NetworkDriver::Webhook,
        }
    }

    /// At the old site, at the cutover: what still arrives here for the
    /// VM's addresses goes on to the new site.
    pub async fn forward_away(&self, m: &NetworkMove) -> Result<Done, NetworkError> {
        match self {
            Network::Linux(linux) => linux.forward_away(m).await,
            Network::None | Network::Webhook(_) => Ok(None),
        }
    }

    /// At the new site, before the VM starts: its addresses lead to it here.
    pub async fn route_here(&self, m: &NetworkMove) -> Result<Done, NetworkError> {
        match self {
            Network::Linux(linux) => linux.route_here(m).await,
            Network::Webhook(webhook) => webhook.tell(m).await,
            Network::None => Ok(None),
        }
    }

    /// At the new site, once the VM runs: the network learns where it is now.
    pub async fn announce(&self, m: &NetworkMove) -> Result<Done, NetworkError> {
        match self {
            Network::Linux(linux) => linux.announce(m).await,
            Network::None | Network::Webhook(_) => Ok(None),
        }
    }

    /// At the new site of a VM restarted from its replica after its site
    /// was lost: its addresses lead to it here (nothing comes from the lost
    /// site, so there is no tunnel), and the network is told.
    pub async fn take_over(&self, m: &NetworkMove) -> Result<Done, NetworkError> {
        match self {
            Network::Linux(linux) => linux.take_over(m).await,
            Network::Webhook(webhook) => webhook.tell(m).await,
            Network::None => Ok(None),
        }
    }

    /// At the old site, when the migration ended without the VM leaving
    /// after all (rolled back after its cutover): the forwarding goes and
    /// the addresses lead to the VM here again.
    pub async fn take_back(&self, m: &NetworkMove) -> Result<Done, NetworkError> {
        match self {
            Network::Linux(linux) => linux.take_back(m).await,
            Network::None | Network::Webhook(_) => Ok(None),
        }
    }

    /// At either site, once the operator's routing has converged: what
    /// only bridged the move goes (the new site keeps its routes).
    pub async fn release(&self, m: &NetworkMove) -> Result<Done, NetworkError> {
        match self {
            Network::Linux(linux) => linux.release(m).await,
            Network::None | Network::Webhook(_) => Ok(None),
        }
    }

    /// Whether this driver leaves something to [release](Self::release) after a move.
    pub fn holds(&self) -> bool {
        matches!(self, Network::Linux(_))
    }
}

/// A step's outcome and how long it took.
pub struct Timed {
    pub outcome: Result<Done, NetworkError>,
    pub duration: Duration,
}

/// Runs `step`, timing it.
pub async fn timed(step: impl std::future::Future<Output = Result<Done, NetworkError>>) -> Timed {
    let started = Instant::now();
    let outcome = step.await;
    Timed { outcome, duration: started.elapsed() }
}
