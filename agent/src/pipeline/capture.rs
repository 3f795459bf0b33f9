//! Capture: the raw waveform of a channel around an alarm (`capture/{dev}`, feed v1.1).
//!
//! A [`Recorder`] keeps a ring of one channel's samples as the node sent them (before the
//! gateway's range check, spike filter, low-pass, zero and temperature compensation). When
//! a threshold or rate alarm of the channel goes `active`, [`Recorder::trigger`] starts a
//! capture over `[trigger - before, trigger + after]`; a further trigger while it runs moves
//! its end to `trigger + after`, but never past `start + max`. Once a sample past the end
//! arrived (or [`Recorder::finish`] is called: the node went silent, the layout changed, a
//! clean stop) the capture becomes [`CapturePart`]s of at most
//! [`CAPTURE_PART_VALUES`] values.
//!
//! A part is a run of samples on one grid (`values[i]` at `t0 + i * period_us`): where the
//! node's samples have a gap (lost frames, a non-finite value), the next part starts with
//! its own `t0`, so a missing sample is never papered over.
//!
//! Memory: the ring holds at most `rate x (max + 1 s)` samples of 16 bytes, and never more
//! than [`MAX_RING`] (1 MiB per channel); a ring that is full drops its oldest sample.
//! No I/O, no clock: the pipeline calls it with the samples' times.

use std::collections::VecDeque;
use std::time::Duration;

use serde::Deserialize;

use crate::feed::{CapturePart, Severity, Trigger, CAPTURE_PART_VALUES};

/// Most samples a channel's ring holds (16 bytes each: 1 MiB).
pub const MAX_RING: usize = 65_536;
/// The longest `max` accepted.
pub const MAX_CAPTURE: Duration = Duration::from_secs(600);
/// How long after a capture's end its samples may still arrive before it is sent with what
/// it has (the node went silent).
pub const CAPTURE_GRACE_MS: f64 = 5_000.0;

/// `capture = { before = "10s", after = "20s", max = "120s" }`, checked while parsing:
/// `before + after <= max <= 600s`, `after >= 1s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawCapture")]
pub struct CaptureSettings {
    before: Duration,
    after: Duration,
    max: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCapture {
    #[serde(
        default,
        deserialize_with = "crate::values::de_opt_duration_in::<_, 0, 600_000>"
    )]
    before: Option<Duration>,
    #[serde(
        default,
        deserialize_with = "crate::values::de_opt_duration_in::<_, 1_000, 600_000>"
    )]
    after: Option<Duration>,
    #[serde(
        default,
        deserialize_with = "crate::values::de_opt_duration_in::<_, 1_000, 600_000>"
    )]
    max: Option<Duration>,
}

/// A `[capture]` section whose durations do not fit together (serde reports its `Display`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaptureSettingsError {
    /// The samples before and after the trigger would not fit in the longest capture.
    #[error(
        "before + after ({}) must not exceed max ({})",
        humantime::format_duration(*.span),
        humantime::format_duration(*.max)
    )]
    SpanOverMax {
        /// `before + after`.
        span: Duration,
        /// `max`.
        max: Duration,
    },
}

impl TryFrom<RawCapture> for CaptureSettings {
    type Error = CaptureSettingsError;
    fn try_from(raw: RawCapture) -> Result<CaptureSettings, CaptureSettingsError> {
        let s = CaptureSettings {
            before: raw.before.unwrap_or(CaptureSettings::DEFAULT.before),
            after: raw.after.unwrap_or(CaptureSettings::DEFAULT.after),
            max: raw.max.unwrap_or(CaptureSettings::DEFAULT.max),
        };
        if s.before + s.after > s.max {
            return Err(CaptureSettingsError::SpanOverMax {
                span: s.before + s.after,
                max: s.max,
            });
        }
        Ok(s)
    }
}

impl CaptureSettings {
    /// `before = "10s"`, `after = "20s"`, `max = "120s"`.
    pub const DEFAULT: CaptureSettings = CaptureSettings {
        before: Duration::from_secs(10),
        after: Duration::from_secs(20),
        max: Duration::from_secs(120),
    };

