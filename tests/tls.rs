//! The secure uplink (issue 7) against a real Mosquitto started by each test on free loopback
//! ports: a TLS listener with `require_certificate true` for the agent, and a plain listener
//! for the platform-like subscriber. Every certificate is generated at test time with rcgen
//! (a CA, the broker's certificate for 127.0.0.1, the gateway's client certificate, and
//! impostors: a second CA, a broker certificate for another name).
//!
//! Covered: the agent connects with its client certificate and publishes (birth and data from
//! a simulated panel node); without a client certificate, with one from another CA, against a
//! broker certificate for another name or from another CA, it is refused with a clear error
//! in its log, keeps running and retries with back-off; what it queued meanwhile arrives, every
//! `seq` of it, once the right certificate is in place (swapped on disk and picked up at the
//! next attempt, or after a restart). Finally no log line or reply of a run with a user name,
//! a password file and a client key ever shows the password or the key.

use std::collections::BTreeSet;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use towerlink_e2e::mosquitto::SessionSubscriber;
use towerlink_e2e::{unique_gw, wait_until, AgentProcess, Received};
use towerlink_sim::virtual_node::{spawn_tower, VirtualNode};
use towerlink_sim_chips::Scenario;

/// A CA that signs certificates.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate and its key, as PEM.
struct Issued {
    cert_pem: String,
    key_pem: String,
}

impl Ca {
    fn new(name: &str) -> anyhow::Result<Ca> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        Ok(Ca { cert, key })
    }

    fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> anyhow::Result<Issued> {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("gw"));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }
}

