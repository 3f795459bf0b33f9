//! The auditor's state: fed one received message at a time (topic, payload, receipt time),
//! it keeps per gateway what the platform needs to know about the feed it got. No I/O: the
//! MQTT session, the clock and the screen are in [`super`].
//!
//! Per gateway:
//! - messages, invalid messages (schema, JSON, topic, `gw`/`dev` mismatch; the first
//!   [`MAX_REASONS`] reasons kept), commands seen on `cmd`;
//! - the `seq` values seen, as ranges ([`SeqSet`]: memory grows with the number of holes,
//!   not of messages), duplicates;
//! - missing `seq` ranges between the lowest and highest seen, less those the gateway's
//!   own health counts as evicted (`queue.evicted`, summed over agent runs: a restart
//!   resets the counter, seen as `uptime_s` going down). Eviction takes the oldest
//!   telemetry first, so the lowest holes are the evicted ones;
//! - open events: the last transition of every (device, event, channel), by `seq` (a late
//!   older transition does not reopen or close anything); `clock_step` is instantaneous and
//!   never open;
//! - the last `state` (`online` / `offline`), messages marked `"clock": "unsynced"`, and
//!   the latency `receipt - end` (windows) or `receipt - ts` (everything else with a `ts`
//!   except `state`, whose retained copy may be hours old), p50/p99 from a log-linear
//!   histogram (about 3 % resolution, bounded memory).
//!
//! Batches (`{root}/{gw}/batch`: telemetry windows, zstd-compressed) are decoded and each
//! window is audited as the `data/{dev}` message it stands for (its own `seq`, schema,
//! latency from its `end`).
//!
//! [`Audit::freeze`] ends an audit: from then on only `seq` at or below the highest seen
//! so far count, so messages still in flight can fill holes without new ones opening.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::schemas::{FeedSchemas, Kind};

/// Invalid-message reasons kept per gateway.
pub const MAX_REASONS: usize = 5;

/// Longest reason kept (characters); longer ones are cut.
const MAX_REASON_LEN: usize = 300;

/// A set of `u64` kept as disjoint, non-adjacent inclusive ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqSet {
    /// start -> end (inclusive).
    ranges: BTreeMap<u64, u64>,
}

impl SeqSet {
    /// Adds `seq`; false when it was already in.
    pub fn insert(&mut self, seq: u64) -> bool {
        if self.contains(seq) {
            return false;
        }
        let below = self
            .ranges
            .range(..seq)
            .next_back()
            .map(|(s, e)| (*s, *e))
            .filter(|(_, e)| e.checked_add(1) == Some(seq));
        let above = seq
            .checked_add(1)
            .and_then(|next| self.ranges.get(&next).map(|e| (next, *e)));
        match (below, above) {
            (Some((s, _)), Some((a, e))) => {
                self.ranges.remove(&a);
                self.ranges.insert(s, e);
            }
            (Some((s, _)), None) => {
                self.ranges.insert(s, seq);
            }
            (None, Some((a, e))) => {
                self.ranges.remove(&a);
                self.ranges.insert(seq, e);
            }
            (None, None) => {
                self.ranges.insert(seq, seq);
            }
        }
        true
    }

    /// Is `seq` in?
    pub fn contains(&self, seq: u64) -> bool {
        self.ranges
            .range(..=seq)
            .next_back()
            .is_some_and(|(_, e)| *e >= seq)
    }

    /// Lowest and highest member.
    pub fn bounds(&self) -> Option<(u64, u64)> {
        let first = self.ranges.keys().next()?;
        let last = self.ranges.values().next_back()?;
        Some((*first, *last))
    }

    /// The members as ranges, ascending.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        self.ranges.iter().map(|(s, e)| (*s, *e)).collect()
    }

    /// The holes between the lowest and highest member, ascending.
    pub fn holes(&self) -> Vec<(u64, u64)> {
        let r = self.ranges();
        r.windows(2).map(|w| (w[0].1 + 1, w[1].0 - 1)).collect()
    }
}

