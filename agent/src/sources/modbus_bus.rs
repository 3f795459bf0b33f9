//! The protocol state of one RS-485 bus polled by a Modbus RTU master: which lift is due, which
//! unit is still owed an answer, whether a failed request is retried, what every byte that
//! arrives means, and the counters. No I/O and no clock: every method is one event (bytes
//! arrived, a request left, time passed) with the time it happened, so the whole protocol is
//! unit-tested with made-up instants. The thread around it ([`super::modbus_lift`]) only moves
//! bytes and waits.
//!
//! # No answer from the past
//!
//! Modbus RTU has no transaction id: the answer of unit 3 to request 1 and its answer to
//! request 2 are the same bytes. Protection can only come from timing and bookkeeping:
//!
//! - A request that ends without a frame shaped like its answer (a pure timeout, a truncated
//!   answer, a foreign or wrong-shaped frame) leaves its unit **owed an answer**. Nothing more
//!   is sent to that unit until either a frame shaped like its answer has arrived (it is the
//!   late answer: counted in `late_answers` and thrown away, never a reading), or `late_guard`
//!   has passed since the request left the line. Other units are polled meanwhile: a frame
//!   from unit A is never taken for unit B's answer, whenever it comes.
//! - Every byte is read and classified as it arrives, between exchanges too: a late answer
//!   that lands while the bus is idle, during the silence after a failure, or inside another
//!   unit's exchange is counted as late, and it clears its unit's debt.
//! - An answer is accepted only inside its own request's window: after the request was sent,
//!   after 3.5 character times of silence on the line, with the request's unit, function and
//!   byte count and a correct CRC. Anything else (late, foreign, short, corrupt, exception,
//!   wrong function or byte count) is counted and never becomes a status or an event.
//!
//! **The guarantee.** An answer arriving up to `late_guard` after the end of its request
//! (default 4 x `timeout`) is never taken for the answer to any other request: until then its
//! unit is sent nothing, so no window of that unit is open. An answer later than that can
//! fall inside the window of the unit's next request, and there nothing on an RTU line can
//! tell it from the real answer: same unit, function, byte count and CRC, arriving after the
//! request was sent and within its timeout — RTU frames carry no sequence number and the
//! slave's processing time is unknown. Such a late answer is still caught when it lands
//! outside that window (while idle, or in another unit's exchange). Raising `late_guard`
//! widens the certain range at the price of a slower retry after a timeout; CRC errors and
//! exceptions prove the unit answered this request and cost no guard.
//!
//! A line that never falls silent (a babbling transceiver) would block every request: once a
//! lift's poll is one timeout late the request goes out anyway, so the poll fails visibly
//! (and `comm_lost` follows) instead of the lift silently going stale.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::modbus_lift::BusLift;
use super::modbus_rtu::{
    frames, has_corrupt_answer, Answer, LineTiming, ReadInputRegisters, REQUEST_LEN,
};
use super::LiftReading;
use super::SourceStats;

/// Consecutive polls without a valid reading after which a lift is considered lost; from
/// then on it is polled less often and without retry.
pub const LOST_AFTER_POLLS: u32 = 3;
/// How often a lost lift is still polled (at least).
pub const LOST_LIFT_POLL: Duration = Duration::from_secs(1);
/// Received bytes kept while no frame is complete (a babbling line cannot grow it further).
const RX_LIMIT: usize = 1024;

/// What the bus should do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Send this request for lift `lift` (index on the bus) now, then call
    /// [`BusState::on_sent`].
    Send {
        /// Index of the lift on this bus.
        lift: usize,
        /// The request's bytes.
        frame: [u8; REQUEST_LEN],
    },
    /// Read what arrives until this instant, then ask again.
    Wait(Instant),
}

/// What a finished poll produced, for the pipeline.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// A valid reading of lift `lift` (index on the bus).
    Reading {
        /// Index of the lift on this bus.
        lift: usize,
        /// What it said.
        reading: LiftReading,
    },
    /// The poll ended without a valid reading (lost, exception, undecodable).
    Failed {
        /// Index of the lift on this bus.
        lift: usize,
    },
}

