//! Unit tests of the queue (its store on a temporary directory, its writer thread).
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::store::{self, FsyncPolicy, Store};
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

fn resend(q: &Queue, from: u64, to: u64) -> resend::Report {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(q.resend(from, to))
        .expect("resend")
}

fn keeping(dir: &std::path::Path, keep_bytes: u64) -> StoreOptions {
    StoreOptions {
        segment_bytes: 4096,
        keep_acked: Duration::from_secs(3600),
        keep_acked_bytes: keep_bytes,
        ..options(dir, 100_000)
    }
}

#[test]
fn acknowledged_records_are_kept_and_resent_marked_replay_after_everything_queued() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = Queue::open(keeping(dir.path(), 1 << 20)).expect("open");
    for _ in 0..200 {
        q.put(data("a"));
    }
    let mut first: std::collections::BTreeMap<u64, Vec<u8>> = Default::default();
    while let Some(r) = q.next_unsent() {
        first.insert(r.seq, r.payload.clone());
        q.ack(r.seq);
    }
    q.sync_blocking();
    assert_eq!(first.len(), 200);
    assert!(
        q.store_status().segments > 3,
        "acknowledged segments are kept: {:?}",
        q.store_status()
    );
    // 201..=203 still queued, unsent.
    for _ in 0..3 {
        q.put(data("b"));
    }
    let r = resend(&q, 150, 260);
    assert_eq!(r.resent, vec![[150, 200]]);
    assert_eq!(r.pending, vec![[201, 203]]);
    assert_eq!(r.not_held, vec![[204, 260]]);
    assert!(r.deferred.is_empty());
    // The queued ones first, then the resent ones, marked, otherwise identical.
    let out: Vec<Arc<Record>> = std::iter::from_fn(|| q.next_unsent()).collect();
    let seqs: Vec<u64> = out.iter().map(|r| r.seq).collect();
    let expected: Vec<u64> = (201..=203).chain(150..=200).collect();
    assert_eq!(seqs, expected);
    for r in &out[3..] {
        let again = crate::feed::mark_replay(&first[&r.seq]);
        assert_eq!(r.payload, again, "seq {}", r.seq);
        assert!(r.payload.ends_with(b",\"replay\":true}"));
    }
    assert_eq!(q.stats().resent.load(Ordering::Relaxed), 51);
    // An ack of a resent record changes nothing queued.
    q.ack(150);
    assert_eq!(q.depth(now_millis()).messages, 3);
    // Kept across a restart: the summaries are rebuilt from the files.
    drop(q);
    let q = Queue::open(keeping(dir.path(), 1 << 20)).expect("reopen");
    let r = resend(&q, 1, 10);
    assert_eq!(r.resent, vec![[1, 10]]);
    // Still queued after the reopen (never acknowledged).
    assert_eq!(resend(&q, 201, 203).pending, vec![[201, 203]]);
}

#[test]
fn kept_acknowledged_bytes_are_bounded_and_the_oldest_go_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = Queue::open(keeping(dir.path(), 8 * 1024)).expect("open");
    for _ in 0..400 {
        q.put(data("a"));
    }
    while let Some(r) = q.next_unsent() {
        q.ack(r.seq);
    }
    q.sync_blocking();
    let status = q.store_status();
    // At most keep_acked_bytes of dead segments, plus the open one.
    assert!(
        status.disk_bytes <= 8 * 1024 + 4096 + 1024,
        "kept bytes bounded: {status:?}"
    );
    let r = resend(&q, 1, 400);
    assert_eq!(r.not_held.first().map(|x| x[0]), Some(1), "{r:?}");
    let [a, b] = *r.resent.last().expect("the newest are kept");
    assert_eq!((b, r.resent.len()), (400, 1), "{r:?}");
    assert!(a > 300, "only the newest few KiB are kept: {r:?}");
}

