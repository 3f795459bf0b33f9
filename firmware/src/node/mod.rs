//! The sensor node's sampling loop: schedule, calibrate, batch and frame readings, answer
//! the gateway's commands.
//!
//! [`Node`] is deterministic and owns no clock: the caller passes the node's millisecond
//! clock (ms since boot, `u32`, wrapping after ~49.7 days) to [`Node::poll`] and
//! [`Node::receive`], so the same code runs from an MCU timer interrupt or inside a
//! simulator. Sample `k` of a channel is taken at exactly `start + k * 1000 / rate_hz` ms
//! (integer ms, the rounding never accumulates), whenever the caller happens to poll; all
//! work due up to `now_ms` is done in time order, so the bytes sent do not depend on how
//! often the caller polls (as long as it polls at least once per [`MAX_CATCH_UP_MS`]).
//!
//! Output follows `docs/node-wire.md`: a Hello first (seq 0) and every 60 s,
//! Status every 10 s, per-channel `Samples` batches of consecutive values, a Fault when a
//! read fails (at onset, then at most every 10 s while it lasts), and an Ack per command.
//! All clock arithmetic wraps.
//!
//! [`panel`] provides the [`SensorSet`] of the panel-node board (NAU7802 + ADXL355).

pub mod panel;

use heapless::Vec;

use crate::protocol::{
    encode, AckResult, Body, ChannelInfo, Command, DecodeStats, FaultCode, Frame, Op,
    StreamDecoder, MAX_CHANNELS, MAX_ENCODED_LEN, MAX_VALUES, PROTOCOL_VERSION,
};

/// A Hello is sent this often (and at boot and on Identify), ms.
pub const HELLO_INTERVAL_MS: u32 = 60_000;
/// A Status is sent this often, ms.
pub const STATUS_INTERVAL_MS: u32 = 10_000;
/// A persisting fault is re-announced at most this often, ms.
pub const FAULT_REPEAT_MS: u32 = 10_000;
/// Highest sampling rate a channel may be given, Hz.
pub const MAX_RATE_HZ: u16 = 1000;
/// Work overdue by more than this is skipped rather than caught up (a caller that stalled
/// must not be answered with a burst of thousands of bus reads); the skipped samples are a
/// gap in the data, ms.
pub const MAX_CATCH_UP_MS: u32 = 1_000;

/// Longest `batch_max_age_ms` accepted, ms (32 values at 1 Hz take 32 s; the clock
/// comparisons need deadlines far below 2^31 ms).
pub const MAX_BATCH_AGE_MS: u32 = 600_000;

/// This crate's version, as announced in Hello by [`NodeConfig::new`].
pub const FIRMWARE_VERSION: (u8, u8, u8) = (
    parse_u8(env!("CARGO_PKG_VERSION_MAJOR")),
    parse_u8(env!("CARGO_PKG_VERSION_MINOR")),
    parse_u8(env!("CARGO_PKG_VERSION_PATCH")),
);

/// Decimal string to `u8` at compile time (saturating; non-digits are skipped).
const fn parse_u8(s: &str) -> u8 {
    let bytes = s.as_bytes();
    let mut value: u8 = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii_digit() {
            value = value.saturating_mul(10).saturating_add(b - b'0');
        }
        i += 1;
    }
    value
}

/// The sensors of a node, read by channel id.
pub trait SensorSet {
    /// The channels this set provides, with their default rates. At most
    /// [`MAX_CHANNELS`]; ids unique; rates in `1..=MAX_RATE_HZ`.
    fn channels(&self) -> &[ChannelInfo];

    /// Read `channel` now, in the channel's engineering unit before the node's calibration
    /// and zero.
    fn read(&mut self, channel: u8) -> Result<f32, FaultCode>;

    /// Called before the reads belonging to one instant of the node clock (the scheduled
    /// time of the samples about to be read). Sensors that deliver several channels from
    /// one bus transfer can cache that transfer per instant.
    fn begin_instant(&mut self, _t_ms: u32) {}

    /// Supply voltage for Status, mV; 0 when the board does not measure it.
    fn supply_mv(&mut self) -> u16 {
        0
    }

