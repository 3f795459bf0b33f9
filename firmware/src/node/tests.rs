//! Tests of the node core: a fake sensor set with deterministic readings, a byte sink, and
//! everything the node writes decoded back with the protocol's [`StreamDecoder`].

extern crate std;

use super::*;
use crate::protocol::{Quantity, MAX_FRAME_LEN};
use core::convert::Infallible;
use std::vec::Vec as StdVec;

/// A reading that encodes the channel and the instant it was taken at, exactly (< 2^24).
fn fake_value(channel: u8, t_ms: u32) -> f32 {
    f32::from(channel) * 100_000.0 + (t_ms % 100_000) as f32
}

#[derive(Debug, Clone, Copy)]
struct FailWindow {
    channel: u8,
    from: u32,
    until: u32,
    code: FaultCode,
}

struct Fake {
    channels: StdVec<ChannelInfo>,
    instant: u32,
    reads: StdVec<(u8, u32)>,
    failures: StdVec<FailWindow>,
}

impl Fake {
    fn new(channels: &[(u8, Quantity, u16)]) -> Self {
        Fake {
            channels: channels
                .iter()
                .map(|&(id, quantity, rate_hz)| ChannelInfo {
                    id,
                    quantity,
                    rate_hz,
                })
                .collect(),
            instant: 0,
            reads: StdVec::new(),
            failures: StdVec::new(),
        }
    }
}

impl SensorSet for Fake {
    fn channels(&self) -> &[ChannelInfo] {
        &self.channels
    }

    fn read(&mut self, channel: u8) -> Result<f32, FaultCode> {
        let t = self.instant;
        self.reads.push((channel, t));
        for w in &self.failures {
            if w.channel == channel && t.wrapping_sub(w.from) < w.until.wrapping_sub(w.from) {
                return Err(w.code);
            }
        }
        Ok(fake_value(channel, t))
    }

    fn begin_instant(&mut self, t_ms: u32) {
        self.instant = t_ms;
    }

    fn supply_mv(&mut self) -> u16 {
        3300
    }

    fn board_temp_centi_c(&mut self) -> i16 {
        -512
    }
}

#[derive(Default)]
struct Sink(StdVec<u8>);

impl ByteSink for Sink {
    type Error = Infallible;

    fn write_all(&mut self, bytes: &[u8]) -> Result<(), Infallible> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

/// Fails the `fail_at`-th write (0-based), accepts the others.
struct FlakySink {
    bytes: StdVec<u8>,
    writes: usize,
    fail_at: usize,
}

impl ByteSink for FlakySink {
    type Error = ();