#[test]
fn with_keep_acked_zero_acknowledged_segments_go_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = StoreOptions {
        segment_bytes: 4096,
        ..options(dir.path(), 100_000)
    };
    let q = Queue::open(opts).expect("open");
    for _ in 0..400 {
        q.put(data("a"));
    }
    while let Some(r) = q.next_unsent() {
        q.ack(r.seq);
    }
    q.sync_blocking();
    assert_eq!(q.store_status().segments, 1);
    let r = resend(&q, 1, 300);
    assert_eq!(r.not_held, vec![[1, 300]], "{r:?}");
}

#[test]
fn the_resend_lane_is_bounded_and_reports_the_rest_deferred() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = StoreOptions {
        segment_bytes: 1 << 20,
        ..keeping(dir.path(), 64 << 20)
    };
    let q = Queue::open(opts).expect("open");
    let n = 9000;
    for _ in 0..n {
        q.put(data("a"));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut acked = 0;
    while acked < n && std::time::Instant::now() < deadline {
        match q.next_unsent() {
            Some(r) => {
                q.ack(r.seq);
                acked += 1;
            }
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    q.sync_blocking();
    let r = resend(&q, 1, n as u64);
    let held = resend::count(&r.resent);
    assert!(held > 100 && held < n as u64, "{r:?}");
    assert_eq!(r.deferred, vec![[held + 1, n as u64]], "{r:?}");
    // Nothing more fits until the lane drained.
    assert_eq!(resend(&q, 1, 10).deferred, vec![[1, 10]]);
    let mut out = 0;
    while q.next_unsent().is_some() {
        out += 1;
    }
    assert_eq!(out, held);
    assert_eq!(resend(&q, 1, 10).resent, vec![[1, 10]]);
}

/// A 10 s window of `dev` starting `i` windows after a whole 10 min boundary long past, one
/// channel whose samples are `samples`.
fn window_of(dev: &str, i: i64, samples: &[f32]) -> Message {
    const T0: i64 = 1_764_000_000_000;
    let mut w = crate::pipeline::window::RunningStats::default();
    w.extend(samples);
    let mut ch = std::collections::BTreeMap::new();
    ch.insert("tilt_x".to_owned(), w.to_window("deg", 100));
    Message::Data {
        dev: dev.into(),
        start: T0 + i * 10_000,
        end: T0 + (i + 1) * 10_000,
        ch,
    }
}

/// Every window drained from `q` (acking each): its own seq, what it covers, its JSON.
fn drain_windows(q: &Queue) -> Vec<(u64, Vec<u64>, serde_json::Value)> {
    let mut out = Vec::new();
    while let Some(r) = q.next_unsent() {
        q.ack(r.seq);
        let v: serde_json::Value = serde_json::from_slice(&r.payload).expect("json");
        let covers = v["merged_seqs"].as_array().map_or(vec![r.seq], |a| {
            a.iter().filter_map(serde_json::Value::as_u64).collect()
        });
        out.push((r.seq, covers, v));
    }
    out
}

#[test]
fn windows_above_the_mark_merge_before_anything_is_evicted_and_the_merge_survives_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = StoreOptions {
        max_bytes: 64 << 10,
        ..options(dir.path(), 100_000)
    };
    let samples = |dev: usize, i: i64| -> Vec<f32> {
        (0..5)
            .map(|k| (dev as f32) * 10.0 + (i as f32) * 0.1 + k as f32 * 0.01)
            .collect()
    };
    let mut sent = Vec::new();
    let mut events = Vec::new();
    {
        let q = Queue::open(opts.clone()).expect("open");
        for i in 0..400 {
            for dev in 0..2 {
                let seq = q
                    .put(window_of(&format!("n{dev}"), i, &samples(dev, i)))
                    .expect("seq");
                sent.push((seq, dev, i));
            }
            if i % 50 == 0 {
                events.push(q.put(event("n0")).expect("seq"));
            }
        }
        let s = q.stats();
        assert_eq!(
            s.evicted.load(Ordering::Relaxed),
            0,
            "merged instead of evicting"
        );
        assert!(s.merged.load(Ordering::Relaxed) > 100, "{:?}", s.merged);
        assert!(q.depth(now_millis()).bytes <= 64 << 10);
        q.sync_blocking();
    }
    // Reopened (the index rebuilt from the segments): the same records, each seq once.
    let q = Queue::open(opts).expect("reopen");
    let got = drain_windows(&q);
    let mut covered: Vec<u64> = got
        .iter()
        .filter(|(_, _, v)| v.get("ch").is_some())
        .flat_map(|(_, c, _)| c.clone())
        .collect();
    covered.sort_unstable();
    let mut want: Vec<u64> = sent.iter().map(|s| s.0).collect();
    want.sort_unstable();
    assert_eq!(covered, want, "every window's seq exactly once");
    let got_events: Vec<u64> = got
        .iter()
        .filter(|(_, _, v)| v.get("event").is_some())
        .map(|g| g.0)
        .collect();
    assert_eq!(got_events, events, "events are never merged");
    let merged: Vec<_> = got.iter().filter(|g| g.2.get("merged").is_some()).collect();
    assert!(!merged.is_empty());
    // Each merged window's statistics are those of all its windows' samples.
    for (seq, covers, v) in merged {
        assert_eq!(covers[0], *seq);
        assert_eq!(v["merged"], serde_json::json!(covers.len()));
        let mut all = Vec::new();
        let mut devs = std::collections::BTreeSet::new();
        for c in covers {
            let &(_, dev, i) = sent.iter().find(|s| s.0 == *c).expect("a sent seq");
            devs.insert(dev);
            all.extend(samples(dev, i));
        }
        assert_eq!(devs.len(), 1, "one device per merged window");
        let x = &v["ch"]["tilt_x"];
        let n = all.len() as f64;
        let mean = all.iter().map(|&s| f64::from(s)).sum::<f64>() / n;
        let std = (all
            .iter()
            .map(|&s| (f64::from(s) - mean).powi(2))
            .sum::<f64>()
            / n)
            .sqrt();
        assert_eq!(x["n"].as_u64(), Some(all.len() as u64));
        assert_eq!(x["expected"].as_u64(), Some(100 * covers.len() as u64));
        let close = |a: &serde_json::Value, b: f64, tol: f64| {
            (a.as_f64().expect("number") - b).abs() <= tol
        };
        assert!(
            close(&x["mean"], mean, 1e-4 * (1.0 + mean.abs())),
            "{x} vs {mean}"
        );
        assert!(close(&x["std"], std, 1e-3 * (1.0 + std)), "{x} vs {std}");
        let min = all.iter().copied().fold(f32::INFINITY, f32::min);
        let max = all.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let f32_of = |v: &serde_json::Value| v.as_f64().map(|v| v as f32);
        assert_eq!(
            (f32_of(&x["min"]), f32_of(&x["max"])),
            (Some(min), Some(max))
        );
        assert_eq!(f32_of(&x["last"]), all.last().copied());
    }
}

#[test]
fn with_merging_off_the_same_backlog_is_evicted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = Queue::open(StoreOptions {
        max_bytes: 64 << 10,
        merge_above: None,
        ..options(dir.path(), 100_000)
    })
    .expect("open");
    for i in 0..400 {
        for dev in 0..2 {
            q.put(window_of(&format!("n{dev}"), i, &[1.0, 2.0]))
                .expect("seq");
        }
    }
    assert!(q.stats().evicted.load(Ordering::Relaxed) > 0);
    assert_eq!(q.stats().merged.load(Ordering::Relaxed), 0);
}

