//! Reading a command: the payload size limits, the ops this agent knows, [`CommandRequest`]
//! (parsed strictly, unknown fields refused), the fields each op takes, and the ops refused
//! by name because they would write to a device. Carrying a command out is the parent's.

use serde::Deserialize;
use serde_json::Value;

use super::CommandError;

/// Largest command payload accepted (every op but `config_apply`).
pub const MAX_COMMAND_BYTES: usize = 4096;
/// Largest `config_apply` payload accepted (the configuration travels in it).
pub const MAX_CONFIG_APPLY_BYTES: usize = 65_536;
/// Largest `cert_install` payload accepted (a PEM certificate chain travels in it).
pub const MAX_CERT_INSTALL_BYTES: usize = 16_384;
/// The ops this agent knows.
pub const OPS: [&str; 9] = [
    "ping",
    "identify",
    "zero",
    "config",
    "config_get",
    "config_apply",
    "logs",
    "cert_install",
    "resend",
];

/// A parsed command.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandRequest {
    /// Correlation id, echoed in the reply.
    pub id: String,
    /// Operation.
    pub op: String,
    /// Target device, for device ops.
    #[serde(default)]
    pub dev: Option<String>,
    /// Target channel (feed name), for channel ops.
    #[serde(default)]
    pub ch: Option<String>,
    /// `config_apply`: the new configuration file's text.
    #[serde(default)]
    pub toml: Option<String>,
    /// `config_apply`: the SHA-256 (hex) of the running configuration it replaces.
    #[serde(default)]
    pub expect: Option<String>,
    /// `logs`: how far back, e.g. `"10m"` (default 10 min).
    #[serde(default)]
    pub since: Option<String>,
    /// `logs`: the least severe level wanted: `error`, `warn`, `info` (default), `debug`.
    #[serde(default)]
    pub level: Option<String>,
    /// `logs`: at most this many lines, the newest (1 to 1000, default 200).
    #[serde(default)]
    pub max_lines: Option<u32>,
    /// `cert_install`: the PEM certificate (chain, the gateway's first) the platform's CA
    /// issued for the gateway's pending key.
    #[serde(default)]
    pub cert: Option<String>,
    /// `resend`: the first `seq` of the range.
    #[serde(default)]
    pub from: Option<u64>,
    /// `resend`: the last `seq` of the range (inclusive).
    #[serde(default)]
    pub to: Option<u64>,
    /// Unix milliseconds when the platform signed it (signed commands only).
    #[serde(default)]
    pub ts: Option<i64>,
    /// Signed form: absent for v1, 2 for the form that covers every field.
    #[serde(default)]
    pub sigv: Option<u8>,
    /// Ed25519 signature, hex (signed commands only; see [`crate::command_auth`]).
    #[serde(default)]
    pub sig: Option<String>,
}

/// Why a command payload was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Over the op's size limit.
    #[error("command too large: {size} bytes (limit {limit})")]
    TooLarge {
        /// Payload bytes.
        size: usize,
        /// The limit that applies.
        limit: usize,
    },
    /// Empty or over-long id.
    #[error("id must be 1..=128 characters")]
    BadId,
    /// Not JSON, an unknown field, a wrong type.
    #[error("malformed command: {0}")]
    Malformed(String),
}

/// A command whose fields do not fit its op.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// A required field is missing.
    #[error("{op} needs {fields}")]
    Missing {
        /// The op.
        op: String,
        /// What it needs, "dev and ch".
        fields: String,
    },
    /// A field the op does not take.
    #[error("{op} takes no {field}")]
    Extra {
        /// The op.
        op: String,
        /// The field.
        field: &'static str,
    },
}

/// The command's id when one can be read from a payload that did not parse.
pub(super) fn salvage_id(payload: &[u8]) -> String {
    serde_json::from_slice::<Value>(payload)
        .ok()
        .and_then(|v| {
            v.get("id")
                .and_then(Value::as_str)
                .map(|s| s.chars().take(128).collect())
        })
        .unwrap_or_default()
}

