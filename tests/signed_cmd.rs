//! Signed commands end to end: the agent with `[commands] public_key` set, commands signed
//! outside the project (the `openssl` CLI, Ed25519 over the README's text
//! `towerlink-cmd-v1\n{gw}\n{id}\n{op}\n{dev}\n{ch}\n{ts}`), and what comes back on `reply`:
//! a signed command is carried out; unsigned, badly signed, tampered and replayed ones are
//! refused with their reason.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context};
use towerlink_e2e::{unique_gw, write_config, AgentProcess, Subscriber};
use towerlink_sim::virtual_node::spawn_tower;
use towerlink_sim_chips::Scenario;

/// The platform's key: Ed25519 from the seed 32 x 0x07 (as in the agent's pinned unit test).
const SEED_HEX: &str = "0707070707070707070707070707070707070707070707070707070707070707";
const PUBLIC_KEY: &str = "ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c";

/// Writes the key as PEM with the openssl CLI (PKCS#8 DER: fixed prefix + seed).
fn platform_key(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    for i in 0..32 {
        der.push(u8::from_str_radix(&SEED_HEX[2 * i..2 * i + 2], 16)?);
    }
    std::fs::write(dir.join("platform.der"), &der)?;
    let pem = dir.join("platform.pem");
    let out = Command::new("openssl")
        .args(["pkey", "-inform", "DER", "-in"])
        .arg(dir.join("platform.der"))
        .arg("-out")
        .arg(&pem)
        .output()
        .context("running openssl (Debian package openssl)")?;
    ensure!(out.status.success(), "openssl pkey: {out:?}");
    Ok(pem)
}

/// The Ed25519 signature of `text` by `key`, as 128 hex digits (openssl pkeyutl -rawin).
fn sign(dir: &Path, key: &Path, text: &str) -> anyhow::Result<String> {
    let msg = dir.join("msg");
    std::fs::write(&msg, text)?;
    let out = Command::new("openssl")
        .args(["pkeyutl", "-sign", "-rawin", "-inkey"])
        .arg(key)
        .arg("-in")
        .arg(&msg)
        .output()?;
    ensure!(
        out.status.success() && out.stdout.len() == 64,
        "openssl pkeyutl: {out:?}"
    );
    Ok(out.stdout.iter().map(|b| format!("{b:02x}")).collect())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[test]
fn only_commands_signed_by_the_platform_key_are_carried_out() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let key = platform_key(dir.path())?;
    let scenario = Scenario::from_toml_str("seed = 31\n[[panels]]\nname = \"p\"\nnode = 1\n")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let nodes = spawn_tower(&scenario, &dir.path().join("ports"), false)?;
    let n = &nodes[0];
    let gw = unique_gw("e2e-signed");
    let sub = Subscriber::connect(&format!("towerlink/v1/{gw}/#"))?;
    let text = format!(
        "[commands]\npublic_key = \"{PUBLIC_KEY}\"\n\n[[node]]\nid = \"{}\"\nport = \"{}\"\nnode_id = {}\n",
        n.dev(),
        n.path().display(),
        n.node_id()
    );
    let config = write_config(dir.path(), &gw, &text)?;
    let mut agent = AgentProcess::start(&config)?;
    sub.wait(Duration::from_secs(30), "the agent online", |m| {
        m.iter()
            .any(|r| r.topic.ends_with("/state") && r.json["state"] == "online")
    })?;
    let cmd_topic = format!("towerlink/v1/{gw}/cmd");
    let ts = now_ms();
    let signed = |id: &str, op: &str| {
        sign(
            dir.path(),
            &key,
            &format!("towerlink-cmd-v1\n{gw}\n{id}\n{op}\n\n\n{ts}"),
        )
    };
    let good = signed("s-1", "ping")?;
    // Signed for another gateway: the text names the gateway.
    let other_gw = sign(
        dir.path(),
        &key,
        &format!("towerlink-cmd-v1\nsh-other\ns-4\nping\n\n\n{ts}"),
    )?;
    let commands = [
        format!(r#"{{"id":"s-1","op":"ping","ts":{ts},"sig":"{good}"}}"#),
        r#"{"id":"s-2","op":"ping"}"#.to_owned(),
        // s-1's signature on another id.
        format!(r#"{{"id":"s-3","op":"ping","ts":{ts},"sig":"{good}"}}"#),
        format!(r#"{{"id":"s-4","op":"ping","ts":{ts},"sig":"{other_gw}"}}"#),
        // s-1 again: a replay.
        format!(r#"{{"id":"s-1","op":"ping","ts":{ts},"sig":"{good}"}}"#),
    ];
    for (i, c) in commands.iter().enumerate() {
        sub.publish(&cmd_topic, c.as_bytes())?;
        // One reply at a time, so the two replies of s-1 come in order.
        let sent = i + 1;
        sub.wait(Duration::from_secs(15), "the command's reply", |m| {
            m.iter().filter(|r| r.topic.ends_with("/reply")).count() >= sent
        })?;
    }
    let replies: Vec<serde_json::Value> = sub
        .all()
        .iter()
        .filter(|r| r.topic.ends_with("/reply"))
        .map(|r| r.json.clone())
        .collect();
    let want = [
        ("s-1", true, ""),
        ("s-2", false, "unsigned"),
        ("s-3", false, "bad signature"),
        ("s-4", false, "bad signature"),
        ("s-1", false, "replayed"),
    ];
    ensure!(replies.len() == want.len(), "replies: {replies:#?}");
    for (r, (id, ok, why)) in replies.iter().zip(want) {
        ensure!(
            r["id"] == id && r["ok"] == ok && r["error"].as_str().unwrap_or("").contains(why),
            "{id}: expected ok={ok} {why:?}, got {r}"
        );
    }
    agent.stop()?;
    sub.clear_retained(&format!("towerlink/v1/{gw}/state"));
    Ok(())
}
