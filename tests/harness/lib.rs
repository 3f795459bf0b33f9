//! Harness for towerlink's end-to-end tests: the agent as a real process, a real MQTT broker,
//! and a subscriber that sees the feed as the platform would.
//!
//! Every wait is bounded and polls a condition: a test fails with what it saw, never hangs,
//! and never relies on a sleep being long enough.
//!
//! Every message a [`Subscriber`] receives is checked against the feed's JSON Schemas
//! (`config/schemas/`, see [`schemas`]); a violation fails the test at its next look at the
//! messages ([`Subscriber::all`], [`Subscriber::on`], [`Subscriber::wait`]) or, at the latest,
//! when the subscriber is dropped. Commands the tests publish themselves (deliberately bad ones
//! included) are input, not the agent's output, and are not held to the schema.
//!
//! Another build of the agent (the ARM CI runs the aarch64 musl binary under qemu-user, see
//! `packaging/arm-e2e.sh`): `TOWERLINK_AGENT_BIN` is the agent binary every test runs
//! ([`agent_command`], [`AgentProcess`]), `TOWERLINK_AGENT_WRAPPER` a program it is run under
//! (e.g. `qemu-aarch64-static`), and `TOWERLINK_TEST_TIME_FACTOR` (a whole number, default 1)
//! multiplies every bounded wait of the harness ([`wait_until`], [`Subscriber::wait`], the
//! agent's stop), the one knob for a slow emulator. The simulators always run natively.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

pub mod brokers;
pub mod mosquitto;
pub mod schemas;
pub mod tls;

/// Payloads the tests published through a harness client (commands, good or deliberately
/// bad): when they come back on a subscription they are the test's input, not checked.
fn published_by_tests() -> &'static Mutex<HashSet<Vec<u8>>> {
    static PUBLISHED: OnceLock<Mutex<HashSet<Vec<u8>>>> = OnceLock::new();
    PUBLISHED.get_or_init(Mutex::default)
}

fn note_published(payload: &[u8]) {
    if let Ok(mut set) = published_by_tests().lock() {
        set.insert(payload.to_vec());
    }
}

/// The schema check of one received message: `Err` with the reason for a violation.
fn check_received(topic: &str, payload: &[u8]) -> Result<(), String> {
    let own_input = schemas::parse_topic(topic).is_some_and(|t| t.kind == schemas::Kind::Cmd)
        && published_by_tests()
            .lock()
            .map(|set| set.contains(payload))
            .unwrap_or(false);
    if own_input {
        return Ok(());
    }
    schemas::FeedSchemas::repository().check_message(topic, payload)
}

/// The broker the tests use: `TOWERLINK_TEST_BROKER` (host:port), else the machine's
/// Mosquitto on 127.0.0.1:1883.
///
/// The first call checks that it accepts a TCP connection; when it does not, the test binary
/// stops at once with one line saying what to start ([`missing_broker_line`]), instead of every
/// test failing its own way.
pub fn broker() -> (String, u16) {
    let spec = std::env::var("TOWERLINK_TEST_BROKER").unwrap_or_else(|_| "127.0.0.1:1883".into());
    let (host, port) = spec.rsplit_once(':').unwrap_or((spec.as_str(), "1883"));
    let (host, port) = (host.to_owned(), port.parse().unwrap_or(1883));
    static CHECKED: OnceLock<()> = OnceLock::new();
    CHECKED.get_or_init(|| {
        if let Err(e) = broker_reachable(&host, port) {
            eprintln!("{}", missing_broker_line(&host, port, &e));
            std::process::exit(2);
        }
    });
    (host, port)
}

