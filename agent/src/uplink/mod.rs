//! The MQTT uplink: one session to the platform's broker.
//!
//! Two tasks, kept apart like rumqtt's own design:
//! - the **connection** task owns rumqttc's `EventLoop` and does nothing but poll it, so it is
//!   never cancelled mid-packet; each connection gets a fresh client and event loop, so no
//!   request or event of a dead connection can leak into the next one (and a stuck client is
//!   never reused). It backs off 1 s doubling to 60 s, with jitter, between attempts.
//! - the **publisher** task owns the client handle and a [`publisher::Publisher`], the
//!   protocol state with the [`ledger::Ledger`] (no I/O, unit-tested): it moves network
//!   events and time into it and performs the actions it answers. On every ConnAck it publishes the retained `online` birth and subscribes to `cmd`; it feeds queued
//!   records to the client under the inflight window, acknowledges them in the queue on
//!   PUBACK, rewinds the queue when a connection drops, publishes `health`, and on a clean
//!   stop drains the queue, publishes `offline` and disconnects. Telemetry goes out at most
//!   at `replay_rate` messages and `replay_bytes_rate` bytes per second ([`pacer::Pacer`]),
//!   so a backlog replays steadily; events are not paced. A batch is compressed on a
//!   blocking thread (`spawn_blocking`), never on the async workers that run the pipeline,
//!   and the task does not wait for it ([`compressing`]): events go out meanwhile.
//!
//! Sessions are opened through [`session::SessionSpec`], the builder `check`, `tail` and
//! `zero` use too: MQTT 5 by default, announcing `[mqtt] max_packet` as Maximum Packet Size
//! so the broker drops oversize messages (a huge publish on `cmd` is never delivered, the
//! session stays up), and a PUBACK reason code of 0x80 or more leaves the record queued
//! (counted in `publish_refused`; it goes again after the next reconnect). With
//! `protocol = "3.1.1"` a packet over `max_packet` that a misconfigured broker sends anyway
//! ends the connection: it is counted (`oversize_packets`), logged with the broker setting
//! to fix, and the agent reconnects at once (a clean session: the broker forgets the packet)
//! rather than with a growing back-off.
//!
//! With `mqtts://` every connection is TLS ([`tls`]): the client configuration is built when
//! the uplink starts (bad files stop the agent) and rebuilt before each attempt, so renewed
//! certificates are picked up; a TLS failure is retried with the same back-off as any other.
//! A renewed pair (`<cert_file>.new` / `<key_file>.new`, [`tls::renewal`]) is tried first;
//! if that attempt fails before CONNACK the current pair is tried at once, in the same
//! back-off step, and the new pair is refused only if the current one gets the session.

mod compressing;
pub mod config;
pub mod ledger;
pub mod pacer;
pub mod publisher;
pub mod session;
pub mod tls;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::QoS;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use self::compressing::{Compressing, Finished};
use self::config::{BrokerAddress, MqttProtocol};
use self::publisher::{Action, Publisher};
use self::session::{Client, Event, SessionError, SessionSpec, SetupError, Will};
use crate::backoff::Backoff;
use crate::feed::{state_payload, Topics};
use crate::queue::Queue;

/// After an oversize packet (3.1.1), how soon another one still counts as a repeat: the
/// first reconnect is immediate, a repeat within this time waits [`OVERSIZE_RETRY`] (a
/// retained oversize message would otherwise make a busy loop).
const OVERSIZE_REPEAT: Duration = Duration::from_secs(5);
/// The fixed delay before reconnecting after a repeated oversize packet.
const OVERSIZE_RETRY: Duration = Duration::from_secs(1);

