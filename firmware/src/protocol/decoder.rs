//! Streaming decoder: finds frames in an arbitrary byte stream and never stops.
//!
//! Bytes arrive in whatever pieces the UART driver or the OS hands over; [`StreamDecoder`]
//! accumulates one frame (up to [`MAX_FRAME_LEN`] bytes) in a fixed buffer, and at each `0x00`
//! decodes it: COBS in place, CRC-32 check, postcard, then the spec's value constraints
//! ([`WireMessage::validate`]). Whatever goes wrong, the frame is dropped, counted in
//! [`DecodeStats`] and reported as a [`FrameError`], and decoding resumes at the next `0x00`
//! (spec: noise, a node rebooting mid-frame or a wrong baud rate must never stop the reader).
//!
//! The result depends only on the bytes, not on how the stream is split into `feed` calls.

use core::fmt;

use serde::de::DeserializeOwned;

use super::framing::{cobs_decode_in_place, CRC32, CRC_LEN, FRAME_END, MAX_FRAME_LEN};
use super::message::{Body, Command, Frame, MAX_VALUES, PROTOCOL_VERSION};

/// Why a frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The CRC does not match (or the frame is too short to hold one).
    Crc,
    /// More than [`MAX_FRAME_LEN`] bytes arrived before the `0x00`.
    Oversize,
    /// The COBS encoding is malformed.
    Cobs,
    /// The CRC matches but the bytes are not a postcard message of the expected type (or are
    /// followed by extra bytes).
    Decode,
    /// The message decoded but breaks a constraint of the spec (version, value count, NaN...).
    Invalid,
}

impl FrameError {
    /// A stable snake_case name for logs and counters.
    pub const fn name(self) -> &'static str {
        match self {
            FrameError::Crc => "crc",
            FrameError::Oversize => "oversize",
            FrameError::Cobs => "cobs",
            FrameError::Decode => "decode",
            FrameError::Invalid => "invalid",
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(feature = "std")]
impl std::error::Error for FrameError {}

/// What a [`StreamDecoder`] has seen since it was created.
///
/// Every reported frame outcome is counted exactly once: `frames_ok + crc_errors + oversize +
/// undecodable` equals the number of outcomes `feed` returned. Empty frames are not counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DecodeStats {
    /// Frames decoded and valid.
    pub frames_ok: u64,
    /// Frames dropped for a CRC mismatch ([`FrameError::Crc`]).
    pub crc_errors: u64,
    /// Frames dropped for exceeding [`MAX_FRAME_LEN`] ([`FrameError::Oversize`]).
    pub oversize: u64,
    /// Frames dropped as [`FrameError::Cobs`], [`FrameError::Decode`] or
    /// [`FrameError::Invalid`].
    pub undecodable: u64,
    /// Every byte consumed, terminators and dropped bytes included.
    pub bytes: u64,
}

impl DecodeStats {
    fn count(&mut self, outcome: Result<(), FrameError>) {
        match outcome {
            Ok(()) => self.frames_ok += 1,
            Err(FrameError::Crc) => self.crc_errors += 1,
            Err(FrameError::Oversize) => self.oversize += 1,
            Err(FrameError::Cobs | FrameError::Decode | FrameError::Invalid) => {
                self.undecodable += 1
            }
        }
    }
}

/// A message type of the wire protocol, with the constraints postcard cannot express.
pub trait WireMessage {
    /// Whether the decoded value satisfies the spec; a frame that does not is dropped as
    /// [`FrameError::Invalid`].
    fn validate(&self) -> bool;
}

impl WireMessage for Frame {
    /// Version 1; a Samples batch holds 1..=32 finite values (the spec: NaN or infinity is
    /// never sent). Channel and value counts above capacity already fail in postcard.
    fn validate(&self) -> bool {
        if self.version != PROTOCOL_VERSION {
            return false;
        }
        match &self.body {
            Body::Samples { values, .. } => {
                !values.is_empty()
                    && values.len() <= MAX_VALUES
                    && values.iter().all(|v| v.is_finite())
            }
            Body::Hello { .. } | Body::Status { .. } | Body::Fault { .. } | Body::Ack { .. } => {
                true
            }
        }
    }
}

