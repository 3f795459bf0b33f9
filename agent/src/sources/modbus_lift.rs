//! Lift controllers on an RS-485 bus, polled over Modbus RTU (read-only, function 0x04).
//!
//! One task per bus ([`run`]) owns the port and polls every lift on it in turn, each on its
//! own schedule (`poll`), with ONE read-input-registers request per poll.
//!
//! Why a small hand-written RTU master instead of tokio-modbus: everything that matters on a
//! shared RS-485 line is timing and recovery, which tokio-modbus leaves to the caller (no
//! timeouts, a context that must be dropped after any error, no control of the inter-frame
//! silence) — and the agent needs exactly one request type, whose function code must not be
//! choosable ([`super::modbus_rtu`]). [`BusMaster`] owns all of it in one place:
//!
//! - every request runs under a timeout (default 200 ms, counted from the end of the request
//!   on the wire);
//! - before each request the line must have been silent for 3.5 character times, and the
//!   input buffer is discarded, so nothing from an earlier exchange can be read as this
//!   answer;
//! - after a timeout, a CRC error, a truncated or a foreign answer, the master waits until
//!   the line is silent and throws away what arrived — the equivalent of dropping a
//!   tokio-modbus context — so a late answer cannot desynchronise the next exchange;
//! - one retry, then the poll counts as lost; a lift already in `comm_lost` gets no retry
//!   and is polled at most once a second, so a dead controller costs the others at most one
//!   timeout per second and a silent lift never delays the others beyond its timeout;
//! - an I/O error (adapter unplugged) closes the port, which is reopened with back-off.
//!
//! tokio's timers tick in whole milliseconds, while the 3.5-character silence is 1.75 ms at
//! 115200 baud; the master sleeps to within 2 ms of the deadline and yields the rest (at most
//! ~2 ms of yielding per poll) so fast buses reach their line rate.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_serial::{SerialPort, SerialPortBuilderExt, SerialStream};

use super::modbus_rtu::{scan, Answer, Invalid, LineTiming, ReadInputRegisters};
use super::{SourceEvent, SourceStats};
use crate::backoff::Backoff;
use crate::config::{LiftConfig, Parity};
use crate::feed::now_millis;
use crate::profile::Profile;
use crate::shutdown::Shutdown;

/// Consecutive polls without a valid reading after which a lift is considered lost; from
/// then on it is polled less often and without retry.
pub const LOST_AFTER_POLLS: u32 = 3;
/// How often a lost lift is still polled (at least).
pub const LOST_LIFT_POLL: Duration = Duration::from_secs(1);

/// Why one request got no usable answer.
#[derive(Debug)]
pub enum RequestError {
    /// No byte before the timeout.
    Timeout,
    /// Bytes, but never a complete frame (truncated answer, noise).
    Truncated,
    /// A complete frame with a wrong CRC.
    Crc,
    /// A valid frame from another unit.
    WrongUnit(u8),
    /// The port failed: it must be reopened.
    Io(std::io::Error),
}

/// The Modbus RTU master of one open port.
#[derive(Debug)]
pub struct BusMaster {
    port: SerialStream,
    timing: LineTiming,
    /// When the line was last busy (a byte received, or our request finished sending).
    line_busy_until: Instant,
    buf: Vec<u8>,
}

/// Waits until `deadline` with sub-millisecond precision (see the module doc).
async fn wait_precisely(deadline: Instant) {
    // tokio's timer rounds up to its next 1 ms tick, so a sleep can overshoot by ~1 ms:
    // sleep only while more than 2 ms remain.
    let coarse = Duration::from_millis(2);
    if deadline > Instant::now() + coarse {
        tokio::time::sleep_until(deadline - coarse).await;
    }
    while Instant::now() < deadline {
        tokio::task::yield_now().await;
    }
}

