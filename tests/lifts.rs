//! Lifts end to end: simulated lift controllers on a Modbus RTU bus (a pseudo-terminal), the
//! agent as its own process, a real MQTT broker, and a subscriber that checks what the
//! platform receives: every event of the spec's table going active and cleared with its
//! timing, the status following trips floor by floor, and a noisy bus with a silent lift.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use serde_json::Value;
use towerlink_e2e::{unique_gw, write_config, AgentProcess, Received, Subscriber};
use towerlink_sim::lift::script::mode_from_u16;
use towerlink_sim::lift::{
    agent_lift_sections, Action, BusOptions, CommFault, Fault, LiftBus, LiftSpec,
};

const BAUD: u32 = 115_200;

fn lift(id: &str, unit: u8) -> LiftSpec {
    LiftSpec {
        id: id.to_owned(),
        unit,
        bottom_floor: -2,
        top_floor: 10,
        rated_speed_mm_s: 1750,
        auto_calls: false,
    }
}

fn start(
    dir: &std::path::Path,
    lifts: Vec<LiftSpec>,
    lift_extra: &str,
) -> anyhow::Result<(LiftBus, Subscriber, AgentProcess, String)> {
    let mut options = BusOptions::new(7)?;
    options.baud = BAUD;
    let bus = LiftBus::spawn(&dir.join("ports/ttyRS485-0"), lifts, options)?;
    let gw = unique_gw("e2e-lifts");
    let sub = Subscriber::connect(&format!("towerlink/v1/{gw}/#"))?;
    let config = write_config(
        dir,
        &gw,
        &format!(
            "[health]\ninterval = \"1s\"\n{}",
            agent_lift_sections(&bus, BAUD, lift_extra)
        ),
    )?;
    let agent = AgentProcess::start(&config)?;
    Ok((bus, sub, agent, gw))
}

fn events_of<'a>(m: &'a [Received], dev: &str) -> Vec<&'a Received> {
    m.iter()
        .filter(|r| r.topic.ends_with(&format!("/event/{dev}")))
        .collect()
}

fn statuses<'a>(m: &'a [Received], dev: &str) -> Vec<&'a Value> {
    m.iter()
        .filter(|r| r.topic.ends_with(&format!("/data/{dev}")))
        .map(|r| &r.json["lift"])
        .collect()
}

fn millis(v: &Value) -> anyhow::Result<i64> {
    let s = v.as_str().context("time is not a string")?;
    let t = humantime_parse(s)?;
    Ok(t)
}

/// RFC 3339 with milliseconds -> ms since the epoch (the feed's only time format).
fn humantime_parse(s: &str) -> anyhow::Result<i64> {
    // 2026-11-28T05:04:41.000Z
    let (date, time) = s.split_once('T').context("no T")?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, mo, da) = (d.next(), d.next(), d.next());
    let (Some(Ok(y)), Some(Ok(mo)), Some(Ok(da))) = (y, mo, da) else {
        anyhow::bail!("bad date {s}")
    };
    let time = time.trim_end_matches('Z');
    let mut t = time.split(':');
    let (h, mi, sec) = (t.next(), t.next(), t.next());
    let (Some(h), Some(mi), Some(sec)) = (h, mi, sec) else {
        anyhow::bail!("bad time {s}")
    };
    let (h, mi): (i64, i64) = (h.parse()?, mi.parse()?);
    let sec_ms = (sec.parse::<f64>()? * 1000.0).round() as i64;
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + da - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(((days * 24 + h) * 60 + mi) * 60_000 + sec_ms)
}

/// Waits for `event` of `dev` in `state` among messages after index `from`; returns it.
fn wait_event(
    sub: &Subscriber,
    dev: &str,
    event: &str,
    state: &str,
    from: usize,
    timeout: Duration,
) -> anyhow::Result<Received> {
    let find = |m: &[Received]| {
        m.iter()
            .skip(from)
            .find(|r| {
                r.topic.ends_with(&format!("/event/{dev}"))
                    && r.json["event"] == event
                    && r.json["state"] == state
            })
            .cloned()
    };
    sub.wait(timeout, &format!("{event} {state} on {dev}"), |m| {
        find(m).is_some()
    })?;
    find(&sub.all()).context("event vanished")
}

