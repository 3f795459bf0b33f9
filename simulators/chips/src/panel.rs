//! A deterministic physical model of one glass curtain-wall panel.
//!
//! [`PanelModel::sample`] gives the panel's strain, tilt, acceleration and temperature at a
//! simulated instant. The value is a pure function of (seed, [`PanelParams`], scripted
//! [`ScheduledFault`]s, t): nothing depends on earlier queries, so two chips reading the same
//! panel, a test reading it backwards, or a rerun of a scenario all see the same numbers.
//! Slowly varying parts are closed-form functions of t; per-sample noise and spikes are hashes
//! of their key (seed, channel, instant or slot), not draws from a running RNG stream.
//!
//! Components (all summed):
//! - base strain and base tilt (installation state);
//! - wind: a gust process built from 16 sinusoids with seeded random frequencies (periods 2 s
//!   to 5 min, lower frequencies stronger) and phases. The wind speed ratio
//!   `u(t) = 1 + gust_intensity·s(t)` (s of unit variance) gives a load `max(u, 0)²`, which
//!   raises strain by `wind_strain_ue·load` and tilt by `wind_tilt_deg·load` (half on Y),
//!   and excites the panel's first mode (vibration on the Z axis at `natural_freq_hz`);
//! - daily temperature: a 24 h cosine peaking at `temp_peak_hour` (default 12..35 °C); the
//!   strain gauge adds an apparent thermal strain `thermal_strain_ue_per_c·(T − mean)`, the
//!   tilt sensor a thermal drift of `thermal_tilt_urad_pp` peak to peak (half on Y) lagging
//!   the temperature by `thermal_tilt_lag_h`;
//! - white noise on every channel;
//! - scripted [`Fault`]s.
//!
//! Sensor frame: Z points up, so a level sensor reads (0, 0, +1 g). The gravity vector for tilt
//! (θx, θy) is `(g·sin θx, g·sin θy, √(g² − ax² − ay²))`, the exact inverse of the usual
//! `θx = atan2(ax, √(ay² + az²))` the firmware uses, so tilt decoded from the simulated
//! accelerometer matches the model's tilt up to quantisation.

use std::f64::consts::TAU;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::noise;

/// Standard gravity, m/s².
pub const STANDARD_GRAVITY: f64 = 9.806_65;

/// The averaging window [`PanelModel::sample`] assumes, µs: a 100 SPS sensor. Chips use
/// [`PanelModel::sample_over`] with their own conversion period instead.
pub const DEFAULT_WINDOW_US: u64 = 10_000;

/// Number of sinusoids in the wind gust process.
const WIND_COMPONENTS: usize = 16;
/// Lowest and highest gust frequency, Hz (periods of 5 min down to 2 s).
const WIND_FREQ_MIN_HZ: f64 = 1.0 / 300.0;
const WIND_FREQ_MAX_HZ: f64 = 0.5;

/// A measured quantity of the panel, as seen by one of its chips.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// Strain, µε (NAU7802 bridge).
    Strain,
    /// Tilt about X, degrees (ADXL355).
    TiltX,
    /// Tilt about Y, degrees (ADXL355).
    TiltY,
    /// Temperature, °C (ADXL355 die sensor).
    Temperature,
}

impl Channel {
    /// The chip that measures this channel.
    pub const fn chip(self) -> Chip {
        match self {
            Channel::Strain => Chip::Nau7802,
            Channel::TiltX | Channel::TiltY | Channel::Temperature => Chip::Adxl355,
        }
    }

    /// A distinct hash key per channel.
    const fn key(self) -> u64 {
        match self {
            Channel::Strain => 1,
            Channel::TiltX => 2,
            Channel::TiltY => 3,
            Channel::Temperature => 4,
        }
    }
}

