//! The publish ledger: which queued record each MQTT packet id carries.
//!
//! rumqttc 0.25 does not return a packet id from `publish`. What it does say, in order, is
//! `Outgoing::Publish(pkid)` as each request leaves its request queue, and
//! `Incoming::PubAck(pkid)` when the broker has a QoS 1 message. So every request we submit is
//! pushed on a FIFO in submission order; each `Outgoing::Publish` pops the front and binds the
//! pkid to it; each PubAck resolves the binding. Requests that carry no record (birth, health)
//! still take their place in the FIFO, or every later binding would shift by one.
//!
//! A batch (`{root}/{gw}/batch`) is one publish, so one pkid, carrying many records: its
//! entry lists their `seq`s, and its PUBACK delivers them all at once.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// What one submitted publish carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A queued record, QoS 1: done when the broker acknowledges it.
    Record(u64),
    /// Queued records in one batch publish, QoS 1: all done when the broker acknowledges it.
    Batch(Arc<[u64]>),
    /// Queued records in one batch publish, QoS 0: all done once it is written.
    BatchAtMostOnce(Arc<[u64]>),
    /// A queued record, QoS 0: done as soon as it is written to the network.
    RecordAtMostOnce(u64),
    /// Not from the queue (state, health); `true` if it is the clean stop's `offline`.
    Untracked {
        /// Is this the final `offline` state message?
        offline: bool,
    },
}

/// What a network event means for the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// Nothing to do.
    Nothing,
    /// The broker has record `seq`.
    Delivered(u64),
    /// The broker has every record of a batch.
    DeliveredAll(Arc<[u64]>),
    /// The clean stop's `offline` was acknowledged.
    OfflineDelivered,
}

/// The ledger of one connection.
#[derive(Debug, Default)]
pub struct Ledger {
    submitted: VecDeque<Entry>,
    in_flight: HashMap<u16, Entry>,
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// Records a submitted publish (call right after a successful `try_publish`).
    pub fn submitted(&mut self, entry: Entry) {
        self.submitted.push_back(entry);
    }

    /// A submitted publish the client refused after all: take its entry out (the newest
    /// equal one), so later bindings do not shift.
    pub fn withdraw(&mut self, entry: &Entry) {
        if let Some(i) = self.submitted.iter().rposition(|e| e == entry) {
            self.submitted.remove(i);
        }
    }

    /// Publishes submitted or in flight (the window to keep under the broker's inflight limit).
    pub fn outstanding(&self) -> usize {
        self.submitted.len() + self.in_flight.len()
    }

    /// `Outgoing::Publish(pkid)` was seen.
    pub fn on_outgoing(&mut self, pkid: u16) -> Resolved {
        let Some(entry) = self.submitted.pop_front() else {
            tracing::warn!(pkid, "outgoing publish the ledger did not submit");
            return Resolved::Nothing;
        };
        match entry {
            Entry::RecordAtMostOnce(seq) => Resolved::Delivered(seq),
            Entry::BatchAtMostOnce(seqs) => Resolved::DeliveredAll(seqs),
            Entry::Untracked { .. } if pkid == 0 => Resolved::Nothing,
            _ => {
                self.in_flight.insert(pkid, entry);
                Resolved::Nothing
            }
        }
    }

    /// `Incoming::PubAck(pkid)` was seen.
    pub fn on_puback(&mut self, pkid: u16) -> Resolved {
        match self.in_flight.remove(&pkid) {
            Some(Entry::Record(seq)) => Resolved::Delivered(seq),
            Some(Entry::Batch(seqs)) => Resolved::DeliveredAll(seqs),
            Some(Entry::Untracked { offline: true }) => Resolved::OfflineDelivered,
            _ => Resolved::Nothing,
        }
    }

    /// The connection is gone: nothing in it will be acknowledged any more.
    pub fn clear(&mut self) {
        self.submitted.clear();
        self.in_flight.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_map_to_records_through_submission_order() {
        let mut l = Ledger::new();
        l.submitted(Entry::Untracked { offline: false }); // birth, QoS 1
        l.submitted(Entry::Record(10));
        l.submitted(Entry::Untracked { offline: false }); // health, QoS 0
        l.submitted(Entry::Record(11));
        assert_eq!(l.on_outgoing(1), Resolved::Nothing);
        assert_eq!(l.on_outgoing(2), Resolved::Nothing);
        assert_eq!(l.on_outgoing(0), Resolved::Nothing);
        assert_eq!(l.on_outgoing(3), Resolved::Nothing);
        assert_eq!(l.outstanding(), 3);
        assert_eq!(l.on_puback(3), Resolved::Delivered(11));
        assert_eq!(l.on_puback(1), Resolved::Nothing);
        assert_eq!(l.on_puback(2), Resolved::Delivered(10));
        assert_eq!(
            l.on_puback(2),
            Resolved::Nothing,
            "a duplicate ack resolves nothing"
        );
        assert_eq!(l.outstanding(), 0);
    }

    #[test]
    fn qos0_records_are_done_when_written() {
        let mut l = Ledger::new();
        l.submitted(Entry::RecordAtMostOnce(5));
        assert_eq!(l.on_outgoing(0), Resolved::Delivered(5));
    }

    #[test]
    fn one_pkid_carries_a_batch_of_records() {
        let mut l = Ledger::new();
        let seqs: Arc<[u64]> = Arc::from(vec![3, 4, 6]);
        l.submitted(Entry::Record(5));
        l.submitted(Entry::Batch(seqs.clone()));
        l.on_outgoing(1);
        l.on_outgoing(2);
        assert_eq!(l.outstanding(), 2, "a batch is one publish in the window");
        assert_eq!(l.on_puback(2), Resolved::DeliveredAll(seqs.clone()));
        assert_eq!(l.on_puback(2), Resolved::Nothing, "acknowledged once");
        assert_eq!(l.on_puback(1), Resolved::Delivered(5));
        l.submitted(Entry::BatchAtMostOnce(seqs.clone()));
        assert_eq!(l.on_outgoing(0), Resolved::DeliveredAll(seqs));
    }

    #[test]
    fn the_offline_state_is_recognised() {
        let mut l = Ledger::new();
        l.submitted(Entry::Untracked { offline: true });
        l.on_outgoing(7);
        assert_eq!(l.on_puback(7), Resolved::OfflineDelivered);
    }

    #[test]
    fn clear_forgets_everything() {
        let mut l = Ledger::new();
        l.submitted(Entry::Record(1));
        l.on_outgoing(1);
        l.submitted(Entry::Record(2));
        l.clear();
        assert_eq!(l.outstanding(), 0);
        assert_eq!(l.on_puback(1), Resolved::Nothing);
    }
}