#[test]
fn every_lift_event_goes_active_and_cleared_with_its_timing() -> anyhow::Result<()> {
    // One paced lift bus at a time on the machine (see `exclusive`).
    let _bus = towerlink_e2e::exclusive("lift-bus")?;
    let dir = tempfile::tempdir()?;
    let (bus, sub, mut agent, _gw) = start(
        dir.path(),
        vec![lift("lift-e", 3)],
        "poll = \"100ms\"\ntrapped_after = \"2s\"\noutside_zone_after = \"1s\"\n",
    )?;
    sub.wait(Duration::from_secs(15), "the first lift status", |m| {
        !statuses(m, "lift-e").is_empty()
    })?;
    // A healthy parked lift raises nothing.
    ensure!(
        events_of(&sub.all(), "lift-e").is_empty(),
        "spurious events"
    );

    // Instant rules: (action on, action off, event, severity).
    let instant: Vec<(Action, Action, &str, &str)> = vec![
        (
            Action::Fault(Fault::DoorOpenWhileMoving, true),
            Action::Fault(Fault::DoorOpenWhileMoving, false),
            "door_open_while_moving",
            "critical",
        ),
        (
            Action::Fault(Fault::Overspeed, true),
            Action::Fault(Fault::Overspeed, false),
            "overspeed",
            "critical",
        ),
        (
            Action::Fault(Fault::Overtravel, true),
            Action::Fault(Fault::Overtravel, false),
            "overtravel",
            "critical",
        ),
        (
            Action::Fault(Fault::PowerFailure, true),
            Action::Fault(Fault::PowerFailure, false),
            "power_failure",
            "major",
        ),
        (
            Action::Fault(Fault::SafetyOpen, true),
            Action::Fault(Fault::SafetyOpen, false),
            "safety_circuit_open",
            "major",
        ),
        (
            Action::Fault(Fault::AlarmButton, true),
            Action::Fault(Fault::AlarmButton, false),
            "alarm_button",
            "major",
        ),
        (
            Action::Fault(Fault::Overload, true),
            Action::Fault(Fault::Overload, false),
            "overload",
            "minor",
        ),
        (
            Action::FaultCode(41),
            Action::FaultCode(0),
            "controller_fault",
            "major",
        ),
        (
            Action::Mode(mode_from_u16(3)),
            Action::Mode(None),
            "out_of_service",
            "minor",
        ),
    ];
    for (on, off, name, severity) in instant {
        let from = sub.all().len();
        let applied = Instant::now();
        bus.apply(3, on);
        let active = wait_event(&sub, "lift-e", name, "active", from, Duration::from_secs(5))?;
        // Published at once: within a few polls of the controller showing it.
        ensure!(
            active.at.duration_since(applied) < Duration::from_millis(1500),
            "{name} took {:?}",
            active.at.duration_since(applied)
        );
        ensure!(
            active.json["severity"] == severity,
            "{name}: {}",
            active.json
        );
        ensure!(active.json["seq"].is_u64() && active.json["v"] == 1);
        if name == "controller_fault" {
            ensure!(active.json["detail"]["code"] == 41, "{}", active.json);
        }
        let from = sub.all().len();
        bus.apply(3, off);
        let cleared = wait_event(
            &sub,
            "lift-e",
            name,
            "cleared",
            from,
            Duration::from_secs(5),
        )?;
        ensure!(
            cleared.json["since"] == active.json["since"],
            "{name}: cleared since {} != active since {}",
            cleared.json["since"],
            active.json["since"]
        );
    }

    // Timed rules: trapped between floors -> stopped_outside_door_zone after 1 s, then
    // trapped_passenger after 2 s, both measured from when the condition started.
    let from = sub.all().len();
    bus.apply(3, Action::Fault(Fault::Trapped, true));
    let outside = wait_event(
        &sub,
        "lift-e",
        "stopped_outside_door_zone",
        "active",
        from,
        Duration::from_secs(5),
    )?;
    let trapped = wait_event(
        &sub,
        "lift-e",
        "trapped_passenger",
        "active",
        from,
        Duration::from_secs(6),
    )?;
    for (ev, want) in [(&outside, 1000), (&trapped, 2000)] {
        let held = millis(&ev.json["ts"])? - millis(&ev.json["since"])?;
        // The pipeline checks timed rules every 100 ms.
        ensure!(
            (want..=want + 250).contains(&held),
            "{}: active after {held} ms, want {want} ms",
            ev.json["event"]
        );
    }
    ensure!(trapped.json["severity"] == "critical");
    ensure!(
        trapped.json["detail"]["door"] == "closed" && trapped.json["detail"]["door_zone"] == false
    );
    let from = sub.all().len();
    bus.apply(3, Action::Fault(Fault::Trapped, false));
    wait_event(
        &sub,
        "lift-e",
        "trapped_passenger",
        "cleared",
        from,
        Duration::from_secs(5),
    )?;
    wait_event(
        &sub,
        "lift-e",
        "stopped_outside_door_zone",
        "cleared",
        from,
        Duration::from_secs(5),
    )?;

    // comm_lost: 3 polls without an answer, cleared when answers return.
    let from = sub.all().len();
    bus.apply(3, Action::Comm(CommFault::Silent, 1.0));
    let lost = wait_event(
        &sub,
        "lift-e",
        "comm_lost",
        "active",
        from,
        Duration::from_secs(5),
    )?;
    ensure!(lost.json["detail"]["lost_polls"] == 3, "{}", lost.json);
    let from = sub.all().len();
    bus.apply(3, Action::Comm(CommFault::Silent, 0.0));
    // A lost lift is polled once a second.
    wait_event(
        &sub,
        "lift-e",
        "comm_lost",
        "cleared",
        from,
        Duration::from_secs(5),
    )?;

    // Every event transition of the table was seen, and nothing else.
    let names: std::collections::BTreeSet<String> = events_of(&sub.all(), "lift-e")
        .iter()
        .filter_map(|r| r.json["event"].as_str().map(str::to_owned))
        .collect();
    ensure!(names.len() == 12, "events seen: {names:?}");
    ensure!(
        bus.non_read_requests() == 0,
        "the agent sent a non-read request"
    );
    agent.stop()?;
    Ok(())
}

