//! Simulated time.
//!
//! A virtual node owns the pace of its simulated world: it advances a [`SimClock`] and the
//! simulated chips read it to decide whether a conversion is ready and which instant of the
//! panel model to report. Clones share one time, so a node's chips, bus and delay all agree.
//! The clock is `Send + Sync` because each virtual node runs on its own thread.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use embedded_hal::delay::DelayNs;

/// A shared simulated time in microseconds since the start of the simulation. Cheap to clone;
/// all clones see the same time.
#[derive(Debug, Clone, Default)]
pub struct SimClock {
    now_us: Arc<AtomicU64>,
}

impl SimClock {
    /// A clock at t = 0.
    pub fn new() -> Self {
        SimClock::default()
    }

    /// A clock starting at `t_us`.
    pub fn starting_at(t_us: u64) -> Self {
        SimClock {
            now_us: Arc::new(AtomicU64::new(t_us)),
        }
    }

    /// The current simulated time, µs.
    pub fn now_us(&self) -> u64 {
        self.now_us.load(Ordering::SeqCst)
    }

    /// Move time forward by `dt_us` (saturating at `u64::MAX`); returns the new time.
    pub fn advance_us(&self, dt_us: u64) -> u64 {
        let mut current = self.now_us.load(Ordering::SeqCst);
        loop {
            let next = current.saturating_add(dt_us);
            match self.now_us.compare_exchange_weak(
                current,
                next,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return next,
                Err(actual) => current = actual,
            }
        }
    }

    /// Move time forward by `dt` (whole microseconds, rounded down).
    pub fn advance(&self, dt: Duration) -> u64 {
        self.advance_us(u64::try_from(dt.as_micros()).unwrap_or(u64::MAX))
    }

    /// Move time forward to `t_us`; a `t_us` in the past leaves the clock alone, because
    /// simulated time never runs backwards. Returns the new time.
    pub fn advance_to_us(&self, t_us: u64) -> u64 {
        self.now_us.fetch_max(t_us, Ordering::SeqCst).max(t_us)
    }
}

/// An `embedded_hal` delay that advances a [`SimClock`] instead of sleeping, so a driver's
/// "wait 600 ms" takes no wall time and the simulated chip sees the time pass.
///
/// Delays are rounded up to whole microseconds: a driver that waits must never see less time
/// pass than it asked for.
#[derive(Debug, Clone)]
pub struct SimDelay {
    clock: SimClock,
}

impl SimDelay {
    /// A delay advancing `clock`.
    pub fn new(clock: SimClock) -> Self {
        SimDelay { clock }
    }
}

impl DelayNs for SimDelay {
    fn delay_ns(&mut self, ns: u32) {
        self.clock.advance_us(u64::from(ns).div_ceil(1000));
    }

    fn delay_us(&mut self, us: u32) {
        self.clock.advance_us(u64::from(us));
    }

    fn delay_ms(&mut self, ms: u32) {
        self.clock.advance_us(u64::from(ms) * 1000);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_time_and_delay_advances_it() {
        let clock = SimClock::new();
        let other = clock.clone();
        let mut delay = SimDelay::new(clock.clone());
        delay.delay_ms(600);
        delay.delay_us(5);
        delay.delay_ns(1); // rounds up to 1 µs
        assert_eq!(other.now_us(), 600_006);
        assert_eq!(
            other.advance_to_us(10),
            600_006,
            "time never runs backwards"
        );
        assert_eq!(other.advance_to_us(700_000), 700_000);
        assert_eq!(clock.advance(Duration::from_millis(1)), 701_000);
    }

    #[test]
    fn clock_is_shared_across_threads() {
        let clock = SimClock::starting_at(5);
        let worker = clock.clone();
        let handle = std::thread::spawn(move || worker.advance_us(10));
        assert_eq!(handle.join().ok(), Some(15));
        assert_eq!(clock.now_us(), 15);
    }
}
