//! `towerlink-sim fleet`: N simulated gateways in one process, for sizing a platform broker.
//!
//! Each gateway is the real agent ([`towerlink_agent::app::run_fed`]: pipeline, queue with its
//! store, uplink, health, commands) with its own MQTT client id (`{prefix}-{i:05}`) and its own
//! store in a tmpfs directory (`/dev/shm/towerlink-fleet-<pid>/<gw>`, removed at exit). Its
//! sources are replaced by one in-process task that feeds the pipeline what a nominal tower's
//! devices would: per panel node a Hello (strain 50 Hz, tilt X/Y 10 Hz, temperature 1 Hz), then
//! every second the samples of the last second from the panel physics model
//! ([`towerlink_sim_chips::panel::PanelModel`]) and an `Alive`; per lift a reading every 250 ms
//! from the lift model ([`crate::lift::model::LiftModel`], making its own calls). Everything is
//! seeded per gateway, so a run is reproducible.
//!
//! At the end it prints what the fleet offered (publishes and topic+payload bytes per second,
//! per gateway and in total, from the uplinks' own counters) and the process's CPU time and
//! RSS per gateway (`/proc/self/stat`, `/proc/self/status`).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::mpsc;
use towerlink_agent::app::{Feed, Feeder};
use towerlink_agent::config::Config;
use towerlink_agent::feed::now_millis;
use towerlink_agent::sources::{DeviceKey, SourceEvent};
use towerlink_agent::uplink::UplinkStats;
use towerlink_firmware::protocol::message::{ChannelInfo, Quantity};
use towerlink_sim_chips::panel::{PanelModel, PanelParams};

use crate::lift::model::{LiftModel, LiftSpec};

/// What to run.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Number of gateways.
    pub gateways: usize,
    /// Broker URL (as the agent's `[mqtt] url`).
    pub broker: String,
    /// Topic root.
    pub root: String,
    /// Panel nodes per gateway.
    pub nodes: usize,
    /// Lifts per gateway.
    pub lifts: usize,
    /// Telemetry window.
    pub window: Duration,
    /// The agent's `[mqtt] batch` (windows sent together; zero: each window alone).
    pub batch: Duration,
    /// How long the fleet runs.
    pub duration: Duration,
    /// Gateway ids are `{prefix}-{i:05}`.
    pub prefix: String,
    /// Seed of the whole fleet (each gateway derives its own).
    pub seed: u64,
    /// Start every gateway's sample clock at this wall time (Unix ms, plus the gateway's
    /// phase), so two runs with the same seed and origin put the same samples in the same
    /// windows (`--origin`); `None`: when the gateway starts.
    pub origin: Option<i64>,
}

/// What a run offered and cost.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FleetReport {
    /// Gateways run.
    pub gateways: usize,
    /// Seconds measured (start of the first gateway to the stop).
    pub seconds: f64,
    /// Publishes handed to the clients (all gateways).
    pub messages: u64,
    /// Their topic+payload bytes.
    pub bytes: u64,
    /// Publishes the broker acknowledged (queued messages only).
    pub acknowledged: u64,
    /// Gateways connected at the stop.
    pub connected: usize,
    /// Messages/s per gateway.
    pub msgs_per_s_per_gateway: f64,
    /// Bytes/s per gateway.
    pub bytes_per_s_per_gateway: f64,
    /// Process CPU seconds (user+system) per gateway per second of run.
    pub cpu_s_per_s_per_gateway: f64,
    /// Peak RSS of the process, KiB, divided by the gateways.
    pub rss_kib_per_gateway: f64,
    /// Peak RSS of the process, KiB.
    pub rss_peak_kib: u64,
    /// The stores' directory (removed by now).
    pub store_dir: PathBuf,
}

/// The channel layout of a nominal panel node (the firmware's default panel).
fn panel_channels() -> Vec<ChannelInfo> {
    [
        (0, Quantity::Strain, 50),
        (1, Quantity::TiltX, 10),
        (2, Quantity::TiltY, 10),
        (3, Quantity::Temperature, 1),
    ]
    .into_iter()
    .map(|(id, quantity, rate_hz)| ChannelInfo {
        id,
        quantity,
        rate_hz,
    })
    .collect()
}

