//! The commands' config section, `[commands]`: how many platform commands the agent takes
//! (a token bucket), optionally the platform key that must sign them, and how a
//! `config_apply` is verified and deferred.

use std::time::Duration;

use serde::Deserialize;

use crate::values::{self, Violations};

/// `[commands]`: how many platform commands the agent takes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandsConfig {
    /// Commands per second accepted on average (token bucket refill rate), at least 1.
    #[serde(
        default = "default_command_rate",
        deserialize_with = "values::de_int_in::<_, u32, 1, { u32::MAX as i64 }>"
    )]
    pub rate: u32,
    /// Commands accepted at once after a quiet period (token bucket size), at least 1.
    #[serde(
        default = "default_command_burst",
        deserialize_with = "values::de_int_in::<_, u32, 1, { u32::MAX as i64 }>"
    )]
    pub burst: u32,
    /// The platform's Ed25519 public key (64 hex digits): when set, only commands it signed
    /// are carried out (see `command_auth`).
    #[serde(default)]
    pub public_key: Option<String>,
    /// How far a signed command's `ts` may be from the gateway's clock.
    #[serde(default = "default_max_skew", deserialize_with = "values::de_duration")]
    pub max_skew: Duration,
    /// `config_apply`: how long the new configuration has to bring the MQTT session up and
    /// open every configured source before it is rolled back.
    #[serde(
        default = "default_verify_timeout",
        deserialize_with = "values::de_duration"
    )]
    pub verify_timeout: Duration,
    /// `config_apply`: how long an apply waits while a critical event is active before it
    /// is refused (a trapped passenger must not lose its gateway mid-rescue).
    #[serde(
        default = "default_defer_max",
        deserialize_with = "values::de_duration"
    )]
    pub defer_max: Duration,
}

fn default_verify_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_defer_max() -> Duration {
    Duration::from_secs(600)
}

fn default_max_skew() -> Duration {
    Duration::from_secs(60)
}
fn default_command_rate() -> u32 {
    10
}
fn default_command_burst() -> u32 {
    20
}

impl Default for CommandsConfig {
    fn default() -> Self {
        CommandsConfig {
            rate: default_command_rate(),
            burst: default_command_burst(),
            public_key: None,
            max_skew: default_max_skew(),
            verify_timeout: default_verify_timeout(),
            defer_max: default_defer_max(),
        }
    }
}

impl CommandsConfig {
    /// The section's rules: a `public_key` is a valid Ed25519 key (for gateway `gw`).
    pub fn check(&self, gw: &str, v: &mut Violations) {
        if let Some(key) = &self.public_key {
            if let Err(e) = crate::command_auth::CommandVerifier::new(gw, key, 0) {
                v.add("public_key", e.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_reads_alone_and_checks_its_key() {
        let c: CommandsConfig = toml::from_str("rate = 2").expect("section");
        assert_eq!((c.rate, c.burst), (2, 20));
        let e = toml::from_str::<CommandsConfig>("burst = 0").expect_err("burst 0");
        assert!(e.to_string().contains("at least 1"), "{e}");
        let c: CommandsConfig = toml::from_str("public_key = \"abc\"").expect("section");
        let mut v = Violations::new("commands");
        c.check("gw", &mut v);
        let found = v.into_vec();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].key, "commands.public_key");
    }
}