/// Latencies in milliseconds, in log-linear buckets: 32 per power of two.
#[derive(Debug, Clone, Default)]
pub struct Latency {
    buckets: BTreeMap<u32, u64>,
    count: u64,
    negative: u64,
    max: f64,
}

const SUB_BUCKETS: f64 = 32.0;

impl Latency {
    /// Records one latency; a negative one (the sender's clock ahead of ours) counts as 0
    /// and is counted apart.
    pub fn record(&mut self, ms: f64) {
        if !ms.is_finite() {
            return;
        }
        if ms < 0.0 {
            self.negative += 1;
        }
        let v = ms.max(0.0);
        self.max = self.max.max(v);
        *self.buckets.entry(Self::bucket(v)).or_insert(0) += 1;
        self.count += 1;
    }

    fn bucket(v: f64) -> u32 {
        if v < 1.0 {
            return 0;
        }
        let octave = v.log2().floor();
        let sub = ((v / octave.exp2() - 1.0) * SUB_BUCKETS).floor();
        // Bounded: a latency of 2^60 ms is not a latency.
        (1.0 + octave.min(60.0) * SUB_BUCKETS + sub.clamp(0.0, SUB_BUCKETS - 1.0)) as u32
    }

    /// The middle of bucket `b`.
    fn value(b: u32) -> f64 {
        if b == 0 {
            return 0.5;
        }
        let i = f64::from(b - 1);
        let octave = (i / SUB_BUCKETS).floor();
        let sub = i - octave * SUB_BUCKETS;
        octave.exp2() * (1.0 + (sub + 0.5) / SUB_BUCKETS)
    }

    /// Latencies recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Latencies below zero (recorded as zero).
    pub fn negative(&self) -> u64 {
        self.negative
    }

    /// The largest.
    pub fn max(&self) -> Option<f64> {
        (self.count > 0).then_some(self.max)
    }

    /// The `p` quantile (0..=1), `None` when nothing was recorded.
    pub fn quantile(&self, p: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((p * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (b, n) in &self.buckets {
            seen += n;
            if seen >= rank {
                return Some(Self::value(*b).min(self.max));
            }
        }
        Some(self.max)
    }
}

/// An event that went `active` and has not been `cleared` (yet).
#[derive(Debug, Clone, PartialEq)]
pub struct OpenEvent {
    /// Device.
    pub dev: String,
    /// Event name.
    pub event: String,
    /// Channel, for channel events.
    pub ch: Option<String>,
    /// Severity of the last `active`.
    pub severity: String,
    /// `since` of the last `active`.
    pub since: Option<String>,
    /// `ts` of the last `active`.
    pub ts: String,
    /// `seq` of the last `active`.
    pub seq: u64,
}

/// The last transition of one (device, event, channel).
#[derive(Debug, Clone)]
struct Transition {
    seq: u64,
    open: Option<OpenEvent>,
}

/// What the audit knows of one gateway.
#[derive(Debug, Clone, Default)]
pub struct GatewayAudit {
    /// Messages received from the gateway (not counting `cmd`).
    pub messages: u64,
    /// Messages that failed a check.
    pub invalid: u64,
    /// The first reasons, `topic: reason`.
    pub reasons: Vec<String>,
    /// Commands seen on its `cmd` topic.
    pub commands: u64,
    /// `seq` seen.
    pub seqs: SeqSet,
    /// Messages whose `seq` was seen before.
    pub duplicates: u64,
    /// `seq` received only inside a merged window's `merged_seqs` (not on their own).
    pub merged: u64,
    /// Messages marked `"clock": "unsynced"`.
    pub unsynced: u64,
    /// Last `state`.
    pub state: Option<String>,
    /// Receipt minus `end` / `ts`.
    pub latency: Latency,
    /// Messages after [`Audit::freeze`] above the highest `seq` then (not counted).
    pub ignored: u64,
    events: BTreeMap<(String, String, String), Transition>,
    evicted_before: u64,
    evicted_run: u64,
    last_uptime: Option<f64>,
    cap: Option<u64>,
}

/// The missing `seq` of a gateway, split into what it counts as evicted and the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Missing {
    /// Holes not explained by evictions.
    pub gaps: Vec<(u64, u64)>,
    /// Missing `seq` the gateway counted as evicted.
    pub evicted: u64,
    /// Missing `seq` in `gaps`.
    pub missing: u64,
}

impl GatewayAudit {
    /// Evictions the gateway's health reported, over every run seen.
    pub fn evicted_reported(&self) -> u64 {
        self.evicted_before + self.evicted_run
    }

