//! Tests of the TLS set-up, the broker certificate diagnosis and the failure causes.

use super::*;
use tokio_rustls::rustls::client::danger::ServerCertVerifier;
use tokio_rustls::rustls::pki_types::{ServerName, UnixTime};

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
    let parsed: crate::uplink::config::MqttConfig =
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
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
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
