//! The [`SensorSet`] of the panel-node board: a NAU7802 bridge ADC reading a strain gauge on
//! the glass panel, and an ADXL355 accelerometer giving the panel's tilt about two axes and
//! the board temperature.
//!
//! Channel ids and rates are set by a [`PanelLayout`] (default: strain 0 at 50 Hz, tilt_x 1
//! and tilt_y 2 at 10 Hz, temperature 3 at 1 Hz). Driver errors become wire
//! [`FaultCode`]s: a bus error is `BusError`, a wrong identity or a chip that did not
//! initialise is `NotResponding`, a full-scale ADC code is `Saturated`, and a reading no
//! healthy sensor could give (a gravity vector far from 1 g, a die temperature outside the
//! chip's rating) is `OutOfRange`.

use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::I2c;

use super::SensorSet;
use crate::drivers::adxl355::{self, Adxl355};
use crate::drivers::nau7802::{self, Nau7802};
use crate::protocol::{ChannelInfo, FaultCode, Quantity};

/// A tilt is only meaningful while the sensor measures gravity alone: a vector whose
/// magnitude is outside this band (in g) is reported as `OutOfRange` (a chip left in
/// standby reads all zeros; a panel being struck reads far more than 1 g).
const GRAVITY_BAND_G: (f32, f32) = (0.5, 1.5);
/// The ADXL355's rated operating temperature, °C.
const TEMPERATURE_RANGE_C: (f32, f32) = (-40.0, 125.0);

/// Id and default rate of one panel channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PanelChannel {
    /// Channel id on the wire.
    pub id: u8,
    /// Sampling rate, Hz.
    pub rate_hz: u16,
}

/// Which channel ids and rates the panel board announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PanelLayout {
    /// Strain from the NAU7802, microstrain.
    pub strain: PanelChannel,
    /// Tilt about X from the ADXL355, degrees.
    pub tilt_x: PanelChannel,
    /// Tilt about Y from the ADXL355, degrees.
    pub tilt_y: PanelChannel,
    /// ADXL355 die temperature, °C.
    pub temperature: PanelChannel,
}

impl Default for PanelLayout {
    fn default() -> Self {
        PanelLayout {
            strain: PanelChannel { id: 0, rate_hz: 50 },
            tilt_x: PanelChannel { id: 1, rate_hz: 10 },
            tilt_y: PanelChannel { id: 2, rate_hz: 10 },
            temperature: PanelChannel { id: 3, rate_hz: 1 },
        }
    }
}

/// The outcome of [`PanelSensors::init_chips`], per chip.
#[derive(Debug)]
pub struct PanelInit<E1, E2> {
    /// The NAU7802's init.
    pub adc: Result<(), nau7802::Error<E1>>,
    /// The ADXL355's init.
    pub accel: Result<(), adxl355::Error<E2>>,
}

/// The panel board's sensors.
#[derive(Debug)]
pub struct PanelSensors<I2C1, I2C2> {
    adc: Nau7802<I2C1>,
    accel: Adxl355<I2C2>,
    layout: PanelLayout,
    channels: [ChannelInfo; 4],
    /// `Err` while the chip's last init failed: its channels fault without touching the bus.
    adc_ready: Result<(), FaultCode>,
    accel_ready: Result<(), FaultCode>,
    instant_ms: u32,
    /// One X/Y/Z read per instant, shared by tilt_x and tilt_y.
    accel_cache: Option<(u32, Result<[f32; 3], FaultCode>)>,
    last_temperature_c: Option<f32>,
    supply_mv: u16,
}

fn adc_fault<E>(e: &nau7802::Error<E>) -> FaultCode {
    match e {
        nau7802::Error::I2c(_) => FaultCode::BusError,
        nau7802::Error::WrongId { .. } | nau7802::Error::Timeout => FaultCode::NotResponding,
        nau7802::Error::CalibrationFailed => FaultCode::OutOfRange,
        nau7802::Error::Saturated { .. } => FaultCode::Saturated,
    }
}

fn accel_fault<E>(e: &adxl355::Error<E>) -> FaultCode {
    match e {
        adxl355::Error::I2c(_) => FaultCode::BusError,
        adxl355::Error::WrongId { .. } => FaultCode::NotResponding,
    }
}

