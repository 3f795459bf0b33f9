//! Reading a store without changing it ([`load`]): every segment scanned, the live records
//! (intact message records no done or merged record names), what each segment holds, the
//! next `seq` (above everything seen, the legacy `seq` file included) and the counts of
//! acknowledged, evicted, merged and damaged records.

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};

use crate::queue::record::{self, Body, DoneKind};
use crate::queue::segment;
use crate::queue::seq::SeqCounter;
use crate::queue::Record;

/// A live record found on disk: where it is and how big its frame is.
#[derive(Debug, Clone)]
pub struct Located {
    /// The record.
    pub record: Record,
    /// Id of the segment holding it.
    pub segment: u64,
    /// Where its frame starts in the segment.
    pub offset: u64,
    /// Its frame length.
    pub len: u64,
}

/// One segment as [`load`] found it.
#[derive(Debug, Clone)]
pub struct SegmentScan {
    /// Segment id (from the file name).
    pub id: u64,
    /// The next seq when it was created (from the file name).
    pub floor: u64,
    /// The file.
    pub path: PathBuf,
    /// File length.
    pub file_len: u64,
    /// End of the intact data (a torn tail follows when below `file_len`).
    pub valid_end: u64,
    /// Intact message records in it (live or not).
    pub messages: u64,
    /// Damaged records skipped.
    pub corrupted: u64,
    /// The lowest and highest `seq` of its intact message records.
    pub seqs: Option<(u64, u64)>,
    /// The newest `queued_at` of its message records (0 if none).
    pub newest_at: i64,
}

/// A store read from disk.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Segments, oldest first.
    pub segments: Vec<SegmentScan>,
    /// Live records by seq.
    pub live: BTreeMap<u64, Located>,
    /// The next seq to issue.
    pub next_seq: u64,
    /// Seqs named acknowledged.
    pub acked: u64,
    /// Seqs named evicted.
    pub evicted: u64,
    /// Seqs replaced by merged records.
    pub merged: u64,
    /// Damaged records skipped.
    pub corrupted: u64,
    /// Segments with a torn tail.
    pub torn: u64,
    /// The legacy `seq` file's value (0 if none).
    pub seq_file: u64,
}

/// Reads the store in `dir` without changing anything. A missing directory is an empty
/// store; unreadable segments are errors (the caller cannot know what it would lose).
pub fn load(dir: &Path) -> io::Result<Loaded> {
    let mut out = Loaded::default();
    if !dir.exists() {
        out.next_seq = 1;
        return Ok(out);
    }
    out.seq_file = read_seq_file(dir);
    let mut max_seen = out.seq_file;
    let mut candidates: BTreeMap<u64, Located> = BTreeMap::new();
    let mut done: HashSet<u64> = HashSet::new();
    for segment::SegmentFile { id, floor, path } in segment::list(dir)? {
        let bytes = std::fs::read(&path)?;
        let scan = record::scan(&bytes);
        max_seen = max_seen.max(floor.saturating_sub(1));
        let mut messages = 0;
        let mut seqs: Option<(u64, u64)> = None;
        let mut newest_at = 0;
        for (offset, len, body) in scan.frames.into_iter() {
            let replaced = match body {
                Body::Merged(r, replaces) => Some((r, replaces)),
                other => {
                    handle_plain(other, &mut max_seen, &mut done, &mut out).map(|r| (r, Vec::new()))
                }
            };
            if let Some((r, replaces)) = replaced {
                messages += 1;
                max_seen = max_seen.max(r.seq);
                seqs = Some(seqs.map_or((r.seq, r.seq), |(a, b)| (a.min(r.seq), b.max(r.seq))));
                newest_at = newest_at.max(r.queued_at);
                // A record moved forward by compaction may exist twice until the old
                // segment is deleted: the newest copy wins.
                candidates.insert(
                    r.seq,
                    Located {
                        record: r,
                        segment: id,
                        offset: offset as u64,
                        len: len as u64,
                    },
                );
                // A merged record stands for the records it replaces (crash-safe: they
                // stop being live exactly when its frame is intact).
                for s in replaces {
                    max_seen = max_seen.max(s);
                    if done.insert(s) {
                        out.merged += 1;
                    }
                }
            }
        }
        out.corrupted += scan.corrupted;
        if scan.valid_end < bytes.len() {
            out.torn += 1;
        }
        out.segments.push(SegmentScan {
            id,
            floor,
            path,
            file_len: bytes.len() as u64,
            valid_end: scan.valid_end as u64,
            messages,
            corrupted: scan.corrupted,
            seqs,
            newest_at,
        });
    }
    candidates.retain(|seq, _| !done.contains(seq));
    out.live = candidates;
    out.next_seq = max_seen.saturating_add(1);
    Ok(out)
}

/// A message body is handed back to be a candidate; a done body is noted.
fn handle_plain(
    body: Body,
    max_seen: &mut u64,
    done: &mut HashSet<u64>,
    out: &mut Loaded,
) -> Option<Record> {
    match body {
        Body::Message(r) | Body::Merged(r, _) => Some(r),
        Body::Done(kind, seqs) => {
            for s in seqs {
                *max_seen = (*max_seen).max(s);
                if done.insert(s) {
                    match kind {
                        DoneKind::Acked => out.acked += 1,
                        DoneKind::Evicted => out.evicted += 1,
                    }
                }
            }
            None
        }
    }
}

/// The legacy two-slot `seq` file's value, or 0.
fn read_seq_file(dir: &Path) -> u64 {
    if !dir.join("seq").exists() {
        return 0;
    }
    // Opening creates nothing here: the file exists.
    SeqCounter::open(dir).map(|c| c.last()).unwrap_or(0)
}
