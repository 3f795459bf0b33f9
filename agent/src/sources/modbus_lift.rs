//! Lift controllers on an RS-485 bus, polled over Modbus RTU (read-only, function 0x04).
//!
//! One thread per bus ([`run`] starts it, [`run_blocking`] is its body) owns the port and
//! polls every lift on it in turn, each on its own schedule (`poll`), with ONE
//! read-input-registers request per poll.
//!
//! Why a small hand-written RTU master instead of tokio-modbus: everything that matters on a
//! shared RS-485 line is timing and recovery, which tokio-modbus leaves to the caller (no
//! timeouts, a context that must be dropped after any error, no control of the inter-frame
//! silence) — and the agent needs exactly one request type, whose function code must not be
//! choosable ([`super::modbus_rtu`]).
//!
//! The protocol (schedule, owed answers after a timeout, retries, what every received byte
//! means, counters) is [`super::modbus_bus::BusState`], which does no I/O; its module doc
//! states the late-answer guarantee. This module only moves bytes and time:
//!
//! - the port is read with blocking I/O on a dedicated thread: every wait (the 3.5-character
//!   silence, a timeout, the next lift's due time) is one `ppoll(2)` with a nanosecond
//!   timeout on the port, which returns when bytes arrive or the time is up — no busy loop,
//!   no 1 ms timer ticks, and bytes are read as they come, idle or not;
//! - just before a request goes out, whatever the kernel buffered meanwhile is read and
//!   classified (never flushed unseen);
//! - an I/O error (adapter unplugged) closes the port, which is reopened with back-off.
//!
//! [`BusMaster`] is the same line for one-off requests (`towerlink scan`, `check`).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_serial::SerialPort;

use super::config::{LiftConfig, Parity};
use super::modbus_bus::{BusState, Next, Output};
pub use super::modbus_bus::{LOST_AFTER_POLLS, LOST_LIFT_POLL};
use super::modbus_rtu::{
    frames, has_corrupt_answer, Answer, LineTiming, ReadInputRegisters, REQUEST_LEN,
};
use super::{SourceEvent, SourceStats};
use crate::backoff::Backoff;
use crate::feed::now_millis;
use crate::profile::Profile;
use crate::shutdown::Shutdown;

/// The longest single wait of the bus thread: how soon it notices a shutdown and beats its
/// heartbeat when nothing is due.
const MAX_WAIT: Duration = Duration::from_millis(200);

/// Why one request got no usable answer.
#[derive(Debug)]
pub enum RequestError {
    /// No byte before the timeout.
    Timeout,
    /// Bytes, but never a complete frame (truncated answer, noise).
    Truncated,
    /// A complete frame with a wrong CRC.
    Crc,
    /// A valid frame from another unit (or of another shape).
    WrongUnit(u8),
    /// The port failed: it must be reopened.
    Io(std::io::Error),
}

/// An open serial port with blocking, precisely timed reads.
pub struct Line {
    port: Box<dyn SerialPort>,
    timing: LineTiming,
    chunk: [u8; 256],
}

impl std::fmt::Debug for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Line")
            .field("port", &self.port.name())
            .field("timing", &self.timing)
            .finish()
    }
}

fn hung_up() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the port hung up")
}

impl Line {
    /// Opens `path` at these line settings (8 data bits, no flow control).
    pub fn open(path: &str, baud: u32, parity: Parity, stop_bits: u8) -> std::io::Result<Line> {
        let line = super::serial_open::LineSettings {
            baud,
            parity: match parity {
                Parity::None => tokio_serial::Parity::None,
                Parity::Even => tokio_serial::Parity::Even,
                Parity::Odd => tokio_serial::Parity::Odd,
            },
            stop_bits: if stop_bits == 2 {
                tokio_serial::StopBits::Two
            } else {
                tokio_serial::StopBits::One
            },
        };
        let port: Box<dyn SerialPort> =
            Box::new(super::serial_open::open(path, line).map_err(std::io::Error::from)?);
        // Whatever the line buffered before we listened answers no request of ours.
        let _ = port.clear(tokio_serial::ClearBuffer::All);
        Ok(Line {
            port,
            timing: LineTiming::new(baud, parity != Parity::None, stop_bits),
            chunk: [0; 256],
        })
    }

    /// The line's timing.
    pub fn timing(&self) -> LineTiming {
        self.timing
    }

