//! The platform's broker, whatever it is (issue 10, item 5): the feed's end-to-end contract
//! against Mosquitto (MQTT 5 and 3.1.1), RabbitMQ's MQTT plugin and NATS server's MQTT
//! support (both 3.1.1), each a private broker started by the test on its own loopback port
//! (`towerlink_e2e::brokers`), with a simulated panel node feeding the agent.
//!
//! One body for every broker: the retained `online` birth reaches a subscriber that connects
//! after it; QoS 1 data arrives and health `published` grows (PUBACKs came back); a `ping`
//! is answered on `reply`; SIGKILL of the agent leaves the retained last will `offline`;
//! after an agent restart and after a broker restart (same port, same data) a subscriber
//! with a persistent session sees every seq from the first to the last the agent issued.
//!
//! Retained state is read by subscribing to the exact `state` topic: RabbitMQ 3.10 delivers
//! retained messages only to subscriptions without wildcards (see the README's broker notes).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use rumqttc::MqttOptions;
use serde_json::Value;
use towerlink_e2e::brokers::{BrokerProcess, Kind};
use towerlink_e2e::{binary, unique_gw, AgentProcess, Received, Subscriber};
use towerlink_sim::virtual_node::{spawn_tower, VirtualNode};
use towerlink_sim_chips::Scenario;

/// Waits are generous: RabbitMQ takes many seconds to boot and the machine is shared.
const WAIT: Duration = Duration::from_secs(30);

#[test]
fn the_feed_works_through_mosquitto_mqtt5() -> anyhow::Result<()> {
    feed_through(Kind::Mosquitto, None)
}

#[test]
fn the_feed_works_through_mosquitto_mqtt311() -> anyhow::Result<()> {
    feed_through(Kind::Mosquitto, Some("3.1.1"))
}

#[test]
fn the_feed_works_through_rabbitmq() -> anyhow::Result<()> {
    feed_through(Kind::RabbitMq, Some("3.1.1"))
}

#[test]
fn the_feed_works_through_nats() -> anyhow::Result<()> {
    feed_through(Kind::Nats, Some("3.1.1"))
}

fn options(port: u16, client_id: &str) -> MqttOptions {
    let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_max_packet_size(1 << 20, 1 << 20);
    opts
}

/// A subscriber that connects now to the exact `state` topic and returns the retained
/// state it is given, once that is `want`.
///
/// A subscriber that connects while the broker is still publishing the change (a last will
/// right after a SIGKILL, a birth right after a connect) is handed the old retained state
/// and then the new one live, without the retain flag (MQTT 3.1.1 §3.3.1.3): that proves
/// nothing about what the broker kept. So each attempt is a fresh subscriber, given a few
/// seconds for its retained copy, until one is handed `want` retained or `WAIT` is over.
fn retained_state(port: u16, gw: &str, want: &str) -> anyhow::Result<Received> {
    const ATTEMPT: Duration = Duration::from_secs(3);
    let topic = format!("towerlink/v1/{gw}/state");
    let deadline = std::time::Instant::now() + towerlink_e2e::scaled(WAIT);
    loop {
        let late = Subscriber::connect_with(options(port, &unique_gw("late")), &topic, 16)?;
        let seen = late.wait(ATTEMPT, &format!("the retained `{want}` state"), |m| {
            m.iter()
                .any(|r| r.topic == topic && r.retain && r.json["state"] == want)
        });
        match seen {
            Ok(()) => {
                return late
                    .all()
                    .into_iter()
                    .find(|r| r.retain && r.json["state"] == want)
                    .context("retained state vanished");
            }
            Err(e) if std::time::Instant::now() + towerlink_e2e::scaled(ATTEMPT) > deadline => {
                return Err(e).context(format!(
                    "no fresh subscriber was handed `{want}` retained within {WAIT:?}"
                ));
            }
            Err(_) => continue,
        }
    }
}

/// Waits until the last `state` the platform received is `want`.
fn live_state(platform: &Subscriber, want: &str) -> anyhow::Result<()> {
    platform.wait(WAIT, &format!("the state `{want}` live"), |m| {
        m.iter()
            .rev()
            .find(|r| r.topic.ends_with("/state"))
            .is_some_and(|r| r.json["state"] == want)
    })
}

fn queued(all: &[Received]) -> Vec<&Received> {
    all.iter()
        .filter(|m| {
            m.topic.contains("/data/") || m.topic.contains("/event/") || m.topic.ends_with("/reply")
        })
        .filter(|m| m.json["seq"].as_u64().is_some())
        .collect()
}

fn seqs(all: &[Received]) -> BTreeSet<u64> {
    queued(all)
        .iter()
        .filter_map(|m| m.json["seq"].as_u64())
        .collect()
}

fn data_count(all: &[Received]) -> usize {
    all.iter().filter(|m| m.topic.contains("/data/")).count()
}

fn published(all: &[Received]) -> Option<u64> {
    all.iter()
        .rev()
        .find(|m| m.topic.ends_with("/health"))
        .and_then(|m| m.json["messages"]["published"].as_u64())
}

/// `towerlink store inspect --list`: the next seq the agent would issue.
fn next_seq(store: &Path) -> anyhow::Result<u64> {
    let bin = binary("towerlink-agent", "towerlink")?;
    let out = Command::new(bin)
        .args(["store", "inspect", "--list"])
        .arg(store)
        .output()?;
    ensure!(out.status.success(), "store inspect failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            l.strip_prefix("next seq:")
                .and_then(|n| n.trim().parse().ok())
        })
        .context("no `next seq` in the inspection")
}

