//! The on-disk record format of the queue's segment files, and a scanner that survives
//! damage.
//!
//! A segment is a plain sequence of frames:
//!
//! ```text
//! magic "TLQ1" (4) | body length u32 LE (4) | CRC-32 (ISO-HDLC) of the body u32 LE (4) | body
//! ```
//!
//! Bodies:
//! - `1` message: `seq u64 | class u8 (0 telemetry, 1 event, 2 capture) | queued_at i64 | topic_len u16 |
//!   topic | payload` (the payload runs to the end of the body);
//! - `2` acknowledged / `3` evicted: `count u32 | seq u64 * count`;
//! - `4` merged message (`[store] merge_above`): `seq u64 | class u8 | queued_at i64 |
//!   topic_len u16 | topic | count u32 | seq u64 * count | payload`: a message that replaces
//!   the queued records of the `count` seqs listed (never its own): they are no longer live
//!   once this frame is intact, so a crash before or after it neither loses nor doubles one.
//!
//! All integers little-endian. The magic lets the scanner find the next intact frame after a
//! damaged one, so one flipped byte costs one record, not the rest of the segment. A damaged
//! region followed by an intact frame is *corrupted* (skipped and counted); a damaged region
//! that runs to the end of the file is a *torn tail* (the write a crash interrupted), which
//! the writer cuts off before appending again.

use super::Record;
use crate::feed::MessageClass;

/// Marks the start of every frame.
pub const MAGIC: [u8; 4] = *b"TLQ1";
/// Bytes before the body.
pub const HEADER: usize = 12;
/// The largest body accepted (payloads are at most 256 KiB; anything larger is damage).
pub const MAX_BODY: usize = 1 << 20;

const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

const KIND_MESSAGE: u8 = 1;
const KIND_ACKED: u8 = 2;
const KIND_EVICTED: u8 = 3;
const KIND_MERGED: u8 = 4;

/// Why records stopped being live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DoneKind {
    /// The broker acknowledged them.
    Acked,
    /// The queue was full and they were dropped.
    Evicted,
}

/// One decoded frame body.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// A queued message.
    Message(Record),
    /// These seqs are no longer live.
    Done(DoneKind, Vec<u64>),
    /// A merged message: it replaces the queued records of these seqs.
    Merged(Record, Vec<u64>),
}

/// Appends the frame of merged message `record`, which replaces the records of `replaces`
/// (not its own seq), to `out`; returns the frame's length.
pub fn encode_merged(record: &Record, replaces: &[u64], out: &mut Vec<u8>) -> usize {
    let topic = record.topic.as_bytes();
    let topic = &topic[..topic.len().min(usize::from(u16::MAX))];
    let start = begin(out);
    out.push(KIND_MERGED);
    out.extend_from_slice(&record.seq.to_le_bytes());
    out.push(class_byte(record.class));
    out.extend_from_slice(&record.queued_at.to_le_bytes());
    out.extend_from_slice(&(topic.len() as u16).to_le_bytes());
    out.extend_from_slice(topic);
    out.extend_from_slice(&(replaces.len() as u32).to_le_bytes());
    for seq in replaces {
        out.extend_from_slice(&seq.to_le_bytes());
    }
    out.extend_from_slice(&record.payload);
    finish(out, start)
}

fn class_byte(class: MessageClass) -> u8 {
    match class {
        MessageClass::Telemetry => 0,
        MessageClass::Event => 1,
        MessageClass::Capture => 2,
    }
}

/// Appends the frame of message `record` to `out`; returns the frame's length.
pub fn encode_message(record: &Record, out: &mut Vec<u8>) -> usize {
    let topic = record.topic.as_bytes();
    // Topics are short by construction (root/gw/kind/dev); cut defensively so the length fits.
    let topic = &topic[..topic.len().min(usize::from(u16::MAX))];
    let start = begin(out);
    out.push(KIND_MESSAGE);
    out.extend_from_slice(&record.seq.to_le_bytes());
    out.push(class_byte(record.class));
    out.extend_from_slice(&record.queued_at.to_le_bytes());
    out.extend_from_slice(&(topic.len() as u16).to_le_bytes());
    out.extend_from_slice(topic);
    out.extend_from_slice(&record.payload);
    finish(out, start)
}

/// Appends a frame saying `seqs` are done to `out`; returns the frame's length.
pub fn encode_done(kind: DoneKind, seqs: &[u64], out: &mut Vec<u8>) -> usize {
    let start = begin(out);
    out.push(match kind {
        DoneKind::Acked => KIND_ACKED,
        DoneKind::Evicted => KIND_EVICTED,
    });
    out.extend_from_slice(&(seqs.len() as u32).to_le_bytes());
    for seq in seqs {
        out.extend_from_slice(&seq.to_le_bytes());
    }
    finish(out, start)
}

