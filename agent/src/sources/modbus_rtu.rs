//! Modbus RTU framing for a read-only master: the one request the agent can build, CRC-16,
//! line timing, and finding a valid answer in bytes that may carry noise.
//!
//! Read-only by construction: the only request type is [`ReadInputRegisters`], whose frame
//! is built with the function code [`READ_INPUT_REGISTERS`] (0x04) written as a constant.
//! There is no generic "function code + data" request anywhere in the agent, so no
//! configuration, profile or command can make it send a write (0x05, 0x06, 0x0F, 0x10...).
//!
//! Answers are found by scanning: noise bytes before an answer (a long RS-485 line in a
//! tower picks up bursts) do not hide it, because an answer is recognised by its unit id,
//! function, byte count and CRC at any offset, never by its position in the buffer.

use std::time::Duration;

use crc::{Crc, CRC_16_MODBUS};

pub use crate::profile::READ_INPUT_REGISTERS;

/// Exception answers set the high bit of the function code.
pub const EXCEPTION_FLAG: u8 = 0x80;
/// Length of a read-input-registers request on the wire.
pub const REQUEST_LEN: usize = 8;
/// Length of an exception answer on the wire.
pub const EXCEPTION_LEN: usize = 5;

const MODBUS_CRC: Crc<u16> = Crc::<u16>::new(&CRC_16_MODBUS);

/// CRC-16/MODBUS (poly 0x8005 reflected, init 0xFFFF); sent low byte first.
pub fn crc16(bytes: &[u8]) -> u16 {
    MODBUS_CRC.checksum(bytes)
}

/// Appends the CRC of `frame` to it, low byte first.
pub fn push_crc(frame: &mut Vec<u8>) {
    let crc = crc16(frame);
    frame.extend_from_slice(&crc.to_le_bytes());
}

/// Does `frame` (with its two CRC bytes) carry a correct CRC?
pub fn crc_ok(frame: &[u8]) -> bool {
    match frame.len().checked_sub(2) {
        Some(body) if body > 0 => {
            crc16(&frame[..body]).to_le_bytes() == [frame[body], frame[body + 1]]
        }
        _ => false,
    }
}

/// The only request the agent sends: read `count` input registers from `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadInputRegisters {
    /// Unit id, 1..=247.
    pub unit: u8,
    /// First register.
    pub start: u16,
    /// Number of registers, 1..=125.
    pub count: u16,
}

impl ReadInputRegisters {
    /// The request as sent on the line.
    pub fn to_frame(&self) -> [u8; REQUEST_LEN] {
        let [sh, sl] = self.start.to_be_bytes();
        let [ch, cl] = self.count.to_be_bytes();
        let body = [self.unit, READ_INPUT_REGISTERS, sh, sl, ch, cl];
        let [crc_lo, crc_hi] = crc16(&body).to_le_bytes();
        [
            body[0], body[1], body[2], body[3], body[4], body[5], crc_lo, crc_hi,
        ]
    }

    /// Length of a normal answer: unit, function, byte count, 2 bytes per register, CRC.
    pub fn answer_len(&self) -> usize {
        5 + 2 * usize::from(self.count)
    }
}

/// A valid answer to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The registers asked for.
    Registers(Vec<u16>),
    /// The controller refused with this exception code.
    Exception(u8),
}

/// Why bytes on the line were not the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// A complete frame of the right shape with a wrong CRC.
    Crc,
    /// A complete, valid frame from another unit id.
    WrongUnit(u8),
}

/// What a scan of the received bytes found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scan {
    /// The answer, if a valid one is there.
    pub answer: Option<Answer>,
    /// A complete frame that is not the answer (first one found), if any.
    pub invalid: Option<Invalid>,
}

