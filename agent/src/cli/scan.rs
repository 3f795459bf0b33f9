//! `towerlink scan`: what is attached to this gateway.
//!
//! For an installer with a new cabinet: every serial port (the ones named on the command line,
//! else `/dev/serial/by-id/*`, `/dev/ttyUSB*`, `/dev/ttyACM*`) is probed for a sensor node
//! (learn its id from its frames, ask it to identify, print its Hello), and with `--modbus`
//! for lift controllers (one read-input-registers request per unit id; only function 0x04 is
//! ever sent) on the ports where no node answered: a node's link is point to point, so no
//! lift can share it, and Modbus bytes must never reach a node's decoder. Ports are probed at the same time, so a cabinet of silent ports costs one
//! timeout, not one per port. Every I2C bus (`/dev/i2c-*`, or those named with `--i2c`) is
//! asked for the identity registers of the chips the agent drives.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use tokio::time::Instant;

use super::describe_hello;
use crate::sources::config::Parity;
use crate::sources::modbus_lift::BusMaster;
use crate::sources::modbus_rtu::{Answer, ReadInputRegisters};
use crate::sources::node_link::NodePort;

/// What to look for.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// Ports to probe (empty: the usual device paths).
    pub ports: Vec<PathBuf>,
    /// Baud rate for sensor nodes.
    pub baud: u32,
    /// How long each port is listened to for a node.
    pub listen: Duration,
    /// Also probe Modbus unit ids, at this baud rate.
    pub modbus_baud: Option<u32>,
    /// The unit ids to probe.
    pub units: std::ops::RangeInclusive<u8>,
    /// I2C buses to probe (empty: every /dev/i2c-*); `sim` is the simulated bus.
    pub i2c: Vec<String>,
}

/// The serial ports worth probing when none are named.
pub fn default_ports() -> Vec<PathBuf> {
    let mut found = BTreeMap::new();
    let mut add = |p: PathBuf| {
        let key = std::fs::canonicalize(&p).unwrap_or_else(|_| p.clone());
        found.entry(key).or_insert(p);
    };
    if let Ok(dir) = std::fs::read_dir("/dev/serial/by-id") {
        for e in dir.flatten() {
            add(e.path());
        }
    }
    if let Ok(dir) = std::fs::read_dir("/dev") {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("ttyUSB") || name.starts_with("ttyACM") {
                add(e.path());
            }
        }
    }
    found.into_values().collect()
}

/// What answers at the addresses of the chips the agent knows, on one bus.
fn probe_i2c<I: embedded_hal::i2c::I2c>(bus: &mut I) -> Vec<String> {
    // (address, identity register, expected, mask, chip) per the datasheets.
    const KNOWN: [(u8, u8, u8, u8, &str); 3] = [
        (0x2A, 0x1F, 0x0F, 0x0F, "NAU7802 bridge ADC"),
        (0x1D, 0x00, 0xAD, 0xFF, "ADXL355 accelerometer"),
        (0x53, 0x00, 0xAD, 0xFF, "ADXL355 accelerometer"),
    ];
    let mut found = Vec::new();
    for (address, register, expected, mask, chip) in KNOWN {
        let mut id = [0u8; 1];
        match bus.write_read(address, &[register], &mut id) {
            Ok(()) if id[0] & mask == expected => found.push(format!("{address:#04x} {chip}")),
            Ok(()) => found.push(format!("{address:#04x} unknown chip (id {:#04x})", id[0])),
            Err(_) => {}
        }
    }
    found
}

/// Why an I2C bus could not be scanned (printed after the bus's name).
#[derive(Debug, thiserror::Error)]
pub enum I2cScanError {
    /// `sim` in a build without the simulated bus.
    #[error("this build has no simulated I2C bus (feature sim)")]
    NoSimBus,
    /// The bus device did not open.
    #[error("cannot open: {0}")]
    Open(linux_embedded_hal::i2cdev::linux::LinuxI2CError),
}

#[cfg(feature = "sim")]
fn probe_sim_bus() -> Result<Vec<String>, I2cScanError> {
    use towerlink_sim_chips::{PanelModel, PanelParams, SimBus, SimClock};
    let model = std::sync::Arc::new(PanelModel::new(1, PanelParams::default(), Vec::new()));
    Ok(probe_i2c(&mut SimBus::panel_node(model, SimClock::new())))
}

#[cfg(not(feature = "sim"))]
fn probe_sim_bus() -> Result<Vec<String>, I2cScanError> {
    Err(I2cScanError::NoSimBus)
}

fn scan_i2c_bus(bus: &str) -> String {
    let found = if bus == "sim" {
        probe_sim_bus()
    } else {
        linux_embedded_hal::I2cdev::new(bus)
            .map(|mut dev| probe_i2c(&mut dev))
            .map_err(I2cScanError::Open)
    };
    match found {
        Err(e) => format!("{bus:<40} {e}"),
        Ok(found) if found.is_empty() => {
            format!("{bus:<40} I2C: no known chip answers (NAU7802 at 0x2a, ADXL355 at 0x1d/0x53)")
        }
        Ok(found) => format!("{bus:<40} I2C: {}", found.join(", ")),
    }
}

fn i2c_buses() -> Vec<PathBuf> {
    let mut buses: Vec<PathBuf> = std::fs::read_dir("/dev")
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("i2c-"))
                })
                .collect()
        })
        .unwrap_or_default();
    buses.sort();
    buses
}

