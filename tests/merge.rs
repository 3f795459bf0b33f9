//! Degrade by aggregation, not by eviction (issue 13 item 5), end to end: the real agent
//! with a 64 KiB store and a broker it cannot reach (a private Mosquitto, stopped) queues a
//! simulated tower's 1 s windows far beyond its store; above `[store] merge_above` (80 %) it
//! merges the oldest windows of each node into coarser ones instead of evicting. Then the
//! broker comes back and the backlog goes out (in batches). The platform's side, a
//! persistent-session subscriber whose messages go through the auditor's own code
//! (`towerlink audit`'s `Audit`), finds: no `seq` gap once each merged window's
//! `merged_seqs` are counted, nothing evicted, every event, merged windows that say
//! `merged` and carry exactly the statistics of the samples the nodes sent over their span,
//! and health's `queue.merged` equal to the seqs the audit received only inside merged
//! windows.
//!
//! `MERGE_E2E_MERGE_ABOVE=off` runs the same with merging disabled: it then fails (the
//! store evicts; the audit counts evicted seqs and finds no merged window).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context};
use serde_json::Value;
use towerlink_agent::cli::audit::schemas::FeedSchemas;
use towerlink_agent::cli::audit::state::Audit;
use towerlink_e2e::mosquitto::{MosquittoProcess, SessionSubscriber};
use towerlink_e2e::{binary, scaled, unique_gw, wait_until, AgentProcess, Received};
use towerlink_firmware::protocol::{Body, Frame};
use towerlink_sim::virtual_node::{spawn_tower, VirtualNode};
use towerlink_sim_chips::Scenario;

/// No spike filter (each window's statistics are those of the samples sent); a temperature
/// alarm every node raises at once (an event queued among the windows).
const CHANNELS: &str = "[node.channels.strain]\nspike = false\n[node.channels.tilt_x]\nspike = false\n\
                        [node.channels.tilt_y]\nspike = false\n[node.channels.temperature]\nspike = false\n\
                        alarm = { minor = 5.0, relative_to_zero = false }\n";

fn node_sections(nodes: &[VirtualNode]) -> String {
    nodes
        .iter()
        .map(|n| {
            format!(
                "[[node]]\nid = \"{}\"\nport = \"{}\"\nwindow = \"1s\"\nwindow_grace = \"1s\"\nnode_id = {}\n{CHANNELS}\n",
                n.dev(),
                n.path().display(),
                n.node_id()
            )
        })
        .collect()
}

