//! The chunk index: every page a site's executor holds, by content hash,
//! so that a source only sends what the destination lacks.
//!
//! What it holds are files: cached disk replicas, images of VMs it hosts,
//! images received in recent migrations; which of these a file is says
//! what a page it gives saved (the disk cache, or dedup against the site). Their pages are indexed in place
//! (never copied) and read from the file when needed, and every page read
//! back is checked against its hash, so a file changed under the index
//! cannot pass a wrong page. Files are bounded by `max_bytes` in all: past
//! it, the oldest registrations are forgotten (the files stay; they are
//! not the index's). The list of files survives restarts (`files.txt`);
//! their pages are rehashed on open. Each file's page hashes are kept
//! (32 bytes per 4 KiB page) so that a replica can be updated in place.

use std::fs::{self, File};
use std::io::{self, BufRead, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::content::{hash, pages, ByHash, Hash, ImageFile, PageSource, PAGE};

/// The hash of every page of the file at `path`, read a megabyte at a time.
pub fn page_hashes(path: &Path) -> io::Result<Vec<Hash>> {
    let image = ImageFile::open(path)?;
    let mut hashes = Vec::with_capacity(image.page_count() as usize);
    let mut buf = vec![0u8; 256 * PAGE];
    let mut first = 0;
    while first < image.page_count() {
        let n = (image.page_count() - first).min(256) as usize;
        image.read_pages(first, &mut buf[..n * PAGE])?;
        hashes.extend(pages(&buf[..n * PAGE]).map(hash));
        first += n as u64;
    }
    Ok(hashes)
}

/// What a held file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holding {
    /// A replica of a VM's disk cached here ahead of a migration.
    Replica,
    /// An image of a VM hosted here or received in a migration.
    Image,
}

impl Holding {
    fn word(self) -> &'static str {
        match self {
            Holding::Replica => "replica",
            Holding::Image => "image",
        }
    }
}

/// A file the index reads pages from.
struct Held {
    path: PathBuf,
    file: File,
    holding: Holding,
    hashes: Vec<Hash>,
}

pub struct ChunkIndex {
    dir: PathBuf,
    max_bytes: u64,
    /// Hash to (file slot, page).
    map: ByHash<(usize, u64)>,
    /// Oldest first; `None` once forgotten, so that slots stay put.
    files: Vec<Option<Held>>,
}

