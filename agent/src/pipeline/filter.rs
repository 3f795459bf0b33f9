//! Sample filters: spike rejection (Hampel) and optional smoothing (EMA or moving median).
//!
//! The Hampel filter judges each new sample by its deviation from the median of the last
//! `window` samples (itself included). Every raw sample, spike or not, enters the window, so
//! a real step in the signal moves the median within half a window and passes, while an
//! isolated spike never does.
//!
//! A sample is a spike when its deviation exceeds `k` times the channel's noise scale, and the
//! scale is the largest of three estimates:
//! - the **long scale**: 1.4826 x the median of the last [`SCALE_HISTORY`] absolute deviations
//!   from the window median. The window's own MAD is too noisy an estimate on its own: a
//!   7-sample MAD is often well below the true spread, so the classic Hampel filter
//!   (`window = 7, k = 3` on that MAD) drops about 4.5 % of healthy Gaussian samples and
//!   biases `std` low. The long history is stable (about 5 s at 50 Hz), and its median keeps
//!   spikes and steps (anything up to half the history) out of the estimate;
//! - **half the window's MAD scale** ([`WINDOW_SCALE_SHARE`]): on a signal that ramps faster
//!   than the long history can follow, the window's spread grows with the slope, so a moving
//!   signal is not cut into "spikes"; on noise it rarely exceeds the long scale, so it costs
//!   little spike rejection;
//! - the **floor** (the quantity's resolution): a quantised or very quiet signal has MAD 0,
//!   and without the floor any change at all would be called a spike.
//!
//! The deviations of a window that contains its sample are heavier-tailed than Gaussian (the
//! median leans towards the sample), so `k` is not a Gaussian sigma count: the default
//! `k = 4` keeps about 99.8 % of Gaussian samples and rejects every isolated 8-sigma spike.
//! Measured figures for each setting: `cargo bench -p towerlink-agent --bench spike_filter`.

use super::settings::{Hampel, LowPass};

/// Largest window the filters support.
pub const MAX_WINDOW: usize = 31;

/// A fixed ring of the last N samples.
#[derive(Debug, Clone)]
struct Ring {
    buf: [f64; MAX_WINDOW],
    cap: usize,
    len: usize,
    next: usize,
}

impl Ring {
    fn new(cap: usize) -> Ring {
        Ring {
            buf: [0.0; MAX_WINDOW],
            cap: cap.clamp(1, MAX_WINDOW),
            len: 0,
            next: 0,
        }
    }

    fn push(&mut self, x: f64) {
        self.buf[self.next] = x;
        self.next = (self.next + 1) % self.cap;
        self.len = (self.len + 1).min(self.cap);
    }

    fn full(&self) -> bool {
        self.len == self.cap
    }

    fn median(&self, scratch: &mut [f64; MAX_WINDOW]) -> f64 {
        let s = &mut scratch[..self.len];
        s.copy_from_slice(&self.buf[..self.len]);
        median_in_place(s)
    }
}

fn median_in_place(s: &mut [f64]) -> f64 {
    if s.is_empty() {
        return 0.0;
    }
    let mid = s.len() / 2;
    let (_, m, _) = s.select_nth_unstable_by(mid, f64::total_cmp);
    *m
}

/// Absolute deviations the long noise scale is the median of (about 5 s at 50 Hz): long enough
/// for a stable estimate (a 64-sample history misses about 1 % of 8-sigma spikes through its
/// own noise), short enough to follow a change of the noise within seconds.
pub const SCALE_HISTORY: usize = 256;

/// The long scale is recomputed every this many samples once the history is full (it moves
/// slowly by design), so its median costs little per sample; while the history fills it is
/// recomputed at every sample.
pub const SCALE_REFRESH: usize = 16;

/// The share of the window's own MAD scale that counts against the long scale.
pub const WINDOW_SCALE_SHARE: f64 = 0.5;

/// The Hampel spike filter of one channel.
#[derive(Debug, Clone)]
pub struct SpikeFilter {
    ring: Ring,
    k: f64,
    floor: f64,
    /// The last [`SCALE_HISTORY`] absolute deviations from the window median.
    deviations: [f64; SCALE_HISTORY],
    deviations_len: usize,
    deviations_next: usize,
    /// The long scale as last computed, and the samples judged since.
    long_scale: f64,
    since_refresh: usize,
}

impl SpikeFilter {
    /// A filter with these parameters; `floor` is the smallest scale (the resolution).
    pub fn new(params: Hampel, floor: f64) -> SpikeFilter {
        SpikeFilter {
            ring: Ring::new(params.window),
            k: params.k,
            floor,
            deviations: [0.0; SCALE_HISTORY],
            deviations_len: 0,
            deviations_next: 0,
            long_scale: 0.0,
            since_refresh: 0,
        }
    }