fn sent_values(frames: &[Frame], channel: u8) -> Vec<f32> {
    frames
        .iter()
        .filter_map(|f| match &f.body {
            Body::Samples {
                channel: c, values, ..
            } if *c == channel => Some(values.iter().copied().collect::<Vec<_>>()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// Does `values` hold a contiguous run with exactly these statistics (n, min, max, last to
/// f32 precision, mean and population std computed over the run)?
fn matches_a_run(values: &[f32], stats: &Value) -> bool {
    let (Some(n), Some(min), Some(max), Some(last), Some(mean), Some(std)) = (
        stats["n"].as_u64(),
        stats["min"].as_f64(),
        stats["max"].as_f64(),
        stats["last"].as_f64(),
        stats["mean"].as_f64(),
        stats["std"].as_f64(),
    ) else {
        return false;
    };
    let n = n as usize;
    if n == 0 || n > values.len() {
        return false;
    }
    (0..=values.len() - n).any(|i| {
        let run = &values[i..i + n];
        if run[n - 1] != last as f32 {
            return false;
        }
        let rmin = run.iter().copied().fold(f32::INFINITY, f32::min);
        let rmax = run.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if rmin != min as f32 || rmax != max as f32 {
            return false;
        }
        let rmean = run.iter().map(|&x| f64::from(x)).sum::<f64>() / n as f64;
        let rstd = (run
            .iter()
            .map(|&x| (f64::from(x) - rmean).powi(2))
            .sum::<f64>()
            / n as f64)
            .sqrt();
        (rmean - mean).abs() <= 1e-5 * rmean.abs().max(1e-3)
            && (rstd - std).abs() <= 1e-4 * rstd.max(1e-3)
    })
}

/// `towerlink store inspect` of the running agent's store (read-only): (next seq, queued
/// events and replies, seqs merged away).
fn inspect(bin: &std::path::Path, store: &std::path::Path) -> anyhow::Result<(u64, u64, u64)> {
    let out = Command::new(bin)
        .args(["store", "inspect"])
        .arg(store)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|w| w.trim_start_matches('(').parse().ok())
    };
    let events = text
        .lines()
        .find(|l| l.starts_with("unacknowledged:"))
        .and_then(|l| l.split('(').nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|w| w.parse().ok());
    Ok((
        field("next seq:").context("next seq")?,
        events.context("events")?,
        field("merged away:").context("merged away")?,
    ))
}

fn queued(m: &Received) -> bool {
    m.topic.contains("/data/")
        || m.topic.contains("/event/")
        || m.topic.contains("/capture/")
        || m.topic.ends_with("/reply")
}

#[test]
fn a_store_past_its_mark_merges_windows_and_the_platform_sees_no_gap() -> anyhow::Result<()> {
    let bin = binary("towerlink-agent", "towerlink")?;
    let merge_above = std::env::var("MERGE_E2E_MERGE_ABOVE").unwrap_or_else(|_| "80%".into());
    let dir = tempfile::tempdir()?;
    let mut broker = MosquittoProcess::start(&dir.path().join("broker"))?;
    let gw = unique_gw("e2e-merge");
    // The platform's persistent session, made before the outage: it misses nothing after.
    let sub = SessionSubscriber::connect(
        broker.port(),
        &unique_gw("merge-sub"),
        &format!("towerlink/v1/{gw}/#"),
    )?;
    broker.stop()?;
    let scenario = Scenario::from_toml_str(
        "seed = 13\n[[panels]]\nname = \"panel-0\"\nnode = 100\n[[panels]]\nname = \"panel-1\"\nnode = 101\n\
         [[panels]]\nname = \"panel-2\"\nnode = 102\n[[panels]]\nname = \"panel-3\"\nnode = 103\n",
    )?;
    let nodes = spawn_tower(&scenario, &dir.path().join("ports"), true)?;
    let store = dir.path().join("store");
    let config = dir.path().join("towerlink.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nid = \"{gw}\"\n\n[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\nkeep_alive = \"5s\"\nbatch = \"2s\"\n\n\
             [store]\npath = \"{}\"\nfsync = \"50ms\"\nmax_bytes = \"64KiB\"\nsegment_bytes = \"16KiB\"\nmerge_above = \"{merge_above}\"\n\n\
             [health]\ninterval = \"1s\"\n\n{}",
            broker.port(),
            store.display(),
            node_sections(&nodes)
        ),
    )?;
    let mut agent = AgentProcess::start(&config)?;

    // Offline: queue well over twice the store's 64 KiB of windows (about 550 bytes each)
    // and every node's alarm.
    let mut last_inspection = (0, 0, 0);
    let queued_enough = wait_until(scaled(Duration::from_secs(150)), || {
        if let Ok(i) = inspect(&bin, &store) {
            last_inspection = i;
        }
        last_inspection.0 > 260 && last_inspection.1 >= nodes.len() as u64
    });
    ensure!(
        queued_enough,
        "the offline agent did not queue enough: (next seq, events, merged) = {last_inspection:?}\n{}",
        agent.log()
    );
    ensure!(
        agent.is_running(),
        "the agent died offline: {}",
        agent.log()
    );
    let offline_last = last_inspection.0 - 1;

    // The broker comes back; the agent reconnects (back-off up to 60 s) and sends its
    // backlog. Done once every seq up to the offline ones arrived, merged or not, and a
    // health report after that counts what was merged.
    broker.restart()?;
    let covered = |msgs: &[Received]| -> std::collections::BTreeSet<u64> {
        let mut seen = std::collections::BTreeSet::new();
        for m in msgs.iter().filter(|m| queued(m)) {
            if let Some(list) = m.json["merged_seqs"].as_array() {
                seen.extend(list.iter().filter_map(Value::as_u64));
            }
            seen.extend(m.json["seq"].as_u64());
        }
        seen
    };
    let all_there =
        |msgs: &[Received]| covered(msgs).range(1..=offline_last).count() as u64 == offline_last;
    let drained = |msgs: &[Received]| {
        msgs.iter()
            .filter(|m| m.topic.ends_with("/health"))
            .any(|h| {
                h.json["queue"]["last_seq"].as_u64() > Some(offline_last + 5)
                    && h.json["queue"]["depth"].as_u64() < Some(10)
            })
    };
    let delivered = wait_until(scaled(Duration::from_secs(120)), || {
        let all = sub.all();
        all_there(&all) || drained(&all)
    });
    ensure!(delivered, "the backlog did not go out\n{}", agent.log());
    // Drained per the agent's health: what it sent is at the broker; let it reach us.
    wait_until(scaled(Duration::from_secs(10)), || all_there(&sub.all()));
    agent.stop()?;
    let received = sub.all();
    ensure!(sub.violations().is_empty(), "{:?}", sub.violations());

    // The platform's audit over what arrived (batches decoded into their windows by the
    // harness, audited as the data messages they stand for).
    let mut audit = Audit::new("towerlink/v1", FeedSchemas::embedded()?);
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as f64;
    // The harness has already split each batch into its windows (on their data topics), and
    // shows health deltas expanded: the audit takes the windows and the full reports.
    for m in received
        .iter()
        .filter(|m| !m.topic.ends_with("/batch") && m.json.get("delta").is_none())
    {
        audit.on_message(&m.topic, &serde_json::to_vec(&m.json)?, now);
    }
    let health_evicted = received
        .iter()
        .filter(|m| m.topic.ends_with("/health"))
        .filter_map(|h| h.json["queue"]["evicted"].as_u64())
        .max();
    ensure!(
        health_evicted == Some(0),
        "health queue.evicted {health_evicted:?}"
    );
    let report = audit.report(false);
    let g = &report["gateways"][&gw];
    ensure!(g.is_object(), "the audit saw no gateway {gw}: {report}");
    ensure!(g["invalid"] == 0, "invalid messages: {g}");
    ensure!(
        g["evicted"] == 0 && g["evicted_reported"] == 0,
        "evicted: {g}"
    );
    ensure!(g["merged"].as_u64() > Some(0), "nothing merged: {g}");
    ensure!(
        g["seq"]["first"] == 1,
        "the audit missed the first seq: {g}"
    );
    ensure!(
        g["gaps"] == Value::Array(Vec::new()) && g["missing"] == 0,
        "seq gaps once merged_seqs are counted: {g}"
    );
    // Health counts exactly the windows merged away (the seqs only in merged_seqs).
    let health_merged = received
        .iter()
        .filter(|m| m.topic.ends_with("/health"))
        .filter_map(|h| h.json["queue"]["merged"].as_u64())
        .max()
        .context("no health")?;
    ensure!(
        Some(health_merged) == g["merged"].as_u64(),
        "health queue.merged {health_merged} vs the audit's {}",
        g["merged"]
    );
    // Every node's alarm arrived (events are never merged, never evicted).
    let events = received
        .iter()
        .filter(|m| m.topic.contains("/event/") && m.json["event"] == "threshold")
        .count();
    ensure!(events >= nodes.len(), "only {events} threshold events");

    // Merged windows say so and carry exactly the statistics of what the node sent.
    let merged: Vec<&Received> = received
        .iter()
        .filter(|m| m.json.get("merged").is_some())
        .collect();
    ensure!(!merged.is_empty(), "no merged window arrived");
    eprintln!("a merged window: {}", merged[0].json);
    let ids: BTreeMap<&str, u8> = [
        ("strain", 0u8),
        ("tilt_x", 1),
        ("tilt_y", 2),
        ("temperature", 3),
    ]
    .into_iter()
    .collect();
    let mut checked = 0;
    for node in &nodes {
        let sent = node.sent_frames();
        for w in merged.iter().filter(|w| w.json["dev"] == node.dev()) {
            let list = w.json["merged_seqs"].as_array().context("merged_seqs")?;
            ensure!(
                w.json["merged"].as_u64() == Some(list.len() as u64)
                    && list.first() == Some(&w.json["seq"]),
                "merged and merged_seqs disagree: {}",
                w.json
            );
            let span = millis(&w.json["end"]) - millis(&w.json["start"]);
            ensure!(
                span > 1_000 && span <= 600_000,
                "span {span} ms: {}",
                w.json
            );
            for (name, stats) in w.json["ch"].as_object().context("a window without ch")? {
                let id = *ids.get(name.as_str()).context("an unknown channel")?;
                ensure!(
                    matches_a_run(&sent_values(&sent, id), stats),
                    "{} {name} merged window {} ({stats}) is no run of what the node sent",
                    node.dev(),
                    w.json["seq"]
                );
                checked += 1;
            }
        }
    }
    ensure!(
        checked >= 3,
        "only {checked} merged channel windows checked"
    );
    Ok(())
}

fn millis(v: &Value) -> i64 {
    v.as_str()
        .and_then(|t| humantime::parse_rfc3339(t).ok())
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as i64)
}
