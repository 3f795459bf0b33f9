//! The publisher's rules, without a broker: a small in-memory backlog stands in for the queue
//! (it applies the acks, rewinds and unsends the publisher asks for).

use std::cell::RefCell;
use std::collections::BTreeMap;

use super::*;

/// An in-memory backlog: records by seq with a "handed out" flag, events first.
#[derive(Default)]
struct Fake {
    records: RefCell<BTreeMap<u64, (Arc<Record>, bool)>>,
}

impl Fake {
    fn with(classes: &[MessageClass]) -> Fake {
        let f = Fake::default();
        for (i, class) in classes.iter().enumerate() {
            f.add(i as u64 + 1, *class);
        }
        f
    }

    fn add(&self, seq: u64, class: MessageClass) {
        self.add_payload(seq, class, format!("p{seq}").into_bytes());
    }

    /// A telemetry window (as rendered: `"start"` right after `"seq"`), `pad` bytes longer.
    fn add_window(&self, seq: u64, pad: usize) {
        let payload = format!(
            "{{\"v\":1,\"gw\":\"gw-1\",\"dev\":\"p\",\"seq\":{seq},\"start\":\"{}\"}}",
            "x".repeat(pad)
        );
        self.add_payload(seq, MessageClass::Telemetry, payload.into_bytes());
    }

    fn add_payload(&self, seq: u64, class: MessageClass, payload: Vec<u8>) {
        let record = Record {
            seq,
            class,
            topic: format!("t/{seq}"),
            payload,
            queued_at: 0,
        };
        self.records
            .borrow_mut()
            .insert(seq, (Arc::new(record), false));
    }

    /// Applies the queue's share of `actions`; returns the publishes in order.
    fn apply(&self, actions: &[Action]) -> Vec<Publish> {
        let mut out = Vec::new();
        for a in actions {
            match a {
                Action::Publish(p) => out.push(p.clone()),
                Action::Ack(seq) => {
                    self.records.borrow_mut().remove(seq);
                }
                Action::Rewind => self
                    .records
                    .borrow_mut()
                    .values_mut()
                    .for_each(|r| r.1 = false),
                Action::Unsend(r) => {
                    if let Some(slot) = self.records.borrow_mut().get_mut(&r.seq) {
                        slot.1 = false;
                    }
                }
                _ => {}
            }
        }
        out
    }
}

impl Backlog for Fake {
    fn next_unsent_if(&self, telemetry: bool) -> Option<Arc<Record>> {
        let mut records = self.records.borrow_mut();
        let pick = |class: MessageClass, records: &BTreeMap<u64, (Arc<Record>, bool)>| {
            records
                .iter()
                .find(|(_, (r, sent))| !sent && r.class == class)
                .map(|(&seq, _)| seq)
        };
        let seq = pick(MessageClass::Event, &records).or_else(|| {
            telemetry
                .then(|| pick(MessageClass::Telemetry, &records))
                .flatten()
        })?;
        let slot = records.get_mut(&seq)?;
        slot.1 = true;
        Some(slot.0.clone())
    }
    fn has_unsent_telemetry(&self) -> bool {
        self.records
            .borrow()
            .values()
            .any(|(r, sent)| !sent && r.class == MessageClass::Telemetry)
    }
    fn waiting(&self) -> usize {
        self.records.borrow().len()
    }
}

const T: MessageClass = MessageClass::Telemetry;
const E: MessageClass = MessageClass::Event;

fn settings(window: usize, replay_rate: u32) -> Settings {
    Settings {
        gw: "gw-1".into(),
        topics: Topics::new("r", "gw-1"),
        data_qos: QoS::AtLeastOnce,
        window,
        health_interval: Duration::from_secs(10),
        replay_rate,
        replay_bytes_rate: 0,
        batch: None,
        birth: Default::default(),
    }
}

fn publisher(window: usize, replay_rate: u32, t0: Instant) -> (Publisher, Arc<UplinkStats>) {
    let stats = Arc::new(UplinkStats::default());
    let p = Publisher::new(
        settings(window, replay_rate),
        stats.clone(),
        Box::new(|| b"{\"health\":1}".to_vec()),
        t0,
    );
    (p, stats)
}

