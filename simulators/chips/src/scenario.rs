//! A simulated tower described in TOML: the seed, the panels (nodes) and their scripted faults.
//!
//! Everything a run produces follows from the file: each panel's model is seeded from the
//! scenario seed and the panel's node id (so adding a panel leaves the others unchanged), and
//! fault times are seconds of simulated time since the start.
//!
//! ```toml
//! seed = 20260301          # required
//! start_hour = 8.0         # local time of day at t = 0 (default 8.0)
//! wind_scale = 1.0         # multiplies every panel's wind response (default 1.0)
//!
//! [[panels]]
//! name = "panel-n12"       # unique, non-empty
//! node = 12                # unique node id (u32)
//! base_strain_ue = 140.0   # optional overrides of the panel defaults
//! base_tilt_x_deg = 0.02
//! base_tilt_y_deg = -0.01
//!
//! [[panels.faults]]        # zero or more per panel
//! kind = "spikes"          # slow_tilt | spikes | stuck | offline | noisy
//! at_s = 30.0              # start, s (required)
//! until_s = 90.0           # end, s (optional: forever)
//! channel = "strain"       # strain | tilt_x | tilt_y | temperature
//! rate_per_s = 0.5
//! magnitude = 400.0        # in the channel's unit
//! ```
//!
//! Fields per kind (others are rejected):
//! - `slow_tilt`: `axis` ("x" | "y"), `rate_deg_per_hour`;
//! - `spikes`: `channel`, `rate_per_s` (> 0), `magnitude`;
//! - `stuck`, `offline`: `chip` ("nau7802"/"strain" | "adxl355"/"tilt") or a `channel`
//!   (meaning the chip that measures it);
//! - `noisy`: `factor` (≥ 0), optional `channel` (default: all channels).
//!
//! [`Scenario::from_toml_str`] parses with the `toml` crate (errors name the line and key)
//! and validates; the types are plain serde, so any deserializer works if followed by
//! [`Scenario::validate`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::noise;
use crate::panel::{Axis, Channel, Chip, Fault, PanelModel, PanelParams, ScheduledFault};

/// The longest time a scenario may name, s (about 31 years): keeps µs within u64.
const MAX_TIME_S: f64 = 1e9;

/// A simulated tower.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Seed of every random process in the tower.
    pub seed: u64,
    /// Local time of day at t = 0, hours (drives the daily temperature cycle).
    #[serde(default = "default_start_hour")]
    pub start_hour: f64,
    /// Multiplier of every panel's wind response (1 = mild wind).
    #[serde(default = "default_wind_scale")]
    pub wind_scale: f64,
    /// The panels, one sensor node each.
    pub panels: Vec<PanelSpec>,
}

/// One panel and its node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PanelSpec {
    /// Sensor-point name, e.g. `panel-n12`.
    pub name: String,
    /// The node id on the wire.
    pub node: u32,
    /// Strain at rest, µε (default [`PanelParams::default`]'s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_strain_ue: Option<f64>,
    /// Tilt about X at rest, degrees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_tilt_x_deg: Option<f64>,
    /// Tilt about Y at rest, degrees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_tilt_y_deg: Option<f64>,
    /// Scripted faults.
    #[serde(default)]
    pub faults: Vec<FaultSpec>,
}

/// The kinds of [`FaultSpec`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// [`Fault::SlowTilt`].
    SlowTilt,
    /// [`Fault::Spikes`].
    Spikes,
    /// [`Fault::Stuck`].
    Stuck,
    /// [`Fault::Offline`].
    Offline,
    /// [`Fault::Noisy`].
    Noisy,
}

impl FaultKind {
    fn name(self) -> &'static str {
        match self {
            FaultKind::SlowTilt => "slow_tilt",
            FaultKind::Spikes => "spikes",
            FaultKind::Stuck => "stuck",
            FaultKind::Offline => "offline",
            FaultKind::Noisy => "noisy",
        }
    }
}

/// A scripted fault as written in the file: `kind`, times, and the fields that kind needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// What goes wrong.
    pub kind: FaultKind,
    /// Start, s of simulated time.
    pub at_s: f64,
    /// End, s of simulated time (none: forever).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_s: Option<f64>,
    /// Channel (spikes, noisy; or stuck/offline meaning its chip).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<Channel>,
    /// Chip (stuck, offline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chip: Option<Chip>,
    /// Tilt axis (slow_tilt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub axis: Option<Axis>,
    /// Creep rate, degrees per hour (slow_tilt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_deg_per_hour: Option<f64>,
    /// Spike rate, per second (spikes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_s: Option<f64>,
    /// Spike height in the channel's unit (spikes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub magnitude: Option<f64>,
    /// Noise multiplier (noisy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
}

