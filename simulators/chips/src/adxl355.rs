//! A simulated ADXL355 3-axis accelerometer (used as the panel's inclinometer and temperature
//! sensor) at I2C address 0x1D or 0x53.
//!
//! Modelled at the register level (Analog Devices' datasheet, as the Linux kernel driver uses
//! it), as far as a driver uses the chip:
//! - Identity: `DEVID_AD` 0xAD, `DEVID_MST` 0x1D, `PARTID` 0xED, `REVID` [`REVID`].
//! - Power-on and `RESET` = 0x52 restore the defaults: `POWER_CTL` 0x01 (standby), `RANGE`
//!   0x81 (I2C_HS, ±2 g), `FILTER` 0x00 (4000 Hz), `FIFO_SAMPLES` 0x60, `ACT_COUNT` 0x01,
//!   data and temperature registers 0. Other values written to `RESET` are ignored.
//! - Samples are taken only in measurement mode (`POWER_CTL` bit 0 = 0), one per ODR period
//!   (`FILTER` bits 3:0, 4000 Hz / 2ⁿ, codes above 10 act as 10); sample n completes at
//!   `start + n·period`, where start is the moment measurement began or `FILTER` changed. In
//!   standby the data registers keep their last values and `DATA_RDY` stays 0.
//! - `STATUS.DATA_RDY` reads 1 while a sample newer than the last one read exists; reading any
//!   X/Y/Z data byte marks the latest sample read (clear-on-read of STATUS on the real chip is
//!   unverified; drivers should poll and then read the data). Other STATUS bits read 0.
//! - `X/Y/ZDATA3..1`: 20-bit two's complement left-aligned in 24 bits, big-endian,
//!   `round(a/g·LSB_per_g)` with 256000/128000/64000 LSB/g for `RANGE` 01/10/11 (00 acts as
//!   ±2 g), saturated to the 20-bit range. The range is applied when the data is read.
//! - `TEMP2[3:0]:TEMP1`: `round(1885 − 9.05·(T − 25))` of the latest sample (or of "now" before
//!   the first); frozen while `POWER_CTL.TEMP_OFF` is set or in standby.
//! - Not modelled: FIFO (reads as empty), offset trims, activity detection, self test, the
//!   high-pass filter. Registers 0x00–0x11 ignore writes. An offline fault makes the chip NACK
//!   its address.

use std::sync::Arc;

use embedded_hal::i2c::{ErrorType, I2c, Operation};

use crate::clock::SimClock;
use crate::i2c::{register_transaction, RegisterChip, SimDevice, SimI2cError};
use crate::panel::{Chip, PanelModel, PanelState, STANDARD_GRAVITY};

/// Address with the ASEL/MISO pin low.
pub const ADDRESS_LOW: u8 = 0x1D;
/// Address with the ASEL/MISO pin high.
pub const ADDRESS_HIGH: u8 = 0x53;
/// The value of `REVID` the simulator reports.
pub const REVID: u8 = 0x01;
/// Temperature code at 25 °C.
pub const TEMP_INTERCEPT_LSB: f64 = 1885.0;
/// Temperature slope, LSB per °C (negative: the code falls as temperature rises).
pub const TEMP_SLOPE_LSB_PER_C: f64 = -9.05;

const REG_DEVID_AD: u8 = 0x00;
const REG_DEVID_MST: u8 = 0x01;
const REG_PARTID: u8 = 0x02;
const REG_REVID: u8 = 0x03;
const REG_STATUS: u8 = 0x04;
const REG_TEMP2: u8 = 0x06;
const REG_TEMP1: u8 = 0x07;
const REG_XDATA3: u8 = 0x08;
const REG_ZDATA1: u8 = 0x10;
const REG_READ_ONLY_END: u8 = 0x11;
const REG_ACT_COUNT: u8 = 0x27;
const REG_FILTER: u8 = 0x28;
const REG_FIFO_SAMPLES: u8 = 0x29;
const REG_RANGE: u8 = 0x2C;
const REG_POWER_CTL: u8 = 0x2D;
const REG_RESET: u8 = 0x2F;
const REGISTER_COUNT: usize = 0x30;
const RESET_CODE: u8 = 0x52;

