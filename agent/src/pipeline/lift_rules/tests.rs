//! Tests of [`super`].

use super::*;
use crate::feed::LiftDirection;

const T0: UnixMillis = 1_795_842_240_000;

fn settings() -> LiftRuleSettings {
    LiftRuleSettings {
        top_floor: 32,
        bottom_floor: -2,
        rated_speed_mm_s: 1750,
        trapped_after_ms: 30_000,
        outside_zone_after_ms: 5_000,
        status_interval_ms: 60_000,
        fault_names: [(41, "E41 safety circuit open".to_owned())]
            .into_iter()
            .collect(),
        status: LiftStatusMode::Floor,
    }
}

/// A lift parked at floor 3, doors closed, empty, all healthy.
fn idle() -> LiftReading {
    LiftReading {
        status: CarStatus {
            mode: LiftMode::Normal,
            floor: 3,
            direction: LiftDirection::Stopped,
            door: LiftDoor::Closed,
            running: false,
            door_zone: true,
            occupied: false,
            speed_mm_s: 0,
            load_pct: 0,
            position_mm: 15_000,
            fault_code: 0,
            run_count: 10,
            door_cycles: 20,
        },
        main_power_ok: true,
        safety_closed: true,
        door_lock_closed: true,
        alarm_button: false,
        overload: false,
    }
}

fn moving() -> LiftReading {
    let mut r = idle();
    r.status.running = true;
    r.status.direction = LiftDirection::Up;
    r.status.door_zone = false;
    r.status.speed_mm_s = 1500;
    r
}

/// (event name, state, ts, since) of the events in `out`.
fn events(out: &[Message]) -> Vec<(&'static str, EventState, UnixMillis, Option<UnixMillis>)> {
    out.iter()
        .filter_map(|m| match m {
            Message::Event { event, .. } => Some((event.event, event.state, event.ts, event.since)),
            _ => None,
        })
        .collect()
}

fn monitor() -> (LiftMonitor, Vec<Message>) {
    let mut m = LiftMonitor::new("lift-2", settings());
    let mut out = Vec::new();
    m.on_reading(T0, idle(), &mut out);
    assert!(
        events(&out).is_empty(),
        "a healthy idle lift raises nothing"
    );
    out.clear();
    (m, out)
}

/// Feeds `bad` at T0+1000, checks the event goes active at once, then `idle` clears it.
fn instant_rule(bad: LiftReading, name: &str, severity: Severity) -> Vec<Message> {
    let (mut m, mut out) = monitor();
    m.on_reading(T0 + 1000, bad, &mut out);
    let ev = events(&out);
    assert!(
        ev.contains(&(name, EventState::Active, T0 + 1000, Some(T0 + 1000))),
        "{name}: {ev:?}"
    );
    let sev = out.iter().find_map(|m| match m {
        Message::Event { event, .. } if event.event == name => Some(event.severity),
        _ => None,
    });
    assert_eq!(sev, Some(severity), "{name}");
    let active = out.clone();
    out.clear();
    // Still holding: nothing new.
    m.on_reading(T0 + 1250, bad, &mut out);
    assert!(!events(&out).iter().any(|e| e.0 == name), "{name} repeated");
    m.on_reading(T0 + 2000, idle(), &mut out);
    assert!(
        events(&out).contains(&(name, EventState::Cleared, T0 + 2000, Some(T0 + 1000))),
        "{name} not cleared: {:?}",
        events(&out)
    );
    active
}

#[test]
fn door_open_while_moving() {
    let mut r = moving();
    r.status.door = LiftDoor::Opening;
    instant_rule(r, "door_open_while_moving", Severity::Critical);
    let mut r = moving();
    r.door_lock_closed = false;
    instant_rule(r, "door_open_while_moving", Severity::Critical);
    // Doors open while stopped is normal service.
    let (mut m, mut out) = monitor();
    let mut r = idle();
    r.status.door = LiftDoor::Open;
    r.door_lock_closed = false;
    m.on_reading(T0 + 1000, r, &mut out);
    assert!(events(&out).is_empty());
}

#[test]
fn overspeed_is_above_115_percent_of_rated() {
    let mut r = moving();
    r.status.speed_mm_s = 2013; // 1750 * 1.15 = 2012.5
    let out = instant_rule(r, "overspeed", Severity::Critical);
    let detail = out.iter().find_map(|m| match m {
        Message::Event { event, .. } => event.detail.clone(),
        _ => None,
    });
    assert_eq!(detail.expect("detail")["limit_mm_s"], 2012);
    let (mut m, mut out) = monitor();
    let mut r = moving();
    r.status.speed_mm_s = 2012;
    m.on_reading(T0 + 1000, r, &mut out);
    assert!(events(&out).is_empty(), "2012 mm/s is within 115 %");
}

