//! The pipeline: turns [`SourceEvent`]s into feed [`Message`]s.
//!
//! One [`Pipeline`] holds the state of every device: its channels (learnt from the node's
//! Hello), its open windows, and the health rules of its sensors. It is synchronous and takes
//! the time as an argument, so tests and benchmarks drive it directly; [`run`] is the task
//! that feeds it from the sources and hands its messages to the queue.

pub mod alarm;
pub mod chain;
pub mod filter;
pub mod lift_rules;
pub mod sensor_health;
pub mod settings;
pub mod window;
pub mod zero;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use towerlink_firmware::protocol::{ChannelInfo, Quantity};

use self::alarm::Transition;
use self::chain::{ChannelChain, Deadband};
use self::lift_rules::{LiftMonitor, LiftRuleSettings};
use self::sensor_health::DeviceHealth;
use self::window::DeviceWindows;
use self::zero::ZeroTable;
use crate::commands::ChannelDirectory;
use crate::config::{Config, NodeConfig};
use crate::feed::{now_millis, Event, Message, Renderer, UnixMillis};
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
    /// Samples dropped as spikes.
    pub spikes: AtomicU64,
    /// Samples dropped as out of range.
    pub out_of_range: AtomicU64,
    /// Conditions active now, by device (`event` or `event:channel`), for `health`.
    pub active: std::sync::Mutex<BTreeMap<String, std::collections::BTreeSet<String>>>,
}

impl PipelineStats {
    /// Keeps the active-conditions table in step with a published event.
    pub fn note(&self, message: &Message) {
        let Message::Event { dev, event } = message else {
            return;
        };
        let key = match &event.ch {
            Some(ch) => format!("{}:{ch}", event.event),
            None => event.event.to_owned(),
        };
        if let Ok(mut active) = self.active.lock() {
            let set = active.entry(dev.clone()).or_default();
            match event.state {
                crate::feed::EventState::Active => {
                    set.insert(key);
                }
                crate::feed::EventState::Cleared => {
                    set.remove(&key);
                }
            }
        }
    }
}

