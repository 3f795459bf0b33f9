//! A virtual panel node: the real firmware core (`towerlink_firmware::node::Node` with the
//! panel's `PanelSensors` and the real NAU7802/ADXL355 drivers) running over register-level
//! simulated chips, streaming its frames into a pseudo-terminal in real time.
//!
//! Determinism: the node samples at exact scheduled instants of its own clock, and before each
//! instant the simulated chips' clock is set to that instant, so the frames a node sends depend
//! only on the scenario and its seed, not on how promptly its thread runs. Only commands from
//! the agent (which arrive when they arrive) and faults injected by a test change the stream.
//!
//! A handle lets tests put garbage on the line between two frames ([`VirtualNode::inject`]),
//! unplug and replug the adapter, and read back every frame the node put on the line
//! ([`VirtualNode::sent_frames`]) to check what the agent made of it, and every command the
//! agent sent it ([`VirtualNode::commands_received`]). [`VirtualNode::refuse_zero`] makes it
//! a node that cannot tare: it answers Zero with "unsupported", as firmware without a tare
//! does.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use towerlink_firmware::drivers::adxl355::{self, Adxl355};
use towerlink_firmware::drivers::nau7802::{self, Nau7802};
use towerlink_firmware::node::panel::{PanelLayout, PanelSensors};
use towerlink_firmware::node::{Node, NodeConfig, SensorSet};
use towerlink_firmware::protocol::{
    encode_after_delimiter, ChannelInfo, Command, FaultCode, Frame, Op, StreamDecoder,
    MAX_ENCODED_LEN,
};
use towerlink_sim_chips::{PanelModel, Scenario, SimAdxl355, SimClock, SimDelay, SimNau7802};

use crate::pty::VirtualPort;

/// Simulated time between the end of chip init and the node's first sample.
const BOOT_SETTLE_US: u64 = 100_000;
/// The longest the node thread sleeps between polls: bounds command latency.
const MAX_IDLE: Duration = Duration::from_millis(5);

#[derive(Debug, Default)]
struct Shared {
    record: bool,
    stop: AtomicBool,
    plugged: AtomicBool,
    replugged: AtomicU64,
    inject: Mutex<Vec<Vec<u8>>>,
    sent: Mutex<Vec<Frame>>,
    frames_sent: AtomicU64,
    bytes_dropped: AtomicU64,
    unplugged: AtomicU64,
    error: Mutex<Option<String>>,
    refuse_zero: AtomicBool,
    commands: Mutex<Vec<Command>>,
}