    fn write_all(&mut self, bytes: &[u8]) -> Result<(), ()> {
        let n = self.writes;
        self.writes += 1;
        if n == self.fail_at {
            return Err(());
        }
        self.bytes.extend_from_slice(bytes);
        Ok(())
    }
}

const PANEL: [(u8, Quantity, u16); 4] = [
    (0, Quantity::Strain, 50),
    (1, Quantity::TiltX, 10),
    (2, Quantity::TiltY, 10),
    (3, Quantity::Temperature, 1),
];

fn panel_node() -> Node<Fake> {
    Node::new(NodeConfig::new(7), Fake::new(&PANEL)).unwrap()
}

/// Decode everything in `bytes`; every frame must be valid and at most 512 bytes long.
fn decode(bytes: &[u8]) -> StdVec<Frame> {
    for chunk in bytes.split(|&b| b == 0) {
        assert!(
            chunk.len() <= MAX_FRAME_LEN,
            "frame of {} bytes",
            chunk.len()
        );
    }
    assert_eq!(bytes.last(), Some(&0), "output ends mid-frame");
    let mut decoder = StreamDecoder::new();
    let mut frames = StdVec::new();
    decoder.decode_all::<Frame, _>(bytes, |r| frames.push(r.expect("node sent a bad frame")));
    frames
}

/// Poll every `step` ms from `start` for `span` ms (wrapping), ending exactly at
/// `start + span`.
fn run<S: SensorSet>(node: &mut Node<S>, sink: &mut Sink, start: u32, span: u32, step: u32) {
    let mut offset = 0;
    while offset < span {
        node.poll(start.wrapping_add(offset), sink).unwrap();
        offset += step;
    }
    node.poll(start.wrapping_add(span), sink).unwrap();
}

/// All values of `channel` with their times as the gateway reconstructs them
/// (`t0 + i * period_us / 1000`), and the period of their frame.
fn samples_of(frames: &[Frame], channel: u8) -> StdVec<(u32, f32, u32)> {
    let mut out = StdVec::new();
    for f in frames {
        if let Body::Samples {
            channel: c,
            t0_ms,
            period_us,
            values,
        } = &f.body
        {
            if *c == channel {
                for (i, v) in values.iter().enumerate() {
                    let dt = (i as u64 * u64::from(*period_us) / 1000) as u32;
                    out.push((t0_ms.wrapping_add(dt), *v, *period_us));
                }
            }
        }
    }
    out
}

fn command(node: u32, seq: u32, op: Op) -> StdVec<u8> {
    let mut buf = [0u8; MAX_ENCODED_LEN];
    let cmd = Command {
        version: PROTOCOL_VERSION,
        node,
        seq,
        op,
    };
    let n = encode(&cmd, &mut buf).unwrap();
    buf[..n].to_vec()
}

fn acks(frames: &[Frame]) -> StdVec<(u32, AckResult)> {
    frames
        .iter()
        .filter_map(|f| match f.body {
            Body::Ack {
                command_seq,
                result,
            } => Some((command_seq, result)),
            _ => None,
        })
        .collect()
}

fn assert_seq_consecutive(frames: &[Frame], first: u32) {
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(f.seq, first.wrapping_add(i as u32), "frame {i}: {f:?}");
        assert_eq!(f.node, 7);
        assert_eq!(f.version, PROTOCOL_VERSION);
    }
}

#[test]
fn sixty_seconds_give_exact_counts_and_timing() {
    let mut node = Node::new(
        NodeConfig::new(7),
        Fake::new(&[
            (0, Quantity::Strain, 50),
            (1, Quantity::TiltX, 10),
            (3, Quantity::Temperature, 1),
            // 3 Hz: a period that is not a whole number of ms.
            (4, Quantity::Acceleration, 3),
        ]),
    )
    .unwrap();
    let mut sink = Sink::default();
    run(&mut node, &mut sink, 0, 61_000, 1);
    let frames = decode(&sink.0);
    assert_seq_consecutive(&frames, 0);

    match &frames[0].body {
        Body::Hello {
            fw,
            uptime_ms,
            channels,
        } => {
            assert_eq!(*fw, FIRMWARE_VERSION);
            assert_eq!(*uptime_ms, 0);
            assert_eq!(channels.len(), 4);
            assert_eq!(
                channels[3],
                ChannelInfo {
                    id: 4,
                    quantity: Quantity::Acceleration,
                    rate_hz: 3
                }
            );
        }
        other => panic!("first frame is {other:?}"),
    }
    let hellos: StdVec<u32> = frames
        .iter()
        .filter_map(|f| match f.body {
            Body::Hello { uptime_ms, .. } => Some(uptime_ms),
            _ => None,
        })
        .collect();
    assert_eq!(hellos, [0, 60_000]);

    let statuses: StdVec<_> = frames
        .iter()
        .filter_map(|f| match f.body {
            Body::Status {
                uptime_ms,
                supply_mv,
                board_temp_centi_c,
                error_count,
            } => Some((uptime_ms, supply_mv, board_temp_centi_c, error_count)),
            _ => None,
        })
        .collect();
    let expected: StdVec<_> = (1..=6).map(|k| (k * 10_000, 3300, -512, 0)).collect();
    assert_eq!(statuses, expected);

    for (channel, rate) in [(0u8, 50u32), (1, 10), (3, 1), (4, 3)] {
        let all = samples_of(&frames, channel);
        let first_minute: StdVec<_> = all.iter().filter(|s| s.0 < 60_000).collect();
        assert_eq!(first_minute.len() as u32, rate * 60, "channel {channel}");
        for (k, (t, v, period_us)) in all.iter().enumerate() {
            let scheduled = (k as u64 * 1000 / u64::from(rate)) as u32;
            assert_eq!(*period_us, 1_000_000 / rate);
            // The value was read at the scheduled instant...
            assert_eq!(
                *v,
                fake_value(channel, scheduled),
                "channel {channel} k {k}"
            );
            // ...which is where the gateway puts it (within the 1 ms resolution of t0).
            assert!(
                scheduled.abs_diff(*t) <= 1,
                "channel {channel} k {k}: {t} vs {scheduled}"
            );
            if 1_000_000 % rate == 0 {
                assert_eq!(*t, scheduled);
            }
        }
    }
    // No batch exceeds 32 values, and none waits longer than 500 ms.
    for f in &frames {
        if let Body::Samples { values, .. } = &f.body {
            assert!(!values.is_empty() && values.len() <= 32);
        }
    }
    assert_eq!(node.counters(), NodeCounters::default());
}

