//! Sensor health rules of one device, as stateful events (`active`, then `cleared`).
//!
//! - `sensor_offline` for the whole node: nothing heard for `node_silent_after` (30 s by
//!   default), including a node never heard since the agent started.
//! - `sensor_offline` for one channel: no samples for three expected intervals while the node
//!   itself talks. A node batches samples, so the interval is the larger of the sample period
//!   and the span of the last batch, and never under one second: three sample periods of a
//!   50 Hz channel (60 ms) would fire between every two batches.
//! - `sensor_fault`: a Fault frame; cleared by the next good sample of the channel.
//! - `frames_lost`: gaps in the node's frame counter (a noisy line); cleared after a minute
//!   without loss. The counts also go to `health`.

use towerlink_firmware::protocol::FaultCode;

use super::Channel;
use crate::feed::{Event, EventState, Message, Severity, UnixMillis};

/// A frames_lost condition clears after this long without loss.
const LOSS_QUIET_MS: i64 = 60_000;
/// The shortest channel timeout.
const MIN_CHANNEL_TIMEOUT_MS: f64 = 3_000.0;

#[derive(Debug, Clone, Default)]
struct ChannelHealth {
    last_sample: Option<UnixMillis>,
    /// Expected time between deliveries, ms.
    interval_ms: f64,
    offline_since: Option<UnixMillis>,
    fault: Option<(FaultCode, UnixMillis)>,
}

/// The health state of one device.
#[derive(Debug, Clone)]
pub struct DeviceHealth {
    silent_after: i64,
    started: UnixMillis,
    last_alive: Option<UnixMillis>,
    offline_since: Option<UnixMillis>,
    channels: Vec<ChannelHealth>,
    loss_since: Option<UnixMillis>,
    last_loss: UnixMillis,
    lost_in_episode: u64,
}

fn push(out: &mut Vec<Message>, dev: &str, event: Event) {
    out.push(Message::Event {
        dev: dev.to_owned(),
        event,
    });
}

impl DeviceHealth {
    /// Health of a device watched since `now`.
    pub fn new(now: UnixMillis, silent_after_ms: i64) -> DeviceHealth {
        DeviceHealth {
            silent_after: silent_after_ms,
            started: now,
            last_alive: None,
            offline_since: None,
            channels: Vec::new(),
            loss_since: None,
            last_loss: 0,
            lost_in_episode: 0,
        }
    }

    /// The wall clock stepped by `step_ms`: every time held moves with it, so that no timer
    /// fires (or is held back) because of the step.
    pub fn shift(&mut self, step_ms: i64) {
        let sh = |t: &mut UnixMillis| *t = t.saturating_add(step_ms);
        sh(&mut self.started);
        sh(&mut self.last_loss);
        for t in [
            &mut self.last_alive,
            &mut self.offline_since,
            &mut self.loss_since,
        ]
        .into_iter()
        .flatten()
        {
            sh(t);
        }
        for c in &mut self.channels {
            for t in [&mut c.last_sample, &mut c.offline_since]
                .into_iter()
                .flatten()
            {
                sh(t);
            }
            if let Some((_, t)) = c.fault.as_mut() {
                sh(t);
            }
        }
    }

    /// The node's channels are (newly) known.
    pub fn set_channels(&mut self, channels: &[Channel], now: UnixMillis) {
        self.channels = channels
            .iter()
            .map(|c| ChannelHealth {
                last_sample: Some(now),
                interval_ms: 1000.0 / f64::from(c.rate_hz.max(1)),
                ..ChannelHealth::default()
            })
            .collect();
    }

    /// Any valid frame was received.
    pub fn on_alive(&mut self, ts: UnixMillis, out: &mut Vec<Message>, dev: &str) {
        self.last_alive = Some(ts);
        if let Some(since) = self.offline_since.take() {
            let mut e = Event::new(ts, "sensor_offline", Severity::Major, EventState::Cleared);
            e.since = Some(since);
            push(out, dev, e);
        }
    }

