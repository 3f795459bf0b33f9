//! The pipeline: turns [`SourceEvent`]s into feed [`Message`]s.
//!
//! One [`Pipeline`] holds the state of every device: its channels (learnt from the node's
//! Hello), its open windows, and the health rules of its sensors. It is synchronous and takes
//! the time as an argument, so tests and benchmarks drive it directly; [`run`] is the task
//! that feeds it from the sources and hands its messages to the queue.

pub mod lift_rules;
pub mod sensor_health;
pub mod window;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use towerlink_firmware::protocol::{ChannelInfo, Quantity};

use self::lift_rules::{LiftMonitor, LiftRuleSettings};
use self::sensor_health::DeviceHealth;
use self::window::DeviceWindows;
use crate::commands::ChannelDirectory;
use crate::config::{Config, NodeConfig};
use crate::feed::{now_millis, Message, UnixMillis};
use crate::queue::Queue;
use crate::shutdown::Shutdown;
use crate::sources::SourceEvent;

/// Samples that arrive before the node's Hello are held (up to this many events) until its
/// channels are known; the source asks for a Hello as soon as it opens the port.
const MAX_EVENTS_BEFORE_HELLO: usize = 256;

/// Pipeline counters, shared with `health`.
#[derive(Debug, Default)]
pub struct PipelineStats {
    /// Samples dropped because their window had closed.
    pub late_samples: AtomicU64,
    /// Samples of channels the node never announced, or that arrived before a Hello and
    /// overflowed the hold buffer.
    pub unknown_channel_samples: AtomicU64,
}

/// One channel of a device.
#[derive(Debug, Clone)]
pub struct Channel {
    /// Channel id on the node.
    pub id: u8,
    /// Feed name (`ch` key).
    pub name: String,
    /// Quantity (and so unit).
    pub quantity: Quantity,
    /// Sampling rate, Hz.
    pub rate_hz: u16,
}

/// Feed names of a node's channels: the configured name, else the quantity's name, with
/// `_<id>` appended when the node has more than one channel of that quantity.
pub fn channel_names(infos: &[ChannelInfo], configured: &BTreeMap<u8, String>) -> Vec<Channel> {
    infos
        .iter()
        .map(|info| {
            let name = match configured.get(&info.id) {
                Some(name) => name.clone(),
                None => {
                    let same = infos.iter().filter(|o| o.quantity == info.quantity).count();
                    if same > 1 {
                        format!("{}_{}", info.quantity.name(), info.id)
                    } else {
                        info.quantity.name().to_owned()
                    }
                }
            };
            Channel {
                id: info.id,
                name,
                quantity: info.quantity,
                rate_hz: info.rate_hz,
            }
        })
        .collect()
}

struct Device {
    id: String,
    config: NodeConfig,
    channels: Vec<Channel>,
    /// Channel id -> slot in `channels`.
    slot_of: [Option<u8>; 256],
    windows: DeviceWindows,
    held: Vec<SourceEvent>,
    health: DeviceHealth,
    late_reported: u64,
}

impl Device {
    fn new(config: &NodeConfig, now: UnixMillis, silent_after: Duration) -> Device {
        Device {
            id: config.id.clone(),
            config: config.clone(),
            channels: Vec::new(),
            slot_of: [None; 256],
            windows: DeviceWindows::new(
                config.window.as_millis() as i64,
                config.window_grace.as_millis() as i64,
                0,
            ),
            held: Vec::new(),
            health: DeviceHealth::new(now, silent_after.as_millis() as i64),
            late_reported: 0,
        }
    }

    fn known(&self) -> bool {
        !self.channels.is_empty()
    }
}

/// The state of every device's windows and health rules.
pub struct Pipeline {
    devices: Vec<Device>,
    stats: Arc<PipelineStats>,
    directory: ChannelDirectory,
    lifts: Vec<LiftMonitor>,
}

impl Pipeline {
    /// A pipeline for the configured devices, started at `now`.
    pub fn new(
        config: &Config,
        now: UnixMillis,
        stats: Arc<PipelineStats>,
        directory: ChannelDirectory,
    ) -> Pipeline {
        let devices = config
            .nodes
            .iter()
            .map(|n| Device::new(n, now, config.health.node_silent_after))
            .collect();
        let lifts = config
            .lifts
            .iter()
            .map(|l| LiftMonitor::new(&l.id, LiftRuleSettings::from_config(l)))
            .collect();
        Pipeline {
            devices,
            stats,
            directory,
            lifts,
        }
    }

