//! Unit tests of the queue (its store on a temporary directory, its writer thread).
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::store::FsyncPolicy;
use super::*;
use crate::feed::{now_millis, Event, EventState, Message, Renderer, Severity, Topics};
use crate::queue::segment::FaultSwitch;

/// Pushes `m` rendered for gateway `gw` under root `r`.
trait PushMessage {
    fn put(&self, m: Message) -> Option<u64>;
}

impl PushMessage for Queue {
    fn put(&self, m: Message) -> Option<u64> {
        self.push_blocking(Renderer::new("gw", Topics::new("r", "gw")).render(&m))
    }
}

fn options(dir: &std::path::Path, max: usize) -> StoreOptions {
    StoreOptions {
        fsync: FsyncPolicy::Always,
        max_messages: max,
        ..StoreOptions::new(dir)
    }
}

fn queue(dir: &std::path::Path, max: usize) -> Arc<Queue> {
    Queue::open(options(dir, max)).expect("open")
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

fn capture(dev: &str) -> Message {
    Message::Capture {
        dev: dev.into(),
        part: Box::new(crate::feed::CapturePart {
            ch: "tilt_x".into(),
            u: "deg",
            trigger: crate::feed::Trigger {
                event: "threshold",
                severity: Severity::Major,
                ts: 0,
                seq: Some(1),
            },
            t0: 0.0,
            period_us: 100_000,
            zero: 0.0,
            part: 1,
            parts: 1,
            values: vec![0.5],
        }),
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
    assert_eq!(q.put(data("a")), Some(1));
    assert_eq!(q.put(data("a")), Some(2));
    assert_eq!(q.put(event("a")), Some(3));
    assert_eq!(drain(&q), vec![3, 1, 2]);
    assert_eq!(q.next_unsent(), None);
}

#[test]
fn captures_go_after_events_and_before_telemetry_and_survive_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let q = queue(dir.path(), 100);
        assert_eq!(q.put(data("a")), Some(1));
        assert_eq!(q.put(capture("a")), Some(2));
        assert_eq!(q.put(event("a")), Some(3));
        assert_eq!(q.put(capture("a")), Some(4));
        let sent: Vec<_> = std::iter::from_fn(|| q.next_unsent()).collect();
        assert_eq!(
            sent.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![3, 2, 4, 1]
        );
        assert_eq!(sent[1].class, MessageClass::Capture);
        assert_eq!(sent[1].topic, "r/gw/capture/a");
        // Captures are not paced: they go when telemetry may not.
        q.rewind();
        assert_eq!(q.next_unsent_if(false).map(|r| r.seq), Some(3));
        assert_eq!(q.next_unsent_if(false).map(|r| r.seq), Some(2));
        assert_eq!(q.next_unsent_if(false).map(|r| r.seq), Some(4));
        assert_eq!(q.next_unsent_if(false), None);
    }
    let q = queue(dir.path(), 100);
    assert_eq!(drain(&q), vec![3, 2, 4, 1], "the class survives the disk");
}

#[test]
fn a_full_queue_evicts_captures_after_telemetry_and_before_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = queue(dir.path(), 3);
    q.put(event("a")); // 1
    q.put(capture("a")); // 2
    q.put(data("a")); // 3
    q.put(capture("a")); // 4: evicts the telemetry 3
    assert_eq!(drain(&q), vec![1, 2, 4]);
    q.rewind();
    q.put(event("a")); // 5: evicts the oldest capture 2
    assert_eq!(drain(&q), vec![1, 5, 4]);
    assert_eq!(q.stats().evicted.load(Ordering::Relaxed), 2);
}

#[test]
fn unacked_messages_come_back_after_rewind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = queue(dir.path(), 100);
    for _ in 0..3 {
        q.put(data("a"));
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
    q.put(event("a")); // 1
    q.put(data("a")); // 2
    q.put(data("a")); // 3
    q.put(data("a")); // 4: evicts 2
    q.put(event("a")); // 5: evicts 3
    assert_eq!(drain(&q), vec![1, 5, 4]);
    assert_eq!(q.stats().evicted.load(Ordering::Relaxed), 2);
}

