//! `config_get` and `config_apply` end to end: the real agent on a simulated node and a real
//! broker, commands published as the platform would.
//!
//! - A change of a node's window takes effect (the next windows have the new length) and the
//!   reply carries the new file's SHA-256 (computed here with Python's `hashlib`).
//! - A configuration pointing the broker at a closed port is rolled back: the agent is online
//!   again on the old configuration, the file on disk is the old one, and the reply says why.
//! - A stale `expect` is refused and changes nothing.
//! - seq has no gap across all of it.
//! - With `[commands] public_key`, commands signed by a signer written apart from the agent
//!   (`tests/platform_sign.py`, Python's `cryptography`): a signed `config_apply` is carried
//!   out; one whose `toml` was changed after signing, and one in the v1 form, are refused.
//! - An apply during an active `trapped_passenger` is deferred until it clears.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use serde_json::{json, Value};
use towerlink_e2e::{unique_gw, write_config, AgentProcess, Received, Subscriber};
use towerlink_sim::virtual_node::spawn_tower;
use towerlink_sim_chips::Scenario;

/// The platform's key seed (as in `signed_cmd.rs`) and its public key.
const SEED_HEX: &str = "0707070707070707070707070707070707070707070707070707070707070707";
const PUBLIC_KEY: &str = "ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c";

/// SHA-256 of `text`, by Python's hashlib (not the agent's code).
fn sha256(text: &str) -> anyhow::Result<String> {
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("python3")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "hashlib: {out:?}");
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// Signs `cmd` with `tests/platform_sign.py` (v2 form) for gateway `gw`.
fn sign(cmd: &Value, gw: &str) -> anyhow::Result<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("platform_sign.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .args([SEED_HEX, gw])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("python3 platform_sign.py")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(cmd.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No module named 'cryptography'") {
            bail!("python3 has no `cryptography` (pip install cryptography): {err}");
        }
        bail!("platform_sign.py: {err}");
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// RFC 3339 with milliseconds -> ms since the epoch.
fn millis(v: &Value) -> Option<i64> {
    let s = v.as_str()?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.trim_end_matches('Z').split(':');
    let (h, mi): (i64, i64) = (t.next()?.parse().ok()?, t.next()?.parse().ok()?);
    let sec_ms = (t.next()?.parse::<f64>().ok()? * 1000.0).round() as i64;
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * ((mo + 9) % 12) + 2) / 5 + da - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    Some(((days * 24 + h) * 60 + mi) * 60_000 + sec_ms)
}

fn replies(sub: &Subscriber) -> Vec<Value> {
    sub.on("/reply").into_iter().map(|r| r.json).collect()
}

/// Publishes `cmd` and waits for the reply to its id.
fn command(sub: &Subscriber, gw: &str, cmd: &Value, timeout: Duration) -> anyhow::Result<Value> {
    let id = cmd["id"].as_str().context("id")?.to_owned();
    sub.publish(
        &format!("towerlink/v1/{gw}/cmd"),
        cmd.to_string().as_bytes(),
    )?;
    let find = |m: &[Value]| m.iter().find(|r| r["id"] == id.as_str()).cloned();
    sub.wait(timeout, &format!("the reply to {id}"), |_| {
        find(&replies(sub)).is_some()
    })?;
    find(&replies(sub)).context("reply vanished")
}

/// Every seq received, and the missing ones between the first and the last.
fn seq_gaps(messages: &[Received]) -> (BTreeSet<u64>, Vec<u64>) {
    let seqs: BTreeSet<u64> = messages
        .iter()
        .filter_map(|m| m.json["seq"].as_u64())
        .collect();
    let (Some(&lo), Some(&hi)) = (seqs.first(), seqs.last()) else {
        return (seqs, Vec::new());
    };
    let missing = (lo..=hi).filter(|s| !seqs.contains(s)).collect();
    (seqs, missing)
}

fn online_count(m: &[Received]) -> usize {
    m.iter()
        .filter(|r| r.topic.ends_with("/state") && r.json["state"] == "online")
        .count()
}

/// The node's section with window `window`.
fn node_section(dev: &str, port: &Path, node_id: u32, window: &str) -> String {
    format!(
        "[[node]]\nid = \"{dev}\"\nport = \"{}\"\nnode_id = {node_id}\nwindow = \"{window}\"\nwindow_grace = \"500ms\"\n",
        port.display()
    )
}

