//! Sensor-node wire protocol v1 (`docs/node-wire.md`).
//!
//! - [`message`]: the typed messages ([`Frame`], [`Command`] and their parts).
//! - [`framing`]: `COBS(postcard(msg) ++ crc32_le) ++ 0x00` encoding of one message.
//! - [`decoder`]: a streaming decoder that finds frames in any byte stream, counts what it
//!   drops, and resynchronises at the next `0x00` whatever arrives.

pub mod decoder;
pub mod framing;
pub mod message;

pub use decoder::{DecodeStats, FrameError, StreamDecoder, WireMessage};
pub use framing::{encode, encode_after_delimiter, EncodeError, MAX_ENCODED_LEN, MAX_FRAME_LEN};
pub use message::*;
