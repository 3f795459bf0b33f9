//! Exponential back-off with jitter, for reconnecting to brokers and reopening ports.
//!
//! Every retry loop in the agent sleeps through one of these: a failing device or broker must
//! never turn the agent into a busy loop, and many gateways restarting together (a city-wide
//! power cut) must not reconnect in lockstep, hence the jitter.

use std::time::Duration;

use rand::Rng;

/// Delays that start at `min`, double after each failure up to `max`, with ±20 % jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A back-off from `min` doubling to `max`.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The delay to wait now; the one after it will be twice as long (up to `max`).
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let jitter = rand::thread_rng().gen_range(0.8..1.2);
        base.mul_f64(jitter).min(self.max)
    }

    /// Back to `min` after a success.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_bounded_jitter() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let expected = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0];
        for e in expected {
            let d = b.next_delay().as_secs_f64();
            assert!(
                d >= e * 0.8 - 1e-9 && d <= (e * 1.2).min(60.0) + 1e-9,
                "{d} vs {e}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(1200));
    }
}