#[test]
fn config_apply_takes_effect_rolls_back_refuses_stale_and_keeps_seq() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let scenario = Scenario::from_toml_str("seed = 41\n[[panels]]\nname = \"p\"\nnode = 1\n")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let nodes = spawn_tower(&scenario, &dir.path().join("ports"), false)?;
    let n = &nodes[0];
    let gw = unique_gw("e2e-apply");
    let sub = Subscriber::connect(&format!("towerlink/v1/{gw}/#"))?;
    let commands = "[commands]\nverify_timeout = \"8s\"\n\n";
    let section = |window: &str| node_section(n.dev(), n.path(), n.node_id(), window);
    let path = write_config(dir.path(), &gw, &format!("{commands}{}", section("3s")))?;
    let original = std::fs::read_to_string(&path)?;
    let mut agent = AgentProcess::start(&path)?;
    sub.wait(
        Duration::from_secs(30),
        "the agent online and a window",
        |m| online_count(m) >= 1 && m.iter().any(|r| r.topic.contains("/data/")),
    )?;

    // config_get: the file as it is, and its hash.
    let got = command(
        &sub,
        &gw,
        &json!({"id":"g-1","op":"config_get"}),
        Duration::from_secs(10),
    )?;
    ensure!(got["ok"] == true, "{got}");
    ensure!(got["result"]["toml"] == original.as_str(), "{got}");
    let h0 = sha256(&original)?;
    ensure!(
        got["result"]["hash"] == h0.as_str(),
        "hash {} != {h0}",
        got["result"]["hash"]
    );

    // A stale expect: refused, nothing changes.
    let stale = command(
        &sub,
        &gw,
        &json!({"id":"a-0","op":"config_apply","toml":original.replace("3s", "1s"),"expect":"0".repeat(64)}),
        Duration::from_secs(10),
    )?;
    ensure!(
        stale["ok"] == false
            && stale["error"]
                .as_str()
                .unwrap_or("")
                .contains("stale expect"),
        "{stale}"
    );
    ensure!(std::fs::read_to_string(&path)? == original);

    // The window goes from 3 s to 1 s.
    let one_second = original.replace(&section("3s"), &section("1s"));
    ensure!(one_second != original);
    let h1 = sha256(&one_second)?;
    let from = sub.all().len();
    let applied = command(
        &sub,
        &gw,
        &json!({"id":"a-1","op":"config_apply","toml":one_second,"expect":h0}),
        Duration::from_secs(40),
    )?;
    ensure!(applied["ok"] == true, "{applied}");
    ensure!(applied["result"]["hash"] == h1.as_str(), "{applied}");
    ensure!(applied["result"]["deferred"] == false, "{applied}");
    ensure!(
        std::fs::read_to_string(&path)? == one_second,
        "the file was not replaced"
    );
    sub.wait(
        Duration::from_secs(15),
        "two 1 s windows after the apply",
        |m| {
            m.iter()
                .skip(from)
                .filter(|r| r.topic.contains("/data/"))
                .filter(|r| {
                    let len = millis(&r.json["end"]).zip(millis(&r.json["start"]));
                    len.is_some_and(|(e, s)| e - s == 1000)
                })
                .count()
                >= 2
        },
    )?;

    // The broker moved to a closed port: rolled back, online again on the old one.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let (_, port) = towerlink_e2e::broker();
    let broken = one_second.replace(&format!(":{port}\""), &format!(":{closed}\""));
    ensure!(broken != one_second, "no broker port in the config");
    let online_before = online_count(&sub.all());
    let rolled = command(
        &sub,
        &gw,
        &json!({"id":"a-2","op":"config_apply","toml":broken,"expect":h1}),
        Duration::from_secs(60),
    )?;
    let why = rolled["error"].as_str().unwrap_or("");
    ensure!(
        rolled["ok"] == false && why.contains("rolled back") && why.contains("MQTT session"),
        "{rolled}"
    );
    ensure!(
        std::fs::read_to_string(&path)? == one_second,
        "the file was not restored"
    );
    sub.wait(Duration::from_secs(20), "online again", |m| {
        online_count(m) > online_before
    })?;
    let got = command(
        &sub,
        &gw,
        &json!({"id":"g-2","op":"config_get"}),
        Duration::from_secs(10),
    )?;
    ensure!(got["result"]["hash"] == h1.as_str(), "{got}");
    // Telemetry goes on with the (restored) 1 s windows.
    let from = sub.all().len();
    sub.wait(
        Duration::from_secs(15),
        "a window after the rollback",
        |m| m.iter().skip(from).any(|r| r.topic.contains("/data/")),
    )?;

    agent.stop()?;
    let (seqs, missing) = seq_gaps(&sub.all());
    ensure!(
        missing.is_empty(),
        "seq gaps {missing:?} in {} seqs",
        seqs.len()
    );
    ensure!(!std::path::PathBuf::from(format!("{}.new", path.display())).exists());
    sub.clear_retained(&format!("towerlink/v1/{gw}/state"));
    Ok(())
}

