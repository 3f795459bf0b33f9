//! The physical model: determinism, the magnitude of each component, and the faults.

mod common;

use common::quiet_params;
use proptest::prelude::*;
use towerlink_sim_chips::panel::STANDARD_GRAVITY;
use towerlink_sim_chips::{
    Axis, Channel, Chip, Fault, PanelModel, PanelParams, PanelState, ScheduledFault,
};

const SECOND: u64 = 1_000_000;
const HOUR: u64 = 3600 * SECOND;

fn std_dev(xs: &[f64]) -> f64 {
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64).sqrt()
}

fn fault(start_s: u64, end_s: Option<u64>, fault: Fault) -> ScheduledFault {
    ScheduledFault {
        start_us: start_s * SECOND,
        end_us: end_s.map(|s| s * SECOND),
        fault,
    }
}

#[test]
fn same_seed_same_values_in_any_query_order() {
    let times: Vec<u64> = (0..500u64).map(|i| i * 7_919_113 % (48 * HOUR)).collect();
    let a = PanelModel::new(42, PanelParams::default(), vec![]);
    let b = PanelModel::new(42, PanelParams::default(), vec![]);
    let forward: Vec<PanelState> = times.iter().map(|&t| a.sample(t)).collect();
    // Interleave unrelated queries and go backwards on a second model.
    let backward: Vec<PanelState> = times
        .iter()
        .rev()
        .map(|&t| {
            b.sample(t / 3);
            b.sample(t)
        })
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    assert_eq!(forward, backward);
    assert_eq!(a.sample(123_456), a.sample(123_456));
}

#[test]
fn different_seeds_give_different_panels() {
    let a = PanelModel::new(1, PanelParams::default(), vec![]);
    let b = PanelModel::new(2, PanelParams::default(), vec![]);
    let differing = (0..100u64)
        .filter(|i| a.sample(i * SECOND) != b.sample(i * SECOND))
        .count();
    assert_eq!(differing, 100);
}

#[test]
fn daily_temperature_cycle_and_thermal_strain() {
    let params = PanelParams {
        temp_noise_c: 0.0,
        ..PanelParams::default()
    };
    let model = PanelModel::new(3, params, vec![]);
    let temps: Vec<(u64, f64)> = (0..=24 * 60u64)
        .map(|m| {
            (
                m * 60 * SECOND,
                f64::from(model.sample(m * 60 * SECOND).temperature_c),
            )
        })
        .collect();
    let min = temps.iter().map(|t| t.1).fold(f64::INFINITY, f64::min);
    let max = temps.iter().map(|t| t.1).fold(f64::NEG_INFINITY, f64::max);
    assert!(
        (min - 12.0).abs() < 0.05 && (max - 35.0).abs() < 0.05,
        "{min}..{max}"
    );
    // Start at 08:00, peak at 15:00: seven hours in.
    let peak = temps.iter().fold(
        (0, f64::MIN),
        |acc, &(t, v)| if v > acc.1 { (t, v) } else { acc },
    );
    assert!(
        (peak.0 as f64 / HOUR as f64 - 7.0).abs() < 0.05,
        "peak at {} h",
        peak.0 / HOUR
    );

    // Apparent thermal strain: 2 µε/°C over an 23 °C swing, visible through wind and noise
    // when averaged over a minute.
    let minute_mean = |t0: u64| {
        (0..600u64)
            .map(|i| f64::from(model.sample(t0 + i * 100_000).strain_ue))
            .sum::<f64>()
            / 600.0
    };
    let hot = minute_mean(7 * HOUR);
    let cold = minute_mean(19 * HOUR);
    assert!(
        (hot - cold - 2.0 * 23.0).abs() < 10.0,
        "hot {hot} cold {cold}"
    );
}

#[test]
fn thermal_tilt_drift_is_in_the_documented_band_and_lags() {
    let model = PanelModel::new(4, quiet_params_with_thermal_tilt(), vec![]);
    let samples: Vec<(u64, f64)> = (0..24 * 60u64)
        .map(|m| {
            (
                m * 60 * SECOND,
                f64::from(model.sample(m * 60 * SECOND).tilt_x_deg),
            )
        })
        .collect();
    let min = samples.iter().map(|s| s.1).fold(f64::INFINITY, f64::min);
    let max = samples
        .iter()
        .map(|s| s.1)
        .fold(f64::NEG_INFINITY, f64::max);
    let pp_urad = (max - min).to_radians() * 1e6;
    assert!(
        (50.0..=200.0).contains(&pp_urad) && (pp_urad - 120.0).abs() < 1.0,
        "{pp_urad}"
    );
    let peak_t = samples
        .iter()
        .fold((0, f64::MIN), |a, &(t, v)| if v > a.1 { (t, v) } else { a })
        .0;
    // Temperature peaks 7 h in; the drift 30 min later.
    assert!(
        (peak_t as f64 / HOUR as f64 - 7.5).abs() < 0.05,
        "tilt peak at {peak_t} µs"
    );
}

