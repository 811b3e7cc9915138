//! The chunk index: every page a site's executor holds, by content hash,
//! so that a source only sends what the destination lacks.
//!
//! What it holds are files: cached disk replicas, images of VMs it hosts,
//! images received in recent migrations. Their pages are indexed in place
//! (never copied) and read from the file when needed, and every page read
//! back is checked against its hash, so a file changed under the index
//! cannot pass a wrong page. Files are bounded by `max_bytes` in all: past
//! it, the oldest registrations are forgotten (the files stay; they are
//! not the index's). The list of files survives restarts (`files.txt`);
//! their pages are rehashed on open.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufRead, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::content::{hash, pages, Hash, PAGE};

/// The hash of every page of the file at `path`.
fn page_hashes(path: &Path) -> io::Result<Vec<Hash>> {
    Ok(pages(&fs::read(path)?).map(hash).collect())
}

/// A file the index reads pages from.
struct Held {
    path: PathBuf,
    file: File,
    pages: u64,
}

pub struct ChunkIndex {
    dir: PathBuf,
    max_bytes: u64,
    /// Hash to (file slot, page).
    map: HashMap<Hash, (usize, u64)>,
    /// Oldest first; `None` once forgotten, so that slots stay put.
    files: Vec<Option<Held>>,
}

impl ChunkIndex {
    /// Opens (or creates) the index in `dir`, holding files of at most `max_bytes` in all.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<ChunkIndex> {
        fs::create_dir_all(dir)?;
        let mut index = ChunkIndex { dir: dir.to_owned(), max_bytes, map: HashMap::new(), files: Vec::new() };
        let manifest = dir.join("files.txt");
        if manifest.exists() {
            for line in io::BufReader::new(File::open(&manifest)?).lines() {
                let path = PathBuf::from(line?);
                if let Ok(hashes) = page_hashes(&path) {
                    index.hold(path, &hashes)?;
                }
            }
        }
        Ok(index)
    }

    pub fn contains(&self, h: &Hash) -> bool {
        self.map.contains_key(h)
    }

    /// Distinct pages held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The page with hash `h`, checked against it; `None` if not held (or no longer intact).
    pub fn get(&self, h: &Hash) -> io::Result<Option<Vec<u8>>> {
        let Some(&(slot, page)) = self.map.get(h) else { return Ok(None) };
        let Some(held) = &self.files[slot] else { return Ok(None) };
        let mut data = vec![0u8; PAGE];
        match held.file.read_exact_at(&mut data, page * PAGE as u64) {
            Ok(()) => Ok((hash(&data) == *h).then_some(data)),
            // A file that shrank no longer holds the page.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Indexes every page of `path` (hashing it) and remembers it across restarts.
    pub fn register_file(&mut self, path: &Path) -> io::Result<()> {
        self.add_file(path, &page_hashes(path)?)
    }

    /// Indexes `path` whose page hashes are known (an image just received and verified).
    pub fn add_file(&mut self, path: &Path, hashes: &[Hash]) -> io::Result<()> {
        let path = fs::canonicalize(path)?;
        if self.files.iter().flatten().any(|held| held.path == path) {
            return Ok(());
        }
        self.hold(path, hashes)?;
        self.write_manifest()
    }

    /// Forgets `path` (its pages are no longer offered from it).
    pub fn forget(&mut self, path: &Path) -> io::Result<()> {
        let path = fs::canonicalize(path)?;
        if let Some(slot) = self.files.iter().position(|f| f.as_ref().is_some_and(|held| held.path == path)) {
            self.files[slot] = None;
            self.map.retain(|_, (s, _)| *s != slot);
            self.write_manifest()?;
        }
        Ok(())
    }

    fn hold(&mut self, path: PathBuf, hashes: &[Hash]) -> io::Result<()> {
        let slot = self.files.len();
        self.files.push(Some(Held { file: File::open(&path)?, path, pages: hashes.len() as u64 }));
        for (page, h) in hashes.iter().enumerate() {
            self.map.entry(*h).or_insert((slot, page as u64));
        }
        // Past the bound, forget the oldest files (never the one just added).
        while self.held_bytes() > self.max_bytes {
            let Some(oldest) = self.files[..slot].iter().position(Option::is_some) else { break };
            self.files[oldest] = None;
            self.map.retain(|_, (s, _)| *s != oldest);
        }
        Ok(())
    }

    fn held_bytes(&self) -> u64 {
        self.files.iter().flatten().map(|held| held.pages * PAGE as u64).sum()
    }

    fn write_manifest(&self) -> io::Result<()> {
        let mut manifest = File::create(self.dir.join("files.txt"))?;
        for held in self.files.iter().flatten() {
            writeln!(manifest, "{}", held.path.display())?;
        }
        manifest.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(fill: u8) -> Vec<u8> {
        vec![fill; PAGE]
    }

    #[test]
    fn files_survive_a_restart_and_are_read_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        fs::write(&image, [page(7), page(8)].concat()).unwrap();
        {
            let mut index = ChunkIndex::open(&dir.path().join("index"), 1 << 30).unwrap();
            index.register_file(&image).unwrap();
            assert_eq!(index.len(), 2);
        }
        let index = ChunkIndex::open(&dir.path().join("index"), 1 << 30).unwrap();
        assert_eq!(index.get(&hash(&page(8))).unwrap(), Some(page(8)));
        assert_eq!(index.get(&hash(&page(9))).unwrap(), None);
        // A file that changed under the index no longer vouches for the old page.
        fs::write(&image, [page(7), page(9)].concat()).unwrap();
        assert_eq!(index.get(&hash(&page(8))).unwrap(), None);
    }

    #[test]
    fn the_oldest_files_are_forgotten_past_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = ChunkIndex::open(&dir.path().join("index"), 2 * PAGE as u64).unwrap();
        for (name, fill) in [("a", 1), ("b", 2), ("c", 3)] {
            let path = dir.path().join(name);
            fs::write(&path, page(fill)).unwrap();
            index.register_file(&path).unwrap();
        }
        assert!(!index.contains(&hash(&page(1))));
        assert!(index.contains(&hash(&page(2))) && index.contains(&hash(&page(3))));
        let reopened = ChunkIndex::open(&dir.path().join("index"), 2 * PAGE as u64).unwrap();
        assert_eq!(reopened.len(), 2);
    }
}