    /// The missing ranges, the lowest `evicted_reported` of them counted as evicted.
    pub fn missing(&self) -> Missing {
        let mut budget = self.evicted_reported();
        let mut out = Missing::default();
        for (first, last) in self.seqs.holes() {
            let len = last - first + 1;
            let explained = budget.min(len);
            budget -= explained;
            out.evicted += explained;
            if explained < len {
                out.gaps.push((first + explained, last));
                out.missing += len - explained;
            }
        }
        out
    }

    /// Events open now, by device, event and channel.
    pub fn open_events(&self) -> Vec<&OpenEvent> {
        self.events
            .values()
            .filter_map(|t| t.open.as_ref())
            .collect()
    }

    fn invalid(&mut self, topic: &str, reason: &str) {
        self.invalid += 1;
        if self.reasons.len() < MAX_REASONS {
            let mut r = format!("{topic}: {reason}");
            if r.chars().count() > MAX_REASON_LEN {
                r = r.chars().take(MAX_REASON_LEN).collect::<String>() + "...";
            }
            self.reasons.push(r);
        }
    }

    fn health(&mut self, json: &Value) {
        let evicted = json["queue"]["evicted"].as_u64();
        let uptime = json["uptime_s"].as_f64();
        if let (Some(up), Some(last)) = (uptime, self.last_uptime) {
            if up < last {
                // A new run of the agent: its counters start again.
                self.evicted_before += self.evicted_run;
                self.evicted_run = 0;
            }
        }
        if let Some(e) = evicted {
            self.evicted_run = self.evicted_run.max(e);
        }
        if uptime.is_some() {
            self.last_uptime = uptime;
        }
    }

    fn event(&mut self, dev: &str, seq: u64, json: &Value) {
        let (Some(event), Some(state)) = (json["event"].as_str(), json["state"].as_str()) else {
            return;
        };
        if event == "clock_step" {
            return;
        }
        let ch = json["ch"].as_str().map(str::to_owned);
        let key = (
            dev.to_owned(),
            event.to_owned(),
            ch.clone().unwrap_or_default(),
        );
        if self.events.get(&key).is_some_and(|t| t.seq >= seq) {
            return;
        }
        let open = (state == "active").then(|| OpenEvent {
            dev: dev.to_owned(),
            event: event.to_owned(),
            ch,
            severity: json["severity"].as_str().unwrap_or_default().to_owned(),
            since: json["since"].as_str().map(str::to_owned),
            ts: json["ts"].as_str().unwrap_or_default().to_owned(),
            seq,
        });
        self.events.insert(key, Transition { seq, open });
    }
}

/// Where a topic under the root points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedTopic<'a> {
    /// `{gw}`.
    pub gw: &'a str,
    /// Payload kind.
    pub kind: Kind,
    /// `{dev}`, for data, event and capture.
    pub dev: Option<&'a str>,
}

/// A topic under the root that is no feed topic: its gateway (if it has one) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadTopic<'a> {
    /// `{gw}`, when the topic has that level.
    pub gw: Option<&'a str>,
    /// Why it is not a feed topic.
    pub reason: String,
}