impl BusMaster {
    /// Opens `path` for Modbus RTU (8 data bits).
    pub fn open(
        path: &str,
        baud: u32,
        parity: Parity,
        stop_bits: u8,
    ) -> std::io::Result<BusMaster> {
        let port = tokio_serial::new(path, baud)
            .data_bits(tokio_serial::DataBits::Eight)
            .parity(match parity {
                Parity::None => tokio_serial::Parity::None,
                Parity::Even => tokio_serial::Parity::Even,
                Parity::Odd => tokio_serial::Parity::Odd,
            })
            .stop_bits(if stop_bits == 2 {
                tokio_serial::StopBits::Two
            } else {
                tokio_serial::StopBits::One
            })
            .flow_control(tokio_serial::FlowControl::None)
            .open_native_async()
            .map_err(std::io::Error::other)?;
        Ok(BusMaster::new(
            port,
            LineTiming::new(baud, parity != Parity::None, stop_bits),
        ))
    }

    /// A master on an open port.
    pub fn new(port: SerialStream, timing: LineTiming) -> BusMaster {
        // Whatever the line buffered before we listened is of no use.
        let _ = port.clear(tokio_serial::ClearBuffer::All);
        BusMaster {
            port,
            timing,
            line_busy_until: Instant::now(),
            buf: Vec::with_capacity(512),
        }
    }

    /// The line's timing.
    pub fn timing(&self) -> LineTiming {
        self.timing
    }

    /// Sends one request and waits (at most `timeout` after it left the line) for its answer.
    pub async fn request(
        &mut self,
        req: &ReadInputRegisters,
        timeout: Duration,
    ) -> Result<Answer, RequestError> {
        wait_precisely(self.line_busy_until + self.timing.t3_5()).await;
        self.port
            .clear(tokio_serial::ClearBuffer::Input)
            .map_err(|e| RequestError::Io(std::io::Error::other(e)))?;
        self.buf.clear();
        let frame = req.to_frame();
        self.port
            .write_all(&frame)
            .await
            .map_err(RequestError::Io)?;
        let sent = Instant::now();
        // The UART is still shifting the request out when write returns.
        let on_line = self.timing.chars(frame.len());
        self.line_busy_until = sent + on_line;
        let deadline = sent + on_line + timeout;
        let mut until = deadline;
        let mut invalid = None;
        let mut chunk = [0u8; 256];
        loop {
            match tokio::time::timeout_at(until, self.port.read(&mut chunk)).await {
                Err(_) => break,
                Ok(Ok(0)) => {
                    return Err(RequestError::Io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the port hung up",
                    )))
                }
                Ok(Ok(n)) => {
                    let now = Instant::now();
                    self.line_busy_until = now;
                    self.buf.extend_from_slice(&chunk[..n]);
                    let found = scan(req, &self.buf);
                    if let Some(answer) = found.answer {
                        return Ok(answer);
                    }
                    if found.invalid.is_some() {
                        // A complete frame that is not ours: the answer is not coming behind
                        // it unless bytes keep arriving; stop at the next silence.
                        invalid = found.invalid;
                        until = deadline.min(now + self.silence());
                    }
                    if self.buf.len() > 4096 {
                        // A babbling line: keep the tail, which may hold the answer's start.
                        let keep = self.buf.len() - req.answer_len();
                        self.buf.drain(..keep);
                    }
                }
                Ok(Err(e)) => return Err(RequestError::Io(e)),
            }
        }
        let error = match invalid {
            Some(Invalid::Crc) => RequestError::Crc,
            Some(Invalid::WrongUnit(u)) => RequestError::WrongUnit(u),
            None if self.buf.is_empty() => RequestError::Timeout,
            None => RequestError::Truncated,
        };
        self.resync(timeout).await?;
        Err(error)
    }

    /// How long the line must stay quiet before a frame is over: t3.5, and at least 2 ms
    /// because the OS delivers bytes in chunks.
    fn silence(&self) -> Duration {
        self.timing.t3_5().max(Duration::from_millis(2))
    }

    /// After a failed exchange: read and drop everything until the line has been silent for
    /// [`Self::silence`] (at most `limit`), so a late answer is gone before the next request.
    async fn resync(&mut self, limit: Duration) -> Result<(), RequestError> {
        let give_up = Instant::now() + limit;
        let mut chunk = [0u8; 256];
        loop {
            let quiet_until = (Instant::now() + self.silence()).min(give_up);
            match tokio::time::timeout_at(quiet_until, self.port.read(&mut chunk)).await {
                Err(_) => break,
                Ok(Ok(0)) => {
                    return Err(RequestError::Io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the port hung up",
                    )))
                }
                Ok(Ok(_)) => {
                    self.line_busy_until = Instant::now();
                    if Instant::now() >= give_up {
                        break;
                    }
                }
                Ok(Err(e)) => return Err(RequestError::Io(e)),
            }
        }
        self.buf.clear();
        Ok(())
    }
}

