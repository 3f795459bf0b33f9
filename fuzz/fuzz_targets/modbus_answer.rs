//! Fuzz target: bytes from a lift controller into the Modbus RTU answer scan; the first
//! four bytes choose the request (unit, start, count).
#![no_main]

use libfuzzer_sys::fuzz_target;
use towerlink_agent::sources::modbus_rtu::{scan, Answer, ReadInputRegisters};

fuzz_target!(|data: &[u8]| {
    let Some((head, line)) = data.split_first_chunk::<4>() else {
        return;
    };
    let req = ReadInputRegisters {
        unit: head[0].clamp(1, 247),
        start: u16::from(head[1]) << 8 | u16::from(head[2]),
        count: u16::from(head[3]).clamp(1, 125),
    };
    if let Some(Answer::Registers(regs)) = scan(&req, line).answer {
        assert_eq!(regs.len(), usize::from(req.count));
    }
});