const STANDBY: u8 = 1 << 0;
const TEMP_OFF: u8 = 1 << 1;
const DATA_RDY: u8 = 1 << 0;

/// Largest positive 20-bit code.
const AXIS_MAX: i32 = (1 << 19) - 1;
/// Most negative 20-bit code.
const AXIS_MIN: i32 = -(1 << 19);

/// A simulated ADXL355 reading a [`PanelModel`]'s acceleration and temperature.
#[derive(Debug)]
pub struct SimAdxl355 {
    model: Arc<PanelModel>,
    clock: SimClock,
    address: u8,
    regs: [u8; REGISTER_COUNT],
    pointer: u8,
    /// When sampling (re)started; None in standby.
    measuring_since: Option<u64>,
    /// The sample last read from the data registers (0 = none).
    last_read: u64,
    /// The state the registers hold while no samples are taken (None = all zero).
    held: Option<PanelState>,
    /// The temperature code while the sensor is off (0 after reset).
    held_temp: u16,
}

impl SimAdxl355 {
    /// A chip in its power-on state at `address` (normally [`ADDRESS_LOW`] or
    /// [`ADDRESS_HIGH`]), reading `model` at `clock`'s time.
    pub fn new(model: Arc<PanelModel>, clock: SimClock, address: u8) -> Self {
        SimAdxl355 {
            model,
            clock,
            address,
            regs: default_registers(),
            pointer: 0,
            measuring_since: None,
            last_read: 0,
            held: None,
            held_temp: 0,
        }
    }

    /// The output data period set by `FILTER.ODR_LPF`, µs.
    pub fn sample_period_us(&self) -> u64 {
        250 << (self.regs[usize::from(REG_FILTER)] & 0x0F).min(10)
    }

    /// LSB per g for the current `RANGE`.
    fn lsb_per_g(&self) -> f64 {
        match self.regs[usize::from(REG_RANGE)] & 0b11 {
            0b10 => 128_000.0,
            0b11 => 64_000.0,
            _ => 256_000.0,
        }
    }

    fn now(&self) -> u64 {
        self.clock.now_us()
    }

    fn latest_sample(&self, now: u64) -> u64 {
        match self.measuring_since {
            Some(start) if now >= start => (now - start) / self.sample_period_us(),
            _ => 0,
        }
    }

    /// The model state behind the data registers at `now`.
    fn current_state(&self, now: u64) -> Option<PanelState> {
        let (Some(start), n) = (self.measuring_since, self.latest_sample(now)) else {
            return self.held;
        };
        if n == 0 {
            return self.held;
        }
        let period = self.sample_period_us();
        let t = start.saturating_add(n.saturating_mul(period));
        Some(self.model.sample_over(t, period))
    }

    /// The 12-bit temperature code at `now`.
    fn temperature_code(&self, now: u64) -> u16 {
        let sensor_on =
            self.measuring_since.is_some() && self.regs[usize::from(REG_POWER_CTL)] & TEMP_OFF == 0;
        if !sensor_on {
            return self.held_temp;
        }
        let state = match self.current_state(now) {
            Some(state) if self.latest_sample(now) > 0 => state,
            _ => self.model.sample_over(now, self.sample_period_us()),
        };
        temperature_code(f64::from(state.temperature_c))
    }

    /// Before sampling stops or restarts, keep the latest values in the registers.
    fn hold_latest(&mut self, now: u64) {
        self.held = self.current_state(now);
        self.held_temp = self.temperature_code(now);
    }

    fn axis_code(&self, state: Option<PanelState>, axis: usize) -> i32 {
        let Some(state) = state else { return 0 };
        let g = f64::from(state.accel_ms2[axis]) / STANDARD_GRAVITY;
        (g * self.lsb_per_g())
            .round()
            .clamp(f64::from(AXIS_MIN), f64::from(AXIS_MAX)) as i32
    }

