//! `towerlink`: the gateway agent's command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use towerlink_agent::cli;
use towerlink_agent::config::Config;

/// towerlink: reads a tower's sensor nodes, filters locally, publishes to the city platform over MQTT.
#[derive(Debug, Parser)]
#[command(name = "towerlink", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent until SIGINT or SIGTERM.
    Run {
        /// The configuration file.
        #[arg(short, long, default_value = "/etc/towerlink/towerlink.toml")]
        config: PathBuf,
    },
    /// Check the configuration, the nodes, the store and the broker; one line per item,
    /// exit code non-zero on any failure.
    Check {
        /// The configuration file.
        #[arg(short, long, default_value = "/etc/towerlink/towerlink.toml")]
        config: PathBuf,
    },
    /// Show live readings and events (from the ports, or from the broker).
    Tail {
        /// The configuration file.
        #[arg(short, long, default_value = "/etc/towerlink/towerlink.toml")]
        config: PathBuf,
        /// Read what the running agent publishes instead of opening the ports.
        #[arg(long)]
        from_broker: bool,
        /// Stop after this long (e.g. "30s").
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<std::time::Duration>,
        /// Stop after this many updates.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Tare channel CH of device DEV (through the running agent, or --direct on the port).
    Zero {
        /// Device id.
        dev: String,
        /// Channel feed name (e.g. tilt_x).
        ch: String,
        /// The configuration file.
        #[arg(short, long, default_value = "/etc/towerlink/towerlink.toml")]
        config: PathBuf,
        /// Send the wire protocol's Zero on the node's port (the agent must be stopped).
        #[arg(long)]
        direct: bool,
    },
    /// List what is attached: sensor nodes on serial ports, Modbus units, I2C buses.
    Scan {
        /// Ports to probe (default: /dev/serial/by-id/*, /dev/ttyUSB*, /dev/ttyACM*).
        ports: Vec<PathBuf>,
        /// Baud rate of sensor nodes.
        #[arg(long, default_value_t = 115_200)]
        baud: u32,
        /// How long to listen to each port for a node.
        #[arg(long, default_value = "4s", value_parser = humantime::parse_duration)]
        listen: std::time::Duration,
        /// Also probe Modbus lift controllers, at this baud rate (reads only, function 0x04).
        #[arg(long)]
        modbus: Option<u32>,
        /// Unit ids to probe with --modbus, e.g. 1-16.
        #[arg(long, default_value = "1-16", value_parser = cli::scan::parse_units)]
        units: std::ops::RangeInclusive<u8>,
        /// I2C buses to probe (repeatable; default every /dev/i2c-*; `sim` = simulated chips).
        #[arg(long)]
        i2c: Vec<String>,
    },
    /// Audit the feed of every gateway under a topic root: schema checks, seq gaps,
    /// evictions, duplicates, open events, state, latency (one table, or --json at the end).
    Audit {
        /// The broker: mqtt://host:port or mqtts://host:port.
        #[arg(long)]
        broker: String,
        /// The topic root.
        #[arg(long, default_value = "towerlink/v1")]
        root: String,
        /// How long to listen (e.g. "30s").
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
        /// After --duration, how long to wait for seq still in flight below the highest seen.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        grace: std::time::Duration,
        /// Print one JSON object at the end instead of the table.
        #[arg(long)]
        json: bool,
        /// Subscribe as MQTT shared-subscription group GROUP ($share/GROUP/...): several
        /// auditors split the messages; completeness is the union of their `seen` ranges.
        #[arg(long, value_name = "GROUP")]
        share: Option<String>,
        /// Exit code 1 when any gateway has a gap or an invalid message.
        #[arg(long)]
        strict: bool,
        #[command(flatten)]
        session: cli::audit::SessionArgs,
    },
    /// The gateway's client certificate: `cert request` makes the next key and its CSR.
    Cert {
        #[command(subcommand)]
        action: CertAction,
    },
    /// Inspect the durable queue offline (records by class, seq range, acked cursor, damage).
    /// Safe while the agent runs: it only reads.
    Store {
        /// The configuration file naming `[store] path`.
        #[arg(short, long, default_value = "/etc/towerlink/towerlink.toml")]
        config: PathBuf,
        #[command(subcommand)]
        action: Option<StoreAction>,
    },
}

