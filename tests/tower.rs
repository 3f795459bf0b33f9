//! A simulated tower, end to end: virtual panel nodes (the real firmware core over simulated
//! chips) on pseudo-terminals, the agent as its own process, a real MQTT broker, and a
//! subscriber that checks what the platform would receive.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use serde_json::Value;
use towerlink_e2e::{unique_gw, wait_until, write_config, AgentProcess, Received, Subscriber};
use towerlink_firmware::protocol::{Body, Frame};
use towerlink_sim::virtual_node::{spawn_tower, VirtualNode};
use towerlink_sim_chips::Scenario;

const WINDOW_S: u64 = 2;

/// Spike rejection off: these tests check that windows are exactly the statistics of what
/// the nodes sent (filtering has its own tests in filtering.rs).
const RAW: &str = "[node.channels.strain]\nspike = false\n[node.channels.tilt_x]\nspike = false\n\
                   [node.channels.tilt_y]\nspike = false\n[node.channels.temperature]\nspike = false\n";

fn scenario(seed: u64, panels: usize) -> Scenario {
    let mut text = format!("seed = {seed}\n");
    for i in 0..panels {
        text.push_str(&format!(
            "\n[[panels]]\nname = \"panel-{i}\"\nnode = {}\n",
            100 + i
        ));
    }
    Scenario::from_toml_str(&text).expect("test scenario parses")
}

fn node_sections(nodes: &[VirtualNode]) -> String {
    nodes
        .iter()
        .map(|n| {
            format!(
                "[[node]]\nid = \"{}\"\nport = \"{}\"\nwindow = \"{WINDOW_S}s\"\nwindow_grace = \"1500ms\"\nnode_id = {}\n{RAW}\n",
                n.dev(),
                n.path().display(),
                n.node_id()
            )
        })
        .collect()
}

fn health_section() -> &'static str {
    "[health]\ninterval = \"1s\"\n\n"
}

/// Every value a node sent on one channel, in order.
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

/// Does `values` hold a contiguous run with exactly these statistics?
fn find_run(values: &[f32], stats: &Value) -> Option<usize> {
    let n = stats["n"].as_u64()? as usize;
    // The agent sends f32 values in their shortest decimal form: compare them as f32.
    let (min, max, last) = (
        stats["min"].as_f64()? as f32,
        stats["max"].as_f64()? as f32,
        stats["last"].as_f64()? as f32,
    );
    let (mean, std) = (stats["mean"].as_f64()?, stats["std"].as_f64()?);
    if n == 0 || n > values.len() {
        return None;
    }
    (0..=values.len() - n).find(|&i| {
        let run = &values[i..i + n];
        let f = |x: f32| f64::from(x);
        if run[n - 1] != last {
            return false;
        }
        let rmin = run.iter().copied().fold(f32::INFINITY, f32::min);
        let rmax = run.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let rmean = run.iter().map(|&x| f(x)).sum::<f64>() / n as f64;
        let rstd = (run.iter().map(|&x| (f(x) - rmean).powi(2)).sum::<f64>() / n as f64).sqrt();
        let tol = |a: f64| 1e-5 * a.abs().max(1e-3);
        rmin == min
            && rmax == max
            && (rmean - mean).abs() <= tol(rmean)
            && (rstd - std).abs() <= tol(rstd).max(1e-6)
    })
}

fn seqs(messages: &[Received]) -> Vec<u64> {
    messages
        .iter()
        .filter(|m| {
            m.topic.contains("/data/") || m.topic.contains("/event/") || m.topic.ends_with("/reply")
        })
        .filter_map(|m| m.json["seq"].as_u64())
        .collect()
}

fn assert_consecutive(seqs: &[u64]) -> anyhow::Result<()> {
    let unique: BTreeSet<u64> = seqs.iter().copied().collect();
    let (Some(&first), Some(&last)) = (unique.first(), unique.last()) else {
        bail!("no seq at all")
    };
    let missing: Vec<u64> = (first..=last).filter(|s| !unique.contains(s)).collect();
    ensure!(
        missing.is_empty(),
        "seq gaps between {first} and {last}: {missing:?}"
    );
    Ok(())
}

fn data_of<'a>(messages: &'a [Received], dev: &str) -> Vec<&'a Received> {
    messages
        .iter()
        .filter(|m| m.topic.ends_with(&format!("/data/{dev}")))
        .collect()
}

fn latest_health(sub: &Subscriber) -> Option<Value> {
    sub.on("/health").last().map(|m| m.json.clone())
}

