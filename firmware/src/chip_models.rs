//! `no_std` register-level models of the panel node's two chips, for an emulated board.
//!
//! The host simulator's chips (`towerlink-sim-chips`) need `std` (shared clocks, scenario
//! files, RNGs). An emulated MCU image (`firmware/boards/mps2-an386`) has no `std`, so it runs
//! the real NAU7802 and ADXL355 drivers against these smaller models instead: the same
//! register maps and the same protocol (an auto-incrementing register pointer set by the first
//! byte of a write), with a simple panel physics of their own:
//!
//! - strain: a base strain plus a slow wind sway and Gaussian-like noise, microstrain;
//! - tilt: a small lean of the panel about X and Y with a slower drift, degrees;
//! - temperature: a slow daily-like swing around 24 °C.
//!
//! Every value is a pure function of (seed, conversion instant), so two runs of an image agree.
//! Time comes from a [`TimeSource`] (the board's microsecond clock).
//!
//! Modelled as far as the drivers use the chips:
//! - NAU7802 (0x2A): `PU_CTRL.RR` resets every register (`REVISION_ID` reads 0x0F); `PUR`
//!   reads 1 from 200 µs after `PUD`; conversions run while `PUD`, `PUA` and `CS` are set, one
//!   per `CTRL2.CRS` period; `CR` reads 1 while a conversion newer than the last one read
//!   exists; `CALS` clears itself 1 ms after it was set, with `CAL_ERR` when the analog side
//!   was off; `ADCO_B2..B0` give the latest conversion (quarter bridge, GF 2, `CTRL1` gain),
//!   saturated at ±(2²³−1).
//! - ADXL355 (0x1D / 0x53): identity 0xAD/0x1D/0xED, standby after reset (data reads 0),
//!   `RESET` = 0x52 soft reset, `RANGE` ±2/4/8 g, `FILTER` ODR, `STATUS.DATA_RDY`, 20-bit
//!   X/Y/Z and the 12-bit temperature (1885 LSB at 25 °C, −9.05 LSB/°C).

use embedded_hal::i2c::{ErrorKind, ErrorType, I2c, NoAcknowledgeSource, Operation};

/// The microsecond clock the models read.
pub trait TimeSource {
    /// Microseconds since an arbitrary origin; never decreases.
    fn now_us(&self) -> u64;
}

impl TimeSource for fn() -> u64 {
    fn now_us(&self) -> u64 {
        self()
    }
}

/// A failed model transfer: the address was not acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nack;

impl embedded_hal::i2c::Error for Nack {
    fn kind(&self) -> ErrorKind {
        ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address)
    }
}

/// The panel physics both chips read.
#[derive(Debug, Clone, Copy)]
pub struct Panel {
    seed: u64,
    /// Mean strain, microstrain.
    pub base_strain_ue: f32,
    /// Wind sway amplitude, microstrain.
    pub sway_ue: f32,
    /// Strain noise standard deviation, microstrain.
    pub noise_ue: f32,
    /// Lean about X and Y, degrees.
    pub lean_deg: (f32, f32),
}

impl Panel {
    /// A panel whose parameters and noise follow from `seed` (use the node id).
    pub fn new(seed: u64) -> Self {
        let u = |k: u64| uniform(hash(seed, k, 0));
        Panel {
            seed,
            base_strain_ue: 80.0 + 80.0 * u(1),
            sway_ue: 10.0 + 10.0 * u(2),
            noise_ue: 0.5,
            lean_deg: (0.2 + 0.3 * u(3), -0.1 - 0.2 * u(4)),
        }
    }

    /// Strain at `t_us`, microstrain; `k` keys the noise (one value per conversion).
    pub fn strain_ue(&self, t_us: u64, k: u64) -> f32 {
        let t = t_us as f32 * 1e-6;
        let sway = self.sway_ue * libm::sinf(core::f32::consts::TAU * t / 8.0);
        self.base_strain_ue + sway + self.noise_ue * normal(hash(self.seed, 10, k))
    }

