//! A token bucket: at most `burst` at once, `rate` per second on average.
//!
//! Used for platform commands (`[commands] rate`, `burst`): a broker that floods the `cmd`
//! topic, by mistake or because it is compromised, cannot keep the command handler and the
//! nodes busy; each refused command is still answered (`ok: false`, "rate limited"). Time is
//! passed in, so tests are exact.

use std::time::{Duration, Instant};

/// The bucket.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`: `burst` tokens, refilled at `rate` per second. A rate or
    /// burst of 0 is taken as 1 (the configuration refuses 0).
    pub fn new(rate: u32, burst: u32, now: Instant) -> TokenBucket {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: f64::from(rate.max(1)),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes a token if one is there at `now`.
    pub fn try_take(&mut self, now: Instant) -> bool {
        // A clock that goes backwards (it does not with Instant, but a caller may pass an
        // older value) refills nothing.
        let elapsed = now.saturating_duration_since(self.last);
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until a token is there (zero if one is).
    pub fn wait(&self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        let tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - tokens) / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 20, t0);
        assert_eq!((0..25).filter(|_| b.try_take(t0)).count(), 20);
        assert!(!b.try_take(t0));
        assert_eq!(b.wait(t0), Duration::from_millis(100));
        // 100 ms later: exactly one more.
        let t1 = t0 + Duration::from_millis(100);
        assert!(b.try_take(t1));
        assert!(!b.try_take(t1));
        // Over 10 s at a steady 20/s, half are admitted (10/s).
        let admitted = (1..=200)
            .filter(|i| b.try_take(t1 + Duration::from_millis(50 * i)))
            .count();
        assert!((99..=101).contains(&admitted), "{admitted}");
        // A long quiet period refills to the burst, not beyond.
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!((0..100).filter(|_| b.try_take(t2)).count(), 20);
    }

    #[test]
    fn exactly_burst_at_once_then_one_per_period_for_any_burst() {
        for (rate, burst) in [(1u32, 1u32), (1, 4), (2, 3), (10, 20), (5, 100)] {
            let t0 = Instant::now();
            let mut b = TokenBucket::new(rate, burst, t0);
            let period = Duration::from_secs(1) / rate;
            // Exactly `burst` at once; the next is refused.
            let at_once = (0..2 * burst).filter(|_| b.try_take(t0)).count();
            assert_eq!(at_once, burst as usize, "rate {rate} burst {burst}");
            // Not before 1/rate s (a clone, so the probe does not move the bucket)...
            assert!(!b.clone().try_take(t0 + period - Duration::from_millis(1)));
            // ...then exactly one.
            let t1 = t0 + period;
            assert!(b.try_take(t1), "rate {rate} burst {burst}");
            assert!(!b.try_take(t1), "rate {rate} burst {burst}");
        }
    }

    #[test]
    fn an_older_instant_refills_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = TokenBucket::new(1, 1, t0);
        assert!(b.try_take(t0));
        assert!(!b.try_take(t0 - Duration::from_secs(5)));
        assert!(!b.try_take(t0 + Duration::from_millis(999)));
        assert!(b.try_take(t0 + Duration::from_secs(1)));
    }
}
