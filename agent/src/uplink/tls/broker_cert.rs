//! The broker's certificate, as the verifier finds it wanting ([`BrokerCertError`], diagnosed
//! during the handshake so the rumqttc error text carries it), and the one fix of each
//! connection failure ([`Cause`], through [`hint`]).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};

use super::x509;

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
pub(super) fn utc(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// webpki's verification of the broker, with its failures explained ([`BrokerCertError`]).
#[derive(Debug)]
pub(super) struct BrokerVerifier {
    pub(super) inner: Arc<WebPkiServerVerifier>,
    /// The subjects of `ca_file`, for messages.
    pub(super) trusted: String,
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
