//! Driver for the Analog Devices ADXL355 20-bit three-axis accelerometer, used by a panel
//! node as an inclinometer (tilt from the gravity vector) and as its board thermometer.
//!
//! Generic over [`embedded_hal::i2c::I2c`]; owns only the bus handle and its configuration.
//! [`Adxl355::init`] follows the Linux kernel driver's order
//! (`drivers/iio/accel/adxl355_core.c`, register map of Analog Devices' datasheet): check the three identity registers, soft reset,
//! then, while the chip is still in standby after the reset, program the filter/ODR and the
//! range, and finally enter measurement mode.
//!
//! Units: acceleration in m/s² ([`Adxl355::read_acceleration`]), tilt in degrees
//! ([`Adxl355::read_tilt_deg`], θx = atan2(ax, √(ay²+az²)), θy = atan2(ay, √(ax²+az²))) and
//! die temperature in °C ([`Adxl355::read_temperature_c`]).

use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::I2c;

/// Standard gravity, m/s² per g.
pub const STANDARD_GRAVITY: f32 = 9.806_65;

/// Expected `DEVID_AD`.
pub const DEVID_AD: u8 = 0xAD;
/// Expected `DEVID_MST`.
pub const DEVID_MST: u8 = 0x1D;
/// Expected `PARTID` (an ADXL359 answers 0xE9).
pub const PARTID: u8 = 0xED;
/// The code written to `RESET` for a soft reset.
pub const RESET_CODE: u8 = 0x52;
/// Wait after a soft reset, ms (the datasheet asks for at least 5 ms).
pub const RESET_WAIT_MS: u32 = 5;

/// Temperature output at 25 °C, LSB.
const TEMP_INTERCEPT_LSB: f32 = 1885.0;
/// Temperature slope, LSB/°C (negative: the code falls as the die warms).
const TEMP_SLOPE_LSB_PER_C: f32 = -9.05;

/// The chip's 7-bit I2C address, chosen by the ASEL (MISO) pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Address {
    /// ASEL low: 0x1D.
    AselLow,
    /// ASEL high: 0x53.
    AselHigh,
}

impl Address {
    /// The 7-bit address.
    pub const fn addr(self) -> u8 {
        match self {
            Address::AselLow => 0x1D,
            Address::AselHigh => 0x53,
        }
    }
}

/// Register addresses of the ADXL355 (auto-incrementing on multi-byte reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Register {
    /// Analog Devices id, 0xAD.
    DevIdAd = 0x00,
    /// MEMS id, 0x1D.
    DevIdMst = 0x01,
    /// Part id, 0xED.
    PartId = 0x02,
    /// Data ready and FIFO flags.
    Status = 0x04,
    /// Temperature, high nibble in bits 3:0 (followed by `TEMP1`).
    Temp2 = 0x06,
    /// X axis, bits 19:12 (followed by XDATA2, XDATA1 and the Y and Z triplets).
    XData3 = 0x08,
    /// Output data rate and filters.
    Filter = 0x28,
    /// Measurement range and I2C speed.
    Range = 0x2C,
    /// Standby / measurement mode.
    PowerCtl = 0x2D,
    /// Write [`RESET_CODE`] for a soft reset.
    Reset = 0x2F,
}

impl Register {
    /// The register's address byte.
    pub const fn addr(self) -> u8 {
        self as u8
    }
}

/// Bits of `STATUS` (0x04).
pub mod status {
    /// A new X/Y/Z sample is ready.
    pub const DATA_RDY: u8 = 1 << 0;
}

/// Bits of `RANGE` (0x2C).
pub mod range {
    /// Range field (bits 1:0).
    pub const RANGE_MASK: u8 = 0b11;
}

/// Bits of `POWER_CTL` (0x2D).
pub mod power_ctl {
    /// Standby (the power-on state); 0 = measurement.
    pub const STANDBY: u8 = 1 << 0;
    /// Temperature sensor off.
    pub const TEMP_OFF: u8 = 1 << 1;
    /// DRDY pin off.
    pub const DRDY_OFF: u8 = 1 << 2;
}