#[test]
fn output_does_not_depend_on_poll_granularity() {
    let reference = {
        let mut node = panel_node();
        let mut sink = Sink::default();
        run(&mut node, &mut sink, 1_000, 30_000, 1);
        sink.0
    };
    for step in [3, 7, 100, 999] {
        let mut node = panel_node();
        let mut sink = Sink::default();
        run(&mut node, &mut sink, 1_000, 30_000, step);
        assert!(sink.0 == reference, "step {step} differs");
    }
    // Irregular steps (a fixed pseudo-random sequence, all below the catch-up limit).
    let mut node = panel_node();
    let mut sink = Sink::default();
    let mut t = 1_000u32;
    let mut x = 12345u32;
    while t < 31_000 {
        node.poll(t, &mut sink).unwrap();
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        t += 1 + (x >> 16) % 900;
    }
    node.poll(31_000, &mut sink).unwrap();
    assert!(sink.0 == reference, "irregular polling differs");
}

#[test]
fn batches_respect_batch_max_and_age() {
    let mut config = NodeConfig::new(7);
    config.batch_max = 5;
    config.batch_max_age_ms = 250;
    let mut node = Node::new(config, Fake::new(&PANEL)).unwrap();
    let mut sink = Sink::default();
    run(&mut node, &mut sink, 0, 5_000, 1);
    let frames = decode(&sink.0);
    for f in &frames {
        if let Body::Samples {
            channel,
            t0_ms,
            values,
            ..
        } = &f.body
        {
            match channel {
                // 50 Hz: 5 values span 80 ms, well inside the age limit.
                0 => assert_eq!(values.len(), 5),
                // 10 Hz: the age limit (250 ms) closes the batch at 3 values.
                1 | 2 => assert_eq!(values.len(), 3, "t0 {t0_ms}"),
                // 1 Hz: every value alone.
                _ => assert_eq!(values.len(), 1),
            }
        }
    }
    assert_eq!(samples_of(&frames, 3).len(), 5); // 0, 1000, ..., 4000 flushed; 5000 pending
}

