//! The gateway's own health report (`{root}/{gw}/health`, QoS 0, not queued).
//!
//! Built from the counters every stage keeps in atomics, so producing it never stops a
//! source or the pipeline. A source is `ok` while it delivers frames cleanly, `degraded` when
//! it lost or dropped frames since the previous report, `offline` when its port is closed or
//! it has been silent for `node_silent_after`.
//!
//! [`HealthDiff`] decides what goes out (pure, time as an argument): a full report at start,
//! after every new MQTT session and every `health.full`; in between a delta with only what
//! changed since that full report (`"delta": true`, `"full"` = the `ts` of the full report it
//! is relative to).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::feed::{now_millis, rfc3339, FEED_VERSION};
use crate::pipeline::PipelineStats;
use crate::queue::Queue;
use crate::sources::SourceStats;
use crate::uplink::UplinkStats;
use crate::values;

/// `[health]`: the gateway's own health report.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// How often `health` is published (at least 1s).
    #[serde(
        default = "default_health_interval",
        deserialize_with = "values::de_duration_in::<_, 1_000, { u64::MAX }>"
    )]
    pub interval: Duration,
    /// A node that sends nothing at all for this long is reported `sensor_offline`.
    #[serde(
        default = "default_node_silence",
        deserialize_with = "values::de_duration"
    )]
    pub node_silent_after: Duration,
    /// How often a full report goes out; the reports in between carry only what changed
    /// since the last full one (`0s`: every report full, as before v1.1).
    #[serde(
        default = "default_health_full",
        deserialize_with = "values::de_duration"
    )]
    pub full: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: default_health_interval(),
            node_silent_after: default_node_silence(),
            full: default_health_full(),
        }
    }
}

fn default_health_full() -> Duration {
    Duration::from_secs(3600)
}

/// The keys every delta report carries whether or not they changed.
pub const DELTA_ALWAYS: [&str; 4] = ["v", "gw", "ts", "uptime_s"];

/// Full reports and the deltas between them (no I/O, no clock of its own).
#[derive(Debug, Clone)]
pub struct HealthDiff {
    full_every_ms: u64,
    /// The last full report sent and when (monotonic ms).
    base: Option<(u64, Value)>,
}

impl HealthDiff {
    /// A full report every `full` (zero: every report is full).
    pub fn new(full: Duration) -> HealthDiff {
        HealthDiff {
            full_every_ms: u64::try_from(full.as_millis()).unwrap_or(u64::MAX),
            base: None,
        }
    }

    /// What to publish for the full report `report` made at `now_ms` (monotonic): the report
    /// itself when a full one is due (the first, `full` after the last, or a new MQTT session
    /// since, seen in `mqtt.connects`), else its delta against the last full one.
    pub fn next(&mut self, report: Value, now_ms: u64) -> Value {
        if let Some((at, base)) = &self.base {
            let same_session = base.pointer("/mqtt/connects") == report.pointer("/mqtt/connects");
            if self.full_every_ms > 0
                && now_ms.saturating_sub(*at) < self.full_every_ms
                && same_session
            {
                return delta(base, &report);
            }
        }
        self.base = Some((now_ms, report.clone()));
        report
    }
}

/// The delta of full report `now` against full report `base`: [`DELTA_ALWAYS`] of `now`,
/// `"delta": true`, `"full"`: the `ts` of `base`, and `"changed"`: every other key whose
/// value differs (objects compared key by key, anything else as a whole; a key gone is
/// `null`).
pub fn delta(base: &Value, now: &Value) -> Value {
    let mut changed = match (base, now) {
        (Value::Object(b), Value::Object(n)) => diff_objects(b, n),
        _ => serde_json::Map::new(),
    };
    let mut out = serde_json::Map::new();
    for key in DELTA_ALWAYS {
        changed.remove(key);
        if let Some(v) = now.get(key) {
            out.insert(key.to_owned(), v.clone());
        }
    }
    out.insert("delta".to_owned(), Value::Bool(true));
    out.insert(
        "full".to_owned(),
        base.get("ts").cloned().unwrap_or(Value::Null),
    );
    out.insert("changed".to_owned(), Value::Object(changed));
    Value::Object(out)
}

