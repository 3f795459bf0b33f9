//! The agent's configuration file: loads it, composes the sections the stages define, and
//! checks the rules that span sections.
//!
//! Each stage owns its section, its defaults and its rules: `[[node]]`, `[[lift]]` and
//! `[[i2c]]` in [`crate::sources::config`] (their channels' filter settings in
//! [`crate::pipeline::settings`]), `[store]` in [`crate::queue::config`], `[mqtt]` in
//! [`crate::uplink::config`], `[commands]` in [`crate::commands::config`] and `[health]` in
//! [`crate::health`]. Values are checked while they are read ([`crate::values`]). This
//! module adds what no section can see alone: device ids unique across nodes, I2C devices
//! and lifts; one device per serial port, and no lift on a node's port; one line setting
//! and distinct units per RS-485 bus; lift profiles resolved next to the file.
//!
//! A configuration is refused as a whole, before anything starts, with **every** problem
//! in it: each names its line, column and key path (`node[1].channels.strain.spike.k`) so
//! an installer can fix the file in one pass.

mod document;

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

pub use crate::commands::config::CommandsConfig;
pub use crate::health::HealthConfig;
use crate::pipeline::settings::ChannelSettings;
pub use crate::queue::config::StoreConfig;
use crate::sources::config as source_config;
pub use crate::sources::config::{LiftConfig, ZeroAt};
pub use crate::uplink::config::{BrokerAddress, MqttConfig};
use crate::values::{GatewayId, Violations};
use document::Document;

/// A configuration that could not be loaded.
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
    /// The file was read but is not a valid configuration: every problem found in it.
    #[error("{}", render_problems(origin, problems))]
    Invalid {
        /// The file (or the name given to the text).
        origin: String,
        /// Each problem with its place; never empty.
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// The problems in the file (none for a file that could not be read).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid { problems, .. } => problems,
        }
    }
}

fn render_problems(origin: &str, problems: &[Problem]) -> String {
    match problems {
        [one] => format!("{origin}: {one}"),
        many => {
            let lines: Vec<String> = many.iter().map(|p| format!("  {p}")).collect();
            format!("{origin}: {} problems:\n{}", many.len(), lines.join("\n"))
        }
    }
}

/// What kind of problem a [`Problem`] is (the installer's fix depends on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// The text is not TOML.
    Syntax,
    /// A key no section knows.
    UnknownKey,
    /// A required key or section is missing.
    MissingKey,
    /// A value of the wrong type (a string for a number, an unknown variant).
    WrongType,
    /// A value of the right type that breaks a rule (range, pattern, uniqueness).
    Rule,
}

impl ProblemKind {
    /// The kind of a serde / TOML message.
    pub(crate) fn of(message: &str) -> ProblemKind {
        if message.starts_with("unknown field") {
            ProblemKind::UnknownKey
        } else if message.starts_with("missing field") {
            ProblemKind::MissingKey
        } else if message.starts_with("invalid type")
            || message.starts_with("unknown variant")
            || message.starts_with("data did not match")
        {
            ProblemKind::WrongType
        } else {
            ProblemKind::Rule
        }
    }
}

/// One problem of a configuration file, with its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line, where known.
    pub line: Option<usize>,
    /// 1-based column, where known.
    pub column: Option<usize>,
    /// The key path (`node[1].baud`, `mqtt.url`); empty for a syntax error.
    pub key: String,
    /// What kind of problem.
    pub kind: ProblemKind,
    /// What is wrong and what would be right.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "line {l}, column {c}: ")?,
            (Some(l), None) => write!(f, "line {l}: ")?,
            _ => {}
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// `[gateway]`: who this gateway is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// The gateway id: MQTT client id and `{gw}` in every topic.
    pub id: GatewayId,
}

pub use crate::pipeline::settings::{I2cDevice, Node};
// The sections' types, for the binaries, the simulators and the tests (the stages import
// them from the stage that owns them, never from here).
pub use crate::sources::config::{Chip, NodeConfig, Parity};
pub use crate::uplink::config::{MqttProtocol, MAX_PACKET_RANGE};
pub use crate::values::{is_valid_id, parse_size, ID_PATTERN, STANDARD_BAUDS};

/// The whole configuration file.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[gateway]`
    pub gateway: GatewayConfig,
    /// `[mqtt]`
    pub mqtt: MqttConfig,
    /// `[store]`
    pub store: StoreConfig,
    /// `[health]`
    pub health: HealthConfig,
    /// `[[node]]`: sensor nodes, one per serial port.
    pub nodes: Vec<Node>,
    /// `[[lift]]`: lift controllers on RS-485 buses (Modbus RTU, read-only).
    pub lifts: Vec<LiftConfig>,
    /// `[[i2c]]`: chips on the gateway's own I2C buses.
    pub i2c: Vec<I2cDevice>,
    /// `[commands]`: limits on platform commands.
    pub commands: CommandsConfig,
}