#[test]
fn a_simulated_tower_reaches_the_platform() -> anyhow::Result<()> {
    towerlink_e2e::binary("towerlink-agent", "towerlink")?;
    let dir = tempfile::tempdir()?;
    let nodes = spawn_tower(&scenario(7, 2), &dir.path().join("ports"), true)?;
    let gw = unique_gw("e2e-tower");
    let sub = Subscriber::connect(&format!("towerlink/v1/{gw}/#"))?;
    let config = write_config(
        dir.path(),
        &gw,
        &format!("{}{}", health_section(), node_sections(&nodes)),
    )?;
    let mut agent = AgentProcess::start(&config)?;
    let state_topic = format!("towerlink/v1/{gw}/state");

    // Birth: the retained online state.
    sub.wait(Duration::from_secs(15), "the online birth", |m| {
        m.iter()
            .any(|r| r.topic == state_topic && r.json["state"] == "online")
    })?;

    // Telemetry: at least three strain windows per device (temperature, a slow channel,
    // reports by exception in messages of its own).
    sub.wait(
        Duration::from_secs(30),
        "three windows of every node",
        |m| {
            nodes.iter().all(|n| {
                data_of(m, n.dev())
                    .iter()
                    .filter(|d| d.json["ch"].get("strain").is_some())
                    .count()
                    >= 3
            })
        },
    )?;

    // Every window's statistics are those of a contiguous run of what the node generated.
    let received = sub.all();
    let mut checked = 0;
    for node in &nodes {
        let sent = node.sent_frames();
        let hello_channels: BTreeMap<String, u8> = [
            ("strain", 0u8),
            ("tilt_x", 1),
            ("tilt_y", 2),
            ("temperature", 3),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        for msg in data_of(&received, node.dev()) {
            let ch = msg.json["ch"].as_object().context("data without ch")?;
            ensure!(!ch.is_empty(), "empty window: {}", msg.json);
            for (name, stats) in ch {
                let id = *hello_channels
                    .get(name)
                    .with_context(|| format!("unexpected channel {name}"))?;
                let values = sent_values(&sent, id);
                ensure!(
                    find_run(&values, stats).is_some(),
                    "{}: window {} of {name} ({stats}) matches no run of the {} values the node sent",
                    node.dev(),
                    msg.json["start"],
                    values.len()
                );
                checked += 1;
            }
            // Units are the contract's.
            ensure!(ch.get("strain").is_none_or(|s| s["u"] == "ustrain"));
            ensure!(ch.get("tilt_x").is_none_or(|s| s["u"] == "deg"));
            ensure!(ch.get("temperature").is_none_or(|s| s["u"] == "Cel"));
        }
        // A full strain window has 50 Hz x 2 s samples.
        let full = data_of(&received, node.dev())
            .iter()
            .skip(1)
            .filter_map(|m| m.json["ch"]["strain"]["n"].as_u64())
            .collect::<Vec<_>>();
        ensure!(
            full.iter().any(|&n| (99..=101).contains(&n)),
            "no full strain window: {full:?}"
        );
    }
    ensure!(
        checked >= 2 * 3 * 3,
        "only {checked} channel windows checked"
    );
    assert_consecutive(&seqs(&received))?;

    // Garbage on the line mid-stream costs only the frames it damages.
    let victim = &nodes[0];
    let before = latest_health(&sub).context("no health yet")?;
    let lost_before = before["sources"][victim.dev()]["lost_frames"]
        .as_u64()
        .unwrap_or(0);
    let bursts: [&[u8]; 5] = [
        b"\xde\xad\xbe\xef\x01\x02\x03",
        b"\x00\x00\x00",
        b"noise on the RS-485 line\x00",
        &[0x55; 600],
        b"\x07\x01\x07\xac\x02\x01\x02\x00",
    ];
    // One injection: the node puts it on the line between two of its frames, and the bursts
    // end with a 0x00 between them, so the garbage cannot swallow a real frame.
    victim.inject(&bursts.concat());
    let sent_at_injection = victim.frames_sent();
    sub.wait(
        Duration::from_secs(20),
        "health counting the damaged frames",
        |_| {
            latest_health(&sub).is_some_and(|h| {
                let s = &h["sources"][victim.dev()];
                let errors = s["crc_errors"].as_u64().unwrap_or(0)
                    + s["undecodable"].as_u64().unwrap_or(0)
                    + s["oversize"].as_u64().unwrap_or(0);
                errors >= 3 && s["frames_ok"].as_u64().unwrap_or(0) > 0
            })
        },
    )?;
    sub.wait(Duration::from_secs(20), "frames after the garbage", |_| {
        victim.frames_sent() > sent_at_injection + 20
    })?;
    let windows_before = data_of(&sub.all(), victim.dev()).len();
    sub.wait(
        Duration::from_secs(20),
        "two more windows after the garbage",
        |m| data_of(m, victim.dev()).len() >= windows_before + 2,
    )?;
    let after = latest_health(&sub).context("no health")?;
    let lost = after["sources"][victim.dev()]["lost_frames"]
        .as_u64()
        .unwrap_or(0)
        - lost_before;
    ensure!(
        lost == 0,
        "{lost} frames lost to {} garbage bursts between frames (expected none)",
        bursts.len()
    );

    // A clean stop says offline; a restart continues the seq without reuse.
    let seq_before_restart = seqs(&sub.all()).into_iter().max().context("no seq")?;
    agent.stop()?;
    sub.wait(Duration::from_secs(10), "offline after a clean stop", |m| {
        m.iter()
            .rev()
            .find(|r| r.topic == state_topic)
            .is_some_and(|r| r.json["state"] == "offline")
    })?;
    let count_at_stop = sub.all().len();
    let mut agent = AgentProcess::start(&config)?;
    sub.wait(Duration::from_secs(30), "data after the restart", |m| {
        m[count_at_stop.min(m.len())..]
            .iter()
            .filter(|r| r.topic.contains("/data/"))
            .count()
            >= 2
    })?;
    let after_restart: Vec<u64> = seqs(&sub.all()[count_at_stop..]);
    ensure!(
        after_restart.iter().all(|&s| s > seq_before_restart),
        "seq reused after restart: before {seq_before_restart}, after {after_restart:?}"
    );
    assert_consecutive(&seqs(&sub.all()))?;

    // A crash leaves the last will: offline, from the broker.
    agent.kill()?;
    sub.wait(
        Duration::from_secs(20),
        "the last will after SIGKILL",
        |m| {
            m.iter()
                .rev()
                .find(|r| r.topic == state_topic)
                .is_some_and(|r| r.json["state"] == "offline")
        },
    )?;

    sub.clear_retained(&state_topic);
    for n in nodes {
        n.stop();
    }
    Ok(())
}

#[test]
fn an_unplugged_adapter_is_reopened_and_the_agent_keeps_running() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let nodes = spawn_tower(&scenario(11, 1), &dir.path().join("ports"), false)?;
    let node = &nodes[0];
    let gw = unique_gw("e2e-unplug");
    let sub = Subscriber::connect(&format!("towerlink/v1/{gw}/#"))?;
    let config = write_config(
        dir.path(),
        &gw,
        &format!("{}{}", health_section(), node_sections(&nodes)),
    )?;
    let mut agent = AgentProcess::start(&config)?;
    sub.wait(Duration::from_secs(30), "a first window", |m| {
        !data_of(m, node.dev()).is_empty()
    })?;

    node.unplug()?;
    // A health report sent after the unplug must show the port offline (earlier ones may
    // have said offline for other reasons, e.g. before the first frame).
    let unplugged_at = std::time::Instant::now();
    sub.wait(
        Duration::from_secs(15),
        "health showing the port offline",
        |m| {
            m.iter()
                .filter(|r| {
                    r.topic.ends_with("/health")
                        && r.at > unplugged_at + Duration::from_millis(1100)
                })
                .any(|h| h.json["sources"][node.dev()]["status"] == "offline")
        },
    )?;
    ensure!(
        agent.is_running(),
        "the agent died when its adapter was unplugged:\n{}",
        agent.log()
    );

    node.replug()?;
    // Windows that closed while the port was away are published too (with `n < expected`),
    // so windows alone do not prove the reopen: a health report must say it.
    let replugged_at = std::time::Instant::now();
    let reopened = |r: &Received| {
        let s = &r.json["sources"][node.dev()];
        r.topic.ends_with("/health")
            && r.at > replugged_at
            && s["opens"].as_u64().unwrap_or(0) >= 2
            && s["status"] == "ok"
    };
    let waited = sub.wait(
        Duration::from_secs(40),
        "health showing the port reopened",
        |m| m.iter().any(reopened),
    );
    if let Err(e) = waited {
        let h = latest_health(&sub).context("health")?;
        bail!("{e}: port not reopened: {h}");
    }
    let windows = data_of(&sub.all(), node.dev()).len();
    sub.wait(Duration::from_secs(40), "windows after reopening", |m| {
        data_of(m, node.dev()).len() >= windows + 2
    })?;
    ensure!(
        wait_until(Duration::from_secs(5), || agent.is_running()),
        "agent stopped"
    );
    agent.stop()?;
    sub.clear_retained(&format!("towerlink/v1/{gw}/state"));
    for n in nodes {
        n.stop();
    }
    Ok(())
}