    /// Is `x` a spike? It enters the window first, spike or not: judging a sample against a
    /// window that contains it halves the false alarms of a small window on Gaussian noise,
    /// while an isolated spike still cannot move the median or the MAD.
    pub fn is_spike(&mut self, x: f64) -> bool {
        self.ring.push(x);
        if !self.ring.full() {
            return false;
        }
        let mut scratch = [0.0; MAX_WINDOW];
        let med = self.ring.median(&mut scratch);
        let n = self.ring.len;
        for (d, v) in scratch[..n].iter_mut().zip(&self.ring.buf[..n]) {
            *d = (v - med).abs();
        }
        let window_scale = 1.4826 * median_in_place(&mut scratch[..n]);
        let deviation = (x - med).abs();
        self.deviations[self.deviations_next] = deviation;
        self.deviations_next = (self.deviations_next + 1) % SCALE_HISTORY;
        self.deviations_len = (self.deviations_len + 1).min(SCALE_HISTORY);
        self.since_refresh += 1;
        if self.deviations_len < SCALE_HISTORY || self.since_refresh >= SCALE_REFRESH {
            self.since_refresh = 0;
            let mut history = [0.0; SCALE_HISTORY];
            let history = &mut history[..self.deviations_len];
            history.copy_from_slice(&self.deviations[..self.deviations_len]);
            self.long_scale = 1.4826 * median_in_place(history);
        }
        let scale = self
            .long_scale
            .max(WINDOW_SCALE_SHARE * window_scale)
            .max(self.floor);
        deviation > self.k * scale
    }
}

/// Optional smoothing of one channel.
#[derive(Debug, Clone)]
pub enum Smoother {
    /// Exponential moving average.
    Ema {
        /// Smoothing factor.
        alpha: f64,
        /// Current output.
        y: Option<f64>,
    },
    /// Moving median.
    Median(Box<RingMedian>),
}

/// A moving median's state.
#[derive(Debug, Clone)]
pub struct RingMedian {
    ring: Ring,
}

impl Smoother {
    /// The smoother for a setting.
    pub fn new(setting: LowPass) -> Smoother {
        match setting {
            LowPass::Ema(alpha) => Smoother::Ema { alpha, y: None },
            LowPass::Median(n) => Smoother::Median(Box::new(RingMedian { ring: Ring::new(n) })),
        }
    }

    /// Smooths one sample.
    pub fn apply(&mut self, x: f64) -> f64 {
        match self {
            Smoother::Ema { alpha, y } => {
                let next = match *y {
                    Some(prev) => prev + *alpha * (x - prev),
                    None => x,
                };
                *y = Some(next);
                next
            }
            Smoother::Median(m) => {
                m.ring.push(x);
                let mut scratch = [0.0; MAX_WINDOW];
                m.ring.median(&mut scratch)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic standard Gaussian noise (an LCG through Box-Muller).
    fn noise(i: usize) -> f64 {
        let u = |k: u64| {
            let x = k
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        let (u1, u2) = (u(2 * i as u64 + 1), u(2 * i as u64 + 2));
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    #[test]
    fn isolated_spikes_are_caught_and_noise_passes() {
        let mut f = SpikeFilter::new(Hampel { window: 7, k: 3.0 }, 0.01);
        let mut caught = 0;
        let mut false_alarms = 0;
        for i in 0..10_000 {
            let spike = i % 50 == 25;
            let x = 100.0 + noise(i) + if spike { 40.0 } else { 0.0 };
            match (f.is_spike(x), spike) {
                (true, true) => caught += 1,
                (true, false) => false_alarms += 1,
                _ => {}
            }
        }
        assert_eq!(caught, 200);
        // Gaussian noise beyond 3 sigma: 0.27 % of 9 800 healthy samples is about 26.
        assert!(
            false_alarms <= 30,
            "{false_alarms} false spikes in 10 000 samples"
        );
    }

    #[test]
    fn a_real_step_passes_within_half_a_window() {
        let mut f = SpikeFilter::new(Hampel { window: 7, k: 3.0 }, 0.01);
        for i in 0..100 {
            f.is_spike(10.0 + 0.01 * noise(i));
        }
        let rejected = (0..20)
            .filter(|i| f.is_spike(20.0 + 0.01 * noise(*i)))
            .count();
        assert!(
            rejected <= 4,
            "{rejected} samples of a genuine step rejected"
        );
    }

    #[test]
    fn a_flat_signal_does_not_make_every_change_a_spike() {
        let mut f = SpikeFilter::new(Hampel { window: 7, k: 3.0 }, 0.5);
        for _ in 0..20 {
            assert!(!f.is_spike(5.0));
        }
        assert!(!f.is_spike(5.5), "one resolution step is not a spike");
        assert!(f.is_spike(9.0));
    }

    #[test]
    fn smoothers() {
        let mut ema = Smoother::new(LowPass::Ema(0.5));
        assert_eq!(ema.apply(10.0), 10.0);
        assert_eq!(ema.apply(20.0), 15.0);
        let mut med = Smoother::new(LowPass::Median(3));
        let out: Vec<f64> = [1.0, 100.0, 2.0, 3.0]
            .iter()
            .map(|&x| med.apply(x))
            .collect();
        // While the window fills, the median of what there is; once it holds three samples
        // the spike no longer shows.
        assert_eq!(out, vec![1.0, 100.0, 2.0, 3.0]);
    }
}
