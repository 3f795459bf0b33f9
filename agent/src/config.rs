//! The agent's TOML configuration: parsing, defaults and validation.
//!
//! A configuration is refused as a whole, before anything starts, when a key is unknown, a
//! value has the wrong type, or a value breaks a rule of the feed contract (ids, topic root,
//! plain MQTT to a non-loopback host). Every error names the key (`node[1].id`, `mqtt.url`) so
//! an installer can fix it without reading code; syntax and type errors also carry the line.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// The pattern every gateway and device id must match (feed contract, "Names").
pub const ID_PATTERN: &str = "^[a-z0-9][a-z0-9._-]{0,63}$";

/// Serial baud rates the agent accepts (the standard ones up to 921600).
pub const STANDARD_BAUDS: [u32; 16] = [
    1200, 2400, 4800, 9600, 14400, 19200, 38400, 57600, 115200, 128000, 230400, 256000, 460800,
    500000, 576000, 921600,
];

/// A configuration that could not be loaded, with enough context to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key, or a value of the wrong type.
    #[error("{path}: {message}")]
    Parse {
        /// The file (or `<string>`).
        path: String,
        /// toml's message, which names the line, column and key.
        message: String,
    },
    /// A value that parses but breaks a rule.
    #[error("{path}: {key}: {message}")]
    Invalid {
        /// The file (or `<string>`).
        path: String,
        /// The offending key, e.g. `node[0].id`.
        key: String,
        /// What is wrong and what would be right.
        message: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[gateway]`
    pub gateway: GatewayConfig,
    /// `[mqtt]`
    pub mqtt: MqttConfig,
    /// `[store]`
    pub store: StoreConfig,
    /// `[health]`
    #[serde(default)]
    pub health: HealthConfig,
    /// `[[node]]`: sensor nodes, one per serial port.
    #[serde(default, rename = "node")]
    pub nodes: Vec<NodeConfig>,
    /// `[[lift]]`: lift controllers on RS-485 buses (Modbus RTU, read-only).
    #[serde(default, rename = "lift")]
    pub lifts: Vec<LiftConfig>,
    /// `[[i2c]]`: chips on the gateway's own I2C buses.
    #[serde(default, rename = "i2c")]
    pub i2c: Vec<crate::sources::i2c_device::I2cConfig>,
    /// `[commands]`: limits on platform commands.
    #[serde(default)]
    pub commands: CommandsConfig,
}

/// `[commands]`: how many platform commands the agent takes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandsConfig {
    /// Commands per second accepted on average (token bucket refill rate).
    #[serde(default = "default_command_rate")]
    pub rate: u32,
    /// Commands accepted at once after a quiet period (token bucket size).
    #[serde(default = "default_command_burst")]
    pub burst: u32,
    /// The platform's Ed25519 public key (64 hex digits): when set, only commands it signed
    /// are carried out (see `command_auth`).
    #[serde(default)]
    pub public_key: Option<String>,
    /// How far a signed command's `ts` may be from the gateway's clock.
    #[serde(default = "default_max_skew", deserialize_with = "de_duration")]
    pub max_skew: Duration,
}

fn default_max_skew() -> Duration {
    Duration::from_secs(60)
}

impl Default for CommandsConfig {
    fn default() -> Self {
        CommandsConfig {
            rate: default_command_rate(),
            burst: default_command_burst(),
            public_key: None,
            max_skew: default_max_skew(),
        }
    }
}

fn default_command_rate() -> u32 {
    10
}
fn default_command_burst() -> u32 {
    20
}

/// A key that must never be in the configuration (`[mqtt] password`): accepted by the parser
/// only so that validation can refuse it with a pointer to `password_file`; its value is
/// dropped unread and never printed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RefusedSecret;

impl<'de> Deserialize<'de> for RefusedSecret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| RefusedSecret)
    }
}

impl fmt::Debug for RefusedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

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

/// `[[lift]]`: one lift controller, polled over Modbus RTU (function 0x04 only).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiftConfig {
    /// Device id: `{dev}` in the feed.
    pub id: String,
    /// The RS-485 adapter; lifts with the same port share one bus and one polling task.
    pub port: PathBuf,
    /// Baud rate (all lifts on a port must agree).
    #[serde(default = "default_lift_baud")]
    pub baud: u32,
    /// Parity (all lifts on a port must agree).
    #[serde(default = "default_parity")]
    pub parity: Parity,
    /// Stop bits, 1 or 2 (all lifts on a port must agree).
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// Modbus unit id, 1..=247, unique on its bus.
    pub unit: u8,
    /// Register map: a profile name (`config/profiles/<name>.toml`) or a path.
    #[serde(default = "default_profile")]
    pub profile: String,
    /// Time between two polls of this lift.
    #[serde(default = "default_poll", deserialize_with = "de_duration")]
    pub poll: Duration,
    /// How long the controller has to answer one request.
    #[serde(default = "default_modbus_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// How long after a request that got no answer the unit is still owed one: nothing more
    /// is sent to it until its late answer has arrived (and been thrown away) or this much
    /// time has passed since the request. Unset: [`LATE_GUARD_TIMEOUTS`] x `timeout`.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub late_guard: Option<Duration>,
    /// Highest floor served (overtravel above it).
    pub top_floor: i16,
    /// Lowest floor served (overtravel below it).
    pub bottom_floor: i16,
    /// Rated speed, mm/s (overspeed above 115 % of it).
    pub rated_speed_mm_s: u16,
    /// An occupied car stopped with closed doors this long is `trapped_passenger`.
    #[serde(default = "default_trapped_after", deserialize_with = "de_duration")]
    pub trapped_after: Duration,
    /// A car stopped outside the door zone this long is `stopped_outside_door_zone`.
    #[serde(
        default = "default_outside_zone_after",
        deserialize_with = "de_duration"
    )]
    pub outside_zone_after: Duration,
    /// The status is published on every change and at least this often.
    #[serde(default = "default_status_interval", deserialize_with = "de_duration")]
    pub status_interval: Duration,
    /// The register map, resolved from `profile` when the configuration loads.
    #[serde(skip)]
    pub register_map: Option<crate::profile::Profile>,
}

/// `[gateway]`: who this gateway is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// The gateway id: MQTT client id and `{gw}` in every topic.
    pub id: String,
}

/// `[mqtt]`: the uplink to the city platform.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    /// `{root}` of every topic.
    #[serde(default = "default_topic_root")]
    pub topic_root: String,
    /// MQTT keep-alive.
    #[serde(default = "default_keep_alive", deserialize_with = "de_duration")]
    pub keep_alive: Duration,
    /// QoS of telemetry (`data`): 1 (default) or 0.
    #[serde(default = "default_data_qos")]
    pub data_qos: u8,
    /// Allow plain `mqtt://` to a host that is not loopback.
    #[serde(default)]
    pub allow_insecure: bool,
    /// Most QoS 1 messages in flight (sent, not yet acknowledged).
    #[serde(default = "default_inflight")]
    pub max_inflight: u16,
    /// MQTT protocol version: `"5"` (default) or `"3.1.1"` (brokers without MQTT 5).
    #[serde(default)]
    pub protocol: MqttProtocol,
    /// The largest MQTT packet the client takes in (bytes, or `"256KiB"`); with MQTT 5 it is
    /// announced in CONNECT (Maximum Packet Size) so the broker drops bigger messages for us.
    #[serde(default = "default_max_packet", deserialize_with = "de_size")]
    pub max_packet: u64,
    /// PEM file of the CA that signed the broker's certificate (required for `mqtts://`).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM certificate (chain) of this gateway, for mTLS; needs `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// MQTT user name.
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the MQTT password (one line); needs `username`.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Refused: a password never goes into the configuration (see `password_file`).
    #[serde(default)]
    pub password: Option<RefusedSecret>,
}

