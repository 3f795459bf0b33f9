//! The system clock as the feed reports it: whether the kernel says it is synchronised
//! (adjtimex(2)), its estimated error, and steps of the wall clock against the monotonic one.
//!
//! A gateway without a battery-backed clock boots in 1970 and steps its clock when NTP first
//! syncs. The platform is told: `clock` in the birth and in `health`, `"clock":"unsynced"` on
//! every data, lift-status and event message made while the kernel's clock is not
//! synchronised, and a `clock_step` event when the wall clock jumps by more than
//! [`STEP_THRESHOLD_MS`] against the monotonic clock (the pipeline then closes its windows and
//! the sources re-anchor their nodes' time mappings).
//!
//! [`ClockStatus`] is the shared state (lock-free, read by the renderer, the birth, `health`
//! and the sources); [`TimeSource`] is where time comes from ([`SystemTime`] in the agent, a
//! hand-driven one in tests); [`StepDetector`] is the pure rule that finds steps.
//!
//! Test-only: the environment variable [`TEST_CLOCK_ENV`] (`TOWERLINK_TEST_CLOCK=unsynced`)
//! makes the agent report its clock as not synchronised whatever the kernel says, so an
//! end-to-end test can check the flags on a machine whose clock is synchronised. It is not a
//! setting: a gateway never has it set.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

/// A wall-clock jump against the monotonic clock larger than this is a step (ms).
pub const STEP_THRESHOLD_MS: i64 = 1_000;

/// Test-only environment variable: `unsynced` forces the clock to be reported unsynchronised.
pub const TEST_CLOCK_ENV: &str = "TOWERLINK_TEST_CLOCK";

/// What the kernel says of its clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KernelClock {
    /// Neither `STA_UNSYNC` set nor the state `TIME_ERROR`.
    pub synced: bool,
    /// The kernel's estimated error (`esterror`), ms; `None` when not synchronised.
    pub est_error_ms: Option<f64>,
}

/// Reads the kernel's clock state with adjtimex(2) (a read: `modes = 0`, no privilege
/// needed). A failing call reads as "not synchronised".
pub fn read_kernel_clock() -> KernelClock {
    // SAFETY: `timex` is plain old data; zeroed is a valid value, and with `modes = 0`
    // adjtimex only writes the kernel's state into the struct we own.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: a valid, exclusive pointer to a `timex` for the duration of the call.
    let state = unsafe { libc::adjtimex(&mut tx) };
    let synced = state >= 0 && state != libc::TIME_ERROR && tx.status & libc::STA_UNSYNC == 0;
    KernelClock {
        synced,
        est_error_ms: synced.then(|| tx.esterror as f64 / 1000.0),
    }
}

/// The clock state shared by the agent's tasks.
#[derive(Debug)]
pub struct ClockStatus {
    synced: AtomicBool,
    /// Estimated error in µs, or -1 for none.
    est_error_us: AtomicI64,
    steps: AtomicU64,
    forced_unsynced: bool,
}

impl Default for ClockStatus {
    fn default() -> Self {
        ClockStatus {
            synced: AtomicBool::new(true),
            est_error_us: AtomicI64::new(-1),
            steps: AtomicU64::new(0),
            forced_unsynced: false,
        }
    }
}

impl ClockStatus {
    /// The agent's clock state: read from the kernel now (and forced unsynchronised by the
    /// test-only [`TEST_CLOCK_ENV`]).
    pub fn from_system() -> ClockStatus {
        let forced = std::env::var(TEST_CLOCK_ENV).is_ok_and(|v| v == "unsynced");
        if forced {
            tracing::warn!(
                "{TEST_CLOCK_ENV}=unsynced (test only): the clock is reported as not synchronised"
            );
        }
        let status = ClockStatus {
            forced_unsynced: forced,
            ..ClockStatus::default()
        };
        status.refresh();
        status
    }

    /// Sets the state by hand (tests).
    pub fn set(&self, kernel: KernelClock) {
        let synced = kernel.synced && !self.forced_unsynced;
        self.synced.store(synced, Ordering::Relaxed);
        let us = match kernel.est_error_ms {
            Some(ms) if synced => (ms * 1000.0).round() as i64,
            _ => -1,
        };
        self.est_error_us.store(us, Ordering::Relaxed);
    }

    /// Reads the kernel's state again.
    pub fn refresh(&self) {
        let before = self.synced();
        self.set(read_kernel_clock());
        let after = self.synced();
        if before != after {
            tracing::info!(synced = after, "system clock synchronisation changed");
        }
    }

