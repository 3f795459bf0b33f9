//! `towerlink audit`: the platform's verifier of a feed. It subscribes to `{root}/+/#` (or,
//! with `--share GROUP`, to the MQTT shared subscription `$share/GROUP/{root}/+/#`, so that
//! several auditors split the messages of a fleet), checks every message against the feed's
//! JSON Schemas carried in the binary ([`schemas`]) and keeps per gateway what [`state`]
//! tracks (seq gaps, evictions, duplicates, open events, state, unsynced clocks, latency).
//!
//! The session is opened like the agent's ([`SessionSpec::for_tool`]: the same TLS files,
//! client certificate, credentials and protocol), under the client id
//! `towerlink-audit-<pid>`. On a terminal a table is redrawn every second; with `--json` one
//! JSON object is printed at the end. After `--duration` the auditor waits up to `--grace`
//! for the `seq` still in flight below the highest it has seen (so a message published just
//! before the end is not taken for a gap), taking nothing new.
//!
//! Exit codes: 0 (the report was made), 1 with `--strict` when a gateway has a gap or an
//! invalid message, 2 when the options are wrong or the broker cannot be reached.

pub mod schemas;
pub mod state;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::feed::now_millis;
use crate::uplink::config::{MqttConfig, MqttProtocol};
use crate::uplink::session::{Event, SessionSpec};
use crate::values::{Violation, Violations};
use state::Audit;

/// The session options `towerlink audit` shares with the agent's `[mqtt]` section.
#[derive(Debug, Clone, clap::Args)]
pub struct SessionArgs {
    /// PEM file of the CA that signed the broker's certificate (mqtts://).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (mTLS), with --key-file.
    #[arg(long)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of --cert-file.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// MQTT user name.
    #[arg(long)]
    pub username: Option<String>,
    /// File holding the MQTT password (one line); needs --username.
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// Allow plain mqtt:// to a host that is not loopback.
    #[arg(long)]
    pub allow_insecure: bool,
    /// MQTT version: 5 (default; needed for --share on most brokers) or 3.1.1.
    #[arg(long, default_value = "5", value_parser = parse_protocol)]
    pub protocol: MqttProtocol,
}

/// `--protocol` that is neither `5` nor `3.1.1`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?}: the protocol is 5 or 3.1.1")]
pub struct UnknownProtocol(pub String);

fn parse_protocol(s: &str) -> Result<MqttProtocol, UnknownProtocol> {
    match s {
        "5" => Ok(MqttProtocol::V5),
        "3.1.1" => Ok(MqttProtocol::V311),
        _ => Err(UnknownProtocol(s.to_owned())),
    }
}

/// Options of `towerlink audit` that the agent's `[mqtt]` rules refuse, each named by its
/// option (`--broker: ...; --root: ...`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(|p| format!("{}: {}", p.key, p.message)).collect::<Vec<_>>().join("; "))]
pub struct OptionsError(pub Vec<Violation>);

/// What `towerlink audit` was asked to do.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub broker: String,
    /// The topic root.
    pub root: String,
    /// How long to listen.
    pub duration: Duration,
    /// How long to wait after `duration` for `seq` in flight.
    pub grace: Duration,
    /// One JSON object at the end instead of the table.
    pub json: bool,
    /// Shared-subscription group.
    pub share: Option<String>,
    /// Exit code 1 on a gap or an invalid message.
    pub strict: bool,
    /// TLS and credentials.
    pub session: SessionArgs,
}

