//! The receiving side: a site's executor takes the streams of the jobs it
//! expects, each stream on its own task, and lands each image's parts in
//! one file.
//!
//! An image being received is a landing (`landing`): its file
//! (`.NAME.partial` beside where it will be kept; a replica is updated
//! where it lies) and what each page of it holds. A landing outlives the
//! connections that feed it, so that a session whose connection dropped
//! resumes: the pages already in place are not asked for again. Only a
//! sealed image (every part verified, the whole image's digest equal to
//! the source's) is kept and indexed; a failed check or an abort drops it.
//!
//! This file holds the destination's jobs, the handshake each connection
//! makes, and where images and replicas are kept; `connection` receives
//! an image's parts and seals it, `landing` holds what is received so far,
//! `tunnels` carries a job's tunnels to the local hypervisor, and `memory`
//! keeps the memory images migrations carry through this site.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::index::{ChunkIndex, Holding};
use crate::lock;
use crate::tls::{self, Tls};
use crate::transfer::{same, TransferError, MAX_STREAMS};
use crate::wire::{
    nonce, proof, read_frame_within, write_frame, Frame, ImageKind, WireError, MAX_HANDSHAKE_FRAME, VERSION,
};

use connection::Connection;
use landing::Landing;
use tunnels::TunnelEnd;

mod connection;
mod landing;
mod memory;
mod tunnels;

/// The refusal of a peer that did not prove an expected job's secret,
/// whether the job is unknown here or the proof wrong.
pub const NOT_EXPECTED: &str = "no such job here, or a wrong job secret";

/// How long a peer has to open TLS and prove the job's secret: an idle or
/// slow connection holds a descriptor and a task no longer than this.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A site's receiving executor.
pub struct Destination {
    data_dir: PathBuf,
    index: Arc<RwLock<ChunkIndex>>,
    /// Shared by seals while they index the images they just verified
    /// (after the verdict, which a paused guest waits for); a part of the
    /// next image takes it alone, so that it finds those pages.
    indexing: Arc<tokio::sync::RwLock<()>>,
    /// Secrets of the jobs expected here.
    jobs: Mutex<HashMap<u64, Vec<u8>>>,
    /// The images each job may send, where the scheduler's assignment says
    /// (a job absent here, as by hand, may send migration images of any name).
    allowed: Mutex<HashMap<u64, Vec<Allowed>>>,
    landings: Mutex<HashMap<(u64, String), Arc<Landing>>>,
    /// Local sockets a job's tunnels lead to, by end (`migration`, `nbd`),
    /// and what they carried.
    tunnels: Mutex<HashMap<(u64, String), TunnelEnd>>,
    /// Memory images being written (see [`Destination::new_ram_image`]).
    live_images: Mutex<HashSet<PathBuf>>,
}

/// An image a job may send.
#[derive(Debug, Clone, PartialEq)]
pub struct Allowed {
    pub name: String,
    pub kind: ImageKind,
    /// Its size at most, in pages.
    pub max_pages: u64,
}

/// What one connection did.
#[derive(Debug)]
pub struct Served {
    pub job: u64,
    pub stream: u16,
    /// Images sealed over this connection, where they are kept.
    pub sealed: Vec<PathBuf>,
}

impl Destination {
    /// A destination keeping its data in `data_dir`: images of job N in
    /// `vm-N/`, replicas in `replicas/`, the chunk index (of `index_bytes`
    /// at most) in `index/`.
    pub fn open(data_dir: &Path, index_bytes: u64) -> io::Result<Arc<Destination>> {
        std::fs::create_dir_all(data_dir.join("replicas"))?;
        Ok(Arc::new(Destination {
            data_dir: data_dir.to_owned(),
            index: Arc::new(RwLock::new(ChunkIndex::open(&data_dir.join("index"), index_bytes)?)),
            indexing: Arc::new(tokio::sync::RwLock::new(())),
            jobs: Mutex::new(HashMap::new()),
            allowed: Mutex::new(HashMap::new()),
            landings: Mutex::new(HashMap::new()),
            tunnels: Mutex::new(HashMap::new()),
            live_images: Mutex::new(Default::default()),
        }))
    }

    /// Takes sessions of `job` proven with `secret` from now on.
    pub fn expect(&self, job: u64, secret: Vec<u8>) {
        lock(&self.jobs).insert(job, secret);
    }

    /// Takes sessions of `job` proven with `secret` from now on, which may
    /// send `images` and nothing else (none: a job whose bytes all go
    /// through tunnels). A replica is written only by a job allowed it.
    pub fn expect_images(&self, job: u64, secret: Vec<u8>, images: Vec<Allowed>) {
        lock(&self.jobs).insert(job, secret);
        lock(&self.allowed).insert(job, images);
    }

    /// Takes no more sessions of `job` (open ones run to their end).
    pub fn forget(&self, job: u64) {
        lock(&self.jobs).remove(&job);
        lock(&self.allowed).remove(&job);
    }

