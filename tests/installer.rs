//! The installer's commands as an installer runs them: the real `towerlink` binary against
//! virtual nodes on pseudo-terminals and the real broker.
//!
//! `check` on a good configuration and on many broken ones (each must name what is wrong and
//! exit non-zero), `tail` from the ports and from the broker (plain lines, as stdout is a
//! pipe here), and `zero` through the agent and directly on the port.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{ensure, Context};
use towerlink_e2e::{binary, broker, unique_gw, write_config, AgentProcess, Subscriber};
use towerlink_sim::pty::VirtualPort;
use towerlink_sim::virtual_node::VirtualNode;
use towerlink_sim_chips::Scenario;

fn scenario() -> Scenario {
    Scenario::from_toml_str("seed = 6\n\n[[panels]]\nname = \"panel-0\"\nnode = 100\n")
        .expect("test scenario parses")
}

fn spawn_node(dir: &Path) -> anyhow::Result<VirtualNode> {
    Ok(VirtualNode::spawn(
        &scenario(),
        "panel-0",
        &dir.join("ports/panel-0"),
        false,
    )?)
}

fn node_section(port: &Path, extra: &str) -> String {
    format!(
        "[[node]]\nid = \"panel-0\"\nport = \"{}\"\nwindow = \"1s\"\nwindow_grace = \"1500ms\"\n{extra}\n",
        port.display()
    )
}

/// Runs `towerlink <args>`; every command under test is bounded by its own timeouts.
fn towerlink(args: &[&str], config: &Path) -> anyhow::Result<(Output, String)> {
    let out = Command::new(binary("towerlink-agent", "towerlink")?)
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .context("running towerlink")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out, text))
}

#[test]
fn check_passes_on_a_good_installation() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = spawn_node(dir.path())?;
    let config = write_config(
        dir.path(),
        &unique_gw("chk"),
        &node_section(node.path(), "node_id = 100"),
    )?;
    let (out, text) = towerlink(&["check"], &config)?;
    ensure!(out.status.success(), "check failed:\n{text}");
    let lines: Vec<&str> = text.lines().collect();
    for want in [
        "OK  config ",
        "OK  ids: gateway chk-",
        "OK  node panel-0 (",
        "OK  store ",
        "OK  broker mqtt://",
    ] {
        ensure!(
            lines.iter().any(|l| l.starts_with(want)),
            "no line starting {want:?}:\n{text}"
        );
    }
    ensure!(
        text.contains("node 100, firmware ") && text.contains("strain 50 Hz"),
        "the node's Hello is not shown:\n{text}"
    );
    ensure!(text.contains("MQTT CONNECT accepted"), "{text}");
    ensure!(!text.contains("FAIL"), "{text}");
    Ok(())
}

/// A listener that answers anything with an HTTP error, like a web server on the wrong port.
fn not_mqtt_listener() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        }
    });
    Ok(port)
}

