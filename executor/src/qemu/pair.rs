//! A migration between two QEMUs on one machine, for the benchmark and the
//! tests: the destination started paused for the incoming migration with an
//! empty disk (the source new, or one that runs already: a guest that
//! migrated in and now goes back), and the sockets the source's QEMU connects to being either
//! the destination QEMU's own (`Route::Direct`, QEMU to QEMU) or a source
//! executor's forwarders, whose tunnels cross loopback TCP to a destination
//! executor endpoint (`Route::Tunnelled`, as in production).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use heliotrope_api_spec::QemuSpec;
use tokio::net::TcpListener;

use super::machine::{create_disk, Machine, MachineError};
use super::migrate::{prepare_incoming, MigrateError};
use crate::destination::Destination;
use crate::ram_image::RamImage;
use crate::shaping::Shaper;
use crate::tunnel::{Carrying, Forwarder, Peer, MIGRATION, NBD};

/// How the source's QEMU reaches the destination's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Route {
    Direct,
    /// Through executor tunnels shaped to this cap, bytes/s.
    Tunnelled {
        cap: Option<f64>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum PairError {
    #[error(transparent)]
    Machine(#[from] MachineError),
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    #[error("the executor endpoints: {0}")]
    Io(#[from] std::io::Error),
}

/// How the pair's executors carry memory: where they write what leaves
/// and what arrives, as the running executors keep it (none: not kept),
/// and whether the source relays it as it is (`--memory-relay raw`).
#[derive(Default)]
pub struct MemoryWay {
    pub leaving: Option<Arc<RamImage>>,
    pub arriving: Option<Arc<RamImage>>,
    pub raw: bool,
}

/// The source's tunnels, when the route has them.
pub struct Tunnels {
    pub nbd: Forwarder,
    pub migration: Forwarder,
    pub shaper: Arc<Shaper>,
    /// The destination executor's endpoint (replicas may be sent to it too), and how to reach it.
    pub endpoint: Arc<Destination>,
    pub peer: Peer,
    accepting: tokio::task::JoinHandle<()>,
}

impl Drop for Tunnels {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl Tunnels {
    /// Every byte the tunnels carried, both ways.
    pub fn wire_bytes(&self) -> u64 {
        [&self.nbd.counters, &self.migration.counters].iter().map(|c| c.up() + c.down()).sum()
    }
}

pub struct Pair {
    /// Shared with what reads its disks for replication, if anything does.
    pub source: Arc<Machine>,
    pub destination: Machine,
    /// The destination's spec (its disks are the empty targets).
    pub target: QemuSpec,
    /// Where the source's QEMU connects for the disks and for the memory.
    pub nbd_socket: PathBuf,
    pub migration_socket: PathBuf,
    pub tunnels: Option<Tunnels>,
}

/// Memory channels of the pair's migrations.
pub const CHANNELS: u8 = 2;

impl Pair {
    /// Starts the source from `spec` in `root/source` and the destination in
    /// `root/destination`, ready for the source to mirror and migrate.
    pub async fn start(root: &Path, spec: &QemuSpec, route: Route) -> Result<Pair, PairError> {
        let source = Arc::new(Machine::start(spec, &root.join("source"), false).await?);
        // Room in its index for a replica of the largest test disk (2 GiB).
        let endpoint = Destination::open(&root.join("destination-executor"), 4 << 30)?;
        Pair::to(source, spec, root, "destination", route, endpoint, MemoryWay::default()).await
    }

    /// A pair from the running `source` (started from `spec`) to a new
    /// destination in `root/name` with empty disks; through the executors,
    /// the destination executor is `endpoint`, and they write the memory
    /// as `memory` says.
    pub async fn to(
        source: Arc<Machine>,
        spec: &QemuSpec,
        root: &Path,
        name: &str,
        route: Route,
        endpoint: Arc<Destination>,
        memory: MemoryWay,
    ) -> Result<Pair, PairError> {
        let there = root.join(name);
        std::fs::create_dir_all(&there)?;
        let mut target = spec.clone();
        for disk in &mut target.disks {
            let path = there.join(format!("{}.{}", disk.node, disk.format));
            create_disk(&path, &disk.format, disk.size_bytes, None).await?;
            disk.path = path.display().to_string();
        }
        target.qmp_socket = None;
        let destination = Machine::start(&target, &there, true).await?;
        let (dst_migration, dst_nbd) = (there.join("migration.sock"), there.join("nbd.sock"));
        prepare_incoming(&destination, &target.disks, CHANNELS, &dst_migration, &dst_nbd).await?;
        let Route::Tunnelled { cap } = route else {
            return Ok(Pair {
                source,
                destination,
                target,
                nbd_socket: dst_nbd,
                migration_socket: dst_migration,
                tunnels: None,
            });
        };
        // The destination executor takes the job's tunnels to those sockets ...
        const JOB: u64 = 1;
        let secret: Arc<[u8]> = Arc::from(&[7u8; 32][..]);
        endpoint.expect(JOB, secret.to_vec());
        endpoint.expect_memory(JOB, &dst_migration, memory.arriving);
        endpoint.expect_tunnel(JOB, NBD, &dst_nbd);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?.to_string();
        let serving = endpoint.clone();
        let accepting = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let endpoint = serving.clone();
                tokio::spawn(async move { endpoint.serve_tcp(tcp, None).await });
            }
        });
        // ... and the source executor forwards QEMU's connections there, shaped to the cap.
        let peer = Peer { address, tls: None, job: JOB, secret };
        let shaper = Arc::new(Shaper::new(cap));
        let here = root.join(format!("{name}-tunnels"));
        std::fs::create_dir_all(&here)?;
        let (nbd_socket, migration_socket) = (here.join("nbd.sock"), here.join("migration.sock"));
        // No replica at the destination here: what a write saves is zeros and compression.
        let nbd = Forwarder::listen(&nbd_socket, peer.clone(), NBD, shaper.clone(), Carrying::default())?;
        let carrying = Carrying { image: memory.leaving, raw_memory: memory.raw, ..Carrying::default() };
        let migration = Forwarder::listen(&migration_socket, peer.clone(), MIGRATION, shaper.clone(), carrying)?;
        let tunnels = Tunnels { nbd, migration, shaper, endpoint, peer, accepting };
        Ok(Pair { source, destination, target, nbd_socket, migration_socket, tunnels: Some(tunnels) })
    }
}
