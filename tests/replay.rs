//! `"replay": true` end to end: what the agent handed to the broker without getting its
//! PUBACK goes out again marked replay after a restart, and nothing else is marked.
//!
//! A private Mosquitto is frozen (SIGSTOP) under a running agent: its publishes leave the
//! client (attempted) and are never acknowledged. The agent is stopped (it saves the
//! attempted seqs next to its queue), the frozen broker killed and started again on its
//! port, a fresh subscriber connected, the agent started again: every seq it had attempted
//! arrives with `"replay": true`, every other without.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{ensure, Context};
use rumqttc::MqttOptions;
use towerlink_e2e::mosquitto::MosquittoProcess;
use towerlink_e2e::{unique_gw, write_config, AgentProcess, Subscriber};
use towerlink_sim::virtual_node::spawn_tower;
use towerlink_sim_chips::Scenario;

fn subscriber(port: u16, gw: &str) -> anyhow::Result<Subscriber> {
    let mut opts = MqttOptions::new(unique_gw("sub"), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(10));
    opts.set_max_packet_size(1 << 20, 1 << 20);
    Subscriber::connect_with(opts, &format!("towerlink/v1/{gw}/#"), 256)
}

/// The seqs in the agent's saved attempted file (`first-last` lines).
fn attempted(path: &std::path::Path) -> BTreeSet<u64> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_once('-'))
        .filter_map(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
        .flat_map(|(a, b)| a..=b)
        .collect()
}

#[test]
fn records_attempted_before_a_restart_go_out_again_marked_replay() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut broker = MosquittoProcess::start(&dir.path().join("broker"))?;
    let scenario = Scenario::from_toml_str("seed = 47\n[[panels]]\nname = \"p\"\nnode = 1\n")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let nodes = spawn_tower(&scenario, &dir.path().join("ports"), false)?;
    let n = &nodes[0];
    let gw = unique_gw("e2e-replay");
    let path = write_config(
        dir.path(),
        &gw,
        &format!(
            "[[node]]\nid = \"{}\"\nport = \"{}\"\nnode_id = {}\nwindow = \"1s\"\nwindow_grace = \"300ms\"\n",
            n.dev(),
            n.path().display(),
            n.node_id()
        ),
    )?;
    let (_, default_port) = towerlink_e2e::broker();
    let text = std::fs::read_to_string(&path)?.replace(
        &format!("127.0.0.1:{default_port}\""),
        &format!("127.0.0.1:{}\"", broker.port()),
    );
    std::fs::write(&path, text)?;
    let saved = dir.path().join("store/attempted.seqs");

    let sub = subscriber(broker.port(), &gw)?;
    let mut agent = AgentProcess::start(&path)?;
    sub.wait(Duration::from_secs(30), "two windows", |m| {
        m.iter().filter(|r| r.topic.contains("/data/")).count() >= 2
    })?;
    let before: BTreeSet<u64> = sub
        .all()
        .iter()
        .filter_map(|r| r.json["seq"].as_u64())
        .collect();
    ensure!(
        sub.all().iter().all(|r| r.json.get("replay").is_none()),
        "a first attempt marked replay"
    );
    let last_before = before.last().copied().context("no seq")?;

    // Freeze the broker: the next windows leave the client and are never acknowledged.
    let pid = nix::unistd::Pid::from_raw(broker.pid().context("broker pid")? as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP)?;
    ensure!(
        towerlink_e2e::wait_until(Duration::from_secs(20), || {
            attempted(&saved)
                .iter()
                .filter(|&&s| s > last_before)
                .count()
                >= 2
        }),
        "the agent never saved two attempted seqs; log:\n{}",
        agent.log()
    );
    agent.stop()?;
    let held = attempted(&saved);
    ensure!(!held.is_empty());
    drop(sub);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL)?;
    broker.restart()?;

    let sub = subscriber(broker.port(), &gw)?;
    let mut agent = AgentProcess::start(&path)?;
    sub.wait(Duration::from_secs(30), "every attempted seq again", |m| {
        let got: BTreeSet<u64> = m.iter().filter_map(|r| r.json["seq"].as_u64()).collect();
        held.is_subset(&got)
    })?;
    let max_held = held.last().copied().unwrap_or(0);
    sub.wait(Duration::from_secs(15), "a new window", |m| {
        m.iter()
            .any(|r| r.topic.contains("/data/") && r.json["seq"].as_u64() > Some(max_held))
    })?;
    agent.stop()?;
    for r in sub.all() {
        let Some(seq) = r.json["seq"].as_u64() else {
            continue;
        };
        let replay = r.json.get("replay") == Some(&serde_json::Value::Bool(true));
        ensure!(
            replay == held.contains(&seq),
            "seq {seq}: replay {replay}, attempted before: {}; {}",
            held.contains(&seq),
            r.json
        );
    }
    Ok(())
}
