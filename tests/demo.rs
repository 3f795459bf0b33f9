//! The README's first command, `towerlink-sim demo`, shows a live feed: the embedded broker, the
//! simulated tower and the agent in one process, so the agent must speak the embedded broker's
//! protocol (it dropped every connection when the agent's default became MQTT 5).

use std::process::Command;

use towerlink_e2e::binary;

#[test]
fn the_demo_shows_panel_windows_and_lift_status_through_its_own_broker() -> anyhow::Result<()> {
    let sim = binary("towerlink-sim", "towerlink-sim")?;
    let out = Command::new(sim)
        .args(["demo", "--duration", "25s"])
        .env("NO_COLOR", "1")
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed: {stderr}");
    assert!(
        !stderr.contains("MQTT connection failed"),
        "the agent could not talk to the demo broker: {stderr}"
    );
    let data = stdout.lines().filter(|l| l.contains(" data ")).count();
    assert!(
        stdout
            .lines()
            .any(|l| l.contains(" data ") && l.contains("panel-")),
        "no panel window in the feed:\n{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.contains(" lift ") && l.contains("lift-") && l.contains(" floor ")),
        "no lift status in the feed:\n{stdout}"
    );
    assert!(data >= 5, "only {data} data lines:\n{stdout}");
    Ok(())
}
