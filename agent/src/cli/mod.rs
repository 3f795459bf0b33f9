//! The installer's commands: `check`, `scan`, `tail`, `zero`, `cert request`; and the platform's `audit`. They reach sensor nodes through
//! the serial source's own link ([`crate::sources::node_link`]).
//!
//! Each prints for a person at a terminal and returns an exit code a script can test: zero
//! when everything asked for worked, non-zero otherwise.

pub mod audit;
pub mod cert;
pub mod check;
pub mod scan;
pub mod tail;
pub mod zero;

use std::collections::BTreeMap;
use std::process::ExitCode;

use crate::pipeline::channel_names;
use crate::sources::node_link::NodeHello;

/// `node 101, firmware 1.0.0, 4 channels: strain 50 Hz, tilt_x 10 Hz, ...` with the
/// channels under their feed names (`names` from the configuration, if any).
pub fn describe_hello(hello: &NodeHello, names: &BTreeMap<u8, String>) -> String {
    let channels: Vec<String> = channel_names(&hello.channels, names)
        .iter()
        .map(|c| format!("{} {} Hz", c.name, c.rate_hz))
        .collect();
    format!(
        "node {}, firmware {}.{}.{}, {} channel(s): {}",
        hello.node,
        hello.fw.0,
        hello.fw.1,
        hello.fw.2,
        channels.len(),
        channels.join(", ")
    )
}

/// Runs `future` on a fresh runtime; a runtime that cannot start is exit code 1.
pub fn block_on<F: std::future::Future<Output = ExitCode>>(future: F) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(future),
        Err(e) => {
            eprintln!("towerlink: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}