#[test]
fn a_crash_mid_merge_neither_loses_nor_doubles_a_seq() {
    use super::record::{encode_merged, encode_message};
    let dir = tempfile::tempdir().expect("tempdir");
    let rec = |seq: u64, payload: &str| Record {
        seq,
        class: MessageClass::Telemetry,
        topic: "r/gw/data/n1".into(),
        payload: payload.as_bytes().to_vec(),
        queued_at: 1,
    };
    let (mut store, _) = Store::open(&options(dir.path(), 100)).expect("open");
    for seq in 1..=4 {
        store.append(&rec(seq, "orig")).expect("append");
    }
    store.sync(4).expect("sync");
    drop(store);
    let live = |dir: &std::path::Path| -> Vec<(u64, String)> {
        store::load(dir)
            .expect("load")
            .live
            .into_iter()
            .map(|(s, l)| (s, String::from_utf8_lossy(&l.record.payload).into_owned()))
            .collect()
    };
    // The merged frame of 1..=3 (as seq 1), torn by a kill mid-write: the originals stay.
    let mut frame = Vec::new();
    encode_merged(&rec(1, "merged"), &[2, 3], &mut frame);
    let seg = segment::list(dir.path())
        .expect("list")
        .pop()
        .expect("a segment")
        .path;
    let whole = std::fs::read(&seg).expect("read");
    std::fs::write(&seg, [whole.as_slice(), &frame[..frame.len() - 3]].concat()).expect("tear");
    assert_eq!(
        live(dir.path()),
        vec![
            (1, "orig".into()),
            (2, "orig".into()),
            (3, "orig".into()),
            (4, "orig".into())
        ]
    );
    // Intact (the kill came after the write, before the index or anything else knew):
    // the merged record and only it stands for 1..=3.
    std::fs::write(&seg, [whole.as_slice(), &frame].concat()).expect("whole");
    assert_eq!(
        live(dir.path()),
        vec![(1, "merged".into()), (4, "orig".into())]
    );
    assert_eq!(store::load(dir.path()).expect("load").merged, 2);
    // A later plain copy of seq 1 (compaction of the merged record) still replaces 2 and 3
    // only through the merged frame, which stays until its segment goes.
    let mut more = Vec::new();
    encode_message(&rec(5, "new"), &mut more);
    std::fs::write(&seg, [whole.as_slice(), &frame, &more].concat()).expect("more");
    let q = Queue::open(options(dir.path(), 100)).expect("reopen");
    assert_eq!(drain(&q), vec![1, 4, 5]);
    assert_eq!(q.last_seq(), 5);
}

