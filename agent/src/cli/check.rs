//! `towerlink check`: everything an installer must know before leaving the plant room, one
//! line per item, `OK  <item>` or `FAIL <item>: <reason> — <fix>`, exit code non-zero on any
//! failure.
//!
//! Items, in order: the configuration (a broken one names file, line and key, and nothing
//! else is checked), the ids, each node's port (exists, opens at its baud, a node answers
//! with its Hello), the store directory, and the broker (TCP, then an MQTT CONNECT under a
//! client id of its own, so a running agent is never kicked off). Ports are probed at the
//! same time, so a tower of nodes is checked in a few seconds.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use super::describe_hello;
use crate::config::{Config, ConfigError, Node as NodeConfig, Problem, ProblemKind};
use crate::sources::node_link::NodePort;

/// How long a node has to introduce itself.
pub const NODE_LISTEN: Duration = Duration::from_secs(4);
/// How long the broker has to accept a connection and answer CONNECT.
pub const BROKER_TIMEOUT: Duration = Duration::from_secs(5);

/// A check that failed: the reason the installer reads and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} — {fix}")]
pub struct Failed {
    /// What is wrong.
    pub reason: String,
    /// What the installer should do.
    pub fix: String,
}

impl Failed {
    /// A failure with its reason and fix.
    pub fn new(reason: impl Into<String>, fix: impl Into<String>) -> Failed {
        Failed {
            reason: reason.into(),
            fix: fix.into(),
        }
    }
}

/// Why the broker probe ([`check_broker`]) failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerProbeError {
    /// The host name does not resolve.
    #[error("cannot resolve {host}: {error}")]
    Resolve {
        /// The host.
        host: String,
        /// The resolver's error.
        error: std::io::Error,
    },
    /// No address of the host accepted a TCP connection.
    #[error("TCP connection to {host}:{port} failed: {why}")]
    Tcp {
        /// The host.
        host: String,
        /// The port.
        port: u16,
        /// The last connection error.
        why: String,
    },
    /// The CONNECT could not be written.
    #[error("cannot send MQTT CONNECT: {0}")]
    Send(std::io::Error),
    /// No CONNACK came.
    #[error("no CONNACK within {BROKER_TIMEOUT:?}: {0}")]
    NoConnack(std::io::Error),
    /// Something else than a CONNACK came.
    #[error("unexpected answer {0:02x?} to CONNECT")]
    NotMqtt([u8; 4]),
    /// The CONNACK refused the connection, with its return code.
    #[error("{}", match .0 {
        1 => "the broker refused MQTT 3.1.1".to_owned(),
        2 => "the broker refused the client id".to_owned(),
        3 => "the broker is unavailable".to_owned(),
        4 | 5 => "the broker refused the connection (not authorised)".to_owned(),
        code => format!("CONNACK return code {code}"),
    })]
    Refused(u8),
}

impl BrokerProbeError {
    /// The installer's fix.
    pub fn fix(&self) -> &'static str {
        match self {
            BrokerProbeError::Resolve { .. } => {
                "check the host name and the gateway's DNS (resolv.conf)"
            }
            BrokerProbeError::Tcp { .. } => {
                "check that the broker runs and listens there, and the firewall / network route"
            }
            BrokerProbeError::Send(_) => "the port may not be an MQTT listener; check [mqtt] url",
            BrokerProbeError::NoConnack(_) => {
                "the port is open but does not speak MQTT; check the port in [mqtt] url"
            }
            BrokerProbeError::NotMqtt(_) => "the port does not speak MQTT 3.1.1; check [mqtt] url",
            BrokerProbeError::Refused(1) => "enable MQTT 3.1.1 on the broker",
            BrokerProbeError::Refused(2) => {
                "the gateway id must be accepted as a client id by the broker"
            }
            BrokerProbeError::Refused(3) => "try again later or ask the platform team",
            BrokerProbeError::Refused(4 | 5) => {
                "ask the platform team for this gateway's credentials"
            }
            BrokerProbeError::Refused(_) => "ask the platform team",
        }
    }
}

