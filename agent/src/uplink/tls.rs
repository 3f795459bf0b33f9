//! TLS for the uplink: a rustls client configuration on the `ring` provider (no OpenSSL, no
//! aws-lc, so the agent cross-compiles with nothing but a Rust toolchain).
//!
//! The broker is verified against the CA of `[mqtt] ca_file` only (never the system store:
//! a gateway trusts the platform's CA, not every CA), and its certificate must name the host
//! of `[mqtt] url` (rustls checks the server name; an IP in the URL must be an IP SAN).
//! `cert_file` + `key_file` add a client certificate (mTLS).
//!
//! The files are read when the agent starts, where an unreadable or invalid file stops it
//! with an error naming the file, and again before every connection attempt, so a renewed
//! certificate is picked up by the next reconnect; if a re-read fails, the last good
//! configuration is kept and the failure is logged. Errors name files, never their content.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{BrokerAddress, MqttConfig};

/// Where the TLS material is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM file of the CA (or CAs) that signed the broker's certificate.
    pub ca_file: PathBuf,
    /// PEM certificate chain of this gateway (mTLS), with `key_file`.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// TLS material that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {key} {path}: {source}")]
    Read {
        /// The config key (`mqtt.ca_file`).
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file was read but does not hold what it should.
    #[error("{key} {path}: {problem}")]
    Invalid {
        /// The config key.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong (never the file's content).
        problem: String,
    },
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        key,
        path: path.to_owned(),
        source,
    })
}

fn invalid(key: &'static str, path: &Path, problem: impl Into<String>) -> TlsError {
    TlsError::Invalid {
        key,
        path: path.to_owned(),
        problem: problem.into(),
    }
}

/// Reads every `CERTIFICATE` block of a PEM file; at least one is required.
fn certificates(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(key, path)?;
    let mut certs = Vec::new();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        // The PEM parser's error can quote a line of the file: keep it out of the message.
        certs.push(cert.map_err(|_| invalid(key, path, "is not valid PEM"))?);
    }
    if certs.is_empty() {
        return Err(invalid(
            key,
            path,
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    const KEY: &str = "mqtt.key_file";
    let pem = read(KEY, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| {
        invalid(
            KEY,
            path,
            "holds no valid PEM private key (PKCS#8, PKCS#1 or SEC1)",
        )
    })
}

/// Builds the rustls client configuration from the files.
pub fn client_config(files: &TlsFiles) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    const CA: &str = "mqtt.ca_file";
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(CA, &files.ca_file)? {
        roots.add(cert).map_err(|e| {
            invalid(
                CA,
                &files.ca_file,
                format!("is not a usable CA certificate ({e})"),
            )
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(CA, &files.ca_file, format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots);
    let config = match &files.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert_file, key_file)) => {
            let chain = certificates("mqtt.cert_file", cert_file)?;
            let key = private_key(key_file)?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                invalid(
                    "mqtt.key_file",
                    key_file,
                    format!("does not fit {} ({e})", cert_file.display()),
                )
            })?
        }
    };
    Ok(Arc::new(config))
}

/// What to do about a TLS or login failure, for the log line next to the error itself.
pub fn hint(error: &str) -> Option<&'static str> {
    const HINTS: [(&str, &str); 8] = [
        ("NotAuthorized", "the broker refused the credentials: check [mqtt] username and password_file"),
        ("BadUserNamePassword", "the broker refused the credentials: check [mqtt] username and password_file"),
        ("CertificateRequired", "the broker requires a client certificate: set [mqtt] cert_file and key_file"),
        ("UnknownCA", "the broker does not trust the client certificate: it must be signed by the CA the broker trusts"),
        ("UnknownIssuer", "the broker's certificate is not signed by the CA of [mqtt] ca_file"),
        ("not valid for name", "the broker's certificate does not name the host of [mqtt] url"),
        ("NotValidForName", "the broker's certificate does not name the host of [mqtt] url"),
        ("Expired", "a certificate has expired or is not valid yet: check it and the gateway's clock"),
    ];
    HINTS
        .iter()
        .find(|(needle, _)| error.contains(needle))
        .map(|(_, hint)| *hint)
}

impl TlsFiles {
    /// The TLS files of `[mqtt]`, if the URL is `mqtts://` (validated at load).
    pub fn from_config(mqtt: &MqttConfig, broker: &BrokerAddress) -> Option<TlsFiles> {
        if !broker.tls {
            return None;
        }
        Some(TlsFiles {
            ca_file: mqtt.ca_file.clone()?,
            client_cert: mqtt.cert_file.clone().zip(mqtt.key_file.clone()),
        })
    }
}

