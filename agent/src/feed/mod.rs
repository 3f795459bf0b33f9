//! The MQTT feed contract v1 (`docs/mqtt-feed.md`; JSON Schemas in `config/schemas/`): topic
//! names and payloads.
//!
//! This is the one place that decides a topic name, a payload field or its spelling, so the
//! contract can be checked against `docs/mqtt-feed.md` by reading one file. Everything the
//! pipeline produces is a [`Message`]; a [`Renderer`] turns it into a [`Rendered`] record
//! (topic, class, payload with a slot for the `seq`), which is all the queue stores: the queue
//! fills in the `seq` with [`Rendered::payload`] and never sees a topic rule or a JSON field.

pub mod batch;
pub mod merge;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::clock::ClockStatus;

use serde::Serialize;

/// Payload version carried as `"v"` in every payload.
pub const FEED_VERSION: u8 = 1;

/// Wall-clock time as milliseconds since the Unix epoch (UTC).
pub type UnixMillis = i64;

/// The current wall-clock time.
pub fn now_millis() -> UnixMillis {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

/// Formats a time as RFC 3339 UTC with milliseconds, e.g. `2026-11-28T05:04:00.000Z`.
pub fn rfc3339(ms: UnixMillis) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

/// Topic names under `{root}/{gw}`.
#[derive(Debug, Clone)]
pub struct Topics {
    base: String,
}

impl Topics {
    /// Topics of gateway `gw` under `root`.
    pub fn new(root: &str, gw: &str) -> Topics {
        Topics {
            base: format!("{root}/{gw}"),
        }
    }
    /// `{root}/{gw}/state`: retained online/offline.
    pub fn state(&self) -> String {
        format!("{}/state", self.base)
    }
    /// `{root}/{gw}/data/{dev}`: telemetry windows and lift status.
    pub fn data(&self, dev: &str) -> String {
        format!("{}/data/{dev}", self.base)
    }
    /// `{root}/{gw}/event/{dev}`: alarms and state changes.
    pub fn event(&self, dev: &str) -> String {
        format!("{}/event/{dev}", self.base)
    }
    /// `{root}/{gw}/capture/{dev}`: the raw waveform around an alarm (v1.1).
    pub fn capture(&self, dev: &str) -> String {
        format!("{}/capture/{dev}", self.base)
    }
    /// `{root}/{gw}/health`.
    pub fn health(&self) -> String {
        format!("{}/health", self.base)
    }
    /// `{root}/{gw}/batch`: compact telemetry batches ([`batch`], v1.1).
    pub fn batch(&self) -> String {
        format!("{}/batch", self.base)
    }
    /// `{root}/{gw}/cmd`: commands in.
    pub fn cmd(&self) -> String {
        format!("{}/cmd", self.base)
    }
    /// `{root}/{gw}/reply`: one reply per command.
    pub fn reply(&self) -> String {
        format!("{}/reply", self.base)
    }
}

/// Severities of events (platforms map them to yellow, orange, red).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Yellow.
    Minor,
    /// Orange.
    Major,
    /// Red.
    Critical,
}

/// Whether an event's condition now holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventState {
    /// The rule started to hold.
    Active,
    /// The rule stopped holding.
    Cleared,
}

/// Statistics of one channel over one window (`ch.<name>` in a data payload).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChannelWindow {
    /// Unit (SenML name).
    pub u: &'static str,
    /// Number of samples.
    pub n: u64,
    /// Samples the node's advertised rate promises over the window's span (v1.1).
    pub expected: u64,
    /// Mean.
    pub mean: f32,
    /// Minimum.
    pub min: f32,
    /// Maximum.
    pub max: f32,
    /// Last sample of the window.
    pub last: f32,
    /// Population standard deviation.
    pub std: f32,
}

/// A stateful event on `event/{dev}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// When this transition happened.
    #[serde(serialize_with = "ser_time")]
    pub ts: UnixMillis,
    /// Event name (`sensor_offline`, `threshold`, `trapped_passenger`, ...).
    pub event: &'static str,
    /// Severity.
    pub severity: Severity,
    /// Active or cleared.
    pub state: EventState,
    /// When the condition started (on both transitions).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_opt_time"
    )]
    pub since: Option<UnixMillis>,
    /// The channel concerned, for channel events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ch: Option<String>,
    /// Unit of `value` and `limit`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub u: Option<&'static str>,
    /// The value that triggered the transition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f32>,
    /// The limit crossed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<f32>,
    /// Anything else the event carries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