/// One lift on a bus.
#[derive(Debug, Clone)]
pub struct BusLift {
    /// Index in `Config::lifts` (what events carry).
    pub lift: usize,
    /// Its configuration.
    pub config: LiftConfig,
    /// Its register map.
    pub profile: Profile,
    /// Its counters.
    pub stats: Arc<SourceStats>,
}

/// Everything a bus task needs.
#[derive(Debug)]
pub struct ModbusBusSource {
    /// The port.
    pub port: PathBuf,
    /// The lifts on it (same line settings, distinct units).
    pub lifts: Vec<BusLift>,
    /// Where readings go.
    pub events: mpsc::Sender<SourceEvent>,
    /// Proof of life for the service watchdog.
    pub heartbeat: crate::service::Heartbeat,
}

/// Outcome of one poll, for the caller's counters and schedule.
#[derive(Debug, PartialEq, Eq)]
pub enum PollOutcome {
    /// A valid reading was delivered.
    Ok,
    /// No valid reading (lost, exception, undecodable).
    Failed,
}

/// The polling state of one lift.
#[derive(Debug)]
struct LiftSchedule {
    due: Instant,
    failed_in_row: u32,
    last_ok: Option<Instant>,
}

/// Polls one lift once (with at most one retry); counts everything in its stats and sends
/// the reading or the failure to the pipeline. `Err` means the port must be reopened.
pub async fn poll_lift(
    master: &mut BusMaster,
    lift: &BusLift,
    retry: bool,
    events: &mpsc::Sender<SourceEvent>,
) -> Result<PollOutcome, std::io::Error> {
    let stats = &lift.stats;
    let req = ReadInputRegisters {
        unit: lift.config.unit,
        start: lift.profile.start,
        count: lift.profile.count,
    };
    let attempts = if retry { 2 } else { 1 };
    let mut outcome = None;
    for attempt in 0..attempts {
        if attempt > 0 {
            SourceStats::add(&stats.modbus_retries, 1);
        }
        match master.request(&req, lift.config.timeout).await {
            Ok(answer) => {
                outcome = Some(answer);
                break;
            }
            Err(RequestError::Io(e)) => return Err(e),
            Err(RequestError::Timeout) => SourceStats::add(&stats.modbus_timeouts, 1),
            Err(RequestError::Truncated) => SourceStats::add(&stats.modbus_truncated, 1),
            Err(RequestError::Crc) => SourceStats::add(&stats.crc_errors, 1),
            Err(RequestError::WrongUnit(_)) => SourceStats::add(&stats.foreign_frames, 1),
        }
    }
    let ts = now_millis();
    let send = |ev: SourceEvent| {
        if events.try_send(ev).is_err() {
            SourceStats::add(&stats.dropped_events, 1);
        }
    };
    let failed = SourceEvent::LiftPollFailed {
        lift: lift.lift,
        ts,
    };
    match outcome {
        None => {
            SourceStats::add(&stats.polls_lost, 1);
            send(failed);
            Ok(PollOutcome::Failed)
        }
        Some(Answer::Exception(code)) => {
            SourceStats::add(&stats.modbus_exceptions, 1);
            tracing::debug!(lift = %lift.config.id, code, "lift answered with a Modbus exception");
            send(failed);
            Ok(PollOutcome::Failed)
        }
        Some(Answer::Registers(regs)) => match lift.profile.decode(&regs) {
            Ok(reading) => {
                SourceStats::add(&stats.polls_ok, 1);
                SourceStats::add(&stats.frames_ok, 1);
                stats
                    .last_frame_ms
                    .store(ts.max(0) as u64, Ordering::Relaxed);
                send(SourceEvent::LiftReading {
                    lift: lift.lift,
                    ts,
                    reading,
                });
                Ok(PollOutcome::Ok)
            }
            Err(e) => {
                SourceStats::add(&stats.undecodable, 1);
                tracing::debug!(lift = %lift.config.id, error = %e, "lift answer does not decode");
                send(failed);
                Ok(PollOutcome::Failed)
            }
        },
    }
}

