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
//!
//! Every failure names its cause and its fix, decided in one place each: [`TlsProblem`]
//! (files, at start-up; [`TlsError`] adds the fix), [`BrokerCertError`] (the broker's
//! certificate, diagnosed by the verifier during the handshake, so the rumqttc error text
//! carries it) and [`Cause`] (the fix for a connection error's text, through [`hint`]).

pub mod x509;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::sign::{CertifiedKey, SingleCertAndKey};
use tokio_rustls::rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};

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

/// The broker's certificate as the verifier found it wanting: what it is, with what the
/// certificate says, so the installer sees it in the connection error. Each maps to one
/// [`Cause`] (and so to one fix); the tag in parentheses is what [`Cause::of`] finds.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerCertError {
    /// X.509 v1: no extensions, so no subjectAltName.
    #[error(
        "the broker's certificate ({subject}, issued by {issuer}) is X.509 v1, which has no \
         extensions, so no subjectAltName: rustls accepts only v3 certificates naming {host} \
         in subjectAltName (UnsupportedCertVersion)"
    )]
    Version1 {
        /// Its subject.
        subject: String,
        /// Its issuer.
        issuer: String,
        /// The host of `[mqtt] url`.
        host: String,
    },
    /// v3 without the subjectAltName extension.
    #[error(
        "the broker's certificate ({subject}) has no subjectAltName: rustls ignores the common \
         name and needs {host} in subjectAltName (NoSubjectAltName)"
    )]
    NoSubjectAltName {
        /// Its subject.
        subject: String,
        /// The host of `[mqtt] url`.
        host: String,
    },
    /// subjectAltName present, without the host.
    #[error(
        "the broker's certificate is not valid for name {host}: its subjectAltName has {names} \
         (NotValidForName)"
    )]
    WrongName {
        /// The host of `[mqtt] url`.
        host: String,
        /// What the certificate names.
        names: String,
    },
    /// Past notAfter.
    #[error(
        "the broker's certificate ({subject}) expired at {not_after}, and the gateway's clock \
         says {now} (Expired)"
    )]
    Expired {
        /// Its subject.
        subject: String,
        /// notAfter.
        not_after: String,
        /// The gateway's clock.
        now: String,
    },
    /// Before notBefore.
    #[error(
        "the broker's certificate ({subject}) is valid from {not_before} only, and the \
         gateway's clock says {now} (NotValidYet)"
    )]
    NotValidYet {
        /// Its subject.
        subject: String,
        /// notBefore.
        not_before: String,
        /// The gateway's clock.
        now: String,
    },
    /// Not signed by a CA of `ca_file`.
    #[error(
        "the broker's certificate ({subject}) is issued by {issuer}, not by the CA of \
         [mqtt] ca_file ({trusted}) (UnknownIssuer)"
    )]
    UnknownIssuer {
        /// Its subject.
        subject: String,
        /// Its issuer.
        issuer: String,
        /// The subjects of `ca_file`.
        trusted: String,
    },
}

// rustls shows a `CertificateError::Other` with `{:?}`: the message, not a struct dump.
impl fmt::Debug for BrokerCertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl BrokerCertError {
    /// Its cause, which decides the fix.
    pub fn cause(&self) -> Cause {
        match self {
            BrokerCertError::Version1 { .. } => Cause::BrokerCertVersion1,
            BrokerCertError::NoSubjectAltName { .. } => Cause::BrokerCertNoSubjectAltName,
            BrokerCertError::WrongName { .. } => Cause::BrokerCertWrongName,
            BrokerCertError::Expired { .. } => Cause::BrokerCertExpired,
            BrokerCertError::NotValidYet { .. } => Cause::BrokerCertNotValidYet,
            BrokerCertError::UnknownIssuer { .. } => Cause::BrokerCertUnknownIssuer,
        }
    }

