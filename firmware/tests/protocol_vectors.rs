//! The test vectors of `docs/node-wire.md`, byte for byte: postcard bytes, the
//! framed bytes on the line, and decoding the line bytes back; plus the CRC check value and
//! a Command round trip (the spec gives no Command vector).

use heapless::Vec;
use towerlink_firmware::protocol::{
    encode, AckResult, Body, ChannelInfo, Command, DecodeStats, FaultCode, Frame, FrameError, Op,
    Quantity, StreamDecoder, MAX_ENCODED_LEN,
};

/// Parses the spec's space-separated hex.
fn hex(s: &str) -> std::vec::Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

fn samples_vector() -> Frame {
    Frame {
        version: 1,
        node: 7,
        seq: 300,
        body: Body::Samples {
            channel: 2,
            t0_ms: 123_456,
            period_us: 20_000,
            values: Vec::from_slice(&[0.5, -1.25]).unwrap(),
        },
    }
}

fn hello_vector() -> Frame {
    let channel = |id, quantity, rate_hz| ChannelInfo {
        id,
        quantity,
        rate_hz,
    };
    Frame {
        version: 1,
        node: 7,
        seq: 0,
        body: Body::Hello {
            fw: (1, 0, 0),
            uptime_ms: 15,
            channels: Vec::from_slice(&[
                channel(0, Quantity::Strain, 50),
                channel(1, Quantity::TiltX, 10),
                channel(2, Quantity::TiltY, 10),
                channel(3, Quantity::Temperature, 1),
            ])
            .unwrap(),
        },
    }
}

fn status_vector() -> Frame {
    Frame {
        version: 1,
        node: 7,
        seq: 301,
        body: Body::Status {
            uptime_ms: 60_000,
            supply_mv: 3300,
            board_temp_centi_c: -512,
            error_count: 0,
        },
    }
}

fn fault_vector() -> Frame {
    Frame {
        version: 1,
        node: 7,
        seq: 302,
        body: Body::Fault {
            channel: 0,
            code: FaultCode::Saturated,
        },
    }
}

const SAMPLES_POSTCARD: &str = "01 07 ac 02 01 02 c0 c4 07 a0 9c 01 02 00 00 00 3f 00 00 a0 bf";
const SAMPLES_LINE: &str =
    "0e 01 07 ac 02 01 02 c0 c4 07 a0 9c 01 02 01 01 02 3f 01 03 a0 bf 04 68 1a f8 00";
const HELLO_POSTCARD: &str = "01 07 00 00 01 00 00 0f 04 00 00 32 01 01 0a 02 02 0a 03 04 01";
const HELLO_LINE: &str =
    "03 01 07 01 02 01 01 03 0f 04 01 0f 32 01 01 0a 02 02 0a 03 04 01 f7 b5 2e 74 00";
const STATUS_LINE: &str = "0d 01 07 ad 02 02 e0 d4 03 e4 19 ff 07 05 c5 d2 c4 ed 00";
const FAULT_LINE: &str = "06 01 07 ae 02 03 06 02 7b d2 48 af 00";

fn assert_postcard(frame: &Frame, expected: &str) {
    let mut buf = [0u8; 64];
    let bytes = postcard::to_slice(frame, &mut buf).unwrap();
    assert_eq!(bytes, hex(expected).as_slice(), "postcard of {frame:?}");
}

fn assert_on_line(frame: &Frame, expected: &str) {
    let mut out = [0u8; MAX_ENCODED_LEN];
    let n = encode(frame, &mut out).unwrap();
    assert_eq!(
        &out[..n],
        hex(expected).as_slice(),
        "line bytes of {frame:?}"
    );
}

fn assert_decodes(line: &str, expected: &Frame) {
    let bytes = hex(line);
    let mut dec = StreamDecoder::new();
    let (used, outcome) = dec.feed::<Frame>(&bytes);
    assert_eq!(used, bytes.len());
    assert_eq!(outcome, Some(Ok(expected.clone())));
    assert_eq!(
        *dec.stats(),
        DecodeStats {
            frames_ok: 1,
            bytes: bytes.len() as u64,
            ..DecodeStats::default()
        }
    );
}

#[test]
fn samples_vector_matches_spec() {
    let frame = samples_vector();
    assert_postcard(&frame, SAMPLES_POSTCARD);
    assert_on_line(&frame, SAMPLES_LINE);
    assert_decodes(SAMPLES_LINE, &frame);
}

