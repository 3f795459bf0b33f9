//! `towerlink audit`, end to end: the real binary against a real broker.
//!
//! - Crafted feeds of fake gateways (a gap, a duplicate, an open event, a gap the gateway's
//!   health counts as evicted, an invalid message): the JSON report names each.
//! - A clean simulated tower (virtual nodes on PTYs, the real agent): nothing wrong.
//! - `--share` on a private Mosquitto (MQTT 5 shared subscription): two auditors split one
//!   gateway's messages, each message to exactly one of them, none lost.
//!
//! The tests on the machine's broker use a topic root of their own, so other tests' gateways
//! never enter the audit.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use rumqttc::MqttOptions;
use serde_json::Value;
use towerlink_e2e::mosquitto::MosquittoProcess;
use towerlink_e2e::{
    binary, broker, unique_gw, wait_until, write_config, AgentProcess, Subscriber,
};
use towerlink_sim::virtual_node::spawn_tower;
use towerlink_sim_chips::Scenario;

/// A running `towerlink audit`.
struct Auditor {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Auditor {
    /// Starts `towerlink audit ARGS` and returns once it is subscribed.
    fn start(args: &[&str]) -> anyhow::Result<Auditor> {
        let mut child = Command::new(binary("towerlink-agent", "towerlink")?)
            .arg("audit")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning towerlink audit")?;
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
        let mut a = Auditor { child, stderr };
        let subscribed = wait_until(Duration::from_secs(15), || {
            a.log().contains("subscribed to") || matches!(a.child.try_wait(), Ok(Some(_)))
        });
        ensure!(
            subscribed && a.log().contains("subscribed to"),
            "towerlink audit did not subscribe: {}",
            a.log()
        );
        Ok(a)
    }