    /// Is the system clock synchronised?
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }

    /// The estimated error, ms (none while not synchronised).
    pub fn est_error_ms(&self) -> Option<f64> {
        let us = self.est_error_us.load(Ordering::Relaxed);
        (us >= 0).then(|| us as f64 / 1000.0)
    }

    /// Steps of the wall clock seen since start (also the sources' re-anchoring epoch).
    pub fn steps(&self) -> u64 {
        self.steps.load(Ordering::Acquire)
    }

    /// Counts a step of the wall clock.
    pub fn note_step(&self) {
        self.steps.fetch_add(1, Ordering::AcqRel);
    }

    /// `health.clock`: `{"synced":bool,"est_error_ms":number|null,"steps":n}`.
    pub fn health_json(&self) -> serde_json::Value {
        serde_json::json!({
            "synced": self.synced(),
            "est_error_ms": self.est_error_ms(),
            "steps": self.steps(),
        })
    }
}

/// Where the agent's time comes from: the wall clock and a monotonic clock, both in ms.
pub trait TimeSource: Send {
    /// Wall-clock time, ms since the Unix epoch.
    fn wall_ms(&self) -> i64;
    /// A monotonic clock, ms since an arbitrary origin (never steps).
    fn mono_ms(&self) -> i64;
}

/// The system's clocks (`CLOCK_REALTIME` and tokio's monotonic `Instant`).
#[derive(Debug, Clone, Copy)]
pub struct SystemTime {
    origin: std::time::Instant,
}

impl Default for SystemTime {
    fn default() -> Self {
        SystemTime {
            origin: std::time::Instant::now(),
        }
    }
}

impl TimeSource for SystemTime {
    fn wall_ms(&self) -> i64 {
        match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            Err(_) => 0,
        }
    }
    fn mono_ms(&self) -> i64 {
        i64::try_from(self.origin.elapsed().as_millis()).unwrap_or(i64::MAX)
    }
}

/// Finds steps of the wall clock: the difference `wall - mono` moving by more than
/// [`STEP_THRESHOLD_MS`] between two observations. Slewing (NTP's gradual correction, at
/// most 0.5 ms/s) never adds up to a step between two observations a fraction of a second
/// apart.
#[derive(Debug, Clone, Default)]
pub struct StepDetector {
    offset: Option<i64>,
}

impl StepDetector {
    /// A detector with no observation yet.
    pub fn new() -> StepDetector {
        StepDetector::default()
    }

    /// Observes both clocks; returns the step (ms, signed: negative = the clock went back)
    /// when the wall clock stepped since the last observation.
    pub fn observe(&mut self, wall_ms: i64, mono_ms: i64) -> Option<i64> {
        let offset = wall_ms.saturating_sub(mono_ms);
        let previous = self.offset.replace(offset)?;
        let step = offset.saturating_sub(previous);
        (step.abs() > STEP_THRESHOLD_MS).then_some(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_found_and_drift_is_not() {
        let mut d = StepDetector::new();
        assert_eq!(d.observe(1_000_000, 0), None);
        // Slewing and jitter: never a step.
        assert_eq!(d.observe(1_000_100 + 3, 100), None);
        assert_eq!(d.observe(1_001_000 + 900, 1_000), None);
        // NTP's first sync after a cold boot: an hour back.
        assert_eq!(d.observe(1_001_100 - 3_600_000, 1_100), Some(-3_600_900));
        assert_eq!(d.observe(1_001_200 - 3_600_000 + 900, 1_200), None);
        // Forward by 2 s.
        assert_eq!(d.observe(1_003_300 - 3_600_000 + 900, 1_300), Some(2_000));
    }

    #[test]
    fn the_kernel_clock_can_be_read() {
        let k = read_kernel_clock();
        assert_eq!(k.est_error_ms.is_some(), k.synced);
    }

    #[test]
    fn a_forced_unsynced_clock_stays_unsynced() {
        let s = ClockStatus {
            forced_unsynced: true,
            ..ClockStatus::default()
        };
        s.set(KernelClock {
            synced: true,
            est_error_ms: Some(3.5),
        });
        assert!(!s.synced());
        assert_eq!(s.est_error_ms(), None);
        let s = ClockStatus::default();
        s.set(KernelClock {
            synced: true,
            est_error_ms: Some(3.5),
        });
        assert_eq!(s.est_error_ms(), Some(3.5));
        s.note_step();
        assert_eq!(
            s.health_json(),
            serde_json::json!({"synced": true, "est_error_ms": 3.5, "steps": 1})
        );
    }
}
