//! The sources' config sections: `[[node]]` (sensor nodes on serial ports), `[[lift]]` (lift
//! controllers on RS-485 buses) and `[[i2c]]` (chips on the gateway's own I2C buses).
//!
//! Values are checked while they are read (ids, baud rates, durations and numbers in their
//! ranges, see [`crate::values`]); the rules between keys of one section (`top_floor` above
//! `bottom_floor`, one line setting and distinct units per bus) are `check` functions here.
//! A node's and an I2C device's per-channel filter settings belong to the pipeline: the
//! sections carry them as a type parameter `C` that the composer (`config`) chooses, so
//! this module never imports the pipeline.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::values::{self, DeviceId, Violations};

/// Parity of an RS-485 line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    /// No parity bit (8N1, or 8N2 with `stop_bits = 2`).
    None,
    /// Even parity (8E1).
    Even,
    /// Odd parity (8O1).
    Odd,
}

/// Where a `zero` command tares a channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ZeroAt {
    /// Forward the spec's Zero command to the node; fall back to the gateway if the node
    /// does not support it.
    #[default]
    Node,
    /// Keep the offset at the gateway (persisted under `[store] path`).
    Gateway,
}

/// `[[node]]`: one sensor node on one serial port; `C` is a channel's filter settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig<C = ()> {
    /// Device id: `{dev}` in the feed.
    pub id: DeviceId,
    /// Serial device path, e.g. `/dev/ttyUSB0` or a udev symlink.
    pub port: PathBuf,
    /// Baud rate (8N1).
    #[serde(
        default = "default_node_baud",
        deserialize_with = "values::de_baud::<_, 921_600>"
    )]
    pub baud: u32,
    /// Length of a telemetry window.
    #[serde(
        default = "default_window",
        deserialize_with = "values::de_duration_in::<_, 100, 3_600_000>"
    )]
    pub window: Duration,
    /// How long after a window ends its samples may still arrive (nodes batch up to ~1 s).
    #[serde(
        default = "default_window_grace",
        deserialize_with = "values::de_duration_in::<_, 0, 60_000>"
    )]
    pub window_grace: Duration,
    /// The node id expected on this port; frames from another node are counted and dropped.
    #[serde(default)]
    pub node_id: Option<u32>,
    /// Feed names for channels, by channel id (`names = { 0 = "strain_top" }`; TOML keys
    /// are text, so the ids are read from it).
    #[serde(default, deserialize_with = "de_channel_names")]
    pub names: BTreeMap<u8, String>,
    /// Where `zero` tares a channel: on the node (default, where it supports it) or here.
    #[serde(default)]
    pub zero_at: ZeroAt,
    /// Filter chain settings by channel feed name (`[node.channels.tilt_x]`).
    #[serde(default = "BTreeMap::new")]
    #[serde(bound(deserialize = "C: Deserialize<'de>"))]
    pub channels: BTreeMap<String, C>,
}

impl<C> NodeConfig<C> {
    /// The same node with other channel settings (e.g. none, for a task that needs only
    /// the port).
    pub fn map_channels<D>(&self, mut f: impl FnMut(&C) -> D) -> NodeConfig<D> {
        NodeConfig {
            id: self.id.clone(),
            port: self.port.clone(),
            baud: self.baud,
            window: self.window,
            window_grace: self.window_grace,
            node_id: self.node_id,
            names: self.names.clone(),
            zero_at: self.zero_at,
            channels: self
                .channels
                .iter()
                .map(|(k, v)| (k.clone(), f(v)))
                .collect(),
        }
    }

    /// The node's own rules: channel names in `names` and `channels` are valid ids.
    pub fn check(&self, v: &mut Violations) {
        for name in self.channels.keys() {
            if !values::is_valid_id(name) {
                v.add(
                    &format!("channels.{name}"),
                    format!("{name:?} is not a valid channel name"),
                );
            }
        }
        for (ch, name) in &self.names {
            if !values::is_valid_id(name) {
                v.add(
                    &format!("names.{ch}"),
                    format!(
                        "{name:?} is not a valid channel name: it must match {}",
                        values::ID_PATTERN
                    ),
                );
            }
        }
    }
}