#[test]
fn payloads_carry_their_seq_and_topic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = queue(dir.path(), 100);
    q.put(event("lift-2"));
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
        q.put(data("a"));
    }
    q.put(event("a")); // 6
    q.ack(1);
    q.ack(3);
    q.ack(6);
    drop(q);
    let q = queue(dir.path(), 100);
    assert_eq!(drain(&q), vec![2, 4, 5]);
    assert_eq!(q.put(data("a")), Some(7));
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
    assert_eq!(q.put(data("a")), Some(42));
}

#[test]
fn an_event_is_synced_before_its_push_returns_without_waiting_for_the_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = Queue::open(StoreOptions {
        // The batched sync never comes during the test.
        fsync: FsyncPolicy::Every(Duration::from_secs(3600)),
        ..StoreOptions::new(dir.path())
    })
    .expect("open");
    let syncs = || q.stats().syncs.load(Ordering::Relaxed);
    let before = syncs();
    q.put(data("a"));
    q.put(data("a"));
    assert_eq!(syncs(), before, "telemetry waits for the batched sync");
    // Telemetry is in the kernel when its push returns (a kill -9 keeps it), not yet synced.
    let on_disk = store::load(dir.path()).expect("load");
    assert_eq!(on_disk.live.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
    let started = std::time::Instant::now();
    let seq = q.put(event("lift-1")).expect("queued");
    let took = started.elapsed();
    assert_eq!(
        syncs(),
        before + 1,
        "the event's push returned once the store was synced, one sync for it"
    );
    assert!(took < Duration::from_secs(5), "the push took {took:?}");
    // A fresh open of the store finds it, with everything appended before it.
    let on_disk = store::load(dir.path()).expect("load");
    let found = on_disk.live.get(&seq).expect("the event is in the store");
    assert_eq!(found.record.class, MessageClass::Event);
    assert_eq!(
        on_disk.live.keys().copied().collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    // Durable, so released to the uplink at once (events first), telemetry with it.
    assert_eq!(drain(&q), vec![3, 1, 2]);
    drop(q);
    let q = queue(dir.path(), 100);
    assert_eq!(drain(&q), vec![3, 1, 2]);
}

#[test]
fn batched_sync_releases_records_only_once_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = StoreOptions {
        // Long enough that the background flusher does not run during the test.
        fsync: FsyncPolicy::Every(Duration::from_secs(3600)),
        ..StoreOptions::new(dir.path())
    };
    let q = Queue::open(opts).expect("open");
    q.put(data("a"));
    q.put(data("a"));
    assert_eq!(
        q.next_unsent(),
        None,
        "telemetry does not go out before it is synced"
    );
    q.sync_blocking();
    assert_eq!(drain(&q), vec![1, 2]);
    q.put(data("a"));
    assert_eq!(q.next_unsent(), None);
    // An event is synced at once, and with it everything appended before it.
    q.put(event("a"));
    assert_eq!(drain(&q), vec![4, 3]);
    q.rewind();
    drop(q);
    let q = queue(dir.path(), 100);
    assert_eq!(drain(&q), vec![4, 1, 2, 3], "what went out was durable");
}

#[test]
fn eviction_by_bytes_and_segments_are_deleted_when_acked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = StoreOptions {
        max_bytes: 20 * 1024,
        segment_bytes: 4096,
        ..options(dir.path(), 100_000)
    };
    let q = Queue::open(opts).expect("open");
    q.put(event("first")); // 1: must survive every telemetry eviction
    for _ in 0..2000 {
        q.put(data("a"));
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
    q.sync_blocking();
    assert_eq!(
        q.store_status().segments,
        1,
        "fully acked segments are deleted"
    );
    drop(q);
    let q = queue(dir.path(), 100);
    assert_eq!(drain(&q), Vec::<u64>::new());
    assert_eq!(q.put(data("a")), Some(2002));
}

