//! Wiring: starts every task of the agent and stops them in order.
//!
//! Start: open the store, then the sources, the pipeline and the uplink. Stop (SIGINT or
//! SIGTERM): the sources stop reading, the pipeline flushes its open windows into the queue,
//! then the uplink drains the queue (bounded), publishes `offline` and disconnects. What is
//! not acknowledged by then stays counted in the queue.
//!
//! `config_apply` (see `apply`): the tasks are stopped and started again in this process on
//! the new configuration, over the same open queue. In process rather than a re-exec: the
//! queue stays open (no second scan, seq continues with nothing in between), the process
//! keeps its identity under systemd (PID, watchdog, notify socket), and a rollback needs
//! nothing from the disk.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::mpsc;

use crate::clock::ClockStatus;
use crate::commands::{ApplyRequest, RunningFile};
use crate::config::Config;
use crate::feed::{now_millis, BirthInfo, LastStop, Message, Renderer, Reply, Topics};
use crate::health::{HealthReporter, SourceEntry};
use crate::pipeline::{self, Pipeline, PipelineStats};
use crate::queue::run_marker::RunMarker;
use crate::queue::store::StoreOptions;
use crate::queue::Queue;
use crate::service::{self, Heartbeats};
use crate::shutdown;
use crate::sources::serial_node::{self, SerialNodeSource};
use crate::sources::{DeviceKey, NodeRequest, SourceStats};
use crate::uplink::{Uplink, UplinkConfig, UplinkStats};

mod apply;
use apply::{apply, Applying};
pub use apply::{staged_path, ApplyError, RollbackCause};

/// In the store directory: the seqs handed to the broker and not acknowledged yet, so they
/// go out again marked `"replay": true` after a restart.
pub const ATTEMPTED_FILE: &str = "attempted.seqs";
/// For this long after start no window closes, so what the kernel buffered while the agent
/// was down (decoded in the first milliseconds) still reaches its windows (ms).
const RECOVERY_HOLD_MS: i64 = 2_000;

/// Capacity of the channel from the sources to the pipeline (events, each up to 32 samples).
const SOURCE_EVENTS: usize = 8192;

/// The configuration file the agent runs: where it is and its text (`config_get`,
/// `config_apply`).
#[derive(Debug, Clone)]
pub struct ConfigFile {
    /// The file.
    pub path: PathBuf,
    /// Its text, as loaded.
    pub text: String,
}

impl ConfigFile {
    /// Reads and validates the file at `path` (as [`Config::load`] does), keeping its text.
    pub fn load(path: &Path) -> Result<(Config, ConfigFile), crate::config::ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| crate::config::ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
        let config = Config::parse_in(&text, &path.display().to_string(), path.parent())?;
        Ok((
            config,
            ConfigFile {
                path: path.to_owned(),
                text,
            },
        ))
    }
}

/// What lives across an applied configuration: the queue (so seq continues with no gap),
/// the command counters, the systemd heartbeats, and the supervisor's end of `config_apply`.
struct Shared {
    queue: Arc<Queue>,
    command_stats: Arc<crate::commands::CommandStats>,
    heartbeats: Heartbeats,
    apply_tx: mpsc::Sender<ApplyRequest>,
    /// The system clock's state (one for the process: its step detection spans applies).
    clock: Arc<ClockStatus>,
    /// How the previous run of the process ended (the birth says it).
    last_stop: LastStop,
}

/// What a fed run's source tasks get: the pipeline's input, the shutdown, and one
/// [`SourceStats`] per `[[node]]` and per `[[lift]]` (config order) that the health report reads.
#[derive(Debug)]
pub struct Feed {
    /// Into the pipeline.
    pub events: mpsc::Sender<crate::sources::SourceEvent>,
    /// Fires at stop; the tasks end then.
    pub shutdown: shutdown::Shutdown,
    /// Per `[[node]]`.
    pub node_stats: Vec<Arc<SourceStats>>,
    /// Per `[[lift]]`.
    pub lift_stats: Vec<Arc<SourceStats>>,
    /// The uplink's counters (what was sent, what was acknowledged).
    pub uplink_stats: Arc<UplinkStats>,
}

/// Starts the tasks that produce a fed run's events (instead of the serial, Modbus and I2C
/// sources); they must end when the shutdown fires.
pub type Feeder = Box<dyn FnOnce(Feed) -> Vec<tokio::task::JoinHandle<()>> + Send>;

