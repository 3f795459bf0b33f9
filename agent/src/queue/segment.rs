//! Segment files: naming, listing, and the append-only writer.
//!
//! A segment is named `<id>-<floor>.seg`: `id` orders segments (oldest first), `floor` is the
//! `seq` that was next when it was created (`0000000042-00000000000000018231.seg`), so the
//! file names alone keep a floor under the `seq` counter even when every record in them is
//! damaged. Only the newest segment is appended
//! to; older ones are read at open and deleted whole once nothing in them is live.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// File name suffix of a segment.
pub const SUFFIX: &str = ".seg";

/// The file name of segment `id`, created when `floor` was the next seq.
pub fn file_name(id: u64, floor: u64) -> String {
    format!("{id:010}-{floor:020}{SUFFIX}")
}

/// The id and floor in a segment's file name, if it is one.
pub fn parse_name(name: &str) -> Option<(u64, u64)> {
    let (id, floor) = name.strip_suffix(SUFFIX)?.split_once('-')?;
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(id, 10) || !digits(floor, 20) {
        return None;
    }
    Some((id.parse().ok()?, floor.parse().ok()?))
}

/// A segment file found in a store directory.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SegmentFile {
    /// Order of creation.
    pub id: u64,
    /// The next seq when it was created.
    pub floor: u64,
    /// Where it is.
    pub path: PathBuf,
}

/// The segments in `dir`, oldest first.
pub fn list(dir: &Path) -> io::Result<Vec<SegmentFile>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some((id, floor)) = entry.file_name().to_str().and_then(parse_name) {
            out.push(SegmentFile {
                id,
                floor,
                path: entry.path(),
            });
        }
    }
    out.sort();
    Ok(out)
}

/// Makes a directory entry (a created or deleted file) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads frames back from the segment files of a directory (the uplink's payloads, the
/// compaction's copies). Keeps a few files open; a segment deleted meanwhile reads as
/// `NotFound`.
#[derive(Debug)]
pub struct SegmentReader {
    dir: PathBuf,
    open: Vec<(u64, File)>,
}

/// Files a [`SegmentReader`] keeps open.
const READER_FILES: usize = 4;

impl SegmentReader {
    /// A reader of the segments in `dir`.
    pub fn new(dir: &Path) -> SegmentReader {
        SegmentReader {
            dir: dir.to_owned(),
            open: Vec::new(),
        }
    }

    fn file(&mut self, id: u64) -> io::Result<&File> {
        if let Some(i) = self.open.iter().position(|(s, _)| *s == id) {
            return Ok(&self.open[i].1);
        }
        let path = list(&self.dir)?
            .into_iter()
            .find(|s| s.id == id)
            .map(|s| s.path)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("segment {id}")))?;
        let file = File::open(path)?;
        if self.open.len() >= READER_FILES {
            self.open.remove(0);
        }
        self.open.push((id, file));
        let last = self.open.len() - 1;
        Ok(&self.open[last].1)
    }

    /// The `len` bytes at `offset` of segment `id`.
    pub fn read(&mut self, id: u64, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0; usize::try_from(len).map_err(io::Error::other)?];
        let result = self
            .file(id)
            .and_then(|f| f.read_exact_at(&mut buf, offset));
        if result.is_err() {
            // The file may have been replaced or cut: open it afresh next time.
            self.open.retain(|(s, _)| *s != id);
        }
        result.map(|()| buf)
    }

    /// Forgets the open files (segments were deleted).
    pub fn close_all(&mut self) {
        self.open.clear();
    }
}

/// Makes every write fail while set: how tests play a full or broken disk.
#[derive(Debug, Clone, Default)]
pub struct FaultSwitch(Arc<AtomicBool>);

impl FaultSwitch {
    /// A switch, off.
    pub fn new() -> FaultSwitch {
        FaultSwitch::default()
    }

    /// Turns failing writes on or off.
    pub fn set(&self, failing: bool) {
        self.0.store(failing, Ordering::SeqCst);
    }

    fn check(&self) -> io::Result<()> {
        if self.0.load(Ordering::SeqCst) {
            Err(io::Error::other("no space left on device (injected)"))
        } else {
            Ok(())
        }
    }
}

/// The open newest segment.
#[derive(Debug)]
pub struct SegmentWriter {
    file: File,
    id: u64,
    len: u64,
    faults: FaultSwitch,
}

impl SegmentWriter {
    /// Creates segment `id` (floor `floor`) in `dir` (or opens it for appending, cutting it
    /// to `keep_len` bytes: the end of its intact data).
    pub fn open(
        dir: &Path,
        id: u64,
        floor: u64,
        keep_len: Option<u64>,
        faults: FaultSwitch,
    ) -> io::Result<SegmentWriter> {
        faults.check()?;
        let path = dir.join(file_name(id, floor));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let len = match keep_len {
            Some(len) => {
                file.set_len(len)?;
                len
            }
            None => file.metadata()?.len(),
        };
        let mut w = SegmentWriter {
            file,
            id,
            len,
            faults,
        };
        w.seek_end()?;
        Ok(w)
    }

    fn seek_end(&mut self) -> io::Result<()> {
        use std::io::Seek;
        self.file.seek(io::SeekFrom::Start(self.len)).map(|_| ())
    }

    /// The segment's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Is the segment empty?
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends whole frames. On failure the file is cut back to where it was, so a half
    /// written frame never sits in front of later ones.
    pub fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        let result = self
            .faults
            .check()
            .and_then(|()| self.file.write_all(bytes));
        match result {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Best effort: if this fails too, the scanner treats the rest as damage.
                let _ = self.file.set_len(self.len);
                let _ = self.seek_end();
                Err(e)
            }
        }
    }

    /// Makes everything appended durable (`fdatasync`).
    pub fn sync(&mut self) -> io::Result<()> {
        self.faults.check()?;
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_strangers_are_ignored() {
        assert_eq!(parse_name(&file_name(42, 18_231)), Some((42, 18_231)));
        assert_eq!(parse_name("seq"), None);
        assert_eq!(parse_name("0000000001-0000000000000000001x.seg"), None);
        let dir = tempfile::tempdir().expect("tempdir");
        for (id, floor) in [(30, 5), (1, 9), (7, 7)] {
            std::fs::write(dir.path().join(file_name(id, floor)), b"").expect("write");
        }
        std::fs::write(dir.path().join("notes.txt"), b"").expect("write");
        let ids: Vec<(u64, u64)> = list(dir.path())
            .expect("list")
            .into_iter()
            .map(|s| (s.id, s.floor))
            .collect();
        assert_eq!(ids, vec![(1, 9), (7, 7), (30, 5)]);
    }

    #[test]
    fn a_failed_append_leaves_no_partial_frame() {
        let dir = tempfile::tempdir().expect("tempdir");
        let faults = FaultSwitch::new();
        let mut w = SegmentWriter::open(dir.path(), 1, 1, None, faults.clone()).expect("open");
        w.append(b"abc").expect("append");
        faults.set(true);
        assert!(w.append(b"def").is_err());
        assert!(w.sync().is_err());
        faults.set(false);
        w.append(b"ghi").expect("append");
        w.sync().expect("sync");
        let bytes = std::fs::read(dir.path().join(file_name(1, 1))).expect("read");
        assert_eq!(bytes, b"abcghi");
    }
}
