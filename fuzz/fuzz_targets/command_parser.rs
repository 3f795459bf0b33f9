//! Fuzz target: payloads from the broker's `cmd` topic into the strict command parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use towerlink_agent::commands::{parse, MAX_COMMAND_BYTES, MAX_CONFIG_APPLY_BYTES};

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(cmd) => {
            let limit = if cmd.op == "config_apply" {
                MAX_CONFIG_APPLY_BYTES
            } else {
                MAX_COMMAND_BYTES
            };
            assert!(data.len() <= limit);
            assert!(!cmd.id.is_empty() && cmd.id.len() <= 128);
        }
        Err((id, _)) => assert!(id.chars().count() <= 128),
    }
});
