//! Register semantics of the simulated NAU7802 (its datasheet register map).

mod common;

use common::{model, quiet_params, sign_extend_24};
use embedded_hal::i2c::{Error as _, ErrorKind, I2c, NoAcknowledgeSource, Operation};
use towerlink_sim_chips::nau7802::{Bridge, ADDRESS, CALIBRATION_US, CODE_MAX, POWER_UP_READY_US};
use towerlink_sim_chips::{Chip, Fault, PanelParams, ScheduledFault, SimClock, SimNau7802};

const PU_CTRL: u8 = 0x00;
const CTRL1: u8 = 0x01;
const CTRL2: u8 = 0x02;
const ADCO_B2: u8 = 0x12;
const REVISION: u8 = 0x1F;
const PUD: u8 = 1 << 1;
const PUA: u8 = 1 << 2;
const PUR: u8 = 1 << 3;
const CS: u8 = 1 << 4;
const CR: u8 = 1 << 5;
const CALS: u8 = 1 << 2;
const CAL_ERR: u8 = 1 << 3;
/// CTRL2 rate field for 80 SPS.
const CRS_80: u8 = 0b011 << 4;
const PERIOD_80_US: u64 = 12_500;

fn read(chip: &mut SimNau7802, reg: u8) -> u8 {
    let mut buf = [0u8; 1];
    chip.write_read(ADDRESS, &[reg], &mut buf)
        .expect("chip answers");
    buf[0]
}

fn write(chip: &mut SimNau7802, reg: u8, value: u8) {
    chip.write(ADDRESS, &[reg, value]).expect("chip answers");
}

fn read_code(chip: &mut SimNau7802) -> i32 {
    let mut buf = [0u8; 3];
    chip.write_read(ADDRESS, &[ADCO_B2], &mut buf)
        .expect("chip answers");
    sign_extend_24(u32::from(buf[0]) << 16 | u32::from(buf[1]) << 8 | u32::from(buf[2]))
}

fn chip_with(params: PanelParams, faults: Vec<ScheduledFault>) -> (SimNau7802, SimClock) {
    let clock = SimClock::new();
    let chip = SimNau7802::new(model(3, params, faults), clock.clone());
    (chip, clock)
}

/// Power up and start 80 SPS conversions at gain 128; returns the time conversions start.
fn power_up(chip: &mut SimNau7802, clock: &SimClock) -> u64 {
    write(chip, PU_CTRL, PUD);
    clock.advance_us(POWER_UP_READY_US);
    write(chip, CTRL1, 0b111);
    write(chip, CTRL2, CRS_80);
    write(chip, PU_CTRL, PUD | PUA | CS);
    clock.now_us()
}

/// Datasheet decoding: ratio = code / (2²³·gain), ε = ratio·factor/GF.
fn microstrain(code: i32, gain: u32, bridge: Bridge) -> f64 {
    f64::from(code) / (8_388_608.0 * f64::from(gain)) * bridge.factor / bridge.gauge_factor * 1e6
}

#[test]
fn power_on_state_and_revision() {
    let (mut chip, _) = chip_with(quiet_params(), vec![]);
    assert_eq!(read(&mut chip, REVISION) & 0x0F, 0x0F);
    assert_eq!(read(&mut chip, PU_CTRL), 0);
    assert_eq!(read(&mut chip, CTRL1), 0);
    assert_eq!(read(&mut chip, CTRL2), 0);
    write(&mut chip, REVISION, 0x00);
    assert_eq!(read(&mut chip, REVISION), 0x0F, "REVISION_ID is read-only");
}

#[test]
fn pur_sets_200_us_after_pud() {
    let (mut chip, clock) = chip_with(quiet_params(), vec![]);
    write(&mut chip, PU_CTRL, PUD);
    assert_eq!(read(&mut chip, PU_CTRL) & PUR, 0);
    clock.advance_us(POWER_UP_READY_US - 1);
    assert_eq!(read(&mut chip, PU_CTRL) & PUR, 0);
    clock.advance_us(1);
    assert_eq!(read(&mut chip, PU_CTRL), PUD | PUR);
    write(&mut chip, PU_CTRL, 0);
    assert_eq!(
        read(&mut chip, PU_CTRL) & PUR,
        0,
        "powering down clears PUR"
    );
}