#[test]
fn calibration_and_zero_are_applied() {
    let mut config = NodeConfig::new(7);
    config
        .set_calibration(
            1,
            Calibration {
                gain: 2.0,
                offset: -5.0,
            },
        )
        .unwrap();
    let mut node = Node::new(config, Fake::new(&PANEL)).unwrap();
    let mut sink = Sink::default();
    run(&mut node, &mut sink, 0, 2_000, 1);
    node.receive(&command(7, 41, Op::Zero { channel: 1 }), 2_000, &mut sink)
        .unwrap();
    let zero = 2.0 * fake_value(1, 2_000) - 5.0;
    assert_eq!(node.zero(1), Some(zero));
    assert_eq!(node.zero(0), Some(0.0));
    run(&mut node, &mut sink, 2_001, 3_000, 1);

    let frames = decode(&sink.0);
    assert_eq!(acks(&frames), [(41, AckResult::OK)]);
    let tilt = samples_of(&frames, 1);
    assert!(!tilt.is_empty());
    for (t, v, _) in &tilt {
        let calibrated = 2.0 * fake_value(1, *t) - 5.0;
        // The sample at 2000 was taken (by the poll inside receive) before the zero.
        let expected = if *t <= 2_000 {
            calibrated
        } else {
            calibrated - zero
        };
        assert_eq!(*v, expected, "t {t}");
    }
    let after: StdVec<_> = tilt
        .iter()
        .filter(|s| s.0 > 2_000 && s.0 <= 4_000)
        .collect();
    assert_eq!(after.len(), 20);
    assert_eq!(after[0].1, 200.0); // 2 * (102100 - 102000)
                                   // Channel 0 has no calibration.
    for (t, v, _) in samples_of(&frames, 0) {
        assert_eq!(v, fake_value(0, t));
    }
}

#[test]
fn failing_read_sends_fault_then_recovers() {
    let mut fake = Fake::new(&PANEL);
    fake.failures.push(FailWindow {
        channel: 1,
        from: 5_000,
        until: 27_000,
        code: FaultCode::BusError,
    });
    let mut node = Node::new(NodeConfig::new(7), fake).unwrap();
    let mut sink = Sink::default();
    run(&mut node, &mut sink, 0, 41_000, 1);
    let frames = decode(&sink.0);
    assert_seq_consecutive(&frames, 0);

    let fault_idx: StdVec<usize> = frames
        .iter()
        .enumerate()
        .filter(|(_, f)| matches!(f.body, Body::Fault { .. }))
        .map(|(i, _)| i)
        .collect();
    // Onset at 5000, then every 10 s while it lasts: 15000, 25000.
    assert_eq!(fault_idx.len(), 3);
    for &i in &fault_idx {
        assert_eq!(
            frames[i].body,
            Body::Fault {
                channel: 1,
                code: FaultCode::BusError
            }
        );
    }
    // The pending batch went out just before the first Fault, ending at the last good read.
    match &frames[fault_idx[0] - 1].body {
        Body::Samples {
            channel,
            t0_ms,
            period_us,
            values,
        } => {
            assert_eq!(*channel, 1);
            assert_eq!(t0_ms + (values.len() as u32 - 1) * period_us / 1000, 4_900);
        }
        other => panic!("{other:?}"),
    }
    // No tilt_x values during the fault; the others are unaffected.
    let tilt_x = samples_of(&frames, 1);
    assert!(tilt_x.iter().all(|s| s.0 < 5_000 || s.0 >= 27_000));
    assert_eq!(tilt_x.iter().filter(|s| s.0 < 5_000).count(), 50);
    assert_eq!(
        tilt_x.iter().find(|s| s.0 >= 5_000).map(|s| s.0),
        Some(27_000)
    );
    assert_eq!(
        samples_of(&frames, 2)
            .iter()
            .filter(|s| s.0 < 40_000)
            .count(),
        400
    );

    let error_counts: StdVec<u32> = frames
        .iter()
        .filter_map(|f| match f.body {
            Body::Status { error_count, .. } => Some(error_count),
            _ => None,
        })
        .collect();
    // Failed reads at 5000, 5100, ... (the sample at 10000 precedes that Status).
    assert_eq!(error_counts, [51, 151, 220, 220]);
    assert_eq!(node.counters().read_failures, 220);
}

