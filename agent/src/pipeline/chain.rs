//! The filter chain of one channel, in order:
//!
//! 1. stuck check on the raw value (a stuck chip repeats its last code exactly);
//! 2. range check: samples outside the valid range are dropped (`out_of_range`);
//! 3. spike rejection (Hampel): spikes are dropped and never reach an alarm or a window;
//! 4. optional smoothing (EMA or moving median);
//! 5. zero offset (set by the `zero` command, persisted) and linear temperature compensation
//!    from a temperature channel of the same node;
//! 6. alarms on the compensated value: threshold levels and rate of change.
//!
//! What comes out goes to the channel's fixed windows or, for report-by-exception channels,
//! to its [`Deadband`] reporter.

use super::alarm::{RangeCheck, RateAlarm, StuckCheck, ThresholdAlarm, Transition};
use super::filter::{Smoother, SpikeFilter};
use super::settings::Effective;
use super::window::RunningStats;

/// Counters of one channel's chain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChainCounters {
    /// Samples dropped as spikes.
    pub spikes: u64,
    /// Samples dropped as out of range.
    pub out_of_range: u64,
}

/// The chain state of one channel.
#[derive(Debug, Clone)]
pub struct ChannelChain {
    range: RangeCheck,
    spike: Option<SpikeFilter>,
    smoother: Option<Smoother>,
    threshold: Option<ThresholdAlarm>,
    relative_to_zero: bool,
    rate: Option<RateAlarm>,
    stuck: Option<StuckCheck>,
    temp_comp: Option<(usize, f64, f64)>,
    /// Zero offset subtracted from the filtered value.
    pub zero: f64,
    /// Last filtered value before the zero (what a gateway-side zero takes).
    pub last_filtered: Option<f64>,
    /// Last value out of the chain.
    pub last_output: Option<f64>,
    /// Counters.
    pub counters: ChainCounters,
}

impl ChannelChain {
    /// A chain with these settings; `temp_slot` is the slot of the compensation channel.
    pub fn new(eff: &Effective, temp_slot: Option<usize>, zero: f64) -> ChannelChain {
        ChannelChain {
            range: RangeCheck::new(eff.range.0, eff.range.1),
            spike: eff.spike.map(|h| SpikeFilter::new(h, eff.resolution)),
            smoother: eff.lowpass.map(Smoother::new),
            threshold: eff.alarm.map(|a| {
                ThresholdAlarm::new(
                    a.minor,
                    a.major,
                    a.critical,
                    a.hysteresis,
                    a.hold.as_secs_f64() * 1000.0,
                )
            }),
            relative_to_zero: eff.alarm.is_none_or(|a| a.relative_to_zero),
            rate: eff
                .rate
                .map(|(max, span)| RateAlarm::new(max, span.as_secs_f64() * 1000.0)),
            stuck: eff
                .stuck
                .map(|(w, r)| StuckCheck::new(w.as_secs_f64() * 1000.0, r)),
            temp_comp: temp_slot
                .zip(eff.temp_comp.as_ref())
                .map(|(slot, tc)| (slot, tc.coeff, tc.t0)),
            zero,
            last_filtered: None,
            last_output: None,
            counters: ChainCounters::default(),
        }
    }

    /// The slot whose value compensates this channel, if any.
    pub fn temp_slot(&self) -> Option<usize> {
        self.temp_comp.map(|(slot, _, _)| slot)
    }

