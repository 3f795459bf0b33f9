//! The agent over a real (emulated) cellular link, and `allow_insecure` against a broker at a
//! non-loopback address (issue 13 item 7).
//!
//! Each test makes two network namespaces of its own (`tlA-<pid>-<tag>`, `tlB-<pid>-<tag>`)
//! joined by the user-space link of `towerlink_sim::link` (a TUN device in each; it replaces
//! `tc netem`, which this kernel lacks: see that module). The agent runs in A, a private
//! Mosquitto in B listens on B's link address (`10.77.<k>.2:1883`) and on B's loopback, and
//! the platform-like subscriber connects to it from inside B (a thread that entered B), so
//! only the agent's traffic crosses the link. Simulated panel nodes and lifts are on PTYs
//! (a PTY works across namespaces). Every message received is checked against the feed's
//! schemas (the harness subscriber does that).
//!
//! - `cellular_link_loses_nothing_and_reconnects_after_a_partition`: the demo's tower (the
//!   five panels of `simulators/scenarios/tower.toml` at 5 s windows and the demo's two lifts
//!   with its fault script) over 5 % loss each way, 400 ms each way, 64 kbit/s, for two
//!   minutes, then a 30 s partition: the agent does not reconnect during the lossy phase (its
//!   health's `mqtt.connects` stays 1), the broker notices the partition through keep-alive
//!   (the last will `offline`), the agent is back within a bound derived from its back-off,
//!   the backlog drains, and after a clean stop every seq from the first to the last issued
//!   arrived (duplicates allowed and counted).
//!   `TOWERLINK_CELLULAR_LOSSY_S` and `TOWERLINK_CELLULAR_PARTITION_S` change the durations.
//! - `allow_insecure_reaches_a_non_loopback_broker_and_is_refused_without_it`: plain MQTT to
//!   `10.77.<k>.2` is refused at start-up without `allow_insecure` (exit code 2, the message
//!   says why and the broker sees no connection); with it the agent connects over the link,
//!   warns, and reports `"insecure": true`.
//!
//! They need root, `/dev/net/tun` and `ip` (Debian `iproute2`), and `mosquitto`. Without
//! root they fail, unless `TOWERLINK_TEST_SKIP_NETNS=1` is set, when they print a SKIPPED line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use rumqttc::MqttOptions;
use serde_json::Value;
use towerlink_e2e::mosquitto::MosquittoProcess;
use towerlink_e2e::{binary, unique_gw, wait_until, AgentProcess, Received, Subscriber};
use towerlink_sim::lift::LiftBus;
use towerlink_sim::link::{in_netns, Link, LinkParams};
use towerlink_sim::virtual_node::{spawn_tower, VirtualNode};
use towerlink_sim_chips::Scenario;

/// The MQTT port of the broker in B (its namespace is private, so the standard one is free).
const BROKER_PORT: u16 = 1883;

/// The agent's keep-alive in these tests.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// Can these tests run here? Fails loudly when not, unless `TOWERLINK_TEST_SKIP_NETNS=1`.
fn netns_available(test: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    let ip = Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let tun = Path::new("/dev/net/tun").exists();
    if root && ip && tun {
        return true;
    }
    let why = format!(
        "needs root (running as root: {root}), the `ip` command (iproute2: {ip}) and /dev/net/tun ({tun})"
    );
    if std::env::var("TOWERLINK_TEST_SKIP_NETNS").as_deref() == Ok("1") {
        eprintln!(
            "\n******** SKIPPED {test}: {why}; TOWERLINK_TEST_SKIP_NETNS=1 is set ********\n"
        );
        return false;
    }
    panic!("{test} {why}; run the tests as root, or set TOWERLINK_TEST_SKIP_NETNS=1 to skip it");
}

/// A duration from the environment (whole seconds), else the default.
fn env_secs(name: &str, default: u64) -> Duration {
    let secs = match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number of seconds")),
        Err(_) => default,
    };
    Duration::from_secs(secs)
}

/// Two namespaces of this test, deleted on every exit path.
struct Netns {
    a: String,
    b: String,
}

