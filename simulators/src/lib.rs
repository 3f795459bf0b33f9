//! # towerlink-sim
//!
//! A simulated tower for towerlink, so everything runs without hardware:
//!
//! - [`pty`]: virtual serial ports (pseudo-terminals) that the agent opens like real ones.
//! - [`virtual_node`]: a panel node running the real firmware core over simulated chips
//!   (`towerlink-sim-chips`), streaming frames into its port in real time.
//! - [`lift`]: simulated lift controllers on a Modbus RTU bus (a pseudo-terminal).
//! - [`broker`]: the demo's embedded MQTT broker.
//! - [`link`]: an emulated cellular link (delay, loss, rate cap, queue, partition) between two
//!   network namespaces over TUN devices, the replacement for `tc netem`.
//! - [`fleet`]: N gateways (the real agent, fed in-process) in one process, for sizing.
//! - [`demo`]: broker + tower + agent + a live feed printer.
//! - [`mcu`]: the firmware's emulated-board image on `qemu-system-arm`, its UART on a
//!   pseudo-terminal; [`footprint`]: the images' flash, RAM, stack and link timing, measured.

pub mod broker;
pub mod demo;
pub mod fleet;
pub mod footprint;
pub mod lift;
pub mod link;
pub mod mcu;
pub mod pty;
pub mod virtual_node;

/// The built-in scenario (`simulators/scenarios/tower.toml`).
pub const DEFAULT_SCENARIO: &str = include_str!("../scenarios/tower.toml");
