//! A sensor node on a serial port (wire protocol v1).
//!
//! [`NodeLink`] is the protocol state of one node, free of I/O: it takes decoded frames and
//! turns them into [`SourceEvent`]s (frame-seq gap counting, reboot detection, node time to
//! wall time). [`run`] is the task that owns the port: it opens it through
//! [`super::node_link`] (the same code on a real `/dev/ttyUSB*`, on a test's pseudo-terminal
//! and in the installer's commands), reads and decodes, writes commands, and reopens the port with back-off when it disappears (an unplugged adapter reads `0`
//! bytes or fails with `EIO`), without ever stopping.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use towerlink_firmware::protocol::{AckResult, Body, Frame, FrameError, Op};

use super::config::NodeConfig;
use super::node_clock::NodeClock;
use super::node_link::{NodePort, Received, SendError};
use super::{DeviceKey, NodeRequest, NodeRequestError, SourceEvent, SourceStats};
use crate::backoff::Backoff;
use crate::feed::now_millis;
use crate::shutdown::Shutdown;

/// How long a node has to answer a command.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// The protocol state of one node, without I/O.
#[derive(Debug)]
pub struct NodeLink {
    dev: DeviceKey,
    expected_node: Option<u32>,
    stats: Arc<SourceStats>,
    clock: NodeClock,
    last_seq: Option<u32>,
    node_id: Option<u32>,
    hello_seen: bool,
}

impl NodeLink {
    /// The link of device `dev`; frames of another node than `expected_node` are dropped.
    pub fn new(dev: DeviceKey, expected_node: Option<u32>, stats: Arc<SourceStats>) -> NodeLink {
        NodeLink {
            dev,
            expected_node,
            stats,
            clock: NodeClock::new(),
            last_seq: None,
            node_id: None,
            hello_seen: false,
        }
    }

    /// The node id heard on this port (the configured one, or the first one heard).
    pub fn node_id(&self) -> Option<u32> {
        self.expected_node.or(self.node_id)
    }

    /// The port was (re)opened: the node must introduce itself again.
    pub fn reopened(&mut self) {
        self.hello_seen = false;
    }

    /// Has the node sent a Hello since the port was opened?
    pub fn hello_seen(&self) -> bool {
        self.hello_seen
    }

    /// Counts a frame the decoder dropped.
    pub fn count_error(&self, e: FrameError) {
        let counter = match e {
            FrameError::Crc => &self.stats.crc_errors,
            FrameError::Oversize => &self.stats.oversize,
            _ => &self.stats.undecodable,
        };
        SourceStats::add(counter, 1);
    }