/// Parses `{root}/{gw}/{kind}[/{dev}]`.
pub fn parse_topic<'a>(root: &str, topic: &'a str) -> Result<FeedTopic<'a>, BadTopic<'a>> {
    let rest = topic
        .strip_prefix(root)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(|| BadTopic {
            gw: None,
            reason: format!("not under the root {root:?}"),
        })?;
    let parts: Vec<&str> = rest.split('/').collect();
    let gw = parts[0];
    let bad = |reason: String| BadTopic {
        gw: Some(gw),
        reason,
    };
    let Some(kind_name) = parts.get(1) else {
        return Err(bad("no kind level after the gateway id".to_owned()));
    };
    let kind = Kind::from_name(kind_name)
        .ok_or_else(|| bad(format!("unknown topic kind {kind_name:?}")))?;
    match (kind.has_dev(), parts.len()) {
        (true, 3) => Ok(FeedTopic {
            gw,
            kind,
            dev: Some(parts[2]),
        }),
        (false, 2) => Ok(FeedTopic {
            gw,
            kind,
            dev: None,
        }),
        (true, _) => Err(bad(format!(
            "{kind_name} topics are {{gw}}/{kind_name}/{{dev}}"
        ))),
        (false, _) => Err(bad(format!("{kind_name} topics have no level after it"))),
    }
}

/// What one message did to the audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Counted, valid.
    Valid,
    /// Counted, invalid for this reason.
    Invalid(String),
    /// A `seq` seen before.
    Duplicate,
    /// An empty payload (a retained message being cleared): nothing to audit.
    Empty,
    /// After [`Audit::freeze`], above the highest `seq` then, or without a `seq`.
    Ignored,
    /// A topic with no gateway level.
    Outside(String),
}

/// Milliseconds since the epoch of an RFC 3339 time.
fn millis(t: &str) -> Option<f64> {
    let t = humantime::parse_rfc3339(t).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    Some(d.as_secs_f64() * 1000.0)
}

/// The audit of every gateway under one root.
#[derive(Debug)]
pub struct Audit {
    root: String,
    schemas: FeedSchemas,
    gateways: BTreeMap<String, GatewayAudit>,
    outside: u64,
    frozen: bool,
}

impl Audit {
    /// An empty audit of `{root}/+/#`, checking against `schemas`.
    pub fn new(root: &str, schemas: FeedSchemas) -> Audit {
        Audit {
            root: root.to_owned(),
            schemas,
            gateways: BTreeMap::new(),
            outside: 0,
            frozen: false,
        }
    }

    /// Every gateway seen, by id.
    pub fn gateways(&self) -> &BTreeMap<String, GatewayAudit> {
        &self.gateways
    }

    /// Messages under the root without a gateway level.
    pub fn outside(&self) -> u64 {
        self.outside
    }

    /// Ends the audit: from now on only messages with a `seq` at or below each gateway's
    /// highest so far are taken (they fill holes); everything else is ignored.
    pub fn freeze(&mut self) {
        self.frozen = true;
        for g in self.gateways.values_mut() {
            g.cap = Some(g.seqs.bounds().map_or(0, |(_, last)| last));
        }
    }

    /// Does any gateway have a hole its evictions do not explain?
    pub fn has_gaps(&self) -> bool {
        self.gateways.values().any(|g| !g.missing().gaps.is_empty())
    }

    /// One message, received at `receipt_ms` (Unix milliseconds). A batch
    /// (`{root}/{gw}/batch`, see `docs/mqtt-feed.md`) is decoded and each of its windows is
    /// audited as the `data/{dev}` message it stands for; the outcome is the batch's worst.
    pub fn on_message(&mut self, topic: &str, payload: &[u8], receipt_ms: f64) -> Outcome {
        if let Some(gw) = self.batch_gateway(topic) {
            return self.on_batch(&gw, topic, payload, receipt_ms);
        }
        self.on_single(topic, payload, receipt_ms)
    }

