//! Property tests of everything that reads input from outside the gateway (run in CI with
//! the other tests; the fuzz targets in `fuzz/` push the same parsers much further):
//! - the command parser (bytes from the broker): never panics; what it accepts is within the
//!   limits it promises;
//! - the configuration parser (a file an installer edits): never panics on arbitrary text, on
//!   a valid configuration with bytes flipped, or with lines cut out of it;
//! - the Modbus answer scan (bytes from a lift controller): never panics; the answer it finds
//!   is the first valid one on the line (checked with the test's own CRC), values included;
//!   behind garbage that holds no valid frame the real answer is always found;
//! - lift register map profiles (files): never panic.
//!
//! The frame decoder's own properties are in `firmware/tests/protocol_props.rs`.

use proptest::prelude::*;
use towerlink_agent::commands::{parse, MAX_COMMAND_BYTES, MAX_CONFIG_APPLY_BYTES};
use towerlink_agent::config::Config;
use towerlink_agent::profile::Profile;
use towerlink_agent::sources::modbus_rtu::{scan, Answer, ReadInputRegisters};

/// A configuration that uses every section, TLS keys included.
const FULL: &str = r#"[gateway]
id = "sh-ja-0001"

[mqtt]
url = "mqtts://platform.example:8883"
ca_file = "/etc/towerlink/ca.pem"
cert_file = "/etc/towerlink/gateway.pem"
key_file = "/etc/towerlink/gateway.key"
username = "sh-ja-0001"
password_file = "/etc/towerlink/password"
keep_alive = "30s"
data_qos = 1

[store]
path = "/var/lib/towerlink"
max_bytes = "64MiB"
fsync = "100ms"

[commands]
rate = 10
burst = 20

[health]
interval = "60s"

[[node]]
id = "panel-n12"
port = "/dev/ttyUSB0"
window = "10s"
names = { 0 = "strain_top" }

[[lift]]
id = "lift-1"
port = "/dev/ttyUSB1"
unit = 1
top_floor = 42
bottom_floor = -2
rated_speed_mm_s = 2500
"#;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        // Deterministic in CI: failures replay from the seed, not from a file.
        failure_persistence: None,
        rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
        ..ProptestConfig::default()
    }
}

/// Shapes of command JSON with arbitrary values, so the parser's deeper paths are reached.
fn command_like() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(vec!["id", "op", "dev", "ch", "pad", "ID", ""]),
        ".{0,200}",
        prop::sample::select(vec!["ping", "zero", "identify", "config", "write", ""]),
        any::<bool>(),
    )
        .prop_map(|(key, value, op, nest)| {
            let value = serde_json::Value::String(value);
            let body = if nest {
                serde_json::json!({ "id": value, "op": op, key: [value.clone(), {"x": value}] })
            } else {
                serde_json::json!({ "id": value, "op": op, key: value })
            };
            body.to_string().into_bytes()
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn command_parser_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..6000)) {
        check_command(&bytes)?;
    }

    #[test]
    fn command_parser_never_panics_on_json(bytes in command_like()) {
        check_command(&bytes)?;
    }

    #[test]
    fn config_parser_never_panics_on_text(text in "(?s).{0,2000}") {
        let _ = Config::parse(&text, "fuzz.toml");
    }

    #[test]
    fn config_parser_never_panics_on_damaged_configs(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = FULL.as_bytes().to_vec();
        for (at, byte) in flips {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        let _ = Config::parse(&String::from_utf8_lossy(&bytes), "fuzz.toml");
        let lines: Vec<&str> = FULL.lines().collect();
        let skip = cut.index(lines.len());
        let without: Vec<&str> = lines.iter().enumerate().filter(|(i, _)| *i != skip).map(|(_, l)| *l).collect();
        let _ = Config::parse(&without.join("\n"), "fuzz.toml");
    }

    #[test]
    fn modbus_scan_never_panics_and_finds_the_first_valid_answer_with_its_values(
        unit in 1u8..=247,
        start in any::<u16>(),
        count in 1u16..=125,
        garbage in prop::collection::vec(any::<u8>(), 0..600),
        registers in prop::collection::vec(any::<u16>(), 125),
        with_answer in any::<bool>(),
    ) {
        let req = ReadInputRegisters { unit, start, count };
        let mut line = garbage.clone();
        if with_answer {
            line.extend_from_slice(&answer_frame(unit, &registers[..usize::from(count)]));
        }
        let found = scan(&req, &line);
        // The answer found is exactly the first one the line holds (read with the test's own
        // CRC and layout, not the agent's), values included.
        prop_assert_eq!(&found.answer, &first_answer(&req, &line));
        // Garbage that holds no complete valid answer to this request (none starting in it,
        // even one running into the real answer's bytes) hides nothing: the real answer is
        // found with the registers it carries.
        let in_garbage = (0..garbage.len()).any(|i| answer_at(&req, &line[i..]).is_some());
        if with_answer && !in_garbage {
            prop_assert_eq!(
                found.answer,
                Some(Answer::Registers(registers[..usize::from(count)].to_vec()))
            );
        } else if !with_answer && !in_garbage {
            prop_assert_eq!(found.answer, None);
        }
    }

    #[test]
    fn modbus_scan_finds_the_answer_behind_garbage_that_holds_no_frame(
        unit in 1u8..=247,
        start in any::<u16>(),
        count in 1u16..=125,
        garbage in prop::collection::vec(any::<u8>(), 1..600),
        registers in prop::collection::vec(any::<u16>(), 125),
    ) {
        // No byte of the garbage is the unit id, so no frame for this unit can start in it.
        let garbage: Vec<u8> = garbage.into_iter().map(|b| if b == unit { b ^ 0x80 } else { b }).collect();
        let req = ReadInputRegisters { unit, start, count };
        let values = &registers[..usize::from(count)];
        let mut line = garbage;
        line.extend_from_slice(&answer_frame(unit, values));
        prop_assert_eq!(scan(&req, &line).answer, Some(Answer::Registers(values.to_vec())));
        // An exception answer behind the same garbage is found too, with its code.
        let mut line = line[..line.len() - answer_frame(unit, values).len()].to_vec();
        let mut exception = vec![unit, 0x84, 0x02];
        let crc = crc16(&exception);
        exception.extend_from_slice(&crc.to_le_bytes());
        line.extend_from_slice(&exception);
        prop_assert_eq!(scan(&req, &line).answer, Some(Answer::Exception(0x02)));
    }

    #[test]
    fn profile_parser_never_panics(text in "(?s).{0,1500}") {
        let _ = Profile::parse(&text, "fuzz.toml");
    }
}

