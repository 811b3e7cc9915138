//! The receiving side: a site's executor takes the streams of the jobs it
//! expects, each stream on its own task, and lands each image's parts in
//! one file.
//!
//! An image being received is a [`Landing`]: its file (`.NAME.partial`
//! beside where it will be kept; a replica is updated where it lies) and
//! what each page of it holds. A landing outlives the connections that
//! feed it, so that a session whose connection dropped resumes: the pages
//! already in place are not asked for again. Only a sealed image (every
//! part verified, the whole image's digest equal to the source's) is kept
//! and indexed; a failed check or an abort drops it.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::content::{hash, hex, image_digest, zero_page_hash, ByHash, Hash, PAGE};
use crate::index::{page_hashes, ChunkIndex, Holding};
use crate::ram_image::RamImage;
use crate::tls::{self, Tls};
use crate::transfer::{same, TransferError, BATCH, MAX_IMAGE_PAGES, MAX_STREAMS, WINDOW};
use crate::tunnel::{TunnelCounters, MIGRATION, MULTIFD, PROBE};
use crate::wire::{
    nonce, proof, read_frame_with, read_frame_within, read_payload, write_frame, ByteBuf, Frame, ImageKind, Origin,
    WireError, MAX_HANDSHAKE_FRAME, VERSION,
};

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
    live_images: Mutex<std::collections::HashSet<PathBuf>>,
}

/// Where a job's tunnel of one end leads here and what such tunnels carried.
#[derive(Clone)]
struct TunnelEnd {
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

/// An image being received.
struct Landing {
    kind: ImageKind,
    pages: u64,
    /// Where it is written; where it is kept once sealed.
    partial: PathBuf,
    path: PathBuf,
    file: File,
    state: Mutex<LandingState>,
}

struct LandingState {
    /// What each page of the file holds.
    on_disk: Vec<Hash>,
    parts: Vec<Claim>,
}

/// A part of the image a connection carries.
struct Claim {
    first: u64,
    count: u64,
    /// A newer connection that claims the same part (after a drop) supersedes the old one.
    generation: u64,
    verified: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
        self.index.write().unwrap_or_else(|e| e.into_inner()).forget(&path)?;
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
        self.index.write().unwrap_or_else(|e| e.into_inner()).forget(&path)?;
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

    /// A fresh image for the memory migration `job` of VM `vm` carries
    /// through this site, in `memory/<vm>/<job>/`. Until it is kept or
    /// dropped it is live: no other image's keeping touches it.
    pub fn new_ram_image(&self, vm: &str, job: u64) -> io::Result<Arc<RamImage>> {
        check_name(vm).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let dir = self.data_dir.join("memory").join(vm).join(job.to_string());
        let mut live = lock(&self.live_images);
        // As the index names files: whole, so that a VM's own earlier images are told apart.
        std::fs::create_dir_all(&dir)?;
        let dir = std::fs::canonicalize(&dir)?;
        let image = Arc::new(RamImage::create(&dir)?);
        live.insert(dir);
        Ok(image)
    }

    /// Keeps `image` (its migration is done): its files join the chunk
    /// index and the VM's earlier images here go; then, best effort, so do
    /// the images the index's budget has dropped. Live images are never
    /// touched. Hashes every page: call it off the async runtime.
    pub fn keep_ram_image(&self, image: &RamImage) -> io::Result<()> {
        let files = image.files()?;
        let hashed: Vec<(PathBuf, Vec<Hash>)> =
            files.into_iter().map(|f| page_hashes(&f).map(|h| (f, h))).collect::<io::Result<_>>()?;
        // Whole paths, as the live images are named.
        let memory = std::fs::canonicalize(self.data_dir.join("memory"))?;
        let vm_dir = image.dir().parent().unwrap_or(&memory).to_owned();
        let mut live = lock(&self.live_images);
        live.remove(image.dir());
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        for earlier in subdirectories(&vm_dir)?.into_iter().filter(|d| d != image.dir() && !live.contains(d)) {
            for file in std::fs::read_dir(&earlier)? {
                index.forget(&file?.path())?;
            }
            std::fs::remove_dir_all(&earlier)?;
        }
        for (file, hashes) in hashed {
            index.add_file(&file, Holding::Image, hashes)?;
        }
        if let Err(e) = sweep_dropped(&memory, &index, &live) {
            tracing::warn!(error = %e, "memory images the index dropped are left on disk for now");
        }
        Ok(())
    }