#[test]
fn a_failing_disk_keeps_messages_in_memory_and_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let faults = FaultSwitch::new();
    let opts = StoreOptions {
        faults: faults.clone(),
        // Every sync retries the disk at once.
        retry_after: Duration::ZERO,
        ..options(dir.path(), 100)
    };
    let q = Queue::open(opts.clone()).expect("open");
    q.put(data("a")); // 1, on disk
    faults.set(true);
    q.put(data("a")); // 2, memory only
    q.put(event("a")); // 3, memory only
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
    q.sync_blocking();
    assert_eq!(q.store_status().error, None);
    q.ack(1);
    drop(q);
    let q = Queue::open(opts).expect("reopen");
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
        q.put(data("a"));
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
    assert_eq!(q.put(data("a")), Some(4));
    drop(q);
    let q = queue(dir.path(), 100);
    assert_eq!(
        q.stats().torn.load(Ordering::Relaxed),
        0,
        "the tail was cut"
    );
}

/// Hands out and acknowledges `n` records, waiting (bounded) for the reader to read back
/// what is not in memory; the seqs in the order they came.
fn drain_acking(q: &Queue, n: usize) -> Vec<u64> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut seqs = Vec::with_capacity(n);
    while seqs.len() < n && std::time::Instant::now() < deadline {
        match q.next_unsent() {
            Some(r) => {
                let v: serde_json::Value = serde_json::from_slice(&r.payload).expect("json");
                assert_eq!(v["seq"], r.seq, "the payload read back is the record's");
                seqs.push(r.seq);
                q.ack(r.seq);
            }
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    seqs
}

fn backlog_options(dir: &std::path::Path) -> StoreOptions {
    StoreOptions {
        fsync: FsyncPolicy::Every(Duration::from_millis(10)),
        max_messages: 1_000_000,
        segment_bytes: 256 * 1024,
        ..StoreOptions::new(dir)
    }
}

#[test]
fn a_backlog_larger_than_memory_is_read_back_from_the_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = Queue::open(backlog_options(dir.path())).expect("open");
    let n = 20_000;
    for _ in 0..n {
        q.put(data("a"));
    }
    q.put(event("late")); // n + 1
    q.sync_blocking();
    let (held, bytes) = q.payloads_in_memory();
    assert!(
        held <= index::CACHE_RECORDS + index::EVENT_CACHE_RECORDS,
        "{held} payloads held in memory"
    );
    assert!(
        bytes <= index::CACHE_BYTES + index::EVENT_CACHE_BYTES,
        "{bytes} bytes"
    );
    // Half, then the connection drops: the unacknowledged rest comes back in order.
    let first = drain_acking(&q, 10_001);
    assert_eq!(first[0], n as u64 + 1, "the event first");
    assert_eq!(first[1..], (1..=10_000).collect::<Vec<u64>>()[..]);
    q.rewind();
    drop(q);
    let q = Queue::open(backlog_options(dir.path())).expect("reopen");
    let rest = drain_acking(&q, n - 10_000);
    assert_eq!(rest, (10_001..=n as u64).collect::<Vec<u64>>());
    assert_eq!(q.depth(now_millis()).messages, 0);
    assert_eq!(q.payloads_in_memory(), (0, 0));
}

#[test]
fn a_record_damaged_on_disk_is_dropped_and_counted() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let q = Queue::open(backlog_options(dir.path())).expect("open");
    for _ in 0..10_000 {
        q.put(data("a"));
    }
    q.sync_blocking();
    // Flip a payload byte of record 9000 (far beyond what memory holds).
    let mut damaged = false;
    for s in segment::list(dir.path()).expect("list") {
        let bytes = std::fs::read(&s.path).expect("read");
        for (offset, len, body) in record::scan(&bytes).frames {
            if matches!(body, record::Body::Message(ref r) if r.seq == 9000) {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&s.path)
                    .expect("open segment");
                let at = offset + len - 3;
                f.write_at(&[bytes[at] ^ 0x20], at as u64).expect("write");
                damaged = true;
            }
        }
    }
    assert!(damaged, "record 9000 found on disk");
    let seqs = drain_acking(&q, 9_999);
    let expected: Vec<u64> = (1..=10_000).filter(|&s| s != 9000).collect();
    assert_eq!(seqs, expected, "all but the damaged one, in order");
    assert_eq!(q.stats().corrupted.load(Ordering::Relaxed), 1);
    assert_eq!(q.depth(now_millis()).messages, 0);
}
