//! The queue's in-memory state: a compact index of the queued records (where each one is on
//! disk), which were handed to the uplink, what may be sent (is durable), a bounded cache of
//! payloads, and the done records the writer has still to write.
//!
//! Memory does not hold the backlog: a queued record costs 8 bytes here ([`Entry`]: offset
//! and frame length in its segment, class, live bit; the `seq` is the position in a dense
//! [`Chunk`] of one segment) plus 1/8 byte of `queued_at` samples. Payloads are kept only in
//! a [`CACHE_BYTES`]-bounded cache (recent pushes while it has room, and what the reader
//! thread read ahead from the segment files for the uplink) and, while the disk fails, for
//! the memory-only records (nowhere else to keep them).
//!
//! Only memory: the async side (uplink, health) reads and changes it under a short lock, the
//! writer thread ([`super::writer`]) inserts what it appended and takes the acknowledgements
//! to write, the reader thread ([`super::reader`]) fills the cache. No disk I/O ever happens
//! while this state is locked.
//!
//! Beside it: [`chunk`] (the packed [`Entry`] and [`Chunk`]), [`merge`] (which records a
//! window merge may take, and putting the merged records in place), [`resend_lane`] (the
//! acknowledged records a `resend` read back).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

mod chunk;
mod merge;
mod resend_lane;

use self::chunk::{Chunk, Entry};
use super::record::DoneKind;
use super::Record;
use crate::feed::MessageClass;

/// Most payload bytes the telemetry cache holds (framed length plus [`CACHE_OVERHEAD`] each).
pub(super) const CACHE_BYTES: u64 = 1 << 20;
/// Most records the telemetry cache holds.
pub(super) const CACHE_RECORDS: usize = 4096;
/// The events' own cache (events never wait for room behind telemetry).
pub(super) const EVENT_CACHE_BYTES: u64 = 256 << 10;
/// Most records the events' cache holds.
pub(super) const EVENT_CACHE_RECORDS: usize = 1024;
/// The captures' own cache (a capture part is up to ~12 KiB; captures go after events and
/// before telemetry, so neither may wait for room behind them).
pub(super) const CAPTURE_CACHE_BYTES: u64 = 256 << 10;
/// Most records the captures' cache holds.
pub(super) const CAPTURE_CACHE_RECORDS: usize = 256;
/// What a cached record costs beyond its frame (the `Arc`, two heap blocks, the map node).
pub(super) const CACHE_OVERHEAD: u64 = 128;
/// Most records one read-ahead asks the reader for.
pub(super) const READ_BATCH: usize = 1024;
/// A gap of at most this many seqs inside a segment is filled with dead entries rather than
/// starting a new chunk.
const GAP_FILL: u64 = 64;

/// A record that is no longer live, for the writer to note in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Done {
    pub(super) kind: DoneKind,
    pub(super) seq: u64,
    pub(super) segment: u64,
    pub(super) len: u64,
}

/// A record taken out of the queue (evicted, or found unreadable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Victim {
    pub(super) seq: u64,
    pub(super) class: MessageClass,
    /// Its segment; `None` if it was in memory only.
    pub(super) segment: Option<u64>,
    pub(super) len: u64,
}

/// A record the reader should load from disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Wanted {
    pub(super) seq: u64,
    pub(super) segment: u64,
    pub(super) offset: u64,
    pub(super) len: u64,
}

/// Where a record went (compaction, recovery of a failed disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Moved {
    pub(super) seq: u64,
    pub(super) segment: u64,
    pub(super) offset: u64,
    pub(super) len: u64,
}

/// A merged record at its new place, with its payload and the seqs of the records it
/// replaces.
pub(super) type MergedRecord = (Moved, Arc<Record>, Vec<u64>);

/// Payloads at hand for one class.
#[derive(Debug, Default)]
struct Cache {
    map: BTreeMap<u64, Arc<Record>>,
    bytes: u64,
}

impl Cache {
    fn remove(&mut self, seq: u64) -> Option<Arc<Record>> {
        let r = self.map.remove(&seq)?;
        self.bytes = self.bytes.saturating_sub(cost(&r));
        Some(r)
    }
}

