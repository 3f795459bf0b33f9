//! Register semantics of the simulated ADXL355 (its datasheet register map).

mod common;

use common::{axis_value, model, quiet_params};
use embedded_hal::i2c::{Error as _, ErrorKind, I2c, NoAcknowledgeSource};
use towerlink_sim_chips::adxl355::{temperature_code, ADDRESS_HIGH, ADDRESS_LOW, REVID};
use towerlink_sim_chips::panel::STANDARD_GRAVITY;
use towerlink_sim_chips::{Chip, Fault, PanelParams, ScheduledFault, SimAdxl355, SimClock};

const STATUS: u8 = 0x04;
const TEMP2: u8 = 0x06;
const XDATA3: u8 = 0x08;
const FILTER: u8 = 0x28;
const RANGE: u8 = 0x2C;
const POWER_CTL: u8 = 0x2D;
const RESET: u8 = 0x2F;
/// FILTER ODR code 6 = 62.5 Hz.
const ODR_62_5: u8 = 6;
const PERIOD_62_5_US: u64 = 16_000;

fn read(chip: &mut SimAdxl355, addr: u8, reg: u8) -> u8 {
    let mut buf = [0u8; 1];
    chip.write_read(addr, &[reg], &mut buf)
        .expect("chip answers");
    buf[0]
}

fn write(chip: &mut SimAdxl355, addr: u8, reg: u8, value: u8) {
    chip.write(addr, &[reg, value]).expect("chip answers");
}

fn read_xyz(chip: &mut SimAdxl355) -> [i32; 3] {
    let mut b = [0u8; 9];
    chip.write_read(ADDRESS_LOW, &[XDATA3], &mut b)
        .expect("chip answers");
    for axis in 0..3 {
        assert_eq!(
            b[3 * axis + 2] & 0x0F,
            0,
            "20-bit data is left-aligned: low nibble 0"
        );
    }
    [
        axis_value([b[0], b[1], b[2]]),
        axis_value([b[3], b[4], b[5]]),
        axis_value([b[6], b[7], b[8]]),
    ]
}

fn chip_with(params: PanelParams, faults: Vec<ScheduledFault>) -> (SimAdxl355, SimClock) {
    let clock = SimClock::new();
    let chip = SimAdxl355::new(model(5, params, faults), clock.clone(), ADDRESS_LOW);
    (chip, clock)
}

/// ODR 62.5 Hz, then measurement mode; returns when sampling started.
fn start_measuring(chip: &mut SimAdxl355, clock: &SimClock) -> u64 {
    write(chip, ADDRESS_LOW, FILTER, ODR_62_5);
    write(chip, ADDRESS_LOW, POWER_CTL, 0);
    clock.now_us()
}

#[test]
fn identity_registers_read_in_one_burst() {
    let (mut chip, _) = chip_with(quiet_params(), vec![]);
    let mut id = [0u8; 4];
    chip.write_read(ADDRESS_LOW, &[0x00], &mut id)
        .expect("burst");
    assert_eq!(id, [0xAD, 0x1D, 0xED, REVID]);
    write(&mut chip, ADDRESS_LOW, 0x00, 0x00);
    assert_eq!(
        read(&mut chip, ADDRESS_LOW, 0x00),
        0xAD,
        "ID registers are read-only"
    );
}

#[test]
fn power_on_defaults_and_reset() {
    let (mut chip, clock) = chip_with(quiet_params(), vec![]);
    assert_eq!(
        read(&mut chip, ADDRESS_LOW, POWER_CTL),
        0x01,
        "standby at power on"
    );
    assert_eq!(read(&mut chip, ADDRESS_LOW, RANGE), 0x81);
    assert_eq!(read(&mut chip, ADDRESS_LOW, FILTER), 0x00);
    start_measuring(&mut chip, &clock);
    write(&mut chip, ADDRESS_LOW, RANGE, 0x83);
    clock.advance_us(PERIOD_62_5_US);
    assert_eq!(read(&mut chip, ADDRESS_LOW, STATUS) & 1, 1);

    write(&mut chip, ADDRESS_LOW, RESET, 0x51);
    assert_eq!(
        read(&mut chip, ADDRESS_LOW, RANGE),
        0x83,
        "only 0x52 resets"
    );
    write(&mut chip, ADDRESS_LOW, RESET, 0x52);
    assert_eq!(read(&mut chip, ADDRESS_LOW, POWER_CTL), 0x01);
    assert_eq!(read(&mut chip, ADDRESS_LOW, RANGE), 0x81);
    assert_eq!(read(&mut chip, ADDRESS_LOW, FILTER), 0x00);
    assert_eq!(read(&mut chip, ADDRESS_LOW, STATUS), 0);
    assert_eq!(read_xyz(&mut chip), [0, 0, 0], "data registers cleared");
    clock.advance_us(1_000_000);
    assert_eq!(
        read(&mut chip, ADDRESS_LOW, STATUS),
        0,
        "standby after reset: no data"
    );
}