/// Does `host:port` accept a TCP connection (within 3 s)?
pub fn broker_reachable(host: &str, port: u16) -> std::io::Result<()> {
    use std::net::ToSocketAddrs;
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    for addr in (host, port).to_socket_addrs()? {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
            Ok(_) => return Ok(()),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The one line a test run prints when its broker is missing.
pub fn missing_broker_line(host: &str, port: u16, error: &std::io::Error) -> String {
    format!(
        "towerlink e2e: no MQTT broker at {host}:{port} ({error}). The end-to-end tests need one: \
         start Mosquitto (`mosquitto -d -c /etc/mosquitto/mosquitto.conf`, Debian package \
         `mosquitto`) or set TOWERLINK_TEST_BROKER=host:port to a loopback broker."
    )
}

/// A gateway id unique to this test run, so parallel tests and earlier runs never mix.
pub fn unique_gw(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos:x}", std::process::id())
}

/// What a test does when the machine lacks something it needs (root for a mount, a tool):
/// it fails with `why`, unless the environment variable `opt_out` is `1`, in which case it
/// prints a loud SKIPPED line and the test returns `Ok` without checking anything. CI sets no
/// opt-out; it installs what the tests need.
pub fn skip_or_fail(opt_out: &str, why: &str) -> anyhow::Result<()> {
    if std::env::var(opt_out).is_ok_and(|v| v == "1") {
        eprintln!("\n!!! SKIPPED: {why} ({opt_out}=1) !!!\n");
        Ok(())
    } else {
        bail!("{why}; this test needs it (set {opt_out}=1 to skip it explicitly)")
    }
}

/// Held while a test that must not share the machine with another of its kind runs (see
/// [`exclusive`]); dropping it lets the next one go.
pub struct Exclusive {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

/// Waits (at most 20 minutes) until no other test holding `name` runs, in this or any other
/// test process, and returns the guard. The lift tests take `"lift-bus"`: each runs a paced
/// Modbus slave and a polling agent, whose timing a second one on two loaded cores would
/// skew.
pub fn exclusive(name: &str) -> anyhow::Result<Exclusive> {
    use nix::fcntl::{Flock, FlockArg};
    let path = std::env::temp_dir().join(format!("towerlink-e2e-{name}.lock"));
    let deadline = Instant::now() + Duration::from_secs(20 * 60);
    loop {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(Exclusive { _lock: lock }),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err((_, e)) => bail!("{} still held after 20 minutes: {e}", path.display()),
        }
    }
}

/// `TOWERLINK_TEST_TIME_FACTOR`: how many times longer every harness wait may take (1 to 20;
/// default 1). Anything else stops the test run with a clear message.
pub fn time_factor() -> u32 {
    static FACTOR: OnceLock<u32> = OnceLock::new();
    *FACTOR.get_or_init(|| match std::env::var("TOWERLINK_TEST_TIME_FACTOR") {
        Err(_) => 1,
        Ok(v) => match v.trim().parse::<u32>() {
            Ok(f) if (1..=20).contains(&f) => f,
            _ => panic!("TOWERLINK_TEST_TIME_FACTOR={v:?}: expected a whole number from 1 to 20"),
        },
    })
}

/// `timeout` times [`time_factor`].
pub fn scaled(timeout: Duration) -> Duration {
    timeout * time_factor()
}

/// Polls `cond` every 50 ms until it holds or `timeout` (times [`time_factor`]) passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + scaled(timeout);
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The agent binary the tests run: `TOWERLINK_AGENT_BIN` if set, else the workspace's.
/// Wrapped or not, the agent is run through [`agent_command`].
fn agent_override() -> Option<PathBuf> {
    std::env::var_os("TOWERLINK_AGENT_BIN")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// A command that runs the agent (`towerlink`): the workspace's binary, or
/// `TOWERLINK_AGENT_BIN` under `TOWERLINK_AGENT_WRAPPER` when they are set. Add the arguments.
pub fn agent_command() -> anyhow::Result<Command> {
    let bin = binary("towerlink-agent", "towerlink")?;
    Ok(
        match std::env::var_os("TOWERLINK_AGENT_WRAPPER").filter(|v| !v.is_empty()) {
            Some(wrapper) => {
                let mut cmd = Command::new(wrapper);
                cmd.arg(bin);
                cmd
            }
            None => Command::new(bin),
        },
    )
}

/// Path of a workspace binary, built once if missing. For the agent, `TOWERLINK_AGENT_BIN`
/// when set (run it with [`agent_command`], which adds the wrapper).
pub fn binary(package: &str, name: &str) -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let exe = std::env::current_exe().context("current_exe")?;
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test binary is not under target/<profile>/deps")?
        .to_owned();
    let path = dir.join(name);
    let built = BUILT.get_or_init(|| {
        let profile_release = dir.file_name().is_some_and(|n| n == "release");
        let mut cmd = Command::new(env!("CARGO"));
        // The same features as the test build itself (the e2e crate enables the agent's
        // `sim` I2C bus), so this build reuses its artifacts instead of relinking.
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "towerlink-agent",
            "--bin",
            "towerlink",
            "-p",
            "towerlink-sim",
            "--bin",
            "towerlink-sim",
            "--features",
            "towerlink-agent/sim",
        ]);
        if profile_release {
            cmd.arg("--release");
        }
        match cmd.status() {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("cargo build failed: {s}")),
            Err(e) => Err(format!("cannot run cargo: {e}")),
        }
    });
    if let Err(e) = built {
        bail!("building {package}/{name}: {e}");
    }
    if name == "towerlink" {
        if let Some(bin) = agent_override() {
            if !bin.exists() {
                bail!("TOWERLINK_AGENT_BIN={} does not exist", bin.display());
            }
            return Ok(bin);
        }
    }
    if !path.exists() {
        bail!("{} does not exist after building {package}", path.display());
    }
    Ok(path)
}