#[test]
fn overtravel_above_top_and_below_bottom() {
    let mut r = idle();
    r.status.floor = 33;
    instant_rule(r, "overtravel", Severity::Critical);
    r.status.floor = -3;
    instant_rule(r, "overtravel", Severity::Critical);
    let (mut m, mut out) = monitor();
    r.status.floor = 32;
    m.on_reading(T0 + 1000, r, &mut out);
    r.status.floor = -2;
    m.on_reading(T0 + 1100, r, &mut out);
    assert!(
        events(&out).is_empty(),
        "the end floors themselves are fine"
    );
}

#[test]
fn flag_rules() {
    let mut r = idle();
    r.main_power_ok = false;
    instant_rule(r, "power_failure", Severity::Major);
    let mut r = idle();
    r.alarm_button = true;
    instant_rule(r, "alarm_button", Severity::Major);
    let mut r = idle();
    r.overload = true;
    instant_rule(r, "overload", Severity::Minor);
    let mut r = idle();
    r.safety_closed = false;
    instant_rule(r, "safety_circuit_open", Severity::Major);
}

#[test]
fn safety_circuit_open_is_expected_in_inspection() {
    let (mut m, mut out) = monitor();
    let mut r = idle();
    r.status.mode = LiftMode::Inspection;
    r.safety_closed = false;
    m.on_reading(T0 + 1000, r, &mut out);
    let names: Vec<_> = events(&out).into_iter().map(|e| e.0).collect();
    assert_eq!(names, vec!["out_of_service"]);
}

#[test]
fn out_of_service_modes() {
    for mode in [
        LiftMode::Inspection,
        LiftMode::FireService,
        LiftMode::OutOfService,
    ] {
        let mut r = idle();
        r.status.mode = mode;
        instant_rule(r, "out_of_service", Severity::Minor);
    }
    for mode in [LiftMode::Independent, LiftMode::EmergencyPower] {
        let (mut m, mut out) = monitor();
        let mut r = idle();
        r.status.mode = mode;
        m.on_reading(T0 + 1000, r, &mut out);
        assert!(events(&out).is_empty(), "{mode:?}");
    }
}

