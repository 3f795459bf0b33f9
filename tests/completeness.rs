//! Completeness the platform can see (issue 11, item 2), end to end against the real agent:
//! a scripted node on a pseudo-terminal sends strain at 20 Hz in batches of 10.
//!
//! - every window's `expected` is the node's advertised rate over `end - start`;
//! - a kill -9 shows in the next birth (`"last_stop":"unclean"`), a clean stop in the one after;
//! - after the kill the restarted agent decodes the node's samples although the node never
//!   sends another Hello (the channel map comes from the store), and the samples the node sent
//!   while the agent was down (buffered by the kernel) reach their windows.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context};
use serde_json::Value;
use towerlink_e2e::{unique_gw, write_config, AgentProcess, Received, Subscriber};
use towerlink_firmware::protocol::{encode, Body, ChannelInfo, Frame, Quantity, MAX_ENCODED_LEN};
use towerlink_sim::pty::VirtualPort;

const NODE: u32 = 7;
const RATE_HZ: u16 = 20;
const BATCH: usize = 10;

/// A node that sends samples, and a Hello in answer to whatever it is sent only while
/// `answer` is set (a node whose Hello is lost, or an agent that must not wait for one).
struct ScriptedNode {
    stop: Arc<AtomicBool>,
    answer: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl ScriptedNode {
    fn start(link: &Path) -> anyhow::Result<ScriptedNode> {
        let mut port = VirtualPort::open(Some(link))?;
        let stop = Arc::new(AtomicBool::new(false));
        let answer = Arc::new(AtomicBool::new(true));
        let flag = stop.clone();
        let answering = answer.clone();
        let thread = std::thread::spawn(move || -> anyhow::Result<()> {
            let boot = Instant::now();
            let mut seq = 0u32;
            let mut send = |port: &mut VirtualPort, body: Body| -> anyhow::Result<()> {
                let frame = Frame {
                    version: 1,
                    node: NODE,
                    seq,
                    body,
                };
                seq = seq.wrapping_add(1);
                let mut buf = [0u8; MAX_ENCODED_LEN];
                let n = encode(&frame, &mut buf).map_err(|e| anyhow::anyhow!("{e:?}"))?;
                port.send(&buf[..n])?;
                Ok(())
            };
            let hello = |uptime_ms: u32| Body::Hello {
                fw: (1, 0, 0),
                uptime_ms,
                channels: [ChannelInfo {
                    id: 0,
                    quantity: Quantity::Strain,
                    rate_hz: RATE_HZ,
                }]
                .into_iter()
                .collect(),
            };
            send(&mut port, hello(0))?;
            let period_ms = 1000 / u32::from(RATE_HZ);
            let mut next = 0u32; // node time of the next sample
            let mut rx = [0u8; 256];
            while !flag.load(Ordering::SeqCst) {
                // Whatever the agent writes (Identify) is answered with a Hello, or ignored.
                let got = port.receive(&mut rx)?;
                let now = boot.elapsed().as_millis() as u32;
                if got > 0 && answering.load(Ordering::SeqCst) {
                    send(&mut port, hello(now))?;
                }
                let batch_end = next + period_ms * (BATCH as u32 - 1);
                if now >= batch_end {
                    send(
                        &mut port,
                        Body::Samples {
                            channel: 0,
                            t0_ms: next,
                            period_us: period_ms * 1000,
                            values: (0..BATCH).map(|i| 100.0 + i as f32).collect(),
                        },
                    )?;
                    next += period_ms * BATCH as u32;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(())
        });
        Ok(ScriptedNode {
            stop,
            answer,
            thread: Some(thread),
        })
    }
}

impl Drop for ScriptedNode {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn parse_ts(v: &Value) -> Option<i64> {
    let t = humantime::parse_rfc3339(v.as_str()?).ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_millis() as i64)
}

/// Strain windows: (start, end, n, expected).
fn windows(all: &[Received]) -> Vec<(i64, i64, u64, u64)> {
    all.iter()
        .filter(|m| m.topic.ends_with("/data/panel-s"))
        .filter_map(|m| {
            let ch = &m.json["ch"]["strain"];
            Some((
                parse_ts(&m.json["start"])?,
                parse_ts(&m.json["end"])?,
                ch["n"].as_u64()?,
                ch["expected"].as_u64()?,
            ))
        })
        .collect()
}

fn births(all: &[Received]) -> Vec<Value> {
    all.iter()
        .filter(|m| m.topic.ends_with("/state") && m.json["state"] == "online")
        .map(|m| m.json.clone())
        .collect()
}

fn memory_file(store: &Path) -> PathBuf {
    store.join("nodes").join("panel-s.json")
}

#[test]
fn expected_follows_the_rate_and_a_kill_9_shows_and_costs_little() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let link = dir.path().join("ports/panel-s");
    std::fs::create_dir_all(link.parent().context("parent")?)?;
    let node = ScriptedNode::start(&link)?;
    let gw = unique_gw("e2e-complete");
    let sub = Subscriber::connect(&format!("towerlink/v1/{gw}/#"))?;
    let config = write_config(
        dir.path(),
        &gw,
        &format!(
            "[health]\ninterval = \"1s\"\n\n[[node]]\nid = \"panel-s\"\nport = \"{}\"\nnode_id = {NODE}\nwindow = \"1s\"\nwindow_grace = \"700ms\"\n",
            link.display()
        ),
    )?;
    let store = dir.path().join("store");

    // Run 1: the node's Hello at boot tells its channels.
    let mut agent = AgentProcess::start(&config)?;
    sub.wait(Duration::from_secs(30), "4 strain windows", |m| {
        windows(m).len() >= 4
    })?;
    let first = windows(&sub.all());
    for &(start, end, _, expected) in &first {
        ensure!(
            expected == u64::from(RATE_HZ) * (end - start) as u64 / 1000,
            "expected {expected} over [{start}, {end}) at {RATE_HZ} Hz: {first:?}"
        );
    }
    // Full windows after the first one get every sample the node sent.
    let full: Vec<_> = first[1..].iter().filter(|w| w.1 - w.0 == 1000).collect();
    ensure!(!full.is_empty(), "{first:?}");
    ensure!(
        full.iter().all(|w| w.3 == 20 && w.2.abs_diff(w.3) <= 1),
        "a 1 s window at 20 Hz: expected 20, n 20 (+-1 at an edge): {first:?}"
    );
    ensure!(
        births(&sub.all())
            .first()
            .is_some_and(|b| b["last_stop"] == "clean"),
        "the first run's birth: {:?}",
        births(&sub.all())
    );
    ensure!(
        towerlink_e2e::wait_until(Duration::from_secs(10), || memory_file(&store).exists()),
        "no node memory at {}",
        memory_file(&store).display()
    );

    // kill -9; the node goes on sending while nobody reads (the kernel buffers it), and
    // from now on never sends a Hello.
    node.answer.store(false, Ordering::SeqCst);
    agent.kill()?;
    let killed = now_ms();
    std::thread::sleep(Duration::from_millis(2_500));
    let births_before = births(&sub.all()).len();
    let restarted = now_ms();
    let mut agent = AgentProcess::start(&config)?;
    sub.wait(Duration::from_secs(30), "the birth after the kill", |m| {
        births(m).len() > births_before
    })?;
    let birth = births(&sub.all()).last().cloned().context("birth")?;
    ensure!(birth["last_stop"] == "unclean", "after a kill -9: {birth}");
    // The node sends no Hello in this run: windows come only from the remembered channels.
    sub.wait(Duration::from_secs(30), "windows after the restart", |m| {
        windows(m).iter().any(|w| w.0 >= restarted + 1000)
    })?;
    let all = windows(&sub.all());
    // What the node sent while the agent was down reached its windows: every whole window
    // of the downtime is there and full.
    let down: Vec<_> = all
        .iter()
        .filter(|w| w.0 >= killed && w.1 <= restarted)
        .collect();
    ensure!(
        !down.is_empty() && down.iter().all(|w| w.2.abs_diff(w.3) <= 1),
        "windows of the downtime [{killed}, {restarted}): {down:?} (all: {all:?})\nlog:\n{}",
        agent.log()
    );
    ensure!(
        agent.log().contains("node remembered from the last run"),
        "the restart did not use the node memory:\n{}",
        agent.log()
    );
    // (Full reports and deltas: the counter where either carries it.)
    for h in sub.on("/health") {
        for pipeline in [&h.json["pipeline"], &h.json["changed"]["pipeline"]] {
            ensure!(
                pipeline["unknown_channel_samples"].as_u64().unwrap_or(0) == 0,
                "samples waited for a Hello: {}",
                h.json
            );
        }
    }

    // A clean stop shows as clean in the next birth.
    agent.stop()?;
    let births_before = births(&sub.all()).len();
    let mut agent = AgentProcess::start(&config)?;
    sub.wait(
        Duration::from_secs(30),
        "the birth after a clean stop",
        |m| births(m).len() > births_before,
    )?;
    let birth = births(&sub.all()).last().cloned().context("birth")?;
    ensure!(birth["last_stop"] == "clean", "after SIGTERM: {birth}");
    agent.stop()?;
    drop(node);
    Ok(())
}
