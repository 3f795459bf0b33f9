//! No answer from the past, end to end: the agent binary polls a lift controller that
//! sometimes answers late (1.2x, 1.5x and 3x the 200 ms timeout) with poisoned registers —
//! floor 99, fire service, fault 666, overspeed, door open while moving — and otherwise on
//! time with a parked lift. A real broker and a platform-like subscriber check that no status
//! with a poisoned value and no event is ever published, and that `health` counts the late
//! answers.
//!
//! The controller is written here from the Modbus spec and the elevator profile (a CRC-16
//! computed bit by bit), not with the agent's or the simulator's Modbus code; only the
//! pseudo-terminal plumbing is the simulator's.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use towerlink_e2e::{unique_gw, write_config, AgentProcess, Subscriber};
use towerlink_sim::pty::VirtualPort;

const UNIT: u8 = 6;
const TIMEOUT: Duration = Duration::from_millis(200);

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

/// An answer of the generic profile: mode, floor, direction, door, flags, speed, load, fault,
/// then position, run count and door cycles (high, low words).
fn answer(
    mode: u16,
    floor: i16,
    direction: u16,
    door: u16,
    flags: u16,
    speed: u16,
    fault: u16,
) -> Vec<u8> {
    let regs = [
        mode,
        floor as u16,
        direction,
        door,
        flags,
        speed,
        40,
        fault,
        0,
        9_000,
        0,
        77,
        0,
        155,
    ];
    let mut f = vec![UNIT, 0x04, 28];
    for r in regs {
        f.extend_from_slice(&r.to_be_bytes());
    }
    let crc = crc_by_the_book(&f);
    f.extend_from_slice(&[(crc & 0xFF) as u8, (crc >> 8) as u8]);
    f
}

fn poisoned() -> Vec<u8> {
    // Fire service, floor 99, up, door open, running + power + safety + overload (lock open),
    // 5 m/s, fault 666.
    answer(2, 99, 1, 2, 0b1001_1001, 5_000, 666)
}

fn good() -> Vec<u8> {
    // Normal, floor 3, stopped, door closed, door zone + power + safety + lock.
    answer(0, 3, 0, 0, 0b0011_1010, 0, 0)
}

