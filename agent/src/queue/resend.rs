//! `resend`: acknowledged records read back from the segments the store keeps
//! (`[store] keep_acked`, `keep_acked_bytes`) and published again, marked `"replay": true`.
//!
//! Memory stays bounded and independent of what is kept: the store knows per segment only
//! the `seq` range of its message records ([`super::store::SegmentSummary`]); a resend
//! asks the writer for the segments overlapping its range, then streams those files frame by
//! frame (on a blocking thread, never an async worker) and keeps only the records asked for,
//! at most [`RESEND_BYTES`] of them waiting to go out at a time (in the queue's resend lane,
//! sent after everything queued, at the replay pace). A range spans at most [`MAX_SPAN`]
//! `seq`s.
//!
//! Each `seq` of the range comes out in exactly one of four lists ([`Report`]): `resent`
//! (read back and queued for sending again), `pending` (still unacknowledged: it goes out
//! anyway), `deferred` (the reply's `later`: held, but the resend lane is full: ask again)
//! and `not_held`
//! (never issued, or no longer on disk).

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use super::record::{self, Body};
use super::store::SegmentSummary;
use super::Record;

/// The most `seq`s one resend asks for (`to - from + 1`).
pub const MAX_SPAN: u64 = 10_000;
/// The most payload bytes waiting in the resend lane (plus [`LANE_OVERHEAD`] each).
pub const RESEND_BYTES: u64 = 1 << 20;
/// What a record in the resend lane costs beyond its payload.
pub const LANE_OVERHEAD: u64 = 128;

/// Inclusive `seq` ranges, ascending and not touching.
pub type Ranges = Vec<[u64; 2]>;

/// What a resend did with each `seq` of its range.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Read back and queued to go out again.
    pub resent: Ranges,
    /// Still unacknowledged: sent anyway.
    pub pending: Ranges,
    /// On disk, but the resend lane is full: ask again once these went out.
    pub deferred: Ranges,
    /// Never issued, or no longer kept.
    pub not_held: Ranges,
}

impl Report {
    /// Records queued to go out again.
    pub fn resent_count(&self) -> u64 {
        count(&self.resent)
    }
}

/// The number of `seq`s in `ranges`.
pub fn count(ranges: &[[u64; 2]]) -> u64 {
    ranges.iter().map(|[a, b]| b - a + 1).sum()
}

/// Ascending `seqs` as inclusive ranges (duplicates ignored).
pub fn ranges(seqs: impl IntoIterator<Item = u64>) -> Ranges {
    let mut out: Ranges = Vec::new();
    for s in seqs {
        match out.last_mut() {
            Some([_, b]) if s <= b.saturating_add(1) => *b = (*b).max(s),
            _ => out.push([s, s]),
        }
    }
    out
}

/// Why a range is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// `from` above `to`, or `from` 0.
    #[error("resend: from {from} to {to} is not a range (1 <= from <= to)")]
    Empty {
        /// First seq asked for.
        from: u64,
        /// Last seq asked for.
        to: u64,
    },
    /// Over [`MAX_SPAN`].
    #[error("resend: from {from} to {to} spans {span} seqs; at most {MAX_SPAN} per command (ask in parts)")]
    TooLong {
        /// First seq asked for.
        from: u64,
        /// Last seq asked for.
        to: u64,
        /// How many.
        span: u64,
    },
}

/// Checks a requested range.
pub fn check_range(from: u64, to: u64) -> Result<(), RangeError> {
    if from == 0 || from > to {
        return Err(RangeError::Empty { from, to });
    }
    let span = to - from + 1;
    if span > MAX_SPAN {
        return Err(RangeError::TooLong { from, to, span });
    }
    Ok(())
}

/// Sorts every `seq` of `from..=to` (a checked range) into the report's lists: `live` says
/// which are still unacknowledged, `found` which were read back (ascending), `taken` which
/// of those the lane took.
pub fn sort_out(
    from: u64,
    to: u64,
    live: impl Fn(u64) -> bool,
    found: &[u64],
    taken: impl Fn(u64) -> bool,
) -> Report {
    let mut resent = Vec::new();
    let mut pending = Vec::new();
    let mut deferred = Vec::new();
    let mut not_held = Vec::new();
    let mut found = found.iter().copied().peekable();
    for seq in from..=to {
        while found.next_if(|&f| f < seq).is_some() {}
        let on_disk = found.next_if_eq(&seq).is_some();
        if live(seq) {
            pending.push(seq);
        } else if on_disk && taken(seq) {
            resent.push(seq);
        } else if on_disk {
            deferred.push(seq);
        } else {
            not_held.push(seq);
        }
    }
    Report {
        resent: ranges(resent),
        pending: ranges(pending),
        deferred: ranges(deferred),
        not_held: ranges(not_held),
    }
}

