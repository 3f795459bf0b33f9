//! Capture and report by exception, end to end: a virtual panel node (the real firmware
//! core over simulated chips) on a pseudo-terminal, the agent as its own process, a real
//! MQTT broker, and what the platform receives compared with what the node sent.

use std::time::Duration;

use anyhow::{ensure, Context};
use serde_json::Value;
use towerlink_e2e::{unique_gw, write_config, AgentProcess, Received, Subscriber};
use towerlink_firmware::protocol::{Body, Frame};
use towerlink_sim::virtual_node::spawn_tower;
use towerlink_sim_chips::Scenario;

/// tilt_x is channel 1 of a panel node.
const TILT_X: u8 = 1;

/// A panel whose tilt_x ramps up by 0.1 deg/s from `at_s` on for 6 s (to about 0.6 deg).
fn tilting(seed: u64, at_s: f64) -> anyhow::Result<Scenario> {
    Scenario::from_toml_str(&format!(
        r#"seed = {seed}
wind_scale = 0.2
[[panels]]
name = "tilting"
node = 21
base_tilt_x_deg = 0.0
[[panels.faults]]
kind = "slow_tilt"
at_s = {at_s}
until_s = {}
axis = "x"
rate_deg_per_hour = 360.0
"#,
        at_s + 6.0
    ))
    .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Every value the node sent on one channel, in order, with the batches' period (ms).
fn sent_values(frames: &[Frame], channel: u8) -> (Vec<f32>, f64) {
    let mut period = f64::NAN;
    let values = frames
        .iter()
        .filter_map(|f| match &f.body {
            Body::Samples {
                channel: c,
                values,
                period_us,
                ..
            } if *c == channel => {
                period = f64::from(*period_us) / 1000.0;
                Some(values.iter().copied().collect::<Vec<_>>())
            }
            _ => None,
        })
        .flatten()
        .collect();
    (values, period)
}

fn on<'a>(m: &'a [Received], kind: &str, dev: &str) -> Vec<&'a Value> {
    let suffix = format!("/{kind}/{dev}");
    m.iter()
        .filter(|r| r.topic.ends_with(&suffix))
        .map(|r| &r.json)
        .collect()
}

/// RFC 3339 with milliseconds -> ms since the epoch (the feed's only time format).
fn millis(v: &Value) -> anyhow::Result<i64> {
    let s = v.as_str().context("time is not a string")?;
    let (date, time) = s.split_once('T').context("no T")?;
    let d: Vec<i64> = date
        .split('-')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad date {s}"))?;
    ensure!(d.len() == 3, "bad date {s}");
    let t: Vec<&str> = time.trim_end_matches('Z').split(':').collect();
    ensure!(t.len() == 3, "bad time {s}");
    let (h, mi): (i64, i64) = (t[0].parse()?, t[1].parse()?);
    let sec_ms = (t[2].parse::<f64>()? * 1000.0).round() as i64;
    // Days from civil (Howard Hinnant's algorithm).
    let (y, mo, da) = (d[0], d[1], d[2]);
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * ((mo + 9) % 12) + 2) / 5 + da - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(((days * 24 + h) * 60 + mi) * 60_000 + sec_ms)
}

fn num(v: &Value, key: &str) -> anyhow::Result<f64> {
    v[key]
        .as_f64()
        .with_context(|| format!("{key} is not a number in {v}"))
}

