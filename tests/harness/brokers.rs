//! Private brokers of each kind a platform may run, for the feed's end-to-end test against
//! every one of them: Mosquitto ([`crate::mosquitto::MosquittoProcess`]), RabbitMQ with its
//! MQTT plugin and NATS server with MQTT over JetStream. Each is started by the test on free
//! loopback ports with its own data directory, can be stopped and started again on the same
//! port with the same data (a broker restart), and is killed when dropped. The machine's own
//! RabbitMQ, NATS and epmd are never used or touched: the RabbitMQ node has its own name,
//! ports and epmd port.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::mosquitto::{free_port, MosquittoProcess};
use crate::wait_until;

/// Which broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Eclipse Mosquitto (MQTT 5 and 3.1.1).
    Mosquitto,
    /// RabbitMQ with `rabbitmq_mqtt` (3.10: MQTT 3.1.1 only).
    RabbitMq,
    /// NATS server's MQTT support on JetStream (2.9: MQTT 3.1.1 only).
    Nats,
}

/// A running private broker of some [`Kind`].
pub enum BrokerProcess {
    /// See [`MosquittoProcess`].
    Mosquitto(MosquittoProcess),
    /// See [`RabbitProcess`].
    RabbitMq(RabbitProcess),
    /// See [`NatsProcess`].
    Nats(NatsProcess),
}

impl BrokerProcess {
    /// Starts a broker of `kind` with its files in `dir`.
    pub fn start(kind: Kind, dir: &Path) -> anyhow::Result<BrokerProcess> {
        Ok(match kind {
            Kind::Mosquitto => BrokerProcess::Mosquitto(MosquittoProcess::start(dir)?),
            Kind::RabbitMq => BrokerProcess::RabbitMq(RabbitProcess::start(dir)?),
            Kind::Nats => BrokerProcess::Nats(NatsProcess::start(dir)?),
        })
    }

    /// Its MQTT port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        match self {
            BrokerProcess::Mosquitto(m) => m.port(),
            BrokerProcess::RabbitMq(r) => r.mqtt_port,
            BrokerProcess::Nats(n) => n.mqtt_port,
        }
    }

    /// Stops it and starts it again on the same port with the same data.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        match self {
            BrokerProcess::Mosquitto(m) => m.restart(),
            BrokerProcess::RabbitMq(r) => {
                r.stop()?;
                r.run()
            }
            BrokerProcess::Nats(n) => {
                n.stop()?;
                n.run()
            }
        }
    }

    /// The broker's log so far (for failure messages).
    pub fn log(&self) -> String {
        let path = match self {
            BrokerProcess::Mosquitto(_) => return String::new(),
            BrokerProcess::RabbitMq(r) => r.dir.join("log").join(format!("{}.log", r.node)),
            BrokerProcess::Nats(n) => n.dir.join("nats.log"),
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(30).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

/// Waits (bounded) until `port` accepts connections or `child` exits.
fn wait_for_port(child: &mut Child, port: u16, timeout: Duration) -> bool {
    wait_until(timeout, || {
        TcpStream::connect(("127.0.0.1", port)).is_ok() || matches!(child.try_wait(), Ok(Some(_)))
    }) && matches!(child.try_wait(), Ok(None))
}

/// Kills `child` and reaps it.
fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits (bounded) until nothing listens on `port` any more.
fn wait_port_closed(port: u16, timeout: Duration) -> bool {
    wait_until(timeout, || TcpStream::connect(("127.0.0.1", port)).is_err())
}

/// A RabbitMQ node of our own: node `tl<pid>-<n>@localhost`, its own AMQP, distribution,
/// epmd and MQTT ports on loopback, mnesia, logs, config and enabled plugins in `dir`.
/// Debian's `rabbitmq-server` runs the node as user `rabbitmq`, so `dir` is handed to it.
pub struct RabbitProcess {
    child: Option<Child>,
    dir: PathBuf,
    node: String,
    amqp_port: u16,
    dist_port: u16,
    epmd_port: u16,
    mqtt_port: u16,
}

impl RabbitProcess {
    /// How long a start may take (the node needs several seconds to boot).
    const START: Duration = Duration::from_secs(90);

    /// Starts a node in `dir` on free ports.
    pub fn start(dir: &Path) -> anyhow::Result<RabbitProcess> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::fs::create_dir_all(dir.join("mnesia"))?;
        std::fs::create_dir_all(dir.join("log"))?;
        let mut r = RabbitProcess {
            child: None,
            dir: dir.to_owned(),
            node: format!("tl{}-{n}@localhost", std::process::id()),
            amqp_port: free_port()?,
            dist_port: free_port()?,
            epmd_port: free_port()?,
            mqtt_port: free_port()?,
        };
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.default = 127.0.0.1:{}\nmqtt.listeners.tcp.default = 127.0.0.1:{}\nloopback_users.guest = true\nmqtt.allow_anonymous = true\n",
                r.amqp_port, r.mqtt_port
            ),
        )?;
        std::fs::write(dir.join("enabled_plugins"), "[rabbitmq_mqtt].\n")?;
        // The node runs as user `rabbitmq`: it must own its directory.
        let status = Command::new("chown")
            .arg("-R")
            .arg("rabbitmq:rabbitmq")
            .arg(dir)
            .status()
            .context("chown of the RabbitMQ directory")?;
        if !status.success() {
            bail!("chown -R rabbitmq: {} failed: {status}", dir.display());
        }
        // Every ancestor of `dir` must be searchable by user `rabbitmq` (tempdirs are 0700).
        let mut up = dir.parent();
        while let Some(p) = up {
            if p.starts_with(std::env::temp_dir()) && p != std::env::temp_dir() {
                use std::os::unix::fs::PermissionsExt;
                let mut perm = std::fs::metadata(p)?.permissions();
                perm.set_mode(perm.mode() | 0o711);
                std::fs::set_permissions(p, perm)?;
            }
            up = p.parent();
        }
        r.run()?;
        Ok(r)
    }

    /// The environment that makes a node (or `rabbitmqctl`) private to this test.
    fn env(&self, cmd: &mut Command) {
        let d = &self.dir;
        cmd.env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", d.join("rabbitmq.pid"));
    }

    fn run(&mut self) -> anyhow::Result<()> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.out"))?;
        let mut cmd = Command::new("rabbitmq-server");
        self.env(&mut cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("spawning rabbitmq-server (apt-get install rabbitmq-server)")?;
        if !wait_for_port(&mut child, self.mqtt_port, Self::START) {
            kill(&mut child);
            self.kill_node();
            bail!(
                "RabbitMQ did not listen for MQTT on {} within {:?}: {}",
                self.mqtt_port,
                Self::START,
                std::fs::read_to_string(self.dir.join("server.out")).unwrap_or_default()
            );
        }
        self.child = Some(child);
        Ok(())
    }

    /// Stops the node (`rabbitmqctl stop`, bounded), then its epmd.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let mut ctl = Command::new("rabbitmqctl");
        self.env(&mut ctl);
        let stopped = ctl
            .args(["-n", &self.node, "-t", "30", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let exited = wait_until(Duration::from_secs(30), || {
            matches!(child.try_wait(), Ok(Some(_)))
        });
        if !stopped || !exited {
            self.kill_node();
            kill(&mut child);
        }
        let _ = child.wait();
        self.kill_epmd();
        if !wait_port_closed(self.mqtt_port, Duration::from_secs(10)) {
            bail!("RabbitMQ still listens on {} after stop", self.mqtt_port);
        }
        Ok(())
    }

    /// SIGKILL to the node's Erlang VM (its pid file), which the wrapper does not forward.
    fn kill_node(&self) {
        let pid = std::fs::read_to_string(self.dir.join("rabbitmq.pid"))
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok());
        if let Some(pid) = pid {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// Ends the private epmd (on its own port) the node started.
    fn kill_epmd(&self) {
        let _ = Command::new("epmd")
            .arg("-kill")
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for RabbitProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            self.kill_node();
            kill(&mut child);
        }
        self.kill_epmd();
    }
}