/// A connected publisher whose birth has left (pkid 1) and been acknowledged.
fn online(window: usize, replay_rate: u32, t0: Instant) -> (Publisher, Arc<UplinkStats>) {
    let (mut p, stats) = publisher(window, replay_rate, t0);
    p.new_session();
    p.connected();
    p.outgoing(1);
    p.puback(1, 0);
    assert_eq!(p.outstanding(), 0);
    (p, stats)
}

fn seqs(publishes: &[Publish]) -> Vec<u64> {
    publishes
        .iter()
        .flat_map(|p| p.records.iter().map(|r| r.seq))
        .collect()
}

/// Binds the publishes' pkids in order from `first`; returns the pkid of each record seq.
fn go_out(p: &mut Publisher, q: &Fake, publishes: &[Publish], first: u16) -> Vec<(u64, u16)> {
    let mut map = Vec::new();
    for (i, pb) in publishes.iter().enumerate() {
        let pkid = first + i as u16;
        q.apply(&p.outgoing(pkid));
        for r in &pb.records {
            map.push((r.seq, pkid));
        }
    }
    map
}

#[test]
fn every_connack_publishes_the_birth_and_subscribes() {
    let t0 = Instant::now();
    let (mut p, stats) = publisher(10, 0, t0);
    for round in 1..=3u64 {
        p.new_session();
        let actions = p.connected();
        let Action::Publish(birth) = &actions[0] else {
            panic!("{actions:?}")
        };
        assert_eq!(
            (birth.topic.as_str(), birth.qos, birth.retain),
            ("r/gw-1/state", QoS::AtLeastOnce, true)
        );
        let v: serde_json::Value = serde_json::from_slice(&birth.payload).expect("json");
        assert_eq!(v["state"], "online", "{v}");
        assert_eq!(actions[1], Action::Subscribe("r/gw-1/cmd".into()));
        assert!(p.is_connected());
        assert_eq!(stats.connects.load(Ordering::Relaxed), round);
        p.disconnected("test");
        assert!(!p.is_connected());
    }
}

#[test]
fn the_inflight_window_is_never_exceeded() {
    let t0 = Instant::now();
    let (mut p, _) = online(4, 0, t0);
    let q = Fake::with(&[T; 20]);
    let first = q.apply(&p.tick(t0, &q));
    assert_eq!(seqs(&first), vec![1, 2, 3, 4]);
    assert_eq!(p.outstanding(), 4);
    assert!(!p.wants_records());
    assert!(
        q.apply(&p.tick(t0, &q)).is_empty(),
        "a full window takes nothing"
    );
    // Two leave and one is acknowledged: exactly one slot frees.
    let map = go_out(&mut p, &q, &first[..2], 10);
    q.apply(&p.puback(map[0].1, 0));
    let next = q.apply(&p.tick(t0, &q));
    assert_eq!(seqs(&next), vec![5]);
    assert_eq!(p.outstanding(), 4);
    // Health counts against the window too.
    let (mut p, _) = online(2, 0, t0);
    let q = Fake::with(&[T; 5]);
    let out = q.apply(&p.tick(t0 + Duration::from_secs(10), &q));
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[0].topic, "r/gw-1/health");
    assert_eq!(seqs(&out), vec![1]);
}

#[test]
fn a_puback_acknowledges_exactly_the_mapped_record() {
    let t0 = Instant::now();
    let (mut p, stats) = online(10, 0, t0);
    let q = Fake::with(&[T, T, E]);
    let out = q.apply(&p.tick(t0, &q));
    assert_eq!(seqs(&out), vec![3, 1, 2], "events first");
    let map = go_out(&mut p, &q, &out, 7); // 3 -> 7, 1 -> 8, 2 -> 9
    assert_eq!(map, vec![(3, 7), (1, 8), (2, 9)]);
    assert_eq!(p.puback(9, 0), vec![Action::Ack(2)]);
    assert_eq!(p.puback(7, 0), vec![Action::Ack(3)]);
    assert_eq!(p.puback(7, 0), vec![], "a duplicate acks nothing");
    assert_eq!(p.puback(42, 0), vec![], "an unknown pkid acks nothing");
    assert_eq!(stats.published.load(Ordering::Relaxed), 2);
    assert_eq!(p.outstanding(), 1);
}

