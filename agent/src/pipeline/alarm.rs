//! Alarm rules on a channel's filtered value: threshold levels, rate of change, stuck sensor,
//! out of range. Each is a small state machine fed with (time, value) and returning the
//! transitions to publish; none of them does I/O.
//!
//! A channel's `threshold` event carries the channel's alarm level: `active` with severity S
//! means "the channel is now at level S" (going up, or coming down to a lower level that still
//! holds), `cleared` means "no level holds any more". So every level change is exactly one
//! event, and the platform's case for the channel always shows the current level.

use std::collections::VecDeque;

use crate::feed::{EventState, Severity};

/// A transition to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// Event name.
    pub event: &'static str,
    /// Severity.
    pub severity: Severity,
    /// Active or cleared.
    pub state: EventState,
    /// When the condition started.
    pub since: f64,
    /// The value that caused it.
    pub value: f64,
    /// The limit concerned.
    pub limit: Option<f64>,
    /// The level the channel left (threshold events).
    pub previous: Option<Severity>,
}

/// Threshold levels with hysteresis and a hold time.
#[derive(Debug, Clone)]
pub struct ThresholdAlarm {
    /// (severity, limit), ascending.
    levels: Vec<(Severity, f64)>,
    hysteresis: f64,
    hold_ms: f64,
    /// Index into `levels` of the current level.
    level: Option<usize>,
    level_since: f64,
    pending: Option<(Option<usize>, f64)>,
}

impl ThresholdAlarm {
    /// An alarm with these limits (any may be absent), hysteresis and hold time.
    pub fn new(
        minor: Option<f64>,
        major: Option<f64>,
        critical: Option<f64>,
        hysteresis: f64,
        hold_ms: f64,
    ) -> ThresholdAlarm {
        let levels = [
            (Severity::Minor, minor),
            (Severity::Major, major),
            (Severity::Critical, critical),
        ]
        .into_iter()
        .filter_map(|(s, l)| l.map(|l| (s, l)))
        .collect();
        ThresholdAlarm {
            levels,
            hysteresis,
            hold_ms,
            level: None,
            level_since: 0.0,
            pending: None,
        }
    }

    /// The current level.
    pub fn level(&self) -> Option<Severity> {
        self.level.map(|i| self.levels[i].0)
    }

    fn target(&self, v: f64) -> Option<usize> {
        let m = v.abs();
        let up = self.levels.iter().rposition(|(_, l)| m >= *l);
        match (up, self.level) {
            (Some(u), Some(cur)) if u >= cur => Some(u),
            (_, Some(cur)) => (0..=cur)
                .rev()
                .find(|&i| m >= self.levels[i].1 - self.hysteresis),
            (u, None) => u,
        }
    }

    /// Feeds one value at time `t` (ms).
    pub fn update(&mut self, t: f64, v: f64) -> Option<Transition> {
        let target = self.target(v);
        if target == self.level {
            self.pending = None;
            return None;
        }
        let since = match self.pending {
            Some((p, since)) if p == target => since,
            _ => {
                self.pending = Some((target, t));
                t
            }
        };
        if t - since < self.hold_ms {
            return None;
        }
        self.pending = None;
        let previous = self.level.map(|i| self.levels[i].0);
        let transition = match target {
            Some(i) => {
                let (severity, limit) = self.levels[i];
                self.level_since = since;
                Transition {
                    event: "threshold",
                    severity,
                    state: EventState::Active,
                    since,
                    value: v,
                    limit: Some(limit),
                    previous,
                }
            }
            None => {
                let (severity, limit) = self.levels[self.level.unwrap_or(0)];
                Transition {
                    event: "threshold",
                    severity,
                    state: EventState::Cleared,
                    since: self.level_since,
                    value: v,
                    limit: Some(limit),
                    previous,
                }
            }
        };
        self.level = target;
        Some(transition)
    }
}

/// Rate of change, as the least-squares slope of one-second means over a span.
#[derive(Debug, Clone)]
pub struct RateAlarm {
    max_per_hour: f64,
    span_ms: f64,
    bucket: Option<(i64, f64, u32)>,
    points: VecDeque<(f64, f64)>,
    active_since: Option<f64>,
}

impl RateAlarm {
    /// Alarms when |slope| > `max_per_hour` over `span_ms`.
    pub fn new(max_per_hour: f64, span_ms: f64) -> RateAlarm {
        RateAlarm {
            max_per_hour,
            span_ms,
            bucket: None,
            points: VecDeque::new(),
            active_since: None,
        }
    }

    fn slope_per_hour(&self) -> Option<f64> {
        let n = self.points.len();
        // Judge only over at least half the span (and three points): a slope over a few
        // seconds of a quiet signal is mostly noise.
        let covered = match (self.points.front(), self.points.back()) {
            (Some(a), Some(b)) => b.0 - a.0,
            _ => 0.0,
        };
        if n < 3 || covered < self.span_ms / 2.0 {
            return None;
        }
        let (st, sv) = self
            .points
            .iter()
            .fold((0.0, 0.0), |(a, b), (t, v)| (a + t, b + v));
        let (mt, mv) = (st / n as f64, sv / n as f64);
        let (mut num, mut den) = (0.0, 0.0);
        for (t, v) in &self.points {
            num += (t - mt) * (v - mv);
            den += (t - mt) * (t - mt);
        }
        (den > 0.0).then(|| num / den * 3_600_000.0)
    }

