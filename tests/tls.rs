//! The secure uplink (issue 7) against a real Mosquitto started by each test on free loopback
//! ports: a TLS listener with `require_certificate true` for the agent, and a plain listener
//! for the platform-like subscriber (the rig: `towerlink_e2e::tls`). Every certificate is
//! generated at test time with rcgen (a CA, the broker's certificate for 127.0.0.1, the
//! gateway's client certificate, and impostors: a second CA, a broker certificate for
//! another name).
//!
//! Covered: the agent connects with its client certificate and publishes (birth and data from
//! a simulated panel node); without a client certificate, with one from another CA, against a
//! broker certificate for another name or from another CA, it is refused with a clear error
//! in its log, keeps running and retries with back-off; what it queued meanwhile arrives, every
//! `seq` of it, once the right certificate is in place (swapped on disk and picked up at the
//! next attempt, or after a restart). Finally no log line or reply of a run with a user name,
//! a password file and a client key ever shows the password or the key.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context};
use towerlink_e2e::tls::{mosquitto_password_file, Pki, Rig};
use towerlink_e2e::{wait_until, AgentProcess, Received};

/// See [`Rig::expect_refused`].
fn expect_refused(
    rig: &Rig,
    agent: &mut AgentProcess,
    n: usize,
    needle: &str,
) -> anyhow::Result<()> {
    rig.expect_refused(agent, n, needle).map(|_| ())
}

/// Seqs of queued messages (data, events, replies) the subscriber received.
fn seqs(all: &[Received]) -> BTreeSet<u64> {
    all.iter()
        .filter(|m| {
            m.topic.contains("/data/") || m.topic.contains("/event/") || m.topic.ends_with("/reply")
        })
        .filter_map(|m| m.json["seq"].as_u64())
        .collect()
}

/// `last_seq=N` of the agent's "stopped" line.
fn last_seq(log: &str) -> Option<u64> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("towerlink agent stopped"))?;
    let at = line.find("last_seq=")? + "last_seq=".len();
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Stops the agent cleanly and checks that every seq it ever issued reached the subscriber.
fn stop_and_check_every_seq(
    rig: &Rig,
    agent: &mut AgentProcess,
    at_least: u64,
) -> anyhow::Result<u64> {
    agent.stop()?;
    let log = agent.log();
    let last = last_seq(&log).with_context(|| format!("no last_seq in the log:\n{log}"))?;
    ensure!(
        last >= at_least,
        "only {last} messages issued (expected at least {at_least}); log:\n{log}"
    );
    let complete = wait_until(Duration::from_secs(20), || {
        let got = seqs(&rig.sub.all());
        (1..=last).all(|s| got.contains(&s))
    });
    let got = seqs(&rig.sub.all());
    let missing: Vec<u64> = (1..=last).filter(|s| !got.contains(s)).collect();
    ensure!(
        complete,
        "seqs missing at the subscriber: {missing:?} (last issued {last})"
    );
    Ok(last)
}

#[test]
fn client_certificate_from_another_ca_is_refused_until_the_right_one_is_swapped_in(
) -> anyhow::Result<()> {
    let rig = Rig::new("tls-swap", "server", None, 1)?;
    rig.pki.install_client("client-impostor")?;
    let config = rig.config(&rig.client_cert_lines())?;
    let mut agent = AgentProcess::start(&config)?;
    // Mosquitto refuses the handshake; rustls reports the broker's alert.
    expect_refused(&rig, &mut agent, 3, "UnknownCA")?;
    ensure!(
        agent
            .log()
            .contains("does not trust the client certificate"),
        "no hint in the log"
    );
    // The node kept producing: windows are queued while the broker refuses us. Measure the
    // backlog (read-only, from the store on disk) before the right certificate goes in.
    let store = rig.dir.path().join("store");
    let mut backlog = Default::default();
    ensure!(
        wait_until(Duration::from_secs(20), || {
            backlog = towerlink_e2e::store_inspect(&store)
                .map(|(live, _)| live)
                .unwrap_or_default();
            backlog.len() >= 5
        }),
        "no backlog of 5 queued while refused: {backlog:?}"
    );
    ensure!(
        seqs(&rig.sub.all()).is_empty(),
        "something got through with the impostor certificate"
    );
    let queued_before = backlog.last().copied().unwrap_or(0);

    rig.pki.install_client("client")?;
    ensure!(
        wait_until(Duration::from_secs(40), || rig.online()),
        "no birth after the right certificate was installed; log:\n{}",
        agent.log()
    );
    // Health (1 s) shows the failed attempts before this session.
    let retried = wait_until(Duration::from_secs(10), || {
        rig.sub.all().iter().any(|m| {
            m.topic.ends_with("/health")
                && m.json["mqtt"]["connection_errors"].as_u64() >= Some(3)
                && m.json["mqtt"]["connects"].as_u64() == Some(1)
                && m.json["mqtt"]["insecure"].as_bool() == Some(false)
        })
    });
    ensure!(retried, "health does not report the failed attempts");
    ensure!(
        wait_until(Duration::from_secs(10), || rig
            .sub
            .all()
            .iter()
            .any(|m| m.topic.contains("/data/"))),
        "no data after connecting"
    );
    stop_and_check_every_seq(&rig, &mut agent, queued_before)?;
    // Exactly the messages queued while refused came through, once the certificate was right.
    let got = seqs(&rig.sub.all());
    let lost: Vec<&u64> = backlog.iter().filter(|s| !got.contains(s)).collect();
    ensure!(
        lost.is_empty(),
        "backlog messages queued while refused never arrived: {lost:?} of {backlog:?}"
    );
    Ok(())
}