/// What the uplink needs to know.
#[derive(Debug, Clone)]
pub struct UplinkConfig {
    /// Gateway id (client id).
    pub gw: String,
    /// Topic names.
    pub topics: Topics,
    /// Where the broker is.
    pub broker: BrokerAddress,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// QoS of telemetry.
    pub data_qos: QoS,
    /// Most QoS 1 publishes in flight.
    pub max_inflight: u16,
    /// How often `health` goes out.
    pub health_interval: Duration,
    /// The publisher's proof of life for the service watchdog.
    pub heartbeat: crate::service::Heartbeat,
    /// Most queued telemetry messages published per second (0 = no limit).
    pub replay_rate: u32,
    /// Most queued telemetry bytes (topic and payload) published per second (0 = no limit).
    pub replay_bytes_rate: u64,
    /// Batch telemetry windows over this interval (`[mqtt] batch`; `None` = off).
    pub batch: Option<Duration>,
    /// TLS files, for `mqtts://`.
    pub tls: Option<tls::TlsFiles>,
    /// MQTT user name and password.
    pub credentials: Option<(String, crate::secrets::Secret)>,
    /// MQTT 5 or 3.1.1.
    pub protocol: MqttProtocol,
    /// The largest packet taken in (`[mqtt] max_packet`).
    pub max_packet: u32,
    /// Where the seqs handed to a client but not acknowledged are kept across restarts (so
    /// they go out again marked `"replay": true`); `None` keeps them in memory only.
    pub attempted_file: Option<std::path::PathBuf>,
    /// What the birth says besides `online`.
    pub birth: crate::feed::BirthInfo,
}

/// Reads the attempted seqs saved by an earlier run (`first-last` ranges, one a line);
/// a missing or damaged file is an empty set (the flag errs towards absent).
pub fn load_attempted(path: &std::path::Path) -> Vec<u64> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for line in text.lines() {
        let (a, b) = line.split_once('-').unwrap_or((line, line));
        let (Ok(a), Ok(b)) = (a.trim().parse::<u64>(), b.trim().parse::<u64>()) else {
            continue;
        };
        // A damaged range cannot make the set unbounded.
        if b >= a && b - a < 1_000_000 {
            out.extend(a..=b);
        }
    }
    out
}