    /// `{gw}` of a `{root}/{gw}/batch` topic.
    fn batch_gateway(&self, topic: &str) -> Option<String> {
        let rest = topic.strip_prefix(&self.root)?.strip_prefix('/')?;
        let (gw, kind) = rest.split_once('/')?;
        (kind == "batch" && !gw.is_empty()).then(|| gw.to_owned())
    }

    fn on_batch(&mut self, gw: &str, topic: &str, payload: &[u8], receipt_ms: f64) -> Outcome {
        if payload.is_empty() {
            return Outcome::Empty;
        }
        let items = match crate::feed::batch::decode(payload) {
            Ok(items) => items,
            Err(e) => {
                if self.frozen {
                    return Outcome::Ignored;
                }
                let reason = format!("batch does not decode: {e}");
                let g = self.gateways.entry(gw.to_owned()).or_default();
                g.messages += 1;
                g.invalid(topic, &reason);
                return Outcome::Invalid(reason);
            }
        };
        let mut worst = Outcome::Valid;
        for item in items {
            let dev = item["dev"].as_str().unwrap_or("").to_owned();
            let item_topic = format!("{}/{gw}/data/{dev}", self.root);
            let bytes = item.to_string().into_bytes();
            let outcome = self.on_single(&item_topic, &bytes, receipt_ms);
            worst = match (&worst, &outcome) {
                (Outcome::Invalid(_), _) => worst,
                (_, Outcome::Invalid(_)) | (Outcome::Valid, Outcome::Duplicate) => outcome,
                _ => worst,
            };
        }
        worst
    }

    fn on_single(&mut self, topic: &str, payload: &[u8], receipt_ms: f64) -> Outcome {
        let feed = match parse_topic(&self.root, topic) {
            Ok(f) => f,
            Err(BadTopic {
                gw: Some(gw),
                reason,
            }) => {
                if self.frozen {
                    return Outcome::Ignored;
                }
                let g = self.gateways.entry(gw.to_owned()).or_default();
                g.messages += 1;
                g.invalid(topic, &reason);
                return Outcome::Invalid(reason);
            }
            Err(BadTopic { gw: None, reason }) => {
                self.outside += 1;
                return Outcome::Outside(reason);
            }
        };
        if payload.is_empty() {
            return Outcome::Empty;
        }
        let json: Result<Value, _> = serde_json::from_slice(payload);
        let seq = json.as_ref().ok().and_then(|j| j["seq"].as_u64());
        if self.frozen {
            let cap = self.gateways.get(feed.gw).and_then(|g| g.cap);
            match (seq, cap) {
                (Some(s), Some(c)) if s <= c && feed.kind != Kind::Cmd => {}
                _ => {
                    if let Some(g) = self.gateways.get_mut(feed.gw) {
                        g.ignored += 1;
                    }
                    return Outcome::Ignored;
                }
            }
        }
        let g = self.gateways.entry(feed.gw.to_owned()).or_default();
        if feed.kind == Kind::Cmd {
            g.commands += 1;
        } else {
            g.messages += 1;
        }
        let json = match json {
            Ok(j) => j,
            Err(e) => {
                let reason = format!("payload is not JSON: {e}");
                g.invalid(topic, &reason);
                return Outcome::Invalid(reason);
            }
        };
        // The seq counts even on an invalid message: it did arrive.
        if let Some(s) = seq.filter(|_| feed.kind != Kind::Cmd) {
            if !g.seqs.insert(s) {
                g.duplicates += 1;
                return Outcome::Duplicate;
            }
        }
        let mut problem = self
            .schemas
            .validate(feed.kind, &json)
            .err()
            .map(|e| e.to_string());
        if problem.is_none() && feed.kind != Kind::Cmd {
            if json["gw"] != feed.gw {
                problem = Some(format!(
                    "payload gw {} is not the topic's {:?}",
                    json["gw"], feed.gw
                ));
            } else if let Some(dev) = feed.dev.filter(|d| json["dev"] != *d) {
                problem = Some(format!(
                    "payload dev {} is not the topic's {dev:?}",
                    json["dev"]
                ));
            }
        }
        if let Some(reason) = problem {
            g.invalid(topic, &reason);
            return Outcome::Invalid(reason);
        }
        if json["clock"] == "unsynced" {
            g.unsynced += 1;
        }
        let sent = match feed.kind {
            Kind::State => None,
            _ => json["end"].as_str().or_else(|| json["ts"].as_str()),
        };
        if let Some(sent) = sent.and_then(millis) {
            g.latency.record(receipt_ms - sent);
        }
        match feed.kind {
            Kind::State => g.state = json["state"].as_str().map(str::to_owned),
            Kind::Health => g.health(&json),
            Kind::Event => {
                if let (Some(dev), Some(s)) = (feed.dev, seq) {
                    g.event(dev, s, &json);
                }
            }
            Kind::Data => {
                // A merged window stands for every seq it lists: they arrived with it.
                if let Some(covered) = json["merged_seqs"].as_array() {
                    for s in covered.iter().filter_map(Value::as_u64) {
                        if Some(s) != seq && g.seqs.insert(s) {
                            g.merged += 1;
                        }
                    }
                }
            }
            _ => {}
        }
        Outcome::Valid
    }

