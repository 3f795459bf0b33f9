//! Simulated lift controllers for towerlink: a lift model, a Modbus RTU slave on a
//! pseudo-terminal serving several lifts on one bus, and fault scripts.
//!
//! - [`model`]: calls, travel, doors, occupancy, counters, faults (deterministic by seed).
//! - [`rtu_slave`]: the bus: answers read-input-registers requests from the models, paced at
//!   line speed, with comm faults on demand.
//! - [`registers`]: the generic profile's register table, CRC-16 and line timing, written from
//!   the contract (`docs/lift-modbus.md`), not taken from the agent.
//! - [`script`]: timed faults and calls from TOML.

pub mod model;
pub mod registers;
pub mod rtu_slave;
pub mod script;

pub use model::{Fault, LiftModel, LiftSpec};
pub use rtu_slave::{BusOptions, LiftBus};
pub use script::{Action, CommFault, Step};

/// The `[[lift]]` sections of an agent configuration for the lifts of `bus`.
pub fn agent_lift_sections(bus: &LiftBus, baud: u32, extra: &str) -> String {
    bus.lifts()
        .iter()
        .map(|l| {
            format!(
                "\n[[lift]]\nid = \"{}\"\nport = \"{}\"\nbaud = {baud}\nunit = {}\nprofile = \"generic\"\ntop_floor = {}\nbottom_floor = {}\nrated_speed_mm_s = {}\n{extra}",
                l.id,
                bus.path().display(),
                l.unit,
                l.top_floor,
                l.bottom_floor,
                l.rated_speed_mm_s
            )
        })
        .collect()
}
