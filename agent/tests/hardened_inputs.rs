//! Property tests of everything that reads input from outside the gateway (run in CI with
//! the other tests; the fuzz targets in `fuzz/` push the same parsers much further):
//! - the command parser (bytes from the broker): never panics; what it accepts is within the
//!   limits it promises;
//! - the configuration parser (a file an installer edits): never panics on arbitrary text, on
//!   a valid configuration with bytes flipped, or with lines cut out of it;
//! - the Modbus answer scan (bytes from a lift controller): never panics; an answer it finds
//!   has exactly the registers asked for;
//! - lift register map profiles (files): never panic.
//!
//! The frame decoder's own properties are in `firmware/tests/protocol_props.rs`.

use proptest::prelude::*;
use towerlink_agent::commands::{parse, MAX_COMMAND_BYTES, MAX_CONFIG_APPLY_BYTES};
use towerlink_agent::config::Config;
use towerlink_agent::profile::Profile;
use towerlink_agent::sources::modbus_rtu::{push_crc, scan, Answer, ReadInputRegisters};

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
    fn modbus_scan_never_panics_and_answers_have_the_registers_asked_for(
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
            let mut frame = vec![unit, 0x04, (2 * count) as u8];
            for r in &registers[..usize::from(count)] {
                frame.extend_from_slice(&r.to_be_bytes());
            }
            push_crc(&mut frame);
            line.extend_from_slice(&frame);
        }
        let found = scan(&req, &line);
        if let Some(Answer::Registers(regs)) = &found.answer {
            prop_assert_eq!(regs.len(), usize::from(count));
        }
        if with_answer {
            // Garbage before it may hold another valid-looking frame; the real one is found
            // when nothing before it is.
            prop_assert!(found.answer.is_some() || !garbage.is_empty());
        }
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
