//! Fixed telemetry windows: running statistics per channel, windows aligned to wall-clock time.
//!
//! Windows of width `W` start at multiples of `W` since the epoch (10 s windows start at :00,
//! :10, ...), so windows of every gateway in the city line up. A window is closed `grace`
//! after its end, because nodes batch samples and deliver them up to a second late; a sample
//! for a window already closed is counted as late and dropped rather than reopening it.

use std::collections::BTreeMap;

use crate::feed::{ChannelWindow, UnixMillis};

/// Running mean/variance (Welford), min, max and last of one channel in one window.
#[derive(Debug, Clone, PartialEq)]
pub struct RunningStats {
    n: u64,
    mean: f64,
    m2: f64,
    min: f32,
    max: f32,
    last: f32,
}

impl Default for RunningStats {
    fn default() -> Self {
        RunningStats {
            n: 0,
            mean: 0.0,
            m2: 0.0,
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            last: 0.0,
        }
    }
}

impl RunningStats {
    /// Adds consecutive values (in time order).
    pub fn extend(&mut self, values: &[f32]) {
        for &v in values {
            self.n += 1;
            let x = f64::from(v);
            let delta = x - self.mean;
            self.mean += delta / self.n as f64;
            self.m2 += delta * (x - self.mean);
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
        if let Some(&v) = values.last() {
            self.last = v;
        }
    }

    /// Number of values.
    pub fn n(&self) -> u64 {
        self.n
    }

    /// The window's statistics in feed form (population standard deviation), with the
    /// `expected` sample count of the window (see [`expected_samples`]).
    pub fn to_window(&self, unit: &'static str, expected: u64) -> ChannelWindow {
        let var = if self.n > 0 {
            (self.m2 / self.n as f64).max(0.0)
        } else {
            0.0
        };
        ChannelWindow {
            u: unit,
            n: self.n,
            expected,
            mean: self.mean as f32,
            min: self.min,
            max: self.max,
            last: self.last,
            std: var.sqrt() as f32,
        }
    }
}

/// The samples a channel sampled at `rate_hz` promises over `[start, end)`, rounded down
/// (the feed's `expected`: `n < expected` is data the gateway did not get or did not keep).
pub fn expected_samples(rate_hz: u16, start: UnixMillis, end: UnixMillis) -> u64 {
    let span = u64::try_from(end.saturating_sub(start)).unwrap_or(0);
    u64::from(rate_hz).saturating_mul(span) / 1000
}

/// One closed window of one device: statistics per channel slot.
#[derive(Debug, Clone, PartialEq)]
pub struct ClosedWindow {
    /// Window start.
    pub start: UnixMillis,
    /// Window end (exclusive).
    pub end: UnixMillis,
    /// Statistics by channel slot (only slots with samples).
    pub channels: Vec<(usize, RunningStats)>,
}

/// The open windows of one device.
#[derive(Debug, Clone)]
pub struct DeviceWindows {
    width: i64,
    grace: i64,
    slots: usize,
    open: BTreeMap<i64, Vec<RunningStats>>,
    /// Every window that starts before this is closed.
    closed_until: i64,
    /// No window starts before this (after a step of the wall clock, the first window starts
    /// at the step's target and ends at the next aligned boundary).
    floor: i64,
    late: u64,
}

impl DeviceWindows {
    /// Windows of `width_ms`, closed `grace_ms` after their end, for `slots` channels.
    pub fn new(width_ms: i64, grace_ms: i64, slots: usize) -> DeviceWindows {
        DeviceWindows {
            width: width_ms.max(1),
            grace: grace_ms.max(0),
            slots,
            open: BTreeMap::new(),
            closed_until: i64::MIN,
            floor: i64::MIN,
            late: 0,
        }
    }

    /// Samples dropped because their window had already closed.
    pub fn late_samples(&self) -> u64 {
        self.late
    }

    /// Aligned window start of time `t` (ms).
    fn aligned(&self, t: f64) -> i64 {
        (t / self.width as f64).floor() as i64 * self.width
    }

    /// Window start of time `t` (ms): the aligned start, or the floor for the window the
    /// floor falls in.
    fn start_of(&self, t: f64) -> i64 {
        let aligned = self.aligned(t);
        if aligned < self.floor && t >= self.floor as f64 {
            self.floor
        } else {
            aligned
        }
    }