    /// Feeds one value at time `t` (ms).
    pub fn update(&mut self, t: f64, v: f64) -> Option<Transition> {
        let second = (t / 1000.0).floor() as i64;
        match &mut self.bucket {
            Some((s, sum, n)) if *s == second => {
                *sum += v;
                *n += 1;
                return None;
            }
            _ => {}
        }
        let done = self.bucket.replace((second, v, 1));
        let (s, sum, n) = done?;
        self.points
            .push_back((s as f64 * 1000.0 + 500.0, sum / f64::from(n)));
        while self
            .points
            .front()
            .is_some_and(|(pt, _)| t - pt > self.span_ms)
        {
            self.points.pop_front();
        }
        let rate = self.slope_per_hour()?;
        match self.active_since {
            None if rate.abs() > self.max_per_hour => {
                self.active_since = Some(t);
                Some(Transition {
                    event: "rate_of_change",
                    severity: Severity::Major,
                    state: EventState::Active,
                    since: t,
                    value: rate,
                    limit: Some(self.max_per_hour),
                    previous: None,
                })
            }
            Some(since) if rate.abs() <= 0.9 * self.max_per_hour => {
                self.active_since = None;
                Some(Transition {
                    event: "rate_of_change",
                    severity: Severity::Major,
                    state: EventState::Cleared,
                    since,
                    value: rate,
                    limit: Some(self.max_per_hour),
                    previous: None,
                })
            }
            _ => None,
        }
    }
}

/// A sensor whose value does not move beyond its resolution for a window.
#[derive(Debug, Clone)]
pub struct StuckCheck {
    window_ms: f64,
    resolution: f64,
    reference: Option<(f64, f64)>,
    active: bool,
}

impl StuckCheck {
    /// Stuck after `window_ms` without a change larger than `resolution`.
    pub fn new(window_ms: f64, resolution: f64) -> StuckCheck {
        StuckCheck {
            window_ms,
            resolution,
            reference: None,
            active: false,
        }
    }

    /// Feeds one raw value at time `t` (ms).
    pub fn update(&mut self, t: f64, v: f64) -> Option<Transition> {
        match self.reference {
            Some((rv, since)) if (v - rv).abs() <= self.resolution => {
                if !self.active && t - since >= self.window_ms {
                    self.active = true;
                    return Some(Transition {
                        event: "sensor_stuck",
                        severity: Severity::Major,
                        state: EventState::Active,
                        since,
                        value: v,
                        limit: None,
                        previous: None,
                    });
                }
                None
            }
            previous => {
                self.reference = Some((v, t));
                if self.active {
                    self.active = false;
                    let since = previous.map(|(_, s)| s).unwrap_or(t);
                    return Some(Transition {
                        event: "sensor_stuck",
                        severity: Severity::Major,
                        state: EventState::Cleared,
                        since,
                        value: v,
                        limit: None,
                        previous: None,
                    });
                }
                None
            }
        }
    }
}

/// Samples outside the valid range: active at the first, cleared after a second without any.
#[derive(Debug, Clone)]
pub struct RangeCheck {
    low: f64,
    high: f64,
    active_since: Option<f64>,
    last_out: f64,
}

/// How long a channel must stay in range before `out_of_range` clears.
const RANGE_QUIET_MS: f64 = 1000.0;

impl RangeCheck {
    /// Valid values are `low..=high`.
    pub fn new(low: f64, high: f64) -> RangeCheck {
        RangeCheck {
            low,
            high,
            active_since: None,
            last_out: 0.0,
        }
    }