    /// Explains webpki's `error` about the broker's certificate `der`, if it is one of ours;
    /// `None` leaves rustls' own error (e.g. a bad signature).
    pub fn diagnose(
        der: &[u8],
        host: &str,
        trusted: &str,
        now: UnixTime,
        error: &rustls::Error,
    ) -> Option<BrokerCertError> {
        let info = x509::parse(der).ok()?;
        let host = x509::printable(host);
        let (subject, issuer) = (info.subject(), info.issuer());
        let date = |secs: i64| utc(u64::try_from(secs).unwrap_or(0));
        let clock = utc(now.as_secs());
        if info.version == 1 {
            return Some(BrokerCertError::Version1 {
                subject,
                issuer,
                host,
            });
        }
        let rustls::Error::InvalidCertificate(cert_error) = error else {
            return None;
        };
        Some(match cert_error {
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                match &info.alt_names {
                    None => BrokerCertError::NoSubjectAltName { subject, host },
                    Some(names) if names.is_empty() => {
                        BrokerCertError::NoSubjectAltName { subject, host }
                    }
                    Some(names) => BrokerCertError::WrongName {
                        host,
                        names: names.join(", "),
                    },
                }
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                BrokerCertError::Expired {
                    subject,
                    not_after: date(info.not_after),
                    now: clock,
                }
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                BrokerCertError::NotValidYet {
                    subject,
                    not_before: date(info.not_before),
                    now: clock,
                }
            }
            CertificateError::UnknownIssuer => BrokerCertError::UnknownIssuer {
                subject,
                issuer,
                trusted: trusted.to_owned(),
            },
            _ => return None,
        })
    }
}

/// `2026-11-03T08:00:00Z`.
fn utc(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// webpki's verification of the broker, with its failures explained ([`BrokerCertError`]).
#[derive(Debug)]
struct BrokerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    /// The subjects of `ca_file`, for messages.
    trusted: String,
}

