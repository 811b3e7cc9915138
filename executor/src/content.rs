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

/// A map keyed by content hash. The keys are BLAKE3 output already: their
/// first eight bytes serve as the map's hash, rehashing them is waste.
/// (Keys come from content a site holds or from a source that proved the
/// job's secret, so crafted collisions are not a concern.)
pub type ByHash<V> = std::collections::HashMap<Hash, V, std::hash::BuildHasherDefault<FirstBytes>>;

/// The hasher of [`ByHash`]: a key's first eight bytes.
#[derive(Default)]
pub struct FirstBytes(u64);

impl std::hash::Hasher for FirstBytes {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        if let Some(first) = bytes.first_chunk::<8>() {
            self.0 = u64::from_le_bytes(*first);
        }
    }

    // An array key writes its length first; it says nothing.
    fn write_usize(&mut self, _: usize) {}
}

/// Hex, for messages.
pub fn hex(hash: &Hash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// An image's pages; images are whole pages long (the last is padded by its owner).
pub fn pages(image: &[u8]) -> std::slice::ChunksExact<'_, u8> {
    image.chunks_exact(PAGE)
}

/// Something whose pages a source reads as it sends them: an image file, a
/// running guest's memory. Reads go through the page cache or the guest,
/// never through a copy of the whole image.
pub trait PageSource: Send + Sync {
    fn page_count(&self) -> u64;
    /// Reads pages `first..first + buf.len() / PAGE` into `buf`.
    fn read_pages(&self, first: u64, buf: &mut [u8]) -> std::io::Result<()>;
}

/// An image at rest: a file whole pages long, read where it lies.
pub struct ImageFile {
    file: std::fs::File,
    pages: u64,
}

impl ImageFile {
    pub fn open(path: &std::path::Path) -> std::io::Result<ImageFile> {
        let file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        if len % PAGE as u64 != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is {len} bytes, not whole {PAGE}-byte pages", path.display()),
            ));
        }
        Ok(ImageFile { file, pages: len / PAGE as u64 })
    }
}

impl PageSource for ImageFile {
    fn page_count(&self) -> u64 {
        self.pages
    }

    fn read_pages(&self, first: u64, buf: &mut [u8]) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.file, buf, first * PAGE as u64)
    }
}
