//! The firmware on an emulated MCU, end to end: the mps2-an386 board image (the node core and
//! the NAU7802/ADXL355 drivers over the firmware's no_std chip models, on a Cortex-M4 with
//! SysTick and an interrupt-driven CMSDK UART) runs in `qemu-system-arm`; the agent reads its
//! UART through a pseudo-terminal with its normal serial source and publishes to a real broker.
//!
//! The image is built here (`cargo build --release --locked` in firmware/boards/mps2-an386, a
//! no-op when CI built it beforehand); it needs the `thumbv7em-none-eabihf` target and
//! qemu-system-arm, which `.ci/run` installs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, ensure, Context};
use serde_json::Value;
use towerlink_e2e::{unique_gw, write_config, AgentProcess, Received, Subscriber};
use towerlink_sim::mcu::{board_dir, EmulatedMcu, McuOptions, IMAGE_IN_BOARD};

const DEV: &str = "panel-mcu";
const NODE_ID: u32 = 4242;
const WINDOW_S: f64 = 2.0;

/// The newest modification time of the files under `path`.
fn newest(path: &Path) -> Option<SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.is_file() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_name() != "target")
        .filter_map(|e| newest(&e.path()))
        .max()
}

/// The board image, built here (bounded) unless an image newer than every source of it
/// exists (CI builds it in a step of its own before the tests).
fn board_image() -> anyhow::Result<PathBuf> {
    let dir = board_dir();
    let image = dir.join(IMAGE_IN_BOARD);
    let firmware = dir.join("../..");
    let sources = [
        firmware.join("src"),
        firmware.join("Cargo.toml"),
        dir.join("../common"),
        dir.clone(),
    ];
    let built = std::fs::metadata(&image).and_then(|m| m.modified()).ok();
    let source_time = sources.iter().filter_map(|p| newest(p)).max();
    if let (Some(built), Some(sources)) = (built, source_time) {
        if built > sources {
            return Ok(image);
        }
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut child = Command::new(cargo)
        .args(["build", "--release", "--locked"])
        .current_dir(&dir)
        // The board's own workspace and target directory, whatever the test run set.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTFLAGS")
        .spawn()
        .context("running cargo for the board image")?;
    let deadline = Instant::now() + Duration::from_secs(900);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("building the board image took over 900 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    ensure!(
        status.success(),
        "building the board image in {} failed ({status}); it needs `rustup target add thumbv7em-none-eabihf`",
        dir.display()
    );
    Ok(image)
}

fn windows<'a>(m: &'a [Received], ch: &str) -> Vec<&'a Value> {
    m.iter()
        .filter(|r| r.topic.ends_with(&format!("/data/{DEV}")))
        .filter_map(|r| r.json["ch"].get(ch))
        .collect()
}

fn reply<'a>(m: &'a [Received], id: &str) -> Option<&'a Value> {
    m.iter()
        .find(|r| r.topic.ends_with("/reply") && r.json["id"] == id)
        .map(|r| &r.json)
}

fn reboots(m: &[Received]) -> Option<u64> {
    m.iter()
        .rev()
        .find(|r| r.topic.ends_with("/health"))
        .and_then(|r| r.json["sources"][DEV]["reboots"].as_u64())
}

/// A full window of `ch` at `rate_hz` has `rate_hz * WINDOW_S` values. The emulated node's
/// clock keeps within 0.1 % of the host's even under load (README, firmware section); a
/// window edge may fall either side of a sample, and a loaded host may delay a frame past
/// the window's grace, so counts within 96..=102 % of nominal pass; a wrong rate (a 40 Hz
/// strain channel gives 80) or lost frames do not.
fn counts_right(w: &Value, rate_hz: f64) -> bool {
    let nominal = rate_hz * WINDOW_S;
    w["n"]
        .as_f64()
        .is_some_and(|n| n >= (0.96 * nominal).floor() && n <= (1.02 * nominal).ceil())
}

fn mean(w: &Value) -> f64 {
    w["mean"].as_f64().unwrap_or(f64::NAN)
}

