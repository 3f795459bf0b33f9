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

/// `scan --modbus` on a port where a sensor node sits, then the commands an installer runs
/// next: the node must answer at once, as if no scan had happened. (It used not to: Modbus
/// requests reached the node's decoder, the next Identify was glued to their last bytes and
/// lost, and `scan`/`check` said the node "did not answer Identify".) Bytes of another
/// protocol written on the node's line by anything else must not silence it either.
#[test]
fn a_modbus_scan_never_disturbs_a_node() -> anyhow::Result<()> {
    let bin = binary("towerlink-agent", "towerlink")?;
    let dir = tempfile::tempdir()?;
    let scenario = Scenario::from_toml_str("seed = 11\n[[panels]]\nname = \"a\"\nnode = 13\n")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let nodes = spawn_tower(&scenario, &dir.path().join("ports"), false)?;
    let port = nodes[0].path().to_owned();
    let scan = |args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new(&bin)
            .arg("scan")
            .arg(&port)
            .args(args)
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };

    let text = scan(&["--listen", "3s", "--modbus", "9600", "--units", "1-8"])?;
    ensure!(text.contains("sensor node: node 13"), "{text}");
    ensure!(
        text.contains("Modbus not probed: a sensor node answers on this port"),
        "{text}"
    );
    let text = scan(&["--listen", "3s"])?;
    ensure!(
        text.contains("sensor node: node 13"),
        "after the Modbus scan: {text}"
    );

    // What a Modbus master on the wrong port sends: read input registers 0..14 of units 1..8,
    // each request CRC'd by the book and none ending in 0x00.
    let mut line = std::fs::OpenOptions::new().write(true).open(&port)?;
    for unit in 1..=8u8 {
        let mut request = vec![unit, 0x04, 0x00, 0x00, 0x00, 0x0E];
        let crc = modbus_crc(&request);
        request.extend_from_slice(&crc.to_le_bytes());
        std::io::Write::write_all(&mut line, &request)?;
    }
    drop(line);
    let text = scan(&["--listen", "3s"])?;
    ensure!(
        text.contains("sensor node: node 13"),
        "after foreign bytes: {text}"
    );
    for n in nodes {
        n.stop();
    }
    Ok(())
}

/// CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF), written here from the spec.
fn modbus_crc(bytes: &[u8]) -> u16 {
    let mut crc = 0xFFFFu16;
    for &b in bytes {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}
