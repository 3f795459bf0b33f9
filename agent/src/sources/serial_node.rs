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
use super::node_memory::{self, NodeMemory};
use super::{DeviceKey, NodeRequest, NodeRequestError, SourceEvent, SourceStats};
use crate::backoff::Backoff;
use crate::clock::ClockStatus;
use crate::feed::now_millis;
use crate::shutdown::Shutdown;

/// How long a node has to answer a command.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// The node memory is saved at most this often (and at once after a new Hello).
const MEMORY_EVERY: Duration = Duration::from_secs(5);
/// ... when the clock mapping moved by more than this since it was saved (ms).
const MEMORY_OFFSET_MOVE_MS: f64 = 1.0;

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
    /// The last Hello (this run's, or remembered from the last run).
    hello: Option<((u8, u8, u8), Vec<towerlink_firmware::protocol::ChannelInfo>)>,
    /// The channel map came from the node memory and no Hello confirmed it yet.
    remembered: bool,
    /// The system clock's steps; a new one re-anchors the node's clock.
    system_clock: Option<(Arc<ClockStatus>, u64)>,
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
            hello: None,
            remembered: false,
            system_clock: None,
        }
    }

    /// Re-anchors the node's clock whenever `clock` counts a step of the system clock.
    pub fn with_system_clock(mut self, clock: Arc<ClockStatus>) -> NodeLink {
        let steps = clock.steps();
        self.system_clock = Some((clock, steps));
        self
    }

    /// Takes up what the last run knew of this port's node: its channel map (told to the
    /// pipeline at once, through `emit`, so samples are decoded without waiting for a Hello)
    /// and its clock mapping. Returns `false` (and takes nothing) for a memory of another
    /// node than the configured one.
    pub fn restore(&mut self, memory: &NodeMemory, mut emit: impl FnMut(SourceEvent)) -> bool {
        if self.expected_node.is_some_and(|n| n != memory.node) {
            return false;
        }
        self.node_id = Some(memory.node);
        if let Some(anchor) = memory.clock {
            self.clock.restore(anchor);
        }
        self.hello = Some((memory.fw, memory.channels.clone()));
        self.remembered = true;
        emit(SourceEvent::Hello {
            dev: self.dev,
            fw: memory.fw,
            channels: memory.channels.clone(),
        });
        true
    }

    /// What to remember of this node for the next run (none before its channels are known).
    pub fn memory(&self, port: &std::path::Path) -> Option<NodeMemory> {
        let (fw, channels) = self.hello.clone()?;
        Some(NodeMemory {
            port: port.to_owned(),
            node: self.node_id()?,
            fw,
            channels,
            clock: self.clock.anchor(),
        })
    }

    /// Can the node's time be mapped to wall time now (so input buffered before the port was
    /// opened can be decoded)?
    pub fn clock_mapped(&self) -> bool {
        self.clock.anchor().is_some()
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
        if let Some((clock, seen)) = self.system_clock.as_mut() {
            let steps = clock.steps();
            if steps != *seen {
                // The system clock stepped: map the node's time afresh from here.
                *seen = steps;
                self.clock.reset();
            }
        }
        if self.node_id != Some(frame.node) {
            if self.node_id.is_some() {
                // Another node on this port (swapped while unplugged): a fresh start.
                self.last_seq = None;
                self.clock.reset();
                if self.remembered {
                    // The remembered channel map was another node's: forget it until this
                    // node's Hello.
                    self.remembered = false;
                    self.hello = None;
                    emit(SourceEvent::Hello {
                        dev: self.dev,
                        fw: (0, 0, 0),
                        channels: Vec::new(),
                    });
                }
            }
            self.node_id = Some(frame.node);
        }
        SourceStats::add(&self.stats.frames_ok, 1);
        let ts = rx_ms as i64;
        self.stats
            .last_frame_ms
            .store(ts.max(0) as u64, Ordering::Relaxed);

        let rebooted = matches!(frame.body, Body::Hello { .. })
            && frame.seq == 0
            && (self.last_seq.is_some() || self.remembered);
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
                self.remembered = false;
                if self.clock.observe(uptime_ms, rx_ms) {
                    SourceStats::add(&self.stats.reboots, 1);
                }
                let channels: Vec<_> = channels.into_iter().collect();
                self.hello = Some((fw, channels.clone()));
                emit(SourceEvent::Hello {
                    dev: self.dev,
                    fw,
                    channels,
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
    /// The store directory, where the node memory is kept (none: nothing is remembered).
    pub memory_dir: Option<std::path::PathBuf>,
    /// The system clock's state (its steps re-anchor the node's clock).
    pub clock: Option<Arc<ClockStatus>>,
}

/// When the node memory was last saved, and with which clock offset.
#[derive(Debug, Default)]
struct MemorySaved {
    at: Option<Instant>,
    offset: Option<f64>,
    hello: Option<((u8, u8, u8), Vec<towerlink_firmware::protocol::ChannelInfo>)>,
}

impl MemorySaved {
    /// Saves `link`'s memory off the async threads when it changed enough.
    fn maybe_save(
        &mut self,
        link: &NodeLink,
        dir: &std::path::Path,
        dev: &str,
        port: &std::path::Path,
    ) {
        let Some(memory) = link.memory(port) else {
            return;
        };
        let offset = memory.clock.map(|a| a.offset);
        let hello_changed = self.hello.as_ref() != Some(&(memory.fw, memory.channels.clone()));
        let due = self.at.is_none_or(|at| at.elapsed() >= MEMORY_EVERY);
        let moved = match (offset, self.offset) {
            (Some(a), Some(b)) => (a - b).abs() > MEMORY_OFFSET_MOVE_MS,
            (a, b) => a.is_some() != b.is_some(),
        };
        if !(hello_changed || (due && moved)) {
            return;
        }
        self.at = Some(Instant::now());
        self.offset = offset;
        self.hello = Some((memory.fw, memory.channels.clone()));
        let (dir, dev) = (dir.to_owned(), dev.to_owned());
        tokio::task::spawn_blocking(move || {
            if let Err(e) = node_memory::save(&dir, &dev, &memory) {
                tracing::warn!(dev = %dev, error = %e, "cannot save the node memory");
            }
        });
    }
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
        memory_dir,
        clock,
    } = source;
    let mut link = NodeLink::new(dev, config.node_id, stats.clone());
    if let Some(clock) = clock {
        link = link.with_system_clock(clock);
    }
    let mut saved = MemorySaved::default();
    if let Some(dir) = memory_dir.clone() {
        let (id, port) = (config.id.to_string(), config.port.clone());
        let memory = tokio::task::spawn_blocking(move || node_memory::load(&dir, &id, &port))
            .await
            .ok()
            .flatten();
        if let Some(memory) = memory {
            let restored = link.restore(&memory, |ev| {
                if events.try_send(ev).is_err() {
                    SourceStats::add(&stats.dropped_events, 1);
                }
            });
            if restored {
                tracing::info!(dev = %config.id, node = memory.node, channels = memory.channels.len(), clock = memory.clock.is_some(), "node remembered from the last run: decoding at once");
                saved.hello = Some((memory.fw, memory.channels.clone()));
                saved.offset = memory.clock.map(|a| a.offset);
            }
        }
    }
    let mut pending = PendingAcks {
        next_seq: 1,
        waiting: HashMap::new(),
    };
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let path = config.port.display().to_string();
    let mut logged_open_error = false;

    while !shutdown.is_shutdown() {
        // What the kernel buffered while nobody read is decoded where the node's time can be
        // mapped (a clock mapping known from this run or the last); else it is of unknown age.
        let mut port = match NodePort::open_with(&config.port, config.baud, !link.clock_mapped()) {
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
                    if let Some(dir) = &memory_dir {
                        saved.maybe_save(&link, dir, config.id.as_ref(), &config.port);
                    }
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

    fn memory() -> NodeMemory {
        NodeMemory {
            port: "/dev/ttyUSB0".into(),
            node: 7,
            fw: (1, 0, 0),
            channels: vec![ChannelInfo {
                id: 0,
                quantity: Quantity::Strain,
                rate_hz: 50,
            }],
            clock: Some(crate::sources::node_clock::ClockAnchor {
                raw: 10_000,
                ext: 10_000,
                offset: 4_990_000.0,
                seen: 5_000_000.0,
            }),
        }
    }

    #[test]
    fn a_remembered_node_is_decoded_at_once_with_its_old_clock_mapping() {
        let stats = SourceStats::new();
        let mut link = NodeLink::new(DeviceKey::Node(0), None, stats);
        let mut told = Vec::new();
        assert!(link.restore(&memory(), |e| told.push(e)));
        assert!(matches!(&told[..], [SourceEvent::Hello { channels, .. }] if channels.len() == 1));
        assert!(link.clock_mapped());
        // A frame the kernel buffered 3 s ago, read only now: mapped by the remembered offset.
        let ev = collect(&mut link, samples(40, 12_000, &[1.0]), 5_005_000.0);
        let Some(SourceEvent::Samples { t0, .. }) = ev.last() else {
            panic!("{ev:?}")
        };
        assert!((t0 - 5_002_000.0).abs() < 2.0, "{t0}");
        assert_eq!(
            link.memory(std::path::Path::new("/dev/ttyUSB0"))
                .map(|m| m.node),
            Some(7)
        );
        // A memory of another node than the configured one is not taken.
        let mut other = NodeLink::new(DeviceKey::Node(0), Some(8), SourceStats::new());
        assert!(!other.restore(&memory(), |_| {}));
        assert!(!other.clock_mapped());
    }

    #[test]
    fn another_node_on_the_port_forgets_the_remembered_channels() {
        let mut link = NodeLink::new(DeviceKey::Node(0), None, SourceStats::new());
        link.restore(&memory(), |_| {});
        let mut frame = samples(1, 100, &[1.0]);
        frame.node = 9;
        let ev = collect(&mut link, frame, 6_000_000.0);
        assert!(
            matches!(&ev[0], SourceEvent::Hello { channels, .. } if channels.is_empty()),
            "{ev:?}"
        );
    }

    #[test]
    fn a_step_of_the_system_clock_re_anchors_the_node_clock() {
        let clock = Arc::new(ClockStatus::default());
        let mut link = NodeLink::new(DeviceKey::Node(0), None, SourceStats::new())
            .with_system_clock(clock.clone());
        collect(&mut link, samples(1, 10_000, &[1.0]), 5_000_000.0);
        // The wall clock went an hour back: without re-anchoring, the smallest-delay rule would
        // keep the old offset and date the samples an hour in the future.
        clock.note_step();
        let ev = collect(
            &mut link,
            samples(2, 11_000, &[1.0]),
            5_001_000.0 - 3_600_000.0,
        );
        let Some(SourceEvent::Samples { t0, .. }) = ev.last() else {
            panic!("{ev:?}")
        };
        assert!((t0 - (5_001_000.0 - 3_600_000.0)).abs() < 1.0, "{t0}");
    }
}