/// Looks for the answer to `req` anywhere in `buf`.
pub fn scan(req: &ReadInputRegisters, buf: &[u8]) -> Scan {
    let mut found = Scan::default();
    let byte_count = 2 * usize::from(req.count);
    for i in 0..buf.len() {
        let rest = &buf[i..];
        let (Some(&unit), Some(&function)) = (rest.first(), rest.get(1)) else {
            break;
        };
        let len = if function == READ_INPUT_REGISTERS && rest.get(2) == Some(&(byte_count as u8)) {
            req.answer_len()
        } else if function == READ_INPUT_REGISTERS | EXCEPTION_FLAG {
            EXCEPTION_LEN
        } else {
            continue;
        };
        let Some(frame) = rest.get(..len) else {
            continue;
        };
        if !crc_ok(frame) {
            if unit == req.unit && found.invalid.is_none() {
                found.invalid = Some(Invalid::Crc);
            }
            continue;
        }
        if unit != req.unit {
            if found.invalid.is_none() {
                found.invalid = Some(Invalid::WrongUnit(unit));
            }
            continue;
        }
        found.answer = Some(if function & EXCEPTION_FLAG != 0 {
            Answer::Exception(frame[2])
        } else {
            Answer::Registers(
                frame[3..3 + byte_count]
                    .chunks_exact(2)
                    .map(|w| u16::from_be_bytes([w[0], w[1]]))
                    .collect(),
            )
        });
        return found;
    }
    found
}

/// A complete, CRC-valid frame found in received bytes, whoever it is from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Offset of its first byte in the buffer scanned.
    pub start: usize,
    /// Its length on the wire, CRC included.
    pub len: usize,
    /// The unit id it carries.
    pub unit: u8,
    /// Its function code (the exception bit included).
    pub function: u8,
    /// Its byte count (normal answers) or exception code (exceptions).
    pub byte_count_or_code: u8,
}

impl Frame {
    /// Is this the answer `req` asks for (its unit, function 0x04 with its byte count, or an
    /// exception to function 0x04)?
    pub fn answers(&self, req: &ReadInputRegisters) -> bool {
        self.unit == req.unit
            && ((self.function == READ_INPUT_REGISTERS
                && usize::from(self.byte_count_or_code) == 2 * usize::from(req.count))
                || self.function == READ_INPUT_REGISTERS | EXCEPTION_FLAG)
    }

    /// The answer it carries, `frame` being its bytes (`buf[start..start + len]`).
    pub fn decode(&self, frame: &[u8]) -> Option<Answer> {
        if self.function & EXCEPTION_FLAG != 0 {
            return Some(Answer::Exception(self.byte_count_or_code));
        }
        let data = frame.get(3..self.len.checked_sub(2)?)?;
        Some(Answer::Registers(
            data.chunks_exact(2)
                .map(|w| u16::from_be_bytes([w[0], w[1]]))
                .collect(),
        ))
    }
}

/// Length of a frame starting at `rest` if it is shaped like an answer to a read (functions
/// 1..=4: unit, function, byte count, data, CRC) or an exception to one (5 bytes); `None` if
/// its first bytes cannot start such a frame (or are not all there yet).
fn answer_shape(rest: &[u8]) -> Option<usize> {
    let function = *rest.get(1)?;
    match function {
        1..=4 => rest.get(2).map(|&bc| 5 + usize::from(bc)),
        0x81..=0x84 => Some(EXCEPTION_LEN),
        _ => None,
    }
}

/// Every complete, CRC-valid answer-shaped frame in `buf`, left to right and not overlapping
/// (bytes before, between and after them are noise or the start of a frame still arriving).
/// Pure: the bus decides what each one means (the awaited answer, a late one, a foreign one).
pub fn frames(buf: &[u8]) -> Vec<Frame> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 1 < buf.len() {
        let rest = &buf[i..];
        if let Some(len) = answer_shape(rest) {
            if let Some(bytes) = rest.get(..len) {
                if crc_ok(bytes) {
                    out.push(Frame {
                        start: i,
                        len,
                        unit: bytes[0],
                        function: bytes[1],
                        byte_count_or_code: bytes[2],
                    });
                    i += len;
                    continue;
                }
            }
        }
        i += 1;
    }
    out
}

/// Is there, anywhere in `buf`, a complete frame shaped like the answer to `req` (its unit,
/// function and byte count, or an exception) whose CRC is wrong?
pub fn has_corrupt_answer(req: &ReadInputRegisters, buf: &[u8]) -> bool {
    let byte_count = 2 * usize::from(req.count);
    (0..buf.len()).any(|i| {
        let rest = &buf[i..];
        let len = match (rest.first(), rest.get(1), rest.get(2)) {
            (Some(&u), Some(&f), Some(&bc))
                if u == req.unit && f == READ_INPUT_REGISTERS && usize::from(bc) == byte_count =>
            {
                req.answer_len()
            }
            (Some(&u), Some(&f), _)
                if u == req.unit && f == READ_INPUT_REGISTERS | EXCEPTION_FLAG =>
            {
                EXCEPTION_LEN
            }
            _ => return false,
        };
        rest.get(..len).is_some_and(|f| !crc_ok(f))
    })
}

