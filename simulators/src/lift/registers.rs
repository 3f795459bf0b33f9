//! The controller's side of the generic lift Modbus profile, written from the contract
//! (`docs/lift-modbus.md`) and the Modbus RTU serial-line rules, independently of the agent's
//! decoder: the input-register table, the CRC-16 and the line timing the slave paces with.
//!
//! The end-to-end lift tests check the agent against this table, so nothing here may come
//! from the agent's `Profile` or `modbus_rtu`: a register-map or CRC mistake made on one side
//! then shows up as a wrong reading in the feed instead of passing silently.

use std::time::Duration;

use towerlink_agent::feed::{LiftDirection, LiftDoor, LiftMode};
use towerlink_agent::profile::LiftReading;

/// Function code "read input registers", the only one the contract lets the agent send.
pub const READ_INPUT_REGISTERS: u8 = 0x04;
/// First input register of the table.
pub const START: u16 = 0;
/// Registers in the table (one request of 14 reads a whole lift).
pub const COUNT: u16 = 14;

/// Register 4, the flags: bit 0 running.
pub const FLAG_RUNNING: u16 = 1 << 0;
/// Bit 1: in the door zone (levelled).
pub const FLAG_DOOR_ZONE: u16 = 1 << 1;
/// Bit 2: car occupied.
pub const FLAG_OCCUPIED: u16 = 1 << 2;
/// Bit 3: main power ok.
pub const FLAG_MAIN_POWER_OK: u16 = 1 << 3;
/// Bit 4: safety circuit closed.
pub const FLAG_SAFETY_CLOSED: u16 = 1 << 4;
/// Bit 5: door lock closed.
pub const FLAG_DOOR_LOCK_CLOSED: u16 = 1 << 5;
/// Bit 6: alarm button pressed.
pub const FLAG_ALARM_BUTTON: u16 = 1 << 6;
/// Bit 7: overload.
pub const FLAG_OVERLOAD: u16 = 1 << 7;

/// The 14 input registers a generic-profile controller serves for `reading`.
pub fn input_registers(reading: &LiftReading) -> [u16; COUNT as usize] {
    let s = &reading.status;
    let mode = match s.mode {
        LiftMode::Normal => 0,
        LiftMode::Inspection => 1,
        LiftMode::FireService => 2,
        LiftMode::OutOfService => 3,
        LiftMode::Independent => 4,
        LiftMode::EmergencyPower => 5,
    };
    let direction = match s.direction {
        LiftDirection::Stopped => 0,
        LiftDirection::Up => 1,
        LiftDirection::Down => 2,
    };
    let door = match s.door {
        LiftDoor::Closed => 0,
        LiftDoor::Opening => 1,
        LiftDoor::Open => 2,
        LiftDoor::Closing => 3,
    };
    let mut flags = 0u16;
    for (on, bit) in [
        (s.running, FLAG_RUNNING),
        (s.door_zone, FLAG_DOOR_ZONE),
        (s.occupied, FLAG_OCCUPIED),
        (reading.main_power_ok, FLAG_MAIN_POWER_OK),
        (reading.safety_closed, FLAG_SAFETY_CLOSED),
        (reading.door_lock_closed, FLAG_DOOR_LOCK_CLOSED),
        (reading.alarm_button, FLAG_ALARM_BUTTON),
        (reading.overload, FLAG_OVERLOAD),
    ] {
        if on {
            flags |= bit;
        }
    }
    // u32 values: the high word at the lower address.
    let high = |v: u32| (v >> 16) as u16;
    let low = |v: u32| (v & 0xFFFF) as u16;
    [
        mode,
        u16::from_be_bytes(s.floor.to_be_bytes()), // i16, two's complement
        direction,
        door,
        flags,
        s.speed_mm_s,
        s.load_pct,
        s.fault_code,
        high(s.position_mm),
        low(s.position_mm),
        high(s.run_count),
        low(s.run_count),
        high(s.door_cycles),
        low(s.door_cycles),
    ]
}

/// CRC-16/MODBUS (polynomial 0x8005 reflected = 0xA001, initial 0xFFFF, bit by bit as in the
/// Modbus over serial line specification).
pub fn crc16(bytes: &[u8]) -> u16 {
    let mut crc = 0xFFFFu16;
    for &b in bytes {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// Appends the CRC to a frame, low byte first (as Modbus RTU sends it).
pub fn push_crc(frame: &mut Vec<u8>) {
    let crc = crc16(frame);
    frame.extend_from_slice(&crc.to_le_bytes());
}

/// Whether a whole frame (CRC included) checks.
pub fn crc_ok(frame: &[u8]) -> bool {
    match frame.len().checked_sub(2) {
        Some(n) if n > 0 => crc16(&frame[..n]).to_le_bytes() == [frame[n], frame[n + 1]],
        _ => false,
    }
}

/// Character times of the line, for pacing answers.
#[derive(Debug, Clone, Copy)]
pub struct Line {
    bits_per_char: u64,
    baud: u64,
}

impl Line {
    /// A line at `baud`, with or without a parity bit, with `stop_bits`.
    pub fn new(baud: u32, parity: bool, stop_bits: u8) -> Line {
        Line {
            bits_per_char: 1 + 8 + u64::from(parity) + u64::from(stop_bits),
            baud: u64::from(baud.max(1)),
        }
    }

    /// Time `n` characters take.
    pub fn chars(&self, n: usize) -> Duration {
        Duration::from_nanos(self.bits_per_char * n as u64 * 1_000_000_000 / self.baud)
    }

    /// The inter-frame silence: 3.5 characters, fixed at 1.75 ms above 19200 baud.
    pub fn silence(&self) -> Duration {
        if self.baud > 19_200 {
            Duration::from_micros(1750)
        } else {
            Duration::from_nanos(self.bits_per_char * 35 * 100_000_000 / self.baud)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use towerlink_agent::profile::CarStatus;

    #[test]
    fn crc16_is_the_modbus_crc() {
        // The CRC catalogue's check value of CRC-16/MODBUS.
        assert_eq!(crc16(b"123456789"), 0x4B37);
        let mut frame = vec![0x01, 0x04, 0x00, 0x00, 0x00, 0x0E];
        push_crc(&mut frame);
        assert!(crc_ok(&frame));
        frame[3] ^= 1;
        assert!(!crc_ok(&frame));
        assert!(!crc_ok(&[0x01, 0x02]));
    }

    #[test]
    fn the_table_follows_the_contract() {
        let reading = LiftReading {
            status: CarStatus {
                mode: LiftMode::EmergencyPower,
                floor: -3,
                direction: LiftDirection::Down,
                door: LiftDoor::Closing,
                running: true,
                door_zone: false,
                occupied: true,
                speed_mm_s: 1480,
                load_pct: 35,
                position_mm: 0x0001_2345,
                fault_code: 41,
                run_count: 0x0002_0003,
                door_cycles: 0x0004_0005,
            },
            main_power_ok: false,
            safety_closed: true,
            door_lock_closed: false,
            alarm_button: true,
            overload: true,
        };
        assert_eq!(
            input_registers(&reading),
            [
                5,
                0xFFFD,
                2,
                3,
                0b1101_0101,
                1480,
                35,
                41,
                0x0001,
                0x2345,
                0x0002,
                0x0003,
                0x0004,
                0x0005
            ]
        );
    }
}