fn check_command(bytes: &[u8]) -> Result<(), TestCaseError> {
    match parse(bytes) {
        Ok(cmd) => {
            let limit = if cmd.op == "config_apply" {
                MAX_CONFIG_APPLY_BYTES
            } else {
                MAX_COMMAND_BYTES
            };
            prop_assert!(bytes.len() <= limit);
            prop_assert!(!cmd.id.is_empty() && cmd.id.len() <= 128);
        }
        Err((id, error)) => {
            prop_assert!(id.chars().count() <= 128);
            prop_assert!(!error.to_string().is_empty());
        }
    }
    Ok(())
}

/// CRC-16/MODBUS (reflected 0xA001, initial 0xFFFF), written here from the Modbus spec so the
/// scan is not checked against the agent's own CRC.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc = 0xFFFFu16;
    for &b in bytes {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// A Read Input Registers answer from `unit` carrying `values`, CRC low byte first.
fn answer_frame(unit: u8, values: &[u16]) -> Vec<u8> {
    let mut frame = vec![unit, 0x04, (2 * values.len()) as u8];
    for v in values {
        frame.extend_from_slice(&v.to_be_bytes());
    }
    let crc = crc16(&frame);
    frame.extend_from_slice(&crc.to_le_bytes());
    frame
}

/// The answer to `req` if `bytes` starts with a complete valid one (normal or exception).
fn answer_at(req: &ReadInputRegisters, bytes: &[u8]) -> Option<Answer> {
    let crc_ok = |frame: &[u8]| {
        let (body, crc) = frame.split_at(frame.len() - 2);
        crc16(body).to_le_bytes() == [crc[0], crc[1]]
    };
    let byte_count = 2 * usize::from(req.count);
    match bytes {
        [u, 0x04, n, ..] if *u == req.unit && usize::from(*n) == byte_count => {
            let frame = bytes.get(..3 + byte_count + 2)?;
            crc_ok(frame).then(|| {
                Answer::Registers(
                    frame[3..3 + byte_count]
                        .chunks_exact(2)
                        .map(|w| u16::from_be_bytes([w[0], w[1]]))
                        .collect(),
                )
            })
        }
        [u, 0x84, code, ..] if *u == req.unit => {
            let frame = bytes.get(..5)?;
            crc_ok(frame).then_some(Answer::Exception(*code))
        }
        _ => None,
    }
}

/// The first valid answer to `req` anywhere in `line`.
fn first_answer(req: &ReadInputRegisters, line: &[u8]) -> Option<Answer> {
    (0..line.len()).find_map(|i| answer_at(req, &line[i..]))
}
