//! Signed commands (optional): with `[commands] public_key` set, a command is carried out only
//! if it carries an Ed25519 signature by the platform's key, a fresh timestamp and an id not
//! seen before, so a compromised broker can neither forge nor replay commands.
//!
//! Two signed forms (`docs/mqtt-feed.md`, "Signed commands"):
//! - **v1** (no `sigv`): `sig` covers the text
//!   `towerlink-cmd-v1\n{gw}\n{id}\n{op}\n{dev}\n{ch}\n{ts}` (absent `dev`/`ch` as empty
//!   lines). It covers every field of `ping`, `config`, `identify` and `zero`, and only those
//!   ops accept it.
//! - **v2** (`"sigv": 2`): `sig` covers `towerlink-cmd-v2\n{gw}\n` followed by the canonical
//!   JSON of the command without `sig` ([`canonical_json`]: keys sorted, no whitespace), so
//!   every field is covered (the `toml` of a `config_apply`). Every op
//!   accepts it; the ops added since v1 accept only it.
//!
//! A command signed for one gateway is refused by every other. `ts` (Unix milliseconds)
//! must be within `max_skew` of the gateway's clock; an id is remembered for twice that, so
//! a replay inside the window is refused too.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use ed25519_dalek::{Signature, VerifyingKey};
use serde_json::Value;

use crate::commands::CommandRequest;

/// The ops whose every field the v1 text covers; every other op needs the v2 form.
pub const V1_OPS: [&str; 4] = ["ping", "identify", "zero", "config"];

/// Why a signed command was refused (each message starts with "refused:").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `ts` or no `sig`.
    #[error("refused: unsigned command (this gateway requires ts and sig)")]
    Unsigned,
    /// `sig` is not 128 hex digits.
    #[error("refused: sig must be 128 hex digits")]
    SigFormat,
    /// `sigv` names a form this agent does not know.
    #[error("refused: unknown signature form sigv {0} (known: 2, or no sigv for v1)")]
    UnknownForm(u8),
    /// A v1 signature on an op it does not fully cover.
    #[error("refused: {0} must be signed in the v2 form (\"sigv\": 2), which covers every field")]
    NeedsV2(String),
    /// The signature does not verify.
    #[error("refused: bad signature")]
    BadSignature,
    /// `ts` too far from the gateway's clock.
    #[error("refused: ts is {offset} ms away from the gateway's clock (limit {limit} ms)")]
    Skew {
        /// now - ts, ms.
        offset: i64,
        /// `max_skew`, ms.
        limit: i64,
    },
    /// The id was seen within the window.
    #[error("refused: replayed command id {0:?}")]
    Replayed(String),
    /// The replay cache's lock is poisoned.
    #[error("refused: replay cache unavailable")]
    Cache,
}

/// Why a public key is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not 64 hex digits.
    #[error("must be an Ed25519 public key as 64 hex digits")]
    Format,
    /// Not a point on the curve.
    #[error("is not a valid Ed25519 public key")]
    Invalid,
}

/// Checks signatures, timestamps and replays.
#[derive(Debug)]
pub struct CommandVerifier {
    gw: String,
    key: VerifyingKey,
    max_skew_ms: i64,
    seen: Mutex<HashMap<String, i64>>,
}

/// Parses `n` bytes of hex.
fn hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let bytes = text.as_bytes();
    if bytes.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        out[i] = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
}

/// The text a v1 signature covers.
pub fn signed_text(gw: &str, cmd: &CommandRequest, ts: i64) -> String {
    format!(
        "towerlink-cmd-v1\n{gw}\n{}\n{}\n{}\n{}\n{ts}",
        cmd.id,
        cmd.op,
        cmd.dev.as_deref().unwrap_or(""),
        cmd.ch.as_deref().unwrap_or("")
    )
}