impl Netns {
    fn new(tag: &str) -> anyhow::Result<Netns> {
        let pid = std::process::id();
        let ns = Netns {
            a: format!("tlA-{pid}-{tag}"),
            b: format!("tlB-{pid}-{tag}"),
        };
        for name in [&ns.a, &ns.b] {
            // A leftover of a killed earlier run with the same pid.
            let _ = Command::new("ip")
                .args(["netns", "delete", name])
                .stderr(Stdio::null())
                .status();
            let out = Command::new("ip")
                .args(["netns", "add", name])
                .output()
                .context("running `ip netns add`")?;
            ensure!(
                out.status.success(),
                "ip netns add {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for name in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "delete", name]).status();
        }
    }
}

/// Everything one test runs; fields drop in this order (processes first, namespaces last).
struct Rig {
    agent: Option<AgentProcess>,
    sub: Option<Subscriber>,
    _broker: MosquittoProcess,
    _lifts: Option<LiftBus>,
    _nodes: Vec<VirtualNode>,
    link: Link,
    netns: Netns,
    dir: tempfile::TempDir,
    gw: String,
}

impl Rig {
    /// Namespaces, the link, the broker in B and the subscriber in B.
    fn new(tag: &str, k: u8, params: LinkParams) -> anyhow::Result<Rig> {
        // Build the binaries now, on this thread, not inside a namespace.
        binary("towerlink-agent", "towerlink")?;
        let dir = tempfile::tempdir()?;
        let netns = Netns::new(tag)?;
        let link = Link::spawn(&netns.a, &netns.b, k, params)?;
        let (broker_dir, addr_b) = (dir.path().join("broker"), link.addr_b().to_owned());
        let broker = in_netns(&netns.b, move || {
            MosquittoProcess::start_with(&broker_dir, &format!("listener {BROKER_PORT} {addr_b}\n"))
        })??;
        let gw = unique_gw(&format!("cell-{tag}"));
        let filter = format!("towerlink/v1/{gw}/#");
        let port = broker.port();
        let sub = in_netns(&netns.b, move || {
            let mut opts = MqttOptions::new(unique_gw("cell-sub"), "127.0.0.1", port);
            opts.set_keep_alive(Duration::from_secs(10));
            opts.set_max_packet_size(1 << 20, 1 << 20);
            opts.set_inflight(1000);
            Subscriber::connect_filters(opts, &[filter.as_str()], 1024)
        })??;
        Ok(Rig {
            agent: None,
            sub: Some(sub),
            _broker: broker,
            _lifts: None,
            _nodes: Vec::new(),
            link,
            netns,
            dir,
            gw,
        })
    }

