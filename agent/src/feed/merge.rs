//! Degrading by aggregation (`[store] merge_above`, `docs/mqtt-feed.md` "Merged windows"):
//! adjacent queued telemetry windows of one device are merged into one coarser window whose
//! statistics are exactly those of the samples of all of them.
//!
//! Pure: no I/O. The queue's writer hands [`plan`] the oldest queued telemetry records it may
//! merge and appends what comes back; the arithmetic lives here, next to the renderer, so the
//! queue still knows no JSON field.
//!
//! - Tiers: 10 s windows merge into 60 s ones, those into 10 min ones ([`TIERS_MS`]). Windows
//!   merge when they are of the same device (topic), have the same channel set, the same
//!   clock state, and lie in the same wall-clock-aligned span of the tier.
//! - Statistics (per channel): `n` and `expected` add; `min` and `max` of all; `mean`
//!   weighted by `n`; `std` (population, as the feed defines it) from the pooled sums of
//!   squares (`n * std^2` of each plus `n * (mean_i - mean)^2`); `last` of the newest window
//!   with samples; `start` of the first, `end` of the last.
//! - The merged window keeps the first window's `seq` and says `"merged": k` (the original
//!   windows it stands for) and `"merged_seqs"` (their `seq`, ascending, its own first), so
//!   the platform sees no gap. Merging merged windows again keeps the union.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::rfc3339;

/// The spans windows are merged into, finest first: 60 s, then 10 min.
pub const TIERS_MS: [i64; 2] = [60_000, 600_000];

/// One queued record offered for merging.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// Its `seq`.
    pub seq: u64,
    /// Its topic (one device's windows share it).
    pub topic: &'a str,
    /// Its payload.
    pub payload: &'a [u8],
}

/// What [`plan`] merged: `seqs` (the queued records, ascending) are replaced by one record
/// with seq `seqs[0]`, `topic` and `payload`; `covers` are every original seq it stands for.
#[derive(Debug, Clone, PartialEq)]
pub struct Merge {
    /// The queued records it replaces (its own seq first).
    pub seqs: Vec<u64>,
    /// Every original window's seq it stands for (ascending, its own first).
    pub covers: Vec<u64>,
    /// The topic.
    pub topic: String,
    /// The merged window's payload.
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, Deserialize)]
struct InWindow {
    v: u8,
    gw: String,
    dev: String,
    seq: u64,
    start: String,
    end: String,
    #[serde(default)]
    clock: Option<String>,
    ch: BTreeMap<String, Channel>,
    #[serde(default)]
    merged_seqs: Option<Vec<u64>>,
}

/// One channel's statistics, as the feed renders them (`f32` values).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Channel {
    /// Unit.
    pub u: String,
    /// Samples.
    pub n: u64,
    /// Samples promised by the rate.
    pub expected: u64,
    /// Mean.
    pub mean: f32,
    /// Minimum.
    pub min: f32,
    /// Maximum.
    pub max: f32,
    /// Last sample.
    pub last: f32,
    /// Population standard deviation.
    pub std: f32,
}

#[derive(Serialize)]
struct OutWindow<'a> {
    v: u8,
    gw: &'a str,
    dev: &'a str,
    seq: u64,
    start: String,
    end: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    clock: Option<&'a str>,
    ch: BTreeMap<&'a str, Channel>,
    merged: u64,
    merged_seqs: &'a [u64],
}

/// A parsed window with what grouping needs.
struct Parsed<'a> {
    seq: u64,
    topic: &'a str,
    window: InWindow,
    start_ms: i64,
    end_ms: i64,
}

fn millis(text: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339(text).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_millis()).ok()
}

fn parse<'a>(c: &Candidate<'a>) -> Option<Parsed<'a>> {
    let window: InWindow = serde_json::from_slice(c.payload).ok()?;
    if window.seq != c.seq || window.ch.is_empty() {
        return None;
    }
    let (start_ms, end_ms) = (millis(&window.start)?, millis(&window.end)?);
    (end_ms >= start_ms).then_some(Parsed {
        seq: c.seq,
        topic: c.topic,
        window,
        start_ms,
        end_ms,
    })
}