#[test]
fn a_refused_puback_does_not_ack() {
    let t0 = Instant::now();
    let (mut p, stats) = online(10, 0, t0);
    let q = Fake::with(&[T, T]);
    let out = q.apply(&p.tick(t0, &q));
    go_out(&mut p, &q, &out, 1);
    assert_eq!(p.puback(1, 0x87), vec![], "not authorized: stays queued");
    let acked = p.puback(2, 0x10);
    assert_eq!(acked, vec![Action::Ack(2)], "no subscribers is success");
    q.apply(&acked);
    assert_eq!(stats.publish_refused.load(Ordering::Relaxed), 1);
    assert_eq!(stats.published.load(Ordering::Relaxed), 1);
    // It goes again after the next session.
    q.apply(&p.disconnected("test"));
    p.new_session();
    q.apply(&p.connected());
    let again = q.apply(&p.tick(t0, &q));
    assert_eq!(seqs(&again), vec![1]);
}

#[test]
fn a_disconnect_rewinds_and_forgets_the_pkid_map() {
    let t0 = Instant::now();
    let (mut p, stats) = online(10, 0, t0);
    let q = Fake::with(&[T, T, T]);
    let out = q.apply(&p.tick(t0, &q));
    go_out(&mut p, &q, &out, 1);
    q.apply(&p.puback(2, 0)); // seq 2 done
    let actions = p.disconnected("reset");
    assert_eq!(actions, vec![Action::Rewind]);
    q.apply(&actions);
    assert!(!p.is_finished());
    assert_eq!(p.outstanding(), 0);
    assert!(!stats.connected.load(Ordering::Relaxed));
    assert!(
        q.apply(&p.tick(t0, &q)).is_empty(),
        "nothing goes without a session"
    );
    // A late PUBACK of the old session acknowledges nothing.
    assert_eq!(p.puback(1, 0), vec![]);
    p.new_session();
    let birth = q.apply(&p.connected());
    let out = q.apply(&p.tick(t0, &q));
    assert_eq!(seqs(&out), vec![1, 3], "from the oldest unacknowledged");
    // The new session binds its own pkids: birth 1, seq 1 -> 2, seq 3 -> 3.
    go_out(&mut p, &q, &birth, 1);
    let map = go_out(&mut p, &q, &out, 2);
    assert_eq!(map, vec![(1, 2), (3, 3)]);
    assert_eq!(p.puback(3, 0), vec![Action::Ack(3)]);
}

#[test]
fn events_go_before_telemetry_and_only_telemetry_is_paced() {
    let t0 = Instant::now();
    // 10/s: a burst of one token, then one every 100 ms.
    let (mut p, _) = online(100, 10, t0);
    let q = Fake::with(&[T, T, T, E, E, E]);
    let out = q.apply(&p.tick(t0, &q));
    assert_eq!(seqs(&out), vec![4, 5, 6, 1], "every event, one telemetry");
    let wake = p.next_wake(t0, &q);
    assert!(
        wake > t0 + Duration::from_millis(50) && wake <= t0 + Duration::from_millis(101),
        "the next token: {:?}",
        wake - t0
    );
    q.add(7, E);
    let out = q.apply(&p.tick(t0 + Duration::from_millis(10), &q));
    assert_eq!(
        seqs(&out),
        vec![7],
        "a new event does not wait for the pacer"
    );
    let out = q.apply(&p.tick(t0 + Duration::from_millis(110), &q));
    assert_eq!(seqs(&out), vec![2]);
    let out = q.apply(&p.tick(t0 + Duration::from_millis(150), &q));
    assert!(out.is_empty());
    let out = q.apply(&p.tick(t0 + Duration::from_millis(220), &q));
    assert_eq!(seqs(&out), vec![3]);
}

