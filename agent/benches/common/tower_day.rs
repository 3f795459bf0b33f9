//! The simulated tower day shared by the `tower_day` bench (bytes, throughput) and the
//! `tower_day_alarms` test (the alarm-accuracy claim): the scenario, the configuration, the
//! samples as a source delivers them, one run through the pipeline, and the threshold events
//! the scenario's truth calls for.
//!
//! One panel for 24 h (strain 50 Hz, tilt X/Y 10 Hz, temperature 1 Hz) from the simulator's
//! physical model, with a bracket that loosens (tilt creeps up 1.0 deg over two hours, then is
//! re-fixed and comes back) and rare large tilt spikes that must not raise an alarm. The
//! pipeline runs at default settings plus a tilt alarm.

#![allow(dead_code)] // each user takes the parts it needs

use std::sync::Arc;

use towerlink_agent::config::Config;
use towerlink_agent::feed::Message;
use towerlink_agent::pipeline::{Pipeline, PipelineStats};
use towerlink_agent::sources::{DeviceKey, SourceEvent};
use towerlink_firmware::protocol::{ChannelInfo, Quantity};
use towerlink_sim_chips::Scenario;

/// Length of the day, s.
pub const DAY_S: u64 = 86_400;
/// Start of the day, Unix ms (2026-11-28T00:00:00Z).
pub const T0_MS: f64 = 1_795_824_000_000.0;
const SCENARIO: &str = r#"
seed = 20261128
start_hour = 0.0
[[panels]]
name = "panel-n12"
node = 12
base_tilt_x_deg = 0.01
[[panels.faults]]
kind = "slow_tilt"
at_s = 7200.0
until_s = 14400.0
axis = "x"
rate_deg_per_hour = 0.5
[[panels.faults]]
kind = "slow_tilt"
at_s = 50400.0
until_s = 57600.0
axis = "x"
rate_deg_per_hour = -0.5
[[panels.faults]]
kind = "spikes"
at_s = 0.0
channel = "tilt_x"
rate_per_s = 0.01
magnitude = 1.5
"#;

/// The panel's channels: (channel id, quantity, rate in Hz).
pub const CHANNELS: [(u8, Quantity, u64); 4] = [
    (0, Quantity::Strain, 50),
    (1, Quantity::TiltX, 10),
    (2, Quantity::TiltY, 10),
    (3, Quantity::Temperature, 1),
];

/// The threshold events (severity, state) the scenario's truth calls for, in order: the
/// bracket's creep climbs through minor, major and critical, comes back down through major
/// and minor, and clears; the spikes raise nothing.
pub const TRUTH: [(&str, &str); 6] = [
    ("minor", "active"),
    ("major", "active"),
    ("critical", "active"),
    ("major", "active"),
    ("minor", "active"),
    ("minor", "cleared"),
];

/// The gateway configuration: defaults plus a tilt alarm.
pub fn config() -> Config {
    Config::parse(
        r#"[gateway]
id = "sh-ja-0001"
[mqtt]
url = "mqtt://127.0.0.1"
[store]
path = "/tmp/towerlink-bench"
[[node]]
id = "panel-n12"
port = "/dev/null"
[node.channels.tilt_x]
alarm = { minor = 0.2, major = 0.5, critical = 0.8, hysteresis = 0.02, for = "2s" }
"#,
        "tower_day",
    )
    .expect("tower_day config")
}

/// Every sample of the day of the channels with the given ids, as the source would deliver
/// them (batches of 32 per channel, in time order), and the number of samples.
pub fn day_of_samples(channel_ids: &[u8]) -> (Vec<SourceEvent>, u64) {
    let scenario = Scenario::from_toml_str(SCENARIO).expect("scenario");
    let model = scenario.panel_model(&scenario.panels[0]).expect("model");
    let mut events = Vec::new();
    let mut total = 0u64;
    for (channel, _, rate_hz) in CHANNELS {
        if !channel_ids.contains(&channel) {
            continue;
        }
        let period_us = 1_000_000 / rate_hz;
        let n = DAY_S * rate_hz;
        let mut k = 0;
        while k < n {
            let batch = (n - k).min(32);
            let values: Vec<f32> = (k..k + batch)
                .map(|i| {
                    let s = model.sample(i * period_us);
                    match channel {
                        0 => s.strain_ue,
                        1 => s.tilt_x_deg,
                        2 => s.tilt_y_deg,
                        _ => s.temperature_c,
                    }
                })
                .collect();
            events.push(SourceEvent::Samples {
                dev: DeviceKey::Node(0),
                channel,
                t0: T0_MS + (k * period_us) as f64 / 1000.0,
                period_ms: period_us as f64 / 1000.0,
                values,
            });
            total += batch;
            k += batch;
        }
    }
    // Deliver in time order, as the channels of one node interleave on the line.
    events.sort_by(|a, b| match (a, b) {
        (SourceEvent::Samples { t0: x, .. }, SourceEvent::Samples { t0: y, .. }) => x.total_cmp(y),
        _ => std::cmp::Ordering::Equal,
    });
    (events, total)
}

/// The node's Hello announcing the channels with the given ids.
pub fn hello(channel_ids: &[u8]) -> SourceEvent {
    SourceEvent::Hello {
        dev: DeviceKey::Node(0),
        fw: (1, 0, 0),
        channels: CHANNELS
            .iter()
            .filter(|(id, _, _)| channel_ids.contains(id))
            .map(|&(id, quantity, rate_hz)| ChannelInfo {
                id,
                quantity,
                rate_hz: rate_hz as u16,
            })
            .collect(),
    }
}

/// One run of the day through a fresh pipeline: the Hello, every batch (with the node's
/// liveness), a tick every second of node time, and the final flush.
pub fn run_day(config: &Config, hello: &SourceEvent, events: &[SourceEvent]) -> Vec<Message> {
    let stats = Arc::new(PipelineStats::default());
    let mut pipeline = Pipeline::new(
        config.devices(),
        config.health.node_silent_after,
        T0_MS as i64,
        stats,
    );
    let mut out = Vec::with_capacity(20_000);
    pipeline.handle(hello.clone(), T0_MS as i64, &mut out);
    let mut next_tick = T0_MS;
    for e in events {
        let SourceEvent::Samples { t0, .. } = e else {
            continue;
        };
        let now = *t0 as i64;
        pipeline.handle(
            SourceEvent::Alive {
                dev: DeviceKey::Node(0),
                ts: now,
            },
            now,
            &mut out,
        );
        pipeline.handle(e.clone(), now, &mut out);
        if *t0 >= next_tick {
            pipeline.tick(now, &mut out);
            next_tick = *t0 + 1000.0;
        }
    }
    pipeline.flush(&mut out);
    out
}

/// The threshold events among `messages`, as (severity, state).
pub fn thresholds(messages: &[Message]) -> Vec<(String, String)> {
    messages
        .iter()
        .filter_map(|m| match m {
            Message::Event { event, .. } if event.event == "threshold" => Some((
                format!("{:?}", event.severity).to_lowercase(),
                format!("{:?}", event.state).to_lowercase(),
            )),
            _ => None,
        })
        .collect()
}

/// [`TRUTH`] as owned strings, to compare with [`thresholds`].
pub fn truth() -> Vec<(String, String)> {
    TRUTH
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}