    /// Handles one valid frame received at wall time `rx_ms`; returns the Ack it carried, if
    /// any, and emits what the pipeline must know through `emit`.
    pub fn handle(
        &mut self,
        frame: Frame,
        rx_ms: f64,
        mut emit: impl FnMut(SourceEvent),
    ) -> Option<(u32, AckResult)> {
        if let Some(expected) = self.expected_node {
            if frame.node != expected {
                SourceStats::add(&self.stats.foreign_frames, 1);
                return None;
            }
        }
        if self.node_id != Some(frame.node) {
            if self.node_id.is_some() {
                // Another node on this port (swapped while unplugged): a fresh start.
                self.last_seq = None;
                self.clock.reset();
            }
            self.node_id = Some(frame.node);
        }
        SourceStats::add(&self.stats.frames_ok, 1);
        let ts = rx_ms as i64;
        self.stats
            .last_frame_ms
            .store(ts.max(0) as u64, Ordering::Relaxed);

        let rebooted =
            matches!(frame.body, Body::Hello { .. }) && frame.seq == 0 && self.last_seq.is_some();
        if rebooted {
            SourceStats::add(&self.stats.reboots, 1);
            self.clock.reset();
        } else if let Some(last) = self.last_seq {
            let gap = frame.seq.wrapping_sub(last.wrapping_add(1));
            // A "gap" of more than half the counter is a repeat or reordering, not loss.
            if gap != 0 && gap < 1 << 31 {
                SourceStats::add(&self.stats.lost_frames, u64::from(gap));
                emit(SourceEvent::FramesLost {
                    dev: self.dev,
                    count: u64::from(gap),
                    ts,
                });
            }
        }
        self.last_seq = Some(frame.seq);
        emit(SourceEvent::Alive { dev: self.dev, ts });

        match frame.body {
            Body::Hello {
                fw,
                uptime_ms,
                channels,
            } => {
                self.hello_seen = true;
                if self.clock.observe(uptime_ms, rx_ms) {
                    SourceStats::add(&self.stats.reboots, 1);
                }
                emit(SourceEvent::Hello {
                    dev: self.dev,
                    fw,
                    channels: channels.into_iter().collect(),
                });
                None
            }
            Body::Samples {
                channel,
                t0_ms,
                period_us,
                values,
            } => {
                let n = values.len() as u32;
                let span_ms = (u64::from(period_us) * u64::from(n.saturating_sub(1)) / 1000) as u32;
                if self.clock.observe(t0_ms.wrapping_add(span_ms), rx_ms) {
                    SourceStats::add(&self.stats.reboots, 1);
                }
                let t0 = self.clock.to_wall(t0_ms).unwrap_or(rx_ms);
                emit(SourceEvent::Samples {
                    dev: self.dev,
                    channel,
                    t0,
                    period_ms: f64::from(period_us) / 1000.0,
                    values: values.into_iter().collect(),
                });
                None
            }
            Body::Status { uptime_ms, .. } => {
                if self.clock.observe(uptime_ms, rx_ms) {
                    SourceStats::add(&self.stats.reboots, 1);
                }
                None
            }
            Body::Fault { channel, code } => {
                emit(SourceEvent::Fault {
                    dev: self.dev,
                    channel,
                    code,
                    ts,
                });
                None
            }
            Body::Ack {
                command_seq,
                result,
            } => Some((command_seq, result)),
        }
    }
}

/// Everything the port task needs.
#[derive(Debug)]
pub struct SerialNodeSource {
    /// Device index.
    pub dev: DeviceKey,
    /// Its configuration.
    pub config: NodeConfig,
    /// Where events go.
    pub events: mpsc::Sender<SourceEvent>,
    /// Commands for the node.
    pub requests: mpsc::Receiver<NodeRequest>,
    /// Its counters.
    pub stats: Arc<SourceStats>,
    /// Proof of life for the service watchdog.
    pub heartbeat: crate::service::Heartbeat,
}

/// Commands sent and not yet answered.
struct PendingAcks {
    next_seq: u32,
    waiting: HashMap<
        u32,
        (
            Instant,
            oneshot::Sender<Result<AckResult, NodeRequestError>>,
        ),
    >,
}

impl PendingAcks {
    fn expire(&mut self, now: Instant) {
        self.waiting.retain(|_, (deadline, _)| *deadline > now);
        // Dropping a sender tells the waiter; give it a reason instead where we can.
    }

    fn fail_all(&mut self, why: NodeRequestError) {
        for (_, (_, tx)) in self.waiting.drain() {
            let _ = tx.send(Err(why.clone()));
        }
    }
}

