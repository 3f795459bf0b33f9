//! TLS for the uplink: a rustls client configuration on the `ring` provider (no OpenSSL, no
//! aws-lc, so the agent cross-compiles with nothing but a Rust toolchain).
//!
//! The broker is verified against the CA of `[mqtt] ca_file` only (never the system store:
//! a gateway trusts the platform's CA, not every CA), and its certificate must name the host
//! of `[mqtt] url` in its subjectAltName (rustls ignores the common name, and refuses
//! X.509 v1 certificates, which have no extensions). `cert_file` + `key_file` add a client
//! certificate (mTLS); that one is verified by the broker, which may accept X.509 v1 (as
//! OpenSSL's `openssl x509 -req` issues without an extension file), so the agent only checks
//! that the key is the certificate's: it compares the certificate's public key with the key's,
//! read with [`x509`], without webpki's end-entity parsing.
//!
//! The files are read when the agent starts, where an unreadable or invalid file stops it
//! with an error naming the file, and again before every connection attempt, so a renewed
//! certificate is picked up by the next reconnect; if a re-read fails, the last good
//! configuration is kept and the failure is logged. Errors name files, never their content.
//! A renewed pair waiting as `<cert_file>.new` / `<key_file>.new` is tried first and replaces
//! the old one once the broker accepts it ([`renewal`]).
//!
//! Every failure names its cause and its fix, decided in one place each: [`TlsProblem`]
//! (files, at start-up; [`TlsError`] adds the fix), [`BrokerCertError`] (the broker's
//! certificate, diagnosed by the verifier during the handshake, so the rumqttc error text
//! carries it) and [`Cause`] (the fix for a connection error's text, through [`hint`]).

mod broker_cert;
pub mod renewal;
pub mod x509;

use broker_cert::BrokerVerifier;
pub use broker_cert::{hint, BrokerCertError, Cause};

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::sign::{CertifiedKey, SingleCertAndKey};

use super::config::{BrokerAddress, MqttConfig};

/// Where the TLS material is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM file of the CA (or CAs) that signed the broker's certificate.
    pub ca_file: PathBuf,
    /// PEM certificate chain of this gateway (mTLS), with `key_file`.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

const FIX_READ: &str = "check the path and that the agent's user may read the file (ls -l; \
                        chown it to the agent's user, chmod 600 for a key)";
const FIX_PEM: &str = "the file must be PEM (-----BEGIN ...-----); convert a DER file with \
                       `openssl x509 -inform der -in F -out F.pem` (certificate) or \
                       `openssl pkey -inform der -in F -out F.pem` (key)";
const FIX_CA: &str = "ca_file must hold the CA certificate(s) that signed the broker's \
                      certificate, PEM";
const FIX_CERT: &str = "cert_file must hold the gateway's certificate first (then any \
                        intermediates), PEM";
const FIX_MISMATCH: &str = "install the key the certificate was issued for, or reissue the \
                            certificate for this key; compare `openssl x509 -noout -pubkey -in \
                            CERT` with `openssl pkey -pubout -in KEY`";
const FIX_KEY_TYPE: &str = "use an RSA (2048 to 8192 bit), ECDSA P-256/P-384 or Ed25519 key";

/// What is wrong with the TLS files (never their content). Each has one fix: [`Self::fix`].
#[derive(Debug, thiserror::Error)]
pub enum TlsProblem {
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
    /// A file was read but is not the PEM it should be.
    #[error("{key} {path}: {problem}")]
    Invalid {
        /// The config key.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong (never the file's content).
        problem: String,
    },
    /// A certificate of `ca_file` cannot be a trust anchor.
    #[error("mqtt.ca_file {path}: certificate {index} is not a usable CA certificate ({reason})")]
    BadCa {
        /// The file.
        path: PathBuf,
        /// Its position in the file, from 1.
        index: usize,
        /// rustls' reason.
        reason: String,
    },
    /// The first certificate of `cert_file` cannot be read as X.509.
    #[error("mqtt.cert_file {path}: the first certificate is not valid X.509 ({source})")]
    BadCert {
        /// The file.
        path: PathBuf,
        /// What the DER reader found.
        source: x509::DerError,
    },
    /// The key is not the certificate's.
    #[error(
        "mqtt.key_file {key_file} is not the key of mqtt.cert_file {cert_file} ({subject}): \
         their public keys differ"
    )]
    KeyMismatch {
        /// The certificate.
        cert_file: PathBuf,
        /// The key.
        key_file: PathBuf,
        /// The certificate's subject, for the installer.
        subject: String,
    },
    /// The key parses as PEM but the TLS library cannot sign with it.
    #[error("mqtt.key_file {path}: unsupported key ({reason})")]
    KeyType {
        /// The file.
        path: PathBuf,
        /// rustls' reason.
        reason: String,
    },
    /// The TLS library refused the configuration.
    #[error("TLS setup failed: {0}")]
    Setup(String),
}

