//! No answer from the past: the agent's RS-485 bus thread against a hand-written Modbus RTU
//! slave on a pseudo-terminal that answers late — 1.2x, 1.5x and 3x the timeout — with
//! poisoned registers (floor 99, fire service, fault 666, overspeed, door open while moving),
//! then on time with good ones. The poisoned reading must never reach the pipeline, with a
//! retry (a healthy lift's first request times out) and without one (a lift in `comm_lost`,
//! polled once a second without retry), and the counters must say what happened.
//!
//! The slave is independent of the agent's Modbus code: its frames are built here from the
//! Modbus spec and the elevator profile, with a CRC-16 computed bit by bit as the spec's
//! 6.2.2 describes it.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
use towerlink_agent::config::Config;
use towerlink_agent::feed::LiftMode;
use towerlink_agent::service::Heartbeat;
use towerlink_agent::sources::modbus_lift::{run_blocking, BusLift, BusStop, ModbusBusSource};
use towerlink_agent::sources::{SourceEvent, SourceStats};

const UNIT: u8 = 4;
const TIMEOUT: Duration = Duration::from_millis(100);

/// CRC-16/MODBUS bit by bit (Modbus over serial line, 6.2.2): init 0xFFFF, XOR each byte in,
/// eight shifts right, XOR 0xA001 when the bit shifted out is 1. Sent low byte first.
fn crc_by_the_book(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in bytes {
        crc ^= u16::from(b);
        for _ in 0..8 {
            let out = crc & 1;
            crc >>= 1;
            if out == 1 {
                crc ^= 0xA001;
            }
        }
    }
    crc
}

fn with_crc(mut frame: Vec<u8>) -> Vec<u8> {
    let crc = crc_by_the_book(&frame);
    frame.push((crc & 0xFF) as u8);
    frame.push((crc >> 8) as u8);
    frame
}

/// The 14 input registers of the generic profile (elevator-modbus-v1).
#[allow(clippy::too_many_arguments)]
fn registers(
    mode: u16,
    floor: i16,
    direction: u16,
    door: u16,
    flags: u16,
    speed: u16,
    load: u16,
    fault: u16,
) -> [u16; 14] {
    [
        mode,
        floor as u16,
        direction,
        door,
        flags,
        speed,
        load,
        fault,
        0,
        12_000, // position, high then low word
        0,
        4_321, // run count
        0,
        8_765, // door cycles
    ]
}

/// Fire service, floor 99 of a 10-floor tower, running up with the door open and its lock
/// open, 5 m/s (overspeed), 150 % load with the overload flag, fault 666.
fn poisoned() -> [u16; 14] {
    // bit0 running, bit3 power ok, bit4 safety closed, bit7 overload.
    registers(2, 99, 1, 2, 0b1001_1001, 5_000, 150, 666)
}

/// Parked at floor 3, doors closed, in the door zone, power, safety and lock fine.
fn good() -> [u16; 14] {
    // bit1 door zone, bit3 power ok, bit4 safety closed, bit5 lock closed.
    registers(0, 3, 0, 0, 0b0011_1010, 0, 0, 0)
}

fn answer(regs: &[u16; 14]) -> Vec<u8> {
    let mut f = vec![UNIT, 0x04, 28];
    for r in regs {
        f.extend_from_slice(&r.to_be_bytes());
    }
    with_crc(f)
}

/// What the slave does with one request.
#[derive(Debug, Clone, Copy)]
enum Reply {
    /// Nothing at all.
    Silent,
    /// The poisoned registers, this long after the request arrived.
    Late(Duration),
}

#[derive(Debug, Default)]
struct SlaveLog {
    /// When each valid request arrived.
    requests: Vec<Instant>,
    /// When each poisoned answer was written.
    poisoned: Vec<Instant>,
    /// Requests with a function other than 0x04, or a bad CRC.
    bad_requests: u64,
}

/// A pseudo-terminal whose slave side the agent opens by path, as it opens hardware.
fn pty() -> (File, PathBuf, OwnedFd) {
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let mut termios = tcgetattr(&pty.slave).expect("tcgetattr");
    cfmakeraw(&mut termios);
    tcsetattr(&pty.slave, SetArg::TCSANOW, &termios).expect("tcsetattr");
    let path =
        std::fs::read_link(format!("/proc/self/fd/{}", pty.slave.as_raw_fd())).expect("pty path");
    let flags =
        OFlag::from_bits_truncate(fcntl(pty.master.as_raw_fd(), FcntlArg::F_GETFL).expect("getfl"));
    fcntl(
        pty.master.as_raw_fd(),
        FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK),
    )
    .expect("setfl");
    // The slave fd stays open for the test's life, so the master never reads EIO meanwhile.
    (File::from(pty.master), path, pty.slave)
}