/// What a platform makes of a delta: `full` (the full report it names) with the delta's
/// `changed` laid over it, key by key into objects, `null` removing a key, and the delta's
/// [`DELTA_ALWAYS`] keys. A full report (no `"delta": true`) is returned as it is.
pub fn merge(full: &Value, delta: &Value) -> Value {
    if delta.get("delta") != Some(&Value::Bool(true)) {
        return delta.clone();
    }
    let mut out = full.clone();
    if let Some(changed) = delta.get("changed") {
        overlay(&mut out, changed);
    }
    if let Some(obj) = out.as_object_mut() {
        for key in DELTA_ALWAYS {
            if let Some(v) = delta.get(key) {
                obj.insert(key.to_owned(), v.clone());
            }
        }
    }
    out
}

fn overlay(into: &mut Value, over: &Value) {
    match (into, over) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match (a.get_mut(k), v) {
                    (_, Value::Null) => {
                        a.remove(k);
                    }
                    (Some(existing @ Value::Object(_)), Value::Object(_)) => overlay(existing, v),
                    _ => {
                        a.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}

fn diff_objects(
    base: &serde_json::Map<String, Value>,
    now: &serde_json::Map<String, Value>,
) -> serde_json::Map<String, Value> {
    let mut out = serde_json::Map::new();
    for (k, v) in now {
        match (base.get(k), v) {
            (Some(b), v) if b == v => {}
            (Some(Value::Object(b)), Value::Object(n)) => {
                out.insert(k.clone(), Value::Object(diff_objects(b, n)));
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    for k in base.keys() {
        if !now.contains_key(k) {
            out.insert(k.clone(), Value::Null);
        }
    }
    out
}

fn default_health_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_node_silence() -> Duration {
    Duration::from_secs(30)
}

/// One watched source.
#[derive(Debug, Clone)]
pub struct SourceEntry {
    /// Device id.
    pub dev: String,
    /// `serial_node`, `modbus_lift`, `i2c`.
    pub kind: &'static str,
    /// Port or bus.
    pub port: String,
    /// Its counters.
    pub stats: Arc<SourceStats>,
}

/// Everything the report reads.
#[derive(Debug)]
pub struct HealthReporter {
    gw: String,
    started: Instant,
    silent_after_ms: u64,
    queue: Arc<Queue>,
    uplink: Arc<UplinkStats>,
    pipeline: Arc<PipelineStats>,
    sources: Vec<SourceEntry>,
    previous_errors: Mutex<BTreeMap<String, u64>>,
    replay_rate: u32,
    insecure: bool,
    protocol: crate::uplink::config::MqttProtocol,
    commands: Arc<crate::commands::CommandStats>,
    clock: Arc<crate::clock::ClockStatus>,
    client_cert: bool,
}

impl HealthReporter {
    /// A reporter over these counters.
    pub fn new(
        gw: &str,
        silent_after_ms: u64,
        queue: Arc<Queue>,
        uplink: Arc<UplinkStats>,
        pipeline: Arc<PipelineStats>,
        sources: Vec<SourceEntry>,
    ) -> HealthReporter {
        HealthReporter {
            gw: gw.to_owned(),
            started: Instant::now(),
            silent_after_ms,
            queue,
            uplink,
            pipeline,
            sources,
            previous_errors: Mutex::new(BTreeMap::new()),
            replay_rate: 0,
            insecure: false,
            protocol: crate::uplink::config::MqttProtocol::default(),
            commands: Arc::default(),
            clock: Arc::default(),
            client_cert: false,
        }
    }

    /// Reports the client certificate (`tls`: days to expiry, renewal) when the uplink uses
    /// one (mTLS).
    pub fn with_client_cert(mut self, client_cert: bool) -> HealthReporter {
        self.client_cert = client_cert;
        self
    }

    /// Reports this clock state (`clock`).
    pub fn with_clock(mut self, clock: Arc<crate::clock::ClockStatus>) -> HealthReporter {
        self.clock = clock;
        self
    }

    /// Reports the configured replay rate (`[store] replay_rate`, 0 = unlimited).
    pub fn with_replay_rate(mut self, rate: u32) -> HealthReporter {
        self.replay_rate = rate;
        self
    }

    /// Reports that the uplink runs unencrypted to a non-loopback broker (`allow_insecure`).
    pub fn with_insecure(mut self, insecure: bool) -> HealthReporter {
        self.insecure = insecure;
        self
    }

    /// Reports the MQTT version of the uplink (`[mqtt] protocol`).
    pub fn with_protocol(
        mut self,
        protocol: crate::uplink::config::MqttProtocol,
    ) -> HealthReporter {
        self.protocol = protocol;
        self
    }

    /// Reports these command counters.
    pub fn with_command_stats(
        mut self,
        stats: Arc<crate::commands::CommandStats>,
    ) -> HealthReporter {
        self.commands = stats;
        self
    }

    /// The health payload now, as JSON.
    pub fn report(&self) -> Value {
        let now = now_millis();
        let depth = self.queue.depth(now);
        let store = self.queue.store_status();
        let q = self.queue.stats();
        let get = SourceStats::get;
        let mut previous = self
            .previous_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut sources = serde_json::Map::new();
        let mut dropped = q.seq_errors.load(Ordering::Relaxed);
        let active = self
            .pipeline
            .active
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default();
        for s in &self.sources {
            let st = &s.stats;
            let errors = get(&st.lost_frames)
                + get(&st.crc_errors)
                + get(&st.undecodable)
                + get(&st.oversize)
                + get(&st.dropped_events)
                + get(&st.polls_lost);
            let last_frame = get(&st.last_frame_ms);
            let silent = last_frame == 0
                || (now.max(0) as u64).saturating_sub(last_frame) >= self.silent_after_ms;
            let status = if !st.link_up.load(Ordering::Relaxed) || silent {
                "offline"
            } else if previous.get(&s.dev).is_some_and(|&p| errors > p) {
                "degraded"
            } else {
                "ok"
            };
            previous.insert(s.dev.clone(), errors);
            dropped += get(&st.dropped_events);
            let mut entry = json!({
                    "kind": s.kind,
                    "port": s.port,
                    "status": status,
                    "frames_ok": get(&st.frames_ok),
                    "crc_errors": get(&st.crc_errors),
                    "lost_frames": get(&st.lost_frames),
                    "undecodable": get(&st.undecodable),
                    "oversize": get(&st.oversize),
                    "foreign_frames": get(&st.foreign_frames),
                    "bytes": get(&st.bytes),
                    "opens": get(&st.opens),
                    "io_errors": get(&st.io_errors),
                    "reboots": get(&st.reboots),
                    "dropped_events": get(&st.dropped_events),
                    "last_frame": (last_frame > 0).then(|| rfc3339(last_frame as i64)),
                    "conditions": active.get(&s.dev).map(|c| c.iter().cloned().collect::<Vec<_>>()).unwrap_or_default(),
                    "modbus_timeouts": get(&st.modbus_timeouts),
            });
            if s.kind == "modbus_lift" {
                if let Some(obj) = entry.as_object_mut() {
                    for (key, counter) in [
                        ("polls_ok", &st.polls_ok),
                        ("polls_lost", &st.polls_lost),
                        ("modbus_truncated", &st.modbus_truncated),
                        ("modbus_exceptions", &st.modbus_exceptions),
                        ("modbus_retries", &st.modbus_retries),
                        ("late_answers", &st.late_answers),
                        ("max_poll_gap_ms", &st.max_poll_gap_ms),
                    ] {
                        obj.insert(key.to_owned(), get(counter).into());
                    }
                }
            }
            sources.insert(s.dev.clone(), entry);
        }
        let mut report = json!({
            "v": FEED_VERSION,
            "gw": self.gw,
            "ts": rfc3339(now),
            "agent": env!("CARGO_PKG_VERSION"),
            "uptime_s": self.started.elapsed().as_secs(),
            "queue": {
                "depth": depth.messages,
                "bytes": depth.bytes,
                "oldest_age_s": depth.oldest_age_ms.map(|ms| ms as f64 / 1000.0),
                "last_seq": self.queue.last_seq(),
                "disk_bytes": store.disk_bytes,
                "segments": store.segments,
                "fsync": store.fsync,
                "replay_rate": self.replay_rate,
                "evicted": q.evicted.load(Ordering::Relaxed),
                "corrupted": q.corrupted.load(Ordering::Relaxed),
                "torn": q.torn.load(Ordering::Relaxed),
                "memory_only": q.memory_only.load(Ordering::Relaxed),
                "store_errors": q.store_errors.load(Ordering::Relaxed),
                "error": store.error,
            },
            "messages": {
                "queued": q.queued.load(Ordering::Relaxed),
                "published": self.uplink.published.load(Ordering::Relaxed),
                "dropped": dropped,
                "evicted": q.evicted.load(Ordering::Relaxed),
            },
            "mqtt": {
                "connects": self.uplink.connects.load(Ordering::Relaxed),
                "connection_errors": self.uplink.connection_errors.load(Ordering::Relaxed),
                "commands": self.uplink.commands.load(Ordering::Relaxed),
                "insecure": self.insecure,
                "protocol": self.protocol.to_string(),
                "oversize_packets": self.uplink.oversize_packets.load(Ordering::Relaxed),
                "publish_refused": self.uplink.publish_refused.load(Ordering::Relaxed),
                "batches": self.uplink.batches.load(Ordering::Relaxed),
                "sent_bytes": self.uplink.sent_bytes.load(Ordering::Relaxed),
            },
            "commands": {
                "accepted": self.commands.accepted.load(Ordering::Relaxed),
                "refused": self.commands.refused.load(Ordering::Relaxed),
                "rate_limited": self.commands.rate_limited.load(Ordering::Relaxed),
            },
            "pipeline": {
                "late_samples": self.pipeline.late_samples.load(Ordering::Relaxed),
                "unknown_channel_samples": self.pipeline.unknown_channel_samples.load(Ordering::Relaxed),
                "spikes": self.pipeline.spikes.load(Ordering::Relaxed),
                "out_of_range": self.pipeline.out_of_range.load(Ordering::Relaxed),
            },
            "sources": sources,
            "clock": self.clock.health_json(),
        });
        if self.client_cert {
            if let Some(obj) = report.as_object_mut() {
                obj.insert("tls".to_owned(), self.uplink.tls.health_json(now / 1000));
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(ts: &str, uptime: u64, frames: u64, connects: u64) -> Value {
        json!({"v": 1, "gw": "gw-1", "ts": ts, "agent": "0.1.0", "uptime_s": uptime,
            "mqtt": {"connects": connects, "insecure": false},
            "queue": {"depth": 0, "error": null},
            "sources": {"a": {"frames_ok": frames, "crc_errors": 0, "conditions": []},
                        "b": {"frames_ok": 7, "crc_errors": 0, "conditions": ["x"]}}})
    }

    #[test]
    fn a_delta_carries_what_changed_and_the_keys_always_present() {
        let base = report("T1", 60, 100, 1);
        let now = report("T2", 120, 160, 1);
        assert_eq!(
            delta(&base, &now),
            json!({"v": 1, "gw": "gw-1", "ts": "T2", "uptime_s": 120, "delta": true,
                "full": "T1", "changed": {"sources": {"a": {"frames_ok": 160}}}})
        );
        assert_eq!(merge(&base, &delta(&base, &now)), now, "merge undoes delta");
        let mut gone = now.clone();
        gone["sources"].as_object_mut().map(|s| s.remove("b"));
        gone["sources"]["a"]["conditions"] = json!(["sensor_offline"]);
        assert_eq!(merge(&base, &delta(&base, &gone)), gone);
        assert_eq!(
            delta(&base, &gone)["changed"]["sources"],
            json!({"a": {"frames_ok": 160, "conditions": ["sensor_offline"]}, "b": null})
        );
    }

    #[test]
    fn full_reports_at_start_every_full_interval_and_after_a_new_session() {
        let mut d = HealthDiff::new(Duration::from_secs(3600));
        let is_delta = |v: &Value| v.get("delta") == Some(&Value::Bool(true));
        assert!(
            !is_delta(&d.next(report("T0", 0, 0, 1), 0)),
            "first is full"
        );
        let v = d.next(report("T1", 60, 10, 1), 60_000);
        assert!(is_delta(&v) && v["full"] == "T0", "{v}");
        assert!(is_delta(&d.next(report("T2", 3599, 10, 1), 3_599_999)));
        assert!(!is_delta(&d.next(report("T3", 3600, 11, 1), 3_600_000)));
        let v = d.next(report("T4", 3660, 12, 1), 3_660_000);
        assert_eq!(v["full"], "T3");
        assert!(
            !is_delta(&d.next(report("T5", 3720, 12, 2), 3_720_000)),
            "a new session gets a full report"
        );
        let mut always = HealthDiff::new(Duration::ZERO);
        always.next(report("T0", 0, 0, 1), 0);
        assert!(!is_delta(&always.next(report("T1", 60, 0, 1), 60_000)));
    }
}
