//! Commands from the platform (`{root}/{gw}/cmd`) and their replies (`{root}/{gw}/reply`).
//!
//! A command is `{"id": "...", "op": "...", ...}`. It is parsed strictly (size limit, unknown
//! fields refused), routed to the source or answered here, and answered exactly once through
//! the queue, so a reply has a `seq` and survives an outage like any event. A command that does
//! not parse, names an unknown op, device or channel, or would write to an elevator
//! controller is answered `ok: false` with a clear error and changes nothing. Commands are
//! rate-limited (`[commands] rate` and `burst`, a token bucket): one over the limit is answered
//! `ok: false`, "rate limited", without being carried out. Counters go to `health`.

pub mod config;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use towerlink_firmware::protocol::{AckResult, Op};

use crate::feed::{now_millis, rfc3339, Message, Renderer, Reply};
use crate::pipeline::{ChannelDirectory, PipelineRequest};
use crate::queue::Queue;
use crate::shutdown::Shutdown;
use crate::sources::config::ZeroAt;
use crate::sources::NodeRequest;
use config::CommandsConfig;

/// Largest command payload accepted.
pub const MAX_COMMAND_BYTES: usize = 4096;
/// How long a node has to answer a forwarded command.
const NODE_TIMEOUT: Duration = Duration::from_secs(3);
/// The ops this agent knows.
pub const OPS: [&str; 4] = ["ping", "identify", "zero", "config"];

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandRequest {
    /// Correlation id, echoed in the reply.
    pub id: String,
    /// Operation.
    pub op: String,
    /// Target device, for device ops.
    #[serde(default)]
    pub dev: Option<String>,
    /// Target channel (feed name), for channel ops.
    #[serde(default)]
    pub ch: Option<String>,
    /// Unix milliseconds when the platform signed it (signed commands only).
    #[serde(default)]
    pub ts: Option<i64>,
    /// Ed25519 signature, hex (signed commands only; see [`crate::command_auth`]).
    #[serde(default)]
    pub sig: Option<String>,
}

