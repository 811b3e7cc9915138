//! Pages and their content hashes: the unit the transfer stack reasons
//! about. Memory moves in 4 KiB pages; disks are indexed at the same
//! granularity, so a page-cache page in memory matches the disk block it
//! caches.

use std::sync::LazyLock;

/// Bytes in a page (and in an indexed disk chunk).
pub const PAGE: usize = 4096;

/// A BLAKE3 hash of a page or of a whole image.
pub type Hash = [u8; 32];

pub fn hash(data: &[u8]) -> Hash {
    *blake3::hash(data).as_bytes()
}

/// The hash of an all-zero page: such pages are never sent.
pub fn zero_page_hash() -> Hash {
    static ZERO: LazyLock<Hash> = LazyLock::new(|| hash(&[0u8; PAGE]));
    *ZERO
}

/// The digest of a whole image, compared at both ends before cutover:
/// BLAKE3 over its page hashes in order, so that either end can keep it
/// current page by page while a live image changes.
pub fn image_digest(page_hashes: &[Hash]) -> Hash {
    let mut hasher = blake3::Hasher::new();
    page_hashes.iter().for_each(|h| {
        hasher.update(h);
    });
    *hasher.finalize().as_bytes()
}

/// Hex, for messages.
pub fn hex(hash: &Hash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// An image's pages; images are whole pages long (the last is padded by its owner).
pub fn pages(image: &[u8]) -> std::slice::ChunksExact<'_, u8> {
    image.chunks_exact(PAGE)
}
