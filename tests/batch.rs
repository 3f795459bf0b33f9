//! The compact telemetry path end to end (issue 18): a simulated tower, the real agent with
//! `[mqtt] batch = "3s"`, Mosquitto, and a platform subscriber that decodes each batch with
//! `feed::batch::decode` and validates every item as a `data` message (the harness does).
//! Every `seq` arrives exactly once across batches and single messages, every batched
//! window's statistics are exactly those of what the node sent, and a command's reply (an
//! event-class message) is not held for the batch.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use towerlink_e2e::{unique_gw, write_config_batch, AgentProcess, Received, Subscriber};
use towerlink_firmware::protocol::{Body, Frame};
use towerlink_sim::virtual_node::{spawn_tower, VirtualNode};
use towerlink_sim_chips::Scenario;

const RAW: &str = "[node.channels.strain]\nspike = false\n[node.channels.tilt_x]\nspike = false\n\
                   [node.channels.tilt_y]\nspike = false\n[node.channels.temperature]\nspike = false\n";

fn node_sections(nodes: &[VirtualNode]) -> String {
    nodes
        .iter()
        .map(|n| {
            format!(
                "[[node]]\nid = \"{}\"\nport = \"{}\"\nwindow = \"1s\"\nwindow_grace = \"1s\"\nnode_id = {}\n{RAW}\n",
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

/// Does `values` hold a contiguous run with exactly these statistics (n, min, max, last,
/// mean and std to f32 precision)?
fn matches_a_run(values: &[f32], stats: &serde_json::Value) -> bool {
    let (Some(n), Some(min), Some(max), Some(last), Some(mean)) = (
        stats["n"].as_u64(),
        stats["min"].as_f64(),
        stats["max"].as_f64(),
        stats["last"].as_f64(),
        stats["mean"].as_f64(),
    ) else {
        return false;
    };
    let n = n as usize;
    if n == 0 || n > values.len() {
        return false;
    }
    (0..=values.len() - n).any(|i| {
        let run = &values[i..i + n];
        let rmin = run.iter().copied().fold(f32::INFINITY, f32::min);
        let rmax = run.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let rmean = run.iter().map(|&x| f64::from(x)).sum::<f64>() / n as f64;
        run[n - 1] == last as f32
            && rmin == min as f32
            && rmax == max as f32
            && (rmean - mean).abs() <= 1e-5 * rmean.abs().max(1e-3)
    })
}

fn queued(m: &Received) -> bool {
    m.topic.contains("/data/") || m.topic.contains("/event/") || m.topic.ends_with("/reply")
}

#[test]
fn batched_windows_arrive_once_exact_and_replies_are_not_held() -> anyhow::Result<()> {
    towerlink_e2e::binary("towerlink-agent", "towerlink")?;
    let dir = tempfile::tempdir()?;
    let scenario = Scenario::from_toml_str(
        "seed = 11\n[[panels]]\nname = \"panel-0\"\nnode = 100\n[[panels]]\nname = \"panel-1\"\nnode = 101\n",
    )?;
    let nodes = spawn_tower(&scenario, &dir.path().join("ports"), true)?;
    let gw = unique_gw("e2e-batch");
    let sub = Subscriber::connect(&format!("towerlink/v1/{gw}/#"))?;
    let config = write_config_batch(
        dir.path(),
        &gw,
        "3s",
        &format!("[health]\ninterval = \"1s\"\n\n{}", node_sections(&nodes)),
    )?;
    let mut agent = AgentProcess::start(&config)?;

    sub.wait(Duration::from_secs(40), "three batches", |m| {
        m.iter().filter(|r| r.topic.ends_with("/batch")).count() >= 3
    })?;

    // A command's reply goes out at once, not with the next batch.
    let cmd = format!("towerlink/v1/{gw}/cmd");
    let asked = Instant::now();
    sub.publish(&cmd, br#"{"id":"b-ping","op":"ping"}"#)?;
    sub.wait(Duration::from_secs(10), "the ping's reply", |m| {
        m.iter()
            .any(|r| r.topic.ends_with("/reply") && r.json["id"] == "b-ping")
    })?;
    let replied = sub
        .all()
        .iter()
        .find(|r| r.topic.ends_with("/reply") && r.json["id"] == "b-ping")
        .map(|r| r.at)
        .context("reply")?;
    let latency = replied.saturating_duration_since(asked);
    ensure!(
        latency < Duration::from_millis(1500),
        "the reply waited {latency:?}: held behind the 3 s batch?"
    );
    agent.stop()?;

    let received = sub.all();
    // No window travelled alone: every one is an item of a batch.
    let windows: Vec<&Received> = received
        .iter()
        .filter(|r| r.topic.contains("/data/") && r.json.get("start").is_some())
        .collect();
    ensure!(windows.len() >= 6, "only {} windows", windows.len());
    ensure!(
        windows.iter().all(|w| w.batched),
        "a window went out alone with batching on"
    );
    // Every seq exactly once, no gap.
    let mut seen = BTreeSet::new();
    for m in received.iter().filter(|m| queued(m)) {
        let seq = m.json["seq"]
            .as_u64()
            .context("a queued message without seq")?;
        ensure!(seen.insert(seq), "seq {seq} arrived twice");
    }
    let (first, last) = (
        *seen.first().context("no seq")?,
        *seen.last().context("no seq")?,
    );
    let missing: Vec<u64> = (first..=last).filter(|s| !seen.contains(s)).collect();
    ensure!(missing.is_empty(), "seq gaps: {missing:?}");

    // Each batched window's statistics are exactly those of what its node sent.
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
        for w in windows.iter().filter(|w| w.json["dev"] == node.dev()) {
            for (name, stats) in w.json["ch"].as_object().context("window without ch")? {
                let id = *ids.get(name.as_str()).context("unknown channel")?;
                ensure!(
                    matches_a_run(&sent_values(&sent, id), stats),
                    "{} {name} window {} ({stats}) matches nothing the node sent",
                    node.dev(),
                    w.json["start"]
                );
                checked += 1;
            }
        }
    }
    ensure!(checked >= 12, "only {checked} channel windows checked");
    ensure!(sub.violations().is_empty(), "{:?}", sub.violations());
    Ok(())
}

/// The broker goes away mid-run and comes back: nothing is lost. Batches the agent had in
/// flight, and the windows queued during the outage, arrive (in batches) once it is back;
/// every seq from the first to the last is there, each window only ever as a batch item.
#[test]
fn a_broker_restart_mid_run_loses_nothing() -> anyhow::Result<()> {
    use towerlink_e2e::mosquitto::{MosquittoProcess, SessionSubscriber};
    towerlink_e2e::binary("towerlink-agent", "towerlink")?;
    let dir = tempfile::tempdir()?;
    let mut broker = MosquittoProcess::start(&dir.path().join("broker"))?;
    let scenario = Scenario::from_toml_str(
        "seed = 12\n[[panels]]\nname = \"panel-0\"\nnode = 100\n[[panels]]\nname = \"panel-1\"\nnode = 101\n",
    )?;
    let nodes = spawn_tower(&scenario, &dir.path().join("ports"), true)?;
    let gw = unique_gw("e2e-batch-restart");
    let sub = SessionSubscriber::connect(
        broker.port(),
        &unique_gw("batch-sub"),
        &format!("towerlink/v1/{gw}/#"),
    )?;
    let config = dir.path().join("towerlink.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nid = \"{gw}\"\n\n[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\nkeep_alive = \"5s\"\nbatch = \"2s\"\n\n[store]\npath = \"{}\"\nfsync = \"50ms\"\n\n[health]\ninterval = \"1s\"\n\n{}",
            broker.port(),
            dir.path().join("store").display(),
            node_sections(&nodes)
        ),
    )?;
    let mut agent = AgentProcess::start(&config)?;
    let batches = |s: &SessionSubscriber| {
        s.all()
            .iter()
            .filter(|r| r.topic.ends_with("/batch"))
            .count()
    };
    ensure!(
        towerlink_e2e::wait_until(Duration::from_secs(30), || batches(&sub) >= 2),
        "no two batches before the outage"
    );
    broker.stop()?;
    // The outage: windows keep coming and queue up.
    std::thread::sleep(Duration::from_secs(6));
    ensure!(agent.is_running(), "the agent died during the outage");
    let max_seq = |s: &SessionSubscriber| {
        s.all()
            .iter()
            .filter(|m| queued(m))
            .filter_map(|m| m.json["seq"].as_u64())
            .max()
            .unwrap_or(0)
    };
    let before = max_seq(&sub);
    broker.restart()?;
    // Back-off after a 6 s outage is well under 20 s; then the backlog goes out.
    ensure!(
        towerlink_e2e::wait_until(Duration::from_secs(45), || max_seq(&sub) >= before + 30),
        "the backlog did not arrive after the broker came back (max seq {} before {before})",
        max_seq(&sub)
    );
    agent.stop()?;
    let received = sub.all();
    let seen: BTreeSet<u64> = received
        .iter()
        .filter(|m| queued(m))
        .filter_map(|m| m.json["seq"].as_u64())
        .collect();
    let (first, last) = (
        *seen.first().context("no seq")?,
        *seen.last().context("no seq")?,
    );
    let missing: Vec<u64> = (first..=last).filter(|s| !seen.contains(s)).collect();
    ensure!(missing.is_empty(), "lost across the restart: {missing:?}");
    ensure!(
        received
            .iter()
            .filter(|r| r.topic.contains("/data/") && r.json.get("start").is_some())
            .all(|w| w.batched),
        "a window went out alone"
    );
    Ok(())
}