#[test]
fn health_goes_out_on_its_interval_while_connected() {
    let t0 = Instant::now();
    let (mut p, _) = publisher(10, 0, t0);
    let q = Fake::default();
    assert_eq!(p.next_wake(t0, &q), t0 + Duration::from_secs(10));
    assert!(
        p.tick(t0 + Duration::from_secs(10), &q).is_empty(),
        "no session, no health"
    );
    p.new_session();
    p.connected();
    assert!(
        p.tick(t0 + Duration::from_secs(15), &q).is_empty(),
        "not due"
    );
    let out = q.apply(&p.tick(t0 + Duration::from_secs(20), &q));
    assert_eq!(out.len(), 1);
    assert_eq!(
        (
            out[0].topic.as_str(),
            out[0].qos,
            out[0].retain,
            &out[0].payload[..]
        ),
        (
            "r/gw-1/health",
            QoS::AtMostOnce,
            false,
            &b"{\"health\":1}"[..]
        )
    );
    assert!(p.tick(t0 + Duration::from_secs(29), &q).is_empty());
    assert_eq!(q.apply(&p.tick(t0 + Duration::from_secs(30), &q)).len(), 1);
    // QoS 0 health takes its place in the FIFO: the next record binds correctly.
    q.add(1, T);
    let out = q.apply(&p.tick(t0 + Duration::from_secs(31), &q));
    p.outgoing(2); // birth
    p.outgoing(0); // health at 20 s
    p.outgoing(0); // health at 30 s
    let map = go_out(&mut p, &q, &out, 3);
    assert_eq!(p.puback(map[0].1, 0), vec![Action::Ack(1)]);
}

#[test]
fn a_clean_stop_drains_publishes_offline_and_disconnects() {
    let t0 = Instant::now();
    let (mut p, _) = online(10, 0, t0);
    let q = Fake::with(&[T, E]);
    p.stop(t0);
    let out = q.apply(&p.tick(t0, &q));
    assert_eq!(seqs(&out), vec![2, 1], "the queue drains first");
    let map = go_out(&mut p, &q, &out, 1);
    q.apply(&p.puback(map[0].1, 0));
    assert!(
        q.apply(&p.tick(t0, &q)).is_empty(),
        "one still unacknowledged"
    );
    q.apply(&p.puback(map[1].1, 0));
    let out = q.apply(&p.tick(t0, &q));
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].topic.as_str(), out[0].retain, out[0].qos),
        ("r/gw-1/state", true, QoS::AtLeastOnce)
    );
    let v: serde_json::Value = serde_json::from_slice(&out[0].payload).expect("json");
    assert_eq!(v["state"], "offline", "{v}");
    assert!(!p.wants_records(), "nothing more after offline");
    p.outgoing(9);
    assert_eq!(p.puback(9, 0), vec![Action::Disconnect]);
    assert!(!p.is_finished());
    assert_eq!(
        p.disconnected("clean stop"),
        vec![Action::Rewind, Action::Finish]
    );
    assert!(p.is_finished());
}

#[test]
fn a_stop_that_cannot_drain_gives_up_in_bounded_time() {
    let t0 = Instant::now();
    let (mut p, _) = online(10, 0, t0);
    let q = Fake::with(&[T]);
    p.stop(t0);
    let out = q.apply(&p.tick(t0, &q));
    go_out(&mut p, &q, &out, 1); // never acknowledged
    assert_eq!(p.next_wake(t0, &q), t0 + DRAIN_TIMEOUT);
    assert!(q
        .apply(&p.tick(t0 + DRAIN_TIMEOUT - Duration::from_millis(1), &q))
        .is_empty());
    let out = q.apply(&p.tick(t0 + DRAIN_TIMEOUT, &q));
    assert_eq!(out.len(), 1, "offline after the drain timeout");
    assert_eq!(out[0].entry, Entry::Untracked { offline: true });
    let then = t0 + DRAIN_TIMEOUT;
    assert_eq!(p.next_wake(then, &q), then + OFFLINE_TIMEOUT);
    assert_eq!(p.tick(then + OFFLINE_TIMEOUT, &q), vec![Action::Finish]);
    assert!(p.is_finished());
    // Without a session there is nothing to drain into: finish at the drain deadline.
    let (mut p, _) = publisher(10, 0, t0);
    p.stop(t0);
    assert!(p.tick(t0, &q).is_empty());
    assert_eq!(p.tick(t0 + DRAIN_TIMEOUT, &q), vec![Action::Finish]);
}