impl Event {
    /// An event with only the required fields set.
    pub fn new(
        ts: UnixMillis,
        event: &'static str,
        severity: Severity,
        state: EventState,
    ) -> Event {
        Event {
            ts,
            event,
            severity,
            state,
            since: None,
            ch: None,
            u: None,
            value: None,
            limit: None,
            detail: None,
        }
    }
}

/// What started a capture (`trigger` in a capture payload): the alarm event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trigger {
    /// The event's name (`threshold`, `rate_of_change`).
    pub event: &'static str,
    /// Its severity.
    pub severity: Severity,
    /// Its `ts`.
    #[serde(serialize_with = "ser_time")]
    pub ts: UnixMillis,
    /// Its `seq`: known once the queue numbered the event (see
    /// [`crate::pipeline::Pipeline::queued`]); a part is only queued once it is known.
    pub seq: Option<u64>,
}

/// One part of a capture (`capture/{dev}`): at most [`CAPTURE_PART_VALUES`] raw values of one
/// channel, `values[i]` sampled at `t0 + i * period_us`.
#[derive(Debug, Clone, PartialEq)]
pub struct CapturePart {
    /// Channel feed name.
    pub ch: String,
    /// Unit.
    pub u: &'static str,
    /// The alarm that started the capture.
    pub trigger: Trigger,
    /// Time of `values[0]`, ms (fractional: the node's sample time).
    pub t0: f64,
    /// Sample period, microseconds.
    pub period_us: u32,
    /// The gateway zero offset in force (0 where the node keeps the zero).
    pub zero: f64,
    /// 1-based part number.
    pub part: u32,
    /// Parts of this capture.
    pub parts: u32,
    /// The node's values, in the channel's unit.
    pub values: Vec<f32>,
}

/// Most values in one capture part (the contract's limit).
pub const CAPTURE_PART_VALUES: usize = 1024;

/// Everything that goes through the queue (and so carries a `seq`).
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// One telemetry window of one device.
    Data {
        /// Device id.
        dev: String,
        /// Window start.
        start: UnixMillis,
        /// Window end (exclusive).
        end: UnixMillis,
        /// Channels by feed name.
        ch: BTreeMap<String, ChannelWindow>,
    },
    /// An event of one device.
    Event {
        /// Device id.
        dev: String,
        /// The event.
        event: Event,
    },
    /// The answer to one command.
    Reply(Reply),
    /// One part of the raw waveform of a channel around an alarm (`capture/{dev}`).
    Capture {
        /// Device id.
        dev: String,
        /// The part.
        part: Box<CapturePart>,
    },
    /// The status of one lift (`data/{lift}`), on change and at least every 60 s.
    LiftStatus {
        /// Device id (the lift).
        dev: String,
        /// When the controller was read.
        ts: UnixMillis,
        /// What it said.
        lift: LiftStatus,
        /// With `[[lift]] status = "trip"`: the trip this status starts or ends.
        trip: Option<Trip>,
    },
}

/// Which end of a trip a lift status marks (`trip.phase`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TripPhase {
    /// The car started to run.
    Start,
    /// The car stopped.
    End,
}

/// The `trip` object of a lift status sent by the trip (`[[lift]] status = "trip"`): a trip
/// runs from the reading where the car starts running to the first where it stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Trip {
    /// Start or end.
    pub phase: TripPhase,
    /// The floor the car left.
    pub from: i16,
    /// End: the floor the car stopped at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<i16>,
    /// When the car started to run (the reading that saw it).
    #[serde(serialize_with = "ser_time")]
    pub started: UnixMillis,
    /// End: from `started` to the reading that saw the car stand, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// End: the highest speed read during the trip, mm/s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_speed_mm_s: Option<u16>,
    /// Start: door cycles at the stop the car leaves (since the previous trip ended; absent
    /// for the first trip seen).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub door_cycles: Option<u32>,
    /// End: the door read `closed` in every reading of the trip.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub doors_closed: Option<bool>,
}

