//! Tunnels: byte streams a hypervisor opens (QEMU's migration stream and
//! each of its multifd channels, its NBD connections) carried between two
//! executors over the same transport as images: TCP (TLS when configured),
//! the job's secret proven both ways, the upload shaped to the job's cap
//! and every byte counted. The hypervisors never connect to each other:
//! each talks to its local executor over a unix socket.
//!
//! On the wire a tunnel is a session of one stream whose first frame after
//! the handshake is `Tunnel { end }`; once the destination answers
//! `Accepted` (it reached the local socket registered for that end of the
//! job), both directions carry raw bytes until either side closes; an
//! `nbd` end instead carries frames that send a disk write's pages only
//! where the destination lacks them ([`nbd`]).

mod framed;
pub mod multifd;
pub mod nbd;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::lock;
use crate::qemu::stream::Channel;
use crate::ram_image::RamImage;
use crate::shaping::Shaper;
use crate::source::open_tunnel;
use crate::tls::{self, Tls};
use crate::transfer::TransferError;

/// The end a source asks for to learn whether the destination lets the
/// job's tunnels through yet (accepted, then closed).
pub const PROBE: &str = "probe";

/// The end of a disk mirror's NBD connections (see [`nbd`]).
pub const NBD: &str = "nbd";

/// The end of QEMU's memory connections: its main channel, relayed raw.
pub const MIGRATION: &str = "migration";

/// The end of libvirt's control connection to the destination's daemon
/// (the `libvirt` driver): relayed as it is to that daemon's socket.
pub const LIBVIRT: &str = "libvirt";

/// The end of QEMU's multifd memory channels (see [`multifd`]): the same
/// socket as [`MIGRATION`] at the destination, framed on the way.
pub const MULTIFD: &str = "multifd";

/// Bytes a job's tunnels carried, each way, and what the NBD tunnels kept off the wire.
#[derive(Debug, Default)]
pub struct TunnelCounters {
    /// Source to destination.
    pub up: AtomicU64,
    /// Destination to source.
    pub down: AtomicU64,
    /// Write pages that were all zero.
    pub zero: AtomicU64,
    /// Pages the destination rebuilt from its replica of the disk.
    pub disk_cache: AtomicU64,
    /// Pages the destination rebuilt from images it keeps.
    pub dedup: AtomicU64,
    /// Memory pages the destination kept when the VM last left it.
    pub returning: AtomicU64,
    /// What compressing the pages sent saved.
    pub compression: AtomicU64,
    /// Referenced pages the destination could not rebuild, sent after all.
    pub resent: AtomicU64,
    /// Why a tunnel relayed a stream whole (a protocol it does not understand).
    raw: Mutex<Option<String>>,
}

impl TunnelCounters {
    /// Bytes kept off the wire, by mechanism.
    pub fn saved(&self) -> heliotrope_api_spec::SavedBytes {
        heliotrope_api_spec::SavedBytes {
            zero: self.zero.load(Ordering::Relaxed),
            disk_cache: self.disk_cache.load(Ordering::Relaxed),
            dedup: self.dedup.load(Ordering::Relaxed),
            returning: self.returning.load(Ordering::Relaxed),
            compression: self.compression.load(Ordering::Relaxed),
            ..Default::default()
        }
    }

    /// What would have crossed without the savings: what did, plus what was kept off.
    pub fn raw_equivalent(&self) -> u64 {
        self.up() + self.saved().total()
    }

    /// Says why a stream was relayed whole (the first reason is kept).
    pub fn note_raw(&self, why: &str) {
        tracing::warn!(why, "a tunnel relays raw bytes");
        lock(&self.raw).get_or_insert_with(|| why.to_owned());
    }

    pub fn raw(&self) -> Option<String> {
        lock(&self.raw).clone()
    }

    pub fn up(&self) -> u64 {
        self.up.load(Ordering::Relaxed)
    }

    pub fn down(&self) -> u64 {
        self.down.load(Ordering::Relaxed)
    }
}

const CHUNK: usize = 256 << 10;

