//! Driver for the Nuvoton NAU7802 24-bit bridge ADC (I2C address `0x2A`), the strain-gauge
//! front end of a panel node.
//!
//! The driver is generic over [`embedded_hal::i2c::I2c`] and owns only the bus handle and
//! its configuration. [`Nau7802::init`] runs the power-up sequence of the register map
//! (Nuvoton's datasheet, as the SparkFun and Adafruit libraries use it): register reset,
//! digital then analog power-up, revision check, LDO / gain / conversion rate, chopper clock
//! off, PGA output capacitor on, and an internal offset calibration whose `CALS` bit is polled
//! until it self-clears (the SparkFun semantics; Adafruit's inverted wait is a known bug).
//!
//! Readings come out as raw 24-bit two's-complement codes ([`Nau7802::read_raw`]) or as
//! strain ([`Nau7802::read_microstrain`]) through the standard Wheatstone-bridge equations
//! described by a [`BridgeConfig`].

use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::I2c;

/// The NAU7802's fixed 7-bit I2C address.
pub const ADDRESS: u8 = 0x2A;

/// Largest positive conversion code (2²³ − 1). A code at this value (or its negative) means
/// the input is at or beyond full scale.
pub const CODE_MAX: i32 = (1 << 23) - 1;

/// Full scale of the 24-bit converter, 2²³, as used by the bridge equations.
const FULL_SCALE: f32 = 8_388_608.0;

/// How many times [`Nau7802::init`] reads `PU_CTRL` waiting for `PUR` (1 ms apart); the
/// datasheet promises about 200 µs.
pub const POWER_UP_MAX_POLLS: u32 = 10;
/// How many times [`Nau7802::init`] reads `CTRL2` waiting for `CALS` to clear (10 ms apart).
/// Internal calibration takes about 344 ms at 10 SPS, so one second leaves ample margin.
pub const CALIBRATION_MAX_POLLS: u32 = 100;
/// Delay between two polls of `CALS`, ms.
pub const CALIBRATION_POLL_MS: u32 = 10;
/// Time the register reset bit is held, ms.
const RESET_HOLD_MS: u32 = 10;
/// Analog wake-up plus first conversion after leaving power-down, ms.
const ANALOG_POWER_UP_MS: u32 = 600;

/// Register addresses of the NAU7802 (8-bit registers, auto-incrementing pointer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Register {
    /// Power-up control, reset, cycle start, data ready.
    PuCtrl = 0x00,
    /// Gain and LDO voltage.
    Ctrl1 = 0x01,
    /// Calibration, conversion rate and channel select.
    Ctrl2 = 0x02,
    /// Conversion result, most significant byte (followed by `ADCO_B1`, `ADCO_B0`).
    AdcoB2 = 0x12,
    /// ADC control (chopper clock), shared with OTP.
    Adc = 0x15,
    /// PGA control.
    Pga = 0x1B,
    /// PGA / ADC power control.
    PgaPwr = 0x1C,
    /// Device revision; the low nibble always reads `0xF`.
    RevisionId = 0x1F,
}

impl Register {
    /// The register's address byte.
    pub const fn addr(self) -> u8 {
        self as u8
    }
}

/// Bits of `PU_CTRL` (0x00).
pub mod pu_ctrl {
    /// Register reset.
    pub const RR: u8 = 1 << 0;
    /// Power up digital.
    pub const PUD: u8 = 1 << 1;
    /// Power up analog.
    pub const PUA: u8 = 1 << 2;
    /// Power-up ready (read only).
    pub const PUR: u8 = 1 << 3;
    /// Cycle start: begin conversions.
    pub const CS: u8 = 1 << 4;
    /// Cycle ready: a new conversion is available (read only).
    pub const CR: u8 = 1 << 5;
    /// Analog supply from the internal LDO.
    pub const AVDDS: u8 = 1 << 7;
}

