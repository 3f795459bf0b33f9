//! Signed commands (optional): with `[commands] public_key` set, a command is carried out only
//! if it carries an Ed25519 signature by the platform's key, a fresh timestamp and an id not
//! seen before, so a compromised broker can neither forge nor replay commands.
//!
//! The signature (`sig`, 128 hex digits) covers the text
//! `towerlink-cmd-v1\n{gw}\n{id}\n{op}\n{dev}\n{ch}\n{ts}` (absent `dev`/`ch` as empty lines),
//! so a command signed for one gateway is refused by every other. `ts` (Unix milliseconds)
//! must be within `max_skew` of the gateway's clock; an id is remembered for twice that, so
//! a replay inside the window is refused too.

use std::collections::HashMap;
use std::sync::Mutex;

use ed25519_dalek::{Signature, VerifyingKey};

use crate::commands::CommandRequest;

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

/// The text a command's signature covers.
pub fn signed_text(gw: &str, cmd: &CommandRequest, ts: i64) -> String {
    format!(
        "towerlink-cmd-v1\n{gw}\n{}\n{}\n{}\n{}\n{ts}",
        cmd.id,
        cmd.op,
        cmd.dev.as_deref().unwrap_or(""),
        cmd.ch.as_deref().unwrap_or("")
    )
}

impl CommandVerifier {
    /// A verifier for gateway `gw` with the platform's public key (64 hex digits).
    pub fn new(
        gw: &str,
        public_key_hex: &str,
        max_skew_ms: i64,
    ) -> Result<CommandVerifier, String> {
        let bytes = hex::<32>(public_key_hex.trim())
            .ok_or("must be an Ed25519 public key as 64 hex digits")?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| "is not a valid Ed25519 public key".to_owned())?;
        Ok(CommandVerifier {
            gw: gw.to_owned(),
            key,
            max_skew_ms,
            seen: Mutex::new(HashMap::new()),
        })
    }

    /// Accepts `cmd` received at `now_ms`, or says why not.
    pub fn verify(&self, cmd: &CommandRequest, now_ms: i64) -> Result<(), String> {
        let (Some(ts), Some(sig)) = (cmd.ts, cmd.sig.as_deref()) else {
            return Err("refused: unsigned command (this gateway requires ts and sig)".into());
        };
        let sig = hex::<64>(sig).ok_or("refused: sig must be 128 hex digits")?;
        self.key
            .verify_strict(
                signed_text(&self.gw, cmd, ts).as_bytes(),
                &Signature::from_bytes(&sig),
            )
            .map_err(|_| "refused: bad signature".to_owned())?;
        if (now_ms - ts).abs() > self.max_skew_ms {
            return Err(format!(
                "refused: ts is {} ms away from the gateway's clock (limit {} ms)",
                now_ms - ts,
                self.max_skew_ms
            ));
        }
        let mut seen = self
            .seen
            .lock()
            .map_err(|_| "refused: replay cache unavailable".to_owned())?;
        // Ids older than the window can no longer pass the ts check: forget them.
        let horizon = 2 * self.max_skew_ms;
        seen.retain(|_, &mut at| now_ms - at <= horizon);
        if seen.contains_key(&cmd.id) {
            return Err(format!("refused: replayed command id {:?}", cmd.id));
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
        let e = |r: Result<(), String>| r.expect_err("refused");
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

    #[test]
    fn bad_keys_are_refused() {
        for bad in ["", "zz", &"0".repeat(63), &"g".repeat(64)] {
            assert!(CommandVerifier::new("gw", bad, 1000).is_err(), "{bad}");
        }
    }
}
