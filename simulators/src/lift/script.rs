//! Fault scripts for the simulated lift bus: timed steps read from TOML.
//!
//! ```toml
//! [[step]]
//! at = "20s"            # time since the bus started
//! unit = 2
//! action = "trapped"    # a fault, a comm fault, "call", "fault_code", "mode", "occupied"
//! on = true             # faults: on (default) or off
//! # floor = 5           # call
//! # code = 41           # fault_code
//! # mode = 3            # mode (omit for normal)
//! # rate = 0.3          # comm faults: share of answers affected (default 1)
//! ```

use std::time::Duration;

use serde::Deserialize;
use towerlink_agent::feed::LiftMode;

use super::model::Fault;

/// What goes wrong with answers on the line (per unit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CommFault {
    /// No answer at all.
    Silent,
    /// The answer's CRC is wrong.
    CorruptCrc,
    /// The answer carries another unit id.
    WrongUnit,
    /// Only the first part of the answer is sent.
    Truncated,
    /// Random bytes before the answer.
    Noise,
}

/// One thing a script (or a test) does to the bus.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Action {
    /// A lift fault on or off.
    Fault(Fault, bool),
    /// A comm fault on a share of the answers (0 = off).
    Comm(CommFault, f64),
    /// A call to a floor.
    Call(i16),
    /// The controller's fault code.
    FaultCode(u16),
    /// The service mode (`None`: normal).
    Mode(Option<LiftMode>),
    /// Someone in the car or not.
    Occupied(bool),
}

/// A step: an action at a time, on a unit.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Since the bus started.
    pub at: Duration,
    /// Unit id.
    pub unit: u8,
    /// What happens.
    pub action: Action,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepFile {
    at: String,
    unit: u8,
    action: String,
    #[serde(default = "yes")]
    on: bool,
    floor: Option<i16>,
    code: Option<u16>,
    mode: Option<u16>,
    rate: Option<f64>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptFile {
    #[serde(default)]
    step: Vec<StepFile>,
}

/// Parses a mode number of the generic profile.
pub fn mode_from_u16(mode: u16) -> Option<LiftMode> {
    Some(match mode {
        1 => LiftMode::Inspection,
        2 => LiftMode::FireService,
        3 => LiftMode::OutOfService,
        4 => LiftMode::Independent,
        5 => LiftMode::EmergencyPower,
        _ => return None,
    })
}

/// Parses a script; steps come back sorted by time.
pub fn parse(text: &str) -> Result<Vec<Step>, String> {
    let file: ScriptFile = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut steps = Vec::new();
    for (i, s) in file.step.into_iter().enumerate() {
        let at = humantime::parse_duration(&s.at)
            .map_err(|e| format!("step[{i}].at: {:?}: {e}", s.at))?;
        let need = |v: Option<i64>, key: &str| {
            v.ok_or_else(|| format!("step[{i}]: action {:?} needs {key}", s.action))
        };
        let rate = if s.on { s.rate.unwrap_or(1.0) } else { 0.0 };
        let action = match s.action.as_str() {
            "trapped" => Action::Fault(Fault::Trapped, s.on),
            "door_open_while_moving" => Action::Fault(Fault::DoorOpenWhileMoving, s.on),
            "overspeed" => Action::Fault(Fault::Overspeed, s.on),
            "overtravel" => Action::Fault(Fault::Overtravel, s.on),
            "power_failure" => Action::Fault(Fault::PowerFailure, s.on),
            "safety_open" => Action::Fault(Fault::SafetyOpen, s.on),
            "alarm_button" => Action::Fault(Fault::AlarmButton, s.on),
            "overload" => Action::Fault(Fault::Overload, s.on),
            "silent" => Action::Comm(CommFault::Silent, rate),
            "corrupt_crc" => Action::Comm(CommFault::CorruptCrc, rate),
            "wrong_unit" => Action::Comm(CommFault::WrongUnit, rate),
            "truncated" => Action::Comm(CommFault::Truncated, rate),
            "noise" => Action::Comm(CommFault::Noise, rate),
            "call" => Action::Call(need(s.floor.map(i64::from), "floor")? as i16),
            "fault_code" => Action::FaultCode(need(s.code.map(i64::from), "code")? as u16),
            "mode" => Action::Mode(s.mode.and_then(mode_from_u16)),
            "occupied" => Action::Occupied(s.on),
            other => return Err(format!("step[{i}].action: unknown action {other:?}")),
        };
        steps.push(Step {
            at,
            unit: s.unit,
            action,
        });
    }
    steps.sort_by_key(|s| s.at);
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_steps_in_time_order() {
        let steps = parse(
            "[[step]]\nat = \"5s\"\nunit = 2\naction = \"call\"\nfloor = 4\n\
             [[step]]\nat = \"1s\"\nunit = 1\naction = \"noise\"\nrate = 0.5\n\
             [[step]]\nat = \"2s\"\nunit = 1\naction = \"trapped\"\non = false\n",
        )
        .expect("script");
        assert_eq!(
            steps.iter().map(|s| s.action).collect::<Vec<_>>(),
            vec![
                Action::Comm(CommFault::Noise, 0.5),
                Action::Fault(Fault::Trapped, false),
                Action::Call(4)
            ]
        );
        assert!(
            parse("[[step]]\nat = \"1s\"\nunit = 1\naction = \"call\"\n")
                .expect_err("no floor")
                .contains("floor")
        );
        assert!(parse("[[step]]\nat = \"1s\"\nunit = 1\naction = \"write\"\n").is_err());
    }
}