    /// Handles one source event; messages it produces are appended to `out`.
    pub fn handle(&mut self, event: SourceEvent, now: UnixMillis, out: &mut Vec<Message>) {
        match event {
            SourceEvent::LiftReading { lift, ts, reading } => {
                if let Some(monitor) = self.lifts.get_mut(lift) {
                    monitor.on_reading(ts, reading, out);
                }
                return;
            }
            SourceEvent::LiftPollFailed { lift, ts } => {
                if let Some(monitor) = self.lifts.get_mut(lift) {
                    monitor.on_poll_failed(ts, out);
                }
                return;
            }
            _ => {}
        }
        let dev_index = match &event {
            SourceEvent::Hello { dev, .. }
            | SourceEvent::Samples { dev, .. }
            | SourceEvent::Fault { dev, .. }
            | SourceEvent::FramesLost { dev, .. }
            | SourceEvent::Alive { dev, .. } => *dev,
            SourceEvent::LiftReading { .. } | SourceEvent::LiftPollFailed { .. } => return,
        };
        let Some(device) = self.devices.get_mut(dev_index) else {
            return;
        };
        match event {
            SourceEvent::Hello { channels, .. } => {
                let named = channel_names(&channels, &device.config.names);
                let changed = named.len() != device.channels.len()
                    || named
                        .iter()
                        .zip(&device.channels)
                        .any(|(a, b)| a.id != b.id || a.name != b.name || a.quantity != b.quantity);
                if changed {
                    // The node's channels changed (or are first known): close what was open
                    // under the old layout, then start over.
                    let closed = device.windows.close_all();
                    emit_windows(device, closed, out);
                    device.slot_of = [None; 256];
                    for (slot, ch) in named.iter().enumerate() {
                        device.slot_of[usize::from(ch.id)] = Some(slot as u8);
                    }
                    device.windows = DeviceWindows::new(
                        device.config.window.as_millis() as i64,
                        device.config.window_grace.as_millis() as i64,
                        named.len(),
                    );
                    device.health.set_channels(&named, now);
                    if let Ok(mut dir) = self.directory.write() {
                        dir.insert(device.id.clone(), named.clone());
                    }
                    device.channels = named;
                    tracing::info!(dev = %device.id, channels = ?device.channels.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), "node channels known");
                }
                let held = std::mem::take(&mut device.held);
                for ev in held {
                    self.handle(ev, now, out);
                }
            }
            SourceEvent::Samples {
                channel,
                t0,
                period_ms,
                ref values,
                ..
            } => {
                if !device.known() {
                    if device.held.len() < MAX_EVENTS_BEFORE_HELLO {
                        device.held.push(event);
                    } else {
                        self.stats
                            .unknown_channel_samples
                            .fetch_add(values.len() as u64, Ordering::Relaxed);
                    }
                    return;
                }
                let Some(slot) = device.slot_of[usize::from(channel)] else {
                    self.stats
                        .unknown_channel_samples
                        .fetch_add(values.len() as u64, Ordering::Relaxed);
                    return;
                };
                let slot = usize::from(slot);
                device.windows.add(slot, t0, period_ms, values);
                let span = period_ms * values.len() as f64;
                device
                    .health
                    .on_samples(slot, now, span, &device.channels, out, &device.id);
                let late = device.windows.late_samples();
                if late > device.late_reported {
                    self.stats
                        .late_samples
                        .fetch_add(late - device.late_reported, Ordering::Relaxed);
                    device.late_reported = late;
                }
            }
            SourceEvent::Fault {
                channel, code, ts, ..
            } => {
                if !device.known() {
                    if device.held.len() < MAX_EVENTS_BEFORE_HELLO {
                        device.held.push(event);
                    }
                    return;
                }
                let slot = device.slot_of[usize::from(channel)].map(usize::from);
                device
                    .health
                    .on_fault(slot, channel, code, ts, &device.channels, out, &device.id);
            }
            SourceEvent::FramesLost { count, ts, .. } => {
                device.health.on_frames_lost(count, ts, out, &device.id)
            }
            SourceEvent::Alive { ts, .. } => device.health.on_alive(ts, out, &device.id),
            SourceEvent::LiftReading { .. } | SourceEvent::LiftPollFailed { .. } => {}
        }
    }

    /// Closes due windows and applies the time-based health rules.
    pub fn tick(&mut self, now: UnixMillis, out: &mut Vec<Message>) {
        for device in &mut self.devices {
            let closed = device.windows.close_due(now);
            emit_windows(device, closed, out);
            let late = device.windows.late_samples();
            if late > device.late_reported {
                self.stats
                    .late_samples
                    .fetch_add(late - device.late_reported, Ordering::Relaxed);
                device.late_reported = late;
            }
            device.health.tick(now, &device.channels, out, &device.id);
        }
        for lift in &mut self.lifts {
            lift.tick(now, out);
        }
    }

    /// Closes every open window (clean shutdown): no sample that arrived is left behind.
    pub fn flush(&mut self, out: &mut Vec<Message>) {
        for device in &mut self.devices {
            let closed = device.windows.close_all();
            emit_windows(device, closed, out);
        }
    }
}

fn emit_windows(device: &Device, closed: Vec<window::ClosedWindow>, out: &mut Vec<Message>) {
    for w in closed {
        if w.channels.is_empty() {
            continue;
        }
        let ch = w
            .channels
            .iter()
            .filter_map(|(slot, stats)| {
                let channel = device.channels.get(*slot)?;
                Some((
                    channel.name.clone(),
                    stats.to_window(channel.quantity.unit()),
                ))
            })
            .collect();
        out.push(Message::Data {
            dev: device.id.clone(),
            start: w.start,
            end: w.end,
            ch,
        });
    }
}

/// How often windows are closed and health rules checked.
const TICK: Duration = Duration::from_millis(100);

/// Runs the pipeline until the sources are gone or shutdown fires, then flushes.
pub async fn run(
    mut pipeline: Pipeline,
    mut events: mpsc::Receiver<SourceEvent>,
    queue: Arc<Queue>,
    mut shutdown: Shutdown,
) {
    let mut out = Vec::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(ev) => pipeline.handle(ev, now_millis(), &mut out),
                None => break,
            },
            _ = tick.tick() => pipeline.tick(now_millis(), &mut out),
            _ = shutdown.recv() => break,
        }
        for m in out.drain(..) {
            queue.push(m);
        }
    }
    // Whatever the sources already delivered still goes out.
    while let Ok(ev) = events.try_recv() {
        pipeline.handle(ev, now_millis(), &mut out);
    }
    pipeline.flush(&mut out);
    for m in out.drain(..) {
        queue.push(m);
    }
    tracing::debug!("pipeline stopped");
}