/// The configuration of gateway `gw`: its nodes and lifts declared (ports never opened).
pub fn gateway_config(options: &FleetOptions, gw: &str, store: &Path) -> anyhow::Result<Config> {
    let window = humantime::format_duration(options.window).to_string();
    let batch = format!("{}ms", options.batch.as_millis());
    let mut text = format!(
        "[gateway]\nid = \"{gw}\"\n\n[mqtt]\nurl = \"{}\"\ntopic_root = \"{}\"\nbatch = \"{batch}\"\n\n\
         [store]\npath = \"{}\"\nfsync = \"1s\"\nmax_bytes = \"16MiB\"\n\n\
         [health]\ninterval = \"60s\"\n",
        options.broker,
        options.root,
        store.display()
    );
    for n in 0..options.nodes {
        text.push_str(&format!(
            "\n[[node]]\nid = \"panel-{n:03}\"\nport = \"/dev/fleet/{gw}/node-{n}\"\nwindow = \"{window}\"\n"
        ));
    }
    for l in 0..options.lifts {
        text.push_str(&format!(
            "\n[[lift]]\nid = \"lift-{}\"\nport = \"/dev/fleet/{gw}/rs485\"\nunit = {}\nprofile = \"generic\"\n\
             top_floor = 32\nbottom_floor = -2\nrated_speed_mm_s = 1750\n",
            l + 1,
            l + 1
        ));
    }
    Config::parse(&text, gw).map_err(|e| anyhow::anyhow!("fleet gateway config: {e}"))
}

