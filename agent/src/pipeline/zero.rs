//! Gateway-side zero offsets, persisted under `[store] path` so they survive restarts.
//!
//! A `zero` command is forwarded to the node when the node supports it (the node then sends
//! tared values); where it does not, or where `zero_at = "gateway"`, the gateway takes the
//! channel's present filtered value as its zero. Those offsets live in `<store>/zero.json`,
//! written to a temporary file, synced, then renamed over the old one, so a power cut leaves
//! either the old table or the new one, never half of each.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Zero offsets by device, then channel feed name.
#[derive(Debug, Clone, Default)]
pub struct ZeroTable {
    path: Option<PathBuf>,
    offsets: BTreeMap<String, BTreeMap<String, f64>>,
}

impl ZeroTable {
    /// Loads `<dir>/zero.json` (an absent file is an empty table; a corrupt one is reported
    /// and treated as empty, never a reason not to start).
    pub fn load(dir: &Path) -> ZeroTable {
        let path = dir.join("zero.json");
        let offsets = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(map) => map,
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "zero table unreadable; starting without gateway zeros");
                    BTreeMap::new()
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot read the zero table");
                BTreeMap::new()
            }
        };
        ZeroTable {
            path: Some(path),
            offsets,
        }
    }

    /// A table that is never written (tests, benchmarks).
    pub fn in_memory() -> ZeroTable {
        ZeroTable::default()
    }

    /// The offset of `dev`/`ch` (0 when none was set).
    pub fn get(&self, dev: &str, ch: &str) -> f64 {
        self.offsets
            .get(dev)
            .and_then(|m| m.get(ch))
            .copied()
            .unwrap_or(0.0)
    }

    /// Sets an offset and persists the table.
    pub fn set(&mut self, dev: &str, ch: &str, value: f64) -> io::Result<()> {
        self.offsets
            .entry(dev.to_owned())
            .or_default()
            .insert(ch.to_owned(), value);
        self.save()
    }

    fn save(&self) -> io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(&self.offsets).map_err(io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_survive_a_reload_and_garbage_is_survived() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut t = ZeroTable::load(dir.path());
        assert_eq!(t.get("p1", "tilt_x"), 0.0);
        t.set("p1", "tilt_x", 0.0123).expect("save");
        assert_eq!(ZeroTable::load(dir.path()).get("p1", "tilt_x"), 0.0123);
        std::fs::write(dir.path().join("zero.json"), b"{not json").expect("write");
        assert_eq!(ZeroTable::load(dir.path()).get("p1", "tilt_x"), 0.0);
    }
}