/// A request to the pipeline from the command path.
#[derive(Debug)]
pub enum PipelineRequest {
    /// Take channel `ch` of `dev`'s present filtered value as its zero (gateway-side tare).
    Zero {
        /// Device.
        dev: String,
        /// Channel feed name.
        ch: String,
        /// The new zero, or why not.
        reply: tokio::sync::oneshot::Sender<Result<f64, String>>,
    },
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
    chains: Vec<ChannelChain>,
    deadbands: Vec<Option<Deadband>>,
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
            chains: Vec::new(),
            deadbands: Vec::new(),
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
    zeros: ZeroTable,
    transitions: Vec<Transition>,
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
        // Devices are indexed nodes first, then I2C devices (which the pipeline treats as
        // nodes: same windows, filters and health rules).
        let i2c_nodes: Vec<NodeConfig> = config.i2c.iter().map(|d| d.as_node()).collect();
        let devices = config
            .nodes
            .iter()
            .chain(&i2c_nodes)
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
            zeros: ZeroTable::in_memory(),
            transitions: Vec::new(),
            lifts,
        }
    }

    /// Uses (and persists gateway zeros to) this table.
    pub fn with_zeros(mut self, zeros: ZeroTable) -> Pipeline {
        self.zeros = zeros;
        self
    }

    /// Carries out a request from the command path.
    pub fn request(&mut self, request: PipelineRequest) {
        match request {
            PipelineRequest::Zero { dev, ch, reply } => {
                let _ = reply.send(self.zero(&dev, &ch));
            }
        }
    }

    fn zero(&mut self, dev: &str, ch: &str) -> Result<f64, String> {
        let device = self
            .devices
            .iter_mut()
            .find(|d| d.id == dev)
            .ok_or_else(|| format!("unknown device {dev:?}"))?;
        let slot = device
            .channels
            .iter()
            .position(|c| c.name == ch)
            .ok_or_else(|| format!("unknown channel {ch:?} on {dev:?}"))?;
        let chain = &mut device.chains[slot];
        let value = chain
            .last_filtered
            .ok_or_else(|| format!("{dev}/{ch} has no reading yet to take as zero"))?;
        self.zeros
            .set(dev, ch, value)
            .map_err(|e| format!("cannot persist the zero: {e}"))?;
        chain.zero = value;
        tracing::info!(dev, ch, zero = value, "gateway zero set");
        Ok(value)
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
                    build_chains(device, &named, &self.zeros);
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
                let temperature = device.chains[slot]
                    .temp_slot()
                    .and_then(|s| device.chains.get(s))
                    .and_then(|c| c.last_output);
                let counted = device.chains[slot].counters;
                let mut accepted = Vec::with_capacity(values.len());
                for (i, &raw) in values.iter().enumerate() {
                    let t = t0 + i as f64 * period_ms;
                    let before = self.transitions.len();
                    let out_value = device.chains[slot].process(
                        t,
                        f64::from(raw),
                        temperature,
                        &mut self.transitions,
                    );
                    for tr in self.transitions.drain(before..) {
                        out.push(Message::Event {
                            dev: device.id.clone(),
                            event: to_event(tr, &device.channels[slot], t),
                        });
                    }
                    if let Some(v) = out_value {
                        accepted.push((t, v));
                    }
                }
                let counters = device.chains[slot].counters;
                self.stats
                    .spikes
                    .fetch_add(counters.spikes - counted.spikes, Ordering::Relaxed);
                self.stats.out_of_range.fetch_add(
                    counters.out_of_range - counted.out_of_range,
                    Ordering::Relaxed,
                );
                match device.deadbands[slot].as_mut() {
                    Some(deadband) => {
                        for (t, v) in accepted {
                            if let Some((start, end, stats)) = deadband.add(t, v) {
                                let channel = &device.channels[slot];
                                let mut ch = BTreeMap::new();
                                ch.insert(
                                    channel.name.clone(),
                                    stats.to_window(channel.quantity.unit()),
                                );
                                out.push(Message::Data {
                                    dev: device.id.clone(),
                                    start: start as i64,
                                    end: end as i64,
                                    ch,
                                });
                            }
                        }
                    }
                    None => {
                        for (t, v) in accepted {
                            device.windows.add_one(slot, t, v as f32);
                        }
                    }
                }
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

/// Builds each channel's filter chain and report mode from the configuration.
fn build_chains(device: &mut Device, channels: &[Channel], zeros: &ZeroTable) {
    for name in device.config.channels.keys() {
        if !channels.iter().any(|c| &c.name == name) {
            tracing::warn!(dev = %device.id, channel = %name, "configured channel is not announced by the node");
        }
    }
    let default = settings::ChannelSettings::default();
    device.chains = channels
        .iter()
        .map(|c| {
            let eff = device.config.channels.get(&c.name).unwrap_or(&default).effective(c.quantity);
            let temp_slot = eff.temp_comp.as_ref().and_then(|tc| {
                let slot = channels.iter().position(|o| o.name == tc.channel);
                if slot.is_none() {
                    tracing::warn!(dev = %device.id, channel = %c.name, temp = %tc.channel, "temperature channel for compensation not found");
                }
                slot
            });
            ChannelChain::new(&eff, temp_slot, zeros.get(&device.id, &c.name))
        })
        .collect();
    device.deadbands = channels
        .iter()
        .map(|c| {
            let eff = device
                .config
                .channels
                .get(&c.name)
                .unwrap_or(&default)
                .effective(c.quantity);
            eff.deadband
                .map(|(band, hb)| Deadband::new(band, hb.as_secs_f64() * 1000.0))
        })
        .collect();
}

/// A chain transition, decided on the sample of time `at`, as a feed event.
fn to_event(t: Transition, channel: &Channel, at: f64) -> Event {
    let mut e = Event::new(at as i64, t.event, t.severity, t.state);
    e.since = Some(t.since as i64);
    e.ch = Some(channel.name.clone());
    e.u = Some(channel.quantity.unit());
    e.value = Some(t.value as f32);
    e.limit = t.limit.map(|l| l as f32);
    if let Some(previous) = t.previous {
        e.detail = Some(serde_json::json!({ "previous": previous }));
    }
    e
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
#[allow(clippy::too_many_arguments)]
pub async fn run(
    mut pipeline: Pipeline,
    stats: Arc<PipelineStats>,
    mut events: mpsc::Receiver<SourceEvent>,
    mut requests: mpsc::Receiver<PipelineRequest>,
    queue: Arc<Queue>,
    renderer: Renderer,
    heartbeat: crate::service::Heartbeat,
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
            _ = tick.tick() => {
                heartbeat.beat();
                pipeline.tick(now_millis(), &mut out);
            }
            request = requests.recv() => if let Some(r) = request { pipeline.request(r) },
            _ = shutdown.recv() => break,
        }
        for m in out.drain(..) {
            stats.note(&m);
            queue.push(renderer.render(&m)).await;
        }
    }
    // Whatever the sources already delivered still goes out.
    while let Ok(ev) = events.try_recv() {
        pipeline.handle(ev, now_millis(), &mut out);
    }
    pipeline.flush(&mut out);
    for m in out.drain(..) {
        queue.push(renderer.render(&m)).await;
    }
    tracing::debug!("pipeline stopped");
}
