//! Oversize publishes on `{root}/{gw}/cmd` never take the gateway offline (issue 13, item 3).
//!
//! A simulated panel node feeds telemetry while a raw MQTT client publishes 1 MiB, 16 MiB
//! and a 256 MiB payload (MQTT's largest packet) on the gateway's `cmd` topic, then the
//! platform sends a `ping`. "The session stays up" means: no `offline` on `state`, the
//! agent's `mqtt.connects` in `health` does not grow, the telemetry `seq` has no gap, and
//! the ping is answered.
//!
//! - MQTT 5 (the default) against the machine's Mosquitto, whose `message_size_limit` is the
//!   default (anything up to 256 MiB is forwarded): the agent's Maximum Packet Size in
//!   CONNECT makes the broker drop the big messages for it.
//! - MQTT 3.1.1 against a Mosquitto of our own with `message_size_limit` below the agent's
//!   `max_packet`: the broker refuses the big ones; one within the broker's limit but over
//!   the command limit (4 KiB) is refused by the agent's command parser, answered, counted.
//! - MQTT 3.1.1 against a broker that forwards more than `max_packet` (the misconfiguration):
//!   counted in `oversize_packets`, logged with the broker setting to fix, reconnected at
//!   once; telemetry still has no gap and the ping is answered.
//!
//! The big payloads are streamed from one reused 1 MiB buffer over a raw TCP connection, so
//! this test's own memory stays small whatever the payload size.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use serde_json::Value;
use towerlink_e2e::mosquitto::MosquittoProcess;
use towerlink_e2e::{broker, unique_gw, wait_until, AgentProcess, Received, Subscriber};
use towerlink_sim::virtual_node::{spawn_tower, VirtualNode};
use towerlink_sim_chips::Scenario;

/// MQTT's largest remaining length (268,435,455 bytes).
const MQTT_MAX_REMAINING: usize = 268_435_455;

/// What the broker did with a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// PUBACK: taken (and, within its `message_size_limit`, forwarded).
    Acknowledged,
    /// The broker closed the publisher's connection instead (Mosquitto does this for some
    /// sizes over its `message_size_limit`).
    Disconnected,
}

/// A bare MQTT 3.1.1 publisher on a raw socket: QoS 1 publishes of any size, the payload
/// streamed from one buffer.
struct RawPublisher {
    stream: TcpStream,
    chunk: Vec<u8>,
    next_pkid: u16,
}

fn remaining_length(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            return out;
        }
    }
}

impl RawPublisher {
    fn connect(host: &str, port: u16, client_id: &str) -> anyhow::Result<RawPublisher> {
        let mut stream = TcpStream::connect((host, port)).context("publisher: TCP")?;
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        stream.set_write_timeout(Some(Duration::from_secs(120)))?;
        let id = client_id.as_bytes();
        let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 60];
        body.extend_from_slice(&(id.len() as u16).to_be_bytes());
        body.extend_from_slice(id);
        let mut packet = vec![0x10];
        packet.extend(remaining_length(body.len()));
        packet.extend(body);
        stream.write_all(&packet)?;
        let mut connack = [0u8; 4];
        stream
            .read_exact(&mut connack)
            .context("publisher: CONNACK")?;
        ensure!(
            connack == [0x20, 0x02, 0x00, 0x00],
            "publisher refused: {connack:02x?}"
        );
        Ok(RawPublisher {
            stream,
            // Not JSON, not even UTF-8 at the start: garbage as well as big.
            chunk: (0..1 << 20).map(|i| (i % 251) as u8).collect(),
            next_pkid: 1,
        })
    }

    /// Publishes `payload_len` bytes on `topic` at QoS 1 and waits for the broker's PUBACK.
    fn publish_big(&mut self, topic: &str, payload_len: usize) -> anyhow::Result<Outcome> {
        let pkid = self.next_pkid;
        self.next_pkid += 1;
        let remaining = 2 + topic.len() + 2 + payload_len;
        ensure!(
            remaining <= MQTT_MAX_REMAINING,
            "{payload_len} is over MQTT's limit"
        );
        let mut header = vec![0x32];
        header.extend(remaining_length(remaining));
        header.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        header.extend_from_slice(topic.as_bytes());
        header.extend_from_slice(&pkid.to_be_bytes());
        let closed = |e: &std::io::Error| {
            matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            )
        };
        if let Err(e) = self.stream.write_all(&header) {
            return if closed(&e) {
                Ok(Outcome::Disconnected)
            } else {
                Err(e.into())
            };
        }
        let mut left = payload_len;
        while left > 0 {
            let n = left.min(self.chunk.len());
            match self.stream.write_all(&self.chunk[..n]) {
                Ok(()) => left -= n,
                Err(e) if closed(&e) => return Ok(Outcome::Disconnected),
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("publisher: writing {payload_len} bytes"))
                }
            }
        }
        self.stream.flush()?;
        let mut puback = [0u8; 4];
        match self.stream.read_exact(&mut puback) {
            Ok(()) => {}
            Err(e) if closed(&e) => return Ok(Outcome::Disconnected),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("publisher: no PUBACK for {payload_len} bytes"))
            }
        }
        let [a, b] = pkid.to_be_bytes();
        ensure!(
            puback == [0x40, 0x02, a, b],
            "unexpected answer {puback:02x?}"
        );
        Ok(Outcome::Acknowledged)
    }
}

