//! Lift controller profiles: register maps as TOML files (`config/profiles/<name>.toml`).
//!
//! Controllers differ in register addresses, 32-bit word order and fault codes, so the map is
//! data, not code. A profile describes ONE block of input registers, read with one
//! "read input registers" request (function 0x04), where each field of the generic profile
//! of `docs/lift-modbus.md` lives, and optionally names the controller's fault
//! codes. It cannot describe anything else: there is no key for a function code other than
//! 0x04, for a holding register or for a value to write, and a profile that tries (a
//! `function` other than 4, an unknown key) is refused when the configuration loads.
//!
//! A profile is found by name in `<config dir>/profiles/`, then `/etc/towerlink/profiles/`,
//! then among the profiles built into the agent (`generic`, `nice-monitor`); a value with a
//! `/` or ending in `.toml` is a path (relative to the config file's directory).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::feed::{LiftDirection, LiftDoor, LiftMode};

/// The only Modbus function a profile may use: read input registers.
pub const READ_INPUT_REGISTERS: u8 = 0x04;
/// Most registers one 0x04 request may read (Modbus application protocol, 6.4).
pub const MAX_REGISTERS_PER_READ: u16 = 125;

/// Where installed profiles live besides the config file's own `profiles/`.
pub const SYSTEM_PROFILE_DIR: &str = "/etc/towerlink/profiles";

/// Profiles built into the agent, so the shipped ones work without installed files.
const BUILT_IN: [(&str, &str); 2] = [
    (
        "generic",
        include_str!("../../config/profiles/generic.toml"),
    ),
    (
        "nice-monitor",
        include_str!("../../config/profiles/nice-monitor.toml"),
    ),
];

/// How a 32-bit value is spread over two registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WordOrder {
    /// High word at the lower address (the generic profile, "big-endian words").
    HighFirst,
    /// Low word at the lower address.
    LowFirst,
}

/// Register address of each field (absolute, as sent in the request).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterMap {
    /// u16 mode (0 normal .. 5 emergency power).
    pub mode: u16,
    /// i16 floor.
    pub floor: u16,
    /// u16 direction (0 stopped, 1 up, 2 down).
    pub direction: u16,
    /// u16 door (0 closed, 1 opening, 2 open, 3 closing).
    pub door: u16,
    /// u16 flags (bit layout of the generic profile).
    pub flags: u16,
    /// u16 speed, mm/s.
    pub speed: u16,
    /// u16 load, %.
    pub load: u16,
    /// u16 fault code.
    pub fault_code: u16,
    /// u32 position, mm (two registers).
    pub position: u16,
    /// u32 run count (two registers).
    pub run_count: u16,
    /// u32 door cycles (two registers).
    pub door_cycles: u16,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    name: String,
    #[serde(default)]
    description: String,
    /// Accepted only as a (redundant) statement of the one function allowed.
    #[serde(default)]
    function: Option<i64>,
    start: u16,
    count: u16,
    word_order: WordOrder,
    registers: RegisterMap,
    #[serde(default)]
    fault_codes: BTreeMap<String, String>,
}

/// A validated register map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// The profile's name.
    pub name: String,
    /// What it is for.
    pub description: String,
    /// First input register of the block.
    pub start: u16,
    /// Registers in the block (1..=125).
    pub count: u16,
    /// Word order of u32 fields.
    pub word_order: WordOrder,
    /// Where each field is.
    pub registers: RegisterMap,
    /// Names of the controller's fault codes.
    pub fault_names: BTreeMap<u16, String>,
}

/// Flag bits of the `flags` register (generic profile).
pub mod flag {
    /// Car running.
    pub const RUNNING: u16 = 1 << 0;
    /// In a door zone (levelled).
    pub const DOOR_ZONE: u16 = 1 << 1;
    /// Car occupied.
    pub const OCCUPIED: u16 = 1 << 2;
    /// Main power ok.
    pub const MAIN_POWER_OK: u16 = 1 << 3;
    /// Safety circuit closed.
    pub const SAFETY_CLOSED: u16 = 1 << 4;
    /// Door lock closed.
    pub const DOOR_LOCK_CLOSED: u16 = 1 << 5;
    /// Alarm button pressed.
    pub const ALARM_BUTTON: u16 = 1 << 6;
    /// Overload.
    pub const OVERLOAD: u16 = 1 << 7;
}