/// Runs one bus until shutdown.
pub async fn run(source: ModbusBusSource, mut shutdown: Shutdown) {
    let ModbusBusSource {
        port,
        lifts,
        events,
        heartbeat,
    } = source;
    let Some(first) = lifts.first() else { return };
    let (baud, parity, stop_bits) = (
        first.config.baud,
        first.config.parity,
        first.config.stop_bits,
    );
    let path = port.display().to_string();
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut logged_open_error = false;
    let now = Instant::now();
    let mut schedule: Vec<LiftSchedule> = lifts
        .iter()
        .map(|_| LiftSchedule {
            due: now,
            failed_in_row: 0,
            last_ok: None,
        })
        .collect();
    let set_link = |up: bool| {
        for l in &lifts {
            l.stats.link_up.store(up, Ordering::Relaxed);
        }
    };

    while !shutdown.is_shutdown() {
        let mut master = match BusMaster::open(&path, baud, parity, stop_bits) {
            Ok(m) => m,
            Err(e) => {
                for l in &lifts {
                    SourceStats::add(&l.stats.io_errors, 1);
                }
                if !logged_open_error {
                    tracing::warn!(port = %path, error = %e, "cannot open RS-485 port; retrying with back-off");
                    logged_open_error = true;
                }
                heartbeat.sleep(backoff.next_delay(), &mut shutdown).await;
                continue;
            }
        };
        logged_open_error = false;
        for l in &lifts {
            SourceStats::add(&l.stats.opens, 1);
        }
        set_link(true);
        tracing::info!(port = %path, baud, lifts = lifts.len(), "RS-485 bus open");
        let opened_at = Instant::now();

        let why = loop {
            // The lift whose poll is due first; ties go to the lower index (config order).
            let Some((i, due)) = schedule
                .iter()
                .enumerate()
                .map(|(i, s)| (i, s.due))
                .min_by_key(|&(i, due)| (due, i))
            else {
                break None;
            };
            heartbeat.beat();
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                _ = shutdown.recv() => break None,
            }
            let lift = &lifts[i];
            let sched = &mut schedule[i];
            let lost = sched.failed_in_row >= LOST_AFTER_POLLS;
            let result = tokio::select! {
                r = poll_lift(&mut master, lift, !lost, &events) => r,
                _ = shutdown.recv() => break None,
            };
            let now = Instant::now();
            match result {
                Ok(PollOutcome::Ok) => {
                    if let Some(prev) = sched.last_ok {
                        let gap = now.duration_since(prev).as_millis() as u64;
                        lift.stats.max_poll_gap_ms.fetch_max(gap, Ordering::Relaxed);
                    }
                    sched.last_ok = Some(now);
                    sched.failed_in_row = 0;
                }
                Ok(PollOutcome::Failed) => {
                    sched.failed_in_row = sched.failed_in_row.saturating_add(1);
                    // The gap measures delay by other lifts; a lift's own failures restart it.
                    sched.last_ok = None;
                }
                Err(e) => break Some(e),
            }
            let interval = if sched.failed_in_row >= LOST_AFTER_POLLS {
                lift.config.poll.max(LOST_LIFT_POLL)
            } else {
                lift.config.poll
            };
            // Keep the rhythm, but never try to catch up with a burst after a delay.
            sched.due = (due + interval).max(now);
        };
        set_link(false);
        drop(master);
        let Some(e) = why else { break };
        for l in &lifts {
            SourceStats::add(&l.stats.io_errors, 1);
        }
        for s in &mut schedule {
            s.last_ok = None;
        }
        tracing::warn!(port = %path, error = %e, "RS-485 port lost; reopening with back-off");
        if opened_at.elapsed() > Duration::from_secs(60) {
            backoff.reset();
        }
        heartbeat.sleep(backoff.next_delay(), &mut shutdown).await;
    }
    tracing::debug!(port = %path, "modbus bus stopped");
}

