//! The installer's broker tools against an mTLS-only broker (issue 10, item 3): `tail
//! --from-broker` and `zero` (through the running agent) open their MQTT session exactly as
//! `run` does (CA, client certificate, user name and password file, protocol), under client
//! ids of their own, so they work where the broker takes nothing but a client certificate
//! and a password, and never take the agent's session over.
//!
//! The rig (`towerlink_e2e::tls`): a Mosquitto with a TLS listener that has
//! `require_certificate true` and a password file, certificates made by rcgen at test time,
//! a simulated panel node, and a platform-like subscriber on the broker's plain listener.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use anyhow::{ensure, Context};
use towerlink_e2e::tls::{mosquitto_password_file, Rig};
use towerlink_e2e::{agent_command, wait_until, AgentProcess};

const PASSWORD: &str = "Tools-Pa55-6e1f";

fn towerlink(args: &[&str], config: &Path) -> anyhow::Result<(Output, String)> {
    let out = agent_command()?
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .context("running towerlink")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out, text))
}

#[test]
fn tail_from_the_broker_and_zero_work_against_an_mtls_only_broker() -> anyhow::Result<()> {
    let setup = tempfile::tempdir()?;
    let passwd = mosquitto_password_file(setup.path(), "sh-ja-0001", PASSWORD)?;
    let rig = Rig::new("mtls-tools", "server", Some(&passwd), 1)?;
    rig.pki.install_client("client")?;
    let (password_file, mqtt) = rig.credential_lines("sh-ja-0001");
    std::fs::write(&password_file, format!("{PASSWORD}\n"))?;
    std::fs::set_permissions(
        &password_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    // A copy of its own: `rig.config` rewrites the rig's file for the certificate-less case.
    let config = rig.dir.path().join("agent.toml");
    std::fs::copy(rig.config(&mqtt)?, &config)?;
    let mut agent = AgentProcess::start(&config)?;
    ensure!(
        wait_until(Duration::from_secs(20), || rig.online()),
        "the agent did not come online; log:\n{}",
        agent.log()
    );
    ensure!(
        wait_until(Duration::from_secs(20), || rig
            .sub
            .all()
            .iter()
            .any(|m| m.topic.ends_with("/data/panel-0"))),
        "no data from panel-0"
    );

    // tail --from-broker: the agent's feed, over the same mTLS session setup.
    let (out, text) = towerlink(
        &["tail", "--from-broker", "--duration", "20s", "--count", "6"],
        &config,
    )?;
    ensure!(out.status.success(), "tail failed:\n{text}");
    ensure!(
        text.lines()
            .any(|l| l.contains(" data ") && l.contains("panel-0")),
        "no data line for panel-0:\n{text}"
    );

    // zero through the agent: command on cmd, reply on reply, both over mTLS.
    let (out, text) = towerlink(&["zero", "panel-0", "tilt_x"], &config)?;
    ensure!(out.status.success(), "zero failed:\n{text}");
    ensure!(text.starts_with("OK  zero panel-0 tilt_x"), "{text}");
    let (out, text) = towerlink(&["zero", "panel-0", "nope"], &config)?;
    ensure!(
        !out.status.success() && text.contains("FAIL zero panel-0 nope"),
        "an unknown channel must be refused by the agent:\n{text}"
    );

    // The tools had sessions of their own: the agent's was never taken over.
    let log = agent.log();
    ensure!(
        log.matches("MQTT session up").count() == 1,
        "the agent's session was interrupted:\n{log}"
    );

    // Without the client certificate the broker refuses the tools, with a clear error.
    let no_cert = rig.config(&format!(
        "username = \"sh-ja-0001\"\npassword_file = \"{}\"\n",
        password_file.display()
    ))?;
    let (out, text) = towerlink(
        &["tail", "--from-broker", "--duration", "10s", "--count", "1"],
        &no_cert,
    )?;
    ensure!(
        !out.status.success(),
        "tail passed without a client certificate:\n{text}"
    );
    ensure!(
        text.contains("cannot reach the broker") && text.to_lowercase().contains("certificate"),
        "no clear TLS error from tail:\n{text}"
    );
    let (out, text) = towerlink(&["zero", "panel-0", "tilt_x"], &no_cert)?;
    ensure!(
        !out.status.success(),
        "zero passed without a client certificate:\n{text}"
    );
    ensure!(
        text.contains("cannot reach the broker"),
        "no clear TLS error from zero:\n{text}"
    );
    ensure!(!text.contains(PASSWORD), "the password leaked:\n{text}");

    agent.stop()?;
    Ok(())
}
