//! A job's tunnels at the destination: a connection that asks for a
//! tunnel end the job was let through to is carried to that end's local
//! socket (where the hypervisor listens): QEMU's NBD exports and its
//! memory migration, main channel and multifd channels, each end counting
//! what it carried. A probe asks whether any end of the job is ready.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::lock;
use crate::ram_image::RamImage;
use crate::transfer::TransferError;
use crate::tunnel::{TunnelCounters, MIGRATION, MULTIFD, PROBE};
use crate::wire::{write_frame, Frame, WireError};

use super::{refuse, Destination};

/// Where a job's tunnel of one end leads here and what such tunnels carried.
#[derive(Clone)]
pub(super) struct TunnelEnd {
    path: PathBuf,
    counters: Arc<TunnelCounters>,
    /// Memory ends: where the pages that arrive are kept.
    image: Option<Arc<RamImage>>,
    /// Memory ends: whether the job's main channel has reached QEMU. A
    /// QEMU 7.2 destination takes the first connection as its main channel,
    /// so multifd channels wait for it (QEMU 10.0 tells them apart itself).
    main_connected: Option<Arc<tokio::sync::watch::Sender<bool>>>,
}

/// How long a multifd channel waits for its job's main channel to reach QEMU.
const MAIN_CHANNEL_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

impl Destination {
    /// Lets `job`'s tunnels named `end` through to the unix socket `path`
    /// (where the local hypervisor listens); returns what they will carry.
    pub fn expect_tunnel(&self, job: u64, end: &str, path: &Path) -> Arc<TunnelCounters> {
        let counters = Arc::new(TunnelCounters::default());
        let tunnel_end =
            TunnelEnd { path: path.to_owned(), counters: counters.clone(), image: None, main_connected: None };
        lock(&self.tunnels).insert((job, end.to_owned()), tunnel_end);
        counters
    }

    /// Lets `job`'s memory tunnels (its main channel and its multifd
    /// channels) through to QEMU's incoming socket `path`, the pages that
    /// arrive written to `image`; returns what they will carry.
    pub fn expect_memory(&self, job: u64, path: &Path, image: Option<Arc<RamImage>>) -> Arc<TunnelCounters> {
        let counters = Arc::new(TunnelCounters::default());
        let main_connected = Some(Arc::new(tokio::sync::watch::Sender::new(false)));
        let tunnel_end = TunnelEnd { path: path.to_owned(), counters: counters.clone(), image, main_connected };
        let mut tunnels = lock(&self.tunnels);
        for end in [MIGRATION, MULTIFD] {
            tunnels.insert((job, end.to_owned()), tunnel_end.clone());
        }
        counters
    }

    /// Lets no more of `job`'s tunnels through (open ones run on to their end).
    pub fn forget_tunnels(&self, job: u64) {
        lock(&self.tunnels).retain(|(j, _), _| *j != job);
    }

    /// Carries a tunnel to `end`'s local socket until either side closes.
    pub(super) async fn tunnel<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        job: u64,
        end: &str,
    ) -> Result<(), TransferError> {
        if end == PROBE {
            // Ready once any end of the job is: say so and close.
            if lock(&self.tunnels).keys().any(|(j, _)| *j == job) {
                write_frame(stream, &Frame::Accepted).await?;
                return Ok(());
            }
            return refuse(stream, format!("job {job}'s tunnels are not ready here")).await;
        }
        let Some(TunnelEnd { path, counters, image, main_connected }) =
            lock(&self.tunnels).get(&(job, end.to_owned())).cloned()
        else {
            return refuse(stream, format!("no tunnel end '{end}' for job {job} here")).await;
        };
        if let (MULTIFD, Some(main)) = (end, &main_connected) {
            let mut connected = main.subscribe();
            if tokio::time::timeout(MAIN_CHANNEL_WAIT, connected.wait_for(|c| *c)).await.is_err() {
                tracing::warn!(job, "a multifd channel reaches QEMU before the main channel did");
            }
        }
        let local = match tokio::net::UnixStream::connect(&path).await {
            Ok(local) => local,
            Err(e) => return refuse(stream, format!("tunnel end '{end}': {e}")).await,
        };
        if let (MIGRATION, Some(main)) = (end, &main_connected) {
            main.send_replace(true);
        }
        write_frame(stream, &Frame::Accepted).await?;
        match end {
            crate::tunnel::NBD => return crate::tunnel::nbd::receive_nbd(local, stream, &counters, &self.index).await,
            crate::tunnel::MULTIFD => {
                let image = image.as_deref();
                return crate::tunnel::multifd::receive_multifd(local, stream, &counters, &self.index, image).await;
            }
            _ => {}
        }
        crate::tunnel::relay(local, stream, None, &counters, false)
            .await
            .map_err(|e| TransferError::Wire(WireError::Io(e)))
    }
}