    /// Runs one raw sample at time `t` (ms) through the chain; `temperature` is the latest
    /// value of the compensation channel. Returns the value for the windows, or `None` if the
    /// sample was dropped; transitions to publish are appended to `events`.
    pub fn process(
        &mut self,
        t: f64,
        raw: f64,
        temperature: Option<f64>,
        events: &mut Vec<Transition>,
    ) -> Option<f64> {
        if let Some(stuck) = self.stuck.as_mut() {
            events.extend(stuck.update(t, raw));
        }
        let (valid, transition) = self.range.check(t, raw);
        events.extend(transition);
        if !valid {
            self.counters.out_of_range += 1;
            return None;
        }
        if self.spike.as_mut().is_some_and(|f| f.is_spike(raw)) {
            self.counters.spikes += 1;
            return None;
        }
        let filtered = match self.smoother.as_mut() {
            Some(s) => s.apply(raw),
            None => raw,
        };
        self.last_filtered = Some(filtered);
        let mut value = filtered - self.zero;
        if let (Some((_, coeff, t0)), Some(temp)) = (self.temp_comp, temperature) {
            value -= coeff * (temp - t0);
        }
        if let Some(th) = self.threshold.as_mut() {
            let judged = if self.relative_to_zero {
                value
            } else {
                value + self.zero
            };
            events.extend(th.update(t, judged));
        }
        if let Some(rate) = self.rate.as_mut() {
            events.extend(rate.update(t, value));
        }
        self.last_output = Some(value);
        Some(value)
    }
}

/// Report by exception: a message when the value moved more than the band since the last
/// report, or when the heartbeat is due; each report carries the statistics since the last.
///
/// A channel that moves beyond its band on every sample must not flood the feed: a move is
/// reported at most once per `min_interval` (what happened meanwhile is in the report's
/// statistics: n, min, max). An alarm of the channel is never held back: [`Deadband::add`]
/// with `alarm` reports at once. [`Deadband::flush`] hands over what is pending (a clean
/// stop).
#[derive(Debug, Clone)]
pub struct Deadband {
    band: f64,
    heartbeat_ms: f64,
    min_interval_ms: f64,
    stats: RunningStats,
    since: Option<f64>,
    last: f64,
    /// A value since the last report moved beyond the band.
    moved: bool,
    reported: Option<(f64, f64)>,
}

/// One report of a deadband channel: `(start, end, statistics)`.
pub type DeadbandReport = (f64, f64, RunningStats);

impl Deadband {
    /// A reporter with this band, heartbeat and minimum interval.
    pub fn new(band: f64, heartbeat_ms: f64, min_interval_ms: f64) -> Deadband {
        Deadband {
            band,
            heartbeat_ms,
            min_interval_ms: min_interval_ms.min(heartbeat_ms),
            stats: RunningStats::default(),
            since: None,
            last: 0.0,
            moved: false,
            reported: None,
        }
    }

    /// Adds a value; returns `(start, end, stats)` when a report is due. `alarm`: the value
    /// changed an alarm of the channel (reported at once, whatever the interval).
    pub fn add(&mut self, t: f64, v: f64, alarm: bool) -> Option<DeadbandReport> {
        self.stats.extend(&[v as f32]);
        self.since.get_or_insert(t);
        self.last = t;
        let due = match self.reported {
            None => true,
            Some((value, at)) => {
                self.moved |= (v - value).abs() > self.band;
                let since = t - at;
                alarm || (self.moved && since >= self.min_interval_ms) || since >= self.heartbeat_ms
            }
        };
        if !due {
            return None;
        }
        self.reported = Some((v, t));
        self.take()
    }

    /// What is pending (a clean stop): the statistics since the last report, if any.
    pub fn flush(&mut self) -> Option<DeadbandReport> {
        if self.stats.n() == 0 {
            return None;
        }
        self.take()
    }

