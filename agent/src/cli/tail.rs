//! `towerlink tail`: the gateway's live readings and events for an installer at the panel.
//!
//! Two sources: straight from the nodes' serial ports (the agent must not be running: ports
//! are opened exclusively), or from the broker (`--from-broker`: everything under
//! `{root}/{gw}/`, rendered by [`crate::feed_view`]). On a terminal each row (one per channel,
//! one per device's latest event) is redrawn in place; when stdout is not a terminal every
//! update is one plain line, for scripts and logs.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use towerlink_firmware::protocol::{Body, ChannelInfo, Frame};

use super::describe_hello;
use crate::config::{Config, Node as NodeConfig};
use crate::feed::{now_millis, rfc3339, Topics};
use crate::pipeline::channel_names;
use crate::sources::node_link::{NodeHello, NodePort};
use crate::uplink::session::{Event, SessionSpec};

/// When to stop.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Stop after this many updates.
    pub count: Option<u64>,
}

/// One update: the row it replaces (on a terminal) and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// Row key, e.g. `panel-n12 strain`.
    pub row: String,
    /// The line.
    pub line: String,
}

fn clock() -> String {
    // "2026-11-28T05:04:10.000Z" -> "05:04:10.000"
    let t = rfc3339(now_millis());
    t.split_once('T')
        .map(|(_, t)| t.trim_end_matches('Z').to_owned())
        .unwrap_or(t)
}

/// The lines of one node's frames, knowing its channels once it has said Hello.
#[derive(Debug, Default)]
pub struct FrameView {
    dev: String,
    names: BTreeMap<u8, String>,
    channels: Vec<ChannelInfo>,
}

impl FrameView {
    /// The view of device `dev` with its configured channel names.
    pub fn new(dev: &str, names: BTreeMap<u8, String>) -> FrameView {
        FrameView {
            dev: dev.to_owned(),
            names,
            channels: Vec::new(),
        }
    }

    fn channel(&self, id: u8) -> (String, &'static str) {
        channel_names(&self.channels, &self.names)
            .into_iter()
            .find(|c| c.id == id)
            .map(|c| (c.name, c.quantity.unit()))
            .unwrap_or_else(|| {
                (
                    self.names.get(&id).cloned().unwrap_or(format!("ch{id}")),
                    "",
                )
            })
    }

    /// The update for `frame`, if it is one an installer reads (Acks are not).
    pub fn update(&mut self, frame: &Frame, time: &str) -> Option<Update> {
        let dev = &self.dev;
        match &frame.body {
            Body::Samples { channel, values, .. } => {
                let (name, unit) = self.channel(*channel);
                let last = values.last().copied()?;
                let min = values.iter().copied().fold(f32::INFINITY, f32::min);
                let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                Some(Update {
                    row: format!("{dev} {name}"),
                    line: format!(
                        "{time}  {dev:<12} {name:<14} {last:>12.4} {unit:<8} n={} min={min:.4} max={max:.4}",
                        values.len()
                    ),
                })
            }
            Body::Hello { fw, channels, .. } => {
                self.channels = channels.iter().copied().collect();
                let hello = NodeHello {
                    node: frame.node,
                    fw: *fw,
                    channels: self.channels.clone(),
                };
                Some(Update {
                    row: format!("{dev} ~hello"),
                    line: format!("{time}  {dev:<12} hello          {}", describe_hello(&hello, &self.names)),
                })
            }
            Body::Status {
                uptime_ms,
                supply_mv,
                board_temp_centi_c,
                error_count,
            } => Some(Update {
                row: format!("{dev} ~status"),
                line: format!(
                    "{time}  {dev:<12} status         uptime {:.1} s, supply {supply_mv} mV, board {:.2} Cel, errors {error_count}",
                    f64::from(*uptime_ms) / 1000.0,
                    f64::from(*board_temp_centi_c) / 100.0
                ),
            }),
            Body::Fault { channel, code } => {
                let (name, _) = self.channel(*channel);
                Some(Update {
                    row: format!("{dev} ~fault"),
                    line: format!("{time}  {dev:<12} FAULT          {name}: {code:?}"),
                })
            }
            Body::Ack { .. } => None,
        }
    }
}

