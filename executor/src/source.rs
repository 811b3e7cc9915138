//! The sending side of a job: a session over several streams, each
//! carrying one part of every image, so that a WAN path's per-connection
//! limits (window, loss recovery) do not cap the job and the hashing and
//! compression run on several cores.
//!
//! A [`Session`] is driven image by image: [`Session::begin`] announces
//! the parts, [`Session::offer`] offers pages (all of them, or a live
//! image's round, or a replica's written blocks), [`Session::end`] checks
//! each part's digest and [`Session::seal`] the whole image's; [`send`]
//! does all of it for images at rest.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::content::{hash, image_digest, zero_page_hash, Hash, PageSource, PAGE};
use crate::shaping::Shaper;
use crate::transfer::{runs, same, Counters, Progress, Tally, TransferError, BATCH, MAX_STREAMS, WINDOW};
use crate::wire::{
    encode, nonce, proof, read_frame_with, read_frame_within, write_frame, write_with_payload, Frame, ImageKind,
    Origin, WireError, MAX_HANDSHAKE_FRAME, VERSION,
};

/// How a source sends.
#[derive(Default)]
pub struct SendOptions {
    /// zstd level; see [`crate::transfer::choose_level`].
    pub level: i32,
    /// Buckets every byte is taken from (the job's cap, the link's).
    pub shapers: Vec<Arc<Shaper>>,
    /// Where progress goes as it changes.
    pub progress: Option<tokio::sync::watch::Sender<Progress>>,
}

/// A batch that saved less than this share by compression is sent as it is,
/// and so are the next [`SKIP_AFTER_POOR`] batches (random or encrypted
/// content costs CPU and saves nothing).
const POOR_SAVING: f64 = 0.03;
const SKIP_AFTER_POOR: u32 = 8;

/// One stream of a session.
struct Lane<S> {
    stream: S,
    compressor: zstd::bulk::Compressor<'static>,
    read_buffer: Vec<u8>,
    /// The pages of the image under way this stream carries.
    part: Range<u64>,
    /// Their hashes as the destination will hold them.
    hashes: Vec<Hash>,
    /// Batches still to send uncompressed.
    skip_compression: u32,
}

/// A job's session with a destination.
pub struct Session<S> {
    lanes: Vec<Lane<S>>,
    options: Arc<SendOptions>,
    tally: Arc<Tally>,
    image: Option<String>,
}

/// Every frame's reply is one of a few; a destination's refusal or failed
/// check arrives instead of the reply expected.
fn unexpected(expected: &str, got: Frame) -> TransferError {
    match got {
        Frame::Refused { reason } => TransferError::Refused(reason),
        Frame::Verified { ok: false, reason } => TransferError::Integrity(reason),
        other => TransferError::Protocol(format!("expected {expected}, got {other:?}")),
    }
}

/// Opens stream `stream` of `streams` as the source: proves the job's
/// secret and checks the destination's proof. Returns the bytes it wrote.
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    job: u64,
    secret: &[u8],
    stream: u16,
    streams: u16,
) -> Result<u64, TransferError> {
    let mine = nonce();
    let mut wire = write_frame(s, &Frame::Hello { version: VERSION, job, stream, streams, nonce: mine }).await?;
    let mut buffer = Vec::new();
    let theirs = match read_frame_within(s, &mut buffer, MAX_HANDSHAKE_FRAME).await? {
        Frame::Challenge { nonce, proof: theirs } => {
            if !same(&theirs, &proof(secret, "destination", job, &mine, &nonce)) {
                return Err(TransferError::NotExpected);
            }
            nonce
        }
        other => return Err(unexpected("a challenge", other)),
    };
    wire += write_frame(s, &Frame::Proof { proof: proof(secret, "source", job, &theirs, &mine) }).await?;
    match read_frame_within(s, &mut buffer, MAX_HANDSHAKE_FRAME).await? {
        Frame::Accepted => Ok(wire),
        other => Err(unexpected("acceptance", other)),
    }
}