fn quiet_params_with_thermal_tilt() -> PanelParams {
    PanelParams {
        thermal_tilt_urad_pp: 120.0,
        ..quiet_params()
    }
}

#[test]
fn wind_gusts_move_strain_by_tens_of_microstrain() {
    let params = PanelParams {
        strain_noise_ue: 0.0,
        temp_amplitude_c: 0.0,
        ..PanelParams::default()
    };
    let model = PanelModel::new(5, params, vec![]);
    let strain: Vec<f64> = (0..6000u64)
        .map(|i| f64::from(model.sample(i * 100_000).strain_ue))
        .collect();
    let min = strain.iter().copied().fold(f64::INFINITY, f64::min);
    let max = strain.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    assert!(min >= 120.0, "wind only pushes: {min}");
    assert!(
        (10.0..100.0).contains(&(max - min)),
        "gust swing {} µε",
        max - min
    );
    // Calm: no swing at all.
    let calm = PanelModel::new(
        5,
        PanelParams {
            wind_strain_ue: 0.0,
            ..params
        },
        vec![],
    );
    assert_eq!(
        calm.sample(0).strain_ue,
        calm.sample(300 * SECOND).strain_ue
    );
}

#[test]
fn white_noise_has_the_configured_size() {
    let model = PanelModel::new(6, PanelParams::default(), vec![]);
    // Samples 1 ms apart: wind and temperature do not move, noise is independent.
    let diffs = |f: &dyn Fn(&PanelState) -> f64| -> Vec<f64> {
        (0..4000u64)
            .map(|i| f(&model.sample(i * 2000 + 1000)) - f(&model.sample(i * 2000)))
            .collect()
    };
    let strain = std_dev(&diffs(&|s| f64::from(s.strain_ue))) / 2f64.sqrt();
    let tilt = std_dev(&diffs(&|s| f64::from(s.tilt_x_deg))) / 2f64.sqrt();
    assert!((strain - 2.0).abs() < 0.15, "strain noise {strain} µε");
    assert!((tilt - 0.001).abs() < 0.0001, "tilt noise {tilt}°");
}

#[test]
fn accelerometer_sees_gravity_rotated_by_the_tilt() {
    let model = PanelModel::new(7, PanelParams::default(), vec![]);
    for i in 0..200u64 {
        let s = model.sample(i * 37_000);
        let [ax, ay, az] = s.accel_ms2.map(f64::from);
        let tilt_x = ax.atan2((ay * ay + az * az).sqrt()).to_degrees();
        let magnitude = (ax * ax + ay * ay + az * az).sqrt();
        assert!((magnitude - STANDARD_GRAVITY).abs() < 0.2, "{magnitude}");
        assert!((tilt_x - f64::from(s.tilt_x_deg)).abs() < 2e-4);
    }
}

#[test]
fn spikes_are_isolated_single_samples_at_the_scripted_rate() {
    let period = 12_500; // 80 SPS
    let spikes = Fault::Spikes {
        channel: Channel::Strain,
        rate_per_s: 0.5,
        magnitude: 400.0,
    };
    let faulty = PanelModel::new(
        8,
        PanelParams::default(),
        vec![fault(10, Some(210), spikes)],
    );
    let clean = PanelModel::new(8, PanelParams::default(), vec![]);
    let hits: Vec<(u64, f64)> = (1..=240 * 80u64)
        .map(|n| n * period)
        .map(|t| {
            let d =
                faulty.sample_over(t, period).strain_ue - clean.sample_over(t, period).strain_ue;
            (t, f64::from(d))
        })
        .filter(|&(_, d)| d != 0.0)
        .collect();
    // One spike per 2 s slot over 200 s.
    assert!((99..=100).contains(&hits.len()), "{} spikes", hits.len());
    for &(t, d) in &hits {
        assert!((d.abs() - 400.0).abs() < 1e-3, "spike height {d}");
        assert!(
            (10 * SECOND..210 * SECOND + period).contains(&t),
            "spike at {t} µs"
        );
    }
    for pair in hits.windows(2) {
        assert!(
            pair[1].0 - pair[0].0 >= SECOND,
            "spikes {} and {} µs too close",
            pair[0].0,
            pair[1].0
        );
    }
    let up = hits.iter().filter(|h| h.1 > 0.0).count();
    assert!(
        (25..=75).contains(&up),
        "{up} of {} spikes positive",
        hits.len()
    );
    // Tilt channels are untouched.
    assert_eq!(
        faulty.sample(50 * SECOND).tilt_x_deg,
        clean.sample(50 * SECOND).tilt_x_deg
    );
}

