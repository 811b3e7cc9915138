//! The chunk index: every page a site's executor holds, by content hash,
//! so that a source only sends what the destination lacks.
//!
//! Two kinds of holdings: pages received in migrations, kept in append-only
//! segment files (a record is the hash and the page), and whole files the
//! executor registers (cached disk replicas, images of VMs it hosts), whose
//! pages are hashed in place and read from the file when needed. Received
//! pages are bounded by `max_bytes`: when a new segment would pass it, the
//! oldest segment goes. Every page read back is checked against its hash.
//! The index survives restarts: segments are rescanned, registered files
//! (listed in `files.txt`) rehashed.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::content::{hash, pages, Hash, PAGE};

/// Records per segment file (16 MiB of pages).
const SEGMENT_RECORDS: u64 = 4096;
const RECORD: u64 = 32 + PAGE as u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Location {
    Segment { id: u64, record: u64 },
    File { file: usize, page: u64 },
}

pub struct ChunkIndex {
    dir: PathBuf,
    max_bytes: u64,
    map: HashMap<Hash, Location>,
    /// Oldest first: (id, records in it).
    segments: VecDeque<(u64, u64)>,
    writer: Option<io::BufWriter<File>>,
    /// Open for reading: segments by id, registered files by position.
    readers: HashMap<u64, File>,
    files: Vec<(PathBuf, File)>,
}