/// Runs the agent until `stop` resolves, then shuts down cleanly (no `config_apply`: the
/// configuration did not come from a file).
pub async fn run(
    config: Config,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    run_with(config, None, None, stop).await
}

/// Runs the agent as [`run`] does, but with its events produced by `feeder` instead of the
/// configured devices' ports (the fleet simulator: the same pipeline, queue and uplink, fed
/// in-process). The `[[node]]` and `[[lift]]` sections still declare the devices (their
/// channels, windows and rules); their ports are never opened.
pub async fn run_fed(
    config: Config,
    stop: impl std::future::Future<Output = ()>,
    feeder: Feeder,
) -> anyhow::Result<()> {
    run_with(config, None, Some(feeder), stop).await
}

/// Runs the agent on the configuration loaded from `file` until `stop` resolves; a
/// `config_apply` replaces the file (see [`apply`]).
pub async fn run_file(
    config: Config,
    file: ConfigFile,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    run_with(config, Some(file), None, stop).await
}

async fn run_with(
    config: Config,
    mut file: Option<ConfigFile>,
    feeder: Option<Feeder>,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let queue = Queue::open(StoreOptions {
        fsync: config.store.fsync,
        max_bytes: config.store.max_bytes,
        max_messages: config.store.max_messages,
        segment_bytes: config.store.segment_bytes,
        keep_acked: config.store.keep_acked,
        keep_acked_bytes: config.store.keep_acked_bytes,
        merge_above: config.store.merge_above,
        // What an earlier run handed to the broker may be at the platform: never merged.
        merge_floor: crate::uplink::load_attempted(&config.store.path.join(ATTEMPTED_FILE))
            .into_iter()
            .max()
            .unwrap_or(0),
        ..StoreOptions::new(&config.store.path)
    })
    .with_context(|| {
        format!(
            "cannot open the store at {} ([store] path)",
            config.store.path.display()
        )
    })?;
    // Marks this run as running; a marker left by the previous run means it did not stop cleanly.
    let (marker, last_stop) = match RunMarker::begin(&config.store.path, now_millis()) {
        Ok((marker, last)) => (Some(marker), last),
        Err(e) => {
            tracing::error!(store = %config.store.path.display(), error = %e, "cannot write the run marker; the birth says last_stop unclean (unknown)");
            (None, LastStop::Unclean)
        }
    };
    if last_stop == LastStop::Unclean {
        tracing::warn!("the previous run did not stop cleanly (kill, crash or power cut)");
    }
    let (apply_tx, mut apply_rx) = mpsc::channel(1);
    let shared = Shared {
        queue: queue.clone(),
        command_stats: Arc::default(),
        heartbeats: Heartbeats::new(),
        apply_tx,
        clock: Arc::new(ClockStatus::from_system()),
        last_stop,
    };
    let (process_stop, process_shutdown) = shutdown::channel();
    let mut config = config;
    let mut agent = Agent::start(&config, file.as_ref(), &shared, feeder)?;

    // Under systemd: ready now, and the watchdog fed while every loop beats.
    if service::notify("READY=1") {
        tracing::info!("notified systemd: ready");
    }
    if let Some(interval) = service::watchdog_interval() {
        tracing::info!(
            interval_ms = interval.as_millis() as u64,
            "systemd watchdog on"
        );
        tokio::spawn(service::watchdog(
            shared.heartbeats.clone(),
            interval,
            process_shutdown,
        ));
    }

    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            request = apply_rx.recv() => {
                let Some(request) = request else { break };
                let Some(running) = file.clone() else { continue };
                let outcome = apply(
                    request,
                    Applying { agent, config: config.clone(), file: running },
                    &shared,
                    &mut apply_rx,
                    stop.as_mut(),
                )
                .await?;
                agent = outcome.agent;
                config = outcome.config;
                file = Some(outcome.file);
                if outcome.stopped {
                    break;
                }
            }
        }
    }
    service::notify("STOPPING=1");
    tracing::info!("stopping: flushing windows and draining the queue");
    agent.stop().await;
    process_stop.fire();
    queue.sync().await;
    // The very last write: this run stopped cleanly.
    if let Some(marker) = marker {
        let removed = tokio::task::spawn_blocking(move || marker.end_clean()).await;
        if let Ok(Err(e)) = removed {
            tracing::error!(error = %e, "cannot remove the run marker; the next birth will say last_stop unclean");
        }
    }
    let left = queue.depth(now_millis()).messages;
    tracing::info!(
        unacknowledged = left,
        last_seq = queue.last_seq(),
        "towerlink agent stopped"
    );
    Ok(())
}

