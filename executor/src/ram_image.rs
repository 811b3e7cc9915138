//! A VM's memory as a site keeps it after a migration: the pages its
//! multifd channels carried, at their offsets, one sparse file per RAM
//! block. The source keeps what left (so a VM that comes back finds most
//! of its memory there again) and the destination what arrived (pages its
//! neighbours, running the same kernel and libraries, may share). Once
//! the migration is done the files join the site's chunk index, whose
//! budget drops the oldest first ([`crate::destination::Destination::keep_ram_image`]).
//!
//! The files are pools of pages, not exact images: a page QEMU sent on
//! its main channel (7.2's zero pages) or compressed is missing or stale
//! there, and that costs only a reference not made, as every page is
//! found by its hash and checked against it.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::content::PAGE;
use crate::lock;

/// The pages one migration of a VM carried, being written.
#[derive(Debug)]
pub struct RamImage {
    dir: PathBuf,
    blocks: Mutex<HashMap<String, Arc<File>>>,
    /// The first write that failed: the image is not kept, the migration goes on.
    failed: Mutex<Option<io::Error>>,
}

/// A file name for RAM block `block` (names such as `/rom@etc/acpi/tables`).
fn file_name(block: &str) -> String {
    let mut name: String = block
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' => char::from(b).to_string(),
            other => format!("%{other:02x}"),
        })
        .collect();
    name.push_str(".ram");
    name
}

impl RamImage {
    /// A fresh image in `dir` (what was there goes).
    pub fn create(dir: &Path) -> io::Result<RamImage> {
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::fs::create_dir_all(dir)?;
        Ok(RamImage { dir: dir.to_owned(), blocks: Mutex::new(HashMap::new()), failed: Mutex::new(None) })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn block(&self, block: &str) -> io::Result<Arc<File>> {
        let mut blocks = lock(&self.blocks);
        if let Some(file) = blocks.get(block) {
            return Ok(file.clone());
        }
        let file = Arc::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(self.dir.join(file_name(block)))?,
        );
        blocks.insert(block.to_owned(), file.clone());
        Ok(file)
    }

    /// Writes `pages` (whole pages, in order) at `offsets` of `block`.
    pub fn write(&self, block: &str, offsets: &[u64], pages: &[u8]) {
        self.keep_going(|| {
            let file = self.block(block)?;
            for (&offset, page) in offsets.iter().zip(pages.chunks_exact(PAGE)) {
                file.write_all_at(page, offset)?;
            }
            Ok(())
        });
    }

    /// Marks `offsets` of `block` all zero (a page there may hold an earlier round's content).
    pub fn zero(&self, block: &str, offsets: &[u64]) {
        self.keep_going(|| {
            let file = self.block(block)?;
            let (zero, len) = ([0u8; PAGE], file.metadata()?.len());
            for &offset in offsets.iter().filter(|&&o| o < len) {
                file.write_all_at(&zero, offset)?;
            }
            Ok(())
        });
    }

    /// Runs `write` unless one failed before; a failure is kept for [`RamImage::files`].
    fn keep_going(&self, write: impl FnOnce() -> io::Result<()>) {
        let mut failed = lock(&self.failed);
        if failed.is_none() {
            if let Err(e) = write() {
                tracing::warn!(error = %e, dir = %self.dir.display(), "a memory image stops being written");
                *failed = Some(e);
            }
        }
    }

    /// The files written, one per block; the first write's error if one failed.
    pub fn files(&self) -> io::Result<Vec<PathBuf>> {
        if let Some(e) = &*lock(&self.failed) {
            return Err(io::Error::new(e.kind(), e.to_string()));
        }
        let blocks = lock(&self.blocks);
        let mut files: Vec<PathBuf> = blocks.keys().map(|b| self.dir.join(file_name(b))).collect();
        files.sort();
        Ok(files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_land_at_their_offsets_in_one_file_per_block() {
        let dir = tempfile::tempdir().unwrap();
        let image = RamImage::create(&dir.path().join("vm/1")).unwrap();
        let pages = [vec![1u8; PAGE], vec![2u8; PAGE]].concat();
        image.write("pc.ram", &[0x3000, 0x1000], &pages);
        image.write("/rom@etc/acpi/tables", &[0], &pages[..PAGE]);
        image.zero("pc.ram", &[0x1000, 0x9000]);
        let files = image.files().unwrap();
        assert_eq!(files.len(), 2);
        assert!(files[0].ends_with("%2from%40etc%2facpi%2ftables.ram"), "{files:?}");
        let ram = std::fs::read(dir.path().join("vm/1/pc.ram.ram")).unwrap();
        assert_eq!(ram.len(), 0x4000, "a zero page past the end is a hole, not written");
        assert_eq!((ram[0x1000], ram[0x3000], ram[0x3fff]), (0, 1, 1), "page 0x1000 was zeroed");
        // A fresh image of the same migration's directory starts empty.
        let again = RamImage::create(&dir.path().join("vm/1")).unwrap();
        assert!(again.files().unwrap().is_empty() && !dir.path().join("vm/1/pc.ram.ram").exists());
    }
}