    /// Board temperature for Status, hundredths of °C; 0 when the board has no thermometer.
    fn board_temp_centi_c(&mut self) -> i16 {
        0
    }
}

/// Where the node's frames go (a UART, a PTY, a buffer).
pub trait ByteSink {
    /// Why a write failed.
    type Error;

    /// Write all of `bytes`.
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), Self::Error>;
}

impl<T: ByteSink + ?Sized> ByteSink for &mut T {
    type Error = T::Error;

    fn write_all(&mut self, bytes: &[u8]) -> Result<(), Self::Error> {
        (**self).write_all(bytes)
    }
}

/// A [`heapless::Vec`] sink ran out of room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferFull;

impl<const N: usize> ByteSink for Vec<u8, N> {
    type Error = BufferFull;

    fn write_all(&mut self, bytes: &[u8]) -> Result<(), Self::Error> {
        self.extend_from_slice(bytes).map_err(|_| BufferFull)
    }
}

#[cfg(feature = "std")]
impl ByteSink for std::vec::Vec<u8> {
    type Error = core::convert::Infallible;

    fn write_all(&mut self, bytes: &[u8]) -> Result<(), Self::Error> {
        self.extend_from_slice(bytes);
        Ok(())
    }
}

/// Linear calibration of a channel: `value = gain * reading + offset`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibration {
    /// Multiplier.
    pub gain: f32,
    /// Added after the multiplier, in the channel's unit.
    pub offset: f32,
}

impl Calibration {
    /// No change.
    pub const IDENTITY: Calibration = Calibration {
        gain: 1.0,
        offset: 0.0,
    };

    /// Apply to a reading.
    pub fn apply(&self, reading: f32) -> f32 {
        self.gain * reading + self.offset
    }
}

impl Default for Calibration {
    fn default() -> Self {
        Calibration::IDENTITY
    }
}

/// The node's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// The node's id in every frame.
    pub node_id: u32,
    /// Firmware version announced in Hello.
    pub fw: (u8, u8, u8),
    /// Most values per Samples frame, `1..=32`.
    pub batch_max: usize,
    /// A batch is sent when its oldest value is this old, ms (bounds the latency of slow
    /// channels).
    pub batch_max_age_ms: u32,
    /// Calibration per channel id; channels without an entry use [`Calibration::IDENTITY`].
    pub calibrations: Vec<(u8, Calibration), MAX_CHANNELS>,
}

impl NodeConfig {
    /// Defaults for node `node_id`: this crate's version, batches of up to 32 values sent
    /// at the latest 500 ms after their first value, no calibration.
    pub fn new(node_id: u32) -> Self {
        NodeConfig {
            node_id,
            fw: FIRMWARE_VERSION,
            batch_max: MAX_VALUES,
            batch_max_age_ms: 500,
            calibrations: Vec::new(),
        }
    }

    /// Set the calibration of `channel` (replacing an earlier one).
    pub fn set_calibration(
        &mut self,
        channel: u8,
        calibration: Calibration,
    ) -> Result<(), ConfigError> {
        if let Some(entry) = self.calibrations.iter_mut().find(|(id, _)| *id == channel) {
            entry.1 = calibration;
            return Ok(());
        }
        self.calibrations
            .push((channel, calibration))
            .map_err(|_| ConfigError::TooManyCalibrations)
    }

    /// The calibration of `channel`.
    pub fn calibration(&self, channel: u8) -> Calibration {
        self.calibrations
            .iter()
            .find(|(id, _)| *id == channel)
            .map_or(Calibration::IDENTITY, |(_, c)| *c)
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig::new(0)
    }
}