    /// Drops `image` (its migration did not move the VM, or keeping it failed).
    pub fn drop_ram_image(&self, image: &RamImage) {
        let mut live = lock(&self.live_images);
        live.remove(image.dir());
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        for file in image.files().unwrap_or_default() {
            let _ = index.forget(&file);
        }
        if let Err(e) = std::fs::remove_dir_all(image.dir()) {
            tracing::warn!(error = %e, dir = %image.dir().display(), "a memory image was left behind");
        }
    }

    /// Lets no more of `job`'s tunnels through (open ones run on to their end).
    pub fn forget_tunnels(&self, job: u64) {
        lock(&self.tunnels).retain(|(j, _), _| *j != job);
    }

    /// Indexes a file this site holds (a replica placed by hand, an image it hosts).
    pub fn hold(&self, path: &Path, holding: Holding) -> io::Result<()> {
        self.index.write().unwrap_or_else(|e| e.into_inner()).register_file(path, holding)
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
        let mut connection = Connection {
            destination: self,
            stream,
            job,
            buffer: Vec::new(),
            payload: Vec::new(),
            decompressed: Vec::new(),
        };
        let mut sealed = Vec::new();
        loop {
            match connection.read().await {
                Ok(Frame::Tunnel { end }) if sealed.is_empty() => {
                    let Connection { mut stream, .. } = connection;
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

    /// Carries a tunnel to `end`'s local socket until either side closes.
    async fn tunnel<S: AsyncRead + AsyncWrite + Unpin>(
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

    /// The landing of image `name` of `job`, made if this is its first part.
    fn landing(&self, job: u64, name: &str, kind: ImageKind, pages: u64) -> Result<Arc<Landing>, TransferError> {
        check_name(name)?;
        // Only what the job was assigned, no larger than the VM it moves: an authenticated
        // peer cannot make this executor hold more than the scheduler gave the job.
        match lock(&self.allowed).get(&job).map(|allowed| allowed.iter().find(|a| a.name == name && a.kind == kind)) {
            Some(Some(allowed)) if pages <= allowed.max_pages => {}
            Some(Some(allowed)) => {
                let most = allowed.max_pages;
                return Err(TransferError::Protocol(format!(
                    "image {name} of {pages} pages: job {job} sends {most} at most"
                )));
            }
            Some(None) => return Err(TransferError::Protocol(format!("job {job} sends no {kind:?} image {name}"))),
            None if kind == ImageKind::Replica => {
                return Err(TransferError::Protocol(format!("job {job} may not write replica {name}")));
            }
            None => {}
        }
        if pages > MAX_IMAGE_PAGES {
            return Err(TransferError::Protocol(format!("image {name} of {pages} pages is too large")));
        }
        let mut landings = lock(&self.landings);
        if let Some(landing) = landings.get(&(job, name.to_owned())) {
            if landing.kind != kind || landing.pages != pages {
                return Err(TransferError::Protocol(format!("image {name} changed its shape mid-session")));
            }
            return Ok(landing.clone());
        }
        let landing = match kind {
            ImageKind::Migration => {
                let path = self.image_path(job, name);
                let dir = path.parent().expect("an image path has a directory");
                std::fs::create_dir_all(dir)?;
                let partial = dir.join(format!(".{name}.partial"));
                Landing::fresh(kind, pages, partial, path)?
            }
            ImageKind::Replica => {
                let path = self.replica_path(name);
                let known = self.index.read().unwrap_or_else(|e| e.into_inner()).hashes_of(&path).map(<[Hash]>::to_vec);
                match known {
                    // The replica as last synced: updated in place, written pages only.
                    Some(on_disk) if on_disk.len() as u64 == pages => {
                        let file = std::fs::OpenOptions::new().read(true).write(true).open(&path)?;
                        Landing::with(kind, pages, path.clone(), path, file, on_disk)
                    }
                    _ => Landing::fresh(kind, pages, path.clone(), path)?,
                }
            }
        };
        let landing = Arc::new(landing);
        landings.insert((job, name.to_owned()), landing.clone());
        Ok(landing)
    }

    /// Drops a landing that failed: a partial image goes; a replica stays,
    /// indexed as what it now holds.
    fn drop_landing(&self, job: u64, name: &str) -> Result<(), TransferError> {
        let Some(landing) = lock(&self.landings).remove(&(job, name.to_owned())) else { return Ok(()) };
        match landing.kind {
            ImageKind::Migration => {
                let _ = std::fs::remove_file(&landing.partial);
            }
            ImageKind::Replica => {
                let on_disk = lock(&landing.state).on_disk.clone();
                self.index.write().unwrap_or_else(|e| e.into_inner()).add_file(
                    &landing.path,
                    Holding::Replica,
                    on_disk,
                )?;
            }
        }
        Ok(())
    }
}

async fn refuse<S: AsyncRead + AsyncWrite + Unpin, T>(stream: &mut S, reason: String) -> Result<T, TransferError> {
    write_frame(stream, &Frame::Refused { reason: reason.clone() }).await?;
    Err(TransferError::Refused(reason))
}

impl Landing {
    /// A new file of `pages` zero pages.
    fn fresh(kind: ImageKind, pages: u64, partial: PathBuf, path: PathBuf) -> io::Result<Landing> {
        // Read as well as written: later copies of a page are read back from it.
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&partial)?;
        file.set_len(pages * PAGE as u64)?;
        Ok(Landing::with(kind, pages, partial, path, file, vec![zero_page_hash(); pages as usize]))
    }

    fn with(kind: ImageKind, pages: u64, partial: PathBuf, path: PathBuf, file: File, on_disk: Vec<Hash>) -> Landing {
        Landing { kind, pages, partial, path, file, state: Mutex::new(LandingState { on_disk, parts: Vec::new() }) }
    }

    /// Claims pages `first..first + count` for a connection; returns its generation.
    fn claim(&self, first: u64, count: u64) -> Result<u64, TransferError> {
        if first.checked_add(count).is_none_or(|end| end > self.pages) {
            return Err(TransferError::Protocol(format!("a part {first}+{count} outside {} pages", self.pages)));
        }
        let mut state = lock(&self.state);
        let generation = state.parts.iter().map(|c| c.generation + 1).max().unwrap_or(0);
        if let Some(claim) = state.parts.iter_mut().find(|c| c.first == first && c.count == count) {
            *claim = Claim { first, count, generation, verified: false };
        } else if state.parts.iter().any(|c| first < c.first + c.count && c.first < first + count) {
            return Err(TransferError::Protocol(format!("part {first}+{count} overlaps another")));
        } else {
            state.parts.push(Claim { first, count, generation, verified: false });
        }
        Ok(generation)
    }
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

/// One accepted connection.
struct Connection<'a, S> {
    destination: &'a Destination,
    stream: S,
    job: u64,
    buffer: Vec<u8>,
    payload: Vec<u8>,
    decompressed: Vec<u8>,
}

/// A batch answered and awaiting its pages.
struct Pending {
    /// Page numbers, increasing.
    numbers: Vec<u64>,
    hashes: Vec<Hash>,
    origins: Vec<Origin>,
    /// Pages the file holds already (in place, or zero on zero): not written again.
    unchanged: Vec<bool>,
    /// The batch's pages: zero, copied from the index or this part, or still to come.
    pages: Vec<u8>,
    /// Pages (position in the batch) equal to a page already asked for: (position, that page's number).
    copies: Vec<(usize, u64)>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<'_, S> {
    async fn read(&mut self) -> Result<Frame, TransferError> {
        Ok(read_frame_with(&mut self.stream, &mut self.buffer).await?)
    }

    /// Receives one part of an image after its `Image` frame, to its `End`.
    /// A failed check drops the image and tells the source why.
    async fn receive_part(
        &mut self,
        name: &str,
        kind: ImageKind,
        pages: u64,
        first: u64,
        count: u64,
    ) -> Result<(), TransferError> {
        let landing = {
            let _indexed = self.destination.indexing.write().await;
            self.destination.landing(self.job, name, kind, pages)?
        };
        let generation = landing.claim(first, count)?;
        match self.part(&landing, generation, first, count).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_dropped_connection() => Err(e),
            Err(e) => {
                self.destination.drop_landing(self.job, name)?;
                if let TransferError::Integrity(reason) = &e {
                    let reason = format!("image {name}: {reason}");
                    write_frame(&mut self.stream, &Frame::Verified { ok: false, reason: reason.clone() }).await?;
                    return Err(TransferError::Integrity(reason));
                }
                Err(e)
            }
        }
    }

    /// Offers of pages of the part in any order and as often as a live
    /// image needs, each batch written once whole, then the part's digest.
    async fn part(&mut self, landing: &Landing, generation: u64, first: u64, count: u64) -> Result<(), TransferError> {
        let zero = zero_page_hash();
        let span = first as usize..(first + count) as usize;
        // What the file holds, and what each page will hold once the batches answered are written.
        let mut on_disk: Vec<Hash> = lock(&landing.state).on_disk[span.clone()].to_vec();
        let mut page_hash = on_disk.clone();
        // Pages of this part written to the file, by hash: later copies are read back, not sent.
        let mut written: ByHash<u64> = ByHash::default();
        // Pages asked for and not yet arrived, by hash: another copy is not asked for again.
        let mut asked: ByHash<u64> = ByHash::default();
        let mut pending: VecDeque<Pending> = VecDeque::new();
        let mut spare: Vec<Vec<u8>> = Vec::new();
        let mut decompressor = zstd::bulk::Decompressor::new()?;
        loop {
            match self.read().await? {
                Frame::Offer { runs, hashes } => {
                    let numbers: Vec<u64> =
                        runs.iter().flat_map(|&(n, len)| n..n.saturating_add(u64::from(len))).take(BATCH + 1).collect();
                    let fits = numbers.len() == hashes.len()
                        && (1..=BATCH).contains(&hashes.len())
                        && numbers.windows(2).all(|w| w[0] < w[1])
                        && numbers.first().is_some_and(|&n| n >= first)
                        && numbers.last().is_some_and(|&n| n < first + count);
                    if !fits {
                        return Err(TransferError::Protocol("an offer of pages that do not fit the part".into()));
                    }
                    if pending.len() >= WINDOW {
                        return Err(TransferError::Protocol(format!("more than {WINDOW} offers unanswered")));
                    }
                    // Buffers of written batches are reused: fresh large allocations cost page
                    // faults. Every slot written to the file is filled below.
                    let mut pages = spare.pop().unwrap_or_default();
                    pages.resize(hashes.len() * PAGE, 0);
                    let mut unchanged = Vec::with_capacity(hashes.len());
                    let (origins, copies) = {
                        let index = self.destination.index.read().unwrap_or_else(|e| e.into_inner());
                        let mut origins = Vec::with_capacity(hashes.len());
                        let mut copies = Vec::new();
                        for (i, (&n, h)) in numbers.iter().zip(&hashes).enumerate() {
                            let at = (n - first) as usize;
                            // The page's old content is about to go: nothing may copy from it any more.
                            let old = page_hash[at];
                            if written.get(&old) == Some(&n) {
                                written.remove(&old);
                            }
                            if asked.get(&old) == Some(&n) {
                                asked.remove(&old);
                            }
                            page_hash[at] = *h;
                            unchanged.push(old == *h);
                            let slot = &mut pages[i * PAGE..(i + 1) * PAGE];
                            let origin = if *h == zero {
                                slot.fill(0);
                                Origin::Zero
                            } else if old == *h {
                                Origin::InPlace
                            } else if let Some(&from) = written.get(h) {
                                landing.file.read_exact_at(slot, from * PAGE as u64)?;
                                Origin::Repeat
                            } else if let Some(&from) = asked.get(h) {
                                copies.push((i, from));
                                Origin::Repeat
                            } else if let Some((page, holding)) = index.get(h)? {
                                slot.copy_from_slice(&page);
                                match holding {
                                    Holding::Replica => Origin::Cache,
                                    Holding::Image => Origin::Index,
                                }
                            } else {
                                asked.insert(*h, n);
                                Origin::Sent
                            };
                            origins.push(origin);
                        }
                        (origins, copies)
                    };
                    let bytes: Vec<u8> = origins.iter().map(|&o| o as u8).collect();
                    write_frame(&mut self.stream, &Frame::Need { origins: ByteBuf::from(bytes) }).await?;
                    pending.push_back(Pending { numbers, hashes, origins, unchanged, pages, copies });
                }
                Frame::Pages { compressed, len } => {
                    let Some(mut batch) = pending.pop_front() else {
                        return Err(TransferError::Protocol("pages with no offer out".into()));
                    };
                    let wanted = batch.origins.iter().filter(|&&o| o == Origin::Sent).count() * PAGE;
                    read_payload(&mut self.stream, len as usize, &mut self.payload).await?;
                    let sent: &[u8] = if compressed {
                        self.decompressed.clear();
                        self.decompressed.reserve(wanted);
                        decompressor
                            .decompress_to_buffer(&self.payload, &mut self.decompressed)
                            .map_err(|e| TransferError::Integrity(format!("pages that do not decompress: {e}")))?;
                        &self.decompressed
                    } else {
                        &self.payload
                    };
                    if sent.len() != wanted {
                        return Err(TransferError::Protocol(format!(
                            "{} bytes of pages for {wanted} needed",
                            sent.len()
                        )));
                    }
                    let mut arrived = sent.chunks_exact(PAGE);
                    for (i, origin) in batch.origins.iter().enumerate() {
                        if *origin != Origin::Sent {
                            continue;
                        }
                        let page = arrived.next().expect("as many pages as needed");
                        if hash(page) != batch.hashes[i] {
                            return Err(TransferError::Integrity(format!(
                                "page {} does not match its hash {}",
                                batch.numbers[i],
                                hex(&batch.hashes[i])
                            )));
                        }
                        batch.pages[i * PAGE..(i + 1) * PAGE].copy_from_slice(page);
                    }
                    // Copies of pages asked for earlier: in this batch, or in one already written.
                    for &(i, from) in &batch.copies {
                        match batch.numbers.binary_search(&from) {
                            Ok(j) => batch.pages.copy_within(j * PAGE..(j + 1) * PAGE, i * PAGE),
                            Err(_) => landing
                                .file
                                .read_exact_at(&mut batch.pages[i * PAGE..(i + 1) * PAGE], from * PAGE as u64)?,
                        }
                    }
                    // The batch is whole: onto the disk, run by run, but for pages already there.
                    let writes = |i: usize| !batch.unchanged[i];
                    let mut i = 0;
                    while i < batch.numbers.len() {
                        if !writes(i) {
                            i += 1;
                            continue;
                        }
                        let mut j = i + 1;
                        while j < batch.numbers.len() && writes(j) && batch.numbers[j] == batch.numbers[j - 1] + 1 {
                            j += 1;
                        }
                        landing.file.write_all_at(&batch.pages[i * PAGE..j * PAGE], batch.numbers[i] * PAGE as u64)?;
                        i = j;
                    }
                    for (&n, h) in batch.numbers.iter().zip(&batch.hashes) {
                        let at = (n - first) as usize;
                        on_disk[at] = *h;
                        if *h != zero && page_hash[at] == *h {
                            written.entry(*h).or_insert(n);
                            if asked.get(h) == Some(&n) {
                                asked.remove(h);
                            }
                        }
                    }
                    {
                        let mut state = lock(&landing.state);
                        if state.parts.iter().any(|c| c.first == first && c.generation > generation) {
                            return Err(TransferError::Protocol("a newer connection carries this part".into()));
                        }
                        state.on_disk[span.clone()].copy_from_slice(&on_disk);
                    }
                    spare.push(batch.pages);
                }
                Frame::End { digest } => {
                    if !pending.is_empty() {
                        return Err(TransferError::Protocol("the part ended with offers unanswered".into()));
                    }
                    let got = image_digest(&on_disk);
                    if !same(&got, &digest) {
                        return Err(TransferError::Integrity(format!(
                            "part digest {} is not the source's {}",
                            hex(&got),
                            hex(&digest)
                        )));
                    }
                    if let Some(claim) =
                        lock(&landing.state).parts.iter_mut().find(|c| c.first == first && c.generation == generation)
                    {
                        claim.verified = true;
                    }
                    write_frame(&mut self.stream, &Frame::Verified { ok: true, reason: String::new() }).await?;
                    return Ok(());
                }
                Frame::Abort { reason } => {
                    return Err(TransferError::Refused(format!("the source gave up: {reason}")));
                }
                other => return Err(TransferError::Protocol(format!("expected an offer or the end, got {other:?}"))),
            }
        }
    }

    /// Seals image `name`: every part verified and the whole digest the
    /// source's, it is kept and indexed. Returns where it is kept.
    async fn seal(&mut self, name: &str, digest: &Hash) -> Result<PathBuf, TransferError> {
        let landing = lock(&self.destination.landings).get(&(self.job, name.to_owned())).cloned();
        let Some(landing) = landing else {
            return Err(TransferError::Protocol(format!("no image {name} to seal")));
        };
        let (whole, on_disk) = {
            let state = lock(&landing.state);
            let verified: u64 = state.parts.iter().filter(|c| c.verified).map(|c| c.count).sum();
            (verified == landing.pages, state.on_disk.clone())
        };
        let got = image_digest(&on_disk);
        if !whole || !same(&got, digest) {
            let reason = if whole {
                format!("image {name}: digest {} is not the source's {}", hex(&got), hex(digest))
            } else {
                format!("image {name}: parts are missing")
            };
            self.destination.drop_landing(self.job, name)?;
            write_frame(&mut self.stream, &Frame::Verified { ok: false, reason: reason.clone() }).await?;
            return Err(TransferError::Integrity(reason));
        }
        lock(&self.destination.landings).remove(&(self.job, name.to_owned()));
        if landing.partial != landing.path {
            std::fs::rename(&landing.partial, &landing.path)?;
        }
        // The image is in place. The verdict waits neither for it to reach
        // the disk nor for the index (a paused guest waits for it, and
        // flushing gigabytes just written takes seconds): a destination that
        // crashes in that window loses what the source let go, as one that
        // crashes just after a cutover would.
        let indexing = self.destination.indexing.clone().read_owned().await;
        write_frame(&mut self.stream, &Frame::Verified { ok: true, reason: String::new() }).await?;
        let holding = match landing.kind {
            ImageKind::Migration => Holding::Image,
            ImageKind::Replica => Holding::Replica,
        };
        let (index, path) = (self.destination.index.clone(), landing.path.clone());
        tokio::task::spawn_blocking(move || {
            let indexed = index.write().unwrap_or_else(|e| e.into_inner()).add_file(&path, holding, on_disk);
            drop(indexing);
            indexed
        })
        .await
        .map_err(|e| io::Error::other(e.to_string()))??;
        let (file, path) = (landing.file.try_clone()?, landing.path.clone());
        tokio::task::spawn_blocking(move || {
            if let Err(e) = file.sync_all() {
                tracing::error!(path = %path.display(), error = %e, "flushing a sealed image failed");
            }
        });
        Ok(landing.path.clone())
    }
}

/// The directories in `dir` (none if it does not exist).
fn subdirectories(dir: &Path) -> io::Result<Vec<PathBuf>> {
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            let mut dirs = Vec::new();
            for entry in entries {
                let entry = entry?;
                if entry.file_type()?.is_dir() {
                    dirs.push(entry.path());
                }
            }
            Ok(dirs)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Deletes the images under `memory` (`<vm>/<job>/`) of which the index
/// holds no file any more, and VMs' directories left empty; never a live one.
fn sweep_dropped(memory: &Path, index: &ChunkIndex, live: &std::collections::HashSet<PathBuf>) -> io::Result<()> {
    for vm in subdirectories(memory)? {
        for job in subdirectories(&vm)?.into_iter().filter(|j| !live.contains(j)) {
            let files = std::fs::read_dir(&job)?.map(|f| f.map(|f| f.path())).collect::<io::Result<Vec<_>>>()?;
            if files.iter().all(|f| index.hashes_of(f).is_none()) {
                std::fs::remove_dir_all(&job)?;
            }
        }
        if subdirectories(&vm)?.is_empty() && !live.iter().any(|l| l.starts_with(&vm)) {
            std::fs::remove_dir(&vm)?;
        }
    }
    Ok(())
}
