//! Client certificates renewed without a visit (issue 15, item 4), against a real Mosquitto
//! with `require_certificate true` (the `towerlink_e2e::tls` rig).
//!
//! - A `.new` pair the broker accepts replaces the old one (files renamed), `health` says
//!   `tls.renewal: "none"` and the new certificate's days left, `towerlink check` warns under
//!   30 days.
//! - A `.new` pair signed by another CA is refused: the agent comes up on the old pair in the
//!   same back-off step (no "MQTT connection failed" line, no back-off wait), `health` says
//!   `refused: <cause>`, the refused pair is not tried again on the next reconnect, and is
//!   tried once it changes.
//! - `towerlink cert request` writes a key (mode 600) and a CSR that `openssl req -verify`
//!   accepts and `openssl x509 -req` signs; the certificate sent with a signed
//!   (`"sigv": 2`) `cert_install` is installed and renews the session. `cert_install`
//!   unsigned, in the v1 form, or with a certificate for another key is refused.
//!
//! Reconnects are forced the way a broker does it: another client connects under the
//! agent's client id (a raw MQTT CONNECT on the broker's plain listener), so Mosquitto
//! takes the session over and the agent reconnects.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use serde_json::{json, Value};
use towerlink_e2e::tls::rcgen::{date_time_ymd, ExtendedKeyUsagePurpose};
use towerlink_e2e::tls::{openssl, Ca, OpensslCa, Pki, Rig};
use towerlink_e2e::{agent_command, wait_until, AgentProcess};

/// The platform's command key (the seed of tests/signed_cmd.rs and tests/config_apply.rs).
const SEED_HEX: &str = "0707070707070707070707070707070707070707070707070707070707070707";
const PUBLIC_KEY: &str = "ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c";

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The rcgen PKI of the harness plus `client-next` (same CA, CN sh-ja-0001, valid for
/// `days` from now).
fn pki_with_next(dir: &Path, days: u64) -> anyhow::Result<Pki> {
    let (pki, ca) = Pki::with_ca(dir)?;
    let mut params = Ca::params(&["sh-ja-0001"], ExtendedKeyUsagePurpose::ClientAuth)?;
    params.not_before = date_time_ymd(1970, 1, 1) + Duration::from_secs(now_s() - 3600);
    params.not_after = date_time_ymd(1970, 1, 1) + Duration::from_secs(now_s() + days * 86_400);
    pki.add("client-next", &ca.sign(params)?)?;
    Ok(pki)
}

/// Copies `<name>.pem` / `<name>.key` to the pending `gw.pem.new` / `gw.key.new`.
fn stage(pki: &Pki, name: &str) -> anyhow::Result<()> {
    for ext in ["pem", "key"] {
        let tmp = pki.path(&format!("gw.{ext}.new.tmp"));
        std::fs::copy(pki.path(&format!("{name}.{ext}")), &tmp)?;
        std::fs::rename(&tmp, pki.path(&format!("gw.{ext}.new")))?;
    }
    Ok(())
}

fn same(a: &Path, b: &Path) -> bool {
    matches!((std::fs::read(a), std::fs::read(b)), (Ok(x), Ok(y)) if x == y)
}

/// The rig's configuration with the client certificate, every health report full, and
/// `extra` appended.
fn config(rig: &Rig, extra: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = rig.config(&rig.client_cert_lines())?;
    let text = std::fs::read_to_string(&path)?
        .replace("interval = \"1s\"\n", "interval = \"1s\"\nfull = \"0s\"\n");
    std::fs::write(&path, format!("{text}\n{extra}"))?;
    Ok(path)
}

/// The `tls` object of the newest health report.
fn health_tls(rig: &Rig) -> Option<Value> {
    rig.sub
        .all()
        .iter()
        .rev()
        .find(|m| m.topic.ends_with("/health"))
        .and_then(|m| m.json.get("tls").cloned())
}

/// Waits until the newest health report's `tls.renewal` satisfies `ok`; returns `tls`.
fn wait_renewal(rig: &Rig, what: &str, ok: impl Fn(&str) -> bool) -> anyhow::Result<Value> {
    wait_tls(rig, what, |t| t["renewal"].as_str().is_some_and(&ok))
}

/// Waits until the newest health report's `tls` satisfies `ok`; returns it.
fn wait_tls(rig: &Rig, what: &str, ok: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
    let mut last = None;
    let seen = wait_until(Duration::from_secs(20), || {
        last = health_tls(rig);
        last.as_ref().is_some_and(&ok)
    });
    ensure!(seen, "{what}: health tls is {last:?}");
    last.context("no health")
}

/// Takes the agent's session over: a raw MQTT 3.1.1 CONNECT under client id `gw` on the
/// broker's plain listener, then a clean DISCONNECT. Mosquitto drops the agent's session.
fn kick(port: u16, gw: &str) -> anyhow::Result<()> {
    let id = gw.as_bytes();
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30];
    body.extend(u16::try_from(id.len())?.to_be_bytes());
    body.extend(id);
    ensure!(body.len() < 128, "client id too long for this CONNECT");
    let mut packet = vec![0x10, u8::try_from(body.len())?];
    packet.extend(body);
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(&packet)?;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack)?;
    ensure!(ack == [0x20, 2, 0, 0], "CONNACK {ack:?}");
    s.write_all(&[0xe0, 0])?;
    Ok(())
}