#[test]
fn controller_fault_carries_code_and_name_and_follows_code_changes() {
    let mut r = idle();
    r.status.fault_code = 41;
    let out = instant_rule(r, "controller_fault", Severity::Major);
    let detail = out
        .iter()
        .find_map(|m| match m {
            Message::Event { event, .. } => event.detail.clone(),
            _ => None,
        })
        .expect("detail");
    assert_eq!(
        detail,
        json!({"code": 41, "name": "E41 safety circuit open"})
    );

    let (mut m, mut out) = monitor();
    m.on_reading(T0 + 1000, r, &mut out);
    r.status.fault_code = 7;
    m.on_reading(T0 + 2000, r, &mut out);
    let got: Vec<(EventState, Value)> = out
        .iter()
        .filter_map(|m| match m {
            Message::Event { event, .. } => {
                Some((event.state, event.detail.clone().unwrap_or_default()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                EventState::Active,
                json!({"code": 41, "name": "E41 safety circuit open"})
            ),
            (
                EventState::Cleared,
                json!({"code": 41, "name": "E41 safety circuit open"})
            ),
            (EventState::Active, json!({"code": 7, "name": null})),
        ]
    );
}

#[test]
fn trapped_passenger_after_exactly_trapped_after() {
    let (mut m, mut out) = monitor();
    let mut r = idle();
    r.status.occupied = true;
    r.status.door_zone = false;
    m.on_reading(T0 + 1000, r, &mut out);
    m.tick(T0 + 1000 + 29_999, &mut out);
    assert!(
        !events(&out).iter().any(|e| e.0 == "trapped_passenger"),
        "not before 30 s"
    );
    m.tick(T0 + 1000 + 30_000, &mut out);
    assert!(events(&out).contains(&(
        "trapped_passenger",
        EventState::Active,
        T0 + 31_000,
        Some(T0 + 1000)
    )));
    out.clear();
    // The doors open: released.
    r.status.door = LiftDoor::Opening;
    m.on_reading(T0 + 40_000, r, &mut out);
    assert!(events(&out).contains(&(
        "trapped_passenger",
        EventState::Cleared,
        T0 + 40_000,
        Some(T0 + 1000)
    )));
}

#[test]
fn a_door_opening_restarts_the_trapped_timer_and_an_empty_car_is_not_trapped() {
    let (mut m, mut out) = monitor();
    let mut r = idle();
    r.status.occupied = true;
    m.on_reading(T0, r, &mut out);
    m.tick(T0 + 20_000, &mut out);
    let mut opening = r;
    opening.status.door = LiftDoor::Opening;
    m.on_reading(T0 + 20_100, opening, &mut out);
    m.on_reading(T0 + 20_200, r, &mut out);
    m.tick(T0 + 40_000, &mut out);
    assert!(!events(&out).iter().any(|e| e.0 == "trapped_passenger"));
    m.tick(T0 + 50_200, &mut out);
    assert!(events(&out).iter().any(|e| e.0 == "trapped_passenger"));

    let (mut m, mut out) = monitor();
    m.on_reading(T0, idle(), &mut out);
    m.tick(T0 + 100_000, &mut out);
    assert!(events(&out).is_empty(), "an empty parked car is fine");
}

#[test]
fn stopped_outside_door_zone_after_5_s_and_not_while_running() {
    let (mut m, mut out) = monitor();
    m.on_reading(T0, moving(), &mut out);
    m.tick(T0 + 10_000, &mut out);
    assert!(events(&out).is_empty(), "running between floors is normal");
    let mut r = idle();
    r.status.door_zone = false;
    m.on_reading(T0 + 10_000, r, &mut out);
    m.tick(T0 + 14_999, &mut out);
    assert!(events(&out).is_empty());
    m.tick(T0 + 15_000, &mut out);
    assert_eq!(
        events(&out),
        vec![(
            "stopped_outside_door_zone",
            EventState::Active,
            T0 + 15_000,
            Some(T0 + 10_000)
        )]
    );
    out.clear();
    m.on_reading(T0 + 16_000, moving(), &mut out);
    assert_eq!(
        events(&out),
        vec![(
            "stopped_outside_door_zone",
            EventState::Cleared,
            T0 + 16_000,
            Some(T0 + 10_000)
        )]
    );
}

#[test]
fn comm_lost_after_three_failed_polls_cleared_by_an_answer() {
    let (mut m, mut out) = monitor();
    m.on_poll_failed(T0 + 250, &mut out);
    m.on_poll_failed(T0 + 500, &mut out);
    assert!(events(&out).is_empty(), "two lost polls are not comm_lost");
    m.on_poll_failed(T0 + 750, &mut out);
    assert_eq!(
        events(&out),
        vec![("comm_lost", EventState::Active, T0 + 750, Some(T0 + 250))]
    );
    out.clear();
    m.on_poll_failed(T0 + 1750, &mut out);
    assert!(events(&out).is_empty(), "published once");
    m.on_reading(T0 + 2000, idle(), &mut out);
    assert_eq!(
        events(&out),
        vec![("comm_lost", EventState::Cleared, T0 + 2000, Some(T0 + 250))]
    );
    // A success between failures restarts the count.
    out.clear();
    m.on_poll_failed(T0 + 3000, &mut out);
    m.on_poll_failed(T0 + 3250, &mut out);
    m.on_reading(T0 + 3500, idle(), &mut out);
    m.on_poll_failed(T0 + 3750, &mut out);
    assert!(events(&out).iter().all(|e| e.0 != "comm_lost"));
}

#[test]
fn timed_rules_do_not_fire_on_stale_data_while_comm_is_lost() {
    let (mut m, mut out) = monitor();
    let mut r = idle();
    r.status.door_zone = false;
    m.on_reading(T0, r, &mut out);
    for i in 1..=3 {
        m.on_poll_failed(T0 + i * 100, &mut out);
    }
    m.tick(T0 + 60_000, &mut out);
    let names: Vec<_> = events(&out).into_iter().map(|e| e.0).collect();
    assert_eq!(names, vec!["comm_lost"]);
}

#[test]
fn status_on_change_and_at_least_every_interval() {
    let mut m = LiftMonitor::new("lift-2", settings());
    let mut out = Vec::new();
    let statuses = |out: &[Message]| -> Vec<(UnixMillis, i16)> {
        out.iter()
            .filter_map(|m| match m {
                Message::LiftStatus { ts, lift, .. } => Some((*ts, lift.floor)),
                _ => None,
            })
            .collect()
    };
    m.on_reading(T0, idle(), &mut out);
    let mut r = idle();
    r.status.speed_mm_s = 3; // speed, load, counters alone are not a change
    r.status.run_count = 11;
    m.on_reading(T0 + 250, r, &mut out);
    r.status.floor = 4;
    m.on_reading(T0 + 500, r, &mut out);
    m.on_reading(T0 + 60_499, r, &mut out);
    m.on_reading(T0 + 60_500, r, &mut out);
    assert_eq!(
        statuses(&out),
        vec![(T0, 3), (T0 + 500, 4), (T0 + 60_500, 4)]
    );
    out.clear();
    for (t, change) in [(61_000, 0), (61_250, 1), (61_500, 2)] {
        let mut r2 = r;
        match change {
            0 => r2.status.direction = LiftDirection::Down,
            1 => r2.status.door = LiftDoor::Opening,
            _ => r2.status.mode = LiftMode::Independent,
        }
        m.on_reading(T0 + t, r2, &mut out);
    }
    assert_eq!(statuses(&out).len(), 3);
}

#[test]
fn trip_mode_publishes_a_trip_s_start_and_end_and_at_least_every_interval() {
    let mut m = LiftMonitor::new(
        "lift-2",
        LiftRuleSettings {
            status: LiftStatusMode::Trip,
            ..settings()
        },
    );
    let mut out = Vec::new();
    let statuses = |out: &[Message]| -> Vec<(UnixMillis, i16, Option<Trip>)> {
        out.iter()
            .filter_map(|m| match m {
                Message::LiftStatus { ts, lift, trip, .. } => Some((*ts, lift.floor, *trip)),
                _ => None,
            })
            .collect()
    };
    m.on_reading(T0, idle(), &mut out);
    // A door cycle at the stop: no status of its own.
    let mut r = idle();
    r.status.door = LiftDoor::Opening;
    m.on_reading(T0 + 250, r, &mut out);
    r.status.door = LiftDoor::Closed;
    r.status.door_cycles = 21;
    m.on_reading(T0 + 1_000, r, &mut out);
    assert_eq!(statuses(&out), vec![(T0, 3, None)]);
    out.clear();
    // The trip: floors passed publish nothing; start and end do.
    let mut run = moving();
    run.status.door_cycles = 21;
    run.status.speed_mm_s = 500;
    m.on_reading(T0 + 2_000, run, &mut out);
    for (i, (floor, speed)) in [(4, 1500), (5, 1750), (6, 800)].into_iter().enumerate() {
        run.status.floor = floor;
        run.status.speed_mm_s = speed;
        m.on_reading(T0 + 3_000 + i as i64 * 1_000, run, &mut out);
    }
    let mut stop = idle();
    stop.status.floor = 7;
    stop.status.door_cycles = 21;
    m.on_reading(T0 + 9_000, stop, &mut out);
    let trips = statuses(&out);
    assert_eq!(trips.len(), 2, "{trips:?}");
    assert_eq!(
        trips[0],
        (
            T0 + 2_000,
            3,
            Some(Trip {
                phase: TripPhase::Start,
                from: 3,
                to: None,
                started: T0 + 2_000,
                duration_ms: None,
                peak_speed_mm_s: None,
                door_cycles: Some(1),
                doors_closed: None,
            })
        )
    );
    assert_eq!(
        trips[1],
        (
            T0 + 9_000,
            7,
            Some(Trip {
                phase: TripPhase::End,
                from: 3,
                to: Some(7),
                started: T0 + 2_000,
                duration_ms: Some(7_000),
                peak_speed_mm_s: Some(1750),
                door_cycles: None,
                doors_closed: Some(true),
            })
        )
    );
    out.clear();
    // Idle: one status per interval; a mode change at once.
    m.on_reading(T0 + 68_999, stop, &mut out);
    m.on_reading(T0 + 69_000, stop, &mut out);
    let mut oos = stop;
    oos.status.mode = LiftMode::Independent;
    m.on_reading(T0 + 69_250, oos, &mut out);
    assert_eq!(
        statuses(&out),
        vec![(T0 + 69_000, 7, None), (T0 + 69_250, 7, None)]
    );
    out.clear();
    // Events stay immediate during a trip.
    let mut bad = moving();
    bad.status.door = LiftDoor::Open;
    m.on_reading(T0 + 70_000, bad, &mut out);
    assert_eq!(
        events(&out),
        vec![(
            "door_open_while_moving",
            EventState::Active,
            T0 + 70_000,
            Some(T0 + 70_000)
        )]
    );
}

#[test]
fn every_event_has_the_spec_name_and_severity() {
    let table = [
        ("trapped_passenger", Severity::Critical),
        ("door_open_while_moving", Severity::Critical),
        ("overspeed", Severity::Critical),
        ("overtravel", Severity::Critical),
        ("stopped_outside_door_zone", Severity::Major),
        ("power_failure", Severity::Major),
        ("safety_circuit_open", Severity::Major),
        ("alarm_button", Severity::Major),
        ("overload", Severity::Minor),
        ("controller_fault", Severity::Major),
        ("out_of_service", Severity::Minor),
        ("comm_lost", Severity::Major),
    ];
    let got: Vec<_> = LiftEvent::ALL
        .iter()
        .map(|e| (e.name(), e.severity()))
        .collect();
    assert_eq!(got, table);
}
