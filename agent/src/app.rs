//! Wiring: starts every task of the agent and stops them in order.
//!
//! Start: open the store, then the sources, the pipeline and the uplink. Stop (SIGINT or
//! SIGTERM): the sources stop reading, the pipeline flushes its open windows into the queue,
//! then the uplink drains the queue (bounded), publishes `offline` and disconnects. What is
//! not acknowledged by then stays counted in the queue.

use std::sync::Arc;

use anyhow::Context;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::feed::{now_millis, Renderer, Topics};
use crate::health::{HealthReporter, SourceEntry};
use crate::pipeline::{self, Pipeline, PipelineStats};
use crate::queue::store::StoreOptions;
use crate::queue::Queue;
use crate::service::{self, Heartbeats};
use crate::shutdown;
use crate::sources::serial_node::{self, SerialNodeSource};
use crate::sources::{DeviceKey, NodeRequest, SourceStats};
use crate::uplink::{Uplink, UplinkConfig, UplinkStats};

/// Capacity of the channel from the sources to the pipeline (events, each up to 32 samples).
const SOURCE_EVENTS: usize = 8192;

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

/// Runs the agent until `stop` resolves, then shuts down cleanly.
pub async fn run(
    config: Config,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    run_sources(config, stop, None).await
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
    run_sources(config, stop, Some(feeder)).await
}

async fn run_sources(
    config: Config,
    stop: impl std::future::Future<Output = ()>,
    feeder: Option<Feeder>,
) -> anyhow::Result<()> {
    let gw = config.gateway.id.to_string();
    let topics = Topics::new(&config.mqtt.topic_root, &gw);
    let broker = config
        .broker()
        .map_err(anyhow::Error::msg)
        .context("[mqtt] url")?;
    let renderer = Renderer::new(&gw, topics.clone());
    let queue = Queue::open(StoreOptions {
        fsync: config.store.fsync,
        max_bytes: config.store.max_bytes,
        max_messages: config.store.max_messages,
        segment_bytes: config.store.segment_bytes,
        ..StoreOptions::new(&config.store.path)
    })
    .with_context(|| {
        format!(
            "cannot open the store at {} ([store] path)",
            config.store.path.display()
        )
    })?;
    let (credentials, insecure) = config
        .mqtt
        .uplink_security(&broker)
        .map_err(anyhow::Error::msg)?;
    let tls = crate::uplink::tls::TlsFiles::from_config(&config.mqtt, &broker);
    let depth = queue.depth(now_millis());
    tracing::info!(gw = %gw, broker = %broker, store = %config.store.path.display(), last_seq = queue.last_seq(), unacknowledged = depth.messages, "towerlink agent starting");

    let (shutdown_tx, shutdown) = shutdown::channel();
    let (events_tx, events_rx) = mpsc::channel(SOURCE_EVENTS);
    let heartbeats = Heartbeats::new();

    let uplink_stats = Arc::new(UplinkStats::default());
    let mut source_entries = Vec::new();
    let mut source_tasks = Vec::new();
    let mut node_requests = Vec::new();
    let mut i2c_threads = Vec::new();
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
        start_sources(
            &config,
            &events_tx,
            &shutdown,
            &heartbeats,
            &mut source_entries,
            &mut source_tasks,
            &mut node_requests,
            &mut i2c_threads,
        )?;
    }
    drop(events_tx);

    let pipeline_stats = Arc::new(PipelineStats::default());
    let pipeline = Pipeline::new(
        config.devices(),
        config.health.node_silent_after,
        now_millis(),
        pipeline_stats.clone(),
    )
    .with_zeros(crate::pipeline::zero::ZeroTable::load(&config.store.path));
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
        heartbeats.register("pipeline"),
        shutdown.clone(),
    ));

    let command_stats = Arc::new(crate::commands::CommandStats::default());
    let reporter = HealthReporter::new(
        &gw,
        config.health.node_silent_after.as_millis() as u64,
        queue.clone(),
        uplink_stats.clone(),
        pipeline_stats,
        source_entries,
    )
    .with_replay_rate(config.store.replay_rate)
    .with_insecure(insecure)
    .with_protocol(config.mqtt.protocol)
    .with_command_stats(command_stats.clone());
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
            tls,
            credentials,
            protocol: config.mqtt.protocol,
            // Validated to at most MQTT's largest packet, which fits in u32.
            max_packet: u32::try_from(config.mqtt.max_packet).unwrap_or(u32::MAX),
        },
        queue.clone(),
        uplink_stats,
        commands_tx,
        {
            let diff = std::sync::Mutex::new(crate::health::HealthDiff::new(config.health.full));
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
    let commands_task = tokio::spawn(crate::commands::run(
        crate::commands::CommandContext::new(
            config.command_settings(),
            config.zero_at(),
            config.redacted(),
            node_requests,
            directory,
            pipeline_tx,
        )
        .with_stats(command_stats),
        commands_rx,
        queue.clone(),
        renderer,
        shutdown.clone(),
    ));

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
            heartbeats.clone(),
            interval,
            shutdown.clone(),
        ));
    }

    stop.await;
    service::notify("STOPPING=1");
    tracing::info!("stopping: flushing windows and draining the queue");
    shutdown_tx.fire();
    for task in source_tasks {
        let _ = task.await;
    }
    for thread in i2c_threads {
        // A blocking join, off the async runtime; each thread sees the shutdown within one
        // sample period.
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
    let _ = pipeline_task.await;
    let _ = commands_task.await;
    uplink.stop().await;
    queue.sync().await;
    let left = queue.depth(now_millis()).messages;
    tracing::info!(
        unacknowledged = left,
        last_seq = queue.last_seq(),
        "towerlink agent stopped"
    );
    Ok(())
}

/// Starts the configured devices' sources: one task per serial node, one per RS-485 bus, one
/// thread per I2C device.
#[allow(clippy::too_many_arguments)]
fn start_sources(
    config: &Config,
    events_tx: &mpsc::Sender<crate::sources::SourceEvent>,
    shutdown: &shutdown::Shutdown,
    heartbeats: &Heartbeats,
    source_entries: &mut Vec<SourceEntry>,
    source_tasks: &mut Vec<tokio::task::JoinHandle<()>>,
    node_requests: &mut Vec<(String, mpsc::Sender<NodeRequest>)>,
    i2c_threads: &mut Vec<std::thread::JoinHandle<()>>,
) -> anyhow::Result<()> {
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
        };
        source_tasks.push(tokio::spawn(serial_node::run(source, shutdown.clone())));
    }
    start_lift_buses(
        config,
        events_tx,
        shutdown,
        heartbeats,
        source_entries,
        source_tasks,
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
    Ok(())
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