#[test]
fn signed_config_apply_is_carried_out_and_a_changed_toml_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let scenario = Scenario::from_toml_str("seed = 43\n[[panels]]\nname = \"p\"\nnode = 1\n")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let nodes = spawn_tower(&scenario, &dir.path().join("ports"), false)?;
    let n = &nodes[0];
    let gw = unique_gw("e2e-apply-signed");
    let sub = Subscriber::connect(&format!("towerlink/v1/{gw}/#"))?;
    let section = |window: &str| node_section(n.dev(), n.path(), n.node_id(), window);
    let path = write_config(
        dir.path(),
        &gw,
        &format!(
            "[commands]\npublic_key = \"{PUBLIC_KEY}\"\nverify_timeout = \"8s\"\n\n{}",
            section("3s")
        ),
    )?;
    let original = std::fs::read_to_string(&path)?;
    let mut agent = AgentProcess::start(&path)?;
    sub.wait(Duration::from_secs(30), "the agent online", |m| {
        online_count(m) >= 1
    })?;
    let wait = Duration::from_secs(40);

    // Unsigned config_get: refused; signed (v2): answered.
    let r = command(&sub, &gw, &json!({"id":"s-0","op":"config_get"}), wait)?;
    ensure!(
        r["ok"] == false && r["error"].as_str().unwrap_or("").contains("unsigned"),
        "{r}"
    );
    let r = command(
        &sub,
        &gw,
        &sign(&json!({"id":"s-1","op":"config_get"}), &gw)?,
        wait,
    )?;
    ensure!(r["ok"] == true, "{r}");
    let h0 = sha256(&original)?;
    ensure!(r["result"]["hash"] == h0.as_str(), "{r}");

    // Signed, then the toml changed on the way: refused, nothing changed.
    let one_second = original.replace(&section("3s"), &section("1s"));
    let mut tampered = sign(
        &json!({"id":"s-2","op":"config_apply","toml":one_second,"expect":h0}),
        &gw,
    )?;
    tampered["toml"] = json!(original.replace(&section("3s"), &section("2s")));
    let r = command(&sub, &gw, &tampered, wait)?;
    ensure!(
        r["ok"] == false && r["error"].as_str().unwrap_or("").contains("bad signature"),
        "{r}"
    );
    ensure!(std::fs::read_to_string(&path)? == original);

    // A v1 signature (which would not cover toml) is not taken for config_apply.
    let mut v1 = sign(
        &json!({"id":"s-3","op":"config_apply","toml":one_second,"expect":h0}),
        &gw,
    )?;
    v1.as_object_mut().context("object")?.remove("sigv");
    let r = command(&sub, &gw, &v1, wait)?;
    ensure!(
        r["ok"] == false && r["error"].as_str().unwrap_or("").contains("v2 form"),
        "{r}"
    );

    // The same command as signed: carried out.
    let good = sign(
        &json!({"id":"s-4","op":"config_apply","toml":one_second,"expect":h0}),
        &gw,
    )?;
    let r = command(&sub, &gw, &good, wait)?;
    ensure!(
        r["ok"] == true && r["result"]["hash"] == sha256(&one_second)?.as_str(),
        "{r}"
    );
    ensure!(std::fs::read_to_string(&path)? == one_second);
    agent.stop()?;
    sub.clear_retained(&format!("towerlink/v1/{gw}/state"));
    Ok(())
}