/// `[[lift]] status`: how a running car's status is published (`docs/mqtt-feed.md`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LiftStatusMode {
    /// A status at a trip's start and end, on a mode change, and every `status_interval`.
    #[default]
    Trip,
    /// A status on every change of floor, direction, door or mode, and every
    /// `status_interval`.
    Floor,
}

/// `[[lift]]`: one lift controller, polled over Modbus RTU (function 0x04 only).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiftConfig {
    /// Device id: `{dev}` in the feed.
    pub id: DeviceId,
    /// The RS-485 adapter; lifts with the same port share one bus and one polling task.
    pub port: PathBuf,
    /// Baud rate (all lifts on a port must agree).
    #[serde(
        default = "default_lift_baud",
        deserialize_with = "values::de_baud::<_, 115_200>"
    )]
    pub baud: u32,
    /// Parity (all lifts on a port must agree).
    #[serde(default = "default_parity")]
    pub parity: Parity,
    /// Stop bits, 1 or 2 (all lifts on a port must agree).
    #[serde(
        default = "default_stop_bits",
        deserialize_with = "values::de_int_in::<_, u8, 1, 2>"
    )]
    pub stop_bits: u8,
    /// Modbus unit id, 1..=247, unique on its bus.
    #[serde(deserialize_with = "values::de_int_in::<_, u8, 1, 247>")]
    pub unit: u8,
    /// Register map: a profile name (`config/profiles/<name>.toml`) or a path.
    #[serde(default = "default_profile")]
    pub profile: String,
    /// Time between two polls of this lift.
    #[serde(
        default = "default_poll",
        deserialize_with = "values::de_duration_in::<_, 10, 60_000>"
    )]
    pub poll: Duration,
    /// How long the controller has to answer one request.
    #[serde(
        default = "default_modbus_timeout",
        deserialize_with = "values::de_duration_in::<_, 10, 5_000>"
    )]
    pub timeout: Duration,
    /// How long after a request that got no answer the unit is still owed one: nothing more
    /// is sent to it until its late answer has arrived (and been thrown away) or this much
    /// time has passed since the request. Unset: [`LATE_GUARD_TIMEOUTS`] x `timeout`.
    #[serde(
        default,
        deserialize_with = "values::de_opt_duration_in::<_, 0, 60_000>"
    )]
    pub late_guard: Option<Duration>,
    /// Highest floor served (overtravel above it).
    pub top_floor: i16,
    /// Lowest floor served (overtravel below it).
    pub bottom_floor: i16,
    /// Rated speed, mm/s (overspeed above 115 % of it).
    #[serde(deserialize_with = "values::de_int_in::<_, u16, 1, 65_535>")]
    pub rated_speed_mm_s: u16,
    /// An occupied car stopped with closed doors this long is `trapped_passenger`.
    #[serde(
        default = "default_trapped_after",
        deserialize_with = "values::de_duration_in::<_, 0, 3_600_000>"
    )]
    pub trapped_after: Duration,
    /// A car stopped outside the door zone this long is `stopped_outside_door_zone`.
    #[serde(
        default = "default_outside_zone_after",
        deserialize_with = "values::de_duration_in::<_, 0, 3_600_000>"
    )]
    pub outside_zone_after: Duration,
    /// The status is published on every change and at least this often (the feed promises
    /// a status at least every 60 s).
    #[serde(
        default = "default_status_interval",
        deserialize_with = "values::de_duration_in::<_, 1_000, 60_000>"
    )]
    pub status_interval: Duration,
    /// What a running car publishes: `"trip"` (default) a status when a trip starts and one
    /// when it ends, or `"floor"` a status at every floor passed and every door change.
    #[serde(default)]
    pub status: LiftStatusMode,
    /// The register map, resolved from `profile` when the configuration loads.
    #[serde(skip)]
    pub register_map: Option<crate::profile::Profile>,
}

