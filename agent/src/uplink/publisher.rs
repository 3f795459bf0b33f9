//! The publisher as protocol state: what to do on each network event, with no I/O.
//!
//! In the style of rumqttc's `MqttState`: [`Publisher`] has one method per event (a new
//! session, ConnAck, `Outgoing::Publish(pkid)`, PUBACK, a command, the session's end, a tick
//! of the clock, the stop request), and each returns the [`Action`]s to take: publish these
//! records, the birth, health or `offline`; subscribe to `cmd`; acknowledge `seq`s in the
//! queue; rewind it; hand a command on; disconnect; finish. The task in [`super`] only moves
//! bytes and time: it performs the actions with the client and the queue, and feeds the
//! client's refusals back ([`Publisher::client_refused`]). Time comes in as an argument, so
//! the rules are unit-tested without a broker or a clock.
//!
//! The rules (see [`super::ledger`] for the packet-id bookkeeping):
//! - every ConnAck publishes the retained `online` birth and subscribes to `cmd`;
//! - no more than `window` publishes are submitted or in flight at once;
//! - a PUBACK acknowledges exactly the record its pkid was bound to, and only if its reason
//!   code is a success (MQTT 5: below 0x80); a refusal is counted and the record stays queued;
//! - the end of a session forgets the pkid map and rewinds the queue to the oldest
//!   unacknowledged record;
//! - events go before telemetry, and only telemetry is paced: `replay_rate` messages and
//!   `replay_bytes_rate` bytes (topic and payload, a batch compressed) per second;
//! - with batching on (`[mqtt] batch`), telemetry windows are held back and go out together
//!   as one publish on `{root}/{gw}/batch` ([`crate::feed::batch`]) once the oldest held has
//!   waited `batch`, or the held payloads reach [`MAX_BATCH_BYTES`] (so a replayed backlog
//!   goes out in full batches), or a clean stop has nothing more to take; the batch is one
//!   pkid in the ledger and its PUBACK acknowledges every `seq` in it; a session that ends
//!   first forgets the held windows (the rewind hands them out again). Events, replies and
//!   lift statuses are never held. The batch's publish carries its JSON with
//!   [`Publish::compress`] set: the task compresses it off the async worker threads
//!   (`spawn_blocking`) and hands the result back with [`Publisher::batch_compressed`],
//!   which counts its bytes (health `sent_bytes`, the byte pacer);
//! - `health` goes out on its interval while a session is up;
//! - a clean stop drains the queue (at most [`DRAIN_TIMEOUT`]), publishes `offline`, waits for
//!   its PUBACK (at most [`OFFLINE_TIMEOUT`]), then disconnects and finishes.
//!
//! - a record handed to the client before (in this process, or in an earlier one whose set was
//!   saved, see [`Publisher::attempted`]) goes out again with `"replay": true` added to its
//!   payload ([`mark_replay`]): a platform must not page anyone twice for it. A first attempt
//!   carries no flag; the flag errs towards absent (a set lost in a crash), never towards a
//!   false `true` on a message the platform has not been sent.
//!
//! The queue is read through [`Backlog`] (memory only: which record is next); everything the
//! publisher changes in it is an action.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::QoS;
use tokio::time::Instant;

use super::ledger::{Entry, Ledger, Resolved};
use super::pacer::Pacer;
use super::session;
use super::UplinkStats;
use crate::feed::{batch, now_millis, state_payload, MessageClass, Topics};
use crate::queue::{Queue, Record};

/// How long a clean stop waits for the queue to drain.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a clean stop waits for the broker to acknowledge `offline`.
pub const OFFLINE_TIMEOUT: Duration = Duration::from_secs(2);
/// The most window payload bytes (uncompressed) one batch carries; a fuller batch goes out
/// before its interval is up (a backlog replays in batches of this size).
pub const MAX_BATCH_BYTES: usize = 128 * 1024;

