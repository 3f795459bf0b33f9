//! Certificates as installers make them (issue 10, item 4), against a real Mosquitto with
//! `require_certificate true` (the `towerlink_e2e::tls` rig).
//!
//! A CA, a broker and a gateway certificate made with the `openssl` CLI by Mosquitto's own
//! recipe (`mosquitto-tls(7)`: RSA keys, `openssl x509 -req -CAcreateserial`, so the gateway's
//! certificate is X.509 v1; the broker's is reissued with a subjectAltName for 127.0.0.1, as
//! rustls rightly requires) work for mTLS: the agent connects and publishes, and
//! `towerlink check` passes.
//!
//! Then one test per cause of a TLS failure, each made with rcgen and with openssl where both
//! can make it: the broker's certificate X.509 v1, without subjectAltName, for another name,
//! expired, not valid yet, from another CA; the gateway's certificate expired (the broker's
//! alert); a key that is not the certificate's; an unreadable key file. Each asserts that the
//! agent's log line and `towerlink check`'s FAIL line name the cause (with what the
//! certificate says) and the fix, and that the agent keeps running and retrying where the
//! failure is the broker's.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context};
use towerlink_e2e::tls::rcgen::{date_time_ymd, ExtendedKeyUsagePurpose};
use towerlink_e2e::tls::{x509_version, Ca, OpensslCa, Pki, Rig};
use towerlink_e2e::{wait_until, AgentProcess};

