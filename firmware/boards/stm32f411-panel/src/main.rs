//! towerlink panel-node image for an STM32F411 board (the WeAct "Black Pill" STM32F411CEU6
//! class: Cortex-M4F at 100 MHz from a 25 MHz crystal, 512 KiB flash, 128 KiB RAM).
//!
//! The same node core ([`towerlink_firmware::node::Node`] with the panel's `PanelSensors`) and
//! NAU7802/ADXL355 drivers as the emulated board, on the real buses (pin map in README.md):
//!
//! - I2C1 (PB6 SCL, PB7 SDA, 400 kHz): the NAU7802 at 0x2A and the ADXL355 at 0x1D (ASEL low),
//!   shared through `embedded-hal-bus` (one driver per chip, one bus).
//! - USART2 (PA2 TX, PA3 RX, 115200 8N1): the gateway link, interrupt driven both ways (RXNE
//!   moves bytes into an RX ring the main loop drains; TXE feeds the UART from a TX ring).
//! - USART1 TX (PA9, 115200): a console, one line at boot and one every 10 s with the stack
//!   high-water mark (painted stack).
//! - TIM2 free-running at 1 MHz (32 bits, extended in software) is the node's time base;
//!   SysTick at 1 kHz only wakes the main loop from WFI.
//! - The node id is `TOWERLINK_NODE_ID` at build time (default 101).
//! - A panic resets the MCU (the gateway sees a reboot).
#![no_std]
#![no_main]

use core::cell::RefCell;
use core::fmt::Write as _;

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m::peripheral::NVIC;
use cortex_m_rt::{entry, exception};
use critical_section::Mutex;
use embedded_hal_bus::i2c::RefCellDevice;
use heapless::Deque;
use stm32f4xx_hal::i2c::I2c;
use stm32f4xx_hal::pac::{self, interrupt, Interrupt};
use stm32f4xx_hal::prelude::*;
use stm32f4xx_hal::serial::{config::Config as SerialConfig, Serial};
use stm32f4xx_hal::timer::Timer;

use towerlink_firmware::drivers::adxl355::{self, Adxl355};
use towerlink_firmware::drivers::nau7802::{self, Nau7802};
use towerlink_firmware::node::panel::{PanelLayout, PanelSensors};
use towerlink_firmware::node::{ByteSink, Node, NodeConfig, FIRMWARE_VERSION};

#[path = "../../common/stack_paint.rs"]
mod stack_paint;

const HSE_HZ: u32 = 25_000_000;
const SYSCLK_HZ: u32 = 100_000_000;
const BAUD: u32 = 115_200;
const CONSOLE_EVERY_MS: u32 = 10_000;

/// The node id, from `TOWERLINK_NODE_ID` at build time.
const NODE_ID: u32 = parse_id(option_env!("TOWERLINK_NODE_ID"), 101);

const fn parse_id(text: Option<&str>, default: u32) -> u32 {
    let Some(text) = text else { return default };
    let b = text.as_bytes();
    if b.is_empty() {
        return default;
    }
    let mut value: u32 = 0;
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() {
            panic!("TOWERLINK_NODE_ID must be a decimal number");
        }
        value = value * 10 + (b[i] - b'0') as u32;
        i += 1;
    }
    value
}

// ---- clock -------------------------------------------------------------------------------

/// (TIM2 count at the last read, wraps): the 32-bit µs count extended to 64 bits. Read at
/// least every SysTick, far more often than the 71 minutes the count takes to wrap.
static CLOCK: Mutex<RefCell<(u32, u32)>> = Mutex::new(RefCell::new((0, 0)));

fn tim2() -> &'static pac::tim2::RegisterBlock {
    // SAFETY: TIM2 is only read (its count) after `start_clock` configured it.
    unsafe { &*pac::TIM2::ptr() }
}

/// TIM2 as a free-running 1 MHz up-counter over the whole 32-bit range.
fn start_clock(timer_clock_hz: u32) {
    let t = tim2();
    t.cr1().write(|w| w.cen().clear_bit());
    t.psc()
        .write(|w| w.psc().set((timer_clock_hz / 1_000_000 - 1) as u16));
    t.arr().write(|w| w.arr().set(u32::MAX));
    // Load the prescaler now.
    t.egr().write(|w| w.ug().set_bit());
    t.cr1().write(|w| w.cen().set_bit());
}

fn now_us() -> u64 {
    critical_section::with(|cs| {
        let mut clock = CLOCK.borrow_ref_mut(cs);
        let count = tim2().cnt().read().cnt().bits();
        if count < clock.0 {
            clock.1 = clock.1.wrapping_add(1);
        }
        clock.0 = count;
        (u64::from(clock.1) << 32) | u64::from(count)
    })
}

fn millis() -> u32 {
    (now_us() / 1000) as u32
}

#[exception]
fn SysTick() {
    let _ = now_us();
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

// ---- gateway UART (USART2) ---------------------------------------------------------------

static RX: Mutex<RefCell<Deque<u8, 256>>> = Mutex::new(RefCell::new(Deque::new()));
static TX: Mutex<RefCell<Deque<u8, 2048>>> = Mutex::new(RefCell::new(Deque::new()));
static RX_LOST: Mutex<RefCell<u32>> = Mutex::new(RefCell::new(0));

fn usart2() -> &'static pac::usart1::RegisterBlock {
    // SAFETY: after `Serial::new` configured it, only the interrupt handler and
    // `start_transmit` (both under critical sections) touch USART2.
    unsafe { &*pac::USART2::ptr() }
}