/// One running set of tasks (sources, pipeline, uplink, commands) on one configuration.
struct Agent {
    shutdown_tx: shutdown::ShutdownSender,
    source_tasks: Vec<tokio::task::JoinHandle<()>>,
    i2c_threads: Vec<std::thread::JoinHandle<()>>,
    pipeline_task: tokio::task::JoinHandle<()>,
    commands_task: tokio::task::JoinHandle<()>,
    uplink: Uplink,
    uplink_stats: Arc<UplinkStats>,
    pipeline_stats: Arc<PipelineStats>,
    sources: Vec<(String, Arc<SourceStats>)>,
    renderer: Renderer,
}

impl Agent {
    /// Starts every task of `config` over the shared queue.
    fn start(
        config: &Config,
        file: Option<&ConfigFile>,
        shared: &Shared,
        feeder: Option<Feeder>,
    ) -> anyhow::Result<Agent> {
        let gw = config.gateway.id.to_string();
        let topics = Topics::new(&config.mqtt.topic_root, &gw);
        let broker = config.broker().context("[mqtt] url")?;
        let clock = shared.clock.clone();
        let renderer = Renderer::new(&gw, topics.clone()).with_clock(clock.clone());
        let queue = shared.queue.clone();
        let (credentials, insecure) = config.mqtt.uplink_security(&broker)?;
        let tls = crate::uplink::tls::TlsFiles::from_config(&config.mqtt, &broker);
        let depth = queue.depth(now_millis());
        tracing::info!(gw = %gw, broker = %broker, store = %config.store.path.display(), last_seq = queue.last_seq(), unacknowledged = depth.messages, "towerlink agent starting");

        // A fresh set of loops: the previous configuration's are gone.
        shared.heartbeats.clear();
        let heartbeats = &shared.heartbeats;
        let (shutdown_tx, shutdown) = shutdown::channel();
        let (events_tx, events_rx) = mpsc::channel(SOURCE_EVENTS);

        let mut source_entries = Vec::new();
        let mut source_tasks = Vec::new();
        let mut node_requests = Vec::new();
        let mut i2c_threads = Vec::new();
        let uplink_stats = Arc::new(UplinkStats::default());
        if let Some(feeder) = feeder {
            let mut feed = Feed {
                events: events_tx.clone(),
                shutdown: shutdown.clone(),
                node_stats: Vec::new(),
                lift_stats: Vec::new(),
                uplink_stats: uplink_stats.clone(),
            };
            for node in &config.nodes {
                let stats = SourceStats::new();
                source_entries.push(SourceEntry {
                    dev: node.id.to_string(),
                    kind: "serial_node",
                    port: node.port.display().to_string(),
                    stats: stats.clone(),
                });
                feed.node_stats.push(stats);
            }
            for lift in &config.lifts {
                let stats = SourceStats::new();
                source_entries.push(SourceEntry {
                    dev: lift.id.to_string(),
                    kind: "modbus_lift",
                    port: lift.port.display().to_string(),
                    stats: stats.clone(),
                });
                feed.lift_stats.push(stats);
            }
            source_tasks = feeder(feed);
        } else {
            for (dev, node) in config.nodes.iter().enumerate() {
                let stats = SourceStats::new();
                let (req_tx, req_rx) = mpsc::channel::<NodeRequest>(16);
                node_requests.push((node.id.to_string(), req_tx));
                source_entries.push(SourceEntry {
                    dev: node.id.to_string(),
                    kind: "serial_node",
                    port: node.port.display().to_string(),
                    stats: stats.clone(),
                });
                let source = SerialNodeSource {
                    dev: DeviceKey::Node(dev),
                    config: node.map_channels(|_| ()),
                    events: events_tx.clone(),
                    requests: req_rx,
                    stats,
                    heartbeat: heartbeats.register(&format!("source {}", node.id)),
                    memory_dir: Some(config.store.path.clone()),
                    clock: Some(clock.clone()),
                };
                source_tasks.push(tokio::spawn(serial_node::run(source, shutdown.clone())));
            }
            start_lift_buses(
                config,
                &events_tx,
                &shutdown,
                heartbeats,
                &mut source_entries,
                &mut source_tasks,
            )?;
            for (i, dev) in config.i2c.iter().enumerate() {
                let stats = SourceStats::new();
                source_entries.push(SourceEntry {
                    dev: dev.id.to_string(),
                    kind: "i2c",
                    port: dev.bus.clone(),
                    stats: stats.clone(),
                });
                let source = crate::sources::i2c_device::I2cSource {
                    dev: DeviceKey::I2c(i),
                    config: dev.map_channels(|_| ()),
                    events: events_tx.clone(),
                    stats,
                    heartbeat: heartbeats.register(&format!("i2c {}", dev.id)),
                };
                i2c_threads.push(
                    crate::sources::i2c_device::spawn(source, shutdown.clone())
                        .with_context(|| format!("starting the thread of i2c device {}", dev.id))?,
                );
            }
        }
        drop(events_tx);
        let sources = source_entries
            .iter()
            .map(|e| (e.dev.clone(), e.stats.clone()))
            .collect();

        let pipeline_stats = Arc::new(PipelineStats::default());
        let pipeline = Pipeline::new(
            config.devices(),
            config.health.node_silent_after,
            now_millis(),
            pipeline_stats.clone(),
        )
        .with_zeros(crate::pipeline::zero::ZeroTable::load(&config.store.path))
        .with_recovery_hold(RECOVERY_HOLD_MS);
        // The pipeline publishes the devices' channels; the command path reads them.
        let directory = pipeline.directory();
        let (pipeline_tx, pipeline_rx) = mpsc::channel(16);
        let pipeline_task = tokio::spawn(pipeline::run(
            pipeline,
            pipeline_stats.clone(),
            events_rx,
            pipeline_rx,
            queue.clone(),
            renderer.clone(),
            pipeline::ClockWatch::system(clock.clone()),
            heartbeats.register("pipeline"),
            shutdown.clone(),
        ));

        let reporter = HealthReporter::new(
            &gw,
            config.health.node_silent_after.as_millis() as u64,
            queue.clone(),
            uplink_stats.clone(),
            pipeline_stats.clone(),
            source_entries,
        )
        .with_replay_rate(config.store.replay_rate)
        .with_replay_bytes_rate(config.store.replay_bytes_rate)
        .with_insecure(insecure)
        .with_protocol(config.mqtt.protocol)
        .with_command_stats(shared.command_stats.clone())
        .with_clock(clock.clone())
        .with_client_cert(tls.as_ref().is_some_and(|t| t.client_cert.is_some()));
        let (commands_tx, commands_rx) = mpsc::channel(64);
        let uplink = Uplink::start(
            UplinkConfig {
                gw: gw.clone(),
                topics,
                broker,
                keep_alive: config.mqtt.keep_alive,
                data_qos: if config.mqtt.data_qos == 0 {
                    rumqttc::QoS::AtMostOnce
                } else {
                    rumqttc::QoS::AtLeastOnce
                },
                max_inflight: config.mqtt.max_inflight,
                health_interval: config.health.interval,
                heartbeat: heartbeats.register("mqtt publisher"),
                replay_rate: config.store.replay_rate,
                replay_bytes_rate: config.store.replay_bytes_rate,
                batch: (!config.mqtt.batch.is_zero()).then_some(config.mqtt.batch),
                tls: tls.clone(),
                credentials,
                protocol: config.mqtt.protocol,
                // Validated to at most MQTT's largest packet, which fits in u32.
                max_packet: u32::try_from(config.mqtt.max_packet).unwrap_or(u32::MAX),
                attempted_file: Some(config.store.path.join(ATTEMPTED_FILE)),
                birth: BirthInfo {
                    last_stop: shared.last_stop,
                    clock: Some(clock.clone()),
                },
            },
            queue.clone(),
            uplink_stats.clone(),
            commands_tx,
            {
                let diff =
                    std::sync::Mutex::new(crate::health::HealthDiff::new(config.health.full));
                let started = std::time::Instant::now();
                Box::new(move || {
                    let report = reporter.report();
                    let now = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                    let mut diff = diff.lock().unwrap_or_else(|p| p.into_inner());
                    diff.next(report, now).to_string().into_bytes()
                })
            },
        )
        .map_err(anyhow::Error::msg)?;
        let mut context = crate::commands::CommandContext::new(
            config.command_settings(),
            config.zero_at(),
            config.redacted(),
            node_requests,
            directory,
            pipeline_tx,
        )
        .with_stats(shared.command_stats.clone())
        .with_queue(queue.clone());
        if let Some((cert_file, key_file)) = tls.as_ref().and_then(|t| t.client_cert.clone()) {
            context = context.with_client_cert(crate::commands::ClientCert {
                cert_file,
                key_file,
                state: uplink_stats.tls.clone(),
            });
        }
        if let Some(file) = file {
            context = context
                .with_config_file(RunningFile::new(file.text.clone()), shared.apply_tx.clone());
        }
        let commands_task = tokio::spawn(crate::commands::run(
            context,
            commands_rx,
            queue,
            renderer.clone(),
            shutdown.clone(),
        ));
        Ok(Agent {
            shutdown_tx,
            source_tasks,
            i2c_threads,
            pipeline_task,
            commands_task,
            uplink,
            uplink_stats,
            pipeline_stats,
            sources,
            renderer,
        })
    }

