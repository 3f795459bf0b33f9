//! Property tests of framing and the streaming decoder: round trips of arbitrary valid
//! messages, robustness against arbitrary bytes, resynchronisation after garbage,
//! independence from how the stream is split, and single-bit-error detection.
//!
//! The proptest seed is fixed so runs are reproducible; no regression files are written.

use heapless::Vec as HVec;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use towerlink_firmware::protocol::decoder::WireMessage;
use towerlink_firmware::protocol::{
    encode, AckResult, Body, ChannelInfo, Command, DecodeStats, FaultCode, Frame, FrameError, Op,
    Quantity, StreamDecoder, MAX_CHANNELS, MAX_ENCODED_LEN, MAX_FRAME_LEN, MAX_VALUES,
};

fn config(cases: u32) -> Config {
    Config {
        cases,
        rng_seed: RngSeed::Fixed(0x746f_7765_726c_696e),
        failure_persistence: None,
        ..Config::default()
    }
}

fn finite_f32() -> impl Strategy<Value = f32> {
    prop::num::f32::POSITIVE
        | prop::num::f32::NEGATIVE
        | prop::num::f32::NORMAL
        | prop::num::f32::SUBNORMAL
        | prop::num::f32::ZERO
}

fn quantity() -> impl Strategy<Value = Quantity> {
    prop::sample::select(Quantity::ALL.to_vec())
}

fn fault_code() -> impl Strategy<Value = FaultCode> {
    prop::sample::select(vec![
        FaultCode::BusError,
        FaultCode::OutOfRange,
        FaultCode::Saturated,
        FaultCode::NotResponding,
    ])
}