#[test]
fn push_many_numbers_a_run_in_order_with_one_sync_for_its_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = Queue::open(StoreOptions {
        // The batched sync never comes during the test.
        fsync: FsyncPolicy::Every(Duration::from_secs(3600)),
        ..StoreOptions::new(dir.path())
    })
    .expect("open");
    let renderer = Renderer::new("gw", Topics::new("r", "gw"));
    let syncs = || q.stats().syncs.load(Ordering::Relaxed);
    assert_eq!(q.put(data("a")), Some(1));
    let before = syncs();
    let run: Vec<_> = [data("a"), event("b"), data("c"), data("d")]
        .iter()
        .map(|m| renderer.render(m))
        .collect();
    assert_eq!(
        q.push_many_blocking(run),
        vec![Some(2), Some(3), Some(4), Some(5)],
        "consecutive seqs in the run's order"
    );
    assert_eq!(syncs(), before + 1, "one sync for the run with its event");
    assert!(q.push_many_blocking(Vec::new()).is_empty());
    // On the disk in order, each payload stamped with its own seq.
    let on_disk = store::load(dir.path()).expect("load");
    assert_eq!(
        on_disk.live.keys().copied().collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    for (seq, r) in &on_disk.live {
        let v: serde_json::Value = serde_json::from_slice(&r.record.payload).expect("json");
        assert_eq!(v["seq"], *seq);
    }
    assert_eq!(drain(&q), vec![3, 1, 2, 4, 5]);
    assert_eq!(
        q.put(data("e")),
        Some(6),
        "push and push_many share one sequence"
    );
}

#[tokio::test]
async fn push_many_on_a_closed_queue_answers_none_for_each() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = queue(dir.path(), 100);
    let renderer = Renderer::new("gw", Topics::new("r", "gw"));
    q.crash();
    let run = vec![renderer.render(&data("a")), renderer.render(&event("a"))];
    assert_eq!(q.push_many(run).await, vec![None, None]);
}
