//! Fuzz target: configuration text (a file an installer edits) into the config parser and
//! its validation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use towerlink_agent::config::Config;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::parse(text, "fuzz.toml");
    }
});