fn agent_config(
    dir: &Path,
    gw: &str,
    port: u16,
    protocol: Option<&str>,
    node: &VirtualNode,
) -> anyhow::Result<PathBuf> {
    let protocol = protocol
        .map(|p| format!("protocol = \"{p}\"\n"))
        .unwrap_or_default();
    let text = format!(
        "[gateway]\nid = \"{gw}\"\n\n[mqtt]\nbatch = \"0s\"\nurl = \"mqtt://127.0.0.1:{port}\"\ntopic_root = \"towerlink/v1\"\nkeep_alive = \"5s\"\n{protocol}\n[store]\npath = \"{}\"\nfsync = \"50ms\"\n\n[health]\ninterval = \"1s\"\n\n[[node]]\nid = \"{}\"\nport = \"{}\"\nwindow = \"500ms\"\nwindow_grace = \"500ms\"\nnode_id = {}\n",
        dir.join("store").display(),
        node.dev(),
        node.path().display(),
        node.node_id()
    );
    let path = dir.join("towerlink.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

fn feed_through(kind: Kind, protocol: Option<&str>) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut broker = BrokerProcess::start(kind, &dir.path().join("broker"))
        .with_context(|| format!("starting a private {kind:?}"))?;
    let port = broker.port();
    let scenario =
        Scenario::from_toml_str("seed = 10\n\n[[panels]]\nname = \"panel-0\"\nnode = 100\n")?;
    let nodes = spawn_tower(&scenario, &dir.path().join("ports"), false)?;
    let node = nodes.first().context("no node")?;
    let gw = unique_gw(&format!("{kind:?}").to_lowercase());
    let config = agent_config(dir.path(), &gw, port, protocol, node)?;

    // The platform: a persistent session (clean_session = false) on every topic of the
    // gateway, which reconnects by itself and so misses nothing across a broker restart.
    let mut opts = options(port, &unique_gw("platform"));
    opts.set_clean_session(false);
    opts.set_inflight(1000);
    let platform = Subscriber::connect_with(opts, &format!("towerlink/v1/{gw}/#"), 1024)?;
    let cmd = format!("towerlink/v1/{gw}/cmd");

    let mut agent = AgentProcess::start(&config)?;
    let result = (|| -> anyhow::Result<()> {
        // QoS 1 data arrives; health `published` grows: the broker's PUBACKs came back.
        platform.wait(WAIT, "data and two health reports", |m| {
            data_count(m) >= 2 && m.iter().filter(|r| r.topic.ends_with("/health")).count() >= 2
        })?;
        let first_published = published(&platform.all()).context("no health")?;
        platform.wait(WAIT, "health `published` growing", |m| {
            published(m).is_some_and(|p| p >= first_published + 2)
        })?;

        // Birth: retained `online`, seen by a subscriber connecting after it.
        retained_state(port, &gw, "online")?;

        // A command is answered on `reply`.
        platform.publish(&cmd, br#"{"id":"ping-1","op":"ping"}"#)?;
        platform.wait(WAIT, "the ping's reply", |m| {
            m.iter().any(|r| {
                r.topic.ends_with("/reply") && r.json["id"] == "ping-1" && r.json["ok"] == true
            })
        })?;

        // A crash: the broker publishes the retained last will `offline`.
        agent.kill()?;
        let will = retained_state(port, &gw, "offline")?;
        ensure!(will.retain, "the last will is not retained");

        // An agent restart: online again, the seq goes on.
        let before_restart = seqs(&platform.all()).last().copied().context("no seq")?;
        agent = AgentProcess::start(&config)?;
        live_state(&platform, "online")?;
        retained_state(port, &gw, "online")?;
        platform.wait(WAIT, "data after the agent restart", |m| {
            seqs(m).last().is_some_and(|&s| s > before_restart + 2)
        })?;

        // A broker restart: same port, same data; agent and platform reconnect by themselves.
        let before_broker = seqs(&platform.all()).last().copied().context("no seq")?;
        broker.restart().context("restarting the broker")?;
        platform.wait(WAIT, "data after the broker restart", |m| {
            seqs(m).last().is_some_and(|&s| s > before_broker + 3)
        })?;
        platform.publish(&cmd, br#"{"id":"ping-2","op":"ping"}"#)?;
        platform.wait(WAIT, "the ping's reply after the broker restart", |m| {
            m.iter().any(|r| {
                r.topic.ends_with("/reply") && r.json["id"] == "ping-2" && r.json["ok"] == true
            })
        })?;
        live_state(&platform, "online")?;
        retained_state(port, &gw, "online")?;

        // A clean stop; every seq the agent ever issued reached the platform.
        agent.stop()?;
        let next = next_seq(&dir.path().join("store"))?;
        platform.wait(WAIT, "every seq up to the last one issued", |m| {
            seqs(m).last().is_some_and(|&s| s + 1 >= next)
        })?;
        let got = seqs(&platform.all());
        let first = *got.first().context("no seq")?;
        let missing: Vec<u64> = (first..next).filter(|s| !got.contains(s)).collect();
        ensure!(
            missing.is_empty(),
            "seqs missing at the platform between {first} and {}: {missing:?}",
            next - 1
        );
        ensure!(
            got.len() as u64 == next - first,
            "seqs beyond the last issued"
        );
        let health: Vec<Value> = platform
            .all()
            .iter()
            .filter(|m| m.topic.ends_with("/health"))
            .map(|m| m.json.clone())
            .collect();
        ensure!(
            health
                .iter()
                .all(|h| h["mqtt"]["protocol"] == protocol.unwrap_or("5")),
            "health reports another protocol than configured"
        );
        Ok(())
    })();
    if let Err(e) = result {
        bail!(
            "{e:#}\n--- agent log (tail) ---\n{}\n--- broker log (tail) ---\n{}",
            tail(&agent.log(), 40),
            broker.log()
        );
    }
    Ok(())
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
