//! The CPU time of the calling thread, for the benches that time one piece of work on a
//! machine that may be busy with other things.

use std::time::{Duration, Instant};

/// CPU time of this thread so far (`/proc/thread-self/schedstat`, ns on the CPU: not the
/// time waiting for it on a loaded machine); wall time since the first call where that is
/// not available.
pub fn thread_cpu() -> Duration {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map(Duration::from_nanos)
        .unwrap_or_else(|| START.get_or_init(Instant::now).elapsed())
}