/// Why [`Node::new`] refused a configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigError {
    /// The sensor set has more than [`MAX_CHANNELS`] channels.
    TooManyChannels,
    /// Two channels share an id.
    DuplicateChannel(u8),
    /// A channel's rate is 0 or above [`MAX_RATE_HZ`].
    BadRate {
        /// The channel.
        channel: u8,
        /// Its rate.
        rate_hz: u16,
    },
    /// `batch_max` is not in `1..=32`.
    BadBatchMax(usize),
    /// `batch_max_age_ms` is above [`MAX_BATCH_AGE_MS`].
    BadBatchMaxAge(u32),
    /// A calibration names a channel the sensor set does not have.
    UnknownCalibrationChannel(u8),
    /// More than [`MAX_CHANNELS`] calibrations.
    TooManyCalibrations,
}

/// Why [`Node::set_rate`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateError {
    /// No such channel.
    UnknownChannel,
    /// Rate 0 or above [`MAX_RATE_HZ`].
    Unsupported,
}

impl RateError {
    fn ack(self) -> AckResult {
        match self {
            RateError::UnknownChannel => AckResult::UNKNOWN_CHANNEL,
            RateError::Unsupported => AckResult::UNSUPPORTED,
        }
    }
}

/// Counters of things the node dropped or refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeCounters {
    /// Failed sensor reads (the Status `error_count`).
    pub read_failures: u32,
    /// Scheduled samples skipped because the caller polled too late.
    pub samples_skipped: u32,
    /// Frames that could not be encoded (never expected; a bug if non-zero).
    pub encode_failures: u32,
    /// Well-formed commands addressed to another node.
    pub commands_for_others: u32,
}

/// A fault being reported on a channel.
#[derive(Debug, Clone, Copy)]
struct ActiveFault {
    code: FaultCode,
    last_sent_ms: u32,
}

/// Schedule, calibration and pending batch of one channel.
#[derive(Debug, Clone)]
struct ChannelState {
    info: ChannelInfo,
    calibration: Calibration,
    zero: f32,
    /// Node time of slot 0 of the current second of this channel's schedule. Rebased by
    /// 1000 ms every `rate_hz` slots, so slot indices stay small and the schedule never
    /// drifts.
    anchor_ms: u32,
    /// Index of the next sample within the current second, `< rate_hz`.
    slot: u32,
    pending: Vec<f32, MAX_VALUES>,
    pending_t0_ms: u32,
    pending_period_us: u32,
    fault: Option<ActiveFault>,
}

impl ChannelState {
    fn rate(&self) -> u32 {
        u32::from(self.info.rate_hz)
    }

    fn next_due_ms(&self) -> u32 {
        // slot < rate <= 1000, so this fits and is < 1000.
        self.anchor_ms.wrapping_add(self.slot * 1000 / self.rate())
    }

    fn period_us(&self) -> u32 {
        1_000_000 / self.rate()
    }

    fn advance(&mut self) {
        self.slot += 1;
        if self.slot >= self.rate() {
            self.slot = 0;
            self.anchor_ms = self.anchor_ms.wrapping_add(1000);
        }
    }

    /// Restart the schedule so that its next sample is at `t_ms`.
    fn restart_at(&mut self, t_ms: u32) {
        self.anchor_ms = t_ms;
        self.slot = 0;
    }

    /// Move the schedule to the latest slot at or before `now_ms`; returns the slots skipped.
    fn skip_to(&mut self, now_ms: u32) -> u32 {
        let before = self.slot;
        let elapsed = u64::from(now_ms.wrapping_sub(self.anchor_ms));
        let slots = elapsed * u64::from(self.rate()) / 1000;
        let seconds = slots / u64::from(self.rate());
        // seconds <= elapsed / 1000 < 2^32 / 1000.
        self.anchor_ms = self
            .anchor_ms
            .wrapping_add((seconds as u32).wrapping_mul(1000));
        self.slot = (slots % u64::from(self.rate())) as u32;
        slots
            .saturating_sub(u64::from(before))
            .min(u64::from(u32::MAX)) as u32
    }
}

/// One unit of work of the node, due at a node time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    // Variant order is the tie-break at equal times: Hello first (it must be frame 0 at
    // boot), then samples, then age flushes (so a batch includes a sample due at its
    // deadline), then Status.
    Hello,
    Sample(usize),
    Flush(usize),
    Status,
}