/// A lift's service mode (`lift.mode`), from the generic profile's register 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LiftMode {
    /// 0: normal (automatic) service.
    Normal,
    /// 1: inspection or maintenance.
    Inspection,
    /// 2: fire service.
    FireService,
    /// 3: out of service.
    OutOfService,
    /// 4: independent service.
    Independent,
    /// 5: running on emergency power.
    EmergencyPower,
}

/// Travel direction (`lift.direction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LiftDirection {
    /// 0: not moving.
    Stopped,
    /// 1: up.
    Up,
    /// 2: down.
    Down,
}

/// Car door state (`lift.door`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LiftDoor {
    /// 0: closed.
    Closed,
    /// 1: opening.
    Opening,
    /// 2: open.
    Open,
    /// 3: closing.
    Closing,
}

/// The `lift` object of a lift status payload (field names are the contract's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LiftStatus {
    /// Service mode.
    pub mode: LiftMode,
    /// Current floor (basements negative).
    pub floor: i16,
    /// Travel direction.
    pub direction: LiftDirection,
    /// Door state.
    pub door: LiftDoor,
    /// Car running.
    pub running: bool,
    /// Car levelled in a door zone.
    pub door_zone: bool,
    /// Car occupied.
    pub occupied: bool,
    /// Car speed, mm/s.
    pub speed_mm_s: u16,
    /// Car load, % of rated.
    pub load_pct: u16,
    /// Car position above the pit, mm.
    pub position_mm: u32,
    /// The controller's fault code (0 = none).
    pub fault_code: u16,
    /// Trips since commissioning.
    pub run_count: u32,
    /// Door open/close cycles.
    pub door_cycles: u32,
}

/// The answer to one command on `reply`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reply {
    /// The command's `id` (empty if the command had none we could read).
    pub id: String,
    /// Did it succeed?
    pub ok: bool,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What it returned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

/// Which eviction and priority class a message belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MessageClass {
    /// Events and replies: sent first, evicted last.
    Event,
    /// Captures: sent after events and before telemetry; evicted after telemetry and
    /// before events.
    Capture,
    /// Telemetry: evicted first when the queue is full.
    Telemetry,
}

impl Message {
    /// The message's class.
    pub fn class(&self) -> MessageClass {
        match self {
            Message::Data { .. } | Message::LiftStatus { .. } => MessageClass::Telemetry,
            Message::Event { .. } | Message::Reply(_) => MessageClass::Event,
            Message::Capture { .. } => MessageClass::Capture,
        }
    }

    /// The device the message is about (none for replies).
    pub fn dev(&self) -> Option<&str> {
        match self {
            Message::Data { dev, .. }
            | Message::Event { dev, .. }
            | Message::Capture { dev, .. }
            | Message::LiftStatus { dev, .. } => Some(dev),
            Message::Reply(_) => None,
        }
    }

    /// The topic it is published on.
    pub fn topic(&self, topics: &Topics) -> String {
        match self {
            Message::Data { dev, .. } | Message::LiftStatus { dev, .. } => topics.data(dev),
            Message::Event { dev, .. } => topics.event(dev),
            Message::Capture { dev, .. } => topics.capture(dev),
            Message::Reply(_) => topics.reply(),
        }
    }

    /// The JSON payload, with the gateway id and the queue's `seq`.
    pub fn render(&self, gw: &str, seq: u64) -> Vec<u8> {
        Rendered::template(self.class(), String::new(), self.payload_json(gw, true)).payload(seq)
    }