#[test]
fn register_reset_restores_defaults_and_holds_the_chip() {
    let (mut chip, clock) = chip_with(quiet_params(), vec![]);
    power_up(&mut chip, &clock);
    write(&mut chip, 0x1C, 0x80);
    write(&mut chip, PU_CTRL, 0x01);
    assert_eq!(read(&mut chip, PU_CTRL), 0x01, "RR stays set, PUR clear");
    assert_eq!(read(&mut chip, CTRL1), 0);
    assert_eq!(read(&mut chip, CTRL2), 0);
    assert_eq!(read(&mut chip, 0x1C), 0);
    write(&mut chip, CTRL1, 0x07);
    assert_eq!(
        read(&mut chip, CTRL1),
        0,
        "writes are ignored while held in reset"
    );
    write(&mut chip, PU_CTRL, PUD);
    clock.advance_us(POWER_UP_READY_US);
    assert_eq!(read(&mut chip, PU_CTRL), PUD | PUR);
    assert_eq!(read(&mut chip, REVISION), 0x0F);
}

#[test]
fn burst_writes_and_reads_auto_increment() {
    let (mut chip, _) = chip_with(quiet_params(), vec![]);
    chip.write(ADDRESS, &[CTRL1, 0x3F, 0x70])
        .expect("burst write");
    let mut buf = [0u8; 2];
    chip.write_read(ADDRESS, &[CTRL1], &mut buf)
        .expect("burst read");
    assert_eq!(buf, [0x3F, 0x70]);

    // The pointer survives the transaction: a plain read continues after CTRL2.
    chip.write(ADDRESS, &[0x1E]).expect("set pointer");
    let mut two = [0u8; 2];
    chip.read(ADDRESS, &mut two).expect("read");
    assert_eq!(two, [0x00, 0x0F], "0x1E then REVISION_ID");

    // Adjacent write operations are one write: the second carries data, not a pointer.
    chip.transaction(
        ADDRESS,
        &mut [Operation::Write(&[0x1B]), Operation::Write(&[0x40])],
    )
    .expect("transaction");
    let mut one = [0u8; 1];
    chip.transaction(
        ADDRESS,
        &mut [Operation::Write(&[0x1B]), Operation::Read(&mut one)],
    )
    .expect("transaction");
    assert_eq!(one, [0x40]);
}

#[test]
fn cycle_ready_follows_the_conversion_rate() {
    let (mut chip, clock) = chip_with(quiet_params(), vec![]);
    let start = power_up(&mut chip, &clock);
    assert_eq!(chip.conversion_period_us(), PERIOD_80_US);
    assert_eq!(read(&mut chip, PU_CTRL) & CR, 0, "no conversion yet");
    clock.advance_to_us(start + PERIOD_80_US - 1);
    assert_eq!(read(&mut chip, PU_CTRL) & CR, 0);
    clock.advance_to_us(start + PERIOD_80_US);
    assert_eq!(read(&mut chip, PU_CTRL) & CR, CR, "first conversion done");
    read_code(&mut chip);
    assert_eq!(
        read(&mut chip, PU_CTRL) & CR,
        0,
        "read conversion is no longer new"
    );
    clock.advance_to_us(start + 2 * PERIOD_80_US - 1);
    assert_eq!(read(&mut chip, PU_CTRL) & CR, 0);
    clock.advance_to_us(start + 2 * PERIOD_80_US);
    assert_eq!(read(&mut chip, PU_CTRL) & CR, CR);

    // 10 SPS after a rate change: conversions restart from the change.
    write(&mut chip, CTRL2, 0);
    assert_eq!(chip.conversion_period_us(), 100_000);
    assert_eq!(read(&mut chip, PU_CTRL) & CR, 0);
    clock.advance_us(99_999);
    assert_eq!(read(&mut chip, PU_CTRL) & CR, 0);
    clock.advance_us(1);
    assert_eq!(read(&mut chip, PU_CTRL) & CR, CR);
}