/// Bits of `FILTER` (0x28).
pub mod filter {
    /// High-pass corner field shift (bits 6:4).
    pub const HPF_SHIFT: u8 = 4;
}

/// Measurement range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// ±2 g, 256 000 LSB/g.
    G2,
    /// ±4 g, 128 000 LSB/g.
    G4,
    /// ±8 g, 64 000 LSB/g.
    G8,
}

impl Range {
    /// The field value in `RANGE`.
    pub const fn bits(self) -> u8 {
        match self {
            Range::G2 => 0b01,
            Range::G4 => 0b10,
            Range::G8 => 0b11,
        }
    }

    /// Sensitivity, LSB per g.
    pub const fn lsb_per_g(self) -> f32 {
        match self {
            Range::G2 => 256_000.0,
            Range::G4 => 128_000.0,
            Range::G8 => 64_000.0,
        }
    }
}

/// Output data rate; the low-pass corner is a quarter of it (`FILTER` bits 3:0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Odr {
    /// 4000 Hz
    Hz4000,
    /// 2000 Hz
    Hz2000,
    /// 1000 Hz
    Hz1000,
    /// 500 Hz
    Hz500,
    /// 250 Hz
    Hz250,
    /// 125 Hz
    Hz125,
    /// 62.5 Hz
    Hz62_5,
    /// 31.25 Hz
    Hz31_25,
    /// 15.625 Hz
    Hz15_625,
    /// 7.813 Hz
    Hz7_813,
    /// 3.906 Hz
    Hz3_906,
}

impl Odr {
    /// The field value in `FILTER`.
    pub const fn bits(self) -> u8 {
        self as u8
    }

    /// The output data rate, Hz.
    pub fn hz(self) -> f32 {
        4000.0 / (1u32 << (self as u32)) as f32
    }
}

/// The optional high-pass filter (`FILTER` bits 6:4). A tilt sensor needs the DC component,
/// so it is off by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HighPass {
    /// No high-pass filter.
    Off,
    /// Corner at 24.7e-4 × ODR.
    K24_7,
    /// Corner at 6.2084e-4 × ODR.
    K6_2084,
    /// Corner at 1.5545e-4 × ODR.
    K1_5545,
    /// Corner at 0.3862e-4 × ODR.
    K0_3862,
    /// Corner at 0.0954e-4 × ODR.
    K0_0954,
    /// Corner at 0.0238e-4 × ODR.
    K0_0238,
}

impl HighPass {
    /// The field value in `FILTER` (before shifting).
    pub const fn bits(self) -> u8 {
        self as u8
    }
}

/// Everything [`Adxl355::init`] configures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Measurement range.
    pub range: Range,
    /// Output data rate (and low-pass corner).
    pub odr: Odr,
    /// High-pass filter.
    pub high_pass: HighPass,
}

impl Default for Config {
    /// ±2 g (best resolution for tilt), 62.5 Hz, no high-pass.
    fn default() -> Self {
        Config {
            range: Range::G2,
            odr: Odr::Hz62_5,
            high_pass: HighPass::Off,
        }
    }
}

/// What can go wrong talking to the ADXL355.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error<E> {
    /// The bus transfer failed.
    I2c(E),
    /// The identity registers do not read 0xAD / 0x1D / 0xED.
    WrongId {
        /// `DEVID_AD` as read.
        devid_ad: u8,
        /// `DEVID_MST` as read.
        devid_mst: u8,
        /// `PARTID` as read.
        partid: u8,
    },
}

/// Decode one axis from its three data bytes (`xDATA3`, `xDATA2`, `xDATA1`): the 20-bit
/// two's-complement value sits in bits 23:4.
pub const fn axis_from_bytes(b3: u8, b2: u8, b1: u8) -> i32 {
    let raw24 = (b3 as u32) << 16 | (b2 as u32) << 8 | b1 as u32;
    // Move bit 23 to bit 31, then shift arithmetically down by 12 = 8 + 4.
    ((raw24 << 8) as i32) >> 12
}

