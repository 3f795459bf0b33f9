//! Commands from the platform (`{root}/{gw}/cmd`) and their replies (`{root}/{gw}/reply`).
//!
//! A command is `{"id": "...", "op": "...", ...}`. It is parsed strictly (size limit, unknown
//! fields refused), routed to the source or answered here, and answered exactly once through
//! the queue, so a reply has a `seq` and survives an outage like any event. A command that does
//! not parse, names an unknown op, device or channel, or would write to an elevator
//! controller is answered `ok: false` with a clear error and changes nothing. Commands are
//! rate-limited (`[commands] rate` and `burst`, a token bucket): one over the limit is answered
//! `ok: false`, "rate limited", without being carried out. Counters go to `health`.
//!
//! `config_get` answers the running configuration file and its SHA-256; `config_apply` is
//! checked here (fields, signature, `expect` against the running hash) and then handed to the
//! agent's supervisor ([`ApplyRequest`], see `app`), which validates, applies, verifies or
//! rolls back, and sends the one reply itself.
//!
//! Reading a command (size limits, [`CommandRequest`], the fields each op takes) is in
//! [`request`], the errors a reply carries in [`error`]; this module carries commands out.

pub mod config;
mod error;
mod request;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use towerlink_firmware::protocol::{AckResult, Op};

use crate::feed::{now_millis, rfc3339, Message, Renderer, Reply};
use crate::pipeline::{ChannelDirectory, PipelineRequest};
use crate::queue::Queue;
use crate::shutdown::Shutdown;
use crate::sources::config::ZeroAt;
use crate::sources::NodeRequest;
use config::CommandsConfig;
pub use error::{CommandError, ConfigOpError, DeviceError, LogsError};
use request::{check_fields, is_write_op, salvage_id};
pub use request::{
    parse, CommandRequest, ParseError, TargetError, MAX_CERT_INSTALL_BYTES, MAX_COMMAND_BYTES,
    MAX_CONFIG_APPLY_BYTES, OPS,
};

/// How long a node has to answer a forwarded command.
const NODE_TIMEOUT: Duration = Duration::from_secs(3);
/// Most bytes of log text in one `logs` reply (the oldest lines go first).
pub const MAX_LOG_REPLY_BYTES: usize = 48 * 1024;

/// The `logs` answer: the agent's recent lines from the journal when it runs under systemd
/// ([`crate::journal`]), else (or when `journalctl` fails) from the in-memory ring; `source`
/// says which answered (`journal_error` why the journal did not).
async fn logs(cmd: &CommandRequest) -> Result<Value, LogsError> {
    let since = match cmd.since.as_deref() {
        None => Duration::from_secs(600),
        Some(s) => humantime::parse_duration(s).map_err(|_| LogsError::Since(s.to_owned()))?,
    };
    let level = match cmd.level.as_deref().unwrap_or("info") {
        "error" => tracing::Level::ERROR,
        "warn" => tracing::Level::WARN,
        "info" => tracing::Level::INFO,
        "debug" => tracing::Level::DEBUG,
        "trace" => tracing::Level::TRACE,
        other => return Err(LogsError::Level(other.to_owned())),
    };
    let max = cmd.max_lines.unwrap_or(200);
    if !(1..=1000).contains(&max) {
        return Err(LogsError::MaxLines(max));
    }
    let since_ms =
        now_millis().saturating_sub(i64::try_from(since.as_millis()).unwrap_or(i64::MAX));
    let mut source = "memory";
    let mut journal_error = None;
    let mut lines: Vec<String> = Vec::new();
    if crate::journal::under_systemd(|k| std::env::var(k).ok()) {
        match crate::journal::query(since_ms.div_euclid(1000), level, max as usize).await {
            Ok(found) => {
                source = "journal";
                lines = found
                    .iter()
                    .map(|(ts, text)| format!("{} {text}", rfc3339(*ts)))
                    .collect();
            }
            Err(e) => {
                tracing::warn!(error = %e, "logs: the journal did not answer; answering from memory");
                journal_error = Some(e);
            }
        }
    }
    if source == "memory" {
        let found = crate::log_ring::global().query(since_ms, level, max as usize);
        lines = found
            .iter()
            .map(|l| format!("{} {}", rfc3339(l.ts), l.text))
            .collect();
    }
    let mut bytes: usize = lines.iter().map(String::len).sum();
    let mut cut = 0;
    while bytes > MAX_LOG_REPLY_BYTES && cut < lines.len() {
        bytes -= lines[cut].len();
        cut += 1;
    }
    let truncated = cut > 0;
    lines.drain(..cut);
    let mut result = json!({ "source": source, "lines": lines, "truncated": truncated });
    if let (Some(e), Some(obj)) = (journal_error, result.as_object_mut()) {
        obj.insert("journal_error".to_owned(), Value::from(e));
    }
    Ok(result)
}