/// Merges the channel statistics of windows (oldest first) exactly; `None` when their
/// channel sets or units differ.
pub fn merge_channels(windows: &[&BTreeMap<String, Channel>]) -> Option<BTreeMap<String, Channel>> {
    let first = windows.first()?;
    let mut out = BTreeMap::new();
    for (name, c0) in first.iter() {
        let mut parts = Vec::with_capacity(windows.len());
        for w in windows {
            let c = w.get(name)?;
            if c.u != c0.u || w.len() != first.len() {
                return None;
            }
            parts.push(c);
        }
        out.insert(name.clone(), pool(&parts));
    }
    Some(out)
}

/// The statistics of the union of the samples behind `parts` (oldest first).
fn pool(parts: &[&Channel]) -> Channel {
    let n: u64 = parts.iter().map(|c| c.n).sum();
    let expected = parts.iter().map(|c| c.expected).sum();
    let with = || parts.iter().filter(|c| c.n > 0);
    let Some(newest) = parts.iter().rev().find(|c| c.n > 0) else {
        // No samples in any: nothing to pool but the counts.
        let mut c = parts[0].clone();
        c.expected = expected;
        return c;
    };
    let total = n as f64;
    let mean = with().map(|c| c.n as f64 * f64::from(c.mean)).sum::<f64>() / total;
    let m2: f64 = with()
        .map(|c| {
            let (k, s, d) = (c.n as f64, f64::from(c.std), f64::from(c.mean) - mean);
            k * s * s + k * d * d
        })
        .sum();
    Channel {
        u: parts[0].u.clone(),
        n,
        expected,
        mean: mean as f32,
        min: with().map(|c| c.min).fold(f32::INFINITY, f32::min),
        max: with().map(|c| c.max).fold(f32::NEG_INFINITY, f32::max),
        last: newest.last,
        std: (m2 / total).max(0.0).sqrt() as f32,
    }
}

fn render(group: &[Parsed<'_>]) -> Option<Merge> {
    let first = group.first()?;
    let last = group.last()?;
    let chans: Vec<&BTreeMap<String, Channel>> = group.iter().map(|p| &p.window.ch).collect();
    let ch = merge_channels(&chans)?;
    let mut covers: Vec<u64> = group
        .iter()
        .flat_map(|p| p.window.merged_seqs.clone().unwrap_or_else(|| vec![p.seq]))
        .collect();
    covers.sort_unstable();
    covers.dedup();
    let w = &first.window;
    let out = OutWindow {
        v: w.v,
        gw: &w.gw,
        dev: &w.dev,
        seq: first.seq,
        start: rfc3339(first.start_ms),
        end: rfc3339(last.end_ms),
        clock: w.clock.as_deref(),
        ch: ch.iter().map(|(k, v)| (k.as_str(), v.clone())).collect(),
        merged: covers.len() as u64,
        merged_seqs: &covers,
    };
    let payload = serde_json::to_vec(&out).ok()?;
    Some(Merge {
        seqs: group.iter().map(|p| p.seq).collect(),
        covers,
        topic: first.topic.to_owned(),
        payload,
    })
}

/// Can `b` join the group that `a` is in, at tier `tier_ms`?
fn joins(a: &Parsed<'_>, b: &Parsed<'_>, tier_ms: i64) -> bool {
    let bucket = a.start_ms.div_euclid(tier_ms);
    b.start_ms >= a.start_ms
        && b.start_ms.div_euclid(tier_ms) == bucket
        && b.end_ms <= (bucket + 1) * tier_ms
        && a.window.clock == b.window.clock
        && a.window.gw == b.window.gw
        && a.window.dev == b.window.dev
        && a.window.ch.len() == b.window.ch.len()
        && a.window
            .ch
            .iter()
            .all(|(k, c)| b.window.ch.get(k).is_some_and(|d| d.u == c.u))
}

/// What [`plan`] decided.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// The merges, by their first seq.
    pub merges: Vec<Merge>,
    /// The lowest seq of a window held back because its span of the tier may still be
    /// filling (it ends after `until_ms`): the next scan should start there.
    pub held_from: Option<u64>,
}