impl From<BrokerProbeError> for Failed {
    fn from(e: BrokerProbeError) -> Failed {
        Failed::new(e.to_string(), e.fix())
    }
}

/// Prints result lines as they are decided and counts the failures.
#[derive(Debug, Default)]
pub struct Report {
    failures: usize,
}

impl Report {
    /// `OK  <item>`.
    pub fn ok(&mut self, item: &str) {
        println!("OK  {item}");
    }

    /// `FAIL <item>: <reason> — <fix>`.
    pub fn fail(&mut self, item: &str, reason: &str, fix: &str) {
        self.failures += 1;
        println!("FAIL {item}: {reason} — {fix}");
    }

    /// `WARN <item>: <reason> — <fix>`: worth acting on, not a failure (exit code unchanged).
    pub fn warn(&mut self, item: &str, reason: &str, fix: &str) {
        println!("WARN {item}: {reason} — {fix}");
    }

    /// Failures so far.
    pub fn failures(&self) -> usize {
        self.failures
    }
}

/// Runs every check of the configuration at `path`; returns the number of failures.
pub async fn run(path: &Path) -> usize {
    let mut report = Report::default();
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => {
            for Failed { reason, fix } in explain_config_error(&e) {
                report.fail(&format!("config {}", path.display()), &reason, &fix);
            }
            return report.failures();
        }
    };
    report.ok(&format!(
        "config {}: parses, {} node(s)",
        path.display(),
        config.nodes.len()
    ));
    report.ok(&ids_line(&config));

    let probes: Vec<_> = config
        .nodes
        .iter()
        .map(|node| check_node(node.clone()))
        .collect();
    for (node, outcome) in config.nodes.iter().zip(join_probes(probes).await) {
        let item = format!(
            "node {} ({} at {} baud)",
            node.id,
            node.port.display(),
            node.baud
        );
        match outcome {
            Ok(line) => report.ok(&format!("{item}: {line}")),
            Err(Failed { reason, fix }) => report.fail(&item, &reason, &fix),
        }
    }

    for dev in &config.i2c {
        let item = format!("i2c {} ({:?} on {})", dev.id, dev.chip, dev.bus);
        let d = dev.clone();
        let outcome = tokio::task::spawn_blocking(move || check_i2c(&d.map_channels(|_| ())))
            .await
            .unwrap_or_else(|e| Err(Failed::new(format!("check aborted: {e}"), "")));
        match outcome {
            Ok(line) => report.ok(&format!("{item}: {line}")),
            Err(Failed { reason, fix }) => report.fail(&item, &reason, &fix),
        }
    }
    for lift in &config.lifts {
        let item = format!(
            "lift {} (unit {} on {} at {} baud)",
            lift.id,
            lift.unit,
            lift.port.display(),
            lift.baud
        );
        match check_lift(lift).await {
            Ok(line) => report.ok(&format!("{item}: {line}")),
            Err(Failed { reason, fix }) => report.fail(&item, &reason, &fix),
        }
    }

    let secrets = config.mqtt.secret_file_problems();
    let has_secret_files = config.mqtt.key_file.is_some() || config.mqtt.password_file.is_some();
    for problem in &secrets {
        report.fail(
            "secret files",
            problem,
            "chmod 600 the file (or 640 with group towerlink) and chown it to the agent's user",
        );
    }
    if secrets.is_empty() && has_secret_files {
        report.ok(
            "secret files: key and password files are readable by their owner (and group) only",
        );
    }

    if let (Some(cert_file), Some(key_file)) = (&config.mqtt.cert_file, &config.mqtt.key_file) {
        check_client_cert(&mut report, cert_file, key_file);
    }

    let store = &config.store.path;
    match check_store(store) {
        Ok(what) => report.ok(&format!("store {}: {what}", store.display())),
        Err(Failed { reason, fix }) => {
            report.fail(&format!("store {}", store.display()), &reason, &fix)
        }
    }

    match config.broker() {
        Ok(broker) => {
            let item = format!("broker {broker}");
            let client_id = format!("{}-check-{}", config.gateway.id, std::process::id());
            let host = broker.host.clone();
            let outcome = tokio::task::spawn_blocking(move || {
                check_broker(&host, broker.port, broker.tls, &client_id).map_err(Failed::from)
            })
            .await
            .unwrap_or_else(|e| Err(Failed::new(format!("check aborted: {e}"), "")));
            let reachable = outcome.is_ok();
            match outcome {
                Ok(what) => report.ok(&format!("{item}: {what}")),
                Err(Failed { reason, fix }) => report.fail(&item, &reason, &fix),
            }
            // With TLS or credentials, the agent's own session setup must be accepted too.
            if reachable && (broker.tls || config.mqtt.username.is_some()) {
                let item = format!("broker {broker} session (TLS and credentials as configured)");
                match check_session(&config).await {
                    Ok(what) => report.ok(&format!("{item}: {what}")),
                    Err(Failed { reason, fix }) => report.fail(&item, &reason, &fix),
                }
            }
        }
        Err(e) => report.fail("broker", &e.to_string(), "correct [mqtt] url"),
    }
    report.failures()
}