/// Parses a command payload; on failure returns the id (if one could be read) and the error.
pub fn parse(payload: &[u8]) -> Result<CommandRequest, (String, String)> {
    if payload.len() > MAX_COMMAND_BYTES {
        return Err((
            String::new(),
            format!(
                "command too large: {} bytes (limit {MAX_COMMAND_BYTES})",
                payload.len()
            ),
        ));
    }
    match serde_json::from_slice::<CommandRequest>(payload) {
        Ok(cmd) if cmd.id.is_empty() || cmd.id.len() > 128 => {
            Err((String::new(), "id must be 1..=128 characters".into()))
        }
        Ok(cmd) => Ok(cmd),
        Err(e) => {
            // Echo the id when the rest is wrong, so the platform can match the refusal.
            let id = serde_json::from_slice::<Value>(payload)
                .ok()
                .and_then(|v| {
                    v.get("id")
                        .and_then(Value::as_str)
                        .map(|s| s.chars().take(128).collect())
                })
                .unwrap_or_default();
            Err((id, format!("malformed command: {e}")))
        }
    }
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
        }
    }

    /// Counts into `stats` (shared with `health`).
    pub fn with_stats(mut self, stats: Arc<CommandStats>) -> CommandContext {
        self.stats = stats;
        self
    }

    /// Answers one command received at `now`: refused unanswered by the node if over the
    /// rate limit, else carried out; counted either way.
    pub async fn handle(&self, payload: &[u8], now: Instant) -> Reply {
        let admitted = self
            .limiter
            .lock()
            .map(|mut bucket| bucket.try_take(now))
            .unwrap_or(false);
        let reply = if admitted {
            self.execute(payload).await
        } else {
            self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
            let id = match parse(payload) {
                Ok(cmd) => cmd.id,
                Err((id, _)) => id,
            };
            refuse(
                id,
                "rate limited: too many commands; send it again later".into(),
            )
        };
        let counter = if reply.ok {
            &self.stats.accepted
        } else {
            &self.stats.refused
        };
        counter.fetch_add(1, Ordering::Relaxed);
        reply
    }

    /// Carries out one command and returns its reply (no rate limit: see [`Self::handle`]).
    pub async fn execute(&self, payload: &[u8]) -> Reply {
        let cmd = match parse(payload) {
            Ok(cmd) => cmd,
            Err((id, error)) => return refuse(id, error),
        };
        let id = cmd.id.clone();
        if let Some(verifier) = &self.verifier {
            if let Err(error) = verifier.verify(&cmd, now_millis()) {
                return refuse(id, error);
            }
        }
        match self.dispatch(cmd).await {
            Ok(result) => Reply {
                id,
                ok: true,
                error: None,
                result: Some(result),
            },
            Err(error) => refuse(id, error),
        }
    }

    async fn dispatch(&self, cmd: CommandRequest) -> Result<Value, String> {
        match cmd.op.as_str() {
            "ping" => {
                no_target(&cmd)?;
                Ok(json!({ "pong": true, "ts": rfc3339(now_millis()), "agent": env!("CARGO_PKG_VERSION") }))
            }
            "config" => {
                no_target(&cmd)?;
                Ok(self.config_json.clone())
            }
            "identify" => {
                if cmd.ch.is_some() {
                    return Err("identify takes no ch".into());
                }
                let dev = cmd.dev.as_deref().ok_or("identify needs dev")?;
                let result = self.ask_node(dev, Op::Identify).await?;
                ack_to_result(result)
            }
            "zero" => {
                let dev = cmd.dev.as_deref().ok_or("zero needs dev and ch")?;
                let ch = cmd.ch.as_deref().ok_or("zero needs dev and ch")?;
                let channel = self.channel_id(dev, ch)?;
                if self.zero_at.get(dev) == Some(&ZeroAt::Gateway) {
                    return self.zero_at_gateway(dev, ch).await;
                }
                match self.ask_node(dev, Op::Zero { channel }).await? {
                    AckResult::OK => Ok(json!({ "ack": "ok", "at": "node" })),
                    // The node cannot tare: the gateway keeps the offset instead.
                    AckResult::UNSUPPORTED => self.zero_at_gateway(dev, ch).await,
                    other => ack_to_result(other),
                }
            }
            op if is_write_op(op) => Err(format!(
                "refused: {op:?} would write to a device; towerlink never writes to an elevator controller"
            )),
            op => Err(format!("unknown op {op:?}; known ops: {}", OPS.join(", "))),
        }
    }

    fn channel_id(&self, dev: &str, ch: &str) -> Result<u8, String> {
        if !self.nodes.contains_key(dev) && !self.zero_at.contains_key(dev) {
            return Err(format!("unknown device {dev:?}"));
        }
        let channels = self
            .directory
            .channels(dev)
            .ok_or_else(|| format!("device {dev:?} has not announced its channels yet"))?;
        channels
            .iter()
            .find(|c| c.name == ch)
            .map(|c| c.id)
            .ok_or_else(|| {
                let names: Vec<&str> = channels.iter().map(|c| c.name.as_str()).collect();
                format!(
                    "unknown channel {ch:?} on {dev:?}; channels: {}",
                    names.join(", ")
                )
            })
    }

    async fn zero_at_gateway(&self, dev: &str, ch: &str) -> Result<Value, String> {
        let (tx, rx) = oneshot::channel();
        self.pipeline
            .send(PipelineRequest::Zero {
                dev: dev.to_owned(),
                ch: ch.to_owned(),
                reply: tx,
            })
            .await
            .map_err(|_| "the pipeline is stopping".to_owned())?;
        let zero = rx
            .await
            .map_err(|_| "the pipeline is stopping".to_owned())?
            .map_err(|e| e.to_string())?;
        Ok(json!({ "at": "gateway", "zero": zero }))
    }

    async fn ask_node(&self, dev: &str, op: Op) -> Result<AckResult, String> {
        let tx = self
            .nodes
            .get(dev)
            .ok_or_else(|| format!("unknown device {dev:?}"))?;
        let (reply_tx, reply_rx) = oneshot::channel();
        tx.try_send(NodeRequest {
            op,
            reply: reply_tx,
        })
        .map_err(|_| format!("device {dev:?} is busy or its port is closed"))?;
        match tokio::time::timeout(NODE_TIMEOUT, reply_rx).await {
            Ok(Ok(result)) => result.map_err(|e| e.to_string()),
            Ok(Err(_)) => Err(format!(
                "device {dev:?} did not answer (port closed or ack timed out)"
            )),
            Err(_) => Err(format!(
                "device {dev:?} did not answer within {}s",
                NODE_TIMEOUT.as_secs()
            )),
        }
    }
}

fn no_target(cmd: &CommandRequest) -> Result<(), String> {
    if cmd.dev.is_some() || cmd.ch.is_some() {
        return Err(format!("{} takes no dev or ch", cmd.op));
    }
    Ok(())
}

fn ack_to_result(result: AckResult) -> Result<Value, String> {
    if result == AckResult::OK {
        Ok(json!({ "ack": result.name() }))
    } else {
        Err(format!("the node refused: {}", result.name()))
    }
}

/// Ops that would write to a device register; refused by name so the refusal is explicit.
fn is_write_op(op: &str) -> bool {
    let op = op.to_ascii_lowercase();
    ["write", "set_register", "modbus", "coil"]
        .iter()
        .any(|w| op.contains(w))
}

fn refuse(id: String, error: String) -> Reply {
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
        let reply = context.handle(&payload, Instant::now()).await;
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
                .await;
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
        assert!(ctx.handle(br#"{"id":"r5","op":"ping"}"#, t1).await.ok);
        assert!(!ctx.handle(br#"{"id":"r6","op":"ping"}"#, t1).await.ok);
        let t2 = t1 + Duration::from_millis(500);
        let r = ctx.handle(b"not json", t2).await;
        assert!(r.error.unwrap_or_default().contains("malformed"));
        let s = &ctx.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        assert_eq!(
            (get(&s.accepted), get(&s.refused), get(&s.rate_limited)),
            (4, 4, 3)
        );
    }
}