#[test]
fn no_client_certificate_is_refused_and_a_restart_with_one_delivers_the_backlog(
) -> anyhow::Result<()> {
    let rig = Rig::new("tls-nocert", "server", None, 1)?;
    let mut agent = AgentProcess::start(&rig.config("")?)?;
    expect_refused(&rig, &mut agent, 2, "CertificateRequired")?;
    ensure!(
        agent.log().contains("set [mqtt] cert_file and key_file"),
        "no hint in the log"
    );
    // Let a backlog build (200 ms windows), then stop: it stays in the store.
    std::thread::sleep(Duration::from_secs(2));
    agent.stop()?;
    let backlog = last_seq(&agent.log()).context("no last_seq at the first stop")?;
    ensure!(backlog >= 5, "only {backlog} messages queued while refused");
    ensure!(
        seqs(&rig.sub.all()).is_empty(),
        "something got through without a certificate"
    );

    rig.pki.install_client("client")?;
    let mut agent = AgentProcess::start(&rig.config(&rig.client_cert_lines())?)?;
    ensure!(
        wait_until(Duration::from_secs(20), || rig.online()),
        "no birth with the client certificate; log:\n{}\nbroker log:\n{}",
        agent.log(),
        rig.broker.log_text()
    );
    // The backlog replays, then fresh windows follow it.
    ensure!(
        wait_until(Duration::from_secs(20), || seqs(&rig.sub.all())
            .contains(&(backlog + 1))),
        "nothing new after the backlog"
    );
    stop_and_check_every_seq(&rig, &mut agent, backlog + 1)?;
    Ok(())
}

#[test]
fn a_broker_certificate_for_another_name_or_from_another_ca_is_refused() -> anyhow::Result<()> {
    for (server, needle) in [
        ("server-other-name", "not valid for name"),
        ("server-impostor", "UnknownIssuer"),
    ] {
        let rig = Rig::new("tls-server", server, None, 1)?;
        rig.pki.install_client("client")?;
        let mut agent = AgentProcess::start(&rig.config(&rig.client_cert_lines())?)?;
        expect_refused(&rig, &mut agent, 2, needle)
            .with_context(|| format!("broker certificate {server}"))?;
        agent.kill()?;
    }
    Ok(())
}

#[test]
fn unreadable_or_invalid_tls_files_stop_the_start_naming_the_file() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::new(&dir.path().join("pki"))?;
    std::fs::write(
        pki.path("garbage.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!!\n-----END CERTIFICATE-----\n",
    )?;
    let cases = [
        (
            format!("ca_file = \"{}\"", pki.path("missing.pem").display()),
            "missing.pem",
        ),
        (
            format!("ca_file = \"{}\"", pki.path("garbage.pem").display()),
            "garbage.pem",
        ),
        (
            format!(
                "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"",
                pki.path("ca.pem").display(),
                pki.path("client.pem").display(),
                pki.path("ca.pem").display()
            ),
            "mqtt.key_file",
        ),
    ];
    for (i, (mqtt, needle)) in cases.iter().enumerate() {
        let config = dir.path().join(format!("t{i}.toml"));
        std::fs::write(
            &config,
            format!(
                "[gateway]\nid = \"gw-{i}\"\n[mqtt]\nurl = \"mqtts://127.0.0.1:1\"\n{mqtt}\n[store]\npath = \"{}\"\n",
                dir.path().join(format!("store{i}")).display()
            ),
        )?;
        let mut agent = AgentProcess::start(&config)?;
        ensure!(
            wait_until(Duration::from_secs(10), || !agent.is_running()),
            "the agent started with bad TLS files ({mqtt})"
        );
        let log = agent.log();
        ensure!(
            log.contains(needle),
            "{mqtt}: the error does not name {needle:?}:\n{log}"
        );
        ensure!(
            !log.contains("not base64"),
            "the error quotes the file:\n{log}"
        );
    }
    Ok(())
}