/// One MQTT session set up exactly as the agent does ([`SessionSpec::for_tool`]: protocol
/// version, TLS files, client certificate, username and password file), under a client id
/// of its own: the broker must accept it.
/// The `ids:` line: the gateway id and every device id by kind, as the feed will name them.
fn ids_line(config: &Config) -> String {
    let list = |ids: Vec<&str>| {
        if ids.is_empty() {
            "none".to_owned()
        } else {
            ids.join(", ")
        }
    };
    format!(
        "ids: gateway {}; nodes [{}]; i2c [{}]; lifts [{}]",
        config.gateway.id,
        list(config.nodes.iter().map(|n| n.id.as_str()).collect()),
        list(config.i2c.iter().map(|d| d.id.as_str()).collect()),
        list(config.lifts.iter().map(|l| l.id.as_str()).collect()),
    )
}

async fn check_session(config: &Config) -> Result<String, Failed> {
    use crate::uplink::session::{Event, SessionError, SessionSpec, SetupError};
    use crate::uplink::tls::hint;
    let spec = SessionSpec::for_tool(&config.gateway.id, &config.mqtt, "check").map_err(|e| {
        let fix = match &e {
            SetupError::Url(_) => "correct [mqtt] url",
            SetupError::NoCa(_) => "set [mqtt] ca_file",
            // A TLS error's text already ends with its fix: report the problem and the fix
            // once each.
            SetupError::Tls(t) => return Failed::new(t.problem.to_string(), t.fix()),
            SetupError::Password(_) => "make mqtt.password_file readable by the agent",
        };
        Failed::new(e.to_string(), fix)
    })?;
    let protocol = spec.protocol;
    let (client, mut eventloop) = spec.connect();
    let outcome = tokio::time::timeout(BROKER_TIMEOUT, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::ConnAck) => {
                    return Ok(format!("the broker accepted the session (MQTT {protocol})"));
                }
                Ok(_) => {}
                Err(SessionError::Refused(code)) => {
                    return Err(Failed::new(
                        format!("the broker refused the session: {code}"),
                        "check mqtt.username, mqtt.password_file, the broker's ACL for this gateway and [mqtt] protocol",
                    ));
                }
                Err(e) => {
                    let text = e.to_string();
                    let fix = hint(&text).unwrap_or("check the TLS files, the broker's TLS settings and [mqtt] protocol").to_owned();
                    return Err(Failed::new(format!("session failed: {text}"), fix));
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err(Failed::new("no CONNACK within 5 s", "check the broker's TLS port and settings")));
    let _ = client.try_disconnect();
    outcome
}

/// Days left under which `check` warns about the client certificate.
pub const CERT_WARN_DAYS: i64 = 30;

