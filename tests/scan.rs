//! `towerlink scan` against what a cabinet might hold: two simulated sensor nodes and a
//! simulated lift bus, each on its own pseudo-terminal, and one port with nothing on it.

use std::process::Command;

use anyhow::ensure;
use towerlink_e2e::binary;
use towerlink_sim::lift::{BusOptions, LiftBus, LiftSpec};
use towerlink_sim::virtual_node::spawn_tower;
use towerlink_sim_chips::Scenario;

fn lift(id: &str, unit: u8) -> LiftSpec {
    LiftSpec {
        id: id.to_owned(),
        unit,
        bottom_floor: -1,
        top_floor: 8,
        rated_speed_mm_s: 1000,
        auto_calls: false,
    }
}

#[test]
fn scan_finds_the_nodes_and_the_lift_units() -> anyhow::Result<()> {
    // One paced lift bus at a time on the machine (see `exclusive`).
    let _bus = towerlink_e2e::exclusive("lift-bus")?;
    let bin = binary("towerlink-agent", "towerlink")?;
    let dir = tempfile::tempdir()?;
    let scenario = Scenario::from_toml_str(
        "seed = 10\n[[panels]]\nname = \"a\"\nnode = 71\n[[panels]]\nname = \"b\"\nnode = 72\n",
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let nodes = spawn_tower(&scenario, &dir.path().join("ports"), false)?;
    let mut options = BusOptions::new(3)?;
    options.baud = 115_200;
    let bus = LiftBus::spawn(
        &dir.path().join("ports/rs485"),
        vec![lift("lift-1", 1), lift("lift-3", 3)],
        options,
    )?;
    // A port with nothing behind it: a pseudo-terminal whose other end stays silent.
    let silent = towerlink_sim::pty::VirtualPort::open(Some(&dir.path().join("ports/empty")))?;

    let out = Command::new(&bin)
        .arg("scan")
        .arg(nodes[0].path())
        .arg(nodes[1].path())
        .arg(silent.path())
        .args(["--listen", "3s"])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "scan failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |needle: &str| {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or("")
            .to_owned()
    };
    ensure!(
        line(&nodes[0].path().display().to_string()).contains("sensor node: node 71"),
        "{text}"
    );
    ensure!(
        line(&nodes[1].path().display().to_string()).contains("node 72, firmware"),
        "{text}"
    );
    ensure!(
        line(&nodes[1].path().display().to_string()).contains("strain 50 Hz"),
        "{text}"
    );
    ensure!(
        line(&silent.path().display().to_string()).contains("no sensor node"),
        "{text}"
    );

    let out = Command::new(&bin)
        .arg("scan")
        .arg(bus.path())
        .args(["--listen", "1s", "--modbus", "115200", "--units", "1-4"])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "modbus scan failed: {text}");
    ensure!(text.contains("Modbus units at 115200 baud: 1, 3"), "{text}");

    // The simulated I2C bus (the test build has the agent's sim feature).
    let out = Command::new(&bin)
        .args(["scan", "--i2c", "sim", "--listen", "1s"])
        .arg(silent.path())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "i2c scan failed: {text}");
    ensure!(
        text.contains("0x2a NAU7802 bridge ADC") && text.contains("0x1d ADXL355 accelerometer"),
        "{text}"
    );
    bus.stop();
    for n in nodes {
        n.stop();
    }
    Ok(())
}