/// The seed of gateway `i`'s device `k`.
fn device_seed(fleet: u64, i: usize, k: usize) -> u64 {
    fleet
        ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (k as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
}

/// The feeder of gateway `i`: one task producing its devices' events in real time.
fn feeder(options: &FleetOptions, i: usize) -> Feeder {
    let nodes = options.nodes;
    let lifts = options.lifts;
    let seed = options.seed;
    let origin = options.origin;
    Box::new(move |feed: Feed| {
        let task = tokio::spawn(feed_gateway(feed, i, nodes, lifts, seed, origin));
        vec![task]
    })
}

async fn feed_gateway(
    feed: Feed,
    i: usize,
    nodes: usize,
    lifts: usize,
    seed: u64,
    origin: Option<i64>,
) {
    let Feed {
        events,
        mut shutdown,
        node_stats,
        lift_stats,
        ..
    } = feed;
    let panels: Vec<PanelModel> = (0..nodes)
        .map(|k| {
            let s = device_seed(seed, i, k);
            let params = PanelParams {
                base_strain_ue: 90.0 + (s % 60) as f64,
                ..PanelParams::default()
            };
            PanelModel::new(s, params, Vec::new())
        })
        .collect();
    let mut cars: Vec<LiftModel> = (0..lifts)
        .map(|l| {
            LiftModel::new(
                LiftSpec {
                    id: format!("lift-{}", l + 1),
                    unit: (l + 1) as u8,
                    bottom_floor: -2,
                    top_floor: 32,
                    rated_speed_mm_s: 1750,
                    auto_calls: true,
                },
                device_seed(seed, i, 1000 + l),
            )
        })
        .collect();
    // Spread the gateways' ticks over the second so they do not all wake at once.
    let phase_ms = device_seed(seed, i, 9999) % 1000;
    shutdown.sleep(Duration::from_millis(phase_ms)).await;
    if shutdown.is_shutdown() {
        return;
    }
    let start_wall = match origin {
        // The same samples in the same windows every run with this origin (a window starts
        // at a multiple of its width since the epoch).
        Some(origin) => {
            let now = now_millis();
            let at = origin + phase_ms as i64;
            shutdown
                .sleep(Duration::from_millis(u64::try_from(at - now).unwrap_or(0)))
                .await;
            if shutdown.is_shutdown() {
                return;
            }
            at as f64
        }
        None => now_millis() as f64,
    };
    let start = Instant::now();
    let channels = panel_channels();
    for k in 0..nodes {
        let hello = SourceEvent::Hello {
            dev: DeviceKey::Node(k),
            fw: (1, 0, 0),
            channels: channels.clone(),
        };
        if events.send(hello).await.is_err() {
            return;
        }
    }
    let mut second: u64 = 0;
    let mut quarter: u64 = 0;
    loop {
        // Next lift poll (every 250 ms); every fourth one also delivers the panels' second.
        quarter += 1;
        let due = start + Duration::from_millis(quarter * 250);
        let wait = due.saturating_duration_since(Instant::now());
        shutdown.sleep(wait).await;
        if shutdown.is_shutdown() {
            return;
        }
        let model_ms = quarter * 250;
        let ts = now_millis();
        for (l, car) in cars.iter_mut().enumerate() {
            car.advance_to(model_ms);
            let ev = SourceEvent::LiftReading {
                lift: l,
                ts,
                reading: car.reading(),
            };
            if let Some(stats) = lift_stats.get(l) {
                stats.polls_ok.fetch_add(1, Ordering::Relaxed);
                stats.frames_ok.fetch_add(1, Ordering::Relaxed);
                stats
                    .last_frame_ms
                    .store(ts.max(0) as u64, Ordering::Relaxed);
            }
            if events.send(ev).await.is_err() {
                return;
            }
        }
        if quarter % 4 != 0 {
            continue;
        }
        for (k, panel) in panels.iter().enumerate() {
            for info in &channels {
                let rate = u64::from(info.rate_hz);
                let period_us = 1_000_000 / rate;
                let values: Vec<f32> = (0..rate)
                    .map(|n| {
                        let t_us = second * 1_000_000 + n * period_us;
                        let s = panel.sample(t_us);
                        match info.quantity {
                            Quantity::Strain => s.strain_ue,
                            Quantity::TiltX => s.tilt_x_deg,
                            Quantity::TiltY => s.tilt_y_deg,
                            _ => s.temperature_c,
                        }
                    })
                    .collect();
                // Nodes send at most 32 values a frame.
                for (c, chunk) in values.chunks(32).enumerate() {
                    let first = (c * 32) as u64;
                    let ev = SourceEvent::Samples {
                        dev: DeviceKey::Node(k),
                        channel: info.id,
                        t0: start_wall
                            + (second * 1000) as f64
                            + (first * period_us) as f64 / 1000.0,
                        period_ms: period_us as f64 / 1000.0,
                        values: chunk.to_vec(),
                    };
                    if events.send(ev).await.is_err() {
                        return;
                    }
                }
            }
            let ts = now_millis();
            if let Some(stats) = node_stats.get(k) {
                stats.frames_ok.fetch_add(5, Ordering::Relaxed);
                stats
                    .last_frame_ms
                    .store(ts.max(0) as u64, Ordering::Relaxed);
            }
            if events
                .send(SourceEvent::Alive {
                    dev: DeviceKey::Node(k),
                    ts,
                })
                .await
                .is_err()
            {
                return;
            }
        }
        second += 1;
    }
}

/// The process's CPU time so far (user + system), from `/proc/self/stat`.
pub fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    cpu_of_stat(&stat)
}

/// User + system CPU time of a `/proc/<pid>/stat` line (ticks of 1/100 s, Linux's USER_HZ).
pub fn cpu_of_stat(stat: &str) -> Option<Duration> {
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// Peak RSS of the process (`VmHWM`), KiB.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Removes the fleet's store directory when dropped (also on an error path).
struct StoreDir(PathBuf);

impl Drop for StoreDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.0.display(), error = %e, "cannot remove the fleet's stores");
            }
        }
    }
}