/// A message as the platform receives it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Topic.
    pub topic: String,
    /// Parsed JSON payload (Null if it was not JSON).
    pub json: Value,
    /// Retained flag.
    pub retain: bool,
    /// QoS it was delivered at (0, 1 or 2): the lower of the publisher's and the
    /// subscription's (the harness subscribes at 1).
    pub qos: u8,
    /// When it arrived.
    pub at: Instant,
    /// Did it arrive as an item of a batch (`{root}/{gw}/batch`, shown on the `data/{dev}`
    /// topic it would have had alone)?
    pub batched: bool,
}

impl Received {
    /// The payload as JSON text without `"replay"`: a re-send is marked `"replay": true`
    /// (and only a re-send), so two copies of one `seq` must be equal in this.
    pub fn text_apart_from_replay(&self) -> String {
        let mut same = self.json.clone();
        if let Some(o) = same.as_object_mut() {
            o.remove("replay");
        }
        same.to_string()
    }
}

/// A batch (`{root}/{gw}/batch`) as the platform reads it: decoded with the agent's own
/// `feed::batch::decode`, each item checked as the `data/{dev}` message it stands for.
/// Returns the items with their topics, or why the batch is bad.
fn decode_batch(topic: &str, payload: &[u8]) -> Result<Vec<(String, Value)>, String> {
    let prefix = topic
        .strip_suffix("/batch")
        .ok_or_else(|| "not a batch topic".to_owned())?;
    let items = towerlink_agent::feed::batch::decode(payload).map_err(|e| e.to_string())?;
    if items.is_empty() {
        return Err("an empty batch".into());
    }
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let dev = item["dev"]
            .as_str()
            .ok_or_else(|| format!("a batch item without dev: {item}"))?;
        let data_topic = format!("{prefix}/data/{dev}");
        let bytes = serde_json::to_vec(&item).map_err(|e| e.to_string())?;
        schemas::FeedSchemas::repository()
            .check_message(&data_topic, &bytes)
            .map_err(|why| format!("batch item {item}: {why}"))?;
        out.push((data_topic, item));
    }
    Ok(out)
}

/// A platform-like subscriber on `{root}/{gw}/#`.
pub struct Subscriber {
    messages: Arc<Mutex<Vec<Received>>>,
    /// Schema violations seen by the receiving task, reported on the test's thread.
    violations: Arc<Mutex<Vec<String>>>,
    runtime: tokio::runtime::Runtime,
    client: AsyncClient,
}

