//! Lift status and safety events at the edge (`docs/lift-modbus.md`, "Events"), as pure,
//! time-driven rules: readings and failed polls go in with their time, feed messages come out.
//! No I/O, no clock of its own, so every rule and every timing edge is tested with plain
//! numbers.
//!
//! Each event of the spec's table is a rule over the latest reading. An event goes `active`
//! the moment its rule holds (timed rules: once it has held continuously for the lift's
//! `trapped_after` / `outside_zone_after`) and `cleared` the moment it stops holding; both
//! transitions are published at once and carry `since` = when the condition started.
//!
//! `trapped_passenger`: the spec's "(outside the door zone, or in it with no door opening)"
//! reduces to "door closed throughout", because any door opening resets the condition; so
//! the rule is occupied, not running, door closed, held for `trapped_after`.
//! `controller_fault` is keyed by code: a change from one fault code to another clears the
//! old event and raises the new one, so the platform sees each code's own episode.
//! `comm_lost` counts consecutive polls without a valid reading; while it is active the
//! other rules keep their state (the lift's last known condition), and timed rules do not
//! advance on stale data.
//!
//! The status (`data/{lift}`) goes out, with `status = "floor"`, on every change of floor,
//! direction, door or mode; with `status = "trip"` (the default) when a trip starts (the
//! first reading with the car running) and ends (the first reading with it standing), with
//! a `trip` object (floors, duration, peak speed, doors), and on a change of mode; either
//! way at least every `status_interval` (at most 60 s) while the lift answers.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::feed::{
    Event, EventState, LiftDoor, LiftMode, LiftStatus, Message, Severity, Trip, TripPhase,
    UnixMillis,
};
use crate::sources::config::{LiftConfig, LiftStatusMode};
use crate::sources::{CarStatus, LiftReading};

/// Consecutive polls without a valid reading that make `comm_lost`.
pub const COMM_LOST_AFTER_POLLS: u32 = 3;
/// Overspeed above this percentage of the rated speed.
pub const OVERSPEED_PERCENT: u32 = 115;

/// The events of the spec's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LiftEvent {
    /// Occupied, stopped, doors closed for `trapped_after`.
    TrappedPassenger,
    /// Running with the door not closed or its lock open.
    DoorOpenWhileMoving,
    /// Speed above 115 % of rated.
    Overspeed,
    /// Floor beyond the configured top or bottom floor.
    Overtravel,
    /// Stopped outside the door zone for `outside_zone_after`.
    StoppedOutsideDoorZone,
    /// Main power not ok.
    PowerFailure,
    /// Safety circuit open outside inspection mode.
    SafetyCircuitOpen,
    /// Alarm button pressed.
    AlarmButton,
    /// Overload flag.
    Overload,
    /// A controller fault code.
    ControllerFault,
    /// Inspection, fire service or out of service.
    OutOfService,
    /// No valid answer for 3 polls.
    CommLost,
}

impl LiftEvent {
    /// Every event, in the spec's table order.
    pub const ALL: [LiftEvent; 12] = [
        LiftEvent::TrappedPassenger,
        LiftEvent::DoorOpenWhileMoving,
        LiftEvent::Overspeed,
        LiftEvent::Overtravel,
        LiftEvent::StoppedOutsideDoorZone,
        LiftEvent::PowerFailure,
        LiftEvent::SafetyCircuitOpen,
        LiftEvent::AlarmButton,
        LiftEvent::Overload,
        LiftEvent::ControllerFault,
        LiftEvent::OutOfService,
        LiftEvent::CommLost,
    ];