/// The car as one answer of its controller describes it (the lift source's reading, decoded
/// by the profile). The pipeline maps it to the feed's `lift` payload
/// ([`crate::feed::LiftStatus`]); the enumerations are the ones the lift Modbus profile and
/// the feed share (same values, same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CarStatus {
    /// Service mode (register `mode`).
    pub mode: LiftMode,
    /// Current floor (basements negative).
    pub floor: i16,
    /// Travel direction.
    pub direction: LiftDirection,
    /// Door state.
    pub door: LiftDoor,
    /// Car running (flag bit 0).
    pub running: bool,
    /// Car levelled in a door zone (flag bit 1).
    pub door_zone: bool,
    /// Car occupied (flag bit 2).
    pub occupied: bool,
    /// Car speed, mm/s.
    pub speed_mm_s: u16,
    /// Car load, % of rated.
    pub load_pct: u16,
    /// Car position above the pit, mm.
    pub position_mm: u32,
    /// The controller's fault code (0 = none).
    pub fault_code: u16,
    /// Trips since commissioning.
    pub run_count: u32,
    /// Door open/close cycles.
    pub door_cycles: u32,
}

/// One decoded answer: the car's status plus the flags only the event rules need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiftReading {
    /// The car's status.
    pub status: CarStatus,
    /// Main power ok.
    pub main_power_ok: bool,
    /// Safety circuit closed.
    pub safety_closed: bool,
    /// Door lock closed.
    pub door_lock_closed: bool,
    /// Alarm button pressed.
    pub alarm_button: bool,
    /// Overload flag.
    pub overload: bool,
}

/// An answer whose values the profile does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer registers than the profile reads.
    #[error("answer has {got} registers, the profile reads {want}")]
    Short {
        /// Registers received.
        got: usize,
        /// Registers expected.
        want: usize,
    },
    /// An enumerated field out of range.
    #[error("{field} = {value} is not a known value")]
    Value {
        /// The field.
        field: &'static str,
        /// Its raw value.
        value: u16,
    },
}

/// Why a profile could not be loaded: the text is not TOML of a profile, a rule of the
/// profile is broken, or the file cannot be found or read.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// Not a profile's TOML (syntax, an unknown key, a wrong type).
    #[error("profile {origin}: {message}")]
    Syntax {
        /// Where the text came from (a path, `built-in <name>`).
        origin: String,
        /// The TOML parser's message.
        message: String,
    },
    /// Valid TOML, but a rule of the register map is broken.
    #[error("profile {origin}: {rule}")]
    Rule {
        /// Where the text came from.
        origin: String,
        /// The rule and the value that breaks it.
        rule: String,
    },
    /// The reference is neither a profile name nor a path.
    #[error("{0:?} is not a profile name or path")]
    BadReference(String),
    /// The file exists but cannot be read.
    #[error("cannot read profile {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No file and no built-in profile of that name.
    #[error("profile {reference:?} not found (looked in {looked}{})", if *.by_name { " and the built-in profiles generic, nice-monitor" } else { "" })]
    NotFound {
        /// The name or path asked for.
        reference: String,
        /// The places looked in, comma-separated.
        looked: String,
        /// The reference was a name (built-in profiles were looked at too).
        by_name: bool,
    },
}