impl WireMessage for Command {
    /// Version 1; every op and field value is otherwise allowed (the node answers an unknown
    /// channel with an Ack result, not by dropping the frame).
    fn validate(&self) -> bool {
        self.version == PROTOCOL_VERSION
    }
}

/// Finds and decodes frames in a byte stream; see the [module docs](self).
///
/// No allocation: one fixed buffer of [`MAX_FRAME_LEN`] bytes.
#[derive(Debug, Clone)]
pub struct StreamDecoder {
    buf: [u8; MAX_FRAME_LEN],
    len: usize,
    /// More than `MAX_FRAME_LEN` bytes arrived without a terminator: drop everything up to
    /// the next `0x00`, then report one `Oversize`.
    discarding: bool,
    stats: DecodeStats,
}

impl Default for StreamDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamDecoder {
    /// A decoder at the start of a stream (a partial first frame is fine: it fails its CRC or
    /// COBS check and is counted, then decoding is in step).
    pub const fn new() -> Self {
        StreamDecoder {
            buf: [0; MAX_FRAME_LEN],
            len: 0,
            discarding: false,
            stats: DecodeStats {
                frames_ok: 0,
                crc_errors: 0,
                oversize: 0,
                undecodable: 0,
                bytes: 0,
            },
        }
    }

    /// Counters since creation ([`reset`](Self::reset) keeps them).
    pub fn stats(&self) -> &DecodeStats {
        &self.stats
    }

    /// Drops a partially received frame, e.g. after the port was reopened, so its bytes are
    /// not glued to the next frame's. Counts nothing.
    pub fn reset(&mut self) {
        self.len = 0;
        self.discarding = false;
    }

    /// Consumes `input` up to and including the first terminator that ends a non-empty frame,
    /// and returns how many bytes it consumed and that frame's outcome; or consumes all of
    /// `input` and returns `None` if no frame ended in it. Call again with the rest.
    ///
    /// Empty frames (a `0x00` right after another or at the start) are skipped silently: idle
    /// lines and resynchronising senders produce them.
    pub fn feed<M>(&mut self, input: &[u8]) -> (usize, Option<Result<M, FrameError>>)
    where
        M: DeserializeOwned + WireMessage,
    {
        let mut consumed = 0;
        while consumed < input.len() {
            let rest = &input[consumed..];
            let Some(end) = rest.iter().position(|&b| b == FRAME_END) else {
                self.append(rest);
                self.stats.bytes += rest.len() as u64;
                return (input.len(), None);
            };
            self.append(&rest[..end]);
            consumed += end + 1;
            self.stats.bytes += end as u64 + 1;
            if let Some(outcome) = self.finish_frame::<M>() {
                self.stats
                    .count(outcome.as_ref().map(|_| ()).map_err(|e| *e));
                return (consumed, Some(outcome));
            }
        }
        (consumed, None)
    }

    /// Feeds all of `input`, calling `f` with the outcome of every frame that ends in it.
    pub fn decode_all<M, F>(&mut self, input: &[u8], mut f: F)
    where
        M: DeserializeOwned + WireMessage,
        F: FnMut(Result<M, FrameError>),
    {
        let mut rest = input;
        while !rest.is_empty() {
            let (used, outcome) = self.feed::<M>(rest);
            if let Some(outcome) = outcome {
                f(outcome);
            }
            rest = &rest[used..];
        }
    }

    /// Adds frame bytes (no terminator among them) to the buffer, switching to discarding
    /// once the frame exceeds `MAX_FRAME_LEN`.
    fn append(&mut self, bytes: &[u8]) {
        if self.discarding {
            return;
        }
        let end = self.len + bytes.len();
        if end > MAX_FRAME_LEN {
            self.discarding = true;
            self.len = 0;
        } else {
            self.buf[self.len..end].copy_from_slice(bytes);
            self.len = end;
        }
    }

    /// Called at a terminator: decodes the buffered frame and empties the buffer. `None` for
    /// an empty frame.
    fn finish_frame<M>(&mut self) -> Option<Result<M, FrameError>>
    where
        M: DeserializeOwned + WireMessage,
    {
        if self.discarding {
            self.discarding = false;
            return Some(Err(FrameError::Oversize));
        }
        let len = core::mem::replace(&mut self.len, 0);
        if len == 0 {
            return None;
        }
        Some(decode_frame(&mut self.buf[..len]))
    }
}

