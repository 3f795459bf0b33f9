//! What the agent remembers of each port's node across restarts, in the store.
//!
//! After a restart (a kill -9, a power cut, an upgrade) the samples a node sends must be
//! decoded at once, and what the kernel buffered while the agent was down is worth decoding
//! too. Both need what the last run knew: the node's last Hello (its channel map and rates)
//! and the mapping of its clock to wall time. [`NodeMemory`] is that, kept per device in
//! `<store>/nodes/<dev>.json` (written to a temporary file, then renamed: a crash leaves the old
//! one or the new one). It is a hint, never trusted blindly: a Hello that differs replaces it,
//! a frame of another node invalidates it, a node clock that jumps back (a reboot) restarts
//! the mapping, and a file that does not parse is ignored (and logged).

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use towerlink_firmware::protocol::ChannelInfo;

use super::node_clock::ClockAnchor;

/// The directory under `[store] path`.
pub const DIR: &str = "nodes";

/// One port's node as the last run knew it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeMemory {
    /// The port it was heard on (a memory of another port is not used).
    pub port: PathBuf,
    /// Its node id.
    pub node: u32,
    /// Firmware version of its last Hello.
    pub fw: (u8, u8, u8),
    /// Channels of its last Hello.
    pub channels: Vec<ChannelInfo>,
    /// The mapping of its clock to wall time, when one was made.
    pub clock: Option<ClockAnchor>,
}

/// Where device `dev`'s memory lives under the store `dir`.
pub fn path_of(dir: &Path, dev: &str) -> PathBuf {
    dir.join(DIR).join(format!("{dev}.json"))
}

/// Loads `dev`'s memory (none when absent, unreadable or of another port).
pub fn load(dir: &Path, dev: &str, port: &Path) -> Option<NodeMemory> {
    let path = path_of(dir, dev);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the node memory; waiting for the node's Hello");
            return None;
        }
    };
    match serde_json::from_slice::<NodeMemory>(&bytes) {
        Ok(m) if m.port == port => Some(m),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "node memory unreadable; waiting for the node's Hello");
            None
        }
    }
}

/// Saves `dev`'s memory (temporary file, then rename; not synced: a power cut also empties
/// the kernel's serial buffers, so a memory older by a few seconds costs nothing).
pub fn save(dir: &Path, dev: &str, memory: &NodeMemory) -> io::Result<()> {
    let path = path_of(dir, dev);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec(memory).map_err(io::Error::other)?;
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, &path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use towerlink_firmware::protocol::Quantity;

    #[test]
    fn a_memory_round_trips_and_is_only_used_on_its_port() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = NodeMemory {
            port: "/dev/ttyUSB0".into(),
            node: 7,
            fw: (1, 2, 3),
            channels: vec![ChannelInfo {
                id: 0,
                quantity: Quantity::Strain,
                rate_hz: 50,
            }],
            clock: None,
        };
        assert_eq!(load(dir.path(), "n-1", Path::new("/dev/ttyUSB0")), None);
        save(dir.path(), "n-1", &m).expect("save");
        assert_eq!(load(dir.path(), "n-1", Path::new("/dev/ttyUSB0")), Some(m));
        assert_eq!(load(dir.path(), "n-1", Path::new("/dev/ttyUSB1")), None);
        std::fs::write(path_of(dir.path(), "n-1"), b"{garbage").expect("write");
        assert_eq!(load(dir.path(), "n-1", Path::new("/dev/ttyUSB0")), None);
    }
}