/// What the publisher reads from the queue (its in-memory state; no disk I/O).
pub trait Backlog {
    /// The next record to send (events first); telemetry only if `telemetry`. It counts as
    /// handed out until [`Action::Rewind`] or [`Action::Unsend`].
    fn next_unsent_if(&self, telemetry: bool) -> Option<Arc<Record>>;
    /// Is released telemetry waiting to be handed out?
    fn has_unsent_telemetry(&self) -> bool;
    /// Messages not yet acknowledged (handed out or not).
    fn waiting(&self) -> usize;
}

impl Backlog for Queue {
    fn next_unsent_if(&self, telemetry: bool) -> Option<Arc<Record>> {
        Queue::next_unsent_if(self, telemetry)
    }
    fn has_unsent_telemetry(&self) -> bool {
        Queue::has_unsent_telemetry(self)
    }
    fn waiting(&self) -> usize {
        self.depth(now_millis()).messages
    }
}

/// One publish to submit with `try_publish`.
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    /// Topic.
    pub topic: String,
    /// QoS.
    pub qos: QoS,
    /// Retained?
    pub retain: bool,
    /// Payload.
    pub payload: Vec<u8>,
    /// What the ledger recorded for it.
    pub entry: Entry,
    /// The queued records it carries (one, a batch's, or none), given back with
    /// [`Action::Unsend`] if the client refuses it.
    pub records: Vec<Arc<Record>>,
    /// The record (every record of a batch) was handed to the client before: the payload
    /// (each item of a batch that was) carries `"replay": true`.
    pub replay: bool,
    /// The seqs among `records` handed over for the first time (forgotten again if the
    /// client refuses the publish).
    pub fresh: Vec<u64>,
    /// The payload is a batch's JSON still to be compressed ([`batch::compress`]) before it
    /// is submitted; then [`Publisher::batch_compressed`].
    pub compress: bool,
}

/// Re-exported from the feed, which owns the payloads' members.
pub use crate::feed::mark_replay;

/// What the task must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Submit this publish (already in the ledger).
    Publish(Publish),
    /// Subscribe to this filter, QoS 1.
    Subscribe(String),
    /// The broker has record `seq`: acknowledge it in the queue.
    Ack(u64),
    /// The record was not submitted after all: due again.
    Unsend(Arc<Record>),
    /// The session is gone: every unacknowledged record is due again.
    Rewind,
    /// A message received on `cmd`, for the command handler.
    Command(Vec<u8>),
    /// Send DISCONNECT.
    Disconnect,
    /// The publisher is done (clean stop complete, or no session to finish it on).
    Finish,
}

/// The publisher's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Gateway id (in the state payloads).
    pub gw: String,
    /// Topic names.
    pub topics: Topics,
    /// QoS of telemetry.
    pub data_qos: QoS,
    /// Most publishes submitted or in flight.
    pub window: usize,
    /// How often `health` goes out.
    pub health_interval: Duration,
    /// Telemetry per second (0 = no limit).
    pub replay_rate: u32,
    /// Telemetry bytes per second, topic and payload (0 = no limit).
    pub replay_bytes_rate: u64,
    /// Batch telemetry windows over this interval (`None`: each window alone, on `data`).
    pub batch: Option<Duration>,
    /// What the birth says besides `online` (`last_stop`, `clock`).
    pub birth: crate::feed::BirthInfo,
}

/// The publisher's state.
pub struct Publisher {
    settings: Settings,
    stats: Arc<UplinkStats>,
    health: Box<dyn Fn() -> Vec<u8> + Send>,
    ledger: Ledger,
    pacer: Pacer,
    byte_pacer: Pacer,
    /// Batches made whose compressed size is not counted yet ([`Publisher::batch_compressed`]):
    /// with a byte limit, no more telemetry is taken until it is.
    uncharged: usize,
    connected: bool,
    next_health: Instant,
    stopping: Option<Instant>,
    offline_sent: Option<Instant>,
    finished: bool,
    held: Held,
    /// Seqs handed to the client and not acknowledged yet (bounded: pruned to the backlog).
    attempted: std::collections::BTreeSet<u64>,
    /// `attempted` changed since [`Publisher::take_attempted_changes`].
    attempted_dirty: bool,
}

/// The telemetry windows handed out and held for the next batch.
#[derive(Debug, Default)]
struct Held {
    records: Vec<Arc<Record>>,
    bytes: usize,
    since: Option<Instant>,
}

