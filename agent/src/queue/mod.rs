//! The queue between the pipeline and the uplink: assigns `seq`, keeps every message on disk
//! until the broker acknowledged it, and decides what goes out next.
//!
//! - The queue stores records rendered by the feed ([`crate::feed::Rendered`]: topic, class,
//!   payload with a slot for the `seq`); it knows no topic rule and no JSON field.
//! - Each message is appended to the store ([`store`], segment files of CRC-framed
//!   [`record`]s) with the next `seq` before [`Queue::push`] returns; the `seq` lives in the
//!   log with its record, so consecutive queued messages have consecutive `seq` and a `seq` is
//!   never reused across restarts, kill -9 or power cuts (per the fsync policy).
//! - All disk I/O runs on the queue's own writer thread ([`writer`]): a push goes through a
//!   bounded hand-off and waits (async) for the writer's answer, so no async worker thread
//!   ever blocks on the disk and no lock is held across a write or a sync. The writer issues
//!   the `seq`, so a push lost in the hand-off by a kill -9 never had one.
//! - A message is handed to the uplink only once it is durable (synced per the policy), so a
//!   `seq` the platform has seen is never lost and reused after a power cut. Events and
//!   replies are synced at once (they go out within milliseconds); telemetry waits for the
//!   batched sync of the `fsync` interval.
//! - Memory holds an index of the queued records, not the records ([`index`]: 8 bytes each,
//!   plus a payload cache bounded at 1 MiB): the queue's reader thread ([`reader`]) reads the
//!   payloads back from the segment files for the uplink, a bounded batch ahead.
//! - Events go out before captures, captures before queued telemetry; within a class,
//!   oldest first.
//! - A message leaves the queue only when [`Queue::ack`] says the broker has it (an ack
//!   record is written; a lost ack only re-sends the message); after a disconnect
//!   [`Queue::rewind`] makes every unacknowledged message due again.
//! - The queue degrades by aggregation before eviction: above `merge_above` of `max_bytes`
//!   the writer merges the oldest queued telemetry windows of each device into coarser ones
//!   ([`crate::feed::merge`]: 10 s -> 60 s -> 10 min, exact statistics, the first window's
//!   `seq` and the seqs it stands for); a merged record is one frame that names the records
//!   it replaces, so a crash mid-merge neither loses nor doubles a `seq`.
//! - The queue is bounded (`max_bytes`, `max_messages`): when full, the oldest telemetry is
//!   evicted (and counted); then the oldest captures; events and replies only when neither
//!   is left.
//! - When the disk fails (full, read-only, broken), the queue keeps working from memory,
//!   reports the error in `health`, retries every second, and writes the memory-only
//!   messages to disk once it can.
//!
//! Pushing never waits for the network: a slow or absent broker fills this queue, never the
//! pipeline or a serial reader.

pub mod config;
mod index;
mod reader;
pub mod record;
pub mod resend;
pub mod run_marker;
pub mod segment;
pub mod seq;
pub mod store;
mod writer;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot, Notify};

use self::index::State;
use self::store::{Store, StoreOptions};
use self::writer::{Request, Writer};
use crate::feed::{MessageClass, Rendered, UnixMillis};

/// The answer to a [`Queue::push_many`] of `n` records: their seqs, or `None` for each when
/// the writer never answered (it crashed or the queue closed).
fn many_seqs(n: usize, seqs: Option<Vec<u64>>) -> Vec<Option<u64>> {
    match seqs {
        Some(seqs) if seqs.len() == n => seqs.into_iter().map(Some).collect(),
        _ => vec![None; n],
    }
}

/// Pushes (one [`Queue::push`] or [`Queue::push_many`] each) the writer may have waiting: a
/// full hand-off makes pushers wait, it never grows.
pub const HANDOFF: usize = 1024;

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
    /// Queued telemetry windows merged away into coarser ones (each merge of k windows
    /// counts k - 1: the windows that stopped being messages of their own).
    pub merged: AtomicU64,
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
    /// Syncs (`fdatasync`) of the store that succeeded: the batched ones, and one per batch of
    /// pushes holding an event or reply (or every batch with `fsync = "always"`).
    pub syncs: AtomicU64,
    /// Acknowledged records handed to the uplink again by `resend`.
    pub resent: AtomicU64,
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