/// The most seqs one done frame carries (keeps it far below [`MAX_BODY`]).
pub const MAX_DONE_PER_FRAME: usize = 16 * 1024;

/// The framed size of a message record (what it occupies on disk).
pub fn message_frame_len(record: &Record) -> usize {
    HEADER
        + 1
        + 8
        + 1
        + 8
        + 2
        + record.topic.len().min(usize::from(u16::MAX))
        + record.payload.len()
}

fn begin(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[0; 8]);
    start
}

fn finish(out: &mut [u8], start: usize) -> usize {
    let body_len = out.len() - start - HEADER;
    let crc = CRC.checksum(&out[start + HEADER..]);
    out[start + 4..start + 8].copy_from_slice(&(body_len as u32).to_le_bytes());
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
    HEADER + body_len
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn decode_body(body: &[u8]) -> Option<Body> {
    match *body.first()? {
        kind @ (KIND_MESSAGE | KIND_MERGED) => {
            let seq = u64_at(body, 1)?;
            let class = match *body.get(9)? {
                0 => MessageClass::Telemetry,
                1 => MessageClass::Event,
                2 => MessageClass::Capture,
                _ => return None,
            };
            let queued_at = u64_at(body, 10)? as i64;
            let topic_len = usize::from(u16::from_le_bytes(body.get(18..20)?.try_into().ok()?));
            let topic = std::str::from_utf8(body.get(20..20 + topic_len)?).ok()?;
            let mut at = 20 + topic_len;
            let mut replaces = Vec::new();
            if kind == KIND_MERGED {
                let count = u32::from_le_bytes(body.get(at..at + 4)?.try_into().ok()?) as usize;
                at += 4;
                if count > MAX_DONE_PER_FRAME {
                    return None;
                }
                replaces = (0..count)
                    .map(|i| u64_at(body, at + 8 * i))
                    .collect::<Option<Vec<u64>>>()?;
                at += 8 * count;
            }
            let payload = body.get(at..)?;
            let record = Record {
                seq,
                class,
                topic: topic.to_owned(),
                payload: payload.to_vec(),
                queued_at,
            };
            Some(if kind == KIND_MERGED {
                Body::Merged(record, replaces)
            } else {
                Body::Message(record)
            })
        }
        kind @ (KIND_ACKED | KIND_EVICTED) => {
            let count = u32::from_le_bytes(body.get(1..5)?.try_into().ok()?) as usize;
            if body.len() != 5 + count.checked_mul(8)? {
                return None;
            }
            let seqs = (0..count)
                .map(|i| u64_at(body, 5 + 8 * i))
                .collect::<Option<Vec<u64>>>()?;
            let kind = if kind == KIND_ACKED {
                DoneKind::Acked
            } else {
                DoneKind::Evicted
            };
            Some(Body::Done(kind, seqs))
        }
        _ => None,
    }
}

/// The frame at `at`, if one is intact there: its body and total length.
fn frame_at(bytes: &[u8], at: usize) -> Option<(Body, usize)> {
    let header = bytes.get(at..at + HEADER)?;
    if header[0..4] != MAGIC {
        return None;
    }
    let len = u32::from_le_bytes(header[4..8].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[8..12].try_into().ok()?);
    if len > MAX_BODY {
        return None;
    }
    let body = bytes.get(at + HEADER..at + HEADER + len)?;
    if CRC.checksum(body) != crc {
        return None;
    }
    Some((decode_body(body)?, HEADER + len))
}

/// The `queued_at` of the message (or merged) frame `frame` (not checked: a frame this
/// process built).
pub fn frame_queued_at(frame: &[u8]) -> Option<i64> {
    // A merged record's frame starts as a message's does (kind, seq, class, queued_at).
    if !matches!(frame.get(HEADER), Some(&KIND_MESSAGE) | Some(&KIND_MERGED)) {
        return None;
    }
    let at = HEADER + 1 + 8 + 1;
    Some(i64::from_le_bytes(frame.get(at..at + 8)?.try_into().ok()?))
}

/// The body of the one intact frame `bytes` holds, if it is one.
pub fn decode_frame(bytes: &[u8]) -> Option<Body> {
    match frame_at(bytes, 0)? {
        (body, len) if len == bytes.len() => Some(body),
        _ => None,
    }
}

/// The message record framed in `bytes` (exactly one intact frame), if it is one.
pub fn decode_message_frame(bytes: &[u8]) -> Option<Record> {
    match frame_at(bytes, 0)? {
        (Body::Message(r) | Body::Merged(r, _), len) if len == bytes.len() => Some(r),
        _ => None,
    }
}

/// What a scan of one segment found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Scan {
    /// Intact frames: offset, total length, body.
    pub frames: Vec<(usize, usize, Body)>,
    /// Damaged regions followed by intact frames (each counts as one corrupted record).
    pub corrupted: u64,
    /// Where the intact data ends: a torn tail starts here when it is below the file length.
    pub valid_end: usize,
}

