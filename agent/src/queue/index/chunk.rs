//! The packed index: [`Entry`], one record in 8 bytes (offset and frame length in its
//! segment, class, live bit), and [`Chunk`], the entries of consecutive seqs in one segment
//! with their `queued_at` samples. [`super::State`] keeps its chunks in seq order.

use crate::feed::MessageClass;

/// Entries per `queued_at` sample.
const TIME_STEP: usize = 64;

const OFFSET_BITS: u32 = 32;
const LEN_BITS: u32 = 24;
const LEN_MAX: u64 = (1 << LEN_BITS) - 1;
const CLASS_SHIFT: u32 = OFFSET_BITS + LEN_BITS;
const LIVE_BIT: u64 = 1 << 58;

/// One record in the index, packed in 8 bytes: offset in its segment (32 bits), frame length
/// (24 bits), class (2 bits), live (1 bit). A dead entry (acknowledged, evicted, or a gap
/// filler) is 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Entry(u64);

impl Entry {
    pub(super) const DEAD: Entry = Entry(0);

    pub(super) fn new(class: MessageClass, offset: u64, len: u64) -> Entry {
        let class = match class {
            MessageClass::Telemetry => 0,
            MessageClass::Event => 1,
            MessageClass::Capture => 2,
        };
        Entry(
            (offset & 0xffff_ffff)
                | (len.min(LEN_MAX) << OFFSET_BITS)
                | (class << CLASS_SHIFT)
                | LIVE_BIT,
        )
    }

    pub(super) fn live(self) -> bool {
        self.0 & LIVE_BIT != 0
    }

    pub(super) fn offset(self) -> u64 {
        self.0 & 0xffff_ffff
    }

    pub(super) fn len(self) -> u64 {
        (self.0 >> OFFSET_BITS) & LEN_MAX
    }

    pub(super) fn class(self) -> MessageClass {
        match (self.0 >> CLASS_SHIFT) & 3 {
            0 => MessageClass::Telemetry,
            2 => MessageClass::Capture,
            _ => MessageClass::Event,
        }
    }

    /// The same record at another offset with another frame length (a merged record).
    pub(super) fn with_place(self, offset: u64, len: u64) -> Entry {
        let mask = 0xffff_ffff | (LEN_MAX << OFFSET_BITS);
        Entry((self.0 & !mask) | (offset & 0xffff_ffff) | (len.min(LEN_MAX) << OFFSET_BITS))
    }
}

/// Records of consecutive seqs in one segment (or in memory only, `segment` `None`).
#[derive(Debug, Clone)]
pub(super) struct Chunk {
    pub(super) segment: Option<u64>,
    /// The seq of `entries[0]`.
    pub(super) origin: u64,
    pub(super) entries: Vec<Entry>,
    /// Live entries.
    pub(super) live: usize,
    /// `times[k]`: the `queued_at` of `entries[k * TIME_STEP]`, a floor for its block.
    pub(super) times: Vec<i64>,
}

impl Chunk {
    pub(super) fn new(segment: Option<u64>, origin: u64) -> Chunk {
        Chunk {
            segment,
            origin,
            entries: Vec::new(),
            live: 0,
            times: Vec::new(),
        }
    }

    pub(super) fn end(&self) -> u64 {
        self.origin + self.entries.len() as u64
    }

    pub(super) fn push(&mut self, entry: Entry, queued_at: i64) {
        if self.entries.len() % TIME_STEP == 0 {
            self.times.push(queued_at);
        }
        self.entries.push(entry);
        if entry.live() {
            self.live += 1;
        }
    }

    pub(super) fn time_at(&self, index: usize) -> i64 {
        self.times.get(index / TIME_STEP).copied().unwrap_or(0)
    }
}
