//! Content-addressed transfer of VM images between two executors.
//!
//! The source offers page hashes in batches; the destination answers which
//! it lacks (not zero, not in its chunk index, not already received in this
//! image); only those travel, zstd-compressed. Every page that arrives is
//! checked against its hash, and each image's digest is compared at both
//! ends before the destination keeps it: a mismatch fails the transfer and
//! leaves nothing behind.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncRead, AsyncWrite};

use crate::content::{hash, hex, image_digest, pages, zero_page_hash, Hash, PAGE};
use crate::index::ChunkIndex;
use crate::shaping::Shaper;
use crate::wire::{encode, nonce, proof, read_frame, write_encoded, write_frame, ByteBuf, Frame, WireError, VERSION};

/// Pages offered per batch.
pub const BATCH: usize = 1024;

/// Batches offered before the first is answered.
pub const WINDOW: usize = 4;

/// The most pages one image may have (1 TiB).
pub const MAX_IMAGE_PAGES: u64 = 1 << 28;

/// What a transfer moved and what it saved, in bytes unless named.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counters {
    /// The images' own size.
    pub raw_bytes: u64,
    /// Everything written to the connection (frames, hashes, pages).
    pub wire_bytes: u64,
    /// Pages that were all zero: never sent.
    pub zero_pages: u64,
    /// Pages the destination already held (its index, or earlier in the image).
    pub held_pages: u64,
    pub sent_pages: u64,
    /// The sent pages after compression.
    pub compressed_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("refused: {0}")]
    Refused(String),
    #[error("protocol: {0}")]
    Protocol(String),
    /// A page or image that does not match its hash: nothing is kept.
    #[error("integrity: {0}")]
    Integrity(String),
    #[error("storage: {0}")]
    Storage(#[from] io::Error),
}

fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    // blake3's Hash compares in constant time.
    blake3::Hash::from(*a) == blake3::Hash::from(*b)
}

/// How a source sends.
pub struct SendOptions<'a> {
    /// zstd level; see [`choose_level`].
    pub level: i32,
    /// Buckets every byte is taken from (the job's cap, the link's).
    pub shapers: Vec<&'a Shaper>,
}

/// The zstd level to send at: the strongest of 1, 3 and 6 whose measured
/// speed on `sample` (pages of the image) is at least twice the cap, so
/// that compression never becomes the bottleneck; level 1 when unshaped.
pub fn choose_level(sample: &[u8], cap_bytes_per_s: Option<f64>) -> i32 {
    let Some(cap) = cap_bytes_per_s else { return 1 };
    let sample = &sample[..sample.len().min(256 * PAGE)];
    let mut chosen = 1;
    for level in [3, 6] {
        let started = std::time::Instant::now();
        let Ok(mut compressor) = zstd::bulk::Compressor::new(level) else { continue };
        for page in pages(sample) {
            let _ = compressor.compress(page);
        }
        let speed = sample.len() as f64 / started.elapsed().as_secs_f64().max(1e-9);
        if speed >= 2.0 * cap {
            chosen = level;
        }
    }
    chosen
}

/// Opens a session as the source: proves the job's secret and checks the
/// destination's proof. Returns the bytes it wrote.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    job: u64,
    secret: &[u8],
) -> Result<u64, TransferError> {
    let mine = nonce();
    let mut wire = write_frame(stream, &Frame::Hello { version: VERSION, job, nonce: mine }).await?;
    let theirs = match read_frame(stream).await? {
        Frame::Challenge { nonce, proof: theirs } => {
            if !same(&theirs, &proof(secret, "destination", job, &mine, &nonce)) {
                return Err(TransferError::Refused("the destination does not hold this job's secret".into()));
            }
            nonce
        }
        Frame::Refused { reason } => return Err(TransferError::Refused(reason)),
        other => return Err(TransferError::Protocol(format!("expected a challenge, got {other:?}"))),
    };
    wire += write_frame(stream, &Frame::Proof { proof: proof(secret, "source", job, &theirs, &mine) }).await?;
    match read_frame(stream).await? {
        Frame::Accepted => Ok(wire),
        Frame::Refused { reason } => Err(TransferError::Refused(reason)),
        other => Err(TransferError::Protocol(format!("expected acceptance, got {other:?}"))),
    }
}

