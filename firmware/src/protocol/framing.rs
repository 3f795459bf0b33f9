//! Framing of one message: `COBS( postcard(msg) ++ crc32_le(postcard(msg)) ) ++ 0x00`.
//!
//! This module owns the byte-level building blocks shared by the sender ([`encode`]) and the
//! streaming reader ([`super::decoder`]): the CRC-32 flavour, COBS encoding and in-place
//! decoding, and the size limits of the spec (`docs/node-wire.md`, "One frame").
//!
//! Encoding allocates nothing and needs no scratch buffer: postcard writes the message into
//! the tail of the caller's buffer, the CRC is appended after it, and COBS then stuffs the
//! bytes forward in place (COBS output never overtakes its input when the input starts far
//! enough into the buffer; see [`encode`]).

use core::fmt;

use crc::{Crc, CRC_32_ISO_HDLC};
use serde::Serialize;

/// Most bytes of one COBS-encoded frame before its terminating `0x00` (spec: a longer frame
/// is dropped by the reader).
pub const MAX_FRAME_LEN: usize = 512;

/// Most bytes [`encode`] writes for one message, terminating `0x00` included. A buffer of this
/// size always suffices for a frame that the reader would accept.
pub const MAX_ENCODED_LEN: usize = MAX_FRAME_LEN + 1;

/// Most postcard bytes of one message [`encode`] accepts: with the CRC that is 509 raw
/// bytes, whose worst-case COBS encoding (3 code bytes) is exactly [`MAX_FRAME_LEN`]. The
/// limit does not depend on the message's content, so a message type either always fits or
/// is refused deterministically; v1 messages are at most ~160 bytes.
pub const MAX_PAYLOAD_LEN: usize = max_raw_len(MAX_ENCODED_LEN) - CRC_LEN;

/// Size of the CRC appended to the postcard bytes.
pub const CRC_LEN: usize = 4;

/// The frame terminator; COBS guarantees it never occurs inside a frame.
pub const FRAME_END: u8 = 0x00;

/// CRC-32/ISO-HDLC (zlib/Ethernet), as the spec requires. A 256-entry table (1 KiB of flash)
/// is the compromise between MCU flash and the gateway's decode rate.
pub const CRC32: Crc<u32> = Crc::<u32>::new(&CRC_32_ISO_HDLC);

/// Longest run of non-zero bytes one COBS block can carry (its code byte is then `0xFF`).
const COBS_MAX_RUN: usize = 254;

/// Why [`encode`] could not frame a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// The output buffer is too small for this frame (a buffer of [`MAX_ENCODED_LEN`] bytes
    /// never gives this error).
    BufferTooSmall,
    /// The encoded frame would exceed [`MAX_FRAME_LEN`], so no reader would accept it.
    TooLarge,
    /// postcard refused the value (e.g. a sequence whose length serde cannot know up front).
    Serialize,
}

impl EncodeError {
    /// A stable snake_case name for logs and counters.
    pub const fn name(self) -> &'static str {
        match self {
            EncodeError::BufferTooSmall => "buffer_too_small",
            EncodeError::TooLarge => "too_large",
            EncodeError::Serialize => "serialize",
        }
    }
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(feature = "std")]
impl std::error::Error for EncodeError {}

/// Worst-case COBS overhead (code bytes) for `raw_len` input bytes: one code byte per started
/// block, a block ending at every 254th byte.
pub const fn cobs_overhead(raw_len: usize) -> usize {
    1 + raw_len / COBS_MAX_RUN
}

/// Largest raw (pre-COBS) length whose encoding, terminator included, fits in `total` bytes:
/// the largest `r` with `r + cobs_overhead(r) + 1 <= total`.
const fn max_raw_len(total: usize) -> usize {
    if total < 2 {
        return 0;
    }
    // r + r/254 <= x  <=>  r <= x - (x + 1)/255 (checked exhaustively in the unit tests).
    let x = total - 2;
    x - (x + 1) / (COBS_MAX_RUN + 1)
}