/// The client certificate's expiry (`WARN` under [`CERT_WARN_DAYS`], `FAIL` once expired)
/// and a renewal that waits (`<cert_file>.new` / `<key_file>.new`).
fn check_client_cert(report: &mut Report, cert_file: &Path, key_file: &Path) {
    use crate::uplink::tls::renewal::{days_left, not_after_of, pending_path};
    let item = format!("client certificate {}", cert_file.display());
    let now_s = crate::feed::now_millis() / 1000;
    const RENEW: &str = "renew it: `towerlink cert request`, have the platform's CA sign the CSR, send it with cert_install";
    match not_after_of(cert_file) {
        None => report.fail(
            &item,
            "cannot read its expiry date",
            "cert_file must hold the gateway's PEM certificate first",
        ),
        Some(not_after) => {
            let days = days_left(not_after, now_s);
            let until = crate::feed::rfc3339(not_after.saturating_mul(1000));
            if days < 0 {
                report.fail(&item, &format!("expired on {until}"), RENEW);
            } else if days < CERT_WARN_DAYS {
                report.warn(
                    &item,
                    &format!("expires in {days} day(s), on {until} (under {CERT_WARN_DAYS} days)"),
                    RENEW,
                );
            } else {
                report.ok(&format!("{item}: valid {days} more day(s), until {until}"));
            }
        }
    }
    let (cert_new, key_new) = (pending_path(cert_file), pending_path(key_file));
    match (cert_new.exists(), key_new.exists()) {
        (true, true) => report.ok(&format!(
            "client certificate renewal: {} waits; the agent's next connection tries it",
            cert_new.display()
        )),
        (false, true) => report.ok(&format!(
            "client certificate renewal: key {} waits for its certificate (cert_install)",
            key_new.display()
        )),
        _ => {}
    }
}

/// An I2C device: the bus opens and the chip answers with its identity.
fn check_i2c(dev: &crate::sources::i2c_device::I2cConfig) -> Result<String, Failed> {
    use crate::sources::i2c_device::Chip;
    use embedded_hal::i2c::I2c;
    if dev.bus == "sim" {
        return if cfg!(feature = "sim") {
            Ok("simulated bus (this build has the sim feature)".into())
        } else {
            Err(Failed::new(
                "this build has no simulated I2C bus",
                "use a /dev/i2c-N bus, or an agent built with --features sim",
            ))
        };
    }
    let mut bus = linux_embedded_hal::I2cdev::new(&dev.bus).map_err(|e| {
        Failed::new(
            format!("cannot open {}: {e}", dev.bus),
            "check the bus number (ls /dev/i2c-*), that i2c-dev is loaded, and that the user is in group i2c",
        )
    })?;
    // (address, identity register, expected value, mask) per the datasheets.
    let (address, register, expected, mask) = match dev.chip {
        Chip::Nau7802 => (dev.address.unwrap_or(0x2A), 0x1F, 0x0F, 0x0F),
        Chip::Adxl355 => (dev.address.unwrap_or(0x1D), 0x00, 0xAD, 0xFF),
    };
    let mut id = [0u8; 1];
    bus.write_read(address, &[register], &mut id).map_err(|e| {
        Failed::new(
            format!("no answer at address {address:#04x}: {e:?}"),
            "check the wiring, the chip's power and the address (i2cdetect -y N)",
        )
    })?;
    if id[0] & mask == expected {
        Ok(format!(
            "{:?} answers at {address:#04x} (id {:#04x})",
            dev.chip, id[0]
        ))
    } else {
        Err(Failed::new(
            format!(
                "the chip at {address:#04x} answered id {:#04x}, not a {:?}",
                id[0], dev.chip
            ),
            "check `chip` and `address` in the configuration",
        ))
    }
}

