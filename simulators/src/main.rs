//! `towerlink-sim`: simulated towers for towerlink.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use towerlink_sim::demo::{self, DemoOptions};
use towerlink_sim::mcu::{EmulatedMcu, McuOptions};
use towerlink_sim::virtual_node::spawn_tower;
use towerlink_sim_chips::scenario::Scenario;

/// Simulated towers: virtual panel nodes on pseudo-terminals, and a one-command demo.
#[derive(Debug, Parser)]
#[command(name = "towerlink-sim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Broker + simulated tower + agent, printing the live feed.
    Demo {
        /// Scenario file (default: the built-in tower of simulators/scenarios/tower.toml).
        #[arg(long)]
        scenario: Option<PathBuf>,
        /// Stop after this long, e.g. "60s" (default: run until Ctrl-C).
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Telemetry window of the nodes.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        window: Duration,
        /// Work directory (ports, store); a temporary one by default.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Send each telemetry window alone as JSON on data/{dev} (default: the compact
        /// path, windows batched and compressed on batch; the printed feed reads the same).
        #[arg(long)]
        json_windows: bool,
    },
    /// Run N simulated gateways in this process (the real agent pipeline, queue and uplink
    /// each, fed by simulated nodes and lifts in-process), then print what they offered and
    /// what they cost (one JSON object with --json).
    Fleet {
        /// Number of gateways.
        #[arg(long)]
        gateways: usize,
        /// Broker URL, e.g. mqtt://127.0.0.1:1883.
        #[arg(long)]
        broker: String,
        /// Topic root.
        #[arg(long, default_value = "towerlink/v1")]
        root: String,
        /// Panel nodes per gateway.
        #[arg(long, default_value_t = 40)]
        nodes: usize,
        /// Lifts per gateway.
        #[arg(long, default_value_t = 8)]
        lifts: usize,
        /// Telemetry window.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        window: Duration,
        /// The agents' `[mqtt] batch`: telemetry windows sent together every this long
        /// ("0s": each window alone).
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        batch: Duration,
        /// How long to run.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Gateway ids are PREFIX-00000, PREFIX-00001, ...
        #[arg(long, default_value = "fleet")]
        prefix: String,
        /// Seed of the fleet's models.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
        /// Start every gateway's samples at this wall time, Unix ms (plus the gateway's
        /// phase; the fleet waits for it): two runs with the same seed and origin make the
        /// same windows.
        #[arg(long, value_name = "UNIX_MS")]
        origin: Option<i64>,
    },
    /// Run simulated lift controllers on a Modbus RTU bus (a pseudo-terminal) and print the
    /// bus path and the lifts' unit ids.
    Lifts {
        /// Directory for the bus link (`ttyRS485-0`).
        #[arg(long, default_value = "/tmp/towerlink-sim")]
        dir: PathBuf,
        /// Fault script (TOML); default: the demo's.
        #[arg(long)]
        script: Option<PathBuf>,
        /// Baud rate the answers are paced at.
        #[arg(long, default_value_t = 9600)]
        baud: u32,
        /// Seed of the lift models.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Stop after this long (default: until Ctrl-C).
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
    },
    /// Emulate a cellular link between two network namespaces (TUN devices `tl<K>a` with
    /// 10.77.<K>.1 in A and `tl<K>b` with 10.77.<K>.2 in B); the replacement for `tc netem`.
    /// Needs root, /dev/net/tun and `ip`; create the namespaces first (`ip netns add`).
    Link {
        /// Namespace A.
        #[arg(long)]
        ns_a: String,
        /// Namespace B.
        #[arg(long)]
        ns_b: String,
        /// Third octet of the addresses (10.77.<K>.1/.2).
        #[arg(long, default_value_t = 77)]
        k: u8,
        /// One-way delay.
        #[arg(long, default_value = "400ms", value_parser = humantime::parse_duration)]
        delay: Duration,
        /// Share of packets lost at random, each way (0.0..=1.0).
        #[arg(long, default_value_t = 0.05)]
        loss: f64,
        /// Line rate in bit/s (0: no cap).
        #[arg(long, default_value_t = 64_000)]
        rate: u64,
        /// Packets held per direction at most (drop-tail).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Seed of the loss RNG.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The link is partitioned (drops everything) while this file exists.
        #[arg(long)]
        partition_file: Option<PathBuf>,
        /// Stop after this long (default: until Ctrl-C).
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
    },
    /// Run a scenario's panel nodes on pseudo-terminals and print their paths.
    Nodes {
        /// Scenario file.
        #[arg(long)]
        scenario: Option<PathBuf>,
        /// Directory for the stable port links (one per node, named after the device).
        #[arg(long, default_value = "/tmp/towerlink-sim")]
        dir: PathBuf,
        /// Stop after this long (default: until Ctrl-C).
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
    },
    /// Run the firmware on an emulated MCU (qemu-system-arm -M mps2-an386) with its UART on a
    /// pseudo-terminal, and print the node's port path.
    Mcu {
        /// The board image (default: $TOWERLINK_MCU_IMAGE, else
        /// firmware/boards/mps2-an386/target/thumbv7em-none-eabihf/release/towerlink-node-mps2-an386;
        /// build it with `cargo build --release` in firmware/boards/mps2-an386).
        #[arg(long)]
        image: Option<PathBuf>,
        /// Device id of the node (its port link is DIR/DEV).
        #[arg(long, default_value = "panel-mcu")]
        dev: String,
        /// Node id the firmware announces.
        #[arg(long, default_value_t = 101)]
        node_id: u32,
        /// Directory for the stable port link.
        #[arg(long, default_value = "/tmp/towerlink-sim")]
        dir: PathBuf,
        /// QEMU's -icount setting, e.g. "shift=auto,sleep=on"; "off" (the default, measured
        /// to keep the node's clock closest to the host's under load) runs without it.
        #[arg(long, default_value = towerlink_sim::mcu::DEFAULT_ICOUNT)]
        icount: String,
        /// Stop after this long (default: until Ctrl-C).
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Instead of running: print both images' flash and RAM, then run the emulated node at
        /// 4 x 50 Hz and print its link's bytes/s, jitter, clock drift and stack high-water mark.
        #[arg(long)]
        footprint: bool,
        /// With --footprint: how long to measure the link.
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        measure: Duration,
        /// With --footprint: busy threads loading the host meanwhile (clock stability under load).
        #[arg(long, default_value_t = 0)]
        load: usize,
    },
}