/// One of the two chips of a panel node. In scenario files also spelled `"strain"` (the
/// NAU7802) and `"tilt"` (the ADXL355).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Chip {
    /// The strain bridge ADC.
    #[serde(alias = "strain")]
    Nau7802,
    /// The accelerometer used as inclinometer (and its temperature sensor).
    #[serde(alias = "tilt")]
    Adxl355,
}

/// A tilt axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Axis {
    /// Tilt about X.
    X,
    /// Tilt about Y.
    Y,
}

impl Axis {
    const fn channel(self) -> Channel {
        match self {
            Axis::X => Channel::TiltX,
            Axis::Y => Channel::TiltY,
        }
    }
}

/// Something going wrong with a panel or its sensors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// The panel creeps: tilt about `axis` grows by `rate_deg_per_hour` while the fault is
    /// active and keeps the accumulated offset afterwards (a loosened bracket stays loose).
    SlowTilt {
        /// The axis that creeps.
        axis: Axis,
        /// Creep rate, degrees per hour (negative creeps the other way).
        rate_deg_per_hour: f64,
    },
    /// Isolated impulses of ±`magnitude` (channel unit) on `channel`, `rate_per_s` on average.
    /// One impulse per slot of `1/rate_per_s` seconds, at a seeded instant in the middle half
    /// of the slot, so impulses are at least half a slot apart; a sensor that averages over
    /// its conversion period sees each impulse in exactly one sample. A rate that is not
    /// positive and finite gives no spikes.
    Spikes {
        /// The channel hit.
        channel: Channel,
        /// Mean spike rate, per second.
        rate_per_s: f64,
        /// Spike height in the channel's unit; the sign is random per spike.
        magnitude: f64,
    },
    /// The chip's outputs freeze at the values of the fault's start instant.
    Stuck {
        /// The frozen chip.
        chip: Chip,
    },
    /// The chip stops answering on the bus (address NACK).
    Offline {
        /// The silent chip.
        chip: Chip,
    },
    /// White noise grows by `factor` on `channel`, or on every channel (and the vibration
    /// noise) when `channel` is `None`.
    Noisy {
        /// The channel affected, or all.
        channel: Option<Channel>,
        /// Multiplier of the noise standard deviation.
        factor: f64,
    },
}

/// A [`Fault`] active from `start_us` (inclusive) to `end_us` (exclusive; `None` = forever).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScheduledFault {
    /// Start, µs of simulated time.
    pub start_us: u64,
    /// End, µs of simulated time, or `None` for a fault that never ends.
    pub end_us: Option<u64>,
    /// What goes wrong.
    pub fault: Fault,
}

impl ScheduledFault {
    /// Whether the fault is in effect at `t_us`.
    pub fn active_at(&self, t_us: u64) -> bool {
        t_us >= self.start_us && self.end_us.is_none_or(|end| t_us < end)
    }
}

/// Parameters of a panel. The defaults describe a typical panel in mild wind on a warm day.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PanelParams {
    /// Strain at rest, µε.
    pub base_strain_ue: f64,
    /// Tilt about X at rest, degrees.
    pub base_tilt_x_deg: f64,
    /// Tilt about Y at rest, degrees.
    pub base_tilt_y_deg: f64,
    /// Strain per unit wind load (the mean load is about 1), µε.
    pub wind_strain_ue: f64,
    /// Tilt about X per unit wind load, degrees (Y gets half).
    pub wind_tilt_deg: f64,
    /// Turbulence intensity: standard deviation of the wind speed over its mean.
    pub gust_intensity: f64,
    /// Panel vibration amplitude per unit wind load, m/s² on Z.
    pub vibration_ms2: f64,
    /// First natural frequency of the panel, Hz.
    pub natural_freq_hz: f64,
    /// Local time of day at t = 0, hours.
    pub start_hour: f64,
    /// Daily mean temperature, °C.
    pub temp_mean_c: f64,
    /// Daily temperature amplitude (half the swing), °C.
    pub temp_amplitude_c: f64,
    /// Hour of the daily temperature peak.
    pub temp_peak_hour: f64,
    /// Apparent thermal strain of the gauge, µε per °C away from the daily mean.
    pub thermal_strain_ue_per_c: f64,
    /// Thermal tilt drift about X, µrad peak to peak over a day (Y gets half).
    pub thermal_tilt_urad_pp: f64,
    /// How far the thermal tilt drift lags the temperature, hours.
    pub thermal_tilt_lag_h: f64,
    /// Strain white noise, µε standard deviation.
    pub strain_noise_ue: f64,
    /// Tilt white noise, degrees standard deviation.
    pub tilt_noise_deg: f64,
    /// Acceleration white noise on Z, m/s² standard deviation.
    pub accel_noise_ms2: f64,
    /// Temperature white noise, °C standard deviation.
    pub temp_noise_c: f64,
}