/// `[mqtt] protocol`: the MQTT version every session of this gateway speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum MqttProtocol {
    /// MQTT 5.0: Maximum Packet Size in CONNECT, PUBACK reason codes.
    #[default]
    #[serde(rename = "5")]
    V5,
    /// MQTT 3.1.1, for brokers without MQTT 5 (e.g. NATS' MQTT).
    #[serde(rename = "3.1.1")]
    V311,
}

impl std::fmt::Display for MqttProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MqttProtocol::V5 => "5",
            MqttProtocol::V311 => "3.1.1",
        })
    }
}

/// Bounds of `[mqtt] max_packet`: room for the largest data window and reply, and MQTT's
/// own ceiling (a remaining length of 268,435,455 bytes plus the fixed header).
pub const MAX_PACKET_RANGE: std::ops::RangeInclusive<u64> = 16 * 1024..=268_435_460;

/// `[store]`: where the agent keeps state across restarts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// A directory; created if missing.
    pub path: PathBuf,
    /// Most messages kept in memory waiting for the broker; the oldest telemetry goes first.
    #[serde(default = "default_max_messages")]
    pub max_messages: usize,
    /// Most bytes of unacknowledged messages on disk (`"512MiB"`); the oldest telemetry goes
    /// first.
    #[serde(default = "default_max_bytes", deserialize_with = "de_size")]
    pub max_bytes: u64,
    /// `"always"` (sync before a message counts as queued) or an interval (`"100ms"`).
    #[serde(default = "default_fsync", deserialize_with = "de_fsync")]
    pub fsync: crate::queue::store::FsyncPolicy,
    /// Segment files are rotated past this size (`"8MiB"`).
    #[serde(default = "default_segment_bytes", deserialize_with = "de_size")]
    pub segment_bytes: u64,
    /// Most queued telemetry messages sent per second (a backlog replays at this rate while
    /// events still go first); 0 = no limit.
    #[serde(default = "default_replay_rate")]
    pub replay_rate: u32,
}

