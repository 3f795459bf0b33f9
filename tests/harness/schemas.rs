//! The feed's JSON Schemas (`config/schemas/`, draft 2020-12) as validators, and the check
//! every harness subscriber applies to every message it receives.
//!
//! The schemas refer to each other by `$id` (`common.schema.json#/$defs/...`); they are loaded
//! from the repository into one registry, offline (no HTTP or file retrieval), so what the
//! tests check is exactly what ships in the package. Pure apart from [`FeedSchemas::load`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use jsonschema::{Registry, Validator};
use serde_json::Value;

/// The payload kinds of the feed, one schema each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `{root}/{gw}/state`.
    State,
    /// `{root}/{gw}/data/{dev}`: a telemetry window or a lift status.
    Data,
    /// `{root}/{gw}/event/{dev}`.
    Event,
    /// `{root}/{gw}/health`.
    Health,
    /// `{root}/{gw}/reply`.
    Reply,
    /// `{root}/{gw}/capture/{dev}` (v1.1).
    Capture,
    /// `{root}/{gw}/cmd`.
    Cmd,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 7] = [
        Kind::State,
        Kind::Data,
        Kind::Event,
        Kind::Health,
        Kind::Reply,
        Kind::Capture,
        Kind::Cmd,
    ];

    /// The kind's name, as in its topic and its schema's file name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::State => "state",
            Kind::Data => "data",
            Kind::Event => "event",
            Kind::Health => "health",
            Kind::Reply => "reply",
            Kind::Capture => "capture",
            Kind::Cmd => "cmd",
        }
    }

    /// The kind named `name`.
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Does the topic end with a device id (`.../data/{dev}`)?
    fn has_dev(self) -> bool {
        matches!(self, Kind::Data | Kind::Event | Kind::Capture)
    }
}

/// Where a feed topic points: its kind, gateway and device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedTopic<'a> {
    /// Payload kind.
    pub kind: Kind,
    /// `{gw}`.
    pub gw: &'a str,
    /// `{dev}`, for data, event and capture topics.
    pub dev: Option<&'a str>,
}

/// Parses `{root}/{gw}/{kind}` or `{root}/{gw}/{kind}/{dev}` (the root may have any number
/// of levels); `None` when the topic is neither.
pub fn parse_topic(topic: &str) -> Option<FeedTopic<'_>> {
    let parts: Vec<&str> = topic.split('/').collect();
    let n = parts.len();
    if n >= 4 {
        if let Some(kind) = Kind::from_name(parts[n - 2]).filter(|k| k.has_dev()) {
            return Some(FeedTopic {
                kind,
                gw: parts[n - 3],
                dev: Some(parts[n - 1]),
            });
        }
    }
    if n >= 3 {
        if let Some(kind) = Kind::from_name(parts[n - 1]).filter(|k| !k.has_dev()) {
            return Some(FeedTopic {
                kind,
                gw: parts[n - 2],
                dev: None,
            });
        }
    }
    None
}

/// Why the schemas could not be loaded.
#[derive(Debug)]
pub struct LoadError(String);

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LoadError {}

/// One validator per payload kind.
pub struct FeedSchemas {
    validators: Vec<(Kind, Validator)>,
}

impl fmt::Debug for FeedSchemas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FeedSchemas").finish_non_exhaustive()
    }
}

/// The repository's `config/schemas/`.
pub fn schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/schemas")
}

fn read_json(path: &Path) -> Result<Value, LoadError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| LoadError(format!("reading {}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| LoadError(format!("{}: {e}", path.display())))
}

fn schema_id(path: &Path, schema: &Value) -> Result<String, LoadError> {
    schema["$id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| LoadError(format!("{} has no $id", path.display())))
}

impl FeedSchemas {
    /// Loads `common.schema.json` and the seven payload schemas from `dir`.
    pub fn load(dir: &Path) -> Result<FeedSchemas, LoadError> {
        let common_path = dir.join("common.schema.json");
        let common = read_json(&common_path)?;
        let common_id = schema_id(&common_path, &common)?;
        let registry = Registry::new()
            .add(common_id.as_str(), common)
            .and_then(|r| r.prepare())
            .map_err(|e| LoadError(format!("{}: {e}", common_path.display())))?;
        let mut validators = Vec::new();
        for kind in Kind::ALL {
            let path = dir.join(format!("{}.schema.json", kind.name()));
            let schema = read_json(&path)?;
            schema_id(&path, &schema)?;
            if schema["$schema"] != "https://json-schema.org/draft/2020-12/schema" {
                return Err(LoadError(format!(
                    "{} is not a draft 2020-12 schema",
                    path.display()
                )));
            }
            let validator = jsonschema::options()
                .with_draft(jsonschema::Draft::Draft202012)
                .with_registry(&registry)
                .offline()
                .build(&schema)
                .map_err(|e| LoadError(format!("{}: {e}", path.display())))?;
            validators.push((kind, validator));
        }
        Ok(FeedSchemas { validators })
    }

    /// The repository's schemas, loaded once per test process.
    pub fn repository() -> &'static FeedSchemas {
        static SCHEMAS: OnceLock<FeedSchemas> = OnceLock::new();
        SCHEMAS.get_or_init(|| match FeedSchemas::load(&schema_dir()) {
            Ok(s) => s,
            // A broken schema file must stop every test, loudly.
            Err(e) => panic!("the feed schemas in config/schemas/ do not load: {e}"),
        })
    }

    /// Checks `payload` against the schema of `kind`; the error lists every violation with
    /// its JSON pointer.
    pub fn validate(&self, kind: Kind, payload: &Value) -> Result<(), String> {
        let Some((_, validator)) = self.validators.iter().find(|(k, _)| *k == kind) else {
            return Err(format!("no schema for {}", kind.name()));
        };
        let errors: Vec<String> = validator
            .iter_errors(payload)
            .map(|e| format!("at {:?}: {e}", e.instance_path().to_string()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Checks one received message: its topic is a feed topic, its payload JSON that passes
    /// the topic kind's schema, and the payload's `gw` (and `dev`) are those of the topic.
    /// An empty payload (a retained message being cleared) passes.
    pub fn check_message(&self, topic: &str, payload: &[u8]) -> Result<(), String> {
        if payload.is_empty() {
            return Ok(());
        }
        let feed = parse_topic(topic).ok_or_else(|| "not a feed topic".to_owned())?;
        let json: Value =
            serde_json::from_slice(payload).map_err(|e| format!("payload is not JSON: {e}"))?;
        self.validate(feed.kind, &json)?;
        if feed.kind != Kind::Cmd {
            if json["gw"] != feed.gw {
                return Err(format!(
                    "payload gw {} is not the topic's {:?}",
                    json["gw"], feed.gw
                ));
            }
            if let Some(dev) = feed.dev {
                if json["dev"] != dev {
                    return Err(format!(
                        "payload dev {} is not the topic's {dev:?}",
                        json["dev"]
                    ));
                }
            }
        }
        Ok(())
    }
}