/// Saves the attempted seqs as ranges (write, fsync, rename).
pub fn save_attempted(path: &std::path::Path, seqs: &[u64]) -> std::io::Result<()> {
    use std::io::Write;
    let mut text = String::new();
    let mut i = 0;
    while i < seqs.len() {
        let start = seqs[i];
        let mut end = start;
        while i + 1 < seqs.len() && seqs[i + 1] == end + 1 {
            i += 1;
            end = seqs[i];
        }
        text.push_str(&format!("{start}-{end}\n"));
        i += 1;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Saves the publisher's attempted set off the async threads; a failure is logged (the next
/// run then marks fewer replays, never more).
async fn persist_attempted(path: Option<&std::path::Path>, seqs: Vec<u64>) {
    let Some(path) = path else { return };
    let target = path.to_owned();
    match tokio::task::spawn_blocking(move || save_attempted(&target, &seqs)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot save the attempted seqs")
        }
        Err(e) => tracing::warn!(error = %e, "cannot save the attempted seqs"),
    }
}

/// Uplink counters, shared with `health`.
#[derive(Debug, Default)]
pub struct UplinkStats {
    /// Is a session up right now?
    pub connected: AtomicBool,
    /// Successful connections (ConnAck accepted).
    pub connects: AtomicU64,
    /// Failed connection attempts and dropped sessions.
    pub connection_errors: AtomicU64,
    /// Queued messages the broker acknowledged.
    pub published: AtomicU64,
    /// Batches (`{root}/{gw}/batch`) the broker acknowledged.
    pub batches: AtomicU64,
    /// Payload bytes of queued messages and batches submitted (resends included): the
    /// replay's rate in bytes.
    pub sent_bytes: AtomicU64,
    /// Publishes refused by the client (its request queue was full).
    pub submit_errors: AtomicU64,
    /// Commands received on `cmd`.
    pub commands: AtomicU64,
    /// Packets over `max_packet` the broker sent anyway (3.1.1; each cost a reconnect).
    pub oversize_packets: AtomicU64,
    /// Publishes the broker acknowledged with a refusal (MQTT 5 reason code >= 0x80).
    pub publish_refused: AtomicU64,
    /// Publishes handed to the client (every attempt: resends and state/health included).
    pub handed: AtomicU64,
    /// Their topic plus payload bytes.
    pub handed_bytes: AtomicU64,
    /// The client certificate in use and its renewal (`health` `tls`).
    pub tls: Arc<tls::renewal::TlsState>,
}

/// What the connection task tells the publisher.
#[derive(Debug)]
enum NetEvent {
    /// A new connection attempt, with its own client handle.
    NewClient(Client),
    /// The broker accepted the session.
    ConnAck,
    /// A publish left the client (`pkid` 0 for QoS 0).
    Outgoing(u16),
    /// The broker acknowledged `pkid` with this reason code (0 with 3.1.1).
    PubAck(u16, u8),
    /// A message arrived on `cmd`.
    Command(Vec<u8>),
    /// The session ended.
    Disconnected(String),
}

/// The uplink's session: the agent's own client id, the inflight window, the last will.
fn session_spec(
    config: &UplinkConfig,
    tls: Option<&Arc<tokio_rustls::rustls::ClientConfig>>,
) -> SessionSpec {
    let mut spec = SessionSpec::new(
        config.broker.clone(),
        config.gw.clone(),
        config.protocol,
        config.max_packet,
    );
    spec.keep_alive = config.keep_alive;
    spec.inflight = config.max_inflight;
    spec.capacity = usize::from(config.max_inflight) + 64;
    spec.tls = tls.cloned();
    spec.credentials = config.credentials.clone();
    spec.will = Some(Will {
        topic: config.topics.state(),
        payload: state_payload(&config.gw, false, None),
        retain: true,
    });
    spec
}

/// Handles to a running uplink.
#[derive(Debug)]
pub struct Uplink {
    stop: Option<oneshot::Sender<()>>,
    publisher: tokio::task::JoinHandle<()>,
}

impl Uplink {
    /// Starts the uplink. Commands received on `cmd` go to `commands`. `health` builds the
    /// health payload when it is due.
    pub fn start(
        config: UplinkConfig,
        queue: Arc<Queue>,
        stats: Arc<UplinkStats>,
        commands: mpsc::Sender<Vec<u8>>,
        health: Box<dyn Fn() -> Vec<u8> + Send>,
    ) -> Result<Uplink, SetupError> {
        let renewal = config
            .tls
            .as_ref()
            .filter(|_| config.broker.tls)
            .and_then(|files| tls::renewal::Renewal::new(files, stats.tls.clone()));
        if let Some(r) = &renewal {
            r.recover();
        }
        let tls = match (&config.tls, config.broker.tls) {
            (Some(files), true) => Some(tls::client_config(files)?),
            (None, true) => return Err(SetupError::NoCa(config.broker.clone())),
            (_, false) => None,
        };
        let (net_tx, net_rx) = mpsc::unbounded_channel();
        let (conn_stop_tx, conn_stop_rx) = oneshot::channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        tokio::spawn(connection_task(
            config.clone(),
            tls,
            renewal,
            net_tx,
            conn_stop_rx,
            stats.clone(),
        ));
        let publisher = tokio::spawn(publisher_task(
            config,
            queue,
            stats,
            net_rx,
            stop_rx,
            conn_stop_tx,
            commands,
            health,
        ));
        Ok(Uplink {
            stop: Some(stop_tx),
            publisher,
        })
    }

    /// Drains the queue (bounded), publishes `offline`, disconnects, and waits for all that.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.publisher.await;
    }
}

/// How one connection ended.
enum Ended {
    /// With this error.
    Error(SessionError),
    /// Cleanly, to try a certificate `cert_install` just wrote.
    Renew,
}