/// Bits of `CTRL2` (0x02).
pub mod ctrl2 {
    /// Calibration mode field (bits 1:0); 0 = internal offset.
    pub const CALMOD_MASK: u8 = 0b11;
    /// Calibration start; reads 1 while calibrating and clears itself.
    pub const CALS: u8 = 1 << 2;
    /// Calibration error.
    pub const CAL_ERR: u8 = 1 << 3;
    /// Conversion rate field shift (bits 6:4).
    pub const CRS_SHIFT: u8 = 4;
    /// Channel select: 0 = channel 1, 1 = channel 2.
    pub const CHS: u8 = 1 << 7;
}

/// Bits of the `ADC` register (0x15).
pub mod adc {
    /// Chopper clock field (bits 5:4); `0b11` turns the chopper clock off.
    pub const REG_CHPS_OFF: u8 = 0b11 << 4;
}

/// Bits of `PGA` (0x1B).
pub mod pga {
    /// LDO mode: 0 = improved stability with low-ESR output capacitors.
    pub const LDOMODE: u8 = 1 << 6;
}

/// Bits of `PGA_PWR` (0x1C).
pub mod pga_pwr {
    /// Enable the PGA output bypass capacitor.
    pub const PGA_CAP_EN: u8 = 1 << 7;
}

/// PGA gain (`CTRL1` bits 2:0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gain {
    /// ×1
    X1,
    /// ×2
    X2,
    /// ×4
    X4,
    /// ×8
    X8,
    /// ×16
    X16,
    /// ×32
    X32,
    /// ×64
    X64,
    /// ×128
    X128,
}

impl Gain {
    /// The field value in `CTRL1`.
    pub const fn bits(self) -> u8 {
        self as u8
    }

    /// The gain as a factor.
    pub const fn factor(self) -> u32 {
        1 << (self as u32)
    }
}

/// Internal LDO output voltage (`CTRL1` bits 5:3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ldo {
    /// 4.5 V
    V4_5,
    /// 4.2 V
    V4_2,
    /// 3.9 V
    V3_9,
    /// 3.6 V
    V3_6,
    /// 3.3 V
    V3_3,
    /// 3.0 V
    V3_0,
    /// 2.7 V
    V2_7,
    /// 2.4 V
    V2_4,
}

impl Ldo {
    /// The field value in `CTRL1` (before shifting).
    pub const fn bits(self) -> u8 {
        self as u8
    }

    /// The output voltage, mV.
    pub const fn millivolts(self) -> u16 {
        4500 - 300 * (self as u16)
    }
}

/// Conversion rate (`CTRL2` bits 6:4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleRate {
    /// 10 samples per second.
    Sps10,
    /// 20 samples per second.
    Sps20,
    /// 40 samples per second.
    Sps40,
    /// 80 samples per second.
    Sps80,
    /// 320 samples per second.
    Sps320,
}

impl SampleRate {
    /// The field value in `CTRL2` (before shifting).
    pub const fn bits(self) -> u8 {
        match self {
            SampleRate::Sps10 => 0b000,
            SampleRate::Sps20 => 0b001,
            SampleRate::Sps40 => 0b010,
            SampleRate::Sps80 => 0b011,
            SampleRate::Sps320 => 0b111,
        }
    }

    /// Conversions per second.
    pub const fn hz(self) -> u16 {
        match self {
            SampleRate::Sps10 => 10,
            SampleRate::Sps20 => 20,
            SampleRate::Sps40 => 40,
            SampleRate::Sps80 => 80,
            SampleRate::Sps320 => 320,
        }
    }
}

/// Which differential input the converter samples (`CTRL2.CHS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// VIN1P / VIN1N.
    Ch1,
    /// VIN2P / VIN2N.
    Ch2,
}

/// How the strain gauges are wired into the Wheatstone bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BridgeKind {
    /// One active gauge: ε = 4·(Vout/Vex)/GF.
    Quarter,
    /// Two active gauges: ε = 2·(Vout/Vex)/GF.
    Half,
    /// Four active gauges: ε = (Vout/Vex)/GF.
    Full,
}

impl BridgeKind {
    /// The bridge factor in ε = factor·(Vout/Vex)/GF.
    pub const fn factor(self) -> f32 {
        match self {
            BridgeKind::Quarter => 4.0,
            BridgeKind::Half => 2.0,
            BridgeKind::Full => 1.0,
        }
    }
}

