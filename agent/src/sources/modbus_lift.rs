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
//! - the port is read on a dedicated thread: every wait (the 3.5-character silence, a
//!   timeout, the next lift's due time) is one `ppoll(2)` with a nanosecond timeout on the
//!   port and on the thread's stop pipe ([`BusStop`]), which returns when bytes arrive, the
//!   time is up or the agent stops — no busy loop, no 1 ms timer ticks, no periodic wake-ups
//!   to look at a stop flag, and bytes are read as they come, idle or not. The port's
//!   descriptor is non-blocking and read and written directly (one system call each: the
//!   serial crate's own read and write first poll again and build an error value on every
//!   timeout, which costs more than the wait itself on a small gateway);
//! - just before a request goes out, whatever the kernel buffered meanwhile is read and
//!   classified (never flushed unseen); when the wait that ended a moment ago (the silence
//!   before the request) found the port empty, that wait was the look;
//! - an I/O error (adapter unplugged) closes the port, which is reopened with back-off.
//!
//! [`BusMaster`] is the same line for one-off requests (`towerlink scan`, `check`).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{ppoll, PollFd, PollFlags};
use nix::sys::time::TimeSpec;
use serialport::TTYPort;
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

/// The longest single wait of the bus thread: how often it beats its heartbeat when nothing
/// is due (as often as [`crate::service::Heartbeat::sleep`] does). A shutdown wakes it at
/// once, through [`BusStop`].
const MAX_WAIT: Duration = Duration::from_secs(1);

/// How long a request may wait for the port to take it (a transmit buffer that never drains:
/// a stuck adapter) before the port is treated as lost.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Tells a bus thread to stop, and wakes it at once from whatever it waits for.
#[derive(Debug)]
pub struct BusStop {
    set: AtomicBool,
    wake_rx: OwnedFd,
    wake_tx: OwnedFd,
}

impl BusStop {
    /// A stop not yet given (a pipe: fails only when the process is out of descriptors).
    pub fn new() -> std::io::Result<BusStop> {
        let (wake_rx, wake_tx) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        Ok(BusStop {
            set: AtomicBool::new(false),
            wake_rx,
            wake_tx,
        })
    }

    /// Stops the thread: it returns from its current wait and ends.
    pub fn stop(&self) {
        self.set.store(true, Ordering::Relaxed);
        // One byte in the pipe keeps it readable for good: every later wait returns at once.
        let _ = nix::unistd::write(&self.wake_tx, &[1]);
    }

    /// Has [`BusStop::stop`] been called?
    pub fn is_stopped(&self) -> bool {
        self.set.load(Ordering::Relaxed)
    }

    /// What a wait polls beside the port.
    fn fd(&self) -> BorrowedFd<'_> {
        self.wake_rx.as_fd()
    }

    /// Sleeps until `deadline` or the stop, whichever comes first.
    fn sleep_until(&self, deadline: Instant) {
        let mut fds = [PollFd::new(self.fd(), PollFlags::POLLIN)];
        let _ = ppoll(&mut fds, Some(timespec_until(deadline)), None);
    }
}

/// The time from now to `deadline` (zero if past), as `ppoll` takes it.
fn timespec_until(deadline: Instant) -> TimeSpec {
    TimeSpec::from_duration(deadline.saturating_duration_since(Instant::now()))
}

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

/// An open serial port with precisely timed reads.
pub struct Line {
    port: TTYPort,
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
        let port = super::serial_open::open(path, line).map_err(std::io::Error::from)?;
        // Reads and writes below never block: every wait is a ppoll of its own.
        let fd = port.as_raw_fd();
        let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(std::io::Error::from)?;
        fcntl(
            fd,
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
        )
        .map_err(std::io::Error::from)?;
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