#[test]
fn check_names_each_broken_item_and_fails() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = spawn_node(dir.path())?;
    let good_node = node_section(node.path(), "");
    let (host, port) = broker();
    let good_url = format!("mqtt://{host}:{port}");
    // A line that opens but stays silent, and one full of noise (a wrong baud rate looks so).
    let silent = VirtualPort::open(Some(&dir.path().join("ports/silent")))?;
    let mut noisy = VirtualPort::open(Some(&dir.path().join("ports/noisy")))?;
    let noisy_path = noisy.path().to_owned();
    let stop_noise = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = stop_noise.clone();
    let noise = std::thread::spawn(move || {
        let junk: Vec<u8> = (0u16..600)
            .map(|i| (i.wrapping_mul(37) % 251 + 1) as u8)
            .collect();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = noisy.send(&junk);
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let not_mqtt = not_mqtt_listener()?;

    // (what is broken, the config text's node part / replacement, what the output must say)
    let nodes_cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown key",
            good_node.replace("window = ", "baudrate = 9600\nwindow = "),
            "key node[0].baudrate: unknown field `baudrate`",
        ),
        (
            "wrong type",
            good_node.replace("window = \"1s\"", "window = \"1s\"\nbaud = \"fast\""),
            "key node[0].baud: invalid type",
        ),
        (
            "non-standard baud",
            good_node.replace("window = \"1s\"", "window = \"1s\"\nbaud = 115201"),
            "key node[0].baud: 115201 is not a standard baud rate",
        ),
        (
            "bad device id",
            good_node.replace("\"panel-0\"", "\"Panel/0\""),
            "key node[0].id: \"Panel/0\" is not a valid device id",
        ),
        (
            "duplicate device id",
            format!("{good_node}\n[[node]]\nid = \"panel-0\"\nport = \"/dev/ttyUSB7\"\n"),
            "key node[1].id: \"panel-0\" is used by another device",
        ),
        (
            "bad duration",
            good_node.replace("window = \"1s\"", "window = \"ten\""),
            "invalid duration \"ten\"",
        ),
        (
            "missing port",
            node_section(&dir.path().join("ports/absent"), ""),
            "absent does not exist",
        ),
        (
            "not a serial port",
            node_section(Path::new("/dev/null"), ""),
            "FAIL node panel-0 (/dev/null at 115200 baud): cannot open /dev/null",
        ),
        (
            "silent line",
            node_section(silent.path(), ""),
            "the port opens but no byte arrived",
        ),
        (
            "noise on the line",
            node_section(&noisy_path, ""),
            "but no valid frame",
        ),
        (
            "another node on the port",
            node_section(node.path(), "node_id = 7"),
            "node 100 answers on this port",
        ),
    ];
    let mut failures = Vec::new();
    let mut run = |what: &str, text: &str, want: &str| -> anyhow::Result<()> {
        let case_dir = dir.path().join(what.replace(' ', "_"));
        std::fs::create_dir_all(&case_dir)?;
        let path = case_dir.join("towerlink.toml");
        std::fs::write(&path, text)?;
        let (out, output) = towerlink(&["check"], &path)?;
        if out.status.success() {
            failures.push(format!("{what}: check passed:\n{output}"));
        } else if !output.contains(want) {
            failures.push(format!("{what}: no {want:?} in:\n{output}"));
        } else if !output.contains("FAIL") || !output.contains(" — ") {
            failures.push(format!("{what}: no FAIL line with a fix:\n{output}"));
        }
        Ok(())
    };
    let header = |gw: &str, url: &str, store: &str| {
        format!("[gateway]\nid = \"{gw}\"\n\n[mqtt]\nurl = \"{url}\"\n\n[store]\npath = \"{store}\"\n\n")
    };
    let store = dir.path().join("store").display().to_string();
    for (what, nodes, want) in &nodes_cases {
        run(
            what,
            &format!("{}{nodes}", header("gw-a", &good_url, &store)),
            want,
        )?;
    }
    let other_cases: Vec<(&str, String, &str)> = vec![
        (
            "bad gateway id",
            header("GW A", &good_url, &store),
            "line 2, key gateway.id",
        ),
        (
            "plain MQTT to a remote broker",
            header("gw-a", "mqtt://platform.example:1883", &store),
            "line 5, key mqtt.url: plain MQTT to platform.example",
        ),
        (
            "url without scheme",
            header("gw-a", "platform.example", &store),
            "key mqtt.url: \"platform.example\" must start with mqtt://",
        ),
        (
            "missing section",
            format!("[gateway]\nid = \"gw-a\"\n\n[mqtt]\nurl = \"{good_url}\"\n"),
            "missing field `store`",
        ),
        (
            "TOML syntax",
            format!("{}[[node]\nid = \"x\"\n", header("gw-a", &good_url, &store)),
            "line 10",
        ),
        (
            "broker not listening",
            header("gw-a", "mqtt://127.0.0.1:1", &store),
            "FAIL broker mqtt://127.0.0.1:1: TCP connection to 127.0.0.1:1 failed",
        ),
        (
            "not an MQTT broker",
            header("gw-a", &format!("mqtt://127.0.0.1:{not_mqtt}"), &store),
            "unexpected answer",
        ),
        (
            "store not writable",
            header("gw-a", &good_url, "/proc/towerlink-store"),
            "FAIL store /proc/towerlink-store: does not exist and /proc is not writable",
        ),
    ];
    for (what, text, want) in &other_cases {
        run(what, text, want)?;
    }
    let (out, output) = towerlink(&["check"], &dir.path().join("nowhere.toml"))?;
    if out.status.success() || !output.contains("nowhere.toml: cannot read") {
        failures.push(format!("missing file:\n{output}"));
    }
    stop_noise.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = noise.join();
    drop(silent);
    ensure!(failures.is_empty(), "{}", failures.join("\n\n"));
    Ok(())
}

#[test]
fn tail_prints_a_nodes_readings_and_hello_from_its_port() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = spawn_node(dir.path())?;
    let config = write_config(
        dir.path(),
        &unique_gw("tailp"),
        &node_section(node.path(), ""),
    )?;
    let (out, text) = towerlink(&["tail", "--duration", "6s", "--count", "12"], &config)?;
    ensure!(out.status.success(), "tail failed:\n{text}");
    let lines: Vec<&str> = text.lines().collect();
    ensure!(lines.len() == 12, "expected 12 lines (--count):\n{text}");
    ensure!(
        lines.iter().all(|l| !l.contains('\x1b')),
        "a pipe gets plain lines:\n{text}"
    );
    ensure!(
        lines
            .iter()
            .any(|l| l.contains("panel-0") && l.contains("hello") && l.contains("node 100")),
        "no Hello line:\n{text}"
    );
    ensure!(
        lines
            .iter()
            .any(|l| l.contains("panel-0") && l.contains(" strain ") && l.contains("ustrain")),
        "no strain reading by name:\n{text}"
    );
    Ok(())
}