impl Default for PanelParams {
    fn default() -> Self {
        PanelParams {
            base_strain_ue: 120.0,
            base_tilt_x_deg: 0.0,
            base_tilt_y_deg: 0.0,
            wind_strain_ue: 15.0,
            wind_tilt_deg: 0.002,
            gust_intensity: 0.3,
            vibration_ms2: 0.01,
            natural_freq_hz: 12.0,
            start_hour: 8.0,
            temp_mean_c: 23.5,
            temp_amplitude_c: 11.5,
            temp_peak_hour: 15.0,
            thermal_strain_ue_per_c: 2.0,
            thermal_tilt_urad_pp: 120.0,
            thermal_tilt_lag_h: 0.5,
            strain_noise_ue: 2.0,
            tilt_noise_deg: 0.001,
            accel_noise_ms2: 0.002,
            temp_noise_c: 0.05,
        }
    }
}

/// What the panel's sensors would measure at one instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PanelState {
    /// Strain, µε.
    pub strain_ue: f32,
    /// Tilt about X, degrees.
    pub tilt_x_deg: f32,
    /// Tilt about Y, degrees.
    pub tilt_y_deg: f32,
    /// Acceleration in the sensor frame (gravity rotated by the tilt, plus vibration), m/s².
    pub accel_ms2: [f32; 3],
    /// Temperature at the sensor, °C.
    pub temperature_c: f32,
}

/// One sinusoid of the wind gust process.
#[derive(Debug, Clone, Copy)]
struct WindComponent {
    freq_hz: f64,
    amplitude: f64,
    phase: f64,
}

/// The deterministic model of one panel. Immutable once built, so it can be shared between
/// chips and threads behind an `Arc`.
#[derive(Debug, Clone)]
pub struct PanelModel {
    seed: u64,
    params: PanelParams,
    faults: Vec<ScheduledFault>,
    wind: Vec<WindComponent>,
    vibration_phase: f64,
}

impl PanelModel {
    /// A panel with parameters `params` and scripted `faults`; `seed` fixes the wind, the noise
    /// and the spike instants.
    pub fn new(seed: u64, params: PanelParams, faults: Vec<ScheduledFault>) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (ln_min, ln_max) = (WIND_FREQ_MIN_HZ.ln(), WIND_FREQ_MAX_HZ.ln());
        let mut wind: Vec<WindComponent> = (0..WIND_COMPONENTS)
            .map(|_| {
                let freq_hz = rng.gen_range(ln_min..ln_max).exp();
                WindComponent {
                    freq_hz,
                    // Gust energy falls with frequency (roughly a von Kármán slope).
                    amplitude: freq_hz.powf(-1.0 / 3.0),
                    phase: rng.gen_range(0.0..TAU),
                }
            })
            .collect();
        // Normalise to unit variance: a sinusoid of amplitude a has variance a²/2.
        let variance: f64 = wind.iter().map(|c| c.amplitude * c.amplitude / 2.0).sum();
        let norm = variance.sqrt();
        for c in &mut wind {
            c.amplitude /= norm;
        }
        PanelModel {
            seed,
            params,
            faults,
            wind,
            vibration_phase: rng.gen_range(0.0..TAU),
        }
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The parameters.
    pub fn params(&self) -> &PanelParams {
        &self.params
    }