    /// The port's descriptor (the serial crate's port only hands out the raw number).
    fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: `self.port` owns this open descriptor and closes it only when dropped, which
        // cannot happen while the returned borrow of `self` lives.
        unsafe { BorrowedFd::borrow_raw(self.port.as_raw_fd()) }
    }

    /// Waits until bytes arrive or `deadline` passes (one `ppoll`), and returns what arrived
    /// (empty at the deadline). A deadline already past only collects what is buffered.
    pub fn read_until(&mut self, deadline: Instant) -> std::io::Result<&[u8]> {
        self.wait_read(deadline, None)
    }

    /// [`Line::read_until`] that also returns (empty) as soon as `stop` is given.
    fn read_until_stopped(&mut self, deadline: Instant, stop: &BusStop) -> std::io::Result<&[u8]> {
        self.wait_read(deadline, Some(stop.fd()))
    }

    fn wait_read(
        &mut self,
        deadline: Instant,
        also: Option<BorrowedFd<'_>>,
    ) -> std::io::Result<&[u8]> {
        let ready = {
            let port = PollFd::new(self.fd(), PollFlags::POLLIN);
            let mut fds = [
                port,
                PollFd::new(also.unwrap_or(self.fd()), PollFlags::POLLIN),
            ];
            let n = if also.is_some() { 2 } else { 1 };
            match ppoll(&mut fds[..n], Some(timespec_until(deadline)), None) {
                Ok(_) => fds[0].revents().unwrap_or(PollFlags::empty()),
                Err(Errno::EINTR) => PollFlags::empty(),
                Err(e) => return Err(e.into()),
            }
        };
        if ready.contains(PollFlags::POLLNVAL) {
            return Err(std::io::Error::from(Errno::EBADF));
        }
        if ready.is_empty() {
            return Ok(&[]);
        }
        // Readable, hung up or in error: the read says which.
        match nix::unistd::read(self.port.as_raw_fd(), &mut self.chunk) {
            Ok(0) => Err(hung_up()),
            Ok(n) => Ok(&self.chunk[..n]),
            Err(Errno::EINTR | Errno::EAGAIN) => Ok(&[]),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes a request (waiting at most [`WRITE_TIMEOUT`] for the port to take it).
    pub fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
        let give_up = Instant::now() + WRITE_TIMEOUT;
        let mut done = 0;
        while done < frame.len() {
            match nix::unistd::write(self.fd(), &frame[done..]) {
                Ok(0) => return Err(hung_up()),
                Ok(n) => done += n,
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => {
                    if Instant::now() >= give_up {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "the port takes no more bytes (transmit buffer full)",
                        ));
                    }
                    let mut fds = [PollFd::new(self.fd(), PollFlags::POLLOUT)];
                    match ppoll(&mut fds, Some(timespec_until(give_up)), None) {
                        Ok(_) | Err(Errno::EINTR) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
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

impl BusLift {
    /// Lift `lift` of the configuration on its bus, with fresh counters; `None` when its
    /// register map was not resolved (`Config::parse` resolves it).
    pub fn from_config(lift: usize, config: LiftConfig) -> Option<BusLift> {
        Some(BusLift {
            lift,
            profile: config.register_map.clone()?,
            config,
            stats: SourceStats::new(),
        })
    }
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
    let stop = match BusStop::new() {
        Ok(s) => Arc::new(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the RS-485 bus thread (no pipe for its stop)");
            return;
        }
    };
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
    stop.stop();
    // The stop wakes the thread from any wait; a request in flight is abandoned.
    let _ = tokio::task::spawn_blocking(move || handle.join()).await;
}

/// Sleeps `delay` (less if stopped) beating at least every [`MAX_WAIT`]; false if stopped.
fn sleep_unless_stopped(
    delay: Duration,
    stop: &BusStop,
    heartbeat: &crate::service::Heartbeat,
) -> bool {
    let deadline = Instant::now() + delay;
    loop {
        heartbeat.beat();
        if stop.is_stopped() {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        stop.sleep_until(deadline.min(now + MAX_WAIT));
    }
}

/// The bus thread: opens the port (with back-off), polls until `stop` or an I/O error, and
/// reopens after an error.
pub fn run_blocking(source: ModbusBusSource, stop: &BusStop) {
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
    while !stop.is_stopped() {
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
    stop: &BusStop,
) -> std::io::Result<()> {
    // The last wait found the port empty and nothing happened on the bus since (only the
    // state's bookkeeping ran): a request may go out without looking again.
    let mut looked_empty = false;
    while !stop.is_stopped() {
        heartbeat.beat();
        let now = Instant::now();
        match state.next(now) {
            Next::Send { lift, frame } => {
                // What the kernel buffered since the last read is classified first; if
                // anything came, the line was not silent after all: ask again.
                if !looked_empty {
                    let pending = line.read_until(now)?;
                    if !pending.is_empty() {
                        state.on_bytes(Instant::now(), pending);
                        continue;
                    }
                }
                line.send(&frame)?;
                state.on_sent(lift, Instant::now());
                looked_empty = false;
            }
            Next::Wait(until) => {
                let bytes = line.read_until_stopped(until.min(now + MAX_WAIT), stop)?;
                looked_empty = bytes.is_empty();
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::{Read, Write};

    /// A pseudo-terminal in raw mode: the master end and the slave's path (the "adapter").
    fn pty() -> (File, PathBuf) {
        let pty = nix::pty::openpty(None, None).expect("openpty");
        let mut t = nix::sys::termios::tcgetattr(&pty.slave).expect("tcgetattr");
        nix::sys::termios::cfmakeraw(&mut t);
        nix::sys::termios::tcsetattr(&pty.slave, nix::sys::termios::SetArg::TCSANOW, &t)
            .expect("tcsetattr");
        let path = std::fs::read_link(format!("/proc/self/fd/{}", pty.slave.as_raw_fd()))
            .expect("the slave's path");
        // Keep the slave open here so the line never hangs up between opens.
        std::mem::forget(pty.slave);
        (File::from(pty.master), path)
    }

    #[test]
    fn a_line_sends_a_request_and_reads_what_arrives_as_it_arrives() {
        let (mut master, path) = pty();
        let mut line =
            Line::open(path.to_str().expect("utf-8"), 115_200, Parity::None, 1).expect("open");
        line.send(&[1, 4, 0, 0, 0, 14, 0x71, 0xCE]).expect("send");
        let mut got = [0u8; 8];
        master
            .read_exact(&mut got)
            .expect("the request on the line");
        assert_eq!(got, [1, 4, 0, 0, 0, 14, 0x71, 0xCE]);
        // Nothing on the line: the wait lasts until its deadline and returns nothing.
        let t0 = Instant::now();
        assert!(line
            .read_until(t0 + Duration::from_millis(30))
            .expect("read")
            .is_empty());
        assert!(t0.elapsed() >= Duration::from_millis(30));
        // Bytes end a long wait as they come.
        master.write_all(&[1, 4, 2]).expect("answer");
        let t0 = Instant::now();
        let bytes = line
            .read_until(t0 + Duration::from_secs(5))
            .expect("read")
            .to_vec();
        assert_eq!(bytes, [1, 4, 2]);
        assert!(t0.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn a_stop_wakes_the_bus_thread_from_its_longest_wait() {
        let (_master, path) = pty();
        let text = format!(
            "[gateway]\nid = \"t\"\n[mqtt]\nurl = \"mqtt://127.0.0.1\"\n[store]\npath = \"/tmp/unused\"\n[[lift]]\nid = \"lift-1\"\nport = \"{}\"\nbaud = 115200\nunit = 1\ntop_floor = 10\nbottom_floor = 0\nrated_speed_mm_s = 1000\npoll = \"60s\"\n",
            path.display()
        );
        let config = crate::config::Config::parse(&text, "test").expect("config");
        let lift = BusLift::from_config(0, config.lifts[0].clone()).expect("profile");
        let stats = lift.stats.clone();
        let (tx, _rx) = mpsc::channel(16);
        let source = ModbusBusSource {
            port: path,
            lifts: vec![lift],
            events: tx,
            heartbeat: crate::service::Heartbeat::detached(),
        };
        let stop = Arc::new(BusStop::new().expect("pipe"));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                run_blocking(source, &stop);
                let _ = done_tx.send(Instant::now());
            })
        };
        // The request and its retry time out (nobody answers); from then on the thread waits
        // for the next poll, a minute away, in waits of MAX_WAIT (1 s).
        let deadline = Instant::now() + Duration::from_secs(10);
        while SourceStats::get(&stats.polls_lost) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            SourceStats::get(&stats.polls_lost) > 0,
            "the poll never failed"
        );
        std::thread::sleep(Duration::from_millis(300));
        let stopped_at = Instant::now();
        stop.stop();
        let ended = done_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the thread ended");
        thread.join().expect("join");
        let took = ended.duration_since(stopped_at);
        assert!(
            took < Duration::from_millis(300),
            "the bus thread took {took:?} to notice the stop"
        );
    }
}