/// The SHA-256 of a configuration file's bytes, 64 lowercase hex digits.
pub fn config_hash(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The configuration file the agent runs, as `config_get` answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningFile {
    /// Its text (it holds no secret: passwords and keys live in their own files, and the
    /// configuration refuses them inline).
    pub text: String,
    /// [`config_hash`] of the text.
    pub hash: String,
}

impl RunningFile {
    /// The file of `text`.
    pub fn new(text: String) -> RunningFile {
        let hash = config_hash(&text);
        RunningFile { text, hash }
    }
}

/// A `config_apply` that passed the checks here, for the supervisor to carry out.
#[derive(Debug)]
pub struct ApplyRequest {
    /// The command's id (the supervisor replies to it).
    pub id: String,
    /// The new configuration's text.
    pub toml: String,
}

/// What carrying out a command came to.
#[derive(Debug)]
pub enum Outcome {
    /// Answer this.
    Reply(Reply),
    /// Handed to the supervisor, which answers (a `config_apply`).
    HandedOff,
}

/// Command counters, shared with `health`.
#[derive(Debug, Default)]
pub struct CommandStats {
    /// Commands answered `ok: true`.
    pub accepted: AtomicU64,
    /// Commands answered `ok: false` (rate-limited ones included).
    pub refused: AtomicU64,
    /// Commands refused because they came faster than `[commands] rate` allows.
    pub rate_limited: AtomicU64,
}

impl CommandStats {
    /// Counts one reply.
    pub fn count(&self, reply: &Reply) {
        let counter = if reply.ok {
            &self.accepted
        } else {
            &self.refused
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the command handler can reach.
pub struct CommandContext {
    verifier: Option<crate::command_auth::CommandVerifier>,
    limiter: Mutex<crate::rate_limit::TokenBucket>,
    /// Counters.
    pub stats: Arc<CommandStats>,
    config_json: Value,
    nodes: HashMap<String, mpsc::Sender<NodeRequest>>,
    zero_at: HashMap<String, ZeroAt>,
    pipeline: mpsc::Sender<PipelineRequest>,
    /// Channel names per device, published by the pipeline.
    pub directory: ChannelDirectory,
    running: Option<RunningFile>,
    apply: Option<mpsc::Sender<ApplyRequest>>,
    queue: Option<Arc<Queue>>,
    client_cert: Option<ClientCert>,
}

/// Where `cert_install` puts a certificate, and whom it tells.
#[derive(Debug, Clone)]
pub struct ClientCert {
    /// `[mqtt] cert_file`.
    pub cert_file: std::path::PathBuf,
    /// `[mqtt] key_file`.
    pub key_file: std::path::PathBuf,
    /// The uplink's certificate state (woken to reconnect).
    pub state: Arc<crate::uplink::tls::renewal::TlsState>,
}

impl CommandContext {
    /// A context over the running configuration and the nodes' request channels.
    pub fn new(
        (gw, settings): (&str, &CommandsConfig),
        zero_at: Vec<(String, ZeroAt)>,
        config_json: Value,
        nodes: Vec<(String, mpsc::Sender<NodeRequest>)>,
        directory: ChannelDirectory,
        pipeline: mpsc::Sender<PipelineRequest>,
    ) -> CommandContext {
        CommandContext {
            // The key was checked when the configuration loaded.
            verifier: settings.public_key.as_deref().and_then(|key| {
                crate::command_auth::CommandVerifier::new(
                    gw,
                    key,
                    settings.max_skew.as_millis() as i64,
                )
                .ok()
            }),
            limiter: Mutex::new(crate::rate_limit::TokenBucket::new(
                settings.rate,
                settings.burst,
                Instant::now(),
            )),
            stats: Arc::default(),
            config_json,
            nodes: nodes.into_iter().collect(),
            zero_at: zero_at.into_iter().collect(),
            pipeline,
            directory,
            running: None,
            apply: None,
            client_cert: None,
            queue: None,
        }
    }

    /// The gateway's client certificate, for `cert_install`.
    pub fn with_client_cert(mut self, client_cert: ClientCert) -> CommandContext {
        self.client_cert = Some(client_cert);
        self
    }

    /// Counts into `stats` (shared with `health`).
    pub fn with_stats(mut self, stats: Arc<CommandStats>) -> CommandContext {
        self.stats = stats;
        self
    }

    /// The queue `resend` reads acknowledged records back from.
    pub fn with_queue(mut self, queue: Arc<Queue>) -> CommandContext {
        self.queue = Some(queue);
        self
    }

    /// The running configuration file (`config_get`) and where a `config_apply` goes.
    pub fn with_config_file(
        mut self,
        running: RunningFile,
        apply: mpsc::Sender<ApplyRequest>,
    ) -> CommandContext {
        self.running = Some(running);
        self.apply = Some(apply);
        self
    }

    /// Answers one command received at `now`: refused unanswered by the node if over the
    /// rate limit, else carried out; counted either way (a handed-off `config_apply` is
    /// counted by whoever answers it).
    pub async fn handle(&self, payload: &[u8], now: Instant) -> Option<Reply> {
        let admitted = self
            .limiter
            .lock()
            .map(|mut bucket| bucket.try_take(now))
            .unwrap_or(false);
        let reply = if admitted {
            match self.carry_out(payload).await {
                Outcome::Reply(reply) => reply,
                Outcome::HandedOff => return None,
            }
        } else {
            self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
            let id = match parse(payload) {
                Ok(cmd) => cmd.id,
                Err((id, _)) => id,
            };
            refuse(id, CommandError::RateLimited)
        };
        self.stats.count(&reply);
        Some(reply)
    }

    /// Carries out one command and returns its reply (no rate limit: see [`Self::handle`]).
    /// A `config_apply` handed off is answered "handed off" here (tests use this).
    pub async fn execute(&self, payload: &[u8]) -> Reply {
        match self.carry_out(payload).await {
            Outcome::Reply(reply) => reply,
            Outcome::HandedOff => Reply {
                id: salvage_id(payload),
                ok: true,
                error: None,
                result: Some(json!({ "handed_off": true })),
            },
        }
    }

    async fn carry_out(&self, payload: &[u8]) -> Outcome {
        let cmd = match parse(payload) {
            Ok(cmd) => cmd,
            Err((id, error)) => return Outcome::Reply(refuse(id, error.into())),
        };
        let id = cmd.id.clone();
        if let Some(verifier) = &self.verifier {
            if let Err(error) = verifier.verify(&cmd, now_millis()) {
                return Outcome::Reply(refuse(id, error.into()));
            }
        }
        match self.dispatch(cmd).await {
            Ok(Some(result)) => Outcome::Reply(Reply {
                id,
                ok: true,
                error: None,
                result: Some(result),
            }),
            Ok(None) => Outcome::HandedOff,
            Err(error) => Outcome::Reply(refuse(id, error)),
        }
    }

    /// Carries out `cmd`: `Ok(None)` when it was handed to the supervisor.
    async fn dispatch(&self, cmd: CommandRequest) -> Result<Option<Value>, CommandError> {
        check_fields(&cmd)?;
        let done = |v: Value| Ok(Some(v));
        match cmd.op.as_str() {
            "ping" => done(
                json!({ "pong": true, "ts": rfc3339(now_millis()), "agent": env!("CARGO_PKG_VERSION") }),
            ),
            "config" => done(self.config_json.clone()),
            "logs" => done(logs(&cmd).await?),
            "resend" => {
                let queue = self
                    .queue
                    .as_ref()
                    .ok_or(crate::queue::ResendError::Closing)?;
                let (from, to) = (cmd.from.unwrap_or_default(), cmd.to.unwrap_or_default());
                let report = queue.resend(from, to).await?;
                done(json!({
                    "resent": report.resent,
                    "pending": report.pending,
                    "later": report.deferred,
                    "not_held": report.not_held,
                }))
            }
            "config_get" => {
                let running = self.running.as_ref().ok_or(ConfigOpError::NoFile)?;
                done(json!({ "toml": running.text, "hash": running.hash }))
            }
            "config_apply" => {
                let (Some(running), Some(apply)) = (&self.running, &self.apply) else {
                    return Err(ConfigOpError::NoFile.into());
                };
                let expect = cmd.expect.unwrap_or_default();
                if !expect.eq_ignore_ascii_case(&running.hash) {
                    return Err(ConfigOpError::Stale {
                        expect,
                        running: running.hash.clone(),
                    }
                    .into());
                }
                apply
                    .try_send(ApplyRequest {
                        id: cmd.id,
                        toml: cmd.toml.unwrap_or_default(),
                    })
                    .map_err(|_| ConfigOpError::Busy)?;
                Ok(None)
            }
            "cert_install" => done(self.cert_install(cmd.cert.unwrap_or_default()).await?),
            "identify" => {
                let dev = cmd.dev.as_deref().unwrap_or_default();
                let result = self.ask_node(dev, Op::Identify).await?;
                done(ack_to_result(result)?)
            }
            "zero" => {
                let dev = cmd.dev.as_deref().unwrap_or_default();
                let ch = cmd.ch.as_deref().unwrap_or_default();
                let channel = self.channel_id(dev, ch)?;
                if self.zero_at.get(dev) == Some(&ZeroAt::Gateway) {
                    return done(self.zero_at_gateway(dev, ch).await?);
                }
                match self.ask_node(dev, Op::Zero { channel }).await? {
                    AckResult::OK => done(json!({ "ack": "ok", "at": "node" })),
                    // The node cannot tare: the gateway keeps the offset instead.
                    AckResult::UNSUPPORTED => done(self.zero_at_gateway(dev, ch).await?),
                    other => done(ack_to_result(other)?),
                }
            }
            op if is_write_op(op) => Err(CommandError::WriteOp(op.to_owned())),
            op => Err(CommandError::UnknownOp(op.to_owned())),
        }
    }

    /// `cert_install`: checks the certificate against the pending key and writes
    /// `<cert_file>.new` (off the async threads), then wakes the uplink to try it.
    async fn cert_install(&self, pem: String) -> Result<Value, CommandError> {
        use crate::uplink::tls::renewal::{days_left, install_certificate, InstallError};
        let Some(c) = self.client_cert.clone() else {
            return Err(InstallError::NoClientCert.into());
        };
        let now_s = now_millis() / 1000;
        let (cert_file, key_file) = (c.cert_file.clone(), c.key_file.clone());
        let installed = tokio::task::spawn_blocking(move || {
            install_certificate(&cert_file, &key_file, &pem, now_s)
        })
        .await
        .map_err(|e| InstallError::Write {
            path: c.cert_file.display().to_string(),
            reason: e.to_string(),
        })??;
        tracing::info!(file = %installed.path.display(), subject = %installed.subject, "cert_install: a renewed certificate waits for its first session");
        c.state.installed();
        Ok(json!({
            "installed": installed.path.display().to_string(),
            "subject": installed.subject,
            "not_after": rfc3339(installed.not_after.saturating_mul(1000)),
            "days_left": days_left(installed.not_after, now_s),
            "renewal": "pending",
        }))
    }

    fn channel_id(&self, dev: &str, ch: &str) -> Result<u8, DeviceError> {
        if !self.nodes.contains_key(dev) && !self.zero_at.contains_key(dev) {
            return Err(DeviceError::Unknown(dev.to_owned()));
        }
        let channels = self
            .directory
            .channels(dev)
            .ok_or_else(|| DeviceError::NotAnnounced(dev.to_owned()))?;
        channels
            .iter()
            .find(|c| c.name == ch)
            .map(|c| c.id)
            .ok_or_else(|| {
                let names: Vec<&str> = channels.iter().map(|c| c.name.as_str()).collect();
                DeviceError::UnknownChannel {
                    dev: dev.to_owned(),
                    ch: ch.to_owned(),
                    known: names.join(", "),
                }
            })
    }

    async fn zero_at_gateway(&self, dev: &str, ch: &str) -> Result<Value, DeviceError> {
        let (tx, rx) = oneshot::channel();
        self.pipeline
            .send(PipelineRequest::Zero {
                dev: dev.to_owned(),
                ch: ch.to_owned(),
                reply: tx,
            })
            .await
            .map_err(|_| DeviceError::PipelineStopping)?;
        let zero = rx.await.map_err(|_| DeviceError::PipelineStopping)??;
        Ok(json!({ "at": "gateway", "zero": zero }))
    }

    async fn ask_node(&self, dev: &str, op: Op) -> Result<AckResult, DeviceError> {
        let tx = self
            .nodes
            .get(dev)
            .ok_or_else(|| DeviceError::Unknown(dev.to_owned()))?;
        let (reply_tx, reply_rx) = oneshot::channel();
        tx.try_send(NodeRequest {
            op,
            reply: reply_tx,
        })
        .map_err(|_| DeviceError::Busy(dev.to_owned()))?;
        match tokio::time::timeout(NODE_TIMEOUT, reply_rx).await {
            Ok(Ok(result)) => Ok(result?),
            Ok(Err(_)) => Err(DeviceError::NoAnswer(dev.to_owned())),
            Err(_) => Err(DeviceError::Timeout {
                dev: dev.to_owned(),
                secs: NODE_TIMEOUT.as_secs(),
            }),
        }
    }
}

fn ack_to_result(result: AckResult) -> Result<Value, DeviceError> {
    if result == AckResult::OK {
        Ok(json!({ "ack": result.name() }))
    } else {
        Err(DeviceError::Refused(result.name()))
    }
}

/// The `ok: false` reply to command `id`.
pub fn refuse(id: String, error: CommandError) -> Reply {
    refusal(id, error.to_string())
}

/// The `ok: false` reply to command `id` with this reason.
pub fn refusal(id: String, error: String) -> Reply {
    Reply {
        id,
        ok: false,
        error: Some(error),
        result: None,
    }
}

/// Answers commands until shutdown.
pub async fn run(
    context: CommandContext,
    mut commands: mpsc::Receiver<Vec<u8>>,
    queue: Arc<Queue>,
    renderer: Renderer,
    mut shutdown: Shutdown,
) {
    loop {
        let payload = tokio::select! {
            p = commands.recv() => match p { Some(p) => p, None => break },
            _ = shutdown.recv() => break,
        };
        let Some(reply) = context.handle(&payload, Instant::now()).await else {
            continue;
        };
        if !reply.ok {
            tracing::warn!(id = %reply.id, error = reply.error.as_deref().unwrap_or(""), "command refused");
        }
        queue.push(renderer.render(&Message::Reply(reply))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn context() -> CommandContext {
        context_with("")
    }

    fn context_with(extra: &str) -> CommandContext {
        let config = Config::parse(
            &format!("[gateway]\nid = \"gw\"\n[mqtt]\nurl = \"mqtt://127.0.0.1\"\n[store]\npath = \"/tmp/x\"\n[[node]]\nid = \"p1\"\nport = \"/dev/null\"\n{extra}"),
            "t",
        )
        .expect("config");
        let (tx, _rx) = mpsc::channel(1);
        let (ptx, _prx) = mpsc::channel(1);
        CommandContext::new(
            config.command_settings(),
            config.zero_at(),
            config.redacted(),
            vec![("p1".into(), tx)],
            ChannelDirectory::default(),
            ptx,
        )
    }

    async fn run_one(payload: &str) -> Reply {
        context().execute(payload.as_bytes()).await
    }

    #[tokio::test]
    async fn ping_and_config_answer() {
        let r = run_one(r#"{"id":"a1","op":"ping"}"#).await;
        assert!(r.ok, "{r:?}");
        assert_eq!(r.id, "a1");
        let r = run_one(r#"{"id":"a2","op":"config"}"#).await;
        assert!(r.ok);
        assert_eq!(
            r.result.as_ref().and_then(|v| v["gateway"]["id"].as_str()),
            Some("gw")
        );
    }

    #[tokio::test]
    async fn resend_takes_a_range_and_answers_from_the_queue() {
        let dir = tempfile::tempdir().expect("tempdir");
        let queue = Queue::open(crate::queue::store::StoreOptions::new(dir.path())).expect("open");
        let context = context().with_queue(queue);
        let r = context
            .execute(br#"{"id":"r1","op":"resend","from":5,"to":9}"#)
            .await;
        assert!(r.ok, "{r:?}");
        assert_eq!(
            r.result,
            Some(json!({"resent":[],"pending":[],"later":[],"not_held":[[5,9]]}))
        );
        for (cmd, says) in [
            (r#"{"id":"r2","op":"resend","from":5}"#, "needs from and to"),
            (
                r#"{"id":"r3","op":"resend","from":9,"to":5}"#,
                "not a range",
            ),
            (
                r#"{"id":"r4","op":"resend","from":0,"to":5}"#,
                "not a range",
            ),
            (
                r#"{"id":"r5","op":"resend","from":1,"to":20000}"#,
                "at most 10000",
            ),
            (r#"{"id":"r6","op":"ping","from":1}"#, "takes no from"),
            (r#"{"id":"r7","op":"resend","from":-1,"to":5}"#, "malformed"),
        ] {
            let r = context.execute(cmd.as_bytes()).await;
            assert!(!r.ok, "{cmd}: {r:?}");
            let e = r.error.unwrap_or_default();
            assert!(e.contains(says), "{cmd}: {e}");
        }
        // Without a queue (a context for tests of other ops) it is refused, not a panic.
        let r = run_one(r#"{"id":"r8","op":"resend","from":1,"to":2}"#).await;
        assert!(!r.ok, "{r:?}");
    }

    #[tokio::test]
    async fn every_refusal_is_clear_and_keeps_the_id() {
        let cases = [
            (r#"{"id":"b1","op":"reboot"}"#, "b1", "unknown op"),
            (
                r#"{"id":"b2","op":"ping","extra":1}"#,
                "b2",
                "unknown field",
            ),
            (
                r#"{"id":"b3","op":"zero","dev":"nope","ch":"strain"}"#,
                "b3",
                "unknown device",
            ),
            (
                r#"{"id":"b4","op":"zero","dev":"p1","ch":"strain"}"#,
                "b4",
                "not announced",
            ),
            (
                r#"{"id":"b5","op":"write_register","dev":"lift-2"}"#,
                "b5",
                "never writes",
            ),
            (
                r#"{"id":"b6","op":"zero","dev":"p1"}"#,
                "b6",
                "needs dev and ch",
            ),
            (r#"not json"#, "", "malformed"),
            (r#"{"op":"ping"}"#, "", "missing field"),
        ];
        for (payload, id, needle) in cases {
            let r = run_one(payload).await;
            assert!(!r.ok, "{payload} was accepted");
            assert_eq!(r.id, id, "{payload}");
            let e = r.error.unwrap_or_default();
            assert!(e.contains(needle), "{payload}: {e}");
        }
        let big = format!(
            r#"{{"id":"c","op":"ping","pad":"{}"}}"#,
            "x".repeat(MAX_COMMAND_BYTES)
        );
        let r = run_one(&big).await;
        assert!(r.error.unwrap_or_default().contains("too large"));
    }

    #[tokio::test]
    async fn an_unknown_channel_is_refused_naming_the_known_ones() {
        let ctx = context();
        ctx.directory.publish(
            "p1",
            vec![crate::pipeline::Channel {
                id: 0,
                name: "strain".into(),
                quantity: towerlink_firmware::protocol::Quantity::Strain,
                rate_hz: 10,
            }],
        );
        let r = ctx
            .execute(br#"{"id":"u1","op":"zero","dev":"p1","ch":"tilt_q"}"#)
            .await;
        let e = r.error.unwrap_or_default();
        assert!(
            !r.ok && e.contains("unknown channel") && e.contains("strain"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn with_a_public_key_only_signed_commands_are_carried_out() {
        use ed25519_dalek::{Signer, SigningKey};
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let platform = SigningKey::from_bytes(&[3; 32]);
        let ctx = context_with(&format!(
            "[commands]\npublic_key = \"{}\"\n",
            hex(platform.verifying_key().as_bytes())
        ));
        let r = ctx.execute(br#"{"id":"s1","op":"ping"}"#).await;
        assert!(!r.ok && r.error.unwrap_or_default().contains("unsigned"));
        let ts = now_millis();
        let mut cmd = CommandRequest {
            id: "s2".into(),
            op: "ping".into(),
            dev: None,
            ch: None,
            ts: Some(ts),
            sig: None,
            ..CommandRequest::default()
        };
        let text = crate::command_auth::signed_text("gw", &cmd, ts);
        cmd.sig = Some(hex(&platform.sign(text.as_bytes()).to_bytes()));
        let payload = json!({"id": cmd.id, "op": cmd.op, "ts": ts, "sig": cmd.sig}).to_string();
        let r = ctx.execute(payload.as_bytes()).await;
        assert!(r.ok, "{r:?}");
        let r = ctx.execute(payload.as_bytes()).await;
        assert!(!r.ok && r.error.unwrap_or_default().contains("replayed"));
        assert!(Config::parse(
            "[gateway]\nid = \"gw\"\n[mqtt]\nurl = \"mqtt://127.0.0.1\"\n[store]\npath = \"/x\"\n[commands]\npublic_key = \"abc\"\n",
            "t"
        )
        .is_err_and(|e| e.to_string().contains("commands.public_key")));
    }

    #[tokio::test]
    async fn commands_over_the_rate_are_refused_and_counted() {
        let ctx = context_with("[commands]\nrate = 2\nburst = 3\n");
        let t0 = Instant::now();
        let mut oks = 0;
        for i in 0..5 {
            let r = ctx
                .handle(format!(r#"{{"id":"r{i}","op":"ping"}}"#).as_bytes(), t0)
                .await
                .expect("a reply");
            assert_eq!(r.id, format!("r{i}"));
            if r.ok {
                oks += 1;
            } else {
                assert!(r.error.unwrap_or_default().contains("rate limited"));
            }
        }
        assert_eq!(oks, 3);
        // Half a second later (2/s): one more; a malformed one still counts against the rate.
        let t1 = t0 + Duration::from_millis(500);
        assert!(ctx
            .handle(br#"{"id":"r5","op":"ping"}"#, t1)
            .await
            .is_some_and(|r| r.ok));
        assert!(!ctx
            .handle(br#"{"id":"r6","op":"ping"}"#, t1)
            .await
            .is_some_and(|r| r.ok));
        let t2 = t1 + Duration::from_millis(500);
        let r = ctx.handle(b"not json", t2).await.expect("a reply");
        assert!(r.error.unwrap_or_default().contains("malformed"));
        let s = &ctx.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        assert_eq!(
            (get(&s.accepted), get(&s.refused), get(&s.rate_limited)),
            (4, 4, 3)
        );
    }
}
