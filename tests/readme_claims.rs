//! What the README promises about the running agent and nothing else exercised, end to end
//! (the real `towerlink` binary, simulated nodes on pseudo-terminals, a real Mosquitto):
//! - `[commands] rate`/`burst`: exactly `burst` commands pass at once, the next is refused
//!   "rate limited", and one more passes 1/rate s later;
//! - a successful `identify`: `ok`, the node's Ack, and the node sent a Hello for it;
//! - `node[].names` and the `_<channel id>` suffix of a node with two channels of a quantity;
//! - `mqtt.data_qos = 0`: telemetry arrives at QoS 0, events and replies still at QoS 1;
//! - zero: the fallback to the gateway when a node answers "unsupported"; `zero --direct`
//!   refusing a node whose zero the gateway keeps;
//! - replay pacing: a backlog built while the broker is down is replayed at no more than
//!   `store.replay_rate` messages per second.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use serde_json::Value;
use towerlink_e2e::mosquitto::MosquittoProcess;
use towerlink_e2e::{store_inspect, unique_gw, write_config, AgentProcess, Received, Subscriber};
use towerlink_firmware::protocol::{
    encode, Body, ChannelInfo, Frame, Op, Quantity, MAX_ENCODED_LEN,
};
use towerlink_sim::pty::VirtualPort;
use towerlink_sim::virtual_node::{spawn_tower, VirtualNode};
use towerlink_sim_chips::Scenario;

fn one_panel(seed: u64) -> anyhow::Result<Scenario> {
    Scenario::from_toml_str(&format!(
        "seed = {seed}\n[[panels]]\nname = \"p\"\nnode = 1\n"
    ))
    .map_err(|e| anyhow::anyhow!("{e}"))
}

fn node_section(n: &VirtualNode, window: &str, extra: &str) -> String {
    format!(
        "[[node]]\nid = \"{}\"\nport = \"{}\"\nwindow = \"{window}\"\nnode_id = {}\n{extra}\n",
        n.dev(),
        n.path().display(),
        n.node_id()
    )
}

fn reply<'a>(messages: &'a [Received], id: &str) -> Option<&'a Received> {
    messages
        .iter()
        .find(|m| m.topic.ends_with("/reply") && m.json["id"] == id)
}

fn replies_to<'a>(messages: &'a [Received], prefix: &str) -> Vec<&'a Value> {
    messages
        .iter()
        .filter(|m| m.topic.ends_with("/reply"))
        .map(|m| &m.json)
        .filter(|j| j["id"].as_str().is_some_and(|id| id.starts_with(prefix)))
        .collect()
}

fn hellos(node: &VirtualNode) -> usize {
    node.sent_frames()
        .iter()
        .filter(|f| matches!(f.body, Body::Hello { .. }))
        .count()
}

