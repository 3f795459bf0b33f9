//! A Modbus RTU slave on a pseudo-terminal serving one or more simulated lifts (distinct
//! unit ids on one bus), with faults on the line on demand.
//!
//! The agent opens the terminal as its RS-485 adapter. Each request the slave receives is
//! answered from the addressed lift's model through the generic profile's register table
//! ([`super::registers`], written from the contract independently of the agent), unless a comm fault says otherwise: no answer, a corrupted CRC, another unit id, a
//! truncated answer, or noise bytes in front of it.
//!
//! Pacing: a pseudo-terminal moves bytes instantly, whatever baud rate the agent sets, so an
//! unpaced slave would make any throughput figure meaningless. With `pace`, the slave
//! answers when a real line would deliver the answer's last byte: the request's transmission
//! time, the 3.5-character silence that ends it, and the answer's own transmission time at
//! the configured baud. The slave's thread sleeps to within ~100 µs and spins the rest; between
//! requests it blocks on the terminal (a request wakes it at once; otherwise every 2 ms for the
//! script and the lifts' motion) instead of polling it.
//!
//! Every request is counted by function code: the agent must only ever send 0x04, and
//! [`LiftBus::non_read_requests`] lets a test check it never sent anything else.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::Rng;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use towerlink_agent::profile::LiftReading;

use super::model::{LiftModel, LiftSpec};
use super::registers::{self, crc_ok, push_crc, Line, READ_INPUT_REGISTERS};
use super::script::{Action, CommFault, Step};
use crate::pty::VirtualPort;

/// How the bus behaves.
#[derive(Debug, Clone)]
pub struct BusOptions {
    /// Baud rate (pacing).
    pub baud: u32,
    /// Parity bit on the line (pacing).
    pub parity: bool,
    /// Stop bits (pacing).
    pub stop_bits: u8,
    /// Answer at line speed (see the module doc).
    pub pace: bool,
    /// Seed of the models and of the comm faults.
    pub seed: u64,
    /// Timed faults and calls.
    pub script: Vec<Step>,
}

impl BusOptions {
    /// 9600 8N1, paced, no script.
    pub fn new(seed: u64) -> io::Result<BusOptions> {
        Ok(BusOptions {
            baud: 9600,
            parity: false,
            stop_bits: 1,
            pace: true,
            seed,
            script: Vec::new(),
        })
    }
}

#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    pending: Mutex<Vec<(u8, Action)>>,
    requests: AtomicU64,
    non_read_requests: AtomicU64,
    answers: Mutex<BTreeMap<u8, u64>>,
    readings: Mutex<BTreeMap<u8, LiftReading>>,
    error: Mutex<Option<String>>,
}

/// A running simulated bus.
#[derive(Debug)]
pub struct LiftBus {
    path: PathBuf,
    specs: Vec<LiftSpec>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl LiftBus {
    /// Starts a bus serving `lifts` on a new pseudo-terminal linked at `link`.
    pub fn spawn(link: &Path, lifts: Vec<LiftSpec>, options: BusOptions) -> io::Result<LiftBus> {
        if let Some(dir) = link.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let port = VirtualPort::open(Some(link))?;
        let shared = Arc::new(Shared::default());
        let models = lifts
            .iter()
            .map(|s| LiftModel::new(s.clone(), options.seed))
            .collect();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("lift-bus {}", link.display()))
            .spawn(move || {
                let mut bus = BusThread {
                    port,
                    models,
                    options,
                    shared: thread_shared.clone(),
                    comm: BTreeMap::new(),
                    rng: ChaCha8Rng::seed_from_u64(0),
                };
                bus.rng = ChaCha8Rng::seed_from_u64(bus.options.seed.wrapping_add(1));
                if let Err(e) = bus.run() {
                    if let Ok(mut slot) = thread_shared.error.lock() {
                        *slot = Some(e.to_string());
                    }
                }
            })?;
        Ok(LiftBus {
            path: link.to_owned(),
            specs: lifts,
            shared,
            thread: Some(thread),
        })
    }