#[test]
fn a_publish_the_client_refuses_is_due_again_and_leaves_the_ledger() {
    let t0 = Instant::now();
    let (mut p, stats) = online(10, 0, t0);
    let q = Fake::with(&[T, T]);
    let out = q.apply(&p.tick(t0, &q));
    assert_eq!(p.outstanding(), 2);
    // The first went, the second was refused by the client.
    let refused = p.client_refused(&out[1]);
    assert!(
        matches!(&refused[..], [Action::Unsend(r)] if r.seq == 2),
        "{refused:?}"
    );
    q.apply(&refused);
    assert_eq!(p.outstanding(), 1);
    assert_eq!(stats.submit_errors.load(Ordering::Relaxed), 1);
    assert_eq!(p.outgoing(5), vec![]);
    assert_eq!(p.puback(5, 0), vec![Action::Ack(1)], "binding not shifted");
    let again = q.apply(&p.tick(t0, &q));
    assert_eq!(seqs(&again), vec![2]);
}

#[test]
fn commands_are_handed_on_and_counted() {
    let t0 = Instant::now();
    let (mut p, stats) = online(10, 0, t0);
    assert_eq!(
        p.command(b"{}".to_vec()),
        vec![Action::Command(b"{}".to_vec())]
    );
    assert_eq!(stats.commands.load(Ordering::Relaxed), 1);
}

/// A connected publisher batching windows every 5 s.
fn batching(window: usize, t0: Instant) -> (Publisher, Arc<UplinkStats>) {
    let stats = Arc::new(UplinkStats::default());
    let mut settings = settings(window, 0);
    settings.batch = Some(Duration::from_secs(5));
    settings.health_interval = Duration::from_secs(3600);
    let mut p = Publisher::new(settings, stats.clone(), Box::new(|| b"{}".to_vec()), t0);
    p.new_session();
    p.connected();
    p.outgoing(1);
    p.puback(1, 0);
    (p, stats)
}

/// A batch publish's items, compressed as the task would ([`Publish::compress`]).
fn decoded(p: &Publish) -> Vec<serde_json::Value> {
    assert!(p.compress, "a batch's JSON, for the task to compress");
    crate::feed::batch::decode(&crate::feed::batch::compress(&p.payload)).expect("a batch")
}

fn batch_items(p: &Publish) -> Vec<u64> {
    decoded(p)
        .iter()
        .filter_map(|v| v["seq"].as_u64())
        .collect()
}

#[test]
fn windows_wait_for_the_batch_while_events_and_lift_statuses_go_at_once() {
    let t0 = Instant::now();
    let (mut p, stats) = batching(10, t0);
    let q = Fake::default();
    q.add_window(2, 0);
    q.add(3, E);
    q.add_window(4, 0);
    q.add(5, T); // a lift status: not a window
    let out = q.apply(&p.tick(t0, &q));
    assert_eq!(seqs(&out), vec![3, 5], "only the event and the lift status");
    assert_eq!(p.next_wake(t0, &q), t0 + Duration::from_secs(5));
    q.add_window(6, 0);
    assert!(q.apply(&p.tick(t0 + Duration::from_secs(4), &q)).is_empty());
    let out = q.apply(&p.tick(t0 + Duration::from_secs(5), &q));
    assert_eq!(out.len(), 1);
    let batch = &out[0];
    assert_eq!(
        (batch.topic.as_str(), batch.qos),
        ("r/gw-1/batch", QoS::AtLeastOnce)
    );
    assert_eq!(seqs(&out), vec![2, 4, 6]);
    assert_eq!(batch_items(batch), vec![2, 4, 6], "each window is an item");
    // Events 3, lift 5 were pkids 2, 3; the batch is pkid 4 and its PUBACK acks all three.
    p.outgoing(2);
    p.outgoing(3);
    p.outgoing(4);
    assert_eq!(p.outstanding(), 3);
    let acks = p.puback(4, 0);
    assert_eq!(
        acks,
        vec![Action::Ack(2), Action::Ack(4), Action::Ack(6)],
        "one PUBACK, every seq"
    );
    q.apply(&acks);
    assert_eq!(stats.batches.load(Ordering::Relaxed), 1);
    assert!(stats.sent_bytes.load(Ordering::Relaxed) > 0);
    assert!(p.puback(4, 0).is_empty(), "a duplicate PUBACK acks nothing");
}

/// Windows 1 and 2 queued at `t0` and sent as one batch when it is due (5 s later).
fn two_windows_batched(p: &mut Publisher, q: &Fake, t0: Instant) -> Vec<Publish> {
    q.add_window(1, 0);
    q.add_window(2, 0);
    q.apply(&p.tick(t0, q));
    let out = q.apply(&p.tick(t0 + Duration::from_secs(5), q));
    assert_eq!(seqs(&out), vec![1, 2]);
    out
}

