//! The queue's config section, `[store]`: where the durable queue lives and how much of it
//! is kept. Every value is checked while it is read (sizes like `"512MiB"`, the fsync policy
//! `"always"` or an interval).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::store::FsyncPolicy;
use crate::values;

/// `[store]`: where the agent keeps state across restarts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// A directory; created if missing.
    pub path: PathBuf,
    /// Most messages kept in memory waiting for the broker; the oldest telemetry goes first.
    #[serde(
        default = "default_max_messages",
        deserialize_with = "values::de_int_in::<_, usize, 100, { i64::MAX }>"
    )]
    pub max_messages: usize,
    /// Most bytes of unacknowledged messages on disk (`"512MiB"`, at least 64KiB); the
    /// oldest telemetry goes first.
    #[serde(
        default = "default_max_bytes",
        deserialize_with = "values::de_size_in::<_, 65_536, { u64::MAX }>"
    )]
    pub max_bytes: u64,
    /// `"always"` (sync before a message counts as queued) or an interval (`"100ms"`,
    /// 1ms to 60s).
    #[serde(default = "default_fsync", deserialize_with = "de_fsync")]
    pub fsync: FsyncPolicy,
    /// Segment files are rotated past this size (`"8MiB"`, 4KiB to 1GiB).
    #[serde(
        default = "default_segment_bytes",
        deserialize_with = "values::de_size_in::<_, 4_096, 1_073_741_824>"
    )]
    pub segment_bytes: u64,
    /// Most queued telemetry messages sent per second (a backlog replays at this rate while
    /// events still go first); 0 = no limit.
    #[serde(default = "default_replay_rate")]
    pub replay_rate: u32,
}

fn default_max_messages() -> usize {
    100_000
}
fn default_max_bytes() -> u64 {
    512 << 20
}
fn default_fsync() -> FsyncPolicy {
    FsyncPolicy::Every(Duration::from_millis(100))
}
fn default_segment_bytes() -> u64 {
    8 << 20
}
fn default_replay_rate() -> u32 {
    500
}

/// A `[store] fsync` value that is refused (serde reports its `Display`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FsyncError {
    /// Neither `"always"` nor a duration.
    #[error(
        "invalid fsync policy {text:?} ({reason}); write \"always\" or an interval such as \"100ms\""
    )]
    Unreadable {
        /// The value as written.
        text: String,
        /// Why it is not a duration.
        reason: String,
    },
    /// An interval outside 1 ms ..= 60 s.
    #[error("an interval must be between 1ms and 60s (or \"always\")")]
    OutOfRange(Duration),
}

impl std::str::FromStr for FsyncPolicy {
    type Err = FsyncError;
    fn from_str(text: &str) -> Result<FsyncPolicy, FsyncError> {
        if text == "always" {
            return Ok(FsyncPolicy::Always);
        }
        let every = humantime::parse_duration(text).map_err(|e| FsyncError::Unreadable {
            text: text.to_owned(),
            reason: e.to_string(),
        })?;
        if every < Duration::from_millis(1) || every > Duration::from_secs(60) {
            return Err(FsyncError::OutOfRange(every));
        }
        Ok(FsyncPolicy::Every(every))
    }
}

fn de_fsync<'de, D: Deserializer<'de>>(d: D) -> Result<FsyncPolicy, D::Error> {
    String::deserialize(d)?
        .parse()
        .map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(keys: &str) -> Result<StoreConfig, String> {
        toml::from_str(&format!("path = \"/tmp/q\"\n{keys}")).map_err(|e| e.to_string())
    }

    #[test]
    fn the_section_reads_alone_with_its_defaults_and_bounds() {
        let c = read("").expect("defaults");
        assert_eq!(
            (c.max_bytes, c.replay_rate, c.fsync),
            (
                512 << 20,
                500,
                FsyncPolicy::Every(Duration::from_millis(100))
            )
        );
        let c = read("fsync = \"always\"\nmax_bytes = \"1GiB\"\nreplay_rate = 0").expect("keys");
        assert_eq!((c.fsync, c.max_bytes), (FsyncPolicy::Always, 1 << 30));
        for (bad, says) in [
            ("fsync = \"sometimes\"", "invalid fsync policy"),
            ("fsync = \"2m\"", "between 1ms and 60s"),
            ("max_bytes = \"1KiB\"", "at least 64KiB"),
            ("segment_bytes = \"2GiB\"", "between 4KiB and 1GiB"),
            ("max_messages = 10", "at least 100"),
        ] {
            let e = read(bad).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn fsync_refusals_are_variants() {
        assert_eq!("always".parse(), Ok(FsyncPolicy::Always));
        assert_eq!(
            "2m".parse::<FsyncPolicy>(),
            Err(FsyncError::OutOfRange(Duration::from_secs(120)))
        );
        assert!(matches!(
            "sometimes".parse::<FsyncPolicy>(),
            Err(FsyncError::Unreadable { ref text, .. }) if text == "sometimes"
        ));
    }
}