    fn log(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits for the exit (bounded) and returns the exit code and the JSON report.
    fn finish(mut self, within: Duration) -> anyhow::Result<(i32, Value)> {
        let mut status = None;
        wait_until(within, || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        let Some(status) = status else {
            let _ = self.child.kill();
            let _ = self.child.wait();
            bail!("towerlink audit did not end: {}", self.log());
        };
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .context("stdout")?
            .read_to_string(&mut out)?;
        let report: Value = serde_json::from_str(out.trim()).with_context(|| {
            format!(
                "the report is not one JSON object: {out:?}; stderr: {}",
                self.log()
            )
        })?;
        Ok((status.code().unwrap_or(-1), report))
    }
}

impl Drop for Auditor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn window(gw: &str, seq: u64) -> (String, Vec<u8>) {
    (
        "data/panel-n1".to_owned(),
        format!(
            r#"{{"v":1,"gw":"{gw}","dev":"panel-n1","seq":{seq},"start":"2026-12-01T11:01:05.000Z","end":"2026-12-01T11:01:10.000Z","ch":{{"strain":{{"u":"ustrain","n":3,"expected":3,"mean":1.0,"min":0.5,"max":1.5,"last":1.0,"std":0.4}}}}}}"#
        )
        .into_bytes(),
    )
}

fn threshold(gw: &str, seq: u64, ch: &str, state: &str) -> (String, Vec<u8>) {
    (
        "event/panel-n1".to_owned(),
        format!(
            r#"{{"v":1,"gw":"{gw}","dev":"panel-n1","seq":{seq},"ts":"2026-12-01T11:01:10.000Z","event":"threshold","severity":"minor","state":"{state}","since":"2026-12-01T11:01:09.000Z","ch":"{ch}","u":"deg","value":0.2,"limit":0.15}}"#
        )
        .into_bytes(),
    )
}

fn health(gw: &str, evicted: u64) -> (String, Vec<u8>) {
    (
        "health".to_owned(),
        format!(
            r#"{{"v":1,"gw":"{gw}","agent":"0.1.0","ts":"2026-12-01T11:01:10.000Z","uptime_s":60,
            "commands":{{"accepted":0,"rate_limited":0,"refused":0}},
            "messages":{{"dropped":0,"evicted":{evicted},"published":1,"queued":1}},
            "mqtt":{{"commands":0,"connection_errors":0,"connects":1,"insecure":false}},
            "pipeline":{{"late_samples":0,"out_of_range":0,"spikes":0,"unknown_channel_samples":0}},
            "queue":{{"bytes":0,"corrupted":0,"depth":0,"disk_bytes":0,"error":null,"evicted":{evicted},"fsync":"100ms","last_seq":1,"memory_only":0,"oldest_age_s":null,"replay_rate":500,"segments":1,"store_errors":0,"torn":0}},
            "sources":{{}},"clock":{{"synced":true,"est_error_ms":0.5,"steps":0}}}}"#
        )
        .into_bytes(),
    )
}

fn publish_all(
    pubr: &Subscriber,
    root: &str,
    gw: &str,
    msgs: &[(String, Vec<u8>)],
) -> anyhow::Result<()> {
    for (suffix, payload) in msgs {
        pubr.publish(&format!("{root}/{gw}/{suffix}"), payload)?;
    }
    Ok(())
}

fn broker_url() -> String {
    let (host, port) = broker();
    format!("mqtt://{host}:{port}")
}

#[test]
fn audit_reports_an_injected_gap_duplicate_open_event_eviction_and_invalid_message(
) -> anyhow::Result<()> {
    let root = format!("{}/v1", unique_gw("e2e-audit"));
    let (gap, evict, bad) = ("fake-gap", "fake-evict", "fake-bad");
    // Receives (and schema-checks) what the valid gateways publish (not the invalid one's:
    // the harness fails on a message that breaks the schemas, as it should).
    let pubr =
        Subscriber::connect_many(&[&format!("{root}/{gap}/#"), &format!("{root}/{evict}/#")])?;
    let url = broker_url();
    let auditor = Auditor::start(&[
        "--broker",
        &url,
        "--root",
        &root,
        "--duration",
        "4s",
        "--grace",
        "1s",
        "--json",
        "--strict",
    ])?;

    let online = format!(
        r#"{{"agent":"0.1.0","gw":"{gap}","state":"online","ts":"2026-12-01T11:00:55.342Z","v":1,"last_stop":"clean","clock":{{"synced":true}}}}"#
    );
    let mut msgs = vec![("state".to_owned(), online.into_bytes())];
    // seq 1..=3, 5 twice (4 is missing), an event that opens (6), one that opens and clears
    // (7, 8).
    msgs.extend([1, 2, 3, 5, 5].map(|s| window(gap, s)));
    msgs.push(threshold(gap, 6, "tilt_x", "active"));
    msgs.push(threshold(gap, 7, "tilt_y", "active"));
    msgs.push(threshold(gap, 8, "tilt_y", "cleared"));
    publish_all(&pubr, &root, gap, &msgs)?;
    // 3 and 4 missing, and the gateway says it evicted 2.
    let mut msgs: Vec<_> = [1, 2, 5].map(|s| window(evict, s)).into();
    msgs.push(health(evict, 2));
    publish_all(&pubr, &root, evict, &msgs)?;
    // A string seq.
    let (suffix, p) = window(bad, 1);
    let text = String::from_utf8(p)?.replace(r#""seq":1"#, r#""seq":"1""#);
    pubr.publish(&format!("{root}/{bad}/{suffix}"), text.as_bytes())?;
    let sent = 9 + 4;
    ensure!(
        wait_until(Duration::from_secs(10), || pubr.all().len() >= sent),
        "the broker did not pass on what was published"
    );

    let (code, report) = auditor.finish(Duration::from_secs(30))?;
    let g = &report["gateways"][gap];
    assert_eq!(g["messages"], 9, "{report}");
    assert_eq!(g["invalid"], 0, "{report}");
    assert_eq!(g["gaps"], serde_json::json!([[4, 4]]), "{report}");
    assert_eq!(g["duplicates"], 1, "{report}");
    assert_eq!(g["evicted"], 0, "{report}");
    assert_eq!(g["state"], "online", "{report}");
    let open = g["open_events"].as_array().context("open_events")?;
    assert_eq!(open.len(), 1, "{report}");
    assert_eq!(
        (
            &open[0]["dev"],
            &open[0]["event"],
            &open[0]["ch"],
            &open[0]["seq"]
        ),
        (
            &Value::from("panel-n1"),
            &Value::from("threshold"),
            &Value::from("tilt_x"),
            &Value::from(6)
        ),
        "{report}"
    );
    assert!(
        g["latency_ms"]["p50"].is_number() && g["latency_ms"]["p99"].is_number(),
        "{report}"
    );

    let e = &report["gateways"][evict];
    assert_eq!(e["gaps"], serde_json::json!([]), "{report}");
    assert_eq!(e["evicted"], 2, "{report}");
    assert_eq!(e["state"], Value::Null, "{report}");

    let b = &report["gateways"][bad];
    assert_eq!(b["invalid"], 1, "{report}");
    // The data schema is a oneOf (window / lift status): the reason is the whole payload's.
    let reason = b["invalid_reasons"][0].as_str().unwrap_or_default();
    assert!(
        reason.starts_with(&format!("{root}/{bad}/data/panel-n1: "))
            && reason.contains("not valid"),
        "{report}"
    );

    assert_eq!(
        code, 1,
        "--strict with a gap and an invalid message: {report}"
    );
    Ok(())
}

#[test]
fn audit_of_a_clean_simulated_tower_reports_nothing_wrong() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut text = "seed = 21\n".to_owned();
    for i in 0..2 {
        text.push_str(&format!(
            "\n[[panels]]\nname = \"panel-{i}\"\nnode = {}\n",
            100 + i
        ));
    }
    let scenario = Scenario::from_toml_str(&text)?;
    let nodes = spawn_tower(&scenario, &dir.path().join("ports"), false)?;
    let gw = unique_gw("e2e-audit-tower");
    let root = format!("{gw}-root/v1");
    let sub = Subscriber::connect(&format!("{root}/{gw}/#"))?;
    let sections: String = nodes
        .iter()
        .map(|n| {
            format!(
                "[[node]]\nid = \"{}\"\nport = \"{}\"\nwindow = \"2s\"\nnode_id = {}\n\n",
                n.dev(),
                n.path().display(),
                n.node_id()
            )
        })
        .collect();
    let config = write_config(
        dir.path(),
        &gw,
        &format!("[health]\ninterval = \"1s\"\n\n{sections}"),
    )?;
    let toml = std::fs::read_to_string(&config)?.replace(
        "topic_root = \"towerlink/v1\"",
        &format!("topic_root = \"{root}\""),
    );
    std::fs::write(&config, toml)?;

    let url = broker_url();
    let auditor = Auditor::start(&[
        "--broker",
        &url,
        "--root",
        &root,
        "--duration",
        "15s",
        "--json",
        "--strict",
    ])?;
    // The clock flagged unsynced for the agent (whatever this machine's kernel says), so
    // the audit's count of flagged messages is known: every data and event message.
    let mut agent = AgentProcess::start_with_env(&config, &[("TOWERLINK_TEST_CLOCK", "unsynced")])?;
    let (code, report) = auditor.finish(Duration::from_secs(40))?;
    agent.stop()?;

    let g = &report["gateways"][gw.as_str()];
    let messages = g["messages"].as_u64().unwrap_or(0);
    ensure!(
        messages >= 10,
        "too few messages to judge: {report}\n{}",
        agent.log()
    );
    assert_eq!(g["invalid"], 0, "{report}");
    assert_eq!(g["gaps"], serde_json::json!([]), "{report}");
    assert_eq!(g["missing"], 0, "{report}");
    assert_eq!(g["duplicates"], 0, "{report}");
    assert_eq!(g["evicted"], 0, "{report}");
    assert_eq!(g["open_events"], serde_json::json!([]), "{report}");
    assert_eq!(g["state"], "online", "{report}");
    let (first, last) = (
        g["seq"]["first"].as_u64().context("first seq")?,
        g["seq"]["last"].as_u64().context("last seq")?,
    );
    assert_eq!(g["unsynced"], last - first + 1, "{report}");
    // A fresh store: the audit saw the gateway's first seq.
    assert_eq!(g["seq"]["first"], 1, "{report}");
    let p99 = g["latency_ms"]["p99"].as_f64().context("p99")?;
    ensure!(p99 < 10_000.0, "latency p99 {p99} ms: {report}");
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        report["gateways"].as_object().map(|o| o.len()),
        Some(1),
        "{report}"
    );
    ensure!(sub.violations().is_empty(), "{:?}", sub.violations());
    Ok(())
}