    /// Waits until bytes arrive or `deadline` passes (one `ppoll`), and returns what arrived
    /// (empty at the deadline). A deadline already past only collects what is buffered.
    pub fn read_until(&mut self, deadline: Instant) -> std::io::Result<&[u8]> {
        let wait = deadline.saturating_duration_since(Instant::now());
        self.port.set_timeout(wait).map_err(std::io::Error::from)?;
        match self.port.read(&mut self.chunk) {
            Ok(0) => Err(hung_up()),
            Ok(n) => Ok(&self.chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                        | std::io::ErrorKind::WouldBlock
                ) =>
            {
                Ok(&[])
            }
            Err(e) => Err(e),
        }
    }

    /// Writes a request.
    pub fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
        self.port
            .set_timeout(Duration::from_secs(1))
            .map_err(std::io::Error::from)?;
        self.port.write_all(frame)
    }

    /// One request outside a bus schedule (scan, check): waits for 3.5 characters of silence
    /// (dropping what arrives, at most `timeout`), sends, and waits at most `timeout` after
    /// the request left the line for a frame that answers it.
    pub fn exchange(
        &mut self,
        req: &ReadInputRegisters,
        timeout: Duration,
    ) -> Result<Answer, RequestError> {
        let t3_5 = self.timing.t3_5();
        let give_up = Instant::now() + timeout;
        let mut quiet_from = Instant::now();
        loop {
            let until = (quiet_from + t3_5).min(give_up);
            if Instant::now() >= until {
                break;
            }
            if !self.read_until(until).map_err(RequestError::Io)?.is_empty() {
                quiet_from = Instant::now();
            }
        }
        self.send(&req.to_frame()).map_err(RequestError::Io)?;
        let deadline = Instant::now() + self.timing.chars(REQUEST_LEN) + timeout;
        let silence = t3_5.max(Duration::from_millis(2));
        let mut until = deadline;
        let mut buf: Vec<u8> = Vec::new();
        let (mut crc, mut foreign) = (false, None);
        while Instant::now() < until {
            let bytes = self.read_until(until).map_err(RequestError::Io)?;
            if bytes.is_empty() {
                continue;
            }
            buf.extend_from_slice(bytes);
            for f in frames(&buf) {
                if f.answers(req) {
                    let answer = buf.get(f.start..f.start + f.len).and_then(|b| f.decode(b));
                    return answer.ok_or(RequestError::Truncated);
                }
                foreign = Some(f.unit);
            }
            crc |= has_corrupt_answer(req, &buf);
            if crc || foreign.is_some() {
                until = deadline.min(Instant::now() + silence);
            }
            if buf.len() > 4096 {
                let keep = buf.len() - req.answer_len();
                buf.drain(..keep);
            }
        }
        Err(match foreign {
            _ if crc => RequestError::Crc,
            Some(u) => RequestError::WrongUnit(u),
            None if buf.is_empty() => RequestError::Timeout,
            None => RequestError::Truncated,
        })
    }
}

/// A Modbus RTU master for one-off requests from async code (`towerlink scan`, `check`): the
/// blocking [`Line`] runs on tokio's blocking pool.
#[derive(Debug)]
pub struct BusMaster {
    line: Option<Line>,
}

impl BusMaster {
    /// Opens `path` at these line settings (8 data bits, no flow control).
    pub fn open(
        path: &str,
        baud: u32,
        parity: Parity,
        stop_bits: u8,
    ) -> std::io::Result<BusMaster> {
        Ok(BusMaster {
            line: Some(Line::open(path, baud, parity, stop_bits)?),
        })
    }