/// `[health]`: the gateway's own health report.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// How often `health` is published.
    #[serde(default = "default_health_interval", deserialize_with = "de_duration")]
    pub interval: Duration,
    /// A node that sends nothing at all for this long is reported `sensor_offline`.
    #[serde(default = "default_node_silence", deserialize_with = "de_duration")]
    pub node_silent_after: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: default_health_interval(),
            node_silent_after: default_node_silence(),
        }
    }
}

/// `[[node]]`: one sensor node on one serial port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Device id: `{dev}` in the feed.
    pub id: String,
    /// Serial device path, e.g. `/dev/ttyUSB0` or a udev symlink.
    pub port: PathBuf,
    /// Baud rate (8N1).
    #[serde(default = "default_node_baud")]
    pub baud: u32,
    /// Length of a telemetry window.
    #[serde(default = "default_window", deserialize_with = "de_duration")]
    pub window: Duration,
    /// How long after a window ends its samples may still arrive (nodes batch up to ~1 s).
    #[serde(default = "default_window_grace", deserialize_with = "de_duration")]
    pub window_grace: Duration,
    /// The node id expected on this port; frames from another node are counted and dropped.
    #[serde(default)]
    pub node_id: Option<u32>,
    /// Feed names for channels, by channel id (`names = { 0 = "strain_top" }`).
    #[serde(default)]
    pub names: BTreeMap<u8, String>,
    /// Where `zero` tares a channel: on the node (default, where it supports it) or here.
    #[serde(default)]
    pub zero_at: ZeroAt,
    /// Filter chain settings by channel feed name (`[node.channels.tilt_x]`).
    #[serde(default)]
    pub channels: BTreeMap<String, crate::pipeline::settings::ChannelSettings>,
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

fn default_topic_root() -> String {
    "towerlink/v1".to_owned()
}
fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}
fn default_data_qos() -> u8 {
    1
}
fn default_inflight() -> u16 {
    100
}
fn default_max_packet() -> u64 {
    256 * 1024
}
fn default_max_messages() -> usize {
    100_000
}
fn default_max_bytes() -> u64 {
    512 << 20
}
fn default_fsync() -> crate::queue::store::FsyncPolicy {
    crate::queue::store::FsyncPolicy::Every(Duration::from_millis(100))
}
fn default_segment_bytes() -> u64 {
    8 << 20
}
fn default_replay_rate() -> u32 {
    500
}
fn default_health_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_node_silence() -> Duration {
    Duration::from_secs(30)
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

/// Parses a size: `"512MiB"`, `"1GiB"`, `"64KiB"`, `"1000000"` (bytes); `k`/`KB`/`MB`/`GB`
/// are decimal, `KiB`/`MiB`/`GiB` binary.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("invalid size {text:?}; write e.g. \"512MiB\""))?;
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
            return Err(format!(
                "invalid size unit {other:?} in {text:?}; use B, KiB, MiB, GiB (or kB, MB, GB)"
            ))
        }
    };
    let bytes = number * factor as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("size {text:?} is out of range"));
    }
    Ok(bytes as u64)
}

fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(b) => Ok(b),
        Size::Text(t) => parse_size(&t).map_err(serde::de::Error::custom),
    }
}

fn de_fsync<'de, D: Deserializer<'de>>(d: D) -> Result<crate::queue::store::FsyncPolicy, D::Error> {
    let text = String::deserialize(d)?;
    if text == "always" {
        return Ok(crate::queue::store::FsyncPolicy::Always);
    }
    humantime::parse_duration(&text)
        .map(crate::queue::store::FsyncPolicy::Every)
        .map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid fsync policy {text:?} ({e}); write \"always\" or an interval such as \"100ms\""
            ))
        })
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
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

/// Parses `"10s"`, `"250ms"`, `"5m"`, `"1h 30m"`.
pub(crate) fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration {text:?} ({e}); write e.g. \"10s\", \"250ms\", \"5m\""
        ))
    })
}

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

/// A parsed `[mqtt] url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddress {
    /// `mqtts://`?
    pub tls: bool,
    /// Host name or address.
    pub host: String,
    /// Port (1883 / 8883 by default).
    pub port: u16,
}