/// Runs `towerlink check --config <config>`: (exit success, stdout).
fn check(config: &Path) -> anyhow::Result<(bool, String)> {
    let bin = towerlink_e2e::binary("towerlink-agent", "towerlink")?;
    let out = std::process::Command::new(&bin)
        .args(["check", "--config"])
        .arg(config)
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

/// An openssl PKI by Mosquitto's recipe: `ca.pem` (CN=installer CA), the gateway's `client`
/// (X.509 v1, CN=sh-ja-0001); `server` makes the broker's certificate(s).
fn openssl_pki(
    dir: &Path,
    server: impl FnOnce(&OpensslCa) -> anyhow::Result<()>,
) -> anyhow::Result<Pki> {
    let pki = Pki::at(dir)?;
    let ca = OpensslCa::create(&pki, "ca", "installer CA")?;
    ca.issue("client", "sh-ja-0001", None)?;
    server(&ca)?;
    Ok(pki)
}

/// The rcgen PKI of the harness plus `server-x` made from the broker's usual parameters
/// (names 127.0.0.1 and localhost) changed by `change`.
fn rcgen_pki(
    dir: &Path,
    change: impl FnOnce(&mut towerlink_e2e::tls::rcgen::CertificateParams),
) -> anyhow::Result<Pki> {
    let (pki, ca) = Pki::with_ca(dir)?;
    let mut params = Ca::params(
        &["127.0.0.1", "localhost"],
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    change(&mut params);
    pki.add("server-x", &ca.sign(params)?)?;
    Ok(pki)
}

const SAN: &str = "subjectAltName = IP:127.0.0.1";

/// The gateway (certificate `client`) is refused by the broker with certificate `server`:
/// the agent's failure lines and check's FAIL line hold every needle; the agent keeps
/// running and retrying.
fn expect_refused_with(rig: &Rig, what: &str, needles: &[&str]) -> anyhow::Result<()> {
    rig.pki.install_client("client")?;
    let config = rig.config(&rig.client_cert_lines())?;
    let mut agent = AgentProcess::start(&config)?;
    let lines = rig
        .expect_refused(&mut agent, 2, needles[0])
        .with_context(|| what.to_owned())?;
    for line in &lines {
        for needle in needles {
            ensure!(line.contains(needle), "{what}: no {needle:?} in {line}");
        }
    }
    agent.kill()?;
    let (ok, text) = check(&config)?;
    ensure!(!ok, "{what}: check passed:\n{text}");
    let fail = text
        .lines()
        .find(|l| l.starts_with("FAIL broker") && l.contains("session"))
        .with_context(|| format!("{what}: no FAIL line for the session:\n{text}"))?;
    for needle in needles {
        ensure!(fail.contains(needle), "{what}: no {needle:?} in {fail}");
    }
    Ok(())
}

#[test]
fn mosquitto_recipe_certificates_work_for_mtls_with_a_v1_client_certificate() -> anyhow::Result<()>
{
    let rig = Rig::with_pki(
        "tlsc-recipe",
        |dir| openssl_pki(dir, |ca| ca.issue("server", "127.0.0.1", Some(SAN))),
        "server",
        None,
        1,
    )?;
    ensure!(x509_version(&rig.pki.path("client.pem"))? == 1, "not v1");
    ensure!(x509_version(&rig.pki.path("server.pem"))? == 3, "not v3");
    rig.pki.install_client("client")?;
    let config = rig.config(&rig.client_cert_lines())?;
    let (ok, text) = check(&config)?;
    ensure!(
        ok && text.contains("the broker accepted the session"),
        "check:\n{text}"
    );
    let mut agent = AgentProcess::start(&config)?;
    ensure!(
        wait_until(Duration::from_secs(20), || rig.online()),
        "no birth with the v1 client certificate; log:\n{}\nbroker log:\n{}",
        agent.log(),
        rig.broker.log_text()
    );
    ensure!(
        wait_until(Duration::from_secs(20), || rig
            .sub
            .all()
            .iter()
            .any(|m| m.topic.contains("/data/"))),
        "no data over mTLS; log:\n{}",
        agent.log()
    );
    agent.stop()?;
    ensure!(
        !agent.log().contains("MQTT connection failed"),
        "{}",
        agent.log()
    );
    Ok(())
}

#[test]
fn a_v1_broker_certificate_by_the_recipe_is_refused_naming_v1_and_how_to_reissue(
) -> anyhow::Result<()> {
    // `openssl x509 -req` exactly as mosquitto-tls(7) says, no extension file: X.509 v1.
    let rig = Rig::with_pki(
        "tlsc-v1",
        |dir| openssl_pki(dir, |ca| ca.issue("server", "127.0.0.1", None)),
        "server",
        None,
        0,
    )?;
    ensure!(x509_version(&rig.pki.path("server.pem"))? == 1, "not v1");
    expect_refused_with(
        &rig,
        "v1 broker certificate",
        &[
            "UnsupportedCertVersion",
            "is X.509 v1",
            "CN=127.0.0.1",
            "naming 127.0.0.1 in subjectAltName",
            "-extfile san.cnf -extensions v3",
            "subjectAltName = IP:",
        ],
    )
}

#[test]
fn a_broker_certificate_without_subject_alt_name_is_refused_naming_the_missing_san(
) -> anyhow::Result<()> {
    let needles = [
        "NoSubjectAltName",
        "has no subjectAltName",
        "rustls ignores the common name",
        "-extfile san.cnf -extensions v3",
    ];
    // rcgen: v3, common name only.
    let rig = Rig::with_pki(
        "tlsc-nosan-rcgen",
        |dir| {
            rcgen_pki(dir, |p| {
                p.subject_alt_names.clear();
            })
        },
        "server-x",
        None,
        0,
    )?;
    expect_refused_with(&rig, "rcgen, no SAN", &needles)?;
    // openssl: v3 with an extension file that has no subjectAltName.
    let rig = Rig::with_pki(
        "tlsc-nosan-openssl",
        |dir| {
            openssl_pki(dir, |ca| {
                ca.issue("server", "127.0.0.1", Some("basicConstraints = CA:FALSE"))
            })
        },
        "server",
        None,
        0,
    )?;
    ensure!(x509_version(&rig.pki.path("server.pem"))? == 3, "not v3");
    expect_refused_with(&rig, "openssl, no SAN", &needles)
}

#[test]
fn a_broker_certificate_for_another_name_is_refused_naming_both_names() -> anyhow::Result<()> {
    let needles = [
        "NotValidForName",
        "not valid for name 127.0.0.1",
        "DNS:other.example",
        "use a name it has",
    ];
    let rig = Rig::new("tlsc-name-rcgen", "server-other-name", None, 0)?;
    expect_refused_with(&rig, "rcgen, other name", &needles)?;
    let rig = Rig::with_pki(
        "tlsc-name-openssl",
        |dir| {
            openssl_pki(dir, |ca| {
                ca.issue(
                    "server",
                    "other.example",
                    Some("subjectAltName = DNS:other.example"),
                )
            })
        },
        "server",
        None,
        0,
    )?;
    expect_refused_with(&rig, "openssl, other name", &needles)
}

#[test]
fn an_expired_broker_certificate_is_refused_with_its_dates_and_the_clock() -> anyhow::Result<()> {
    let needles = [
        "(Expired)",
        "expired at 2021-01-01T00:00:00Z",
        "the gateway's clock says 20",
        "renew the broker's certificate",
        "timedatectl",
    ];
    let rig = Rig::with_pki(
        "tlsc-expired-rcgen",
        |dir| {
            rcgen_pki(dir, |p| {
                p.not_before = date_time_ymd(2020, 1, 1);
                p.not_after = date_time_ymd(2021, 1, 1);
            })
        },
        "server-x",
        None,
        0,
    )?;
    expect_refused_with(&rig, "rcgen, expired", &needles)?;
    let rig = Rig::with_pki(
        "tlsc-expired-openssl",
        |dir| {
            openssl_pki(dir, |ca| {
                ca.issue_dated(
                    "server",
                    "127.0.0.1",
                    Some(SAN),
                    "20200101000000Z",
                    "20210101000000Z",
                )
            })
        },
        "server",
        None,
        0,
    )?;
    expect_refused_with(&rig, "openssl, expired", &needles)
}

#[test]
fn a_broker_certificate_not_valid_yet_is_refused_blaming_the_clock_first() -> anyhow::Result<()> {
    let needles = [
        "(NotValidYet)",
        "is valid from 2040-01-01T00:00:00Z only",
        "the gateway's clock says 20",
        "clock is probably behind",
    ];
    let rig = Rig::with_pki(
        "tlsc-future-rcgen",
        |dir| {
            rcgen_pki(dir, |p| {
                p.not_before = date_time_ymd(2040, 1, 1);
                p.not_after = date_time_ymd(2041, 1, 1);
            })
        },
        "server-x",
        None,
        0,
    )?;
    expect_refused_with(&rig, "rcgen, not valid yet", &needles)?;
    let rig = Rig::with_pki(
        "tlsc-future-openssl",
        |dir| {
            openssl_pki(dir, |ca| {
                ca.issue_dated(
                    "server",
                    "127.0.0.1",
                    Some(SAN),
                    "20400101000000Z",
                    "20410101000000Z",
                )
            })
        },
        "server",
        None,
        0,
    )?;
    expect_refused_with(&rig, "openssl, not valid yet", &needles)
}

#[test]
fn a_broker_certificate_from_another_ca_is_refused_naming_both_cas() -> anyhow::Result<()> {
    let rig = Rig::new("tlsc-ca-rcgen", "server-impostor", None, 0)?;
    expect_refused_with(
        &rig,
        "rcgen, other CA",
        &[
            "UnknownIssuer",
            "is issued by CN=impostor CA",
            "not by the CA of [mqtt] ca_file (CN=towerlink test CA)",
            "set ca_file to the CA that signed it",
        ],
    )?;
    let rig = Rig::with_pki(
        "tlsc-ca-openssl",
        |dir| {
            openssl_pki(dir, |_| {
                let pki = Pki::at(dir)?;
                let other = OpensslCa::create(&pki, "other-ca", "other CA")?;
                other.issue("server", "127.0.0.1", Some(SAN))
            })
        },
        "server",
        None,
        0,
    )?;
    expect_refused_with(
        &rig,
        "openssl, other CA",
        &[
            "UnknownIssuer",
            "is issued by CN=other CA",
            "(CN=installer CA)",
            "set ca_file to the CA that signed it",
        ],
    )
}

#[test]
fn an_expired_gateway_certificate_is_refused_by_the_broker_and_named() -> anyhow::Result<()> {
    let needles = ["CertificateExpired", "expired or not valid yet", "-dates"];
    let rig = Rig::with_pki(
        "tlsc-client-expired-rcgen",
        |dir| {
            let (pki, ca) = Pki::with_ca(dir)?;
            let mut params = Ca::params(&["sh-ja-0001"], ExtendedKeyUsagePurpose::ClientAuth)?;
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2021, 1, 1);
            pki.add("client", &ca.sign(params)?)?;
            Ok(pki)
        },
        "server",
        None,
        0,
    )?;
    expect_refused_with(&rig, "rcgen, expired client", &needles)?;
    let rig = Rig::with_pki(
        "tlsc-client-expired-openssl",
        |dir| {
            openssl_pki(dir, |ca| {
                ca.issue("server", "127.0.0.1", Some(SAN))?;
                // The recipe's v1 client certificate, dated in the past.
                ca.issue_dated(
                    "client",
                    "sh-ja-0001",
                    None,
                    "20200101000000Z",
                    "20210101000000Z",
                )
            })
        },
        "server",
        None,
        0,
    )?;
    ensure!(x509_version(&rig.pki.path("client.pem"))? == 1, "not v1");
    expect_refused_with(&rig, "openssl, expired client", &needles)
}

/// The agent refuses to start with `[mqtt]` lines `mqtt`, and check fails, both with every
/// needle.
fn expect_start_refused(rig: &Rig, what: &str, needles: &[&str]) -> anyhow::Result<()> {
    let config = rig.config(&rig.client_cert_lines())?;
    let mut agent = AgentProcess::start(&config)?;
    ensure!(
        wait_until(Duration::from_secs(10), || !agent.is_running()),
        "{what}: the agent started"
    );
    let log = agent.log();
    for needle in needles {
        ensure!(log.contains(needle), "{what}: no {needle:?} in:\n{log}");
    }
    let (ok, text) = check(&config)?;
    ensure!(!ok, "{what}: check passed:\n{text}");
    let fail = text
        .lines()
        .find(|l| l.starts_with("FAIL broker") && l.contains("session"))
        .with_context(|| format!("{what}: no FAIL line for the session:\n{text}"))?;
    for needle in needles {
        ensure!(fail.contains(needle), "{what}: no {needle:?} in {fail}");
    }
    ensure!(
        fail.matches("openssl x509 -noout -pubkey").count() <= 1
            && fail.matches("may read the file").count() <= 1,
        "{what}: the fix is repeated: {fail}"
    );
    Ok(())
}

#[test]
fn a_key_that_is_not_the_certificates_stops_the_start_naming_both_files() -> anyhow::Result<()> {
    let needles = [
        "is not the key of mqtt.cert_file",
        "(CN=sh-ja-0001): their public keys differ",
        "openssl x509 -noout -pubkey",
    ];
    // rcgen: the gateway's certificate with the broker's key (ECDSA both).
    let rig = Rig::new("tlsc-mismatch-rcgen", "server", None, 0)?;
    rig.pki.install_client("client")?;
    std::fs::copy(rig.pki.path("server.key"), rig.pki.path("gw.key"))?;
    expect_start_refused(&rig, "rcgen, wrong key", &needles)?;
    // openssl: the recipe's v1 certificate with another RSA key.
    let rig = Rig::with_pki(
        "tlsc-mismatch-openssl",
        |dir| {
            openssl_pki(dir, |ca| {
                ca.issue("server", "127.0.0.1", Some(SAN))?;
                ca.issue("other", "sh-ja-0002", None)
            })
        },
        "server",
        None,
        0,
    )?;
    rig.pki.install_client("client")?;
    std::fs::copy(rig.pki.path("other.key"), rig.pki.path("gw.key"))?;
    expect_start_refused(&rig, "openssl, wrong key", &needles)
}

#[test]
fn an_unreadable_key_file_stops_the_start_naming_the_file_and_the_fix() -> anyhow::Result<()> {
    let rig = Rig::new("tlsc-unreadable", "server", None, 0)?;
    rig.pki.install_client("client")?;
    // A directory where the key should be: unreadable even for root.
    std::fs::remove_file(rig.pki.path("gw.key"))?;
    std::fs::create_dir(rig.pki.path("gw.key"))?;
    expect_start_refused(
        &rig,
        "key file is a directory",
        &["cannot read mqtt.key_file", "gw.key", "may read the file"],
    )
}