/// Character and inter-frame times of a serial line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LineTiming {
    /// Bits per character: start + 8 data + parity + stop bits.
    pub bits_per_char: u32,
    /// Baud rate.
    pub baud: u32,
}

impl LineTiming {
    /// Timing of a line at `baud` with `parity` (a parity bit or not) and `stop_bits`.
    pub fn new(baud: u32, parity: bool, stop_bits: u8) -> LineTiming {
        LineTiming {
            bits_per_char: 1 + 8 + u32::from(parity) + u32::from(stop_bits),
            baud: baud.max(1),
        }
    }

    /// Time one character takes on the line.
    pub fn char_time(&self) -> Duration {
        Duration::from_nanos(u64::from(self.bits_per_char) * 1_000_000_000 / u64::from(self.baud))
    }

    /// Time `n` characters take on the line.
    pub fn chars(&self, n: usize) -> Duration {
        self.char_time() * n as u32
    }

    /// The silence that ends a frame: 3.5 character times, fixed at 1.75 ms above 19200
    /// baud (Modbus over serial line, 2.5.1.1: timers that short are not practical).
    pub fn t3_5(&self) -> Duration {
        if self.baud > 19_200 {
            Duration::from_micros(1750)
        } else {
            self.char_time() * 7 / 2
        }
    }