impl Held {
    fn push(&mut self, record: Arc<Record>, now: Instant) {
        self.bytes += record.payload.len();
        self.since.get_or_insert(now);
        self.records.push(record);
    }

    fn full(&self) -> bool {
        self.bytes >= MAX_BATCH_BYTES
    }

    fn take(&mut self) -> Vec<Arc<Record>> {
        self.bytes = 0;
        self.since = None;
        std::mem::take(&mut self.records)
    }
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("connected", &self.connected)
            .field("outstanding", &self.ledger.outstanding())
            .field("stopping", &self.stopping)
            .field("offline_sent", &self.offline_sent)
            .field("finished", &self.finished)
            .finish()
    }
}

impl Publisher {
    /// A publisher with no session yet; `health` builds the health payload when it is due
    /// (first one interval after `now`).
    pub fn new(
        settings: Settings,
        stats: Arc<UplinkStats>,
        health: Box<dyn Fn() -> Vec<u8> + Send>,
        now: Instant,
    ) -> Publisher {
        Publisher {
            pacer: Pacer::new(settings.replay_rate, now),
            byte_pacer: Pacer::per_second(settings.replay_bytes_rate, now),
            uncharged: 0,
            next_health: now + settings.health_interval,
            settings,
            stats,
            health,
            ledger: Ledger::new(),
            connected: false,
            stopping: None,
            offline_sent: None,
            finished: false,
            held: Held::default(),
            attempted: std::collections::BTreeSet::new(),
            attempted_dirty: false,
        }
    }

    /// Records already handed to a client by an earlier run (saved by it): sent again, they
    /// are marked replay.
    pub fn with_attempted(mut self, seqs: impl IntoIterator<Item = u64>) -> Publisher {
        self.attempted.extend(seqs);
        self
    }

    /// The seqs handed to the client and not acknowledged yet.
    pub fn attempted(&self) -> &std::collections::BTreeSet<u64> {
        &self.attempted
    }

    /// Has the attempted set changed since the last call (then it is worth saving)?
    pub fn take_attempted_changes(&mut self) -> bool {
        std::mem::take(&mut self.attempted_dirty)
    }

    /// Is a session up?
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Has a stop been asked for?
    pub fn is_stopping(&self) -> bool {
        self.stopping.is_some()
    }

    /// Is the publisher done?
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Publishes submitted or in flight.
    pub fn outstanding(&self) -> usize {
        self.ledger.outstanding()
    }

    /// Would the publisher take more records now (wake it when the queue has some)?
    pub fn wants_records(&self) -> bool {
        self.connected && self.offline_sent.is_none() && self.ledger.outstanding() < self.window()
    }

    fn window(&self) -> usize {
        self.settings.window.max(1)
    }

    /// A new connection attempt with a fresh client: nothing of the old one counts.
    pub fn new_session(&mut self) {
        self.connected = false;
        self.ledger.clear();
        self.held.take();
    }

    /// ConnAck: publish the birth and subscribe to `cmd`.
    pub fn connected(&mut self) -> Vec<Action> {
        self.connected = true;
        self.stats.connected.store(true, Ordering::Relaxed);
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        let birth = state_payload(
            &self.settings.gw,
            true,
            Some((now_millis(), &self.settings.birth)),
        );
        let entry = Entry::Untracked { offline: false };
        self.ledger.submitted(entry.clone());
        vec![
            Action::Publish(Publish {
                topic: self.settings.topics.state(),
                qos: QoS::AtLeastOnce,
                retain: true,
                payload: birth,
                entry,
                records: Vec::new(),
                replay: false,
                fresh: Vec::new(),
                compress: false,
            }),
            Action::Subscribe(self.settings.topics.cmd()),
        ]
    }

    /// `Outgoing::Publish(pkid)`: bind the pkid (a QoS 0 record is done at once).
    pub fn outgoing(&mut self, pkid: u16) -> Vec<Action> {
        match self.ledger.on_outgoing(pkid) {
            Resolved::Delivered(seq) => self.delivered(seq),
            Resolved::DeliveredAll(seqs) => self.delivered_all(&seqs),
            _ => Vec::new(),
        }
    }