    /// The JSON payload with `"seq":0` (the template [`Rendered`] cuts the `0` out of); a
    /// data, lift-status or event message made while the clock is not `synced` carries
    /// `"clock":"unsynced"`.
    fn payload_json(&self, gw: &str, synced: bool) -> Vec<u8> {
        let seq = 0;
        let clock = (!synced).then_some(UNSYNCED);
        let result = match self {
            Message::Data {
                dev,
                start,
                end,
                ch,
            } => serde_json::to_vec(&DataPayload {
                v: FEED_VERSION,
                gw,
                dev,
                seq,
                start: rfc3339(*start),
                end: rfc3339(*end),
                clock,
                ch,
            }),
            Message::Event { dev, event } => serde_json::to_vec(&EventPayload {
                v: FEED_VERSION,
                gw,
                dev,
                seq,
                clock,
                event,
            }),
            Message::LiftStatus {
                dev,
                ts,
                lift,
                trip,
            } => serde_json::to_vec(&LiftPayload {
                v: FEED_VERSION,
                gw,
                dev,
                seq,
                ts: rfc3339(*ts),
                clock,
                lift,
                trip: trip.as_ref(),
            }),
            Message::Capture { dev, part } => serde_json::to_vec(&CapturePayload {
                v: FEED_VERSION,
                gw,
                dev,
                seq,
                ch: &part.ch,
                u: part.u,
                trigger: &part.trigger,
                t0: rfc3339(part.t0.round() as i64),
                period_us: part.period_us,
                zero: part.zero,
                part: part.part,
                parts: part.parts,
                values: &part.values,
            }),
            Message::Reply(reply) => serde_json::to_vec(&ReplyPayload {
                v: FEED_VERSION,
                gw,
                seq,
                reply,
            }),
        };
        // Serialising these plain structs cannot fail (no maps with non-string keys, no I/O).
        result.unwrap_or_default()
    }
}

#[derive(Serialize)]
struct DataPayload<'a> {
    v: u8,
    gw: &'a str,
    dev: &'a str,
    seq: u64,
    start: String,
    end: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    clock: Option<&'static str>,
    ch: &'a BTreeMap<String, ChannelWindow>,
}

/// The top-level `clock` of a message made while the system clock was not synchronised.
const UNSYNCED: &str = "unsynced";

#[derive(Serialize)]
struct LiftPayload<'a> {
    v: u8,
    gw: &'a str,
    dev: &'a str,
    seq: u64,
    ts: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    clock: Option<&'static str>,
    lift: &'a LiftStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    trip: Option<&'a Trip>,
}

#[derive(Serialize)]
struct EventPayload<'a> {
    v: u8,
    gw: &'a str,
    dev: &'a str,
    seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    clock: Option<&'static str>,
    #[serde(flatten)]
    event: &'a Event,
}

#[derive(Serialize)]
struct CapturePayload<'a> {
    v: u8,
    gw: &'a str,
    dev: &'a str,
    seq: u64,
    ch: &'a str,
    u: &'static str,
    trigger: &'a Trigger,
    t0: String,
    period_us: u32,
    zero: f64,
    part: u32,
    parts: u32,
    values: &'a [f32],
}

#[derive(Serialize)]
struct ReplyPayload<'a> {
    v: u8,
    gw: &'a str,
    seq: u64,
    #[serde(flatten)]
    reply: &'a Reply,
}

/// Renders messages of one gateway: topic names and payloads.
#[derive(Debug, Clone)]
pub struct Renderer {
    gw: String,
    topics: Topics,
    clock: Option<Arc<ClockStatus>>,
}

impl Renderer {
    /// A renderer for gateway `gw` with these topics.
    pub fn new(gw: &str, topics: Topics) -> Renderer {
        Renderer {
            gw: gw.to_owned(),
            topics,
            clock: None,
        }
    }

    /// Flags what it renders while `clock` says the system clock is not synchronised.
    pub fn with_clock(mut self, clock: Arc<ClockStatus>) -> Renderer {
        self.clock = Some(clock);
        self
    }

    /// `message` as a record for the queue: topic, class and payload, `seq` to be filled in.
    pub fn render(&self, message: &Message) -> Rendered {
        let synced = self.clock.as_ref().is_none_or(|c| c.synced());
        Rendered::template(
            message.class(),
            message.topic(&self.topics),
            message.payload_json(&self.gw, synced),
        )
    }
}

/// A message rendered for the queue: its topic, class and JSON payload, with the place where
/// the queue's `seq` goes (the `seq` is only known once the queue's writer numbers it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Priority and eviction class.
    pub class: MessageClass,
    /// MQTT topic.
    pub topic: String,
    /// The payload without the `seq`'s digits.
    body: Vec<u8>,
    /// Where the digits go in `body` (every payload has one; `None` would leave it as is).
    seq_at: Option<usize>,
}

/// The key every payload carries its `seq` under (always before any configurable name).
const SEQ_KEY: &[u8] = b"\"seq\":";