#[test]
fn standby_produces_no_data() {
    let (mut chip, clock) = chip_with(quiet_params(), vec![]);
    clock.advance_us(2_000_000);
    assert_eq!(read(&mut chip, ADDRESS_LOW, STATUS), 0);
    assert_eq!(read_xyz(&mut chip), [0, 0, 0]);

    start_measuring(&mut chip, &clock);
    clock.advance_us(PERIOD_62_5_US);
    let live = read_xyz(&mut chip);
    assert!(live[2] > 250_000, "about +1 g on Z: {live:?}");
    write(&mut chip, ADDRESS_LOW, POWER_CTL, 0x01);
    clock.advance_us(10 * PERIOD_62_5_US);
    assert_eq!(
        read(&mut chip, ADDRESS_LOW, STATUS),
        0,
        "no new data in standby"
    );
    assert_eq!(read_xyz(&mut chip), live, "standby keeps the last sample");
}

#[test]
fn data_ready_follows_the_output_data_rate() {
    let (mut chip, clock) = chip_with(PanelParams::default(), vec![]);
    let start = start_measuring(&mut chip, &clock);
    assert_eq!(chip.sample_period_us(), PERIOD_62_5_US);
    assert_eq!(read(&mut chip, ADDRESS_LOW, STATUS), 0);
    clock.advance_to_us(start + PERIOD_62_5_US - 1);
    assert_eq!(read(&mut chip, ADDRESS_LOW, STATUS), 0);
    clock.advance_to_us(start + PERIOD_62_5_US);
    assert_eq!(read(&mut chip, ADDRESS_LOW, STATUS), 1);
    assert_eq!(
        read(&mut chip, ADDRESS_LOW, STATUS),
        1,
        "reading STATUS alone keeps it"
    );
    let first = read_xyz(&mut chip);
    assert_eq!(
        read(&mut chip, ADDRESS_LOW, STATUS),
        0,
        "reading the data clears it"
    );
    assert_eq!(read_xyz(&mut chip), first, "same sample until the next one");
    clock.advance_to_us(start + 2 * PERIOD_62_5_US);
    assert_eq!(read(&mut chip, ADDRESS_LOW, STATUS), 1);
    assert_ne!(read_xyz(&mut chip), first, "a new noisy sample");
}

#[test]
fn range_sets_the_scale_and_sign_follows_tilt() {
    let params = PanelParams {
        base_tilt_x_deg: -2.0,
        base_tilt_y_deg: 1.0,
        ..quiet_params()
    };
    let (mut chip, clock) = chip_with(params, vec![]);
    start_measuring(&mut chip, &clock);
    clock.advance_us(PERIOD_62_5_US);
    let expected_g = [
        (-2.0f64).to_radians().sin(),
        1.0f64.to_radians().sin(),
        (1.0 - (-2.0f64).to_radians().sin().powi(2) - 1.0f64.to_radians().sin().powi(2)).sqrt(),
    ];
    for (range_bits, lsb_per_g) in [(0b01u8, 256_000.0), (0b10, 128_000.0), (0b11, 64_000.0)] {
        write(&mut chip, ADDRESS_LOW, RANGE, 0x80 | range_bits);
        let xyz = read_xyz(&mut chip);
        assert!(xyz[0] < 0 && xyz[1] > 0 && xyz[2] > 0, "{xyz:?}");
        for axis in 0..3 {
            let g = f64::from(xyz[axis]) / lsb_per_g;
            // f32 state plus rounding to the nearest LSB.
            assert!(
                (g - expected_g[axis]).abs() <= 0.6 / lsb_per_g + 1e-6,
                "axis {axis}: {g}"
            );
        }
    }
}