    /// The sources stop reading, the pipeline flushes its open windows into the queue, the
    /// uplink drains the queue (bounded), publishes `offline` and disconnects.
    async fn stop(self) {
        self.shutdown_tx.fire();
        for task in self.source_tasks {
            let _ = task.await;
        }
        for thread in self.i2c_threads {
            // A blocking join, off the async runtime; each thread sees the shutdown within
            // one sample period.
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        let _ = self.pipeline_task.await;
        let _ = self.commands_task.await;
        self.uplink.stop().await;
    }

    /// What is not up yet: the MQTT session and every configured source's port (empty when
    /// all are).
    fn not_up(&self) -> Vec<String> {
        let mut down = Vec::new();
        if !self.uplink_stats.connected.load(Ordering::Relaxed) {
            down.push("the MQTT session".to_owned());
        }
        for (dev, stats) in &self.sources {
            if !stats.link_up.load(Ordering::Relaxed) {
                down.push(format!("source {dev}"));
            }
        }
        down
    }

    /// Queues the reply to a handed-off command and counts it.
    async fn reply(&self, shared: &Shared, reply: Reply) {
        if !reply.ok {
            tracing::warn!(id = %reply.id, error = reply.error.as_deref().unwrap_or(""), "command refused");
        }
        shared.command_stats.count(&reply);
        shared
            .queue
            .push(self.renderer.render(&Message::Reply(reply)))
            .await;
    }
}

/// Starts one Modbus task per RS-485 bus (lifts grouped by port, in config order).
fn start_lift_buses(
    config: &Config,
    events: &mpsc::Sender<crate::sources::SourceEvent>,
    shutdown: &shutdown::Shutdown,
    heartbeats: &Heartbeats,
    entries: &mut Vec<SourceEntry>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<()> {
    use crate::sources::modbus_lift::{self, BusLift, ModbusBusSource};
    let mut buses: Vec<ModbusBusSource> = Vec::new();
    for (index, lift) in config.lifts.iter().enumerate() {
        let profile = lift.register_map.clone().with_context(|| {
            format!(
                "lift {}: profile {:?} was not loaded",
                lift.id, lift.profile
            )
        })?;
        let stats = SourceStats::new();
        entries.push(SourceEntry {
            dev: lift.id.to_string(),
            kind: "modbus_lift",
            port: lift.port.display().to_string(),
            stats: stats.clone(),
        });
        let member = BusLift {
            lift: index,
            config: lift.clone(),
            profile,
            stats,
        };
        match buses.iter_mut().find(|b| b.port == lift.port) {
            Some(bus) => bus.lifts.push(member),
            None => buses.push(ModbusBusSource {
                port: lift.port.clone(),
                lifts: vec![member],
                events: events.clone(),
                heartbeat: heartbeats.register(&format!("bus {}", lift.port.display())),
            }),
        }
    }
    for bus in buses {
        tasks.push(tokio::spawn(modbus_lift::run(bus, shutdown.clone())));
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn termination_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers only Ctrl-C through tokio's fallback remains.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