    /// End (exclusive) of the window that starts at `start` (a stretch before the floor ends
    /// at the floor).
    fn end_of(&self, start: i64) -> i64 {
        let end = self.aligned(start as f64) + self.width;
        if start < self.floor {
            end.min(self.floor)
        } else {
            end
        }
    }

    /// The wall clock stepped to `target`: windows start afresh there (the open ones must
    /// have been closed first), and nothing dated before `target` is taken any more.
    pub fn restart_at(&mut self, target: UnixMillis) {
        self.open.clear();
        self.floor = target;
        self.closed_until = target;
    }

    /// Adds `values` of channel `slot`, the first at wall time `t0` ms, `period` ms apart.
    pub fn add(&mut self, slot: usize, t0: f64, period: f64, values: &[f32]) {
        if slot >= self.slots {
            return;
        }
        let mut i = 0;
        while i < values.len() {
            let t = t0 + i as f64 * period;
            let start = self.start_of(t);
            let end = self.end_of(start);
            // How many of the following values still fall in [start, end)?
            let run = if period > 0.0 {
                let k = ((end as f64 - t0) / period).ceil();
                (k.max(i as f64 + 1.0) as usize).min(values.len()) - i
            } else {
                values.len() - i
            };
            let chunk = &values[i..i + run];
            if start < self.closed_until {
                self.late += chunk.len() as u64;
            } else {
                let slots = self.slots;
                let window = self
                    .open
                    .entry(start)
                    .or_insert_with(|| vec![RunningStats::default(); slots]);
                window[slot].extend(chunk);
            }
            i += run;
        }
    }

    /// Adds one value of channel `slot` at wall time `t` ms.
    pub fn add_one(&mut self, slot: usize, t: f64, value: f32) {
        if slot >= self.slots {
            return;
        }
        let start = self.start_of(t);
        if start < self.closed_until {
            self.late += 1;
            return;
        }
        let slots = self.slots;
        let window = self
            .open
            .entry(start)
            .or_insert_with(|| vec![RunningStats::default(); slots]);
        window[slot].extend(&[value]);
    }

    /// Closes and returns every window whose end + grace is at or before `now`.
    pub fn close_due(&mut self, now: UnixMillis) -> Vec<ClosedWindow> {
        let mut out = Vec::new();
        while let Some((&start, _)) = self.open.first_key_value() {
            if self.end_of(start) + self.grace > now {
                break;
            }
            if let Some(w) = self.close_first() {
                out.push(w);
            }
        }
        // Nothing may be added to a window that could have closed already.
        let boundary = self.start_of((now - self.grace) as f64);
        self.closed_until = self.closed_until.max(boundary);
        out
    }

    /// Closes every open window (the node's channels changed).
    pub fn close_all(&mut self) -> Vec<ClosedWindow> {
        let mut out = Vec::new();
        while let Some(w) = self.close_first() {
            out.push(w);
        }
        out
    }

    /// Closes every open window at `now` (clean shutdown): a window that has not ended yet
    /// ends at `now`, so no window is stamped in the future.
    pub fn close_all_at(&mut self, now: UnixMillis) -> Vec<ClosedWindow> {
        let mut out = self.close_all();
        for w in &mut out {
            w.end = w.end.min(now).max(w.start + 1);
        }
        out
    }