/// What the queue's callers and its writer share: memory only.
#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the uplink: something was released.
    ready: Notify,
    /// Wakes the writer: acknowledgements are piling up.
    wake: Notify,
    /// Wakes the reader: the uplink wants payloads that are not at hand.
    reads: Condvar,
    stats: QueueStats,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than stopping the agent would; keep going with the data.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The shared queue (always behind an `Arc`).
#[derive(Debug)]
pub struct Queue {
    shared: Arc<Shared>,
    fsync: store::FsyncPolicy,
    /// The hand-off to the writer (`None` once dropping).
    requests: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    reader: Option<JoinHandle<()>>,
}

impl Queue {
    /// Opens the store in `options.dir`: every unacknowledged record found there is due
    /// again, and numbering continues after the highest `seq` ever issued. Starts the writer.
    pub fn open(options: StoreOptions) -> io::Result<Arc<Queue>> {
        let (store, loaded) = Store::open(&options)?;
        let mut state = State::default();
        // Only the index and the first payloads (while the cache has room) stay in memory.
        for (seq, l) in loaded.live {
            let (class, queued_at) = (l.record.class, l.record.queued_at);
            let at = Some((l.segment, l.offset));
            state.insert(seq, class, queued_at, at, l.len, Some(Arc::new(l.record)));
        }
        state.last_seq = loaded.next_seq - 1;
        state.merge_floor = options.merge_floor;
        state.released_up_to = loaded.next_seq - 1;
        state.disk_bytes = store.disk_bytes();
        state.segments = store.segment_count();
        // Loading held every record for a moment: give that memory back.
        trim_memory();
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
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            ready: Notify::new(),
            wake: Notify::new(),
            reads: Condvar::new(),
            stats,
        });
        let settings = writer::Settings {
            fsync: options.fsync,
            max_messages: options.max_messages.max(1),
            max_bytes: options.max_bytes,
            merge_above: options.merge_above,
            retry_after: options.retry_after,
        };
        let (tx, rx) = mpsc::channel(HANDOFF);
        let files = segment::SegmentReader::new(&options.dir);
        let writer = Writer::new(shared.clone(), store, settings, loaded.next_seq);
        let handle = std::thread::Builder::new()
            .name("queue-writer".into())
            .spawn(move || writer.run(rx))?;
        let for_reader = shared.clone();
        let reader = std::thread::Builder::new()
            .name("queue-reader".into())
            .spawn(move || reader::run(for_reader, files));
        let mut queue = Queue {
            shared,
            fsync: options.fsync,
            requests: Some(tx),
            writer: Some(handle),
            reader: None,
        };
        // On failure, dropping the queue stops the writer.
        queue.reader = Some(reader?);
        Ok(Arc::new(queue))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }

    /// The counters.
    pub fn stats(&self) -> &QueueStats {
        &self.shared.stats
    }

    /// Queues a record; returns its `seq` once the writer has appended it (and synced it,
    /// for `fsync = "always"` and for events and replies). Waits (async) while the hand-off
    /// is full. A failing disk leaves the record in memory and raises a health error instead;
    /// `None` only when the writer is gone (a played crash, or the queue is closing).
    pub async fn push(&self, rendered: Rendered) -> Option<u64> {
        self.push_many(vec![rendered]).await.pop().flatten()
    }

    /// Queues `rendered` in order with one hand-off to the writer (one append, one sync if
    /// an event is among them) and answers each `seq` in the same order; `None` for every
    /// one if the queue is closed or its writer crashed. As durable as [`Queue::push`] one
    /// by one, without a thread round trip per message: the pipeline hands over what one
    /// step produced (a window close of every panel at once) this way.
    pub async fn push_many(&self, rendered: Vec<Rendered>) -> Vec<Option<u64>> {
        let n = rendered.len();
        let (answer, seqs) = oneshot::channel();
        let sent = match self.requests.as_ref() {
            Some(requests) if n > 0 => requests
                .send(Request::PushMany { rendered, answer })
                .await
                .is_ok(),
            _ => false,
        };
        if !sent {
            return vec![None; n];
        }
        many_seqs(n, seqs.await.ok())
    }

    /// [`Queue::push_many`] for plain threads (tests, benches, tools); never call it from
    /// async code.
    pub fn push_many_blocking(&self, rendered: Vec<Rendered>) -> Vec<Option<u64>> {
        let n = rendered.len();
        let (answer, seqs) = oneshot::channel();
        let sent = match self.requests.as_ref() {
            Some(requests) if n > 0 => requests
                .blocking_send(Request::PushMany { rendered, answer })
                .is_ok(),
            _ => false,
        };
        if !sent {
            return vec![None; n];
        }
        many_seqs(n, seqs.blocking_recv().ok())
    }

    /// [`Queue::push`] for plain threads (tests, benches, tools); never call it from async
    /// code (it blocks, and panics inside a runtime).
    pub fn push_blocking(&self, rendered: Rendered) -> Option<u64> {
        self.push_many_blocking(vec![rendered]).pop().flatten()
    }

    /// The next message to send: events first, then captures, then telemetry, oldest first.
    pub fn next_unsent(&self) -> Option<Arc<Record>> {
        self.next_unsent_if(true)
    }

    /// Like [`Queue::next_unsent`], but telemetry only when `telemetry` is true (the uplink
    /// paces the replay of a telemetry backlog; events always go).
    ///
    /// `None` also while the next record's payload is being read back from disk (a
    /// backlog larger than the cache): [`Queue::wait_ready`] wakes when it is at hand.
    ///
    /// Records a `resend` read back come last, as telemetry (paced): only when nothing
    /// queued is due.
    pub fn next_unsent_if(&self, telemetry: bool) -> Option<Arc<Record>> {
        let (record, read, resent) = {
            let mut state = self.lock();
            let mut record = state.next_unsent(telemetry);
            let mut resent = false;
            if record.is_none() && telemetry && !state.read_wanted {
                record = state.pop_resend();
                resent = record.is_some();
            }
            (record, state.read_wanted, resent)
        };
        if read {
            self.shared.reads.notify_one();
        }
        if resent {
            self.shared.stats.resent.fetch_add(1, Ordering::Relaxed);
        }
        record
    }

    /// Is telemetry waiting to be sent (released, not yet handed out), or a resend?
    pub fn has_unsent_telemetry(&self) -> bool {
        let mut state = self.lock();
        state.has_unsent_telemetry() || state.resend_waiting()
    }

    /// `resend`: the acknowledged records of `from..=to` the store still keeps are read
    /// back (on a blocking thread) and queued to go out again, marked `"replay": true`,
    /// after everything queued and at the replay pace; the report says what became of
    /// each `seq` of the range (see [`resend`]).
    pub async fn resend(&self, from: u64, to: u64) -> Result<resend::Report, ResendError> {
        resend::check_range(from, to)?;
        let (answer, segments) = oneshot::channel();
        let requests = self.requests.as_ref().ok_or(ResendError::Closing)?;
        requests
            .send(Request::Segments { from, to, answer })
            .await
            .map_err(|_| ResendError::Closing)?;
        let segments = segments.await.map_err(|_| ResendError::Closing)?;
        let shared = self.shared.clone();
        let report = tokio::task::spawn_blocking(move || read_back(&shared, &segments, from, to))
            .await
            .map_err(|_| ResendError::Closing)?;
        self.shared.ready.notify_one();
        Ok(report)
    }

    /// Payloads held in memory (cached or memory-only) and the cache's bytes.
    pub fn payloads_in_memory(&self) -> (usize, u64) {
        self.lock().cached()
    }

    /// Waits until something may have been released.
    pub async fn wait_ready(&self) {
        self.shared.ready.notified().await;
    }

    /// The broker has message `seq`: forget it (the writer writes the ack record).
    pub fn ack(&self, seq: u64) {
        let mut state = self.lock();
        if state.crashed || !state.ack(seq) {
            return;
        }
        let many = state.pending_done.len() >= writer::DONE_BATCH;
        drop(state);
        self.shared.stats.acked.fetch_add(1, Ordering::Relaxed);
        if many {
            self.shared.wake.notify_one();
        }
    }

    /// `record` could not be handed to the network after all: it is due again next (a
    /// resent record goes back to the front of the resend lane).
    pub fn unsend(&self, record: &Record) {
        let mut state = self.lock();
        if state.is_live(record.seq) {
            state.unsend(record);
        } else {
            state.push_resend(Arc::new(record.clone()), true);
        }
    }

    /// The connection dropped: every unacknowledged message is due again.
    pub fn rewind(&self) {
        self.lock().rewind();
    }

    /// Depth, bytes and oldest age.
    pub fn depth(&self, now: UnixMillis) -> QueueDepth {
        let state = self.lock();
        QueueDepth {
            messages: state.live(),
            bytes: state.bytes as usize,
            oldest_age_ms: state.oldest_queued_at().map(|t| now - t),
        }
    }

    /// The disk store's state.
    pub fn store_status(&self) -> StoreStatus {
        let state = self.lock();
        StoreStatus {
            disk_bytes: state.disk_bytes,
            segments: state.segments,
            fsync: self.fsync.to_string(),
            error: state.error.clone(),
        }
    }

    /// The last `seq` issued.
    pub fn last_seq(&self) -> u64 {
        self.lock().last_seq
    }

    /// Syncs now and waits for it (the writer does this per the policy; a clean stop calls
    /// it).
    pub async fn sync(&self) {
        let (answer, done) = oneshot::channel();
        if let Some(requests) = &self.requests {
            if requests.send(Request::Sync { answer }).await.is_ok() {
                let _ = done.await;
            }
        }
    }

    /// [`Queue::sync`] for plain threads (never from async code).
    pub fn sync_blocking(&self) {
        let (answer, done) = oneshot::channel();
        if let Some(requests) = &self.requests {
            if requests.blocking_send(Request::Sync { answer }).is_ok() {
                let _ = done.blocking_recv();
            }
        }
    }

    /// Plays a crash (tests): what is not yet written is forgotten and nothing is synced or
    /// written any more, as if the process died here. Records already handed to the kernel
    /// stay, as they do after a kill -9.
    #[doc(hidden)]
    pub fn crash(&self) {
        let mut state = self.lock();
        state.crashed = true;
        state.pending_done.clear();
    }
}