/// Encodes `msg` as one frame into `out`: `COBS(postcard(msg) ++ crc32_le) ++ 0x00`.
///
/// Returns the number of bytes written, the trailing `0x00` included. Nothing is allocated.
///
/// Size rules (content independent): with `raw` = postcard length + 4, `out` needs
/// `raw + cobs_overhead(raw) + 1` bytes (the worst case, as COBS runs in place), else
/// [`EncodeError::BufferTooSmall`]; a message of more than [`MAX_PAYLOAD_LEN`] postcard bytes
/// gives [`EncodeError::TooLarge`] when `out` has at least [`MAX_ENCODED_LEN`] bytes (so a
/// buffer of that size fits every encodable message). On error `out`'s contents are
/// unspecified.
pub fn encode<M: Serialize>(msg: &M, out: &mut [u8]) -> Result<usize, EncodeError> {
    let limit = out.len().min(MAX_ENCODED_LEN);
    let raw_cap = max_raw_len(limit);
    // Raw bytes start this far in, so COBS (which writes one code byte per block ahead of
    // the data it copies) can encode forward in place without overwriting unread input.
    let offset = cobs_overhead(raw_cap);
    let too_big = if out.len() >= MAX_ENCODED_LEN {
        EncodeError::TooLarge
    } else {
        EncodeError::BufferTooSmall
    };
    if raw_cap < CRC_LEN {
        return Err(too_big);
    }
    let payload_region = &mut out[offset..offset + raw_cap - CRC_LEN];
    let payload_len = match postcard::to_slice(msg, payload_region) {
        Ok(written) => written.len(),
        Err(postcard::Error::SerializeBufferFull) => return Err(too_big),
        Err(_) => return Err(EncodeError::Serialize),
    };
    let payload_end = offset + payload_len;
    let crc = CRC32.checksum(&out[offset..payload_end]);
    out[payload_end..payload_end + CRC_LEN].copy_from_slice(&crc.to_le_bytes());
    let encoded_len = cobs_encode_in_place(out, offset, payload_len + CRC_LEN);
    out[encoded_len] = FRAME_END;
    Ok(encoded_len + 1)
}

/// Like [`encode`], with one `0x00` written before the frame; returns the bytes written, both
/// `0x00`s included (`out` needs one byte more than [`encode`] needs).
///
/// The leading `0x00` ends whatever partial frame the receiver holds (line noise, a node's
/// reboot, another protocol's bytes such as a Modbus probe on the wrong port), so this frame
/// is not glued to it and lost; an empty frame is skipped by every reader, so the byte costs
/// nothing else. The gateway sends every command this way: a command is sent once and waited
/// for, so it must not be spent on resynchronising the node's decoder.
pub fn encode_after_delimiter<M: Serialize>(msg: &M, out: &mut [u8]) -> Result<usize, EncodeError> {
    let Some((first, rest)) = out.split_first_mut() else {
        return Err(EncodeError::BufferTooSmall);
    };
    *first = FRAME_END;
    Ok(1 + encode(msg, rest)?)
}

/// COBS-encodes `buf[offset..offset + len]` to the start of `buf`, returning the encoded
/// length. Requires `offset >= cobs_overhead(len)` and room for the result (both guaranteed
/// by [`encode`]): then every write lands at or before the byte just read.
///
/// Emits the classic form: a frame ending with a full 254-byte run gets a final `0x01`
/// block; [`cobs_decode_in_place`] accepts the form without it too.
fn cobs_encode_in_place(buf: &mut [u8], offset: usize, len: usize) -> usize {
    let mut code_pos = 0;
    let mut write = 1;
    let mut code: u8 = 1;
    for read in offset..offset + len {
        let byte = buf[read];
        if byte == 0 {
            buf[code_pos] = code;
            code_pos = write;
            write += 1;
            code = 1;
        } else {
            buf[write] = byte;
            write += 1;
            code += 1;
            if code == 0xFF {
                buf[code_pos] = code;
                code_pos = write;
                write += 1;
                code = 1;
            }
        }
    }
    buf[code_pos] = code;
    write
}

