//! Tests of [`Pipeline`] driven by source events, as the sources deliver them.

use super::*;
use crate::feed::{CapturePart, EventState, LiftDirection, LiftDoor, LiftMode};
use crate::sources::{CarStatus, LiftReading};
use std::sync::atomic::Ordering;
use towerlink_firmware::protocol::{ChannelInfo, FaultCode, Quantity};

const T0: UnixMillis = 1_700_000_000_000;

/// A pipeline over one serial node (`panel-0`) and one I2C device (`strain-roof`).
fn pipeline() -> Pipeline {
    let config = crate::config::Config::parse(
        "[gateway]\nid = \"gw\"\n[mqtt]\nurl = \"mqtt://127.0.0.1\"\n[store]\npath = \"/tmp/x\"\n\
         [[node]]\nid = \"panel-0\"\nport = \"/dev/null\"\nwindow = \"1s\"\n\
         [[i2c]]\nid = \"strain-roof\"\nbus = \"sim\"\nchip = \"nau7802\"\nwindow = \"1s\"\n\
         [[lift]]\nid = \"lift-1\"\nport = \"/dev/ttyS9\"\nunit = 1\nprofile = \"generic\"\ntop_floor = 10\nbottom_floor = -1\nrated_speed_mm_s = 1750\n",
        "t",
    )
    .expect("test config");
    Pipeline::new(
        config.devices(),
        config.health.node_silent_after,
        T0,
        Arc::new(PipelineStats::default()),
    )
}

fn strain() -> Vec<ChannelInfo> {
    vec![ChannelInfo {
        id: 0,
        quantity: Quantity::Strain,
        rate_hz: 10,
    }]
}

fn samples(dev: DeviceKey, t0: f64, values: &[f32]) -> SourceEvent {
    SourceEvent::Samples {
        dev,
        channel: 0,
        t0,
        period_ms: 100.0,
        values: values.to_vec(),
    }
}