    /// Is `v` valid? Also returns the transition to publish, if any.
    pub fn check(&mut self, t: f64, v: f64) -> (bool, Option<Transition>) {
        let valid = v.is_finite() && v >= self.low && v <= self.high;
        if !valid {
            self.last_out = t;
            let limit = if v < self.low { self.low } else { self.high };
            if self.active_since.is_none() {
                self.active_since = Some(t);
                return (
                    false,
                    Some(Transition {
                        event: "out_of_range",
                        severity: Severity::Major,
                        state: EventState::Active,
                        since: t,
                        value: v,
                        limit: Some(limit),
                        previous: None,
                    }),
                );
            }
            return (false, None);
        }
        if let Some(since) = self.active_since {
            if t - self.last_out >= RANGE_QUIET_MS {
                self.active_since = None;
                return (
                    true,
                    Some(Transition {
                        event: "out_of_range",
                        severity: Severity::Major,
                        state: EventState::Cleared,
                        since,
                        value: v,
                        limit: None,
                        previous: None,
                    }),
                );
            }
        }
        (true, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(
        alarm: &mut ThresholdAlarm,
        from: f64,
        to: f64,
        steps: usize,
        t0: f64,
        dt: f64,
    ) -> (Vec<Transition>, f64) {
        let mut out = Vec::new();
        let mut t = t0;
        for i in 0..=steps {
            let v = from + (to - from) * i as f64 / steps as f64;
            out.extend(alarm.update(t, v));
            t += dt;
        }
        (out, t)
    }

    #[test]
    fn levels_up_and_down_one_event_each_in_order() {
        let mut a = ThresholdAlarm::new(Some(0.2), Some(0.5), Some(1.0), 0.02, 2000.0);
        let (up, t) = ramp(&mut a, 0.0, 1.2, 1200, 0.0, 100.0);
        let (down, _) = ramp(&mut a, 1.2, 0.0, 1200, t, 100.0);
        let seen: Vec<(Severity, EventState)> = up
            .iter()
            .chain(&down)
            .map(|t| (t.severity, t.state))
            .collect();
        use EventState::*;
        use Severity::*;
        assert_eq!(
            seen,
            vec![
                (Minor, Active),
                (Major, Active),
                (Critical, Active),
                (Major, Active),
                (Minor, Active),
                (Minor, Cleared)
            ]
        );
        // Hold time: minor went active 2 s after the value first reached 0.2.
        assert!((up[0].since - 20_000.0).abs() < 1.0 && up[0].value >= 0.2);
    }

    #[test]
    fn a_short_excursion_shorter_than_the_hold_raises_nothing() {
        let mut a = ThresholdAlarm::new(Some(0.2), None, None, 0.0, 2000.0);
        let mut out = Vec::new();
        for i in 0..100 {
            let v = if (30..45).contains(&i) { 0.3 } else { 0.1 };
            out.extend(a.update(i as f64 * 100.0, v));
        }
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn hysteresis_keeps_a_level_near_its_limit() {
        let mut a = ThresholdAlarm::new(Some(0.2), None, None, 0.05, 0.0);
        let mut out = Vec::new();
        for (i, v) in [0.21, 0.19, 0.16, 0.21, 0.19, 0.14].iter().enumerate() {
            out.extend(a.update(i as f64, *v));
        }
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[1].state, EventState::Cleared);
        assert_eq!(out[1].value, 0.14);
    }

    #[test]
    fn negative_values_alarm_on_their_magnitude() {
        let mut a = ThresholdAlarm::new(None, Some(0.5), None, 0.0, 0.0);
        assert_eq!(
            a.update(0.0, -0.6).map(|t| t.severity),
            Some(Severity::Major)
        );
    }

    #[test]
    fn a_fast_tilt_raises_the_rate_alarm_and_a_still_one_clears_it() {
        let mut r = RateAlarm::new(0.1, 60_000.0);
        let mut out = Vec::new();
        // 10 Hz, 0.5 deg/h for two minutes, then still for two minutes.
        for i in 0..2400 {
            let t = i as f64 * 100.0;
            let v = 0.5 * (t.min(120_000.0) / 3_600_000.0) + 0.0003 * ((i as f64 * 7.3).sin());
            out.extend(r.update(t, v));
        }
        assert_eq!(
            out.iter().map(|t| t.state).collect::<Vec<_>>(),
            vec![EventState::Active, EventState::Cleared]
        );
        assert!((out[0].value - 0.5).abs() < 0.1, "{}", out[0].value);
    }

    #[test]
    fn noise_alone_raises_no_rate_alarm() {
        let mut r = RateAlarm::new(0.1, 60_000.0);
        let n = (0..36_000)
            .filter_map(|i| {
                r.update(
                    i as f64 * 100.0,
                    0.001 * ((i as f64 * 12.9898).sin() * 43_758.5).fract(),
                )
            })
            .count();
        assert_eq!(n, 0);
    }

    #[test]
    fn stuck_after_the_window_and_free_again_on_change() {
        let mut s = StuckCheck::new(3000.0, 0.01);
        let mut out = Vec::new();
        for i in 0..50 {
            out.extend(s.update(i as f64 * 100.0, 5.0));
        }
        out.extend(s.update(5000.0, 5.5));
        assert_eq!(
            out.iter().map(|t| t.state).collect::<Vec<_>>(),
            vec![EventState::Active, EventState::Cleared]
        );
        assert_eq!(out[0].since, 0.0);
    }

    #[test]
    fn out_of_range_drops_and_clears_after_a_quiet_second() {
        let mut r = RangeCheck::new(-5.0, 5.0);
        assert!(matches!(
            r.check(0.0, 7.0),
            (
                false,
                Some(Transition {
                    state: EventState::Active,
                    ..
                })
            )
        ));
        assert!(matches!(r.check(100.0, 9.0), (false, None)));
        assert!(matches!(r.check(500.0, 1.0), (true, None)));
        assert!(matches!(
            r.check(1100.0, 1.0),
            (
                true,
                Some(Transition {
                    state: EventState::Cleared,
                    ..
                })
            )
        ));
        assert!(!r.check(1200.0, f64::NAN).0);
    }
}