    /// The port path the agent opens.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The lifts served.
    pub fn lifts(&self) -> &[LiftSpec] {
        &self.specs
    }

    /// Does `action` on lift `unit` now.
    pub fn apply(&self, unit: u8, action: Action) {
        if let Ok(mut p) = self.shared.pending.lock() {
            p.push((unit, action));
        }
    }

    /// Requests received (with a valid CRC).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Requests with any function code other than 0x04 (must stay 0 with the agent).
    pub fn non_read_requests(&self) -> u64 {
        self.shared.non_read_requests.load(Ordering::Relaxed)
    }

    /// Correct answers sent for `unit`.
    pub fn answers(&self, unit: u8) -> u64 {
        self.shared
            .answers
            .lock()
            .map(|a| a.get(&unit).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// The latest reading of `unit`'s model.
    pub fn reading(&self, unit: u8) -> Option<LiftReading> {
        self.shared
            .readings
            .lock()
            .ok()
            .and_then(|r| r.get(&unit).copied())
    }

    /// The error that stopped the bus thread, if one did.
    pub fn error(&self) -> Option<String> {
        self.shared.error.lock().ok().and_then(|e| e.clone())
    }

    /// Stops the bus (the terminal closes: the agent sees the adapter go away).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for LiftBus {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct BusThread {
    port: VirtualPort,
    models: Vec<LiftModel>,
    options: BusOptions,
    shared: Arc<Shared>,
    comm: BTreeMap<(u8, CommFault), f64>,
    rng: ChaCha8Rng,
}

/// The longest the slave waits for a request before it advances its lifts and script.
const IDLE_TICK: Duration = Duration::from_millis(2);

/// Sleeps until `deadline` with ~100 µs precision.
fn sleep_until(deadline: Instant) {
    let now = Instant::now();
    if deadline > now + Duration::from_micros(200) {
        std::thread::sleep(deadline - now - Duration::from_micros(150));
    }
    while Instant::now() < deadline {
        std::hint::spin_loop();
    }
}

impl BusThread {
    fn run(&mut self) -> io::Result<()> {
        let start = Instant::now();
        let timing = Line::new(
            self.options.baud,
            self.options.parity,
            self.options.stop_bits,
        );
        let mut script = std::mem::take(&mut self.options.script)
            .into_iter()
            .peekable();
        let mut rx: Vec<u8> = Vec::with_capacity(256);
        let mut chunk = [0u8; 256];
        while !self.shared.stop.load(Ordering::Relaxed) {
            let elapsed = start.elapsed();
            while script.peek().is_some_and(|s| s.at <= elapsed) {
                if let Some(step) = script.next() {
                    self.act(step.unit, step.action);
                }
            }
            let pending = self
                .shared
                .pending
                .lock()
                .map(|mut p| std::mem::take(&mut *p))
                .unwrap_or_default();
            for (unit, action) in pending {
                self.act(unit, action);
            }
            let t_ms = elapsed.as_millis() as u64;
            if let Ok(mut readings) = self.shared.readings.lock() {
                for m in &mut self.models {
                    m.advance_to(t_ms);
                    readings.insert(m.spec().unit, m.reading());
                }
            }
            let n = self.port.receive(&mut chunk)?;
            if n == 0 {
                // Until the agent writes (a request wakes it at once), but at least every
                // IDLE_TICK for the script, queued actions and the lifts' motion.
                self.port.wait_readable(IDLE_TICK);
                continue;
            }
            let received_at = Instant::now();
            rx.extend_from_slice(&chunk[..n]);
            // Requests are 8 bytes (0x04 and the single writes alike); anything that is not
            // a CRC-valid frame at the front is line noise: slide one byte and look again.
            while rx.len() >= 8 {
                if crc_ok(&rx[..8]) {
                    let request: Vec<u8> = rx.drain(..8).collect();
                    self.answer(&request, received_at, timing)?;
                } else {
                    rx.remove(0);
                }
            }
        }
        Ok(())
    }

    fn act(&mut self, unit: u8, action: Action) {
        if let Action::Comm(fault, rate) = action {
            if rate > 0.0 {
                self.comm.insert((unit, fault), rate.min(1.0));
            } else {
                self.comm.remove(&(unit, fault));
            }
            return;
        }
        let Some(model) = self.models.iter_mut().find(|m| m.spec().unit == unit) else {
            return;
        };
        match action {
            Action::Fault(f, on) => model.set_fault(f, on),
            Action::Call(floor) => model.call(floor),
            Action::FaultCode(code) => model.set_fault_code(code),
            Action::Mode(mode) => model.set_mode(mode),
            Action::Occupied(on) => model.set_occupied(on),
            Action::Comm(..) => {}
        }
    }

    fn hit(&mut self, unit: u8, fault: CommFault) -> bool {
        match self.comm.get(&(unit, fault)) {
            Some(&rate) => self.rng.gen_bool(rate),
            None => false,
        }
    }

    fn answer(&mut self, request: &[u8], received_at: Instant, timing: Line) -> io::Result<()> {
        self.shared.requests.fetch_add(1, Ordering::Relaxed);
        let (unit, function) = (request[0], request[1]);
        let start = u16::from_be_bytes([request[2], request[3]]);
        let count = u16::from_be_bytes([request[4], request[5]]);
        let Some(model) = self.models.iter().find(|m| m.spec().unit == unit) else {
            // Nobody with that unit id on the bus: silence, as on a real line.
            return Ok(());
        };
        let mut frame = vec![unit];
        // The registers asked for, if they lie within the table.
        let asked = usize::from(start)
            .checked_sub(usize::from(registers::START))
            .filter(|from| count > 0 && from + usize::from(count) <= usize::from(registers::COUNT));
        if function != READ_INPUT_REGISTERS {
            self.shared
                .non_read_requests
                .fetch_add(1, Ordering::Relaxed);
            frame.extend_from_slice(&[function | 0x80, 0x01]); // illegal function
        } else if let Some(from) = asked {
            let regs = registers::input_registers(&model.reading());
            frame.extend_from_slice(&[function, (count * 2) as u8]);
            for r in &regs[from..from + usize::from(count)] {
                frame.extend_from_slice(&r.to_be_bytes());
            }
        } else {
            frame.extend_from_slice(&[function | 0x80, 0x02]); // illegal data address
        }
        push_crc(&mut frame);
        if self.hit(unit, CommFault::Silent) {
            return Ok(());
        }
        let mut correct = true;
        if self.hit(unit, CommFault::WrongUnit) {
            frame[0] = unit.wrapping_add(100).max(1);
            let len = frame.len() - 2;
            frame.truncate(len);
            push_crc(&mut frame);
            correct = false;
        }
        if self.hit(unit, CommFault::CorruptCrc) {
            if let Some(last) = frame.last_mut() {
                *last ^= 0x5A;
            }
            correct = false;
        }
        if self.hit(unit, CommFault::Truncated) {
            frame.truncate(frame.len() / 2);
            correct = false;
        }
        if self.hit(unit, CommFault::Noise) {
            let n = self.rng.gen_range(1..=8);
            let mut noisy: Vec<u8> = (0..n).map(|_| self.rng.gen()).collect();
            noisy.extend_from_slice(&frame);
            frame = noisy;
        }
        if self.options.pace {
            sleep_until(
                received_at
                    + timing.chars(request.len())
                    + timing.silence()
                    + timing.chars(frame.len()),
            );
        }
        self.port.send(&frame)?;
        if correct {
            if let Ok(mut a) = self.shared.answers.lock() {
                *a.entry(unit).or_insert(0) += 1;
            }
        }
        Ok(())
    }
}