    /// Samples of channel `slot` arrived; `span_ms` is the time they cover.
    pub fn on_samples(
        &mut self,
        slot: usize,
        now: UnixMillis,
        span_ms: f64,
        channels: &[Channel],
        out: &mut Vec<Message>,
        dev: &str,
    ) {
        let Some(ch) = self.channels.get_mut(slot) else {
            return;
        };
        ch.last_sample = Some(now);
        ch.interval_ms = ch.interval_ms.max(span_ms);
        let name = channels.get(slot).map(|c| c.name.clone());
        if let Some(since) = ch.offline_since.take() {
            let mut e = Event::new(now, "sensor_offline", Severity::Major, EventState::Cleared);
            e.since = Some(since);
            e.ch = name.clone();
            push(out, dev, e);
        }
        if let Some((code, since)) = ch.fault.take() {
            let mut e = Event::new(now, "sensor_fault", Severity::Major, EventState::Cleared);
            e.since = Some(since);
            e.ch = name;
            e.detail = Some(serde_json::json!({ "code": code.name() }));
            push(out, dev, e);
        }
    }

    /// A Fault frame arrived for `channel` (`slot` if the channel is known).
    #[allow(clippy::too_many_arguments)]
    pub fn on_fault(
        &mut self,
        slot: Option<usize>,
        channel: u8,
        code: FaultCode,
        ts: UnixMillis,
        channels: &[Channel],
        out: &mut Vec<Message>,
        dev: &str,
    ) {
        let name = slot
            .and_then(|s| channels.get(s))
            .map(|c| c.name.clone())
            .unwrap_or_else(|| format!("ch{channel}"));
        if let Some(ch) = slot.and_then(|s| self.channels.get_mut(s)) {
            match ch.fault {
                Some((active, _)) if active == code => return,
                _ => ch.fault = Some((code, ts)),
            }
        }
        let mut e = Event::new(ts, "sensor_fault", Severity::Major, EventState::Active);
        e.since = Some(ts);
        e.ch = Some(name);
        e.detail = Some(serde_json::json!({ "code": code.name() }));
        push(out, dev, e);
    }

    /// Frames were lost.
    pub fn on_frames_lost(
        &mut self,
        count: u64,
        ts: UnixMillis,
        out: &mut Vec<Message>,
        dev: &str,
    ) {
        self.last_loss = ts;
        self.lost_in_episode += count;
        if self.loss_since.is_none() {
            self.loss_since = Some(ts);
            let mut e = Event::new(ts, "frames_lost", Severity::Minor, EventState::Active);
            e.since = Some(ts);
            e.detail = Some(serde_json::json!({ "lost": count }));
            push(out, dev, e);
        }
    }