/// All the certificates of a test, written under `dir`.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> anyhow::Result<Pki> {
        std::fs::create_dir_all(dir)?;
        let ca = Ca::new("towerlink test CA")?;
        let impostor = Ca::new("impostor CA")?;
        let write = |name: &str, text: &str| -> anyhow::Result<()> {
            use std::os::unix::fs::PermissionsExt;
            let path = dir.join(name);
            std::fs::write(&path, text)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            Ok(())
        };
        write("ca.pem", &ca.pem())?;
        let pairs = [
            (
                "server",
                ca.issue(
                    &["127.0.0.1", "localhost"],
                    ExtendedKeyUsagePurpose::ServerAuth,
                )?,
            ),
            (
                "server-other-name",
                ca.issue(&["other.example"], ExtendedKeyUsagePurpose::ServerAuth)?,
            ),
            (
                "server-impostor",
                impostor.issue(&["127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth)?,
            ),
            (
                "client",
                ca.issue(&["sh-ja-0001"], ExtendedKeyUsagePurpose::ClientAuth)?,
            ),
            (
                "client-impostor",
                impostor.issue(&["sh-ja-0001"], ExtendedKeyUsagePurpose::ClientAuth)?,
            ),
        ];
        for (name, issued) in pairs {
            write(&format!("{name}.pem"), &issued.cert_pem)?;
            write(&format!("{name}.key"), &issued.key_pem)?;
        }
        Ok(Pki {
            dir: dir.to_owned(),
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Installs `<name>.pem` / `<name>.key` as the gateway's `gw.pem` / `gw.key` (by rename,
    /// so the agent never reads half a file).
    fn install_client(&self, name: &str) -> anyhow::Result<()> {
        for ext in ["pem", "key"] {
            let tmp = self.path(&format!("gw.{ext}.tmp"));
            std::fs::copy(self.path(&format!("{name}.{ext}")), &tmp)?;
            std::fs::rename(&tmp, self.path(&format!("gw.{ext}")))?;
        }
        Ok(())
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A Mosquitto with a TLS listener (client certificates required) and a plain one.
struct TlsBroker {
    child: Child,
    tls_port: u16,
    plain_port: u16,
    log: PathBuf,
}

impl TlsBroker {
    /// `server` names the broker's certificate in `pki`; `passwords`, if given, is a
    /// mosquitto password file required on the TLS listener.
    fn start(
        dir: &Path,
        pki: &Pki,
        server: &str,
        passwords: Option<&Path>,
    ) -> anyhow::Result<TlsBroker> {
        std::fs::create_dir_all(dir)?;
        let mut last = None;
        for _ in 0..5 {
            let (tls_port, plain_port) = (free_port()?, free_port()?);
            if tls_port == plain_port {
                continue;
            }
            let conf = dir.join("mosquitto.conf");
            let auth = match passwords {
                Some(p) => format!("allow_anonymous false\npassword_file {}\n", p.display()),
                None => "allow_anonymous true\n".to_owned(),
            };
            std::fs::write(
                &conf,
                format!(
                    "per_listener_settings true\n{}\
                     listener {plain_port} 127.0.0.1\nallow_anonymous true\n\n\
                     listener {tls_port} 127.0.0.1\n{auth}cafile {}\ncertfile {}\nkeyfile {}\n\
                     require_certificate true\n",
                    if running_as_root() { "user root\n" } else { "" },
                    pki.path("ca.pem").display(),
                    pki.path(&format!("{server}.pem")).display(),
                    pki.path(&format!("{server}.key")).display(),
                ),
            )?;
            let log = dir.join("mosquitto.log");
            let out = std::fs::File::create(&log)?;
            let mut child = Command::new("mosquitto")
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out)
                .spawn()
                .context("spawning mosquitto")?;
            let up = wait_until(Duration::from_secs(5), || {
                (TcpStream::connect(("127.0.0.1", tls_port)).is_ok()
                    && TcpStream::connect(("127.0.0.1", plain_port)).is_ok())
                    || matches!(child.try_wait(), Ok(Some(_)))
            });
            if up && matches!(child.try_wait(), Ok(None)) {
                return Ok(TlsBroker {
                    child,
                    tls_port,
                    plain_port,
                    log,
                });
            }
            let _ = child.kill();
            let _ = child.wait();
            last = Some(std::fs::read_to_string(&log).unwrap_or_default());
        }
        bail!(
            "mosquitto with TLS did not start: {}",
            last.unwrap_or_default()
        )
    }
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A broker, a simulated panel node and a subscriber on the gateway's feed.
struct Rig {
    dir: tempfile::TempDir,
    pki: Pki,
    broker: TlsBroker,
    nodes: Vec<VirtualNode>,
    gw: String,
    sub: SessionSubscriber,
}

impl Rig {
    fn new(
        name: &str,
        server: &str,
        passwords: Option<&Path>,
        panels: usize,
    ) -> anyhow::Result<Rig> {
        let dir = tempfile::tempdir()?;
        let pki = Pki::new(&dir.path().join("pki"))?;
        let broker = TlsBroker::start(&dir.path().join("broker"), &pki, server, passwords)?;
        let mut scenario = "seed = 7\n".to_owned();
        for i in 0..panels {
            scenario.push_str(&format!(
                "\n[[panels]]\nname = \"panel-{i}\"\nnode = {}\n",
                100 + i
            ));
        }
        let scenario = Scenario::from_toml_str(&scenario).context("scenario")?;
        let nodes = spawn_tower(&scenario, &dir.path().join("ports"), false)?;
        let gw = unique_gw(name);
        let sub = SessionSubscriber::connect(
            broker.plain_port,
            &unique_gw("tls-sub"),
            &format!("towerlink/v1/{gw}/#"),
        )?;
        Ok(Rig {
            dir,
            pki,
            broker,
            nodes,
            gw,
            sub,
        })
    }

    /// Writes the agent's configuration with these extra `[mqtt]` lines.
    fn config(&self, mqtt: &str) -> anyhow::Result<PathBuf> {
        let mut text = format!(
            "[gateway]\nid = \"{}\"\n\n[mqtt]\nurl = \"mqtts://127.0.0.1:{}\"\nca_file = \"{}\"\nkeep_alive = \"5s\"\n{mqtt}\n\n\
             [store]\npath = \"{}\"\nfsync = \"50ms\"\n\n[health]\ninterval = \"1s\"\n\n",
            self.gw,
            self.broker.tls_port,
            self.pki.path("ca.pem").display(),
            self.dir.path().join("store").display()
        );
        for n in &self.nodes {
            text.push_str(&format!(
                "[[node]]\nid = \"{}\"\nport = \"{}\"\nwindow = \"200ms\"\nwindow_grace = \"300ms\"\nnode_id = {}\n\n",
                n.dev(),
                n.path().display(),
                n.node_id()
            ));
        }
        let path = self.dir.path().join("towerlink.toml");
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// `[mqtt]` lines for the client certificate plus `username` and a `password_file` in the
    /// rig's directory (which the caller writes); returns the file and the lines.
    fn credential_lines(&self, user: &str) -> (PathBuf, String) {
        let password_file = self.dir.path().join("password");
        let lines = format!(
            "{}username = \"{user}\"\npassword_file = \"{}\"\n",
            self.client_cert_lines(),
            password_file.display()
        );
        (password_file, lines)
    }

    fn client_cert_lines(&self) -> String {
        format!(
            "cert_file = \"{}\"\nkey_file = \"{}\"\n",
            self.pki.path("gw.pem").display(),
            self.pki.path("gw.key").display()
        )
    }

    fn online(&self) -> bool {
        self.sub
            .all()
            .iter()
            .any(|m| m.topic.ends_with("/state") && m.json["state"].as_str() == Some("online"))
    }
}

/// Lines of the log that report a failed connection attempt.
fn failures(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("MQTT connection failed"))
        .collect()
}

/// Waits for `n` failed attempts, checks each says why (`needle`) and when it retries, the
/// agent still runs and nothing reached the broker.
fn expect_refused(
    rig: &Rig,
    agent: &mut AgentProcess,
    n: usize,
    needle: &str,
) -> anyhow::Result<()> {
    let refused = wait_until(Duration::from_secs(20), || {
        failures(&agent.log()).len() >= n
    });
    let log = agent.log();
    ensure!(
        refused,
        "fewer than {n} failed attempts in 20 s; log:\n{log}"
    );
    for line in failures(&log) {
        ensure!(
            line.to_ascii_lowercase()
                .contains(&needle.to_ascii_lowercase())
                && line.contains("retry_in_ms="),
            "an attempt failed without {needle:?} or a retry delay: {line}"
        );
    }
    ensure!(
        agent.is_running(),
        "the agent exited after TLS failures; log:\n{log}"
    );
    ensure!(
        !rig.online(),
        "the broker let the agent in; broker log:\n{}",
        std::fs::read_to_string(&rig.broker.log).unwrap_or_default()
    );
    Ok(())
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
    // The node kept producing: windows are queued while the broker refuses us.
    let queued_before = 5;

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
        std::fs::read_to_string(&rig.broker.log).unwrap_or_default()
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

/// A Mosquitto password file with one user, made by `mosquitto_passwd`.
fn mosquitto_password_file(dir: &Path, user: &str, password: &str) -> anyhow::Result<PathBuf> {
    let passwd = dir.join("mosquitto.passwd");
    let status = Command::new("mosquitto_passwd")
        .args(["-c", "-b"])
        .arg(&passwd)
        .args([user, password])
        .stdout(Stdio::null())
        .status()
        .context("mosquitto_passwd")?;
    ensure!(status.success(), "mosquitto_passwd failed");
    Ok(passwd)
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
        ("", big.as_str(), Some("too large")),
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
    ensure!(
        limited < 40 && 40 - limited <= admitted_at_most,
        "{limited} of 40 rate limited (burst 20, 1/s, at most {admitted_at_most} admitted)"
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