/// The canonical JSON of a command without `sig`: one object of the fields present, keys
/// sorted by their bytes, no whitespace, strings escaped as JSON requires and nothing more
/// (`"` `\` and control characters: `\b \f \n \r \t`, others `\u00xx` lowercase; every other
/// character as its UTF-8, `/` and non-ASCII unescaped), integers in decimal with no sign
/// for positive values, no leading zeros, fraction or exponent. This is what Python's
/// `json.dumps(cmd, sort_keys=True, separators=(",", ":"), ensure_ascii=False)` writes.
pub fn canonical_json(cmd: &CommandRequest) -> String {
    let mut fields: BTreeMap<&str, Value> = BTreeMap::new();
    fields.insert("id", Value::from(cmd.id.as_str()));
    fields.insert("op", Value::from(cmd.op.as_str()));
    let strings = [
        ("dev", &cmd.dev),
        ("ch", &cmd.ch),
        ("toml", &cmd.toml),
        ("expect", &cmd.expect),
        ("since", &cmd.since),
        ("level", &cmd.level),
        ("cert", &cmd.cert),
    ];
    for (key, value) in strings {
        if let Some(v) = value {
            fields.insert(key, Value::from(v.as_str()));
        }
    }
    if let Some(ts) = cmd.ts {
        fields.insert("ts", Value::from(ts));
    }
    if let Some(v) = cmd.sigv {
        fields.insert("sigv", Value::from(v));
    }
    if let Some(v) = cmd.max_lines {
        fields.insert("max_lines", Value::from(v));
    }
    // A map of strings and integers always serialises.
    serde_json::to_string(&fields).unwrap_or_default()
}

/// The bytes a v2 signature covers.
pub fn signed_text_v2(gw: &str, cmd: &CommandRequest) -> String {
    format!("towerlink-cmd-v2\n{gw}\n{}", canonical_json(cmd))
}

