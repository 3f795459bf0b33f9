//! Chip drivers, generic over `embedded_hal::i2c::I2c` (and `DelayNs` where a chip needs
//! waiting). Each driver owns only its bus handle and its configuration: no global state.

pub mod adxl355;
pub mod nau7802;