/// README: "at most `commands.rate` per second after a burst of `commands.burst`", each
/// refusal "answered `ok:false` on `reply` with the reason, and counted in `health`".
#[test]
fn commands_pass_in_a_burst_of_exactly_burst_then_at_rate() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let nodes = spawn_tower(&one_panel(21)?, &dir.path().join("ports"), false)?;
    let gw = unique_gw("e2e-burst");
    let sub = Subscriber::connect(&format!("towerlink/v1/{gw}/#"))?;
    const BURST: usize = 4;
    let config = write_config(
        dir.path(),
        &gw,
        &format!(
            "[health]\ninterval = \"1s\"\n\n[commands]\nrate = 1\nburst = {BURST}\n\n{}",
            node_section(&nodes[0], "1s", "")
        ),
    )?;
    let mut agent = AgentProcess::start(&config)?;
    let state = format!("towerlink/v1/{gw}/state");
    sub.wait(Duration::from_secs(20), "the online state", |m| {
        m.iter()
            .any(|r| r.topic == state && r.json["state"] == "online")
    })?;
    let cmd = format!("towerlink/v1/{gw}/cmd");

    // burst + 1 at once, into a full bucket (no command before them).
    let started = Instant::now();
    for i in 0..=BURST {
        sub.publish(&cmd, format!(r#"{{"id":"b{i}","op":"ping"}}"#).as_bytes())?;
    }
    sub.wait(Duration::from_secs(15), "a reply to each", |m| {
        replies_to(m, "b").len() > BURST
    })?;
    // Every reply arrived within this: at 1 token per second, at most floor(span) tokens
    // came back while they were taken (none on an ordinary run).
    let span = started.elapsed();
    let all = sub.all();
    let got = replies_to(&all, "b");
    let ok = got.iter().filter(|r| r["ok"] == true).count();
    let limited = got
        .iter()
        .filter(|r| {
            r["ok"] == false
                && r["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("rate limited"))
        })
        .count();
    let refilled = span.as_secs() as usize;
    ensure!(
        ok + limited == BURST + 1 && (BURST..=BURST + refilled).contains(&ok),
        "{ok} ok and {limited} rate limited of {} at once (burst {BURST}, replies within {span:?}): {got:?}",
        BURST + 1
    );
    if refilled == 0 {
        ensure!(limited == 1, "{got:?}");
    }
    // The bucket refills at 1/s from when its last token went (within `span` of the
    // start): at least 1 s after that one more passes, and the next, sent with it, is
    // refused unless 2 s went by.
    let target = Duration::from_millis(1200).max(span + Duration::from_millis(1050));
    std::thread::sleep(target.saturating_sub(started.elapsed()));
    for i in 0..2 {
        sub.publish(&cmd, format!(r#"{{"id":"r{i}","op":"ping"}}"#).as_bytes())?;
    }
    sub.wait(Duration::from_secs(15), "replies to the two", |m| {
        replies_to(m, "r").len() == 2
    })?;
    let all = sub.all();
    let got = replies_to(&all, "r");
    let ok = got.iter().filter(|r| r["ok"] == true).count();
    if started.elapsed() < Duration::from_secs(2) {
        ensure!(ok == 1, "{target:?} after the burst at 1/s: {got:?}");
    } else {
        ensure!(
            (1..=2).contains(&ok),
            "{target:?} after the burst at 1/s: {got:?}"
        );
    }
    let refused = limited + 2 - ok;
    sub.wait(
        Duration::from_secs(10),
        "health counting the refusal",
        |m| {
            m.iter().any(|h| {
                h.topic.ends_with("/health")
                    && h.json["commands"]["rate_limited"].as_u64() == Some(refused as u64)
            })
        },
    )?;

    agent.stop()?;
    sub.clear_retained(&state);
    Ok(())
}

/// README: `identify` (`dev`: asks the node for a Hello); `node[].names`; `mqtt.data_qos`
/// "QoS of telemetry, 0 or 1 (events and replies are always 1)".
#[test]
fn identify_names_and_telemetry_at_qos_0() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let nodes = spawn_tower(&one_panel(22)?, &dir.path().join("ports"), true)?;
    let node = &nodes[0];
    let gw = unique_gw("e2e-claims");
    let sub = Subscriber::connect(&format!("towerlink/v1/{gw}/#"))?;
    // A second node whose port never appears: its sensor_offline event is a QoS 1 message
    // of the same run.
    let ghost = dir.path().join("ports/ghost");
    let config = write_config(
        dir.path(),
        &gw,
        &format!(
            "[health]\ninterval = \"1s\"\nnode_silent_after = \"2s\"\n\n{}\n[[node]]\nid = \"ghost\"\nport = \"{}\"\n",
            node_section(node, "1s", "names = { 0 = \"strain_mullion\", 2 = \"lean\" }"),
            ghost.display()
        ),
    )?;
    let text = std::fs::read_to_string(&config)?;
    ensure!(text.contains("keep_alive = \"5s\"\n"), "{text}");
    std::fs::write(
        &config,
        text.replacen(
            "keep_alive = \"5s\"\n",
            "keep_alive = \"5s\"\ndata_qos = 0\n",
            1,
        ),
    )?;
    let mut agent = AgentProcess::start(&config)?;
    let data_topic = format!("towerlink/v1/{gw}/data/{}", node.dev());
    sub.wait(Duration::from_secs(30), "three windows", |m| {
        m.iter().filter(|r| r.topic == data_topic).count() >= 3
    })?;

    // names: the configured names replace the quantities'; the others keep theirs.
    let all = sub.all();
    let data: Vec<&Received> = all.iter().filter(|r| r.topic == data_topic).collect();
    let keys: BTreeSet<String> = data
        .iter()
        .filter_map(|d| d.json["ch"].as_object())
        .flat_map(|ch| ch.keys().cloned())
        .collect();
    ensure!(
        keys.contains("strain_mullion") && keys.contains("lean") && keys.contains("tilt_x"),
        "channel keys {keys:?}"
    );
    ensure!(
        !keys.contains("strain") && !keys.contains("tilt_y"),
        "renamed channels still under their quantity: {keys:?}"
    );
    ensure!(
        data.iter().all(|d| d.json["ch"]
            .get("strain_mullion")
            .is_none_or(|s| s["u"] == "ustrain")
            && d.json["ch"].get("lean").is_none_or(|s| s["u"] == "deg")),
        "units changed with the names"
    );

    // data_qos = 0: every window arrives at QoS 0 (the subscription is QoS 1, so a QoS 1
    // publish would arrive at 1).
    ensure!(
        data.iter().all(|d| d.qos == 0),
        "telemetry QoS: {:?}",
        data.iter().map(|d| d.qos).collect::<Vec<_>>()
    );

    // identify: the node's Ack, and a Hello the node sent for it (its own Hellos are 60 s
    // apart; this run is younger than that after the boot Hello).
    let hellos_before = hellos(node);
    let identifies = || {
        node.commands_received()
            .iter()
            .filter(|c| c.node == node.node_id() && c.op == Op::Identify)
            .count()
    };
    // (The agent asks for a Hello itself when it opens the port.)
    let identifies_before = identifies();
    let cmd = format!("towerlink/v1/{gw}/cmd");
    sub.publish(&cmd, br#"{"id":"i1","op":"identify","dev":"p"}"#)?;
    sub.wait(Duration::from_secs(15), "the identify reply", |m| {
        reply(m, "i1").is_some()
    })?;
    let all = sub.all();
    let r = reply(&all, "i1").context("reply")?;
    ensure!(
        r.json["ok"] == true && r.json["result"]["ack"] == "ok",
        "identify reply: {}",
        r.json
    );
    ensure!(r.qos == 1, "reply at QoS {}", r.qos);
    ensure!(
        identifies() == identifies_before + 1,
        "the node received {:?}",
        node.commands_received()
    );
    ensure!(
        hellos(node) == hellos_before + 1,
        "the node sent {} Hello(s) for the identify",
        hellos(node) - hellos_before
    );
    // An identify of the port that never appeared is refused, not hung.
    sub.publish(&cmd, br#"{"id":"i2","op":"identify","dev":"ghost"}"#)?;
    sub.wait(Duration::from_secs(20), "the ghost identify reply", |m| {
        reply(m, "i2").is_some()
    })?;
    let all = sub.all();
    ensure!(
        reply(&all, "i2").is_some_and(|r| r.json["ok"] == false),
        "{:?}",
        reply(&all, "i2").map(|r| &r.json)
    );

    // Events stay at QoS 1.
    sub.wait(Duration::from_secs(20), "the ghost's sensor_offline", |m| {
        m.iter()
            .any(|r| r.topic.ends_with("/event/ghost") && r.json["event"] == "sensor_offline")
    })?;
    let all = sub.all();
    let events: Vec<&Received> = all.iter().filter(|r| r.topic.contains("/event/")).collect();
    ensure!(
        events.iter().all(|e| e.qos == 1),
        "event QoS: {:?}",
        events.iter().map(|e| (&e.topic, e.qos)).collect::<Vec<_>>()
    );
    agent.stop()?;
    sub.clear_retained(&format!("towerlink/v1/{gw}/state"));
    for n in nodes {
        n.stop();
    }
    Ok(())
}

/// A scripted node on a pseudo-terminal announcing two strain channels (ids 0 and 4) and a
/// tilt: README "with `_<channel id>` when a node has more than one channel of a quantity".
fn two_strain_node(
    link: &Path,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let mut port = VirtualPort::open(Some(link))?;
    Ok(std::thread::spawn(move || {
        let start = Instant::now();
        let mut seq = 0u32;
        let mut buf = [0u8; MAX_ENCODED_LEN];
        let mut send = |port: &mut VirtualPort, body: Body, seq: &mut u32| {
            let frame = Frame {
                version: 1,
                node: 9,
                seq: *seq,
                body,
            };
            if let Ok(len) = encode(&frame, &mut buf) {
                let _ = port.send(&buf[..len]);
                *seq = seq.wrapping_add(1);
            }
        };
        let announced = [
            (0, Quantity::Strain),
            (4, Quantity::Strain),
            (2, Quantity::TiltX),
        ];
        let mut tick = 0u32;
        let mut rx = [0u8; 256];
        while !stop.load(Ordering::SeqCst) {
            let now_ms = start.elapsed().as_millis() as u32;
            // Nobody may have the line open yet: announce every second until then.
            if tick % 10 == 0 {
                send(
                    &mut port,
                    Body::Hello {
                        fw: (1, 0, 0),
                        uptime_ms: now_ms,
                        channels: announced
                            .iter()
                            .map(|&(id, quantity)| ChannelInfo {
                                id,
                                quantity,
                                rate_hz: 10,
                            })
                            .collect(),
                    },
                    &mut seq,
                );
            }
            for (ch, value) in [(0u8, 100.0f32), (4, 200.0), (2, 0.5)] {
                send(
                    &mut port,
                    Body::Samples {
                        channel: ch,
                        t0_ms: now_ms,
                        period_us: 100_000,
                        values: std::iter::once(value + (tick % 3) as f32).collect(),
                    },
                    &mut seq,
                );
            }
            let _ = port.receive(&mut rx);
            tick += 1;
            let next = Duration::from_millis(100 * u64::from(tick));
            std::thread::sleep(next.saturating_sub(start.elapsed()));
        }
    }))
}

#[test]
fn two_channels_of_one_quantity_get_their_channel_id() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("ports"))?;
    let link = dir.path().join("ports/twin");
    let stop = Arc::new(AtomicBool::new(false));
    let thread = two_strain_node(&link, stop.clone())?;
    let gw = unique_gw("e2e-suffix");
    let sub = Subscriber::connect(&format!("towerlink/v1/{gw}/#"))?;
    let config = write_config(
        dir.path(),
        &gw,
        &format!(
            "[[node]]\nid = \"twin\"\nport = \"{}\"\nwindow = \"1s\"\nnode_id = 9\nnames = {{ 2 = \"lean\" }}\n",
            link.display()
        ),
    )?;
    let mut agent = AgentProcess::start(&config)?;
    let topic = format!("towerlink/v1/{gw}/data/twin");
    let result = sub.wait(
        Duration::from_secs(30),
        "windows of all three channels",
        |m| {
            m.iter().filter(|r| r.topic == topic).any(|r| {
                ["strain_0", "strain_4", "lean"]
                    .iter()
                    .all(|k| r.json["ch"].get(*k).is_some())
            })
        },
    );
    stop.store(true, Ordering::SeqCst);
    let _ = thread.join();
    result.with_context(|| agent.log())?;
    let all = sub.all();
    for d in all.iter().filter(|r| r.topic == topic) {
        let ch = d.json["ch"].as_object().context("ch")?;
        ensure!(
            ch.keys()
                .all(|k| ["strain_0", "strain_4", "lean"].contains(&k.as_str())),
            "channel keys {:?}",
            ch.keys().collect::<Vec<_>>()
        );
        // Each suffixed key carries its own channel's values (100.. on 0, 200.. on 4).
        ensure!(ch.get("strain_0").is_none_or(|s| s["min"]
            .as_f64()
            .is_some_and(|v| (100.0..103.0).contains(&v))));
        ensure!(ch.get("strain_4").is_none_or(|s| s["min"]
            .as_f64()
            .is_some_and(|v| (200.0..203.0).contains(&v))));
    }
    agent.stop()?;
    sub.clear_retained(&format!("towerlink/v1/{gw}/state"));
    Ok(())
}

/// README: "Replay: telemetry is published at most `replay_rate` messages per second (a
/// token bucket)", burst a tenth of a second's worth (`uplink/pacer.rs`).
#[test]
fn a_backlog_is_replayed_no_faster_than_replay_rate() -> anyhow::Result<()> {
    const RATE: u32 = 20;
    let rate = f64::from(RATE);
    let dir = tempfile::tempdir()?;
    let mut broker = MosquittoProcess::start(&dir.path().join("mosquitto"))?;
    let nodes = spawn_tower(&one_panel(23)?, &dir.path().join("ports"), false)?;
    let gw = unique_gw("e2e-replay");
    let filter = format!("towerlink/v1/{gw}/#");
    let sub = towerlink_e2e::mosquitto::SessionSubscriber::connect(
        broker.port(),
        &unique_gw("replay-sub"),
        &filter,
    )?;
    let store = dir.path().join("store");
    let config = dir.path().join("towerlink.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nid = \"{gw}\"\n\n[mqtt]\nbatch = \"0s\"\nurl = \"mqtt://127.0.0.1:{}\"\nkeep_alive = \"5s\"\n\n[store]\npath = \"{}\"\nreplay_rate = {RATE}\n\n[health]\ninterval = \"60s\"\n\n{}",
            broker.port(),
            store.display(),
            node_section(&nodes[0], "200ms", "")
        ),
    )?;
    let mut agent = AgentProcess::start(&config)?;
    let data = |m: &[Received]| -> Vec<(u64, Instant)> {
        m.iter()
            .filter(|r| r.topic.contains("/data/"))
            .filter_map(|r| Some((r.json["seq"].as_u64()?, r.at)))
            .collect()
    };
    ensure!(
        towerlink_e2e::wait_until(Duration::from_secs(30), || data(&sub.all()).len() >= 5),
        "no live data; log:\n{}",
        agent.log()
    );

    // The broker goes away for long enough that the backlog is several seconds of replay.
    broker.stop()?;
    let (mut backlog, mut next) = (BTreeSet::new(), 0);
    ensure!(
        towerlink_e2e::wait_until(Duration::from_secs(60), || {
            if let Ok((live, n)) = store_inspect(&store) {
                (backlog, next) = (live, n);
            }
            backlog.len() >= 80
        }),
        "no backlog of 80 built ({} queued, next seq {next})",
        backlog.len()
    );
    let before = sub.all().len();
    broker.restart()?;
    let last = *backlog.last().context("backlog")?;
    ensure!(
        towerlink_e2e::wait_until(Duration::from_secs(60), || {
            data(&sub.all()[before..]).iter().any(|(s, _)| *s >= last)
        }),
        "the backlog up to seq {last} did not arrive; log:\n{}",
        agent.log()
    );
    agent.stop()?;
    let after: Vec<(u64, Instant)> = data(&sub.all()[before..]);
    let got: BTreeSet<u64> = sub.all()[before..]
        .iter()
        .filter_map(|r| r.json["seq"].as_u64())
        .collect();
    let missing: Vec<&u64> = backlog.iter().filter(|s| !got.contains(s)).collect();
    ensure!(missing.is_empty(), "backlog seqs lost: {missing:?}");

    // The replay: every telemetry message from the first backlog message to the last one,
    // live ones included (they take tokens too).
    let first_at = after
        .iter()
        .filter(|(s, _)| backlog.contains(s))
        .map(|(_, at)| *at)
        .min()
        .context("first")?;
    let last_at = after
        .iter()
        .filter(|(s, _)| backlog.contains(s))
        .map(|(_, at)| *at)
        .max()
        .context("last")?;
    let span = last_at.duration_since(first_at).as_secs_f64();
    let during = after
        .iter()
        .filter(|(_, at)| (first_at..=last_at).contains(at))
        .count();
    // A token bucket of RATE/s holding RATE/10: at most RATE x span + RATE/10 (+1 for the
    // first), plus a few the subscriber's reconnect may have bunched up.
    let most = rate * span + rate / 10.0 + 1.0 + 4.0;
    eprintln!(
        "replay: {during} telemetry messages ({} backlog) in {span:.2} s = {:.1}/s (replay_rate {RATE})",
        backlog.len(),
        (during as f64 - 1.0) / span.max(1e-3)
    );
    ensure!(
        during as f64 <= most,
        "{during} telemetry messages in {span:.2} s of replay: faster than replay_rate {RATE}/s (at most {most:.0})"
    );
    // ...and it is a replay, not a trickle: most of the rate is used.
    ensure!(
        during as f64 >= 0.5 * rate * span,
        "{during} in {span:.2} s: far below replay_rate {RATE}/s"
    );
    Ok(())
}

fn strain_means(messages: &[Received], topic: &str) -> Vec<f64> {
    messages
        .iter()
        .filter(|r| r.topic == topic)
        .filter_map(|r| r.json["ch"]["strain"]["mean"].as_f64())
        .collect()
}

fn zeros_asked(node: &VirtualNode) -> usize {
    node.commands_received()
        .iter()
        .filter(|c| c.node == node.node_id() && c.op == Op::Zero { channel: 0 })
        .count()
}

/// README: `zero_at = "node"` is "the spec's Zero command; falls back to the gateway if the
/// node answers "unsupported"", the gateway then taking "the present filtered value as the
/// zero", persisting it and answering `result.at = "gateway"`.
#[test]
fn zero_falls_back_to_the_gateway_when_the_node_cannot_tare() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let nodes = spawn_tower(&one_panel(24)?, &dir.path().join("ports"), false)?;
    let node = &nodes[0];
    node.refuse_zero(true);
    let gw = unique_gw("e2e-zero");
    let sub = Subscriber::connect(&format!("towerlink/v1/{gw}/#"))?;
    let config = write_config(dir.path(), &gw, &node_section(node, "1s", ""))?;
    let mut agent = AgentProcess::start(&config)?;
    let topic = format!("towerlink/v1/{gw}/data/p");
    sub.wait(Duration::from_secs(30), "two strain windows", |m| {
        strain_means(m, &topic).len() >= 2
    })?;
    let before = strain_means(&sub.all(), &topic);
    let level = before.iter().sum::<f64>() / before.len() as f64;
    ensure!(
        level.abs() > 20.0,
        "the strain is already near 0 ({before:?}): nothing to see"
    );

    // Through the CLI, exactly as the platform would (no --direct).
    let out = std::process::Command::new(towerlink_e2e::binary("towerlink-agent", "towerlink")?)
        .args(["zero", "p", "strain", "--config"])
        .arg(&config)
        .output()?;
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success() && said.starts_with("OK  zero p strain:"),
        "towerlink zero: {out:?}"
    );
    // The CLI saw the reply on its own session; the platform's subscriber gets it too, but
    // not necessarily first.
    let is_reply = |m: &Received| m.topic.ends_with("/reply") && m.json["result"]["at"].is_string();
    sub.wait(Duration::from_secs(10), "the zero reply", |m| {
        m.iter().any(is_reply)
    })?;
    let all = sub.all();
    let r = all
        .iter()
        .find(|m| is_reply(m))
        .context("no zero reply seen by the platform")?;
    ensure!(
        r.json["ok"] == true && r.json["result"]["at"] == "gateway",
        "zero reply: {}",
        r.json
    );
    let zero = r.json["result"]["zero"]
        .as_f64()
        .context("no result.zero")?;
    ensure!(
        zeros_asked(node) == 1,
        "the node was asked {} times",
        zeros_asked(node)
    );
    ensure!(
        (zero - level).abs() < 0.2 * level.abs(),
        "zero {zero} is not the present value (windows {before:?})"
    );
    let saved = std::fs::read_to_string(dir.path().join("store/zero.json"))?;
    ensure!(saved.contains("strain"), "zero.json: {saved}");

    // Windows that start after it (on the agent's clock: a ping's `ts`) are centred near 0.
    let cmd = format!("towerlink/v1/{gw}/cmd");
    sub.publish(&cmd, br#"{"id":"t1","op":"ping"}"#)?;
    sub.wait(Duration::from_secs(15), "the ping reply", |m| {
        reply(m, "t1").is_some()
    })?;
    let all = sub.all();
    let ts = reply(&all, "t1")
        .and_then(|r| r.json["result"]["ts"].as_str())
        .context("ping ts")?
        .to_owned();
    // RFC 3339 in one fixed format (ms, Z) orders as text.
    let after = |m: &[Received]| -> Vec<f64> {
        m.iter()
            .filter(|r| r.topic == topic)
            .filter(|r| r.json["start"].as_str().is_some_and(|s| s > ts.as_str()))
            .filter_map(|r| r.json["ch"]["strain"]["mean"].as_f64())
            .collect()
    };
    sub.wait(Duration::from_secs(20), "two windows after the zero", |m| {
        after(m).len() >= 2
    })?;
    let zeroed = after(&sub.all());
    ensure!(
        zeroed.iter().all(|m| m.abs() < 0.2 * level.abs()),
        "windows after the gateway zero {zero}: {zeroed:?} (before: {before:?})"
    );
    agent.stop()?;
    sub.clear_retained(&format!("towerlink/v1/{gw}/state"));
    Ok(())
}

/// README: "`--direct` sends the wire protocol's Zero command and waits for the node's Ack;
/// it refuses nodes with `zero_at = "gateway"` (that zero lives in the agent)".
#[test]
fn zero_direct_refuses_a_node_whose_zero_the_gateway_keeps() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let nodes = spawn_tower(&one_panel(25)?, &dir.path().join("ports"), false)?;
    let node = &nodes[0];
    let bin = towerlink_e2e::binary("towerlink-agent", "towerlink")?;
    let gw = unique_gw("e2e-zero-direct");
    std::fs::create_dir_all(dir.path().join("node"))?;
    std::fs::create_dir_all(dir.path().join("gateway"))?;
    let on_node = write_config(&dir.path().join("node"), &gw, &node_section(node, "1s", ""))?;
    let on_gateway = write_config(
        &dir.path().join("gateway"),
        &gw,
        &node_section(node, "1s", "zero_at = \"gateway\""),
    )?;
    let direct = |config: &Path| {
        std::process::Command::new(&bin)
            .args(["zero", "p", "strain", "--direct", "--config"])
            .arg(config)
            .output()
    };
    // The control: with zero_at = "node" it reaches the node, which tares.
    let out = direct(&on_node)?;
    ensure!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout)
                .starts_with("OK  zero p strain: node 1 tared channel 0"),
        "{out:?}"
    );
    ensure!(zeros_asked(node) == 1, "{:?}", node.commands_received());
    let sent_by_one_run = node.commands_received().len();

    let out = direct(&on_gateway)?;
    let said = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.code() == Some(2)
            && said.contains(
                "FAIL zero p strain: this node's zero is kept by the agent (zero_at = \"gateway\")"
            ),
        "{out:?}"
    );
    // Nothing reached the node: a second control run's commands come after anything the
    // refused run could have left on the line, and they are all there is.
    let out = direct(&on_node)?;
    ensure!(out.status.success(), "{out:?}");
    ensure!(
        node.commands_received().len() == 2 * sent_by_one_run && zeros_asked(node) == 2,
        "the refused run sent the node something: {:?}",
        node.commands_received()
    );
    Ok(())
}
