//! A simulated NAU7802 24-bit bridge ADC at I2C address 0x2A, reading a panel's strain gauge.
//!
//! Modelled at the register level (Nuvoton's datasheet, as the SparkFun and Adafruit libraries
//! use it), as far as a driver uses the chip:
//! - Power-on and register reset (`PU_CTRL.RR` = 1) restore the defaults: every register 0
//!   except `REVISION_ID` = 0x0F. While RR is 1 the chip is held in reset.
//! - `PU_CTRL.PUR` reads 1 from [`POWER_UP_READY_US`] after `PUD` was set.
//! - Conversions run while `PUD`, `PUA` and `CS` are set and PUR is 1, one per `CTRL2.CRS`
//!   period (10/20/40/80/320 SPS; the reserved codes 100–110 run at 10 SPS). Conversion n
//!   completes at `start + n·period`; the start moves to "now" whenever gain, rate or channel
//!   change and to the end of a calibration. Each conversion averages the panel model over its
//!   period ([`PanelModel::sample_over`]), so an impulse shows in exactly one conversion.
//! - `PU_CTRL.CR` reads 1 while a conversion newer than the last one read exists; reading any
//!   `ADCO` byte marks the latest conversion as read (real-chip clear-on-read is unverified, so
//!   drivers should not rely on it either way).
//! - `ADCO_B2..B0` hold the latest conversion, 24-bit two's complement MSB first: strain ->
//!   bridge ratio `ε·GF/factor` -> `round(ratio·2²³·gain)`, saturated at ±(2²³−1). Channel 2
//!   (`CTRL2.CHS` = 1) has nothing connected and converts to 0.
//! - `CTRL2.CALS` = 1 starts a calibration: CALS reads 1 for [`CALIBRATION_US`] of simulated
//!   time, then clears; `CAL_ERR` is then set if the analog side was not powered (PUD and PUA),
//!   else cleared. Calibration changes no data (the model has no offset to remove), whatever
//!   `CALMOD`.
//! - `REVISION_ID` and the read-only bits PUR and CR ignore writes; other registers store what
//!   is written. An offline fault makes the chip NACK its address.

use std::sync::Arc;

use embedded_hal::i2c::{ErrorType, I2c, Operation};

use crate::clock::SimClock;
use crate::i2c::{register_transaction, RegisterChip, SimDevice, SimI2cError};
use crate::panel::{Chip, PanelModel};

/// The chip's fixed 7-bit address.
pub const ADDRESS: u8 = 0x2A;
/// How long after `PUD` is set `PUR` reads 1, µs (the datasheet's "within about 200 µs").
pub const POWER_UP_READY_US: u64 = 200;
/// How long an internal calibration keeps `CALS` set, µs of simulated time. Shorter than the
/// real ~344 ms so simulated nodes start quickly; drivers must poll CALS either way.
pub const CALIBRATION_US: u64 = 1_000;
/// Largest code magnitude: conversions saturate at ±`CODE_MAX`.
pub const CODE_MAX: i32 = (1 << 23) - 1;

const REG_PU_CTRL: u8 = 0x00;
const REG_CTRL1: u8 = 0x01;
const REG_CTRL2: u8 = 0x02;
const REG_ADCO_B2: u8 = 0x12;
const REG_ADCO_B0: u8 = 0x14;
const REG_REVISION_ID: u8 = 0x1F;
const REGISTER_COUNT: usize = 0x20;
const REVISION_ID: u8 = 0x0F;

const RR: u8 = 1 << 0;
const PUD: u8 = 1 << 1;
const PUA: u8 = 1 << 2;
const PUR: u8 = 1 << 3;
const CS: u8 = 1 << 4;
const CR: u8 = 1 << 5;
const CALS: u8 = 1 << 2;
const CAL_ERR: u8 = 1 << 3;
const CHS: u8 = 1 << 7;

/// The Wheatstone bridge between the panel's strain and the ADC input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bridge {
    /// Bridge factor in ε = factor·(Vout/Vex)/GF: 4 quarter, 2 half, 1 full bridge.
    pub factor: f64,
    /// Gauge factor.
    pub gauge_factor: f64,
}

impl Default for Bridge {
    /// A quarter bridge of metal-foil gauges (GF 2.0).
    fn default() -> Self {
        Bridge {
            factor: 4.0,
            gauge_factor: 2.0,
        }
    }
}

impl Bridge {
    /// The ideal code for `strain_ue` at PGA `gain`, saturated at ±[`CODE_MAX`].
    pub fn code(&self, strain_ue: f64, gain: u32) -> i32 {
        let ratio = strain_ue * 1e-6 * self.gauge_factor / self.factor;
        let code = (ratio * f64::from(1u32 << 23) * f64::from(gain)).round();
        code.clamp(-f64::from(CODE_MAX), f64::from(CODE_MAX)) as i32
    }
}