/// A NATS server of our own: client port, MQTT port, `server_name` and JetStream store in
/// `dir` (MQTT needs JetStream and a server name).
pub struct NatsProcess {
    child: Option<Child>,
    dir: PathBuf,
    mqtt_port: u16,
}

impl NatsProcess {
    /// Starts a server in `dir` on free ports.
    pub fn start(dir: &Path) -> anyhow::Result<NatsProcess> {
        std::fs::create_dir_all(dir.join("js"))?;
        let (client_port, mqtt_port) = (free_port()?, free_port()?);
        let name = format!("tl_{}_{}", std::process::id(), mqtt_port);
        std::fs::write(
            dir.join("nats.conf"),
            format!(
                "server_name: {name}\nlisten: 127.0.0.1:{client_port}\njetstream {{ store_dir: \"{}\" }}\nmqtt {{ listen: 127.0.0.1:{mqtt_port} }}\n",
                dir.join("js").display()
            ),
        )?;
        let mut n = NatsProcess {
            child: None,
            dir: dir.to_owned(),
            mqtt_port,
        };
        n.run()?;
        Ok(n)
    }

    fn run(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("nats.log"))?;
        let mut child = Command::new("nats-server")
            .arg("-c")
            .arg(self.dir.join("nats.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning nats-server (apt-get install nats-server)")?;
        if !wait_for_port(&mut child, self.mqtt_port, Duration::from_secs(20)) {
            kill(&mut child);
            bail!(
                "nats-server did not listen for MQTT on {}: {}",
                self.mqtt_port,
                std::fs::read_to_string(self.dir.join("nats.log")).unwrap_or_default()
            );
        }
        self.child = Some(child);
        Ok(())
    }

    /// Stops it (SIGTERM, bounded; SIGKILL after).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(15);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                kill(&mut child);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !wait_port_closed(self.mqtt_port, Duration::from_secs(10)) {
            bail!("nats-server still listens on {} after stop", self.mqtt_port);
        }
        Ok(())
    }
}

impl Drop for NatsProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(&mut child);
        }
    }
}
