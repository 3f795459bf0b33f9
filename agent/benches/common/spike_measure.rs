//! What a spike-filter setting does to honest data, measured on fixed-seed synthetic signals.
//! Shared by the `spike_filter` bench (which prints the table for every documented setting)
//! and by `agent/tests/spike_filter.rs` (which asserts the defaults' targets).
//!
//! Four signals, each with unit Gaussian noise (sigma = 1) and a resolution floor far below it:
//! - stationary noise: the share of samples kept, and the kept samples' std against sigma;
//! - isolated single-sample spikes of 8 sigma (random sign) every 50 samples: the share
//!   rejected;
//! - a genuine step of 10 sigma after 300 quiet samples, repeated: how many samples of the new
//!   level are rejected before one passes (the worst case over the trials), and whether a
//!   `minor = 5` alarm on the full channel chain goes active within the window's half-width
//!   plus one sample;
//! - ramps of 0.01, 1 and 3 sigma per sample (slow drift to a panel moving fast): samples
//!   rejected.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use towerlink_agent::pipeline::chain::ChannelChain;
use towerlink_agent::pipeline::filter::SpikeFilter;
use towerlink_agent::pipeline::settings::{ChannelSettings, Hampel};
use towerlink_firmware::protocol::Quantity;

/// The resolution floor used throughout (far below sigma, as for a good sensor).
pub const FLOOR: f64 = 0.001;

/// One setting's figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figures {
    /// Share of stationary Gaussian samples kept.
    pub kept: f64,
    /// Std of the kept samples / sigma.
    pub std_ratio: f64,
    /// Share of isolated 8-sigma spikes rejected.
    pub spikes_rejected: f64,
    /// Worst number of new-level samples rejected after a genuine step.
    pub step_rejected_max: usize,
    /// Every step's alarm went active within half a window plus one sample.
    pub step_alarm_in_time: bool,
    /// Samples rejected on ramps of 0.01, 1 and 3 sigma per sample (1 000 samples each).
    pub ramp_rejected: [usize; 3],
}

/// Standard Gaussian noise from a seeded ChaCha8 (Box-Muller).
pub struct Noise(ChaCha8Rng);

impl Noise {
    /// Noise from `seed`.
    pub fn new(seed: u64) -> Noise {
        Noise(ChaCha8Rng::seed_from_u64(seed))
    }

    /// One sample.
    pub fn sample(&mut self) -> f64 {
        let u1: f64 = self.0.gen_range(f64::EPSILON..1.0);
        let u2: f64 = self.0.gen();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// A fair coin.
    pub fn sign(&mut self) -> f64 {
        if self.0.gen::<bool>() {
            1.0
        } else {
            -1.0
        }
    }
}

/// Measures `setting` with `samples` stationary samples (the spike run uses as many; the step
/// is repeated `steps` times).
pub fn measure(setting: Hampel, samples: usize, steps: usize, seed: u64) -> Figures {
    let mut noise = Noise::new(seed);

    let mut f = SpikeFilter::new(setting, FLOOR);
    let (mut kept, mut sum, mut sum_sq) = (0usize, 0.0, 0.0);
    for _ in 0..samples {
        let x = noise.sample();
        if !f.is_spike(x) {
            kept += 1;
            sum += x;
            sum_sq += x * x;
        }
    }
    let mean = sum / kept as f64;
    let std_ratio = (sum_sq / kept as f64 - mean * mean).sqrt();

    let mut f = SpikeFilter::new(setting, FLOOR);
    let (mut spikes, mut caught) = (0usize, 0usize);
    for i in 0..samples {
        let spike = i % 50 == 25;
        let x = noise.sample() + if spike { 8.0 * noise.sign() } else { 0.0 };
        let rejected = f.is_spike(x);
        if spike {
            spikes += 1;
            caught += usize::from(rejected);
        }
    }

    let half = setting.window / 2;
    let mut step_rejected_max = 0;
    let mut step_alarm_in_time = true;
    let settings: Option<ChannelSettings> = toml::from_str(&format!(
        "spike = {{ window = {}, k = {} }}\nalarm = {{ minor = 5.0, relative_to_zero = false }}\n",
        setting.window, setting.k
    ))
    .ok();
    for _ in 0..steps {
        let mut f = SpikeFilter::new(setting, FLOOR);
        let mut chain = settings
            .as_ref()
            .map(|s| ChannelChain::new(&s.effective(Quantity::Strain), None, 0.0));
        let mut events = Vec::new();
        let mut t = 0.0;
        for _ in 0..300 {
            let x = noise.sample();
            f.is_spike(x);
            if let Some(c) = chain.as_mut() {
                c.process(t, x, None, &mut events);
            }
            t += 20.0;
        }
        events.clear();
        let mut rejected = 0;
        let mut alarm_at = None;
        for i in 0..50usize {
            let x = 10.0 + noise.sample();
            let spike = f.is_spike(x);
            if spike && rejected == i {
                rejected += 1;
            }
            if let Some(c) = chain.as_mut() {
                c.process(t, x, None, &mut events);
            }
            if alarm_at.is_none() && !events.is_empty() {
                alarm_at = Some(i);
            }
            t += 20.0;
        }
        step_rejected_max = step_rejected_max.max(rejected);
        step_alarm_in_time &= alarm_at.is_some_and(|i| i <= half);
    }

    let mut ramp_rejected = [0usize; 3];
    for (slot, slope) in ramp_rejected.iter_mut().zip([0.01, 1.0, 3.0]) {
        let mut f = SpikeFilter::new(setting, FLOOR);
        for _ in 0..300 {
            f.is_spike(noise.sample());
        }
        *slot = (0..1000)
            .filter(|&i| f.is_spike(i as f64 * slope + noise.sample()))
            .count();
    }

    Figures {
        kept: kept as f64 / samples as f64,
        std_ratio,
        spikes_rejected: caught as f64 / spikes as f64,
        step_rejected_max,
        step_alarm_in_time,
        ramp_rejected,
    }
}

/// The targets the default must meet (issue "Honest data", item 1).
pub fn meets_targets(setting: Hampel, f: &Figures) -> bool {
    f.kept >= 0.997
        && f.spikes_rejected >= 0.99
        && f.step_rejected_max <= setting.window / 2
        && f.step_alarm_in_time
}
