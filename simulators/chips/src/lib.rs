//! Register-level simulated sensor chips for towerlink, driven by a physical model of a glass
//! curtain-wall panel.
//!
//! The pieces, from the bottom up:
//! - [`clock::SimClock`]: the simulated time (µs) that a virtual node advances, and
//!   [`clock::SimDelay`], an `embedded_hal` delay that advances it instead of sleeping.
//! - [`panel::PanelModel`]: strain, tilt, acceleration and temperature of one panel as a pure
//!   function of (seed, parameters, scripted faults, time), so every reading is reproducible no
//!   matter how often or in which order it is taken.
//! - [`nau7802::SimNau7802`] and [`adxl355::SimAdxl355`]: the two chips of a panel node at the
//!   register level, each an `embedded_hal::i2c::I2c`, so the real firmware drivers run on them.
//! - [`bus::SimBus`]: several simulated chips on one shared I2C bus.
//! - [`scenario::Scenario`]: a TOML description of a whole simulated tower.

pub mod adxl355;
pub mod bus;
pub mod clock;
mod i2c;
pub mod nau7802;
mod noise;
pub mod panel;
pub mod scenario;

pub use adxl355::SimAdxl355;
pub use bus::SimBus;
pub use clock::{SimClock, SimDelay};
pub use i2c::{SimDevice, SimI2cError};
pub use nau7802::SimNau7802;
pub use panel::{Axis, Channel, Chip, Fault, PanelModel, PanelParams, PanelState, ScheduledFault};
pub use scenario::{Scenario, ScenarioError};