/// The largest payload of `op`.
pub(super) fn size_limit(op: Option<&str>) -> usize {
    match op {
        Some("config_apply") => MAX_CONFIG_APPLY_BYTES,
        Some("cert_install") => MAX_CERT_INSTALL_BYTES,
        _ => MAX_COMMAND_BYTES,
    }
}

/// Parses a command payload; on failure returns the id (if one could be read) and the error.
/// `config_apply` may be up to [`MAX_CONFIG_APPLY_BYTES`], `cert_install` up to
/// [`MAX_CERT_INSTALL_BYTES`], every other op [`MAX_COMMAND_BYTES`].
pub fn parse(payload: &[u8]) -> Result<CommandRequest, (String, ParseError)> {
    if payload.len() > MAX_CONFIG_APPLY_BYTES {
        let limit = MAX_CONFIG_APPLY_BYTES;
        let size = payload.len();
        return Err((String::new(), ParseError::TooLarge { size, limit }));
    }
    match serde_json::from_slice::<CommandRequest>(payload) {
        Ok(cmd) if cmd.id.is_empty() || cmd.id.len() > 128 => {
            Err((String::new(), ParseError::BadId))
        }
        Ok(cmd) if payload.len() > size_limit(Some(&cmd.op)) => {
            let (size, limit) = (payload.len(), size_limit(Some(&cmd.op)));
            Err((cmd.id, ParseError::TooLarge { size, limit }))
        }
        Ok(cmd) => Ok(cmd),
        Err(e) => {
            // Echo the id when the rest is wrong, so the platform can match the refusal.
            let value = serde_json::from_slice::<Value>(payload).ok();
            let op = value
                .as_ref()
                .and_then(|v| v.get("op"))
                .and_then(Value::as_str);
            let id = salvage_id(payload);
            if payload.len() > size_limit(op) {
                let (size, limit) = (payload.len(), size_limit(op));
                Err((id, ParseError::TooLarge { size, limit }))
            } else {
                Err((id, ParseError::Malformed(e.to_string())))
            }
        }
    }
}

/// The fields each op takes: (required, optional). `id`, `op`, `ts`, `sigv`, `sig` always.
pub(super) fn op_fields(op: &str) -> Option<(&'static [&'static str], &'static [&'static str])> {
    Some(match op {
        "ping" | "config" | "config_get" => (&[], &[]),
        "identify" => (&["dev"], &[]),
        "zero" => (&["dev", "ch"], &[]),
        "config_apply" => (&["toml", "expect"], &[]),
        "logs" => (&[], &["since", "level", "max_lines"]),
        "cert_install" => (&["cert"], &[]),
        "resend" => (&["from", "to"], &[]),
        _ => return None,
    })
}

/// Checks that `cmd` carries the fields its op needs and no other.
pub(super) fn check_fields(cmd: &CommandRequest) -> Result<(), CommandError> {
    let Some((required, optional)) = op_fields(&cmd.op) else {
        return Ok(());
    };
    let present = [
        ("dev", cmd.dev.is_some()),
        ("ch", cmd.ch.is_some()),
        ("toml", cmd.toml.is_some()),
        ("expect", cmd.expect.is_some()),
        ("since", cmd.since.is_some()),
        ("level", cmd.level.is_some()),
        ("max_lines", cmd.max_lines.is_some()),
        ("cert", cmd.cert.is_some()),
        ("from", cmd.from.is_some()),
        ("to", cmd.to.is_some()),
    ];
    if required
        .iter()
        .any(|r| !present.iter().any(|(f, p)| f == r && *p))
    {
        return Err(TargetError::Missing {
            op: cmd.op.clone(),
            fields: required.join(" and "),
        }
        .into());
    }
    if let Some((field, _)) = present
        .iter()
        .find(|(f, p)| *p && !required.contains(f) && !optional.contains(f))
    {
        return Err(TargetError::Extra {
            op: cmd.op.clone(),
            field,
        }
        .into());
    }
    Ok(())
}

/// Ops that would write to a device register; refused by name so the refusal is explicit.
pub(super) fn is_write_op(op: &str) -> bool {
    let op = op.to_ascii_lowercase();
    ["write", "set_register", "modbus", "coil"]
        .iter()
        .any(|w| op.contains(w))
}