/// `a` is at or before `b` on the wrapping clock (valid for distances below 2^31 ms).
fn at_or_before(a: u32, b: u32) -> bool {
    (b.wrapping_sub(a) as i32) >= 0
}

/// A sensor node: its sensors, schedule and link state.
pub struct Node<S: SensorSet> {
    config: NodeConfig,
    sensors: S,
    channels: Vec<ChannelState, MAX_CHANNELS>,
    seq: u32,
    booted: bool,
    last_now_ms: u32,
    next_hello_ms: u32,
    next_status_ms: u32,
    counters: NodeCounters,
    decoder: StreamDecoder,
}

impl<S: SensorSet> Node<S> {
    /// A node that has just booted: nothing is sent until the first [`Node::poll`], which
    /// starts every channel's schedule and sends the Hello.
    pub fn new(config: NodeConfig, sensors: S) -> Result<Self, ConfigError> {
        if config.batch_max == 0 || config.batch_max > MAX_VALUES {
            return Err(ConfigError::BadBatchMax(config.batch_max));
        }
        if config.batch_max_age_ms > MAX_BATCH_AGE_MS {
            return Err(ConfigError::BadBatchMaxAge(config.batch_max_age_ms));
        }
        let channels = build_channels(&config, sensors.channels())?;
        Ok(Node {
            config,
            sensors,
            channels,
            seq: 0,
            booted: false,
            last_now_ms: 0,
            next_hello_ms: 0,
            next_status_ms: 0,
            counters: NodeCounters::default(),
            decoder: StreamDecoder::new(),
        })
    }

    /// Forget everything a reboot forgets: seq restarts at 0, rates and zeros return to
    /// their configured values, pending batches and faults are dropped, and the next
    /// [`Node::poll`] sends a Hello.
    pub fn reboot(&mut self) {
        // build_channels succeeded in `new` with the same inputs, and a sensor set's channel
        // list is fixed; should it have changed, keep the current table rather than fail.
        if let Ok(channels) = build_channels(&self.config, self.sensors.channels()) {
            self.channels = channels;
        } else {
            for ch in self.channels.iter_mut() {
                ch.pending.clear();
                ch.fault = None;
                ch.zero = 0.0;
            }
        }
        self.seq = 0;
        self.booted = false;
        self.counters = NodeCounters::default();
        self.decoder = StreamDecoder::new();
    }

    /// The configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The sensors.
    pub fn sensors(&self) -> &S {
        &self.sensors
    }

    /// The sensors, mutably (e.g. for a simulator to change the physics).
    pub fn sensors_mut(&mut self) -> &mut S {
        &mut self.sensors
    }

    /// The seq the next frame will carry.
    pub fn seq(&self) -> u32 {
        self.seq
    }

    /// What the node counted.
    pub fn counters(&self) -> NodeCounters {
        self.counters
    }

    /// What the command decoder counted (frames dropped on the gateway-to-node link).
    pub fn decoder_stats(&self) -> DecodeStats {
        *self.decoder.stats()
    }

    /// The channels as announced in Hello (with their present rates).
    pub fn channel_infos(&self) -> Vec<ChannelInfo, MAX_CHANNELS> {
        self.channels.iter().map(|c| c.info).collect()
    }

    /// The present zero of `channel`, if it exists.
    pub fn zero(&self, channel: u8) -> Option<f32> {
        self.channel_index(channel).map(|i| self.channels[i].zero)
    }

    /// Change `channel`'s rate. The new schedule starts at the sample the old one would have
    /// taken next; values already pending go out in their own frame with the old period.
    /// Hello announces the new rate.
    pub fn set_rate(&mut self, channel: u8, rate_hz: u16) -> Result<(), RateError> {
        self.set_rate_inner(channel, rate_hz).map(|_| ())
    }

    /// The node time at which the next piece of work is due; a caller may sleep until then
    /// (or until bytes arrive). Before the first poll, the time of the last poll (0).
    pub fn next_due_ms(&self) -> u32 {
        if !self.booted {
            return self.last_now_ms;
        }
        self.next_event(self.last_now_ms).0
    }