impl Drop for Queue {
    /// Closes the hand-off and waits for the writer to write and sync what it has.
    fn drop(&mut self) {
        self.requests = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
        self.lock().closing = true;
        self.shared.reads.notify_all();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// Why a `resend` was not carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResendError {
    /// The range was refused.
    #[error(transparent)]
    Range(#[from] resend::RangeError),
    /// The queue is closing.
    #[error("resend: the queue is closing")]
    Closing,
}

/// Reads the records of `from..=to` back from `segments` (oldest first; the first copy of
/// a `seq` counts), puts those no longer queued in the resend lane while it has room, and
/// sorts every `seq` of the range into the report. Blocking: file I/O.
fn read_back(
    shared: &Shared,
    segments: &[store::SegmentSummary],
    from: u64,
    to: u64,
) -> resend::Report {
    let mut found = std::collections::BTreeSet::new();
    let mut taken = std::collections::BTreeSet::new();
    for segment in segments {
        let mut each = |r: Record| {
            if !found.insert(r.seq) {
                return;
            }
            let seq = r.seq;
            let record = Arc::new(Record {
                payload: crate::feed::mark_replay(&r.payload),
                // Sent as telemetry is: paced, after everything queued.
                class: crate::feed::MessageClass::Telemetry,
                ..r
            });
            let mut state = shared.lock();
            if !state.is_live(seq) && state.push_resend(record, false) {
                taken.insert(seq);
            }
        };
        if let Err(e) = resend::scan_segment(segment, from, to, &mut each) {
            tracing::warn!(path = %segment.path.display(), error = %e, "resend: cannot read a kept segment; its records count as not held");
        }
    }
    let found: Vec<u64> = found.into_iter().collect();
    let state = shared.lock();
    resend::sort_out(
        from,
        to,
        |s| state.is_live(s),
        &found,
        |s| taken.contains(&s),
    )
}

/// Gives the allocator's free memory back to the system where the allocator keeps it
/// (glibc); elsewhere (musl) freed memory goes back on its own.
pub(crate) fn trim_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests;