#[test]
fn a_threshold_crossing_sends_the_raw_waveform_around_it() -> anyhow::Result<()> {
    const BEFORE_MS: i64 = 4_000;
    const AFTER_MS: i64 = 6_000;
    towerlink_e2e::binary("towerlink-agent", "towerlink")?;
    let scenario = tilting(7, 8.0)?;
    let dir = tempfile::tempdir()?;
    let gw = unique_gw("e2e-capture");
    let sub = Subscriber::connect(&format!("towerlink/v1/{gw}/#"))?;
    let ports = dir.path().join("ports");
    // The spike filter and a low-pass stay on: the capture must carry the node's raw values.
    let section = format!(
        "[[node]]\nid = \"tilting\"\nport = \"{}\"\nwindow = \"2s\"\nwindow_grace = \"1500ms\"\nnode_id = 21\n\
         [node.channels.tilt_x]\nlowpass = {{ ema = 0.5 }}\nalarm = {{ minor = 0.15, hysteresis = 0.02 }}\n\
         capture = {{ before = \"4s\", after = \"6s\", max = \"30s\" }}\n",
        ports.join("tilting").display()
    );
    let config = write_config(dir.path(), &gw, &section)?;
    let mut agent = AgentProcess::start(&config)?;
    sub.wait(Duration::from_secs(30), "the agent online", |m| {
        m.iter()
            .any(|r| r.topic.ends_with("/state") && r.json["state"] == "online")
    })?;
    let nodes = spawn_tower(&scenario, &ports, true)?;
    let n = &nodes[0];
    sub.wait(Duration::from_secs(60), "the capture's last part", |m| {
        on(m, "capture", n.dev())
            .iter()
            .any(|c| c["part"] == c["parts"])
    })?;
    let all = sub.all();
    let alarm = on(&all, "event", n.dev())
        .into_iter()
        .find(|e| e["event"] == "threshold" && e["state"] == "active")
        .context("no threshold event")?
        .clone();
    let mut parts: Vec<Value> = on(&all, "capture", n.dev()).into_iter().cloned().collect();
    parts.sort_by_key(|p| p["part"].as_u64());
    let count = parts.len() as u64;
    ensure!(count >= 1, "no capture");
    // The docs' example: the first part, values cut to four.
    let mut example = parts[0].clone();
    if let Some(v) = example["values"].as_array_mut() {
        v.truncate(4);
    }
    eprintln!("capture part: {example}");
    for (i, p) in parts.iter().enumerate() {
        ensure!(
            p["part"] == i as u64 + 1 && p["parts"] == count,
            "parts {parts:?}"
        );
        ensure!(p["ch"] == "tilt_x" && p["u"] == "deg", "{p}");
        ensure!(p["zero"] == 0.0, "{p}");
        let t = &p["trigger"];
        ensure!(
            t["seq"] == alarm["seq"]
                && t["ts"] == alarm["ts"]
                && t["event"] == "threshold"
                && t["severity"] == alarm["severity"],
            "the trigger {t} is not the alarm {alarm}"
        );
        // Queued like any message: its own seq, after its trigger's.
        ensure!(
            p["seq"].as_u64() > alarm["seq"].as_u64(),
            "seq {} not after the trigger's",
            p["seq"]
        );
        ensure!(p["values"].as_array().is_some_and(|v| v.len() <= 1024));
    }
    let seqs: Vec<u64> = parts.iter().filter_map(|p| p["seq"].as_u64()).collect();
    ensure!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "parts out of seq order: {seqs:?}"
    );

    // The values are a contiguous run of what the node sent, on one grid.
    let (sent, period_ms) = sent_values(&n.sent_frames(), TILT_X);
    let period_us = parts[0]["period_us"].as_u64().context("period_us")?;
    ensure!(
        (period_us as f64 - period_ms * 1000.0).abs() < 1.0,
        "period {period_us} us, the node's {period_ms} ms"
    );
    let mut values = Vec::new();
    let mut next_t0: Option<f64> = None;
    for p in &parts {
        let t0 = millis(&p["t0"])? as f64;
        if let Some(expected) = next_t0 {
            ensure!(
                (t0 - expected).abs() <= 1.0,
                "part {} starts at {t0}, expected {expected}: a gap on a lossless line",
                p["part"]
            );
        }
        let v: Vec<f32> = p["values"]
            .as_array()
            .context("values")?
            .iter()
            .filter_map(|x| x.as_f64().map(|x| x as f32))
            .collect();
        next_t0 = Some(t0 + v.len() as f64 * period_ms);
        values.extend(v);
    }
    let at = (0..sent.len().saturating_sub(values.len()))
        .find(|&i| sent[i..i + values.len()] == values[..])
        .with_context(|| {
            format!(
                "the capture's {} values are no run of the {} raw values the node sent",
                values.len(),
                sent.len()
            )
        })?;
    // ...and they cover [trigger - before, trigger + after].
    let ts = millis(&alarm["ts"])?;
    let t0 = millis(&parts[0]["t0"])?;
    let t_last = t0 as f64 + (values.len() - 1) as f64 * period_ms;
    let slack = period_ms + 1.0;
    ensure!(
        ((t0 - (ts - BEFORE_MS)) as f64).abs() <= slack,
        "the capture starts at {t0}, the trigger at {ts}: not {BEFORE_MS} ms before"
    );
    ensure!(
        (t_last - (ts + AFTER_MS) as f64).abs() <= slack,
        "the capture ends at {t_last}, the trigger at {ts}: not {AFTER_MS} ms after"
    );
    let expected = ((BEFORE_MS + AFTER_MS) as f64 / period_ms).round() as usize + 1;
    ensure!(
        values.len().abs_diff(expected) <= 1,
        "{} values, expected {expected}",
        values.len()
    );
    // The raw ramp crosses the limit inside the capture (and not before its start).
    ensure!(values[0] < 0.15 && values.iter().any(|v| *v >= 0.15));
    ensure!(
        at > 0,
        "the capture starts at the node's first sample: no 'before'"
    );
    agent.stop()?;
    sub.clear_retained(&format!("towerlink/v1/{gw}/state"));
    Ok(())
}

