//! Fuzz target: payloads from the broker's `cmd` topic into the strict command parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use towerlink_agent::commands::{parse, MAX_COMMAND_BYTES};

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(cmd) => {
            assert!(data.len() <= MAX_COMMAND_BYTES);
            assert!(!cmd.id.is_empty() && cmd.id.len() <= 128);
        }
        Err((id, _)) => assert!(id.chars().count() <= 128),
    }
});