/// The COBS encoding of a frame body is malformed (a block runs past the frame's end, or a
/// `0x00` occurs inside it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CobsError;

/// Decodes the COBS bytes `buf` (one frame, without its terminator) in place and returns the
/// decoded length; the decoded bytes are `buf[..len]`. Decoding never writes ahead of where it
/// reads, so no second buffer is needed.
pub fn cobs_decode_in_place(buf: &mut [u8]) -> Result<usize, CobsError> {
    let len = buf.len();
    let mut read = 0;
    let mut write = 0;
    while read < len {
        let code = buf[read];
        if code == 0 {
            return Err(CobsError);
        }
        read += 1;
        let run = usize::from(code - 1);
        let run_end = read + run;
        if run_end > len {
            return Err(CobsError);
        }
        buf.copy_within(read..run_end, write);
        write += run;
        read = run_end;
        // Every block but a full one ends with an implied zero, except at the frame's end.
        if code != 0xFF && read < len {
            buf[write] = 0;
            write += 1;
        }
    }
    Ok(write)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain reference COBS encoder (separate output buffer) for cross-checking: split the
    /// data at zeros, cut zero-free runs at 254 bytes, one code byte per block.
    fn reference_cobs(data: &[u8], out: &mut [u8]) -> usize {
        let mut w = 0;
        let mut run = [0u8; 254];
        let mut run_len = 0;
        for i in 0..=data.len() {
            if i == data.len() || data[i] == 0 {
                out[w] = (run_len + 1) as u8;
                out[w + 1..w + 1 + run_len].copy_from_slice(&run[..run_len]);
                w += 1 + run_len;
                run_len = 0;
            } else {
                run[run_len] = data[i];
                run_len += 1;
                if run_len == 254 {
                    out[w] = 0xFF;
                    out[w + 1..w + 255].copy_from_slice(&run);
                    w += 255;
                    run_len = 0;
                }
            }
        }
        w
    }

    fn patterned(len: usize, seed: u32) -> [u8; 600] {
        let mut data = [0u8; 600];
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        for b in data.iter_mut().take(len) {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            // About one zero in eight, long zero-free runs when seed is odd.
            *b = if seed % 2 == 1 {
                (state % 255 + 1) as u8
            } else {
                (state % 8) as u8 * 0x21
            };
        }
        data
    }

    #[test]
    fn max_raw_len_is_exact() {
        for total in 0..=MAX_ENCODED_LEN + 300 {
            let r = max_raw_len(total);
            if total >= 2 {
                assert!(
                    r + cobs_overhead(r) < total,
                    "total {total}: {r} does not fit"
                );
                assert!(
                    r + 1 + cobs_overhead(r + 1) >= total,
                    "total {total}: {} would fit too",
                    r + 1
                );
            } else {
                assert_eq!(r, 0);
            }
        }
    }

    #[test]
    fn in_place_encoding_matches_reference_and_round_trips() {
        for len in 0..520 {
            for seed in 0..4 {
                let data = patterned(len, seed);
                let mut expected = [0u8; 700];
                let expected_len = reference_cobs(&data[..len], &mut expected);

                let offset = cobs_overhead(len);
                let mut buf = [0xAAu8; 700];
                buf[offset..offset + len].copy_from_slice(&data[..len]);
                let n = cobs_encode_in_place(&mut buf, offset, len);
                assert_eq!(
                    &buf[..n],
                    &expected[..expected_len],
                    "len {len} seed {seed}"
                );
                assert!(n <= len + cobs_overhead(len));
                assert!(!buf[..n].contains(&0), "len {len} seed {seed}");

                let m = cobs_decode_in_place(&mut buf[..n]).unwrap();
                assert_eq!(&buf[..m], &data[..len], "len {len} seed {seed}");
            }
        }
    }

    #[test]
    fn decode_accepts_frame_ending_on_full_block_without_final_code() {
        let mut frame = [0u8; 255];
        frame[0] = 0xFF;
        for (i, b) in frame[1..].iter_mut().enumerate() {
            *b = (i % 250) as u8 + 1;
        }
        let expected = frame;
        let n = cobs_decode_in_place(&mut frame).unwrap();
        assert_eq!(n, 254);
        assert_eq!(&frame[..254], &expected[1..]);
    }

    #[test]
    fn decode_rejects_truncated_block_and_inner_zero() {
        assert_eq!(cobs_decode_in_place(&mut [0x05, 1, 2]), Err(CobsError));
        assert_eq!(cobs_decode_in_place(&mut [0x02, 1, 0, 1]), Err(CobsError));
        assert_eq!(cobs_decode_in_place(&mut [0x01]), Ok(0));
        assert_eq!(cobs_decode_in_place(&mut []), Ok(0));
    }

    #[test]
    fn encode_reports_small_buffer_and_oversize() {
        let values: heapless::Vec<u8, 600> = heapless::Vec::from_slice(&[7u8; 600]).unwrap();
        let mut out = [0u8; MAX_ENCODED_LEN];
        // 600 bytes of payload can never make a frame of <= 512 bytes.
        assert_eq!(encode(&values, &mut out), Err(EncodeError::TooLarge));
        let mut big = [0u8; 1024];
        assert_eq!(encode(&values, &mut big), Err(EncodeError::TooLarge));
        let mut small = [0u8; 8];
        assert_eq!(
            encode(&[1u8; 8], &mut small),
            Err(EncodeError::BufferTooSmall)
        );
        assert_eq!(
            encode(&0u8, &mut [0u8; 3]),
            Err(EncodeError::BufferTooSmall)
        );
    }

    #[test]
    fn encode_size_rules_are_exact() {
        assert_eq!(MAX_PAYLOAD_LEN, 505);
        // A vector of n ones: postcard writes a varint length then n bytes, so the sizes
        // sweep across the 254-byte COBS block boundaries and the frame limit.
        for n in (0..=504).step_by(7).chain(240..260).chain(495..505) {
            let msg = bytes_vec(&[1u8; 504][..n]);
            let mut scratch = [0u8; 1024];
            let payload = postcard::to_slice(&msg, &mut scratch).unwrap().len();
            let raw = payload + CRC_LEN;
            let need = raw + cobs_overhead(raw) + 1;
            let mut roomy = [0u8; 1024];
            if payload > MAX_PAYLOAD_LEN {
                assert_eq!(
                    encode(&msg, &mut roomy),
                    Err(EncodeError::TooLarge),
                    "n {n}"
                );
                continue;
            }
            assert!(need <= MAX_ENCODED_LEN);
            let len = encode(&msg, &mut roomy).unwrap();
            assert!(len <= need && roomy[len - 1] == 0 && !roomy[..len - 1].contains(&0));
            let mut exact = [0u8; 1024];
            assert_eq!(encode(&msg, &mut exact[..need]), Ok(len), "n {n}");
            assert_eq!(&exact[..len], &roomy[..len]);
            assert_eq!(
                encode(&msg, &mut exact[..need - 1]),
                Err(EncodeError::BufferTooSmall),
                "n {n}"
            );
            // The frame decodes back to postcard bytes + CRC.
            let raw_len = cobs_decode_in_place(&mut roomy[..len - 1]).unwrap();
            assert_eq!(raw_len, raw);
            assert_eq!(&roomy[..payload], &scratch[..payload]);
            let crc = CRC32.checksum(&roomy[..payload]).to_le_bytes();
            assert_eq!(&roomy[payload..raw], &crc);
        }
    }

    /// `bytes` as a serde sequence.
    fn bytes_vec(bytes: &[u8]) -> heapless::Vec<u8, 504> {
        let mut v = heapless::Vec::new();
        for &b in bytes {
            let _ = v.push(b);
        }
        v
    }

    #[test]
    fn crc_check_value() {
        assert_eq!(CRC32.checksum(b"123456789"), 0xCBF4_3926);
    }
}
