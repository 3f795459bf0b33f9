//! `[[i2c]]` devices end to end with `bus = "sim"`: the agent process runs the firmware's
//! NAU7802 and ADXL355 drivers over the register-level simulated chips, and their readings
//! reach the platform through the same windows as serial nodes.

use std::time::Duration;

use anyhow::ensure;
use towerlink_e2e::{unique_gw, write_config, AgentProcess, Subscriber};

#[test]
fn sim_bus_devices_publish_windows_and_health() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let gw = unique_gw("e2e-i2c");
    let sub = Subscriber::connect(&format!("towerlink/v1/{gw}/#"))?;
    let text = "[health]\ninterval = \"1s\"\n\n\
                [[i2c]]\nid = \"strain-roof\"\nbus = \"sim\"\nchip = \"nau7802\"\nrate_hz = 20\nwindow = \"2s\"\n\
                calibration = { gain = 1.0, offset = -4000.0 }\n\n\
                [[i2c]]\nid = \"tilt-roof\"\nbus = \"sim\"\nchip = \"adxl355\"\nrate_hz = 10\nwindow = \"2s\"\n";
    let config = write_config(dir.path(), &gw, text)?;
    let mut agent = AgentProcess::start(&config)?;
    let windows = |m: &[towerlink_e2e::Received], dev: &str, ch: &str| -> Vec<serde_json::Value> {
        m.iter()
            .filter(|r| r.topic.ends_with(&format!("/data/{dev}")))
            .filter_map(|r| r.json["ch"].get(ch).cloned())
            .collect()
    };
    sub.wait(
        Duration::from_secs(30),
        "windows from both I2C devices",
        |m| {
            windows(m, "strain-roof", "strain").len() >= 8
                && windows(m, "tilt-roof", "tilt_x").len() >= 2
        },
    )?;
    let all = sub.all();
    let strain = windows(&all, "strain-roof", "strain");
    // 20 Hz: the device thread keeps its schedule by catching up after a stall and stamps
    // each sample when it is read, so a loaded machine can move a sample across a window
    // edge, but over consecutive windows the count is the rate times the span. Windows 1..=6
    // (the first may be partial) are 12 s back to back.
    let span = &strain[1..7];
    let start_end: Vec<(Option<&str>, Option<&str>)> = all
        .iter()
        .filter(|r| r.topic.ends_with("/data/strain-roof"))
        .map(|r| (r.json["start"].as_str(), r.json["end"].as_str()))
        .collect();
    let edges = &start_end[1..7];
    ensure!(
        edges
            .windows(2)
            .all(|w| w[0].1 == w[1].0 && w[0].1.is_some()),
        "strain windows are not back to back: {edges:?}"
    );
    let n: u64 = span.iter().map(|w| w["n"].as_u64().unwrap_or(0)).sum();
    // Within 10 %: 20 Hz, not 10, 18 or 40 (on the 2-core machine at load average 16 this
    // read 223 of 240: the thread lost a few samples to the load).
    let expected = 20 * 2 * span.len() as u64;
    ensure!(
        n.abs_diff(expected) <= expected / 10,
        "strain: {n} samples in {} windows of 2 s at 20 Hz (expected {expected} +- 10 %): {span:?}",
        span.len()
    );
    let full = &strain[1];
    ensure!(full["u"] == "ustrain", "{full}");
    // The simulated panel's base strain is positive (tens to hundreds of µε); the offset of
    // -4000 µε must show in the mean.
    let mean = full["mean"].as_f64().unwrap_or(0.0);
    ensure!(
        (-4000.0..-3000.0).contains(&mean),
        "strain mean {mean} does not show the calibration offset of -4000"
    );
    let tilt = windows(&all, "tilt-roof", "tilt_x");
    ensure!(
        tilt[1]["u"] == "deg" && tilt[1]["mean"].as_f64().is_some_and(|v| v.abs() < 1.0),
        "{}",
        tilt[1]
    );
    sub.wait(Duration::from_secs(10), "health of the I2C devices", |_| {
        sub.on("/health").last().is_some_and(|h| {
            let s = &h.json["sources"]["tilt-roof"];
            s["kind"] == "i2c" && s["status"] == "ok" && s["frames_ok"].as_u64().unwrap_or(0) > 10
        })
    })?;
    // Commissioning: tare the tilt at the gateway; later windows sit near zero.
    sub.publish(
        &format!("towerlink/v1/{gw}/cmd"),
        br#"{"id":"z-i2c","op":"zero","dev":"tilt-roof","ch":"tilt_x"}"#,
    )?;
    sub.wait(Duration::from_secs(10), "the zero reply", |m| {
        m.iter().any(|r| {
            r.topic.ends_with("/reply")
                && r.json["id"] == "z-i2c"
                && r.json["ok"] == true
                && r.json["result"]["at"] == "gateway"
        })
    })?;
    let before = windows(&sub.all(), "tilt-roof", "tilt_x").len();
    sub.wait(Duration::from_secs(15), "tared tilt windows", |m| {
        let w = windows(m, "tilt-roof", "tilt_x");
        w.len() >= before + 2
            && w[before + 1]["mean"]
                .as_f64()
                .is_some_and(|v| v.abs() < 0.01)
    })?;
    agent.stop()?;
    sub.clear_retained(&format!("towerlink/v1/{gw}/state"));
    Ok(())
}
