//! `towerlink zero DEV CH`: tare a channel while commissioning.
//!
//! By default through the running agent, exactly as the platform would: publish
//! `{"id","op":"zero","dev","ch"}` on `{root}/{gw}/cmd` and wait (bounded) for the reply with
//! the same id on `{root}/{gw}/reply`; the agent decides where the zero lives (`zero_at`).
//! The session is opened as the agent's own (TLS, mTLS, credentials, protocol).
//! With `--direct` (agent stopped) the node's port is opened and the wire protocol's Zero
//! command is sent, and the node's Ack is awaited.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;
use towerlink_firmware::protocol::{AckResult, Op};

use crate::config::Config;
use crate::feed::Topics;
use crate::pipeline::channel_names;
use crate::sources::config::ZeroAt;
use crate::sources::node_link::NodePort;
use crate::uplink::session::{Event, SessionSpec};

/// How long the agent has to reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the node has to introduce itself and then to acknowledge.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(4);

/// Why `dev` cannot be zeroed at all, from the configuration alone: a lift (a lift controller
/// is only read, it has no sensor to tare) or a device the file does not name. `None` when
/// `dev` is a node or an I2C device.
pub fn not_zeroable(config: &Config, dev: &str) -> Option<String> {
    if config.lifts.iter().any(|l| l.id == dev) {
        return Some(format!(
            "{dev} is a lift: lifts have nothing to zero (towerlink only reads lift controllers; zero tares the strain and tilt channels of panel nodes and I2C devices)"
        ));
    }
    if config.nodes.iter().any(|n| n.id == dev) || config.i2c.iter().any(|d| d.id == dev) {
        return None;
    }
    let zeroable: Vec<&str> = config
        .nodes
        .iter()
        .map(|n| n.id.as_str())
        .chain(config.i2c.iter().map(|d| d.id.as_str()))
        .collect();
    Some(format!(
        "no device {dev:?} in the configuration (devices that can be zeroed: {})",
        if zeroable.is_empty() {
            "none".to_owned()
        } else {
            zeroable.join(", ")
        }
    ))
}

/// Asks the running agent to zero `dev`/`ch`; prints the outcome; returns the exit code.
pub async fn via_agent(config: &Config, dev: &str, ch: &str) -> u8 {
    if let Some(why) = not_zeroable(config, dev) {
        println!("FAIL zero {dev} {ch}: {why}");
        return 2;
    }
    // The agent's own session setup (TLS, client certificate, credentials, protocol), under
    // the client id `<gw>-zero-<pid>`.
    let spec = match SessionSpec::for_tool(&config.gateway.id, &config.mqtt, "zero") {
        Ok(s) => s,
        Err(e) => {
            eprintln!("towerlink zero: {e}");
            return 2;
        }
    };
    let broker = spec.broker.clone();
    let topics = Topics::new(&config.mqtt.topic_root, &config.gateway.id);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let id = format!("zero-{}-{nanos:x}", std::process::id());
    let (client, mut eventloop) = spec.connect();
    if let Err(e) = client
        .subscribe(topics.reply(), rumqttc::QoS::AtLeastOnce)
        .await
    {
        eprintln!("towerlink zero: cannot subscribe: {e}");
        return 1;
    }
    let command = json!({"id": id, "op": "zero", "dev": dev, "ch": ch}).to_string();
    let deadline = Instant::now() + REPLY_TIMEOUT;
    let mut sent = false;
    loop {
        let event = match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Err(_) => {
                eprintln!(
                    "towerlink zero: no reply from the agent within {REPLY_TIMEOUT:?} — is it running (systemctl status towerlink) and connected to {broker}?"
                );
                return 1;
            }
            Ok(Err(e)) => {
                let hint = crate::uplink::tls::hint(&e.to_string())
                    .map(|h| format!(" — {h}"))
                    .unwrap_or_default();
                eprintln!("towerlink zero: cannot reach the broker at {broker}: {e}{hint}");
                return 1;
            }
            Ok(Ok(event)) => event,
        };
        match event {
            // Publish only once the reply subscription is in place, so the reply cannot be missed.
            Event::SubAck if !sent => {
                sent = true;
                if let Err(e) = client
                    .publish(
                        topics.cmd(),
                        rumqttc::QoS::AtLeastOnce,
                        false,
                        command.clone(),
                    )
                    .await
                {
                    eprintln!("towerlink zero: cannot publish the command: {e}");
                    return 1;
                }
            }
            Event::Message { payload, .. } => {
                let Ok(reply) = serde_json::from_slice::<Value>(&payload) else {
                    continue;
                };
                if reply["id"].as_str() != Some(id.as_str()) {
                    continue;
                }
                let _ = client.disconnect().await;
                return if reply["ok"].as_bool() == Some(true) {
                    println!("OK  zero {dev} {ch}: {}", reply["result"]);
                    0
                } else {
                    println!(
                        "FAIL zero {dev} {ch}: {}",
                        reply["error"].as_str().unwrap_or("the agent refused")
                    );
                    1
                };
            }
            _ => {}
        }
    }
}

/// Opens the node's port and sends it the wire protocol's Zero; returns the exit code.
pub async fn direct(config: &Config, dev: &str, ch: &str) -> u8 {
    if let Some(why) = not_zeroable(config, dev) {
        println!("FAIL zero {dev} {ch}: {why}");
        return 2;
    }
    let Some(node) = config.nodes.iter().find(|n| n.id == dev) else {
        println!(
            "FAIL zero {dev} {ch}: {dev} is an I2C device on the gateway's own bus, not on a serial port — run without --direct while the agent runs"
        );
        return 2;
    };
    if node.zero_at == ZeroAt::Gateway {
        println!(
            "FAIL zero {dev} {ch}: this node's zero is kept by the agent (zero_at = \"gateway\") — run without --direct while the agent runs"
        );
        return 2;
    }
    let mut port = match NodePort::open(&node.port, node.baud) {
        Ok(p) => p,
        Err(f) => {
            println!("FAIL zero {dev} {ch}: {f} — {}", f.fix());
            return 1;
        }
    };
    let hello = match port
        .hello(node.node_id, Instant::now() + NODE_TIMEOUT, |_| {})
        .await
    {
        Ok(h) => h,
        Err(f) => {
            let fix = f.fix(node.baud);
            println!("FAIL zero {dev} {ch}: {f} — {fix}");
            return 1;
        }
    };
    let channels = channel_names(&hello.channels, &node.names);
    let Some(channel) = channels.iter().find(|c| c.name == ch) else {
        let names: Vec<&str> = channels.iter().map(|c| c.name.as_str()).collect();
        println!(
            "FAIL zero {dev} {ch}: node {} has no channel {ch:?} (channels: {})",
            hello.node,
            names.join(", ")
        );
        return 2;
    };
    match port
        .command(
            hello.node,
            Op::Zero {
                channel: channel.id,
            },
            Instant::now() + NODE_TIMEOUT,
        )
        .await
    {
        Ok(AckResult::OK) => {
            println!(
                "OK  zero {dev} {ch}: node {} tared channel {}",
                hello.node, channel.id
            );
            0
        }
        Ok(other) => {
            println!(
                "FAIL zero {dev} {ch}: node {} answered {}",
                hello.node,
                other.name()
            );
            1
        }
        Err(e) => {
            println!("FAIL zero {dev} {ch}: {e}");
            1
        }
    }
}
