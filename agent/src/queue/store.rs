//! The disk side of the queue: a directory of segment files holding message records and
//! "done" (acknowledged / evicted) records.
//!
//! - [`load`] reads a store without changing it (used at open and by `towerlink store`):
//!   every intact message record not named by a done record is live; damaged records are
//!   skipped and counted; the next `seq` is above every `seq`, segment name and the legacy
//!   `seq` file seen, so a `seq` is never reused even when records are lost.
//! - [`Store`] appends to the newest segment, rotates it at `segment_bytes`, syncs per the
//!   fsync policy, and deletes the oldest segments once nothing in them is live.
//!
//! Segments are deleted oldest first only: a done record may name records in older
//! segments, so deleting a newer segment first could bring acknowledged records back (they
//! would only be sent again, but needlessly).
//!
//! The read-only scan behind [`load`] lives in [`scan`].

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::record::{self, DoneKind};
use super::segment::{self, FaultSwitch, SegmentWriter};
use super::seq::SeqCounter;
use super::Record;
use crate::feed::MessageClass;

mod scan;

pub use self::scan::{load, Loaded, Located, SegmentScan};

/// The largest rotation size (the queue's index keeps 32-bit offsets).
pub const MAX_SEGMENT_BYTES: u64 = 1 << 30;

/// When appended records are forced to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// `fdatasync` before `push` returns: a record that counts as queued survives a power cut.
    Always,
    /// Records reach the kernel at once (they survive a kill -9 of the agent) and are synced
    /// at most this long after; a power cut can lose the last interval. Records are sent
    /// only once synced, so a `seq` the platform has seen is never lost and reused.
    Every(Duration),
}

impl std::fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FsyncPolicy::Always => f.write_str("always"),
            FsyncPolicy::Every(d) => write!(f, "{}ms", d.as_millis()),
        }
    }
}

/// How a store is opened.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The directory (created if missing).
    pub dir: PathBuf,
    /// When records are synced.
    pub fsync: FsyncPolicy,
    /// Most bytes of live records (framed, as on disk); the oldest telemetry goes first.
    pub max_bytes: u64,
    /// Most live records.
    pub max_messages: usize,
    /// A segment is closed and a new one started past this size.
    pub segment_bytes: u64,
    /// Fault injection (tests): every write fails while it is set.
    pub faults: FaultSwitch,
    /// Merge the oldest telemetry windows once live records exceed this percentage of
    /// `max_bytes` (`[store] merge_above`); `None`: never merge, only evict.
    pub merge_above: Option<u8>,
    /// Records with seq <= this are never merged (an earlier run handed them to the broker:
    /// the platform may hold their first copy).
    pub merge_floor: u64,
    /// How long a failed disk is left alone before the next attempt.
    pub retry_after: Duration,
    /// Acknowledged records stay on disk this long after they were queued (for `resend`);
    /// zero deletes a segment as soon as nothing in it is live.
    pub keep_acked: Duration,
    /// At most this many bytes of segments holding only acknowledged (or evicted) records
    /// are kept; the oldest go first.
    pub keep_acked_bytes: u64,
}

impl StoreOptions {
    /// Defaults for `dir`: sync every 100 ms, 512 MiB, 8 MiB segments, merging above 80 %.
    pub fn new(dir: &Path) -> StoreOptions {
        StoreOptions {
            dir: dir.to_owned(),
            fsync: FsyncPolicy::Every(Duration::from_millis(100)),
            max_bytes: 512 << 20,
            max_messages: 1_000_000,
            segment_bytes: 8 << 20,
            faults: FaultSwitch::new(),
            merge_above: Some(80),
            merge_floor: 0,
            retry_after: Duration::from_secs(1),
            keep_acked: Duration::ZERO,
            keep_acked_bytes: 0,
        }
    }
}

#[derive(Debug, Clone)]
struct SegmentInfo {
    floor: u64,
    len: u64,
    live: u64,
    live_bytes: u64,
    /// The lowest and highest `seq` of the message records in it.
    seqs: Option<(u64, u64)>,
    /// The newest `queued_at` in it (its creation time while it holds no message).
    newest_at: i64,
}

