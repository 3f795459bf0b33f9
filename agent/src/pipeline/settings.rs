//! Per-channel settings of the filter chain (`[node.channels.<name>]`), and the defaults per
//! quantity that apply where the configuration is silent.
//!
//! ```toml
//! [node.channels.tilt_x]              # key = the channel's feed name
//! spike = { window = 7, k = 4.0 }     # Hampel (the default); spike = false turns it off
//! range = [-5.0, 5.0]
//! alarm = { minor = 0.2, major = 0.5, critical = 1.0, hysteresis = 0.02, for = "2s", relative_to_zero = true }
//! rate = { max_per_hour = 0.1 }
//! capture = { before = "10s", after = "20s", max = "120s" }
//! [node.channels.temperature]
//! deadband = 0.2
//! heartbeat = "5m"
//! min_interval = "10s"                # default: the node's window
//! [node.channels.strain]
//! temp_comp = { channel = "temperature", coeff = 1.8, t0 = 20.0 }
//! ```

use std::time::Duration;

use serde::{Deserialize, Deserializer};
use towerlink_firmware::protocol::Quantity;

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration {text:?} ({e}); write e.g. \"2s\", \"5m\""
        ))
    })
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

/// A `[[node]]` as the pipeline runs it: the source's keys with these settings per channel.
pub type Node = crate::sources::config::NodeConfig<ChannelSettings>;
/// An `[[i2c]]` device as the pipeline runs it.
pub type I2cDevice = crate::sources::config::I2cConfig<ChannelSettings>;

/// `spike = { window, k }` or `spike = false`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum SpikeSetting {
    /// `false` turns spike rejection off (`true` keeps the defaults).
    Enabled(bool),
    /// A Hampel filter.
    Hampel(Hampel),
}

/// Hampel filter parameters.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hampel {
    /// Samples in the rolling window (odd, 3..=31).
    pub window: usize,
    /// How many scaled MADs from the median make a spike.
    pub k: f64,
}

/// `lowpass = { ema = 0.2 }` or `lowpass = { median = 5 }`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum LowPass {
    /// Exponential moving average with this smoothing factor (0 < alpha <= 1).
    Ema(f64),
    /// Moving median of this many samples (odd, 3..=31).
    Median(usize),
}

/// `alarm = { minor, major, critical, hysteresis, for, relative_to_zero }`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlarmSetting {
    /// Yellow limit (on the magnitude).
    #[serde(default)]
    pub minor: Option<f64>,
    /// Orange limit.
    #[serde(default)]
    pub major: Option<f64>,
    /// Red limit.
    #[serde(default)]
    pub critical: Option<f64>,
    /// A level clears only below its limit minus this.
    #[serde(default)]
    pub hysteresis: f64,
    /// A level change must hold this long before it is reported.
    #[serde(default, rename = "for", deserialize_with = "de_duration")]
    pub hold: Duration,
    /// Compare the value after the zero offset (true) or the absolute reading (false).
    #[serde(default = "yes")]
    pub relative_to_zero: bool,
}

fn yes() -> bool {
    true
}

/// `rate = { max_per_hour, over }`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateSetting {
    /// Most change per hour, in the channel's unit.
    pub max_per_hour: f64,
    /// The span the rate is measured over (default 60 s).
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub over: Option<Duration>,
}

/// `temp_comp = { channel, coeff, t0 }`: value - coeff x (T - t0).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TempComp {
    /// Feed name of a temperature channel of the same node.
    pub channel: String,
    /// Unit change per degree Celsius.
    pub coeff: f64,
    /// Reference temperature.
    pub t0: f64,
}

/// `stuck = { window, resolution }` or `stuck = false`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum StuckSetting {
    /// `false` turns the check off.
    Enabled(bool),
    /// The check's parameters.
    Check(StuckCheck),
}

/// A channel is stuck when it does not move beyond `resolution` for `window`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StuckCheck {
    /// How long without change.
    #[serde(deserialize_with = "de_duration")]
    pub window: Duration,
    /// The smallest change that counts (default: the quantity's resolution).
    #[serde(default)]
    pub resolution: Option<f64>,
}