    /// PUBACK for `pkid` with reason `code` (0 with 3.1.1).
    pub fn puback(&mut self, pkid: u16, code: u8) -> Vec<Action> {
        let resolved = self.ledger.on_puback(pkid);
        if !session::accepted(code) {
            // Not accepted: the record stays queued (sent again after the next reconnect);
            // counted, never silently lost.
            self.stats.publish_refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(pkid, reason_code = code, record = ?resolved, "the broker refused a publish; it stays queued");
            return match resolved {
                Resolved::OfflineDelivered => vec![Action::Disconnect],
                _ => Vec::new(),
            };
        }
        match resolved {
            Resolved::Delivered(seq) => self.delivered(seq),
            Resolved::DeliveredAll(seqs) => self.delivered_all(&seqs),
            Resolved::OfflineDelivered => vec![Action::Disconnect],
            Resolved::Nothing => Vec::new(),
        }
    }

    fn delivered_all(&mut self, seqs: &[u64]) -> Vec<Action> {
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        seqs.iter().flat_map(|&seq| self.delivered(seq)).collect()
    }

    fn delivered(&mut self, seq: u64) -> Vec<Action> {
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        self.attempted_dirty |= self.attempted.remove(&seq);
        vec![Action::Ack(seq)]
    }

    /// The client took a publish of `bytes` (topic plus payload).
    pub fn count_sent(&self, bytes: usize) {
        self.stats.handed.fetch_add(1, Ordering::Relaxed);
        self.stats
            .handed_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// A message arrived on `cmd`.
    pub fn command(&mut self, payload: Vec<u8>) -> Vec<Action> {
        self.stats.commands.fetch_add(1, Ordering::Relaxed);
        vec![Action::Command(payload)]
    }

    /// The session ended (`reason` for the log): rewind; finish if this was the clean stop.
    pub fn disconnected(&mut self, reason: &str) -> Vec<Action> {
        let was = self.connected;
        self.connected = false;
        self.stats.connected.store(false, Ordering::Relaxed);
        self.ledger.clear();
        self.held.take();
        let mut actions = vec![Action::Rewind];
        if self.offline_sent.is_some() {
            tracing::info!("MQTT session closed cleanly");
            self.finished = true;
            actions.push(Action::Finish);
        } else if was {
            tracing::warn!(reason = %reason, "MQTT session lost; unacknowledged messages will be sent again");
        }
        actions
    }

    /// A clean stop was asked for: drain from now on ([`Publisher::tick`] does the rest).
    pub fn stop(&mut self, now: Instant) {
        self.stopping.get_or_insert(now);
    }

    /// The client refused a publish from the last actions (its request queue is full): take
    /// it out of the ledger; a record is due again, a refused `offline` ends the stop.
    pub fn client_refused(&mut self, publish: &Publish) -> Vec<Action> {
        self.ledger.withdraw(&publish.entry);
        if publish.compress {
            // Never compressed (its batch failed): nothing to count.
            self.uncharged = self.uncharged.saturating_sub(1);
        }
        match (publish.records.as_slice(), &publish.entry) {
            ([_, ..], _) => {
                self.stats.submit_errors.fetch_add(1, Ordering::Relaxed);
                // Never handed over: a first attempt stays a first attempt.
                for seq in &publish.fresh {
                    self.attempted.remove(seq);
                }
                publish
                    .records
                    .iter()
                    .map(|r| Action::Unsend(r.clone()))
                    .collect()
            }
            ([], Entry::Untracked { offline: true }) => {
                self.finished = true;
                vec![Action::Finish]
            }
            _ => Vec::new(),
        }
    }

    fn deadline(&self) -> Option<Instant> {
        match (self.stopping, self.offline_sent) {
            (_, Some(t)) => Some(t + OFFLINE_TIMEOUT),
            (Some(t), None) => Some(t + DRAIN_TIMEOUT),
            _ => None,
        }
    }

    /// When [`Publisher::tick`] has something to do next, at the latest (health, the next
    /// pacing token while telemetry waits for it, a stop's deadline).
    pub fn next_wake(&mut self, now: Instant, backlog: &dyn Backlog) -> Instant {
        let mut wake = self.next_health;
        if let Some(deadline) = self.deadline() {
            wake = wake.min(deadline);
        }
        if self.wants_records() && !self.telemetry_may_go(now) && backlog.has_unsent_telemetry() {
            let wait = self.pacer.wait(now).max(self.byte_pacer.wait(now));
            wake = wake.min(now + wait);
        }
        if let (Some(since), Some(interval)) = (self.held.since, self.settings.batch) {
            wake = wake.min(since + interval);
        }
        wake
    }

    /// The clock moved or the queue changed: stop deadlines, health, feeding the window,
    /// the end of a drain.
    pub fn tick(&mut self, now: Instant, backlog: &dyn Backlog) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.finished {
            return actions;
        }
        if self.deadline().is_some_and(|d| now >= d) {
            if self.offline_sent.is_some() {
                tracing::warn!("broker did not acknowledge offline in time");
                self.finished = true;
                actions.push(Action::Finish);
                return actions;
            }
            tracing::warn!(
                left = backlog.waiting(),
                "queue not drained before stop; the rest stays for the next start"
            );
            self.send_offline(now, &mut actions);
            if self.finished {
                return actions;
            }
        }
        if now >= self.next_health {
            self.next_health = now + self.settings.health_interval;
            if self.connected && self.offline_sent.is_none() {
                let entry = Entry::Untracked { offline: false };
                self.ledger.submitted(entry.clone());
                actions.push(Action::Publish(Publish {
                    topic: self.settings.topics.health(),
                    qos: QoS::AtMostOnce,
                    retain: false,
                    payload: (self.health)(),
                    entry,
                    records: Vec::new(),
                    replay: false,
                    fresh: Vec::new(),
                    compress: false,
                }));
            }
        }
        if self.connected && self.offline_sent.is_none() {
            self.pump(now, backlog, &mut actions);
        }
        if self.stopping.is_some() && self.offline_sent.is_none() && backlog.waiting() == 0 {
            self.send_offline(now, &mut actions);
        }
        actions
    }