#[test]
fn tail_from_the_broker_shows_what_the_agent_publishes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let gw = unique_gw("tailb");
    let node = spawn_node(dir.path())?;
    let config = write_config(dir.path(), &gw, &node_section(node.path(), ""))?;
    let mut agent = AgentProcess::start(&config)?;
    let (out, text) = towerlink(
        &[
            "tail",
            "--from-broker",
            "--duration",
            "20s",
            "--count",
            "10",
        ],
        &config,
    )?;
    let log = agent.log();
    agent.stop()?;
    ensure!(out.status.success(), "tail failed:\n{text}\nagent:\n{log}");
    ensure!(
        text.lines()
            .any(|l| l.contains(" data ") && l.contains("panel-0") && l.contains("strain")),
        "no data line for panel-0:\n{text}"
    );
    Subscriber::connect(&format!("towerlink/v1/{gw}/state"))?
        .clear_retained(&format!("towerlink/v1/{gw}/state"));
    Ok(())
}

#[test]
fn zero_through_the_running_agent() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let gw = unique_gw("zeroa");
    let node = spawn_node(dir.path())?;
    let config = write_config(dir.path(), &gw, &node_section(node.path(), ""))?;
    let sub = Subscriber::connect(&format!("towerlink/v1/{gw}/#"))?;
    let mut agent = AgentProcess::start(&config)?;
    // The agent knows the node's channels once data flows.
    sub.wait(Duration::from_secs(20), "data from panel-0", |m| {
        m.iter().any(|m| m.topic.ends_with("/data/panel-0"))
    })?;
    let (ok, ok_text) = towerlink(&["zero", "panel-0", "tilt_x"], &config)?;
    let (bad, bad_text) = towerlink(&["zero", "panel-0", "nope"], &config)?;
    agent.stop()?;
    sub.clear_retained(&format!("towerlink/v1/{gw}/state"));
    ensure!(ok.status.success(), "zero failed:\n{ok_text}");
    ensure!(
        ok_text.starts_with("OK  zero panel-0 tilt_x: "),
        "{ok_text}"
    );
    ensure!(
        sub.on("/reply").iter().any(|r| r.json["ok"] == true
            && r.json["id"]
                .as_str()
                .is_some_and(|id| id.starts_with("zero-"))),
        "the platform did not see the reply"
    );
    ensure!(
        !bad.status.success(),
        "an unknown channel was zeroed:\n{bad_text}"
    );
    ensure!(
        bad_text.starts_with("FAIL zero panel-0 nope: "),
        "{bad_text}"
    );
    Ok(())
}

#[test]
fn zero_without_an_agent_fails_in_bounded_time() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // The node is configured (its port need not exist: the command goes through the agent).
    let config = write_config(
        dir.path(),
        &unique_gw("zeron"),
        &node_section(&dir.path().join("ports/panel-0"), ""),
    )?;
    binary("towerlink-agent", "towerlink")?; // built before the clock starts
    let started = std::time::Instant::now();
    let (out, text) = towerlink(&["zero", "panel-0", "tilt_x"], &config)?;
    ensure!(!out.status.success(), "{text}");
    ensure!(text.contains("no reply from the agent"), "{text}");
    ensure!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    Ok(())
}

#[test]
fn zero_directly_on_the_nodes_port() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = spawn_node(dir.path())?;
    let config = write_config(
        dir.path(),
        &unique_gw("zerod"),
        &node_section(node.path(), ""),
    )?;
    let (ok, ok_text) = towerlink(&["zero", "--direct", "panel-0", "tilt_x"], &config)?;
    ensure!(ok.status.success(), "zero --direct failed:\n{ok_text}");
    ensure!(
        ok_text.starts_with("OK  zero panel-0 tilt_x: node 100 tared channel 1"),
        "{ok_text}"
    );
    let (bad, bad_text) = towerlink(&["zero", "--direct", "panel-0", "nope"], &config)?;
    ensure!(!bad.status.success(), "{bad_text}");
    ensure!(bad_text.contains("has no channel \"nope\""), "{bad_text}");
    let (unknown, unknown_text) = towerlink(&["zero", "--direct", "panel-9", "strain"], &config)?;
    ensure!(!unknown.status.success(), "{unknown_text}");
    ensure!(
        unknown_text.contains(
            "no device \"panel-9\" in the configuration (devices that can be zeroed: panel-0)"
        ),
        "{unknown_text}"
    );
    Ok(())
}

/// `towerlink store` with no arguments reads the installed configuration, like every other
/// command (it used to demand `--config`).
#[test]
fn store_defaults_to_the_installed_configuration() -> anyhow::Result<()> {
    let installed = Path::new("/etc/towerlink/towerlink.toml");
    let out = Command::new(binary("towerlink-agent", "towerlink")?)
        .arg("store")
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(!text.contains("give --config"), "{text}");
    if installed.exists() {
        // A gateway with the package installed: its store is inspected (or named if absent).
        ensure!(
            text.contains("store:") || text.contains("cannot read the store"),
            "{text}"
        );
    } else {
        ensure!(out.status.code() == Some(2), "{text}");
        ensure!(
            text.contains("/etc/towerlink/towerlink.toml")
                && text.contains("towerlink store inspect PATH"),
            "{text}"
        );
    }
    Ok(())
}
