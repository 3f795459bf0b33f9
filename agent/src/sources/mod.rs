//! Sources: the tasks that talk to devices and turn their bytes into [`SourceEvent`]s.
//!
//! A source never knows about MQTT, windows or alarms: it reads, decodes, maps the device's
//! time to wall-clock time once, counts what went wrong in its [`SourceStats`], and hands
//! events to the pipeline without ever waiting on it (a serial reader that stops reading
//! loses bytes in the UART).

pub mod config;
pub mod i2c_device;
pub mod modbus_bus;
pub mod modbus_lift;
pub mod modbus_rtu;
pub mod node_clock;
pub mod node_link;
pub mod node_memory;
pub mod serial_node;
pub mod serial_open;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use towerlink_firmware::protocol::{AckResult, ChannelInfo, FaultCode, Op};

use crate::feed::UnixMillis;
pub use crate::profile::{CarStatus, LiftReading};

/// Which device an event comes from: made once, when the device's source is started, from the
/// device's place in its own configuration list, and resolved by the pipeline against the same
/// list. Serial nodes and I2C devices are told apart by the key itself (no shared index space).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceKey {
    /// The serial node `[[node]]` number `n` (0-based).
    Node(usize),
    /// The I2C device `[[i2c]]` number `n` (0-based).
    I2c(usize),
}

/// What a source tells the pipeline.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceEvent {
    /// The node said who it is and what it samples (Hello).
    Hello {
        /// Device.
        dev: DeviceKey,
        /// Firmware version.
        fw: (u8, u8, u8),
        /// Its channels.
        channels: Vec<ChannelInfo>,
    },
    /// Consecutive samples of one channel.
    Samples {
        /// Device.
        dev: DeviceKey,
        /// Channel id.
        channel: u8,
        /// Wall-clock time of `values[0]`, ms (fractional).
        t0: f64,
        /// Time between values, ms.
        period_ms: f64,
        /// The values, in the channel's unit.
        values: Vec<f32>,
    },
    /// A channel's sensor could not be read.
    Fault {
        /// Device.
        dev: DeviceKey,
        /// Channel id.
        channel: u8,
        /// What went wrong.
        code: FaultCode,
        /// When it was received.
        ts: UnixMillis,
    },
    /// Frames were lost (a gap in the node's `seq`).
    FramesLost {
        /// Device.
        dev: DeviceKey,
        /// How many.
        count: u64,
        /// When the gap was seen.
        ts: UnixMillis,
    },
    /// The device was heard from (any valid frame).
    Alive {
        /// Device.
        dev: DeviceKey,
        /// When.
        ts: UnixMillis,
    },
    /// A lift controller answered a poll (`lift` indexes `Config::lifts`).
    LiftReading {
        /// Lift index.
        lift: usize,
        /// When the answer arrived.
        ts: UnixMillis,
        /// What it said.
        reading: LiftReading,
    },
    /// A poll of a lift ended without a valid reading (lost, exception or undecodable).
    LiftPollFailed {
        /// Lift index.
        lift: usize,
        /// When the poll gave up.
        ts: UnixMillis,
    },
}

/// Why a node request got no Ack (the command's reply says it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeRequestError {
    /// The port closed (unplugged, reopening) before the node answered.
    #[error("the node's port closed")]
    PortClosed,
    /// The command could not be sent.
    #[error("{0}")]
    NotSent(String),
}

/// A request from the command path to a node: the node's answer comes back on `reply`.
#[derive(Debug)]
pub struct NodeRequest {
    /// What to ask.
    pub op: Op,
    /// Where the Ack's result (or an error text) goes.
    pub reply: tokio::sync::oneshot::Sender<Result<AckResult, NodeRequestError>>,
}

/// Counters of one source, shared with `health` (lock-free: the reader never waits).
#[derive(Debug, Default)]
pub struct SourceStats {
    /// Is the port open right now?
    pub link_up: AtomicBool,
    /// Wall time of the last valid frame (0 = never).
    pub last_frame_ms: AtomicU64,
    /// Valid frames.
    pub frames_ok: AtomicU64,
    /// Frames dropped for a CRC mismatch.
    pub crc_errors: AtomicU64,
    /// Frames dropped for being longer than 512 bytes.
    pub oversize: AtomicU64,
    /// Frames dropped because they did not decode (COBS, postcard, or invalid values).
    pub undecodable: AtomicU64,
    /// Frames lost (gaps in the node's `seq`).
    pub lost_frames: AtomicU64,
    /// Frames from a node id other than the configured one.
    pub foreign_frames: AtomicU64,
    /// Bytes read.
    pub bytes: AtomicU64,
    /// Times the port was (re)opened.
    pub opens: AtomicU64,
    /// Failed opens and read/write errors.
    pub io_errors: AtomicU64,
    /// Events dropped because the pipeline was full.
    pub dropped_events: AtomicU64,
    /// Node reboots seen.
    pub reboots: AtomicU64,
    /// Modbus: polls answered with a valid reading.
    pub polls_ok: AtomicU64,
    /// Modbus: polls that got no valid answer after the retry.
    pub polls_lost: AtomicU64,
    /// Modbus: requests that got no byte before the timeout.
    pub modbus_timeouts: AtomicU64,
    /// Modbus: requests answered with bytes that never made a frame (truncated, noise).
    pub modbus_truncated: AtomicU64,
    /// Modbus: exception answers.
    pub modbus_exceptions: AtomicU64,
    /// Modbus: requests sent again after a failed first attempt.
    pub modbus_retries: AtomicU64,
    /// Modbus: answers from this unit that arrived when it was not being asked (after their
    /// request had timed out): thrown away, never a reading.
    pub late_answers: AtomicU64,
    /// Modbus: the longest time between two valid readings, ms (how long others delayed it).
    pub max_poll_gap_ms: AtomicU64,
}

impl SourceStats {
    /// A fresh, shareable set of counters.
    pub fn new() -> Arc<SourceStats> {
        Arc::new(SourceStats::default())
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
