//! One accepted connection of a session, past its handshake: it receives
//! parts of images (offers of pages answered with where each page comes
//! from, the pages sent written once a batch is whole, each part's digest
//! checked) and seals them: kept and indexed once every part is verified
//! and the whole image's digest is the source's.

use std::collections::VecDeque;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::content::{hash, hex, image_digest, zero_page_hash, ByHash, Hash, PAGE};
use crate::index::Holding;
use crate::lock;
use crate::transfer::{same, TransferError, BATCH, WINDOW};
use crate::wire::{read_frame_with, read_payload, write_frame, ByteBuf, Frame, ImageKind, Origin};

use super::landing::Landing;
use super::Destination;

/// One accepted connection.
pub(super) struct Connection<'a, S> {
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

impl<'a, S: AsyncRead + AsyncWrite + Unpin> Connection<'a, S> {
    /// `stream`, whose peer proved itself `job`'s source to `destination`.
    pub(super) fn new(destination: &'a Destination, stream: S, job: u64) -> Self {
        Connection { destination, stream, job, buffer: Vec::new(), payload: Vec::new(), decompressed: Vec::new() }
    }

    /// The stream, for what else it carries (a tunnel).
    pub(super) fn into_stream(self) -> S {
        self.stream
    }

    pub(super) async fn read(&mut self) -> Result<Frame, TransferError> {
        Ok(read_frame_with(&mut self.stream, &mut self.buffer).await?)
    }

    /// Receives one part of an image after its `Image` frame, to its `End`.
    /// A failed check drops the image and tells the source why.
    pub(super) async fn receive_part(
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
                        let index = crate::read(&self.destination.index);
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
    pub(super) async fn seal(&mut self, name: &str, digest: &Hash) -> Result<PathBuf, TransferError> {
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
            let indexed = crate::write(&index).add_file(&path, holding, on_disk);
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
