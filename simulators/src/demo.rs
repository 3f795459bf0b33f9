//! `towerlink-sim demo`: a whole simulated tower on one machine.
//!
//! An embedded broker on a free loopback port, the scenario's panel nodes on
//! pseudo-terminals, the real agent (in-process, configured for them), and a subscriber that
//! prints the live feed as readable lines until Ctrl-C or `--duration`.
//!
//! By default the agent sends the compact path (issue 18): telemetry windows together in one
//! zstd batch on `{root}/{gw}/batch` every [`DEMO_BATCH`]; `--json-windows` sends each window
//! alone on `data/{dev}` as JSON. The printed feed reads the same either way: the viewer
//! decodes each batch and prints every window in it as it prints a window sent alone
//! ([`towerlink_agent::feed_view::render_lines`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use towerlink_agent::config::Config;
use towerlink_sim_chips::scenario::Scenario;

use crate::broker::EmbeddedBroker;
use crate::lift::{BusOptions, LiftBus, LiftSpec};
use crate::virtual_node::{spawn_tower, VirtualNode};

/// The demo's gateway id.
pub const DEMO_GATEWAY: &str = "demo-tower";

/// The demo tower's lift fault script (`simulators/scenarios/lifts.toml`).
pub const DEMO_LIFT_SCRIPT: &str = include_str!("../scenarios/lifts.toml");

/// The demo tower's lifts: two cars on one RS-485 bus.
pub fn demo_lifts() -> Vec<LiftSpec> {
    [(1u8, "lift-1"), (2, "lift-2")]
        .into_iter()
        .map(|(unit, id)| LiftSpec {
            id: id.to_owned(),
            unit,
            bottom_floor: -2,
            top_floor: 32,
            rated_speed_mm_s: 1750,
            auto_calls: true,
        })
        .collect()
}

/// Starts the demo tower's lift bus (9600 baud, paced) with its link in `ports`.
pub fn spawn_demo_lifts(ports: &Path, seed: u64) -> anyhow::Result<LiftBus> {
    let mut options = BusOptions::new(seed)?;
    options.script = crate::lift::script::parse(DEMO_LIFT_SCRIPT)
        .map_err(|e| anyhow::anyhow!("built-in lift script: {e}"))?;
    Ok(LiftBus::spawn(
        &ports.join("ttyRS485-0"),
        demo_lifts(),
        options,
    )?)
}

/// How often the demo's agent sends its batch of windows (the compact path): short, so the
/// feed stays lively (a production gateway batches a minute, `[mqtt] batch = "60s"`).
pub const DEMO_BATCH: Duration = Duration::from_secs(10);

/// The most bytes the embedded broker takes in one publish: well above a full batch
/// ([`towerlink_agent::uplink::publisher::MAX_BATCH_BYTES`] of JSON before compression, so
/// a replayed backlog's full batches pass too).
pub const DEMO_MAX_PAYLOAD: usize = 1 << 20;

/// Every demo panel's tilt alarm, with a capture of the raw waveform around it.
pub const DEMO_CHANNELS: &str = "[node.channels.tilt_x]\n\
    alarm = { minor = 0.2, major = 0.4, critical = 1.0, hysteresis = 0.02 }\n\
    capture = { before = \"5s\", after = \"10s\", max = \"60s\" }\n";

/// What the demo's feed lines mean (printed before the feed).
pub const LEGEND: &str =
    "towerlink demo: legend: each line is one MQTT message as the platform gets it: \
time (UTC), kind, device, #N = the message's seq (the gateway's queue numbers every data, \
event, capture and reply message 1, 2, 3, ... and never reuses one: a gap is a lost message), \
then its content. A data line's time is the end of its window (mean over the window, n samples, \
sd); an EVENT's time is when it happened; a CAPTURE line is part of the raw waveform around an \
alarm (its trigger's #N names the alarm event).";

/// Options of a demo run.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The scenario to run.
    pub scenario: Scenario,
    /// Stop after this long (else at Ctrl-C).
    pub duration: Option<Duration>,
    /// Where ports, the store and the config go (a temporary directory if `None`).
    pub dir: Option<PathBuf>,
    /// Telemetry window of every node.
    pub window: Duration,
    /// Each window alone as JSON on `data/{dev}` (else the compact batches, every
    /// [`DEMO_BATCH`]).
    pub json_windows: bool,
}

