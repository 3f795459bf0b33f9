//! towerlink panel-node image for the emulated Arm MPS2 AN386 board (Cortex-M4 at 25 MHz, as
//! `qemu-system-arm -M mps2-an386` models it).
//!
//! The same node core ([`towerlink_firmware::node::Node`] with the panel's `PanelSensors`) and
//! the same NAU7802/ADXL355 drivers as on the real board, over the crate's no_std
//! register-level chip models (`towerlink_firmware::chip_models`) in place of the I2C bus.
//!
//! - Clock: CMSDK timer 0 free-running at 25 MHz (extended to 64 bits in software) is the time
//!   base of the node's ms clock and the chip models' µs clock; SysTick at 100 Hz only wakes
//!   the main loop from WFI.
//! - Gateway link: CMSDK APB UART0 (0x4000_4000, 115200 8N1), interrupt driven both ways:
//!   the RX interrupt moves received bytes into a ring the main loop drains; frames are queued
//!   in a TX ring that the TX interrupt feeds to the UART.
//! - Console: UART1 (0x4000_5000), polled, one line at boot and one every 10 s with the stack
//!   high-water mark (painted stack) and the link counters.
//! - Settings: the node id is read from a block at 0x203F_FF00 (magic `TLNK`, then the id as a
//!   little-endian u32), which `towerlink-sim mcu` fills with QEMU's loader device, as a
//!   production board reads its option bytes; without it the node is id 101.
//! - A panic resets the MCU (the gateway sees a reboot).
#![no_std]
#![no_main]

use core::cell::RefCell;
use core::fmt::Write as _;
use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m::peripheral::NVIC;
use cortex_m_rt::{entry, exception};
use critical_section::Mutex;
use heapless::Deque;

use towerlink_firmware::chip_models::{ModelAdxl355, ModelNau7802, Panel};
use towerlink_firmware::drivers::adxl355::{self, Adxl355};
use towerlink_firmware::drivers::nau7802::{self, Nau7802};
use towerlink_firmware::node::panel::{PanelLayout, PanelSensors};
use towerlink_firmware::node::{ByteSink, Node, NodeConfig, FIRMWARE_VERSION};

#[path = "../../common/stack_paint.rs"]
mod stack_paint;

/// The MPS2 AN386 core and APB clock, Hz.
const CPU_HZ: u32 = 25_000_000;
const BAUD: u32 = 115_200;
const UART0: usize = 0x4000_4000;
const UART1: usize = 0x4000_5000;
const SETTINGS: usize = 0x203F_FF00;
const SETTINGS_MAGIC: u32 = u32::from_le_bytes(*b"TLNK");
const DEFAULT_NODE_ID: u32 = 101;
const CONSOLE_EVERY_MS: u32 = 10_000;

// CMSDK APB UART registers and bits.
const DATA: usize = 0x00;
const STATE: usize = 0x04;
const CTRL: usize = 0x08;
const INTCLEAR: usize = 0x0C;
const BAUDDIV: usize = 0x10;
const STATE_TXFULL: u32 = 1 << 0;
const STATE_RXFULL: u32 = 1 << 1;
const STATE_RXOVERRUN: u32 = 1 << 3;
const CTRL_TX_EN: u32 = 1 << 0;
const CTRL_RX_EN: u32 = 1 << 1;
const CTRL_TX_INTEN: u32 = 1 << 2;
const CTRL_RX_INTEN: u32 = 1 << 3;
const INT_TX: u32 = 1 << 0;
const INT_RX: u32 = 1 << 1;

fn reg_read(base: usize, offset: usize) -> u32 {
    // SAFETY: a CMSDK UART register of the MPS2 memory map.
    unsafe { core::ptr::read_volatile((base + offset) as *const u32) }
}

fn reg_write(base: usize, offset: usize, value: u32) {
    // SAFETY: a CMSDK UART register of the MPS2 memory map.
    unsafe { core::ptr::write_volatile((base + offset) as *mut u32, value) }
}

/// The board's interrupt lines.
#[derive(Clone, Copy)]
#[repr(u16)]
enum Irq {
    Uart0Rx = 0,
    Uart0Tx = 1,
}

// SAFETY: the numbers are the AN386's IRQ lines of UART0.
unsafe impl cortex_m::interrupt::InterruptNumber for Irq {
    fn number(self) -> u16 {
        self as u16
    }
}

/// One entry of the device part of the vector table.
pub union Vector {
    handler: unsafe extern "C" fn(),
    _reserved: usize,
}

/// IRQ 0 = UART0 RX, IRQ 1 = UART0 TX; no other interrupt is enabled.
#[link_section = ".vector_table.interrupts"]
#[no_mangle]
pub static __INTERRUPTS: [Vector; 2] = [Vector { handler: uart0_rx }, Vector { handler: uart0_tx }];

// ---- clock -------------------------------------------------------------------------------

