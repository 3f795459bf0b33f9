//! The queue's writer: the one thread that touches the store's files.
//!
//! Pushes reach it through a bounded hand-off ([`super::HANDOFF`] requests: a full hand-off
//! makes the pushing task wait, it never grows). For each batch it takes from the hand-off it
//! numbers the records (the writer issues every `seq`, so a record lost in the hand-off by a
//! kill -9 never had one: no gap, no reuse), appends them, syncs when the policy or the
//! batch asks for it (`fsync = "always"`, or any event or reply in the batch), puts them in
//! the in-memory index, and only then answers each push with its `seq`: a push that returned
//! has its record in the kernel (and on the disk for `always`, events and replies), exactly
//! as when the pushing task wrote it itself. Acknowledgements reach it as pending done
//! records in the shared state; it writes them in batches and with each sync.
//!
//! It also runs the periodic sync of the batched policy, evicts when the queue is over its
//! bounds, compacts the oldest segment, and retries a failed disk every `retry_after`. The
//! shared state is locked only between disk operations, never across one.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::index::{Done, MergedRecord, Moved, State};
use super::record::{self, DoneKind};
use super::segment::SegmentReader;
use super::store::{FsyncPolicy, Store};
use super::{Record, Shared};
use crate::feed::{now_millis, MessageClass, Rendered};

/// How often the writer runs its housekeeping when the policy is `always` (done records,
/// retries).
const HOUSEKEEPING: Duration = Duration::from_millis(100);
/// Pending done records that make the writer write them before the next tick.
pub(super) const DONE_BATCH: usize = 4096;
/// A backlog of this many records, once drained (to 1/16 of it), makes the writer give the
/// freed memory back.
const GIVE_BACK_AFTER: usize = 16_384;

/// What a pushing or syncing caller hands the writer.
pub(super) enum Request {
    /// Queue these records in order; answer with their `seq`s, in the same order.
    PushMany {
        rendered: Vec<Rendered>,
        answer: oneshot::Sender<Vec<u64>>,
    },
    /// Sync now; answer when done.
    Sync { answer: oneshot::Sender<()> },
    /// Which segments hold records of `from..=to` (for `resend`).
    Segments {
        from: u64,
        to: u64,
        answer: oneshot::Sender<Vec<super::store::SegmentSummary>>,
    },
}

/// The writer's settings.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub(super) fsync: FsyncPolicy,
    pub(super) max_messages: usize,
    pub(super) max_bytes: u64,
    pub(super) merge_above: Option<u8>,
    pub(super) retry_after: Duration,
}

/// How long after a tier's span ends its windows may still be coming (the pipeline's window
/// grace and the hand-off): a span is merged only once it ended this long ago.
const MERGE_SETTLE_MS: i64 = 5_000;
/// Read batches one merge pass reads at most (per tier).
const MERGE_BATCHES: usize = 4;
/// Between merge passes while the store is above the mark but not full.
const MERGE_EVERY: Duration = Duration::from_secs(2);

pub(super) struct Writer {
    shared: Arc<Shared>,
    store: Store,
    /// Reads records back for compaction.
    files: SegmentReader,
    /// The most records queued since memory was last given back.
    peak: usize,
    settings: Settings,
    next_seq: u64,
    error: bool,
    retry_at: Instant,
    /// When the last merge pass ran.
    merged_at: Option<Instant>,
}

