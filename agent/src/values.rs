//! Values of the configuration that are checked while they are read: ids, byte sizes,
//! durations, baud rates and numbers in a range, plus the list of problems a section's own
//! rules add after it has been read.
//!
//! This module sits at the bottom of the agent: it imports nothing of the crate, so every
//! stage's config section can use it. A value that is wrong is refused by serde with the
//! message below; the loader (`config`) adds the line, column and key path.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// A configuration value that is refused, with the installer-facing text as its `Display`
/// (serde carries that text; the loader adds the line, column and key path).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// An id that does not match [`ID_PATTERN`].
    #[error("{value:?} is not a valid {what}: it must match {ID_PATTERN}")]
    Id {
        /// What the id names (`gateway id`, `device id`).
        what: &'static str,
        /// The id as written.
        value: String,
    },
    /// A size whose number does not parse.
    #[error("invalid size {text:?}; write e.g. \"512MiB\"")]
    SizeNumber {
        /// The size as written.
        text: String,
    },
    /// A size with a unit the agent does not know.
    #[error("invalid size unit {unit:?} in {text:?}; use B, KiB, MiB, GiB (or kB, MB, GB)")]
    SizeUnit {
        /// The unit as written.
        unit: String,
        /// The size as written.
        text: String,
    },
    /// A size beyond what a `u64` holds (or negative).
    #[error("size {text:?} is out of range")]
    SizeOverflow {
        /// The size as written.
        text: String,
    },
    /// A size that is neither a number of bytes nor text.
    #[error("invalid size: write a number of bytes or e.g. \"512MiB\"")]
    SizeForm,
    /// A size outside the range its key allows.
    #[error("{}", range_text(&format!("{bytes} bytes"), &show_size(*min), max.map(show_size)))]
    SizeRange {
        /// The size read, in bytes.
        bytes: u64,
        /// The least allowed.
        min: u64,
        /// The most allowed (`None`: no upper bound).
        max: Option<u64>,
    },
    /// A duration that does not parse.
    #[error("invalid duration {text:?} ({reason}); write e.g. \"10s\", \"250ms\", \"5m\"")]
    Duration {
        /// The duration as written.
        text: String,
        /// Why humantime refused it.
        reason: String,
    },
    /// A duration outside the range its key allows.
    #[error("{}", duration_range_text(*value, *min, *max))]
    DurationRange {
        /// The duration read.
        value: Duration,
        /// The least allowed (zero: no lower bound).
        min: Duration,
        /// The most allowed (`None`: no upper bound).
        max: Option<Duration>,
    },
    /// A baud rate that is not one of [`STANDARD_BAUDS`].
    #[error("{baud} is not a standard baud rate ({:?})", STANDARD_BAUDS.iter().filter(|b| **b <= *max).collect::<Vec<_>>())]
    NonStandardBaud {
        /// The rate read.
        baud: u32,
        /// The fastest rate of the line.
        max: u32,
    },
    /// A standard baud rate above the line's fastest.
    #[error("{baud} is above {max}, the fastest rate of this line")]
    BaudTooFast {
        /// The rate read.
        baud: u32,
        /// The fastest rate of the line.
        max: u32,
    },
    /// An integer outside the range its key allows.
    #[error("{}", int_range_text(*value, *min, *max))]
    IntRange {
        /// The integer read.
        value: i64,
        /// The least allowed.
        min: i64,
        /// The most allowed.
        max: i64,
    },
    /// An integer in range that the target type still cannot hold.
    #[error("{value} is out of range")]
    IntType {
        /// The integer read.
        value: i64,
    },
}

/// `"{value}: must be at least {min}"` or `"... between {min} and {max}"`.
fn range_text(value: &str, min: &str, max: Option<String>) -> String {
    match max {
        None => format!("{value}: must be at least {min}"),
        Some(max) => format!("{value}: must be between {min} and {max}"),
    }
}

fn duration_range_text(value: Duration, min: Duration, max: Option<Duration>) -> String {
    let show = |d: Duration| humantime::format_duration(d).to_string();
    match max {
        Some(max) if min.is_zero() => format!("{}: must be at most {}", show(value), show(max)),
        max => range_text(&show(value), &show(min), max.map(show)),
    }
}