async fn connection_task(
    config: UplinkConfig,
    mut tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
    mut renewal: Option<tls::renewal::Renewal>,
    events: mpsc::UnboundedSender<NetEvent>,
    mut stop: oneshot::Receiver<()>,
    stats: Arc<UplinkStats>,
) {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    let cmd_topic = config.topics.cmd();
    let mut first_attempt = true;
    let mut last_oversize: Option<Instant> = None;
    // Why the last attempt, on the renewed pair, got no session: the current pair is being
    // tried at once; if it gets one, the renewed pair was refused.
    let mut new_pair_failed: Option<String> = None;
    let state = stats.tls.clone();
    loop {
        // Re-read the TLS files (a renewed certificate counts from the next attempt); the
        // first attempt uses what `start` just read.
        if let (Some(files), false) = (&config.tls, first_attempt) {
            match tls::client_config(files) {
                Ok(fresh) => {
                    tls = Some(fresh);
                    if let Some(r) = &renewal {
                        r.reloaded();
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot reload the TLS files; using the last good ones")
                }
            }
        }
        first_attempt = false;
        // A renewed pair goes first, except on the current pair's attempt right after it
        // failed.
        let candidate = match (&mut renewal, &new_pair_failed) {
            (Some(r), None) => r.candidate(),
            _ => None,
        };
        let on_new_pair = candidate.is_some();
        let installs = state.installs();
        let attempt_tls = candidate.clone().or_else(|| tls.clone());
        let (client, mut eventloop) = session_spec(&config, attempt_tls.as_ref()).connect();
        let own_client = client.clone();
        if events.send(NetEvent::NewClient(client)).is_err() {
            return;
        }
        let mut session_started: Option<Instant> = None;
        let mut renewing = false;
        let ended = loop {
            let polled = tokio::select! {
                polled = eventloop.poll() => polled,
                _ = state.renew_now.notified(), if session_started.is_some() && !renewing => {
                    if state.installs() != installs {
                        tracing::info!("a renewed client certificate was installed; reconnecting to use it");
                        renewing = own_client.try_disconnect().is_ok();
                    }
                    continue;
                }
                _ = &mut stop => return,
            };
            let forward = match polled {
                Ok(Event::ConnAck) => {
                    session_started = Some(Instant::now());
                    if let Some(r) = renewal.as_mut() {
                        if on_new_pair {
                            match r.accepted() {
                                Ok(()) => tls = candidate.clone(),
                                Err(e) => {
                                    tracing::error!(error = %e, "the broker accepted the renewed certificate pair but it cannot replace the old one; it stays pending")
                                }
                            }
                        } else if let Some(cause) = new_pair_failed.take() {
                            r.refused(&cause);
                        }
                    }
                    Some(NetEvent::ConnAck)
                }
                Ok(Event::Published(pkid)) => Some(NetEvent::Outgoing(pkid)),
                Ok(Event::PubAck { pkid, code }) => Some(NetEvent::PubAck(pkid, code)),
                Ok(Event::Message { topic, payload }) if topic == cmd_topic => {
                    Some(NetEvent::Command(payload))
                }
                Ok(Event::Disconnecting) if renewing => {
                    let _ =
                        tokio::time::timeout(Duration::from_millis(500), eventloop.poll()).await;
                    break Ended::Renew;
                }
                Ok(Event::Disconnecting) => {
                    let _ = events.send(NetEvent::Disconnected("clean stop".into()));
                    // Let the DISCONNECT reach the broker before the socket closes.
                    let _ =
                        tokio::time::timeout(Duration::from_millis(500), eventloop.poll()).await;
                    return;
                }
                Ok(_) => None,
                Err(e) => break Ended::Error(e),
            };
            if let Some(ev) = forward {
                if events.send(ev).is_err() {
                    return;
                }
            }
        };
        stats.connected.store(false, Ordering::Relaxed);
        let reason = match ended {
            Ended::Renew => {
                if events
                    .send(NetEvent::Disconnected(
                        "reconnecting with the renewed client certificate".into(),
                    ))
                    .is_err()
                {
                    return;
                }
                backoff.reset();
                drop(eventloop);
                continue;
            }
            Ended::Error(e) => e,
        };
        stats.connection_errors.fetch_add(1, Ordering::Relaxed);
        if events
            .send(NetEvent::Disconnected(reason.to_string()))
            .is_err()
        {
            return;
        }
        if on_new_pair && session_started.is_none() {
            // Not the back-off's business yet: the current pair goes at once.
            let cause = reason.to_string();
            tracing::warn!(broker = %config.broker, error = %cause, "no session on the renewed certificate pair; trying the current pair at once");
            new_pair_failed = Some(cause);
            drop(eventloop);
            continue;
        }
        // The current pair failed too: nothing learnt about the renewed one.
        new_pair_failed = None;
        if session_started.is_some_and(|t| t.elapsed() > Duration::from_secs(60)) {
            backoff.reset();
        }
        if let SessionError::Oversize { size, limit } = reason {
            // The broker forwarded what this client said it would not take (3.1.1 has no way
            // to say so). Not the network's fault: reconnect at once, without growing the
            // back-off; the clean session makes the broker forget the packet.
            stats.oversize_packets.fetch_add(1, Ordering::Relaxed);
            let repeat = last_oversize.is_some_and(|t| t.elapsed() < OVERSIZE_REPEAT);
            last_oversize = Some(Instant::now());
            let delay = if repeat {
                OVERSIZE_RETRY
            } else {
                Duration::ZERO
            };
            tracing::error!(
                broker = %config.broker,
                size,
                max_packet = limit,
                retry_in_ms = delay.as_millis() as u64,
                "the broker sent a packet over [mqtt] max_packet; reconnecting. Fix the broker: Mosquitto message_size_limit {limit} (or lower), or use protocol = \"5\""
            );
            drop(eventloop);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = &mut stop => return,
            }
            continue;
        }
        let reason = reason.to_string();
        let delay = backoff.next_delay();
        match tls::hint(&reason) {
            Some(hint) => {
                tracing::warn!(broker = %config.broker, error = %reason, hint, retry_in_ms = delay.as_millis() as u64, "MQTT connection failed")
            }
            None => {
                tracing::warn!(broker = %config.broker, error = %reason, retry_in_ms = delay.as_millis() as u64, "MQTT connection failed")
            }
        }
        drop(eventloop);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = &mut stop => return,
        }
    }
}

