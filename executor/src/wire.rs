//! The executor-to-executor protocol: length-prefixed frames (a u32
//! big-endian length, then the frame in postcard), versioned in the first
//! frame, with mutual challenge-response on the job's secret (the secret
//! itself never travels).
//!
//! A job's session runs over several connections (streams) at once, each
//! opened alike: the source sends `Hello` (the job, which stream of how
//! many); the destination answers `Challenge` (its nonce and its proof of
//! the secret); the source checks it and sends `Proof`; the destination
//! answers `Accepted` or `Refused`. Each image is split into one part per
//! stream. On each stream, per image: `Image` (the part it carries), then
//! batches of `Offer` (page numbers and hashes) answered by `Need` (where
//! the destination gets each page), then `Pages` (those it lacks,
//! compressed), several offers in flight; a live image is offered again in
//! rounds, only its pages written since; then `End` with the part's digest,
//! answered by `Verified`, or `Abort`. Once every part is verified, the
//! first stream sends `Seal` with the whole image's digest, answered by
//! `Verified`: only then does the destination keep the image. A stream may
//! instead open a tunnel (`Tunnel`, answered `Accepted`), after which it
//! carries a hypervisor's raw bytes both ways.

use std::io::IoSlice;

use serde::{Deserialize, Serialize};
pub use serde_bytes::ByteBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::content::Hash;

pub const VERSION: u16 = 4;

/// The largest frame either side accepts.
pub const MAX_FRAME: usize = 64 << 20;

/// The largest frame before both sides have proven the job's secret
/// (hello, challenge, proof, verdict): a few hundred bytes in practice, so
/// that an unauthenticated peer cannot make a destination hold megabytes.
pub const MAX_HANDSHAKE_FRAME: usize = 4 << 10;

/// A frame or payload buffer grows by at most this much ahead of what has arrived.
const FILL_STEP: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Frame {
    /// Stream `stream` (from 0) of the `streams` this job's session opens.
    Hello {
        version: u16,
        job: u64,
        stream: u16,
        streams: u16,
        nonce: [u8; 32],
    },
    Challenge {
        nonce: [u8; 32],
        proof: [u8; 32],
    },
    Proof {
        proof: [u8; 32],
    },
    Accepted,
    Refused {
        reason: String,
    },
    /// Pages `first..first + count` of image `name` (`pages` long) follow on this stream.
    Image {
        name: String,
        kind: ImageKind,
        pages: u64,
        first: u64,
        count: u64,
    },
    /// Hashes of the pages in `runs` (first page, count), in order.
    Offer {
        runs: Vec<(u64, u32)>,
        hashes: Vec<Hash>,
    },
    /// Where the destination gets each offered page, one [`Origin`] byte per page.
    Need {
        origins: ByteBuf,
    },
    /// The needed pages of the batch answered longest ago, in offer order,
    /// follow this frame as `len` bytes: concatenated, and zstd-compressed
    /// as one frame unless that saved nothing. (Outside the frame, so that
    /// neither end copies them through the encoding.)
    Pages {
        compressed: bool,
        len: u32,
    },
    /// The part is complete: its digest (BLAKE3 over its page hashes in order).
    End {
        digest: Hash,
    },
    /// Every part of image `name` was verified: the whole image's digest.
    Seal {
        name: String,
        digest: Hash,
    },
    /// The source gives the image up (a migration that cannot converge): nothing is kept.
    Abort {
        reason: String,
    },
    Verified {
        ok: bool,
        reason: String,
    },
    /// Instead of images, this stream carries raw bytes to the local socket
    /// the destination registered as `end` for the job (see `tunnel`).
    Tunnel {
        end: String,
    },
    /// In an NBD tunnel (`tunnel::nbd`), either way: `len` bytes to pass on as they are follow.
    Relay {
        len: u32,
    },
    /// In an NBD tunnel, source to destination: write request `seq` (its
    /// header as the client sent it) whose payload the destination
    /// rebuilds: each page's hash and [`Origin`] (zero, `Cache`: by hash
    /// from what the destination holds, or sent); the pages sent follow as
    /// `len` bytes, zstd-compressed as one frame when `compressed`.
    NbdWrite {
        seq: u64,
        header: ByteBuf,
        hashes: Vec<Hash>,
        origins: ByteBuf,
        compressed: bool,
        len: u32,
    },
    /// Destination to source: write `seq` went on to the hypervisor.
    Rebuilt {
        seq: u64,
    },
    /// Destination to source: pages (by their place in write `seq`) it could not rebuild.
    Missing {
        seq: u64,
        pages: Vec<u32>,
    },
    /// Source to destination: the pages `Missing` asked for, `len` bytes (as in `NbdWrite`).
    Resend {
        seq: u64,
        compressed: bool,
        len: u32,
    },
    /// In a multifd tunnel (`tunnel::multifd`), source to destination: the
    /// hashes of the next packet's pages, in order; answered by `Need`.
    RamOffer {
        hashes: Vec<Hash>,
    },
    /// In a multifd tunnel, source to destination: the packet offered
    /// longest ago, its header as QEMU wrote it and each page's [`Origin`]
    /// as `Need` answered; the pages sent follow as `len` bytes (as in
    /// `NbdWrite`).
    RamPacket {
        header: ByteBuf,
        origins: ByteBuf,
        compressed: bool,
        len: u32,
    },
}

/// What an image is for at the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ImageKind {
    /// A VM's memory or disk moving there: kept once sealed.
    Migration,
    /// A replica of a VM's disk cached there ahead of a migration: updated in place.
    Replica,
}