/// The `[mqtt]` security rules, checked when the configuration loads: a password never in
/// the configuration, the TLS keys only with `mqtts://` (where `ca_file` is required), a
/// certificate only with its key, `password_file` only with `username`.
pub fn validate_config(mqtt: &MqttConfig, broker: &BrokerAddress) -> Result<(), (String, String)> {
    let bad = |key: &str, message: &str| Err((key.to_owned(), message.to_owned()));
    if mqtt.password.is_some() {
        return bad(
            "mqtt.password",
            "a password never goes into the configuration: write it to a file only the agent \
             can read (chmod 600) and set password_file = \"/etc/towerlink/password\"",
        );
    }
    if mqtt.password_file.is_some() && mqtt.username.is_none() {
        return bad("mqtt.password_file", "needs username");
    }
    if let Some(user) = &mqtt.username {
        if user.is_empty() || user.len() > 256 || user.chars().any(char::is_control) {
            return bad(
                "mqtt.username",
                "must be 1..=256 characters without control characters",
            );
        }
    }
    if mqtt.cert_file.is_some() != mqtt.key_file.is_some() {
        return bad(
            if mqtt.cert_file.is_some() {
                "mqtt.key_file"
            } else {
                "mqtt.cert_file"
            },
            "a client certificate needs both cert_file and key_file",
        );
    }
    if broker.tls {
        if mqtt.ca_file.is_none() {
            return bad(
                "mqtt.ca_file",
                "mqtts:// needs ca_file, the PEM file of the CA that signed the broker's certificate",
            );
        }
    } else if mqtt.ca_file.is_some() || mqtt.cert_file.is_some() {
        return bad(
            "mqtt.url",
            "ca_file, cert_file and key_file are used only with mqtts://; change the URL to mqtts://",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[gateway]\nid = \"gw\"\n[store]\npath = \"/tmp/x\"\n[mqtt]\n";

    fn config_error(mqtt: &str) -> Option<String> {
        crate::config::Config::parse(&format!("{BASE}{mqtt}"), "t.toml")
            .err()
            .map(|e| e.to_string())
    }

    #[test]
    fn security_keys_are_checked_at_load() {
        let ok = [
            "url = \"mqtts://platform.example\"\nca_file = \"/etc/ca.pem\"",
            "url = \"mqtts://platform.example:8883\"\nca_file = \"/c\"\ncert_file = \"/g.pem\"\nkey_file = \"/g.key\"\nusername = \"sh-ja-0001\"\npassword_file = \"/p\"",
            "url = \"mqtt://127.0.0.1\"\nusername = \"u\"",
        ];
        for mqtt in ok {
            assert_eq!(config_error(mqtt), None, "{mqtt}");
        }
        let refused = [
            (
                "url = \"mqtt://127.0.0.1\"\nusername = \"u\"\npassword = \"hunter2\"",
                "mqtt.password",
                "password_file",
            ),
            (
                "url = \"mqtts://p.example\"",
                "mqtt.ca_file",
                "needs ca_file",
            ),
            (
                "url = \"mqtts://p.example\"\nca_file = \"/c\"\ncert_file = \"/g.pem\"",
                "mqtt.key_file",
                "both",
            ),
            (
                "url = \"mqtts://p.example\"\nca_file = \"/c\"\nkey_file = \"/g.key\"",
                "mqtt.cert_file",
                "both",
            ),
            (
                "url = \"mqtt://127.0.0.1\"\nca_file = \"/c\"",
                "mqtt.url",
                "only with mqtts://",
            ),
            (
                "url = \"mqtt://127.0.0.1\"\npassword_file = \"/p\"",
                "mqtt.password_file",
                "needs username",
            ),
            (
                "url = \"mqtt://127.0.0.1\"\nusername = \"\"",
                "mqtt.username",
                "1..=256",
            ),
        ];
        for (mqtt, key, needle) in refused {
            let e = config_error(mqtt).unwrap_or_else(|| panic!("accepted: {mqtt}"));
            assert!(e.contains(key) && e.contains(needle), "{mqtt}: {e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
        // The refused password is not kept, not even in Debug output of a parsed value.
        let parsed: crate::config::MqttConfig =
            toml::from_str("url = \"mqtt://127.0.0.1\"\npassword = \"hunter2\"").expect("parses");
        assert!(!format!("{parsed:?}").contains("hunter2"));
    }

    const NOT_A_CERT: &str =
        "-----BEGIN CERTIFICATE-----\nc2VjcmV0LWJ5dGVz!!\n-----END CERTIFICATE-----\n";

    fn files(dir: &Path, ca: &str) -> TlsFiles {
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca).expect("write");
        TlsFiles {
            ca_file,
            client_cert: None,
        }
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let dir = tempfile::tempdir().expect("dir");
        let f = TlsFiles {
            ca_file: dir.path().join("nope.pem"),
            client_cert: None,
        };
        let e = client_config(&f).expect_err("missing").to_string();
        assert!(e.contains("mqtt.ca_file") && e.contains("nope.pem"), "{e}");
    }

    #[test]
    fn a_file_without_certificates_is_refused_without_quoting_it() {
        let dir = tempfile::tempdir().expect("dir");
        for text in ["hello secret-words\n", NOT_A_CERT, ""] {
            let e = client_config(&files(dir.path(), text))
                .expect_err("refused")
                .to_string();
            assert!(e.contains("ca.pem"), "{e}");
            assert!(!e.contains("secret") && !e.contains("c2VjcmV0"), "{e}");
        }
    }

    #[test]
    fn an_invalid_key_file_is_refused_without_quoting_it() {
        let dir = tempfile::tempdir().expect("dir");
        let key_file = dir.path().join("gw.key");
        std::fs::write(&key_file, "no key here").expect("write");
        let e = private_key(&key_file)
            .map(|_| ())
            .expect_err("no key")
            .to_string();
        assert!(e.contains("mqtt.key_file") && e.contains("gw.key"), "{e}");
    }
}