#[test]
fn config_apply_during_a_trapped_passenger_is_deferred_until_it_clears() -> anyhow::Result<()> {
    use towerlink_sim::lift::{agent_lift_sections, Action, BusOptions, Fault, LiftBus, LiftSpec};
    let _bus = towerlink_e2e::exclusive("lift-bus")?;
    let dir = tempfile::tempdir()?;
    let baud = 115_200;
    let mut options = BusOptions::new(7)?;
    options.baud = baud;
    let spec = LiftSpec {
        id: "lift-d".to_owned(),
        unit: 4,
        bottom_floor: -2,
        top_floor: 10,
        rated_speed_mm_s: 1750,
        auto_calls: false,
    };
    let bus = LiftBus::spawn(&dir.path().join("ports/ttyRS485-0"), vec![spec], options)?;
    let gw = unique_gw("e2e-apply-defer");
    let sub = Subscriber::connect(&format!("towerlink/v1/{gw}/#"))?;
    let lifts = |health: &str| {
        format!(
            "[commands]\nverify_timeout = \"8s\"\ndefer_max = \"2m\"\n\n[health]\ninterval = \"{health}\"\n{}",
            agent_lift_sections(
                &bus,
                baud,
                "poll = \"100ms\"\ntrapped_after = \"2s\"\noutside_zone_after = \"1s\"\n"
            )
        )
    };
    let path = write_config(dir.path(), &gw, &lifts("2s"))?;
    let original = std::fs::read_to_string(&path)?;
    let mut agent = AgentProcess::start(&path)?;
    sub.wait(
        Duration::from_secs(30),
        "the agent online and a lift status",
        |m| online_count(m) >= 1 && m.iter().any(|r| r.topic.ends_with("/data/lift-d")),
    )?;

    let trapped = |state: &'static str| {
        move |m: &[Received]| {
            m.iter().any(|r| {
                r.topic.ends_with("/event/lift-d")
                    && r.json["event"] == "trapped_passenger"
                    && r.json["state"] == state
            })
        }
    };
    bus.apply(4, Action::Fault(Fault::Trapped, true));
    sub.wait(
        Duration::from_secs(10),
        "trapped_passenger active",
        trapped("active"),
    )?;

    let h0 = sha256(&original)?;
    let changed = original.replace("interval = \"2s\"", "interval = \"3s\"");
    ensure!(changed != original);
    sub.publish(
        &format!("towerlink/v1/{gw}/cmd"),
        json!({"id":"d-1","op":"config_apply","toml":changed,"expect":h0})
            .to_string()
            .as_bytes(),
    )?;
    // Deferred: no reply while the passenger is trapped, and the file stays.
    let answered = |m: &[Received]| {
        m.iter()
            .any(|r| r.topic.ends_with("/reply") && r.json["id"] == "d-1")
    };
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        ensure!(
            !answered(&sub.all()),
            "answered during the rescue: {:?}",
            replies(&sub)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    ensure!(std::fs::read_to_string(&path)? == original);
    ensure!(!trapped("cleared")(&sub.all()));

    bus.apply(4, Action::Fault(Fault::Trapped, false));
    sub.wait(
        Duration::from_secs(10),
        "trapped_passenger cleared",
        trapped("cleared"),
    )?;
    sub.wait(Duration::from_secs(40), "the reply to d-1", answered)?;
    let all = sub.all();
    let reply = all
        .iter()
        .find(|r| r.topic.ends_with("/reply") && r.json["id"] == "d-1")
        .context("reply")?;
    ensure!(reply.json["ok"] == true, "{}", reply.json);
    ensure!(reply.json["result"]["deferred"] == true, "{}", reply.json);
    ensure!(
        reply.json["result"]["deferred_ms"].as_u64().unwrap_or(0) >= 4000,
        "{}",
        reply.json
    );
    let cleared = all
        .iter()
        .find(|r| trapped("cleared")(std::slice::from_ref(r)))
        .context("cleared")?;
    ensure!(
        reply.json["seq"].as_u64() > cleared.json["seq"].as_u64(),
        "the apply came before the event cleared"
    );
    ensure!(std::fs::read_to_string(&path)? == changed);
    agent.stop()?;
    let (seqs, missing) = seq_gaps(&sub.all());
    ensure!(
        missing.is_empty(),
        "seq gaps {missing:?} in {} seqs",
        seqs.len()
    );
    sub.clear_retained(&format!("towerlink/v1/{gw}/state"));
    Ok(())
}