/// A class sent ahead of telemetry and not paced (events and replies; captures): its live
/// records, its cursor, its own payload cache.
#[derive(Debug, Default)]
pub(super) struct Lane {
    /// Live records, by seq.
    seqs: BTreeSet<u64>,
    /// Every record of the lane with seq <= this was handed to the uplink in this session.
    sent_up_to: u64,
    /// Payloads at hand.
    cache: Cache,
}

impl Lane {
    /// The next released record not yet handed out.
    fn next(&self, released: u64) -> Option<u64> {
        if self.sent_up_to >= released {
            return None;
        }
        self.seqs
            .range(self.sent_up_to + 1..=released)
            .next()
            .copied()
    }

    /// Released records not yet handed out (at most `n`).
    fn unsent(&self, released: u64, n: usize) -> Vec<u64> {
        if self.sent_up_to >= released {
            return Vec::new();
        }
        self.seqs
            .range(self.sent_up_to + 1..=released)
            .copied()
            .take(n)
            .collect()
    }
}

/// Everything the queue knows in memory.
#[derive(Debug, Default)]
pub(super) struct State {
    /// The index, by seq (chunks ascending, not overlapping).
    chunks: VecDeque<Chunk>,
    /// Live events and replies (sent first), their cursor and cache ([`EVENT_CACHE_BYTES`],
    /// [`EVENT_CACHE_RECORDS`]).
    events: Lane,
    /// Live captures (sent after events, before telemetry), their cursor and cache
    /// ([`CAPTURE_CACHE_BYTES`], [`CAPTURE_CACHE_RECORDS`]).
    captures: Lane,
    /// Every telemetry record with seq <= this has been handed out in this session.
    telemetry_sent_up_to: u64,
    /// Every telemetry record with seq below this is gone (where eviction looks first).
    evict_from: u64,
    live_telemetry: usize,
    /// Telemetry payloads at hand, bounded by [`CACHE_BYTES`] and [`CACHE_RECORDS`].
    cache: Cache,
    /// Payloads of the records held in memory only (the disk failed).
    memory: BTreeMap<u64, Arc<Record>>,
    /// The uplink wants a record that is not at hand: the reader should read ahead.
    pub(super) read_wanted: bool,
    /// The queue is closing: the reader stops.
    pub(super) closing: bool,
    /// Framed bytes of the queued records.
    pub(super) bytes: u64,
    /// The last `seq` the writer issued.
    pub(super) last_seq: u64,
    /// Records with seq <= this may be sent (durable, or the disk failed).
    pub(super) released_up_to: u64,
    /// Acknowledged records the writer has not yet handed to the store.
    pub(super) pending_done: Vec<Done>,
    /// The current disk error, if the queue runs from memory.
    pub(super) error: Option<String>,
    /// Bytes of all segment files (the writer keeps it current).
    pub(super) disk_bytes: u64,
    /// Segment files (the writer keeps it current).
    pub(super) segments: usize,
    /// Set by a played crash (tests): nothing is written any more.
    pub(super) crashed: bool,
    /// Acknowledged records read back by a `resend`, marked replay, to go out after
    /// everything queued (bounded by [`super::resend::RESEND_BYTES`]).
    resend: VecDeque<Arc<Record>>,
    /// Payload bytes in `resend`, plus [`super::resend::LANE_OVERHEAD`] each.
    resend_bytes: u64,
    /// The highest seq handed to the uplink in this run: a record at or below it may have
    /// reached the platform, so it is never merged (the platform keeps a seq's first copy).
    handed_max: u64,
    /// Records with seq <= this are never merged (an earlier run handed them to the broker).
    pub(super) merge_floor: u64,
    /// Per merge tier: every telemetry record with seq <= this was offered for merging.
    pub(super) merge_from: [u64; 2],
    /// A merge is being written for the telemetry from this seq on: the uplink waits for it
    /// (it must not send a record the merge replaces).
    pub(super) merging: Option<u64>,
}

impl State {
    /// Is `seq` queued (unacknowledged)?
    pub(super) fn is_live(&self, seq: u64) -> bool {
        self.entry(seq).is_some_and(|(_, e)| e.live())
    }

    /// The chunk holding `seq` and the entry's index in it.
    fn find(&self, seq: u64) -> Option<(usize, usize)> {
        let i = self.chunks.partition_point(|c| c.origin <= seq);
        let ci = i.checked_sub(1)?;
        let c = &self.chunks[ci];
        (seq < c.end()).then(|| (ci, (seq - c.origin) as usize))
    }