impl Profile {
    /// Parses and validates a profile's TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Profile, ProfileError> {
        let file: ProfileFile = toml::from_str(text).map_err(|e| ProfileError::Syntax {
            origin: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let bad = |rule: String| {
            Err(ProfileError::Rule {
                origin: origin.to_owned(),
                rule,
            })
        };
        if let Some(function) = file.function {
            if function != i64::from(READ_INPUT_REGISTERS) {
                return bad(format!(
                    "function = {function} refused: the agent only reads input registers (function 4) and never writes to a lift"
                ));
            }
        }
        if file.count == 0 || file.count > MAX_REGISTERS_PER_READ {
            return bad(format!(
                "count = {} must be 1..={MAX_REGISTERS_PER_READ} (one read-input-registers request)",
                file.count
            ));
        }
        let end = u32::from(file.start) + u32::from(file.count);
        if end > 0x1_0000 {
            return bad("start + count is beyond register 65535".to_owned());
        }
        let r = &file.registers;
        let fields: [(&str, u16, u32); 11] = [
            ("mode", r.mode, 1),
            ("floor", r.floor, 1),
            ("direction", r.direction, 1),
            ("door", r.door, 1),
            ("flags", r.flags, 1),
            ("speed", r.speed, 1),
            ("load", r.load, 1),
            ("fault_code", r.fault_code, 1),
            ("position", r.position, 2),
            ("run_count", r.run_count, 2),
            ("door_cycles", r.door_cycles, 2),
        ];
        let mut used: BTreeMap<u32, &str> = BTreeMap::new();
        for (field, addr, width) in fields {
            for a in u32::from(addr)..u32::from(addr) + width {
                if a < u32::from(file.start) || a >= end {
                    return bad(format!(
                        "registers.{field} = {addr} (width {width}) is outside the block {}..{}",
                        file.start, end
                    ));
                }
                if let Some(other) = used.insert(a, field) {
                    return bad(format!(
                        "registers.{field} overlaps registers.{other} at register {a}"
                    ));
                }
            }
        }
        let mut fault_names = BTreeMap::new();
        for (code, name) in file.fault_codes {
            match code.parse::<u16>() {
                Ok(c) if c != 0 => {
                    fault_names.insert(c, name);
                }
                _ => {
                    return bad(format!(
                        "fault_codes.{code}: a fault code must be a number 1..=65535"
                    ))
                }
            }
        }
        Ok(Profile {
            name: file.name,
            description: file.description,
            start: file.start,
            count: file.count,
            word_order: file.word_order,
            registers: file.registers,
            fault_names,
        })
    }

    /// The built-in profile `name`, if there is one.
    pub fn built_in(name: &str) -> Option<Profile> {
        BUILT_IN
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(n, text)| Profile::parse(text, &format!("built-in {n}")).ok())
    }

    /// Finds and loads the profile `reference` (a name or a path) for a config file in
    /// `config_dir` (none for a config given as text).
    pub fn resolve(reference: &str, config_dir: Option<&Path>) -> Result<Profile, ProfileError> {
        let is_path = reference.contains('/') || reference.ends_with(".toml");
        let candidates: Vec<PathBuf> = if is_path {
            let p = Path::new(reference);
            match (p.is_relative(), config_dir) {
                (true, Some(dir)) => vec![dir.join(p)],
                _ => vec![p.to_owned()],
            }
        } else {
            if reference.is_empty()
                || !reference
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
            {
                return Err(ProfileError::BadReference(reference.to_owned()));
            }
            let file = format!("{reference}.toml");
            let mut c = Vec::new();
            if let Some(dir) = config_dir {
                c.push(dir.join("profiles").join(&file));
            }
            c.push(Path::new(SYSTEM_PROFILE_DIR).join(&file));
            c
        };
        for path in &candidates {
            match std::fs::read_to_string(path) {
                Ok(text) => return Profile::parse(&text, &path.display().to_string()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(ProfileError::Read {
                        path: path.clone(),
                        source,
                    })
                }
            }
        }
        if !is_path {
            if let Some(p) = Profile::built_in(reference) {
                return Ok(p);
            }
        }
        let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
        Err(ProfileError::NotFound {
            reference: reference.to_owned(),
            looked: looked.join(", "),
            by_name: !is_path,
        })
    }

    fn reg(&self, regs: &[u16], addr: u16) -> u16 {
        // Validated at load: every field lies inside the block, and the caller checked the
        // block's length, so the index is in range; 0 is a harmless fallback regardless.
        regs.get(usize::from(addr - self.start))
            .copied()
            .unwrap_or(0)
    }

    fn reg32(&self, regs: &[u16], addr: u16) -> u32 {
        let first = u32::from(self.reg(regs, addr));
        let second = u32::from(self.reg(regs, addr + 1));
        match self.word_order {
            WordOrder::HighFirst => first << 16 | second,
            WordOrder::LowFirst => second << 16 | first,
        }
    }