#[test]
fn tilt_decoded_from_the_codes_matches_the_model() {
    let model = common::default_model(21);
    let clock = SimClock::new();
    let mut chip = SimAdxl355::new(model.clone(), clock.clone(), ADDRESS_LOW);
    let start = start_measuring(&mut chip, &clock);
    for n in 1..=40u64 {
        let t = start + n * PERIOD_62_5_US;
        clock.advance_to_us(t + 500);
        let xyz = read_xyz(&mut chip).map(|v| f64::from(v) / 256_000.0 * STANDARD_GRAVITY);
        let state = model.sample_over(t, PERIOD_62_5_US);
        let lsb = STANDARD_GRAVITY / 256_000.0;
        for (decoded, modelled) in xyz.iter().zip(state.accel_ms2) {
            assert!((decoded - f64::from(modelled)).abs() <= 0.6 * lsb);
        }
        let tilt_x = xyz[0]
            .atan2((xyz[1] * xyz[1] + xyz[2] * xyz[2]).sqrt())
            .to_degrees();
        let tilt_y = xyz[1]
            .atan2((xyz[0] * xyz[0] + xyz[2] * xyz[2]).sqrt())
            .to_degrees();
        // One LSB at 1 g is 0.00022°; vibration on Z perturbs the decoded tilt a little more.
        assert!(
            (tilt_x - f64::from(state.tilt_x_deg)).abs() < 5e-4,
            "{tilt_x} vs {}",
            state.tilt_x_deg
        );
        assert!(
            (tilt_y - f64::from(state.tilt_y_deg)).abs() < 5e-4,
            "{tilt_y} vs {}",
            state.tilt_y_deg
        );
    }
}

#[test]
fn temperature_registers_use_the_datasheet_transfer() {
    for celsius in [12.0, 25.0, 35.0, -10.0] {
        let params = PanelParams {
            temp_mean_c: celsius,
            ..quiet_params()
        };
        let (mut chip, clock) = chip_with(params, vec![]);
        start_measuring(&mut chip, &clock);
        clock.advance_us(PERIOD_62_5_US);
        let mut b = [0u8; 2];
        chip.write_read(ADDRESS_LOW, &[TEMP2], &mut b)
            .expect("burst");
        assert_eq!(b[0] & 0xF0, 0, "TEMP2 holds only 4 bits");
        let raw = u16::from(b[0] & 0x0F) << 8 | u16::from(b[1]);
        assert_eq!(raw, temperature_code(celsius));
        let decoded = (f64::from(raw) - 1885.0) / -9.05 + 25.0;
        assert!(
            (decoded - celsius).abs() <= 0.5 / 9.05 + 1e-9,
            "{celsius}: {decoded}"
        );
    }
    assert_eq!(temperature_code(25.0), 1885);
}

#[test]
fn answers_only_at_its_address() {
    let clock = SimClock::new();
    let mut chip = SimAdxl355::new(model(1, quiet_params(), vec![]), clock, ADDRESS_HIGH);
    assert_eq!(read(&mut chip, ADDRESS_HIGH, 0x00), 0xAD);
    let mut buf = [0u8; 1];
    let err = chip
        .write_read(ADDRESS_LOW, &[0x00], &mut buf)
        .expect_err("wrong address");
    assert_eq!(
        err.kind(),
        ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address)
    );
}

#[test]
fn offline_and_stuck_faults() {
    let faults = vec![
        ScheduledFault {
            start_us: 500_000,
            end_us: Some(600_000),
            fault: Fault::Offline {
                chip: Chip::Adxl355,
            },
        },
        ScheduledFault {
            start_us: 1_000_000,
            end_us: None,
            fault: Fault::Stuck {
                chip: Chip::Adxl355,
            },
        },
    ];
    let (mut chip, clock) = chip_with(PanelParams::default(), faults);
    start_measuring(&mut chip, &clock);
    let mut stuck = Vec::new();
    let mut nacks = 0;
    while clock.now_us() < 2_000_000 {
        clock.advance_us(PERIOD_62_5_US);
        let mut b = [0u8; 9];
        match chip.write_read(ADDRESS_LOW, &[XDATA3], &mut b) {
            Err(e) => {
                assert_eq!(
                    e.kind(),
                    ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address)
                );
                assert!((500_000..600_000).contains(&clock.now_us()));
                nacks += 1;
            }
            Ok(()) if clock.now_us() >= 1_000_000 => stuck.push(b),
            Ok(()) => {}
        }
    }
    // Reads at 16 ms steps falling in [500 ms, 600 ms): 512, 528, ..., 592 ms.
    assert_eq!(nacks, 6);
    stuck.dedup();
    assert_eq!(stuck.len(), 1, "stuck data never changes");
}