/// Resolves after `duration`, or at SIGINT/SIGTERM, whichever comes first.
async fn run_until(duration: Option<Duration>) {
    match duration {
        Some(d) => tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = towerlink_agent::app::termination_signal() => {}
        },
        None => towerlink_agent::app::termination_signal().await,
    }
}

fn load_scenario(path: Option<&PathBuf>) -> anyhow::Result<Scenario> {
    match path {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            Scenario::from_toml_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
        }
        None => Scenario::from_toml_str(towerlink_sim::DEFAULT_SCENARIO)
            .map_err(|e| anyhow::anyhow!("built-in scenario: {e}")),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Demo {
            scenario,
            duration,
            window,
            dir,
            json_windows,
        } => {
            let scenario = load_scenario(scenario.as_ref())?;
            runtime.block_on(demo::run(DemoOptions {
                scenario,
                duration,
                dir,
                window,
                json_windows,
            }))
        }
        Command::Fleet {
            gateways,
            broker,
            root,
            nodes,
            lifts,
            window,
            batch,
            duration,
            prefix,
            seed,
            json,
            origin,
        } => {
            let report = runtime.block_on(towerlink_sim::fleet::run(
                towerlink_sim::fleet::FleetOptions {
                    gateways,
                    broker,
                    root,
                    nodes,
                    lifts,
                    window,
                    batch,
                    duration,
                    prefix,
                    seed,
                    origin,
                },
                towerlink_agent::app::termination_signal(),
            ))?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "fleet: {} gateways for {:.1} s ({} connected at the end)\n\
                     offered: {:.2} msgs/s and {:.0} bytes/s per gateway; {:.0} msgs/s and {:.0} bytes/s in all\n\
                     acknowledged by the broker by the end (with the windows flushed at the stop): {}\n\
                     cost: {:.4} CPU s/s and {:.0} KiB RSS per gateway (peak RSS {} KiB)",
                    report.gateways,
                    report.seconds,
                    report.connected,
                    report.msgs_per_s_per_gateway,
                    report.bytes_per_s_per_gateway,
                    report.messages as f64 / report.seconds,
                    report.bytes as f64 / report.seconds,
                    report.acknowledged,
                    report.cpu_s_per_s_per_gateway,
                    report.rss_kib_per_gateway,
                    report.rss_peak_kib,
                );
            }
            Ok(())
        }
        Command::Lifts {
            dir,
            script,
            baud,
            seed,
            duration,
        } => {
            let text = match &script {
                Some(p) => std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?,
                None => demo::DEMO_LIFT_SCRIPT.to_owned(),
            };
            let mut options = towerlink_sim::lift::BusOptions::new(seed)?;
            options.baud = baud;
            options.script = towerlink_sim::lift::script::parse(&text)
                .map_err(|e| anyhow::anyhow!("lift script: {e}"))?;
            let bus = towerlink_sim::lift::LiftBus::spawn(
                &dir.join("ttyRS485-0"),
                demo::demo_lifts(),
                options,
            )?;
            println!("bus {} baud {baud}", bus.path().display());
            for l in bus.lifts() {
                println!(
                    "lift {} unit {} floors {}..={} rated {} mm/s",
                    l.id, l.unit, l.bottom_floor, l.top_floor, l.rated_speed_mm_s
                );
            }
            runtime.block_on(run_until(duration));
            bus.stop();
            Ok(())
        }
        Command::Link {
            ns_a,
            ns_b,
            k,
            delay,
            loss,
            rate,
            limit,
            seed,
            partition_file,
            duration,
        } => {
            let params = towerlink_sim::link::LinkParams {
                delay,
                loss,
                rate_bps: rate,
                limit,
                seed,
            };
            let link = towerlink_sim::link::Link::spawn(&ns_a, &ns_b, k, params)?;
            println!("link {ns_a} {} <-> {ns_b} {}", link.addr_a(), link.addr_b());
            let link = std::sync::Arc::new(link);
            if let Some(file) = partition_file {
                let l = link.clone();
                runtime.spawn(async move {
                    let mut on = false;
                    loop {
                        let now = file.exists();
                        if now != on {
                            on = now;
                            l.set_partition(on);
                            eprintln!("link: partition {}", if on { "on" } else { "off" });
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                });
            }
            runtime.block_on(run_until(duration));
            let (ab, ba) = link.counters();
            println!("a->b {ab:?}\nb->a {ba:?}");
            Ok(())
        }
        Command::Nodes {
            scenario,
            dir,
            duration,
        } => {
            let scenario = load_scenario(scenario.as_ref())?;
            let nodes = spawn_tower(&scenario, &dir, false)?;
            for n in &nodes {
                println!(
                    "node {} node id {} on {}",
                    n.dev(),
                    n.node_id(),
                    n.path().display()
                );
            }
            runtime.block_on(run_until(duration));
            for n in nodes {
                n.stop();
            }
            Ok(())
        }
        Command::Mcu {
            image,
            dev,
            node_id,
            dir,
            icount,
            duration,
            footprint,
            measure,
            load,
        } => run_mcu(
            &runtime, image, dev, node_id, dir, icount, duration, footprint, measure, load,
        ),
    }
}

