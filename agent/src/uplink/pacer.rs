//! The replay pacer: a token bucket limiting how fast queued telemetry is published.
//!
//! After an outage the disk queue may hold hours of telemetry; sending it all at once would
//! swamp a 4G modem and the platform's ingestion. Telemetry takes one token per message at
//! `replay_rate` tokens per second (burst: a tenth of a second's worth); events and replies
//! take none, so a live alarm never waits behind the backlog.

use std::time::Duration;

use tokio::time::Instant;

/// A token bucket; rate 0 means no limit.
#[derive(Debug)]
pub struct Pacer {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Pacer {
    /// A full bucket for `rate` messages per second (0 = unlimited).
    pub fn new(rate: u32, now: Instant) -> Pacer {
        let rate = f64::from(rate);
        let burst = (rate / 10.0).max(1.0);
        Pacer {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.last = now;
    }

    /// May one more telemetry message go now?
    pub fn available(&mut self, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        self.refill(now);
        self.tokens >= 1.0
    }

    /// One telemetry message went.
    pub fn take(&mut self) {
        if self.rate > 0.0 {
            self.tokens -= 1.0;
        }
    }

    /// How long until the next token (zero if one is there or there is no limit).
    pub fn wait(&mut self, now: Instant) -> Duration {
        if self.available(now) {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(((1.0 - self.tokens) / self.rate).max(0.0))
            .max(Duration::from_millis(1))
    }

    /// The configured rate (0 = unlimited).
    pub fn rate(&self) -> f64 {
        self.rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_holds_over_time() {
        let t0 = Instant::now();
        let mut p = Pacer::new(100, t0);
        let mut sent = 0;
        // Simulated clock in 1 ms steps over 2 s.
        for ms in 0..2000 {
            let now = t0 + Duration::from_millis(ms);
            while p.available(now) {
                p.take();
                sent += 1;
            }
        }
        // 10 of burst plus 100/s for ~2 s.
        assert!((205..=212).contains(&sent), "sent {sent}");
    }

    #[test]
    fn zero_means_unlimited_and_wait_says_when() {
        let t0 = Instant::now();
        let mut p = Pacer::new(0, t0);
        for _ in 0..10_000 {
            assert!(p.available(t0));
            p.take();
        }
        let mut p = Pacer::new(10, t0);
        p.take();
        assert!(!p.available(t0));
        let w = p.wait(t0);
        assert!(
            w > Duration::from_millis(90) && w <= Duration::from_millis(101),
            "{w:?}"
        );
    }
}
