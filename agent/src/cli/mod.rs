//! The installer's commands: `check`, `tail`, `zero` (and the port helper they share).
//!
//! Each prints for a person at a terminal and returns an exit code a script can test: zero
//! when everything asked for worked, non-zero otherwise.

pub mod check;
pub mod node_port;
pub mod scan;
pub mod tail;
pub mod zero;

use std::process::ExitCode;

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