#[test]
fn no_conversions_without_cycle_start() {
    let (mut chip, clock) = chip_with(quiet_params(), vec![]);
    write(&mut chip, PU_CTRL, PUD | PUA);
    clock.advance_us(1_000_000);
    assert_eq!(read(&mut chip, PU_CTRL) & CR, 0);
    assert_eq!(read_code(&mut chip), 0);
}

#[test]
fn calibration_self_clears_and_reports_errors() {
    let (mut chip, clock) = chip_with(quiet_params(), vec![]);
    // Unpowered analog side: the calibration finishes with CAL_ERR.
    write(&mut chip, CTRL2, CALS);
    assert_eq!(read(&mut chip, CTRL2) & CALS, CALS);
    clock.advance_us(CALIBRATION_US);
    assert_eq!(read(&mut chip, CTRL2) & (CALS | CAL_ERR), CAL_ERR);

    power_up(&mut chip, &clock);
    write(&mut chip, CTRL2, CRS_80 | CALS);
    assert_eq!(
        read(&mut chip, CTRL2),
        CRS_80 | CALS,
        "CALS reads 1 while calibrating"
    );
    clock.advance_us(CALIBRATION_US - 1);
    assert_eq!(read(&mut chip, CTRL2) & CALS, CALS);
    assert_eq!(
        read(&mut chip, PU_CTRL) & CR,
        0,
        "no conversions during calibration"
    );
    clock.advance_us(1);
    assert_eq!(read(&mut chip, CTRL2), CRS_80, "CALS and CAL_ERR clear");
    clock.advance_us(PERIOD_80_US);
    assert_eq!(
        read(&mut chip, PU_CTRL) & CR,
        CR,
        "conversions resume after calibration"
    );
}

#[test]
fn codes_encode_strain_through_the_bridge_with_sign() {
    for (strain, bridge) in [
        (250.0, Bridge::default()),
        (-180.0, Bridge::default()),
        (
            40.0,
            Bridge {
                factor: 1.0,
                gauge_factor: 2.1,
            },
        ),
    ] {
        let params = PanelParams {
            base_strain_ue: strain,
            ..quiet_params()
        };
        let clock = SimClock::new();
        let mut chip = SimNau7802::new(model(1, params, vec![]), clock.clone()).with_bridge(bridge);
        let start = power_up(&mut chip, &clock);
        clock.advance_to_us(start + PERIOD_80_US);
        let mut raw = [0u8; 3];
        chip.write_read(ADDRESS, &[ADCO_B2], &mut raw)
            .expect("read");
        assert_eq!(
            raw[0] & 0x80 != 0,
            strain < 0.0,
            "sign bit of {strain} µε: {raw:?}"
        );
        let code =
            sign_extend_24(u32::from(raw[0]) << 16 | u32::from(raw[1]) << 8 | u32::from(raw[2]));
        let lsb = microstrain(1, 128, bridge);
        let decoded = microstrain(code, 128, bridge);
        assert!(
            (decoded - strain).abs() <= lsb,
            "{strain} µε decoded as {decoded}"
        );
    }
}