#[test]
fn changing_fault_code_is_announced_at_once() {
    let mut fake = Fake::new(&[(0, Quantity::Strain, 10)]);
    fake.failures.push(FailWindow {
        channel: 0,
        from: 1_000,
        until: 2_000,
        code: FaultCode::BusError,
    });
    fake.failures.push(FailWindow {
        channel: 0,
        from: 2_000,
        until: 3_000,
        code: FaultCode::Saturated,
    });
    let mut node = Node::new(NodeConfig::new(7), fake).unwrap();
    let mut sink = Sink::default();
    run(&mut node, &mut sink, 0, 4_000, 10);
    let faults: StdVec<_> = decode(&sink.0)
        .into_iter()
        .filter_map(|f| match f.body {
            Body::Fault { code, .. } => Some(code),
            _ => None,
        })
        .collect();
    assert_eq!(faults, [FaultCode::BusError, FaultCode::Saturated]);
}

#[test]
fn non_finite_calibrated_value_is_out_of_range() {
    let mut config = NodeConfig::new(7);
    config
        .set_calibration(
            0,
            Calibration {
                gain: f32::MAX,
                offset: 0.0,
            },
        )
        .unwrap();
    let mut node = Node::new(config, Fake::new(&[(0, Quantity::Strain, 10)])).unwrap();
    let mut sink = Sink::default();
    run(&mut node, &mut sink, 0, 1_000, 1);
    let frames = decode(&sink.0);
    // Reading 0 at t=0 calibrates to 0 (finite); from t=100 on, infinity.
    assert_eq!(samples_of(&frames, 0).len(), 1);
    assert!(frames.iter().any(|f| f.body
        == Body::Fault {
            channel: 0,
            code: FaultCode::OutOfRange
        }));
    assert_eq!(node.counters().read_failures, 10);
}

#[test]
fn commands_are_acked() {
    let mut node = panel_node();
    let mut sink = Sink::default();
    run(&mut node, &mut sink, 0, 1_000, 1);
    let before = decode(&sink.0).len() as u32;

    let mut input = StdVec::new();
    input.extend(command(7, 100, Op::Identify));
    input.extend(command(8, 101, Op::Identify)); // another node: ignored
    input.extend([0x11, 0x22, 0x00]); // noise: dropped and counted
    input.extend(command(7, 102, Op::Zero { channel: 9 }));
    input.extend(command(
        7,
        103,
        Op::SetRate {
            channel: 0,
            rate_hz: 0,
        },
    ));
    input.extend(command(
        7,
        104,
        Op::SetRate {
            channel: 0,
            rate_hz: 1001,
        },
    ));
    input.extend(command(
        7,
        105,
        Op::SetRate {
            channel: 9,
            rate_hz: 10,
        },
    ));
    input.extend(command(
        7,
        106,
        Op::SetRate {
            channel: 0,
            rate_hz: 20,
        },
    ));
    input.extend(command(7, 107, Op::Zero { channel: 2 }));
    input.extend(command(7, 108, Op::Identify));
    // Split mid-frame across two receive calls.
    let (a, b) = input.split_at(input.len() / 2 + 3);
    node.receive(a, 1_010, &mut sink).unwrap();
    node.receive(b, 1_011, &mut sink).unwrap();
    run(&mut node, &mut sink, 1_012, 2_000, 1);

    let frames = decode(&sink.0);
    assert_seq_consecutive(&frames, 0);
    assert_eq!(
        acks(&frames),
        [
            (100, AckResult::OK),
            (102, AckResult::UNKNOWN_CHANNEL),
            (103, AckResult::UNSUPPORTED),
            (104, AckResult::UNSUPPORTED),
            (105, AckResult::UNKNOWN_CHANNEL),
            (106, AckResult::OK),
            (107, AckResult::OK),
            (108, AckResult::OK),
        ]
    );
    // Identify: a Hello right before its Ack; the second one announces the new rate.
    let after: StdVec<_> = frames[before as usize..].iter().collect();
    let hello_rates: StdVec<u16> = after
        .iter()
        .filter_map(|f| match &f.body {
            Body::Hello { channels, .. } => Some(channels[0].rate_hz),
            _ => None,
        })
        .collect();
    assert_eq!(hello_rates, [50, 20]);
    let first_hello = after
        .iter()
        .position(|f| matches!(f.body, Body::Hello { .. }))
        .unwrap();
    assert!(matches!(
        after[first_hello + 1].body,
        Body::Ack {
            command_seq: 100,
            ..
        }
    ));
    assert_eq!(node.channel_infos()[0].rate_hz, 20);
    assert_eq!(node.counters().commands_for_others, 1);
    assert_eq!(node.decoder_stats().frames_ok, 9);
    assert_eq!(
        node.decoder_stats().crc_errors + node.decoder_stats().undecodable,
        1
    );

    // Strain: 20 ms spacing up to the change at 1011, then 50 ms from the next old slot.
    let strain = samples_of(&frames, 0);
    let times: StdVec<u32> = strain.iter().map(|s| s.0).collect();
    let change = times.iter().position(|&t| t > 1_011).unwrap();
    assert_eq!(times[change - 1], 1_000);
    assert!(strain[..change].iter().all(|s| s.2 == 20_000));
    assert!(strain[change..].iter().all(|s| s.2 == 50_000));
    assert_eq!(&times[change..change + 3], [1_020, 1_070, 1_120]);
    for (t, v, _) in &strain {
        assert_eq!(*v, fake_value(0, *t));
    }
    // Zero on channel 2 at 1011 read the sensor at that instant.
    assert_eq!(node.zero(2), Some(fake_value(2, 1_011)));
}

