//! The compact telemetry path end to end (issue 18): a simulated tower, the real agent with
//! `[mqtt] batch = "3s"`, Mosquitto, and a platform subscriber that decodes each batch with
//! `feed::batch::decode` and validates every item as a `data` message (the harness does).
//! Every `seq` arrives exactly once across batches and single messages, every batched
//! window's statistics are exactly those of what the node sent, and a command's reply (an
//! event-class message) is not held for the batch.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use towerlink_e2e::{unique_gw, write_config_batch, AgentProcess, Received, Subscriber};
use towerlink_firmware::protocol::{Body, Frame};
use towerlink_sim::virtual_node::{spawn_tower, VirtualNode};
use towerlink_sim_chips::Scenario;

const RAW: &str = "[node.channels.strain]\nspike = false\n[node.channels.tilt_x]\nspike = false\n\
                   [node.channels.tilt_y]\nspike = false\n[node.channels.temperature]\nspike = false\n";

fn node_sections(nodes: &[VirtualNode]) -> String {
    nodes
        .iter()
        .map(|n| {
            format!(
                "[[node]]\nid = \"{}\"\nport = \"{}\"\nwindow = \"1s\"\nwindow_grace = \"1s\"\nnode_id = {}\n{RAW}\n",
                n.dev(),
                n.path().display(),
                n.node_id()
            )
        })
        .collect()
}

