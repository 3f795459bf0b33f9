//! The messages of wire protocol v1, as typed Rust values.
//!
//! Field order and enum variant order ARE the wire format (postcard encodes structs as their
//! fields in order and enums as a varint discriminant), so nothing here may be reordered.
//! See `docs/node-wire.md`.

use heapless::Vec;
use serde::{Deserialize, Serialize};

/// The protocol version carried in every [`Frame`] and [`Command`].
pub const PROTOCOL_VERSION: u8 = 1;
/// Most channels a node may announce in a [`Body::Hello`].
pub const MAX_CHANNELS: usize = 16;
/// Most values in one [`Body::Samples`].
pub const MAX_VALUES: usize = 32;

/// One message from a node to the gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    /// Always [`PROTOCOL_VERSION`].
    pub version: u8,
    /// The node's id.
    pub node: u32,
    /// Frame counter of this node: +1 per frame, wrapping, 0 after boot.
    pub seq: u32,
    /// What the frame says.
    pub body: Body,
}

/// The payload of a [`Frame`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Body {
    /// Sent at boot, every 60 s and on [`Op::Identify`].
    Hello {
        /// Firmware version (major, minor, patch).
        fw: (u8, u8, u8),
        /// Node clock, ms since boot.
        uptime_ms: u32,
        /// The channels this node samples.
        channels: Vec<ChannelInfo, MAX_CHANNELS>,
    },
    /// A batch of consecutive samples of one channel.
    Samples {
        /// Channel id, as announced in Hello.
        channel: u8,
        /// Node time of `values[0]`, ms since boot.
        t0_ms: u32,
        /// Time between consecutive values, µs.
        period_us: u32,
        /// 1..=32 values in the channel's engineering unit.
        values: Vec<f32, MAX_VALUES>,
    },
    /// Node health, every 10 s.
    Status {
        /// Node clock, ms since boot.
        uptime_ms: u32,
        /// Supply voltage, mV.
        supply_mv: u16,
        /// Board temperature, hundredths of a degree Celsius.
        board_temp_centi_c: i16,
        /// Errors the node has counted since boot.
        error_count: u32,
    },
    /// A sensor could not be read.
    Fault {
        /// The failing channel.
        channel: u8,
        /// What went wrong.
        code: FaultCode,
    },
    /// The answer to a [`Command`].
    Ack {
        /// `seq` of the command answered.
        command_seq: u32,
        /// Outcome, see [`AckResult`].
        result: AckResult,
    },
}

/// One channel a node samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelInfo {
    /// Channel id, unique within the node.
    pub id: u8,
    /// What the channel measures (and so its unit).
    pub quantity: Quantity,
    /// Sampling rate, Hz.
    pub rate_hz: u16,
}

/// The physical quantity of a channel. The unit is fixed by the quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Quantity {
    /// Strain, microstrain.
    Strain,
    /// Tilt about the X axis, degrees.
    TiltX,
    /// Tilt about the Y axis, degrees.
    TiltY,
    /// Acceleration, m/s².
    Acceleration,
    /// Temperature, degrees Celsius.
    Temperature,
    /// Wind pressure, Pa.
    WindPressure,
    /// Displacement, mm.
    Displacement,
}

impl Quantity {
    /// Every quantity, in wire order.
    pub const ALL: [Quantity; 7] = [
        Quantity::Strain,
        Quantity::TiltX,
        Quantity::TiltY,
        Quantity::Acceleration,
        Quantity::Temperature,
        Quantity::WindPressure,
        Quantity::Displacement,
    ];

    /// The quantity's name in the MQTT feed (a channel key under `ch`).
    pub const fn name(self) -> &'static str {
        match self {
            Quantity::Strain => "strain",
            Quantity::TiltX => "tilt_x",
            Quantity::TiltY => "tilt_y",
            Quantity::Acceleration => "acceleration",
            Quantity::Temperature => "temperature",
            Quantity::WindPressure => "wind_pressure",
            Quantity::Displacement => "displacement",
        }
    }

    /// The unit in the MQTT feed (SenML names where SenML has one).
    pub const fn unit(self) -> &'static str {
        match self {
            Quantity::Strain => "ustrain",
            Quantity::TiltX | Quantity::TiltY => "deg",
            Quantity::Acceleration => "m/s2",
            Quantity::Temperature => "Cel",
            Quantity::WindPressure => "Pa",
            Quantity::Displacement => "mm",
        }
    }

    /// The quantity whose feed name is `name`.
    pub fn from_name(name: &str) -> Option<Quantity> {
        Quantity::ALL.into_iter().find(|q| q.name() == name)
    }
}

/// Why a sensor could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FaultCode {
    /// The bus to the chip failed (NACK, arbitration loss, ...).
    BusError,
    /// The reading is outside the sensor's range.
    OutOfRange,
    /// The front end is saturated.
    Saturated,
    /// The chip does not answer, or answers with the wrong identity.
    NotResponding,
}

impl FaultCode {
    /// A stable snake_case name for logs and the feed.
    pub const fn name(self) -> &'static str {
        match self {
            FaultCode::BusError => "bus_error",
            FaultCode::OutOfRange => "out_of_range",
            FaultCode::Saturated => "saturated",
            FaultCode::NotResponding => "not_responding",
        }
    }
}

/// The result byte of an [`Body::Ack`]. A plain `u8` on the wire, so values this version does
/// not know still decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AckResult(pub u8);

impl AckResult {
    /// The command was carried out.
    pub const OK: AckResult = AckResult(0);
    /// The command named a channel the node does not have.
    pub const UNKNOWN_CHANNEL: AckResult = AckResult(1);
    /// The node does not support the command.
    pub const UNSUPPORTED: AckResult = AckResult(2);
    /// The node is busy; try again.
    pub const BUSY: AckResult = AckResult(3);

    /// A stable snake_case name for logs and replies.
    pub const fn name(self) -> &'static str {
        match self.0 {
            0 => "ok",
            1 => "unknown_channel",
            2 => "unsupported",
            3 => "busy",
            _ => "unknown_result",
        }
    }
}

/// One message from the gateway to a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// Always [`PROTOCOL_VERSION`].
    pub version: u8,
    /// The addressed node's id.
    pub node: u32,
    /// The gateway's command counter; echoed in the node's Ack.
    pub seq: u32,
    /// What to do.
    pub op: Op,
}

/// What a [`Command`] asks of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Send a Hello now.
    Identify,
    /// Make the channel's present reading its new zero (tare).
    Zero {
        /// The channel to tare.
        channel: u8,
    },
    /// Change a channel's sampling rate.
    SetRate {
        /// The channel.
        channel: u8,
        /// New rate, Hz.
        rate_hz: u16,
    },
}