    fn entry(&self, seq: u64) -> Option<(Option<u64>, Entry)> {
        let (ci, ei) = self.find(seq)?;
        let c = &self.chunks[ci];
        Some((c.segment, c.entries[ei]))
    }

    /// Queues record `seq`, at `at` (segment, offset) or in memory only (`None`: `record`
    /// must then be given). `record`, when given, is cached while the cache has room.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn insert(
        &mut self,
        seq: u64,
        class: MessageClass,
        queued_at: i64,
        at: Option<(u64, u64)>,
        len: u64,
        record: Option<Arc<Record>>,
    ) {
        let segment = at.map(|(s, _)| s);
        if at.is_none() && record.is_none() {
            tracing::error!(seq, "a memory-only record without its payload: not queued");
            return;
        }
        if let Some(last) = self.chunks.back() {
            if seq < last.end() {
                tracing::error!(seq, "a record out of seq order: not queued");
                return;
            }
        }
        let entry = Entry::new(class, at.map_or(0, |(_, o)| o), len);
        let fits = self
            .chunks
            .back()
            .is_some_and(|c| c.segment == segment && seq - c.end() <= GAP_FILL);
        if !fits {
            self.chunks.push_back(Chunk::new(segment, seq));
        }
        if let Some(c) = self.chunks.back_mut() {
            while c.end() < seq {
                c.push(Entry::DEAD, queued_at);
            }
            c.push(entry, queued_at);
        }
        self.bytes += len;
        match class {
            MessageClass::Event => {
                self.events.seqs.insert(seq);
            }
            MessageClass::Capture => {
                self.captures.seqs.insert(seq);
            }
            MessageClass::Telemetry => self.live_telemetry += 1,
        }
        match (at, record) {
            (None, Some(r)) => {
                self.memory.insert(seq, r);
            }
            // A new event (capture) makes room among those already handed out.
            (Some(_), Some(r)) => self.cache_put(r, len, class != MessageClass::Telemetry),
            _ => {}
        }
    }

    /// Messages queued.
    pub(super) fn live(&self) -> usize {
        self.events.seqs.len() + self.captures.seqs.len() + self.live_telemetry
    }

    /// Payloads at hand (cached and memory-only) and the cache's bytes.
    pub(super) fn cached(&self) -> (usize, u64) {
        (
            self.cache.map.len()
                + self.events.cache.map.len()
                + self.captures.cache.map.len()
                + self.memory.len(),
            self.cache.bytes + self.events.cache.bytes + self.captures.cache.bytes,
        )
    }

    fn at_hand(&self, seq: u64) -> Option<Arc<Record>> {
        self.memory
            .get(&seq)
            .or_else(|| self.cache.map.get(&seq))
            .or_else(|| self.events.cache.map.get(&seq))
            .or_else(|| self.captures.cache.map.get(&seq))
            .cloned()
    }

    /// The next released telemetry record not yet handed out; moves the cursor over dead
    /// entries and events on the way (they never become due telemetry).
    fn next_telemetry(&mut self) -> Option<u64> {
        let released = self.released_up_to;
        let mut from = self.telemetry_sent_up_to + 1;
        let start = self.chunks.partition_point(|c| c.end() <= from);
        let mut found = None;
        'chunks: for c in self.chunks.iter().skip(start) {
            let begin = from.max(c.origin);
            for seq in begin..c.end() {
                if seq > released || self.merging.is_some_and(|m| seq >= m) {
                    break 'chunks;
                }
                let e = c.entries[(seq - c.origin) as usize];
                if e.live() && e.class() == MessageClass::Telemetry {
                    found = Some(seq);
                    break 'chunks;
                }
                from = seq + 1;
            }
        }
        self.telemetry_sent_up_to = self.telemetry_sent_up_to.max(from - 1);
        found
    }

    /// The next record to send: events first, then captures (neither is paced), telemetry
    /// only if `telemetry`. `None` also when the next one's payload is not at hand: then
    /// `read_wanted` is set for the reader.
    pub(super) fn next_unsent(&mut self, telemetry: bool) -> Option<Arc<Record>> {
        let released = self.released_up_to;
        for class in [MessageClass::Event, MessageClass::Capture] {
            let Some(seq) = self.lane(class).and_then(|l| l.next(released)) else {
                continue;
            };
            return match self.at_hand(seq) {
                Some(r) => {
                    if let Some(lane) = self.lane_mut(class) {
                        lane.sent_up_to = seq;
                    }
                    self.handed_max = self.handed_max.max(seq);
                    Some(r)
                }
                None => {
                    self.read_wanted = true;
                    None
                }
            };
        }
        if !telemetry {
            return None;
        }
        let seq = self.next_telemetry()?;
        match self.at_hand(seq) {
            Some(r) => {
                self.telemetry_sent_up_to = seq;
                self.handed_max = self.handed_max.max(seq);
                // Read ahead before the uplink runs dry: half a batch ahead is not at hand.
                let ahead = seq + READ_BATCH as u64 / 2;
                if ahead <= self.released_up_to && self.at_hand(ahead).is_none() {
                    if let Some((Some(_), e)) = self.entry(ahead) {
                        self.read_wanted |= e.live();
                    }
                }
                Some(r)
            }
            None => {
                self.read_wanted = true;
                None
            }
        }
    }

    /// The lane of an urgent class (`None` for telemetry).
    fn lane(&self, class: MessageClass) -> Option<&Lane> {
        match class {
            MessageClass::Event => Some(&self.events),
            MessageClass::Capture => Some(&self.captures),
            MessageClass::Telemetry => None,
        }
    }

    fn lane_mut(&mut self, class: MessageClass) -> Option<&mut Lane> {
        match class {
            MessageClass::Event => Some(&mut self.events),
            MessageClass::Capture => Some(&mut self.captures),
            MessageClass::Telemetry => None,
        }
    }

    /// Is released telemetry waiting to be handed out?
    pub(super) fn has_unsent_telemetry(&mut self) -> bool {
        self.next_telemetry().is_some()
    }

    /// Takes `seq` out of the index and the caches; its entry, if it was live.
    fn kill(&mut self, seq: u64) -> Option<(Option<u64>, Entry)> {
        let (ci, ei) = self.find(seq)?;
        let c = &mut self.chunks[ci];
        let e = c.entries[ei];
        if !e.live() {
            return None;
        }
        c.entries[ei] = Entry::DEAD;
        c.live -= 1;
        let segment = c.segment;
        if c.live == 0 {
            let _ = self.chunks.remove(ci);
        }
        self.bytes = self.bytes.saturating_sub(e.len());
        match self.lane_mut(e.class()) {
            Some(lane) => {
                lane.seqs.remove(&seq);
            }
            None => self.live_telemetry -= 1,
        }
        self.cache.remove(seq);
        self.events.cache.remove(seq);
        self.captures.cache.remove(seq);
        self.memory.remove(&seq);
        Some((segment, e))
    }

    /// The broker has `seq`: forget it; the store learns it from the writer. `true` if it
    /// was queued.
    pub(super) fn ack(&mut self, seq: u64) -> bool {
        let Some((segment, e)) = self.kill(seq) else {
            return false;
        };
        if let Some(segment) = segment {
            self.pending_done.push(Done {
                kind: DoneKind::Acked,
                seq,
                segment,
                len: e.len(),
            });
        }
        true
    }

    /// Takes `seq` out without an acknowledgement (unreadable on disk, or evicted).
    pub(super) fn drop_record(&mut self, seq: u64) -> Option<Victim> {
        let (segment, e) = self.kill(seq)?;
        Some(Victim {
            seq,
            class: e.class(),
            segment,
            len: e.len(),
        })
    }

    /// `record` is due again (it could not be handed to the network).
    pub(super) fn unsend(&mut self, record: &Record) {
        let before = record.seq.saturating_sub(1);
        match self.lane_mut(record.class) {
            Some(lane) => lane.sent_up_to = lane.sent_up_to.min(before),
            None => self.telemetry_sent_up_to = self.telemetry_sent_up_to.min(before),
        }
    }

    /// Every queued record is due again.
    pub(super) fn rewind(&mut self) {
        self.events.sent_up_to = 0;
        self.captures.sent_up_to = 0;
        self.telemetry_sent_up_to = 0;
    }

    /// When the oldest queued record was queued (a floor: at most 64 records older).
    pub(super) fn oldest_queued_at(&self) -> Option<i64> {
        let c = self.chunks.front()?;
        let i = c.entries.iter().position(|e| e.live())?;
        Some(c.time_at(i))
    }

    /// The oldest live telemetry record.
    fn oldest_telemetry(&mut self) -> Option<u64> {
        if self.live_telemetry == 0 {
            return None;
        }
        let from = self.evict_from;
        let start = self.chunks.partition_point(|c| c.end() <= from);
        let mut found = None;
        'chunks: for c in self.chunks.iter().skip(start) {
            for (i, e) in c.entries.iter().enumerate() {
                let seq = c.origin + i as u64;
                if seq >= from && e.live() && e.class() == MessageClass::Telemetry {
                    found = Some(seq);
                    break 'chunks;
                }
            }
        }
        if let Some(seq) = found {
            self.evict_from = seq;
        }
        found
    }

    /// Takes the oldest telemetry (then the oldest captures, then the oldest events) out
    /// while the queue is over a bound; returns what went, for the writer to mark evicted.
    pub(super) fn evict(&mut self, max_messages: usize, max_bytes: u64) -> Vec<Victim> {
        let mut out = Vec::new();
        while self.live() > max_messages || self.bytes > max_bytes {
            let Some(seq) = self
                .oldest_telemetry()
                .or_else(|| self.captures.seqs.first().copied())
                .or_else(|| self.events.seqs.first().copied())
            else {
                break;
            };
            match self.drop_record(seq) {
                Some(v) => out.push(v),
                None => break,
            }
        }
        out
    }

    /// The records held in memory only (the disk failed), oldest first.
    pub(super) fn memory_only(&self) -> Vec<Arc<Record>> {
        self.memory.values().cloned().collect()
    }

    /// The live records in `segment`: seq, offset, length.
    pub(super) fn in_segment(&self, segment: u64) -> Vec<(u64, u64, u64)> {
        let mut out = Vec::new();
        for c in self.chunks.iter().filter(|c| c.segment == Some(segment)) {
            for (i, e) in c.entries.iter().enumerate() {
                if e.live() {
                    out.push((c.origin + i as u64, e.offset(), e.len()));
                }
            }
        }
        out
    }

    /// The records in `from` (a segment, or memory only) were written again at the places
    /// in `moved` (ascending seq). Returns the copies of records that are no longer queued
    /// (acknowledged or evicted meanwhile): dead on disk, for the writer to account.
    pub(super) fn relocate(&mut self, from: Option<u64>, moved: &[Moved]) -> Vec<Moved> {
        let mut gone = Vec::new();
        let mut keep = Vec::with_capacity(moved.len());
        for m in moved {
            match self.entry(m.seq) {
                Some((segment, e)) if segment == from && e.live() => keep.push(*m),
                _ => gone.push(*m),
            }
        }
        if keep.is_empty() {
            return gone;
        }
        let old = std::mem::take(&mut self.chunks);
        for c in old {
            if c.segment != from {
                self.chunks.push_back(c);
                continue;
            }
            // Split the chunk where the records' new segment changes.
            let mut piece: Option<Chunk> = None;
            for (i, e) in c.entries.iter().enumerate() {
                let seq = c.origin + i as u64;
                let target = if e.live() {
                    match keep.binary_search_by_key(&seq, |m| m.seq) {
                        Ok(k) => {
                            let m = keep[k];
                            self.bytes = (self.bytes + m.len).saturating_sub(e.len());
                            Some((Some(m.segment), e.with_place(m.offset, m.len)))
                        }
                        Err(_) => Some((from, *e)),
                    }
                } else {
                    None
                };
                let (segment, entry) = match target {
                    Some(t) => t,
                    None => (piece.as_ref().map_or(from, |p| p.segment), *e),
                };
                if piece.as_ref().is_some_and(|p| p.segment != segment) {
                    if let Some(p) = piece.take() {
                        self.push_piece(p);
                    }
                }
                let p = piece.get_or_insert_with(|| Chunk::new(segment, seq));
                p.push(entry, c.time_at(i));
            }
            if let Some(p) = piece {
                self.push_piece(p);
            }
        }
        if from.is_none() {
            for m in &keep {
                if let Some(r) = self.memory.remove(&m.seq) {
                    self.cache_put(r, m.len, false);
                }
            }
        }
        gone
    }

    fn push_piece(&mut self, p: Chunk) {
        if p.live > 0 {
            self.chunks.push_back(p);
        }
    }

    /// Puts `record` in its class's cache if it fits; with `make_room`, records of its class
    /// already handed out and newer ones are dropped from the cache to make room (what is
    /// sent after `record` makes way for it).
    fn cache_put(&mut self, record: Arc<Record>, len: u64, make_room: bool) {
        let need = len + CACHE_OVERHEAD;
        let (cache, cursor, max_bytes, max_records) = match record.class {
            MessageClass::Event => (
                &mut self.events.cache,
                self.events.sent_up_to,
                EVENT_CACHE_BYTES,
                EVENT_CACHE_RECORDS,
            ),
            MessageClass::Capture => (
                &mut self.captures.cache,
                self.captures.sent_up_to,
                CAPTURE_CACHE_BYTES,
                CAPTURE_CACHE_RECORDS,
            ),
            MessageClass::Telemetry => (
                &mut self.cache,
                self.telemetry_sent_up_to,
                CACHE_BYTES,
                CACHE_RECORDS,
            ),
        };
        let full = |c: &Cache| c.bytes + need > max_bytes || c.map.len() >= max_records;
        if make_room {
            while full(cache) {
                // Handed out already (a prefix: only a rewind would want it again), or newer.
                let sent = cache
                    .map
                    .first_key_value()
                    .map(|(&seq, _)| seq)
                    .filter(|&seq| seq <= cursor);
                let victim = sent.or_else(|| {
                    cache
                        .map
                        .last_key_value()
                        .map(|(&s, _)| s)
                        .filter(|&s| s > record.seq)
                });
                let Some(victim) = victim else { break };
                cache.remove(victim);
            }
        }
        if full(cache) {
            return;
        }
        cache.bytes += need;
        cache.map.insert(record.seq, record);
    }

    /// What the reader should load next: the next unsent records whose payloads are not at
    /// hand, events first, then captures (at most [`READ_BATCH`], about [`CACHE_BYTES`] / 2
    /// of frames).
    pub(super) fn wanted(&mut self) -> Vec<Wanted> {
        self.read_wanted = false;
        let mut out = Vec::new();
        let mut bytes = 0;
        let budget = CACHE_BYTES / 2;
        let mut want = |seq: u64, s: &State, out: &mut Vec<Wanted>| -> bool {
            if s.at_hand(seq).is_some() {
                return true;
            }
            let Some((Some(segment), e)) = s.entry(seq) else {
                return true;
            };
            out.push(Wanted {
                seq,
                segment,
                offset: e.offset(),
                len: e.len(),
            });
            bytes += e.len() + CACHE_OVERHEAD;
            out.len() < READ_BATCH && bytes < budget
        };
        let released = self.released_up_to;
        let urgent = [
            self.events.unsent(released, READ_BATCH),
            self.captures.unsent(released, READ_BATCH),
        ];
        for seqs in urgent {
            for seq in seqs {
                if !want(seq, self, &mut out) {
                    return out;
                }
            }
        }
        let from = self.telemetry_sent_up_to + 1;
        let start = self.chunks.partition_point(|c| c.end() <= from);
        // Not at hand yet, at most a batch of them, within a bounded scan.
        let mut seqs = Vec::new();
        let mut scanned = 0;
        'chunks: for c in self.chunks.iter().skip(start) {
            for seq in from.max(c.origin)..c.end() {
                scanned += 1;
                if seq > released || seqs.len() >= READ_BATCH || scanned > 8 * READ_BATCH {
                    break 'chunks;
                }
                let e = c.entries[(seq - c.origin) as usize];
                if e.live() && e.class() == MessageClass::Telemetry && self.at_hand(seq).is_none() {
                    seqs.push(seq);
                }
            }
        }
        for seq in seqs {
            if !want(seq, self, &mut out) {
                break;
            }
        }
        out
    }

    /// The reader loaded `record` from `segment`/`offset`: cache it if it is still queued
    /// there. `true` if cached.
    pub(super) fn loaded(&mut self, record: Record, segment: u64, offset: u64) -> bool {
        let seq = record.seq;
        match self.entry(seq) {
            Some((Some(s), e)) if s == segment && e.live() && e.offset() == offset => {
                if self.at_hand(seq).is_some() {
                    return false;
                }
                let len = e.len();
                self.cache_put(Arc::new(record), len, true);
                self.at_hand(seq).is_some()
            }
            _ => false,
        }
    }

    /// Is record `seq` still queued at `segment`/`offset` (the reader found it damaged)?
    pub(super) fn still_at(&self, seq: u64, segment: u64, offset: u64) -> bool {
        matches!(self.entry(seq), Some((Some(s), e)) if s == segment && e.live() && e.offset() == offset)
    }

    /// Chunks in the index (tests).
    #[cfg(test)]
    pub(super) fn index_chunks(&self) -> usize {
        self.chunks.len()
    }
}