/// The strain gauge bridge behind the ADC. The excitation is the ADC's own reference
/// (ratiometric), so Vout/Vex = code / (2²³ · gain).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BridgeConfig {
    /// Bridge wiring.
    pub kind: BridgeKind,
    /// Gauge factor of the gauges (about 2.0 for metal foil gauges).
    pub gauge_factor: f32,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            kind: BridgeKind::Quarter,
            gauge_factor: 2.0,
        }
    }
}

/// Everything [`Nau7802::init`] configures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    /// PGA gain.
    pub gain: Gain,
    /// Internal LDO voltage, or `None` to run the analog side from an external AVDD.
    pub ldo: Option<Ldo>,
    /// Conversion rate.
    pub rate: SampleRate,
    /// Input channel.
    pub channel: Channel,
    /// The bridge, for [`Nau7802::read_microstrain`].
    pub bridge: BridgeConfig,
}

impl Default for Config {
    /// Gain ×128, internal LDO at 3.0 V, 80 SPS (enough for a 50 Hz strain channel),
    /// channel 1, quarter bridge with GF 2.0.
    fn default() -> Self {
        Config {
            gain: Gain::X128,
            ldo: Some(Ldo::V3_0),
            rate: SampleRate::Sps80,
            channel: Channel::Ch1,
            bridge: BridgeConfig::default(),
        }
    }
}

/// What can go wrong talking to the NAU7802.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error<E> {
    /// The bus transfer failed.
    I2c(E),
    /// `REVISION_ID`'s low nibble is not `0xF`: not a NAU7802, or no chip at all.
    WrongId {
        /// The value read from `REVISION_ID`.
        revision: u8,
    },
    /// The chip finished its internal calibration with `CAL_ERR` set.
    CalibrationFailed,
    /// A bit the chip should set or clear by itself (`PUR`, `CALS`) did not change in time.
    Timeout,
    /// The conversion is at full scale: the bridge is disconnected or overloaded.
    Saturated {
        /// The code read.
        code: i32,
    },
}

/// Sign-extend a 24-bit two's-complement value held in the low bits of `raw`.
pub const fn sign_extend_24(raw: u32) -> i32 {
    ((raw << 8) as i32) >> 8
}

/// Strain in microstrain for conversion `code` at PGA `gain` on `bridge`.
pub fn microstrain_from_code(code: i32, gain: Gain, bridge: &BridgeConfig) -> f32 {
    let ratio = code as f32 / (FULL_SCALE * gain.factor() as f32);
    ratio * bridge.kind.factor() / bridge.gauge_factor * 1.0e6
}

/// A NAU7802 on an I2C bus.
#[derive(Debug)]
pub struct Nau7802<I2C> {
    i2c: I2C,
    config: Config,
}

impl<I2C: I2c> Nau7802<I2C> {
    /// Wrap the bus; nothing is sent until [`Nau7802::init`].
    pub fn new(i2c: I2C) -> Self {
        Nau7802 {
            i2c,
            config: Config::default(),
        }
    }

    /// The configuration last passed to [`Nau7802::init`] (the default before).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Give the bus back.
    pub fn release(self) -> I2C {
        self.i2c
    }

