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
//! job), both directions carry raw bytes until either side closes.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::shaping::Shaper;

/// Bytes a job's tunnels carried, each way.
#[derive(Debug, Default)]
pub struct TunnelCounters {
    /// Source to destination.
    pub up: AtomicU64,
    /// Destination to source.
    pub down: AtomicU64,
}

impl TunnelCounters {
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