/// The sizes of the issue: 1 MiB, 16 MiB, and the largest payload MQTT can carry.
fn hostile_sizes(topic: &str) -> [usize; 3] {
    [1 << 20, 16 << 20, MQTT_MAX_REMAINING - 2 - topic.len() - 2]
}

fn scenario() -> Scenario {
    Scenario::from_toml_str("seed = 13\n\n[[panels]]\nname = \"panel-0\"\nnode = 100\n")
        .expect("test scenario parses")
}

fn agent_config(
    dir: &std::path::Path,
    gw: &str,
    (host, port): (&str, u16),
    mqtt: &str,
    node: &VirtualNode,
) -> anyhow::Result<std::path::PathBuf> {
    let text = format!(
        "[gateway]\nid = \"{gw}\"\n\n[mqtt]\nbatch = \"0s\"\nurl = \"mqtt://{host}:{port}\"\ntopic_root = \"towerlink/v1\"\nkeep_alive = \"5s\"\n{mqtt}\n\n[store]\npath = \"{}\"\n\n[health]\ninterval = \"1s\"\n\n[[node]]\nid = \"{}\"\nport = \"{}\"\nwindow = \"1s\"\nwindow_grace = \"1s\"\nnode_id = {}\n",
        dir.join("store").display(),
        node.dev(),
        node.path().display(),
        node.node_id()
    );
    let path = dir.join("towerlink.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Everything of gateway `gw` but `cmd` (the big payloads must not reach the test's own
/// subscriber).
fn platform(host_port: Option<u16>, gw: &str) -> anyhow::Result<Subscriber> {
    let filters: Vec<String> = ["state", "health", "reply", "data/#", "event/#"]
        .iter()
        .map(|t| format!("towerlink/v1/{gw}/{t}"))
        .collect();
    let filters: Vec<&str> = filters.iter().map(String::as_str).collect();
    match host_port {
        None => Subscriber::connect_many(&filters),
        Some(port) => {
            let mut opts = rumqttc::MqttOptions::new(unique_gw("sub"), "127.0.0.1", port);
            opts.set_keep_alive(Duration::from_secs(10));
            opts.set_max_packet_size(1 << 20, 1 << 20);
            Subscriber::connect_filters(opts, &filters, 64)
        }
    }
}

fn latest_health(sub: &Subscriber) -> Option<Value> {
    sub.on("/health").last().map(|m| m.json.clone())
}

fn data_count(messages: &[Received]) -> usize {
    messages
        .iter()
        .filter(|m| m.topic.contains("/data/"))
        .count()
}

/// The queued messages' seqs (data, events, replies) have no gap.
fn assert_no_seq_gap(messages: &[Received]) -> anyhow::Result<usize> {
    let seqs: BTreeSet<u64> = messages
        .iter()
        .filter(|m| {
            m.topic.contains("/data/") || m.topic.contains("/event/") || m.topic.ends_with("/reply")
        })
        .filter_map(|m| m.json["seq"].as_u64())
        .collect();
    let (Some(&first), Some(&last)) = (seqs.first(), seqs.last()) else {
        bail!("no seq at all")
    };
    let missing: Vec<u64> = (first..=last).filter(|s| !seqs.contains(s)).collect();
    ensure!(
        missing.is_empty(),
        "seq gaps between {first} and {last}: {missing:?}"
    );
    Ok(seqs.len())
}

/// Runs the hostile sequence against a running agent and checks the session stayed up.
/// `refused_by_parser` adds a payload within the broker's limit but over the command limit;
/// `all_taken` requires the broker to acknowledge every big publish (the hostile case: it
/// would forward them). Returns the last health report.
fn hostile_commands(
    sub: &Subscriber,
    agent: &mut AgentProcess,
    gw: &str,
    (host, port): (&str, u16),
    refused_by_parser: bool,
    all_taken: bool,
) -> anyhow::Result<Value> {
    let state = format!("towerlink/v1/{gw}/state");
    let cmd = format!("towerlink/v1/{gw}/cmd");
    sub.wait(Duration::from_secs(20), "the online birth", |m| {
        m.iter()
            .any(|r| r.topic == state && r.json["state"] == "online")
    })?;
    sub.wait(Duration::from_secs(20), "telemetry and health", |m| {
        data_count(m) >= 2 && m.iter().any(|r| r.topic.ends_with("/health"))
    })?;

    let mut publisher = RawPublisher::connect(host, port, &unique_gw("hostile"))?;
    if refused_by_parser {
        let outcome = publisher.publish_big(&cmd, 100 * 1024)?;
        ensure!(outcome == Outcome::Acknowledged, "100 KiB: {outcome:?}");
    }
    for size in hostile_sizes(&cmd) {
        let outcome = publisher.publish_big(&cmd, size)?;
        ensure!(
            !all_taken || outcome == Outcome::Acknowledged,
            "the broker did not take {size} bytes: {outcome:?}"
        );
        if outcome == Outcome::Disconnected {
            publisher = RawPublisher::connect(host, port, &unique_gw("hostile"))?;
        }
        ensure!(
            agent.is_running(),
            "the agent died after {size} bytes on cmd"
        );
    }
    let data_before_ping = data_count(&sub.all());
    sub.publish(&cmd, br#"{"id":"after-big","op":"ping"}"#)?;
    sub.wait(Duration::from_secs(20), "the ping's reply", |m| {
        m.iter().any(|r| {
            r.topic.ends_with("/reply") && r.json["id"] == "after-big" && r.json["ok"] == true
        })
    })
    .with_context(|| agent.log())?;
    if refused_by_parser {
        sub.wait(Duration::from_secs(10), "the too-large refusal", |m| {
            m.iter().any(|r| {
                r.topic.ends_with("/reply")
                    && r.json["ok"] == false
                    && r.json["error"]
                        .as_str()
                        .is_some_and(|e| e.contains("too large"))
            })
        })?;
    }
    // Telemetry goes on after the big ones, and a health report from after the ping.
    sub.wait(Duration::from_secs(20), "telemetry after the ping", |m| {
        data_count(m) >= data_before_ping + 2
    })?;
    let replied = sub.all().len();
    sub.wait(
        Duration::from_secs(10),
        "a health report after the ping",
        |m| m[replied..].iter().any(|r| r.topic.ends_with("/health")),
    )?;
    let all = sub.all();
    let offline: Vec<&Received> = all
        .iter()
        .filter(|r| r.topic == state && r.json["state"] != "online")
        .collect();
    ensure!(offline.is_empty(), "the gateway went offline: {offline:?}");
    let queued = assert_no_seq_gap(&all)?;
    ensure!(queued >= 4, "only {queued} queued messages seen");
    latest_health(sub).context("no health")
}

#[test]
fn mqtt5_huge_publishes_on_cmd_are_dropped_by_the_broker_and_the_session_stays_up(
) -> anyhow::Result<()> {
    towerlink_e2e::binary("towerlink-agent", "towerlink")?;
    let dir = tempfile::tempdir()?;
    let nodes = spawn_tower(&scenario(), &dir.path().join("ports"), true)?;
    let gw = unique_gw("e2e-oversize5");
    let sub = platform(None, &gw)?;
    let (host, port) = broker();
    let config = agent_config(dir.path(), &gw, (&host, port), "", &nodes[0])?;
    let mut agent = AgentProcess::start(&config)?;
    let health = hostile_commands(&sub, &mut agent, &gw, (&host, port), false, true)?;
    let mqtt = &health["mqtt"];
    ensure!(
        mqtt["protocol"] == "5"
            && mqtt["connects"] == 1
            && mqtt["connection_errors"] == 0
            && mqtt["oversize_packets"] == 0,
        "the session did not stay up: {mqtt}; log:\n{}",
        agent.log()
    );
    ensure!(
        mqtt["commands"] == 1,
        "only the ping may reach the agent: {mqtt}"
    );
    agent.stop()?;
    Ok(())
}

#[test]
fn mqtt311_with_the_brokers_message_size_limit_below_max_packet_stays_up() -> anyhow::Result<()> {
    towerlink_e2e::binary("towerlink-agent", "towerlink")?;
    let dir = tempfile::tempdir()?;
    let mut mosquitto =
        MosquittoProcess::start_with(&dir.path().join("broker"), "message_size_limit 262144")?;
    let port = mosquitto.port();
    let nodes = spawn_tower(&scenario(), &dir.path().join("ports"), true)?;
    let gw = unique_gw("e2e-oversize311");
    let sub = platform(Some(port), &gw)?;
    let config = agent_config(
        dir.path(),
        &gw,
        ("127.0.0.1", port),
        "protocol = \"3.1.1\"\nmax_packet = \"320KiB\"",
        &nodes[0],
    )?;
    let mut agent = AgentProcess::start(&config)?;
    let health = hostile_commands(&sub, &mut agent, &gw, ("127.0.0.1", port), true, false)?;
    let mqtt = &health["mqtt"];
    ensure!(
        mqtt["protocol"] == "3.1.1"
            && mqtt["connects"] == 1
            && mqtt["connection_errors"] == 0
            && mqtt["oversize_packets"] == 0,
        "the session did not stay up: {mqtt}; log:\n{}",
        agent.log()
    );
    ensure!(
        mqtt["commands"] == 2 && health["commands"]["refused"] == 1,
        "the 100 KiB command must reach the parser and be refused: {health}"
    );
    agent.stop()?;
    mosquitto.stop()?;
    Ok(())
}

#[test]
fn mqtt311_a_broker_forwarding_more_than_max_packet_costs_one_immediate_reconnect(
) -> anyhow::Result<()> {
    towerlink_e2e::binary("towerlink-agent", "towerlink")?;
    let dir = tempfile::tempdir()?;
    let nodes = spawn_tower(&scenario(), &dir.path().join("ports"), true)?;
    let gw = unique_gw("e2e-oversize311x");
    let sub = platform(None, &gw)?;
    let (host, port) = broker();
    // The machine's Mosquitto forwards anything: a misconfiguration for a 3.1.1 gateway.
    let config = agent_config(
        dir.path(),
        &gw,
        (&host, port),
        "protocol = \"3.1.1\"\nmax_packet = \"64KiB\"",
        &nodes[0],
    )?;
    let mut agent = AgentProcess::start(&config)?;
    let state = format!("towerlink/v1/{gw}/state");
    let cmd = format!("towerlink/v1/{gw}/cmd");
    sub.wait(
        Duration::from_secs(20),
        "the online birth and telemetry",
        |m| {
            m.iter()
                .any(|r| r.topic == state && r.json["state"] == "online")
                && data_count(m) >= 2
        },
    )?;
    let mut publisher = RawPublisher::connect(&host, port, &unique_gw("hostile"))?;
    let outcome = publisher.publish_big(&cmd, 1 << 20)?;
    ensure!(outcome == Outcome::Acknowledged, "1 MiB: {outcome:?}");
    ensure!(
        wait_until(Duration::from_secs(10), || agent
            .log()
            .contains("message_size_limit")),
        "no log line naming the broker setting:\n{}",
        agent.log()
    );
    // The session dropped (the broker published the will), and the next one is up at once:
    // a second birth. A command published while no session was subscribed is lost with the
    // clean session, as a platform expects (it retries), so the ping goes after that birth.
    sub.wait(
        Duration::from_secs(10),
        "the birth of the next session",
        |m| {
            m.iter()
                .filter(|r| r.topic == state && r.json["state"] == "online")
                .count()
                >= 2
        },
    )
    .with_context(|| agent.log())?;
    let data_before_ping = data_count(&sub.all());
    let answered = |m: &[Received]| {
        m.iter()
            .any(|r| r.json["id"] == "after-big" && r.json["ok"] == true)
    };
    // The birth and the subscription leave together; give the SUBSCRIBE a few tries to land.
    let mut tries = 0;
    while !answered(&sub.all()) {
        tries += 1;
        ensure!(tries <= 4, "no reply to the ping:\n{}", agent.log());
        sub.publish(&cmd, br#"{"id":"after-big","op":"ping"}"#)?;
        let _ = sub.wait(Duration::from_secs(5), "the ping's reply", answered);
    }
    sub.wait(
        Duration::from_secs(20),
        "telemetry after the reconnect",
        |m| data_count(m) >= data_before_ping + 2,
    )?;
    let replied = sub.all().len();
    sub.wait(
        Duration::from_secs(10),
        "a health report after the ping",
        |m| m[replied..].iter().any(|r| r.topic.ends_with("/health")),
    )?;
    let health = latest_health(&sub).context("no health")?;
    let mqtt = &health["mqtt"];
    ensure!(
        mqtt["oversize_packets"] == 1 && mqtt["connects"] == 2,
        "one oversize packet, one reconnect: {mqtt}"
    );
    let log = agent.log();
    let line = log
        .lines()
        .find(|l| l.contains("over [mqtt] max_packet"))
        .context("no oversize log line")?;
    ensure!(
        line.contains("retry_in_ms=0") && line.contains("size=1048"),
        "the reconnect after an oversize packet must be immediate: {line}"
    );
    assert_no_seq_gap(&sub.all())?;
    agent.stop()?;
    Ok(())
}