/// Temperature in °C for the 12-bit temperature code.
pub fn temperature_from_raw(raw: u16) -> f32 {
    (raw as f32 - TEMP_INTERCEPT_LSB) / TEMP_SLOPE_LSB_PER_C + 25.0
}

/// Tilt angles (θx, θy) in degrees from an acceleration vector (any consistent unit):
/// θx = atan2(ax, √(ay²+az²)), θy = atan2(ay, √(ax²+az²)).
pub fn tilt_deg(accel: [f32; 3]) -> (f32, f32) {
    let [ax, ay, az] = accel;
    let theta_x = libm::atan2f(ax, libm::sqrtf(ay * ay + az * az));
    let theta_y = libm::atan2f(ay, libm::sqrtf(ax * ax + az * az));
    (theta_x.to_degrees(), theta_y.to_degrees())
}

/// An ADXL355 on an I2C bus.
#[derive(Debug)]
pub struct Adxl355<I2C> {
    i2c: I2C,
    address: Address,
    config: Config,
}

impl<I2C: I2c> Adxl355<I2C> {
    /// Wrap the bus; nothing is sent until [`Adxl355::init`].
    pub fn new(i2c: I2C, address: Address) -> Self {
        Adxl355 {
            i2c,
            address,
            config: Config::default(),
        }
    }

    /// The configuration last passed to [`Adxl355::init`] (the default before).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Give the bus back.
    pub fn release(self) -> I2C {
        self.i2c
    }

    /// Check identity, soft-reset, program filter and range, start measuring.
    pub fn init<D: DelayNs>(
        &mut self,
        delay: &mut D,
        config: Config,
    ) -> Result<(), Error<I2C::Error>> {
        self.check_id()?;
        self.write(Register::Reset, RESET_CODE)?;
        delay.delay_ms(RESET_WAIT_MS);

        // After the reset the chip is in standby, where FILTER and RANGE may be changed.
        self.config = config;
        self.write(
            Register::Filter,
            (config.high_pass.bits() << filter::HPF_SHIFT) | config.odr.bits(),
        )?;
        // RANGE also holds I2C_HS and INT_POL, which we keep as the chip has them.
        let range = self.read(Register::Range)?;
        self.write(
            Register::Range,
            (range & !range::RANGE_MASK) | config.range.bits(),
        )?;
        // Measurement mode, temperature sensor on, DRDY pin on.
        self.write(Register::PowerCtl, 0)
    }

    /// Read the three identity registers and compare them with the ADXL355's.
    pub fn check_id(&mut self) -> Result<(), Error<I2C::Error>> {
        let mut id = [0u8; 3];
        self.read_burst(Register::DevIdAd, &mut id)?;
        if id != [DEVID_AD, DEVID_MST, PARTID] {
            return Err(Error::WrongId {
                devid_ad: id[0],
                devid_mst: id[1],
                partid: id[2],
            });
        }
        Ok(())
    }

    /// Whether a new X/Y/Z sample is ready (`STATUS.DATA_RDY`).
    pub fn data_ready(&mut self) -> Result<bool, Error<I2C::Error>> {
        Ok(self.read(Register::Status)? & status::DATA_RDY != 0)
    }

    /// The latest X, Y, Z samples as signed 20-bit codes, read in one burst so the three axes
    /// belong to the same sample.
    pub fn read_raw_xyz(&mut self) -> Result<[i32; 3], Error<I2C::Error>> {
        let mut b = [0u8; 9];
        self.read_burst(Register::XData3, &mut b)?;
        Ok([
            axis_from_bytes(b[0], b[1], b[2]),
            axis_from_bytes(b[3], b[4], b[5]),
            axis_from_bytes(b[6], b[7], b[8]),
        ])
    }

    /// The latest acceleration, m/s², per axis.
    pub fn read_acceleration(&mut self) -> Result<[f32; 3], Error<I2C::Error>> {
        let raw = self.read_raw_xyz()?;
        let scale = STANDARD_GRAVITY / self.config.range.lsb_per_g();
        Ok(raw.map(|v| v as f32 * scale))
    }

