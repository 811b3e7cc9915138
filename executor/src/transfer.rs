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

use crate::content::{digest, hash, hex, pages, zero_page_hash, Hash, PAGE};
use crate::index::ChunkIndex;
use crate::shaping::Shaper;
use crate::wire::{frame_len, nonce, proof, read_frame, write_frame, ByteBuf, Frame, WireError, VERSION};

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

/// A page as it travels: zstd at `level` (for one page; a transfer keeps one compressor).
pub fn compress(page: &[u8], level: i32) -> io::Result<Vec<u8>> {
    zstd::bulk::Compressor::new(level)?.compress(page)
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

/// Sends `images` (name, bytes; whole pages) for `job` to the destination
/// at the other end of `stream` (a TCP stream should have `TCP_NODELAY`:
/// each batch is a round trip of small frames).
pub async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    job: u64,
    secret: &[u8],
    images: &[(&str, &[u8])],
    options: &SendOptions<'_>,
) -> Result<Counters, TransferError> {
    let mut counters = Counters::default();
    let mine = nonce();
    counters.wire_bytes += write_frame(stream, &Frame::Hello { version: VERSION, job, nonce: mine }).await?;
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
    counters.wire_bytes +=
        write_frame(stream, &Frame::Proof { proof: proof(secret, "source", job, &theirs, &mine) }).await?;
    match read_frame(stream).await? {
        Frame::Accepted => {}
        Frame::Refused { reason } => return Err(TransferError::Refused(reason)),
        other => return Err(TransferError::Protocol(format!("expected acceptance, got {other:?}"))),
    }
    let zero = zero_page_hash();
    let mut compressor = zstd::bulk::Compressor::new(options.level)?;
    for &(name, image) in images {
        if image.len() % PAGE != 0 {
            return Err(TransferError::Protocol(format!("image {name} is not whole pages long")));
        }
        counters.raw_bytes += image.len() as u64;
        let all: Vec<&[u8]> = pages(image).collect();
        counters.wire_bytes +=
            write_frame(stream, &Frame::Image { name: name.to_owned(), pages: all.len() as u64 }).await?;
        // Up to WINDOW offers are out at once, so that both ends keep working.
        let batches: Vec<&[&[u8]]> = all.chunks(BATCH).collect();
        let mut offered: VecDeque<(u64, Vec<Hash>)> = VecDeque::new();
        let mut next = 0;
        while next < batches.len() || !offered.is_empty() {
            while next < batches.len() && offered.len() < WINDOW {
                let first = (next * BATCH) as u64;
                let hashes: Vec<Hash> = batches[next].iter().map(|p| hash(p)).collect();
                counters.wire_bytes += write_frame(stream, &Frame::Offer { first, hashes: hashes.clone() }).await?;
                offered.push_back((first, hashes));
                next += 1;
            }
            let (first, hashes) = offered.pop_front().expect("an offer is out");
            let batch = batches[first as usize / BATCH];
            let bitmap = match read_frame(stream).await? {
                Frame::Need { bitmap } if bitmap.len() == batch.len().div_ceil(8) => bitmap,
                other => return Err(TransferError::Protocol(format!("expected a need list, got {other:?}"))),
            };
            let mut needed = Vec::new();
            for (i, h) in hashes.iter().enumerate() {
                if bitmap[i / 8] & (1 << (i % 8)) != 0 {
                    let packed = compressor.compress(batch[i])?;
                    counters.sent_pages += 1;
                    counters.compressed_bytes += packed.len() as u64;
                    needed.push((first + i as u64, *h, ByteBuf::from(packed)));
                } else if *h == zero {
                    counters.zero_pages += 1;
                } else {
                    counters.held_pages += 1;
                }
            }
            let frame = Frame::Pages { pages: needed };
            for shaper in &options.shapers {
                shaper.take(frame_len(&frame)).await;
            }
            counters.wire_bytes += write_frame(stream, &frame).await?;
        }
        counters.wire_bytes += write_frame(stream, &Frame::End { digest: digest(image) }).await?;
        match read_frame(stream).await? {
            Frame::Verified { ok: true, .. } => {}
            Frame::Verified { reason, .. } => return Err(TransferError::Integrity(reason)),
            other => return Err(TransferError::Protocol(format!("expected verification, got {other:?}"))),
        }
    }
    Ok(counters)
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
        match receive_image(stream, index, &file, count).await {
            Ok(hashes) => {
                file.sync_all()?;
                std::fs::rename(&partial, &path)?;
                index.add_file(&path, &hashes)?;
                write_frame(stream, &Frame::Verified { ok: true, reason: String::new() }).await?;
                kept.push(path);
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
    first: u64,
    hashes: Vec<Hash>,
    bitmap: Vec<u8>,
    /// The batch's pages: zero, copied from the index or this image, or still to come.
    pages: Vec<u8>,
    /// Pages (index in the batch) equal to a page already asked for: (index, that page's number).
    copies: Vec<(usize, u64)>,
}

/// Receives one image's pages after its `Image` frame into `file` (sized
/// already), batch by batch in order; returns its page hashes once the
/// image's digest matches the source's.
async fn receive_image<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    index: &ChunkIndex,
    file: &std::fs::File,
    count: u64,
) -> Result<Vec<Hash>, TransferError> {
    use std::os::unix::fs::FileExt;
    let zero = zero_page_hash();
    let mut decompressor = zstd::bulk::Decompressor::new()?;
    let mut hasher = blake3::Hasher::new();
    let mut all: Vec<Hash> = Vec::with_capacity(count.min(MAX_IMAGE_PAGES) as usize);
    // Pages already written to the file, by hash: later copies are read back, not sent.
    let mut written: HashMap<Hash, u64> = HashMap::new();
    // Pages asked for and not yet arrived, by hash: another copy is not asked for again.
    let mut asked: HashMap<Hash, u64> = HashMap::new();
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut spare: Vec<Vec<u8>> = Vec::new();
    let mut next = 0u64;
    loop {
        match read_frame(stream).await? {
            Frame::Offer { first, hashes } => {
                if first != next || hashes.is_empty() || hashes.len() > BATCH || first + hashes.len() as u64 > count {
                    return Err(TransferError::Protocol(format!(
                        "an offer of pages from {first} does not follow {next}"
                    )));
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
                for (i, h) in hashes.iter().enumerate() {
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
                        asked.insert(*h, first + i as u64);
                    }
                }
                write_frame(stream, &Frame::Need { bitmap: bitmap.clone() }).await?;
                next = first + hashes.len() as u64;
                pending.push_back(Pending { first, hashes, bitmap, pages, copies });
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
                    let i = at
                        .checked_sub(batch.first)
                        .filter(|&i| (i as usize) < batch.hashes.len())
                        .ok_or_else(|| TransferError::Protocol(format!("page {at} was not in the offer")))?
                        as usize;
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
                    if at >= batch.first {
                        let from = (at - batch.first) as usize * PAGE;
                        batch.pages.copy_within(from..from + PAGE, i * PAGE);
                    } else {
                        file.read_exact_at(&mut batch.pages[i * PAGE..(i + 1) * PAGE], at * PAGE as u64)?;
                    }
                }
                // The batch is whole: onto the disk, into the digest, in order.
                file.write_all_at(&batch.pages, batch.first * PAGE as u64)?;
                hasher.update(&batch.pages);
                for (i, h) in batch.hashes.iter().enumerate() {
                    if *h != zero {
                        written.entry(*h).or_insert(batch.first + i as u64);
                        asked.remove(h);
                    }
                }
                all.extend(batch.hashes);
                spare.push(batch.pages);
            }
            Frame::End { digest: expected } => {
                if next != count || !pending.is_empty() {
                    return Err(TransferError::Protocol(format!("image ended after {next} of {count} pages")));
                }
                let got = *hasher.finalize().as_bytes();
                if !same(&got, &expected) {
                    return Err(TransferError::Integrity(format!(
                        "image digest {} is not the source's {}",
                        hex(&got),
                        hex(&expected)
                    )));
                }
                return Ok(all);
            }
            other => return Err(TransferError::Protocol(format!("expected an offer or the end, got {other:?}"))),
        }
    }
}