/// `lift[].late_guard` when unset, in timeouts: an answer up to 4 x the timeout late is
/// recognised as late with certainty.
pub const LATE_GUARD_TIMEOUTS: u32 = 4;

impl LiftConfig {
    /// The late-answer guard: `late_guard`, or [`LATE_GUARD_TIMEOUTS`] x `timeout`.
    pub fn late_guard(&self) -> Duration {
        self.late_guard
            .unwrap_or(self.timeout * LATE_GUARD_TIMEOUTS)
    }

    /// The lift's own rules between its keys.
    pub fn check(&self, v: &mut Violations) {
        if let Some(guard) = self.late_guard {
            if guard <= self.timeout {
                v.add(
                    "late_guard",
                    format!("must be above timeout ({:?}) and at most 60s", self.timeout),
                );
            }
        }
        if self.top_floor <= self.bottom_floor {
            v.add(
                "top_floor",
                format!(
                    "{} must be above bottom_floor ({})",
                    self.top_floor, self.bottom_floor
                ),
            );
        }
    }
}

/// The rules between the lifts of one bus (lifts with the same `port`): distinct unit ids
/// and one line setting (baud, parity, stop bits), that of the bus's first lift.
pub fn check_lift_buses(lifts: &[LiftConfig], v: &mut Violations) {
    let mut buses: BTreeMap<&Path, (usize, BTreeSet<u8>)> = BTreeMap::new();
    for (i, lift) in lifts.iter().enumerate() {
        let (first, units) = buses
            .entry(lift.port.as_path())
            .or_insert((i, BTreeSet::new()));
        if !units.insert(lift.unit) {
            v.add(
                &format!("lift[{i}].unit"),
                format!(
                    "unit {} is used by another lift on {}",
                    lift.unit,
                    lift.port.display()
                ),
            );
        }
        let other = &lifts[*first];
        for (k, same) in [
            ("baud", other.baud == lift.baud),
            ("parity", other.parity == lift.parity),
            ("stop_bits", other.stop_bits == lift.stop_bits),
        ] {
            if !same {
                v.add(
                    &format!("lift[{i}].{k}"),
                    format!(
                        "differs from lift[{first}] on the same bus {}: one bus has one line setting",
                        lift.port.display()
                    ),
                );
            }
        }
    }
}

/// The rule between the devices of one I2C bus: each answers at its own address (the
/// NAU7802's is fixed, 0x2A; an ADXL355 answers at 0x53 when so configured, else 0x1D).
/// Simulated devices (`bus = "sim"`) each have a bus of their own.
pub fn check_i2c_buses<C>(devices: &[I2cConfig<C>], v: &mut Violations) {
    let mut taken: BTreeMap<(&str, u8), usize> = BTreeMap::new();
    for (i, dev) in devices.iter().enumerate() {
        if dev.bus == "sim" {
            continue;
        }
        let address = match (dev.chip, dev.address) {
            (Chip::Nau7802, _) => 0x2A,
            (Chip::Adxl355, Some(0x53)) => 0x53,
            (Chip::Adxl355, _) => 0x1D,
        };
        if let Some(first) = taken.insert((dev.bus.as_str(), address), i) {
            v.add(
                &format!("i2c[{i}].address"),
                format!(
                    "{address:#04x} on {} is i2c[{first}]'s: two chips on one bus need two addresses",
                    dev.bus
                ),
            );
        }
    }
}

/// A chip the agent can read directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Chip {
    /// 24-bit bridge ADC: one strain channel.
    Nau7802,
    /// 3-axis accelerometer as an inclinometer: tilt X, tilt Y, temperature.
    Adxl355,
}

/// `calibration = { gain, offset }`: value = gain x reading + offset.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// Multiplier.
    #[serde(default = "one")]
    pub gain: f64,
    /// Offset, in the channel's unit.
    #[serde(default)]
    pub offset: f64,
}

fn one() -> f64 {
    1.0
}

impl Default for Calibration {
    fn default() -> Self {
        Calibration {
            gain: 1.0,
            offset: 0.0,
        }
    }
}