/// Decodes one frame (COBS bytes without the terminator), in place.
fn decode_frame<M>(frame: &mut [u8]) -> Result<M, FrameError>
where
    M: DeserializeOwned + WireMessage,
{
    let raw_len = cobs_decode_in_place(frame).map_err(|_| FrameError::Cobs)?;
    let Some(payload_len) = raw_len.checked_sub(CRC_LEN) else {
        return Err(FrameError::Crc);
    };
    let (payload, crc) = frame[..raw_len].split_at(payload_len);
    let received = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if CRC32.checksum(payload) != received {
        return Err(FrameError::Crc);
    }
    let (message, trailing) =
        postcard::take_from_bytes::<M>(payload).map_err(|_| FrameError::Decode)?;
    if !trailing.is_empty() {
        return Err(FrameError::Decode);
    }
    if !message.validate() {
        return Err(FrameError::Invalid);
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::framing::{encode, encode_after_delimiter, MAX_ENCODED_LEN};
    use crate::protocol::message::{Command, FaultCode, Op};

    fn fault(seq: u32) -> Frame {
        Frame {
            version: 1,
            node: 9,
            seq,
            body: Body::Fault {
                channel: 1,
                code: FaultCode::BusError,
            },
        }
    }

    fn encoded<M: serde::Serialize>(msg: &M) -> ([u8; MAX_ENCODED_LEN], usize) {
        let mut out = [0u8; MAX_ENCODED_LEN];
        let n = encode(msg, &mut out).unwrap();
        (out, n)
    }

    /// Frames encoded with the CRC recomputed over arbitrary payload bytes, to reach the
    /// checks behind the CRC.
    fn frame_with_payload(payload: &[u8], out: &mut [u8; MAX_ENCODED_LEN]) -> usize {
        struct Raw<'a>(&'a [u8]);
        impl serde::Serialize for Raw<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeTuple;
                let mut t = s.serialize_tuple(self.0.len())?;
                for b in self.0 {
                    t.serialize_element(b)?;
                }
                t.end()
            }
        }
        encode(&Raw(payload), out).unwrap()
    }

    #[test]
    fn feed_stops_after_first_frame_and_skips_empty_frames() {
        let (a, na) = encoded(&fault(1));
        let (b, nb) = encoded(&fault(2));
        let mut stream = [0u8; 2 * MAX_ENCODED_LEN + 3];
        stream[0] = 0; // idle line
        stream[1] = 0;
        stream[2..2 + na].copy_from_slice(&a[..na]);
        stream[2 + na..2 + na + nb].copy_from_slice(&b[..nb]);
        let total = 2 + na + nb;
        let mut dec = StreamDecoder::new();
        let (used, out) = dec.feed::<Frame>(&stream[..total]);
        assert_eq!(used, 2 + na);
        assert_eq!(out, Some(Ok(fault(1))));
        let (used2, out2) = dec.feed::<Frame>(&stream[used..total]);
        assert_eq!(used2, nb);
        assert_eq!(out2, Some(Ok(fault(2))));
        assert_eq!(dec.feed::<Frame>(&[0, 0, 0]), (3, None));
        assert_eq!(dec.stats().frames_ok, 2);
        assert_eq!(dec.stats().bytes, total as u64 + 3);
        assert_eq!(dec.stats().crc_errors + dec.stats().undecodable, 0);
    }

    /// What `towerlink scan --modbus` left on a node's line: a Modbus RTU request for unit 8
    /// (read input registers 0..14, CRC 0x5771) ends in `0E 71 57` with no `0x00` after it.
    const MODBUS_TAIL: [u8; 8] = [0x08, 0x04, 0x00, 0x00, 0x00, 0x0E, 0x71, 0x57];

    #[test]
    fn a_command_after_foreign_bytes_is_lost_unless_sent_after_a_delimiter() {
        let identify = Command {
            version: 1,
            node: 13,
            seq: 0,
            op: Op::Identify,
        };
        let decode_after_tail = |frame: &[u8]| {
            let mut dec = StreamDecoder::new();
            let mut got = heapless::Vec::<Result<Command, FrameError>, 8>::new();
            for part in [&MODBUS_TAIL[..], frame] {
                dec.decode_all::<Command, _>(part, |c| {
                    let _ = got.push(c);
                });
            }
            got
        };
        let (plain, n) = encoded(&identify);
        let glued = decode_after_tail(&plain[..n]);
        assert!(
            glued.iter().all(|c| c.is_err()),
            "the plain frame is glued to the tail: {glued:?}"
        );
        let mut out = [0u8; MAX_ENCODED_LEN + 1];
        let n = encode_after_delimiter(&identify, &mut out).unwrap();
        assert_eq!((out[0], out[n - 1]), (0, 0));
        let got = decode_after_tail(&out[..n]);
        assert!(encode_after_delimiter(&identify, &mut []).is_err());
        assert_eq!(got.last(), Some(&Ok(identify)), "{got:?}");
    }

    #[test]
    fn oversize_is_reported_once_then_resyncs() {
        let mut dec = StreamDecoder::new();
        let noise = [0x55u8; 700];
        assert_eq!(dec.feed::<Frame>(&noise), (700, None));
        assert_eq!(dec.feed::<Frame>(&noise), (700, None));
        assert_eq!(
            dec.feed::<Frame>(&[0x55, 0]),
            (2, Some(Err(FrameError::Oversize)))
        );
        let (f, n) = encoded(&fault(5));
        assert_eq!(dec.feed::<Frame>(&f[..n]), (n, Some(Ok(fault(5)))));
        assert_eq!(dec.stats().oversize, 1);
        assert_eq!(dec.stats().frames_ok, 1);
    }

    #[test]
    fn frame_of_exactly_max_len_is_accepted_and_one_more_byte_is_oversize() {
        // 505 postcard bytes make a 512-byte frame when no zero breaks the runs.
        let mut payload = [0x11u8; 505];
        let mut out = [0u8; MAX_ENCODED_LEN];
        let mut n = 0;
        for tweak in 0..=255u8 {
            payload[0] = tweak;
            n = frame_with_payload(&payload, &mut out);
            if n == MAX_ENCODED_LEN {
                break;
            }
        }
        assert_eq!(n, MAX_ENCODED_LEN);
        let mut dec = StreamDecoder::new();
        // Not a Frame (Decode), but it got past the size check and the CRC.
        assert_eq!(
            dec.feed::<Frame>(&out[..n]),
            (n, Some(Err(FrameError::Decode)))
        );
        let mut longer = [0x22u8; MAX_FRAME_LEN + 2];
        longer[MAX_FRAME_LEN + 1] = 0;
        assert_eq!(
            dec.feed::<Frame>(&longer),
            (MAX_FRAME_LEN + 2, Some(Err(FrameError::Oversize)))
        );
    }

    #[test]
    fn each_error_kind_is_classified_and_counted() {
        let mut dec = StreamDecoder::new();
        let mut out = [0u8; MAX_ENCODED_LEN];

        // COBS block running past the end.
        assert_eq!(
            dec.feed::<Frame>(&[0x05, 1, 0]),
            (3, Some(Err(FrameError::Cobs)))
        );
        // Too short to hold a CRC.
        assert_eq!(
            dec.feed::<Frame>(&[0x02, 1, 0]),
            (3, Some(Err(FrameError::Crc)))
        );
        // CRC mismatch.
        let (mut f, n) = encoded(&fault(3));
        f[2] ^= 0x40;
        assert_eq!(dec.feed::<Frame>(&f[..n]), (n, Some(Err(FrameError::Crc))));
        // Valid CRC, not a Frame: unknown Body discriminant 9.
        let n = frame_with_payload(&[1, 9, 0, 9, 0], &mut out);
        assert_eq!(
            dec.feed::<Frame>(&out[..n]),
            (n, Some(Err(FrameError::Decode)))
        );
        // Valid Frame followed by a stray byte.
        let mut bytes = [0u8; 16];
        let len = postcard::to_slice(&fault(4), &mut bytes).unwrap().len();
        let n = frame_with_payload(&bytes[..len + 1], &mut out);
        assert_eq!(
            dec.feed::<Frame>(&out[..n]),
            (n, Some(Err(FrameError::Decode)))
        );
        // Decodes, but version 2.
        let (f, n) = encoded(&Frame {
            version: 2,
            ..fault(6)
        });
        assert_eq!(
            dec.feed::<Frame>(&f[..n]),
            (n, Some(Err(FrameError::Invalid)))
        );

        assert_eq!(
            *dec.stats(),
            DecodeStats {
                frames_ok: 0,
                crc_errors: 2,
                oversize: 0,
                undecodable: 4,
                bytes: dec.stats().bytes,
            }
        );
    }

    #[test]
    fn samples_constraints() {
        let samples = |values: &[f32]| Frame {
            version: 1,
            node: 1,
            seq: 1,
            body: Body::Samples {
                channel: 0,
                t0_ms: 0,
                period_us: 1000,
                values: heapless::Vec::from_slice(values).unwrap(),
            },
        };
        assert!(samples(&[1.0]).validate());
        assert!(samples(&[0.0; 32]).validate());
        assert!(!samples(&[]).validate());
        assert!(!samples(&[1.0, f32::NAN]).validate());
        assert!(!samples(&[f32::INFINITY]).validate());
        assert!(!samples(&[f32::NEG_INFINITY]).validate());

        // 33 values on the wire: postcard refuses to overfill the heapless Vec.
        let mut payload = [0u8; 200];
        let head = [1u8, 1, 1, 1, 0, 0, 0xe8, 0x07, 33];
        payload[..head.len()].copy_from_slice(&head);
        let len = head.len() + 33 * 4;
        let mut out = [0u8; MAX_ENCODED_LEN];
        let n = frame_with_payload(&payload[..len], &mut out);
        let mut dec = StreamDecoder::new();
        assert_eq!(
            dec.feed::<Frame>(&out[..n]).1,
            Some(Err(FrameError::Decode))
        );
        // The same with 32 values decodes.
        payload[head.len() - 1] = 32;
        let n = frame_with_payload(&payload[..len - 4], &mut out);
        assert_eq!(
            dec.feed::<Frame>(&out[..n]).1,
            Some(Ok(samples(&[0.0; 32])))
        );
    }

    #[test]
    fn command_validation() {
        let cmd = Command {
            version: 1,
            node: 3,
            seq: 8,
            op: Op::Zero { channel: 2 },
        };
        assert!(cmd.validate());
        assert!(!Command { version: 0, ..cmd }.validate());
    }

    #[test]
    fn reset_drops_partial_frame_without_counting() {
        let (f, n) = encoded(&fault(7));
        let mut dec = StreamDecoder::new();
        assert_eq!(dec.feed::<Frame>(&f[..n / 2]), (n / 2, None));
        dec.reset();
        assert_eq!(dec.feed::<Frame>(&f[..n]), (n, Some(Ok(fault(7)))));
        // Also leaves oversize discarding.
        assert_eq!(dec.feed::<Frame>(&[1u8; 600]), (600, None));
        dec.reset();
        assert_eq!(dec.feed::<Frame>(&f[..n]), (n, Some(Ok(fault(7)))));
        let stats = dec.stats();
        assert_eq!(
            (stats.frames_ok, stats.oversize, stats.crc_errors),
            (2, 0, 0)
        );
        assert_eq!(stats.undecodable, 0);
    }

    #[test]
    fn decode_all_reports_every_frame() {
        let mut stream = [0u8; 4 * (MAX_ENCODED_LEN + 2)];
        let mut at = 0;
        for seq in 0..4 {
            let (f, n) = encoded(&fault(seq));
            stream[at..at + n].copy_from_slice(&f[..n]);
            at += n;
            // Garbage between frames, terminated: one Cobs error each.
            stream[at] = 0xEE;
            stream[at + 1] = 0;
            at += 2;
        }
        let mut dec = StreamDecoder::new();
        let mut ok = 0u32;
        let mut errors = 0u32;
        dec.decode_all::<Frame, _>(&stream[..at], |r| match r {
            Ok(frame) => {
                assert_eq!(frame, fault(ok));
                ok += 1;
            }
            Err(_) => errors += 1,
        });
        assert_eq!((ok, errors), (4, 4));
        assert_eq!(dec.stats().undecodable, 4);
        assert_eq!(dec.stats().bytes, at as u64);
    }
}
