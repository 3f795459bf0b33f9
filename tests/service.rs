//! Running as a systemd service: the unit file verifies, and the agent speaks the notify
//! protocol (READY, WATCHDOG while its loops run, STOPPING) over a real `$NOTIFY_SOCKET`.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use towerlink_e2e::{binary, skip_or_fail, unique_gw, write_config, AgentProcess};
use towerlink_sim::virtual_node::spawn_tower;
use towerlink_sim_chips::Scenario;

#[test]
fn the_unit_file_verifies() -> anyhow::Result<()> {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        return skip_or_fail(
            "TOWERLINK_TEST_SKIP_SYSTEMD_ANALYZE",
            "systemd-analyze is not installed here (Debian package systemd)",
        );
    }
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/towerlink.service");
    let text = std::fs::read_to_string(&unit)?;
    // Point the unit at the binary just built (the package installs it as /usr/bin/towerlink).
    let bin = binary("towerlink-agent", "towerlink")?;
    let dir = tempfile::tempdir()?;
    let local = dir.path().join("towerlink.service");
    std::fs::write(
        &local,
        text.replace("/usr/bin/towerlink", &bin.display().to_string()),
    )?;
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&local)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
    ensure!(
        text.contains("Type=notify") && text.contains("WatchdogSec="),
        "the unit must use notify and the watchdog"
    );
    Ok(())
}

/// Receives notify datagrams until `pred` holds on what arrived, or the timeout.
fn receive_until(
    socket: &UnixDatagram,
    got: &mut Vec<String>,
    timeout: Duration,
    pred: impl Fn(&[String]) -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 512];
    while !pred(got) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        if socket.set_read_timeout(Some(left)).is_err() {
            return false;
        }
        match socket.recv(&mut buf) {
            Ok(n) => got.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => return pred(got),
        }
    }
    true
}

#[test]
fn the_agent_notifies_ready_feeds_the_watchdog_and_says_stopping() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let scenario = Scenario::from_toml_str("seed = 9\n[[panels]]\nname = \"p\"\nnode = 1\n")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let nodes = spawn_tower(&scenario, &dir.path().join("ports"), false)?;
    let n = &nodes[0];
    let text = format!(
        "[[node]]\nid = \"{}\"\nport = \"{}\"\nnode_id = {}\n",
        n.dev(),
        n.path().display(),
        n.node_id()
    );
    let config = write_config(dir.path(), &unique_gw("e2e-systemd"), &text)?;
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path)?;
    let socket_str = socket_path.display().to_string();
    let mut agent = AgentProcess::start_with_env(
        &config,
        &[
            ("NOTIFY_SOCKET", socket_str.as_str()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    )?;
    let mut got = Vec::new();
    ensure!(
        receive_until(&socket, &mut got, Duration::from_secs(20), |g| g
            .iter()
            .any(|m| m == "READY=1")),
        "no READY=1: {got:?}\n{}",
        agent.log()
    );
    // WATCHDOG_USEC = 1 s: pings every half second while every loop beats.
    ensure!(
        receive_until(&socket, &mut got, Duration::from_secs(10), |g| g
            .iter()
            .filter(|m| *m == "WATCHDOG=1")
            .count()
            >= 4),
        "the watchdog was not fed: {got:?}"
    );
    agent.stop()?;
    ensure!(
        receive_until(&socket, &mut got, Duration::from_secs(5), |g| g
            .iter()
            .any(|m| m == "STOPPING=1")),
        "no STOPPING=1: {got:?}"
    );
    let ready = got.iter().position(|m| m == "READY=1").context("ready")?;
    let first_ping = got.iter().position(|m| m == "WATCHDOG=1").context("ping")?;
    ensure!(
        ready < first_ping,
        "the watchdog was fed before READY: {got:?}"
    );
    Ok(())
}
