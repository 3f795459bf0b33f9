//! Merge-candidate bookkeeping for window merging: which queued telemetry may be merged
//! ([`State::merge_candidates`], never a record handed to the uplink), the mark that holds
//! the uplink back while a merge is written ([`State::merge_done`] lifts it), and putting
//! the merged records in place of those they replace ([`State::apply_merges`]).

use std::collections::BTreeMap;

use super::{MergedRecord, Moved, State, Wanted, CACHE_BYTES, READ_BATCH};
use crate::feed::MessageClass;

impl State {
    /// The oldest live telemetry records on disk that may be merged at `tier` (above the
    /// tier's cursor, never handed to the uplink, released), at most a read batch of them;
    /// `true` when the batch was cut (more are waiting). Marks the merge as under way (the
    /// uplink waits for those seqs until [`State::merge_done`]).
    pub(in crate::queue) fn merge_candidates(&mut self, tier: usize) -> (Vec<Wanted>, bool) {
        let from = self.merge_from[tier]
            .max(self.handed_max)
            .max(self.merge_floor)
            .max(self.telemetry_sent_up_to)
            + 1;
        let released = self.released_up_to;
        let start = self.chunks.partition_point(|c| c.end() <= from);
        let (mut out, mut bytes) = (Vec::new(), 0);
        'chunks: for c in self.chunks.iter().skip(start) {
            let Some(segment) = c.segment else { continue };
            for seq in from.max(c.origin)..c.end() {
                if seq > released {
                    break 'chunks;
                }
                let e = c.entries[(seq - c.origin) as usize];
                if e.live() && e.class() == MessageClass::Telemetry {
                    out.push(Wanted {
                        seq,
                        segment,
                        offset: e.offset(),
                        len: e.len(),
                    });
                    bytes += e.len();
                    if out.len() >= READ_BATCH || bytes >= CACHE_BYTES / 2 {
                        self.merging = out.first().map(|w| w.seq);
                        return (out, true);
                    }
                }
            }
        }
        self.merging = out.first().map(|w| w.seq);
        (out, false)
    }

    /// The merge is written (or given up): the uplink may take telemetry again.
    pub(in crate::queue) fn merge_done(&mut self) {
        self.merging = None;
    }

    /// Each merged record (its own seq, written at its new place) replaces the queued
    /// records it names and its own older copy. Returns the segment and frame length of
    /// every record taken out (for the store's accounting: the merged frame names them, no
    /// done record is needed), and the merged records that could not be placed because their
    /// seq was no longer live (their frames are dead on disk and must be marked so).
    pub(in crate::queue) fn apply_merges(
        &mut self,
        merges: Vec<MergedRecord>,
    ) -> (Vec<(u64, u64)>, Vec<Moved>) {
        let mut freed = Vec::new();
        let mut unplaced = Vec::new();
        let mut by_segment: BTreeMap<u64, Vec<Moved>> = BTreeMap::new();
        let mut records = Vec::new();
        for (moved, record, replaced) in merges {
            match self.entry(moved.seq) {
                Some((Some(segment), e)) if e.live() => {
                    freed.push((segment, e.len()));
                    by_segment.entry(segment).or_default().push(moved);
                    records.push((moved.len, record));
                }
                _ => unplaced.push(moved),
            }
            for seq in replaced {
                if let Some(v) = self.drop_record(seq) {
                    if let Some(segment) = v.segment {
                        freed.push((segment, v.len));
                    }
                }
            }
        }
        for (segment, mut moved) in by_segment {
            moved.sort_by_key(|m| m.seq);
            self.relocate(Some(segment), &moved);
        }
        for (len, record) in records {
            self.cache.remove(record.seq);
            self.cache_put(record, len, false);
        }
        (freed, unplaced)
    }
}
