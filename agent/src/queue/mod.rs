//! The queue between the pipeline and the uplink: assigns `seq`, holds every message until
//! the broker acknowledged it, and decides what goes out next.
//!
//! - Each message gets the next persistent `seq` ([`seq::SeqCounter`]) when it is pushed, so
//!   consecutive queued messages have consecutive `seq`.
//! - Events go out before queued telemetry; within a class, oldest first.
//! - A message leaves the queue only when [`Queue::ack`] says the broker has it; after a
//!   disconnect [`Queue::rewind`] makes every unacknowledged message due again.
//! - The queue is bounded: when full, the oldest telemetry is evicted (and counted); events
//!   are evicted only when no telemetry is left.
//!
//! Pushing never waits for the network: a slow or absent broker fills this queue, never the
//! pipeline or a serial reader.

pub mod seq;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use self::seq::SeqCounter;
use crate::feed::{now_millis, Message, MessageClass, Topics, UnixMillis};

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
    /// Messages dropped because no `seq` could be made durable (store unwritable).
    pub seq_errors: AtomicU64,
}

/// A snapshot for `health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueDepth {
    /// Messages waiting (sent or not) for an acknowledgement.
    pub messages: usize,
    /// Their payload bytes.
    pub bytes: usize,
    /// Age of the oldest, ms.
    pub oldest_age_ms: Option<i64>,
}

#[derive(Debug, Default)]
struct Lane {
    records: BTreeMap<u64, Arc<Record>>,
    /// Every record with seq <= this has been handed to the uplink in this session.
    sent_up_to: u64,
}

impl Lane {
    fn next_unsent(&mut self) -> Option<Arc<Record>> {
        let (&seq, record) = self.records.range(self.sent_up_to + 1..).next()?;
        self.sent_up_to = seq;
        Some(record.clone())
    }
}

#[derive(Debug)]
struct Inner {
    seq: SeqCounter,
    events: Lane,
    telemetry: Lane,
    bytes: usize,
    gw: String,
    topics: Topics,
    max_messages: usize,
}

/// The shared queue (cheap to share behind an `Arc`).
#[derive(Debug)]
pub struct Queue {
    inner: Mutex<Inner>,
    ready: Notify,
    stats: QueueStats,
}

impl Queue {
    /// A queue for gateway `gw`, numbering messages with `seq`.
    pub fn new(gw: &str, topics: Topics, seq: SeqCounter, max_messages: usize) -> Queue {
        Queue {
            inner: Mutex::new(Inner {
                seq,
                events: Lane::default(),
                telemetry: Lane::default(),
                bytes: 0,
                gw: gw.to_owned(),
                topics,
                max_messages,
            }),
            ready: Notify::new(),
            stats: QueueStats::default(),
        }
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

    /// Queues a message; returns its `seq`, or `None` if no `seq` could be persisted.
    pub fn push(&self, message: Message) -> Option<u64> {
        let mut inner = self.lock();
        let seq = match inner.seq.issue() {
            Ok(seq) => seq,
            Err(e) => {
                self.stats.seq_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, path = %inner.seq.path().display(), "cannot persist seq; message dropped");
                return None;
            }
        };
        let class = message.class();
        let record = Record {
            seq,
            class,
            topic: message.topic(&inner.topics),
            payload: message.render(&inner.gw, seq),
            queued_at: now_millis(),
        };
        inner.bytes += record.payload.len();
        let lane = match class {
            MessageClass::Event => &mut inner.events,
            MessageClass::Telemetry => &mut inner.telemetry,
        };
        lane.records.insert(seq, Arc::new(record));
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        while inner.events.records.len() + inner.telemetry.records.len() > inner.max_messages {
            let victim = inner
                .telemetry
                .records
                .pop_first()
                .or_else(|| inner.events.records.pop_first());
            match victim {
                Some((seq, r)) => {
                    inner.bytes -= r.payload.len();
                    self.stats.evicted.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(seq, class = ?r.class, "queue full: evicted the oldest message");
                }
                None => break,
            }
        }
        drop(inner);
        self.ready.notify_one();
        Some(seq)
    }

    /// The next message to send: events first, then telemetry, oldest first.
    pub fn next_unsent(&self) -> Option<Arc<Record>> {
        let mut inner = self.lock();
        inner
            .events
            .next_unsent()
            .or_else(|| inner.telemetry.next_unsent())
    }

    /// Waits until something may have been pushed.
    pub async fn wait_ready(&self) {
        self.ready.notified().await;
    }

    /// The broker has message `seq`: forget it.
    pub fn ack(&self, seq: u64) {
        let mut inner = self.lock();
        let removed = inner
            .events
            .records
            .remove(&seq)
            .or_else(|| inner.telemetry.records.remove(&seq));
        if let Some(r) = removed {
            inner.bytes -= r.payload.len();
            self.stats.acked.fetch_add(1, Ordering::Relaxed);
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
        .map(|(_, r)| r.queued_at)
        .min();
        QueueDepth {
            messages: inner.events.records.len() + inner.telemetry.records.len(),
            bytes: inner.bytes,
            oldest_age_ms: oldest.map(|t| now - t),
        }
    }

    /// The last `seq` issued.
    pub fn last_seq(&self) -> u64 {
        self.lock().seq.last()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::{Event, EventState, Severity};

    fn queue(dir: &std::path::Path, max: usize) -> Queue {
        Queue::new(
            "gw",
            Topics::new("r", "gw"),
            SeqCounter::open(dir).expect("seq"),
            max,
        )
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

    #[test]
    fn events_go_first_and_seq_is_consecutive() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = queue(dir.path(), 100);
        assert_eq!(q.push(data("a")), Some(1));
        assert_eq!(q.push(data("a")), Some(2));
        assert_eq!(q.push(event("a")), Some(3));
        let order: Vec<u64> = std::iter::from_fn(|| q.next_unsent())
            .map(|r| r.seq)
            .collect();
        assert_eq!(order, vec![3, 1, 2]);
        assert_eq!(q.next_unsent(), None);
    }

    #[test]
    fn unacked_messages_come_back_after_rewind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = queue(dir.path(), 100);
        for _ in 0..3 {
            q.push(data("a"));
        }
        let first: Vec<u64> = std::iter::from_fn(|| q.next_unsent())
            .map(|r| r.seq)
            .collect();
        assert_eq!(first, vec![1, 2, 3]);
        q.ack(2);
        q.rewind();
        let again: Vec<u64> = std::iter::from_fn(|| q.next_unsent())
            .map(|r| r.seq)
            .collect();
        assert_eq!(again, vec![1, 3]);
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
        let left: Vec<u64> = std::iter::from_fn(|| q.next_unsent())
            .map(|r| r.seq)
            .collect();
        assert_eq!(left, vec![1, 5, 4]);
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
}