    /// Do all work due up to `now_ms`: take samples, send batches, Hello, Status and Fault
    /// frames. On a sink error the frame being written is lost (its seq is used, so the
    /// gateway counts it) and the rest of the work is left for the next poll.
    pub fn poll<W: ByteSink>(&mut self, now_ms: u32, out: &mut W) -> Result<(), W::Error> {
        if !self.booted {
            self.boot(now_ms);
        }
        self.last_now_ms = now_ms;
        self.skip_overdue(now_ms, out)?;
        loop {
            let (due, event) = self.next_event(now_ms);
            if !at_or_before(due, now_ms) {
                return Ok(());
            }
            self.run(event, due, out)?;
        }
    }

    /// Feed bytes received from the gateway; answer every complete command addressed to this
    /// node. Work due up to `now_ms` is done first, so replies follow earlier data in time.
    pub fn receive<W: ByteSink>(
        &mut self,
        bytes: &[u8],
        now_ms: u32,
        out: &mut W,
    ) -> Result<(), W::Error> {
        let mut result = self.poll(now_ms, out);
        let mut rest = bytes;
        while !rest.is_empty() {
            let (used, decoded) = self.decoder.feed::<Command>(rest);
            rest = rest.get(used..).unwrap_or(&[]);
            match decoded {
                Some(Ok(command)) => {
                    let answered = self.handle_command(&command, now_ms, out);
                    if result.is_ok() {
                        result = answered;
                    }
                }
                // The decoder counts what it drops.
                Some(Err(_)) => {}
                None if used == 0 => break,
                None => {}
            }
        }
        result
    }

    fn boot(&mut self, now_ms: u32) {
        for ch in self.channels.iter_mut() {
            ch.restart_at(now_ms);
        }
        self.next_hello_ms = now_ms;
        self.next_status_ms = now_ms.wrapping_add(STATUS_INTERVAL_MS);
        self.booted = true;
    }

    fn channel_index(&self, channel: u8) -> Option<usize> {
        self.channels.iter().position(|c| c.info.id == channel)
    }

    /// The earliest pending event, ordered on the wrapping clock relative to `now_ms`.
    fn next_event(&self, now_ms: u32) -> (u32, Event) {
        let key = |due: u32, event: Event| (due.wrapping_sub(now_ms) as i32, event);
        let mut best = (self.next_hello_ms, Event::Hello);
        let mut consider = |due: u32, event: Event| {
            if key(due, event) < key(best.0, best.1) {
                best = (due, event);
            }
        };
        consider(self.next_status_ms, Event::Status);
        for (i, ch) in self.channels.iter().enumerate() {
            consider(ch.next_due_ms(), Event::Sample(i));
            if !ch.pending.is_empty() {
                consider(
                    ch.pending_t0_ms.wrapping_add(self.config.batch_max_age_ms),
                    Event::Flush(i),
                );
            }
        }
        best
    }

    /// Skip work overdue by more than [`MAX_CATCH_UP_MS`] (a stalled caller): samples become
    /// a gap (pending batches are sent first), Hello and Status are sent once, now.
    fn skip_overdue<W: ByteSink>(&mut self, now_ms: u32, out: &mut W) -> Result<(), W::Error> {
        let too_late = |due: u32| now_ms.wrapping_sub(due) as i32 > MAX_CATCH_UP_MS as i32;
        if too_late(self.next_hello_ms) {
            self.next_hello_ms = now_ms;
        }
        if too_late(self.next_status_ms) {
            self.next_status_ms = now_ms;
        }
        for i in 0..self.channels.len() {
            if too_late(self.channels[i].next_due_ms()) {
                let skipped = self.channels[i].skip_to(now_ms);
                self.counters.samples_skipped = self.counters.samples_skipped.wrapping_add(skipped);
                self.flush(i, out)?;
            }
        }
        Ok(())
    }