fn sessions_up(agent: &AgentProcess) -> usize {
    agent.log().matches("MQTT session up").count()
}

#[test]
fn an_accepted_new_pair_replaces_the_old_one() -> anyhow::Result<()> {
    let rig = Rig::with_pki("cert-renew-ok", |d| pki_with_next(d, 20), "server", None, 0)?;
    rig.pki.install_client("client")?;
    stage(&rig.pki, "client-next")?;
    let config = config(&rig, "")?;
    let mut agent = AgentProcess::start(&config)?;
    ensure!(
        wait_until(Duration::from_secs(20), || rig.online()),
        "not online; log:\n{}",
        agent.log()
    );
    let tls = wait_renewal(&rig, "after the renewal", |r| r == "none")?;
    let (pem, key) = (rig.pki.path("gw.pem"), rig.pki.path("gw.key"));
    ensure!(
        same(&pem, &rig.pki.path("client-next.pem"))
            && same(&key, &rig.pki.path("client-next.key")),
        "the new pair did not replace the old one; log:\n{}",
        agent.log()
    );
    ensure!(
        !rig.pki.path("gw.pem.new").exists() && !rig.pki.path("gw.key.new").exists(),
        "the .new files are still there"
    );
    let days = tls["cert_days_left"].as_i64().context("cert_days_left")?;
    ensure!(
        (19..=20).contains(&days),
        "cert_days_left {days}, want 19..=20"
    );
    ensure!(
        agent
            .log()
            .contains("the renewed client certificate is in use"),
        "{}",
        agent.log()
    );
    ensure!(sessions_up(&agent) == 1, "{}", agent.log());

    // check: the session works on the renewed pair, and the 20 days are a warning.
    let out = agent_command()?
        .args(["check", "--config"])
        .arg(&config)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "check failed:\n{text}");
    ensure!(
        text.lines()
            .any(|l| l.starts_with("WARN client certificate")
                && l.contains("expires in")
                && l.contains("cert request")),
        "no WARN for a certificate under 30 days:\n{text}"
    );
    agent.stop()?;
    ensure!(
        rig.sub.violations().is_empty(),
        "{:?}",
        rig.sub.violations()
    );
    Ok(())
}

