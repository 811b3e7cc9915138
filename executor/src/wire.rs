//! The executor-to-executor protocol: length-prefixed frames (a u32
//! big-endian length, then the frame in postcard), versioned in the first
//! frame, with mutual challenge-response on the job's secret (the secret
//! itself never travels).
//!
//! A session: the source sends `Hello`; the destination answers `Challenge`
//! (its nonce and its proof of the secret); the source checks it and sends
//! `Proof`; the destination answers `Accepted` or `Refused`. Then, per
//! image: `Image`, then batches of `Offer` (page numbers and hashes)
//! answered by `Need` (which the destination lacks), then `Pages` (those
//! pages, compressed), several offers in flight; a live image is offered
//! again in rounds, only its pages written since; finally `End` with the
//! image's digest, answered by `Verified`, or `Abort`.

use serde::{Deserialize, Serialize};
pub use serde_bytes::ByteBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::content::Hash;

pub const VERSION: u16 = 1;

/// The largest frame either side accepts.
pub const MAX_FRAME: usize = 64 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Frame {
    Hello {
        version: u16,
        job: u64,
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
    /// An image follows: its name and length in pages.
    Image {
        name: String,
        pages: u64,
    },
    /// Hashes of the pages in `runs` (first page, count), in order.
    Offer {
        runs: Vec<(u64, u32)>,
        hashes: Vec<Hash>,
    },
    /// One bit per offered page, set where the destination needs it.
    Need {
        bitmap: Vec<u8>,
    },
    /// Needed pages: index, hash, zstd-compressed content.
    Pages {
        pages: Vec<(u64, Hash, ByteBuf)>,
    },
    /// The image is complete: its digest (BLAKE3 over its page hashes in order).
    End {
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
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("a frame of {0} bytes is larger than the {MAX_FRAME} allowed")]
    TooLarge(usize),
    #[error("malformed frame: {0}")]
    Malformed(#[from] postcard::Error),
}

/// A frame as it goes on the wire: length and body, so that it is written
/// in one piece (one segment for small frames) and can be weighed first.
pub fn encode(frame: &Frame) -> Result<Vec<u8>, WireError> {
    let mut bytes = vec![0u8; 4];
    postcard::to_io(frame, &mut bytes)?;
    let len = bytes.len() - 4;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    bytes[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(bytes)
}

/// Writes an encoded frame; returns the bytes it took on the wire.
pub async fn write_encoded<W: AsyncWriteExt + Unpin>(w: &mut W, bytes: &[u8]) -> Result<u64, WireError> {
    w.write_all(bytes).await?;
    Ok(bytes.len() as u64)
}

/// Writes one frame; returns the bytes it took on the wire.
pub async fn write_frame<W: AsyncWriteExt + Unpin>(w: &mut W, frame: &Frame) -> Result<u64, WireError> {
    write_encoded(w, &encode(frame)?).await
}

pub async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> Result<Frame, WireError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(postcard::from_bytes(&body)?)
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