    /// Sends one request and waits (at most `timeout` after it left the line) for its answer.
    pub async fn request(
        &mut self,
        req: &ReadInputRegisters,
        timeout: Duration,
    ) -> Result<Answer, RequestError> {
        let mut line = self.line.take().ok_or_else(|| {
            RequestError::Io(std::io::Error::other(
                "the port was lost by an earlier request",
            ))
        })?;
        let req = *req;
        let (line, result) = tokio::task::spawn_blocking(move || {
            let result = line.exchange(&req, timeout);
            (line, result)
        })
        .await
        .map_err(|e| RequestError::Io(std::io::Error::other(e)))?;
        self.line = Some(line);
        result
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

/// Everything a bus thread needs.
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

/// Runs one bus until shutdown: the polling runs on its own thread ([`run_blocking`]).
pub async fn run(source: ModbusBusSource, mut shutdown: Shutdown) {
    let stop = Arc::new(AtomicBool::new(false));
    let name = source
        .port
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let thread_stop = stop.clone();
    // "modbus <port>" (a thread name is at most 15 bytes).
    let thread_name: String = format!("modbus {name}").chars().take(15).collect();
    let handle = match std::thread::Builder::new()
        .name(thread_name)
        .spawn(move || run_blocking(source, &thread_stop))
    {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the RS-485 bus thread");
            return;
        }
    };
    shutdown.recv().await;
    stop.store(true, Ordering::Relaxed);
    // The thread notices within MAX_WAIT.
    let _ = tokio::task::spawn_blocking(move || handle.join()).await;
}

/// Sleeps `delay` in steps of at most [`MAX_WAIT`], beating; false if `stop` was set.
fn sleep_unless_stopped(
    delay: Duration,
    stop: &AtomicBool,
    heartbeat: &crate::service::Heartbeat,
) -> bool {
    let deadline = Instant::now() + delay;
    loop {
        heartbeat.beat();
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        std::thread::sleep((deadline - now).min(MAX_WAIT));
    }
}

/// The bus thread: opens the port (with back-off), polls until `stop` or an I/O error, and
/// reopens after an error.
pub fn run_blocking(source: ModbusBusSource, stop: &AtomicBool) {
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
    let mut state = BusState::new(
        lifts.clone(),
        LineTiming::new(baud, parity != Parity::None, stop_bits),
        Instant::now(),
    );
    let set_link = |up: bool| {
        for l in &lifts {
            l.stats.link_up.store(up, Ordering::Relaxed);
        }
    };
    while !stop.load(Ordering::Relaxed) {
        let mut line = match Line::open(&path, baud, parity, stop_bits) {
            Ok(l) => l,
            Err(e) => {
                for l in &lifts {
                    SourceStats::add(&l.stats.io_errors, 1);
                }
                if !logged_open_error {
                    tracing::warn!(port = %path, error = %e, "cannot open RS-485 port; retrying with back-off");
                    logged_open_error = true;
                }
                if !sleep_unless_stopped(backoff.next_delay(), stop, &heartbeat) {
                    break;
                }
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
        state.on_reopened(opened_at);
        let result = serve(&mut line, &mut state, &events, &heartbeat, stop);
        drop(line);
        // A clean stop leaves the link as it was: the last health says the bus was live.
        let Err(e) = result else { break };
        set_link(false);
        for l in &lifts {
            SourceStats::add(&l.stats.io_errors, 1);
        }
        tracing::warn!(port = %path, error = %e, "RS-485 port lost; reopening with back-off");
        if opened_at.elapsed() > Duration::from_secs(60) {
            backoff.reset();
        }
        if !sleep_unless_stopped(backoff.next_delay(), stop, &heartbeat) {
            break;
        }
    }
    tracing::debug!(port = %path, "modbus bus stopped");
}

/// Polls on an open line until `stop` (Ok) or an I/O error (Err: reopen).
fn serve(
    line: &mut Line,
    state: &mut BusState,
    events: &mpsc::Sender<SourceEvent>,
    heartbeat: &crate::service::Heartbeat,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    while !stop.load(Ordering::Relaxed) {
        heartbeat.beat();
        let now = Instant::now();
        match state.next(now) {
            Next::Send { lift, frame } => {
                // What the kernel buffered since the last read is classified first; if
                // anything came, the line was not silent after all: ask again.
                let pending = line.read_until(now)?;
                if !pending.is_empty() {
                    state.on_bytes(Instant::now(), pending);
                    continue;
                }
                line.send(&frame)?;
                state.on_sent(lift, Instant::now());
            }
            Next::Wait(until) => {
                let bytes = line.read_until(until.min(now + MAX_WAIT))?;
                if !bytes.is_empty() {
                    state.on_bytes(Instant::now(), bytes);
                }
            }
        }
        for out in state.take_outputs() {
            forward(state, out, events);
        }
    }
    Ok(())
}

/// Hands a finished poll to the pipeline, never waiting on it.
fn forward(state: &BusState, out: Output, events: &mpsc::Sender<SourceEvent>) {
    let index = match &out {
        Output::Reading { lift, .. } | Output::Failed { lift } => *lift,
    };
    let Some(lift) = state.lift(index) else {
        return;
    };
    let ts = now_millis();
    let event = match out {
        Output::Reading { reading, .. } => {
            lift.stats
                .last_frame_ms
                .store(ts.max(0) as u64, Ordering::Relaxed);
            SourceEvent::LiftReading {
                lift: lift.lift,
                ts,
                reading,
            }
        }
        Output::Failed { .. } => SourceEvent::LiftPollFailed {
            lift: lift.lift,
            ts,
        },
    };
    if events.try_send(event).is_err() {
        SourceStats::add(&lift.stats.dropped_events, 1);
    }
}
