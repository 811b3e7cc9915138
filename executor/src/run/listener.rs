//! The transfer listener: peers' sessions and tunnels arrive here for as
//! long as the executor runs. A failed accept (out of descriptors, say) is
//! counted and tried again after a pause, never the end of the listener;
//! connections are capped overall and per peer address, and each must
//! finish its handshake within `destination::HANDSHAKE_TIMEOUT`. The
//! heartbeat carries the listener's health, so that the scheduler hands
//! no migration to an executor that cannot take it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use heliotrope_api_spec::ListenerHealth;
use tokio::net::TcpListener;

use super::{lock, Worker};

/// Connections open at once, from everyone.
const MAX_OPEN: u32 = 512;
/// Connections open at once from one peer address (a session opens a few per image).
const MAX_PER_PEER: u32 = 64;
/// The pause after a failed accept; longer when descriptors or memory ran out.
const RETRY: Duration = Duration::from_millis(20);
const RETRY_EXHAUSTED: Duration = Duration::from_millis(200);

#[derive(Default)]
pub(super) struct Health {
    failing: AtomicBool,
    accept_errors: AtomicU64,
    refused: AtomicU64,
    open: AtomicU32,
    last_error: Mutex<Option<String>>,
    per_peer: Mutex<HashMap<IpAddr, u32>>,
}

impl Health {
    pub(super) fn report(&self) -> ListenerHealth {
        ListenerHealth {
            accepting: !self.failing.load(Ordering::Relaxed),
            accept_errors: self.accept_errors.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            open: self.open.load(Ordering::Relaxed),
            last_error: lock(&self.last_error).clone(),
        }
    }

    /// A place for a connection from `peer`, if the caps leave one.
    fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<Admitted> {
        let mut per_peer = lock(&self.per_peer);
        let from_peer = per_peer.entry(peer).or_default();
        if *from_peer >= MAX_PER_PEER || self.open.load(Ordering::Relaxed) >= MAX_OPEN {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *from_peer += 1;
        self.open.fetch_add(1, Ordering::Relaxed);
        Some(Admitted { health: self.clone(), peer })
    }
}

/// An admitted connection's place, given back when it ends.
struct Admitted {
    health: Arc<Health>,
    peer: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut per_peer = lock(&self.health.per_peer);
        if let Some(n) = per_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                per_peer.remove(&self.peer);
            }
        }
        self.health.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Worker {
    pub(super) async fn accept(self: Arc<Self>, listener: TcpListener) {
        let health = self.listener.clone();
        loop {
            match listener.accept().await {
                Ok((tcp, peer)) => {
                    health.failing.store(false, Ordering::Relaxed);
                    // Over a cap: closed at once, its descriptor freed.
                    let Some(admitted) = health.admit(peer.ip()) else { continue };
                    let worker = self.clone();
                    tokio::spawn(async move {
                        let _admitted = admitted;
                        if let Err(e) = worker.destination.serve_tcp(tcp, worker.tls.as_ref()).await {
                            tracing::warn!(%peer, error = %e, "a transfer connection failed");
                        }
                    });
                }
                Err(e) => {
                    health.failing.store(true, Ordering::Relaxed);
                    health.accept_errors.fetch_add(1, Ordering::Relaxed);
                    let text: String = e.to_string().chars().take(200).collect();
                    *lock(&health.last_error) = Some(text);
                    let exhausted =
                        matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM));
                    tracing::warn!(error = %e, "accepting a transfer connection failed; trying again");
                    tokio::time::sleep(if exhausted { RETRY_EXHAUSTED } else { RETRY }).await;
                }
            }
        }
    }
}