/// Opens a tunnel of `job` to the destination's `end` over `stream`
/// (see `tunnel`): proves the secret, asks for the end, and returns once
/// the destination reached it; the stream then carries raw bytes.
pub async fn open_tunnel<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    job: u64,
    secret: &[u8],
    end: &str,
) -> Result<(), TransferError> {
    handshake(stream, job, secret, 0, 1).await?;
    write_frame(stream, &Frame::Tunnel { end: end.to_owned() }).await?;
    match read_frame_within(stream, &mut Vec::new(), MAX_HANDSHAKE_FRAME).await? {
        Frame::Accepted => Ok(()),
        other => Err(unexpected("the tunnel's acceptance", other)),
    }
}

/// Splits `pages` into `parts` contiguous ranges, cut at 64 KiB blocks.
fn parts(pages: u64, parts: usize) -> Vec<Range<u64>> {
    const BLOCK: u64 = 16;
    let per = pages.div_ceil(parts as u64).div_ceil(BLOCK) * BLOCK;
    (0..parts as u64).map(|k| (k * per).min(pages)..((k + 1) * per).min(pages)).collect()
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Session<S> {
    /// Opens a session for `job` over `streams` (TCP streams should have
    /// `TCP_NODELAY`: offers and answers are small frames).
    pub async fn open(
        streams: Vec<S>,
        job: u64,
        secret: &[u8],
        options: Arc<SendOptions>,
    ) -> Result<Session<S>, TransferError> {
        let count = streams.len();
        if count == 0 || count > usize::from(MAX_STREAMS) {
            return Err(TransferError::Protocol(format!("a session opens 1 to {MAX_STREAMS} streams, not {count}")));
        }
        let tally = Arc::new(Tally::new(options.progress.clone()));
        let mut lanes = Vec::with_capacity(count);
        for (k, mut stream) in streams.into_iter().enumerate() {
            let wire = handshake(&mut stream, job, secret, k as u16, count as u16).await?;
            tally.add(&Counters { wire_bytes: wire, ..Counters::default() });
            lanes.push(Lane {
                stream,
                compressor: zstd::bulk::Compressor::new(options.level)?,
                read_buffer: Vec::new(),
                part: 0..0,
                hashes: Vec::new(),
                skip_compression: 0,
            });
        }
        Ok(Session { lanes, options, tally, image: None })
    }

    /// Starts image `name`: the destination holds `baseline` (one hash per
    /// page) once this session offers no page of it. For a new image that
    /// is every page zero, and every page is offered; a replica's baseline
    /// is its last sync, and only the pages written since are offered.
    pub async fn begin(&mut self, name: &str, kind: ImageKind, baseline: Vec<Hash>) -> Result<(), TransferError> {
        let pages = baseline.len() as u64;
        let mut wire = 0;
        let parts = parts(pages, self.lanes.len());
        for (lane, part) in self.lanes.iter_mut().zip(parts) {
            let frame =
                Frame::Image { name: name.to_owned(), kind, pages, first: part.start, count: part.end - part.start };
            wire += write_frame(&mut lane.stream, &frame).await?;
            lane.hashes = baseline[part.start as usize..part.end as usize].to_vec();
            lane.part = part;
        }
        self.tally.add(&Counters { wire_bytes: wire, ..Counters::default() });
        self.image = Some(name.to_owned());
        Ok(())
    }

    /// Offers pages `numbers` (increasing) of the image under way, read
    /// from `source` as they go; each stream offers those of its part, all
    /// at once.
    pub async fn offer(&mut self, source: Arc<dyn PageSource>, numbers: &[u64]) -> Result<(), TransferError> {
        self.tally.update(|p| p.planned_bytes += (numbers.len() * PAGE) as u64);
        let mut tasks = Vec::with_capacity(self.lanes.len());
        for mut lane in std::mem::take(&mut self.lanes) {
            let (from, to) =
                (numbers.partition_point(|&n| n < lane.part.start), numbers.partition_point(|&n| n < lane.part.end));
            let mine = numbers[from..to].to_vec();
            let (source, options, tally) = (source.clone(), self.options.clone(), self.tally.clone());
            tasks.push(tokio::spawn(async move {
                let outcome = lane.offer(&*source, &mine, &options, &tally).await;
                (lane, outcome)
            }));
        }
        let mut first_error = None;
        for task in tasks {
            let (lane, outcome) = task.await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
            self.lanes.push(lane);
            if let Err(e) = outcome {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Ends every part of the image under way; the destination checks each part's digest.
    pub async fn end(&mut self) -> Result<(), TransferError> {
        let mut wire = 0;
        for lane in &mut self.lanes {
            wire += write_frame(&mut lane.stream, &Frame::End { digest: image_digest(&lane.hashes) }).await?;
        }
        self.tally.add(&Counters { wire_bytes: wire, ..Counters::default() });
        for lane in &mut self.lanes {
            lane.verdict().await?;
        }
        Ok(())
    }

    /// Seals the image under way: the destination compares the whole
    /// image's digest and keeps it. Returns its page hashes.
    pub async fn seal(&mut self) -> Result<Vec<Hash>, TransferError> {
        let name = self.image.take().ok_or_else(|| TransferError::Protocol("no image to seal".into()))?;
        let hashes: Vec<Hash> = self.lanes.iter().flat_map(|lane| lane.hashes.iter().copied()).collect();
        let lane = &mut self.lanes[0];
        let wire = write_frame(&mut lane.stream, &Frame::Seal { name, digest: image_digest(&hashes) }).await?;
        self.tally.add(&Counters { wire_bytes: wire, ..Counters::default() });
        lane.verdict().await?;
        Ok(hashes)
    }

    /// Gives the image under way up: the destination drops what it has of it.
    pub async fn abort(&mut self, reason: &str) -> Result<(), TransferError> {
        self.image = None;
        for lane in &mut self.lanes {
            write_frame(&mut lane.stream, &Frame::Abort { reason: reason.to_owned() }).await?;
        }
        Ok(())
    }

    /// Moves a whole image at rest: every page offered, then ended and sealed.
    pub async fn transfer(
        &mut self,
        name: &str,
        kind: ImageKind,
        source: Arc<dyn PageSource>,
    ) -> Result<Vec<Hash>, TransferError> {
        let pages = source.page_count();
        self.begin(name, kind, vec![zero_page_hash(); pages as usize]).await?;
        let numbers: Vec<u64> = (0..pages).collect();
        self.offer(source, &numbers).await?;
        self.end().await?;
        self.seal().await
    }

    pub fn progress(&self) -> Progress {
        self.tally.progress()
    }

    /// Sets the live-migration figures of the progress report.
    pub fn report_round(&self, round: u32, dirty_bytes_per_s: f64, expected_downtime_s: f64) {
        self.tally.update(|p| {
            p.round = round;
            p.dirty_bytes_per_s = dirty_bytes_per_s;
            p.expected_downtime_s = Some(expected_downtime_s);
        });
    }
}

/// A batch offered and not yet answered.
struct Offered {
    numbers: Vec<u64>,
    hashes: Vec<Hash>,
    pages: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Lane<S> {
    async fn verdict(&mut self) -> Result<(), TransferError> {
        match read_frame_with(&mut self.stream, &mut self.read_buffer).await? {
            Frame::Verified { ok: true, .. } => Ok(()),
            other => Err(unexpected("a verdict", other)),
        }
    }

    /// Offers `numbers` (of this lane's part, increasing), [`WINDOW`]
    /// batches in flight, and sends what the destination lacks.
    async fn offer(
        &mut self,
        source: &dyn PageSource,
        numbers: &[u64],
        options: &SendOptions,
        tally: &Tally,
    ) -> Result<(), TransferError> {
        let batches: Vec<&[u64]> = numbers.chunks(BATCH).collect();
        let mut offered: VecDeque<Offered> = VecDeque::new();
        let mut spare: Vec<Vec<u8>> = Vec::new();
        let mut next = 0;
        while next < batches.len() || !offered.is_empty() {
            let mut counters = Counters::default();
            while next < batches.len() && offered.len() < WINDOW {
                let numbers = batches[next].to_vec();
                let mut pages = spare.pop().unwrap_or_default();
                pages.resize(numbers.len() * PAGE, 0);
                // Once per batch: a qemu VM's pages come from its NBD export, which may be slow to answer.
                crate::blocking(|| -> std::io::Result<()> {
                    let mut i = 0;
                    for (first, len) in runs(&numbers) {
                        let len = len as usize;
                        source.read_pages(first, &mut pages[i * PAGE..(i + len) * PAGE])?;
                        i += len;
                    }
                    Ok(())
                })?;
                let hashes: Vec<Hash> = pages.chunks_exact(PAGE).map(hash).collect();
                let frame = Frame::Offer { runs: runs(&numbers), hashes: hashes.clone() };
                counters.wire_bytes += write_frame(&mut self.stream, &frame).await?;
                counters.raw_bytes += pages.len() as u64;
                offered.push_back(Offered { numbers, hashes, pages });
                next += 1;
            }
            let batch = offered.pop_front().expect("an offer is out");
            let origins = match read_frame_with(&mut self.stream, &mut self.read_buffer).await? {
                Frame::Need { origins } if origins.len() == batch.numbers.len() => origins,
                other => return Err(unexpected("a need list", other)),
            };
            let mut needed: Vec<&[u8]> = Vec::new();
            for (i, &byte) in origins.iter().enumerate() {
                let origin = Origin::from_byte(byte)
                    .ok_or_else(|| TransferError::Protocol(format!("no origin {byte} for a page")))?;
                counters.count(origin);
                if origin == Origin::Sent {
                    needed.push(&batch.pages[i * PAGE..(i + 1) * PAGE]);
                }
            }
            let packed = if needed.is_empty() || self.skip_compression > 0 {
                self.skip_compression = self.skip_compression.saturating_sub(1);
                None
            } else {
                let plain = needed.concat();
                let packed = self.compressor.compress(&plain)?;
                if (packed.len() as f64) < plain.len() as f64 * (1.0 - POOR_SAVING) {
                    Some(packed)
                } else {
                    self.skip_compression = SKIP_AFTER_POOR;
                    None
                }
            };
            let payload: Vec<&[u8]> = match &packed {
                Some(packed) => vec![packed.as_slice()],
                None => needed,
            };
            let len: usize = payload.iter().map(|p| p.len()).sum();
            let header = encode(&Frame::Pages { compressed: packed.is_some(), len: len as u32 })?;
            counters.compressed_bytes += len as u64;
            for shaper in &options.shapers {
                shaper.take((header.len() + len) as u64).await;
            }
            counters.wire_bytes += write_with_payload(&mut self.stream, &header, &payload).await?;
            for (n, h) in batch.numbers.iter().zip(batch.hashes) {
                self.hashes[(n - self.part.start) as usize] = h;
            }
            spare.push(batch.pages);
            tally.add(&counters);
        }
        Ok(())
    }
}

/// Sends `images` (name, pages) for `job` over `streams` to the destination; returns what it took.
pub async fn send<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    streams: Vec<S>,
    job: u64,
    secret: &[u8],
    images: &[(String, Arc<dyn PageSource>)],
    options: Arc<SendOptions>,
) -> Result<Counters, TransferError> {
    let mut session = Session::open(streams, job, secret, options).await?;
    for (name, source) in images {
        session.transfer(name, ImageKind::Migration, source.clone()).await?;
    }
    Ok(session.progress().counters)
}

/// Like [`send`], opening `streams` connections with `connect`, and again
/// when one drops, `attempts` times at most: the destination keeps what
/// arrived, so each retry offers everything again but sends only what is
/// missing. Returns the last (successful) attempt's counters and the attempts made.
pub async fn send_resuming<S, F, Fut>(
    mut connect: F,
    streams: u16,
    job: u64,
    secret: &[u8],
    images: &[(String, Arc<dyn PageSource>)],
    options: Arc<SendOptions>,
    attempts: u32,
) -> Result<(Counters, u32), TransferError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<S>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut opened = Vec::with_capacity(usize::from(streams));
        for _ in 0..streams {
            opened.push(connect().await.map_err(WireError::from)?);
        }
        match send(opened, job, secret, images, options.clone()).await {
            Ok(counters) => return Ok((counters, attempt)),
            Err(e) if e.is_dropped_connection() && attempt < attempts => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_the_image_at_block_bounds() {
        assert_eq!(parts(100, 4), [0..32, 32..64, 64..96, 96..100]);
        assert_eq!(parts(10, 3), [0..10, 10..10, 10..10]);
        assert_eq!(parts(0, 2), [0..0, 0..0]);
    }
}