struct Slave {
    stop: Arc<AtomicBool>,
    poisoned: Arc<AtomicU64>,
    bad_requests: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Slave {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The controller: answers requests in order, one at a time; request `n` gets
/// `lateness[n]` (a poisoned answer that late) while the script lasts, then good answers.
fn spawn_slave(mut port: VirtualPort, lateness: Vec<Option<f64>>) -> Slave {
    let stop = Arc::new(AtomicBool::new(false));
    let poisoned_count = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    let (s, p, b) = (stop.clone(), poisoned_count.clone(), bad.clone());
    let thread = std::thread::spawn(move || {
        let mut script = lateness.into_iter();
        let mut rx = Vec::new();
        let mut chunk = [0u8; 64];
        let mut queue: VecDeque<(Instant, Vec<u8>, bool)> = VecDeque::new();
        while !s.load(Ordering::Relaxed) {
            if let Ok(n) = port.receive(&mut chunk) {
                rx.extend_from_slice(&chunk[..n]);
            }
            let now = Instant::now();
            while rx.len() >= 8 {
                let f: Vec<u8> = rx.drain(..8).collect();
                let crc = crc_by_the_book(&f[..6]);
                if f[..6] != [UNIT, 0x04, 0, 0, 0, 14]
                    || f[6..] != [(crc & 0xFF) as u8, (crc >> 8) as u8]
                {
                    b.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let after_previous = queue.back().map_or(now, |q| q.0);
                match script.next() {
                    Some(Some(factor)) => queue.push_back((
                        (now + TIMEOUT.mul_f64(factor)).max(after_previous),
                        poisoned(),
                        true,
                    )),
                    Some(None) | None => queue.push_back((now.max(after_previous), good(), false)),
                }
            }
            while queue.front().is_some_and(|q| q.0 <= Instant::now()) {
                if let Some((_, bytes, poison)) = queue.pop_front() {
                    let _ = port.send(&bytes);
                    if poison {
                        p.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    });
    Slave {
        stop,
        poisoned: poisoned_count,
        bad_requests: bad,
        thread: Some(thread),
    }
}

#[test]
fn late_answers_never_become_a_status_or_an_event() -> anyhow::Result<()> {
    // One paced lift bus at a time on the machine (see `exclusive`).
    let _bus = towerlink_e2e::exclusive("lift-bus")?;
    let dir = tempfile::tempdir()?;
    let port = VirtualPort::open(Some(&dir.path().join("ttyRS485-late")))?;
    let path = port.path().to_owned();
    // Late first requests (each poll's retry is answered on time), and one poll whose retry is
    // late too (a lost poll: fewer than 3 in a row raise no comm_lost).
    let good_ = None;
    let script = vec![
        Some(1.2),
        good_,
        good_,
        good_,
        Some(1.5),
        good_,
        good_,
        good_,
        Some(3.0),
        good_,
        good_,
        good_,
        Some(1.5),
        Some(3.0),
        good_,
        good_,
        good_,
        Some(1.2),
        good_,
    ];
    let poisoned_total = script.iter().filter(|s| s.is_some()).count() as u64;
    let slave = spawn_slave(port, script);
    let gw = unique_gw("e2e-lift-late");
    let sub = Subscriber::connect(&format!("towerlink/v1/{gw}/#"))?;
    let config = write_config(
        dir.path(),
        &gw,
        &format!(
            "[health]\ninterval = \"1s\"\n\n[[lift]]\nid = \"lift-l\"\nport = \"{}\"\nbaud = 115200\nunit = {UNIT}\ntop_floor = 10\nbottom_floor = -2\nrated_speed_mm_s = 1000\npoll = \"100ms\"\nstatus_interval = \"1s\"\n",
            path.display()
        ),
    )?;
    let mut agent = AgentProcess::start(&config)?;
    let health = |sub: &Subscriber| {
        sub.on("/health")
            .last()
            .map(|m| m.json["sources"]["lift-l"].clone())
    };
    sub.wait(
        Duration::from_secs(40),
        "every poisoned answer sent",
        |_| slave.poisoned.load(Ordering::Relaxed) == poisoned_total,
    )
    .with_context(|| agent.log())?;
    // Two health reports and a status after the last late answer: the agent has seen it.
    let seen = sub.all().len();
    sub.wait(
        Duration::from_secs(10),
        "health and a status after the late answers",
        |m| {
            let after = || m.iter().skip(seen);
            after().filter(|r| r.topic.ends_with("/health")).count() >= 2
                && after().any(|r| r.topic.ends_with("/data/lift-l"))
        },
    )?;
    let all = sub.all();
    let statuses: Vec<_> = all
        .iter()
        .filter(|r| r.topic.ends_with("/data/lift-l"))
        .map(|r| &r.json["lift"])
        .collect();
    ensure!(!statuses.is_empty(), "no status at all");
    for s in &statuses {
        ensure!(
            s["floor"] == 3
                && s["mode"] == "normal"
                && s["fault_code"] == 0
                && s["speed_mm_s"] == 0
                && s["door"] == "closed",
            "a poisoned status was published: {s}"
        );
    }
    let events: Vec<_> = all.iter().filter(|r| r.topic.contains("/event/")).collect();
    ensure!(
        events.is_empty(),
        "events published: {:?}",
        events.iter().map(|e| &e.json).collect::<Vec<_>>()
    );
    let h = health(&sub).context("no health")?;
    ensure!(h["late_answers"] == poisoned_total, "{h}");
    ensure!(h["modbus_timeouts"] == poisoned_total, "{h}");
    ensure!(h["polls_lost"] == 1, "one poll lost (late twice): {h}");
    ensure!(h["status"] != "offline", "{h}");
    ensure!(
        slave.bad_requests.load(Ordering::Relaxed) == 0,
        "only function 4 is ever sent"
    );
    agent.stop()?;
    Ok(())
}