fn int_range_text(value: i64, min: i64, max: i64) -> String {
    if max >= i64::from(u32::MAX) {
        format!("{value}: must be at least {min}")
    } else {
        format!("{value}: must be in {min}..={max}")
    }
}

/// The pattern every gateway, device id and channel name must match (feed contract, "Names").
pub const ID_PATTERN: &str = "^[a-z0-9][a-z0-9._-]{0,63}$";

/// Serial baud rates the agent accepts (the standard ones up to 921600).
pub const STANDARD_BAUDS: [u32; 16] = [
    1200, 2400, 4800, 9600, 14400, 19200, 38400, 57600, 115200, 128000, 230400, 256000, 460800,
    500000, 576000, 921600,
];

/// Is `id` a valid gateway or device id (`^[a-z0-9][a-z0-9._-]{0,63}$`)?
pub fn is_valid_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    match bytes.first() {
        Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit() => {}
        _ => return false,
    }
    bytes.len() <= 64
        && bytes.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        })
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = ValueError;
            fn try_from(id: String) -> Result<Self, ValueError> {
                if is_valid_id(&id) {
                    Ok($name(id))
                } else {
                    Err(ValueError::Id { what: $what, value: id })
                }
            }
        }

        impl TryFrom<&str> for $name {
            type Error = ValueError;
            fn try_from(id: &str) -> Result<Self, ValueError> {
                $name::try_from(id.to_owned())
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// `[gateway] id`: the MQTT client id and `{gw}` in every topic.
    GatewayId,
    "gateway id"
);
id_type!(
    /// A device id (`[[node]]`, `[[lift]]`, `[[i2c]]`): `{dev}` in the feed.
    DeviceId,
    "device id"
);

/// Parses a size: `"512MiB"`, `"1GiB"`, `"64KiB"`, `"1000000"` (bytes); `k`/`KB`/`MB`/`GB`
/// are decimal, `KiB`/`MiB`/`GiB` binary.
pub fn parse_size(text: &str) -> Result<u64, ValueError> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number.parse().map_err(|_| ValueError::SizeNumber {
        text: text.to_owned(),
    })?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        other => {
            return Err(ValueError::SizeUnit {
                unit: other.to_owned(),
                text: text.to_owned(),
            })
        }
    };
    let bytes = number * factor as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(ValueError::SizeOverflow {
            text: text.to_owned(),
        });
    }
    Ok(bytes as u64)
}

/// A byte size written as a number of bytes or as text (`"512MiB"`, see [`parse_size`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Size {
            Bytes(u64),
            Text(String),
        }
        match Size::deserialize(d) {
            Ok(Size::Bytes(b)) => Ok(ByteSize(b)),
            Ok(Size::Text(t)) => parse_size(&t)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
            Err(_) => Err(serde::de::Error::custom(ValueError::SizeForm)),
        }
    }
}

/// Human form of a size bound in messages (`16KiB`, `1GiB`, or bytes).
fn show_size(bytes: u64) -> String {
    for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if bytes >= 1 << shift && bytes % (1 << shift) == 0 {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes} bytes")
}

/// A byte size in `MIN..=MAX`, as a plain `u64` (for `#[serde(deserialize_with)]`).
pub fn de_size_in<'de, D: Deserializer<'de>, const MIN: u64, const MAX: u64>(
    d: D,
) -> Result<u64, D::Error> {
    let ByteSize(bytes) = ByteSize::deserialize(d)?;
    if (MIN..=MAX).contains(&bytes) {
        Ok(bytes)
    } else {
        Err(serde::de::Error::custom(ValueError::SizeRange {
            bytes,
            min: MIN,
            max: (MAX != u64::MAX).then_some(MAX),
        }))
    }
}

/// A duration written as text: `"10s"`, `"250ms"`, `"5m"`, `"1h 30m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(ValueError::Duration {
                    reason: e.to_string(),
                    text,
                })
            })
    }
}

/// A duration as a plain [`Duration`] (for `#[serde(deserialize_with)]`).
pub fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    HumanDuration::deserialize(d).map(|h| h.0)
}