impl ChunkIndex {
    /// Opens (or creates) the index in `dir`, keeping at most `max_bytes` of received pages.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<ChunkIndex> {
        fs::create_dir_all(dir)?;
        let mut index = ChunkIndex {
            dir: dir.to_owned(),
            max_bytes,
            map: HashMap::new(),
            segments: VecDeque::new(),
            writer: None,
            readers: HashMap::new(),
            files: Vec::new(),
        };
        let mut ids: Vec<u64> = fs::read_dir(dir)?
            .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("seg-")?.strip_suffix(".dat")?.parse().ok())
            .collect();
        ids.sort_unstable();
        for id in ids {
            let mut file = File::open(index.segment_path(id))?;
            // A torn last record (a crash mid-append) is ignored.
            let records = file.metadata()?.len() / RECORD;
            let mut record = vec![0u8; RECORD as usize];
            for r in 0..records {
                file.read_exact(&mut record)?;
                let h: Hash = record[..32].try_into().expect("32 bytes");
                index.map.insert(h, Location::Segment { id, record: r });
            }
            index.segments.push_back((id, records));
            index.readers.insert(id, File::open(index.segment_path(id))?);
        }
        let manifest = dir.join("files.txt");
        if manifest.exists() {
            for line in io::BufReader::new(File::open(&manifest)?).lines() {
                let path = PathBuf::from(line?);
                if path.exists() {
                    index.hash_file(&path)?;
                }
            }
        }
        Ok(index)
    }

    fn segment_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("seg-{id}.dat"))
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
        let (file, offset) = match self.map.get(h) {
            None => return Ok(None),
            Some(&Location::Segment { id, record }) => (&self.readers[&id], record * RECORD + 32),
            Some(&Location::File { file, page }) => (&self.files[file].1, page * PAGE as u64),
        };
        let mut page = vec![0u8; PAGE];
        match file.read_exact_at(&mut page, offset) {
            Ok(()) => Ok((hash(&page) == *h).then_some(page)),
            // A registered file that shrank no longer holds the page.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Keeps a received page (nothing happens if it is already held).
    pub fn insert(&mut self, h: Hash, page: &[u8]) -> io::Result<()> {
        if self.map.contains_key(&h) || page.len() != PAGE {
            return Ok(());
        }
        let full = self.segments.back().is_none_or(|&(_, records)| records >= SEGMENT_RECORDS);
        if full || self.writer.is_none() {
            let id = self.segments.back().map_or(0, |&(id, _)| id + 1);
            self.flush()?;
            let file = OpenOptions::new().create(true).append(true).open(self.segment_path(id))?;
            self.writer = Some(io::BufWriter::with_capacity(1 << 20, file));
            self.readers.insert(id, File::open(self.segment_path(id))?);
            self.segments.push_back((id, 0));
            self.evict()?;
        }
        let (id, records) = self.segments.back_mut().expect("a segment is open");
        let writer = self.writer.as_mut().expect("a segment is open");
        writer.write_all(&h)?;
        writer.write_all(page)?;
        self.map.insert(h, Location::Segment { id: *id, record: *records });
        *records += 1;
        Ok(())
    }

    /// Writes out what `insert` buffered; pages inserted are readable only after this.
    pub fn flush(&mut self) -> io::Result<()> {
        match &mut self.writer {
            Some(writer) => writer.flush(),
            None => Ok(()),
        }
    }

    /// Drops the oldest segments while the received pages pass `max_bytes`.
    fn evict(&mut self) -> io::Result<()> {
        let budget_segments = (self.max_bytes / (SEGMENT_RECORDS * RECORD)).max(1) as usize;
        while self.segments.len() > budget_segments {
            let (id, _) = self.segments.pop_front().expect("more than one segment");
            self.map.retain(|_, loc| !matches!(loc, Location::Segment { id: s, .. } if *s == id));
            self.readers.remove(&id);
            fs::remove_file(self.segment_path(id))?;
        }
        Ok(())
    }

    /// Indexes every page of `path` in place (a cached disk replica, an
    /// image of a VM hosted here) and remembers it across restarts.
    pub fn register_file(&mut self, path: &Path) -> io::Result<()> {
        let path = fs::canonicalize(path)?;
        if self.files.iter().any(|(p, _)| *p == path) {
            return Ok(());
        }
        self.hash_file(&path)?;
        let mut manifest = OpenOptions::new().create(true).append(true).open(self.dir.join("files.txt"))?;
        writeln!(manifest, "{}", path.display())?;
        Ok(())
    }

    fn hash_file(&mut self, path: &Path) -> io::Result<()> {
        let data = fs::read(path)?;
        let file = self.files.len();
        self.files.push((path.to_owned(), File::open(path)?));
        for (page, chunk) in pages(&data).enumerate() {
            self.map.entry(hash(chunk)).or_insert(Location::File { file, page: page as u64 });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(fill: u8) -> Vec<u8> {
        vec![fill; PAGE]
    }

    #[test]
    fn pages_survive_a_restart_and_files_are_read_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        fs::write(&image, [page(7), page(8)].concat()).unwrap();
        {
            let mut index = ChunkIndex::open(&dir.path().join("index"), 1 << 30).unwrap();
            index.insert(hash(&page(1)), &page(1)).unwrap();
            index.flush().unwrap();
            index.register_file(&image).unwrap();
            assert_eq!(index.len(), 3);
        }
        let index = ChunkIndex::open(&dir.path().join("index"), 1 << 30).unwrap();
        assert_eq!(index.get(&hash(&page(1))).unwrap(), Some(page(1)));
        assert_eq!(index.get(&hash(&page(8))).unwrap(), Some(page(8)));
        assert_eq!(index.get(&hash(&page(9))).unwrap(), None);
        // A registered file that changed under the index no longer vouches for the old page.
        fs::write(&image, [page(7), page(9)].concat()).unwrap();
        assert_eq!(index.get(&hash(&page(8))).unwrap(), None);
    }

    #[test]
    fn the_oldest_segments_go_past_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        // Room for one segment: the first is evicted when the third opens.
        let mut index = ChunkIndex::open(dir.path(), SEGMENT_RECORDS * RECORD).unwrap();
        let mut first = None;
        for i in 0..(2 * SEGMENT_RECORDS + 1) {
            let mut p = page(0);
            p[..8].copy_from_slice(&i.to_le_bytes());
            let h = hash(&p);
            first.get_or_insert(h);
            index.insert(h, &p).unwrap();
        }
        assert!(!index.contains(&first.unwrap()));
        assert!(index.len() as u64 <= SEGMENT_RECORDS + 1);
    }
}