impl Subscriber {
    /// Connects to the test broker and subscribes to `filter`; returns once the subscription
    /// is acknowledged.
    pub fn connect(filter: &str) -> anyhow::Result<Subscriber> {
        let (host, port) = broker();
        let mut opts = MqttOptions::new(unique_gw("sub"), host, port);
        opts.set_keep_alive(Duration::from_secs(10));
        opts.set_max_packet_size(1 << 20, 1 << 20);
        Subscriber::connect_with(opts, filter, 64)
    }

    /// Connects with these options (any broker, session kind, inflight) and subscribes to
    /// `filter` at QoS 1; returns once the subscription is acknowledged. The event loop
    /// reconnects by itself after an error.
    pub fn connect_with(
        opts: MqttOptions,
        filter: &str,
        capacity: usize,
    ) -> anyhow::Result<Subscriber> {
        Subscriber::connect_filters(opts, &[filter], capacity)
    }

    /// Like [`Subscriber::connect`] on several filters (e.g. every topic of a gateway but
    /// `cmd`); returns once the broker acknowledged them all.
    pub fn connect_many(filters: &[&str]) -> anyhow::Result<Subscriber> {
        let (host, port) = broker();
        let mut opts = MqttOptions::new(unique_gw("sub"), host, port);
        opts.set_keep_alive(Duration::from_secs(10));
        opts.set_max_packet_size(1 << 20, 1 << 20);
        Subscriber::connect_filters(opts, filters, 64)
    }

