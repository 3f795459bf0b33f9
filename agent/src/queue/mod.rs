//! The queue between the pipeline and the uplink: assigns `seq`, keeps every message on disk
//! until the broker acknowledged it, and decides what goes out next.
//!
//! - Each message is appended to the store ([`store`], segment files of CRC-framed
//!   [`record`]s) with the next `seq` before [`Queue::push`] returns; the `seq` lives in the
//!   log with its record, so consecutive queued messages have consecutive `seq` and a `seq` is
//!   never reused across restarts, kill -9 or power cuts (per the fsync policy).
//! - A message is handed to the uplink only once it is durable (synced per the policy), so a
//!   `seq` the platform has seen is never lost and reused after a power cut.
//! - Events go out before queued telemetry; within a class, oldest first.
//! - A message leaves the queue only when [`Queue::ack`] says the broker has it (an ack
//!   record is written; a lost ack only re-sends the message); after a disconnect
//!   [`Queue::rewind`] makes every unacknowledged message due again.
//! - The queue is bounded (`max_bytes`, `max_messages`): when full, the oldest telemetry is
//!   evicted (and counted); events and replies only when no telemetry is left.
//! - When the disk fails (full, read-only, broken), the queue keeps working from memory,
//!   reports the error in `health`, retries every second, and writes the memory-only
//!   messages to disk once it can.
//!
//! Pushing never waits for the network: a slow or absent broker fills this queue, never the
//! pipeline or a serial reader.

pub mod config;
pub mod record;
pub mod segment;
pub mod seq;
pub mod store;

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use self::record::DoneKind;
use self::store::{FsyncPolicy, Store, StoreOptions};
use crate::feed::{now_millis, Message, MessageClass, Topics, UnixMillis};

/// How long a failed disk is left alone before the next attempt.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How often the background flusher runs when the policy is `always` (done records, retries).
const HOUSEKEEPING: Duration = Duration::from_millis(100);
/// Pending done records that force a write before the next tick.
const DONE_BATCH: usize = 4096;

/// A message with its `seq`, rendered and ready to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The feed `seq`.
    pub seq: u64,
    /// Priority and eviction class.
    pub class: MessageClass,
    /// MQTT topic.
    pub topic: String,
    /// JSON payload.
    pub payload: Vec<u8>,
    /// When it was queued.
    pub queued_at: UnixMillis,
}

/// Queue counters, shared with `health`.
#[derive(Debug, Default)]
pub struct QueueStats {
    /// Messages queued.
    pub queued: AtomicU64,
    /// Messages acknowledged by the broker.
    pub acked: AtomicU64,
    /// Messages evicted because the queue was full.
    pub evicted: AtomicU64,
    /// Messages dropped because no `seq` could be made durable (unused since the disk
    /// queue: a failing disk leaves messages in memory instead).
    pub seq_errors: AtomicU64,
    /// Damaged records skipped when the store was opened.
    pub corrupted: AtomicU64,
    /// Torn tails cut when the store was opened.
    pub torn: AtomicU64,
    /// Failed disk operations.
    pub store_errors: AtomicU64,
    /// Messages queued while the disk failed (held in memory only).
    pub memory_only: AtomicU64,
}

/// A snapshot for `health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueDepth {
    /// Messages waiting (sent or not) for an acknowledgement.
    pub messages: usize,
    /// Their bytes (framed, as on disk).
    pub bytes: usize,
    /// Age of the oldest, ms.
    pub oldest_age_ms: Option<i64>,
}

/// The state of the disk store, for `health`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreStatus {
    /// Bytes of all segment files.
    pub disk_bytes: u64,
    /// Segment files.
    pub segments: usize,
    /// The fsync policy.
    pub fsync: String,
    /// The current disk error, if the queue runs from memory.
    pub error: Option<String>,
}

#[derive(Debug)]
struct Slot {
    record: Arc<Record>,
    /// The segment holding it; `None` while only in memory (the disk failed).
    segment: Option<u64>,
    /// Its frame length.
    len: u64,
}

