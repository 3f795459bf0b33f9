//! The uplink's config section, `[mqtt]`: the broker URL (parsed by [`BrokerAddress`]), the
//! topic root, session settings (protocol, keep-alive, in-flight window, largest packet),
//! the TLS files and the credentials.
//!
//! Values are checked while they are read; [`MqttConfig::check`] adds the rules between keys
//! (plain MQTT only to loopback unless `allow_insecure`, the TLS files only with `mqtts://`).

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::secrets::{PasswordFileError, Secret};
use crate::values::{self, Violations};

/// `[mqtt]`: the uplink to the city platform.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    /// `{root}` of every topic.
    #[serde(default = "default_topic_root")]
    pub topic_root: String,
    /// MQTT keep-alive (5 s to 65535 s, MQTT's largest).
    #[serde(
        default = "default_keep_alive",
        deserialize_with = "values::de_duration_in::<_, 5_000, 65_535_000>"
    )]
    pub keep_alive: Duration,
    /// QoS of telemetry (`data`): 1 (default) or 0.
    #[serde(
        default = "default_data_qos",
        deserialize_with = "values::de_int_in::<_, u8, 0, 1>"
    )]
    pub data_qos: u8,
    /// Allow plain `mqtt://` to a host that is not loopback.
    #[serde(default)]
    pub allow_insecure: bool,
    /// Most QoS 1 messages in flight (sent, not yet acknowledged).
    #[serde(
        default = "default_inflight",
        deserialize_with = "values::de_int_in::<_, u16, 1, 65_535>"
    )]
    pub max_inflight: u16,
    /// MQTT protocol version: `"5"` (default) or `"3.1.1"` (brokers without MQTT 5).
    #[serde(default)]
    pub protocol: MqttProtocol,
    /// The largest MQTT packet the client takes in (bytes, or `"256KiB"`); with MQTT 5 it is
    /// announced in CONNECT (Maximum Packet Size) so the broker drops bigger messages for us.
    /// Between 16KiB (room for the largest data window and reply) and MQTT's own ceiling.
    #[serde(
        default = "default_max_packet",
        deserialize_with = "values::de_size_in::<_, 16_384, 268_435_460>"
    )]
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
    /// Telemetry windows go out together, one publish on `{root}/{gw}/batch` every this
    /// long (default 60 s, at most 1 h); `"0s"` sends each window alone on `data/{dev}`.
    #[serde(
        default = "default_batch",
        deserialize_with = "values::de_duration_in::<_, 0, 3_600_000>"
    )]
    pub batch: Duration,
    /// Refused: a password never goes into the configuration (see `password_file`).
    #[serde(default)]
    pub password: Option<RefusedSecret>,
}

/// Bounds of `[mqtt] max_packet`: room for the largest data window and reply, and MQTT's
/// own ceiling (a remaining length of 268,435,455 bytes plus the fixed header).
pub const MAX_PACKET_RANGE: std::ops::RangeInclusive<u64> = 16 * 1024..=268_435_460;

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

impl fmt::Display for MqttProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MqttProtocol::V5 => "5",
            MqttProtocol::V311 => "3.1.1",
        })
    }
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
fn default_batch() -> Duration {
    Duration::from_secs(60)
}
fn default_max_packet() -> u64 {
    256 * 1024
}

impl MqttConfig {
    /// The broker address of `url` (checked at load, so this fails only on an unchecked
    /// section).
    pub fn broker(&self) -> Result<BrokerAddress, UrlError> {
        BrokerAddress::parse(&self.url)
    }

    /// The section's rules between its keys; keys are relative to `[mqtt]`.
    pub fn check(&self, v: &mut Violations) {
        match BrokerAddress::parse(&self.url) {
            Err(e) => v.add("url", e.to_string()),
            Ok(broker) => {
                if !broker.tls && !broker.is_loopback() && !self.allow_insecure {
                    v.add(
                        "url",
                        format!(
                            "plain MQTT to {} would send data unencrypted; use mqtts:// or set allow_insecure = true",
                            broker.host
                        ),
                    );
                }
                if let Err(rule) = super::tls::validate_config(self, &broker) {
                    let key = rule.key();
                    v.add(key.strip_prefix("mqtt.").unwrap_or(key), rule.to_string());
                }
            }
        }
        let root = &self.topic_root;
        if root.is_empty()
            || root.starts_with('/')
            || root.ends_with('/')
            || root.contains(['+', '#', '\0'])
            || root.split('/').any(str::is_empty)
        {
            v.add(
                "topic_root",
                format!("{root:?} must be non-empty topic levels separated by '/', without '+', '#' or empty levels"),
            );
        }
    }