/// `[[i2c]]`: one chip on one of the gateway's I2C buses; `C` as for [`NodeConfig`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct I2cConfig<C = ()> {
    /// Device id `{dev}`.
    pub id: DeviceId,
    /// `/dev/i2c-N`, or `"sim"` (builds with the `sim` feature).
    pub bus: String,
    /// The chip.
    pub chip: Chip,
    /// 7-bit address (default: 0x2A for the NAU7802, 0x1D for the ADXL355).
    #[serde(default)]
    pub address: Option<u8>,
    /// Samples per second, 1..=100.
    #[serde(
        default = "default_rate",
        deserialize_with = "values::de_int_in::<_, u16, 1, 100>"
    )]
    pub rate_hz: u16,
    /// Applied to every reading.
    #[serde(default)]
    pub calibration: Calibration,
    /// Telemetry window and filter settings, as for a node.
    #[serde(default = "default_window", deserialize_with = "values::de_duration")]
    pub window: Duration,
    /// Filter chain per channel, as for a node.
    #[serde(default = "BTreeMap::new")]
    #[serde(bound(deserialize = "C: Deserialize<'de>"))]
    pub channels: BTreeMap<String, C>,
}

impl<C> I2cConfig<C> {
    /// The same device with other channel settings.
    pub fn map_channels<D>(&self, mut f: impl FnMut(&C) -> D) -> I2cConfig<D> {
        I2cConfig {
            id: self.id.clone(),
            bus: self.bus.clone(),
            chip: self.chip,
            address: self.address,
            rate_hz: self.rate_hz,
            calibration: self.calibration,
            window: self.window,
            channels: self
                .channels
                .iter()
                .map(|(k, v)| (k.clone(), f(v)))
                .collect(),
        }
    }

    /// The device's own rules (what parses but makes no sense).
    pub fn check(&self, v: &mut Violations) {
        if self.bus != "sim" && !self.bus.starts_with("/dev/") {
            v.add(
                "bus",
                format!(
                    "{:?}: give a device such as /dev/i2c-1, or \"sim\"",
                    self.bus
                ),
            );
        }
        if let Some(a) = self.address {
            if !(0x08..=0x77).contains(&a) {
                v.add(
                    "address",
                    format!("{a:#04x} is not a 7-bit device address (0x08..=0x77)"),
                );
            }
        }
        if !self.calibration.gain.is_finite() || !self.calibration.offset.is_finite() {
            v.add("calibration", "gain and offset must be finite");
        }
    }
}

/// A key of `names` that is not a channel number (serde reports its `Display`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a channel id: the keys of names are channel numbers 0..=255")]
pub struct ChannelKeyError(pub String);

/// `names = { 0 = "strain_top" }`: TOML keys are always text, so a channel id key is
/// read as text and then as a number 0..=255.
fn de_channel_names<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<u8, String>, D::Error> {
    BTreeMap::<String, String>::deserialize(d)?
        .into_iter()
        .map(|(id, name)| match id.trim().parse::<u8>() {
            Ok(ch) => Ok((ch, name)),
            Err(_) => Err(serde::de::Error::custom(ChannelKeyError(id))),
        })
        .collect()
}

fn default_rate() -> u16 {
    10
}
fn default_node_baud() -> u32 {
    115_200
}
fn default_window() -> Duration {
    Duration::from_secs(10)
}
fn default_window_grace() -> Duration {
    Duration::from_secs(2)
}
fn default_lift_baud() -> u32 {
    9600
}
fn default_parity() -> Parity {
    Parity::None
}
fn default_stop_bits() -> u8 {
    1
}
fn default_profile() -> String {
    "generic".to_owned()
}
fn default_poll() -> Duration {
    Duration::from_millis(250)
}
fn default_modbus_timeout() -> Duration {
    Duration::from_millis(200)
}
fn default_trapped_after() -> Duration {
    Duration::from_secs(30)
}
fn default_outside_zone_after() -> Duration {
    Duration::from_secs(5)
}
fn default_status_interval() -> Duration {
    Duration::from_secs(60)
}
