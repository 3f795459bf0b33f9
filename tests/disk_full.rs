//! A full disk under the store, end to end: the store lives on a tiny tmpfs that the test
//! fills to the last byte while the agent runs. The agent must keep running from memory,
//! say so in `health` (`queue.error`, and `queue.memory_only` counting what it holds only
//! in memory), and once space returns put its backlog on disk again, with every
//! `seq` reaching the platform.
//!
//! Mounting a tmpfs needs root (as on CI here); without it the test fails, unless
//! `TOWERLINK_TEST_SKIP_TMPFS=1` says to skip it (a loud SKIPPED line).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context};
use towerlink_e2e::{skip_or_fail, unique_gw, write_config, AgentProcess, Subscriber};
use towerlink_sim::virtual_node::spawn_tower;
use towerlink_sim_chips::Scenario;

struct Tmpfs<'a>(&'a Path);

impl Drop for Tmpfs<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0).status();
    }
}

/// Fills the filesystem of `dir` until a write fails with "no space".
fn fill(dir: &Path) -> anyhow::Result<()> {
    let mut f = std::fs::File::create(dir.join("filler"))?;
    let block = vec![0xA5u8; 4096];
    loop {
        match f.write_all(&block) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => return Err(e.into()),
        }
    }
    // The page cache may take a little more; flush until it refuses too.
    let _ = f.sync_all();
    Ok(())
}

#[test]
fn a_full_disk_costs_nothing_and_the_store_recovers() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store)?;
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&store)
        .status();
    if !mounted.is_ok_and(|s| s.success()) {
        return skip_or_fail(
            "TOWERLINK_TEST_SKIP_TMPFS",
            "cannot mount a tmpfs for the store here (mount -t tmpfs needs root)",
        );
    }
    let _guard = Tmpfs(&store);

    let scenario = Scenario::from_toml_str("seed = 8\n[[panels]]\nname = \"p\"\nnode = 1\n")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let nodes = spawn_tower(&scenario, &dir.path().join("ports"), false)?;
    let n = &nodes[0];
    let gw = unique_gw("e2e-diskfull");
    let sub = Subscriber::connect(&format!("towerlink/v1/{gw}/#"))?;
    let text = format!(
        "[health]\ninterval = \"1s\"\n\n[[node]]\nid = \"{}\"\nport = \"{}\"\nwindow = \"200ms\"\nnode_id = {}\n",
        n.dev(),
        n.path().display(),
        n.node_id()
    );
    let config = write_config(dir.path(), &gw, &text)?;
    // write_config puts the store under <dir>/store: the tmpfs.
    let mut agent = AgentProcess::start(&config)?;
    let health = |sub: &Subscriber| sub.on("/health").last().map(|h| h.json["queue"].clone());
    sub.wait(Duration::from_secs(30), "data flowing", |m| {
        m.iter().filter(|r| r.topic.contains("/data/")).count() >= 5
    })?;

    // README: on a failing disk the agent "reports `queue.error` and `memory_only` in
    // health": nothing is memory-only while the disk works.
    sub.wait(Duration::from_secs(10), "a health report", |_| {
        health(&sub).is_some()
    })?;
    let q = health(&sub).context("health")?;
    ensure!(
        q["memory_only"] == 0 && q["error"].is_null(),
        "memory-only messages on a working disk: {q}"
    );

    fill(&store).context("filling the store's filesystem")?;
    sub.wait(
        Duration::from_secs(30),
        "health reporting the store error",
        |_| {
            health(&sub).is_some_and(|q| {
                q["store_errors"].as_u64().unwrap_or(0) > 0 && !q["error"].is_null()
            })
        },
    )?;
    // ...and the messages held in memory only are counted, more as the disk stays full.
    let held = health(&sub)
        .and_then(|q| q["memory_only"].as_u64())
        .unwrap_or(0);
    sub.wait(
        Duration::from_secs(20),
        "health counting memory-only messages",
        |_| {
            health(&sub)
                .and_then(|q| q["memory_only"].as_u64())
                .is_some_and(|n| n > held.max(1))
        },
    )?;
    let during = sub.all().len();
    sub.wait(
        Duration::from_secs(20),
        "data still flowing on a full disk",
        |m| {
            m[during.min(m.len())..]
                .iter()
                .filter(|r| r.topic.contains("/data/"))
                .count()
                >= 5
        },
    )?;
    ensure!(
        agent.is_running(),
        "the agent stopped on a full disk:\n{}",
        agent.log()
    );

    std::fs::remove_file(store.join("filler"))?;
    sub.wait(Duration::from_secs(30), "health clear again", |_| {
        health(&sub).is_some_and(|q| q["error"].is_null())
    })?;
    let after = sub.all().len();
    sub.wait(Duration::from_secs(20), "data after recovery", |m| {
        m[after.min(m.len())..]
            .iter()
            .filter(|r| r.topic.contains("/data/"))
            .count()
            >= 5
    })?;
    agent.stop()?;

    let seqs: BTreeSet<u64> = sub
        .all()
        .iter()
        .filter(|r| r.topic.contains("/data/") || r.topic.contains("/event/"))
        .filter_map(|r| r.json["seq"].as_u64())
        .collect();
    let (first, last) = (
        *seqs.first().context("no seq")?,
        *seqs.last().context("no seq")?,
    );
    let missing: Vec<u64> = (first..=last).filter(|s| !seqs.contains(s)).collect();
    ensure!(
        missing.is_empty(),
        "seqs missing after the full disk: {missing:?}"
    );
    sub.clear_retained(&format!("towerlink/v1/{gw}/state"));
    Ok(())
}