/// A duration in `MIN_MS..=MAX_MS` milliseconds.
pub fn de_duration_in<'de, D: Deserializer<'de>, const MIN_MS: u64, const MAX_MS: u64>(
    d: D,
) -> Result<Duration, D::Error> {
    let HumanDuration(value) = HumanDuration::deserialize(d)?;
    check_duration::<MIN_MS, MAX_MS>(value).map_err(serde::de::Error::custom)
}

/// An optional duration in `MIN_MS..=MAX_MS` milliseconds (with `#[serde(default)]`).
pub fn de_opt_duration_in<'de, D: Deserializer<'de>, const MIN_MS: u64, const MAX_MS: u64>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    de_duration_in::<D, MIN_MS, MAX_MS>(d).map(Some)
}

fn check_duration<const MIN_MS: u64, const MAX_MS: u64>(
    value: Duration,
) -> Result<Duration, ValueError> {
    let (min, max) = (Duration::from_millis(MIN_MS), Duration::from_millis(MAX_MS));
    if (min..=max).contains(&value) {
        return Ok(value);
    }
    Err(ValueError::DurationRange {
        value,
        min,
        max: (MAX_MS != u64::MAX).then_some(max),
    })
}

/// A standard serial baud rate ([`STANDARD_BAUDS`]) of at most `MAX`.
pub fn de_baud<'de, D: Deserializer<'de>, const MAX: u32>(d: D) -> Result<u32, D::Error> {
    let baud = u32::deserialize(d)?;
    if !STANDARD_BAUDS.contains(&baud) {
        return Err(serde::de::Error::custom(ValueError::NonStandardBaud {
            baud,
            max: MAX,
        }));
    }
    if baud > MAX {
        return Err(serde::de::Error::custom(ValueError::BaudTooFast {
            baud,
            max: MAX,
        }));
    }
    Ok(baud)
}

/// An integer in `MIN..=MAX`, as any integer type that holds that range.
pub fn de_int_in<'de, D, T, const MIN: i64, const MAX: i64>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i64>,
{
    let value = i64::deserialize(d)?;
    if !(MIN..=MAX).contains(&value) {
        return Err(serde::de::Error::custom(ValueError::IntRange {
            value,
            min: MIN,
            max: MAX,
        }));
    }
    T::try_from(value).map_err(|_| serde::de::Error::custom(ValueError::IntType { value }))
}

/// One rule broken by a value that did parse, found by a section's own checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The key path, relative to the section's table (`unit`, `channels.tilt_x.range`).
    pub key: String,
    /// What is wrong and what would be right.
    pub message: String,
}

/// The rules a section found broken, all of them (a section's check never stops at the
/// first).
#[derive(Debug, Default)]
pub struct Violations {
    prefix: String,
    list: Vec<Violation>,
}

impl Violations {
    /// An empty list whose keys are given relative to `prefix` (`lift[1]`; empty: none).
    pub fn new(prefix: impl Into<String>) -> Violations {
        Violations {
            prefix: prefix.into(),
            list: Vec::new(),
        }
    }

    /// Adds a broken rule of `key` (relative to the prefix).
    pub fn add(&mut self, key: &str, message: impl Into<String>) {
        let key = match (self.prefix.is_empty(), key.is_empty()) {
            (true, _) => key.to_owned(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}.{key}", self.prefix),
        };
        self.list.push(Violation {
            key,
            message: message.into(),
        });
    }

    /// Adds `result`'s error, if any, as a broken rule of `key` (its `Display` is the
    /// message).
    pub fn check<E: fmt::Display>(&mut self, key: &str, result: Result<(), E>) {
        if let Err(e) = result {
            self.add(key, e.to_string());
        }
    }

    /// Is the list empty?
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The broken rules, with full key paths.
    pub fn into_vec(self) -> Vec<Violation> {
        self.list
    }