/// Reads the nodes' ports until the limits are reached; returns the exit code.
pub async fn from_ports(config: &Config, limits: Limits) -> u8 {
    let (tx, rx) = mpsc::channel::<Update>(1024);
    let mut opened = 0;
    for node in &config.nodes {
        match NodePort::open(&node.port, node.baud) {
            Ok(port) => {
                opened += 1;
                tokio::spawn(read_node(node.clone(), port, tx.clone()));
            }
            Err(f) => eprintln!("FAIL node {}: {f} — {}", node.id, f.fix()),
        }
    }
    drop(tx);
    if opened == 0 {
        eprintln!("towerlink tail: no node port could be opened");
        return 1;
    }
    show(rx, limits).await;
    if opened < config.nodes.len() {
        1
    } else {
        0
    }
}

async fn read_node(node: NodeConfig, mut port: NodePort, tx: mpsc::Sender<Update>) {
    let mut view = FrameView::new(&node.id, node.names.clone());
    let mut identified = false;
    loop {
        let deadline = Instant::now() + Duration::from_secs(3600);
        match port.next_frame(deadline).await {
            Ok(Some(frame)) => {
                if node.node_id.is_some_and(|n| n != frame.node) {
                    continue;
                }
                if !identified && !matches!(frame.body, Body::Hello { .. }) {
                    // Ask for a Hello so channels show by name at once.
                    identified = true;
                    let _ = port
                        .send(frame.node, towerlink_firmware::protocol::Op::Identify)
                        .await;
                }
                if let Some(update) = view.update(&frame, &clock()) {
                    if tx.send(update).await.is_err() {
                        return;
                    }
                }
            }
            Ok(None) => {}
            Err(e) => {
                let _ = tx
                    .send(Update {
                        row: format!("{} ~port", node.id),
                        line: format!("{}  {:<12} PORT LOST      {e}", clock(), node.id),
                    })
                    .await;
                return;
            }
        }
    }
}