/// Why one request got no usable answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No byte of it before the timeout.
    Timeout,
    /// Bytes, but never a complete frame (truncated answer, noise).
    Truncated,
    /// A complete frame of the answer's shape with a wrong CRC.
    Crc,
    /// A valid frame from another unit, or of another shape from this one.
    Foreign,
}

#[derive(Debug)]
struct Unit {
    lift: BusLift,
    req: ReadInputRegisters,
    /// When the current (or next) poll is due.
    due: Instant,
    /// When the current poll's first request went out.
    started: Instant,
    /// The current poll's first request failed: send the retry when allowed.
    retry_pending: bool,
    failed_in_row: u32,
    last_ok: Option<Instant>,
    /// Owed an answer: send it nothing before this (unless its late answer comes first).
    owed_until: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Exchange {
    unit: usize,
    retry: bool,
    /// When the request's last byte left the line.
    sent_end: Instant,
    deadline: Instant,
    /// When the exchange ends: the deadline, or the silence after a corrupt or foreign frame.
    until: Instant,
    crc: bool,
    foreign: bool,
}

/// The state of one bus (see the module doc).
#[derive(Debug)]
pub struct BusState {
    timing: LineTiming,
    units: Vec<Unit>,
    rx: Vec<u8>,
    /// When the line last carried a byte (received, or the end of our request).
    quiet_since: Instant,
    /// When the current burst of received bytes began (for a line that never falls silent).
    burst_start: Instant,
    exchange: Option<Exchange>,
    last_polled: usize,
    outputs: Vec<Output>,
}

impl BusState {
    /// A bus whose lifts are all due at `now`.
    pub fn new(lifts: Vec<BusLift>, timing: LineTiming, now: Instant) -> BusState {
        let units = lifts
            .into_iter()
            .map(|lift| Unit {
                req: ReadInputRegisters {
                    unit: lift.config.unit,
                    start: lift.profile.start,
                    count: lift.profile.count,
                },
                lift,
                due: now,
                started: now,
                retry_pending: false,
                failed_in_row: 0,
                last_ok: None,
                owed_until: None,
            })
            .collect();
        BusState {
            timing,
            units,
            rx: Vec::with_capacity(256),
            quiet_since: now,
            burst_start: now,
            exchange: None,
            last_polled: 0,
            outputs: Vec::new(),
        }
    }

    /// The lift at `index` on this bus.
    pub fn lift(&self, index: usize) -> Option<&BusLift> {
        self.units.get(index).map(|u| &u.lift)
    }

    /// The line's timing.
    pub fn timing(&self) -> LineTiming {
        self.timing
    }

    /// Is unit index `i` owed an answer at `now`?
    pub fn owed(&self, i: usize, now: Instant) -> bool {
        self.units
            .get(i)
            .and_then(|u| u.owed_until)
            .is_some_and(|t| now < t)
    }

    /// How long the line must stay quiet before a received frame is over: t3.5, and at least
    /// 2 ms because the OS delivers bytes in chunks.
    fn frame_silence(&self) -> Duration {
        self.timing.t3_5().max(Duration::from_millis(2))
    }

    /// What to do at `now`: ends an exchange whose time is up, then picks the next request.
    pub fn next(&mut self, now: Instant) -> Next {
        if let Some(ex) = self.exchange {
            if now < ex.until {
                return Next::Wait(ex.until);
            }
            self.end_failed(now);
        }
        // The lift that can go now with the oldest due time (a pending retry keeps its
        // poll's due time, so it goes first); ties go to the lower index (config order).
        let mut best: Option<(Instant, usize)> = None;
        let mut wake: Option<Instant> = None;
        for (i, u) in self.units.iter().enumerate() {
            let start = match u.owed_until {
                Some(owed) if owed > u.due => owed,
                _ => u.due,
            };
            if start <= now {
                if best.is_none_or(|(due, _)| u.due < due) {
                    best = Some((u.due, i));
                }
            } else if wake.is_none_or(|w| start < w) {
                wake = Some(start);
            }
        }
        let Some((due, i)) = best else {
            return Next::Wait(wake.unwrap_or(now + LOST_LIFT_POLL));
        };
        // 3.5 characters of silence before any request; a line that has been busy without
        // a pause for a whole timeout since the poll fell due is used anyway.
        let silent_at = self.quiet_since + self.timing.t3_5();
        let babble_at = self.burst_start.max(due) + self.units[i].lift.config.timeout;
        if now < silent_at && now < babble_at {
            return Next::Wait(silent_at.min(babble_at));
        }
        Next::Send {
            lift: i,
            frame: self.units[i].req.to_frame(),
        }
    }