impl SegmentInfo {
    fn empty(floor: u64, len: u64, newest_at: i64) -> SegmentInfo {
        SegmentInfo {
            floor,
            len,
            live: 0,
            live_bytes: 0,
            seqs: None,
            newest_at,
        }
    }

    fn note(&mut self, seq: u64, queued_at: i64) {
        self.seqs = Some(
            self.seqs
                .map_or((seq, seq), |(a, b)| (a.min(seq), b.max(seq))),
        );
        self.newest_at = self.newest_at.max(queued_at);
    }
}

/// What the store holds of one segment, for `resend`: where its records are and which
/// `seq`s they span (a bounded summary: one per segment, never one per record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentSummary {
    /// The segment's file.
    pub path: PathBuf,
    /// The lowest and highest `seq` of its message records.
    pub seqs: (u64, u64),
    /// Bytes written to it (what a scan reads at most).
    pub len: u64,
}

/// How long and how much of the acknowledged records the store keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Retention {
    keep_ms: i64,
    keep_bytes: u64,
}

/// The writable store.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    segment_bytes: u64,
    faults: FaultSwitch,
    segments: BTreeMap<u64, SegmentInfo>,
    writer: Option<SegmentWriter>,
    floor: Option<SeqCounter>,
    buf: Vec<u8>,
    frame: Vec<u8>,
    done: Vec<(DoneKind, u64)>,
    unsynced: bool,
    retention: Retention,
}