/// SysTick interrupts per second: the main loop's wake-up, not its clock. Every wake-up
/// costs the emulator host time, so it is kept slow; 100 Hz wakes the node every 10 ms, often
/// enough for its 50 Hz channels (their samples are due at multiples of 20 ms).
const TICK_HZ: u32 = 100;

/// CMSDK APB timer 0: the time base, a free-running 32-bit down-counter at the 25 MHz APB
/// clock. Its count is the emulator's virtual time itself, so the node's clock does not lose
/// time when an interrupt is serviced late (a tick counter would: QEMU drops SysTick periods
/// it could not deliver while its host was busy).
const TIMER0: usize = 0x4000_0000;
const TIMER_CTRL: usize = 0x00;
const TIMER_VALUE: usize = 0x04;
const TIMER_RELOAD: usize = 0x08;
const TIMER_CTRL_EN: u32 = 1 << 0;
const CYCLES_PER_US: u64 = CPU_HZ as u64 / 1_000_000;

/// (elapsed count at the last read, wraps of the 32-bit count): extends it to 64 bits. It is
/// read at least every tick, far more often than the 171 s the 32-bit count takes to wrap.
static CLOCK: Mutex<RefCell<(u32, u32)>> = Mutex::new(RefCell::new((0, 0)));

#[exception]
fn SysTick() {
    let _ = now_us();
}

fn start_clock() {
    reg_write(TIMER0, TIMER_CTRL, 0);
    reg_write(TIMER0, TIMER_RELOAD, u32::MAX);
    reg_write(TIMER0, TIMER_VALUE, u32::MAX);
    reg_write(TIMER0, TIMER_CTRL, TIMER_CTRL_EN);
}

/// Microseconds since the clock started (at boot).
fn now_us() -> u64 {
    critical_section::with(|cs| {
        let mut clock = CLOCK.borrow_ref_mut(cs);
        let elapsed = u32::MAX - reg_read(TIMER0, TIMER_VALUE);
        if elapsed < clock.0 {
            clock.1 = clock.1.wrapping_add(1);
        }
        clock.0 = elapsed;
        let cycles = (u64::from(clock.1) << 32) | u64::from(elapsed);
        cycles / CYCLES_PER_US
    })
}

/// The node's clock: ms since boot, wrapping as the node core expects.
fn millis() -> u32 {
    (now_us() / 1000) as u32
}

/// Busy-wait delay on the µs clock (drivers' init waits).
struct Delay;

impl embedded_hal::delay::DelayNs for Delay {
    fn delay_ns(&mut self, ns: u32) {
        let until = now_us() + u64::from(ns).div_ceil(1000);
        while now_us() < until {
            core::hint::spin_loop();
        }
    }
}

// ---- gateway UART ------------------------------------------------------------------------

static RX: Mutex<RefCell<Deque<u8, 256>>> = Mutex::new(RefCell::new(Deque::new()));
static TX: Mutex<RefCell<Deque<u8, 2048>>> = Mutex::new(RefCell::new(Deque::new()));
/// Bytes lost because the RX ring was full or the UART overran.
static RX_LOST: AtomicU32 = AtomicU32::new(0);