impl Scan {
    /// Is there a torn tail after [`Scan::valid_end`]?
    pub fn torn(&self, file_len: usize) -> bool {
        self.valid_end < file_len
    }
}

/// Scans a whole segment. Never fails: damage is skipped and counted.
pub fn scan(bytes: &[u8]) -> Scan {
    let mut out = Scan::default();
    let mut pos = 0;
    while pos < bytes.len() {
        if let Some((body, len)) = frame_at(bytes, pos) {
            out.frames.push((pos, len, body));
            pos += len;
            out.valid_end = pos;
            continue;
        }
        // Damage: look for the next intact frame.
        let next = (pos + 1..bytes.len().saturating_sub(HEADER - 1))
            .filter(|&p| bytes[p..p + 4] == MAGIC)
            .find(|&p| frame_at(bytes, p).is_some());
        match next {
            Some(p) => {
                out.corrupted += 1;
                pos = p;
            }
            None => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, payload: &[u8]) -> Record {
        Record {
            seq,
            class: if seq % 2 == 0 {
                MessageClass::Event
            } else {
                MessageClass::Telemetry
            },
            topic: format!("r/gw/data/d{seq}"),
            payload: payload.to_vec(),
            queued_at: 1_700_000_000_000 + seq as i64,
        }
    }

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        let a = rec(1, b"{\"seq\":1}");
        let b = rec(2, b"");
        let la = encode_message(&a, &mut buf);
        assert_eq!(la, message_frame_len(&a));
        encode_done(DoneKind::Acked, &[1, 7], &mut buf);
        encode_message(&b, &mut buf);
        let s = scan(&buf);
        assert_eq!(s.corrupted, 0);
        assert_eq!(s.valid_end, buf.len());
        let bodies: Vec<Body> = s.frames.into_iter().map(|(_, _, b)| b).collect();
        assert_eq!(
            bodies,
            vec![
                Body::Message(a),
                Body::Done(DoneKind::Acked, vec![1, 7]),
                Body::Message(b)
            ]
        );
    }

    #[test]
    fn a_merged_frame_round_trips_and_names_what_it_replaces() {
        let mut buf = Vec::new();
        let m = rec(3, b"{\"seq\":3,\"merged\":3}");
        let len = encode_merged(&m, &[5, 9], &mut buf);
        assert_eq!(len, buf.len());
        assert_eq!(decode_message_frame(&buf), Some(m.clone()));
        let s = scan(&buf);
        assert_eq!(s.frames.len(), 1);
        assert_eq!(s.frames[0].2, Body::Merged(m, vec![5, 9]));
        // A count beyond the body is damage, not a panic.
        let mut bad = Vec::new();
        encode_merged(&rec(3, b""), &[1], &mut bad);
        let at = HEADER + 20 + "r/gw/data/d3".len();
        bad[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let crc = CRC.checksum(&bad[HEADER..]);
        bad[8..12].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_message_frame(&bad), None);
    }

    #[test]
    fn a_flipped_byte_costs_one_record_and_a_torn_tail_is_found() {
        let mut buf = Vec::new();
        let mut ends = Vec::new();
        for seq in 1..=5 {
            encode_message(&rec(seq, b"payload payload"), &mut buf);
            ends.push(buf.len());
        }
        // Damage record 2's payload.
        buf[ends[0] + HEADER + 25] ^= 0x40;
        // Tear record 5.
        buf.truncate(ends[4] - 3);
        let s = scan(&buf);
        let seqs: Vec<u64> = s
            .frames
            .iter()
            .filter_map(|(_, _, b)| match b {
                Body::Message(r) => Some(r.seq),
                _ => None,
            })
            .collect();
        assert_eq!(seqs, vec![1, 3, 4]);
        assert_eq!(s.corrupted, 1);
        assert_eq!(s.valid_end, ends[3]);
        assert!(s.torn(buf.len()));
    }

    #[test]
    fn garbage_never_panics() {
        let mut state = 0x1234_5678_u32;
        for len in 0..600 {
            let bytes: Vec<u8> = (0..len)
                .map(|i| {
                    state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    // Sprinkle the magic so the resync path runs too.
                    if i % 37 < 4 {
                        MAGIC[i % 37]
                    } else {
                        (state >> 16) as u8
                    }
                })
                .collect();
            let s = scan(&bytes);
            assert!(s.valid_end <= bytes.len());
        }
    }
}
