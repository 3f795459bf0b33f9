//! The replay pacer: token buckets limiting how fast queued telemetry is published.
//!
//! After an outage the disk queue may hold hours of telemetry; sending it all at once would
//! swamp a 4G modem and the platform's ingestion. Telemetry takes one token per message at
//! `replay_rate` tokens per second (burst: a tenth of a second's worth); events and replies
//! take none, so a live alarm never waits behind the backlog.
//!
//! The same bucket counts bytes for `[store] replay_bytes_rate`: each telemetry publish (a
//! window alone, a lift status, a whole compressed batch) takes its topic and payload bytes
//! once it is made ([`Pacer::take_n`]); the bucket may go into debt by one publish, and no
//! more telemetry goes until it is refilled. So a batch of any size is never held forever,
//! and the bytes per second hold over time.

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
        Pacer::per_second(u64::from(rate), now)
    }

    /// A full bucket for `rate` tokens (messages or bytes) per second (0 = unlimited).
    pub fn per_second(rate: u64, now: Instant) -> Pacer {
        let rate = rate as f64;
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
        self.take_n(1);
    }

    /// `n` tokens (bytes) went; the bucket may go below zero (a debt paid back at `rate`).
    pub fn take_n(&mut self, n: u64) {
        if self.rate > 0.0 {
            self.tokens -= n as f64;
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
    fn bytes_may_run_into_debt_and_the_rate_holds() {
        let t0 = Instant::now();
        // 10 kB/s; publishes of 3 kB each: one may always start, then the debt is paid.
        let mut p = Pacer::per_second(10_000, t0);
        let mut sent = 0u64;
        for ms in 0..10_000 {
            let now = t0 + Duration::from_millis(ms);
            if p.available(now) {
                p.take_n(3_000);
                sent += 3_000;
            }
        }
        // ~10 s at 10 kB/s, plus the 1 kB burst and one publish of debt.
        assert!((100_000..=104_000).contains(&sent), "sent {sent} bytes");
        // A publish bigger than the burst waits until the debt is paid, then goes.
        let mut p = Pacer::per_second(10_000, t0);
        p.take_n(50_000);
        let w = p.wait(t0);
        assert!(
            w >= Duration::from_millis(4_900) && w <= Duration::from_millis(5_000),
            "{w:?}"
        );
        assert!(!p.available(t0 + Duration::from_millis(4_890)));
        assert!(p.available(t0 + Duration::from_millis(4_910)));
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