#[interrupt]
fn USART2() {
    critical_section::with(|cs| {
        let u = usart2();
        let sr = u.sr().read();
        if sr.rxne().bit_is_set() || sr.ore().bit_is_set() {
            // Reading DR clears RXNE and, after the SR read, an overrun.
            let byte = u.dr().read().dr().bits() as u8;
            let lost = sr.ore().bit_is_set() || RX.borrow_ref_mut(cs).push_back(byte).is_err();
            if lost {
                *RX_LOST.borrow_ref_mut(cs) += 1;
            }
        }
        if sr.txe().bit_is_set() && u.cr1().read().txeie().bit_is_set() {
            match TX.borrow_ref_mut(cs).pop_front() {
                Some(byte) => u.dr().write(|w| w.dr().set(u16::from(byte))),
                // Nothing more to send: stop the TXE interrupt until there is.
                None => u.cr1().modify(|_, w| w.txeie().clear_bit()),
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
                // (Re)start the interrupt-driven transmission.
                usart2().cr1().modify(|_, w| w.txeie().set_bit());
                n
            });
            bytes = &bytes[taken..];
            if !bytes.is_empty() {
                cortex_m::asm::wfi();
            }
        }
        Ok(())
    }
}

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

// ---- console (USART1 TX) -----------------------------------------------------------------

struct Console;

impl core::fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        // SAFETY: USART1 is the console's alone once `main` configured it.
        let u = unsafe { &*pac::USART1::ptr() };
        for b in s.bytes() {
            while u.sr().read().txe().bit_is_clear() {}
            u.dr().write(|w| w.dr().set(u16::from(b)));
        }
        Ok(())
    }
}

fn report(seq: u32) {
    let (used, size) = stack_paint::high_water();
    let lost = critical_section::with(|cs| *RX_LOST.borrow_ref(cs));
    let _ = writeln!(
        Console,
        "towerlink-node stm32f411 node {NODE_ID}: uptime {} ms, seq {seq}, stack high-water {used} of {size} bytes, rx lost {lost}\r",
        millis()
    );
}

fn halt() -> ! {
    loop {
        cortex_m::asm::wfi();
    }
}

#[entry]
fn main() -> ! {
    stack_paint::paint();
    let (Some(dp), Some(mut cp)) = (pac::Peripherals::take(), cortex_m::Peripherals::take()) else {
        // Only `main` takes them, once.
        halt()
    };

    let rcc = dp.RCC.constrain();
    let clocks = rcc
        .cfgr
        .use_hse(HSE_HZ.Hz())
        .sysclk(SYSCLK_HZ.Hz())
        .freeze();

    let _tim2 = Timer::new(dp.TIM2, &clocks).release();
    start_clock(clocks.timclk1().raw());
    cp.SYST.set_clock_source(SystClkSource::Core);
    cp.SYST.set_reload(clocks.sysclk().raw() / 1000 - 1);
    cp.SYST.clear_current();
    cp.SYST.enable_interrupt();
    cp.SYST.enable_counter();

    let gpioa = dp.GPIOA.split();
    let gpiob = dp.GPIOB.split();

    let Ok(_console) = dp.USART1.tx::<u8>(gpioa.pa9, BAUD.bps(), &clocks) else {
        halt()
    };
    let Ok(_link) = Serial::<_, u8>::new(
        dp.USART2,
        (gpioa.pa2, gpioa.pa3),
        SerialConfig::default().baudrate(BAUD.bps()),
        &clocks,
    ) else {
        let _ = writeln!(Console, "USART2 configuration refused\r");
        halt()
    };
    usart2().cr1().modify(|_, w| w.rxneie().set_bit());
    // SAFETY: the handler only touches the rings through critical sections.
    unsafe { NVIC::unmask(Interrupt::USART2) };

    let (major, minor, patch) = FIRMWARE_VERSION;
    let _ = writeln!(
        Console,
        "towerlink-node stm32f411 node {NODE_ID} firmware {major}.{minor}.{patch}: booting\r"
    );

    let i2c = I2c::new(dp.I2C1, (gpiob.pb6, gpiob.pb7), 400.kHz(), &clocks);
    let bus = RefCell::new(i2c);
    let adc = Nau7802::new(RefCellDevice::new(&bus));
    let accel = Adxl355::new(RefCellDevice::new(&bus), adxl355::Address::AselLow);
    let mut sensors = PanelSensors::new(adc, accel, PanelLayout::default());
    let init = sensors.init_chips(
        &mut Delay,
        nau7802::Config::default(),
        adxl355::Config::default(),
    );
    if init.adc.is_err() || init.accel.is_err() {
        // The node still runs: the failed chip's channels report Faults to the gateway.
        let _ = writeln!(Console, "chip init failed: {init:?}\r");
    }

    let mut node = match Node::new(NodeConfig::new(NODE_ID), sensors) {
        Ok(node) => node,
        Err(e) => {
            let _ = writeln!(Console, "node config refused: {e:?}\r");
            halt()
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
            report(node.seq());
        }
        // Sleep until the next SysTick or UART interrupt.
        cortex_m::asm::wfi();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let _ = writeln!(Console, "panic: {info}; resetting\r");
    cortex_m::peripheral::SCB::sys_reset()
}