/// The `[mqtt]` section the agent would have for these options (checked like the agent's).
fn mqtt_config(o: &AuditOptions) -> Result<MqttConfig, OptionsError> {
    let s = &o.session;
    let mqtt = MqttConfig {
        url: o.broker.clone(),
        topic_root: o.root.clone(),
        keep_alive: Duration::from_secs(30),
        data_qos: 1,
        allow_insecure: s.allow_insecure,
        max_inflight: 100,
        protocol: s.protocol,
        max_packet: 256 * 1024,
        batch: Duration::ZERO,
        ca_file: s.ca_file.clone(),
        cert_file: s.cert_file.clone(),
        key_file: s.key_file.clone(),
        username: s.username.clone(),
        password_file: s.password_file.clone(),
        password: None,
    };
    let mut v = Violations::new("");
    mqtt.check(&mut v);
    if let Some(group) = &o.share {
        if group.is_empty() || group.contains(['/', '+', '#', '\0']) {
            v.add(
                "share",
                format!("{group:?}: a share group is one topic level without '+' or '#'"),
            );
        }
    }
    let problems: Vec<Violation> = v
        .into_vec()
        .into_iter()
        .map(|p| {
            let key = match p.key.as_str() {
                "url" => "--broker",
                "topic_root" => "--root",
                "share" => "--share",
                other => other,
            };
            Violation {
                key: key.to_owned(),
                message: p.message,
            }
        })
        .collect();
    if problems.is_empty() {
        Ok(mqtt)
    } else {
        Err(OptionsError(problems))
    }
}

/// The subscription of these options.
pub fn filter(root: &str, share: Option<&str>) -> String {
    match share {
        Some(group) => format!("$share/{group}/{root}/+/#"),
        None => format!("{root}/+/#"),
    }
}

/// Runs the audit; returns the exit code.
pub async fn run(o: AuditOptions) -> u8 {
    let mqtt = match mqtt_config(&o) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("towerlink audit: {e}");
            return 2;
        }
    };
    let schemas = match schemas::FeedSchemas::embedded() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("towerlink audit: {e}");
            return 2;
        }
    };
    let spec = match SessionSpec::for_tool("towerlink", &mqtt, "audit") {
        Ok(s) => s,
        Err(e) => {
            eprintln!("towerlink audit: {e}");
            return 2;
        }
    };
    let mut audit = Audit::new(&o.root, schemas);
    let filter = filter(&o.root, o.share.as_deref());
    let live = !o.json && std::io::stdout().is_terminal();
    let mut screen = Screen::default();
    let end = Instant::now() + o.duration;
    let mut last_draw = Instant::now();
    let mut reconnects = 0u64;
    let (tx, mut rx) = mpsc::channel::<Pumped>(4096);
    let pump = tokio::spawn(pump(spec, filter, tx));
    let mut frozen_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if frozen_at.is_none() && now >= end {
            audit.freeze();
            frozen_at = Some(now);
        }
        if let Some(t) = frozen_at {
            // A shared auditor sees only its share: its holes are the others' messages.
            if o.share.is_some() || !audit.has_gaps() || now >= t + o.grace {
                break;
            }
        }
        let until = match frozen_at {
            Some(t) => t + o.grace,
            None => end.min(now + Duration::from_secs(1)),
        };
        match tokio::time::timeout_at(until, rx.recv()).await {
            Err(_) => {}
            Ok(Some(Pumped::Message(topic, payload, receipt))) => {
                audit.on_message(&topic, &payload, receipt);
            }
            Ok(Some(Pumped::Reconnected)) => reconnects += 1,
            Ok(Some(Pumped::Fatal(e))) => {
                eprintln!("towerlink audit: {e}");
                return 2;
            }
            Ok(None) => {
                eprintln!("towerlink audit: the MQTT session ended");
                return 2;
            }
        }
        if live && last_draw.elapsed() >= Duration::from_secs(1) {
            last_draw = Instant::now();
            let _ = screen.draw(&mut std::io::stdout().lock(), &table(&audit));
        }
    }
    // The pump sees the channel closed, disconnects and ends (bounded).
    drop(rx);
    let _ = tokio::time::timeout(Duration::from_secs(2), pump).await;
    let shared = o.share.is_some();
    let mut out = std::io::stdout().lock();
    let written = if o.json {
        let mut report = audit.report(shared);
        report["reconnects"] = serde_json::json!(reconnects);
        report["duration_s"] = serde_json::json!(o.duration.as_secs_f64());
        writeln!(out, "{report}")
    } else if live {
        screen.draw(&mut out, &table(&audit))
    } else {
        table(&audit)
            .iter()
            .try_for_each(|line| writeln!(out, "{line}"))
    };
    if written.and_then(|()| out.flush()).is_err() {
        eprintln!("towerlink audit: cannot write the report");
    }
    let bad = audit
        .gateways()
        .values()
        .any(|g| g.invalid > 0 || (!shared && !g.missing().gaps.is_empty()));
    u8::from(o.strict && bad)
}

