//! Local filtering and alarms, end to end: scripted panel faults in the simulator, the agent
//! process with per-channel settings, and what the platform receives.

use std::time::Duration;

use anyhow::{ensure, Context};
use serde_json::Value;
use towerlink_e2e::{unique_gw, write_config, AgentProcess, Received, Subscriber};
use towerlink_sim::virtual_node::{spawn_tower, VirtualNode};
use towerlink_sim_chips::Scenario;

fn node_section(n: &VirtualNode, extra: &str) -> String {
    format!(
        "[[node]]\nid = \"{}\"\nport = \"{}\"\nwindow = \"2s\"\nwindow_grace = \"1500ms\"\nnode_id = {}\n{extra}\n",
        n.dev(),
        n.path().display(),
        n.node_id()
    )
}

fn events<'a>(m: &'a [Received], dev: &str, name: &str) -> Vec<&'a Value> {
    m.iter()
        .filter(|r| r.topic.ends_with(&format!("/event/{dev}")) && r.json["event"] == name)
        .map(|r| &r.json)
        .collect()
}

fn windows<'a>(m: &'a [Received], dev: &str, ch: &str) -> Vec<&'a Value> {
    m.iter()
        .filter(|r| r.topic.ends_with(&format!("/data/{dev}")))
        .filter_map(|r| r.json["ch"].get(ch))
        .collect()
}

