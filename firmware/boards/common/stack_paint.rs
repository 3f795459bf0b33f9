//! Stack painting: the free RAM between the end of the static data (`__sheap`, where
//! cortex-m-rt would start a heap) and the running stack is filled with a pattern at boot;
//! the lowest word no longer holding it is the deepest the stack has reached since.
//! Shared by the board images (`#[path]`-included).

/// Written over the unused stack at boot.
const PATTERN: u32 = 0xC0FF_EE55;
/// Left unpainted below the stack pointer at the time of painting, bytes.
const MARGIN: usize = 64;

extern "C" {
    static mut __sheap: u32;
    static _stack_start: u32;
}

fn region() -> (usize, usize) {
    // Linker symbols: only their addresses are taken.
    let bottom = core::ptr::addr_of!(__sheap) as usize;
    let top = core::ptr::addr_of!(_stack_start) as usize;
    (bottom, top)
}

/// Paint the free stack. Call first thing in `main`.
pub fn paint() {
    let (bottom, _) = region();
    let sp = cortex_m::register::msp::read() as usize;
    let end = sp.saturating_sub(MARGIN) & !3;
    let mut p = bottom;
    while p < end {
        // SAFETY: [bottom, sp - MARGIN) is RAM no live object occupies (above the statics,
        // below the stack in use), word aligned.
        unsafe { core::ptr::write_volatile(p as *mut u32, PATTERN) };
        p += 4;
    }
}

/// (deepest stack use so far, stack region size), bytes.
pub fn high_water() -> (usize, usize) {
    let (bottom, top) = region();
    let mut p = bottom;
    // SAFETY: reads of RAM words inside the stack region.
    while p < top && unsafe { core::ptr::read_volatile(p as *const u32) } == PATTERN {
        p += 4;
    }
    (top - p, top - bottom)
}