    /// Drops replica `name` (its standby was dropped): the file goes, and its pages from the index.
    pub fn drop_replica(&self, name: &str) -> io::Result<()> {
        check_name(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let path = self.replica_path(name);
        crate::write(&self.index).forget(&path)?;
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Takes replica `name` out of this site's keeping to `to` (a VM's disk
    /// now: a lost site's VM restarts on it); false if there is none.
    pub fn take_replica(&self, name: &str, to: &Path) -> io::Result<bool> {
        check_name(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let path = self.replica_path(name);
        if !path.exists() {
            return Ok(false);
        }
        crate::write(&self.index).forget(&path)?;
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::rename(&path, to)?;
        Ok(true)
    }

    /// The replicas this site keeps, by name.
    pub fn replicas(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(self.data_dir.join("replicas"))? {
            if let Some(name) = entry?.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }

    /// Indexes a file this site holds (a replica placed by hand, an image it hosts).
    pub fn hold(&self, path: &Path, holding: Holding) -> io::Result<()> {
        crate::write(&self.index).register_file(path, holding)
    }

    /// Where image `name` of `job` is kept once sealed.
    pub fn image_path(&self, job: u64, name: &str) -> PathBuf {
        self.data_dir.join(format!("vm-{job}")).join(name)
    }

    /// Where the replica `name` is cached.
    pub fn replica_path(&self, name: &str) -> PathBuf {
        self.data_dir.join("replicas").join(name)
    }

    /// Serves one accepted TCP connection to its end, after its TLS
    /// handshake when TLS is configured (a failed handshake is refused).
    pub async fn serve_tcp(&self, tcp: TcpStream, tls: Option<&Tls>) -> Result<Served, TransferError> {
        let connection = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls::accept(tcp, tls))
            .await
            .map_err(|_| TransferError::Refused("TLS handshake: too slow".into()))?
            .map_err(|e| TransferError::Refused(format!("TLS handshake: {e}")))?;
        self.serve(connection).await
    }

    /// Serves one connection of a session to its end.
    pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(&self, mut stream: S) -> Result<Served, TransferError> {
        let (job, number) = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.accept(&mut stream))
            .await
            .map_err(|_| TransferError::Refused("the peer's handshake was too slow".into()))??;
        let mut connection = Connection::new(self, stream, job);
        let mut sealed = Vec::new();
        loop {
            match connection.read().await {
                Ok(Frame::Tunnel { end }) if sealed.is_empty() => {
                    let mut stream = connection.into_stream();
                    self.tunnel(&mut stream, job, &end).await?;
                    return Ok(Served { job, stream: number, sealed });
                }
                Ok(Frame::Image { name, kind, pages, first, count }) => {
                    connection.receive_part(&name, kind, pages, first, count).await?;
                }
                Ok(Frame::Seal { name, digest }) => sealed.push(connection.seal(&name, &digest).await?),
                Ok(Frame::Abort { reason }) => {
                    return Err(TransferError::Refused(format!("the source gave up: {reason}")));
                }
                Err(TransferError::Wire(WireError::Io(e))) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Ok(Served { job, stream: number, sealed });
                }
                Ok(other) => return Err(TransferError::Protocol(format!("expected an image, got {other:?}"))),
                Err(e) => return Err(e),
            }
        }
    }

    /// Checks a connection's claim to be a job's source; returns the job and stream number.
    async fn accept<S: AsyncRead + AsyncWrite + Unpin>(&self, stream: &mut S) -> Result<(u64, u16), TransferError> {
        let mut buffer = Vec::new();
        let (job, number, theirs) = match read_frame_within(stream, &mut buffer, MAX_HANDSHAKE_FRAME).await? {
            Frame::Hello { version, job, stream: number, streams, nonce } if version == VERSION => {
                if streams == 0 || streams > MAX_STREAMS || number >= streams {
                    return refuse(stream, format!("stream {number} of {streams} is not a session's")).await;
                }
                (job, number, nonce)
            }
            Frame::Hello { version, .. } => {
                return refuse(stream, format!("protocol version {version} is not {VERSION}")).await;
            }
            other => return Err(TransferError::Protocol(format!("expected hello, got {other:?}"))),
        };
        // An unknown job is challenged with a secret nobody holds: before it proves a
        // job's secret, a peer cannot tell which jobs this executor expects.
        let known = lock(&self.jobs).get(&job).cloned();
        let expected = known.is_some();
        let secret = known.unwrap_or_else(|| nonce().to_vec());
        let mine = nonce();
        let challenge = Frame::Challenge { nonce: mine, proof: proof(&secret, "destination", job, &theirs, &mine) };
        write_frame(stream, &challenge).await?;
        match read_frame_within(stream, &mut buffer, MAX_HANDSHAKE_FRAME).await? {
            Frame::Proof { proof: given }
                if expected && same(&given, &proof(&secret, "source", job, &mine, &theirs)) =>
            {
                write_frame(stream, &Frame::Accepted).await?;
                Ok((job, number))
            }
            _ => refuse(stream, NOT_EXPECTED.to_owned()).await,
        }
    }
}

async fn refuse<S: AsyncRead + AsyncWrite + Unpin, T>(stream: &mut S, reason: String) -> Result<T, TransferError> {
    write_frame(stream, &Frame::Refused { reason: reason.clone() }).await?;
    Err(TransferError::Refused(reason))
}

/// Image names are file names: 1-128 of `A-Za-z0-9._-`, not starting with a dot.
fn check_name(name: &str) -> Result<(), TransferError> {
    let fine = (1..=128).contains(&name.len())
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if fine {
        Ok(())
    } else {
        Err(TransferError::Protocol(format!("{name:?} is not an image name")))
    }
}