/// A simulated NAU7802 reading strain from a [`PanelModel`].
#[derive(Debug)]
pub struct SimNau7802 {
    model: Arc<PanelModel>,
    clock: SimClock,
    bridge: Bridge,
    regs: [u8; REGISTER_COUNT],
    pointer: u8,
    /// When PUD was last set (None while PUD is 0).
    powered_since: Option<u64>,
    /// When PUD, PUA and CS last became all set (None while any is 0).
    cycling_since: Option<u64>,
    /// Conversions restart here after a configuration change or a calibration.
    restart_at: u64,
    /// The conversion last read from ADCO (0 = none).
    last_read: u64,
    /// The code ADCO holds while no conversions run.
    held_code: i32,
    /// The running or last calibration: (end time, ends in error).
    calibration: Option<(u64, bool)>,
}

impl SimNau7802 {
    /// A chip in its power-on state, reading `model` on a quarter bridge at `clock`'s time.
    pub fn new(model: Arc<PanelModel>, clock: SimClock) -> Self {
        SimNau7802 {
            model,
            clock,
            bridge: Bridge::default(),
            regs: default_registers(),
            pointer: 0,
            powered_since: None,
            cycling_since: None,
            restart_at: 0,
            last_read: 0,
            held_code: 0,
            calibration: None,
        }
    }

    /// Use `bridge` instead of the default quarter bridge.
    pub fn with_bridge(mut self, bridge: Bridge) -> Self {
        self.bridge = bridge;
        self
    }

    /// The conversion period set by `CTRL2.CRS`, µs.
    pub fn conversion_period_us(&self) -> u64 {
        match (self.regs[usize::from(REG_CTRL2)] >> 4) & 0b111 {
            0b001 => 50_000,
            0b010 => 25_000,
            0b011 => 12_500,
            0b111 => 3_125,
            _ => 100_000,
        }
    }

    /// PGA gain from `CTRL1.GAIN`.
    fn gain(&self) -> u32 {
        1 << (self.regs[usize::from(REG_CTRL1)] & 0b111)
    }

    fn now(&self) -> u64 {
        self.clock.now_us()
    }

    fn power_up_ready(&self, now: u64) -> bool {
        self.powered_since
            .is_some_and(|since| now >= since.saturating_add(POWER_UP_READY_US))
    }

    fn calibrating(&self, now: u64) -> bool {
        self.calibration.is_some_and(|(end, _)| now < end)
    }

    /// When conversion 1 would start counting, if conversions run.
    fn conversion_start(&self) -> Option<u64> {
        let cycling = self.cycling_since?;
        let ready = self.powered_since?.saturating_add(POWER_UP_READY_US);
        Some(cycling.max(ready).max(self.restart_at))
    }

    /// The number of the latest completed conversion at `now` (0 = none yet).
    fn latest_conversion(&self, now: u64) -> u64 {
        match self.conversion_start() {
            Some(start) if now >= start && !self.calibrating(now) => {
                (now - start) / self.conversion_period_us()
            }
            _ => 0,
        }
    }

    /// The code of conversion `n` (≥ 1).
    fn conversion_code(&self, n: u64) -> i32 {
        let Some(start) = self.conversion_start() else {
            return self.held_code;
        };
        if self.regs[usize::from(REG_CTRL2)] & CHS != 0 {
            return 0;
        }
        let period = self.conversion_period_us();
        let t = start.saturating_add(n.saturating_mul(period));
        let strain = self.model.sample_over(t, period).strain_ue;
        self.bridge.code(f64::from(strain), self.gain())
    }

    /// The code ADCO shows at `now`.
    fn current_code(&self, now: u64) -> i32 {
        match self.latest_conversion(now) {
            0 => self.held_code,
            n => self.conversion_code(n),
        }
    }

    /// Before a change that restarts or stops conversions, keep the latest result in ADCO.
    fn hold_latest(&mut self, now: u64) {
        self.held_code = self.current_code(now);
        self.last_read = 0;
    }

    fn reset(&mut self) {
        self.regs = default_registers();
        self.powered_since = None;
        self.cycling_since = None;
        self.restart_at = 0;
        self.last_read = 0;
        self.held_code = 0;
        self.calibration = None;
    }