/// Subscribes to `{root}/{gw}/#` and shows what the agent publishes; returns the exit code.
/// The session is set up as the agent's (TLS, client certificate, credentials, protocol,
/// `max_packet`: see [`SessionSpec::for_tool`]), under the client id `<gw>-tail-<pid>`.
pub async fn from_broker(config: &Config, limits: Limits) -> u8 {
    let spec = match SessionSpec::for_tool(&config.gateway.id, &config.mqtt, "tail") {
        Ok(s) => s,
        Err(e) => {
            eprintln!("towerlink tail: {e}");
            return 2;
        }
    };
    let broker = spec.broker.clone();
    let topics = Topics::new(&config.mqtt.topic_root, &config.gateway.id);
    let (client, mut eventloop) = spec.connect();
    let filter = format!("{}/#", topics.state().trim_end_matches("/state"));
    if let Err(e) = client.subscribe(&filter, rumqttc::QoS::AtMostOnce).await {
        eprintln!("towerlink tail: cannot subscribe: {e}");
        return 1;
    }
    let (tx, rx) = mpsc::channel::<Update>(1024);
    let pump = tokio::spawn(async move {
        let mut connected = false;
        // The client of the session in use (the first one stays with the caller).
        let mut _current = None;
        loop {
            match eventloop.poll().await {
                Ok(Event::ConnAck) => connected = true,
                Ok(Event::Message { topic, payload }) => {
                    let line = crate::feed_view::render(&topic, &payload);
                    if tx.send(Update { row: topic, line }).await.is_err() {
                        return true;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if !connected {
                        let hint = crate::uplink::tls::hint(&e.to_string())
                            .map(|h| format!(" — {h}"))
                            .unwrap_or_default();
                        eprintln!("towerlink tail: cannot reach the broker at {broker}: {e}{hint}");
                        return false;
                    }
                    // A session ends with its first error: open the next one, as `run` does.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let (c, e) = spec.connect();
                    if c.try_subscribe(&filter, rumqttc::QoS::AtMostOnce).is_err() {
                        return false;
                    }
                    eventloop = e;
                    _current = Some(c);
                }
            }
        }
    });
    if show(rx, limits).await {
        // The pump ended (it closed the channel): its verdict is the exit code.
        return match pump.await {
            Ok(true) => 0,
            _ => 1,
        };
    }
    pump.abort();
    let _ = client.disconnect().await;
    0
}

/// Shows updates until the channel closes (then `true`) or a limit is reached.
async fn show(mut rx: mpsc::Receiver<Update>, limits: Limits) -> bool {
    let live = std::io::stdout().is_terminal();
    let deadline = limits.duration.map(|d| Instant::now() + d);
    let mut rows: BTreeMap<String, String> = BTreeMap::new();
    let mut drawn = 0usize;
    let mut shown = 0u64;
    loop {
        let next = match deadline {
            Some(d) => match tokio::time::timeout_at(d, rx.recv()).await {
                Ok(next) => next,
                Err(_) => break,
            },
            None => rx.recv().await,
        };
        let Some(update) = next else { return true };
        let mut out = std::io::stdout().lock();
        let written = if live {
            rows.insert(update.row, update.line);
            redraw(&mut out, &rows, &mut drawn)
        } else {
            writeln!(out, "{}", update.line).and_then(|()| out.flush())
        };
        if written.is_err() {
            // stdout closed (e.g. piped into `head`): nobody reads any more.
            break;
        }
        shown += 1;
        if limits.count.is_some_and(|c| shown >= c) {
            break;
        }
    }
    false
}

/// Moves the cursor back over the rows drawn last time and draws them all again.
fn redraw(
    out: &mut impl Write,
    rows: &BTreeMap<String, String>,
    drawn: &mut usize,
) -> std::io::Result<()> {
    if *drawn > 0 {
        write!(out, "\x1b[{}A", *drawn)?;
    }
    for line in rows.values() {
        write!(out, "\r\x1b[2K{line}\n")?;
    }
    *drawn = rows.len();
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use towerlink_firmware::protocol::{FaultCode, Quantity};

    fn frame(body: Body) -> Frame {
        Frame {
            version: 1,
            node: 7,
            seq: 0,
            body,
        }
    }

    #[test]
    fn samples_show_by_name_once_the_node_said_hello() {
        let mut view = FrameView::new("p1", BTreeMap::from([(1, "tilt_top".to_owned())]));
        let samples = frame(Body::Samples {
            channel: 0,
            t0_ms: 0,
            period_us: 20_000,
            values: [1.0, 3.0, 2.0].into_iter().collect(),
        });
        let before = view.update(&samples, "t").expect("update");
        assert!(before.line.contains("ch0"), "{}", before.line);
        let hello = frame(Body::Hello {
            fw: (1, 2, 3),
            uptime_ms: 0,
            channels: [
                ChannelInfo {
                    id: 0,
                    quantity: Quantity::Strain,
                    rate_hz: 50,
                },
                ChannelInfo {
                    id: 1,
                    quantity: Quantity::TiltX,
                    rate_hz: 10,
                },
            ]
            .into_iter()
            .collect(),
        });
        let h = view.update(&hello, "t").expect("hello");
        assert!(
            h.line.contains("firmware 1.2.3") && h.line.contains("tilt_top 10 Hz"),
            "{}",
            h.line
        );
        let after = view.update(&samples, "t").expect("update");
        assert_eq!(after.row, "p1 strain");
        assert!(
            after.line.contains("2.0000 ustrain")
                && after.line.contains("n=3 min=1.0000 max=3.0000"),
            "{}",
            after.line
        );
        let fault = view
            .update(
                &frame(Body::Fault {
                    channel: 1,
                    code: FaultCode::Saturated,
                }),
                "t",
            )
            .expect("fault");
        assert!(
            fault.line.contains("FAULT") && fault.line.contains("tilt_top: Saturated"),
            "{}",
            fault.line
        );
        assert!(view
            .update(
                &frame(Body::Ack {
                    command_seq: 1,
                    result: towerlink_firmware::protocol::AckResult::OK
                }),
                "t"
            )
            .is_none());
    }

    #[test]
    fn redraw_rewrites_every_row_in_place() {
        let rows = BTreeMap::from([
            ("a".to_owned(), "A".to_owned()),
            ("b".to_owned(), "B".to_owned()),
        ]);
        let mut drawn = 0;
        let mut out = Vec::new();
        redraw(&mut out, &rows, &mut drawn).expect("write");
        redraw(&mut out, &rows, &mut drawn).expect("write");
        let text = String::from_utf8(out).expect("utf8");
        assert_eq!(
            text,
            "\r\x1b[2KA\n\r\x1b[2KB\n\x1b[2A\r\x1b[2KA\n\r\x1b[2KB\n"
        );
    }
}