    /// Tilt (about X, about Y) at `t_us`, degrees.
    pub fn tilt_deg(&self, t_us: u64, k: u64) -> (f32, f32) {
        let t = t_us as f32 * 1e-6;
        let drift = 0.02 * libm::sinf(core::f32::consts::TAU * t / 30.0);
        let nx = 0.002 * normal(hash(self.seed, 11, k));
        let ny = 0.002 * normal(hash(self.seed, 12, k));
        (self.lean_deg.0 + drift + nx, self.lean_deg.1 - drift + ny)
    }

    /// Die temperature at `t_us`, °C.
    pub fn temperature_c(&self, t_us: u64) -> f32 {
        let t = t_us as f32 * 1e-6;
        24.0 + 0.5 * libm::sinf(core::f32::consts::TAU * t / 600.0)
    }
}

/// splitmix64's finaliser over three key words.
fn hash(seed: u64, stream: u64, k: u64) -> u64 {
    let mut z =
        seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ k.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn uniform(h: u64) -> f32 {
    (h >> 40) as f32 / (1u64 << 24) as f32
}

/// An approximately standard normal variate (sum of four uniforms, rescaled).
fn normal(h: u64) -> f32 {
    let s: f32 = (0..4).map(|i| uniform(h.rotate_left(i * 16))).sum();
    (s - 2.0) * 1.732_050_8
}

/// A chip with 8-bit registers behind an auto-incrementing register pointer.
trait RegisterChip {
    fn pointer(&mut self) -> &mut u8;
    fn read_register(&mut self, reg: u8, now_us: u64) -> u8;
    fn write_register(&mut self, reg: u8, value: u8, now_us: u64);
}

/// Run `operations` with the register-pointer protocol both chips speak: the first byte of a
/// write sets the pointer, later bytes are written at it; reads return the pointed register;
/// both advance the pointer, which survives between transactions.
fn register_transaction<C: RegisterChip>(
    chip: &mut C,
    operations: &mut [Operation<'_>],
    now_us: u64,
) {
    let mut previous_was_write = false;
    for operation in operations {
        match operation {
            Operation::Write(bytes) => {
                let mut expecting_pointer = !previous_was_write;
                for &byte in bytes.iter() {
                    if expecting_pointer {
                        *chip.pointer() = byte;
                        expecting_pointer = false;
                    } else {
                        let reg = *chip.pointer();
                        chip.write_register(reg, byte, now_us);
                        *chip.pointer() = reg.wrapping_add(1);
                    }
                }
                previous_was_write = previous_was_write || !bytes.is_empty();
            }
            Operation::Read(buffer) => {
                for byte in buffer.iter_mut() {
                    let reg = *chip.pointer();
                    *byte = chip.read_register(reg, now_us);
                    *chip.pointer() = reg.wrapping_add(1);
                }
                previous_was_write = false;
            }
        }
    }
}

/// The NAU7802's 7-bit address.
pub const NAU7802_ADDRESS: u8 = 0x2A;

const NAU_PU_CTRL: u8 = 0x00;
const NAU_CTRL1: u8 = 0x01;
const NAU_CTRL2: u8 = 0x02;
const NAU_ADCO_B2: u8 = 0x12;
const NAU_ADCO_B0: u8 = 0x14;
const NAU_REVISION: u8 = 0x1F;
const RR: u8 = 1 << 0;
const PUD: u8 = 1 << 1;
const PUA: u8 = 1 << 2;
const PUR: u8 = 1 << 3;
const CS: u8 = 1 << 4;
const CR: u8 = 1 << 5;
const CALS: u8 = 1 << 2;
const CAL_ERR: u8 = 1 << 3;
const NAU_POWER_UP_US: u64 = 200;
const NAU_CALIBRATION_US: u64 = 1_000;
const NAU_CODE_MAX: i64 = (1 << 23) - 1;

/// A modelled NAU7802 reading the strain of a [`Panel`].
#[derive(Debug)]
pub struct ModelNau7802<T> {
    panel: Panel,
    clock: T,
    regs: [u8; 0x20],
    pointer: u8,
    pud_since_us: Option<u64>,
    cal_until_us: Option<u64>,
    /// Time of conversion 0 (moves when rate, gain or channel change, and after calibration).
    start_us: u64,
    last_read: Option<u64>,
    latched_code: i32,
}

impl<T: TimeSource> ModelNau7802<T> {
    /// A chip at power-on.
    pub fn new(panel: Panel, clock: T) -> Self {
        let mut chip = ModelNau7802 {
            panel,
            clock,
            regs: [0; 0x20],
            pointer: 0,
            pud_since_us: None,
            cal_until_us: None,
            start_us: 0,
            last_read: None,
            latched_code: 0,
        };
        chip.reset();
        chip
    }

    fn reset(&mut self) {
        self.regs = [0; 0x20];
        self.regs[usize::from(NAU_REVISION)] = 0x0F;
        self.pud_since_us = None;
        self.cal_until_us = None;
        self.last_read = None;
    }

    fn period_us(&self) -> u64 {
        let sps: u64 = match (self.regs[usize::from(NAU_CTRL2)] >> 4) & 0b111 {
            1 => 20,
            2 => 40,
            3 => 80,
            7 => 320,
            _ => 10,
        };
        1_000_000 / sps
    }

    fn converting(&self, now: u64) -> bool {
        let pu = self.regs[usize::from(NAU_PU_CTRL)];
        pu & (PUD | PUA | CS) == (PUD | PUA | CS) && self.power_ready(now)
    }

    fn power_ready(&self, now: u64) -> bool {
        self.pud_since_us
            .is_some_and(|t| now >= t + NAU_POWER_UP_US)
    }

    /// Index of the latest completed conversion.
    fn latest(&self, now: u64) -> Option<u64> {
        if !self.converting(now) || now < self.start_us + self.period_us() {
            return None;
        }
        Some((now - self.start_us) / self.period_us() - 1)
    }

    fn code(&self, n: u64) -> i32 {
        let t = self.start_us + (n + 1) * self.period_us();
        let strain = self.panel.strain_ue(t, t / 1000);
        let gain = 1i64 << (self.regs[usize::from(NAU_CTRL1)] & 0b111);
        // Quarter bridge, gauge factor 2: ratio = strain * GF / 4.
        let ratio = f64::from(strain) * 1e-6 * 2.0 / 4.0;
        let code = libm::round(ratio * 8_388_608.0 * gain as f64) as i64;
        code.clamp(-NAU_CODE_MAX, NAU_CODE_MAX) as i32
    }

    fn update_calibration(&mut self, now: u64) {
        if let Some(until) = self.cal_until_us {
            if now >= until {
                self.cal_until_us = None;
                let pu = self.regs[usize::from(NAU_PU_CTRL)];
                let ctrl2 = &mut self.regs[usize::from(NAU_CTRL2)];
                *ctrl2 &= !CALS;
                if pu & (PUD | PUA) == (PUD | PUA) {
                    *ctrl2 &= !CAL_ERR;
                } else {
                    *ctrl2 |= CAL_ERR;
                }
                self.start_us = now;
            }
        }
    }
}

impl<T: TimeSource> RegisterChip for ModelNau7802<T> {
    fn pointer(&mut self) -> &mut u8 {
        &mut self.pointer
    }

    fn read_register(&mut self, reg: u8, now: u64) -> u8 {
        self.update_calibration(now);
        match reg {
            NAU_PU_CTRL => {
                let mut v = self.regs[0] & !(PUR | CR);
                if self.power_ready(now) {
                    v |= PUR;
                }
                if self.latest(now).is_some_and(|n| Some(n) != self.last_read) {
                    v |= CR;
                }
                v
            }
            NAU_ADCO_B2..=NAU_ADCO_B0 => {
                if reg == NAU_ADCO_B2 {
                    let latest = self.latest(now);
                    self.latched_code = latest.map_or(0, |n| self.code(n));
                    self.last_read = latest;
                }
                let shift = 8 * u32::from(NAU_ADCO_B0 - reg);
                ((self.latched_code as u32 & 0xFF_FFFF) >> shift) as u8
            }
            r if usize::from(r) < self.regs.len() => self.regs[usize::from(r)],
            _ => 0,
        }
    }

    fn write_register(&mut self, reg: u8, value: u8, now: u64) {
        match reg {
            NAU_PU_CTRL => {
                if value & RR != 0 {
                    self.reset();
                    self.regs[0] = RR;
                    return;
                }
                let was = self.regs[0];
                self.regs[0] = value & !(PUR | CR);
                if value & PUD == 0 {
                    self.pud_since_us = None;
                } else if self.pud_since_us.is_none() {
                    self.pud_since_us = Some(now);
                }
                if value & CS != 0 && was & CS == 0 {
                    self.start_us = now;
                }
            }
            NAU_CTRL1 | NAU_CTRL2 => {
                self.regs[usize::from(reg)] = value;
                self.start_us = now;
                if reg == NAU_CTRL2 && value & CALS != 0 {
                    self.cal_until_us = Some(now + NAU_CALIBRATION_US);
                }
            }
            NAU_REVISION | NAU_ADCO_B2..=NAU_ADCO_B0 => {}
            r if usize::from(r) < self.regs.len() => self.regs[usize::from(r)] = value,
            _ => {}
        }
    }
}

impl<T: TimeSource> ErrorType for ModelNau7802<T> {
    type Error = Nack;
}

impl<T: TimeSource> I2c for ModelNau7802<T> {
    fn transaction(
        &mut self,
        address: u8,
        operations: &mut [Operation<'_>],
    ) -> Result<(), Self::Error> {
        if address != NAU7802_ADDRESS {
            return Err(Nack);
        }
        let now = self.clock.now_us();
        register_transaction(self, operations, now);
        Ok(())
    }
}

const ADX_STATUS: u8 = 0x04;
const ADX_TEMP2: u8 = 0x06;
const ADX_XDATA3: u8 = 0x08;
const ADX_ZDATA1: u8 = 0x10;
const ADX_FILTER: u8 = 0x28;
const ADX_RANGE: u8 = 0x2C;
const ADX_POWER_CTL: u8 = 0x2D;
const ADX_RESET: u8 = 0x2F;
const ADX_RESET_CODE: u8 = 0x52;

/// A modelled ADXL355 measuring the tilt and temperature of a [`Panel`].
#[derive(Debug)]
pub struct ModelAdxl355<T> {
    panel: Panel,
    clock: T,
    address: u8,
    regs: [u8; 0x30],
    pointer: u8,
    last_read: Option<u64>,
    latched: [u8; 9],
}

impl<T: TimeSource> ModelAdxl355<T> {
    /// A chip at power-on answering at `address` (0x1D with ASEL low, 0x53 high).
    pub fn new(panel: Panel, clock: T, address: u8) -> Self {
        let mut chip = ModelAdxl355 {
            panel,
            clock,
            address,
            regs: [0; 0x30],
            pointer: 0,
            last_read: None,
            latched: [0; 9],
        };
        chip.reset();
        chip
    }

    fn reset(&mut self) {
        self.regs = [0; 0x30];
        self.regs[0] = 0xAD;
        self.regs[1] = 0x1D;
        self.regs[2] = 0xED;
        self.regs[3] = 0x01;
        self.regs[usize::from(ADX_RANGE)] = 0x81;
        self.regs[usize::from(ADX_POWER_CTL)] = 0x01;
        self.last_read = None;
    }

    fn measuring(&self) -> bool {
        self.regs[usize::from(ADX_POWER_CTL)] & 0x01 == 0
    }

    fn period_us(&self) -> u64 {
        // ODR = 4000 Hz >> code (codes 0..=10).
        let code = u32::from(self.regs[usize::from(ADX_FILTER)] & 0x0F).min(10);
        (250u64 << code).max(250)
    }

    fn sample_index(&self, now: u64) -> u64 {
        now / self.period_us()
    }

    fn lsb_per_g(&self) -> f32 {
        match self.regs[usize::from(ADX_RANGE)] & 0b11 {
            2 => 128_000.0,
            3 => 64_000.0,
            _ => 256_000.0,
        }
    }

    fn xyz(&self, n: u64) -> [u8; 9] {
        let t = n * self.period_us();
        let (tx, ty) = self.panel.tilt_deg(t, n);
        let ax = libm::sinf(tx.to_radians());
        let ay = libm::sinf(ty.to_radians());
        let az = libm::sqrtf((1.0 - ax * ax - ay * ay).max(0.0));
        let mut out = [0u8; 9];
        for (i, a) in [ax, ay, az].into_iter().enumerate() {
            let code = (libm::roundf(a * self.lsb_per_g()) as i32).clamp(-(1 << 19), (1 << 19) - 1);
            let raw24 = ((code as u32) & 0xF_FFFF) << 4;
            out[3 * i] = (raw24 >> 16) as u8;
            out[3 * i + 1] = (raw24 >> 8) as u8;
            out[3 * i + 2] = raw24 as u8;
        }
        out
    }

    fn temperature_raw(&self, now: u64) -> u16 {
        let t = self.panel.temperature_c(now);
        libm::roundf(1885.0 + (t - 25.0) * -9.05).clamp(0.0, 4095.0) as u16
    }
}

impl<T: TimeSource> RegisterChip for ModelAdxl355<T> {
    fn pointer(&mut self) -> &mut u8 {
        &mut self.pointer
    }

    fn read_register(&mut self, reg: u8, now: u64) -> u8 {
        match reg {
            ADX_STATUS => {
                let fresh = self.measuring() && Some(self.sample_index(now)) != self.last_read;
                u8::from(fresh)
            }
            ADX_TEMP2 => {
                if self.regs[usize::from(ADX_POWER_CTL)] & 0x02 != 0 {
                    0
                } else {
                    (self.temperature_raw(now) >> 8) as u8
                }
            }
            0x07 => {
                if self.regs[usize::from(ADX_POWER_CTL)] & 0x02 != 0 {
                    0
                } else {
                    self.temperature_raw(now) as u8
                }
            }
            ADX_XDATA3..=ADX_ZDATA1 => {
                if reg == ADX_XDATA3 {
                    if self.measuring() {
                        let n = self.sample_index(now);
                        self.latched = self.xyz(n);
                        self.last_read = Some(n);
                    } else {
                        self.latched = [0; 9];
                    }
                }
                self.latched[usize::from(reg - ADX_XDATA3)]
            }
            r if usize::from(r) < self.regs.len() => self.regs[usize::from(r)],
            _ => 0,
        }
    }

    fn write_register(&mut self, reg: u8, value: u8, _now: u64) {
        match reg {
            ADX_RESET if value == ADX_RESET_CODE => self.reset(),
            ADX_FILTER | ADX_RANGE | ADX_POWER_CTL => self.regs[usize::from(reg)] = value,
            // Identity, status and data are read-only; other registers are not modelled.
            _ => {}
        }
    }
}

impl<T: TimeSource> ErrorType for ModelAdxl355<T> {
    type Error = Nack;
}

impl<T: TimeSource> I2c for ModelAdxl355<T> {
    fn transaction(
        &mut self,
        address: u8,
        operations: &mut [Operation<'_>],
    ) -> Result<(), Self::Error> {
        if address != self.address {
            return Err(Nack);
        }
        let now = self.clock.now_us();
        register_transaction(self, operations, now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::drivers::adxl355::{self, Adxl355};
    use crate::drivers::nau7802::{self, Nau7802};
    use crate::node::panel::{PanelLayout, PanelSensors};
    use crate::node::SensorSet;
    use core::cell::Cell;
    use embedded_hal::delay::DelayNs;
    use std::rc::Rc;

    #[derive(Clone, Default)]
    struct TestClock(Rc<Cell<u64>>);

    impl TimeSource for TestClock {
        fn now_us(&self) -> u64 {
            self.0.get()
        }
    }

    impl DelayNs for TestClock {
        fn delay_ns(&mut self, ns: u32) {
            self.0.set(self.0.get() + u64::from(ns).div_ceil(1000));
        }
    }

    fn board(clock: &TestClock) -> PanelSensors<ModelNau7802<TestClock>, ModelAdxl355<TestClock>> {
        let panel = Panel::new(101);
        PanelSensors::new(
            Nau7802::new(ModelNau7802::new(panel, clock.clone())),
            Adxl355::new(
                ModelAdxl355::new(panel, clock.clone(), 0x1D),
                adxl355::Address::AselLow,
            ),
            PanelLayout::default(),
        )
    }

    #[test]
    fn the_real_drivers_initialise_and_read_plausible_values() {
        let clock = TestClock::default();
        let mut sensors = board(&clock);
        let init = sensors.init_chips(
            &mut clock.clone(),
            nau7802::Config::default(),
            adxl355::Config::default(),
        );
        assert!(init.adc.is_ok() && init.accel.is_ok(), "{init:?}");
        clock.0.set(clock.0.get() + 100_000);
        let panel = Panel::new(101);
        let strain = sensors.read(0).unwrap();
        assert!(
            (strain - panel.base_strain_ue).abs() < panel.sway_ue + 5.0,
            "strain {strain} vs {panel:?}"
        );
        sensors.begin_instant(1);
        let x = sensors.read(1).unwrap();
        let y = sensors.read(2).unwrap();
        assert!((x - panel.lean_deg.0).abs() < 0.05, "tilt_x {x}");
        assert!((y - panel.lean_deg.1).abs() < 0.05, "tilt_y {y}");
        let t = sensors.read(3).unwrap();
        assert!((23.0..25.0).contains(&t), "temperature {t}");
    }

    #[test]
    fn conversions_follow_the_clock_and_flags() {
        let clock = TestClock::default();
        let mut adc = Nau7802::new(ModelNau7802::new(Panel::new(7), clock.clone()));
        adc.init(&mut clock.clone(), nau7802::Config::default())
            .unwrap();
        // 80 SPS: a new conversion every 12.5 ms; reading it clears CR.
        clock.0.set(clock.0.get() + 13_000);
        assert!(adc.data_ready().unwrap());
        let a = adc.read_raw().unwrap();
        assert!(!adc.data_ready().unwrap());
        clock.0.set(clock.0.get() + 12_500);
        assert!(adc.data_ready().unwrap());
        let b = adc.read_raw().unwrap();
        assert_ne!(a, b, "noise makes consecutive conversions differ");
        // Same seed, same instants: the same codes.
        let again = TestClock::default();
        let mut adc2 = Nau7802::new(ModelNau7802::new(Panel::new(7), again.clone()));
        adc2.init(&mut again.clone(), nau7802::Config::default())
            .unwrap();
        again.0.set(again.0.get() + 13_000);
        assert_eq!(adc2.read_raw().unwrap(), a);
    }

    #[test]
    fn the_accelerometer_is_in_standby_until_started_and_nacks_other_addresses() {
        let clock = TestClock::default();
        let mut chip = ModelAdxl355::new(Panel::new(1), clock.clone(), 0x1D);
        let mut b = [0u8; 9];
        chip.write_read(0x1D, &[0x08], &mut b).unwrap();
        assert_eq!(b, [0; 9], "standby reads zeros");
        assert_eq!(chip.write_read(0x53, &[0x00], &mut b[..1]), Err(Nack));
        let mut nau = ModelNau7802::new(Panel::new(1), clock);
        assert_eq!(nau.write(0x2B, &[0x00]), Err(Nack));
        let mut accel = Adxl355::new(chip, adxl355::Address::AselLow);
        accel
            .init(&mut TestClock::default(), adxl355::Config::default())
            .unwrap();
        let a = accel.read_acceleration().unwrap();
        let g = libm::sqrtf(a[0] * a[0] + a[1] * a[1] + a[2] * a[2]);
        assert!((g - adxl355::STANDARD_GRAVITY).abs() < 0.01, "{a:?}");
    }
}
