//! `resend` end to end (issue 15 item 3): the real agent on the broker keeps acknowledged
//! records for `[store] keep_acked`; the platform asks again for a range it already received
//! and gets every record again marked `"replay": true`, identical apart from that, after a
//! reply listing the range as re-sent; a range older than `keep_acked` and one above the
//! newest `seq` are answered "not held". Every message received is schema-checked by the
//! harness.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use serde_json::{json, Value};
use towerlink_e2e::{unique_gw, write_config, AgentProcess, Received, Subscriber};
use towerlink_sim::virtual_node::spawn_tower;
use towerlink_sim_chips::Scenario;

fn ask(sub: &Subscriber, gw: &str, cmd: Value) -> anyhow::Result<Value> {
    let id = cmd["id"].as_str().context("id")?.to_owned();
    sub.publish(
        &format!("towerlink/v1/{gw}/cmd"),
        cmd.to_string().as_bytes(),
    )?;
    let find = || {
        sub.on("/reply")
            .into_iter()
            .find(|r| r.json["id"] == id.as_str())
            .map(|r| r.json)
    };
    sub.wait(
        Duration::from_secs(15),
        &format!("the reply to {id}"),
        |_| find().is_some(),
    )?;
    find().context("reply vanished")
}

fn first_copies(sub: &Subscriber) -> BTreeMap<u64, Received> {
    let mut out = BTreeMap::new();
    for r in sub.on("") {
        if r.json["replay"] == true {
            continue;
        }
        if let Some(seq) = r.json["seq"].as_u64() {
            out.entry(seq).or_insert(r);
        }
    }
    out
}

fn replays(sub: &Subscriber, from: u64, to: u64) -> BTreeMap<u64, Received> {
    sub.on("")
        .into_iter()
        .filter(|r| r.json["replay"] == true)
        .filter_map(|r| Some((r.json["seq"].as_u64()?, r)))
        .filter(|(s, _)| (from..=to).contains(s))
        .collect()
}

#[test]
fn resend_brings_a_received_range_again_and_says_what_is_no_longer_held() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let scenario = Scenario::from_toml_str(
        "seed = 71\n[[panels]]\nname = \"p\"\nnode = 1\n[[panels]]\nname = \"q\"\nnode = 2\n",
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let nodes = spawn_tower(&scenario, &dir.path().join("ports"), false)?;
    let gw = unique_gw("e2e-resend");
    let sub = Subscriber::connect(&format!("towerlink/v1/{gw}/#"))?;
    let mut extra = String::from(
        "segment_bytes = \"4KiB\"\nkeep_acked = \"3s\"\n\n[health]\ninterval = \"1s\"\n\n",
    );
    for n in &nodes {
        extra += &format!(
            "[[node]]\nid = \"{}\"\nport = \"{}\"\nnode_id = {}\nwindow = \"1s\"\n\n",
            n.dev(),
            n.path().display(),
            n.node_id()
        );
    }
    let config = write_config(dir.path(), &gw, &extra)?;
    let mut agent = AgentProcess::start(&config)?;
    sub.wait(Duration::from_secs(30), "ten data windows", |m| {
        m.iter().filter(|r| r.topic.contains("/data/")).count() >= 10
    })?;

    // The newest windows received: their segment is within keep_acked.
    let data: Vec<u64> = sub
        .on("")
        .iter()
        .filter(|r| r.topic.contains("/data/"))
        .filter_map(|r| r.json["seq"].as_u64())
        .collect();
    let last = *data.iter().max().context("no data")?;
    // One more window: by then the broker has acknowledged `last` to the agent.
    sub.wait(Duration::from_secs(15), "the next window", |m| {
        m.iter()
            .any(|r| r.topic.contains("/data/") && r.json["seq"].as_u64() > Some(last))
    })?;
    let (from, to) = (last.saturating_sub(5).max(1), last);
    let r = ask(
        &sub,
        &gw,
        json!({"id":"rs-1","op":"resend","from":from,"to":to}),
    )?;
    ensure!(r["ok"] == true, "{r}");
    let resent = r["result"]["resent"].clone();
    ensure!(
        resent == json!([[from, to]]),
        "the whole range re-sent: {r}"
    );
    ensure!(r["result"]["not_held"] == json!([]), "{r}");
    sub.wait(
        Duration::from_secs(15),
        "the range again, marked replay",
        |_| replays(&sub, from, to).len() as u64 == to - from + 1,
    )?;
    let first = first_copies(&sub);
    for (seq, again) in replays(&sub, from, to) {
        let one = first
            .get(&seq)
            .with_context(|| format!("seq {seq} first copy"))?;
        ensure!(
            one.text_apart_from_replay() == again.text_apart_from_replay(),
            "seq {seq} differs apart from replay:\n{}\n{}",
            one.json,
            again.json
        );
        ensure!(
            one.topic == again.topic,
            "seq {seq}: {} vs {}",
            one.topic,
            again.topic
        );
    }

    // Above the newest seq: nothing is held.
    let high = last + 100_000;
    let r = ask(
        &sub,
        &gw,
        json!({"id":"rs-2","op":"resend","from":high,"to":high + 9}),
    )?;
    ensure!(r["ok"] == true, "{r}");
    ensure!(
        r["result"]["not_held"] == json!([[high, high + 9]]) && r["result"]["resent"] == json!([]),
        "{r}"
    );
    // Refused: a reversed range, one too long.
    let r = ask(
        &sub,
        &gw,
        json!({"id":"rs-3","op":"resend","from":9,"to":3}),
    )?;
    ensure!(r["ok"] == false, "{r}");
    let r = ask(
        &sub,
        &gw,
        json!({"id":"rs-4","op":"resend","from":1,"to":1_000_000}),
    )?;
    ensure!(
        r["ok"] == false && r["error"].as_str().unwrap_or("").contains("at most"),
        "{r}"
    );

    // Health counts what was re-sent.
    let n = to - from + 1;
    sub.wait(Duration::from_secs(15), "health counting the resent", |m| {
        m.iter()
            .any(|h| h.topic.ends_with("/health") && h.json["queue"]["resent"].as_u64() >= Some(n))
    })?;

    // Older than keep_acked (3 s), once its segment rotated out: not held. Asked again each
    // second until the answer comes (bounded), never a fixed sleep.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut attempt = 0;
    let not_held = loop {
        attempt += 1;
        let r = ask(
            &sub,
            &gw,
            json!({"id":format!("rs-old-{attempt}"),"op":"resend","from":from,"to":to}),
        )?;
        ensure!(r["ok"] == true, "{r}");
        if r["result"]["not_held"] == json!([[from, to]]) {
            break r;
        }
        ensure!(
            Instant::now() < deadline,
            "{from}..={to} still held a minute later: {r}"
        );
        sub.wait(Duration::from_secs(1), "a moment", |_| false).ok();
    };
    ensure!(not_held["result"]["resent"] == json!([]), "{not_held}");
    let violations = sub.violations();
    ensure!(violations.is_empty(), "schema violations: {violations:#?}");
    agent.stop()?;
    sub.clear_retained(&format!("towerlink/v1/{gw}/state"));
    Ok(())
}
