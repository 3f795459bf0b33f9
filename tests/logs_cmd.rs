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

/// Journal lines in the form `journalctl -o json` prints for the service's stderr (as in
/// agent/src/journal.rs's unit test).
const JOURNAL: &str = concat!(
    r#"{"__CURSOR":"s=8a1c;i=1f2","__REALTIME_TIMESTAMP":"1764619200123456","PRIORITY":"6","_SYSTEMD_UNIT":"towerlink.service","_TRANSPORT":"stdout","MESSAGE":"2026-12-01T20:00:00.123456Z  INFO towerlink agent starting gw=sh-ja-0001"}"#,
    "\n",
    r#"{"__CURSOR":"s=8a1c;i=1f3","__REALTIME_TIMESTAMP":"1764619201000000","PRIORITY":"6","_SYSTEMD_UNIT":"towerlink.service","_TRANSPORT":"stdout","MESSAGE":"2026-12-01T20:00:01.000000Z  WARN MQTT connection failed error=\"I/O: connection refused\" password=hunter2 retry_in_ms=1032"}"#,
    "\n",
);

/// A directory with an executable `journalctl` running `body` (sh).
fn stand_in_journalctl(dir: &std::path::Path, body: &str) -> anyhow::Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    let script = bin.join("journalctl");
    std::fs::write(&script, format!("#!/bin/sh\n{body}\n"))?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    Ok(bin)
}

/// The journal path, with a stand-in for the system tool: the agent runs with the variables
/// systemd sets for a service (`INVOCATION_ID`, `JOURNAL_STREAM`) and a `journalctl` on
/// `PATH` that is a tiny script printing journal lines in `journalctl -o json`'s form and
/// recording its arguments. That tests the agent's detection, its call, the parsing,
/// redaction and level filter, and the fallback; not journald itself (this machine runs none).
/// Then a `journalctl` that fails: the ring answers, and says why.
#[test]
fn under_systemd_logs_come_from_the_journal_and_from_memory_when_it_fails() -> anyhow::Result<()> {
    let path = std::env::var("PATH").unwrap_or_default();
    for failing in [false, true] {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("journal.json"), JOURNAL)?;
        let body = if failing {
            "echo 'No journal files were found.' >&2\nexit 1".to_owned()
        } else {
            let d = dir.path().display();
            format!("echo \"$@\" > {d}/args\ncat {d}/journal.json")
        };
        let bin = stand_in_journalctl(dir.path(), &body)?;
        let gw = unique_gw("e2e-journal");
        let sub = Subscriber::connect(&format!("towerlink/v1/{gw}/#"))?;
        let config = write_config(dir.path(), &gw, "")?;
        let env_path = format!("{}:{path}", bin.display());
        let mut agent = AgentProcess::start_with_env(
            &config,
            &[
                ("INVOCATION_ID", "0123456789abcdef0123456789abcdef"),
                ("JOURNAL_STREAM", "8:12345"),
                ("PATH", env_path.as_str()),
            ],
        )?;
        sub.wait(Duration::from_secs(30), "the agent online", |m| {
            m.iter()
                .any(|r| r.topic.ends_with("/state") && r.json["state"] == "online")
        })?;
        let r = ask(
            &sub,
            &gw,
            json!({"id":"j-1","op":"logs","since":"10m","level":"info"}),
        )?;
        let got = lines(&r);
        if failing {
            ensure!(r["ok"] == true && r["result"]["source"] == "memory", "{r}");
            ensure!(
                r["result"]["journal_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("journalctl failed")),
                "{r}"
            );
            ensure!(
                got.iter().any(|l| l.contains("towerlink agent starting")),
                "{got:#?}"
            );
        } else {
            ensure!(r["ok"] == true && r["result"]["source"] == "journal", "{r}");
            ensure!(
                got == [
                    "2025-12-01T20:00:00.123Z INFO towerlink agent starting gw=sh-ja-0001",
                    "2025-12-01T20:00:01.000Z WARN MQTT connection failed error=\"I/O: connection refused\" password=<redacted> retry_in_ms=1032",
                ],
                "{got:#?}"
            );
            let args = std::fs::read_to_string(dir.path().join("args"))?;
            ensure!(
                args.starts_with("-u towerlink.service --since @") && args.contains("-o json"),
                "journalctl was called with {args}"
            );
            let r = ask(&sub, &gw, json!({"id":"j-2","op":"logs","level":"warn"}))?;
            let warn = lines(&r);
            ensure!(warn.len() == 1 && warn[0].contains(" WARN "), "{warn:#?}");
        }
        agent.stop()?;
        sub.clear_retained(&format!("towerlink/v1/{gw}/state"));
    }
    Ok(())
}