/// Why a scenario was rejected.
#[derive(Debug, Clone, PartialEq)]
pub enum ScenarioError {
    /// The text is not valid (subset) TOML or does not have the scenario's shape; the message
    /// names the line or the field path.
    Parse(String),
    /// A value is out of range or inconsistent.
    Invalid {
        /// Where, e.g. `panels[1] (panel-n12).faults[0]`.
        path: String,
        /// What is wrong.
        message: String,
    },
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScenarioError::Parse(message) => write!(f, "scenario: {message}"),
            ScenarioError::Invalid { path, message } => write!(f, "scenario: {path}: {message}"),
        }
    }
}

impl std::error::Error for ScenarioError {}

fn default_start_hour() -> f64 {
    PanelParams::default().start_hour
}

fn default_wind_scale() -> f64 {
    1.0
}

impl Scenario {
    /// Parse and validate a scenario file.
    pub fn from_toml_str(text: &str) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario = toml::from_str(text)
            .map_err(|e| ScenarioError::Parse(e.to_string().trim_end().to_owned()))?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Check ranges and consistency: at least one panel, unique non-empty names, unique node
    /// ids, finite numbers, and every fault complete and sensible.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let invalid = |path: &str, message: String| ScenarioError::Invalid {
            path: path.to_string(),
            message,
        };
        if !(0.0..24.0).contains(&self.start_hour) {
            return Err(invalid(
                "start_hour",
                format!("{} is not in 0..24", self.start_hour),
            ));
        }
        if !(self.wind_scale.is_finite() && self.wind_scale >= 0.0) {
            return Err(invalid(
                "wind_scale",
                format!("{} is not a finite number ≥ 0", self.wind_scale),
            ));
        }
        if self.panels.is_empty() {
            return Err(invalid(
                "panels",
                "a scenario needs at least one panel".into(),
            ));
        }
        for (i, panel) in self.panels.iter().enumerate() {
            let path = format!("panels[{i}] ({})", panel.name);
            if panel.name.trim().is_empty() {
                return Err(invalid(&path, "name is empty".into()));
            }
            if let Some(other) = self.panels[..i].iter().find(|p| p.name == panel.name) {
                return Err(invalid(
                    &path,
                    format!("name is also used by node {}", other.node),
                ));
            }
            if let Some(other) = self.panels[..i].iter().find(|p| p.node == panel.node) {
                return Err(invalid(
                    &path,
                    format!("node {} is also used by {}", panel.node, other.name),
                ));
            }
            for (field, value) in [
                ("base_strain_ue", panel.base_strain_ue),
                ("base_tilt_x_deg", panel.base_tilt_x_deg),
                ("base_tilt_y_deg", panel.base_tilt_y_deg),
            ] {
                if value.is_some_and(|v| !v.is_finite()) {
                    return Err(invalid(&path, format!("{field} is not finite")));
                }
            }
            for (j, fault) in panel.faults.iter().enumerate() {
                fault
                    .to_scheduled()
                    .map_err(|message| invalid(&format!("{path}.faults[{j}]"), message))?;
            }
        }
        Ok(())
    }

    /// The physical parameters of `panel` in this scenario.
    pub fn panel_params(&self, panel: &PanelSpec) -> PanelParams {
        let mut params = PanelParams {
            start_hour: self.start_hour,
            ..PanelParams::default()
        };
        params.wind_strain_ue *= self.wind_scale;
        params.wind_tilt_deg *= self.wind_scale;
        params.vibration_ms2 *= self.wind_scale;
        if let Some(v) = panel.base_strain_ue {
            params.base_strain_ue = v;
        }
        if let Some(v) = panel.base_tilt_x_deg {
            params.base_tilt_x_deg = v;
        }
        if let Some(v) = panel.base_tilt_y_deg {
            params.base_tilt_y_deg = v;
        }
        params
    }

    /// The seed of `panel`'s model: a hash of the scenario seed and the node id.
    pub fn panel_seed(&self, panel: &PanelSpec) -> u64 {
        noise::hash(&[self.seed, u64::from(panel.node)])
    }

    /// The deterministic model of `panel`.
    pub fn panel_model(&self, panel: &PanelSpec) -> Result<PanelModel, ScenarioError> {
        let faults = panel
            .faults
            .iter()
            .enumerate()
            .map(|(j, f)| {
                f.to_scheduled().map_err(|message| ScenarioError::Invalid {
                    path: format!("{}.faults[{j}]", panel.name),
                    message,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PanelModel::new(
            self.panel_seed(panel),
            self.panel_params(panel),
            faults,
        ))
    }
}

impl FaultSpec {
    /// The fault this entry describes, or what is missing or wrong in it.
    pub fn to_scheduled(&self) -> Result<ScheduledFault, String> {
        let kind = self.kind.name();
        let start_us = seconds_to_us("at_s", self.at_s)?;
        let end_us = match self.until_s {
            None => None,
            Some(until) => {
                let end = seconds_to_us("until_s", until)?;
                if end <= start_us {
                    return Err(format!(
                        "until_s ({until}) must be after at_s ({})",
                        self.at_s
                    ));
                }
                Some(end)
            }
        };
        let allowed: &[&str] = match self.kind {
            FaultKind::SlowTilt => &["axis", "rate_deg_per_hour"],
            FaultKind::Spikes => &["channel", "rate_per_s", "magnitude"],
            FaultKind::Stuck | FaultKind::Offline => &["chip", "channel"],
            FaultKind::Noisy => &["channel", "factor"],
        };
        let present = [
            ("channel", self.channel.is_some()),
            ("chip", self.chip.is_some()),
            ("axis", self.axis.is_some()),
            ("rate_deg_per_hour", self.rate_deg_per_hour.is_some()),
            ("rate_per_s", self.rate_per_s.is_some()),
            ("magnitude", self.magnitude.is_some()),
            ("factor", self.factor.is_some()),
        ];
        if let Some((field, _)) = present.iter().find(|(f, set)| *set && !allowed.contains(f)) {
            return Err(format!("`{field}` does not apply to a {kind} fault"));
        }
        let need = |field: &str, value: Option<f64>| -> Result<f64, String> {
            match value {
                None => Err(format!("a {kind} fault needs `{field}`")),
                Some(v) if !v.is_finite() => Err(format!("`{field}` is not finite")),
                Some(v) => Ok(v),
            }
        };
        let fault = match self.kind {
            FaultKind::SlowTilt => Fault::SlowTilt {
                axis: self
                    .axis
                    .ok_or_else(|| format!("a {kind} fault needs `axis`"))?,
                rate_deg_per_hour: need("rate_deg_per_hour", self.rate_deg_per_hour)?,
            },
            FaultKind::Spikes => {
                let rate_per_s = need("rate_per_s", self.rate_per_s)?;
                if rate_per_s <= 0.0 {
                    return Err(format!("rate_per_s ({rate_per_s}) must be > 0"));
                }
                Fault::Spikes {
                    channel: self
                        .channel
                        .ok_or_else(|| format!("a {kind} fault needs `channel`"))?,
                    rate_per_s,
                    magnitude: need("magnitude", self.magnitude)?,
                }
            }
            FaultKind::Stuck | FaultKind::Offline => {
                let chip = match (self.chip, self.channel) {
                    (Some(chip), None) => chip,
                    (None, Some(channel)) => channel.chip(),
                    (Some(_), Some(_)) => {
                        return Err(format!(
                            "a {kind} fault takes `chip` or `channel`, not both"
                        ))
                    }
                    (None, None) => {
                        return Err(format!("a {kind} fault needs `chip` (or `channel`)"))
                    }
                };
                if self.kind == FaultKind::Stuck {
                    Fault::Stuck { chip }
                } else {
                    Fault::Offline { chip }
                }
            }
            FaultKind::Noisy => {
                let factor = need("factor", self.factor)?;
                if factor < 0.0 {
                    return Err(format!("factor ({factor}) must be ≥ 0"));
                }
                Fault::Noisy {
                    channel: self.channel,
                    factor,
                }
            }
        };
        Ok(ScheduledFault {
            start_us,
            end_us,
            fault,
        })
    }
}

fn seconds_to_us(field: &str, seconds: f64) -> Result<u64, String> {
    if !(seconds.is_finite() && (0.0..=MAX_TIME_S).contains(&seconds)) {
        return Err(format!(
            "{field} ({seconds}) must be a number of seconds in 0..={MAX_TIME_S}"
        ));
    }
    Ok((seconds * 1e6).round() as u64)
}