impl BrokerAddress {
    /// Parses `mqtt://host[:port]` or `mqtts://host[:port]` (IPv6 in brackets).
    pub fn parse(url: &str) -> Result<BrokerAddress, String> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("mqtt://") {
            (false, rest)
        } else {
            return Err(format!("{url:?} must start with mqtt:// or mqtts://"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains('/') || rest.contains('@') {
            return Err(format!(
                "{url:?} must be scheme://host[:port] with no path or credentials (use username / password_file)"
            ));
        }
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{url:?}: unclosed [ in IPv6 address"))?;
            match after.strip_prefix(':') {
                Some(p) => (host.to_owned(), parse_port(url, p)?),
                None if after.is_empty() => (host.to_owned(), default_port),
                None => return Err(format!("{url:?}: unexpected {after:?} after the address")),
            }
        } else {
            match rest.rsplit_once(':') {
                Some((host, p)) => (host.to_owned(), parse_port(url, p)?),
                None => (rest.to_owned(), default_port),
            }
        };
        if host.is_empty() {
            return Err(format!("{url:?} has no host"));
        }
        Ok(BrokerAddress { tls, host, port })
    }

    /// Is the host a loopback address (or `localhost`)?
    pub fn is_loopback(&self) -> bool {
        self.host == "localhost"
            || self
                .host
                .parse::<IpAddr>()
                .map(|ip| ip.is_loopback())
                .unwrap_or(false)
    }
}

fn parse_port(url: &str, p: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(format!("{url:?}: {p:?} is not a port number (1..=65535)")),
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse_in(&text, &path.display().to_string(), path.parent())
    }

    /// Parses and validates configuration text; `origin` names it in errors. Lift profiles
    /// are looked up as for a config file in no directory (see [`Config::parse_in`]).
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        Config::parse_in(text, origin, None)
    }

