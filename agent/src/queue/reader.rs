//! The queue's reader: the thread that reads queued payloads back from the segment files
//! for the uplink, so memory holds an index of the backlog, not the backlog.
//!
//! When the uplink asks for a record whose payload is not at hand, the state notes it
//! (`read_wanted`) and the queue wakes this thread. It takes from the state what to read
//! next ([`super::index::State::wanted`]: the next unsent records, events first, a bounded
//! batch), reads their frames with no lock held, checks them (CRC, `seq`), and puts them in
//! the state's bounded cache if they are still queued where it read them (an
//! acknowledgement, an eviction or a compaction may have happened meanwhile). Then it wakes
//! the uplink.
//!
//! A frame that is damaged where the index says it is (the disk changed under the agent)
//! cannot be sent: the record is dropped, noted as evicted in the store and counted in
//! `corrupted`, so the platform sees its `seq` missing instead of a replay that stops.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::index::Wanted;
use super::record::{self, DoneKind};
use super::segment::SegmentReader;
use super::Shared;

/// How long the reader leaves a failing disk alone.
const RETRY: Duration = Duration::from_millis(200);

/// Most bytes one read of adjacent frames takes.
const SPAN: u64 = 256 * 1024;

/// Reads the frames of `batch`, adjacent ones in one read.
fn read_all(
    files: &mut SegmentReader,
    batch: &[Wanted],
) -> Vec<(Wanted, std::io::Result<Vec<u8>>)> {
    let mut out = Vec::with_capacity(batch.len());
    let mut i = 0;
    while i < batch.len() {
        let first = batch[i];
        let mut j = i + 1;
        let mut end = first.offset + first.len;
        while j < batch.len()
            && batch[j].segment == first.segment
            && batch[j].offset == end
            && end - first.offset + batch[j].len <= SPAN
        {
            end += batch[j].len;
            j += 1;
        }
        match files.read(first.segment, first.offset, end - first.offset) {
            Ok(span) => {
                for w in &batch[i..j] {
                    let at = (w.offset - first.offset) as usize;
                    let frame = span.get(at..at + w.len as usize).map(<[u8]>::to_vec);
                    out.push((*w, frame.ok_or_else(|| std::io::Error::other("short read"))));
                }
            }
            Err(e) => {
                let kind = e.kind();
                for w in &batch[i..j] {
                    out.push((*w, Err(std::io::Error::new(kind, e.to_string()))));
                }
            }
        }
        i = j;
    }
    out
}

/// Runs until the queue closes.
pub(super) fn run(shared: Arc<Shared>, mut files: SegmentReader) {
    loop {
        let batch = {
            let mut state = shared.lock();
            while !state.read_wanted && !state.closing {
                state = shared
                    .reads
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            if state.closing {
                return;
            }
            state.wanted()
        };
        if batch.is_empty() {
            continue;
        }
        let read = read_all(&mut files, &batch);
        let mut failed = false;
        let mut damaged = Vec::new();
        {
            let mut state = shared.lock();
            for (
                Wanted {
                    seq,
                    segment,
                    offset,
                    ..
                },
                bytes,
            ) in read
            {
                if !state.still_at(seq, segment, offset) {
                    continue; // acknowledged, evicted or moved meanwhile
                }
                match bytes.map(|b| record::decode_message_frame(&b)) {
                    Ok(Some(r)) if r.seq == seq => {
                        state.loaded(r, segment, offset);
                    }
                    // Read, yet not itself: lost on disk.
                    Ok(_) => {
                        if let Some(v) = state.drop_record(seq) {
                            if let Some(segment) = v.segment {
                                state.pending_done.push(super::index::Done {
                                    kind: DoneKind::Evicted,
                                    seq,
                                    segment,
                                    len: v.len,
                                });
                            }
                            damaged.push(seq);
                        }
                    }
                    Err(e) => {
                        if !failed {
                            tracing::warn!(seq, segment, error = %e, "cannot read a queued record back; retrying");
                        }
                        failed = true;
                    }
                }
            }
        }
        if !damaged.is_empty() {
            shared
                .stats
                .corrupted
                .fetch_add(damaged.len() as u64, Ordering::Relaxed);
            tracing::warn!(seqs = ?damaged, "queued records damaged on disk: dropped");
        }
        if failed {
            shared.stats.store_errors.fetch_add(1, Ordering::Relaxed);
            files.close_all();
            std::thread::sleep(RETRY);
        }
        shared.ready.notify_one();
    }
}