fn body() -> impl Strategy<Value = Body> {
    let channel =
        (any::<u8>(), quantity(), any::<u16>()).prop_map(|(id, quantity, rate_hz)| ChannelInfo {
            id,
            quantity,
            rate_hz,
        });
    prop_oneof![
        (
            any::<(u8, u8, u8)>(),
            any::<u32>(),
            prop::collection::vec(channel, 0..=MAX_CHANNELS)
        )
            .prop_map(|(fw, uptime_ms, channels)| Body::Hello {
                fw,
                uptime_ms,
                channels: HVec::from_slice(&channels).unwrap(),
            }),
        (
            any::<u8>(),
            any::<u32>(),
            any::<u32>(),
            prop::collection::vec(finite_f32(), 1..=MAX_VALUES)
        )
            .prop_map(|(channel, t0_ms, period_us, values)| Body::Samples {
                channel,
                t0_ms,
                period_us,
                values: HVec::from_slice(&values).unwrap(),
            }),
        (any::<u32>(), any::<u16>(), any::<i16>(), any::<u32>()).prop_map(
            |(uptime_ms, supply_mv, board_temp_centi_c, error_count)| Body::Status {
                uptime_ms,
                supply_mv,
                board_temp_centi_c,
                error_count,
            }
        ),
        (any::<u8>(), fault_code()).prop_map(|(channel, code)| Body::Fault { channel, code }),
        (any::<u32>(), any::<u8>()).prop_map(|(command_seq, result)| Body::Ack {
            command_seq,
            result: AckResult(result),
        }),
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    (any::<u32>(), any::<u32>(), body()).prop_map(|(node, seq, body)| Frame {
        version: 1,
        node,
        seq,
        body,
    })
}

fn command() -> impl Strategy<Value = Command> {
    let op = prop_oneof![
        Just(Op::Identify),
        any::<u8>().prop_map(|channel| Op::Zero { channel }),
        (any::<u8>(), any::<u16>()).prop_map(|(channel, rate_hz)| Op::SetRate { channel, rate_hz }),
    ];
    (any::<u32>(), any::<u32>(), op).prop_map(|(node, seq, op)| Command {
        version: 1,
        node,
        seq,
        op,
    })
}

fn encoded<M: serde::Serialize>(msg: &M) -> Vec<u8> {
    let mut out = [0u8; MAX_ENCODED_LEN];
    let n = encode(msg, &mut out).expect("every v1 message fits a frame");
    out[..n].to_vec()
}

/// Feeds `chunks` in order and returns every frame outcome and the final stats.
fn decode_chunks<'a, M>(
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> (Vec<Result<M, FrameError>>, DecodeStats)
where
    M: serde::de::DeserializeOwned + WireMessage,
{
    let mut dec = StreamDecoder::new();
    let mut outcomes = Vec::new();
    for chunk in chunks {
        let mut rest = chunk;
        while !rest.is_empty() {
            let (used, outcome) = dec.feed::<M>(rest);
            assert!(used > 0 && used <= rest.len(), "feed must make progress");
            if let Some(outcome) = outcome {
                // feed stops exactly after the terminator of the frame it reports.
                assert_eq!(rest[used - 1], 0);
                outcomes.push(outcome);
            }
            rest = &rest[used..];
        }
    }
    (outcomes, *dec.stats())
}

/// The counters agree with the reported outcomes.
fn assert_stats_consistent<M>(outcomes: &[Result<M, FrameError>], stats: &DecodeStats, len: usize) {
    let count = |pred: &dyn Fn(&Result<M, FrameError>) -> bool| {
        outcomes.iter().filter(|o| pred(o)).count() as u64
    };
    assert_eq!(stats.frames_ok, count(&|o| o.is_ok()));
    assert_eq!(
        stats.crc_errors,
        count(&|o| matches!(o, Err(FrameError::Crc)))
    );
    assert_eq!(
        stats.oversize,
        count(&|o| matches!(o, Err(FrameError::Oversize)))
    );
    assert_eq!(
        stats.undecodable,
        count(&|o| matches!(
            o,
            Err(FrameError::Cobs | FrameError::Decode | FrameError::Invalid)
        ))
    );
    assert_eq!(stats.bytes, len as u64);
}

/// Cuts `stream` at the given positions (taken modulo its length, any order).
fn split_at_points<'a>(stream: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| c % (stream.len() + 1))
        .chain([0, stream.len()])
        .collect();
    points.sort_unstable();
    points.windows(2).map(|w| &stream[w[0]..w[1]]).collect()
}