    /// Samples before the trigger.
    pub fn before(&self) -> Duration {
        self.before
    }
    /// Samples after the (last) trigger.
    pub fn after(&self) -> Duration {
        self.after
    }
    /// The longest capture.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The ring's size for a channel sampled at `rate_hz`.
    pub fn ring_len(&self, rate_hz: u16) -> usize {
        let secs = self.max.as_secs_f64() + 1.0;
        ((f64::from(rate_hz.max(1)) * secs).ceil() as usize).clamp(16, MAX_RING)
    }
}

/// A capture that is running.
#[derive(Debug, Clone)]
struct Running {
    trigger: Trigger,
    zero: f64,
    start: f64,
    end: f64,
}

/// The capture state of one channel.
#[derive(Debug, Clone)]
pub struct Recorder {
    settings: CaptureSettings,
    ring: VecDeque<(f64, f32)>,
    capacity: usize,
    period_ms: f64,
    running: Option<Running>,
}

impl Recorder {
    /// A recorder for a channel sampled at `rate_hz`.
    pub fn new(settings: CaptureSettings, rate_hz: u16) -> Recorder {
        let capacity = settings.ring_len(rate_hz);
        Recorder {
            settings,
            ring: VecDeque::with_capacity(capacity),
            capacity,
            period_ms: 1000.0 / f64::from(rate_hz.max(1)),
            running: None,
        }
    }

    /// The ring's capacity, samples.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Is a capture running?
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// One raw sample at time `t` (ms), of a batch with this period. A non-finite value is
    /// not kept (it shows as a gap between parts).
    pub fn sample(&mut self, t: f64, raw: f32, period_ms: f64) {
        if !raw.is_finite() || !t.is_finite() {
            return;
        }
        if period_ms.is_finite() && period_ms > 0.0 {
            self.period_ms = period_ms;
        }
        if self.ring.len() >= self.capacity {
            self.ring.pop_front();
        }
        self.ring.push_back((t, raw));
    }

    /// A threshold or rate alarm went active on the sample of time `t`: starts a capture
    /// (returns its trigger, its `seq` still unknown) or extends the running one (`None`).
    /// `ts` is the event's `ts`, `zero` the gateway zero in force.
    pub fn trigger(
        &mut self,
        t: f64,
        ts: i64,
        event: &'static str,
        severity: Severity,
        zero: f64,
    ) -> Option<Trigger> {
        let after = self.settings.after.as_secs_f64() * 1000.0;
        if let Some(running) = self.running.as_mut() {
            let limit = running.start + self.settings.max.as_secs_f64() * 1000.0;
            running.end = (t + after).min(limit).max(running.end);
            return None;
        }
        let trigger = Trigger {
            event,
            severity,
            ts,
            seq: None,
        };
        self.running = Some(Running {
            trigger: trigger.clone(),
            zero,
            start: t - self.settings.before.as_secs_f64() * 1000.0,
            end: t + after,
        });
        Some(trigger)
    }

    /// The running capture is complete once a sample later than its end (by more than half a
    /// period) arrived (`t` is the latest sample's time): its parts.
    pub fn due(&mut self, t: f64, ch: &str, u: &'static str) -> Vec<CapturePart> {
        match &self.running {
            Some(r) if t > r.end + self.period_ms / 2.0 => self.finish(ch, u),
            _ => Vec::new(),
        }
    }

    /// The running capture's end has passed by [`CAPTURE_GRACE_MS`] at wall time `now`
    /// without a later sample (the node went silent): its parts, with what arrived.
    pub fn overdue(&mut self, now: f64, ch: &str, u: &'static str) -> Vec<CapturePart> {
        match &self.running {
            Some(r) if now > r.end + CAPTURE_GRACE_MS => self.finish(ch, u),
            _ => Vec::new(),
        }
    }

