//! Property tests of the durable queue against a model: random pushes (events and
//! telemetry), acks, syncs, crashes (state not yet written is lost; optionally the last write
//! is torn) and reopens. After every reopen:
//! - every message the model says is unacknowledged is there, with its payload;
//! - nothing is there that was never pushed (acknowledged ones may come back: at-least-once);
//! - `seq` continues above every `seq` ever issued, never reused;
//! - events come out before telemetry, each oldest first;
//! - an event (and anything with `fsync = "always"`) may go out as soon as its push returned.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use towerlink_agent::feed::{
    Event, EventState, Message, MessageClass, Rendered, Renderer, Severity, Topics,
};
use towerlink_agent::queue::segment;
use towerlink_agent::queue::store::{FsyncPolicy, StoreOptions};
use towerlink_agent::queue::Queue;

#[derive(Debug, Clone)]
enum Op {
    Push {
        event: bool,
    },
    /// Ack the n-th (modulo) message handed out.
    Ack(usize),
    Sync,
    /// Crash; `tear` cuts that many bytes (< one header) off the newest segment when the last
    /// operation was a push.
    Crash {
        tear: u8,
    },
    /// Clean close and reopen.
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => any::<bool>().prop_map(|event| Op::Push { event }),
        4 => any::<usize>().prop_map(Op::Ack),
        1 => Just(Op::Sync),
        1 => (0u8..12).prop_map(|tear| Op::Crash { tear }),
        1 => Just(Op::Reopen),
    ]
}

fn message(event: bool, n: u64) -> Rendered {
    Renderer::new("gw", Topics::new("r", "gw")).render(&if event {
        Message::Event {
            dev: format!("dev-{}", n % 3),
            event: Event::new(n as i64, "threshold", Severity::Major, EventState::Active),
        }
    } else {
        Message::Data {
            dev: format!("dev-{}", n % 3),
            start: n as i64,
            end: n as i64 + 10,
            ch: Default::default(),
        }
    })
}

fn open(dir: &std::path::Path, always: bool, max: usize) -> Arc<Queue> {
    let opts = StoreOptions {
        fsync: if always {
            FsyncPolicy::Always
        } else {
            FsyncPolicy::Every(Duration::from_secs(3600))
        },
        max_messages: max,
        segment_bytes: 4096,
        ..StoreOptions::new(dir)
    };
    Queue::open(opts).expect("open")
}

/// Everything the queue would send now, in order (then rewound).
fn drain(q: &Queue) -> Vec<(u64, MessageClass, Vec<u8>)> {
    q.sync_blocking();
    let out = std::iter::from_fn(|| q.next_unsent())
        .map(|r| (r.seq, r.class, r.payload.clone()))
        .collect();
    q.rewind();
    out
}

