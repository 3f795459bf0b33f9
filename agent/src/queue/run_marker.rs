//! Was the previous run stopped cleanly? A marker file in the store says so.
//!
//! At start the agent reads `<store>/running` and then writes it (synced, with the directory):
//! a marker found at start means the previous run never removed it, so it ended by kill,
//! crash or power cut (`"last_stop":"unclean"` in the birth). A clean stop removes the marker
//! (and syncs the directory) as the very last thing, after the queue is synced.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::feed::{LastStop, UnixMillis};

/// The marker's file name under `[store] path`.
pub const MARKER: &str = "running";

/// The marker of the present run.
#[derive(Debug)]
pub struct RunMarker {
    path: PathBuf,
}

impl RunMarker {
    /// Reads how the previous run ended, then marks this run as running (written and synced).
    pub fn begin(dir: &Path, now: UnixMillis) -> io::Result<(RunMarker, LastStop)> {
        let path = dir.join(MARKER);
        let last = match std::fs::metadata(&path) {
            Ok(_) => LastStop::Unclean,
            Err(e) if e.kind() == io::ErrorKind::NotFound => LastStop::Clean,
            Err(e) => return Err(e),
        };
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        writeln!(
            f,
            "pid {} started {}",
            std::process::id(),
            crate::feed::rfc3339(now)
        )?;
        f.sync_all()?;
        sync_dir(dir)?;
        Ok((RunMarker { path }, last))
    }

    /// A clean stop: removes the marker (and syncs the directory, so a power cut right after
    /// a clean stop still reads as clean).
    pub fn end_clean(self) -> io::Result<()> {
        std::fs::remove_file(&self.path)?;
        match self.path.parent() {
            Some(dir) => sync_dir(dir),
            None => Ok(()),
        }
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_left_behind_is_an_unclean_stop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (m, last) = RunMarker::begin(dir.path(), 0).expect("begin");
        assert_eq!(last, LastStop::Clean, "no previous run");
        m.end_clean().expect("end");
        let (m, last) = RunMarker::begin(dir.path(), 0).expect("begin");
        assert_eq!(last, LastStop::Clean, "stopped cleanly");
        drop(m); // killed: the marker stays
        let (_m, last) = RunMarker::begin(dir.path(), 0).expect("begin");
        assert_eq!(last, LastStop::Unclean);
    }
}