/// Replies received so far.
fn replies(rig: &Rig) -> Vec<serde_json::Value> {
    rig.sub
        .all()
        .into_iter()
        .filter(|m| m.topic.ends_with("/reply"))
        .map(|m| m.json)
        .collect()
}

#[test]
fn commands_are_refused_clearly_and_no_secret_ever_appears_in_logs_or_replies() -> anyhow::Result<()>
{
    const PASSWORD: &str = "Tl-s3cret-Pa55-9f2c";
    const WRONG: &str = "wrong-Pa55-77ab";
    let setup = tempfile::tempdir()?;
    let passwd = mosquitto_password_file(setup.path(), "sh-ja-0001", PASSWORD)?;
    let rig = Rig::new("tls-secrets", "server", Some(&passwd), 1)?;
    rig.pki.install_client("client")?;
    let (password_file, mqtt) = rig.credential_lines("sh-ja-0001");
    let key_material: Vec<String> = std::fs::read_to_string(rig.pki.path("gw.key"))?
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(str::to_owned)
        .collect();
    ensure!(!key_material.is_empty(), "no key lines to look for");

    // A wrong password: refused by the broker, retried, and never shown.
    std::fs::write(&password_file, format!("{WRONG}\n"))?;
    let config = rig.config(&mqtt)?;
    // 1 command/s after a burst of 20, so the flood below is limited however slow the machine.
    let text = std::fs::read_to_string(&config)?;
    std::fs::write(
        &config,
        format!("{text}\n[commands]\nrate = 1\nburst = 20\n"),
    )?;
    let mut agent = AgentProcess::start(&config)?;
    expect_refused(&rig, &mut agent, 2, "NotAuthorized")?;
    ensure!(
        agent
            .log()
            .contains("check [mqtt] username and password_file"),
        "no hint in the log"
    );
    agent.stop()?;

    std::fs::write(&password_file, format!("{PASSWORD}\n"))?;
    let mut agent = AgentProcess::start(&config)?;
    ensure!(
        wait_until(Duration::from_secs(20), || rig.online()),
        "no session with the right password; log:\n{}",
        agent.log()
    );
    let cmd = format!("towerlink/v1/{}/cmd", rig.gw);
    let big = format!(
        r#"{{"id":"c-big","op":"ping","pad":"{}"}}"#,
        "x".repeat(5000)
    );
    let cases: [(&str, &str, Option<&str>); 9] = [
        ("c-ping", r#"{"id":"c-ping","op":"ping"}"#, None),
        ("c-config", r#"{"id":"c-config","op":"config"}"#, None),
        (
            "c-field",
            r#"{"id":"c-field","op":"ping","sudo":true}"#,
            Some("unknown field"),
        ),
        ("c-op", r#"{"id":"c-op","op":"reboot"}"#, Some("unknown op")),
        (
            "c-dev",
            r#"{"id":"c-dev","op":"identify","dev":"lift-9"}"#,
            Some("unknown device"),
        ),
        (
            "c-write",
            r#"{"id":"c-write","op":"write_register","dev":"lift-1"}"#,
            Some("never writes"),
        ),
        ("", r#"{"id":"c-json","op":"ping""#, Some("malformed")),
        // Over the 4 KiB command limit but parseable (under config_apply's own limit): the
        // refusal names the command.
        ("c-big", big.as_str(), Some("too large")),
        ("c-type", r#"{"id":"c-type","op":7}"#, Some("malformed")),
    ];
    for (_, payload, _) in &cases {
        rig.sub.publish(&cmd, payload.as_bytes());
    }
    ensure!(
        wait_until(Duration::from_secs(15), || replies(&rig).len()
            >= cases.len()),
        "replies: {:?}",
        replies(&rig)
    );
    let got = replies(&rig);
    for (id, _, refusal) in &cases {
        let matching = |r: &&serde_json::Value| {
            r["id"] == *id
                && match refusal {
                    None => r["ok"] == true,
                    Some(needle) => {
                        r["ok"] == false && r["error"].as_str().is_some_and(|e| e.contains(needle))
                    }
                }
        };
        ensure!(
            got.iter().any(|r| matching(&r)),
            "no reply to {id:?} matching {refusal:?}: {got:?}"
        );
    }
    let shown = got
        .iter()
        .find(|r| r["id"] == "c-config")
        .map(|r| r["result"]["mqtt"].clone())
        .unwrap_or_default();
    ensure!(
        shown["username"] == "sh-ja-0001" && shown["password_file"].is_string(),
        "config reply: {shown}"
    );

    // A flood: at most the bucket (20) plus 1/s pass, the rest are answered "rate limited".
    let flood_started = std::time::Instant::now();
    for i in 0..40 {
        rig.sub
            .publish(&cmd, format!(r#"{{"id":"f{i}","op":"ping"}}"#).as_bytes());
    }
    ensure!(
        wait_until(Duration::from_secs(15), || {
            replies(&rig)
                .iter()
                .filter(|r| r["id"].as_str().is_some_and(|id| id.starts_with('f')))
                .count()
                >= 40
        }),
        "not every flooded command was answered"
    );
    let limited = replies(&rig)
        .iter()
        .filter(|r| {
            r["error"]
                .as_str()
                .is_some_and(|e| e.contains("rate limited"))
        })
        .count();
    let admitted_at_most = 20 + flood_started.elapsed().as_secs() as usize + 1;
    // The bucket held 20; the commands above took at most one token each, and it refills
    // meanwhile: at least 20 - those pass at once, so a smaller burst shows.
    let admitted_at_least = 20 - cases.len();
    ensure!(
        limited < 40 && (admitted_at_least..=admitted_at_most).contains(&(40 - limited)),
        "{limited} of 40 rate limited (burst 20, 1/s: {admitted_at_least}..={admitted_at_most} admitted)"
    );
    ensure!(
        wait_until(Duration::from_secs(10), || rig.sub.all().iter().any(|m| {
            m.topic.ends_with("/health")
                && m.json["commands"]["rate_limited"].as_u64() == Some(limited as u64)
        })),
        "health does not count {limited} rate-limited commands"
    );
    agent.stop()?;

    let log = agent.log();
    let everything: Vec<String> = log
        .lines()
        .map(str::to_owned)
        .chain(rig.sub.all().iter().map(|m| m.json.to_string()))
        .collect();
    ensure!(everything.len() > 50, "too little to scan");
    for line in &everything {
        for secret in [PASSWORD, WRONG]
            .into_iter()
            .chain(key_material.iter().map(String::as_str))
        {
            ensure!(!line.contains(secret), "a secret leaked: {line}");
        }
    }
    Ok(())
}

#[test]
fn check_verifies_the_tls_session_with_the_configured_certificate() -> anyhow::Result<()> {
    let rig = Rig::new("tls-check", "server", None, 1)?;
    let bin = towerlink_e2e::binary("towerlink-agent", "towerlink")?;
    let run = |config: &Path| -> anyhow::Result<(bool, String)> {
        let out = std::process::Command::new(&bin)
            .args(["check", "--config"])
            .arg(config)
            .output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ))
    };
    // Without a client certificate the broker (require_certificate) refuses the session.
    let (ok, text) = run(&rig.config("")?)?;
    ensure!(!ok, "check passed without a client certificate:\n{text}");
    ensure!(
        text.lines()
            .any(|l| l.starts_with("FAIL broker") && l.contains("session")),
        "{text}"
    );
    // With it, the session is accepted.
    rig.pki.install_client("client")?;
    let (_, text) = run(&rig.config(&rig.client_cert_lines())?)?;
    ensure!(
        text.lines()
            .any(|l| l.starts_with("OK") && l.contains("the broker accepted the session")),
        "{text}"
    );
    Ok(())
}

#[test]
fn check_verifies_the_credentials() -> anyhow::Result<()> {
    const PASSWORD: &str = "check-Pa55-41d2";
    let setup = tempfile::tempdir()?;
    let passwd = mosquitto_password_file(setup.path(), "sh-ja-0001", PASSWORD)?;
    let rig = Rig::new("tls-check-creds", "server", Some(&passwd), 1)?;
    rig.pki.install_client("client")?;
    let (password_file, mqtt) = rig.credential_lines("sh-ja-0001");
    let bin = towerlink_e2e::binary("towerlink-agent", "towerlink")?;
    let run = |config: &Path| -> anyhow::Result<(bool, String)> {
        let out = Command::new(&bin)
            .args(["check", "--config"])
            .arg(config)
            .output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ))
    };
    std::fs::write(&password_file, "wrong-password\n")?;
    std::fs::set_permissions(
        &password_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    let (ok, text) = run(&rig.config(&mqtt)?)?;
    ensure!(!ok, "check passed with a wrong password:\n{text}");
    ensure!(
        text.lines()
            .any(|l| l.starts_with("FAIL broker") && l.contains("refused")),
        "{text}"
    );
    ensure!(
        !text.contains("wrong-password"),
        "the password leaked into check's output"
    );
    std::fs::write(&password_file, format!("{PASSWORD}\n"))?;
    let (ok, text) = run(&rig.config(&mqtt)?)?;
    ensure!(ok, "check failed with the right password:\n{text}");
    ensure!(
        !text.contains(PASSWORD),
        "the password leaked into check's output"
    );
    Ok(())
}

/// Connects on the broker's plain listener as `client_id` and leaves: the broker drops the
/// session that had that client id (MQTT's session take-over), so it has to reconnect.
fn take_over(port: u16, client_id: &str) -> anyhow::Result<()> {
    let opts = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
    let (client, mut connection) = rumqttc::Client::new(opts, 10);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        match connection.recv_timeout(Duration::from_millis(500)) {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)))) => {
                let _ = client.disconnect();
                return Ok(());
            }
            Ok(Err(e)) => anyhow::bail!("take-over connection: {e}"),
            _ => {}
        }
    }
    anyhow::bail!("no CONNACK for the take-over connection")
}