#[test]
fn zero_with_failing_read_answers_busy() {
    let mut fake = Fake::new(&PANEL);
    fake.failures.push(FailWindow {
        channel: 3,
        from: 0,
        until: 100_000,
        code: FaultCode::NotResponding,
    });
    let mut node = Node::new(NodeConfig::new(7), fake).unwrap();
    let mut sink = Sink::default();
    node.receive(&command(7, 5, Op::Zero { channel: 3 }), 0, &mut sink)
        .unwrap();
    let frames = decode(&sink.0);
    assert_eq!(acks(&frames), [(5, AckResult::BUSY)]);
    assert_eq!(node.zero(3), Some(0.0));
}

#[test]
fn clock_wrap_is_seamless() {
    let start = u32::MAX - 4_999; // wraps 5 s in
    let mut node = panel_node();
    let mut sink = Sink::default();
    run(&mut node, &mut sink, start, 26_000, 1);
    let frames = decode(&sink.0);
    assert_seq_consecutive(&frames, 0);
    assert!(matches!(frames[0].body, Body::Hello { uptime_ms, .. } if uptime_ms == start));
    let status_times: StdVec<u32> = frames
        .iter()
        .filter_map(|f| match f.body {
            Body::Status { uptime_ms, .. } => Some(uptime_ms),
            _ => None,
        })
        .collect();
    assert_eq!(
        status_times,
        [start.wrapping_add(10_000), start.wrapping_add(20_000)]
    );
    for (channel, period) in [(0u8, 20u32), (1, 100), (3, 1000)] {
        let s = samples_of(&frames, channel);
        let in_span = s
            .iter()
            .filter(|x| x.0.wrapping_sub(start) < 25_000)
            .count();
        assert_eq!(in_span as u32, 25_000 / period, "channel {channel}");
        for (k, (t, v, _)) in s.iter().enumerate() {
            assert_eq!(*t, start.wrapping_add(k as u32 * period));
            assert_eq!(*v, fake_value(channel, *t));
        }
    }
    // Some batch straddles the wrap: its t0 is before it, its values after.
    assert!(frames.iter().any(|f| matches!(&f.body,
        Body::Samples { t0_ms, period_us, values, .. }
            if t0_ms.checked_add((values.len() as u32 - 1) * period_us / 1000).is_none())));
}