fn newest_segment(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    segment::list(dir).ok()?.pop().map(|s| s.path)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_queue_matches_its_model(ops in prop::collection::vec(op(), 1..120), always in any::<bool>()) {
        let dir = tempfile::tempdir().expect("tempdir");
        let max = 40;
        let mut q = open(dir.path(), always, max);
        // seq -> (class, payload) of every message pushed and not acked or evicted.
        let mut live: BTreeMap<u64, (MessageClass, Vec<u8>)> = BTreeMap::new();
        let mut pushed: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        let mut handed: Vec<u64> = Vec::new();
        let mut max_seq = 0u64;
        let mut last_was_push = false;
        for (i, op) in ops.into_iter().enumerate() {
            match op {
                Op::Push { event } => {
                    let seq = q.push_blocking(message(event, i as u64)).expect("seq");
                    prop_assert!(seq > max_seq, "seq {seq} reused (max so far {max_seq})");
                    prop_assert_eq!(seq, max_seq + 1, "consecutive");
                    max_seq = seq;
                    let r = std::iter::from_fn(|| q.next_unsent()).find(|r| r.seq == seq);
                    q.rewind();
                    // With batched fsync telemetry goes out only after a sync.
                    let payload = match r {
                        Some(r) => r.payload.clone(),
                        None => {
                            prop_assert!(!always, "fsync=always releases at once");
                            prop_assert!(!event, "an event is synced and released at once");
                            q.sync_blocking();
                            let r = std::iter::from_fn(|| q.next_unsent()).find(|r| r.seq == seq);
                            q.rewind();
                            r.map(|r| r.payload.clone()).unwrap_or_default()
                        }
                    };
                    let class = if event { MessageClass::Event } else { MessageClass::Telemetry };
                    live.insert(seq, (class, payload.clone()));
                    pushed.insert(seq, payload);
                    handed.push(seq);
                    // The model's eviction: the oldest telemetry, else the oldest event.
                    while live.len() > max {
                        let victim = live
                            .iter()
                            .find(|(_, (c, _))| *c == MessageClass::Telemetry)
                            .or_else(|| live.iter().next())
                            .map(|(&s, _)| s);
                        if let Some(v) = victim { live.remove(&v); }
                    }
                    last_was_push = true;
                    continue;
                }
                Op::Ack(n) => {
                    if !handed.is_empty() {
                        let seq = handed[n % handed.len()];
                        q.ack(seq);
                        live.remove(&seq);
                    }
                }
                Op::Sync => q.sync_blocking(),
                Op::Crash { tear } => {
                    q.crash();
                    drop(q);
                    let mut torn_seq = None;
                    if last_was_push && tear > 0 {
                        if let Some(path) = newest_segment(dir.path()) {
                            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                            if len > 0 {
                                let f = std::fs::OpenOptions::new().write(true).open(&path).expect("seg");
                                f.set_len(len.saturating_sub(u64::from(tear))).expect("tear");
                                torn_seq = Some(max_seq);
                            }
                        }
                    }
                    q = open(dir.path(), always, max);
                    if let Some(s) = torn_seq {
                        // The interrupted push never returned: it may be gone.
                        live.remove(&s);
                    }
                    live = check_reopened(&q, &live, &pushed, max_seq)?;
                    handed = live.keys().copied().collect();
                }
                Op::Reopen => {
                    drop(q);
                    q = open(dir.path(), always, max);
                    live = check_reopened(&q, &live, &pushed, max_seq)?;
                    handed = live.keys().copied().collect();
                }
            }
            last_was_push = false;
        }
        let next = q.push_blocking(message(true, 9999)).expect("seq");
        prop_assert_eq!(next, max_seq + 1);
    }
}

/// Checks a reopened queue against the model; returns its live set (the new model).
fn check_reopened(
    q: &Queue,
    live: &BTreeMap<u64, (MessageClass, Vec<u8>)>,
    pushed: &BTreeMap<u64, Vec<u8>>,
    max_seq: u64,
) -> Result<BTreeMap<u64, (MessageClass, Vec<u8>)>, TestCaseError> {
    let found = drain(q);
    let found_seqs: BTreeSet<u64> = found.iter().map(|(s, _, _)| *s).collect();
    for seq in live.keys() {
        prop_assert!(
            found_seqs.contains(seq),
            "unacknowledged seq {seq} lost; found {found_seqs:?}"
        );
    }
    for (seq, _, payload) in &found {
        prop_assert_eq!(
            pushed.get(seq),
            Some(payload),
            "seq {} was never pushed with this payload",
            seq
        );
    }
    // Events first, then telemetry, each oldest first.
    let order: Vec<(bool, u64)> = found
        .iter()
        .map(|(s, c, _)| (*c == MessageClass::Telemetry, *s))
        .collect();
    let mut sorted = order.clone();
    sorted.sort();
    prop_assert_eq!(order, sorted);
    prop_assert!(
        q.last_seq() >= max_seq,
        "seq would be reused: last {} < {max_seq}",
        q.last_seq()
    );
    Ok(found.into_iter().map(|(s, c, p)| (s, (c, p))).collect())
}