impl CommandVerifier {
    /// A verifier for gateway `gw` with the platform's public key (64 hex digits).
    pub fn new(
        gw: &str,
        public_key_hex: &str,
        max_skew_ms: i64,
    ) -> Result<CommandVerifier, KeyError> {
        let bytes = hex::<32>(public_key_hex.trim()).ok_or(KeyError::Format)?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::Invalid)?;
        Ok(CommandVerifier {
            gw: gw.to_owned(),
            key,
            max_skew_ms,
            seen: Mutex::new(HashMap::new()),
        })
    }

    /// Accepts `cmd` received at `now_ms`, or says why not.
    pub fn verify(&self, cmd: &CommandRequest, now_ms: i64) -> Result<(), AuthError> {
        let (Some(ts), Some(sig)) = (cmd.ts, cmd.sig.as_deref()) else {
            return Err(AuthError::Unsigned);
        };
        let sig = hex::<64>(sig).ok_or(AuthError::SigFormat)?;
        let text = match cmd.sigv {
            None if V1_OPS.contains(&cmd.op.as_str()) => signed_text(&self.gw, cmd, ts),
            None => return Err(AuthError::NeedsV2(cmd.op.clone())),
            Some(2) => signed_text_v2(&self.gw, cmd),
            Some(other) => return Err(AuthError::UnknownForm(other)),
        };
        self.key
            .verify_strict(text.as_bytes(), &Signature::from_bytes(&sig))
            .map_err(|_| AuthError::BadSignature)?;
        if (now_ms - ts).abs() > self.max_skew_ms {
            return Err(AuthError::Skew {
                offset: now_ms - ts,
                limit: self.max_skew_ms,
            });
        }
        let mut seen = self.seen.lock().map_err(|_| AuthError::Cache)?;
        // Ids older than the window can no longer pass the ts check: forget them.
        let horizon = 2 * self.max_skew_ms;
        seen.retain(|_, &mut at| now_ms - at <= horizon);
        if seen.contains_key(&cmd.id) {
            return Err(AuthError::Replayed(cmd.id.clone()));
        }
        seen.insert(cmd.id.clone(), now_ms);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn hex_of(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn signed(key: &SigningKey, gw: &str, id: &str, ts: i64) -> CommandRequest {
        let mut cmd = CommandRequest {
            id: id.into(),
            op: "ping".into(),
            dev: None,
            ch: None,
            ts: Some(ts),
            sig: None,
            ..CommandRequest::default()
        };
        cmd.sig = Some(hex_of(
            &key.sign(signed_text(gw, &cmd, ts).as_bytes()).to_bytes(),
        ));
        cmd
    }

    #[test]
    fn signatures_timestamps_and_replays() {
        let platform = SigningKey::from_bytes(&[7; 32]);
        let impostor = SigningKey::from_bytes(&[8; 32]);
        let v = CommandVerifier::new("gw-1", &hex_of(platform.verifying_key().as_bytes()), 60_000)
            .expect("key");
        let now = 1_800_000_000_000;
        assert_eq!(
            v.verify(&signed(&platform, "gw-1", "a", now - 1000), now),
            Ok(())
        );
        let e = |r: Result<(), AuthError>| r.expect_err("refused").to_string();
        assert!(e(v.verify(&signed(&platform, "gw-1", "a", now - 1000), now)).contains("replayed"));
        assert!(e(v.verify(&signed(&impostor, "gw-1", "b", now), now)).contains("bad signature"));
        assert!(e(v.verify(&signed(&platform, "gw-2", "c", now), now)).contains("bad signature"));
        assert!(
            e(v.verify(&signed(&platform, "gw-1", "d", now - 61_000), now)).contains("ms away")
        );
        let mut tampered = signed(&platform, "gw-1", "f", now);
        tampered.op = "zero".into();
        assert!(e(v.verify(&tampered, now)).contains("bad signature"));
        let mut unsigned = signed(&platform, "gw-1", "g", now);
        unsigned.sig = None;
        assert!(e(v.verify(&unsigned, now)).contains("unsigned"));
        // Long after, "a" is forgotten, but its old ts no longer passes anyway.
        let later = now + 10 * 60_000;
        assert!(
            e(v.verify(&signed(&platform, "gw-1", "a", now - 1000), later)).contains("ms away")
        );
        assert_eq!(
            v.verify(&signed(&platform, "gw-1", "a", later), later),
            Ok(())
        );
    }

    /// The published format, pinned: the key is Ed25519 with the seed 32 x 0x07 and the
    /// signatures were made outside this crate (`openssl pkeyutl -sign -rawin` over the exact
    /// text), so a change of the signed text or of its encoding fails here.
    #[test]
    fn the_published_signing_format_with_a_fixed_key_and_known_signatures() {
        const PUBLIC_KEY: &str = "ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c";
        let ts = 1_795_842_250_000;
        let zero = CommandRequest {
            id: "cmd-42".into(),
            op: "zero".into(),
            dev: Some("panel-n12".into()),
            ch: Some("tilt_x".into()),
            ts: Some(ts),
            sig: Some(
                "5e7bd0326dc1aa4cce0ae743efa9774da7868512998a073e7a312fe515bf50e2\
                 4f77f9e2f8b8ffb509f749cd4d501f85c5e428a0db4c13c280814dbca28d3806"
                    .into(),
            ),
            ..CommandRequest::default()
        };
        assert_eq!(
            signed_text("sh-ja-0001", &zero, ts),
            "towerlink-cmd-v1\nsh-ja-0001\ncmd-42\nzero\npanel-n12\ntilt_x\n1795842250000"
        );
        let ping = CommandRequest {
            id: "cmd-43".into(),
            op: "ping".into(),
            dev: None,
            ch: None,
            ts: Some(ts),
            sig: Some(
                "3efc92e3d9ceb75fff0878eb5496dc40d65bddcfe07e1ae4be5a23bf77bce31c\
                 8b8a43bf80f191287f8b0c9809d8f33ea06e160a0ad008ce102c6e40c0ec0106"
                    .into(),
            ),
            ..CommandRequest::default()
        };
        assert_eq!(
            signed_text("sh-ja-0001", &ping, ts),
            "towerlink-cmd-v1\nsh-ja-0001\ncmd-43\nping\n\n\n1795842250000"
        );
        assert_eq!(
            SigningKey::from_bytes(&[7; 32]).verifying_key().as_bytes(),
            &hex::<32>(PUBLIC_KEY).expect("hex")
        );
        let v = CommandVerifier::new("sh-ja-0001", PUBLIC_KEY, 60_000).expect("key");
        assert_eq!(v.verify(&zero, ts + 500), Ok(()));
        assert_eq!(v.verify(&ping, ts - 500), Ok(()));
        // The same signature for another gateway is refused.
        let other = CommandVerifier::new("sh-ja-0002", PUBLIC_KEY, 60_000).expect("key");
        assert!(other.verify(&zero, ts).is_err());
    }

    /// The v2 form, pinned: the signature was made by Python's `cryptography` over
    /// `towerlink-cmd-v2\n{gw}\n` + `json.dumps(cmd, sort_keys=True, separators=(",", ":"),
    /// ensure_ascii=False)`, with a `toml` holding quotes, a backslash, a tab, a control
    /// character, `/` and non-ASCII text, so any drift of the canonical encoding fails here.
    #[test]
    fn the_v2_form_covers_every_field_and_matches_an_independent_signer() {
        const PUBLIC_KEY: &str = "ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c";
        let ts = 1_795_842_250_000;
        let apply = CommandRequest {
            id: "cmd-44".into(),
            op: "config_apply".into(),
            toml: Some("[gateway]\nid = \"sh-ja-0001\"\n# caf\u{e9} \"q\" \\ \t\u{1}/\n".into()),
            expect: Some("ab".repeat(32)),
            ts: Some(ts),
            sigv: Some(2),
            sig: Some(
                "cdf4dc3398a612864611ae1c6ba5af27b5261c54bf8ce36cfd27f6184d94a513\
                 0710de6a6e8dbd104fdcdf370bc45d081f3a28a5094657e71912e2d2a3f16802"
                    .into(),
            ),
            ..CommandRequest::default()
        };
        assert_eq!(
            canonical_json(&apply),
            r#"{"expect":"abababababababababababababababababababababababababababababababab","id":"cmd-44","op":"config_apply","sigv":2,"toml":"[gateway]\nid = \"sh-ja-0001\"\n# café \"q\" \\ \t\u0001/\n","ts":1795842250000}"#
        );
        let v = CommandVerifier::new("sh-ja-0001", PUBLIC_KEY, 60_000).expect("key");
        assert_eq!(v.verify(&apply, ts), Ok(()));
        // Every field is covered: a changed toml or expect breaks it.
        let v = CommandVerifier::new("sh-ja-0001", PUBLIC_KEY, 60_000).expect("key");
        let mut tampered = apply.clone();
        tampered.toml = Some("[gateway]\nid = \"sh-ja-0001\"\n".into());
        assert_eq!(v.verify(&tampered, ts), Err(AuthError::BadSignature));
        let mut tampered = apply.clone();
        tampered.expect = Some("cd".repeat(32));
        assert_eq!(v.verify(&tampered, ts), Err(AuthError::BadSignature));
        // A new op signed in the v1 form is refused, whatever the signature.
        let mut v1 = apply.clone();
        v1.sigv = None;
        assert!(matches!(v.verify(&v1, ts), Err(AuthError::NeedsV2(_))));
        let mut v3 = apply;
        v3.sigv = Some(3);
        assert_eq!(v.verify(&v3, ts), Err(AuthError::UnknownForm(3)));
    }

    #[test]
    fn old_ops_take_the_v2_form_too() {
        use ed25519_dalek::{Signer, SigningKey};
        let platform = SigningKey::from_bytes(&[7; 32]);
        let v = CommandVerifier::new("gw-1", &hex_of(platform.verifying_key().as_bytes()), 60_000)
            .expect("key");
        let mut cmd = CommandRequest {
            id: "z".into(),
            op: "zero".into(),
            dev: Some("p1".into()),
            ch: Some("tilt_x".into()),
            ts: Some(1000),
            sigv: Some(2),
            ..CommandRequest::default()
        };
        cmd.sig = Some(hex_of(
            &platform
                .sign(signed_text_v2("gw-1", &cmd).as_bytes())
                .to_bytes(),
        ));
        assert_eq!(v.verify(&cmd, 1000), Ok(()));
    }

    #[test]
    fn bad_keys_are_refused() {
        for bad in ["", "zz", &"0".repeat(63), &"g".repeat(64)] {
            assert!(CommandVerifier::new("gw", bad, 1000).is_err(), "{bad}");
        }
    }
}