/// What the session task hands the audit.
#[derive(Debug)]
enum Pumped {
    /// A message: topic, payload, receipt time (Unix milliseconds).
    Message(String, Vec<u8>, f64),
    /// A new session after a lost one.
    Reconnected,
    /// The broker cannot be reached at all.
    Fatal(String),
}

/// Owns the session: polls it (cancelled mid-packet only at the end), stamps every message with its
/// receipt time, reconnects after a loss (clean sessions: what was published meanwhile is
/// lost to this auditor and shows as gaps; the report counts the reconnects). Ends, with a
/// DISCONNECT, when the audit drops its receiver.
async fn pump(spec: SessionSpec, filter: String, tx: mpsc::Sender<Pumped>) {
    let (mut client, mut eventloop) = spec.connect();
    let mut connected = false;
    if client
        .try_subscribe(&filter, rumqttc::QoS::AtLeastOnce)
        .is_err()
    {
        let _ = tx
            .send(Pumped::Fatal("cannot queue the subscription".to_owned()))
            .await;
        return;
    }
    loop {
        let polled = tokio::select! {
            // The audit is over: what is half-read no longer matters.
            () = tx.closed() => break,
            polled = eventloop.poll() => polled,
        };
        let sent = match polled {
            Ok(Event::ConnAck) => {
                connected = true;
                true
            }
            Ok(Event::SubAck) => {
                tracing::info!("towerlink audit: subscribed to {filter} at {}", spec.broker);
                true
            }
            Ok(Event::Message { topic, payload }) => tx
                .send(Pumped::Message(topic, payload, now_millis() as f64))
                .await
                .is_ok(),
            Ok(_) => !tx.is_closed(),
            Err(e) => {
                if !connected {
                    let hint = crate::uplink::tls::hint(&e.to_string())
                        .map(|h| format!(" — {h}"))
                        .unwrap_or_default();
                    let _ = tx
                        .send(Pumped::Fatal(format!(
                            "cannot reach the broker at {}: {e}{hint}",
                            spec.broker
                        )))
                        .await;
                    return;
                }
                tracing::warn!("towerlink audit: connection lost ({e}); reconnecting");
                tokio::time::sleep(Duration::from_secs(1)).await;
                let (c, l) = spec.connect();
                if c.try_subscribe(&filter, rumqttc::QoS::AtLeastOnce).is_err() {
                    return;
                }
                client = c;
                eventloop = l;
                tx.send(Pumped::Reconnected).await.is_ok()
            }
        };
        if !sent {
            break;
        }
    }
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Disconnecting) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// The table: a header and one line per gateway.
pub fn table(audit: &Audit) -> Vec<String> {
    let mut lines = vec![format!(
        "{:<24} {:>8} {:>7} {:>21} {:>8} {:>7} {:>5} {:>5} {:<8} {:>8} {:>9} {:>9}",
        "gateway",
        "msgs",
        "invalid",
        "seq",
        "missing",
        "evicted",
        "dups",
        "open",
        "state",
        "unsynced",
        "p50 ms",
        "p99 ms"
    )];
    for (gw, g) in audit.gateways() {
        let m = g.missing();
        let seq = g
            .seqs
            .bounds()
            .map_or("-".to_owned(), |(a, b)| format!("{a}..{b}"));
        let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
        lines.push(format!(
            "{gw:<24} {:>8} {:>7} {seq:>21} {:>8} {:>7} {:>5} {:>5} {:<8} {:>8} {:>9} {:>9}",
            g.messages,
            g.invalid,
            m.missing,
            m.evicted,
            g.duplicates,
            g.open_events().len(),
            g.state.as_deref().unwrap_or("-"),
            g.unsynced,
            ms(g.latency.quantile(0.5)),
            ms(g.latency.quantile(0.99)),
        ));
        for reason in &g.reasons {
            lines.push(format!("  invalid: {reason}"));
        }
        if !m.gaps.is_empty() {
            let gaps: Vec<String> = m.gaps.iter().map(|(a, b)| format!("{a}..{b}")).collect();
            lines.push(format!("  gaps: {}", gaps.join(", ")));
        }
    }
    lines
}