/// README: "The files are read again before every connection attempt ... (if a re-read
/// fails, the last good files are kept and the error logged)". A renewal gone wrong leaves
/// an unreadable certificate and key; the next reconnect still gets in, with the old ones.
#[test]
fn a_failed_reread_of_the_tls_files_keeps_the_last_good_ones() -> anyhow::Result<()> {
    let rig = Rig::new("tls-reread", "server", None, 1)?;
    rig.pki.install_client("client")?;
    let config = rig.config(&rig.client_cert_lines())?;
    let mut agent = AgentProcess::start(&config)?;
    ensure!(
        wait_until(Duration::from_secs(20), || rig.online()),
        "no session; log:\n{}",
        agent.log()
    );
    let births = |rig: &Rig| {
        rig.sub
            .all()
            .iter()
            .filter(|m| m.topic.ends_with("/state") && m.json["state"] == "online")
            .count()
    };
    ensure!(
        wait_until(Duration::from_secs(20), || !seqs(&rig.sub.all()).is_empty()),
        "no data"
    );
    let before = births(&rig);

    rig.pki
        .write("gw.pem", "-----BEGIN CERTIFICATE-----\nnot base64 at all\n")?;
    rig.pki.write("gw.key", "")?;
    take_over(rig.broker.plain_port, &rig.gw)?;
    let reloaded = "cannot reload the TLS files; using the last good ones";
    ensure!(
        wait_until(Duration::from_secs(30), || agent.log().contains(reloaded)
            && births(&rig) > before),
        "no reconnect with the last good files (reload error logged: {}); log:\n{}",
        agent.log().contains(reloaded),
        agent.log()
    );
    // The error names the file it could not read.
    ensure!(
        agent
            .log()
            .lines()
            .any(|l| l.contains(reloaded) && l.contains("gw.pem")),
        "the reload error does not name the file; log:\n{}",
        agent.log()
    );
    let at_reconnect = seqs(&rig.sub.all()).last().copied().unwrap_or(0);
    ensure!(
        wait_until(Duration::from_secs(20), || seqs(&rig.sub.all())
            .last()
            .is_some_and(|&s| s > at_reconnect + 3)),
        "no data after the reconnect"
    );
    stop_and_check_every_seq(&rig, &mut agent, 1)?;
    Ok(())
}