    fn take(&mut self) -> Option<DeadbandReport> {
        let start = self.since.take()?;
        self.moved = false;
        Some((start, self.last, std::mem::take(&mut self.stats)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::{EventState, Severity};
    use crate::pipeline::settings::ChannelSettings;
    use towerlink_firmware::protocol::Quantity;

    fn chain(toml_text: &str, q: Quantity) -> ChannelChain {
        let s: ChannelSettings = toml::from_str(toml_text).expect("settings");
        ChannelChain::new(&s.effective(q), Some(9), 0.0)
    }

    #[test]
    fn a_spike_never_raises_an_alarm_and_never_reaches_the_window() {
        let mut c = chain("alarm = { minor = 0.2 }", Quantity::TiltX);
        let mut events = Vec::new();
        let mut passed = Vec::new();
        for i in 0..200 {
            let spike = i % 20 == 10;
            let v = 0.01 + 0.0005 * ((i as f64) * 1.7).sin() + if spike { 3.0 } else { 0.0 };
            if let Some(out) = c.process(i as f64 * 100.0, v, None, &mut events) {
                passed.push(out);
            }
        }
        assert!(events.is_empty(), "{events:?}");
        assert_eq!(c.counters.spikes, 10);
        assert!(passed.iter().all(|v| *v < 0.1));
    }

    #[test]
    fn zero_and_temperature_compensation() {
        let mut c = chain(
            "spike = false\ntemp_comp = { channel = \"temperature\", coeff = 1.8, t0 = 20.0 }",
            Quantity::Strain,
        );
        c.zero = 100.0;
        let mut ev = Vec::new();
        let out = c.process(0.0, 150.0, Some(25.0), &mut ev).expect("passes");
        assert!((out - (150.0 - 100.0 - 1.8 * 5.0)).abs() < 1e-9);
        assert_eq!(c.last_filtered, Some(150.0));
    }

    #[test]
    fn absolute_alarms_ignore_the_zero() {
        let mut c = chain(
            "spike = false\nalarm = { major = 100.0, relative_to_zero = false }",
            Quantity::Strain,
        );
        c.zero = 80.0;
        let mut ev = Vec::new();
        c.process(0.0, 120.0, None, &mut ev);
        assert_eq!(
            ev.first().map(|t| (t.severity, t.state)),
            Some((Severity::Major, EventState::Active))
        );
    }

    #[test]
    fn out_of_range_samples_are_dropped_and_reported() {
        let mut c = chain("range = [-1.0, 1.0]", Quantity::TiltY);
        let mut ev = Vec::new();
        assert!(c.process(0.0, 2.0, None, &mut ev).is_none());
        assert_eq!(ev[0].event, "out_of_range");
        assert_eq!(c.counters.out_of_range, 1);
    }

    #[test]
    fn deadband_reports_moves_and_heartbeats() {
        let mut d = Deadband::new(0.2, 10_000.0, 0.0);
        assert!(
            d.add(0.0, 20.0, false).is_some(),
            "the first value is reported"
        );
        assert!(d.add(1000.0, 20.1, false).is_none());
        let (start, end, stats) = d
            .add(2000.0, 20.3, false)
            .expect("moved by more than the band");
        assert_eq!((start, end, stats.n()), (1000.0, 2000.0, 2));
        assert!(d.add(11_000.0, 20.35, false).is_none());
        assert!(d.add(12_000.0, 20.35, false).is_some(), "heartbeat");
        assert!(d.flush().is_none(), "nothing pending");
        assert!(d.add(13_000.0, 20.36, false).is_none());
        let (start, end, stats) = d.flush().expect("pending statistics");
        assert_eq!((start, end, stats.n()), (13_000.0, 13_000.0, 1));
    }

    #[test]
    fn a_channel_moving_every_sample_reports_once_per_min_interval_but_alarms_at_once() {
        let mut d = Deadband::new(0.1, 300_000.0, 10_000.0);
        let mut reports = Vec::new();
        // 50 Hz, a move of 1.0 per sample for 60 s.
        for i in 0..3000 {
            let t = i as f64 * 20.0;
            reports.extend(d.add(t, i as f64, false).map(|r| (r.0, r.1, r.2.n())));
        }
        // The first value, then one per 10 s.
        assert_eq!(reports.len(), 6, "{reports:?}");
        assert_eq!(reports[1], (20.0, 10_000.0, 500));
        // Nothing is lost: every sample is in exactly one report.
        let pending = d.flush().map(|r| r.2.n()).unwrap_or(0);
        assert_eq!(reports.iter().map(|r| r.2).sum::<u64>() + pending, 3000);
        let mut d = Deadband::new(0.1, 300_000.0, 10_000.0);
        assert!(d.add(0.0, 0.0, false).is_some());
        assert!(
            d.add(20.0, 5.0, false).is_none(),
            "held: within min_interval"
        );
        assert!(
            d.add(40.0, 9.0, true).is_some(),
            "an alarm is never held back"
        );
    }
}
