//! The queue's in-memory state: which records are queued, in which segment, which were
//! handed to the uplink, what may be sent (is durable), and the done records the writer has
//! still to write.
//!
//! Only memory: the async side (uplink, health) reads and changes it under a short lock, the
//! writer thread ([`super::writer`]) inserts what it appended and takes the acknowledgements
//! to write. No disk I/O ever happens while this state is locked.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::record::DoneKind;
use super::Record;
use crate::feed::MessageClass;

/// One queued record.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) record: Arc<Record>,
    /// The segment holding it; `None` while only in memory (the disk failed).
    pub(super) segment: Option<u64>,
    /// Its frame length.
    pub(super) len: u64,
}

/// The records of one class, by `seq`.
#[derive(Debug, Default)]
pub(super) struct Lane {
    pub(super) records: BTreeMap<u64, Slot>,
    /// Every record with seq <= this has been handed to the uplink in this session.
    sent_up_to: u64,
}

impl Lane {
    /// The first record not yet handed out, if one is released (`range` panics on an empty
    /// interval, hence the guard).
    fn first_unsent(&self, released_up_to: u64) -> Option<(&u64, &Slot)> {
        if self.sent_up_to >= released_up_to {
            return None;
        }
        self.records
            .range(self.sent_up_to + 1..=released_up_to)
            .next()
    }

    fn next_unsent(&mut self, released_up_to: u64) -> Option<Arc<Record>> {
        let (seq, record) = self
            .first_unsent(released_up_to)
            .map(|(&seq, slot)| (seq, slot.record.clone()))?;
        self.sent_up_to = seq;
        Some(record)
    }
}

/// A record that is no longer live, for the writer to note in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Done {
    pub(super) kind: DoneKind,
    pub(super) seq: u64,
    pub(super) segment: u64,
    pub(super) len: u64,
}

/// Everything the queue knows in memory.
#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) events: Lane,
    pub(super) captures: Lane,
    pub(super) telemetry: Lane,
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
}

impl State {
    fn lane_mut(&mut self, class: MessageClass) -> &mut Lane {
        match class {
            MessageClass::Event => &mut self.events,
            MessageClass::Capture => &mut self.captures,
            MessageClass::Telemetry => &mut self.telemetry,
        }
    }

    /// Queues `record` (already appended to `segment`, or memory-only).
    pub(super) fn insert(&mut self, record: Arc<Record>, segment: Option<u64>, len: u64) {
        self.bytes += len;
        let seq = record.seq;
        let lane = self.lane_mut(record.class);
        lane.records.insert(
            seq,
            Slot {
                record,
                segment,
                len,
            },
        );
    }

    /// Messages queued.
    pub(super) fn live(&self) -> usize {
        self.events.records.len() + self.captures.records.len() + self.telemetry.records.len()
    }

    /// The next record to send: events first, then captures (neither is paced), telemetry
    /// only if `telemetry`.
    pub(super) fn next_unsent(&mut self, telemetry: bool) -> Option<Arc<Record>> {
        let released = self.released_up_to;
        let urgent = self
            .events
            .next_unsent(released)
            .or_else(|| self.captures.next_unsent(released));
        if urgent.is_some() || !telemetry {
            return urgent;
        }
        self.telemetry.next_unsent(released)
    }

    /// Is released telemetry waiting to be handed out?
    pub(super) fn has_unsent_telemetry(&self) -> bool {
        self.telemetry.first_unsent(self.released_up_to).is_some()
    }

    /// The broker has `seq`: forget it; the store learns it from the writer. `true` if it
    /// was queued.
    pub(super) fn ack(&mut self, seq: u64) -> bool {
        let removed = self
            .events
            .records
            .remove(&seq)
            .or_else(|| self.captures.records.remove(&seq))
            .or_else(|| self.telemetry.records.remove(&seq));
        let Some(slot) = removed else {
            return false;
        };
        self.bytes -= slot.len;
        if let Some(segment) = slot.segment {
            self.pending_done.push(Done {
                kind: DoneKind::Acked,
                seq,
                segment,
                len: slot.len,
            });
        }
        true
    }

    /// `record` is due again (it could not be handed to the network).
    pub(super) fn unsend(&mut self, record: &Record) {
        let lane = self.lane_mut(record.class);
        lane.sent_up_to = lane.sent_up_to.min(record.seq.saturating_sub(1));
    }

    /// Every queued record is due again.
    pub(super) fn rewind(&mut self) {
        self.events.sent_up_to = 0;
        self.captures.sent_up_to = 0;
        self.telemetry.sent_up_to = 0;
    }

    /// When the oldest queued record was queued.
    pub(super) fn oldest_queued_at(&self) -> Option<i64> {
        [
            self.events.records.first_key_value(),
            self.captures.records.first_key_value(),
            self.telemetry.records.first_key_value(),
        ]
        .into_iter()
        .flatten()
        .map(|(_, s)| s.record.queued_at)
        .min()
    }

    /// Takes the oldest telemetry (then the oldest captures, then the oldest events) out
    /// while the queue is over a bound; returns what went, for the writer to mark evicted.
    pub(super) fn evict(&mut self, max_messages: usize, max_bytes: u64) -> Vec<(u64, Slot)> {
        let mut out = Vec::new();
        while self.live() > max_messages || self.bytes > max_bytes {
            let victim = match self
                .telemetry
                .records
                .pop_first()
                .or_else(|| self.captures.records.pop_first())
                .or_else(|| self.events.records.pop_first())
            {
                Some(v) => v,
                None => break,
            };
            self.bytes -= victim.1.len;
            out.push(victim);
        }
        out
    }

    /// The records held in memory only (the disk failed), oldest first.
    pub(super) fn memory_only(&self) -> Vec<Arc<Record>> {
        let mut out: Vec<Arc<Record>> = self
            .events
            .records
            .values()
            .chain(self.captures.records.values())
            .chain(self.telemetry.records.values())
            .filter(|s| s.segment.is_none())
            .map(|s| s.record.clone())
            .collect();
        out.sort_by_key(|r| r.seq);
        out
    }

    /// The records in `segment`.
    pub(super) fn in_segment(&self, segment: u64) -> Vec<Arc<Record>> {
        self.events
            .records
            .values()
            .chain(self.captures.records.values())
            .chain(self.telemetry.records.values())
            .filter(|s| s.segment == Some(segment))
            .map(|s| s.record.clone())
            .collect()
    }

    /// Record `seq` moved from segment `from` to `to`; `false` if it is no longer queued
    /// there (acknowledged or evicted meanwhile).
    pub(super) fn moved(&mut self, seq: u64, from: Option<u64>, to: u64) -> bool {
        let slot = self
            .events
            .records
            .get_mut(&seq)
            .or_else(|| self.captures.records.get_mut(&seq))
            .or_else(|| self.telemetry.records.get_mut(&seq));
        match slot {
            Some(slot) if slot.segment == from => {
                slot.segment = Some(to);
                true
            }
            _ => false,
        }
    }
}