/// Closed windows as (device, mean of channel `strain`).
fn windows(out: &[Message]) -> Vec<(String, f32)> {
    out.iter()
        .filter_map(|m| match m {
            Message::Data { dev, ch, .. } => Some((dev.clone(), ch.get("strain")?.mean)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_node_and_an_i2c_device_with_the_same_index_stay_apart() {
    let mut p = pipeline();
    let mut out = Vec::new();
    let t = T0 as f64;
    for key in [DeviceKey::Node(0), DeviceKey::I2c(0)] {
        p.handle(
            SourceEvent::Hello {
                dev: key,
                fw: (1, 0, 0),
                channels: strain(),
            },
            T0,
            &mut out,
        );
    }
    p.handle(samples(DeviceKey::Node(0), t, &[1.0, 1.0]), T0, &mut out);
    p.handle(samples(DeviceKey::I2c(0), t, &[5.0, 5.0]), T0, &mut out);
    // An index no source was given is ignored, not someone else's.
    p.handle(samples(DeviceKey::I2c(1), t, &[9.0]), T0, &mut out);
    p.tick(T0 + 5_000, &mut out);
    let mut got = windows(&out);
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        vec![("panel-0".to_owned(), 1.0), ("strain-roof".to_owned(), 5.0)]
    );
    let dir = p.directory();
    assert!(dir.channels("panel-0").is_some() && dir.channels("strain-roof").is_some());
}

const NODE: DeviceKey = DeviceKey::Node(0);

fn hello(dev: DeviceKey, channels: Vec<ChannelInfo>) -> SourceEvent {
    SourceEvent::Hello {
        dev,
        fw: (1, 0, 0),
        channels,
    }
}

fn channel(id: u8, quantity: Quantity) -> ChannelInfo {
    ChannelInfo {
        id,
        quantity,
        rate_hz: 10,
    }
}

/// Events as (device, name, state, channel).
fn events(out: &[Message]) -> Vec<(String, String, EventState, Option<String>)> {
    out.iter()
        .filter_map(|m| match m {
            Message::Event { dev, event } => Some((
                dev.clone(),
                event.event.to_owned(),
                event.state,
                event.ch.clone(),
            )),
            _ => None,
        })
        .collect()
}

#[test]
fn hello_names_the_channels_publishes_them_and_a_new_layout_closes_the_old_windows() {
    let mut p = pipeline();
    let mut out = Vec::new();
    p.handle(
        hello(
            NODE,
            vec![channel(0, Quantity::Strain), channel(1, Quantity::Strain)],
        ),
        T0,
        &mut out,
    );
    let names: Vec<String> = p
        .directory()
        .channels("panel-0")
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["strain_0", "strain_1"]);
    p.handle(
        samples(NODE, T0 as f64 + 100.0, &[2.0, 4.0]),
        T0 + 200,
        &mut out,
    );
    assert!(windows(&out).is_empty(), "a window closed early: {out:?}");
    // The same layout again changes nothing; another one closes the open window at once.
    p.handle(
        hello(
            NODE,
            vec![channel(0, Quantity::Strain), channel(1, Quantity::Strain)],
        ),
        T0 + 300,
        &mut out,
    );
    assert!(out.is_empty(), "{out:?}");
    p.handle(
        hello(NODE, vec![channel(0, Quantity::Strain)]),
        T0 + 400,
        &mut out,
    );
    let closed: Vec<_> = out
        .iter()
        .filter_map(|m| match m {
            Message::Data { ch, .. } => ch.get("strain_0").map(|w| (w.n, w.mean)),
            _ => None,
        })
        .collect();
    assert_eq!(closed, [(2, 3.0)]);
    let names: Vec<String> = p
        .directory()
        .channels("panel-0")
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["strain"]);
}

#[test]
fn samples_before_the_hello_are_held_then_windowed_and_unknown_channels_are_counted() {
    let stats = Arc::new(PipelineStats::default());
    let mut p = pipeline();
    p.stats = stats.clone();
    let mut out = Vec::new();
    let t = T0 as f64;
    p.handle(samples(NODE, t, &[1.0, 3.0]), T0, &mut out);
    assert!(out.is_empty());
    p.handle(hello(NODE, strain()), T0, &mut out);
    // Channel 7 was never announced.
    p.handle(
        SourceEvent::Samples {
            dev: NODE,
            channel: 7,
            t0: t,
            period_ms: 100.0,
            values: vec![1.0; 5],
        },
        T0,
        &mut out,
    );
    p.tick(T0 + 5_000, &mut out);
    assert_eq!(windows(&out), [("panel-0".to_owned(), 2.0)]);
    assert_eq!(stats.unknown_channel_samples.load(Ordering::Relaxed), 5);
    // Beyond the hold buffer, samples before a Hello are counted, not kept.
    let mut q = pipeline();
    q.stats = stats.clone();
    for _ in 0..MAX_EVENTS_BEFORE_HELLO + 3 {
        q.handle(samples(DeviceKey::I2c(0), t, &[1.0, 1.0]), T0, &mut out);
    }
    assert_eq!(
        stats.unknown_channel_samples.load(Ordering::Relaxed),
        5 + 3 * 2
    );
}

#[test]
fn a_fault_is_held_until_the_hello_then_raised_on_its_channel() {
    let mut p = pipeline();
    let mut out = Vec::new();
    p.handle(
        SourceEvent::Fault {
            dev: NODE,
            channel: 0,
            code: FaultCode::BusError,
            ts: T0,
        },
        T0,
        &mut out,
    );
    assert!(out.is_empty(), "{out:?}");
    p.handle(hello(NODE, strain()), T0 + 10, &mut out);
    assert_eq!(
        events(&out),
        [(
            "panel-0".to_owned(),
            "sensor_fault".to_owned(),
            EventState::Active,
            Some("strain".to_owned())
        )]
    );
}

#[test]
fn lost_frames_and_a_silent_device_coming_back_are_events_of_that_device() {
    let mut p = pipeline();
    let mut out = Vec::new();
    p.handle(
        SourceEvent::FramesLost {
            dev: DeviceKey::I2c(0),
            count: 4,
            ts: T0,
        },
        T0,
        &mut out,
    );
    assert_eq!(
        events(&out),
        [(
            "strain-roof".to_owned(),
            "frames_lost".to_owned(),
            EventState::Active,
            None
        )]
    );
    out.clear();
    // Silent past node_silent_after (default): offline; heard again: cleared.
    p.tick(T0 + 3_600_000, &mut out);
    assert!(events(&out)
        .iter()
        .any(|e| e.0 == "panel-0" && e.1 == "sensor_offline" && e.2 == EventState::Active));
    out.clear();
    p.handle(
        SourceEvent::Alive {
            dev: NODE,
            ts: T0 + 3_600_100,
        },
        T0 + 3_600_100,
        &mut out,
    );
    assert_eq!(
        events(&out),
        [(
            "panel-0".to_owned(),
            "sensor_offline".to_owned(),
            EventState::Cleared,
            None
        )]
    );
}

#[test]
fn a_lift_reading_is_published_in_the_feeds_terms_and_failed_polls_raise_comm_lost() {
    let mut p = pipeline();
    let mut out = Vec::new();
    let reading = LiftReading {
        status: CarStatus {
            mode: LiftMode::Normal,
            floor: 4,
            direction: LiftDirection::Up,
            door: LiftDoor::Closed,
            running: true,
            door_zone: false,
            occupied: true,
            speed_mm_s: 900,
            load_pct: 30,
            position_mm: 12_345,
            fault_code: 0,
            run_count: 77,
            door_cycles: 88,
        },
        main_power_ok: true,
        safety_closed: true,
        door_lock_closed: true,
        alarm_button: false,
        overload: false,
    };
    p.handle(
        SourceEvent::LiftReading {
            lift: 0,
            ts: T0,
            reading,
        },
        T0,
        &mut out,
    );
    let Some(Message::LiftStatus { dev, ts, lift, .. }) = out.first() else {
        panic!("no lift status: {out:?}");
    };
    assert_eq!((dev.as_str(), *ts), ("lift-1", T0));
    assert_eq!(
        serde_json::to_value(lift).ok(),
        serde_json::to_value(lift_rules::feed_status(&reading.status)).ok()
    );
    assert_eq!(
        (lift.floor, lift.position_mm, lift.run_count),
        (4, 12_345, 77)
    );
    out.clear();
    for i in 1..=lift_rules::COMM_LOST_AFTER_POLLS as i64 {
        p.handle(
            SourceEvent::LiftPollFailed {
                lift: 0,
                ts: T0 + i * 250,
            },
            T0 + i * 250,
            &mut out,
        );
    }
    assert_eq!(
        events(&out),
        [(
            "lift-1".to_owned(),
            "comm_lost".to_owned(),
            EventState::Active,
            None
        )]
    );
    // A lift no source was started for is ignored.
    p.handle(
        SourceEvent::LiftPollFailed { lift: 9, ts: T0 },
        T0,
        &mut out,
    );
}

#[test]
fn a_gateway_zero_says_why_it_was_not_taken_and_takes_the_filtered_value() {
    let mut p = pipeline();
    let zero = |p: &mut Pipeline, dev: &str, ch: &str| {
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        p.request(PipelineRequest::Zero {
            dev: dev.into(),
            ch: ch.into(),
            reply: tx,
        });
        rx.try_recv().expect("answered at once")
    };
    assert_eq!(
        zero(&mut p, "nobody", "strain"),
        Err(ZeroError::UnknownDevice("nobody".into()))
    );
    assert!(matches!(
        zero(&mut p, "strain-roof", "strain"),
        Err(ZeroError::UnknownChannel { .. })
    ));
    let mut out = Vec::new();
    p.handle(hello(DeviceKey::I2c(0), strain()), T0, &mut out);
    let no_reading = zero(&mut p, "strain-roof", "strain");
    assert_eq!(
        no_reading.map_err(|e| e.to_string()),
        Err("strain-roof/strain has no reading yet to take as zero".to_owned())
    );
    p.handle(samples(DeviceKey::I2c(0), T0 as f64, &[2.5]), T0, &mut out);
    assert_eq!(zero(&mut p, "strain-roof", "strain"), Ok(2.5));
}

fn hello_strain(p: &mut Pipeline, now: UnixMillis, out: &mut Vec<Message>) {
    p.handle(
        SourceEvent::Hello {
            dev: DeviceKey::Node(0),
            fw: (1, 0, 0),
            channels: strain(),
        },
        now,
        out,
    );
}

#[test]
fn a_window_says_how_many_samples_the_rate_promised() {
    let mut p = pipeline();
    let mut out = Vec::new();
    hello_strain(&mut p, T0, &mut out);
    // 10 Hz over a 1 s window: 10 expected; 7 came.
    p.handle(
        samples(DeviceKey::Node(0), T0 as f64, &[1.0; 7]),
        T0,
        &mut out,
    );
    p.tick(T0 + 5_000, &mut out);
    let ch = out
        .iter()
        .find_map(|m| match m {
            Message::Data { ch, .. } => ch.get("strain").cloned(),
            _ => None,
        })
        .expect("a window");
    assert_eq!((ch.n, ch.expected), (7, 10));
}

/// Time by hand: the test steps the wall clock.
struct Manual(Arc<std::sync::Mutex<(i64, i64)>>);

impl TimeSource for Manual {
    fn wall_ms(&self) -> i64 {
        self.0.lock().map(|t| t.0).unwrap_or(0)
    }
    fn mono_ms(&self) -> i64 {
        self.0.lock().map(|t| t.1).unwrap_or(0)
    }
}

#[test]
fn a_clock_step_is_found_counted_and_closes_every_window() {
    let time = Arc::new(std::sync::Mutex::new((T0 + 300, 0)));
    let status = Arc::new(ClockStatus::default());
    let mut watch = ClockWatch::new(Box::new(Manual(time.clone())), status.clone(), false);
    assert_eq!(watch.check(), None);
    // With the recovery hold of a restart: an hour back must not hold the windows an hour.
    let mut p = pipeline().with_recovery_hold(2_000);
    let mut out = Vec::new();
    hello_strain(&mut p, T0, &mut out);
    p.handle(
        samples(DeviceKey::Node(0), T0 as f64, &[1.0; 8]),
        T0 + 750,
        &mut out,
    );
    // Slewing is no step; an hour back is.
    *time.lock().expect("time") = (T0 + 700, 400);
    assert_eq!(watch.check(), None);
    *time.lock().expect("time") = (T0 + 1_050 - 3_600_000, 500);
    let step = watch.check().expect("a step");
    assert_eq!(step, -3_599_750);
    assert_eq!(status.steps(), 1);
    let target = watch.now();
    out.clear();
    p.clock_step(step, target, &mut out);
    // The open window went out at once, then the event.
    let Message::Data { start, end, ch, .. } = &out[0] else {
        panic!("{out:?}")
    };
    // ... ending at the step (the old timeline's now), with `expected` over that span.
    assert_eq!(
        (*start, *end, ch["strain"].n, ch["strain"].expected),
        (T0, T0 + 800, 8, 8)
    );
    let Message::Event { dev, event } = &out[1] else {
        panic!("{out:?}")
    };
    assert_eq!(
        (dev.as_str(), event.event, event.ts),
        ("gateway", "clock_step", target)
    );
    assert_eq!(
        event.detail,
        Some(serde_json::json!({"step_ms": -3_599_750}))
    );
    // Nothing dated before the target is taken; the first window starts at it.
    out.clear();
    let t = target as f64;
    p.handle(
        samples(DeviceKey::Node(0), t - 300.0, &[2.0; 6]),
        target + 300,
        &mut out,
    );
    // No sensor_offline for an hour that did not pass: the health timers moved too.
    p.tick(target + 2_960, &mut out);
    assert!(
        out.iter().all(|m| !matches!(m, Message::Event { .. })),
        "{out:?}"
    );
    let got: Vec<_> = out
        .iter()
        .filter_map(|m| match m {
            Message::Data { start, ch, .. } => Some((*start, ch["strain"].n)),
            _ => None,
        })
        .collect();
    assert_eq!(got[0], (target, 3), "{got:?}");
    assert!(got.iter().all(|(s, _)| *s >= target));
    assert_eq!(p.stats.late_samples.load(Ordering::Relaxed), 3);
}

#[test]
fn the_recovery_hold_keeps_windows_open_for_buffered_samples() {
    let mut p = pipeline().with_recovery_hold(2_000);
    let mut out = Vec::new();
    hello_strain(&mut p, T0, &mut out);
    // The first tick comes before the buffered samples (of 10 s ago) are decoded.
    p.tick(T0 + 100, &mut out);
    p.handle(
        samples(DeviceKey::Node(0), (T0 - 10_000) as f64, &[1.0; 5]),
        T0 + 200,
        &mut out,
    );
    p.tick(T0 + 2_500, &mut out);
    assert_eq!(windows(&out), vec![("panel-0".to_owned(), 1.0)]);
    assert_eq!(p.stats.late_samples.load(Ordering::Relaxed), 0);
}

/// A pipeline over one node whose strain channel alarms at 100 and captures 2 s / 3 s, and
/// whose temperature channel reports by exception.
fn capturing_pipeline() -> Pipeline {
    let config = crate::config::Config::parse(
        "[gateway]\nid = \"gw\"\n[mqtt]\nurl = \"mqtt://127.0.0.1\"\n[store]\npath = \"/tmp/x\"\n\
         [[node]]\nid = \"panel-0\"\nport = \"/dev/null\"\nwindow = \"1s\"\n\
         [node.channels.strain]\nspike = false\nalarm = { major = 100.0 }\n\
         capture = { before = \"2s\", after = \"3s\", max = \"10s\" }\n\
         [node.channels.temperature]\ndeadband = 0.5\nmin_interval = \"2s\"\n",
        "t",
    )
    .expect("test config");
    Pipeline::new(
        config.devices(),
        config.health.node_silent_after,
        T0,
        Arc::new(PipelineStats::default()),
    )
}

#[test]
fn an_alarm_sends_the_raw_capture_naming_its_event_seq() {
    let mut p = capturing_pipeline();
    let mut out = Vec::new();
    p.handle(hello(NODE, strain()), T0, &mut out);
    let t = T0 as f64;
    // 10 Hz: 5 s of 50.0, then 120.0 (the alarm at 5.0 s), for 10 s in batches of 10.
    let raw = |i: usize| {
        if i < 50 {
            50.0
        } else {
            120.0 + i as f32 / 100.0
        }
    };
    for batch in 0..15 {
        let values: Vec<f32> = (batch * 10..batch * 10 + 10).map(raw).collect();
        p.handle(
            samples(NODE, t + batch as f64 * 1000.0, &values),
            T0,
            &mut out,
        );
    }
    let mut seq = 100;
    let mut queued = Vec::new();
    for mut m in out.drain(..) {
        if !p.prepare(&mut m) {
            continue;
        }
        seq += 1;
        p.queued(&m, Some(seq));
        queued.push((seq, m));
    }
    let event_seq = queued
        .iter()
        .find(|(_, m)| matches!(m, Message::Event { event, .. } if event.event == "threshold"))
        .map(|(s, _)| *s)
        .expect("the alarm");
    let parts: Vec<&CapturePart> = queued
        .iter()
        .filter_map(|(_, m)| match m {
            Message::Capture { part, .. } => Some(&**part),
            _ => None,
        })
        .collect();
    assert_eq!(parts.len(), 1, "{parts:?}");
    let part = parts[0];
    assert_eq!(part.trigger.seq, Some(event_seq));
    assert_eq!(part.trigger.ts, T0 + 5_000);
    assert_eq!(part.t0, t + 3_000.0, "2 s before");
    assert_eq!(part.period_us, 100_000);
    let expected: Vec<f32> = (30..=80).map(raw).collect();
    assert_eq!(
        part.values, expected,
        "the node's values, 2 s before to 3 s after"
    );
    assert_eq!(p.stats.captures.load(Ordering::Relaxed), 1);
    assert!(
        p.trigger_seqs.is_empty(),
        "the reference went with the last part"
    );
}

#[test]
fn a_clean_stop_sends_running_captures_and_pending_deadband_statistics() {
    let mut p = capturing_pipeline();
    let mut out = Vec::new();
    p.handle(
        hello(
            NODE,
            vec![
                channel(0, Quantity::Strain),
                channel(1, Quantity::Temperature),
            ],
        ),
        T0,
        &mut out,
    );
    let t = T0 as f64;
    let temperature = |t0: f64, values: &[f32]| SourceEvent::Samples {
        dev: NODE,
        channel: 1,
        t0,
        period_ms: 100.0,
        values: values.to_vec(),
    };
    // Moving by 1.0 on every sample for 3 s: the first value, then one report per 2 s.
    let moving: Vec<f32> = (0..30).map(|i| 20.0 + i as f32).collect();
    p.handle(temperature(t, &moving), T0, &mut out);
    let reports = |out: &[Message]| {
        out.iter()
            .filter_map(|m| match m {
                Message::Data { ch, .. } => ch.get("temperature").map(|w| w.n),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(reports(&out), vec![1, 20]);
    p.handle(samples(NODE, t, &[150.0; 10]), T0, &mut out);
    out.clear();
    p.flush(&mut out);
    assert_eq!(reports(&out), vec![9], "the pending statistics");
    let capture = out
        .iter()
        .find_map(|m| match m {
            Message::Capture { part, .. } => Some(part.values.len()),
            _ => None,
        })
        .expect("the running capture");
    assert_eq!(capture, 10);
}

/// An `Alive` stamped by its source on the timeline before a clock step (the source read the
/// clock before the step, the pipeline handles it after) counts as heard when handled: it
/// neither blinds the silence rule for the step's size nor raises a false `sensor_offline`.
#[test]
fn an_alive_stamped_before_a_clock_step_is_heard_when_handled() {
    let silent = crate::config::Config::parse(
        "[gateway]\nid = \"gw\"\n[mqtt]\nurl = \"mqtt://127.0.0.1\"\n[store]\npath = \"/tmp/x\"\n\
         [[node]]\nid = \"panel-0\"\nport = \"/dev/null\"\nwindow = \"1s\"\n",
        "t",
    )
    .expect("test config")
    .health
    .node_silent_after
    .as_millis() as i64;
    let mut p = pipeline();
    let mut out = Vec::new();
    let back = -3_600_000;
    let target = T0 + 1_000 + back;
    p.handle(SourceEvent::Alive { dev: NODE, ts: T0 }, T0, &mut out);
    p.clock_step(back, target, &mut out);
    // Stamped an instant before the step, handled just after it.
    p.handle(
        SourceEvent::Alive {
            dev: NODE,
            ts: T0 + 1_000,
        },
        target + 10,
        &mut out,
    );
    out.clear();
    p.tick(target + silent - 100, &mut out);
    assert!(
        !events(&out)
            .iter()
            .any(|e| e.0 == "panel-0" && e.1 == "sensor_offline"),
        "{out:?}"
    );
    // Really silent from then on: offline after node_silent_after, not an hour later.
    p.tick(target + 10 + silent, &mut out);
    assert!(
        events(&out)
            .iter()
            .any(|e| e.0 == "panel-0" && e.1 == "sensor_offline" && e.2 == EventState::Active),
        "{out:?}"
    );
}