#[test]
fn a_refused_new_pair_leaves_the_old_in_use_and_the_session_up() -> anyhow::Result<()> {
    let rig = Rig::with_pki(
        "cert-renew-no",
        |d| pki_with_next(d, 400),
        "server",
        None,
        0,
    )?;
    rig.pki.install_client("client")?;
    stage(&rig.pki, "client-impostor")?;
    let config = config(&rig, "")?;
    let mut agent = AgentProcess::start(&config)?;
    // The current pair in the same back-off step: well within the first 1 s back-off.
    ensure!(
        wait_until(Duration::from_secs(20), || rig.online()),
        "not online on the old pair; log:\n{}",
        agent.log()
    );
    let tls = wait_renewal(&rig, "refused", |r| r.starts_with("refused: "))?;
    let log = agent.log();
    ensure!(
        !log.contains("MQTT connection failed"),
        "the fallback waited for the back-off:\n{log}"
    );
    ensure!(
        log.matches("no session on the renewed certificate pair")
            .count()
            == 1,
        "{log}"
    );
    ensure!(
        same(&rig.pki.path("gw.pem"), &rig.pki.path("client.pem"))
            && same(&rig.pki.path("gw.key"), &rig.pki.path("client.key")),
        "the old pair was replaced"
    );
    ensure!(
        rig.pki.path("gw.pem.new").exists(),
        "the refused pair was removed"
    );
    ensure!(
        tls["cert_days_left"].as_i64().is_some_and(|d| d > 300),
        "{tls}"
    );

    // A reconnect does not try the refused pair again.
    kick(rig.broker.plain_port, &rig.gw)?;
    ensure!(
        wait_until(Duration::from_secs(20), || sessions_up(&agent) >= 2),
        "no second session; log:\n{}",
        agent.log()
    );
    let log = agent.log();
    ensure!(
        log.matches("no session on the renewed certificate pair")
            .count()
            == 1,
        "the refused pair was tried again on reconnect:\n{log}"
    );
    ensure!(rig.pki.path("gw.pem.new").exists(), "refused pair gone");

    // Changed files are tried: a pair of the right CA is accepted at the next reconnect.
    stage(&rig.pki, "client-next")?;
    kick(rig.broker.plain_port, &rig.gw)?;
    wait_renewal(&rig, "changed pair", |r| r == "none")?;
    ensure!(
        same(&rig.pki.path("gw.pem"), &rig.pki.path("client-next.pem")),
        "the changed pair did not replace the old one; log:\n{}",
        agent.log()
    );
    ensure!(agent.is_running(), "the agent exited");
    agent.stop()?;
    ensure!(
        rig.sub.violations().is_empty(),
        "{:?}",
        rig.sub.violations()
    );
    Ok(())
}

