//! The README's first command, `towerlink-sim demo`, shows a live feed: the embedded broker, the
//! simulated tower and the agent in one process, so the agent must speak the embedded broker's
//! protocol (it dropped every connection when the agent's default became MQTT 5). Within its
//! first minute it tells its story: a legend, a panel tilt alarm with the capture of its raw
//! waveform, a lift event; at the stop, no live source is reported offline and no window is
//! stamped in the future.

use std::process::Command;

use towerlink_e2e::binary;

/// `HH:MM:SS.mmm` -> ms of the day.
fn ms_of_day(t: &str) -> Option<i64> {
    let mut it = t.split(':');
    let (h, m, s) = (it.next()?, it.next()?, it.next()?);
    let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
    let s: f64 = s.parse().ok()?;
    Some((h * 60 + m) * 60_000 + (s * 1000.0).round() as i64)
}

/// The `#N` after the device on a feed line.
fn seq_of(line: &str) -> Option<&str> {
    line.split_whitespace().find(|w| w.starts_with('#'))
}

#[test]
fn the_demo_shows_panel_windows_and_lift_status_through_its_own_broker() -> anyhow::Result<()> {
    let sim = binary("towerlink-sim", "towerlink-sim")?;
    let out = Command::new(sim)
        .args(["demo", "--duration", "40s"])
        .env("NO_COLOR", "1")
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed: {stderr}");
    assert!(
        !stderr.contains("MQTT connection failed"),
        "the agent could not talk to the demo broker: {stderr}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let data = lines
        .iter()
        .filter(|l| l.contains(" data ") && !l.contains("legend"))
        .count();
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" data ") && l.contains("panel-")),
        "no panel window in the feed:\n{stdout}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" lift ") && l.contains("lift-") && l.contains(" floor ")),
        "no lift status in the feed:\n{stdout}"
    );
    assert!(data >= 5, "only {data} data lines:\n{stdout}");

    // The legend explains #N and the times, before the feed.
    let legend = lines
        .iter()
        .position(|l| l.contains("legend") && l.contains("#N") && l.contains("seq"))
        .unwrap_or_else(|| panic!("no legend line:\n{stdout}"));
    assert!(
        lines[legend].contains("end of its window"),
        "{}",
        lines[legend]
    );
    let first_feed = lines
        .iter()
        .position(|l| l.contains(" data ") && l.contains("panel-"))
        .unwrap_or(0);
    assert!(
        legend < first_feed,
        "the legend comes after the feed started"
    );

    // A panel tilt alarm, and the capture of its raw waveform naming it.
    let alarm = lines
        .iter()
        .find(|l| {
            l.contains(" EVENT ")
                && l.contains("panel-")
                && l.contains("threshold")
                && l.contains(" active")
                && l.contains("tilt_x")
        })
        .unwrap_or_else(|| panic!("no panel tilt alarm:\n{stdout}"));
    let alarm_seq = seq_of(alarm).unwrap_or_else(|| panic!("no #N in {alarm}"));
    let dev = alarm.split_whitespace().nth(2).unwrap_or("?");
    let capture = lines
        .iter()
        .find(|l| l.contains(" CAPTURE ") && l.contains(dev))
        .unwrap_or_else(|| panic!("no capture of {dev}'s alarm:\n{stdout}"));
    assert!(
        capture.contains("tilt_x")
            && capture.contains("(trigger threshold")
            && capture.ends_with(&format!("{alarm_seq})")),
        "the capture does not name the alarm {alarm_seq}: {capture}"
    );
    // A lift event.
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" EVENT ") && l.contains("lift-")),
        "no lift event:\n{stdout}"
    );

    // At the stop: the last health does not report the live sources offline...
    let health = lines
        .iter()
        .rev()
        .find(|l| l.contains(" health "))
        .unwrap_or_else(|| panic!("no health line:\n{stdout}"));
    assert!(
        !health.contains(":offline"),
        "the last health reports live sources offline: {health}"
    );
    // ...and no window ends after the agent stopped.
    let stopped = lines
        .iter()
        .find_map(|l| l.strip_prefix("towerlink demo: agent stopped at "))
        .and_then(ms_of_day)
        .unwrap_or_else(|| panic!("no stop time:\n{stdout}"));
    for l in lines
        .iter()
        .filter(|l| l.contains(" data ") && l.contains("panel-"))
    {
        let end = l.split_whitespace().next().and_then(ms_of_day);
        // (A run across midnight UTC wraps: then nothing is checked.)
        if let Some(end) = end.filter(|e| stopped - e < 3_600_000) {
            assert!(
                end <= stopped,
                "a window ends after the agent stopped at {stopped} ms of the day: {l}"
            );
        }
    }
    Ok(())
}