/// A table redrawn in place on a terminal.
#[derive(Debug, Default)]
struct Screen {
    drawn: usize,
}

impl Screen {
    fn draw(&mut self, out: &mut impl Write, lines: &[String]) -> std::io::Result<()> {
        if self.drawn > 0 {
            write!(out, "\x1b[{}A", self.drawn)?;
        }
        for line in lines {
            write!(out, "\r\x1b[2K{line}\n")?;
        }
        // Lines left from a longer table.
        for _ in lines.len()..self.drawn {
            write!(out, "\r\x1b[2K\n")?;
        }
        self.drawn = self.drawn.max(lines.len());
        out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> AuditOptions {
        AuditOptions {
            broker: "mqtt://127.0.0.1:1883".to_owned(),
            root: "towerlink/v1".to_owned(),
            duration: Duration::from_secs(1),
            grace: Duration::from_secs(1),
            json: true,
            share: None,
            strict: false,
            session: SessionArgs {
                ca_file: None,
                cert_file: None,
                key_file: None,
                username: None,
                password_file: None,
                allow_insecure: false,
                protocol: MqttProtocol::V5,
            },
        }
    }

    #[test]
    fn options_are_checked_like_the_agents_mqtt_section() {
        assert!(mqtt_config(&options()).is_ok());
        let mut o = options();
        o.broker = "mqtt://broker.example:1883".to_owned();
        let e = mqtt_config(&o).expect_err("plain to a remote host");
        assert!(
            matches!(&e, OptionsError(v) if v.len() == 1 && v[0].key == "--broker"),
            "{e}"
        );
        let e = e.to_string();
        assert!(
            e.starts_with("--broker:") && e.contains("allow_insecure"),
            "{e}"
        );
        assert_eq!(parse_protocol("4"), Err(UnknownProtocol("4".into())));
        o.session.allow_insecure = true;
        assert!(mqtt_config(&o).is_ok());
        let mut o = options();
        o.broker = "mqtts://127.0.0.1:8883".to_owned();
        assert!(mqtt_config(&o)
            .expect_err("no CA")
            .to_string()
            .contains("ca_file"));
        let mut o = options();
        o.root = "a/+/b".to_owned();
        assert!(mqtt_config(&o)
            .expect_err("root")
            .to_string()
            .starts_with("--root"));
        let mut o = options();
        o.share = Some("g/1".to_owned());
        assert!(mqtt_config(&o)
            .expect_err("group")
            .to_string()
            .starts_with("--share"));
    }

    #[test]
    fn the_filter_is_shared_on_request() {
        assert_eq!(filter("towerlink/v1", None), "towerlink/v1/+/#");
        assert_eq!(
            filter("towerlink/v1", Some("auditors")),
            "$share/auditors/towerlink/v1/+/#"
        );
    }

    #[test]
    fn the_screen_redraws_in_place() {
        let mut s = Screen::default();
        let mut out = Vec::new();
        s.draw(&mut out, &["a".to_owned(), "b".to_owned()])
            .expect("draw");
        s.draw(&mut out, &["c".to_owned()]).expect("draw");
        let text = String::from_utf8(out).expect("utf8");
        assert_eq!(
            text,
            "\r\x1b[2Ka\n\r\x1b[2Kb\n\x1b[2A\r\x1b[2Kc\n\r\x1b[2K\n"
        );
    }
}
