//! Time the platform can trust (issue 11, item 3), end to end against the real agent:
//!
//! - the agent's wall clock stepped for real, with libfaketime (Debian `faketime`) preloaded
//!   into the agent only, its offset in a file the test rewrites (the monotonic clock is left
//!   alone): a `clock_step` event with the step's size, and no window across the step;
//! - an unsynchronised clock flagged in the birth, in `health` and on every data message (made
//!   unsynchronised with the agent's test-only `TOWERLINK_TEST_CLOCK=unsynced`, since the test
//!   machine's own clock may well be synchronised).

use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{bail, ensure, Context};
use serde_json::Value;
use towerlink_e2e::{unique_gw, write_config, AgentProcess, Received, Subscriber};
use towerlink_sim::virtual_node::spawn_tower;
use towerlink_sim_chips::Scenario;

/// Where Debian's `libfaketime` puts the library.
const LIBFAKETIME: [&str; 2] = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
];

fn libfaketime() -> anyhow::Result<PathBuf> {
    LIBFAKETIME
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .with_context(|| {
            format!(
                "libfaketime not found at {LIBFAKETIME:?}: apt-get install faketime (.ci/run does)"
            )
        })
}

fn parse_ts(v: &Value) -> Option<i64> {
    let t = humantime::parse_rfc3339(v.as_str()?).ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_millis() as i64)
}

/// (seq, start, end) of the data windows of `dev`.
fn windows(all: &[Received], dev: &str) -> Vec<(u64, i64, i64)> {
    all.iter()
        .filter(|m| m.topic.ends_with(&format!("/data/{dev}")))
        .filter_map(|m| {
            Some((
                m.json["seq"].as_u64()?,
                parse_ts(&m.json["start"])?,
                parse_ts(&m.json["end"])?,
            ))
        })
        .collect()
}

fn one_panel(
    dir: &Path,
) -> anyhow::Result<(Vec<towerlink_sim::virtual_node::VirtualNode>, String)> {
    let scenario =
        Scenario::from_toml_str("seed = 11\n\n[[panels]]\nname = \"panel-c\"\nnode = 31\n")
            .context("scenario")?;
    let nodes = spawn_tower(&scenario, &dir.join("ports"), false)?;
    let mut text = String::from("[health]\ninterval = \"1s\"\n\n");
    for n in &nodes {
        text.push_str(&format!(
            "[[node]]\nid = \"{}\"\nport = \"{}\"\nnode_id = {}\nwindow = \"1s\"\nwindow_grace = \"700ms\"\n\n",
            n.dev(),
            n.path().display(),
            n.node_id()
        ));
    }
    Ok((nodes, text))
}