/// A running virtual node.
#[derive(Debug)]
pub struct VirtualNode {
    dev: String,
    node_id: u32,
    path: PathBuf,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// The panel's sensors as the firmware sees them, plus the hook that sets the simulated
/// chips' time to each sampling instant.
struct SimPanel {
    inner: PanelSensors<SimNau7802, SimAdxl355>,
    clock: SimClock,
    boot_us: u64,
}

impl SensorSet for SimPanel {
    fn channels(&self) -> &[ChannelInfo] {
        self.inner.channels()
    }
    fn read(&mut self, channel: u8) -> Result<f32, FaultCode> {
        self.inner.read(channel)
    }
    fn begin_instant(&mut self, t_ms: u32) {
        self.clock
            .advance_to_us(self.boot_us + u64::from(t_ms) * 1000);
        self.inner.begin_instant(t_ms);
    }
    fn supply_mv(&mut self) -> u16 {
        self.inner.supply_mv()
    }
    fn board_temp_centi_c(&mut self) -> i16 {
        self.inner.board_temp_centi_c()
    }
}

/// Collects the node's output in a buffer.
struct Collect(Vec<u8>);

impl towerlink_firmware::node::ByteSink for Collect {
    type Error = std::convert::Infallible;
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), Self::Error> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

impl VirtualNode {
    /// Starts the node `dev` of `scenario` with its port link at `link`; with `record`, it
    /// keeps a copy of every frame it sends (for tests: it grows without bound).
    pub fn spawn(
        scenario: &Scenario,
        dev: &str,
        link: &Path,
        record: bool,
    ) -> io::Result<VirtualNode> {
        let panel = scenario
            .panels
            .iter()
            .find(|p| p.name == dev)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no panel {dev:?} in the scenario"),
                )
            })?;
        let node_id = panel.node;
        let model = scenario
            .panel_model(panel)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        if let Some(dir) = link.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let port = VirtualPort::open(Some(link))?;
        let shared = Arc::new(Shared {
            record,
            ..Shared::default()
        });
        shared.plugged.store(true, Ordering::SeqCst);
        let thread_shared = shared.clone();
        let link_owned = link.to_owned();
        let thread = std::thread::Builder::new()
            .name(format!("node-{dev}"))
            .spawn(move || {
                if let Err(e) = node_thread(model, node_id, port, &link_owned, &thread_shared) {
                    if let Ok(mut slot) = thread_shared.error.lock() {
                        *slot = Some(e.to_string());
                    }
                }
            })?;
        Ok(VirtualNode {
            dev: dev.to_owned(),
            node_id,
            path: link.to_owned(),
            shared,
            thread: Some(thread),
        })
    }

    /// Device id.
    pub fn dev(&self) -> &str {
        &self.dev
    }

    /// Node id in its frames.
    pub fn node_id(&self) -> u32 {
        self.node_id
    }

    /// The port path the agent opens (a stable link to the current terminal).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Puts `bytes` on the line between two frames, as noise or a rebooting neighbour would.
    pub fn inject(&self, bytes: &[u8]) {
        if let Ok(mut q) = self.shared.inject.lock() {
            q.push(bytes.to_vec());
        }
    }

    /// Every frame the node put on the line so far (a clean copy, in order; empty unless the
    /// node was started with `record`).
    pub fn sent_frames(&self) -> Vec<Frame> {
        self.shared
            .sent
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    /// Every command the agent sent the node so far, in order (decoded from the line by the
    /// simulator, independently of the firmware's own decoder).
    pub fn commands_received(&self) -> Vec<Command> {
        self.shared
            .commands
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    /// With `true`, the node answers every Zero with "unsupported" (and tares nothing).
    pub fn refuse_zero(&self, refuse: bool) {
        self.shared.refuse_zero.store(refuse, Ordering::SeqCst);
    }

    /// How many frames the node put on the line.
    pub fn frames_sent(&self) -> u64 {
        self.shared.frames_sent.load(Ordering::SeqCst)
    }

    /// Unplugs the adapter: the terminal closes and its link disappears; returns once it has.
    /// The node keeps sampling; what it sends meanwhile is lost, as on a real cable.
    pub fn unplug(&self) -> io::Result<()> {
        let before = self.shared.unplugged.load(Ordering::SeqCst);
        self.shared.plugged.store(false, Ordering::SeqCst);
        self.wait_for(&self.shared.unplugged, before, "close its port")
    }

    /// Plugs the adapter back in (a new terminal behind the same link); returns once it is there.
    pub fn replug(&self) -> io::Result<()> {
        let before = self.shared.replugged.load(Ordering::SeqCst);
        self.shared.plugged.store(true, Ordering::SeqCst);
        self.wait_for(&self.shared.replugged, before, "reopen its port")
    }

    /// Waits (bounded) until the node thread moved `counter` past `before`.
    fn wait_for(&self, counter: &AtomicU64, before: u64, what: &str) -> io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while counter.load(Ordering::SeqCst) == before {
            if let Some(e) = self.error() {
                return Err(io::Error::other(format!("the node stopped: {e}")));
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the node did not {what}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// The error that stopped the node thread, if any.
    pub fn error(&self) -> Option<String> {
        self.shared.error.lock().ok().and_then(|e| e.clone())
    }

    /// Stops the node and closes its port.
    pub fn stop(mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for VirtualNode {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn node_thread(
    model: PanelModel,
    node_id: u32,
    port: VirtualPort,
    link: &Path,
    shared: &Shared,
) -> io::Result<()> {
    let clock = SimClock::new();
    let model = Arc::new(model);
    let adc = Nau7802::new(SimNau7802::new(model.clone(), clock.clone()));
    let accel = Adxl355::new(
        SimAdxl355::new(
            model,
            clock.clone(),
            towerlink_sim_chips::adxl355::ADDRESS_LOW,
        ),
        adxl355::Address::AselLow,
    );
    let mut sensors = PanelSensors::new(adc, accel, PanelLayout::default());
    // The real init sequence, as on the board (a chip that fails faults its channels).
    let mut delay = SimDelay::new(clock.clone());
    let init = sensors.init_chips(
        &mut delay,
        nau7802::Config::default(),
        adxl355::Config::default(),
    );
    if init.adc.is_err() || init.accel.is_err() {
        tracing::warn!(
            node = node_id,
            ?init,
            "a simulated chip failed to initialise"
        );
    }
    // The firmware starts sampling once the chips have settled (first conversions done), as
    // a board's start-up delay does; node time 0 is that moment in simulated time.
    clock.advance_us(BOOT_SETTLE_US);
    let boot_us = clock.now_us();
    sensors.set_supply_mv(3300);
    let panel = SimPanel {
        inner: sensors,
        clock,
        boot_us,
    };
    let mut node = Node::new(NodeConfig::new(node_id), panel)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("node config: {e:?}")))?;

    let mut port = Some(port);
    let mut own_frames = StreamDecoder::new();
    let mut commands = StreamDecoder::new();
    let mut rx = [0u8; 512];
    let start = Instant::now();
    while !shared.stop.load(Ordering::SeqCst) {
        let plugged = shared.plugged.load(Ordering::SeqCst);
        if !plugged && port.is_some() {
            port = None;
            shared.unplugged.fetch_add(1, Ordering::SeqCst);
        } else if plugged && port.is_none() {
            port = Some(VirtualPort::open(Some(link))?);
            shared.replugged.fetch_add(1, Ordering::SeqCst);
        }
        let now_ms = start.elapsed().as_millis() as u32;
        let mut out = Collect(Vec::new());
        let _ = node.poll(now_ms, &mut out);
        if let Some(p) = port.as_mut() {
            let n = p.receive(&mut rx)?;
            if n > 0 {
                let mut received = Vec::new();
                commands.decode_all::<Command, _>(&rx[..n], |c| {
                    if let Ok(c) = c {
                        received.push(c);
                    }
                });
                if shared.refuse_zero.load(Ordering::SeqCst) {
                    // The firmware core has no "cannot tare" switch; a SetRate to 0 Hz with
                    // the Zero's seq makes the node itself answer it "unsupported" (in its
                    // own frame sequence, changing nothing). Other commands pass as they came.
                    let mut buf = [0u8; MAX_ENCODED_LEN];
                    for c in &received {
                        let mut c = c.clone();
                        if let Op::Zero { channel } = c.op {
                            c.op = Op::SetRate {
                                channel,
                                rate_hz: 0,
                            };
                        }
                        if let Ok(len) = encode_after_delimiter(&c, &mut buf) {
                            let _ = node.receive(&buf[..len], now_ms, &mut out);
                        }
                    }
                } else {
                    let _ = node.receive(&rx[..n], now_ms, &mut out);
                }
                if let Ok(mut log) = shared.commands.lock() {
                    log.extend(received);
                }
            }
            let garbage: Vec<Vec<u8>> = shared
                .inject
                .lock()
                .map(|mut q| q.drain(..).collect())
                .unwrap_or_default();
            for g in garbage {
                let sent = p.send(&g)?;
                shared
                    .bytes_dropped
                    .fetch_add((g.len() - sent) as u64, Ordering::Relaxed);
            }
        }
        if !out.0.is_empty() {
            let delivered = match port.as_mut() {
                Some(p) => p.send(&out.0)?,
                None => 0,
            };
            shared
                .bytes_dropped
                .fetch_add((out.0.len() - delivered) as u64, Ordering::Relaxed);
            // Record what actually went on the line, decoded from the bytes themselves.
            let mut frames = Vec::new();
            own_frames.decode_all::<Frame, _>(&out.0[..delivered], |f| {
                if let Ok(f) = f {
                    frames.push(f);
                }
            });
            if delivered < out.0.len() {
                own_frames.reset();
            }
            shared
                .frames_sent
                .fetch_add(frames.len() as u64, Ordering::SeqCst);
            if shared.record {
                if let Ok(mut sent) = shared.sent.lock() {
                    sent.extend(frames);
                }
            }
        }
        let due = node.next_due_ms();
        let now = start.elapsed().as_millis() as u32;
        let wait = Duration::from_millis(u64::from(due.wrapping_sub(now).min(1000))).min(MAX_IDLE);
        std::thread::sleep(wait);
    }
    Ok(())
}

/// Starts every panel of `scenario`, each with its port link `<dir>/<dev>`.
pub fn spawn_tower(scenario: &Scenario, dir: &Path, record: bool) -> io::Result<Vec<VirtualNode>> {
    std::fs::create_dir_all(dir)?;
    scenario
        .panels
        .iter()
        .map(|p| VirtualNode::spawn(scenario, &p.name, &dir.join(&p.name), record))
        .collect()
}