/// A stream of whole frames, each optionally preceded by terminated garbage.
fn stream_of(frames: &[(Frame, Vec<u8>)]) -> Vec<u8> {
    let mut stream = Vec::new();
    for (frame, garbage) in frames {
        stream.extend_from_slice(garbage);
        stream.push(0);
        stream.extend(encoded(frame));
    }
    stream
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn frames_round_trip(frame in frame()) {
        let bytes = encoded(&frame);
        prop_assert!(bytes.len() <= MAX_FRAME_LEN + 1);
        prop_assert_eq!(bytes.last(), Some(&0));
        prop_assert!(!bytes[..bytes.len() - 1].contains(&0));
        let mut dec = StreamDecoder::new();
        let (used, outcome) = dec.feed::<Frame>(&bytes);
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(outcome, Some(Ok(frame)));
    }

    #[test]
    fn commands_round_trip(cmd in command()) {
        let bytes = encoded(&cmd);
        let mut dec = StreamDecoder::new();
        prop_assert_eq!(dec.feed::<Command>(&bytes), (bytes.len(), Some(Ok(cmd))));
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_stats_match(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..2000),
            // Mostly non-zero bytes, to reach long and oversize frames.
            prop::collection::vec(prop_oneof![300 => 1u8..=255, 1 => Just(0u8)], 0..2000),
        ]
    ) {
        let (frames, stats) = decode_chunks::<Frame>([bytes.as_slice()]);
        assert_stats_consistent(&frames, &stats, bytes.len());
        let (commands, stats) = decode_chunks::<Command>([bytes.as_slice()]);
        assert_stats_consistent(&commands, &stats, bytes.len());
    }

    #[test]
    fn valid_frame_after_garbage_is_decoded(
        garbage in prop::collection::vec(any::<u8>(), 0..1500),
        frame in frame(),
    ) {
        let mut stream = garbage.clone();
        stream.push(0);
        stream.extend(encoded(&frame));
        let (outcomes, stats) = decode_chunks::<Frame>([stream.as_slice()]);
        assert_stats_consistent(&outcomes, &stats, stream.len());
        prop_assert_eq!(outcomes.last(), Some(&Ok(frame)));
    }

    #[test]
    fn splitting_the_stream_changes_nothing(
        frames in prop::collection::vec(
            (frame(), prop::collection::vec(any::<u8>(), 0..40)),
            1..6,
        ),
        tail in prop::collection::vec(any::<u8>(), 0..600),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut stream = stream_of(&frames);
        stream.extend_from_slice(&tail);
        let whole = decode_chunks::<Frame>([stream.as_slice()]);
        let pieces = decode_chunks::<Frame>(split_at_points(&stream, &cuts));
        let bytewise = decode_chunks::<Frame>(stream.chunks(1));
        prop_assert_eq!(&whole, &pieces);
        prop_assert_eq!(&whole, &bytewise);
        assert_stats_consistent(&whole.0, &whole.1, stream.len());
        // Each frame follows a 0x00, so every one of them is decoded.
        let expected: Vec<Frame> = frames.iter().map(|(f, _)| f.clone()).collect();
        let decoded: Vec<Frame> = whole.0.iter().filter_map(|o| o.clone().ok()).collect();
        prop_assert_eq!(decoded, expected);
    }

    #[test]
    fn a_single_flipped_bit_is_never_a_wrong_frame(
        frame in frame(),
        position in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let mut bytes = encoded(&frame);
        // Any byte but the terminator.
        let at = position.index(bytes.len() - 1);
        bytes[at] ^= 1 << bit;
        let (outcomes, stats) = decode_chunks::<Frame>([bytes.as_slice()]);
        assert_stats_consistent(&outcomes, &stats, bytes.len());
        // A flip that makes a 0x00 splits the frame in two; either way something is reported
        // and nothing decodes.
        prop_assert!(!outcomes.is_empty());
        for outcome in &outcomes {
            prop_assert!(
                matches!(
                    outcome,
                    Err(FrameError::Crc | FrameError::Cobs | FrameError::Decode)
                ),
                "flip at {} bit {} gave {:?}", at, bit, outcome
            );
        }
    }
}

#[test]
fn largest_messages_fit_one_frame() {
    // The biggest v1 frames (full Hello, full Samples of non-zero bytes) stay far inside the
    // frame limit, so encode never refuses a valid message.
    let hello = Frame {
        version: 1,
        node: u32::MAX,
        seq: u32::MAX,
        body: Body::Hello {
            fw: (255, 255, 255),
            uptime_ms: u32::MAX,
            channels: HVec::from_slice(
                &[ChannelInfo {
                    id: 255,
                    quantity: Quantity::Displacement,
                    rate_hz: u16::MAX,
                }; MAX_CHANNELS],
            )
            .unwrap(),
        },
    };
    let samples = Frame {
        version: 1,
        node: u32::MAX,
        seq: u32::MAX,
        body: Body::Samples {
            channel: 255,
            t0_ms: u32::MAX,
            period_us: u32::MAX,
            values: HVec::from_slice(&[f32::MAX; MAX_VALUES]).unwrap(),
        },
    };
    for frame in [hello, samples] {
        let bytes = encoded(&frame);
        assert!(bytes.len() < 200, "{} bytes", bytes.len());
        let (outcomes, _) = decode_chunks::<Frame>([bytes.as_slice()]);
        assert_eq!(outcomes, vec![Ok(frame)]);
    }
}