#[test]
fn two_shared_auditors_split_the_feed_without_loss_or_overlap() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mosquitto = MosquittoProcess::start(dir.path())?;
    let port = mosquitto.port();
    let url = format!("mqtt://127.0.0.1:{port}");
    let root = "towerlink/v1";
    let args = [
        "--broker",
        &url,
        "--root",
        root,
        "--duration",
        "6s",
        "--json",
        "--share",
        "auditors",
    ];
    let a = Auditor::start(&args)?;
    let b = Auditor::start(&args)?;
    let gw = "fake-shared";
    let mut opts = MqttOptions::new(unique_gw("pub"), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(10));
    opts.set_inflight(100);
    // Receives everything too (no share): the broker passed on all of it.
    let pubr = Subscriber::connect_with(opts, &format!("{root}/#"), 1024)?;
    const N: u64 = 200;
    let msgs: Vec<_> = (1..=N).map(|s| window(gw, s)).collect();
    publish_all(&pubr, root, gw, &msgs)?;
    ensure!(
        wait_until(Duration::from_secs(10), || pubr.all().len() as u64 >= N),
        "the broker did not pass on what was published"
    );
    let (code_a, ra) = a.finish(Duration::from_secs(30))?;
    let (code_b, rb) = b.finish(Duration::from_secs(30))?;
    assert_eq!((code_a, code_b), (0, 0));
    let mut seen = std::collections::BTreeSet::new();
    let mut each = Vec::new();
    for r in [&ra, &rb] {
        let g = &r["gateways"][gw];
        assert_eq!(r["shared"], true, "{r}");
        assert_eq!(
            g["gaps"],
            serde_json::json!([]),
            "a shared auditor leaves gaps to the merge: {r}"
        );
        assert_eq!(g["invalid"], 0, "{r}");
        let mut mine = 0;
        for range in g["seen"].as_array().context("seen")? {
            let (first, last) = (
                range[0].as_u64().context("first")?,
                range[1].as_u64().context("last")?,
            );
            for s in first..=last {
                ensure!(seen.insert(s), "seq {s} went to both auditors: {ra}\n{rb}");
                mine += 1;
            }
        }
        each.push(mine);
    }
    assert_eq!(
        seen,
        (1..=N).collect(),
        "the union of the shares is the feed"
    );
    ensure!(
        each.iter().all(|n| *n > 0),
        "both auditors took a share: {each:?}"
    );
    Ok(())
}