/// The agent configuration for a simulated tower.
pub fn agent_config(
    broker_url: &str,
    store: &Path,
    nodes: &[VirtualNode],
    window: Duration,
    lifts: Option<&LiftBus>,
    batch: Duration,
) -> anyhow::Result<Config> {
    let batch = humantime::format_duration(batch);
    let mut text = format!(
        "[gateway]\nid = \"{DEMO_GATEWAY}\"\n\n[mqtt]\nbatch = \"{batch}\"\nurl = \"{broker_url}\"\n# The embedded demo broker (rumqttd, v4 listener) speaks MQTT 3.1.1 only.\nprotocol = \"3.1.1\"\n\n[store]\npath = \"{}\"\n\n[health]\ninterval = \"10s\"\n",
        store.display()
    );
    for node in nodes {
        text.push_str(&format!(
            "\n[[node]]\nid = \"{}\"\nport = \"{}\"\nwindow = \"{}\"\nnode_id = {}\n{DEMO_CHANNELS}",
            node.dev(),
            node.path().display(),
            humantime::format_duration(window),
            node.node_id()
        ));
    }
    if let Some(bus) = lifts {
        text.push_str(&crate::lift::agent_lift_sections(bus, 9600, ""));
    }
    Ok(Config::parse(&text, "demo")?)
}

/// Runs the demo until Ctrl-C or the duration.
pub async fn run(options: DemoOptions) -> anyhow::Result<()> {
    let temp;
    let dir = match &options.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_owned()
        }
    };
    let broker = EmbeddedBroker::start().context("starting the embedded broker")?;
    println!(
        "towerlink demo: broker {} (embedded), work dir {}",
        broker.url(),
        dir.display()
    );
    let nodes = spawn_tower(&options.scenario, &dir.join("ports"), false)
        .context("starting the simulated nodes")?;
    for n in &nodes {
        println!(
            "towerlink demo: node {:<12} node id {:<5} on {}",
            n.dev(),
            n.node_id(),
            n.path().display()
        );
    }
    let lifts = spawn_demo_lifts(&dir.join("ports"), options.scenario.seed)
        .context("starting the simulated lifts")?;
    for l in lifts.lifts() {
        println!(
            "towerlink demo: lift {:<12} unit {:<5} on {}",
            l.id,
            l.unit,
            lifts.path().display()
        );
    }
    let config = agent_config(
        &broker.url(),
        &dir.join("store"),
        &nodes,
        options.window,
        Some(&lifts),
        if options.json_windows {
            Duration::ZERO
        } else {
            DEMO_BATCH
        },
    )?;
    if options.json_windows {
        println!("towerlink demo: each window goes alone as JSON on data/{{dev}} (--json-windows)");
    } else {
        println!(
            "towerlink demo: windows go in compact batches (zstd, on batch) every {}; the feed prints each window in them (--json-windows: each alone)",
            humantime::format_duration(DEMO_BATCH)
        );
    }

    // The platform's view: print every message of the gateway.
    let mut opts = MqttOptions::new(
        "demo-viewer",
        broker.addr().ip().to_string(),
        broker.addr().port(),
    );
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    client
        .subscribe(format!("towerlink/v1/{DEMO_GATEWAY}/#"), QoS::AtLeastOnce)
        .await?;
    // What arrived, for the summary at the stop: batches, windows in them, windows alone.
    let tally = std::sync::Arc::new(std::sync::Mutex::new((0u64, 0u64, 0u64)));
    let seen = tally.clone();
    let viewer = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let lines = towerlink_agent::feed_view::render_lines(&p.topic, &p.payload);
                    if let Ok(mut t) = seen.lock() {
                        if p.topic.ends_with("/batch") {
                            t.0 += 1;
                            t.1 += lines.iter().filter(|l| l.contains(" data ")).count() as u64;
                        } else if p.topic.contains("/data/")
                            && lines.iter().any(|l| l.contains(" data "))
                        {
                            t.2 += 1;
                        }
                    }
                    for line in lines {
                        println!("{line}");
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    });

    let duration = options.duration;
    let stop = async move {
        match duration {
            Some(d) => {
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = towerlink_agent::app::termination_signal() => {}
                }
            }
            None => towerlink_agent::app::termination_signal().await,
        }
    };
    println!("{LEGEND}");
    println!("towerlink demo: agent starting; Ctrl-C to stop");
    towerlink_agent::app::run(config, stop).await?;
    // Every window the agent flushed ended by now (none is stamped in the future).
    let stopped = towerlink_agent::feed::rfc3339(towerlink_agent::feed::now_millis());
    // Let the viewer print the final offline state.
    tokio::time::sleep(Duration::from_millis(300)).await;
    viewer.abort();
    for n in nodes {
        n.stop();
    }
    lifts.stop();
    println!(
        "towerlink demo: agent stopped at {}",
        stopped
            .split_once('T')
            .map(|(_, t)| t.trim_end_matches('Z'))
            .unwrap_or(&stopped)
    );
    let (batches, batched, alone) = tally.lock().map(|t| *t).unwrap_or_default();
    println!(
        "towerlink demo: received {batches} batches carrying {batched} windows, and {alone} windows alone"
    );
    println!("towerlink demo: stopped");
    Ok(())
}
