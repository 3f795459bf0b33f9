//! A node's port held by a running agent: the installer's commands that open the port
//! themselves (`check`, `tail`, `zero --direct`) say it is in use, by which process, and how
//! to free it (`systemctl stop towerlink`), instead of blaming the adapter.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context};
use towerlink_e2e::{binary, unique_gw, wait_until, write_config, AgentProcess};
use towerlink_sim::virtual_node::VirtualNode;
use towerlink_sim_chips::Scenario;

fn towerlink(args: &[&str], config: &Path) -> anyhow::Result<(bool, String)> {
    let out = Command::new(binary("towerlink-agent", "towerlink")?)
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
    Ok((out.status.success(), text))
}

#[test]
fn a_port_held_by_the_running_agent_is_named_in_use() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let scenario =
        Scenario::from_toml_str("seed = 8\n\n[[panels]]\nname = \"panel-0\"\nnode = 100\n")?;
    let node = VirtualNode::spawn(
        &scenario,
        "panel-0",
        &dir.path().join("ports/panel-0"),
        false,
    )?;
    let config = write_config(
        dir.path(),
        &unique_gw("inuse"),
        &format!(
            "[[node]]\nid = \"panel-0\"\nport = \"{}\"\nnode_id = 100\nwindow = \"1s\"\n",
            node.path().display()
        ),
    )?;
    let mut agent = AgentProcess::start(&config)?;
    ensure!(
        wait_until(Duration::from_secs(20), || agent
            .log()
            .contains("serial port open")),
        "the agent did not open the port:\n{}",
        agent.log()
    );
    let holder = format!("towerlink run --config {}", config.display());
    let port = node.path().display().to_string();
    for args in [
        &["check"][..],
        &["zero", "--direct", "panel-0", "tilt_x"],
        &["tail", "--duration", "3s", "--count", "5"],
    ] {
        let (ok, text) = towerlink(args, &config)?;
        ensure!(!ok, "{args:?} succeeded on a held port:\n{text}");
        ensure!(
            text.contains(&format!("cannot open {port}: it is in use by process ")),
            "{args:?} does not say the port is in use:\n{text}"
        );
        ensure!(
            text.contains(&holder),
            "{args:?} does not name the agent ({holder}):\n{text}"
        );
        ensure!(
            text.contains("`systemctl stop towerlink`"),
            "{args:?} does not say how to free the port:\n{text}"
        );
        ensure!(
            !text.contains("check the adapter"),
            "{args:?} blames the adapter:\n{text}"
        );
    }
    ensure!(agent.is_running(), "the agent stopped:\n{}", agent.log());
    agent.stop()?;
    // Freed, the port opens again for the installer.
    let (ok, text) = towerlink(&["zero", "--direct", "panel-0", "tilt_x"], &config)?;
    ensure!(ok, "zero --direct after the agent stopped:\n{text}");
    Ok(())
}