#[test]
fn audit_takes_the_agents_tls_options_and_refuses_a_broker_it_cannot_verify() -> anyhow::Result<()>
{
    use towerlink_e2e::tls::{Pki, TlsBroker};
    let dir = tempfile::tempdir()?;
    let pki = Pki::new(&dir.path().join("pki"))?;
    let broker = TlsBroker::start(&dir.path().join("broker"), &pki, "server", None)?;
    let url = format!("mqtts://127.0.0.1:{}", broker.tls_port);
    let (ca, cert, key) = (
        pki.path("ca.pem"),
        pki.path("client.pem"),
        pki.path("client.key"),
    );
    let (ca, cert, key) = (
        ca.to_str().context("path")?,
        cert.to_str().context("path")?,
        key.to_str().context("path")?,
    );
    let auditor = Auditor::start(&[
        "--broker",
        &url,
        "--ca-file",
        ca,
        "--cert-file",
        cert,
        "--key-file",
        key,
        "--duration",
        "3s",
        "--json",
    ])?;
    // Published on the broker's plain listener, audited over mTLS.
    let mut opts = MqttOptions::new(unique_gw("pub"), "127.0.0.1", broker.plain_port);
    opts.set_keep_alive(Duration::from_secs(10));
    let pubr = Subscriber::connect_with(opts, "towerlink/v1/#", 64)?;
    publish_all(&pubr, "towerlink/v1", "fake-tls", &[window("fake-tls", 1)])?;
    let (code, report) = auditor.finish(Duration::from_secs(20))?;
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["gateways"]["fake-tls"]["messages"], 1, "{report}");

    // Against the impostor CA's trust the broker's certificate does not verify: exit 2, said.
    let out = Command::new(binary("towerlink-agent", "towerlink")?)
        .args(["audit", "--broker", &url, "--duration", "3s", "--json"])
        .args(["--cert-file", cert, "--key-file", key, "--ca-file"])
        .arg(pki.path("client-impostor.pem"))
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    ensure!(stderr.contains("cannot reach the broker"), "{stderr}");
    // mqtts:// without a CA file: refused before connecting, naming the option.
    let out = Command::new(binary("towerlink-agent", "towerlink")?)
        .args(["audit", "--broker", &url, "--duration", "1s"])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    ensure!(stderr.contains("ca_file"), "{stderr}");
    Ok(())
}