    /// Records to the window while it has room (telemetry as the pacer allows).
    /// With batching, windows are held ([`Held`]) and go out as one batch when it is due.
    fn pump(&mut self, now: Instant, backlog: &dyn Backlog, actions: &mut Vec<Action>) {
        while self.ledger.outstanding() < self.window() {
            if self.batch_due(now) {
                self.send_batch(actions);
                continue;
            }
            let Some(record) = backlog.next_unsent_if(self.telemetry_may_go(now)) else {
                // A clean stop sends what it holds at once.
                if self.stopping.is_some() && !self.held.records.is_empty() {
                    self.send_batch(actions);
                    continue;
                }
                break;
            };
            let qos = match record.class {
                MessageClass::Telemetry => {
                    self.pacer.take();
                    if self.settings.batch.is_some() && batch::is_window(&record.payload) {
                        self.held.push(record, now);
                        continue;
                    }
                    self.byte_pacer
                        .take_n((record.topic.len() + record.payload.len()) as u64);
                    self.settings.data_qos
                }
                MessageClass::Event | MessageClass::Capture => QoS::AtLeastOnce,
            };
            let entry = match qos {
                QoS::AtMostOnce => Entry::RecordAtMostOnce(record.seq),
                _ => Entry::Record(record.seq),
            };
            self.ledger.submitted(entry.clone());
            let replay = !self.attempted.insert(record.seq);
            self.attempted_dirty |= !replay;
            let payload = if replay {
                mark_replay(&record.payload)
            } else {
                record.payload.clone()
            };
            self.count_bytes(payload.len());
            actions.push(Action::Publish(Publish {
                topic: record.topic.clone(),
                qos,
                retain: false,
                payload,
                entry,
                fresh: if replay { Vec::new() } else { vec![record.seq] },
                records: vec![record],
                replay,
                compress: false,
            }));
        }
        // Records evicted unacknowledged leave their seq behind: keep no more than the
        // backlog and the window can hold (the oldest go first; a lost flag errs to absent).
        let bound = if self.attempted.len() > self.window() {
            backlog.waiting() + self.window()
        } else {
            usize::MAX
        };
        while self.attempted.len() > bound {
            self.attempted.pop_first();
            self.attempted_dirty = true;
        }
    }