impl<I2C1: I2c, I2C2: I2c> PanelSensors<I2C1, I2C2> {
    /// The board's sensors on `adc` and `accel`, assumed ready (initialised by the caller);
    /// use [`PanelSensors::init_chips`] to initialise them here instead.
    pub fn new(adc: Nau7802<I2C1>, accel: Adxl355<I2C2>, layout: PanelLayout) -> Self {
        let ch = |c: PanelChannel, quantity| ChannelInfo {
            id: c.id,
            quantity,
            rate_hz: c.rate_hz,
        };
        PanelSensors {
            adc,
            accel,
            layout,
            channels: [
                ch(layout.strain, Quantity::Strain),
                ch(layout.tilt_x, Quantity::TiltX),
                ch(layout.tilt_y, Quantity::TiltY),
                ch(layout.temperature, Quantity::Temperature),
            ],
            adc_ready: Ok(()),
            accel_ready: Ok(()),
            instant_ms: 0,
            accel_cache: None,
            last_temperature_c: None,
            supply_mv: 0,
        }
    }

    /// Initialise both chips. A chip that fails faults its channels (with the code of its
    /// init error) until a later call succeeds; the other chip keeps working.
    pub fn init_chips<D: DelayNs>(
        &mut self,
        delay: &mut D,
        adc_config: nau7802::Config,
        accel_config: adxl355::Config,
    ) -> PanelInit<I2C1::Error, I2C2::Error> {
        let adc = self.adc.init(delay, adc_config);
        let accel = self.accel.init(delay, accel_config);
        self.adc_ready = adc.as_ref().map_err(adc_fault).copied();
        self.accel_ready = accel.as_ref().map_err(accel_fault).copied();
        self.accel_cache = None;
        PanelInit { adc, accel }
    }

    /// The layout.
    pub fn layout(&self) -> &PanelLayout {
        &self.layout
    }

    /// Record the supply voltage the board measured (reported in Status).
    pub fn set_supply_mv(&mut self, supply_mv: u16) {
        self.supply_mv = supply_mv;
    }

    /// Give the drivers back.
    pub fn release(self) -> (Nau7802<I2C1>, Adxl355<I2C2>) {
        (self.adc, self.accel)
    }

    fn strain(&mut self) -> Result<f32, FaultCode> {
        self.adc_ready?;
        self.adc.read_microstrain().map_err(|e| adc_fault(&e))
    }

    /// The acceleration at the current instant, read from the bus at most once per instant.
    fn acceleration(&mut self) -> Result<[f32; 3], FaultCode> {
        if let Some((t, cached)) = self.accel_cache {
            if t == self.instant_ms {
                return cached;
            }
        }
        let fresh = self
            .accel_ready
            .and_then(|()| self.accel.read_acceleration().map_err(|e| accel_fault(&e)));
        self.accel_cache = Some((self.instant_ms, fresh));
        fresh
    }

    fn tilt(&mut self) -> Result<(f32, f32), FaultCode> {
        let a = self.acceleration()?;
        let g = adxl355::STANDARD_GRAVITY;
        let magnitude_g = libm::sqrtf(a[0] * a[0] + a[1] * a[1] + a[2] * a[2]) / g;
        if !(GRAVITY_BAND_G.0..=GRAVITY_BAND_G.1).contains(&magnitude_g) {
            return Err(FaultCode::OutOfRange);
        }
        Ok(adxl355::tilt_deg(a))
    }

    fn temperature(&mut self) -> Result<f32, FaultCode> {
        self.accel_ready?;
        let t = self
            .accel
            .read_temperature_c()
            .map_err(|e| accel_fault(&e))?;
        if !(TEMPERATURE_RANGE_C.0..=TEMPERATURE_RANGE_C.1).contains(&t) {
            return Err(FaultCode::OutOfRange);
        }
        self.last_temperature_c = Some(t);
        Ok(t)
    }
}

impl<I2C1: I2c, I2C2: I2c> SensorSet for PanelSensors<I2C1, I2C2> {
    fn channels(&self) -> &[ChannelInfo] {
        &self.channels
    }