impl TlsProblem {
    /// What to do about it.
    pub fn fix(&self) -> &'static str {
        match self {
            TlsProblem::Read { .. } => FIX_READ,
            TlsProblem::Invalid { .. } => FIX_PEM,
            TlsProblem::BadCa { .. } => FIX_CA,
            TlsProblem::BadCert { .. } => FIX_CERT,
            TlsProblem::KeyMismatch { .. } => FIX_MISMATCH,
            TlsProblem::KeyType { .. } => FIX_KEY_TYPE,
            TlsProblem::Setup(_) => "report this as a bug of the agent",
        }
    }
}

/// TLS material that could not be loaded: the problem, then its fix (`<problem> — <fix>`).
#[derive(Debug, thiserror::Error)]
#[error("{problem} — {}", problem.fix())]
pub struct TlsError {
    /// What is wrong.
    #[source]
    pub problem: TlsProblem,
}

impl TlsError {
    /// What to do about it.
    pub fn fix(&self) -> &'static str {
        self.problem.fix()
    }
}

impl From<TlsProblem> for TlsError {
    fn from(problem: TlsProblem) -> TlsError {
        TlsError { problem }
    }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsProblem> {
    std::fs::read(path).map_err(|source| TlsProblem::Read {
        key,
        path: path.to_owned(),
        source,
    })
}

fn invalid(key: &'static str, path: &Path, problem: impl Into<String>) -> TlsProblem {
    TlsProblem::Invalid {
        key,
        path: path.to_owned(),
        problem: problem.into(),
    }
}

/// Reads every `CERTIFICATE` block of a PEM file; at least one is required.
fn certificates(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsProblem> {
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
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsProblem> {
    const KEY: &str = "mqtt.key_file";
    let pem = read(KEY, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| {
        invalid(
            KEY,
            path,
            "holds no valid PEM private key (PKCS#8, PKCS#1 or SEC1; an encrypted key must be \
             decrypted: openssl pkey -in KEY -out KEY.plain)",
        )
    })
}

/// Does `key` belong to the certificate `cert`? Compares the public key bits of the
/// certificate's SubjectPublicKeyInfo with the key's own (so an X.509 v1 certificate is
/// fine, and so is any encoding of the algorithm's parameters). `Ok(None)` if the key cannot
/// tell its public key.
fn key_fits(
    cert: &CertificateDer<'_>,
    key: &dyn rustls::sign::SigningKey,
) -> Result<Option<bool>, x509::DerError> {
    let info = x509::parse(cert.as_ref())?;
    let cert_key = x509::public_key_bits(info.spki)?;
    let Some(own) = key.public_key() else {
        return Ok(None);
    };
    Ok(Some(x509::public_key_bits(own.as_ref())? == cert_key))
}

/// The gateway's client certificate and key, checked to belong together.
fn client_identity(
    provider: &rustls::crypto::CryptoProvider,
    cert_file: &Path,
    key_file: &Path,
) -> Result<CertifiedKey, TlsProblem> {
    let chain = certificates("mqtt.cert_file", cert_file)?;
    let key = private_key(key_file)?;
    let key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsProblem::KeyType {
            path: key_file.to_owned(),
            reason: e.to_string(),
        })?;
    let first = &chain[0];
    match key_fits(first, key.as_ref()) {
        Err(source) => Err(TlsProblem::BadCert {
            path: cert_file.to_owned(),
            source,
        }),
        Ok(Some(false)) => Err(TlsProblem::KeyMismatch {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            subject: x509::subject_of(first.as_ref())
                .map_or_else(|| "no common name".to_owned(), |cn| format!("CN={cn}")),
        }),
        Ok(_) => Ok(CertifiedKey::new(chain, key)),
    }
}

/// Builds the rustls client configuration from the files.
pub fn client_config(files: &TlsFiles) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    Ok(build(files)?)
}

fn build(files: &TlsFiles) -> Result<Arc<rustls::ClientConfig>, TlsProblem> {
    const CA: &str = "mqtt.ca_file";
    let mut roots = rustls::RootCertStore::empty();
    let mut trusted = Vec::new();
    for (i, cert) in certificates(CA, &files.ca_file)?.into_iter().enumerate() {
        trusted.push(
            x509::subject_of(cert.as_ref()).map_or_else(|| "?".to_owned(), |cn| format!("CN={cn}")),
        );
        roots.add(cert).map_err(|e| TlsProblem::BadCa {
            path: files.ca_file.clone(),
            index: i + 1,
            reason: e.to_string(),
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsProblem::Setup(e.to_string()))?;
    let verifier = Arc::new(BrokerVerifier {
        inner: webpki,
        trusted: trusted.join(", "),
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsProblem::Setup(e.to_string()))?
        // Not a weaker verification: webpki's, with the failure explained.
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match &files.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert_file, key_file)) => {
            let identity = client_identity(&provider, cert_file, key_file)?;
            builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(identity)))
        }
    };
    Ok(Arc::new(config))
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