#[test]
fn spikes_raise_no_alarm_and_leave_the_windows_clean() -> anyhow::Result<()> {
    let scenario = Scenario::from_toml_str(
        r#"seed = 3
[[panels]]
name = "spiky"
node = 5
base_strain_ue = 140.0
[[panels.faults]]
kind = "spikes"
at_s = 0.0
channel = "strain"
rate_per_s = 5.0
magnitude = 800.0
[[panels.faults]]
kind = "spikes"
at_s = 0.0
channel = "tilt_x"
rate_per_s = 1.0
magnitude = 2.0
"#,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let dir = tempfile::tempdir()?;
    let nodes = spawn_tower(&scenario, &dir.path().join("ports"), false)?;
    let n = &nodes[0];
    let gw = unique_gw("e2e-spikes");
    let sub = Subscriber::connect(&format!("towerlink/v1/{gw}/#"))?;
    let settings = "[node.channels.strain]\nalarm = { minor = 400.0, major = 600.0, relative_to_zero = false }\n\
                    [node.channels.tilt_x]\nalarm = { minor = 0.5, critical = 1.5 }\n";
    let config = write_config(
        dir.path(),
        &gw,
        &format!(
            "[health]\ninterval = \"1s\"\n\n{}",
            node_section(n, settings)
        ),
    )?;
    let mut agent = AgentProcess::start(&config)?;
    // About 12 s of data: some 60 strain spikes and a dozen tilt spikes... and more with time.
    sub.wait(
        Duration::from_secs(60),
        "hundreds of spikes rejected",
        |_| {
            sub.on("/health")
                .last()
                .is_some_and(|h| h.json["pipeline"]["spikes"].as_u64().unwrap_or(0) >= 100)
        },
    )?;
    sub.wait(Duration::from_secs(10), "one more strain window", |m| {
        windows(m, n.dev(), "strain").len() >= 4
    })?;
    let all = sub.all();
    ensure!(
        events(&all, n.dev(), "threshold").is_empty(),
        "a spike raised an alarm: {:?}",
        events(&all, n.dev(), "threshold")
    );
    let strain = windows(&all, n.dev(), "strain");
    for w in strain.iter().skip(1) {
        let (mean, min, max, std) = (
            w["mean"].as_f64().unwrap_or(0.0),
            w["min"].as_f64().unwrap_or(0.0),
            w["max"].as_f64().unwrap_or(0.0),
            w["std"].as_f64().unwrap_or(1e9),
        );
        // Unfiltered, ±800 µε spikes on 10 % of the samples would give std ~250 and a range of 1600.
        ensure!(
            max - min < 200.0 && std < 40.0,
            "a spike reached a window: {w}"
        );
        ensure!((100.0..260.0).contains(&mean), "strain mean off: {w}");
    }
    for w in windows(&all, n.dev(), "tilt_x").iter().skip(1) {
        ensure!(
            w["max"].as_f64().unwrap_or(9.0) < 0.5,
            "a tilt spike reached a window: {w}"
        );
    }
    agent.stop()?;
    sub.clear_retained(&format!("towerlink/v1/{gw}/state"));
    Ok(())
}

#[test]
fn a_slow_tilt_crosses_every_level_and_back_one_event_each() -> anyhow::Result<()> {
    // 0.1 deg/s up for 6 s, then down for 6 s: peaks near 0.6 deg. The ramp starts 10 s
    // into the simulation, and the simulation starts only once the agent is up and connected
    // (it opens the node's port when the port appears); the test then checks that the agent
    // read the flat start before the ramp, so a slow start fails by name, not as wrong events.
    towerlink_e2e::binary("towerlink-agent", "towerlink")?;
    let scenario = Scenario::from_toml_str(
        r#"seed = 4
wind_scale = 0.2
[[panels]]
name = "tilting"
node = 21
base_tilt_x_deg = 0.0
[[panels.faults]]
kind = "slow_tilt"
at_s = 10.0
until_s = 16.0
axis = "x"
rate_deg_per_hour = 360.0
[[panels.faults]]
kind = "slow_tilt"
at_s = 16.0
until_s = 22.0
axis = "x"
rate_deg_per_hour = -360.0
"#,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let dir = tempfile::tempdir()?;
    let gw = unique_gw("e2e-tilt");
    let sub = Subscriber::connect(&format!("towerlink/v1/{gw}/#"))?;
    let settings = "[node.channels.tilt_x]\n\
                    alarm = { minor = 0.15, major = 0.3, critical = 0.45, hysteresis = 0.02, for = \"500ms\" }\n\
                    rate = { max_per_hour = 100.0, over = \"3s\" }\n";
    // spawn_tower links each node's port at <dir>/<panel name>.
    let ports = dir.path().join("ports");
    let section = format!(
        "[[node]]\nid = \"tilting\"\nport = \"{}\"\nwindow = \"2s\"\nwindow_grace = \"1500ms\"\nnode_id = 21\n{settings}\n",
        ports.join("tilting").display()
    );
    let config = write_config(dir.path(), &gw, &section)?;
    let mut agent = AgentProcess::start(&config)?;
    sub.wait(Duration::from_secs(30), "the agent online", |m| {
        m.iter()
            .any(|r| r.topic.ends_with("/state") && r.json["state"] == "online")
    })?;
    let nodes = spawn_tower(&scenario, &ports, false)?;
    let simulation_start = std::time::Instant::now();
    let n = &nodes[0];
    // The flat start (10 s, ramp-free) must reach the agent: a first tilt_x window that
    // ended before the ramp. The agent retries the missing port with a 0.5 s back-off
    // doubling, so it opens it within about as long as it took to come online.
    sub.wait(Duration::from_secs(30), "a first tilt_x window", |m| {
        !windows(m, n.dev(), "tilt_x").is_empty()
    })?;
    let first_window_after = simulation_start.elapsed();
    let first = windows(&sub.all(), n.dev(), "tilt_x")
        .first()
        .map(|w| w["max"].as_f64().unwrap_or(f64::NAN))
        .unwrap_or(f64::NAN);
    ensure!(
        first < 0.15,
        "the agent's first tilt_x window ({first_window_after:?} into the simulation, max {first}) \
         is not from the flat start before the ramp at 10 s: it started too late to see the \
         tilt cross every level\n{}",
        agent.log()
    );
    sub.wait(Duration::from_secs(45), "the tilt alarm to clear", |m| {
        events(m, n.dev(), "threshold")
            .iter()
            .any(|e| e["state"] == "cleared")
    })?;
    let all = sub.all();
    let seen: Vec<(String, String)> = events(&all, n.dev(), "threshold")
        .iter()
        .map(|e| {
            (
                e["severity"].as_str().unwrap_or("").to_owned(),
                e["state"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("minor", "active"),
        ("major", "active"),
        ("critical", "active"),
        ("major", "active"),
        ("minor", "active"),
        ("minor", "cleared"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    ensure!(
        seen == expected,
        "threshold events {seen:?}, expected {expected:?}\nwindows: {:?}\nevents: {:#?}",
        windows(&all, n.dev(), "tilt_x")
            .iter()
            .map(|w| format!("{}..{} n={}", w["min"], w["max"], w["n"]))
            .collect::<Vec<_>>(),
        events(&all, n.dev(), "threshold")
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
    );
    // Every event names its channel, unit, value and limit, in seq order.
    let th = events(&all, n.dev(), "threshold");
    ensure!(th.iter().all(|e| e["ch"] == "tilt_x"
        && e["u"] == "deg"
        && e["limit"].is_number()
        && e["value"].is_number()));
    let seqs: Vec<u64> = th.iter().filter_map(|e| e["seq"].as_u64()).collect();
    ensure!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "events out of order: {seqs:?}"
    );
    let rate: Vec<&str> = events(&all, n.dev(), "rate_of_change")
        .iter()
        .filter_map(|e| e["state"].as_str())
        .collect();
    ensure!(
        rate.first() == Some(&"active"),
        "no rate-of-change alarm: {rate:?}"
    );
    // Once the tilt stops moving (22 s), the rate falls below 90 % of the limit over the
    // 3 s slope: the alarm clears. It may also clear at the peak (16 s), where the slope
    // passes through zero, and rise again on the way down; so the clear waited for is one
    // published after the threshold alarm cleared (about 20.7 s, still on the way down,
    // when the rate alarm is active), which only the end of the movement can produce.
    let threshold_cleared = events(&all, n.dev(), "threshold")
        .iter()
        .filter(|e| e["state"] == "cleared")
        .filter_map(|e| e["seq"].as_u64())
        .next_back()
        .unwrap_or(u64::MAX);
    sub.wait(
        Duration::from_secs(20),
        "the rate-of-change alarm to clear after the tilt stopped",
        |m| {
            events(m, n.dev(), "rate_of_change").iter().any(|e| {
                e["state"] == "cleared" && e["seq"].as_u64().is_some_and(|s| s > threshold_cleared)
            })
        },
    )?;
    let rate: Vec<String> = events(&sub.all(), n.dev(), "rate_of_change")
        .iter()
        .filter_map(|e| e["state"].as_str().map(str::to_owned))
        .collect();
    // (It may clear and rise again at the peak, where the slope passes through zero.)
    ensure!(
        rate.len() % 2 == 0
            && rate
                .iter()
                .enumerate()
                .all(|(i, st)| st == if i % 2 == 0 { "active" } else { "cleared" }),
        "rate-of-change events {rate:?}, expected active / cleared pairs ending cleared"
    );
    agent.stop()?;
    sub.clear_retained(&format!("towerlink/v1/{gw}/state"));
    Ok(())
}

#[test]
fn stuck_and_silent_sensors_are_reported() -> anyhow::Result<()> {
    let scenario = Scenario::from_toml_str(
        r#"seed = 5
[[panels]]
name = "stuck"
node = 31
[[panels.faults]]
kind = "stuck"
at_s = 3.0
chip = "nau7802"
[[panels]]
name = "silent"
node = 32
[[panels.faults]]
kind = "offline"
at_s = 3.0
chip = "adxl355"
[[panels]]
name = "gone"
node = 33
"#,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let dir = tempfile::tempdir()?;
    let gw = unique_gw("e2e-health");
    let sub = Subscriber::connect(&format!("towerlink/v1/{gw}/#"))?;
    let mut nodes = spawn_tower(&scenario, &dir.path().join("ports"), false)?;
    let text = format!(
        "[health]\ninterval = \"1s\"\nnode_silent_after = \"4s\"\n\n{}{}{}",
        node_section(
            &nodes[0],
            "[node.channels.strain]\nstuck = { window = \"2s\" }\n"
        ),
        node_section(&nodes[1], ""),
        node_section(&nodes[2], "")
    );
    let config = write_config(dir.path(), &gw, &text)?;
    let mut agent = AgentProcess::start(&config)?;
    sub.wait(
        Duration::from_secs(30),
        "data from the node that will go away",
        |m| m.iter().any(|r| r.topic.ends_with("/data/gone")),
    )?;
    let gone = nodes.pop().context("three nodes")?;
    gone.stop();
    sub.wait(
        Duration::from_secs(30),
        "sensor_stuck on the stuck strain gauge",
        |m| {
            events(m, "stuck", "sensor_stuck")
                .iter()
                .any(|e| e["state"] == "active" && e["ch"] == "strain")
        },
    )?;
    sub.wait(
        Duration::from_secs(30),
        "sensor_fault on the silent accelerometer",
        |m| {
            let f = events(m, "silent", "sensor_fault");
            f.iter().any(|e| e["ch"] == "tilt_x") && f.iter().any(|e| e["ch"] == "tilt_y")
        },
    )?;
    sub.wait(
        Duration::from_secs(30),
        "sensor_offline for the node that stopped",
        |m| {
            events(m, "gone", "sensor_offline")
                .iter()
                .any(|e| e["state"] == "active" && e.get("ch").is_none())
        },
    )?;
    sub.wait(
        Duration::from_secs(10),
        "health listing the conditions",
        |_| {
            sub.on("/health").last().is_some_and(|h| {
                let c = |dev: &str| {
                    h.json["sources"][dev]["conditions"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                };
                c("stuck").iter().any(|v| v == "sensor_stuck:strain")
                    && c("silent").iter().any(|v| v == "sensor_fault:tilt_x")
            })
        },
    )?;
    // Frames the node still sends keep the stuck and silent nodes themselves online.
    ensure!(
        events(&sub.all(), "stuck", "sensor_offline").is_empty(),
        "the stuck node was called offline"
    );
    agent.stop()?;
    sub.clear_retained(&format!("towerlink/v1/{gw}/state"));
    Ok(())
}

#[test]
fn a_gateway_zero_survives_an_agent_restart() -> anyhow::Result<()> {
    let scenario = Scenario::from_toml_str(
        "seed = 6\nwind_scale = 0.2\n[[panels]]\nname = \"zeroed\"\nnode = 41\nbase_tilt_x_deg = 0.3\n[[panels]]\nname = \"tared\"\nnode = 42\nbase_tilt_x_deg = -0.2\n",
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let dir = tempfile::tempdir()?;
    let gw = unique_gw("e2e-zero");
    let sub = Subscriber::connect(&format!("towerlink/v1/{gw}/#"))?;
    let nodes = spawn_tower(&scenario, &dir.path().join("ports"), false)?;
    let text = format!(
        "{}{}",
        node_section(&nodes[0], "zero_at = \"gateway\"\n"),
        node_section(&nodes[1], "")
    );
    let config = write_config(dir.path(), &gw, &text)?;
    let mut agent = AgentProcess::start(&config)?;
    sub.wait(Duration::from_secs(30), "tilt windows", |m| {
        windows(m, "zeroed", "tilt_x").len() >= 2 && windows(m, "tared", "tilt_x").len() >= 2
    })?;
    let cmd = format!("towerlink/v1/{gw}/cmd");
    sub.publish(
        &cmd,
        br#"{"id":"z1","op":"zero","dev":"zeroed","ch":"tilt_x"}"#,
    )?;
    sub.publish(
        &cmd,
        br#"{"id":"z2","op":"zero","dev":"tared","ch":"tilt_x"}"#,
    )?;
    sub.wait(Duration::from_secs(15), "both zero replies", |m| {
        let ok = |id: &str| {
            m.iter()
                .any(|r| r.topic.ends_with("/reply") && r.json["id"] == id && r.json["ok"] == true)
        };
        ok("z1") && ok("z2")
    })?;
    let all = sub.all();
    let reply = |id: &str| {
        all.iter()
            .find(|r| r.topic.ends_with("/reply") && r.json["id"] == id)
            .map(|r| r.json.clone())
    };
    ensure!(
        reply("z1").is_some_and(|r| r["result"]["at"] == "gateway"),
        "{:?}",
        reply("z1")
    );
    ensure!(
        reply("z2").is_some_and(|r| r["result"]["at"] == "node"),
        "{:?}",
        reply("z2")
    );
    let near_zero = |m: &[Received], dev: &str, after: usize| {
        let w = windows(m, dev, "tilt_x");
        w.len() > after + 1
            && w[after + 1..]
                .iter()
                .all(|w| w["mean"].as_f64().is_some_and(|v| v.abs() < 0.02))
    };
    let (za, ta) = (
        windows(&all, "zeroed", "tilt_x").len(),
        windows(&all, "tared", "tilt_x").len(),
    );
    sub.wait(Duration::from_secs(20), "tared windows near zero", |m| {
        near_zero(m, "zeroed", za) && near_zero(m, "tared", ta)
    })?;

    agent.stop()?;
    let mut agent = AgentProcess::start(&config)?;
    let count = sub.all().len();
    sub.wait(Duration::from_secs(30), "windows after the restart", |m| {
        windows(&m[count..], "zeroed", "tilt_x").len() >= 2
    })?;
    let after = sub.all();
    ensure!(
        near_zero(&after[count..], "zeroed", 0),
        "the gateway zero was lost in the restart: {:?}",
        windows(&after[count..], "zeroed", "tilt_x")
    );
    agent.stop()?;
    sub.clear_retained(&format!("towerlink/v1/{gw}/state"));
    Ok(())
}