#[test]
fn the_emulated_mcu_feeds_the_agent_and_answers_commands() -> anyhow::Result<()> {
    let started = Instant::now();
    let step = |what: &str| eprintln!("t+{:.1}s {what}", started.elapsed().as_secs_f64());
    towerlink_e2e::binary("towerlink-agent", "towerlink")?;
    let image = board_image()?;
    step("image ready");
    let dir = tempfile::tempdir()?;
    let link = dir.path().join("ports").join(DEV);
    let mut options = McuOptions::new(DEV, NODE_ID, &link);
    options.image = image;
    let mut mcu = EmulatedMcu::start(&options)
        .context("the emulated MCU needs qemu-system-arm (apt-get install qemu-system-arm)")?;

    let gw = unique_gw("e2e-mcu");
    let sub = Subscriber::connect(&format!("towerlink/v1/{gw}/#"))?;
    let node = format!(
        "[health]\ninterval = \"1s\"\n\n[[node]]\nid = \"{DEV}\"\nport = \"{}\"\nwindow = \"2s\"\nwindow_grace = \"1500ms\"\nnode_id = {NODE_ID}\n\
         [node.channels.strain]\nspike = false\n[node.channels.tilt_x]\nspike = false\n\
         [node.channels.tilt_y]\nspike = false\n[node.channels.temperature]\nspike = false\n",
        link.display()
    );
    let config = write_config(dir.path(), &gw, &node)?;
    let mut agent = AgentProcess::start(&config)?;

    // Windows with the right units and counts: strain 50 Hz, tilt 10 Hz, temperature 1 Hz.
    let full = |m: &[Received], ch: &str, rate: f64, k: usize| {
        let w = windows(m, ch);
        // The first window may be partial (the agent started mid-window).
        w.len() > k && w[1..].iter().all(|w| counts_right(w, rate))
    };
    sub.wait(Duration::from_secs(60), "full windows from the MCU", |m| {
        full(m, "strain", 50.0, 3) && full(m, "tilt_x", 10.0, 3) && full(m, "tilt_y", 10.0, 3)
    })
    .with_context(|| format!("console: {}\nqemu: {}", mcu.console(), mcu.qemu_stderr()))?;
    step("full windows");
    let all = sub.all();
    for (ch, unit) in [("strain", "ustrain"), ("tilt_x", "deg"), ("tilt_y", "deg")] {
        for w in windows(&all, ch) {
            ensure!(
                w["u"] == unit,
                "{ch} window in {:?}, not {unit}: {w}",
                w["u"]
            );
        }
    }
    // Real readings of the modelled panel (node 4242's lean and base strain), through the
    // drivers' conversions: microstrain around 80..160 with a sway, a small lean.
    let strain = windows(&all, "strain");
    ensure!(
        strain.iter().all(|w| (50.0..200.0).contains(&mean(w))),
        "strain means {:?}",
        strain.iter().map(|w| mean(w)).collect::<Vec<_>>()
    );
    ensure!(
        windows(&all, "tilt_x")
            .iter()
            .all(|w| (0.1..0.6).contains(&mean(w))),
        "tilt_x {:?}",
        windows(&all, "tilt_x")
    );
    sub.wait(Duration::from_secs(20), "temperature windows", |m| {
        windows(m, "temperature")
            .iter()
            .any(|w| w["u"] == "Cel" && (23.0..25.0).contains(&mean(w)))
    })?;

    step("temperature");
    // Identify and Zero, answered by the firmware's Acks.
    let cmd = format!("towerlink/v1/{gw}/cmd");
    sub.publish(&cmd, br#"{"id":"i1","op":"identify","dev":"panel-mcu"}"#)?;
    sub.publish(
        &cmd,
        br#"{"id":"z1","op":"zero","dev":"panel-mcu","ch":"strain"}"#,
    )?;
    sub.wait(Duration::from_secs(20), "identify and zero replies", |m| {
        reply(m, "i1").is_some() && reply(m, "z1").is_some()
    })?;
    let all = sub.all();
    let (i1, z1) = (reply(&all, "i1"), reply(&all, "z1"));
    ensure!(
        i1.is_some_and(|r| r["ok"] == true && r["result"]["ack"] == "ok"),
        "{i1:?}"
    );
    ensure!(
        z1.is_some_and(|r| r["ok"] == true
            && r["result"]["ack"] == "ok"
            && r["result"]["at"] == "node"),
        "{z1:?}"
    );
    // The firmware's zero: strain windows after it are centred near 0 (the sway remains).
    let before = windows(&all, "strain").len();
    sub.wait(Duration::from_secs(20), "zeroed strain windows", |m| {
        let w = windows(m, "strain");
        w.len() > before + 2 && w[before + 1..].iter().all(|w| mean(w).abs() < 40.0)
    })?;

    step("identify and zero");
    // A system reset of the MCU: the agent counts a reboot, and the node comes back with its
    // zero forgotten (a reboot forgets it), still sending full windows.
    sub.wait(Duration::from_secs(10), "a health report", |m| {
        reboots(m).is_some()
    })?;
    let reboots_before = reboots(&sub.all()).unwrap_or(0);
    mcu.system_reset()?;
    sub.wait(Duration::from_secs(30), "the reboot in health", |m| {
        reboots(m).is_some_and(|r| r > reboots_before)
    })?;
    step("reboot seen");
    let after = sub.all().len();
    // The agent re-learns the node clock after the reboot, so the first windows may be cut
    // differently; three full windows in a row must follow.
    sub.wait(Duration::from_secs(40), "windows after the reset", |m| {
        let w = windows(&m[after..], "strain");
        w.len() >= 4
            && w[w.len() - 3..]
                .iter()
                .all(|w| counts_right(w, 50.0) && mean(w) > 50.0)
    })
    .with_context(|| {
        let all = sub.all();
        let n: Vec<_> = windows(&all[after..], "strain")
            .iter()
            .map(|w| (w["n"].clone(), mean(w)))
            .collect();
        format!("strain windows after the reset (n, mean): {n:?}")
    })?;
    ensure!(mcu.is_running(), "QEMU stopped: {}", mcu.qemu_stderr());
    ensure!(
        mcu.console().matches("booting").count() >= 2,
        "the board did not boot twice: {}",
        mcu.console()
    );
    step("windows after the reset");
    let violations = sub.violations();
    ensure!(violations.is_empty(), "schema violations: {violations:?}");

    agent.stop()?;
    mcu.stop();
    sub.clear_retained(&format!("towerlink/v1/{gw}/state"));
    Ok(())
}