#[test]
fn the_lift_status_follows_trips_floor_by_floor() -> anyhow::Result<()> {
    // One paced lift bus at a time on the machine (see `exclusive`).
    let _bus = towerlink_e2e::exclusive("lift-bus")?;
    let dir = tempfile::tempdir()?;
    let (bus, sub, mut agent, _gw) = start(
        dir.path(),
        vec![lift("lift-t", 1)],
        "poll = \"100ms\"\nstatus_interval = \"1s\"\nstatus = \"floor\"\n",
    )?;
    sub.wait(Duration::from_secs(15), "the first lift status", |m| {
        !statuses(m, "lift-t").is_empty()
    })?;
    bus.apply(1, Action::Call(4));
    sub.wait(
        Duration::from_secs(20),
        "lift-t at floor 4, doors opening",
        |m| {
            statuses(m, "lift-t")
                .iter()
                .any(|s| s["floor"] == 4 && s["door"] != "closed")
        },
    )?;
    bus.apply(1, Action::Call(-1));
    sub.wait(
        Duration::from_secs(25),
        "lift-t back down at floor -1",
        |m| {
            statuses(m, "lift-t")
                .iter()
                .any(|s| s["floor"] == -1 && s["door"] != "closed")
        },
    )?;
    let all = sub.all();
    let st = statuses(&all, "lift-t");
    let mut floors: Vec<i64> = Vec::new();
    for s in &st {
        let f = s["floor"].as_i64().context("floor")?;
        if floors.last() != Some(&f) {
            floors.push(f);
        }
    }
    ensure!(
        floors == vec![-2, -1, 0, 1, 2, 3, 4, 3, 2, 1, 0, -1],
        "floors: {floors:?}"
    );
    // While travelling up the direction is up and the car runs with closed doors.
    ensure!(st
        .iter()
        .filter(|s| s["running"] == true)
        .all(|s| s["door"] == "closed" && s["direction"] != "stopped"));
    ensure!(
        st.iter().any(|s| s["direction"] == "up") && st.iter().any(|s| s["direction"] == "down")
    );
    let last = st.last().context("no status")?;
    ensure!(last["run_count"] == 2, "{last}");
    ensure!(last["door_cycles"].as_u64() >= Some(1), "{last}");
    // At least one status per status_interval (1 s) while idle.
    let times: Vec<Instant> = all
        .iter()
        .filter(|r| r.topic.ends_with("/data/lift-t"))
        .map(|r| r.at)
        .collect();
    let max_gap = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    ensure!(
        max_gap < Duration::from_millis(1500),
        "status gap {max_gap:?}"
    );
    ensure!(
        events_of(&all, "lift-t").is_empty(),
        "normal trips raised events"
    );
    ensure!(bus.non_read_requests() == 0);
    agent.stop()?;
    Ok(())
}

fn lift_health(sub: &Subscriber, dev: &str) -> Option<Value> {
    sub.on("/health")
        .last()
        .map(|m| m.json["sources"][dev].clone())
}