#[derive(Debug, Subcommand)]
enum CertAction {
    /// Make a new key `<key_file>.new` (mode 600; it never leaves the gateway) and a CSR for
    /// the platform's CA (`<cert_file>.csr`, also printed); the certificate comes back with
    /// `cert_install` and the agent renews by itself.
    Request {
        /// The configuration file (its [mqtt] cert_file and key_file).
        #[arg(short, long, default_value = "/etc/towerlink/towerlink.toml")]
        config: PathBuf,
        /// The CSR's common name (default: the gateway id).
        #[arg(long)]
        cn: Option<String>,
        /// Where to write the CSR (default `<cert_file>.csr`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Replace a pending key (a certificate issued for its CSR will no longer fit).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum StoreAction {
    /// Inspect the store directory PATH.
    Inspect {
        /// The store directory.
        path: PathBuf,
        /// Also list every unacknowledged record (seq, class, topic).
        #[arg(long)]
        list: bool,
    },
}

fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOWERLINK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // The `logs` command answers from the ring (what passes the filter, as on stderr).
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .finish()
        .with(towerlink_agent::log_ring::layer())
        .init();
}

/// Loads the configuration (exit code 2 with the reason if it does not) and runs `f`.
fn with_config(path: &std::path::Path, f: impl FnOnce(Config) -> ExitCode) -> ExitCode {
    match Config::load(path) {
        Ok(c) => f(c),
        Err(e) => {
            eprintln!("towerlink: {e}");
            eprintln!("towerlink: run `towerlink check` for details and fixes");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Check { config } => cli::block_on(async move {
            match cli::check::run(&config).await {
                0 => ExitCode::SUCCESS,
                _ => ExitCode::from(1),
            }
        }),
        Command::Tail {
            config,
            from_broker,
            duration,
            count,
        } => with_config(&config, |c| {
            let limits = cli::tail::Limits { duration, count };
            cli::block_on(async move {
                ExitCode::from(if from_broker {
                    cli::tail::from_broker(&c, limits).await
                } else {
                    cli::tail::from_ports(&c, limits).await
                })
            })
        }),
        Command::Zero {
            dev,
            ch,
            config,
            direct,
        } => with_config(&config, |c| {
            cli::block_on(async move {
                ExitCode::from(if direct {
                    cli::zero::direct(&c, &dev, &ch).await
                } else {
                    cli::zero::via_agent(&c, &dev, &ch).await
                })
            })
        }),
        Command::Scan {
            ports,
            baud,
            listen,
            modbus,
            units,
            i2c,
        } => cli::block_on(cli::scan::run(cli::scan::ScanOptions {
            ports,
            baud,
            listen,
            modbus_baud: modbus,
            units,
            i2c,
        })),
        Command::Audit {
            broker,
            root,
            duration,
            grace,
            json,
            share,
            strict,
            session,
        } => cli::block_on(async move {
            ExitCode::from(
                cli::audit::run(cli::audit::AuditOptions {
                    broker,
                    root,
                    duration,
                    grace,
                    json,
                    share,
                    strict,
                    session,
                })
                .await,
            )
        }),
        Command::Cert {
            action:
                CertAction::Request {
                    config,
                    cn,
                    out,
                    force,
                },
        } => with_config(&config, |c| {
            ExitCode::from(cli::cert::request(
                &c,
                &cli::cert::RequestOptions { cn, force, out },
            ))
        }),
        Command::Store { config, action } => {
            let (dir, list) = match (action, config) {
                (Some(StoreAction::Inspect { path, list }), _) => (path, list),
                (None, config) => match Config::load(&config) {
                    Ok(c) => (c.store.path, false),
                    Err(e) => {
                        eprintln!("towerlink store: {e} (or inspect a store directory: `towerlink store inspect PATH`)");
                        return ExitCode::from(2);
                    }
                },
            };
            match towerlink_agent::queue::store::Inspection::of(&dir) {
                Ok(report) => {
                    println!("store:           {}", dir.display());
                    println!("{report}");
                    if list {
                        for (seq, l) in &report.loaded.live {
                            println!("{seq} {:?} {}", l.record.class, l.record.topic);
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("towerlink: cannot read the store at {}: {e}", dir.display());
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run { config } => {
            let (config, file) = match towerlink_agent::app::ConfigFile::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("towerlink: {e}");
                    return ExitCode::from(2);
                }
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("towerlink: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(towerlink_agent::app::run_file(
                config,
                file,
                towerlink_agent::app::termination_signal(),
            )) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("towerlink: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