    fn read(&mut self, channel: u8) -> Result<f32, FaultCode> {
        let l = self.layout;
        if channel == l.strain.id {
            self.strain()
        } else if channel == l.tilt_x.id {
            self.tilt().map(|(x, _)| x)
        } else if channel == l.tilt_y.id {
            self.tilt().map(|(_, y)| y)
        } else if channel == l.temperature.id {
            self.temperature()
        } else {
            Err(FaultCode::NotResponding)
        }
    }

    fn begin_instant(&mut self, t_ms: u32) {
        self.instant_ms = t_ms;
    }

    fn supply_mv(&mut self) -> u16 {
        self.supply_mv
    }

    /// The ADXL355 die temperature (read now; the last good value if the read fails; 0 if
    /// there never was one).
    fn board_temp_centi_c(&mut self) -> i16 {
        let t = self.temperature().ok().or(self.last_temperature_c);
        t.map_or(0, |c| {
            // Within ±327 °C by the range check above, so the cast cannot saturate.
            libm::roundf(c * 100.0) as i16
        })
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

    const ADC: u8 = 0x2A;
    const ACC: u8 = 0x1D;

    fn xyz_tx(v: [i32; 3]) -> Tx {
        let mut bytes = Vec::new();
        for axis in v {
            let raw24 = ((axis as u32) & 0xF_FFFF) << 4;
            bytes.extend_from_slice(&[(raw24 >> 16) as u8, (raw24 >> 8) as u8, raw24 as u8]);
        }
        Tx::write_read(ACC, vec![0x08], bytes)
    }

    fn adc_code_tx(code: i32) -> Tx {
        let c = code as u32;
        Tx::write_read(
            ADC,
            vec![0x12],
            vec![(c >> 16) as u8, (c >> 8) as u8, c as u8],
        )
    }

    fn sensors(adc: &mut I2cMock, acc: &mut I2cMock) -> PanelSensors<I2cMock, I2cMock> {
        PanelSensors::new(
            Nau7802::new(adc.clone()),
            Adxl355::new(acc.clone(), adxl355::Address::AselLow),
            PanelLayout::default(),
        )
    }

    #[test]
    fn announces_the_layout() {
        let mut adc = I2cMock::new(&[]);
        let mut acc = I2cMock::new(&[]);
        let layout = PanelLayout {
            strain: PanelChannel {
                id: 7,
                rate_hz: 100,
            },
            ..PanelLayout::default()
        };
        let s = PanelSensors::new(
            Nau7802::new(adc.clone()),
            Adxl355::new(acc.clone(), adxl355::Address::AselHigh),
            layout,
        );
        let ch = s.channels();
        assert_eq!(ch.len(), 4);
        assert_eq!(
            ch[0],
            ChannelInfo {
                id: 7,
                quantity: Quantity::Strain,
                rate_hz: 100
            }
        );
        assert_eq!(
            ch[1],
            ChannelInfo {
                id: 1,
                quantity: Quantity::TiltX,
                rate_hz: 10
            }
        );
        assert_eq!(
            ch[2],
            ChannelInfo {
                id: 2,
                quantity: Quantity::TiltY,
                rate_hz: 10
            }
        );
        assert_eq!(
            ch[3],
            ChannelInfo {
                id: 3,
                quantity: Quantity::Temperature,
                rate_hz: 1
            }
        );
        adc.done();
        acc.done();
    }

    #[test]
    fn tilt_channels_share_one_bus_read_per_instant() {
        let g = 256_000.0f32;
        let s30 = libm::sinf(30f32.to_radians());
        let c30 = libm::cosf(30f32.to_radians());
        let mut adc = I2cMock::new(&[]);
        let mut acc = I2cMock::new(&[
            xyz_tx([(g * s30) as i32, 0, (g * c30) as i32]),
            xyz_tx([0, -(g * s30) as i32, (g * c30) as i32]),
        ]);
        let mut s = sensors(&mut adc, &mut acc);
        s.begin_instant(100);
        let x = s.read(1).unwrap();
        let y = s.read(2).unwrap();
        assert!((x - 30.0).abs() < 1e-3 && y.abs() < 1e-3, "{x} {y}");
        // Same instant again: still no second transfer.
        assert!((s.read(1).unwrap() - 30.0).abs() < 1e-3);
        s.begin_instant(200);
        let y = s.read(2).unwrap();
        let x = s.read(1).unwrap();
        assert!(x.abs() < 1e-3 && (y + 30.0).abs() < 1e-3, "{x} {y}");
        adc.done();
        acc.done();
    }

    #[test]
    fn strain_reads_microstrain_and_maps_saturation() {
        let mut adc = I2cMock::new(&[adc_code_tx(8192), adc_code_tx((1 << 23) - 1)]);
        let mut acc = I2cMock::new(&[]);
        let mut s = sensors(&mut adc, &mut acc);
        // Default NAU7802 config: gain 128, quarter bridge, GF 2.
        assert!((s.read(0).unwrap() - 15.258_789).abs() < 1e-4);
        assert_eq!(s.read(0), Err(FaultCode::Saturated));
        adc.done();
        acc.done();
    }

    #[test]
    fn bus_errors_and_implausible_gravity_become_fault_codes() {
        let mut adc = I2cMock::new(&[
            Tx::write_read(ADC, vec![0x12], vec![0, 0, 0]).with_error(ErrorKind::Other)
        ]);
        let mut acc = I2cMock::new(&[
            Tx::write_read(ACC, vec![0x08], vec![0; 9]).with_error(ErrorKind::Other),
            xyz_tx([0, 0, 0]), // standby: no gravity
            Tx::write_read(ACC, vec![0x06], vec![0x02, 0x00]), // 512 -> ~176.7 °C
        ]);
        let mut s = sensors(&mut adc, &mut acc);
        assert_eq!(s.read(0), Err(FaultCode::BusError));
        s.begin_instant(1);
        assert_eq!(s.read(1), Err(FaultCode::BusError));
        assert_eq!(s.read(2), Err(FaultCode::BusError)); // cached failure, no second read
        s.begin_instant(2);
        assert_eq!(s.read(1), Err(FaultCode::OutOfRange));
        assert_eq!(s.read(3), Err(FaultCode::OutOfRange));
        assert_eq!(s.read(9), Err(FaultCode::NotResponding));
        adc.done();
        acc.done();
    }

    #[test]
    fn failed_init_faults_the_chip_without_bus_traffic() {
        let mut adc =
            I2cMock::new(&[Tx::write(ADC, vec![0x00, 0x01]).with_error(ErrorKind::Other)]);
        let mut acc = I2cMock::new(&[Tx::write_read(ACC, vec![0x00], vec![0xFF, 0xFF, 0xFF])]);
        let mut s = sensors(&mut adc, &mut acc);
        let report = s.init_chips(
            &mut NoopDelay::new(),
            nau7802::Config::default(),
            adxl355::Config::default(),
        );
        assert_eq!(report.adc, Err(nau7802::Error::I2c(ErrorKind::Other)));
        assert!(matches!(report.accel, Err(adxl355::Error::WrongId { .. })));
        assert_eq!(s.read(0), Err(FaultCode::BusError));
        s.begin_instant(5);
        assert_eq!(s.read(1), Err(FaultCode::NotResponding));
        assert_eq!(s.read(3), Err(FaultCode::NotResponding));
        assert_eq!(s.board_temp_centi_c(), 0);
        adc.done();
        acc.done();
    }

    #[test]
    fn temperature_channel_and_board_temperature() {
        let mut adc = I2cMock::new(&[]);
        let mut acc = I2cMock::new(&[
            // 1704 -> 45 °C
            Tx::write_read(ACC, vec![0x06], vec![0x06, 0xA8]),
            // 1885 -> 25 °C
            Tx::write_read(ACC, vec![0x06], vec![0x07, 0x5D]),
            // bus error: the last good value is reported
            Tx::write_read(ACC, vec![0x06], vec![0, 0]).with_error(ErrorKind::Other),
        ]);
        let mut s = sensors(&mut adc, &mut acc);
        s.set_supply_mv(3310);
        assert!((s.read(3).unwrap() - 45.0).abs() < 1e-3);
        assert_eq!(s.board_temp_centi_c(), 2500);
        assert_eq!(s.board_temp_centi_c(), 2500);
        assert_eq!(s.supply_mv(), 3310);
        adc.done();
        acc.done();
    }
}