    /// Reset, power up, check the revision, configure and calibrate the chip.
    ///
    /// Takes about a second of `delay` (600 ms analog wake-up plus calibration).
    pub fn init<D: DelayNs>(
        &mut self,
        delay: &mut D,
        config: Config,
    ) -> Result<(), Error<I2C::Error>> {
        self.config = config;

        // Register reset, then power up the digital side and wait for it to say it is ready.
        self.write(Register::PuCtrl, pu_ctrl::RR)?;
        delay.delay_ms(RESET_HOLD_MS);
        self.write(Register::PuCtrl, pu_ctrl::PUD)?;
        self.poll_until(delay, Register::PuCtrl, POWER_UP_MAX_POLLS, 1, |v| {
            v & pu_ctrl::PUR != 0
        })?;

        let mut pu = pu_ctrl::PUD | pu_ctrl::PUA;
        self.write(Register::PuCtrl, pu)?;
        delay.delay_ms(ANALOG_POWER_UP_MS);
        pu |= pu_ctrl::CS;
        self.write(Register::PuCtrl, pu)?;

        let revision = self.read(Register::RevisionId)?;
        if revision & 0x0F != 0x0F {
            return Err(Error::WrongId { revision });
        }

        // CTRL1: LDO voltage and gain; DRDY_SEL and CRP stay 0 (DRDY pin = conversion ready,
        // active high).
        let vldo = config.ldo.map_or(0, Ldo::bits);
        self.write(Register::Ctrl1, (vldo << 3) | config.gain.bits())?;
        if config.ldo.is_some() {
            pu |= pu_ctrl::AVDDS;
            self.write(Register::PuCtrl, pu)?;
        }

        self.write(Register::Ctrl2, self.ctrl2_base())?;

        // The ADC and PGA registers share bits with OTP and current settings we do not own:
        // read-modify-write them.
        self.modify(Register::Adc, |v| v | adc::REG_CHPS_OFF)?;
        self.modify(Register::Pga, |v| v & !pga::LDOMODE)?;
        self.modify(Register::PgaPwr, |v| v | pga_pwr::PGA_CAP_EN)?;

        self.calibrate_internal_offset(delay)
    }

    /// Run the internal offset calibration (`CALMOD = 0`) and wait for it to finish.
    pub fn calibrate_internal_offset<D: DelayNs>(
        &mut self,
        delay: &mut D,
    ) -> Result<(), Error<I2C::Error>> {
        self.write(Register::Ctrl2, self.ctrl2_base() | ctrl2::CALS)?;
        let ctrl2 = self.poll_until(
            delay,
            Register::Ctrl2,
            CALIBRATION_MAX_POLLS,
            CALIBRATION_POLL_MS,
            |v| v & ctrl2::CALS == 0,
        )?;
        if ctrl2 & ctrl2::CAL_ERR != 0 {
            return Err(Error::CalibrationFailed);
        }
        Ok(())
    }

    /// Whether a new conversion is waiting (`PU_CTRL.CR`).
    pub fn data_ready(&mut self) -> Result<bool, Error<I2C::Error>> {
        Ok(self.read(Register::PuCtrl)? & pu_ctrl::CR != 0)
    }

    /// The latest conversion as a signed 24-bit code.
    pub fn read_raw(&mut self) -> Result<i32, Error<I2C::Error>> {
        let mut buf = [0u8; 3];
        self.i2c
            .write_read(ADDRESS, &[Register::AdcoB2.addr()], &mut buf)
            .map_err(Error::I2c)?;
        let raw = u32::from(buf[0]) << 16 | u32::from(buf[1]) << 8 | u32::from(buf[2]);
        Ok(sign_extend_24(raw))
    }

    /// The latest conversion as strain in microstrain, through the configured bridge.
    /// A full-scale code is reported as [`Error::Saturated`] rather than as a number.
    pub fn read_microstrain(&mut self) -> Result<f32, Error<I2C::Error>> {
        let code = self.read_raw()?;
        if code >= CODE_MAX || code <= -CODE_MAX {
            return Err(Error::Saturated { code });
        }
        Ok(microstrain_from_code(
            code,
            self.config.gain,
            &self.config.bridge,
        ))
    }

    /// `CTRL2` without the calibration start bit: internal offset mode, rate, channel.
    fn ctrl2_base(&self) -> u8 {
        let chs = match self.config.channel {
            Channel::Ch1 => 0,
            Channel::Ch2 => ctrl2::CHS,
        };
        chs | (self.config.rate.bits() << ctrl2::CRS_SHIFT)
    }

