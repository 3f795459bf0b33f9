//! The feed's JSON Schemas, carried inside the binary: `config/schemas/*.schema.json`
//! embedded at build time (the same files the end-to-end tests validate against and the
//! .deb installs), compiled into one validator per payload kind. Nothing is read from disk
//! or fetched: the schemas refer to `common.schema.json` by `$id` only, and that one is put
//! in the registry first.

use jsonschema::{Registry, Validator};
use serde_json::Value;

/// A payload kind of the feed, one schema each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
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

    /// Does its topic end with a device id (`.../data/{dev}`)?
    pub fn has_dev(self) -> bool {
        matches!(self, Kind::Data | Kind::Event | Kind::Capture)
    }

    fn schema_text(self) -> &'static str {
        match self {
            Kind::State => include_str!("../../../../config/schemas/state.schema.json"),
            Kind::Data => include_str!("../../../../config/schemas/data.schema.json"),
            Kind::Event => include_str!("../../../../config/schemas/event.schema.json"),
            Kind::Health => include_str!("../../../../config/schemas/health.schema.json"),
            Kind::Reply => include_str!("../../../../config/schemas/reply.schema.json"),
            Kind::Capture => include_str!("../../../../config/schemas/capture.schema.json"),
            Kind::Cmd => include_str!("../../../../config/schemas/cmd.schema.json"),
        }
    }
}

const COMMON: &str = include_str!("../../../../config/schemas/common.schema.json");

/// An embedded schema that does not compile (a build of a broken `config/schemas/`).
#[derive(Debug, thiserror::Error)]
#[error("embedded schema {file}: {reason}")]
pub struct SchemaError {
    /// The schema's file name.
    pub file: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Why a payload does not pass its schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadInvalid {
    /// No schema was compiled for the kind.
    #[error("no schema for {0}")]
    NoSchema(&'static str),
    /// Every violation, `at "<JSON pointer>": <what>`.
    #[error("{}", .0.join("; "))]
    Violations(Vec<String>),
}

/// One compiled validator per payload kind.
pub struct FeedSchemas {
    validators: Vec<(Kind, Validator)>,
}

impl std::fmt::Debug for FeedSchemas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedSchemas").finish_non_exhaustive()
    }
}

fn parse(file: &str, text: &str) -> Result<Value, SchemaError> {
    serde_json::from_str(text).map_err(|e| SchemaError {
        file: file.to_owned(),
        reason: e.to_string(),
    })
}

impl FeedSchemas {
    /// Compiles the embedded schemas (draft 2020-12, offline).
    pub fn embedded() -> Result<FeedSchemas, SchemaError> {
        let common = parse("common.schema.json", COMMON)?;
        let common_error = |reason: String| SchemaError {
            file: "common.schema.json".to_owned(),
            reason,
        };
        let id = common["$id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| common_error("no $id".to_owned()))?;
        let registry = Registry::new()
            .add(id.as_str(), common)
            .and_then(|r| r.prepare())
            .map_err(|e| common_error(e.to_string()))?;
        let mut validators = Vec::new();
        for kind in Kind::ALL {
            let file = format!("{}.schema.json", kind.name());
            let schema = parse(&file, kind.schema_text())?;
            let validator = jsonschema::options()
                .with_draft(jsonschema::Draft::Draft202012)
                .with_registry(&registry)
                .offline()
                .build(&schema)
                .map_err(|e| SchemaError {
                    file: file.clone(),
                    reason: e.to_string(),
                })?;
            validators.push((kind, validator));
        }
        Ok(FeedSchemas { validators })
    }

    /// Checks `payload` against the schema of `kind`; the error names every violation with
    /// its JSON pointer.
    pub fn validate(&self, kind: Kind, payload: &Value) -> Result<(), PayloadInvalid> {
        let Some((_, validator)) = self.validators.iter().find(|(k, _)| *k == kind) else {
            return Err(PayloadInvalid::NoSchema(kind.name()));
        };
        let errors: Vec<String> = validator
            .iter_errors(payload)
            .map(|e| format!("at {:?}: {e}", e.instance_path().to_string()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(PayloadInvalid::Violations(errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_embedded_schema_compiles_and_judges() {
        let s = FeedSchemas::embedded().expect("schemas");
        let ok = json!({"v":1,"gw":"gw-1","dev":"lift-1","seq":3,"ts":"2026-12-01T11:01:25.440Z",
            "event":"alarm_button","severity":"major","state":"active","since":"2026-12-01T11:01:25.440Z",
            "detail":{"floor":0,"occupied":false}});
        s.validate(Kind::Event, &ok).expect("valid event");
        let mut bad = ok.clone();
        bad["severity"] = json!("apocalyptic");
        assert!(s.validate(Kind::Event, &bad).is_err());
        let mut bad = ok;
        bad["seq"] = json!("3");
        let e = s.validate(Kind::Event, &bad).expect_err("string seq");
        assert!(
            matches!(&e, PayloadInvalid::Violations(v) if v.len() == 1 && v[0].starts_with("at \"/seq\": ")),
            "{e}"
        );
        assert!(e.to_string().contains("/seq"), "{e}");
        s.validate(Kind::State, &json!({"v":1,"gw":"gw-1","state":"offline"}))
            .expect("offline");
    }
}