#[test]
fn a_batch_lost_with_its_session_is_batched_again() {
    let t0 = Instant::now();
    let (mut p, _) = batching(10, t0);
    let q = Fake::default();
    two_windows_batched(&mut p, &q, t0);
    p.outgoing(2);
    q.add_window(3, 0);
    q.apply(&p.tick(t0 + Duration::from_secs(6), &q)); // 3 is held
    q.apply(&p.disconnected("test"));
    p.new_session();
    p.connected();
    p.outgoing(1);
    p.puback(1, 0);
    let t1 = t0 + Duration::from_secs(7);
    assert!(
        q.apply(&p.tick(t1, &q)).is_empty(),
        "held again, not sent one by one"
    );
    let out = q.apply(&p.tick(t1 + Duration::from_secs(5), &q));
    assert_eq!(
        seqs(&out),
        vec![1, 2, 3],
        "the lost batch and the held window, once"
    );
    let items = decoded(&out[0]);
    let replays: Vec<bool> = items.iter().map(|v| v["replay"] == true).collect();
    assert_eq!(
        replays,
        vec![true, true, false],
        "items sent before are marked replay"
    );
    assert!(!out[0].replay && out[0].fresh == vec![3]);
    p.outgoing(2);
    let acks = q.apply(&p.puback(2, 0));
    assert!(acks.is_empty());
    assert_eq!(q.waiting(), 0);
    assert!(p.puback(2, 0).is_empty());
}

#[test]
fn a_backlog_goes_out_in_full_batches_without_waiting() {
    let t0 = Instant::now();
    let (mut p, _) = batching(2, t0);
    let q = Fake::default();
    // 100 windows of ~4 kB: about three full batches of 128 KiB.
    for seq in 1..=100 {
        q.add_window(seq, 4000);
    }
    let out = q.apply(&p.tick(t0, &q));
    assert_eq!(out.len(), 2, "the in-flight window holds batches");
    assert!(out.iter().all(|b| b.topic == "r/gw-1/batch"));
    let first = seqs(&out);
    assert_eq!(first.len(), 66, "two full batches of 33");
    assert_eq!(first, (1..=66).collect::<Vec<_>>());
    assert_eq!(batch_items(&out[1]), (34..=66).collect::<Vec<_>>());
    p.outgoing(2);
    p.outgoing(3);
    q.apply(&p.puback(2, 0));
    q.apply(&p.puback(3, 0));
    // The rest (34 windows) is held: one full batch goes, one window waits for the interval.
    let out = q.apply(&p.tick(t0, &q));
    assert_eq!(seqs(&out), (67..=99).collect::<Vec<_>>());
    let out = q.apply(&p.tick(t0 + Duration::from_secs(5), &q));
    assert_eq!(seqs(&out), vec![100]);
}

#[test]
fn a_clean_stop_sends_the_held_batch_then_offline() {
    let t0 = Instant::now();
    let (mut p, _) = batching(10, t0);
    let q = Fake::default();
    q.add_window(1, 0);
    q.apply(&p.tick(t0, &q));
    p.stop(t0);
    let out = q.apply(&p.tick(t0 + Duration::from_millis(10), &q));
    assert_eq!(seqs(&out), vec![1]);
    assert_eq!(out[0].topic, "r/gw-1/batch");
    p.outgoing(2);
    q.apply(&p.puback(2, 0));
    let out = q.apply(&p.tick(t0 + Duration::from_millis(20), &q));
    assert_eq!(
        out[0].topic, "r/gw-1/state",
        "offline once the batch is acknowledged"
    );
}

#[test]
fn a_batch_the_client_refuses_is_due_again_whole() {
    let t0 = Instant::now();
    let (mut p, stats) = batching(10, t0);
    let q = Fake::default();
    q.add_window(1, 0);
    q.add_window(2, 0);
    q.apply(&p.tick(t0, &q));
    let out = q.apply(&p.tick(t0 + Duration::from_secs(5), &q));
    let back = p.client_refused(&out[0]);
    assert_eq!(back.len(), 2, "every record of the batch is unsent");
    q.apply(&back);
    assert_eq!(p.outstanding(), 0);
    assert_eq!(stats.submit_errors.load(Ordering::Relaxed), 1);
    q.apply(&p.tick(t0 + Duration::from_secs(6), &q));
    let out = q.apply(&p.tick(t0 + Duration::from_secs(11), &q));
    assert_eq!(seqs(&out), vec![1, 2]);
    assert!(!out[0].replay, "never handed over: still a first attempt");
}

