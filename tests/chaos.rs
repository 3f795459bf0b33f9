//! Chaos tests of store-and-forward (issue 5), each against a Mosquitto of its own on a free
//! loopback port, under load from simulated panel nodes (200 ms windows) and ping commands:
//! (a) the broker stopped for 10 s and restarted, twice; (b) the agent killed with SIGKILL 20
//! times at seeded random moments; (c) the queue's segment files truncated and corrupted at
//! seeded random offsets between runs.
//!
//! In each, a subscriber with a persistent session must see every `seq` from the first to
//! the last the agent ever issued (duplicates allowed and counted, none missing; in (c) only
//! records the damage destroyed before they were sent may be missing), the same payload for
//! every duplicate (a `seq` is never reused), and events in order per device.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use towerlink_e2e::mosquitto::{MosquittoProcess, SessionSubscriber};
use towerlink_e2e::{unique_gw, wait_until, AgentProcess, Received};
use towerlink_sim::virtual_node::{spawn_tower, VirtualNode};
use towerlink_sim_chips::Scenario;

/// A small seeded generator (the tests crate has no rand dependency).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

struct Rig {
    dir: tempfile::TempDir,
    broker: MosquittoProcess,
    _nodes: Vec<VirtualNode>,
    gw: String,
    config: PathBuf,
    sub: SessionSubscriber,
    pinging: Arc<AtomicBool>,
}