fn sent_values(frames: &[Frame], channel: u8) -> Vec<f32> {
    frames
        .iter()
        .filter_map(|f| match &f.body {
            Body::Samples {
                channel: c, values, ..
            } if *c == channel => Some(values.iter().copied().collect::<Vec<_>>()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// Does `values` hold a contiguous run with exactly these statistics (n, min, max, last,
/// mean and std to f32 precision)?
fn matches_a_run(values: &[f32], stats: &serde_json::Value) -> bool {
    let (Some(n), Some(min), Some(max), Some(last), Some(mean)) = (
        stats["n"].as_u64(),
        stats["min"].as_f64(),
        stats["max"].as_f64(),
        stats["last"].as_f64(),
        stats["mean"].as_f64(),
    ) else {
        return false;
    };
    let n = n as usize;
    if n == 0 || n > values.len() {
        return false;
    }
    (0..=values.len() - n).any(|i| {
        let run = &values[i..i + n];
        let rmin = run.iter().copied().fold(f32::INFINITY, f32::min);
        let rmax = run.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let rmean = run.iter().map(|&x| f64::from(x)).sum::<f64>() / n as f64;
        run[n - 1] == last as f32
            && rmin == min as f32
            && rmax == max as f32
            && (rmean - mean).abs() <= 1e-5 * rmean.abs().max(1e-3)
    })
}

fn queued(m: &Received) -> bool {
    m.topic.contains("/data/") || m.topic.contains("/event/") || m.topic.ends_with("/reply")
}

#[test]
fn batched_windows_arrive_once_exact_and_replies_are_not_held() -> anyhow::Result<()> {
    towerlink_e2e::binary("towerlink-agent", "towerlink")?;
    let dir = tempfile::tempdir()?;
    let scenario = Scenario::from_toml_str(
        "seed = 11\n[[panels]]\nname = \"panel-0\"\nnode = 100\n[[panels]]\nname = \"panel-1\"\nnode = 101\n",
    )?;
    let nodes = spawn_tower(&scenario, &dir.path().join("ports"), true)?;
    let gw = unique_gw("e2e-batch");
    let sub = Subscriber::connect(&format!("towerlink/v1/{gw}/#"))?;
    let config = write_config_batch(
        dir.path(),
        &gw,
        "3s",
        &format!("[health]\ninterval = \"1s\"\n\n{}", node_sections(&nodes)),
    )?;
    let mut agent = AgentProcess::start(&config)?;

    sub.wait(Duration::from_secs(40), "three batches", |m| {
        m.iter().filter(|r| r.topic.ends_with("/batch")).count() >= 3
    })?;

    // A command's reply goes out at once, not with the next batch.
    let cmd = format!("towerlink/v1/{gw}/cmd");
    let asked = Instant::now();
    sub.publish(&cmd, br#"{"id":"b-ping","op":"ping"}"#)?;
    sub.wait(Duration::from_secs(10), "the ping's reply", |m| {
        m.iter()
            .any(|r| r.topic.ends_with("/reply") && r.json["id"] == "b-ping")
    })?;
    let replied = sub
        .all()
        .iter()
        .find(|r| r.topic.ends_with("/reply") && r.json["id"] == "b-ping")
        .map(|r| r.at)
        .context("reply")?;
    let latency = replied.saturating_duration_since(asked);
    ensure!(
        latency < Duration::from_millis(1500),
        "the reply waited {latency:?}: held behind the 3 s batch?"
    );
    agent.stop()?;

    let received = sub.all();
    // No window travelled alone: every one is an item of a batch.
    let windows: Vec<&Received> = received
        .iter()
        .filter(|r| r.topic.contains("/data/") && r.json.get("start").is_some())
        .collect();
    ensure!(windows.len() >= 6, "only {} windows", windows.len());
    ensure!(
        windows.iter().all(|w| w.batched),
        "a window went out alone with batching on"
    );
    // Every seq exactly once, no gap.
    let mut seen = BTreeSet::new();
    for m in received.iter().filter(|m| queued(m)) {
        let seq = m.json["seq"]
            .as_u64()
            .context("a queued message without seq")?;
        ensure!(seen.insert(seq), "seq {seq} arrived twice");
    }
    let (first, last) = (
        *seen.first().context("no seq")?,
        *seen.last().context("no seq")?,
    );
    let missing: Vec<u64> = (first..=last).filter(|s| !seen.contains(s)).collect();
    ensure!(missing.is_empty(), "seq gaps: {missing:?}");

    // Each batched window's statistics are exactly those of what its node sent.
    let ids: BTreeMap<&str, u8> = [
        ("strain", 0u8),
        ("tilt_x", 1),
        ("tilt_y", 2),
        ("temperature", 3),
    ]
    .into_iter()
    .collect();
    let mut checked = 0;
    for node in &nodes {
        let sent = node.sent_frames();
        for w in windows.iter().filter(|w| w.json["dev"] == node.dev()) {
            for (name, stats) in w.json["ch"].as_object().context("window without ch")? {
                let id = *ids.get(name.as_str()).context("unknown channel")?;
                ensure!(
                    matches_a_run(&sent_values(&sent, id), stats),
                    "{} {name} window {} ({stats}) matches nothing the node sent",
                    node.dev(),
                    w.json["start"]
                );
                checked += 1;
            }
        }
    }
    ensure!(checked >= 12, "only {checked} channel windows checked");
    ensure!(sub.violations().is_empty(), "{:?}", sub.violations());
    Ok(())
}

/// The broker goes away mid-run and comes back: nothing is lost. Batches the agent had in
/// flight, and the windows queued during the outage, arrive (in batches) once it is back;
/// every seq from the first to the last is there, each window only ever as a batch item.
#[test]
fn a_broker_restart_mid_run_loses_nothing() -> anyhow::Result<()> {
    use towerlink_e2e::mosquitto::{MosquittoProcess, SessionSubscriber};
    towerlink_e2e::binary("towerlink-agent", "towerlink")?;
    let dir = tempfile::tempdir()?;
    let mut broker = MosquittoProcess::start(&dir.path().join("broker"))?;
    let scenario = Scenario::from_toml_str(
        "seed = 12\n[[panels]]\nname = \"panel-0\"\nnode = 100\n[[panels]]\nname = \"panel-1\"\nnode = 101\n",
    )?;
    let nodes = spawn_tower(&scenario, &dir.path().join("ports"), true)?;
    let gw = unique_gw("e2e-batch-restart");
    let sub = SessionSubscriber::connect(
        broker.port(),
        &unique_gw("batch-sub"),
        &format!("towerlink/v1/{gw}/#"),
    )?;
    let config = dir.path().join("towerlink.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nid = \"{gw}\"\n\n[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\nkeep_alive = \"5s\"\nbatch = \"2s\"\n\n[store]\npath = \"{}\"\nfsync = \"50ms\"\n\n[health]\ninterval = \"1s\"\n\n{}",
            broker.port(),
            dir.path().join("store").display(),
            node_sections(&nodes)
        ),
    )?;
    let mut agent = AgentProcess::start(&config)?;
    let batches = |s: &SessionSubscriber| {
        s.all()
            .iter()
            .filter(|r| r.topic.ends_with("/batch"))
            .count()
    };
    ensure!(
        towerlink_e2e::wait_until(Duration::from_secs(30), || batches(&sub) >= 2),
        "no two batches before the outage"
    );
    broker.stop()?;
    // The outage: windows keep coming and queue up.
    std::thread::sleep(Duration::from_secs(6));
    ensure!(agent.is_running(), "the agent died during the outage");
    let max_seq = |s: &SessionSubscriber| {
        s.all()
            .iter()
            .filter(|m| queued(m))
            .filter_map(|m| m.json["seq"].as_u64())
            .max()
            .unwrap_or(0)
    };
    let before = max_seq(&sub);
    broker.restart()?;
    // Back-off after a 6 s outage is well under 20 s; then the backlog goes out.
    ensure!(
        towerlink_e2e::wait_until(Duration::from_secs(45), || max_seq(&sub) >= before + 30),
        "the backlog did not arrive after the broker came back (max seq {} before {before})",
        max_seq(&sub)
    );
    agent.stop()?;
    let received = sub.all();
    let seen: BTreeSet<u64> = received
        .iter()
        .filter(|m| queued(m))
        .filter_map(|m| m.json["seq"].as_u64())
        .collect();
    let (first, last) = (
        *seen.first().context("no seq")?,
        *seen.last().context("no seq")?,
    );
    let missing: Vec<u64> = (first..=last).filter(|s| !seen.contains(s)).collect();
    ensure!(missing.is_empty(), "lost across the restart: {missing:?}");
    ensure!(
        received
            .iter()
            .filter(|r| r.topic.contains("/data/") && r.json.get("start").is_some())
            .all(|w| w.batched),
        "a window went out alone"
    );
    Ok(())
}

/// A child process whose stderr is collected; killed if dropped while running.
struct Logged {
    child: std::process::Child,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Logged {
    fn spawn(cmd: &mut std::process::Command) -> anyhow::Result<Logged> {
        use std::io::BufRead;
        use std::process::Stdio;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {cmd:?}"))?;
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let pipe = child.stderr.take().context("stderr")?;
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        });
        Ok(Logged { child, stderr })
    }

    fn log(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits (bounded) for the exit; the exit code and stdout as one JSON object.
    fn finish(mut self, within: Duration) -> anyhow::Result<(i32, serde_json::Value)> {
        use std::io::Read;
        let mut status = None;
        towerlink_e2e::wait_until(within, || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        let status = status.with_context(|| format!("still running: {}", self.log()))?;
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .context("stdout")?
            .read_to_string(&mut out)?;
        let v = serde_json::from_str(out.trim())
            .with_context(|| format!("not one JSON object: {out:?}; stderr: {}", self.log()))?;
        Ok((status.code().unwrap_or(-1), v))
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Issue 18's done-when: the same simulated tower (`towerlink-sim fleet`: the real agent fed
/// in process by the seeded panel and lift models) run twice at once on one private
/// Mosquitto, once on the compact path (`batch = "5s"`) and once per-window JSON
/// (`batch = "0s"`), from the same seed and the same sample origin (`--origin`), so the
/// same samples fall in the same windows. `towerlink audit --strict` watches both: no gap,
/// no invalid message. Every complete window (n = expected on every channel) of one run is
/// in the other with exactly the same statistics (a window cut by the start or the stop
/// differs by when the run began or stopped, not by the path). Replies to pings sent to both
/// every 400 ms (the event class: never batched) come back as fast on the compact path as
/// on JSON, and the events the runs raise are the same.
#[test]
fn the_compact_path_audits_clean_with_the_same_windows_and_events_as_json() -> anyhow::Result<()> {
    use std::process::Command;
    use towerlink_e2e::binary;
    use towerlink_e2e::mosquitto::MosquittoProcess;

    let dir = tempfile::tempdir()?;
    let mosquitto = MosquittoProcess::start(dir.path())?;
    let port = mosquitto.port();
    let url = format!("mqtt://127.0.0.1:{port}");
    let root = "towerlink/v1";
    let mut opts = rumqttc::MqttOptions::new("batch-same-sub", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(10));
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let sub = Subscriber::connect_with(opts, &format!("{root}/+/#"), 4096)?;

    let audit = Logged::spawn(Command::new(binary("towerlink-agent", "towerlink")?).args([
        "audit",
        "--broker",
        &url,
        "--root",
        root,
        "--duration",
        "34s",
        "--grace",
        "3s",
        "--json",
        "--strict",
    ]))?;
    ensure!(
        towerlink_e2e::wait_until(Duration::from_secs(15), || audit
            .log()
            .contains("subscribed to")),
        "towerlink audit did not subscribe: {}",
        audit.log()
    );
    // The same origin for both, a little ahead (each fleet waits for it).
    let origin = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis()
        + 4_000;
    let sim = binary("towerlink-sim", "towerlink-sim")?;
    let fleet = |prefix: &str, batch: &str| {
        Logged::spawn(Command::new(&sim).args([
            "fleet",
            "--gateways",
            "1",
            "--broker",
            &url,
            "--root",
            root,
            "--nodes",
            "3",
            "--lifts",
            "2",
            "--window",
            "2s",
            "--batch",
            batch,
            "--duration",
            "28s",
            "--seed",
            "18",
            "--origin",
            &origin.to_string(),
            "--prefix",
            prefix,
            "--json",
        ]))
    };
    let compact = fleet("compact", "5s")?;
    let json = fleet("json", "0s")?;

    // Pings to both while they run (from when both are online, until shortly before their
    // stop); the time each was sent.
    sub.wait(Duration::from_secs(30), "both gateways online", |m| {
        ["compact-00000", "json-00000"].iter().all(|gw| {
            m.iter()
                .any(|r| r.topic == format!("{root}/{gw}/state") && r.json["state"] == "online")
        })
    })?;
    let mut asked: BTreeMap<String, Instant> = BTreeMap::new();
    let until = Instant::now() + Duration::from_secs(14);
    let mut n = 0;
    while Instant::now() < until {
        n += 1;
        for gw in ["compact-00000", "json-00000"] {
            let id = format!("{gw}-{n}");
            asked.insert(id.clone(), Instant::now());
            sub.publish(
                &format!("{root}/{gw}/cmd"),
                format!(r#"{{"id":"{id}","op":"ping"}}"#).as_bytes(),
            )?;
        }
        std::thread::sleep(Duration::from_millis(400));
    }
    let (code, compact_report) = compact.finish(Duration::from_secs(60))?;
    ensure!(code == 0, "compact fleet: {compact_report}");
    let (code, json_report) = json.finish(Duration::from_secs(60))?;
    ensure!(code == 0, "json fleet: {json_report}");
    let (code, report) = audit.finish(Duration::from_secs(60))?;
    for gw in ["compact-00000", "json-00000"] {
        let g = &report["gateways"][gw];
        ensure!(g["gaps"] == serde_json::json!([]), "{gw}: gaps: {g}");
        ensure!(g["invalid"] == 0, "{gw}: invalid messages: {g}");
        ensure!(
            g["messages"].as_u64().unwrap_or(0) >= 50,
            "{gw}: too few messages: {g}"
        );
    }
    ensure!(code == 0, "audit --strict: {report}");
    ensure!(sub.violations().is_empty(), "{:?}", sub.violations());

    let received = sub.all();
    let of = |gw: &str| -> Vec<&Received> {
        received
            .iter()
            .filter(|m| m.topic.starts_with(&format!("{root}/{gw}/")))
            .collect()
    };
    let (c, j) = (of("compact-00000"), of("json-00000"));
    // How each travelled.
    let windows = |ms: &[&Received]| -> Vec<serde_json::Value> {
        ms.iter()
            .filter(|m| m.topic.contains("/data/") && m.json.get("start").is_some())
            .map(|m| m.json.clone())
            .collect()
    };
    ensure!(
        c.iter()
            .filter(|m| m.topic.contains("/data/") && m.json.get("start").is_some())
            .all(|m| m.batched),
        "a compact-path window went alone"
    );
    ensure!(
        j.iter().all(|m| !m.batched),
        "a JSON-path window came in a batch"
    );
    // Complete windows by (dev, start, end): their channel statistics (seq, gw and any
    // replay flag aside).
    let complete = |ws: Vec<serde_json::Value>| -> BTreeMap<(String, String, String), String> {
        ws.into_iter()
            .filter(|w| {
                w["ch"].as_object().is_some_and(|ch| {
                    !ch.is_empty() && ch.values().all(|s| s["n"] == s["expected"])
                })
            })
            .map(|w| {
                (
                    (
                        w["dev"].as_str().unwrap_or("").to_owned(),
                        w["start"].as_str().unwrap_or("").to_owned(),
                        w["end"].as_str().unwrap_or("").to_owned(),
                    ),
                    w["ch"].to_string(),
                )
            })
            .collect()
    };
    let (cw, jw) = (complete(windows(&c)), complete(windows(&j)));
    let common: Vec<_> = cw.keys().filter(|k| jw.contains_key(*k)).collect();
    ensure!(
        common.len() >= 3 * 6,
        "only {} complete windows in both runs (compact {}, json {})",
        common.len(),
        cw.len(),
        jw.len()
    );
    for k in &common {
        ensure!(
            cw[*k] == jw[*k],
            "window {k:?} differs:\ncompact {}\njson    {}",
            cw[*k],
            jw[*k]
        );
    }
    // Complete windows in only one run lie before the other's first or after its last.
    for (mine, other, name) in [(&cw, &jw, "compact"), (&jw, &cw, "json")] {
        for k in mine.keys().filter(|k| !other.contains_key(*k)) {
            let span = other
                .keys()
                .filter(|o| o.0 == k.0)
                .map(|o| o.1.clone())
                .fold(None, |acc: Option<(String, String)>, s| match acc {
                    None => Some((s.clone(), s)),
                    Some((lo, hi)) => Some((lo.min(s.clone()), hi.max(s))),
                });
            if let Some((lo, hi)) = span {
                ensure!(
                    k.1 < lo || k.1 > hi,
                    "{name} has complete window {k:?} inside the other run's span {lo}..{hi} but the other has not"
                );
            }
        }
    }

    // Events (the pipeline's, lift faults and states): the same in both.
    let events = |ms: &[&Received]| -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for m in ms.iter().filter(|m| m.topic.contains("/event/")) {
            let key = format!(
                "{} {} {} {}",
                m.json["dev"], m.json["event"], m.json["severity"], m.json["state"]
            );
            *out.entry(key).or_insert(0) += 1;
        }
        out
    };
    ensure!(
        events(&c) == events(&j),
        "the runs raised different events:\ncompact {:?}\njson    {:?}",
        events(&c),
        events(&j)
    );
    // Latency of the replies (event class) on each path.
    let latencies = |ms: &[&Received]| -> Vec<Duration> {
        let mut l: Vec<Duration> = ms
            .iter()
            .filter(|m| m.topic.ends_with("/reply"))
            .filter_map(|m| {
                let at = asked.get(m.json["id"].as_str()?)?;
                Some(m.at.saturating_duration_since(*at))
            })
            .collect();
        l.sort();
        l
    };
    let (lc, lj) = (latencies(&c), latencies(&j));
    ensure!(
        lc.len() == n && lj.len() == n,
        "replies missing: {} and {} of {n}",
        lc.len(),
        lj.len()
    );
    let pct = |l: &[Duration], p: usize| l[(l.len() - 1) * p / 100];
    let (c50, j50, c90, j90) = (pct(&lc, 50), pct(&lj, 50), pct(&lc, 90), pct(&lj, 90));
    eprintln!(
        "reply latency: compact p50 {c50:?} p90 {c90:?} max {:?}; json p50 {j50:?} p90 {j90:?} max {:?}; {} common complete windows equal",
        lc[lc.len() - 1],
        lj[lj.len() - 1],
        common.len()
    );
    ensure!(
        c50 <= j50 + Duration::from_millis(50) && c90 <= j90 + Duration::from_millis(200),
        "replies slower on the compact path: p50 {c50:?} vs {j50:?}, p90 {c90:?} vs {j90:?}"
    );
    Ok(())
}