/// A lift: the bus opens and the unit answers one read (function 0x04 only).
async fn check_lift(lift: &crate::sources::config::LiftConfig) -> Result<String, Failed> {
    use crate::sources::modbus_lift::BusMaster;
    use crate::sources::modbus_rtu::{Answer, ReadInputRegisters};
    let path = lift.port.display().to_string();
    let mut master = BusMaster::open(&path, lift.baud, lift.parity, lift.stop_bits).map_err(|e| {
        Failed::new(
            format!("cannot open {path}: {e}"),
            "check the adapter is plugged in, the path (a udev link?) and that the user is in group dialout",
        )
    })?;
    let req = ReadInputRegisters {
        unit: lift.unit,
        start: 0,
        count: 1,
    };
    let answer = master
        .request(&req, lift.timeout.max(Duration::from_millis(200)))
        .await;
    match answer {
        Ok(Answer::Registers(_)) => Ok("the controller answers".into()),
        Ok(Answer::Exception(code)) => Ok(format!("the controller answers (exception {code} to a one-register read)")),
        Err(e) => Err(Failed::new(
            format!("unit {} did not answer: {e:?}", lift.unit),
            "check the A/B wiring, baud, parity and unit id; `towerlink scan PORT --modbus BAUD` lists the units that answer",
        )),
    }
}

/// Awaits probes concurrently, keeping their order.
async fn join_probes<F>(futures: Vec<F>) -> Vec<Result<String, Failed>>
where
    F: std::future::Future<Output = Result<String, Failed>> + Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.unwrap_or_else(|e| {
            Err(Failed::new(
                format!("the probe stopped: {e}"),
                "run check again",
            ))
        }));
    }
    out
}

async fn check_node(node: NodeConfig) -> Result<String, Failed> {
    let mut port =
        NodePort::open(&node.port, node.baud).map_err(|e| Failed::new(e.to_string(), e.fix()))?;
    let hello = port
        .hello(node.node_id, Instant::now() + NODE_LISTEN, |_| {})
        .await
        .map_err(|f| Failed::new(f.to_string(), f.fix(node.baud)))?;
    Ok(format!("opens; {}", describe_hello(&hello, &node.names)))
}

/// The store directory must exist and be writable, or be creatable.
fn check_store(path: &Path) -> Result<String, Failed> {
    if path.is_dir() {
        let probe = path.join(format!(".towerlink-check-{}", std::process::id()));
        return match std::fs::write(&probe, b"check") {
            Ok(()) => {
                let _ = std::fs::remove_file(&probe);
                Ok("writable".into())
            }
            Err(e) => Err(Failed::new(
                format!("not writable: {e}"),
                format!(
                    "give the agent's user the directory (chown towerlink {})",
                    path.display()
                ),
            )),
        };
    }
    if path.exists() {
        return Err(Failed::new(
            "is not a directory",
            "point [store] path at a directory",
        ));
    }
    let mut parent: Option<PathBuf> = path.parent().map(Path::to_owned);
    while let Some(dir) = parent {
        if dir.is_dir() {
            let meta_ro = std::fs::metadata(&dir)
                .map(|m| m.permissions().readonly())
                .unwrap_or(true);
            let probe = dir.join(format!(".towerlink-check-{}", std::process::id()));
            let writable = !meta_ro && std::fs::write(&probe, b"check").is_ok();
            let _ = std::fs::remove_file(&probe);
            return if writable {
                Ok(format!(
                    "does not exist yet; the agent will create it in {}",
                    dir.display()
                ))
            } else {
                Err(Failed::new(
                    format!("does not exist and {} is not writable", dir.display()),
                    format!(
                        "create it for the agent's user (install -d -o towerlink {})",
                        path.display()
                    ),
                ))
            };
        }
        parent = dir.parent().map(Path::to_owned);
    }
    Err(Failed::new(
        "has no existing parent directory",
        "use an absolute path such as /var/lib/towerlink",
    ))
}