/// The publisher task: moves events into the [`Publisher`] and performs what it answers.
#[allow(clippy::too_many_arguments)]
async fn publisher_task(
    config: UplinkConfig,
    queue: Arc<Queue>,
    stats: Arc<UplinkStats>,
    mut net: mpsc::UnboundedReceiver<NetEvent>,
    mut stop: oneshot::Receiver<()>,
    conn_stop: oneshot::Sender<()>,
    commands: mpsc::Sender<Vec<u8>>,
    health: Box<dyn Fn() -> Vec<u8> + Send>,
) {
    let settings = publisher::Settings {
        gw: config.gw.clone(),
        topics: config.topics.clone(),
        data_qos: config.data_qos,
        window: usize::from(config.max_inflight),
        health_interval: config.health_interval,
        replay_rate: config.replay_rate,
        replay_bytes_rate: config.replay_bytes_rate,
        batch: config.batch,
        birth: config.birth.clone(),
    };
    let mut publisher = Publisher::new(settings, stats, health, Instant::now());
    if let Some(path) = config.attempted_file.clone() {
        let earlier = tokio::task::spawn_blocking(move || load_attempted(&path))
            .await
            .unwrap_or_default();
        publisher = publisher.with_attempted(earlier);
    }
    let mut client: Option<Client> = None;
    let mut compressing = Compressing::default();
    let mut heartbeat_tick = tokio::time::interval(Duration::from_secs(1));
    while !publisher.is_finished() {
        let wake = publisher.next_wake(Instant::now(), &*queue);
        let actions = tokio::select! {
            ev = net.recv() => {
                let Some(ev) = ev else { break };
                match ev {
                    NetEvent::NewClient(c) => {
                        compressing.session_ended();
                        client = Some(c);
                        publisher.new_session();
                        Vec::new()
                    }
                    NetEvent::ConnAck => {
                        tracing::info!(broker = %config.broker, "MQTT session up");
                        publisher.connected()
                    }
                    NetEvent::Outgoing(pkid) => publisher.outgoing(pkid),
                    NetEvent::PubAck(pkid, code) => publisher.puback(pkid, code),
                    NetEvent::Command(payload) => publisher.command(payload),
                    NetEvent::Disconnected(reason) => {
                        compressing.session_ended();
                        publisher.disconnected(&reason)
                    }
                }
            }
            done = compressing.next(), if compressing.is_busy() => match done {
                Finished::Ready(mut p, z) => {
                    publisher.batch_compressed(&mut p, z);
                    vec![Action::Publish(p)]
                }
                Finished::Failed(p, e) => {
                    // Not sent: its records are due again (counted as a submit error).
                    tracing::error!(error = %e, "compressing a batch failed; its windows stay queued");
                    publisher.client_refused(&p)
                }
                Finished::Stale(p) => {
                    publisher.batch_dropped(&p);
                    Vec::new()
                }
            },
            _ = queue.wait_ready(), if publisher.wants_records() => Vec::new(),
            _ = tokio::time::sleep_until(wake) => Vec::new(),
            _ = heartbeat_tick.tick() => {
                config.heartbeat.beat();
                if publisher.take_attempted_changes() {
                    let seqs = publisher.attempted().iter().copied().collect();
                    persist_attempted(config.attempted_file.as_deref(), seqs).await;
                }
                Vec::new()
            }
            _ = &mut stop, if !publisher.is_stopping() => {
                publisher.stop(Instant::now());
                Vec::new()
            }
        };
        let mut io = Io {
            client: client.as_ref(),
            queue: &queue,
            commands: &commands,
            compressing: &mut compressing,
        };
        io.perform(actions, &mut publisher);
        if !publisher.is_finished() {
            let actions = publisher.tick(Instant::now(), io.queue);
            io.perform(actions, &mut publisher);
        }
    }
    let _ = conn_stop.send(());
    let seqs = publisher.attempted().iter().copied().collect();
    persist_attempted(config.attempted_file.as_deref(), seqs).await;
    tracing::debug!("uplink stopped");
}