impl ChunkIndex {
    /// Opens (or creates) the index in `dir`, holding files of at most `max_bytes` in all.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<ChunkIndex> {
        fs::create_dir_all(dir)?;
        let mut index = ChunkIndex { dir: dir.to_owned(), max_bytes, map: ByHash::default(), files: Vec::new() };
        let manifest = dir.join("files.txt");
        if manifest.exists() {
            for line in io::BufReader::new(File::open(&manifest)?).lines() {
                let line = line?;
                let (holding, path) = match line.split_once(' ') {
                    Some(("replica", path)) => (Holding::Replica, PathBuf::from(path)),
                    Some(("image", path)) => (Holding::Image, PathBuf::from(path)),
                    _ => continue,
                };
                // A file gone or unreadable since is simply no longer held.
                if let Ok(hashes) = page_hashes(&path) {
                    index.hold(path, holding, hashes)?;
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

    /// The page with hash `h`, checked against it, and what kind of file
    /// gave it; `None` if not held (or no longer intact).
    pub fn get(&self, h: &Hash) -> io::Result<Option<(Vec<u8>, Holding)>> {
        let Some(&(slot, page)) = self.map.get(h) else { return Ok(None) };
        let Some(held) = &self.files[slot] else { return Ok(None) };
        let mut data = vec![0u8; PAGE];
        match held.file.read_exact_at(&mut data, page * PAGE as u64) {
            Ok(()) => Ok((hash(&data) == *h).then_some((data, held.holding))),
            // A file that shrank no longer holds the page.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The file the index reads the page with hash `h` from, if it holds one.
    pub fn file_of(&self, h: &Hash) -> Option<&Path> {
        let &(slot, _) = self.map.get(h)?;
        self.files[slot].as_ref().map(|held| held.path.as_path())
    }

    /// Indexes every page of `path` (hashing it) and remembers it across restarts.
    pub fn register_file(&mut self, path: &Path, holding: Holding) -> io::Result<()> {
        self.add_file(path, holding, page_hashes(path)?)
    }

    /// Indexes `path` whose page hashes are known (an image just received
    /// and verified); a file held already is held with these hashes now.
    pub fn add_file(&mut self, path: &Path, holding: Holding, hashes: Vec<Hash>) -> io::Result<()> {
        let path = fs::canonicalize(path)?;
        self.drop_path(&path);
        self.hold(path, holding, hashes)?;
        self.write_manifest()
    }

    /// The page hashes of `path` as held, if it is.
    pub fn hashes_of(&self, path: &Path) -> Option<&[Hash]> {
        let path = fs::canonicalize(path).ok()?;
        self.files.iter().flatten().find(|held| held.path == path).map(|held| held.hashes.as_slice())
    }

    /// Forgets `path` (its pages are no longer offered from it).
    pub fn forget(&mut self, path: &Path) -> io::Result<()> {
        let path = fs::canonicalize(path)?;
        if self.drop_path(&path) {
            self.write_manifest()?;
        }
        Ok(())
    }

    fn drop_path(&mut self, path: &Path) -> bool {
        match self.files.iter().position(|f| f.as_ref().is_some_and(|held| held.path == path)) {
            Some(slot) => {
                self.drop_slot(slot);
                true
            }
            None => false,
        }
    }

    /// Forgets a slot; pages it shared with other files stay held by them.
    fn drop_slot(&mut self, slot: usize) {
        let Some(held) = self.files[slot].take() else { return };
        for h in &held.hashes {
            if self.map.get(h).is_some_and(|&(s, _)| s == slot) {
                self.map.remove(h);
            }
        }
        let orphaned: std::collections::HashSet<&Hash> =
            held.hashes.iter().filter(|h| !self.map.contains_key(*h)).collect();
        for (s, other) in self.files.iter().enumerate() {
            let Some(other) = other else { continue };
            for (page, h) in other.hashes.iter().enumerate() {
                if orphaned.contains(h) {
                    self.map.entry(*h).or_insert((s, page as u64));
                }
            }
        }
    }

    fn hold(&mut self, path: PathBuf, holding: Holding, hashes: Vec<Hash>) -> io::Result<()> {
        let slot = self.files.len();
        self.map.reserve(hashes.len());
        for (page, h) in hashes.iter().enumerate() {
            self.map.entry(*h).or_insert((slot, page as u64));
        }
        self.files.push(Some(Held { file: File::open(&path)?, path, holding, hashes }));
        // Past the bound, forget the oldest files (never the one just added).
        while self.held_bytes() > self.max_bytes {
            let Some(oldest) = self.files[..slot].iter().position(Option::is_some) else { break };
            self.drop_slot(oldest);
        }
        Ok(())
    }

    fn held_bytes(&self) -> u64 {
        self.files.iter().flatten().map(|held| (held.hashes.len() * PAGE) as u64).sum()
    }

    fn write_manifest(&self) -> io::Result<()> {
        let mut manifest = File::create(self.dir.join("files.txt"))?;
        for held in self.files.iter().flatten() {
            writeln!(manifest, "{} {}", held.holding.word(), held.path.display())?;
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
            index.register_file(&image, Holding::Replica).unwrap();
            assert_eq!(index.len(), 2);
        }
        let index = ChunkIndex::open(&dir.path().join("index"), 1 << 30).unwrap();
        assert_eq!(index.get(&hash(&page(8))).unwrap(), Some((page(8), Holding::Replica)));
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
            index.register_file(&path, Holding::Image).unwrap();
        }
        assert!(!index.contains(&hash(&page(1))));
        assert!(index.contains(&hash(&page(2))) && index.contains(&hash(&page(3))));
        let reopened = ChunkIndex::open(&dir.path().join("index"), 2 * PAGE as u64).unwrap();
        assert_eq!(reopened.len(), 2);
    }

    #[test]
    fn a_forgotten_file_leaves_the_pages_it_shared() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = ChunkIndex::open(&dir.path().join("index"), 1 << 30).unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::write(&a, [page(1), page(2)].concat()).unwrap();
        fs::write(&b, [page(2), page(3)].concat()).unwrap();
        index.register_file(&a, Holding::Image).unwrap();
        index.register_file(&b, Holding::Image).unwrap();
        index.forget(&a).unwrap();
        assert!(!index.contains(&hash(&page(1))));
        assert_eq!(index.get(&hash(&page(2))).unwrap(), Some((page(2), Holding::Image)));
        assert_eq!(index.hashes_of(&b), Some(&[hash(&page(2)), hash(&page(3))][..]));
    }
}