#[test]
fn slow_tilt_creeps_at_the_scripted_rate_then_holds() {
    let creep = Fault::SlowTilt {
        axis: Axis::Y,
        rate_deg_per_hour: 0.3,
    };
    let faulty = PanelModel::new(
        9,
        PanelParams::default(),
        vec![fault(600, Some(4200), creep)],
    );
    let clean = PanelModel::new(9, PanelParams::default(), vec![]);
    let offset = |t: u64| f64::from(faulty.sample(t).tilt_y_deg - clean.sample(t).tilt_y_deg);
    assert_eq!(offset(599 * SECOND), 0.0);
    // Least-squares slope over the active hour.
    let points: Vec<(f64, f64)> = (0..=60u64)
        .map(|m| {
            let t = 600 * SECOND + m * 60 * SECOND;
            (t as f64 / HOUR as f64, offset(t))
        })
        .collect();
    let n = points.len() as f64;
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |a, p| (a.0 + p.0, a.1 + p.1));
    let (sxx, sxy) = points
        .iter()
        .fold((0.0, 0.0), |a, p| (a.0 + p.0 * p.0, a.1 + p.0 * p.1));
    let slope = (n * sxy - sx * sy) / (n * sxx - sx * sx);
    assert!((slope - 0.3).abs() < 1e-3, "slope {slope} °/h");
    assert!(
        (offset(5 * HOUR) - 0.3).abs() < 1e-4,
        "holds the hour's creep"
    );
    assert_eq!(
        faulty.sample(HOUR).tilt_x_deg,
        clean.sample(HOUR).tilt_x_deg
    );
}

#[test]
fn stuck_freezes_one_chips_outputs_only() {
    let faulty = PanelModel::new(
        10,
        PanelParams::default(),
        vec![fault(
            5,
            None,
            Fault::Stuck {
                chip: Chip::Adxl355,
            },
        )],
    );
    let frozen = faulty.sample(5 * SECOND);
    for i in 1..50u64 {
        let s = faulty.sample(5 * SECOND + i * 333_333);
        assert_eq!(
            (s.tilt_x_deg, s.tilt_y_deg, s.accel_ms2, s.temperature_c),
            (
                frozen.tilt_x_deg,
                frozen.tilt_y_deg,
                frozen.accel_ms2,
                frozen.temperature_c
            )
        );
        assert_ne!(s.strain_ue, frozen.strain_ue, "the strain chip stays live");
    }
    assert_ne!(faulty.sample(4 * SECOND).tilt_x_deg, frozen.tilt_x_deg);
}

#[test]
fn offline_window_and_noise_bursts() {
    let faults = vec![
        fault(
            10,
            Some(20),
            Fault::Offline {
                chip: Chip::Nau7802,
            },
        ),
        fault(
            30,
            Some(40),
            Fault::Noisy {
                channel: Some(Channel::TiltX),
                factor: 10.0,
            },
        ),
    ];
    let model = PanelModel::new(11, PanelParams::default(), faults);
    assert!(!model.is_offline(Chip::Nau7802, 10 * SECOND - 1));
    assert!(model.is_offline(Chip::Nau7802, 10 * SECOND));
    assert!(model.is_offline(Chip::Nau7802, 20 * SECOND - 1));
    assert!(!model.is_offline(Chip::Nau7802, 20 * SECOND));
    assert!(!model.is_offline(Chip::Adxl355, 15 * SECOND));

    let noise = |t0: u64, f: fn(&PanelState) -> f32| {
        let d: Vec<f64> = (0..2000u64)
            .map(|i| {
                f64::from(f(&model.sample(t0 + i * 2000 + 1000)) - f(&model.sample(t0 + i * 2000)))
            })
            .collect();
        std_dev(&d)
    };
    let ratio = noise(30 * SECOND, |s| s.tilt_x_deg) / noise(50 * SECOND, |s| s.tilt_x_deg);
    assert!((ratio - 10.0).abs() < 1.0, "tilt noise grew {ratio}×");
    let strain_ratio = noise(30 * SECOND, |s| s.strain_ue) / noise(50 * SECOND, |s| s.strain_ue);
    assert!(
        (strain_ratio - 1.0).abs() < 0.15,
        "strain untouched: {strain_ratio}"
    );
}

proptest! {
    #[test]
    fn any_seed_and_time_gives_finite_repeatable_values(seed: u64, t in 0u64..(30 * 24 * HOUR)) {
        let a = PanelModel::new(seed, PanelParams::default(), vec![]);
        let s = a.sample(t);
        prop_assert_eq!(s, PanelModel::new(seed, PanelParams::default(), vec![]).sample(t));
        let values = [s.strain_ue, s.tilt_x_deg, s.tilt_y_deg, s.temperature_c, s.accel_ms2[0], s.accel_ms2[1], s.accel_ms2[2]];
        prop_assert!(values.iter().all(|v| v.is_finite()));
        prop_assert!((60.0..300.0).contains(&s.strain_ue), "strain {}", s.strain_ue);
        prop_assert!(s.tilt_x_deg.abs() < 0.05 && s.tilt_y_deg.abs() < 0.05);
        prop_assert!((11.0..36.0).contains(&s.temperature_c));
    }
}