/// Copies `from` into `to` until `from` ends, then shuts `to`'s writing
/// down; each chunk waits for `shaper` first and is counted in `counter`.
async fn pump<R, W>(mut from: R, mut to: W, shaper: Option<&Shaper>, counter: &AtomicU64) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = vec![0u8; CHUNK];
    loop {
        let n = from.read(&mut buffer).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        if let Some(shaper) = shaper {
            shaper.take(n as u64).await;
        }
        to.write_all(&buffer[..n]).await?;
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Relays between `local` (the hypervisor's connection) and `remote` (the
/// peer executor) until both directions have ended. With `upload`, bytes
/// from `local` to `remote` are shaped and counted as `up` (the source's
/// side); otherwise they count as `down`.
pub async fn relay<L, R>(
    local: L,
    remote: R,
    shaper: Option<&Shaper>,
    counters: &TunnelCounters,
    upload: bool,
) -> io::Result<()>
where
    L: AsyncRead + AsyncWrite,
    R: AsyncRead + AsyncWrite,
{
    let (local_read, local_write) = tokio::io::split(local);
    let (remote_read, remote_write) = tokio::io::split(remote);
    let (out, back) = if upload { (&counters.up, &counters.down) } else { (&counters.down, &counters.up) };
    let outward = pump(local_read, remote_write, if upload { shaper } else { None }, out);
    let inward = pump(remote_read, local_write, if upload { None } else { shaper }, back);
    tokio::try_join!(outward, inward).map(|_| ())
}

/// The source's end of a job's tunnels of one kind: a unix socket the
/// local hypervisor connects to, each connection carried to the peer
/// executor's `end` (shaped by `shaper`, counted in `counters`). It stops
/// taking connections when dropped; open ones run on to their end.
pub struct Forwarder {
    accepting: tokio::task::JoinHandle<()>,
    pub counters: Arc<TunnelCounters>,
}

/// Where a job's tunnels go: the peer executor, how to reach it, the job and its secret.
#[derive(Clone)]
pub struct Peer {
    pub address: String,
    pub tls: Option<Tls>,
    pub job: u64,
    pub secret: Arc<[u8]>,
}

/// What a forwarder's tunnels do beside carrying the bytes.
#[derive(Clone, Default)]
pub struct Carrying {
    /// `nbd` ends: what the destination holds of the disks, referenced by each write.
    pub held: Arc<nbd::Held>,
    /// `migration` ends: where the pages the multifd channels carry are kept.
    pub image: Option<Arc<RamImage>>,
    /// `migration` ends: every memory connection relayed as it is (`--memory-relay raw`).
    pub raw_memory: bool,
}

impl Forwarder {
    /// Listens at `path` for the hypervisor's connections to `end`, carried as `carrying` says.
    pub fn listen(
        path: &Path,
        peer: Peer,
        end: &str,
        shaper: Arc<Shaper>,
        carrying: Carrying,
    ) -> io::Result<Forwarder> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        let counters = Arc::new(TunnelCounters::default());
        let (end, totals) = (end.to_owned(), counters.clone());
        let accepting = tokio::spawn(async move {
            while let Ok((local, _)) = listener.accept().await {
                let (peer, end, shaper, totals, carrying) =
                    (peer.clone(), end.clone(), shaper.clone(), totals.clone(), carrying.clone());
                tokio::spawn(async move {
                    if let Err(e) = forward(local, &peer, &end, &shaper, &totals, &carrying).await {
                        tracing::warn!(job = peer.job, end, error = %e, "a tunnel failed");
                    }
                });
            }
        });
        Ok(Forwarder { accepting, counters })
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

async fn forward(
    mut local: UnixStream,
    peer: &Peer,
    end: &str,
    shaper: &Shaper,
    counters: &TunnelCounters,
    carrying: &Carrying,
) -> Result<(), TransferError> {
    // A memory connection says what it is in its first bytes.
    let mut first = [0u8; 4];
    let channel = if end == MIGRATION {
        local.read_exact(&mut first).await.map_err(|e| TransferError::Wire(e.into()))?;
        Some(crate::qemu::stream::channel(first))
    } else {
        None
    };
    let end = match channel {
        Some(Channel::Multifd) if carrying.raw_memory => {
            counters.note_raw("memory relayed as it is, as configured (--memory-relay raw)");
            end
        }
        Some(Channel::Multifd) => MULTIFD,
        Some(Channel::Unknown) => {
            counters.note_raw("a memory connection that is neither QEMU's main channel nor a multifd channel");
            end
        }
        _ => end,
    };
    let mut remote = tls::connect(&peer.address, peer.tls.as_ref()).await.map_err(|e| TransferError::Wire(e.into()))?;
    open_tunnel(&mut remote, peer.job, &peer.secret, end).await?;
    match (end, channel) {
        (NBD, _) => nbd::send_nbd(local, remote, shaper, counters, &carrying.held).await,
        (MULTIFD, _) => multifd::send_multifd(first, local, remote, shaper, counters, carrying.image.as_deref()).await,
        (_, Some(_)) => {
            shaper.take(first.len() as u64).await;
            remote.write_all(&first).await.map_err(|e| TransferError::Wire(e.into()))?;
            counters.up.fetch_add(first.len() as u64, Ordering::Relaxed);
            relay(local, remote, Some(shaper), counters, true).await.map_err(|e| TransferError::Wire(e.into()))
        }
        (_, None) => {
            relay(local, remote, Some(shaper), counters, true).await.map_err(|e| TransferError::Wire(e.into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_relay_carries_both_ways_and_counts_each() {
        let (mut hypervisor, local) = tokio::io::duplex(1 << 16);
        let (remote, mut peer) = tokio::io::duplex(1 << 16);
        let counters = TunnelCounters::default();
        let relaying = relay(local, remote, None, &counters, true);
        let hypervisor_side = async {
            hypervisor.write_all(&[7u8; 300_000]).await.unwrap();
            hypervisor.shutdown().await.unwrap();
            let mut back = Vec::new();
            hypervisor.read_to_end(&mut back).await.unwrap();
            back
        };
        let peer_side = async {
            let mut got = Vec::new();
            peer.read_to_end(&mut got).await.unwrap();
            peer.write_all(b"ack").await.unwrap();
            peer.shutdown().await.unwrap();
            got.len()
        };
        let talking = async { tokio::join!(peer_side, hypervisor_side) };
        let (relayed, (sent, back)) = tokio::join!(relaying, talking);
        relayed.unwrap();
        assert_eq!((sent, back.as_slice()), (300_000, &b"ack"[..]));
        assert_eq!((counters.up(), counters.down()), (300_000, 3));
    }
}