/// The slave: notes every request the moment it arrives and answers them in order, one at a
/// time (a late answer holds up the answers behind it, as a busy controller does): the first
/// requests as `script` says, then on time with the good registers.
fn slave(mut master: File, script: Vec<Reply>, log: Arc<Mutex<SlaveLog>>, stop: Arc<AtomicBool>) {
    let mut rx: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 64];
    let mut script = script.into_iter();
    // Answers to write: (when, bytes, poisoned).
    let mut queue: std::collections::VecDeque<(Instant, Vec<u8>, bool)> = Default::default();
    while !stop.load(Ordering::Relaxed) {
        if let Ok(n) = master.read(&mut chunk) {
            rx.extend_from_slice(&chunk[..n]);
        }
        let now = Instant::now();
        while rx.len() >= 8 {
            let frame: Vec<u8> = rx.drain(..8).collect();
            let crc = crc_by_the_book(&frame[..6]);
            let ok = frame[6] == (crc & 0xFF) as u8 && frame[7] == (crc >> 8) as u8;
            let mut log = log.lock().expect("log");
            if !ok || frame[..6] != [UNIT, 0x04, 0, 0, 0, 14] {
                log.bad_requests += 1;
                continue;
            }
            log.requests.push(now);
            let after_previous = queue.back().map_or(now, |q| q.0);
            match script.next() {
                Some(Reply::Silent) => {}
                Some(Reply::Late(after)) => {
                    queue.push_back(((now + after).max(after_previous), answer(&poisoned()), true))
                }
                None => queue.push_back((now.max(after_previous), answer(&good()), false)),
            }
        }
        while queue.front().is_some_and(|q| q.0 <= Instant::now()) {
            if let Some((_, bytes, poison)) = queue.pop_front() {
                let _ = master.write_all(&bytes);
                if poison {
                    if let Ok(mut l) = log.lock() {
                        l.poisoned.push(Instant::now());
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

struct Run {
    stats: Arc<SourceStats>,
    events: Vec<SourceEvent>,
    log: SlaveLog,
}

/// Runs the agent's bus thread against the slave until `done` holds (at most 20 s).
fn run(script: Vec<Reply>, done: impl Fn(&SourceStats, &[SourceEvent]) -> bool) -> Run {
    let (master, path, _slave_fd) = pty();
    let text = format!(
        "[gateway]\nid = \"t\"\n[mqtt]\nurl = \"mqtt://127.0.0.1\"\n[store]\npath = \"/tmp/unused\"\n[[lift]]\nid = \"lift-4\"\nport = \"{}\"\nbaud = 115200\nunit = {UNIT}\ntop_floor = 10\nbottom_floor = -2\nrated_speed_mm_s = 1000\npoll = \"100ms\"\ntimeout = \"100ms\"\n",
        path.display()
    );
    let config = Config::parse(&text, "test").expect("config");
    let lift = BusLift::from_config(0, config.lifts[0].clone()).expect("profile");
    let stats = lift.stats.clone();
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(SlaveLog::default()));
    let slave_thread = {
        let (log, stop) = (log.clone(), stop.clone());
        std::thread::spawn(move || slave(master, script, log, stop))
    };
    let source = ModbusBusSource {
        port: path,
        lifts: vec![lift],
        events: tx,
        heartbeat: Heartbeat::detached(),
    };
    let bus_stop = Arc::new(BusStop::new().expect("stop pipe"));
    let bus_thread = {
        let stop = bus_stop.clone();
        std::thread::spawn(move || run_blocking(source, &stop))
    };
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done(&stats, &events) && Instant::now() < deadline {
        while let Ok(ev) = rx.try_recv() {
            events.push(ev);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bus_stop.stop();
    stop.store(true, Ordering::Relaxed);
    bus_thread.join().expect("bus thread");
    slave_thread.join().expect("slave thread");
    while let Ok(ev) = rx.try_recv() {
        events.push(ev);
    }
    let log = std::mem::take(&mut *log.lock().expect("log"));
    Run { stats, events, log }
}

fn readings(events: &[SourceEvent]) -> Vec<&towerlink_agent::profile::LiftReading> {
    events
        .iter()
        .filter_map(|e| match e {
            SourceEvent::LiftReading { reading, .. } => Some(reading),
            _ => None,
        })
        .collect()
}

fn get(c: &std::sync::atomic::AtomicU64) -> u64 {
    SourceStats::get(c)
}

/// Nothing poisoned reached the pipeline, a good reading did, and no request went to the
/// slave while it still owed its late answer.
fn check(run: &Run, what: &str) {
    let all = readings(&run.events);
    for r in &all {
        let s = &r.status;
        assert!(
            s.floor != 99
                && s.mode != LiftMode::FireService
                && s.fault_code != 666
                && s.speed_mm_s != 5_000
                && !r.overload,
            "{what}: a poisoned reading reached the pipeline: {r:?}"
        );
    }
    assert!(
        all.iter()
            .any(|r| r.status.floor == 3 && r.status.mode == LiftMode::Normal),
        "{what}: no good reading: {:?}",
        run.events
    );
    assert_eq!(
        run.log.bad_requests, 0,
        "{what}: only function 4 is ever sent"
    );
    // Every late answer was counted as one, none as a reading. On a loaded machine a good
    // answer can also be scheduled past the timeout: that one is late too, and counted so
    // (it never became a reading either: polls_ok below), hence at least, not exactly.
    let late = get(&run.stats.late_answers);
    assert!(
        late >= run.log.poisoned.len() as u64,
        "{what}: {late} late answers counted, {} poisoned answers sent",
        run.log.poisoned.len()
    );
    assert_eq!(get(&run.stats.polls_ok), all.len() as u64, "{what}");
    // The unit was sent nothing between a late request and its (late) answer: the last
    // request before each poisoned answer is the one it answers, a timeout or more earlier.
    for &p in &run.log.poisoned {
        let last = run.log.requests.iter().filter(|&&r| r < p).max();
        let last = last.unwrap_or_else(|| panic!("{what}: a poisoned answer before any request"));
        assert!(
            p.duration_since(*last) >= TIMEOUT,
            "{what}: a request reached the slave {:?} before the late answer to the previous one",
            p.duration_since(*last)
        );
    }
}

fn late(factor: f64) -> Duration {
    TIMEOUT.mul_f64(factor)
}

/// A healthy lift's first request is answered late: the request times out, the retry waits
/// for the late answer (thrown away) or the guard, and the retry's on-time answer is taken.
fn with_a_retry(factor: f64) {
    let what = format!("{factor}x late, with a retry");
    let run = run(vec![Reply::Late(late(factor))], |stats, events| {
        get(&stats.late_answers) >= 1 && !readings(events).is_empty()
    });
    check(&run, &what);
    assert_eq!(get(&run.stats.modbus_timeouts), 1, "{what}");
    assert_eq!(get(&run.stats.modbus_retries), 1, "{what}");
    assert_eq!(
        get(&run.stats.polls_lost),
        0,
        "{what}: the retry saved the poll"
    );
    // The retry left only after the late answer had arrived.
    assert!(run.log.requests.len() >= 2);
    assert!(
        run.log.requests[1] >= run.log.poisoned[0],
        "{what}: retry before the late answer"
    );
}

/// A lift in `comm_lost` (6 silent requests = 3 lost polls) is polled once a second without
/// retry; its next answer comes late, then on time.
fn without_a_retry(factor: f64) {
    let what = format!("{factor}x late, without a retry (comm_lost)");
    let mut script = vec![Reply::Silent; 6];
    script.push(Reply::Late(late(factor)));
    let run = run(script, |stats, events| {
        get(&stats.late_answers) >= 1 && !readings(events).is_empty()
    });
    check(&run, &what);
    assert_eq!(
        get(&run.stats.polls_lost),
        4,
        "{what}: 3 lost polls, then the late one"
    );
    assert_eq!(
        get(&run.stats.modbus_retries),
        3,
        "{what}: no retry once lost"
    );
    assert_eq!(get(&run.stats.modbus_timeouts), 7, "{what}");
    let failed = run
        .events
        .iter()
        .filter(|e| matches!(e, SourceEvent::LiftPollFailed { .. }))
        .count();
    assert_eq!(failed, 4, "{what}");
    // Once lost, at most one request a second.
    let r = &run.log.requests;
    assert!(r.len() >= 8, "{what}: {} requests", r.len());
    assert!(
        r[7].duration_since(r[6]) >= Duration::from_millis(990),
        "{what}: {:?}",
        r[7] - r[6]
    );
}

#[test]
fn late_by_1_2x_the_timeout_is_never_a_reading() {
    with_a_retry(1.2);
    without_a_retry(1.2);
}

#[test]
fn late_by_1_5x_the_timeout_is_never_a_reading() {
    with_a_retry(1.5);
    without_a_retry(1.5);
}

#[test]
fn late_by_3x_the_timeout_is_never_a_reading() {
    with_a_retry(3.0);
    without_a_retry(3.0);
}