    /// The request of lift `lift` (as [`Next::Send`] said) was written at `now`.
    pub fn on_sent(&mut self, lift: usize, now: Instant) {
        let Some(u) = self.units.get_mut(lift) else {
            return;
        };
        // Everything received before was classified as it came; what is left is noise.
        self.rx.clear();
        let retry = u.retry_pending;
        if retry {
            SourceStats::add(&u.lift.stats.modbus_retries, 1);
        } else {
            u.started = now;
        }
        // The UART is still shifting the request out when the write returns.
        let sent_end = now + self.timing.chars(REQUEST_LEN);
        let deadline = sent_end + u.lift.config.timeout;
        self.exchange = Some(Exchange {
            unit: lift,
            retry,
            sent_end,
            deadline,
            until: deadline,
            crc: false,
            foreign: false,
        });
        self.quiet_since = self.quiet_since.max(sent_end);
        self.last_polled = lift;
    }

    /// `bytes` were read from the line at `now`.
    pub fn on_bytes(&mut self, now: Instant, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if now >= self.quiet_since + self.frame_silence() {
            // A new burst: what an earlier one left unfinished is noise.
            self.burst_start = now;
            if self.exchange.is_none() {
                self.rx.clear();
            }
        }
        self.quiet_since = self.quiet_since.max(now);
        self.rx.extend_from_slice(bytes);
        let mut consumed = 0;
        let awaited = self.exchange.map(|ex| ex.unit);
        for f in frames(&self.rx) {
            consumed = f.start + f.len;
            if let Some(a) = awaited {
                if f.answers(&self.units[a].req) {
                    let answer = self.rx.get(f.start..consumed).and_then(|b| f.decode(b));
                    self.rx.clear();
                    self.end_answered(answer, now);
                    return;
                }
            }
            match self.units.iter().position(|u| u.req.unit == f.unit) {
                Some(w) if Some(w) != awaited => {
                    // Unit w was not being asked: an answer from the past (counted, dropped).
                    let u = &mut self.units[w];
                    SourceStats::add(&u.lift.stats.late_answers, 1);
                    u.owed_until = None;
                    tracing::debug!(lift = %u.lift.config.id, "late Modbus answer discarded");
                }
                Some(w) => {
                    // The awaited unit, but another function or byte count.
                    SourceStats::add(&self.units[w].lift.stats.foreign_frames, 1);
                    if let Some(ex) = &mut self.exchange {
                        ex.foreign = true;
                    }
                }
                None => {
                    let on = awaited.unwrap_or(self.last_polled);
                    if let Some(u) = self.units.get(on) {
                        SourceStats::add(&u.lift.stats.foreign_frames, 1);
                    }
                    if let Some(ex) = &mut self.exchange {
                        ex.foreign = true;
                    }
                }
            }
        }
        self.rx.drain(..consumed);
        let silence = self.frame_silence();
        if let Some(ex) = &mut self.exchange {
            if has_corrupt_answer(&self.units[ex.unit].req, &self.rx) {
                ex.crc = true;
            }
            if ex.crc || ex.foreign {
                // The answer is not coming behind it unless bytes keep arriving: stop at the
                // next silence.
                ex.until = ex.deadline.min(now + silence);
            }
        }
        if self.rx.len() > RX_LIMIT {
            let keep = self.rx.len() - RX_LIMIT / 2;
            self.rx.drain(..keep);
        }
    }

    /// The port was (re)opened at `now`: an exchange in flight is abandoned (its unit stays
    /// owed), and gaps restart.
    pub fn on_reopened(&mut self, now: Instant) {
        if let Some(ex) = self.exchange.take() {
            let u = &mut self.units[ex.unit];
            u.owed_until = Some(ex.sent_end + u.lift.config.late_guard());
        }
        for u in &mut self.units {
            u.retry_pending = false;
            u.last_ok = None;
        }
        self.rx.clear();
        self.quiet_since = now;
        self.burst_start = now;
    }