/// TCP, then MQTT 3.1.1 CONNECT/CONNACK, each bounded by [`BROKER_TIMEOUT`].
pub fn check_broker(
    host: &str,
    port: u16,
    tls: bool,
    client_id: &str,
) -> Result<String, BrokerProbeError> {
    let addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|error| BrokerProbeError::Resolve {
            host: host.to_owned(),
            error,
        })?
        .collect();
    let mut last_error = None;
    let mut stream = None;
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, BROKER_TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_error = Some(e),
        }
    }
    let Some(mut stream) = stream else {
        let why = last_error
            .map(|e| e.to_string())
            .unwrap_or_else(|| "no address".into());
        return Err(BrokerProbeError::Tcp {
            host: host.to_owned(),
            port,
            why,
        });
    };
    if tls {
        return Ok("reachable over TCP (the TLS handshake is not checked by this build)".into());
    }
    let _ = stream.set_read_timeout(Some(BROKER_TIMEOUT));
    let _ = stream.set_write_timeout(Some(BROKER_TIMEOUT));
    stream
        .write_all(&connect_packet(client_id, 10))
        .map_err(BrokerProbeError::Send)?;
    let mut connack = [0u8; 4];
    stream
        .read_exact(&mut connack)
        .map_err(BrokerProbeError::NoConnack)?;
    if connack[0] != 0x20 || connack[1] != 0x02 {
        return Err(BrokerProbeError::NotMqtt(connack));
    }
    // A clean goodbye, so the broker does not log a lost client.
    let _ = stream.write_all(&[0xe0, 0x00]);
    match connack[3] {
        0 => Ok("reachable, MQTT CONNECT accepted".into()),
        code => Err(BrokerProbeError::Refused(code)),
    }
}

/// An MQTT 3.1.1 CONNECT with a clean session and no credentials.
fn connect_packet(client_id: &str, keep_alive_s: u16) -> Vec<u8> {
    let id = client_id.as_bytes();
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02];
    body.extend_from_slice(&keep_alive_s.to_be_bytes());
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id);
    let mut packet = vec![0x10];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        packet.push(byte);
        if len == 0 {
            break;
        }
    }
    packet.extend_from_slice(&body);
    packet
}

/// The reasons (each with its line and key) and fixes for a configuration that did not
/// load: one per problem in the file.
pub fn explain_config_error(e: &ConfigError) -> Vec<Failed> {
    match e {
        ConfigError::Read { source, .. } => {
            let fix = if source.kind() == std::io::ErrorKind::PermissionDenied {
                "make it readable by the agent's user (chmod 640, group towerlink)"
            } else {
                "give the right path with --config (the package installs /etc/towerlink/towerlink.toml)"
            };
            vec![Failed::new(format!("cannot read: {source}"), fix)]
        }
        ConfigError::Invalid { problems, .. } => problems.iter().map(explain_problem).collect(),
    }
}

/// One problem as `line L, key K: message` and its fix.
fn explain_problem(p: &Problem) -> Failed {
    let place = match (p.line, p.key.is_empty()) {
        (Some(l), false) => format!("line {l}, key {}: ", p.key),
        (Some(l), true) => format!("line {l}: "),
        (None, false) => format!("key {}: ", p.key),
        (None, true) => String::new(),
    };
    let fix = match p.kind {
        ProblemKind::Syntax => "fix the TOML at that line".to_owned(),
        ProblemKind::UnknownKey => {
            "remove or correct that key (README, configuration reference)".to_owned()
        }
        ProblemKind::MissingKey => {
            "add the missing key (README, configuration reference)".to_owned()
        }
        ProblemKind::WrongType => {
            "give the value the type shown (strings in quotes, numbers without)".to_owned()
        }
        ProblemKind::Rule if p.message.contains("invalid duration") => {
            "write durations like \"10s\", \"250ms\", \"5m\"".to_owned()
        }
        ProblemKind::Rule => fix_for_key(&p.key),
    };
    Failed::new(format!("{place}{}", p.message), fix)
}

