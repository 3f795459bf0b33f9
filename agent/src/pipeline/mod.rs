//! The pipeline: turns [`SourceEvent`]s into feed [`Message`]s.
//!
//! One [`Pipeline`] holds the state of every device: its channels (learnt from the node's
//! Hello), its open windows, and the health rules of its sensors. It is synchronous and takes
//! the time as an argument, so tests and benchmarks drive it directly; [`run`] is the task
//! that feeds it from the sources and hands its messages to the queue.

pub mod alarm;
pub mod capture;
pub mod chain;
pub mod directory;
mod emit;
pub mod filter;
mod handlers;
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
use self::capture::Recorder;
use self::chain::{ChannelChain, Deadband};
pub use self::directory::ChannelDirectory;
use self::emit::{
    build_chains, emit_capture, emit_deadband, emit_windows, finish_captures, to_event,
};
use self::handlers::{count_late, device_of};
use self::lift_rules::{LiftMonitor, LiftRuleSettings};
use self::sensor_health::DeviceHealth;
use self::window::DeviceWindows;
use self::zero::ZeroTable;
use crate::clock::{ClockStatus, StepDetector, TimeSource};
use crate::feed::{now_millis, Event, EventState, Message, Renderer, Severity, UnixMillis};
use crate::queue::Queue;
use crate::shutdown::Shutdown;
use crate::sources::config::LiftConfig;
use crate::sources::{DeviceKey, SourceEvent};
use settings::{I2cDevice as I2cConfig, Node as NodeConfig};

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
    /// Captures started (threshold or rate alarms of capturing channels).
    pub captures: AtomicU64,
    /// Capture parts not queued because their trigger event got no `seq` (the queue was
    /// gone).
    pub capture_parts_dropped: AtomicU64,
    /// Conditions active now, by device (`event` or `event:channel`), for `health`.
    pub active: std::sync::Mutex<BTreeMap<String, std::collections::BTreeSet<String>>>,
    /// Critical conditions active now (`dev/event` or `dev/event:channel`): a `config_apply`
    /// waits while there is one.
    pub critical: std::sync::Mutex<std::collections::BTreeSet<String>>,
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
        if let Ok(mut critical) = self.critical.lock() {
            let id = format!("{dev}/{key}");
            match event.state {
                crate::feed::EventState::Active
                    if event.severity == crate::feed::Severity::Critical =>
                {
                    critical.insert(id);
                }
                crate::feed::EventState::Active => {}
                crate::feed::EventState::Cleared => {
                    critical.remove(&id);
                }
            }
        }
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