impl Rig {
    fn new(name: &str, seed: u64, panels: usize) -> anyhow::Result<Rig> {
        let dir = tempfile::tempdir()?;
        let broker = MosquittoProcess::start(&dir.path().join("broker"))?;
        let mut scenario = format!("seed = {seed}\n");
        for i in 0..panels {
            scenario.push_str(&format!(
                "\n[[panels]]\nname = \"panel-{i}\"\nnode = {}\n",
                100 + i
            ));
        }
        let scenario = Scenario::from_toml_str(&scenario).context("scenario")?;
        let nodes = spawn_tower(&scenario, &dir.path().join("ports"), false)?;
        let gw = unique_gw(name);
        let mut text = format!(
            "[gateway]\nid = \"{gw}\"\n\n[mqtt]\nbatch = \"0s\"\nurl = \"mqtt://127.0.0.1:{}\"\nkeep_alive = \"5s\"\n\n[store]\npath = \"{}\"\nfsync = \"50ms\"\nsegment_bytes = \"16KiB\"\nreplay_rate = 2000\nreplay_bytes_rate = \"0\"\n\n[health]\ninterval = \"1s\"\n\n",
            broker.port(),
            dir.path().join("store").display()
        );
        for n in &nodes {
            text.push_str(&format!(
                "[[node]]\nid = \"{}\"\nport = \"{}\"\nwindow = \"200ms\"\nwindow_grace = \"300ms\"\nnode_id = {}\n\n",
                n.dev(),
                n.path().display(),
                n.node_id()
            ));
        }
        let config = dir.path().join("towerlink.toml");
        std::fs::write(&config, text)?;
        let sub = SessionSubscriber::connect(
            broker.port(),
            &unique_gw("chaos-sub"),
            &format!("towerlink/v1/{gw}/#"),
        )?;
        Ok(Rig {
            dir,
            broker,
            _nodes: nodes,
            gw,
            config,
            sub,
            pinging: Arc::new(AtomicBool::new(false)),
        })
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// Sends a `ping` every 100 ms until the rig is dropped (replies are queued events).
    fn start_pings(&self) -> std::thread::JoinHandle<()> {
        self.pinging.store(true, Ordering::SeqCst);
        let flag = self.pinging.clone();
        let topic = format!("towerlink/v1/{}/cmd", self.gw);
        // A second client for commands, so the subscriber's session is left alone.
        let port = self.broker.port();
        std::thread::spawn(move || {
            let Ok(cmd) = SessionSubscriber::connect(port, &unique_gw("chaos-cmd"), "none/none")
            else {
                return;
            };
            let mut n = 0u64;
            while flag.load(Ordering::SeqCst) {
                n += 1;
                cmd.publish(
                    &topic,
                    format!("{{\"id\":\"p{n}\",\"op\":\"ping\"}}").as_bytes(),
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    }

    /// Messages with a seq seen so far.
    fn received(&self) -> usize {
        queued(&self.sub.all()).len()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.pinging.store(false, Ordering::SeqCst);
    }
}

fn queued(all: &[Received]) -> Vec<&Received> {
    all.iter()
        .filter(|m| {
            m.topic.contains("/data/") || m.topic.contains("/event/") || m.topic.ends_with("/reply")
        })
        .filter(|m| m.json["seq"].as_u64().is_some())
        .collect()
}

/// What the subscriber saw.
#[derive(Debug)]
struct FeedCheck {
    first: u64,
    last: u64,
    unique: usize,
    duplicates: usize,
    missing: Vec<u64>,
}

/// Checks duplicates carry the same payload and events are in order per device.
fn check_feed(all: &[Received]) -> anyhow::Result<FeedCheck> {
    let mut by_seq: BTreeMap<u64, String> = BTreeMap::new();
    let mut duplicates = 0;
    let mut last_event: BTreeMap<String, u64> = BTreeMap::new();
    for m in queued(all) {
        let seq = m.json["seq"].as_u64().unwrap_or(0);
        let text = m.text_apart_from_replay();
        match by_seq.get(&seq) {
            Some(prev) => {
                duplicates += 1;
                ensure!(
                    *prev == text,
                    "seq {seq} reused with a different payload:\n{prev}\n{text}"
                );
            }
            None => {
                if m.topic.contains("/event/") {
                    let dev = m.topic.rsplit('/').next().unwrap_or("").to_owned();
                    if let Some(&p) = last_event.get(&dev) {
                        ensure!(
                            seq > p,
                            "events of {dev} out of order: {seq} first seen after {p}"
                        );
                    }
                    last_event.insert(dev, seq);
                }
                by_seq.insert(seq, text);
            }
        }
    }
    let (Some(&first), Some(&last)) = (by_seq.keys().next(), by_seq.keys().next_back()) else {
        bail!("no queued message received at all")
    };
    let missing = (first..=last).filter(|s| !by_seq.contains_key(s)).collect();
    Ok(FeedCheck {
        first,
        last,
        unique: by_seq.len(),
        duplicates,
        missing,
    })
}

/// `towerlink store inspect --list`: (unacknowledged seqs, next seq).
fn inspect(store: &Path) -> anyhow::Result<(BTreeSet<u64>, u64)> {
    towerlink_e2e::store_inspect(store)
}

/// Stops the agent cleanly, checks the store is drained, and checks the whole feed: every
/// seq the agent ever issued arrived, except `may_miss`.
fn finish(
    rig: &Rig,
    agent: &mut AgentProcess,
    may_miss: &BTreeSet<u64>,
) -> anyhow::Result<FeedCheck> {
    rig.pinging.store(false, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(300));
    agent.stop()?;
    let (left, next) = inspect(&rig.store())?;
    ensure!(
        left.is_empty(),
        "unacknowledged after a clean stop: {left:?}"
    );
    // Everything acknowledged has reached the persistent session: wait for it to arrive.
    let arrived = wait_until(Duration::from_secs(20), || {
        check_feed(&rig.sub.all()).is_ok_and(|c| c.last + 1 >= next)
    });
    let check = check_feed(&rig.sub.all())?;
    ensure!(
        arrived,
        "the last seq issued was {} but the subscriber saw up to {}",
        next - 1,
        check.last
    );
    let unexpected: Vec<u64> = check
        .missing
        .iter()
        .copied()
        .filter(|s| !may_miss.contains(s))
        .collect();
    ensure!(
        unexpected.is_empty(),
        "seqs missing at the subscriber: {unexpected:?} ({check:?})"
    );
    println!(
        "seq {}..={}: {} unique, {} duplicates, {} missing (allowed: destroyed before sent)",
        check.first,
        check.last,
        check.unique,
        check.duplicates,
        check.missing.len()
    );
    Ok(check)
}

fn wait_for_more(rig: &Rig, more: usize, timeout: Duration, what: &str) -> anyhow::Result<()> {
    let have = rig.received();
    ensure!(
        wait_until(timeout, || rig.received() >= have + more),
        "timed out waiting for {what} ({} messages so far)",
        rig.received()
    );
    Ok(())
}

#[test]
fn a_broker_outage_twice_under_load_loses_nothing() -> anyhow::Result<()> {
    let mut rig = Rig::new("chaos-broker", 21, 4)?;
    let pings = rig.start_pings();
    let mut agent = AgentProcess::start(&rig.config)?;
    wait_for_more(&rig, 20, Duration::from_secs(20), "first messages")?;
    for round in 0..2 {
        rig.broker.stop()?;
        std::thread::sleep(Duration::from_secs(10));
        ensure!(agent.is_running(), "agent died during the outage");
        rig.broker.restart()?;
        // The agent's back-off after 10 s is at most ~16 s; then the backlog replays.
        wait_for_more(
            &rig,
            150,
            Duration::from_secs(45),
            &format!("the backlog after outage {round}"),
        )?;
    }
    let check = finish(&rig, &mut agent, &BTreeSet::new())?;
    ensure!(check.missing.is_empty(), "{check:?}");
    ensure!(
        check.unique > 400,
        "too little load to mean anything: {check:?}"
    );
    let _ = pings.join();
    Ok(())
}

#[test]
fn twenty_kill_9s_under_load_lose_nothing() -> anyhow::Result<()> {
    let rig = Rig::new("chaos-kill", 22, 4)?;
    let pings = rig.start_pings();
    let mut rng = Lcg(0x5eed_0022);
    for _ in 0..20 {
        let mut agent = AgentProcess::start(&rig.config)?;
        std::thread::sleep(Duration::from_millis(300 + rng.below(1200)));
        agent.kill()?;
    }
    let mut agent = AgentProcess::start(&rig.config)?;
    wait_for_more(
        &rig,
        30,
        Duration::from_secs(30),
        "messages after the last restart",
    )?;
    let check = finish(&rig, &mut agent, &BTreeSet::new())?;
    ensure!(check.missing.is_empty(), "{check:?}");
    ensure!(check.unique > 200, "too little load: {check:?}");
    let _ = pings.join();
    Ok(())
}

/// The share of the samples the nodes sent that reached windows, per channel kind, over
/// the stretch from the end of each device's first window to the start of its last: the
/// simulated nodes sample at exactly their advertised rate (strain 50 Hz, tilt 10 Hz), so
/// what was sent over a span is the rate times the span. Returns (received, sent).
fn samples_in_windows(all: &[Received]) -> (u64, u64) {
    const RATES: [(&str, u64); 3] = [("strain", 50), ("tilt_x", 10), ("tilt_y", 10)];
    let ms = |v: &serde_json::Value| -> Option<i64> {
        let t = humantime::parse_rfc3339(v.as_str()?).ok()?;
        Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as i64)
    };
    // Unique windows by seq, then by device.
    let mut by_seq: BTreeMap<u64, &Received> = BTreeMap::new();
    for m in queued(all)
        .into_iter()
        .filter(|m| m.topic.contains("/data/"))
    {
        if let Some(seq) = m.json["seq"].as_u64() {
            by_seq.entry(seq).or_insert(m);
        }
    }
    let mut by_dev: BTreeMap<&str, Vec<(i64, i64, &serde_json::Value)>> = BTreeMap::new();
    for m in by_seq.values() {
        let (Some(start), Some(end)) = (ms(&m.json["start"]), ms(&m.json["end"])) else {
            continue;
        };
        let dev = m.topic.rsplit('/').next().unwrap_or("");
        by_dev
            .entry(dev)
            .or_default()
            .push((start, end, &m.json["ch"]));
    }
    let (mut received, mut sent) = (0, 0);
    for windows in by_dev.values_mut() {
        // Fixed windows only (a deadband report has its own span).
        windows.retain(|w| RATES.iter().any(|(ch, _)| w.2.get(*ch).is_some()));
        windows.sort_by_key(|w| w.0);
        let (Some(first), Some(last)) = (windows.first(), windows.last()) else {
            continue;
        };
        let (from, to) = (first.1, last.0);
        let gaps: Vec<(i64, i64)> = windows
            .windows(2)
            .filter(|p| p[1].0 > p[0].1)
            .map(|p| (p[0].1, p[1].0 - p[0].1))
            .collect();
        println!("gaps between windows (at, ms): {gaps:?}");
        for (ch, rate) in RATES {
            sent += rate * u64::try_from(to - from).unwrap_or(0) / 1000;
            let got = windows
                .iter()
                .filter(|w| w.0 >= from && w.1 <= to)
                .filter_map(|w| w.2[ch]["n"].as_u64())
                .sum::<u64>();
            println!(
                "{ch}: {got} of {} in windows",
                rate * u64::try_from(to - from).unwrap_or(0) / 1000
            );
            received += got;
        }
    }
    (received, sent)
}

/// Issue 11: two SIGKILLs in a minute under load; the share of the samples the nodes sent
/// that reach windows (spike rejection's drops included). Prints the figure; fails below
/// 88 % (measured: 91.0 %; the windows open at each kill, about `window + grace`, are lost).
#[test]
fn two_kill_9s_in_a_minute_lose_few_samples() -> anyhow::Result<()> {
    let rig = Rig::new("chaos-share", 33, 2)?;
    // Windows of 1 s with the default grace (2 s): a 50 Hz batch of 32 spans 640 ms, which
    // the rig's 200 ms windows with 300 ms of grace would partly count as late; the figure
    // is about what a kill costs.
    let text = std::fs::read_to_string(&rig.config)?.replace(
        "window = \"200ms\"\nwindow_grace = \"300ms\"",
        "window = \"1s\"\nwindow_grace = \"2s\"",
    );
    ensure!(text.contains("window = \"1s\""), "{text}");
    std::fs::write(&rig.config, text)?;
    let pings = rig.start_pings();
    let mut agent = AgentProcess::start(&rig.config)?;
    wait_for_more(&rig, 20, Duration::from_secs(30), "the first windows")?;
    for _ in 0..2 {
        std::thread::sleep(Duration::from_secs(20));
        agent.kill()?;
        agent = AgentProcess::start(&rig.config)?;
    }
    std::thread::sleep(Duration::from_secs(20));
    finish(&rig, &mut agent, &BTreeSet::new())?;
    let (received, sent) = samples_in_windows(&rig.sub.all());
    let share = received as f64 / sent.max(1) as f64;
    println!(
        "samples in windows through 2 kill -9s in a minute: {:.1} % ({received} of {sent} sent)",
        share * 100.0
    );
    ensure!(
        share >= 0.88,
        "only {:.1} % of the samples sent reached windows",
        share * 100.0
    );
    let _ = pings.join();
    Ok(())
}

/// CRC-32/ISO-HDLC, bit by bit (the store's frame checksum, written here from its definition
/// so the test does not lean on the agent's code).
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// One intact frame of a segment file: its byte range and, for a message, its seq.
struct Frame {
    start: usize,
    end: usize,
    seq: Option<u64>,
}

/// The intact frames of a segment, parsed from the documented layout (`magic "TLQ1" | body
/// length u32 LE | CRC-32 of the body u32 LE | body`, a message body being `1 | seq u64 LE |
/// ...`), skipping anything else byte by byte as damage.
fn frames(bytes: &[u8]) -> Vec<Frame> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 12 <= bytes.len() {
        let word =
            |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        let len = word(at + 4) as usize;
        let end = at + 12 + len;
        if &bytes[at..at + 4] == b"TLQ1"
            && len > 0
            && end <= bytes.len()
            && crc32(&bytes[at + 12..end]) == word(at + 8)
        {
            let body = &bytes[at + 12..end];
            let seq = (body[0] == 1 && body.len() >= 9).then(|| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&body[1..9]);
                u64::from_le_bytes(b)
            });
            out.push(Frame {
                start: at,
                end,
                seq,
            });
            at = end;
        } else {
            at += 1;
        }
    }
    out
}

/// What one round of damage did, worked out from the bytes alone.
#[derive(Debug, Default)]
struct Damage {
    /// Seqs of the message frames a flipped byte fell in or the truncation cut into: at most
    /// these may be lost.
    at_risk: BTreeSet<u64>,
    /// A flipped frame (of any kind) has an intact frame after it in its file: the loader
    /// must report it as damage (not as a torn tail).
    corrupted_inside: bool,
}

/// Flips bytes in and truncates the store's segment files at random offsets, and works out
/// from the files' bytes, before the damage, which records each damaged offset falls in.
fn damage(store: &Path, rng: &mut Lcg) -> anyhow::Result<Damage> {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(store)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort();
    let non_empty: Vec<&PathBuf> = segments
        .iter()
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
        .collect();
    ensure!(!non_empty.is_empty(), "no segment to damage");
    let originals: BTreeMap<&PathBuf, Vec<u8>> = non_empty
        .iter()
        .map(|p| Ok((*p, std::fs::read(p)?)))
        .collect::<anyhow::Result<_>>()?;
    let mut flips: BTreeMap<&PathBuf, Vec<usize>> = BTreeMap::new();
    for _ in 0..3 {
        let path = non_empty[rng.below(non_empty.len() as u64) as usize];
        let mut bytes = std::fs::read(path)?;
        if !bytes.is_empty() {
            let at = rng.below(bytes.len() as u64) as usize;
            bytes[at] ^= 0x5a;
            std::fs::write(path, bytes)?;
            flips.entry(path).or_default().push(at);
        }
    }
    let cut_path = non_empty[rng.below(non_empty.len() as u64) as usize];
    let len = std::fs::metadata(cut_path)?.len();
    let cut = rng.below(len) as usize;
    let f = std::fs::OpenOptions::new().write(true).open(cut_path)?;
    f.set_len(cut as u64)?;

    let mut d = Damage::default();
    for (path, bytes) in &originals {
        let frames = frames(bytes);
        let kept_to = if *path == cut_path { cut } else { bytes.len() };
        let flipped = flips.get(path).cloned().unwrap_or_default();
        let hit = |f: &Frame| f.end > kept_to || flipped.iter().any(|&o| o >= f.start && o < f.end);
        for (i, frame) in frames.iter().enumerate() {
            if !hit(frame) {
                continue;
            }
            d.at_risk.extend(frame.seq);
            let flipped_here = frame.end <= kept_to;
            if flipped_here && frames[i + 1..].iter().any(|later| !hit(later)) {
                d.corrupted_inside = true;
            }
        }
    }
    Ok(d)
}

#[test]
fn damaged_queue_files_cost_only_the_damaged_records() -> anyhow::Result<()> {
    let mut rig = Rig::new("chaos-damage", 23, 4)?;
    let mut rng = Lcg(0x5eed_0023);
    let mut at_risk = BTreeSet::new();
    let mut expect_reported = false;
    let mut agent = AgentProcess::start(&rig.config)?;
    for round in 0..3 {
        wait_for_more(&rig, 20, Duration::from_secs(30), "messages")?;
        // A backlog on disk: the broker goes away, the agent keeps queueing, then dies.
        rig.broker.stop()?;
        std::thread::sleep(Duration::from_secs(2));
        agent.kill()?;
        let (before, _) = inspect(&rig.store())?;
        ensure!(!before.is_empty(), "round {round}: no backlog to damage");
        let d = damage(&rig.store(), &mut rng)?;
        expect_reported |= d.corrupted_inside;
        // Only backlog records can be lost; which ones is known from the damaged offsets.
        at_risk.extend(d.at_risk.intersection(&before).copied());
        rig.broker.restart()?;
        let sessions = |a: &AgentProcess| a.log().matches("MQTT session up").count();
        let before_start = sessions(&agent);
        agent = AgentProcess::start(&rig.config)?;
        ensure!(
            wait_until(Duration::from_secs(20), || agent.is_running()
                && sessions(&agent) > before_start),
            "round {round}: the agent did not come back on a damaged store; log:\n{}",
            agent.log()
        );
    }
    wait_for_more(
        &rig,
        20,
        Duration::from_secs(30),
        "messages after the last round",
    )?;
    // At most the records the damage fell in are missing (finish checks it seq by seq).
    let check = finish(&rig, &mut agent, &at_risk)?;
    println!(
        "damage: {} backlog records at risk, {} missing",
        at_risk.len(),
        check.missing.len()
    );
    ensure!(
        !expect_reported || agent.log().contains("store damage found at open"),
        "damage was not reported"
    );
    Ok(())
}
