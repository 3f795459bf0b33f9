//! # towerlink-firmware
//!
//! The `no_std` core of a towerlink sensor node, shared with the gateway agent:
//!
//! - [`protocol`]: the sensor-node wire protocol v1 (`docs/node-wire.md`): message
//!   types, framing (postcard + CRC-32 + COBS) and a streaming decoder that never stops.
//! - [`drivers`]: chip drivers generic over `embedded_hal::i2c::I2c` (NAU7802 bridge ADC,
//!   ADXL355 accelerometer used as an inclinometer).
//! - [`node`]: the node's sampling loop, generic over its sensors and a byte sink.
//! - `chip_models` (feature `chip-models`): `no_std` register-level models of the two chips,
//!   for the emulated board image (`boards/mps2-an386`).
//!
//! Nothing here knows about tokio, std I/O, MQTT or JSON: the same code runs on an MCU, in
//! the simulators and inside the agent.
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(any(test, feature = "chip-models"))]
pub mod chip_models;
pub mod drivers;
pub mod node;
pub mod protocol;
