//! The channel directory: each device's channels under their feed names, as the pipeline
//! learnt them from the device's Hello.
//!
//! The pipeline owns and publishes it ([`ChannelDirectory::publish`]); the command path only
//! reads it ([`ChannelDirectory::channels`]) to turn a command's `ch` into a channel id. A
//! clone is a handle on the same directory; reads never wait long (the pipeline writes only
//! when a device's channels change).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use super::Channel;

/// Channels per device (shared, cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct ChannelDirectory {
    inner: Arc<RwLock<BTreeMap<String, Vec<Channel>>>>,
}

impl ChannelDirectory {
    /// An empty directory.
    pub fn new() -> ChannelDirectory {
        ChannelDirectory::default()
    }

    /// Publishes `dev`'s channels (replacing what it announced before).
    pub fn publish(&self, dev: &str, channels: Vec<Channel>) {
        // A writer that panicked left a map that is still whole: keep using it.
        let mut map = self.inner.write().unwrap_or_else(|e| e.into_inner());
        map.insert(dev.to_owned(), channels);
    }

    /// `dev`'s channels, if it has announced them.
    pub fn channels(&self, dev: &str) -> Option<Vec<Channel>> {
        let map = self.inner.read().unwrap_or_else(|e| e.into_inner());
        map.get(dev).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use towerlink_firmware::protocol::Quantity;

    #[test]
    fn a_published_device_is_read_through_every_handle() {
        let dir = ChannelDirectory::new();
        let reader = dir.clone();
        assert!(reader.channels("p1").is_none());
        let ch = |id, name: &str| Channel {
            id,
            name: name.into(),
            quantity: Quantity::Strain,
            rate_hz: 50,
        };
        dir.publish("p1", vec![ch(0, "strain")]);
        dir.publish("p1", vec![ch(0, "strain"), ch(1, "strain_1")]);
        let got = reader.channels("p1").unwrap_or_default();
        assert_eq!(
            got.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["strain", "strain_1"]
        );
        assert!(reader.channels("p2").is_none());
    }
}