    /// The scripted faults.
    pub fn faults(&self) -> &[ScheduledFault] {
        &self.faults
    }

    /// The state at `t_us`, as seen by a sensor averaging over [`DEFAULT_WINDOW_US`].
    pub fn sample(&self, t_us: u64) -> PanelState {
        self.sample_over(t_us, DEFAULT_WINDOW_US)
    }

    /// The state at `t_us` as seen by a sensor whose sample covers `(t_us − window_us, t_us]`:
    /// a spike falling in that window shows in this sample. Chips pass their conversion period
    /// so that every spike lands in exactly one conversion.
    pub fn sample_over(&self, t_us: u64, window_us: u64) -> PanelState {
        let mut state = self.compute(t_us, window_us);
        for f in &self.faults {
            if let Fault::Stuck { chip } = f.fault {
                if f.active_at(t_us) {
                    let frozen = self.compute(f.start_us, window_us);
                    match chip {
                        Chip::Nau7802 => state.strain_ue = frozen.strain_ue,
                        Chip::Adxl355 => {
                            state.tilt_x_deg = frozen.tilt_x_deg;
                            state.tilt_y_deg = frozen.tilt_y_deg;
                            state.accel_ms2 = frozen.accel_ms2;
                            state.temperature_c = frozen.temperature_c;
                        }
                    }
                }
            }
        }
        state
    }

    /// Whether `chip` is offline (does not answer on the bus) at `t_us`.
    pub fn is_offline(&self, chip: Chip, t_us: u64) -> bool {
        self.faults
            .iter()
            .any(|f| f.fault == Fault::Offline { chip } && f.active_at(t_us))
    }

    /// The wind load (about 1 on average, ≥ 0) at `t_s` seconds.
    fn wind_load(&self, t_s: f64) -> f64 {
        let s: f64 = self
            .wind
            .iter()
            .map(|c| c.amplitude * (TAU * c.freq_hz * t_s + c.phase).sin())
            .sum();
        let speed = (1.0 + self.params.gust_intensity * s).max(0.0);
        speed * speed
    }

    /// Every component except the stuck freeze.
    fn compute(&self, t_us: u64, window_us: u64) -> PanelState {
        let p = &self.params;
        let t_s = t_us as f64 * 1e-6;
        let load = self.wind_load(t_s);
        let hour = p.start_hour + t_s / 3600.0;
        let temp_c =
            p.temp_mean_c + p.temp_amplitude_c * (TAU * (hour - p.temp_peak_hour) / 24.0).cos();
        let lagged = (TAU * (hour - p.temp_peak_hour - p.thermal_tilt_lag_h) / 24.0).cos();
        let thermal_tilt_deg = (p.thermal_tilt_urad_pp / 2.0 * 1e-6).to_degrees() * lagged;

        let strain = p.base_strain_ue
            + p.wind_strain_ue * load
            + p.thermal_strain_ue_per_c * (temp_c - p.temp_mean_c)
            + self.noise(Channel::Strain, t_us, p.strain_noise_ue)
            + self.fault_offset(Channel::Strain, t_us, window_us);
        let tilt_x = p.base_tilt_x_deg
            + p.wind_tilt_deg * load
            + thermal_tilt_deg
            + self.noise(Channel::TiltX, t_us, p.tilt_noise_deg)
            + self.fault_offset(Channel::TiltX, t_us, window_us);
        let tilt_y = p.base_tilt_y_deg
            + 0.5 * p.wind_tilt_deg * load
            + 0.5 * thermal_tilt_deg
            + self.noise(Channel::TiltY, t_us, p.tilt_noise_deg)
            + self.fault_offset(Channel::TiltY, t_us, window_us);
        let temperature = temp_c
            + self.noise(Channel::Temperature, t_us, p.temp_noise_c)
            + self.fault_offset(Channel::Temperature, t_us, window_us);

        let ax = STANDARD_GRAVITY * tilt_x.to_radians().sin();
        let ay = STANDARD_GRAVITY * tilt_y.to_radians().sin();
        let az_gravity = (STANDARD_GRAVITY * STANDARD_GRAVITY - ax * ax - ay * ay)
            .max(0.0)
            .sqrt();
        let vibration =
            p.vibration_ms2 * load * (TAU * p.natural_freq_hz * t_s + self.vibration_phase).sin()
                + p.accel_noise_ms2
                    * self.noise_factor(None, t_us)
                    * noise::gaussian(noise::hash(&[self.seed, 0xACCE1, t_us]));

        PanelState {
            strain_ue: strain as f32,
            tilt_x_deg: tilt_x as f32,
            tilt_y_deg: tilt_y as f32,
            accel_ms2: [ax as f32, ay as f32, (az_gravity + vibration) as f32],
            temperature_c: temperature as f32,
        }
    }

