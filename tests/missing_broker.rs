//! Without a broker the end-to-end tests stop with one clear line naming what to start, not
//! with scattered failures (issue 10: "make a missing broker fail the tests with one clear
//! line"). The test re-runs its own binary's ignored child test with `TOWERLINK_TEST_BROKER`
//! pointing at a loopback port nobody listens on.

use std::net::TcpListener;
use std::process::Command;

use towerlink_e2e::{broker, Subscriber};

#[test]
fn a_missing_broker_stops_the_run_with_one_line_naming_the_fix() -> anyhow::Result<()> {
    // A port that was just free: bind, note it, close.
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let out = Command::new(std::env::current_exe()?)
        .args([
            "--ignored",
            "--exact",
            "child_connects_to_the_broker",
            "--nocapture",
        ])
        .env("TOWERLINK_TEST_BROKER", format!("127.0.0.1:{port}"))
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("towerlink e2e"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "exactly one line about the broker: {stderr}"
    );
    let line = lines[0];
    assert!(
        line.contains(&format!("no MQTT broker at 127.0.0.1:{port}")),
        "{line}"
    );
    assert!(
        line.contains("mosquitto -d -c /etc/mosquitto/mosquitto.conf"),
        "{line}"
    );
    assert!(line.contains("TOWERLINK_TEST_BROKER"), "{line}");
    assert!(!stderr.contains("panicked"), "no panic, one line: {stderr}");
    Ok(())
}

#[test]
fn the_machines_broker_is_there() {
    // With the broker CI starts, `broker()` returns its address and a subscriber connects.
    let (host, port) = broker();
    assert!(towerlink_e2e::broker_reachable(&host, port).is_ok());
    assert!(Subscriber::connect("towerlink/v1/missing-broker-probe/#").is_ok());
}

#[test]
#[ignore = "the child half of a_missing_broker_stops_the_run_with_one_line_naming_the_fix"]
fn child_connects_to_the_broker() {
    let _ = Subscriber::connect("towerlink/v1/x/#");
    panic!("broker() should have stopped the process before this line");
}