/// Page numbers as runs of consecutive pages.
fn runs(numbers: impl Iterator<Item = u64>) -> Vec<(u64, u32)> {
    let mut runs: Vec<(u64, u32)> = Vec::new();
    for n in numbers {
        match runs.last_mut() {
            Some((first, len)) if *first + u64::from(*len) == n => *len += 1,
            _ => runs.push((n, 1)),
        }
    }
    runs
}

/// Offers `pages` (number, content; numbers increasing) of the image under
/// way, [`WINDOW`] batches in flight, and sends what the destination needs.
/// Returns the pages' hashes in order.
pub async fn offer<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    pages: &[(u64, &[u8])],
    compressor: &mut zstd::bulk::Compressor<'_>,
    options: &SendOptions<'_>,
    counters: &mut Counters,
) -> Result<Vec<Hash>, TransferError> {
    let zero = zero_page_hash();
    let batches: Vec<&[(u64, &[u8])]> = pages.chunks(BATCH).collect();
    let mut all = Vec::with_capacity(pages.len());
    let mut offered: VecDeque<(usize, Vec<Hash>)> = VecDeque::new();
    let mut next = 0;
    while next < batches.len() || !offered.is_empty() {
        while next < batches.len() && offered.len() < WINDOW {
            let hashes: Vec<Hash> = batches[next].iter().map(|(_, p)| hash(p)).collect();
            let frame = Frame::Offer { runs: runs(batches[next].iter().map(|&(n, _)| n)), hashes: hashes.clone() };
            counters.wire_bytes += write_frame(stream, &frame).await?;
            offered.push_back((next, hashes));
            next += 1;
        }
        let (b, hashes) = offered.pop_front().expect("an offer is out");
        let batch = batches[b];
        let bitmap = match read_frame(stream).await? {
            Frame::Need { bitmap } if bitmap.len() == batch.len().div_ceil(8) => bitmap,
            other => return Err(TransferError::Protocol(format!("expected a need list, got {other:?}"))),
        };
        let mut needed = Vec::new();
        for (i, h) in hashes.iter().enumerate() {
            if bitmap[i / 8] & (1 << (i % 8)) != 0 {
                let packed = compressor.compress(batch[i].1)?;
                counters.sent_pages += 1;
                counters.compressed_bytes += packed.len() as u64;
                needed.push((batch[i].0, *h, ByteBuf::from(packed)));
            } else if *h == zero {
                counters.zero_pages += 1;
            } else {
                counters.held_pages += 1;
            }
        }
        let frame = encode(&Frame::Pages { pages: needed })?;
        for shaper in &options.shapers {
            shaper.take(frame.len() as u64).await;
        }
        counters.wire_bytes += write_encoded(stream, &frame).await?;
        all.extend(hashes);
    }
    Ok(all)
}

/// Ends the image under way with its digest; the destination's verdict.
pub async fn finish<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    page_hashes: &[Hash],
    counters: &mut Counters,
) -> Result<(), TransferError> {
    counters.wire_bytes += write_frame(stream, &Frame::End { digest: image_digest(page_hashes) }).await?;
    match read_frame(stream).await? {
        Frame::Verified { ok: true, .. } => Ok(()),
        Frame::Verified { reason, .. } => Err(TransferError::Integrity(reason)),
        other => Err(TransferError::Protocol(format!("expected verification, got {other:?}"))),
    }
}

/// Sends `images` (name, bytes; whole pages) for `job` to the destination
/// at the other end of `stream` (a TCP stream should have `TCP_NODELAY`:
/// offers and answers are small frames).
pub async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    job: u64,
    secret: &[u8],
    images: &[(&str, &[u8])],
    options: &SendOptions<'_>,
) -> Result<Counters, TransferError> {
    let mut counters = Counters { wire_bytes: handshake(stream, job, secret).await?, ..Counters::default() };
    let mut compressor = zstd::bulk::Compressor::new(options.level)?;
    for &(name, image) in images {
        if image.len() % PAGE != 0 {
            return Err(TransferError::Protocol(format!("image {name} is not whole pages long")));
        }
        counters.raw_bytes += image.len() as u64;
        let numbered: Vec<(u64, &[u8])> = pages(image).enumerate().map(|(n, p)| (n as u64, p)).collect();
        counters.wire_bytes +=
            write_frame(stream, &Frame::Image { name: name.to_owned(), pages: numbered.len() as u64 }).await?;
        let hashes = offer(stream, &numbered, &mut compressor, options, &mut counters).await?;
        finish(stream, &hashes, &mut counters).await?;
    }
    Ok(counters)
}