    fn run<W: ByteSink>(&mut self, event: Event, due: u32, out: &mut W) -> Result<(), W::Error> {
        match event {
            Event::Hello => {
                self.next_hello_ms = due.wrapping_add(HELLO_INTERVAL_MS);
                self.send_hello(due, out)
            }
            Event::Status => {
                self.next_status_ms = due.wrapping_add(STATUS_INTERVAL_MS);
                let body = Body::Status {
                    uptime_ms: due,
                    supply_mv: self.sensors.supply_mv(),
                    board_temp_centi_c: self.sensors.board_temp_centi_c(),
                    error_count: self.counters.read_failures,
                };
                self.send(body, out)
            }
            Event::Sample(i) => self.sample(i, due, out),
            Event::Flush(i) => self.flush(i, out),
        }
    }

    fn sample<W: ByteSink>(&mut self, i: usize, t_ms: u32, out: &mut W) -> Result<(), W::Error> {
        let id = self.channels[i].info.id;
        self.sensors.begin_instant(t_ms);
        let reading = self.sensors.read(id);
        let ch = &mut self.channels[i];
        ch.advance();
        let value = reading.and_then(|x| {
            let v = ch.calibration.apply(x) - ch.zero;
            if v.is_finite() {
                Ok(v)
            } else {
                Err(FaultCode::OutOfRange)
            }
        });
        match value {
            Ok(v) => {
                ch.fault = None;
                let period_us = ch.period_us();
                if !ch.pending.is_empty() && ch.pending_period_us != period_us {
                    // The rate changed since the batch began: one period per frame.
                    self.flush(i, out)?;
                }
                let ch = &mut self.channels[i];
                if ch.pending.is_empty() {
                    ch.pending_t0_ms = t_ms;
                    ch.pending_period_us = period_us;
                }
                // Never full here: a batch is flushed as soon as it reaches batch_max <= 32.
                let _ = ch.pending.push(v);
                if ch.pending.len() >= self.config.batch_max {
                    return self.flush(i, out);
                }
                Ok(())
            }
            Err(code) => {
                self.counters.read_failures = self.counters.read_failures.wrapping_add(1);
                let announce = match ch.fault {
                    None => true,
                    Some(active) => {
                        active.code != code
                            || t_ms.wrapping_sub(active.last_sent_ms) >= FAULT_REPEAT_MS
                    }
                };
                if announce {
                    ch.fault = Some(ActiveFault {
                        code,
                        last_sent_ms: t_ms,
                    });
                }
                // The missing sample breaks the batch: values of a Samples frame must be
                // contiguous.
                self.flush(i, out)?;
                if announce {
                    self.send(Body::Fault { channel: id, code }, out)?;
                }
                Ok(())
            }
        }
    }

    /// Send channel `i`'s pending batch, if any.
    fn flush<W: ByteSink>(&mut self, i: usize, out: &mut W) -> Result<(), W::Error> {
        let ch = &mut self.channels[i];
        if ch.pending.is_empty() {
            return Ok(());
        }
        let values = core::mem::take(&mut ch.pending);
        let body = Body::Samples {
            channel: ch.info.id,
            t0_ms: ch.pending_t0_ms,
            period_us: ch.pending_period_us,
            values,
        };
        self.send(body, out)
    }

    fn send_hello<W: ByteSink>(&mut self, uptime_ms: u32, out: &mut W) -> Result<(), W::Error> {
        let body = Body::Hello {
            fw: self.config.fw,
            uptime_ms,
            channels: self.channel_infos(),
        };
        self.send(body, out)
    }

    /// Frame, number and write one message.
    fn send<W: ByteSink>(&mut self, body: Body, out: &mut W) -> Result<(), W::Error> {
        let frame = Frame {
            version: PROTOCOL_VERSION,
            node: self.config.node_id,
            seq: self.seq,
            body,
        };
        let mut buf = [0u8; MAX_ENCODED_LEN];
        match encode(&frame, &mut buf) {
            Ok(len) => {
                self.seq = self.seq.wrapping_add(1);
                out.write_all(buf.get(..len).unwrap_or(&[]))
            }
            Err(_) => {
                self.counters.encode_failures = self.counters.encode_failures.wrapping_add(1);
                Ok(())
            }
        }
    }