#[test]
fn a_record_sent_again_after_a_lost_session_is_marked_replay_and_a_first_attempt_is_not() {
    let t0 = Instant::now();
    let (mut p, _) = online(10, 0, t0);
    let q = Fake::with(&[T, E]);
    // Event 2 goes first; telemetry 1 after it: neither is a replay.
    let out = q.apply(&p.tick(t0, &q));
    assert_eq!(seqs(&out), vec![2, 1]);
    assert!(out
        .iter()
        .all(|pb| !pb.replay && pb.payload.starts_with(b"p")));
    go_out(&mut p, &q, &out, 1);
    q.apply(&p.puback(1, 0)); // seq 2 delivered
    q.add(3, T); // queued during the outage: its first attempt comes after it
    q.apply(&p.disconnected("reset"));
    p.new_session();
    let birth = q.apply(&p.connected());
    let out = q.apply(&p.tick(t0, &q));
    assert_eq!(seqs(&out), vec![1, 3]);
    assert!(out[0].replay, "seq 1 was handed over before");
    assert_eq!(out[0].payload, b"p1".to_vec(), "not JSON: left alone");
    assert!(!out[1].replay, "seq 3 is a first attempt");
    // Once acknowledged, a seq is forgotten.
    go_out(&mut p, &q, &birth, 1);
    go_out(&mut p, &q, &out, 2);
    q.apply(&p.puback(2, 0));
    q.apply(&p.puback(3, 0));
    assert!(p.attempted().is_empty(), "{:?}", p.attempted());
}

#[test]
fn the_set_of_an_earlier_run_marks_its_records_and_a_refused_submit_stays_first() {
    let t0 = Instant::now();
    let (p, _) = online(10, 0, t0);
    let mut p = p.with_attempted([1]);
    let q = Fake::with(&[T, T]);
    let out = q.apply(&p.tick(t0, &q));
    assert_eq!(
        out.iter()
            .map(|pb| (pb.records.first().map(|r| r.seq), pb.replay))
            .collect::<Vec<_>>(),
        vec![(Some(1), true), (Some(2), false)]
    );
    assert!(p.take_attempted_changes());
    // The client refused seq 2: never handed over, so its next attempt is still the first.
    q.apply(&p.client_refused(&out[1]));
    let again = q.apply(&p.tick(t0, &q));
    assert_eq!(seqs(&again), vec![2]);
    assert!(!again[0].replay);
}