/// Like [`send`], connecting with `connect` again when the connection
/// drops, `attempts` times at most: the destination keeps what arrived, so
/// each retry offers everything again but sends only what is missing.
/// Returns the last (successful) attempt's counters and the attempts made.
pub async fn send_resuming<S, F, Fut>(
    mut connect: F,
    job: u64,
    secret: &[u8],
    images: &[(&str, &[u8])],
    options: &SendOptions<'_>,
    attempts: u32,
) -> Result<(Counters, u32), TransferError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = io::Result<S>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut stream = connect().await?;
        match send(&mut stream, job, secret, images, options).await {
            Ok(counters) => return Ok((counters, attempt)),
            Err(TransferError::Wire(WireError::Io(_))) if attempt < attempts => continue,
            Err(e) => return Err(e),
        }
    }
}

/// What a destination received in one session.
#[derive(Debug)]
pub struct Received {
    pub job: u64,
    /// The images kept, in `out_dir`.
    pub images: Vec<PathBuf>,
}

/// Answers one session on `stream` as the destination: `secret_for` gives
/// a job's secret (`None`: unknown job); images land in `out_dir`, and the
/// pages received join `index`.
pub async fn receive<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    secret_for: impl Fn(u64) -> Option<Vec<u8>>,
    index: &mut ChunkIndex,
    out_dir: &Path,
) -> Result<Received, TransferError> {
    let (job, theirs) = match read_frame(stream).await? {
        Frame::Hello { version, job, nonce } if version == VERSION => (job, nonce),
        Frame::Hello { version, .. } => {
            let reason = format!("protocol version {version} is not {VERSION}");
            write_frame(stream, &Frame::Refused { reason: reason.clone() }).await?;
            return Err(TransferError::Refused(reason));
        }
        other => return Err(TransferError::Protocol(format!("expected hello, got {other:?}"))),
    };
    let Some(secret) = secret_for(job) else {
        let reason = format!("no job {job} here");
        write_frame(stream, &Frame::Refused { reason: reason.clone() }).await?;
        return Err(TransferError::Refused(reason));
    };
    let mine = nonce();
    write_frame(stream, &Frame::Challenge { nonce: mine, proof: proof(&secret, "destination", job, &theirs, &mine) })
        .await?;
    match read_frame(stream).await? {
        Frame::Proof { proof: given } if same(&given, &proof(&secret, "source", job, &mine, &theirs)) => {
            write_frame(stream, &Frame::Accepted).await?;
        }
        _ => {
            let reason = "wrong job secret".to_owned();
            write_frame(stream, &Frame::Refused { reason: reason.clone() }).await?;
            return Err(TransferError::Refused(reason));
        }
    }
    let mut kept = Vec::new();
    loop {
        let (name, count) = match read_frame(stream).await {
            Ok(Frame::Image { name, pages }) => (name, pages),
            Err(WireError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Ok(other) => return Err(TransferError::Protocol(format!("expected an image, got {other:?}"))),
            Err(e) => return Err(e.into()),
        };
        check_name(&name)?;
        if count > MAX_IMAGE_PAGES {
            return Err(TransferError::Protocol(format!("image {name} of {count} pages is too large")));
        }
        let path = out_dir.join(&name);
        let partial = out_dir.join(format!(".{name}.partial"));
        // Read as well as written: later copies of a page are read back from it.
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&partial)?;
        file.set_len(count * PAGE as u64)?;
        // What an earlier session whose connection dropped left of this image.
        let resume = out_dir.join(format!(".{name}.resume"));
        let mut on_disk = vec![zero_page_hash(); count as usize];
        match receive_image(stream, index, &file, &mut on_disk).await {
            Ok(()) => {
                // The verdict goes first: a live guest is paused until it arrives, and a
                // rename of a freshly written file can wait on the disk's writeback.
                write_frame(stream, &Frame::Verified { ok: true, reason: String::new() }).await?;
                file.sync_all()?;
                std::fs::rename(&partial, &path)?;
                index.add_file(&path, &on_disk)?;
                if resume.exists() {
                    index.forget(&resume)?;
                    std::fs::remove_file(&resume)?;
                }
                kept.push(path);
            }
            Err(e @ TransferError::Wire(WireError::Io(_))) => {
                // The connection dropped: what arrived (every page verified) stays
                // indexed, so that the next session sends only the rest.
                if resume.exists() {
                    index.forget(&resume)?;
                }
                std::fs::rename(&partial, &resume)?;
                index.add_file(&resume, &on_disk)?;
                return Err(e);
            }
            Err(e) => {
                // Nothing half-received is kept.
                let _ = std::fs::remove_file(&partial);
                if let TransferError::Integrity(reason) = &e {
                    write_frame(stream, &Frame::Verified { ok: false, reason: reason.clone() }).await?;
                    return Err(TransferError::Integrity(format!("image {name}: {reason}")));
                }
                return Err(e);
            }
        }
    }
    Ok(Received { job, images: kept })
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

/// A batch the destination answered and awaits pages for.
struct Pending {
    /// Page numbers, increasing.
    numbers: Vec<u64>,
    hashes: Vec<Hash>,
    bitmap: Vec<u8>,
    /// The batch's pages: zero, copied from the index or this image, or still to come.
    pages: Vec<u8>,
    /// Pages (position in the batch) equal to a page already asked for: (position, that page's number).
    copies: Vec<(usize, u64)>,
}

/// Receives one image after its `Image` frame into `file` (sized already,
/// all zero): offers of pages in any order and as often as a live image
/// needs, each batch written once whole. `on_disk` (one hash per page)
/// follows what the file holds; the image is done once its digest
/// matches the source's.
async fn receive_image<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    index: &ChunkIndex,
    file: &std::fs::File,
    on_disk: &mut [Hash],
) -> Result<(), TransferError> {
    let count = on_disk.len() as u64;
    use std::os::unix::fs::FileExt;
    let zero = zero_page_hash();
    let mut decompressor = zstd::bulk::Decompressor::new()?;
    // What each page will hold once the batches answered are written.
    let mut page_hash: Vec<Hash> = on_disk.to_vec();
    // Pages written to the file, by hash: later copies are read back, not sent.
    let mut written: HashMap<Hash, u64> = HashMap::new();
    // Pages asked for and not yet arrived, by hash: another copy is not asked for again.
    let mut asked: HashMap<Hash, u64> = HashMap::new();
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut spare: Vec<Vec<u8>> = Vec::new();
    loop {
        match read_frame(stream).await? {
            Frame::Offer { runs, hashes } => {
                let numbers: Vec<u64> =
                    runs.iter().flat_map(|&(first, len)| first..first.saturating_add(u64::from(len))).collect();
                let increasing = numbers.windows(2).all(|w| w[0] < w[1]);
                if numbers.len() != hashes.len()
                    || hashes.is_empty()
                    || hashes.len() > BATCH
                    || !increasing
                    || numbers.last().is_some_and(|&n| n >= count)
                {
                    return Err(TransferError::Protocol("an offer of pages that do not fit the image".into()));
                }
                if pending.len() >= WINDOW {
                    return Err(TransferError::Protocol(format!("more than {WINDOW} offers unanswered")));
                }
                // Buffers of written batches are reused: fresh large allocations cost page faults.
                let mut pages = spare.pop().unwrap_or_default();
                pages.clear();
                pages.resize(hashes.len() * PAGE, 0);
                let mut bitmap = vec![0u8; hashes.len().div_ceil(8)];
                let mut copies = Vec::new();
                for (i, (&n, h)) in numbers.iter().zip(&hashes).enumerate() {
                    // The page's old content is about to go: nothing may copy from it any more.
                    let old = page_hash[n as usize];
                    if written.get(&old) == Some(&n) {
                        written.remove(&old);
                    }
                    if asked.get(&old) == Some(&n) {
                        asked.remove(&old);
                    }
                    page_hash[n as usize] = *h;
                    let slot = &mut pages[i * PAGE..(i + 1) * PAGE];
                    if *h == zero {
                        continue;
                    }
                    if let Some(&at) = written.get(h) {
                        file.read_exact_at(slot, at * PAGE as u64)?;
                    } else if let Some(&at) = asked.get(h) {
                        copies.push((i, at));
                    } else if let Some(page) = index.get(h)? {
                        slot.copy_from_slice(&page);
                    } else {
                        bitmap[i / 8] |= 1 << (i % 8);
                        asked.insert(*h, n);
                    }
                }
                write_frame(stream, &Frame::Need { bitmap: bitmap.clone() }).await?;
                pending.push_back(Pending { numbers, hashes, bitmap, pages, copies });
            }
            Frame::Pages { pages: sent } => {
                let Some(mut batch) = pending.pop_front() else {
                    return Err(TransferError::Protocol("pages with no offer out".into()));
                };
                let wanted = batch.bitmap.iter().map(|b| b.count_ones() as usize).sum::<usize>();
                if sent.len() != wanted {
                    return Err(TransferError::Protocol(format!("{} pages sent for {wanted} needed", sent.len())));
                }
                for (at, h, packed) in sent {
                    let i = batch
                        .numbers
                        .binary_search(&at)
                        .map_err(|_| TransferError::Protocol(format!("page {at} was not in the offer")))?;
                    if batch.bitmap[i / 8] & (1 << (i % 8)) == 0 || h != batch.hashes[i] {
                        return Err(TransferError::Protocol(format!("page {at} was not asked for")));
                    }
                    let page = decompressor
                        .decompress(&packed, PAGE)
                        .map_err(|e| TransferError::Integrity(format!("page {at} does not decompress: {e}")))?;
                    if page.len() != PAGE || hash(&page) != h {
                        return Err(TransferError::Integrity(format!("page {at} does not match its hash {}", hex(&h))));
                    }
                    batch.pages[i * PAGE..(i + 1) * PAGE].copy_from_slice(&page);
                }
                // Copies of pages asked for earlier: in this batch, or in one already written.
                for &(i, at) in &batch.copies {
                    match batch.numbers.binary_search(&at) {
                        Ok(j) => batch.pages.copy_within(j * PAGE..(j + 1) * PAGE, i * PAGE),
                        Err(_) => file.read_exact_at(&mut batch.pages[i * PAGE..(i + 1) * PAGE], at * PAGE as u64)?,
                    }
                }
                // The batch is whole: onto the disk, run by run.
                let mut i = 0;
                while i < batch.numbers.len() {
                    let mut j = i + 1;
                    while j < batch.numbers.len() && batch.numbers[j] == batch.numbers[j - 1] + 1 {
                        j += 1;
                    }
                    file.write_all_at(&batch.pages[i * PAGE..j * PAGE], batch.numbers[i] * PAGE as u64)?;
                    i = j;
                }
                for (&n, h) in batch.numbers.iter().zip(&batch.hashes) {
                    on_disk[n as usize] = *h;
                    if *h != zero && page_hash[n as usize] == *h {
                        written.entry(*h).or_insert(n);
                        if asked.get(h) == Some(&n) {
                            asked.remove(h);
                        }
                    }
                }
                spare.push(batch.pages);
            }
            Frame::End { digest: expected } => {
                if !pending.is_empty() {
                    return Err(TransferError::Protocol("the image ended with offers unanswered".into()));
                }
                let got = image_digest(on_disk);
                if !same(&got, &expected) {
                    return Err(TransferError::Integrity(format!(
                        "image digest {} is not the source's {}",
                        hex(&got),
                        hex(&expected)
                    )));
                }
                return Ok(());
            }
            Frame::Abort { reason } => return Err(TransferError::Refused(format!("the source gave up: {reason}"))),
            other => return Err(TransferError::Protocol(format!("expected an offer or the end, got {other:?}"))),
        }
    }
}