    /// Every secret file of `[mqtt]` with too open permissions (`key_file`, `password_file`).
    pub fn secret_file_problems(&self) -> Vec<String> {
        [
            ("mqtt.key_file", self.key_file.as_deref()),
            ("mqtt.password_file", self.password_file.as_deref()),
        ]
        .into_iter()
        .filter_map(|(key, path)| path.and_then(|p| crate::secrets::permission_problem(key, p)))
        .collect()
    }

    /// The MQTT user name and the password read from `password_file` (empty without one).
    pub fn credentials(&self) -> Result<Option<(String, Secret)>, PasswordFileError> {
        Ok(match (&self.username, &self.password_file) {
            (Some(user), Some(file)) => {
                Some((user.clone(), crate::secrets::read_password_file(file)?))
            }
            (Some(user), None) => Some((user.clone(), Secret::new(String::new()))),
            _ => None,
        })
    }

    /// Reads the password file and warns about what weakens the uplink: plain MQTT to a
    /// non-loopback broker (allowed by `allow_insecure`) and secret files others can read.
    /// Returns the credentials and whether the uplink is insecure.
    pub fn uplink_security(
        &self,
        broker: &BrokerAddress,
    ) -> Result<(Option<(String, Secret)>, bool), PasswordFileError> {
        let credentials = self.credentials()?;
        let insecure = !broker.tls && !broker.is_loopback();
        if insecure {
            tracing::warn!(broker = %broker, "allow_insecure = true: MQTT to a non-loopback broker is NOT encrypted; use mqtts://");
        }
        for problem in self.secret_file_problems() {
            tracing::warn!("{problem}");
        }
        Ok((credentials, insecure))
    }
}