    /// Tilt (θx, θy) in degrees from the gravity vector.
    pub fn read_tilt_deg(&mut self) -> Result<(f32, f32), Error<I2C::Error>> {
        Ok(tilt_deg(self.read_acceleration()?))
    }

    /// The raw 12-bit die temperature code (`TEMP2[3:0]:TEMP1`).
    pub fn read_temperature_raw(&mut self) -> Result<u16, Error<I2C::Error>> {
        let mut b = [0u8; 2];
        self.read_burst(Register::Temp2, &mut b)?;
        Ok(u16::from(b[0] & 0x0F) << 8 | u16::from(b[1]))
    }

    /// Die temperature, °C.
    pub fn read_temperature_c(&mut self) -> Result<f32, Error<I2C::Error>> {
        Ok(temperature_from_raw(self.read_temperature_raw()?))
    }

    fn read_burst(&mut self, start: Register, buf: &mut [u8]) -> Result<(), Error<I2C::Error>> {
        self.i2c
            .write_read(self.address.addr(), &[start.addr()], buf)
            .map_err(Error::I2c)
    }

    fn read(&mut self, reg: Register) -> Result<u8, Error<I2C::Error>> {
        let mut buf = [0u8; 1];
        self.read_burst(reg, &mut buf)?;
        Ok(buf[0])
    }