/// Runs the port of one node until shutdown.
pub async fn run(source: SerialNodeSource, mut shutdown: Shutdown) {
    let SerialNodeSource {
        dev,
        config,
        events,
        mut requests,
        stats,
        heartbeat,
    } = source;
    let mut link = NodeLink::new(dev, config.node_id, stats.clone());
    let mut pending = PendingAcks {
        next_seq: 1,
        waiting: HashMap::new(),
    };
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let path = config.port.display().to_string();
    let mut logged_open_error = false;

    while !shutdown.is_shutdown() {
        let mut port = match NodePort::open(&config.port, config.baud) {
            Ok(port) => port,
            Err(e) => {
                SourceStats::add(&stats.io_errors, 1);
                if !logged_open_error {
                    tracing::warn!(dev = %config.id, port = %path, error = %e, fix = %e.fix(), "cannot open serial port; retrying with back-off");
                    logged_open_error = true;
                }
                heartbeat.sleep(backoff.next_delay(), &mut shutdown).await;
                continue;
            }
        };
        logged_open_error = false;
        SourceStats::add(&stats.opens, 1);
        stats.link_up.store(true, Ordering::Relaxed);
        tracing::info!(dev = %config.id, port = %path, baud = config.baud, "serial port open");
        let opened_at = Instant::now();

        // Ask the node who it is as soon as we know its id, so its channels are known without
        // waiting up to 60 s for its next Hello.
        link.reopened();
        let mut identify_sent = false;
        let mut bytes_counted = 0;

        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let why = loop {
            tokio::select! {
                received = port.recv() => {
                    SourceStats::add(&stats.bytes, port.counts.bytes - bytes_counted);
                    bytes_counted = port.counts.bytes;
                    match received {
                        Ok(Received::Frame(frame)) => {
                            let ack = link.handle(frame, now_millis() as f64, |ev| {
                                if events.try_send(ev).is_err() {
                                    SourceStats::add(&stats.dropped_events, 1);
                                }
                            });
                            if let Some((seq, result)) = ack {
                                if let Some((_, tx)) = pending.waiting.remove(&seq) {
                                    let _ = tx.send(Ok(result));
                                }
                            }
                        }
                        Ok(Received::Dropped(e)) => link.count_error(e),
                        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break e.to_string(),
                        Err(e) => break format!("read failed: {e}"),
                    }
                    // Once the bytes of a read are decoded: Identify, unless a Hello came.
                    if !port.has_buffered() && !identify_sent && !link.hello_seen() {
                        if let Some(node) = link.node_id() {
                            identify_sent = true;
                            if let Err(e) = write_command(&mut port, node, &mut pending, Op::Identify, None).await {
                                break e.to_string();
                            }
                        }
                    }
                },
                request = requests.recv() => {
                    let Some(request) = request else { continue };
                    let node = link.node_id().unwrap_or(0);
                    if let Err(e) = write_command(&mut port, node, &mut pending, request.op, Some(request.reply)).await {
                        break e.to_string();
                    }
                }
                _ = tick.tick() => {
                    heartbeat.beat();
                    pending.expire(Instant::now());
                }
                _ = shutdown.recv() => break "shutdown".to_owned(),
            }
        };
        drop(port);
        pending.fail_all(NodeRequestError::PortClosed);
        if shutdown.is_shutdown() {
            // A clean stop leaves the link as it was: the last health says the node was live.
            break;
        }
        stats.link_up.store(false, Ordering::Relaxed);
        SourceStats::add(&stats.io_errors, 1);
        tracing::warn!(dev = %config.id, port = %path, reason = %why, "serial port lost; reopening with back-off");
        if opened_at.elapsed() > Duration::from_secs(60) {
            backoff.reset();
        }
        heartbeat.sleep(backoff.next_delay(), &mut shutdown).await;
    }
    tracing::debug!(dev = %config.id, "serial source stopped");
}