    /// Parses and validates configuration text whose relative profile paths and
    /// `profiles/` directory are under `dir`.
    pub fn parse_in(text: &str, origin: &str, dir: Option<&Path>) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        config
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                path: origin.to_owned(),
                key,
                message,
            })?;
        for (i, lift) in config.lifts.iter_mut().enumerate() {
            let map = crate::profile::Profile::resolve(&lift.profile, dir).map_err(|message| {
                ConfigError::Invalid {
                    path: origin.to_owned(),
                    key: format!("lift[{i}].profile"),
                    message,
                }
            })?;
            lift.register_map = Some(map);
        }
        Ok(config)
    }

    /// The broker address of `[mqtt] url` (validated at load, so this cannot fail after it).
    pub fn broker(&self) -> Result<BrokerAddress, String> {
        BrokerAddress::parse(&self.mqtt.url)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, message: String| Err((key.to_owned(), message));
        if !is_valid_id(&self.gateway.id) {
            return bad(
                "gateway.id",
                format!(
                    "{:?} is not a valid gateway id: it must match {ID_PATTERN}",
                    self.gateway.id
                ),
            );
        }
        let broker = match BrokerAddress::parse(&self.mqtt.url) {
            Ok(b) => b,
            Err(e) => return bad("mqtt.url", e),
        };
        if !broker.tls && !broker.is_loopback() && !self.mqtt.allow_insecure {
            return bad(
                "mqtt.url",
                format!(
                    "plain MQTT to {} would send data unencrypted; use mqtts:// or set allow_insecure = true",
                    broker.host
                ),
            );
        }
        crate::uplink::tls::validate_config(&self.mqtt, &broker)?;
        if let Some(key) = &self.commands.public_key {
            if let Err(e) = crate::command_auth::CommandVerifier::new(&self.gateway.id, key, 0) {
                return bad("commands.public_key", e);
            }
        }
        if self.commands.rate == 0 || self.commands.burst == 0 {
            return bad(
                "commands.rate",
                "rate and burst must be at least 1 command".to_owned(),
            );
        }
        let root = &self.mqtt.topic_root;
        if root.is_empty()
            || root.starts_with('/')
            || root.ends_with('/')
            || root.contains(['+', '#', '\0'])
            || root.split('/').any(str::is_empty)
        {
            return bad(
                "mqtt.topic_root",
                format!("{root:?} must be non-empty topic levels separated by '/', without '+', '#' or empty levels"),
            );
        }
        if self.mqtt.data_qos > 1 {
            return bad(
                "mqtt.data_qos",
                format!("{} must be 0 or 1", self.mqtt.data_qos),
            );
        }
        if self.mqtt.keep_alive < Duration::from_secs(5)
            || self.mqtt.keep_alive > Duration::from_secs(65_535)
        {
            return bad("mqtt.keep_alive", "must be between 5s and 18h".to_owned());
        }
        if self.mqtt.max_inflight == 0 {
            return bad("mqtt.max_inflight", "must be at least 1".to_owned());
        }
        if !MAX_PACKET_RANGE.contains(&self.mqtt.max_packet) {
            return bad(
                "mqtt.max_packet",
                format!(
                    "{} bytes: must be between 16KiB and 268435460 bytes (MQTT's largest packet)",
                    self.mqtt.max_packet
                ),
            );
        }
        if self.store.max_messages < 100 {
            return bad("store.max_messages", "must be at least 100".to_owned());
        }
        if self.store.max_bytes < 64 * 1024 {
            return bad("store.max_bytes", "must be at least 64KiB".to_owned());
        }
        if self.store.segment_bytes < 4096 || self.store.segment_bytes > 1 << 30 {
            return bad(
                "store.segment_bytes",
                "must be between 4KiB and 1GiB".to_owned(),
            );
        }
        if let crate::queue::store::FsyncPolicy::Every(d) = self.store.fsync {
            if d < Duration::from_millis(1) || d > Duration::from_secs(60) {
                return bad(
                    "store.fsync",
                    "an interval must be between 1ms and 60s (or \"always\")".to_owned(),
                );
            }
        }
        if self.health.interval < Duration::from_secs(1) {
            return bad("health.interval", "must be at least 1s".to_owned());
        }
        let mut seen_ids = std::collections::BTreeSet::new();
        let mut seen_ports = std::collections::BTreeSet::new();
        for (i, dev) in self.i2c.iter().enumerate() {
            let key = |k: &str| format!("i2c[{i}].{k}");
            if !is_valid_id(&dev.id) {
                return bad(
                    &key("id"),
                    format!(
                        "{:?} is not a valid device id: it must match {ID_PATTERN}",
                        dev.id
                    ),
                );
            }
            if self.nodes.iter().any(|n| n.id == dev.id)
                || self.i2c[..i].iter().any(|o| o.id == dev.id)
            {
                return bad(
                    &key("id"),
                    format!("{:?} is used by another device", dev.id),
                );
            }
            if let Err((sub, message)) = dev.validate() {
                return bad(&key(&sub), message);
            }
        }
        for (i, node) in self.nodes.iter().enumerate() {
            let key = |k: &str| format!("node[{i}].{k}");
            if !is_valid_id(&node.id) {
                return bad(
                    &key("id"),
                    format!(
                        "{:?} is not a valid device id: it must match {ID_PATTERN}",
                        node.id
                    ),
                );
            }
            if !seen_ids.insert(node.id.as_str()) {
                return bad(
                    &key("id"),
                    format!("{:?} is used by another device", node.id),
                );
            }
            if !seen_ports.insert(node.port.as_path()) {
                return bad(
                    &key("port"),
                    format!(
                        "{} is used by another node (one node per port)",
                        node.port.display()
                    ),
                );
            }
            if !STANDARD_BAUDS.contains(&node.baud) {
                return bad(
                    &key("baud"),
                    format!(
                        "{} is not a standard baud rate ({STANDARD_BAUDS:?})",
                        node.baud
                    ),
                );
            }
            if node.window < Duration::from_millis(100) || node.window > Duration::from_secs(3600) {
                return bad(&key("window"), "must be between 100ms and 1h".to_owned());
            }
            if node.window_grace > Duration::from_secs(60) {
                return bad(&key("window_grace"), "must be at most 60s".to_owned());
            }
            for (name, settings) in &node.channels {
                if !is_valid_id(name) {
                    return bad(
                        &key(&format!("channels.{name}")),
                        format!("{name:?} is not a valid channel name"),
                    );
                }
                if let Err((sub, message)) = settings.validate() {
                    return bad(&key(&format!("channels.{name}.{sub}")), message);
                }
            }
            for (ch, name) in &node.names {
                if !is_valid_id(name) {
                    return bad(
                        &key(&format!("names.{ch}")),
                        format!("{name:?} is not a valid channel name: it must match {ID_PATTERN}"),
                    );
                }
            }
        }
        self.validate_lifts(seen_ids, seen_ports)
    }

    fn validate_lifts<'a>(
        &'a self,
        mut seen_ids: std::collections::BTreeSet<&'a str>,
        node_ports: std::collections::BTreeSet<&'a Path>,
    ) -> Result<(), (String, String)> {
        let bad = |key: String, message: String| Err((key, message));
        // Per bus: its line settings (from the first lift on it) and the unit ids taken.
        let mut buses: BTreeMap<&Path, (usize, std::collections::BTreeSet<u8>)> = BTreeMap::new();
        for (i, lift) in self.lifts.iter().enumerate() {
            let key = |k: &str| format!("lift[{i}].{k}");
            if !is_valid_id(&lift.id) {
                return bad(
                    key("id"),
                    format!(
                        "{:?} is not a valid device id: it must match {ID_PATTERN}",
                        lift.id
                    ),
                );
            }
            if !seen_ids.insert(lift.id.as_str()) {
                return bad(
                    key("id"),
                    format!("{:?} is used by another device", lift.id),
                );
            }
            if node_ports.contains(lift.port.as_path()) {
                return bad(
                    key("port"),
                    format!(
                        "{} is a sensor node's port; lifts need their own RS-485 bus",
                        lift.port.display()
                    ),
                );
            }
            if !STANDARD_BAUDS.contains(&lift.baud) || lift.baud > 115_200 {
                return bad(
                    key("baud"),
                    format!(
                        "{} is not a Modbus RTU baud rate (1200..=115200, standard rates)",
                        lift.baud
                    ),
                );
            }
            if !matches!(lift.stop_bits, 1 | 2) {
                return bad(
                    key("stop_bits"),
                    format!("{} must be 1 or 2", lift.stop_bits),
                );
            }
            if !(1..=247).contains(&lift.unit) {
                return bad(
                    key("unit"),
                    format!("{} is not a Modbus unit id (1..=247)", lift.unit),
                );
            }
            let (first, units) = buses
                .entry(lift.port.as_path())
                .or_insert((i, std::collections::BTreeSet::new()));
            if !units.insert(lift.unit) {
                return bad(
                    key("unit"),
                    format!(
                        "unit {} is used by another lift on {}",
                        lift.unit,
                        lift.port.display()
                    ),
                );
            }
            let other = &self.lifts[*first];
            for (k, same) in [
                ("baud", other.baud == lift.baud),
                ("parity", other.parity == lift.parity),
                ("stop_bits", other.stop_bits == lift.stop_bits),
            ] {
                if !same {
                    return bad(
                        key(k),
                        format!(
                            "differs from lift[{first}] on the same bus {}: one bus has one line setting",
                            lift.port.display()
                        ),
                    );
                }
            }
            if lift.poll < Duration::from_millis(10) || lift.poll > Duration::from_secs(60) {
                return bad(key("poll"), "must be between 10ms and 60s".to_owned());
            }
            if lift.timeout < Duration::from_millis(10) || lift.timeout > Duration::from_secs(5) {
                return bad(key("timeout"), "must be between 10ms and 5s".to_owned());
            }
            if let Some(guard) = lift.late_guard {
                if guard <= lift.timeout || guard > Duration::from_secs(60) {
                    return bad(
                        key("late_guard"),
                        format!("must be above timeout ({:?}) and at most 60s", lift.timeout),
                    );
                }
            }
            if lift.top_floor <= lift.bottom_floor {
                return bad(
                    key("top_floor"),
                    format!(
                        "{} must be above bottom_floor ({})",
                        lift.top_floor, lift.bottom_floor
                    ),
                );
            }
            if lift.rated_speed_mm_s == 0 {
                return bad(key("rated_speed_mm_s"), "must be above 0".to_owned());
            }
            for (k, d) in [
                ("trapped_after", lift.trapped_after),
                ("outside_zone_after", lift.outside_zone_after),
            ] {
                if d > Duration::from_secs(3600) {
                    return bad(key(k), "must be at most 1h".to_owned());
                }
            }
            if lift.status_interval < Duration::from_secs(1)
                || lift.status_interval > Duration::from_secs(60)
            {
                return bad(
                    key("status_interval"),
                    "must be between 1s and 60s (the feed promises a status at least every 60 s)"
                        .to_owned(),
                );
            }
        }
        Ok(())
    }
}