#[test]
fn a_noisy_bus_and_a_silent_lift_cost_counters_not_correctness() -> anyhow::Result<()> {
    // One paced lift bus at a time on the machine (see `exclusive`).
    let _bus = towerlink_e2e::exclusive("lift-bus")?;
    let dir = tempfile::tempdir()?;
    let (bus, sub, mut agent, _gw) = start(
        dir.path(),
        vec![lift("lift-a", 1), lift("lift-b", 2), lift("lift-c", 3)],
        "poll = \"100ms\"\ntimeout = \"200ms\"\n",
    )?;
    // lift-b: noise before half its answers, and truncated / corrupted / foreign answers.
    for (fault, rate) in [
        (CommFault::Noise, 0.5),
        (CommFault::Truncated, 0.1),
        (CommFault::CorruptCrc, 0.1),
        (CommFault::WrongUnit, 0.1),
    ] {
        bus.apply(2, Action::Comm(fault, rate));
    }
    // lift-c never answers.
    bus.apply(3, Action::Comm(CommFault::Silent, 1.0));
    wait_event(
        &sub,
        "lift-c",
        "comm_lost",
        "active",
        0,
        Duration::from_secs(15),
    )?;
    sub.wait(
        Duration::from_secs(30),
        "counters of every fault on lift-b",
        |_| {
            lift_health(&sub, "lift-b").is_some_and(|h| {
                h["crc_errors"].as_u64() > Some(0)
                    && h["modbus_truncated"].as_u64() > Some(0)
                    && h["foreign_frames"].as_u64() > Some(0)
                    && h["polls_ok"].as_u64() > Some(50)
            })
        },
    )?;
    // A lift in comm_lost is polled once a second without retry: over the next health
    // reports lift-c's timeouts grow by about one per second and its retries not at all
    // (polled at its own 100 ms with one retry it would time out ~5 times a second).
    let health_at = |sub: &Subscriber| -> Option<(i64, Value)> {
        let h = sub.on("/health").last()?.json.clone();
        Some((millis(&h["ts"]).ok()?, h["sources"]["lift-c"].clone()))
    };
    let (t1, c1) = health_at(&sub).context("no health with lift-c")?;
    let mut later = None;
    sub.wait(Duration::from_secs(20), "health 6 s later", |_| {
        later = health_at(&sub).filter(|(t, _)| t - t1 >= 6000);
        later.is_some()
    })?;
    let (t2, c2) = later.context("no later health")?;
    let count = |v: &Value, k: &str| v[k].as_u64().unwrap_or(u64::MAX);
    let timeouts = count(&c2, "modbus_timeouts").saturating_sub(count(&c1, "modbus_timeouts"));
    let per_s = timeouts as f64 * 1000.0 / (t2 - t1) as f64;
    ensure!(
        (0.6..=1.5).contains(&per_s),
        "lift-c in comm_lost timed out {per_s:.2} times per second (want about 1): {c1} -> {c2}"
    );
    ensure!(
        count(&c2, "modbus_retries") == count(&c1, "modbus_retries"),
        "lift-c in comm_lost was retried: {c1} -> {c2}"
    );
    let a = lift_health(&sub, "lift-a").context("no health for lift-a")?;
    let c = lift_health(&sub, "lift-c").context("no health for lift-c")?;
    // The silent lift costs timeouts...
    ensure!(c["modbus_timeouts"].as_u64() >= Some(3), "{c}");
    ensure!(c["polls_ok"] == 0 && c["status"] == "offline", "{c}");
    // ...and never delays another lift by more than its own timeout with one retry
    // (2 x (200 ms + request) on top of lift-a's 100 ms poll), never the whole bus.
    let gap = a["max_poll_gap_ms"].as_u64().context("gap")?;
    ensure!(gap <= 100 + 2 * 210 + 100, "lift-a delayed {gap} ms: {a}");
    ensure!(a["crc_errors"] == 0 && a["polls_lost"] == 0, "{a}");
    // Correctness: every status of the noisy lift is the lift's real state (parked at -2),
    // and the noise raised no event on it or its healthy neighbour.
    let all = sub.all();
    let b_status = statuses(&all, "lift-b");
    ensure!(!b_status.is_empty());
    ensure!(
        b_status
            .iter()
            .all(|s| s["floor"] == -2 && s["mode"] == "normal" && s["door"] == "closed"),
        "lift-b statuses: {b_status:?}"
    );
    ensure!(events_of(&all, "lift-a").is_empty() && events_of(&all, "lift-b").is_empty());
    ensure!(
        bus.non_read_requests() == 0,
        "the agent sent a non-read request"
    );
    agent.stop()?;
    Ok(())
}
