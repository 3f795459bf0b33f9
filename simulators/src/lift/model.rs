//! A lift car as a small physical and logical model: calls, travel between floors at rated
//! speed with acceleration and deceleration, door cycles, occupancy, counters, and the
//! faults a script can switch on and off.
//!
//! Deterministic: the model advances in fixed 10 ms steps of its own time, and every random
//! choice (automatic calls, passengers boarding) comes from a ChaCha RNG seeded per lift, so
//! the same seed and the same script give the same trips.

use std::collections::VecDeque;

use rand::Rng;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use towerlink_agent::feed::{LiftDirection, LiftDoor, LiftMode};
use towerlink_agent::profile::{CarStatus, LiftReading};

/// Model time step, ms.
pub const STEP_MS: u64 = 10;
/// Distance between two floor levels, mm.
pub const FLOOR_HEIGHT_MM: i64 = 3000;
/// Half-width of the door zone around a floor level, mm.
pub const DOOR_ZONE_MM: i64 = 100;
/// Acceleration and deceleration, mm/s².
pub const ACCEL_MM_S2: f64 = 1000.0;
/// Door opening and closing time, ms.
pub const DOOR_MOVE_MS: u64 = 1000;
/// How long doors stay open, ms.
pub const DOOR_OPEN_MS: u64 = 2000;

/// What one lift is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiftSpec {
    /// Device id the agent will use.
    pub id: String,
    /// Modbus unit id.
    pub unit: u8,
    /// Lowest floor.
    pub bottom_floor: i16,
    /// Highest floor.
    pub top_floor: i16,
    /// Rated speed, mm/s.
    pub rated_speed_mm_s: u16,
    /// Make its own calls (passengers) when idle.
    pub auto_calls: bool,
}

/// Faults a script switches on and off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// The car stops between floors with an occupant and closed doors.
    Trapped,
    /// The car moves (creeps) with its doors open and the lock open.
    DoorOpenWhileMoving,
    /// The reported speed is 130 % of rated.
    Overspeed,
    /// The reported floor is one above the top floor.
    Overtravel,
    /// Main power lost.
    PowerFailure,
    /// Safety circuit open.
    SafetyOpen,
    /// Alarm button held.
    AlarmButton,
    /// Overload flag (and 115 % load).
    Overload,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DoorPhase {
    Closed,
    Opening { until: u64 },
    Open { until: u64 },
    Closing { until: u64 },
}

/// The state of one lift.
#[derive(Debug, Clone)]
pub struct LiftModel {
    spec: LiftSpec,
    rng: ChaCha8Rng,
    now_ms: u64,
    position_mm: f64,
    velocity_mm_s: f64,
    target: Option<i16>,
    calls: VecDeque<i16>,
    door: DoorPhase,
    idle_until: u64,
    occupied: bool,
    run_count: u32,
    door_cycles: u32,
    faults: std::collections::BTreeSet<Fault>,
    fault_code: u16,
    mode: Option<LiftMode>,
}

impl LiftModel {
    /// A lift parked at its bottom floor, doors closed, empty, at model time 0.
    pub fn new(spec: LiftSpec, seed: u64) -> LiftModel {
        let rng = ChaCha8Rng::seed_from_u64(seed ^ u64::from(spec.unit).wrapping_mul(0x9E37));
        LiftModel {
            spec,
            rng,
            now_ms: 0,
            position_mm: 0.0,
            velocity_mm_s: 0.0,
            target: None,
            calls: VecDeque::new(),
            door: DoorPhase::Closed,
            idle_until: 1000,
            occupied: false,
            run_count: 0,
            door_cycles: 0,
            faults: Default::default(),
            fault_code: 0,
            mode: None,
        }
    }

    /// Its spec.
    pub fn spec(&self) -> &LiftSpec {
        &self.spec
    }