/// `towerlink-sim mcu`.
#[allow(clippy::too_many_arguments)]
fn run_mcu(
    runtime: &tokio::runtime::Runtime,
    image: Option<PathBuf>,
    dev: String,
    node_id: u32,
    dir: PathBuf,
    icount: String,
    duration: Option<Duration>,
    footprint: bool,
    measure: Duration,
    load: usize,
) -> anyhow::Result<()> {
    let mut options = McuOptions::new(&dev, node_id, &dir.join(&dev));
    if let Some(image) = image {
        options.image = image;
    }
    options.icount = (icount != "off").then_some(icount);
    if footprint {
        return print_footprint(&options, measure, load);
    }
    let mcu = EmulatedMcu::start(&options)?;
    println!(
        "node {} node id {} on {}",
        mcu.dev(),
        mcu.node_id(),
        mcu.path().display()
    );
    println!("monitor {}", mcu.monitor_path().display());
    runtime.block_on(run_until(duration));
    mcu.stop();
    Ok(())
}

fn print_footprint(options: &McuOptions, measure: Duration, load: usize) -> anyhow::Result<()> {
    use towerlink_sim::footprint::{image_footprint, measure_link};
    let real = towerlink_sim::mcu::board_dir()
        .join("../stm32f411-panel")
        .join(towerlink_sim::mcu::REAL_IMAGE_IN_BOARD);
    println!("image                 flash (.text+.rodata+.data)   static RAM (.data+.bss)");
    for (name, path) in [
        ("mps2-an386 (emulated)", &options.image),
        ("stm32f411-panel", &real),
    ] {
        match image_footprint(path) {
            Ok(f) => println!(
                "{name:<21} {:>7} B (code {} + data {})   {:>7} B (data {} + bss {})",
                f.flash(),
                f.code,
                f.data,
                f.ram(),
                f.data,
                f.bss
            ),
            Err(e) => println!("{name:<21} not built ({}): {e}", path.display()),
        }
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loaders: Vec<_> = (0..load)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            })
        })
        .collect();
    let figures = measure_link(options, measure);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in loaders {
        let _ = l.join();
    }
    let f = figures?;
    let capacity = 115_200.0 / 10.0;
    println!(
        "emulated node, 4 channels x 50 Hz, icount {}, {} busy host thread(s), {:.1} s:",
        options.icount.as_deref().unwrap_or("off"),
        load,
        f.seconds
    );
    println!(
        "  UART {:.0} B/s of {capacity:.0} B/s at 115200 baud 8N1 ({:.1} %), {:.1} samples/s, {} bad frame(s)",
        f.bytes_per_s,
        100.0 * f.bytes_per_s / capacity,
        f.samples_per_s,
        f.bad_frames
    );
    println!(
        "  sampling jitter seen on the line: median {:.2} ms, p99 {:.2} ms, max {:.2} ms; node clock drift {:+.0} ppm",
        f.jitter_ms.0, f.jitter_ms.1, f.jitter_ms.2, f.drift_ppm
    );
    println!("  acks OK {} of 5 (SetRate x3, Identify, Zero)", f.acks_ok);
    match f.stack {
        Some((used, size)) => println!("  stack high-water (painted): {used} B of {size} B"),
        None => println!("  stack high-water: no console report"),
    }
    // The run fails on what must hold on any host: every command acknowledged, no corrupt
    // frame, the link within the line's capacity, a stack report.
    anyhow::ensure!(f.acks_ok == 5, "{} of 5 commands acknowledged", f.acks_ok);
    anyhow::ensure!(f.bad_frames == 0, "{} corrupt frame(s)", f.bad_frames);
    anyhow::ensure!(
        f.bytes_per_s < capacity,
        "the link needs more than 115200 baud"
    );
    anyhow::ensure!(
        f.stack.is_some(),
        "the board reported no stack high-water mark"
    );
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TOWERLINK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,rumqttd=off")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("towerlink-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}