/// An `[mqtt]` security rule broken; [`SecurityRule::key`] names the key, the `Display`
/// says what is wrong and what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SecurityRule {
    /// `password` in the configuration.
    #[error("a password never goes into the configuration: write it to a file only the agent can read (chmod 600) and set password_file = \"/etc/towerlink/password\"")]
    PasswordInConfig,
    /// `password_file` without `username`.
    #[error("needs username")]
    PasswordFileWithoutUser,
    /// An empty, overlong or control-character user name.
    #[error("must be 1..=256 characters without control characters")]
    Username,
    /// A certificate without its key (`missing_key`) or a key without its certificate.
    #[error("a client certificate needs both cert_file and key_file")]
    HalfClientCert {
        /// Is it the key that is missing?
        missing_key: bool,
    },
    /// `mqtts://` without `ca_file`.
    #[error("mqtts:// needs ca_file, the PEM file of the CA that signed the broker's certificate")]
    NoCaFile,
    /// TLS files with a plain `mqtt://` URL.
    #[error(
        "ca_file, cert_file and key_file are used only with mqtts://; change the URL to mqtts://"
    )]
    TlsFilesWithoutTls,
}

impl SecurityRule {
    /// The key the rule is about (`mqtt.ca_file`).
    pub fn key(self) -> &'static str {
        match self {
            SecurityRule::PasswordInConfig => "mqtt.password",
            SecurityRule::PasswordFileWithoutUser => "mqtt.password_file",
            SecurityRule::Username => "mqtt.username",
            SecurityRule::HalfClientCert { missing_key: true } => "mqtt.key_file",
            SecurityRule::HalfClientCert { missing_key: false } => "mqtt.cert_file",
            SecurityRule::NoCaFile => "mqtt.ca_file",
            SecurityRule::TlsFilesWithoutTls => "mqtt.url",
        }
    }
}

/// The `[mqtt]` security rules, checked when the configuration loads: a password never in
/// the configuration, the TLS keys only with `mqtts://` (where `ca_file` is required), a
/// certificate only with its key, `password_file` only with `username`.
pub fn validate_config(mqtt: &MqttConfig, broker: &BrokerAddress) -> Result<(), SecurityRule> {
    if mqtt.password.is_some() {
        return Err(SecurityRule::PasswordInConfig);
    }
    if mqtt.password_file.is_some() && mqtt.username.is_none() {
        return Err(SecurityRule::PasswordFileWithoutUser);
    }
    if let Some(user) = &mqtt.username {
        if user.is_empty() || user.len() > 256 || user.chars().any(char::is_control) {
            return Err(SecurityRule::Username);
        }
    }
    if mqtt.cert_file.is_some() != mqtt.key_file.is_some() {
        return Err(SecurityRule::HalfClientCert {
            missing_key: mqtt.cert_file.is_some(),
        });
    }
    if broker.tls {
        if mqtt.ca_file.is_none() {
            return Err(SecurityRule::NoCaFile);
        }
    } else if mqtt.ca_file.is_some() || mqtt.cert_file.is_some() {
        return Err(SecurityRule::TlsFilesWithoutTls);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