/// The top-level keys of the file.
const SECTIONS: [&str; 8] = [
    "gateway", "mqtt", "store", "health", "node", "lift", "i2c", "commands",
];

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
        let invalid = |problems| ConfigError::Invalid {
            origin: origin.to_owned(),
            problems,
        };
        let mut doc = Document::parse(text).map_err(|p| invalid(vec![p]))?;
        let gateway = doc.section::<GatewayConfig>("gateway", true);
        let mqtt = doc.section::<MqttConfig>("mqtt", true);
        let store = doc.section::<StoreConfig>("store", true);
        let health = doc.section::<HealthConfig>("health", false);
        let commands = doc.section::<CommandsConfig>("commands", false);
        let nodes = doc.array::<Node>("node");
        let mut lifts = doc.array::<LiftConfig>("lift");
        let i2c = doc.array::<I2cDevice>("i2c");
        doc.unknown_sections(&SECTIONS);

        // Rules between keys run on sections read as written; on a partial one (a bad key
        // taken out) only rules that cannot depend on a defaulted key run.
        let mut v = Violations::new("");
        if let Some(mqtt) = mqtt.as_ref().filter(|_| doc.is_clean("mqtt")) {
            let mut section = Violations::new("mqtt");
            mqtt.check(&mut section);
            v.append(section);
        }
        let commands_clean = doc.is_clean("commands");
        if let (Some(commands), Some(gateway), true) = (&commands, &gateway, commands_clean) {
            let mut section = Violations::new("commands");
            commands.check(gateway.id.as_str(), &mut section);
            v.append(section);
        }
        for (i, node) in nodes.iter().enumerate() {
            let Some(node) = node else { continue };
            let mut own = Violations::new(format!("node[{i}]"));
            node.check(&mut own);
            check_channels(&node.channels, &mut own);
            v.append(own);
        }
        for (i, dev) in i2c.iter().enumerate() {
            let Some(dev) = dev else { continue };
            let mut own = Violations::new(format!("i2c[{i}]"));
            dev.check(&mut own);
            check_channels(&dev.channels, &mut own);
            v.append(own);
        }
        for (i, lift) in lifts.iter_mut().enumerate() {
            let Some(lift) = lift else { continue };
            let mut own = Violations::new(format!("lift[{i}]"));
            if doc.is_clean(&format!("lift[{i}]")) {
                lift.check(&mut own);
            }
            match crate::profile::Profile::resolve(&lift.profile, dir) {
                Ok(map) => lift.register_map = Some(map),
                Err(e) => own.add("profile", e.to_string()),
            }
            v.append(own);
        }
        let buses_clean = (doc.is_clean("lift"), doc.is_clean("i2c"));
        check_devices(&nodes, &i2c, &lifts, buses_clean, &mut v);
        for violation in v.into_vec() {
            doc.rule(violation);
        }

        if doc.has_problems() {
            return Err(invalid(doc.into_problems()));
        }
        match (gateway, mqtt, store, all(nodes), all(lifts), all(i2c)) {
            (Some(gateway), Some(mqtt), Some(store), Some(nodes), Some(lifts), Some(i2c)) => {
                Ok(Config {
                    gateway,
                    mqtt,
                    store,
                    health: health.unwrap_or_default(),
                    nodes,
                    lifts,
                    i2c,
                    commands: commands.unwrap_or_default(),
                })
            }
            // Every section that failed has reported why.
            _ => Err(invalid(doc.into_problems())),
        }
    }

    /// The broker address of `[mqtt] url` (validated at load, so this cannot fail after it).
    pub fn broker(&self) -> Result<BrokerAddress, crate::uplink::config::UrlError> {
        self.mqtt.broker()
    }

    /// The running configuration as JSON, with nothing secret in it (the `config` command's
    /// answer).
    pub fn redacted(&self) -> Value {
        let d = |d: Duration| humantime::format_duration(d).to_string();
        let mqtt = &self.mqtt;
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        json!({
            "gateway": { "id": self.gateway.id.as_str() },
            "mqtt": {
                "url": mqtt.url,
                "topic_root": mqtt.topic_root,
                "keep_alive": d(mqtt.keep_alive),
                "data_qos": mqtt.data_qos,
                "allow_insecure": mqtt.allow_insecure,
                "max_inflight": mqtt.max_inflight,
                // Paths and the user name only: never the password or any key material.
                "ca_file": path(&mqtt.ca_file),
                "cert_file": path(&mqtt.cert_file),
                "key_file": path(&mqtt.key_file),
                "username": mqtt.username,
                "password_file": path(&mqtt.password_file),
            },
            "commands": {
                "rate": self.commands.rate,
                "burst": self.commands.burst,
                "public_key": self.commands.public_key,
                "max_skew": d(self.commands.max_skew),
                "verify_timeout": d(self.commands.verify_timeout),
                "defer_max": d(self.commands.defer_max),
            },
            "store": { "path": self.store.path.display().to_string(), "max_messages": self.store.max_messages },
            "health": { "interval": d(self.health.interval), "node_silent_after": d(self.health.node_silent_after) },
            "node": self.nodes.iter().map(|n| json!({
                "id": n.id.as_str(),
                "port": n.port.display().to_string(),
                "baud": n.baud,
                "window": d(n.window),
                "window_grace": d(n.window_grace),
                "node_id": n.node_id,
                "names": n.names,
                "zero_at": match n.zero_at { ZeroAt::Node => "node", ZeroAt::Gateway => "gateway" },
                "channels": n.channels.keys().collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
    }

    /// The devices as the pipeline takes them: nodes, I2C devices, lifts.
    pub fn devices(&self) -> (&[Node], &[I2cDevice], &[LiftConfig]) {
        (&self.nodes, &self.i2c, &self.lifts)
    }

    /// The `[commands]` settings with the gateway id their signatures are bound to.
    pub fn command_settings(&self) -> (&str, &CommandsConfig) {
        (self.gateway.id.as_str(), &self.commands)
    }

    /// Where each device tares its channels: nodes as configured, I2C devices always at the
    /// gateway (they have no node to do it).
    pub fn zero_at(&self) -> Vec<(String, ZeroAt)> {
        self.nodes
            .iter()
            .map(|n| (n.id.to_string(), n.zero_at))
            .chain(self.i2c.iter().map(|d| (d.id.to_string(), ZeroAt::Gateway)))
            .collect()
    }
}

/// Every element, or `None` if one failed.
fn all<T>(list: Vec<Option<T>>) -> Option<Vec<T>> {
    list.into_iter().collect()
}

/// The pipeline's rules for each channel's filter settings.
fn check_channels(
    channels: &std::collections::BTreeMap<String, ChannelSettings>,
    v: &mut Violations,
) {
    for (name, settings) in channels {
        if let Err(e) = settings.validate() {
            v.add(&format!("channels.{name}.{}", e.key()), e.to_string());
        }
    }
}

/// The rules across the device sections: one id per device across nodes, I2C devices and
/// lifts (the first keeps it, every later one is reported); one node per serial port; no
/// lift on a node's port; and per RS-485 bus, distinct units and one line setting.
fn check_devices(
    nodes: &[Option<Node>],
    i2c: &[Option<I2cDevice>],
    lifts: &[Option<LiftConfig>],
    (lifts_clean, i2c_clean): (bool, bool),
    v: &mut Violations,
) {
    let mut ids = BTreeSet::new();
    let mut taken = |key: String, id: &str, v: &mut Violations| {
        if !ids.insert(id.to_owned()) {
            v.add(&key, format!("{id:?} is used by another device"));
        }
    };
    let mut node_ports = BTreeSet::new();
    for (i, node) in nodes.iter().enumerate() {
        let Some(node) = node else { continue };
        taken(format!("node[{i}].id"), &node.id, v);
        if !node_ports.insert(node.port.as_path()) {
            v.add(
                &format!("node[{i}].port"),
                format!(
                    "{} is used by another node (one node per port)",
                    node.port.display()
                ),
            );
        }
    }
    for (i, dev) in i2c.iter().enumerate() {
        let Some(dev) = dev else { continue };
        taken(format!("i2c[{i}].id"), &dev.id, v);
    }
    for (i, lift) in lifts.iter().enumerate() {
        let Some(lift) = lift else { continue };
        taken(format!("lift[{i}].id"), &lift.id, v);
        if node_ports.contains(lift.port.as_path()) {
            v.add(
                &format!("lift[{i}].port"),
                format!(
                    "{} is a sensor node's port; lifts need their own RS-485 bus",
                    lift.port.display()
                ),
            );
        }
    }
    // Bus rules compare devices by their index and line settings: only when every one
    // was read as written.
    if let Some(all) = lifts.iter().cloned().collect::<Option<Vec<_>>>() {
        if lifts_clean {
            source_config::check_lift_buses(&all, v);
        }
    }
    if let Some(all) = i2c.iter().cloned().collect::<Option<Vec<_>>>() {
        if i2c_clean {
            source_config::check_i2c_buses(&all, v);
        }
    }
}

#[cfg(test)]
mod tests;