#[derive(Debug, Default)]
struct Lane {
    records: BTreeMap<u64, Slot>,
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

#[derive(Debug)]
struct Inner {
    store: Store,
    fsync: FsyncPolicy,
    next_seq: u64,
    /// Records with seq <= this may be sent (durable, or the disk failed).
    released_up_to: u64,
    events: Lane,
    telemetry: Lane,
    bytes: u64,
    gw: String,
    topics: Topics,
    max_messages: usize,
    max_bytes: u64,
    error: Option<String>,
    retry_at: Instant,
    /// Set by [`Queue::crash`]: nothing is written any more.
    crashed: bool,
}

/// The shared queue (always behind an `Arc`: a background thread syncs it).
#[derive(Debug)]
pub struct Queue {
    inner: Mutex<Inner>,
    ready: Notify,
    stats: QueueStats,
}

impl Queue {
    /// Opens the store in `options.dir` for gateway `gw`: every unacknowledged record found
    /// there is due again, and numbering continues after the highest `seq` ever issued.
    pub fn open(gw: &str, topics: Topics, options: StoreOptions) -> io::Result<Arc<Queue>> {
        let (store, loaded) = Store::open(&options)?;
        let mut events = Lane::default();
        let mut telemetry = Lane::default();
        let mut bytes = 0;
        for (seq, l) in loaded.live {
            bytes += l.len;
            let lane = match l.record.class {
                MessageClass::Event => &mut events,
                MessageClass::Telemetry => &mut telemetry,
            };
            lane.records.insert(
                seq,
                Slot {
                    record: Arc::new(l.record),
                    segment: Some(l.segment),
                    len: l.len,
                },
            );
        }
        let stats = QueueStats::default();
        stats.corrupted.store(loaded.corrupted, Ordering::Relaxed);
        stats.torn.store(loaded.torn, Ordering::Relaxed);
        if loaded.corrupted > 0 || loaded.torn > 0 {
            tracing::warn!(
                corrupted = loaded.corrupted,
                torn_tails = loaded.torn,
                "store damage found at open: damaged records skipped, torn tails cut"
            );
        }
        let queue = Arc::new(Queue {
            inner: Mutex::new(Inner {
                store,
                fsync: options.fsync,
                next_seq: loaded.next_seq,
                released_up_to: loaded.next_seq - 1,
                events,
                telemetry,
                bytes,
                gw: gw.to_owned(),
                topics,
                max_messages: options.max_messages.max(1),
                max_bytes: options.max_bytes,
                error: None,
                retry_at: Instant::now(),
                crashed: false,
            }),
            ready: Notify::new(),
            stats,
        });
        let period = match options.fsync {
            FsyncPolicy::Always => HOUSEKEEPING,
            FsyncPolicy::Every(d) => d.max(Duration::from_millis(1)),
        };
        let weak = Arc::downgrade(&queue);
        std::thread::Builder::new()
            .name("queue-sync".into())
            .spawn(move || flusher(weak, period))?;
        Ok(queue)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than stopping the agent would; keep going with the data.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The counters.
    pub fn stats(&self) -> &QueueStats {
        &self.stats
    }

    /// Queues a message; returns its `seq` (always `Some` since the disk queue: a failing
    /// disk leaves the message in memory and raises a health error instead).
    pub fn push(&self, message: Message) -> Option<u64> {
        let mut inner = self.lock();
        if inner.crashed {
            return None;
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let class = message.class();
        let record = Record {
            seq,
            class,
            topic: message.topic(&inner.topics),
            payload: message.render(&inner.gw, seq),
            queued_at: now_millis(),
        };
        let len = record::message_frame_len(&record) as u64;
        let segment = inner.persist(&record, &self.stats);
        if segment.is_none() {
            self.stats.memory_only.fetch_add(1, Ordering::Relaxed);
        }
        let released =
            segment.is_none() || inner.error.is_some() || inner.fsync == FsyncPolicy::Always;
        if released {
            inner.released_up_to = seq;
        }
        inner.bytes += len;
        let lane = match class {
            MessageClass::Event => &mut inner.events,
            MessageClass::Telemetry => &mut inner.telemetry,
        };
        lane.records.insert(
            seq,
            Slot {
                record: Arc::new(record),
                segment,
                len,
            },
        );
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        inner.evict(&self.stats);
        inner.compact(&self.stats);
        drop(inner);
        if released {
            self.ready.notify_one();
        }
        Some(seq)
    }

    /// The next message to send: events first, then telemetry, oldest first.
    pub fn next_unsent(&self) -> Option<Arc<Record>> {
        self.next_unsent_if(true)
    }

    /// Like [`Queue::next_unsent`], but telemetry only when `telemetry` is true (the uplink
    /// paces the replay of a telemetry backlog; events always go).
    pub fn next_unsent_if(&self, telemetry: bool) -> Option<Arc<Record>> {
        let mut inner = self.lock();
        let released = inner.released_up_to;
        let event = inner.events.next_unsent(released);
        if event.is_some() || !telemetry {
            return event;
        }
        inner.telemetry.next_unsent(released)
    }

    /// Is telemetry waiting to be sent (released, not yet handed out)?
    pub fn has_unsent_telemetry(&self) -> bool {
        let inner = self.lock();
        inner.telemetry.first_unsent(inner.released_up_to).is_some()
    }

    /// Waits until something may have been pushed.
    pub async fn wait_ready(&self) {
        self.ready.notified().await;
    }

    /// The broker has message `seq`: forget it.
    pub fn ack(&self, seq: u64) {
        let mut inner = self.lock();
        if inner.crashed {
            return;
        }
        let removed = inner
            .events
            .records
            .remove(&seq)
            .or_else(|| inner.telemetry.records.remove(&seq));
        if let Some(slot) = removed {
            inner.bytes -= slot.len;
            if let Some(segment) = slot.segment {
                inner.store.done(DoneKind::Acked, seq, segment, slot.len);
            }
            self.stats.acked.fetch_add(1, Ordering::Relaxed);
            if inner.store.pending_done() >= DONE_BATCH && inner.error.is_none() {
                if let Err(e) = inner.store.write_done() {
                    inner.fail(e, &self.stats);
                }
            }
            inner.store.collect();
        }
    }

    /// `record` could not be handed to the network after all: it is due again next.
    pub fn unsend(&self, record: &Record) {
        let mut inner = self.lock();
        let lane = match record.class {
            MessageClass::Event => &mut inner.events,
            MessageClass::Telemetry => &mut inner.telemetry,
        };
        lane.sent_up_to = lane.sent_up_to.min(record.seq.saturating_sub(1));
    }

    /// The connection dropped: every unacknowledged message is due again.
    pub fn rewind(&self) {
        let mut inner = self.lock();
        inner.events.sent_up_to = 0;
        inner.telemetry.sent_up_to = 0;
    }

    /// Depth, bytes and oldest age.
    pub fn depth(&self, now: UnixMillis) -> QueueDepth {
        let inner = self.lock();
        let oldest = [
            inner.events.records.first_key_value(),
            inner.telemetry.records.first_key_value(),
        ]
        .into_iter()
        .flatten()
        .map(|(_, s)| s.record.queued_at)
        .min();
        QueueDepth {
            messages: inner.events.records.len() + inner.telemetry.records.len(),
            bytes: inner.bytes as usize,
            oldest_age_ms: oldest.map(|t| now - t),
        }
    }

    /// The disk store's state.
    pub fn store_status(&self) -> StoreStatus {
        let inner = self.lock();
        StoreStatus {
            disk_bytes: inner.store.disk_bytes(),
            segments: inner.store.segment_count(),
            fsync: inner.fsync.to_string(),
            error: inner.error.clone(),
        }
    }

    /// The last `seq` issued.
    pub fn last_seq(&self) -> u64 {
        self.lock().next_seq - 1
    }

    /// Syncs now (the background flusher does this per the policy; a clean stop calls it).
    pub fn sync(&self) {
        let mut inner = self.lock();
        let advanced = inner.sync(&self.stats);
        drop(inner);
        if advanced {
            self.ready.notify_one();
        }
    }
}

impl Queue {
    /// Plays a crash (tests): what is not yet written is forgotten and nothing is synced or
    /// written any more, as if the process died here. Records already handed to the kernel
    /// stay, as they do after a kill -9.
    #[doc(hidden)]
    pub fn crash(&self) {
        let mut inner = self.lock();
        inner.crashed = true;
        inner.store.discard_pending();
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        let stats = &self.stats;
        let inner = self
            .inner
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        inner.sync(stats);
    }
}

/// Syncs the queue every `period` until it is dropped.
fn flusher(queue: Weak<Queue>, period: Duration) {
    loop {
        std::thread::sleep(period);
        let Some(queue) = queue.upgrade() else { return };
        queue.sync();
    }
}

impl Inner {
    /// Appends `record` to the store; `None` when the disk failed (the record stays in memory).
    fn persist(&mut self, record: &Record, stats: &QueueStats) -> Option<u64> {
        if self.error.is_some() && !self.recover(stats) {
            return None;
        }
        match self.store.append(record) {
            Ok((segment, _)) => {
                if self.fsync == FsyncPolicy::Always {
                    if let Err(e) = self.store.sync(record.seq) {
                        self.fail(e, stats);
                    }
                }
                Some(segment)
            }
            Err(e) => {
                self.fail(e, stats);
                None
            }
        }
    }

    fn fail(&mut self, e: io::Error, stats: &QueueStats) {
        stats.store_errors.fetch_add(1, Ordering::Relaxed);
        if self.error.is_none() {
            tracing::error!(error = %e, "the queue's store is not writable: keeping messages in memory until it is");
        }
        self.error = Some(e.to_string());
        self.retry_at = Instant::now() + RETRY_AFTER;
        // What is queued can no longer become more durable: send it rather than hold it.
        self.released_up_to = self.next_seq - 1;
    }

    /// Tries the disk again (at most once per [`RETRY_AFTER`]): a fresh segment, then every
    /// memory-only record, synced. `true` when the disk works again.
    fn recover(&mut self, stats: &QueueStats) -> bool {
        if Instant::now() < self.retry_at {
            return false;
        }
        let result = (|| -> io::Result<()> {
            self.store.start_segment(self.next_seq)?;
            let mut memory_only: Vec<(MessageClass, u64)> = self
                .events
                .records
                .iter()
                .chain(self.telemetry.records.iter())
                .filter(|(_, s)| s.segment.is_none())
                .map(|(&seq, s)| (s.record.class, seq))
                .collect();
            memory_only.sort_by_key(|&(_, seq)| seq);
            for (class, seq) in memory_only {
                let lane = match class {
                    MessageClass::Event => &mut self.events,
                    MessageClass::Telemetry => &mut self.telemetry,
                };
                if let Some(slot) = lane.records.get_mut(&seq) {
                    let (segment, _) = self.store.append(&slot.record)?;
                    slot.segment = Some(segment);
                }
            }
            self.store.sync(self.next_seq - 1)
        })();
        match result {
            Ok(()) => {
                tracing::info!("the queue's store is writable again");
                self.error = None;
                true
            }
            Err(e) => {
                self.fail(e, stats);
                false
            }
        }
    }

    /// Syncs per the policy and releases what became durable; `true` if more may be sent.
    fn sync(&mut self, stats: &QueueStats) -> bool {
        if self.crashed {
            return false;
        }
        if self.error.is_some() {
            return self.recover(stats);
        }
        if !self.store.is_dirty() {
            return false;
        }
        let last = self.next_seq - 1;
        match self.store.sync(last) {
            Ok(()) => {
                let advanced = self.released_up_to < last;
                self.released_up_to = last;
                advanced
            }
            Err(e) => {
                self.fail(e, stats);
                true
            }
        }
    }

    fn live(&self) -> usize {
        self.events.records.len() + self.telemetry.records.len()
    }

    /// Evicts the oldest telemetry (then the oldest events) while the queue is over a bound.
    fn evict(&mut self, stats: &QueueStats) {
        while self.live() > self.max_messages || self.bytes > self.max_bytes {
            let victim = match self.telemetry.records.pop_first() {
                Some(v) => v,
                None => match self.events.records.pop_first() {
                    Some(v) => v,
                    None => break,
                },
            };
            let (seq, slot) = victim;
            self.bytes -= slot.len;
            if let Some(segment) = slot.segment {
                self.store.done(DoneKind::Evicted, seq, segment, slot.len);
            }
            stats.evicted.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(seq, class = ?slot.record.class, "queue full: evicted the oldest message");
        }
        self.store.collect();
    }

    /// Moves the live records of the oldest segment forward when the store holds much more
    /// than it must, so an old event cannot pin a segment of dead telemetry on disk.
    fn compact(&mut self, stats: &QueueStats) {
        if self.error.is_some() {
            return;
        }
        let limit = self
            .max_bytes
            .saturating_add(2 * self.store_segment_bytes());
        let Some(oldest) = self.store.compaction_candidate(limit) else {
            return;
        };
        let result = (|| -> io::Result<()> {
            for lane in [&mut self.events, &mut self.telemetry] {
                for slot in lane.records.values_mut() {
                    if slot.segment == Some(oldest) {
                        let (segment, _) = self.store.append(&slot.record)?;
                        self.store.forget(oldest, slot.len);
                        slot.segment = Some(segment);
                    }
                }
            }
            // The copies must be durable before the originals go.
            self.store.sync(self.next_seq - 1)
        })();
        match result {
            Ok(()) => self.store.drop_compacted(oldest),
            Err(e) => self.fail(e, stats),
        }
    }

    fn store_segment_bytes(&self) -> u64 {
        self.store.segment_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::{Event, EventState, Severity};
    use crate::queue::segment::FaultSwitch;

    fn options(dir: &std::path::Path, max: usize) -> StoreOptions {
        StoreOptions {
            fsync: FsyncPolicy::Always,
            max_messages: max,
            ..StoreOptions::new(dir)
        }
    }

    fn queue(dir: &std::path::Path, max: usize) -> Arc<Queue> {
        Queue::open("gw", Topics::new("r", "gw"), options(dir, max)).expect("open")
    }

    fn data(dev: &str) -> Message {
        Message::Data {
            dev: dev.into(),
            start: 0,
            end: 10,
            ch: Default::default(),
        }
    }

    fn event(dev: &str) -> Message {
        Message::Event {
            dev: dev.into(),
            event: Event::new(0, "sensor_fault", Severity::Major, EventState::Active),
        }
    }

    fn drain(q: &Queue) -> Vec<u64> {
        std::iter::from_fn(|| q.next_unsent())
            .map(|r| r.seq)
            .collect()
    }

    #[test]
    fn events_go_first_and_seq_is_consecutive() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = queue(dir.path(), 100);
        assert_eq!(q.push(data("a")), Some(1));
        assert_eq!(q.push(data("a")), Some(2));
        assert_eq!(q.push(event("a")), Some(3));
        assert_eq!(drain(&q), vec![3, 1, 2]);
        assert_eq!(q.next_unsent(), None);
    }

    #[test]
    fn unacked_messages_come_back_after_rewind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = queue(dir.path(), 100);
        for _ in 0..3 {
            q.push(data("a"));
        }
        assert_eq!(drain(&q), vec![1, 2, 3]);
        q.ack(2);
        q.rewind();
        assert_eq!(drain(&q), vec![1, 3]);
        assert_eq!(q.depth(now_millis()).messages, 2);
    }

    #[test]
    fn a_full_queue_evicts_the_oldest_telemetry_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = queue(dir.path(), 3);
        q.push(event("a")); // 1
        q.push(data("a")); // 2
        q.push(data("a")); // 3
        q.push(data("a")); // 4: evicts 2
        q.push(event("a")); // 5: evicts 3
        assert_eq!(drain(&q), vec![1, 5, 4]);
        assert_eq!(q.stats().evicted.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn payloads_carry_their_seq_and_topic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = queue(dir.path(), 100);
        q.push(event("lift-2"));
        let r = q.next_unsent().expect("record");
        assert_eq!(r.topic, "r/gw/event/lift-2");
        let v: serde_json::Value = serde_json::from_slice(&r.payload).expect("json");
        assert_eq!(v["seq"], 1);
        assert_eq!(v["gw"], "gw");
    }

    #[test]
    fn unacknowledged_records_and_seq_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = queue(dir.path(), 100);
        for _ in 0..5 {
            q.push(data("a"));
        }
        q.push(event("a")); // 6
        q.ack(1);
        q.ack(3);
        q.ack(6);
        drop(q);
        let q = queue(dir.path(), 100);
        assert_eq!(drain(&q), vec![2, 4, 5]);
        assert_eq!(q.push(data("a")), Some(7));
        assert_eq!(q.last_seq(), 7);
    }