    /// The report: `{"gateways":{"<gw>":{...}}, ...}`. With `shared`, this auditor saw only
    /// its share of each gateway's messages: `gaps` are left to the merge of every auditor's
    /// `seen` ranges and are empty here.
    pub fn report(&self, shared: bool) -> Value {
        let gateways: serde_json::Map<String, Value> = self
            .gateways
            .iter()
            .map(|(id, g)| (id.clone(), gateway_json(g, shared)))
            .collect();
        json!({"gateways": gateways, "outside_messages": self.outside, "shared": shared})
    }
}

fn round1(v: Option<f64>) -> Value {
    v.map_or(Value::Null, |v| json!((v * 10.0).round() / 10.0))
}

fn gateway_json(g: &GatewayAudit, shared: bool) -> Value {
    let missing = g.missing();
    let pairs = |r: &[(u64, u64)]| -> Vec<Value> { r.iter().map(|(a, b)| json!([a, b])).collect() };
    let (gaps, missing_n, evicted) = if shared {
        (Vec::new(), 0, 0)
    } else {
        (pairs(&missing.gaps), missing.missing, missing.evicted)
    };
    let open: Vec<Value> = g
        .open_events()
        .into_iter()
        .map(|e| {
            let mut o = json!({"dev": e.dev, "event": e.event, "severity": e.severity,
                "ts": e.ts, "seq": e.seq});
            if let Some(ch) = &e.ch {
                o["ch"] = json!(ch);
            }
            if let Some(since) = &e.since {
                o["since"] = json!(since);
            }
            o
        })
        .collect();
    json!({
        "messages": g.messages,
        "invalid": g.invalid,
        "invalid_reasons": g.reasons,
        "commands": g.commands,
        "seq": g.seqs.bounds().map_or(Value::Null, |(a, b)| json!({"first": a, "last": b})),
        "seen": pairs(&g.seqs.ranges()),
        "gaps": gaps,
        "missing": missing_n,
        "evicted": evicted,
        "evicted_reported": g.evicted_reported(),
        "duplicates": g.duplicates,
        "merged": g.merged,
        "open_events": open,
        "state": g.state,
        "unsynced": g.unsynced,
        "latency_ms": {
            "p50": round1(g.latency.quantile(0.5)),
            "p99": round1(g.latency.quantile(0.99)),
            "max": round1(g.latency.max()),
            "n": g.latency.count(),
            "negative": g.latency.negative(),
        },
        "ignored_after_end": g.ignored,
    })
}

#[cfg(test)]
mod tests;