    /// Model time, ms.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    fn level_mm(&self, floor: i16) -> f64 {
        (i64::from(floor) - i64::from(self.spec.bottom_floor)) as f64 * FLOOR_HEIGHT_MM as f64
    }

    /// The floor whose level is nearest the car.
    pub fn nearest_floor(&self) -> i16 {
        let f = (self.position_mm / FLOOR_HEIGHT_MM as f64).round() as i64
            + i64::from(self.spec.bottom_floor);
        f.clamp(
            i64::from(self.spec.bottom_floor),
            i64::from(self.spec.top_floor),
        ) as i16
    }

    /// A call to `floor` (ignored outside the lift's floors).
    pub fn call(&mut self, floor: i16) {
        if (self.spec.bottom_floor..=self.spec.top_floor).contains(&floor)
            && !self.calls.contains(&floor)
        {
            self.calls.push_back(floor);
        }
    }

    /// Switches a fault on or off.
    pub fn set_fault(&mut self, fault: Fault, on: bool) {
        if on {
            if fault == Fault::Trapped && !self.faults.contains(&Fault::Trapped) {
                // Stopped hard between two floors, with someone inside.
                self.velocity_mm_s = 0.0;
                self.target = None;
                self.calls.clear();
                self.door = DoorPhase::Closed;
                self.occupied = true;
                let level = self.level_mm(self.nearest_floor());
                if (self.position_mm - level).abs() < (FLOOR_HEIGHT_MM / 2) as f64 {
                    let up = self.nearest_floor() < self.spec.top_floor;
                    self.position_mm =
                        level + if up { 1.0 } else { -1.0 } * (FLOOR_HEIGHT_MM as f64 * 0.4);
                }
            }
            self.faults.insert(fault);
        } else {
            if fault == Fault::Trapped && self.faults.contains(&Fault::Trapped) {
                // Rescue: the car re-levels to the nearest floor and opens its doors.
                self.position_mm = self.level_mm(self.nearest_floor());
                self.open_doors();
            }
            self.faults.remove(&fault);
        }
    }

    /// Sets the controller's fault code (0 = none).
    pub fn set_fault_code(&mut self, code: u16) {
        self.fault_code = code;
    }

    /// Forces a service mode (`None` = normal operation).
    pub fn set_mode(&mut self, mode: Option<LiftMode>) {
        self.mode = mode;
    }

    /// Sets whether someone is in the car.
    pub fn set_occupied(&mut self, occupied: bool) {
        self.occupied = occupied;
    }

    fn open_doors(&mut self) {
        self.door = DoorPhase::Opening {
            until: self.now_ms + DOOR_MOVE_MS,
        };
    }

    /// Advances the model to `t_ms` (model time never goes back).
    pub fn advance_to(&mut self, t_ms: u64) {
        while self.now_ms + STEP_MS <= t_ms {
            self.now_ms += STEP_MS;
            self.step();
        }
    }

    fn step(&mut self) {
        if self.faults.contains(&Fault::Trapped) {
            return;
        }
        let dt = STEP_MS as f64 / 1000.0;
        let now = self.now_ms;
        match self.door {
            DoorPhase::Opening { until } if now >= until => {
                self.door = DoorPhase::Open {
                    until: now + DOOR_OPEN_MS,
                };
                self.door_cycles = self.door_cycles.wrapping_add(1);
                if self.spec.auto_calls {
                    // Whoever rode leaves; someone may board and choose a floor.
                    self.occupied = self.rng.gen_bool(0.6);
                    if self.occupied {
                        let floor = self
                            .rng
                            .gen_range(self.spec.bottom_floor..=self.spec.top_floor);
                        if floor != self.nearest_floor() {
                            self.call(floor);
                        } else {
                            self.occupied = false;
                        }
                    }
                } else {
                    self.occupied = false;
                }
            }
            DoorPhase::Open { until } if now >= until => {
                self.door = DoorPhase::Closing {
                    until: now + DOOR_MOVE_MS,
                };
            }
            DoorPhase::Closing { until } if now >= until => {
                self.door = DoorPhase::Closed;
                self.idle_until = now + 300;
            }
            _ => {}
        }
        if self.door != DoorPhase::Closed {
            return;
        }
        match self.target {
            None => {
                if now < self.idle_until {
                    return;
                }
                if self.calls.is_empty() && self.spec.auto_calls && !self.occupied {
                    let floor = self
                        .rng
                        .gen_range(self.spec.bottom_floor..=self.spec.top_floor);
                    self.call(floor);
                    self.idle_until = now + self.rng.gen_range(1000..4000);
                }
                if let Some(next) = self.calls.pop_front() {
                    if next == self.nearest_floor() {
                        self.open_doors();
                    } else {
                        self.target = Some(next);
                    }
                }
            }
            Some(target) => {
                let goal = self.level_mm(target);
                let remaining = goal - self.position_mm;
                let v = self.velocity_mm_s;
                let rated = f64::from(self.spec.rated_speed_mm_s);
                let stopping = v * v / (2.0 * ACCEL_MM_S2);
                let dir = remaining.signum();
                let new_v = if remaining.abs() <= stopping + v.abs() * dt {
                    // Decelerate so as to arrive at the level, never below a creep speed.
                    let v_needed = (2.0 * ACCEL_MM_S2 * remaining.abs()).sqrt();
                    dir * v_needed.max(50.0).min(v.abs())
                } else {
                    dir * (v.abs() + ACCEL_MM_S2 * dt).min(rated)
                };
                let step = new_v * dt;
                if step.abs() >= remaining.abs() {
                    self.position_mm = goal;
                    self.velocity_mm_s = 0.0;
                    self.target = None;
                    self.run_count = self.run_count.wrapping_add(1);
                    self.open_doors();
                } else {
                    self.position_mm += step;
                    self.velocity_mm_s = new_v;
                }
            }
        }
    }

    /// What the controller reports now.
    pub fn reading(&self) -> LiftReading {
        let has = |f| self.faults.contains(&f);
        let mut floor = self.nearest_floor();
        let level = self.level_mm(floor);
        let mut running = self.velocity_mm_s != 0.0;
        let mut speed = self.velocity_mm_s.abs().round() as u16;
        let mut direction = if self.velocity_mm_s > 0.0 {
            LiftDirection::Up
        } else if self.velocity_mm_s < 0.0 {
            LiftDirection::Down
        } else {
            LiftDirection::Stopped
        };
        let mut door = match self.door {
            DoorPhase::Closed => LiftDoor::Closed,
            DoorPhase::Opening { .. } => LiftDoor::Opening,
            DoorPhase::Open { .. } => LiftDoor::Open,
            DoorPhase::Closing { .. } => LiftDoor::Closing,
        };
        let mut lock_closed = door == LiftDoor::Closed;
        if has(Fault::DoorOpenWhileMoving) {
            running = true;
            speed = speed.max(300);
            if direction == LiftDirection::Stopped {
                direction = LiftDirection::Up;
            }
            door = LiftDoor::Open;
            lock_closed = false;
        }
        if has(Fault::Overspeed) {
            running = true;
            speed = (u32::from(self.spec.rated_speed_mm_s) * 13 / 10).min(65_535) as u16;
            if direction == LiftDirection::Stopped {
                direction = LiftDirection::Down;
            }
        }
        if has(Fault::Overtravel) {
            floor = self.spec.top_floor.saturating_add(1);
        }
        let overload = has(Fault::Overload);
        LiftReading {
            status: CarStatus {
                mode: self.mode.unwrap_or(LiftMode::Normal),
                floor,
                direction,
                door,
                running,
                door_zone: (self.position_mm - level).abs() <= DOOR_ZONE_MM as f64,
                occupied: self.occupied,
                speed_mm_s: speed,
                load_pct: if overload {
                    115
                } else if self.occupied {
                    30
                } else {
                    0
                },
                position_mm: self.position_mm.max(0.0).round() as u32,
                fault_code: self.fault_code,
                run_count: self.run_count,
                door_cycles: self.door_cycles,
            },
            main_power_ok: !has(Fault::PowerFailure),
            safety_closed: !has(Fault::SafetyOpen),
            door_lock_closed: lock_closed,
            alarm_button: has(Fault::AlarmButton),
            overload,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(auto: bool) -> LiftSpec {
        LiftSpec {
            id: "lift-1".into(),
            unit: 1,
            bottom_floor: -2,
            top_floor: 10,
            rated_speed_mm_s: 1750,
            auto_calls: auto,
        }
    }

    #[test]
    fn a_trip_passes_every_floor_then_opens_the_doors() {
        let mut m = LiftModel::new(spec(false), 1);
        m.advance_to(2000);
        assert_eq!(m.reading().status.floor, -2);
        m.call(3);
        let mut floors = vec![];
        let mut top_speed = 0;
        for t in (2000..40_000).step_by(10) {
            m.advance_to(t);
            let r = m.reading().status;
            top_speed = top_speed.max(r.speed_mm_s);
            if floors.last() != Some(&r.floor) {
                floors.push(r.floor);
            }
            assert!(!(r.running && r.door != LiftDoor::Closed));
        }
        assert_eq!(floors, vec![-2, -1, 0, 1, 2, 3]);
        assert!((1700..=1750).contains(&top_speed), "{top_speed}");
        let r = m.reading();
        assert_eq!(r.status.run_count, 1);
        assert_eq!(r.status.door_cycles, 1);
        assert!(r.status.door_zone && !r.status.running);
    }

    #[test]
    fn same_seed_same_trips() {
        let run = |seed| {
            let mut m = LiftModel::new(spec(true), seed);
            (0..600)
                .map(|i| {
                    m.advance_to(i * 100);
                    m.reading().status.position_mm
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
    }

    #[test]
    fn trapped_stops_between_floors_and_rescue_relevels() {
        let mut m = LiftModel::new(spec(false), 1);
        m.advance_to(1000);
        m.set_fault(Fault::Trapped, true);
        m.advance_to(5000);
        let r = m.reading().status;
        assert!(r.occupied && !r.running && !r.door_zone && r.door == LiftDoor::Closed);
        m.set_fault(Fault::Trapped, false);
        m.advance_to(5100);
        let r = m.reading().status;
        assert!(r.door_zone && r.door == LiftDoor::Opening);
    }
}