impl PipelineStats {
    /// The critical conditions active now (`dev/event[:channel]`), oldest name first.
    pub fn critical_active(&self) -> Vec<String> {
        self.critical
            .lock()
            .map(|c| c.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// Why a gateway zero was not taken (the command's reply says it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZeroError {
    /// No device of that id.
    #[error("unknown device {0:?}")]
    UnknownDevice(String),
    /// The device has no channel of that name (or has not announced its channels).
    #[error("unknown channel {ch:?} on {dev:?}")]
    UnknownChannel {
        /// Device.
        dev: String,
        /// Channel feed name.
        ch: String,
    },
    /// Nothing read yet to take as the zero.
    #[error("{dev}/{ch} has no reading yet to take as zero")]
    NoReading {
        /// Device.
        dev: String,
        /// Channel feed name.
        ch: String,
    },
    /// The zero table could not be written.
    #[error("cannot persist the zero: {0}")]
    Persist(String),
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
        reply: tokio::sync::oneshot::Sender<Result<f64, ZeroError>>,
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

/// What the pipeline needs of a device's configuration, whatever its source: a serial node
/// or an I2C device (which has no port, baud or node id, and keeps its zero here).
#[derive(Debug, Clone)]
pub struct DeviceSettings {
    /// Device id `{dev}`.
    pub id: String,
    /// Telemetry window.
    pub window: Duration,
    /// How long a window waits for late samples.
    pub window_grace: Duration,
    /// Configured feed names of channels, by channel id.
    pub names: BTreeMap<u8, String>,
    /// Filter chain per channel, by feed name.
    pub channels: BTreeMap<String, settings::ChannelSettings>,
}

impl From<&NodeConfig> for DeviceSettings {
    fn from(n: &NodeConfig) -> DeviceSettings {
        DeviceSettings {
            id: n.id.to_string(),
            window: n.window,
            window_grace: n.window_grace,
            names: n.names.clone(),
            channels: n.channels.clone(),
        }
    }
}

impl From<&I2cConfig> for DeviceSettings {
    fn from(d: &I2cConfig) -> DeviceSettings {
        DeviceSettings {
            id: d.id.to_string(),
            window: d.window,
            // The chip is read by this gateway: samples are never late by much.
            window_grace: Duration::from_secs(2),
            names: BTreeMap::new(),
            channels: d.channels.clone(),
        }
    }
}

struct Device {
    id: String,
    config: DeviceSettings,
    channels: Vec<Channel>,
    chains: Vec<ChannelChain>,
    deadbands: Vec<Option<Deadband>>,
    captures: Vec<Option<Recorder>>,
    /// Channel id -> slot in `channels`.
    slot_of: [Option<u8>; 256],
    windows: DeviceWindows,
    held: Vec<SourceEvent>,
    health: DeviceHealth,
    late_reported: u64,
}

impl Device {
    fn new(config: DeviceSettings, now: UnixMillis, silent_after: Duration) -> Device {
        Device {
            id: config.id.clone(),
            channels: Vec::new(),
            chains: Vec::new(),
            deadbands: Vec::new(),
            captures: Vec::new(),
            slot_of: [None; 256],
            windows: DeviceWindows::new(
                config.window.as_millis() as i64,
                config.window_grace.as_millis() as i64,
                0,
            ),
            held: Vec::new(),
            health: DeviceHealth::new(now, silent_after.as_millis() as i64),
            late_reported: 0,
            config,
        }
    }

    fn known(&self) -> bool {
        !self.channels.is_empty()
    }
}

/// The state of every device's windows and health rules.
pub struct Pipeline {
    /// By [`DeviceKey::Node`] index (`config.nodes`).
    nodes: Vec<Device>,
    /// By [`DeviceKey::I2c`] index (`config.i2c`).
    i2c: Vec<Device>,
    stats: Arc<PipelineStats>,
    directory: ChannelDirectory,
    zeros: ZeroTable,
    transitions: Vec<Transition>,
    lifts: Vec<LiftMonitor>,
    started: UnixMillis,
    /// No window closes before this (see [`Pipeline::with_recovery_hold`]).
    hold_until: UnixMillis,
    /// The `seq` of each running capture's trigger event, by (dev, ch, event ts): `None`
    /// until the queue numbered the event (see [`Pipeline::queued`]).
    trigger_seqs: BTreeMap<(String, String, i64), Option<u64>>,
}

/// Most trigger references kept (one per running or unsent capture: far more than any
/// gateway has channels).
const MAX_TRIGGER_SEQS: usize = 4096;

/// Is this transition one that starts (or extends) a capture?
fn is_capture_trigger(event: &str, state: EventState) -> bool {
    state == EventState::Active && matches!(event, "threshold" | "rate_of_change")
}

impl Pipeline {
    /// A pipeline for the configured devices, started at `now`. It publishes the devices'
    /// channels in its own [`ChannelDirectory`] (see [`Pipeline::directory`]).
    pub fn new(
        (nodes, i2c, lifts): (&[NodeConfig], &[I2cConfig], &[LiftConfig]),
        silent_after: Duration,
        now: UnixMillis,
        stats: Arc<PipelineStats>,
    ) -> Pipeline {
        // Serial nodes and I2C devices get the same windows, filters and health rules; each
        // list is indexed as its `DeviceKey`.
        let nodes = nodes
            .iter()
            .map(|n| Device::new(n.into(), now, silent_after))
            .collect();
        let i2c = i2c
            .iter()
            .map(|d| Device::new(d.into(), now, silent_after))
            .collect();
        let lifts = lifts
            .iter()
            .map(|l| LiftMonitor::new(&l.id, LiftRuleSettings::from_config(l)))
            .collect();
        Pipeline {
            nodes,
            i2c,
            stats,
            directory: ChannelDirectory::new(),
            zeros: ZeroTable::in_memory(),
            transitions: Vec::new(),
            lifts,
            started: now,
            hold_until: i64::MIN,
            trigger_seqs: BTreeMap::new(),
        }
    }

    /// Closes no window for `ms` after start: samples the kernel buffered while the agent was
    /// down, decoded in the first moments, still reach their windows instead of being late.
    pub fn with_recovery_hold(mut self, ms: i64) -> Pipeline {
        self.hold_until = self.started.saturating_add(ms);
        self
    }

    /// The queue numbered `message` with `seq` (`None`: it was not queued). A capture's
    /// trigger event learns its `seq` here, for the capture's parts.
    pub fn queued(&mut self, message: &Message, seq: Option<u64>) {
        let Message::Event { dev, event } = message else {
            return;
        };
        let (Some(ch), Some(seq)) = (&event.ch, seq) else {
            return;
        };
        if !is_capture_trigger(event.event, event.state) {
            return;
        }
        if let Some(slot) = self
            .trigger_seqs
            .get_mut(&(dev.clone(), ch.clone(), event.ts))
        {
            slot.get_or_insert(seq);
        }
    }

    /// Readies `message` for the queue: a capture part gets its trigger's `seq`. `false`
    /// when it cannot be sent (its trigger event was never queued: counted, logged).
    pub fn prepare(&mut self, message: &mut Message) -> bool {
        let Message::Capture { dev, part } = message else {
            return true;
        };
        if part.trigger.seq.is_some() {
            return true;
        }
        let key = (dev.clone(), part.ch.clone(), part.trigger.ts);
        let seq = self.trigger_seqs.get(&key).copied().flatten();
        if part.part >= part.parts {
            self.trigger_seqs.remove(&key);
        }
        match seq {
            Some(seq) => {
                part.trigger.seq = Some(seq);
                true
            }
            None => {
                self.stats
                    .capture_parts_dropped
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(dev = %key.0, ch = %key.1, "capture part dropped: its trigger event was not queued");
                false
            }
        }
    }

    /// A capture started with this trigger: its event's `seq` is to be noted.
    fn await_trigger(&mut self, dev: &str, ch: &str, ts: i64) {
        if self.trigger_seqs.len() >= MAX_TRIGGER_SEQS {
            self.trigger_seqs.pop_first();
        }
        self.trigger_seqs
            .insert((dev.to_owned(), ch.to_owned(), ts), None);
    }

    /// A handle on the channel directory this pipeline publishes (for the command path).
    pub fn directory(&self) -> ChannelDirectory {
        self.directory.clone()
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

    fn zero(&mut self, dev: &str, ch: &str) -> Result<f64, ZeroError> {
        let device = self
            .nodes
            .iter_mut()
            .chain(self.i2c.iter_mut())
            .find(|d| d.id == dev)
            .ok_or_else(|| ZeroError::UnknownDevice(dev.to_owned()))?;
        let slot = device
            .channels
            .iter()
            .position(|c| c.name == ch)
            .ok_or_else(|| ZeroError::UnknownChannel {
                dev: dev.to_owned(),
                ch: ch.to_owned(),
            })?;
        let chain = &mut device.chains[slot];
        let value = chain.last_filtered.ok_or_else(|| ZeroError::NoReading {
            dev: dev.to_owned(),
            ch: ch.to_owned(),
        })?;
        self.zeros
            .set(dev, ch, value)
            .map_err(|e| ZeroError::Persist(e.to_string()))?;
        chain.zero = value;
        tracing::info!(dev, ch, zero = value, "gateway zero set");
        Ok(value)
    }

    /// Handles one source event; messages it produces are appended to `out`. Each kind of
    /// event has its own handler; an event of a device no source was started for is ignored.
    pub fn handle(&mut self, event: SourceEvent, now: UnixMillis, out: &mut Vec<Message>) {
        match event {
            SourceEvent::LiftReading { lift, ts, reading } => {
                self.on_lift_reading(lift, ts, reading, out)
            }
            SourceEvent::LiftPollFailed { lift, ts } => self.on_lift_poll_failed(lift, ts, out),
            SourceEvent::Hello { dev, channels, .. } => self.on_hello(dev, &channels, now, out),
            SourceEvent::Samples { dev, .. } => self.on_samples(dev, event, now, out),
            SourceEvent::Fault { dev, .. } => self.on_fault(dev, event, out),
            SourceEvent::FramesLost { dev, count, ts } => {
                if let Some(device) = self.device(dev) {
                    device.health.on_frames_lost(count, ts, out, &device.id);
                }
            }
            // Heard now: the source's stamp may be of the timeline before a clock step the
            // pipeline has already moved its timers past.
            SourceEvent::Alive { dev, .. } => {
                if let Some(device) = self.device(dev) {
                    device.health.on_alive(now, out, &device.id);
                }
            }
        }
    }

    fn device(&mut self, key: DeviceKey) -> Option<&mut Device> {
        device_of(&mut self.nodes, &mut self.i2c, key)
    }

    /// Closes due windows and applies the time-based health rules.
    pub fn tick(&mut self, now: UnixMillis, out: &mut Vec<Message>) {
        let holding = now < self.hold_until;
        for device in self.nodes.iter_mut().chain(self.i2c.iter_mut()) {
            if !holding {
                let closed = device.windows.close_due(now);
                emit_windows(device, closed, out);
            }
            count_late(device, &self.stats);
            device.health.tick(now, &device.channels, out, &device.id);
            for (slot, recorder) in device.captures.iter_mut().enumerate() {
                let (Some(recorder), Some(channel)) = (recorder, device.channels.get(slot)) else {
                    continue;
                };
                let parts = recorder.overdue(now as f64, &channel.name, channel.quantity.unit());
                emit_capture(&device.id, parts, out);
            }
        }
        for lift in &mut self.lifts {
            lift.tick(now, out);
        }
    }

    /// The wall clock stepped by `step_ms` to `now`: closes every open window (none may span
    /// the step), starts the windows afresh at `now` (nothing dated before it is taken), moves
    /// the health rules' timers with the clock, and reports `clock_step` on the gateway.
    pub fn clock_step(&mut self, step_ms: i64, now: UnixMillis, out: &mut Vec<Message>) {
        // The open windows end where the old timeline did: at the step.
        let before_step = now.saturating_sub(step_ms);
        for device in self.nodes.iter_mut().chain(self.i2c.iter_mut()) {
            let mut closed = device.windows.close_all();
            for w in &mut closed {
                w.end = w.end.min(before_step).max(w.start);
            }
            emit_windows(device, closed, out);
            device.windows.restart_at(now);
            device.health.shift(step_ms);
        }
        for lift in &mut self.lifts {
            lift.shift(step_ms);
        }
        self.started = self.started.saturating_add(step_ms);
        self.hold_until = self.hold_until.saturating_add(step_ms);
        let mut event = Event::new(now, "clock_step", Severity::Minor, EventState::Active);
        event.detail = Some(serde_json::json!({ "step_ms": step_ms }));
        out.push(Message::Event {
            dev: GATEWAY_DEV.to_owned(),
            event,
        });
    }

    /// Closes every open window (clean shutdown): no sample that arrived is left behind.
    /// Closes every open window, publishes the statistics pending in deadband channels and
    /// sends the running captures with what they have (clean shutdown): no sample that
    /// arrived is left behind.
    pub fn flush(&mut self, out: &mut Vec<Message>) {
        self.flush_at(UnixMillis::MAX, out);
    }

    /// [`Pipeline::flush`] at wall time `now`: a window that has not ended yet ends at `now`
    /// (the agent's clean stop: no window is stamped in the future).
    pub fn flush_at(&mut self, now: UnixMillis, out: &mut Vec<Message>) {
        for device in self.nodes.iter_mut().chain(self.i2c.iter_mut()) {
            let closed = device.windows.close_all_at(now);
            emit_windows(device, closed, out);
            finish_captures(device, out);
            for slot in 0..device.deadbands.len() {
                if let Some(report) = device.deadbands[slot].as_mut().and_then(Deadband::flush) {
                    emit_deadband(device, slot, report, out);
                }
            }
        }
    }
}

/// Queues the pipeline's messages in order, with one hand-off to the queue's writer per run
/// of messages ([`Queue::push_many`]: one append, one sync, not a thread round trip each);
/// each event's `seq` goes back to the pipeline (a capture names its trigger event's `seq`,
/// so a capture part whose trigger was in the same run waits for that run to be queued).
async fn push_all(
    pipeline: &mut Pipeline,
    stats: &PipelineStats,
    out: &mut Vec<Message>,
    queue: &Queue,
    renderer: &Renderer,
) {
    let mut run: Vec<Message> = Vec::with_capacity(out.len());
    for mut m in out.drain(..) {
        if needs_trigger_seq(&m) && !run.is_empty() {
            queue_run(pipeline, &mut run, queue, renderer).await;
        }
        if !pipeline.prepare(&mut m) {
            continue;
        }
        stats.note(&m);
        run.push(m);
    }
    queue_run(pipeline, &mut run, queue, renderer).await;
}

/// Does `m` still wait for its trigger event's `seq` ([`Pipeline::prepare`] fills it in)?
fn needs_trigger_seq(m: &Message) -> bool {
    matches!(m, Message::Capture { part, .. } if part.trigger.seq.is_none())
}

/// Queues `run` with one hand-off and tells the pipeline each message's `seq`.
async fn queue_run(
    pipeline: &mut Pipeline,
    run: &mut Vec<Message>,
    queue: &Queue,
    renderer: &Renderer,
) {
    if run.is_empty() {
        return;
    }
    let rendered = run.iter().map(|m| renderer.render(m)).collect();
    let seqs = queue.push_many(rendered).await;
    for (m, seq) in run.drain(..).zip(seqs) {
        pipeline.queued(&m, seq);
    }
}

/// How often windows are closed and health rules checked.
const TICK: Duration = Duration::from_millis(100);

/// The `dev` of the gateway's own events (`{root}/{gw}/event/gateway`).
pub const GATEWAY_DEV: &str = "gateway";

/// How often the kernel's clock state is read again (ms).
const CLOCK_REFRESH_MS: i64 = 1_000;

/// Where the pipeline's task takes its time from, and how it finds steps of the wall clock.
pub struct ClockWatch {
    time: Box<dyn TimeSource>,
    detector: StepDetector,
    status: Arc<ClockStatus>,
    refresh_kernel: bool,
    refreshed_at: Option<i64>,
}

impl ClockWatch {
    /// The system's clocks, with the kernel's synchronisation state read every second.
    pub fn system(status: Arc<ClockStatus>) -> ClockWatch {
        ClockWatch::new(Box::new(crate::clock::SystemTime::default()), status, true)
    }

    /// Time from `time` (tests step it); `refresh_kernel` reads adjtimex every second.
    pub fn new(
        time: Box<dyn TimeSource>,
        status: Arc<ClockStatus>,
        refresh_kernel: bool,
    ) -> ClockWatch {
        ClockWatch {
            time,
            detector: StepDetector::new(),
            status,
            refresh_kernel,
            refreshed_at: None,
        }
    }

    /// The wall-clock time now.
    pub fn now(&self) -> UnixMillis {
        self.time.wall_ms()
    }

    /// Looks at both clocks: the step of the wall clock since the last look, if it stepped
    /// (counted in the shared state first, so the sources re-anchor their nodes' clocks).
    pub fn check(&mut self) -> Option<i64> {
        let mono = self.time.mono_ms();
        if self.refresh_kernel
            && self
                .refreshed_at
                .is_none_or(|at| mono - at >= CLOCK_REFRESH_MS)
        {
            self.status.refresh();
            self.refreshed_at = Some(mono);
        }
        let step = self.detector.observe(self.time.wall_ms(), mono)?;
        self.status.note_step();
        tracing::warn!(
            step_ms = step,
            "the wall clock stepped: windows closed, node clocks re-anchored"
        );
        Some(step)
    }
}

/// Runs the pipeline until the sources are gone or shutdown fires, then flushes.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    mut pipeline: Pipeline,
    stats: Arc<PipelineStats>,
    mut events: mpsc::Receiver<SourceEvent>,
    mut requests: mpsc::Receiver<PipelineRequest>,
    queue: Arc<Queue>,
    renderer: Renderer,
    mut clock: ClockWatch,
    heartbeat: crate::service::Heartbeat,
    mut shutdown: Shutdown,
) {
    let mut out = Vec::new();
    clock.check();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(ev) => {
                    // A step is looked for before every event too, not only at the tick:
                    // an event handled on the new timeline before the step is found would
                    // then be shifted a second time (a false `sensor_offline`).
                    if let Some(step) = clock.check() {
                        pipeline.clock_step(step, clock.now(), &mut out);
                    }
                    pipeline.handle(ev, clock.now(), &mut out)
                }
                None => break,
            },
            _ = tick.tick() => {
                heartbeat.beat();
                if let Some(step) = clock.check() {
                    pipeline.clock_step(step, clock.now(), &mut out);
                }
                pipeline.tick(clock.now(), &mut out);
            }
            request = requests.recv() => if let Some(r) = request { pipeline.request(r) },
            _ = shutdown.recv() => break,
        }
        push_all(&mut pipeline, &stats, &mut out, &queue, &renderer).await;
    }
    // Whatever the sources already delivered still goes out.
    while let Ok(ev) = events.try_recv() {
        pipeline.handle(ev, clock.now(), &mut out);
    }
    pipeline.flush_at(now_millis(), &mut out);
    push_all(&mut pipeline, &stats, &mut out, &queue, &renderer).await;
    tracing::debug!("pipeline stopped");
}

#[cfg(test)]
mod tests;