    fn close_first(&mut self) -> Option<ClosedWindow> {
        let (start, stats) = self.open.pop_first()?;
        let end = self.end_of(start);
        self.closed_until = self.closed_until.max(end);
        let channels = stats
            .into_iter()
            .enumerate()
            .filter(|(_, s)| s.n() > 0)
            .collect();
        Some(ClosedWindow {
            start,
            end,
            channels,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_clean_stop_ends_the_open_window_now_not_in_the_future() {
        let mut w = DeviceWindows::new(10_000, 2_000, 1);
        w.add_one(0, 1_000.0, 1.0);
        w.add_one(0, 12_000.0, 2.0);
        let closed = w.close_all_at(13_500);
        let spans: Vec<(i64, i64)> = closed.iter().map(|c| (c.start, c.end)).collect();
        assert_eq!(spans, vec![(0, 10_000), (10_000, 13_500)]);
    }

    #[test]
    fn statistics_of_a_known_series() {
        let mut s = RunningStats::default();
        s.extend(&[2.0, 4.0, 4.0, 4.0]);
        s.extend(&[5.0, 5.0, 7.0, 9.0]);
        let w = s.to_window("mm", 0);
        assert_eq!(
            (w.n, w.mean, w.min, w.max, w.last, w.std),
            (8, 5.0, 2.0, 9.0, 9.0, 2.0)
        );
    }

    #[test]
    fn samples_split_at_window_boundaries() {
        let mut w = DeviceWindows::new(1000, 500, 1);
        // 10 values at 100 ms from t=500: 5 in [0,1000), 5 in [1000,2000).
        w.add(0, 500.0, 100.0, &[1.0; 10]);
        assert!(
            w.close_due(1400).is_empty(),
            "window [0,1000) closes at 1500"
        );
        let closed = w.close_due(1500);
        assert_eq!(closed.len(), 1);
        assert_eq!((closed[0].start, closed[0].end), (0, 1000));
        assert_eq!(closed[0].channels[0].1.n(), 5);
        let closed = w.close_due(2500);
        assert_eq!(closed[0].channels[0].1.n(), 5);
    }

    #[test]
    fn late_samples_are_counted_not_reopened() {
        let mut w = DeviceWindows::new(1000, 0, 1);
        w.add(0, 100.0, 10.0, &[1.0]);
        assert_eq!(w.close_due(1000).len(), 1);
        w.add(0, 900.0, 10.0, &[2.0, 3.0]);
        assert_eq!(w.late_samples(), 2);
        assert!(w.close_all().is_empty());
    }

    #[test]
    fn expected_is_the_rate_over_the_span_rounded_down() {
        assert_eq!(expected_samples(50, 0, 10_000), 500);
        assert_eq!(expected_samples(10, 0, 199), 1);
        assert_eq!(expected_samples(3, 1_000, 1_333), 0);
        assert_eq!(
            expected_samples(50, 1_000, 0),
            0,
            "an empty span promises nothing"
        );
    }

    #[test]
    fn after_a_step_the_first_window_starts_at_the_target() {
        let mut w = DeviceWindows::new(1000, 0, 1);
        w.add(0, 100.0, 10.0, &[1.0]);
        assert_eq!(w.close_all().len(), 1);
        // The clock stepped back to 10_400: nothing before it, the first window is [10_400, 11_000).
        w.restart_at(10_400);
        w.add(0, 10_390.0, 10.0, &[9.0, 2.0, 3.0]);
        assert_eq!(w.late_samples(), 1, "the sample before the target is late");
        w.add(0, 11_000.0, 10.0, &[4.0]);
        let closed = w.close_due(12_000);
        assert_eq!(
            closed.iter().map(|c| (c.start, c.end)).collect::<Vec<_>>(),
            vec![(10_400, 11_000), (11_000, 12_000)]
        );
        assert_eq!(closed[0].channels[0].1.n(), 2);
    }

    proptest! {
        /// However samples are batched, every value lands in exactly one window and the
        /// per-window statistics equal those of a direct computation.
        #[test]
        fn windows_partition_the_samples(
            values in proptest::collection::vec(-1000.0f32..1000.0, 1..400),
            batch in 1usize..40,
            period in 1u32..200,
            width in 100i64..3000,
            offset in 0u32..5000,
        ) {
            let period = f64::from(period);
            let mut w = DeviceWindows::new(width, 0, 1);
            for (b, chunk) in values.chunks(batch).enumerate() {
                let t0 = f64::from(offset) + (b * batch) as f64 * period;
                w.add(0, t0, period, chunk);
            }
            let closed = w.close_all();
            let total: u64 = closed.iter().map(|c| c.channels.iter().map(|(_, s)| s.n()).sum::<u64>()).sum();
            prop_assert_eq!(total, values.len() as u64);
            for c in &closed {
                let inside: Vec<f32> = values.iter().enumerate()
                    .filter(|(i, _)| {
                        let t = f64::from(offset) + *i as f64 * period;
                        t >= c.start as f64 && t < c.end as f64
                    })
                    .map(|(_, v)| *v).collect();
                let s = &c.channels[0].1;
                prop_assert_eq!(s.n(), inside.len() as u64);
                let win = s.to_window("x", 0);
                let mean = inside.iter().map(|v| f64::from(*v)).sum::<f64>() / inside.len() as f64;
                prop_assert!((f64::from(win.mean) - mean).abs() < 1e-2);
                prop_assert_eq!(win.min, inside.iter().copied().fold(f32::INFINITY, f32::min));
                prop_assert_eq!(win.last, *inside.last().unwrap_or(&0.0));
            }
        }
    }
}