/// Merges the candidates (ascending seq) at tier `tier_ms`: per topic, runs of consecutive
/// windows (in that topic's seq order) that fit one aligned span of the tier and share the
/// channel set and clock state become one window. Records that are not windows, or do not
/// parse, are left alone (and break no run of other topics). Only runs of two or more
/// merge. A topic's last run whose span ends after `until_ms` (but not implausibly far,
/// more than two tiers, after it: a clock far off must not hold anything forever) is held
/// back: more windows of that span may still come.
pub fn plan(candidates: &[Candidate<'_>], tier_ms: i64, until_ms: i64) -> Plan {
    let tier_ms = tier_ms.max(1);
    let mut by_topic: BTreeMap<&str, Vec<Parsed<'_>>> = BTreeMap::new();
    for c in candidates {
        if let Some(p) = parse(c) {
            // A window as coarse as the tier already has nothing to gain at it.
            if p.end_ms - p.start_ms < tier_ms {
                by_topic.entry(c.topic).or_default().push(p);
            }
        }
    }
    let mut out = Vec::new();
    let mut held_from: Option<u64> = None;
    for (_, windows) in by_topic {
        let mut group: Vec<Parsed<'_>> = Vec::new();
        for p in windows {
            if group.first().is_some_and(|a| !joins(a, &p, tier_ms))
                || group.last().is_some_and(|l| p.start_ms < l.end_ms)
            {
                flush(&mut group, &mut out);
            }
            group.push(p);
        }
        if let Some(first) = group.first() {
            let bucket_end = (first.start_ms.div_euclid(tier_ms) + 1).saturating_mul(tier_ms);
            if bucket_end > until_ms && bucket_end - until_ms <= 2 * tier_ms {
                held_from = Some(held_from.map_or(first.seq, |h| h.min(first.seq)));
                group.clear();
            }
        }
        flush(&mut group, &mut out);
    }
    out.sort_by_key(|m| m.seqs[0]);
    Plan {
        merges: out,
        held_from,
    }
}

fn flush(group: &mut Vec<Parsed<'_>>, out: &mut Vec<Merge>) {
    if group.len() >= 2 {
        if let Some(m) = render(group) {
            out.push(m);
        }
    }
    group.clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// The feed's own window statistics over `samples` (population std, in f64).
    fn direct(samples: &[f64]) -> (u64, f64, f64, f64, f64, f64) {
        let n = samples.len() as f64;
        let mean = samples.iter().sum::<f64>() / n;
        let var = samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        let min = samples.iter().copied().fold(f64::INFINITY, f64::min);
        let max = samples.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (
            samples.len() as u64,
            mean,
            min,
            max,
            *samples.last().unwrap_or(&0.0),
            var.sqrt(),
        )
    }

    fn channel(samples: &[f64], expected: u64) -> Channel {
        let (n, mean, min, max, last, std) = direct(samples);
        Channel {
            u: "deg".into(),
            n,
            expected,
            mean: mean as f32,
            min: min as f32,
            max: max as f32,
            last: last as f32,
            std: std as f32,
        }
    }

    fn window(seq: u64, dev: &str, start_s: i64, span_s: i64, chans: &[(&str, &[f64])]) -> Vec<u8> {
        let t0 = 1_764_000_000_000_i64; // a whole 10 min boundary
        let ch: serde_json::Map<String, Value> = chans
            .iter()
            .map(|(name, s)| {
                (
                    name.to_string(),
                    serde_json::to_value(channel(s, s.len() as u64 + 1)).expect("json"),
                )
            })
            .collect();
        serde_json::to_vec(&json!({"v":1,"gw":"gw-1","dev":dev,"seq":seq,
            "start": rfc3339(t0 + start_s * 1000), "end": rfc3339(t0 + (start_s + span_s) * 1000),
            "ch": ch}))
        .expect("json")
    }

    /// A small deterministic generator (xorshift), for property-style tests without a
    /// dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    #[test]
    fn pooled_statistics_equal_a_direct_computation_over_the_raw_samples() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for case in 0..500 {
            let k = 2 + (rng.next() % 8) as usize;
            let scale = [1e-3, 1.0, 250.0][case % 3];
            let offset = [0.0, 12.5, -3000.0][case % 3];
            let parts: Vec<Vec<f64>> = (0..k)
                .map(|_| {
                    let n = (rng.next() % 60) as usize; // some windows without samples
                    (0..n)
                        // Samples as the node sends them: f32 values.
                        .map(|_| f64::from((offset + scale * (rng.unit() - 0.5)) as f32))
                        .collect()
                })
                .collect();
            let all: Vec<f64> = parts.iter().flatten().copied().collect();
            let chans: Vec<BTreeMap<String, Channel>> = parts
                .iter()
                .map(|s| {
                    let c = if s.is_empty() {
                        Channel {
                            u: "deg".into(),
                            n: 0,
                            expected: 3,
                            mean: 0.0,
                            min: 0.0,
                            max: 0.0,
                            last: 0.0,
                            std: 0.0,
                        }
                    } else {
                        channel(s, s.len() as u64 + 3)
                    };
                    BTreeMap::from([("x".to_owned(), c)])
                })
                .collect();
            let refs: Vec<&BTreeMap<String, Channel>> = chans.iter().collect();
            let merged = merge_channels(&refs).expect("same channels");
            let m = &merged["x"];
            let expected: u64 = chans.iter().map(|c| c["x"].expected).sum();
            assert_eq!(
                (m.n, m.expected),
                (all.len() as u64, expected),
                "case {case}"
            );
            if all.is_empty() {
                continue;
            }
            let (_, mean, min, max, last, std) = direct(&all);
            // Exact up to the f32 the feed renders (each part's statistics are f32 too).
            let tol = |v: f64| 4.0 * f64::from(f32::EPSILON) * (v.abs() + offset.abs() + scale);
            assert!(
                (f64::from(m.mean) - mean).abs() <= tol(mean),
                "case {case}: mean {} vs {mean}",
                m.mean
            );
            assert!(
                (f64::from(m.std) - std).abs() <= tol(std) * 8.0,
                "case {case}: std {} vs {std}",
                m.std
            );
            assert_eq!(
                (m.min, m.max, m.last),
                (min as f32, max as f32, last as f32),
                "case {case}"
            );
        }
    }

    #[test]
    fn different_channel_sets_or_units_do_not_merge() {
        let a = BTreeMap::from([("x".to_owned(), channel(&[1.0, 2.0], 2))]);
        let mut b = a.clone();
        b.insert("y".into(), channel(&[1.0], 1));
        assert!(merge_channels(&[&a, &b]).is_none());
        let mut c = a.clone();
        if let Some(x) = c.get_mut("x") {
            x.u = "ustrain".into();
        }
        assert!(merge_channels(&[&a, &c]).is_none());
    }

    fn cands(ws: &[(u64, &str, Vec<u8>)]) -> Vec<(u64, String, Vec<u8>)> {
        ws.iter()
            .map(|(s, d, p)| (*s, format!("r/gw-1/data/{d}"), p.clone()))
            .collect()
    }

    fn run(ws: &[(u64, String, Vec<u8>)], tier: i64) -> Vec<Merge> {
        let c: Vec<Candidate<'_>> = ws
            .iter()
            .map(|(seq, topic, payload)| Candidate {
                seq: *seq,
                topic,
                payload,
            })
            .collect();
        plan(&c, tier, i64::MAX).merges
    }

    #[test]
    fn tiers_group_aligned_spans_per_device_and_keep_every_seq() {
        let s: &[f64] = &[1.0, 2.0, 3.0];
        // Two devices interleaved, 10 s windows from the 10 min boundary; b lacks one.
        let mut ws = Vec::new();
        let mut seq = 100;
        for i in 0..9 {
            ws.push((seq, "a", window(seq, "a", i * 10, 10, &[("x", s)])));
            seq += 1;
            if i != 2 {
                ws.push((seq, "b", window(seq, "b", i * 10, 10, &[("x", s)])));
                seq += 1;
            }
            seq += 1; // another topic's seq in between (an event)
        }
        let ws = cands(&ws);
        let m = run(&ws, TIERS_MS[0]);
        // a: 0..60 s (6 windows) and 60..90 s (3); b: 0..60 s without 20 s (5) and 60..90 s (3).
        let sizes: Vec<(String, usize)> = m
            .iter()
            .map(|m| (m.topic.clone(), m.covers.len()))
            .collect();
        assert_eq!(
            sizes,
            vec![
                ("r/gw-1/data/a".to_owned(), 6),
                ("r/gw-1/data/b".to_owned(), 5),
                ("r/gw-1/data/a".to_owned(), 3),
                ("r/gw-1/data/b".to_owned(), 3)
            ]
        );
        let v: Value = serde_json::from_slice(&m[0].payload).expect("json");
        assert_eq!(v["seq"], json!(m[0].seqs[0]));
        assert_eq!(v["merged"], json!(6));
        assert_eq!(v["merged_seqs"], json!(m[0].covers));
        assert_eq!(v["ch"]["x"]["n"], json!(18));
        assert_eq!(v["ch"]["x"]["expected"], json!(24));
        assert_eq!(
            (v["start"].as_str(), v["end"].as_str()),
            (
                Some("2025-11-24T16:00:00.000Z"),
                Some("2025-11-24T16:01:00.000Z")
            )
        );
        // The field order the batcher relies on: seq, then start.
        assert!(crate::feed::batch::is_window(&m[0].payload));
        // Nothing to gain at 60 s for a 60 s window; at 10 min the merged ones merge again,
        // keeping the union of the seqs they stand for.
        let merged: Vec<(u64, String, Vec<u8>)> = m
            .iter()
            .map(|m| (m.seqs[0], m.topic.clone(), m.payload.clone()))
            .collect();
        assert!(run(&merged, TIERS_MS[0]).is_empty());
        let again = run(&merged, TIERS_MS[1]);
        assert_eq!(again.len(), 2);
        assert_eq!(again[0].covers.len(), 9);
        let all_a: Vec<u64> = ws
            .iter()
            .filter(|w| w.1.ends_with("/a"))
            .map(|w| w.0)
            .collect();
        assert_eq!(again[0].covers, all_a);
    }

    #[test]
    fn what_is_not_a_window_or_does_not_fit_is_left_alone() {
        let s: &[f64] = &[1.0];
        let ws = cands(&[
            (1, "a", window(1, "a", 50, 10, &[("x", s)])),
            (2, "a", b"{\"v\":1,\"seq\":2,\"ts\":\"x\"}".to_vec()),
            (3, "a", window(3, "a", 60, 10, &[("x", s)])), // next minute
            (4, "a", window(4, "a", 70, 10, &[("x", s), ("y", s)])), // another channel set
            (5, "a", window(5, "a", 80, 10, &[("x", s), ("y", s)])),
            (6, "a", window(99, "a", 90, 10, &[("x", s), ("y", s)])), // seq not its own
            (7, "a", b"not json".to_vec()),
        ]);
        let m = run(&ws, TIERS_MS[0]);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].seqs, vec![4, 5]);
    }

    #[test]
    fn a_span_that_may_still_be_filling_is_held_back() {
        let s: &[f64] = &[1.0];
        let t0 = 1_764_000_000_000_i64;
        let ws = cands(&[
            (1, "a", window(1, "a", 0, 10, &[("x", s)])),
            (2, "a", window(2, "a", 10, 10, &[("x", s)])),
            (3, "a", window(3, "a", 60, 10, &[("x", s)])),
            (4, "a", window(4, "a", 70, 10, &[("x", s)])),
            (5, "b", window(5, "b", 60, 10, &[("x", s)])),
        ]);
        let c: Vec<Candidate<'_>> = ws
            .iter()
            .map(|(seq, topic, payload)| Candidate {
                seq: *seq,
                topic,
                payload,
            })
            .collect();
        // Now is 85 s in: the second minute is not over.
        let p = plan(&c, TIERS_MS[0], t0 + 85_000);
        assert_eq!(
            p.merges.iter().map(|m| m.seqs.clone()).collect::<Vec<_>>(),
            vec![vec![1, 2]]
        );
        assert_eq!(p.held_from, Some(3));
        // Much later, nothing is held.
        let p = plan(&c, TIERS_MS[0], t0 + 125_000);
        assert_eq!(p.merges.len(), 2);
        assert_eq!(p.held_from, None);
    }
}