/// Sends a command under the next seq; a reply channel waits for its Ack. A command that
/// cannot be encoded is answered with the reason (the port stays up); a write error is
/// returned (the port is reopened).
async fn write_command(
    port: &mut NodePort,
    node: u32,
    pending: &mut PendingAcks,
    op: Op,
    reply: Option<oneshot::Sender<Result<AckResult, NodeRequestError>>>,
) -> Result<(), SendError> {
    let seq = pending.next_seq;
    pending.next_seq = pending.next_seq.wrapping_add(1);
    match port.send_command(node, seq, op).await {
        Ok(()) => {}
        Err(e @ SendError::Encode(_)) => {
            if let Some(tx) = reply {
                let _ = tx.send(Err(NodeRequestError::NotSent(e.to_string())));
            }
            return Ok(());
        }
        Err(e) => return Err(e),
    }
    if let Some(tx) = reply {
        pending
            .waiting
            .insert(seq, (Instant::now() + ACK_TIMEOUT, tx));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use towerlink_firmware::protocol::{ChannelInfo, Quantity};

    fn samples(seq: u32, t0_ms: u32, values: &[f32]) -> Frame {
        Frame {
            version: 1,
            node: 7,
            seq,
            body: Body::Samples {
                channel: 0,
                t0_ms,
                period_us: 20_000,
                values: values.iter().copied().collect(),
            },
        }
    }

    fn collect(link: &mut NodeLink, frame: Frame, rx: f64) -> Vec<SourceEvent> {
        let mut out = Vec::new();
        link.handle(frame, rx, |e| out.push(e));
        out
    }

    #[test]
    fn seq_gaps_are_counted_as_lost_frames() {
        let stats = SourceStats::new();
        let mut link = NodeLink::new(DeviceKey::Node(0), None, stats.clone());
        collect(&mut link, samples(10, 0, &[1.0]), 1000.0);
        collect(&mut link, samples(11, 20, &[1.0]), 1020.0);
        let ev = collect(&mut link, samples(15, 100, &[1.0]), 1100.0);
        assert!(ev.contains(&SourceEvent::FramesLost {
            dev: DeviceKey::Node(0),
            count: 3,
            ts: 1100
        }));
        assert_eq!(SourceStats::get(&stats.lost_frames), 3);
        // Wrapping at 2^32 is not a gap.
        collect(&mut link, samples(u32::MAX, 200, &[1.0]), 1200.0);
        let before = SourceStats::get(&stats.lost_frames);
        collect(&mut link, samples(0, 220, &[1.0]), 1220.0);
        assert_eq!(SourceStats::get(&stats.lost_frames), before);
        assert_eq!(SourceStats::get(&stats.frames_ok), 5);
    }

    #[test]
    fn a_hello_with_seq_zero_is_a_reboot_not_a_gap() {
        let stats = SourceStats::new();
        let mut link = NodeLink::new(DeviceKey::Node(0), None, stats.clone());
        collect(&mut link, samples(500, 100_000, &[1.0]), 1000.0);
        let hello = Frame {
            version: 1,
            node: 7,
            seq: 0,
            body: Body::Hello {
                fw: (1, 0, 0),
                uptime_ms: 5,
                channels: [ChannelInfo {
                    id: 0,
                    quantity: Quantity::Strain,
                    rate_hz: 50,
                }]
                .into_iter()
                .collect(),
            },
        };
        let ev = collect(&mut link, hello, 2000.0);
        assert!(matches!(ev.last(), Some(SourceEvent::Hello { .. })));
        assert_eq!(SourceStats::get(&stats.lost_frames), 0);
        assert_eq!(SourceStats::get(&stats.reboots), 1);
    }

    #[test]
    fn samples_are_mapped_to_wall_time() {
        let stats = SourceStats::new();
        let mut link = NodeLink::new(DeviceKey::Node(3), None, stats);
        // 4 values at 50 Hz starting at node time 10_000; the last (10_060) arrived at wall 5_000_060.
        let ev = collect(
            &mut link,
            samples(1, 10_000, &[1.0, 2.0, 3.0, 4.0]),
            5_000_060.0,
        );
        let Some(SourceEvent::Samples {
            dev,
            t0,
            period_ms,
            values,
            ..
        }) = ev.last().cloned()
        else {
            panic!("no samples: {ev:?}");
        };
        assert_eq!(dev, DeviceKey::Node(3));
        assert!((t0 - 5_000_000.0).abs() < 0.01, "{t0}");
        assert!((period_ms - 20.0).abs() < 1e-9);
        assert_eq!(values, vec![1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn frames_of_another_node_are_dropped_and_counted() {
        let stats = SourceStats::new();
        let mut link = NodeLink::new(DeviceKey::Node(0), Some(8), stats.clone());
        assert!(collect(&mut link, samples(1, 0, &[1.0]), 1.0).is_empty());
        assert_eq!(SourceStats::get(&stats.foreign_frames), 1);
        assert_eq!(SourceStats::get(&stats.frames_ok), 0);
    }
}