impl fmt::Display for BrokerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[gateway]
id = "sh-ja-0001"
[mqtt]
url = "mqtt://127.0.0.1:1883"
topic_root = "towerlink/v1"
[store]
path = "/var/lib/towerlink"
[[node]]
id = "panel-n12"
port = "/dev/ttyUSB0"
baud = 115200
window = "10s"
"#;

    fn err(text: &str) -> String {
        match Config::parse(text, "t.toml") {
            Ok(_) => panic!("config was accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn store_sizes_and_fsync_policies_parse() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1.5 GiB"), Ok(3 << 29));
        assert_eq!(parse_size("64kB"), Ok(64_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("MiB").is_err());
        let c = Config::parse(GOOD, "t.toml").expect("good config");
        assert_eq!(c.store.max_bytes, 512 << 20);
        assert_eq!(c.store.replay_rate, 500);
        assert_eq!(
            c.store.fsync,
            crate::queue::store::FsyncPolicy::Every(Duration::from_millis(100))
        );
        let text = GOOD.replace(
            "[store]\n",
            "[store]\nfsync = \"always\"\nmax_bytes = \"1GiB\"\nreplay_rate = 0\n",
        );
        let c = Config::parse(&text, "t.toml").expect("store keys");
        assert_eq!(c.store.fsync, crate::queue::store::FsyncPolicy::Always);
        assert_eq!(c.store.max_bytes, 1 << 30);
        let e = err(&GOOD.replace("[store]\n", "[store]\nfsync = \"sometimes\"\n"));
        assert!(e.contains("fsync"), "{e}");
        let e = err(&GOOD.replace("[store]\n", "[store]\nmax_bytes = \"1KiB\"\n"));
        assert!(e.contains("store.max_bytes"), "{e}");
    }

    #[test]
    fn the_issue_sketch_parses_with_defaults() {
        let c = Config::parse(GOOD, "t.toml").expect("good config");
        assert_eq!(c.gateway.id, "sh-ja-0001");
        assert_eq!(c.nodes.len(), 1);
        assert_eq!(c.nodes[0].window, Duration::from_secs(10));
        assert_eq!(c.mqtt.keep_alive, Duration::from_secs(30));
        assert_eq!(c.health.interval, Duration::from_secs(60));
        assert_eq!(
            c.broker().expect("url"),
            BrokerAddress {
                tls: false,
                host: "127.0.0.1".into(),
                port: 1883
            }
        );
    }

    #[test]
    fn mqtt_protocol_and_max_packet() {
        let c = Config::parse(GOOD, "t.toml").expect("good config");
        assert_eq!(
            (c.mqtt.protocol, c.mqtt.max_packet),
            (MqttProtocol::V5, 256 * 1024)
        );
        let with = |keys: &str| GOOD.replace("[mqtt]\n", &format!("[mqtt]\n{keys}\n"));
        let c = Config::parse(&with("protocol = \"3.1.1\"\nmax_packet = \"1MiB\""), "t")
            .expect("3.1.1");
        assert_eq!(
            (c.mqtt.protocol, c.mqtt.max_packet),
            (MqttProtocol::V311, 1 << 20)
        );
        assert_eq!(c.mqtt.protocol.to_string(), "3.1.1");
        let e = err(&with("protocol = \"4\""));
        assert!(e.contains("protocol") && e.contains("3.1.1"), "{e}");
        for bad in ["\"1KiB\"", "\"300MiB\""] {
            let e = err(&with(&format!("max_packet = {bad}")));
            assert!(e.contains("mqtt.max_packet"), "{e}");
        }
        let c = Config::parse(&with("max_packet = 268435460"), "t").expect("the ceiling");
        assert_eq!(c.mqtt.max_packet, 268_435_460);
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name_and_line() {
        let e = err(&GOOD.replace("baud = 115200", "baud = 115200\nbaudrate = 9600"));
        assert!(e.contains("baudrate"), "{e}");
        assert!(e.contains("line 13"), "{e}");
    }

    #[test]
    fn invalid_ids_are_refused_with_the_key() {
        let e = err(&GOOD.replace("panel-n12", "Panel/N12"));
        assert!(e.contains("node[0].id"), "{e}");
        let e = err(&GOOD.replace("sh-ja-0001", "sh+ja"));
        assert!(e.contains("gateway.id"), "{e}");
        let long = "a".repeat(65);
        let e = err(&GOOD.replace("panel-n12", &long));
        assert!(e.contains("node[0].id"), "{e}");
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
    fn plain_mqtt_to_a_remote_host_needs_allow_insecure() {
        let remote = GOOD.replace("mqtt://127.0.0.1:1883", "mqtt://platform.example:1883");
        let e = err(&remote);
        assert!(
            e.contains("mqtt.url") && e.contains("allow_insecure"),
            "{e}"
        );
        let allowed = remote.replace("topic_root", "allow_insecure = true\ntopic_root");
        assert!(Config::parse(&allowed, "t").is_ok());
        let tls = GOOD.replace(
            "mqtt://127.0.0.1:1883\"",
            "mqtts://platform.example\"\nca_file = \"/etc/towerlink/ca.pem\"",
        );
        let c = Config::parse(&tls, "t").expect("tls config");
        assert_eq!(c.broker().expect("url").port, 8883);
    }

    #[test]
    fn broker_urls() {
        assert_eq!(
            BrokerAddress::parse("mqtt://[::1]:1884").expect("v6"),
            BrokerAddress {
                tls: false,
                host: "::1".into(),
                port: 1884
            }
        );
        assert!(BrokerAddress::parse("mqtt://[::1]")
            .expect("v6")
            .is_loopback());
        assert!(BrokerAddress::parse("mqtt://localhost")
            .expect("host")
            .is_loopback());
        for bad in [
            "http://x",
            "mqtt://",
            "mqtt://h:0",
            "mqtt://h:99999",
            "mqtt://u:p@h",
            "mqtt://h/path",
        ] {
            assert!(BrokerAddress::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("baud = 115200", "baud = 115201", "node[0].baud"),
            ("window = \"10s\"", "window = \"ten seconds\"", "window"),
            ("window = \"10s\"", "window = \"2h\"", "node[0].window"),
            (
                "topic_root = \"towerlink/v1\"",
                "topic_root = \"a/+/b\"",
                "mqtt.topic_root",
            ),
            (
                "topic_root = \"towerlink/v1\"",
                "topic_root = \"a//b\"",
                "mqtt.topic_root",
            ),
            (
                "topic_root = \"towerlink/v1\"",
                "data_qos = 2",
                "mqtt.data_qos",
            ),
        ];
        for (from, to, key) in cases {
            let e = err(&GOOD.replace(from, to));
            assert!(e.contains(key), "{to}: {e}");
        }
    }

    #[test]
    fn duplicate_devices_and_ports_are_refused() {
        let two = format!("{GOOD}\n[[node]]\nid = \"panel-n12\"\nport = \"/dev/ttyUSB1\"\n");
        assert!(err(&two).contains("node[1].id"));
        let two = format!("{GOOD}\n[[node]]\nid = \"panel-n13\"\nport = \"/dev/ttyUSB0\"\n");
        assert!(err(&two).contains("node[1].port"));
    }

    const LIFT: &str = r#"
[[lift]]
id = "lift-2"
port = "/dev/ttyRS485-0"
baud = 9600
parity = "none"            # none | even | odd
unit = 2
profile = "generic"        # a file in config/profiles/, or a path
poll = "250ms"
top_floor = 32
bottom_floor = -2
rated_speed_mm_s = 1750
trapped_after = "30s"
outside_zone_after = "5s"
"#;

    #[test]
    fn the_lift_sketch_parses_with_its_profile() {
        let c = Config::parse(&format!("{GOOD}{LIFT}"), "t.toml").expect("lift config");
        let lift = &c.lifts[0];
        assert_eq!(lift.unit, 2);
        assert_eq!(lift.parity, Parity::None);
        assert_eq!(lift.poll, Duration::from_millis(250));
        assert_eq!(lift.timeout, Duration::from_millis(200));
        assert_eq!(lift.late_guard(), Duration::from_millis(800));
        assert_eq!((lift.top_floor, lift.bottom_floor), (32, -2));
        assert_eq!(lift.trapped_after, Duration::from_secs(30));
        assert_eq!(lift.status_interval, Duration::from_secs(60));
        let map = lift.register_map.as_ref().expect("resolved profile");
        assert_eq!((map.name.as_str(), map.count), ("generic", 14));
    }

    #[test]
    fn bad_lift_values_name_their_key() {
        let cases = [
            ("unit = 2", "unit = 0", "lift[0].unit"),
            ("unit = 2", "unit = 248", "unit"),
            ("parity = \"none\"", "parity = \"mark\"", "parity"),
            ("baud = 9600", "baud = 230400", "lift[0].baud"),
            ("top_floor = 32", "top_floor = -3", "lift[0].top_floor"),
            ("poll = \"250ms\"", "poll = \"1ms\"", "lift[0].poll"),
            (
                "poll = \"250ms\"",
                "poll = \"250ms\"\nlate_guard = \"100ms\"",
                "lift[0].late_guard",
            ),
            (
                "poll = \"250ms\"",
                "poll = \"250ms\"\nlate_guard = \"61s\"",
                "lift[0].late_guard",
            ),
            (
                "profile = \"generic\"",
                "profile = \"acme\"",
                "lift[0].profile",
            ),
            (
                "unit = 2",
                "unit = 2\nwrite_registers = true",
                "write_registers",
            ),
            (
                "rated_speed_mm_s = 1750",
                "rated_speed_mm_s = 0",
                "rated_speed_mm_s",
            ),
            ("id = \"lift-2\"", "id = \"panel-n12\"", "lift[0].id"),
            (
                "port = \"/dev/ttyRS485-0\"",
                "port = \"/dev/ttyUSB0\"",
                "lift[0].port",
            ),
        ];
        for (from, to, key) in cases {
            let text = format!("{GOOD}{}", LIFT.replace(from, to));
            let e = err(&text);
            assert!(e.contains(key), "{to}: {e}");
        }
    }

    #[test]
    fn lifts_on_one_bus_need_distinct_units_and_one_line_setting() {
        let second = LIFT.replace("lift-2", "lift-3");
        let e = err(&format!("{GOOD}{LIFT}{second}"));
        assert!(e.contains("lift[1].unit"), "{e}");
        let second = second.replace("unit = 2", "unit = 3");
        assert!(Config::parse(&format!("{GOOD}{LIFT}{second}"), "t").is_ok());
        let e = err(&format!(
            "{GOOD}{LIFT}{}",
            second.replace("baud = 9600", "baud = 19200")
        ));
        assert!(e.contains("lift[1].baud") && e.contains("same bus"), "{e}");
        let e = err(&format!(
            "{GOOD}{LIFT}{}",
            second.replace("parity = \"none\"", "parity = \"even\"")
        ));
        assert!(e.contains("lift[1].parity"), "{e}");
    }

    #[test]
    fn missing_sections_are_named() {
        let e = err("[gateway]\nid = \"a\"\n");
        assert!(e.contains("mqtt"), "{e}");
    }
}