#[cfg(test)]
mod tests {
    use super::super::modbus_rtu::push_crc;
    use super::*;

    /// A minimal slave on the other end of a pseudo-terminal pair: answers each request
    /// according to `script` (one entry per request received).
    async fn slave(mut port: SerialStream, script: Vec<Option<Vec<u8>>>) -> Vec<Vec<u8>> {
        let mut requests = Vec::new();
        for reply in script {
            let mut req = [0u8; 8];
            if port.read_exact(&mut req).await.is_err() {
                break;
            }
            requests.push(req.to_vec());
            if let Some(bytes) = reply {
                if port.write_all(&bytes).await.is_err() {
                    break;
                }
            }
        }
        requests
    }

    fn answer(unit: u8, regs: &[u16]) -> Vec<u8> {
        let mut f = vec![unit, 0x04, (regs.len() * 2) as u8];
        for r in regs {
            f.extend_from_slice(&r.to_be_bytes());
        }
        push_crc(&mut f);
        f
    }

    fn generic_lift(unit: u8) -> BusLift {
        let text = format!(
            "[gateway]\nid = \"g\"\n[mqtt]\nurl = \"mqtt://127.0.0.1\"\n[store]\npath = \"/tmp/x\"\n[[lift]]\nid = \"lift-1\"\nport = \"/dev/null\"\nunit = {unit}\ntop_floor = 10\nbottom_floor = 0\nrated_speed_mm_s = 1000\ntimeout = \"50ms\"\n"
        );
        let config = crate::config::Config::parse(&text, "t").expect("config");
        let lift = config.lifts[0].clone();
        BusLift {
            lift: 0,
            profile: lift.register_map.clone().expect("profile"),
            config: lift,
            stats: SourceStats::new(),
        }
    }

    #[tokio::test]
    async fn a_silent_lift_is_retried_once_then_lost_and_a_crc_error_is_retried() {
        let (master_port, slave_port) = SerialStream::pair().expect("pty pair");
        let lift = generic_lift(5);
        let mut regs = [0u16; 14];
        regs[1] = 7;
        let good = answer(5, &regs);
        // 1st request: silence. 2nd (the retry): silence. 3rd: a CRC-broken answer, 4th
        // (retry): the good one.
        let mut bad = good.clone();
        bad[5] ^= 0xFF;
        let script = vec![None, None, Some(bad), Some(good.clone())];
        let slave = tokio::spawn(slave(slave_port, script));
        let mut master = BusMaster::new(master_port, LineTiming::new(115_200, false, 1));
        let (tx, mut rx) = mpsc::channel(16);

        let out = poll_lift(&mut master, &lift, true, &tx).await.expect("io");
        assert_eq!(out, PollOutcome::Failed);
        assert_eq!(SourceStats::get(&lift.stats.modbus_timeouts), 2);
        assert_eq!(SourceStats::get(&lift.stats.polls_lost), 1);
        assert!(matches!(
            rx.try_recv(),
            Ok(SourceEvent::LiftPollFailed { lift: 0, .. })
        ));

        let out = poll_lift(&mut master, &lift, true, &tx).await.expect("io");
        assert_eq!(out, PollOutcome::Ok);
        assert_eq!(SourceStats::get(&lift.stats.crc_errors), 1);
        assert_eq!(SourceStats::get(&lift.stats.modbus_retries), 2);
        match rx.try_recv() {
            Ok(SourceEvent::LiftReading { reading, .. }) => assert_eq!(reading.status.floor, 7),
            other => panic!("expected a reading, got {other:?}"),
        }
        drop(master);
        let requests = slave.await.expect("slave");
        assert_eq!(requests.len(), 4);
        for r in requests {
            assert_eq!(
                &r[..6],
                &[5, 0x04, 0, 0, 0, 14],
                "only function 4 is ever sent"
            );
        }
    }
}