#[test]
fn mark_replay_adds_the_member_to_any_object() {
    assert_eq!(
        mark_replay(br#"{"v":1,"seq":7}"#),
        br#"{"v":1,"seq":7,"replay":true}"#.to_vec()
    );
    assert_eq!(mark_replay(b"{ }\n"), br#"{ "replay":true}"#.to_vec());
    assert_eq!(mark_replay(b"[1]"), b"[1]".to_vec());
}

/// Replays a backlog of `n` windows (each with 60 bytes of noise, so the batch does not
/// shrink to nothing) for `secs` of simulated time under `msgs`/s and `bytes`/s, playing the
/// task's part too (compress, submit, PUBACK at once). Returns (windows, batch bytes with
/// topic, batches, the largest batch) sent.
fn replay_backlog(msgs: u32, bytes: u64, n: u64, secs: u64) -> (u64, u64, u64, u64) {
    let t0 = Instant::now();
    let mut s = settings(10, msgs);
    s.replay_bytes_rate = bytes;
    s.batch = Some(Duration::from_secs(5));
    s.health_interval = Duration::from_secs(3600);
    let stats = Arc::new(UplinkStats::default());
    let mut p = Publisher::new(s, stats.clone(), Box::new(|| b"{}".to_vec()), t0);
    p.new_session();
    p.connected();
    p.outgoing(1);
    p.puback(1, 0);
    let q = Fake::default();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for seq in 1..=n {
        let noise: String = (0..60)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b"0123456789abcdef"[(x % 16) as usize])
            })
            .collect();
        let payload = format!(
            "{{\"v\":1,\"gw\":\"gw-1\",\"dev\":\"p\",\"seq\":{seq},\"start\":\"{noise}\"}}"
        );
        q.add_payload(seq, MessageClass::Telemetry, payload.into_bytes());
    }
    let mut pkid = 1u16;
    let (mut windows, mut sent, mut batches, mut largest) = (0, 0, 0, 0);
    for ms in (0..secs * 1000).step_by(20) {
        let now = t0 + Duration::from_millis(ms);
        for mut publish in q.apply(&p.tick(now, &q)) {
            assert_eq!(publish.topic, "r/gw-1/batch", "a window went alone");
            // The agent's level is slow in a debug build; the bytes are what counts here.
            let z = zstd::bulk::compress(&publish.payload, 1).expect("compress");
            p.batch_compressed(&mut publish, z);
            assert!(!publish.compress);
            let size = (publish.topic.len() + publish.payload.len()) as u64;
            sent += size;
            largest = largest.max(size);
            windows += publish.records.len() as u64;
            batches += 1;
            pkid += 1;
            p.outgoing(pkid);
            q.apply(&p.puback(pkid, 0));
        }
    }
    assert_eq!(
        stats.sent_bytes.load(Ordering::Relaxed),
        sent - batches * "r/gw-1/batch".len() as u64,
        "health sent_bytes counts the compressed batches"
    );
    (windows, sent, batches, largest)
}

#[test]
fn a_backlog_replays_in_batches_under_the_byte_limit() {
    // 8 KiB/s binds (no message limit: a batch fills at once).
    let rate = 8 * 1024;
    let (windows, sent, batches, largest) = replay_backlog(0, rate, 8_000, 20);
    let budget = rate * 20;
    assert!(batches >= 4, "{batches} batches");
    assert!(
        sent <= budget + rate / 10 + largest,
        "{sent} bytes in 20 s: over {rate} B/s (budget {budget}, one batch of debt {largest})"
    );
    assert!(
        sent + 2 * largest >= budget,
        "{sent} bytes in 20 s: far below {rate} B/s"
    );
    assert!(
        windows < 8_000,
        "the byte limit did not bind: {windows} windows"
    );
}

#[test]
fn a_backlog_replays_in_batches_under_the_message_limit() {
    // 200 windows/s binds (1 MiB/s would allow far more).
    let (windows, _, batches, _) = replay_backlog(200, 1 << 20, 5_000, 20);
    assert!(batches >= 3, "{batches} batches");
    assert!(
        windows <= 200 * 20 + 20,
        "{windows} windows in 20 s: over 200/s"
    );
    // At most the windows held for the next batch are not out yet.
    assert!(
        windows >= 200 * 15,
        "{windows} windows in 20 s: far below 200/s"
    );
}

#[test]
fn a_batch_dropped_with_its_session_does_not_stall_the_byte_limit() {
    // The task was compressing a batch when the session ended ([`super::super::compressing`]):
    // it drops it; under a byte limit the next session's telemetry must still go.
    let t0 = Instant::now();
    let mut s = settings(10, 0);
    s.replay_bytes_rate = 64 * 1024;
    s.batch = Some(Duration::from_secs(5));
    s.health_interval = Duration::from_secs(3600);
    let stats = Arc::new(UplinkStats::default());
    let mut p = Publisher::new(s, stats, Box::new(|| b"{}".to_vec()), t0);
    p.new_session();
    p.connected();
    p.outgoing(1);
    p.puback(1, 0);
    let q = Fake::default();
    let out = two_windows_batched(&mut p, &q, t0);
    assert!(out[0].compress, "being compressed when the session ends");
    q.apply(&p.disconnected("test"));
    p.batch_dropped(&out[0]);
    p.new_session();
    p.connected();
    p.outgoing(1);
    p.puback(1, 0);
    let t1 = t0 + Duration::from_secs(6);
    q.apply(&p.tick(t1, &q));
    let again = q.apply(&p.tick(t1 + Duration::from_secs(5), &q));
    assert_eq!(
        seqs(&again),
        vec![1, 2],
        "sent again in the new session, once"
    );
}