    fn write_pu_ctrl(&mut self, value: u8, now: u64) {
        if value & RR != 0 {
            self.reset();
            self.regs[usize::from(REG_PU_CTRL)] = RR;
            return;
        }
        let old = self.regs[usize::from(REG_PU_CTRL)];
        if value & PUD == 0 {
            self.powered_since = None;
        } else if old & PUD == 0 || old & RR != 0 {
            self.powered_since = Some(now);
        }
        let cycling = |v: u8| v & (PUD | PUA | CS) == PUD | PUA | CS && v & RR == 0;
        if cycling(value) && !cycling(old) {
            self.hold_latest(now);
            self.cycling_since = Some(now);
        } else if !cycling(value) && cycling(old) {
            self.hold_latest(now);
            self.cycling_since = None;
        }
        self.regs[usize::from(REG_PU_CTRL)] = value & !(PUR | CR);
    }

    fn write_ctrl2(&mut self, value: u8, now: u64) {
        let old = self.regs[usize::from(REG_CTRL2)];
        if value & CALS != 0 {
            let powered = self.regs[usize::from(REG_PU_CTRL)] & (PUD | PUA) == PUD | PUA;
            let end = now.saturating_add(CALIBRATION_US);
            self.hold_latest(now);
            self.calibration = Some((end, !powered));
            self.restart_at = end;
        } else if (value ^ old) & 0xF0 != 0 {
            // New rate or channel: the conversion in progress is abandoned.
            self.hold_latest(now);
            self.restart_at = now;
        }
        self.regs[usize::from(REG_CTRL2)] = value & !(CALS | CAL_ERR);
    }
}

fn default_registers() -> [u8; REGISTER_COUNT] {
    let mut regs = [0u8; REGISTER_COUNT];
    regs[usize::from(REG_REVISION_ID)] = REVISION_ID;
    regs
}

impl RegisterChip for SimNau7802 {
    fn acknowledges(&mut self) -> bool {
        !self.model.is_offline(Chip::Nau7802, self.now())
    }

    fn pointer_mut(&mut self) -> &mut u8 {
        &mut self.pointer
    }

    fn read_register(&mut self, reg: u8) -> u8 {
        let now = self.now();
        match reg {
            REG_PU_CTRL => {
                let mut value = self.regs[usize::from(REG_PU_CTRL)];
                if self.power_up_ready(now) && value & RR == 0 {
                    value |= PUR;
                }
                if self.latest_conversion(now) > self.last_read {
                    value |= CR;
                }
                value
            }
            REG_CTRL2 => {
                let mut value = self.regs[usize::from(REG_CTRL2)];
                match self.calibration {
                    Some((end, _)) if now < end => value |= CALS,
                    Some((_, true)) => value |= CAL_ERR,
                    _ => {}
                }
                value
            }
            REG_ADCO_B2..=REG_ADCO_B0 => {
                let latest = self.latest_conversion(now);
                let code = self.current_code(now);
                self.last_read = self.last_read.max(latest);
                let raw = (code as u32) & 0x00FF_FFFF;
                let shift = 8 * u32::from(REG_ADCO_B0 - reg);
                (raw >> shift) as u8
            }
            _ => self.regs.get(usize::from(reg)).copied().unwrap_or(0),
        }
    }

    fn write_register(&mut self, reg: u8, value: u8) {
        let now = self.now();
        match reg {
            REG_PU_CTRL => self.write_pu_ctrl(value, now),
            // Everything else is ignored while the chip is held in reset.
            _ if self.regs[usize::from(REG_PU_CTRL)] & RR != 0 => {}
            REG_CTRL1 => {
                if (value ^ self.regs[usize::from(REG_CTRL1)]) & 0b111 != 0 {
                    self.hold_latest(now);
                    self.restart_at = now;
                }
                self.regs[usize::from(REG_CTRL1)] = value;
            }
            REG_CTRL2 => self.write_ctrl2(value, now),
            REG_ADCO_B2..=REG_ADCO_B0 | REG_REVISION_ID => {}
            _ => {
                if let Some(slot) = self.regs.get_mut(usize::from(reg)) {
                    *slot = value;
                }
            }
        }
    }
}

impl ErrorType for SimNau7802 {
    type Error = SimI2cError;
}

impl I2c for SimNau7802 {
    fn transaction(
        &mut self,
        address: u8,
        operations: &mut [Operation<'_>],
    ) -> Result<(), Self::Error> {
        if address != ADDRESS {
            return Err(SimI2cError::address_nack(address));
        }
        register_transaction(self, ADDRESS, operations)
    }
}

impl SimDevice for SimNau7802 {
    fn address(&self) -> u8 {
        ADDRESS
    }

    fn transaction(&mut self, operations: &mut [Operation<'_>]) -> Result<(), SimI2cError> {
        register_transaction(self, ADDRESS, operations)
    }
}
