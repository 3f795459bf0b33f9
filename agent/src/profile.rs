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

use crate::feed::{LiftDirection, LiftDoor, LiftMode, LiftStatus};

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

/// One decoded answer: the feed's status plus the flags only the event rules need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiftReading {
    /// What goes into the `lift` payload.
    pub status: LiftStatus,
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

impl Profile {
    /// Parses and validates a profile's TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Profile, String> {
        let file: ProfileFile = toml::from_str(text)
            .map_err(|e| format!("profile {origin}: {}", e.to_string().trim_end()))?;
        let bad = |msg: String| Err(format!("profile {origin}: {msg}"));
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
    pub fn resolve(reference: &str, config_dir: Option<&Path>) -> Result<Profile, String> {
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
                return Err(format!("{reference:?} is not a profile name or path"));
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
                Err(e) => return Err(format!("cannot read profile {}: {e}", path.display())),
            }
        }
        if !is_path {
            if let Some(p) = Profile::built_in(reference) {
                return Ok(p);
            }
        }
        let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
        Err(format!(
            "profile {reference:?} not found (looked in {}{})",
            looked.join(", "),
            if is_path {
                ""
            } else {
                " and the built-in profiles generic, nice-monitor"
            }
        ))
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
            status: LiftStatus {
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
mod tests {
    use super::*;

    fn generic() -> Profile {
        Profile::built_in("generic").expect("generic profile")
    }

    #[test]
    fn the_generic_profile_is_the_spec_map() {
        let p = generic();
        assert_eq!((p.start, p.count), (0, 14));
        assert_eq!(p.word_order, WordOrder::HighFirst);
        let r = &p.registers;
        assert_eq!(
            [
                r.mode,
                r.floor,
                r.direction,
                r.door,
                r.flags,
                r.speed,
                r.load,
                r.fault_code,
                r.position,
                r.run_count,
                r.door_cycles
            ],
            [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12]
        );
    }

    #[test]
    fn decodes_the_spec_example_from_raw_registers() {
        // The feed spec's example status, written by hand in the spec's register layout.
        let regs: [u16; 14] = [
            0,                          // normal
            7,                          // floor
            1,                          // up
            0,                          // closed
            0b0011_1101,                // running, occupied, power, safety, lock
            1480,                       // speed
            35,                         // load
            0,                          // fault
            0,                          // position high
            21350,                      // position low
            0,                          // run_count high
            10234,                      // run_count low
            (20561u32 >> 16) as u16,    // door_cycles high
            (20561u32 & 0xFFFF) as u16, // door_cycles low
        ];
        let r = generic().decode(&regs).expect("decode");
        let s = r.status;
        assert_eq!(s.mode, LiftMode::Normal);
        assert_eq!(s.floor, 7);
        assert_eq!(s.direction, LiftDirection::Up);
        assert_eq!(s.door, LiftDoor::Closed);
        assert!(s.running && !s.door_zone && s.occupied);
        assert_eq!((s.speed_mm_s, s.load_pct, s.position_mm), (1480, 35, 21350));
        assert_eq!((s.run_count, s.door_cycles), (10234, 20561));
        assert!(r.main_power_ok && r.safety_closed && r.door_lock_closed);
        assert!(!r.alarm_button && !r.overload);
    }

    /// Which flags of a decoded reading are set, in the spec's bit order (bit 0 first).
    fn flags_of(r: &LiftReading) -> [bool; 8] {
        [
            r.status.running,
            r.status.door_zone,
            r.status.occupied,
            r.main_power_ok,
            r.safety_closed,
            r.door_lock_closed,
            r.alarm_button,
            r.overload,
        ]
    }

    #[test]
    fn every_flag_bit_decodes_to_its_own_field() {
        // Register 4 of the spec, one bit at a time, written by hand: bit0 running, bit1 door
        // zone, bit2 occupied, bit3 main power ok, bit4 safety closed, bit5 door lock closed,
        // bit6 alarm button, bit7 overload.
        let cases: [(u16, [bool; 8]); 10] = [
            (
                0x0000,
                [false, false, false, false, false, false, false, false],
            ),
            (
                0x0001,
                [true, false, false, false, false, false, false, false],
            ),
            (
                0x0002,
                [false, true, false, false, false, false, false, false],
            ),
            (
                0x0004,
                [false, false, true, false, false, false, false, false],
            ),
            (
                0x0008,
                [false, false, false, true, false, false, false, false],
            ),
            (
                0x0010,
                [false, false, false, false, true, false, false, false],
            ),
            (
                0x0020,
                [false, false, false, false, false, true, false, false],
            ),
            (
                0x0040,
                [false, false, false, false, false, false, true, false],
            ),
            (
                0x0080,
                [false, false, false, false, false, false, false, true],
            ),
            // Bits above 7 are not in the spec: ignored.
            (
                0xFF00,
                [false, false, false, false, false, false, false, false],
            ),
        ];
        for (flags, want) in cases {
            let regs: [u16; 14] = [0, 0, 0, 0, flags, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            let r = generic().decode(&regs).expect("decode");
            assert_eq!(flags_of(&r), want, "flags register {flags:#06x}");
        }
    }

    #[test]
    fn every_multi_register_field_and_enumeration_decodes_from_hand_written_registers() {
        // Registers 8..=13, high word first, with distinct high and low words per field so a
        // swapped word, a swapped field or an off-by-one address shows.
        let regs: [u16; 14] = [
            2,      // mode: fire service
            0xFFFE, // floor -2
            2,      // down
            1,      // opening
            0x00FF, // every flag
            2500,   // speed
            110,    // load
            0x0123, // fault code
            0x0001, // position high
            0x2345, // position low
            0x0006, // run_count high
            0x789A, // run_count low
            0x00BC, // door_cycles high
            0xDEF0, // door_cycles low
        ];
        let r = generic().decode(&regs).expect("decode");
        let s = r.status;
        assert_eq!(s.mode, LiftMode::FireService);
        assert_eq!(
            (s.floor, s.direction, s.door),
            (-2, LiftDirection::Down, LiftDoor::Opening)
        );
        assert_eq!(flags_of(&r), [true; 8]);
        assert_eq!(
            (s.speed_mm_s, s.load_pct, s.fault_code),
            (2500, 110, 0x0123)
        );
        assert_eq!(s.position_mm, 0x0001_2345);
        assert_eq!(s.run_count, 0x0006_789A);
        assert_eq!(s.door_cycles, 0x00BC_DEF0);

        // Every value of the enumerated registers, by its number in the spec.
        let modes = [
            LiftMode::Normal,
            LiftMode::Inspection,
            LiftMode::FireService,
            LiftMode::OutOfService,
            LiftMode::Independent,
            LiftMode::EmergencyPower,
        ];
        for (n, mode) in modes.into_iter().enumerate() {
            let mut regs = [0u16; 14];
            regs[0] = n as u16;
            assert_eq!(generic().decode(&regs).expect("mode").status.mode, mode);
        }
        let directions = [
            LiftDirection::Stopped,
            LiftDirection::Up,
            LiftDirection::Down,
        ];
        for (n, direction) in directions.into_iter().enumerate() {
            let mut regs = [0u16; 14];
            regs[2] = n as u16;
            let got = generic().decode(&regs).expect("direction").status.direction;
            assert_eq!(got, direction);
        }
        let doors = [
            LiftDoor::Closed,
            LiftDoor::Opening,
            LiftDoor::Open,
            LiftDoor::Closing,
        ];
        for (n, door) in doors.into_iter().enumerate() {
            let mut regs = [0u16; 14];
            regs[3] = n as u16;
            assert_eq!(generic().decode(&regs).expect("door").status.door, door);
        }
    }

    #[test]
    fn basements_and_32_bit_values_in_both_word_orders() {
        let mut regs = [0u16; 14];
        regs[1] = (-2i16) as u16;
        regs[8] = 0x0001;
        regs[9] = 0x2345;
        let r = generic().decode(&regs).expect("decode");
        assert_eq!(r.status.floor, -2);
        assert_eq!(r.status.position_mm, 0x0001_2345);

        let nice = Profile::built_in("nice-monitor").expect("nice profile");
        assert_eq!(nice.word_order, WordOrder::LowFirst);
        let mut regs = [0u16; 16];
        // position at 4104: low word first.
        regs[8] = 0x2345;
        regs[9] = 0x0001;
        regs[1] = 5; // floor at 4097
        let r = nice.decode(&regs).expect("decode");
        assert_eq!(r.status.position_mm, 0x0001_2345);
        assert_eq!(r.status.floor, 5);
        assert_eq!(nice.fault_name(41), Some("E41 safety circuit open"));
        assert_eq!(nice.fault_name(1), None);
    }

    #[test]
    fn encode_then_decode_is_identity_in_both_profiles() {
        let reading = LiftReading {
            status: LiftStatus {
                mode: LiftMode::FireService,
                floor: -1,
                direction: LiftDirection::Down,
                door: LiftDoor::Closing,
                running: true,
                door_zone: true,
                occupied: false,
                speed_mm_s: 900,
                load_pct: 12,
                position_mm: 123_456,
                fault_code: 42,
                run_count: 70_000,
                door_cycles: 140_001,
            },
            main_power_ok: true,
            safety_closed: false,
            door_lock_closed: true,
            alarm_button: true,
            overload: false,
        };
        for name in ["generic", "nice-monitor"] {
            let p = Profile::built_in(name).expect("profile");
            assert_eq!(p.decode(&p.encode(&reading)), Ok(reading), "{name}");
        }
    }

    #[test]
    fn out_of_range_values_and_short_answers_are_errors() {
        let p = generic();
        let mut regs = [0u16; 14];
        regs[2] = 3;
        assert_eq!(
            p.decode(&regs),
            Err(DecodeError::Value {
                field: "direction",
                value: 3
            })
        );
        assert!(matches!(
            p.decode(&regs[..13]),
            Err(DecodeError::Short { got: 13, want: 14 })
        ));
    }

    const GENERIC: &str = include_str!("../../config/profiles/generic.toml");

    #[test]
    fn profiles_that_could_write_or_do_not_fit_are_refused() {
        let cases = [
            ("start = 0", "function = 6\nstart = 0", "function = 6"),
            ("start = 0", "function = 16\nstart = 0", "never writes"),
            (
                "[fault_codes]",
                "[fault_codes]\n[write]\nregister = 6",
                "write",
            ),
            ("door = 3", "door = 3\nholding = 1", "holding"),
            ("count = 14", "count = 13", "registers.door_cycles"),
            ("count = 14", "count = 126", "count"),
            ("door = 3", "door = 2", "overlaps"),
            ("position = 8", "position = 13", "outside the block"),
            (
                "[fault_codes]",
                "[fault_codes]\nE41 = \"x\"",
                "fault_codes.E41",
            ),
            ("high_first", "middle_first", "word_order"),
        ];
        for (from, to, needle) in cases {
            let text = GENERIC.replace(from, to);
            assert_ne!(text, GENERIC, "{from}");
            match Profile::parse(&text, "t") {
                Ok(_) => panic!("accepted: {to}"),
                Err(e) => assert!(e.contains(needle), "{to}: {e}"),
            }
        }
        let stated = GENERIC.replace("start = 0", "function = 4\nstart = 0");
        assert!(Profile::parse(&stated, "t").is_ok());
    }

    #[test]
    fn profiles_resolve_from_the_config_dir_then_built_ins() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("profiles")).expect("mkdir");
        let custom = GENERIC.replace("name = \"generic\"", "name = \"site\"");
        std::fs::write(dir.path().join("profiles/site.toml"), &custom).expect("write");
        std::fs::write(dir.path().join("mine.toml"), &custom).expect("write");
        assert_eq!(
            Profile::resolve("site", Some(dir.path()))
                .expect("site")
                .name,
            "site"
        );
        assert_eq!(
            Profile::resolve("mine.toml", Some(dir.path()))
                .expect("path")
                .name,
            "site"
        );
        assert_eq!(
            Profile::resolve("generic", Some(dir.path()))
                .expect("built-in")
                .name,
            "generic"
        );
        let e = Profile::resolve("nope", Some(dir.path())).expect_err("missing");
        assert!(
            e.contains("not found") && e.contains("profiles/nope.toml"),
            "{e}"
        );
        let e = Profile::resolve("../x", None).expect_err("missing path");
        assert!(e.contains("not found"), "{e}");
    }
}