/// The installer's fix for a value that parses but breaks a rule.
fn fix_for_key(key: &str) -> String {
    let last = key.rsplit('.').next().unwrap_or(key);
    if key.contains(".channels.") {
        return "correct the channel's filter setting as described (README, per-channel settings)"
            .into();
    }
    match last {
        "port" if key.starts_with("lift") => "give the lifts an RS-485 adapter of their own".into(),
        "id" => {
            "use 1-64 of a-z 0-9 . _ - starting with a letter or digit, unique per gateway".into()
        }
        "port" => "give each node its own serial port".into(),
        "baud" => "use a standard rate, usually 115200 (the node's setting)".into(),
        "url" if key.starts_with("mqtt") => {
            "write mqtts://host[:port] (or mqtt:// to a broker on this gateway)".into()
        }
        "topic_root" => {
            "use the default \"towerlink/v1\" unless the platform says otherwise".into()
        }
        "window" | "window_grace" | "interval" | "keep_alive" => {
            "choose a duration within the stated range".into()
        }
        _ => "correct the value as described (README, configuration reference)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_config_problem_gets_its_place_and_fix() {
        let e = Config::parse(
            "[gateway]\nid = \"GW\"\n[mqtt]\nurl = \"mqtt://127.0.0.1\"\nwindow = 1\n[store]\npath = \"/x\"\n[[node]]\nid = \"n\"\nport = \"/dev/x\"\nbaud = \"fast\"\nwindow = \"ten\"\n",
            "t",
        )
        .expect_err("broken");
        let explained = explain_config_error(&e);
        let reasons: Vec<&str> = explained.iter().map(|f| f.reason.as_str()).collect();
        assert_eq!(reasons.len(), 4, "{explained:#?}");
        assert!(reasons[0].starts_with("line 2, key gateway.id: \"GW\" is not a valid gateway id"));
        assert!(reasons[1].starts_with("line 5, key mqtt.window: unknown field `window`"));
        assert!(reasons[2].starts_with("line 11, key node[0].baud: invalid type"));
        assert!(reasons[3].starts_with("line 12, key node[0].window: invalid duration"));
        assert!(explained[1].fix.contains("remove or correct"));
        assert!(explained[3].fix.contains("durations like"));
    }

    #[test]
    fn broker_probe_failures_are_variants_with_their_fix() {
        // A port nothing listens on (bound, then closed).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let e = check_broker("127.0.0.1", port, false, "gw-check").expect_err("closed port");
        assert!(
            matches!(e, BrokerProbeError::Tcp { port: p, .. } if p == port),
            "{e}"
        );
        assert!(e
            .to_string()
            .starts_with(&format!("TCP connection to 127.0.0.1:{port} failed: ")));
        // A listener that closes at once does not speak MQTT.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let closer = std::thread::spawn(move || drop(listener.accept()));
        let e = check_broker("127.0.0.1", port, false, "gw-check").expect_err("not MQTT");
        closer.join().expect("closer");
        assert!(
            matches!(
                e,
                BrokerProbeError::NoConnack(_) | BrokerProbeError::Send(_)
            ),
            "{e}"
        );
        let refused = Failed::from(BrokerProbeError::Refused(5));
        assert_eq!(
            refused,
            Failed::new(
                "the broker refused the connection (not authorised)",
                "ask the platform team for this gateway's credentials"
            )
        );
        assert_eq!(
            BrokerProbeError::Refused(9).to_string(),
            "CONNACK return code 9"
        );
    }

    #[test]
    fn a_store_that_is_a_file_fails_with_its_fix() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("f");
        std::fs::write(&file, "x").expect("write");
        assert_eq!(
            check_store(&file),
            Err(Failed::new(
                "is not a directory",
                "point [store] path at a directory"
            ))
        );
        assert_eq!(check_store(dir.path()), Ok("writable".into()));
    }

    #[test]
    fn connect_packet_is_mqtt_311() {
        let p = connect_packet("gw-check", 10);
        assert_eq!(p[0], 0x10);
        assert_eq!(usize::from(p[1]), p.len() - 2);
        assert_eq!(&p[2..10], &[0, 4, b'M', b'Q', b'T', b'T', 4, 2]);
        assert_eq!(&p[10..12], &[0, 10]);
        assert_eq!(&p[14..], b"gw-check");
    }
}