    /// Decodes the registers of one read (`regs[0]` is register `start`).
    pub fn decode(&self, regs: &[u16]) -> Result<LiftReading, DecodeError> {
        if regs.len() < usize::from(self.count) {
            return Err(DecodeError::Short {
                got: regs.len(),
                want: usize::from(self.count),
            });
        }
        let r = &self.registers;
        let raw = |addr| self.reg(regs, addr);
        let mode = match raw(r.mode) {
            0 => LiftMode::Normal,
            1 => LiftMode::Inspection,
            2 => LiftMode::FireService,
            3 => LiftMode::OutOfService,
            4 => LiftMode::Independent,
            5 => LiftMode::EmergencyPower,
            value => {
                return Err(DecodeError::Value {
                    field: "mode",
                    value,
                })
            }
        };
        let direction = match raw(r.direction) {
            0 => LiftDirection::Stopped,
            1 => LiftDirection::Up,
            2 => LiftDirection::Down,
            value => {
                return Err(DecodeError::Value {
                    field: "direction",
                    value,
                })
            }
        };
        let door = match raw(r.door) {
            0 => LiftDoor::Closed,
            1 => LiftDoor::Opening,
            2 => LiftDoor::Open,
            3 => LiftDoor::Closing,
            value => {
                return Err(DecodeError::Value {
                    field: "door",
                    value,
                })
            }
        };
        let flags = raw(r.flags);
        let has = |bit: u16| flags & bit != 0;
        Ok(LiftReading {
            status: CarStatus {
                mode,
                floor: raw(r.floor) as i16,
                direction,
                door,
                running: has(flag::RUNNING),
                door_zone: has(flag::DOOR_ZONE),
                occupied: has(flag::OCCUPIED),
                speed_mm_s: raw(r.speed),
                load_pct: raw(r.load),
                position_mm: self.reg32(regs, r.position),
                fault_code: raw(r.fault_code),
                run_count: self.reg32(regs, r.run_count),
                door_cycles: self.reg32(regs, r.door_cycles),
            },
            main_power_ok: has(flag::MAIN_POWER_OK),
            safety_closed: has(flag::SAFETY_CLOSED),
            door_lock_closed: has(flag::DOOR_LOCK_CLOSED),
            alarm_button: has(flag::ALARM_BUTTON),
            overload: has(flag::OVERLOAD),
        })
    }

    /// Encodes a reading into this profile's register block (the simulator serves lifts with
    /// it; the agent never encodes). Registers the profile does not map stay 0.
    pub fn encode(&self, reading: &LiftReading) -> Vec<u16> {
        let mut regs = vec![0u16; usize::from(self.count)];
        let r = &self.registers;
        let s = &reading.status;
        let mut put = |addr: u16, v: u16| {
            if let Some(slot) = regs.get_mut(usize::from(addr.wrapping_sub(self.start))) {
                *slot = v;
            }
        };
        put(r.mode, s.mode as u16);
        put(r.floor, s.floor as u16);
        put(r.direction, s.direction as u16);
        put(r.door, s.door as u16);
        let mut flags = 0;
        for (on, bit) in [
            (s.running, flag::RUNNING),
            (s.door_zone, flag::DOOR_ZONE),
            (s.occupied, flag::OCCUPIED),
            (reading.main_power_ok, flag::MAIN_POWER_OK),
            (reading.safety_closed, flag::SAFETY_CLOSED),
            (reading.door_lock_closed, flag::DOOR_LOCK_CLOSED),
            (reading.alarm_button, flag::ALARM_BUTTON),
            (reading.overload, flag::OVERLOAD),
        ] {
            if on {
                flags |= bit;
            }
        }
        put(r.flags, flags);
        put(r.speed, s.speed_mm_s);
        put(r.load, s.load_pct);
        put(r.fault_code, s.fault_code);
        for (addr, v) in [
            (r.position, s.position_mm),
            (r.run_count, s.run_count),
            (r.door_cycles, s.door_cycles),
        ] {
            let (hi, lo) = ((v >> 16) as u16, v as u16);
            match self.word_order {
                WordOrder::HighFirst => {
                    put(addr, hi);
                    put(addr.wrapping_add(1), lo);
                }
                WordOrder::LowFirst => {
                    put(addr, lo);
                    put(addr.wrapping_add(1), hi);
                }
            }
        }
        regs
    }

    /// The profile's name for a controller fault code, if it has one.
    pub fn fault_name(&self, code: u16) -> Option<&str> {
        self.fault_names.get(&code).map(String::as_str)
    }
}

#[cfg(test)]
mod tests;