#[test]
fn a_stepped_clock_raises_clock_step_and_no_window_spans_it() -> anyhow::Result<()> {
    let lib = libfaketime()?;
    let dir = tempfile::tempdir()?;
    let (_nodes, text) = one_panel(dir.path())?;
    let gw = unique_gw("e2e-clockstep");
    let sub = Subscriber::connect(&format!("towerlink/v1/{gw}/#"))?;
    let config = write_config(dir.path(), &gw, &text)?;
    let offset = dir.path().join("faketime.rc");
    std::fs::write(&offset, "+0\n")?;
    let offset_s = offset.display().to_string();
    let lib_s = lib.display().to_string();
    let mut agent = AgentProcess::start_with_env(
        &config,
        &[
            ("LD_PRELOAD", lib_s.as_str()),
            ("FAKETIME_TIMESTAMP_FILE", offset_s.as_str()),
            // Read the file again every second; the monotonic clock stays the real one.
            ("FAKETIME_CACHE_DURATION", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    )?;
    sub.wait(Duration::from_secs(30), "3 windows before the step", |m| {
        windows(m, "panel-c").len() >= 3
    })?;
    // NTP's first sync after a cold boot, the other way round: an hour back.
    std::fs::write(&offset, "-3600\n")?;
    let steps = |m: &[Received]| -> Vec<Value> {
        m.iter()
            .filter(|r| r.topic.ends_with("/event/gateway") && r.json["event"] == "clock_step")
            .map(|r| r.json.clone())
            .collect()
    };
    sub.wait(Duration::from_secs(20), "the clock_step event", |m| {
        !steps(m).is_empty()
    })
    .with_context(|| format!("agent log:\n{}", agent.log()))?;
    let step = steps(&sub.all()).remove(0);
    let step_ms = step["detail"]["step_ms"].as_i64().context("step_ms")?;
    ensure!(
        (step_ms + 3_600_000).abs() < 2_000,
        "an hour back, give or take the time it took to notice: {step}"
    );
    ensure!(
        step["severity"] == "minor" && step["state"] == "active" && step["dev"] == "gateway",
        "{step}"
    );
    let step_seq = step["seq"].as_u64().context("seq")?;
    let target = parse_ts(&step["ts"]).context("ts")?;
    sub.wait(Duration::from_secs(30), "3 windows after the step", |m| {
        windows(m, "panel-c")
            .iter()
            .filter(|w| w.0 > step_seq)
            .count()
            >= 3
    })
    .with_context(|| format!("agent log:\n{}", agent.log()))?;
    let all = sub.all();
    let ws = windows(&all, "panel-c");
    for &(seq, start, end) in &ws {
        if seq < step_seq {
            // Made before the step: ends at the step at the latest (old timeline).
            ensure!(
                end <= target - step_ms,
                "window #{seq} [{start}, {end}) runs past the step at {}: {ws:?}",
                target - step_ms
            );
        } else {
            ensure!(
                start >= target,
                "window #{seq} [{start}, {end}) starts before the step's target {target}: {ws:?}"
            );
        }
    }
    // Nothing else after the step is dated before its target, and no false alarm.
    for m in all
        .iter()
        .filter(|m| m.json["seq"].as_u64() > Some(step_seq))
    {
        if let Some(ts) = parse_ts(&m.json["ts"]) {
            ensure!(ts >= target, "dated before the step's target: {}", m.json);
        }
        ensure!(
            m.json["event"] != "sensor_offline",
            "a false alarm after the step: {}",
            m.json
        );
    }
    sub.wait(Duration::from_secs(10), "health counting the step", |_| {
        sub.on("/health")
            .iter()
            .any(|h| h.json["clock"]["steps"] == 1 || h.json["changed"]["clock"]["steps"] == 1)
    })?;
    agent.stop()?;
    Ok(())
}

#[test]
fn an_unsynced_clock_is_flagged_everywhere() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_nodes, text) = one_panel(dir.path())?;
    let gw = unique_gw("e2e-unsynced");
    let sub = Subscriber::connect(&format!("towerlink/v1/{gw}/#"))?;
    let config = write_config(dir.path(), &gw, &text)?;
    let mut agent = AgentProcess::start_with_env(&config, &[("TOWERLINK_TEST_CLOCK", "unsynced")])?;
    sub.wait(Duration::from_secs(30), "windows and health", |m| {
        windows(m, "panel-c").len() >= 2 && m.iter().any(|r| r.topic.ends_with("/health"))
    })?;
    let all = sub.all();
    let birth = all
        .iter()
        .find(|m| m.topic.ends_with("/state") && m.json["state"] == "online")
        .context("birth")?;
    ensure!(
        birth.json["clock"] == serde_json::json!({"synced": false}),
        "{}",
        birth.json
    );
    // The full report (deltas carry only what changed).
    let health = sub
        .on("/health")
        .into_iter()
        .find(|h| h.json.get("clock").is_some())
        .context("a full health report")?;
    ensure!(
        health.json["clock"]["synced"] == false && health.json["clock"]["est_error_ms"].is_null(),
        "{}",
        health.json
    );
    let queued: Vec<_> = all
        .iter()
        .filter(|m| m.topic.contains("/data/") || m.topic.contains("/event/"))
        .collect();
    ensure!(!queued.is_empty());
    for m in &queued {
        ensure!(m.json["clock"] == "unsynced", "not flagged: {}", m.json);
    }
    agent.stop()?;

    // Without the override the flags follow the kernel's state, whatever it is here.
    let gw = unique_gw("e2e-kernelclock");
    let sub = Subscriber::connect(&format!("towerlink/v1/{gw}/#"))?;
    let config = write_config(dir.path(), &gw, &text)?;
    let mut agent = AgentProcess::start(&config)?;
    sub.wait(Duration::from_secs(30), "windows and health", |m| {
        windows(m, "panel-c").len() >= 2 && m.iter().any(|r| r.topic.ends_with("/health"))
    })?;
    let health = sub
        .on("/health")
        .into_iter()
        .find(|h| h.json.get("clock").is_some())
        .context("a full health report")?;
    let Some(synced) = health.json["clock"]["synced"].as_bool() else {
        bail!("{}", health.json)
    };
    for m in sub
        .all()
        .iter()
        .filter(|m| m.topic.contains("/data/") || m.topic.contains("/event/"))
    {
        ensure!(
            m.json.get("clock").is_some() != synced,
            "synced {synced} but: {}",
            m.json
        );
    }
    agent.stop()?;
    Ok(())
}
