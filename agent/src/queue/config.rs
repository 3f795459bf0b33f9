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
    /// Acknowledged records stay on disk this long after they were queued, for `resend`
    /// (`"24h"`; `"0s"` keeps none; at most 30 days). Whole segments are kept, so the newest
    /// segment's records stay until it is rotated.
    #[serde(
        default = "default_keep_acked",
        deserialize_with = "values::de_duration_in::<_, 0, 2_592_000_000>"
    )]
    pub keep_acked: Duration,
    /// At most this many bytes of acknowledged records are kept (`"64MiB"`, up to 64GiB),
    /// on top of `max_bytes`; the oldest segments go first.
    #[serde(
        default = "default_keep_acked_bytes",
        deserialize_with = "values::de_size_in::<_, 0, 68_719_476_736>"
    )]
    pub keep_acked_bytes: u64,
    /// Degrade by aggregation: once unacknowledged records pass this share of `max_bytes`,
    /// the oldest queued telemetry windows of each device are merged into coarser ones
    /// (10 s -> 60 s -> 10 min) before anything is evicted. `"80%"` (10% to 100%) or
    /// `"off"` (only evict).
    #[serde(default = "default_merge_above", deserialize_with = "de_merge_above")]
    pub merge_above: Option<u8>,
    /// Most queued telemetry bytes sent per second, topic and payload, a batch as
    /// compressed (`"64KiB"`, the default: a quarter of a modest 4G uplink; 0 = no limit,
    /// else 1KiB to 1GiB). A backlog replays under both limits.
    #[serde(
        default = "default_replay_bytes_rate",
        deserialize_with = "de_bytes_rate"
    )]
    pub replay_bytes_rate: u64,
}

fn default_merge_above() -> Option<u8> {
    Some(80)
}

fn de_merge_above<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u8>, D::Error> {
    let text = String::deserialize(d)?;
    if text == "off" {
        return Ok(None);
    }
    let percent = text
        .strip_suffix('%')
        .and_then(|n| n.trim().parse::<u8>().ok())
        .filter(|p| (10..=100).contains(p));
    match percent {
        Some(p) => Ok(Some(p)),
        None => Err(serde::de::Error::custom(format!(
            "invalid merge_above {text:?}; write a share of max_bytes from \"10%\" to \"100%\", or \"off\""
        ))),
    }
}

fn default_replay_bytes_rate() -> u64 {
    64 << 10
}

fn de_bytes_rate<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let values::ByteSize(bytes) = values::ByteSize::deserialize(d)?;
    if bytes == 0 || (1 << 10..=1 << 30).contains(&bytes) {
        Ok(bytes)
    } else {
        Err(serde::de::Error::custom(format!(
            "{bytes} bytes per second: must be 0 (no limit) or between 1KiB and 1GiB"
        )))
    }
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
fn default_keep_acked() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_keep_acked_bytes() -> u64 {
    64 << 20
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
        assert_eq!(
            (c.keep_acked, c.keep_acked_bytes),
            (Duration::from_secs(86_400), 64 << 20)
        );
        let c = read("keep_acked = \"2s\"\nkeep_acked_bytes = \"1MiB\"").expect("keep");
        assert_eq!(
            (c.keep_acked, c.keep_acked_bytes),
            (Duration::from_secs(2), 1 << 20)
        );
        let c = read("keep_acked = \"0s\"\nkeep_acked_bytes = 0").expect("keep none");
        assert_eq!((c.keep_acked, c.keep_acked_bytes), (Duration::ZERO, 0));
        assert_eq!(c.merge_above, Some(80));
        assert_eq!(
            read("merge_above = \"off\"").expect("off").merge_above,
            None
        );
        assert_eq!(
            read("merge_above = \"65%\"").expect("65").merge_above,
            Some(65)
        );
        let c = read("fsync = \"always\"\nmax_bytes = \"1GiB\"\nreplay_rate = 0").expect("keys");
        assert_eq!((c.fsync, c.max_bytes), (FsyncPolicy::Always, 1 << 30));
        assert_eq!(c.replay_bytes_rate, 64 << 10, "64KiB/s by default");
        let c = read("replay_bytes_rate = \"1MiB\"").expect("a rate");
        assert_eq!(c.replay_bytes_rate, 1 << 20);
        let c = read("replay_bytes_rate = \"0\"").expect("no limit");
        assert_eq!(c.replay_bytes_rate, 0);
        for (bad, says) in [
            ("fsync = \"sometimes\"", "invalid fsync policy"),
            ("fsync = \"2m\"", "between 1ms and 60s"),
            ("max_bytes = \"1KiB\"", "at least 64KiB"),
            ("segment_bytes = \"2GiB\"", "between 4KiB and 1GiB"),
            ("max_messages = 10", "at least 100"),
            ("keep_acked = \"31d\"", "keep_acked"),
            ("keep_acked = \"soon\"", "keep_acked"),
            ("keep_acked_bytes = \"65GiB\"", "keep_acked_bytes"),
            ("merge_above = \"80\"", "invalid merge_above"),
            ("merge_above = \"5%\"", "invalid merge_above"),
            ("merge_above = \"120%\"", "invalid merge_above"),
            (
                "replay_bytes_rate = \"100B\"",
                "0 (no limit) or between 1KiB and 1GiB",
            ),
            ("replay_bytes_rate = \"fast\"", "invalid size"),
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
