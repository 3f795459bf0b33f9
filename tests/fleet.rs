//! `towerlink-sim fleet`, end to end: 100 gateways (the real agent code each, fed in-process)
//! for 30 s against a private Mosquitto, audited by the real `towerlink audit --json --strict`
//! running meanwhile: no gap, no invalid message, every gateway seen and online when the audit
//! ends; the fleet then stops cleanly (exit 0, every gateway connected until the stop, its
//! tmpfs stores removed). A harness subscriber validates every message against the schemas too.
//!
//! Each gateway here has a quarter of a nominal tower (10 nodes, 2 lifts) so the debug build
//! fits a loaded CI machine; `docs/sizing.md` measures the nominal tower.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use rumqttc::MqttOptions;
use serde_json::Value;
use towerlink_e2e::mosquitto::MosquittoProcess;
use towerlink_e2e::{binary, wait_until, Subscriber};

const GATEWAYS: usize = 100;

/// A child process whose stderr is collected; killed if dropped while running.
struct Child2 {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Child2 {
    fn spawn(cmd: &mut Command) -> anyhow::Result<Child2> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {cmd:?}"))?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().context("stderr")?;
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        });
        Ok(Child2 { child, stderr })
    }

    fn log(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits (bounded) for the exit; returns the exit code and stdout parsed as JSON.
    fn finish(mut self, within: Duration) -> anyhow::Result<(i32, Value)> {
        let mut status = None;
        wait_until(within, || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        let Some(status) = status else {
            bail!("did not end within {within:?}: {}", self.log());
        };
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .context("stdout")?
            .read_to_string(&mut out)?;
        let v: Value = serde_json::from_str(out.trim())
            .with_context(|| format!("not one JSON object: {out:?}; stderr: {}", self.log()))?;
        Ok((status.code().unwrap_or(-1), v))
    }
}

impl Drop for Child2 {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn a_fleet_of_100_gateways_audits_clean() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mosquitto = MosquittoProcess::start(dir.path())?;
    let port = mosquitto.port();
    let url = format!("mqtt://127.0.0.1:{port}");
    let root = "towerlink/v1";

    let mut opts = MqttOptions::new("fleet-test-sub", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(10));
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let sub = Subscriber::connect_with(opts, &format!("{root}/+/#"), 4096)?;

    let audit = Child2::spawn(Command::new(binary("towerlink-agent", "towerlink")?).args([
        "audit",
        "--broker",
        &url,
        "--root",
        root,
        "--duration",
        "22s",
        "--grace",
        "3s",
        "--json",
        "--strict",
    ]))?;
    ensure!(
        wait_until(Duration::from_secs(15), || audit
            .log()
            .contains("subscribed to")),
        "towerlink audit did not subscribe: {}",
        audit.log()
    );
    let fleet = Child2::spawn(
        Command::new(binary("towerlink-sim", "towerlink-sim")?).args([
            "fleet",
            "--gateways",
            &GATEWAYS.to_string(),
            "--broker",
            &url,
            "--root",
            root,
            "--nodes",
            "10",
            "--lifts",
            "2",
            "--window",
            "5s",
            // Windows go in batches (the audit decodes them); short enough that the last
            // one arrives within the audit's grace.
            "--batch",
            "2s",
            "--duration",
            "30s",
            "--json",
        ]),
    )?;

    // The audit ends (22 s + grace) while the fleet still runs (30 s).
    let (code, report) = audit.finish(Duration::from_secs(60))?;
    let gateways = report["gateways"].as_object().context("gateways")?;
    let fleet_gws: Vec<_> = gateways
        .keys()
        .filter(|g| g.starts_with("fleet-"))
        .collect();
    assert_eq!(fleet_gws.len(), GATEWAYS, "gateways seen: {report}");
    for (gw, g) in gateways {
        assert_eq!(g["gaps"], serde_json::json!([]), "{gw}: {g}");
        assert_eq!(g["invalid"], 0, "{gw}: {g}");
        assert_eq!(g["state"], "online", "{gw}: {g}");
        assert!(g["messages"].as_u64().unwrap_or(0) >= 10, "{gw}: {g}");
    }
    assert_eq!(code, 0, "audit --strict: {report}");

    let (code, fleet_report) = fleet.finish(Duration::from_secs(90))?;
    assert_eq!(code, 0, "fleet: {fleet_report}");
    assert_eq!(fleet_report["gateways"], GATEWAYS, "{fleet_report}");
    assert_eq!(fleet_report["connected"], GATEWAYS, "{fleet_report}");
    // Records the broker acknowledged (a batch carries many), per gateway and second.
    let acked = fleet_report["acknowledged"].as_f64().unwrap_or(0.0);
    let seconds = fleet_report["seconds"].as_f64().unwrap_or(f64::INFINITY);
    assert!(acked / (GATEWAYS as f64 * seconds) > 0.5, "{fleet_report}");
    let stores = fleet_report["store_dir"].as_str().context("store_dir")?;
    assert!(
        !std::path::Path::new(stores).exists(),
        "{stores} left behind"
    );

    // Everything the broker passed on is valid by the schemas, and the stop published every
    // gateway's offline state.
    assert_eq!(sub.violations(), Vec::<String>::new());
    let offline = |n: &mut usize| {
        *n = sub
            .all()
            .iter()
            .filter(|m| m.topic.ends_with("/state") && m.json["state"] == "offline")
            .count();
        *n >= GATEWAYS
    };
    let mut n = 0;
    ensure!(
        wait_until(Duration::from_secs(10), || offline(&mut n)),
        "{n} of {GATEWAYS} gateways published offline at the stop"
    );
    Ok(())
}