    fn write_power_ctl(&mut self, value: u8, now: u64) {
        let was_measuring = self.measuring_since.is_some();
        let measuring = value & STANDBY == 0;
        if measuring != was_measuring
            || (value ^ self.regs[usize::from(REG_POWER_CTL)]) & TEMP_OFF != 0
        {
            self.hold_latest(now);
        }
        if measuring && !was_measuring {
            self.measuring_since = Some(now);
            self.last_read = 0;
        } else if !measuring {
            self.measuring_since = None;
            self.last_read = 0;
        }
        self.regs[usize::from(REG_POWER_CTL)] = value;
    }
}

/// The ADXL355 temperature code for `celsius`, clamped to 12 bits.
pub fn temperature_code(celsius: f64) -> u16 {
    let code = (TEMP_INTERCEPT_LSB + TEMP_SLOPE_LSB_PER_C * (celsius - 25.0)).round();
    code.clamp(0.0, 4095.0) as u16
}

fn default_registers() -> [u8; REGISTER_COUNT] {
    let mut regs = [0u8; REGISTER_COUNT];
    regs[usize::from(REG_DEVID_AD)] = 0xAD;
    regs[usize::from(REG_DEVID_MST)] = 0x1D;
    regs[usize::from(REG_PARTID)] = 0xED;
    regs[usize::from(REG_REVID)] = REVID;
    regs[usize::from(REG_ACT_COUNT)] = 0x01;
    regs[usize::from(REG_FIFO_SAMPLES)] = 0x60;
    regs[usize::from(REG_RANGE)] = 0x81;
    regs[usize::from(REG_POWER_CTL)] = STANDBY;
    regs
}

impl RegisterChip for SimAdxl355 {
    fn acknowledges(&mut self) -> bool {
        !self.model.is_offline(Chip::Adxl355, self.now())
    }

    fn pointer_mut(&mut self) -> &mut u8 {
        &mut self.pointer
    }

    fn read_register(&mut self, reg: u8) -> u8 {
        let now = self.now();
        match reg {
            REG_STATUS => u8::from(self.latest_sample(now) > self.last_read) * DATA_RDY,
            REG_TEMP2 => (self.temperature_code(now) >> 8) as u8 & 0x0F,
            REG_TEMP1 => self.temperature_code(now) as u8,
            REG_XDATA3..=REG_ZDATA1 => {
                let offset = reg - REG_XDATA3;
                let code = self.axis_code(self.current_state(now), usize::from(offset / 3));
                self.last_read = self.last_read.max(self.latest_sample(now));
                let raw24 = ((code as u32) & 0x000F_FFFF) << 4;
                (raw24 >> (8 * (2 - u32::from(offset % 3)))) as u8
            }
            REG_RESET => 0,
            _ => self.regs.get(usize::from(reg)).copied().unwrap_or(0),
        }
    }

    fn write_register(&mut self, reg: u8, value: u8) {
        let now = self.now();
        match reg {
            _ if reg <= REG_READ_ONLY_END => {}
            REG_RESET => {
                if value == RESET_CODE {
                    self.regs = default_registers();
                    self.measuring_since = None;
                    self.last_read = 0;
                    self.held = None;
                    self.held_temp = 0;
                }
            }
            REG_POWER_CTL => self.write_power_ctl(value, now),
            REG_FILTER => {
                if self.measuring_since.is_some() {
                    self.hold_latest(now);
                    self.measuring_since = Some(now);
                    self.last_read = 0;
                }
                self.regs[usize::from(REG_FILTER)] = value;
            }
            _ => {
                if let Some(slot) = self.regs.get_mut(usize::from(reg)) {
                    *slot = value;
                }
            }
        }
    }
}

impl ErrorType for SimAdxl355 {
    type Error = SimI2cError;
}

impl I2c for SimAdxl355 {
    fn transaction(
        &mut self,
        address: u8,
        operations: &mut [Operation<'_>],
    ) -> Result<(), Self::Error> {
        if address != self.address {
            return Err(SimI2cError::address_nack(address));
        }
        register_transaction(self, self.address, operations)
    }
}

impl SimDevice for SimAdxl355 {
    fn address(&self) -> u8 {
        self.address
    }

    fn transaction(&mut self, operations: &mut [Operation<'_>]) -> Result<(), SimI2cError> {
        register_transaction(self, self.address, operations)
    }
}