#[test]
fn stalled_caller_skips_instead_of_bursting() {
    let mut node = panel_node();
    let mut sink = Sink::default();
    node.poll(0, &mut sink).unwrap();
    node.poll(30, &mut sink).unwrap(); // strain at 20 pending
    node.poll(5_000, &mut sink).unwrap();
    let reads_of_strain = node.sensors().reads.iter().filter(|r| r.0 == 0).count();
    // 0, 20, then only the slot at 5000.
    assert_eq!(reads_of_strain, 3);
    assert!(node.counters().samples_skipped >= 245);
    run(&mut node, &mut sink, 5_001, 1_000, 1);
    let frames = decode(&sink.0);
    assert_seq_consecutive(&frames, 0);
    let strain: StdVec<u32> = samples_of(&frames, 0).iter().map(|s| s.0).collect();
    // The batch [0, 20] was closed before the gap.
    assert_eq!(&strain[..4], [0, 20, 5_000, 5_020]);
}

#[test]
fn next_due_tracks_the_schedule() {
    let mut node = panel_node();
    let mut sink = Sink::default();
    node.poll(1_000, &mut sink).unwrap();
    assert_eq!(node.next_due_ms(), 1_020);
    node.poll(1_019, &mut sink).unwrap();
    assert_eq!(node.next_due_ms(), 1_020);
    node.poll(1_020, &mut sink).unwrap();
    assert_eq!(node.next_due_ms(), 1_040);
    // Near the wrap the next time wraps too.
    let mut node = panel_node();
    node.poll(u32::MAX - 5, &mut sink).unwrap();
    assert_eq!(node.next_due_ms(), 14);
}