/// Signs `cmd` with `tests/platform_sign.py` (v2 form) for gateway `gw`.
fn sign(cmd: &Value, gw: &str) -> anyhow::Result<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("platform_sign.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .args([SEED_HEX, gw])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("python3 platform_sign.py")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(cmd.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("platform_sign.py: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Publishes `cmd` on the gateway's `cmd` and waits for the reply with its id.
fn command(rig: &Rig, cmd: &Value) -> anyhow::Result<Value> {
    let id = cmd["id"].as_str().context("id")?.to_owned();
    rig.sub.publish(
        &format!("towerlink/v1/{}/cmd", rig.gw),
        cmd.to_string().as_bytes(),
    );
    let mut reply = None;
    wait_until(Duration::from_secs(20), || {
        reply = rig
            .sub
            .all()
            .into_iter()
            .find(|m| m.topic.ends_with("/reply") && m.json["id"] == id.as_str())
            .map(|m| m.json);
        reply.is_some()
    });
    reply.with_context(|| format!("no reply to {id}"))
}

#[test]
fn cert_request_and_a_signed_cert_install_renew_through_openssl() -> anyhow::Result<()> {
    let rig = Rig::with_pki(
        "cert-renew-csr",
        |dir| {
            let pki = Pki::at(dir)?;
            let ca = OpensslCa::create(&pki, "ca", "platform CA")?;
            ca.issue("client", "sh-ja-0001", None)?;
            ca.issue("server", "127.0.0.1", Some("subjectAltName = IP:127.0.0.1"))?;
            Ok(pki)
        },
        "server",
        None,
        0,
    )?;
    rig.pki.install_client("client")?;
    let config = config(
        &rig,
        &format!("[commands]\npublic_key = \"{PUBLIC_KEY}\"\n"),
    )?;
    let mut agent = AgentProcess::start(&config)?;
    ensure!(
        wait_until(Duration::from_secs(20), || rig.online()),
        "not online; log:\n{}",
        agent.log()
    );
    wait_renewal(&rig, "before", |r| r == "none")?;

    // towerlink cert request: a key (600) and a CSR, here and on stdout.
    let out = agent_command()?
        .args(["cert", "request", "--config"])
        .arg(&config)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "cert request failed: {stderr}");
    let csr = rig.pki.path("gw.pem.csr");
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        printed.starts_with("-----BEGIN CERTIFICATE REQUEST-----")
            && std::fs::read_to_string(&csr)? == printed,
        "the CSR printed is not the file's:\n{printed}"
    );
    let key_new = rig.pki.path("gw.key.new");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key_new)?.permissions());
    ensure!(mode & 0o777 == 0o600, "key mode {:o}", mode & 0o777);
    ensure!(
        !std::fs::read_to_string(&key_new)?.is_empty() && !printed.contains("PRIVATE"),
        "key or CSR wrong"
    );
    // A second request does not replace the pending key.
    let again = agent_command()?
        .args(["cert", "request", "--config"])
        .arg(&config)
        .output()?;
    ensure!(
        !again.status.success() && String::from_utf8_lossy(&again.stderr).contains("--force"),
        "a second request replaced the pending key"
    );

    // The platform's CA: openssl verifies the CSR's signature and signs it.
    let dir = rig.pki.path("");
    openssl(&dir, &["req", "-verify", "-noout", "-in", "gw.pem.csr"])?;
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "gw.pem.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "issued.pem",
            "-days",
            "90",
        ],
    )?;
    let issued = std::fs::read_to_string(rig.pki.path("issued.pem"))?;

    // Unsigned and v1-signed cert_install are refused; so is another key's certificate.
    let r = command(
        &rig,
        &json!({"id": "ci-unsigned", "op": "cert_install", "cert": issued}),
    )?;
    ensure!(
        r["ok"] == false && r["error"].as_str().is_some_and(|e| e.contains("unsigned")),
        "{r}"
    );
    let v1 = json!({"id": "ci-v1", "op": "cert_install", "cert": issued,
        "ts": now_s() * 1000, "sig": "0".repeat(128)});
    let r = command(&rig, &v1)?;
    ensure!(
        r["ok"] == false && r["error"].as_str().is_some_and(|e| e.contains("v2 form")),
        "{r}"
    );
    let old = std::fs::read_to_string(rig.pki.path("client.pem"))?;
    let r = command(
        &rig,
        &sign(
            &json!({"id": "ci-other", "op": "cert_install", "cert": old}),
            &rig.gw,
        )?,
    )?;
    ensure!(
        r["ok"] == false
            && r["error"]
                .as_str()
                .is_some_and(|e| e.contains("not for the pending key")),
        "{r}"
    );
    ensure!(
        !rig.pki.path("gw.pem.new").exists(),
        "a refused certificate was written"
    );
    ensure!(sessions_up(&agent) == 1, "{}", agent.log());

    // Signed v2: installed, and the uplink reconnects on the new pair.
    let r = command(
        &rig,
        &sign(
            &json!({"id": "ci-ok", "op": "cert_install", "cert": issued}),
            &rig.gw,
        )?,
    )?;
    ensure!(r["ok"] == true, "{r}");
    let result = &r["result"];
    ensure!(
        result["installed"]
            .as_str()
            .is_some_and(|p| p.ends_with("gw.pem.new"))
            && result["renewal"] == "pending"
            && result["days_left"]
                .as_i64()
                .is_some_and(|d| (89..=90).contains(&d))
            && result["subject"] == format!("CN={}", rig.gw),
        "{r}"
    );
    ensure!(
        wait_until(Duration::from_secs(20), || same(
            &rig.pki.path("gw.pem"),
            &rig.pki.path("issued.pem")
        )),
        "the installed certificate did not replace the old one; log:\n{}",
        agent.log()
    );
    // The health of the renewed session: the new certificate's 90 days, nothing pending.
    wait_tls(&rig, "after cert_install", |t| {
        t["renewal"] == "none"
            && t["cert_days_left"]
                .as_i64()
                .is_some_and(|d| (89..=90).contains(&d))
    })?;
    ensure!(
        !key_new.exists() && wait_until(Duration::from_secs(10), || sessions_up(&agent) == 2),
        "log:\n{}",
        agent.log()
    );
    let log = agent.log();
    ensure!(!log.contains("MQTT connection failed"), "{log}");
    ensure!(
        !log.contains("BEGIN CERTIFICATE"),
        "a certificate went into the log"
    );
    agent.stop()?;
    ensure!(
        rig.sub.violations().is_empty(),
        "{:?}",
        rig.sub.violations()
    );
    Ok(())
}
