//! Maps a node's millisecond clock to wall-clock time.
//!
//! A node's clock is a `u32` of milliseconds since boot: it wraps after ~49.7 days and
//! restarts at 0 when the node reboots. Each frame tells us that some node time `t` had
//! passed when the frame was received at wall time `rx`, so `rx - t` is an upper bound of the
//! offset (transmission and batching only add delay). The estimate is the smallest bound
//! seen, allowed to creep up by a crystal-drift slack so that a node whose clock runs slow is
//! followed, not pinned to an old minimum.

/// How much the offset estimate may grow per elapsed millisecond (200 ppm: a poor crystal).
const DRIFT_SLACK: f64 = 200e-6;
/// A node clock that jumps back by more than this is a reboot, not jitter.
const REBOOT_JUMP_MS: i64 = 10_000;

/// The mapping of one node's clock.
#[derive(Debug, Clone, Default)]
pub struct NodeClock {
    anchor: Option<Anchor>,
}

/// The state of a mapping, as kept across restarts (see [`super::node_memory`]).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClockAnchor {
    /// The last raw node time seen.
    pub raw: u32,
    /// `raw` extended to 64 bits (counts wraps).
    pub ext: i64,
    /// Estimated `wall - ext`, ms.
    pub offset: f64,
    /// Wall time of the last observation.
    pub seen: f64,
}

type Anchor = ClockAnchor;

impl NodeClock {
    /// A clock with no observations yet.
    pub fn new() -> NodeClock {
        NodeClock::default()
    }

    /// Forgets everything (the node rebooted or the port was reopened).
    pub fn reset(&mut self) {
        self.anchor = None;
    }

    /// The mapping now (none before the first observation).
    pub fn anchor(&self) -> Option<ClockAnchor> {
        self.anchor
    }

    /// Takes up a mapping made earlier (by the last run): the node's next observations refine
    /// it as usual, and a node clock that jumped back since (a reboot) restarts it.
    pub fn restore(&mut self, anchor: ClockAnchor) {
        self.anchor = Some(anchor);
    }

    /// Records that node time `node_ms` had passed by wall time `rx_ms`. Returns `true` when
    /// the node clock jumped back (a reboot), in which case the mapping restarted.
    pub fn observe(&mut self, node_ms: u32, rx_ms: f64) -> bool {
        let Some(a) = self.anchor.as_mut() else {
            self.anchor = Some(Anchor {
                raw: node_ms,
                ext: node_ms as i64,
                offset: rx_ms - node_ms as f64,
                seen: rx_ms,
            });
            return false;
        };
        let ext = a.ext + node_ms.wrapping_sub(a.raw) as i32 as i64;
        if ext < a.ext - REBOOT_JUMP_MS {
            self.anchor = Some(Anchor {
                raw: node_ms,
                ext: node_ms as i64,
                offset: rx_ms - node_ms as f64,
                seen: rx_ms,
            });
            return true;
        }
        let bound = rx_ms - ext as f64;
        let slack = (rx_ms - a.seen).max(0.0) * DRIFT_SLACK;
        a.offset = (a.offset + slack).min(bound);
        a.seen = rx_ms;
        if ext > a.ext {
            a.ext = ext;
            a.raw = node_ms;
        }
        false
    }

    /// Wall-clock time (ms, fractional) of node time `node_ms`, or `None` before the first
    /// observation.
    pub fn to_wall(&self, node_ms: u32) -> Option<f64> {
        let a = self.anchor.as_ref()?;
        let ext = a.ext + node_ms.wrapping_sub(a.raw) as i32 as i64;
        Some(ext as f64 + a.offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WALL: f64 = 1_795_842_240_000.0;

    #[test]
    fn the_smallest_delay_wins() {
        let mut c = NodeClock::new();
        c.observe(1000, WALL + 50.0); // 50 ms late
        c.observe(2000, WALL + 1005.0); // 5 ms late
        c.observe(3000, WALL + 2300.0); // 300 ms late: ignored
        let t = c.to_wall(3000).expect("mapped");
        assert!((t - (WALL + 2005.0)).abs() < 1.0, "{}", t - WALL);
    }

    #[test]
    fn the_u32_wrap_is_continuous() {
        let mut c = NodeClock::new();
        let before = u32::MAX - 500;
        c.observe(before, WALL);
        c.observe(499, WALL + 1000.0); // wrapped: 1000 ms later
        let a = c.to_wall(before).expect("mapped");
        let b = c.to_wall(499).expect("mapped");
        assert!((b - a - 1000.0).abs() < 0.5, "{}", b - a);
        assert!((b - (WALL + 1000.0)).abs() < 0.5);
    }

    #[test]
    fn a_reboot_restarts_the_mapping() {
        let mut c = NodeClock::new();
        c.observe(3_600_000, WALL);
        assert!(c.observe(20, WALL + 5000.0));
        let t = c.to_wall(20).expect("mapped");
        assert!((t - (WALL + 5000.0)).abs() < 0.5);
    }

    #[test]
    fn a_slow_node_clock_is_followed() {
        // The node's clock runs 100 ppm slow: over an hour it falls 360 ms behind.
        let mut c = NodeClock::new();
        for s in 0..=3600u32 {
            let node = s * 1000;
            let wall = WALL + s as f64 * 1000.0 * (1.0 + 100e-6) + 2.0;
            c.observe(node, wall);
        }
        let mapped = c.to_wall(3_600_000).expect("mapped");
        let truth = WALL + 3_600_000.0 * (1.0 + 100e-6);
        assert!((mapped - truth).abs() < 5.0, "{}", mapped - truth);
    }
}