async fn probe_node(path: PathBuf, baud: u32, listen: Duration) -> String {
    let shown = path.display().to_string();
    let mut port = match NodePort::open(&path, baud) {
        Ok(p) => p,
        Err(e) => return format!("{shown:<40} {e} ({})", e.fix()),
    };
    match port.hello(None, Instant::now() + listen, |_| {}).await {
        Ok(hello) => format!(
            "{shown:<40} sensor node: {}",
            describe_hello(&hello, &BTreeMap::new())
        ),
        Err(failure) => format!("{shown:<40} no sensor node at {baud} baud: {failure}"),
    }
}

async fn probe_modbus(path: PathBuf, baud: u32, units: std::ops::RangeInclusive<u8>) -> String {
    let shown = path.display().to_string();
    let mut master = match BusMaster::open(&shown, baud, Parity::None, 1) {
        Ok(m) => m,
        Err(e) => return format!("{shown:<40} cannot open for Modbus: {e}"),
    };
    let mut answering = Vec::new();
    for unit in units {
        let req = ReadInputRegisters {
            unit,
            start: 0,
            count: 14,
        };
        match master.request(&req, Duration::from_millis(200)).await {
            Ok(Answer::Registers(_)) => answering.push(format!("{unit}")),
            Ok(Answer::Exception(code)) => answering.push(format!("{unit} (exception {code})")),
            Err(_) => {}
        }
    }
    if answering.is_empty() {
        format!("{shown:<40} no Modbus unit answered at {baud} baud")
    } else {
        format!(
            "{shown:<40} Modbus units at {baud} baud: {}",
            answering.join(", ")
        )
    }
}

/// Runs the scan and prints one line per finding; exit code 0 if anything was found.
pub async fn run(options: ScanOptions) -> ExitCode {
    let ports = if options.ports.is_empty() {
        default_ports()
    } else {
        options.ports.clone()
    };
    if ports.is_empty() {
        println!("no serial ports found (looked at /dev/serial/by-id, /dev/ttyUSB*, /dev/ttyACM*)");
    }
    let nodes: Vec<_> = ports
        .iter()
        .map(|p| tokio::spawn(probe_node(p.clone(), options.baud, options.listen)))
        .collect();
    let mut found = false;
    let mut bus_candidates = Vec::new();
    for (task, path) in nodes.into_iter().zip(&ports) {
        let line = task
            .await
            .unwrap_or_else(|e| format!("{}: probe failed: {e}", path.display()));
        let node_here = line.contains("sensor node:");
        found |= node_here;
        println!("{line}");
        if node_here {
            if options.modbus_baud.is_some() {
                // A node's port is point to point: no lift can sit on it, and Modbus bytes
                // would only reach the node's decoder.
                println!(
                    "{:<40} Modbus not probed: a sensor node answers on this port",
                    path.display()
                );
            }
        } else {
            bus_candidates.push(path.clone());
        }
    }
    if let Some(baud) = options.modbus_baud {
        // After the node probes: a port is opened by one prober at a time.
        let lifts: Vec<_> = bus_candidates
            .iter()
            .map(|p| tokio::spawn(probe_modbus(p.clone(), baud, options.units.clone())))
            .collect();
        for (task, path) in lifts.into_iter().zip(&bus_candidates) {
            let line = task
                .await
                .unwrap_or_else(|e| format!("{}: probe failed: {e}", path.display()));
            found |= line.contains("Modbus units");
            println!("{line}");
        }
    }
    let buses: Vec<String> = if options.i2c.is_empty() {
        i2c_buses()
            .iter()
            .map(|b| b.display().to_string())
            .collect()
    } else {
        options.i2c.clone()
    };
    for bus in buses {
        let line = tokio::task::spawn_blocking(move || scan_i2c_bus(&bus))
            .await
            .unwrap_or_else(|e| format!("i2c probe failed: {e}"));
        found |= line.contains(" I2C: 0x");
        println!("{line}");
    }
    if found {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `--units` that is not `N` or `N-M` within 1..=247.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?}: give unit ids as N or N-M within 1..=247")]
pub struct UnitsError(pub String);

/// Parses `--units 1-16` (or a single id).
pub fn parse_units(text: &str) -> Result<std::ops::RangeInclusive<u8>, UnitsError> {
    let parse = |s: &str| {
        s.trim()
            .parse::<u8>()
            .ok()
            .filter(|u| (1..=247).contains(u))
    };
    let (lo, hi) = match text.split_once('-') {
        Some((a, b)) => (parse(a), parse(b)),
        None => (parse(text), parse(text)),
    };
    match (lo, hi) {
        (Some(lo), Some(hi)) if lo <= hi => Ok(lo..=hi),
        _ => Err(UnitsError(text.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_ranges() {
        assert_eq!(parse_units("1-16"), Ok(1..=16));
        assert_eq!(parse_units("5"), Ok(5..=5));
        assert!(parse_units("0-3").is_err());
        assert!(parse_units("9-3").is_err());
        assert!(parse_units("1-248").is_err());
        assert!(parse_units("x").is_err());
        assert_eq!(parse_units("9-3"), Err(UnitsError("9-3".into())));
        assert_eq!(
            UnitsError("x".into()).to_string(),
            "\"x\": give unit ids as N or N-M within 1..=247"
        );
    }
}