    /// The shortest possible time of one poll: request, answer of `count` registers, and
    /// the silence after each.
    pub fn poll_time(&self, count: u16) -> Duration {
        self.chars(REQUEST_LEN + 5 + 2 * usize::from(count)) + self.t3_5() * 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bit-by-bit CRC-16/MODBUS, written from the Modbus serial-line spec (6.2.2), to check
    /// the table-driven one against.
    fn crc_by_the_book(bytes: &[u8]) -> u16 {
        let mut crc: u16 = 0xFFFF;
        for &b in bytes {
            crc ^= u16::from(b);
            for _ in 0..8 {
                let lsb = crc & 1;
                crc >>= 1;
                if lsb == 1 {
                    crc ^= 0xA001;
                }
            }
        }
        crc
    }

    #[test]
    fn crc_matches_the_spec_vectors() {
        // Modbus over serial line, appendix B: "02 07" has CRC 0x1241, sent 41 12.
        assert_eq!(crc16(&[0x02, 0x07]), 0x1241);
        // The classic read-holding-registers example 01 03 00 00 00 0A -> C5 CD.
        let mut f = vec![0x01, 0x03, 0x00, 0x00, 0x00, 0x0A];
        push_crc(&mut f);
        assert_eq!(&f[6..], &[0xC5, 0xCD]);
        for data in [&b""[..], b"\x01", b"123456789", &[0xFF; 40]] {
            assert_eq!(crc16(data), crc_by_the_book(data));
        }
        assert_eq!(crc16(b"123456789"), 0x4B37); // the CRC catalogue's check value
    }

    #[test]
    fn the_request_is_always_function_4() {
        let req = ReadInputRegisters {
            unit: 2,
            start: 0,
            count: 14,
        };
        let f = req.to_frame();
        assert_eq!(&f[..6], &[0x02, 0x04, 0x00, 0x00, 0x00, 0x0E]);
        assert!(crc_ok(&f));
        assert_eq!(crc16(&f[..6]).to_le_bytes(), [f[6], f[7]]);
        // Whatever unit, start and count: function 4, and nothing else varies it.
        for unit in [1u8, 17, 247] {
            for start in [0u16, 0x1000, 0xFFF0] {
                for count in [1u16, 14, 125] {
                    let f = ReadInputRegisters { unit, start, count }.to_frame();
                    assert_eq!(f[1], READ_INPUT_REGISTERS);
                    assert_eq!(f[1], 0x04);
                    assert!(crc_ok(&f));
                }
            }
        }
    }

    fn answer(unit: u8, regs: &[u16]) -> Vec<u8> {
        let mut f = vec![unit, 0x04, (regs.len() * 2) as u8];
        for r in regs {
            f.extend_from_slice(&r.to_be_bytes());
        }
        push_crc(&mut f);
        f
    }

    const REQ: ReadInputRegisters = ReadInputRegisters {
        unit: 3,
        start: 0,
        count: 2,
    };

    #[test]
    fn finds_the_answer_behind_noise_and_rejects_bad_frames() {
        let good = answer(3, &[0x1234, 0xFFFE]);
        assert_eq!(
            scan(&REQ, &good).answer,
            Some(Answer::Registers(vec![0x1234, 0xFFFE]))
        );
        // Noise before the answer, including bytes that look like a frame start.
        let mut noisy = vec![0x03, 0x04, 0x09, 0x55, 0x03];
        noisy.extend_from_slice(&good);
        assert_eq!(
            scan(&REQ, &noisy).answer,
            Some(Answer::Registers(vec![0x1234, 0xFFFE]))
        );
        // Truncated: no answer, nothing complete.
        assert_eq!(scan(&REQ, &good[..good.len() - 1]), Scan::default());
        // A flipped bit: CRC.
        let mut bad = good.clone();
        bad[4] ^= 0x10;
        assert_eq!(
            scan(&REQ, &bad),
            Scan {
                answer: None,
                invalid: Some(Invalid::Crc)
            }
        );
        // Another unit's valid answer is not ours.
        let other = answer(4, &[1, 2]);
        assert_eq!(scan(&REQ, &other).invalid, Some(Invalid::WrongUnit(4)));
        assert_eq!(scan(&REQ, &other).answer, None);
        // An answer with the wrong number of registers is not ours either.
        assert_eq!(scan(&REQ, &answer(3, &[1, 2, 3])).answer, None);
    }

    #[test]
    fn frames_finds_every_valid_answer_shaped_frame_in_order() {
        let a = answer(3, &[1, 2]);
        let b = answer(9, &[7]);
        let mut exc = vec![3, 0x84, 0x02];
        push_crc(&mut exc);
        let mut buf = vec![0x55, 0x03, 0x04];
        buf.extend_from_slice(&a);
        buf.extend_from_slice(&[0xAA]);
        buf.extend_from_slice(&b);
        buf.extend_from_slice(&exc);
        buf.extend_from_slice(&a[..4]); // a frame still arriving
        let found = frames(&buf);
        assert_eq!(found.len(), 3, "{found:?}");
        assert_eq!(
            (found[0].start, found[0].unit, found[0].len),
            (3, 3, a.len())
        );
        assert!(found[0].answers(&REQ));
        assert_eq!(
            found[0].decode(&buf[3..3 + a.len()]),
            Some(Answer::Registers(vec![1, 2]))
        );
        assert_eq!(found[1].unit, 9);
        assert!(!found[1].answers(&REQ));
        assert!(found[2].answers(&REQ));
        assert_eq!(found[2].decode(&exc), Some(Answer::Exception(2)));
        // Wrong byte count from the right unit: a frame, not the answer.
        let three = answer(3, &[1, 2, 3]);
        let f = frames(&three);
        assert_eq!(f.len(), 1);
        assert!(!f[0].answers(&REQ));
        // A corrupt answer is no frame, but is seen as one.
        let mut bad = a.clone();
        bad[4] ^= 1;
        assert!(frames(&bad).is_empty());
        assert!(has_corrupt_answer(&REQ, &bad));
        assert!(!has_corrupt_answer(&REQ, &a));
        assert!(!has_corrupt_answer(&REQ, &bad[..bad.len() - 1]));
    }

    #[test]
    fn exceptions_are_answers() {
        let mut f = vec![3, 0x84, 0x02];
        push_crc(&mut f);
        assert_eq!(scan(&REQ, &f).answer, Some(Answer::Exception(2)));
    }

    #[test]
    fn line_timing() {
        let t = LineTiming::new(9600, false, 1);
        assert_eq!(t.bits_per_char, 10);
        assert_eq!(t.char_time(), Duration::from_nanos(1_041_666));
        assert_eq!(t.t3_5(), Duration::from_nanos(3_645_831));
        // 8 + 33 characters and two 3.5-character gaps at 9600 8N1: 50.0 ms.
        let poll = t.poll_time(14).as_secs_f64();
        assert!((poll - 0.050_0).abs() < 0.000_1, "{poll}");
        let fast = LineTiming::new(115_200, true, 1);
        assert_eq!(fast.bits_per_char, 11);
        assert_eq!(fast.t3_5(), Duration::from_micros(1750));
    }
}