/// Streams the message records of one segment file with a `seq` in `from..=to` to `each`
/// (at most `len` bytes: what the store had written). A damaged frame ends the scan of that
/// file (what follows counts as not held); a file deleted meanwhile holds nothing.
pub fn scan_segment(
    segment: &SegmentSummary,
    from: u64,
    to: u64,
    each: &mut dyn FnMut(Record),
) -> io::Result<()> {
    let file = match File::open(&segment.path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    scan_reader(
        BufReader::with_capacity(64 * 1024, file.take(segment.len)),
        &segment.path,
        from,
        to,
        each,
    )
}

fn scan_reader(
    mut input: impl Read,
    path: &Path,
    from: u64,
    to: u64,
    each: &mut dyn FnMut(Record),
) -> io::Result<()> {
    let mut frame = Vec::with_capacity(4096);
    loop {
        let mut header = [0u8; record::HEADER];
        match input.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let body_len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        if header[0..4] != record::MAGIC || body_len > record::MAX_BODY {
            tracing::warn!(path = %path.display(), "resend: a damaged frame ends the scan of this segment");
            return Ok(());
        }
        frame.clear();
        frame.extend_from_slice(&header);
        frame.resize(record::HEADER + body_len, 0);
        match input.read_exact(&mut frame[record::HEADER..]) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        match record::decode_frame(&frame) {
            Some(Body::Message(r) | Body::Merged(r, _)) if (from..=to).contains(&r.seq) => each(r),
            Some(_) => {}
            None => {
                tracing::warn!(path = %path.display(), "resend: a damaged frame ends the scan of this segment");
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::MessageClass;

    #[test]
    fn seqs_become_ranges() {
        assert_eq!(ranges([]), Ranges::new());
        assert_eq!(ranges([5]), vec![[5, 5]]);
        assert_eq!(
            ranges([1, 2, 3, 5, 7, 8, 8, 9]),
            vec![[1, 3], [5, 5], [7, 9]]
        );
        assert_eq!(
            ranges([u64::MAX - 1, u64::MAX]),
            vec![[u64::MAX - 1, u64::MAX]]
        );
        assert_eq!(count(&[[1, 3], [5, 5], [7, 9]]), 7);
    }

    #[test]
    fn ranges_are_checked() {
        assert!(check_range(1, 1).is_ok());
        assert!(check_range(5, 5 + MAX_SPAN - 1).is_ok());
        assert!(matches!(check_range(0, 3), Err(RangeError::Empty { .. })));
        assert!(matches!(check_range(9, 3), Err(RangeError::Empty { .. })));
        let e = check_range(1, MAX_SPAN + 1).expect_err("too long");
        assert!(e.to_string().contains("at most 10000"), "{e}");
        // No overflow at the top of the seq space.
        assert!(check_range(u64::MAX - 3, u64::MAX).is_ok());
    }

    #[test]
    fn every_seq_lands_in_exactly_one_list() {
        // 10..=30: 12..=14 live, 16..=25 found on disk of which 21.. not taken, 26.. gone.
        let found: Vec<u64> = (16..=25).chain([8, 40]).collect::<Vec<_>>();
        let mut found = found;
        found.sort_unstable();
        let r = sort_out(10, 30, |s| (12..=14).contains(&s), &found, |s| s <= 20);
        assert_eq!(r.pending, vec![[12, 14]]);
        assert_eq!(r.resent, vec![[16, 20]]);
        assert_eq!(r.deferred, vec![[21, 25]]);
        assert_eq!(r.not_held, vec![[10, 11], [15, 15], [26, 30]]);
        let all = count(&r.pending) + count(&r.resent) + count(&r.deferred) + count(&r.not_held);
        assert_eq!(all, 21);
        assert_eq!(r.resent_count(), 5);
        // A live seq found on disk is pending, not resent.
        let r = sort_out(1, 3, |s| s == 2, &[1, 2, 3], |_| true);
        assert_eq!((r.resent, r.pending), (vec![[1, 1], [3, 3]], vec![[2, 2]]));
    }

    fn record(seq: u64) -> Record {
        Record {
            seq,
            class: MessageClass::Telemetry,
            topic: "t/gw/data/n".into(),
            payload: format!("{{\"seq\":{seq}}}").into_bytes(),
            queued_at: 1_000 + seq as i64,
        }
    }

    #[test]
    fn a_segment_is_streamed_and_damage_ends_it() {
        let mut bytes = Vec::new();
        for seq in 1..=5 {
            record::encode_message(&record(seq), &mut bytes);
        }
        record::encode_done(record::DoneKind::Acked, &[1, 2], &mut bytes);
        let cut = bytes.len();
        for seq in 6..=8 {
            record::encode_message(&record(seq), &mut bytes);
        }
        let mut got = Vec::new();
        scan_reader(&bytes[..], Path::new("x"), 2, 7, &mut |r| got.push(r.seq)).expect("scan");
        assert_eq!(got, vec![2, 3, 4, 5, 6, 7]);
        // One flipped byte in record 6: the scan stops there, 1..=5 still come.
        let mut damaged = bytes.clone();
        damaged[cut + record::HEADER + 3] ^= 0xff;
        let mut got = Vec::new();
        scan_reader(&damaged[..], Path::new("x"), 1, 8, &mut |r| got.push(r.seq)).expect("scan");
        assert_eq!(got, vec![1, 2, 3, 4, 5]);
        // A torn tail is the end.
        let mut got = Vec::new();
        scan_reader(&bytes[..bytes.len() - 3], Path::new("x"), 1, 8, &mut |r| {
            got.push(r.seq)
        })
        .expect("scan");
        assert_eq!(got, (1..=7).collect::<Vec<_>>());
    }
}