impl Writer {
    pub(super) fn new(
        shared: Arc<Shared>,
        store: Store,
        settings: Settings,
        next_seq: u64,
    ) -> Writer {
        Writer {
            shared,
            files: SegmentReader::new(store.dir()),
            peak: 0,
            store,
            settings,
            next_seq,
            error: false,
            retry_at: Instant::now(),
            merged_at: None,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }

    fn crashed(&self) -> bool {
        self.lock().crashed
    }

    /// Runs until every sender of `requests` is gone (the queue was dropped), then syncs.
    pub(super) fn run(mut self, mut requests: mpsc::Receiver<Request>) {
        let period = match self.settings.fsync {
            FsyncPolicy::Always => HOUSEKEEPING,
            FsyncPolicy::Every(d) => d.max(Duration::from_millis(1)),
        };
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "the queue's writer cannot start its timer");
                return;
            }
        };
        let shared = self.shared.clone();
        runtime.block_on(async {
            let mut next_sync = tokio::time::Instant::now() + period;
            let mut batch = Vec::with_capacity(super::HANDOFF);
            loop {
                tokio::select! {
                    biased;
                    n = requests.recv_many(&mut batch, super::HANDOFF) => {
                        if n == 0 {
                            break;
                        }
                        self.handle(&mut batch);
                    }
                    _ = shared.wake.notified() => self.take_acks(),
                    _ = tokio::time::sleep_until(next_sync) => {}
                }
                // Checked after every batch too: a steady stream of pushes must not starve
                // the periodic sync (the hand-off is polled first).
                let now = tokio::time::Instant::now();
                if now >= next_sync {
                    self.sync_now();
                    next_sync = now + period;
                }
            }
        });
        self.sync_now();
    }

    /// Appends a batch of pushes (one `write`), syncs at once if it must (an event or reply
    /// in it, or `fsync = "always"`), indexes them (evicting what they push over the
    /// bounds), releases them to the uplink and answers; only then the housekeeping
    /// (acknowledgements, segment deletion, compaction), so none of it stands between an
    /// event and the broker.
    fn handle(&mut self, batch: &mut Vec<Request>) {
        if self.crashed() {
            batch.clear();
            return; // the answers are dropped: the pushes see no seq
        }
        let shared = self.shared.clone();
        let stats = &shared.stats;
        let mut records = Vec::with_capacity(batch.len());
        let mut answers = Vec::with_capacity(batch.len());
        let mut syncs = Vec::new();
        let mut urgent = false;
        let queued_at = now_millis();
        for request in batch.drain(..) {
            match request {
                Request::PushMany { rendered, answer } => {
                    let mut seqs = Vec::with_capacity(rendered.len());
                    for rendered in rendered {
                        urgent |= rendered.class == MessageClass::Event;
                        let record = self.number(rendered, queued_at);
                        seqs.push(record.seq);
                        records.push(record);
                    }
                    answers.push((seqs, answer));
                }
                Request::Sync { answer } => syncs.push(answer),
                Request::Segments { from, to, answer } => {
                    let _ = answer.send(self.store.summaries(from, to));
                }
            }
        }
        let placed = self.persist_all(&records);
        let must_sync =
            !records.is_empty() && (urgent || self.settings.fsync == FsyncPolicy::Always);
        let synced = must_sync && !self.error && self.sync_store();
        let last = self.next_seq - 1;
        let released = {
            let mut state = shared.lock();
            for (record, at) in records.into_iter().zip(placed) {
                if at.is_none() {
                    stats.memory_only.fetch_add(1, Ordering::Relaxed);
                }
                stats.queued.fetch_add(1, Ordering::Relaxed);
                let len = record::message_frame_len(&record) as u64;
                let (seq, class, queued_at) = (record.seq, record.class, record.queued_at);
                state.insert(seq, class, queued_at, at, len, Some(Arc::new(record)));
                state.last_seq = seq;
            }
            self.peak = self.peak.max(state.live());
            let released = (synced || self.error) && state.released_up_to < last;
            if released {
                state.released_up_to = last;
            }
            released
        };
        // Degrade by aggregation before anything is evicted; then within the bounds again
        // before any push returns (memory only: the done records are written later).
        self.merge();
        let victims = self
            .lock()
            .evict(self.settings.max_messages, self.settings.max_bytes);
        for v in victims {
            if let Some(segment) = v.segment {
                self.store.done(DoneKind::Evicted, v.seq, segment, v.len);
            }
            stats.evicted.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(seq = v.seq, class = ?v.class, "queue full: evicted the oldest message");
        }
        // The uplink first (an event goes out now), then the pushers. A failing disk sends
        // everything at once (its release may have come before these were indexed).
        if released || self.error {
            self.shared.ready.notify_one();
        }
        for (seqs, answer) in answers {
            let _ = answer.send(seqs);
        }
        self.take_acks();
        self.store.collect();
        self.compact();
        self.publish_status();
        if !syncs.is_empty() {
            self.sync_now();
        }
        for answer in syncs {
            let _ = answer.send(());
        }
    }

    /// `rendered` as the record with the next `seq`.
    fn number(&mut self, rendered: Rendered, queued_at: i64) -> Record {
        let seq = self.next_seq;
        self.next_seq += 1;
        Record {
            seq,
            class: rendered.class,
            payload: rendered.payload(seq),
            topic: rendered.topic,
            queued_at,
        }
    }

    /// Appends `records` with one write; where each went (segment, offset), `None` for those
    /// the disk did not take (they stay in memory).
    fn persist_all(&mut self, records: &[Record]) -> Vec<Option<(u64, u64)>> {
        if records.is_empty() || (self.error && !self.recover()) {
            return vec![None; records.len()];
        }
        let (placed, error) = self.store.append_all(records);
        if let Some(e) = error {
            self.fail(e);
        }
        let mut out: Vec<Option<(u64, u64)>> = placed
            .into_iter()
            .map(|(segment, offset, _)| Some((segment, offset)))
            .collect();
        out.resize(records.len(), None);
        out
    }

    /// Syncs what was appended; `true` if it is durable now.
    fn sync_store(&mut self) -> bool {
        match self.store.sync(self.next_seq - 1) {
            Ok(()) => {
                self.shared.stats.syncs.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                self.fail(e);
                false
            }
        }
    }

    /// Syncs per the policy (the tick, a sync request, the end) and releases what became
    /// durable.
    fn sync_now(&mut self) {
        if self.crashed() {
            return;
        }
        self.take_acks();
        let durable = if self.error {
            self.recover()
        } else {
            self.store.is_dirty() && self.sync_store()
        };
        if durable {
            let last = self.next_seq - 1;
            let mut state = self.lock();
            let advanced = state.released_up_to < last;
            state.released_up_to = last;
            drop(state);
            if advanced {
                self.shared.ready.notify_one();
            }
        }
        // Kept acknowledged segments expire with time too, not only on the next ack.
        self.store.collect();
        self.publish_status();
    }

    /// Hands the acknowledgements noted in the shared state to the store; writes them when
    /// enough are pending.
    fn take_acks(&mut self) {
        let (pending, crashed) = {
            let mut state = self.lock();
            (std::mem::take(&mut state.pending_done), state.crashed)
        };
        if crashed {
            return;
        }
        for Done {
            kind,
            seq,
            segment,
            len,
        } in pending
        {
            self.store.done(kind, seq, segment, len);
        }
        if self.store.pending_done() >= DONE_BATCH && !self.error {
            if let Err(e) = self.store.write_done() {
                self.fail(e);
            }
        }
        self.store.collect();
        self.give_back_memory();
    }

    /// Once a large backlog has drained, hands the allocator's free memory back to the
    /// system (glibc keeps freed heap otherwise), so RSS comes back down.
    fn give_back_memory(&mut self) {
        if self.peak < GIVE_BACK_AFTER || self.lock().live() > GIVE_BACK_AFTER / 16 {
            return;
        }
        self.peak = 0;
        super::trim_memory();
    }

    fn fail(&mut self, e: io::Error) {
        let stats = &self.shared.stats;
        stats.store_errors.fetch_add(1, Ordering::Relaxed);
        if !self.error {
            tracing::error!(error = %e, "the queue's store is not writable: keeping messages in memory until it is");
        }
        self.error = true;
        self.retry_at = Instant::now() + self.settings.retry_after;
        // What is queued can no longer become more durable: send it rather than hold it.
        let last = self.next_seq - 1;
        let mut state = self.lock();
        state.error = Some(e.to_string());
        state.released_up_to = state.released_up_to.max(last);
        drop(state);
        self.shared.ready.notify_one();
    }

    /// Tries the disk again (at most once per `retry_after`): a fresh segment, then every
    /// memory-only record, synced. `true` when the disk works again.
    fn recover(&mut self) -> bool {
        if Instant::now() < self.retry_at {
            return false;
        }
        let memory_only = self.lock().memory_only();
        let result = (|| -> io::Result<Vec<Moved>> {
            self.store.start_segment(self.next_seq)?;
            let mut written = Vec::with_capacity(memory_only.len());
            for record in &memory_only {
                let (segment, offset, len) = self.store.append(record)?;
                written.push(Moved {
                    seq: record.seq,
                    segment,
                    offset,
                    len,
                });
            }
            self.store.sync(self.next_seq - 1)?;
            Ok(written)
        })();
        match result {
            Ok(written) => {
                let gone = {
                    let mut state = self.lock();
                    state.error = None;
                    state.relocate(None, &written)
                };
                // Acknowledged while being written: say so on disk too.
                for m in gone {
                    self.store.done(DoneKind::Acked, m.seq, m.segment, m.len);
                }
                tracing::info!("the queue's store is writable again");
                self.error = false;
                true
            }
            Err(e) => {
                self.fail(e);
                false
            }
        }
    }

    /// Degrades by aggregation: while the live records are above `merge_above` of
    /// `max_bytes`, merges the oldest queued telemetry windows of each device into coarser
    /// ones, tier by tier ([`crate::feed::merge`]), before anything is evicted.
    ///
    /// Crash-safe: each merged record is appended as one frame naming the records it
    /// replaces (its own seq is the first window's, so on open the newest copy of that seq
    /// wins and the others are not live), synced before the index forgets the originals.
    /// The uplink does not take the candidates while the merge is under way.
    fn merge(&mut self) {
        let Some(percent) = self.settings.merge_above else {
            return;
        };
        if self.error || self.crashed() {
            return;
        }
        let mark = (u128::from(self.settings.max_bytes) * u128::from(percent) / 100) as u64;
        let bytes = self.lock().bytes;
        if bytes <= mark {
            return;
        }
        // Above the mark but not full: a pass at most every MERGE_EVERY (each reads back).
        let full = bytes > self.settings.max_bytes;
        if !full && self.merged_at.is_some_and(|t| t.elapsed() < MERGE_EVERY) {
            return;
        }
        self.merged_at = Some(Instant::now());
        // A span still filling is held back, unless the store is full: then merging what
        // there is beats evicting.
        let until = if full {
            i64::MAX
        } else {
            now_millis() - MERGE_SETTLE_MS
        };
        for (tier, &tier_ms) in crate::feed::merge::TIERS_MS.iter().enumerate() {
            for _ in 0..MERGE_BATCHES {
                let (wanted, cut) = self.lock().merge_candidates(tier);
                if wanted.is_empty() {
                    self.lock().merge_done();
                    break;
                }
                let done = self.merge_batch(tier, tier_ms, &wanted, cut, until);
                self.shared.ready.notify_one();
                if !done || self.lock().bytes <= mark {
                    return;
                }
                if !cut {
                    break;
                }
            }
        }
    }

    /// Reads `wanted` back, merges what fits `tier_ms`, appends and syncs the merged
    /// records, then swaps them into the index. `false` when the disk failed.
    fn merge_batch(
        &mut self,
        tier: usize,
        tier_ms: i64,
        wanted: &[super::index::Wanted],
        cut: bool,
        until: i64,
    ) -> bool {
        let mut records = Vec::with_capacity(wanted.len());
        for w in wanted {
            // An unreadable record is simply not merged (the reader deals with it).
            if let Ok(frame) = self.files.read(w.segment, w.offset, w.len) {
                if let Some(r) = record::decode_message_frame(&frame).filter(|r| r.seq == w.seq) {
                    records.push(r);
                }
            }
        }
        let candidates: Vec<crate::feed::merge::Candidate<'_>> = records
            .iter()
            .map(|r| crate::feed::merge::Candidate {
                seq: r.seq,
                topic: &r.topic,
                payload: &r.payload,
            })
            .collect();
        // A span still filling is held back only when this scan reached the newest records.
        let plan =
            crate::feed::merge::plan(&candidates, tier_ms, if cut { i64::MAX } else { until });
        let last = wanted.last().map_or(0, |w| w.seq);
        let cursor = plan.held_from.map_or(last, |h| h.saturating_sub(1));
        let queued_at: std::collections::HashMap<u64, i64> =
            records.iter().map(|r| (r.seq, r.queued_at)).collect();
        let result = (|| -> io::Result<Vec<MergedRecord>> {
            let mut out = Vec::with_capacity(plan.merges.len());
            for m in plan.merges {
                let seq = m.seqs[0];
                let record = Record {
                    seq,
                    class: MessageClass::Telemetry,
                    topic: m.topic,
                    payload: m.payload,
                    queued_at: queued_at.get(&seq).copied().unwrap_or_else(now_millis),
                };
                let replaced = m.seqs[1..].to_vec();
                let (segment, offset, len) = self.store.append_merged(&record, &replaced)?;
                out.push((
                    Moved {
                        seq,
                        segment,
                        offset,
                        len,
                    },
                    Arc::new(record),
                    replaced,
                ));
            }
            if !out.is_empty() {
                // The merged records must be durable before the originals are forgotten.
                self.store.sync(self.next_seq - 1)?;
            }
            Ok(out)
        })();
        let merges = match result {
            Ok(m) => m,
            Err(e) => {
                self.lock().merge_done();
                self.fail(e);
                return false;
            }
        };
        let windows: u64 = merges.iter().map(|m| m.2.len() as u64).sum();
        let (freed, unplaced) = {
            let mut state = self.lock();
            let out = state.apply_merges(merges);
            state.merge_from[tier] = state.merge_from[tier].max(cursor);
            state.merge_done();
            out
        };
        for (segment, len) in freed {
            self.store.forget(segment, len);
        }
        for m in unplaced {
            // Its seq went meanwhile (never expected: the candidates were held back).
            self.store.done(DoneKind::Evicted, m.seq, m.segment, m.len);
        }
        if windows > 0 {
            self.shared
                .stats
                .merged
                .fetch_add(windows, Ordering::Relaxed);
            tracing::info!(
                windows,
                tier_s = tier_ms / 1000,
                "store above its merge mark: merged queued windows into coarser ones"
            );
        }
        true
    }

    /// Moves the live records of the oldest segment forward when the store holds much more
    /// than it must, so an old event cannot pin a segment of dead telemetry on disk.
    fn compact(&mut self) {
        if self.error {
            return;
        }
        let limit = self
            .settings
            .max_bytes
            .saturating_add(2 * self.store.segment_bytes());
        let Some(oldest) = self.store.compaction_candidate(limit) else {
            return;
        };
        let records = self.lock().in_segment(oldest);
        let mut damaged = Vec::new();
        let result = (|| -> io::Result<Vec<Moved>> {
            let mut copied = Vec::with_capacity(records.len());
            for &(seq, offset, len) in &records {
                let frame = self.files.read(oldest, offset, len)?;
                if record::decode_message_frame(&frame).is_none_or(|r| r.seq != seq) {
                    damaged.push((seq, len));
                    continue;
                }
                let (segment, offset, len) = self.store.append_frame(&frame, seq)?;
                copied.push(Moved {
                    seq,
                    segment,
                    offset,
                    len,
                });
            }
            // The copies must be durable before the originals go.
            self.store.sync(self.next_seq - 1)?;
            Ok(copied)
        })();
        match result {
            Ok(copied) => {
                let (gone, lost) = {
                    let mut state = self.lock();
                    let lost: Vec<_> = damaged
                        .iter()
                        .filter_map(|&(seq, _)| state.drop_record(seq))
                        .collect();
                    (state.relocate(Some(oldest), &copied), lost)
                };
                // Acknowledged or evicted meanwhile: their done record names the seq, so the
                // copy is dead on disk too; only the count must follow.
                for m in gone {
                    self.store.forget(m.segment, m.len);
                }
                if !lost.is_empty() {
                    tracing::warn!(
                        count = lost.len(),
                        "queued records damaged on disk: dropped"
                    );
                    self.shared
                        .stats
                        .corrupted
                        .fetch_add(lost.len() as u64, Ordering::Relaxed);
                }
                for v in lost {
                    self.store.done(DoneKind::Evicted, v.seq, oldest, v.len);
                }
                self.files.close_all();
                self.store.drop_compacted(oldest);
            }
            Err(e) => self.fail(e),
        }
    }

    /// Copies the store's size into the shared state, for `health`.
    fn publish_status(&self) {
        let (disk_bytes, segments) = (self.store.disk_bytes(), self.store.segment_count());
        let mut state = self.lock();
        state.disk_bytes = disk_bytes;
        state.segments = segments;
    }
}