#[test]
fn report_by_exception_is_rate_limited_never_hides_an_alarm_and_flushes_at_sigterm(
) -> anyhow::Result<()> {
    const MIN_INTERVAL_MS: i64 = 3_000;
    towerlink_e2e::binary("towerlink-agent", "towerlink")?;
    let scenario = tilting(8, 4.0)?;
    let dir = tempfile::tempdir()?;
    let gw = unique_gw("e2e-deadband");
    let sub = Subscriber::connect(&format!("towerlink/v1/{gw}/#"))?;
    let ports = dir.path().join("ports");
    // deadband = 0: every sample moves beyond it.
    let section = format!(
        "[health]\ninterval = \"1s\"\n\n\
         [[node]]\nid = \"tilting\"\nport = \"{}\"\nwindow = \"2s\"\nwindow_grace = \"1500ms\"\nnode_id = 21\n\
         [node.channels.tilt_x]\nspike = false\ndeadband = 0.0\nmin_interval = \"3s\"\nalarm = {{ minor = 0.15, hysteresis = 0.02 }}\n",
        ports.join("tilting").display()
    );
    let config = write_config(dir.path(), &gw, &section)?;
    let mut agent = AgentProcess::start(&config)?;
    sub.wait(Duration::from_secs(30), "the agent online", |m| {
        m.iter()
            .any(|r| r.topic.ends_with("/state") && r.json["state"] == "online")
    })?;
    let nodes = spawn_tower(&scenario, &ports, true)?;
    let n = &nodes[0];
    let reports = |m: &[Received]| -> Vec<Value> {
        on(m, "data", n.dev())
            .into_iter()
            .filter(|d| d["ch"].get("tilt_x").is_some())
            .cloned()
            .collect()
    };
    sub.wait(Duration::from_secs(40), "the tilt alarm", |m| {
        on(m, "event", n.dev())
            .iter()
            .any(|e| e["event"] == "threshold" && e["state"] == "active")
    })?;
    // Some more reports after the alarm; then the node goes quiet (unplugged: what it sent
    // is all on the line) and, once the agent has read it all, a clean stop.
    sub.wait(Duration::from_secs(30), "12 s of reports", |m| {
        reports(m).len() >= 5
    })?;
    n.unplug()?;
    let frames_ok = |h: &Received| h.json["sources"]["tilting"]["frames_ok"].as_u64();
    let healths_before = sub.on("/health").len();
    sub.wait(Duration::from_secs(20), "the agent to read all", |_| {
        let h = sub.on("/health");
        h.len() >= healths_before + 2 && {
            let last = &h[h.len() - 2..];
            frames_ok(&last[0]).is_some() && frames_ok(&last[0]) == frames_ok(&last[1])
        }
    })?;
    let before_stop = reports(&sub.all());
    agent.stop()?;
    let all = sub.all();
    let alarms: Vec<i64> = on(&all, "event", n.dev())
        .into_iter()
        .filter(|e| e["event"] == "threshold")
        .map(|e| millis(&e["ts"]))
        .collect::<anyhow::Result<_>>()?;
    ensure!(!alarms.is_empty(), "no threshold event");
    let all_reports = reports(&all);
    let mut ends = Vec::new();
    for r in &all_reports {
        ends.push(millis(&r["end"])?);
    }
    // The alarm went out with a report of the alarming sample, whatever the interval.
    ensure!(
        ends.contains(&alarms[0]),
        "no report at the alarm ({}): {ends:?}",
        alarms[0]
    );
    // Otherwise at most one report per min_interval (a flood would be one per sample).
    for (i, w) in ends.windows(2).enumerate() {
        let forced = alarms.contains(&w[1]);
        let flushed = i + 2 == ends.len();
        ensure!(
            forced || flushed || w[1] - w[0] >= MIN_INTERVAL_MS - 1,
            "reports {} ms apart (min_interval {MIN_INTERVAL_MS} ms): {ends:?}",
            w[1] - w[0]
        );
    }
    // The clean stop published what was pending, so every sample the agent read is in
    // exactly one report: from the first report's (one value) on, the counts add up to
    // every value the node put on the line.
    let (sent, _) = sent_values(&n.sent_frames(), TILT_X);
    let first = all_reports.first().context("no report")?;
    ensure!(first["ch"]["tilt_x"]["n"] == 1, "{first}");
    let first_value = num(&first["ch"]["tilt_x"], "last")? as f32;
    // Where the first report sits in what the node sent: its value, followed by a run with
    // the second report's statistics (one value alone may repeat).
    let second = &all_reports.get(1).context("one report only")?["ch"]["tilt_x"];
    let n2 = second["n"].as_u64().context("n")? as usize;
    let (last2, min2, max2) = (
        num(second, "last")? as f32,
        num(second, "min")? as f32,
        num(second, "max")? as f32,
    );
    let i0 = (0..sent.len().saturating_sub(n2 + 1))
        .find(|&i| {
            let run = &sent[i + 1..i + 1 + n2];
            sent[i] == first_value
                && run.last() == Some(&last2)
                && run.iter().copied().fold(f32::INFINITY, f32::min) == min2
                && run.iter().copied().fold(f32::NEG_INFINITY, f32::max) == max2
        })
        .context("the first reports are no run of what the node sent")?;
    let total: u64 = all_reports
        .iter()
        .filter_map(|r| r["ch"]["tilt_x"]["n"].as_u64())
        .sum();
    ensure!(
        total as usize == sent.len() - i0,
        "{total} samples reported ({} reports before SIGTERM, {} after), {} read: the pending \
         statistics are lost",
        before_stop.len(),
        all_reports.len(),
        sent.len() - i0
    );
    ensure!(
        all_reports.len() <= before_stop.len() + 1,
        "more than one report at the stop"
    );
    sub.clear_retained(&format!("towerlink/v1/{gw}/state"));
    Ok(())
}