#[test]
fn reboot_restarts_seq_with_a_hello() {
    let mut node = panel_node();
    let mut sink = Sink::default();
    run(&mut node, &mut sink, 0, 3_000, 1);
    node.receive(&command(7, 1, Op::Zero { channel: 1 }), 3_000, &mut sink)
        .unwrap();
    node.receive(
        &command(
            7,
            2,
            Op::SetRate {
                channel: 0,
                rate_hz: 5,
            },
        ),
        3_000,
        &mut sink,
    )
    .unwrap();
    assert!(node.seq() > 10);
    node.reboot();
    assert_eq!(node.seq(), 0);
    let mut after = Sink::default();
    run(&mut node, &mut after, 10_000, 500, 1);
    let frames = decode(&after.0);
    assert_seq_consecutive(&frames, 0);
    match &frames[0].body {
        Body::Hello {
            uptime_ms,
            channels,
            ..
        } => {
            assert_eq!(*uptime_ms, 10_000);
            assert_eq!(channels[0].rate_hz, 50);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(node.zero(1), Some(0.0));
}

#[test]
fn sink_error_loses_one_frame_and_continues() {
    let mut node = panel_node();
    let mut sink = FlakySink {
        bytes: StdVec::new(),
        writes: 0,
        fail_at: 3,
    };
    let mut errors = 0;
    for t in 0..=3_000 {
        if node.poll(t, &mut sink).is_err() {
            errors += 1;
        }
    }
    assert_eq!(errors, 1);
    let frames = decode(&sink.bytes);
    let seqs: StdVec<u32> = frames.iter().map(|f| f.seq).collect();
    // seq 3 is missing: the gateway sees the gap and counts one lost frame.
    assert_eq!(&seqs[..4], [0, 1, 2, 4]);
    assert!(seqs.windows(2).skip(3).all(|w| w[1] == w[0] + 1));
}

#[test]
fn sixteen_fast_channels_stay_within_frame_limits() {
    let channels: StdVec<(u8, Quantity, u16)> = (0..16)
        .map(|i| (i * 10, Quantity::ALL[usize::from(i) % 7], 1000))
        .collect();
    let mut fake = Fake::new(&channels);
    fake.failures.push(FailWindow {
        channel: 50,
        from: 300,
        until: 400,
        code: FaultCode::Saturated,
    });
    let mut node = Node::new(NodeConfig::new(7), fake).unwrap();
    let mut sink = Sink::default();
    run(&mut node, &mut sink, 0, 1_100, 1);
    let frames = decode(&sink.0); // asserts every frame <= 512 bytes
    assert!(matches!(&frames[0].body, Body::Hello { channels, .. } if channels.len() == 16));
    // Full 32-value batches were among the frames checked against the 512-byte limit.
    assert!(frames
        .iter()
        .any(|f| matches!(&f.body, Body::Samples { values, .. } if values.len() == 32)));
    for (id, ..) in &channels {
        let n = samples_of(&frames, *id)
            .iter()
            .filter(|s| s.0 < 1_000)
            .count();
        let expected = if *id == 50 { 1000 - 100 } else { 1000 };
        assert_eq!(n, expected, "channel {id}");
    }
}

#[test]
fn heapless_sink_reports_overflow() {
    let mut node = panel_node();
    let mut small: Vec<u8, 8> = Vec::new();
    assert_eq!(node.poll(0, &mut small), Err(BufferFull));
    let mut big: Vec<u8, 1024> = Vec::new();
    node.poll(0, &mut big).unwrap();
    node.poll(1, &mut big).unwrap();
}

#[test]
fn invalid_configurations_are_refused() {
    let fake = || Fake::new(&PANEL);
    let mut c = NodeConfig::new(1);
    c.batch_max = 0;
    assert_eq!(
        Node::new(c.clone(), fake()).err(),
        Some(ConfigError::BadBatchMax(0))
    );
    c.batch_max = 33;
    assert_eq!(
        Node::new(c, fake()).err(),
        Some(ConfigError::BadBatchMax(33))
    );
    let mut c = NodeConfig::new(1);
    c.batch_max_age_ms = MAX_BATCH_AGE_MS + 1;
    assert!(matches!(
        Node::new(c, fake()).err(),
        Some(ConfigError::BadBatchMaxAge(_))
    ));

    let dup = Fake::new(&[(1, Quantity::TiltX, 10), (1, Quantity::TiltY, 10)]);
    assert_eq!(
        Node::new(NodeConfig::new(1), dup).err(),
        Some(ConfigError::DuplicateChannel(1))
    );
    for rate in [0, 1001] {
        let bad = Fake::new(&[(4, Quantity::Strain, rate)]);
        assert_eq!(
            Node::new(NodeConfig::new(1), bad).err(),
            Some(ConfigError::BadRate {
                channel: 4,
                rate_hz: rate
            })
        );
    }
    let many: StdVec<_> = (0..17).map(|i| (i, Quantity::Strain, 1)).collect();
    assert_eq!(
        Node::new(NodeConfig::new(1), Fake::new(&many)).err(),
        Some(ConfigError::TooManyChannels)
    );

    let mut c = NodeConfig::new(1);
    c.set_calibration(42, Calibration::IDENTITY).unwrap();
    assert_eq!(
        Node::new(c, fake()).err(),
        Some(ConfigError::UnknownCalibrationChannel(42))
    );
    let mut c = NodeConfig::new(1);
    for i in 0..16 {
        c.set_calibration(i, Calibration::IDENTITY).unwrap();
    }
    c.set_calibration(
        3,
        Calibration {
            gain: 3.0,
            offset: 1.0,
        },
    )
    .unwrap();
    assert_eq!(c.calibration(3).apply(2.0), 7.0);
    assert_eq!(
        c.set_calibration(16, Calibration::IDENTITY),
        Err(ConfigError::TooManyCalibrations)
    );
}

#[test]
fn set_rate_api_validates() {
    let mut node = panel_node();
    assert_eq!(node.set_rate(9, 10), Err(RateError::UnknownChannel));
    assert_eq!(node.set_rate(0, 0), Err(RateError::Unsupported));
    assert_eq!(node.set_rate(0, 1000), Ok(()));
    assert_eq!(node.channel_infos()[0].rate_hz, 1000);
}