    /// White noise of standard deviation `sigma` (times any active noise burst) on `channel`.
    fn noise(&self, channel: Channel, t_us: u64, sigma: f64) -> f64 {
        sigma
            * self.noise_factor(Some(channel), t_us)
            * noise::gaussian(noise::hash(&[self.seed, channel.key(), t_us]))
    }

    /// The product of the factors of the noise bursts active on `channel` at `t_us`; `None`
    /// stands for the vibration noise, which only all-channel bursts affect.
    fn noise_factor(&self, channel: Option<Channel>, t_us: u64) -> f64 {
        self.faults
            .iter()
            .filter(|f| f.active_at(t_us))
            .filter_map(|f| match f.fault {
                Fault::Noisy { channel: c, factor } if c.is_none() || c == channel => Some(factor),
                _ => None,
            })
            .product()
    }

    /// Creep and spikes on `channel`.
    fn fault_offset(&self, channel: Channel, t_us: u64, window_us: u64) -> f64 {
        self.faults
            .iter()
            .enumerate()
            .map(|(index, f)| match f.fault {
                Fault::SlowTilt {
                    axis,
                    rate_deg_per_hour,
                } if axis.channel() == channel && t_us >= f.start_us => {
                    let until = f.end_us.map_or(t_us, |end| end.min(t_us));
                    rate_deg_per_hour * until.saturating_sub(f.start_us) as f64 / 3.6e9
                }
                Fault::Spikes {
                    channel: c,
                    rate_per_s,
                    magnitude,
                } if c == channel => self.spikes(index, f, rate_per_s, magnitude, t_us, window_us),
                _ => 0.0,
            })
            .sum()
    }

    /// The sum of the spikes of fault number `index` whose instant falls in
    /// `(t_us − window_us, t_us]`.
    fn spikes(
        &self,
        index: usize,
        f: &ScheduledFault,
        rate_per_s: f64,
        magnitude: f64,
        t_us: u64,
        window_us: u64,
    ) -> f64 {
        if !(rate_per_s.is_finite() && rate_per_s > 0.0) || t_us < f.start_us {
            return 0.0;
        }
        let slot_us = (1e6 / rate_per_s).round().max(1.0) as u64;
        let lo = t_us.saturating_sub(window_us);
        let first = lo.saturating_sub(f.start_us) / slot_us;
        let last = (t_us - f.start_us) / slot_us;
        let mut sum = 0.0;
        for slot in first..=last {
            let h = noise::hash(&[self.seed, 0x5B1CE, index as u64, slot]);
            let offset = (slot_us as f64 * (0.25 + 0.5 * noise::uniform(h))) as u64;
            let instant = f.start_us + slot * slot_us + offset;
            let in_window = instant > lo && instant <= t_us;
            let in_fault = f.end_us.is_none_or(|end| instant < end);
            if in_window && in_fault {
                sum += if h & 1 == 0 { magnitude } else { -magnitude };
            }
        }
        sum
    }
}