    /// Connects with these options and subscribes to every filter at QoS 1; returns once
    /// the broker acknowledged them all. The event loop reconnects by itself after an error.
    pub fn connect_filters(
        opts: MqttOptions,
        filters: &[&str],
        capacity: usize,
    ) -> anyhow::Result<Subscriber> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let broker = format!("{:?}", opts.broker_address());
        let (client, mut eventloop) = AsyncClient::new(opts, capacity);
        let messages = Arc::new(Mutex::new(Vec::new()));
        let violations = Arc::new(Mutex::new(Vec::new()));
        let subscribed = Arc::new(Mutex::new(0usize));
        // Load the schemas here, on the test's thread: a broken schema fails at once.
        schemas::FeedSchemas::repository();
        let (m, s, bad) = (messages.clone(), subscribed.clone(), violations.clone());
        runtime.spawn(async move {
            // The last full health report per topic: a delta is shown merged into it, as a
            // platform reads it (`docs/mqtt-feed.md`, health).
            let mut full_health: std::collections::HashMap<String, Value> =
                std::collections::HashMap::new();
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic.ends_with("/batch") => {
                        let at = Instant::now();
                        let qos = match p.qos {
                            QoS::AtMostOnce => 0,
                            QoS::AtLeastOnce => 1,
                            QoS::ExactlyOnce => 2,
                        };
                        match decode_batch(&p.topic, &p.payload) {
                            Ok(items) => {
                                if let Ok(mut v) = m.lock() {
                                    v.push(Received {
                                        topic: p.topic.clone(),
                                        json: Value::Null,
                                        retain: p.retain,
                                        qos,
                                        at,
                                        batched: false,
                                    });
                                    v.extend(items.into_iter().map(|(topic, json)| Received {
                                        topic,
                                        json,
                                        retain: p.retain,
                                        qos,
                                        at,
                                        batched: true,
                                    }));
                                }
                            }
                            Err(why) => {
                                if let Ok(mut v) = bad.lock() {
                                    v.push(format!(
                                        "{} ({} bytes): {why}",
                                        p.topic,
                                        p.payload.len()
                                    ));
                                }
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Err(why) = check_received(&p.topic, &p.payload) {
                            if let Ok(mut v) = bad.lock() {
                                v.push(format!(
                                    "{} {}: {why}",
                                    p.topic,
                                    String::from_utf8_lossy(&p.payload)
                                ));
                            }
                        }
                        let mut json = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        if p.topic.ends_with("/health") {
                            if json.get("delta") == Some(&Value::Bool(true)) {
                                if let Some(full) = full_health.get(&p.topic) {
                                    let mut merged = towerlink_agent::health::merge(full, &json);
                                    merged["delta"] = Value::Bool(true);
                                    json = merged;
                                }
                            } else {
                                full_health.insert(p.topic.clone(), json.clone());
                            }
                        }
                        if let Ok(mut v) = m.lock() {
                            v.push(Received {
                                topic: p.topic.clone(),
                                json,
                                retain: p.retain,
                                qos: match p.qos {
                                    QoS::AtMostOnce => 0,
                                    QoS::AtLeastOnce => 1,
                                    QoS::ExactlyOnce => 2,
                                },
                                at: Instant::now(),
                                batched: false,
                            });
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Ok(mut v) = s.lock() {
                            *v += 1;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        for filter in filters {
            let c = client.clone();
            let filter = (*filter).to_owned();
            runtime.block_on(async move { c.subscribe(filter, QoS::AtLeastOnce).await })?;
        }
        if !wait_until(Duration::from_secs(10), || {
            subscribed
                .lock()
                .map(|v| *v >= filters.len())
                .unwrap_or(false)
        }) {
            bail!("subscription not acknowledged by the broker at {broker}");
        }
        Ok(Subscriber {
            messages,
            violations,
            runtime,
            client,
        })
    }

    /// The schema violations received so far (see the module docs).
    pub fn violations(&self) -> Vec<String> {
        self.violations
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    /// Panics, on the test's thread, if any received message broke its schema.
    fn assert_schemas(&self) {
        let violations = self.violations();
        if !violations.is_empty() {
            panic!(
                "{} message(s) received that break the feed schemas (config/schemas/):\n{}",
                violations.len(),
                violations.join("\n")
            );
        }
    }

    /// Publishes (QoS 1) without waiting for the network: fine while the broker is down.
    pub fn publish_later(&self, topic: &str, payload: &[u8]) {
        note_published(payload);
        let c = self.client.clone();
        let (t, p) = (topic.to_owned(), payload.to_vec());
        self.runtime.spawn(async move {
            let _ = c.try_publish(t, QoS::AtLeastOnce, false, p);
        });
    }

    /// Everything received so far; panics if any of it broke the feed schemas.
    pub fn all(&self) -> Vec<Received> {
        self.assert_schemas();
        self.messages.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Messages whose topic ends with `suffix`.
    pub fn on(&self, suffix: &str) -> Vec<Received> {
        self.all()
            .into_iter()
            .filter(|m| m.topic.ends_with(suffix))
            .collect()
    }

    /// Waits until `cond` holds on the messages received so far.
    pub fn wait(
        &self,
        timeout: Duration,
        what: &str,
        mut cond: impl FnMut(&[Received]) -> bool,
    ) -> anyhow::Result<()> {
        if wait_until(timeout, || cond(&self.all())) {
            Ok(())
        } else {
            let seen: Vec<String> = self
                .all()
                .iter()
                .rev()
                .take(10)
                .map(|m| format!("{} {}", m.topic, m.json))
                .collect();
            bail!(
                "timed out after {:?} waiting for {what}; last messages:\n{}",
                scaled(timeout),
                seen.join("\n")
            )
        }
    }

    /// Publishes a message (e.g. a command).
    pub fn publish(&self, topic: &str, payload: &[u8]) -> anyhow::Result<()> {
        note_published(payload);
        let c = self.client.clone();
        let (t, p) = (topic.to_owned(), payload.to_vec());
        self.runtime
            .block_on(async move { c.publish(t, QoS::AtLeastOnce, false, p).await })?;
        Ok(())
    }

    /// Clears a retained message (publishes an empty retained payload).
    pub fn clear_retained(&self, topic: &str) {
        let c = self.client.clone();
        let t = topic.to_owned();
        let _ = self
            .runtime
            .block_on(async move { c.publish(t, QoS::AtLeastOnce, true, Vec::<u8>::new()).await });
    }
}

impl Drop for Subscriber {
    /// The last chance to report a violation the test never looked at (not while the test
    /// is already failing: that panic says more).
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.assert_schemas();
        }
    }
}

/// The agent, running as its own process.
pub struct AgentProcess {
    child: Option<Child>,
    log: PathBuf,
}

impl AgentProcess {
    /// Starts `towerlink run --config <config>`; its log goes to `<config>.log`.
    pub fn start(config: &Path) -> anyhow::Result<AgentProcess> {
        AgentProcess::start_with_env(config, &[])
    }

    /// Like [`AgentProcess::start`], with extra environment variables (e.g. systemd's).
    pub fn start_with_env(config: &Path, env: &[(&str, &str)]) -> anyhow::Result<AgentProcess> {
        let log = config.with_extension("log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = agent_command()?
            .args(["run", "--config"])
            .arg(config)
            .env("TOWERLINK_LOG", "info,towerlink_agent=debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("spawning the agent")?;
        Ok(AgentProcess {
            child: Some(child),
            log,
        })
    }

    /// The agent's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` and waits (bounded) for the process to exit; returns its exit status.
    fn signal_and_wait(
        &mut self,
        signal: nix::sys::signal::Signal,
        timeout: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("agent already stopped")
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, signal).context("signalling the agent")?;
        let timeout = scaled(timeout);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "agent did not exit within {timeout:?} after {signal:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A clean stop (SIGTERM); fails if the agent does not exit cleanly within 15 s.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let status =
            self.signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(15))?;
        if !status.success() {
            bail!(
                "agent exited with {status} on SIGTERM; log:\n{}",
                self.log()
            );
        }
        Ok(())
    }

    /// A crash (SIGKILL).
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.signal_and_wait(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(5))
            .map(|_| ())
    }

    /// Is it still running?
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Writes an agent configuration for gateway `gw` with the given `[[node]]` sections.
/// Batching is off (each window alone on `data/{dev}`): see [`write_config_batch`].
pub fn write_config(dir: &Path, gw: &str, extra: &str) -> anyhow::Result<PathBuf> {
    write_config_batch(dir, gw, "0s", extra)
}

/// [`write_config`] with `[mqtt] batch` set to `batch` (e.g. `"5s"`; `"0s"` = off).
pub fn write_config_batch(
    dir: &Path,
    gw: &str,
    batch: &str,
    extra: &str,
) -> anyhow::Result<PathBuf> {
    let (host, port) = broker();
    let store = dir.join("store");
    let text = format!(
        "[gateway]\nid = \"{gw}\"\n\n[mqtt]\nurl = \"mqtt://{host}:{port}\"\ntopic_root = \"towerlink/v1\"\nkeep_alive = \"5s\"\nbatch = \"{batch}\"\n\n[store]\npath = \"{}\"\n\n{extra}",
        store.display()
    );
    let path = dir.join("towerlink.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// `towerlink store inspect --list` of a store directory (read-only, safe while the agent
/// runs): the unacknowledged records' seqs and the next seq.
pub fn store_inspect(store: &Path) -> anyhow::Result<(std::collections::BTreeSet<u64>, u64)> {
    let bin = binary("towerlink-agent", "towerlink")?;
    let out = Command::new(bin)
        .args(["store", "inspect", "--list"])
        .arg(store)
        .output()?;
    if !out.status.success() {
        bail!("store inspect failed: {out:?}");
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut live = std::collections::BTreeSet::new();
    let mut next = None;
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("next seq:") {
            next = n.trim().parse().ok();
        } else if let Some(seq) = line
            .split_whitespace()
            .next()
            .and_then(|w| w.parse::<u64>().ok())
        {
            live.insert(seq);
        }
    }
    Ok((live, next.context("no `next seq` in the inspection")?))
}
