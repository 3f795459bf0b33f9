//! The `logs` command end to end: the real agent answers its recent log lines from memory,
//! filtered by level, time and count; a bad argument is refused.

use std::time::Duration;

use anyhow::{ensure, Context};
use serde_json::{json, Value};
use towerlink_e2e::{unique_gw, write_config, AgentProcess, Subscriber};
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

fn lines(reply: &Value) -> Vec<String> {
    reply["result"]["lines"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn logs_answers_recent_lines_by_level_and_count() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let scenario = Scenario::from_toml_str("seed = 53\n[[panels]]\nname = \"p\"\nnode = 1\n")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let nodes = spawn_tower(&scenario, &dir.path().join("ports"), false)?;
    let n = &nodes[0];
    let gw = unique_gw("e2e-logs");
    let sub = Subscriber::connect(&format!("towerlink/v1/{gw}/#"))?;
    let config = write_config(
        dir.path(),
        &gw,
        &format!(
            "[[node]]\nid = \"{}\"\nport = \"{}\"\nnode_id = {}\n",
            n.dev(),
            n.path().display(),
            n.node_id()
        ),
    )?;
    let mut agent = AgentProcess::start(&config)?;
    sub.wait(Duration::from_secs(30), "the agent online", |m| {
        m.iter()
            .any(|r| r.topic.ends_with("/state") && r.json["state"] == "online")
    })?;
    // A refused command logs a warning.
    let r = ask(&sub, &gw, json!({"id":"l-0","op":"reboot"}))?;
    ensure!(r["ok"] == false);

    let r = ask(
        &sub,
        &gw,
        json!({"id":"l-1","op":"logs","since":"10m","level":"info"}),
    )?;
    ensure!(r["ok"] == true && r["result"]["source"] == "memory", "{r}");
    let all = lines(&r);
    ensure!(
        all.iter()
            .any(|l| l.contains("INFO") && l.contains("towerlink agent starting")),
        "{all:#?}"
    );
    let r = ask(
        &sub,
        &gw,
        json!({"id":"l-2","op":"logs","level":"warn","max_lines":200}),
    )?;
    let warn = lines(&r);
    ensure!(
        warn.iter()
            .any(|l| l.contains("command refused") && l.contains("reboot")),
        "{warn:#?}"
    );
    ensure!(
        warn.iter()
            .all(|l| l.contains(" WARN ") || l.contains(" ERROR ")),
        "{warn:#?}"
    );
    let r = ask(&sub, &gw, json!({"id":"l-3","op":"logs","max_lines":1}))?;
    ensure!(lines(&r).len() == 1, "{r}");
    let r = ask(&sub, &gw, json!({"id":"l-4","op":"logs","level":"loud"}))?;
    ensure!(
        r["ok"] == false && r["error"].as_str().unwrap_or("").contains("level"),
        "{r}"
    );
    agent.stop()?;
    sub.clear_retained(&format!("towerlink/v1/{gw}/state"));
    Ok(())
}