fn cost(r: &Record) -> u64 {
    super::record::message_frame_len(r) as u64 + CACHE_OVERHEAD
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, class: MessageClass) -> Arc<Record> {
        Arc::new(Record {
            seq,
            class,
            topic: "t".into(),
            payload: vec![b'x'; 100],
            queued_at: seq as i64,
        })
    }

    fn put(s: &mut State, seq: u64, class: MessageClass, segment: u64, cache: bool) {
        let r = rec(seq, class);
        let len = super::super::record::message_frame_len(&r) as u64;
        s.insert(
            seq,
            class,
            seq as i64,
            Some((segment, seq * 1000)),
            len,
            cache.then_some(r),
        );
        s.released_up_to = seq;
    }

    #[test]
    fn an_entry_packs_into_eight_bytes() {
        assert_eq!(std::mem::size_of::<Entry>(), 8);
        let e = Entry::new(MessageClass::Event, 0xdead_beef, 1 << 20);
        assert!(e.live());
        assert_eq!(
            (e.offset(), e.len(), e.class()),
            (0xdead_beef, 1 << 20, MessageClass::Event)
        );
        let moved = e.with_place(7, 99);
        assert_eq!(
            (moved.offset(), moved.len(), moved.class(), moved.live()),
            (7, 99, MessageClass::Event, true)
        );
        assert!(!Entry::DEAD.live());
    }

    #[test]
    fn records_not_at_hand_are_asked_of_the_reader() {
        let mut s = State::default();
        put(&mut s, 1, MessageClass::Telemetry, 1, true);
        put(&mut s, 2, MessageClass::Telemetry, 1, false);
        put(&mut s, 3, MessageClass::Event, 1, false);
        // The event first, but it is not at hand.
        assert!(s.next_unsent(true).is_none());
        assert!(s.read_wanted);
        let w = s.wanted();
        assert_eq!(w.iter().map(|w| w.seq).collect::<Vec<_>>(), vec![3, 2]);
        assert_eq!((w[0].segment, w[0].offset), (1, 3000));
        assert!(s.loaded((*rec(3, MessageClass::Event)).clone(), 1, 3000));
        assert!(!s.loaded((*rec(2, MessageClass::Telemetry)).clone(), 1, 9));
        assert_eq!(s.next_unsent(true).map(|r| r.seq), Some(3));
        assert_eq!(s.next_unsent(true).map(|r| r.seq), Some(1));
        assert!(s.next_unsent(true).is_none());
        assert!(s.loaded((*rec(2, MessageClass::Telemetry)).clone(), 1, 2000));
        assert_eq!(s.next_unsent(true).map(|r| r.seq), Some(2));
    }

    #[test]
    fn acked_chunks_are_freed_and_the_cache_is_bounded() {
        let mut s = State::default();
        for seq in 1..=10_000 {
            put(&mut s, seq, MessageClass::Telemetry, 1 + seq / 5000, true);
        }
        assert_eq!(s.live(), 10_000);
        let (n, bytes) = s.cached();
        assert!(n <= CACHE_RECORDS && bytes <= CACHE_BYTES, "{n} {bytes}");
        for seq in 1..=10_000 {
            assert!(s.ack(seq));
        }
        assert_eq!((s.live(), s.bytes, s.index_chunks()), (0, 0, 0));
        assert_eq!(s.cached(), (0, 0));
        assert_eq!(s.pending_done.len(), 10_000);
    }

    #[test]
    fn an_event_is_at_hand_behind_a_full_telemetry_cache() {
        let mut s = State::default();
        for seq in 1..=(CACHE_RECORDS as u64 + 10) {
            put(&mut s, seq, MessageClass::Telemetry, 1, true);
        }
        let e = CACHE_RECORDS as u64 + 11;
        put(&mut s, e, MessageClass::Event, 1, true);
        assert_eq!(s.next_unsent(false).map(|r| r.seq), Some(e));
        // Read back from disk, too, it finds room.
        s.rewind();
        assert!(s.events.cache.remove(e).is_some());
        assert!(s.next_unsent(false).is_none());
        assert_eq!(s.wanted().first().map(|w| w.seq), Some(e));
        assert!(s.loaded((*rec(e, MessageClass::Event)).clone(), 1, e * 1000));
        assert_eq!(s.next_unsent(false).map(|r| r.seq), Some(e));
    }

    #[test]
    fn captures_go_after_events_before_telemetry_and_are_evicted_between_them() {
        let mut s = State::default();
        put(&mut s, 1, MessageClass::Telemetry, 1, true);
        put(&mut s, 2, MessageClass::Capture, 1, true);
        put(&mut s, 3, MessageClass::Event, 1, true);
        put(&mut s, 4, MessageClass::Capture, 1, false);
        // Not paced: captures go where telemetry may not; the one not at hand is asked for.
        assert_eq!(s.next_unsent(false).map(|r| r.seq), Some(3));
        assert_eq!(s.next_unsent(false).map(|r| r.seq), Some(2));
        assert_eq!(s.next_unsent(false), None);
        assert!(s.read_wanted);
        let wanted: Vec<u64> = s.wanted().iter().map(|w| w.seq).collect();
        assert_eq!(wanted, vec![4]);
        assert!(s.loaded((*rec(4, MessageClass::Capture)).clone(), 1, 4000));
        assert_eq!(s.next_unsent(true).map(|r| r.seq), Some(4));
        assert_eq!(s.next_unsent(true).map(|r| r.seq), Some(1));
        // The class survives the 8-byte entry.
        assert_eq!(
            s.entry(2).map(|(_, e)| e.class()),
            Some(MessageClass::Capture)
        );
        // Over the bound: telemetry first, then the oldest capture, events last.
        let v = s.evict(2, u64::MAX);
        assert_eq!(v.iter().map(|v| v.seq).collect::<Vec<_>>(), vec![1, 2]);
        let v = s.evict(0, u64::MAX);
        assert_eq!(v.iter().map(|v| v.seq).collect::<Vec<_>>(), vec![4, 3]);
    }

    #[test]
    fn eviction_takes_the_oldest_telemetry_then_events() {
        let mut s = State::default();
        put(&mut s, 1, MessageClass::Event, 1, true);
        put(&mut s, 2, MessageClass::Telemetry, 1, true);
        put(&mut s, 3, MessageClass::Telemetry, 1, true);
        let v = s.evict(1, u64::MAX);
        assert_eq!(v.iter().map(|v| v.seq).collect::<Vec<_>>(), vec![2, 3]);
        let v = s.evict(0, u64::MAX);
        assert_eq!(v.iter().map(|v| v.seq).collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn a_relocation_splits_chunks_across_segments() {
        let mut s = State::default();
        for seq in 1..=6 {
            put(&mut s, seq, MessageClass::Telemetry, 1, false);
        }
        assert!(s.ack(2));
        let moved: Vec<Moved> = [1, 3, 4, 5, 6]
            .iter()
            .map(|&seq| Moved {
                seq,
                segment: if seq < 5 { 7 } else { 8 },
                offset: seq * 10,
                len: 1,
            })
            .collect();
        assert!(s.ack(6));
        let gone = s.relocate(Some(1), &moved);
        assert_eq!(gone.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![6]);
        assert_eq!(s.in_segment(1), vec![]);
        let in7: Vec<u64> = s.in_segment(7).iter().map(|x| x.0).collect();
        assert_eq!(in7, vec![1, 3, 4]);
        assert_eq!(
            s.in_segment(8).iter().map(|x| x.1).collect::<Vec<_>>(),
            vec![50]
        );
        assert_eq!(s.live(), 4);
    }
}