/// `[node.channels.<name>]` as written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelSettings {
    /// Valid range; samples outside are dropped and raise `out_of_range`.
    #[serde(default)]
    pub range: Option<[f64; 2]>,
    /// Spike rejection.
    #[serde(default)]
    pub spike: Option<SpikeSetting>,
    /// Optional smoothing.
    #[serde(default)]
    pub lowpass: Option<LowPass>,
    /// Report by exception: publish when the value moved more than this.
    #[serde(default)]
    pub deadband: Option<f64>,
    /// With a deadband: publish at least this often.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub heartbeat: Option<Duration>,
    /// With a deadband: publish at most this often (default: the device's window); an alarm
    /// of the channel publishes at once.
    #[serde(
        default,
        deserialize_with = "crate::values::de_opt_duration_in::<_, 0, 86_400_000>"
    )]
    pub min_interval: Option<Duration>,
    /// Capture the raw waveform around a threshold or rate alarm.
    #[serde(default)]
    pub capture: Option<super::capture::CaptureSettings>,
    /// Threshold alarms.
    #[serde(default)]
    pub alarm: Option<AlarmSetting>,
    /// Rate-of-change alarm.
    #[serde(default)]
    pub rate: Option<RateSetting>,
    /// Linear temperature compensation.
    #[serde(default)]
    pub temp_comp: Option<TempComp>,
    /// Stuck-sensor check.
    #[serde(default)]
    pub stuck: Option<StuckSetting>,
}

/// The settings in force for one channel: configuration over quantity defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Effective {
    /// Valid range.
    pub range: (f64, f64),
    /// Hampel parameters, if on.
    pub spike: Option<Hampel>,
    /// Smoothing, if any.
    pub lowpass: Option<LowPass>,
    /// Deadband and heartbeat, if the channel reports by exception.
    pub deadband: Option<(f64, Duration)>,
    /// With a deadband: the configured minimum interval between reports (`None`: the
    /// device's window).
    pub min_interval: Option<Duration>,
    /// Capture settings, if the channel captures.
    pub capture: Option<super::capture::CaptureSettings>,
    /// Threshold alarm.
    pub alarm: Option<AlarmSetting>,
    /// Rate alarm: (max per hour, span).
    pub rate: Option<(f64, Duration)>,
    /// Temperature compensation.
    pub temp_comp: Option<TempComp>,
    /// Stuck check: (window, resolution).
    pub stuck: Option<(Duration, f64)>,
    /// Smallest meaningful change (spike MAD floor, stuck resolution).
    pub resolution: f64,
}

// NaN fails every one of these, so a NaN in a setting is refused.
fn is_positive(x: f64) -> bool {
    x > 0.0
}
fn is_non_negative(x: f64) -> bool {
    x >= 0.0
}
fn is_below(a: f64, b: f64) -> bool {
    a < b
}

/// Defaults of a quantity: (range, resolution, deadband for slow channels).
fn quantity_defaults(q: Quantity) -> ((f64, f64), f64, Option<f64>) {
    match q {
        Quantity::Strain => ((-5000.0, 5000.0), 0.5, None),
        Quantity::TiltX | Quantity::TiltY => ((-10.0, 10.0), 0.0005, None),
        Quantity::Acceleration => ((-50.0, 50.0), 0.001, None),
        Quantity::Temperature => ((-40.0, 85.0), 0.05, Some(0.2)),
        Quantity::WindPressure => ((-10_000.0, 10_000.0), 0.5, None),
        Quantity::Displacement => ((-500.0, 500.0), 0.01, None),
    }
}

/// Default Hampel window and k.
pub const DEFAULT_HAMPEL: Hampel = Hampel { window: 7, k: 4.0 };
/// Default heartbeat of a deadband channel.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(300);
/// Default stuck window.
pub const DEFAULT_STUCK_WINDOW: Duration = Duration::from_secs(600);
/// Default span of the rate-of-change measurement.
pub const DEFAULT_RATE_SPAN: Duration = Duration::from_secs(60);

/// A channel setting that parses but makes no sense; [`SettingsError::key`] is its sub-key
/// (`alarm.hysteresis`), the `Display` what is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// `range`.
    #[error("must be [low, high] with low < high")]
    Range,
    /// `spike.window`.
    #[error("must be odd, 3..=31")]
    SpikeWindow,
    /// `spike.k`.
    #[error("must be > 0")]
    SpikeK,
    /// `lowpass.ema`.
    #[error("must be in (0, 1]")]
    Ema,
    /// `lowpass.median`.
    #[error("must be odd, 3..=31")]
    Median,
    /// `deadband`.
    #[error("must be >= 0")]
    Deadband,
    /// `heartbeat`.
    #[error("only applies with a deadband")]
    HeartbeatWithoutDeadband,
    /// `min_interval`.
    #[error("only applies with a deadband")]
    MinIntervalWithoutDeadband,
    /// `min_interval`.
    #[error("must not exceed the heartbeat")]
    MinIntervalOverHeartbeat,
    /// `alarm`.
    #[error("needs at least one of minor, major, critical")]
    AlarmWithoutLimits,
    /// `alarm`.
    #[error("limits must be > 0 and increase from minor to critical")]
    AlarmLimits,
    /// `alarm.hysteresis`.
    #[error("must be >= 0 and below the lowest limit")]
    AlarmHysteresis,
    /// `rate.max_per_hour`.
    #[error("must be > 0")]
    RateMax,
    /// `rate.over`.
    #[error("must be at least 1s")]
    RateOver,
    /// `stuck.window`.
    #[error("must be at least 1s")]
    StuckWindow,
}