    /// Moves `other`'s rules into this list.
    pub fn append(&mut self, other: Violations) {
        self.list.extend(other.list);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct T {
        #[serde(default, deserialize_with = "de_duration_in::<_, 10, 60_000>")]
        poll: Duration,
        #[serde(default, deserialize_with = "de_size_in::<_, 16384, 268_435_460>")]
        size: u64,
        #[serde(default, deserialize_with = "de_baud::<_, 115_200>")]
        baud: u32,
        #[serde(default, deserialize_with = "de_int_in::<_, u8, 1, 247>")]
        unit: u8,
        #[serde(default)]
        id: Option<DeviceId>,
    }

    fn parse(text: &str) -> Result<T, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1.5 GiB"), Ok(3 << 29));
        assert_eq!(parse_size("64kB"), Ok(64_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("MiB").is_err());
    }

    #[test]
    fn refusals_are_variants_a_caller_can_match() {
        assert!(matches!(
            parse_size("12 parsecs"),
            Err(ValueError::SizeUnit { ref unit, .. }) if unit == "parsecs"
        ));
        assert!(matches!(
            parse_size("MiB"),
            Err(ValueError::SizeNumber { .. })
        ));
        assert!(matches!(
            parse_size("99999999999TiB"),
            Err(ValueError::SizeOverflow { .. })
        ));
        let e = DeviceId::try_from("Lift/2").expect_err("upper case and a slash");
        assert_eq!(
            e,
            ValueError::Id {
                what: "device id",
                value: "Lift/2".into()
            }
        );
        assert_eq!(
            e.to_string(),
            "\"Lift/2\" is not a valid device id: it must match ^[a-z0-9][a-z0-9._-]{0,63}$"
        );
        assert!(matches!(
            GatewayId::try_from(""),
            Err(ValueError::Id {
                what: "gateway id",
                ..
            })
        ));
        let e = check_duration::<0, 5_000>(Duration::from_secs(9)).expect_err("above");
        assert!(matches!(e, ValueError::DurationRange { min, .. } if min.is_zero()));
        assert_eq!(e.to_string(), "9s: must be at most 5s");
        let e = check_duration::<1_000, { u64::MAX }>(Duration::from_millis(5)).expect_err("below");
        assert_eq!(e.to_string(), "5ms: must be at least 1s");
        assert_eq!(
            ValueError::SizeRange {
                bytes: 10,
                min: 1 << 14,
                max: None
            }
            .to_string(),
            "10 bytes: must be at least 16KiB"
        );
    }

    #[test]
    fn values_are_checked_while_reading() {
        let t = parse("poll = \"250ms\"\nsize = \"1MiB\"\nbaud = 9600\nunit = 2\nid = \"lift-2\"")
            .expect("good values");
        assert_eq!(
            (t.poll, t.size, t.baud, t.unit),
            (Duration::from_millis(250), 1 << 20, 9600, 2)
        );
        assert_eq!(t.id.as_ref().map(|i| i.as_str()), Some("lift-2"));
        for (bad, says) in [
            ("poll = \"1ms\"", "must be between 10ms and 1m"),
            ("poll = \"soon\"", "invalid duration"),
            (
                "size = \"1KiB\"",
                "must be between 16KiB and 268435460 bytes",
            ),
            ("size = 300000000", "must be between"),
            ("baud = 115201", "not a standard baud rate"),
            ("baud = 230400", "above 115200"),
            ("unit = 0", "must be in 1..=247"),
            ("unit = 300", "must be in 1..=247"),
            ("id = \"Lift/2\"", "is not a valid device id"),
        ] {
            let e = parse(bad).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn id_pattern() {
        for ok in ["a", "0", "sh-ja-0001", "lift.2_b", &"a".repeat(64)] {
            assert!(is_valid_id(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            ".a",
            "_a",
            "A",
            "a/b",
            "a+b",
            "a#",
            "a b",
            "é",
            &"a".repeat(65),
        ] {
            assert!(!is_valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn violations_carry_their_full_key() {
        let mut v = Violations::new("lift[1]");
        v.add("unit", "taken");
        v.check("poll", Ok::<(), String>(()));
        v.check("top_floor", Err::<(), _>("low"));
        let keys: Vec<String> = v.into_vec().into_iter().map(|v| v.key).collect();
        assert_eq!(keys, ["lift[1].unit", "lift[1].top_floor"]);
    }
}