/// UART0 RX interrupt: move every received byte into the RX ring.
unsafe extern "C" fn uart0_rx() {
    reg_write(UART0, INTCLEAR, INT_RX);
    if reg_read(UART0, STATE) & STATE_RXOVERRUN != 0 {
        reg_write(UART0, STATE, STATE_RXOVERRUN);
        RX_LOST.fetch_add(1, Ordering::Relaxed);
    }
    critical_section::with(|cs| {
        let mut rx = RX.borrow_ref_mut(cs);
        while reg_read(UART0, STATE) & STATE_RXFULL != 0 {
            let byte = reg_read(UART0, DATA) as u8;
            if rx.push_back(byte).is_err() {
                RX_LOST.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
}

/// UART0 TX interrupt: feed the UART from the TX ring while it takes bytes.
unsafe extern "C" fn uart0_tx() {
    reg_write(UART0, INTCLEAR, INT_TX);
    critical_section::with(|cs| {
        let mut tx = TX.borrow_ref_mut(cs);
        while reg_read(UART0, STATE) & STATE_TXFULL == 0 {
            match tx.pop_front() {
                Some(byte) => reg_write(UART0, DATA, u32::from(byte)),
                None => break,
            }
        }
    });
}

/// The node's frames go into the TX ring; when it is full the writer waits for the UART to
/// drain it (at most the ring's size at line rate, ~180 ms), so no frame is cut.
struct UartTx;

impl ByteSink for UartTx {
    type Error = core::convert::Infallible;

    fn write_all(&mut self, mut bytes: &[u8]) -> Result<(), Self::Error> {
        while !bytes.is_empty() {
            let taken = critical_section::with(|cs| {
                let mut tx = TX.borrow_ref_mut(cs);
                let mut n = 0;
                for &b in bytes {
                    if tx.push_back(b).is_err() {
                        break;
                    }
                    n += 1;
                }
                n
            });
            bytes = &bytes[taken..];
            // Start (or keep) the interrupt-driven transmission.
            NVIC::pend(Irq::Uart0Tx);
            if !bytes.is_empty() {
                cortex_m::asm::wfi();
            }
        }
        Ok(())
    }
}

/// Bytes received from the gateway, taken out of the RX ring.
fn take_rx(buf: &mut [u8]) -> usize {
    critical_section::with(|cs| {
        let mut rx = RX.borrow_ref_mut(cs);
        let mut n = 0;
        while n < buf.len() {
            match rx.pop_front() {
                Some(b) => {
                    buf[n] = b;
                    n += 1;
                }
                None => break,
            }
        }
        n
    })
}

// ---- console -----------------------------------------------------------------------------

struct Console;

impl core::fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for b in s.bytes() {
            while reg_read(UART1, STATE) & STATE_TXFULL != 0 {}
            reg_write(UART1, DATA, u32::from(b));
        }
        Ok(())
    }
}

fn report(node_id: u32, seq: u32) {
    let (used, size) = stack_paint::high_water();
    let _ = writeln!(
        Console,
        "towerlink-node mps2-an386 node {node_id}: uptime {} ms, seq {seq}, stack high-water {used} of {size} bytes, rx lost {}",
        millis(),
        RX_LOST.load(Ordering::Relaxed)
    );
}

fn node_id() -> u32 {
    // SAFETY: the settings block is RAM of the MPS2 memory map, outside the image's RAM.
    let (magic, id) = unsafe {
        (
            core::ptr::read_volatile(SETTINGS as *const u32),
            core::ptr::read_volatile((SETTINGS + 4) as *const u32),
        )
    };
    if magic == SETTINGS_MAGIC {
        id
    } else {
        DEFAULT_NODE_ID
    }
}

#[entry]
fn main() -> ! {
    stack_paint::paint();
    let Some(mut cp) = cortex_m::Peripherals::take() else {
        // Only `main` takes them, once.
        loop {
            cortex_m::asm::wfi();
        }
    };

    start_clock();
    cp.SYST.set_clock_source(SystClkSource::Core);
    cp.SYST.set_reload(CPU_HZ / TICK_HZ - 1);
    cp.SYST.clear_current();
    cp.SYST.enable_interrupt();
    cp.SYST.enable_counter();

    let div = CPU_HZ / BAUD;
    reg_write(UART1, BAUDDIV, div);
    reg_write(UART1, CTRL, CTRL_TX_EN);
    reg_write(UART0, BAUDDIV, div);
    reg_write(
        UART0,
        CTRL,
        CTRL_TX_EN | CTRL_RX_EN | CTRL_TX_INTEN | CTRL_RX_INTEN,
    );
    // SAFETY: the handlers only touch the rings through critical sections.
    unsafe {
        NVIC::unmask(Irq::Uart0Rx);
        NVIC::unmask(Irq::Uart0Tx);
    }

    let id = node_id();
    let (major, minor, patch) = FIRMWARE_VERSION;
    let _ = writeln!(
        Console,
        "towerlink-node mps2-an386 node {id} firmware {major}.{minor}.{patch}: booting"
    );

    let panel = Panel::new(u64::from(id));
    let clock: fn() -> u64 = now_us;
    let adc = Nau7802::new(ModelNau7802::new(panel, clock));
    let accel = Adxl355::new(
        ModelAdxl355::new(panel, clock, adxl355::Address::AselLow.addr()),
        adxl355::Address::AselLow,
    );
    let mut sensors = PanelSensors::new(adc, accel, PanelLayout::default());
    let init = sensors.init_chips(
        &mut Delay,
        nau7802::Config::default(),
        adxl355::Config::default(),
    );
    if init.adc.is_err() || init.accel.is_err() {
        let _ = writeln!(Console, "chip init failed: {init:?}");
    }
    sensors.set_supply_mv(3300);

    let node = Node::new(NodeConfig::new(id), sensors);
    let mut node = match node {
        Ok(node) => node,
        Err(e) => {
            let _ = writeln!(Console, "node config refused: {e:?}");
            loop {
                cortex_m::asm::wfi();
            }
        }
    };

    let mut tx = UartTx;
    let mut rx = [0u8; 64];
    let mut next_report = millis().wrapping_add(CONSOLE_EVERY_MS);
    loop {
        let _ = node.poll(millis(), &mut tx);
        loop {
            let n = take_rx(&mut rx);
            if n == 0 {
                break;
            }
            let _ = node.receive(&rx[..n], millis(), &mut tx);
        }
        if (millis().wrapping_sub(next_report) as i32) >= 0 {
            next_report = next_report.wrapping_add(CONSOLE_EVERY_MS);
            report(id, node.seq());
        }
        // Sleep until the next SysTick or UART interrupt.
        cortex_m::asm::wfi();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let _ = writeln!(Console, "panic: {info}; resetting");
    cortex_m::peripheral::SCB::sys_reset()
}