/// Where the destination gets an offered page from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Origin {
    /// It lacks the page: it travels.
    Sent = 0,
    /// All zero: nothing to fetch.
    Zero = 1,
    /// A copy of a page this part carried already (or asked for).
    Repeat = 2,
    /// The site's chunk index: an image it hosts or received before.
    Index = 3,
    /// A replica of the VM's disk cached at the site.
    Cache = 4,
    /// Already in place: an earlier, dropped connection brought it, or the replica holds it unchanged.
    InPlace = 5,
    /// The memory this VM left the site with before: it is coming back.
    Returning = 6,
}

impl Origin {
    pub const ALL: [Origin; 7] =
        [Origin::Sent, Origin::Zero, Origin::Repeat, Origin::Index, Origin::Cache, Origin::InPlace, Origin::Returning];

    pub fn from_byte(byte: u8) -> Option<Origin> {
        Origin::ALL.get(usize::from(byte)).copied()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("a frame of {0} bytes is larger than the {1} allowed here")]
    TooLarge(usize, usize),
    #[error("malformed frame: {0}")]
    Malformed(#[from] postcard::Error),
}

/// A frame as it goes on the wire: length and body, so that it is written
/// in one piece (one segment for small frames).
pub fn encode(frame: &Frame) -> Result<Vec<u8>, WireError> {
    let mut bytes = vec![0u8; 4];
    postcard::to_io(frame, &mut bytes)?;
    let len = bytes.len() - 4;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len, MAX_FRAME));
    }
    bytes[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(bytes)
}

/// Writes an encoded frame and the payload that follows it (`parts`, in
/// order) with as few system calls and no copies; returns the bytes written.
pub async fn write_with_payload<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    frame: &[u8],
    parts: &[&[u8]],
) -> Result<u64, WireError> {
    let mut slices: Vec<&[u8]> =
        std::iter::once(frame).chain(parts.iter().copied()).filter(|s| !s.is_empty()).collect();
    let total: usize = slices.iter().map(|s| s.len()).sum();
    let mut first = 0;
    while first < slices.len() {
        // At most IOV_MAX (1024) slices per call.
        let batch: Vec<IoSlice<'_>> = slices[first..].iter().take(1024).map(|s| IoSlice::new(s)).collect();
        let mut n = w.write_vectored(&batch).await?;
        if n == 0 {
            return Err(WireError::Io(std::io::ErrorKind::WriteZero.into()));
        }
        while n > 0 {
            if n >= slices[first].len() {
                n -= slices[first].len();
                first += 1;
            } else {
                slices[first] = &slices[first][n..];
                n = 0;
            }
        }
    }
    Ok(total as u64)
}

/// Reads the `len` bytes of payload that follow a frame into `buffer` (replacing what it held).
pub async fn read_payload<R: AsyncReadExt + Unpin>(
    r: &mut R,
    len: usize,
    buffer: &mut Vec<u8>,
) -> Result<(), WireError> {
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len, MAX_FRAME));
    }
    fill(r, len, buffer).await
}

/// Reads exactly `len` bytes into `buffer` without zeroing it first. The
/// buffer grows with what arrives (doubling, at most [`FILL_STEP`] ahead
/// at first), not by what the peer announced.
async fn fill<R: AsyncReadExt + Unpin>(r: &mut R, len: usize, buffer: &mut Vec<u8>) -> Result<(), WireError> {
    buffer.clear();
    while buffer.len() < len {
        if buffer.len() == buffer.capacity() {
            buffer.reserve((len - buffer.len()).min(buffer.capacity().max(FILL_STEP)));
        }
        let mut rest = (&mut *r).take((len - buffer.len()) as u64);
        if rest.read_buf(buffer).await? == 0 {
            return Err(WireError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
    Ok(())
}

/// Writes one frame; returns the bytes it took on the wire.
pub async fn write_frame<W: AsyncWriteExt + Unpin>(w: &mut W, frame: &Frame) -> Result<u64, WireError> {
    let bytes = encode(frame)?;
    w.write_all(&bytes).await?;
    Ok(bytes.len() as u64)
}

pub async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> Result<Frame, WireError> {
    read_frame_with(r, &mut Vec::new()).await
}

/// Reads one frame through `buffer`, which a connection keeps between
/// frames: a fresh buffer of megabytes per frame costs page faults.
pub async fn read_frame_with<R: AsyncReadExt + Unpin>(r: &mut R, buffer: &mut Vec<u8>) -> Result<Frame, WireError> {
    read_frame_within(r, buffer, MAX_FRAME).await
}

/// Reads one frame of at most `max` bytes (see [`MAX_HANDSHAKE_FRAME`]).
pub async fn read_frame_within<R: AsyncReadExt + Unpin>(
    r: &mut R,
    buffer: &mut Vec<u8>,
    max: usize,
) -> Result<Frame, WireError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(WireError::TooLarge(len, max));
    }
    fill(r, len, buffer).await?;
    Ok(postcard::from_bytes(buffer)?)
}

/// A side's proof that it holds the job's secret, bound to both nonces and
/// to its role, so that neither side can replay the other's.
pub fn proof(secret: &[u8], role: &str, job: u64, first: &[u8; 32], second: &[u8; 32]) -> [u8; 32] {
    let key = blake3::derive_key("heliotrope executor job secret v1", secret);
    let mut mac = blake3::Hasher::new_keyed(&key);
    mac.update(role.as_bytes()).update(&job.to_le_bytes()).update(first).update(second);
    *mac.finalize().as_bytes()
}

/// A fresh random nonce.
pub fn nonce() -> [u8; 32] {
    let mut n = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut n);
    n
}