impl ServerCertVerifier for BrokerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map_err(|error| {
                let host = server_name.to_str();
                match BrokerCertError::diagnose(end_entity, &host, &self.trusted, now, &error) {
                    Some(why) => rustls::Error::InvalidCertificate(CertificateError::Other(
                        OtherError(Arc::new(why)),
                    )),
                    None => error,
                }
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Why a connection attempt failed, as far as TLS and login go: each has one fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// [`BrokerCertError::Version1`].
    BrokerCertVersion1,
    /// [`BrokerCertError::NoSubjectAltName`].
    BrokerCertNoSubjectAltName,
    /// [`BrokerCertError::WrongName`].
    BrokerCertWrongName,
    /// [`BrokerCertError::Expired`].
    BrokerCertExpired,
    /// [`BrokerCertError::NotValidYet`].
    BrokerCertNotValidYet,
    /// [`BrokerCertError::UnknownIssuer`].
    BrokerCertUnknownIssuer,
    /// The broker's certificate lacks the serverAuth extended key usage.
    BrokerCertPurpose,
    /// The broker's alert: a client certificate is required.
    ClientCertRequired,
    /// The broker's alert: it does not trust the client certificate's CA.
    ClientCertUntrusted,
    /// The broker's alert: the client certificate is expired or not valid yet.
    ClientCertExpired,
    /// The broker's alert: it refused the client certificate for another reason.
    ClientCertRefused,
    /// The broker refused the user name or password.
    Credentials,
}

const FIX_REISSUE_SAN: &str = "reissue the broker's certificate as X.509 v3 with the host of \
    [mqtt] url in subjectAltName: write san.cnf with the two lines `[v3]` and \
    `subjectAltName = IP:<address>` (or `DNS:<name>`), and add `-extfile san.cnf -extensions v3` \
    to the `openssl x509 -req` command that signed it (or `-addext \"subjectAltName = \
    DNS:<name>\"` to `openssl req`)";

impl Cause {
    /// The texts that identify it in a connection error, in the order they are tried (the
    /// broker's `CertificateExpired` alert before the broker certificate's `Expired`).
    const NEEDLES: [(&'static str, Cause); 17] = [
        ("UnsupportedCertVersion", Cause::BrokerCertVersion1),
        ("NoSubjectAltName", Cause::BrokerCertNoSubjectAltName),
        ("NotValidForName", Cause::BrokerCertWrongName),
        ("not valid for name", Cause::BrokerCertWrongName),
        ("CertificateExpired", Cause::ClientCertExpired),
        ("NotValidYet", Cause::BrokerCertNotValidYet),
        ("not valid yet", Cause::BrokerCertNotValidYet),
        ("Expired", Cause::BrokerCertExpired),
        ("certificate expired", Cause::BrokerCertExpired),
        ("UnknownIssuer", Cause::BrokerCertUnknownIssuer),
        ("extended key usage", Cause::BrokerCertPurpose),
        ("CertificateRequired", Cause::ClientCertRequired),
        ("UnknownCA", Cause::ClientCertUntrusted),
        ("alert: BadCertificate", Cause::ClientCertRefused),
        ("alert: UnsupportedCertificate", Cause::ClientCertRefused),
        ("NotAuthorized", Cause::Credentials),
        ("BadUserNamePassword", Cause::Credentials),
    ];

    /// The cause named by a connection error's text, if any.
    pub fn of(error: &str) -> Option<Cause> {
        Cause::NEEDLES
            .iter()
            .find(|(needle, _)| error.contains(needle))
            .map(|(_, cause)| *cause)
    }

    /// What to do about it.
    pub fn fix(self) -> &'static str {
        match self {
            Cause::BrokerCertVersion1 | Cause::BrokerCertNoSubjectAltName => FIX_REISSUE_SAN,
            Cause::BrokerCertWrongName => {
                "the broker's certificate does not name the host of [mqtt] url: use a name it \
                 has in the url, or reissue it with that host in subjectAltName (openssl: \
                 `-extfile san.cnf -extensions v3`, san.cnf `[v3]` and `subjectAltName = \
                 IP:<address>` or `DNS:<name>`)"
            }
            Cause::BrokerCertExpired => {
                "renew the broker's certificate; if it is in fact still valid, the gateway's \
                 clock is wrong: set it (timedatectl; enable NTP)"
            }
            Cause::BrokerCertNotValidYet => {
                "the gateway's clock is probably behind (no RTC, NTP not synchronised yet?): \
                 set it (timedatectl; enable NTP); else the certificate was issued with a \
                 future start: reissue it"
            }
            Cause::BrokerCertUnknownIssuer => {
                "the broker's certificate is not signed by the CA of [mqtt] ca_file: set \
                 ca_file to the CA that signed it (`openssl s_client -connect host:port \
                 -showcerts` shows its issuer), or give the broker a certificate from that CA"
            }
            Cause::BrokerCertPurpose => {
                "the broker's certificate is not for a TLS server: reissue it with \
                 `extendedKeyUsage = serverAuth` (or without extendedKeyUsage)"
            }
            Cause::ClientCertRequired => {
                "the broker requires a client certificate: set [mqtt] cert_file and key_file"
            }
            Cause::ClientCertUntrusted => {
                "the broker does not trust the client certificate: it must be signed by the CA \
                 the broker trusts (its cafile)"
            }
            Cause::ClientCertExpired => {
                "the broker finds the gateway's certificate (cert_file) expired or not valid \
                 yet: check its dates (`openssl x509 -noout -dates -in cert_file`) against the \
                 clocks of gateway and broker, and renew it"
            }
            Cause::ClientCertRefused => {
                "the broker refused the gateway's certificate (cert_file): check it is the one \
                 its CA issued for this gateway, and the broker's log for why"
            }
            Cause::Credentials => {
                "the broker refused the credentials: check [mqtt] username and password_file"
            }
        }
    }
}

/// What to do about a TLS or login failure, for the log line next to the error itself.
pub fn hint(error: &str) -> Option<&'static str> {
    Cause::of(error).map(Cause::fix)
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
        let parsed: super::super::config::MqttConfig =
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

    /// A CA and certificates it issues (rcgen).
    struct TestCa {
        cert: rcgen::Certificate,
        key: rcgen::KeyPair,
    }

    impl TestCa {
        fn new(cn: &str) -> TestCa {
            let key = rcgen::KeyPair::generate().expect("key");
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let cert = params.self_signed(&key).expect("CA");
            TestCa { cert, key }
        }

        fn issue(
            &self,
            names: &[&str],
            change: impl FnOnce(&mut rcgen::CertificateParams),
        ) -> CertificateDer<'static> {
            let key = rcgen::KeyPair::generate().expect("key");
            let mut params = rcgen::CertificateParams::new(
                names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            )
            .expect("params");
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "127.0.0.1");
            change(&mut params);
            let cert = params
                .signed_by(&key, &self.cert, &self.key)
                .expect("signed");
            cert.der().clone()
        }

        fn verifier(&self) -> BrokerVerifier {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.cert.der().clone()).expect("root");
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            BrokerVerifier {
                inner: WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .expect("verifier"),
                trusted: "CN=test CA".to_owned(),
            }
        }
    }

    /// The verifier's error text for `cert` presented by the broker at 127.0.0.1.
    fn refusal(verifier: &BrokerVerifier, cert: &CertificateDer<'_>) -> Option<String> {
        let host = ServerName::try_from("127.0.0.1").expect("name");
        verifier
            .verify_server_cert(cert, &[], &host, &[], UnixTime::now())
            .err()
            .map(|e| e.to_string())
    }

    #[test]
    fn each_broker_certificate_failure_is_explained_and_maps_to_its_fix() {
        let ca = TestCa::new("test CA");
        let verifier = ca.verifier();
        assert_eq!(refusal(&verifier, &ca.issue(&["127.0.0.1"], |_| {})), None);
        let v1 = x509::tests::test_cert(
            None,
            &rcgen::KeyPair::generate().expect("key").public_key_der(),
            None,
        );
        let cases: Vec<(CertificateDer<'static>, Cause, &[&str])> = vec![
            (
                CertificateDer::from(v1),
                Cause::BrokerCertVersion1,
                &[
                    "X.509 v1",
                    "naming 127.0.0.1 in subjectAltName",
                    "issued by CN=Test CA",
                ],
            ),
            (
                ca.issue(&[], |_| {}),
                Cause::BrokerCertNoSubjectAltName,
                &["(CN=127.0.0.1) has no subjectAltName", "needs 127.0.0.1"],
            ),
            (
                ca.issue(&["other.example", "10.0.0.9"], |_| {}),
                Cause::BrokerCertWrongName,
                &[
                    "not valid for name 127.0.0.1",
                    "DNS:other.example, IP:10.0.0.9",
                ],
            ),
            (
                ca.issue(&["127.0.0.1"], |p| {
                    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
                    p.not_after = rcgen::date_time_ymd(2021, 6, 30);
                }),
                Cause::BrokerCertExpired,
                &[
                    "expired at 2021-06-30T00:00:00Z",
                    "the gateway's clock says 20",
                ],
            ),
            (
                ca.issue(&["127.0.0.1"], |p| {
                    p.not_before = rcgen::date_time_ymd(2090, 1, 1);
                    p.not_after = rcgen::date_time_ymd(2091, 1, 1);
                }),
                Cause::BrokerCertNotValidYet,
                &["valid from 2090-01-01T00:00:00Z only", "clock says"],
            ),
            (
                TestCa::new("impostor CA").issue(&["127.0.0.1"], |_| {}),
                Cause::BrokerCertUnknownIssuer,
                &["issued by CN=impostor CA", "ca_file (CN=test CA)"],
            ),
            (
                ca.issue(&["127.0.0.1"], |p| {
                    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
                }),
                Cause::BrokerCertPurpose,
                &["extended key usage"],
            ),
        ];
        for (cert, cause, needles) in cases {
            let text = refusal(&verifier, &cert).unwrap_or_else(|| panic!("{cause:?} accepted"));
            assert_eq!(Cause::of(&text), Some(cause), "{text}");
            for needle in needles {
                assert!(text.contains(needle), "{cause:?}: no {needle:?} in {text}");
            }
            assert_eq!(hint(&text), Some(cause.fix()));
        }
    }

    #[test]
    fn connection_error_texts_map_to_one_cause_each() {
        let cases = [
            (
                "IO: received fatal alert: CertificateExpired",
                Some(Cause::ClientCertExpired),
            ),
            (
                "invalid peer certificate: certificate expired: verification time 1",
                Some(Cause::BrokerCertExpired),
            ),
            (
                "invalid peer certificate: certificate not valid yet: verification",
                Some(Cause::BrokerCertNotValidYet),
            ),
            (
                "invalid peer certificate: UnknownIssuer",
                Some(Cause::BrokerCertUnknownIssuer),
            ),
            (
                "certificate not valid for name \"a\"; certificate is only valid for b",
                Some(Cause::BrokerCertWrongName),
            ),
            (
                "received fatal alert: CertificateRequired",
                Some(Cause::ClientCertRequired),
            ),
            (
                "received fatal alert: UnknownCA",
                Some(Cause::ClientCertUntrusted),
            ),
            (
                "received fatal alert: BadCertificate",
                Some(Cause::ClientCertRefused),
            ),
            (
                "broker refused the connection: NotAuthorized",
                Some(Cause::Credentials),
            ),
            (
                "broker refused the connection: BadUserNamePassword",
                Some(Cause::Credentials),
            ),
            ("I/O: Connection refused (os error 111)", None),
        ];
        for (text, cause) in cases {
            assert_eq!(Cause::of(text), cause, "{text}");
        }
        // Every diagnosis carries the tag of its own cause.
        let s = || "CN=x".to_owned();
        let diagnoses = [
            BrokerCertError::Version1 {
                subject: s(),
                issuer: s(),
                host: s(),
            },
            BrokerCertError::NoSubjectAltName {
                subject: s(),
                host: s(),
            },
            BrokerCertError::WrongName {
                host: s(),
                names: s(),
            },
            BrokerCertError::Expired {
                subject: s(),
                not_after: s(),
                now: s(),
            },
            BrokerCertError::NotValidYet {
                subject: s(),
                not_before: s(),
                now: s(),
            },
            BrokerCertError::UnknownIssuer {
                subject: s(),
                issuer: s(),
                trusted: s(),
            },
        ];
        for d in diagnoses {
            assert_eq!(Cause::of(&d.to_string()), Some(d.cause()), "{d}");
            assert_eq!(format!("{d:?}"), d.to_string());
        }
    }

    #[test]
    fn the_key_must_be_the_certificates_whatever_its_version() {
        let provider = rustls::crypto::ring::default_provider();
        let load = |key: &rcgen::KeyPair| {
            provider
                .key_provider
                .load_private_key(PrivateKeyDer::Pkcs8(key.serialize_der().into()))
                .expect("loads")
        };
        let (mine, other) = (
            rcgen::KeyPair::generate().expect("key"),
            rcgen::KeyPair::generate().expect("key"),
        );
        // X.509 v1, which webpki's end-entity parser (and so rustls' own check) refuses.
        let v1 = CertificateDer::from(x509::tests::test_cert(None, &mine.public_key_der(), None));
        assert_eq!(key_fits(&v1, load(&mine).as_ref()), Ok(Some(true)));
        assert_eq!(key_fits(&v1, load(&other).as_ref()), Ok(Some(false)));
        // v3 from rcgen.
        let ca = TestCa::new("test CA");
        let params = rcgen::CertificateParams::new(vec!["gw".to_owned()]).expect("params");
        let v3 = params.signed_by(&mine, &ca.cert, &ca.key).expect("signed");
        assert_eq!(key_fits(v3.der(), load(&mine).as_ref()), Ok(Some(true)));
        assert_eq!(key_fits(v3.der(), load(&other).as_ref()), Ok(Some(false)));
        // Garbage is an error, not a panic.
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01]);
        assert!(key_fits(&garbage, load(&mine).as_ref()).is_err());
    }

    #[test]
    fn start_up_errors_carry_their_fix_once() {
        let dir = tempfile::tempdir().expect("dir");
        let e = client_config(&TlsFiles {
            ca_file: dir.path().join("nope.pem"),
            client_cert: None,
        })
        .expect_err("missing");
        let text = e.to_string();
        assert!(text.starts_with("cannot read mqtt.ca_file"), "{text}");
        assert!(text.ends_with(&format!(" — {}", e.fix())), "{text}");
        assert_eq!(text.matches(e.fix()).count(), 1);
        assert!(!e.problem.to_string().contains(e.fix()));
    }
}