    fn write(&mut self, reg: Register, value: u8) -> Result<(), Error<I2C::Error>> {
        self.i2c
            .write(self.address.addr(), &[reg.addr(), value])
            .map_err(Error::I2c)
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

    const A: u8 = 0x1D;

    /// Encode a 20-bit signed value the way the chip presents it in xDATA3..1.
    fn axis_bytes(v: i32) -> [u8; 3] {
        let raw24 = ((v as u32) & 0xF_FFFF) << 4;
        [(raw24 >> 16) as u8, (raw24 >> 8) as u8, raw24 as u8]
    }

    fn xyz_tx(addr: u8, v: [i32; 3]) -> Tx {
        let mut bytes = Vec::new();
        for axis in v {
            bytes.extend_from_slice(&axis_bytes(axis));
        }
        Tx::write_read(addr, vec![0x08], bytes)
    }

    fn close(a: f32, b: f32, tol: f32) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn init_checks_id_resets_and_configures() {
        let tx = [
            Tx::write_read(A, vec![0x00], vec![0xAD, 0x1D, 0xED]),
            Tx::write(A, vec![0x2F, 0x52]),
            Tx::write(A, vec![0x28, 0x06]), // no HPF, ODR 62.5 Hz
            Tx::write_read(A, vec![0x2C], vec![0x81]), // reset value: I2C_HS | ±2 g
            Tx::write(A, vec![0x2C, 0x81]),
            Tx::write(A, vec![0x2D, 0x00]),
        ];
        let mut i2c = I2cMock::new(&tx);
        let mut acc = Adxl355::new(&mut i2c, Address::AselLow);
        acc.init(&mut NoopDelay::new(), Config::default()).unwrap();
        i2c.done();
    }

    #[test]
    fn init_at_alternate_address_with_other_range_and_filter() {
        let config = Config {
            range: Range::G8,
            odr: Odr::Hz3_906,
            high_pass: HighPass::K0_3862,
        };
        let tx = [
            Tx::write_read(0x53, vec![0x00], vec![0xAD, 0x1D, 0xED]),
            Tx::write(0x53, vec![0x2F, 0x52]),
            Tx::write(0x53, vec![0x28, 0x4A]),
            Tx::write_read(0x53, vec![0x2C], vec![0xC1]), // INT_POL and I2C_HS kept
            Tx::write(0x53, vec![0x2C, 0xC3]),
            Tx::write(0x53, vec![0x2D, 0x00]),
        ];
        let mut i2c = I2cMock::new(&tx);
        let mut acc = Adxl355::new(&mut i2c, Address::AselHigh);
        acc.init(&mut NoopDelay::new(), config).unwrap();
        assert_eq!(acc.config().range, Range::G8);
        i2c.done();
    }

    #[test]
    fn wrong_id_stops_init_before_reset() {
        // An ADXL359 has PARTID 0xE9.
        let tx = [Tx::write_read(A, vec![0x00], vec![0xAD, 0x1D, 0xE9])];
        let mut i2c = I2cMock::new(&tx);
        let mut acc = Adxl355::new(&mut i2c, Address::AselLow);
        let err = acc
            .init(&mut NoopDelay::new(), Config::default())
            .unwrap_err();
        assert_eq!(
            err,
            Error::WrongId {
                devid_ad: 0xAD,
                devid_mst: 0x1D,
                partid: 0xE9
            }
        );
        i2c.done();
    }

    #[test]
    fn bus_error_is_passed_through() {
        let tx = [Tx::write_read(A, vec![0x08], vec![0; 9]).with_error(ErrorKind::Other)];
        let mut i2c = I2cMock::new(&tx);
        let mut acc = Adxl355::new(&mut i2c, Address::AselLow);
        assert_eq!(acc.read_raw_xyz(), Err(Error::I2c(ErrorKind::Other)));
        i2c.done();
    }

    #[test]
    fn data_ready_reads_status_bit0() {
        let tx = [
            Tx::write_read(A, vec![0x04], vec![0x00]),
            Tx::write_read(A, vec![0x04], vec![0x01]),
        ];
        let mut i2c = I2cMock::new(&tx);
        let mut acc = Adxl355::new(&mut i2c, Address::AselLow);
        assert!(!acc.data_ready().unwrap());
        assert!(acc.data_ready().unwrap());
        i2c.done();
    }

    #[test]
    fn raw_xyz_is_20_bit_sign_extended() {
        let tx = [
            // Literal bytes: X = 0x7FFFF (max), Y = 0x80000 (min), Z = -1; low nibble noise.
            Tx::write_read(
                A,
                vec![0x08],
                vec![0x7F, 0xFF, 0xF0, 0x80, 0x00, 0x0F, 0xFF, 0xFF, 0xF0],
            ),
            Tx::write_read(
                A,
                vec![0x08],
                vec![0x00, 0x00, 0x10, 0x3E, 0x80, 0x00, 0xC1, 0x80, 0x00],
            ),
        ];
        let mut i2c = I2cMock::new(&tx);
        let mut acc = Adxl355::new(&mut i2c, Address::AselLow);
        assert_eq!(acc.read_raw_xyz().unwrap(), [524_287, -524_288, -1]);
        // 1, 256000 (1 g at ±2 g), -256000
        assert_eq!(acc.read_raw_xyz().unwrap(), [1, 256_000, -256_000]);
        i2c.done();
    }

    #[test]
    fn acceleration_scales_per_range() {
        assert_eq!(axis_bytes(256_000), [0x3E, 0x80, 0x00]);
        // ±2 g is the configuration before init; ±4/±8 g go through init below.
        let tx = [xyz_tx(A, [256_000, -128_000, 0])];
        let mut i2c = I2cMock::new(&tx);
        let mut acc = Adxl355::new(&mut i2c, Address::AselLow);
        let a = acc.read_acceleration().unwrap();
        assert!(close(a[0], 9.806_65, 1e-4));
        assert!(close(a[1], -4.903_325, 1e-4));
        assert_eq!(a[2], 0.0);
        i2c.done();

        for (range, lsb) in [(Range::G4, 128_000), (Range::G8, 64_000)] {
            let tx = [
                Tx::write_read(A, vec![0x00], vec![0xAD, 0x1D, 0xED]),
                Tx::write(A, vec![0x2F, 0x52]),
                Tx::write(A, vec![0x28, 0x06]),
                Tx::write_read(A, vec![0x2C], vec![0x81]),
                Tx::write(A, vec![0x2C, 0x80 | range.bits()]),
                Tx::write(A, vec![0x2D, 0x00]),
                xyz_tx(A, [lsb, 0, -2 * lsb]),
            ];
            let mut i2c = I2cMock::new(&tx);
            let mut acc = Adxl355::new(&mut i2c, Address::AselLow);
            let config = Config {
                range,
                ..Config::default()
            };
            acc.init(&mut NoopDelay::new(), config).unwrap();
            let a = acc.read_acceleration().unwrap();
            assert!(close(a[0], STANDARD_GRAVITY, 1e-4), "{range:?} {a:?}");
            assert!(
                close(a[2], -2.0 * STANDARD_GRAVITY, 1e-4),
                "{range:?} {a:?}"
            );
            i2c.done();
        }
    }

    #[test]
    fn temperature_uses_12_bit_code_and_datasheet_line() {
        let tx = [
            // 1885 = 0x75D -> 25 °C; high nibble of TEMP2 is ignored.
            Tx::write_read(A, vec![0x06], vec![0xF7, 0x5D]),
            // 1885 - 181 = 1704 = 0x6A8 -> 25 + 20 = 45 °C
            Tx::write_read(A, vec![0x06], vec![0x06, 0xA8]),
            // 1885 + 90.5*2 = 2066 = 0x812 -> 5 °C
            Tx::write_read(A, vec![0x06], vec![0x08, 0x12]),
        ];
        let mut i2c = I2cMock::new(&tx);
        let mut acc = Adxl355::new(&mut i2c, Address::AselLow);
        assert!(close(acc.read_temperature_c().unwrap(), 25.0, 1e-4));
        assert!(close(acc.read_temperature_c().unwrap(), 45.0, 1e-3));
        assert!(close(acc.read_temperature_c().unwrap(), 5.0, 1e-3));
        i2c.done();
    }

    #[test]
    fn tilt_from_gravity_vectors() {
        let g = 256_000.0f32;
        // Flat: gravity on Z only.
        let (tx0, ty0) = tilt_deg([0.0, 0.0, 9.81]);
        assert!(close(tx0, 0.0, 1e-4) && close(ty0, 0.0, 1e-4));
        // Rotated 30° about Y: ax = g sin30, az = g cos30.
        let s30 = libm::sinf(30f32.to_radians());
        let c30 = libm::cosf(30f32.to_radians());
        let (tx30, ty30) = tilt_deg([s30, 0.0, c30]);
        assert!(
            close(tx30, 30.0, 1e-3) && close(ty30, 0.0, 1e-3),
            "{tx30} {ty30}"
        );
        // -45° on Y.
        let h = core::f32::consts::FRAC_1_SQRT_2;
        let (tx45, ty45) = tilt_deg([0.0, -h, h]);
        assert!(
            close(tx45, 0.0, 1e-3) && close(ty45, -45.0, 1e-3),
            "{tx45} {ty45}"
        );

        // Through the bus, from raw codes at ±2 g.
        let tx = [
            xyz_tx(A, [0, 0, g as i32]),
            xyz_tx(A, [(g * s30) as i32, 0, (g * c30) as i32]),
            xyz_tx(A, [0, -(g * h) as i32, (g * h) as i32]),
        ];
        let mut i2c = I2cMock::new(&tx);
        let mut acc = Adxl355::new(&mut i2c, Address::AselLow);
        let (x, y) = acc.read_tilt_deg().unwrap();
        assert!(close(x, 0.0, 1e-3) && close(y, 0.0, 1e-3));
        let (x, y) = acc.read_tilt_deg().unwrap();
        assert!(close(x, 30.0, 1e-3) && close(y, 0.0, 1e-3), "{x} {y}");
        let (x, y) = acc.read_tilt_deg().unwrap();
        assert!(close(x, 0.0, 1e-3) && close(y, -45.0, 1e-3), "{x} {y}");
        i2c.done();
    }

    #[test]
    fn typed_fields_encode_as_in_the_register_map() {
        assert_eq!(Odr::Hz4000.bits(), 0);
        assert_eq!(Odr::Hz3_906.bits(), 10);
        assert!(close(Odr::Hz62_5.hz(), 62.5, 1e-6));
        assert!(close(Odr::Hz7_813.hz(), 7.8125, 1e-6));
        assert_eq!(HighPass::K0_0238.bits(), 6);
        assert_eq!(Range::G2.bits(), 1);
        assert_eq!(Address::AselLow.addr(), 0x1D);
        assert_eq!(Address::AselHigh.addr(), 0x53);
    }
}
