//! `towerlink-sim`: simulated towers for towerlink.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use towerlink_sim::demo::{self, DemoOptions};
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
        } => {
            let scenario = load_scenario(scenario.as_ref())?;
            runtime.block_on(demo::run(DemoOptions {
                scenario,
                duration,
                dir,
                window,
            }))
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
                println!("{} {} {}", n.dev(), n.node_id(), n.path().display());
            }
            runtime.block_on(run_until(duration));
            for n in nodes {
                n.stop();
            }
            Ok(())
        }
    }
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