    /// Time-based rules.
    pub fn tick(
        &mut self,
        now: UnixMillis,
        channels: &[Channel],
        out: &mut Vec<Message>,
        dev: &str,
    ) {
        if self.offline_since.is_none() {
            let heard = self.last_alive.unwrap_or(self.started);
            if now - heard >= self.silent_after {
                self.offline_since = Some(heard);
                let mut e = Event::new(now, "sensor_offline", Severity::Major, EventState::Active);
                e.since = Some(heard);
                e.detail = Some(serde_json::json!({ "silent_s": (now - heard) / 1000 }));
                push(out, dev, e);
            }
        }
        if self.offline_since.is_none() {
            for (slot, ch) in self.channels.iter_mut().enumerate() {
                let Some(last) = ch.last_sample else { continue };
                let timeout = (3.0 * ch.interval_ms).max(MIN_CHANNEL_TIMEOUT_MS) as i64;
                if ch.offline_since.is_none() && ch.fault.is_none() && now - last >= timeout {
                    ch.offline_since = Some(last);
                    let mut e =
                        Event::new(now, "sensor_offline", Severity::Major, EventState::Active);
                    e.since = Some(last);
                    e.ch = channels.get(slot).map(|c| c.name.clone());
                    push(out, dev, e);
                }
            }
        }
        if let Some(since) = self.loss_since {
            if now - self.last_loss >= LOSS_QUIET_MS {
                let mut e = Event::new(now, "frames_lost", Severity::Minor, EventState::Cleared);
                e.since = Some(since);
                e.detail = Some(serde_json::json!({ "lost": self.lost_in_episode }));
                push(out, dev, e);
                self.loss_since = None;
                self.lost_in_episode = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use towerlink_firmware::protocol::Quantity;

    fn events(out: &[Message]) -> Vec<(String, &'static str, EventState, Option<String>)> {
        out.iter()
            .filter_map(|m| match m {
                Message::Event { dev, event } => {
                    Some((dev.clone(), event.event, event.state, event.ch.clone()))
                }
                _ => None,
            })
            .collect()
    }

    fn strain() -> Vec<Channel> {
        vec![Channel {
            id: 0,
            name: "strain".into(),
            quantity: Quantity::Strain,
            rate_hz: 50,
        }]
    }

    #[test]
    fn a_silent_node_goes_offline_after_30s_and_clears_when_heard() {
        let mut h = DeviceHealth::new(0, 30_000);
        let mut out = Vec::new();
        h.on_alive(1_000, &mut out, "p1");
        h.tick(30_999, &[], &mut out, "p1");
        assert!(out.is_empty());
        h.tick(31_000, &[], &mut out, "p1");
        h.tick(40_000, &[], &mut out, "p1");
        assert_eq!(
            events(&out),
            vec![("p1".into(), "sensor_offline", EventState::Active, None)]
        );
        h.on_alive(41_000, &mut out, "p1");
        assert_eq!(
            events(&out)[1],
            ("p1".into(), "sensor_offline", EventState::Cleared, None)
        );
    }

    #[test]
    fn a_node_never_heard_goes_offline() {
        let mut h = DeviceHealth::new(5_000, 30_000);
        let mut out = Vec::new();
        h.tick(35_000, &[], &mut out, "p1");
        assert_eq!(events(&out).len(), 1);
    }

    #[test]
    fn a_quiet_channel_goes_offline_but_not_between_batches() {
        let ch = strain();
        let mut h = DeviceHealth::new(0, 30_000);
        h.set_channels(&ch, 0);
        let mut out = Vec::new();
        for t in (0..10_000).step_by(640) {
            h.on_alive(t, &mut out, "p1");
            h.on_samples(0, t, 640.0, &ch, &mut out, "p1");
            h.tick(t + 600, &ch, &mut out, "p1");
        }
        assert!(out.is_empty(), "{:?}", events(&out));
        h.on_alive(20_000, &mut out, "p1"); // Status frames keep the node alive
        h.tick(20_000, &ch, &mut out, "p1");
        assert_eq!(
            events(&out),
            vec![(
                "p1".into(),
                "sensor_offline",
                EventState::Active,
                Some("strain".into())
            )]
        );
        h.on_samples(0, 21_000, 640.0, &ch, &mut out, "p1");
        assert_eq!(events(&out)[1].2, EventState::Cleared);
    }

    #[test]
    fn a_fault_is_raised_once_and_cleared_by_a_good_sample() {
        let ch = strain();
        let mut h = DeviceHealth::new(0, 30_000);
        h.set_channels(&ch, 0);
        let mut out = Vec::new();
        h.on_fault(
            Some(0),
            0,
            FaultCode::NotResponding,
            100,
            &ch,
            &mut out,
            "p1",
        );
        h.on_fault(
            Some(0),
            0,
            FaultCode::NotResponding,
            10_100,
            &ch,
            &mut out,
            "p1",
        );
        assert_eq!(out.len(), 1);
        h.on_samples(0, 11_000, 640.0, &ch, &mut out, "p1");
        assert_eq!(
            events(&out)[1],
            (
                "p1".into(),
                "sensor_fault",
                EventState::Cleared,
                Some("strain".into())
            )
        );
    }

    #[test]
    fn frame_loss_is_one_episode_until_a_quiet_minute() {
        let mut h = DeviceHealth::new(0, 30_000);
        let mut out = Vec::new();
        h.on_frames_lost(2, 1_000, &mut out, "p1");
        h.on_frames_lost(5, 30_000, &mut out, "p1");
        h.on_alive(88_000, &mut out, "p1");
        h.tick(89_000, &[], &mut out, "p1");
        assert_eq!(out.len(), 1);
        h.on_alive(89_500, &mut out, "p1");
        h.tick(90_000, &[], &mut out, "p1");
        assert_eq!(out.len(), 2);
        let Message::Event { event, .. } = &out[1] else {
            panic!("not an event")
        };
        assert_eq!(event.state, EventState::Cleared);
        assert_eq!(event.detail, Some(serde_json::json!({ "lost": 7 })));
    }
}
