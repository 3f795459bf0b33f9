//! A simulated tower day through the full filter chain: bytes and messages sent versus raw
//! forwarding of every sample, alarms seen versus the scenario's truth, and throughput.
//!
//! One panel for 24 h (strain 50 Hz, tilt X/Y 10 Hz, temperature 1 Hz: 6.1 M samples) from
//! the simulator's physical model, with a bracket that loosens (tilt creeps up 1.0 deg over
//! two hours, then is re-fixed and comes back) and rare large tilt spikes that must not raise
//! an alarm. The pipeline runs at default settings plus a tilt alarm.
//!
//! Run: `cargo bench -p towerlink-agent --bench tower_day`
//! Targets (issue 4): >= 50x fewer bytes than raw forwarding, zero missed or spurious
//! alarms, full chain >= 1 M samples/s on one core.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use towerlink_agent::config::Config;
use towerlink_agent::feed::{rfc3339, Message, Topics};
use towerlink_agent::pipeline::{Pipeline, PipelineStats};
use towerlink_agent::sources::{DeviceKey, SourceEvent};
use towerlink_firmware::protocol::{ChannelInfo, Quantity};
use towerlink_sim_chips::Scenario;

const DAY_S: u64 = 86_400;
const T0_MS: f64 = 1_795_824_000_000.0; // 2026-11-28T00:00:00Z
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

fn config() -> Config {
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
        "bench",
    )
    .expect("bench config")
}

/// Every sample of the day as the source would deliver it: batches of 32 per channel.
fn day_of_samples() -> (Vec<SourceEvent>, u64) {
    let scenario = Scenario::from_toml_str(SCENARIO).expect("scenario");
    let model = scenario.panel_model(&scenario.panels[0]).expect("model");
    let mut events = Vec::new();
    let mut total = 0u64;
    for (channel, rate_hz) in [(0u8, 50u64), (1, 10), (2, 10), (3, 1)] {
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
    // Deliver in time order, as four channels of one node interleave on the line.
    events.sort_by(|a, b| match (a, b) {
        (SourceEvent::Samples { t0: x, .. }, SourceEvent::Samples { t0: y, .. }) => x.total_cmp(y),
        _ => std::cmp::Ordering::Equal,
    });
    (events, total)
}

/// What forwarding every sample as its own message would cost (topic + payload bytes).
fn raw_bytes(events: &[SourceEvent]) -> u64 {
    let topic = Topics::new("towerlink/v1", "sh-ja-0001")
        .data("panel-n12")
        .len() as u64;
    let mut bytes = 0u64;
    let mut seq = 0u64;
    for e in events {
        if let SourceEvent::Samples {
            channel,
            t0,
            period_ms,
            values,
            ..
        } = e
        {
            let q = [
                Quantity::Strain,
                Quantity::TiltX,
                Quantity::TiltY,
                Quantity::Temperature,
            ][usize::from(*channel)];
            for (i, v) in values.iter().enumerate() {
                seq += 1;
                let payload = serde_json::json!({
                    "v": 1, "gw": "sh-ja-0001", "dev": "panel-n12", "seq": seq,
                    "ts": rfc3339((t0 + i as f64 * period_ms) as i64),
                    "ch": q.name(), "u": q.unit(), "value": v,
                });
                bytes += topic + payload.to_string().len() as u64;
            }
        }
    }
    bytes
}

fn main() {
    let config = config();
    let topics = Topics::new("towerlink/v1", "sh-ja-0001");
    let t = Instant::now();
    let (events, samples) = day_of_samples();
    println!(
        "tower_day: {samples} samples of one panel-day generated in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let raw = raw_bytes(&events);

    let hello = SourceEvent::Hello {
        dev: DeviceKey::Node(0),
        fw: (1, 0, 0),
        channels: vec![
            ChannelInfo {
                id: 0,
                quantity: Quantity::Strain,
                rate_hz: 50,
            },
            ChannelInfo {
                id: 1,
                quantity: Quantity::TiltX,
                rate_hz: 10,
            },
            ChannelInfo {
                id: 2,
                quantity: Quantity::TiltY,
                rate_hz: 10,
            },
            ChannelInfo {
                id: 3,
                quantity: Quantity::Temperature,
                rate_hz: 1,
            },
        ],
    };
    let mut best = f64::MAX;
    let mut messages: Vec<Message> = Vec::new();
    for _ in 0..3 {
        let stats = Arc::new(PipelineStats::default());
        let mut pipeline = Pipeline::new(
            config.devices(),
            config.health.node_silent_after,
            T0_MS as i64,
            stats,
        );
        let mut out = Vec::with_capacity(20_000);
        pipeline.handle(hello.clone(), T0_MS as i64, &mut out);
        let start = Instant::now();
        let mut next_tick = T0_MS;
        for e in &events {
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
        best = best.min(start.elapsed().as_secs_f64());
        messages = black_box(out);
    }

    let sent: u64 = messages
        .iter()
        .enumerate()
        .map(|(i, m)| (m.topic(&topics).len() + m.render("sh-ja-0001", i as u64 + 1).len()) as u64)
        .sum();
    let thresholds: Vec<(String, String)> = messages
        .iter()
        .filter_map(|m| match m {
            Message::Event { event, .. } if event.event == "threshold" => Some((
                format!("{:?}", event.severity).to_lowercase(),
                format!("{:?}", event.state).to_lowercase(),
            )),
            _ => None,
        })
        .collect();
    let truth: Vec<(String, String)> = [
        ("minor", "active"),
        ("major", "active"),
        ("critical", "active"),
        ("major", "active"),
        ("minor", "active"),
        ("minor", "cleared"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    let other_events = messages
        .iter()
        .filter(|m| matches!(m, Message::Event { event, .. } if event.event != "threshold"))
        .count();
    println!("tower_day: raw forwarding: {samples} messages, {raw} bytes");
    println!(
        "tower_day: towerlink (defaults + tilt alarm): {} messages, {sent} bytes -> {:.0}x fewer bytes, {:.0}x fewer messages",
        messages.len(),
        raw as f64 / sent as f64,
        samples as f64 / messages.len() as f64
    );
    println!(
        "tower_day: threshold events {:?}; scenario truth {:?}: {}",
        thresholds,
        truth,
        if thresholds == truth {
            "no missed or spurious alarm"
        } else {
            "MISMATCH"
        }
    );
    println!("tower_day: other events: {other_events}");
    println!(
        "tower_day: full chain (range, Hampel, zero, alarms, windows, deadband) best of 3: {:.2} s -> {:.2} M samples/s on one core",
        best,
        samples as f64 / best / 1e6
    );
    let ok =
        raw as f64 / sent as f64 >= 50.0 && thresholds == truth && samples as f64 / best >= 1e6;
    println!(
        "tower_day: targets (>= 50x bytes, exact alarms, >= 1 M samples/s): {}",
        if ok { "met" } else { "NOT met" }
    );
}