    /// Read `reg` up to `max_polls` times, `interval_ms` apart, until `done` holds for its
    /// value; returns that value.
    fn poll_until<D: DelayNs>(
        &mut self,
        delay: &mut D,
        reg: Register,
        max_polls: u32,
        interval_ms: u32,
        done: impl Fn(u8) -> bool,
    ) -> Result<u8, Error<I2C::Error>> {
        for _ in 0..max_polls {
            let value = self.read(reg)?;
            if done(value) {
                return Ok(value);
            }
            delay.delay_ms(interval_ms);
        }
        Err(Error::Timeout)
    }

    fn read(&mut self, reg: Register) -> Result<u8, Error<I2C::Error>> {
        let mut buf = [0u8; 1];
        self.i2c
            .write_read(ADDRESS, &[reg.addr()], &mut buf)
            .map_err(Error::I2c)?;
        Ok(buf[0])
    }

    fn write(&mut self, reg: Register, value: u8) -> Result<(), Error<I2C::Error>> {
        self.i2c
            .write(ADDRESS, &[reg.addr(), value])
            .map_err(Error::I2c)
    }

    fn modify(&mut self, reg: Register, f: impl FnOnce(u8) -> u8) -> Result<(), Error<I2C::Error>> {
        let value = self.read(reg)?;
        self.write(reg, f(value))
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use embedded_hal::i2c::ErrorKind;
    use embedded_hal_mock::eh1::delay::NoopDelay;
    use embedded_hal_mock::eh1::i2c::{Mock as I2cMock, Transaction as Tx};
    use std::vec;
    use std::vec::Vec;

    fn w(reg: u8, value: u8) -> Tx {
        Tx::write(ADDRESS, vec![reg, value])
    }

    fn r(reg: u8, value: u8) -> Tx {
        Tx::write_read(ADDRESS, vec![reg], vec![value])
    }

    /// The transactions of `init` with the default config up to (not including) the
    /// calibration polls, with `revision` answered at REVISION_ID.
    fn init_prefix(revision: u8) -> Vec<Tx> {
        vec![
            w(0x00, 0x01), // RR
            w(0x00, 0x02), // PUD
            r(0x00, 0x02), // PUR not yet
            r(0x00, 0x0A), // PUR set
            w(0x00, 0x06), // PUD | PUA
            w(0x00, 0x16), // + CS
            r(0x1F, revision),
        ]
    }

    fn init_config_and_cal_start() -> Vec<Tx> {
        vec![
            // CTRL1: VLDO 3.0 V (0b101) << 3 | gain x128 (0b111)
            w(0x01, 0b0010_1111),
            // PU_CTRL + AVDDS
            w(0x00, 0x96),
            // CTRL2: CRS 80 SPS (0b011) << 4, CALMOD 0, CHS 0
            w(0x02, 0x30),
            r(0x15, 0x00),
            w(0x15, 0x30),
            r(0x1B, 0x40),
            w(0x1B, 0x00),
            r(0x1C, 0x00),
            w(0x1C, 0x80),
            // start internal offset calibration
            w(0x02, 0x34),
        ]
    }

    #[test]
    fn init_runs_the_register_sequence() {
        let mut tx = init_prefix(0x0F);
        tx.extend(init_config_and_cal_start());
        tx.push(r(0x02, 0x34)); // still calibrating
        tx.push(r(0x02, 0x34));
        tx.push(r(0x02, 0x30)); // CALS cleared, no CAL_ERR
        let mut i2c = I2cMock::new(&tx);
        let mut adc = Nau7802::new(&mut i2c);
        adc.init(&mut NoopDelay::new(), Config::default()).unwrap();
        i2c.done();
    }

    #[test]
    fn init_with_external_avdd_channel_2_and_other_rate() {
        let config = Config {
            gain: Gain::X16,
            ldo: None,
            rate: SampleRate::Sps320,
            channel: Channel::Ch2,
            bridge: BridgeConfig::default(),
        };
        let mut tx = init_prefix(0x2F); // other revisions have the same low nibble
        tx.extend([
            w(0x01, 0b0000_0100), // VLDO bits 0, gain x16
            // no AVDDS write
            w(0x02, 0xF0), // CHS | CRS 320 (0b111)
            r(0x15, 0x0C),
            w(0x15, 0x3C), // other bits kept
            r(0x1B, 0x41),
            w(0x1B, 0x01),
            r(0x1C, 0x15),
            w(0x1C, 0x95),
            w(0x02, 0xF4),
            r(0x02, 0xF0),
        ]);
        let mut i2c = I2cMock::new(&tx);
        let mut adc = Nau7802::new(&mut i2c);
        adc.init(&mut NoopDelay::new(), config).unwrap();
        assert_eq!(adc.config().gain, Gain::X16);
        i2c.done();
    }

    #[test]
    fn wrong_revision_is_reported() {
        let tx = init_prefix(0x00);
        let mut i2c = I2cMock::new(&tx);
        let mut adc = Nau7802::new(&mut i2c);
        let err = adc
            .init(&mut NoopDelay::new(), Config::default())
            .unwrap_err();
        assert_eq!(err, Error::WrongId { revision: 0x00 });
        i2c.done();
    }

    #[test]
    fn power_up_ready_never_set_times_out() {
        let mut tx = vec![w(0x00, 0x01), w(0x00, 0x02)];
        for _ in 0..POWER_UP_MAX_POLLS {
            tx.push(r(0x00, 0x02));
        }
        let mut i2c = I2cMock::new(&tx);
        let mut adc = Nau7802::new(&mut i2c);
        let err = adc
            .init(&mut NoopDelay::new(), Config::default())
            .unwrap_err();
        assert_eq!(err, Error::Timeout);
        i2c.done();
    }

    #[test]
    fn calibration_that_never_finishes_times_out() {
        let mut tx = init_prefix(0x0F);
        tx.extend(init_config_and_cal_start());
        for _ in 0..CALIBRATION_MAX_POLLS {
            tx.push(r(0x02, 0x34));
        }
        let mut i2c = I2cMock::new(&tx);
        let mut adc = Nau7802::new(&mut i2c);
        let err = adc
            .init(&mut NoopDelay::new(), Config::default())
            .unwrap_err();
        assert_eq!(err, Error::Timeout);
        i2c.done();
    }

    #[test]
    fn calibration_error_bit_fails_init() {
        let mut tx = init_prefix(0x0F);
        tx.extend(init_config_and_cal_start());
        tx.push(r(0x02, 0x38)); // CALS clear, CAL_ERR set
        let mut i2c = I2cMock::new(&tx);
        let mut adc = Nau7802::new(&mut i2c);
        let err = adc
            .init(&mut NoopDelay::new(), Config::default())
            .unwrap_err();
        assert_eq!(err, Error::CalibrationFailed);
        i2c.done();
    }

    #[test]
    fn bus_error_is_passed_through() {
        let tx = [w(0x00, 0x01).with_error(ErrorKind::Other)];
        let mut i2c = I2cMock::new(&tx);
        let mut adc = Nau7802::new(&mut i2c);
        let err = adc
            .init(&mut NoopDelay::new(), Config::default())
            .unwrap_err();
        assert_eq!(err, Error::I2c(ErrorKind::Other));
        i2c.done();
    }

    #[test]
    fn data_ready_reads_cycle_ready_bit() {
        let tx = [r(0x00, 0x96), r(0x00, 0xB6)];
        let mut i2c = I2cMock::new(&tx);
        let mut adc = Nau7802::new(&mut i2c);
        assert!(!adc.data_ready().unwrap());
        assert!(adc.data_ready().unwrap());
        i2c.done();
    }

    #[test]
    fn raw_reads_are_msb_first_and_sign_extended() {
        let cases: [([u8; 3], i32); 6] = [
            ([0x00, 0x00, 0x00], 0),
            ([0x01, 0x02, 0x03], 0x010203),
            ([0x7F, 0xFF, 0xFF], 8_388_607),
            ([0x80, 0x00, 0x00], -8_388_608),
            ([0xFF, 0xFF, 0xFF], -1),
            ([0xFE, 0xDC, 0xBA], 0xFEDCBA - 0x1000000),
        ];
        let tx: Vec<Tx> = cases
            .iter()
            .map(|(bytes, _)| Tx::write_read(ADDRESS, vec![0x12], bytes.to_vec()))
            .collect();
        let mut i2c = I2cMock::new(&tx);
        let mut adc = Nau7802::new(&mut i2c);
        for (_, expected) in cases {
            assert_eq!(adc.read_raw().unwrap(), expected);
        }
        i2c.done();
    }

    #[test]
    fn microstrain_follows_bridge_equations() {
        let quarter = BridgeConfig::default();
        // code = 2^23/1024 at gain 128: Vout/Vex = 1/131072; x4/2.0 -> 15.2587890625 µε.
        let v = microstrain_from_code(8192, Gain::X128, &quarter);
        assert!((v - 15.258_789).abs() < 1e-4, "{v}");
        // Gain 1, code 2^23/1000 ≈ ratio 0.001: quarter GF 2 -> ~2000 µε.
        let half = BridgeConfig {
            kind: BridgeKind::Half,
            gauge_factor: 2.0,
        };
        let full = BridgeConfig {
            kind: BridgeKind::Full,
            gauge_factor: 2.1,
        };
        let code = 8389; // 0.00100004673 of full scale
        let ratio = 8389.0f32 / 8_388_608.0;
        assert!((microstrain_from_code(code, Gain::X1, &quarter) - ratio * 2.0e6).abs() < 1e-2);
        assert!((microstrain_from_code(code, Gain::X1, &half) - ratio * 1.0e6).abs() < 1e-2);
        assert!((microstrain_from_code(-code, Gain::X1, &full) + ratio / 2.1 * 1.0e6).abs() < 1e-2);
        assert_eq!(microstrain_from_code(0, Gain::X64, &quarter), 0.0);
    }

    #[test]
    fn read_microstrain_uses_configured_gain_and_rejects_saturation() {
        let tx = [
            Tx::write_read(ADDRESS, vec![0x12], vec![0x00, 0x20, 0x00]), // 8192
            Tx::write_read(ADDRESS, vec![0x12], vec![0xFF, 0xE0, 0x00]), // -8192
            Tx::write_read(ADDRESS, vec![0x12], vec![0x7F, 0xFF, 0xFF]),
            Tx::write_read(ADDRESS, vec![0x12], vec![0x80, 0x00, 0x00]),
            Tx::write_read(ADDRESS, vec![0x12], vec![0x80, 0x00, 0x01]),
        ];
        let mut i2c = I2cMock::new(&tx);
        let mut adc = Nau7802::new(&mut i2c); // default config: x128, quarter, GF 2
        assert!((adc.read_microstrain().unwrap() - 15.258_789).abs() < 1e-4);
        assert!((adc.read_microstrain().unwrap() + 15.258_789).abs() < 1e-4);
        assert_eq!(
            adc.read_microstrain(),
            Err(Error::Saturated { code: CODE_MAX })
        );
        assert_eq!(
            adc.read_microstrain(),
            Err(Error::Saturated {
                code: -CODE_MAX - 1
            })
        );
        assert_eq!(
            adc.read_microstrain(),
            Err(Error::Saturated { code: -CODE_MAX })
        );
        i2c.done();
    }

    #[test]
    fn typed_fields_encode_as_in_the_register_map() {
        assert_eq!(Gain::X1.bits(), 0);
        assert_eq!(Gain::X128.bits(), 7);
        assert_eq!(Gain::X32.factor(), 32);
        assert_eq!(Ldo::V4_5.bits(), 0);
        assert_eq!(Ldo::V2_4.bits(), 7);
        assert_eq!(Ldo::V3_3.millivolts(), 3300);
        assert_eq!(Ldo::V2_4.millivolts(), 2400);
        assert_eq!(SampleRate::Sps320.bits(), 7);
        assert_eq!(SampleRate::Sps40.hz(), 40);
        assert_eq!(sign_extend_24(0x80_0000), -8_388_608);
    }

    #[test]
    fn release_returns_the_bus() {
        let mut i2c = I2cMock::new(&[]);
        let adc = Nau7802::new(i2c.clone());
        let _bus: I2cMock = adc.release();
        i2c.done();
    }
}