    /// The results of polls finished since the last call.
    pub fn take_outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.outputs)
    }

    /// The exchange's time is up without its answer.
    fn end_failed(&mut self, now: Instant) {
        let Some(ex) = self.exchange.take() else {
            return;
        };
        let failure = if ex.crc {
            Failure::Crc
        } else if ex.foreign {
            Failure::Foreign
        } else if !self.rx.is_empty() {
            Failure::Truncated
        } else {
            Failure::Timeout
        };
        self.rx.clear();
        let u = &mut self.units[ex.unit];
        let stats = &u.lift.stats;
        match failure {
            Failure::Timeout => SourceStats::add(&stats.modbus_timeouts, 1),
            Failure::Truncated => SourceStats::add(&stats.modbus_truncated, 1),
            Failure::Crc => SourceStats::add(&stats.crc_errors, 1),
            Failure::Foreign => {} // counted per frame
        }
        if failure != Failure::Crc {
            // No frame shaped like its answer: it may still come.
            u.owed_until = Some(ex.sent_end + u.lift.config.late_guard());
        }
        if !ex.retry && u.failed_in_row < LOST_AFTER_POLLS {
            u.retry_pending = true;
        } else {
            SourceStats::add(&stats.polls_lost, 1);
            self.poll_done(ex.unit, now, None);
        }
    }

    /// The exchange got its answer.
    fn end_answered(&mut self, answer: Option<Answer>, now: Instant) {
        let Some(ex) = self.exchange.take() else {
            return;
        };
        let u = &self.units[ex.unit];
        let stats = &u.lift.stats;
        let reading = match answer {
            Some(Answer::Registers(regs)) => match u.lift.profile.decode(&regs) {
                Ok(reading) => Some(reading),
                Err(e) => {
                    SourceStats::add(&stats.undecodable, 1);
                    tracing::debug!(lift = %u.lift.config.id, error = %e, "lift answer does not decode");
                    None
                }
            },
            Some(Answer::Exception(code)) => {
                SourceStats::add(&stats.modbus_exceptions, 1);
                tracing::debug!(lift = %u.lift.config.id, code, "lift answered with a Modbus exception");
                None
            }
            None => {
                SourceStats::add(&stats.undecodable, 1);
                None
            }
        };
        self.poll_done(ex.unit, now, reading);
    }

    /// A poll of unit `i` is over: outputs, counters and the next due time.
    fn poll_done(&mut self, i: usize, now: Instant, reading: Option<LiftReading>) {
        let u = &mut self.units[i];
        u.retry_pending = false;
        match reading {
            Some(reading) => {
                SourceStats::add(&u.lift.stats.polls_ok, 1);
                SourceStats::add(&u.lift.stats.frames_ok, 1);
                if let Some(prev) = u.last_ok {
                    let gap = now.duration_since(prev).as_millis() as u64;
                    u.lift
                        .stats
                        .max_poll_gap_ms
                        .fetch_max(gap, Ordering::Relaxed);
                }
                u.last_ok = Some(now);
                u.failed_in_row = 0;
                self.outputs.push(Output::Reading { lift: i, reading });
            }
            None => {
                u.failed_in_row = u.failed_in_row.saturating_add(1);
                // The gap measures delay by other lifts; a lift's own failures restart it.
                u.last_ok = None;
                self.outputs.push(Output::Failed { lift: i });
            }
        }
        // Keep the rhythm, but never try to catch up with a burst after a delay. A lost lift
        // counts its second from when its poll really began (an owed answer may have held
        // it), so it costs the bus at most one request per second.
        let (base, interval) = if u.failed_in_row >= LOST_AFTER_POLLS {
            (u.due.max(u.started), u.lift.config.poll.max(LOST_LIFT_POLL))
        } else {
            (u.due, u.lift.config.poll)
        };
        u.due = (base + interval).max(now);
    }
}

#[cfg(test)]
mod tests;