#[test]
fn gain_scales_the_code_and_full_scale_saturates() {
    let params = PanelParams {
        base_strain_ue: 500.0,
        ..quiet_params()
    };
    let (mut chip, clock) = chip_with(params, vec![]);
    let start = power_up(&mut chip, &clock);
    clock.advance_to_us(start + PERIOD_80_US);
    let at_128 = read_code(&mut chip);
    write(&mut chip, CTRL1, 0b000);
    clock.advance_us(PERIOD_80_US);
    let at_1 = read_code(&mut chip);
    assert!(
        (f64::from(at_128) / f64::from(at_1) - 128.0).abs() < 0.5,
        "{at_128} / {at_1}"
    );

    // 5 % strain is far beyond a quarter bridge at gain 128: the code pins at full scale.
    let params = PanelParams {
        base_strain_ue: 50_000.0,
        ..quiet_params()
    };
    let (mut chip, clock) = chip_with(params, vec![]);
    let start = power_up(&mut chip, &clock);
    clock.advance_to_us(start + PERIOD_80_US);
    assert_eq!(read_code(&mut chip), CODE_MAX);
    let params = PanelParams {
        base_strain_ue: -50_000.0,
        ..quiet_params()
    };
    let (mut chip, clock) = chip_with(params, vec![]);
    let start = power_up(&mut chip, &clock);
    clock.advance_to_us(start + PERIOD_80_US);
    assert_eq!(read_code(&mut chip), -CODE_MAX);
}

#[test]
fn each_conversion_reports_the_model_over_its_own_period() {
    let model = common::default_model(11);
    let clock = SimClock::new();
    let mut chip = SimNau7802::new(model.clone(), clock.clone());
    let start = power_up(&mut chip, &clock);
    let lsb = microstrain(1, 128, Bridge::default());
    for n in 1..=50u64 {
        let t = start + n * PERIOD_80_US;
        clock.advance_to_us(t + 3_000); // read a little after the conversion
        let decoded = microstrain(read_code(&mut chip), 128, Bridge::default());
        let expected = f64::from(model.sample_over(t, PERIOD_80_US).strain_ue);
        assert!(
            (decoded - expected).abs() <= lsb,
            "conversion {n}: {decoded} vs {expected}"
        );
    }
}

#[test]
fn stuck_chip_repeats_one_code() {
    let faults = vec![ScheduledFault {
        start_us: 2_000_000,
        end_us: None,
        fault: Fault::Stuck {
            chip: Chip::Nau7802,
        },
    }];
    let (mut chip, clock) = chip_with(PanelParams::default(), faults);
    power_up(&mut chip, &clock);
    let mut before = Vec::new();
    let mut after = Vec::new();
    for _ in 0..300 {
        clock.advance_us(PERIOD_80_US);
        let code = read_code(&mut chip);
        if clock.now_us() < 2_000_000 {
            before.push(code)
        } else {
            after.push(code)
        }
    }
    before.dedup();
    after.dedup();
    assert!(
        before.len() > 100,
        "live codes vary: {} distinct runs",
        before.len()
    );
    assert_eq!(after.len(), 1, "stuck codes: {after:?}");
}

#[test]
fn offline_chip_and_wrong_address_nack() {
    let faults = vec![ScheduledFault {
        start_us: 1_000,
        end_us: Some(5_000),
        fault: Fault::Offline {
            chip: Chip::Nau7802,
        },
    }];
    let (mut chip, clock) = chip_with(quiet_params(), faults);
    let mut buf = [0u8; 1];
    let err = chip
        .write_read(0x2B, &[REVISION], &mut buf)
        .expect_err("nobody at 0x2B");
    assert_eq!(
        err.kind(),
        ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address)
    );
    assert_eq!(read(&mut chip, REVISION), 0x0F);
    clock.advance_to_us(1_000);
    for _ in 0..4 {
        let err = chip
            .write_read(ADDRESS, &[REVISION], &mut buf)
            .expect_err("offline");
        assert_eq!(
            err.kind(),
            ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address)
        );
        assert!(chip.write(ADDRESS, &[CTRL1, 1]).is_err());
        clock.advance_us(1_000);
    }
    assert_eq!(clock.now_us(), 5_000);
    assert_eq!(read(&mut chip, REVISION), 0x0F, "back after the fault ends");
    assert_eq!(
        read(&mut chip, CTRL1),
        0,
        "writes while offline were not applied"
    );
}
