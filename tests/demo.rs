//! The README's first command, `towerlink-sim demo`, shows a live feed: the embedded broker, the
//! simulated tower and the agent in one process, so the agent must speak the embedded broker's
//! protocol (it dropped every connection when the agent's default became MQTT 5). Within its
//! first minute it tells its story: a legend, a panel tilt alarm with the capture of its raw
//! waveform, a lift event; at the stop, no live source is reported offline and no window is
//! stamped in the future. It does so on the compact path (its default: windows in zstd
//! batches, each printed as a window alone would be) and with `--json-windows` alike.

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

/// The demo's summary at the stop: (batches, windows in them, windows alone).
fn received(stdout: &str) -> Option<(u64, u64, u64)> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("towerlink demo: received "))?;
    let n: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    match n[..] {
        [b, w, a] => Some((b, w, a)),
        _ => None,
    }
}

#[test]
fn the_demo_shows_its_story_on_the_compact_path_by_default() -> anyhow::Result<()> {
    let stdout = demo_story(&[])?;
    let (batches, batched, alone) =
        received(&stdout).unwrap_or_else(|| panic!("no summary:\n{stdout}"));
    assert!(
        batches >= 2 && batched >= 5 && alone == 0,
        "not the compact path: {batches} batches carrying {batched} windows, {alone} alone"
    );
    Ok(())
}

#[test]
fn the_demo_with_json_windows_reads_the_same() -> anyhow::Result<()> {
    let stdout = demo_story(&["--json-windows"])?;
    let (batches, batched, alone) =
        received(&stdout).unwrap_or_else(|| panic!("no summary:\n{stdout}"));
    assert!(
        batches == 0 && batched == 0 && alone >= 5,
        "not per-window JSON: {batches} batches carrying {batched} windows, {alone} alone"
    );
    Ok(())
}

/// Runs the demo 40 s with `extra` arguments, checks the story its feed tells, and returns
/// its stdout.
fn demo_story(extra: &[&str]) -> anyhow::Result<String> {
    let sim = binary("towerlink-sim", "towerlink-sim")?;
    let out = Command::new(sim)
        .args(["demo", "--duration", "40s"])
        .args(extra)
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
    // Every window line reads as one: `HH:MM:SS.mmm  data    panel-… #N  <ch> <mean> <u>
    // (n=… sd=…)…`, whichever way it travelled.
    for l in lines
        .iter()
        .filter(|l| l.contains(" data ") && l.contains("panel-"))
    {
        let words: Vec<&str> = l.split_whitespace().collect();
        assert!(
            words.len() >= 6
                && ms_of_day(words[0]).is_some()
                && words[1] == "data"
                && words[3].starts_with('#')
                && l.contains("(n="),
            "not a window line: {l}"
        );
    }
    Ok(stdout.into_owned())
}