impl Store {
    /// Opens (creating if needed) the store: loads it, cuts torn tails, and starts a new
    /// segment for appending.
    pub fn open(options: &StoreOptions) -> io::Result<(Store, Loaded)> {
        std::fs::create_dir_all(&options.dir)?;
        let loaded = load(&options.dir)?;
        let mut segments = BTreeMap::new();
        for s in &loaded.segments {
            if s.valid_end < s.file_len {
                // A torn tail: what a crash interrupted. Cut it so it is not counted again.
                let cut = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&s.path)
                    .and_then(|f| f.set_len(s.valid_end));
                if let Err(e) = cut {
                    tracing::warn!(path = %s.path.display(), error = %e, "cannot cut a torn tail");
                }
            }
            let mut info = SegmentInfo::empty(s.floor, s.valid_end, s.newest_at);
            info.seqs = s.seqs;
            segments.insert(s.id, info);
        }
        for l in loaded.live.values() {
            if let Some(info) = segments.get_mut(&l.segment) {
                info.live += 1;
                info.live_bytes += l.len;
            }
        }
        let floor = SeqCounter::open(&options.dir).ok();
        let mut store = Store {
            dir: options.dir.clone(),
            // Offsets in the in-memory index are 32 bits: segments stay far below 4 GiB.
            segment_bytes: options.segment_bytes.clamp(4096, MAX_SEGMENT_BYTES),
            faults: options.faults.clone(),
            segments,
            writer: None,
            floor,
            buf: Vec::with_capacity(64 * 1024),
            frame: Vec::with_capacity(4096),
            done: Vec::new(),
            unsynced: false,
            retention: Retention {
                keep_ms: i64::try_from(options.keep_acked.as_millis()).unwrap_or(i64::MAX),
                keep_bytes: options.keep_acked_bytes,
            },
        };
        store.start_segment(loaded.next_seq)?;
        store.collect();
        Ok((store, loaded))
    }

    /// Starts a new segment whose name records `next_seq` (after an error, or at open).
    pub fn start_segment(&mut self, next_seq: u64) -> io::Result<()> {
        if let Some(w) = &mut self.writer {
            if self.unsynced {
                w.sync()?;
            }
        }
        let id = self
            .segments
            .last_key_value()
            .map_or(1, |(&last, _)| last + 1);
        let writer = SegmentWriter::open(&self.dir, id, next_seq, None, self.faults.clone())?;
        segment::sync_dir(&self.dir)?;
        self.segments.insert(
            id,
            SegmentInfo::empty(next_seq, writer.len(), crate::feed::now_millis()),
        );
        self.writer = Some(writer);
        self.unsynced = false;
        Ok(())
    }

    /// Appends `record`; returns the segment it went to, the frame's offset there and its
    /// length. Not synced.
    pub fn append(&mut self, record: &Record) -> io::Result<(u64, u64, u64)> {
        let mut buf = std::mem::take(&mut self.frame);
        buf.clear();
        record::encode_message(record, &mut buf);
        let result = self.append_frame(&buf, record.seq);
        self.frame = buf;
        result
    }

    /// Appends `records` in order, encoded into one buffer and written with one `write` per
    /// segment (a batch that crosses a rotation is written in two runs). Returns where each
    /// written record went (segment, offset, length): a prefix of `records`, all of them
    /// unless an error stopped the rest (then the error too; nothing of the failed run is
    /// left on disk, see [`SegmentWriter::append`]). Not synced.
    pub fn append_all(&mut self, records: &[Record]) -> (Vec<(u64, u64, u64)>, Option<io::Error>) {
        let mut placed = Vec::with_capacity(records.len());
        if let Err(e) = self.write_done() {
            return (placed, Some(e));
        }
        let mut buf = std::mem::take(&mut self.frame);
        buf.clear();
        // Each frame's length, seq and queued_at (the segment's summary notes the last two).
        let mut lens: Vec<(u64, u64, i64)> = Vec::with_capacity(records.len());
        let mut error = None;
        for record in records {
            let needs_rotation = match &self.writer {
                Some(w) => w.len() + buf.len() as u64 >= self.segment_bytes,
                None => true,
            };
            if needs_rotation {
                if let Err(e) = self.write_run(&buf, &lens, &mut placed) {
                    error = Some(e);
                    break;
                }
                buf.clear();
                lens.clear();
                let floor = self
                    .segments
                    .values()
                    .map(|s| s.floor)
                    .max()
                    .unwrap_or(1)
                    .max(record.seq);
                if let Err(e) = self.start_segment(floor) {
                    error = Some(e);
                    break;
                }
            }
            let len = record::encode_message(record, &mut buf) as u64;
            lens.push((len, record.seq, record.queued_at));
        }
        if error.is_none() {
            if let Err(e) = self.write_run(&buf, &lens, &mut placed) {
                error = Some(e);
            }
        }
        // Keep the buffer (its capacity) for the next batch, but not a huge one.
        buf.clear();
        if buf.capacity() > 1 << 20 {
            buf = Vec::with_capacity(4096);
        }
        self.frame = buf;
        (placed, error)
    }

    /// Writes `buf` (the frames of lengths `lens`, back to back) to the open segment with
    /// one `write`, and notes where each frame went.
    fn write_run(
        &mut self,
        buf: &[u8],
        lens: &[(u64, u64, i64)],
        placed: &mut Vec<(u64, u64, u64)>,
    ) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let Some(w) = self.writer.as_mut() else {
            return Err(io::Error::other("no open segment"));
        };
        let mut offset = w.len();
        w.append(buf)?;
        let (base, new_len) = (w.id(), w.len());
        self.unsynced = true;
        let info = self.segments.get_mut(&base);
        let (mut live, mut live_bytes) = (0, 0);
        for &(len, _, _) in lens {
            placed.push((base, offset, len));
            offset += len;
            live += 1;
            live_bytes += len;
        }
        if let Some(info) = info {
            info.len = new_len;
            info.live += live;
            info.live_bytes += live_bytes;
            // What `resend` finds here (the summary a reopen rebuilds from the file).
            for &(_, seq, queued_at) in lens {
                info.note(seq, queued_at);
            }
        }
        Ok(())
    }

    /// Appends merged message `record`, which replaces the records of `replaces`; returns
    /// the segment, offset and length. Not synced.
    pub fn append_merged(
        &mut self,
        record: &Record,
        replaces: &[u64],
    ) -> io::Result<(u64, u64, u64)> {
        let mut buf = std::mem::take(&mut self.frame);
        buf.clear();
        record::encode_merged(record, replaces, &mut buf);
        let result = self.append_frame(&buf, record.seq);
        self.frame = buf;
        result
    }

    /// Appends one framed message record (`seq` is the record's: a rotation names the new
    /// segment after it); returns the segment, offset and length. Not synced.
    pub fn append_frame(&mut self, frame: &[u8], seq: u64) -> io::Result<(u64, u64, u64)> {
        self.write_done()?;
        let needs_rotation = match &self.writer {
            Some(w) => w.len() >= self.segment_bytes,
            None => true,
        };
        if needs_rotation {
            let floor = self
                .segments
                .values()
                .map(|s| s.floor)
                .max()
                .unwrap_or(1)
                .max(seq);
            self.start_segment(floor)?;
        }
        let len = frame.len() as u64;
        let Some(w) = self.writer.as_mut() else {
            return Err(io::Error::other("no open segment"));
        };
        let offset = w.len();
        w.append(frame)?;
        let base = w.id();
        let new_len = w.len();
        self.unsynced = true;
        if let Some(info) = self.segments.get_mut(&base) {
            info.len = new_len;
            info.live += 1;
            info.live_bytes += len;
            info.note(seq, record::frame_queued_at(frame).unwrap_or(0));
        }
        Ok((base, offset, len))
    }

    /// Record `seq` (in `segment`, `len` bytes) is no longer live; the done record is written
    /// with the next append or sync.
    pub fn done(&mut self, kind: DoneKind, seq: u64, segment: u64, len: u64) {
        self.forget(segment, len);
        self.done.push((kind, seq));
    }

    /// A live record left `segment` without a done record (moved by compaction).
    pub fn forget(&mut self, segment: u64, len: u64) {
        if let Some(info) = self.segments.get_mut(&segment) {
            info.live = info.live.saturating_sub(1);
            info.live_bytes = info.live_bytes.saturating_sub(len);
        }
    }

    /// Forgets the done records not yet written (a crash, for tests).
    pub fn discard_pending(&mut self) {
        self.done.clear();
    }

    /// Done records waiting to be written.
    pub fn pending_done(&self) -> usize {
        self.done.len()
    }

    /// Writes the pending done records (not synced: a lost one only re-sends a message).
    pub fn write_done(&mut self) -> io::Result<()> {
        if self.done.is_empty() {
            return Ok(());
        }
        let Some(w) = self.writer.as_mut() else {
            return Err(io::Error::other("no open segment"));
        };
        self.buf.clear();
        for kind in [DoneKind::Acked, DoneKind::Evicted] {
            let seqs: Vec<u64> = self
                .done
                .iter()
                .filter(|(k, _)| *k == kind)
                .map(|&(_, s)| s)
                .collect();
            for chunk in seqs.chunks(record::MAX_DONE_PER_FRAME) {
                record::encode_done(kind, chunk, &mut self.buf);
            }
        }
        w.append(&self.buf)?;
        let (base, len) = (w.id(), w.len());
        if let Some(info) = self.segments.get_mut(&base) {
            info.len = len;
        }
        self.done.clear();
        Ok(())
    }

    /// Writes pending done records and makes every appended record durable; `last_seq` goes
    /// to the floor file.
    pub fn sync(&mut self, last_seq: u64) -> io::Result<()> {
        self.write_done()?;
        if self.unsynced {
            if let Some(w) = self.writer.as_mut() {
                w.sync()?;
            }
            self.unsynced = false;
        }
        if let Some(floor) = &mut self.floor {
            if let Err(e) = floor.note(last_seq) {
                tracing::debug!(error = %e, "cannot update the seq floor file");
            }
        }
        Ok(())
    }

    /// Has anything been appended since the last sync?
    pub fn is_dirty(&self) -> bool {
        self.unsynced || !self.done.is_empty()
    }

    /// Deletes the oldest segments while nothing in them is live (never the open one), and
    /// while they are past the retention of acknowledged records: older than `keep_acked`
    /// (their newest record), or the dead segments together over `keep_acked_bytes`.
    pub fn collect(&mut self) {
        self.collect_at(crate::feed::now_millis());
    }

    /// [`Store::collect`] at wall-clock time `now` (Unix ms).
    pub fn collect_at(&mut self, now: i64) {
        let active = self.writer.as_ref().map(SegmentWriter::id);
        let mut kept = self.retained_bytes();
        while let Some((&base, info)) = self.segments.first_key_value() {
            if Some(base) == active || info.live > 0 {
                break;
            }
            let Retention {
                keep_ms,
                keep_bytes,
            } = self.retention;
            let expired = keep_ms == 0 || info.newest_at.saturating_add(keep_ms) <= now;
            if !expired && kept <= keep_bytes {
                break;
            }
            let len = info.len;
            if !self.remove(base) {
                break;
            }
            kept = kept.saturating_sub(len);
        }
    }

    /// Bytes of the oldest segments that hold nothing live (acknowledged records kept for
    /// `resend`; never the open segment).
    pub fn retained_bytes(&self) -> u64 {
        let active = self.writer.as_ref().map(SegmentWriter::id);
        self.segments
            .iter()
            .take_while(|(&id, s)| Some(id) != active && s.live == 0)
            .map(|(_, s)| s.len)
            .sum()
    }

    /// The segments holding message records with a `seq` in `from..=to`, oldest first.
    pub fn summaries(&self, from: u64, to: u64) -> Vec<SegmentSummary> {
        self.segments
            .iter()
            .filter_map(|(&id, s)| {
                let (a, b) = s.seqs?;
                (a <= to && b >= from).then(|| SegmentSummary {
                    path: self.dir.join(segment::file_name(id, s.floor)),
                    seqs: (a, b),
                    len: s.len,
                })
            })
            .collect()
    }

    fn remove(&mut self, base: u64) -> bool {
        let Some(floor) = self.segments.get(&base).map(|s| s.floor) else {
            return false;
        };
        let path = self.dir.join(segment::file_name(base, floor));
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot delete a used segment");
                return false;
            }
        }
        self.segments.remove(&base);
        true
    }

    /// The oldest segment, if it is worth compacting: the store is over `limit` bytes on disk
    /// and less than half of that segment is live.
    /// Acknowledged records kept for `resend` count against `keep_acked_bytes`, not here: the
    /// candidate is the oldest segment still holding live records.
    pub fn compaction_candidate(&self, limit: u64) -> Option<u64> {
        if self.disk_bytes().saturating_sub(self.retained_bytes()) <= limit {
            return None;
        }
        let active = self.writer.as_ref().map(SegmentWriter::id);
        let (&base, info) = self.segments.iter().find(|(_, s)| s.live > 0)?;
        (Some(base) != active && info.live_bytes * 2 < info.len).then_some(base)
    }

    /// Deletes segment `base` after its live records were appended again (and synced).
    pub fn drop_compacted(&mut self, base: u64) {
        if let Some(info) = self.segments.get_mut(&base) {
            info.live = 0;
            info.live_bytes = 0;
        }
        self.collect();
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The rotation size.
    pub fn segment_bytes(&self) -> u64 {
        self.segment_bytes
    }

    /// Bytes of all segments.
    pub fn disk_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.len).sum()
    }

    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