    /// The event's name in the feed.
    pub fn name(self) -> &'static str {
        match self {
            LiftEvent::TrappedPassenger => "trapped_passenger",
            LiftEvent::DoorOpenWhileMoving => "door_open_while_moving",
            LiftEvent::Overspeed => "overspeed",
            LiftEvent::Overtravel => "overtravel",
            LiftEvent::StoppedOutsideDoorZone => "stopped_outside_door_zone",
            LiftEvent::PowerFailure => "power_failure",
            LiftEvent::SafetyCircuitOpen => "safety_circuit_open",
            LiftEvent::AlarmButton => "alarm_button",
            LiftEvent::Overload => "overload",
            LiftEvent::ControllerFault => "controller_fault",
            LiftEvent::OutOfService => "out_of_service",
            LiftEvent::CommLost => "comm_lost",
        }
    }

    /// The event's severity (spec table).
    pub fn severity(self) -> Severity {
        match self {
            LiftEvent::TrappedPassenger
            | LiftEvent::DoorOpenWhileMoving
            | LiftEvent::Overspeed
            | LiftEvent::Overtravel => Severity::Critical,
            LiftEvent::StoppedOutsideDoorZone
            | LiftEvent::PowerFailure
            | LiftEvent::SafetyCircuitOpen
            | LiftEvent::AlarmButton
            | LiftEvent::ControllerFault
            | LiftEvent::CommLost => Severity::Major,
            LiftEvent::Overload | LiftEvent::OutOfService => Severity::Minor,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The per-lift settings the rules use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiftRuleSettings {
    /// Highest floor served.
    pub top_floor: i16,
    /// Lowest floor served.
    pub bottom_floor: i16,
    /// Rated speed, mm/s.
    pub rated_speed_mm_s: u16,
    /// Time for `trapped_passenger`, ms.
    pub trapped_after_ms: i64,
    /// Time for `stopped_outside_door_zone`, ms.
    pub outside_zone_after_ms: i64,
    /// Longest time between two status messages, ms.
    pub status_interval_ms: i64,
    /// Names of controller fault codes (from the profile).
    pub fault_names: BTreeMap<u16, String>,
    /// By the trip or by the floor.
    pub status: LiftStatusMode,
}

impl LiftRuleSettings {
    /// The settings of a configured lift.
    pub fn from_config(config: &LiftConfig) -> LiftRuleSettings {
        LiftRuleSettings {
            top_floor: config.top_floor,
            bottom_floor: config.bottom_floor,
            rated_speed_mm_s: config.rated_speed_mm_s,
            trapped_after_ms: config.trapped_after.as_millis() as i64,
            outside_zone_after_ms: config.outside_zone_after.as_millis() as i64,
            status_interval_ms: config.status_interval.as_millis() as i64,
            fault_names: config
                .register_map
                .as_ref()
                .map(|p| p.fault_names.clone())
                .unwrap_or_default(),
            status: config.status,
        }
    }
}

/// The trip under way (trip mode).
#[derive(Debug, Clone, Copy)]
struct TripState {
    from: i16,
    started: UnixMillis,
    peak_speed_mm_s: u16,
    doors_closed: bool,
}

#[derive(Debug, Clone, Default)]
struct RuleState {
    /// When the condition was first seen holding (reset when it stops).
    holding_since: Option<UnixMillis>,
    /// Set while the event is active: when its condition started.
    active_since: Option<UnixMillis>,
}

/// The rules and status of one lift.
#[derive(Debug, Clone)]
pub struct LiftMonitor {
    dev: String,
    settings: LiftRuleSettings,
    last: Option<LiftReading>,
    last_published: Option<(UnixMillis, LiftStatus)>,
    failed_in_row: u32,
    first_failure: Option<UnixMillis>,
    rules: [RuleState; 12],
    /// The fault code the active `controller_fault` is about.
    fault_code: u16,
    /// Trip mode: the trip under way.
    trip: Option<TripState>,
    /// Trip mode: the door counter when the last trip ended.
    door_cycles_at_stop: Option<u32>,
}

impl LiftMonitor {
    /// A monitor for lift `dev`.
    pub fn new(dev: &str, settings: LiftRuleSettings) -> LiftMonitor {
        LiftMonitor {
            dev: dev.to_owned(),
            settings,
            last: None,
            last_published: None,
            failed_in_row: 0,
            first_failure: None,
            rules: Default::default(),
            fault_code: 0,
            trip: None,
            door_cycles_at_stop: None,
        }
    }

    /// The wall clock stepped by `step_ms`: every time held moves with it (no rule fires, and
    /// no periodic status is held back, because of the step).
    pub fn shift(&mut self, step_ms: i64) {
        let sh = |t: &mut UnixMillis| *t = t.saturating_add(step_ms);
        if let Some((t, _)) = self.last_published.as_mut() {
            sh(t);
        }
        if let Some(t) = self.first_failure.as_mut() {
            sh(t);
        }
        for r in &mut self.rules {
            for t in [&mut r.holding_since, &mut r.active_since]
                .into_iter()
                .flatten()
            {
                sh(t);
            }
        }
    }

    /// Is `event` active now?
    pub fn is_active(&self, event: LiftEvent) -> bool {
        self.rules[event.index()].active_since.is_some()
    }

    /// A reading arrived at `ts`.
    pub fn on_reading(&mut self, ts: UnixMillis, reading: LiftReading, out: &mut Vec<Message>) {
        let s = feed_status(&reading.status);
        let trip = match self.settings.status {
            LiftStatusMode::Floor => None,
            LiftStatusMode::Trip => self.follow_trip(ts, &s),
        };
        let due = trip.is_some()
            || match self.last_published {
                None => true,
                Some((at, p)) => {
                    let moved =
                        p.floor != s.floor || p.direction != s.direction || p.door != s.door;
                    (moved && self.settings.status == LiftStatusMode::Floor)
                        || p.mode != s.mode
                        || ts - at >= self.settings.status_interval_ms
                }
            };
        if due {
            out.push(Message::LiftStatus {
                dev: self.dev.clone(),
                ts,
                lift: s,
                trip,
            });
            self.last_published = Some((ts, s));
        }
        self.failed_in_row = 0;
        self.first_failure = None;
        self.last = Some(reading);
        if self.is_active(LiftEvent::ControllerFault) && s.fault_code != self.fault_code {
            // Another code (or none): the old code's episode ends here.
            self.clear(LiftEvent::ControllerFault, ts, out);
            self.rules[LiftEvent::ControllerFault.index()].holding_since = None;
        }
        self.set(LiftEvent::CommLost, false, ts, ts, out);
        self.evaluate(ts, out);
    }

    /// Trip mode: the trip's start or end if this reading makes one.
    fn follow_trip(&mut self, ts: UnixMillis, s: &LiftStatus) -> Option<Trip> {
        match (self.trip.as_mut(), s.running) {
            (None, true) => {
                self.trip = Some(TripState {
                    from: s.floor,
                    started: ts,
                    peak_speed_mm_s: s.speed_mm_s,
                    doors_closed: s.door == LiftDoor::Closed,
                });
                Some(Trip {
                    phase: TripPhase::Start,
                    from: s.floor,
                    to: None,
                    started: ts,
                    duration_ms: None,
                    peak_speed_mm_s: None,
                    door_cycles: self
                        .door_cycles_at_stop
                        .map(|at| s.door_cycles.wrapping_sub(at)),
                    doors_closed: None,
                })
            }
            (Some(t), true) => {
                t.peak_speed_mm_s = t.peak_speed_mm_s.max(s.speed_mm_s);
                t.doors_closed &= s.door == LiftDoor::Closed;
                None
            }
            (Some(_), false) => {
                let t = self.trip.take()?;
                self.door_cycles_at_stop = Some(s.door_cycles);
                Some(Trip {
                    phase: TripPhase::End,
                    from: t.from,
                    to: Some(s.floor),
                    started: t.started,
                    duration_ms: Some(u64::try_from(ts - t.started).unwrap_or(0)),
                    peak_speed_mm_s: Some(t.peak_speed_mm_s.max(s.speed_mm_s)),
                    door_cycles: None,
                    doors_closed: Some(t.doors_closed && s.door == LiftDoor::Closed),
                })
            }
            (None, false) => {
                if self.door_cycles_at_stop.is_none() {
                    self.door_cycles_at_stop = Some(s.door_cycles);
                }
                None
            }
        }
    }

    /// A poll ended without a valid reading at `ts`.
    pub fn on_poll_failed(&mut self, ts: UnixMillis, out: &mut Vec<Message>) {
        self.failed_in_row = self.failed_in_row.saturating_add(1);
        let first = *self.first_failure.get_or_insert(ts);
        if self.failed_in_row >= COMM_LOST_AFTER_POLLS {
            self.set(LiftEvent::CommLost, true, first, ts, out);
        }
    }

    /// Time passes: timed rules may become active.
    pub fn tick(&mut self, now: UnixMillis, out: &mut Vec<Message>) {
        if self.last.is_some() && !self.is_active(LiftEvent::CommLost) {
            self.evaluate(now, out);
        }
    }

    /// Which rules hold for `r`, with the time each must hold before it is active.
    fn conditions(&self, r: &LiftReading) -> [(LiftEvent, bool, i64); 11] {
        let s = &r.status;
        let st = &self.settings;
        let stopped = !s.running;
        [
            (
                LiftEvent::TrappedPassenger,
                s.occupied && stopped && s.door == LiftDoor::Closed,
                st.trapped_after_ms,
            ),
            (
                LiftEvent::DoorOpenWhileMoving,
                s.running && (s.door != LiftDoor::Closed || !r.door_lock_closed),
                0,
            ),
            (
                LiftEvent::Overspeed,
                u32::from(s.speed_mm_s) * 100 > u32::from(st.rated_speed_mm_s) * OVERSPEED_PERCENT,
                0,
            ),
            (
                LiftEvent::Overtravel,
                s.floor > st.top_floor || s.floor < st.bottom_floor,
                0,
            ),
            (
                LiftEvent::StoppedOutsideDoorZone,
                stopped && !s.door_zone,
                st.outside_zone_after_ms,
            ),
            (LiftEvent::PowerFailure, !r.main_power_ok, 0),
            (
                LiftEvent::SafetyCircuitOpen,
                !r.safety_closed && s.mode != LiftMode::Inspection,
                0,
            ),
            (LiftEvent::AlarmButton, r.alarm_button, 0),
            (LiftEvent::Overload, r.overload, 0),
            (LiftEvent::ControllerFault, s.fault_code != 0, 0),
            (
                LiftEvent::OutOfService,
                matches!(
                    s.mode,
                    LiftMode::Inspection | LiftMode::FireService | LiftMode::OutOfService
                ),
                0,
            ),
        ]
    }

    fn evaluate(&mut self, now: UnixMillis, out: &mut Vec<Message>) {
        let Some(reading) = self.last else { return };
        for (event, holds, after) in self.conditions(&reading) {
            let rule = &mut self.rules[event.index()];
            let since = if holds {
                *rule.holding_since.get_or_insert(now)
            } else {
                rule.holding_since = None;
                now
            };
            let active = holds && now - since >= after;
            // A timed rule that holds but has not held long enough leaves an active event
            // alone (it can only be active if it already held that long).
            if holds && !active {
                continue;
            }
            if event == LiftEvent::ControllerFault && active {
                self.fault_code = reading.status.fault_code;
            }
            self.set(event, active, since, now, out);
        }
    }

    fn set(
        &mut self,
        event: LiftEvent,
        active: bool,
        since: UnixMillis,
        now: UnixMillis,
        out: &mut Vec<Message>,
    ) {
        let rule = &mut self.rules[event.index()];
        match (rule.active_since, active) {
            (None, true) => {
                rule.active_since = Some(since);
                self.emit(event, EventState::Active, since, now, out);
            }
            (Some(_), false) => self.clear(event, now, out),
            _ => {}
        }
    }

    /// Ends an active event.
    fn clear(&mut self, event: LiftEvent, now: UnixMillis, out: &mut Vec<Message>) {
        if let Some(since) = self.rules[event.index()].active_since.take() {
            self.emit(event, EventState::Cleared, since, now, out);
        }
    }

    fn emit(
        &self,
        event: LiftEvent,
        state: EventState,
        since: UnixMillis,
        now: UnixMillis,
        out: &mut Vec<Message>,
    ) {
        let mut e = Event::new(now, event.name(), event.severity(), state);
        e.since = Some(since);
        e.detail = Some(self.detail(event));
        out.push(Message::Event {
            dev: self.dev.clone(),
            event: e,
        });
    }

    fn detail(&self, event: LiftEvent) -> Value {
        let Some(r) = self.last else {
            return json!({ "lost_polls": self.failed_in_row });
        };
        let s = r.status;
        let st = &self.settings;
        match event {
            LiftEvent::TrappedPassenger => {
                json!({"floor": s.floor, "door": s.door, "door_zone": s.door_zone})
            }
            LiftEvent::DoorOpenWhileMoving => json!({
                "floor": s.floor, "door": s.door, "door_lock_closed": r.door_lock_closed,
                "speed_mm_s": s.speed_mm_s
            }),
            LiftEvent::Overspeed => json!({
                "speed_mm_s": s.speed_mm_s,
                "limit_mm_s": u32::from(st.rated_speed_mm_s) * OVERSPEED_PERCENT / 100,
                "rated_speed_mm_s": st.rated_speed_mm_s
            }),
            LiftEvent::Overtravel => json!({
                "floor": s.floor, "top_floor": st.top_floor, "bottom_floor": st.bottom_floor,
                "position_mm": s.position_mm
            }),
            LiftEvent::StoppedOutsideDoorZone => {
                json!({"floor": s.floor, "position_mm": s.position_mm})
            }
            LiftEvent::PowerFailure | LiftEvent::AlarmButton => {
                json!({"floor": s.floor, "occupied": s.occupied})
            }
            LiftEvent::SafetyCircuitOpen | LiftEvent::OutOfService => {
                json!({"floor": s.floor, "mode": s.mode})
            }
            LiftEvent::Overload => json!({"load_pct": s.load_pct}),
            LiftEvent::ControllerFault => {
                let code = if self.fault_code != 0 {
                    self.fault_code
                } else {
                    s.fault_code
                };
                json!({"code": code, "name": st.fault_names.get(&code)})
            }
            LiftEvent::CommLost => json!({"lost_polls": self.failed_in_row}),
        }
    }
}

/// The feed's `lift` payload of a car status (the source's reading, mapped to the contract).
pub fn feed_status(s: &CarStatus) -> LiftStatus {
    LiftStatus {
        mode: s.mode,
        floor: s.floor,
        direction: s.direction,
        door: s.door,
        running: s.running,
        door_zone: s.door_zone,
        occupied: s.occupied,
        speed_mm_s: s.speed_mm_s,
        load_pct: s.load_pct,
        position_mm: s.position_mm,
        fault_code: s.fault_code,
        run_count: s.run_count,
        door_cycles: s.door_cycles,
    }
}

#[cfg(test)]
mod tests;