    #[test]
    fn the_legacy_seq_file_is_a_floor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut legacy = seq::SeqCounter::open(dir.path()).expect("seq");
        for _ in 0..41 {
            legacy.issue().expect("issue");
        }
        drop(legacy);
        let q = queue(dir.path(), 100);
        assert_eq!(q.push(data("a")), Some(42));
    }

    #[test]
    fn batched_sync_releases_records_only_once_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = StoreOptions {
            // Long enough that the background flusher does not run during the test.
            fsync: FsyncPolicy::Every(Duration::from_secs(3600)),
            ..StoreOptions::new(dir.path())
        };
        let q = Queue::open("gw", Topics::new("r", "gw"), opts).expect("open");
        q.push(data("a"));
        q.push(event("a"));
        assert_eq!(
            q.next_unsent(),
            None,
            "nothing goes out before it is synced"
        );
        q.sync();
        assert_eq!(drain(&q), vec![2, 1]);
    }

    #[test]
    fn eviction_by_bytes_and_segments_are_deleted_when_acked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = StoreOptions {
            max_bytes: 20 * 1024,
            segment_bytes: 4096,
            ..options(dir.path(), 100_000)
        };
        let q = Queue::open("gw", Topics::new("r", "gw"), opts).expect("open");
        q.push(event("first")); // 1: must survive every telemetry eviction
        for _ in 0..2000 {
            q.push(data("a"));
        }
        let depth = q.depth(now_millis());
        assert!(depth.bytes as u64 <= 20 * 1024, "{depth:?}");
        let evicted = q.stats().evicted.load(Ordering::Relaxed);
        assert!(evicted > 1500, "evicted {evicted}");
        let status = q.store_status();
        assert!(
            status.disk_bytes <= 20 * 1024 + 3 * 4096 + 4096,
            "disk {status:?}: compaction keeps the store near max_bytes"
        );
        let sent = drain(&q);
        assert_eq!(sent[0], 1, "the event was not evicted");
        // Consecutive from the first surviving telemetry on: eviction takes the oldest.
        assert!(sent[1..].windows(2).all(|w| w[1] == w[0] + 1));
        for seq in &sent {
            q.ack(*seq);
        }
        q.sync();
        assert_eq!(
            q.store_status().segments,
            1,
            "fully acked segments are deleted"
        );
        drop(q);
        let q = queue(dir.path(), 100);
        assert_eq!(drain(&q), Vec::<u64>::new());
        assert_eq!(q.push(data("a")), Some(2002));
    }

    #[test]
    fn a_failing_disk_keeps_messages_in_memory_and_recovers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let faults = FaultSwitch::new();
        let opts = StoreOptions {
            faults: faults.clone(),
            ..options(dir.path(), 100)
        };
        let q = Queue::open("gw", Topics::new("r", "gw"), opts.clone()).expect("open");
        q.push(data("a")); // 1, on disk
        faults.set(true);
        q.push(data("a")); // 2, memory only
        q.push(event("a")); // 3, memory only
        let status = q.store_status();
        assert!(status.error.is_some(), "{status:?}");
        assert_eq!(q.stats().memory_only.load(Ordering::Relaxed), 2);
        assert_eq!(
            drain(&q),
            vec![3, 1, 2],
            "memory-only messages still go out"
        );
        q.rewind();
        faults.set(false);
        // The retry waits RETRY_AFTER; make it due now.
        q.lock().retry_at = Instant::now();
        q.sync();
        assert_eq!(q.store_status().error, None);
        q.ack(1);
        drop(q);
        let q = Queue::open("gw", Topics::new("r", "gw"), opts).expect("reopen");
        assert_eq!(
            drain(&q),
            vec![3, 2],
            "recovered messages were written to disk"
        );
    }

    #[test]
    fn a_torn_tail_is_cut_and_seq_is_not_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = queue(dir.path(), 100);
        for _ in 0..3 {
            q.push(data("a"));
        }
        drop(q);
        let seg = segment::list(dir.path()).expect("list")[0].path.clone();
        let len = std::fs::metadata(&seg).expect("meta").len();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .expect("open");
        f.set_len(len - 5).expect("truncate");
        drop(f);
        let q = queue(dir.path(), 100);
        assert_eq!(q.stats().torn.load(Ordering::Relaxed), 1);
        assert_eq!(drain(&q), vec![1, 2]);
        // seq 3 was issued (the floor file says so): never reused.
        assert_eq!(q.push(data("a")), Some(4));
        drop(q);
        let q = queue(dir.path(), 100);
        assert_eq!(
            q.stats().torn.load(Ordering::Relaxed),
            0,
            "the tail was cut"
        );
    }
}