impl SettingsError {
    /// The sub-key of the channel's table the rule is about.
    pub fn key(self) -> &'static str {
        match self {
            SettingsError::Range => "range",
            SettingsError::SpikeWindow => "spike.window",
            SettingsError::SpikeK => "spike.k",
            SettingsError::Ema => "lowpass.ema",
            SettingsError::Median => "lowpass.median",
            SettingsError::Deadband => "deadband",
            SettingsError::HeartbeatWithoutDeadband => "heartbeat",
            SettingsError::MinIntervalWithoutDeadband => "min_interval",
            SettingsError::MinIntervalOverHeartbeat => "min_interval",
            SettingsError::AlarmWithoutLimits => "alarm",
            SettingsError::AlarmLimits => "alarm",
            SettingsError::AlarmHysteresis => "alarm.hysteresis",
            SettingsError::RateMax => "rate.max_per_hour",
            SettingsError::RateOver => "rate.over",
            SettingsError::StuckWindow => "stuck.window",
        }
    }
}

impl ChannelSettings {
    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if let Some([lo, hi]) = self.range {
            if !is_below(lo, hi) || !lo.is_finite() || !hi.is_finite() {
                return Err(SettingsError::Range);
            }
        }
        if let Some(SpikeSetting::Hampel(h)) = self.spike {
            if !(3..=31).contains(&h.window) || h.window % 2 == 0 {
                return Err(SettingsError::SpikeWindow);
            }
            if !is_positive(h.k) {
                return Err(SettingsError::SpikeK);
            }
        }
        match self.lowpass {
            Some(LowPass::Ema(a)) if !is_positive(a) || a > 1.0 => return Err(SettingsError::Ema),
            Some(LowPass::Median(n)) if !(3..=31).contains(&n) || n % 2 == 0 => {
                return Err(SettingsError::Median)
            }
            _ => {}
        }
        if let Some(d) = self.deadband {
            if !is_non_negative(d) {
                return Err(SettingsError::Deadband);
            }
        }
        if self.heartbeat.is_some() && self.deadband.is_none() {
            return Err(SettingsError::HeartbeatWithoutDeadband);
        }
        if let Some(min) = self.min_interval {
            if self.deadband.is_none() {
                return Err(SettingsError::MinIntervalWithoutDeadband);
            }
            if min > self.heartbeat.unwrap_or(DEFAULT_HEARTBEAT) {
                return Err(SettingsError::MinIntervalOverHeartbeat);
            }
        }
        if let Some(a) = self.alarm {
            let levels = [a.minor, a.major, a.critical];
            if levels.iter().all(Option::is_none) {
                return Err(SettingsError::AlarmWithoutLimits);
            }
            let set: Vec<f64> = levels.iter().flatten().copied().collect();
            if set.iter().any(|l| !is_positive(*l)) || set.windows(2).any(|w| !is_below(w[0], w[1]))
            {
                return Err(SettingsError::AlarmLimits);
            }
            if !is_non_negative(a.hysteresis)
                || set.first().is_some_and(|first| a.hysteresis >= *first)
            {
                return Err(SettingsError::AlarmHysteresis);
            }
        }
        if let Some(r) = self.rate {
            if !is_positive(r.max_per_hour) {
                return Err(SettingsError::RateMax);
            }
            if r.over.is_some_and(|o| o < Duration::from_secs(1)) {
                return Err(SettingsError::RateOver);
            }
        }
        if let Some(StuckSetting::Check(s)) = self.stuck {
            if s.window < Duration::from_secs(1) {
                return Err(SettingsError::StuckWindow);
            }
        }
        Ok(())
    }

    /// The effective settings for a channel of quantity `q`.
    pub fn effective(&self, q: Quantity) -> Effective {
        let (range, resolution, slow_deadband) = quantity_defaults(q);
        let spike = match self.spike {
            None | Some(SpikeSetting::Enabled(true)) => Some(DEFAULT_HAMPEL),
            Some(SpikeSetting::Enabled(false)) => None,
            Some(SpikeSetting::Hampel(h)) => Some(h),
        };
        let deadband = match (self.deadband, slow_deadband) {
            (Some(d), _) => Some((d, self.heartbeat.unwrap_or(DEFAULT_HEARTBEAT))),
            (None, Some(d)) if self.heartbeat.is_none() => Some((d, DEFAULT_HEARTBEAT)),
            _ => None,
        };
        let stuck = match self.stuck {
            None | Some(StuckSetting::Enabled(true)) => Some((DEFAULT_STUCK_WINDOW, resolution)),
            Some(StuckSetting::Enabled(false)) => None,
            Some(StuckSetting::Check(c)) => Some((c.window, c.resolution.unwrap_or(resolution))),
        };
        Effective {
            range: self.range.map(|[lo, hi]| (lo, hi)).unwrap_or(range),
            spike,
            lowpass: self.lowpass,
            deadband,
            min_interval: self.min_interval,
            capture: self.capture,
            alarm: self.alarm,
            rate: self
                .rate
                .map(|r| (r.max_per_hour, r.over.unwrap_or(DEFAULT_RATE_SPAN))),
            temp_comp: self.temp_comp.clone(),
            stuck,
            resolution,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ChannelSettings {
        toml::from_str(text).expect("settings parse")
    }

    #[test]
    fn the_issue_sketch_parses() {
        let tilt = parse(
            r#"spike = { window = 7, k = 3.0 }
range = [-5.0, 5.0]
alarm = { minor = 0.2, major = 0.5, critical = 1.0, hysteresis = 0.02, for = "2s", relative_to_zero = true }
rate = { max_per_hour = 0.1 }"#,
        );
        assert!(tilt.validate().is_ok());
        let e = tilt.effective(Quantity::TiltX);
        assert_eq!(e.range, (-5.0, 5.0));
        assert_eq!(e.spike, Some(Hampel { window: 7, k: 3.0 }));
        let a = e.alarm.expect("alarm");
        assert_eq!(
            (a.minor, a.major, a.critical, a.hold),
            (Some(0.2), Some(0.5), Some(1.0), Duration::from_secs(2))
        );
        assert_eq!(e.rate, Some((0.1, DEFAULT_RATE_SPAN)));
        let temp = parse("deadband = 0.2\nheartbeat = \"5m\"");
        assert_eq!(
            temp.effective(Quantity::Temperature).deadband,
            Some((0.2, Duration::from_secs(300)))
        );
        let strain = parse("temp_comp = { channel = \"temperature\", coeff = 1.8, t0 = 20.0 }");
        assert_eq!(
            strain
                .effective(Quantity::Strain)
                .temp_comp
                .map(|t| t.coeff),
            Some(1.8)
        );
    }

    #[test]
    fn defaults_per_quantity() {
        let none = ChannelSettings::default();
        assert_eq!(none.effective(Quantity::Strain).spike, Some(DEFAULT_HAMPEL));
        assert_eq!(none.effective(Quantity::Strain).deadband, None);
        assert_eq!(
            none.effective(Quantity::Temperature).deadband,
            Some((0.2, DEFAULT_HEARTBEAT))
        );
        assert!(none.effective(Quantity::TiltX).alarm.is_none());
        assert_eq!(
            parse("spike = false").effective(Quantity::Strain).spike,
            None
        );
        assert_eq!(
            parse("stuck = false").effective(Quantity::Strain).stuck,
            None
        );
    }

    #[test]
    fn nonsense_is_refused_with_the_sub_key() {
        for (text, key) in [
            ("range = [5.0, -5.0]", "range"),
            ("spike = { window = 6, k = 3.0 }", "spike.window"),
            ("lowpass = { ema = 1.5 }", "lowpass.ema"),
            ("heartbeat = \"5m\"", "heartbeat"),
            ("alarm = { minor = 0.5, major = 0.2 }", "alarm"),
            (
                "alarm = { minor = 0.2, hysteresis = 0.3 }",
                "alarm.hysteresis",
            ),
            ("rate = { max_per_hour = 0.0 }", "rate.max_per_hour"),
            ("min_interval = \"5s\"", "min_interval"),
            (
                "deadband = 1.0\nheartbeat = \"10s\"\nmin_interval = \"20s\"",
                "min_interval",
            ),
        ] {
            let err = parse(text).validate().expect_err(text);
            assert_eq!(err.key(), key, "{text}");
        }
        assert_eq!(
            parse("alarm = { minor = 0.2, hysteresis = 0.3 }").validate(),
            Err(SettingsError::AlarmHysteresis)
        );
        assert_eq!(
            parse("min_interval = \"5s\"").validate(),
            Err(SettingsError::MinIntervalWithoutDeadband)
        );
        assert_eq!(
            SettingsError::Range.to_string(),
            "must be [low, high] with low < high"
        );
        assert!(toml::from_str::<ChannelSettings>("spikes = false").is_err());
        assert!(
            toml::from_str::<ChannelSettings>("capture = { before = \"200s\" }").is_err(),
            "before + after over max is refused while parsing"
        );
        let c = parse("capture = { before = \"5s\" }");
        let cap = c.effective(Quantity::TiltX).capture.expect("capture");
        assert_eq!(
            (cap.before(), cap.after(), cap.max()),
            (
                Duration::from_secs(5),
                Duration::from_secs(20),
                Duration::from_secs(120)
            )
        );
    }
}