impl Rendered {
    /// Cuts the `0` of the first `"seq":0` out of `json`. The first occurrence is the key:
    /// inside a JSON string every `"` is escaped, and a string followed by `:` is a key, and
    /// every payload writes `seq` before any key that comes from configuration.
    fn template(class: MessageClass, topic: String, mut json: Vec<u8>) -> Rendered {
        let seq_at = json
            .windows(SEQ_KEY.len() + 1)
            .position(|w| w[..SEQ_KEY.len()] == *SEQ_KEY && w[SEQ_KEY.len()] == b'0')
            .map(|p| p + SEQ_KEY.len());
        if let Some(at) = seq_at {
            json.remove(at);
        }
        Rendered {
            class,
            topic,
            body: json,
            seq_at,
        }
    }

    /// The payload with `seq` filled in.
    pub fn payload(&self, seq: u64) -> Vec<u8> {
        let Some(at) = self.seq_at else {
            return self.body.clone();
        };
        let digits = seq.to_string();
        let mut out = Vec::with_capacity(self.body.len() + digits.len());
        out.extend_from_slice(&self.body[..at]);
        out.extend_from_slice(digits.as_bytes());
        out.extend_from_slice(&self.body[at..]);
        out
    }
}

/// How the previous run of the agent ended (`last_stop` in the birth).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LastStop {
    /// A clean stop (SIGTERM, SIGINT), or no previous run.
    #[default]
    Clean,
    /// Killed, crashed or a power cut.
    Unclean,
}

impl LastStop {
    /// The feed's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LastStop::Clean => "clean",
            LastStop::Unclean => "unclean",
        }
    }
}

/// What the birth says besides `online`.
#[derive(Debug, Clone, Default)]
pub struct BirthInfo {
    /// How the previous run ended.
    pub last_stop: LastStop,
    /// The system clock (none: reported as synchronised).
    pub clock: Option<Arc<ClockStatus>>,
}

/// The retained `state` payload: `online` (the birth, made at `ts`, with `birth`'s fields;
/// a clean stop says `offline`) or the last will.
pub fn state_payload(gw: &str, online: bool, birth: Option<(UnixMillis, &BirthInfo)>) -> Vec<u8> {
    let mut v = serde_json::json!({
        "v": FEED_VERSION,
        "gw": gw,
        "state": if online { "online" } else { "offline" },
    });
    if let (Some((ts, info)), Some(obj)) = (birth, v.as_object_mut()) {
        obj.insert("ts".into(), rfc3339(ts).into());
        obj.insert("agent".into(), env!("CARGO_PKG_VERSION").into());
        obj.insert("last_stop".into(), info.last_stop.as_str().into());
        let synced = info.clock.as_ref().is_none_or(|c| c.synced());
        obj.insert("clock".into(), serde_json::json!({ "synced": synced }));
    }
    v.to_string().into_bytes()
}

fn ser_time<S: serde::Serializer>(ms: &UnixMillis, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*ms))
}

fn ser_opt_time<S: serde::Serializer>(ms: &Option<UnixMillis>, s: S) -> Result<S::Ok, S::Error> {
    match ms {
        Some(ms) => s.serialize_str(&rfc3339(*ms)),
        None => s.serialize_none(),
    }
}