#[test]
fn hello_vector_matches_spec() {
    let frame = hello_vector();
    assert_postcard(&frame, HELLO_POSTCARD);
    assert_on_line(&frame, HELLO_LINE);
    assert_decodes(HELLO_LINE, &frame);
}

#[test]
fn status_vector_matches_spec() {
    let frame = status_vector();
    assert_on_line(&frame, STATUS_LINE);
    assert_decodes(STATUS_LINE, &frame);
}

#[test]
fn fault_vector_matches_spec() {
    let frame = fault_vector();
    assert_on_line(&frame, FAULT_LINE);
    assert_decodes(FAULT_LINE, &frame);
}

#[test]
fn all_vectors_back_to_back_in_one_stream() {
    let mut stream = std::vec::Vec::new();
    for line in [SAMPLES_LINE, HELLO_LINE, STATUS_LINE, FAULT_LINE] {
        stream.extend(hex(line));
    }
    let mut dec = StreamDecoder::new();
    let mut got = std::vec::Vec::new();
    dec.decode_all::<Frame, _>(&stream, |r| got.push(r));
    assert_eq!(
        got,
        vec![
            Ok(samples_vector()),
            Ok(hello_vector()),
            Ok(status_vector()),
            Ok(fault_vector())
        ]
    );
    assert_eq!(dec.stats().frames_ok, 4);
    assert_eq!(dec.stats().bytes, stream.len() as u64);
}

#[test]
fn corrupted_vector_is_a_crc_error() {
    let mut bytes = hex(FAULT_LINE);
    bytes[5] ^= 0x01; // seq 302 -> 303, CRC unchanged
    let mut dec = StreamDecoder::new();
    assert_eq!(dec.feed::<Frame>(&bytes).1, Some(Err(FrameError::Crc)));
    assert_eq!(dec.stats().crc_errors, 1);
}

#[test]
fn ack_round_trip() {
    let frame = Frame {
        version: 1,
        node: 0xDEAD_BEEF,
        seq: u32::MAX,
        body: Body::Ack {
            command_seq: 41,
            result: AckResult::BUSY,
        },
    };
    let mut out = [0u8; MAX_ENCODED_LEN];
    let n = encode(&frame, &mut out).unwrap();
    let mut dec = StreamDecoder::new();
    assert_eq!(dec.feed::<Frame>(&out[..n]), (n, Some(Ok(frame))));
}

#[test]
fn command_round_trip() {
    let commands = [
        Command {
            version: 1,
            node: 7,
            seq: 1,
            op: Op::Identify,
        },
        Command {
            version: 1,
            node: 7,
            seq: 2,
            op: Op::Zero { channel: 1 },
        },
        Command {
            version: 1,
            node: 7,
            seq: 3,
            op: Op::SetRate {
                channel: 0,
                rate_hz: 100,
            },
        },
    ];
    // Postcard layout per the spec: version, node, seq varints, op discriminant, fields.
    let mut buf = [0u8; 32];
    assert_eq!(
        postcard::to_slice(&commands[2], &mut buf).unwrap(),
        &[0x01, 0x07, 0x03, 0x02, 0x00, 0x64]
    );
    let mut dec = StreamDecoder::new();
    for cmd in commands {
        let mut out = [0u8; MAX_ENCODED_LEN];
        let n = encode(&cmd, &mut out).unwrap();
        assert_eq!(out[n - 1], 0);
        assert!(!out[..n - 1].contains(&0));
        assert_eq!(dec.feed::<Command>(&out[..n]), (n, Some(Ok(cmd))));
    }
    assert_eq!(dec.stats().frames_ok, 3);
}

#[test]
fn frame_bytes_do_not_decode_as_a_command() {
    // A Status frame's payload is not a valid Command (trailing bytes / bad op): the agent and
    // the node each decode only their own direction.
    let bytes = hex(STATUS_LINE);
    let mut dec = StreamDecoder::new();
    assert_eq!(dec.feed::<Command>(&bytes).1, Some(Err(FrameError::Decode)));
}

#[test]
fn crc_check_value() {
    let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    assert_eq!(crc.checksum(b"123456789"), 0xCBF4_3926);
    assert_eq!(
        towerlink_firmware::protocol::framing::CRC32.checksum(b"123456789"),
        0xCBF4_3926
    );
}