/// Why an `[mqtt] url` is refused (the text names the URL as written).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Neither `mqtt://` nor `mqtts://`.
    #[error("{0:?} must start with mqtt:// or mqtts://")]
    Scheme(String),
    /// A path, user info or nothing after the scheme.
    #[error("{0:?} must be scheme://host[:port] with no path or credentials (use username / password_file)")]
    Form(String),
    /// `[` without `]`.
    #[error("{0:?}: unclosed [ in IPv6 address")]
    UnclosedBracket(String),
    /// Something other than `:port` after `[address]`.
    #[error("{url:?}: unexpected {after:?} after the address")]
    AfterAddress {
        /// The URL.
        url: String,
        /// What follows the `]`.
        after: String,
    },
    /// A port that is not 1..=65535.
    #[error("{url:?}: {port:?} is not a port number (1..=65535)")]
    Port {
        /// The URL.
        url: String,
        /// The port as written.
        port: String,
    },
    /// No host before the port.
    #[error("{0:?} has no host")]
    NoHost(String),
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
    pub fn parse(url: &str) -> Result<BrokerAddress, UrlError> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("mqtt://") {
            (false, rest)
        } else {
            return Err(UrlError::Scheme(url.to_owned()));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains('/') || rest.contains('@') {
            return Err(UrlError::Form(url.to_owned()));
        }
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| UrlError::UnclosedBracket(url.to_owned()))?;
            match after.strip_prefix(':') {
                Some(p) => (host.to_owned(), parse_port(url, p)?),
                None if after.is_empty() => (host.to_owned(), default_port),
                None => {
                    return Err(UrlError::AfterAddress {
                        url: url.to_owned(),
                        after: after.to_owned(),
                    })
                }
            }
        } else {
            match rest.rsplit_once(':') {
                Some((host, p)) => (host.to_owned(), parse_port(url, p)?),
                None => (rest.to_owned(), default_port),
            }
        };
        if host.is_empty() {
            return Err(UrlError::NoHost(url.to_owned()));
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

fn parse_port(url: &str, p: &str) -> Result<u16, UrlError> {
    match p.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(UrlError::Port {
            url: url.to_owned(),
            port: p.to_owned(),
        }),
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
    fn url_refusals_are_variants_with_the_installers_text() {
        let e = BrokerAddress::parse("http://x").expect_err("scheme");
        assert_eq!(e, UrlError::Scheme("http://x".into()));
        assert_eq!(
            e.to_string(),
            "\"http://x\" must start with mqtt:// or mqtts://"
        );
        assert_eq!(
            BrokerAddress::parse("mqtt://h:99999"),
            Err(UrlError::Port {
                url: "mqtt://h:99999".into(),
                port: "99999".into()
            })
        );
        assert!(matches!(
            BrokerAddress::parse("mqtt://u:p@h"),
            Err(UrlError::Form(_))
        ));
        assert!(matches!(
            BrokerAddress::parse("mqtt://[::1"),
            Err(UrlError::UnclosedBracket(_))
        ));
        assert!(matches!(
            BrokerAddress::parse("mqtt://[::1]x"),
            Err(UrlError::AfterAddress { ref after, .. }) if after == "x"
        ));
        assert!(matches!(
            BrokerAddress::parse("mqtt://:1883"),
            Err(UrlError::NoHost(_))
        ));
    }

    #[test]
    fn the_section_reads_alone_with_its_rules() {
        let read = |text: &str| -> MqttConfig { toml::from_str(text).expect("section") };
        let c = read("url = \"mqtt://10.0.0.1\"\ntopic_root = \"a//b\"\nprotocol = \"3.1.1\"");
        assert_eq!(c.protocol, MqttProtocol::V311);
        assert!(MAX_PACKET_RANGE.contains(&c.max_packet));
        let mut v = Violations::new("mqtt");
        c.check(&mut v);
        let keys: Vec<String> = v.into_vec().into_iter().map(|v| v.key).collect();
        assert_eq!(keys, ["mqtt.url", "mqtt.topic_root"]);
        let c = read("url = \"mqtts://10.0.0.1\"\ncert_file = \"/c.pem\"");
        let broker = c.broker().expect("url");
        let rule = crate::uplink::tls::validate_config(&c, &broker).expect_err("no key");
        assert_eq!(
            rule,
            crate::uplink::tls::SecurityRule::HalfClientCert { missing_key: true }
        );
        assert_eq!(rule.key(), "mqtt.key_file");
        let mut v = Violations::new("mqtt");
        c.check(&mut v);
        let found: Vec<(String, String)> = v
            .into_vec()
            .into_iter()
            .map(|v| (v.key, v.message))
            .collect();
        assert_eq!(
            found,
            [(
                "mqtt.key_file".to_owned(),
                "a client certificate needs both cert_file and key_file".to_owned()
            )]
        );
        let e = toml::from_str::<MqttConfig>("url = \"mqtt://h\"\nprotocol = \"4\"")
            .expect_err("protocol 4");
        assert!(e.to_string().contains("3.1.1"), "{e}");
    }

    #[test]
    fn uplink_security_reads_the_password_and_flags_insecure() {
        let dir = tempfile::tempdir().expect("dir");
        let pw = dir.path().join("password");
        std::fs::write(&pw, "pa55word\n").expect("write");
        let config = |mqtt: &str| -> MqttConfig { toml::from_str(mqtt).expect("section") };
        let c = config(&format!(
            "url = \"mqtt://127.0.0.1\"\nusername = \"u\"\npassword_file = \"{}\"",
            pw.display()
        ));
        let (credentials, insecure) = c
            .uplink_security(&c.broker().expect("url"))
            .expect("security");
        let (user, password) = credentials.expect("credentials");
        assert_eq!(
            (user.as_str(), password.expose(), insecure),
            ("u", "pa55word", false)
        );
        let c = config("url = \"mqtt://10.1.2.3\"\nallow_insecure = true");
        let (credentials, insecure) = c
            .uplink_security(&c.broker().expect("url"))
            .expect("security");
        assert!(credentials.is_none() && insecure);
        let c = config(&format!(
            "url = \"mqtt://127.0.0.1\"\nusername = \"u\"\npassword_file = \"{}\"",
            dir.path().join("absent").display()
        ));
        let e = c
            .uplink_security(&c.broker().expect("url"))
            .expect_err("missing file");
        assert!(matches!(
            e.problem,
            crate::secrets::PasswordProblem::Unreadable(_)
        ));
        assert!(e.to_string().contains("absent"), "{e}");
    }
}