/// `payload` (a JSON object) with `"replay":true` added as its last member (unchanged if
/// it ends with that member already: a record `resend` marked).
pub fn mark_replay(payload: &[u8]) -> Vec<u8> {
    let trimmed = payload.trim_ascii_end();
    if trimmed.ends_with(b"\"replay\":true}") {
        return payload.to_vec();
    }
    let end = payload
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .filter(|&i| payload[i] == b'}');
    let Some(end) = end else {
        return payload.to_vec();
    };
    let empty = payload[..end]
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .is_some_and(|i| payload[i] == b'{');
    let mut out = Vec::with_capacity(payload.len() + 16);
    out.extend_from_slice(&payload[..end]);
    out.extend_from_slice(if empty {
        b"\"replay\":true}"
    } else {
        b",\"replay\":true}"
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const T0: UnixMillis = 1_795_842_240_000; // 2026-11-28T05:04:00.000Z

    #[test]
    fn a_rendered_record_takes_its_seq_where_the_contract_puts_it() {
        // Names that contain the key itself must not move the slot.
        let nasty = "x\\\"seq\\\":0\"seq\":0";
        let mut ch = BTreeMap::new();
        ch.insert(
            nasty.to_owned(),
            ChannelWindow {
                u: "deg",
                n: 1,
                expected: 1,
                mean: 0.0,
                min: 0.0,
                max: 0.0,
                last: 0.0,
                std: 0.0,
            },
        );
        let mut event = Event::new(T0, "threshold", Severity::Major, EventState::Active);
        event.ch = Some(nasty.into());
        let reply = Reply {
            id: nasty.into(),
            ok: true,
            error: None,
            result: None,
        };
        let messages = [
            Message::Data {
                dev: nasty.into(),
                start: T0,
                end: T0 + 10_000,
                ch,
            },
            Message::Event {
                dev: nasty.into(),
                event,
            },
            Message::Reply(reply),
        ];
        let renderer = Renderer::new(nasty, Topics::new("r", "gw"));
        for m in &messages {
            let r = renderer.render(m);
            assert_eq!(r.class, m.class());
            assert_eq!(r.topic, m.topic(&Topics::new("r", "gw")));
            for seq in [0, 7, 18_231, u64::MAX] {
                let v: Value = serde_json::from_slice(&r.payload(seq)).expect("json");
                assert_eq!(v["seq"], json!(seq), "{m:?}");
                assert_eq!(v["gw"], json!(nasty));
                let mut whole: Value =
                    serde_json::from_slice(&m.payload_json(nasty, true)).expect("json");
                whole["seq"] = json!(seq);
                assert_eq!(v, whole, "nothing but the seq changes");
            }
        }
    }

    #[test]
    fn times_are_rfc3339_utc_with_millis() {
        assert_eq!(rfc3339(T0), "2026-11-28T05:04:00.000Z");
        assert_eq!(rfc3339(T0 + 41_120), "2026-11-28T05:04:41.120Z");
    }

    #[test]
    fn topics_follow_the_contract() {
        let t = Topics::new("towerlink/v1", "sh-ja-0001");
        assert_eq!(t.state(), "towerlink/v1/sh-ja-0001/state");
        assert_eq!(
            t.data("panel-n12"),
            "towerlink/v1/sh-ja-0001/data/panel-n12"
        );
        assert_eq!(t.event("lift-2"), "towerlink/v1/sh-ja-0001/event/lift-2");
        assert_eq!(t.health(), "towerlink/v1/sh-ja-0001/health");
        assert_eq!(t.cmd(), "towerlink/v1/sh-ja-0001/cmd");
        assert_eq!(t.reply(), "towerlink/v1/sh-ja-0001/reply");
    }

    #[test]
    fn data_payload_matches_the_spec_example() {
        let mut ch = BTreeMap::new();
        ch.insert(
            "tilt_x".to_owned(),
            ChannelWindow {
                u: "deg",
                n: 100,
                expected: 100,
                mean: 0.0123,
                min: 0.0101,
                max: 0.015,
                last: 0.0124,
                std: 0.0004,
            },
        );
        let m = Message::Data {
            dev: "panel-n12".into(),
            start: T0,
            end: T0 + 10_000,
            ch,
        };
        let v: Value = serde_json::from_slice(&m.render("sh-ja-0001", 18231)).expect("json");
        assert_eq!(
            v,
            json!({"v":1,"gw":"sh-ja-0001","dev":"panel-n12","seq":18231,
                "start":"2026-11-28T05:04:00.000Z","end":"2026-11-28T05:04:10.000Z",
                "ch":{"tilt_x":{"u":"deg","n":100,"expected":100,"mean":0.0123,"min":0.0101,"max":0.015,"last":0.0124,"std":0.0004}}})
        );
        assert_eq!(m.class(), MessageClass::Telemetry);
    }

    #[test]
    fn event_payload_matches_the_spec_example() {
        let mut e = Event::new(
            T0 + 41_120,
            "threshold",
            Severity::Major,
            EventState::Active,
        );
        e.ch = Some("tilt_x".into());
        e.u = Some("deg");
        e.value = Some(0.52);
        e.limit = Some(0.5);
        let m = Message::Event {
            dev: "panel-n12".into(),
            event: e,
        };
        let v: Value = serde_json::from_slice(&m.render("sh-ja-0001", 18242)).expect("json");
        assert_eq!(
            v,
            json!({"v":1,"gw":"sh-ja-0001","dev":"panel-n12","seq":18242,"ts":"2026-11-28T05:04:41.120Z",
                "event":"threshold","severity":"major","state":"active","ch":"tilt_x","u":"deg","value":0.52,"limit":0.5})
        );
        assert_eq!(m.class(), MessageClass::Event);
    }

    #[test]
    fn lift_status_payload_matches_the_spec_example() {
        let m = Message::LiftStatus {
            dev: "lift-2".into(),
            ts: T0 + 3_250,
            lift: LiftStatus {
                mode: LiftMode::Normal,
                floor: 7,
                direction: LiftDirection::Up,
                door: LiftDoor::Closed,
                running: true,
                door_zone: false,
                occupied: true,
                speed_mm_s: 1480,
                load_pct: 35,
                position_mm: 21350,
                fault_code: 0,
                run_count: 10234,
                door_cycles: 20561,
            },
            trip: None,
        };
        let t = Topics::new("towerlink/v1", "sh-ja-0001");
        assert_eq!(m.topic(&t), "towerlink/v1/sh-ja-0001/data/lift-2");
        let v: Value = serde_json::from_slice(&m.render("sh-ja-0001", 18240)).expect("json");
        assert_eq!(
            v,
            json!({"v":1,"gw":"sh-ja-0001","dev":"lift-2","seq":18240,"ts":"2026-11-28T05:04:03.250Z",
                "lift":{"mode":"normal","floor":7,"direction":"up","door":"closed","running":true,
                        "door_zone":false,"occupied":true,"speed_mm_s":1480,"load_pct":35,
                        "position_mm":21350,"fault_code":0,"run_count":10234,"door_cycles":20561}})
        );
        assert_eq!(m.class(), MessageClass::Telemetry);
        for (mode, name) in [
            (LiftMode::FireService, "fire_service"),
            (LiftMode::OutOfService, "out_of_service"),
            (LiftMode::EmergencyPower, "emergency_power"),
        ] {
            assert_eq!(serde_json::to_value(mode).expect("json"), json!(name));
        }
    }

    #[test]
    fn state_payloads() {
        let v: Value = serde_json::from_slice(&state_payload("gw-1", false, None)).expect("json");
        assert_eq!(v, json!({"v":1,"gw":"gw-1","state":"offline"}));
        let info = BirthInfo {
            last_stop: LastStop::Unclean,
            clock: None,
        };
        let v: Value =
            serde_json::from_slice(&state_payload("gw-1", true, Some((T0, &info)))).expect("json");
        assert_eq!(v["state"], "online");
        assert_eq!(v["ts"], "2026-11-28T05:04:00.000Z");
        assert_eq!(v["last_stop"], "unclean");
        assert_eq!(v["clock"], json!({"synced": true}));
    }

    #[test]
    fn messages_made_while_unsynced_say_so() {
        let clock = Arc::new(ClockStatus::default());
        let renderer = Renderer::new("gw-1", Topics::new("r", "gw-1")).with_clock(clock.clone());
        let event = Message::Event {
            dev: "gateway".into(),
            event: Event::new(T0, "clock_step", Severity::Minor, EventState::Active),
        };
        let reply = Message::Reply(Reply {
            id: "c-1".into(),
            ok: true,
            error: None,
            result: None,
        });
        let v: Value = serde_json::from_slice(&renderer.render(&event).payload(3)).expect("json");
        assert!(v.get("clock").is_none(), "synced: no flag");
        clock.set(crate::clock::KernelClock {
            synced: false,
            est_error_ms: None,
        });
        let v: Value = serde_json::from_slice(&renderer.render(&event).payload(3)).expect("json");
        assert_eq!(v["clock"], "unsynced");
        assert_eq!(v["seq"], 3);
        let v: Value = serde_json::from_slice(&renderer.render(&reply).payload(4)).expect("json");
        assert!(v.get("clock").is_none(), "replies are not flagged");
    }
}