/// What the publisher task performs its actions on.
struct Io<'a> {
    client: Option<&'a Client>,
    queue: &'a Queue,
    commands: &'a mpsc::Sender<Vec<u8>>,
    compressing: &'a mut Compressing,
}

impl Io<'_> {
    /// Performs the publisher's actions in order. Once the client refuses a record, the later
    /// records of the same batch are not tried (they would go out of order): they are given
    /// back to the queue too. A batch's JSON goes to [`Compressing`] first; it is submitted
    /// when it is compressed, and the actions after it are performed meanwhile.
    fn perform(&mut self, actions: Vec<Action>, publisher: &mut Publisher) {
        let Io {
            client,
            queue,
            commands,
            ..
        } = *self;
        let compressing = &mut *self.compressing;
        let mut work: std::collections::VecDeque<Action> = actions.into();
        let mut client_full = false;
        while let Some(action) = work.pop_front() {
            match action {
                Action::Publish(p) => {
                    if p.compress {
                        compressing.start(p);
                        continue;
                    }
                    let sent = match client {
                        Some(c) if !client_full || p.records.is_empty() => c
                            .try_publish(p.topic.clone(), p.qos, p.retain, p.payload.clone())
                            .map_err(|e| {
                                if !p.records.is_empty() {
                                    tracing::debug!(error = %e, "client busy; will retry");
                                } else {
                                    tracing::warn!(topic = %p.topic, error = %e, "cannot publish");
                                }
                            })
                            .is_ok(),
                        _ => false,
                    };
                    if sent {
                        publisher.count_sent(p.topic.len() + p.payload.len());
                    } else {
                        client_full |= !p.records.is_empty();
                        for a in publisher.client_refused(&p).into_iter().rev() {
                            work.push_front(a);
                        }
                    }
                }
                Action::Subscribe(filter) => {
                    if let Some(Err(e)) = client.map(|c| c.try_subscribe(filter, QoS::AtLeastOnce))
                    {
                        tracing::warn!(error = %e, "cannot subscribe to cmd");
                    }
                }
                Action::Ack(seq) => queue.ack(seq),
                Action::Unsend(record) => queue.unsend(&record),
                Action::Rewind => queue.rewind(),
                Action::Command(payload) => {
                    if commands.try_send(payload).is_err() {
                        tracing::warn!("command dropped: the command handler is busy");
                    }
                }
                Action::Disconnect => {
                    if let Some(c) = client {
                        let _ = c.try_disconnect();
                    }
                }
                Action::Finish => {}
            }
        }
    }
}