    fn sub(&self) -> &Subscriber {
        self.sub
            .as_ref()
            .expect("the subscriber lives as long as the rig")
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn broker_url(&self) -> String {
        format!("mqtt://{}:{BROKER_PORT}", self.link.addr_b())
    }

    /// The agent's configuration with `mqtt_extra` under `[mqtt]` and `rest` after it.
    fn write_config(&self, mqtt_extra: &str, rest: &str) -> anyhow::Result<PathBuf> {
        let text = format!(
            "[gateway]\nid = \"{}\"\n\n[mqtt]\nbatch = \"0s\"\nurl = \"{}\"\nkeep_alive = \"{}s\"\n{mqtt_extra}\n\n[store]\npath = \"{}\"\n\n[health]\ninterval = \"10s\"\n\n{rest}",
            self.gw,
            self.broker_url(),
            KEEP_ALIVE.as_secs(),
            self.store().display()
        );
        let path = self.dir.path().join("towerlink.toml");
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// Starts the agent inside namespace A.
    fn start_agent(&mut self, config: &Path) -> anyhow::Result<()> {
        let config = config.to_owned();
        let agent = in_netns(&self.netns.a, move || AgentProcess::start(&config))??;
        self.agent = Some(agent);
        Ok(())
    }

    fn agent(&mut self) -> &mut AgentProcess {
        self.agent.as_mut().expect("the agent was started")
    }

    fn broker_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker/mosquitto.log")).unwrap_or_default()
    }

    /// Health reports received after `since`.
    fn health_since(&self, since: Instant) -> Vec<Value> {
        self.sub()
            .on("/health")
            .into_iter()
            .filter(|m| m.at >= since && !m.retain)
            .map(|m| m.json)
            .collect()
    }

    /// Instants at which `state` = `state` arrived (live, not the retained copy).
    fn states(&self, state: &str) -> Vec<Instant> {
        self.sub()
            .on("/state")
            .into_iter()
            .filter(|m| m.json["state"] == state && !m.retain)
            .map(|m| m.at)
            .collect()
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

/// What the subscriber saw of the queued messages.
#[derive(Debug)]
struct FeedCheck {
    first: u64,
    last: u64,
    unique: usize,
    duplicates: usize,
    missing: Vec<u64>,
}

fn check_feed(all: &[Received]) -> anyhow::Result<FeedCheck> {
    let mut by_seq: BTreeMap<u64, String> = BTreeMap::new();
    let mut duplicates = 0;
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
    let bin = binary("towerlink-agent", "towerlink")?;
    let out = Command::new(bin)
        .args(["store", "inspect", "--list"])
        .arg(store)
        .output()?;
    ensure!(out.status.success(), "store inspect failed: {:?}", out);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut live = BTreeSet::new();
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

/// How long after the link heals the agent must be connected again, from its back-off
/// (1 s doubling to 60 s, +20 % jitter; `uplink/mod.rs`): while partitioned for `p` it cannot
/// have reached a delay above the first power of two at or above `p`, so at the heal it sleeps
/// at most 1.2x that, then one attempt (rumqttc's 5 s connect timeout, and a handshake over a
/// 400 ms, 5 %-loss link: 10 s for SYN and CONNECT retransmissions).
fn reconnect_bound(p: Duration) -> Duration {
    let mut step = Duration::from_secs(1);
    while step < p && step < Duration::from_secs(60) {
        step *= 2;
    }
    step.min(Duration::from_secs(60)).mul_f64(1.2) + Duration::from_secs(15)
}

#[test]
fn cellular_link_loses_nothing_and_reconnects_after_a_partition() -> anyhow::Result<()> {
    if !netns_available("cellular_link_loses_nothing_and_reconnects_after_a_partition") {
        return Ok(());
    }
    let lossy = env_secs("TOWERLINK_CELLULAR_LOSSY_S", 120);
    let partition = env_secs("TOWERLINK_CELLULAR_PARTITION_S", 30);
    let started = Instant::now();
    let k = (std::process::id() % 100) as u8 * 2 + 10;
    let mut rig = Rig::new("c", k, LinkParams::cellular(13))?;

    // The demo's tower: its five panels at 5 s windows and its two lifts.
    let scenario = Scenario::from_toml_str(towerlink_sim::DEFAULT_SCENARIO)
        .map_err(|e| anyhow::anyhow!("built-in scenario: {e}"))?;
    let ports = rig.dir.path().join("ports");
    let nodes = spawn_tower(&scenario, &ports, false)?;
    let lifts = towerlink_sim::demo::spawn_demo_lifts(&ports, scenario.seed)?;
    let mut rest = String::new();
    for n in &nodes {
        rest.push_str(&format!(
            "[[node]]\nid = \"{}\"\nport = \"{}\"\nwindow = \"5s\"\nnode_id = {}\n\n",
            n.dev(),
            n.path().display(),
            n.node_id()
        ));
    }
    rest.push_str(&towerlink_sim::lift::agent_lift_sections(&lifts, 9600, ""));
    rig._nodes = nodes;
    rig._lifts = Some(lifts);
    let config = rig.write_config("allow_insecure = true", &rest)?;
    rig.start_agent(&config)?;

    // Up over the lossy link: online, and data flowing.
    rig.sub().wait(
        Duration::from_secs(60),
        "the agent online and data",
        |all| {
            all.iter()
                .any(|m| m.topic.ends_with("/state") && m.json["state"] == "online")
                && queued(all).len() >= 5
        },
    )?;
    let lossy_from = Instant::now();
    eprintln!(
        "cellular: connected after {:?}; lossy phase of {lossy:?}",
        started.elapsed()
    );

    // The lossy phase. Pings now and then: commands go the other way over the link.
    let cmd = format!("towerlink/v1/{}/cmd", rig.gw);
    let mut n = 0;
    while lossy_from.elapsed() < lossy {
        n += 1;
        rig.sub().publish(
            &cmd,
            format!("{{\"id\":\"lossy-{n}\",\"op\":\"ping\"}}").as_bytes(),
        )?;
        std::thread::sleep(Duration::from_secs(10).min(lossy.saturating_sub(lossy_from.elapsed())));
        ensure!(
            rig.agent().is_running(),
            "the agent died:\n{}",
            rig.agent().log()
        );
    }
    let lossy_end = Instant::now();
    let (ab, ba) = rig.link.counters();
    eprintln!("cellular: after the lossy phase, link a->b {ab:?}, b->a {ba:?}");
    ensure!(
        ab.lost > 0 && ba.lost > 0,
        "the link lost nothing: {ab:?} {ba:?}"
    );
    // A health report from after the lossy phase: still the first session.
    rig.sub().wait(
        Duration::from_secs(30),
        "a health report after the lossy phase",
        |all| {
            all.iter()
                .any(|m| m.topic.ends_with("/health") && m.at >= lossy_end)
        },
    )?;
    let health = rig.health_since(lossy_end);
    let connects = health[0]["mqtt"]["connects"].as_u64();
    ensure!(
        connects == Some(1),
        "the agent reconnected during {lossy:?} of 5 % loss (keep-alive {KEEP_ALIVE:?}): mqtt {}",
        health[0]["mqtt"]
    );
    let replies = rig.sub().on("/reply").len();
    ensure!(replies >= 1, "no ping answered over the lossy link");
    ensure!(
        rig.states("offline").is_empty(),
        "the broker published the last will during the lossy phase"
    );

    // The partition.
    let before = queued(&rig.sub().all()).len();
    rig.link.set_partition(true);
    let cut = Instant::now();
    std::thread::sleep(partition);
    rig.link.set_partition(false);
    let healed = Instant::now();
    let (ab, ba) = rig.link.counters();
    eprintln!("cellular: partition of {partition:?} over; link a->b {ab:?}, b->a {ba:?}");
    let during = queued(&rig.sub().all()).len() - before;
    // Keep-alive: the broker gave the agent up (last will) 1.5x the keep-alive after its last
    // packet, while the link was cut.
    if partition > KEEP_ALIVE.mul_f64(1.5) + Duration::from_secs(3) {
        let offline = rig.states("offline");
        ensure!(
            offline
                .iter()
                .any(|t| *t > cut && *t <= healed + Duration::from_secs(1)),
            "no last will during a {partition:?} partition with keep-alive {KEEP_ALIVE:?}"
        );
        let log = rig.agent().log();
        ensure!(
            log.contains("MQTT connection failed"),
            "the agent did not notice the partition:\n{log}"
        );
    }

    // Back-off: connected again (a new `online`) within the bound.
    let bound = reconnect_bound(partition);
    rig.sub()
        .wait(bound, "the agent online again after the partition", |all| {
            all.iter().any(|m| {
                m.topic.ends_with("/state")
                    && m.json["state"] == "online"
                    && !m.retain
                    && m.at > healed
            })
        })?;
    let back = rig
        .states("online")
        .into_iter()
        .find(|t| *t > healed)
        .context("online after the heal")?;
    eprintln!(
        "cellular: online again {:?} after the heal (bound {bound:?}); {during} queued messages arrived during the partition",
        back - healed
    );

    // The backlog drains: a health report whose oldest queued message is younger than 10 s.
    let drain_bound = Duration::from_secs(120);
    rig.sub().wait(
        drain_bound,
        "the backlog drained (queue.oldest_age_s < 10)",
        |all| {
            all.iter().any(|m| {
                m.topic.ends_with("/health")
                    && m.at > back
                    && m.json["queue"]["oldest_age_s"]
                        .as_f64()
                        .is_none_or(|a| a < 10.0)
            })
        },
    )?;
    let drained = Instant::now();
    eprintln!(
        "cellular: backlog drained {:?} after reconnecting",
        drained - back
    );
    let health = rig.health_since(back);
    let last = health
        .last()
        .context("a health report after the reconnect")?;
    let connects = last["mqtt"]["connects"].as_u64().unwrap_or(0);
    ensure!(
        connects == 2,
        "expected exactly one reconnect after the partition: mqtt {}",
        last["mqtt"]
    );

    // A command still works, then a clean stop: nothing is left, nothing is missing.
    rig.sub()
        .publish(&cmd, b"{\"id\":\"after\",\"op\":\"ping\"}")?;
    rig.sub().wait(
        Duration::from_secs(30),
        "the reply to the ping after the partition",
        |all| {
            all.iter()
                .any(|m| m.topic.ends_with("/reply") && m.json["id"] == "after")
        },
    )?;
    rig.agent().stop()?;
    let (left, next) = inspect(&rig.store())?;
    ensure!(
        left.is_empty(),
        "unacknowledged after a clean stop: {left:?}"
    );
    let arrived = wait_until(Duration::from_secs(20), || {
        check_feed(&rig.sub().all()).is_ok_and(|c| c.last + 1 >= next)
    });
    let check = check_feed(&rig.sub().all())?;
    ensure!(
        arrived,
        "the last seq issued was {} but the subscriber saw up to {}",
        next - 1,
        check.last
    );
    ensure!(
        check.missing.is_empty(),
        "seqs missing at the subscriber: {:?} ({check:?})",
        check.missing
    );
    let (ab, ba) = rig.link.counters();
    eprintln!(
        "cellular: seq {}..={} all delivered ({} unique, {} duplicates); link a->b {ab:?}, b->a {ba:?}; wall time {:?}",
        check.first,
        check.last,
        check.unique,
        check.duplicates,
        started.elapsed()
    );
    Ok(())
}

/// Runs `towerlink run` in namespace A and waits (bounded) for it to exit by itself.
fn run_until_exit(
    ns: &str,
    config: &Path,
    timeout: Duration,
) -> anyhow::Result<(Option<i32>, String)> {
    let bin = binary("towerlink-agent", "towerlink")?;
    let config = config.to_owned();
    let child = in_netns(ns, move || {
        Command::new(bin)
            .args(["run", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    })??;
    let mut child = child;
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait()?.is_some() {
            let out = child.wait_with_output()?;
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            return Ok((out.status.code(), text));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output()?;
            bail!(
                "the agent was still running after {timeout:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn allow_insecure_reaches_a_non_loopback_broker_and_is_refused_without_it() -> anyhow::Result<()> {
    if !netns_available("allow_insecure_reaches_a_non_loopback_broker_and_is_refused_without_it") {
        return Ok(());
    }
    let k = (std::process::id() % 100) as u8 * 2 + 11;
    let mut rig = Rig::new("i", k, LinkParams::clean())?;
    let scenario =
        Scenario::from_toml_str("seed = 7\n\n[[panels]]\nname = \"panel-i1\"\nnode = 41\n")
            .map_err(|e| anyhow::anyhow!("scenario: {e}"))?;
    let nodes = spawn_tower(&scenario, &rig.dir.path().join("ports"), false)?;
    let node = format!(
        "[[node]]\nid = \"{}\"\nport = \"{}\"\nwindow = \"1s\"\nnode_id = {}\n",
        nodes[0].dev(),
        nodes[0].path().display(),
        nodes[0].node_id()
    );
    rig._nodes = nodes;
    let addr_a = rig.link.addr_a().to_owned();

    // Without allow_insecure: refused at start-up, with the reason, and never connected.
    let refused = rig.write_config("", &node)?;
    let (code, out) = run_until_exit(&rig.netns.a, &refused, Duration::from_secs(20))?;
    ensure!(
        code == Some(2),
        "expected exit code 2, got {code:?}:\n{out}"
    );
    ensure!(
        out.contains("mqtt.url")
            && out.contains("unencrypted")
            && out.contains("allow_insecure = true")
            && out.contains(rig.link.addr_b()),
        "the refusal does not say why:\n{out}"
    );
    ensure!(
        !rig.broker_log().contains(&addr_a),
        "the refused agent connected anyway:\n{}",
        rig.broker_log()
    );

    // With it: connected over the link, warned, and flagged in health.
    let allowed = rig.write_config("allow_insecure = true", &node)?;
    rig.start_agent(&allowed)?;
    rig.sub()
        .wait(Duration::from_secs(30), "online, data and health", |all| {
            all.iter()
                .any(|m| m.topic.ends_with("/state") && m.json["state"] == "online")
                && !queued(all).is_empty()
                && all.iter().any(|m| m.topic.ends_with("/health"))
        })?;
    let health = rig.sub().on("/health");
    ensure!(
        health.iter().all(|m| m.json["mqtt"]["insecure"] == true),
        "health does not say insecure: {}",
        health[0].json["mqtt"]
    );
    let log = rig.agent().log();
    ensure!(
        log.contains("allow_insecure = true: MQTT to a non-loopback broker is NOT encrypted"),
        "no warning in the log:\n{log}"
    );
    ensure!(
        rig.broker_log().contains(&addr_a),
        "the broker saw no connection from {addr_a} (over the link):\n{}",
        rig.broker_log()
    );
    let (ab, ba) = rig.link.counters();
    ensure!(
        ab.forwarded > 0 && ba.forwarded > 0,
        "nothing crossed the link"
    );
    rig.agent().stop()?;
    Ok(())
}