    fn handle_command<W: ByteSink>(
        &mut self,
        command: &Command,
        now_ms: u32,
        out: &mut W,
    ) -> Result<(), W::Error> {
        if command.node != self.config.node_id {
            self.counters.commands_for_others = self.counters.commands_for_others.wrapping_add(1);
            return Ok(());
        }
        // The decoder already dropped commands of another protocol version.
        let result = match command.op {
            Op::Identify => {
                self.send_hello(now_ms, out)?;
                AckResult::OK
            }
            Op::Zero { channel } => self.zero_channel(channel, now_ms),
            Op::SetRate { channel, rate_hz } => match self.set_rate_inner(channel, rate_hz) {
                Ok(Some(i)) => {
                    // Send the old-period values now rather than at the next sample.
                    self.flush(i, out)?;
                    AckResult::OK
                }
                Ok(None) => AckResult::OK,
                Err(e) => e.ack(),
            },
        };
        self.send(
            Body::Ack {
                command_seq: command.seq,
                result,
            },
            out,
        )
    }

    /// Make the channel's present calibrated reading its zero.
    fn zero_channel(&mut self, channel: u8, now_ms: u32) -> AckResult {
        let Some(i) = self.channel_index(channel) else {
            return AckResult::UNKNOWN_CHANNEL;
        };
        self.sensors.begin_instant(now_ms);
        let calibrated = self
            .sensors
            .read(channel)
            .map(|x| self.channels[i].calibration.apply(x));
        match calibrated {
            Ok(v) if v.is_finite() => {
                self.channels[i].zero = v;
                AckResult::OK
            }
            _ => {
                // No present reading to tare to; the gateway may retry.
                self.counters.read_failures = self.counters.read_failures.wrapping_add(1);
                AckResult::BUSY
            }
        }
    }

    /// Change a rate; `Ok(Some(index))` when it changed (the caller flushes that channel).
    fn set_rate_inner(&mut self, channel: u8, rate_hz: u16) -> Result<Option<usize>, RateError> {
        let i = self
            .channel_index(channel)
            .ok_or(RateError::UnknownChannel)?;
        if rate_hz == 0 || rate_hz > MAX_RATE_HZ {
            return Err(RateError::Unsupported);
        }
        let ch = &mut self.channels[i];
        if ch.info.rate_hz == rate_hz {
            return Ok(None);
        }
        // The new schedule continues from the sample the old one would have taken next; a
        // pending batch keeps its own period and is closed before the next new-rate value.
        let next = ch.next_due_ms();
        ch.info.rate_hz = rate_hz;
        ch.restart_at(next);
        Ok(Some(i))
    }
}

/// The channel table for `sensors`, validated against `config`.
fn build_channels(
    config: &NodeConfig,
    sensors: &[ChannelInfo],
) -> Result<Vec<ChannelState, MAX_CHANNELS>, ConfigError> {
    if sensors.len() > MAX_CHANNELS {
        return Err(ConfigError::TooManyChannels);
    }
    let mut channels: Vec<ChannelState, MAX_CHANNELS> = Vec::new();
    for info in sensors {
        if channels.iter().any(|c| c.info.id == info.id) {
            return Err(ConfigError::DuplicateChannel(info.id));
        }
        if info.rate_hz == 0 || info.rate_hz > MAX_RATE_HZ {
            return Err(ConfigError::BadRate {
                channel: info.id,
                rate_hz: info.rate_hz,
            });
        }
        let state = ChannelState {
            info: *info,
            calibration: config.calibration(info.id),
            zero: 0.0,
            anchor_ms: 0,
            slot: 0,
            pending: Vec::new(),
            pending_t0_ms: 0,
            pending_period_us: 0,
            fault: None,
        };
        channels
            .push(state)
            .map_err(|_| ConfigError::TooManyChannels)?;
    }
    if let Some((id, _)) = config
        .calibrations
        .iter()
        .find(|(id, _)| !sensors.iter().any(|c| c.id == *id))
    {
        return Err(ConfigError::UnknownCalibrationChannel(*id));
    }
    Ok(channels)
}

#[cfg(test)]
mod tests;