    /// May queued telemetry go now (both pacers have a token)?
    fn telemetry_may_go(&mut self, now: Instant) -> bool {
        // Both are asked (each refills); `&` not `&&`. A batch whose bytes are not counted
        // yet holds telemetry back under a byte limit (else one tick would make many).
        let bytes_known = self.uncharged == 0 || self.byte_pacer.rate() == 0.0;
        self.pacer.available(now) & self.byte_pacer.available(now) && bytes_known
    }

    /// The task compressed a batch's publish: its payload is now `compressed` (counted in
    /// `sent_bytes`, and taken from the byte pacer with its topic).
    pub fn batch_compressed(&mut self, publish: &mut Publish, compressed: Vec<u8>) {
        if publish.compress {
            self.uncharged = self.uncharged.saturating_sub(1);
        }
        publish.payload = compressed;
        publish.compress = false;
        self.count_bytes(publish.payload.len());
        self.byte_pacer
            .take_n((publish.topic.len() + publish.payload.len()) as u64);
    }

    /// A batch's session ended while the task compressed it: it is dropped unsent (the end
    /// of the session cleared the ledger and rewound its records into the queue). Its
    /// seqs stay in the attempted set: marking a record replay once too often is harmless,
    /// forgetting one that a new session already handed over is not.
    pub fn batch_dropped(&mut self, publish: &Publish) {
        if publish.compress {
            self.uncharged = self.uncharged.saturating_sub(1);
        }
    }

    fn count_bytes(&self, n: usize) {
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        self.stats.sent_bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// Is the held batch due: full, or its oldest window has waited the interval?
    fn batch_due(&self, now: Instant) -> bool {
        match (self.held.since, self.settings.batch) {
            (Some(since), Some(interval)) => self.held.full() || now >= since + interval,
            _ => false,
        }
    }

    /// The held windows as one publish on `batch`.
    fn send_batch(&mut self, actions: &mut Vec<Action>) {
        let records = self.held.take();
        if records.is_empty() {
            return;
        }
        // Each item as it would go alone: marked replay if handed over before.
        let mut fresh = Vec::new();
        let items: Vec<Vec<u8>> = records
            .iter()
            .map(|r| {
                if self.attempted.insert(r.seq) {
                    self.attempted_dirty = true;
                    fresh.push(r.seq);
                    r.payload.clone()
                } else {
                    mark_replay(&r.payload)
                }
            })
            .collect();
        let replay = fresh.is_empty();
        // Compressed by the task, off the async threads ([`Publish::compress`]).
        let payload = batch::batch_json(&self.settings.gw, &items);
        let seqs: Arc<[u64]> = records.iter().map(|r| r.seq).collect();
        let qos = self.settings.data_qos;
        let entry = match qos {
            QoS::AtMostOnce => Entry::BatchAtMostOnce(seqs),
            _ => Entry::Batch(seqs),
        };
        self.ledger.submitted(entry.clone());
        self.uncharged += 1;
        actions.push(Action::Publish(Publish {
            topic: self.settings.topics.batch(),
            qos,
            retain: false,
            payload,
            entry,
            records,
            replay,
            fresh,
            compress: true,
        }));
    }

    /// The clean stop's retained `offline`, or the end if there is no session for it.
    fn send_offline(&mut self, now: Instant, actions: &mut Vec<Action>) {
        self.offline_sent = Some(now);
        if !self.connected {
            self.finished = true;
            actions.push(Action::Finish);
            return;
        }
        let entry = Entry::Untracked { offline: true };
        self.ledger.submitted(entry.clone());
        actions.push(Action::Publish(Publish {
            topic: self.settings.topics.state(),
            qos: QoS::AtLeastOnce,
            retain: true,
            payload: state_payload(&self.settings.gw, false, None),
            entry,
            records: Vec::new(),
            replay: false,
            fresh: Vec::new(),
            compress: false,
        }));
    }
}

#[cfg(test)]
mod tests;