    /// Ends the running capture now (layout change, clean stop): its parts so far.
    pub fn finish(&mut self, ch: &str, u: &'static str) -> Vec<CapturePart> {
        let Some(r) = self.running.take() else {
            return Vec::new();
        };
        let period = self.period_ms;
        // Runs of samples on one grid within [start, end], give or take half a period: the
        // node-time mapping of successive batches may differ by a fraction of a millisecond,
        // which must not cost the samples at the bounds.
        let tol = period / 2.0;
        let within = |t: f64| t >= r.start - tol && t <= r.end + tol;
        let mut runs: Vec<(f64, Vec<f32>)> = Vec::new();
        let mut expected = f64::NAN;
        for &(t, v) in self.ring.iter().filter(|(t, _)| within(*t)) {
            let on_grid = (t - expected).abs() <= period / 2.0;
            match runs.last_mut() {
                Some((_, values)) if on_grid && values.len() < CAPTURE_PART_VALUES => {
                    values.push(v);
                    expected += period;
                }
                Some((t0, values)) if on_grid => {
                    // A full part: the next one continues the grid.
                    let next_t0 = *t0 + values.len() as f64 * period;
                    runs.push((next_t0, vec![v]));
                    expected += period;
                }
                _ => {
                    runs.push((t, vec![v]));
                    expected = t + period;
                }
            }
        }
        let parts = runs.len() as u32;
        let period_us = (period * 1000.0).round().clamp(1.0, f64::from(u32::MAX)) as u32;
        runs.into_iter()
            .enumerate()
            .map(|(i, (t0, values))| CapturePart {
                ch: ch.to_owned(),
                u,
                trigger: r.trigger.clone(),
                t0,
                period_us,
                zero: r.zero,
                part: i as u32 + 1,
                parts,
                values,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(text: &str) -> Result<CaptureSettings, toml::de::Error> {
        #[derive(Deserialize)]
        struct Doc {
            capture: CaptureSettings,
        }
        toml::from_str::<Doc>(text).map(|d| d.capture)
    }

    fn recorder() -> Recorder {
        let s =
            settings(r#"capture = { before = "2s", after = "3s", max = "8s" }"#).expect("settings");
        Recorder::new(s, 10)
    }

    fn feed(r: &mut Recorder, from: i64, to: i64) {
        for i in from..to {
            r.sample(i as f64 * 100.0, i as f32, 100.0);
        }
    }

    #[test]
    fn settings_are_checked_while_parsing() {
        assert_eq!(
            settings("capture = {}").expect("defaults"),
            CaptureSettings::DEFAULT
        );
        for bad in [
            r#"capture = { before = "100s", after = "30s" }"#,
            r#"capture = { after = "0s" }"#,
            r#"capture = { max = "1h" }"#,
            r#"capture = { before = "ten" }"#,
            r#"capture = { befor = "10s" }"#,
        ] {
            assert!(settings(bad).is_err(), "{bad}");
        }
        let raw = RawCapture {
            before: Some(Duration::from_secs(100)),
            after: Some(Duration::from_secs(30)),
            max: None,
        };
        let e = CaptureSettings::try_from(raw).expect_err("130 s in a 120 s capture");
        assert_eq!(
            e,
            CaptureSettingsError::SpanOverMax {
                span: Duration::from_secs(130),
                max: Duration::from_secs(120)
            }
        );
        let said = settings(r#"capture = { before = "100s", after = "30s" }"#)
            .expect_err("too long")
            .to_string();
        assert!(said.contains(&e.to_string()), "{said}");
        assert!(
            said.contains("before + after (2m 10s) must not exceed max (2m)"),
            "{said}"
        );
        let s = CaptureSettings::DEFAULT;
        assert_eq!(s.ring_len(50), 50 * 121);
        assert_eq!(s.ring_len(10_000), MAX_RING, "bounded whatever the rate");
    }

    #[test]
    fn a_capture_covers_before_to_after_in_parts_on_the_grid() {
        let mut r = recorder();
        feed(&mut r, 0, 100);
        let trigger = r.trigger(9_900.0, 9_900, "threshold", Severity::Major, 0.25);
        assert_eq!(trigger.map(|t| t.ts), Some(9_900));
        feed(&mut r, 100, 129);
        assert!(
            r.due(12_800.0, "tilt_x", "deg").is_empty(),
            "not yet past the end"
        );
        // Samples a fraction of a millisecond off (another batch's time mapping) still count
        // at the bounds.
        for s in r.ring.iter_mut() {
            if s.0 == 7_900.0 {
                s.0 -= 0.4;
            }
            if s.0 == 12_900.0 {
                s.0 += 0.4;
            }
        }
        feed(&mut r, 129, 131);
        let parts = r.due(13_000.0, "tilt_x", "deg");
        assert_eq!(parts.len(), 1);
        let p = &parts[0];
        assert_eq!((p.t0, p.period_us, p.zero), (7_899.6, 100_000, 0.25));
        assert_eq!(p.values.first(), Some(&79.0));
        assert_eq!(p.values.last(), Some(&129.0));
        assert_eq!(p.values.len(), 51);
        assert!(!r.is_running());
    }

    #[test]
    fn a_trigger_during_a_capture_extends_it_up_to_max() {
        let mut r = recorder();
        feed(&mut r, 0, 30);
        assert!(r
            .trigger(2_900.0, 2_900, "threshold", Severity::Minor, 0.0)
            .is_some());
        feed(&mut r, 30, 50);
        assert!(r
            .trigger(4_900.0, 4_900, "threshold", Severity::Major, 0.0)
            .is_none());
        feed(&mut r, 50, 79);
        assert!(r.due(7_800.0, "c", "deg").is_empty(), "extended to 7.9 s");
        assert!(r
            .trigger(7_800.0, 7_800, "rate_of_change", Severity::Major, 0.0)
            .is_none());
        let mut parts = Vec::new();
        for i in 79..200 {
            r.sample(i as f64 * 100.0, i as f32, 100.0);
            parts.extend(r.due(i as f64 * 100.0, "c", "deg"));
        }
        assert_eq!(parts.len(), 1);
        let values: Vec<f32> = parts.iter().flat_map(|p| p.values.clone()).collect();
        // start 0.9 s, max 8 s: the end is capped at 8.9 s.
        assert_eq!(values.first(), Some(&9.0));
        assert_eq!(values.last(), Some(&89.0));
        assert_eq!(
            parts[0].trigger.severity,
            Severity::Minor,
            "the first trigger"
        );
    }

    #[test]
    fn a_gap_starts_a_new_part_and_long_runs_are_cut_at_1024() {
        let s = settings(r#"capture = { before = "10s", after = "20s", max = "120s" }"#)
            .expect("settings");
        let mut r = Recorder::new(s, 100);
        for i in 0..4000i64 {
            if (1500..1510).contains(&i) {
                continue; // ten lost samples
            }
            let v = if i == 2000 { f32::NAN } else { i as f32 };
            r.sample(i as f64 * 10.0, v, 10.0);
        }
        assert!(r
            .trigger(10_000.0, 10_000, "threshold", Severity::Major, 0.0)
            .is_some());
        let parts = r.due(39_990.0, "strain", "ustrain");
        let lens: Vec<usize> = parts.iter().map(|p| p.values.len()).collect();
        // 0..1500 (cut at 1024), 1510..2000, 2001..=3000.
        assert_eq!(lens, vec![1024, 476, 490, 1000]);
        assert_eq!(parts[1].t0, parts[0].t0 + 1024.0 * 10.0);
        assert_eq!(parts[2].t0, 15_100.0);
        assert_eq!(parts[3].t0, 20_010.0);
        assert!(parts.iter().all(|p| p.parts == 4));
        assert_eq!(
            parts.iter().map(|p| p.part).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
    }

    #[test]
    fn a_silent_node_still_gets_its_capture_and_the_ring_is_bounded() {
        let mut r = recorder();
        feed(&mut r, 0, 1000);
        assert_eq!(r.ring.len(), r.capacity());
        assert_eq!(r.capacity(), 90);
        r.trigger(99_900.0, 99_900, "threshold", Severity::Major, 0.0);
        assert!(r.overdue(102_900.0, "c", "deg").is_empty());
        let parts = r.overdue(108_000.0, "c", "deg");
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].values.len(), 21, "2 s before, nothing after");
        assert!(r.finish("c", "deg").is_empty());
    }
}