/// A summary of a store for people (`towerlink store`).
#[derive(Debug)]
pub struct Inspection {
    /// What was loaded.
    pub loaded: Loaded,
}

impl Inspection {
    /// Loads the store in `dir`.
    pub fn of(dir: &Path) -> io::Result<Inspection> {
        if !dir.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is not a directory", dir.display()),
            ));
        }
        Ok(Inspection { loaded: load(dir)? })
    }

    /// Live records of `class`.
    pub fn live_of(&self, class: MessageClass) -> usize {
        self.loaded
            .live
            .values()
            .filter(|l| l.record.class == class)
            .count()
    }
}

impl std::fmt::Display for Inspection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let l = &self.loaded;
        let first = l.live.keys().next();
        let last = l.live.keys().next_back();
        let bytes: u64 = l.live.values().map(|x| x.len).sum();
        let disk: u64 = l.segments.iter().map(|s| s.file_len).sum();
        writeln!(
            f,
            "segments:        {} ({} bytes on disk)",
            l.segments.len(),
            disk
        )?;
        for s in &l.segments {
            writeln!(
                f,
                "  {}  {} bytes, {} message records, {} corrupted{}",
                segment::file_name(s.id, s.floor),
                s.file_len,
                s.messages,
                s.corrupted,
                if s.valid_end < s.file_len {
                    format!(", torn tail of {} bytes", s.file_len - s.valid_end)
                } else {
                    String::new()
                }
            )?;
        }
        writeln!(
            f,
            "unacknowledged:  {} records, {} bytes ({} events/replies, {} captures, {} telemetry)",
            l.live.len(),
            bytes,
            self.live_of(MessageClass::Event),
            self.live_of(MessageClass::Capture),
            self.live_of(MessageClass::Telemetry)
        )?;
        match (first, last) {
            (Some(a), Some(b)) => writeln!(f, "seq range:       {a}..={b}")?,
            _ => writeln!(f, "seq range:       (none)")?,
        }
        let cursor = first.map_or(l.next_seq.saturating_sub(1), |s| s.saturating_sub(1));
        writeln!(f, "acked up to:     {cursor} (every seq <= this is done)")?;
        writeln!(f, "acked records:   {}", l.acked)?;
        writeln!(f, "evicted records: {}", l.evicted)?;
        writeln!(f, "merged away:     {}", l.merged)?;
        writeln!(f, "corrupted:       {}", l.corrupted)?;
        writeln!(f, "torn tails:      {}", l.torn)?;
        write!(f, "next seq:        {}", l.next_seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, queued_at: i64) -> Record {
        Record {
            seq,
            class: MessageClass::Telemetry,
            topic: "r/gw/data/a".into(),
            payload: vec![b'x'; 100],
            queued_at,
        }
    }

    #[test]
    fn dead_segments_are_kept_until_keep_acked_after_their_newest_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = StoreOptions {
            keep_acked: Duration::from_secs(10),
            keep_acked_bytes: 1 << 20,
            ..StoreOptions::new(dir.path())
        };
        let (mut store, _) = Store::open(&opts).expect("open");
        let t0 = crate::feed::now_millis();
        let mut at = Vec::new();
        for seq in 1..=3 {
            at.push(store.append(&record(seq, t0 + seq as i64)).expect("append"));
        }
        store.start_segment(4).expect("rotate");
        store.append(&record(4, t0 + 5_000)).expect("append");
        store.start_segment(5).expect("rotate");
        for (seq, &(segment, _, len)) in (1..=3).zip(&at) {
            store.done(DoneKind::Acked, seq, segment, len);
        }
        store.sync(4).expect("sync");
        assert_eq!(store.summaries(1, 3).len(), 1);
        assert_eq!(store.summaries(1, 4).len(), 2);
        assert_eq!(store.summaries(5, 9).len(), 0);
        assert!(store.retained_bytes() > 0);
        store.collect_at(t0 + 9_000);
        assert_eq!(store.segment_count(), 3, "kept within keep_acked");
        store.collect_at(t0 + 10_003);
        assert_eq!(
            store.segment_count(),
            2,
            "expired: the oldest dead segment goes"
        );
        // Segment 2 still holds a live record: it and everything after stay.
        store.collect_at(t0 + 100_000);
        assert_eq!(store.segment_count(), 2);
        assert_eq!(store.summaries(1, 3), Vec::new());
    }

    #[test]
    fn kept_segments_do_not_count_towards_compaction() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = StoreOptions {
            keep_acked: Duration::from_secs(3600),
            keep_acked_bytes: 1 << 20,
            segment_bytes: 4096,
            ..StoreOptions::new(dir.path())
        };
        let (mut store, _) = Store::open(&opts).expect("open");
        let now = crate::feed::now_millis();
        let (segment, _, len) = store.append(&record(1, now)).expect("append");
        store.start_segment(2).expect("rotate");
        store.done(DoneKind::Acked, 1, segment, len);
        store.sync(1).expect("sync");
        store.collect();
        assert_eq!(store.segment_count(), 2);
        // Over the limit only because of the kept segment: nothing to compact.
        assert_eq!(store.compaction_candidate(0), None);
    }
}