/// Runs the fleet for `options.duration` (or until `stop` resolves), stops every gateway
/// cleanly, removes the stores and reports.
pub async fn run(
    options: FleetOptions,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<FleetReport> {
    anyhow::ensure!(options.gateways > 0, "--gateways must be at least 1");
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = StoreDir(base.join(format!("towerlink-fleet-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).with_context(|| format!("creating {}", dir.0.display()))?;

    let cpu0 = process_cpu().unwrap_or_default();
    let started = Instant::now();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (stats_tx, mut stats_rx) = mpsc::unbounded_channel::<Arc<UplinkStats>>();
    let mut gateways = Vec::with_capacity(options.gateways);
    for i in 0..options.gateways {
        let gw = format!("{}-{i:05}", options.prefix);
        let store = dir.0.join(&gw);
        let config = gateway_config(&options, &gw, &store)?;
        let mut stop = stop_rx.clone();
        let stats_tx = stats_tx.clone();
        let inner = feeder(&options, i);
        let feeder: Feeder = Box::new(move |feed: Feed| {
            let _ = stats_tx.send(feed.uplink_stats.clone());
            inner(feed)
        });
        gateways.push(tokio::spawn(async move {
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            towerlink_agent::app::run_fed(config, stopped, feeder)
                .await
                .with_context(|| format!("gateway {gw}"))
        }));
    }
    drop(stats_tx);
    tokio::select! {
        _ = tokio::time::sleep(options.duration) => {}
        _ = stop => {}
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut uplinks = Vec::new();
    while let Ok(s) = stats_rx.try_recv() {
        uplinks.push(s);
    }
    let connected = uplinks
        .iter()
        .filter(|s| s.connected.load(Ordering::Relaxed))
        .count();
    let messages: u64 = uplinks
        .iter()
        .map(|s| s.handed.load(Ordering::Relaxed))
        .sum();
    let bytes: u64 = uplinks
        .iter()
        .map(|s| s.handed_bytes.load(Ordering::Relaxed))
        .sum();
    let cpu = process_cpu().unwrap_or_default().saturating_sub(cpu0);
    let _ = stop_tx.send(true);
    let mut failed = Vec::new();
    for g in gateways {
        match g.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed.push(format!("{e:#}")),
            Err(e) => failed.push(format!("task: {e}")),
        }
    }
    let acknowledged: u64 = uplinks
        .iter()
        .map(|s| s.published.load(Ordering::Relaxed))
        .sum();
    let store_dir = dir.0.clone();
    drop(dir);
    if let Some(first) = failed.first() {
        anyhow::bail!("{} gateways failed; first: {first}", failed.len());
    }
    let n = options.gateways as f64;
    let rss = peak_rss_kib().unwrap_or(0);
    Ok(FleetReport {
        gateways: options.gateways,
        seconds,
        messages,
        bytes,
        acknowledged,
        connected,
        msgs_per_s_per_gateway: messages as f64 / seconds / n,
        bytes_per_s_per_gateway: bytes as f64 / seconds / n,
        cpu_s_per_s_per_gateway: cpu.as_secs_f64() / seconds / n,
        rss_kib_per_gateway: rss as f64 / n,
        rss_peak_kib: rss,
        store_dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_of_a_stat_line() {
        let line = "1234 (my prog) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        assert_eq!(cpu_of_stat(line), Some(Duration::from_millis(3000)));
        assert_eq!(cpu_of_stat("garbage"), None);
    }

    #[test]
    fn a_gateway_config_declares_its_devices() {
        let options = FleetOptions {
            gateways: 1,
            broker: "mqtt://127.0.0.1:1883".into(),
            root: "towerlink/v1".into(),
            nodes: 3,
            lifts: 2,
            window: Duration::from_secs(10),
            batch: Duration::from_secs(60),
            duration: Duration::from_secs(1),
            prefix: "fleet".into(),
            seed: 1,
            origin: None,
        };
        let config = gateway_config(&options, "fleet-00000", Path::new("/tmp/x")).unwrap();
        assert_eq!(config.nodes.len(), 3);
        assert_eq!(config.lifts.len(), 2);
    }
}
